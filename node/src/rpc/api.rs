//! The HTTP/JSON API: one table, [`OPERATIONS`], names a `/v1/…` route for
//! every unary gRPC method. The HTTP server builds its router from it, and
//! [`openapi`] builds the OpenAPI 3 document from it and from the `.proto`
//! descriptors, so the two cannot disagree.
//!
//! A call over HTTP is the gRPC call: the JSON request (path parameters and
//! body) is read into the method's request message with the descriptors'
//! proto3 JSON mapping, the gRPC service's own method answers it, and its
//! answer (or its status) goes back as JSON. Nothing here decides anything a
//! gRPC call would decide differently.
//!
//! JSON follows the proto3 mapping with the `.proto` field names: `bytes` are
//! base64, 64-bit integers are numbers (strings are accepted too), every
//! field is present in answers (0, "" and false included), and a proto3
//! `optional` field is absent when unset. `WatchClaim` streams, and is
//! offered over gRPC only.

use std::sync::{Arc, OnceLock};

use credence_proto::v1 as pb;
use credence_proto::v1::escrow_server::Escrow as _;
use credence_proto::v1::node_server::Node as _;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value as Field};
use serde_json::{Map, Value, json};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use super::NodeService;
use super::escrow::EscrowService;
use crate::core::envelope::Kind;

/// The HTTP method of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
}

impl Verb {
    /// Lower-case, as OpenAPI names it.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
        }
    }
}

/// Where an operation's request message comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// The path parameters only (each names a field of the request).
    Path,
    /// A JSON body: the request message.
    Body,
    /// A JSON body carrying a signed object of this kind: either
    /// `{"envelope": base64}` or `{"body": {…}, "signer": base64, "signature": base64}`.
    Submit(Kind),
}

/// The unary gRPC methods, each answered by [`Services::invoke`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    Status,
    SubmitAttestation,
    SubmitRevocation,
    GetCredential,
    ListCredentials,
    SetPeerBlocked,
    ListDistributions,
    SubmitDistribution,
    SubmitClaim,
    GetClaim,
    GetLiquidity,
    Route,
    GetBalance,
    SubmitRebalance,
    Audit,
}

impl Rpc {
    /// The method's full name in the descriptors, e.g. `credence.v1.Node.GetCredential`.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Status => "credence.v1.Node.Status",
            Rpc::SubmitAttestation => "credence.v1.Node.SubmitAttestation",
            Rpc::SubmitRevocation => "credence.v1.Node.SubmitRevocation",
            Rpc::GetCredential => "credence.v1.Node.GetCredential",
            Rpc::ListCredentials => "credence.v1.Node.ListCredentials",
            Rpc::SetPeerBlocked => "credence.v1.Node.SetPeerBlocked",
            Rpc::ListDistributions => "credence.v1.Escrow.ListDistributions",
            Rpc::SubmitDistribution => "credence.v1.Escrow.SubmitDistribution",
            Rpc::SubmitClaim => "credence.v1.Escrow.SubmitClaim",
            Rpc::GetClaim => "credence.v1.Escrow.GetClaim",
            Rpc::GetLiquidity => "credence.v1.Escrow.GetLiquidity",
            Rpc::Route => "credence.v1.Escrow.Route",
            Rpc::GetBalance => "credence.v1.Escrow.GetBalance",
            Rpc::SubmitRebalance => "credence.v1.Escrow.SubmitRebalance",
            Rpc::Audit => "credence.v1.Escrow.Audit",
        }
    }
}

/// One `/v1/…` route and the gRPC method it calls.
#[derive(Clone, Copy, Debug)]
pub struct Operation {
    pub verb: Verb,
    /// axum's path syntax, which is OpenAPI's: `{name}` is a parameter.
    pub path: &'static str,
    pub rpc: Rpc,
    pub input: Input,
    /// Needs the admin token in the [`super::admin::ADMIN_TOKEN_METADATA`] header.
    pub admin: bool,
    pub summary: &'static str,
}

