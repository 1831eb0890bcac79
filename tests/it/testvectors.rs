//! The protocol's test vectors, `proto/testvectors/*.json`: one signed object
//! of every kind, built here from fixed keys, a fixed network id and fixed
//! times. The test rebuilds them and fails if the committed files differ, so
//! they cannot drift from what the node signs and checks; it also checks
//! that each one decodes and verifies as a node does.
//! `CREDENCE_WRITE_TESTVECTORS=1 cargo test --release -p credence-tests --test it testvectors`
//! rewrites the files.

use std::path::PathBuf;

use credence::core::envelope::{self, Kind, NetworkId, seal};
use credence_proto::v1 as pb;
use ed25519_dalek::SigningKey;
use prost::Message;
use serde_json::{Value, json};

/// Every vector's time: 2026-12-01T00:00:00Z in milliseconds.
const T: u64 = 1_796_083_200_000;

/// The fixed signers, by role: a seed of 32 copies of one byte each.
fn key(byte: u8) -> SigningKey {
    SigningKey::from_bytes(&[byte; 32])
}

fn public(key: &SigningKey) -> Vec<u8> {
    key.verifying_key().to_bytes().to_vec()
}

/// The vectors' network: blake3 of a fixed genesis text.
fn network() -> NetworkId {
    NetworkId::of_genesis(b"# credence test vectors\n")
}

struct Vector {
    kind: Kind,
    signer: SigningKey,
    body: Vec<u8>,
    fields: Value,
}

impl Vector {
    fn json(&self) -> Value {
        let network = network();
        let (envelope, id) = seal(&network, &self.signer, self.kind, self.body.clone());
        let signed = pb::Signed::decode(envelope.as_slice()).expect("the envelope decodes");
        json!({
            "kind": self.kind.to_wire().as_str_name(),
            "kind_value": self.kind.to_wire() as i32,
            "network_id_hex": hex::encode(network.0),
            "secret_key_hex": hex::encode(self.signer.to_bytes()),
            "public_key_hex": hex::encode(self.signer.verifying_key().to_bytes()),
            "body": self.fields,
            "body_hex": hex::encode(&self.body),
            "digest_hex": hex::encode(envelope::digest(&network, self.kind, &self.body).0),
            "object_id_hex": id.to_string(),
            "signature_hex": hex::encode(&signed.signature),
            "envelope_hex": hex::encode(&envelope),
        })
    }

    fn envelope(&self) -> Vec<u8> {
        seal(&network(), &self.signer, self.kind, self.body.clone()).0
    }

    fn id(&self) -> [u8; 32] {
        envelope::digest(&network(), self.kind, &self.body).0
    }
}

fn h(bytes: &[u8]) -> Value {
    json!(hex::encode(bytes))
}

fn bucket(b: &pb::BucketRef) -> Value {
    json!({ "distribution_id": h(&b.distribution_id), "region": b.region, "owner": h(&b.owner) })
}

