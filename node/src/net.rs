//! The libp2p network: the only module that touches the `Swarm`.
//!
//! TCP + noise + yamux, identify, ping, gossipsub (anonymous, application
//! validated, content-addressed ids), request-response for credential
//! catch-up, connection limits and an admin block-list. Others talk to it
//! through [`NetHandle`]; what it learns it reports as [`NetEvent`]s (see
//! `event.rs`), and it knows nothing of the node. Inbound gossip flows through
//! the validation pipeline in [`pipeline`] to those events and back as
//! Accept / Reject / Ignore.

pub mod codec;
mod event;
pub mod pipeline;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use credence_proto::v1 as pb;
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId, TopicHash};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, allow_block_list, connection_limits, identify, noise, ping, tcp, yamux};
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

pub use codec::{SYNC_PROTOCOL, SYNC_RESPONSE_MAX_BYTES, VOTE_PROTOCOL};
pub use event::{NET_EVENTS_CAPACITY, NetEvent, NodeLink};

use crate::config::Validator;
use crate::core::envelope::{self, Kind, NetworkId};
use crate::core::limits::GOSSIP_MAX_BYTES;
use crate::metrics::Metrics;
use pipeline::{Pipeline, QueueStats};

/// Commands from handles to the network loop. Publishing is fire-and-forget:
/// when this queue is full the message is shed and counted (catch-up repairs it).
pub const NET_COMMAND_CAPACITY: usize = 8192;
/// How often every connected peer's credential log is pulled, besides on
/// each (re)connection.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(10);
/// The periodic pull is spread over this many slots of `SYNC_INTERVAL`:
/// each peer is pulled once per interval, in the slot its id and this
/// node's give it, rather than every peer at once. Every node pulling every
/// peer in the same instant (testnet nodes start together) made a burst of
/// eleven pages per node that stalled votes for a few hundred milliseconds
/// every `SYNC_INTERVAL`.
pub const SYNC_SLOTS: u32 = 16;
/// Entries asked for per sync page.
pub const SYNC_PAGE_ENTRIES: u32 = 512;
/// How often disconnected known peers are redialled.
pub const REDIAL_INTERVAL: Duration = Duration::from_secs(1);
/// How long gossipsub remembers a message id (and refuses to publish or
/// accept it again). Far above a message's propagation time; short enough
/// that a claim still waiting for its owner can be gossiped again
/// (`escrow::CLAIM_REPUBLISH_MS`) to an owner that missed it.
pub const DUPLICATE_CACHE_TIME: Duration = Duration::from_secs(20);
/// Ping period; a failed ping closes the connection so it is redialled.
pub const PING_INTERVAL: Duration = Duration::from_secs(2);
/// Largest gossip message on the credential topic: an attestation's 4 KiB of
/// data plus its fields and envelope fit with room to spare.
pub const CRED_TOPIC_MAX_BYTES: usize = 8 * 1024;
/// Mesh degree per topic (gossipsub's D; its default is 6). Publishing
/// floods to every subscribed peer, and a network of validators is dialled
/// all to all, so every mesh forward is a duplicate kept for redundancy
/// only: each one costs every receiver a decrypt, a decode, an id and a
/// timer. Three keep two spare paths to each peer and halve that work
/// against the default (see BENCHMARKS.md, "Escrow").
pub const GOSSIP_MESH_N: usize = 3;
/// Fewest mesh peers before gossipsub grafts more.
pub const GOSSIP_MESH_N_LOW: usize = 2;
/// Most mesh peers before gossipsub prunes.
pub const GOSSIP_MESH_N_HIGH: usize = 5;
/// Peers told about recent message ids (IHAVE) each heartbeat, outside the mesh.
pub const GOSSIP_LAZY: usize = 3;
/// Consecutive gossipsub heartbeats (500 ms each) in which sends to one peer
/// failed because its queue was full before the link is reset. A link whose
/// outbound gossip stream has stopped draining stays stuck for good while
/// its other protocols keep the connection alive, and everything gossiped to
/// that peer is lost; closing it lets the redial timer open a fresh one, and
/// catch-up repairs the gap. Ten seconds of a full queue is not a burst: a
/// shorter limit closed links that were only slow for a moment (a node
/// starved of CPU while thousands of credentials were issued), and lost
/// what was in flight on them.
pub const GOSSIP_STUCK_REPORTS: u32 = 20;
/// Claims handed to their owner whose request failed (the connection closed,
/// the request timed out) and wait to be sent again, at most. Beyond it a
/// claim waits for its republish (`escrow::CLAIM_REPUBLISH_MS`).
pub const HANDOFFS_PENDING_MAX: usize = 4096;
/// Times a claim's handoff is sent before it is left to the republish.
pub const HANDOFF_ATTEMPTS_MAX: u32 = 3;
/// Incoming connections still in their handshake (TCP accepted, noise and
/// yamux not done) at once; beyond it new ones are refused. Without it a
/// flooder that never finishes handshakes held thousands of descriptors. An
/// honest network dials each node once per peer, far below it.
pub const PENDING_INCOMING_MAX: u32 = 64;
/// Score below which gossipsub ignores a peer entirely (graylist). A peer gets
/// there after a handful of invalid messages: see [`peer_score_params`].
pub const GRAYLIST_THRESHOLD: f64 = -80.0;

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid p2p listen address {addr:?}: {message}")]
    BadListen { addr: String, message: String },
    #[error("cannot listen on {addr}: {message} (is the port in use? pick another p2p_listen)")]
    Listen { addr: String, message: String },
    #[error("invalid peer address {addr:?}: {message}")]
    BadPeer { addr: String, message: String },
    #[error("cannot build the libp2p stack: {0}")]
    Build(String),
}

