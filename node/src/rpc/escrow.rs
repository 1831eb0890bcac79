//! The `credence.v1.Escrow` service: distributions, claims, liquidity,
//! routing, balances and audits. Every answer carries `as_of` (this node's
//! clock) and, where it depends on another region, that view's age.

use std::pin::Pin;

use credence_proto::v1 as pb;
use credence_proto::v1::escrow_server::Escrow as EscrowApi;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::{parse_id, submit_status};
use crate::core::Millis;
use crate::core::credentials::CredentialBook;
use crate::core::envelope::{Kind, parse_hex32};
use crate::core::escrow::{ClaimStatus, Digest};
use crate::core::validator::{Credentials, Validator as Escrow};
use crate::node::NodeHandle;

/// Window over which outflow per second is measured (from chain timestamps).
pub const OUTFLOW_WINDOW_MS: Millis = 10_000;

/// The escrow service.
#[derive(Clone, Debug)]
pub struct EscrowService {
    pub node: NodeHandle,
    pub watches: super::watches::Watches,
}

impl EscrowService {
    /// Submits an operator-signed distribution or rebalance.
    async fn submit_operator_object(
        &self,
        request: Request<pb::SubmitRequest>,
        kind: Kind,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let outcome = self
            .node
            .submit(&request.get_ref().envelope, kind)
            .await
            .map_err(submit_status)?;
        Ok(Response::new(pb::SubmitResponse {
            id: outcome.id.to_string(),
            new: outcome.new,
        }))
    }
}

fn gone() -> Status {
    Status::unavailable("node is shutting down")
}

fn hex32(text: &str, field: &str) -> Result<Digest, Status> {
    parse_hex32(text).ok_or_else(|| Status::invalid_argument(format!("{field} must be 64 hex characters")))
}

/// A claim's status message, as this node sees it now.
pub(super) fn claim_message(escrow: &Escrow, book: &CredentialBook, id: &Digest, now: Millis) -> pb::ClaimStatus {
    let mut out = pb::ClaimStatus {
        id: hex::encode(id),
        status: "unknown".into(),
        as_of: now,
        ..Default::default()
    };
    let Some((status, timeline)) = escrow.claim_status(book, id) else {
        return out;
    };
    let (name, position) = match &status {
        ClaimStatus::Received => ("received", None),
        ClaimStatus::Provisional { bucket, seq } => ("provisional", Some((*bucket, *seq))),
        ClaimStatus::Regional { bucket, seq } => ("regional", Some((*bucket, *seq))),
        ClaimStatus::Global { bucket, seq } => ("global", Some((*bucket, *seq))),
        ClaimStatus::Disputed { bucket, seq, .. } => ("disputed", Some((*bucket, *seq))),
        ClaimStatus::Rejected { .. } => ("rejected", None),
    };
    out.status = name.into();
    if let ClaimStatus::Rejected { reason } = &status {
        out.reason = reason.to_string();
    } else if !timeline.reason.is_empty() && name == "received" {
        out.reason = timeline.reason.clone();
    }
    out.received_at = timeline.received_at;
    out.provisional_at = timeline.provisional_at;
    out.regional_at = timeline.regional_at;
    out.global_at = timeline.global_at;
    out.disputed_at = timeline.disputed_at;
    out.rejected_at = timeline.rejected_at;
    if name == "rejected" && out.rejected_at == 0 {
        out.rejected_at = now;
    }
    if let Some(claim) = &timeline.claim {
        out.distribution_id = hex::encode(claim.distribution_id);
        out.claimant = hex::encode(claim.claimant);
        out.recipient = hex::encode(claim.recipient);
        out.amount = claim.amount;
    }
    if let Some(home) = &timeline.home {
        out.region = home.region.clone();
        out.owner = hex::encode(home.owner);
    }
    if let Some((bucket, seq)) = position {
        out.sequenced = true;
        out.seq = seq;
        if let Some((_, plan)) = escrow.ledger().bucket(&bucket) {
            out.region = plan.id.region.clone();
            out.owner = hex::encode(plan.id.owner);
        }
    }
    out.home_view_age_ms = escrow.view_age_ms(&out.region, now);
    out
}

pub(super) fn is_final(status: &str) -> bool {
    matches!(status, "global" | "disputed" | "rejected")
}

