//! Wires a node together and owns the actor that applies every object.
//!
//! The actor is the single owner of the protocol state (`CredentialBook`)
//! and the only writer of the store. RPC handlers and the network send it
//! `Command`s over a bounded channel and wait on a `oneshot` reply. It drains
//! commands in groups, applies them, appends what is new to the store and
//! flushes once for every group written since the last flush (group commit).
//! The flush runs while the actor goes on applying; client acknowledgements,
//! votes and escrow messages wait for it: an acknowledged object is durable.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use credence_proto::v1 as pb;

use crate::config::LoadedGenesis;
use crate::core::credentials::{Applied, CredentialBook, CredentialError, CredentialRules, CredentialView};
use crate::core::envelope::{self, Kind, ObjectId, Verified};
use crate::core::validator::{Input, Outputs as Effects, Validator as Escrow, ValidatorError};
use crate::core::{Millis, PublicKey};
pub use crate::ingest::{Refused, Source, SubmitError, SyncPage, Verdict};
use crate::metrics::Metrics;
use crate::net::{self, NetConfig, NetEvent, NetHandle};
use crate::store::locks::{LockLog, LockRecord};
use crate::store::{LogEntry, Store, StoreError};

/// Commands waiting for the actor. Full means the node is overloaded: RPC
/// callers get `RESOURCE_EXHAUSTED`, gossip is shed (and counted) upstream.
pub const ACTOR_QUEUE_CAPACITY: usize = 4096;
/// Most commands applied between two store flushes.
pub const ACTOR_GROUP_MAX: usize = 1024;
/// Milliseconds between actor ticks while the escrow has nothing waiting
/// (while it has, ticks come every `batch_min_ms`).
pub const IDLE_TICK_MS: u64 = 25;
/// Objects nobody waits for (from gossip and catch-up) are written to the
/// store together, once this many are queued or the oldest waited this
/// long, unless a write someone waits for takes them sooner. Peers are
/// served only the durable prefix, and catch-up repairs a crash's loss.
pub const UNAWAITED_WRITE_ENTRIES_MAX: u64 = 1024;
pub const UNAWAITED_WRITE_DELAY_MAX: std::time::Duration = std::time::Duration::from_millis(100);

/// Applied-object events buffered for slow subscribers; one that falls
/// further behind skips ahead and is told how many it missed.
pub const APPLIED_EVENTS_CAPACITY: usize = 65_536;

/// An object was applied on this node and is visible to queries (it is
/// durable once the store write that takes it completes).
#[derive(Clone, Debug)]
pub struct AppliedEvent {
    pub id: ObjectId,
    pub kind: Kind,
    pub source: Source,
    pub at: Millis,
    /// The same moment on the monotonic clock, for measuring latency.
    pub applied_at: std::time::Instant,
}

/// The current time in milliseconds since the Unix epoch. The shell reads the
/// clock; the core is handed the value.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Everything a node needs to start.
#[derive(Debug)]
pub struct NodeSettings {
    pub genesis: LoadedGenesis,
    pub key: SigningKey,
    pub store_dir: PathBuf,
    pub rpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub p2p_listen: Vec<String>,
    pub peers: Vec<String>,
    pub max_incoming_connections: u32,
    pub enable_fault_injection: bool,
    /// Dial the validators' genesis addresses (off behind a link shaper).
    pub dial_genesis_addresses: bool,
    /// `dev` or `node`, reported by status.
    pub mode_label: &'static str,
}

/// Static facts about a running node.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub node_id: PublicKey,
    pub peer_id: String,
    pub name: String,
    pub region: String,
    pub validator: bool,
    pub network_id: envelope::NetworkId,
    pub mode_label: &'static str,
    pub started_at: Millis,
    pub fault_injection: bool,
}

/// Result of an accepted submission.
#[derive(Clone, Debug)]
pub struct SubmitOutcome {
    pub id: ObjectId,
    pub new: bool,
}

/// Counters the actor reports for status.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub attestations: u64,
    pub revocations: u64,
    pub credential_log_len: u64,
}

enum Command {
    Ingest {
        objects: Vec<Verified>,
        source: Source,
        reply: Option<oneshot::Sender<Vec<Result<Verdict, SubmitError>>>>,
    },
    Credential {
        id: ObjectId,
        reply: oneshot::Sender<(CredentialView, Millis)>,
    },
    Credentials {
        subject: PublicKey,
        reply: oneshot::Sender<(Vec<CredentialView>, Millis)>,
    },
    Counts {
        reply: oneshot::Sender<Counts>,
    },
    LogPage {
        cursor: u64,
        limit: u32,
        cert_cursor: u64,
        reply: oneshot::Sender<Result<SyncPage, StoreError>>,
    },
    Claim {
        claim: Verified,
        from_client: bool,
        reply: Option<oneshot::Sender<Result<(), SubmitError>>>,
    },
    Certificate {
        raw: Vec<u8>,
        reply: Option<oneshot::Sender<Result<bool, Refused>>>,
    },
    VoteRequest {
        request: pb::VoteRequest,
        reply: oneshot::Sender<pb::VoteResponse>,
    },
    VoteResponse {
        response: pb::VoteResponse,
    },
    Heartbeat {
        heartbeat: Verified,
        reply: oneshot::Sender<Result<bool, ValidatorError>>,
    },
    Rtt {
        key: PublicKey,
        rtt_ms: f64,
    },
    /// A read of the escrow state, answered by the closure on the actor.
    EscrowRead {
        read: EscrowRead,
    },
}

