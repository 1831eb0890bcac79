//! Writes the seed corpus of every fuzz target under `corpus/<target>/`, from
//! real objects of the fuzzing network (`credence_fuzz::network`): envelopes
//! of every kind signed by its keys, and the batch, vote requests, votes,
//! certificate, locks and heartbeat that its validators' state machines
//! produce for a real claim. ed25519 signatures are deterministic, so the same build
//! writes the same files.
//!
//! `cargo run --release --manifest-path node/fuzz/Cargo.toml --example gen_corpus [DIR]`

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};

use credence::config::{FaultModel, GenesisPlan, write_network};
use credence::core::Millis;
use credence::core::credentials::CredentialBook;
use credence::core::envelope::{self, Kind, Unverified, Verified, seal};
use credence::core::escrow::{BucketId, Freeze};
use credence::core::validator::{Input, Validator};
use credence::core::wire;
use credence::store::locks::{LockRecord, encode_log};
use credence::store::{position_key, stamped_value};
use credence_fuzz::{NOW, book, network, selector_of};
use credence_proto::v1 as pb;
use ed25519_dalek::SigningKey;
use prost::Message;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Seeds by target, then by file name.
#[derive(Default)]
struct Corpus(BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>);

impl Corpus {
    fn add(&mut self, target: &'static str, name: impl Into<String>, bytes: Vec<u8>) {
        self.0.entry(target).or_default().insert(name.into(), bytes);
    }

    fn write(&self, dir: &Path) -> Result<()> {
        for (target, seeds) in &self.0 {
            let dir = dir.join(target);
            std::fs::create_dir_all(&dir)?;
            for (name, bytes) in seeds {
                std::fs::write(dir.join(name), bytes)?;
            }
            println!("{target}: {} seeds", seeds.len());
        }
        Ok(())
    }
}

fn verify(raw: &[u8]) -> Result<Verified> {
    Ok(envelope::decode(&network().genesis.network_id, raw).and_then(Unverified::verify)?)
}

fn public(key: &SigningKey) -> Vec<u8> {
    key.verifying_key().to_bytes().to_vec()
}

/// A length-prefixed frame of the request-response codec.
fn frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Objects as the `escrow_objects` target reads them: kind selector, length, body.
fn objects(items: &[&Verified]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in items {
        out.push(selector_of(v.kind));
        out.extend_from_slice(&(v.body.len() as u16).to_le_bytes());
        out.extend_from_slice(&v.body);
    }
    out
}

