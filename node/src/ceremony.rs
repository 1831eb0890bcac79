//! The genesis ceremony: a network's genesis built step by step from public
//! keys and addresses only, so that no secret leaves the host it was made on.
//!
//! Each operator runs `credence keygen` on its own host and hands over its
//! public key and dial address; a coordinator runs `genesis init`, one
//! `add-validator` per validator, `add-issuer`, `add-operator`,
//! `add-distribution`, and `finalize`. Every step reads the draft, refuses bad
//! input with its reason and changes nothing then, or writes the new draft
//! atomically (a temporary file renamed over the old one). `finalize`
//! validates the whole file as a node will load it, adds the rules only a
//! complete genesis can be held to (every region has validators, at least
//! [`BYZANTINE_REGION_MIN`] of them under `fault_model = "byzantine"`), and
//! writes it once more; its blake3 is the network id it prints. An edit after
//! that is another network: its id differs and peers refuse it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

use crate::config::{
    AllocationEntry, ConfigError, DistributionEntry, FaultModel, Genesis, IssuerEntry, LoadedGenesis, OperatorEntry,
    Params, RegionEntry, ValidatorEntry,
};
use crate::core::envelope::{NetworkId, parse_hex32};
use crate::core::{Millis, PublicKey};
use crate::keys;

/// Fewest validators a region needs under the Byzantine fault model: a
/// quorum of more than two thirds that survives one faulty validator.
pub const BYZANTINE_REGION_MIN: usize = 4;

/// The first line of every genesis the ceremony writes.
const HEADER: &str = "# Credence genesis: every node of this network must run from this exact file.\n";

/// Why a ceremony step refused its input. The draft is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum CeremonyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0} already exists: a ceremony starts from a new file")]
    Exists(PathBuf),
    #[error("region {0:?} is not one of this genesis' regions ({1})")]
    UnknownRegion(String, String),
    #[error("region name {0:?} is empty, repeated or has characters other than letters, digits, - and _")]
    BadRegion(String),
    #[error("{what} key {key} is already in the genesis ({whose}): every key is listed once")]
    DuplicateKey {
        what: &'static str,
        key: String,
        whose: String,
    },
    #[error("{0:?} is not a public key (64 hex characters, a point of ed25519)")]
    BadKey(String),
    #[error("address {address:?}: {why}")]
    BadAddress { address: String, why: String },
    #[error("{0}")]
    Invalid(String),
}

/// Loads a draft genesis (any stage: it may have no validators yet).
fn read(path: &Path) -> Result<Genesis, CeremonyError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| {
        CeremonyError::Config(ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    })
}

/// Writes a draft atomically and returns the bytes written.
fn write(path: &Path, genesis: &Genesis) -> Result<Vec<u8>, CeremonyError> {
    let text = toml::to_string(genesis).map_err(|e| CeremonyError::Invalid(e.to_string()))?;
    let bytes = format!("{HEADER}{text}").into_bytes();
    let tmp = path.with_extension("toml.tmp");
    let write_err = |source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, &bytes).map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)?;
    Ok(bytes)
}

/// Applies `step` to the draft at `path` and writes it back, or changes
/// nothing when the step refuses.
fn amend(path: &Path, step: impl FnOnce(&mut Genesis) -> Result<(), CeremonyError>) -> Result<(), CeremonyError> {
    let mut genesis = read(path)?;
    step(&mut genesis)?;
    write(path, &genesis).map(|_| ())
}

fn public_key(hex: &str) -> Result<PublicKey, CeremonyError> {
    let key = parse_hex32(hex).ok_or_else(|| CeremonyError::BadKey(hex.into()))?;
    keys::peer_id_of(&key).ok_or_else(|| CeremonyError::BadKey(hex.into()))?;
    Ok(key)
}

fn region_list(genesis: &Genesis) -> String {
    genesis
        .regions
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn known_region(genesis: &Genesis, region: &str) -> Result<(), CeremonyError> {
    if genesis.regions.iter().any(|r| r.name == region) {
        Ok(())
    } else {
        Err(CeremonyError::UnknownRegion(region.into(), region_list(genesis)))
    }
}

/// Every key already in the genesis, with who holds it.
fn holders(genesis: &Genesis) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = genesis
        .validators
        .iter()
        .map(|v| (v.key.to_lowercase(), format!("validator {}", v.name)))
        .collect();
    out.extend(
        genesis
            .issuers
            .iter()
            .map(|i| (i.key.to_lowercase(), "an issuer".into())),
    );
    out.extend(
        genesis
            .operators
            .iter()
            .map(|o| (o.key.to_lowercase(), "an operator".into())),
    );
    out
}

