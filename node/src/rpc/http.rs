//! HTTP: `/metrics` (Prometheus text), `/healthz`, and a JSON mirror of the
//! read-only gRPC calls for `curl` users:
//! `/v1/status`, `/v1/credentials/{id}`, `/v1/subjects/{subject}/credentials`.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{credential_message, parse_id, status_message};
use crate::core::envelope::parse_hex32;
use crate::node::NodeHandle;

pub(super) async fn serve(node: NodeHandle, listener: tokio::net::TcpListener, mut shutdown: watch::Receiver<bool>) {
    let counters = super::limit::ConnectionCounters {
        server: "http",
        open: node.metrics.http_connections.clone(),
        closed: node.metrics.rpc_connections_closed.clone(),
    };
    let listener = super::limit::LimitedListener::new(listener, super::limit::ConnectionLimits::HTTP, counters);
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/v1/status", get(status))
        .route("/v1/credentials/{id}", get(credential))
        .route("/v1/subjects/{subject}/credentials", get(subject_credentials))
        .layer(super::RequestLayer)
        .with_state(node);
    let app = app.into_make_service_with_connect_info::<super::limit::ConnectionInfo>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn from_status(status: tonic::Status) -> Response {
    let code = match status.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(code, status.message())
}

async fn metrics(State(node): State<NodeHandle>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(node): State<NodeHandle>) -> Response {
    match node.counts().await {
        Some(_) => (StatusCode::OK, "ok\n").into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

async fn status(State(node): State<NodeHandle>) -> Response {
    match status_message(&node).await {
        Ok(s) => axum::Json(json!({
            "node_id": s.node_id,
            "peer_id": s.peer_id,
            "name": s.name,
            "region": s.region,
            "network_id": s.network_id,
            "mode": s.mode,
            "run_mode": s.run_mode,
            "scopes": s.scopes.iter().map(|c| json!({"scope": c.scope, "reachable_weight": c.reachable_weight, "total_weight": c.total_weight, "quorum_latency_ms": c.quorum_latency_ms, "view_age_ms": c.view_age_ms})).collect::<Vec<Value>>(),
            "suspected": s.suspected.iter().map(|x| json!({"key": x.key, "name": x.name, "phi": x.phi})).collect::<Vec<Value>>(),
            "validator": s.validator,
            "peer_count": s.peer_count,
            "peers": s.peers.iter().map(|p| json!({"peer_id": p.peer_id, "address": p.address, "name": p.name, "region": p.region})).collect::<Vec<Value>>(),
            "credential_log_len": s.credential_log_len,
            "attestations": s.attestations,
            "revocations": s.revocations,
            "queues": s.queues.iter().map(|q| json!({"name": q.name, "depth": q.depth, "capacity": q.capacity, "dropped": q.dropped})).collect::<Vec<Value>>(),
            "now_ms": s.now_ms,
        }))
        .into_response(),
        Err(e) => from_status(e),
    }
}

/// The JSON form of a credential, shared with the CLI's `--json` output.
pub fn credential_json(c: &credence_proto::v1::Credential) -> Value {
    json!({
        "id": c.id,
        "status": c.status,
        "issuer": c.issuer,
        "subject": c.subject,
        "schema": c.schema,
        "data": String::from_utf8_lossy(&c.data),
        "issued_at": c.issued_at,
        "expires_at": c.expires_at,
        "learned_at": c.learned_at,
        "revoked_at": c.revoked_at,
        "revocation_reason": c.revocation_reason,
        "revocation_learned_at": c.revocation_learned_at,
        "as_of": c.as_of,
    })
}

async fn credential(State(node): State<NodeHandle>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id, "id") {
        Ok(id) => id,
        Err(e) => return from_status(e),
    };
    match node.credential(id).await {
        Some((view, as_of)) => axum::Json(credential_json(&credential_message(&id, &view, as_of))).into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "node is shutting down"),
    }
}

async fn subject_credentials(State(node): State<NodeHandle>, Path(subject): Path<String>) -> Response {
    let Some(subject) = parse_hex32(&subject) else {
        return error(
            StatusCode::BAD_REQUEST,
            "subject must be 64 hex characters (a public key)",
        );
    };
    match node.credentials_of(subject).await {
        Some((views, as_of)) => {
            let list: Vec<Value> = views
                .iter()
                .filter_map(|v| {
                    v.attestation
                        .as_ref()
                        .map(|a| credential_json(&credential_message(&a.id, v, as_of)))
                })
                .collect();
            axum::Json(json!({ "credentials": list, "as_of": as_of })).into_response()
        }
        None => error(StatusCode::SERVICE_UNAVAILABLE, "node is shutting down"),
    }
}
