//! The node's RPC surface: the tonic gRPC service (with reflection v1 and
//! v1alpha, and the standard health service) and an HTTP server with
//! `/metrics`, `/healthz` and every unary call as JSON under `/v1/` (`api`).
//!
//! The only module that touches tonic and axum. Maps every node error to a
//! gRPC status code with a message that says what went wrong.

pub mod admin;
pub mod api;
mod escrow;
pub mod http;
pub mod limit;
pub mod watches;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::task::{Context, Poll};

use credence_proto::v1 as pb;
use credence_proto::v1::node_server::{Node, NodeServer};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::core::Millis;
use crate::core::credentials::{CredentialError, CredentialView};
use crate::core::envelope::{EnvelopeError, Kind, ObjectId, parse_hex32};
use crate::node::{NodeHandle, SubmitError};

/// Largest gRPC request accepted: one envelope plus framing.
pub const RPC_MESSAGE_MAX_BYTES: usize = crate::core::limits::ENVELOPE_MAX_BYTES + 4096;
/// Largest gRPC answer sent: an audit lists every funded slot (about 100
/// bytes each), so it grows with the network's history.
pub const RPC_RESPONSE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Concurrent requests per gRPC connection (calls past it wait for one to
/// finish; a stream counts only until its first answer).
pub const RPC_CONCURRENCY_PER_CONNECTION: usize = 256;
/// Most HTTP/2 streams open at once on one gRPC connection (the
/// `SETTINGS_MAX_CONCURRENT_STREAMS` the node announces; a client queues
/// calls past it). It bounds what one connection holds in long streams
/// such as `WatchClaim`, so [`limit::RPC_CONNECTIONS_PER_IP_MAX`] of them
/// bound a host; as many as the requests one connection may have in flight.
pub const RPC_STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// Largest header block (metadata included) of one gRPC request: a call's
/// headers and the admin token take well under 1 KiB.
pub const RPC_HEADER_LIST_MAX_BYTES: u32 = 16 * 1024;
/// How often an HTTP/2 ping checks a gRPC connection that is otherwise
/// quiet, and how long its answer may take: a client that vanished without
/// closing frees its connection slot (`limit::RPC_CONNECTIONS_MAX`) within
/// about a minute.
pub const RPC_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// See [`RPC_KEEPALIVE_INTERVAL`].
pub const RPC_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Why the RPC servers could not start.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot listen for gRPC on {addr}: {source} (is the port in use? pass --rpc-listen)")]
    RpcBind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen for HTTP on {addr}: {source} (is the port in use? pass --http-listen)")]
    HttpBind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(String),
    #[error(transparent)]
    AdminToken(#[from] admin::AdminTokenError),
}

/// Binds both servers and spawns them; returns their bound addresses. With
/// `admin_token_dir` (fault injection on), a fresh admin token is written
/// there first and the admin calls require it; without, they are refused.
pub async fn serve(
    node: NodeHandle,
    rpc_listen: SocketAddr,
    http_listen: SocketAddr,
    admin_token_dir: Option<PathBuf>,
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, SocketAddr, Vec<tokio::task::JoinHandle<()>>), RpcError> {
    let admin = admin_token_dir.as_deref().map(admin::AdminToken::create).transpose()?;
    if let Some(token) = &admin {
        tracing::info!(path = %token.path().display(), "admin token written");
    }
    let rpc_listener = tokio::net::TcpListener::bind(rpc_listen)
        .await
        .map_err(|source| RpcError::RpcBind {
            addr: rpc_listen,
            source,
        })?;
    let rpc_addr = rpc_listener.local_addr().map_err(|source| RpcError::RpcBind {
        addr: rpc_listen,
        source,
    })?;
    let http_listener = tokio::net::TcpListener::bind(http_listen)
        .await
        .map_err(|source| RpcError::HttpBind {
            addr: http_listen,
            source,
        })?;
    let http_addr = http_listener.local_addr().map_err(|source| RpcError::HttpBind {
        addr: http_listen,
        source,
    })?;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(credence_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RpcError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(credence_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| RpcError::Reflection(e.to_string()))?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<NodeServer<NodeService>>().await;

    let node_service = NodeService {
        node: node.clone(),
        admin,
    };
    let escrow_service = escrow::EscrowService {
        node: node.clone(),
        watches: watches::Watches::start(node.clone(), shutdown.clone()),
    };
    let http_services = api::Services {
        node: node_service.clone(),
        escrow: escrow_service.clone(),
    };
    let service = NodeServer::new(node_service)
        .max_decoding_message_size(RPC_MESSAGE_MAX_BYTES)
        .max_encoding_message_size(RPC_RESPONSE_MAX_BYTES);
    let escrow_service = credence_proto::v1::escrow_server::EscrowServer::new(escrow_service)
        .max_decoding_message_size(RPC_MESSAGE_MAX_BYTES)
        .max_encoding_message_size(RPC_RESPONSE_MAX_BYTES);
    health_reporter
        .set_serving::<credence_proto::v1::escrow_server::EscrowServer<escrow::EscrowService>>()
        .await;
    let mut rpc_shutdown = shutdown.clone();
    let counters = limit::ConnectionCounters {
        server: "grpc",
        open: node.metrics.rpc_connections.clone(),
        closed: node.metrics.rpc_connections_closed.clone(),
    };
    let rpc_task = tokio::spawn(async move {
        let incoming = limit::LimitedListener::new(rpc_listener, limit::ConnectionLimits::RPC, counters).into_stream();
        let result = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(RPC_CONCURRENCY_PER_CONNECTION)
            .max_concurrent_streams(Some(RPC_STREAMS_PER_CONNECTION_MAX))
            .http2_max_header_list_size(Some(RPC_HEADER_LIST_MAX_BYTES))
            .http2_keepalive_interval(Some(RPC_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(RPC_KEEPALIVE_TIMEOUT))
            .layer(RequestLayer)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(service)
            .add_service(escrow_service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = rpc_shutdown.changed().await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    });
    let http_task = tokio::spawn(http::serve(node, http_services, http_listener, shutdown));
    tracing::info!(%rpc_addr, %http_addr, "RPC listening");
    Ok((rpc_addr, http_addr, vec![rpc_task, http_task]))
}

/// Applied to every request of both servers: records the request on its
/// connection (the deadlines of [`limit`]) and answers a request over
/// [`RPC_MESSAGE_MAX_BYTES`] with `RESOURCE_EXHAUSTED`. tonic refuses such
/// a request with `OUT_OF_RANGE` before any handler runs, as a status in the
/// answer's headers; no handler of this node answers `OUT_OF_RANGE`, so that
/// status in the headers is always the size check's.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestLayer;

impl<S> tower::Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, inner: S) -> RequestService<S> {
        RequestService { inner }
    }
}

/// See [`RequestLayer`].
#[derive(Clone, Debug)]
pub struct RequestService<S> {
    inner: S,
}

type Answer<R, E> = Result<tonic::codegen::http::Response<R>, E>;

impl<S, B, R> tower::Service<tonic::codegen::http::Request<B>> for RequestService<S>
where
    S: tower::Service<tonic::codegen::http::Request<B>, Response = tonic::codegen::http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Map<S::Future, fn(Answer<R, S::Error>) -> Answer<R, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        let extensions = request.extensions();
        if let Some(info) = extensions.get::<limit::ConnectionInfo>() {
            info.activity.record();
        } else if let Some(axum::extract::ConnectInfo(info)) =
            extensions.get::<axum::extract::ConnectInfo<limit::ConnectionInfo>>()
        {
            info.activity.record();
        }
        futures::FutureExt::map(
            self.inner.call(request),
            oversize_status::<R, S::Error> as fn(Answer<R, S::Error>) -> Answer<R, S::Error>,
        )
    }
}