/// A read-only query run on the actor against the escrow state.
type EscrowRead = Box<dyn FnOnce(&Escrow, &CredentialBook, Millis) + Send>;

/// A cloneable handle to a running node's actor.
#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Command>,
    applied: tokio::sync::broadcast::Sender<AppliedEvent>,
    pub info: Arc<NodeInfo>,
    pub metrics: Metrics,
    pub net: NetHandle,
    /// Validators' libp2p addresses from the genesis, by key.
    pub genesis_addresses: Arc<std::collections::HashMap<PublicKey, Vec<String>>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle").field("info", &self.info).finish()
    }
}

impl NodeHandle {
    /// Verifies and applies one envelope submitted by a client, waiting until
    /// it is durable.
    pub async fn submit(&self, raw: &[u8], expect: Kind) -> Result<SubmitOutcome, SubmitError> {
        let unverified = self.net.decode_submission(raw)?;
        if unverified.kind != expect {
            return Err(SubmitError::WrongKind {
                expected: expect.name(),
                got: unverified.kind.name(),
            });
        }
        let verified = unverified.verify()?;
        let id = verified.id;
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Command::Ingest {
                objects: vec![verified],
                source: Source::Rpc,
                reply: Some(reply),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => SubmitError::ShuttingDown,
            })?;
        let mut verdicts = rx.await.map_err(|_| SubmitError::ShuttingDown)?;
        match verdicts.pop() {
            Some(Ok(Verdict::New)) => Ok(SubmitOutcome { id, new: true }),
            Some(Ok(Verdict::Duplicate)) => Ok(SubmitOutcome { id, new: false }),
            Some(Ok(Verdict::Rejected(e))) => Err(SubmitError::Rejected(e)),
            Some(Err(e)) => Err(e),
            None => Err(SubmitError::ShuttingDown),
        }
    }

    /// The credential with this attestation id and the instant its status holds.
    pub async fn credential(&self, id: ObjectId) -> Option<(CredentialView, Millis)> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Credential { id, reply }).await.ok()?;
        rx.await.ok()
    }

    /// Every credential of a subject.
    pub async fn credentials_of(&self, subject: PublicKey) -> Option<(Vec<CredentialView>, Millis)> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Credentials { subject, reply }).await.ok()?;
        rx.await.ok()
    }

    /// Object counts.
    pub async fn counts(&self) -> Option<Counts> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Counts { reply }).await.ok()?;
        rx.await.ok()
    }

    /// Verifies and takes a client's claim; returns its id once the node has
    /// recorded it (it may still be refused later by its owner).
    pub async fn submit_claim(&self, raw: &[u8]) -> Result<ObjectId, SubmitError> {
        let unverified = envelope::decode(&self.info.network_id, raw)?;
        if unverified.kind != Kind::Claim {
            return Err(SubmitError::WrongKind {
                expected: Kind::Claim.name(),
                got: unverified.kind.name(),
            });
        }
        let verified = unverified.verify()?;
        let id = verified.id;
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Command::Claim {
                claim: verified,
                from_client: true,
                reply: Some(reply),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => SubmitError::ShuttingDown,
            })?;
        rx.await.map_err(|_| SubmitError::ShuttingDown)??;
        Ok(id)
    }

    /// Runs a read-only query on the escrow state.
    pub async fn escrow_read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Escrow, &CredentialBook, Millis) -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        let read = Box::new(move |e: &Escrow, b: &CredentialBook, now: Millis| {
            let _ = reply.send(read(e, b, now));
        });
        self.tx.send(Command::EscrowRead { read }).await.ok()?;
        rx.await.ok()
    }

    /// Events for every object applied here, from now on.
    pub fn subscribe_applied(&self) -> tokio::sync::broadcast::Receiver<AppliedEvent> {
        self.applied.subscribe()
    }

    /// Depth and capacity of the actor's queue.
    pub fn actor_queue(&self) -> (usize, usize) {
        let capacity = self.tx.max_capacity();
        (capacity.saturating_sub(self.tx.capacity()), capacity)
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store at {path} holds an entry that does not decode: {message}")]
    CorruptLog { path: PathBuf, message: String },
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error(transparent)]
    Rpc(#[from] crate::rpc::RpcError),
    #[error(transparent)]
    Locks(#[from] crate::store::locks::LockLogError),
    #[error("cannot set up the escrow state: {0}")]
    Escrow(#[from] ValidatorError),
}

/// Why a credential log entry could not be replayed on start.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("log position {position}: {source}")]
    Decode {
        position: u64,
        source: envelope::EnvelopeError,
    },
    #[error("log position {position} no longer applies: {source}")]
    Apply { position: u64, source: CredentialError },
}

/// A started node: its handle, bound addresses and a way to stop it.
pub struct RunningNode {
    pub handle: NodeHandle,
    pub rpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode").field("rpc_addr", &self.rpc_addr).finish()
    }
}

