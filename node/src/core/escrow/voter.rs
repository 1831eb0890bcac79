//! The voter: decides whether this validator votes for a batch or a freeze of a bucket in its
//! region, and keeps the vote locks.
//!
//! Who talks to it: the shell hands it vote requests (batches, freezes) together with the node's
//! [`Ledger`] and credential store, then does what the outputs say, in order: persist each
//! [`VoterOutput::Persist`] lock durably (fsync) *before* sending the [`VoterOutput::SendVote`]
//! after it, and fetch what [`VoterOutput::NeedData`] names, then ask again.
//!
//! The rules are the ones every honest validator judges alike (DESIGN.md, "Escrow buckets"). A
//! voter lacking data answers "need data", never a refusal, so missing gossip cannot split votes.
//! Two exceptions depend on this node's view and are documented as retryable
//! ([`VoteRefusal::is_retryable`]): an escrow that a not-yet-seen transfer would raise, and a batch
//! timestamp ahead of this node's clock (which keeps owners from dodging the outflow breaker by
//! stamping batches in the future).

use crate::core::mutation::{Mutation, mutated};
use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use super::credential::{ClaimDefect, ClaimVerdict, CredentialView, check_claim};
use super::ledger::{Ledger, LedgerError, Route};
use super::model::{Batch, Entry, Freeze, Lock, Vote, ZERO_DIGEST};
use super::{Digest, Key, Millis};

/// Voting parameters from genesis (the same on every validator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoterConfig {
    /// Tolerated clock difference between nodes.
    pub clock_skew_ms: u64,
}

/// What the shell must do, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoterOutput {
    /// Make the lock durable (fsync) before anything after it leaves the node.
    Persist(Lock),
    SendVote(Vote),
    /// Fetch this and ask again; not a refusal.
    NeedData(Missing),
}

/// Data a voter needs before it can judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Distribution(Digest),
    /// The certificate at `(bucket, seq)` (and any after it up to the one asked about).
    Certificate {
        bucket: Digest,
        seq: u64,
    },
    Attestation(Digest),
    /// The freeze certificate of `bucket`, through which a claim routes to this bucket.
    FreezeOf {
        bucket: Digest,
    },
}

/// Why the voter refuses, precisely.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VoteRefusal {
    #[error("bucket is in region {region:?}, not this validator's")]
    NotMyRegion { region: String },
    #[error("bucket is not a bucket of its distribution")]
    UnknownBucket,
    #[error("batch signed by {signer:02x?}, not the bucket owner")]
    NotOwner { signer: Key },
    #[error("freeze signed by {signer:02x?}, not a validator of the bucket's region")]
    NotRegionValidator { signer: Key },
    #[error("the chain is already closed or frozen")]
    ChainEnded,
    #[error("seq {seq} is already certified")]
    AlreadyCertified { seq: u64 },
    #[error("already voted for {locked:02x?} at seq {seq}")]
    Locked { seq: u64, locked: Digest },
    #[error("prev does not match the certified batch at seq - 1")]
    PrevMismatch { expected: Digest, got: Digest },
    #[error("timestamp {got} is before the previous batch's {last}")]
    TimestampBackwards { last: Millis, got: Millis },
    #[error("timestamp {timestamp} is ahead of this node's clock {now_ms} plus skew: retry later")]
    TimestampAhead { timestamp: Millis, now_ms: Millis },
    #[error("batch has no entries")]
    EmptyBatch,
    #[error("a close entry must be the batch's last entry")]
    CloseNotLast,
    #[error("total_after {got} is not previous total plus entries ({expected:?})")]
    TotalMismatch { expected: Option<u64>, got: u64 },
    #[error("total_after {total_after} exceeds the bucket's escrow {escrow} as certified here")]
    ExceedsEscrow { total_after: u64, escrow: u64 },
    #[error("entry {index}: transfer to an invalid bucket or of nothing")]
    InvalidTransfer { index: usize },
    #[error("entry {index}: {defect}")]
    InvalidClaim { index: usize, defect: ClaimDefect },
    #[error("outflow {outflow} in the window exceeds the limit {limit}")]
    OutflowExceeded { outflow: u64, limit: u64 },
    #[error("freeze's pending batch is not at last_seq or not the certified batch there")]
    FreezePendingMismatch,
    #[error("freeze's pending batch is refused: {0}")]
    PendingRefused(Box<VoteRefusal>),
    #[error("seq overflows u64")]
    SeqOverflow,
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
}

