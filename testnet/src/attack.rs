//! `credence-testnet attack KIND`: a rogue peer against a running testnet,
//! with a light claim load beside it, and what the honest nodes did about it.
//!
//! The rogue peer is a real libp2p node (TCP, noise, yamux, gossipsub in
//! the nodes' anonymous, content-addressed mode, and the vote protocol) that
//! dials every node and sends what its kind says; `connections` and
//! `slow-rpc` open raw TCP connections instead. Everything reported is
//! measured from the nodes (their `Status`: peer scores, evidence counts),
//! never from what the attacker believes it did. The honest claim p99 is
//! that of two loads of the same size and rate run by this command, one
//! before the attack and one during it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use credence::core::envelope::{Kind, NetworkId, parse_hex32, seal};
use credence::net::{self, GRAYLIST_THRESHOLD};
use credence_proto::v1 as pb;
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, MessageId};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, noise, ping, tcp, yamux};
use prost::Message;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::layout::{Layout, NodeRecord, Role, RunState, State};
use crate::{check, load, rpc};

/// Claims per second of the honest load run beside the attack (and before
/// it, for the baseline): light, so that what moves the p99 is the attack.
pub const LOAD_RATE: f64 = 20.0;
/// Attack messages (or connections) per second unless `--rate` says otherwise.
pub const RATE_DEFAULT: f64 = 200.0;
/// How often the nodes' view of the attacker is sampled during the attack.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
/// How long the rogue peer waits for its connections and subscriptions
/// before the attack starts.
const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// Most raw TCP connections `connections` and `slow-rpc` hold open at once:
/// below this process's usual descriptor limit, far above every cap a node
/// sets (pending p2p handshakes, connections per source address).
const RAW_CONNECTIONS_MAX: usize = 800;
/// The equivocating batches sit this far ahead of anything certified, so
/// they never collide with the real owner's batches.
const EQUIVOCATION_SEQ_BASE: u64 = 1 << 40;
/// Bytes of an oversized `spam` frame: over every topic's gossip cap.
const OVERSIZED_BYTES: usize = 2 * credence::core::limits::GOSSIP_MAX_BYTES;
/// Old entries asked for from a node's logs, to replay.
const HISTORY_ENTRIES: u32 = 64;
/// How long `check` after the attack waits for certificates in flight.
const CHECK_SETTLE: Duration = Duration::from_secs(10);

/// What the rogue peer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttackKind {
    /// Gossip envelopes whose signatures do not verify.
    Forge,
    /// Gossip valid envelopes of another network, and this network's
    /// already-certified claims again.
    Replay,
    /// Gossip valid but useless messages: duplicates, claims on credentials
    /// nobody knows, frames over the size cap.
    Spam,
    /// Sign, with a validator's key from the testnet directory, two batches
    /// at one (bucket, seq) and ask the region's voters about both.
    Equivocate,
    /// Open p2p TCP connections to one node until it refuses them.
    Connections,
    /// Open gRPC and HTTP connections to one node that never send a request.
    SlowRpc,
}

impl AttackKind {
    fn name(self) -> &'static str {
        match self {
            AttackKind::Forge => "forge",
            AttackKind::Replay => "replay",
            AttackKind::Spam => "spam",
            AttackKind::Equivocate => "equivocate",
            AttackKind::Connections => "connections",
            AttackKind::SlowRpc => "slow-rpc",
        }
    }

    /// Whether the rogue peer is a libp2p node (rather than raw TCP).
    fn is_peer(self) -> bool {
        !matches!(self, AttackKind::Connections | AttackKind::SlowRpc)
    }
}

#[derive(Clone, Debug)]
pub struct AttackOptions {
    pub kind: AttackKind,
    pub secs: u64,
    pub rate: f64,
}

#[derive(NetworkBehaviour)]
struct Rogue {
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    vote: request_response::Behaviour<net::codec::VoteCodec>,
    sync: request_response::Behaviour<net::codec::SyncCodec>,
}

