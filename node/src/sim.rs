//! Deterministic simulator: many instances of the real core over a virtual
//! network and a virtual clock, with seeded faults and invariants checked
//! after every step. Driven by `credence sim`.

/// Arguments of `credence sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Seed of the run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Runs `credence sim`.
pub fn run_cli(args: SimArgs) -> anyhow::Result<()> {
    anyhow::bail!("the simulator is not built yet (seed {})", args.seed)
}
