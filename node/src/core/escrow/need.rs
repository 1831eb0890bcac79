//! Need-driven transfers inside a region (DESIGN.md "Transfers"): a bucket whose escrow runs low
//! advertises a need in its owner's heartbeat, and the region's other owners answer it from their
//! surplus with `transfer_out` entries in their own chains, as replicas of a Bounded Counter trade
//! rights.
//!
//! Who talks to it: the shell asks each of its owners for [`Owner::need`] when it builds a
//! heartbeat, keeps the needs its region's heartbeats carry, and on every tick asks
//! [`answer_needs`] which transfers each of its owners should queue, then queues them with
//! [`Owner::request_transfer`]. Nothing here moves escrow: a transfer is an entry of the donor's
//! chain, voted and certified by the region like any batch, and the needy bucket is credited when
//! that certificate is applied. Escrow only moves between buckets of one distribution, so the
//! region's total never changes.
//!
//! The rules, all deterministic and bounded:
//! - a bucket asks when its available escrow covers fewer than [`NEED_LOW_WATER_CLAIMS`] claims,
//!   for what brings it to [`NEED_TARGET_CLAIMS`] ([`need_for`]);
//! - a donor keeps [`DONOR_RESERVE_CLAIMS`] for itself and gives only what lies above it;
//! - a need is split over the live donors in proportion to their certified surplus, so the
//!   parts of all donors add up to the need (or to all the surplus there is);
//! - a donor answers a bucket again only once its earlier transfer to it is certified and the
//!   needy owner's heartbeat shows it has applied that certificate (its frontier for the donor's
//!   chain is past the transfer): an advertisement is answered at most once per donor.

use std::collections::BTreeMap;

use super::ledger::Ledger;
use super::model::BucketId;
use super::owner::Owner;
use super::{Digest, Key};

/// A bucket advertises a need when its available escrow covers fewer than this many claims:
/// early enough that the transfer usually lands before the last claim it can pay.
pub const NEED_LOW_WATER_CLAIMS: u64 = 2;
/// A needy bucket asks for what brings its available escrow to this many claims. It is above the
/// low water mark, so a refilled bucket does not ask again at once.
pub const NEED_TARGET_CLAIMS: u64 = 4;
/// A donor keeps this many claims' worth for its own claimants and gives only what lies above.
/// It equals the target, so a donation never leaves the donor poorer than the bucket it refills,
/// and a donor never falls below the low water mark by giving (no transfers back and forth).
pub const DONOR_RESERVE_CLAIMS: u64 = NEED_TARGET_CLAIMS;
/// Most needs one heartbeat carries (a validator owns one bucket per distribution); beyond it the
/// largest go first, and a receiver ignores the rest.
pub const NEEDS_PER_HEARTBEAT_MAX: usize = 64;
/// Most transfers one donor queues in one call, so answering needs never crowds claims out of its
/// open batch; the rest are answered on the next call.
pub const NEED_ANSWERS_PER_CALL_MAX: usize = 16;

/// What a bucket with `available` escrow left asks for, if anything: what brings it to
/// [`NEED_TARGET_CLAIMS`] claims once it covers fewer than [`NEED_LOW_WATER_CLAIMS`].
pub fn need_for(amount_per_claim: u64, available: u64) -> Option<u64> {
    if amount_per_claim == 0 {
        return None;
    }
    let low_water = amount_per_claim.saturating_mul(NEED_LOW_WATER_CLAIMS);
    if available >= low_water {
        return None;
    }
    let target = amount_per_claim.saturating_mul(NEED_TARGET_CLAIMS);
    Some(target.saturating_sub(available)).filter(|need| *need > 0)
}

/// A need as a donor heard it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedAd {
    /// The needy bucket.
    pub bucket: Digest,
    /// The validator whose heartbeat carried it; only the bucket's owner is listened to.
    pub advertiser: Key,
    /// What it asks for.
    pub amount: u64,
    /// The certified length of the donor's chain in the advertiser's ledger when it advertised
    /// (its heartbeat's frontier for the donor's bucket): the need already counts every transfer
    /// the donor certified below it.
    pub donor_chain_seen: u64,
}