/// The network's facts the rogue peer needs.
struct Target {
    network: NetworkId,
    nodes: Vec<NodeRecord>,
    regions: BTreeSet<String>,
}

pub async fn attack(layout: &Layout, opts: AttackOptions) -> anyhow::Result<Value> {
    if opts.secs == 0 {
        bail!("--secs must be at least 1");
    }
    if !(opts.rate > 0.0 && opts.rate.is_finite()) {
        bail!("--rate must be a positive number per second");
    }
    let state = layout.load_state()?;
    let target = target(&state)?;
    let claims = ((LOAD_RATE * opts.secs as f64).ceil() as u64).max(10);
    let load_opts = load::LoadOptions {
        entry_region: None,
        race: false,
        claims,
        rate: LOAD_RATE,
        region: None,
        entry: load::Entry::Home,
        wait: load::Wait::Regional,
        timeout: Duration::from_secs(30),
        concurrency: load::CONCURRENCY_DEFAULT,
        distribution: None,
        credentials: load::Credentials::Ahead,
    };
    // The nodes are sampled during the baseline as during the attack, so
    // that the two loads see the same observer.
    let (baseline_stop, baseline_rx) = watch::channel(false);
    let observer = tokio::spawn(sample(target.nodes.clone(), None, Instant::now(), baseline_rx));
    let baseline = load::load(layout, load_opts.clone()).await;
    let _ = baseline_stop.send(true);
    let _ = observer.await;
    let baseline = baseline.context("the baseline load before the attack")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (attacker, rogue) = match opts.kind {
        kind if kind.is_peer() => {
            let (mut swarm, peer) = rogue_swarm(&target).await?;
            let plan = plan(layout, &target, kind, &mut swarm).await?;
            let task = tokio::spawn(run_rogue(swarm, plan, opts.rate, stop_rx.clone()));
            (Some(peer), RogueTask::Peer(task))
        }
        AttackKind::Connections => {
            let node = first_running(&target)?;
            let addr = p2p_socket(&node.p2p)?;
            let task = tokio::spawn(flood_connections(vec![addr], opts.rate, stop_rx.clone()));
            (None, RogueTask::Raw(task, node.name.clone()))
        }
        _ => {
            let node = first_running(&target)?;
            let config = credence::config::NodeConfig::load(&node.config)?;
            let task = tokio::spawn(flood_connections(
                vec![config.rpc_listen, config.http_listen],
                opts.rate,
                stop_rx.clone(),
            ));
            (None, RogueTask::Raw(task, node.name.clone()))
        }
    };
    let started = Instant::now();
    let sampler = tokio::spawn(sample(target.nodes.clone(), attacker, started, stop_rx.clone()));
    let under = load::load(layout, load_opts).await;
    let minimum = Duration::from_secs(opts.secs);
    if started.elapsed() < minimum {
        tokio::time::sleep(minimum.saturating_sub(started.elapsed())).await;
    }
    let attacked_s = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let rogue_report = match rogue {
        RogueTask::Peer(task) => task.await.map_err(|e| anyhow!("the rogue peer failed: {e}"))??,
        RogueTask::Raw(task, name) => {
            let mut v = task.await.map_err(|e| anyhow!("the connection flood failed: {e}"))?;
            v["target"] = json!(name);
            v
        }
    };
    let samples = sampler.await.map_err(|e| anyhow!("sampling the nodes failed: {e}"))?;
    let under = under.context("the load during the attack")?;
    let after = final_view(&target.nodes, attacker).await;

    let p99 = |v: &Value| v["p99_ms"].as_f64();
    let ratio = match (p99(&under), p99(&baseline)) {
        (Some(u), Some(b)) if b > 0.0 => Some(u / b),
        _ => None,
    };
    let honest_graylisted: BTreeSet<&String> = samples.honest_graylisted.union(&after.honest_graylisted).collect();
    let check = check::check(layout, CHECK_SETTLE).await?;
    let mut v = json!({
        "kind": opts.kind.name(),
        "secs": opts.secs,
        "rate": opts.rate,
        "attacked_s": attacked_s,
        "attacker": rogue_report,
        "honest_graylisted": honest_graylisted.len(),
        "honest_graylisted_names": honest_graylisted,
        "honest_p99_ratio": ratio,
        "load_baseline": summary(&baseline),
        "load_under_attack": summary(&under),
        "check": {"ok": check["ok"], "violations": check["violations"]},
    });
    if let Some(peer) = attacker {
        v["attacker_peer_id"] = json!(peer.to_string());
        v["attacker_graylisted"] = json!(samples.graylisted_at.is_some());
        v["graylisted_after_s"] = json!(samples.graylisted_at);
        v["graylisted_by"] = json!(samples.graylisted_by);
        v["connected_to"] = json!(samples.connected_to);
    }
    if opts.kind == AttackKind::Equivocate {
        let detected: u64 = after.evidence.values().map(|(d, _)| d).sum();
        let informed = after.evidence.values().filter(|(d, r)| d + r > 0).count();
        v["equivocations_detected"] = json!(detected);
        v["nodes_informed"] = json!(informed);
        v["nodes_asked"] = json!(after.evidence.len());
        v["evidence_reported"] = json!(detected > 0 && informed == after.evidence.len());
        v["evidence_by_node"] = json!(
            after
                .evidence
                .iter()
                .map(|(n, (d, r))| (n.clone(), json!({"detected": d, "received": r})))
                .collect::<BTreeMap<_, _>>()
        );
    }
    if !opts.kind.is_peer() {
        let cut_off = v["attacker"]["cut_off_after_s"].as_f64();
        v["attacker_graylisted"] = json!(cut_off.is_some());
        v["graylisted_after_s"] = json!(cut_off);
        v["healthy_during"] = json!(samples.answered_all);
    }
    Ok(v)
}

