//! `credence-testnet stress SCENARIO`: stress scenarios on a running testnet, measured from
//! outside over RPC and drawn with the node crate's stress report (`credence::stress`).
//!
//! Each scenario creates its own distribution (signed with the testnet's operator key, so its
//! budget is small enough to drain), runs base load in every region with the load generator
//! (`load.rs`), applies its stress, and samples `GetLiquidity` at one node of each region every
//! `SAMPLE_EVERY`: per-region liquidity and the view age each region's node reports of the
//! others. The bank run also runs a pooled baseline: the same workload on a second
//! distribution whose whole budget is in the run region.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use credence::core::envelope::{Kind, NetworkId, parse_hex32, seal};
use credence::stress::{
    CONVERGENCE_MAX_MS, DECISION_MAX_MS, FAULT_TO_REGIONAL, HEAL_TO_NORMAL, Measured, ModeLook, P99_RATIO_MAX,
    Percentiles, RegionPoint, Report, Sample,
};
use credence_proto::v1 as pb;
use prost::Message;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::layout::{Layout, RunState};
use crate::load::{self, Credentials, Entry, LoadOptions, Wait};
use crate::{faults, lifecycle, rpc};

/// The scenarios (the same names as `credence sim --scenario`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Claimants of the run region arrive at 10x the base rate until its escrow is gone,
    /// base load elsewhere; then the same on a pooled baseline (all escrow in the run region).
    BankRun,
    /// The run region is cut off from the others while its claimants rush, then healed.
    ExitUnderPartition,
    /// The run region's claimants rush while the issuer revokes three credentials of every
    /// four, dated before their claims: before submission, in flight, once certified.
    RevocationRace,
    /// The run region's links get +300 ms and jitter under load (needs `up --shaped`).
    SlowRegion,
    /// One owner of the run region is killed mid-run; its successor takes over.
    OwnerCrash,
    /// The bank run, with the operator moving escrow from another region toward the run
    /// region while it drains.
    RebalanceUnderStress,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::BankRun => "bank-run",
            Scenario::ExitUnderPartition => "exit-under-partition",
            Scenario::RevocationRace => "revocation-race",
            Scenario::SlowRegion => "slow-region",
            Scenario::OwnerCrash => "owner-crash",
            Scenario::RebalanceUnderStress => "rebalance-under-stress",
        }
    }
}

#[derive(Clone, Debug)]
pub struct StressOptions {
    pub scenario: Scenario,
    pub report: Option<PathBuf>,
    pub region: Option<String>,
    /// Claims per second per region at base load.
    pub base_rate: f64,
    /// Claims per other region in each phase (base, then during the stress).
    pub claims: u64,
    /// Each region's budget in claims (bank run); ample scenarios get `AMPLE_MULTIPLE` times.
    pub budget_claims: u64,
    /// Do not pin regions to separate CPUs (see `pin`).
    pub shared_cpus: bool,
}

/// The run region's claimants arrive at this multiple of the base rate.
pub const RUN_MULTIPLE: f64 = 10.0;
/// Amount one claim pays in the stress distributions.
pub const AMOUNT_PER_CLAIM: u64 = 10;
/// Scenarios that must not run dry get this many times the bank run's budget.
pub const AMPLE_MULTIPLE: u64 = 20;
/// How often liquidity and view ages are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Longest wait for a new distribution to reach every running node.
pub const DISTRIBUTION_WAIT_MAX: Duration = Duration::from_secs(30);
/// Longest wait for one claim to settle.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);
/// The slow region's extra one-way delay and jitter.
pub const SLOW_MS: u64 = 300;
pub const SLOW_JITTER_MS: u64 = 100;
/// rebalance-under-stress: the other regions hold this many times the run region's budget, and
/// the rebalance moves this share of one other region's spare (what its own claims will not
/// need) to the run region.
pub const REBALANCE_OTHERS_MULTIPLE: u64 = 2;
pub const REBALANCE_SHARE: f64 = 0.5;
/// Longest wait, after the race's claims are settled at their entry nodes, for every raced
/// claim to settle at every node (disputed or refused when revoked, credited when not).
pub const RACE_SETTLE_MAX: Duration = Duration::from_secs(30);
/// Claims looked up at once while the race settles.
const RACE_LOOKUPS: usize = 64;
/// A view age at or above this means "never heard": not a number carried by the answer.
const VIEW_AGE_UNKNOWN: u64 = u64::MAX / 2;

struct Node {
    name: String,
    region: String,
    channel: Channel,
    pid: Option<u32>,
}

struct Net {
    layout: Layout,
    network: NetworkId,
    operator: ed25519_dalek::SigningKey,
    nodes: Vec<Node>,
    regions: Vec<String>,
    start: Instant,
}

impl Net {
    fn observer_of(&self, region: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.region == region)
    }

    fn outside(&self, region: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.region != region && !n.region.is_empty())
    }
}

fn connect(layout: &Layout) -> anyhow::Result<Net> {
    let state = layout.load_state()?;
    let mut nodes = Vec::new();
    for n in state
        .nodes
        .iter()
        .filter(|n| n.state == RunState::Running && !n.region.is_empty())
    {
        nodes.push(Node {
            name: n.name.clone(),
            region: n.region.clone(),
            channel: rpc::channel(&n.rpc)?,
            pid: n.pid,
        });
    }
    if nodes.is_empty() {
        bail!("no validator of this testnet is running: `credence-testnet up` starts them");
    }
    let network = parse_hex32(&state.network_id)
        .map(NetworkId)
        .ok_or_else(|| anyhow!("state.json holds a malformed network id"))?;
    let path = layout.dir.join("keys").join("operator.key");
    let operator =
        credence::keys::load(&path).with_context(|| format!("cannot load the operator key {}", path.display()))?;
    Ok(Net {
        layout: Layout::new(&layout.dir)?,
        network,
        operator,
        nodes,
        regions: state.regions().into_iter().collect(),
        start: Instant::now(),
    })
}

