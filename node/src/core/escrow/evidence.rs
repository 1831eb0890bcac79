//! Equivocation evidence: two batches signed by a bucket's owner at one `(bucket, seq)` with
//! different ids. Anyone can check it; the shell gossips it on the `evidence` topic.
//!
//! An equivocating owner cannot get both batches certified (voters lock), so the evidence is about
//! accountability, not safety: it tells operators which owner to distrust and take over.

use thiserror::Error;

use super::model::Batch;
use super::{Digest, Key};

/// Proof that `owner` signed two different batches at one position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equivocation {
    pub owner: Key,
    pub bucket: Digest,
    pub seq: u64,
    pub first: Batch,
    pub second: Batch,
}

/// Why two batches are not equivocation evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EvidenceError {
    #[error("the batches are at different buckets or seqs")]
    DifferentPosition,
    #[error("the batches are the same batch")]
    SameBatch,
    #[error("a batch is not signed by the bucket's owner")]
    NotOwnerSigned,
}

impl Equivocation {
    /// Checks two (signature-verified) batches and builds evidence from them. The pair is stored
    /// in id order, so the same two batches always make the same evidence.
    pub fn check(a: Batch, b: Batch) -> Result<Self, EvidenceError> {
        if a.bucket != b.bucket || a.seq != b.seq {
            return Err(EvidenceError::DifferentPosition);
        }
        if a.id == b.id {
            return Err(EvidenceError::SameBatch);
        }
        if a.signer != a.bucket.owner || b.signer != b.bucket.owner {
            return Err(EvidenceError::NotOwnerSigned);
        }
        let (first, second) = if a.id < b.id { (a, b) } else { (b, a) };
        Ok(Self {
            owner: first.signer,
            bucket: first.bucket.digest(),
            seq: first.seq,
            first,
            second,
        })
    }
}
