//! Shell tests: what heartbeats carry about needs, and what this node keeps of
//! the needs it hears.

use credence_proto::v1 as pb;
use ed25519_dalek::SigningKey;
use prost::Message;

use super::{Escrow, NEED_MAX_AGE_HEARTBEATS};
use crate::config::local_network;
use crate::core::credentials::{CredentialBook, CredentialRules};
use crate::core::envelope::{self, Kind, NetworkId, ObjectId, Verified, seal};
use crate::core::escrow::{Digest, Key, Millis, NEEDS_PER_HEARTBEAT_MAX};
use crate::core::wire;
use crate::store::locks::LockRecord;

fn key_of(signer: &SigningKey) -> Key {
    signer.verifying_key().to_bytes()
}

/// A heartbeat of `signer` at `seq` carrying `needs`, verified as the node would.
fn heartbeat(network: &NetworkId, signer: &SigningKey, seq: u64, needs: Vec<pb::BucketNeed>) -> Verified {
    let body = pb::Heartbeat {
        validator: key_of(signer).to_vec(),
        sent_at: seq,
        frontier: vec![],
        liquidity: vec![],
        state_digest: vec![],
        load: 0.0,
        seq,
        needs,
    };
    let (raw, _) = seal(network, signer, Kind::Heartbeat, body.encode_to_vec());
    envelope::decode(network, &raw).unwrap().verify().unwrap()
}

fn need(bucket: &[u8], amount: u64) -> pb::BucketNeed {
    pb::BucketNeed {
        bucket_id: bucket.to_vec(),
        amount,
    }
}

#[test]
fn a_node_keeps_only_the_needs_a_validator_of_its_region_has_for_its_own_buckets() {
    // eu-0 (this node), eu-1, us-0, us-1; the genesis distribution has a bucket per validator.
    let local = local_network(&["eu", "us"], 2, 11, 1_000, 10).unwrap();
    let network = local.genesis.network_id;
    let [eu0, eu1, us0, _us1] = [0, 1, 2, 3].map(|i| local.validators[i].clone());
    let mut node = Escrow::new(&local.genesis, eu0.clone(), &[]).unwrap();
    let distribution = wire::genesis_distribution_id(&network, 0);
    let bucket_of = |owner: &SigningKey| -> Digest {
        let active = node.ledger().distribution(&distribution).unwrap();
        active.buckets().find(|b| b.id.owner == key_of(owner)).unwrap().digest
    };
    let (mine, theirs, abroad) = (bucket_of(&eu0), bucket_of(&eu1), bucket_of(&us0));
    let now = 1_000_000;
    let interval = local.genesis.genesis.params.heartbeat_interval_ms;

    // Past the cap, entries are not read.
    let mut needs: Vec<pb::BucketNeed> = (0..NEEDS_PER_HEARTBEAT_MAX).map(|_| need(&theirs, 0)).collect();
    needs.push(need(&theirs, 30));
    assert_eq!(node.on_heartbeat(&heartbeat(&network, &eu1, 1, needs), now), Ok(true));
    assert_eq!(node.advertised_need(&theirs, now), 0);

    // eu-1 asks for its own bucket; what it says of others' buckets, malformed
    // ids and empty needs are dropped.
    let needs = vec![
        need(&theirs, 0),
        need(&theirs, 30),
        need(&mine, 50),
        need(&abroad, 50),
        need(&theirs[..3], 50),
        need(&[7; 32], 50),
    ];
    assert_eq!(node.on_heartbeat(&heartbeat(&network, &eu1, 2, needs), now), Ok(true));
    assert_eq!(node.advertised_need(&theirs, now), 30);
    assert_eq!(
        node.advertised_need(&mine, now),
        0,
        "nobody speaks for this node's bucket"
    );
    assert_eq!(node.advertised_need(&abroad, now), 0);

    // Another region's validator is not answered here, even for its own bucket.
    let from_abroad = heartbeat(&network, &us0, 1, vec![need(&abroad, 30)]);
    assert_eq!(node.on_heartbeat(&from_abroad, now), Ok(true));
    assert_eq!(node.advertised_need(&abroad, now), 0);

    // An older heartbeat changes nothing; a newer one replaces what was heard.
    let older = heartbeat(&network, &eu1, 1, vec![need(&theirs, 99)]);
    assert_eq!(node.on_heartbeat(&older, now), Ok(false));
    assert_eq!(node.advertised_need(&theirs, now), 30);
    let newer = heartbeat(&network, &eu1, 3, vec![need(&theirs, 20)]);
    assert_eq!(node.on_heartbeat(&newer, now), Ok(true));
    assert_eq!(node.advertised_need(&theirs, now), 20);

    // A need not repeated for too long is forgotten.
    let stale = now + interval * NEED_MAX_AGE_HEARTBEATS + 1;
    assert_eq!(node.advertised_need(&theirs, stale), 0);
    let cleared = heartbeat(&network, &eu1, 4, vec![]);
    assert_eq!(node.on_heartbeat(&cleared, now), Ok(true));
    assert_eq!(
        node.advertised_need(&theirs, now),
        0,
        "a heartbeat without needs clears them"
    );

    // This node's own bucket is full and untouched: its heartbeat asks nothing.
    let raw = node.heartbeat_due(now).unwrap();
    let own = envelope::decode(&network, &raw).unwrap().verify().unwrap();
    assert!(pb::Heartbeat::decode(own.body.as_slice()).unwrap().needs.is_empty());
}