enum RogueTask {
    Peer(tokio::task::JoinHandle<anyhow::Result<Value>>),
    Raw(tokio::task::JoinHandle<Value>, String),
}

fn target(state: &State) -> anyhow::Result<Target> {
    let network = parse_hex32(&state.network_id)
        .map(NetworkId)
        .ok_or_else(|| anyhow!("state.json holds a malformed network id"))?;
    let nodes: Vec<NodeRecord> = state
        .nodes
        .iter()
        .filter(|n| n.state == RunState::Running)
        .cloned()
        .collect();
    if nodes.is_empty() {
        bail!("no node of this testnet is running: `credence-testnet status` shows why");
    }
    Ok(Target {
        network,
        nodes,
        regions: state.regions(),
    })
}

fn first_running(target: &Target) -> anyhow::Result<&NodeRecord> {
    target.nodes.first().ok_or_else(|| anyhow!("no node is running"))
}

/// `/ip4/A/tcp/P…` → `A:P`.
fn p2p_socket(addr: &str) -> anyhow::Result<std::net::SocketAddr> {
    let ma: Multiaddr = addr.parse().map_err(|e| anyhow!("bad p2p address {addr:?}: {e}"))?;
    let mut ip = None;
    let mut port = None;
    for p in ma.iter() {
        match p {
            libp2p::multiaddr::Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            libp2p::multiaddr::Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            libp2p::multiaddr::Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    match (ip, port) {
        (Some(ip), Some(port)) => Ok((ip, port).into()),
        _ => bail!("p2p address {addr:?} names no IP and TCP port"),
    }
}

/// A libp2p node like the testnet's (transport, gossipsub mode, topics),
/// connected to every running node and subscribed to every topic.
async fn rogue_swarm(target: &Target) -> anyhow::Result<(Swarm<Rogue>, PeerId)> {
    let network = target.network;
    // Message ids are the nodes' own (content addressed), except that
    // the same bytes may be published again: `spam` sends duplicates.
    let counter = Arc::new(AtomicU64::new(0));
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .message_id_fn(move |m: &gossipsub::Message| {
            let mut id = net::message_id(&network, &m.data).0;
            id.extend_from_slice(&counter.fetch_add(1, Ordering::Relaxed).to_le_bytes());
            MessageId::from(id)
        })
        .max_transmit_size(OVERSIZED_BYTES.saturating_mul(2))
        // Never relays what it receives: it reports no verdicts, so what the
        // nodes score it for is only what it sends of its own.
        .validate_messages()
        .heartbeat_interval(Duration::from_millis(500))
        .build()
        .map_err(|e| anyhow!("gossipsub config: {e}"))?;
    let mut gossipsub =
        gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, config).map_err(|e| anyhow!("gossipsub: {e}"))?;
    for t in topics(target) {
        gossipsub.subscribe(&t).map_err(|e| anyhow!("subscribe: {e}"))?;
    }
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let public = keypair.public();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| anyhow!("transport: {e}"))?
        .with_behaviour(|_| Rogue {
            gossipsub,
            identify: identify::Behaviour::new(identify::Config::new("/credence/1".into(), public)),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(net::PING_INTERVAL)),
            vote: request_response::Behaviour::with_codec(
                net::codec::VoteCodec::new(net::codec::VOTE_REQUEST_MAX_BYTES, net::codec::VOTE_RESPONSE_MAX_BYTES),
                [(net::VOTE_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
            ),
            sync: request_response::Behaviour::with_codec(
                net::codec::SyncCodec::new(net::codec::SYNC_REQUEST_MAX_BYTES, net::codec::SYNC_RESPONSE_MAX_BYTES),
                [(net::SYNC_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
            ),
        })
        .map_err(|e| anyhow!("behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    for n in &target.nodes {
        let addr: Multiaddr = n.p2p.parse().map_err(|e| anyhow!("bad p2p address {:?}: {e}", n.p2p))?;
        swarm.dial(addr).map_err(|e| anyhow!("cannot dial {}: {e}", n.name))?;
    }
    // Wait until every node is connected and subscribed to one topic at least.
    let deadline = Instant::now() + CONNECT_WAIT;
    while Instant::now() < deadline {
        if swarm.behaviour().gossipsub.all_peers().count() >= target.nodes.len() {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), swarm.select_next_some()).await;
    }
    let peer = *swarm.local_peer_id();
    Ok((swarm, peer))
}

fn topics(target: &Target) -> Vec<IdentTopic> {
    let mut names: Vec<String> = ["cred", "dist", "heartbeat", "evidence"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    names.extend(target.regions.iter().map(|r| format!("claims/{r}")));
    names.extend(target.regions.iter().map(|r| format!("certs/{r}")));
    names.iter().map(|n| net::topic(&target.network, n)).collect()
}

/// What the rogue peer sends each round.
enum Plan {
    /// Gossip messages, round after round: (topic, bytes) makers.
    Gossip {
        network: NetworkId,
        kind: AttackKind,
        /// Valid envelopes of this network to send again (replay, spam).
        valid: Vec<(IdentTopic, Vec<u8>)>,
        claims_topic: IdentTopic,
        cred_topic: IdentTopic,
    },
    /// Two batches at one (bucket, seq), a fresh seq each round, to every voter.
    Equivocate {
        network: NetworkId,
        owner: Box<SigningKey>,
        owner_name: String,
        bucket: pb::BucketRef,
        voters: Vec<PeerId>,
    },
}

async fn plan(layout: &Layout, target: &Target, kind: AttackKind, swarm: &mut Swarm<Rogue>) -> anyhow::Result<Plan> {
    let network = target.network;
    let node = first_running(target)?;
    let region = if node.region.is_empty() {
        target.regions.iter().next().cloned().unwrap_or_default()
    } else {
        node.region.clone()
    };
    let claims_topic = net::topic(&network, &format!("claims/{region}"));
    let cred_topic = net::topic_of(&network, Kind::Attestation);
    match kind {
        AttackKind::Equivocate => {
            let owner_record = target
                .nodes
                .iter()
                .find(|n| n.role == Role::Validator)
                .ok_or_else(|| anyhow!("no validator is running"))?;
            let key_path = layout.node_dir(&owner_record.name).join("node.key");
            let owner =
                credence::keys::load(&key_path).with_context(|| format!("cannot load {}", key_path.display()))?;
            let channel = rpc::channel(&owner_record.rpc)?;
            let list = rpc::escrow(&channel)
                .list_distributions(pb::ListDistributionsRequest {})
                .await
                .map_err(|e| anyhow!("{}: {}", owner_record.name, rpc::describe(&e)))?
                .into_inner()
                .distributions;
            let distribution = list
                .first()
                .ok_or_else(|| anyhow!("{} knows no distribution", owner_record.name))?;
            let distribution_id = hex::decode(&distribution.id)
                .map_err(|_| anyhow!("malformed distribution id {:?}", distribution.id))?;
            let voters = target
                .nodes
                .iter()
                .filter(|n| n.role == Role::Validator && n.region == owner_record.region)
                .filter_map(|n| n.peer_id.parse().ok())
                .collect();
            let owner_public = owner.verifying_key().to_bytes().to_vec();
            Ok(Plan::Equivocate {
                network,
                owner: Box::new(owner),
                owner_name: owner_record.name.clone(),
                bucket: pb::BucketRef {
                    distribution_id,
                    region: owner_record.region.clone(),
                    owner: owner_public,
                },
                voters,
            })
        }
        AttackKind::Replay | AttackKind::Spam => {
            let valid = history(swarm, target, &claims_topic).await;
            if valid.is_empty() {
                bail!("no node answered a catch-up request: nothing old to replay");
            }
            Ok(Plan::Gossip {
                network,
                kind,
                valid,
                claims_topic,
                cred_topic,
            })
        }
        _ => Ok(Plan::Gossip {
            network,
            kind,
            valid: Vec::new(),
            claims_topic,
            cred_topic,
        }),
    }
}

/// Old objects of this network, exactly as signed, pulled from a node over
/// its catch-up protocol like any peer may: credentials, certificates and the
/// claims inside them, with the topic each travels on.
async fn history(swarm: &mut Swarm<Rogue>, target: &Target, claims_topic: &IdentTopic) -> Vec<(IdentTopic, Vec<u8>)> {
    let Some(peer) = target.nodes.first().and_then(|n| n.peer_id.parse::<PeerId>().ok()) else {
        return Vec::new();
    };
    swarm.behaviour_mut().sync.send_request(
        &peer,
        pb::SyncRequest {
            cursor: 0,
            limit: HISTORY_ENTRIES,
            cert_cursor: 0,
        },
    );
    let deadline = Instant::now() + CONNECT_WAIT;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let Ok(event) = tokio::time::timeout(Duration::from_millis(200), swarm.select_next_some()).await else {
            continue;
        };
        let SwarmEvent::Behaviour(RogueEvent::Sync(event)) = event else {
            continue;
        };
        match event {
            request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            } => {
                for raw in response.envelopes {
                    if let Ok(signed) = pb::Signed::decode(raw.as_slice())
                        && let Some(kind) = Kind::from_wire(signed.kind)
                    {
                        out.push((net::topic_of(&target.network, kind), raw));
                    }
                }
                for raw in response.certificates {
                    if let Ok(cert) = pb::Certificate::decode(raw.as_slice())
                        && let Ok(signed) = pb::Signed::decode(cert.object.as_slice())
                        && let Ok(batch) = pb::Batch::decode(signed.body.as_slice())
                    {
                        for e in batch.entries {
                            if let Some(pb::batch_entry::Entry::Claim(claim)) = e.entry {
                                out.push((claims_topic.clone(), claim));
                            }
                        }
                    }
                    out.push((net::topic(&target.network, "certs"), raw));
                }
                break;
            }
            request_response::Event::OutboundFailure { .. } => break,
            _ => {}
        }
    }
    out
}

async fn run_rogue(
    mut swarm: Swarm<Rogue>,
    plan: Plan,
    rate: f64,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Value> {
    // `rate` is messages per second: an equivocation round sends two batches
    // to every voter.
    let per_round = match &plan {
        Plan::Equivocate { voters, .. } => voters.len().saturating_mul(2).max(1) as f64,
        Plan::Gossip { .. } => 1.0,
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(per_round / rate));
    let mut sent: u64 = 0;
    let mut refused_locally: u64 = 0;
    let mut vote_answers: u64 = 0;
    let mut round: u64 = 0;
    let stranger = NetworkId(*blake3::hash(b"another network").as_bytes());
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                round = round.saturating_add(1);
                match &plan {
                    Plan::Gossip { network, kind, valid, claims_topic, cred_topic } => {
                        let (topic, data) = gossip_message(*network, stranger, *kind, valid, claims_topic, cred_topic, round);
                        match swarm.behaviour_mut().gossipsub.publish(topic, data) {
                            Ok(_) => sent = sent.saturating_add(1),
                            Err(_) => refused_locally = refused_locally.saturating_add(1),
                        }
                    }
                    Plan::Equivocate { network, owner, bucket, voters, .. } => {
                        let seq = EQUIVOCATION_SEQ_BASE.saturating_add(round);
                        for variant in 0..2u64 {
                            let body = pb::Batch {
                                bucket: Some(bucket.clone()),
                                seq,
                                prev: vec![0; 32],
                                timestamp: variant.saturating_add(1),
                                entries: vec![pb::BatchEntry { entry: Some(pb::batch_entry::Entry::Close(true)) }],
                                total_after: 0,
                            };
                            let (object, _) = seal(network, owner, Kind::Batch, body.encode_to_vec());
                            for voter in voters {
                                swarm.behaviour_mut().vote.send_request(voter, pb::VoteRequest {
                                    object: object.clone(),
                                    attestations: Vec::new(),
                                    certificates: Vec::new(),
                                });
                                sent = sent.saturating_add(1);
                            }
                        }
                    }
                }
            }
            event = swarm.select_next_some() => {
                if let SwarmEvent::Behaviour(RogueEvent::Vote(request_response::Event::Message { .. })) = event {
                    vote_answers = vote_answers.saturating_add(1);
                }
            }
        }
    }
    let mut v = json!({
        "sent": sent,
        "refused_by_own_stack": refused_locally,
        "rounds": round,
    });
    if let Plan::Equivocate { owner_name, .. } = &plan {
        v["impersonated"] = json!(owner_name);
        v["vote_answers"] = json!(vote_answers);
    }
    Ok(v)
}