/// What the network knows about a connected peer.
#[derive(Clone, Debug)]
pub struct PeerSummary {
    pub peer_id: PeerId,
    pub address: String,
    pub name: String,
    pub region: String,
    pub score: f64,
    /// Topics the peer subscribes to, short names; `+` when in our mesh.
    pub topics: Vec<String>,
}

/// Everything the network needs to start.
pub struct NetConfig {
    pub keypair: libp2p::identity::Keypair,
    pub network_id: NetworkId,
    pub listen: Vec<String>,
    pub peers: Vec<String>,
    pub validators: Vec<Validator>,
    pub max_incoming_connections: u32,
    pub fault_injection: bool,
    pub dial_genesis_addresses: bool,
    /// This node's region (it takes claims gossiped to it); none for observers.
    pub region: Option<String>,
}

enum Command {
    Publish {
        kind: Kind,
        raw: Vec<u8>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerSummary>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<String>>,
    },
    Block {
        peer: PeerId,
        blocked: bool,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    RequestVote {
        voter: [u8; 32],
        request: pb::VoteRequest,
    },
    PublishRaw {
        topic: IdentTopic,
        /// The topic's short name, for metrics and logs.
        label: &'static str,
        raw: Vec<u8>,
    },
    Disconnect {
        key: [u8; 32],
    },
    SyncNow {
        key: [u8; 32],
    },
}

/// Messages from the network's helper tasks back to its loop.
enum Internal {
    Validated {
        message_id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    },
    Respond {
        channel: request_response::ResponseChannel<pb::SyncResponse>,
        response: pb::SyncResponse,
    },
    RespondVote {
        channel: request_response::ResponseChannel<pb::VoteResponse>,
        response: pb::VoteResponse,
    },
    SyncApplied {
        peer: PeerId,
        next_cursor: u64,
        next_cert_cursor: u64,
        more: bool,
    },
}

/// A cloneable handle to the network loop.
#[derive(Clone)]
pub struct NetHandle {
    tx: mpsc::Sender<Command>,
    metrics: Metrics,
    /// `/credence/<network_id_hex8>/`.
    topic_prefix: String,
    /// Queue figures shared with the validation pipeline.
    pub queues: Arc<Vec<Arc<QueueStats>>>,
    submissions: pipeline::Submissions,
}

/// The receiving half, handed to [`spawn`].
pub struct NetDriver {
    rx: mpsc::Receiver<Command>,
}

impl NetHandle {
    /// A handle and the driver its loop will consume.
    pub fn new(metrics: Metrics, network: &NetworkId) -> (NetHandle, NetDriver) {
        let (tx, rx) = mpsc::channel(NET_COMMAND_CAPACITY);
        let queues = Arc::new(pipeline::queue_stats());
        let topic_prefix = topic_prefix(network);
        let submissions = pipeline::Submissions::new(*network);
        (
            NetHandle {
                tx,
                metrics,
                topic_prefix,
                queues,
                submissions,
            },
            NetDriver { rx },
        )
    }

    /// Decodes a client's envelope (size caps first), with signer keys
    /// decompressed once for all submissions.
    pub fn decode_submission(&self, raw: &[u8]) -> Result<envelope::Unverified, envelope::EnvelopeError> {
        self.submissions.decode(raw)
    }

    /// Publishes an accepted object on its topic; sheds (and counts) when the
    /// network loop is saturated.
    pub fn publish(&self, kind: Kind, raw: Vec<u8>) {
        if self.tx.try_send(Command::Publish { kind, raw }).is_err() {
            self.metrics
                .queue_dropped
                .get_or_create(&crate::metrics::QueueLabels { queue: "publish" })
                .inc();
        }
    }

    /// Asks a validator for its vote on a batch (fire-and-forget: the answer
    /// comes back to the node actor; a lost one is asked again).
    pub fn request_vote(&self, voter: [u8; 32], request: pb::VoteRequest) {
        self.try_command(Command::RequestVote { voter, request }, "vote_requests");
    }

    /// Closes the connections to a validator (it is suspected); the redial
    /// timer opens fresh ones.
    pub fn disconnect(&self, key: [u8; 32]) {
        self.try_command(Command::Disconnect { key }, "net_commands");
    }

    /// Pulls a validator's logs now (its frontier is ahead of ours).
    pub fn sync_now(&self, key: [u8; 32]) {
        self.try_command(Command::SyncNow { key }, "net_commands");
    }

    /// Gossips a claim to its home region.
    pub fn publish_claim(&self, region: &str, raw: Vec<u8>) {
        let topic = IdentTopic::new(format!("{}claims/{region}/1", self.topic_prefix));
        self.try_command(
            Command::PublishRaw {
                topic,
                label: "claims",
                raw,
            },
            "publish",
        );
    }

    /// Gossips a certificate formed here to this node's own region (its
    /// region's certificate topic, [`certificate_topic`]); the other regions
    /// pull it by frontier difference.
    pub fn publish_certificate(&self, region: &str, raw: Vec<u8>) {
        self.try_command(
            Command::PublishRaw {
                topic: IdentTopic::new(format!("{}certs/{region}/1", self.topic_prefix)),
                label: "certs",
                raw,
            },
            "publish",
        );
    }

