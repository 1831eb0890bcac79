//! The pure protocol core: envelopes, credentials and (later) distributions,
//! buckets, votes and the ledger.
//!
//! Nothing here does I/O, reads a clock or draws randomness: the shell passes
//! the current time in and persists and sends whatever the core returns, so
//! the same code runs in a node and in the deterministic simulator.

// Input from the network, disk or user never panics the core, and amounts use
// checked arithmetic: a bug here is a safety bug.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::panic
    )
)]

pub mod credentials;
pub mod envelope;
pub mod escrow;
pub mod limits;
pub mod mutation;
pub mod quorum;
pub mod validator;
pub mod wire;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;
/// A 32-byte ed25519 public key.
pub type PublicKey = [u8; 32];