impl RunningNode {
    /// Resolves when the node stops by itself (its storage failed): the
    /// process should exit rather than serve without a working store.
    pub async fn stopped(&self) {
        let mut rx = self.shutdown.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stops every task and waits for them, flushing the store last.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Starts a node and returns once every listener is bound.
pub async fn start(settings: NodeSettings) -> Result<RunningNode, StartError> {
    let started_at = now_ms();
    let genesis = &settings.genesis;
    let node_id = settings.key.verifying_key().to_bytes();
    let validator = genesis.validator(&node_id).cloned();
    let keypair = crate::keys::libp2p_keypair(&settings.key);
    let info = Arc::new(NodeInfo {
        node_id,
        peer_id: keypair.public().to_peer_id().to_string(),
        name: validator
            .as_ref()
            .map(|v| v.name.clone())
            .unwrap_or_else(|| "observer".into()),
        region: validator.as_ref().map(|v| v.region.clone()).unwrap_or_default(),
        validator: validator.is_some(),
        network_id: genesis.network_id,
        mode_label: settings.mode_label,
        started_at,
        fault_injection: settings.enable_fault_injection,
    });
    let metrics = Metrics::new();
    let store = Store::open(&settings.store_dir, &genesis.network_id)?;
    let (lock_log, lock_records) = LockLog::open(&settings.store_dir.join("locks.log"))?;
    let escrow =
        Escrow::new(&genesis.setup(), Box::new(settings.key.clone()), &lock_records).map_err(StartError::Escrow)?;
    let (book, escrow) = replay(&store, genesis, started_at, escrow)?;
    metrics
        .credential_log_len
        .set(i64::try_from(store.credential_log_len()?).unwrap_or(i64::MAX));
    info!(
        attestations = book.attestation_count(),
        revocations = book.revocation_count(),
        "state restored from the store"
    );

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (tx, rx) = mpsc::channel(ACTOR_QUEUE_CAPACITY);
    let (net_handle, net_driver) = net::NetHandle::new(metrics.clone(), &genesis.network_id);
    let (applied, _) = tokio::sync::broadcast::channel(APPLIED_EVENTS_CAPACITY);
    let handle = NodeHandle {
        tx,
        applied: applied.clone(),
        info: info.clone(),
        metrics: metrics.clone(),
        net: net_handle.clone(),
        genesis_addresses: Arc::new(
            genesis
                .validators
                .iter()
                .map(|v| (v.key, v.addresses.clone()))
                .collect(),
        ),
    };
    let mut tasks = Vec::new();
    let net_config = NetConfig {
        keypair,
        network_id: genesis.network_id,
        listen: settings.p2p_listen.clone(),
        peers: settings.peers.clone(),
        validators: genesis.validators.clone(),
        max_incoming_connections: settings.max_incoming_connections,
        fault_injection: settings.enable_fault_injection,
        dial_genesis_addresses: settings.dial_genesis_addresses,
        region: validator.as_ref().map(|v| v.region.clone()),
    };
    let (link, net_events) = net::NodeLink::channel(metrics.clone(), net_handle.clone());
    let net_task = net::spawn(net_config, net_driver, link, shutdown_rx.clone()).await?;
    tasks.push(tokio::spawn(forward_net_events(net_events, handle.tx.clone())));
    let actor = Actor {
        last_now: started_at,
        network_id: genesis.network_id,
        durable_len: store.credential_log_len()?,
        durable_cert_len: store.certificate_log_len()?,
        commit: GroupCommit::default(),
        escrow,
        lock_log,
        operators: genesis.operators.clone(),
        tick_interval_ms: genesis.genesis.params.batch_min_ms.max(1),
        book,
        store,
        metrics: metrics.clone(),
        net: net_handle,
        applied,
    };
    // The actor stops last: it waits until every sender is gone or shutdown.
    // If it stops on its own (storage failed), it stops the whole node.
    let actor_shutdown = shutdown.clone();
    let actor_rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        actor.run(rx, actor_rx).await;
        let _ = actor_shutdown.send(true);
    }));
    tasks.push(net_task);
    // The admin calls' token is written at every start with fault injection
    // on; a token left by an earlier start with it on is removed.
    let admin_token_dir = if settings.enable_fault_injection {
        Some(settings.store_dir.clone())
    } else {
        let _ = std::fs::remove_file(crate::rpc::admin::token_file(&settings.store_dir));
        None
    };
    let (rpc_addr, http_addr, rpc_tasks) = crate::rpc::serve(
        handle.clone(),
        settings.rpc_listen,
        settings.http_listen,
        admin_token_dir,
        shutdown_rx,
    )
    .await?;
    tasks.extend(rpc_tasks);
    Ok(RunningNode {
        handle,
        rpc_addr,
        http_addr,
        shutdown,
        tasks,
    })
}

/// Runs a node until `shutdown` resolves.
pub async fn run(settings: NodeSettings, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let node = start(settings).await?;
    tokio::select! {
        _ = shutdown => info!("shutting down"),
        _ = node.stopped() => tracing::error!("the node stopped by itself; see the errors above"),
    }
    node.stop().await;
    Ok(())
}

