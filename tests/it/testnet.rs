//! Real processes through `credence-testnet`: a 2 regions x 3 validators
//! network is loaded, partitioned, loaded again, healed and checked; and the
//! checker is shown to fail on a network made inconsistent on purpose.
//!
//! The binaries are the release ones next to this test
//! (`target/release/deps/it-…` → `target/release/`); if they are missing they
//! are built once. Every testnet is stopped by a guard, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

/// Generous: a claim that does not certify within this is reported, not awaited.
const CLAIM_TIMEOUT_SECS: &str = "120";
/// How long `check` may wait for certificates in flight to land after heal.
const SETTLE_SECS: &str = "60";

/// One build at a time, when the binaries are missing.
static BUILD: Mutex<()> = Mutex::new(());

fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/release/deps/it-HASH → target/release
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf()
}

fn testnet_bin() -> PathBuf {
    let dir = release_dir();
    let bin = dir.join("credence-testnet");
    let _guard = BUILD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !bin.exists() || !dir.join("credence").exists() {
        // tests/ sits in the workspace root.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root above tests/");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-q", "-p", "credence", "-p", "credence-testnet"])
            .current_dir(root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --release of the binaries failed");
    }
    bin
}

/// A running testnet; dropping it runs `down`.
struct Testnet {
    bin: PathBuf,
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    pids: Vec<u32>,
}

impl Testnet {
    fn up(regions: &str, per_region: u32) -> Testnet {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("tn");
        let mut net = Testnet {
            bin: testnet_bin(),
            _tmp: tmp,
            dir,
            pids: vec![],
        };
        let up = net.json(&[
            "up",
            "--regions",
            regions,
            "--validators-per-region",
            &per_region.to_string(),
        ]);
        net.pids = up["nodes"]
            .as_array()
            .expect("up lists its nodes")
            .iter()
            .filter_map(|n| n["pid"].as_u64())
            .filter_map(|p| u32::try_from(p).ok())
            .collect();
        assert_eq!(net.pids.len(), 2 * per_region as usize, "one pid per node: {up}");
        net
    }

    /// Runs a subcommand with `--json` and returns (success, output).
    fn run(&self, args: &[&str]) -> (bool, Value, String) {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--json")
            .output()
            .expect("run credence-testnet");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.success(), value, stderr)
    }

    /// Runs a subcommand that must succeed.
    fn json(&self, args: &[&str]) -> Value {
        let (ok, value, stderr) = self.run(args);
        assert!(ok, "credence-testnet {args:?} failed: {stderr}\n{value}");
        value
    }

    fn load_region(&self, region: &str, claims: u32) -> Value {
        self.json(&[
            "load",
            "--claims",
            &claims.to_string(),
            "--rate",
            "20",
            "--region",
            region,
            "--timeout-secs",
            CLAIM_TIMEOUT_SECS,
        ])
    }

    fn down(&self) -> Value {
        self.json(&["down"])
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin).args(["down", "--dir"]).arg(&self.dir).output();
    }
}

fn count(load: &Value, status: &str) -> u64 {
    load["counts"][status].as_u64().unwrap_or(0)
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false)
}

#[test]
fn a_partitioned_testnet_keeps_certifying_on_both_sides_and_checks_clean_after_heal() {
    let _serial = crate::common::NETWORK_TESTS.blocking_lock();
    let net = Testnet::up("eu,us", 3);

    let before = net.json(&[
        "load",
        "--claims",
        "20",
        "--rate",
        "20",
        "--timeout-secs",
        CLAIM_TIMEOUT_SECS,
    ]);
    assert_eq!(
        count(&before, "regional") + count(&before, "global"),
        20,
        "every claim is certified on a connected network: {before}"
    );

    let cut = net.json(&["partition", "eu | us"]);
    assert_eq!(cut["groups"].as_array().map(Vec::len), Some(2), "{cut}");

    // Each side serves the claims homed in it, on its own.
    for region in ["eu", "us"] {
        let during = net.load_region(region, 10);
        assert_eq!(
            count(&during, "regional"),
            10,
            "region {region} kept certifying during the partition, and nothing went global: {during}"
        );
    }
    // During the partition, safety is checked; digests may differ.
    let (_, partitioned, _) = net.run(&["check", "--settle-secs", "0"]);
    assert_eq!(
        partitioned["violations"].as_array().map(Vec::len),
        Some(0),
        "no safety violation during the partition (digests are compared after heal): {partitioned}"
    );

    net.json(&["heal"]);
    let (ok, check, stderr) = net.run(&["check", "--settle-secs", SETTLE_SECS]);
    assert!(ok, "check after heal failed: {stderr}\n{check}");
    assert_eq!(check["ok"], Value::Bool(true), "{check}");
    assert_eq!(check["nodes_checked"].as_u64(), Some(6), "{check}");
    assert!(
        check["funded_slots"].as_u64().unwrap_or(0) >= 40,
        "every certified claim is in the audited state: {check}"
    );

    net.down();
    let left: Vec<u32> = net.pids.iter().copied().filter(|p| process_alive(*p)).collect();
    assert!(left.is_empty(), "processes left after down: {left:?}");
}

