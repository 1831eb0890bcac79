//! Genesis and node configuration (TOML), and the generators behind
//! `credence genesis` and dev mode.
//!
//! The genesis is shared by every node of a network, byte for byte: its blake3
//! hash is the network id. The node config is per node and names the genesis,
//! the key, the data directory and the listen addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::envelope::{NetworkId, parse_hex32};
use crate::core::{Millis, PublicKey};
use crate::keys;

/// Why a configuration could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid TOML for this file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("genesis {path} is invalid: {message}")]
    InvalidGenesis { path: PathBuf, message: String },
    #[error("node config {path} is invalid: {message}")]
    InvalidNode { path: PathBuf, message: String },
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error("{0}")]
    Usage(String),
}

/// Whether validators may lie (`byzantine`, > 2/3 quorums) or only crash
/// (`crash`, majority quorums): the core's one definition.
pub use crate::core::escrow::FaultModel;

/// Protocol parameters every node of a network shares (the genesis
/// `[params]`): the state machine's own definition.
pub use crate::core::validator::Params;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionEntry {
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorEntry {
    pub name: String,
    /// ed25519 public key, hex.
    pub key: String,
    pub region: String,
    pub weight: u64,
    /// libp2p multiaddrs where this validator listens.
    #[serde(default)]
    pub addresses: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerEntry {
    pub key: String,
    pub schemas: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorEntry {
    pub key: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationEntry {
    pub region: String,
    pub amount: u64,
}

/// A distribution created by the genesis itself (trusted by being in it).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributionEntry {
    pub name: String,
    pub asset: String,
    pub total: u64,
    pub schema: String,
    pub amount_per_claim: u64,
    #[serde(default)]
    pub opens_at: Millis,
    /// 0: never closes.
    #[serde(default)]
    pub closes_at: Millis,
    pub allocations: Vec<AllocationEntry>,
}

/// The genesis file, shared byte for byte by every node of a network.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    pub network_name: String,
    pub created_at: Millis,
    #[serde(default)]
    pub params: Params,
    pub regions: Vec<RegionEntry>,
    pub validators: Vec<ValidatorEntry>,
    #[serde(default)]
    pub issuers: Vec<IssuerEntry>,
    #[serde(default)]
    pub operators: Vec<OperatorEntry>,
    #[serde(default)]
    pub distributions: Vec<DistributionEntry>,
}

/// A validator as the node uses it, keys decoded.
#[derive(Clone, Debug)]
pub struct Validator {
    pub name: String,
    pub key: PublicKey,
    pub region: String,
    pub weight: u64,
    pub addresses: Vec<String>,
}

/// A parsed, validated genesis and its network id.
#[derive(Clone, Debug)]
pub struct LoadedGenesis {
    pub genesis: Genesis,
    pub network_id: NetworkId,
    pub validators: Vec<Validator>,
    pub issuer_grants: Vec<(PublicKey, String)>,
    pub operators: BTreeSet<PublicKey>,
}

impl LoadedGenesis {
    /// Parses and validates genesis bytes; `path` is only for messages.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ConfigError::Parse {
            path: path.to_path_buf(),
            message: "not UTF-8".into(),
        })?;
        let genesis: Genesis = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ConfigError::InvalidGenesis {
            path: path.to_path_buf(),
            message,
        };
        let key = |what: &str, hex: &str| {
            parse_hex32(hex).ok_or_else(|| invalid(format!("{what} key {hex:?} is not 64 hex characters")))
        };
        let mut regions = BTreeSet::new();
        for r in &genesis.regions {
            if r.name.is_empty() || !regions.insert(r.name.clone()) {
                return Err(invalid(format!("region {:?} is empty or listed twice", r.name)));
            }
        }
        if genesis.validators.is_empty() {
            return Err(invalid("no validators".into()));
        }
        let mut validators = Vec::new();
        let mut seen_keys = BTreeSet::new();
        let mut seen_names = BTreeSet::new();
        for v in &genesis.validators {
            let k = key("validator", &v.key)?;
            if !regions.contains(&v.region) {
                return Err(invalid(format!(
                    "validator {} is in unknown region {:?}",
                    v.name, v.region
                )));
            }
            if v.weight == 0 {
                return Err(invalid(format!("validator {} has weight 0", v.name)));
            }
            if !seen_keys.insert(k) || !seen_names.insert(v.name.clone()) {
                return Err(invalid(format!("validator {} or its key is listed twice", v.name)));
            }
            validators.push(Validator {
                name: v.name.clone(),
                key: k,
                region: v.region.clone(),
                weight: v.weight,
                addresses: v.addresses.clone(),
            });
        }
        let mut issuer_grants = Vec::new();
        for i in &genesis.issuers {
            let k = key("issuer", &i.key)?;
            for s in &i.schemas {
                issuer_grants.push((k, s.clone()));
            }
        }
        let operators = genesis
            .operators
            .iter()
            .map(|o| key("operator", &o.key))
            .collect::<Result<BTreeSet<_>, _>>()?;
        for d in &genesis.distributions {
            let mut sum: u64 = 0;
            for a in &d.allocations {
                if !regions.contains(&a.region) {
                    return Err(invalid(format!(
                        "distribution {} allocates to unknown region {:?}",
                        d.name, a.region
                    )));
                }
                sum = sum
                    .checked_add(a.amount)
                    .ok_or_else(|| invalid(format!("distribution {} allocations overflow", d.name)))?;
            }
            if sum != d.total {
                return Err(invalid(format!(
                    "distribution {} allocations sum to {sum}, not its total {}",
                    d.name, d.total
                )));
            }
        }
        Ok(LoadedGenesis {
            network_id: NetworkId::of_genesis(bytes),
            genesis,
            validators,
            issuer_grants,
            operators,
        })
    }

    /// Reads and validates a genesis file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(path, &bytes)
    }

    /// The validator holding this key, if any.
    pub fn validator(&self, key: &PublicKey) -> Option<&Validator> {
        self.validators.iter().find(|v| &v.key == key)
    }

    /// What the validator state machine is built from: this genesis as plain
    /// values (the node and the simulator build it the same way).
    pub fn setup(&self) -> crate::core::validator::Setup {
        use crate::core::validator::{Member, Setup};
        let network = self.network_id;
        let operator = self.operators.iter().next().copied().unwrap_or([0; 32]);
        Setup {
            network,
            params: self.genesis.params,
            validators: self
                .validators
                .iter()
                .map(|v| Member {
                    key: v.key,
                    name: v.name.clone(),
                    region: v.region.clone(),
                    weight: v.weight,
                })
                .collect(),
            distributions: self
                .genesis
                .distributions
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let distribution = crate::core::escrow::Distribution {
                        id: crate::core::wire::genesis_distribution_id(&network, i),
                        operator,
                        asset: d.asset.clone(),
                        total: d.total,
                        schema: d.schema.clone(),
                        issuers: vec![],
                        amount_per_claim: d.amount_per_claim,
                        opens_at: d.opens_at,
                        closes_at: crate::core::wire::closes_at(d.closes_at),
                        allocations: d.allocations.iter().map(|a| (a.region.clone(), a.amount)).collect(),
                        max_outflow_per_window: 0,
                        outflow_window_ms: 0,
                    };
                    (distribution, d.name.clone())
                })
                .collect(),
        }
    }
}

