//! Verified objects applied to a node's state, as the actor applies gossip,
//! sync pages and RPC submissions: attestations, revocations and grants to
//! the credential book; distributions, rebalances, claims and heartbeats to
//! the validator state machine of a validator of the fuzzing network; then a
//! tick.
//!
//! Input: objects one after the other, each a selector byte (the kind), a
//! 2-byte little-endian length and the body. The signer is taken from the
//! body's own signer field, so the checks past the signer's are reached.
//!
//! Holds: no panic, whatever the objects and their order; an object applied
//! twice is not new the second time.
#![no_main]

use credence::core::credentials::Applied;
use credence::core::envelope::Kind;
use credence::core::validator::Input;
use credence_fuzz::{NOW, book, key_of, kind_of, network, validator, verified};
use credence_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Most objects taken from one input.
const OBJECTS_MAX: usize = 32;

/// The key that signs a body of this kind, from its own signer field.
fn signer_of(kind: Kind, body: &[u8]) -> [u8; 32] {
    let field = match kind {
        Kind::Attestation => pb::Attestation::decode(body).map(|b| b.issuer),
        Kind::Revocation => pb::Revocation::decode(body).map(|b| b.issuer),
        Kind::IssuerGrant => pb::IssuerGrant::decode(body).map(|b| b.operator),
        Kind::Distribution => pb::Distribution::decode(body).map(|b| b.operator),
        Kind::Rebalance => pb::Rebalance::decode(body).map(|b| b.operator),
        Kind::Claim => pb::Claim::decode(body).map(|b| b.claimant),
        Kind::Heartbeat => pb::Heartbeat::decode(body).map(|b| b.validator),
        Kind::Vote => pb::Vote::decode(body).map(|b| b.voter),
        Kind::Freeze => pb::Freeze::decode(body).map(|b| b.proposer),
        Kind::Batch => pb::Batch::decode(body).map(|b| b.bucket.map(|r| r.owner).unwrap_or_default()),
        Kind::Evidence => Ok(vec![]),
    };
    key_of(&field.unwrap_or_default())
}

fuzz_target!(|data: &[u8]| {
    let operators = &network().genesis.operators;
    let mut book = book();
    let mut validator = validator();
    let mut rest = data;
    let mut now = NOW;
    for _ in 0..OBJECTS_MAX {
        let Some((&selector, tail)) = rest.split_first() else {
            break;
        };
        let Some((len, tail)) = tail.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_le_bytes(*len)).min(tail.len());
        let (body, tail) = tail.split_at(len);
        rest = tail;
        let kind = kind_of(selector);
        let v = verified(kind, body, signer_of(kind, body));
        now = now.saturating_add(u64::from(selector));
        match kind {
            Kind::Attestation | Kind::Revocation | Kind::IssuerGrant => {
                if let Ok(Applied::New) = book.apply(now, &v) {
                    assert!(book.contains(&v.id));
                    assert!(matches!(book.apply(now, &v), Ok(Applied::Duplicate)));
                }
            }
            Kind::Distribution => {
                let _ = validator.add_distribution(&v, operators);
            }
            Kind::Rebalance => {
                let _ = validator.add_rebalance(&v, operators);
            }
            Kind::Claim => {
                let from_client = selector & 0x80 != 0;
                let _ = validator.step(now, &book, Input::Claim { claim: &v, from_client });
            }
            Kind::Heartbeat => {
                let heartbeat = Input::Heartbeat { heartbeat: &v };
                if validator.step(now, &book, heartbeat).is_ok_and(|out| out.news) {
                    let again = validator.step(now, &book, Input::Heartbeat { heartbeat: &v });
                    assert!(again.is_ok_and(|out| !out.news), "a heartbeat was news twice");
                }
            }
            Kind::Batch | Kind::Vote | Kind::Freeze | Kind::Evidence => {
                // These reach a node inside vote requests and certificates
                // (the `vote_request` and `certificate` targets).
            }
        }
    }
    let _ = validator.tick(now.saturating_add(1_000), &book);
});
