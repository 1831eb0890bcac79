//! `credence genesis …`: the ceremony steps (see `ceremony.rs`) and the
//! local shortcut that writes a whole network with its keys.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::ceremony::{self, NewValidator};
use crate::config::{self, DistributionEntry, FaultModel, GenesisPlan};
use crate::node;

/// Write a genesis: step by step from public keys (`genesis init`, `add-*`,
/// `finalize`, for a network whose operators each keep their own key), or
/// in one go with `--regions … --out DIR` (a local network: every key in
/// one directory).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct GenesisArgs {
    #[command(subcommand)]
    pub step: Option<GenesisStep>,
    /// Comma-separated region names, e.g. eu,us,ap (the local shortcut).
    #[arg(long, value_delimiter = ',', required = true)]
    pub regions: Vec<String>,
    /// Validators in each region.
    #[arg(long, default_value_t = 4)]
    pub validators_per_region: u32,
    /// Output directory (must not already hold a genesis).
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// First port; each node takes three in a row: RPC, p2p, HTTP.
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
    /// A name for the network.
    #[arg(long, default_value = "credence-local")]
    pub network_name: String,
    /// The demo distribution's allocation in each region; each claim pays
    /// 100, so the default pays 10,000 claims per region.
    #[arg(long, default_value_t = config::DEMO_REGION_BUDGET)]
    pub region_budget: u64,
    #[arg(long)]
    pub json: bool,
}

