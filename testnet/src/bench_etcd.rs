//! The exactly-once claim workload against a 3-member etcd cluster on
//! loopback, for `credence-testnet bench vs-etcd`.
//!
//! The fairest client a careful etcd user would write: the budget split into
//! one key per bucket, one writer per bucket key, and each writer taking every
//! claim queued for its bucket into one transaction — every slot key absent
//! AND the bucket key unchanged since it was read → put the slot keys and the
//! bucket's new remainder. On a failed compare the transaction's failure
//! branch returns the bucket's current value and which slots exist, and the
//! writer retries with that. Claims arrive open-loop: each has a scheduled
//! time and is queued then whether or not earlier ones have committed, and
//! its latency runs from the scheduled time to the commit.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::etcd_pb as pb;
use crate::etcd_pb::kv_client::KvClient;
use anyhow::{Context, anyhow, bail};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::procs;

/// Members of the etcd cluster.
pub const MEMBERS: usize = 3;
/// Backend quota given to each member: far above what a run writes, so no
/// row ends in etcd's "database space exceeded" alarm.
const QUOTA_BACKEND_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// Most operations in one transaction, passed to etcd as `--max-txn-ops`
/// (its default, 128, would cap a batch at 127 claims).
const TXN_OPS_MAX: usize = 4096;
/// Most claims one writer puts in one transaction (two compares and puts
/// each, plus the bucket's compare and put, stay under `TXN_OPS_MAX`).
const TXN_CLAIMS_MAX: usize = 1024;
/// Largest request etcd accepts, passed as `--max-request-bytes`: a full
/// batch of slot keys is well under it.
const REQUEST_BYTES_MAX: usize = 8 * 1024 * 1024;
/// How long the cluster gets to elect a leader and answer on every member.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between readiness probes.
const READY_POLL: Duration = Duration::from_millis(200);
/// Attempts at one transaction that fails at the transport (not a compare)
/// before its claims are counted as lost.
const TXN_ATTEMPTS_MAX: usize = 5;
/// Pause after a transport error before the transaction is sent again.
const TXN_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long queued claims may take to drain after the schedule ends; what
/// is still queued then is counted as not committed.
const DRAIN_MAX: Duration = Duration::from_secs(60);
/// Longest wait for any one answer from etcd.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A running etcd cluster; dropping it kills every member.
pub struct Cluster {
    members: Vec<std::process::Child>,
    pub clients: Vec<String>,
}

impl Cluster {
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(std::process::Child::id).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = procs::signal(m.id(), Signal::SIGKILL);
            let _ = m.wait();
        }
    }
}

/// The `etcd` binary on `PATH`.
pub fn binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("no `etcd` on PATH: install Debian's etcd-server (apt-get install etcd-server)"))
}

/// Ports free on loopback right now (bound, read, released together so they differ).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot find free loopback ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<anyhow::Result<Vec<u16>>>()
}

