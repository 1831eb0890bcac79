//! Tests of the simulator itself: determinism, a sweep over every fault profile, and checks that
//! broken states and a broken shell are caught.

use super::scenario::{FAILED_OWNER, FAULT_AT_US, HEAL_AT_US, NODES, REGIONS, SPLIT_REGION};
use super::*;
use crate::core::escrow::{BucketLiquidity, LiquidityReport, LiquidityTotals};
use crate::core::mutation::Mutation;

fn config(seed: u64, profile: Profile, duration_s: u64) -> Config {
    Config {
        seed,
        nodes: 12,
        regions: 3,
        duration_us: duration_s * 1_000_000,
        tail_us: 30_000_000,
        profile,
        rate_per_s: 20.0,
        monotonic_clock: true,
        durable_ledger: true,
        heartbeats: true,
        takeover: false,
        script: None,
        signatures: Signatures::Ed25519,
        workload: None,
    }
}

const PROFILES: [Profile; 6] = [
    Profile::None,
    Profile::Partitions,
    Profile::Crashes,
    Profile::Byzantine,
    Profile::Clock,
    Profile::All,
];

#[test]
fn same_seed_same_trace_hash() {
    let first = run_one(config(7, Profile::All, 6));
    let again = run_one(config(7, Profile::All, 6));
    let other = run_one(config(8, Profile::All, 6));
    assert_eq!(first.failure, None);
    assert_eq!(first.trace_hash.len(), 64);
    assert_eq!(first.trace_hash, again.trace_hash);
    assert_eq!(first.summary.events, again.summary.events);
    assert_ne!(first.trace_hash, other.trace_hash, "different seeds, same trace");
}

#[test]
fn sweep_of_every_profile_keeps_invariants_and_converges() {
    let configs: Vec<Config> = PROFILES
        .iter()
        .flat_map(|profile| (1..=8).map(move |seed| config(seed, *profile, 8)))
        .collect();
    let outcomes = run_many(configs, 2);
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            o.failure
                .as_ref()
                .map(|f| format!("{} seed {}: {f}", o.summary.faults, o.seed))
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    for o in &outcomes {
        // Each run must have exercised the protocol, not idled.
        assert!(o.summary.certificates > 10, "seed {} certified little", o.seed);
        assert!(o.summary.claims_global > 0, "seed {} reached no global claim", o.seed);
        assert_eq!(o.summary.claims_received + o.summary.claims_provisional, 0);
    }
    // The hostile profiles must actually have been hostile.
    let counter = |faults: &str, what: &str| -> u64 {
        outcomes
            .iter()
            .filter(|o| o.summary.faults == faults)
            .map(|o| o.summary.counters.get(what).copied().unwrap_or(0))
            .sum()
    };
    assert!(counter("partitions", "net: cut by partition") > 0);
    assert!(counter("crashes", "fault: crash") > 0);
    assert!(counter("crashes", "fault: restart") > 0);
    // Crashed validators fall silent: their region peers' phi-accrual must notice.
    assert!(counter("crashes", "suspicion: suspected a region peer") > 0);
    assert!(counter("byzantine", "byzantine: forged certificate") > 0);
    assert!(counter("byzantine", "validator: certificate refused") > 0);
    assert!(counter("byzantine", "byzantine: equivocated as an owner") > 0);
    assert!(counter("byzantine", "byzantine: funded a claim homed elsewhere") > 0);
    assert!(counter("byzantine", "voter refused") > 0);
    assert!(counter("clock", "voter refused: timestamp ahead") > 0);
}

