//! `credence-testnet bench vs-etcd`: the cost of a certified claim, side by
//! side with a 3-member etcd on the same machine.
//!
//! For each system and offered rate, a fresh deployment: a new etcd cluster
//! (see `bench_etcd`) or a new Credence testnet loaded with `load` (claims
//! followed to `regional`). Server CPU is the sum of utime + stime over
//! every etcd or node process, sampled from `/proc/PID/stat` while the row
//! runs; a row's window runs from the start of its schedule to the later of
//! the schedule's end and the last commit, and `cores` and `achieved` are
//! both taken over that window.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use serde_json::{Value, json};

use crate::layout::Layout;
use crate::{bench_etcd, bench_plot, lifecycle, load};

/// Offered rates of a full run, claims per second.
pub const RATES_FULL: [f64; 5] = [100.0, 500.0, 1000.0, 2000.0, 4000.0];
/// Offered rates of `--quick`.
pub const RATES_QUICK: [f64; 2] = [100.0, 1000.0];
/// Seconds each row offers its rate for.
pub const SECONDS_DEFAULT: f64 = 8.0;
/// How often server CPU is sampled.
const CPU_SAMPLE: Duration = Duration::from_millis(100);
/// Each bucket's even share of its region's budget could pay every claim of
/// a row this many times over, so no row runs out of budget.
const BUDGET_HEADROOM: u64 = 2;
/// How long a Credence claim is followed before it counts as not committed.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);

/// A system the bench runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum System {
    /// Three etcd members on loopback.
    Etcd,
    /// A Credence testnet of 3 regions × 4 validators.
    #[value(name = "credence-3x4")]
    Credence3x4,
    /// A Credence testnet of 1 region × 4 validators.
    #[value(name = "credence-1x4")]
    Credence1x4,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Etcd => "etcd",
            System::Credence3x4 => "credence-3x4",
            System::Credence1x4 => "credence-1x4",
        }
    }
}

/// Regions and validators per region of the testnets, and so the etcd
/// workload's bucket count (one bucket per validator of the 3 × 4 network).
const SHAPE_3X4: (u32, u32) = (3, 4);
const SHAPE_1X4: (u32, u32) = (1, 4);

#[derive(Debug, clap::Args)]
pub struct VsEtcdArgs {
    /// Offered rates 100 and 1000 claims/s only (a CI-sized check).
    #[arg(long)]
    pub quick: bool,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Where the plots and bench.json are written.
    #[arg(long, default_value = "target/bench-vs-etcd")]
    pub out: PathBuf,
    /// Scratch directory for etcd data and testnets (default: a new one
    /// under the system's temp directory, removed at the end).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Offered rates instead of 100,500,1000,2000,4000 (or --quick's).
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Seconds each row offers its rate for.
    #[arg(long, default_value_t = SECONDS_DEFAULT)]
    pub seconds: f64,
    /// The systems to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "etcd,credence-3x4,credence-1x4"
    )]
    pub systems: Vec<System>,
}

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub system: &'static str,
    pub offered: f64,
    pub achieved: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cores: f64,
    pub cpu_ms_per_claim: f64,
    pub committed: u64,
    pub submitted: u64,
    pub window_s: f64,
}

/// Sums utime + stime of a set of processes every `CPU_SAMPLE`, with the
/// wall-clock time of each sample.
struct CpuSampler {
    samples: Arc<Mutex<Vec<(u64, f64)>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Clock ticks per second of `/proc/PID/stat`'s times.
fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .map(|t| t as f64)
        .unwrap_or(100.0)
}

/// utime + stime of `pid` in ticks, or None once it is gone.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After the command name: state is field 3, utime 14 and stime 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

impl CpuSampler {
    fn start(pids: Vec<u32>) -> CpuSampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let out = samples.clone();
        let ticks = clock_ticks();
        let task = tokio::spawn(async move {
            // A process that exits keeps its last reading.
            let mut last = vec![0u64; pids.len()];
            let mut every = tokio::time::interval(CPU_SAMPLE);
            loop {
                every.tick().await;
                for (pid, seen) in pids.iter().zip(last.iter_mut()) {
                    if let Some(t) = process_ticks(*pid) {
                        *seen = t;
                    }
                }
                let total = last.iter().sum::<u64>() as f64 / ticks;
                out.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((credence::node::now_ms(), total));
            }
        });
        CpuSampler { samples, task }
    }

    /// CPU seconds at wall-clock `ms`, interpolated between samples.
    fn at(&self, ms: u64) -> f64 {
        let s = self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cpu_at(&s, ms)
    }
}

