//! Breaking the network on purpose: `partition`, `heal`, `delay`, `reset`.
//!
//! A shaped testnet partitions by blackholing the relays between groups
//! (bytes stop, connections stay open). Otherwise each node is told, through
//! its fault-injection admin call, to block every peer on the other side,
//! which cuts connections at once.

use std::collections::BTreeSet;

use anyhow::{anyhow, bail};
use credence_proto::v1 as pb;
use serde_json::{Value, json};

use crate::layout::{Layout, LinkRule, RuleEntry, RunState, State};
use crate::rpc;
use crate::shaper::{Control, Request};

/// How long a block-list call is retried while its node is not answering
/// yet or still has the last start's admin token on disk: a node restarted
/// into a partition writes its new token and listens within a few seconds.
const ADMIN_CALL_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(15);
/// Pause between two such attempts.
const ADMIN_CALL_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// Ordered pairs (a, b) of node names on different sides.
fn cross_pairs(groups: &[Vec<String>]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        for (j, h) in groups.iter().enumerate() {
            if i != j {
                for a in g {
                    for b in h {
                        pairs.push((a.clone(), b.clone()));
                    }
                }
            }
        }
    }
    pairs
}

/// Sets a node's block on each peer across the current partition (or lifts
/// every such block). `only` limits it to one node's own list and to the
/// lists of others about that node.
pub async fn apply_block_list(
    layout: &Layout,
    state: &State,
    only: Option<&str>,
    blocked: bool,
) -> anyhow::Result<Vec<String>> {
    let _ = layout;
    let Some(groups) = state.partition.as_ref() else {
        return Ok(vec![]);
    };
    let mut skipped = BTreeSet::new();
    let mut calls = Vec::new();
    for (a, b) in cross_pairs(groups) {
        if only.is_some_and(|o| o != a && o != b) {
            continue;
        }
        let (Ok(node), Ok(peer)) = (state.node(&a), state.node(&b)) else {
            continue;
        };
        if node.state != RunState::Running {
            // A stopped node has no block-list; `restart` applies it again.
            skipped.insert(a.clone());
            continue;
        }
        let (url, peer_id, a, b) = (node.rpc.clone(), peer.peer_id.clone(), a.clone(), b.clone());
        let config = node.config.clone();
        calls.push(async move {
            let ch = rpc::channel(&url)?;
            let give_up = tokio::time::Instant::now() + ADMIN_CALL_RETRY_FOR;
            loop {
                let request = rpc::admin_request(
                    &config,
                    pb::SetPeerBlockedRequest {
                        peer: peer_id.clone(),
                        blocked,
                    },
                )?;
                match rpc::node(&ch).set_peer_blocked(request).await {
                    Ok(_) => break,
                    // A node just (re)started: not listening yet, or its
                    // token file still the last start's until it is.
                    Err(e)
                        if matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Unauthenticated)
                            && tokio::time::Instant::now() < give_up =>
                    {
                        tokio::time::sleep(ADMIN_CALL_RETRY_PAUSE).await;
                    }
                    Err(e) => bail!(
                        "{a} could not {} {b}: {}",
                        if blocked { "block" } else { "unblock" },
                        rpc::describe(&e)
                    ),
                }
            }
            anyhow::Ok(())
        });
    }
    let results = futures::future::join_all(calls).await;
    let errors: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(skipped.into_iter().collect())
}

/// Sends the state's rules to the shaper.
async fn push_rules(state: &State) -> anyhow::Result<()> {
    let shaper = state
        .shaper
        .as_ref()
        .ok_or_else(|| anyhow!("this testnet has no link shaper"))?;
    Control::new(&shaper.socket)
        .call(&Request::SetRules {
            rules: shaper.rules.clone(),
        })
        .await?;
    Ok(())
}

/// Changes the rule of each (from, to) pair with `edit`, keeping the list to
/// non-default rules.
fn edit_rules(state: &mut State, pairs: &[(String, String)], edit: impl Fn(&mut LinkRule)) {
    let Some(shaper) = state.shaper.as_mut() else { return };
    for (from, to) in pairs {
        match shaper.rules.iter_mut().find(|r| &r.from == from && &r.to == to) {
            Some(entry) => edit(&mut entry.rule),
            None => {
                let mut rule = LinkRule::default();
                edit(&mut rule);
                shaper.rules.push(RuleEntry {
                    from: from.clone(),
                    to: to.clone(),
                    rule,
                });
            }
        }
    }
    shaper.rules.retain(|r| !r.rule.is_default());
}