/// Starts a new cluster with one data directory per member under `dir`
/// (default fsync on), and waits until every member answers. Each member's
/// pid is appended to `pid_file`, so a wrapper can clean up after a crash.
pub async fn start(dir: &Path, pid_file: &Path) -> anyhow::Result<Cluster> {
    let etcd = binary()?;
    let ports = free_ports(MEMBERS * 2)?;
    let (client_ports, peer_ports) = ports.split_at(MEMBERS);
    let initial: Vec<String> = peer_ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}"))
        .collect();
    let initial = initial.join(",");
    let token = format!("credence-bench-{}", std::process::id());
    let mut cluster = Cluster {
        members: Vec::new(),
        clients: Vec::new(),
    };
    for (i, (client, peer)) in client_ports.iter().zip(peer_ports).enumerate() {
        let data = dir.join(format!("m{i}"));
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let args: Vec<String> = vec![
            "--name".into(),
            format!("m{i}"),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen-client-urls".into(),
            client_url.clone(),
            "--advertise-client-urls".into(),
            client_url.clone(),
            "--listen-peer-urls".into(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".into(),
            peer_url,
            "--initial-cluster".into(),
            initial.clone(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            token.clone(),
            "--quota-backend-bytes".into(),
            QUOTA_BACKEND_BYTES.to_string(),
            "--max-txn-ops".into(),
            TXN_OPS_MAX.to_string(),
            "--max-request-bytes".into(),
            REQUEST_BYTES_MAX.to_string(),
            "--log-level".into(),
            "warn".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = procs::spawn(&etcd, &args, &dir.join(format!("m{i}.log")))?;
        append_pid(pid_file, child.id())?;
        cluster.members.push(child);
        cluster.clients.push(client_url);
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    for url in &cluster.clients {
        let mut kv = client(url)?;
        loop {
            let probe = kv
                .range(pb::RangeRequest {
                    key: b"ready".to_vec(),
                    ..Default::default()
                })
                .await;
            match probe {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "etcd member {url} did not answer within {READY_TIMEOUT:?}: {}; its log: {}",
                        e.message(),
                        dir.display()
                    )
                }
                Err(_) => tokio::time::sleep(READY_POLL).await,
            }
        }
    }
    Ok(cluster)
}

fn append_pid(pid_file: &Path, pid: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(pid_file)
        .with_context(|| format!("cannot open {}", pid_file.display()))?;
    writeln!(f, "{pid}").with_context(|| format!("cannot write {}", pid_file.display()))
}

fn client(url: &str) -> anyhow::Result<KvClient<Channel>> {
    let channel = Endpoint::from_shared(url.to_string())
        .map_err(|_| anyhow!("{url:?} is not a URL"))?
        .timeout(REQUEST_TIMEOUT)
        .connect_lazy();
    Ok(KvClient::new(channel))
}

/// One run's workload.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Bucket keys (and writers).
    pub buckets: usize,
    /// Claims scheduled per second.
    pub rate: f64,
    /// Claims in all.
    pub claims: u64,
    /// What each bucket key holds at the start.
    pub bucket_budget: u64,
    /// What each claim takes from its bucket.
    pub amount: u64,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Scheduled time to commit, one per committed claim, in microseconds.
    pub latencies_us: Vec<u64>,
    /// Claims refused because their bucket was spent.
    pub refused: u64,
    /// Claims whose transaction kept failing at the transport.
    pub lost: u64,
    /// Claims still queued when the drain time ran out.
    pub unfinished: u64,
    /// Wall-clock time (ms) the schedule started.
    pub started_ms: u64,
    /// Wall-clock time (ms) of the last commit.
    pub last_commit_ms: u64,
    /// Transactions committed, and compares that failed.
    pub transactions: u64,
    pub compare_failures: u64,
    /// One transport error message, when any.
    pub error: Option<String>,
}

/// A claim waiting for its bucket's writer.
struct Queued {
    slot: Vec<u8>,
    due: Instant,
}

fn bucket_key(b: usize) -> Vec<u8> {
    format!("bucket/{b:04}").into_bytes()
}

/// A bucket key's value: the remaining budget, in decimal.
fn parse_remaining(value: &[u8]) -> anyhow::Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("a bucket key holds {:?}, not a number", String::from_utf8_lossy(value)))
}

fn put(key: Vec<u8>, value: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest { key, value })),
    }
}

fn range(key: Vec<u8>, count_only: bool) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key,
            count_only,
            ..Default::default()
        })),
    }
}

fn compare(key: Vec<u8>, target: pb::compare::CompareTarget, value: pb::compare::TargetUnion) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: target as i32,
        key,
        target_union: Some(value),
    }
}