fn liquidity(escrow: &Escrow, book: &CredentialBook, id: &Digest, now: Millis) -> Result<pb::Liquidity, Status> {
    let ledger = escrow.ledger();
    if ledger.distribution(id).is_none() {
        return Err(Status::not_found(format!("unknown distribution {}", hex::encode(id))));
    }
    let report = ledger
        .liquidity_report(id, &Credentials(book))
        .map_err(|e| Status::internal(format!("liquidity: {e}")))?;
    let outflow = escrow.outflow_by_region(id, now, OUTFLOW_WINDOW_MS);
    let mut regions = Vec::new();
    for (region, totals) in &report.regions {
        let outflow_per_s = outflow.get(region).copied().unwrap_or(0) as f64 * 1000.0 / OUTFLOW_WINDOW_MS as f64;
        let depletes_in_s = if outflow_per_s > 0.0 {
            totals.available as f64 / outflow_per_s
        } else {
            -1.0
        };
        let buckets = report
            .buckets
            .iter()
            .filter(|b| &b.region == region)
            .map(|b| pb::BucketLiquidity {
                owner: hex::encode(b.owner),
                owner_name: escrow.name_of(&b.owner),
                escrow: b.escrow,
                spent: b.spent,
                pending: b.pending,
                available: b.available,
                disputed: b.disputed,
                stranded: b.stranded,
                transferred_in: b.transferred_in,
                transferred_out: b.transferred_out,
                certified_len: ledger.next_seq(&b.bucket).unwrap_or(0),
                frozen: b.ended,
                bucket_id: hex::encode(b.bucket),
                need: escrow.advertised_need(&b.bucket, now),
            })
            .collect();
        regions.push(pb::RegionLiquidityInfo {
            region: region.clone(),
            escrow: totals.escrow,
            spent: totals.spent,
            pending: totals.pending,
            available: totals.available,
            disputed: totals.disputed,
            stranded: totals.stranded,
            outflow_per_s,
            depletes_in_s,
            view_age_ms: escrow.view_age_ms(region, now),
            buckets,
        });
    }
    let remaining: u64 = regions.iter().map(|r| r.available).sum();
    let concentration = if remaining == 0 {
        0.0
    } else {
        regions
            .iter()
            .map(|r| {
                let share = r.available as f64 / remaining as f64;
                share * share
            })
            .sum()
    };
    Ok(pb::Liquidity {
        distribution_id: hex::encode(id),
        regions,
        concentration,
        as_of: now,
    })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::ClaimStatus, Status>> + Send>>;

#[tonic::async_trait]
impl EscrowApi for EscrowService {
    async fn list_distributions(
        &self,
        _: Request<pb::ListDistributionsRequest>,
    ) -> Result<Response<pb::ListDistributionsResponse>, Status> {
        let list = self
            .node
            .escrow_read(|escrow, _, now| {
                let distributions = escrow
                    .ledger()
                    .distributions()
                    .map(|d| {
                        let r = d.distribution();
                        pb::DistributionInfo {
                            id: hex::encode(r.id),
                            name: escrow.distribution_name(&r.id),
                            asset: r.asset.clone(),
                            total: r.total,
                            schema: r.schema.clone(),
                            amount_per_claim: r.amount_per_claim,
                            opens_at: r.opens_at,
                            // The wire's 0 for "never", not the core's open end.
                            closes_at: if r.closes_at == u64::MAX { 0 } else { r.closes_at },
                            allocations: r
                                .allocations
                                .iter()
                                .map(|(region, amount)| pb::AllocationInfo {
                                    region: region.clone(),
                                    amount: *amount,
                                })
                                .collect(),
                            operator: hex::encode(r.operator),
                        }
                    })
                    .collect();
                pb::ListDistributionsResponse {
                    distributions,
                    as_of: now,
                }
            })
            .await
            .ok_or_else(gone)?;
        Ok(Response::new(list))
    }

    async fn submit_distribution(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        self.submit_operator_object(request, Kind::Distribution).await
    }

    async fn submit_claim(&self, request: Request<pb::SubmitRequest>) -> Result<Response<pb::ClaimStatus>, Status> {
        let id = match self.node.submit_claim(&request.get_ref().envelope).await {
            Ok(id) => id,
            // A refused claim still has a status (rejected, with its reason).
            Err(crate::node::SubmitError::Escrow(reason)) => {
                return Err(Status::failed_precondition(reason));
            }
            Err(e) => return Err(submit_status(e)),
        };
        let status = self
            .node
            .escrow_read(move |escrow, book, now| claim_message(escrow, book, &id.0, now))
            .await
            .ok_or_else(gone)?;
        Ok(Response::new(status))
    }

    async fn get_claim(&self, request: Request<pb::GetClaimRequest>) -> Result<Response<pb::ClaimStatus>, Status> {
        let id = parse_id(&request.get_ref().id, "id")?;
        let status = self
            .node
            .escrow_read(move |escrow, book, now| claim_message(escrow, book, &id.0, now))
            .await
            .ok_or_else(gone)?;
        Ok(Response::new(status))
    }

    type WatchClaimStream = WatchStream;

    async fn watch_claim(&self, request: Request<pb::GetClaimRequest>) -> Result<Response<WatchStream>, Status> {
        let id = parse_id(&request.get_ref().id, "id")?;
        let rx = self.watches.add(id.0)?;
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn get_liquidity(
        &self,
        request: Request<pb::GetLiquidityRequest>,
    ) -> Result<Response<pb::Liquidity>, Status> {
        let id = hex32(&request.get_ref().distribution_id, "distribution_id")?;
        let answer = self
            .node
            .escrow_read(move |escrow, book, now| liquidity(escrow, book, &id, now))
            .await
            .ok_or_else(gone)??;
        Ok(Response::new(answer))
    }

    async fn route(&self, request: Request<pb::RouteRequest>) -> Result<Response<pb::RouteResponse>, Status> {
        let dist = hex32(&request.get_ref().distribution_id, "distribution_id")?;
        let claimant = hex32(&request.get_ref().claimant, "claimant")?;
        let addresses = self.node.genesis_addresses.clone();
        let answer = self
            .node
            .escrow_read(move |escrow, _, _| {
                if escrow.ledger().distribution(&dist).is_none() {
                    return Err(Status::not_found(format!("unknown distribution {}", hex::encode(dist))));
                }
                let bucket = escrow
                    .route(&dist, &claimant)
                    .ok_or_else(|| Status::failed_precondition("no live bucket can fund this claimant"))?;
                Ok(pb::RouteResponse {
                    region: bucket.region.clone(),
                    owner: hex::encode(bucket.owner),
                    owner_name: escrow.name_of(&bucket.owner),
                    bucket_id: hex::encode(bucket.digest()),
                    owner_addresses: addresses.get(&bucket.owner).cloned().unwrap_or_default(),
                })
            })
            .await
            .ok_or_else(gone)??;
        Ok(Response::new(answer))
    }

    async fn get_balance(&self, request: Request<pb::GetBalanceRequest>) -> Result<Response<pb::Balance>, Status> {
        let account = hex32(&request.get_ref().account, "account")?;
        let answer = self
            .node
            .escrow_read(move |escrow, book, now| {
                let ledger = escrow.ledger();
                let credited = ledger
                    .recipient_balances(&Credentials(book))
                    .map_err(|e| Status::internal(format!("balances: {e}")))?;
                let mut balances: std::collections::BTreeMap<Digest, pb::AssetBalance> = Default::default();
                for ((dist, recipient), amount) in credited {
                    if recipient == account {
                        let entry = balances.entry(dist).or_default();
                        entry.amount = entry.amount.saturating_add(amount);
                    }
                }
                for certified in ledger.certified_claims() {
                    if certified.claim.recipient == account && certified.dispute(&Credentials(book)).is_some() {
                        let entry = balances.entry(certified.claim.distribution_id).or_default();
                        entry.disputed = entry.disputed.saturating_add(certified.claim.amount);
                    }
                }
                let balances = balances
                    .into_iter()
                    .map(|(dist, mut b)| {
                        b.distribution_id = hex::encode(dist);
                        b.asset = ledger
                            .distribution(&dist)
                            .map(|d| d.distribution().asset.clone())
                            .unwrap_or_default();
                        b
                    })
                    .collect();
                Ok::<_, Status>(pb::Balance {
                    account: hex::encode(account),
                    balances,
                    as_of: now,
                })
            })
            .await
            .ok_or_else(gone)??;
        Ok(Response::new(answer))
    }

    async fn submit_rebalance(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        self.submit_operator_object(request, Kind::Rebalance).await
    }

    async fn audit(&self, _: Request<pb::AuditRequest>) -> Result<Response<pb::AuditResponse>, Status> {
        let answer = self
            .node
            .escrow_read(|escrow, book, now| {
                let ledger = escrow.ledger();
                let mut distributions = Vec::new();
                let mut buckets = Vec::new();
                for d in ledger.distributions() {
                    let id = d.id();
                    let Ok(report) = ledger.liquidity_report(&id, &Credentials(book)) else {
                        continue;
                    };
                    distributions.push(pb::AuditDistribution {
                        id: hex::encode(id),
                        total: d.distribution().total,
                        spent: report.distribution.spent,
                    });
                    for b in &report.buckets {
                        buckets.push(pb::AuditBucket {
                            bucket_id: hex::encode(b.bucket),
                            distribution_id: hex::encode(id),
                            region: b.region.clone(),
                            owner: hex::encode(b.owner),
                            escrow: b.escrow,
                            spent: b.spent,
                            certified_len: ledger.next_seq(&b.bucket).unwrap_or(0),
                        });
                    }
                }
                let slots = escrow
                    .funded_slots()
                    .into_iter()
                    .map(|(slot, bucket, seq, claim)| pb::AuditSlot {
                        slot: hex::encode(slot),
                        bucket_id: hex::encode(bucket),
                        seq,
                        claim_id: hex::encode(claim),
                    })
                    .collect();
                pb::AuditResponse {
                    state_digest: hex::encode(ledger.state_digest()),
                    distributions,
                    buckets,
                    slots,
                    as_of: now,
                    conflicting_certificates: escrow.conflicting_certificates(),
                }
            })
            .await
            .ok_or_else(gone)?;
        Ok(Response::new(answer))
    }
}
