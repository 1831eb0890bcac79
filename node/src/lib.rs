//! Credence: a peer-to-peer network of nodes that gossips credential
//! attestations and revocations, and (with the escrow protocol) accounts
//! distribution claims against regional escrows.
//!
//! Code map: `core` is the pure protocol; `store` owns sled; `net` owns the
//! libp2p swarm; `rpc` owns tonic and the HTTP endpoints; `cli` parses the
//! command line and is the only place that prints for humans; `node` wires
//! them together and owns the actor that applies everything.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod ceremony;
pub mod cli;
pub mod config;
pub mod core;
pub mod ingest;
pub mod keys;
pub mod metrics;
pub mod net;
pub mod node;
pub mod rpc;
pub mod sim;
pub mod store;
pub mod stress;
pub mod top;
