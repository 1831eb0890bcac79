//! Deterministic simulator: many instances of the real escrow core over a virtual network and a
//! virtual clock, with seeded faults and invariants checked after every step. Driven by
//! `credence sim`.
//!
//! Files: `net` (seeded randomness, event queue, links, partitions, the cloud latency matrix),
//! `faults` (profiles, their schedules and fixed scripts), `world` (the nodes and their shell),
//! `invariants` (the safety checks, pure), `scenario` (named scripts and what each must show),
//! `report` (summaries). A run is a pure function of its flags: the same seed gives the same
//! trace hash, and a failure prints the command that replays it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

mod faults;
mod invariants;
mod net;
mod report;
mod scenario;
mod signatures;
mod stress;
mod world;

#[cfg(test)]
mod tests;

pub use self::faults::Profile;
pub use self::invariants::{Registry, Violation, check_liquidity};
pub use self::report::Summary;
pub use self::scenario::Scenario;
pub use self::signatures::Signatures;
pub use self::world::{
    CertRecord, ClaimTrace, Config, FailureRecord, RunOutcome, RunRecord, Snapshot, World, takeover_after_ms,
};

/// Arguments of `credence sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Seed of the run (ignored with --seeds).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Sweep an inclusive range of seeds, `A..B` (e.g. `1..20` runs 20 seeds); exits non-zero if
    /// any seed fails, listing each failing seed with its replay command.
    #[arg(long, value_parser = parse_seeds)]
    pub seeds: Option<SeedRange>,
    /// Validators, split round-robin over the regions.
    #[arg(long, default_value_t = 12)]
    pub nodes: usize,
    /// Regions (named after AWS regions; inter-region delays follow their published round trips).
    #[arg(long, default_value_t = 3)]
    pub regions: usize,
    /// Virtual time of workload and faults, e.g. `30s`, `500ms`, `2m`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: VirtualDuration,
    /// Fault-free tail after the faults stop: the run fails unless every valid claim is certified
    /// and every node holds the same certified state by its end.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub tail: VirtualDuration,
    /// Fault profile.
    #[arg(long, value_enum, default_value_t = Profile::None)]
    pub faults: Profile,
    /// A scripted scenario on 3 regions of 4 validators (14 s of load), checked for what it must
    /// show on top of the invariants and liveness. Sets the topology, duration and faults;
    /// --seed, --seeds, --rate and --tail apply.
    #[arg(long, value_enum, conflicts_with_all = ["nodes", "regions", "duration", "faults", "scale_projection", "raw_clock", "volatile_ledger", "takeover"])]
    pub scenario: Option<Scenario>,
    /// Client claims per second of virtual time, across the network.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Machine-readable output: `seeds_run`, `failures`, and for a single seed `trace_hash`;
    /// for a stress scenario (bank-run, exit-under-partition, revocation-race, slow-region,
    /// owner-crash, rebalance-under-stress) its figures under `summary` and, for bank-run, the
    /// pooled baseline's under `baseline.summary`.
    #[arg(long)]
    pub json: bool,
    /// With a stress scenario: write DIR/report.md (summary table on top) and its PNG plots.
    #[arg(long, value_name = "DIR", requires = "scenario")]
    pub report: Option<std::path::PathBuf>,
    /// Scale projection: 10, 100 and 1,000 validators in 10 regions over the AWS latency matrix,
    /// no faults (override the sizes with --projection-sizes, the load with --rate).
    #[arg(long)]
    pub scale_projection: bool,
    /// Validator counts for --scale-projection, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub projection_sizes: Vec<usize>,
    /// Feed the cores the raw wall clock, which may step back (clock jumps), instead of a
    /// monotonic one: reproduces an owner stall (see the report of `--faults clock`).
    #[arg(long)]
    pub raw_clock: bool,
    /// Restarted nodes lose the certificates they stored (only locks and the owner's last batch
    /// survive): reproduces a chain stall (see the report of `--faults crashes`).
    #[arg(long)]
    pub volatile_ledger: bool,
    /// Successors freeze the buckets of owners suspected for 5 s (DESIGN.md's takeover) under the
    /// random profiles too (scenarios always do). Reproduces a bucket stall: a successor that
    /// never saw the owner's last batch freezes its position, voters' locks split between the
    /// two, and neither reaches a quorum (e.g. `--faults all --duration 10s --seed 3 --takeover`).
    #[arg(long)]
    pub takeover: bool,
    /// Signatures: `ed25519` (what the node signs and checks) or `stand-in`, a keyed hash
    /// recorded in a registry shared by the run: the same verdicts (only a key's holder can
    /// sign under it), without curve arithmetic, for large runs such as the scale projection.
    #[arg(long, default_value = "ed25519", value_parser = Signatures::parse)]
    pub signatures: Signatures,
    /// Worker threads for sweeps (default: the machine's parallelism).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// An inclusive range of seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedRange {
    pub first: u64,
    pub last: u64,
}

