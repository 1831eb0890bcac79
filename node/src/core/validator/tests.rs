//! Shell tests: what heartbeats carry about needs, and what this node keeps of
//! the needs it hears.

use credence_proto::v1 as pb;
use ed25519_dalek::SigningKey;
use prost::Message;

use super::LockRecord;
use super::{Input, NEED_MAX_AGE_HEARTBEATS, Step, Timeline, Validator};
use crate::config::local_network;
use crate::core::credentials::{CredentialBook, CredentialRules};
use crate::core::envelope::{self, Kind, NetworkId, ObjectId, Verified, seal};
use crate::core::escrow::{Digest, Key, Millis, NEEDS_PER_HEARTBEAT_MAX};
use crate::core::wire;

fn key_of(signer: &SigningKey) -> Key {
    signer.verifying_key().to_bytes()
}

/// A heartbeat of `signer` at `seq` carrying `needs`, verified as the node would.
fn heartbeat(network: &NetworkId, signer: &SigningKey, seq: u64, needs: Vec<pb::BucketNeed>) -> Verified {
    heartbeat_with(network, signer, seq, needs, vec![])
}

/// A heartbeat of `signer` at `seq` carrying `needs` and `frontier`.
fn heartbeat_with(
    network: &NetworkId,
    signer: &SigningKey,
    seq: u64,
    needs: Vec<pb::BucketNeed>,
    frontier: Vec<pb::FrontierEntry>,
) -> Verified {
    let body = pb::Heartbeat {
        validator: key_of(signer).to_vec(),
        sent_at: seq,
        frontier,
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

/// Two regions of two validators (eu-0, eu-1, us-0, us-1; the genesis
/// distribution has a bucket per validator) and eu-0's state machine.
fn eu0_of_two_regions() -> (crate::config::LocalNetwork, [SigningKey; 4], Validator) {
    let local = local_network(&["eu", "us"], 2, 11, 1_000, 10).unwrap();
    let keys = [0, 1, 2, 3].map(|i| local.validators[i].clone());
    let node = Validator::new(&local.genesis.setup(), Box::new(keys[0].clone()), &[]).unwrap();
    (local, keys, node)
}

#[test]
fn a_node_keeps_only_the_needs_a_validator_of_its_region_has_for_its_own_buckets() {
    let (local, [eu0, eu1, us0, _us1], mut node) = eu0_of_two_regions();
    let network = local.genesis.network_id;
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
    assert_eq!(
        node.on_heartbeat(&heartbeat(&network, &eu1, 1, needs), now).ok(),
        Some(true)
    );
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
    assert_eq!(
        node.on_heartbeat(&heartbeat(&network, &eu1, 2, needs), now).ok(),
        Some(true)
    );
    assert_eq!(node.advertised_need(&theirs, now), 30);
    assert_eq!(
        node.advertised_need(&mine, now),
        0,
        "nobody speaks for this node's bucket"
    );
    assert_eq!(node.advertised_need(&abroad, now), 0);

    // Another region's validator is not answered here, even for its own bucket.
    let from_abroad = heartbeat(&network, &us0, 1, vec![need(&abroad, 30)]);
    assert_eq!(node.on_heartbeat(&from_abroad, now).ok(), Some(true));
    assert_eq!(node.advertised_need(&abroad, now), 0);

    // An older heartbeat changes nothing; a newer one replaces what was heard.
    let older = heartbeat(&network, &eu1, 1, vec![need(&theirs, 99)]);
    assert_eq!(node.on_heartbeat(&older, now).ok(), Some(false));
    assert_eq!(node.advertised_need(&theirs, now), 30);
    let newer = heartbeat(&network, &eu1, 3, vec![need(&theirs, 20)]);
    assert_eq!(node.on_heartbeat(&newer, now).ok(), Some(true));
    assert_eq!(node.advertised_need(&theirs, now), 20);

    // A need not repeated for too long is forgotten.
    let stale = now + interval * NEED_MAX_AGE_HEARTBEATS + 1;
    assert_eq!(node.advertised_need(&theirs, stale), 0);
    let cleared = heartbeat(&network, &eu1, 4, vec![]);
    assert_eq!(node.on_heartbeat(&cleared, now).ok(), Some(true));
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

/// An empty credential book under `local`'s genesis rules.
fn book_of(local: &crate::config::LocalNetwork) -> CredentialBook {
    CredentialBook::new(
        CredentialRules {
            max_clock_skew_ms: local.genesis.genesis.params.max_clock_skew_ms,
            operators: local.genesis.operators.clone(),
        },
        local.genesis.issuer_grants.iter().cloned(),
    )
}

/// A claim at `at` by the claimant made from `seed`, whose attestation (issued
/// at `issued_at`) goes into `book` first.
fn credentialed_claim(
    local: &crate::config::LocalNetwork,
    book: &mut CredentialBook,
    seed: u8,
    issued_at: Millis,
    at: Millis,
) -> Verified {
    let network = local.genesis.network_id;
    let claimant = SigningKey::from_bytes(&[seed; 32]);
    let attestation = pb::Attestation {
        issuer: key_of(&local.issuer).to_vec(),
        subject: key_of(&claimant).to_vec(),
        schema: crate::config::DEMO_SCHEMA.into(),
        data: vec![],
        issued_at,
        expires_at: 0,
        nonce: u64::from(seed),
    };
    let (raw, attestation_id) = seal(&network, &local.issuer, Kind::Attestation, attestation.encode_to_vec());
    book.apply(at, &envelope::decode(&network, &raw).unwrap().verify().unwrap())
        .unwrap();
    let body = pb::Claim {
        distribution_id: wire::genesis_distribution_id(&network, 0).to_vec(),
        claimant: key_of(&claimant).to_vec(),
        attestation_id: attestation_id.0.to_vec(),
        amount: 10,
        recipient: vec![],
        created_at: at,
        nonce: 1,
    };
    let (raw, _) = seal(&network, &claimant, Kind::Claim, body.encode_to_vec());
    envelope::decode(&network, &raw).unwrap().verify().unwrap()
}

/// A one-validator network (eu-0 owns every bucket), its state machine and
/// credential book, and a valid claim by a claimant holding a credential.
fn single_validator_with_claim(now: Millis) -> (Validator, CredentialBook, Verified, Digest) {
    let local = local_network(&["eu"], 1, 12, 1_000, 10).unwrap();
    let node = Validator::new(&local.genesis.setup(), Box::new(local.validators[0].clone()), &[]).unwrap();
    let mut book = book_of(&local);
    let claim = credentialed_claim(&local, &mut book, 42, now, now);
    let id = claim.id.0;
    (node, book, claim, id)
}

fn claim<'a>(claim: &'a Verified, from_client: bool) -> Input<'a> {
    Input::Claim { claim, from_client }
}

#[test]
fn an_owner_measures_how_long_its_claims_waited_for_a_batch_and_for_votes() {
    let now = 1_000_000;
    let (mut node, book, verified, id) = single_validator_with_claim(now);
    node.step(now, &book, claim(&verified, true)).unwrap();
    // The batch closes 40 ms after the claim arrived; the lone validator
    // judges its own vote at once, and counts it once its lock is durable,
    // 25 ms later here.
    let out = node.tick(now + 40, &book);
    assert!(out.locks.iter().any(|l| matches!(l, LockRecord::OwnBatch { .. })));
    assert!(out.locks.iter().any(|l| matches!(l, LockRecord::Vote { .. })));
    assert!(out.vote_requests.is_empty(), "its own vote request is judged inside");
    assert!(node.samples.batching.is_empty(), "not certified yet");
    let out = node.step(now + 65, &book, Input::Persisted).unwrap();
    assert_eq!(out.certificates_to_publish.len(), 1);
    let (_, timeline) = node.claim_status(&book, &id).unwrap();
    assert_eq!(timeline.regional_at, now + 65);
    assert_eq!(node.samples.batching, vec![40]);
    assert_eq!(node.samples.voting, vec![25]);
}

#[test]
fn nothing_that_depends_on_a_lock_leaves_before_the_shell_says_it_is_durable() {
    let now = 1_000_000;
    let (mut node, book, verified, id) = single_validator_with_claim(now);
    let out = node.step(now, &book, claim(&verified, true)).unwrap();
    assert!(out.locks.is_empty() && out.vote_requests.is_empty());
    // The tick that signs the batch and the vote returns both locks, and no
    // send and no certificate that depends on them.
    let out = node.tick(now + 40, &book);
    let locked_batch = out.locks.iter().find_map(|l| match l {
        LockRecord::OwnBatch { envelope } => Some(envelope.clone()),
        LockRecord::Vote { .. } => None,
    });
    assert!(locked_batch.is_some(), "the batch is persisted before it is sent");
    assert!(out.certificates_to_publish.is_empty() && out.store_certificates.is_empty());
    // Further ticks do not count the vote either, while the shell has not said
    // the locks are durable.
    let later = node.tick(now + 80, &book);
    assert!(later.certificates_to_publish.is_empty());
    let (status, _) = node.claim_status(&book, &id).unwrap();
    assert!(!matches!(status, crate::core::escrow::ClaimStatus::Regional { .. }));
    // Once they are, the vote counts and the certificate is both stored and sent.
    let out = node.step(now + 81, &book, Input::Persisted).unwrap();
    assert_eq!(out.store_certificates, out.certificates_to_publish);
    assert_eq!(out.store_certificates.len(), 1);
    let (status, _) = node.claim_status(&book, &id).unwrap();
    assert!(matches!(
        status,
        crate::core::escrow::ClaimStatus::Regional { .. } | crate::core::escrow::ClaimStatus::Global { .. }
    ));
}

#[test]
fn a_vote_reply_comes_with_the_lock_it_depends_on() {
    // eu-0 owns a bucket and asks eu-1 for its vote: eu-1's answer holds a
    // vote, and the same outputs hold the lock for exactly that vote.
    let now = 1_000_000;
    let local = local_network(&["eu"], 4, 12, 1_000, 10).unwrap();
    let setup = local.genesis.setup();
    let network = local.genesis.network_id;
    let mut owner_in_four = Validator::new(&setup, Box::new(local.validators[0].clone()), &[]).unwrap();
    let mut voter = Validator::new(&setup, Box::new(local.validators[1].clone()), &[]).unwrap();
    let voter_key = key_of(&local.validators[1]);
    // A claim of a claimant credentialed in this network, routed to eu-0's bucket.
    let mut book = None;
    let request = (0..64u8)
        .find_map(|n| {
            let mut fresh = book_of(&local);
            let c = credentialed_claim(&local, &mut fresh, n, now, now);
            // Each try at its own time, so the owner's batch timer is due.
            let at = now + 1_000 * u64::from(n);
            owner_in_four.step(at, &fresh, claim(&c, true)).ok()?;
            let out = owner_in_four.tick(at + 40, &fresh);
            book = Some(fresh);
            out.vote_requests
                .into_iter()
                .find(|(to, _)| *to == voter_key)
                .map(|(_, request)| request)
        })
        .expect("some claimant's home is eu-0's bucket");
    let book = book.unwrap();
    let out = voter
        .step(now + 100_000, &book, Input::VoteRequest { request: &request })
        .unwrap();
    let reply = out.vote_reply.clone().expect("an answer");
    let vote = envelope::decode(&network, &reply.vote).unwrap().verify().unwrap();
    let vote = wire::vote(&vote).unwrap();
    assert!(
        out.locks.contains(&LockRecord::Vote {
            bucket: vote.bucket,
            seq: vote.seq,
            object_id: vote.object_id,
        }),
        "the lock of the vote in the reply is in the same outputs"
    );
}

#[test]
fn a_certificate_met_again_is_a_duplicate_and_a_tampered_copy_is_still_checked() {
    let now = 1_000_000;
    let (mut node, book, verified, _) = single_validator_with_claim(now);
    node.step(now, &book, claim(&verified, true)).unwrap();
    let _ = node.tick(now + 40, &book);
    let raw = node
        .step(now + 42, &book, Input::Persisted)
        .unwrap()
        .certificates_to_publish
        .pop()
        .expect("certified");
    // Met again (gossip, a peer's certificate log): a duplicate.
    let again = node.step(now + 43, &book, Input::Certificate { raw: &raw }).unwrap();
    assert!(!again.news && again.store_certificates.is_empty());
    // Other bytes take the full path: a vote whose signature was altered is refused.
    let mut cert = pb::Certificate::decode(raw.as_slice()).unwrap();
    let mut vote = pb::Signed::decode(cert.votes[0].as_slice()).unwrap();
    vote.signature[0] ^= 1;
    cert.votes[0] = vote.encode_to_vec();
    let tampered = cert.encode_to_vec();
    assert!(
        node.step(now + 44, &book, Input::Certificate { raw: &tampered })
            .is_err()
    );
}

#[test]
fn a_claim_met_again_while_batched_stays_batched_and_is_not_refused_as_a_double() {
    let now = 1_000_000;
    let (mut node, book, verified, id) = single_validator_with_claim(now);
    let id = ObjectId(id);
    node.step(now, &book, claim(&verified, true)).unwrap();
    // The same claim again (from gossip, a republish): nothing changes.
    node.step(now + 1, &book, claim(&verified, false)).unwrap();
    let (_, timeline) = node.claim_status(&book, &id.0).unwrap();
    assert_eq!(timeline.rejected_at, 0, "refused: {}", timeline.reason);
    // Batched and sent; met again while in flight, it is still not refused.
    let _ = node.tick(now + 1_000, &book);
    node.step(now + 1_001, &book, claim(&verified, false)).unwrap();
    let (_, timeline) = node.claim_status(&book, &id.0).unwrap();
    assert_eq!(timeline.rejected_at, 0, "refused: {}", timeline.reason);
    assert!(timeline.provisional_at > 0, "the claim was batched");
}

#[test]
fn a_certificate_refused_for_want_of_room_is_not_the_senders_fault() {
    use super::ValidatorError;
    assert!(!ValidatorError::Busy("waiting buffer is full".into()).is_senders_fault());
    assert!(!ValidatorError::TooManyWaiting.is_senders_fault());
    assert!(ValidatorError::Certificate("a different certificate exists at this position".into()).is_senders_fault());
    assert!(ValidatorError::Heartbeat("from a key that is not a validator").is_senders_fault());
}

#[test]
fn certificates_kept_in_memory_do_not_grow_with_history() {
    // One validator certifies many batches of its own bucket; memory keeps
    // the newest few, and an old certificate met again is still a duplicate.
    let now = 1_000_000;
    let local = local_network(&["eu"], 1, 12, 1_000_000, 10).unwrap();
    let mut node = Validator::new(&local.genesis.setup(), Box::new(local.validators[0].clone()), &[]).unwrap();
    let mut book = book_of(&local);
    let mut first = None;
    for n in 0..(super::CERTIFICATES_KEPT_PER_BUCKET as u8 + 12) {
        let at = now + 1_000 * u64::from(n);
        let c = credentialed_claim(&local, &mut book, n.wrapping_add(100), now, at);
        node.step(at, &book, claim(&c, true)).unwrap();
        let _ = node.tick(at + 40, &book);
        let out = node.step(at + 41, &book, Input::Persisted).unwrap();
        assert_eq!(out.store_certificates.len(), 1, "batch {n} certified");
        first.get_or_insert(out.store_certificates[0].clone());
    }
    assert!(node.certificates.len() <= super::CERTIFICATES_KEPT_PER_BUCKET as usize + 1);
    let first = first.unwrap();
    node.certificate_fingerprints.clear();
    let again = node
        .step(now + 100_000, &book, Input::Certificate { raw: &first })
        .unwrap();
    assert!(
        !again.news && again.store_certificates.is_empty(),
        "an old certificate is a duplicate"
    );
}

#[test]
fn reaching_a_step_stamps_the_steps_below_it_that_were_not_seen_and_keeps_the_others() {
    // (stamps before: received, provisional, regional, global), the step, when, stamps after.
    let check = |before: [Millis; 4], step: Step, now: Millis, after: [Millis; 4]| {
        let mut t = Timeline {
            received_at: before[0],
            provisional_at: before[1],
            regional_at: before[2],
            global_at: before[3],
            ..Timeline::default()
        };
        t.reach(step, now);
        assert_eq!(
            [t.received_at, t.provisional_at, t.regional_at, t.global_at],
            after,
            "{before:?} reaching {step:?} at {now}"
        );
    };
    // An owner sees every step as it comes.
    check([10, 0, 0, 0], Step::Provisional, 20, [10, 20, 0, 0]);
    check([10, 20, 0, 0], Step::Regional, 30, [10, 20, 30, 0]);
    check([10, 20, 30, 0], Step::Global, 40, [10, 20, 30, 40]);
    // A node that learns of a claim from its certificate: every step below at once.
    check([0, 0, 0, 0], Step::Regional, 30, [30, 30, 30, 0]);
    check([10, 0, 0, 0], Step::Global, 40, [10, 40, 40, 40]);
    // A step stamped already keeps its time; a late stamp never goes below an earlier one.
    check([10, 20, 30, 40], Step::Global, 50, [10, 20, 30, 40]);
    check([60, 0, 0, 0], Step::Regional, 50, [60, 60, 60, 0]);
}

/// A batch of eu-1's bucket at `seq`, signed by eu-1, as a vote request.
fn owner_batch_request(
    local: &crate::config::LocalNetwork,
    owner: &SigningKey,
    seq: u64,
    timestamp: Millis,
) -> pb::VoteRequest {
    let network = local.genesis.network_id;
    let body = pb::Batch {
        bucket: Some(pb::BucketRef {
            distribution_id: wire::genesis_distribution_id(&network, 0).to_vec(),
            region: "eu".into(),
            owner: key_of(owner).to_vec(),
        }),
        seq,
        prev: vec![0; 32],
        timestamp,
        entries: vec![pb::BatchEntry {
            entry: Some(pb::batch_entry::Entry::Close(true)),
        }],
        total_after: 0,
    };
    pb::VoteRequest {
        object: seal(&network, owner, Kind::Batch, body.encode_to_vec()).0,
        attestations: vec![],
        certificates: vec![],
    }
}

#[test]
fn a_voter_that_sees_an_owner_sign_two_batches_at_one_seq_gossips_the_evidence_once() {
    let local = local_network(&["eu"], 3, 13, 1_000, 10).unwrap();
    let network = local.genesis.network_id;
    let (me, owner) = (local.validators[0].clone(), local.validators[1].clone());
    let mut node = Validator::new(&local.genesis.setup(), Box::new(me), &[]).unwrap();
    let book = book_of(&local);
    let now = 1_000_000;
    let ask = |node: &mut Validator, request: &pb::VoteRequest, at: Millis| {
        node.step(at, &book, Input::VoteRequest { request }).unwrap()
    };
    let first = owner_batch_request(&local, &owner, 5, 1);
    assert!(ask(&mut node, &first, now).evidence_to_publish.is_empty());
    // The same batch again is no evidence; a batch at another seq neither.
    assert!(ask(&mut node, &first, now).evidence_to_publish.is_empty());

    let second = owner_batch_request(&local, &owner, 5, 2);
    let out = ask(&mut node, &second, now);
    assert_eq!(out.evidence_to_publish.len(), 1);
    assert_eq!(node.stats.equivocations_detected, 1);
    // Anyone can check it: both batches are the owner's, at one position.
    let raw = &out.evidence_to_publish[0];
    let verified = envelope::decode(&network, raw).unwrap().verify().unwrap();
    let evidence = wire::evidence(&network, &verified, &mut envelope::KnownSignatures::new(0)).unwrap();
    assert_eq!((evidence.owner, evidence.seq), (key_of(&owner), 5));

    // More equivocation by the same owner is not reported again at once…
    let (third, fourth) = (
        owner_batch_request(&local, &owner, 6, 1),
        owner_batch_request(&local, &owner, 6, 2),
    );
    ask(&mut node, &third, now + 1);
    assert!(ask(&mut node, &fourth, now + 1).evidence_to_publish.is_empty());
    // …but after the report interval it is.
    let later = now + super::EQUIVOCATION_REPORT_INTERVAL_MS;
    let (fifth, sixth) = (
        owner_batch_request(&local, &owner, 7, 1),
        owner_batch_request(&local, &owner, 7, 2),
    );
    ask(&mut node, &fifth, later);
    assert_eq!(ask(&mut node, &sixth, later).evidence_to_publish.len(), 1);

    // Evidence made of one batch twice, or of batches at two seqs, is refused.
    let fake = |a: &pb::VoteRequest, b: &pb::VoteRequest| {
        let body = wire::evidence_body(&a.object, &b.object);
        let (raw, _) = seal(&network, &local.issuer, Kind::Evidence, body.encode_to_vec());
        let verified = envelope::decode(&network, &raw).unwrap().verify().unwrap();
        wire::evidence(&network, &verified, &mut envelope::KnownSignatures::new(0))
    };
    assert!(fake(&first, &first).is_err());
    assert!(fake(&first, &third).is_err());
    assert!(fake(&first, &second).is_ok());
}

#[test]
fn a_batch_signed_far_ahead_does_not_hide_the_owners_batch_at_the_next_seq() {
    let local = local_network(&["eu"], 3, 14, 1_000, 10).unwrap();
    let (me, owner) = (local.validators[0].clone(), local.validators[1].clone());
    let mut node = Validator::new(&local.genesis.setup(), Box::new(me), &[]).unwrap();
    let book = book_of(&local);
    let now = 1_000_000;
    let far = owner_batch_request(&local, &owner, 1 << 40, 1);
    node.step(now, &book, Input::VoteRequest { request: &far }).unwrap();
    let next = owner_batch_request(&local, &owner, 0, 2);
    node.step(now, &book, Input::VoteRequest { request: &next }).unwrap();
    let bucket = super::BucketId {
        distribution: wire::genesis_distribution_id(&local.genesis.network_id, 0),
        region: "eu".into(),
        owner: key_of(&owner),
    }
    .digest();
    assert_eq!(node.seen_batches.get(&bucket).map(|(b, _)| b.seq), Some(0));
}

/// A heartbeat of `signer` at `seq` reporting `len` certified entries for `bucket`.
fn heartbeat_ahead(network: &NetworkId, signer: &SigningKey, seq: u64, bucket: &Digest, len: u64) -> Verified {
    let entry = pb::FrontierEntry {
        bucket_id: bucket.to_vec(),
        seq: len,
    };
    heartbeat_with(network, signer, seq, vec![], vec![entry])
}

#[test]
fn frontier_pulls_go_to_one_source_per_region_at_most_once_per_gap() {
    use super::FRONTIER_PULL_GAP_MS;
    let (local, [_eu0, eu1, us0, us1], mut node) = eu0_of_two_regions();
    let network = local.genesis.network_id;
    let book = book_of(&local);
    let distribution = wire::genesis_distribution_id(&network, 0);
    let abroad = {
        let active = node.ledger().distribution(&distribution).unwrap();
        active.buckets().find(|b| b.id.owner == key_of(&us0)).unwrap().digest
    };
    let mut seq = 0;
    let mut beat = |node: &mut Validator, from: &SigningKey, now: Millis, len: u64| -> Vec<Key> {
        seq += 1;
        let heartbeat = heartbeat_ahead(&network, from, seq, &abroad, len);
        node.step(now, &book, Input::Heartbeat { heartbeat: &heartbeat })
            .unwrap()
            .sync_from
    };
    let now = 1_000_000;
    let gap = FRONTIER_PULL_GAP_MS;
    // A frontier that is not ahead asks for nothing.
    assert!(beat(&mut node, &us0, now, 0).is_empty());
    // us-0 ahead: it becomes the region's source and is pulled from.
    assert_eq!(beat(&mut node, &us0, now, 5), vec![key_of(&us0)]);
    // Within the gap, neither it nor another validator of its region is pulled from.
    assert!(beat(&mut node, &us0, now + gap / 2, 6).is_empty());
    assert!(beat(&mut node, &us1, now + gap / 2, 6).is_empty());
    // After the gap: another validator is not pulled from while the source
    // is ahead where it is (nothing was applied here, so us-0 at 6 can
    // supply what us-1 reports); the source is.
    assert!(beat(&mut node, &us1, now + gap, 7).is_empty());
    assert_eq!(beat(&mut node, &us0, now + gap, 7), vec![key_of(&us0)]);
    // A source whose frontier is not ahead where another's is cannot supply
    // it: after the gap, the other becomes the source.
    assert!(beat(&mut node, &us0, now + gap + 1, 0).is_empty());
    assert!(beat(&mut node, &us1, now + 2 * gap - 1, 8).is_empty());
    assert_eq!(beat(&mut node, &us1, now + 2 * gap, 8), vec![key_of(&us1)]);
    // The own region has a source of its own: eu-1 ahead is pulled from at once.
    assert_eq!(beat(&mut node, &eu1, now + 2 * gap, 9), vec![key_of(&eu1)]);
}
