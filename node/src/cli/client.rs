//! The gRPC client subcommands.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use credence_proto::v1 as pb;
use credence_proto::v1::node_client::NodeClient;
use prost::Message;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

use super::{AdminArgs, RpcArgs};
use crate::core::envelope::{Kind, NetworkId, parse_hex32, seal};
use crate::keys;
use crate::node::now_ms;
use crate::rpc::http::credential_json;

/// How long to wait for a TCP connection to the node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for any one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn connect(rpc: &RpcArgs) -> anyhow::Result<NodeClient<Channel>> {
    Ok(NodeClient::new(channel(rpc).await?).max_decoding_message_size(crate::rpc::RPC_RESPONSE_MAX_BYTES))
}

/// A gRPC channel to the node at `--rpc`.
pub(super) async fn channel(rpc: &RpcArgs) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(rpc.rpc.clone())
        .map_err(|_| anyhow!("--rpc {:?} is not a URL like http://127.0.0.1:7100", rpc.rpc))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    endpoint
        .connect()
        .await
        .map_err(|e| anyhow!("cannot reach a node at {}: {e} (is it running? pass --rpc)", rpc.rpc))
}

pub(super) fn rpc_error(status: tonic::Status) -> anyhow::Error {
    let code = format!("{:?}", status.code());
    anyhow!("{} ({})", status.message(), code_name(&code))
}

fn code_name(debug: &str) -> String {
    let mut out = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.extend(c.to_lowercase());
    }
    out
}