/// A span of virtual time, in microseconds, with the text the user gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualDuration {
    pub micros: u64,
    pub text: String,
}

/// Longest run accepted: a typo such as `30000m` should not start a day-long simulation.
const MAX_DURATION_US: u64 = 3_600 * 1_000_000;
const MAX_NODES: usize = 5_000;
const MAX_SEEDS: u64 = 100_000;

fn parse_seeds(text: &str) -> Result<SeedRange, String> {
    let (a, b) = text
        .split_once("..=")
        .or_else(|| text.split_once(".."))
        .ok_or_else(|| format!("seed range {text:?} must look like A..B, e.g. 1..20"))?;
    let parse = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("{s:?} in seed range {text:?} is not a non-negative integer"))
    };
    let (first, last) = (parse(a)?, parse(b)?);
    if last < first {
        return Err(format!(
            "seed range {text:?} is empty: the end must be at least the start"
        ));
    }
    if last - first >= MAX_SEEDS {
        return Err(format!(
            "seed range {text:?} has more than {MAX_SEEDS} seeds: split the sweep"
        ));
    }
    Ok(SeedRange { first, last })
}

fn parse_duration(text: &str) -> Result<VirtualDuration, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} must be a number with a unit, e.g. 30s, 500ms or 2m"))?;
    let scale = match unit.trim() {
        "us" => 1.0,
        "ms" => 1e3,
        "s" | "" => 1e6,
        "m" | "min" => 60e6,
        other => {
            return Err(format!(
                "unknown unit {other:?} in duration {text:?}: use us, ms, s or m"
            ));
        }
    };
    let micros = value * scale;
    if !micros.is_finite() || micros < 1_000.0 {
        return Err(format!("duration {text:?} must be at least 1ms"));
    }
    if micros > MAX_DURATION_US as f64 {
        return Err(format!("duration {text:?} is longer than the 1 hour limit"));
    }
    Ok(VirtualDuration {
        micros: micros as u64,
        text: trimmed.to_owned(),
    })
}

impl SimArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if self.nodes == 0 || self.nodes > MAX_NODES {
            bail!("--nodes must be between 1 and {MAX_NODES} (got {})", self.nodes);
        }
        if self.regions == 0 || self.regions > self.nodes {
            bail!(
                "--regions must be between 1 and --nodes ({}) (got {})",
                self.nodes,
                self.regions
            );
        }
        if !self.rate.is_finite() || self.rate <= 0.0 || self.rate > 100_000.0 {
            bail!(
                "--rate must be a positive number of claims per second up to 100000 (got {})",
                self.rate
            );
        }
        if self.threads == Some(0) {
            bail!("--threads must be at least 1");
        }
        if self.scale_projection
            && let Some(bad) = self.projection_sizes.iter().find(|n| **n < 10 || **n > MAX_NODES)
        {
            bail!("--projection-sizes: {bad} must be between 10 (one per region) and {MAX_NODES}");
        }
        Ok(())
    }

    fn config(&self, seed: u64) -> Config {
        if let Some(scenario) = self.scenario {
            return scenario.config(seed, self.rate, self.tail.micros);
        }
        Config {
            seed,
            nodes: self.nodes,
            regions: self.regions,
            duration_us: self.duration.micros,
            tail_us: self.tail.micros,
            profile: self.faults,
            rate_per_s: self.rate,
            monotonic_clock: !self.raw_clock,
            durable_ledger: !self.volatile_ledger,
            heartbeats: true,
            takeover: self.takeover,
            script: None,
            signatures: self.signatures,
            workload: None,
        }
    }

    /// The exact command that replays `seed`.
    fn replay(&self, seed: u64) -> String {
        if let Some(scenario) = self.scenario {
            return format!(
                "credence sim --scenario {} --seed {seed} --tail {} --rate {}",
                scenario.name(),
                self.tail.text,
                self.rate
            );
        }
        format!(
            "credence sim --seed {seed} --nodes {} --regions {} --duration {} --tail {} --faults {} --rate {}{}",
            self.nodes,
            self.regions,
            self.duration.text,
            self.tail.text,
            self.faults.name(),
            self.rate,
            if self.raw_clock { " --raw-clock" } else { "" },
        ) + if self.volatile_ledger { " --volatile-ledger" } else { "" }
            + if self.takeover { " --takeover" } else { "" }
    }
}

