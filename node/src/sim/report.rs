//! What a run reports: claims by status, latencies in virtual time, messages and bytes per node,
//! and the formatting of single runs, sweeps and the scale projection for humans and for JSON.
//!
//! Built by the world at the end of a run; printed by `sim.rs` (the `credence sim` command).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// The summary of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub nodes: usize,
    pub regions: usize,
    pub faults: String,
    /// Workload and fault period (virtual).
    pub duration_ms: u64,
    /// Virtual time when the run ended (converged, or failed).
    pub virtual_end_ms: u64,
    /// How long after the faults stopped everything converged.
    pub converged_after_faults_ms: Option<u64>,
    pub claims_submitted: u64,
    pub claims_global: u64,
    /// Certified, but not yet seen by every region's quorum when the run ended.
    pub claims_regional: u64,
    pub claims_provisional: u64,
    pub claims_received: u64,
    /// Objectively invalid (someone else's credential) or a second claim of a paid slot.
    pub claims_rejected: u64,
    /// Valid claims homed at the Byzantine owner's bucket, which it may stall (DESIGN.md: a
    /// Byzantine owner can at worst stall its own bucket).
    pub claims_exempt_byzantine_owner: u64,
    pub certificates: u64,
    pub regional_p50_ms: f64,
    pub regional_p99_ms: f64,
    pub global_p50_ms: f64,
    pub global_p99_ms: f64,
    pub messages_sent_per_node: f64,
    pub messages_received_per_node: f64,
    pub bytes_sent_per_node: f64,
    pub bytes_received_per_node: f64,
    /// Sent plus received, per node, per second of virtual time.
    pub messages_per_node_per_s: f64,
    pub bytes_per_node_per_s: f64,
    pub max_messages_sent_by_a_node: u64,
    pub events: u64,
    pub byzantine_node: Option<usize>,
    /// How often each notable thing happened (refusals, faults, Byzantine acts).
    pub counters: BTreeMap<String, u64>,
}

/// The `p`-th percentile (nearest rank) of `values`; 0 when empty.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values
        .get(rank.saturating_sub(1).min(values.len() - 1))
        .copied()
        .unwrap_or(0.0)
}

fn human_bytes(bytes: f64) -> String {
    if bytes >= 1e6 {
        format!("{:.2} MB", bytes / 1e6)
    } else if bytes >= 1e3 {
        format!("{:.1} kB", bytes / 1e3)
    } else {
        format!("{bytes:.0} B")
    }
}

/// A human summary of one run.
pub fn human(summary: &Summary) -> String {
    let mut out = String::new();
    let s = summary;
    let _ = writeln!(
        out,
        "{} validators in {} regions, faults {}, {:.1} s of workload and faults (virtual)",
        s.nodes,
        s.regions,
        s.faults,
        s.duration_ms as f64 / 1e3
    );
    if let Some(after) = s.converged_after_faults_ms {
        let _ = writeln!(
            out,
            "converged {:.2} s after faults stopped (all certificates everywhere, identical state digests)",
            after as f64 / 1e3
        );
    }
    let _ = writeln!(
        out,
        "claims: {} submitted; {} global, {} regional, {} provisional, {} received, {} rejected{}",
        s.claims_submitted,
        s.claims_global,
        s.claims_regional,
        s.claims_provisional,
        s.claims_received,
        s.claims_rejected,
        if s.claims_exempt_byzantine_owner > 0 {
            format!(", {} stalled by the Byzantine owner", s.claims_exempt_byzantine_owner)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "latency (virtual): to regional p50 {:.1} ms, p99 {:.1} ms; to global p50 {:.1} ms, p99 {:.1} ms",
        s.regional_p50_ms, s.regional_p99_ms, s.global_p50_ms, s.global_p99_ms
    );
    let _ = writeln!(
        out,
        "per node: {:.0} messages sent, {:.0} received, {} sent, {} received; {:.1} msg/s, {}/s",
        s.messages_sent_per_node,
        s.messages_received_per_node,
        human_bytes(s.bytes_sent_per_node),
        human_bytes(s.bytes_received_per_node),
        s.messages_per_node_per_s,
        human_bytes(s.bytes_per_node_per_s)
    );
    let _ = writeln!(out, "{} certificates, {} events", s.certificates, s.events);
    if let Some(node) = s.byzantine_node {
        let _ = writeln!(out, "byzantine validator: node {node}");
    }
    out
}
