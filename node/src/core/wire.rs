//! Conversions between signed wire objects (`credence_proto::v1`) and the
//! escrow core's types.
//!
//! Every function takes envelopes whose own signature the caller verified and
//! verifies whatever is nested inside (claims inside a batch, votes inside a
//! certificate) with `verify_strict`, one by one: these signatures decide
//! certificates, so they take the strict path (batch verification may accept
//! what the strict check refuses, and nodes must agree). Envelopes whose exact
//! bytes verified here before are not checked again ([`KnownSignatures`]),
//! and the claims inside a certified batch are vouched for by the
//! certificate's votes (see [`certificate`]). Core ids of batches and freezes
//! are digests of their fields (`Batch::compute_id`), not envelope digests.

use credence_proto::v1 as pb;
use prost::Message;

use super::envelope::{self, EnvelopeError, Kind, KnownSignatures, NetworkId, Verified, Voucher};
use super::escrow::{
    Batch, BucketId, Certificate, CertifiedObject, Claim, Digest, Distribution, Entry, Equivocation, EvidenceError,
    Freeze, Key, Vote, digest_parts,
};

/// Why a wire object could not become a core object. The sender is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("expected an envelope of kind {expected}, got one of kind {got}")]
    WrongKind { expected: &'static str, got: &'static str },
    #[error("{kind} body does not decode: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error("{field} must be 32 bytes")]
    BadField { field: &'static str },
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("the envelope's signer is not the {0} named in the body")]
    SignerMismatch(&'static str),
    #[error("nested {what}: {error}")]
    Nested { what: &'static str, error: EnvelopeError },
    #[error("a batch holds at most {max} entries")]
    TooManyEntries { max: usize },
    #[error("not equivocation evidence: {0}")]
    Evidence(#[from] EvidenceError),
}

/// Most entries in one batch on the wire.
pub const BATCH_ENTRIES_MAX: usize = 1024;

fn key32(bytes: &[u8], field: &'static str) -> Result<[u8; 32], WireError> {
    bytes.try_into().map_err(|_| WireError::BadField { field })
}

fn expect_kind(v: &Verified, kind: Kind) -> Result<(), WireError> {
    if v.kind == kind {
        Ok(())
    } else {
        Err(WireError::WrongKind {
            expected: kind.name(),
            got: v.kind.name(),
        })
    }
}

fn malformed(kind: &'static str) -> impl Fn(prost::DecodeError) -> WireError {
    move |e| WireError::Malformed {
        kind,
        reason: e.to_string(),
    }
}

/// Decodes and strictly verifies a nested envelope (unless these exact bytes
/// verified before: see [`KnownSignatures`]).
pub fn verify_nested(
    network: &NetworkId,
    raw: &[u8],
    what: &'static str,
    known: &mut KnownSignatures,
) -> Result<Verified, WireError> {
    envelope::verify_known(network, raw, known).map_err(|error| WireError::Nested { what, error })
}

/// The id of a distribution listed in the genesis (index `i`).
pub fn genesis_distribution_id(network: &NetworkId, index: usize) -> Digest {
    digest_parts("genesis-distribution", &[&network.0, &(index as u64).to_le_bytes()])
}

/// On the wire and in the genesis, `closes_at = 0` means "never closes"; the
/// core works with the half-open window `[opens_at, closes_at)`.
pub fn closes_at(wire: u64) -> u64 {
    if wire == 0 { u64::MAX } else { wire }
}

/// The inverse of [`closes_at`]: what an API reports for the core's window
/// end (0 for a distribution that never closes).
pub fn closes_at_to_wire(core: u64) -> u64 {
    if core == u64::MAX { 0 } else { core }
}

/// A claim from its verified envelope.
pub fn claim(v: &Verified) -> Result<Claim, WireError> {
    expect_kind(v, Kind::Claim)?;
    let body = pb::Claim::decode(v.body.as_slice()).map_err(malformed("claim"))?;
    let claimant = key32(&body.claimant, "claimant")?;
    let recipient = if body.recipient.is_empty() {
        claimant
    } else {
        key32(&body.recipient, "recipient")?
    };
    Ok(Claim {
        id: v.id.0,
        signer: v.signer,
        distribution_id: key32(&body.distribution_id, "distribution_id")?,
        claimant,
        attestation_id: key32(&body.attestation_id, "attestation_id")?,
        amount: body.amount,
        recipient,
        created_at: body.created_at,
    })
}

/// An operator-signed distribution from its verified envelope (id = envelope id).
pub fn distribution(v: &Verified) -> Result<Distribution, WireError> {
    expect_kind(v, Kind::Distribution)?;
    let body = pb::Distribution::decode(v.body.as_slice()).map_err(malformed("distribution"))?;
    let operator = key32(&body.operator, "operator")?;
    if operator != v.signer {
        return Err(WireError::SignerMismatch("operator"));
    }
    let rule = body.rule.ok_or(WireError::Missing("rule"))?;
    Ok(Distribution {
        id: v.id.0,
        operator,
        asset: body.asset,
        total: body.total,
        schema: rule.schema,
        issuers: rule
            .issuers
            .iter()
            .map(|k| key32(k, "rule.issuers"))
            .collect::<Result<_, _>>()?,
        amount_per_claim: rule.amount_per_claim,
        opens_at: body.opens_at,
        closes_at: closes_at(body.closes_at),
        allocations: body.allocations.into_iter().map(|a| (a.region, a.amount)).collect(),
        max_outflow_per_window: body.max_outflow_per_window,
        outflow_window_ms: body.outflow_window_ms,
    })
}

/// An operator's rebalance request from its verified envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebalance {
    pub id: Digest,
    pub operator: Key,
    pub distribution_id: Digest,
    pub from_region: String,
    pub to_region: String,
    pub amount: u64,
}

/// A rebalance request from its verified envelope (the operator must be its signer).
pub fn rebalance(v: &Verified) -> Result<Rebalance, WireError> {
    expect_kind(v, Kind::Rebalance)?;
    let body = pb::Rebalance::decode(v.body.as_slice()).map_err(malformed("rebalance"))?;
    let operator = key32(&body.operator, "operator")?;
    if operator != v.signer {
        return Err(WireError::SignerMismatch("operator"));
    }
    Ok(Rebalance {
        id: v.id.0,
        operator,
        distribution_id: key32(&body.distribution_id, "distribution_id")?,
        from_region: body.from_region,
        to_region: body.to_region,
        amount: body.amount,
    })
}

fn bucket_ref(bucket: &BucketId) -> pb::BucketRef {
    pb::BucketRef {
        distribution_id: bucket.distribution.to_vec(),
        region: bucket.region.clone(),
        owner: bucket.owner.to_vec(),
    }
}

/// The body of equivocation evidence: the two conflicting batch envelopes,
/// exactly as their owner signed them.
pub fn evidence_body(first: &[u8], second: &[u8]) -> pb::Evidence {
    pb::Evidence {
        first: first.to_vec(),
        second: second.to_vec(),
    }
}

/// Equivocation evidence from its verified envelope: both batches are
/// verified (signatures, nested claims included) and must be two different
/// batches of one bucket's owner at one `(bucket, seq)`. Whoever relays it
/// needs no trust: the proof is in the owner's own signatures.
pub fn evidence(network: &NetworkId, v: &Verified, known: &mut KnownSignatures) -> Result<Equivocation, WireError> {
    expect_kind(v, Kind::Evidence)?;
    let body = pb::Evidence::decode(v.body.as_slice()).map_err(malformed("evidence"))?;
    let first = verify_nested(network, &body.first, "evidence batch", known)?;
    let second = verify_nested(network, &body.second, "evidence batch", known)?;
    let (first, _) = batch(network, &first, known)?;
    let (second, _) = batch(network, &second, known)?;
    Ok(Equivocation::check(first, second)?)
}

fn bucket_id(r: Option<pb::BucketRef>) -> Result<BucketId, WireError> {
    let r = r.ok_or(WireError::Missing("bucket"))?;
    Ok(BucketId {
        distribution: key32(&r.distribution_id, "bucket.distribution_id")?,
        region: r.region,
        owner: key32(&r.owner, "bucket.owner")?,
    })
}

/// The body of a batch envelope; claims travel as their claimants' envelopes.
/// `claim_envelope` returns the raw envelope of a claim id (the owner holds them).
pub fn batch_body(batch: &Batch, claim_envelope: impl Fn(&Digest) -> Option<Vec<u8>>) -> Option<pb::Batch> {
    let mut entries = Vec::with_capacity(batch.entries.len());
    for entry in &batch.entries {
        let e = match entry {
            Entry::Claim(c) => pb::batch_entry::Entry::Claim(claim_envelope(&c.id)?),
            Entry::TransferOut { to, amount } => pb::batch_entry::Entry::TransferOut(pb::TransferOut {
                to: Some(bucket_ref(to)),
                amount: *amount,
            }),
            Entry::Close => pb::batch_entry::Entry::Close(true),
        };
        entries.push(pb::BatchEntry { entry: Some(e) });
    }
    Some(pb::Batch {
        bucket: Some(bucket_ref(&batch.bucket)),
        seq: batch.seq,
        prev: batch.prev.to_vec(),
        timestamp: batch.timestamp,
        entries,
        total_after: batch.total_after,
    })
}

/// How the claims nested in a batch are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claims {
    /// Each claim's signature is verified (unless known): a batch to vote on.
    Verify,
    /// Decoded only: the batch arrived inside a certificate, whose votes the
    /// caller checks against the region's threshold before using anything.
    Certified,
}