/// The transfers `donor` should queue to answer `ads`: `(destination, amount)`, in destination
/// order, at most [`NEED_ANSWERS_PER_CALL_MAX`]. `is_live` says which owners count as donors
/// (the shell leaves out suspected ones, whose part would never come).
///
/// An ad is answered when it comes from the owner of a live bucket of the donor's distribution
/// and region (not the donor's own), the donor has no transfer to that bucket queued or in
/// flight, and the advertiser had applied the donor's last certified transfer to it. The need is
/// capped by what brings the bucket to the target as certified here, so an owner that asks for
/// more than it lacks gets no more; the donor's part is its proportional share, capped by what it
/// holds above its reserve now (queued and in-flight entries counted).
pub fn answer_needs(
    ledger: &Ledger,
    donor: &Owner,
    ads: &[NeedAd],
    is_live: impl Fn(&Key) -> bool,
) -> Vec<(BucketId, u64)> {
    let mut answers = Vec::new();
    let bucket = donor.bucket();
    let from = donor.digest();
    if donor.is_ended() || ledger.is_ended(&from) {
        return answers;
    }
    let Some(distribution) = ledger.distribution(&bucket.distribution) else {
        return answers;
    };
    let per_claim = distribution.distribution().amount_per_claim;
    let reserve = per_claim.saturating_mul(DONOR_RESERVE_CLAIMS);
    let target = per_claim.saturating_mul(NEED_TARGET_CLAIMS);
    let mut valid: Vec<&NeedAd> = ads
        .iter()
        .filter(|ad| {
            ad.amount > 0
                && ad.bucket != from
                && distribution
                    .bucket(&ad.bucket)
                    .is_some_and(|plan| plan.id.region == bucket.region && plan.id.owner == ad.advertiser)
        })
        .collect();
    valid.sort_by_key(|ad| ad.bucket);
    valid.dedup_by_key(|ad| ad.bucket);
    if valid.is_empty() {
        return answers;
    }
    let Ok(available) = ledger.available_in_region(&bucket.distribution, &bucket.region) else {
        return answers;
    };
    let Ok(own) = donor.available(ledger) else {
        return answers;
    };
    let mut spare = own.saturating_sub(reserve);
    if spare == 0 {
        return answers;
    }
    // The basis every donor splits a need by: each live owner's surplus as certified, the same
    // at every donor holding the same certificates.
    let surpluses: BTreeMap<Digest, u64> = available
        .iter()
        .filter(|(digest, _)| {
            distribution
                .bucket(digest)
                .is_some_and(|plan| **digest == from || is_live(&plan.id.owner))
        })
        .map(|(digest, amount)| (*digest, amount.saturating_sub(reserve)))
        .filter(|(_, surplus)| *surplus > 0)
        .collect();
    for ad in valid {
        if answers.len() >= NEED_ANSWERS_PER_CALL_MAX || spare == 0 {
            break;
        }
        // An ended bucket is left out of `available`: it spends nothing more.
        let Some(needy_available) = available.get(&ad.bucket) else {
            continue;
        };
        if donor.transferring_to(ledger, &ad.bucket) {
            continue;
        }
        if ledger
            .last_transfer_seq(&from, &ad.bucket)
            .is_some_and(|seq| ad.donor_chain_seen <= seq)
        {
            continue;
        }
        let asked = ad.amount.min(target.saturating_sub(*needy_available));
        let part = share_of(&surpluses, &ad.bucket, &from, asked).min(spare);
        if part == 0 {
            continue;
        }
        let Some(plan) = distribution.bucket(&ad.bucket) else {
            continue;
        };
        spare = spare.saturating_sub(part);
        answers.push((plan.id.clone(), part));
    }
    answers
}

