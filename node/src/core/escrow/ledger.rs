//! The certified state: every bucket chain as built from certificates alone, the liquidity derived
//! from it, claim statuses and the state digest nodes compare after a partition heals.
//!
//! Who talks to it: the shell applies every certificate it learns ([`Ledger::apply`]); voters and
//! owners read it to judge and build batches; RPC reads liquidity and statuses.
//!
//! Certificates may arrive in any order. One that depends on something not yet applied (its
//! predecessor, its distribution, a credit that makes its total fit) waits in a bounded buffer and
//! is applied as soon as it fits, so the applied state is the same for every node holding the same
//! certificates, whatever the arrival order.
//!
//! Escrow is derived, not stored: `escrow(b) = share + transfers in + what frozen predecessors pass
//! on`. A frozen (or closed) bucket passes its remainder to its successor; a chain of frozen buckets
//! forwards it to the first live one, and a remainder with no live bucket to go to is *stranded*.
//! Deriving it from the applied set (not from the order of application) keeps every node's answer
//! identical.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use thiserror::Error;

use super::credential::CredentialView;
use super::distribution::{ActiveDistribution, BucketPlan, DistributionError};
use super::model::{
    Batch, Certificate, CertificateError, CertifiedObject, Claim, Distribution, Entry, Freeze, ValidatorSet,
    ZERO_DIGEST, slot_of,
};
use super::owner::ClaimRefusal;
use super::{Digest, Key, Millis};

/// Why a certificate cannot be applied (other than "not yet": see [`ApplyOutcome::Waiting`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LedgerError {
    #[error("invalid certificate: {0}")]
    Certificate(#[from] CertificateError),
    #[error("distribution cannot be activated: {0}")]
    Distribution(#[from] DistributionError),
    #[error("bucket {bucket:02x?} is not a bucket of its distribution")]
    UnknownBucket { bucket: Digest },
    #[error(
        "a different certificate exists at ({bucket:02x?}, {seq}): more than the fault threshold \
         misbehaved; keep both as evidence"
    )]
    ConflictingCertificate { bucket: Digest, seq: u64 },
    #[error("certified object at ({bucket:02x?}, {seq}) breaks the chain rules: {why}")]
    InvalidCertifiedObject {
        bucket: Digest,
        seq: u64,
        why: &'static str,
    },
    #[error("waiting buffer is full ({max} certificates): fetch predecessors first")]
    WaitingFull { max: usize },
    #[error("arithmetic overflow in ledger accounting")]
    Overflow,
}

/// What applying a certificate did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Applied, together with `released` waiting certificates it unblocked.
    Applied { released: usize },
    /// Already applied.
    Duplicate,
    /// Kept until what it depends on arrives.
    Waiting(WaitReason),
}

/// What a waiting certificate needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    Distribution(Digest),
    Predecessor {
        bucket: Digest,
        seq: u64,
    },
    /// Its total does not fit the escrow known here: a transfer or freeze certificate is missing.
    Credit {
        bucket: Digest,
    },
}

/// Where a claimant's claim is funded now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The live bucket that funds it; `path` runs from the original home through frozen buckets.
    Live { bucket: Digest, path: Vec<Digest> },
    /// Every bucket on the successor path is frozen: the claim cannot be funded.
    NoLiveBucket { path: Vec<Digest> },
}

/// A claim as certified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedClaim {
    pub claim: Claim,
    pub bucket: Digest,
    pub seq: u64,
    pub batch_timestamp: Millis,
}

impl CertifiedClaim {
    /// Certified but its credential was revoked at or before the batch: held, not credited.
    pub fn dispute(&self, credentials: &impl CredentialView) -> Option<Millis> {
        credentials
            .revocation(&self.claim.attestation_id)
            .filter(|revoked_at| *revoked_at <= self.batch_timestamp)
    }
}

/// One claim's place on the status ladder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimStatus {
    Received,
    Provisional {
        bucket: Digest,
        seq: u64,
    },
    Regional {
        bucket: Digest,
        seq: u64,
    },
    Global {
        bucket: Digest,
        seq: u64,
    },
    Disputed {
        bucket: Digest,
        seq: u64,
        revoked_at: Millis,
    },
    Rejected {
        reason: ClaimRefusal,
    },
}

/// The hook through which heartbeat frontiers promote `regional` to `global`.
pub trait GlobalView {
    /// Whether every region's quorum reports a frontier at or past `(bucket, seq)`.
    fn is_global(&self, bucket: &Digest, seq: u64) -> bool;
}

/// A view that knows no frontiers: nothing is global yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGlobalView;

impl GlobalView for NoGlobalView {
    fn is_global(&self, _bucket: &Digest, _seq: u64) -> bool {
        false
    }
}