    fn try_command(&self, command: Command, queue: &'static str) {
        if self.tx.try_send(command).is_err() {
            self.metrics
                .queue_dropped
                .get_or_create(&crate::metrics::QueueLabels { queue })
                .inc();
        }
    }

    /// The connected peers.
    pub async fn peers(&self) -> Vec<PeerSummary> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Peers { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The addresses the swarm listens on.
    pub async fn listen_addrs(&self) -> Vec<String> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::ListenAddrs { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Blocks (or unblocks) a peer: refuses its connections and drops the
    /// current ones. Only reachable through RPC when fault injection is on.
    /// Returns every peer blocked afterwards.
    pub async fn set_blocked(&self, peer: PeerId, blocked: bool) -> Option<Vec<PeerId>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Block { peer, blocked, reply }).await.ok()?;
        rx.await.ok()
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    sync: request_response::Behaviour<codec::SyncCodec>,
    vote: request_response::Behaviour<codec::VoteCodec>,
}

/// Topic names under `/credence/<network_id_hex8>/…/1`.
pub fn topic(network: &NetworkId, name: &str) -> IdentTopic {
    IdentTopic::new(format!("{}{name}/1", topic_prefix(network)))
}

/// What every topic name of this network starts with.
fn topic_prefix(network: &NetworkId) -> String {
    format!("/credence/{}/", network.short_hex())
}

/// A topic's name without the network prefix and version (`cred`,
/// `claims/eu`), as [`topic`] was given it.
fn topic_short_name<'a>(prefix: &str, topic: &'a TopicHash) -> &'a str {
    let full = topic.as_str();
    let name = full.strip_prefix(prefix).unwrap_or(full);
    name.strip_suffix("/1").unwrap_or(name)
}

/// A region's certificate topic. Only its own validators subscribe
/// (observers subscribe to every region's): a certificate costs a copy per
/// node of its region, not of the network, and the other regions take it
/// in pages from their frontier pulls (`core::validator::FRONTIER_PULL_GAP_MS`).
pub fn certificate_topic(network: &NetworkId, region: &str) -> IdentTopic {
    topic(network, &format!("certs/{region}"))
}

/// The topic an object kind travels on.
pub fn topic_of(network: &NetworkId, kind: Kind) -> IdentTopic {
    let name = match kind {
        Kind::Attestation | Kind::Revocation | Kind::IssuerGrant => "cred",
        Kind::Distribution | Kind::Rebalance => "dist",
        // Certificates travel on their region's topic: see `certificate_topic`.
        Kind::Batch | Kind::Vote | Kind::Freeze => "certs",
        // Claims travel on their home region's topic: see `NetHandle::publish_claim`.
        Kind::Claim => "claims",
        Kind::Heartbeat => "heartbeat",
        Kind::Evidence => "evidence",
    };
    topic(network, name)
}

/// Weight of every topic's score. The topics are scored alike: an invalid
/// message is a forgery whichever topic it came on.
pub const TOPIC_WEIGHT: f64 = 1.0;
/// Score per invalid message, squared: a peer's topic score is
/// `INVALID_MESSAGE_WEIGHT · n²` after `n` rejected messages (bad signature,
/// malformed, wrong topic, forged certificate). Three reach -90, past
/// [`GRAYLIST_THRESHOLD`]. Honest peers relay only what they verified, so
/// they never send one.
pub const INVALID_MESSAGE_WEIGHT: f64 = -10.0;
/// How much of the invalid-message count is kept each second: a graylisted
/// peer that stops forging is listened to again after a minute or so.
pub const INVALID_MESSAGE_DECAY: f64 = 0.99;
/// Peers on one IP address before IP colocation costs score. A local testnet
/// puts every node on 127.0.0.1 (up to 64 of them), so the threshold sits
/// above that: no honest testnet peer is ever penalised for sharing the
/// loopback address, while a flooder that opens peers by the hundred from
/// one address is (`(peers − threshold)²`, weight -1: graylisted from nine
/// peers over). No address is whitelisted: an attacker on this host shares
/// the loopback address too.
pub const IP_COLOCATION_THRESHOLD: f64 = 80.0;
/// Weight of the IP colocation penalty (per squared peer over the threshold).
pub const IP_COLOCATION_WEIGHT: f64 = -1.0;
/// Behaviour penalties (IWANT promises not kept, GRAFTs during backoff)
/// tolerated before they cost score. Under the heaviest honest load a busy
/// peer breaks a few promises a second when its send queues overflow; with
/// [`BEHAVIOUR_PENALTY_DECAY`] a peer has to break more than twenty a second,
/// for seconds, to cross it, which only a peer that advertises what it never
/// sends does.
pub const BEHAVIOUR_PENALTY_THRESHOLD: f64 = 200.0;
/// Weight of the behaviour penalty (per squared penalty over the threshold):
/// about nine penalties over it reach the graylist.
pub const BEHAVIOUR_PENALTY_WEIGHT: f64 = -1.0;
/// How much of the behaviour-penalty count is kept each second.
pub const BEHAVIOUR_PENALTY_DECAY: f64 = 0.9;