/// One gossip message of a gossip attack, for round `round`.
fn gossip_message(
    network: NetworkId,
    stranger: NetworkId,
    kind: AttackKind,
    valid: &[(IdentTopic, Vec<u8>)],
    claims_topic: &IdentTopic,
    cred_topic: &IdentTopic,
    round: u64,
) -> (IdentTopic, Vec<u8>) {
    let key = SigningKey::from_bytes(blake3::hash(&round.to_le_bytes()).as_bytes());
    let body = round.to_le_bytes().repeat(8);
    let pick = |list: &[(IdentTopic, Vec<u8>)]| {
        let len = list.len().max(1) as u64;
        list.get((round % len) as usize).cloned()
    };
    match kind {
        AttackKind::Forge => {
            let (raw, _) = seal(&network, &key, Kind::Attestation, body);
            let mut signed = pb::Signed::decode(raw.as_slice()).unwrap_or_default();
            if let Some(b) = signed.signature.first_mut() {
                *b ^= 0x01;
            }
            (cred_topic.clone(), signed.encode_to_vec())
        }
        AttackKind::Replay => {
            if round.is_multiple_of(2)
                && let Some(old) = pick(valid)
            {
                return old;
            }
            // Valid, signed, but for another network: its signature does
            // not verify here.
            let (raw, _) = seal(&stranger, &key, Kind::Attestation, body);
            (cred_topic.clone(), raw)
        }
        _ => match round % 3 {
            0 => pick(valid).unwrap_or_else(|| (claims_topic.clone(), vec![0; 64])),
            1 => {
                // A claim signed properly by a claimant nobody attested.
                let claim = pb::Claim {
                    claimant: key.verifying_key().to_bytes().to_vec(),
                    distribution_id: vec![7; 32],
                    attestation_id: blake3::hash(&body).as_bytes().to_vec(),
                    ..Default::default()
                };
                let (raw, _) = seal(&network, &key, Kind::Claim, claim.encode_to_vec());
                (claims_topic.clone(), raw)
            }
            _ => (cred_topic.clone(), vec![0xAB; OVERSIZED_BYTES]),
        },
    }
}

