//! Client subcommands of the escrow service: distributions, claims,
//! liquidity, routing and balances.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail};
use credence_proto::v1 as pb;
use credence_proto::v1::escrow_client::EscrowClient;
use prost::Message;
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::RpcArgs;
use super::client::{channel, hex32, network_id, rpc_error};
use crate::core::envelope::{Kind, seal};
use crate::keys;
use crate::node::now_ms;

async fn connect(rpc: &RpcArgs) -> anyhow::Result<EscrowClient<Channel>> {
    Ok(EscrowClient::new(channel(rpc).await?).max_decoding_message_size(crate::rpc::RPC_RESPONSE_MAX_BYTES))
}

fn distribution_json(d: &pb::DistributionInfo) -> Value {
    json!({
        "id": d.id, "name": d.name, "asset": d.asset, "total": d.total, "schema": d.schema,
        "amount_per_claim": d.amount_per_claim, "opens_at": d.opens_at, "closes_at": d.closes_at,
        "operator": d.operator,
        "allocations": d.allocations.iter().map(|a| json!({"region": a.region, "amount": a.amount})).collect::<Vec<_>>(),
    })
}

pub(super) async fn distributions(rpc: &RpcArgs) -> anyhow::Result<()> {
    let list = connect(rpc)
        .await?
        .list_distributions(pb::ListDistributionsRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    if rpc.json {
        let items: Vec<_> = list.distributions.iter().map(distribution_json).collect();
        println!("{}", json!({ "distributions": items, "as_of": list.as_of }));
    } else {
        for d in &list.distributions {
            let allocations: Vec<String> = d
                .allocations
                .iter()
                .map(|a| format!("{}={}", a.region, a.amount))
                .collect();
            println!(
                "{}  {} {} {} ({} per claim, schema {})",
                d.id, d.name, d.total, d.asset, d.amount_per_claim, d.schema
            );
            println!("  allocations {}", allocations.join(","));
            let at = |ms: u64| super::time::when(ms, list.as_of);
            match (d.opens_at, d.closes_at) {
                (0, 0) => {}
                (opens, 0) => println!("  opens       {}, never closes", at(opens)),
                (0, closes) => println!("  closes      {}", at(closes)),
                (opens, closes) => println!("  open        {} to {}", at(opens), at(closes)),
            }
        }
    }
    Ok(())
}

/// Options of `credence distribute`.
#[derive(Debug, clap::Args)]
pub struct DistributeArgs {
    #[command(flatten)]
    pub rpc: RpcArgs,
    /// The operator's key file.
    #[arg(long)]
    pub key: std::path::PathBuf,
    /// Asset name.
    #[arg(long)]
    pub asset: String,
    /// Total budget in base units; must equal the sum of the allocations.
    #[arg(long)]
    pub total: u64,
    /// Schema a claimant's credential must have.
    #[arg(long)]
    pub schema: String,
    /// Amount paid per claim.
    #[arg(long)]
    pub amount_per_claim: u64,
    /// Budget per region, e.g. eu=500,us=500.
    #[arg(long)]
    pub allocations: String,
    /// A human-readable name.
    #[arg(long, default_value = "")]
    pub name: String,
    /// Seconds from now until the window closes (default: never).
    #[arg(long)]
    pub closes_in: Option<u64>,
}

pub(super) async fn distribute(args: &DistributeArgs) -> anyhow::Result<()> {
    let key = keys::load(&args.key)?;
    let mut allocations = Vec::new();
    for part in args.allocations.split(',').filter(|p| !p.is_empty()) {
        let (region, amount) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("--allocations wants REGION=AMOUNT,…; got {part:?}"))?;
        let amount: u64 = amount
            .parse()
            .map_err(|_| anyhow!("allocation for {region} is not a whole number: {amount:?}"))?;
        allocations.push(pb::Allocation {
            region: region.to_string(),
            amount,
        });
    }
    let sum = allocations.iter().try_fold(0u64, |acc, a| acc.checked_add(a.amount));
    if sum != Some(args.total) {
        bail!("allocations sum to {:?}, not --total {}", sum, args.total);
    }
    let now = now_ms();
    let body = pb::Distribution {
        operator: key.verifying_key().to_bytes().to_vec(),
        asset: args.asset.clone(),
        total: args.total,
        rule: Some(pb::DistributionRule {
            schema: args.schema.clone(),
            issuers: vec![],
            amount_per_claim: args.amount_per_claim,
        }),
        opens_at: 0,
        closes_at: args
            .closes_in
            .map(|s| now.saturating_add(s.saturating_mul(1000)))
            .unwrap_or(0),
        allocations,
        nonce: rand::random(),
        max_outflow_per_window: 0,
        outflow_window_ms: 0,
        name: args.name.clone(),
    };
    let mut client = super::client::connect(&args.rpc).await?;
    let network = network_id(&mut client).await?;
    let (envelope, _) = seal(&network, &key, Kind::Distribution, body.encode_to_vec());
    let answer = connect(&args.rpc)
        .await?
        .submit_distribution(pb::SubmitRequest { envelope })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if args.rpc.json {
        println!("{}", json!({ "id": answer.id, "new": answer.new }));
    } else {
        println!("{}", answer.id);
    }
    Ok(())
}

