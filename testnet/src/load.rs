//! The workload generator: new claimants at a steady rate, each with a fresh
//! credential and one claim, followed until the claim is certified.
//!
//! For each claimant: generate a key, ask any node for the claim's home
//! (`Route`), pick the entry node (one of the home region with `--entry home`,
//! as a well-behaved client does; any node with `--entry random`) and submit
//! the issuer's attestation there. With `--credentials ahead` (the default)
//! that is done for every claimant first, and the paced phase starts once
//! every node holds the credentials, as when a distribution opens to holders
//! of credentials issued earlier; with `--credentials inline` each claimant's
//! credential is issued just before its claim, inside the paced phase. Then
//! the claim is submitted at the entry node and polled until it reaches the
//! awaited status, is rejected, or times out. Latency is measured from just
//! before the claim is submitted to the node's own timestamp of the step
//! (same machine, same clock).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use credence::core::envelope::{Kind, NetworkId, parse_hex32, seal};
use credence_proto::v1 as pb;
use ed25519_dalek::SigningKey;
use prost::Message;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::layout::{Layout, RunState};
use crate::rpc;

type EscrowClient = credence_proto::v1::escrow_client::EscrowClient<Channel>;

/// Claims followed at once; the generator waits (and the achieved rate
/// drops) when this many are in flight.
pub const CONCURRENCY_DEFAULT: usize = 2048;
/// Credentials issued at once with `--credentials ahead`.
const PREPARE_CONCURRENCY: usize = 64;
/// Longest wait for credentials issued ahead to reach the nodes of their
/// claims' home regions; the paced phase starts anyway after it (a node cut
/// off by a partition may never get them), with a warning.
const CREDENTIALS_WAIT_MAX: Duration = Duration::from_secs(30);
/// Pause between looks at the nodes' credential counts.
const CREDENTIALS_POLL: Duration = Duration::from_millis(250);
/// Nodes of the entry node's region a claim is submitted to, the entry node first, while
/// they are unreachable.
const SUBMIT_ATTEMPTS_MAX: usize = 3;
/// Keys drawn per claimant when `--region` asks for a home region.
const ROUTE_ATTEMPTS_MAX: usize = 256;
/// First and longest pause between polls of one claim.
const POLL_FIRST: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_millis(1000);
/// How often the progress line is redrawn on a terminal, and printed otherwise.
const PROGRESS_TTY: Duration = Duration::from_millis(200);
const PROGRESS_PLAIN: Duration = Duration::from_secs(5);
/// Distinct error messages kept for the report.
const ERRORS_KEPT: usize = 5;

/// Where each claimant's credential and claim are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Entry {
    /// A node of the claim's home region.
    Home,
    /// Any running node.
    Random,
}

/// When each claimant's credential is issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Credentials {
    /// All of them before the paced phase, which starts once every node
    /// holds them: the rate and latencies are those of claims alone.
    Ahead,
    /// Each just before its claim, inside the paced phase.
    Inline,
}

/// The status a claim is followed until.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Wait {
    Regional,
    Global,
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub claims: u64,
    pub rate: f64,
    pub region: Option<String>,
    pub entry: Entry,
    pub wait: Wait,
    pub timeout: Duration,
    pub concurrency: usize,
    pub distribution: Option<String>,
    pub credentials: Credentials,
    /// Claimants are clients of this region: they submit at its nodes, wherever their claims'
    /// home is (`region` filters by home instead).
    pub entry_region: Option<String>,
    /// The revocation race: three claims of every four have their credential revoked, dated
    /// just before the claim was submitted, at one moment each (`RevokeAt`); the report lists
    /// every claim under `race`.
    pub race: bool,
}

/// When a race claim's credential is revoked (always dated just before its submission).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeAt {
    /// At the entry node, before the claim is submitted there.
    Before,
    /// At a node of another region, as soon as the entry node has answered the submission: the
    /// claim is in flight and the revocation reaches its home region by gossip, late.
    InFlight,
    /// At a node of another region once the claim is certified (`regional`).
    Certified,
    /// Not revoked: the claims the race must leave unaffected.
    Never,
}

impl RevokeAt {
    fn of(index: u64) -> Self {
        match index % 4 {
            0 => RevokeAt::Before,
            1 => RevokeAt::InFlight,
            2 => RevokeAt::Certified,
            _ => RevokeAt::Never,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RevokeAt::Before => "before submission",
            RevokeAt::InFlight => "in flight",
            RevokeAt::Certified => "once certified",
            RevokeAt::Never => "never",
        }
    }
}

