//! Caps on the connections the gRPC and HTTP servers hold open.
//!
//! A connection is accepted only with a permit, and holds it until it
//! closes. With every permit taken, new connections wait in the kernel's
//! accept queue (they are neither refused nor served) until one closes, so a
//! client that opens connections without end costs the node a bounded
//! number of sockets and tasks. Three rules keep such a client from holding
//! the permits for good:
//! - a connection that has not brought its first request within
//!   [`FIRST_REQUEST_DEADLINE`] is closed (an idle TCP connection, or one
//!   that never finishes the HTTP/2 preface or its first request's headers);
//! - on the HTTP server, a connection that has brought no request for
//!   [`HTTP_IDLE_MAX`] is closed too (gRPC connections stay open between
//!   calls and are checked by HTTP/2 keepalive pings instead);
//! - one source address holds at most [`RPC_CONNECTIONS_PER_IP_MAX`] gRPC
//!   (or [`HTTP_CONNECTIONS_PER_IP_MAX`] HTTP) connections; one more is
//!   accepted and closed at once, so it does not wait in the accept queue
//!   ahead of other clients.
//!
//! Whether a connection brought a request is told by the service itself
//! ([`Activity::record`], called by [`super::RequestLayer`] on every request),
//! so a request's start, not any byte, is what counts. Closed and refused
//! connections are counted in `credence_rpc_connections_closed_total`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::metrics::ConnectionClosedLabels;

/// Most gRPC connections open at once (each carries up to
/// `RPC_STREAMS_PER_CONNECTION_MAX` streams).
pub const RPC_CONNECTIONS_MAX: usize = 1024;
/// Most HTTP (`/metrics`, `/healthz`, `/v1/…`) connections open at once.
pub const HTTP_CONNECTIONS_MAX: usize = 256;
/// Most gRPC connections from one source address: a quarter of
/// [`RPC_CONNECTIONS_MAX`], so one host cannot take every slot, and still
/// more than a load generator or a watcher with a connection per stream
/// group opens (local testnets connect everything from 127.0.0.1).
pub const RPC_CONNECTIONS_PER_IP_MAX: usize = 256;
/// Most HTTP connections from one source address: a quarter of
/// [`HTTP_CONNECTIONS_MAX`]; a scraper or a `curl` loop needs a few.
pub const HTTP_CONNECTIONS_PER_IP_MAX: usize = 64;
/// How long a new connection has to bring its first request before it is
/// closed. A real client sends its first request within a round trip or
/// two of connecting; 10 s leaves room for a slow link and bounds how long
/// an idle connection holds a slot.
pub const FIRST_REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long an HTTP connection may go without a request before it is closed
/// (checked about every this long, so it may stay up to twice it). Longer
/// than a Prometheus scrape interval, so a scraper keeps its connection.
pub const HTTP_IDLE_MAX: Duration = Duration::from_secs(60);
/// Pause after a failed accept (out of file descriptors, say) before trying
/// again, instead of spinning on the error.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The rules one server's connections follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max: usize,
    /// Connections open at once from one source address.
    pub per_ip_max: usize,
    /// Time to the first request.
    pub first_request: Duration,
    /// Longest time between requests after the first, if any.
    pub idle_max: Option<Duration>,
}

impl ConnectionLimits {
    /// The gRPC server's.
    pub const RPC: ConnectionLimits = ConnectionLimits {
        max: RPC_CONNECTIONS_MAX,
        per_ip_max: RPC_CONNECTIONS_PER_IP_MAX,
        first_request: FIRST_REQUEST_DEADLINE,
        idle_max: None,
    };
    /// The HTTP server's.
    pub const HTTP: ConnectionLimits = ConnectionLimits {
        max: HTTP_CONNECTIONS_MAX,
        per_ip_max: HTTP_CONNECTIONS_PER_IP_MAX,
        first_request: FIRST_REQUEST_DEADLINE,
        idle_max: Some(HTTP_IDLE_MAX),
    };
}

/// Where a server's connections are counted.
#[derive(Clone, Debug)]
pub struct ConnectionCounters {
    /// `grpc` or `http`, the `server` label.
    pub server: &'static str,
    /// Connections open now.
    pub open: Gauge,
    /// Connections closed by a rule, by server and reason.
    pub closed: Family<ConnectionClosedLabels, Counter>,
}

impl ConnectionCounters {
    fn count(&self, reason: &'static str) {
        self.closed
            .get_or_create(&ConnectionClosedLabels {
                server: self.server,
                reason,
            })
            .inc();
    }
}