#[test]
fn check_fails_on_a_network_made_inconsistent_on_purpose() {
    let _serial = crate::common::NETWORK_TESTS.blocking_lock();
    let net = Testnet::up("eu,us", 2);
    let (ok, clean, stderr) = net.run(&["check", "--settle-secs", SETTLE_SECS]);
    assert!(ok, "a fresh network checks clean: {stderr}\n{clean}");

    // us-1 restarts from a genesis that gives region us half as much again:
    // another network, another budget, with the same keys and addresses.
    net.json(&["kill", "us-1", "--graceful"]);
    let node_dir = net.dir.join("nodes").join("us-1");
    let text = std::fs::read_to_string(net.dir.join("genesis.toml")).expect("genesis");
    let mut genesis: credence::config::Genesis = toml::from_str(&text).expect("parse genesis");
    let demo = genesis.distributions.first_mut().expect("a demo distribution");
    for a in demo.allocations.iter_mut().filter(|a| a.region == "us") {
        a.amount += a.amount / 2;
    }
    demo.total = demo.allocations.iter().map(|a| a.amount).sum();
    std::fs::write(
        node_dir.join("genesis-forked.toml"),
        toml::to_string(&genesis).expect("encode genesis"),
    )
    .expect("write forked genesis");
    let config_path = node_dir.join("node.toml");
    let config = std::fs::read_to_string(&config_path).expect("node.toml");
    assert!(config.contains("../../genesis.toml"), "{config}");
    std::fs::write(
        &config_path,
        config.replace("../../genesis.toml", "genesis-forked.toml"),
    )
    .expect("write node.toml");
    std::fs::remove_dir_all(node_dir.join("data")).expect("remove us-1's data");
    net.json(&["restart", "us-1"]);

    let (ok, check, _) = net.run(&["check", "--settle-secs", "5"]);
    assert!(!ok, "check must exit non-zero: {check}");
    assert_eq!(check["ok"], Value::Bool(false), "{check}");
    assert_eq!(check["nodes_checked"].as_u64(), Some(4), "{check}");
    let violations: Vec<&str> = check["violations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        violations.iter().any(|v| v.contains("us-1")),
        "a violation names the forked node: {violations:?}"
    );
}

#[test]
fn a_forger_is_graylisted_and_chaos_loses_no_acknowledged_claim() {
    let net = Testnet::up("eu,us", 2);

    // A rogue peer gossiping forged envelopes: every node it reaches
    // graylists it, no honest validator is graylisted, nothing breaks.
    let forge = net.json(&["attack", "forge", "--secs", "3"]);
    assert_eq!(forge["attacker_graylisted"], true, "{forge}");
    assert!(forge["graylisted_by"].as_u64().unwrap_or(0) >= 1, "{forge}");
    assert_eq!(forge["honest_graylisted"], 0, "{forge}");
    assert_eq!(forge["check"]["ok"], true, "{forge}");
    assert!(
        forge["honest_p99_ratio"].as_f64().is_some(),
        "both loads certified claims: {forge}"
    );

    // Kills, pauses and isolations under load: every claim acknowledged as
    // certified is still certified at every node afterwards.
    let chaos = net.json(&["chaos", "--seed", "7", "--secs", "10"]);
    assert!(chaos["kills"].as_u64().unwrap_or(0) >= 1, "{chaos}");
    assert!(chaos["acknowledged"].as_u64().unwrap_or(0) > 0, "{chaos}");
    assert_eq!(chaos["acknowledged_lost"], 0, "{chaos}");
    assert_eq!(chaos["check"]["ok"], true, "{chaos}");
    net.down();
}

#[test]
fn a_bank_run_drains_its_region_and_leaves_the_others_whole_while_the_pooled_baseline_refuses_them() {
    let net = Testnet::up("eu,us", 3);
    let (_, out, stderr) = net.run(&[
        "stress",
        "bank-run",
        "--claims",
        "10",
        "--budget-claims",
        "42",
        "--base-rate",
        "4",
        "--region",
        "eu",
    ]);
    let s = &out["summary"];
    assert_eq!(out["scenario"], "bank-run", "{stderr}\n{out}");
    // Outcomes, not timings: the other region's escrow untouched and none of its claims refused
    // for lack of it, the run region drained, and every sampled answer carried its view age.
    assert_eq!(s["other_regions_available_untouched_pct"], 100.0, "{out}");
    assert_eq!(s["other_regions_refused_for_escrow"], 0, "{out}");
    assert_eq!(s["run_region_drained"], true, "{out}");
    assert_eq!(s["all_answers_carried_view_age"], true, "{out}");
    // Pooled, the run takes the other region's share too.
    assert!(
        out["baseline"]["summary"]["other_regions_refused_for_escrow"].as_u64() > Some(0),
        "{out}"
    );
    let check = net.json(&["check"]);
    assert_eq!(check["ok"], true, "{check}");
}