/// A batch from its verified envelope, with its claims' verified envelopes.
pub fn batch(
    network: &NetworkId,
    v: &Verified,
    known: &mut KnownSignatures,
) -> Result<(Batch, Vec<Verified>), WireError> {
    batch_checked(network, v, known, Claims::Verify)
}

fn batch_checked(
    network: &NetworkId,
    v: &Verified,
    known: &mut KnownSignatures,
    check: Claims,
) -> Result<(Batch, Vec<Verified>), WireError> {
    expect_kind(v, Kind::Batch)?;
    let body = pb::Batch::decode(v.body.as_slice()).map_err(malformed("batch"))?;
    batch_from_body(network, v.signer, body, known, check)
}

fn batch_from_body(
    network: &NetworkId,
    signer: Key,
    body: pb::Batch,
    known: &mut KnownSignatures,
    check: Claims,
) -> Result<(Batch, Vec<Verified>), WireError> {
    if body.entries.len() > BATCH_ENTRIES_MAX {
        return Err(WireError::TooManyEntries { max: BATCH_ENTRIES_MAX });
    }
    let mut entries = Vec::with_capacity(body.entries.len());
    let mut claims = Vec::new();
    for e in body.entries {
        match e.entry.ok_or(WireError::Missing("batch entry"))? {
            pb::batch_entry::Entry::Claim(raw) => {
                let v = match check {
                    Claims::Verify => verify_nested(network, &raw, "claim", known)?,
                    Claims::Certified => envelope::decode_vouched(network, &raw, Voucher::Certified)
                        .map_err(|error| WireError::Nested { what: "claim", error })?,
                };
                entries.push(Entry::Claim(claim(&v)?));
                claims.push(v);
            }
            pb::batch_entry::Entry::TransferOut(t) => entries.push(Entry::TransferOut {
                to: bucket_id(t.to)?,
                amount: t.amount,
            }),
            pb::batch_entry::Entry::Close(_) => entries.push(Entry::Close),
        }
    }
    let batch = Batch::new(
        signer,
        bucket_id(body.bucket)?,
        body.seq,
        key32(&body.prev, "prev")?,
        body.timestamp,
        entries,
        body.total_after,
    );
    Ok((batch, claims))
}

