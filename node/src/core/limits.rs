//! Every size limit of the wire format, named once.
//!
//! Sizes are checked before anything is decoded, so an oversized message costs
//! the receiver a length comparison and nothing more.

use super::envelope::Kind;

/// Largest encoded envelope accepted anywhere (RPC, sync, disk).
pub const ENVELOPE_MAX_BYTES: usize = 1024 * 1024;
/// Largest gossip message; gossipsub is configured with this cap.
pub const GOSSIP_MAX_BYTES: usize = 256 * 1024;
/// Largest `data` payload of an attestation.
pub const ATTESTATION_DATA_MAX_BYTES: usize = 4 * 1024;
/// Longest schema name.
pub const SCHEMA_MAX_BYTES: usize = 64;
/// Longest revocation reason.
pub const REASON_MAX_BYTES: usize = 512;

/// Largest body accepted for a kind, checked before the body is decoded.
///
/// Credential objects are small: an attestation is its 4 KiB of data plus
/// fixed fields, so its cap sits just above that.
pub const fn body_max_bytes(kind: Kind) -> usize {
    match kind {
        Kind::Attestation => ATTESTATION_DATA_MAX_BYTES + 512,
        Kind::Revocation => REASON_MAX_BYTES + 256,
        Kind::IssuerGrant | Kind::Rebalance => 256,
        Kind::Distribution => 16 * 1024,
        Kind::Claim => 512,
        Kind::Vote => 256,
        Kind::Heartbeat => 64 * 1024,
        Kind::Batch | Kind::Freeze | Kind::Evidence => GOSSIP_MAX_BYTES - 1024,
    }
}