impl VoteRefusal {
    /// Refusals that depend on this node's view or clock and may turn into a vote later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            VoteRefusal::ExceedsEscrow { .. } | VoteRefusal::TimestampAhead { .. }
        )
    }
}

/// One validator's voting state: its locks.
#[derive(Debug, Clone)]
pub struct Voter {
    key: Key,
    region: String,
    config: VoterConfig,
    locks: BTreeMap<(Digest, u64), Digest>,
}

impl Voter {
    pub fn new(key: Key, region: String, config: VoterConfig) -> Self {
        Self::restore(key, region, config, [])
    }

    /// Rebuilds a voter after a restart from its durable lock records.
    pub fn restore(key: Key, region: String, config: VoterConfig, locks: impl IntoIterator<Item = Lock>) -> Self {
        let locks = locks
            .into_iter()
            .map(|lock| ((lock.bucket, lock.seq), lock.object_id))
            .collect();
        Self {
            key,
            region,
            config,
            locks,
        }
    }

    pub fn key(&self) -> Key {
        self.key
    }

    /// The lock held at `(bucket, seq)`, if any.
    pub fn lock(&self, bucket: &Digest, seq: u64) -> Option<Digest> {
        self.locks.get(&(*bucket, seq)).copied()
    }

    /// Judges a batch; on a vote, returns `[Persist(lock)?, SendVote]`.
    pub fn on_batch(
        &mut self,
        ledger: &Ledger,
        credentials: &impl CredentialView,
        batch: &Batch,
        now_ms: Millis,
    ) -> Result<Vec<VoterOutput>, VoteRefusal> {
        let bucket = batch.bucket.digest();
        if batch.bucket.region != self.region {
            return Err(VoteRefusal::NotMyRegion {
                region: batch.bucket.region.clone(),
            });
        }
        let Some((distribution, _)) = ledger.bucket(&bucket) else {
            return match ledger.distribution(&batch.bucket.distribution) {
                None => Ok(vec![VoterOutput::NeedData(Missing::Distribution(
                    batch.bucket.distribution,
                ))]),
                Some(_) => Err(VoteRefusal::UnknownBucket),
            };
        };
        if batch.signer != batch.bucket.owner {
            return Err(VoteRefusal::NotOwner { signer: batch.signer });
        }
        if ledger.is_ended(&bucket) {
            return Err(VoteRefusal::ChainEnded);
        }
        let next = ledger.next_seq(&bucket).unwrap_or(0);
        if batch.seq < next {
            return Err(VoteRefusal::AlreadyCertified { seq: batch.seq });
        }
        self.check_lock(bucket, batch.seq, batch.id)?;
        if batch.seq > next {
            return Ok(vec![VoterOutput::NeedData(Missing::Certificate { bucket, seq: next })]);
        }

        // The chain link.
        let expected_prev = ledger.last_batch_id(&bucket).unwrap_or(ZERO_DIGEST);
        if batch.prev != expected_prev && !mutated(Mutation::PrevUnchecked) {
            return Err(VoteRefusal::PrevMismatch {
                expected: expected_prev,
                got: batch.prev,
            });
        }
        let last = ledger.last_timestamp(&bucket).unwrap_or(0);
        if batch.seq > 0 && batch.timestamp < last {
            return Err(VoteRefusal::TimestampBackwards {
                last,
                got: batch.timestamp,
            });
        }
        if batch.timestamp > now_ms.saturating_add(self.config.clock_skew_ms) {
            return Err(VoteRefusal::TimestampAhead {
                timestamp: batch.timestamp,
                now_ms,
            });
        }

        // Shape and totals.
        if batch.entries.is_empty() {
            return Err(VoteRefusal::EmptyBatch);
        }
        let close_at = batch.entries.iter().position(|entry| matches!(entry, Entry::Close));
        if close_at.is_some_and(|index| index.saturating_add(1) != batch.entries.len()) {
            return Err(VoteRefusal::CloseNotLast);
        }
        let expected_total = batch
            .entries
            .iter()
            .try_fold(ledger.chain_total(&bucket).unwrap_or(0), |acc, entry| {
                acc.checked_add(entry.amount())
            });
        if expected_total != Some(batch.total_after) {
            return Err(VoteRefusal::TotalMismatch {
                expected: expected_total,
                got: batch.total_after,
            });
        }
        for (index, entry) in batch.entries.iter().enumerate() {
            if let Entry::TransferOut { to, amount } = entry {
                let to_digest = to.digest();
                let valid = *amount > 0
                    && to.distribution == batch.bucket.distribution
                    && to_digest != bucket
                    && ledger.bucket(&to_digest).is_some();
                if !valid {
                    return Err(VoteRefusal::InvalidTransfer { index });
                }
            }
        }
        let escrow = ledger.escrow(&bucket)?;
        if batch.total_after > escrow {
            return Err(VoteRefusal::ExceedsEscrow {
                total_after: batch.total_after,
                escrow,
            });
        }

        // Claims: objective validity, home bucket, slot not funded before.
        let mut missing = Vec::new();
        let mut slots = BTreeSet::new();
        let mut claim_outflow: u64 = 0;
        for (index, entry) in batch.entries.iter().enumerate() {
            let Entry::Claim(claim) = entry else {
                continue;
            };
            let refuse = |defect| VoteRefusal::InvalidClaim { index, defect };
            match check_claim(
                distribution,
                claim,
                credentials,
                batch.timestamp,
                self.config.clock_skew_ms,
            ) {
                Err(defect) => return Err(refuse(defect)),
                Ok(ClaimVerdict::AttestationUnknown(id)) => {
                    missing.push(VoterOutput::NeedData(Missing::Attestation(id)));
                }
                Ok(ClaimVerdict::Valid) => {}
            }
            let slot = claim.slot();
            if !slots.insert(slot) {
                return Err(refuse(ClaimDefect::DuplicateSlotInBatch));
            }
            match home_check(ledger, &claim.distribution_id, &claim.claimant, &bucket) {
                Home::ThisBucket { path } => {
                    if path.iter().any(|on_path| ledger.slot_funded_in(on_path, &slot)) {
                        return Err(refuse(ClaimDefect::SlotAlreadyFunded));
                    }
                }
                Home::NeedFreeze(frozen) => {
                    missing.push(VoterOutput::NeedData(Missing::FreezeOf { bucket: frozen }));
                }
                Home::Elsewhere(home) if !mutated(Mutation::HomeUnchecked) => {
                    return Err(refuse(ClaimDefect::NotHomeBucket { home }));
                }
                Home::Elsewhere(_) => {}
            }
            claim_outflow = claim_outflow.saturating_add(claim.amount);
        }

        // The circuit breaker, from the chain's own timestamps.
        let rule = distribution.distribution();
        if rule.outflow_window_ms > 0 {
            let outflow = ledger
                .outflow_in_window(&bucket, batch.timestamp)
                .unwrap_or(0)
                .saturating_add(claim_outflow);
            if outflow > rule.max_outflow_per_window {
                return Err(VoteRefusal::OutflowExceeded {
                    outflow,
                    limit: rule.max_outflow_per_window,
                });
            }
        }
        if !missing.is_empty() {
            return Ok(missing);
        }
        Ok(self.vote(bucket, batch.seq, batch.id))
    }