/// One node's configuration file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Path of the genesis file (relative paths are relative to this file).
    pub genesis: PathBuf,
    /// Path of this node's key file (mode 0600).
    pub key: PathBuf,
    /// Where the node keeps its store; one process per data directory.
    pub data_dir: PathBuf,
    /// gRPC listen address (loopback by default: the RPC is not authenticated).
    #[serde(default = "default_rpc_listen")]
    pub rpc_listen: SocketAddr,
    /// HTTP listen address for /metrics, /healthz and the JSON mirror.
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    /// libp2p listen multiaddrs.
    #[serde(default = "default_p2p_listen")]
    pub p2p_listen: Vec<String>,
    /// Extra peers to dial (multiaddrs, with or without /p2p/PEER). The
    /// genesis validators' addresses are always dialled.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Most inbound connections accepted at once.
    #[serde(default = "default_max_incoming")]
    pub max_incoming_connections: u32,
    /// Allow the admin calls that block peers (tests and testnets only).
    #[serde(default)]
    pub enable_fault_injection: bool,
    /// Dial the addresses the genesis lists for validators. A testnet that
    /// routes every link through its shaper turns this off and lists the
    /// relay addresses under `peers` instead.
    #[serde(default = "default_true")]
    pub dial_genesis_addresses: bool,
}