/// Breaks `mutation` in the shared state machine and sweeps `profile` over seeds 1..=`seeds`
/// (short runs, one at a time on this thread, where the mutation is set): the first seed whose
/// run fails, with its failure. Prints the replay command.
fn sweep_with(mutation: Mutation, profile: Profile, takeover: bool, seeds: u64) -> Option<(u64, String)> {
    crate::core::mutation::set(Some(mutation));
    let found = (1..=seeds).find_map(|seed| {
        let mut cfg = config(seed, profile, 8);
        cfg.tail_us = 15_000_000;
        cfg.takeover = takeover;
        let outcome = run_one(cfg);
        outcome.failure.map(|failure| (seed, failure))
    });
    crate::core::mutation::set(None);
    if let Some((seed, failure)) = &found {
        println!(
            "{mutation:?} found at seed {seed}: {failure}\nreplay (in a test build with {mutation:?} set): credence sim \
             --seed {seed} --faults {} --duration 8s --tail 15s{}",
            profile.name(),
            if takeover { " --takeover" } else { "" }
        );
    }
    found
}

fn assert_found(mutation: Mutation, profile: Profile, takeover: bool, seeds: u64, expected: &[&str]) {
    let Some((_, failure)) = sweep_with(mutation, profile, takeover, seeds) else {
        panic!(
            "{mutation:?}: {seeds} seeds of --faults {} did not notice the broken rule",
            profile.name()
        );
    };
    assert!(
        expected.iter().any(|e| failure.contains(e)),
        "{mutation:?} was found, but as {failure:?} (expected one of {expected:?})"
    );
}

#[test]
fn mutant_vote_before_lock_is_found() {
    assert_found(
        Mutation::VoteWithoutLock,
        Profile::None,
        false,
        3,
        &["left before its lock was durable"],
    );
}

#[test]
fn mutant_voter_ignoring_its_locks_is_found() {
    assert_found(
        Mutation::IgnoreLocks,
        Profile::Byzantine,
        false,
        10,
        &["voted for two objects", "two certificates"],
    );
}

#[test]
fn mutant_voter_skipping_prev_is_found() {
    assert_found(
        Mutation::PrevUnchecked,
        Profile::Byzantine,
        false,
        10,
        &["breaks the hash chain", "ledger refuses", "two certificates"],
    );
}

#[test]
fn mutant_voter_skipping_the_home_bucket_check_is_found() {
    assert_found(
        Mutation::HomeUnchecked,
        Profile::Byzantine,
        false,
        10,
        &["funded twice", "ledger refuses", "two certificates"],
    );
}

#[test]
fn mutant_takeover_without_suspicion_is_found() {
    assert_found(
        Mutation::TakeoverWithoutSuspicion,
        Profile::None,
        true,
        3,
        &["although no fault was injected"],
    );
}

#[test]
fn the_unbroken_state_machine_passes_the_sweeps_the_mutants_fail() {
    // The same sweeps without a mutation: what they find is the mutation, not noise.
    for (profile, takeover) in [(Profile::None, true), (Profile::Byzantine, false)] {
        for seed in 1..=3 {
            let mut cfg = config(seed, profile, 8);
            cfg.tail_us = 15_000_000;
            cfg.takeover = takeover;
            let outcome = run_one(cfg);
            assert_eq!(outcome.failure, None, "{} seed {seed}", profile.name());
        }
    }
}

fn bucket(escrow: u64, spent: u64) -> BucketLiquidity {
    BucketLiquidity {
        bucket: [1; 32],
        region: "eu".into(),
        owner: [2; 32],
        share: escrow,
        escrow,
        spent,
        pending: 0,
        available: escrow.saturating_sub(spent),
        disputed: 0,
        stranded: 0,
        passed_on: 0,
        transferred_in: 0,
        transferred_out: 0,
        ended: false,
    }
}

fn report_of(buckets: Vec<BucketLiquidity>) -> LiquidityReport {
    let mut totals = LiquidityTotals::default();
    for b in &buckets {
        totals.share += b.share;
        totals.escrow += b.escrow;
        totals.spent += b.spent;
        totals.available += b.available;
    }
    LiquidityReport {
        distribution: totals.clone(),
        regions: [("eu".to_owned(), totals)].into_iter().collect(),
        buckets,
    }
}