/// Opens TCP connections to `addrs` at `rate` per second (round robin),
/// never sending a byte, and watches which the node closes.
async fn flood_connections(addrs: Vec<std::net::SocketAddr>, rate: f64, mut stop: watch::Receiver<bool>) -> Value {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut open: Vec<TcpStream> = Vec::new();
    let mut opened: u64 = 0;
    let mut refused: u64 = 0;
    let mut closed_by_node: u64 = 0;
    let mut first_cut: Option<f64> = None;
    let mut round: usize = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                round = round.wrapping_add(1);
                // Drop what the node closed.
                let before = open.len();
                open.retain(still_open);
                let gone = before.saturating_sub(open.len()) as u64;
                closed_by_node = closed_by_node.saturating_add(gone);
                if gone > 0 && first_cut.is_none() {
                    first_cut = Some(started.elapsed().as_secs_f64());
                }
                if open.len() >= RAW_CONNECTIONS_MAX {
                    continue;
                }
                let Some(addr) = addrs.get(round % addrs.len().max(1)) else { break };
                match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
                    Ok(Ok(mut s)) => {
                        opened = opened.saturating_add(1);
                        // Half a request line: a client that stalls.
                        let _ = s.write_all(b"PRI * HTTP").await;
                        open.push(s);
                    }
                    _ => {
                        refused = refused.saturating_add(1);
                        if first_cut.is_none() {
                            first_cut = Some(started.elapsed().as_secs_f64());
                        }
                    }
                }
            }
        }
    }
    let held = open.iter().filter(|s| still_open(s)).count();
    json!({
        "opened": opened,
        "refused": refused,
        "closed_by_node": closed_by_node,
        "held_open_at_end": held,
        "cut_off_after_s": first_cut,
    })
}