const fn op(verb: Verb, path: &'static str, rpc: Rpc, input: Input, summary: &'static str) -> Operation {
    Operation {
        verb,
        path,
        rpc,
        input,
        admin: false,
        summary,
    }
}

/// Every HTTP operation; the router and the OpenAPI document are built
/// from this table alone.
pub const OPERATIONS: &[Operation] = &[
    op(
        Verb::Get,
        "/v1/status",
        Rpc::Status,
        Input::Path,
        "Identity, network, quorum mode, peers and queues of this node",
    ),
    op(
        Verb::Post,
        "/v1/attestations",
        Rpc::SubmitAttestation,
        Input::Submit(Kind::Attestation),
        "Submit a signed attestation",
    ),
    op(
        Verb::Post,
        "/v1/revocations",
        Rpc::SubmitRevocation,
        Input::Submit(Kind::Revocation),
        "Submit a signed revocation",
    ),
    op(
        Verb::Get,
        "/v1/credentials/{id}",
        Rpc::GetCredential,
        Input::Path,
        "A credential by its attestation id, with its status now",
    ),
    op(
        Verb::Get,
        "/v1/subjects/{subject}/credentials",
        Rpc::ListCredentials,
        Input::Path,
        "Every credential this node knows for one subject",
    ),
    Operation {
        admin: true,
        ..op(
            Verb::Post,
            "/v1/admin/blocked-peers",
            Rpc::SetPeerBlocked,
            Input::Body,
            "Fault injection: block or unblock a peer (needs --enable-fault-injection and the admin token)",
        )
    },
    op(
        Verb::Get,
        "/v1/distributions",
        Rpc::ListDistributions,
        Input::Path,
        "Distributions this node knows",
    ),
    op(
        Verb::Post,
        "/v1/distributions",
        Rpc::SubmitDistribution,
        Input::Submit(Kind::Distribution),
        "Submit an operator-signed distribution",
    ),
    op(
        Verb::Post,
        "/v1/claims",
        Rpc::SubmitClaim,
        Input::Submit(Kind::Claim),
        "Submit a claimant-signed claim; answers its status",
    ),
    op(
        Verb::Get,
        "/v1/claims/{id}",
        Rpc::GetClaim,
        Input::Path,
        "A claim's status, with the time of each step reached",
    ),
    op(
        Verb::Get,
        "/v1/distributions/{distribution_id}/liquidity",
        Rpc::GetLiquidity,
        Input::Path,
        "Escrow, spent, pending and available per region and bucket",
    ),
    op(
        Verb::Get,
        "/v1/distributions/{distribution_id}/routes/{claimant}",
        Rpc::Route,
        Input::Path,
        "A claim's home region and bucket owner",
    ),
    op(
        Verb::Get,
        "/v1/accounts/{account}/balance",
        Rpc::GetBalance,
        Input::Path,
        "Credited amounts of a recipient account",
    ),
    op(
        Verb::Post,
        "/v1/rebalances",
        Rpc::SubmitRebalance,
        Input::Submit(Kind::Rebalance),
        "Submit an operator-signed rebalance",
    ),
    op(
        Verb::Get,
        "/v1/audit",
        Rpc::Audit,
        Input::Path,
        "Certified state for invariant checks across nodes",
    ),
];

