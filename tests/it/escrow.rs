//! Escrow across an in-process network of 3 regions × 4 validators: claims
//! reach `regional`, a second claim by the same claimant is refused, and a
//! distribution drained in one region leaves the others untouched; and in
//! smaller networks, partitions, takeovers, rebalances, and a bucket drained
//! inside its region refilled from the other buckets' surplus.

use credence::core::envelope::{Kind, seal};
use credence::node::RunningNode;
use credence_proto::v1 as pb;
use credence_proto::v1::escrow_client::EscrowClient;
use ed25519_dalek::SigningKey;
use prost::Message;
use tonic::transport::Channel;

use crate::common::{TestNet, eventually, submit_attestation};

async fn escrow(node: &RunningNode) -> EscrowClient<Channel> {
    EscrowClient::connect(format!("http://{}", node.rpc_addr))
        .await
        .expect("gRPC connects")
}

fn claim_envelope(
    net: &TestNet,
    claimant: &SigningKey,
    distribution: &str,
    attestation: &str,
    amount: u64,
    nonce: u64,
) -> Vec<u8> {
    let body = pb::Claim {
        distribution_id: hex::decode(distribution).expect("hex"),
        claimant: claimant.verifying_key().to_bytes().to_vec(),
        attestation_id: hex::decode(attestation).expect("hex"),
        amount,
        recipient: vec![],
        created_at: credence::node::now_ms(),
        nonce,
    };
    seal(&net.network_id(), claimant, Kind::Claim, body.encode_to_vec()).0
}

/// The claimant's home region and owner, as `node` computes them.
async fn route_of(node: &RunningNode, distribution: &str, claimant: &SigningKey) -> pb::RouteResponse {
    escrow(node)
        .await
        .route(pb::RouteRequest {
            distribution_id: distribution.into(),
            claimant: hex::encode(claimant.verifying_key().to_bytes()),
        })
        .await
        .expect("route")
        .into_inner()
}

/// Submits a claim and returns its id; `what` says what failed if the node refuses it.
async fn submit_claim(node: &RunningNode, envelope: Vec<u8>, what: &str) -> String {
    escrow(node)
        .await
        .submit_claim(pb::SubmitRequest { envelope })
        .await
        .expect(what)
        .into_inner()
        .id
}

async fn claim_status(node: &RunningNode, id: &str) -> pb::ClaimStatus {
    escrow(node)
        .await
        .get_claim(pb::GetClaimRequest { id: id.into() })
        .await
        .expect("get claim")
        .into_inner()
}

async fn region_liquidity(node: &RunningNode, distribution: &str) -> Vec<pb::RegionLiquidityInfo> {
    escrow(node)
        .await
        .get_liquidity(pb::GetLiquidityRequest {
            distribution_id: distribution.into(),
        })
        .await
        .expect("liquidity")
        .into_inner()
        .regions
}

async fn region_spent(node: &RunningNode, distribution: &str) -> Vec<(String, u64, u64)> {
    region_liquidity(node, distribution)
        .await
        .into_iter()
        .map(|r| (r.region, r.spent, r.escrow))
        .collect()
}

/// Submits an operator-signed distribution of `per_region` in each of
/// `regions` at `nodes[0]`, waits until every node knows it, and returns its id.
async fn distribute(
    net: &TestNet,
    nodes: &[RunningNode],
    name: &str,
    regions: &[&str],
    per_region: u64,
    amount_per_claim: u64,
    nonce: u64,
) -> String {
    let body = pb::Distribution {
        operator: net.operator.verifying_key().to_bytes().to_vec(),
        asset: name.to_uppercase(),
        total: per_region * regions.len() as u64,
        rule: Some(pb::DistributionRule {
            schema: "demo".into(),
            issuers: vec![],
            amount_per_claim,
        }),
        opens_at: 0,
        closes_at: 0,
        allocations: regions
            .iter()
            .map(|r| pb::Allocation {
                region: r.to_string(),
                amount: per_region,
            })
            .collect(),
        nonce,
        max_outflow_per_window: 0,
        outflow_window_ms: 0,
        name: name.into(),
    };
    let envelope = seal(
        &net.network_id(),
        &net.operator,
        Kind::Distribution,
        body.encode_to_vec(),
    )
    .0;
    let id = escrow(&nodes[0])
        .await
        .submit_distribution(pb::SubmitRequest { envelope })
        .await
        .expect("distribution accepted")
        .into_inner()
        .id;
    for node in nodes {
        let known = eventually(|| async {
            let list = escrow(node)
                .await
                .list_distributions(pb::ListDistributionsRequest {})
                .await;
            list.is_ok_and(|l| l.into_inner().distributions.iter().any(|d| d.id == id))
        })
        .await;
        assert!(known, "the new distribution did not reach every node");
    }
    id
}