pub async fn partition(layout: &Layout, spec: &str) -> anyhow::Result<Value> {
    let mut state = layout.load_state()?;
    let groups = state.groups(spec)?;
    if state.partition.is_some() {
        heal_state(layout, &mut state).await?;
    }
    let pairs = cross_pairs(&groups);
    state.partition = Some(groups.clone());
    let (method, skipped) = if state.shaper.is_some() {
        edit_rules(&mut state, &pairs, |r| r.blackhole = true);
        push_rules(&state).await?;
        ("shaper blackhole", vec![])
    } else {
        let skipped = apply_block_list(layout, &state, None, true).await;
        // Record the partition even if some calls failed, so `heal` undoes
        // the blocks that did land.
        layout.save_state(&state)?;
        ("admin block-list", skipped?)
    };
    layout.save_state(&state)?;
    Ok(json!({ "groups": groups, "method": method, "not_running": skipped }))
}

async fn heal_state(layout: &Layout, state: &mut State) -> anyhow::Result<()> {
    if state.shaper.is_some() {
        let all: Vec<(String, String)> = state
            .shaper
            .as_ref()
            .map(|s| s.rules.iter().map(|r| (r.from.clone(), r.to.clone())).collect())
            .unwrap_or_default();
        edit_rules(state, &all, |r| r.blackhole = false);
        push_rules(state).await?;
    } else {
        apply_block_list(layout, state, None, false).await?;
    }
    state.partition = None;
    Ok(())
}

pub async fn heal(layout: &Layout) -> anyhow::Result<Value> {
    let mut state = layout.load_state()?;
    let was = state.partition.clone();
    heal_state(layout, &mut state).await?;
    layout.save_state(&state)?;
    Ok(json!({ "healed": was.is_some(), "was": was }))
}

/// Parses `--between X,Y` (or `X | Y` for several names a side) into the
/// directed pairs between the two sides, both ways.
fn between(state: &State, spec: &str) -> anyhow::Result<Vec<(String, String)>> {
    let sides: Vec<&str> = if spec.contains('|') {
        spec.split('|').collect()
    } else {
        spec.split(',').collect()
    };
    let [x, y] = sides.as_slice() else {
        bail!("--between {spec:?}: name two sides, e.g. --between eu,us or --between \"eu-0,eu-1 | us\"");
    };
    let (x, y) = (state.select(x)?, state.select(y)?);
    let mut pairs = BTreeSet::new();
    for a in &x {
        for b in &y {
            if a != b {
                pairs.insert((a.clone(), b.clone()));
                pairs.insert((b.clone(), a.clone()));
            }
        }
    }
    if pairs.is_empty() {
        bail!("--between {spec:?} names no link between two different nodes");
    }
    Ok(pairs.into_iter().collect())
}

fn require_shaper(state: &State, what: &str) -> anyhow::Result<()> {
    if state.shaper.is_none() {
        bail!(
            "{what} needs the link shaper, and this testnet runs without it: \
             start one with `credence-testnet up --shaped`"
        );
    }
    Ok(())
}

pub async fn delay(
    layout: &Layout,
    spec: &str,
    delay_ms: u64,
    jitter_ms: u64,
    bandwidth_kbps: Option<u64>,
) -> anyhow::Result<Value> {
    let mut state = layout.load_state()?;
    require_shaper(&state, "delay")?;
    if jitter_ms > delay_ms {
        bail!("--jitter-ms {jitter_ms} is larger than --ms {delay_ms}: jitter spreads delays around --ms");
    }
    let pairs = between(&state, spec)?;
    edit_rules(&mut state, &pairs, |r| {
        r.delay_ms = delay_ms;
        r.jitter_ms = jitter_ms;
        if let Some(k) = bandwidth_kbps {
            r.bandwidth_kbps = k;
        }
    });
    push_rules(&state).await?;
    layout.save_state(&state)?;
    Ok(json!({
        "links": pairs.len(),
        "delay_ms": delay_ms,
        "jitter_ms": jitter_ms,
        "bandwidth_kbps": bandwidth_kbps,
    }))
}

pub async fn reset(layout: &Layout, spec: &str) -> anyhow::Result<Value> {
    let state = layout.load_state()?;
    require_shaper(&state, "reset")?;
    let pairs = between(&state, spec)?;
    let socket = state.shaper.as_ref().map(|s| s.socket.clone()).unwrap_or_default();
    let reply = Control::new(&socket).call(&Request::Reset { pairs }).await?;
    Ok(json!({ "closed_connections": reply.closed }))
}

/// Per-link figures from the shaper.
pub async fn links(layout: &Layout) -> anyhow::Result<Value> {
    let state = layout.load_state()?;
    require_shaper(&state, "links")?;
    let socket = state.shaper.as_ref().map(|s| s.socket.clone()).unwrap_or_default();
    let reply = Control::new(&socket).call(&Request::Stats).await?;
    Ok(json!({ "links": reply.links }))
}