/// One bucket's liquidity, derived from certificates (and, for `pending` and `disputed`, from
/// the provisional batches and revocations this node knows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketLiquidity {
    pub bucket: Digest,
    pub region: String,
    pub owner: Key,
    pub share: u64,
    /// share + transfers in + remainders passed on by frozen predecessors.
    pub escrow: u64,
    /// Certified claim outflow (disputed claims included: they are spent, only held).
    pub spent: u64,
    /// Provisional outflow sequenced by the owner and not yet certified.
    pub pending: u64,
    /// What a live bucket can still spend (escrow − spent − transferred out); 0 once ended.
    pub available: u64,
    pub disputed: u64,
    /// Remainder of an ended bucket with no live successor to take it.
    pub stranded: u64,
    /// Remainder of an ended bucket passed on to its successor.
    pub passed_on: u64,
    pub transferred_in: u64,
    pub transferred_out: u64,
    pub ended: bool,
}

/// Sums of [`BucketLiquidity`] over a region or a whole distribution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiquidityTotals {
    pub share: u64,
    pub escrow: u64,
    pub spent: u64,
    pub pending: u64,
    pub available: u64,
    pub disputed: u64,
    pub stranded: u64,
    pub passed_on: u64,
    pub transferred_in: u64,
    pub transferred_out: u64,
}

impl LiquidityTotals {
    fn add(&mut self, bucket: &BucketLiquidity) -> Result<(), LedgerError> {
        let sum = |a: u64, b: u64| a.checked_add(b).ok_or(LedgerError::Overflow);
        self.share = sum(self.share, bucket.share)?;
        self.escrow = sum(self.escrow, bucket.escrow)?;
        self.spent = sum(self.spent, bucket.spent)?;
        self.pending = sum(self.pending, bucket.pending)?;
        self.available = sum(self.available, bucket.available)?;
        self.disputed = sum(self.disputed, bucket.disputed)?;
        self.stranded = sum(self.stranded, bucket.stranded)?;
        self.passed_on = sum(self.passed_on, bucket.passed_on)?;
        self.transferred_in = sum(self.transferred_in, bucket.transferred_in)?;
        self.transferred_out = sum(self.transferred_out, bucket.transferred_out)?;
        Ok(())
    }
}

/// Liquidity of one distribution at every level: the whole, each region, each bucket.
///
/// **Invariant** (per region and overall): `share + transferred_in = spent + transferred_out +
/// available + stranded`; over the whole distribution transfers cancel, so
/// `total = spent + available + stranded`. A region's totals leave out transfers between its own
/// buckets (need-driven transfers): they cancel inside it, so its escrow is its allocation plus
/// what other regions moved in, whatever moves inside it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiquidityReport {
    pub distribution: LiquidityTotals,
    pub regions: BTreeMap<String, LiquidityTotals>,
    pub buckets: Vec<BucketLiquidity>,
}

/// The certified state of every known distribution.
#[derive(Debug, Clone)]
pub struct Ledger {
    validators: ValidatorSet,
    distributions: BTreeMap<Digest, ActiveDistribution>,
    /// Bucket digest to its distribution id.
    bucket_distribution: BTreeMap<Digest, Digest>,
    chains: BTreeMap<Digest, Chain>,
    claims: BTreeMap<Digest, CertifiedClaim>,
    waiting: BTreeMap<(Digest, u64), Certificate>,
    waiting_max: usize,
    /// Newest uncertified batch known per bucket (pending liquidity, provisional statuses).
    provisional: BTreeMap<Digest, Batch>,
    provisional_claims: BTreeMap<Digest, (Digest, u64)>,
    received: BTreeSet<Digest>,
    rejected: BTreeMap<Digest, ClaimRefusal>,
}

/// One bucket's certified chain.
#[derive(Debug, Clone, Default)]
struct Chain {
    /// Certified object id per seq (the last may be a freeze).
    certified: Vec<Digest>,
    last_batch_id: Option<Digest>,
    last_timestamp: Millis,
    /// Cumulative outflow: claims and transfers out.
    total: u64,
    spent: u64,
    transferred_out: u64,
    transferred_in: u64,
    slots: BTreeSet<Digest>,
    claim_ids: Vec<Digest>,
    /// (timestamp, claim outflow) of recent batches, pruned beyond the breaker window.
    recent: VecDeque<(Millis, u64)>,
    /// Per destination bucket: the seq of the last certified batch that transferred to it, and
    /// the total moved to it (at most one entry per bucket of the distribution).
    transfers_to: BTreeMap<Digest, (u64, u64)>,
    ended: bool,
}

impl Chain {
    fn next_seq(&self) -> u64 {
        self.certified.len() as u64
    }
}

/// Derived escrow flows of one region of one distribution.
#[derive(Debug, Default)]
struct Flows {
    escrow: BTreeMap<Digest, u64>,
    passed_on: BTreeMap<Digest, u64>,
    stranded: BTreeMap<Digest, u64>,
}