/// Attests `claimant` and submits its claim at a node of its home region.
/// Returns the node index it used and the claim's status answer.
async fn claim_at_home(
    net: &TestNet,
    nodes: &[RunningNode],
    regions: &[&str],
    claimant: &SigningKey,
    distribution: &str,
    amount: u64,
    nonce: u64,
) -> (usize, Result<pb::ClaimStatus, tonic::Status>) {
    let route = route_of(&nodes[0], distribution, claimant).await;
    let region = regions.iter().position(|r| *r == route.region).expect("known region");
    let at = region * 4 + (nonce as usize % 4);
    let attestation = submit_attestation(
        &nodes[at],
        net.attestation(claimant.verifying_key().to_bytes(), "member"),
    )
    .await
    .expect("attest");
    let envelope = claim_envelope(net, claimant, distribution, &attestation, amount, nonce);
    let answer = escrow(&nodes[at])
        .await
        .submit_claim(pb::SubmitRequest { envelope })
        .await
        .map(|r| r.into_inner());
    (at, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_certify_per_region_double_claims_fail_and_a_drained_region_leaves_others_untouched() {
    let _serial = crate::common::NETWORK_TESTS.lock().await;
    let regions = ["eu", "us", "ap"];
    let net = TestNet::new(&regions, 4);
    let nodes = net.start_mesh(12).await;
    let list = escrow(&nodes[0])
        .await
        .list_distributions(pb::ListDistributionsRequest {})
        .await
        .expect("distributions")
        .into_inner();
    let demo = list.distributions[0].clone();
    assert_eq!(demo.allocations.len(), 3);

    // Claims from several claimants reach `regional` in their home regions.
    let mut accepted = Vec::new();
    for n in 0..9u64 {
        let claimant = SigningKey::from_bytes(&[(n + 1) as u8; 32]);
        let (at, answer) = claim_at_home(&net, &nodes, &regions, &claimant, &demo.id, demo.amount_per_claim, n).await;
        let status = answer.expect("claim accepted");
        let id = status.id.clone();
        let node = &nodes[at];
        assert!(
            eventually(|| async { certified(&claim_status(node, &id).await.status) }).await,
            "claim {n} never reached regional: {:?}",
            claim_status(node, &id).await
        );
        accepted.push((claimant, at, id));
    }

    // A second claim by the same claimant (new nonce, same slot) is refused.
    let (claimant, at, first) = &accepted[0];
    let (_, second) = claim_at_home(&net, &nodes, &regions, claimant, &demo.id, demo.amount_per_claim, 100).await;
    let refused = match second {
        Err(status) => status.message().contains("slot"),
        Ok(status) => {
            let id = status.id.clone();
            let node = &nodes[*at];
            eventually(|| async { claim_status(node, &id).await.status == "rejected" }).await
        }
    };
    assert!(refused, "a second claim for the same slot was not refused");
    assert!(certified(&claim_status(&nodes[*at], first).await.status));

    // Certificates reach every node (their own region's by gossip, the
    // others' by frontier pulls): all agree on what each region spent.
    let total_spent = |spent: &[(String, u64, u64)]| spent.iter().map(|(_, s, _)| s).sum::<u64>();
    assert!(
        eventually(|| async { total_spent(&region_spent(&nodes[0], &demo.id).await) == 9 * demo.amount_per_claim })
            .await,
        "node 0 never saw the nine certified claims: {:?}",
        region_spent(&nodes[0], &demo.id).await
    );
    let expected = region_spent(&nodes[0], &demo.id).await;
    for node in &nodes {
        assert!(
            eventually(|| async { region_spent(node, &demo.id).await == expected }).await,
            "a node's ledger did not converge"
        );
    }

    // A distribution of one claim per bucket (four per region), drained in eu only.
    let tiny = distribute(&net, &nodes, "tiny", &regions, 40, 10, 1).await;
    let before = region_spent(&nodes[0], &tiny).await;
    let mut eu_results = Vec::new();
    let mut n = 1000u64;
    while eu_results.len() < 8 {
        let (claimant, next) = claimant_in(&nodes[0], &tiny, "eu", n).await;
        n = next;
        let (at, answer) = claim_at_home(&net, &nodes, &regions, &claimant, &tiny, 10, n).await;
        let final_status = match answer {
            Err(status) => format!("refused: {}", status.message()),
            Ok(status) => {
                let id = status.id.clone();
                let node = &nodes[at];
                eventually(|| async {
                    matches!(claim_status(node, &id).await.status.as_str(), "regional" | "rejected")
                })
                .await;
                claim_status(node, &id).await.status
            }
        };
        eu_results.push(final_status);
    }
    let paid = eu_results.iter().filter(|s| *s == "regional").count();
    assert!(
        paid <= 4,
        "eu paid {paid} claims from an escrow of four: {eu_results:?}"
    );
    assert!(
        eu_results.iter().any(|s| s.contains("exhausted") || s == "rejected"),
        "eu never ran dry: {eu_results:?}"
    );
    assert!(paid >= 1, "eu paid nothing: {eu_results:?}");
    let after = region_spent(&nodes[0], &tiny).await;
    for ((region, spent_before, _), (_, spent_after, escrow_after)) in before.iter().zip(&after) {
        if region == "eu" {
            assert!(*spent_after <= *escrow_after, "eu spent past its escrow");
        } else {
            assert_eq!(spent_before, spent_after, "draining eu moved {region}");
        }
    }
    for node in nodes {
        node.stop().await;
    }
}

/// Certified by its region (and perhaps already known everywhere).
fn certified(status: &str) -> bool {
    matches!(status, "regional" | "global")
}

fn blake3_seed(n: u64) -> [u8; 32] {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    seed[8] = 0xee;
    seed
}

async fn mode(node: &RunningNode) -> String {
    crate::common::client(node)
        .await
        .status(pb::StatusRequest {})
        .await
        .map(|s| s.into_inner().mode)
        .unwrap_or_default()
}

async fn digest(node: &RunningNode) -> String {
    escrow(node)
        .await
        .audit(pb::AuditRequest {})
        .await
        .map(|a| a.into_inner().state_digest)
        .unwrap_or_default()
}

/// Starts `n` validators, waits until each is in normal mode, and returns
/// them with the genesis distribution.
async fn start_normal(net: &TestNet, n: usize) -> (Vec<RunningNode>, pb::DistributionInfo) {
    let nodes = net.start_mesh(n).await;
    for node in &nodes {
        assert!(
            eventually(|| async { mode(node).await == "normal" }).await,
            "a node never reached normal mode"
        );
    }
    let dist = escrow(&nodes[0])
        .await
        .list_distributions(pb::ListDistributionsRequest {})
        .await
        .expect("distributions")
        .into_inner()
        .distributions[0]
        .clone();
    (nodes, dist)
}

/// A claimant whose claim is homed in `region`, searching seeds from `start`.
async fn claimant_in(node: &RunningNode, distribution: &str, region: &str, start: u64) -> (SigningKey, u64) {
    let mut n = start;
    loop {
        n += 1;
        let claimant = SigningKey::from_bytes(&blake3_seed(n));
        let route = route_of(node, distribution, &claimant).await;
        if route.region == region {
            return (claimant, n);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_list_partition_keeps_regions_certifying_withholds_global_and_converges_on_heal() {
    let _serial = crate::common::NETWORK_TESTS.lock().await;
    let regions = ["eu", "us"];
    let net = TestNet::new(&regions, 2);
    let (nodes, dist) = start_normal(&net, 4).await;

    // Partition eu (nodes 0, 1) from us (nodes 2, 3) with the admin block-list.
    let peer = |i: usize| nodes[i].handle.info.peer_id.parse::<libp2p::PeerId>().expect("peer id");
    for (a, b) in [(0, 2), (0, 3), (1, 2), (1, 3)] {
        nodes[a].handle.net.set_blocked(peer(b), true).await.expect("block");
        nodes[b].handle.net.set_blocked(peer(a), true).await.expect("block");
    }
    for node in &nodes {
        assert!(
            eventually(|| async { mode(node).await == "regional" }).await,
            "partition not detected"
        );
    }

    // Each side keeps certifying its own claims; nothing becomes global.
    let mut claims = Vec::new();
    for (side, region) in [(0usize, "eu"), (2usize, "us")] {
        let mut seed = 5_000 + side as u64 * 1_000;
        for _ in 0..3 {
            let (claimant, n) = claimant_in(&nodes[side], &dist.id, region, seed).await;
            seed = n;
            let attestation =
                submit_attestation(&nodes[side], net.attestation(claimant.verifying_key().to_bytes(), "p"))
                    .await
                    .expect("attest");
            let envelope = claim_envelope(&net, &claimant, &dist.id, &attestation, dist.amount_per_claim, n);
            let status = escrow(&nodes[side])
                .await
                .submit_claim(pb::SubmitRequest { envelope })
                .await
                .expect("claim")
                .into_inner();
            claims.push((side, status.id));
        }
    }
    for (side, id) in &claims {
        let node = &nodes[*side];
        assert!(
            eventually(|| async { claim_status(node, id).await.status == "regional" }).await,
            "a claim did not reach regional on its side of the partition"
        );
    }
    for (side, id) in &claims {
        assert_eq!(
            claim_status(&nodes[*side], id).await.status,
            "regional",
            "global during a partition"
        );
    }

    // Heal: every node converges to one certified state and the claims go global.
    for (a, b) in [(0, 2), (0, 3), (1, 2), (1, 3)] {
        nodes[a].handle.net.set_blocked(peer(b), false).await.expect("unblock");
        nodes[b].handle.net.set_blocked(peer(a), false).await.expect("unblock");
    }
    let converged = eventually(|| async {
        let first = digest(&nodes[0]).await;
        let mut same = !first.is_empty();
        for node in &nodes[1..] {
            same &= digest(node).await == first;
        }
        same
    })
    .await;
    assert!(converged, "state digests differ after heal");
    for (side, id) in &claims {
        let node = &nodes[*side];
        assert!(
            eventually(|| async { claim_status(node, id).await.status == "global" }).await,
            "a claim did not reach global after heal"
        );
    }
    for node in &nodes {
        assert!(
            eventually(|| async { mode(node).await == "normal" }).await,
            "mode did not return to normal"
        );
    }
    for node in nodes {
        node.stop().await;
    }
}

/// A claimant whose claim is homed in the bucket of the validator `owner` (hex key).
/// A new claimant homed in `owner`'s bucket, attested at `node`, and its
/// signed claim; with the seed reached, for the next call.
async fn attested_claim_owned_by(
    net: &TestNet,
    node: &RunningNode,
    distribution: &str,
    owner: &str,
    start: u64,
    amount: u64,
) -> (Vec<u8>, u64) {
    let (claimant, n) = claimant_owned_by(node, distribution, owner, start).await;
    let attestation = submit_attestation(node, net.attestation(claimant.verifying_key().to_bytes(), "n"))
        .await
        .expect("attest");
    (claim_envelope(net, &claimant, distribution, &attestation, amount, n), n)
}

async fn claimant_owned_by(node: &RunningNode, distribution: &str, owner: &str, start: u64) -> (SigningKey, u64) {
    let mut n = start;
    loop {
        n += 1;
        let claimant = SigningKey::from_bytes(&blake3_seed(n));
        if route_of(node, distribution, &claimant).await.owner == owner {
            return (claimant, n);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_owner_is_taken_over_and_its_held_claims_are_certified_by_the_successor() {
    let _serial = crate::common::NETWORK_TESTS.lock().await;
    let net = TestNet::new(&["eu"], 4);
    let (mut nodes, dist) = start_normal(&net, 4).await;
    let victim = hex::encode(net.validators[3].verifying_key().to_bytes());

    // The owner goes away; claims homed in its bucket arrive at another node.
    let down = nodes.pop().expect("four nodes");
    down.stop().await;
    let mut claims = Vec::new();
    let mut seed = 9_000;
    for _ in 0..3 {
        let (claimant, n) = claimant_owned_by(&nodes[0], &dist.id, &victim, seed).await;
        seed = n;
        let attestation = submit_attestation(&nodes[0], net.attestation(claimant.verifying_key().to_bytes(), "t"))
            .await
            .expect("attest");
        let envelope = claim_envelope(&net, &claimant, &dist.id, &attestation, dist.amount_per_claim, n);
        let status = escrow(&nodes[0])
            .await
            .submit_claim(pb::SubmitRequest { envelope })
            .await
            .expect("claim accepted while its owner is down")
            .into_inner();
        assert_eq!(status.status, "received", "nobody can certify it before the takeover");
        claims.push((claimant, status.id));
    }

    // The successor freezes the silent owner's bucket and certifies what waited for it.
    for (_, id) in &claims {
        for node in &nodes {
            assert!(
                eventually(|| async { certified(&claim_status(node, id).await.status) }).await,
                "a held claim was not certified after the takeover"
            );
        }
    }
    for (claimant, _) in &claims {
        let route = route_of(&nodes[1], &dist.id, claimant).await;
        assert_ne!(route.owner, victim, "claims still route to the frozen bucket");
    }
    // Paid once: each claimant's slot is funded by exactly its one claim.
    let spent: u64 = region_spent(&nodes[2], &dist.id).await.iter().map(|(_, s, _)| s).sum();
    assert_eq!(spent, dist.amount_per_claim * claims.len() as u64);
    for node in nodes {
        node.stop().await;
    }
}

/// (region, available) per region, as `node` sees them.
async fn region_available(node: &RunningNode, distribution: &str) -> Vec<(String, u64)> {
    region_liquidity(node, distribution)
        .await
        .into_iter()
        .map(|r| (r.region, r.available))
        .collect()
}

fn rebalance_envelope(
    net: &TestNet,
    key: &SigningKey,
    distribution: &str,
    from: &str,
    to: &str,
    amount: u64,
) -> Vec<u8> {
    let body = pb::Rebalance {
        operator: key.verifying_key().to_bytes().to_vec(),
        distribution_id: hex::decode(distribution).expect("hex"),
        from_region: from.into(),
        to_region: to.into(),
        amount,
        nonce: 1,
    };
    seal(&net.network_id(), key, Kind::Rebalance, body.encode_to_vec()).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_rebalance_moves_escrow_between_regions_once_and_bad_requests_change_nothing() {
    let _serial = crate::common::NETWORK_TESTS.lock().await;
    let net = TestNet::new(&["eu", "us"], 2);
    let (nodes, dist) = start_normal(&net, 4).await;
    let before = region_available(&nodes[0], &dist.id).await;
    let of = |v: &[(String, u64)], r: &str| v.iter().find(|(x, _)| x == r).map(|(_, a)| *a).expect("region");

    // Refused with a reason, and nothing moves: not an operator, an unknown region.
    let mut client = escrow(&nodes[1]).await;
    let forged = rebalance_envelope(&net, &net.issuer, &dist.id, "eu", "us", 100);
    let err = client
        .submit_rebalance(pb::SubmitRequest { envelope: forged })
        .await
        .expect_err("a non-operator's rebalance is refused");
    assert!(err.message().contains("operator"), "{}", err.message());
    let nowhere = rebalance_envelope(&net, &net.operator, &dist.id, "eu", "mars", 100);
    let err = client
        .submit_rebalance(pb::SubmitRequest { envelope: nowhere })
        .await
        .expect_err("a rebalance to an unknown region is refused");
    assert!(err.message().contains("mars"), "{}", err.message());

    // The operator moves 100 from eu to us; submitted twice, it moves once.
    let envelope = rebalance_envelope(&net, &net.operator, &dist.id, "eu", "us", 100);
    for _ in 0..2 {
        client
            .submit_rebalance(pb::SubmitRequest {
                envelope: envelope.clone(),
            })
            .await
            .expect("operator rebalance accepted");
    }
    for node in &nodes {
        assert!(
            eventually(|| async {
                let now = region_available(node, &dist.id).await;
                of(&now, "eu") == of(&before, "eu") - 100 && of(&now, "us") == of(&before, "us") + 100
            })
            .await,
            "the rebalance did not land everywhere"
        );
    }
    // Restarting a source owner does not move it again.
    let mut nodes = nodes;
    let first = nodes.remove(0);
    first.stop().await;
    let back = net.start(0, vec![crate::common::p2p_addr(&nodes[0]).await]).await;
    let digests_match = eventually(|| async { digest(&back).await == digest(&nodes[0]).await }).await;
    assert!(digests_match, "the restarted owner did not converge");
    // A claim the restarted owner certifies after its first tick shows what
    // that tick moved: nothing more.
    let owner = hex::encode(net.validators[0].verifying_key().to_bytes());
    let (claimant, n) = claimant_owned_by(&back, &dist.id, &owner, 20_000).await;
    let attestation = submit_attestation(&back, net.attestation(claimant.verifying_key().to_bytes(), "r"))
        .await
        .expect("attest");
    let claim = claim_envelope(&net, &claimant, &dist.id, &attestation, dist.amount_per_claim, n);
    let id = escrow(&back)
        .await
        .submit_claim(pb::SubmitRequest { envelope: claim })
        .await
        .expect("claim")
        .into_inner()
        .id;
    assert!(
        eventually(|| async { certified(&claim_status(&back, &id).await.status) }).await,
        "the restarted owner did not certify a claim"
    );
    let after = region_available(&back, &dist.id).await;
    assert_eq!(of(&after, "eu"), of(&before, "eu") - 100 - dist.amount_per_claim);
    assert_eq!(of(&after, "us"), of(&before, "us") + 100);
    back.stop().await;
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_claim_entered_at_two_nodes_pays_once_and_the_other_ends_rejected_where_it_was_accepted() {
    let _serial = crate::common::NETWORK_TESTS.lock().await;
    let net = TestNet::new(&["eu"], 4);
    let (nodes, dist) = start_normal(&net, 4).await;
    let owner = hex::encode(net.validators[3].verifying_key().to_bytes());
    let (claimant, n) = claimant_owned_by(&nodes[0], &dist.id, &owner, 30_000).await;
    let attestation = submit_attestation(&nodes[0], net.attestation(claimant.verifying_key().to_bytes(), "d"))
        .await
        .expect("attest");
    for node in &nodes[..2] {
        assert!(
            eventually(|| async { crate::common::credential_status(node, &attestation).await == "valid" }).await,
            "the attestation did not propagate"
        );
    }
    // Two claims of one slot (different nonces), entered at the same time at
    // two nodes that are not its owner.
    let first = claim_envelope(&net, &claimant, &dist.id, &attestation, dist.amount_per_claim, n);
    let second = claim_envelope(&net, &claimant, &dist.id, &attestation, dist.amount_per_claim, n + 1);
    let (mut a, mut b) = (escrow(&nodes[0]).await, escrow(&nodes[1]).await);
    let (ra, rb) = tokio::join!(
        a.submit_claim(pb::SubmitRequest { envelope: first }),
        b.submit_claim(pb::SubmitRequest { envelope: second }),
    );
    let mut entered = Vec::new();
    for (at, answer) in [(0usize, ra), (1usize, rb)] {
        match answer {
            Ok(status) => entered.push((at, status.into_inner().id)),
            Err(status) => assert!(status.message().contains("slot"), "{}", status.message()),
        }
    }
    assert!(!entered.is_empty(), "both claims were refused");
    // Exactly one is paid; the other ends rejected, with its reason, at the node that accepted it.
    let settled = eventually(|| async {
        let mut paid = 0;
        let mut rejected = 0;
        for (at, id) in &entered {
            let status = claim_status(&nodes[*at], id).await;
            if certified(&status.status) {
                paid += 1;
            } else if status.status == "rejected" && status.reason.contains("slot") {
                rejected += 1;
            }
        }
        paid == 1 && paid + rejected == entered.len()
    })
    .await;
    assert!(settled, "the double claim did not settle as one paid and one rejected");
    let spent: u64 = region_spent(&nodes[2], &dist.id).await.iter().map(|(_, s, _)| s).sum();
    assert_eq!(spent, dist.amount_per_claim);
    for node in nodes {
        node.stop().await;
    }
}

/// Every bucket of a distribution, as `node` sees them.
async fn buckets_of(node: &RunningNode, distribution: &str) -> Vec<pb::BucketLiquidity> {
    region_liquidity(node, distribution)
        .await
        .into_iter()
        .flat_map(|r| r.buckets)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_bucket_is_refilled_from_its_regions_surplus_and_the_region_creates_nothing() {
    let _serial = crate::common::NETWORK_TESTS.lock().await;
    let net = TestNet::new(&["eu"], 4);
    let (nodes, _) = start_normal(&net, 4).await;
    // Four buckets of 60, six claims of 10 each. A donor keeps four claims'
    // worth, so the three others can give 20 each: the drained bucket can pay
    // its own six claims and six more, and not one beyond.
    let (amount, share) = (10, 60);
    let reserve = credence::core::escrow::DONOR_RESERVE_CLAIMS * amount;
    let given = share - reserve;
    let payable = (share + 3 * given) / amount;
    let id = distribute(&net, &nodes, "need", &["eu"], 4 * share, amount, 2).await;
    let owner = hex::encode(net.validators[3].verifying_key().to_bytes());
    let home = &nodes[3];
    let available_at_home = || async {
        buckets_of(home, &id)
            .await
            .into_iter()
            .find(|b| b.owner == owner)
            .map_or(0, |b| b.available)
    };

    // Claims homed in one bucket, one after another: before each, the bucket
    // holds a claim's worth, from its share first and then from its region.
    let mut seed = 40_000;
    for i in 0..payable {
        assert!(
            eventually(|| async { available_at_home().await >= amount }).await,
            "the bucket was not refilled after {i} claims: {:?}",
            buckets_of(home, &id).await
        );
        let (envelope, n) = attested_claim_owned_by(&net, home, &id, &owner, seed, amount).await;
        seed = n;
        let claim = submit_claim(home, envelope, "a claim is accepted while its bucket holds enough").await;
        assert!(
            eventually(|| async { certified(&claim_status(home, &claim).await.status) }).await,
            "claim {i} was not certified: {:?}",
            claim_status(home, &claim).await
        );
    }

    // Every node agrees: the drained bucket paid twice its share, each donor
    // gave exactly its surplus and kept its reserve, no bucket went below
    // zero, and the region holds its allocation: nothing was created.
    for node in &nodes {
        let settled = eventually(|| async {
            let buckets = buckets_of(node, &id).await;
            buckets.len() == 4
                && buckets.iter().all(|b| {
                    if b.owner == owner {
                        (b.spent, b.transferred_in, b.transferred_out, b.available)
                            == (payable * amount, 3 * given, 0, 0)
                    } else {
                        (b.spent, b.transferred_in, b.transferred_out, b.available) == (0, 0, given, reserve)
                    }
                })
        })
        .await;
        assert!(settled, "transfers did not settle: {:?}", buckets_of(node, &id).await);
        let regions = region_liquidity(node, &id).await;
        let eu = &regions[0];
        assert_eq!(eu.escrow, 4 * share, "the region's escrow changed");
        assert_eq!(eu.spent + eu.available + eu.stranded, 4 * share);
        for b in &eu.buckets {
            assert_eq!(b.spent + b.transferred_out + b.available, b.escrow, "{b:?}");
        }
    }

    // The region is down to its reserves: the next claim homed in the
    // drained bucket is refused, and nothing more is spent.
    let (envelope, _) = attested_claim_owned_by(&net, home, &id, &owner, seed, amount).await;
    let refused = escrow(home)
        .await
        .submit_claim(pb::SubmitRequest { envelope })
        .await
        .expect_err("a claim beyond the region's surplus is refused");
    assert!(refused.message().contains("exhausted"), "{}", refused.message());
    let spent: u64 = region_liquidity(home, &id).await.iter().map(|r| r.spent).sum();
    assert_eq!(spent, payable * amount);
    for node in nodes {
        node.stop().await;
    }
}

/// The ladder a claim climbs, in order.
const LADDER: [&str; 4] = ["received", "provisional", "regional", "global"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_streams_each_new_status_of_a_claim_and_ends_at_a_final_one() {
    let _serial = crate::common::NETWORK_TESTS.lock().await;
    let net = TestNet::new(&["eu"], 1);
    let (nodes, dist) = start_normal(&net, 1).await;
    let claimant = SigningKey::from_bytes(&blake3_seed(7));
    let attestation = submit_attestation(
        &nodes[0],
        net.attestation(claimant.verifying_key().to_bytes(), "member"),
    )
    .await
    .expect("attest");
    let envelope = claim_envelope(&net, &claimant, &dist.id, &attestation, dist.amount_per_claim, 7);
    let id = submit_claim(&nodes[0], envelope, "claim accepted").await;
    let mut stream = escrow(&nodes[0])
        .await
        .watch_claim(pb::GetClaimRequest { id: id.clone() })
        .await
        .expect("watch opens")
        .into_inner();
    let mut statuses = Vec::new();
    while let Some(status) = tokio::time::timeout(crate::common::DEADLINE, stream.message())
        .await
        .expect("the watch neither sent nor ended")
        .expect("the stream carries no error")
    {
        assert_eq!(status.id, id);
        assert!(step_time(&status) > 0, "{} carries no time", status.status);
        statuses.push(status.status);
    }
    // Every step of the ladder, none skipped, and the stream ends at the last
    // one (a lone validator is its whole network: `global` at once, within
    // one look of the watch, and still every step is sent).
    assert_eq!(statuses, LADDER, "the watch skipped or repeated a step");

    // A claim this node never saw is reported as unknown, and the watch
    // stays open for it (for `UNKNOWN_WATCH_GRACE`).
    let mut stream = escrow(&nodes[0])
        .await
        .watch_claim(pb::GetClaimRequest { id: "00".repeat(32) })
        .await
        .expect("watch opens")
        .into_inner();
    let first = stream.message().await.expect("no error").expect("a first status");
    assert_eq!(first.status, "unknown");
    let more = tokio::time::timeout(std::time::Duration::from_millis(300), stream.message()).await;
    assert!(more.is_err(), "the watch ended or repeated itself: {more:?}");
}

/// The time of the step a watch message is at.
fn step_time(s: &pb::ClaimStatus) -> u64 {
    match s.status.as_str() {
        "received" => s.received_at,
        "provisional" => s.provisional_at,
        "regional" => s.regional_at,
        "global" => s.global_at,
        _ => 0,
    }
}

/// The messages of a watch until it ends, errs (returned beside them) or
/// sends nothing for `quiet`.
async fn watch_steps(
    stream: &mut tonic::Streaming<pb::ClaimStatus>,
    quiet: std::time::Duration,
) -> (Vec<pb::ClaimStatus>, Option<tonic::Status>) {
    let mut steps = Vec::new();
    loop {
        match tokio::time::timeout(quiet, stream.message()).await {
            Ok(Ok(Some(step))) => steps.push(step),
            Ok(Ok(None)) | Err(_) => return (steps, None),
            Ok(Err(e)) => return (steps, Some(e)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sends_every_step_in_order_with_its_time_across_a_restart_of_the_node() {
    let _serial = crate::common::NETWORK_TESTS.lock().await;
    // Two validators in one region: a batch needs both votes, so with the
    // voter away the claim stays `provisional` at its owner.
    let net = TestNet::new(&["eu"], 2);
    let (mut nodes, dist) = start_normal(&net, 2).await;
    let voter = nodes.pop().expect("two nodes");
    let owner = nodes.pop().expect("two nodes");
    let owner_key = hex::encode(net.validators[0].verifying_key().to_bytes());
    let (claimant, n) = claimant_owned_by(&owner, &dist.id, &owner_key, 30_000).await;
    let attestation = submit_attestation(&owner, net.attestation(claimant.verifying_key().to_bytes(), "w"))
        .await
        .expect("attest");
    voter.stop().await;
    let envelope = claim_envelope(&net, &claimant, &dist.id, &attestation, dist.amount_per_claim, n);
    let id = submit_claim(&owner, envelope, "claim accepted").await;
    assert!(
        eventually(|| async { claim_status(&owner, &id).await.status == "provisional" }).await,
        "the owner never batched the claim"
    );
    let mut stream = escrow(&owner)
        .await
        .watch_claim(pb::GetClaimRequest { id: id.clone() })
        .await
        .expect("watch opens")
        .into_inner();
    let (mut before, _) = watch_steps(&mut stream, std::time::Duration::from_secs(2)).await;

    // The watched node restarts; its stream ends. Back, with the voter, the
    // claim climbs on, and a new watch sends every step from the first.
    owner.stop().await;
    let (after_stop, _) = watch_steps(&mut stream, crate::common::DEADLINE).await;
    before.extend(after_stop);
    let owner = net.start(0, vec![]).await;
    let voter = net.start(1, vec![crate::common::p2p_addr(&owner).await]).await;
    let mut stream = escrow(&owner)
        .await
        .watch_claim(pb::GetClaimRequest { id: id.clone() })
        .await
        .expect("watch opens after the restart")
        .into_inner();
    let (after, error) = watch_steps(&mut stream, crate::common::DEADLINE).await;
    assert!(error.is_none(), "the watch failed: {error:?}");

    let names = |steps: &[pb::ClaimStatus]| steps.iter().map(|s| s.status.clone()).collect::<Vec<_>>();
    assert_eq!(names(&before), ["received", "provisional"], "before the restart");
    assert_eq!(names(&after), LADDER, "after the restart");
    for steps in [&before, &after] {
        let times: Vec<u64> = steps.iter().map(step_time).collect();
        assert!(times.iter().all(|t| *t > 0), "a step without its time: {times:?}");
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "times go back: {times:?}");
    }
    // The claim held across the restart keeps the time it was received.
    assert_eq!(before[0].received_at, after[0].received_at);
    let last = claim_status(&owner, &id).await;
    assert_eq!(last.status, "global");
    assert_eq!(
        [last.received_at, last.provisional_at, last.regional_at, last.global_at],
        [
            after[0].received_at,
            after[1].provisional_at,
            after[2].regional_at,
            after[3].global_at
        ],
        "GetClaim and the watch disagree on the steps' times"
    );
    owner.stop().await;
    voter.stop().await;
}

/// The first item of a watch's stream, or its end.
async fn first_item(
    rx: &mut tokio::sync::mpsc::Receiver<credence::rpc::watches::WatchItem>,
) -> Option<credence::rpc::watches::WatchItem> {
    tokio::time::timeout(crate::common::DEADLINE, rx.recv())
        .await
        .expect("a watch neither sent nor ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_on_unknown_ids_have_their_own_cap_and_end_not_found_after_the_grace() {
    use credence::rpc::watches::{UNKNOWN_WATCHES_MAX, WatchLimits, Watches};
    let _serial = crate::common::NETWORK_TESTS.lock().await;
    let net = TestNet::new(&["eu"], 1);
    let (nodes, dist) = start_normal(&net, 1).await;
    let claimant = SigningKey::from_bytes(&blake3_seed(11));
    let attestation = submit_attestation(
        &nodes[0],
        net.attestation(claimant.verifying_key().to_bytes(), "member"),
    )
    .await
    .expect("attest");
    let envelope = claim_envelope(&net, &claimant, &dist.id, &attestation, dist.amount_per_claim, 11);
    let real = submit_claim(&nodes[0], envelope, "claim accepted").await;
    let real: [u8; 32] = hex::decode(&real).expect("hex").try_into().expect("32 bytes");

    // The node's own limits: more watches on made-up ids than both pools
    // hold do not keep a watch on a real claim from its first status.
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let watches = Watches::start(nodes[0].handle.clone(), shutdown.clone());
    let mut bogus = Vec::new();
    for n in 0..UNKNOWN_WATCHES_MAX + 100 {
        bogus.push(
            watches
                .add(blake3_seed(1_000_000 + n as u64))
                .expect("handed to the hub"),
        );
    }
    let mut rx = watches.add(real).expect("handed to the hub");
    let first = first_item(&mut rx)
        .await
        .expect("a first item")
        .expect("a status, not a refusal");
    assert_ne!(first.status, "unknown", "{first:?}");
    assert!(
        eventually(|| async { watches.open_unknown() == UNKNOWN_WATCHES_MAX }).await,
        "unknown watches: {}",
        watches.open_unknown()
    );
    // Those past the unknown pool's cap were refused at their first look.
    let refused = first_item(bogus.last_mut().expect("some")).await.expect("an item");
    assert_eq!(refused.expect_err("refused").code(), tonic::Code::ResourceExhausted);
    // Clients that go away free their slots.
    drop(bogus);
    assert!(
        eventually(|| async { watches.open_unknown() == 0 }).await,
        "closed watches kept their slots: {}",
        watches.open_unknown()
    );

    // Small limits: the unknown pool's watches get `unknown`, then
    // `not_found` after the grace, which frees their slots.
    let limits = WatchLimits {
        known_max: 0,
        unknown_max: 2,
        unknown_grace: std::time::Duration::from_secs(1),
    };
    let small = Watches::start_with(nodes[0].handle.clone(), shutdown, limits);
    let mut a = small.add(blake3_seed(1)).expect("handed to the hub");
    let mut b = small.add(blake3_seed(2)).expect("handed to the hub");
    for rx in [&mut a, &mut b] {
        let first = first_item(rx).await.expect("an item").expect("a status");
        assert_eq!(first.status, "unknown");
    }
    let mut c = small.add(blake3_seed(3)).expect("handed to the hub");
    let third = first_item(&mut c)
        .await
        .expect("an item")
        .expect_err("past the unknown cap");
    assert_eq!(third.code(), tonic::Code::ResourceExhausted, "{third:?}");
    // A known claim counts against the other pool (here of size 0).
    let mut k = small.add(real).expect("handed to the hub");
    let known = first_item(&mut k)
        .await
        .expect("an item")
        .expect_err("past the known cap");
    assert_eq!(known.code(), tonic::Code::ResourceExhausted, "{known:?}");
    for rx in [&mut a, &mut b] {
        let end = first_item(rx)
            .await
            .expect("an item")
            .expect_err("ends after the grace");
        assert_eq!(end.code(), tonic::Code::NotFound, "{end:?}");
        assert!(end.message().contains("unknown"), "{end:?}");
    }
    assert!(
        eventually(|| async { small.open_unknown() == 0 }).await,
        "expired watches kept their slots"
    );
    let mut again = small.add(blake3_seed(4)).expect("handed to the hub");
    let first = first_item(&mut again)
        .await
        .expect("an item")
        .expect("a slot was freed");
    assert_eq!(first.status, "unknown");
}
