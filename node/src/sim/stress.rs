//! Stress scenarios in virtual time (`credence sim --scenario bank-run` and the others): a
//! workload (budgets, claim streams per region, revocations, an operator rebalance, a slow
//! region) and a fault script on the world of `world.rs`, the network sampled as it runs, and
//! the figures each scenario is judged on, drawn with `crate::stress`.
//!
//! Every decision stays the state machine's: the workload only chooses who claims where and
//! when, what the issuer and the operator sign, and which links are slow or cut. Claimants of
//! a region are claimants whose home bucket is in it (drawn until one is); with no escrow in
//! their region (the pooled baseline) any home will do. Revocations and the rebalance reach
//! every node at once, the revocation dated `lag_ms` before it arrives: truth that arrives late.
//!
//! All scenarios run on 3 regions of 4 validators for 14 s of load. Region 0 is the one that
//! runs, is cut off, or is slow.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::core::escrow::{ClaimRefusal, Millis};
use crate::core::quorum::Mode;
use crate::core::validator::Credentials;
use crate::stress::{
    CONVERGENCE_MAX_MS, DECISION_MAX_MS, FAULT_TO_REGIONAL, HEAL_TO_NORMAL, Measured, ModeLook, P99_RATIO_MAX,
    Percentiles, RegionPoint, Report, Sample,
};

use super::faults::{FaultEvent, Profile, Script};
use super::net::{Micros, Partition};
use super::world::{AMOUNT, Config, RunOutcome, RunRecord, World};

/// Keys drawn at most to find a claimant homed in a stream's region.
pub const HOME_ATTEMPTS_MAX: usize = 256;
/// How often the network is sampled (virtual time).
pub const SAMPLE_EVERY_US: Micros = 250_000;
/// Validators, regions; the region under stress.
pub const NODES: usize = 12;
pub const REGIONS: usize = 3;
pub const RUN_REGION: usize = 0;
/// Load runs for this long; the stress (run, cut, slowness, revocations) from `STRESS_AT_US`.
pub const DURATION_US: Micros = 14_000_000;
pub const STRESS_AT_US: Micros = 4_000_000;
/// The partition of exit-under-partition heals, and the slow region recovers, at this time.
pub const HEAL_AT_US: Micros = 11_000_000;
/// Claims per second entering at each region's nodes, and the bank run's multiple of it.
pub const BASE_RATE: f64 = 4.0;
pub const RUN_MULTIPLE: f64 = 10.0;
/// Escrow per region in claims: the bank run's budget (drained by the run, not by base load),
/// and an ample one for scenarios that must not run dry.
pub const SCARCE_CLAIMS: u64 = 150;
pub const AMPLE_CLAIMS: u64 = 2_000;
/// The slow region's extra one-way delay and jitter.
pub const SLOW_EXTRA_US: Micros = 300_000;
pub const SLOW_JITTER_US: Micros = 100_000;
/// Revocations: one every `REVOKE_EVERY_US` while the stress lasts, dated this long before
/// they reach the nodes.
pub const REVOKE_EVERY_US: Micros = 200_000;
pub const REVOKE_LAG_MS: Millis = 1_500;
/// The operator's rebalance toward the draining region: when, and how many claims' worth.
pub const REBALANCE_AT_US: Micros = 6_000_000;
pub const REBALANCE_CLAIMS: u64 = 100;
/// The cut-off region must certify at least this share of its own claims while cut off.
pub const CUT_OFF_CERTIFIED_MIN: f64 = 0.8;

/// A stress workload on the world.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Escrow per region index (base units); `None` keeps the ample default.
    pub allocations: Option<Vec<u64>>,
    /// Claim streams; empty: the default generator at `Config::rate_per_s`.
    pub streams: Vec<Stream>,
    pub revoke: Option<Revoking>,
    pub slow: Option<Slow>,
    pub rebalance: Option<Rebalancing>,
    pub sample_every_us: Micros,
}

/// New claimants of `region` at `rate_per_s` from `from_us` until `until_us`.
#[derive(Debug, Clone)]
pub struct Stream {
    pub region: usize,
    pub from_us: Micros,
    pub until_us: Micros,
    pub rate_per_s: f64,
}

/// The issuer revokes one in-flight claim's credential every `every_us`.
#[derive(Debug, Clone)]
pub struct Revoking {
    pub from_us: Micros,
    pub until_us: Micros,
    pub every_us: Micros,
    pub lag_ms: Millis,
}

/// Every link to or from `region` gets `extra_us` (plus up to `jitter_us`) meanwhile.
#[derive(Debug, Clone)]
pub struct Slow {
    pub region: usize,
    pub from_us: Micros,
    pub until_us: Micros,
    pub extra_us: Micros,
    pub jitter_us: Micros,
}

/// The operator moves `amount` from one region to another at `at_us`.
#[derive(Debug, Clone)]
pub struct Rebalancing {
    pub at_us: Micros,
    pub from_region: usize,
    pub to_region: usize,
    pub amount: u64,
}