impl Ledger {
    /// `waiting_max` bounds the certificates kept while their dependencies are missing.
    pub fn new(validators: ValidatorSet, waiting_max: usize) -> Self {
        Self {
            validators,
            distributions: BTreeMap::new(),
            bucket_distribution: BTreeMap::new(),
            chains: BTreeMap::new(),
            claims: BTreeMap::new(),
            waiting: BTreeMap::new(),
            waiting_max,
            provisional: BTreeMap::new(),
            provisional_claims: BTreeMap::new(),
            received: BTreeSet::new(),
            rejected: BTreeMap::new(),
        }
    }

    pub fn validators(&self) -> &ValidatorSet {
        &self.validators
    }

    /// Activates a distribution (idempotent) and applies certificates that waited for it.
    pub fn add_distribution(&mut self, distribution: Distribution) -> Result<usize, LedgerError> {
        if self.distributions.contains_key(&distribution.id) {
            return Ok(0);
        }
        let active = ActiveDistribution::activate(distribution, &self.validators)?;
        for bucket in active.buckets() {
            self.bucket_distribution.insert(bucket.digest, active.id());
            self.chains.insert(bucket.digest, Chain::default());
        }
        self.distributions.insert(active.id(), active);
        Ok(self.release_waiting())
    }

    pub fn distribution(&self, id: &Digest) -> Option<&ActiveDistribution> {
        self.distributions.get(id)
    }

    pub fn distributions(&self) -> impl Iterator<Item = &ActiveDistribution> {
        self.distributions.values()
    }

    /// The bucket's plan and its distribution.
    pub fn bucket(&self, bucket: &Digest) -> Option<(&ActiveDistribution, &BucketPlan)> {
        let distribution = self.distributions.get(self.bucket_distribution.get(bucket)?)?;
        Some((distribution, distribution.bucket(bucket)?))
    }

    /// The next seq to certify (= number of certified positions), None for an unknown bucket.
    pub fn next_seq(&self, bucket: &Digest) -> Option<u64> {
        self.chains.get(bucket).map(Chain::next_seq)
    }

    /// The certified object id at `(bucket, seq)`.
    pub fn certified_id(&self, bucket: &Digest, seq: u64) -> Option<Digest> {
        let chain = self.chains.get(bucket)?;
        chain.certified.get(usize::try_from(seq).ok()?).copied()
    }

    /// Id of the last certified batch: the `prev` of the next one.
    pub fn last_batch_id(&self, bucket: &Digest) -> Option<Digest> {
        self.chains.get(bucket)?.last_batch_id
    }

    pub fn chain_total(&self, bucket: &Digest) -> Option<u64> {
        self.chains.get(bucket).map(|chain| chain.total)
    }

    /// Certified claim outflow of the bucket's chain.
    pub fn spent(&self, bucket: &Digest) -> Option<u64> {
        self.chains.get(bucket).map(|chain| chain.spent)
    }

    /// The seq of the last certified batch of `from` that carried a transfer to `to`.
    pub fn last_transfer_seq(&self, from: &Digest, to: &Digest) -> Option<u64> {
        self.chains.get(from)?.transfers_to.get(to).map(|(seq, _)| *seq)
    }

    /// What each live bucket of one region of a distribution can still spend, as certified here
    /// (escrow − certified outflow), in one pass over the region. Ended buckets are left out.
    pub fn available_in_region(
        &self,
        distribution_id: &Digest,
        region: &str,
    ) -> Result<BTreeMap<Digest, u64>, LedgerError> {
        let Some(distribution) = self.distributions.get(distribution_id) else {
            return Ok(BTreeMap::new());
        };
        let flows = self.region_flows(distribution, region)?;
        let mut available = BTreeMap::new();
        for digest in distribution.region_buckets(region) {
            let chain = self
                .chains
                .get(digest)
                .ok_or(LedgerError::UnknownBucket { bucket: *digest })?;
            if chain.ended {
                continue;
            }
            let escrow = flows.escrow.get(digest).copied().unwrap_or(0);
            available.insert(*digest, escrow.checked_sub(chain.total).ok_or(LedgerError::Overflow)?);
        }
        Ok(available)
    }

    pub fn last_timestamp(&self, bucket: &Digest) -> Option<Millis> {
        self.chains.get(bucket).map(|chain| chain.last_timestamp)
    }

    /// Whether the chain is closed by a certified freeze or close entry.
    pub fn is_ended(&self, bucket: &Digest) -> bool {
        self.chains.get(bucket).is_some_and(|chain| chain.ended)
    }

    pub fn slot_funded_in(&self, bucket: &Digest, slot: &Digest) -> bool {
        self.chains.get(bucket).is_some_and(|chain| chain.slots.contains(slot))
    }

    pub fn certified_claim(&self, claim_id: &Digest) -> Option<&CertifiedClaim> {
        self.claims.get(claim_id)
    }