/// The body of a freeze envelope.
pub fn freeze_body(freeze: &Freeze, pending_envelope: Option<Vec<u8>>) -> pb::Freeze {
    pb::Freeze {
        bucket: Some(bucket_ref(&freeze.bucket)),
        last_seq: freeze.last_seq,
        pending: pending_envelope.unwrap_or_default(),
        proposer: freeze.signer.to_vec(),
    }
}

/// A freeze from its verified envelope (the pending batch, if any, is verified too).
pub fn freeze(network: &NetworkId, v: &Verified, known: &mut KnownSignatures) -> Result<Freeze, WireError> {
    freeze_checked(network, v, known, Claims::Verify)
}

fn freeze_checked(
    network: &NetworkId,
    v: &Verified,
    known: &mut KnownSignatures,
    check: Claims,
) -> Result<Freeze, WireError> {
    expect_kind(v, Kind::Freeze)?;
    let body = pb::Freeze::decode(v.body.as_slice()).map_err(malformed("freeze"))?;
    if key32(&body.proposer, "proposer")? != v.signer {
        return Err(WireError::SignerMismatch("proposer"));
    }
    let pending = if body.pending.is_empty() {
        None
    } else {
        let p = verify_nested(network, &body.pending, "pending batch", known)?;
        Some(batch_checked(network, &p, known, check)?.0)
    };
    Ok(Freeze::new(v.signer, bucket_id(body.bucket)?, body.last_seq, pending))
}

