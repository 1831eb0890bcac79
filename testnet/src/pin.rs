//! Regions on separate CPUs for the length of a stress scenario.
//!
//! A testnet's nodes share one machine; a region's rush would otherwise slow
//! every other region through the CPU alone, and a p99 ratio between regions
//! would measure the machine, not the protocol. Pinning the run region's node
//! processes to their own CPUs and the other regions' to the rest models
//! regions on separate hosts: what still slows the others is work the protocol
//! gives them (the run region's certificates they pull and check), which is
//! what the ratio is meant to show. Undone (every CPU again) on drop.

use std::path::Path;

use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

/// Node processes pinned to CPU sets; restored to every CPU on drop.
pub struct Pinned {
    pids: Vec<u32>,
    cpus: usize,
}

/// Every CPU the machine has (at most what a `CpuSet` holds).
fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .min(CpuSet::count())
}

/// The run region's nodes get the first `cpus / regions` CPUs (at least one),
/// the others the rest. `None` on a one-CPU machine: nothing to separate.
/// A process that cannot be pinned (gone, not ours) is left as it is.
pub fn regions(nodes: &[(u32, bool)], regions: usize) -> Option<Pinned> {
    let cpus = cpu_count();
    if cpus < 2 {
        return None;
    }
    let own = (cpus / regions.max(1)).clamp(1, cpus - 1);
    let run = set(0..own);
    let rest = set(own..cpus);
    let mut pids = Vec::new();
    for (pid, in_run) in nodes {
        if apply(*pid, if *in_run { &run } else { &rest }) {
            pids.push(*pid);
        }
    }
    Some(Pinned { pids, cpus })
}

impl Pinned {
    /// Which CPUs the run region got, for the report.
    pub fn describe(&self, regions: usize) -> String {
        let own = (self.cpus / regions.max(1)).clamp(1, self.cpus - 1);
        format!(
            "the run region's nodes pinned to {own} of {} CPUs, the other regions' to the rest (regions as separate hosts)",
            self.cpus
        )
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let all = set(0..self.cpus);
        for pid in &self.pids {
            apply(*pid, &all);
        }
    }
}

fn set(cpus: std::ops::Range<usize>) -> CpuSet {
    let mut s = CpuSet::new();
    for c in cpus {
        // In range: `cpu_count` is capped at `CpuSet::count()`.
        let _ = s.set(c);
    }
    s
}

/// Pins every thread of `pid` (a thread's mask is its own; new threads inherit
/// their creator's). False when the process cannot be read or pinned.
fn apply(pid: u32, cpus: &CpuSet) -> bool {
    let Ok(tasks) = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("task")) else {
        return false;
    };
    let mut any = false;
    for t in tasks.flatten() {
        if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            any |= sched_setaffinity(Pid::from_raw(tid), cpus).is_ok();
        }
    }
    any
}