/// gRPC's `OUT_OF_RANGE` code, which tonic's size check answers.
const GRPC_OUT_OF_RANGE: &[u8] = b"11";

fn oversize_status<R, E>(answer: Answer<R, E>) -> Answer<R, E> {
    answer.map(|mut response| {
        let headers = response.headers_mut();
        if headers
            .get("grpc-status")
            .is_some_and(|code| code.as_bytes() == GRPC_OUT_OF_RANGE)
        {
            let detail = Status::from_header_map(headers)
                .map(|s| s.message().to_string())
                .unwrap_or_default();
            let status = Status::resource_exhausted(format!(
                "request too large ({detail}): a request carries at most one envelope of {} bytes",
                crate::core::limits::ENVELOPE_MAX_BYTES
            ));
            if status.add_header(headers).is_err() {
                tracing::warn!("could not rewrite an oversized request's status");
            }
        }
        response
    })
}

/// The `credence.v1.Node` service.
#[derive(Clone, Debug)]
pub struct NodeService {
    node: NodeHandle,
    /// The admin calls' token; `None` when fault injection is off.
    admin: Option<admin::AdminToken>,
}

pub(crate) fn submit_status(e: SubmitError) -> Status {
    let message = e.to_string();
    match e {
        SubmitError::Envelope(EnvelopeError::BadSignature) => Status::unauthenticated(message),
        SubmitError::Envelope(EnvelopeError::TooLarge { .. } | EnvelopeError::BodyTooLarge { .. }) => {
            Status::invalid_argument(message)
        }
        SubmitError::Envelope(_) | SubmitError::WrongKind { .. } => Status::invalid_argument(message),
        SubmitError::Rejected(c) => match c {
            CredentialError::SignerMismatch { .. }
            | CredentialError::NotGranted { .. }
            | CredentialError::NotTheIssuer
            | CredentialError::UnknownRevoker
            | CredentialError::NotAnOperator => Status::permission_denied(message),
            // PROTOCOL.md: a distribution or rebalance the escrow refuses is INVALID_ARGUMENT.
            CredentialError::Operator(_) => Status::invalid_argument(message),
            CredentialError::UnknownSchema(_) => Status::not_found(message),
            CredentialError::FromTheFuture { .. } => Status::failed_precondition(message),
            CredentialError::PendingFull(_) => Status::resource_exhausted(message),
            CredentialError::WrongKind(_)
            | CredentialError::Malformed { .. }
            | CredentialError::BadKeyField { .. }
            | CredentialError::ExpiresBeforeIssued { .. }
            | CredentialError::FieldTooLarge { .. } => Status::invalid_argument(message),
        },
        SubmitError::Overloaded => Status::resource_exhausted(message),
        SubmitError::ShuttingDown => Status::unavailable(message),
        SubmitError::Store(_) => Status::internal(message),
        SubmitError::Escrow(_) => Status::failed_precondition(message),
    }
}

