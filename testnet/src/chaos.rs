//! `credence-testnet chaos`: a nemesis loop on a running testnet while a
//! claim load runs, then a checker.
//!
//! The nemesis follows a schedule drawn from `--seed`: it kills a validator
//! (SIGKILL) and starts it again with its data, freezes one (SIGSTOP) and
//! thaws it, or cuts one off from the rest and heals; one fault at a time,
//! so every region keeps its quorum and claims keep being certified. Every
//! claim an entry node answered `regional` for is acknowledged; after the
//! last fault is undone, each acknowledged claim must be known at every node
//! with a status of at least `regional`. Then `check` runs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use credence_proto::v1 as pb;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

use crate::layout::{Layout, Role, RunState};
use crate::{check, faults, lifecycle, load, rpc};

/// Claims per second of the load the nemesis runs beside.
pub const LOAD_RATE: f64 = 10.0;
/// How long a killed node stays down before it is started again.
const DOWN_FOR: Duration = Duration::from_secs(2);
/// How long a paused node stays frozen.
const PAUSED_FOR: Duration = Duration::from_secs(2);
/// How long an isolated node stays cut off.
const ISOLATED_FOR: Duration = Duration::from_secs(3);
/// Pause between two faults: the network settles a little.
const BETWEEN_FAULTS: Duration = Duration::from_millis(500);
/// Longest wait for a restarted node to be healthy again.
const RESTART_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait, after the last fault, for every node to know every
/// acknowledged claim (a restarted node catches up by sync).
const VERIFY_WAIT: Duration = Duration::from_secs(45);
/// Pause between two rounds of the verification.
const VERIFY_POLL: Duration = Duration::from_secs(1);
/// How long `check` waits for certificates still in flight.
const CHECK_SETTLE: Duration = Duration::from_secs(10);
/// Acknowledged-and-lost claims named in the report, at most.
const LOST_KEPT: usize = 10;

#[derive(Clone, Debug)]
pub struct ChaosOptions {
    pub seed: u64,
    pub secs: u64,
}

/// One fault of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    Pause,
    Isolate,
}

/// The schedule's n-th fault: every other one is a kill, the rest pauses and
/// isolations drawn from the seed.
fn fault_at(n: u64, rng: &mut StdRng) -> Fault {
    if n.is_multiple_of(2) {
        Fault::Kill
    } else if rng.random_bool(0.5) {
        Fault::Pause
    } else {
        Fault::Isolate
    }
}

pub async fn chaos(layout: &Layout, opts: ChaosOptions) -> anyhow::Result<Value> {
    if opts.secs == 0 {
        bail!("--secs must be at least 1");
    }
    let state = layout.load_state()?;
    if state.nodes.iter().any(|n| n.state != RunState::Running) {
        bail!("every node must be running before chaos starts: `credence-testnet status` shows which is not");
    }
    if state.partition.is_some() {
        bail!("the testnet is partitioned: `credence-testnet heal` first");
    }
    let validators: Vec<String> = state
        .nodes
        .iter()
        .filter(|n| n.role == Role::Validator)
        .map(|n| n.name.clone())
        .collect();
    if validators.is_empty() {
        bail!("this testnet has no validator to break");
    }
    let opts_load = load::LoadOptions {
        entry_region: None,
        race: false,
        claims: ((LOAD_RATE * opts.secs as f64).ceil() as u64).max(1),
        rate: LOAD_RATE,
        region: None,
        entry: load::Entry::Random,
        wait: load::Wait::Regional,
        timeout: Duration::from_secs(30),
        concurrency: load::CONCURRENCY_DEFAULT,
        distribution: None,
        credentials: load::Credentials::Inline,
    };
    let load_layout = Layout::new(&layout.dir)?;
    let load_task = tokio::spawn(async move { load::load_acknowledged(&load_layout, opts_load).await });

    let mut rng = StdRng::seed_from_u64(opts.seed);
    let started = Instant::now();
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut log = Vec::new();
    let mut n: u64 = 0;
    while started.elapsed() < Duration::from_secs(opts.secs) {
        let fault = fault_at(n, &mut rng);
        n = n.saturating_add(1);
        let victim = validators
            .choose(&mut rng)
            .cloned()
            .ok_or_else(|| anyhow!("no validator"))?;
        let at = started.elapsed().as_secs_f64();
        let name = match fault {
            Fault::Kill => {
                lifecycle::kill(layout, &victim, false)?;
                tokio::time::sleep(DOWN_FOR).await;
                lifecycle::restart(layout, &victim, RESTART_TIMEOUT).await?;
                "kills"
            }
            Fault::Pause => {
                lifecycle::pause(layout, &victim, true)?;
                tokio::time::sleep(PAUSED_FOR).await;
                lifecycle::pause(layout, &victim, false)?;
                "pauses"
            }
            Fault::Isolate => {
                faults::partition(layout, &victim).await?;
                tokio::time::sleep(ISOLATED_FOR).await;
                faults::heal(layout).await?;
                "isolations"
            }
        };
        *counts.entry(name).or_default() += 1;
        log.push(json!({"at_s": at, "fault": name, "node": victim}));
        tokio::time::sleep(BETWEEN_FAULTS).await;
    }
    let nemesis_s = started.elapsed().as_secs_f64();
    let (load_report, acknowledged) = load_task
        .await
        .map_err(|e| anyhow!("the load beside the nemesis failed: {e}"))??;

    let lost = verify(layout, &acknowledged).await?;
    let check = check::check(layout, CHECK_SETTLE).await?;
    let lost_examples: Vec<&String> = lost.iter().take(LOST_KEPT).collect();
    Ok(json!({
        "seed": opts.seed,
        "secs": opts.secs,
        "nemesis_s": nemesis_s,
        "kills": counts.get("kills").copied().unwrap_or(0),
        "pauses": counts.get("pauses").copied().unwrap_or(0),
        "isolations": counts.get("isolations").copied().unwrap_or(0),
        "faults": log,
        "acknowledged": acknowledged.len(),
        "acknowledged_lost": lost.len(),
        "lost_examples": lost_examples,
        "load": {
            "claims": load_report["submitted"],
            "counts": load_report["counts"],
            "p50_ms": load_report["p50_ms"],
            "p99_ms": load_report["p99_ms"],
        },
        "check": {"ok": check["ok"], "violations": check["violations"]},
    }))
}