    pub fn certified_claims(&self) -> impl Iterator<Item = &CertifiedClaim> {
        self.claims.values()
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Where a claimant's claim is funded now: its home, or the first live successor of it.
    pub fn route(&self, distribution_id: &Digest, claimant: &Key) -> Option<Route> {
        let distribution = self.distributions.get(distribution_id)?;
        let mut current = distribution.home_bucket(claimant)?;
        let mut path = vec![current];
        loop {
            if !self.is_ended(&current) {
                return Some(Route::Live { bucket: current, path });
            }
            match distribution.successor(&current) {
                Some(next) if !path.contains(&next) => {
                    path.push(next);
                    current = next;
                }
                _ => return Some(Route::NoLiveBucket { path }),
            }
        }
    }

    /// Claim outflow of the bucket's certified batches inside the breaker window ending at
    /// `timestamp`: `(timestamp - window, timestamp]`.
    pub fn outflow_in_window(&self, bucket: &Digest, timestamp: Millis) -> Option<u64> {
        let (distribution, _) = self.bucket(bucket)?;
        let window = distribution.distribution().outflow_window_ms;
        let chain = self.chains.get(bucket)?;
        let from = timestamp.saturating_sub(window);
        Some(
            chain
                .recent
                .iter()
                .filter(|(at, _)| *at > from && *at <= timestamp)
                .fold(0u64, |acc, (_, amount)| acc.saturating_add(*amount)),
        )
    }

    /// The bucket's escrow as certified here (share + credits + inherited remainders).
    pub fn escrow(&self, bucket: &Digest) -> Result<u64, LedgerError> {
        let (distribution, plan) = self
            .bucket(bucket)
            .ok_or(LedgerError::UnknownBucket { bucket: *bucket })?;
        let region = distribution.region_buckets(&plan.id.region);
        if !region
            .iter()
            .any(|d| self.chains.get(d).is_some_and(|chain| chain.ended))
        {
            // No ended bucket passes anything on in this region (the common
            // case): the escrow is the share plus transfers in.
            let chain = self
                .chains
                .get(bucket)
                .ok_or(LedgerError::UnknownBucket { bucket: *bucket })?;
            return plan
                .share
                .checked_add(chain.transferred_in)
                .ok_or(LedgerError::Overflow);
        }
        let flows = self.region_flows(distribution, &plan.id.region)?;
        Ok(flows.escrow.get(bucket).copied().unwrap_or(0))
    }

    /// Applies a certificate, or keeps it until its dependencies arrive.
    pub fn apply(&mut self, certificate: Certificate) -> Result<ApplyOutcome, LedgerError> {
        certificate.check(&self.validators)?;
        match self.try_apply(&certificate)? {
            Step::Applied => Ok(ApplyOutcome::Applied {
                released: self.release_waiting(),
            }),
            Step::Duplicate => Ok(ApplyOutcome::Duplicate),
            Step::Wait(reason) => {
                let bucket = certificate.object.bucket().digest();
                let seq = certificate.object.seq().unwrap_or(u64::MAX);
                if let Some(existing) = self.waiting.get(&(bucket, seq)) {
                    if existing.object.id() != certificate.object.id() {
                        return Err(LedgerError::ConflictingCertificate { bucket, seq });
                    }
                    return Ok(ApplyOutcome::Waiting(reason));
                }
                if self.waiting.len() >= self.waiting_max {
                    return Err(LedgerError::WaitingFull { max: self.waiting_max });
                }
                self.waiting.insert((bucket, seq), certificate);
                Ok(ApplyOutcome::Waiting(reason))
            }
        }
    }

    /// Records the newest uncertified batch of a bucket (pending liquidity, provisional status).
    pub fn note_provisional(&mut self, batch: &Batch) {
        let bucket = batch.bucket.digest();
        let Some(next) = self.next_seq(&bucket) else {
            return;
        };
        if batch.seq < next {
            return;
        }
        if self
            .provisional
            .get(&bucket)
            .is_some_and(|known| known.seq >= batch.seq)
        {
            return;
        }
        for claim in batch.claims() {
            self.provisional_claims.insert(claim.id, (bucket, batch.seq));
        }
        self.provisional.insert(bucket, batch.clone());
    }

    /// Records that a valid claim was seen and waits for its owner.
    pub fn note_received(&mut self, claim_id: Digest) {
        self.received.insert(claim_id);
    }

    /// Records a claim refused with a reason.
    pub fn note_rejected(&mut self, claim_id: Digest, reason: ClaimRefusal) {
        self.rejected.insert(claim_id, reason);
    }

    /// The claim's status: the highest rung this node can vouch for.
    pub fn claim_status(
        &self,
        claim_id: &Digest,
        credentials: &impl CredentialView,
        global: &impl GlobalView,
    ) -> Option<ClaimStatus> {
        if let Some(certified) = self.claims.get(claim_id) {
            let (bucket, seq) = (certified.bucket, certified.seq);
            if let Some(revoked_at) = certified.dispute(credentials) {
                return Some(ClaimStatus::Disputed {
                    bucket,
                    seq,
                    revoked_at,
                });
            }
            if global.is_global(&bucket, seq) {
                return Some(ClaimStatus::Global { bucket, seq });
            }
            return Some(ClaimStatus::Regional { bucket, seq });
        }
        if let Some((bucket, seq)) = self.provisional_claims.get(claim_id) {
            // A provisional batch the chain passed by is stale: the claim was not in what got
            // certified at that seq.
            if self.next_seq(bucket).is_some_and(|next| *seq >= next) {
                return Some(ClaimStatus::Provisional {
                    bucket: *bucket,
                    seq: *seq,
                });
            }
        }
        if let Some(reason) = self.rejected.get(claim_id) {
            return Some(ClaimStatus::Rejected { reason: reason.clone() });
        }
        self.received.contains(claim_id).then_some(ClaimStatus::Received)
    }

    /// Liquidity of every bucket of a distribution, in bucket-digest order.
    pub fn liquidity(
        &self,
        distribution_id: &Digest,
        credentials: &impl CredentialView,
    ) -> Result<Vec<BucketLiquidity>, LedgerError> {
        let Some(distribution) = self.distributions.get(distribution_id) else {
            return Ok(Vec::new());
        };
        let mut flows = Flows::default();
        for region in distribution.regions() {
            let region_flows = self.region_flows(distribution, region)?;
            flows.escrow.extend(region_flows.escrow);
            flows.passed_on.extend(region_flows.passed_on);
            flows.stranded.extend(region_flows.stranded);
        }
        let mut out = Vec::new();
        for plan in distribution.buckets() {
            let chain = self
                .chains
                .get(&plan.digest)
                .ok_or(LedgerError::UnknownBucket { bucket: plan.digest })?;
            let escrow = flows.escrow.get(&plan.digest).copied().unwrap_or(0);
            let available = if chain.ended {
                0
            } else {
                escrow.checked_sub(chain.total).ok_or(LedgerError::Overflow)?
            };
            let pending = self
                .provisional
                .get(&plan.digest)
                .filter(|batch| batch.seq >= chain.next_seq())
                .map_or(0, |batch| batch.total_after.saturating_sub(chain.total));
            let disputed = chain
                .claim_ids
                .iter()
                .filter_map(|id| self.claims.get(id))
                .filter(|certified| certified.dispute(credentials).is_some())
                .try_fold(0u64, |acc, certified| acc.checked_add(certified.claim.amount))
                .ok_or(LedgerError::Overflow)?;
            out.push(BucketLiquidity {
                bucket: plan.digest,
                region: plan.id.region.clone(),
                owner: plan.id.owner,
                share: plan.share,
                escrow,
                spent: chain.spent,
                pending,
                available,
                disputed,
                stranded: flows.stranded.get(&plan.digest).copied().unwrap_or(0),
                passed_on: flows.passed_on.get(&plan.digest).copied().unwrap_or(0),
                transferred_in: chain.transferred_in,
                transferred_out: chain.transferred_out,
                ended: chain.ended,
            });
        }
        Ok(out)
    }

    /// Liquidity of a distribution summed per region and overall.
    pub fn liquidity_report(
        &self,
        distribution_id: &Digest,
        credentials: &impl CredentialView,
    ) -> Result<LiquidityReport, LedgerError> {
        let buckets = self.liquidity(distribution_id, credentials)?;
        let mut report = LiquidityReport::default();
        for bucket in &buckets {
            report.distribution.add(bucket)?;
            report.regions.entry(bucket.region.clone()).or_default().add(bucket)?;
        }
        // Transfers inside a region cancel in its totals.
        let region_of: BTreeMap<Digest, &str> = buckets.iter().map(|b| (b.bucket, b.region.as_str())).collect();
        for bucket in &buckets {
            let Some(chain) = self.chains.get(&bucket.bucket) else {
                continue;
            };
            let inside = chain
                .transfers_to
                .iter()
                .filter(|(to, _)| region_of.get(*to) == Some(&bucket.region.as_str()))
                .try_fold(0u64, |acc, (_, (_, amount))| acc.checked_add(*amount))
                .ok_or(LedgerError::Overflow)?;
            if inside == 0 {
                continue;
            }
            let region = report.regions.entry(bucket.region.clone()).or_default();
            let less = |a: u64| a.checked_sub(inside).ok_or(LedgerError::Overflow);
            region.escrow = less(region.escrow)?;
            region.transferred_in = less(region.transferred_in)?;
            region.transferred_out = less(region.transferred_out)?;
        }
        report.buckets = buckets;
        Ok(report)
    }

    /// Credited amount per recipient over all certified claims, disputed ones excluded.
    pub fn recipient_balances(
        &self,
        credentials: &impl CredentialView,
    ) -> Result<BTreeMap<(Digest, Key), u64>, LedgerError> {
        let mut balances: BTreeMap<(Digest, Key), u64> = BTreeMap::new();
        for certified in self.claims.values() {
            if certified.dispute(credentials).is_some() {
                continue;
            }
            let balance = balances
                .entry((certified.claim.distribution_id, certified.claim.recipient))
                .or_insert(0);
            *balance = balance
                .checked_add(certified.claim.amount)
                .ok_or(LedgerError::Overflow)?;
        }
        Ok(balances)
    }

    /// A digest of the certified state in a fixed order. Two nodes holding the same certificates
    /// have the same digest, whatever order the certificates arrived in.
    pub fn state_digest(&self) -> Digest {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"credence/escrow/v1/state");
        for (id, distribution) in &self.distributions {
            hasher.update(id);
            for plan in distribution.buckets() {
                let Some(chain) = self.chains.get(&plan.digest) else {
                    continue;
                };
                hasher.update(&plan.digest);
                hasher.update(&chain.next_seq().to_le_bytes());
                hasher.update(chain.certified.last().unwrap_or(&ZERO_DIGEST));
                hasher.update(&chain.total.to_le_bytes());
                hasher.update(&chain.transferred_in.to_le_bytes());
                hasher.update(&[u8::from(chain.ended)]);
            }
        }
        *hasher.finalize().as_bytes()
    }