/// One claim of the revocation race.
#[derive(Clone, Debug)]
struct Raced {
    /// Empty when the submission was refused.
    id: String,
    revoke: RevokeAt,
    /// The entry node's status of the claim when the revocation was sent: "none" before its
    /// submission, "" when it was never sent.
    status_when_revoked: String,
    /// The revocation was refused by the node it was sent to (or not sent).
    revocation_error: Option<String>,
}

#[derive(Clone)]
struct Target {
    name: String,
    region: String,
    channel: Channel,
}

struct Shared {
    targets: Vec<Target>,
    network: NetworkId,
    issuer: SigningKey,
    distribution: pb::DistributionInfo,
    distribution_id: Vec<u8>,
    opts: LoadOptions,
}

#[derive(Default)]
struct Progress {
    started: u64,
    finished: u64,
    counts: BTreeMap<String, u64>,
    latencies_ms: Vec<u64>,
    global_ms: Vec<u64>,
    provisional_ms: Vec<u64>,
    errors: BTreeMap<String, u64>,
    /// A few claims still unsettled at the timeout, with their entry node.
    unsettled: Vec<String>,
    /// The slowest settled claims: latency, then id and entry node.
    slowest: Vec<(u64, String)>,
    /// Ids of the claims the entry node answered `regional` (or `global`) for.
    acknowledged: Vec<String>,
    /// The latest wall-clock time (ms) at which a claim reached the awaited step.
    last_reached_at: u64,
    race: Vec<Raced>,
}

/// A claimant whose credential was submitted: who claims, and where.
struct Claimant {
    key: SigningKey,
    home_region: String,
    entry: usize,
    attestation_id: [u8; 32],
}

/// What became of one claim.
struct Outcome {
    status: String,
    latency_ms: Option<u64>,
    /// Submission to `global` at the entry node, when followed that far.
    global_ms: Option<u64>,
    /// Submission to `provisional` at the entry node, when the entry node
    /// owns the claim's bucket (only the owner sees that step).
    provisional_ms: Option<u64>,
    error: Option<String>,
    /// The claim's id when it was still unsettled at the timeout.
    unsettled: Option<String>,
    /// The claim's id and entry node, to look a slow one up.
    named: String,
    /// The entry node's wall-clock time (ms) of the awaited step.
    reached_at: Option<u64>,
    race: Option<Raced>,
}

pub async fn load(layout: &Layout, opts: LoadOptions) -> anyhow::Result<Value> {
    Ok(load_acknowledged(layout, opts).await?.0)
}

/// [`load`], and the ids of every claim an entry node acknowledged as
/// certified (`regional` or `global` in its answer).
pub async fn load_acknowledged(layout: &Layout, opts: LoadOptions) -> anyhow::Result<(Value, Vec<String>)> {
    let (report, acknowledged, _) = run(connect(layout, opts).await?, None).await?;
    Ok((report, acknowledged))
}

/// A load whose credentials are all issued and held by every node that needs
/// them; [`Prepared::run`] is its paced phase. Loads prepared one after another
/// and run together measure claims alone: no credential gossip of any of them
/// falls inside another's measured phase.
pub struct Prepared {
    shared: Arc<Shared>,
    ready: (Arc<Mutex<Progress>>, Vec<Claimant>, f64),
}

/// Connects and issues every credential of `opts` (whatever its `credentials`).
pub async fn prepared(layout: &Layout, mut opts: LoadOptions) -> anyhow::Result<Prepared> {
    opts.credentials = Credentials::Ahead;
    let shared = connect(layout, opts).await?;
    let progress = Arc::new(Mutex::new(Progress::default()));
    let started = Instant::now();
    let claimants = prepare_all(&shared, &progress).await?;
    Ok(Prepared {
        shared,
        ready: (progress, claimants, started.elapsed().as_secs_f64()),
    })
}

impl Prepared {
    /// The paced phase: the same report as [`load`], and every latency to the
    /// awaited step (ms, sorted), to pool with other loads'.
    pub async fn run(self) -> anyhow::Result<(Value, Vec<u64>)> {
        let (report, _, latencies) = run(self.shared, Some(self.ready)).await?;
        Ok((report, latencies))
    }
}

