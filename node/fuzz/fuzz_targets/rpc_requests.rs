//! Every request message of `node.proto` as the gRPC services receive it
//! (prost decode), and the checks the RPC layer runs on it before it asks
//! the node anything: ids and keys as 64 hex characters (`rpc::parse_id`,
//! the same parse the HTTP mirror uses), the peer of `SetPeerBlocked`
//! (`rpc::parse_peer`), and a submitted envelope's decode, kind check and
//! signature check (`NodeHandle::submit`).
//!
//! Input: a selector byte (which request), then the message.
//!
//! Holds: no panic; every request decodes → encodes → decodes to the same
//! message; an id or peer that parses, printed, parses to the same value.
#![no_main]

use credence::core::envelope::{self, KeyCache, Kind, parse_hex32};
use credence::core::limits::ENVELOPE_MAX_BYTES;
use credence::rpc::{parse_id, parse_peer};
use credence_fuzz::{network_id, round_trip};
use credence_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;

/// An id field: when it parses, its hex form parses to the same id.
fn id_field(text: &str) {
    if let Ok(id) = parse_id(text, "id") {
        assert_eq!(parse_id(&id.to_string(), "id").ok(), Some(id));
        assert_eq!(parse_hex32(text), Some(id.0));
    } else {
        assert_eq!(parse_hex32(text), None);
    }
}

/// A submitted envelope, as `NodeHandle::submit` checks it for `kind`.
fn submission(message: &[u8], kind: Kind) {
    let Some(request) = round_trip::<pb::SubmitRequest>(message) else {
        return;
    };
    let Ok(unverified) = envelope::decode_cached(
        &network_id(),
        &request.envelope,
        ENVELOPE_MAX_BYTES,
        &mut KeyCache::default(),
    ) else {
        return;
    };
    if unverified.kind == kind {
        let _ = unverified.verify();
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, message)) = data.split_first() else {
        return;
    };
    match selector % 15 {
        0 => drop(round_trip::<pb::StatusRequest>(message)),
        1 => submission(message, Kind::Attestation),
        2 => submission(message, Kind::Revocation),
        3 => {
            if let Some(r) = round_trip::<pb::GetCredentialRequest>(message) {
                id_field(&r.id);
            }
        }
        4 => {
            if let Some(r) = round_trip::<pb::ListCredentialsRequest>(message) {
                id_field(&r.subject);
            }
        }
        5 => {
            if let Some(r) = round_trip::<pb::SetPeerBlockedRequest>(message)
                && let Some(peer) = parse_peer(&r.peer)
            {
                assert_eq!(parse_peer(&peer.to_string()), Some(peer));
            }
        }
        6 => drop(round_trip::<pb::ListDistributionsRequest>(message)),
        7 => submission(message, Kind::Distribution),
        8 => submission(message, Kind::Claim),
        9 => {
            if let Some(r) = round_trip::<pb::GetClaimRequest>(message) {
                id_field(&r.id);
            }
        }
        10 => {
            if let Some(r) = round_trip::<pb::GetLiquidityRequest>(message) {
                id_field(&r.distribution_id);
            }
        }
        11 => {
            if let Some(r) = round_trip::<pb::RouteRequest>(message) {
                id_field(&r.distribution_id);
                id_field(&r.claimant);
            }
        }
        12 => {
            if let Some(r) = round_trip::<pb::GetBalanceRequest>(message) {
                id_field(&r.account);
            }
        }
        13 => submission(message, Kind::Rebalance),
        _ => drop(round_trip::<pb::AuditRequest>(message)),
    }
});