/// The wire form of a credential view.
pub fn credential_message(id: &ObjectId, view: &CredentialView, as_of: Millis) -> pb::Credential {
    let mut out = pb::Credential {
        id: id.to_string(),
        status: view.status.name().into(),
        as_of,
        ..Default::default()
    };
    if let Some(a) = &view.attestation {
        out.issuer = hex::encode(a.issuer);
        out.subject = hex::encode(a.subject);
        out.schema = a.schema.clone();
        out.data = a.data.clone();
        out.issued_at = a.issued_at;
        out.expires_at = a.expires_at;
        out.learned_at = a.learned_at;
    }
    if let Some(r) = &view.revocation {
        out.revoked_at = r.revoked_at;
        out.revocation_reason = r.reason.clone();
        out.revocation_learned_at = r.learned_at;
    }
    out
}

/// Builds the status answer (shared by gRPC and the JSON mirror).
pub async fn status_message(node: &NodeHandle) -> Result<pb::StatusResponse, Status> {
    let counts = node
        .counts()
        .await
        .ok_or_else(|| Status::unavailable("node is shutting down"))?;
    let peers = node.net.peers().await;
    let listen_addrs = node.net.listen_addrs().await;
    let info = &node.info;
    let mut queues: Vec<pb::QueueInfo> = node
        .net
        .queues
        .iter()
        .map(|q| pb::QueueInfo {
            name: q.name.into(),
            depth: q.depth.load(std::sync::atomic::Ordering::Relaxed),
            capacity: q.capacity,
            dropped: q.dropped.load(std::sync::atomic::Ordering::Relaxed),
        })
        .collect();
    let (depth, capacity) = node.actor_queue();
    queues.push(pb::QueueInfo {
        name: "actor".into(),
        depth: depth as u64,
        capacity: capacity as u64,
        dropped: 0,
    });
    let report = node
        .escrow_read(|escrow, _, now| escrow.quorum_report(now))
        .await
        .ok_or_else(|| Status::unavailable("node is shutting down"))?;
    let scopes = report
        .scopes
        .iter()
        .map(|(scope, view, age)| pb::ScopeInfo {
            scope: scope.clone(),
            total_weight: view.total_weight,
            reachable_weight: view.reachable_weight,
            quorum_latency_ms: view.quorum_latency_ms,
            view_age_ms: *age,
        })
        .collect();
    let suspected = report
        .suspected
        .iter()
        .map(|(key, name, phi)| pb::SuspectInfo {
            key: hex::encode(key),
            name: name.clone(),
            phi: if phi.is_finite() { *phi } else { f64::MAX },
        })
        .collect();
    Ok(pb::StatusResponse {
        run_mode: info.mode_label.into(),
        scopes,
        suspected,
        node_id: hex::encode(info.node_id),
        peer_id: info.peer_id.clone(),
        name: info.name.clone(),
        region: info.region.clone(),
        network_id: hex::encode(info.network_id.0),
        mode: report.mode.name().into(),
        validator: info.validator,
        peer_count: peers.len() as u64,
        peers: peers
            .into_iter()
            .map(|p| pb::PeerInfo {
                peer_id: p.peer_id.to_string(),
                address: p.address,
                name: p.name,
                region: p.region,
                score: p.score,
                topics: p.topics,
            })
            .collect(),
        credential_log_len: counts.credential_log_len,
        attestations: counts.attestations,
        revocations: counts.revocations,
        queues,
        now_ms: crate::node::now_ms(),
        started_at_ms: info.started_at,
        listen_addrs,
        version: env!("CARGO_PKG_VERSION").into(),
        equivocations_detected: node.metrics.equivocations_detected.get(),
        evidence_received: node.metrics.evidence_received.get(),
    })
}

