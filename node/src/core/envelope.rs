//! The signed envelope: digest, signature checks and size caps.
//!
//! `digest = blake3("credence/v1" || network_id || kind(u32 LE) || body)`; the
//! signature is over the digest and the object id is the digest. The body is
//! hashed exactly as received, so a re-encoded or extended body is a different
//! object and never verifies as the original.

use credence_proto::v1 as pb;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use prost::Message;

use super::limits::{ENVELOPE_MAX_BYTES, body_max_bytes};

/// Domain separator of every digest.
const DOMAIN: &[u8] = b"credence/v1";

/// blake3 of the genesis file's exact bytes: signatures do not cross networks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkId(pub [u8; 32]);

/// An object's id: its envelope digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ObjectId(pub [u8; 32]);

impl std::fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

impl std::fmt::Debug for NetworkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

impl ObjectId {
    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, EnvelopeError> {
        parse_hex32(text).map(ObjectId).ok_or(EnvelopeError::BadId)
    }
}

impl NetworkId {
    /// The id of the network whose genesis file has exactly these bytes.
    pub fn of_genesis(genesis_bytes: &[u8]) -> Self {
        NetworkId(*blake3::hash(genesis_bytes).as_bytes())
    }

    /// First 8 hex characters, used in topic names.
    pub fn short_hex(&self) -> String {
        let mut s = hex::encode(self.0);
        s.truncate(8);
        s
    }
}

/// Parses 64 hex characters into 32 bytes.
pub fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

/// The kinds of signed objects; the discriminants are the wire values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Attestation,
    Revocation,
    IssuerGrant,
    Distribution,
    Claim,
    Batch,
    Vote,
    Freeze,
    Heartbeat,
    Evidence,
    Rebalance,
}

impl Kind {
    /// The kind for a wire value, if it is one.
    pub fn from_wire(value: i32) -> Option<Kind> {
        match pb::Kind::try_from(value).ok()? {
            pb::Kind::Unspecified => None,
            pb::Kind::Attestation => Some(Kind::Attestation),
            pb::Kind::Revocation => Some(Kind::Revocation),
            pb::Kind::IssuerGrant => Some(Kind::IssuerGrant),
            pb::Kind::Distribution => Some(Kind::Distribution),
            pb::Kind::Claim => Some(Kind::Claim),
            pb::Kind::Batch => Some(Kind::Batch),
            pb::Kind::Vote => Some(Kind::Vote),
            pb::Kind::Freeze => Some(Kind::Freeze),
            pb::Kind::Heartbeat => Some(Kind::Heartbeat),
            pb::Kind::Evidence => Some(Kind::Evidence),
            pb::Kind::Rebalance => Some(Kind::Rebalance),
        }
    }

    /// The wire value.
    pub fn to_wire(self) -> pb::Kind {
        match self {
            Kind::Attestation => pb::Kind::Attestation,
            Kind::Revocation => pb::Kind::Revocation,
            Kind::IssuerGrant => pb::Kind::IssuerGrant,
            Kind::Distribution => pb::Kind::Distribution,
            Kind::Claim => pb::Kind::Claim,
            Kind::Batch => pb::Kind::Batch,
            Kind::Vote => pb::Kind::Vote,
            Kind::Freeze => pb::Kind::Freeze,
            Kind::Heartbeat => pb::Kind::Heartbeat,
            Kind::Evidence => pb::Kind::Evidence,
            Kind::Rebalance => pb::Kind::Rebalance,
        }
    }

    /// Lower-case name for logs, metrics and errors.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Attestation => "attestation",
            Kind::Revocation => "revocation",
            Kind::IssuerGrant => "issuer_grant",
            Kind::Distribution => "distribution",
            Kind::Claim => "claim",
            Kind::Batch => "batch",
            Kind::Vote => "vote",
            Kind::Freeze => "freeze",
            Kind::Heartbeat => "heartbeat",
            Kind::Evidence => "evidence",
            Kind::Rebalance => "rebalance",
        }
    }
}

/// Why an envelope was refused. Every variant is the sender's fault: a peer
/// that sends one is penalised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is {size} bytes, over the {max}-byte cap")]
    TooLarge { size: usize, max: usize },
    #[error("envelope is not a valid protobuf `Signed` message: {0}")]
    Malformed(String),
    #[error("unknown object kind {0}")]
    UnknownKind(i32),
    #[error("{kind} body is {size} bytes, over the {max}-byte cap")]
    BodyTooLarge {
        kind: &'static str,
        size: usize,
        max: usize,
    },
    #[error("signer must be a 32-byte ed25519 public key, got {0} bytes")]
    BadSignerLength(usize),
    #[error("signer is not a valid ed25519 public key")]
    BadSignerKey,
    #[error("signature must be 64 bytes, got {0}")]
    BadSignatureLength(usize),
    #[error("signature does not verify (forged, corrupted, or signed for another network)")]
    BadSignature,
    #[error("object id must be 64 hex characters")]
    BadId,
}