/// Whether the peer has not closed this connection (a read would not
/// return end of stream).
fn still_open(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.try_read(&mut buf) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => true,
        Err(_) => false,
    }
}

#[derive(Default)]
struct Samples {
    /// Seconds from the attack's start until every node connected to the
    /// attacker had it below the graylist threshold.
    graylisted_at: Option<f64>,
    graylisted_by: usize,
    connected_to: usize,
    honest_graylisted: BTreeSet<String>,
    /// Whether every node answered every sample.
    answered_all: bool,
}

/// One look at every node: who sees whom below the graylist threshold.
struct View {
    /// Nodes that list the attacker as a peer, and those of them that graylist it.
    connected_to: usize,
    graylisted_by: usize,
    honest_graylisted: BTreeSet<String>,
    /// Per node: equivocations detected, evidence received.
    evidence: BTreeMap<String, (u64, u64)>,
    answered: usize,
}

async fn view(nodes: &[NodeRecord], attacker: Option<PeerId>) -> View {
    let honest: BTreeMap<String, &str> = nodes.iter().map(|n| (n.peer_id.clone(), n.name.as_str())).collect();
    let attacker = attacker.map(|p| p.to_string());
    let answers = futures::future::join_all(nodes.iter().map(|n| rpc::status(&n.rpc))).await;
    let mut v = View {
        connected_to: 0,
        graylisted_by: 0,
        honest_graylisted: BTreeSet::new(),
        evidence: BTreeMap::new(),
        answered: 0,
    };
    for (node, answer) in nodes.iter().zip(answers) {
        let Ok(status) = answer else { continue };
        v.answered = v.answered.saturating_add(1);
        v.evidence.insert(
            node.name.clone(),
            (status.equivocations_detected, status.evidence_received),
        );
        for p in &status.peers {
            let graylisted = p.score < GRAYLIST_THRESHOLD;
            if Some(&p.peer_id) == attacker.as_ref() {
                v.connected_to = v.connected_to.saturating_add(1);
                if graylisted {
                    v.graylisted_by = v.graylisted_by.saturating_add(1);
                }
            } else if graylisted && let Some(name) = honest.get(&p.peer_id) {
                v.honest_graylisted.insert(format!("{name} (by {})", node.name));
            }
        }
    }
    v
}