/// One store record as the `store_records` target reads it.
fn record(tree: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![tree];
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// A credential log entry (key length, key, stamped envelope) as a record.
fn log_record(position: u64, learned_at: Millis, raw: &[u8]) -> Vec<u8> {
    let mut bytes = vec![8];
    bytes.extend_from_slice(&position_key(position));
    bytes.extend_from_slice(&stamped_value(learned_at, raw));
    record(0, &bytes)
}

/// The claimant (by seed) whose claim `validator` routes to `owner`'s bucket.
fn claimant_for(validator: &Validator, distribution: &[u8; 32], owner: &[u8; 32]) -> Result<SigningKey> {
    for seed in 1u8..=255 {
        let key = SigningKey::from_bytes(&[seed; 32]);
        if validator
            .route(distribution, &key.verifying_key().to_bytes())
            .is_some_and(|b| &b.owner == owner)
        {
            return Ok(key);
        }
    }
    Err("no claimant routes to the owner".into())
}

/// What the owner's and the other voter's validators produce for one claim.
struct Flow {
    requests: Vec<pb::VoteRequest>,
    answers: Vec<pb::VoteResponse>,
    certificates: Vec<Vec<u8>>,
    locks: Vec<LockRecord>,
    heartbeat: Vec<u8>,
}

/// Runs a claim through its owner (`owner`) and the region's other validator
/// (`voter`) as two shells would: the owner batches it, votes for it itself
/// (the lock among its outputs, the vote counted once it steps
/// `Input::Persisted`) and asks the voter, the voter votes, the owner forms
/// the certificate.
fn claim_flow(
    book: &CredentialBook,
    owner: &mut Validator,
    voter: &mut Validator,
    voter_key: &SigningKey,
    claim: &Verified,
) -> Result<Flow> {
    let voter_key = voter_key.verifying_key().to_bytes();
    let mut locks = owner
        .step(
            NOW,
            book,
            Input::Claim {
                claim,
                from_client: true,
            },
        )?
        .locks;
    let mut now = NOW;
    let mut asked = Vec::new();
    let mut certificates = Vec::new();
    while asked.is_empty() && now < NOW + 60_000 {
        now += 10;
        let outputs = owner.tick(now, book);
        locks.extend(outputs.locks);
        certificates.extend(outputs.certificates_to_publish);
        asked = outputs.vote_requests;
    }
    if asked.is_empty() {
        return Err("the owner never asked for votes".into());
    }
    // Its locks are durable: the owner counts its own vote.
    let persisted = owner.step(now, book, Input::Persisted)?;
    locks.extend(persisted.locks);
    certificates.extend(persisted.certificates_to_publish);
    let mut requests = Vec::new();
    let mut answers = Vec::new();
    for (who, request) in asked {
        if who != voter_key {
            continue;
        }
        let outputs = voter.step(now, book, Input::VoteRequest { request: &request })?;
        let answer = outputs.vote_reply.ok_or("a vote request got no answer")?;
        if answer.vote.is_empty() {
            return Err(format!("a vote was refused: {}", answer.refusal).into());
        }
        locks.extend(outputs.locks);
        requests.push(request);
        answers.push(answer);
    }
    for answer in &answers {
        let outputs = owner.step(now, book, Input::VoteResponse { response: answer })?;
        locks.extend(outputs.locks);
        certificates.extend(outputs.certificates_to_publish);
    }
    if certificates.is_empty() {
        return Err("no certificate formed".into());
    }
    let mut heartbeat = None;
    while heartbeat.is_none() && now < NOW + 120_000 {
        now += 100;
        heartbeat = owner.tick(now, book).heartbeat;
    }
    Ok(Flow {
        requests,
        answers,
        certificates,
        locks,
        heartbeat: heartbeat.ok_or("no heartbeat came due")?,
    })
}

fn main() -> Result<()> {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let net = network();
    let network_id = net.genesis.network_id;
    let seal_by = |key: &SigningKey, kind: Kind, body: &dyn MessageBytes| seal(&network_id, key, kind, body.bytes()).0;
    let [eu0, eu1, ..] = net.validators.as_slice() else {
        return Err("the fuzzing network has fewer than two validators".into());
    };
    let (issuer, operator) = (&net.issuer, &net.operator);
    let distribution_id = wire::genesis_distribution_id(&network_id, 0);

    // The claim's home is eu-1's bucket; eu-0 (the fuzz targets' node) votes.
    let setup = net.genesis.setup();
    let mut owner = Validator::new(&setup, Box::new(eu1.clone()), &[])?;
    let mut voter = Validator::new(&setup, Box::new(eu0.clone()), &[])?;
    let claimant = claimant_for(&owner, &distribution_id, &eu1.verifying_key().to_bytes())?;

    let attestation = seal_by(
        issuer,
        Kind::Attestation,
        &pb::Attestation {
            issuer: public(issuer),
            subject: public(&claimant),
            schema: "demo".into(),
            data: b"member since 2024".to_vec(),
            issued_at: NOW - 1_000,
            expires_at: 0,
            nonce: 1,
        },
    );
    let other_attestation = seal_by(
        issuer,
        Kind::Attestation,
        &pb::Attestation {
            issuer: public(issuer),
            subject: vec![9; 32],
            schema: "demo".into(),
            data: vec![],
            issued_at: NOW - 2_000,
            expires_at: NOW + 1_000_000,
            nonce: 2,
        },
    );
    let other_id = verify(&other_attestation)?.id;
    let revocation = seal_by(
        issuer,
        Kind::Revocation,
        &pb::Revocation {
            issuer: public(issuer),
            attestation_id: other_id.0.to_vec(),
            revoked_at: NOW - 500,
            reason: "key compromised".into(),
        },
    );
    let grant = seal_by(
        operator,
        Kind::IssuerGrant,
        &pb::IssuerGrant {
            operator: public(operator),
            issuer: vec![5; 32],
            schema: "kyc".into(),
            granted: true,
            granted_at: NOW - 100,
        },
    );
    let distribution = seal_by(
        operator,
        Kind::Distribution,
        &pb::Distribution {
            operator: public(operator),
            asset: "GRANT".into(),
            total: 2_000,
            rule: Some(pb::DistributionRule {
                schema: "demo".into(),
                issuers: vec![public(issuer)],
                amount_per_claim: 20,
            }),
            opens_at: 0,
            closes_at: NOW + 10_000_000,
            allocations: vec![
                pb::Allocation {
                    region: "eu".into(),
                    amount: 1_000,
                },
                pb::Allocation {
                    region: "us".into(),
                    amount: 1_000,
                },
            ],
            nonce: 3,
            max_outflow_per_window: 500,
            outflow_window_ms: 60_000,
            name: "grants".into(),
        },
    );
    let rebalance = seal_by(
        operator,
        Kind::Rebalance,
        &pb::Rebalance {
            operator: public(operator),
            distribution_id: distribution_id.to_vec(),
            from_region: "eu".into(),
            to_region: "us".into(),
            amount: 1_000,
            nonce: 4,
        },
    );
    let attestation_v = verify(&attestation)?;
    let claim = seal_by(
        &claimant,
        Kind::Claim,
        &pb::Claim {
            distribution_id: distribution_id.to_vec(),
            claimant: public(&claimant),
            attestation_id: attestation_v.id.0.to_vec(),
            amount: 10,
            recipient: vec![],
            created_at: NOW,
            nonce: 5,
        },
    );
    let claim_v = verify(&claim)?;

    let mut book = book();
    for raw in [&attestation, &other_attestation, &revocation, &grant] {
        book.apply(NOW, &verify(raw)?)?;
    }
    let flow = claim_flow(&book, &mut owner, &mut voter, eu0, &claim_v)?;
    let batch = flow
        .requests
        .first()
        .map(|r| r.object.clone())
        .ok_or("no vote request")?;
    let vote = flow.answers.first().map(|a| a.vote.clone()).ok_or("no vote")?;
    let certificate = flow.certificates.first().cloned().ok_or("no certificate")?;

    // Freezes: of eu-0's untouched bucket, and of eu-1's with its pending batch.
    let bucket = |owner: &SigningKey| BucketId {
        distribution: distribution_id,
        region: "eu".into(),
        owner: owner.verifying_key().to_bytes(),
    };
    let empty_freeze = Freeze::new(eu1.verifying_key().to_bytes(), bucket(eu0), None, None);
    let freeze = seal_by(eu1, Kind::Freeze, &wire::freeze_body(&empty_freeze, None));
    let pending = wire::batch(&network_id, &verify(&batch)?, &mut Default::default())?.0;
    let pending_freeze = Freeze::new(eu0.verifying_key().to_bytes(), bucket(eu1), None, Some(pending));
    let freeze_pending = seal_by(
        eu0,
        Kind::Freeze,
        &wire::freeze_body(&pending_freeze, Some(batch.clone())),
    );
    let evidence = seal_by(
        eu0,
        Kind::Evidence,
        &pb::Evidence {
            first: batch.clone(),
            second: freeze_pending.clone(),
        },
    );

    let envelopes: Vec<(&str, &Vec<u8>)> = vec![
        ("attestation", &attestation),
        ("attestation-expiring", &other_attestation),
        ("revocation", &revocation),
        ("issuer-grant", &grant),
        ("distribution", &distribution),
        ("rebalance", &rebalance),
        ("claim", &claim),
        ("batch", &batch),
        ("vote", &vote),
        ("freeze", &freeze),
        ("freeze-pending", &freeze_pending),
        ("heartbeat", &flow.heartbeat),
        ("evidence", &evidence),
    ];
    let mut corpus = Corpus::default();
    for (name, raw) in &envelopes {
        corpus.add("envelope", *name, raw.to_vec());
        let v = verify(raw)?;
        let mut body = vec![selector_of(v.kind)];
        body.extend_from_slice(&v.body);
        corpus.add("wire_bodies", *name, body);
    }
    let mut certificate_body = vec![selector_of(Kind::Batch)];
    certificate_body.extend_from_slice(&certificate);
    corpus.add("wire_bodies", "certificate", certificate_body);

    // Objects applied to a node, alone and in the orders that matter.
    let v = |raw: &Vec<u8>| verify(raw);
    let (att, rev, gr, dist, reb, cl, hb) = (
        v(&attestation)?,
        v(&revocation)?,
        v(&grant)?,
        v(&distribution)?,
        v(&rebalance)?,
        claim_v.clone(),
        v(&flow.heartbeat)?,
    );
    let other = v(&other_attestation)?;
    for (name, items) in [
        ("attestation", vec![&att]),
        ("attestation-then-revocation", vec![&other, &rev]),
        ("revocation-before-attestation", vec![&rev, &other]),
        ("issuer-grant", vec![&gr]),
        ("distribution", vec![&dist]),
        ("rebalance", vec![&reb]),
        ("attestation-then-claim", vec![&att, &cl]),
        ("heartbeat", vec![&hb]),
        ("everything", vec![&gr, &att, &other, &rev, &dist, &reb, &cl, &hb]),
    ] {
        corpus.add("escrow_objects", name, objects(&items));
    }

    corpus.add("certificate", "batch-certificate", certificate.clone());
    for (i, request) in flow.requests.iter().enumerate() {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&request.encode_to_vec());
        corpus.add("vote_request", format!("request-{i}"), bytes);
    }
    for (i, answer) in flow.answers.iter().enumerate() {
        let mut bytes = vec![1];
        bytes.extend_from_slice(&answer.encode_to_vec());
        corpus.add("vote_request", format!("answer-{i}"), bytes);
    }
    let handoff = pb::VoteRequest {
        object: claim.clone(),
        attestations: vec![attestation.clone()],
        certificates: vec![],
    };
    let with_certificate = pb::VoteRequest {
        object: freeze.clone(),
        attestations: vec![],
        certificates: vec![certificate.clone()],
    };
    for (name, request) in [("handoff", &handoff), ("freeze-with-certificate", &with_certificate)] {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&request.encode_to_vec());
        corpus.add("vote_request", name, bytes);
    }

    // Frames of both protocols.
    let log: Vec<Vec<u8>> = [
        &grant,
        &attestation,
        &other_attestation,
        &revocation,
        &distribution,
        &rebalance,
        &claim,
    ]
    .into_iter()
    .cloned()
    .collect();
    let sync_request = pb::SyncRequest {
        cursor: 0,
        limit: 256,
        cert_cursor: 0,
    };
    let sync_response = pb::SyncResponse {
        envelopes: log.clone(),
        next_cursor: log.len() as u64,
        log_len: log.len() as u64,
        certificates: vec![certificate.clone()],
        next_cert_cursor: 1,
        cert_log_len: 1,
    };
    let with_selector = |selector: u8, frame: Vec<u8>| [vec![selector], frame].concat();
    corpus.add("codec", "sync-request", with_selector(0, frame(&sync_request)));
    corpus.add("codec", "sync-response", with_selector(1, frame(&sync_response)));
    for (i, request) in flow.requests.iter().enumerate() {
        corpus.add("codec", format!("vote-request-{i}"), with_selector(2, frame(request)));
    }
    corpus.add("codec", "handoff", with_selector(2, frame(&handoff)));
    for (i, answer) in flow.answers.iter().enumerate() {
        corpus.add("codec", format!("vote-answer-{i}"), with_selector(3, frame(answer)));
    }
    let refusal = pb::VoteResponse {
        vote: vec![],
        refusal: "unknown attestation".into(),
        retry: true,
    };
    corpus.add("codec", "vote-refusal", with_selector(3, frame(&refusal)));

    // Lock logs: the locks and own batch the flow wrote, and a torn tail.
    let full = encode_log(&flow.locks);
    corpus.add("lock_log", "empty", encode_log(&[]));
    corpus.add("lock_log", "flow", full.clone());
    let votes_only: Vec<LockRecord> = flow
        .locks
        .iter()
        .filter(|r| matches!(r, LockRecord::Vote { .. }))
        .cloned()
        .collect();
    corpus.add("lock_log", "votes", encode_log(&votes_only));
    corpus.add(
        "lock_log",
        "torn-tail",
        full.get(..full.len() - 3).unwrap_or_default().to_vec(),
    );

    // Store records as replay reads them.
    let mut everything = Vec::new();
    for (position, raw) in log.iter().enumerate() {
        let entry = log_record(position as u64, NOW + position as u64, raw);
        corpus.add("store_records", format!("log-{position}"), entry.clone());
        everything.extend(entry);
    }
    let cert_record = record(1, &certificate);
    let held = record(2, &stamped_value(NOW, &claim));
    corpus.add("store_records", "certificate", cert_record.clone());
    corpus.add("store_records", "held-claim", held.clone());
    everything.extend(cert_record);
    everything.extend(held);
    corpus.add("store_records", "replay", everything);

    // Genesis and node files, as `credence genesis` writes them.
    corpus.add("genesis", "local", net.genesis_text.clone().into_bytes());
    let dir = tempfile::tempdir()?;
    let plan = GenesisPlan {
        network_name: "fuzz".into(),
        regions: vec!["eu".into(), "us".into(), "ap".into()],
        validators_per_region: 2,
        base_port: 7100,
        created_at: 1_700_000_000_000,
        region_budget: credence::config::DEMO_REGION_BUDGET,
    };
    // Its genesis holds fresh random keys, so only its node files (which
    // name key files, not keys) are seeds; the genesis variant is derived
    // from the fuzzing network's instead.
    let written = write_network(&plan, dir.path())?;
    let mut variant = net.genesis.genesis.clone();
    variant.params.fault_model = FaultModel::Crash;
    variant.params.batch_claims_max = 64;
    for (i, v) in variant.validators.iter_mut().enumerate() {
        v.weight = i as u64 + 1;
        v.addresses = vec![format!("/ip4/127.0.0.1/tcp/{}", 7102 + 3 * i)];
    }
    corpus.add("genesis", "crash-weighted", toml::to_string(&variant)?.into_bytes());
    for node in written.nodes.iter().take(2) {
        let text = std::fs::read(dir.path().join("nodes").join(&node.name).join("node.toml"))?;
        corpus.add("node_config", node.name.clone(), text);
    }
    let mut with_peers = std::fs::read_to_string(dir.path().join("nodes").join("eu-0").join("node.toml"))?;
    with_peers.push_str(
        "peers = [\"/ip4/127.0.0.1/tcp/7102/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN\", \"/dns4/node.example/tcp/7104\"]\nenable_fault_injection = true\n",
    );
    corpus.add("node_config", "with-peers", with_peers.into_bytes());

    // RPC requests, by the selector of the `rpc_requests` target.
    let hex_id = |id: &[u8]| hex::encode(id);
    let submit = |raw: &Vec<u8>| pb::SubmitRequest { envelope: raw.clone() }.encode_to_vec();
    let eu0_key = hex_id(&eu0.verifying_key().to_bytes());
    let requests: Vec<(&str, u8, Vec<u8>)> = vec![
        ("status", 0, pb::StatusRequest {}.encode_to_vec()),
        ("submit-attestation", 1, submit(&attestation)),
        ("submit-revocation", 2, submit(&revocation)),
        (
            "get-credential",
            3,
            pb::GetCredentialRequest {
                id: hex_id(&attestation_v.id.0),
            }
            .encode_to_vec(),
        ),
        (
            "list-credentials",
            4,
            pb::ListCredentialsRequest {
                subject: hex_id(&public(&claimant)),
            }
            .encode_to_vec(),
        ),
        (
            "block-peer-key",
            5,
            pb::SetPeerBlockedRequest {
                peer: eu0_key.clone(),
                blocked: true,
            }
            .encode_to_vec(),
        ),
        (
            "block-peer-id",
            5,
            pb::SetPeerBlockedRequest {
                peer: credence::keys::peer_id_of(&eu0.verifying_key().to_bytes())
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                blocked: false,
            }
            .encode_to_vec(),
        ),
        ("list-distributions", 6, pb::ListDistributionsRequest {}.encode_to_vec()),
        ("submit-distribution", 7, submit(&distribution)),
        ("submit-claim", 8, submit(&claim)),
        (
            "get-claim",
            9,
            pb::GetClaimRequest {
                id: hex_id(&claim_v.id.0),
            }
            .encode_to_vec(),
        ),
        (
            "get-liquidity",
            10,
            pb::GetLiquidityRequest {
                distribution_id: hex_id(&distribution_id),
            }
            .encode_to_vec(),
        ),
        (
            "route",
            11,
            pb::RouteRequest {
                distribution_id: hex_id(&distribution_id),
                claimant: hex_id(&public(&claimant)),
            }
            .encode_to_vec(),
        ),
        (
            "get-balance",
            12,
            pb::GetBalanceRequest {
                account: hex_id(&public(&claimant)),
            }
            .encode_to_vec(),
        ),
        ("submit-rebalance", 13, submit(&rebalance)),
        ("audit", 14, pb::AuditRequest {}.encode_to_vec()),
    ];
    for (name, selector, message) in requests {
        corpus.add("rpc_requests", name, with_selector(selector, message));
    }

    corpus.write(&out)
}

/// A prost message's encoding, for the signing helper.
trait MessageBytes {
    fn bytes(&self) -> Vec<u8>;
}

impl<M: Message> MessageBytes for M {
    fn bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}