/// Signs and submits a distribution with these allocations; waits until every running node
/// lists it. Returns its id.
async fn distribute(net: &Net, name: &str, allocations: &[(String, u64)]) -> anyhow::Result<String> {
    let total = allocations.iter().map(|(_, a)| *a).sum();
    let body = pb::Distribution {
        operator: net.operator.verifying_key().to_bytes().to_vec(),
        asset: "stress".into(),
        total,
        rule: Some(pb::DistributionRule {
            schema: credence::config::DEMO_SCHEMA.into(),
            issuers: vec![],
            amount_per_claim: AMOUNT_PER_CLAIM,
        }),
        opens_at: 0,
        closes_at: 0,
        allocations: allocations
            .iter()
            .map(|(region, amount)| pb::Allocation {
                region: region.clone(),
                amount: *amount,
            })
            .collect(),
        nonce: rand::random(),
        max_outflow_per_window: 0,
        outflow_window_ms: 0,
        name: name.into(),
    };
    let (envelope, _) = seal(&net.network, &net.operator, Kind::Distribution, body.encode_to_vec());
    let first = net.nodes.first().ok_or_else(|| anyhow!("no node"))?;
    let id = rpc::escrow(&first.channel)
        .submit_distribution(pb::SubmitRequest { envelope })
        .await
        .map_err(|e| anyhow!("SubmitDistribution on {}: {}", first.name, rpc::describe(&e)))?
        .into_inner()
        .id;
    let deadline = Instant::now() + DISTRIBUTION_WAIT_MAX;
    loop {
        let mut missing = Vec::new();
        for n in &net.nodes {
            let known = rpc::escrow(&n.channel)
                .list_distributions(pb::ListDistributionsRequest {})
                .await
                .map(|l| l.into_inner().distributions.iter().any(|d| d.id == id))
                .unwrap_or(false);
            if !known {
                missing.push(n.name.clone());
            }
        }
        if missing.is_empty() {
            return Ok(id);
        }
        if Instant::now() >= deadline {
            bail!(
                "distribution {id} had not reached {} after {DISTRIBUTION_WAIT_MAX:?}",
                missing.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the sampler collected.
#[derive(Default)]
struct Sampled {
    samples: Vec<Sample>,
    view_age: BTreeMap<String, Vec<(f64, f64)>>,
    answers: u64,
    answers_without_age: u64,
    /// Region rows that said this node had never heard from the region.
    never_heard: u64,
    max_view_age_ms: u64,
    /// Every node's quorum mode at each sample (`Status`).
    looks: Vec<ModeLook>,
}

/// What a scenario's fault did, and when (seconds since the run began).
#[derive(Default)]
struct Fault {
    notes: Vec<String>,
    at_s: Option<f64>,
    healed_s: Option<f64>,
    /// rebalance-under-stress: the amount the operator moved into the run region.
    moved: Option<u64>,
}

/// Every node's quorum mode now: how many answered, suspect someone, are not `normal`.
async fn look(net: &Net) -> ModeLook {
    let t_s = net.start.elapsed().as_secs_f64();
    let answers = futures::future::join_all(net.nodes.iter().map(|n| async move {
        rpc::node(&n.channel)
            .status(pb::StatusRequest {})
            .await
            .ok()
            .map(tonic::Response::into_inner)
    }))
    .await;
    let mut out = ModeLook {
        t_s,
        ..ModeLook::default()
    };
    for s in answers.into_iter().flatten() {
        out.up += 1;
        out.suspecting += usize::from(!s.suspected.is_empty());
        out.not_normal += usize::from(s.mode != "normal");
    }
    out
}

/// Samples `GetLiquidity` of `distribution` at one node per region, and every node's mode,
/// until `stop` is set.
async fn sampler(
    net: Arc<Net>,
    distribution: String,
    out: Arc<Mutex<Sampled>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let modes = look(&net).await;
        lock(&out).looks.push(modes);
        let t_s = net.start.elapsed().as_secs_f64();
        let mut sample = Sample {
            t_s,
            regions: BTreeMap::new(),
        };
        for region in &net.regions {
            let Some(node) = net.observer_of(region) else { continue };
            let Ok(answer) = rpc::escrow(&node.channel)
                .get_liquidity(pb::GetLiquidityRequest {
                    distribution_id: distribution.clone(),
                })
                .await
            else {
                continue;
            };
            let answer = answer.into_inner();
            let mut s = lock(&out);
            s.answers += 1;
            // Every region's row carries its view age; "never heard yet" is said with the
            // sentinel, counted apart and left out of the largest age.
            if answer.regions.len() < net.regions.len() {
                s.answers_without_age += 1;
            }
            for r in &answer.regions {
                if r.view_age_ms >= VIEW_AGE_UNKNOWN {
                    s.never_heard += 1;
                } else if r.region != *region {
                    s.max_view_age_ms = s.max_view_age_ms.max(r.view_age_ms);
                    s.view_age
                        .entry(format!("{region} → {}", r.region))
                        .or_default()
                        .push((t_s, r.view_age_ms as f64));
                }
                // Each region's own figures as its own node sees them.
                if r.region == *region {
                    sample.regions.insert(
                        r.region.clone(),
                        RegionPoint {
                            available: r.available,
                            pending: r.pending,
                            spent: r.spent,
                            disputed: r.disputed,
                            stranded: r.stranded,
                        },
                    );
                }
            }
        }
        lock(&out).samples.push(sample);
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Claimants of `region`: homed there, or (pooled, when it holds no escrow) submitting there.
fn load_opts(claims: u64, rate: f64, region: &str, distribution: &str, pooled: bool) -> LoadOptions {
    LoadOptions {
        entry_region: pooled.then(|| region.to_owned()),
        claims,
        rate,
        region: (!pooled).then(|| region.to_owned()),
        entry: Entry::Home,
        wait: Wait::Regional,
        timeout: CLAIM_TIMEOUT,
        concurrency: load::CONCURRENCY_DEFAULT,
        distribution: Some(distribution.to_owned()),
        // Issued by `load::prepared` before either phase starts.
        credentials: Credentials::Ahead,
        race: false,
    }
}

/// Claims of one load result refused for lack of escrow (rejected, or refused at submission).
fn refused_for_escrow(v: &Value) -> u64 {
    v["errors"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(e, _)| e.contains("exhausted"))
        .filter_map(|(_, n)| n.as_u64())
        .sum()
}

fn refused_by_reason(results: &[&Value], into: &mut BTreeMap<String, u64>) {
    for v in results {
        for (e, n) in v["errors"].as_object().into_iter().flatten() {
            let reason = e.rsplit(": ").nth(1).map_or(e.as_str(), |_| e.as_str());
            let key = credence_reason(reason);
            *into.entry(key).or_default() += n.as_u64().unwrap_or(0);
        }
    }
}

/// A refusal message without node names and numbers.
fn credence_reason(text: &str) -> String {
    let text = text.strip_prefix("rejected: ").unwrap_or(text);
    let tail = text.rsplit(": ").find(|part| !part.is_empty()).unwrap_or(text);
    let head = if text.contains("exhausted") {
        "bucket exhausted"
    } else {
        tail
    };
    head.split_whitespace()
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn p99(v: &Value) -> f64 {
    v["latency_to_regional_ms"]["p99"].as_f64().unwrap_or(0.0)
}

fn p50(v: &Value) -> f64 {
    v["latency_to_regional_ms"]["p50"].as_f64().unwrap_or(0.0)
}

fn count(v: &Value) -> usize {
    v["latency_to_regional_ms"]["count"].as_u64().unwrap_or(0) as usize
}

/// One run of the workload on `distribution`: base load in the other regions, then the same
/// load again while the run region's claimants arrive at `RUN_MULTIPLE` times the rate (and
/// `during` applies the scenario's fault). Returns figures and measurements.
async fn run_once(
    net: &Arc<Net>,
    opts: &StressOptions,
    run_region: &str,
    distribution: &str,
    label: &str,
    pooled: bool,
    during: impl std::future::Future<Output = anyhow::Result<Fault>>,
) -> anyhow::Result<(Value, Measured, Vec<String>)> {
    let others: Vec<String> = net.regions.iter().filter(|r| *r != run_region).cloned().collect();
    let out = Arc::new(Mutex::new(Sampled::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Every claimant's credential of both phases is issued (and held by every node that needs
    // it) before the base phase: what the phases compare is claims alone, not credential gossip.
    eprintln!("{label}: issuing the credentials of both phases");
    let run_claims = ((opts.claims as f64) * RUN_MULTIPLE) as u64;
    let mut base = Vec::new();
    let mut elsewhere = Vec::new();
    for r in &others {
        base.push(
            load::prepared(
                &net.layout,
                load_opts(opts.claims, opts.base_rate, r, distribution, pooled),
            )
            .await?,
        );
        elsewhere.push(
            load::prepared(
                &net.layout,
                load_opts(opts.claims, opts.base_rate, r, distribution, pooled),
            )
            .await?,
        );
    }
    let run = load::prepared(
        &net.layout,
        LoadOptions {
            race: opts.scenario == Scenario::RevocationRace,
            ..load_opts(
                run_claims,
                opts.base_rate * RUN_MULTIPLE,
                run_region,
                distribution,
                false,
            )
        },
    )
    .await?;
    let sampling = tokio::spawn(sampler(net.clone(), distribution.to_owned(), out.clone(), stop.clone()));
    eprintln!("{label}: base load in {}", others.join(", "));
    let (base, base_ms): (Vec<Value>, Vec<Vec<u64>>) =
        futures::future::try_join_all(base.into_iter().map(load::Prepared::run))
            .await?
            .into_iter()
            .unzip();
    let stress_at = net.start.elapsed().as_secs_f64();
    eprintln!("{label}: the run on {run_region} at {RUN_MULTIPLE}x, base load elsewhere");
    let run = run.run();
    let elsewhere = futures::future::try_join_all(elsewhere.into_iter().map(load::Prepared::run));
    let ((run, _), elsewhere, fault) = tokio::try_join!(run, elsewhere, during)?;
    let (elsewhere, elsewhere_ms): (Vec<Value>, Vec<Vec<u64>>) = elsewhere.into_iter().unzip();
    let race = if opts.scenario == Scenario::RevocationRace {
        eprintln!("{label}: waiting for every raced claim to settle at every node");
        Some(settle_race(net, &run["race"]).await)
    } else {
        None
    };
    // A last sample after everything settled.
    tokio::time::sleep(SAMPLE_EVERY * 2).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampling.await;
    let sampled = std::mem::take(&mut *lock(&out));
    // The other regions' p99 during the run ÷ their base p99, over all their claims together:
    // one region's handful of claims has no p99 of its own (its "p99" is its slowest claim).
    let pooled_p99 = |phases: Vec<Vec<u64>>| {
        let mut all: Vec<u64> = phases.into_iter().flatten().collect();
        all.sort_unstable();
        load::percentile(&all, 0.99).map_or(0.0, |ms| ms as f64)
    };
    let (base_p99, run_p99) = (pooled_p99(base_ms), pooled_p99(elsewhere_ms));
    let ratio = if base_p99 > 0.0 {
        run_p99 / base_p99
    } else {
        f64::INFINITY
    };
    let mut latency = BTreeMap::new();
    for (r, (b, e)) in others.iter().zip(base.iter().zip(&elsewhere)) {
        for (phase, v) in [("base", b), ("run", e)] {
            latency.insert(
                format!("{r} {phase}"),
                Percentiles {
                    count: count(v),
                    p50_ms: p50(v),
                    p99_ms: p99(v),
                },
            );
        }
    }
    latency.insert(
        format!("{run_region} run"),
        Percentiles {
            count: count(&run),
            p50_ms: p50(&run),
            p99_ms: p99(&run),
        },
    );
    let mut refused = BTreeMap::new();
    let all: Vec<&Value> = base.iter().chain(&elsewhere).chain(std::iter::once(&run)).collect();
    refused_by_reason(&all, &mut refused);
    let others_refused: u64 = base.iter().chain(&elsewhere).map(refused_for_escrow).sum();
    // Certified claims per second, from the growth of `spent` between samples.
    let mut claims_per_s = Vec::new();
    for pair in sampled.samples.windows(2) {
        if let [a, b] = pair {
            let mut counts = BTreeMap::new();
            for (r, p) in &b.regions {
                let before = a.regions.get(r).map_or(p.spent, |q| q.spent);
                let dt = (b.t_s - a.t_s).max(1e-3);
                let per_s = (p.spent.saturating_sub(before) / AMOUNT_PER_CLAIM) as f64 / dt;
                counts.insert(format!("certified in {r}"), per_s.round() as u64);
            }
            claims_per_s.push((b.t_s, counts));
        }
    }
    let decision = fault
        .at_s
        .map(|at| credence::stress::decision(&sampled.looks, at, fault.healed_s))
        .unwrap_or_default();
    let mut figures = json!({
        "other_regions_p99_ratio": ratio,
        "other_regions_base_p99_ms": base_p99,
        "other_regions_run_p99_ms": run_p99,
        "other_regions_refused_for_escrow": others_refused,
        "run_region_refused_for_escrow": refused_for_escrow(&run),
        "run_region_counts": run["counts"],
        "run_region_errors": run["errors"],
        "other_regions_errors": base.iter().chain(&elsewhere).map(|v| v["errors"].clone()).collect::<Vec<_>>(),
        "max_view_age_ms": sampled.max_view_age_ms,
        "all_answers_carried_view_age": sampled.answers > 0 && sampled.answers_without_age == 0,
        "answers_sampled": sampled.answers,
        "view_age_never_heard_rows": sampled.never_heard,
        "stress_started_s": stress_at,
    });
    if let Some(moved) = fault.moved {
        figures["rebalance_moved_into_run_region"] = json!(moved);
    }
    if let Some(race) = race {
        for (k, v) in race.as_object().into_iter().flatten() {
            figures[k] = v.clone();
        }
    }
    if !decision.is_empty() {
        let steps: BTreeMap<&str, f64> = decision.iter().map(|(k, ms)| (k.as_str(), *ms)).collect();
        figures["decision_latency_ms"] = json!(steps);
        if opts.scenario == Scenario::ExitUnderPartition {
            figures["regional_everywhere_ms"] = json!(steps.get(FAULT_TO_REGIONAL));
            figures["normal_after_heal_ms"] = json!(steps.get(HEAL_TO_NORMAL));
        }
    }
    let measured = Measured {
        label: label.to_owned(),
        amount_per_claim: AMOUNT_PER_CLAIM,
        samples: sampled.samples,
        claims_per_s,
        latency,
        refused,
        view_age: sampled.view_age,
        decision,
    };
    Ok((figures, measured, fault.notes))
}

/// Where one raced claim stands at every node.
#[derive(Default)]
struct RaceLook {
    revoked: bool,
    /// Nodes that show it disputed; credited (regional, global); refused or unknown; anything
    /// else (received, provisional, unanswered).
    disputed: usize,
    credited: usize,
    refused: usize,
    other: usize,
}

impl RaceLook {
    /// Some node shows it certified (regional, global or disputed).
    fn certified(&self) -> bool {
        self.disputed + self.credited > 0
    }

    fn settled(&self) -> bool {
        match (self.revoked, self.certified()) {
            (true, true) => self.credited == 0 && self.refused == 0 && self.other == 0,
            (true, false) => self.other == 0,
            (false, _) => self.disputed == 0 && self.refused == 0 && self.other == 0,
        }
    }
}

/// Every node's status of one claim.
async fn race_look(net: &Net, id: &str, revoked: bool) -> RaceLook {
    let mut look = RaceLook {
        revoked,
        ..RaceLook::default()
    };
    for node in &net.nodes {
        let status = rpc::escrow(&node.channel)
            .get_claim(pb::GetClaimRequest { id: id.to_owned() })
            .await
            .map(|a| a.into_inner().status)
            .unwrap_or_default();
        match status.as_str() {
            "disputed" => look.disputed += 1,
            "regional" | "global" => look.credited += 1,
            "rejected" | "unknown" => look.refused += 1,
            _ => look.other += 1,
        }
    }
    look
}

/// Waits (up to `RACE_SETTLE_MAX`) until every raced claim is settled at every node, then
/// says how each ended: a claim certified with a credential revoked before its batch must be
/// disputed at every node and credited at none; every other claim credited everywhere.
async fn settle_race(net: &Net, raced: &Value) -> Value {
    use futures::StreamExt;
    let claims: Vec<(String, String, String)> = raced
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            // A claim whose revocation was never sent (it ended, or timed out, before the
            // moment it was due) raced nothing: it is judged as never revoked.
            let revoked = if text("status_when_revoked").is_empty() {
                load::RevokeAt::Never.name().to_owned()
            } else {
                text("revoked")
            };
            (text("id"), revoked, text("status_when_revoked"))
        })
        .collect();
    let never = load::RevokeAt::Never.name();
    let started = Instant::now();
    let looks = loop {
        let looks: Vec<RaceLook> = futures::stream::iter(claims.iter())
            .map(|(id, revoked, _)| async move {
                if id.is_empty() {
                    // Refused at submission: never in any node's books.
                    RaceLook {
                        revoked: revoked != never,
                        refused: net.nodes.len(),
                        ..RaceLook::default()
                    }
                } else {
                    race_look(net, id, revoked != never).await
                }
            })
            .buffered(RACE_LOOKUPS)
            .collect()
            .await;
        let open = looks.iter().filter(|l| !l.settled()).count();
        if open == 0 || started.elapsed() >= RACE_SETTLE_MAX {
            break looks;
        }
        eprintln!(
            "revocation race: {open} of {} claims not yet settled at every node",
            claims.len()
        );
        tokio::time::sleep(SAMPLE_EVERY * 2).await;
    };
    let mut moments: BTreeMap<&str, u64> = BTreeMap::new();
    let mut statuses: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, revoked, status) in claims.iter().filter(|(_, r, _)| r != never) {
        *moments.entry(revoked).or_default() += 1;
        *statuses
            .entry(if status.is_empty() { "not sent" } else { status })
            .or_default() += 1;
    }
    let revoked: Vec<&RaceLook> = looks.iter().filter(|l| l.revoked).collect();
    let certified = revoked.iter().filter(|l| l.certified()).count();
    let disputed_everywhere = revoked
        .iter()
        .filter(|l| l.certified() && l.disputed == net.nodes.len())
        .count();
    let others: Vec<&RaceLook> = looks.iter().filter(|l| !l.revoked).collect();
    json!({
        "race_claims": claims.len(),
        "revoked": revoked.len(),
        "revoked_when": moments,
        "revoked_status_when_revoked": statuses,
        "revoked_certified": certified,
        "revoked_certified_disputed_at_every_node": disputed_everywhere,
        "revoked_credited_at_some_node": revoked.iter().filter(|l| l.credited > 0).count(),
        "revoked_refused": revoked.len() - certified,
        "revocations_refused": raced.as_array().into_iter().flatten().filter(|c| !c["revocation_error"].is_null()).count(),
        "other_claims": others.len(),
        "other_claims_affected": others.iter().filter(|l| !l.settled()).count(),
        "race_settled_s": started.elapsed().as_secs_f64(),
        "race_settled": looks.iter().all(RaceLook::settled),
    })
}

/// The liquidity of `distribution` as a node outside `region` sees it.
async fn liquidity(net: &Net, region: &str, distribution: &str) -> anyhow::Result<pb::Liquidity> {
    let node = net
        .outside(region)
        .ok_or_else(|| anyhow!("no running node outside {region}"))?;
    Ok(rpc::escrow(&node.channel)
        .get_liquidity(pb::GetLiquidityRequest {
            distribution_id: distribution.to_owned(),
        })
        .await
        .map_err(|e| anyhow!("GetLiquidity on {}: {}", node.name, rpc::describe(&e)))?
        .into_inner())
}

/// Of the other regions' allocations, the share still spent, available or stranded in them.
fn untouched_pct(l: &pb::Liquidity, run_region: &str, allocation: u64) -> f64 {
    let others: Vec<&pb::RegionLiquidityInfo> = l.regions.iter().filter(|r| r.region != run_region).collect();
    let kept: u64 = others.iter().map(|r| r.spent + r.available + r.stranded).sum();
    let allocated = allocation * others.len() as u64;
    if kept == allocated {
        100.0
    } else {
        100.0 * kept as f64 / allocated.max(1) as f64
    }
}

pub async fn stress(layout: &Layout, opts: StressOptions) -> anyhow::Result<Value> {
    if !(opts.base_rate > 0.0 && opts.base_rate.is_finite()) || opts.claims == 0 || opts.budget_claims == 0 {
        bail!("--base-rate, --claims and --budget-claims must be positive");
    }
    if opts.budget_claims <= opts.claims.saturating_mul(2) {
        bail!(
            "--budget-claims {} must exceed twice --claims {}: the other regions' own claims (base, then during the run) must fit their budget",
            opts.budget_claims,
            opts.claims
        );
    }
    let net = Arc::new(connect(layout)?);
    if net.regions.len() < 2 {
        bail!(
            "a stress scenario needs at least two regions (this testnet has {})",
            net.regions.len()
        );
    }
    let run_region = match &opts.region {
        Some(r) if net.regions.contains(r) => r.clone(),
        Some(r) => bail!("--region {r}: this testnet's regions are {}", net.regions.join(", ")),
        None => net.regions.first().cloned().unwrap_or_default(),
    };
    let pinned = if opts.shared_cpus {
        None
    } else {
        let nodes: Vec<(u32, bool)> = net
            .nodes
            .iter()
            .filter_map(|n| n.pid.map(|p| (p, n.region == run_region)))
            .collect();
        crate::pin::regions(&nodes, net.regions.len())
    };
    let cpus = pinned.as_ref().map_or_else(
        || "every node free to run on any CPU of this machine".to_owned(),
        |p| p.describe(net.regions.len()),
    );
    let scarce = matches!(opts.scenario, Scenario::BankRun | Scenario::RebalanceUnderStress);
    let per_region = opts.budget_claims * AMOUNT_PER_CLAIM * if scarce { 1 } else { AMPLE_MULTIPLE };
    let others_budget = if opts.scenario == Scenario::RebalanceUnderStress {
        per_region * REBALANCE_OTHERS_MULTIPLE
    } else {
        per_region
    };
    let fragmented: Vec<(String, u64)> = net
        .regions
        .iter()
        .map(|r| (r.clone(), if *r == run_region { per_region } else { others_budget }))
        .collect();
    let tag = format!("{}-{}", opts.scenario.name(), rand::random::<u32>());
    let dist = distribute(&net, &format!("stress {tag}"), &fragmented).await?;
    // What each other region's own claims spend: base, then during the run.
    let others_need = opts.claims * 2 * AMOUNT_PER_CLAIM;
    let fault = fault(&net, opts.scenario, &run_region, &dist, others_need);
    let (mut figures, main, notes) = run_once(
        &net,
        &opts,
        &run_region,
        &dist,
        "fragmented (escrow per region)",
        false,
        fault,
    )
    .await?;
    let l = liquidity(&net, &run_region, &dist).await?;
    let (run_available, run_spent) = l
        .regions
        .iter()
        .find(|r| r.region == run_region)
        .map_or((0, 0), |r| (r.available, r.spent));
    let buckets = l
        .regions
        .iter()
        .find(|r| r.region == run_region)
        .map_or(1, |r| r.buckets.len().max(1)) as u64;
    figures["other_regions_available_untouched_pct"] = json!(untouched_pct(&l, &run_region, others_budget));
    figures["run_region_available_end"] = json!(run_available);
    figures["run_region_spent"] = json!(run_spent);
    figures["run_region_allocation"] = json!(per_region);
    figures["run_region_drained"] = json!(run_available < AMOUNT_PER_CLAIM * buckets);
    let mut out = json!({
        "scenario": opts.scenario.name(),
        "run_region": run_region,
        "distribution": dist,
        "summary": figures,
        "notes": notes,
        "cpus": cpus,
    });
    let mut baseline = None;
    if opts.scenario == Scenario::BankRun {
        let pooled: Vec<(String, u64)> = vec![(run_region.clone(), per_region * net.regions.len() as u64)];
        let bdist = distribute(&net, &format!("stress {tag} pooled"), &pooled).await?;
        let none = async { Ok(Fault::default()) };
        let (bfigures, bmeasured, _) = run_once(
            &net,
            &opts,
            &run_region,
            &bdist,
            "pooled baseline (all escrow in the run region)",
            true,
            none,
        )
        .await?;
        out["baseline"] = json!({"distribution": bdist, "summary": bfigures});
        baseline = Some(bmeasured);
    }
    let failures = judge(opts.scenario, &out);
    out["ok"] = json!(failures.is_empty());
    out["failures"] = json!(failures);
    if let Some(dir) = &opts.report {
        let report = Report {
            scenario: opts.scenario.name().to_owned(),
            source: format!(
                "testnet of real processes ({} nodes in {} regions), {} claims/s per region at base, latency to regional; {}",
                net.nodes.len(),
                net.regions.len(),
                opts.base_rate,
                out["cpus"].as_str().unwrap_or_default()
            ),
            run_region: run_region.clone(),
            summary: summary_rows(&out),
            notes: out["notes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .chain(std::iter::once(
                    "view age: every sampled GetLiquidity answer carries each region's view age as the answering node sees it"
                        .to_owned(),
                ))
                .collect(),
            main,
            baseline,
        };
        let files = report.write(dir)?;
        out["report"] = json!({"dir": dir, "plots": files});
    }
    drop(pinned);
    Ok(out)
}

/// The scenario's fault while the run lasts; returns what it did and when.
async fn fault(net: &Net, scenario: Scenario, run_region: &str, dist: &str, others_need: u64) -> anyhow::Result<Fault> {
    // Let the run begin first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let layout = &net.layout;
    let mut fault = Fault::default();
    let since = || Some(net.start.elapsed().as_secs_f64());
    let others: Vec<&str> = net
        .regions
        .iter()
        .filter(|r| *r != run_region)
        .map(String::as_str)
        .collect();
    match scenario {
        Scenario::BankRun => {}
        Scenario::RevocationRace => fault.notes.push(format!(
            "the issuer revoked three of every four credentials of {run_region}'s rushing claims, each dated \
             just before its claim: at the entry node before submission, elsewhere while in flight, elsewhere \
             once certified"
        )),
        Scenario::ExitUnderPartition => {
            faults::partition(layout, &format!("{run_region} | {}", others.join(","))).await?;
            fault.at_s = since();
            fault.notes.push(format!(
                "{run_region} cut off from {} while its claimants rush",
                others.join(", ")
            ));
            tokio::time::sleep(Duration::from_secs(6)).await;
            faults::heal(layout).await?;
            fault.healed_s = since();
            fault.notes.push("healed after 6 s".into());
        }
        Scenario::SlowRegion => {
            let spec = format!("{run_region} | {}", others.join(","));
            faults::delay(layout, &spec, SLOW_MS, SLOW_JITTER_MS, None).await?;
            fault.at_s = since();
            fault.notes.push(format!(
                "{run_region}'s links +{SLOW_MS} ms, jitter {SLOW_JITTER_MS} ms"
            ));
            tokio::time::sleep(Duration::from_secs(6)).await;
            faults::delay(layout, &spec, 0, 0, None).await?;
            fault.healed_s = since();
            fault.notes.push("delay removed after 6 s".into());
        }
        Scenario::OwnerCrash => {
            let victim = net
                .nodes
                .iter()
                .find(|n| n.region == run_region)
                .map(|n| n.name.clone())
                .ok_or_else(|| anyhow!("no running node in {run_region}"))?;
            lifecycle::kill(layout, &victim, false)?;
            fault.at_s = since();
            fault.notes.push(format!(
                "{victim} killed (SIGKILL) mid-run; its successor takes its bucket over"
            ));
            tokio::time::sleep(Duration::from_secs(8)).await;
            lifecycle::restart(layout, &victim, lifecycle::UP_TIMEOUT).await?;
            fault.healed_s = since();
            fault.notes.push(format!("{victim} restarted after 8 s"));
        }
        Scenario::RebalanceUnderStress => {
            let from = net
                .regions
                .iter()
                .find(|r| *r != run_region)
                .cloned()
                .ok_or_else(|| anyhow!("no other region"))?;
            let l = liquidity(net, run_region, dist).await?;
            // The spare: what the region holds beyond what its own claims still need.
            let (available, spent) = l
                .regions
                .iter()
                .find(|r| r.region == from)
                .map_or((0, 0), |r| (r.available, r.spent));
            let spare = available.saturating_sub(others_need.saturating_sub(spent));
            let amount = ((spare as f64 * REBALANCE_SHARE) as u64 / AMOUNT_PER_CLAIM) * AMOUNT_PER_CLAIM;
            if amount == 0 {
                bail!("{from} has no spare escrow to move ({available} available, {spent} spent)");
            }
            let body = pb::Rebalance {
                operator: net.operator.verifying_key().to_bytes().to_vec(),
                distribution_id: hex::decode(dist).map_err(|_| anyhow!("malformed distribution id {dist}"))?,
                from_region: from.clone(),
                to_region: run_region.to_owned(),
                amount,
                nonce: rand::random(),
            };
            let (envelope, _) = seal(&net.network, &net.operator, Kind::Rebalance, body.encode_to_vec());
            let node = net.nodes.first().ok_or_else(|| anyhow!("no node"))?;
            rpc::escrow(&node.channel)
                .submit_rebalance(pb::SubmitRequest { envelope })
                .await
                .map_err(|e| anyhow!("SubmitRebalance on {}: {}", node.name, rpc::describe(&e)))?;
            fault.moved = Some(amount);
            fault.notes.push(format!(
                "the operator moved {amount} of {from}'s spare ({spare}) to {run_region} while it drained"
            ));
        }
    }
    Ok(fault)
}

/// The targets a scenario is judged on; each failure in words.
fn judge(scenario: Scenario, out: &Value) -> Vec<String> {
    let s = &out["summary"];
    let mut failures = Vec::new();
    if scenario == Scenario::BankRun {
        if s["other_regions_available_untouched_pct"].as_f64() != Some(100.0) {
            failures.push(format!(
                "the other regions kept {}% of their allocations",
                s["other_regions_available_untouched_pct"]
            ));
        }
        if s["other_regions_refused_for_escrow"].as_u64() != Some(0) {
            failures.push(format!(
                "{} claims of other regions refused for lack of escrow",
                s["other_regions_refused_for_escrow"]
            ));
        }
        let ratio = s["other_regions_p99_ratio"].as_f64().unwrap_or(f64::INFINITY);
        if !(ratio > 0.0 && ratio <= P99_RATIO_MAX) {
            failures.push(format!("the other regions' p99 was {ratio:.2}x their base"));
        }
        if s["run_region_drained"].as_bool() != Some(true) {
            failures.push("the run did not drain the run region's escrow".into());
        }
        if out["baseline"]["summary"]["other_regions_refused_for_escrow"]
            .as_u64()
            .unwrap_or(0)
            == 0
        {
            failures.push("the pooled baseline refused no other region's claim for lack of escrow".into());
        }
    }
    if scenario == Scenario::RebalanceUnderStress {
        // The run region spent beyond its own allocation: the moved escrow reached its buckets
        // while it drained, and was claimed there.
        let (spent, allocation) = (s["run_region_spent"].as_u64(), s["run_region_allocation"].as_u64());
        if s["rebalance_moved_into_run_region"].as_u64().unwrap_or(0) == 0 || spent <= allocation {
            failures.push(format!(
                "the run region spent {} of its allocation {}: nothing moved in was claimed",
                s["run_region_spent"], s["run_region_allocation"]
            ));
        }
    }
    if scenario == Scenario::RevocationRace {
        let n = |k: &str| s[k].as_u64();
        if n("revoked_credited_at_some_node") != Some(0) {
            failures.push(format!(
                "{} claims revoked before their batch credited at some node",
                s["revoked_credited_at_some_node"]
            ));
        }
        if n("revoked_certified_disputed_at_every_node") != n("revoked_certified") {
            failures.push(format!(
                "of {} certified claims revoked before their batch, {} disputed at every node",
                s["revoked_certified"], s["revoked_certified_disputed_at_every_node"]
            ));
        }
        if n("other_claims_affected") != Some(0) {
            failures.push(format!(
                "{} claims never revoked not credited at every node",
                s["other_claims_affected"]
            ));
        }
        if n("revocations_refused") != Some(0) {
            failures.push(format!("{} revocations refused", s["revocations_refused"]));
        }
        if n("revoked_certified").unwrap_or(0) == 0 {
            failures.push("no certified claim raced a revocation".into());
        }
    }
    if scenario == Scenario::ExitUnderPartition {
        for (key, max, what) in [
            (
                "regional_everywhere_ms",
                DECISION_MAX_MS,
                "every node regional after the cut",
            ),
            (
                "normal_after_heal_ms",
                CONVERGENCE_MAX_MS,
                "every node normal again after the heal",
            ),
        ] {
            match s[key].as_f64() {
                Some(ms) if ms <= max => {}
                Some(ms) => failures.push(format!("{what} took {ms:.0} ms, above {max} ms")),
                None => failures.push(format!("never {what}")),
            }
        }
    }
    if s["all_answers_carried_view_age"].as_bool() != Some(true) {
        failures.push("an answer carried no view age".into());
    }
    failures
}

fn summary_rows(out: &Value) -> Vec<(String, String, String)> {
    let target = |k: &str| match k {
        "other_regions_available_untouched_pct" => "100".to_owned(),
        "other_regions_p99_ratio" => format!("≤ {P99_RATIO_MAX} (p99 during the run ÷ base p99, same run)"),
        "other_regions_refused_for_escrow" => "0".to_owned(),
        "all_answers_carried_view_age" => "true".to_owned(),
        "revoked_credited_at_some_node" | "other_claims_affected" | "revocations_refused" => "0".to_owned(),
        "revoked_certified_disputed_at_every_node" => "= revoked certified".to_owned(),
        "race_settled" => format!("true (within {RACE_SETTLE_MAX:?})"),
        "run_region_spent" => "rebalance-under-stress: > run region allocation".to_owned(),
        "regional_everywhere_ms" => format!("≤ {DECISION_MAX_MS} (seen every {SAMPLE_EVERY:?})"),
        "normal_after_heal_ms" => format!("≤ {CONVERGENCE_MAX_MS} (seen every {SAMPLE_EVERY:?})"),
        _ => String::new(),
    };
    let mut rows: Vec<(String, String, String)> = out["summary"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.replace('_', " "), v.to_string(), target(k)))
        .collect();
    rows.extend(credence::stress::baseline_rows(&out["baseline"]["summary"]));
    rows.push(("ok".into(), out["ok"].to_string(), "true".into()));
    rows
}

/// The final lines for humans.
pub fn print_report(v: &Value) {
    outln!(
        "stress {} on {}: {}",
        v["scenario"].as_str().unwrap_or(""),
        v["run_region"].as_str().unwrap_or(""),
        if v["ok"].as_bool() == Some(true) {
            "ok"
        } else {
            "FAILED"
        }
    );
    for (k, x) in v["summary"].as_object().into_iter().flatten() {
        outln!("  {k}: {x}");
    }
    for (k, x) in v["baseline"]["summary"].as_object().into_iter().flatten() {
        outln!("  pooled baseline {k}: {x}");
    }
    for f in v["failures"].as_array().into_iter().flatten() {
        outln!("  failed: {}", f.as_str().unwrap_or(""));
    }
    if let Some(dir) = v["report"]["dir"].as_str() {
        outln!("  report: {dir}/report.md");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raced_claim_is_settled_only_when_every_node_agrees() {
        let look = |revoked, disputed, credited, refused, other| RaceLook {
            revoked,
            disputed,
            credited,
            refused,
            other,
        };
        // Revoked and certified: disputed everywhere, credited nowhere.
        assert!(look(true, 12, 0, 0, 0).settled());
        assert!(!look(true, 11, 1, 0, 0).settled());
        assert!(!look(true, 11, 0, 0, 1).settled());
        // Revoked and refused before any certificate: nowhere still pending.
        assert!(look(true, 0, 0, 12, 0).settled());
        assert!(!look(true, 0, 0, 11, 1).settled());
        // Never revoked: credited everywhere.
        assert!(look(false, 0, 12, 0, 0).settled());
        assert!(!look(false, 1, 11, 0, 0).settled());
        assert!(!look(false, 0, 11, 1, 0).settled());
    }

    #[test]
    fn refusal_reasons_lose_node_names_and_numbers() {
        assert_eq!(
            credence_reason("rejected: bucket exhausted: 0 left, claim asks 10"),
            "bucket exhausted"
        );
        assert_eq!(
            refused_for_escrow(
                &json!({"errors": {"rejected: bucket exhausted: 0 left, claim asks 10": 3, "other": 1}})
            ),
            3
        );
    }
}