/// How each gRPC status code is answered over HTTP: its name (the JSON
/// error's `code`) and the HTTP status. Codes not listed answer 500.
pub const STATUS_CODES: &[(Code, &str, u16)] = &[
    (Code::InvalidArgument, "INVALID_ARGUMENT", 400),
    (Code::OutOfRange, "OUT_OF_RANGE", 400),
    (Code::Unauthenticated, "UNAUTHENTICATED", 401),
    (Code::PermissionDenied, "PERMISSION_DENIED", 403),
    (Code::NotFound, "NOT_FOUND", 404),
    (Code::AlreadyExists, "ALREADY_EXISTS", 409),
    (Code::Aborted, "ABORTED", 409),
    (Code::FailedPrecondition, "FAILED_PRECONDITION", 409),
    (Code::ResourceExhausted, "RESOURCE_EXHAUSTED", 429),
    (Code::Cancelled, "CANCELLED", 503),
    (Code::Unavailable, "UNAVAILABLE", 503),
    (Code::DeadlineExceeded, "DEADLINE_EXCEEDED", 504),
    (Code::Unimplemented, "UNIMPLEMENTED", 501),
    (Code::Internal, "INTERNAL", 500),
    (Code::DataLoss, "DATA_LOSS", 500),
    (Code::Unknown, "UNKNOWN", 500),
];

/// The HTTP status and code name of a gRPC status code.
pub fn http_status(code: Code) -> (u16, &'static str) {
    STATUS_CODES
        .iter()
        .find(|(c, _, _)| *c == code)
        .map_or((500, "INTERNAL"), |(_, name, http)| (*http, *name))
}

/// The descriptors of every `.proto` file, decoded once.
pub fn pool() -> Result<&'static DescriptorPool, Status> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(credence_proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Status::internal(format!("the API descriptors do not decode: {e}")))
}

/// The request and answer descriptors of an operation's gRPC method.
pub fn method_types(op: &Operation) -> Result<(MessageDescriptor, MessageDescriptor), Status> {
    let (service, method) = op
        .rpc
        .name()
        .rsplit_once('.')
        .ok_or_else(|| Status::internal(format!("{} names no method", op.rpc.name())))?;
    let method = pool()?
        .get_service_by_name(service)
        .and_then(|s| s.methods().find(|m| m.name() == method))
        .ok_or_else(|| Status::internal(format!("no gRPC method {}", op.rpc.name())))?;
    Ok((method.input(), method.output()))
}

/// The wire message that is the body of a signed object of this kind.
fn body_message(kind: Kind) -> Result<MessageDescriptor, Status> {
    let name = match kind {
        Kind::Attestation => "credence.v1.Attestation",
        Kind::Revocation => "credence.v1.Revocation",
        Kind::Distribution => "credence.v1.Distribution",
        Kind::Claim => "credence.v1.Claim",
        Kind::Rebalance => "credence.v1.Rebalance",
        other => return Err(Status::internal(format!("no HTTP submit for {other:?}"))),
    };
    pool()?
        .get_message_by_name(name)
        .ok_or_else(|| Status::internal(format!("no message {name}")))
}

/// The gRPC services an HTTP call is answered by.
#[derive(Clone, Debug)]
pub struct Services {
    pub node: NodeService,
    pub escrow: EscrowService,
}

fn serialize_options() -> prost_reflect::SerializeOptions {
    prost_reflect::SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .skip_default_fields(false)
}

fn read_json(desc: MessageDescriptor, json: Value) -> Result<DynamicMessage, Status> {
    let name = desc.name().to_string();
    DynamicMessage::deserialize(desc, json)
        .map_err(|e| Status::invalid_argument(format!("the request is not a valid {name}: {e}")))
}

/// Turns a submit body into a `SubmitRequest`'s JSON: the envelope form
/// passes as it is; the fields form is encoded into an envelope here.
fn submit_json(kind: Kind, mut json: Map<String, Value>) -> Result<Value, Status> {
    let Some(body) = json.remove("body") else {
        return Ok(Value::Object(json));
    };
    let body = read_json(body_message(kind)?, body)?;
    let signed_desc = pool()?
        .get_message_by_name("credence.v1.Signed")
        .ok_or_else(|| Status::internal("no message credence.v1.Signed"))?;
    let mut signed = read_json(signed_desc, Value::Object(json))?;
    signed.set_field_by_name("kind", Field::EnumNumber(kind as i32));
    signed.set_field_by_name("body", Field::Bytes(body.encode_to_vec().into()));
    let envelope = pb::SubmitRequest {
        envelope: signed.encode_to_vec(),
    };
    let request = DynamicMessage::decode(
        pool()?
            .get_message_by_name("credence.v1.SubmitRequest")
            .ok_or_else(|| Status::internal("no message credence.v1.SubmitRequest"))?,
        envelope.encode_to_vec().as_slice(),
    )
    .map_err(|e| Status::internal(e.to_string()))?;
    request
        .serialize_with_options(serde_json::value::Serializer, &serialize_options())
        .map_err(|e| Status::internal(e.to_string()))
}