/// `donor`'s part of `asked` for `needy`: the donors' surpluses (the needy bucket's own left
/// out) share it in proportion, rounded down, and the remainder goes to donors in digest order,
/// each up to its surplus. The parts add up to `min(asked, total surplus)`.
fn share_of(surpluses: &BTreeMap<Digest, u64>, needy: &Digest, donor: &Digest, asked: u64) -> u64 {
    if donor == needy {
        return 0;
    }
    let Some(own) = surpluses.get(donor).copied() else {
        return 0;
    };
    let donors = || surpluses.iter().filter(|(digest, _)| *digest != needy);
    let total = donors().fold(0u128, |acc, (_, surplus)| acc.saturating_add(u128::from(*surplus)));
    if total <= u128::from(asked) {
        return own;
    }
    // asked < total, so each floor is below its surplus and fits a u64.
    let floor = |surplus: u64| -> u64 {
        u128::from(asked)
            .checked_mul(u128::from(surplus))
            .and_then(|product| product.checked_div(total))
            .and_then(|part| u64::try_from(part).ok())
            .unwrap_or(0)
    };
    let floors = donors().fold(0u64, |acc, (_, surplus)| acc.saturating_add(floor(*surplus)));
    let mut remainder = asked.saturating_sub(floors);
    for (digest, surplus) in donors() {
        let base = floor(*surplus);
        let extra = remainder.min(surplus.saturating_sub(base));
        if digest == donor {
            return base.saturating_add(extra);
        }
        remainder = remainder.saturating_sub(extra);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_need(name: &str, amount_per_claim: u64, available: u64, expected: Option<u64>) {
        assert_eq!(need_for(amount_per_claim, available), expected, "{name}");
    }

    #[test]
    fn a_bucket_asks_below_the_low_water_mark_for_what_reaches_the_target() {
        check_need("empty asks for the whole target", 10, 0, Some(40));
        check_need("one claim left asks for three", 10, 10, Some(30));
        check_need("just below the mark", 10, 19, Some(21));
        check_need("at the mark: no need", 10, 20, None);
        check_need("plenty: no need", 10, 1_000, None);
        check_need("a zero rule asks for nothing", 0, 0, None);
        check_need("huge amounts saturate, never wrap", u64::MAX, 0, Some(u64::MAX));
        check_need("huge amounts, some left", u64::MAX / 2, 5, Some(u64::MAX - 5));
    }

    fn digest(n: u8) -> Digest {
        [n; 32]
    }

    /// One split through every donor: the parts `share_of` gives each.
    fn check_split(name: &str, surpluses: &[(u8, u64)], needy: u8, asked: u64, expected: &[(u8, u64)]) {
        let map: BTreeMap<Digest, u64> = surpluses.iter().map(|(n, s)| (digest(*n), *s)).collect();
        let parts: Vec<(u8, u64)> = surpluses
            .iter()
            .map(|(n, _)| (*n, share_of(&map, &digest(needy), &digest(*n), asked)))
            .collect();
        assert_eq!(parts, expected, "{name}");
        let sum: u128 = parts.iter().map(|(_, p)| u128::from(*p)).sum();
        let total: u128 = surpluses
            .iter()
            .filter(|(n, _)| *n != needy)
            .map(|(_, s)| u128::from(*s))
            .sum();
        assert_eq!(sum, u128::from(asked).min(total), "{name}: the parts add up");
    }

    #[test]
    fn a_need_is_split_over_donors_by_surplus_and_the_parts_add_up() {
        check_split(
            "equal donors, even split",
            &[(1, 110), (3, 110), (4, 110)],
            2,
            30,
            &[(1, 10), (3, 10), (4, 10)],
        );
        check_split(
            "remainder to the first donor",
            &[(1, 110), (3, 110), (4, 110)],
            2,
            20,
            &[(1, 8), (3, 6), (4, 6)],
        );
        check_split("in proportion", &[(1, 300), (3, 100)], 2, 40, &[(1, 30), (3, 10)]);
        check_split(
            "one unit among many",
            &[(1, 5), (3, 5), (4, 5)],
            2,
            1,
            &[(1, 1), (3, 0), (4, 0)],
        );
        check_split("not enough: everything", &[(1, 5), (3, 7)], 2, 100, &[(1, 5), (3, 7)]);
        check_split(
            "the needy bucket gives nothing",
            &[(1, 50), (2, 50)],
            2,
            20,
            &[(1, 20), (2, 0)],
        );
        check_split(
            "the remainder passes on when a donor is full",
            &[(1, 1), (3, 1), (4, 1), (5, 100)],
            2,
            102,
            &[(1, 1), (3, 1), (4, 1), (5, 99)],
        );
        check_split("nothing asked", &[(1, 10), (3, 10)], 2, 0, &[(1, 0), (3, 0)]);
        check_split(
            "huge surpluses do not overflow",
            &[(1, u64::MAX), (3, u64::MAX)],
            2,
            u64::MAX,
            &[(1, u64::MAX / 2 + 1), (3, u64::MAX / 2)],
        );
        let none = BTreeMap::new();
        assert_eq!(
            share_of(&none, &digest(2), &digest(1), 10),
            0,
            "a donor with no surplus"
        );
    }
}