fn default_true() -> bool {
    true
}

fn default_rpc_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], DEFAULT_RPC_PORT))
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], DEFAULT_RPC_PORT.saturating_add(1)))
}
fn default_p2p_listen() -> Vec<String> {
    vec!["/ip4/127.0.0.1/tcp/0".into()]
}
fn default_max_incoming() -> u32 {
    DEFAULT_MAX_INCOMING_CONNECTIONS
}

/// Default gRPC port; the client subcommands' default `--rpc` points here.
pub const DEFAULT_RPC_PORT: u16 = 7100;
/// Default client target.
pub const DEFAULT_RPC_URL: &str = "http://127.0.0.1:7100";
/// Default cap on inbound connections.
pub const DEFAULT_MAX_INCOMING_CONNECTIONS: u32 = 128;

impl NodeConfig {
    /// Where the node keeps its store (and its admin token): `data_dir/store`.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// Reads a node config and resolves its relative paths (see [`NodeConfig::parse`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses a node config's text and resolves its relative paths against
    /// `path`'s directory, touching no file.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.genesis = base.join(&config.genesis);
        config.key = base.join(&config.key);
        config.data_dir = base.join(&config.data_dir);
        Ok(config)
    }
}

/// Options of `credence genesis`.
#[derive(Clone, Debug)]
pub struct GenesisPlan {
    pub network_name: String,
    pub regions: Vec<String>,
    pub validators_per_region: u32,
    pub base_port: u16,
    pub created_at: Millis,
    /// The demo distribution's allocation in each region (claims pay
    /// `DEMO_AMOUNT_PER_CLAIM` each).
    pub region_budget: u64,
}

/// The demo distribution's allocation per region unless asked otherwise:
/// 10,000 claims of `DEMO_AMOUNT_PER_CLAIM`.
pub const DEMO_REGION_BUDGET: u64 = 1_000_000;
/// What one claim on the demo distribution pays.
pub const DEMO_AMOUNT_PER_CLAIM: u64 = 100;

/// One node's addresses, as written to `network.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkNode {
    pub name: String,
    pub region: String,
    pub peer_id: String,
    pub rpc: String,
    pub p2p: String,
    pub metrics: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
}

/// `network.json`: everything a script needs to reach a generated network.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkFile {
    pub network_id: String,
    pub genesis: PathBuf,
    pub keys: BTreeMap<String, PathBuf>,
    pub nodes: Vec<NetworkNode>,
}

/// Ports each node uses, in order from the base port: rpc, p2p, http.
pub const PORTS_PER_NODE: u16 = 3;