/// An envelope whose sizes and shape have been checked but whose signature has
/// not (yet) been verified.
#[derive(Clone, Debug)]
pub struct Unverified {
    pub kind: Kind,
    pub body: Vec<u8>,
    pub signer: VerifyingKey,
    /// The signer key has small order; such envelopes skip batch verification.
    pub signer_weak: bool,
    pub signature: Signature,
    pub id: ObjectId,
    /// The envelope's bytes as received, kept for relaying and storage.
    pub raw: Vec<u8>,
}

/// An envelope whose signature verified under this network's id.
#[derive(Clone, Debug)]
pub struct Verified {
    pub kind: Kind,
    pub body: Vec<u8>,
    pub signer: [u8; 32],
    pub id: ObjectId,
    pub raw: Vec<u8>,
}

/// The digest that is signed and that names the object.
pub fn digest(network: &NetworkId, kind: Kind, body: &[u8]) -> ObjectId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(DOMAIN);
    hasher.update(&network.0);
    // The discriminant is a small non-negative protobuf enum value.
    let wire = u32::try_from(kind.to_wire() as i32).unwrap_or(0);
    hasher.update(&wire.to_le_bytes());
    hasher.update(body);
    ObjectId(*hasher.finalize().as_bytes())
}

/// Most keys remembered by a [`KeyCache`] before it starts over.
pub const KEY_CACHE_MAX: usize = 4096;

/// Decompressed, non-weak public keys by their bytes. Decompressing a key
/// costs about as much as a third of a signature check, and the signers of a
/// network are few (issuers, validators), so the gossip pipeline keeps one.
#[derive(Debug, Default)]
pub struct KeyCache {
    keys: std::collections::HashMap<[u8; 32], VerifyingKey>,
}

impl KeyCache {
    /// The key for these bytes, decompressed once. Weak keys are returned
    /// but never cached, so they always take the strict path.
    /// Returns the key and whether it is weak (small order).
    pub fn get(&mut self, bytes: &[u8; 32]) -> Result<(VerifyingKey, bool), EnvelopeError> {
        if let Some(key) = self.keys.get(bytes) {
            return Ok((*key, false));
        }
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| EnvelopeError::BadSignerKey)?;
        let weak = key.is_weak();
        if !weak {
            if self.keys.len() >= KEY_CACHE_MAX {
                self.keys.clear();
            }
            self.keys.insert(*bytes, key);
        }
        Ok((key, weak))
    }
}

/// Decodes and checks an envelope's sizes and shape, cheapest checks first:
/// whole size, protobuf shape, kind, body size, key and signature encodings.
pub fn decode(network: &NetworkId, raw: &[u8]) -> Result<Unverified, EnvelopeError> {
    decode_capped(network, raw, ENVELOPE_MAX_BYTES)
}

/// As [`decode`], with a tighter cap on the whole envelope (gossip uses one).
pub fn decode_capped(network: &NetworkId, raw: &[u8], max: usize) -> Result<Unverified, EnvelopeError> {
    decode_cached(network, raw, max, &mut KeyCache::default())
}

/// An envelope's fields after the shape checks, before its signer key is
/// decompressed or its signature checked.
struct Parsed {
    kind: Kind,
    body: Vec<u8>,
    signer: [u8; 32],
    signature: [u8; 64],
    id: ObjectId,
}

/// Size, protobuf shape, kind, body size and the key and signature lengths.
fn parse(network: &NetworkId, raw: &[u8], max: usize) -> Result<Parsed, EnvelopeError> {
    if raw.len() > max {
        return Err(EnvelopeError::TooLarge { size: raw.len(), max });
    }
    let signed = pb::Signed::decode(raw).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    let kind = Kind::from_wire(signed.kind).ok_or(EnvelopeError::UnknownKind(signed.kind))?;
    let body_max = body_max_bytes(kind);
    if signed.body.len() > body_max {
        return Err(EnvelopeError::BodyTooLarge {
            kind: kind.name(),
            size: signed.body.len(),
            max: body_max,
        });
    }
    let signer: [u8; 32] = signed
        .signer
        .as_slice()
        .try_into()
        .map_err(|_| EnvelopeError::BadSignerLength(signed.signer.len()))?;
    let signature: [u8; 64] = signed
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| EnvelopeError::BadSignatureLength(signed.signature.len()))?;
    let id = digest(network, kind, &signed.body);
    Ok(Parsed {
        kind,
        body: signed.body,
        signer,
        signature,
        id,
    })
}

