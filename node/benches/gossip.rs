//! Network-wide attestation throughput and propagation latency on a 3-node
//! loopback network, side by side with plain gossipsub relaying the same
//! payloads (no validation, no storage) over the same topology, in one run.
//!
//! `cargo bench -p credence --bench gossip`. Both systems get the same paced
//! offered load at each rate (`GOSSIP_BENCH_RATES=1000,5000`, default
//! [`RATES`]; submissions spread round-robin over the three nodes,
//! `PHASE_SECS` seconds each). Reported per rate: delivered throughput
//! (objects that reached every other node, per second from the first
//! submission to the last arrival), p50/p99 latency from submission at one
//! node to the object being applied (ours: the instant its actor applied it,
//! not when this benchmark's subscriber got round to the event) or delivered
//! (plain: the instant the application loop received it) at each of the
//! other two, and the CPU the whole process used meanwhile, in cores (Linux;
//! the machine may be shared, so compare the two sides of one run).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use credence::config::local_network;
use credence::core::envelope::{Kind, seal};
use credence::node::{self, NodeSettings, RunningNode, Source};
use credence_proto::v1 as pb;
use futures::StreamExt;
use libp2p::gossipsub;
use prost::Message;

const NODES: usize = 3;
const RATES: [u64; 3] = [1_000, 5_000, 8_000];
const PHASE_SECS: u64 = 4;
/// How long stragglers may take after a phase's last submission.
const DRAIN: Duration = Duration::from_secs(15);

/// An envelope and the id it is tracked by.
type Payload = (Vec<u8>, [u8; 32]);

/// When each object reached each node, and how many arrivals there were in
/// all (so waiting for a phase to drain does not lock the map to count).
#[derive(Default)]
struct Arrivals {
    at: Mutex<HashMap<[u8; 32], Vec<Instant>>>,
    count: AtomicUsize,
}