    /// Judges a freeze; may also vote for the pending batch it carries.
    pub fn on_freeze(
        &mut self,
        ledger: &Ledger,
        credentials: &impl CredentialView,
        freeze: &Freeze,
        now_ms: Millis,
    ) -> Result<Vec<VoterOutput>, VoteRefusal> {
        let bucket = freeze.bucket.digest();
        if freeze.bucket.region != self.region {
            return Err(VoteRefusal::NotMyRegion {
                region: freeze.bucket.region.clone(),
            });
        }
        let signer_ok = ledger
            .validators()
            .get(&freeze.signer)
            .is_some_and(|validator| validator.region == self.region);
        if !signer_ok {
            return Err(VoteRefusal::NotRegionValidator { signer: freeze.signer });
        }
        if ledger.bucket(&bucket).is_none() {
            return match ledger.distribution(&freeze.bucket.distribution) {
                None => Ok(vec![VoterOutput::NeedData(Missing::Distribution(
                    freeze.bucket.distribution,
                ))]),
                Some(_) => Err(VoteRefusal::UnknownBucket),
            };
        }
        if ledger.is_ended(&bucket) {
            return Err(VoteRefusal::ChainEnded);
        }
        let position = freeze.position().ok_or(VoteRefusal::SeqOverflow)?;
        let next = ledger.next_seq(&bucket).unwrap_or(0);
        if position < next {
            return Err(VoteRefusal::AlreadyCertified { seq: position });
        }
        self.check_lock(bucket, position, freeze.id)?;
        if let Some(pending) = &freeze.pending {
            let placed = Some(pending.seq) == freeze.last_seq && pending.bucket == freeze.bucket;
            let certified = ledger.certified_id(&bucket, pending.seq);
            if !placed || certified.is_some_and(|id| id != pending.id) {
                return Err(VoteRefusal::FreezePendingMismatch);
            }
        }
        if position > next {
            let mut outputs = Vec::new();
            // Certify the owner's last batch first, so the freeze can follow it.
            if let Some(pending) = freeze.pending.as_deref()
                && pending.seq == next
            {
                outputs = self
                    .on_batch(ledger, credentials, pending, now_ms)
                    .map_err(|refusal| VoteRefusal::PendingRefused(Box::new(refusal)))?;
            }
            outputs.push(VoterOutput::NeedData(Missing::Certificate { bucket, seq: next }));
            return Ok(outputs);
        }
        Ok(self.vote(bucket, position, freeze.id))
    }