fn claim_json(c: &pb::ClaimStatus) -> Value {
    json!({
        "id": c.id, "status": c.status, "reason": c.reason,
        "received_at": c.received_at, "provisional_at": c.provisional_at, "regional_at": c.regional_at,
        "global_at": c.global_at, "disputed_at": c.disputed_at, "rejected_at": c.rejected_at,
        "distribution_id": c.distribution_id, "region": c.region, "owner": c.owner,
        "bucket": { "region": c.region, "owner": c.owner }, "seq": if c.sequenced { json!(c.seq) } else { Value::Null },
        "claimant": c.claimant, "recipient": c.recipient, "amount": c.amount,
        "as_of": c.as_of, "home_view_age_ms": c.home_view_age_ms,
    })
}

fn print_claim(json_out: bool, c: &pb::ClaimStatus) {
    if json_out {
        println!("{}", claim_json(c));
        return;
    }
    println!("{}  {}", c.id, c.status);
    if !c.reason.is_empty() {
        println!("  reason       {}", c.reason);
    }
    for (name, at) in [
        ("received", c.received_at),
        ("provisional", c.provisional_at),
        ("regional", c.regional_at),
        ("global", c.global_at),
        ("disputed", c.disputed_at),
        ("rejected", c.rejected_at),
    ] {
        if at > 0 {
            println!("  {name:<12} {}", super::time::when(at, c.as_of));
        }
    }
    if !c.region.is_empty() {
        let seq = if c.sequenced {
            format!(", seq {}", c.seq)
        } else {
            String::new()
        };
        println!("  bucket       region {} owner {}{seq}", c.region, c.owner);
    }
}

fn rank(status: &str) -> u8 {
    match status {
        "received" => 1,
        "provisional" => 2,
        "regional" => 3,
        "global" => 4,
        _ => 0,
    }
}

/// Options of `credence claim`.
#[derive(Debug, clap::Args)]
pub struct ClaimArgs {
    #[command(flatten)]
    pub rpc: RpcArgs,
    /// The claimant's key file (the credential's subject).
    #[arg(long)]
    pub key: std::path::PathBuf,
    /// The distribution id (see `credence distributions`).
    #[arg(long)]
    pub distribution: String,
    /// The claimant's attestation id.
    #[arg(long)]
    pub attestation: String,
    /// Who is credited (default: the claimant).
    #[arg(long)]
    pub recipient: Option<String>,
    /// Wait until the claim reaches this status.
    #[arg(long, value_parser = ["provisional", "regional", "global"])]
    pub wait: Option<String>,
    /// Longest wait, in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

pub(super) async fn claim(args: &ClaimArgs) -> anyhow::Result<()> {
    let key = keys::load(&args.key)?;
    let distribution = hex32(&args.distribution, "--distribution")?;
    let attestation = hex32(&args.attestation, "--attestation")?;
    let recipient = match &args.recipient {
        Some(r) => hex32(r, "--recipient")?.to_vec(),
        None => vec![],
    };
    let mut escrow = connect(&args.rpc).await?;
    let list = escrow
        .list_distributions(pb::ListDistributionsRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    let dist = list
        .distributions
        .iter()
        .find(|d| d.id == hex::encode(distribution))
        .ok_or_else(|| anyhow!("the node knows no distribution {}", args.distribution))?;
    let body = pb::Claim {
        distribution_id: distribution.to_vec(),
        claimant: key.verifying_key().to_bytes().to_vec(),
        attestation_id: attestation.to_vec(),
        amount: dist.amount_per_claim,
        recipient,
        created_at: now_ms(),
        nonce: rand::random(),
    };
    let mut client = super::client::connect(&args.rpc).await?;
    let network = network_id(&mut client).await?;
    let (envelope, _) = seal(&network, &key, Kind::Claim, body.encode_to_vec());
    let mut status = escrow
        .submit_claim(pb::SubmitRequest { envelope })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if let Some(wait) = &args.wait {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
        let mut stream = escrow
            .watch_claim(pb::GetClaimRequest { id: status.id.clone() })
            .await
            .map_err(rpc_error)?
            .into_inner();
        while rank(&status.status) < rank(wait) && !matches!(status.status.as_str(), "rejected" | "disputed") {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(next))) => status = next,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(rpc_error(e)),
                Err(_) => {
                    print_claim(args.rpc.json, &status);
                    bail!(
                        "claim {} is still {} after {} s",
                        status.id,
                        status.status,
                        args.timeout
                    );
                }
            }
        }
    }
    print_claim(args.rpc.json, &status);
    if status.status == "rejected" {
        bail!("claim rejected: {}", status.reason);
    }
    Ok(())
}

pub(super) async fn claim_status(rpc: &RpcArgs, id: &str) -> anyhow::Result<()> {
    hex32(id, "the claim id")?;
    let status = connect(rpc)
        .await?
        .get_claim(pb::GetClaimRequest { id: id.to_string() })
        .await
        .map_err(rpc_error)?
        .into_inner();
    print_claim(rpc.json, &status);
    Ok(())
}