/// Hands what the network reports to the actor, each event as the command
/// that carries its reply: the wiring between `net` and the node, which know
/// nothing of each other. Ends when either side closes.
async fn forward_net_events(mut events: mpsc::Receiver<NetEvent>, actor: mpsc::Sender<Command>) {
    while let Some(event) = events.recv().await {
        let command = match event {
            NetEvent::Ingest { objects, source, reply } => Command::Ingest {
                objects,
                source,
                reply: Some(reply),
            },
            NetEvent::LogPage {
                cursor,
                limit,
                cert_cursor,
                reply,
            } => Command::LogPage {
                cursor,
                limit,
                cert_cursor,
                reply,
            },
            NetEvent::Claim { claim, reply } => Command::Claim {
                claim,
                from_client: false,
                reply: Some(reply),
            },
            NetEvent::Certificate { raw, reply } => Command::Certificate {
                raw,
                reply: Some(reply),
            },
            NetEvent::VoteRequest { request, reply } => Command::VoteRequest { request, reply },
            NetEvent::VoteResponse { response } => Command::VoteResponse { response },
            NetEvent::Heartbeat { heartbeat, reply } => Command::Heartbeat { heartbeat, reply },
            NetEvent::Rtt { key, rtt_ms } => {
                // A sample is worth nothing late: dropped when the actor is busy.
                let _ = actor.try_send(Command::Rtt { key, rtt_ms });
                continue;
            }
        };
        if actor.send(command).await.is_err() {
            break;
        }
    }
}

/// Applies one credential log entry on start. Entries were verified before
/// they were appended, so only their encoding is checked here; what is wrong
/// with one is said with its position.
pub fn replay_entry(
    genesis: &LoadedGenesis,
    book: &mut CredentialBook,
    escrow: &mut Escrow,
    entry: &LogEntry,
) -> Result<(), ReplayError> {
    let position = entry.position;
    let unverified = envelope::decode(&genesis.network_id, &entry.envelope)
        .map_err(|source| ReplayError::Decode { position, source })?;
    let verified = Verified {
        kind: unverified.kind,
        body: unverified.body,
        signer: unverified.signer.to_bytes(),
        id: unverified.id,
        raw: unverified.raw,
    };
    let result = if verified.kind == Kind::Distribution {
        escrow
            .add_distribution(&verified, &genesis.operators)
            .map_err(CredentialError::from)
    } else if verified.kind == Kind::Rebalance {
        escrow
            .add_rebalance(&verified, &genesis.operators)
            .map_err(CredentialError::from)
    } else {
        // Replaying at the time each object was learned keeps the skew
        // rule from refusing what was accepted then.
        book.apply_learned(entry.learned_at, entry.learned_at, &verified)
            .map(|_| ())
    };
    result.map_err(|source| ReplayError::Apply { position, source })
}

/// Rebuilds the credential book and the escrow ledger from the durable logs.
/// Entries were verified before they were appended, so only their encoding
/// is checked here (and certificates, which are re-checked as they apply).
fn replay(
    store: &Store,
    genesis: &LoadedGenesis,
    now: Millis,
    mut escrow: Escrow,
) -> Result<(CredentialBook, Escrow), StartError> {
    let mut book = CredentialBook::new(
        CredentialRules {
            max_clock_skew_ms: genesis.genesis.params.max_clock_skew_ms,
            operators: genesis.operators.clone(),
        },
        genesis.issuer_grants.iter().cloned(),
    );
    let corrupt = |message: String| StartError::CorruptLog {
        path: store.path().to_path_buf(),
        message,
    };
    for entry in store.credential_log() {
        replay_entry(genesis, &mut book, &mut escrow, &entry?).map_err(|e| corrupt(e.to_string()))?;
    }
    for raw in store.certificate_log() {
        let raw = raw?;
        if let Err(e) = escrow.step(now, &book, Input::Certificate { raw: &raw }) {
            tracing::warn!(error = %e, "a stored certificate does not apply");
        }
    }
    escrow.resume();
    // Claims that were waiting here when the node stopped wait again.
    let mut held = 0usize;
    for item in store.held_claims() {
        let (received_at, raw) = item?;
        let claim = envelope::decode(&genesis.network_id, &raw).and_then(envelope::Unverified::verify);
        match claim {
            Ok(v) => {
                held = held.saturating_add(1);
                escrow.restore_held(v, received_at);
            }
            Err(e) => return Err(corrupt(format!("a held claim does not verify: {e}"))),
        }
    }
    if held > 0 {
        tracing::info!(held, "claims waiting for their owners restored");
    }
    Ok((book, escrow))
}