    fn check_lock(&self, bucket: Digest, seq: u64, object_id: Digest) -> Result<(), VoteRefusal> {
        match self.locks.get(&(bucket, seq)) {
            Some(locked) if *locked != object_id && !mutated(Mutation::IgnoreLocks) => {
                Err(VoteRefusal::Locked { seq, locked: *locked })
            }
            _ => Ok(()),
        }
    }

    fn vote(&mut self, bucket: Digest, seq: u64, object_id: Digest) -> Vec<VoterOutput> {
        let vote = VoterOutput::SendVote(Vote {
            signer: self.key,
            object_id,
            bucket,
            seq,
            region: self.region.clone(),
        });
        if self.locks.get(&(bucket, seq)) == Some(&object_id) {
            // Already durable: re-sending the same vote is safe and needs no new record.
            return vec![vote];
        }
        self.locks.insert((bucket, seq), object_id);
        vec![VoterOutput::Persist(Lock { bucket, seq, object_id }), vote]
    }
}

/// Where a claim belongs, from this bucket's point of view.
pub(crate) enum Home {
    /// This bucket funds it; `path` is home → … → this bucket (all but the last frozen).
    ThisBucket {
        path: Vec<Digest>,
    },
    /// This bucket would fund it once `frozen`'s freeze certificate is known here.
    NeedFreeze(Digest),
    Elsewhere(Option<Digest>),
}

pub(crate) fn home_check(ledger: &Ledger, distribution_id: &Digest, claimant: &Key, bucket: &Digest) -> Home {
    match ledger.route(distribution_id, claimant) {
        Some(Route::Live { bucket: live, path }) if live == *bucket => Home::ThisBucket { path },
        Some(Route::Live { bucket: live, path }) => {
            // Is this bucket further down the successor line, behind a freeze not seen here?
            let Some(distribution) = ledger.distribution(distribution_id) else {
                return Home::Elsewhere(Some(live));
            };
            let mut seen = path;
            let mut current = live;
            while let Some(next) = distribution.successor(&current) {
                if seen.contains(&next) {
                    break;
                }
                if next == *bucket {
                    // The first bucket not known frozen here is the one whose freeze is missing.
                    return Home::NeedFreeze(live);
                }
                seen.push(next);
                current = next;
            }
            Home::Elsewhere(Some(live))
        }
        Some(Route::NoLiveBucket { path }) => Home::Elsewhere(path.first().copied()),
        None => Home::Elsewhere(None),
    }
}