impl Drop for CpuSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn cpu_at(samples: &[(u64, f64)], ms: u64) -> f64 {
    let after = samples.iter().position(|(t, _)| *t >= ms);
    match after {
        None => samples.last().map(|s| s.1).unwrap_or(0.0),
        Some(0) => samples.first().map(|s| s.1).unwrap_or(0.0),
        Some(i) => match (samples.get(i - 1), samples.get(i)) {
            (Some((t0, c0)), Some((t1, c1))) if t1 > t0 => {
                c0 + (c1 - c0) * (ms.saturating_sub(*t0)) as f64 / (t1 - t0) as f64
            }
            (_, Some((_, c1))) => *c1,
            _ => 0.0,
        },
    }
}

/// The row's figures from its committed count, latencies and window.
#[allow(clippy::too_many_arguments)]
fn row(
    system: System,
    offered: f64,
    submitted: u64,
    committed: u64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_s: f64,
    window_s: f64,
) -> Row {
    let window_s = window_s.max(1e-3);
    let achieved = committed as f64 / window_s;
    Row {
        system: system.name(),
        offered,
        achieved,
        p50_ms,
        p99_ms,
        cores: cpu_s / window_s,
        cpu_ms_per_claim: if committed > 0 {
            cpu_s * 1000.0 / committed as f64
        } else {
            0.0
        },
        committed,
        submitted,
        window_s,
    }
}

/// The window of a row that started at `started_ms`, offered for
/// `seconds`, and last committed at `last_ms`.
fn window(started_ms: u64, seconds: f64, last_ms: u64) -> (u64, f64) {
    let scheduled_end = started_ms.saturating_add((seconds * 1000.0) as u64);
    let end = scheduled_end.max(last_ms);
    (end, end.saturating_sub(started_ms) as f64 / 1000.0)
}

/// Stops a testnet when dropped (on success, error or interruption).
struct TestnetGuard(Layout);

impl Drop for TestnetGuard {
    fn drop(&mut self) {
        let _ = lifecycle::down(&self.0);
        reap_children();
    }
}

/// Collects the exit status of every child that has exited (the testnet's
/// nodes are this process's children and are not waited for by `down`),
/// so none lingers as a zombie while later rows run.
fn reap_children() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