/// Requests a connection has brought; the service records each one.
#[derive(Clone, Debug, Default)]
pub struct Activity(Arc<AtomicU64>);

impl Activity {
    /// Called by the service for every request on the connection.
    pub fn record(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn requests(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the services learn of a connection (request extensions: tonic
/// inserts it as is, axum inside `ConnectInfo`).
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    pub remote: SocketAddr,
    pub activity: Activity,
}

/// Connections open per source address.
#[derive(Debug, Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

impl PerIp {
    /// Takes a slot for `ip` unless it holds `max` already.
    fn take(&self, ip: IpAddr, max: usize) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n = n.saturating_add(1);
        true
    }

    fn release(&self, ip: IpAddr) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// An accepted connection and the permit it holds until dropped.
#[derive(Debug)]
pub struct Limited {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    info: ConnectionInfo,
    per_ip: Arc<PerIp>,
    counters: ConnectionCounters,
    /// When the connection is next checked for requests; `None` once it
    /// brought its first and has no idle limit.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Requests seen at the last check.
    seen: u64,
    idle_max: Option<Duration>,
}

impl Drop for Limited {
    fn drop(&mut self) {
        self.counters.open.dec();
        self.per_ip.release(self.info.remote.ip());
    }
}

impl Limited {
    /// What the services learn of this connection.
    pub fn info(&self) -> ConnectionInfo {
        self.info.clone()
    }

    /// Fails once the connection is past its deadline without a request;
    /// otherwise moves the deadline on (or drops it) and registers the
    /// waker for the next one.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            let Some(deadline) = self.deadline.as_mut() else {
                return Ok(());
            };
            if deadline.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            let requests = self.info.activity.requests();
            if requests == self.seen {
                let reason = if self.seen == 0 {
                    "first_request_deadline"
                } else {
                    "idle"
                };
                self.counters.count(reason);
                self.deadline = None;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connection closed: no request within its deadline ({reason})"),
                ));
            }
            self.seen = requests;
            match self.idle_max {
                // Polled again at the top, which registers the waker.
                Some(idle) => deadline.as_mut().reset(Instant::now() + idle),
                None => self.deadline = None,
            }
        }
    }
}

impl AsyncRead for Limited {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Limited {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, LimitedListener>> for ConnectionInfo {
    fn connect_info(stream: axum::serve::IncomingStream<'_, LimitedListener>) -> Self {
        stream.io().info()
    }
}

/// A listener that holds at most `limits.max` connections open, counted in
/// `counters`.
#[derive(Debug)]
pub struct LimitedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    limits: ConnectionLimits,
    counters: ConnectionCounters,
}

impl LimitedListener {
    pub fn new(listener: TcpListener, limits: ConnectionLimits, counters: ConnectionCounters) -> LimitedListener {
        LimitedListener {
            listener,
            permits: Arc::new(Semaphore::new(limits.max)),
            per_ip: Arc::new(PerIp::default()),
            limits,
            counters,
        }
    }

