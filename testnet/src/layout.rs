//! The testnet directory and what is recorded in it.
//!
//! `credence genesis` writes `genesis.toml`, `keys/`, `nodes/NAME/` and
//! `network.json`; this module adds `state.json` (every process the testnet
//! started, its pid and what was done to it: partitions, link shaping) and
//! `logs/NAME.log`. Every subcommand loads the state, acts, and saves it back
//! atomically, so a crashed command never leaves a half-written file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

/// Format version of `state.json`; bumped when its shape changes.
pub const STATE_VERSION: u32 = 1;

/// The directory of one testnet and the paths inside it.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    /// An absolute path, so that recorded paths and process command lines
    /// stay valid from any working directory.
    pub fn new(dir: &Path) -> anyhow::Result<Layout> {
        let dir = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            std::env::current_dir()
                .context("cannot read the current directory")?
                .join(dir)
        };
        Ok(Layout { dir })
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn network(&self) -> PathBuf {
        self.dir.join("network.json")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.join("nodes").join(name)
    }
    /// The shaper's control socket.
    pub fn shaper_socket(&self) -> PathBuf {
        self.dir.join("shaper.sock")
    }
    /// The relay table the shaper reads at start.
    pub fn shaper_links(&self) -> PathBuf {
        self.dir.join("shaper-links.json")
    }

    /// Loads `state.json`, saying what to do when there is none.
    pub fn load_state(&self) -> anyhow::Result<State> {
        let path = self.state();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!(
                    "no testnet in {}: start one with `credence-testnet up --dir {}`",
                    self.dir.display(),
                    self.dir.display()
                )
            } else {
                anyhow!("cannot read {}: {e}", path.display())
            }
        })?;
        let state: State =
            serde_json::from_str(&text).with_context(|| format!("{} is not a testnet state file", path.display()))?;
        if state.version != STATE_VERSION {
            bail!(
                "{} has format version {}, this tool reads {STATE_VERSION}: recreate the testnet",
                path.display(),
                state.version
            );
        }
        Ok(state)
    }

    pub fn save_state(&self, state: &State) -> anyhow::Result<()> {
        write_atomically(&self.state(), serde_json::to_string_pretty(state)?.as_bytes())
    }
}

/// Writes a file through a temporary sibling and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Whether a node votes (listed in the genesis) or only follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Validator,
    Observer,
}

/// What the testnet last did to a node's process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Paused,
    Killed,
    Stopped,
}

impl RunState {
    pub fn name(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Killed => "killed",
            RunState::Stopped => "stopped",
        }
    }
}

/// One node process of the testnet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    /// Empty for observers.
    pub region: String,
    pub role: Role,
    pub peer_id: String,
    /// gRPC URL, `http://127.0.0.1:PORT`.
    pub rpc: String,
    /// The node's own libp2p listen address (never through the shaper).
    pub p2p: String,
    pub config: PathBuf,
    pub log: PathBuf,
    /// Pid of the node process, which leads its own process group.
    pub pid: Option<u32>,
    pub state: RunState,
}

/// Shaping of one directed link (`from` dials `to` through a relay port).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkRule {
    pub delay_ms: u64,
    pub jitter_ms: u64,
    /// 0 = unlimited.
    pub bandwidth_kbps: u64,
    pub blackhole: bool,
}

impl LinkRule {
    pub fn is_default(&self) -> bool {
        *self == LinkRule::default()
    }
}

/// One relay of the shaper: `from` dials `relay_port` to reach `to`. Bytes
/// from `from` to `to` follow the rule of (from, to); the answers on the same
/// connection follow the rule of (to, from).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Link {
    pub from: String,
    pub to: String,
    pub relay_port: u16,
    /// The real address of `to`, `127.0.0.1:PORT`.
    pub target: String,
}

/// The shaping of bytes sent from one node to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleEntry {
    pub from: String,
    pub to: String,
    pub rule: LinkRule,
}

/// The shaper process, its relays and the rules in force.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShaperRecord {
    pub pid: Option<u32>,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub links: Vec<Link>,
    /// Rules that differ from the default (no delay, no limit, open).
    pub rules: Vec<RuleEntry>,
}

/// `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub dir: PathBuf,
    /// The node binary every process runs.
    pub credence_bin: PathBuf,
    pub network_id: String,
    pub nodes: Vec<NodeRecord>,
    pub shaper: Option<ShaperRecord>,
    /// The current partition (groups of node names), if any.
    pub partition: Option<Vec<Vec<String>>>,
}