/// Writes a whole local network: genesis, demo keys, one directory per
/// validator with its key and node.toml, and network.json.
pub fn write_network(plan: &GenesisPlan, out: &Path) -> Result<NetworkFile, ConfigError> {
    if plan.region_budget < DEMO_AMOUNT_PER_CLAIM {
        return Err(ConfigError::Usage(format!(
            "a region budget of {} pays no claim of {DEMO_AMOUNT_PER_CLAIM}",
            plan.region_budget
        )));
    }
    if plan.regions.is_empty() || plan.validators_per_region == 0 {
        return Err(ConfigError::Usage(
            "need at least one region and one validator per region".into(),
        ));
    }
    let mut unique = BTreeSet::new();
    for r in &plan.regions {
        let ok = !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok || !unique.insert(r) {
            return Err(ConfigError::Usage(format!(
                "region name {r:?} is empty, repeated or has characters other than letters, digits, - and _"
            )));
        }
    }
    let count = u32::try_from(plan.regions.len())
        .ok()
        .and_then(|r| r.checked_mul(plan.validators_per_region))
        .ok_or_else(|| ConfigError::Usage("too many nodes".into()))?;
    let last_port = u32::from(plan.base_port) + count * u32::from(PORTS_PER_NODE);
    if last_port > u32::from(u16::MAX) {
        return Err(ConfigError::Usage(format!(
            "{count} nodes need {} ports from base port {}: pass a lower --base-port",
            count * u32::from(PORTS_PER_NODE),
            plan.base_port
        )));
    }
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConfigError::Write { path, source }
    };
    if out.join("genesis.toml").exists() {
        return Err(ConfigError::Usage(format!(
            "{} already holds a genesis; pass an empty --out directory",
            out.display()
        )));
    }
    let keys_dir = out.join("keys");
    std::fs::create_dir_all(&keys_dir).map_err(write_err(&keys_dir))?;
    let mut role_keys = BTreeMap::new();
    let mut role_public = BTreeMap::new();
    for role in ["issuer", "operator", "claimant"] {
        let key = keys::generate();
        let path = keys_dir.join(format!("{role}.key"));
        keys::write(&path, &key)?;
        role_public.insert(role, hex::encode(key.verifying_key().to_bytes()));
        role_keys.insert(role.to_string(), path);
    }
    let mut validators = Vec::new();
    let mut nodes = Vec::new();
    let mut index: u16 = 0;
    for region in &plan.regions {
        for i in 0..plan.validators_per_region {
            let name = format!("{region}-{i}");
            let base = plan.base_port + index * PORTS_PER_NODE;
            let (rpc, p2p, http) = (base, base + 1, base + 2);
            let dir = out.join("nodes").join(&name);
            std::fs::create_dir_all(&dir).map_err(write_err(&dir))?;
            let key = keys::generate();
            keys::write(&dir.join("node.key"), &key)?;
            let public = key.verifying_key().to_bytes();
            let peer_id = keys::peer_id_of(&public).map(|p| p.to_string()).unwrap_or_default();
            let p2p_addr = format!("/ip4/127.0.0.1/tcp/{p2p}");
            validators.push(ValidatorEntry {
                name: name.clone(),
                key: hex::encode(public),
                region: region.clone(),
                weight: 1,
                addresses: vec![format!("{p2p_addr}/p2p/{peer_id}")],
            });
            let config = NodeConfig {
                genesis: PathBuf::from("../../genesis.toml"),
                key: PathBuf::from("node.key"),
                data_dir: PathBuf::from("data"),
                rpc_listen: SocketAddr::from(([127, 0, 0, 1], rpc)),
                http_listen: SocketAddr::from(([127, 0, 0, 1], http)),
                p2p_listen: vec![p2p_addr.clone()],
                peers: vec![],
                max_incoming_connections: DEFAULT_MAX_INCOMING_CONNECTIONS,
                enable_fault_injection: false,
                dial_genesis_addresses: true,
            };
            let config_path = dir.join("node.toml");
            let text = toml::to_string(&config).map_err(|e| ConfigError::Usage(e.to_string()))?;
            std::fs::write(
                &config_path,
                format!("# Credence node {name} (region {region})\n{text}"),
            )
            .map_err(write_err(&config_path))?;
            nodes.push(NetworkNode {
                name,
                region: region.clone(),
                peer_id,
                rpc: format!("http://127.0.0.1:{rpc}"),
                p2p: p2p_addr,
                metrics: format!("http://127.0.0.1:{http}/metrics"),
                config: config_path,
                data_dir: dir.join("data"),
            });
            index += 1;
        }
    }
    let total_per_region = plan.region_budget;
    let genesis = Genesis {
        network_name: plan.network_name.clone(),
        created_at: plan.created_at,
        params: Params::default(),
        regions: plan.regions.iter().map(|r| RegionEntry { name: r.clone() }).collect(),
        validators,
        issuers: vec![IssuerEntry {
            key: role_public.get("issuer").cloned().unwrap_or_default(),
            schemas: vec![DEMO_SCHEMA.into()],
        }],
        operators: vec![OperatorEntry {
            key: role_public.get("operator").cloned().unwrap_or_default(),
        }],
        distributions: vec![demo_distribution(&plan.regions, total_per_region)],
    };
    let genesis_path = out.join("genesis.toml");
    let text = toml::to_string(&genesis).map_err(|e| ConfigError::Usage(e.to_string()))?;
    let bytes = format!("# Credence genesis: every node of this network must run from this exact file.\n{text}");
    std::fs::write(&genesis_path, &bytes).map_err(write_err(&genesis_path))?;
    let network = NetworkFile {
        network_id: hex::encode(NetworkId::of_genesis(bytes.as_bytes()).0),
        genesis: genesis_path,
        keys: role_keys,
        nodes,
    };
    let network_path = out.join("network.json");
    let json = serde_json::to_string_pretty(&network).map_err(|e| ConfigError::Usage(e.to_string()))?;
    std::fs::write(&network_path, json).map_err(write_err(&network_path))?;
    Ok(network)
}

