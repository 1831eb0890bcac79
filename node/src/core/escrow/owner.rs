//! The owner: the only sequencer of its own bucket. It admits claims (or refuses them with a
//! precise reason), collects them into the open batch, and closes batches into the bucket's hash
//! chain (`seq`, `prev`, `total_after`).
//!
//! Who talks to it: the shell routes claims whose home is this node's bucket here, calls
//! [`Owner::close_batch`] when its adaptive batching timer fires (the core does not keep time),
//! persists each [`OwnerOutput::PersistBatch`] durably before sending the batch to voters, and
//! applies certificates to the [`Ledger`] the owner reads.
//!
//! One batch is in flight at a time: the next one is closed only once the previous is certified,
//! so an honest owner never signs two batches at one seq (which would be equivocation evidence).

use std::collections::BTreeSet;

use thiserror::Error;

use super::credential::{ClaimDefect, CredentialView, check_attestation};
use super::ledger::{Ledger, LedgerError};
use super::model::{Batch, BucketId, Claim, Entry, ZERO_DIGEST};
use super::need::need_for;
use super::voter::{Home, home_check};
use super::{Digest, Key, Millis};

/// Owner parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerConfig {
    /// A batch is closed as soon as it holds this many claims.
    pub batch_claims_max: usize,
    pub clock_skew_ms: u64,
}

/// What the shell must do, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerOutput {
    /// Make the batch durable (fsync) before sending it: after a restart the owner must resume
    /// this exact batch, never sign another at its seq.
    PersistBatch(Batch),
    /// Send the batch to the region's voters for votes.
    SendBatch(Batch),
    /// A queued claim that no longer fits once the ledger caught up (its slot was certified
    /// meanwhile, or the escrow is spoken for): report it rejected with this reason.
    Dropped { claim: Claim, reason: ClaimRefusal },
}

/// Why an owner refuses a claim.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClaimRefusal {
    #[error("claim is for another distribution than this bucket's")]
    WrongDistribution,
    #[error("distribution not known here yet: retry after it syncs")]
    UnknownDistribution,
    #[error("claim is not signed by its claimant")]
    SignerNotClaimant,
    #[error("slot already claimed (certified, in flight or queued)")]
    DuplicateSlot,
    #[error("credential belongs to someone else")]
    SomeoneElsesCredential,
    #[error("credential was revoked at {revoked_at}")]
    CredentialRevoked { revoked_at: Millis },
    #[error("credential expired at {expires_at}")]
    CredentialExpired { expires_at: Millis },
    #[error("credential not known here yet: retry after it syncs")]
    CredentialUnknown,
    #[error("credential does not meet the rule: {0}")]
    RuleNotMet(ClaimDefect),
    #[error("amount {got} is not the rule's {expected}")]
    WrongAmount { expected: u64, got: u64 },
    #[error("the distribution opens at {opens_at}")]
    WindowNotOpen { opens_at: Millis },
    #[error("the distribution closed at {closes_at}")]
    WindowClosed { closes_at: Millis },
    #[error("claim created at {created_at}, outside the window or in the future")]
    BadCreatedAt { created_at: Millis },
    #[error("bucket exhausted: {available} left, claim asks {amount}")]
    BucketExhausted { available: u64, amount: u64 },
    #[error("outflow limit reached for this window: retry later")]
    RateLimited,
    #[error("not this bucket's claim: home is {home:02x?}")]
    NotHomeBucket { home: Option<Digest> },
    #[error("the open batch is full and one is in flight: retry later")]
    Busy,
    #[error("the bucket's chain is closing or ended")]
    BucketClosed,
    #[error("arithmetic overflow")]
    Overflow,
}

impl ClaimRefusal {
    /// Refusals that may turn into acceptance later, as data syncs or time passes.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClaimRefusal::UnknownDistribution
                | ClaimRefusal::CredentialUnknown
                | ClaimRefusal::WindowNotOpen { .. }
                | ClaimRefusal::RateLimited
                | ClaimRefusal::Busy
        )
    }
}

