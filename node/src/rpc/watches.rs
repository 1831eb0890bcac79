//! `WatchClaim` streams, all served by one task per node.
//!
//! A watch is handed to the hub, which looks at claims in batches: the new
//! ones at once (so a stream's first message is immediate), the others when
//! due, each read of the actor answering every claim due in it. A claim is
//! looked at every [`WATCH_POLL`] at first, then less often (×1.5 per look,
//! up to [`WATCH_POLL_MAX`]): most claims settle within a few looks, and one
//! waiting long for `global` costs little. The stream gets one message per
//! step the claim has reached, in ladder order (`received`, `provisional`,
//! `regional`, `global`; `disputed` after `regional`, `rejected` after
//! `received`), each with that step's time: a step the claim passed between
//! two looks is still sent, as the claim stood at that step (the times of
//! later steps 0). So every stream starts with `received` (a stream opened
//! again after a node restarts replays the steps from the first). It ends
//! once a final status is sent, after [`WATCH_MAX`], or when the client
//! goes away.
//!
//! Watches are counted in two pools, decided at the first look. At most
//! [`WATCHES_MAX`] watch claims this node knows. A watch on an id it does not
//! know (yet: the claim may still be on its way from the entry node) gets
//! `unknown` at once and waits in a pool of its own, at most
//! [`UNKNOWN_WATCHES_MAX`], for at most [`UNKNOWN_WATCH_GRACE`]: when the
//! claim arrives it moves to the first pool, otherwise the stream ends with
//! `not_found`. So bogus ids never take a slot from a real claim. One watch
//! more than a pool holds is refused with `resource_exhausted`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use credence_proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::Status;

use super::escrow::{as_of_step, claim_message, is_final, steps_to};
use crate::core::escrow::Digest;
use crate::node::NodeHandle;

/// Most `WatchClaim` streams open at once on claims this node knows.
pub const WATCHES_MAX: usize = 4096;
/// Most `WatchClaim` streams open at once on ids this node does not know:
/// enough for clients that watch a claim as they submit it elsewhere, few
/// enough that watches on made-up ids cost little and never touch
/// [`WATCHES_MAX`].
pub const UNKNOWN_WATCHES_MAX: usize = 512;
/// How long a watch on an unknown id waits for the claim to arrive (gossip
/// and the hand-off to its owner take well under a second) before its
/// stream ends with `not_found`.
pub const UNKNOWN_WATCH_GRACE: Duration = Duration::from_secs(10);
/// Watches handed to the hub and not yet looked at: the hub takes them all
/// at each look (every [`WATCH_POLL`]), so only a burst of opens larger than
/// this within one look is refused.
pub const WATCHES_OPENING_MAX: usize = 4096;
/// Longest a `WatchClaim` stream stays open.
pub const WATCH_MAX: Duration = Duration::from_secs(600);
/// How soon a watched claim is first looked at again.
pub const WATCH_POLL: Duration = Duration::from_millis(50);
/// The longest interval between two looks at a watched claim.
pub const WATCH_POLL_MAX: Duration = Duration::from_secs(1);
/// Status messages buffered per stream: more than a claim has steps, so a
/// stream only fills when its client stops reading.
const STREAM_BUFFER: usize = 8;

/// What a stream carries.
pub type WatchItem = Result<pb::ClaimStatus, Status>;

/// The caps a hub enforces; [`WatchLimits::default`] is the node's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchLimits {
    /// Watches on known claims ([`WATCHES_MAX`]).
    pub known_max: usize,
    /// Watches on unknown ids ([`UNKNOWN_WATCHES_MAX`]).
    pub unknown_max: usize,
    /// How long an unknown id is waited for ([`UNKNOWN_WATCH_GRACE`]).
    pub unknown_grace: Duration,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits {
            known_max: WATCHES_MAX,
            unknown_max: UNKNOWN_WATCHES_MAX,
            unknown_grace: UNKNOWN_WATCH_GRACE,
        }
    }
}

/// Which pool a watch counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pool {
    /// Not looked at yet.
    New,
    Known,
    Unknown,
}

struct Watch {
    id: Digest,
    started: Instant,
    next: Instant,
    pause: Duration,
    /// The steps sent so far, in order.
    sent: Vec<&'static str>,
    /// Whether `unknown` was sent (once, at the first look).
    told_unknown: bool,
    pool: Pool,
    tx: mpsc::Sender<WatchItem>,
}

/// The handle the RPC service registers watches with.
#[derive(Clone, Debug)]
pub struct Watches {
    tx: mpsc::Sender<Watch>,
    open: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    known: AtomicUsize,
    unknown: AtomicUsize,
}

impl Watches {
    /// Starts the hub task with the node's limits.
    pub fn start(node: NodeHandle, shutdown: watch::Receiver<bool>) -> Watches {
        Watches::start_with(node, shutdown, WatchLimits::default())
    }

    /// Starts the hub task with other limits (tests use small ones).
    pub fn start_with(node: NodeHandle, shutdown: watch::Receiver<bool>, limits: WatchLimits) -> Watches {
        let (tx, rx) = mpsc::channel(WATCHES_OPENING_MAX);
        let open = Arc::new(Counts::default());
        tokio::spawn(run(node, rx, open.clone(), limits, shutdown));
        Watches { tx, open }
    }