/// Peer scoring: invalid messages weigh heavily (see
/// [`INVALID_MESSAGE_WEIGHT`]); IP colocation and broken gossip promises
/// count only far beyond what honest peers do ([`IP_COLOCATION_THRESHOLD`],
/// [`BEHAVIOUR_PENALTY_THRESHOLD`]). Slowness is not scored (gossipsub's
/// slow-peer penalty for expired sends is off): an overloaded honest peer
/// would be graylisted within seconds and every message from it dropped,
/// claims included, which have no other path to their owner. A slow peer is
/// the delay-aware quorum's business (measured, suspected, reported), not a
/// reason to stop listening to it. Mesh-delivery scores are off too: in a
/// network dialled all to all the mesh is mostly redundancy.
pub fn peer_score_params(topics: &[TopicHash]) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let mut params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: IP_COLOCATION_WEIGHT,
        ip_colocation_factor_threshold: IP_COLOCATION_THRESHOLD,
        ip_colocation_factor_whitelist: HashSet::new(),
        behaviour_penalty_weight: BEHAVIOUR_PENALTY_WEIGHT,
        behaviour_penalty_threshold: BEHAVIOUR_PENALTY_THRESHOLD,
        behaviour_penalty_decay: BEHAVIOUR_PENALTY_DECAY,
        slow_peer_weight: 0.0,
        ..Default::default()
    };
    for topic in topics {
        let topic_params = gossipsub::TopicScoreParams {
            topic_weight: TOPIC_WEIGHT,
            time_in_mesh_weight: 0.0,
            first_message_deliveries_weight: 0.0,
            mesh_message_deliveries_weight: 0.0,
            mesh_failure_penalty_weight: 0.0,
            invalid_message_deliveries_weight: INVALID_MESSAGE_WEIGHT,
            invalid_message_deliveries_decay: INVALID_MESSAGE_DECAY,
            ..Default::default()
        };
        params.topics.insert(topic.clone(), topic_params);
    }
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: GRAYLIST_THRESHOLD,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 5.0,
    };
    (params, thresholds)
}