pub(super) async fn liquidity(rpc: &RpcArgs, id: &str) -> anyhow::Result<()> {
    hex32(id, "the distribution id")?;
    let l = connect(rpc)
        .await?
        .get_liquidity(pb::GetLiquidityRequest {
            distribution_id: id.to_string(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if rpc.json {
        let regions: Vec<Value> = l
            .regions
            .iter()
            .map(|r| {
                json!({
                    "region": r.region, "escrow": r.escrow, "spent": r.spent, "pending": r.pending,
                    "available": r.available, "disputed": r.disputed, "stranded": r.stranded,
                    "outflow_per_s": r.outflow_per_s,
                    "depletes_in_s": if r.depletes_in_s < 0.0 { Value::Null } else { json!(r.depletes_in_s) },
                    "view_age_ms": r.view_age_ms,
                    "buckets": r.buckets.iter().map(|b| json!({
                        "owner": b.owner, "owner_name": b.owner_name, "bucket_id": b.bucket_id,
                        "escrow": b.escrow, "spent": b.spent, "pending": b.pending, "available": b.available,
                        "disputed": b.disputed, "stranded": b.stranded, "transferred_in": b.transferred_in,
                        "transferred_out": b.transferred_out, "certified_len": b.certified_len, "frozen": b.frozen,
                        "need": b.need,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "distribution_id": l.distribution_id, "regions": regions, "concentration": l.concentration, "as_of": l.as_of })
        );
    } else {
        println!(
            "distribution {}  (concentration {:.3})",
            l.distribution_id, l.concentration
        );
        println!(
            "{:<8} {:>12} {:>12} {:>10} {:>12} {:>10} {:>12}",
            "region", "escrow", "spent", "pending", "available", "outflow/s", "view age ms"
        );
        for r in &l.regions {
            let age = if r.view_age_ms == u64::MAX {
                "never".to_string()
            } else {
                r.view_age_ms.to_string()
            };
            println!(
                "{:<8} {:>12} {:>12} {:>10} {:>12} {:>10.1} {:>12}",
                r.region, r.escrow, r.spent, r.pending, r.available, r.outflow_per_s, age
            );
        }
        // Buckets whose owners ask their region for escrow (need-driven transfers).
        for r in &l.regions {
            for b in r.buckets.iter().filter(|b| b.need > 0) {
                println!(
                    "{:<8} bucket of {} needs {} (available {})",
                    r.region, b.owner_name, b.need, b.available
                );
            }
        }
    }
    Ok(())
}

pub(super) async fn route(rpc: &RpcArgs, distribution: &str, claimant: &str) -> anyhow::Result<()> {
    hex32(distribution, "--distribution")?;
    hex32(claimant, "--claimant")?;
    let r = connect(rpc)
        .await?
        .route(pb::RouteRequest {
            distribution_id: distribution.to_string(),
            claimant: claimant.to_string(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if rpc.json {
        println!(
            "{}",
            json!({ "region": r.region, "owner": r.owner, "owner_name": r.owner_name, "bucket_id": r.bucket_id, "owner_addresses": r.owner_addresses })
        );
    } else {
        println!("region {}  owner {} ({})", r.region, r.owner_name, r.owner);
    }
    Ok(())
}

pub(super) async fn balance(rpc: &RpcArgs, account: &str) -> anyhow::Result<()> {
    hex32(account, "the account")?;
    let b = connect(rpc)
        .await?
        .get_balance(pb::GetBalanceRequest {
            account: account.to_string(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if rpc.json {
        let items: Vec<Value> = b
            .balances
            .iter()
            .map(|x| json!({"distribution_id": x.distribution_id, "asset": x.asset, "amount": x.amount, "disputed": x.disputed}))
            .collect();
        println!(
            "{}",
            json!({ "account": b.account, "balances": items, "as_of": b.as_of })
        );
    } else {
        if b.balances.is_empty() {
            println!("no balance for {}", b.account);
        }
        for x in &b.balances {
            println!(
                "{} {} (disputed {}) from {}",
                x.amount, x.asset, x.disputed, x.distribution_id
            );
        }
    }
    Ok(())
}

pub(super) async fn rebalance(rpc: &RpcArgs, key: &Path, body: pb::Rebalance) -> anyhow::Result<()> {
    let key = keys::load(key)?;
    let mut client = super::client::connect(rpc).await?;
    let network = network_id(&mut client).await?;
    let body = pb::Rebalance {
        operator: key.verifying_key().to_bytes().to_vec(),
        ..body
    };
    let (envelope, _) = seal(&network, &key, Kind::Rebalance, body.encode_to_vec());
    let answer = connect(rpc)
        .await?
        .submit_rebalance(pb::SubmitRequest { envelope })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if rpc.json {
        println!("{}", json!({ "id": answer.id, "new": answer.new }));
    } else {
        println!("{}", answer.id);
    }
    Ok(())
}