fn request<T: Message + Default>(metadata: MetadataMap, bytes: &[u8]) -> Result<Request<T>, Status> {
    let message = T::decode(bytes).map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))?;
    let mut request = Request::new(message);
    *request.metadata_mut() = metadata;
    Ok(request)
}

fn answer<T: Message>(result: Result<Response<T>, Status>) -> Result<Vec<u8>, Status> {
    result.map(|r| r.into_inner().encode_to_vec())
}

impl Services {
    /// Answers one HTTP call: `params` are the path parameters, `body` the
    /// JSON body (`None` for a GET), `metadata` the HTTP headers.
    pub async fn call(
        &self,
        op: &Operation,
        params: Vec<(String, String)>,
        body: Option<Value>,
        metadata: MetadataMap,
    ) -> Result<Value, Status> {
        let (input_desc, output_desc) = method_types(op)?;
        let mut json = match body {
            None => Map::new(),
            Some(Value::Object(map)) => map,
            Some(_) => return Err(Status::invalid_argument("the request body must be a JSON object")),
        };
        for (name, value) in params {
            json.insert(name, Value::String(value));
        }
        let json = match op.input {
            Input::Submit(kind) => submit_json(kind, json)?,
            Input::Path | Input::Body => Value::Object(json),
        };
        let input = read_json(input_desc, json)?.encode_to_vec();
        let output = self.invoke(op.rpc, metadata, &input).await?;
        let output = DynamicMessage::decode(output_desc, output.as_slice())
            .map_err(|e| Status::internal(format!("the answer does not decode: {e}")))?;
        output
            .serialize_with_options(serde_json::value::Serializer, &serialize_options())
            .map_err(|e| Status::internal(format!("the answer does not encode as JSON: {e}")))
    }

    /// Calls the gRPC method `rpc` with an encoded request.
    async fn invoke(&self, rpc: Rpc, metadata: MetadataMap, input: &[u8]) -> Result<Vec<u8>, Status> {
        let (n, e) = (&self.node, &self.escrow);
        match rpc {
            Rpc::Status => answer(n.status(request(metadata, input)?).await),
            Rpc::SubmitAttestation => answer(n.submit_attestation(request(metadata, input)?).await),
            Rpc::SubmitRevocation => answer(n.submit_revocation(request(metadata, input)?).await),
            Rpc::GetCredential => answer(n.get_credential(request(metadata, input)?).await),
            Rpc::ListCredentials => answer(n.list_credentials(request(metadata, input)?).await),
            Rpc::SetPeerBlocked => answer(n.set_peer_blocked(request(metadata, input)?).await),
            Rpc::ListDistributions => answer(e.list_distributions(request(metadata, input)?).await),
            Rpc::SubmitDistribution => answer(e.submit_distribution(request(metadata, input)?).await),
            Rpc::SubmitClaim => answer(e.submit_claim(request(metadata, input)?).await),
            Rpc::GetClaim => answer(e.get_claim(request(metadata, input)?).await),
            Rpc::GetLiquidity => answer(e.get_liquidity(request(metadata, input)?).await),
            Rpc::Route => answer(e.route(request(metadata, input)?).await),
            Rpc::GetBalance => answer(e.get_balance(request(metadata, input)?).await),
            Rpc::SubmitRebalance => answer(e.submit_rebalance(request(metadata, input)?).await),
            Rpc::Audit => answer(e.audit(request(metadata, input)?).await),
        }
    }
}

