//! What the network layer and the RPC layer hand to the node's actor and get
//! back: where an object came from, the actor's verdict, why a submission was
//! refused, and a page of the logs for catch-up. Shared by `net`, `node` and
//! `rpc`, so that none of them names another's types.

use crate::core::credentials::CredentialError;
use crate::core::envelope::EnvelopeError;
use crate::store::LogEntry;

/// Where an object came from; decides whether it is published and how a
/// rejection is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Rpc,
    Gossip,
    Sync,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Rpc => "rpc",
            Source::Gossip => "gossip",
            Source::Sync => "sync",
        }
    }
}

/// The actor's verdict on one verified object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    New,
    Duplicate,
    Rejected(CredentialError),
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("invalid envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("expected an envelope of kind {expected}, got one of kind {got}")]
    WrongKind { expected: &'static str, got: &'static str },
    #[error("{0}")]
    Rejected(#[from] CredentialError),
    #[error("node is overloaded; retry shortly")]
    Overloaded,
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("storage failed: {0}")]
    Store(String),
    #[error(transparent)]
    Escrow(crate::core::validator::ValidatorError),
}

/// One answer to a sync request: a page of each log.
#[derive(Debug, Default)]
pub struct SyncPage {
    pub entries: Vec<LogEntry>,
    pub log_len: u64,
    pub certificates: Vec<(u64, Vec<u8>)>,
    pub cert_log_len: u64,
}

/// Why the actor refused a certificate, and whether that is the sender's
/// fault: a forged or conflicting one is (gossip rejects it and the sender is
/// penalised); one this node has no room to hold yet is not (gossip ignores
/// it, catch-up brings it again).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refused {
    pub senders_fault: bool,
    pub reason: String,
}