async fn etcd_row(work: &Path, offered: f64, seconds: f64, buckets: usize) -> anyhow::Result<Row> {
    let dir = work.join(format!("etcd-{offered}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cluster = bench_etcd::start(&dir, &work.join("pids")).await?;
    let sampler = CpuSampler::start(cluster.pids());
    let claims = claims_of(offered, seconds);
    let amount = credence::config::DEMO_AMOUNT_PER_CLAIM;
    let w = bench_etcd::Workload {
        buckets,
        rate: offered,
        claims,
        bucket_budget: amount.saturating_mul(claims).saturating_mul(BUDGET_HEADROOM),
        amount,
    };
    let o = bench_etcd::run(&cluster, &w).await?;
    if o.latencies_us.is_empty() {
        bail!(
            "etcd committed no claim at {offered}/s: {}",
            o.error.unwrap_or_else(|| "no error reported".into())
        );
    }
    if let Some(e) = &o.error {
        eprintln!("etcd at {offered}/s: {} claims lost to transport errors ({e})", o.lost);
    }
    let (end, window_s) = window(o.started_ms, seconds, o.last_commit_ms);
    // Let the sampler pass the window's end before reading it.
    tokio::time::sleep(CPU_SAMPLE * 2).await;
    let cpu = sampler.at(end) - sampler.at(o.started_ms);
    let mut lat = o.latencies_us.clone();
    lat.sort_unstable();
    let ms = |q| load::percentile(&lat, q).map(|us| us as f64 / 1000.0).unwrap_or(0.0);
    let r = row(
        System::Etcd,
        offered,
        claims,
        lat.len() as u64,
        ms(0.50),
        ms(0.99),
        cpu,
        window_s,
    );
    drop(sampler);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(r)
}

fn claims_of(offered: f64, seconds: f64) -> u64 {
    (offered * seconds).round().max(1.0) as u64
}

async fn credence_row(work: &Path, system: System, offered: f64, seconds: f64) -> anyhow::Result<Row> {
    let (regions, per_region) = if system == System::Credence1x4 {
        SHAPE_1X4
    } else {
        SHAPE_3X4
    };
    let claims = claims_of(offered, seconds);
    let dir = work.join(format!("{}-{offered}", system.name()));
    let layout = Layout::new(&dir)?;
    let guard = TestnetGuard(layout.clone());
    // Each bucket's even share of its region pays every claim of the row.
    let region_budget = credence::config::DEMO_AMOUNT_PER_CLAIM
        .saturating_mul(claims)
        .saturating_mul(u64::from(per_region))
        .saturating_mul(BUDGET_HEADROOM)
        .max(credence::config::DEMO_REGION_BUDGET);
    let up = lifecycle::UpOptions {
        regions: regions.to_string(),
        validators_per_region: per_region,
        observers: 0,
        shaped: false,
        timeout: lifecycle::UP_TIMEOUT,
        region_budget,
    };
    let state = lifecycle::up(&layout, &up).await?;
    let pids: Vec<u32> = state.nodes.iter().filter_map(|n| n.pid).collect();
    let sampler = CpuSampler::start(pids);
    let opts = load::LoadOptions {
        entry_region: None,
        race: false,
        claims,
        rate: offered,
        region: None,
        entry: load::Entry::Home,
        wait: load::Wait::Regional,
        timeout: CLAIM_TIMEOUT,
        concurrency: load::CONCURRENCY_DEFAULT,
        distribution: None,
        credentials: load::Credentials::Ahead,
    };
    let v = load::load(&layout, opts).await?;
    let counts = &v["counts"];
    let committed = ["regional", "global"]
        .iter()
        .map(|s| counts[*s].as_u64().unwrap_or(0))
        .sum::<u64>();
    let started_ms = v["paced_started_ms"]
        .as_u64()
        .ok_or_else(|| anyhow!("the load report has no paced_started_ms"))?;
    let last_ms = v["last_reached_ms"].as_u64().unwrap_or(started_ms);
    if committed == 0 {
        bail!("{} certified no claim at {offered}/s: {}", system.name(), v["errors"]);
    }
    let (end, window_s) = window(started_ms, seconds, last_ms);
    let cpu = sampler.at(end) - sampler.at(started_ms);
    let l = &v["latency_to_regional_ms"];
    let ms = |k: &str| l[k].as_f64().unwrap_or(0.0);
    let r = row(system, offered, claims, committed, ms("p50"), ms("p99"), cpu, window_s);
    drop(sampler);
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(r)
}

/// The ratios the targets are stated in.
fn ratios(rows: &[Row]) -> Value {
    let best = |s: System| {
        rows.iter()
            .filter(|r| r.system == s.name())
            .map(|r| r.achieved)
            .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))))
    };
    let at = |s: System, offered: f64| {
        rows.iter()
            .find(|r| r.system == s.name() && (r.offered - offered).abs() < 0.5)
            .map(|r| r.p99_ms)
    };
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let mut out = serde_json::Map::new();
    let mut add = |k: &str, v: Option<f64>| {
        if let Some(v) = v {
            out.insert(k.to_string(), json!(v));
        }
    };
    add(
        "throughput_3x4_vs_etcd",
        div(best(System::Credence3x4), best(System::Etcd)),
    );
    add(
        "throughput_1x4_vs_etcd",
        div(best(System::Credence1x4), best(System::Etcd)),
    );
    for offered in [100.0, 500.0] {
        add(
            &format!("p99_3x4_vs_etcd_at_{offered}"),
            div(at(System::Credence3x4, offered), at(System::Etcd, offered)),
        );
    }
    Value::Object(out)
}