/// Builds the swarm, binds its listeners and starts its loop.
pub async fn spawn(
    config: NetConfig,
    driver: NetDriver,
    node: NodeLink,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, NetError> {
    let network_id = config.network_id;
    let mut topics: Vec<IdentTopic> = ["cred", "dist", "heartbeat", "evidence"]
        .iter()
        .map(|name| topic(&network_id, name))
        .collect();
    if let Some(region) = &config.region {
        topics.push(topic(&network_id, &format!("claims/{region}")));
        topics.push(certificate_topic(&network_id, region));
    } else {
        let regions: std::collections::BTreeSet<&str> = config.validators.iter().map(|v| v.region.as_str()).collect();
        topics.extend(regions.into_iter().map(|region| certificate_topic(&network_id, region)));
    }
    let cred_topic = topic(&network_id, "cred").hash();
    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(move |message: &gossipsub::Message| message_id(&network_id, &message.data))
        .max_transmit_size(GOSSIP_MAX_BYTES)
        .max_transmit_size_for_topic(CRED_TOPIC_MAX_BYTES, cred_topic)
        .heartbeat_interval(Duration::from_millis(500))
        .duplicate_cache_time(DUPLICATE_CACHE_TIME)
        .mesh_n(GOSSIP_MESH_N)
        .mesh_n_low(GOSSIP_MESH_N_LOW)
        .mesh_n_high(GOSSIP_MESH_N_HIGH)
        .mesh_outbound_min(1)
        .gossip_lazy(GOSSIP_LAZY)
        .build()
        .map_err(|e| NetError::Build(e.to_string()))?;
    let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config)
        .map_err(|e| NetError::Build(e.to_string()))?;
    let hashes: Vec<TopicHash> = topics.iter().map(|t| t.hash()).collect();
    let (params, thresholds) = peer_score_params(&hashes);
    gossipsub.with_peer_score(params, thresholds).map_err(NetError::Build)?;
    for t in &topics {
        gossipsub.subscribe(t).map_err(|e| NetError::Build(e.to_string()))?;
    }
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established_incoming(Some(config.max_incoming_connections))
        .with_max_established_per_peer(Some(2))
        .with_max_pending_incoming(Some(PENDING_INCOMING_MAX));
    let public = config.keypair.public();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetError::Build(e.to_string()))?
        .with_behaviour(|_| Behaviour {
            blocked: allow_block_list::Behaviour::default(),
            limits: connection_limits::Behaviour::new(limits),
            gossipsub,
            identify: identify::Behaviour::new(identify::Config::new("/credence/1".into(), public)),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
            sync: request_response::Behaviour::with_codec(
                codec::SyncCodec::new(codec::SYNC_REQUEST_MAX_BYTES, codec::SYNC_RESPONSE_MAX_BYTES),
                [(SYNC_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(15)),
            ),
            vote: request_response::Behaviour::with_codec(
                codec::VoteCodec::new(codec::VOTE_REQUEST_MAX_BYTES, codec::VOTE_RESPONSE_MAX_BYTES),
                [(VOTE_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
            ),
        })
        .map_err(|e| NetError::Build(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    for addr in &config.listen {
        let ma: Multiaddr = addr
            .parse()
            .map_err(|e: libp2p::multiaddr::Error| NetError::BadListen {
                addr: addr.clone(),
                message: e.to_string(),
            })?;
        swarm.listen_on(ma).map_err(|e| NetError::Listen {
            addr: addr.clone(),
            message: e.to_string(),
        })?;
    }
    // Wait for the listeners to bind (or fail) so a port clash is a start error.
    let mut listening = Vec::new();
    while listening.len() < config.listen.len() {
        match tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => listening.push(address),
            Ok(SwarmEvent::ListenerError { error, .. }) | Ok(SwarmEvent::ListenerClosed { reason: Err(error), .. }) => {
                return Err(NetError::Listen {
                    addr: config.listen.join(","),
                    message: error.to_string(),
                });
            }
            Ok(_) => {}
            Err(_) => {
                return Err(NetError::Listen {
                    addr: config.listen.join(","),
                    message: "timed out waiting for the listener".into(),
                });
            }
        }
    }
    info!(addrs = ?listening, peer_id = %swarm.local_peer_id(), "p2p listening");

    let local = *swarm.local_peer_id();
    let mut known: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
    let mut names = HashMap::new();
    let mut keys = HashMap::new();
    for v in &config.validators {
        if let Some(peer) = crate::keys::peer_id_of(&v.key) {
            names.insert(peer, (v.name.clone(), v.region.clone()));
            keys.insert(peer, v.key);
            if peer == local {
                continue;
            }
            if !config.dial_genesis_addresses {
                continue;
            }
            for a in &v.addresses {
                if let Ok(ma) = a.parse::<Multiaddr>() {
                    known.entry(peer).or_default().push(ma);
                }
            }
        }
    }
    let mut anonymous = Vec::new();
    for p in &config.peers {
        let ma: Multiaddr = p.parse().map_err(|e: libp2p::multiaddr::Error| NetError::BadPeer {
            addr: p.clone(),
            message: e.to_string(),
        })?;
        match ma.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(peer)) if peer != local => known.entry(peer).or_default().push(ma),
            Some(libp2p::multiaddr::Protocol::P2p(_)) => {}
            _ => anonymous.push(ma),
        }
    }
    let (internal_tx, internal_rx) = mpsc::channel(pipeline::RESULTS_CAPACITY);
    let pipeline = Pipeline::start(network_id, node.clone(), internal_tx.clone(), shutdown.clone());
    let mut event_loop = EventLoop {
        swarm,
        network_id,
        node,
        commands: driver.rx,
        internal_rx,
        internal_tx,
        pipeline,
        known,
        anonymous,
        names,
        keys,
        connected: HashMap::new(),
        cursors: HashMap::new(),
        cert_cursors: HashMap::new(),
        syncing: HashSet::new(),
        blocked: HashSet::new(),
        gossip_stuck: HashMap::new(),
        handoffs: HashMap::new(),
        handoffs_waiting: HashMap::new(),
        listening,
    };
    Ok(tokio::spawn(async move { event_loop.run(shutdown).await }))
}

/// A claim handed to its owner over the vote protocol.
struct Handoff {
    peer: PeerId,
    request: pb::VoteRequest,
    attempts: u32,
}

/// Whether a vote request hands a claim to its owner (its object is a claim)
/// rather than asking for a vote.
fn is_handoff(request: &pb::VoteRequest) -> bool {
    pb::Signed::decode(request.object.as_slice()).is_ok_and(|signed| Kind::from_wire(signed.kind) == Some(Kind::Claim))
}

/// The periodic-pull slot in which `me` pulls `peer` (see [`SYNC_SLOTS`]):
/// spread over the slots for one node's peers, and different for the nodes
/// pulling one peer.
fn sync_slot_of(me: &PeerId, peer: &PeerId) -> u32 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&me.to_bytes());
    hasher.update(&peer.to_bytes());
    let h = hasher.finalize();
    u32::from_le_bytes([h.as_bytes()[0], h.as_bytes()[1], h.as_bytes()[2], h.as_bytes()[3]]) % SYNC_SLOTS
}

/// The gossipsub message id of `data` on `network`: the envelope's object
/// id (content addressing), so a message and its re-publication are one
/// message. Undecodable data gets a hash of its bytes.
pub fn message_id(network: &NetworkId, data: &[u8]) -> MessageId {
    match pb::Signed::decode(data) {
        Ok(signed) => match Kind::from_wire(signed.kind) {
            Some(kind) => MessageId::from(envelope::digest(network, kind, &signed.body).0.to_vec()),
            None => MessageId::from(blake3::hash(data).as_bytes().to_vec()),
        },
        Err(_) => MessageId::from(blake3::hash(data).as_bytes().to_vec()),
    }
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    network_id: NetworkId,
    node: NodeLink,
    commands: mpsc::Receiver<Command>,
    internal_rx: mpsc::Receiver<Internal>,
    internal_tx: mpsc::Sender<Internal>,
    pipeline: Pipeline,
    /// Peers to keep connected to, with their addresses.
    known: HashMap<PeerId, Vec<Multiaddr>>,
    /// Configured addresses without a peer id, dialled until connected once.
    anonymous: Vec<Multiaddr>,
    names: HashMap<PeerId, (String, String)>,
    /// Validators' keys by PeerId.
    keys: HashMap<PeerId, [u8; 32]>,
    connected: HashMap<PeerId, Multiaddr>,
    /// Next position to pull from each peer's credential log.
    cursors: HashMap<PeerId, u64>,
    /// Next position to pull from each peer's certificate log.
    cert_cursors: HashMap<PeerId, u64>,
    /// Peers with a sync page in flight.
    syncing: HashSet<PeerId>,
    /// Peers blocked by fault injection; not redialled.
    blocked: HashSet<PeerId>,
    /// When a frontier difference last triggered a pull from each peer.
    /// Peers whose gossip queue was full, with how many heartbeats in a row
    /// and when it was last reported.
    gossip_stuck: HashMap<PeerId, (u32, std::time::Instant)>,
    /// Claims handed to their owner, by request, until answered.
    handoffs: HashMap<request_response::OutboundRequestId, Handoff>,
    /// Handoffs whose request failed, waiting for their owner to reconnect.
    handoffs_waiting: HashMap<PeerId, Vec<Handoff>>,
    listening: Vec<Multiaddr>,
}