/// Errors of owner operations other than claims.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OwnerError {
    #[error("the bucket's chain is closing or ended")]
    ChainEnded,
    #[error("transfer to an invalid bucket or of nothing")]
    InvalidTransfer,
    #[error("escrow {available} left cannot cover {amount}")]
    Insufficient { available: u64, amount: u64 },
    #[error("the open batch is full: close it first")]
    Busy,
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("arithmetic overflow")]
    Overflow,
}

/// The sequencer of one bucket.
#[derive(Debug, Clone)]
pub struct Owner {
    key: Key,
    bucket: BucketId,
    digest: Digest,
    config: OwnerConfig,
    open: Vec<Entry>,
    open_slots: BTreeSet<Digest>,
    open_amount: u64,
    open_outflow: u64,
    in_flight: Option<Batch>,
    close_requested: bool,
    ended: bool,
    /// Claims stranded by a freeze, kept until the shell takes them with [`Owner::sync`].
    orphaned: Vec<Claim>,
    /// A claim was refused or dropped here for lack of escrow: the bucket has demand it cannot
    /// meet (one of the signals that let it advertise a need, see [`Owner::need`]).
    starved: bool,
}

impl Owner {
    pub fn new(key: Key, bucket: BucketId, config: OwnerConfig) -> Self {
        Self::restore(key, bucket, config, None)
    }

    /// Rebuilds an owner after a restart from its last durably persisted batch.
    pub fn restore(key: Key, bucket: BucketId, config: OwnerConfig, last_batch: Option<Batch>) -> Self {
        let digest = bucket.digest();
        debug_assert_eq!(key, bucket.owner, "an owner sequences only its own bucket");
        Self {
            key,
            bucket,
            digest,
            config,
            open: Vec::new(),
            open_slots: BTreeSet::new(),
            open_amount: 0,
            open_outflow: 0,
            in_flight: last_batch,
            close_requested: false,
            ended: false,
            orphaned: Vec::new(),
            starved: false,
        }
    }