/// The id of an encoded envelope, from its shape alone (no signature check):
/// for recognising an object already held. `None` when it does not decode.
pub fn object_id(network: &NetworkId, raw: &[u8]) -> Option<ObjectId> {
    parse(network, raw, ENVELOPE_MAX_BYTES).ok().map(|p| p.id)
}

/// As [`decode_capped`], taking signer keys from `cache`.
pub fn decode_cached(
    network: &NetworkId,
    raw: &[u8],
    max: usize,
    cache: &mut KeyCache,
) -> Result<Unverified, EnvelopeError> {
    let p = parse(network, raw, max)?;
    let (signer, signer_weak) = cache.get(&p.signer)?;
    Ok(Unverified {
        kind: p.kind,
        body: p.body,
        signer,
        signer_weak,
        signature: Signature::from_bytes(&p.signature),
        id: p.id,
        raw: raw.to_vec(),
    })
}

/// Why the signature of an envelope decoded by [`decode_vouched`] need not
/// be checked again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Voucher {
    /// These exact bytes verified on this node before ([`KnownSignatures`]).
    Known,
    /// The envelope sits inside an object whose certificate the caller checks
    /// before using it: voters holding more than the threshold of the region's
    /// weight each verified it before voting, so an honest one did.
    Certified,
}

/// Decodes an envelope with all the shape checks of [`decode`] but without
/// decompressing its signer key or checking its signature, which `voucher`
/// stands for. What is decoded this way is never remembered as verified.
pub fn decode_vouched(network: &NetworkId, raw: &[u8], voucher: Voucher) -> Result<Verified, EnvelopeError> {
    let _ = voucher;
    let p = parse(network, raw, ENVELOPE_MAX_BYTES)?;
    Ok(Verified {
        kind: p.kind,
        body: p.body,
        signer: p.signer,
        id: p.id,
        raw: raw.to_vec(),
    })
}

/// Checks one signature over an envelope digest. Everything the validator
/// state machine verifies goes through this trait (by way of
/// [`KnownSignatures`]): the node checks ed25519 ([`Ed25519`]); the
/// simulator may install a cheap deterministic stand-in, so that a run of
/// a thousand validators spends its time on the protocol, not on curve
/// arithmetic.
pub trait SignatureCheck: Send + Sync {
    /// Whether `signature` is `signer`'s over `digest`.
    fn check(&self, signer: &VerifyingKey, digest: &[u8; 32], signature: &Signature) -> bool;

    /// Whether envelopes that verified are worth remembering by fingerprint
    /// ([`KnownSignatures`]): not for a check cheaper than the lookup.
    fn worth_remembering(&self) -> bool {
        true
    }
}

/// Ed25519 with `verify_strict` (rejects malleable and small-order
/// encodings).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ed25519;

impl SignatureCheck for Ed25519 {
    fn check(&self, signer: &VerifyingKey, digest: &[u8; 32], signature: &Signature) -> bool {
        signer.verify_strict(digest, signature).is_ok()
    }
}

impl Unverified {
    /// Verifies the signature with ed25519's `verify_strict`.
    pub fn verify(self) -> Result<Verified, EnvelopeError> {
        self.verify_with(&Ed25519)
    }

    /// Verifies the signature with `check`.
    pub fn verify_with(self, check: &dyn SignatureCheck) -> Result<Verified, EnvelopeError> {
        if !check.check(&self.signer, &self.id.0, &self.signature) {
            return Err(EnvelopeError::BadSignature);
        }
        Ok(self.into_verified())
    }

    fn into_verified(self) -> Verified {
        Verified {
            kind: self.kind,
            body: self.body,
            signer: self.signer.to_bytes(),
            id: self.id,
            raw: self.raw,
        }
    }
}

