//! `credence-testnet`: a local Credence network of real node processes that
//! can be started, shaped, broken, loaded and checked from the command line.
//!
//! Thin `main`: parse, run one subcommand, print for humans or one JSON
//! object (`--json`), exit non-zero with one line on stderr on failure.

/// `println!` that does not panic when stdout is closed early (`| head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod attack;
mod bench;
mod bench_etcd;
/// etcd's v3 KV API, generated from `etcd/kv.proto` by `build.rs`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod etcd_pb {
    tonic::include_proto!("etcdserverpb");
}
mod bench_plot;
mod chaos;
mod check;
mod faults;
mod layout;
mod lifecycle;
mod load;
mod pin;
mod procs;
mod rpc;
mod shaper;
mod stress;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::layout::Layout;

/// Local Credence testnets: real node processes on this machine, in several
/// regions, that you can partition, slow down, kill, load with claims and
/// check for invariant violations.
///
/// A first session:
///
///   credence-testnet up --regions eu,us --validators-per-region 3
///   credence-testnet status
///   credence-testnet load --claims 200 --rate 50
///   credence-testnet partition "eu | us"
///   credence-testnet load --claims 100 --rate 50
///   credence-testnet heal
///   credence-testnet check
///   credence-testnet down
///
/// Everything lives in the testnet directory (--dir, default ./testnet):
/// genesis, keys, one directory per node, logs/NAME.log, and state.json
/// with every process the testnet started.
#[derive(Debug, Parser)]
#[command(name = "credence-testnet", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Args)]
struct Common {
    /// The testnet's directory.
    #[arg(long, default_value = "testnet")]
    dir: PathBuf,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write a new network (genesis, keys, configs), start every node and
    /// wait until each answers and is connected to every validator. Builds
    /// the binaries first if they are missing. On an existing, stopped
    /// testnet directory, starts it again with its data.
    Up {
        #[command(flatten)]
        common: Common,
        /// How many regions (named eu, us, ap, …) or their names (eu,us,ap).
        #[arg(long, default_value = "2")]
        regions: String,
        /// Validators in each region.
        #[arg(long, default_value_t = 3)]
        validators_per_region: u32,
        /// Observer nodes (follow and serve RPC, no vote), named obs-0, obs-1, …
        #[arg(long, default_value_t = 0)]
        observers: u32,
        /// Route every link between nodes through the link shaper (one TCP
        /// relay per directed link), so `delay` and blackhole partitions work.
        #[arg(long)]
        shaped: bool,
        /// The demo distribution's allocation in each region; each claim
        /// pays 100, so the default pays 10,000 claims per region. Raise it
        /// for long loads (only a new testnet takes it).
        #[arg(long, default_value_t = credence::config::DEMO_REGION_BUDGET)]
        region_budget: u64,
        /// How long to wait for the network to become healthy.
        #[arg(long, default_value_t = lifecycle::UP_TIMEOUT.as_secs())]
        timeout_secs: u64,
    },
    /// A live terminal view of the whole testnet, refreshed every second:
    /// the quorum modes its nodes report; each region's mode, reachable
    /// weight, quorum latency and view age; every validator some node
    /// suspects, with its highest phi and how many suspect it; a liquidity
    /// bar per distribution and region (available, pending, spent,
    /// disputed; each region as its own nodes see it) with outflow and time
    /// to depletion; claims per second certified and disputed. q (or Esc,
    /// Ctrl-C) quits. Works in any terminal, over SSH too.
    Top {
        /// The testnet's directory.
        #[arg(long, default_value = "testnet")]
        dir: PathBuf,
    },
    /// A table of nodes: region, process state, mode, peers, credentials,
    /// certified batches, funded claims, view ages and where the log is.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Stop every process of the testnet (SIGTERM, then SIGKILL after 10 s).
    /// Data stays: `up --dir` starts it again.
    Down {
        #[command(flatten)]
        common: Common,
    },
    /// Kill one node (SIGKILL, like a crash; --graceful for SIGTERM).
    Kill {
        #[command(flatten)]
        common: Common,
        /// The node's name, e.g. eu-1.
        node: String,
        /// Ask it to stop (SIGTERM) instead of killing it.
        #[arg(long)]
        graceful: bool,
    },
    /// Stop (if running) and start one node again with its data, and wait
    /// until it is healthy. During a partition it rejoins its side.
    Restart {
        #[command(flatten)]
        common: Common,
        node: String,
        #[arg(long, default_value_t = lifecycle::UP_TIMEOUT.as_secs())]
        timeout_secs: u64,
    },
    /// Freeze one node (SIGSTOP): its connections stay open but it answers nothing.
    Pause {
        #[command(flatten)]
        common: Common,
        node: String,
    },
    /// Thaw a paused node (SIGCONT).
    Resume {
        #[command(flatten)]
        common: Common,
        node: String,
    },
    /// Cut the network into groups, e.g. "eu | us,ap" or "eu-0 | eu-1,eu-2".
    /// Groups are separated by |; each is a comma list of regions or node
    /// names; nodes named nowhere form one more group. Shaped testnets
    /// blackhole the links between groups (bytes stop, connections stay
    /// open); others use each node's admin block-list.
    Partition {
        #[command(flatten)]
        common: Common,
        /// The groups, e.g. "eu | us".
        groups: String,
    },
    /// Undo the partition (delays set with `delay` stay).
    Heal {
        #[command(flatten)]
        common: Common,
    },
    /// Delay (and optionally jitter and throttle) the links between two sides,
    /// both ways, while everything runs. Needs `up --shaped`. --ms 0 undoes it.
    Delay {
        #[command(flatten)]
        common: Common,
        /// Two sides, each a region or node name: eu,us or "eu-0,eu-1 | us".
        #[arg(long)]
        between: String,
        /// One-way delay in milliseconds.
        #[arg(long)]
        ms: u64,
        /// Each chunk's delay varies uniformly by up to this much either way
        /// (bytes are never reordered).
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
        /// Bandwidth limit per direction in kilobits per second (0 = none).
        #[arg(long)]
        bandwidth_kbps: Option<u64>,
    },
    /// Close every open connection between two sides with a TCP reset. Needs `up --shaped`.
    Reset {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        between: String,
    },
    /// Per-link rules, open connections and bytes, from the shaper.
    Links {
        #[command(flatten)]
        common: Common,
    },
    /// Claim from the network's distribution at a steady rate: each claimant
    /// gets a fresh key and credential, then one claim, followed until it is
    /// certified. Prints a progress bar, then statuses and latencies.
    Load {
        #[command(flatten)]
        common: Common,
        /// How many claimants (one claim each).
        #[arg(long, default_value_t = 100)]
        claims: u64,
        /// Claims started per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Only claimants whose home region is this one.
        #[arg(long)]
        region: Option<String>,
        /// Where credential and claim are sent: a node of the claim's home
        /// region (as a well-behaved client does), or any node.
        #[arg(long, value_enum, default_value = "home")]
        entry: load::Entry,
        /// Follow each claim until this status.
        #[arg(long, value_enum, default_value = "regional")]
        wait: load::Wait,
        /// Give up following a claim after this long.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
        /// Most claims in flight at once.
        #[arg(long, default_value_t = load::CONCURRENCY_DEFAULT)]
        concurrency: usize,
        /// Distribution id or name (default: the first one listed).
        #[arg(long)]
        distribution: Option<String>,
        /// When credentials are issued: all before the paced phase, which
        /// starts once every node holds them (the figures are those of
        /// claims alone), or each just before its claim.
        #[arg(long, value_enum, default_value = "ahead")]
        credentials: load::Credentials,
    },
    /// Stress a running testnet and measure it: bank-run (one region's
    /// claimants at 10x the base rate until its escrow is gone, base load
    /// elsewhere, then a pooled baseline with all escrow in that region),
    /// exit-under-partition, revocation-race (credentials of the rushing
    /// claims revoked before submission, in flight and once certified, dated
    /// before their claims; each must end disputed or refused at every node),
    /// slow-region (needs `up --shaped`), owner-crash, rebalance-under-stress.
    /// Each creates its own small distribution with the testnet's operator
    /// key, samples liquidity and view ages at one node per region and every
    /// node's quorum mode (decision latency), and with
    /// --report writes DIR/report.md and PNG plots. Exits non-zero when a
    /// target is missed.
    Stress {
        #[command(flatten)]
        common: Common,
        #[arg(value_enum)]
        scenario: stress::Scenario,
        /// Write DIR/report.md (summary table on top) and its PNG plots.
        #[arg(long, value_name = "DIR")]
        report: Option<PathBuf>,
        /// The region under stress (default: the first by name).
        #[arg(long)]
        region: Option<String>,
        /// Claims per second entering each region at base load.
        #[arg(long, default_value_t = 4.0)]
        base_rate: f64,
        /// Claims per other region in each phase (base, then during the stress); the run
        /// region sends 10x as many at 10x the rate. The other regions' p99 is taken over
        /// all their claims of a phase together: keep that above 100 for a p99 that is
        /// not just the slowest claim.
        #[arg(long, default_value_t = 60)]
        claims: u64,
        /// Each region's budget, in claims (bank-run, rebalance-under-stress; the others
        /// get 20x, enough not to run dry). Must exceed twice --claims, with room for
        /// the uneven spread of claims over a region's buckets; a multiple of the
        /// validators per region keeps every bucket's share whole claims.
        #[arg(long, default_value_t = 132)]
        budget_claims: u64,
        /// Leave every node free to run on any CPU. By default the run region's
        /// nodes get their own CPUs and the other regions' the rest, for the
        /// scenario's length: regions as separate hosts, so the other regions'
        /// p99 shows what the protocol costs them, not a shared machine's load.
        #[arg(long)]
        shared_cpus: bool,
    },
    /// Audit every running node and verify: no slot funded twice, no bucket
    /// over its escrow, every distribution within its total, no conflicting
    /// certificates, and identical certified state (unless partitioned).
    /// Exits non-zero on any violation.
    Check {
        #[command(flatten)]
        common: Common,
        /// When digests are the only difference, keep auditing this long for
        /// certificates still in flight to land.
        #[arg(long, default_value_t = 10)]
        settle_secs: u64,
    },
    /// Run a rogue peer against the running testnet for --secs, with a light
    /// claim load beside it, and report what the honest nodes did: whether
    /// (and how fast) they graylisted or cut off the attacker, whether they
    /// graylisted any honest validator, honest claim p99 during the attack
    /// divided by the p99 of the same load just before it, and `check` after.
    /// Exits non-zero when `check` finds a violation.
    ///
    ///   forge        gossip envelopes whose signatures do not verify
    ///   replay       gossip another network's envelopes and old certified objects
    ///   spam         gossip duplicates, claims on unknown credentials, oversized frames
    ///   equivocate   sign two batches at one (bucket, seq) with a validator's key
    ///                from the testnet directory and ask its region to vote on both;
    ///                reports whether honest nodes detected and gossiped the evidence
    ///   connections  open p2p TCP connections to one node until it refuses them
    ///   slow-rpc     open gRPC and HTTP connections to one node that never send a request
    #[command(verbatim_doc_comment)]
    Attack {
        #[command(flatten)]
        common: Common,
        #[arg(value_enum)]
        kind: attack::AttackKind,
        /// Attack at least this long (as long as the load beside it runs).
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Attack messages (or connections) per second.
        #[arg(long, default_value_t = attack::RATE_DEFAULT)]
        rate: f64,
    },
    /// A nemesis loop for --secs while claims are submitted: kill (SIGKILL)
    /// and restart validators, pause (SIGSTOP) and resume them, cut one off
    /// and heal, one fault at a time on a schedule drawn from --seed. Then
    /// verify that every claim an entry node acknowledged as certified is
    /// known at every node with status regional or better, and run `check`.
    /// Exits non-zero when a claim was lost or `check` fails.
    Chaos {
        #[command(flatten)]
        common: Common,
        /// Seed of the fault schedule: the same seed, the same faults.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How long the nemesis runs.
        #[arg(long, default_value_t = 40)]
        secs: u64,
    },
    /// Benchmarks against other systems on this machine.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Run the link shaper (started by `up --shaped`; not for direct use).
    #[command(hide = true)]
    Shaper {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Cost per certified claim, side by side with a 3-member etcd on
    /// loopback: for each offered rate (100, 500, 1000, 2000, 4000 claims/s;
    /// --quick: 100 and 1000), 8 s each, a fresh etcd cluster running the
    /// exactly-once claim workload (one bucket key and writer per bucket of
    /// the 3 × 4 network, each writer batching its queued claims into one
    /// compare-and-put transaction, open-loop), then fresh Credence testnets
    /// of 3 × 4 and 1 × 4 under `load` (latency to `regional`). Reports
    /// achieved claims/s, p50/p99, server CPU cores (utime + stime of every
    /// etcd or node process) and CPU ms per committed claim, the ratios to
    /// etcd, and writes SVG plots and bench.json under --out. Needs `etcd`
    /// on PATH (Debian: apt-get install etcd-server). Everything it starts
    /// is stopped when it ends, fails, or gets SIGINT/SIGTERM.
    #[command(verbatim_doc_comment)]
    VsEtcd(bench::VsEtcdArgs),
}

/// Runs `work`, or stops at SIGINT/SIGTERM; dropping `work` stops whatever
/// it started.
async fn until_signal<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted (SIGINT); everything started was stopped"),
        _ = term.recv() => anyhow::bail!("terminated (SIGTERM); everything started was stopped"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `value` as JSON, or with `human` for people.
fn emit(json_out: bool, value: &Value, human: impl FnOnce(&Value)) {
    if json_out {
        outln!("{value}");
    } else {
        human(value);
    }
}

async fn run(command: Cmd) -> anyhow::Result<ExitCode> {
    match command {
        Cmd::Up {
            common,
            regions,
            validators_per_region,
            observers,
            shaped,
            region_budget,
            timeout_secs,
        } => {
            let layout = Layout::new(&common.dir)?;
            let opts = lifecycle::UpOptions {
                regions,
                validators_per_region,
                observers,
                shaped,
                timeout: Duration::from_secs(timeout_secs),
                region_budget,
            };
            let state = lifecycle::up(&layout, &opts).await?;
            let nodes: Vec<Value> = state
                .nodes
                .iter()
                .map(|n| json!({"name": n.name, "region": n.region, "role": n.role, "rpc": n.rpc, "pid": n.pid, "log": n.log}))
                .collect();
            let v = json!({
                "dir": layout.dir,
                "network_id": state.network_id,
                "shaped": state.shaper.is_some(),
                "nodes": nodes,
            });
            emit(common.json, &v, |v| {
                outln!(
                    "testnet up in {} ({} nodes{})",
                    layout.dir.display(),
                    state.nodes.len(),
                    if state.shaper.is_some() {
                        ", links through the shaper"
                    } else {
                        ""
                    }
                );
                outln!("{:<8} {:<6} {:<24} log", "NODE", "REGION", "RPC");
                for n in v["nodes"].as_array().into_iter().flatten() {
                    outln!(
                        "{:<8} {:<6} {:<24} {}",
                        n["name"].as_str().unwrap_or(""),
                        n["region"].as_str().filter(|r| !r.is_empty()).unwrap_or("-"),
                        n["rpc"].as_str().unwrap_or(""),
                        n["log"].as_str().unwrap_or("")
                    );
                }
            });
        }
        Cmd::Top { dir } => {
            let layout = Layout::new(&dir)?;
            let state = layout.load_state()?;
            let targets = state
                .nodes
                .iter()
                .map(|n| credence::top::Target::new(&n.name, &n.rpc))
                .collect::<anyhow::Result<Vec<_>>>()?;
            credence::top::run(&format!("testnet {}", dir.display()), targets).await?;
        }
        Cmd::Status { common } => {
            let layout = Layout::new(&common.dir)?;
            let v = lifecycle::status(&layout).await?;
            emit(common.json, &v, lifecycle::print_status);
        }
        Cmd::Down { common } => {
            let layout = Layout::new(&common.dir)?;
            let stopped = lifecycle::down(&layout)?;
            emit(common.json, &json!({ "stopped": stopped }), |_| {
                outln!(
                    "stopped {} processes; data kept in {}",
                    stopped.len(),
                    layout.dir.display()
                );
            });
        }
        Cmd::Kill { common, node, graceful } => {
            let layout = Layout::new(&common.dir)?;
            lifecycle::kill(&layout, &node, graceful)?;
            emit(common.json, &json!({ "node": node, "state": "killed" }), |_| {
                outln!("{node} killed");
            });
        }
        Cmd::Restart {
            common,
            node,
            timeout_secs,
        } => {
            let layout = Layout::new(&common.dir)?;
            lifecycle::restart(&layout, &node, Duration::from_secs(timeout_secs)).await?;
            emit(common.json, &json!({ "node": node, "state": "running" }), |_| {
                outln!("{node} restarted and healthy");
            });
        }
        Cmd::Pause { common, node } => {
            let layout = Layout::new(&common.dir)?;
            lifecycle::pause(&layout, &node, true)?;
            emit(common.json, &json!({ "node": node, "state": "paused" }), |_| {
                outln!("{node} paused (SIGSTOP)");
            });
        }
        Cmd::Resume { common, node } => {
            let layout = Layout::new(&common.dir)?;
            lifecycle::pause(&layout, &node, false)?;
            emit(common.json, &json!({ "node": node, "state": "running" }), |_| {
                outln!("{node} resumed (SIGCONT)");
            });
        }
        Cmd::Partition { common, groups } => {
            let layout = Layout::new(&common.dir)?;
            let v = faults::partition(&layout, &groups).await?;
            emit(common.json, &v, |v| {
                let groups: Vec<String> = v["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|g| {
                        g.as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .collect();
                outln!(
                    "partitioned ({}): {}",
                    v["method"].as_str().unwrap_or(""),
                    groups.join(" | ")
                );
            });
        }
        Cmd::Heal { common } => {
            let layout = Layout::new(&common.dir)?;
            let v = faults::heal(&layout).await?;
            emit(common.json, &v, |v| {
                if v["healed"].as_bool() == Some(true) {
                    outln!("healed: every link is open again");
                } else {
                    outln!("nothing to heal: the testnet was not partitioned");
                }
            });
        }
        Cmd::Delay {
            common,
            between,
            ms,
            jitter_ms,
            bandwidth_kbps,
        } => {
            let layout = Layout::new(&common.dir)?;
            let v = faults::delay(&layout, &between, ms, jitter_ms, bandwidth_kbps).await?;
            emit(common.json, &v, |v| {
                outln!("{} links between {between}: {ms} ms ± {jitter_ms} ms", v["links"]);
            });
        }
        Cmd::Reset { common, between } => {
            let layout = Layout::new(&common.dir)?;
            let v = faults::reset(&layout, &between).await?;
            emit(common.json, &v, |v| {
                outln!("reset {} connections between {between}", v["closed_connections"]);
            });
        }
        Cmd::Links { common } => {
            let layout = Layout::new(&common.dir)?;
            let v = faults::links(&layout).await?;
            emit(common.json, &v, |v| {
                outln!(
                    "{:<8} {:<8} {:>5} {:>8} {:>7} {:>9} {:>6} {:>12}",
                    "FROM",
                    "TO",
                    "CONNS",
                    "DELAY",
                    "JITTER",
                    "KBPS",
                    "CUT",
                    "BYTES"
                );
                let text = |x: &Value| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                for l in v["links"].as_array().into_iter().flatten() {
                    outln!(
                        "{:<8} {:<8} {:>5} {:>6}ms {:>5}ms {:>9} {:>6} {:>12}",
                        text(&l["from"]),
                        text(&l["to"]),
                        text(&l["open_connections"]),
                        text(&l["rule"]["delay_ms"]),
                        text(&l["rule"]["jitter_ms"]),
                        text(&l["rule"]["bandwidth_kbps"]),
                        text(&l["rule"]["blackhole"]),
                        text(&l["bytes"])
                    );
                }
            });
        }
        Cmd::Load {
            common,
            claims,
            rate,
            region,
            entry,
            wait,
            timeout_secs,
            concurrency,
            distribution,
            credentials,
        } => {
            let layout = Layout::new(&common.dir)?;
            let opts = load::LoadOptions {
                claims,
                rate,
                region,
                entry,
                wait,
                timeout: Duration::from_secs(timeout_secs),
                concurrency,
                distribution,
                credentials,
                entry_region: None,
                race: false,
            };
            let v = load::load(&layout, opts).await?;
            emit(common.json, &v, load::print_report);
        }
        Cmd::Stress {
            common,
            scenario,
            report,
            region,
            base_rate,
            claims,
            budget_claims,
            shared_cpus,
        } => {
            let layout = Layout::new(&common.dir)?;
            let opts = stress::StressOptions {
                scenario,
                report,
                region,
                base_rate,
                claims,
                budget_claims,
                shared_cpus,
            };
            let v = stress::stress(&layout, opts).await?;
            let ok = v["ok"].as_bool() == Some(true);
            emit(common.json, &v, stress::print_report);
            if !ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Check { common, settle_secs } => {
            let layout = Layout::new(&common.dir)?;
            let v = check::check(&layout, Duration::from_secs(settle_secs)).await?;
            let ok = v["ok"].as_bool() == Some(true);
            emit(common.json, &v, |v| {
                for note in v["notes"].as_array().into_iter().flatten() {
                    outln!("note: {}", note.as_str().unwrap_or(""));
                }
                for s in v["skipped"].as_array().into_iter().flatten() {
                    outln!("skipped {}", s.as_str().unwrap_or(""));
                }
                for d in v["distributions"].as_array().into_iter().flatten() {
                    outln!(
                        "distribution {}: spent {} of {}",
                        d["id"].as_str().map(|s| s.get(..12).unwrap_or(s)).unwrap_or(""),
                        d["spent"],
                        d["total"]
                    );
                }
                if ok {
                    outln!(
                        "ok: {} nodes checked, {} funded claims, no violation",
                        v["nodes_checked"],
                        v["funded_slots"]
                    );
                } else {
                    outln!("VIOLATIONS ({} nodes checked):", v["nodes_checked"]);
                    for x in v["violations"].as_array().into_iter().flatten() {
                        outln!("  - {}", x.as_str().unwrap_or(""));
                    }
                }
            });
            if !ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Attack {
            common,
            kind,
            secs,
            rate,
        } => {
            let layout = Layout::new(&common.dir)?;
            let v = attack::attack(&layout, attack::AttackOptions { kind, secs, rate }).await?;
            emit(common.json, &v, attack::print_report);
            if v["check"]["ok"].as_bool() != Some(true) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Chaos { common, seed, secs } => {
            let layout = Layout::new(&common.dir)?;
            let v = chaos::chaos(&layout, chaos::ChaosOptions { seed, secs }).await?;
            emit(common.json, &v, chaos::print_report);
            if v["check"]["ok"].as_bool() != Some(true) || v["acknowledged_lost"].as_u64() != Some(0) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Bench {
            what: BenchCmd::VsEtcd(args),
        } => {
            let v = until_signal(bench::vs_etcd(&args)).await?;
            emit(args.json, &v, bench::print_report);
        }
        Cmd::Shaper { common } => {
            let layout = Layout::new(&common.dir)?;
            shaper::run(&layout).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