/// One vector per kind, in wire order; later ones refer to earlier ones
/// (the revocation revokes the attestation, the claim presents it, the
/// batch carries the claim, the vote is for the batch).
fn vectors() -> Vec<Vector> {
    let (issuer, operator, claimant, owner, voter) = (key(1), key(2), key(3), key(4), key(5));
    let mut out: Vec<Vector> = Vec::new();

    let attestation = pb::Attestation {
        issuer: public(&issuer),
        subject: public(&claimant),
        schema: "demo".into(),
        data: b"passed KYC".to_vec(),
        issued_at: T,
        expires_at: T + 365 * 86_400_000,
        nonce: 42,
    };
    out.push(Vector {
        kind: Kind::Attestation,
        signer: issuer.clone(),
        body: attestation.encode_to_vec(),
        fields: json!({
            "issuer": h(&attestation.issuer), "subject": h(&attestation.subject), "schema": attestation.schema,
            "data": h(&attestation.data), "issued_at": attestation.issued_at, "expires_at": attestation.expires_at,
            "nonce": attestation.nonce,
        }),
    });
    let attestation_id = out[0].id();

    let revocation = pb::Revocation {
        issuer: public(&issuer),
        attestation_id: attestation_id.to_vec(),
        revoked_at: T + 60_000,
        reason: "expired document".into(),
    };
    out.push(Vector {
        kind: Kind::Revocation,
        signer: issuer.clone(),
        body: revocation.encode_to_vec(),
        fields: json!({
            "issuer": h(&revocation.issuer), "attestation_id": h(&revocation.attestation_id),
            "revoked_at": revocation.revoked_at, "reason": revocation.reason,
        }),
    });

    let grant = pb::IssuerGrant {
        operator: public(&operator),
        issuer: public(&issuer),
        schema: "demo".into(),
        granted: true,
        granted_at: T,
    };
    out.push(Vector {
        kind: Kind::IssuerGrant,
        signer: operator.clone(),
        body: grant.encode_to_vec(),
        fields: json!({
            "operator": h(&grant.operator), "issuer": h(&grant.issuer), "schema": grant.schema,
            "granted": grant.granted, "granted_at": grant.granted_at,
        }),
    });

    let distribution = pb::Distribution {
        operator: public(&operator),
        asset: "DEMO".into(),
        total: 1_000_000,
        rule: Some(pb::DistributionRule {
            schema: "demo".into(),
            issuers: vec![public(&issuer)],
            amount_per_claim: 100,
        }),
        opens_at: T,
        closes_at: 0,
        allocations: vec![
            pb::Allocation {
                region: "eu".into(),
                amount: 600_000,
            },
            pb::Allocation {
                region: "us".into(),
                amount: 400_000,
            },
        ],
        nonce: 7,
        max_outflow_per_window: 0,
        outflow_window_ms: 0,
        name: "airdrop".into(),
    };
    out.push(Vector {
        kind: Kind::Distribution,
        signer: operator.clone(),
        body: distribution.encode_to_vec(),
        fields: json!({
            "operator": h(&distribution.operator), "asset": distribution.asset, "total": distribution.total,
            "rule": { "schema": "demo", "issuers": [h(&public(&issuer))], "amount_per_claim": 100 },
            "opens_at": distribution.opens_at, "closes_at": distribution.closes_at,
            "allocations": [{ "region": "eu", "amount": 600_000 }, { "region": "us", "amount": 400_000 }],
            "nonce": distribution.nonce, "max_outflow_per_window": 0, "outflow_window_ms": 0,
            "name": distribution.name,
        }),
    });
    let distribution_id = out[3].id();

    let claim = pb::Claim {
        distribution_id: distribution_id.to_vec(),
        claimant: public(&claimant),
        attestation_id: attestation_id.to_vec(),
        amount: 100,
        recipient: vec![],
        created_at: T + 1_000,
        nonce: 9,
    };
    out.push(Vector {
        kind: Kind::Claim,
        signer: claimant.clone(),
        body: claim.encode_to_vec(),
        fields: json!({
            "distribution_id": h(&claim.distribution_id), "claimant": h(&claim.claimant),
            "attestation_id": h(&claim.attestation_id), "amount": claim.amount, "recipient": h(&claim.recipient),
            "created_at": claim.created_at, "nonce": claim.nonce,
        }),
    });
    let claim_envelope = out[4].envelope();

    let home = pb::BucketRef {
        distribution_id: distribution_id.to_vec(),
        region: "eu".into(),
        owner: public(&owner),
    };
    let batch = pb::Batch {
        bucket: Some(home.clone()),
        seq: 0,
        prev: vec![0; 32],
        timestamp: T + 1_200,
        entries: vec![pb::BatchEntry {
            entry: Some(pb::batch_entry::Entry::Claim(claim_envelope.clone())),
        }],
        total_after: 100,
    };
    out.push(Vector {
        kind: Kind::Batch,
        signer: owner.clone(),
        body: batch.encode_to_vec(),
        fields: json!({
            "bucket": bucket(&home), "seq": 0, "prev": h(&batch.prev), "timestamp": batch.timestamp,
            "entries": [{ "claim": h(&claim_envelope) }], "total_after": batch.total_after,
        }),
    });
    let batch_envelope = out[5].envelope();

    // A vote names a batch by the batch's content id, as a voter decodes it.
    let verified = envelope::decode(&network(), &batch_envelope)
        .and_then(envelope::Unverified::verify)
        .expect("the batch verifies");
    let batch_id = credence::core::wire::batch(&network(), &verified, &mut envelope::KnownSignatures::new(0))
        .expect("the batch decodes")
        .0
        .id;
    let vote_for = |object: [u8; 32]| pb::Vote {
        object_id: object.to_vec(),
        bucket: Some(home.clone()),
        seq: 0,
        region: "eu".into(),
        voter: public(&voter),
    };
    let vote = vote_for(batch_id);
    out.push(Vector {
        kind: Kind::Vote,
        signer: voter.clone(),
        body: vote.encode_to_vec(),
        fields: json!({
            "object_id": h(&vote.object_id), "bucket": bucket(&home), "seq": 0, "region": "eu",
            "voter": h(&vote.voter),
        }),
    });
    let first_vote = out[6].envelope();

    let freeze = pb::Freeze {
        bucket: Some(home.clone()),
        last_seq: Some(0),
        pending: batch_envelope.clone(),
        proposer: public(&voter),
    };
    out.push(Vector {
        kind: Kind::Freeze,
        signer: voter.clone(),
        body: freeze.encode_to_vec(),
        fields: json!({
            "bucket": bucket(&home), "last_seq": 0, "pending": h(&batch_envelope), "proposer": h(&freeze.proposer),
        }),
    });

    let bucket_id = credence::core::escrow::BucketId {
        distribution: distribution_id,
        region: "eu".into(),
        owner: owner.verifying_key().to_bytes(),
    }
    .digest();
    let heartbeat = pb::Heartbeat {
        validator: public(&owner),
        sent_at: T + 2_000,
        frontier: vec![pb::FrontierEntry {
            bucket_id: bucket_id.to_vec(),
            seq: 1,
        }],
        liquidity: vec![pb::RegionLiquidity {
            region: "eu".into(),
            available: 599_900,
            spent: 100,
        }],
        state_digest: vec![0x5d; 32],
        load: 0.25,
        seq: 12,
        needs: vec![pb::BucketNeed {
            bucket_id: bucket_id.to_vec(),
            amount: 400,
        }],
    };
    out.push(Vector {
        kind: Kind::Heartbeat,
        signer: owner.clone(),
        body: heartbeat.encode_to_vec(),
        fields: json!({
            "validator": h(&heartbeat.validator), "sent_at": heartbeat.sent_at,
            "frontier": [{ "bucket_id": h(&bucket_id), "seq": 1 }],
            "liquidity": [{ "region": "eu", "available": 599_900, "spent": 100 }],
            "state_digest": h(&heartbeat.state_digest), "load": 0.25, "seq": 12,
            "needs": [{ "bucket_id": h(&bucket_id), "amount": 400 }],
        }),
    });

    // Two votes by one voter at one position for different objects.
    let second_vote = seal(&network(), &voter, Kind::Vote, vote_for([0xab; 32]).encode_to_vec()).0;
    let evidence = pb::Evidence {
        first: first_vote.clone(),
        second: second_vote.clone(),
    };
    out.push(Vector {
        kind: Kind::Evidence,
        signer: owner.clone(),
        body: evidence.encode_to_vec(),
        fields: json!({ "first": h(&first_vote), "second": h(&second_vote) }),
    });

    let rebalance = pb::Rebalance {
        operator: public(&operator),
        distribution_id: distribution_id.to_vec(),
        from_region: "eu".into(),
        to_region: "us".into(),
        amount: 50_000,
        nonce: 3,
    };
    out.push(Vector {
        kind: Kind::Rebalance,
        signer: operator,
        body: rebalance.encode_to_vec(),
        fields: json!({
            "operator": h(&rebalance.operator), "distribution_id": h(&rebalance.distribution_id),
            "from_region": "eu", "to_region": "us", "amount": 50_000, "nonce": 3,
        }),
    });
    out
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto/testvectors")
}