/// The transaction for a batch: slots absent and the bucket unchanged →
/// put the slots and the new remainder; otherwise read the bucket and
/// count each slot.
fn batch_txn(bucket: &[u8], mod_revision: i64, remaining: u64, amount: u64, slots: &[&[u8]]) -> pb::TxnRequest {
    let mut compares = vec![compare(
        bucket.to_vec(),
        pb::compare::CompareTarget::Mod,
        pb::compare::TargetUnion::ModRevision(mod_revision),
    )];
    let mut success = Vec::with_capacity(slots.len() + 1);
    let mut failure = vec![range(bucket.to_vec(), false)];
    for slot in slots {
        compares.push(compare(
            slot.to_vec(),
            pb::compare::CompareTarget::Create,
            pb::compare::TargetUnion::CreateRevision(0),
        ));
        success.push(put(slot.to_vec(), amount.to_string().into_bytes()));
        failure.push(range(slot.to_vec(), true));
    }
    let spent = amount.saturating_mul(slots.len() as u64);
    success.push(put(
        bucket.to_vec(),
        remaining.saturating_sub(spent).to_string().into_bytes(),
    ));
    pb::TxnRequest {
        compare: compares,
        success,
        failure,
    }
}

/// Runs the workload on `cluster` and returns what it measured.
pub async fn run(cluster: &Cluster, w: &Workload) -> anyhow::Result<Outcome> {
    if w.buckets == 0 || !(w.rate > 0.0 && w.rate.is_finite()) {
        bail!("the etcd workload needs at least one bucket and a positive rate");
    }
    let clients = cluster
        .clients
        .iter()
        .map(|u| client(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Every bucket key starts with its budget.
    let mut first = clients
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("the etcd cluster has no member"))?;
    let setup = pb::TxnRequest {
        compare: vec![],
        success: (0..w.buckets)
            .map(|b| put(bucket_key(b), w.bucket_budget.to_string().into_bytes()))
            .collect(),
        failure: vec![],
    };
    first
        .txn(setup)
        .await
        .map_err(|e| anyhow!("etcd refused the bucket keys: {}", e.message()))?;

    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let mut queues = Vec::new();
    let mut writers = Vec::new();
    for b in 0..w.buckets {
        let (tx, rx) = mpsc::unbounded_channel();
        queues.push(tx);
        let kv = clients
            .get(b % clients.len())
            .cloned()
            .ok_or_else(|| anyhow!("the etcd cluster has no member"))?;
        writers.push(tokio::spawn(writer(kv, bucket_key(b), w.amount, rx, outcome.clone())));
    }
    let t0 = Instant::now();
    lock(&outcome).started_ms = credence::node::now_ms();
    let nonce: u64 = rand::random();
    for i in 0..w.claims {
        let due = t0 + Duration::from_secs_f64(i as f64 / w.rate);
        tokio::time::sleep_until(due).await;
        let bucket = rand::random_range(0..queues.len());
        let slot = format!("slot/{nonce:016x}/{i:012}").into_bytes();
        if let Some(q) = queues.get(bucket) {
            // A writer only stops early after an error it recorded.
            let _ = q.send(Queued { slot, due });
        }
    }
    drop(queues);
    let drained = tokio::time::timeout(DRAIN_MAX, futures::future::join_all(writers)).await;
    let mut o = lock(&outcome).clone();
    match drained {
        Ok(results) => {
            for r in results {
                r.map_err(|e| anyhow!("an etcd writer failed: {e}"))??;
            }
        }
        Err(_) => {
            let done = o.latencies_us.len() as u64 + o.refused + o.lost;
            o.unfinished = w.claims.saturating_sub(done);
        }
    }
    Ok(o)
}

fn lock(o: &Mutex<Outcome>) -> std::sync::MutexGuard<'_, Outcome> {
    o.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One bucket's writer: reads its bucket, then batches whatever is queued.
async fn writer(
    mut kv: KvClient<Channel>,
    bucket: Vec<u8>,
    amount: u64,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    outcome: Arc<Mutex<Outcome>>,
) -> anyhow::Result<()> {
    let read = kv
        .range(pb::RangeRequest {
            key: bucket.clone(),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("cannot read a bucket key: {}", e.message()))?
        .into_inner();
    let kv0 = read.kvs.first().ok_or_else(|| anyhow!("a bucket key is missing"))?;
    let mut mod_revision = kv0.mod_revision;
    let mut remaining = parse_remaining(&kv0.value)?;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < TXN_CLAIMS_MAX {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let mut attempts = 0;
        while !batch.is_empty() {
            let affordable = usize::try_from(remaining / amount.max(1)).unwrap_or(usize::MAX);
            if batch.len() > affordable {
                let refused = batch.split_off(affordable);
                lock(&outcome).refused += refused.len() as u64;
                if batch.is_empty() {
                    break;
                }
            }
            let slots: Vec<&[u8]> = batch.iter().map(|q| q.slot.as_slice()).collect();
            let txn = batch_txn(&bucket, mod_revision, remaining, amount, &slots);
            let answer = match kv.txn(txn).await {
                Ok(a) => a.into_inner(),
                Err(e) => {
                    attempts += 1;
                    if attempts >= TXN_ATTEMPTS_MAX {
                        let mut o = lock(&outcome);
                        o.lost += batch.len() as u64;
                        o.error.get_or_insert_with(|| e.message().to_string());
                        batch.clear();
                        break;
                    }
                    tokio::time::sleep(TXN_RETRY_PAUSE).await;
                    continue;
                }
            };
            let now = Instant::now();
            if answer.succeeded {
                remaining = remaining.saturating_sub(amount.saturating_mul(batch.len() as u64));
                mod_revision = answer.header.map(|h| h.revision).unwrap_or(mod_revision);
                let mut o = lock(&outcome);
                o.transactions += 1;
                o.last_commit_ms = credence::node::now_ms();
                o.latencies_us.extend(
                    batch
                        .iter()
                        .map(|q| now.saturating_duration_since(q.due).as_micros() as u64),
                );
                batch.clear();
                break;
            }
            // The compare failed: learn the bucket's state and which slots
            // are already paid (a commit whose answer was lost), then retry.
            lock(&outcome).compare_failures += 1;
            let mut responses = answer.responses.into_iter().map(|r| r.response);
            let Some(Some(pb::response_op::Response::ResponseRange(b))) = responses.next() else {
                bail!("etcd answered a failed compare without the bucket's range");
            };
            let current = b.kvs.first().ok_or_else(|| anyhow!("a bucket key vanished"))?;
            mod_revision = current.mod_revision;
            remaining = parse_remaining(&current.value)?;
            let mut kept = Vec::with_capacity(batch.len());
            for (q, r) in batch.into_iter().zip(responses) {
                match r {
                    Some(pb::response_op::Response::ResponseRange(s)) if s.count > 0 => {
                        let mut o = lock(&outcome);
                        o.latencies_us
                            .push(now.saturating_duration_since(q.due).as_micros() as u64);
                        o.last_commit_ms = credence::node::now_ms();
                    }
                    _ => kept.push(q),
                }
            }
            batch = kept;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_compares_every_slot_and_the_bucket() {
        let slots: Vec<&[u8]> = vec![b"slot/a", b"slot/b"];
        let txn = batch_txn(b"bucket/0001", 42, 1_000, 100, &slots);
        assert_eq!(txn.compare.len(), 3);
        assert_eq!(
            txn.compare.first().and_then(|c| c.target_union.clone()),
            Some(pb::compare::TargetUnion::ModRevision(42))
        );
        assert!(
            txn.compare
                .iter()
                .skip(1)
                .all(|c| c.target == pb::compare::CompareTarget::Create as i32
                    && c.target_union == Some(pb::compare::TargetUnion::CreateRevision(0)))
        );
        // Two slots and the bucket's new remainder.
        let last = txn.success.last().and_then(|op| op.request.clone());
        assert_eq!(
            last,
            Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: b"bucket/0001".to_vec(),
                value: b"800".to_vec()
            }))
        );
        assert_eq!(txn.success.len(), 3);
        // On failure: the bucket, then a count of each slot.
        assert_eq!(txn.failure.len(), 3);
    }

    #[test]
    fn a_bucket_value_must_be_a_number() {
        assert_eq!(parse_remaining(b"1200").ok(), Some(1200));
        assert!(parse_remaining(b"12x").is_err());
        assert!(parse_remaining(b"").is_err());
    }
}