fn unique_key(genesis: &Genesis, what: &'static str, key: &PublicKey) -> Result<(), CeremonyError> {
    let hex = hex::encode(key);
    match holders(genesis).into_iter().find(|(k, _)| *k == hex) {
        Some((_, whose)) => Err(CeremonyError::DuplicateKey { what, key: hex, whose }),
        None => Ok(()),
    }
}

/// `genesis init`: a new draft with its regions and fault model.
pub fn init(
    path: &Path,
    network_name: &str,
    regions: &[String],
    fault_model: FaultModel,
    created_at: Millis,
) -> Result<(), CeremonyError> {
    if path.exists() {
        return Err(CeremonyError::Exists(path.to_path_buf()));
    }
    if network_name.trim().is_empty() {
        return Err(CeremonyError::Invalid("the network name is empty".into()));
    }
    let mut unique = BTreeSet::new();
    for r in regions {
        let ok = !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok || !unique.insert(r) {
            return Err(CeremonyError::BadRegion(r.clone()));
        }
    }
    if regions.is_empty() {
        return Err(CeremonyError::Invalid("a network needs at least one region".into()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ConfigError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let genesis = Genesis {
        network_name: network_name.into(),
        created_at,
        params: Params {
            fault_model,
            ..Params::default()
        },
        regions: regions.iter().map(|r| RegionEntry { name: r.clone() }).collect(),
        validators: Vec::new(),
        issuers: Vec::new(),
        operators: Vec::new(),
        distributions: Vec::new(),
    };
    write(path, &genesis).map(|_| ())
}

/// What `add-validator` is given.
#[derive(Debug, Clone)]
pub struct NewValidator {
    pub region: String,
    pub pubkey: String,
    pub address: String,
    pub weight: u64,
    /// Defaults to `<region>-<n>`.
    pub name: Option<String>,
}

/// Checks a validator's dial address: a multiaddr ending in the peer id of
/// its key, so that peers dialling it authenticate the right node.
fn check_address(address: &str, key: &PublicKey) -> Result<(), CeremonyError> {
    let bad = |why: &str| CeremonyError::BadAddress {
        address: address.into(),
        why: why.into(),
    };
    let parsed: Multiaddr = address.parse().map_err(|e| bad(&format!("not a multiaddr ({e})")))?;
    let peer = keys::peer_id_of(key).ok_or_else(|| bad("the key has no peer id"))?;
    match parsed.iter().last() {
        Some(Protocol::P2p(id)) if id == peer => Ok(()),
        Some(Protocol::P2p(id)) => Err(bad(&format!(
            "ends in /p2p/{id}, but this validator's key is peer {peer}"
        ))),
        _ => Err(bad(&format!("must end in /p2p/{peer}, the peer id of this key"))),
    }
}

/// `genesis add-validator`.
pub fn add_validator(path: &Path, v: &NewValidator) -> Result<String, CeremonyError> {
    let key = public_key(&v.pubkey)?;
    let mut name_out = String::new();
    amend(path, |genesis| {
        known_region(genesis, &v.region)?;
        unique_key(genesis, "validator", &key)?;
        check_address(&v.address, &key)?;
        if v.weight == 0 {
            return Err(CeremonyError::Invalid("a validator's weight must be at least 1".into()));
        }
        let name = match &v.name {
            Some(name) => name.clone(),
            None => {
                let taken = genesis.validators.iter().filter(|x| x.region == v.region).count();
                (taken..)
                    .map(|n| format!("{}-{n}", v.region))
                    .find(|n| genesis.validators.iter().all(|x| &x.name != n))
                    .unwrap_or_else(|| format!("{}-{}", v.region, hex::encode(&key[..4])))
            }
        };
        if name.is_empty() || genesis.validators.iter().any(|x| x.name == name) {
            return Err(CeremonyError::Invalid(format!(
                "validator name {name:?} is empty or already taken"
            )));
        }
        genesis.validators.push(ValidatorEntry {
            name: name.clone(),
            key: hex::encode(key),
            region: v.region.clone(),
            weight: v.weight,
            addresses: vec![v.address.clone()],
        });
        name_out = name;
        Ok(())
    })?;
    Ok(name_out)
}

/// `genesis add-issuer`: a key and the schemas it may attest.
pub fn add_issuer(path: &Path, pubkey: &str, schemas: &[String]) -> Result<(), CeremonyError> {
    let key = public_key(pubkey)?;
    if schemas.is_empty() || schemas.iter().any(|s| s.trim().is_empty()) {
        return Err(CeremonyError::Invalid(
            "an issuer needs at least one non-empty schema".into(),
        ));
    }
    amend(path, |genesis| {
        unique_key(genesis, "issuer", &key)?;
        genesis.issuers.push(IssuerEntry {
            key: hex::encode(key),
            schemas: schemas.to_vec(),
        });
        Ok(())
    })
}

/// `genesis add-operator`: a key that may sign distributions and rebalances.
pub fn add_operator(path: &Path, pubkey: &str) -> Result<(), CeremonyError> {
    let key = public_key(pubkey)?;
    amend(path, |genesis| {
        unique_key(genesis, "operator", &key)?;
        genesis.operators.push(OperatorEntry { key: hex::encode(key) });
        Ok(())
    })
}

/// `genesis add-distribution`.
pub fn add_distribution(path: &Path, d: DistributionEntry) -> Result<(), CeremonyError> {
    amend(path, |genesis| {
        if genesis.distributions.iter().any(|x| x.name == d.name) {
            return Err(CeremonyError::Invalid(format!(
                "a distribution named {:?} already exists",
                d.name
            )));
        }
        if d.amount_per_claim == 0 || d.total == 0 {
            return Err(CeremonyError::Invalid(
                "the total and the amount per claim must be at least 1".into(),
            ));
        }
        let mut sum: u64 = 0;
        let mut seen = BTreeSet::new();
        for a in &d.allocations {
            known_region(genesis, &a.region)?;
            if !seen.insert(a.region.as_str()) {
                return Err(CeremonyError::Invalid(format!(
                    "region {:?} is allocated twice",
                    a.region
                )));
            }
            sum = sum
                .checked_add(a.amount)
                .ok_or_else(|| CeremonyError::Invalid("the allocations overflow".into()))?;
        }
        if sum != d.total {
            return Err(CeremonyError::Invalid(format!(
                "the allocations sum to {sum}, not the total {}",
                d.total
            )));
        }
        if d.closes_at != 0 && d.closes_at <= d.opens_at {
            return Err(CeremonyError::Invalid(
                "a distribution must close after it opens".into(),
            ));
        }
        genesis.distributions.push(d);
        Ok(())
    })
}

/// Parses `eu=1000,us=1000`.
pub fn parse_allocations(text: &str) -> Result<Vec<AllocationEntry>, CeremonyError> {
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (region, amount) = part
                .split_once('=')
                .ok_or_else(|| CeremonyError::Invalid(format!("allocation {part:?} is not REGION=AMOUNT")))?;
            let amount = amount
                .trim()
                .parse::<u64>()
                .map_err(|_| CeremonyError::Invalid(format!("allocation {part:?}: the amount is not a number")))?;
            Ok(AllocationEntry {
                region: region.trim().into(),
                amount,
            })
        })
        .collect()
}

/// What `finalize` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finalized {
    pub network_id: String,
    pub network_name: String,
    pub validators: usize,
    pub regions: Vec<(String, usize)>,
}