impl SimArgs {
    /// For a scenario, checks what it must show: returns what was shown, or turns the outcome
    /// into a failure.
    fn judge(&self, outcome: &mut RunOutcome) -> Vec<String> {
        let Some(scenario) = self.scenario else {
            return Vec::new();
        };
        match scenario.check(outcome) {
            Ok(shown) => shown,
            Err(error) => {
                if outcome.failure.is_none() {
                    outcome.failure = Some(format!("scenario {}: {error}", scenario.name()));
                }
                Vec::new()
            }
        }
    }
}

/// Runs one configuration to its outcome; a configuration the world refuses is a failure.
pub fn run_one(cfg: Config) -> RunOutcome {
    let seed = cfg.seed;
    match World::new(cfg) {
        Ok(world) => world.run(),
        Err(error) => RunOutcome {
            seed,
            trace_hash: String::new(),
            failure: Some(error),
            summary: Summary::default(),
            record: RunRecord::default(),
        },
    }
}

/// Runs many configurations on `threads` workers; results come back in input order.
pub fn run_many(configs: Vec<Config>, threads: usize) -> Vec<RunOutcome> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, RunOutcome)>> = Mutex::new(Vec::with_capacity(configs.len()));
    let workers = threads.clamp(1, configs.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(cfg) = configs.get(index) else {
                        break;
                    };
                    let outcome = run_one(cfg.clone());
                    if let Ok(mut guard) = results.lock() {
                        guard.push((index, outcome));
                    }
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_default();
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, outcome)| outcome).collect()
}

