//! Fault profiles and the seeded fault schedule they expand to: partitions, crashes and restarts,
//! clock skew and jumps, a rough network, and which validator (if any) is Byzantine; and scripts,
//! fixed schedules that replace a profile's plan (the scenarios of `scenario.rs`).
//!
//! The world asks [`Profile::plan`] (or takes the [`Script`]) once per run for a time-ordered list
//! of [`FaultEvent`]s inside the fault period; at its end every fault is lifted (the tail in which
//! liveness is checked), except that a node failed for good stays down.

use super::net::{LinkModel, Micros, Partition, Rng};

/// A named set of faults (`--faults`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// A calm network, honest validators, synchronised clocks (small persistent skew only).
    None,
    /// Jepsen-style partitions (isolate, majority/minority, ring, bridge, one-way) and a rough
    /// network: loss, duplication, jitter and reordering.
    Partitions,
    /// Crashes and restarts from durable state only (locks, the owner's last batch), including
    /// kills between persisting a lock and sending its vote.
    Crashes,
    /// One Byzantine validator: it equivocates as an owner, votes for anything, forges votes and
    /// certificates and replays old votes.
    Byzantine,
    /// Clock skew beyond the tolerance and clock jumps.
    Clock,
    /// Everything above at once.
    All,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::None => "none",
            Profile::Partitions => "partitions",
            Profile::Crashes => "crashes",
            Profile::Byzantine => "byzantine",
            Profile::Clock => "clock",
            Profile::All => "all",
        }
    }

    pub fn partitions(self) -> bool {
        matches!(self, Profile::Partitions | Profile::All)
    }

    pub fn crashes(self) -> bool {
        matches!(self, Profile::Crashes | Profile::All)
    }

    pub fn byzantine(self) -> bool {
        matches!(self, Profile::Byzantine | Profile::All)
    }

    pub fn clock(self) -> bool {
        matches!(self, Profile::Clock | Profile::All)
    }

    /// The links during the fault period.
    pub fn links(self) -> LinkModel {
        if self.partitions() {
            LinkModel::ROUGH
        } else {
            LinkModel::CALM
        }
    }

    /// Expands the profile into a schedule of faults inside `[0, fault_end)`.
    pub fn plan(self, rng: &mut Rng, nodes: usize, fault_end: Micros) -> Vec<(Micros, FaultEvent)> {
        let mut events = Vec::new();
        if self.partitions() {
            // Partitions come and go: 1-4 s on, 0.5-2 s off.
            let mut at = rng.between(200_000, 1_500_000);
            while at < fault_end {
                let partition = Partition::random(rng, nodes);
                let until = at.saturating_add(rng.between(1_000_000, 4_000_000)).min(fault_end);
                events.push((at, FaultEvent::Partition(partition)));
                events.push((until, FaultEvent::HealPartition));
                at = until.saturating_add(rng.between(500_000, 2_000_000));
            }
        }
        if self.crashes() {
            // Roughly one crash every 1.5 s somewhere; each node stays down 0.3-4 s.
            let mut at = rng.between(100_000, 1_500_000);
            while at < fault_end {
                let node = rng.below(nodes as u64) as usize;
                let back = at.saturating_add(rng.between(300_000, 4_000_000));
                events.push((at, FaultEvent::Crash(node)));
                if back < fault_end {
                    events.push((back, FaultEvent::Restart(node)));
                }
                at = at.saturating_add(rng.between(500_000, 2_500_000));
            }
        }
        if self.clock() {
            // Clock jumps past the tolerance, forwards or backwards, for 0.5-3 s.
            let mut at = rng.between(100_000, 2_000_000);
            while at < fault_end {
                let node = rng.below(nodes as u64) as usize;
                let magnitude = rng.between(600, 3_000) as i64;
                let jump = if rng.below(2) == 0 { magnitude } else { -magnitude };
                let back = at.saturating_add(rng.between(500_000, 3_000_000)).min(fault_end);
                events.push((at, FaultEvent::ClockJump { node, jump_ms: jump }));
                events.push((back, FaultEvent::ClockJump { node, jump_ms: 0 }));
                at = at.saturating_add(rng.between(700_000, 3_000_000));
            }
        }
        events.sort_by_key(|(at, _)| *at);
        events
    }
}

/// A fixed fault schedule: exactly these faults at these times (virtual microseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub name: &'static str,
    pub events: Vec<(Micros, FaultEvent)>,
}

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultEvent {
    Partition(Partition),
    HealPartition,
    Crash(usize),
    Restart(usize),
    /// The node fails for good (a lost machine): it is not restarted when the faults stop, and
    /// liveness and convergence are judged without it.
    Fail(usize),
    /// As `Fail`, right after the node's owner next sends a batch to its voters: the batch is
    /// durable and its vote requests are on the wire, none of it certified yet.
    FailAfterNextBatch(usize),
    /// Sets the node's extra clock offset (0 puts it back on its persistent skew).
    ClockJump {
        node: usize,
        jump_ms: i64,
    },
}

impl FaultEvent {
    /// A short description, for the record.
    pub fn name(&self) -> String {
        match self {
            FaultEvent::Partition(partition) => format!("partition {}", partition.name()),
            FaultEvent::HealPartition => "heal partition".into(),
            FaultEvent::Crash(node) => format!("crash {node}"),
            FaultEvent::Restart(node) => format!("restart {node}"),
            FaultEvent::Fail(node) => format!("fail {node}"),
            FaultEvent::FailAfterNextBatch(node) => format!("fail {node} after its next batch"),
            FaultEvent::ClockJump { node, jump_ms } => format!("clock jump {node} {jump_ms} ms"),
        }
    }
}