/// The network at one moment.
#[derive(Debug, Clone, Default)]
pub struct StressSample {
    pub at_us: Micros,
    /// Per region index.
    pub regions: Vec<RegionPoint>,
    /// `[observer][observed]`: the largest view age among the observer region's nodes (ms).
    pub view_age_ms: Vec<Vec<u64>>,
    /// Nodes up, nodes that suspect someone, nodes whose quorum mode is not normal.
    pub up: usize,
    pub suspecting: usize,
    pub not_normal: usize,
}

/// How a claim ended (workload runs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimEnd {
    /// Refused for good, with the reason's name.
    pub refused: Option<String>,
    pub revoked_at: Option<Millis>,
    pub batch_timestamp: Option<Millis>,
    /// Nodes up at the end that show it disputed, credited (regional or global), or neither.
    pub disputed_at: usize,
    pub credited_at: usize,
    pub other_at: usize,
}

/// What a sample reads from the world.
pub struct SampleParts<'a> {
    pub now_us: Micros,
    pub oracle: &'a crate::core::escrow::Ledger,
    pub dist_id: &'a crate::core::escrow::Digest,
    /// Per node: region, up, state machine, credentials, its clock (ms).
    pub nodes: Vec<(
        usize,
        bool,
        &'a crate::core::validator::Validator,
        &'a crate::core::credentials::CredentialBook,
        Millis,
    )>,
    pub region_names: Vec<String>,
}

/// A refusal no retry changes: no escrow left, or the credential revoked.
pub fn final_refusal(reason: &ClaimRefusal) -> bool {
    matches!(
        reason,
        ClaimRefusal::BucketExhausted { .. } | ClaimRefusal::CredentialRevoked { .. }
    )
}