/// A one-validator network (eu-0 owns every bucket), its escrow and
/// credential book, and a valid claim by a claimant holding a credential.
fn single_validator_with_claim(now: Millis) -> (Escrow, CredentialBook, Verified, Digest) {
    let local = local_network(&["eu"], 1, 12, 1_000, 10).unwrap();
    let network = local.genesis.network_id;
    let node = Escrow::new(&local.genesis, local.validators[0].clone(), &[]).unwrap();
    let mut book = CredentialBook::new(
        CredentialRules {
            max_clock_skew_ms: local.genesis.genesis.params.max_clock_skew_ms,
            operators: local.genesis.operators.clone(),
        },
        local.genesis.issuer_grants.iter().cloned(),
    );
    let claimant = SigningKey::from_bytes(&[42; 32]);
    let attestation = pb::Attestation {
        issuer: key_of(&local.issuer).to_vec(),
        subject: key_of(&claimant).to_vec(),
        schema: crate::config::DEMO_SCHEMA.into(),
        data: vec![],
        issued_at: now,
        expires_at: 0,
        nonce: 1,
    };
    let (raw, attestation_id) = seal(&network, &local.issuer, Kind::Attestation, attestation.encode_to_vec());
    let verified = envelope::decode(&network, &raw)
        .and_then(envelope::Unverified::verify)
        .unwrap();
    book.apply(now, &verified).unwrap();
    let claim = pb::Claim {
        distribution_id: wire::genesis_distribution_id(&network, 0).to_vec(),
        claimant: key_of(&claimant).to_vec(),
        attestation_id: attestation_id.0.to_vec(),
        amount: 10,
        recipient: vec![],
        created_at: now,
        nonce: 1,
    };
    let (raw, id) = seal(&network, &claimant, Kind::Claim, claim.encode_to_vec());
    let claim = envelope::decode(&network, &raw)
        .and_then(envelope::Unverified::verify)
        .unwrap();
    (node, book, claim, id.0)
}

#[test]
fn an_owner_measures_how_long_its_claims_waited_for_a_batch_and_for_votes() {
    let now = 1_000_000;
    let (mut node, book, claim, id) = single_validator_with_claim(now);
    node.on_claim(&book, &claim, true, now).unwrap();
    // The batch closes 40 ms after the claim arrived, with its vote request
    // (the shell sends it once the batch's lock record is durable); the lone
    // validator's vote certifies it 25 ms after the batch was sent.
    let effects = node.tick(&book, now + 40);
    assert!(effects.locks.iter().any(|l| matches!(l, LockRecord::OwnBatch { .. })));
    let (voter, request) = effects.vote_requests.into_iter().next().expect("a vote request");
    assert_eq!(voter, node.me);
    let (_, response) = node.on_vote_request(&book, &request, now + 60);
    assert!(node.samples.batching.is_empty(), "not certified yet");
    let _ = node.on_vote_response(&book, &response, now + 65);
    let (_, timeline) = node.claim_status(&book, &id).unwrap();
    assert_eq!(timeline.regional_at, now + 65);
    assert_eq!(node.samples.batching, vec![40]);
    assert_eq!(node.samples.voting, vec![25]);
}

#[test]
fn a_certificate_met_again_is_a_duplicate_and_a_tampered_copy_is_still_checked() {
    let now = 1_000_000;
    let (mut node, book, claim, _) = single_validator_with_claim(now);
    node.on_claim(&book, &claim, true, now).unwrap();
    let effects = node.tick(&book, now + 40);
    let (_, request) = effects.vote_requests.into_iter().next().expect("a vote request");
    let (_, response) = node.on_vote_request(&book, &request, now + 41);
    let raw = node
        .on_vote_response(&book, &response, now + 42)
        .certificates
        .pop()
        .expect("certified");
    // Met again (gossip, a peer's certificate log): a duplicate.
    assert!(matches!(node.on_certificate(&book, &raw, now + 43), Ok(false)));
    // Other bytes take the full path: a vote whose signature was altered is refused.
    let mut cert = pb::Certificate::decode(raw.as_slice()).unwrap();
    let mut vote = pb::Signed::decode(cert.votes[0].as_slice()).unwrap();
    vote.signature[0] ^= 1;
    cert.votes[0] = vote.encode_to_vec();
    assert!(node.on_certificate(&book, &cert.encode_to_vec(), now + 44).is_err());
}

#[test]
fn a_claim_met_again_while_batched_stays_batched_and_is_not_refused_as_a_double() {
    let now = 1_000_000;
    let (mut node, book, claim, id) = single_validator_with_claim(now);
    let id = ObjectId(id);
    node.on_claim(&book, &claim, true, now).unwrap();
    // The same claim again (from gossip, a republish): nothing changes.
    node.on_claim(&book, &claim, false, now + 1).unwrap();
    let (_, timeline) = node.claim_status(&book, &id.0).unwrap();
    assert_eq!(timeline.rejected_at, 0, "refused: {}", timeline.reason);
    // Batched and sent; met again while in flight, it is still not refused.
    let _ = node.tick(&book, now + 1_000);
    node.on_claim(&book, &claim, false, now + 1_001).unwrap();
    let (_, timeline) = node.claim_status(&book, &id.0).unwrap();
    assert_eq!(timeline.rejected_at, 0, "refused: {}", timeline.reason);
    assert!(timeline.provisional_at > 0, "the claim was batched");
}