    /// Opens a watch on a claim: the receiving end of its stream. A watch
    /// refused by a pool's cap gets the refusal as its stream's only item.
    pub fn add(&self, id: Digest) -> Result<mpsc::Receiver<WatchItem>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let now = Instant::now();
        let watch = Watch {
            id,
            started: now,
            next: now,
            pause: WATCH_POLL,
            sent: Vec::new(),
            told_unknown: false,
            pool: Pool::New,
            tx,
        };
        match self.tx.try_send(watch) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Status::resource_exhausted(format!(
                "this node is opening {WATCHES_OPENING_MAX} claim watches already; retry later or poll GetClaim"
            ))),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Status::unavailable("node is shutting down")),
        }
    }

    /// Watches open now on claims this node knows.
    pub fn open(&self) -> usize {
        self.open.known.load(Ordering::Acquire)
    }

    /// Watches open now on ids this node does not know.
    pub fn open_unknown(&self) -> usize {
        self.open.unknown.load(Ordering::Acquire)
    }
}

/// What becomes of one watch after a look.
enum Outcome {
    Keep,
    /// Its stream ends (after an error, if any).
    End(Option<Status>),
}

async fn run(
    node: NodeHandle,
    mut incoming: mpsc::Receiver<Watch>,
    open: Arc<Counts>,
    limits: WatchLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut watches: Vec<Watch> = Vec::new();
    let (mut known, mut unknown) = (0usize, 0usize);
    let mut tick = tokio::time::interval(WATCH_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut fresh = Vec::new();
        tokio::select! {
            _ = shutdown.changed() => break,
            n = incoming.recv_many(&mut fresh, WATCHES_OPENING_MAX) => {
                if n == 0 {
                    break;
                }
            }
            // Idle (nothing watched) until a watch arrives.
            _ = tick.tick(), if !watches.is_empty() => {}
        }
        let now = Instant::now();
        // New watches are looked at now; the others only when due.
        watches.append(&mut fresh);
        let due: Vec<usize> = (0..watches.len())
            .filter(|&i| watches[i].pool == Pool::New || watches[i].next <= now)
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
            let outcome = look(w, status, now, &limits, &mut known, &mut unknown);
            if let Outcome::End(error) = outcome {
                if let Some(error) = error {
                    // A full stream's client stopped reading; it just ends.
                    let _ = w.tx.try_send(Err(error));
                }
                finished[i] = true;
            }
            w.pause = (w.pause * 3 / 2).min(WATCH_POLL_MAX);
            w.next = now + w.pause;
        }
        for (i, w) in watches.iter().enumerate() {
            // Clients that went away free their slot at once.
            finished[i] |= w.tx.is_closed();
        }
        let mut index = 0;
        watches.retain(|w| {
            let keep = !finished[index];
            index += 1;
            if !keep {
                match w.pool {
                    Pool::Known => known = known.saturating_sub(1),
                    Pool::Unknown => unknown = unknown.saturating_sub(1),
                    Pool::New => {}
                }
            }
            keep
        });
        debug_assert_eq!(known + unknown, watches.len(), "every watch left is in one pool");
        open.known.store(known, Ordering::Release);
        open.unknown.store(unknown, Ordering::Release);
        node.metrics.rpc_watches.set(i64::try_from(known).unwrap_or(i64::MAX));
        node.metrics
            .rpc_watches_unknown
            .set(i64::try_from(unknown).unwrap_or(i64::MAX));
    }
    open.known.store(0, Ordering::Release);
    open.unknown.store(0, Ordering::Release);
}

/// One look at a watch: moves it between pools (refusing it when the pool it
/// needs is full), sends a changed status, and says whether it goes on.
fn look(
    w: &mut Watch,
    status: pb::ClaimStatus,
    now: Instant,
    limits: &WatchLimits,
    known: &mut usize,
    unknown: &mut usize,
) -> Outcome {
    let id = hex::encode(w.id);
    if status.status == "unknown" {
        match w.pool {
            Pool::New => {
                if *unknown >= limits.unknown_max {
                    return Outcome::End(Some(Status::resource_exhausted(format!(
                        "claim {id} is unknown to this node, and {} watches already wait for unknown claims; \
                         retry later, or watch it on the node it was submitted to",
                        limits.unknown_max
                    ))));
                }
                w.pool = Pool::Unknown;
                *unknown = unknown.saturating_add(1);
            }
            Pool::Unknown if now.duration_since(w.started) >= limits.unknown_grace => {
                return Outcome::End(Some(Status::not_found(format!(
                    "claim {id} is still unknown to this node after {:?}; check the id, or watch it on the node \
                     it was submitted to",
                    limits.unknown_grace
                ))));
            }
            Pool::Unknown | Pool::Known => {}
        }
    } else if w.pool != Pool::Known {
        if *known >= limits.known_max {
            return Outcome::End(Some(Status::resource_exhausted(format!(
                "this node already serves {} claim watches; retry later or poll GetClaim",
                limits.known_max
            ))));
        }
        if w.pool == Pool::Unknown {
            *unknown = unknown.saturating_sub(1);
        }
        w.pool = Pool::Known;
        *known = known.saturating_add(1);
    }
    let steps = steps_to(&status);
    let mut pending: Vec<pb::ClaimStatus> = steps
        .iter()
        .filter(|step| !w.sent.contains(step))
        .map(|step| as_of_step(&status, step))
        .collect();
    if steps.is_empty() && !w.told_unknown {
        pending.push(status.clone());
    }
    for message in pending {
        let step = steps.iter().copied().find(|s| *s == message.status);
        match w.tx.try_send(Ok(message)) {
            Ok(()) => match step {
                Some(step) => w.sent.push(step),
                None => w.told_unknown = true,
            },
            // A client that stopped reading is sent the rest at a later
            // look, while the watch lasts.
            Err(mpsc::error::TrySendError::Full(_)) => break,
            Err(mpsc::error::TrySendError::Closed(_)) => return Outcome::End(None),
        }
    }
    if is_final(&status.status) && steps.iter().all(|s| w.sent.contains(s)) {
        return Outcome::End(None);
    }
    if now.duration_since(w.started) >= WATCH_MAX {
        return Outcome::End(None);
    }
    Outcome::Keep
}