struct Actor {
    /// Latest time handed to the protocol (monotonic).
    last_now: Millis,
    network_id: envelope::NetworkId,
    /// Entries of the credential log known to be flushed.
    durable_len: u64,
    /// Entries of the certificate log known to be flushed.
    durable_cert_len: u64,
    /// The store flush in flight and what waits for it.
    commit: GroupCommit,
    escrow: Escrow,
    lock_log: LockLog,
    operators: std::collections::BTreeSet<PublicKey>,
    tick_interval_ms: u64,
    book: CredentialBook,
    store: Store,
    metrics: Metrics,
    net: NetHandle,
    applied: tokio::sync::broadcast::Sender<AppliedEvent>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, mut shutdown: watch::Receiver<bool>) {
        let mut group = Vec::with_capacity(ACTOR_GROUP_MAX);
        // Ticks come every `batch_min_ms` while the escrow has work waiting
        // (a batch to close, votes to collect) and every IDLE_TICK_MS
        // otherwise: an idle node does not wake hundreds of times a second.
        let busy_every = std::time::Duration::from_millis(self.tick_interval_ms);
        let idle_every = std::time::Duration::from_millis(IDLE_TICK_MS.max(self.tick_interval_ms));
        let mut next_tick = tokio::time::Instant::now() + busy_every;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                result = self.commit.flushed(), if self.commit.flushing.is_some() => {
                    if !self.flushed(result) {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(next_tick) => {
                    if !self.process_timed(&mut group).await {
                        break;
                    }
                    let every = if self.escrow.is_busy() { busy_every } else { idle_every };
                    next_tick = tokio::time::Instant::now() + every;
                }
                received = rx.recv_many(&mut group, ACTOR_GROUP_MAX) => {
                    if received == 0 {
                        break;
                    }
                    self.metrics
                        .queue_depth
                        .get_or_create(&crate::metrics::QueueLabels { queue: "actor" })
                        .set(i64::try_from(rx.len()).unwrap_or(i64::MAX));
                    self.escrow.set_load(rx.len() as f64 / ACTOR_QUEUE_CAPACITY as f64);
                    if !self.process_timed(&mut group).await {
                        break;
                    }
                    if self.escrow.is_busy() {
                        next_tick = next_tick.min(tokio::time::Instant::now() + busy_every);
                    }
                }
            }
        }
        // Whatever is not yet written is written, and what waits for it answered.
        loop {
            if self.commit.flushing.is_none() {
                match self.commit.next.take() {
                    Some(next) if next.writes() => self.commit.start(&self.store, next),
                    Some(next) => {
                        self.release(next, None);
                    }
                    None => break,
                }
            }
            let result = self.commit.flushed().await;
            if !self.flushed(result) {
                break;
            }
        }
        if let Err(e) = self.store.flush().await {
            warn!(error = %e, "final store flush failed");
        }
    }

    /// Applies one object from any source; the verdict and whether to log it.
    fn apply_object(&mut self, now: Millis, object: &Verified, source: Source) -> Verdict {
        // Operator objects go to the escrow; everything else to the book.
        let operator_object = match object.kind {
            Kind::Rebalance => Some(self.escrow.has_rebalance(&object.id.0)),
            Kind::Distribution => Some(self.escrow.ledger().distribution(&object.id.0).is_some()),
            _ => None,
        };
        let result = match operator_object {
            Some(true) => Ok(Applied::Duplicate),
            Some(false) => {
                let added = if object.kind == Kind::Rebalance {
                    self.escrow.add_rebalance(object, &self.operators)
                } else {
                    self.escrow.add_distribution(object, &self.operators)
                };
                added.map(|()| Applied::New).map_err(CredentialError::from)
            }
            None => self.book.apply(now, object),
        };
        match result {
            Ok(Applied::New) => {
                self.metrics.object(object.kind.name(), "accepted", source.name());
                Verdict::New
            }
            Ok(Applied::Duplicate) => {
                self.metrics.object(object.kind.name(), "duplicate", source.name());
                Verdict::Duplicate
            }
            Err(e) => {
                self.metrics.object(object.kind.name(), "rejected", source.name());
                Verdict::Rejected(e)
            }
        }
    }

    /// [`Self::process`], timed into `credence_actor_group_seconds`, then the
    /// escrow's claim stage and heartbeat age samples exported.
    async fn process_timed(&mut self, group: &mut Vec<Command>) -> bool {
        let started = std::time::Instant::now();
        let ok = self.process(group).await;
        self.metrics.actor_group.observe(started.elapsed().as_secs_f64());
        self.metrics.export(&std::mem::take(&mut self.escrow.samples));
        ok
    }

    /// Applies a group of commands (and the periodic escrow work) with one
    /// lock-log sync and one store flush. Returns false when storage failed
    /// and the node must stop.
    async fn process(&mut self, group: &mut Vec<Command>) -> bool {
        // The protocol sees a clock that never steps back: an owner whose
        // wall clock jumped backwards would stamp batches its voters refuse.
        let now = now_ms().max(self.last_now);
        self.last_now = now;
        let mut appended: Vec<(Millis, Vec<u8>, Kind, Source, ObjectId)> = Vec::new();
        let mut rpc_replies = Vec::new();
        let mut claim_replies = Vec::new();
        let mut vote_replies = Vec::new();
        let mut reads = Vec::new();
        let mut effects = Effects::default();
        for command in group.drain(..) {
            match command {
                Command::Ingest { objects, source, reply } => {
                    let mut verdicts = Vec::with_capacity(objects.len());
                    for object in objects {
                        let verdict = self.apply_object(now, &object, source);
                        if verdict == Verdict::New {
                            appended.push((now, object.raw, object.kind, source, object.id));
                        }
                        verdicts.push(verdict);
                    }
                    match (source, reply) {
                        // A client's acknowledgement waits for durability.
                        (Source::Rpc, reply) => rpc_replies.push((reply, verdicts)),
                        // Gossip verdicts only decide relaying: answer now, so
                        // forwarding never waits for this node's disk.
                        (_, Some(reply)) => {
                            let _ = reply.send(verdicts.into_iter().map(Ok).collect());
                        }
                        (_, None) => {}
                    }
                }
                Command::Claim {
                    claim,
                    from_client,
                    reply,
                } => {
                    let result = self.escrow.step(
                        now,
                        &self.book,
                        Input::Claim {
                            claim: &claim,
                            from_client,
                        },
                    );
                    let answer = match result {
                        Ok(more) => {
                            effects.append(more);
                            Ok(())
                        }
                        Err(e) => Err(SubmitError::Escrow(e)),
                    };
                    if let Some(reply) = reply {
                        claim_replies.push((reply, answer));
                    }
                }
                Command::Certificate { raw, reply } => {
                    let answer = match self.escrow.step(now, &self.book, Input::Certificate { raw: &raw }) {
                        Ok(more) => {
                            let news = more.news;
                            effects.append(more);
                            Ok(news)
                        }
                        Err(e) => Err(Refused {
                            senders_fault: e.is_senders_fault(),
                            reason: e.to_string(),
                        }),
                    };
                    if let Some(reply) = reply {
                        let _ = reply.send(answer);
                    }
                }
                Command::VoteRequest { request, reply } => {
                    // The attestations a batch presents are signed objects:
                    // learn those not held yet (and log them like any
                    // other). Held ones are recognised by id, unchecked.
                    for raw in &request.attestations {
                        let network = self.book_network();
                        if envelope::object_id(&network, raw).is_some_and(|id| self.book.contains(&id)) {
                            continue;
                        }
                        if let Ok(v) = envelope::decode(&network, raw).and_then(envelope::Unverified::verify)
                            && self.apply_object(now, &v, Source::Sync) == Verdict::New
                        {
                            appended.push((now, v.raw, v.kind, Source::Sync, v.id));
                        }
                    }
                    let mut more = match self
                        .escrow
                        .step(now, &self.book, Input::VoteRequest { request: &request })
                    {
                        Ok(more) => more,
                        Err(e) => {
                            tracing::debug!(error = %e, "a vote request was not taken");
                            Effects::default()
                        }
                    };
                    vote_replies.push((reply, more.vote_reply.take().unwrap_or_default()));
                    effects.append(more);
                }
                Command::VoteResponse { response } => {
                    match self
                        .escrow
                        .step(now, &self.book, Input::VoteResponse { response: &response })
                    {
                        Ok(more) => effects.append(more),
                        Err(e) => tracing::debug!(error = %e, "a vote response was not taken"),
                    }
                }
                Command::Heartbeat { heartbeat, reply } => {
                    let result = match self
                        .escrow
                        .step(now, &self.book, Input::Heartbeat { heartbeat: &heartbeat })
                    {
                        Ok(more) => {
                            let news = more.news;
                            effects.append(more);
                            Ok(news)
                        }
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(result);
                }
                Command::Rtt { key, rtt_ms } => {
                    if let Ok(more) = self.escrow.step(now, &self.book, Input::Rtt { key, rtt_ms }) {
                        effects.append(more);
                    }
                }
                read => reads.push(read),
            }
        }
        effects.append(self.escrow.tick(now, &self.book));
        for key in std::mem::take(&mut effects.disconnect) {
            // A silent connection is not trusted: close it; the redial timer reopens it.
            self.net.disconnect(key);
        }
        // Applied objects are visible to queries at once; durability follows
        // with the store write that takes them, before any client is
        // acknowledged.
        for read in reads {
            self.answer(read, now);
        }
        let applied_at = std::time::Instant::now();
        for (_, _, kind, source, id) in &appended {
            // Nobody listening is fine: the send only fails without receivers.
            let _ = self.applied.send(AppliedEvent {
                id: *id,
                kind: *kind,
                source: *source,
                at: now,
                applied_at,
            });
        }
        let mut failure = None;
        if !effects.locks.is_empty() {
            let locks: Vec<LockRecord> = std::mem::take(&mut effects.locks);
            let started = std::time::Instant::now();
            let appended_locks = self.lock_log.append(locks).await;
            self.metrics.lock_log_sync.observe(started.elapsed().as_secs_f64());
            if let Err(e) = appended_locks {
                tracing::error!(error = %e, "lock log write failed; stopping the node");
                failure = Some(e.to_string());
            }
        }
        if failure.is_none() {
            // This validator's own votes count now that their locks are durable.
            match self.escrow.step(now, &self.book, Input::Persisted) {
                Ok(more) => {
                    debug_assert!(more.locks.is_empty(), "counting own votes locks nothing new");
                    effects.append(more);
                }
                Err(e) => tracing::debug!(error = %e, "own votes not counted"),
            }
        }
        if failure.is_none() {
            for (_, raw, kind, source, _) in &appended {
                // Gossip relays what it delivered by itself; sync objects are
                // old news to the peer they came from. Only fresh submissions
                // go out, at once: relaying is not acknowledging, and every
                // peer verifies them itself.
                if *source == Source::Rpc {
                    self.net.publish(*kind, raw.clone());
                }
            }
        }
        if failure.is_none() {
            // Votes, vote requests, certificates, relayed claims and
            // heartbeats leave now: what they promise is durable already
            // (locks and own batches in `locks.log`, written above), a
            // certificate proves itself, and relaying is not acknowledging.
            // Only answers to clients wait for the store write below.
            for (reply, response) in vote_replies {
                let _ = reply.send(response);
            }
            for (voter, request) in std::mem::take(&mut effects.vote_requests) {
                self.net.request_vote(voter, request);
            }
            for key in std::mem::take(&mut effects.sync_from) {
                self.net.sync_now(key);
            }
            for (region, raw) in std::mem::take(&mut effects.claims_to_publish) {
                self.net.publish_claim(&region, raw);
            }
            // Certificates that arrived from peers are stored in order with
            // the rest but not published again: gossip relays what it
            // delivered, and a synced one is old news.
            if let Some(region) = self.escrow.region() {
                for raw in std::mem::take(&mut effects.certificates_to_publish) {
                    self.net.publish_certificate(region, raw);
                }
            }
            for raw in std::mem::take(&mut effects.evidence_to_publish) {
                self.metrics.equivocations_detected.inc();
                self.net.publish(Kind::Evidence, raw);
            }
            if let Some(raw) = effects.heartbeat.take() {
                self.net.publish(Kind::Heartbeat, raw);
            }
        }
        let writes = !appended.is_empty() || !effects.store_certificates.is_empty() || !effects.held.is_empty();
        let release = Release {
            since: writes.then(std::time::Instant::now),
            appended: appended.len() as u64,
            certificates_appended: effects.store_certificates.len() as u64,
            held_changes: effects.held.len() as u64,
            entries: appended.into_iter().map(|(at, raw, _, _, _)| (at, raw)).collect(),
            stored_certificates: effects.store_certificates,
            held: effects.held,
            rpc_replies,
            claim_replies,
        };
        if failure.is_some() {
            self.release(release, failure);
            return false;
        }
        self.commit_group(release)
    }

    /// Queues a group's writes and what it releases behind the write that
    /// makes them durable, and starts that write when it is due.
    fn commit_group(&mut self, release: Release) -> bool {
        match &mut self.commit.next {
            Some(next) => next.merge(release),
            None if release.is_empty() => {}
            None => self.commit.next = Some(release),
        }
        self.write_when_due()
    }

    /// Starts the next write unless one is in flight: at once when anything
    /// waits for it; writes nobody waits for (gossip, catch-up) are gathered
    /// for up to `UNAWAITED_WRITE_DELAY_MAX` or `UNAWAITED_WRITE_ENTRIES_MAX`.
    /// What was queued while a write was in flight waits for the next one,
    /// even a group that wrote nothing: it may answer from writes not yet
    /// durable.
    fn write_when_due(&mut self) -> bool {
        if self.commit.flushing.is_some() {
            return true;
        }
        let Some(next) = &self.commit.next else {
            return true;
        };
        let due = next.waits()
            || next.appended.saturating_add(next.certificates_appended) >= UNAWAITED_WRITE_ENTRIES_MAX
            || next
                .since
                .is_some_and(|since| since.elapsed() >= UNAWAITED_WRITE_DELAY_MAX);
        if !due {
            return true;
        }
        let Some(next) = self.commit.next.take() else {
            return true;
        };
        if !next.writes() {
            // Everything applied before it is durable already.
            return self.release(next, None);
        }
        self.commit.start(&self.store, next);
        true
    }

    /// The write in flight is durable (or failed): release what waited for
    /// it and start the next one when due. Returns false when the store
    /// failed.
    fn flushed(&mut self, result: Option<(Result<(), StoreError>, Release)>) -> bool {
        let Some((result, release)) = result else {
            return true;
        };
        self.metrics.store_flushes.inc();
        if let Err(e) = &result {
            tracing::error!(error = %e, "store write failed; stopping the node");
        }
        if !self.release(release, result.err().map(|e| e.to_string())) {
            return false;
        }
        self.write_when_due()
    }

    /// Sends what waited for durability, or refuses it when storage failed
    /// (and then returns false: the node must stop).
    fn release(&mut self, release: Release, failure: Option<String>) -> bool {
        if failure.is_none() {
            self.durable_len = self.durable_len.saturating_add(release.appended);
            self.durable_cert_len = self.durable_cert_len.saturating_add(release.certificates_appended);
            self.metrics
                .credential_log_len
                .set(i64::try_from(self.durable_len).unwrap_or(i64::MAX));
        }
        for (reply, verdicts) in release.rpc_replies {
            let answer = verdicts
                .into_iter()
                .map(|v| match (&failure, v) {
                    (Some(e), Verdict::New) => Err(SubmitError::Store(e.clone())),
                    (_, v) => Ok(v),
                })
                .collect();
            if let Some(reply) = reply {
                let _ = reply.send(answer);
            }
        }
        for (reply, answer) in release.claim_replies {
            let answer = match &failure {
                Some(e) => Err(SubmitError::Store(e.to_string())),
                None => answer,
            };
            let _ = reply.send(answer);
        }
        failure.is_none()
    }

    fn book_network(&self) -> envelope::NetworkId {
        self.network_id
    }

    fn answer(&self, command: Command, now: Millis) {
        if let Command::EscrowRead { read } = command {
            read(&self.escrow, &self.book, now);
            return;
        }
        match command {
            Command::Credential { id, reply } => {
                let _ = reply.send((self.book.credential(&id, now), now));
            }
            Command::Credentials { subject, reply } => {
                let _ = reply.send((self.book.credentials_of(&subject, now), now));
            }
            Command::Counts { reply } => {
                let _ = reply.send(Counts {
                    attestations: self.book.attestation_count() as u64,
                    revocations: self.book.revocation_count() as u64,
                    credential_log_len: self.durable_len,
                });
            }
            Command::LogPage {
                cursor,
                limit,
                cert_cursor,
                reply,
            } => {
                // Only the durable prefix is served: a position a peer has
                // seen is never reassigned, even if this node crashes. The
                // certificate log is flushed in the same group commits. A
                // page is hundreds of entries: it is read off the actor.
                let (durable, durable_certs) = (self.durable_len, self.durable_cert_len);
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || {
                    let page = store.credential_log_page(cursor, limit).and_then(|page| {
                        let entries = page.into_iter().filter(|e| e.position < durable).collect();
                        Ok(SyncPage {
                            entries,
                            log_len: durable,
                            certificates: store
                                .certificate_log_page(cert_cursor, limit)?
                                .into_iter()
                                .filter(|(position, _)| *position < durable_certs)
                                .collect(),
                            cert_log_len: durable_certs,
                        })
                    });
                    let _ = reply.send(page);
                });
            }
            _ => {}
        }
    }
}

