//! The one gossip pipeline, for every kind, and the credential catch-up
//! helpers.
//!
//! size → decode once, by topic, into typed work (a heartbeat, a claim, a
//! certificate, a credential object; vote traffic from request-response)
//! → the kind matches its topic → a bounded queue per class → a batch
//! signature check off the network loop and off the actor → the actor
//! (apply, persist) → Accept / Reject / Ignore back to gossipsub.
//!
//! Three lane tasks, started once (never a task per message), drain the
//! queues in priority order: votes; heartbeats before claims before
//! certificates; revocations and operator objects before attestations (a
//! late revocation is worse than a late attestation). A full queue sheds
//! the message with Ignore, counted per queue: it is no fault of the
//! sender, so it is never a penalty; gossip is best-effort and catch-up
//! repairs what was shed. A lane takes whatever is queued (it never waits
//! for a batch to fill): a few signatures are checked on the spot, more on
//! the blocking pool, split over the cores when the queue is deep.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;

use credence_proto::v1 as pb;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use libp2p::gossipsub::{self, MessageAcceptance, MessageId, TopicHash};
use libp2p::request_response::ResponseChannel;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::NodeLink;
use super::{CRED_TOPIC_MAX_BYTES, Internal, SYNC_RESPONSE_MAX_BYTES, topic_of};
use crate::core::envelope::{self, EnvelopeError, Kind, NetworkId, Unverified, Verified};
use crate::core::limits::GOSSIP_MAX_BYTES;
use crate::ingest::{Source, Verdict};
use crate::metrics::QueueLabels;

/// Vote requests and responses waiting for the actor (the first lane:
/// a claim's certificate waits on every vote).
pub const VOTE_QUEUE_CAPACITY: usize = 4096;
/// Heartbeats (and the rare equivocation evidence) waiting for
/// verification: drained before claims and certificates, because the
/// delay-aware quorum reads its health from them.
pub const CONTROL_QUEUE_CAPACITY: usize = 1024;
/// Claims waiting for verification.
pub const CLAIM_QUEUE_CAPACITY: usize = 8192;
/// Certificates waiting for the validator (their votes are nested
/// signatures, checked there against the region's members).
pub const CERTIFICATE_QUEUE_CAPACITY: usize = 8192;
/// Revocations, grants and operator objects waiting for verification
/// (drained before attestations).
pub const PRIORITY_QUEUE_CAPACITY: usize = 4096;
/// Attestations waiting for verification.
pub const BULK_QUEUE_CAPACITY: usize = 16384;
/// Most items taken from a queue at once (one signature batch).
pub const VERIFY_BATCH_MAX: usize = 256;
/// Batches of votes, heartbeats, claims and certificates the escrow lanes
/// keep waiting on the actor at once. Several in flight let the actor take
/// them in one turn (one lock-log write for many votes); the bound keeps a
/// flood from turning into unbounded waiting futures.
pub const ESCROW_IN_FLIGHT_MAX: usize = 64;
/// Credential batches in flight: one verifies while the previous one is
/// applied.
pub const CREDENTIAL_IN_FLIGHT_MAX: usize = 2;
/// Validation results waiting for the network loop.
pub const RESULTS_CAPACITY: usize = 8192;
/// Most signatures checked on the async worker itself: handing a batch to
/// the blocking pool and back costs more than checking one or two (each
/// takes tens of microseconds).
pub const VERIFY_INLINE_MAX: usize = 2;
/// Fewest signatures per blocking task when a deep queue is verified on
/// several cores at once.
pub const VERIFY_CHUNK_MIN: usize = 64;
/// Envelopes remembered as held by the actor. At 5,000 objects/s this spans
/// about 13 s, more than [`super::SYNC_INTERVAL`], so a catch-up page that
/// repeats what gossip delivered is settled without verifying it again.
pub const SEEN_CAPACITY: usize = 1 << 16;

/// Fingerprints (blake3 of the exact bytes) of envelopes the actor holds:
/// it answered them new or duplicate. Identical bytes verify identically, so
/// a copy seen again needs neither a signature check nor an actor round
/// trip; a forged variant has other bytes and is verified (and penalised)
/// as usual. Oldest forgotten first.
#[derive(Debug, Default)]
pub struct Seen {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

impl Seen {
    fn contains(&self, fingerprint: &[u8; 32]) -> bool {
        self.set.contains(fingerprint)
    }

    fn insert(&mut self, fingerprint: [u8; 32]) {
        if !self.set.insert(fingerprint) {
            return;
        }
        self.order.push_back(fingerprint);
        if self.order.len() > SEEN_CAPACITY
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
    }
}

/// The seen set, shared by the gossip worker and catch-up.
pub type SharedSeen = Arc<Mutex<Seen>>;

fn seen_lock(seen: &SharedSeen) -> std::sync::MutexGuard<'_, Seen> {
    // A panic while holding the lock leaves at worst a missing entry.
    seen.lock().unwrap_or_else(PoisonError::into_inner)
}