/// A refusal's text without its numbers: "bucket exhausted: 0 left, claim asks 10" → "bucket
/// exhausted".
pub fn reason_name(text: &str) -> String {
    let head = text.split(':').next().unwrap_or(text);
    head.split_whitespace()
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a reason names a lack of escrow.
fn for_escrow(reason: &str) -> bool {
    reason.contains("exhausted")
}

pub(super) fn sample(world: &World) -> StressSample {
    let parts = world.sample_parts();
    let regions = parts.region_names.len();
    let mut out = StressSample {
        at_us: parts.now_us,
        regions: vec![RegionPoint::default(); regions],
        view_age_ms: vec![vec![0; regions]; regions],
        ..StressSample::default()
    };
    if let Some((_, _, _, book, _)) = parts.nodes.first()
        && let Ok(report) = parts.oracle.liquidity_report(parts.dist_id, &Credentials(book))
    {
        for (index, name) in parts.region_names.iter().enumerate() {
            if let (Some(point), Some(totals)) = (out.regions.get_mut(index), report.regions.get(name)) {
                point.available = totals.available;
                point.spent = totals.spent;
                point.disputed = totals.disputed;
                point.stranded = totals.stranded;
            }
        }
    }
    for (region, up, machine, book, now_ms) in &parts.nodes {
        if !up {
            continue;
        }
        out.up = out.up.saturating_add(1);
        let quorum = machine.quorum_report(*now_ms);
        if !quorum.suspected.is_empty() {
            out.suspecting = out.suspecting.saturating_add(1);
        }
        if quorum.mode != Mode::Normal {
            out.not_normal = out.not_normal.saturating_add(1);
        }
        for (observed, name) in parts.region_names.iter().enumerate() {
            let age = machine.view_age_ms(name, *now_ms);
            if let Some(cell) = out.view_age_ms.get_mut(*region).and_then(|row| row.get_mut(observed)) {
                *cell = (*cell).max(age);
            }
        }
        // Pending: the provisional outflow the region's own owners sequenced.
        if let (Ok(report), Some(name)) = (
            machine.ledger().liquidity_report(parts.dist_id, &Credentials(book)),
            parts.region_names.get(*region),
        ) && let (Some(totals), Some(point)) = (report.regions.get(name), out.regions.get_mut(*region))
        {
            point.pending = point.pending.max(totals.pending);
        }
    }
    out
}

/// The six stress scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // the scenario is called rebalance-under-stress
pub enum Stress {
    BankRun,
    ExitUnderPartition,
    RevocationRace,
    SlowRegion,
    OwnerCrash,
    RebalanceUnderStress,
}

fn base_streams(rate: f64) -> Vec<Stream> {
    (0..REGIONS)
        .map(|region| Stream {
            region,
            from_us: 0,
            until_us: DURATION_US,
            rate_per_s: rate,
        })
        .collect()
}

fn run_stream() -> Stream {
    Stream {
        region: RUN_REGION,
        from_us: STRESS_AT_US,
        until_us: DURATION_US,
        rate_per_s: BASE_RATE * RUN_MULTIPLE,
    }
}

fn workload(allocations: Vec<u64>, streams: Vec<Stream>) -> Workload {
    Workload {
        allocations: Some(allocations),
        streams,
        revoke: None,
        slow: None,
        rebalance: None,
        sample_every_us: SAMPLE_EVERY_US,
    }
}

/// The fragmented budget of the bank run, and its pooled baseline (all in the run region).
pub fn scarce(pooled: bool) -> Vec<u64> {
    let per = SCARCE_CLAIMS * AMOUNT;
    (0..REGIONS)
        .map(|r| match (pooled, r == RUN_REGION) {
            (false, _) => per,
            (true, true) => per * REGIONS as u64,
            (true, false) => 0,
        })
        .collect()
}

impl Stress {
    /// The workload and faults; `pooled` puts the whole budget in the run region's escrow.
    pub fn config(self, seed: u64, tail_us: Micros, pooled: bool) -> Config {
        let ample = vec![AMPLE_CLAIMS * AMOUNT; REGIONS];
        let with_run = || {
            let mut streams = base_streams(BASE_RATE);
            streams.push(run_stream());
            streams
        };
        let regions: Vec<usize> = (0..NODES).map(|node| node % REGIONS).collect();
        let mut events = Vec::new();
        let load = match self {
            Stress::BankRun => workload(scarce(pooled), with_run()),
            Stress::ExitUnderPartition => {
                let cut: Vec<usize> = (0..NODES).filter(|n| regions.get(*n) == Some(&RUN_REGION)).collect();
                let rest: Vec<usize> = (0..NODES).filter(|n| regions.get(*n) != Some(&RUN_REGION)).collect();
                events.push((
                    STRESS_AT_US,
                    FaultEvent::Partition(Partition::split(NODES, &cut, &rest)),
                ));
                events.push((HEAL_AT_US, FaultEvent::HealPartition));
                workload(ample, with_run())
            }
            Stress::RevocationRace => Workload {
                revoke: Some(Revoking {
                    from_us: STRESS_AT_US,
                    until_us: HEAL_AT_US,
                    every_us: REVOKE_EVERY_US,
                    lag_ms: REVOKE_LAG_MS,
                }),
                ..workload(ample, base_streams(BASE_RATE * 2.0))
            },
            Stress::SlowRegion => Workload {
                slow: Some(Slow {
                    region: RUN_REGION,
                    from_us: STRESS_AT_US,
                    until_us: HEAL_AT_US,
                    extra_us: SLOW_EXTRA_US,
                    jitter_us: SLOW_JITTER_US,
                }),
                ..workload(ample, base_streams(BASE_RATE * 2.0))
            },
            Stress::OwnerCrash => {
                events.push((
                    STRESS_AT_US,
                    FaultEvent::FailAfterNextBatch(super::scenario::FAILED_OWNER),
                ));
                workload(ample, base_streams(BASE_RATE * 2.0))
            }
            Stress::RebalanceUnderStress => Workload {
                rebalance: Some(Rebalancing {
                    at_us: REBALANCE_AT_US,
                    from_region: (RUN_REGION + 1) % REGIONS,
                    to_region: RUN_REGION,
                    amount: REBALANCE_CLAIMS * AMOUNT,
                }),
                ..workload(scarce(false), with_run())
            },
        };
        Config {
            signatures: super::Signatures::Ed25519,
            seed,
            nodes: NODES,
            regions: REGIONS,
            duration_us: DURATION_US,
            tail_us,
            profile: Profile::None,
            rate_per_s: BASE_RATE,
            monotonic_clock: true,
            durable_ledger: true,
            heartbeats: true,
            takeover: true,
            script: Some(Script {
                name: self.name(),
                events,
            }),
            workload: Some(load),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Stress::BankRun => "bank-run",
            Stress::ExitUnderPartition => "exit-under-partition",
            Stress::RevocationRace => "revocation-race",
            Stress::SlowRegion => "slow-region",
            Stress::OwnerCrash => "owner-crash",
            Stress::RebalanceUnderStress => "rebalance-under-stress",
        }
    }
}

/// Questions about one workload run.
struct Run<'a> {
    r: &'a RunRecord,
}

