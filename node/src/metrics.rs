//! Prometheus metrics: one registry per node, served as text on `/metrics`.
//!
//! Every queue exports its depth and its drops; every object kind its
//! accepted / rejected / duplicate counts.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

// Label values are static names: counting an object on the gossip path
// allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    pub topic: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

/// Why a gRPC or HTTP connection was closed by the node (`rpc::limit`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionClosedLabels {
    /// `grpc` or `http`.
    pub server: &'static str,
    /// `first_request_deadline`, `idle` or `per_ip_cap`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: &'static str,
}

/// The node's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Objects by kind, outcome (accepted, duplicate, rejected) and source.
    pub objects: Family<KindLabels, Counter>,
    /// Current depth of each bounded queue.
    pub queue_depth: Family<QueueLabels, Gauge>,
    /// Items shed because a queue was full.
    pub queue_dropped: Family<QueueLabels, Counter>,
    /// Connected peers.
    pub peers: Gauge,
    /// Entries in the local credential log.
    pub credential_log_len: Gauge,
    /// Store flushes (each one group-commits every write before it).
    pub store_flushes: Counter,
    /// Pages pulled from peers by credential catch-up.
    pub sync_pages: Counter,
    /// Gossip publications by topic and outcome (sent, no_peers, duplicate,
    /// too_large, queues_full, failed).
    pub published: Family<PublishLabels, Counter>,
    /// How long each lock-log append took to become durable (write and
    /// fdatasync, grouped with whatever else was waiting). Votes and own
    /// batches leave only after it.
    pub lock_log_sync: Histogram,
    /// How long the actor took over one group of commands, lock-log wait
    /// included: everything queued behind it waited as long.
    pub actor_group: Histogram,
    /// Claims this node owns, by stage: `batching` (received → batch sent for
    /// votes) and `voting` (batch sent → certified).
    pub claim_stage: Family<StageLabels, Histogram>,
    /// How old validators' heartbeats were on arrival (gossip delay plus
    /// clock offset).
    pub heartbeat_age: Histogram,
    /// Connections closed because gossip to the peer stopped draining.
    pub gossip_stuck_resets: Counter,
    /// Owners this node caught signing two batches at one `(bucket, seq)`
    /// (each position once); the evidence was gossiped.
    pub equivocations_detected: Counter,
    /// Equivocation evidence from peers that verified here (and was relayed).
    pub evidence_received: Counter,
    /// Connected peers whose gossipsub score is below the graylist threshold.
    pub gossip_graylisted_peers: Gauge,
    /// `WatchClaim` streams open on claims this node knows.
    pub rpc_watches: Gauge,
    /// `WatchClaim` streams open on ids this node does not know (yet).
    pub rpc_watches_unknown: Gauge,
    /// gRPC connections open.
    pub rpc_connections: Gauge,
    /// HTTP connections open.
    pub http_connections: Gauge,
    /// gRPC and HTTP connections the node closed or refused, by server and
    /// reason (`rpc::limit`).
    pub rpc_connections_closed: Family<ConnectionClosedLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// 1 ms to about 16 s: claim stages are stamped in whole milliseconds.
fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("credence");
        let objects = Family::<KindLabels, Counter>::default();
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        let queue_dropped = Family::<QueueLabels, Counter>::default();
        let peers = Gauge::default();
        let credential_log_len = Gauge::default();
        let store_flushes = Counter::default();
        let sync_pages = Counter::default();
        let published = Family::<PublishLabels, Counter>::default();
        let claim_stage = Family::<StageLabels, Histogram>::new_with_constructor(stage_histogram as fn() -> Histogram);
        registry.register(
            "claim_stage_seconds",
            "Claims this node owns, by stage: batching (received to batch sent) and voting (batch sent to certified)",
            claim_stage.clone(),
        );
        let heartbeat_age = stage_histogram();
        registry.register(
            "heartbeat_age_seconds",
            "Age of validators' heartbeats on arrival: gossip delay plus clock offset",
            heartbeat_age.clone(),
        );
        let gossip_stuck_resets = Counter::default();
        registry.register(
            "gossip_stuck_resets",
            "Connections closed because gossip to the peer stopped draining",
            gossip_stuck_resets.clone(),
        );
        let equivocations_detected = Counter::default();
        registry.register(
            "equivocations_detected",
            "Owners caught signing two batches at one (bucket, seq) here; the evidence was gossiped",
            equivocations_detected.clone(),
        );
        let evidence_received = Counter::default();
        registry.register(
            "evidence_received",
            "Equivocation evidence from peers that verified here",
            evidence_received.clone(),
        );
        let gossip_graylisted_peers = Gauge::default();
        registry.register(
            "gossip_graylisted_peers",
            "Connected peers whose gossipsub score is below the graylist threshold",
            gossip_graylisted_peers.clone(),
        );
        // 50 µs to about 3.3 s.
        let lock_log_sync = Histogram::new(exponential_buckets(0.000_05, 2.0, 17));
        let actor_group = Histogram::new(exponential_buckets(0.000_05, 2.0, 17));
        registry.register(
            "lock_log_sync_seconds",
            "Time for a lock-log append to become durable",
            lock_log_sync.clone(),
        );
        registry.register(
            "actor_group_seconds",
            "Time the actor spent on one group of commands, lock-log wait included",
            actor_group.clone(),
        );
        registry.register(
            "gossip_published",
            "Gossip publications by topic and outcome",
            published.clone(),
        );
        registry.register("objects", "Signed objects by kind, outcome and source", objects.clone());
        registry.register(
            "queue_depth",
            "Items waiting in each bounded queue",
            queue_depth.clone(),
        );
        registry.register(
            "queue_dropped",
            "Items shed because a queue was full",
            queue_dropped.clone(),
        );
        registry.register("peers", "Connected peers", peers.clone());
        let rpc_watches = Gauge::default();
        registry.register(
            "rpc_watches",
            "WatchClaim streams open on claims this node knows",
            rpc_watches.clone(),
        );
        let rpc_watches_unknown = Gauge::default();
        registry.register(
            "rpc_watches_unknown",
            "WatchClaim streams open on ids this node does not know yet",
            rpc_watches_unknown.clone(),
        );
        let rpc_connections = Gauge::default();
        registry.register("rpc_connections", "gRPC connections open", rpc_connections.clone());
        let http_connections = Gauge::default();
        registry.register("http_connections", "HTTP connections open", http_connections.clone());
        let rpc_connections_closed = Family::<ConnectionClosedLabels, Counter>::default();
        registry.register(
            "rpc_connections_closed",
            "gRPC and HTTP connections closed or refused by the node, by server and reason",
            rpc_connections_closed.clone(),
        );
        registry.register(
            "credential_log_len",
            "Entries in the local append-only credential log",
            credential_log_len.clone(),
        );
        registry.register("store_flushes", "Group-committed store flushes", store_flushes.clone());
        registry.register(
            "sync_pages",
            "Credential log pages pulled from peers",
            sync_pages.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            objects,
            queue_depth,
            queue_dropped,
            peers,
            credential_log_len,
            store_flushes,
            sync_pages,
            published,
            lock_log_sync,
            actor_group,
            gossip_stuck_resets,
            equivocations_detected,
            evidence_received,
            gossip_graylisted_peers,
            claim_stage,
            heartbeat_age,
            rpc_watches,
            rpc_watches_unknown,
            rpc_connections,
            http_connections,
            rpc_connections_closed,
        }
    }

    /// Exports the delays the escrow measured (ms) into their histograms.
    pub fn export(&self, samples: &crate::core::validator::Samples) {
        for (stage, ms) in [("batching", &samples.batching), ("voting", &samples.voting)] {
            if ms.is_empty() {
                continue;
            }
            let histogram = self.claim_stage.get_or_create(&StageLabels { stage });
            for ms in ms {
                histogram.observe(*ms as f64 / 1000.0);
            }
        }
        for ms in &samples.heartbeat_age {
            self.heartbeat_age.observe(*ms as f64 / 1000.0);
        }
    }

    /// Counts one object outcome.
    pub fn object(&self, kind: &'static str, outcome: &'static str, source: &'static str) {
        self.objects.get_or_create(&KindLabels { kind, outcome, source }).inc();
    }

    /// Counts one gossip publication's outcome.
    pub fn publish(&self, topic: &'static str, outcome: &'static str) {
        self.published.get_or_create(&PublishLabels { topic, outcome }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const README: &str = include_str!("../../README.md");
    const DASHBOARD: &str = include_str!("../../testnet/grafana/credence.json");
    const SOURCE: &str = include_str!("metrics.rs");

    /// The names in README's metrics table (rows starting with a `credence_` name).
    fn documented() -> Vec<String> {
        README
            .lines()
            .filter_map(|l| l.strip_prefix("| `credence_"))
            .filter_map(|l| l.split('`').next())
            .map(|n| format!("credence_{n}"))
            .collect()
    }

    /// Every family the registry exports, with a sample in each so that
    /// label families show their `# TYPE` line too.
    fn exported() -> Vec<String> {
        let m = Metrics::new();
        m.object("attestation", "accepted", "rpc");
        m.queue_dropped.get_or_create(&QueueLabels { queue: "actor" }).inc();
        m.queue_depth.get_or_create(&QueueLabels { queue: "actor" }).set(1);
        m.publish("cred", "sent");
        m.claim_stage
            .get_or_create(&StageLabels { stage: "voting" })
            .observe(0.1);
        m.rpc_connections_closed
            .get_or_create(&ConnectionClosedLabels {
                server: "http",
                reason: "idle",
            })
            .inc();
        m.encode()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn readme_documents_every_family() {
        let documented = documented();
        let exported = exported();
        assert!(exported.len() >= 18, "{exported:?}");
        for name in &exported {
            assert!(documented.contains(name), "README's metrics table lacks {name}");
        }
        // A family registered in the code, whether or not it has samples yet.
        let code = SOURCE.split("#[cfg(test)]").next().unwrap_or_default();
        for part in code.split("registry.register(").skip(1) {
            let name = part.split('"').nth(1).unwrap_or_default();
            let name = format!("credence_{name}");
            assert!(documented.contains(&name), "README's metrics table lacks {name}");
        }
        for name in &documented {
            assert!(
                exported.contains(name),
                "README documents {name}, which /metrics does not export"
            );
        }
    }

    #[test]
    fn the_dashboard_uses_only_documented_families() {
        let documented = documented();
        let mut used = Vec::new();
        for part in DASHBOARD.split("credence_").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let mut name = format!("credence_{name}");
            for suffix in ["_bucket", "_sum", "_count", "_total"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    name = base.to_string();
                }
            }
            used.push(name);
        }
        assert!(used.len() >= 10, "{used:?}");
        for name in &used {
            assert!(
                documented.contains(name),
                "the dashboard uses {name}, which README does not document"
            );
        }
        let json: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
        assert!(json["panels"].as_array().is_some_and(|p| p.len() >= 8));
    }
}