impl Arrivals {
    fn record(&self, id: [u8; 32], at: Instant) {
        self.at.lock().expect("lock").entry(id).or_default().push(at);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

fn rates() -> Vec<u64> {
    match std::env::var("GOSSIP_BENCH_RATES") {
        Ok(list) => list
            .split(',')
            .map(|r| r.trim().parse().expect("GOSSIP_BENCH_RATES: comma-separated rates"))
            .collect(),
        Err(_) => RATES.to_vec(),
    }
}

/// CPU time (user + system) this process has used, from /proc/self/stat.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks as f64 / 100.0)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

/// One phase's figures.
struct Figures {
    delivered_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    lost: usize,
    cpu_cores: f64,
}

/// Sends `set` paced at `rate`/s through `send(i, raw)`, then waits for the
/// arrivals at the other nodes and computes the figures.
async fn phase<F: FnMut(usize, Vec<u8>)>(
    set: &[(Vec<u8>, [u8; 32])],
    rate: u64,
    arrivals: &Arrivals,
    mut send: F,
) -> Figures {
    let sent = Mutex::new(HashMap::new());
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let cpu_start = cpu_seconds();
    let arrived_before = arrivals.count.load(Ordering::Relaxed);
    let start = Instant::now();
    for (i, (raw, id)) in set.iter().enumerate() {
        tick.tick().await;
        sent.lock().expect("lock").insert(*id, Instant::now());
        send(i, raw.clone());
    }
    let everywhere = (NODES - 1) * set.len();
    let deadline = Instant::now() + DRAIN;
    while Instant::now() < deadline {
        // Count under the lock only once the running total says all arrived.
        if arrivals.count.load(Ordering::Relaxed) - arrived_before >= everywhere {
            let reached: usize = {
                let a = arrivals.at.lock().expect("lock");
                set.iter().map(|(_, id)| a.get(id).map_or(0, Vec::len)).sum()
            };
            if reached >= everywhere {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu_cores = match (cpu_start, cpu_seconds()) {
        (Some(a), Some(b)) => (b - a) / wall,
        _ => f64::NAN,
    };
    let (all, last) = {
        let a = arrivals.at.lock().expect("lock");
        let complete = set
            .iter()
            .filter(|(_, id)| a.get(id).map_or(0, Vec::len) >= NODES - 1)
            .count();
        let last = set
            .iter()
            .filter_map(|(_, id)| a.get(id)?.iter().max().copied())
            .max()
            .unwrap_or(start);
        (complete, last)
    };
    let lat = latencies(set, &sent, arrivals);
    Figures {
        delivered_per_s: all as f64 / last.duration_since(start).as_secs_f64().max(1e-3),
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        lost: everywhere - lat.len(),
        cpu_cores,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run() {
    let local = local_network(&["eu"], NODES, 11, 1_000, 10).expect("network");
    let network_id = local.genesis.network_id;
    let rates = rates();
    let total: u64 = rates.iter().map(|r| r * PHASE_SECS).sum();
    let payloads: Vec<(Vec<u8>, [u8; 32])> = (0..total)
        .map(|i| {
            let body = pb::Attestation {
                issuer: local.issuer.verifying_key().to_bytes().to_vec(),
                subject: blake3::hash(&i.to_le_bytes()).as_bytes().to_vec(),
                schema: "demo".into(),
                data: format!("credential {i}").into_bytes(),
                issued_at: node::now_ms(),
                expires_at: 0,
                nonce: i,
            };
            let (raw, id) = seal(&network_id, &local.issuer, Kind::Attestation, body.encode_to_vec());
            (raw, id.0)
        })
        .collect();
    let mut sets = Vec::new();
    let mut rest = payloads.as_slice();
    for rate in rates {
        let (set, tail) = rest.split_at((rate * PHASE_SECS) as usize);
        sets.push((rate, set));
        rest = tail;
    }

    // --- ours ---
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes: Vec<RunningNode> = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for i in 0..NODES {
        let settings = NodeSettings {
            genesis: local.genesis.clone(),
            key: local.validators[i].clone(),
            store_dir: dir.path().join(format!("n{i}")),
            rpc_listen: "127.0.0.1:0".parse().expect("addr"),
            http_listen: "127.0.0.1:0".parse().expect("addr"),
            p2p_listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            peers: addrs.clone(),
            max_incoming_connections: 64,
            enable_fault_injection: false,
            dial_genesis_addresses: false,
            mode_label: "node",
        };
        let node = node::start(settings).await.expect("node starts");
        let listen = node.handle.net.listen_addrs().await;
        addrs.push(format!("{}/p2p/{}", listen[0], node.handle.info.peer_id));
        nodes.push(node);
    }
    for node in &nodes {
        while node.handle.net.peers().await.len() < NODES - 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // let the gossip mesh form
    let arrivals = Arc::new(Arrivals::default());
    for node in &nodes {
        let mut events = node.handle.subscribe_applied();
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) if event.source != Source::Rpc => arrivals.record(event.id.0, event.applied_at),
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
        });
    }
    let handles: Vec<_> = nodes.iter().map(|n| n.handle.clone()).collect();
    let mut ours = Vec::new();
    for (rate, set) in &sets {
        let figures = phase(set, *rate, &arrivals, |i, raw| {
            let handle = handles[i % NODES].clone();
            tokio::spawn(async move {
                let _ = handle.submit(&raw, Kind::Attestation).await;
            });
        })
        .await;
        ours.push(figures);
    }
    for node in nodes {
        node.stop().await;
    }

    // --- plain gossipsub, same topology, payloads and pacing ---
    let plain = plain(&sets).await;

    println!("3 nodes on loopback; offered load paced over the 3 nodes for {PHASE_SECS} s per rate");
    println!(
        "{:<10} {:<38} {:>12} {:>9} {:>9} {:>7} {:>10}",
        "offered/s", "", "delivered/s", "p50 ms", "p99 ms", "lost", "cpu cores"
    );
    for ((rate, _), (o, p)) in sets.iter().zip(ours.iter().zip(plain.iter())) {
        for (name, f) in [
            ("credence (verify, apply, store, relay)", o),
            ("plain gossipsub (relay only)", p),
        ] {
            println!(
                "{:<10} {:<38} {:>12.0} {:>9.2} {:>9.2} {:>7} {:>10.2}",
                rate, name, f.delivered_per_s, f.p50_ms, f.p99_ms, f.lost, f.cpu_cores
            );
        }
        println!("{:<10} p99 ratio credence / plain: {:.2}", rate, o.p99_ms / p.p99_ms);
    }
}

fn latencies(set: &[(Vec<u8>, [u8; 32])], sent: &Mutex<HashMap<[u8; 32], Instant>>, arrivals: &Arrivals) -> Vec<f64> {
    let sent = sent.lock().expect("lock");
    let arrivals = arrivals.at.lock().expect("lock");
    let mut out: Vec<f64> = set
        .iter()
        .filter_map(|(_, id)| Some((sent.get(id)?, arrivals.get(id)?)))
        .flat_map(|(s, a)| a.iter().map(move |t| t.duration_since(*s).as_secs_f64() * 1000.0))
        .collect();
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

fn plain_swarm() -> libp2p::Swarm<gossipsub::Behaviour> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .message_id_fn(|m: &gossipsub::Message| gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec()))
        .heartbeat_interval(Duration::from_millis(500))
        .build()
        .expect("config");
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config).expect("gs"))
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build()
}

async fn plain(sets: &[(u64, &[Payload])]) -> Vec<Figures> {
    let topic = gossipsub::IdentTopic::new("/plain/1");
    let arrivals = Arc::new(Arrivals::default());
    let mut senders = Vec::new();
    let mut addrs: Vec<libp2p::Multiaddr> = Vec::new();
    for _ in 0..NODES {
        let mut swarm = plain_swarm();
        swarm.behaviour_mut().subscribe(&topic).expect("subscribe");
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
            .expect("listen");
        let addr = loop {
            if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        for a in &addrs {
            swarm.dial(a.clone()).expect("dial");
        }
        addrs.push(addr);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let arrivals = arrivals.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(data) = rx.recv() => { let _ = swarm.behaviour_mut().publish(topic.clone(), data); }
                    event = swarm.select_next_some() => {
                        if let libp2p::swarm::SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) = event {
                            arrivals.record(*blake3::hash(&message.data).as_bytes(), Instant::now());
                        }
                    }
                }
            }
        });
        senders.push(tx);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut out = Vec::new();
    for (rate, set) in sets {
        // Plain gossipsub names messages by the hash of their bytes.
        let keyed: Vec<(Vec<u8>, [u8; 32])> = set
            .iter()
            .map(|(raw, _)| (raw.clone(), *blake3::hash(raw).as_bytes()))
            .collect();
        out.push(
            phase(&keyed, *rate, &arrivals, |i, raw| {
                let _ = senders[i % NODES].send(raw);
            })
            .await,
        );
    }
    out
}