fn threads(args: &SimArgs) -> usize {
    args.threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs `credence sim`.
pub fn run_cli(args: SimArgs) -> anyhow::Result<()> {
    args.validate()?;
    if args.scale_projection {
        return run_projection(&args);
    }
    match args.seeds {
        None => run_single(&args),
        Some(range) => run_sweep(&args, range),
    }
}

/// A stress scenario's figures, its pooled baseline's (bank-run), and its targets judged.
struct Stressed {
    figures: Value,
    baseline: Option<(RunOutcome, Value)>,
}

fn stress_run(args: &SimArgs, outcome: &mut RunOutcome, shown: &mut Vec<String>) -> Option<Stressed> {
    let stress = args.scenario?.stress()?;
    let figures = stress::figures(stress, outcome);
    let baseline = (stress == stress::Stress::BankRun).then(|| {
        let pooled = run_one(stress.config(args.seed, args.tail.micros, true));
        let figures = stress::figures(stress, &pooled);
        (pooled, figures)
    });
    if outcome.failure.is_none()
        && let Some(error) = baseline.as_ref().and_then(|(b, _)| b.failure.clone())
    {
        outcome.failure = Some(format!("pooled baseline: {error}"));
    }
    if outcome.failure.is_none() {
        match stress::check(stress, &figures, baseline.as_ref().map(|(_, f)| f)) {
            Ok(more) => shown.extend(more),
            Err(error) => outcome.failure = Some(format!("scenario {}: {error}", stress.name())),
        }
    }
    Some(Stressed { figures, baseline })
}

fn run_single(args: &SimArgs) -> anyhow::Result<()> {
    let mut outcome = run_one(args.config(args.seed));
    let mut shown = args.judge(&mut outcome);
    let stressed = stress_run(args, &mut outcome, &mut shown);
    if let (Some(dir), Some(stressed), Some(stress)) =
        (&args.report, &stressed, args.scenario.and_then(Scenario::stress))
    {
        let report = stress::report(
            stress,
            &outcome,
            &stressed.figures,
            stressed.baseline.as_ref().map(|(b, f)| (b, f)),
        );
        let files = report.write(dir)?;
        if !args.json {
            println!("report: {} ({})", dir.join("report.md").display(), files.join(", "));
        }
    } else if args.report.is_some() {
        bail!(
            "--report draws the stress scenarios only: bank-run, exit-under-partition, revocation-race, slow-region, owner-crash, rebalance-under-stress"
        );
    }
    let replay = args.replay(args.seed);
    if args.json {
        let mut value = serde_json::to_value(&outcome.summary).context("encoding the summary")?;
        if let Value::Object(map) = &mut value {
            map.insert("seed".into(), json!(outcome.seed));
            map.insert("seeds_run".into(), json!(1));
            let failures: Vec<u64> = outcome.failure.iter().map(|_| outcome.seed).collect();
            map.insert("failures".into(), json!(failures));
            map.insert("trace_hash".into(), json!(outcome.trace_hash));
            map.insert("ok".into(), json!(outcome.failure.is_none()));
            map.insert("error".into(), json!(outcome.failure));
            map.insert("replay".into(), json!(replay));
            if let Some(scenario) = args.scenario {
                map.insert("scenario".into(), json!(scenario.name()));
                map.insert("shown".into(), json!(shown));
            }
            if let Some(stressed) = &stressed {
                map.insert("summary".into(), stressed.figures.clone());
                if let Some((b, figures)) = &stressed.baseline {
                    map.insert(
                        "baseline".into(),
                        json!({"ok": b.failure.is_none(), "error": b.failure, "summary": figures}),
                    );
                }
            }
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&value).context("encoding the summary")?
        );
    } else {
        print!("{}", report::human(&outcome.summary));
        println!("trace hash: {}", outcome.trace_hash);
        for line in &shown {
            println!("shown: {line}");
        }
        if let Some(stressed) = &stressed {
            println!("figures: {}", stressed.figures);
            if let Some((_, figures)) = &stressed.baseline {
                println!("pooled baseline: {figures}");
            }
        }
    }
    match outcome.failure {
        None => {
            if !args.json {
                println!("ok: invariants held after every step; live and converged after faults stopped");
            }
            Ok(())
        }
        Some(error) => {
            eprintln!("seed {} FAILED: {error}", outcome.seed);
            eprintln!("replay with: {replay}");
            bail!("seed {} failed: {error}", outcome.seed)
        }
    }
}

fn run_sweep(args: &SimArgs, range: SeedRange) -> anyhow::Result<()> {
    let configs: Vec<Config> = (range.first..=range.last).map(|seed| args.config(seed)).collect();
    let shape = args.config(range.first);
    let mut outcomes = run_many(configs, threads(args));
    for outcome in &mut outcomes {
        args.judge(outcome);
    }
    let failures: Vec<&RunOutcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    if args.json {
        let runs: Vec<Value> = outcomes
            .iter()
            .map(|o| {
                json!({
                    "seed": o.seed,
                    "ok": o.failure.is_none(),
                    "trace_hash": o.trace_hash,
                    "claims_submitted": o.summary.claims_submitted,
                    "certificates": o.summary.certificates,
                    "regional_p50_ms": o.summary.regional_p50_ms,
                    "regional_p99_ms": o.summary.regional_p99_ms,
                    "global_p50_ms": o.summary.global_p50_ms,
                    "global_p99_ms": o.summary.global_p99_ms,
                    "converged_after_faults_ms": o.summary.converged_after_faults_ms,
                })
            })
            .collect();
        let details: Vec<Value> = failures
            .iter()
            .map(|o| json!({"seed": o.seed, "error": o.failure, "replay": args.replay(o.seed)}))
            .collect();
        let value = json!({
            "seeds_run": outcomes.len(),
            "failures": failures.iter().map(|o| o.seed).collect::<Vec<_>>(),
            "failure_details": details,
            "nodes": shape.nodes,
            "regions": shape.regions,
            "faults": args.scenario.map_or(args.faults.name(), Scenario::name),
            "duration_ms": shape.duration_us / 1_000,
            "runs": runs,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).context("encoding the sweep")?
        );
    } else {
        for o in &outcomes {
            let status = match &o.failure {
                None => "ok".to_owned(),
                Some(error) => format!("FAILED: {error}"),
            };
            println!(
                "seed {:>6}: {} claims, {} certificates, regional p50 {:.1} ms, global p50 {:.1} ms, trace {}  {status}",
                o.seed,
                o.summary.claims_submitted,
                o.summary.certificates,
                o.summary.regional_p50_ms,
                o.summary.global_p50_ms,
                o.trace_hash.get(..16).unwrap_or_default()
            );
        }
        println!("{} seeds run, {} failed", outcomes.len(), failures.len());
    }
    for o in &failures {
        eprintln!("seed {} FAILED: {}", o.seed, o.failure.as_deref().unwrap_or_default());
        eprintln!("replay with: {}", args.replay(o.seed));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        let seeds: Vec<String> = failures.iter().map(|o| o.seed.to_string()).collect();
        bail!(
            "{} of {} seeds failed: {}",
            failures.len(),
            outcomes.len(),
            seeds.join(", ")
        )
    }
}

