//! A cap on the connections the gRPC and HTTP servers hold open.
//!
//! A connection is accepted only with a permit, and holds it until it
//! closes. With every permit taken, new connections wait in the kernel's
//! accept queue (they are neither refused nor served) until one closes, so a
//! client that opens connections without end costs the node a bounded
//! number of sockets and tasks.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most gRPC connections open at once (each carries up to
/// `RPC_CONCURRENCY_PER_CONNECTION` requests).
pub const RPC_CONNECTIONS_MAX: usize = 1024;
/// Most HTTP (`/metrics`, `/healthz`, `/v1/…`) connections open at once.
pub const HTTP_CONNECTIONS_MAX: usize = 256;
/// Pause after a failed accept (out of file descriptors, say) before trying
/// again, instead of spinning on the error.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// An accepted connection and the permit it holds until dropped.
#[derive(Debug)]
pub struct Limited {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Limited {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl AsyncRead for Limited {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
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
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// A listener that holds at most `max` connections open, counted in `open`.
#[derive(Debug)]
pub struct LimitedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    open: Gauge,
}

impl LimitedListener {
    pub fn new(listener: TcpListener, max: usize, open: Gauge) -> LimitedListener {
        LimitedListener {
            listener,
            permits: Arc::new(Semaphore::new(max)),
            open,
        }
    }

    /// Waits for a free slot, then for a connection.
    pub async fn next(&self) -> (Limited, SocketAddr) {
        loop {
            let permit = match self.permits.clone().acquire_owned().await {
                Ok(permit) => permit,
                // The semaphore is never closed; were it, nothing more is accepted.
                Err(_) => return std::future::pending().await,
            };
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    // Answers are small and latency matters more than packing.
                    let _ = stream.set_nodelay(true);
                    self.open.inc();
                    let open = self.open.clone();
                    return (
                        Limited {
                            stream,
                            _permit: permit,
                            open,
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
    use super::*;

    #[tokio::test]
    async fn a_connection_past_the_cap_waits_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = Gauge::default();
        let limited = LimitedListener::new(listener, 2, open.clone());
        let _a = TcpStream::connect(addr).await.expect("connect");
        let _b = TcpStream::connect(addr).await.expect("connect");
        let _c = TcpStream::connect(addr).await.expect("connect"); // waits in the kernel's queue
        let first = limited.next().await;
        let second = limited.next().await;
        assert_eq!(open.get(), 2);
        let third = tokio::time::timeout(Duration::from_millis(200), limited.next()).await;
        assert!(third.is_err(), "a third connection was accepted past the cap");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(10), limited.next()).await;
        assert!(third.is_ok(), "a freed slot was not reused");
        assert_eq!(open.get(), 2, "the third took the freed slot");
        drop((second, third));
        assert_eq!(open.get(), 0);
    }
}