pub async fn vs_etcd(args: &VsEtcdArgs) -> anyhow::Result<Value> {
    let rates: Vec<f64> = if !args.rates.is_empty() {
        args.rates.clone()
    } else if args.quick {
        RATES_QUICK.to_vec()
    } else {
        RATES_FULL.to_vec()
    };
    if rates.iter().any(|r| !(*r > 0.0 && r.is_finite())) {
        bail!("--rates: every rate must be a positive number of claims per second");
    }
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!("--seconds must be a positive number");
    }
    if args.systems.contains(&System::Etcd) {
        bench_etcd::binary()?;
    }
    let (work, made) = match &args.work {
        Some(w) => (w.clone(), false),
        None => (
            std::env::temp_dir().join(format!("credence-bench-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let work = work.canonicalize().unwrap_or(work);
    let result = run_rows(args, &rates, &work).await;
    if made {
        let _ = std::fs::remove_dir_all(&work);
    }
    let rows = result?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let plots = bench_plot::write(&rows, &args.out)?;
    let v = json!({
        "rows": rows,
        "ratios": ratios(&rows),
        "plots": plots,
        "seconds_per_row": args.seconds,
        "etcd_buckets": SHAPE_3X4.0 * SHAPE_3X4.1,
    });
    let json_path = args.out.join("bench.json");
    std::fs::write(&json_path, format!("{v:#}\n")).with_context(|| format!("cannot write {}", json_path.display()))?;
    Ok(v)
}

async fn run_rows(args: &VsEtcdArgs, rates: &[f64], work: &Path) -> anyhow::Result<Vec<Row>> {
    let buckets = (SHAPE_3X4.0 * SHAPE_3X4.1) as usize;
    let mut rows = Vec::new();
    for system in &args.systems {
        for offered in rates {
            eprintln!("bench: {} at {offered}/s for {} s", system.name(), args.seconds);
            let r = match system {
                System::Etcd => etcd_row(work, *offered, args.seconds, buckets).await?,
                s => credence_row(work, *s, *offered, args.seconds).await?,
            };
            eprintln!(
                "bench: {} at {offered}/s: {:.0}/s achieved, p50 {:.1} ms, p99 {:.1} ms, {:.2} cores, {:.2} CPU ms/claim",
                r.system, r.achieved, r.p50_ms, r.p99_ms, r.cores, r.cpu_ms_per_claim
            );
            rows.push(r);
        }
    }
    Ok(rows)
}

/// The table for humans.
pub fn print_report(v: &Value) {
    outln!(
        "{:<14} {:>8} {:>9} {:>9} {:>9} {:>7} {:>12}",
        "SYSTEM",
        "OFFERED",
        "ACHIEVED",
        "P50 MS",
        "P99 MS",
        "CORES",
        "CPU MS/CLAIM"
    );
    for r in v["rows"].as_array().into_iter().flatten() {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        outln!(
            "{:<14} {:>8.0} {:>9.1} {:>9.1} {:>9.1} {:>7.2} {:>12.2}",
            r["system"].as_str().unwrap_or(""),
            f("offered"),
            f("achieved"),
            f("p50_ms"),
            f("p99_ms"),
            f("cores"),
            f("cpu_ms_per_claim")
        );
    }
    for (k, x) in v["ratios"].as_object().into_iter().flatten() {
        outln!("{k}: {:.2}", x.as_f64().unwrap_or(0.0));
    }
    for p in v["plots"].as_array().into_iter().flatten() {
        outln!("plot: {}", p.as_str().unwrap_or(""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_interpolated_between_samples() {
        let s = [(1_000, 1.0), (1_100, 2.0), (1_200, 2.5)];
        assert!((cpu_at(&s, 1_050) - 1.5).abs() < 1e-9);
        assert!((cpu_at(&s, 900) - 1.0).abs() < 1e-9);
        assert!((cpu_at(&s, 5_000) - 2.5).abs() < 1e-9);
        assert!((cpu_at(&[], 5) - 0.0).abs() < 1e-9);
    }

    #[test]
    fn a_row_window_covers_the_schedule_and_the_last_commit() {
        assert_eq!(window(10_000, 8.0, 12_000), (18_000, 8.0));
        assert_eq!(window(10_000, 8.0, 20_500), (20_500, 10.5));
    }

    #[test]
    fn cpu_per_claim_is_cores_over_claims_per_second() {
        let r = row(System::Etcd, 100.0, 800, 800, 2.0, 9.0, 4.0, 8.0);
        assert!((r.achieved - 100.0).abs() < 1e-9);
        assert!((r.cores - 0.5).abs() < 1e-9);
        assert!((r.cpu_ms_per_claim - r.cores * 1000.0 / r.achieved).abs() < 1e-9);
    }

    #[test]
    fn ratios_compare_best_throughput_and_p99_at_the_same_rate() {
        let rows = vec![
            row(System::Etcd, 100.0, 800, 800, 2.0, 10.0, 1.0, 8.0),
            row(System::Etcd, 1000.0, 8000, 4000, 2.0, 50.0, 1.0, 8.0),
            row(System::Credence3x4, 100.0, 800, 800, 2.0, 30.0, 1.0, 8.0),
            row(System::Credence3x4, 1000.0, 8000, 2000, 2.0, 90.0, 1.0, 8.0),
        ];
        let v = ratios(&rows);
        assert_eq!(v["throughput_3x4_vs_etcd"].as_f64(), Some(0.5));
        assert_eq!(v["p99_3x4_vs_etcd_at_100"].as_f64(), Some(3.0));
        assert!(v.get("p99_3x4_vs_etcd_at_500").is_none());
        assert!(v.get("throughput_1x4_vs_etcd").is_none());
    }
}
