//! What the fuzz targets share: one deterministic local network (the same
//! one `examples/gen_corpus.rs` signs the seed corpora with, so seeds
//! carry signatures that verify here), fresh node state built on it, and
//! envelopes taken as verified so the fuzzer reaches the code behind the
//! signature check.

use std::sync::OnceLock;

use credence::config::{LocalNetwork, local_network};
use credence::core::Millis;
use credence::core::credentials::{CredentialBook, CredentialRules};
use credence::core::envelope::{self, Kind, NetworkId, Verified};
use credence::core::validator::Validator;
use credence_proto::v1 as pb;
use prost::Message;

/// Regions of the fuzzing network.
pub const REGIONS: [&str; 2] = ["eu", "us"];
/// Validators per region.
pub const PER_REGION: usize = 2;
/// Seed of its keys.
pub const SEED: u64 = 0xf022;
/// The protocol clock handed to the node state (inside the demo
/// distribution's window).
pub const NOW: Millis = 1_000_000;

/// The fuzzing network, built once per process.
pub fn network() -> &'static LocalNetwork {
    static NET: OnceLock<LocalNetwork> = OnceLock::new();
    NET.get_or_init(|| match local_network(&REGIONS, PER_REGION, SEED, 1_000_000, 10) {
        Ok(net) => net,
        Err(e) => panic!("the fuzzing network does not build: {e}"),
    })
}

/// Its network id.
pub fn network_id() -> NetworkId {
    network().genesis.network_id
}

/// A credential book as a node of the network starts with (genesis grants).
pub fn book() -> CredentialBook {
    let genesis = &network().genesis;
    CredentialBook::new(
        CredentialRules {
            max_clock_skew_ms: genesis.genesis.params.max_clock_skew_ms,
            operators: genesis.operators.clone(),
        },
        genesis.issuer_grants.iter().cloned(),
    )
}

/// The validator state machine of the network's first validator, fresh.
pub fn validator() -> Validator {
    let net = network();
    let key = match net.validators.first() {
        Some(key) => key.clone(),
        None => panic!("the fuzzing network has no validator"),
    };
    match Validator::new(&net.genesis.setup(), Box::new(key), &[]) {
        Ok(validator) => validator,
        Err(e) => panic!("the fuzzing validator does not build: {e}"),
    }
}

/// An object of `kind` with `body`, signed (as far as the code behind the
/// signature check can tell) by `signer`: what a node holds after an envelope
/// verified. The fuzzer cannot forge signatures, so this is how it reaches
/// the body decoders.
pub fn verified(kind: Kind, body: &[u8], signer: [u8; 32]) -> Verified {
    let id = envelope::digest(&network_id(), kind, body);
    let raw = pb::Signed {
        kind: kind.to_wire() as i32,
        body: body.to_vec(),
        signer: signer.to_vec(),
        signature: vec![0; 64],
    }
    .encode_to_vec();
    Verified {
        kind,
        body: body.to_vec(),
        signer,
        id,
        raw,
    }
}

/// A 32-byte key from the start of `bytes`, zeros when it is shorter.
pub fn key_of(bytes: &[u8]) -> [u8; 32] {
    let mut key = [0u8; 32];
    if let Some(prefix) = bytes.get(..32) {
        key.copy_from_slice(prefix);
    }
    key
}

/// Every kind, indexed by a fuzz input's selector byte.
pub const KINDS: [Kind; 11] = [
    Kind::Attestation,
    Kind::Revocation,
    Kind::IssuerGrant,
    Kind::Distribution,
    Kind::Claim,
    Kind::Batch,
    Kind::Vote,
    Kind::Freeze,
    Kind::Heartbeat,
    Kind::Evidence,
    Kind::Rebalance,
];

/// The kind a selector byte picks.
pub fn kind_of(selector: u8) -> Kind {
    KINDS[usize::from(selector) % KINDS.len()]
}

/// The selector byte of a kind (the inverse of [`kind_of`]).
pub fn selector_of(kind: Kind) -> u8 {
    KINDS.iter().position(|k| *k == kind).unwrap_or(0) as u8
}

/// decode → encode → decode gives the same message (compared by its
/// encoding, so a NaN `double` compares equal to itself).
pub fn round_trip<M: Message + Default>(body: &[u8]) -> Option<M> {
    let first = M::decode(body).ok()?;
    let encoded = first.encode_to_vec();
    match M::decode(encoded.as_slice()) {
        Ok(again) => assert_eq!(again.encode_to_vec(), encoded, "a re-encoded body decodes differently"),
        Err(e) => panic!("a re-encoded body does not decode: {e}"),
    }
    Some(first)
}
