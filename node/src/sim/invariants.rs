//! The safety invariants the simulator checks after every step, as pure functions over what the
//! core reports, so that a test can hand them a broken state and see it caught.
//!
//! - [`Registry`]: every certificate formed anywhere, by position: at most one per
//!   `(bucket, seq)`, and no slot funded twice across all chains.
//! - [`check_liquidity`]: one ledger's liquidity report: no bucket over its escrow, the
//!   distribution's spent within its total, conservation per region and overall.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use crate::core::escrow::{Digest, LiquidityReport};

/// A broken safety property: only a bug (or more faults than the model tolerates) causes one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Violation {
    #[error("two certificates at (bucket {bucket}, seq {seq}): {first} and {second}")]
    TwoCertificates {
        bucket: usize,
        seq: u64,
        first: String,
        second: String,
    },
    #[error("slot {slot} funded twice")]
    SlotFundedTwice { slot: String },
    #[error("bucket {bucket} over its escrow: spent {spent} + transferred out {out} > escrow {escrow}")]
    BucketOverEscrow {
        bucket: String,
        spent: u64,
        out: u64,
        escrow: u64,
    },
    #[error("distribution overspent: spent {spent} > total {total}")]
    Overspent { spent: u64, total: u64 },
    #[error("conservation broken{scope}: {detail}")]
    Conservation { scope: String, detail: String },
    #[error("node {node}: {detail}")]
    NodeState { node: usize, detail: String },
    #[error("honest validator {node} voted for two objects at (bucket {bucket}, seq {seq})")]
    DoubleVote { node: usize, bucket: usize, seq: u64 },
    #[error("liveness: {0}")]
    Liveness(String),
}

fn short(digest: &Digest) -> String {
    hex::encode(digest.get(..6).unwrap_or(&[]))
}

/// Every certificate formed anywhere in the run, by position.
#[derive(Debug, Default)]
pub struct Registry {
    positions: BTreeMap<(usize, u64), Digest>,
    funded_slots: BTreeSet<Digest>,
}

impl Registry {
    /// Records a certificate for `object_id` at `(bucket, seq)` funding `slots`. Returns whether
    /// it is new (false: the same certificate object was already recorded).
    pub fn register(
        &mut self,
        bucket: usize,
        seq: u64,
        object_id: Digest,
        slots: impl IntoIterator<Item = Digest>,
    ) -> Result<bool, Violation> {
        if let Some(existing) = self.positions.get(&(bucket, seq)) {
            if *existing == object_id {
                return Ok(false);
            }
            return Err(Violation::TwoCertificates {
                bucket,
                seq,
                first: short(existing),
                second: short(&object_id),
            });
        }
        for slot in slots {
            if !self.funded_slots.insert(slot) {
                return Err(Violation::SlotFundedTwice { slot: short(&slot) });
            }
        }
        self.positions.insert((bucket, seq), object_id);
        Ok(true)
    }

    pub fn object_at(&self, bucket: usize, seq: u64) -> Option<&Digest> {
        self.positions.get(&(bucket, seq))
    }

    pub fn is_funded(&self, slot: &Digest) -> bool {
        self.funded_slots.contains(slot)
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// Checks one ledger's liquidity report of a distribution whose budget is `total`.
pub fn check_liquidity(total: u64, report: &LiquidityReport) -> Result<(), Violation> {
    for bucket in &report.buckets {
        let used = bucket.spent.checked_add(bucket.transferred_out);
        if used.is_none_or(|used| used > bucket.escrow) {
            return Err(Violation::BucketOverEscrow {
                bucket: short(&bucket.bucket),
                spent: bucket.spent,
                out: bucket.transferred_out,
                escrow: bucket.escrow,
            });
        }
    }
    let whole = &report.distribution;
    if whole.spent > total {
        return Err(Violation::Overspent {
            spent: whole.spent,
            total,
        });
    }
    if whole.transferred_in != whole.transferred_out {
        return Err(Violation::Conservation {
            scope: String::new(),
            detail: format!(
                "transferred in {} != transferred out {}",
                whole.transferred_in, whole.transferred_out
            ),
        });
    }
    let sum = [whole.spent, whole.available, whole.stranded]
        .iter()
        .try_fold(0u64, |acc, v| acc.checked_add(*v));
    if sum != Some(total) {
        return Err(Violation::Conservation {
            scope: String::new(),
            detail: format!(
                "spent {} + available {} + stranded {} != total {total}",
                whole.spent, whole.available, whole.stranded
            ),
        });
    }
    for (region, t) in &report.regions {
        let inflow = t.share.checked_add(t.transferred_in);
        let outflow = [t.spent, t.transferred_out, t.available, t.stranded]
            .iter()
            .try_fold(0u64, |acc, v| acc.checked_add(*v));
        if inflow.is_none() || inflow != outflow {
            return Err(Violation::Conservation {
                scope: format!(" in region {region}"),
                detail: format!("{t:?}"),
            });
        }
    }
    Ok(())
}