/// The schema granted to the demo issuer in dev mode and generated networks.
pub const DEMO_SCHEMA: &str = "demo";

fn demo_distribution(regions: &[String], per_region: u64) -> DistributionEntry {
    DistributionEntry {
        name: "demo".into(),
        asset: "DEMO".into(),
        total: per_region.saturating_mul(regions.len() as u64),
        schema: DEMO_SCHEMA.into(),
        amount_per_claim: DEMO_AMOUNT_PER_CLAIM,
        opens_at: 0,
        closes_at: 0,
        allocations: regions
            .iter()
            .map(|r| AllocationEntry {
                region: r.clone(),
                amount: per_region,
            })
            .collect(),
    }
}

/// Paths of a dev node's files inside its data directory.
#[derive(Clone, Debug)]
pub struct DevLayout {
    pub genesis: PathBuf,
    pub node_key: PathBuf,
    pub keys_dir: PathBuf,
    pub store_dir: PathBuf,
}

/// Creates (first run) or reuses (later runs) a one-node dev network in `dir`.
pub fn prepare_dev(dir: &Path, created_at: Millis) -> Result<DevLayout, ConfigError> {
    let keys_dir = dir.join("keys");
    let layout = DevLayout {
        genesis: dir.join("genesis.toml"),
        node_key: keys_dir.join("node.key"),
        keys_dir: keys_dir.clone(),
        store_dir: dir.join("store"),
    };
    if layout.genesis.exists() {
        return Ok(layout);
    }
    std::fs::create_dir_all(&keys_dir).map_err(|source| ConfigError::Write {
        path: keys_dir.clone(),
        source,
    })?;
    let mut public = BTreeMap::new();
    for role in ["node", "issuer", "operator", "claimant"] {
        let path = keys_dir.join(format!("{role}.key"));
        let key = if path.exists() {
            keys::load(&path)?
        } else {
            let key = keys::generate();
            keys::write(&path, &key)?;
            key
        };
        public.insert(role, hex::encode(key.verifying_key().to_bytes()));
    }
    let region = "local".to_string();
    let genesis = Genesis {
        network_name: "credence-dev".into(),
        created_at,
        params: Params::default(),
        regions: vec![RegionEntry { name: region.clone() }],
        validators: vec![ValidatorEntry {
            name: "dev-0".into(),
            key: public.get("node").cloned().unwrap_or_default(),
            region: region.clone(),
            weight: 1,
            addresses: vec![],
        }],
        issuers: vec![IssuerEntry {
            key: public.get("issuer").cloned().unwrap_or_default(),
            schemas: vec![DEMO_SCHEMA.into()],
        }],
        operators: vec![OperatorEntry {
            key: public.get("operator").cloned().unwrap_or_default(),
        }],
        distributions: vec![demo_distribution(&[region], 1_000_000)],
    };
    let text = toml::to_string(&genesis).map_err(|e| ConfigError::Usage(e.to_string()))?;
    // Written last and atomically: its presence marks a complete dev directory.
    let tmp = dir.join("genesis.toml.tmp");
    std::fs::write(&tmp, format!("# Credence dev genesis (one node, one region).\n{text}"))
        .and_then(|()| std::fs::rename(&tmp, &layout.genesis))
        .map_err(|source| ConfigError::Write {
            path: layout.genesis.clone(),
            source,
        })?;
    Ok(layout)
}

/// An in-memory network for tests, benchmarks and the simulator: validators
/// `REGION-I` with deterministic keys derived from `seed`, an issuer granted
/// `demo`, an operator, and a demo distribution of `per_region_amount` per region
/// paying `amount_per_claim`.
#[derive(Debug)]
pub struct LocalNetwork {
    pub genesis: LoadedGenesis,
    pub genesis_text: String,
    pub validators: Vec<ed25519_dalek::SigningKey>,
    pub issuer: ed25519_dalek::SigningKey,
    pub operator: ed25519_dalek::SigningKey,
}