async fn connect(layout: &Layout, opts: LoadOptions) -> anyhow::Result<Arc<Shared>> {
    if opts.claims == 0 {
        bail!("--claims must be at least 1");
    }
    if !(opts.rate > 0.0 && opts.rate.is_finite()) {
        bail!("--rate must be a positive number of claims per second");
    }
    let state = layout.load_state()?;
    if let Some(r) = &opts.region
        && !state.regions().contains(r)
    {
        let all: Vec<String> = state.regions().into_iter().collect();
        bail!("--region {r}: this testnet's regions are {}", all.join(", "));
    }
    let mut targets = Vec::new();
    for n in state.nodes.iter().filter(|n| n.state == RunState::Running) {
        targets.push(Target {
            name: n.name.clone(),
            region: n.region.clone(),
            channel: rpc::channel(&n.rpc)?,
        });
    }
    if targets.is_empty() {
        bail!("no node of this testnet is running: `credence-testnet status` shows why");
    }
    let network = parse_hex32(&state.network_id)
        .map(NetworkId)
        .ok_or_else(|| anyhow!("state.json holds a malformed network id"))?;
    let issuer_path = layout.dir.join("keys").join("issuer.key");
    let issuer =
        credence::keys::load(&issuer_path).with_context(|| format!("cannot load {}", issuer_path.display()))?;
    let distribution = pick_distribution(&targets, opts.distribution.as_deref()).await?;
    let distribution_id = hex::decode(&distribution.id).map_err(|_| {
        anyhow!(
            "the node listed a distribution with a malformed id {:?}",
            distribution.id
        )
    })?;
    let shared = Arc::new(Shared {
        targets,
        network,
        issuer,
        distribution,
        distribution_id,
        opts,
    });
    Ok(shared)
}

async fn pick_distribution(targets: &[Target], wanted: Option<&str>) -> anyhow::Result<pb::DistributionInfo> {
    let mut last_error = None;
    for t in targets {
        match rpc::escrow(&t.channel)
            .list_distributions(pb::ListDistributionsRequest {})
            .await
        {
            Ok(list) => {
                let list = list.into_inner().distributions;
                let found = match wanted {
                    Some(id) => list.iter().find(|d| d.id == id || d.name == id).cloned(),
                    None => list.first().cloned(),
                };
                return found.ok_or_else(|| match wanted {
                    Some(id) => anyhow!("{} knows no distribution {id:?}", t.name),
                    None => anyhow!("{} knows no distribution to claim from", t.name),
                });
            }
            Err(e) => last_error = Some(format!("{}: {}", t.name, rpc::describe(&e))),
        }
    }
    bail!("no node listed its distributions ({})", last_error.unwrap_or_default())
}

