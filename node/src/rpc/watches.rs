//! `WatchClaim` streams, all served by one task per node.
//!
//! A watch is registered with the hub, which looks at claims in batches: the
//! new ones at once (so a stream's first message is immediate), the others
//! when due, each read of the actor answering every claim due in it. A claim
//! is looked at every [`WATCH_POLL`] at first, then less often (×1.5 per
//! look, up to [`WATCH_POLL_MAX`]): most claims settle within a few looks,
//! and one waiting long for `global` costs little. The stream gets a message
//! whenever the status changes and ends at a final status, after
//! [`WATCH_MAX`], or when the client goes away. At most [`WATCHES_MAX`]
//! watches are open at once; one more is refused with `resource_exhausted`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use credence_proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::Status;

use super::escrow::{claim_message, is_final};
use crate::core::escrow::Digest;
use crate::node::NodeHandle;

/// Most `WatchClaim` streams open at once on a node.
pub const WATCHES_MAX: usize = 4096;
/// Longest a `WatchClaim` stream stays open.
pub const WATCH_MAX: Duration = Duration::from_secs(600);
/// How soon a watched claim is first looked at again.
pub const WATCH_POLL: Duration = Duration::from_millis(50);
/// The longest interval between two looks at a watched claim.
pub const WATCH_POLL_MAX: Duration = Duration::from_secs(1);
/// Status messages buffered per stream: more than a claim has statuses, so
/// a stream only fills when its client stops reading.
const STREAM_BUFFER: usize = 8;

/// What a stream carries.
pub type WatchItem = Result<pb::ClaimStatus, Status>;

struct Watch {
    id: Digest,
    started: Instant,
    next: Instant,
    pause: Duration,
    last: String,
    tx: mpsc::Sender<WatchItem>,
}

/// The handle the RPC service registers watches with.
#[derive(Clone, Debug)]
pub struct Watches {
    tx: mpsc::UnboundedSender<Watch>,
    open: Arc<AtomicUsize>,
}

impl Watches {
    /// Starts the hub task.
    pub fn start(node: NodeHandle, shutdown: watch::Receiver<bool>) -> Watches {
        let (tx, rx) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run(node, rx, open.clone(), shutdown));
        Watches { tx, open }
    }

    /// Opens a watch on a claim: the receiving end of its stream.
    pub fn add(&self, id: Digest) -> Result<mpsc::Receiver<WatchItem>, Status> {
        // Reserve the slot first, so concurrent callers cannot pass the cap.
        if self.open.fetch_add(1, Ordering::AcqRel) >= WATCHES_MAX {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Status::resource_exhausted(format!(
                "this node already serves {WATCHES_MAX} claim watches; retry later or poll GetClaim"
            )));
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let now = Instant::now();
        let watch = Watch {
            id,
            started: now,
            next: now,
            pause: WATCH_POLL,
            last: String::new(),
            tx,
        };
        if self.tx.send(watch).is_err() {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Status::unavailable("node is shutting down"));
        }
        Ok(rx)
    }

    /// Watches open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

async fn run(
    node: NodeHandle,
    mut incoming: mpsc::UnboundedReceiver<Watch>,
    open: Arc<AtomicUsize>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut watches: Vec<Watch> = Vec::new();
    let mut tick = tokio::time::interval(WATCH_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut fresh = Vec::new();
        tokio::select! {
            _ = shutdown.changed() => break,
            n = incoming.recv_many(&mut fresh, WATCHES_MAX) => {
                if n == 0 {
                    break;
                }
            }
            // Idle (nothing watched) until a watch arrives.
            _ = tick.tick(), if !watches.is_empty() => {}
        }
        let now = Instant::now();
        // New watches are looked at now; the others only when due.
        let first = watches.len();
        watches.append(&mut fresh);
        let due: Vec<usize> = (0..watches.len())
            .filter(|&i| i >= first || watches[i].next <= now)
            .collect();
        let ids: Vec<Digest> = due.iter().map(|&i| watches[i].id).collect();
        let statuses = if ids.is_empty() {
            Some(Vec::new())
        } else {
            node.escrow_read(move |escrow, book, now| {
                ids.iter()
                    .map(|id| claim_message(escrow, book, id, now))
                    .collect::<Vec<_>>()
            })
            .await
        };
        let Some(statuses) = statuses else {
            for w in &watches {
                let _ = w.tx.try_send(Err(Status::unavailable("node is shutting down")));
            }
            break;
        };
        let mut finished = vec![false; watches.len()];
        for (&i, status) in due.iter().zip(statuses) {
            let w = &mut watches[i];
            let mut done = false;
            if status.status != w.last {
                let name = status.status.clone();
                match w.tx.try_send(Ok(status)) {
                    Ok(()) => {
                        done = is_final(&name);
                        w.last = name;
                    }
                    // A client that stopped reading is sent the status at a
                    // later look, while the watch lasts.
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => done = true,
                }
            }
            w.pause = (w.pause * 3 / 2).min(WATCH_POLL_MAX);
            w.next = now + w.pause;
            finished[i] = done || now.duration_since(w.started) >= WATCH_MAX;
        }
        for (i, w) in watches.iter().enumerate() {
            // Clients that went away free their slot at once.
            finished[i] |= w.tx.is_closed();
        }
        let before = watches.len();
        let mut index = 0;
        watches.retain(|_| {
            let keep = !finished[index];
            index += 1;
            keep
        });
        open.fetch_sub(before - watches.len(), Ordering::AcqRel);
        node.metrics
            .rpc_watches
            .set(i64::try_from(watches.len()).unwrap_or(i64::MAX));
    }
    open.store(0, Ordering::Release);
}