async fn sample(
    nodes: Vec<NodeRecord>,
    attacker: Option<PeerId>,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) -> Samples {
    let mut s = Samples {
        answered_all: true,
        ..Default::default()
    };
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                let v = view(&nodes, attacker).await;
                s.answered_all &= v.answered == nodes.len();
                s.honest_graylisted.extend(v.honest_graylisted);
                s.connected_to = s.connected_to.max(v.connected_to);
                s.graylisted_by = s.graylisted_by.max(v.graylisted_by);
                if s.graylisted_at.is_none() && v.connected_to > 0 && v.graylisted_by == v.connected_to {
                    s.graylisted_at = Some(started.elapsed().as_secs_f64());
                }
            }
        }
    }
    s
}

async fn final_view(nodes: &[NodeRecord], attacker: Option<PeerId>) -> View {
    view(nodes, attacker).await
}

fn summary(load: &Value) -> Value {
    json!({
        "claims": load["submitted"],
        "counts": load["counts"],
        "p50_ms": load["p50_ms"],
        "p99_ms": load["p99_ms"],
        "rate_achieved": load["rate_achieved"],
    })
}

/// For people: the headline figures of an attack report.
pub fn print_report(v: &Value) {
    outln!(
        "attack {} for {:.1} s: attacker {} (after {} s), {} honest validators graylisted, honest p99 x{}",
        v["kind"].as_str().unwrap_or(""),
        v["attacked_s"].as_f64().unwrap_or(0.0),
        if v["attacker_graylisted"].as_bool() == Some(true) {
            "shut out"
        } else {
            "NOT shut out"
        },
        v["graylisted_after_s"],
        v["honest_graylisted"],
        v["honest_p99_ratio"].as_f64().map_or("?".into(), |r| format!("{r:.2}")),
    );
    if let Some(e) = v.get("evidence_reported") {
        outln!(
            "equivocation: detected {} times, {} of {} nodes informed (evidence_reported {e})",
            v["equivocations_detected"],
            v["nodes_informed"],
            v["nodes_asked"]
        );
    }
    check::print_after(&v["check"]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use credence::core::envelope;

    #[test]
    fn p2p_addresses_become_sockets() {
        assert_eq!(
            p2p_socket("/ip4/127.0.0.1/tcp/7001").unwrap(),
            "127.0.0.1:7001".parse().unwrap()
        );
        assert!(p2p_socket("/dns4/example.org").is_err());
    }

    #[test]
    fn a_forged_envelope_decodes_but_does_not_verify() {
        let network = NetworkId([3; 32]);
        let topic = net::topic(&network, "cred");
        let (t, raw) = gossip_message(network, NetworkId([4; 32]), AttackKind::Forge, &[], &topic, &topic, 5);
        assert_eq!(t.hash(), topic.hash());
        let unverified = envelope::decode_capped(&network, &raw, credence::core::limits::GOSSIP_MAX_BYTES).unwrap();
        assert!(unverified.verify().is_err());
    }

    #[test]
    fn another_networks_envelope_does_not_verify_here() {
        let network = NetworkId([3; 32]);
        let topic = net::topic(&network, "cred");
        let (_, raw) = gossip_message(network, NetworkId([4; 32]), AttackKind::Replay, &[], &topic, &topic, 1);
        let verified =
            envelope::decode_capped(&network, &raw, credence::core::limits::GOSSIP_MAX_BYTES).and_then(|u| u.verify());
        assert!(verified.is_err());
    }
}