/// The paced phase, after issuing the credentials ahead when asked to (unless
/// `prepared` already holds them).
async fn run(
    shared: Arc<Shared>,
    prepared: Option<(Arc<Mutex<Progress>>, Vec<Claimant>, f64)>,
) -> anyhow::Result<(Value, Vec<String>, Vec<u64>)> {
    let opts = &shared.opts;
    let (progress, mut ready, prepare_s) = match (prepared, opts.credentials) {
        (Some((progress, claimants, s)), _) => (progress, Some(claimants), s),
        (None, Credentials::Ahead) => {
            let progress = Arc::new(Mutex::new(Progress::default()));
            let started = Instant::now();
            let claimants = prepare_all(&shared, &progress).await?;
            (progress, Some(claimants), started.elapsed().as_secs_f64())
        }
        (None, Credentials::Inline) => (Arc::new(Mutex::new(Progress::default())), None, 0.0),
    };
    let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let started = Instant::now();
    let paced_started_ms = credence::node::now_ms();
    let reporter = tokio::spawn(report_progress(progress.clone(), opts.claims));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / opts.rate));
    let mut tasks = Vec::new();
    for index in 0..opts.claims {
        let claimant = match ready.as_mut() {
            Some(ready) => match ready.pop() {
                Some(c) => Some(c),
                // Claimants whose credential could not be issued were
                // counted as errors already.
                None => break,
            },
            None => None,
        };
        ticker.tick().await;
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| anyhow!("the load generator stopped"))?;
        lock(&progress).started += 1;
        let (shared, progress) = (shared.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let revoke = if shared.opts.race {
                RevokeAt::of(index)
            } else {
                RevokeAt::Never
            };
            let outcome = one_claim(&shared, claimant, revoke).await;
            lock(&progress).record(outcome);
            drop(permit);
        }));
    }
    let sending = started.elapsed();
    futures::future::join_all(tasks).await;
    reporter.abort();
    if std::io::stderr().is_terminal() {
        eprint!("\r{:80}\r", "");
    }
    let elapsed = started.elapsed();
    let p = lock(&progress);
    let mut latencies = p.latencies_ms.clone();
    latencies.sort_unstable();
    let mut global = p.global_ms.clone();
    global.sort_unstable();
    let mut provisional = p.provisional_ms.clone();
    provisional.sort_unstable();
    let answered = p.finished.saturating_sub(p.counts.get("error").copied().unwrap_or(0));
    // Clients of a region whose claims home elsewhere may all be refused (a pooled budget
    // run dry): that is their report, not a failure to reach the network.
    if answered == 0 && opts.entry_region.is_none() {
        let first = p.errors.keys().next().cloned().unwrap_or_default();
        bail!("no claim was accepted by any node: {first}");
    }
    let d = &shared.distribution;
    let report = json!({
        "submitted": opts.claims,
        "counts": p.counts,
        "latency_to_regional_ms": {
            "count": latencies.len(),
            "p50": percentile(&latencies, 0.50),
            "p99": percentile(&latencies, 0.99),
            "max": latencies.last(),
        },
        "latency_to_global_ms": {
            "count": global.len(),
            "p50": percentile(&global, 0.50),
            "p99": percentile(&global, 0.99),
            "max": global.last(),
        },
        "latency_to_provisional_ms": {
            "count": provisional.len(),
            "p50": percentile(&provisional, 0.50),
            "p99": percentile(&provisional, 0.99),
            "max": provisional.last(),
        },
        "p50_ms": percentile(&latencies, 0.50),
        "p99_ms": percentile(&latencies, 0.99),
        "errors": p.errors,
        "unsettled_examples": p.unsettled,
        "slowest_examples": p.slowest.iter().rev().map(|(ms, named)| json!({"latency_ms": ms, "claim": named})).collect::<Vec<_>>(),
        "distribution": {"id": d.id, "name": d.name, "amount_per_claim": d.amount_per_claim},
        "entry": format!("{:?}", opts.entry).to_lowercase(),
        "region": opts.region,
        "credentials": format!("{:?}", opts.credentials).to_lowercase(),
        "prepare_s": prepare_s,
        "paced_started_ms": paced_started_ms,
        "last_reached_ms": (p.last_reached_at > 0).then_some(p.last_reached_at),
        "rate_asked": opts.rate,
        "rate_achieved": opts.claims as f64 / sending.as_secs_f64().max(1e-3),
        "duration_s": elapsed.as_secs_f64(),
    });
    let mut report = report;
    if opts.race {
        report["race"] = p
            .race
            .iter()
            .map(|r| {
                json!({
                    "id": r.id,
                    "revoked": r.revoke.name(),
                    "status_when_revoked": r.status_when_revoked,
                    "revocation_error": r.revocation_error,
                })
            })
            .collect();
    }
    Ok((report, p.acknowledged.clone(), latencies))
}

impl Progress {
    fn record(&mut self, outcome: Outcome) {
        if matches!(outcome.status.as_str(), "regional" | "global")
            && let Some(id) = outcome.named.split(' ').next()
        {
            self.acknowledged.push(id.to_string());
        }
        self.finished += 1;
        *self.counts.entry(outcome.status).or_default() += 1;
        if let Some(r) = outcome.race {
            self.race.push(r);
        }
        if let Some(at) = outcome.reached_at {
            self.last_reached_at = self.last_reached_at.max(at);
        }
        if let Some(l) = outcome.latency_ms {
            self.latencies_ms.push(l);
            if self.slowest.len() < ERRORS_KEPT || self.slowest.first().is_some_and(|(fastest, _)| l > *fastest) {
                self.slowest.push((l, outcome.named));
                self.slowest.sort_unstable();
                if self.slowest.len() > ERRORS_KEPT {
                    self.slowest.remove(0);
                }
            }
        }
        if let Some(g) = outcome.global_ms {
            self.global_ms.push(g);
        }
        if let Some(g) = outcome.provisional_ms {
            self.provisional_ms.push(g);
        }
        if let Some(e) = outcome.error
            && (self.errors.len() < ERRORS_KEPT || self.errors.contains_key(&e))
        {
            *self.errors.entry(e).or_default() += 1;
        }
        if let Some(id) = outcome.unsettled
            && self.unsettled.len() < ERRORS_KEPT
        {
            self.unsettled.push(id);
        }
    }
}