impl EventLoop {
    async fn run(&mut self, mut shutdown: watch::Receiver<bool>) {
        let mut sync_tick = tokio::time::interval(SYNC_INTERVAL / SYNC_SLOTS);
        sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sync_slot: u32 = 0;
        let mut redial_tick = tokio::time::interval(REDIAL_INTERVAL);
        self.redial();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(internal) = self.internal_rx.recv() => self.on_internal(internal),
                Some(command) = self.commands.recv() => self.on_command(command),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = redial_tick.tick() => {
                    self.redial();
                    let gossip = &self.swarm.behaviour().gossipsub;
                    let graylisted = self
                        .connected
                        .keys()
                        .filter(|peer| gossip.peer_score(peer).is_some_and(|s| s < GRAYLIST_THRESHOLD))
                        .count();
                    self.node
                        .metrics
                        .gossip_graylisted_peers
                        .set(i64::try_from(graylisted).unwrap_or(i64::MAX));
                }
                _ = sync_tick.tick() => {
                    sync_slot = (sync_slot + 1) % SYNC_SLOTS;
                    let me = *self.swarm.local_peer_id();
                    let peers: Vec<PeerId> = self
                        .connected
                        .keys()
                        .copied()
                        .filter(|peer| sync_slot_of(&me, peer) == sync_slot)
                        .collect();
                    for peer in peers {
                        self.request_sync(peer);
                    }
                }
            }
        }
        debug!("network loop stopped");
    }

    fn redial(&mut self) {
        for (peer, addrs) in &self.known {
            if self.connected.contains_key(peer) || self.blocked.contains(peer) {
                continue;
            }
            let opts = DialOpts::peer_id(*peer)
                .addresses(addrs.clone())
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(%peer, error = %e, "redial skipped");
            }
        }
        for addr in self.anonymous.clone() {
            let reached = self.connected.values().any(|a| a == &addr);
            if !reached && let Err(e) = self.swarm.dial(addr.clone()) {
                debug!(%addr, error = %e, "dial failed");
            }
        }
    }

    /// Publishes on a topic and counts the outcome. A publication that
    /// finds no peer is not an error (alone, or not meshed yet: catch-up
    /// delivers it later); one that fails otherwise is logged.
    fn publish_on(&mut self, topic: IdentTopic, label: &'static str, raw: Vec<u8>) {
        let outcome = match self.swarm.behaviour_mut().gossipsub.publish(topic, raw) {
            Ok(_) => "sent",
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => "no_peers",
            Err(gossipsub::PublishError::Duplicate) => "duplicate",
            Err(gossipsub::PublishError::MessageTooLarge) => "too_large",
            Err(gossipsub::PublishError::AllQueuesFull(_)) => "queues_full",
            Err(_) => "failed",
        };
        if !matches!(outcome, "sent" | "no_peers" | "duplicate") {
            warn!(
                topic = label,
                outcome, "gossip publication failed; catch-up or re-gossip repairs it"
            );
        }
        self.node.metrics.publish(label, outcome);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish { kind, raw } => {
                // The actor publishes only what it holds.
                self.pipeline.note_held(&raw);
                let topic = topic_of(&self.network_id, kind);
                self.publish_on(topic, kind.name(), raw);
            }
            Command::Peers { reply } => {
                let gossip = &self.swarm.behaviour().gossipsub;
                let prefix = topic_prefix(&self.network_id);
                let subscribed: HashMap<PeerId, Vec<String>> = gossip
                    .all_peers()
                    .map(|(peer, topics)| {
                        let names = topics
                            .into_iter()
                            .map(|t| {
                                let meshed = gossip.mesh_peers(t).any(|p| p == peer);
                                format!("{}{}", topic_short_name(&prefix, t), if meshed { "+" } else { "" })
                            })
                            .collect();
                        (*peer, names)
                    })
                    .collect();
                let peers = self
                    .connected
                    .iter()
                    .map(|(peer, addr)| {
                        let (name, region) = self.names.get(peer).cloned().unwrap_or_default();
                        PeerSummary {
                            peer_id: *peer,
                            address: addr.to_string(),
                            name,
                            region,
                            score: gossip.peer_score(peer).unwrap_or(0.0),
                            topics: subscribed.get(peer).cloned().unwrap_or_default(),
                        }
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.listening.iter().map(|a| a.to_string()).collect());
            }
            Command::SyncNow { key } => {
                // Paced by the validator (one source per region, at most
                // every `FRONTIER_PULL_GAP_MS`); a pull already in flight
                // to the peer absorbs this one.
                if let Some(peer) = crate::keys::peer_id_of(&key)
                    && self.connected.contains_key(&peer)
                {
                    self.request_sync(peer);
                }
            }
            Command::Disconnect { key } => {
                if let Some(peer) = crate::keys::peer_id_of(&key)
                    && self.connected.contains_key(&peer)
                {
                    info!(%peer, "peer suspected; closing its connections to redial");
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
            Command::RequestVote { voter, request } => {
                if let Some(peer) = crate::keys::peer_id_of(&voter) {
                    if is_handoff(&request) {
                        self.hand_off(Handoff {
                            peer,
                            request,
                            attempts: 0,
                        });
                    } else {
                        self.swarm.behaviour_mut().vote.send_request(&peer, request);
                    }
                }
            }
            Command::PublishRaw { topic, label, raw } => self.publish_on(topic, label, raw),
            Command::Block { peer, blocked, reply } => {
                let list = &mut self.swarm.behaviour_mut().blocked;
                if blocked {
                    // Blocking closes the peer's connections as well.
                    list.block_peer(peer);
                    self.blocked.insert(peer);
                } else {
                    list.unblock_peer(peer);
                    self.blocked.remove(&peer);
                    // Heal at once rather than at the next redial tick.
                    self.redial();
                }
                let _ = reply.send(self.blocked.iter().copied().collect());
            }
        }
    }

    fn on_internal(&mut self, internal: Internal) {
        match internal {
            Internal::Validated {
                message_id,
                source,
                acceptance,
            } => {
                if matches!(acceptance, MessageAcceptance::Reject) {
                    warn!(peer = %source, "rejected an invalid gossip message");
                }
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &source, acceptance);
            }
            Internal::Respond { channel, response } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, response)
                    .is_err()
                {
                    debug!("sync requester went away before the answer");
                }
            }
            Internal::RespondVote { channel, response } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .vote
                    .send_response(channel, response)
                    .is_err()
                {
                    debug!("vote requester went away before the answer");
                }
            }
            Internal::SyncApplied {
                peer,
                next_cursor,
                next_cert_cursor,
                more,
            } => {
                self.syncing.remove(&peer);
                let cursor = self.cursors.entry(peer).or_insert(0);
                *cursor = (*cursor).max(next_cursor);
                let cert_cursor = self.cert_cursors.entry(peer).or_insert(0);
                *cert_cursor = (*cert_cursor).max(next_cert_cursor);
                if more {
                    self.request_sync(peer);
                }
            }
        }
    }

    fn request_sync(&mut self, peer: PeerId) {
        if !self.syncing.insert(peer) {
            return;
        }
        let cursor = self.cursors.get(&peer).copied().unwrap_or(0);
        let cert_cursor = self.cert_cursors.get(&peer).copied().unwrap_or(0);
        self.swarm.behaviour_mut().sync.send_request(
            &peer,
            pb::SyncRequest {
                cursor,
                limit: SYNC_PAGE_ENTRIES,
                cert_cursor,
            },
        );
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } if !self.listening.contains(&address) => {
                self.listening.push(address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                self.connected.insert(peer_id, endpoint.get_remote_address().clone());
                self.node
                    .metrics
                    .peers
                    .set(i64::try_from(self.connected.len()).unwrap_or(0));
                if num_established.get() == 1 {
                    info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "peer connected");
                    // Catch up on what we missed while apart.
                    self.request_sync(peer_id);
                    for handoff in self.handoffs_waiting.remove(&peer_id).unwrap_or_default() {
                        self.hand_off(handoff);
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.connected.remove(&peer_id);
                self.syncing.remove(&peer_id);
                self.node
                    .metrics
                    .peers
                    .set(i64::try_from(self.connected.len()).unwrap_or(0));
                info!(peer = %peer_id, "peer disconnected");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => self.on_gossip(event),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => self.on_sync(event),
            SwarmEvent::Behaviour(BehaviourEvent::Vote(event)) => self.on_vote(event),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
                ..
            })) => {
                match result {
                    Ok(rtt) => {
                        if let Some(key) = self.keys.get(&peer) {
                            self.node.rtt(*key, rtt.as_secs_f64() * 1000.0);
                        }
                    }
                    // A peer without ping (a light client, a tool) is fine.
                    Err(ping::Failure::Unsupported) => {}
                    // A silent connection is not trusted: close it so the
                    // redial timer opens a fresh one.
                    Err(e) => {
                        debug!(%peer, error = %e, "ping failed; closing the connection");
                        self.swarm.close_connection(connection);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                debug!(peer = %peer_id, agent = %info.agent_version, "identified");
            }
            _ => {}
        }
    }

    fn on_vote(&mut self, event: request_response::Event<pb::VoteRequest, pb::VoteResponse>) {
        match event {
            request_response::Event::Message { message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.pipeline.vote(pipeline::VoteWork::Request { request, channel });
                }
                request_response::Message::Response { request_id, response } => {
                    if self.handoffs.remove(&request_id).is_some() {
                        // The owner took the claim (its answer carries nothing).
                        return;
                    }
                    self.pipeline.vote(pipeline::VoteWork::Response(response));
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => match self.handoffs.remove(&request_id) {
                Some(handoff) if handoff.attempts < HANDOFF_ATTEMPTS_MAX => {
                    debug!(%peer, %error, attempts = handoff.attempts, "a claim's handoff failed; sending it again");
                    if self.connected.contains_key(&peer) {
                        self.hand_off(handoff);
                    } else if self.handoffs_waiting.values().map(Vec::len).sum::<usize>() < HANDOFFS_PENDING_MAX {
                        self.handoffs_waiting.entry(peer).or_default().push(handoff);
                    }
                }
                Some(_) => debug!(%peer, %error, "a claim's handoff failed again; its republish will retry"),
                None => debug!(%peer, %error, "vote request failed; the owner asks again"),
            },
            _ => {}
        }
    }

    /// Sends a claim to its owner and remembers it until the owner answers,
    /// so that a request lost with its connection is sent again.
    fn hand_off(&mut self, mut handoff: Handoff) {
        handoff.attempts = handoff.attempts.saturating_add(1);
        let id = self
            .swarm
            .behaviour_mut()
            .vote
            .send_request(&handoff.peer, handoff.request.clone());
        if self.handoffs.len() < HANDOFFS_PENDING_MAX {
            self.handoffs.insert(id, handoff);
        }
    }

    /// Gossipsub could not queue messages for this peer during its last
    /// heartbeat. Reported again and again, the link is stuck: close it (the
    /// redial timer reconnects, catch-up repairs the gap).
    fn on_slow_peer(&mut self, peer: PeerId, failed: &gossipsub::FailedMessages) {
        let now = std::time::Instant::now();
        // A report more than two heartbeats after the last one starts a new run.
        let reports = match self.gossip_stuck.get(&peer) {
            Some((n, last)) if now.duration_since(*last) <= Duration::from_millis(1_000) => n.saturating_add(1),
            _ => 1,
        };
        if reports >= GOSSIP_STUCK_REPORTS {
            self.gossip_stuck.remove(&peer);
            self.node.metrics.gossip_stuck_resets.inc();
            warn!(
                peer = %peer,
                name = self.names.get(&peer).map_or("", |(name, _)| name.as_str()),
                reports,
                "gossip to this peer has not drained for seconds; closing the connection to open a fresh one"
            );
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        self.gossip_stuck.insert(peer, (reports, now));
        warn!(peer = %peer, ?failed, "gossip to a slow peer is being dropped; catch-up and re-gossip repair it");
    }

    fn on_gossip(&mut self, event: gossipsub::Event) {
        if let gossipsub::Event::SlowPeer {
            peer_id,
            failed_messages,
        } = &event
        {
            self.on_slow_peer(*peer_id, failed_messages);
            return;
        }
        if let gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        } = event
            && let Some(acceptance) = self.pipeline.enqueue(propagation_source, message_id.clone(), message)
        {
            self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                &message_id,
                &propagation_source,
                acceptance,
            );
        }
    }

    fn on_sync(&mut self, event: request_response::Event<pb::SyncRequest, pb::SyncResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let node = self.node.clone();
                    let tx = self.internal_tx.clone();
                    tokio::spawn(async move {
                        let response = pipeline::sync_page(&node, request).await;
                        let _ = tx.send(Internal::Respond { channel, response }).await;
                    });
                }
                request_response::Message::Response { response, .. } => {
                    let node = self.node.clone();
                    let tx = self.internal_tx.clone();
                    let network = self.network_id;
                    let seen = self.pipeline.seen();
                    tokio::spawn(async move {
                        let (next_cursor, next_cert_cursor, more) =
                            pipeline::apply_sync_page(&network, &node, &seen, peer, response).await;
                        let _ = tx
                            .send(Internal::SyncApplied {
                                peer,
                                next_cursor,
                                next_cert_cursor,
                                more,
                            })
                            .await;
                    });
                }
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "sync request failed");
                self.syncing.remove(&peer);
            }
            _ => {}
        }
    }
}