/// Builds a [`LocalNetwork`]. Keys are derived from `seed`, so the same
/// arguments give the same network id.
pub fn local_network(
    regions: &[&str],
    per_region: usize,
    seed: u64,
    per_region_amount: u64,
    amount_per_claim: u64,
) -> Result<LocalNetwork, ConfigError> {
    let key = |n: u64| {
        let digest = blake3::hash(&[seed.to_le_bytes(), n.to_le_bytes()].concat());
        ed25519_dalek::SigningKey::from_bytes(digest.as_bytes())
    };
    let issuer = key(u64::MAX);
    let operator = key(u64::MAX - 1);
    let mut validators = Vec::new();
    let mut entries = Vec::new();
    for (r, region) in regions.iter().enumerate() {
        for i in 0..per_region {
            let k = key((r as u64) << 32 | i as u64);
            entries.push(ValidatorEntry {
                name: format!("{region}-{i}"),
                key: hex::encode(k.verifying_key().to_bytes()),
                region: region.to_string(),
                weight: 1,
                addresses: vec![],
            });
            validators.push(k);
        }
    }
    let region_names: Vec<String> = regions.iter().map(|r| r.to_string()).collect();
    let mut distribution = demo_distribution(&region_names, per_region_amount);
    distribution.amount_per_claim = amount_per_claim;
    let genesis = Genesis {
        network_name: format!("local-{seed}"),
        created_at: 1,
        params: Params::default(),
        regions: region_names.iter().map(|r| RegionEntry { name: r.clone() }).collect(),
        validators: entries,
        issuers: vec![IssuerEntry {
            key: hex::encode(issuer.verifying_key().to_bytes()),
            schemas: vec![DEMO_SCHEMA.into()],
        }],
        operators: vec![OperatorEntry {
            key: hex::encode(operator.verifying_key().to_bytes()),
        }],
        distributions: vec![distribution],
    };
    let genesis_text = toml::to_string(&genesis).map_err(|e| ConfigError::Usage(e.to_string()))?;
    let genesis = LoadedGenesis::from_bytes(Path::new("local-genesis.toml"), genesis_text.as_bytes())?;
    Ok(LocalNetwork {
        genesis,
        genesis_text,
        validators,
        issuer,
        operator,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_network_loads_back_and_is_consistent() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let plan = GenesisPlan {
            network_name: "t".into(),
            regions: vec!["eu".into(), "us".into()],
            validators_per_region: 2,
            base_port: 20000,
            created_at: 1,
            region_budget: DEMO_REGION_BUDGET,
        };
        let net = write_network(&plan, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(net.nodes.len(), 4);
        assert_eq!(
            net.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["eu-0", "eu-1", "us-0", "us-1"]
        );
        let g = LoadedGenesis::load(&dir.path().join("genesis.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hex::encode(g.network_id.0), net.network_id);
        let node = NodeConfig::load(&dir.path().join("nodes/us-1/node.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(node.rpc_listen.port(), 20009);
        let key = keys::load(&node.key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            g.validator(&key.verifying_key().to_bytes()).map(|v| v.name.as_str()),
            Some("us-1")
        );
        assert!(matches!(write_network(&plan, dir.path()), Err(ConfigError::Usage(_))));
    }

    #[test]
    fn a_generated_network_takes_its_region_budget() {
        let plan = |region_budget| GenesisPlan {
            network_name: "t".into(),
            regions: vec!["eu".into(), "us".into()],
            validators_per_region: 1,
            base_port: 20000,
            created_at: 1,
            region_budget,
        };
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write_network(&plan(5_000_000), dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(dir.path().join("genesis.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert!(text.contains("total = 10000000"), "{text}");
        assert!(text.contains("amount = 5000000"), "{text}");
        let small = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let err = write_network(&plan(DEMO_AMOUNT_PER_CLAIM - 1), small.path());
        assert!(matches!(err, Err(ConfigError::Usage(_))));
        assert!(!small.path().join("genesis.toml").exists());
    }

    #[test]
    fn invalid_genesis_files_say_why() {
        let bad = br#"network_name = "x"
created_at = 0
regions = [{ name = "eu" }]
validators = [{ name = "a", key = "zz", region = "eu", weight = 1 }]
"#;
        let err = LoadedGenesis::from_bytes(Path::new("g.toml"), bad)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("not 64 hex")));
    }
}