/// The file a kind's vector lives in.
fn file_name(kind: Kind) -> String {
    format!("{}.json", kind.name())
}

fn render(v: &Vector) -> String {
    let mut text = serde_json::to_string_pretty(&v.json()).expect("a vector renders");
    text.push('\n');
    text
}

#[test]
fn testvectors_are_what_the_node_signs_and_every_kind_has_one() {
    let vectors = vectors();
    let kinds: Vec<i32> = vectors.iter().map(|v| v.kind.to_wire() as i32).collect();
    let every: Vec<i32> = (1..)
        .map_while(|n| Kind::from_wire(n).map(|k| k.to_wire() as i32))
        .collect();
    assert_eq!(kinds, every, "one vector per kind, in wire order");
    let write = std::env::var_os("CREDENCE_WRITE_TESTVECTORS").is_some();
    let mut stale = Vec::new();
    for v in &vectors {
        // What a node does with it: decode, verify, same id.
        let envelope = v.envelope();
        let unverified = envelope::decode(&network(), &envelope).expect("the vector decodes");
        assert_eq!(unverified.kind, v.kind);
        let verified = unverified.verify().expect("the vector verifies");
        assert_eq!(verified.id.0, v.id());
        // The body fields are the decoded body's.
        assert!(
            v.fields.as_object().is_some_and(|f| !f.is_empty()),
            "{:?} has no fields",
            v.kind
        );

        let path = dir().join(file_name(v.kind));
        let text = render(v);
        if write {
            std::fs::write(&path, &text).expect("write a vector");
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    let committed = std::fs::read_dir(dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(
        committed,
        vectors.len(),
        "proto/testvectors holds a file that is no vector"
    );
    assert!(
        stale.is_empty(),
        "test vectors differ from what the node signs: {stale:?}; \
         rewrite them with CREDENCE_WRITE_TESTVECTORS=1 and review the diff"
    );
}
