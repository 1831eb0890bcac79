//! Named scenarios (`credence sim --scenario`): fixed fault scripts on 3 regions of 4 validators
//! under a steady claim load, and what each run must show on top of the invariants and the
//! liveness every run checks.
//!
//! - `region-partition`: from 3 s to 11 s every region can talk only within itself. Each region
//!   keeps certifying (`regional`); nothing created while cut off reaches `global` before the
//!   heal; the regions' state digests differ at the heal and are identical everywhere at the end.
//! - `split-2-2`: from 3 s to 11 s region 0's four validators are split 2|2 (the rest of the
//!   network talks to both halves). Region 0 certifies nothing while split (its owners keep
//!   sequencing: provisional only), the other regions are unaffected, nobody takes a bucket
//!   over, and after the heal everything certifies and converges.
//! - `owner-crash`: at 3 s node 4 fails for good right after sending a batch. Its successor
//!   freezes its bucket once it has suspected it for `takeover_after`, the batch it left in
//!   flight is certified first, and the claims that hashed to it are certified by the successor.
//!
//! The world runs the script (`Config::script`); [`Scenario::check`] reads the run's
//! [`RunRecord`] afterwards.

use crate::core::escrow::Digest;

use super::faults::{FaultEvent, Profile, Script};
use super::net::{Micros, Partition};
use super::stress::{SAMPLE_EVERY_US, Stress, Workload};
use super::world::{CertRecord, ClaimTrace, Config, RunOutcome, RunRecord, takeover_after_ms};

/// Validators and regions of every scenario (node i is in region i mod 3).
pub const NODES: usize = 12;
pub const REGIONS: usize = 3;
/// When the fault starts, when a partition heals, and when load and faults stop.
pub const FAULT_AT_US: Micros = 3_000_000;
pub const HEAL_AT_US: Micros = 11_000_000;
pub const DURATION_US: Micros = 14_000_000;
/// The region split 2|2 and its halves.
pub const SPLIT_REGION: usize = 0;
pub const SPLIT_HALVES: [[usize; 2]; 2] = [[0, 3], [6, 9]];
/// The owner that fails for good (region 1).
pub const FAILED_OWNER: usize = 4;

