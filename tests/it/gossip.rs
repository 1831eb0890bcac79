//! Five in-process nodes over real libp2p: propagation, revocation, catch-up
//! of late and restarted nodes, and a peer that sends forged and oversized
//! messages.

use std::time::Duration;

use credence::node::RunningNode;
use credence_proto::v1 as pb;
use futures::StreamExt;
use libp2p::gossipsub;

use crate::common::{TestNet, client, credential_status, eventually, p2p_addr, submit_attestation};

async fn all_have(nodes: &[&RunningNode], ids: &[String], status: &str) -> bool {
    for node in nodes {
        for id in ids {
            if credential_status(node, id).await != status {
                return false;
            }
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_propagate_and_late_and_restarted_nodes_catch_up() {
    let _serial = crate::common::NETWORK_TESTS.lock().await;
    let net = TestNet::new(&["eu"], 5);
    // Nodes 0..4 start in turn, each dialling those before it: a full mesh.
    let mut nodes: Vec<RunningNode> = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..4 {
        let node = net.start(i, addrs.clone()).await;
        addrs.push(p2p_addr(&node).await);
        nodes.push(node);
    }

    let mut ids = Vec::new();
    for i in 0..200u32 {
        let id = submit_attestation(&nodes[0], net.attestation([3; 32], &format!("n{i}")))
            .await
            .expect("attest");
        ids.push(id);
    }
    let live: Vec<&RunningNode> = nodes.iter().collect();
    assert!(
        eventually(|| all_have(&live, &ids[190..], "valid")).await,
        "the last attestations did not reach every node"
    );
    assert!(
        eventually(|| all_have(&live, &ids, "valid")).await,
        "not every attestation reached every node"
    );

    // Node 3 goes down; revocations happen while it is away.
    let down = nodes.pop().expect("node 3");
    down.stop().await;
    for id in &ids[..10] {
        client(&nodes[1])
            .await
            .submit_revocation(pb::SubmitRequest {
                envelope: net.revocation(id),
            })
            .await
            .expect("revoke");
    }
    let live: Vec<&RunningNode> = nodes.iter().collect();
    assert!(
        eventually(|| all_have(&live, &ids[..10], "revoked")).await,
        "revocations did not reach every live node"
    );

    // A node that never saw any of it joins late and catches up on all.
    let late = net.start(4, addrs[..3].to_vec()).await;
    let only_late = [&late];
    assert!(
        eventually(|| all_have(&only_late, &ids[10..], "valid")).await,
        "late node missed attestations"
    );
    assert!(
        eventually(|| all_have(&only_late, &ids[..10], "revoked")).await,
        "late node missed revocations"
    );

    // The node that was down restarts on its store and catches up.
    let back = net.start(3, addrs[..3].to_vec()).await;
    let only_back = [&back];
    assert!(
        eventually(|| all_have(&only_back, &ids[..10], "revoked")).await,
        "restarted node missed revocations"
    );

    for node in nodes.into_iter().chain([late, back]) {
        node.stop().await;
    }
}

/// A bare gossipsub peer that publishes whatever it is told to on the
/// credential topic, with a cap far above the node's.
fn rogue_swarm() -> libp2p::Swarm<gossipsub::Behaviour> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .max_transmit_size(1 << 20)
        .heartbeat_interval(Duration::from_millis(200))
        .build()
        .expect("gossipsub config");
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| {
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config).expect("gossipsub")
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

fn metric(text: &str, needle: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_oversized_gossip_is_refused_and_the_sender_penalised() {
    let _serial = crate::common::NETWORK_TESTS.lock().await;
    let net = TestNet::new(&["eu"], 2);
    let a = net.start(0, vec![]).await;
    let b = net.start(1, vec![p2p_addr(&a).await]).await;
    let topic = credence::net::topic(&net.network_id(), "cred");

    let mut rogue = rogue_swarm();
    rogue.behaviour_mut().subscribe(&topic).expect("subscribe");
    rogue
        .dial(p2p_addr(&a).await.parse::<libp2p::Multiaddr>().expect("addr"))
        .expect("dial");
    let rogue_id = rogue.local_peer_id().to_string();

    // Drive the rogue swarm in the background, publishing on command.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let driver = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(data) = rx.recv() => { let _ = rogue.behaviour_mut().publish(topic.clone(), data); }
                _ = rogue.select_next_some() => {}
            }
        }
    });
    // Wait until the node sees the rogue as a peer.
    let connected = eventually(|| async {
        let status = client(&a)
            .await
            .status(pb::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        status.peers.iter().any(|p| p.peer_id == rogue_id)
    })
    .await;
    assert!(connected, "rogue peer never connected");
    tokio::time::sleep(Duration::from_secs(2)).await; // let the mesh form

    let metrics_url = format!("http://{}/metrics", a.http_addr);
    let log_before = client(&a)
        .await
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .credential_log_len;
    // Forged: a real attestation with its signature flipped, many times over.
    for i in 0..20u32 {
        let mut forged = net.attestation([4; 32], &format!("forged{i}"));
        let last = forged.len() - 1;
        forged[last] ^= 0x55;
        tx.send(forged).await.expect("send");
    }
    // Oversized: far above the credential topic's cap.
    tx.send(vec![0u8; 32 * 1024]).await.expect("send");

    let penalised = eventually(|| async {
        let status = client(&a)
            .await
            .status(pb::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        status.peers.iter().any(|p| p.peer_id == rogue_id && p.score < 0.0)
    })
    .await;
    assert!(penalised, "the forging peer's score never went negative");
    let text = http_get(&metrics_url).await;
    assert!(
        metric(&text, "outcome=\"bad_signature\"") >= 1,
        "no forged message was counted:\n{text}"
    );
    // The oversized message never reached decoding: nothing was counted malformed.
    assert_eq!(
        metric(&text, "outcome=\"malformed\""),
        0,
        "oversized gossip reached the decoder"
    );
    let log_after = client(&a)
        .await
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .credential_log_len;
    assert_eq!(log_before, log_after, "forged gossip changed the log");

    // Honest delivery goes on.
    let id = submit_attestation(&b, net.attestation([5; 32], "honest"))
        .await
        .expect("attest");
    assert!(eventually(|| async { credential_status(&a, &id).await == "valid" }).await);

    driver.abort();
    a.stop().await;
    b.stop().await;
}

/// A minimal HTTP GET over a raw socket (the test needs one page of text).
async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("read");
    out
}