/// The JSON error body: `{"code": "INVALID_ARGUMENT", "message": "…"}`.
pub fn error_json(code: &str, message: &str) -> Value {
    json!({ "code": code, "message": message })
}

// ---- the OpenAPI document ----

/// An id or a public key in a path: 32 bytes, hex.
pub const HEX32_PATTERN: &str = "^[0-9a-fA-F]{64}$";
/// A 32-byte public key, base64 (44 characters, one `=`).
pub const KEY_BASE64_PATTERN: &str = "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$";
/// A 64-byte signature, base64 (88 characters, two `=`).
pub const SIGNATURE_BASE64_PATTERN: &str = "^[A-Za-z0-9+/]{85}[AQgw]==$";

fn short_name(desc: &MessageDescriptor) -> String {
    desc.full_name().trim_start_matches("credence.v1.").replace('.', "_")
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The JSON schema of one field's value, as the proto3 JSON mapping writes it.
fn field_schema(field: &prost_reflect::FieldDescriptor, schemas: &mut Map<String, Value>) -> Value {
    use prost_reflect::Kind as K;
    let one = match field.kind() {
        K::String => json!({ "type": "string" }),
        K::Bytes => json!({ "type": "string", "format": "byte" }),
        K::Bool => json!({ "type": "boolean" }),
        K::Double | K::Float => json!({ "type": "number" }),
        K::Uint64 | K::Fixed64 => json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX }),
        K::Uint32 | K::Fixed32 => json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX }),
        K::Int64 | K::Sint64 | K::Sfixed64 => json!({ "type": "integer", "minimum": i64::MIN, "maximum": i64::MAX }),
        K::Int32 | K::Sint32 | K::Sfixed32 => json!({ "type": "integer", "minimum": i32::MIN, "maximum": i32::MAX }),
        K::Enum(e) => json!({ "type": "string", "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>() }),
        K::Message(m) => {
            message_schema(&m, schemas);
            schema_ref(&short_name(&m))
        }
    };
    if field.is_list() {
        json!({ "type": "array", "items": one })
    } else if field.supports_presence() && !matches!(field.kind(), K::Message(_)) {
        // A proto3 `optional` scalar: absent (or null) when unset.
        let mut one = one;
        if let Some(map) = one.as_object_mut() {
            map.insert("nullable".into(), Value::Bool(true));
        }
        one
    } else {
        one
    }
}

/// Adds the schema of a message (and of the messages it holds) to `schemas`.
fn message_schema(desc: &MessageDescriptor, schemas: &mut Map<String, Value>) {
    let name = short_name(desc);
    if schemas.contains_key(&name) {
        return;
    }
    schemas.insert(name.clone(), Value::Null);
    let mut properties = Map::new();
    for field in desc.fields() {
        let schema = field_schema(&field, schemas);
        properties.insert(field.name().to_string(), schema);
    }
    schemas.insert(
        name,
        json!({ "type": "object", "properties": properties, "additionalProperties": false }),
    );
}

/// The parameter names of a path, in order: `/v1/claims/{id}` → `["id"]`.
pub fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

