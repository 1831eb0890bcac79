//! `kill -9` of a validator under claim load, then restart: it never votes
//! twice at one `(bucket, seq)`, and it catches up with the others.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use credence::core::envelope::{Kind, NetworkId, parse_hex32, seal};
use credence::store::locks::{LockLog, LockRecord};
use credence_proto::v1 as pb;
use credence_proto::v1::escrow_client::EscrowClient;
use credence_proto::v1::node_client::NodeClient;
use ed25519_dalek::SigningKey;
use prost::Message;

const BIN: &str = env!("CARGO_BIN_EXE_credence");
const DEADLINE: Duration = Duration::from_secs(90);

/// The tests here run one at a time: each picks its ports from this
/// process's id, and they would pick the same ones.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(config: &std::path::Path, log: &std::path::Path) -> Proc {
    let log = std::fs::File::create(log).expect("log file");
    Proc(
        Command::new(BIN)
            .args(["node", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn node"),
    )
}

async fn until<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) -> bool {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// A base port below the kernel's ephemeral range whose next `count` ports
/// are all free now.
fn free_port_range(count: u16) -> u16 {
    let mut candidate = 20_000 + (std::process::id() % 4_000) as u16 * 3;
    for _ in 0..200 {
        let free = (0..count).all(|i| std::net::TcpListener::bind(("127.0.0.1", candidate + i)).is_ok());
        if free {
            return candidate;
        }
        candidate = 20_000 + (candidate - 20_000 + 37) % 12_000;
    }
    panic!("no run of {count} free ports below 32000");
}

async fn audit(rpc: &str) -> Option<pb::AuditResponse> {
    let mut c = EscrowClient::connect(rpc.to_string()).await.ok()?;
    c.audit(pb::AuditRequest {}).await.ok().map(|r| r.into_inner())
}

/// Writes a one-region network of `validators` with `credence genesis` and
/// returns its `network.json`.
fn genesis(dir: &std::path::Path, validators: usize, base: u16) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["genesis", "--regions", "eu", "--validators-per-region"])
        .arg(validators.to_string())
        .args(["--base-port", &base.to_string(), "--json", "--out"])
        .arg(dir)
        .output()
        .expect("genesis");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("network json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_validator_never_votes_twice_and_catches_up() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let base = free_port_range(12);
    let network = genesis(dir.path(), 4, base);
    let nodes: Vec<(String, String, std::path::PathBuf)> = network["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or_default().to_string(),
                n["rpc"].as_str().unwrap_or_default().to_string(),
                std::path::PathBuf::from(n["config"].as_str().unwrap_or_default()),
            )
        })
        .collect();
    let mut procs: HashMap<String, Proc> = nodes
        .iter()
        .map(|(name, _, config)| (name.clone(), start(config, &dir.path().join(format!("{name}.log")))))
        .collect();
    for (_, rpc, _) in &nodes {
        let rpc = rpc.clone();
        assert!(
            until(|| {
                let rpc = rpc.clone();
                async move { audit(&rpc).await.is_some() }
            })
            .await
        );
    }
    let network_id = NetworkId(parse_hex32(network["network_id"].as_str().unwrap_or_default()).expect("network id"));
    let issuer = credence::keys::load(&dir.path().join("keys/issuer.key")).expect("issuer key");
    let mut escrow = EscrowClient::connect(nodes[0].1.clone()).await.expect("connect");
    let dist = escrow
        .list_distributions(pb::ListDistributionsRequest {})
        .await
        .expect("distributions")
        .into_inner()
        .distributions[0]
        .clone();

    // Load: claims from fresh claimants, entered at eu-0 and eu-1; eu-2 is
    // killed with -9 a third of the way through and restarted later.
    let mut claim_ids = Vec::new();
    for i in 0..60u64 {
        if i == 20 {
            let mut victim = procs.remove("eu-2").expect("eu-2");
            let _ = victim.0.kill(); // SIGKILL
            let _ = victim.0.wait();
        }
        if i == 40 {
            procs.insert(
                "eu-2".into(),
                start(&nodes[2].2, &dir.path().join("eu-2.restarted.log")),
            );
        }
        let entry = &nodes[(i % 2) as usize].1;
        let claimant = SigningKey::from_bytes(blake3::hash(&i.to_le_bytes()).as_bytes());
        let subject = claimant.verifying_key().to_bytes();
        let body = pb::Attestation {
            issuer: issuer.verifying_key().to_bytes().to_vec(),
            subject: subject.to_vec(),
            schema: "demo".into(),
            data: vec![],
            issued_at: credence::node::now_ms(),
            expires_at: 0,
            nonce: i,
        };
        let (envelope, _) = seal(&network_id, &issuer, Kind::Attestation, body.encode_to_vec());
        let Ok(mut node) = NodeClient::connect(entry.clone()).await else {
            continue;
        };
        let Ok(att) = node.submit_attestation(pb::SubmitRequest { envelope }).await else {
            continue;
        };
        let claim = pb::Claim {
            distribution_id: hex::decode(&dist.id).expect("hex"),
            claimant: subject.to_vec(),
            attestation_id: hex::decode(&att.into_inner().id).expect("hex"),
            amount: dist.amount_per_claim,
            recipient: vec![],
            created_at: credence::node::now_ms(),
            nonce: i,
        };
        let (envelope, _) = seal(&network_id, &claimant, Kind::Claim, claim.encode_to_vec());
        let Ok(mut escrow) = EscrowClient::connect(entry.clone()).await else {
            continue;
        };
        if let Ok(status) = escrow.submit_claim(pb::SubmitRequest { envelope }).await {
            claim_ids.push((entry.clone(), status.into_inner().id));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(claim_ids.len() >= 50, "too few claims went in: {}", claim_ids.len());

    // Every node converges to one certified state, the restarted one included.
    let converged = until(|| {
        let nodes = nodes.clone();
        async move {
            let mut digests = Vec::new();
            for (_, rpc, _) in &nodes {
                match audit(rpc).await {
                    Some(a) if a.conflicting_certificates == 0 => digests.push((a.state_digest, a.slots.len())),
                    _ => return false,
                }
            }
            digests.windows(2).all(|w| w[0] == w[1]) && digests[0].1 > 0
        }
    })
    .await;
    if !converged {
        for (name, rpc, _) in &nodes {
            let a = audit(rpc).await;
            eprintln!(
                "{name}: {:?}",
                a.map(|a| (a.state_digest, a.slots.len(), a.conflicting_certificates))
            );
        }
        panic!(
            "nodes did not converge after the restart (logs in {})",
            dir.path().display()
        );
    }
    let a = audit(&nodes[2].1).await.expect("audit");
    let mut slots: Vec<&str> = a.slots.iter().map(|s| s.slot.as_str()).collect();
    let funded = slots.len();
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(slots.len(), funded, "a slot was funded twice");
    for d in &a.distributions {
        assert!(d.spent <= d.total);
    }

    // The killed validator's locks: never two objects at one (bucket, seq).
    drop(procs);
    let (_, records) = LockLog::open(&dir.path().join("nodes/eu-2/data/store/locks.log")).expect("lock log");
    let mut seen: HashMap<([u8; 32], u64), [u8; 32]> = HashMap::new();
    let mut votes = 0;
    for r in records {
        if let LockRecord::Vote { bucket, seq, object_id } = r {
            votes += 1;
            let previous = seen.insert((bucket, seq), object_id);
            assert!(previous.is_none_or(|p| p == object_id), "eu-2 voted twice at seq {seq}");
        }
    }
    assert!(votes > 0, "eu-2 never voted");
}

/// A node answers a client only once the object is durable: every
/// attestation acknowledged before a `kill -9` is there after the restart,
/// however many were in flight when the process died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_attestation_survives_a_kill() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let base = free_port_range(3);
    let network = genesis(dir.path(), 1, base);
    let node = &network["nodes"][0];
    let rpc = node["rpc"].as_str().unwrap_or_default().to_string();
    let config = std::path::PathBuf::from(node["config"].as_str().unwrap_or_default());
    let network_id = NetworkId(parse_hex32(network["network_id"].as_str().unwrap_or_default()).expect("network id"));
    let issuer = credence::keys::load(&dir.path().join("keys/issuer.key")).expect("issuer key");

    let mut proc = start(&config, &dir.path().join("node.log"));
    let up = |rpc: String| async move { NodeClient::connect(rpc).await.is_ok() };
    assert!(until(|| up(rpc.clone())).await, "the node never came up");

    // Clients submit concurrently; the node is killed as soon as they stop,
    // with the last submissions' writes as fresh as they can be.
    let mut clients = Vec::new();
    for client in 0..8u64 {
        let (rpc, issuer) = (rpc.clone(), issuer.clone());
        clients.push(tokio::spawn(async move {
            let mut node = NodeClient::connect(rpc).await.expect("connect");
            let mut acknowledged = Vec::new();
            for i in 0..40u64 {
                let nonce = client * 1_000 + i;
                let body = pb::Attestation {
                    issuer: issuer.verifying_key().to_bytes().to_vec(),
                    subject: blake3::hash(&nonce.to_le_bytes()).as_bytes().to_vec(),
                    schema: "demo".into(),
                    data: vec![],
                    issued_at: credence::node::now_ms(),
                    expires_at: 0,
                    nonce,
                };
                let (envelope, _) = seal(&network_id, &issuer, Kind::Attestation, body.encode_to_vec());
                if let Ok(response) = node.submit_attestation(pb::SubmitRequest { envelope }).await {
                    acknowledged.push(response.into_inner().id);
                }
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.extend(client.await.expect("client"));
    }
    let _ = proc.0.kill(); // SIGKILL
    let _ = proc.0.wait();
    assert!(
        acknowledged.len() >= 300,
        "too few acknowledged: {}",
        acknowledged.len()
    );

    let _restarted = start(&config, &dir.path().join("node.restarted.log"));
    assert!(until(|| up(rpc.clone())).await, "the node never came back");
    let mut node = NodeClient::connect(rpc.clone()).await.expect("connect");
    for id in &acknowledged {
        let status = node
            .get_credential(pb::GetCredentialRequest { id: id.clone() })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or_else(|e| format!("error: {e}"));
        assert_eq!(status, "valid", "acknowledged attestation {id} was lost in the kill");
    }
}