/// Issues every claimant's credential, then waits until every node holds
/// them all. Claimants whose credential could not be issued are recorded as
/// errors; the others are returned.
async fn prepare_all(shared: &Arc<Shared>, progress: &Arc<Mutex<Progress>>) -> anyhow::Result<Vec<Claimant>> {
    let before = attestation_counts(&shared.targets).await;
    let permits = Arc::new(Semaphore::new(PREPARE_CONCURRENCY));
    let mut tasks = Vec::new();
    for _ in 0..shared.opts.claims {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| anyhow!("the load generator stopped"))?;
        let one = shared.clone();
        tasks.push(tokio::spawn(async move {
            let prepared = prepare(&one).await;
            drop(permit);
            prepared
        }));
        let issued = tasks.len();
        if issued % 500 == 0 {
            eprintln!("issuing credentials: {issued}/{}", shared.opts.claims);
        }
    }
    let mut ready = Vec::new();
    for task in futures::future::join_all(tasks).await {
        match task {
            Ok(Ok(c)) => ready.push(c),
            Ok(Err(e)) => {
                let mut p = lock(progress);
                p.started += 1;
                p.record(failed(format!("{e:#}")));
            }
            Err(e) => bail!("a credential task failed: {e}"),
        }
    }
    // Every node of a region must hold the credentials of the claims homed
    // there (it may be their owner, a voter or the entry node).
    let mut needed: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &ready {
        *needed.entry(c.home_region.as_str()).or_default() += 1;
    }
    let deadline = Instant::now() + CREDENTIALS_WAIT_MAX;
    let mut said = Instant::now();
    loop {
        let now = attestation_counts(&shared.targets).await;
        let behind: Vec<String> = shared
            .targets
            .iter()
            .zip(before.iter().zip(&now))
            .filter_map(|(t, (b, n))| {
                let want = needed.get(t.region.as_str()).copied().unwrap_or(0);
                let got = n.saturating_sub(*b);
                (got < want).then(|| format!("{} {got}/{want}", t.name))
            })
            .collect();
        if behind.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "warning: after {CREDENTIALS_WAIT_MAX:?} some nodes still lack credentials issued ahead ({}); claiming anyway",
                behind.join(", ")
            );
            break;
        }
        if said.elapsed() >= PROGRESS_PLAIN / 2 {
            eprintln!(
                "waiting for credentials at their home regions' nodes: {}",
                behind.join(", ")
            );
            said = Instant::now();
        }
        tokio::time::sleep(CREDENTIALS_POLL).await;
    }
    Ok(ready)
}

/// Each target's attestation count (0 when it does not answer).
async fn attestation_counts(targets: &[Target]) -> Vec<u64> {
    let asks = targets.iter().map(|t| async move {
        rpc::node(&t.channel)
            .status(pb::StatusRequest {})
            .await
            .map(|r| r.into_inner().attestations)
            .unwrap_or(0)
    });
    futures::future::join_all(asks).await
}

