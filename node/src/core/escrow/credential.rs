//! The core's window on credentials, and the objective rules a claim must meet.
//!
//! The credential store (attestations, revocations, grants) lives outside this module; the core
//! only asks it through [`CredentialView`]. The rules in [`check_claim`] use nothing but the claim,
//! the distribution, the attestation and the batch timestamp, so every honest voter judges a
//! claim alike. Revocations are deliberately absent from them (see DESIGN.md, disputes).

use thiserror::Error;

use super::distribution::ActiveDistribution;
use super::model::Claim;
use super::{Digest, Key, Millis};

/// What the core needs to know about an attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationFacts {
    pub issuer: Key,
    pub subject: Key,
    pub schema: String,
    pub issued_at: Millis,
    pub expires_at: Millis,
}

/// Read access to the node's credential store.
pub trait CredentialView {
    /// The attestation with this id, if the node has it.
    fn attestation(&self, id: &Digest) -> Option<AttestationFacts>;
    /// `revoked_at` of a valid revocation of this attestation, if the node has one.
    fn revocation(&self, id: &Digest) -> Option<Millis>;
}

/// Why a claim is objectively invalid. Every honest node with the attestation reaches the same
/// verdict.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClaimDefect {
    #[error("claim is for another distribution")]
    WrongDistribution,
    #[error("claim is signed by someone other than its claimant")]
    SignerNotClaimant,
    #[error("amount {got} differs from the rule's {expected}")]
    WrongAmount { expected: u64, got: u64 },
    #[error("created_at {created_at} is outside the distribution window")]
    OutsideWindow { created_at: Millis },
    #[error("created_at {created_at} is after the batch timestamp {timestamp} plus skew")]
    AfterBatchTimestamp { created_at: Millis, timestamp: Millis },
    #[error("attestation schema {schema:?} is not the rule's")]
    SchemaMismatch { schema: String },
    #[error("attestation issuer is not allowed by the rule")]
    IssuerNotAllowed,
    #[error("attestation subject is not the claimant (someone else's credential)")]
    SubjectNotClaimant,
    #[error("attestation expired at {expires_at}, before the claim was created")]
    CredentialExpired { expires_at: Millis },
    #[error("claim's home bucket is {home:02x?}, not this bucket")]
    NotHomeBucket { home: Option<Digest> },
    #[error("slot already funded earlier in this chain")]
    SlotAlreadyFunded,
    #[error("slot appears twice in the batch")]
    DuplicateSlotInBatch,
}

/// The verdict on a claim that has no defect found so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimVerdict {
    Valid,
    /// The attestation is not known here yet: fetch it and judge again.
    AttestationUnknown(Digest),
}

/// Rules that need only the claim, the distribution, the attestation and the batch timestamp.
/// Home bucket and slot uniqueness need the ledger and are checked by the caller.
pub(crate) fn check_claim(
    distribution: &ActiveDistribution,
    claim: &Claim,
    credentials: &impl CredentialView,
    batch_timestamp: Millis,
    clock_skew_ms: u64,
) -> Result<ClaimVerdict, ClaimDefect> {
    let rule = distribution.distribution();
    if claim.distribution_id != rule.id {
        return Err(ClaimDefect::WrongDistribution);
    }
    if claim.signer != claim.claimant {
        return Err(ClaimDefect::SignerNotClaimant);
    }
    if claim.amount != rule.amount_per_claim {
        return Err(ClaimDefect::WrongAmount {
            expected: rule.amount_per_claim,
            got: claim.amount,
        });
    }
    if !distribution.in_window(claim.created_at) {
        return Err(ClaimDefect::OutsideWindow {
            created_at: claim.created_at,
        });
    }
    if claim.created_at > batch_timestamp.saturating_add(clock_skew_ms) {
        return Err(ClaimDefect::AfterBatchTimestamp {
            created_at: claim.created_at,
            timestamp: batch_timestamp,
        });
    }
    let Some(facts) = credentials.attestation(&claim.attestation_id) else {
        return Ok(ClaimVerdict::AttestationUnknown(claim.attestation_id));
    };
    check_attestation(distribution, claim, &facts)?;
    Ok(ClaimVerdict::Valid)
}

/// The attestation half of the rule, shared by owners and voters.
pub(crate) fn check_attestation(
    distribution: &ActiveDistribution,
    claim: &Claim,
    facts: &AttestationFacts,
) -> Result<(), ClaimDefect> {
    let rule = distribution.distribution();
    if facts.schema != rule.schema {
        return Err(ClaimDefect::SchemaMismatch {
            schema: facts.schema.clone(),
        });
    }
    if !rule.issuers.is_empty() && !rule.issuers.contains(&facts.issuer) {
        return Err(ClaimDefect::IssuerNotAllowed);
    }
    if facts.subject != claim.claimant {
        return Err(ClaimDefect::SubjectNotClaimant);
    }
    if facts.expires_at <= claim.created_at {
        return Err(ClaimDefect::CredentialExpired {
            expires_at: facts.expires_at,
        });
    }
    Ok(())
}
