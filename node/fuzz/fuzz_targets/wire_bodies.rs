//! Every signed body behind a verified envelope, through `core::wire` (claim,
//! distribution, rebalance, vote, batch with its nested claims, freeze with
//! its pending batch) and the prost types of `wire.proto`.
//!
//! Input: a selector byte (the kind), then the body. The signer is taken from
//! the body's own signer field, so the checks past `SignerMismatch` are
//! reached.
//!
//! Holds: no panic; every body decodes → encodes → decodes to the same
//! message; a batch rebuilt from what `wire::batch` returned (the same claim
//! envelopes) reads back as the same batch.
#![no_main]

use credence::core::envelope::{Kind, KnownSignatures};
use credence::core::wire;
use credence_fuzz::{key_of, kind_of, network_id, round_trip, verified};
use credence_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    let network = network_id();
    let mut known = KnownSignatures::new(64);
    match kind_of(*selector) {
        Kind::Claim => {
            let signer = round_trip::<pb::Claim>(body)
                .map(|b| key_of(&b.claimant))
                .unwrap_or_default();
            if let Ok(claim) = wire::claim(&verified(Kind::Claim, body, signer)) {
                assert_eq!(claim.signer, signer);
            }
        }
        Kind::Distribution => {
            let signer = round_trip::<pb::Distribution>(body)
                .map(|b| key_of(&b.operator))
                .unwrap_or_default();
            if let Ok(d) = wire::distribution(&verified(Kind::Distribution, body, signer)) {
                assert_eq!(d.operator, signer);
                assert!(d.closes_at > 0);
            }
        }
        Kind::Rebalance => {
            let signer = round_trip::<pb::Rebalance>(body)
                .map(|b| key_of(&b.operator))
                .unwrap_or_default();
            let _ = wire::rebalance(&verified(Kind::Rebalance, body, signer));
        }
        Kind::Vote => {
            let signer = round_trip::<pb::Vote>(body)
                .map(|b| key_of(&b.voter))
                .unwrap_or_default();
            let _ = wire::vote(&verified(Kind::Vote, body, signer));
        }
        Kind::Batch => {
            let signer = round_trip::<pb::Batch>(body)
                .and_then(|b| b.bucket)
                .map(|b| key_of(&b.owner))
                .unwrap_or_default();
            if let Ok((batch, claims)) = wire::batch(&network, &verified(Kind::Batch, body, signer), &mut known) {
                let envelope_of = |id: &[u8; 32]| claims.iter().find(|c| &c.id.0 == id).map(|c| c.raw.clone());
                let Some(rebuilt) = wire::batch_body(&batch, envelope_of) else {
                    panic!("a decoded batch's claims are not among those it returned");
                };
                let rebuilt = rebuilt.encode_to_vec();
                match wire::batch(&network, &verified(Kind::Batch, &rebuilt, signer), &mut known) {
                    Ok((again, _)) => assert_eq!(again, batch, "a batch rebuilt from its parts reads differently"),
                    Err(e) => panic!("a batch rebuilt from its parts is refused: {e}"),
                }
            }
        }
        Kind::Freeze => {
            let signer = round_trip::<pb::Freeze>(body)
                .map(|b| key_of(&b.proposer))
                .unwrap_or_default();
            let _ = wire::freeze(&network, &verified(Kind::Freeze, body, signer), &mut known);
        }
        Kind::Heartbeat => {
            let _ = round_trip::<pb::Heartbeat>(body);
        }
        Kind::Evidence => {
            let _ = round_trip::<pb::Evidence>(body);
        }
        Kind::Attestation => {
            let _ = round_trip::<pb::Attestation>(body);
        }
        Kind::Revocation => {
            let _ = round_trip::<pb::Revocation>(body);
        }
        Kind::IssuerGrant => {
            let _ = round_trip::<pb::IssuerGrant>(body);
        }
    }
    // Certificates, sync and vote messages are bodies of `wire.proto` too.
    let _ = round_trip::<pb::Certificate>(body);
    let _ = round_trip::<pb::Signed>(body);
});
