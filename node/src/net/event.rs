//! What the network layer reports to whoever runs it: [`NetEvent`]s on a
//! bounded channel, each carrying the reply the network waits for (a gossip
//! verdict, a vote, a page of the logs). `net` knows nothing of the node; the
//! node's `start` wires the events to its actor. [`NodeLink`] is the network's
//! sending side, with one method per event.

use credence_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use super::NetHandle;
use crate::core::PublicKey;
use crate::core::envelope::Verified;
use crate::core::validator::ValidatorError;
use crate::ingest::{Refused, Source, SubmitError, SyncPage, Verdict};
use crate::metrics::Metrics;
use crate::store::StoreError;

/// Events waiting for whoever runs the network: enough for a burst of gossip
/// batches and vote traffic; a full channel holds the network's tasks back,
/// as a full actor queue would.
pub const NET_EVENTS_CAPACITY: usize = 1024;

/// One thing the network learned, and where to answer it.
#[derive(Debug)]
pub enum NetEvent {
    /// Verified objects from gossip or catch-up; the verdicts decide relaying.
    Ingest {
        objects: Vec<Verified>,
        source: Source,
        reply: oneshot::Sender<Vec<Result<Verdict, SubmitError>>>,
    },
    /// A peer pulls a page of the credential and certificate logs.
    LogPage {
        cursor: u64,
        limit: u32,
        cert_cursor: u64,
        reply: oneshot::Sender<Result<SyncPage, StoreError>>,
    },
    /// A claim from gossip.
    Claim {
        claim: Verified,
        reply: oneshot::Sender<Result<(), SubmitError>>,
    },
    /// A certificate from gossip or catch-up: `Ok(true)` when new.
    Certificate {
        raw: Vec<u8>,
        reply: oneshot::Sender<Result<bool, Refused>>,
    },
    /// A validator of this region asks for a vote (or hands over a claim).
    VoteRequest {
        request: pb::VoteRequest,
        reply: oneshot::Sender<pb::VoteResponse>,
    },
    /// A voter answered one of this node's vote requests.
    VoteResponse { response: pb::VoteResponse },
    /// A heartbeat from gossip: `Ok(true)` when it is news.
    Heartbeat {
        heartbeat: Verified,
        reply: oneshot::Sender<Result<bool, ValidatorError>>,
    },
    /// A round-trip time sample to a validator (dropped when the channel is full).
    Rtt { key: PublicKey, rtt_ms: f64 },
}

/// The network's side of the event channel, with the metrics it counts into
/// and its own handle; cheap to clone.
#[derive(Clone)]
pub struct NodeLink {
    tx: mpsc::Sender<NetEvent>,
    pub metrics: Metrics,
    pub net: NetHandle,
}

impl NodeLink {
    /// A link and the receiver its events arrive on.
    pub fn channel(metrics: Metrics, net: NetHandle) -> (NodeLink, mpsc::Receiver<NetEvent>) {
        let (tx, rx) = mpsc::channel(NET_EVENTS_CAPACITY);
        (NodeLink { tx, metrics, net }, rx)
    }

    async fn ask<T>(&self, event: impl FnOnce(oneshot::Sender<T>) -> NetEvent) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(event(reply)).await.ok()?;
        rx.await.ok()
    }

    pub async fn ingest(&self, objects: Vec<Verified>, source: Source) -> Option<Vec<Result<Verdict, SubmitError>>> {
        self.ask(|reply| NetEvent::Ingest { objects, source, reply }).await
    }

    pub async fn log_page(&self, cursor: u64, limit: u32, cert_cursor: u64) -> Option<Result<SyncPage, StoreError>> {
        self.ask(|reply| NetEvent::LogPage {
            cursor,
            limit,
            cert_cursor,
            reply,
        })
        .await
    }

    pub async fn gossip_claim(&self, claim: Verified) -> Option<Result<(), SubmitError>> {
        self.ask(|reply| NetEvent::Claim { claim, reply }).await
    }

    pub async fn certificate(&self, raw: Vec<u8>) -> Option<Result<bool, Refused>> {
        self.ask(|reply| NetEvent::Certificate { raw, reply }).await
    }

    pub async fn vote_request(&self, request: pb::VoteRequest) -> Option<pb::VoteResponse> {
        self.ask(|reply| NetEvent::VoteRequest { request, reply }).await
    }

    pub async fn vote_response(&self, response: pb::VoteResponse) {
        let _ = self.tx.send(NetEvent::VoteResponse { response }).await;
    }

    pub async fn heartbeat(&self, heartbeat: Verified) -> Option<Result<bool, ValidatorError>> {
        self.ask(|reply| NetEvent::Heartbeat { heartbeat, reply }).await
    }

    pub fn rtt(&self, key: PublicKey, rtt_ms: f64) {
        let _ = self.tx.try_send(NetEvent::Rtt { key, rtt_ms });
    }
}
