//! Integration tests, built as one binary to keep link time down.
//!
//! In-process nodes run on 127.0.0.1 with real libp2p, real sled in temp
//! directories and real gRPC; tests wait on conditions with generous
//! deadlines and never assert on timing.

mod common;
mod escrow;
mod gossip;
mod node_rpc;
mod rpc_limits;
mod testnet;
mod testvectors;
