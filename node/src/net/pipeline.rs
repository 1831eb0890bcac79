//! The gossip validation pipeline and the credential catch-up helpers.
//!
//! size → decode → cheap checks (kind matches topic, envelope already held)
//! → bounded per-class queue → batched signature verification with per-item
//! fallback → the actor (dedupe, apply, persist) → Accept / Reject / Ignore
//! back to gossipsub.
//!
//! Queues are bounded and prioritised: revocations (and grants) are drained
//! before attestations, because a late revocation is worse than a late
//! attestation. A full queue sheds the message (Ignore, counted): gossip is
//! best-effort and catch-up repairs what was shed.
//!
//! The worker takes whatever is queued (it never waits for a batch to
//! fill): a few signatures are checked on the spot, more on the blocking
//! pool, split over the cores when the queue is deep.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use credence_proto::v1 as pb;
use libp2p::PeerId;
use libp2p::gossipsub::{self, MessageAcceptance, MessageId};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::NodeLink;
use super::{CRED_TOPIC_MAX_BYTES, Internal, SYNC_RESPONSE_MAX_BYTES, topic_of};
use crate::core::envelope::{self, EnvelopeError, Kind, NetworkId, Unverified, Verified};
use crate::core::limits::GOSSIP_MAX_BYTES;
use crate::ingest::{Source, Verdict};
use crate::metrics::QueueLabels;

/// Revocations and grants waiting for verification (drained first).
pub const PRIORITY_QUEUE_CAPACITY: usize = 4096;
/// Attestations waiting for verification.
pub const BULK_QUEUE_CAPACITY: usize = 16384;
/// Most messages verified in one batch.
pub const VERIFY_BATCH_MAX: usize = 256;
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

/// The pipeline's queue figures, in priority order.
pub fn queue_stats() -> Vec<Arc<QueueStats>> {
    vec![
        QueueStats::new("gossip_priority", PRIORITY_QUEUE_CAPACITY),
        QueueStats::new("gossip_bulk", BULK_QUEUE_CAPACITY),
    ]
}

struct Pending {
    message_id: MessageId,
    source: PeerId,
    fingerprint: [u8; 32],
    unverified: Unverified,
}

/// The producer side of the pipeline, owned by the network loop.
pub(super) struct Pipeline {
    keys: envelope::KeyCache,
    priority: mpsc::Sender<Pending>,
    bulk: mpsc::Sender<Pending>,
    stats: Arc<Vec<Arc<QueueStats>>>,
    seen: SharedSeen,
    node: NodeLink,
}

impl Pipeline {
    /// Starts the verification worker.
    pub(super) fn start(node: NodeLink, results: mpsc::Sender<Internal>, shutdown: watch::Receiver<bool>) -> Pipeline {
        let (priority, priority_rx) = mpsc::channel(PRIORITY_QUEUE_CAPACITY);
        let (bulk, bulk_rx) = mpsc::channel(BULK_QUEUE_CAPACITY);
        let stats = node.net.queues.clone();
        let seen = SharedSeen::default();
        tokio::spawn(worker(
            node.clone(),
            priority_rx,
            bulk_rx,
            results,
            stats.clone(),
            seen.clone(),
            shutdown,
        ));
        Pipeline {
            keys: envelope::KeyCache::default(),
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

    /// Runs the cheap stages on one gossip message. Returns a verdict when the
    /// message is settled here (malformed, wrong topic, shed), `None` when it
    /// was queued for verification.
    pub(super) fn enqueue(
        &mut self,
        network: &NetworkId,
        source: PeerId,
        message_id: MessageId,
        message: &gossipsub::Message,
    ) -> Option<MessageAcceptance> {
        let cap = if message.topic == topic_of(network, Kind::Attestation).hash() {
            CRED_TOPIC_MAX_BYTES
        } else {
            GOSSIP_MAX_BYTES
        };
        let unverified = match envelope::decode_cached(network, &message.data, cap, &mut self.keys) {
            Ok(u) => u,
            Err(e) => {
                debug!(peer = %source, error = %e, "malformed gossip");
                self.node.metrics.object("unknown", "malformed", "gossip");
                return Some(MessageAcceptance::Reject);
            }
        };
        if topic_of(network, unverified.kind).hash() != message.topic {
            self.node
                .metrics
                .object(unverified.kind.name(), "wrong_topic", "gossip");
            return Some(MessageAcceptance::Reject);
        }
        let fingerprint = fingerprint(&message.data);
        if seen_lock(&self.seen).contains(&fingerprint) {
            self.node.metrics.object(unverified.kind.name(), "duplicate", "gossip");
            return Some(MessageAcceptance::Ignore);
        }
        let (queue, stats) = match unverified.kind {
            Kind::Revocation | Kind::IssuerGrant | Kind::Distribution | Kind::Rebalance => {
                (&self.priority, self.stats.first())
            }
            Kind::Attestation => (&self.bulk, self.stats.get(1)),
            // Kinds this node does not process yet are not relayed.
            _ => return Some(MessageAcceptance::Ignore),
        };
        let kind = unverified.kind;
        match queue.try_send(Pending {
            message_id,
            source,
            fingerprint,
            unverified,
        }) {
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
                self.node.metrics.object(kind.name(), "shed", "gossip");
                Some(MessageAcceptance::Ignore)
            }
        }
    }
}

async fn worker(
    node: NodeLink,
    mut priority: mpsc::Receiver<Pending>,
    mut bulk: mpsc::Receiver<Pending>,
    results: mpsc::Sender<Internal>,
    stats: Arc<Vec<Arc<QueueStats>>>,
    seen: SharedSeen,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut urgent = Vec::with_capacity(VERIFY_BATCH_MAX);
    let mut routine = Vec::with_capacity(VERIFY_BATCH_MAX);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            n = priority.recv_many(&mut urgent, VERIFY_BATCH_MAX) => {
                if n == 0 { break; }
                note_taken(&stats, 0, n, &node);
            }
            n = bulk.recv_many(&mut routine, VERIFY_BATCH_MAX) => {
                if n == 0 { break; }
                note_taken(&stats, 1, n, &node);
            }
        }
        let mut pending: Vec<Pending> = std::mem::take(&mut urgent);
        pending.append(&mut routine);
        let mut meta = Vec::with_capacity(pending.len());
        let mut items = Vec::with_capacity(pending.len());
        for p in pending {
            meta.push((p.message_id, p.source, p.fingerprint));
            items.push(p.unverified);
        }
        let Some(verified) = verify(items).await else {
            break;
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
            continue;
        }
        let Some(verdicts) = node.ingest(good, Source::Gossip).await else {
            break;
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

fn note_taken(stats: &[Arc<QueueStats>], index: usize, n: usize, node: &NodeLink) {
    if let Some(s) = stats.get(index) {
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

    fn fp(n: u64) -> [u8; 32] {
        fingerprint(&n.to_le_bytes())
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