/// Whether a claim's status is at least `regional` (certified).
fn certified(status: &str) -> bool {
    matches!(status, "regional" | "global")
}

/// The acknowledged claims some node does not know as certified, after
/// waiting up to [`VERIFY_WAIT`] for nodes to catch up: `id at node: status`.
async fn verify(layout: &Layout, acknowledged: &[String]) -> anyhow::Result<Vec<String>> {
    let state = layout.load_state()?;
    let mut waiting: Vec<(String, String, String)> = Vec::new();
    for node in &state.nodes {
        for id in acknowledged {
            waiting.push((node.name.clone(), node.rpc.clone(), id.clone()));
        }
    }
    let deadline = Instant::now() + VERIFY_WAIT;
    let mut last: BTreeMap<(String, String), String> = BTreeMap::new();
    loop {
        let mut still = Vec::new();
        for (name, url, id) in waiting {
            let status = match rpc::channel(&url) {
                Ok(channel) => match rpc::escrow(&channel)
                    .get_claim(pb::GetClaimRequest { id: id.clone() })
                    .await
                {
                    Ok(answer) => answer.into_inner().status,
                    Err(e) => format!("error: {}", rpc::describe(&e)),
                },
                Err(e) => format!("error: {e}"),
            };
            if !certified(&status) {
                last.insert((name.clone(), id.clone()), status);
                still.push((name, url, id));
            }
        }
        waiting = still;
        if waiting.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(VERIFY_POLL).await;
    }
    Ok(waiting
        .into_iter()
        .map(|(name, _, id)| {
            let status = last.get(&(name.clone(), id.clone())).cloned().unwrap_or_default();
            format!("{id} at {name}: {status}")
        })
        .collect())
}

/// For people: faults, acknowledged and lost.
pub fn print_report(v: &Value) {
    outln!(
        "chaos seed {} for {:.1} s: {} kills, {} pauses, {} isolations",
        v["seed"],
        v["nemesis_s"].as_f64().unwrap_or(0.0),
        v["kills"],
        v["pauses"],
        v["isolations"]
    );
    outln!(
        "{} claims acknowledged as certified, {} of them lost",
        v["acknowledged"],
        v["acknowledged_lost"]
    );
    for l in v["lost_examples"].as_array().into_iter().flatten() {
        outln!("  lost: {}", l.as_str().unwrap_or(""));
    }
    check::print_after(&v["check"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_kills_every_other_fault_and_follows_its_seed() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20).map(|n| fault_at(n, &mut rng)).collect::<Vec<_>>()
        };
        let a = draw(1);
        assert_eq!(a, draw(1));
        assert_eq!(a.iter().filter(|f| **f == Fault::Kill).count(), 10);
        assert!(a.contains(&Fault::Pause) && a.contains(&Fault::Isolate));
    }
}