/// A named, scripted run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Every region cut off from the others from 3 s to 11 s: each keeps certifying, nothing
    /// created meanwhile reaches global before the heal, then all converge.
    RegionPartition,
    /// Region 0's validators split 2|2 from 3 s to 11 s: it certifies nothing meanwhile (no
    /// takeover either), the other regions carry on, then everything certifies and converges.
    #[value(name = "split-2-2")]
    Split22,
    /// Node 4 fails for good right after its first batch after 3 s: its successor freezes its
    /// bucket, certifies the batch it left in flight and the claims that hash to it (owners die
    /// mid-run, successors take over; with --report, drawn).
    OwnerCrash,
    /// Stress: claimants of region 0 arrive at 10x the base rate from 4 s until its escrow is
    /// gone, base load elsewhere; the other regions keep their escrow and their p99, and a
    /// pooled baseline (all escrow in region 0) shows their claims refused once it is gone.
    BankRun,
    /// Stress: region 0 is cut off from 4 s to 11 s while its claimants rush at 10x; it keeps
    /// certifying its own claims (>= 80%), then heals and converges.
    ExitUnderPartition,
    /// Stress: from 4 s to 11 s the issuer revokes a credential in flight every 200 ms, dated
    /// 1.5 s before it arrives; every claim certified after its revocation ends disputed at
    /// every node, none credited, every other claim unaffected.
    RevocationRace,
    /// Stress: region 0's links get +300 ms and up to 100 ms jitter from 4 s to 11 s under load.
    SlowRegion,
    /// Stress: the bank run, with the operator moving 100 claims' worth from region 1 to the
    /// draining region 0 at 6 s.
    RebalanceUnderStress,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::RegionPartition => "region-partition",
            Scenario::Split22 => "split-2-2",
            Scenario::OwnerCrash => "owner-crash",
            Scenario::BankRun => "bank-run",
            Scenario::ExitUnderPartition => "exit-under-partition",
            Scenario::RevocationRace => "revocation-race",
            Scenario::SlowRegion => "slow-region",
            Scenario::RebalanceUnderStress => "rebalance-under-stress",
        }
    }

    /// The stress scenario this is, with its figures, targets and report.
    pub fn stress(self) -> Option<Stress> {
        match self {
            Scenario::RegionPartition | Scenario::Split22 => None,
            Scenario::OwnerCrash => Some(Stress::OwnerCrash),
            Scenario::BankRun => Some(Stress::BankRun),
            Scenario::ExitUnderPartition => Some(Stress::ExitUnderPartition),
            Scenario::RevocationRace => Some(Stress::RevocationRace),
            Scenario::SlowRegion => Some(Stress::SlowRegion),
            Scenario::RebalanceUnderStress => Some(Stress::RebalanceUnderStress),
        }
    }

    pub fn script(self) -> Script {
        let regions: Vec<usize> = (0..NODES).map(|node| node % REGIONS).collect();
        let events = match self {
            Scenario::RegionPartition => vec![
                (FAULT_AT_US, FaultEvent::Partition(Partition::by_region(&regions))),
                (HEAL_AT_US, FaultEvent::HealPartition),
            ],
            Scenario::Split22 => {
                let [one, other] = SPLIT_HALVES;
                vec![
                    (
                        FAULT_AT_US,
                        FaultEvent::Partition(Partition::split(NODES, &one, &other)),
                    ),
                    (HEAL_AT_US, FaultEvent::HealPartition),
                ]
            }
            Scenario::OwnerCrash => vec![(FAULT_AT_US, FaultEvent::FailAfterNextBatch(FAILED_OWNER))],
            _ => Vec::new(),
        };
        Script {
            name: self.name(),
            events,
        }
    }

    /// The run: calm links, honest validators, heartbeats and takeover on.
    pub fn config(self, seed: u64, rate_per_s: f64, tail_us: Micros) -> Config {
        if let Some(stress) = self.stress()
            && self != Scenario::OwnerCrash
        {
            return stress.config(seed, tail_us, false);
        }
        Config {
            seed,
            nodes: NODES,
            regions: REGIONS,
            duration_us: DURATION_US,
            tail_us,
            profile: Profile::None,
            rate_per_s,
            monotonic_clock: true,
            durable_ledger: true,
            heartbeats: true,
            takeover: true,
            script: Some(self.script()),
            signatures: super::Signatures::Ed25519,
            // Sampled, so that --report can draw it; the default claim generator.
            workload: (self == Scenario::OwnerCrash).then_some(Workload {
                allocations: None,
                streams: Vec::new(),
                revoke: None,
                slow: None,
                rebalance: None,
                sample_every_us: SAMPLE_EVERY_US,
            }),
        }
    }

    /// Checks what the scenario must show. A run that already failed (an invariant, liveness)
    /// fails here too. Returns what was shown, one line each, or the first thing that was not.
    pub fn check(self, outcome: &RunOutcome) -> Result<Vec<String>, String> {
        if let Some(failure) = &outcome.failure {
            return Err(failure.clone());
        }
        let view = View(&outcome.record);
        let mut shown = match self {
            Scenario::RegionPartition => view.region_partition()?,
            Scenario::Split22 => view.split(&outcome.summary.counters)?,
            Scenario::OwnerCrash => view.owner_crash()?,
            // Judged on their figures by `stress::check`.
            _ => Vec::new(),
        };
        shown.push(view.converged()?);
        Ok(shown)
    }
}

fn during(at: Micros) -> bool {
    (FAULT_AT_US..HEAL_AT_US).contains(&at)
}

/// Questions about one run's record.
struct View<'a>(&'a RunRecord);