    fn release_waiting(&mut self) -> usize {
        let mut released: usize = 0;
        loop {
            let mut progress = false;
            let keys: Vec<(Digest, u64)> = self.waiting.keys().copied().collect();
            for key in keys {
                let Some(certificate) = self.waiting.remove(&key) else {
                    continue;
                };
                match self.try_apply(&certificate) {
                    Ok(Step::Applied) => {
                        progress = true;
                        released = released.saturating_add(1);
                    }
                    Ok(Step::Wait(_)) => {
                        self.waiting.insert(key, certificate);
                    }
                    // A duplicate or a certificate that can never apply leaves the buffer.
                    Ok(Step::Duplicate) | Err(_) => {}
                }
            }
            if !progress {
                return released;
            }
        }
    }

    fn try_apply(&mut self, certificate: &Certificate) -> Result<Step, LedgerError> {
        let bucket_id = certificate.object.bucket();
        let Some(distribution) = self.distributions.get(&bucket_id.distribution) else {
            return Ok(Step::Wait(WaitReason::Distribution(bucket_id.distribution)));
        };
        let bucket = bucket_id.digest();
        if distribution.bucket(&bucket).is_none() {
            return Err(LedgerError::UnknownBucket { bucket });
        }
        let chain = self.chains.get(&bucket).ok_or(LedgerError::UnknownBucket { bucket })?;
        let seq = certificate
            .object
            .seq()
            .ok_or(LedgerError::Certificate(CertificateError::SeqOverflow))?;
        let next = chain.next_seq();
        if seq < next {
            return if self.certified_id(&bucket, seq) == Some(certificate.object.id()) {
                Ok(Step::Duplicate)
            } else {
                Err(LedgerError::ConflictingCertificate { bucket, seq })
            };
        }
        if chain.ended {
            return Err(LedgerError::InvalidCertifiedObject {
                bucket,
                seq,
                why: "chain already ended",
            });
        }
        if seq > next {
            return Ok(Step::Wait(WaitReason::Predecessor { bucket, seq: next }));
        }
        match &certificate.object {
            CertifiedObject::Batch(batch) => self.apply_batch(bucket, batch),
            CertifiedObject::Freeze(freeze) => self.apply_freeze(bucket, freeze),
        }
    }