type RpcReply = oneshot::Sender<Vec<Result<Verdict, SubmitError>>>;
type ClaimReply = oneshot::Sender<Result<(), SubmitError>>;

/// What a group of commands writes, and what it holds back until those
/// writes are durable.
#[derive(Default)]
struct Release {
    /// When the oldest write in it was applied.
    since: Option<std::time::Instant>,
    /// Credential log entries (learned at, envelope), until they are written.
    entries: Vec<(Millis, Vec<u8>)>,
    /// Certificate log entries, until they are written.
    stored_certificates: Vec<Vec<u8>>,
    /// Changes to the claims held (`held/v1`), until they are written.
    held: Vec<crate::store::HeldChange>,
    appended: u64,
    certificates_appended: u64,
    held_changes: u64,
    rpc_replies: Vec<(Option<RpcReply>, Vec<Verdict>)>,
    claim_replies: Vec<(ClaimReply, Result<(), SubmitError>)>,
}

impl Release {
    fn writes(&self) -> bool {
        self.appended > 0 || self.certificates_appended > 0 || self.held_changes > 0
    }

    /// Someone waits for these writes: a client or a relay decision.
    fn waits(&self) -> bool {
        !(self.rpc_replies.is_empty() && self.claim_replies.is_empty())
    }

    fn is_empty(&self) -> bool {
        !self.writes() && !self.waits()
    }

