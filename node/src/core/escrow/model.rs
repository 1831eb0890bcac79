//! Protocol objects as the core sees them (already decoded and signature-checked by the shell):
//! validators, distributions, buckets, claims, batches, freezes, votes, locks and certificates,
//! plus the content digests that name batches, freezes and buckets.
//!
//! Batch and freeze ids are digests of their fields (not of a signed envelope) so that an owner
//! knows the id of a batch before it is signed and can chain the next one to it.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use super::{Digest, Key, Millis};

/// The `prev` of a chain's first batch.
pub const ZERO_DIGEST: Digest = [0; 32];

/// blake3 over a domain tag and length-prefixed parts: no two different part lists share a digest.
pub fn digest_parts(tag: &str, parts: &[&[u8]]) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"credence/escrow/v1/");
    hasher.update(&(tag.len() as u64).to_le_bytes());
    hasher.update(tag.as_bytes());
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    *hasher.finalize().as_bytes()
}

/// A claimant's slot in a distribution: the unit that may be paid at most once.
pub fn slot_of(distribution_id: &Digest, claimant: &Key) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(distribution_id);
    hasher.update(claimant);
    *hasher.finalize().as_bytes()
}

/// Errors building the static model (validator set) from genesis.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModelError {
    #[error("validator {key:02x?} listed twice in genesis: keep one entry per key")]
    DuplicateValidator { key: Key },
    #[error("the weights of region {region:?} overflow u64: lower the weights in genesis")]
    WeightOverflow { region: String },
}

/// How many faulty validators the certificate threshold tolerates (genesis
/// `fault_model`: `byzantine` or `crash`). The one definition: the genesis
/// parser reads it, the quorum rules use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultModel {
    /// Certificates need more than 2/3 of a region's weight.
    #[default]
    Byzantine,
    /// Certificates need more than 1/2 of a region's weight (trusted validators).
    Crash,
}

impl FaultModel {
    /// The certificate threshold as a fraction `num/den` of a region's weight,
    /// to be passed strictly: 2/3 Byzantine, 1/2 crash. Every quorum rule of
    /// the protocol and of the delay-aware views uses this one.
    pub const fn threshold(self) -> (u64, u64) {
        match self {
            FaultModel::Byzantine => (2, 3),
            FaultModel::Crash => (1, 2),
        }
    }
}

/// A voting node, listed in genesis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validator {
    pub key: Key,
    pub region: String,
    pub weight: u64,
}

/// The genesis validator set, indexed by key and by region.
#[derive(Debug, Clone)]
pub struct ValidatorSet {
    fault_model: FaultModel,
    by_key: BTreeMap<Key, Validator>,
    /// Members of each region, sorted by key (the deterministic order every node uses).
    regions: BTreeMap<String, Vec<Key>>,
    region_weight: BTreeMap<String, u64>,
}

impl ValidatorSet {
    pub fn new(validators: Vec<Validator>, fault_model: FaultModel) -> Result<Self, ModelError> {
        let mut by_key = BTreeMap::new();
        let mut regions: BTreeMap<String, Vec<Key>> = BTreeMap::new();
        let mut region_weight: BTreeMap<String, u64> = BTreeMap::new();
        for validator in validators {
            if by_key.contains_key(&validator.key) {
                return Err(ModelError::DuplicateValidator { key: validator.key });
            }
            let weight = region_weight.entry(validator.region.clone()).or_insert(0);
            *weight = weight
                .checked_add(validator.weight)
                .ok_or_else(|| ModelError::WeightOverflow {
                    region: validator.region.clone(),
                })?;
            regions.entry(validator.region.clone()).or_default().push(validator.key);
            by_key.insert(validator.key, validator);
        }
        for members in regions.values_mut() {
            members.sort_unstable();
        }
        Ok(Self {
            fault_model,
            by_key,
            regions,
            region_weight,
        })
    }

    pub fn fault_model(&self) -> FaultModel {
        self.fault_model
    }

    pub fn get(&self, key: &Key) -> Option<&Validator> {
        self.by_key.get(key)
    }

