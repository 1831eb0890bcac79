//! Distribution activation and routing: checks a distribution against the validator set, splits
//! each region's allocation into buckets, and answers "which bucket is home for this claimant" and
//! "who takes over this bucket" by rendezvous (HRW) hashing.
//!
//! Everything here is a function of the distribution and genesis alone, so every node computes
//! the same buckets, shares, homes and successors. The weighted HRW uses integer fixed-point
//! logarithms rather than floats: a consensus-relevant answer must not depend on a platform's libm.

use std::collections::BTreeMap;

use thiserror::Error;

use super::model::{BucketId, Distribution, ValidatorSet, slot_of};
use super::{Digest, Key, Millis};

/// Why a distribution cannot be activated on this network.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DistributionError {
    #[error("allocations sum to {sum:?} but total is {total}: fix the allocations")]
    AllocationMismatch { sum: Option<u64>, total: u64 },
    #[error("region {region:?} is allocated twice")]
    DuplicateRegion { region: String },
    #[error("region {region:?} has no validators in genesis")]
    UnknownRegion { region: String },
    #[error("region {region:?} has zero total weight; its allocation cannot be split")]
    WeightlessRegion { region: String },
    #[error("window [{opens_at}, {closes_at}) is empty")]
    EmptyWindow { opens_at: Millis, closes_at: Millis },
    #[error("amount_per_claim must be positive")]
    ZeroAmountPerClaim,
    #[error("a rebalance moves a positive amount between two different regions of the distribution")]
    InvalidRebalance,
    #[error("arithmetic overflow splitting region {region:?}")]
    Overflow { region: String },
}

/// One bucket of an active distribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketPlan {
    pub id: BucketId,
    pub digest: Digest,
    /// The bucket's initial escrow: its owner's part of the region's allocation.
    pub share: u64,
}

#[derive(Debug, Clone)]
struct RegionPlan {
    allocation: u64,
    /// Bucket digests of the region, in owner-key order.
    buckets: Vec<Digest>,
}

/// A distribution checked against genesis, with its buckets and routing tables.
#[derive(Debug, Clone)]
pub struct ActiveDistribution {
    distribution: Distribution,
    buckets: BTreeMap<Digest, BucketPlan>,
    regions: BTreeMap<String, RegionPlan>,
    successors: BTreeMap<Digest, Digest>,
}

impl ActiveDistribution {
    pub fn activate(distribution: Distribution, validators: &ValidatorSet) -> Result<Self, DistributionError> {
        if distribution.amount_per_claim == 0 {
            return Err(DistributionError::ZeroAmountPerClaim);
        }
        if distribution.opens_at >= distribution.closes_at {
            return Err(DistributionError::EmptyWindow {
                opens_at: distribution.opens_at,
                closes_at: distribution.closes_at,
            });
        }
        let sum = distribution
            .allocations
            .iter()
            .try_fold(0u64, |acc, (_, amount)| acc.checked_add(*amount));
        if sum != Some(distribution.total) {
            return Err(DistributionError::AllocationMismatch {
                sum,
                total: distribution.total,
            });
        }
        let mut buckets = BTreeMap::new();
        let mut regions = BTreeMap::new();
        let mut successors = BTreeMap::new();
        for (region, allocation) in &distribution.allocations {
            if regions.contains_key(region) {
                return Err(DistributionError::DuplicateRegion { region: region.clone() });
            }
            let members = validators.members(region);
            if members.is_empty() {
                return Err(DistributionError::UnknownRegion { region: region.clone() });
            }
            let weighted: Vec<(Key, u64)> = members
                .iter()
                .map(|key| (*key, validators.get(key).map_or(0, |v| v.weight)))
                .collect();
            let shares = split_allocation(region, *allocation, &weighted)?;
            let mut region_buckets = Vec::with_capacity(shares.len());
            for (owner, share) in shares {
                let id = BucketId {
                    distribution: distribution.id,
                    region: region.clone(),
                    owner,
                };
                let digest = id.digest();
                region_buckets.push(digest);
                buckets.insert(digest, BucketPlan { id, digest, share });
            }
            for (owner, _) in &weighted {
                let id = BucketId {
                    distribution: distribution.id,
                    region: region.clone(),
                    owner: *owner,
                };
                let digest = id.digest();
                let others: Vec<(&[u8], u64)> = members
                    .iter()
                    .filter(|other| *other != owner)
                    .map(|other| (other.as_slice(), 1))
                    .collect();
                if let Some(index) = hrw_pick(&digest, &others) {
                    let successor = others.get(index).and_then(|(key, _)| {
                        let key: Key = (*key).try_into().ok()?;
                        Some(
                            BucketId {
                                distribution: distribution.id,
                                region: region.clone(),
                                owner: key,
                            }
                            .digest(),
                        )
                    });
                    if let Some(successor) = successor {
                        successors.insert(digest, successor);
                    }
                }
            }
            regions.insert(
                region.clone(),
                RegionPlan {
                    allocation: *allocation,
                    buckets: region_buckets,
                },
            );
        }
        Ok(Self {
            distribution,
            buckets,
            regions,
            successors,
        })
    }