fn operation_json(op: &Operation, schemas: &mut Map<String, Value>) -> Result<Value, Status> {
    let (input, output) = method_types(op)?;
    message_schema(&output, schemas);
    let mut parameters = Vec::new();
    for name in path_params(op.path) {
        let field = input
            .get_field_by_name(name)
            .ok_or_else(|| Status::internal(format!("{} has no field {name}", input.full_name())))?;
        let mut schema = field_schema(&field, schemas);
        if let Some(map) = schema.as_object_mut() {
            // Every path parameter is an id or a public key.
            map.insert("pattern".into(), Value::String(HEX32_PATTERN.into()));
        }
        parameters.push(json!({ "name": name, "in": "path", "required": true, "schema": schema }));
    }
    if op.admin {
        parameters.push(json!({
            "name": super::admin::ADMIN_TOKEN_METADATA, "in": "header", "required": false,
            "description": "The admin token the node wrote to its data directory",
            "schema": { "type": "string" },
        }));
    }
    let body_schema = match op.input {
        Input::Path => None,
        Input::Body => {
            message_schema(&input, schemas);
            Some(schema_ref(&short_name(&input)))
        }
        Input::Submit(kind) => {
            let body = body_message(kind)?;
            message_schema(&body, schemas);
            let fields_name = format!("{}Fields", short_name(&body));
            schemas.insert(
                fields_name.clone(),
                json!({
                    "type": "object",
                    "description": "The body as JSON fields, with the signer's public key and the ed25519 signature of its digest; the node encodes the body in field order",
                    "properties": {
                        "body": schema_ref(&short_name(&body)),
                        "signer": { "type": "string", "format": "byte", "pattern": KEY_BASE64_PATTERN },
                        "signature": { "type": "string", "format": "byte", "pattern": SIGNATURE_BASE64_PATTERN },
                    },
                    "required": ["body", "signer", "signature"],
                    "additionalProperties": false,
                }),
            );
            schemas.insert(
                "Envelope".into(),
                json!({
                    "type": "object",
                    "description": "An encoded Signed envelope, base64",
                    "properties": { "envelope": { "type": "string", "format": "byte" } },
                    "required": ["envelope"],
                    "additionalProperties": false,
                }),
            );
            Some(json!({ "oneOf": [schema_ref("Envelope"), schema_ref(&fields_name)] }))
        }
    };
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({ "description": output.name(), "content": { "application/json": { "schema": schema_ref(&short_name(&output)) } } }),
    );
    let mut statuses: Vec<(u16, &str)> = STATUS_CODES.iter().map(|(_, name, http)| (*http, *name)).collect();
    statuses.push((404, "no such route"));
    statuses.push((405, "method not allowed"));
    statuses.push((413, "body too large"));
    statuses.sort_unstable();
    for (http, name) in statuses {
        let entry = responses.entry(http.to_string()).or_insert_with(
            || json!({ "description": "", "content": { "application/json": { "schema": schema_ref("Error") } } }),
        );
        if let Some(Value::String(d)) = entry.get_mut("description") {
            if !d.is_empty() {
                d.push_str(", ");
            }
            d.push_str(name);
        }
    }
    let mut out = json!({
        "operationId": op.rpc.name().rsplit('.').next().unwrap_or_default(),
        "summary": op.summary,
        "description": format!("gRPC {}", op.rpc.name()),
        "parameters": parameters,
        "responses": responses,
    });
    if let (Some(schema), Some(map)) = (body_schema, out.as_object_mut()) {
        map.insert(
            "requestBody".into(),
            json!({ "required": true, "content": { "application/json": { "schema": schema } } }),
        );
    }
    Ok(out)
}