fn fingerprint(raw: &[u8]) -> [u8; 32] {
    *blake3::hash(raw).as_bytes()
}

/// Depth, capacity and drops of one queue, shared with status and metrics.
#[derive(Debug)]
pub struct QueueStats {
    pub name: &'static str,
    pub capacity: u64,
    pub depth: AtomicU64,
    pub dropped: AtomicU64,
}

impl QueueStats {
    fn new(name: &'static str, capacity: usize) -> Arc<QueueStats> {
        Arc::new(QueueStats {
            name,
            capacity: capacity as u64,
            depth: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }
}

/// The pipeline's queues, in the order their figures are reported. Each
/// lane drains its queues in this order: votes alone; heartbeats, then
/// claims, then certificates; revocations and operator objects, then
/// attestations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Votes,
    Control,
    Claims,
    Certificates,
    Priority,
    Bulk,
}

impl Queue {
    const ALL: [Queue; 6] = [
        Queue::Votes,
        Queue::Control,
        Queue::Claims,
        Queue::Certificates,
        Queue::Priority,
        Queue::Bulk,
    ];

    fn name(self) -> &'static str {
        match self {
            Queue::Votes => "votes",
            Queue::Control => "gossip_control",
            Queue::Claims => "gossip_claims",
            Queue::Certificates => "gossip_certificates",
            Queue::Priority => "gossip_priority",
            Queue::Bulk => "gossip_bulk",
        }
    }