    fn apply_batch(&mut self, bucket: Digest, batch: &Batch) -> Result<Step, LedgerError> {
        let seq = batch.seq;
        let invalid = |why| LedgerError::InvalidCertifiedObject { bucket, seq, why };
        let chain = self.chains.get(&bucket).ok_or(LedgerError::UnknownBucket { bucket })?;
        if batch.signer != batch.bucket.owner {
            return Err(invalid("batch not signed by the bucket owner"));
        }
        if batch.prev != chain.last_batch_id.unwrap_or(ZERO_DIGEST) {
            return Err(invalid("prev does not match the certified chain"));
        }
        if batch.timestamp < chain.last_timestamp {
            return Err(invalid("timestamp goes backwards"));
        }
        let mut total = chain.total;
        let mut spent: u64 = 0;
        let mut out: u64 = 0;
        let mut slots = BTreeSet::new();
        for entry in &batch.entries {
            total = total
                .checked_add(entry.amount())
                .ok_or_else(|| invalid("total overflows"))?;
            match entry {
                Entry::Claim(claim) => {
                    let slot = slot_of(&claim.distribution_id, &claim.claimant);
                    if chain.slots.contains(&slot) || !slots.insert(slot) {
                        return Err(invalid("slot funded twice"));
                    }
                    spent = spent.checked_add(claim.amount).ok_or(LedgerError::Overflow)?;
                }
                Entry::TransferOut { to, amount } => {
                    let to_digest = to.digest();
                    if to.distribution != batch.bucket.distribution
                        || to_digest == bucket
                        || !self.chains.contains_key(&to_digest)
                    {
                        return Err(invalid("transfer to an invalid bucket"));
                    }
                    out = out.checked_add(*amount).ok_or(LedgerError::Overflow)?;
                }
                Entry::Close => {}
            }
        }
        if total != batch.total_after {
            return Err(invalid("total_after is not previous total plus entries"));
        }
        if total > self.escrow(&bucket)? {
            return Ok(Step::Wait(WaitReason::Credit { bucket }));
        }
        let window = self
            .bucket(&bucket)
            .map_or(0, |(d, _)| d.distribution().outflow_window_ms);
        // Credit the destinations first (checked), then commit the source chain.
        let mut credits: Vec<(Digest, u64)> = Vec::new();
        for entry in &batch.entries {
            if let Entry::TransferOut { to, amount } = entry {
                let to_digest = to.digest();
                let current = self.chains.get(&to_digest).map_or(0, |chain| chain.transferred_in);
                let already = credits
                    .iter()
                    .filter(|(digest, _)| *digest == to_digest)
                    .try_fold(0u64, |acc, (_, a)| acc.checked_add(*a))
                    .ok_or(LedgerError::Overflow)?;
                current
                    .checked_add(already)
                    .and_then(|sum| sum.checked_add(*amount))
                    .ok_or(LedgerError::Overflow)?;
                credits.push((to_digest, *amount));
            }
        }
        let chain = self
            .chains
            .get_mut(&bucket)
            .ok_or(LedgerError::UnknownBucket { bucket })?;
        let new_spent = chain.spent.checked_add(spent).ok_or(LedgerError::Overflow)?;
        let new_out = chain.transferred_out.checked_add(out).ok_or(LedgerError::Overflow)?;
        chain.certified.push(batch.id);
        chain.last_batch_id = Some(batch.id);
        chain.last_timestamp = batch.timestamp;
        chain.total = total;
        chain.spent = new_spent;
        chain.transferred_out = new_out;
        chain.slots.extend(slots);
        for (to, amount) in &credits {
            let moved = chain.transfers_to.entry(*to).or_insert((seq, 0));
            // Bounded by the chain's transferred_out, checked above.
            *moved = (seq, moved.1.saturating_add(*amount));
        }
        chain.recent.push_back((batch.timestamp, spent));
        let horizon = batch.timestamp.saturating_sub(window);
        while chain.recent.front().is_some_and(|(at, _)| *at <= horizon) {
            chain.recent.pop_front();
        }
        if batch.closes_chain() {
            chain.ended = true;
        }
        for claim in batch.claims() {
            chain.claim_ids.push(claim.id);
            self.claims.insert(
                claim.id,
                CertifiedClaim {
                    claim: claim.clone(),
                    bucket,
                    seq,
                    batch_timestamp: batch.timestamp,
                },
            );
        }
        for (to, amount) in credits {
            if let Some(target) = self.chains.get_mut(&to) {
                // Checked above; saturating keeps this path panic-free regardless.
                target.transferred_in = target.transferred_in.saturating_add(amount);
            }
        }
        debug_assert!(
            self.escrow(&bucket).is_ok_and(|escrow| total <= escrow),
            "certified total passed the bucket's escrow"
        );
        Ok(Step::Applied)
    }