impl State {
    pub fn node(&self, name: &str) -> anyhow::Result<&NodeRecord> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| self.unknown(name))
    }
    pub fn node_mut(&mut self, name: &str) -> anyhow::Result<&mut NodeRecord> {
        if !self.nodes.iter().any(|n| n.name == name) {
            return Err(self.unknown(name));
        }
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("node {name} vanished"))
    }
    fn unknown(&self, name: &str) -> anyhow::Error {
        let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        anyhow!(
            "no node named {name:?} in this testnet; its nodes are {}",
            names.join(", ")
        )
    }
    pub fn regions(&self) -> BTreeSet<String> {
        self.nodes
            .iter()
            .filter(|n| !n.region.is_empty())
            .map(|n| n.region.clone())
            .collect()
    }

    /// Expands a comma-separated list of region and node names into node
    /// names, in testnet order.
    pub fn select(&self, spec: &str) -> anyhow::Result<Vec<String>> {
        let mut chosen = BTreeSet::new();
        for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let by_region: Vec<&NodeRecord> = self.nodes.iter().filter(|n| n.region == word).collect();
            if !by_region.is_empty() {
                chosen.extend(by_region.iter().map(|n| n.name.clone()));
            } else if self.nodes.iter().any(|n| n.name == word) {
                chosen.insert(word.to_string());
            } else {
                let regions: Vec<String> = self.regions().into_iter().collect();
                bail!(
                    "{word:?} is neither a region ({}) nor a node of this testnet (see `credence-testnet status`)",
                    regions.join(", ")
                );
            }
        }
        if chosen.is_empty() {
            bail!("{spec:?} names no region and no node");
        }
        Ok(self
            .nodes
            .iter()
            .filter(|n| chosen.contains(&n.name))
            .map(|n| n.name.clone())
            .collect())
    }

    /// Parses `"eu | us,ap"` into disjoint groups of node names. Nodes named
    /// in no group form one more group: the rest of the network.
    pub fn groups(&self, spec: &str) -> anyhow::Result<Vec<Vec<String>>> {
        let mut groups = Vec::new();
        let mut owner: BTreeMap<String, usize> = BTreeMap::new();
        for (i, part) in spec.split('|').enumerate() {
            let names = self
                .select(part)
                .with_context(|| format!("in group {} of {spec:?}", i + 1))?;
            for n in &names {
                if let Some(j) = owner.insert(n.clone(), i) {
                    bail!("node {n} is in group {} and group {} of {spec:?}", j + 1, i + 1);
                }
            }
            groups.push(names);
        }
        let rest: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| !owner.contains_key(&n.name))
            .map(|n| n.name.clone())
            .collect();
        if !rest.is_empty() {
            groups.push(rest);
        }
        if groups.len() < 2 {
            bail!("{spec:?} puts every node on one side: name at least two groups, e.g. \"eu | us\"");
        }
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(names: &[(&str, &str)]) -> State {
        State {
            version: STATE_VERSION,
            dir: PathBuf::from("/t"),
            credence_bin: PathBuf::from("credence"),
            network_id: String::new(),
            nodes: names
                .iter()
                .map(|(name, region)| NodeRecord {
                    name: name.to_string(),
                    region: region.to_string(),
                    role: Role::Validator,
                    peer_id: String::new(),
                    rpc: String::new(),
                    p2p: String::new(),
                    config: PathBuf::new(),
                    log: PathBuf::new(),
                    pid: None,
                    state: RunState::Running,
                })
                .collect(),
            shaper: None,
            partition: None,
        }
    }

    #[test]
    fn groups_expand_regions_and_names_and_collect_the_rest() {
        let s = state(&[
            ("eu-0", "eu"),
            ("eu-1", "eu"),
            ("us-0", "us"),
            ("ap-0", "ap"),
            ("obs-0", ""),
        ]);
        let check = |spec: &str, expected: &[&[&str]]| {
            let got = s.groups(spec).unwrap_or_else(|e| panic!("{spec}: {e:#}"));
            let expected: Vec<Vec<String>> = expected
                .iter()
                .map(|g| g.iter().map(|n| n.to_string()).collect())
                .collect();
            assert_eq!(got, expected, "{spec}");
        };
        check("eu | us,ap", &[&["eu-0", "eu-1"], &["us-0", "ap-0"], &["obs-0"]]);
        check("eu-0", &[&["eu-0"], &["eu-1", "us-0", "ap-0", "obs-0"]]);
        check(" us | eu-1 ", &[&["us-0"], &["eu-1"], &["eu-0", "ap-0", "obs-0"]]);
    }

    #[test]
    fn bad_groups_say_why() {
        let s = state(&[("eu-0", "eu"), ("us-0", "us")]);
        let err = |spec: &str| s.groups(spec).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err("eu | eu-0").contains("group 1 and group 2"));
        assert!(err("mars | eu").contains("neither a region"));
        assert!(err("eu,us").contains("one side"));
        assert!(err("eu | ").contains("names no region"));
    }
}