/// One step of a genesis ceremony. Each refuses bad input with its reason
/// and then leaves the file as it was.
#[derive(Debug, Subcommand)]
pub enum GenesisStep {
    /// Start a genesis: its name, regions and fault model. No keys yet.
    Init {
        #[arg(long)]
        network_name: String,
        /// Comma-separated region names, e.g. eu,us,ap.
        #[arg(long, value_delimiter = ',', required = true)]
        regions: Vec<String>,
        /// `byzantine` (quorums of more than 2/3; at least 4 validators per region) or `crash`
        /// (majorities; validators that only stop).
        #[arg(long, default_value = "byzantine", value_parser = parse_fault_model)]
        fault_model: FaultModel,
        /// The genesis file to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Add a validator by its public key (from `credence keygen` on its host) and dial address.
    AddValidator {
        #[arg(long)]
        genesis: PathBuf,
        #[arg(long)]
        region: String,
        /// The validator's ed25519 public key, 64 hex characters.
        #[arg(long)]
        pubkey: String,
        /// Where peers dial it: a multiaddr ending in /p2p/<its peer id>, e.g.
        /// /ip4/10.0.0.5/tcp/7101/p2p/12D3KooW… (`credence keygen` prints the peer id).
        #[arg(long)]
        address: String,
        #[arg(long, default_value_t = 1)]
        weight: u64,
        /// Its name (default: <region>-<n>).
        #[arg(long)]
        name: Option<String>,
    },
    /// Add an issuer and the schemas it may attest.
    AddIssuer {
        #[arg(long)]
        genesis: PathBuf,
        #[arg(long)]
        pubkey: String,
        /// Comma-separated schema names.
        #[arg(long, value_delimiter = ',', required = true)]
        schemas: Vec<String>,
    },
    /// Add an operator: a key that may sign distributions, rebalances and reconfigurations.
    AddOperator {
        #[arg(long)]
        genesis: PathBuf,
        #[arg(long)]
        pubkey: String,
    },
    /// Add a distribution paid from regional escrows.
    AddDistribution {
        #[arg(long)]
        genesis: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        asset: String,
        #[arg(long)]
        total: u64,
        /// The credential schema a claimant must hold.
        #[arg(long)]
        schema: String,
        #[arg(long)]
        amount_per_claim: u64,
        /// Escrow per region, summing to the total: eu=1000,us=1000.
        #[arg(long)]
        allocations: String,
        /// Epoch milliseconds; 0: open from the start.
        #[arg(long, default_value_t = 0)]
        opens_at: u64,
        /// Epoch milliseconds; 0: never closes.
        #[arg(long, default_value_t = 0)]
        closes_at: u64,
    },
    /// Check the whole genesis, write it in its final form and print its network id.
    Finalize {
        #[arg(long)]
        genesis: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn parse_fault_model(text: &str) -> Result<FaultModel, String> {
    match text {
        "byzantine" => Ok(FaultModel::Byzantine),
        "crash" => Ok(FaultModel::Crash),
        other => Err(format!("unknown fault model {other:?}: byzantine or crash")),
    }
}

pub fn run(args: GenesisArgs) -> anyhow::Result<()> {
    match args.step {
        None => local(args),
        Some(step) => ceremony_step(step),
    }
}

fn ceremony_step(step: GenesisStep) -> anyhow::Result<()> {
    match step {
        GenesisStep::Init {
            network_name,
            regions,
            fault_model,
            out,
        } => {
            ceremony::init(&out, &network_name, &regions, fault_model, node::now_ms())?;
            eprintln!(
                "started {} (regions {}); next: genesis add-validator --genesis {}",
                out.display(),
                regions.join(", "),
                out.display()
            );
        }
        GenesisStep::AddValidator {
            genesis,
            region,
            pubkey,
            address,
            weight,
            name,
        } => {
            let name = ceremony::add_validator(
                &genesis,
                &NewValidator {
                    region,
                    pubkey,
                    address,
                    weight,
                    name,
                },
            )?;
            eprintln!("added validator {name}");
        }
        GenesisStep::AddIssuer {
            genesis,
            pubkey,
            schemas,
        } => {
            ceremony::add_issuer(&genesis, &pubkey, &schemas)?;
            eprintln!("added an issuer of {}", schemas.join(", "));
        }
        GenesisStep::AddOperator { genesis, pubkey } => {
            ceremony::add_operator(&genesis, &pubkey)?;
            eprintln!("added an operator");
        }
        GenesisStep::AddDistribution {
            genesis,
            name,
            asset,
            total,
            schema,
            amount_per_claim,
            allocations,
            opens_at,
            closes_at,
        } => {
            let allocations = ceremony::parse_allocations(&allocations)?;
            ceremony::add_distribution(
                &genesis,
                DistributionEntry {
                    name: name.clone(),
                    asset,
                    total,
                    schema,
                    amount_per_claim,
                    opens_at,
                    closes_at,
                    allocations,
                },
            )?;
            eprintln!("added distribution {name}");
        }
        GenesisStep::Finalize { genesis, json } => {
            let done = ceremony::finalize(&genesis)?;
            if json {
                println!("{}", serde_json::to_string(&done)?);
            } else {
                println!("{}", done.network_id);
                eprintln!(
                    "{} is final: network {} with {} validators; give every node this exact file",
                    genesis.display(),
                    done.network_name,
                    done.validators
                );
            }
        }
    }
    Ok(())
}

fn local(args: GenesisArgs) -> anyhow::Result<()> {
    let out = args
        .out
        .ok_or_else(|| anyhow::anyhow!("--out DIR is required (or a step: genesis init --help)"))?;
    let plan = GenesisPlan {
        network_name: args.network_name,
        regions: args.regions,
        validators_per_region: args.validators_per_region,
        base_port: args.base_port,
        created_at: node::now_ms(),
        region_budget: args.region_budget,
    };
    let network = config::write_network(&plan, &out)?;
    if args.json {
        println!("{}", serde_json::to_string(&network)?);
    } else {
        println!("network {} written to {}", network.network_id, out.display());
        for n in &network.nodes {
            println!("  {:<8} {:<4} rpc {}  p2p {}", n.name, n.region, n.rpc, n.p2p);
        }
        println!(
            "start a node with: credence node --config {}",
            out.join("nodes/NAME/node.toml").display()
        );
    }
    Ok(())
}
