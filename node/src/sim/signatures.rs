//! Signatures in the simulator: real ed25519 by default, or a cheap
//! deterministic stand-in through the same [`Signer`] and
//! [`SignatureCheck`] traits the node uses.
//!
//! The stand-in keeps the one property the protocol relies on — only the
//! holder of a key can produce a signature that checks under it — without
//! curve arithmetic: a key signs with a keyed hash of the digest and records
//! the triple (public key, digest, signature) in a registry shared by the
//! world; a check is a registry lookup. Whatever a Byzantine node forges,
//! replays under another key or alters by one bit is absent from the
//! registry and fails, exactly as under ed25519. The registry grows with
//! every signature made in a run (32 bytes each), which is what a bounded
//! run can afford; it is never used outside the simulator.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use crate::core::envelope::{Ed25519, SignatureCheck};
use crate::core::escrow::Key;
use crate::core::validator::Signer;

/// Which signatures a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Signatures {
    /// Real ed25519, as the node signs and checks.
    #[default]
    Ed25519,
    /// The registry stand-in: same verdicts, a hash instead of a curve.
    StandIn,
}

impl Signatures {
    pub fn parse(text: &str) -> Result<Signatures, String> {
        match text {
            "ed25519" => Ok(Signatures::Ed25519),
            "stand-in" => Ok(Signatures::StandIn),
            other => Err(format!("unknown signature scheme {other:?}: ed25519 or stand-in")),
        }
    }
}

/// The stand-in's registry of every signature made in a run.
#[derive(Debug, Default)]
pub struct Registry {
    made: Mutex<HashSet<[u8; 32]>>,
}

impl Registry {
    fn entry(public: &[u8; 32], digest: &[u8; 32], signature: &[u8; 64]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(public);
        h.update(digest);
        h.update(signature);
        *h.finalize().as_bytes()
    }

    fn record(&self, entry: [u8; 32]) {
        self.made.lock().unwrap_or_else(PoisonError::into_inner).insert(entry);
    }

    fn holds(&self, entry: &[u8; 32]) -> bool {
        self.made.lock().unwrap_or_else(PoisonError::into_inner).contains(entry)
    }
}

impl SignatureCheck for Registry {
    fn check(&self, signer: &VerifyingKey, digest: &[u8; 32], signature: &Signature) -> bool {
        self.holds(&Self::entry(signer.as_bytes(), digest, &signature.to_bytes()))
    }

    /// A lookup is all a check costs: a second cache of fingerprints per
    /// validator would only take memory (at 1,000 validators, gigabytes).
    fn worth_remembering(&self) -> bool {
        false
    }
}

/// The signing side of a run: makes keys and says how they are checked.
#[derive(Clone)]
pub struct Scheme {
    registry: Option<Arc<Registry>>,
}

impl std::fmt::Debug for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.registry.is_some() { "stand-in" } else { "ed25519" })
    }
}

impl Scheme {
    pub fn new(signatures: Signatures) -> Scheme {
        Scheme {
            registry: (signatures == Signatures::StandIn).then(Arc::default),
        }
    }

    /// A key of this scheme over an ed25519 key pair (whose public half
    /// is the identity either way).
    pub fn key(&self, key: SigningKey) -> SimKey {
        SimKey {
            public: key.verifying_key().to_bytes(),
            key,
            registry: self.registry.clone(),
        }
    }

    /// What envelopes are verified with.
    pub fn check(&self) -> Arc<dyn SignatureCheck> {
        match &self.registry {
            Some(registry) => registry.clone(),
            None => Arc::new(Ed25519),
        }
    }
}

/// A key that signs under the run's scheme.
#[derive(Clone)]
pub struct SimKey {
    key: SigningKey,
    public: Key,
    registry: Option<Arc<Registry>>,
}

impl std::fmt::Debug for SimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimKey({})", hex::encode(&self.public[..4]))
    }
}

impl Signer for SimKey {
    fn public_key(&self) -> Key {
        self.public
    }

    fn sign(&self, message: &[u8; 32]) -> [u8; 64] {
        let Some(registry) = &self.registry else {
            return Signer::sign(&self.key, message);
        };
        let mut signature = [0u8; 64];
        let mut xof = blake3::Hasher::new_keyed(&self.key.to_bytes());
        xof.update(message);
        xof.finalize_xof().fill(&mut signature);
        registry.record(Registry::entry(&self.public, message, &signature));
        signature
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::envelope::{self, Kind, NetworkId, seal_with};

    #[test]
    fn the_stand_in_refuses_what_ed25519_refuses() {
        let network = NetworkId([3; 32]);
        for signatures in [Signatures::Ed25519, Signatures::StandIn] {
            let scheme = Scheme::new(signatures);
            let alice = scheme.key(SigningKey::from_bytes(&[1; 32]));
            let mallory = scheme.key(SigningKey::from_bytes(&[2; 32]));
            let check = scheme.check();
            let (raw, _) = seal_with(&network, &alice, Kind::Attestation, b"body".to_vec());
            let good = envelope::decode(&network, &raw).expect("decodes");
            assert!(
                good.verify_with(check.as_ref()).is_ok(),
                "{signatures:?}: a real signature"
            );
            // One bit of the signature flipped.
            let mut bad = raw.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            let bad = envelope::decode(&network, &bad).expect("decodes");
            assert!(
                bad.verify_with(check.as_ref()).is_err(),
                "{signatures:?}: an altered signature"
            );
            // Mallory's signature over the same body, presented as Alice's.
            let (forged, _) = seal_with(&network, &mallory, Kind::Attestation, b"body".to_vec());
            let mut signed =
                <credence_proto::v1::Signed as prost::Message>::decode(forged.as_slice()).expect("decodes");
            signed.signer = alice.public_key().to_vec();
            let forged = prost::Message::encode_to_vec(&signed);
            let forged = envelope::decode(&network, &forged).expect("decodes");
            assert!(
                forged.verify_with(check.as_ref()).is_err(),
                "{signatures:?}: another key's signature"
            );
        }
    }
}
