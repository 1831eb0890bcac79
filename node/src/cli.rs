//! The command line: `credence node` runs a node; every other subcommand is a
//! small tool (keys, genesis) or a gRPC client. The only module that prints
//! for humans. With `--json`, a client prints exactly one JSON object on
//! stdout; errors go to stderr as one line, with a non-zero exit code.

mod client;
mod escrow;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, DEFAULT_RPC_URL, GenesisPlan, LoadedGenesis, NodeConfig};
use crate::keys;
use crate::node::{self, NodeSettings};

/// Credence: credentials, distributions and escrowed liquidity over a
/// peer-to-peer network.
///
/// Start with `credence node --dev`: a one-node network with demo keys.
/// Then, in another terminal, `credence status` and `credence attest --help`.
#[derive(Debug, Parser)]
#[command(name = "credence", version, about, long_about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: `--dev` for a one-node playground, `--config FILE` for a real network.
    Node(NodeArgs),
    /// Write a new key file (mode 0600) and print its public key.
    Keygen {
        /// Where to write the key; refuses to overwrite.
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print the public key (hex) of a key file.
    Pubkey {
        /// The key file.
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write a whole local network: genesis, keys, one node.toml per validator, network.json.
    Genesis(GenesisArgs),
    /// Show a node's identity, network, mode, peers and queues.
    Status {
        #[command(flatten)]
        rpc: RpcArgs,
    },
    /// Sign an attestation about a subject and submit it.
    Attest {
        #[command(flatten)]
        rpc: RpcArgs,
        /// The issuer's key file.
        #[arg(long)]
        key: PathBuf,
        /// The subject's public key, 64 hex characters.
        #[arg(long)]
        subject: String,
        /// The schema; the issuer must be granted it.
        #[arg(long)]
        schema: String,
        /// Free-form payload (at most 4 KiB).
        #[arg(long, default_value = "")]
        data: String,
        /// Seconds until the credential expires (default: never).
        #[arg(long)]
        expires_in: Option<u64>,
    },
    /// Sign a revocation of an attestation and submit it (issuer only).
    Revoke {
        #[command(flatten)]
        rpc: RpcArgs,
        /// The issuer's key file.
        #[arg(long)]
        key: PathBuf,
        /// The attestation id, 64 hex characters.
        id: String,
        /// Why it is revoked.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Show a credential and its status: valid, revoked, expired or unknown.
    Credential {
        #[command(flatten)]
        rpc: RpcArgs,
        /// The attestation id, 64 hex characters.
        id: String,
    },
    /// Fault injection: block or unblock a peer (the node must run with --enable-fault-injection;
    /// the call carries the admin token the node wrote, see --admin-token-file).
    BlockPeer {
        #[command(flatten)]
        rpc: RpcArgs,
        #[command(flatten)]
        admin: AdminArgs,
        /// PeerId, or the peer's public key (64 hex).
        peer: String,
        /// Unblock instead of block.
        #[arg(long)]
        unblock: bool,
    },
    /// List the distributions a node knows.
    Distributions {
        #[command(flatten)]
        rpc: RpcArgs,
    },
    /// Create a distribution (operator key): budget split over regions.
    Distribute(escrow::DistributeArgs),
    /// Claim from a distribution with a credential; `--wait regional` waits for certification.
    Claim(escrow::ClaimArgs),
    /// A claim's status: received, provisional, regional, global, disputed or rejected, with times.
    ClaimStatus {
        #[command(flatten)]
        rpc: RpcArgs,
        /// The claim id.
        id: String,
    },
    /// Escrow, spent, pending and available per region and bucket of a distribution.
    Liquidity {
        #[command(flatten)]
        rpc: RpcArgs,
        /// The distribution id.
        id: String,
    },
    /// A claimant's home region and bucket owner, to send claims straight there.
    Route {
        #[command(flatten)]
        rpc: RpcArgs,
        #[arg(long)]
        distribution: String,
        /// The claimant's public key (64 hex).
        #[arg(long)]
        claimant: String,
    },
    /// What an account has been credited, per distribution.
    Balance {
        #[command(flatten)]
        rpc: RpcArgs,
        /// The recipient's public key (64 hex).
        account: String,
    },
    /// Move escrow between regions (operator key). The source region's owners
    /// each move their share of AMOUNT in a transfer entry of their own chain,
    /// certified by their region alone, so it works during a partition on the
    /// source side and lands in the destination when the certificate arrives.
    /// What a bucket cannot cover yet moves when it can. Prints the request id.
    Rebalance {
        #[command(flatten)]
        rpc: RpcArgs,
        /// The operator's key file.
        #[arg(long)]
        key: PathBuf,
        /// Distribution id (64 hex).
        #[arg(long)]
        distribution: String,
        /// Region the escrow leaves.
        #[arg(long)]
        from: String,
        /// Region the escrow goes to.
        #[arg(long)]
        to: String,
        /// Amount to move, in the distribution's asset units.
        #[arg(long)]
        amount: u64,
    },
    /// Run the deterministic simulator: many cores, a virtual network and clock, seeded faults.
    Sim(crate::sim::SimArgs),
    /// List every credential a node knows for one subject.
    Credentials {
        #[command(flatten)]
        rpc: RpcArgs,
        /// The subject's public key, 64 hex characters.
        #[arg(long)]
        subject: String,
    },
}

#[derive(Debug, Args)]
pub struct RpcArgs {
    /// The node's gRPC address.
    #[arg(long, default_value = DEFAULT_RPC_URL, env = "CREDENCE_RPC")]
    pub rpc: String,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What the admin (fault-injection) calls carry besides `--rpc`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The node's admin token file: a node started with --enable-fault-injection writes a fresh
    /// one at every start to DATA_DIR/store/admin.token (DIR/store/admin.token with --dev --data-dir DIR).
    #[arg(long, env = "CREDENCE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// One-node network with generated genesis and demo keys (no setup).
    #[arg(long, conflicts_with = "config")]
    pub dev: bool,
    /// The node's config file (see `credence genesis`).
    #[arg(long, required_unless_present = "dev")]
    pub config: Option<PathBuf>,
    /// Dev mode: where to keep keys and state (default: a fresh temporary directory).
    #[arg(long, requires = "dev")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address (overrides the config).
    #[arg(long)]
    pub rpc_listen: Option<SocketAddr>,
    /// HTTP listen address for /metrics, /healthz and /v1 (overrides the config).
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// libp2p listen multiaddr (overrides the config).
    #[arg(long)]
    pub p2p_listen: Option<String>,
    /// Allow the admin RPC calls that block peers (testnets only).
    #[arg(long)]
    pub enable_fault_injection: bool,
}

#[derive(Debug, Args)]
pub struct GenesisArgs {
    /// Comma-separated region names, e.g. eu,us,ap.
    #[arg(long, value_delimiter = ',', required = true)]
    pub regions: Vec<String>,
    /// Validators in each region.
    #[arg(long, default_value_t = 4)]
    pub validators_per_region: u32,
    /// Output directory (must not already hold a genesis).
    #[arg(long)]
    pub out: PathBuf,
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

/// Runs a parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    // The simulator runs hundreds of state machines whose warnings (refused votes, takeovers)
    // are its subject, reported in its summary: it logs errors only unless RUST_LOG says more.
    let default_filter = match cli.command {
        Command::Sim(_) => "error",
        _ => "info,libp2p_gossipsub=warn,libp2p_swarm=warn",
    };
    init_tracing(cli.log_format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Node(args) => run_node(args).await,
        Command::Keygen { out, json } => {
            let key = keys::generate();
            keys::write(&out, &key)?;
            let public = hex::encode(key.verifying_key().to_bytes());
            if json {
                println!("{}", serde_json::json!({ "public_key": public, "path": out }));
            } else {
                println!("{public}");
                eprintln!("wrote {} (mode 0600)", out.display());
            }
            Ok(())
        }
        Command::Pubkey { file, json } => {
            let key = keys::load(&file)?;
            let public = hex::encode(key.verifying_key().to_bytes());
            if json {
                println!("{}", serde_json::json!({ "public_key": public }));
            } else {
                println!("{public}");
            }
            Ok(())
        }
        Command::Genesis(args) => {
            let plan = GenesisPlan {
                network_name: args.network_name,
                regions: args.regions,
                validators_per_region: args.validators_per_region,
                base_port: args.base_port,
                created_at: node::now_ms(),
                region_budget: args.region_budget,
            };
            let network = config::write_network(&plan, &args.out)?;
            if args.json {
                println!("{}", serde_json::to_string(&network)?);
            } else {
                println!("network {} written to {}", network.network_id, args.out.display());
                for n in &network.nodes {
                    println!("  {:<8} {:<4} rpc {}  p2p {}", n.name, n.region, n.rpc, n.p2p);
                }
                println!(
                    "start a node with: credence node --config {}",
                    args.out.join("nodes/NAME/node.toml").display()
                );
            }
            Ok(())
        }
        Command::Status { rpc } => client::status(&rpc).await,
        Command::Attest {
            rpc,
            key,
            subject,
            schema,
            data,
            expires_in,
        } => client::attest(&rpc, &key, &subject, &schema, data, expires_in).await,
        Command::Revoke { rpc, key, id, reason } => client::revoke(&rpc, &key, &id, reason).await,
        Command::Credential { rpc, id } => client::credential(&rpc, &id).await,
        Command::Credentials { rpc, subject } => client::credentials(&rpc, &subject).await,
        Command::Sim(args) => crate::sim::run_cli(args),
        Command::Distributions { rpc } => escrow::distributions(&rpc).await,
        Command::Distribute(args) => escrow::distribute(&args).await,
        Command::Claim(args) => escrow::claim(&args).await,
        Command::ClaimStatus { rpc, id } => escrow::claim_status(&rpc, &id).await,
        Command::Liquidity { rpc, id } => escrow::liquidity(&rpc, &id).await,
        Command::Route {
            rpc,
            distribution,
            claimant,
        } => escrow::route(&rpc, &distribution, &claimant).await,
        Command::Balance { rpc, account } => escrow::balance(&rpc, &account).await,
        Command::Rebalance {
            rpc,
            key,
            distribution,
            from,
            to,
            amount,
        } => {
            let body = credence_proto::v1::Rebalance {
                operator: vec![],
                distribution_id: client::hex32(&distribution, "--distribution")?.to_vec(),
                from_region: from,
                to_region: to,
                amount,
                nonce: rand::random(),
            };
            escrow::rebalance(&rpc, &key, body).await
        }
        Command::BlockPeer {
            rpc,
            admin,
            peer,
            unblock,
        } => client::block_peer(&rpc, &admin, &peer, !unblock).await,
    }
}

async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let (settings, keys_dir, _temp) = if args.dev {
        let (dir, temp) = match &args.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new().prefix("credence-dev-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
        let layout = config::prepare_dev(&dir, node::now_ms())?;
        let genesis = LoadedGenesis::load(&layout.genesis)?;
        let rpc_listen = args
            .rpc_listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], config::DEFAULT_RPC_PORT)));
        // The HTTP port follows the RPC port only at the defaults; with a
        // custom RPC address an ephemeral one avoids clashing with a neighbour.
        let http_listen = args.http_listen.unwrap_or_else(|| {
            if args.rpc_listen.is_none() {
                SocketAddr::from(([127, 0, 0, 1], config::DEFAULT_RPC_PORT + 1))
            } else {
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        });
        let settings = NodeSettings {
            key: keys::load(&layout.node_key)?,
            genesis,
            store_dir: layout.store_dir,
            rpc_listen,
            http_listen,
            p2p_listen: vec![args.p2p_listen.unwrap_or_else(|| "/ip4/127.0.0.1/tcp/0".into())],
            peers: vec![],
            max_incoming_connections: config::DEFAULT_MAX_INCOMING_CONNECTIONS,
            enable_fault_injection: args.enable_fault_injection,
            dial_genesis_addresses: true,
            mode_label: "dev",
        };
        (settings, Some(layout.keys_dir), temp)
    } else {
        let path = args
            .config
            .ok_or_else(|| anyhow::anyhow!("pass --config FILE or --dev"))?;
        let cfg = NodeConfig::load(&path)?;
        let genesis = LoadedGenesis::load(&cfg.genesis)?;
        let settings = NodeSettings {
            key: keys::load(&cfg.key)?,
            genesis,
            store_dir: cfg.store_dir(),
            rpc_listen: args.rpc_listen.unwrap_or(cfg.rpc_listen),
            http_listen: args.http_listen.unwrap_or(cfg.http_listen),
            p2p_listen: args.p2p_listen.map(|a| vec![a]).unwrap_or(cfg.p2p_listen),
            peers: cfg.peers,
            max_incoming_connections: cfg.max_incoming_connections,
            enable_fault_injection: args.enable_fault_injection || cfg.enable_fault_injection,
            dial_genesis_addresses: cfg.dial_genesis_addresses,
            mode_label: "node",
        };
        (settings, None, None)
    };
    let admin_token = settings
        .enable_fault_injection
        .then(|| crate::rpc::admin::token_file(&settings.store_dir));
    let running = node::start(settings).await?;
    let info = running.handle.info.clone();
    println!("credence node {} ({})", info.name, info.mode_label);
    println!("  network  {}", hex::encode(info.network_id.0));
    println!("  node id  {}", hex::encode(info.node_id));
    println!("  RPC      http://{}", running.rpc_addr);
    println!("  HTTP     http://{}/metrics  /healthz  /v1/status", running.http_addr);
    if let Some(path) = admin_token {
        println!("  admin    token in {} (--admin-token-file)", path.display());
    }
    if let Some(dir) = keys_dir {
        println!("  keys     {}/{{issuer,operator,claimant}}.key", dir.display());
        println!("try:");
        println!("  credence status --rpc http://{}", running.rpc_addr);
        println!(
            "  credence attest --rpc http://{} --key {}/issuer.key --schema demo --subject $(credence pubkey {}/claimant.key)",
            running.rpc_addr,
            dir.display(),
            dir.display()
        );
    }
    let failed = tokio::select! {
        _ = shutdown_signal() => false,
        _ = running.stopped() => true,
    };
    eprintln!("shutting down");
    running.stop().await;
    if failed {
        anyhow::bail!("the node stopped because its storage failed; see the log above");
    }
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