/// Parses a 64-hex id from a request field.
pub fn parse_id(text: &str, field: &str) -> Result<ObjectId, Status> {
    parse_hex32(text)
        .map(ObjectId)
        .ok_or_else(|| Status::invalid_argument(format!("{field} must be 64 hex characters, got {text:?}")))
}

/// The peer a `SetPeerBlocked` request names: a 64-hex public key or a PeerId.
pub fn parse_peer(text: &str) -> Option<libp2p::PeerId> {
    match parse_hex32(text) {
        Some(key) => crate::keys::peer_id_of(&key),
        None => text.parse::<libp2p::PeerId>().ok(),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        status_message(&self.node).await.map(Response::new)
    }

    async fn submit_attestation(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        self.submit(request.into_inner(), Kind::Attestation).await
    }

    async fn submit_revocation(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        self.submit(request.into_inner(), Kind::Revocation).await
    }

    async fn get_credential(
        &self,
        request: Request<pb::GetCredentialRequest>,
    ) -> Result<Response<pb::Credential>, Status> {
        let id = parse_id(&request.get_ref().id, "id")?;
        let (view, as_of) = self
            .node
            .credential(id)
            .await
            .ok_or_else(|| Status::unavailable("node is shutting down"))?;
        Ok(Response::new(credential_message(&id, &view, as_of)))
    }

    async fn list_credentials(
        &self,
        request: Request<pb::ListCredentialsRequest>,
    ) -> Result<Response<pb::ListCredentialsResponse>, Status> {
        let subject = parse_hex32(&request.get_ref().subject)
            .ok_or_else(|| Status::invalid_argument("subject must be 64 hex characters (a public key)"))?;
        let (views, as_of) = self
            .node
            .credentials_of(subject)
            .await
            .ok_or_else(|| Status::unavailable("node is shutting down"))?;
        let credentials = views
            .iter()
            .filter_map(|v| v.attestation.as_ref().map(|a| credential_message(&a.id, v, as_of)))
            .collect();
        Ok(Response::new(pb::ListCredentialsResponse { credentials, as_of }))
    }

    async fn set_peer_blocked(
        &self,
        request: Request<pb::SetPeerBlockedRequest>,
    ) -> Result<Response<pb::SetPeerBlockedResponse>, Status> {
        self.check_admin(request.metadata())?;
        self.set_blocked(request.into_inner()).await.map(Response::new)
    }
}

impl NodeService {
    /// Every admin call passes here first: fault injection must be on and
    /// the call must carry the node's admin token.
    fn check_admin(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        match &self.admin {
            Some(token) if self.node.info.fault_injection => token.check(metadata),
            _ => Err(Status::failed_precondition(
                "fault injection is disabled on this node; start it with --enable-fault-injection (admin calls \
                 then also need the admin token it writes)",
            )),
        }
    }

    async fn set_blocked(&self, request: pb::SetPeerBlockedRequest) -> Result<pb::SetPeerBlockedResponse, Status> {
        let peer = parse_peer(&request.peer)
            .ok_or_else(|| Status::invalid_argument("peer must be a PeerId or a 64-hex public key"))?;
        let blocked = self
            .node
            .net
            .set_blocked(peer, request.blocked)
            .await
            .ok_or_else(|| Status::unavailable("node is shutting down"))?;
        Ok(pb::SetPeerBlockedResponse {
            peer_id: peer.to_string(),
            blocked: request.blocked,
            blocked_peers: blocked.iter().map(|p| p.to_string()).collect(),
        })
    }

    async fn submit(&self, request: pb::SubmitRequest, kind: Kind) -> Result<Response<pb::SubmitResponse>, Status> {
        let outcome = self.node.submit(&request.envelope, kind).await.map_err(submit_status)?;
        Ok(Response::new(pb::SubmitResponse {
            id: outcome.id.to_string(),
            new: outcome.new,
        }))
    }
}
