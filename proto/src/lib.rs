//! Credence's wire and RPC types, generated from `proto/credence/v1/*.proto`.
//!
//! Nothing else lives here: the node, the testnet and the tests all speak
//! through these types.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Version 1 of the protocol and the API.
pub mod v1 {
    tonic::include_proto!("credence.v1");
}

/// Encoded `FileDescriptorSet` of every `.proto` file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("credence_descriptor");