    pub fn bucket(&self) -> &BucketId {
        &self.bucket
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The batch awaiting its certificate (re-send it to voters that have not answered).
    pub fn in_flight(&self) -> Option<&Batch> {
        self.in_flight.as_ref()
    }

    /// Transfers queued in the open batch: (destination, amount).
    pub fn open_transfers(&self) -> impl Iterator<Item = (&BucketId, u64)> {
        self.open.iter().filter_map(|entry| match entry {
            Entry::TransferOut { to, amount } => Some((to, *amount)),
            _ => None,
        })
    }

    /// Whether a transfer to `to` is queued in the open batch or awaits its certificate in the
    /// batch in flight (one the ledger has certified no longer counts).
    pub fn transferring_to(&self, ledger: &Ledger, to: &Digest) -> bool {
        let is_to = |entry: &Entry| matches!(entry, Entry::TransferOut { to: dest, .. } if dest.digest() == *to);
        let next = ledger.next_seq(&self.digest).unwrap_or(0);
        self.open.iter().any(is_to)
            || self
                .in_flight
                .as_ref()
                .is_some_and(|batch| batch.seq >= next && batch.entries.iter().any(is_to))
    }

    /// What this bucket asks its region's other owners for, if anything (DESIGN.md "Transfers"):
    /// when its available escrow, counting `incoming` (transfers to it proposed by other owners
    /// and not certified yet), covers fewer than
    /// [`NEED_LOW_WATER_CLAIMS`](super::NEED_LOW_WATER_CLAIMS) claims, enough to cover
    /// [`NEED_TARGET_CLAIMS`](super::NEED_TARGET_CLAIMS). Only a bucket that has met demand
    /// asks (it has spent, holds claims, or refused one for lack of escrow), and only while its
    /// distribution still pays.
    pub fn need(&self, ledger: &Ledger, now_ms: Millis, incoming: u64) -> Option<u64> {
        if self.ended || self.close_requested {
            return None;
        }
        let rule = ledger.distribution(&self.bucket.distribution)?.distribution();
        if now_ms >= rule.closes_at {
            return None;
        }
        let in_flight_claims = self
            .in_flight
            .as_ref()
            .is_some_and(|batch| batch.claims().next().is_some());
        let demand = self.starved
            || in_flight_claims
            || self.open_claims() > 0
            || ledger.spent(&self.digest).is_some_and(|spent| spent > 0);
        if !demand {
            return None;
        }
        let available = self.available(ledger).ok()?.saturating_add(incoming);
        need_for(rule.amount_per_claim, available)
    }

    pub fn open_len(&self) -> usize {
        self.open.len()
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Catches up with the ledger. Returns claims that can no longer be funded here (the chain was
    /// frozen under them, possibly noticed during an earlier call): the shell routes them to the
    /// successor.
    pub fn sync(&mut self, ledger: &Ledger) -> Vec<Claim> {
        self.catch_up(ledger);
        std::mem::take(&mut self.orphaned)
    }

    fn catch_up(&mut self, ledger: &Ledger) {
        let next = ledger.next_seq(&self.digest).unwrap_or(0);
        if let Some(batch) = &self.in_flight
            && batch.seq < next
        {
            if ledger.certified_id(&self.digest, batch.seq) != Some(batch.id) {
                self.orphaned.extend(batch.claims().cloned());
            }
            self.in_flight = None;
        }
        if ledger.is_ended(&self.digest) && !self.ended {
            self.ended = true;
            if let Some(batch) = self.in_flight.take() {
                self.orphaned.extend(batch.claims().cloned());
            }
            for entry in self.open.drain(..) {
                if let Entry::Claim(claim) = entry {
                    self.orphaned.push(claim);
                }
            }
            self.open_slots.clear();
            self.open_amount = 0;
            self.open_outflow = 0;
        }
    }

    /// Admits a claim into the open batch; closes the batch when it is full.
    pub fn submit_claim(
        &mut self,
        ledger: &Ledger,
        credentials: &impl CredentialView,
        claim: Claim,
        now_ms: Millis,
    ) -> Result<Vec<OwnerOutput>, ClaimRefusal> {
        self.catch_up(ledger);
        if self.ended || self.close_requested {
            return Err(ClaimRefusal::BucketClosed);
        }
        if claim.distribution_id != self.bucket.distribution {
            return Err(ClaimRefusal::WrongDistribution);
        }
        let Some(distribution) = ledger.distribution(&claim.distribution_id) else {
            return Err(ClaimRefusal::UnknownDistribution);
        };
        let rule = distribution.distribution();
        if claim.signer != claim.claimant {
            return Err(ClaimRefusal::SignerNotClaimant);
        }
        if claim.amount != rule.amount_per_claim {
            return Err(ClaimRefusal::WrongAmount {
                expected: rule.amount_per_claim,
                got: claim.amount,
            });
        }
        if now_ms < rule.opens_at {
            return Err(ClaimRefusal::WindowNotOpen {
                opens_at: rule.opens_at,
            });
        }
        if now_ms >= rule.closes_at {
            return Err(ClaimRefusal::WindowClosed {
                closes_at: rule.closes_at,
            });
        }
        if !distribution.in_window(claim.created_at)
            || claim.created_at > now_ms.saturating_add(self.config.clock_skew_ms)
        {
            return Err(ClaimRefusal::BadCreatedAt {
                created_at: claim.created_at,
            });
        }
        let Some(facts) = credentials.attestation(&claim.attestation_id) else {
            return Err(ClaimRefusal::CredentialUnknown);
        };
        // An owner refuses what it knows to be revoked or expired now; voters cannot (disputes).
        if let Some(revoked_at) = credentials.revocation(&claim.attestation_id) {
            return Err(ClaimRefusal::CredentialRevoked { revoked_at });
        }
        if facts.expires_at <= now_ms {
            return Err(ClaimRefusal::CredentialExpired {
                expires_at: facts.expires_at,
            });
        }
        check_attestation(distribution, &claim, &facts).map_err(|defect| match defect {
            ClaimDefect::SubjectNotClaimant => ClaimRefusal::SomeoneElsesCredential,
            ClaimDefect::CredentialExpired { expires_at } => ClaimRefusal::CredentialExpired { expires_at },
            other => ClaimRefusal::RuleNotMet(other),
        })?;
        let slot = claim.slot();
        match home_check(ledger, &claim.distribution_id, &claim.claimant, &self.digest) {
            Home::ThisBucket { path } => {
                if path.iter().any(|bucket| ledger.slot_funded_in(bucket, &slot)) {
                    return Err(ClaimRefusal::DuplicateSlot);
                }
            }
            Home::NeedFreeze(home) => return Err(ClaimRefusal::NotHomeBucket { home: Some(home) }),
            Home::Elsewhere(home) => return Err(ClaimRefusal::NotHomeBucket { home }),
        }
        let in_flight_slot = self
            .in_flight
            .as_ref()
            .is_some_and(|batch| batch.claims().any(|c| c.slot() == slot));
        if self.open_slots.contains(&slot) || in_flight_slot {
            return Err(ClaimRefusal::DuplicateSlot);
        }
        if self.open_claims() >= self.config.batch_claims_max && self.in_flight.is_some() {
            return Err(ClaimRefusal::Busy);
        }
        let available = self.available(ledger).map_err(|_| ClaimRefusal::Overflow)?;
        if claim.amount > available {
            self.starved = true;
            return Err(ClaimRefusal::BucketExhausted {
                available,
                amount: claim.amount,
            });
        }
        if rule.outflow_window_ms > 0 {
            let in_flight_outflow = self.in_flight.as_ref().map_or(0, |batch| {
                batch.claims().fold(0u64, |acc, c| acc.saturating_add(c.amount))
            });
            let outflow = ledger
                .outflow_in_window(&self.digest, now_ms)
                .unwrap_or(0)
                .saturating_add(in_flight_outflow)
                .saturating_add(self.open_outflow)
                .saturating_add(claim.amount);
            if outflow > rule.max_outflow_per_window {
                return Err(ClaimRefusal::RateLimited);
            }
        }
        self.open_amount = self
            .open_amount
            .checked_add(claim.amount)
            .ok_or(ClaimRefusal::Overflow)?;
        self.open_outflow = self
            .open_outflow
            .checked_add(claim.amount)
            .ok_or(ClaimRefusal::Overflow)?;
        self.open_slots.insert(slot);
        self.open.push(Entry::Claim(claim));
        if self.open_claims() >= self.config.batch_claims_max {
            return self.close_batch(ledger, now_ms).map_err(|error| match error {
                OwnerError::ChainEnded => ClaimRefusal::BucketClosed,
                _ => ClaimRefusal::Overflow,
            });
        }
        Ok(Vec::new())
    }

    /// Queues a transfer of `amount` of this bucket's escrow to `to` (rebalancing).
    pub fn request_transfer(&mut self, ledger: &Ledger, to: BucketId, amount: u64) -> Result<(), OwnerError> {
        self.catch_up(ledger);
        if self.ended || self.close_requested {
            return Err(OwnerError::ChainEnded);
        }
        // Transfers share the open batch with claims; bound them the same way.
        if self.open.len() >= self.config.batch_claims_max.saturating_mul(2) {
            return Err(OwnerError::Busy);
        }
        let to_digest = to.digest();
        if amount == 0
            || to.distribution != self.bucket.distribution
            || to_digest == self.digest
            || ledger.bucket(&to_digest).is_none()
        {
            return Err(OwnerError::InvalidTransfer);
        }
        let available = self.available(ledger)?;
        if amount > available {
            return Err(OwnerError::Insufficient { available, amount });
        }
        self.open_amount = self.open_amount.checked_add(amount).ok_or(OwnerError::Overflow)?;
        self.open.push(Entry::TransferOut { to, amount });
        Ok(())
    }

    /// Asks to end the chain: the next batch carries a close entry and no claim is admitted after.
    pub fn request_close(&mut self) {
        self.close_requested = true;
    }

    /// Closes the open batch into the chain, if there is something to close and no batch is in
    /// flight. The shell calls this when its batching timer fires.
    pub fn close_batch(&mut self, ledger: &Ledger, now_ms: Millis) -> Result<Vec<OwnerOutput>, OwnerError> {
        self.catch_up(ledger);
        if self.ended {
            return Err(OwnerError::ChainEnded);
        }
        if self.in_flight.is_some() || (self.open.is_empty() && !self.close_requested) {
            return Ok(Vec::new());
        }
        let seq = ledger.next_seq(&self.digest).unwrap_or(0);
        let prev = ledger.last_batch_id(&self.digest).unwrap_or(ZERO_DIGEST);
        let timestamp = now_ms.max(ledger.last_timestamp(&self.digest).unwrap_or(0));
        let base_total = ledger.chain_total(&self.digest).unwrap_or(0);
        let escrow = ledger.escrow(&self.digest)?;
        // Entries were admitted against the view of their time, which may have lagged (after a
        // restart, say). Judge them again against the ledger as it is now, so an honest owner
        // never sends a batch honest voters must refuse.
        let mut outputs = Vec::new();
        let mut entries: Vec<Entry> = Vec::new();
        let mut total_after = base_total;
        for entry in self.open.drain(..) {
            let refusal = match &entry {
                Entry::Claim(claim) => {
                    let slot = claim.slot();
                    match home_check(ledger, &claim.distribution_id, &claim.claimant, &self.digest) {
                        Home::ThisBucket { path } if path.iter().any(|bucket| ledger.slot_funded_in(bucket, &slot)) => {
                            Some(ClaimRefusal::DuplicateSlot)
                        }
                        Home::ThisBucket { .. } => None,
                        Home::NeedFreeze(home) => Some(ClaimRefusal::NotHomeBucket { home: Some(home) }),
                        Home::Elsewhere(home) => Some(ClaimRefusal::NotHomeBucket { home }),
                    }
                }
                Entry::TransferOut { .. } | Entry::Close => None,
            };
            let next_total = total_after.checked_add(entry.amount()).ok_or(OwnerError::Overflow)?;
            let refusal = refusal.or_else(|| {
                (next_total > escrow).then(|| ClaimRefusal::BucketExhausted {
                    available: escrow.saturating_sub(total_after),
                    amount: entry.amount(),
                })
            });
            match (refusal, entry) {
                (None, entry) => {
                    total_after = next_total;
                    entries.push(entry);
                }
                (Some(reason), Entry::Claim(claim)) => {
                    if matches!(reason, ClaimRefusal::BucketExhausted { .. }) {
                        self.starved = true;
                    }
                    outputs.push(OwnerOutput::Dropped { claim, reason });
                }
                // A transfer that no longer fits is dropped; the rebalancer asks again.
                (Some(_), _) => {}
            }
        }
        if self.close_requested {
            entries.push(Entry::Close);
        }
        self.open_slots.clear();
        self.open_amount = 0;
        self.open_outflow = 0;
        if entries.is_empty() {
            return Ok(outputs);
        }
        let batch = Batch::new(
            self.key,
            self.bucket.clone(),
            seq,
            prev,
            timestamp,
            entries,
            total_after,
        );
        self.in_flight = Some(batch.clone());
        outputs.push(OwnerOutput::PersistBatch(batch.clone()));
        outputs.push(OwnerOutput::SendBatch(batch));
        Ok(outputs)
    }

    /// Whether this claim is in the open or the in-flight batch already.
    pub fn holds(&self, id: &Digest) -> bool {
        self.open.iter().any(|e| matches!(e, Entry::Claim(c) if c.id == *id))
            || self.in_flight.as_ref().is_some_and(|b| b.claims().any(|c| c.id == *id))
    }

    fn open_claims(&self) -> usize {
        self.open
            .iter()
            .filter(|entry| matches!(entry, Entry::Claim(_)))
            .count()
    }

    /// Escrow not yet spoken for by the certified chain, the in-flight batch or the open batch.
    pub fn available(&self, ledger: &Ledger) -> Result<u64, OwnerError> {
        let escrow = ledger.escrow(&self.digest)?;
        let committed = match &self.in_flight {
            Some(batch) => batch.total_after,
            None => ledger.chain_total(&self.digest).unwrap_or(0),
        };
        let used = committed.checked_add(self.open_amount).ok_or(OwnerError::Overflow)?;
        Ok(escrow.saturating_sub(used))
    }
}
