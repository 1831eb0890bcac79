//! Shell tests: what heartbeats carry about needs, and what this node keeps of
//! the needs it hears.

use credence_proto::v1 as pb;
use ed25519_dalek::SigningKey;
use prost::Message;

use super::{Escrow, NEED_MAX_AGE_HEARTBEATS};
use crate::config::local_network;
use crate::core::envelope::{self, Kind, NetworkId, Verified, seal};
use crate::core::escrow::{Digest, Key, NEEDS_PER_HEARTBEAT_MAX};
use crate::core::wire;

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