    /// Waits for a free slot, then for a connection its source may open.
    pub async fn next(&self) -> (Limited, SocketAddr) {
        loop {
            let permit = match self.permits.clone().acquire_owned().await {
                Ok(permit) => permit,
                // The semaphore is never closed; were it, nothing more is accepted.
                Err(_) => return std::future::pending().await,
            };
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    if !self.per_ip.take(peer.ip(), self.limits.per_ip_max) {
                        // Closed at once (dropped with its permit).
                        self.counters.count("per_ip_cap");
                        continue;
                    }
                    // Answers are small and latency matters more than packing.
                    let _ = stream.set_nodelay(true);
                    self.counters.open.inc();
                    let info = ConnectionInfo {
                        remote: peer,
                        activity: Activity::default(),
                    };
                    return (
                        Limited {
                            stream,
                            _permit: permit,
                            info,
                            per_ip: self.per_ip.clone(),
                            counters: self.counters.clone(),
                            deadline: Some(Box::pin(tokio::time::sleep(self.limits.first_request))),
                            seen: 0,
                            idle_max: self.limits.idle_max,
                        },
                        peer,
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed; retrying");
                    drop(permit);
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    }

    /// The connections, one by one, as a stream for tonic.
    pub fn into_stream(self) -> impl futures::Stream<Item = io::Result<Limited>> + Send {
        futures::stream::unfold(self, |listener| async move {
            let (connection, _) = listener.next().await;
            Some((Ok(connection), listener))
        })
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = Limited;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Limited, SocketAddr) {
        self.next().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn counters() -> ConnectionCounters {
        ConnectionCounters {
            server: "test",
            open: Gauge::default(),
            closed: Family::default(),
        }
    }

    fn closed(counters: &ConnectionCounters, reason: &'static str) -> u64 {
        counters
            .closed
            .get_or_create(&ConnectionClosedLabels { server: "test", reason })
            .get()
    }

    const LONG: Duration = Duration::from_secs(3600);

    fn limits(max: usize, per_ip_max: usize) -> ConnectionLimits {
        ConnectionLimits {
            max,
            per_ip_max,
            first_request: LONG,
            idle_max: None,
        }
    }

    #[tokio::test]
    async fn a_connection_past_the_cap_waits_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counters = counters();
        let limited = LimitedListener::new(listener, limits(2, 2), counters.clone());
        let _a = TcpStream::connect(addr).await.expect("connect");
        let _b = TcpStream::connect(addr).await.expect("connect");
        let _c = TcpStream::connect(addr).await.expect("connect"); // waits in the kernel's queue
        let first = limited.next().await;
        let second = limited.next().await;
        assert_eq!(counters.open.get(), 2);
        let third = tokio::time::timeout(Duration::from_millis(200), limited.next()).await;
        assert!(third.is_err(), "a third connection was accepted past the cap");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(10), limited.next()).await;
        assert!(third.is_ok(), "a freed slot was not reused");
        assert_eq!(counters.open.get(), 2, "the third took the freed slot");
        drop((second, third));
        assert_eq!(counters.open.get(), 0);
    }

    #[tokio::test]
    async fn a_source_past_its_own_cap_is_closed_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counters = counters();
        let limited = Arc::new(LimitedListener::new(listener, limits(8, 2), counters.clone()));
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let first = limited.next().await;
        let second = limited.next().await;
        // The third is accepted and closed: its client reads the end.
        let waiting = tokio::spawn({
            let limited = limited.clone();
            async move { limited.next().await }
        });
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(30), clients[2].read(&mut byte))
            .await
            .expect("the refused connection was closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(closed(&counters, "per_ip_cap"), 1);
        assert_eq!(counters.open.get(), 2);
        // Once one closes, the source may open another.
        drop(first);
        let _again = TcpStream::connect(addr).await.expect("connect");
        let third = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("a connection within the source's cap was accepted");
        assert!(third.is_ok());
        drop(second);
    }

    #[tokio::test]
    async fn a_connection_without_a_request_is_closed_at_its_deadline_and_frees_its_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counters = counters();
        let mut rules = limits(1, 1);
        rules.first_request = Duration::from_millis(200);
        let limited = LimitedListener::new(listener, rules, counters.clone());
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let (mut served, _) = limited.next().await;
        // The server side reads, as a server would: the deadline ends it.
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(30), served.read(&mut buf))
            .await
            .expect("the deadline closed the connection");
        assert_eq!(read.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
        drop(served);
        let mut byte = [0u8; 1];
        let end = tokio::time::timeout(Duration::from_secs(30), idle.read(&mut byte))
            .await
            .expect("the client saw the close");
        assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
        assert_eq!(closed(&counters, "first_request_deadline"), 1);
        // The slot is free for the next client; a connection that brings a
        // request before its deadline stays open past it.
        let _next = TcpStream::connect(addr).await.expect("connect");
        let (served, _) = tokio::time::timeout(Duration::from_secs(30), limited.next())
            .await
            .expect("the freed slot was reused");
        drop(served);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        rules.first_request = Duration::from_secs(2);
        let limited = LimitedListener::new(listener, rules, counters.clone());
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (mut served, _) = limited.next().await;
        served.info().activity.record();
        let read = tokio::time::timeout(Duration::from_secs(3), served.read(&mut buf)).await;
        assert!(
            read.is_err(),
            "a connection that brought a request was closed: {read:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_with_an_idle_limit_is_closed_once_requests_stop() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counters = counters();
        let rules = ConnectionLimits {
            max: 1,
            per_ip_max: 1,
            first_request: Duration::from_secs(2),
            idle_max: Some(Duration::from_millis(200)),
        };
        let limited = LimitedListener::new(listener, rules, counters.clone());
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (mut served, _) = limited.next().await;
        // One request, then none: closed as idle, not for its first request.
        served.info().activity.record();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(30), served.read(&mut buf))
            .await
            .expect("the idle limit closed the connection");
        assert_eq!(read.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
        assert_eq!(closed(&counters, "idle"), 1);
        assert_eq!(closed(&counters, "first_request_deadline"), 0);
    }
}
