//! Tests of the simulator itself: determinism, a sweep over every fault profile, and checks that
//! broken states and a broken shell are caught.

use super::*;
use crate::core::escrow::{BucketLiquidity, LiquidityReport, LiquidityTotals};

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
        skip_signature_checks: false,
        heartbeats: true,
        takeover: false,
        script: None,
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
    assert!(counter("byzantine", "shell: forged certificate refused") > 0);
    assert!(counter("byzantine", "shell: forged vote refused") > 0);
    assert!(counter("byzantine", "byzantine: equivocated") > 0);
    assert!(counter("clock", "voter refused: TimestampAhead") > 0);
}

#[test]
fn a_shell_that_skips_signature_checks_is_caught() {
    // The Byzantine validator forges certificates; without signature checks nodes apply them
    // and the invariants must notice.
    for seed in 1..=3 {
        let mut cfg = config(seed, Profile::Byzantine, 8);
        cfg.skip_signature_checks = true;
        let outcome = run_one(cfg);
        let failure = outcome.failure.unwrap_or_default();
        assert!(
            failure.contains("no quorum formed") || failure.contains("cannot apply"),
            "seed {seed}: broken shell not caught: {failure:?}"
        );
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