impl Internal {
    fn validated(message_id: MessageId, source: PeerId, acceptance: MessageAcceptance) -> Internal {
        Internal::Validated {
            message_id,
            source,
            acceptance,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_pulls_spread_one_nodes_peers_over_the_slots() {
        let me = PeerId::random();
        let peers: Vec<PeerId> = (0..64).map(|_| PeerId::random()).collect();
        let slots: HashSet<u32> = peers.iter().map(|p| sync_slot_of(&me, p)).collect();
        assert!(slots.iter().all(|s| *s < SYNC_SLOTS));
        // 64 peers over 16 slots: all in one slot would mean no spreading.
        assert!(slots.len() > SYNC_SLOTS as usize / 2, "slots used: {slots:?}");
        // Stable: the same pair always gets the same slot.
        assert_eq!(sync_slot_of(&me, &peers[0]), sync_slot_of(&me, &peers[0]));
    }

    #[test]
    fn only_a_request_whose_object_is_a_claim_is_a_handoff() {
        let network = NetworkId([7; 32]);
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let request = |kind| pb::VoteRequest {
            object: envelope::seal(&network, &key, kind, vec![1, 2, 3]).0,
            attestations: Vec::new(),
            certificates: Vec::new(),
        };
        assert!(is_handoff(&request(Kind::Claim)));
        assert!(!is_handoff(&request(Kind::Batch)));
        assert!(!is_handoff(&request(Kind::Freeze)));
        assert!(!is_handoff(&pb::VoteRequest {
            object: vec![0xff; 8],
            attestations: Vec::new(),
            certificates: Vec::new(),
        }));
    }
}