/// The OpenAPI 3 document of [`OPERATIONS`].
pub fn openapi() -> Result<Arc<Value>, Status> {
    static DOC: OnceLock<Result<Arc<Value>, Status>> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut schemas = Map::new();
        schemas.insert(
            "Error".into(),
            json!({
                "type": "object",
                "properties": {
                    "code": { "type": "string", "description": "The gRPC status code's name" },
                    "message": { "type": "string" },
                },
                "required": ["code", "message"],
            }),
        );
        let mut paths = Map::new();
        for op in OPERATIONS {
            let item = paths.entry(op.path.to_string()).or_insert_with(|| json!({}));
            if let Some(map) = item.as_object_mut() {
                map.insert(op.verb.name().into(), operation_json(op, &mut schemas)?);
            }
        }
        Ok(Arc::new(json!({
            "openapi": "3.0.3",
            "info": {
                "title": "Credence node HTTP API",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "Every unary gRPC method of credence.v1 as JSON over HTTP. Errors carry the gRPC status code's name.",
            },
            "paths": paths,
            "components": { "schemas": schemas },
        })))
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unary_grpc_method_has_exactly_one_route() {
        let pool = pool().expect("descriptors");
        let mut unary = Vec::new();
        for service in pool.services() {
            for method in service.methods() {
                if !method.is_client_streaming() && !method.is_server_streaming() {
                    unary.push(method.full_name().to_string());
                }
            }
        }
        assert!(unary.len() >= 15, "{unary:?}");
        for name in &unary {
            let n = OPERATIONS.iter().filter(|op| op.rpc.name() == name).count();
            assert_eq!(n, 1, "{name} has {n} HTTP routes");
        }
        for op in OPERATIONS {
            assert!(
                unary.iter().any(|u| u == op.rpc.name()),
                "{} is not a unary gRPC method",
                op.rpc.name()
            );
        }
    }

    #[test]
    fn the_document_has_every_operation_and_resolves_every_reference() {
        let doc = openapi().expect("document");
        let text = doc.to_string();
        let schemas = &doc["components"]["schemas"];
        for op in OPERATIONS {
            let o = &doc["paths"][op.path][op.verb.name()];
            assert!(o.is_object(), "{} {} missing", op.verb.name(), op.path);
            for p in path_params(op.path) {
                assert!(
                    o["parameters"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|x| x["name"] == p))
                );
            }
        }
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| *c != '"').collect();
            assert!(schemas[&name].is_object(), "dangling reference {name}");
        }
        assert_eq!(
            schemas["DistributionInfo"]["properties"]["closes_at"]["type"],
            "integer"
        );
        assert_eq!(
            schemas["ScopeInfo"]["properties"]["quorum_latency_ms"]["nullable"],
            true
        );
    }

    #[test]
    fn status_codes_map_to_distinct_meanings() {
        assert_eq!(http_status(Code::InvalidArgument), (400, "INVALID_ARGUMENT"));
        assert_eq!(http_status(Code::Unauthenticated), (401, "UNAUTHENTICATED"));
        assert_eq!(http_status(Code::PermissionDenied), (403, "PERMISSION_DENIED"));
        assert_eq!(http_status(Code::NotFound), (404, "NOT_FOUND"));
        assert_eq!(http_status(Code::ResourceExhausted), (429, "RESOURCE_EXHAUSTED"));
        assert_eq!(http_status(Code::Unavailable), (503, "UNAVAILABLE"));
    }

    #[test]
    fn the_fields_form_encodes_the_same_envelope() {
        let attestation = pb::Attestation {
            issuer: vec![1; 32],
            subject: vec![2; 32],
            schema: "demo".into(),
            data: b"x".to_vec(),
            issued_at: 1_700_000_000_000,
            expires_at: 0,
            nonce: 7,
        };
        let signed = pb::Signed {
            kind: Kind::Attestation as i32,
            body: attestation.encode_to_vec(),
            signer: vec![1; 32],
            signature: vec![3; 64],
        };
        let b64 = |b: &[u8]| {
            let m = DynamicMessage::decode(
                pool()
                    .unwrap()
                    .get_message_by_name("credence.v1.SubmitRequest")
                    .unwrap(),
                pb::SubmitRequest { envelope: b.to_vec() }.encode_to_vec().as_slice(),
            )
            .unwrap();
            m.serialize_with_options(serde_json::value::Serializer, &serialize_options())
                .unwrap()["envelope"]
                .clone()
        };
        let fields = json!({
            "body": {
                "issuer": b64(&[1; 32]), "subject": b64(&[2; 32]), "schema": "demo", "data": b64(b"x"),
                "issued_at": 1_700_000_000_000u64, "nonce": "7",
            },
            "signer": b64(&[1; 32]),
            "signature": b64(&[3; 64]),
        });
        let Value::Object(map) = fields else { panic!() };
        let out = submit_json(Kind::Attestation, map).expect("encodes");
        assert_eq!(out["envelope"], b64(&signed.encode_to_vec()));
    }
}
