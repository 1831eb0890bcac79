//! gRPC clients of the testnet's nodes, with bounded connect and request times.

use std::time::Duration;

use anyhow::anyhow;
use credence_proto::v1 as pb;
use credence_proto::v1::escrow_client::EscrowClient;
use credence_proto::v1::node_client::NodeClient;
use tonic::transport::{Channel, Endpoint};

/// How long to wait for a TCP connection to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to wait for any one answer: a paused node must not hang a command.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer accepted (an audit of a busy network is big).
pub const MESSAGE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// A lazily connected channel: creating it never blocks, the first call
/// connects.
pub fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|_| anyhow!("{url:?} is not a URL like http://127.0.0.1:7100"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .connect_lazy())
}

pub fn node(channel: &Channel) -> NodeClient<Channel> {
    NodeClient::new(channel.clone()).max_decoding_message_size(MESSAGE_MAX_BYTES)
}

/// An admin call's request for the node whose config is `config`: the
/// message with the admin token the node wrote at its last start.
pub fn admin_request<T>(config: &std::path::Path, message: T) -> anyhow::Result<tonic::Request<T>> {
    let node = credence::config::NodeConfig::load(config)?;
    let token = credence::rpc::admin::read_token_file(&credence::rpc::admin::token_file(&node.store_dir()))?;
    credence::rpc::admin::with_token(message, &token).map_err(|e| anyhow!("{}", e.message()))
}

pub fn escrow(channel: &Channel) -> EscrowClient<Channel> {
    EscrowClient::new(channel.clone()).max_decoding_message_size(MESSAGE_MAX_BYTES)
}

/// A gRPC error as one readable line.
pub fn describe(status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::Unimplemented => format!(
            "the node does not implement this call yet ({})",
            if status.message().is_empty() {
                "unimplemented"
            } else {
                status.message()
            }
        ),
        tonic::Code::Unavailable => format!("the node is unreachable: {}", status.message()),
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            format!("no answer within {REQUEST_TIMEOUT:?} (is the node paused?)")
        }
        code => format!("{} ({code:?})", status.message()),
    }
}

/// A node's status, or why it did not answer.
pub async fn status(url: &str) -> anyhow::Result<pb::StatusResponse> {
    let ch = channel(url)?;
    node(&ch)
        .status(pb::StatusRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| anyhow!("{url}: {}", describe(&s)))
}