#[test]
fn liquidity_checker_catches_broken_ledgers() {
    let healthy = report_of(vec![bucket(100, 40), bucket(50, 50)]);
    assert_eq!(check_liquidity(150, &healthy), Ok(()));

    let over = report_of(vec![bucket(100, 120)]);
    assert!(matches!(
        check_liquidity(100, &over),
        Err(Violation::BucketOverEscrow { spent: 120, .. })
    ));

    // Spent within each escrow but over the distribution's total.
    let overspent = report_of(vec![bucket(100, 100), bucket(100, 100)]);
    assert!(matches!(
        check_liquidity(150, &overspent),
        Err(Violation::Overspent { .. })
    ));

    // Money appearing from nowhere: available that no escrow accounts for.
    let mut leak = report_of(vec![bucket(100, 40)]);
    leak.distribution.available += 5;
    assert!(matches!(
        check_liquidity(100, &leak),
        Err(Violation::Conservation { .. })
    ));
}

#[test]
fn registry_catches_two_certificates_and_double_funding() {
    let mut registry = Registry::default();
    assert_eq!(registry.register(0, 0, [1; 32], [[9; 32]]), Ok(true));
    assert_eq!(
        registry.register(0, 0, [1; 32], [[9; 32]]),
        Ok(false),
        "same certificate again"
    );
    assert!(matches!(
        registry.register(0, 0, [2; 32], []),
        Err(Violation::TwoCertificates { bucket: 0, seq: 0, .. })
    ));
    assert!(matches!(
        registry.register(1, 0, [3; 32], [[9; 32]]),
        Err(Violation::SlotFundedTwice { .. })
    ));
}