    /// Members of `region`, sorted by key; empty for an unknown region.
    pub fn members(&self, region: &str) -> &[Key] {
        self.regions.get(region).map_or(&[], Vec::as_slice)
    }

    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.regions.keys().map(String::as_str)
    }

    pub fn region_weight(&self, region: &str) -> u64 {
        self.region_weight.get(region).copied().unwrap_or(0)
    }

    /// Whether `weight` of `region`'s votes passes the certificate threshold. The threshold is
    /// fixed by the fault model; delay never changes it.
    pub fn is_quorum(&self, region: &str, weight: u64) -> bool {
        let total = u128::from(self.region_weight(region));
        let weight = u128::from(weight);
        if total == 0 {
            return false;
        }
        // u128 products of u64 values cannot overflow.
        let (num, den) = self.fault_model.threshold();
        weight.saturating_mul(u128::from(den)) > total.saturating_mul(u128::from(num))
    }

    /// Checks that `votes` certify `object_id` at `(bucket, seq)`: distinct validators of the
    /// bucket's region, together above the threshold.
    pub fn check_votes(
        &self,
        bucket: &BucketId,
        seq: u64,
        object_id: &Digest,
        votes: &[Vote],
    ) -> Result<(), CertificateError> {
        let bucket_digest = bucket.digest();
        let mut seen = BTreeSet::new();
        let mut weight: u64 = 0;
        for vote in votes {
            if vote.object_id != *object_id || vote.bucket != bucket_digest || vote.seq != seq {
                return Err(CertificateError::VoteForOtherObject { voter: vote.signer });
            }
            let Some(validator) = self.get(&vote.signer) else {
                return Err(CertificateError::NotAValidator { voter: vote.signer });
            };
            if validator.region != bucket.region || vote.region != bucket.region {
                return Err(CertificateError::WrongRegion { voter: vote.signer });
            }
            if !seen.insert(vote.signer) {
                return Err(CertificateError::DuplicateVoter { voter: vote.signer });
            }
            weight = weight.saturating_add(validator.weight);
        }
        if self.is_quorum(&bucket.region, weight) {
            Ok(())
        } else {
            Err(CertificateError::BelowThreshold {
                weight,
                region_weight: self.region_weight(&bucket.region),
            })
        }
    }
}

/// A token distribution as signed by an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distribution {
    pub id: Digest,
    pub operator: Key,
    pub asset: String,
    pub total: u64,
    /// The rule: a claim needs an attestation of this schema...
    pub schema: String,
    /// ...issued by one of these issuers (empty: any issuer granted the schema; grants are
    /// checked by the shell when it accepts the attestation).
    pub issuers: Vec<Key>,
    /// ...and asks for exactly this amount.
    pub amount_per_claim: u64,
    /// Claims must be created in `[opens_at, closes_at)`.
    pub opens_at: Millis,
    pub closes_at: Millis,
    /// Per-region budgets; they must sum to `total`.
    pub allocations: Vec<(String, u64)>,
    /// Circuit breaker per bucket chain: at most this much claim outflow within any
    /// `outflow_window_ms` of batch timestamps. A window of 0 disables the breaker.
    pub max_outflow_per_window: u64,
    pub outflow_window_ms: u64,
}

/// One validator's escrow in one distribution.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BucketId {
    pub distribution: Digest,
    pub region: String,
    pub owner: Key,
}

impl BucketId {
    /// The 32-byte name of the bucket used in votes, locks and maps.
    pub fn digest(&self) -> Digest {
        digest_parts("bucket", &[&self.distribution, self.region.as_bytes(), &self.owner])
    }
}

/// A claim as signed by its claimant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub id: Digest,
    pub signer: Key,
    pub distribution_id: Digest,
    pub claimant: Key,
    pub attestation_id: Digest,
    pub amount: u64,
    pub recipient: Key,
    pub created_at: Millis,
}

impl Claim {
    pub fn slot(&self) -> Digest {
        slot_of(&self.distribution_id, &self.claimant)
    }
}

/// One entry of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Claim(Claim),
    /// Moves `amount` of this bucket's escrow to `to` (same distribution).
    TransferOut {
        to: BucketId,
        amount: u64,
    },
    /// The owner ends its chain; the remainder passes to the successor as after a freeze.
    Close,
}

impl Entry {
    /// What the entry adds to the chain's running total.
    pub fn amount(&self) -> u64 {
        match self {
            Entry::Claim(claim) => claim.amount,
            Entry::TransferOut { amount, .. } => *amount,
            Entry::Close => 0,
        }
    }
}

/// A link of a bucket's hash chain, signed by the bucket's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub id: Digest,
    pub signer: Key,
    pub bucket: BucketId,
    pub seq: u64,
    /// Id of the batch at `seq - 1`; [`ZERO_DIGEST`] at `seq = 0`.
    pub prev: Digest,
    pub timestamp: Millis,
    pub entries: Vec<Entry>,
    /// The chain's cumulative outflow (claims and transfers out) after this batch.
    pub total_after: u64,
}

impl Batch {
    /// Builds a batch and names it by [`Batch::compute_id`].
    pub fn new(
        signer: Key,
        bucket: BucketId,
        seq: u64,
        prev: Digest,
        timestamp: Millis,
        entries: Vec<Entry>,
        total_after: u64,
    ) -> Self {
        let mut batch = Self {
            id: ZERO_DIGEST,
            signer,
            bucket,
            seq,
            prev,
            timestamp,
            entries,
            total_after,
        };
        batch.id = batch.compute_id();
        batch
    }