impl View<'_> {
    fn region(&self, node: usize) -> usize {
        self.0.regions.get(node).copied().unwrap_or(usize::MAX)
    }

    fn cert(&self, claim: &ClaimTrace) -> Option<&CertRecord> {
        claim.certificate.and_then(|index| self.0.certificates.get(index))
    }

    /// Claims that must be paid: valid, and not a second claim of a claimant already paid.
    fn valid_claims(&self) -> impl Iterator<Item = &ClaimTrace> {
        self.0.claims.iter().filter(|claim| claim.valid && !claim.duplicate)
    }

    /// Certified claims created while the fault lasted, with their certificates.
    fn certified_during(&self) -> impl Iterator<Item = (&ClaimTrace, &CertRecord)> {
        self.valid_claims()
            .filter(|claim| during(claim.created_us))
            .filter_map(|claim| self.cert(claim).map(|cert| (claim, cert)))
    }

    fn region_partition(&self) -> Result<Vec<String>, String> {
        let mut certified_while_cut = vec![0usize; REGIONS];
        for (_, cert) in self.certified_during().filter(|(_, cert)| during(cert.formed_us)) {
            if let Some(count) = certified_while_cut.get_mut(self.region(cert.bucket)) {
                *count += 1;
            }
        }
        if let Some(region) = certified_while_cut.iter().position(|count| *count == 0) {
            return Err(format!(
                "region {region} certified no claim while cut off (per region: {certified_while_cut:?})"
            ));
        }
        let global_before = self
            .valid_claims()
            .filter(|claim| claim.created_us < FAULT_AT_US)
            .filter_map(|claim| self.cert(claim))
            .filter(|cert| cert.global_us.is_some_and(|at| at < FAULT_AT_US))
            .count();
        if global_before == 0 {
            return Err("no claim reached global before the partition".into());
        }
        if let Some((claim, cert)) = self
            .certified_during()
            .find(|(_, cert)| cert.global_us.is_some_and(|at| at < HEAL_AT_US))
        {
            return Err(format!(
                "a claim created at {} ms, while the regions were cut off, reached global at {} ms, \
                 before the heal",
                claim.created_us / 1_000,
                cert.global_us.unwrap_or_default() / 1_000
            ));
        }
        if let Some(cert) = self
            .0
            .certificates
            .iter()
            .find(|cert| during(cert.formed_us) && cert.global_us.is_some_and(|at| at < HEAL_AT_US))
        {
            return Err(format!(
                "certificate (bucket {}, seq {}) formed while cut off reached global before the heal",
                cert.bucket, cert.seq
            ));
        }
        let waited = self
            .certified_during()
            .filter(|(_, cert)| cert.formed_us >= HEAL_AT_US)
            .count();
        if waited == 0 {
            return Err("no claim created while cut off waited for the heal (homes across regions)".into());
        }
        let heal = self.snapshot_at(HEAL_AT_US)?;
        for (i, a) in heal.iter().enumerate() {
            for (j, b) in heal.iter().enumerate().skip(i + 1) {
                if self.region(i) != self.region(j) && a.is_some() && a == b {
                    return Err(format!(
                        "nodes {i} and {j} of different regions held the same state at the heal: the regions \
                         did not diverge"
                    ));
                }
            }
        }
        Ok(vec![
            format!("claims certified per region while cut off: {certified_while_cut:?}"),
            "no claim created while cut off reached global before the heal".into(),
            format!("{waited} claims created while cut off waited for the heal (home in another region)"),
            "at the heal, nodes of different regions held different state digests".into(),
        ])
    }

    fn split(&self, counters: &std::collections::BTreeMap<String, u64>) -> Result<Vec<String>, String> {
        let split_region = |bucket: usize| self.region(bucket) == SPLIT_REGION;
        if let Some(cert) = self
            .0
            .certificates
            .iter()
            .find(|cert| split_region(cert.bucket) && during(cert.formed_us))
        {
            return Err(format!(
                "split region certified (bucket {}, seq {}) at {} ms while split 2|2",
                cert.bucket,
                cert.seq,
                cert.formed_us / 1_000
            ));
        }
        let homed_here: Vec<&ClaimTrace> = self
            .valid_claims()
            .filter(|claim| during(claim.created_us) && claim.home.is_some_and(split_region))
            .collect();
        let provisional = homed_here
            .iter()
            .filter(|claim| claim.provisional_us.is_some_and(during))
            .count();
        if provisional == 0 {
            return Err("the split region's owners sequenced no claim while split".into());
        }
        let certified_after = homed_here
            .iter()
            .filter(|claim| self.cert(claim).is_some_and(|cert| cert.formed_us >= HEAL_AT_US))
            .count();
        if certified_after != homed_here.len() {
            return Err(format!(
                "{} of {} claims homed in the split region and created while split were certified after the heal",
                certified_after,
                homed_here.len()
            ));
        }
        let elsewhere_global = self
            .certified_during()
            .filter(|(_, cert)| !split_region(cert.bucket))
            .filter(|(_, cert)| cert.global_us.is_some_and(|at| at < HEAL_AT_US))
            .count();
        if elsewhere_global == 0 {
            return Err("no other region's claim reached global during the split".into());
        }
        if let Some(cert) = self.0.certificates.iter().find(|cert| cert.freeze) {
            return Err(format!("bucket {} was frozen", cert.bucket));
        }
        let count = |name: &str| counters.get(name).copied().unwrap_or(0);
        if count("suspicion: suspected a region peer") == 0 {
            return Err("the halves never suspected each other".into());
        }
        let across = |bucket: usize| {
            let side = |node: usize| SPLIT_HALVES.iter().position(|half| half.contains(&node));
            self.0
                .successors
                .get(bucket)
                .copied()
                .flatten()
                .is_some_and(|successor| side(successor) != side(bucket))
        };
        let successors_across = SPLIT_HALVES.iter().flatten().filter(|bucket| across(**bucket)).count();
        let withheld = count("takeover: withheld, the region's quorum was not reachable throughout");
        if successors_across > 0 && withheld == 0 {
            return Err(format!(
                "{successors_across} owners' successors sat across the split, yet no takeover was withheld"
            ));
        }
        Ok(vec![
            format!(
                "the split region certified nothing while split; {provisional} of its claims were provisional, all \
                 {} certified after the heal",
                homed_here.len()
            ),
            format!("{elsewhere_global} claims of the other regions reached global during the split"),
            format!("no bucket frozen; takeover withheld {withheld} times (region quorum not reachable throughout)"),
        ])
    }

    fn owner_crash(&self) -> Result<Vec<String>, String> {
        let failure = self
            .0
            .failures
            .iter()
            .find(|f| f.node == FAILED_OWNER)
            .ok_or("the owner never failed")?;
        let (pending_seq, pending_claims) = failure.in_flight.ok_or("the owner failed with no batch in flight")?;
        if pending_claims == 0 {
            return Err("the batch in flight carried no claim".into());
        }
        let successor = self
            .0
            .successors
            .get(FAILED_OWNER)
            .copied()
            .flatten()
            .ok_or("the owner's bucket has no successor")?;
        let frozen = self
            .0
            .certificates
            .iter()
            .find(|cert| cert.bucket == FAILED_OWNER && cert.freeze)
            .ok_or("the failed owner's bucket was never frozen")?;
        if frozen.proposer != successor || frozen.collector != successor {
            return Err(format!(
                "the freeze was proposed by node {} and collected by node {}, not by the successor {successor}",
                frozen.proposer, frozen.collector
            ));
        }
        let earliest = failure.at_us + takeover_after_ms() * 1_000;
        if frozen.formed_us < earliest {
            return Err(format!(
                "frozen at {} ms, before the owner had been suspected for {} ms",
                frozen.formed_us / 1_000,
                takeover_after_ms()
            ));
        }
        if frozen.seq != pending_seq + 1 {
            return Err(format!(
                "the freeze sits at seq {}, not after the batch left in flight (seq {pending_seq})",
                frozen.seq
            ));
        }
        let pending = self
            .0
            .certificates
            .iter()
            .find(|cert| cert.bucket == FAILED_OWNER && cert.seq == pending_seq)
            .ok_or("the batch left in flight was never certified")?;
        if pending.collector != successor || pending.formed_us < failure.at_us {
            return Err(format!(
                "the batch left in flight was certified at {} ms by node {}, not by the successor after the failure",
                pending.formed_us / 1_000,
                pending.collector
            ));
        }
        let later: Vec<&ClaimTrace> = self
            .valid_claims()
            .filter(|claim| claim.created_us > failure.at_us && claim.home == Some(FAILED_OWNER))
            .collect();
        if let Some(claim) = later
            .iter()
            .find(|claim| self.cert(claim).is_none_or(|cert| cert.bucket != successor))
        {
            return Err(format!(
                "a claim homed at the failed owner, created at {} ms, was not certified by the successor: {:?}",
                claim.created_us / 1_000,
                self.cert(claim)
            ));
        }
        let held = later.iter().filter(|claim| claim.held).count();
        if self.0.final_digests.get(FAILED_OWNER).is_some_and(Option::is_some) {
            return Err("the failed owner is up at the end".into());
        }
        Ok(vec![
            format!(
                "node {FAILED_OWNER} failed at {} ms with its batch at seq {pending_seq} in flight ({pending_claims} \
                 claim{})",
                failure.at_us / 1_000,
                if pending_claims == 1 { "" } else { "s" }
            ),
            format!(
                "its successor, node {successor}, certified that batch at {} ms and froze the bucket at {} ms",
                pending.formed_us / 1_000,
                frozen.formed_us / 1_000
            ),
            format!(
                "all {} claims homed at it afterwards were certified in the successor's bucket, {held} of them held \
                 while it was suspected",
                later.len()
            ),
        ])
    }

    fn snapshot_at(&self, at_us: Micros) -> Result<&[Option<Digest>], String> {
        self.0
            .snapshots
            .iter()
            .find(|snapshot| snapshot.at_us == at_us)
            .map(|snapshot| snapshot.digests.as_slice())
            .ok_or_else(|| format!("no state snapshot at {} ms", at_us / 1_000))
    }

    /// Every node that is up holds the same state digest, and every certificate is global.
    fn converged(&self) -> Result<String, String> {
        let up: Vec<&Digest> = self.0.final_digests.iter().flatten().collect();
        let first = up.first().ok_or("no node is up at the end")?;
        if up.iter().any(|digest| digest != first) {
            return Err("nodes ended with different state digests".into());
        }
        if let Some(cert) = self.0.certificates.iter().find(|cert| cert.global_us.is_none()) {
            return Err(format!(
                "certificate (bucket {}, seq {}) never reached global",
                cert.bucket, cert.seq
            ));
        }
        Ok(format!(
            "{} nodes up at the end hold one state digest, {}; all {} certificates global",
            up.len(),
            hex::encode(first.get(..8).unwrap_or_default()),
            self.0.certificates.len()
        ))
    }
}