    pub fn distribution(&self) -> &Distribution {
        &self.distribution
    }

    pub fn id(&self) -> Digest {
        self.distribution.id
    }

    pub fn bucket(&self, digest: &Digest) -> Option<&BucketPlan> {
        self.buckets.get(digest)
    }

    /// All buckets, in digest order.
    pub fn buckets(&self) -> impl Iterator<Item = &BucketPlan> {
        self.buckets.values()
    }

    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.regions.keys().map(String::as_str)
    }

    /// Buckets of `region`, in owner-key order.
    pub fn region_buckets(&self, region: &str) -> &[Digest] {
        self.regions.get(region).map_or(&[], |plan| plan.buckets.as_slice())
    }

    /// How an operator's rebalance of `amount` from region `from` to region
    /// `to` is carried out: (source bucket, destination bucket, amount) per
    /// source bucket. Each source bucket moves its part in proportion to its
    /// share (the rounding remainder falls to the first), to the destination
    /// bucket at the same position in `to` (cycling).
    pub fn rebalance_split(
        &self,
        from: &str,
        to: &str,
        amount: u64,
    ) -> Result<Vec<(Digest, Digest, u64)>, DistributionError> {
        let (Some(source), Some(target)) = (self.regions.get(from), self.regions.get(to)) else {
            return Err(DistributionError::InvalidRebalance);
        };
        if from == to || amount == 0 || target.buckets.is_empty() {
            return Err(DistributionError::InvalidRebalance);
        }
        let overflow = || DistributionError::Overflow {
            region: from.to_string(),
        };
        let shares: Vec<(Digest, u64)> = source
            .buckets
            .iter()
            .filter_map(|digest| self.buckets.get(digest).map(|plan| (*digest, plan.share)))
            .collect();
        let whole: u128 = shares.iter().map(|(_, share)| u128::from(*share)).sum();
        if whole == 0 {
            return Err(DistributionError::WeightlessRegion {
                region: from.to_string(),
            });
        }
        let mut parts = Vec::with_capacity(shares.len());
        let mut assigned: u64 = 0;
        for (index, (digest, share)) in shares.iter().enumerate() {
            let part = u128::from(amount)
                .checked_mul(u128::from(*share))
                .and_then(|product| product.checked_div(whole))
                .and_then(|part| u64::try_from(part).ok())
                .ok_or_else(overflow)?;
            assigned = assigned.checked_add(part).ok_or_else(overflow)?;
            let slot = index.checked_rem(target.buckets.len()).ok_or_else(overflow)?;
            let destination = target.buckets.get(slot).copied().ok_or_else(overflow)?;
            parts.push((*digest, destination, part));
        }
        let remainder = amount.checked_sub(assigned).ok_or_else(overflow)?;
        if let Some(first) = parts.first_mut() {
            first.2 = first.2.checked_add(remainder).ok_or_else(overflow)?;
        }
        parts.retain(|(_, _, part)| *part > 0);
        Ok(parts)
    }

    /// The bucket that takes over `bucket` once it is frozen or closed (None: alone in region).
    pub fn successor(&self, bucket: &Digest) -> Option<Digest> {
        self.successors.get(bucket).copied()
    }

    /// The claimant's original home bucket, ignoring freezes: HRW of the slot over regions
    /// weighted by allocation, then over the region's buckets weighted by share.
    pub fn home_bucket(&self, claimant: &Key) -> Option<Digest> {
        let slot = slot_of(&self.distribution.id, claimant);
        let regions: Vec<(&[u8], u64)> = self
            .regions
            .iter()
            .map(|(name, plan)| (name.as_bytes(), plan.allocation))
            .collect();
        let region_index = hrw_pick(&slot, &regions)?;
        let (region_name, _) = regions.get(region_index)?;
        let plan = self.regions.values().nth(region_index)?;
        debug_assert_eq!(
            self.regions.keys().nth(region_index).map(String::as_bytes),
            Some(*region_name)
        );
        let candidates: Vec<(&[u8], u64)> = plan
            .buckets
            .iter()
            .filter_map(|digest| {
                let bucket = self.buckets.get(digest)?;
                Some((bucket.id.owner.as_slice(), bucket.share))
            })
            .collect();
        let index = hrw_pick(&slot, &candidates)?;
        plan.buckets.get(index).copied()
    }

    /// Whether a claim created at `created_at` falls in the distribution's window.
    pub fn in_window(&self, created_at: Millis) -> bool {
        self.distribution.opens_at <= created_at && created_at < self.distribution.closes_at
    }
}