    fn apply_freeze(&mut self, bucket: Digest, freeze: &Freeze) -> Result<Step, LedgerError> {
        let seq = freeze.position().unwrap_or(u64::MAX);
        let proposer_ok = self
            .validators
            .get(&freeze.signer)
            .is_some_and(|validator| validator.region == freeze.bucket.region);
        if !proposer_ok {
            return Err(LedgerError::InvalidCertifiedObject {
                bucket,
                seq,
                why: "freeze not proposed by a validator of the bucket's region",
            });
        }
        if let Some(pending) = &freeze.pending {
            let matches =
                freeze.last_seq == Some(pending.seq) && self.certified_id(&bucket, pending.seq) == Some(pending.id);
            if !matches {
                return Err(LedgerError::InvalidCertifiedObject {
                    bucket,
                    seq,
                    why: "freeze carries a pending batch that is not the certified one",
                });
            }
        }
        let chain = self
            .chains
            .get_mut(&bucket)
            .ok_or(LedgerError::UnknownBucket { bucket })?;
        chain.certified.push(freeze.id);
        chain.ended = true;
        self.provisional.remove(&bucket);
        Ok(Step::Applied)
    }

    /// Escrow flows of one region: live buckets' escrow, ended buckets' remainders passed on or
    /// stranded. Order-independent: a function of the applied chains only.
    fn region_flows(&self, distribution: &ActiveDistribution, region: &str) -> Result<Flows, LedgerError> {
        let buckets = distribution.region_buckets(region);
        let mut base: BTreeMap<Digest, u64> = BTreeMap::new();
        let mut inflow: BTreeMap<Digest, u64> = BTreeMap::new();
        let mut ended: BTreeSet<Digest> = BTreeSet::new();
        for digest in buckets {
            let share = distribution.bucket(digest).map_or(0, |plan| plan.share);
            let chain = self
                .chains
                .get(digest)
                .ok_or(LedgerError::UnknownBucket { bucket: *digest })?;
            base.insert(
                *digest,
                share.checked_add(chain.transferred_in).ok_or(LedgerError::Overflow)?,
            );
            inflow.insert(*digest, 0);
            if chain.ended {
                ended.insert(*digest);
            }
        }
        // Kahn's algorithm over ended buckets: a remainder moves on once all ended predecessors
        // have passed theirs in.
        let mut indegree: BTreeMap<Digest, usize> = ended.iter().map(|d| (*d, 0)).collect();
        for digest in &ended {
            if let Some(next) = distribution.successor(digest)
                && let Some(count) = indegree.get_mut(&next)
            {
                *count = count.saturating_add(1);
            }
        }
        let mut ready: VecDeque<Digest> = indegree
            .iter()
            .filter(|(_, count)| **count == 0)
            .map(|(digest, _)| *digest)
            .collect();
        let mut flows = Flows::default();
        let mut done: BTreeSet<Digest> = BTreeSet::new();
        let total_of = |digest: &Digest| self.chains.get(digest).map_or(0, |chain| chain.total);
        while let Some(digest) = ready.pop_front() {
            done.insert(digest);
            let escrow = base
                .get(&digest)
                .copied()
                .unwrap_or(0)
                .checked_add(inflow.get(&digest).copied().unwrap_or(0))
                .ok_or(LedgerError::Overflow)?;
            flows.escrow.insert(digest, escrow);
            let remainder = escrow.checked_sub(total_of(&digest)).ok_or(LedgerError::Overflow)?;
            match distribution.successor(&digest) {
                None => {
                    flows.stranded.insert(digest, remainder);
                }
                Some(next) => {
                    flows.passed_on.insert(digest, remainder);
                    let slot = inflow.entry(next).or_insert(0);
                    *slot = slot.checked_add(remainder).ok_or(LedgerError::Overflow)?;
                    if let Some(count) = indegree.get_mut(&next) {
                        *count = count.saturating_sub(1);
                        if *count == 0 {
                            ready.push_back(next);
                        }
                    }
                }
            }
        }
        // Ended buckets left over sit on cycles of ended buckets: what they hold together has
        // nowhere to go. It is stranded, booked on the cycle's lowest bucket.
        let mut cycle_members: Vec<Digest> = ended.difference(&done).copied().collect();
        while let Some(start) = cycle_members.first().copied() {
            let mut members = vec![start];
            let mut current = start;
            while let Some(next) = distribution.successor(&current) {
                if members.contains(&next) || !cycle_members.contains(&next) {
                    break;
                }
                members.push(next);
                current = next;
            }
            let mut held: u64 = 0;
            let mut used: u64 = 0;
            for member in &members {
                let escrow = base
                    .get(member)
                    .copied()
                    .unwrap_or(0)
                    .checked_add(inflow.get(member).copied().unwrap_or(0))
                    .ok_or(LedgerError::Overflow)?;
                flows.escrow.insert(*member, escrow);
                held = held.checked_add(escrow).ok_or(LedgerError::Overflow)?;
                used = used.checked_add(total_of(member)).ok_or(LedgerError::Overflow)?;
            }
            let lowest = members.iter().min().copied().unwrap_or(start);
            flows
                .stranded
                .insert(lowest, held.checked_sub(used).ok_or(LedgerError::Overflow)?);
            cycle_members.retain(|digest| !members.contains(digest));
        }
        for digest in buckets {
            if !ended.contains(digest) {
                let escrow = base
                    .get(digest)
                    .copied()
                    .unwrap_or(0)
                    .checked_add(inflow.get(digest).copied().unwrap_or(0))
                    .ok_or(LedgerError::Overflow)?;
                flows.escrow.insert(*digest, escrow);
            }
        }
        Ok(flows)
    }
}

/// The result of one attempt to apply a certificate.
enum Step {
    Applied,
    Duplicate,
    Wait(WaitReason),
}
