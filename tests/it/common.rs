//! Shared helpers: a genesis for N in-process validators, node start-up,
//! gRPC clients, envelope builders and condition waits.

use std::path::PathBuf;
use std::time::Duration;

use credence::config::LoadedGenesis;
use credence::core::envelope::{Kind, NetworkId, seal};
use credence::node::{self, NodeSettings, RunningNode};
use credence_proto::v1 as pb;
use credence_proto::v1::node_client::NodeClient;
use ed25519_dalek::SigningKey;
use prost::Message;
use tonic::transport::Channel;

/// Multi-node tests run one at a time: they share two cores, and several
/// networks of real nodes at once starve each other past any fair deadline.
pub static NETWORK_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Generous: these machines are noisy, and a wait only ends early on success.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct TestNet {
    pub dir: tempfile::TempDir,
    pub genesis: LoadedGenesis,
    pub validators: Vec<SigningKey>,
    pub issuer: SigningKey,
    #[allow(dead_code)] // used by the escrow tests
    pub operator: SigningKey,
}

impl TestNet {
    /// A network with `per_region` validators in each named region.
    pub fn new(regions: &[&str], per_region: usize) -> TestNet {
        let dir = tempfile::tempdir().expect("temp dir");
        let local = credence::config::local_network(regions, per_region, 7, 1_000, 10).expect("local network");
        let path = dir.path().join("genesis.toml");
        std::fs::write(&path, &local.genesis_text).expect("write genesis");
        TestNet {
            dir,
            genesis: local.genesis,
            validators: local.validators,
            issuer: local.issuer,
            operator: local.operator,
        }
    }

    pub fn network_id(&self) -> NetworkId {
        self.genesis.network_id
    }

    pub fn store_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{i}"))
    }

    pub fn settings(&self, i: usize, peers: Vec<String>) -> NodeSettings {
        NodeSettings {
            genesis: self.genesis.clone(),
            key: self.validators[i].clone(),
            store_dir: self.store_dir(i),
            rpc_listen: "127.0.0.1:0".parse().expect("addr"),
            http_listen: "127.0.0.1:0".parse().expect("addr"),
            p2p_listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            peers,
            max_incoming_connections: 64,
            enable_fault_injection: true,
            dial_genesis_addresses: true,
            mode_label: "node",
        }
    }

    /// Starts validator `i`, dialling `peers`.
    pub async fn start(&self, i: usize, peers: Vec<String>) -> RunningNode {
        node::start(self.settings(i, peers)).await.expect("node starts")
    }

    /// Starts validators `0..n` in turn, each dialling those before it (a full mesh).
    pub async fn start_mesh(&self, n: usize) -> Vec<RunningNode> {
        let mut nodes: Vec<RunningNode> = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..n {
            let node = self.start(i, addrs.clone()).await;
            addrs.push(p2p_addr(&node).await);
            nodes.push(node);
        }
        nodes
    }

    /// A signed attestation by the network's issuer.
    pub fn attestation(&self, subject: [u8; 32], data: &str) -> Vec<u8> {
        attestation_by(&self.network_id(), &self.issuer, subject, "demo", data)
    }

    /// A signed revocation by the network's issuer.
    pub fn revocation(&self, id: &str) -> Vec<u8> {
        let body = pb::Revocation {
            issuer: self.issuer.verifying_key().to_bytes().to_vec(),
            attestation_id: hex::decode(id).expect("hex id"),
            revoked_at: node::now_ms(),
            reason: "test".into(),
        };
        seal(&self.network_id(), &self.issuer, Kind::Revocation, body.encode_to_vec()).0
    }
}

pub fn attestation_by(network: &NetworkId, key: &SigningKey, subject: [u8; 32], schema: &str, data: &str) -> Vec<u8> {
    let body = pb::Attestation {
        issuer: key.verifying_key().to_bytes().to_vec(),
        subject: subject.to_vec(),
        schema: schema.into(),
        data: data.as_bytes().to_vec(),
        issued_at: node::now_ms(),
        expires_at: 0,
        nonce: rand_nonce(data),
    };
    seal(network, key, Kind::Attestation, body.encode_to_vec()).0
}

/// FNV-1a of the data: nonces only need to differ between distinct data.
fn rand_nonce(data: &str) -> u64 {
    let mut x: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data.as_bytes() {
        x ^= u64::from(*b);
        x = x.wrapping_mul(0x100_0000_01b3);
    }
    x
}

/// The full dialable address of a running node.
pub async fn p2p_addr(node: &RunningNode) -> String {
    let addrs = node.handle.net.listen_addrs().await;
    let addr = addrs.first().expect("node listens").clone();
    format!("{addr}/p2p/{}", node.handle.info.peer_id)
}

pub async fn client(node: &RunningNode) -> NodeClient<Channel> {
    NodeClient::connect(format!("http://{}", node.rpc_addr))
        .await
        .expect("gRPC connects")
}

pub async fn submit_attestation(node: &RunningNode, envelope: Vec<u8>) -> Result<String, tonic::Status> {
    let mut c = client(node).await;
    c.submit_attestation(pb::SubmitRequest { envelope })
        .await
        .map(|r| r.into_inner().id)
}

pub async fn credential_status(node: &RunningNode, id: &str) -> String {
    let mut c = client(node).await;
    c.get_credential(pb::GetCredentialRequest { id: id.into() })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or_else(|e| format!("error: {e}"))
}

/// Polls `check` until it holds or the deadline passes; returns whether it held.
pub async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < DEADLINE {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