#[test]
fn user_input_is_refused_with_clear_errors() {
    assert_eq!(parse_duration("30s").map(|d| d.micros), Ok(30_000_000));
    assert_eq!(parse_duration("250ms").map(|d| d.micros), Ok(250_000));
    assert_eq!(parse_duration("2m").map(|d| d.micros), Ok(120_000_000));
    for bad in ["", "s", "3x", "-1s", "0s", "1e9s", "99999m"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(parse_seeds("1..20"), Ok(SeedRange { first: 1, last: 20 }));
    assert_eq!(parse_seeds("3..=3"), Ok(SeedRange { first: 3, last: 3 }));
    for bad in ["1", "5..2", "a..b", "1..-2", "0..999999999"] {
        assert!(parse_seeds(bad).is_err(), "{bad:?} accepted");
    }
    let world = World::new(Config {
        regions: 13,
        ..config(1, Profile::None, 1)
    });
    assert!(world.is_err());
}

const SCENARIO_SEEDS: std::ops::RangeInclusive<u64> = 1..=3;
const SCENARIO_TAIL_US: u64 = 30_000_000;

fn scenario_run(scenario: Scenario, seed: u64) -> RunOutcome {
    run_one(scenario.config(seed, 20.0, SCENARIO_TAIL_US))
}

fn counter(outcome: &RunOutcome, name: &str) -> u64 {
    outcome.summary.counters.get(name).copied().unwrap_or(0)
}

fn checked(scenario: Scenario, outcome: &RunOutcome) -> Vec<String> {
    match scenario.check(outcome) {
        Ok(shown) => shown,
        Err(error) => panic!("{} seed {}: {error}", scenario.name(), outcome.seed),
    }
}

fn refused(scenario: Scenario, outcome: &RunOutcome, expected: &str) {
    match scenario.check(outcome) {
        Ok(shown) => panic!(
            "{} accepted a run it must refuse ({expected}): {shown:?}",
            scenario.name()
        ),
        Err(error) => assert!(
            error.contains(expected),
            "{}: {error:?} lacks {expected:?}",
            scenario.name()
        ),
    }
}

#[test]
fn region_partition_certifies_inside_each_region_and_reaches_global_only_after_the_heal() {
    let scenario = Scenario::RegionPartition;
    for seed in SCENARIO_SEEDS {
        let outcome = scenario_run(scenario, seed);
        checked(scenario, &outcome);
        assert!(
            counter(&outcome, "net: cut by partition") > 0,
            "seed {seed}: nothing was cut"
        );
        assert_eq!(outcome.summary.faults, "region-partition");
    }

    // The check refuses runs that break what the scenario claims.
    let outcome = scenario_run(scenario, 1);
    let during = |at: u64| (FAULT_AT_US..HEAL_AT_US).contains(&at);
    let mut early_global = outcome.clone();
    let cut_off = early_global
        .record
        .certificates
        .iter_mut()
        .find(|cert| during(cert.formed_us))
        .map(|cert| cert.global_us = Some(HEAL_AT_US - 1));
    assert!(cut_off.is_some(), "no certificate formed while cut off");
    refused(scenario, &early_global, "before the heal");

    let mut no_divergence = outcome.clone();
    for snapshot in &mut no_divergence.record.snapshots {
        snapshot.digests.fill(Some([7; 32]));
    }
    refused(scenario, &no_divergence, "did not diverge");

    let mut not_converged = outcome.clone();
    if let Some(last) = not_converged.record.final_digests.last_mut() {
        *last = Some([7; 32]);
    }
    refused(scenario, &not_converged, "different state digests");

    let mut one_region_idle = outcome;
    one_region_idle
        .record
        .certificates
        .iter_mut()
        .filter(|cert| cert.bucket % REGIONS == 2 && during(cert.formed_us))
        .for_each(|cert| cert.formed_us = HEAL_AT_US);
    refused(scenario, &one_region_idle, "region 2 certified no claim");
}

#[test]
fn split_2_2_region_stays_provisional_while_split_and_certifies_after_the_heal() {
    let scenario = Scenario::Split22;
    let mut withheld = 0;
    for seed in SCENARIO_SEEDS {
        let outcome = scenario_run(scenario, seed);
        checked(scenario, &outcome);
        assert_eq!(counter(&outcome, "takeover: proposed"), 0, "seed {seed}");
        assert!(outcome.record.claims.iter().any(|c| c.held), "seed {seed}");
        withheld += counter(
            &outcome,
            "takeover: withheld, the region's quorum was not reachable throughout",
        );
    }
    // Some owner's successor sat on the other half and suspected it past takeover_after.
    assert!(withheld > 0, "no takeover was ever withheld");

    let outcome = scenario_run(scenario, 1);
    let mut certified_while_split = outcome.clone();
    let moved = certified_while_split
        .record
        .certificates
        .iter_mut()
        .find(|cert| cert.bucket % REGIONS == SPLIT_REGION && cert.formed_us >= HEAL_AT_US)
        .map(|cert| cert.formed_us = FAULT_AT_US + 1);
    assert!(moved.is_some(), "the split region certified nothing after the heal");
    refused(scenario, &certified_while_split, "while split 2|2");

    let mut never_provisional = outcome;
    for claim in &mut never_provisional.record.claims {
        claim.provisional_us = None;
    }
    refused(scenario, &never_provisional, "sequenced no claim");
}

#[test]
fn crashed_owner_is_frozen_by_its_successor_which_certifies_its_claims() {
    let scenario = Scenario::OwnerCrash;
    let mut held = 0;
    for seed in SCENARIO_SEEDS {
        let outcome = scenario_run(scenario, seed);
        checked(scenario, &outcome);
        let freezes = outcome.record.certificates.iter().filter(|c| c.freeze).count();
        assert_eq!(freezes, 1, "seed {seed}");
        assert_eq!(
            counter(&outcome, "fault: restart"),
            0,
            "seed {seed}: the owner came back"
        );
        let failed_at = outcome.record.failures[0].at_us;
        held += outcome
            .record
            .claims
            .iter()
            .filter(|claim| claim.held && claim.home == Some(FAILED_OWNER) && claim.created_us > failed_at)
            .count();
    }
    // Region peers held claims for the suspected owner; the check saw each certified by the
    // successor.
    assert!(held > 0, "no claim was held for the failed owner");

    let outcome = scenario_run(scenario, 1);
    let successor = outcome.record.successors[FAILED_OWNER].expect("a successor");
    let freeze_at = |outcome: &RunOutcome| {
        outcome
            .record
            .certificates
            .iter()
            .position(|cert| cert.bucket == FAILED_OWNER && cert.freeze)
            .expect("a freeze")
    };
    let mut wrong_proposer = outcome.clone();
    let index = freeze_at(&wrong_proposer);
    wrong_proposer.record.certificates[index].proposer = (successor + REGIONS) % NODES;
    refused(scenario, &wrong_proposer, "not by the successor");

    let mut early = outcome.clone();
    let index = freeze_at(&early);
    early.record.certificates[index].formed_us = early.record.failures[0].at_us + 1;
    refused(scenario, &early, "before the owner had been suspected");

    let mut paid_by_owner = outcome.clone();
    let pending = paid_by_owner.record.certificates[freeze_at(&paid_by_owner)].seq - 1;
    let owner_cert = paid_by_owner
        .record
        .certificates
        .iter()
        .position(|cert| cert.bucket == FAILED_OWNER && cert.seq == pending);
    let failed_at = paid_by_owner.record.failures[0].at_us;
    let later =
        paid_by_owner.record.claims.iter_mut().find(|claim| {
            claim.home == Some(FAILED_OWNER) && claim.created_us > failed_at && claim.certificate.is_some()
        });
    later
        .expect("a claim homed at the failed owner after it failed")
        .certificate = owner_cert;
    refused(scenario, &paid_by_owner, "not certified by the successor");

    // Without takeover the failed owner's bucket stalls: its claims are never certified.
    let mut cfg = scenario.config(1, 20.0, 10_000_000);
    cfg.takeover = false;
    let stalled = run_one(cfg);
    let failure = stalled.failure.unwrap_or_default();
    assert!(failure.contains("liveness"), "{failure:?}");
    assert!(failure.contains(&format!("home Some({FAILED_OWNER})")), "{failure:?}");
}

#[derive(clap::Parser)]
struct SimCommand {
    #[command(flatten)]
    args: SimArgs,
}

fn parse(line: &str) -> Result<SimArgs, clap::Error> {
    use clap::Parser as _;
    SimCommand::try_parse_from(line.split_whitespace()).map(|command| command.args)
}

#[test]
fn scenario_flag_sets_the_script_replays_and_judges() {
    let args = parse("sim --scenario split-2-2 --seed 4 --tail 20s").expect("parses");
    let cfg = args.config(4);
    assert_eq!(cfg.script.as_ref().map(|s| s.name), Some("split-2-2"));
    assert_eq!((cfg.nodes, cfg.regions, cfg.tail_us), (NODES, REGIONS, 20_000_000));
    let replay = args.replay(4);
    let again = parse(replay.trim_start_matches("credence ")).expect("the replay parses");
    assert_eq!(again.config(4).script, cfg.script);

    // The scenario owns the topology and the faults.
    for clash in [
        "--nodes 5",
        "--faults all",
        "--duration 3s",
        "--scale-projection",
        "--takeover",
    ] {
        assert!(
            parse(&format!("sim --scenario owner-crash {clash}")).is_err(),
            "{clash} accepted"
        );
    }

    // A run that does not show what the scenario claims fails, with the reason.
    let mut outcome = run_one(args.config(4));
    assert_eq!(args.judge(&mut outcome.clone()).len(), 4);
    outcome.record.certificates.clear();
    assert!(args.judge(&mut outcome).is_empty());
    let failure = outcome.failure.unwrap_or_default();
    assert!(failure.starts_with("scenario split-2-2:"), "{failure:?}");
}