impl Run<'_> {
    fn region_of_bucket(&self, bucket: usize) -> Option<usize> {
        self.r.regions.get(bucket).copied()
    }

    fn latency_ms(&self, claim: &super::world::ClaimTrace) -> Option<f64> {
        let cert = self.r.certificates.get(claim.certificate?)?;
        Some(cert.formed_us.saturating_sub(claim.created_us) as f64 / 1e3)
    }

    /// Latencies of the claims entering at `region` (or, `others`, at any other region),
    /// created in `[from, until)`.
    fn latencies(&self, region: usize, others: bool, from: Micros, until: Micros) -> Vec<f64> {
        self.r
            .claims
            .iter()
            .filter(|c| (c.region == region) != others)
            .filter(|c| (from..until).contains(&c.created_us))
            .filter_map(|c| self.latency_ms(c))
            .collect()
    }

    fn last(&self) -> Option<&StressSample> {
        self.r.samples.last()
    }

    /// Claims of other regions than `region` refused for lack of escrow.
    fn others_refused_for_escrow(&self, region: usize) -> usize {
        self.r
            .claims
            .iter()
            .filter(|c| c.region != region)
            .filter(|c| c.end.refused.as_deref().is_some_and(for_escrow))
            .count()
    }

    /// Of the other regions' allocations, the share still spent, available or stranded there.
    fn others_untouched_pct(&self, region: usize) -> f64 {
        let Some(last) = self.last() else { return 0.0 };
        let (mut kept, mut allocated) = (0u64, 0u64);
        for (index, point) in last.regions.iter().enumerate().filter(|(i, _)| *i != region) {
            kept = kept.saturating_add(point.spent + point.available + point.stranded);
            allocated = allocated.saturating_add(self.r.allocations.get(index).copied().unwrap_or(0));
        }
        if kept == allocated {
            100.0
        } else {
            100.0 * kept as f64 / allocated.max(1) as f64
        }
    }

    fn bank_run(&self) -> Value {
        let base = Percentiles::of(&self.latencies(RUN_REGION, true, 0, STRESS_AT_US));
        let during = Percentiles::of(&self.latencies(RUN_REGION, true, STRESS_AT_US, DURATION_US));
        let ratio = if base.p99_ms > 0.0 {
            during.p99_ms / base.p99_ms
        } else {
            0.0
        };
        let run_available = self
            .last()
            .and_then(|s| s.regions.get(RUN_REGION))
            .map_or(0, |p| p.available);
        let buckets = (NODES / REGIONS) as u64;
        json!({
            "run_region": self.r.region_names.get(RUN_REGION),
            "other_regions_available_untouched_pct": self.others_untouched_pct(RUN_REGION),
            "other_regions_p99_ratio": ratio,
            "other_regions_base_p99_ms": base.p99_ms,
            "other_regions_run_p99_ms": during.p99_ms,
            "other_regions_refused_for_escrow": self.others_refused_for_escrow(RUN_REGION),
            "run_region_available_end": run_available,
            "run_region_drained": run_available < AMOUNT * buckets,
            "run_region_refused_for_escrow": self.r.claims.iter().filter(|c| c.region == RUN_REGION && c.end.refused.as_deref().is_some_and(for_escrow)).count(),
        })
    }

    fn revocation_race(&self) -> Value {
        let before = |c: &&super::world::ClaimTrace| matches!((c.end.revoked_at, c.end.batch_timestamp), (Some(r), Some(t)) if r <= t);
        let raced: Vec<&super::world::ClaimTrace> = self.r.claims.iter().filter(before).collect();
        let disputed = raced
            .iter()
            .filter(|c| c.end.disputed_at > 0 && c.end.credited_at == 0 && c.end.other_at == 0)
            .count();
        let credited = raced.iter().filter(|c| c.end.credited_at > 0).count();
        let affected = self
            .r
            .claims
            .iter()
            .filter(|c| c.end.revoked_at.is_none())
            .filter(|c| c.certificate.is_none() || c.end.disputed_at > 0 || c.end.other_at > 0)
            .count();
        let revoked = self.r.claims.iter().filter(|c| c.end.revoked_at.is_some()).count();
        let after = self
            .r
            .claims
            .iter()
            .filter(|c| matches!((c.end.revoked_at, c.end.batch_timestamp), (Some(r), Some(t)) if r > t))
            .count();
        let refused = self
            .r
            .claims
            .iter()
            .filter(|c| c.end.revoked_at.is_some() && c.certificate.is_none())
            .count();
        json!({
            "revoked": revoked,
            "revoked_before_batch": raced.len(),
            "disputed": disputed,
            "credited_disputed": credited,
            "revoked_after_batch_credited": after,
            "revoked_before_admission_refused": refused,
            "other_claims_affected": affected,
        })
    }

    /// Decision latency from the samples (`crate::stress::decision`).
    fn decision(&self, fault_us: Micros, heal_us: Micros) -> Vec<(String, f64)> {
        let looks: Vec<ModeLook> = self
            .r
            .samples
            .iter()
            .map(|s| ModeLook {
                t_s: s.at_us as f64 / 1e6,
                up: s.up,
                suspecting: s.suspecting,
                not_normal: s.not_normal,
            })
            .collect();
        crate::stress::decision(&looks, fault_us as f64 / 1e6, Some(heal_us as f64 / 1e6))
    }

    fn exit_under_partition(&self) -> Value {
        let cut = |c: &&super::world::ClaimTrace| {
            c.home.and_then(|h| self.region_of_bucket(h)) == Some(RUN_REGION)
                && (STRESS_AT_US..HEAL_AT_US).contains(&c.created_us)
        };
        let offered = self.r.claims.iter().filter(cut).count();
        let certified = self
            .r
            .claims
            .iter()
            .filter(cut)
            .filter(|c| {
                c.certificate
                    .and_then(|i| self.r.certificates.get(i))
                    .is_some_and(|cert| cert.formed_us < HEAL_AT_US)
            })
            .count();
        let decision: BTreeMap<String, f64> = self.decision(STRESS_AT_US, HEAL_AT_US).into_iter().collect();
        // Convergence after the heal: every certificate formed before it is global (stored by
        // a quorum of every region) and every node is back in normal mode. `None` while a
        // certificate never got there or a node never went back.
        let global_after_heal = self
            .r
            .certificates
            .iter()
            .filter(|cert| cert.formed_us < HEAL_AT_US)
            .map(|cert| cert.global_us.map(|g| g.saturating_sub(HEAL_AT_US) as f64 / 1e3))
            .try_fold(0.0f64, |worst, ms| ms.map(|ms| worst.max(ms)));
        let normal_after_heal = decision.get(HEAL_TO_NORMAL).copied();
        let converged = global_after_heal.zip(normal_after_heal).map(|(g, n)| g.max(n));
        json!({
            "cut_off_region": self.r.region_names.get(RUN_REGION),
            "regional_everywhere_ms": decision.get(FAULT_TO_REGIONAL),
            "global_after_heal_ms": global_after_heal,
            "converged_after_heal_ms": converged,
            "cut_off_offered": offered,
            "cut_off_certified_while_cut": certified,
            "cut_off_certified_share": certified as f64 / offered.max(1) as f64,
            "decision_latency_ms": decision,
        })
    }

    fn slow_region(&self) -> Value {
        let p99 = |region, others, from, until| Percentiles::of(&self.latencies(region, others, from, until)).p99_ms;
        json!({
            "slow_region": self.r.region_names.get(RUN_REGION),
            "slow_region_base_p99_ms": p99(RUN_REGION, false, 0, STRESS_AT_US),
            "slow_region_slow_p99_ms": p99(RUN_REGION, false, STRESS_AT_US, HEAL_AT_US),
            "other_regions_base_p99_ms": p99(RUN_REGION, true, 0, STRESS_AT_US),
            "other_regions_slow_p99_ms": p99(RUN_REGION, true, STRESS_AT_US, HEAL_AT_US),
        })
    }

    fn rebalance(&self) -> Value {
        let kept = |s: &StressSample| {
            s.regions
                .get(RUN_REGION)
                .map_or(0, |p| p.spent + p.available + p.stranded)
        };
        let allocated = self.r.allocations.get(RUN_REGION).copied().unwrap_or(0);
        let moved = self.last().map_or(0, |s| kept(s).saturating_sub(allocated));
        let first = self
            .r
            .samples
            .iter()
            .find(|s| kept(s) > allocated)
            .map(|s| s.at_us.saturating_sub(REBALANCE_AT_US) as f64 / 1e3);
        json!({
            "rebalance_asked": REBALANCE_CLAIMS * AMOUNT,
            "rebalance_moved_into_run_region": moved,
            "rebalance_first_arrival_ms": first,
            "run_region_refused_for_escrow": self.r.claims.iter().filter(|c| c.region == RUN_REGION && c.end.refused.as_deref().is_some_and(for_escrow)).count(),
            "other_regions_refused_for_escrow": self.others_refused_for_escrow(RUN_REGION),
        })
    }
}