/// Fingerprints (blake3 of the exact bytes) of envelopes whose signature
/// verified here. The same bytes verify the same way, so an envelope met
/// again — a claim gossiped, then inside a vote request, then inside its
/// certificate — is checked once; a variant with any other byte (a forged
/// signature) has another fingerprint and is verified as usual. Bounded: the
/// oldest are forgotten first. It also holds the [`SignatureCheck`] that
/// envelopes not known yet are verified with.
pub struct KnownSignatures {
    set: std::collections::HashSet<[u8; 32]>,
    order: std::collections::VecDeque<[u8; 32]>,
    capacity: usize,
    /// Decompressed signer keys (validators sign every vote and batch).
    keys: KeyCache,
    check: std::sync::Arc<dyn SignatureCheck>,
}

impl Default for KnownSignatures {
    fn default() -> Self {
        KnownSignatures {
            set: Default::default(),
            order: Default::default(),
            capacity: 0,
            keys: KeyCache::default(),
            check: std::sync::Arc::new(Ed25519),
        }
    }
}

impl std::fmt::Debug for KnownSignatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownSignatures")
            .field("known", &self.set.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl KnownSignatures {
    /// Remembers at most `capacity` envelopes (0: none).
    pub fn new(capacity: usize) -> Self {
        KnownSignatures {
            capacity,
            ..Default::default()
        }
    }

    /// Remembers at most `capacity` envelopes (none when `check` is not
    /// worth it) and verifies new ones with `check`.
    pub fn with_check(capacity: usize, check: std::sync::Arc<dyn SignatureCheck>) -> Self {
        KnownSignatures {
            capacity: if check.worth_remembering() { capacity } else { 0 },
            check,
            ..Default::default()
        }
    }

    /// Verifies an envelope with this cache's check (not remembered).
    pub fn verify(&self, unverified: Unverified) -> Result<Verified, EnvelopeError> {
        unverified.verify_with(self.check.as_ref())
    }

    /// Remembers an envelope that verified.
    pub fn remember(&mut self, verified: &Verified) {
        self.insert(Self::fingerprint(&verified.raw));
    }

    /// Remembers an envelope this node sealed itself: its signature is good
    /// by construction, so meeting it again (a voter's own vote inside the
    /// certificate it helped form) costs no check.
    pub fn remember_sealed(&mut self, raw: &[u8]) {
        self.insert(Self::fingerprint(raw));
    }

    /// Whether these exact bytes verified here.
    pub fn knows(&self, raw: &[u8]) -> bool {
        self.capacity > 0 && self.set.contains(&Self::fingerprint(raw))
    }

    fn fingerprint(raw: &[u8]) -> [u8; 32] {
        *blake3::hash(raw).as_bytes()
    }

    fn insert(&mut self, fingerprint: [u8; 32]) {
        if self.capacity == 0 || !self.set.insert(fingerprint) {
            return;
        }
        self.order.push_back(fingerprint);
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
    }
}

/// Verifies many envelopes at once. One batch verification covers the common
/// case where all are good; if it fails, each is checked alone so one forgery
/// cannot sink its honest neighbours. Weak (small-order) keys are refused up
/// front so that the batch path never accepts what `verify_strict` refuses
/// for that reason.
pub fn verify_batch(items: Vec<Unverified>) -> Vec<Result<Verified, EnvelopeError>> {
    if items.len() < 2 || items.iter().any(|u| u.signer_weak) {
        return items.into_iter().map(Unverified::verify).collect();
    }
    let messages: Vec<&[u8]> = items.iter().map(|u| u.id.0.as_slice()).collect();
    let signatures: Vec<Signature> = items.iter().map(|u| u.signature).collect();
    let keys: Vec<VerifyingKey> = items.iter().map(|u| u.signer).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
        items.into_iter().map(|u| Ok(u.into_verified())).collect()
    } else {
        items.into_iter().map(Unverified::verify).collect()
    }
}

/// Decodes and verifies an envelope, or only decodes it when these exact
/// bytes verified here before: a known envelope costs no key decompression
/// and no signature check.
pub fn verify_known(network: &NetworkId, raw: &[u8], known: &mut KnownSignatures) -> Result<Verified, EnvelopeError> {
    if known.knows(raw) {
        return decode_vouched(network, raw, Voucher::Known);
    }
    let unverified = decode_cached(network, raw, ENVELOPE_MAX_BYTES, &mut known.keys)?;
    let verified = unverified.verify_with(known.check.as_ref())?;
    known.remember(&verified);
    Ok(verified)
}

/// Signs a body and returns the encoded envelope and its id.
pub fn seal(network: &NetworkId, key: &SigningKey, kind: Kind, body: Vec<u8>) -> (Vec<u8>, ObjectId) {
    seal_with(network, key, kind, body)
}