pub(super) async fn network_id(client: &mut NodeClient<Channel>) -> anyhow::Result<NetworkId> {
    let status = client
        .status(pb::StatusRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    parse_hex32(&status.network_id)
        .map(NetworkId)
        .ok_or_else(|| anyhow!("the node reported a malformed network id"))
}

pub(super) fn hex32(text: &str, what: &str) -> anyhow::Result<[u8; 32]> {
    parse_hex32(text).ok_or_else(|| anyhow!("{what} must be 64 hex characters, got {text:?}"))
}

pub(super) async fn status(rpc: &RpcArgs) -> anyhow::Result<()> {
    let mut client = connect(rpc).await?;
    let s = client
        .status(pb::StatusRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    if rpc.json {
        let out = json!({
            "node_id": s.node_id,
            "peer_id": s.peer_id,
            "name": s.name,
            "region": s.region,
            "network_id": s.network_id,
            "mode": s.mode,
            "run_mode": s.run_mode,
            "validator": s.validator,
            "scopes": s.scopes.iter().map(|c| json!({
                "scope": c.scope, "total_weight": c.total_weight, "reachable_weight": c.reachable_weight,
                "quorum_latency_ms": c.quorum_latency_ms, "view_age_ms": if c.view_age_ms == u64::MAX { Value::Null } else { json!(c.view_age_ms) },
            })).collect::<Vec<_>>(),
            "view_age_ms": s.scopes.iter().filter(|c| c.scope != "network").map(|c| (c.scope.clone(), if c.view_age_ms == u64::MAX { Value::Null } else { json!(c.view_age_ms) })).collect::<serde_json::Map<String, Value>>(),
            "suspected": s.suspected.iter().map(|x| json!({"key": x.key, "name": x.name, "phi": x.phi})).collect::<Vec<_>>(),
            "peers": {
                "count": s.peer_count,
                "list": s.peers.iter().map(|p| json!({"peer_id": p.peer_id, "address": p.address, "name": p.name, "region": p.region, "score": p.score, "topics": p.topics})).collect::<Vec<_>>(),
            },
            "credential_log_len": s.credential_log_len,
            "attestations": s.attestations,
            "revocations": s.revocations,
            "queues": s.queues.iter().map(|q| json!({"name": q.name, "depth": q.depth, "capacity": q.capacity, "dropped": q.dropped})).collect::<Vec<_>>(),
            "listen_addrs": s.listen_addrs,
            "now_ms": s.now_ms,
            "started_at_ms": s.started_at_ms,
            "version": s.version,
        });
        println!("{out}");
    } else {
        println!(
            "node      {} ({}, region {})",
            s.name,
            s.mode,
            if s.region.is_empty() { "-" } else { &s.region }
        );
        println!("node id   {}", s.node_id);
        println!("peer id   {}", s.peer_id);
        println!("network   {}", s.network_id);
        println!("peers     {}", s.peer_count);
        for p in &s.peers {
            println!(
                "  {} {} {}",
                if p.name.is_empty() { "?" } else { &p.name },
                p.peer_id,
                p.address
            );
        }
        println!(
            "credentials  {} attestations, {} revocations, log {}",
            s.attestations, s.revocations, s.credential_log_len
        );
        for q in &s.queues {
            println!("queue {:<16} {}/{} dropped {}", q.name, q.depth, q.capacity, q.dropped);
        }
    }
    Ok(())
}

pub(super) async fn attest(
    rpc: &RpcArgs,
    key_path: &Path,
    subject: &str,
    schema: &str,
    data: String,
    expires_in: Option<u64>,
) -> anyhow::Result<()> {
    let key = keys::load(key_path)?;
    let subject = hex32(subject, "--subject")?;
    let mut client = connect(rpc).await?;
    let network = network_id(&mut client).await?;
    let issued_at = now_ms();
    let expires_at = match expires_in {
        Some(secs) => issued_at
            .checked_add(secs.checked_mul(1000).context("--expires-in is too large")?)
            .context("--expires-in is too large")?,
        None => 0,
    };
    let body = pb::Attestation {
        issuer: key.verifying_key().to_bytes().to_vec(),
        subject: subject.to_vec(),
        schema: schema.to_string(),
        data: data.into_bytes(),
        issued_at,
        expires_at,
        nonce: rand::random(),
    };
    let (envelope, _) = seal(&network, &key, Kind::Attestation, body.encode_to_vec());
    let answer = client
        .submit_attestation(pb::SubmitRequest { envelope })
        .await
        .map_err(rpc_error)?
        .into_inner();
    print_submitted(rpc.json, &answer);
    Ok(())
}

pub(super) async fn revoke(rpc: &RpcArgs, key_path: &Path, id: &str, reason: String) -> anyhow::Result<()> {
    let key = keys::load(key_path)?;
    let attestation_id = hex32(id, "the attestation id")?;
    let mut client = connect(rpc).await?;
    let network = network_id(&mut client).await?;
    let body = pb::Revocation {
        issuer: key.verifying_key().to_bytes().to_vec(),
        attestation_id: attestation_id.to_vec(),
        revoked_at: now_ms(),
        reason,
    };
    let (envelope, _) = seal(&network, &key, Kind::Revocation, body.encode_to_vec());
    let answer = client
        .submit_revocation(pb::SubmitRequest { envelope })
        .await
        .map_err(rpc_error)?
        .into_inner();
    print_submitted(rpc.json, &answer);
    Ok(())
}

fn print_submitted(json: bool, answer: &pb::SubmitResponse) {
    if json {
        println!("{}", json!({ "id": answer.id, "new": answer.new }));
    } else {
        println!("{}", answer.id);
        if !answer.new {
            eprintln!("(the node already held this object)");
        }
    }
}

fn print_credential(c: &pb::Credential) {
    println!("{}  {}", c.id, c.status);
    if c.status == "unknown" {
        return;
    }
    println!("  issuer   {}", c.issuer);
    println!("  subject  {}", c.subject);
    println!("  schema   {}", c.schema);
    let at = |ms: u64| super::time::when(ms, c.as_of);
    println!(
        "  issued   {}{}",
        at(c.issued_at),
        if c.expires_at > 0 {
            format!(", expires {}", at(c.expires_at))
        } else {
            String::new()
        }
    );
    println!("  learned  {} (this node's clock)", at(c.learned_at));
    if c.revoked_at > 0 || !c.revocation_reason.is_empty() {
        println!("  revoked  {}: {}", at(c.revoked_at), c.revocation_reason);
    }
}

pub(super) async fn credential(rpc: &RpcArgs, id: &str) -> anyhow::Result<()> {
    hex32(id, "the credential id")?;
    let mut client = connect(rpc).await?;
    let c = client
        .get_credential(pb::GetCredentialRequest { id: id.to_string() })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if rpc.json {
        println!("{}", credential_json(&c));
    } else {
        print_credential(&c);
    }
    Ok(())
}

pub(super) async fn credentials(rpc: &RpcArgs, subject: &str) -> anyhow::Result<()> {
    hex32(subject, "--subject")?;
    let mut client = connect(rpc).await?;
    let list = client
        .list_credentials(pb::ListCredentialsRequest {
            subject: subject.to_string(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if rpc.json {
        let items: Vec<_> = list.credentials.iter().map(credential_json).collect();
        println!("{}", json!({ "credentials": items, "as_of": list.as_of }));
    } else {
        if list.credentials.is_empty() {
            println!("no credentials for {subject}");
        }
        for c in &list.credentials {
            print_credential(c);
        }
    }
    Ok(())
}

/// An admin call's request: the message and, with `--admin-token-file`, the
/// token. Without one the call goes out bare and the node's refusal says
/// where the token is.
fn admin_request<T>(admin: &AdminArgs, message: T) -> anyhow::Result<tonic::Request<T>> {
    match &admin.admin_token_file {
        Some(path) => {
            let token = crate::rpc::admin::read_token_file(path)?;
            crate::rpc::admin::with_token(message, &token).map_err(rpc_error)
        }
        None => Ok(tonic::Request::new(message)),
    }
}

/// An admin call's error, with the flag to pass when the token was missing.
fn admin_error(admin: &AdminArgs, status: tonic::Status) -> anyhow::Error {
    if status.code() == tonic::Code::Unauthenticated && admin.admin_token_file.is_none() {
        anyhow!(
            "{} (unauthenticated; pass --admin-token-file or set CREDENCE_ADMIN_TOKEN_FILE)",
            status.message()
        )
    } else {
        rpc_error(status)
    }
}

pub(super) async fn block_peer(rpc: &RpcArgs, admin: &AdminArgs, peer: &str, blocked: bool) -> anyhow::Result<()> {
    let mut client = connect(rpc).await?;
    let request = admin_request(
        admin,
        pb::SetPeerBlockedRequest {
            peer: peer.to_string(),
            blocked,
        },
    )?;
    let answer = client
        .set_peer_blocked(request)
        .await
        .map_err(|e| admin_error(admin, e))?
        .into_inner();
    if rpc.json {
        println!(
            "{}",
            json!({ "peer_id": answer.peer_id, "blocked": answer.blocked, "blocked_peers": answer.blocked_peers })
        );
    } else {
        println!(
            "{} {}",
            if answer.blocked { "blocked" } else { "unblocked" },
            answer.peer_id
        );
    }
    Ok(())
}
