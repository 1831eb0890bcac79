//! The escrow/claims protocol core: buckets, batches, votes, certificates and the ledger derived
//! from them.
//!
//! This module tree is a pure, deterministic state machine. It never reads a clock (time comes in
//! as `now_ms`), never does I/O and never draws randomness. Signatures are verified by the shell
//! before anything reaches it: every object arrives with its `signer` and its `id` already checked.
//!
//! Who talks to it:
//! - the gossip/RPC shell feeds claims to an [`Owner`] (the sequencer of its own bucket), batches
//!   and freezes to a [`Voter`], and certificates to the [`Ledger`];
//! - the shell persists every [`VoterOutput::Persist`] lock and every
//!   [`OwnerOutput::PersistBatch`] durably *before* it sends what follows it;
//! - status and liquidity queries read the [`Ledger`].
//!
//! Files: `model` (wire-level types and ids), `distribution` (activation, shares, routing),
//! `credential` (what the core asks about credentials, and the objective claim rules), `ledger`
//! (certified state), `voter`, `owner`, `need` (need-driven transfers inside a region),
//! `evidence`.

// The lints that keep input from panicking the node are set once, for the
// whole core, in `core.rs`.

mod credential;
mod distribution;
mod evidence;
mod ledger;
mod model;
mod need;
mod owner;
mod voter;

#[cfg(test)]
mod tests;

pub use self::credential::{AttestationFacts, ClaimDefect, CredentialView};
pub use self::distribution::{ActiveDistribution, BucketPlan, DistributionError, hrw_pick};
pub use self::evidence::{Equivocation, EvidenceError};
pub use self::ledger::{
    ApplyOutcome, BucketLiquidity, CertifiedClaim, ClaimStatus, GlobalView, Ledger, LedgerError, LiquidityReport,
    LiquidityTotals, NoGlobalView, Route, WaitReason,
};
pub use self::model::{
    Batch, BucketId, Certificate, CertificateError, CertifiedObject, Claim, Distribution, Entry, FaultModel, Freeze,
    Lock, ModelError, Validator, ValidatorSet, Vote, ZERO_DIGEST, digest_parts, slot_of,
};
pub use self::need::{
    DONOR_RESERVE_CLAIMS, NEED_ANSWERS_PER_CALL_MAX, NEED_LOW_WATER_CLAIMS, NEED_TARGET_CLAIMS,
    NEEDS_PER_HEARTBEAT_MAX, NeedAd, answer_needs, need_for,
};
pub use self::owner::{ClaimRefusal, Owner, OwnerConfig, OwnerError, OwnerOutput};
pub use self::voter::{Missing, VoteRefusal, Voter, VoterConfig, VoterOutput};

/// An ed25519 public key (a validator, operator, issuer or claimant).
pub type Key = [u8; 32];

/// A blake3 digest: object ids, bucket ids, slots.
pub type Digest = [u8; 32];

/// Milliseconds since the Unix epoch.
pub type Millis = u64;
