//! The gossip validation pipeline and the credential catch-up helpers.
//!
//! size → decode → cheap checks (kind matches topic) → bounded per-class
//! queue → batched signature verification with per-item fallback → the actor
//! (dedupe, apply, persist) → Accept / Reject / Ignore back to gossipsub.
//!
//! Queues are bounded and prioritised: revocations (and grants) are drained
//! before attestations, because a late revocation is worse than a late
//! attestation. A full queue sheds the message (Ignore, counted): gossip is
//! best-effort and catch-up repairs what was shed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use credence_proto::v1 as pb;
use libp2p::PeerId;
use libp2p::gossipsub::{self, MessageAcceptance, MessageId};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::{CRED_TOPIC_MAX_BYTES, Internal, SYNC_RESPONSE_MAX_BYTES, topic_of};
use crate::core::envelope::{self, Kind, NetworkId, Unverified, Verified};
use crate::core::limits::GOSSIP_MAX_BYTES;
use crate::metrics::QueueLabels;
use crate::node::{NodeHandle, Source, Verdict};

/// Revocations and grants waiting for verification (drained first).
pub const PRIORITY_QUEUE_CAPACITY: usize = 4096;
/// Attestations waiting for verification.
pub const BULK_QUEUE_CAPACITY: usize = 16384;
/// Most messages verified in one batch.
pub const VERIFY_BATCH_MAX: usize = 256;
/// Validation results waiting for the network loop.
pub const RESULTS_CAPACITY: usize = 8192;

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
    unverified: Unverified,
}

/// The producer side of the pipeline, owned by the network loop.
pub(super) struct Pipeline {
    keys: envelope::KeyCache,
    priority: mpsc::Sender<Pending>,
    bulk: mpsc::Sender<Pending>,
    stats: Arc<Vec<Arc<QueueStats>>>,
    node: NodeHandle,
}

impl Pipeline {
    /// Starts the verification worker.
    pub(super) fn start(
        network: NetworkId,
        node: NodeHandle,
        results: mpsc::Sender<Internal>,
        shutdown: watch::Receiver<bool>,
    ) -> Pipeline {
        let (priority, priority_rx) = mpsc::channel(PRIORITY_QUEUE_CAPACITY);
        let (bulk, bulk_rx) = mpsc::channel(BULK_QUEUE_CAPACITY);
        let stats = node.net.queues.clone();
        tokio::spawn(worker(
            network,
            node.clone(),
            priority_rx,
            bulk_rx,
            results,
            stats.clone(),
            shutdown,
        ));
        Pipeline {
            keys: envelope::KeyCache::default(),
            priority,
            bulk,
            stats,
            node,
        }
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
                        .get_or_create(&QueueLabels { queue: s.name.into() })
                        .inc();
                }
                self.node.metrics.object(kind.name(), "shed", "gossip");
                Some(MessageAcceptance::Ignore)
            }
        }
    }
}

async fn worker(
    network: NetworkId,
    node: NodeHandle,
    mut priority: mpsc::Receiver<Pending>,
    mut bulk: mpsc::Receiver<Pending>,
    results: mpsc::Sender<Internal>,
    stats: Arc<Vec<Arc<QueueStats>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = network;
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
            meta.push((p.message_id, p.source));
            items.push(p.unverified);
        }
        // Signature checks are CPU work: keep them off the async workers.
        let verified = match tokio::task::spawn_blocking(move || envelope::verify_batch(items)).await {
            Ok(v) => v,
            Err(_) => break,
        };
        let mut good = Vec::new();
        let mut good_meta = Vec::new();
        for ((message_id, source), result) in meta.into_iter().zip(verified) {
            match result {
                Ok(v) => {
                    good.push(v);
                    good_meta.push((message_id, source));
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
        for ((message_id, source), verdict) in good_meta.into_iter().zip(verdicts) {
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

fn note_taken(stats: &[Arc<QueueStats>], index: usize, n: usize, node: &NodeHandle) {
    if let Some(s) = stats.get(index) {
        let before = s.depth.fetch_sub(n as u64, Ordering::Relaxed);
        node.metrics
            .queue_depth
            .get_or_create(&QueueLabels { queue: s.name.into() })
            .set(i64::try_from(before.saturating_sub(n as u64)).unwrap_or(0));
    }
}

/// Answers a peer's sync request with a page of the local credential log and
/// of the certificate log, cut to fit the response cap.
pub(super) async fn sync_page(node: &NodeHandle, request: pb::SyncRequest) -> pb::SyncResponse {
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

/// Verifies and applies a page pulled from a peer. Returns the cursors to ask
/// for next and whether the peer has more.
pub(super) async fn apply_sync_page(
    network: &NetworkId,
    node: &NodeHandle,
    peer: PeerId,
    response: pb::SyncResponse,
) -> (u64, u64, bool) {
    node.metrics.sync_pages.inc();
    let mut items = Vec::with_capacity(response.envelopes.len());
    for raw in &response.envelopes {
        match envelope::decode(network, raw) {
            Ok(u) => items.push(u),
            Err(e) => {
                debug!(%peer, error = %e, "malformed envelope in a sync page");
                node.metrics.object("unknown", "malformed", "sync");
            }
        }
    }
    let verified: Vec<Verified> = match tokio::task::spawn_blocking(move || envelope::verify_batch(items)).await {
        Ok(results) => results
            .into_iter()
            .filter_map(|r| match r {
                Ok(v) => Some(v),
                Err(_) => {
                    node.metrics.object("unknown", "bad_signature", "sync");
                    None
                }
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    if !verified.is_empty() && node.ingest(verified, Source::Sync).await.is_none() {
        return (response.next_cursor, response.next_cert_cursor, false);
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