/// Splits `amount` over validators by weight; the rounding remainder goes to the lowest key.
/// `weighted` must be sorted by key.
fn split_allocation(region: &str, amount: u64, weighted: &[(Key, u64)]) -> Result<Vec<(Key, u64)>, DistributionError> {
    let overflow = || DistributionError::Overflow {
        region: region.to_owned(),
    };
    let total_weight = weighted
        .iter()
        .try_fold(0u128, |acc, (_, w)| acc.checked_add(u128::from(*w)))
        .ok_or_else(overflow)?;
    if total_weight == 0 {
        return Err(DistributionError::WeightlessRegion {
            region: region.to_owned(),
        });
    }
    let mut shares = Vec::with_capacity(weighted.len());
    let mut assigned: u64 = 0;
    for (key, weight) in weighted {
        let share = u128::from(amount)
            .checked_mul(u128::from(*weight))
            .and_then(|product| product.checked_div(total_weight))
            .and_then(|share| u64::try_from(share).ok())
            .ok_or_else(overflow)?;
        assigned = assigned.checked_add(share).ok_or_else(overflow)?;
        shares.push((*key, share));
    }
    let remainder = amount.checked_sub(assigned).ok_or_else(overflow)?;
    if let Some((_, lowest)) = shares.first_mut() {
        *lowest = lowest.checked_add(remainder).ok_or_else(overflow)?;
    }
    Ok(shares)
}

/// Weighted rendezvous hashing: the index of the candidate with the highest score
/// `weight / -log2(u)`, where `u` is a uniform hash of `(seed, name)`. Zero-weight candidates are
/// never picked; ties go to the earlier candidate. Returns None when nothing can be picked.
pub fn hrw_pick(seed: &Digest, candidates: &[(&[u8], u64)]) -> Option<usize> {
    let mut best: Option<(usize, u64, u64)> = None;
    for (index, (name, weight)) in candidates.iter().enumerate() {
        if *weight == 0 {
            continue;
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"credence/escrow/v1/hrw");
        hasher.update(seed);
        hasher.update(name);
        let bytes = hasher.finalize();
        let mut first = [0u8; 8];
        if let Some(head) = bytes.as_bytes().get(..8) {
            first.copy_from_slice(head);
        }
        let log = neg_log2_fixed(u64::from_le_bytes(first));
        let better = match best {
            None => true,
            // weight/log > best_weight/best_log, compared exactly in u128.
            Some((_, best_weight, best_log)) => {
                u128::from(*weight).saturating_mul(u128::from(best_log))
                    > u128::from(best_weight).saturating_mul(u128::from(log))
            }
        };
        if better {
            best = Some((index, *weight, log));
        }
    }
    best.map(|(index, _, _)| index)
}

/// `-log2(h / 2^64)` in fixed point with 32 fractional bits; always positive.
/// Integer-only (repeated squaring), so every platform computes the same bits.
fn neg_log2_fixed(h: u64) -> u64 {
    const FRACTION_BITS: u32 = 32;
    let h = h.max(1);
    let zeros = u64::from(h.leading_zeros());
    // z = normalized h in [1, 2) as Q1.63.
    let mut z = u128::from(h << h.leading_zeros());
    let one = 1u128 << 63;
    let mut fraction: u64 = 0;
    for _ in 0..FRACTION_BITS {
        // z < 2^64, so z*z < 2^128.
        z = z.wrapping_mul(z) >> 63;
        fraction <<= 1;
        if z >= one << 1 {
            z >>= 1;
            fraction |= 1;
        }
    }
    // -log2(h/2^64) = (zeros + 1) - log2(z), with log2(z) = fraction / 2^32 in [0, 1).
    ((zeros.wrapping_add(1)) << FRACTION_BITS).wrapping_sub(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neg_log2_is_monotone_and_exact_at_powers_of_two() {
        assert_eq!(neg_log2_fixed(1 << 63), 1 << 32);
        assert_eq!(neg_log2_fixed(1 << 62), 2 << 32);
        assert_eq!(neg_log2_fixed(1), 64 << 32);
        let mut previous = u64::MAX;
        for shift in [1u64, 3, 1000, 1 << 20, 1 << 40, 1 << 63, u64::MAX] {
            let value = neg_log2_fixed(shift);
            assert!(value <= previous, "not monotone at {shift}");
            assert!(value > 0);
            previous = value;
        }
    }

    #[test]
    fn split_gives_remainder_to_lowest_key() {
        let shares = split_allocation("r", 10, &[([1; 32], 1), ([2; 32], 1), ([3; 32], 1)]);
        assert_eq!(shares, Ok(vec![([1; 32], 4), ([2; 32], 3), ([3; 32], 3)]));
        let shares = split_allocation("r", 100, &[([1; 32], 1), ([2; 32], 3)]);
        assert_eq!(shares, Ok(vec![([1; 32], 25), ([2; 32], 75)]));
    }

    #[test]
    fn hrw_is_roughly_proportional_to_weight() {
        let names: [&[u8]; 3] = [b"a", b"b", b"c"];
        let candidates = [(names[0], 1), (names[1], 2), (names[2], 0)];
        let mut counts = [0u32; 3];
        for i in 0u32..3000 {
            let seed = *blake3::hash(&i.to_le_bytes()).as_bytes();
            let pick = hrw_pick(&seed, &candidates).unwrap();
            counts[pick] += 1;
        }
        assert_eq!(counts[2], 0, "zero weight never picked");
        // Expect 1000 / 2000; deterministic seeds, generous bounds.
        assert!((800..1200).contains(&counts[0]), "{counts:?}");
        assert!((1800..2200).contains(&counts[1]), "{counts:?}");
    }
}