    fn capacity(self) -> usize {
        match self {
            Queue::Votes => VOTE_QUEUE_CAPACITY,
            Queue::Control => CONTROL_QUEUE_CAPACITY,
            Queue::Claims => CLAIM_QUEUE_CAPACITY,
            Queue::Certificates => CERTIFICATE_QUEUE_CAPACITY,
            Queue::Priority => PRIORITY_QUEUE_CAPACITY,
            Queue::Bulk => BULK_QUEUE_CAPACITY,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The pipeline's queue figures, in [`Queue`] order.
pub fn queue_stats() -> Vec<Arc<QueueStats>> {
    Queue::ALL
        .iter()
        .map(|q| QueueStats::new(q.name(), q.capacity()))
        .collect()
}

/// A gossip envelope whose signature is still to be checked.
struct Pending {
    message_id: MessageId,
    source: PeerId,
    fingerprint: [u8; 32],
    unverified: Unverified,
}

/// What the escrow lane carries, decoded once, by topic.
enum EscrowWork {
    /// A heartbeat, a claim or equivocation evidence.
    Envelope(Box<Pending>),
    /// A certificate: the votes in it are nested signatures, checked by the
    /// validator against its region's members.
    Certificate {
        message_id: MessageId,
        source: PeerId,
        raw: Vec<u8>,
    },
}

/// Vote traffic from the request-response protocol.
pub(super) enum VoteWork {
    /// A validator of this region asks for a vote (or hands over a claim).
    Request {
        request: pb::VoteRequest,
        channel: ResponseChannel<pb::VoteResponse>,
    },
    /// A voter's answer to one of this node's requests.
    Response(pb::VoteResponse),
}

/// What a gossip topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopicClass {
    /// Attestations, revocations and grants (the small-object topic).
    Credentials,
    /// Distributions and rebalances.
    Operator,
    /// A region's claims.
    Claims,
    Certificates,
    Heartbeats,
    /// Equivocation evidence (two batches an owner signed at one position).
    Evidence,
    /// A topic this node does not process.
    Other,
}

/// The network's topic hashes, to classify a message by where it arrived.
struct Topics {
    credentials: TopicHash,
    operator: TopicHash,
    heartbeats: TopicHash,
    evidence: TopicHash,
    claims_prefix: String,
    certificates_prefix: String,
}

impl Topics {
    fn new(network: &NetworkId) -> Topics {
        Topics {
            credentials: topic_of(network, Kind::Attestation).hash(),
            operator: topic_of(network, Kind::Distribution).hash(),
            heartbeats: topic_of(network, Kind::Heartbeat).hash(),
            evidence: topic_of(network, Kind::Evidence).hash(),
            claims_prefix: format!("{}claims/", super::topic_prefix(network)),
            certificates_prefix: format!("{}certs/", super::topic_prefix(network)),
        }
    }

    fn class(&self, topic: &TopicHash) -> TopicClass {
        if *topic == self.credentials {
            TopicClass::Credentials
        } else if *topic == self.operator {
            TopicClass::Operator
        } else if *topic == self.heartbeats {
            TopicClass::Heartbeats
        } else if *topic == self.evidence {
            TopicClass::Evidence
        } else if topic.as_str().starts_with(&self.claims_prefix) {
            TopicClass::Claims
        } else if topic.as_str().starts_with(&self.certificates_prefix) {
            TopicClass::Certificates
        } else {
            TopicClass::Other
        }
    }
}

/// Whether an envelope of `kind` belongs on a topic of `class`.
fn kind_fits(class: TopicClass, kind: Kind) -> bool {
    match class {
        TopicClass::Credentials => matches!(kind, Kind::Attestation | Kind::Revocation | Kind::IssuerGrant),
        TopicClass::Operator => matches!(kind, Kind::Distribution | Kind::Rebalance),
        TopicClass::Claims => kind == Kind::Claim,
        TopicClass::Heartbeats => kind == Kind::Heartbeat,
        TopicClass::Evidence => kind == Kind::Evidence,
        TopicClass::Certificates | TopicClass::Other => false,
    }
}

/// The producer side of the pipeline, owned by the network loop: the cheap
/// stages (size, decode, topic, seen) run here, on the loop; everything
/// else runs on three lane tasks, started once.
pub(super) struct Pipeline {
    network: NetworkId,
    topics: Topics,
    keys: envelope::KeyCache,
    votes: mpsc::Sender<VoteWork>,
    control: mpsc::Sender<EscrowWork>,
    claims: mpsc::Sender<EscrowWork>,
    certificates: mpsc::Sender<EscrowWork>,
    priority: mpsc::Sender<Pending>,
    bulk: mpsc::Sender<Pending>,
    stats: Arc<Vec<Arc<QueueStats>>>,
    seen: SharedSeen,
    node: NodeLink,
}

impl Pipeline {
    /// Starts the three lanes: votes; heartbeats, claims and certificates;
    /// credentials.
    pub(super) fn start(
        network: NetworkId,
        node: NodeLink,
        results: mpsc::Sender<Internal>,
        shutdown: watch::Receiver<bool>,
    ) -> Pipeline {
        let (votes, votes_rx) = mpsc::channel(VOTE_QUEUE_CAPACITY);
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE_CAPACITY);
        let (claims, claims_rx) = mpsc::channel(CLAIM_QUEUE_CAPACITY);
        let (certificates, certificates_rx) = mpsc::channel(CERTIFICATE_QUEUE_CAPACITY);
        let (priority, priority_rx) = mpsc::channel(PRIORITY_QUEUE_CAPACITY);
        let (bulk, bulk_rx) = mpsc::channel(BULK_QUEUE_CAPACITY);
        let stats = node.net.queues.clone();
        let seen = SharedSeen::default();
        let lane_of = |queues: Vec<Queue>, in_flight_max: usize| Lane {
            queues,
            in_flight_max,
            stats: stats.clone(),
            node: node.clone(),
            shutdown: shutdown.clone(),
        };
        {
            let (node, results) = (node.clone(), results.clone());
            tokio::spawn(
                lane_of(vec![Queue::Votes], ESCROW_IN_FLIGHT_MAX).run(vec![votes_rx], move |batch| {
                    vote_batch(node.clone(), results.clone(), batch)
                }),
            );
        }
        {
            let (node, results) = (node.clone(), results.clone());
            tokio::spawn(
                lane_of(
                    vec![Queue::Control, Queue::Claims, Queue::Certificates],
                    ESCROW_IN_FLIGHT_MAX,
                )
                .run(vec![control_rx, claims_rx, certificates_rx], move |batch| {
                    escrow_batch(network, node.clone(), results.clone(), batch)
                }),
            );
        }
        {
            let (node, seen) = (node.clone(), seen.clone());
            tokio::spawn(
                lane_of(vec![Queue::Priority, Queue::Bulk], CREDENTIAL_IN_FLIGHT_MAX)
                    .run(vec![priority_rx, bulk_rx], move |batch| {
                        credential_batch(node.clone(), results.clone(), seen.clone(), batch)
                    }),
            );
        }
        Pipeline {
            network,
            topics: Topics::new(&network),
            keys: envelope::KeyCache::default(),
            votes,
            control,
            claims,
            certificates,
            priority,
            bulk,
            stats,
            seen,
            node,
        }
    }

    /// The envelopes known to be held, for catch-up to skip.
    pub(super) fn seen(&self) -> SharedSeen {
        self.seen.clone()
    }

    /// Records an envelope the actor holds (one it publishes), so that
    /// catch-up pages bringing it back are not verified again.
    pub(super) fn note_held(&self, raw: &[u8]) {
        seen_lock(&self.seen).insert(fingerprint(raw));
    }

    /// Queues vote traffic for the actor. A full queue sheds it: the owner
    /// asks again, a voter's answer is repeated with the next request.
    pub(super) fn vote(&self, work: VoteWork) {
        let _ = self.offer(Queue::Votes, &self.votes, work, "vote");
    }

    /// Runs the cheap stages on one gossip message. Returns a verdict when the
    /// message is settled here (malformed, wrong topic, shed), `None` when it
    /// was queued.
    pub(super) fn enqueue(
        &mut self,
        source: PeerId,
        message_id: MessageId,
        message: gossipsub::Message,
    ) -> Option<MessageAcceptance> {
        let class = self.topics.class(&message.topic);
        match class {
            // Kinds this node does not process are not relayed.
            TopicClass::Other => return Some(MessageAcceptance::Ignore),
            TopicClass::Certificates => {
                self.node.metrics.object("certificate", "delivered", "gossip");
                if message.data.len() > GOSSIP_MAX_BYTES {
                    self.node.metrics.object("certificate", "too_large", "gossip");
                    return Some(MessageAcceptance::Reject);
                }
                let work = EscrowWork::Certificate {
                    message_id,
                    source,
                    raw: message.data,
                };
                return self.offer(Queue::Certificates, &self.certificates, work, "certificate");
            }
            _ => {}
        }
        let cap = if class == TopicClass::Credentials {
            CRED_TOPIC_MAX_BYTES
        } else {
            GOSSIP_MAX_BYTES
        };
        let unverified = match envelope::decode_cached(&self.network, &message.data, cap, &mut self.keys) {
            Ok(u) => u,
            Err(e) => {
                debug!(peer = %source, error = %e, "malformed gossip");
                self.node.metrics.object("unknown", "malformed", "gossip");
                return Some(MessageAcceptance::Reject);
            }
        };
        let kind = unverified.kind;
        if !kind_fits(class, kind) {
            self.node.metrics.object(kind.name(), "wrong_topic", "gossip");
            return Some(MessageAcceptance::Reject);
        }
        let fingerprint = fingerprint(&message.data);
        let pending = Pending {
            message_id,
            source,
            fingerprint,
            unverified,
        };
        match kind {
            Kind::Heartbeat | Kind::Evidence => {
                self.node.metrics.object(kind.name(), "delivered", "gossip");
                self.offer(
                    Queue::Control,
                    &self.control,
                    EscrowWork::Envelope(Box::new(pending)),
                    kind.name(),
                )
            }
            Kind::Claim => {
                self.node.metrics.object(kind.name(), "delivered", "gossip");
                self.offer(
                    Queue::Claims,
                    &self.claims,
                    EscrowWork::Envelope(Box::new(pending)),
                    kind.name(),
                )
            }
            _ if seen_lock(&self.seen).contains(&fingerprint) => {
                self.node.metrics.object(kind.name(), "duplicate", "gossip");
                Some(MessageAcceptance::Ignore)
            }
            Kind::Attestation => self.offer(Queue::Bulk, &self.bulk, pending, kind.name()),
            _ => self.offer(Queue::Priority, &self.priority, pending, kind.name()),
        }
    }

    /// Puts one item on a queue, or sheds it (counted) when the queue is
    /// full: a full queue here is no fault of the sender, so the verdict is
    /// Ignore, never a penalty.
    fn offer<T>(&self, queue: Queue, tx: &mpsc::Sender<T>, item: T, kind: &'static str) -> Option<MessageAcceptance> {
        let stats = self.stats.get(queue.index());
        match tx.try_send(item) {
            Ok(()) => {
                if let Some(s) = stats {
                    s.depth.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
            Err(_) => {
                if let Some(s) = stats {
                    s.dropped.fetch_add(1, Ordering::Relaxed);
                    self.node
                        .metrics
                        .queue_dropped
                        .get_or_create(&QueueLabels { queue: s.name })
                        .inc();
                }
                self.node.metrics.object(kind, "shed", "gossip");
                Some(MessageAcceptance::Ignore)
            }
        }
    }
}

/// One task draining a few queues in priority order, a batch at a time,
/// with at most `in_flight_max` batches waiting on the actor.
struct Lane {
    queues: Vec<Queue>,
    in_flight_max: usize,
    stats: Arc<Vec<Arc<QueueStats>>>,
    node: NodeLink,
    shutdown: watch::Receiver<bool>,
}

impl Lane {
    async fn run<T, F, Fut>(mut self, mut receivers: Vec<mpsc::Receiver<T>>, mut handle: F)
    where
        F: FnMut(Vec<T>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut in_flight = FuturesUnordered::new();
        loop {
            let room = in_flight.len() < self.in_flight_max;
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                taken = next_batch(&mut receivers), if room => {
                    let Some((index, batch)) = taken else { break };
                    if let Some(queue) = self.queues.get(index) {
                        note_taken(&self.stats, *queue, batch.len(), &self.node);
                    }
                    in_flight.push(handle(batch));
                }
            }
        }
    }
}

/// The next batch of the first queue that holds anything, in priority
/// order, with the queue's position; `None` once a queue is closed (the
/// network loop is gone).
async fn next_batch<T>(receivers: &mut [mpsc::Receiver<T>]) -> Option<(usize, Vec<T>)> {
    std::future::poll_fn(|cx| {
        for (index, rx) in receivers.iter_mut().enumerate() {
            let mut batch = Vec::new();
            match rx.poll_recv_many(cx, &mut batch, VERIFY_BATCH_MAX) {
                Poll::Ready(0) => return Poll::Ready(None),
                Poll::Ready(_) => return Poll::Ready(Some((index, batch))),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

fn acceptance_label(acceptance: &MessageAcceptance) -> &'static str {
    match acceptance {
        MessageAcceptance::Accept => "accepted",
        MessageAcceptance::Ignore => "ignored",
        MessageAcceptance::Reject => "rejected",
    }
}

/// Hands vote traffic to the actor, all of a batch at once.
async fn vote_batch(node: NodeLink, results: mpsc::Sender<Internal>, batch: Vec<VoteWork>) {
    let (node, results) = (&node, &results);
    futures::future::join_all(batch.into_iter().map(|work| async move {
        match work {
            VoteWork::Request { request, channel } => {
                if let Some(response) = node.vote_request(request).await {
                    let _ = results.send(Internal::RespondVote { channel, response }).await;
                }
            }
            VoteWork::Response(response) => node.vote_response(response).await,
        }
    }))
    .await;
}

/// Verifies a batch of heartbeats and claims in one go and hands them, with
/// any certificates, to the actor; each verdict goes back to gossipsub.
async fn escrow_batch(network: NetworkId, node: NodeLink, results: mpsc::Sender<Internal>, batch: Vec<EscrowWork>) {
    let mut envelopes = Vec::new();
    let mut certificates = Vec::new();
    for work in batch {
        match work {
            EscrowWork::Envelope(pending) => envelopes.push(*pending),
            EscrowWork::Certificate {
                message_id,
                source,
                raw,
            } => certificates.push((message_id, source, raw)),
        }
    }
    let mut meta = Vec::with_capacity(envelopes.len());
    let mut items = Vec::with_capacity(envelopes.len());
    for p in envelopes {
        meta.push((p.message_id, p.source, p.unverified.kind));
        items.push(p.unverified);
    }
    let Some(verified) = verify(items).await else {
        return;
    };
    let (node, results) = (&node, &results);
    let envelope_asks = meta
        .into_iter()
        .zip(verified)
        .map(|((message_id, source, kind), result)| async move {
            let acceptance = match result {
                Err(e) => {
                    debug!(peer = %source, error = %e, "forged gossip");
                    node.metrics.object(kind.name(), "bad_signature", "gossip");
                    MessageAcceptance::Reject
                }
                // Anyone may relay evidence: it proves itself by the owner's
                // own signatures, checked here, off the actor.
                Ok(v) if v.kind == Kind::Evidence => {
                    match crate::core::wire::evidence(&network, &v, &mut envelope::KnownSignatures::new(0)) {
                        Ok(evidence) => {
                            warn!(
                                owner = %hex::encode(evidence.owner),
                                seq = evidence.seq,
                                "equivocation evidence from a peer: this owner signed two batches at one seq"
                            );
                            node.metrics.evidence_received.inc();
                            MessageAcceptance::Accept
                        }
                        Err(error) => {
                            debug!(%error, "invalid equivocation evidence");
                            MessageAcceptance::Reject
                        }
                    }
                }
                Ok(v) if v.kind == Kind::Heartbeat => match node.heartbeat(v).await {
                    Some(Ok(true)) => MessageAcceptance::Accept,
                    Some(Err(e)) if e.is_senders_fault() => MessageAcceptance::Reject,
                    Some(Ok(false) | Err(_)) | None => MessageAcceptance::Ignore,
                },
                Ok(v) => match node.gossip_claim(v).await {
                    Some(Ok(())) => MessageAcceptance::Accept,
                    _ => MessageAcceptance::Ignore,
                },
            };
            node.metrics
                .object(kind.name(), acceptance_label(&acceptance), "gossip");
            let _ = results.send(Internal::validated(message_id, source, acceptance)).await;
        });
    let certificate_asks = certificates.into_iter().map(|(message_id, source, raw)| async move {
        let acceptance = match node.certificate(raw).await {
            Some(Ok(true)) => MessageAcceptance::Accept,
            // Refused for want of room here (the ledger's waiting buffer
            // full) is no fault of the sender: ignored, not penalised.
            Some(Err(refused)) if refused.senders_fault => MessageAcceptance::Reject,
            Some(Ok(false) | Err(_)) | None => MessageAcceptance::Ignore,
        };
        node.metrics
            .object("certificate", acceptance_label(&acceptance), "gossip");
        let _ = results.send(Internal::validated(message_id, source, acceptance)).await;
    });
    futures::future::join(
        futures::future::join_all(envelope_asks),
        futures::future::join_all(certificate_asks),
    )
    .await;
}

/// Verifies a batch of credential objects and hands the good ones to the
/// actor in one ingest.
async fn credential_batch(node: NodeLink, results: mpsc::Sender<Internal>, seen: SharedSeen, pending: Vec<Pending>) {
    let mut meta = Vec::with_capacity(pending.len());
    let mut items = Vec::with_capacity(pending.len());
    for p in pending {
        meta.push((p.message_id, p.source, p.fingerprint));
        items.push(p.unverified);
    }
    let Some(verified) = verify(items).await else {
        return;
    };
    let mut good = Vec::with_capacity(verified.len());
    let mut good_meta = Vec::with_capacity(verified.len());
    for ((message_id, source, fingerprint), result) in meta.into_iter().zip(verified) {
        match result {
            Ok(v) => {
                good.push(v);
                good_meta.push((message_id, source, fingerprint));
            }
            Err(e) => {
                debug!(peer = %source, error = %e, "forged gossip");
                node.metrics.object("unknown", "bad_signature", "gossip");
                let _ = results
                    .send(Internal::validated(message_id, source, MessageAcceptance::Reject))
                    .await;
            }
        }
    }
    if good.is_empty() {
        return;
    }
    let Some(verdicts) = node.ingest(good, Source::Gossip).await else {
        return;
    };
    remember_held(&seen, good_meta.iter().map(|(_, _, f)| f), &verdicts);
    for ((message_id, source, _), verdict) in good_meta.into_iter().zip(verdicts) {
        let acceptance = match verdict {
            Ok(Verdict::New) => MessageAcceptance::Accept,
            Ok(Verdict::Duplicate) => MessageAcceptance::Ignore,
            Ok(Verdict::Rejected(e)) if e.is_sender_fault() => MessageAcceptance::Reject,
            Ok(Verdict::Rejected(_)) | Err(_) => MessageAcceptance::Ignore,
        };
        let _ = results.send(Internal::validated(message_id, source, acceptance)).await;
    }
}

/// Verifies signatures where it is cheapest: a few on the spot, a batch on
/// the blocking pool, a deep queue split over the cores. `None` when the
/// runtime is shutting down.
async fn verify(items: Vec<Unverified>) -> Option<Vec<Result<Verified, EnvelopeError>>> {
    if items.len() <= VERIFY_INLINE_MAX {
        return Some(envelope::verify_batch(items));
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let tasks = (items.len() / VERIFY_CHUNK_MIN).clamp(1, cores);
    let chunk = items.len().div_ceil(tasks);
    let mut rest = items;
    let mut handles = Vec::with_capacity(tasks);
    while !rest.is_empty() {
        let tail = rest.split_off(chunk.min(rest.len()));
        let head = std::mem::replace(&mut rest, tail);
        handles.push(tokio::task::spawn_blocking(move || envelope::verify_batch(head)));
    }
    let mut out = Vec::new();
    for handle in handles {
        out.extend(handle.await.ok()?);
    }
    Some(out)
}

/// Records the envelopes the actor now holds (new or duplicate); anything
/// it refused may be judged again.
fn remember_held<'a>(
    seen: &SharedSeen,
    fingerprints: impl Iterator<Item = &'a [u8; 32]>,
    verdicts: &[Result<Verdict, crate::ingest::SubmitError>],
) {
    let mut seen = seen_lock(seen);
    for (fingerprint, verdict) in fingerprints.zip(verdicts) {
        if matches!(verdict, Ok(Verdict::New | Verdict::Duplicate)) {
            seen.insert(*fingerprint);
        }
    }
}

fn note_taken(stats: &[Arc<QueueStats>], queue: Queue, n: usize, node: &NodeLink) {
    if let Some(s) = stats.get(queue.index()) {
        let before = s.depth.fetch_sub(n as u64, Ordering::Relaxed);
        node.metrics
            .queue_depth
            .get_or_create(&QueueLabels { queue: s.name })
            .set(i64::try_from(before.saturating_sub(n as u64)).unwrap_or(0));
    }
}

/// Decodes client submissions with one shared cache of signer keys:
/// decompressing a key costs about a third of a signature check, and a
/// network's issuers are few.
#[derive(Clone)]
pub(crate) struct Submissions {
    network: NetworkId,
    keys: Arc<Mutex<envelope::KeyCache>>,
}

impl Submissions {
    pub(crate) fn new(network: NetworkId) -> Submissions {
        Submissions {
            network,
            keys: Arc::default(),
        }
    }

    pub(crate) fn decode(&self, raw: &[u8]) -> Result<Unverified, EnvelopeError> {
        // A panic while decoding leaves at worst a key missing from the cache.
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        envelope::decode_cached(&self.network, raw, crate::core::limits::ENVELOPE_MAX_BYTES, &mut keys)
    }
}

/// Answers a peer's sync request with a page of the local credential log and
/// of the certificate log, cut to fit the response cap.
pub(super) async fn sync_page(node: &NodeLink, request: pb::SyncRequest) -> pb::SyncResponse {
    let empty = pb::SyncResponse {
        envelopes: vec![],
        next_cursor: request.cursor,
        log_len: 0,
        certificates: vec![],
        next_cert_cursor: request.cert_cursor,
        cert_log_len: 0,
    };
    let Some(Ok(page)) = node.log_page(request.cursor, request.limit, request.cert_cursor).await else {
        return empty;
    };
    let budget = SYNC_RESPONSE_MAX_BYTES / 4;
    let mut used = 0usize;
    let mut next_cursor = request.cursor;
    let mut envelopes = Vec::with_capacity(page.entries.len());
    for entry in page.entries {
        used = used.saturating_add(entry.envelope.len().saturating_add(8));
        if used > budget && !envelopes.is_empty() {
            break;
        }
        next_cursor = entry.position.saturating_add(1);
        envelopes.push(entry.envelope);
    }
    let mut used = 0usize;
    let mut next_cert_cursor = request.cert_cursor;
    let mut certificates = Vec::with_capacity(page.certificates.len());
    for (position, raw) in page.certificates {
        used = used.saturating_add(raw.len().saturating_add(8));
        if used > budget && !certificates.is_empty() {
            break;
        }
        next_cert_cursor = position.saturating_add(1);
        certificates.push(raw);
    }
    pb::SyncResponse {
        envelopes,
        next_cursor,
        log_len: page.log_len,
        certificates,
        next_cert_cursor,
        cert_log_len: page.cert_log_len,
    }
}

/// Verifies and applies a page pulled from a peer, skipping envelopes this
/// node is known to hold. Returns the cursors to ask for next and whether
/// the peer has more.
pub(super) async fn apply_sync_page(
    network: &NetworkId,
    node: &NodeLink,
    seen: &SharedSeen,
    peer: PeerId,
    response: pb::SyncResponse,
) -> (u64, u64, bool) {
    node.metrics.sync_pages.inc();
    let mut unseen: Vec<(&Vec<u8>, [u8; 32])> = response.envelopes.iter().map(|raw| (raw, fingerprint(raw))).collect();
    {
        let held = seen_lock(seen);
        unseen.retain(|(_, fingerprint)| !held.contains(fingerprint));
    }
    let mut fingerprints = Vec::with_capacity(unseen.len());
    let mut items = Vec::with_capacity(unseen.len());
    for (raw, fingerprint) in unseen {
        match envelope::decode(network, raw) {
            Ok(u) => {
                fingerprints.push(fingerprint);
                items.push(u);
            }
            Err(e) => {
                debug!(%peer, error = %e, "malformed envelope in a sync page");
                node.metrics.object("unknown", "malformed", "sync");
            }
        }
    }
    let mut verified = Vec::with_capacity(items.len());
    let mut verified_fingerprints = Vec::with_capacity(items.len());
    for (result, fingerprint) in verify(items).await.unwrap_or_default().into_iter().zip(fingerprints) {
        match result {
            Ok(v) => {
                verified.push(v);
                verified_fingerprints.push(fingerprint);
            }
            Err(_) => node.metrics.object("unknown", "bad_signature", "sync"),
        }
    }
    if !verified.is_empty() {
        let Some(verdicts) = node.ingest(verified, Source::Sync).await else {
            return (response.next_cursor, response.next_cert_cursor, false);
        };
        remember_held(seen, verified_fingerprints.iter(), &verdicts);
    }
    for raw in response.certificates.iter() {
        if node.certificate(raw.clone()).await.is_none() {
            return (response.next_cursor, response.next_cert_cursor, false);
        }
    }
    let more = (!response.envelopes.is_empty() && response.next_cursor < response.log_len)
        || (!response.certificates.is_empty() && response.next_cert_cursor < response.cert_log_len);
    (response.next_cursor, response.next_cert_cursor, more)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::envelope::seal;
    use libp2p::gossipsub::IdentTopic;

    fn fp(n: u64) -> [u8; 32] {
        fingerprint(&n.to_le_bytes())
    }

    #[tokio::test]
    async fn a_lane_takes_the_first_queue_that_holds_anything() {
        let (urgent, urgent_rx) = mpsc::channel(8);
        let (bulk, bulk_rx) = mpsc::channel(8);
        let mut receivers = vec![urgent_rx, bulk_rx];
        for n in 0..3 {
            bulk.try_send(("bulk", n)).expect("room");
        }
        urgent.try_send(("urgent", 0)).expect("room");
        urgent.try_send(("urgent", 1)).expect("room");
        // Queued after the bulk items, taken before them.
        let first = next_batch(&mut receivers).await.expect("open");
        assert_eq!(first, (0, vec![("urgent", 0), ("urgent", 1)]));
        let second = next_batch(&mut receivers).await.expect("open");
        assert_eq!(second, (1, vec![("bulk", 0), ("bulk", 1), ("bulk", 2)]));
        drop(urgent);
        assert!(
            next_batch(&mut receivers).await.is_none(),
            "a closed queue ends the lane"
        );
    }

    #[test]
    fn every_topic_takes_only_its_own_kinds() {
        let network = NetworkId([5; 32]);
        let topics = Topics::new(&network);
        let claims = IdentTopic::new(format!("{}claims/eu/1", super::super::topic_prefix(&network))).hash();
        let cases = [
            (topics.credentials.clone(), TopicClass::Credentials),
            (topics.operator.clone(), TopicClass::Operator),
            (
                super::super::certificate_topic(&network, "eu").hash(),
                TopicClass::Certificates,
            ),
            (topics.heartbeats.clone(), TopicClass::Heartbeats),
            (claims, TopicClass::Claims),
            (IdentTopic::new("/elsewhere/1").hash(), TopicClass::Other),
        ];
        for (topic, class) in cases {
            assert_eq!(topics.class(&topic), class, "{topic}");
        }
        for kind in [Kind::Attestation, Kind::Revocation, Kind::IssuerGrant] {
            assert!(kind_fits(TopicClass::Credentials, kind));
            assert!(!kind_fits(TopicClass::Claims, kind));
        }
        assert!(kind_fits(TopicClass::Claims, Kind::Claim));
        assert!(!kind_fits(TopicClass::Heartbeats, Kind::Claim));
        assert!(kind_fits(TopicClass::Heartbeats, Kind::Heartbeat));
        assert!(!kind_fits(TopicClass::Credentials, Kind::Distribution));
        assert!(kind_fits(TopicClass::Operator, Kind::Rebalance));
        // Certificates are not envelopes; nothing decoded as one fits there.
        assert!(!kind_fits(TopicClass::Certificates, Kind::Batch));
    }

    #[test]
    fn the_queue_figures_list_every_queue_in_priority_order() {
        let names: Vec<&str> = queue_stats().iter().map(|q| q.name).collect();
        assert_eq!(
            names,
            [
                "votes",
                "gossip_control",
                "gossip_claims",
                "gossip_certificates",
                "gossip_priority",
                "gossip_bulk"
            ]
        );
    }

    #[test]
    fn only_the_exact_bytes_of_a_held_envelope_are_recognised() {
        let mut seen = Seen::default();
        let held = b"an envelope as received".to_vec();
        seen.insert(fingerprint(&held));
        let mut variant = held.clone();
        variant[0] ^= 1;
        for (raw, expected) in [(&held, true), (&variant, false)] {
            assert_eq!(seen.contains(&fingerprint(raw)), expected, "{raw:?}");
        }
    }

    #[test]
    fn the_oldest_envelopes_are_forgotten_first() {
        let mut seen = Seen::default();
        let last = SEEN_CAPACITY as u64;
        for n in 0..=last {
            seen.insert(fp(n));
        }
        seen.insert(fp(last)); // again: no second place in the order
        for (n, expected) in [(0, false), (1, true), (last, true)] {
            assert_eq!(seen.contains(&fp(n)), expected, "{n}");
        }
        assert_eq!((seen.set.len(), seen.order.len()), (SEEN_CAPACITY, SEEN_CAPACITY));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verification_keeps_the_order_and_finds_the_forgery_at_every_batch_size() {
        let network = NetworkId([7; 32]);
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        // Inline, one blocking task, and a batch split over the cores.
        for size in [1usize, 2, 3, VERIFY_CHUNK_MIN * 3 + 5] {
            let forged = size / 2;
            let mut items = Vec::new();
            for n in 0..size {
                let (mut raw, _) = seal(&network, &key, Kind::Attestation, n.to_le_bytes().to_vec());
                if n == forged {
                    let last = raw.len() - 1;
                    raw[last] ^= 0x55;
                }
                items.push(envelope::decode(&network, &raw).expect("decodes"));
            }
            let expected: Vec<_> = items.iter().map(|u| u.id).collect();
            let results = verify(items).await.expect("verified");
            assert_eq!(results.len(), size);
            for (n, (result, id)) in results.iter().zip(&expected).enumerate() {
                match result {
                    Ok(v) => assert!(n != forged && v.id == *id, "size {size}, item {n}"),
                    Err(e) => assert!(
                        n == forged && *e == EnvelopeError::BadSignature,
                        "size {size}, item {n}"
                    ),
                }
            }
        }
    }
}