    /// The batch's id: a digest of all its fields except `id` (claims enter by their ids).
    pub fn compute_id(&self) -> Digest {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"credence/escrow/v1/batch");
        hasher.update(&self.signer);
        hasher.update(&self.bucket.digest());
        hasher.update(&self.seq.to_le_bytes());
        hasher.update(&self.prev);
        hasher.update(&self.timestamp.to_le_bytes());
        hasher.update(&(self.entries.len() as u64).to_le_bytes());
        for entry in &self.entries {
            match entry {
                Entry::Claim(claim) => {
                    hasher.update(&[0]);
                    hasher.update(&claim.id);
                }
                Entry::TransferOut { to, amount } => {
                    hasher.update(&[1]);
                    hasher.update(&to.digest());
                    hasher.update(&amount.to_le_bytes());
                }
                Entry::Close => {
                    hasher.update(&[2]);
                }
            }
        }
        hasher.update(&self.total_after.to_le_bytes());
        *hasher.finalize().as_bytes()
    }

    pub fn claims(&self) -> impl Iterator<Item = &Claim> {
        self.entries.iter().filter_map(|entry| match entry {
            Entry::Claim(claim) => Some(claim),
            _ => None,
        })
    }

    pub fn closes_chain(&self) -> bool {
        self.entries.iter().any(|entry| matches!(entry, Entry::Close))
    }
}

/// A proposal to end a bucket's chain after `last_seq` (None: before any batch), optionally
/// carrying the owner's last signed batch (`pending`, at `last_seq`) so it is certified first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freeze {
    pub id: Digest,
    pub signer: Key,
    pub bucket: BucketId,
    pub last_seq: Option<u64>,
    pub pending: Option<Box<Batch>>,
}

impl Freeze {
    pub fn new(signer: Key, bucket: BucketId, last_seq: Option<u64>, pending: Option<Batch>) -> Self {
        let mut freeze = Self {
            id: ZERO_DIGEST,
            signer,
            bucket,
            last_seq,
            pending: pending.map(Box::new),
        };
        freeze.id = freeze.compute_id();
        freeze
    }

    pub fn compute_id(&self) -> Digest {
        let last = self.last_seq.map_or([0; 9], |seq| {
            let mut bytes = [1; 9];
            if let Some(tail) = bytes.get_mut(1..) {
                tail.copy_from_slice(&seq.to_le_bytes());
            }
            bytes
        });
        let pending = self.pending.as_ref().map_or(ZERO_DIGEST, |batch| batch.id);
        digest_parts("freeze", &[&self.signer, &self.bucket.digest(), &last, &pending])
    }

    /// The chain position the freeze occupies (and locks): the one after `last_seq`.
    /// `None` only for the impossible `last_seq = u64::MAX`.
    pub fn position(&self) -> Option<u64> {
        match self.last_seq {
            None => Some(0),
            Some(seq) => seq.checked_add(1),
        }
    }
}

/// A validator's vote for a batch or a freeze at `(bucket, seq)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    pub signer: Key,
    pub object_id: Digest,
    pub bucket: Digest,
    pub seq: u64,
    pub region: String,
}

/// The durable promise "I voted for `object_id` at `(bucket, seq)`". Persisted (fsync) before the
/// vote leaves the node and restored on start, so a restart never votes twice at one position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub bucket: Digest,
    pub seq: u64,
    pub object_id: Digest,
}

/// What a certificate certifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertifiedObject {
    Batch(Batch),
    Freeze(Freeze),
}

impl CertifiedObject {
    pub fn id(&self) -> Digest {
        match self {
            CertifiedObject::Batch(batch) => batch.id,
            CertifiedObject::Freeze(freeze) => freeze.id,
        }
    }

    pub fn bucket(&self) -> &BucketId {
        match self {
            CertifiedObject::Batch(batch) => &batch.bucket,
            CertifiedObject::Freeze(freeze) => &freeze.bucket,
        }
    }

    /// The chain position; `None` only for an impossible freeze after `u64::MAX`.
    pub fn seq(&self) -> Option<u64> {
        match self {
            CertifiedObject::Batch(batch) => Some(batch.seq),
            CertifiedObject::Freeze(freeze) => freeze.position(),
        }
    }
}

/// A batch or freeze with votes from more than the threshold of its region's weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub object: CertifiedObject,
    pub votes: Vec<Vote>,
}

impl Certificate {
    pub fn check(&self, validators: &ValidatorSet) -> Result<(), CertificateError> {
        let seq = self.object.seq().ok_or(CertificateError::SeqOverflow)?;
        validators.check_votes(self.object.bucket(), seq, &self.object.id(), &self.votes)
    }
}

/// Why a set of votes is not a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CertificateError {
    #[error("vote by {voter:02x?} is for another object or position")]
    VoteForOtherObject { voter: Key },
    #[error("{voter:02x?} is not a validator")]
    NotAValidator { voter: Key },
    #[error("{voter:02x?} is not a validator of the bucket's region")]
    WrongRegion { voter: Key },
    #[error("{voter:02x?} voted twice in one certificate")]
    DuplicateVoter { voter: Key },
    #[error("votes hold weight {weight} of {region_weight}: below the certificate threshold")]
    BelowThreshold { weight: u64, region_weight: u64 },
    #[error("freeze position overflows u64")]
    SeqOverflow,
}