fn lock(p: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `q` quantile of sorted values (nearest rank), or null when empty.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

async fn report_progress(progress: Arc<Mutex<Progress>>, total: u64) {
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(if tty { PROGRESS_TTY } else { PROGRESS_PLAIN });
    tick.tick().await;
    loop {
        tick.tick().await;
        let line = {
            let p = lock(&progress);
            let width: usize = 30;
            let filled = usize::try_from(p.finished.saturating_mul(width as u64) / total.max(1)).unwrap_or(width);
            let counts: Vec<String> = p.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            format!(
                "[{}{}] {}/{} sent, {} done  {}",
                "#".repeat(filled.min(width)),
                ".".repeat(width.saturating_sub(filled)),
                p.started,
                total,
                p.finished,
                counts.join(", ")
            )
        };
        if tty {
            eprint!("\r{line:<100}");
        } else {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
    }
}

fn failed(error: String) -> Outcome {
    Outcome {
        status: "error".into(),
        latency_ms: None,
        global_ms: None,
        provisional_ms: None,
        error: Some(error),
        unsettled: None,
        named: String::new(),
        reached_at: None,
        race: None,
    }
}

async fn one_claim(shared: &Shared, claimant: Option<Claimant>, revoke: RevokeAt) -> Outcome {
    let claimant = match claimant {
        Some(c) => c,
        None => match prepare(shared).await {
            Ok(c) => c,
            Err(e) => return failed(format!("{e:#}")),
        },
    };
    let mut raced = shared.opts.race.then(|| Raced {
        id: String::new(),
        revoke,
        status_when_revoked: String::new(),
        revocation_error: None,
    });
    let mut outcome = match try_claim(shared, claimant, raced.as_mut()).await {
        Ok(o) => o,
        Err(e) => failed(format!("{e:#}")),
    };
    outcome.race = raced;
    outcome
}

/// Revokes a race claim's credential at `target`, dated `revoked_at`, noting the claim's
/// status then and any refusal.
async fn revoke(
    shared: &Shared,
    raced: &mut Raced,
    status: &str,
    target: &Target,
    attestation_id: [u8; 32],
    revoked_at: u64,
) {
    raced.status_when_revoked = status.to_owned();
    let body = pb::Revocation {
        issuer: shared.issuer.verifying_key().to_bytes().to_vec(),
        attestation_id: attestation_id.to_vec(),
        revoked_at,
        reason: "credence-testnet revocation race".into(),
    };
    let (envelope, _) = seal(&shared.network, &shared.issuer, Kind::Revocation, body.encode_to_vec());
    raced.revocation_error = rpc::node(&target.channel)
        .submit_revocation(pb::SubmitRequest { envelope })
        .await
        .err()
        .map(|e| format!("SubmitRevocation on {}: {}", target.name, rpc::describe(&e)));
}

/// A running node outside `region` (the entry node when there is none).
fn elsewhere<'a>(shared: &'a Shared, region: &str, entry: &'a Target) -> &'a Target {
    pick((0..shared.targets.len()).filter(|i| shared.targets[*i].region != region))
        .and_then(|i| shared.targets.get(i))
        .unwrap_or(entry)
}

fn pick(targets: impl Iterator<Item = usize>) -> Option<usize> {
    let all: Vec<usize> = targets.collect();
    if all.is_empty() {
        return None;
    }
    all.get(rand::random_range(0..all.len())).copied()
}

/// A new claimant: its key, its claim's home, its entry node, and its
/// credential submitted there.
async fn prepare(shared: &Shared) -> anyhow::Result<Claimant> {
    let opts = &shared.opts;
    let targets = &shared.targets;
    let mut attempt = 0;
    let (key, route) = loop {
        attempt += 1;
        let key = credence::keys::generate();
        let claimant = hex::encode(key.verifying_key().to_bytes());
        let asked = &targets[pick(0..targets.len()).ok_or_else(|| anyhow!("no running node"))?];
        let route = rpc::escrow(&asked.channel)
            .route(pb::RouteRequest {
                distribution_id: shared.distribution.id.clone(),
                claimant,
            })
            .await
            .map_err(|e| anyhow!("Route on {}: {}", asked.name, rpc::describe(&e)))?
            .into_inner();
        match &opts.region {
            Some(r) if *r != route.region => {
                if attempt >= ROUTE_ATTEMPTS_MAX {
                    bail!("no claimant homed in region {r} after {ROUTE_ATTEMPTS_MAX} keys");
                }
            }
            _ => break (key, route),
        }
    };
    let entry = match (&opts.entry_region, opts.entry) {
        (Some(r), _) => pick((0..targets.len()).filter(|i| targets[*i].region == *r))
            .ok_or_else(|| anyhow!("no running node in region {r}"))?,
        (None, Entry::Home) => pick((0..targets.len()).filter(|i| targets[*i].region == route.region))
            .ok_or_else(|| anyhow!("no running node in home region {}", route.region))?,
        (None, Entry::Random) => pick(0..targets.len()).ok_or_else(|| anyhow!("no running node"))?,
    };
    let attestation = pb::Attestation {
        issuer: shared.issuer.verifying_key().to_bytes().to_vec(),
        subject: key.verifying_key().to_bytes().to_vec(),
        schema: shared.distribution.schema.clone(),
        data: b"credence-testnet load".to_vec(),
        issued_at: credence::node::now_ms(),
        expires_at: 0,
        nonce: rand::random(),
    };
    let (envelope, attestation_id) = seal(
        &shared.network,
        &shared.issuer,
        Kind::Attestation,
        attestation.encode_to_vec(),
    );
    let target = &targets[entry];
    rpc::node(&target.channel)
        .submit_attestation(pb::SubmitRequest { envelope })
        .await
        .map_err(|e| anyhow!("SubmitAttestation on {}: {}", target.name, rpc::describe(&e)))?;
    Ok(Claimant {
        key,
        home_region: route.region,
        entry,
        attestation_id: attestation_id.0,
    })
}

async fn try_claim(shared: &Shared, claimant: Claimant, mut race: Option<&mut Raced>) -> anyhow::Result<Outcome> {
    let opts = &shared.opts;
    let Claimant {
        key,
        entry,
        attestation_id,
        home_region,
    } = claimant;
    let entry = &shared.targets[entry];
    let claimant = key.verifying_key().to_bytes();
    let claim = pb::Claim {
        distribution_id: shared.distribution_id.clone(),
        claimant: claimant.to_vec(),
        attestation_id: attestation_id.to_vec(),
        amount: shared.distribution.amount_per_claim,
        recipient: vec![],
        created_at: credence::node::now_ms(),
        nonce: rand::random(),
    };
    let (envelope, _) = seal(&shared.network, &key, Kind::Claim, claim.encode_to_vec());
    let submitted_at = credence::node::now_ms();
    // A race's revocation is dated just before the submission, so before any batch timestamp
    // the claim can get.
    let revoked_at = submitted_at.saturating_sub(1);
    if let Some(r) = race.as_deref_mut()
        && r.revoke == RevokeAt::Before
    {
        revoke(shared, r, "none", entry, attestation_id, revoked_at).await;
    }
    let (mut entry, mut escrow, first) = submit_failing_over(shared, entry, envelope).await?;
    if let Some(r) = race.as_deref_mut() {
        r.id = first.id.clone();
        if r.revoke == RevokeAt::InFlight {
            let to = elsewhere(shared, &home_region, entry);
            revoke(shared, r, &first.status, to, attestation_id, revoked_at).await;
        }
    }
    let deadline = Instant::now() + opts.timeout;
    let mut pause = POLL_FIRST;
    let mut current = first;
    loop {
        let named = format!("{} at {}", current.id, entry.name);
        if let Some(outcome) = settled(&current, opts.wait, submitted_at, &named) {
            if let Some(r) = race.as_deref_mut()
                && r.revoke == RevokeAt::Certified
                && matches!(current.status.as_str(), "regional" | "global")
            {
                let to = elsewhere(shared, &home_region, entry);
                revoke(shared, r, &current.status, to, attestation_id, revoked_at).await;
            }
            return Ok(outcome);
        }
        if Instant::now() >= deadline {
            return Ok(Outcome {
                unsettled: Some(named.clone()),
                named,
                status: if current.status.is_empty() {
                    "unknown".into()
                } else {
                    current.status.clone()
                },
                latency_ms: None,
                global_ms: None,
                provisional_ms: None,
                error: None,
                reached_at: None,
                race: None,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(POLL_MAX);
        // A poll that fails (node busy, restarting) is retried until the deadline; one the node
        // cannot answer at all goes to the next node of its region (any of them knows the claim
        // once it is certified).
        match escrow.get_claim(pb::GetClaimRequest { id: current.id.clone() }).await {
            Ok(answer) => current = answer.into_inner(),
            Err(e) if e.code() == tonic::Code::Unavailable => {
                let region: Vec<&Target> = shared.targets.iter().filter(|t| t.region == entry.region).collect();
                if let Some(next) = region
                    .iter()
                    .position(|t| t.name == entry.name)
                    .and_then(|i| region.get((i + 1) % region.len()))
                {
                    entry = next;
                    escrow = rpc::escrow(&entry.channel);
                }
            }
            Err(_) => {}
        }
    }
}

/// Submits a claim at `entry`; when that node is unreachable, at the other nodes of its
/// region in turn, as a client fails over (a claim is idempotent by its id). Returns the node
/// that answered, its client and the answer.
async fn submit_failing_over<'a>(
    shared: &'a Shared,
    entry: &'a Target,
    envelope: Vec<u8>,
) -> anyhow::Result<(&'a Target, EscrowClient, pb::ClaimStatus)> {
    let fallbacks = shared
        .targets
        .iter()
        .filter(|t| t.region == entry.region && t.name != entry.name);
    let mut last = None;
    for target in std::iter::once(entry).chain(fallbacks).take(SUBMIT_ATTEMPTS_MAX) {
        let mut escrow = rpc::escrow(&target.channel);
        match escrow
            .submit_claim(pb::SubmitRequest {
                envelope: envelope.clone(),
            })
            .await
        {
            Ok(answer) => return Ok((target, escrow, answer.into_inner())),
            Err(e) if matches!(e.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) => {
                last = Some(anyhow!("SubmitClaim on {}: {}", target.name, rpc::describe(&e)));
            }
            Err(e) => bail!("SubmitClaim on {}: {}", target.name, rpc::describe(&e)),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no node to submit the claim to")))
}

/// The outcome when a claim has reached what is awaited (or cannot).
fn settled(c: &pb::ClaimStatus, wait: Wait, submitted_at: u64, named: &str) -> Option<Outcome> {
    let done = match c.status.as_str() {
        "rejected" | "disputed" | "global" => true,
        "regional" => wait == Wait::Regional,
        _ => false,
    };
    if !done {
        return None;
    }
    let reached = if c.regional_at > 0 { c.regional_at } else { c.global_at };
    Some(Outcome {
        status: c.status.clone(),
        latency_ms: (reached > 0 && c.status != "rejected").then(|| reached.saturating_sub(submitted_at)),
        global_ms: (wait == Wait::Global && c.global_at > 0).then(|| c.global_at.saturating_sub(submitted_at)),
        provisional_ms: (c.provisional_at > 0).then(|| c.provisional_at.saturating_sub(submitted_at)),
        error: (c.status == "rejected").then(|| format!("rejected: {}", c.reason)),
        unsettled: None,
        named: named.to_string(),
        reached_at: (reached > 0 && c.status != "rejected").then_some(reached),
        race: None,
    })
}

/// The final table for humans.
pub fn print_report(v: &Value) {
    outln!(
        "load: {} claims on distribution {} ({}), entry {}, asked {:.0}/s, achieved {:.1}/s, {:.1} s",
        v["submitted"],
        v["distribution"]["name"].as_str().unwrap_or(""),
        v["distribution"]["id"]
            .as_str()
            .map(|s| s.get(..12).unwrap_or(s))
            .unwrap_or(""),
        v["entry"].as_str().unwrap_or(""),
        v["rate_asked"].as_f64().unwrap_or(0.0),
        v["rate_achieved"].as_f64().unwrap_or(0.0),
        v["duration_s"].as_f64().unwrap_or(0.0),
    );
    outln!("{:<12} {:>8}", "STATUS", "CLAIMS");
    for (status, n) in v["counts"].as_object().into_iter().flatten() {
        outln!("{status:<12} {n:>8}");
    }
    let l = &v["latency_to_regional_ms"];
    let ms = |x: &Value| x.as_u64().map(|n| format!("{n} ms")).unwrap_or_else(|| "-".into());
    outln!(
        "latency to regional over {} claims: p50 {}, p99 {}, max {}",
        l["count"],
        ms(&l["p50"]),
        ms(&l["p99"]),
        ms(&l["max"])
    );
    for (e, n) in v["errors"].as_object().into_iter().flatten() {
        outln!("error ({n}x): {}", e);
    }
    for u in v["unsettled_examples"].as_array().into_iter().flatten() {
        outln!("unsettled at the timeout: {}", u.as_str().unwrap_or(""));
    }
    for s in v["slowest_examples"].as_array().into_iter().flatten() {
        outln!(
            "slow: {} ms, {} (`credence claim-status ID` on each node of its region shows where the time went)",
            s["latency_ms"],
            s["claim"].as_str().unwrap_or("")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn a_claim_settles_at_the_awaited_status() {
        let c = |status: &str, regional_at: u64| pb::ClaimStatus {
            status: status.into(),
            regional_at,
            ..pb::ClaimStatus::default()
        };
        assert!(settled(&c("provisional", 0), Wait::Regional, 0, "").is_none());
        assert_eq!(
            settled(&c("regional", 1_250), Wait::Regional, 1_000, "").and_then(|o| o.latency_ms),
            Some(250)
        );
        assert!(settled(&c("regional", 1_250), Wait::Global, 1_000, "").is_none());
        assert!(settled(&c("rejected", 0), Wait::Global, 0, "").is_some_and(|o| o.error.is_some()));
    }

    #[test]
    fn the_report_keeps_the_slowest_claims_by_name() {
        let mut progress = Progress::default();
        for ms in [30, 10, 70, 20, 60, 50, 40, 5] {
            progress.record(Outcome {
                status: "regional".into(),
                latency_ms: Some(ms),
                global_ms: None,
                provisional_ms: None,
                error: None,
                unsettled: None,
                named: format!("c{ms} at eu-0"),
                reached_at: Some(ms),
                race: None,
            });
        }
        let kept: Vec<u64> = progress.slowest.iter().map(|(ms, _)| *ms).collect();
        assert_eq!(kept, vec![30, 40, 50, 60, 70]);
        assert_eq!(progress.slowest.last().map(|(_, n)| n.as_str()), Some("c70 at eu-0"));
        assert_eq!(progress.last_reached_at, 70);
    }
}