fn run_projection(args: &SimArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for nodes in &args.projection_sizes {
        let cfg = Config {
            nodes: *nodes,
            regions: 10,
            profile: Profile::None,
            // Without faults no one is suspected; heartbeat traffic is left out of the figures.
            heartbeats: false,
            ..args.config(args.seed)
        };
        let started = Instant::now();
        let outcome = run_one(cfg);
        let cpu_s = started.elapsed().as_secs_f64();
        let s = &outcome.summary;
        if !args.json {
            eprintln!("{nodes} validators simulated in {cpu_s:.1} s");
        }
        if let Some(error) = &outcome.failure {
            failed.push(format!("{nodes} validators: {error}"));
        }
        rows.push(json!({
            "nodes": nodes,
            "regions": 10,
            "ok": outcome.failure.is_none(),
            "error": outcome.failure,
            "trace_hash": outcome.trace_hash,
            "claims_submitted": s.claims_submitted,
            "certificates": s.certificates,
            "regional_p50_ms": s.regional_p50_ms,
            "regional_p99_ms": s.regional_p99_ms,
            "global_p50_ms": s.global_p50_ms,
            "global_p99_ms": s.global_p99_ms,
            "messages_per_node_per_s": s.messages_per_node_per_s,
            "bytes_per_node_per_s": s.bytes_per_node_per_s,
            "max_messages_sent_by_a_node": s.max_messages_sent_by_a_node,
            "virtual_s": s.virtual_end_ms as f64 / 1e3,
            "wall_s": cpu_s,
        }));
    }
    if args.json {
        let value = json!({
            "seed": args.seed,
            "rate_per_s": args.rate,
            "duration_ms": args.duration.micros / 1_000,
            "latency_source": "AWS inter-region p50 RTT (cloudping.co), see node/src/sim/net.rs",
            "projection": rows,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).context("encoding the projection")?
        );
    } else {
        println!(
            "scale projection: 10 AWS regions, {} claims/s for {} (virtual), seed {}",
            args.rate, args.duration.text, args.seed
        );
        println!(
            "{:>6}  {:>12} {:>12}  {:>12} {:>12}  {:>12} {:>14}",
            "nodes", "regional p50", "regional p99", "global p50", "global p99", "msg/node/s", "bytes/node/s"
        );
        for row in &rows {
            let f = |key: &str| row.get(key).and_then(Value::as_f64).unwrap_or(0.0);
            println!(
                "{:>6}  {:>9.1} ms {:>9.1} ms  {:>9.1} ms {:>9.1} ms  {:>12.1} {:>14.0}",
                f("nodes"),
                f("regional_p50_ms"),
                f("regional_p99_ms"),
                f("global_p50_ms"),
                f("global_p99_ms"),
                f("messages_per_node_per_s"),
                f("bytes_per_node_per_s")
            );
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("scale projection failed: {}", failed.join("; "))
    }
}