/// The scenario's figures (its `summary`).
pub fn figures(stress: Stress, outcome: &RunOutcome) -> Value {
    let run = Run { r: &outcome.record };
    match stress {
        Stress::BankRun => run.bank_run(),
        Stress::RevocationRace => run.revocation_race(),
        Stress::ExitUnderPartition => run.exit_under_partition(),
        Stress::SlowRegion => run.slow_region(),
        Stress::OwnerCrash => {
            let decision: BTreeMap<String, f64> = run.decision(STRESS_AT_US, DURATION_US).into_iter().collect();
            json!({
                "failed_owner": super::scenario::FAILED_OWNER,
                "takeovers_proposed": outcome.summary.counters.get("takeover: proposed").copied().unwrap_or(0),
                "decision_latency_ms": decision,
                "regional_p99_ms": outcome.summary.regional_p99_ms,
            })
        }
        Stress::RebalanceUnderStress => run.rebalance(),
    }
}

fn number(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// Checks a scenario's targets on its figures (and the baseline's, for the bank run).
pub fn check(stress: Stress, figures: &Value, baseline: Option<&Value>) -> Result<Vec<String>, String> {
    let mut shown = Vec::new();
    match stress {
        Stress::BankRun => {
            let untouched = number(figures, "other_regions_available_untouched_pct");
            if untouched != 100.0 {
                return Err(format!(
                    "the other regions kept {untouched}% of their allocations, not 100%"
                ));
            }
            let refused = number(figures, "other_regions_refused_for_escrow");
            if refused != 0.0 {
                return Err(format!(
                    "{refused} claims of other regions were refused for lack of escrow"
                ));
            }
            let ratio = number(figures, "other_regions_p99_ratio");
            if !(ratio > 0.0 && ratio <= P99_RATIO_MAX) {
                return Err(format!(
                    "the other regions' p99 was {ratio:.2}x their base, above {P99_RATIO_MAX}x"
                ));
            }
            if figures.get("run_region_drained") != Some(&Value::Bool(true)) {
                return Err("the run did not drain the run region's escrow".into());
            }
            let pooled = baseline.map_or(0.0, |b| number(b, "other_regions_refused_for_escrow"));
            if pooled <= 0.0 {
                return Err("in the pooled baseline no other region's claim was refused once the pool was gone".into());
            }
            shown.push(format!(
                "the other regions kept 100% of their escrow, none of their claims refused for escrow, p99 {ratio:.2}x base; pooled, {pooled} of their claims were refused"
            ));
        }
        Stress::RevocationRace => {
            let raced = number(figures, "revoked_before_batch");
            let disputed = number(figures, "disputed");
            let credited = number(figures, "credited_disputed");
            let affected = number(figures, "other_claims_affected");
            if raced <= 0.0 {
                return Err("no certified claim raced a revocation".into());
            }
            if disputed != raced || credited != 0.0 || affected != 0.0 {
                return Err(format!(
                    "{disputed} of {raced} claims revoked before their batch ended disputed everywhere, {credited} credited, {affected} other claims affected"
                ));
            }
            shown.push(format!(
                "all {raced} claims revoked before their batch ended disputed at every node, none credited, no other claim affected"
            ));
        }
        Stress::ExitUnderPartition => {
            let share = number(figures, "cut_off_certified_share");
            if share.is_nan() || share < CUT_OFF_CERTIFIED_MIN {
                return Err(format!(
                    "the cut-off region certified {:.0}% of its own claims while cut off, under {:.0}%",
                    share * 100.0,
                    CUT_OFF_CERTIFIED_MIN * 100.0
                ));
            }
            // Every node regional: the slowest node's decision, so at least its p99.
            let decided = number(figures, "regional_everywhere_ms");
            if decided.is_nan() || decided > DECISION_MAX_MS {
                return Err(format!(
                    "not every node was regional within {DECISION_MAX_MS} ms of the cut (took {decided} ms)"
                ));
            }
            let converged = number(figures, "converged_after_heal_ms");
            if converged.is_nan() || converged > CONVERGENCE_MAX_MS {
                return Err(format!(
                    "not converged within {CONVERGENCE_MAX_MS} ms of the heal (took {converged} ms): a certificate \
                     not yet global or a node not back to normal"
                ));
            }
            shown.push(format!(
                "the cut-off region certified {:.0}% of its own claims while cut off; every node regional {decided} ms \
                 after the cut, converged {converged} ms after the heal",
                share * 100.0
            ));
        }
        Stress::SlowRegion => {
            let (base, slow) = (
                number(figures, "other_regions_base_p99_ms"),
                number(figures, "other_regions_slow_p99_ms"),
            );
            if slow.is_nan() || slow <= 0.0 || slow > P99_RATIO_MAX * base {
                return Err(format!(
                    "the other regions' p99 went from {base} ms to {slow} ms while one region was slow, above \
                     {P99_RATIO_MAX}x"
                ));
            }
            shown.push(format!(
                "the other regions' p99 {slow} ms while one region was slow, {base} ms before"
            ));
        }
        Stress::RebalanceUnderStress => {
            let moved = number(figures, "rebalance_moved_into_run_region");
            let asked = number(figures, "rebalance_asked");
            if !(moved > 0.0 && moved <= asked) {
                return Err(format!(
                    "the rebalance moved {moved} of {asked} into the draining region"
                ));
            }
            shown.push(format!(
                "the rebalance moved {moved} of {asked} into the draining region"
            ));
        }
        // Judged by `Scenario::check` on the record: the successor certified the batch left in
        // flight, froze the bucket and took its claims.
        Stress::OwnerCrash => {}
    }
    Ok(shown)
}

/// The measurements of one run, for the report.
pub fn measured(label: &str, outcome: &RunOutcome) -> Measured {
    let r = &outcome.record;
    let run = Run { r };
    let name = |i: usize| r.region_names.get(i).cloned().unwrap_or_else(|| i.to_string());
    let samples = r
        .samples
        .iter()
        .map(|s| Sample {
            t_s: s.at_us as f64 / 1e6,
            regions: s.regions.iter().enumerate().map(|(i, p)| (name(i), *p)).collect(),
        })
        .collect();
    let mut per_s: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
    let mut refused = BTreeMap::new();
    for c in &r.claims {
        let (second, status) = match (c.certificate.and_then(|i| r.certificates.get(i)), &c.end.refused) {
            (Some(cert), _) if c.end.disputed_at > 0 => (cert.formed_us / 1_000_000, "disputed".to_owned()),
            (Some(cert), _) => (cert.formed_us / 1_000_000, "certified".to_owned()),
            (None, Some(reason)) => {
                *refused.entry(reason.clone()).or_insert(0u64) += 1;
                (c.created_us / 1_000_000, "refused".to_owned())
            }
            (None, None) => (c.created_us / 1_000_000, "unsettled".to_owned()),
        };
        *per_s.entry(second).or_default().entry(status).or_default() += 1;
    }
    let mut latency = BTreeMap::new();
    for region in 0..r.region_names.len() {
        for (phase, from, until) in [("base", 0, STRESS_AT_US), ("stress", STRESS_AT_US, DURATION_US)] {
            let values = run.latencies(region, false, from, until);
            if !values.is_empty() {
                latency.insert(format!("{} {phase}", name(region)), Percentiles::of(&values));
            }
        }
    }
    let mut view_age = BTreeMap::new();
    for observer in 0..r.region_names.len() {
        for observed in (0..r.region_names.len()).filter(|o| *o != observer) {
            let series = r
                .samples
                .iter()
                .filter_map(|s| {
                    let age = *s.view_age_ms.get(observer)?.get(observed)?;
                    // A region never heard from has no age yet.
                    (age < u64::MAX / 2).then_some((s.at_us as f64 / 1e6, age as f64))
                })
                .collect();
            view_age.insert(format!("{} → {}", name(observer), name(observed)), series);
        }
    }
    Measured {
        label: label.to_owned(),
        amount_per_claim: AMOUNT,
        samples,
        claims_per_s: per_s.into_iter().map(|(s, counts)| (s as f64, counts)).collect(),
        latency,
        refused,
        view_age,
        decision: run.decision(STRESS_AT_US, HEAL_AT_US),
    }
}

/// The report of a scenario run (and its baseline).
pub fn report(
    stress: Stress,
    outcome: &RunOutcome,
    figures: &Value,
    baseline: Option<(&RunOutcome, &Value)>,
) -> Report {
    let mut summary: Vec<(String, String, String)> = Vec::new();
    let target = |key: &str| match key {
        "other_regions_available_untouched_pct" => "100".to_owned(),
        "other_regions_p99_ratio" => format!("≤ {P99_RATIO_MAX} (p99 during the run ÷ base p99)"),
        "other_regions_refused_for_escrow" => "0".to_owned(),
        "disputed" => "= revoked_before_batch".to_owned(),
        "credited_disputed" | "other_claims_affected" => "0".to_owned(),
        "cut_off_certified_share" => format!("≥ {CUT_OFF_CERTIFIED_MIN}"),
        "regional_everywhere_ms" => format!("≤ {DECISION_MAX_MS} (the slowest node, so ≥ its p99)"),
        "converged_after_heal_ms" => format!("≤ {CONVERGENCE_MAX_MS}"),
        "other_regions_slow_p99_ms" => format!("≤ {P99_RATIO_MAX} × other regions base p99 ms"),
        _ => String::new(),
    };
    for (key, value) in figures.as_object().into_iter().flatten() {
        summary.push((key.replace('_', " "), value.to_string(), target(key)));
    }
    if let Some((_, b)) = baseline {
        summary.extend(crate::stress::baseline_rows(b));
    }
    summary.push((
        "largest view age (ms)".into(),
        format!("{:.0}", measured("", outcome).max_view_age_ms()),
        String::new(),
    ));
    summary.push((
        "converged after load stopped (ms)".into(),
        outcome
            .summary
            .converged_after_faults_ms
            .map_or("no".into(), |ms| ms.to_string()),
        String::new(),
    ));
    Report {
        scenario: stress.name().to_owned(),
        source: format!(
            "simulator, virtual time, seed {}: {NODES} validators in {REGIONS} regions, {} claims/s entering each region (p99 is of latency to regional)",
            outcome.seed, BASE_RATE
        ),
        run_region: outcome.record.region_names.get(RUN_REGION).cloned().unwrap_or_default(),
        summary,
        notes: vec![
            format!(
                "load {} s; the stress from {} s{}",
                DURATION_US / 1_000_000,
                STRESS_AT_US / 1_000_000,
                match stress {
                    Stress::BankRun | Stress::RebalanceUnderStress =>
                        format!(": claimants of the run region arrive at {RUN_MULTIPLE}x the base rate"),
                    Stress::ExitUnderPartition => format!(
                        ", cut off until {} s while its claimants rush at {RUN_MULTIPLE}x",
                        HEAL_AT_US / 1_000_000
                    ),
                    Stress::RevocationRace => format!(
                        " to {} s: a credential in flight revoked every {} ms, dated {REVOKE_LAG_MS} ms before it arrives",
                        HEAL_AT_US / 1_000_000,
                        REVOKE_EVERY_US / 1_000
                    ),
                    Stress::SlowRegion => format!(
                        " to {} s: the region's links +{} ms, jitter up to {} ms",
                        HEAL_AT_US / 1_000_000,
                        SLOW_EXTRA_US / 1_000,
                        SLOW_JITTER_US / 1_000
                    ),
                    Stress::OwnerCrash => format!(
                        ": node {} fails for good after its next batch",
                        super::scenario::FAILED_OWNER
                    ),
                }
            ),
            "the simulator's RPC answers are not modelled: view ages are the state machines' own, sampled".into(),
        ],
        main: measured("fragmented (escrow per region)", outcome),
        baseline: baseline.map(|(b, _)| measured("pooled baseline (all escrow in the run region)", b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_drop_numbers() {
        assert_eq!(
            reason_name("bucket exhausted: 0 left, claim asks 10"),
            "bucket exhausted"
        );
        assert_eq!(
            reason_name("credential was revoked at 1700000000"),
            "credential was revoked at"
        );
    }

    fn run(stress: Stress, pooled: bool) -> RunOutcome {
        let outcome = super::super::run_one(stress.config(1, 30_000_000, pooled));
        assert_eq!(outcome.failure, None, "{} (pooled {pooled})", stress.name());
        outcome
    }

    fn judged(stress: Stress) -> Value {
        let outcome = run(stress, false);
        let figures = figures(stress, &outcome);
        if let Err(e) = check(stress, &figures, None) {
            panic!("{}: {e}: {figures}", stress.name());
        }
        figures
    }

    #[test]
    fn a_bank_run_leaves_the_other_regions_whole_and_the_pooled_baseline_refuses_them() {
        let main = run(Stress::BankRun, false);
        let pooled = run(Stress::BankRun, true);
        let (f, b) = (figures(Stress::BankRun, &main), figures(Stress::BankRun, &pooled));
        // No claim of another region refused for lack of escrow during the run, none of their
        // escrow moved; the run region drained.
        assert_eq!(f["other_regions_refused_for_escrow"], 0, "{f}");
        assert_eq!(f["other_regions_available_untouched_pct"], 100.0, "{f}");
        assert_eq!(f["run_region_drained"], true, "{f}");
        assert!(f["run_region_refused_for_escrow"].as_u64() > Some(0), "{f}");
        // Pooled, the run takes what the others would have been paid.
        assert!(b["other_regions_refused_for_escrow"].as_u64() > Some(0), "{b}");
        assert_eq!(check(Stress::BankRun, &f, Some(&b)).map(|_| ()), Ok(()));
    }

    #[test]
    fn every_claim_revoked_before_its_batch_ends_disputed_at_every_node() {
        let f = judged(Stress::RevocationRace);
        assert!(f["revoked_before_batch"].as_u64() > Some(0), "{f}");
        assert_eq!(f["disputed"], f["revoked_before_batch"], "{f}");
        assert_eq!(f["credited_disputed"], 0, "{f}");
        assert_eq!(f["other_claims_affected"], 0, "{f}");
    }

    #[test]
    fn a_cut_off_region_keeps_certifying_its_own_claims_and_everyone_decides() {
        let f = judged(Stress::ExitUnderPartition);
        let decision = f["decision_latency_ms"].as_object().map_or(0, |d| d.len());
        assert_eq!(decision, 3, "suspect, regional everywhere, normal after the heal: {f}");
        // Everything certified while cut off is global after the heal, every node normal.
        assert!(f["global_after_heal_ms"].is_number(), "{f}");
        assert!(f["converged_after_heal_ms"].as_f64() <= Some(CONVERGENCE_MAX_MS), "{f}");
        // A node that never goes regional, or a certificate that never reaches global, fails it.
        for (key, value) in [
            ("regional_everywhere_ms", DECISION_MAX_MS + 1.0),
            ("converged_after_heal_ms", f64::NAN),
        ] {
            let mut worse = f.clone();
            worse[key] = json!(value);
            assert!(
                check(Stress::ExitUnderPartition, &worse, None).is_err(),
                "{key}: {worse}"
            );
        }
    }

    #[test]
    fn a_slow_region_slows_only_itself() {
        let f = judged(Stress::SlowRegion);
        let n = |k: &str| f[k].as_f64().unwrap_or(f64::NAN);
        assert!(
            n("slow_region_slow_p99_ms") > n("slow_region_base_p99_ms") + SLOW_EXTRA_US as f64 / 1e3,
            "{f}"
        );
        assert!(
            n("other_regions_slow_p99_ms") <= P99_RATIO_MAX * n("other_regions_base_p99_ms"),
            "{f}"
        );
    }

    #[test]
    fn an_owner_crash_is_taken_over_and_a_rebalance_reaches_the_draining_region() {
        let crash = figures(Stress::OwnerCrash, &run(Stress::OwnerCrash, false));
        assert!(crash["takeovers_proposed"].as_u64() > Some(0), "{crash}");
        let moved = judged(Stress::RebalanceUnderStress);
        assert!(moved["rebalance_first_arrival_ms"].is_number(), "{moved}");
    }

    #[test]
    fn the_pooled_budget_sits_in_the_run_region() {
        let pooled = scarce(true);
        assert_eq!(pooled.iter().sum::<u64>(), scarce(false).iter().sum::<u64>());
        assert_eq!(pooled.iter().filter(|a| **a > 0).count(), 1);
    }
}