/// [`seal`] through any [`Signer`](crate::core::validator::Signer).
pub fn seal_with(
    network: &NetworkId,
    signer: &(impl crate::core::validator::Signer + ?Sized),
    kind: Kind,
    body: Vec<u8>,
) -> (Vec<u8>, ObjectId) {
    let id = digest(network, kind, &body);
    let signature = signer.sign(&id.0);
    let signed = pb::Signed {
        kind: kind.to_wire() as i32,
        body,
        signer: signer.public_key().to_vec(),
        signature: signature.to_vec(),
    };
    (signed.encode_to_vec(), id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn net(seed: u8) -> NetworkId {
        NetworkId([seed; 32])
    }

    fn sample(network: &NetworkId) -> (Vec<u8>, ObjectId) {
        let body = pb::Attestation {
            issuer: key(1).verifying_key().to_bytes().to_vec(),
            subject: vec![7; 32],
            schema: "demo".into(),
            data: b"hello".to_vec(),
            issued_at: 1,
            expires_at: 0,
            nonce: 9,
        }
        .encode_to_vec();
        seal(network, &key(1), Kind::Attestation, body)
    }

    #[test]
    fn a_sealed_envelope_verifies_with_its_id() {
        let (raw, id) = sample(&net(0));
        let verified = decode(&net(0), &raw).and_then(Unverified::verify);
        assert_eq!(verified.map(|v| v.id), Ok(id));
    }

    #[test]
    fn flipping_any_byte_never_verifies_as_the_original() {
        let (raw, id) = sample(&net(0));
        for i in 0..raw.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = raw.clone();
                if let Some(b) = bad.get_mut(i) {
                    *b ^= bit;
                }
                if let Ok(v) = decode(&net(0), &bad).and_then(Unverified::verify) {
                    // A flip inside protobuf framing can still parse to the same
                    // fields only if the signed digest is unchanged.
                    assert_eq!(v.id, id, "byte {i} flipped yet verified as another object");
                    assert_eq!(v.body, decode(&net(0), &raw).map(|u| u.body).unwrap_or_default());
                }
            }
        }
    }

    #[test]
    fn another_network_rejects_the_signature() {
        let (raw, _) = sample(&net(0));
        let result = decode(&net(1), &raw).and_then(Unverified::verify);
        assert_eq!(result.map(|v| v.id), Err(EnvelopeError::BadSignature));
    }

    #[test]
    fn a_re_encoded_body_with_an_unknown_field_is_another_object() {
        let (raw, id) = sample(&net(0));
        let mut signed = pb::Signed::decode(raw.as_slice()).unwrap_or_default();
        // Append an unknown field (number 99, varint 1): prost skips it when
        // decoding, but the digest covers the bytes, so the signature fails.
        signed.body.extend_from_slice(&[0x98, 0x06, 0x01]);
        let tampered = signed.encode_to_vec();
        let result = decode(&net(0), &tampered).and_then(Unverified::verify);
        assert_eq!(result.map(|v| v.id), Err(EnvelopeError::BadSignature));
        let decoded = decode(&net(0), &tampered).map(|u| u.id);
        assert_ne!(decoded, Ok(id));
    }

    #[test]
    fn oversized_envelopes_are_refused_before_decoding() {
        let raw = vec![0xffu8; ENVELOPE_MAX_BYTES + 1];
        assert!(matches!(decode(&net(0), &raw), Err(EnvelopeError::TooLarge { .. })));
        let (small, _) = sample(&net(0));
        assert!(matches!(
            decode_capped(&net(0), &small, 10),
            Err(EnvelopeError::TooLarge { .. })
        ));
    }

    #[test]
    fn oversized_bodies_are_refused_per_kind() {
        let body = vec![0u8; body_max_bytes(Kind::Revocation) + 1];
        let (raw, _) = seal(&net(0), &key(1), Kind::Revocation, body);
        assert!(matches!(decode(&net(0), &raw), Err(EnvelopeError::BodyTooLarge { .. })));
    }

    #[test]
    fn batch_verification_isolates_a_forgery() {
        let network = net(0);
        let mut items: Vec<Unverified> = (0..8u8)
            .map(|i| {
                let (raw, _) = seal(&network, &key(i + 1), Kind::Revocation, vec![i]);
                decode(&network, &raw)
            })
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        if let Some(forged) = items.get_mut(3) {
            forged.signature = Signature::from_bytes(&[1u8; 64]);
        }
        let results = verify_batch(items);
        assert_eq!(results.len(), 8);
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.is_ok(), i != 3, "item {i}");
        }
    }
}