    fn merge(&mut self, later: Release) {
        self.since = self.since.or(later.since);
        self.entries.extend(later.entries);
        self.stored_certificates.extend(later.stored_certificates);
        self.held.extend(later.held);
        self.held_changes = self.held_changes.saturating_add(later.held_changes);
        self.appended = self.appended.saturating_add(later.appended);
        self.certificates_appended = self.certificates_appended.saturating_add(later.certificates_appended);
        self.rpc_replies.extend(later.rpc_replies);
        self.claim_replies.extend(later.claim_replies);
    }
}

/// Group commit with at most one store write (append, then flush) in
/// flight, off the actor: it keeps applying meanwhile, and groups applied
/// meanwhile share the next write.
#[derive(Default)]
struct GroupCommit {
    flushing: Option<(tokio::task::JoinHandle<Result<(), StoreError>>, Release)>,
    /// Written after the one in flight.
    next: Option<Release>,
}

impl GroupCommit {
    fn start(&mut self, store: &Store, mut release: Release) {
        debug_assert!(self.flushing.is_none());
        let write = crate::store::Write {
            entries: std::mem::take(&mut release.entries),
            certificates: std::mem::take(&mut release.stored_certificates),
            held: std::mem::take(&mut release.held),
        };
        self.flushing = Some((store.write_task(write), release));
    }

    /// Resolves when the write in flight is durable, with what it releases;
    /// at once with nothing when none is in flight (so only poll it in a
    /// `select!` while one is).
    async fn flushed(&mut self) -> Option<(Result<(), StoreError>, Release)> {
        let (task, _) = self.flushing.as_mut()?;
        let result = match task.await {
            Ok(result) => result,
            Err(e) => Err(StoreError::FlushTask(e.to_string())),
        };
        let (_, release) = self.flushing.take()?;
        Some((result, release))
    }
}