/// The body of a vote envelope.
pub fn vote_body(vote: &Vote, bucket: &BucketId) -> pb::Vote {
    pb::Vote {
        object_id: vote.object_id.to_vec(),
        bucket: Some(bucket_ref(bucket)),
        seq: vote.seq,
        region: vote.region.clone(),
        voter: vote.signer.to_vec(),
    }
}

/// A vote from its verified envelope.
pub fn vote(v: &Verified) -> Result<Vote, WireError> {
    expect_kind(v, Kind::Vote)?;
    let body = pb::Vote::decode(v.body.as_slice()).map_err(malformed("vote"))?;
    if key32(&body.voter, "voter")? != v.signer {
        return Err(WireError::SignerMismatch("voter"));
    }
    Ok(Vote {
        signer: v.signer,
        object_id: key32(&body.object_id, "object_id")?,
        bucket: bucket_id(body.bucket)?.digest(),
        seq: body.seq,
        region: body.region,
    })
}

/// A certificate from its encoding: the object's and every vote's signature
/// are verified here; the quorum itself is checked by the ledger. The claims
/// inside a certified batch are decoded but their signatures are not checked
/// again: every voter verified them before voting, so a certificate that
/// passes the ledger's threshold (more than 2/3 of the region's weight, with
/// fewer than 1/3 faulty) vouches for them as it vouches for everything else
/// in the batch. This is what spares each node outside a region one signature
/// check per claim of that region.
pub fn certificate(network: &NetworkId, raw: &[u8], known: &mut KnownSignatures) -> Result<Certificate, WireError> {
    let cert = pb::Certificate::decode(raw).map_err(malformed("certificate"))?;
    let object = verify_nested(network, &cert.object, "certified object", known)?;
    let object = match object.kind {
        Kind::Batch => CertifiedObject::Batch(batch_checked(network, &object, known, Claims::Certified)?.0),
        Kind::Freeze => CertifiedObject::Freeze(freeze_checked(network, &object, known, Claims::Certified)?),
        other => {
            return Err(WireError::WrongKind {
                expected: "batch or freeze",
                got: other.name(),
            });
        }
    };
    let votes = cert
        .votes
        .iter()
        .map(|raw| verify_nested(network, raw, "vote", known).and_then(|v| vote(&v)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Certificate { object, votes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::envelope::{Unverified, seal};
    use ed25519_dalek::SigningKey;

    const NET: NetworkId = NetworkId([3; 32]);

    fn verified(raw: &[u8]) -> Verified {
        match envelope::decode(&NET, raw).and_then(Unverified::verify) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// A signed claim by the claimant whose secret key is `[seed; 32]`.
    fn sealed_claim(seed: u8) -> Vec<u8> {
        let claimant = SigningKey::from_bytes(&[seed; 32]);
        let body = pb::Claim {
            distribution_id: vec![1; 32],
            claimant: claimant.verifying_key().to_bytes().to_vec(),
            attestation_id: vec![2; 32],
            amount: 10,
            recipient: vec![],
            created_at: 5,
            nonce: u64::from(seed),
        };
        seal(&NET, &claimant, Kind::Claim, body.encode_to_vec()).0
    }

    #[test]
    fn a_batch_round_trips_through_the_wire_with_its_claims() {
        let owner = SigningKey::from_bytes(&[5; 32]);
        let claim_raw = sealed_claim(4);
        let c = claim(&verified(&claim_raw)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.recipient, c.claimant);
        let bucket = BucketId {
            distribution: [1; 32],
            region: "eu".into(),
            owner: owner.verifying_key().to_bytes(),
        };
        let b = Batch::new(bucket.owner, bucket, 0, [0; 32], 9, vec![Entry::Claim(c.clone())], 10);
        let body = batch_body(&b, |id| (id == &c.id).then(|| claim_raw.clone())).unwrap_or_default();
        let (raw, _) = seal(&NET, &owner, Kind::Batch, body.encode_to_vec());
        let mut known = KnownSignatures::new(16);
        let (back, claims) = batch(&NET, &verified(&raw), &mut known).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, b);
        assert_eq!(claims.len(), 1);
        // Met again, the claim is known: the same bytes pass without a check.
        assert!(batch(&NET, &verified(&raw), &mut known).is_ok());
        // A tampered nested claim is refused, whatever is known.
        let mut tampered = claim_raw.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let body = batch_body(&b, |_| Some(tampered.clone())).unwrap_or_default();
        let (raw, _) = seal(&NET, &owner, Kind::Batch, body.encode_to_vec());
        assert!(matches!(
            batch(&NET, &verified(&raw), &mut known),
            Err(WireError::Nested { .. })
        ));
        assert!(matches!(
            batch(&NET, &verified(&raw), &mut KnownSignatures::new(0)),
            Err(WireError::Nested { .. })
        ));
    }

    #[test]
    fn a_certificate_vouches_for_its_claims_but_not_for_its_votes_and_teaches_nothing() {
        let owner = SigningKey::from_bytes(&[7; 32]);
        let voter = SigningKey::from_bytes(&[8; 32]);
        let claim_raw = sealed_claim(6);
        let c = claim(&verified(&claim_raw)).unwrap_or_else(|e| panic!("{e}"));
        // The same claim bytes with a broken signature.
        let mut forged = claim_raw.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let bucket = BucketId {
            distribution: [1; 32],
            region: "eu".into(),
            owner: owner.verifying_key().to_bytes(),
        };
        let b = Batch::new(bucket.owner, bucket.clone(), 0, [0; 32], 9, vec![Entry::Claim(c)], 10);
        let body = batch_body(&b, |_| Some(forged.clone())).unwrap_or_default();
        let (batch_raw, _) = seal(&NET, &owner, Kind::Batch, body.encode_to_vec());
        let vote = Vote {
            signer: voter.verifying_key().to_bytes(),
            object_id: b.id,
            bucket: bucket.digest(),
            seq: 0,
            region: "eu".into(),
        };
        let (vote_raw, _) = seal(&NET, &voter, Kind::Vote, vote_body(&vote, &bucket).encode_to_vec());
        let cert = |votes: Vec<Vec<u8>>| {
            pb::Certificate {
                object: batch_raw.clone(),
                votes,
            }
            .encode_to_vec()
        };
        let mut known = KnownSignatures::new(16);
        // The claims of a certified batch are decoded, not checked again.
        let decoded = certificate(&NET, &cert(vec![vote_raw.clone()]), &mut known).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decoded.object, CertifiedObject::Batch(b.clone()));
        assert_eq!(decoded.votes, vec![vote.clone()]);
        // Votes are always verified.
        let mut bad_vote = vote_raw.clone();
        let last = bad_vote.len() - 1;
        bad_vote[last] ^= 1;
        assert!(matches!(
            certificate(&NET, &cert(vec![bad_vote]), &mut known),
            Err(WireError::Nested { what: "vote", .. })
        ));
        // What a certificate vouched for was not learned: offered for a vote,
        // the forged claim is still refused.
        assert!(matches!(
            batch(&NET, &verified(&batch_raw), &mut known),
            Err(WireError::Nested { what: "claim", .. })
        ));
    }
}
