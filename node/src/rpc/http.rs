//! HTTP: `/metrics` (Prometheus text), `/healthz`, `/v1/openapi.json`, and
//! a `/v1/…` route for every unary gRPC call, built from
//! [`super::api::OPERATIONS`] (see there for the JSON mapping).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::api::{self, Operation, Services, Verb};
use crate::node::NodeHandle;

/// Largest HTTP request body: one envelope, base64 (4 bytes per 3), as a
/// JSON string, plus room for the fields form's names and punctuation.
pub const HTTP_BODY_MAX_BYTES: usize = super::RPC_MESSAGE_MAX_BYTES / 3 * 4 + 8 * 1024;

#[derive(Clone, Debug)]
struct AppState {
    node: NodeHandle,
    services: Arc<Services>,
}

pub(super) async fn serve(
    node: NodeHandle,
    services: Services,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let counters = super::limit::ConnectionCounters {
        server: "http",
        open: node.metrics.http_connections.clone(),
        closed: node.metrics.rpc_connections_closed.clone(),
    };
    let listener = super::limit::LimitedListener::new(listener, super::limit::ConnectionLimits::HTTP, counters);
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/v1/openapi.json", get(openapi));
    let mut paths: Vec<&str> = api::OPERATIONS.iter().map(|op| op.path).collect();
    paths.dedup();
    for path in paths {
        let mut route = axum::routing::MethodRouter::new();
        for op in api::OPERATIONS.iter().filter(|op| op.path == path) {
            let filter = match op.verb {
                Verb::Get => MethodFilter::GET,
                Verb::Post => MethodFilter::POST,
            };
            route = route.on(filter, move |state: State<AppState>, request: Request| {
                call(state, op, request)
            });
        }
        app = app.route(path, route.fallback(method_not_allowed));
    }
    let app = app.fallback(no_route).layer(super::RequestLayer).with_state(AppState {
        node,
        services: Arc::new(services),
    });
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

fn error(code: StatusCode, name: &str, message: &str) -> Response {
    (code, axum::Json(api::error_json(name, message))).into_response()
}

fn from_status(status: &tonic::Status) -> Response {
    let (http, name) = api::http_status(status.code());
    let code = StatusCode::from_u16(http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(code, name, status.message())
}

async fn no_route() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no such route; GET /v1/openapi.json lists them",
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNIMPLEMENTED",
        "this route does not take that method; GET /v1/openapi.json lists them",
    )
}

/// One `/v1/…` call: path parameters and JSON body in, the gRPC method's
/// answer (or its status) out as JSON.
async fn call(State(state): State<AppState>, op: &'static Operation, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let params = if api::path_params(op.path).is_empty() {
        Vec::new()
    } else {
        match Path::<Vec<(String, String)>>::from_request_parts(&mut parts, &()).await {
            Ok(Path(params)) => params,
            Err(e) => return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &e.body_text()),
        }
    };
    let body = match op.verb {
        Verb::Get => None,
        Verb::Post => {
            let bytes: Bytes = match axum::body::to_bytes(body, HTTP_BODY_MAX_BYTES).await {
                Ok(b) => b,
                Err(_) => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "RESOURCE_EXHAUSTED",
                        &format!("the request body is larger than {HTTP_BODY_MAX_BYTES} bytes"),
                    );
                }
            };
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => Some(v),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_ARGUMENT",
                        &format!("the request body is not JSON: {e}"),
                    );
                }
            }
        }
    };
    let metadata = tonic::metadata::MetadataMap::from_headers(parts.headers);
    match state.services.call(op, params, body, metadata).await {
        Ok(json) => axum::Json(json).into_response(),
        Err(status) => from_status(&status),
    }
}

async fn openapi() -> Response {
    match api::openapi() {
        Ok(doc) => axum::Json(doc.as_ref().clone()).into_response(),
        Err(status) => from_status(&status),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.node.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.node.counts().await {
        Some(_) => (StatusCode::OK, "ok\n").into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
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
