//! The RPC servers' connection limits against clients that connect and
//! never ask: idle connections are closed after the first-request deadline
//! and free their slots, a source address has a cap of its own, and every
//! gRPC connection announces its cap on concurrent streams.

use std::net::SocketAddr;
use std::time::Duration;

use credence::rpc::limit::{
    FIRST_REQUEST_DEADLINE, HTTP_CONNECTIONS_MAX, HTTP_CONNECTIONS_PER_IP_MAX, RPC_CONNECTIONS_MAX,
    RPC_CONNECTIONS_PER_IP_MAX,
};
use credence_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::{DEADLINE, TestNet, eventually};

/// Opens `n` TCP connections to `to` from loopback addresses other than
/// 127.0.0.1 (each holds at most `per_ip` of them), which never send a byte.
async fn idle_connections(to: SocketAddr, n: usize, per_ip: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let host = 2 + u8::try_from(i / per_ip).expect("few source addresses");
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, host], 0)))
            .expect("bind a loopback source");
        // Connects complete in the kernel, accepted or not.
        out.push(socket.connect(to).await.expect("connect"));
    }
    out
}

async fn closed_total(http: SocketAddr, server: &str, reason: &str) -> u64 {
    let Some(text) = http_get(http, "/metrics").await else {
        return 0;
    };
    let prefix = format!("credence_rpc_connections_closed_total{{server=\"{server}\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One HTTP/1.1 GET; the body, if the answer was 200.
async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        text.starts_with("HTTP/1.1 200").then_some(text)
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_caps_do_not_shut_out_clients() {
    let _serial = crate::common::NETWORK_TESTS.lock().await;
    let net = TestNet::new(&["eu"], 1);
    let node = net.start(0, vec![]).await;
    let rpc_url = format!("http://{}", node.rpc_addr);

    // More idle connections than either server holds, from several sources,
    // each source past its own cap too.
    let rpc_idle = idle_connections(
        node.rpc_addr,
        RPC_CONNECTIONS_MAX + RPC_CONNECTIONS_PER_IP_MAX,
        RPC_CONNECTIONS_PER_IP_MAX + 16,
    )
    .await;
    let http_idle = idle_connections(
        node.http_addr,
        HTTP_CONNECTIONS_MAX + HTTP_CONNECTIONS_PER_IP_MAX,
        HTTP_CONNECTIONS_PER_IP_MAX + 4,
    )
    .await;

    // Real clients get through once the idle ones are past their deadline
    // (they may before, when a slot is free).
    let status = eventually(|| async {
        let call = async {
            let mut c = credence_proto::v1::node_client::NodeClient::connect(rpc_url.clone())
                .await
                .ok()?;
            c.status(pb::StatusRequest {}).await.ok()
        };
        tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;
    assert!(
        status,
        "no gRPC client got through within {DEADLINE:?} (first-request deadline {FIRST_REQUEST_DEADLINE:?})"
    );
    let healthz = eventually(|| async { http_get(node.http_addr, "/healthz").await.is_some() }).await;
    assert!(healthz, "no HTTP client got through within {DEADLINE:?}");

    // And the node says why it closed the others.
    for server in ["grpc", "http"] {
        for reason in ["first_request_deadline", "per_ip_cap"] {
            let counted = eventually(|| async { closed_total(node.http_addr, server, reason).await > 0 }).await;
            assert!(counted, "no {server} connection counted as closed for {reason}");
        }
    }
    drop((rpc_idle, http_idle));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_connection_announces_its_cap_on_concurrent_streams() {
    use tonic::codegen::http;
    let net = TestNet::new(&["eu"], 1);
    let node = net.start(0, vec![]).await;
    let tcp = TcpStream::connect(node.rpc_addr).await.expect("connect");
    let (mut send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let driver = tokio::spawn(connection);
    // Once an answer has come, the server's SETTINGS have been applied.
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/grpc.health.v1.Health/Check", node.rpc_addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    send = send.ready().await.expect("ready");
    let (response, mut body) = send.send_request(request, false).expect("sent");
    // An empty HealthCheckRequest: no compression, zero length.
    body.send_data(vec![0u8; 5].into(), true).expect("body");
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("an answer")
        .expect("headers");
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(
        send.current_max_send_streams(),
        credence::rpc::RPC_STREAMS_PER_CONNECTION_MAX as usize
    );
    driver.abort();
    node.stop().await;
}