/// `genesis finalize`: validates the whole genesis as a node loads it, plus
/// the rules only a complete one is held to, writes it in its final form
/// and returns its network id (blake3 of the file).
pub fn finalize(path: &Path) -> Result<Finalized, CeremonyError> {
    let genesis = read(path)?;
    let mut regions = Vec::new();
    for r in &genesis.regions {
        let count = genesis.validators.iter().filter(|v| v.region == r.name).count();
        if count == 0 {
            return Err(CeremonyError::Invalid(format!("region {} has no validators", r.name)));
        }
        if genesis.params.fault_model == FaultModel::Byzantine && count < BYZANTINE_REGION_MIN {
            return Err(CeremonyError::Invalid(format!(
                "region {} has {count} validator(s); fault_model = \"byzantine\" needs at least {BYZANTINE_REGION_MIN} per region (or init with --fault-model crash)",
                r.name
            )));
        }
        regions.push((r.name.clone(), count));
    }
    for v in &genesis.validators {
        let key = public_key(&v.key)?;
        for address in &v.addresses {
            check_address(address, &key)?;
        }
    }
    if genesis.operators.is_empty() && !genesis.distributions.is_empty() {
        return Err(CeremonyError::Invalid(
            "the genesis has distributions but no operator".into(),
        ));
    }
    let bytes = write(path, &genesis)?;
    LoadedGenesis::from_bytes(path, &bytes)?;
    Ok(Finalized {
        network_id: hex::encode(NetworkId::of_genesis(&bytes).0),
        network_name: genesis.network_name,
        validators: genesis.validators.len(),
        regions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Host {
        public: String,
        peer: String,
    }

    fn host() -> Host {
        let key = keys::generate();
        let public = key.verifying_key().to_bytes();
        Host {
            public: hex::encode(public),
            peer: keys::peer_id_of(&public).expect("a key").to_string(),
        }
    }

    fn validator(h: &Host, region: &str, n: u8) -> NewValidator {
        NewValidator {
            region: region.into(),
            pubkey: h.public.clone(),
            address: format!("/ip4/10.0.0.{n}/tcp/7101/p2p/{}", h.peer),
            weight: 1,
            name: None,
        }
    }

    fn distribution(allocations: &str, total: u64) -> DistributionEntry {
        DistributionEntry {
            name: "demo".into(),
            asset: "DEMO".into(),
            total,
            schema: "demo".into(),
            amount_per_claim: 100,
            opens_at: 0,
            closes_at: 0,
            allocations: parse_allocations(allocations).expect("parses"),
        }
    }

    #[test]
    fn a_ceremony_of_public_keys_makes_a_genesis_a_node_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("genesis.toml");
        init(&path, "test", &["eu".into(), "us".into()], FaultModel::Byzantine, 1).expect("init");
        assert!(matches!(
            init(&path, "test", &["eu".into()], FaultModel::Byzantine, 1),
            Err(CeremonyError::Exists(_))
        ));
        let hosts: Vec<Host> = (0..8).map(|_| host()).collect();
        for (i, h) in hosts.iter().enumerate() {
            let region = if i < 4 { "eu" } else { "us" };
            add_validator(&path, &validator(h, region, i as u8)).expect("add-validator");
        }
        let before = std::fs::read(&path).expect("read");
        // Each refusal names its reason and leaves the file as it was.
        let dup = add_validator(&path, &validator(&hosts[0], "us", 9)).expect_err("duplicate");
        assert!(dup.to_string().contains("already"), "{dup}");
        let other = host();
        let unknown = add_validator(&path, &validator(&other, "ap", 9)).expect_err("unknown region");
        assert!(unknown.to_string().contains("\"ap\""), "{unknown}");
        let mut wrong_peer = validator(&other, "eu", 9);
        wrong_peer.address = format!("/ip4/10.0.0.9/tcp/7101/p2p/{}", hosts[1].peer);
        assert!(matches!(
            add_validator(&path, &wrong_peer),
            Err(CeremonyError::BadAddress { .. })
        ));
        let issuer = host();
        add_issuer(&path, &issuer.public, &["demo".into()]).expect("issuer");
        assert!(add_operator(&path, &issuer.public).is_err(), "an issuer's key again");
        let uneven = add_distribution(&path, distribution("eu=1000,us=999", 2000)).expect_err("sum");
        assert!(uneven.to_string().contains("sum"), "{uneven}");
        let after_refusals = std::fs::read(&path).expect("read");
        assert_eq!(
            toml::from_str::<toml::Value>(std::str::from_utf8(&before).expect("utf8"))
                .expect("toml")
                .get("validators"),
            toml::from_str::<toml::Value>(std::str::from_utf8(&after_refusals).expect("utf8"))
                .expect("toml")
                .get("validators"),
        );
        add_operator(&path, &host().public).expect("operator");
        add_distribution(&path, distribution("eu=1000,us=1000", 2000)).expect("distribution");
        let done = finalize(&path).expect("finalize");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(done.network_id, hex::encode(blake3::hash(&bytes).as_bytes()));
        let loaded = LoadedGenesis::load(&path).expect("a node loads it");
        assert_eq!(loaded.validators.len(), 8);
        assert_eq!(hex::encode(loaded.network_id.0), done.network_id);
    }

    #[test]
    fn finalize_refuses_a_byzantine_region_of_three() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("genesis.toml");
        init(&path, "test", &["eu".into(), "us".into()], FaultModel::Byzantine, 1).expect("init");
        for i in 0..7u8 {
            let region = if i < 4 { "eu" } else { "us" };
            add_validator(&path, &validator(&host(), region, i)).expect("add");
        }
        let e = finalize(&path).expect_err("three in us");
        assert!(e.to_string().contains("region us has 3"), "{e}");
        // The same under the crash model is a network.
        let crash = dir.path().join("crash.toml");
        init(&crash, "test", &["eu".into()], FaultModel::Crash, 1).expect("init");
        for i in 0..3u8 {
            add_validator(&crash, &validator(&host(), "eu", i)).expect("add");
        }
        finalize(&crash).expect("three validators suffice for crash faults");
    }
}
