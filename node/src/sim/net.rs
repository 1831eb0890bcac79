//! The virtual network and clock: a seeded random source, the event queue ordered by virtual
//! time, per-link delay distributions (intra-region and an inter-region round-trip matrix), loss,
//! duplication and the partition shapes Jepsen uses.
//!
//! Owned by the world (`world.rs`), which asks it when a message sent now arrives (or whether it
//! is lost) and whether a directed link is cut at delivery time. Nothing here reads a real clock.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Virtual time in microseconds since the start of the run.
pub type Micros = u64;

/// SplitMix64: tiny, fast and fully determined by its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Mix the seed once so that neighbouring seeds start far apart.
        let mut rng = Self(seed ^ 0x5DEE_CE66_D1CE_4E5B);
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo.saturating_add(self.below(hi.saturating_sub(lo).saturating_add(1)))
    }

    /// True with probability `ppm` per million.
    pub fn chance_ppm(&mut self, ppm: u64) -> bool {
        self.below(1_000_000) < ppm
    }

    /// Exponentially distributed with the given mean (inverse transform on 53 random bits).
    pub fn exponential(&mut self, mean: f64) -> f64 {
        let unit = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -mean * unit.ln()
    }
}

/// One scheduled event; ties in time are broken by the order of scheduling, so the queue is a
/// total order and a run is a pure function of its seed.
struct Scheduled<E> {
    at: Micros,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl<E> Eq for Scheduled<E> {}
impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Scheduled<E> {
    // Reversed: BinaryHeap is a max-heap and the earliest event must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The event queue: a min-heap on (virtual time, scheduling order).
pub struct EventQueue<E> {
    heap: BinaryHeap<Scheduled<E>>,
    next_seq: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> EventQueue<E> {
    pub fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }

    pub fn push(&mut self, at: Micros, event: E) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.heap.push(Scheduled { at, seq, event });
    }

    pub fn pop(&mut self) -> Option<(Micros, E)> {
        self.heap.pop().map(|s| (s.at, s.event))
    }
}

/// Published AWS inter-region round-trip times in milliseconds (p50 of VM-to-VM pings), rounded.
///
/// Source: the AWS inter-region latency matrix published by cloudping.co
/// (<https://www.cloudping.co/grid>, "p50, last year" view), consistent with the heat-maps of
/// Agarwal, "Public Cloud Inter-region Network Latency as Heat-maps" (2018). Rounded to 5 ms;
/// the order puts three distant regions first so that small region counts still span the globe.
pub const AWS_REGIONS: [&str; 10] = [
    "us-east-1",
    "eu-west-1",
    "ap-northeast-1",
    "us-west-2",
    "eu-central-1",
    "ap-southeast-1",
    "sa-east-1",
    "ap-south-1",
    "ap-southeast-2",
    "ca-central-1",
];

/// Round-trip times between [`AWS_REGIONS`], in milliseconds (symmetric).
pub const AWS_RTT_MS: [[u32; 10]; 10] = [
    // use1 euw1 apne1 usw2 euc1 apse1 sae1 aps1 apse2 cac1
    [0, 70, 145, 65, 90, 215, 115, 185, 200, 15],     // us-east-1
    [70, 0, 200, 120, 25, 170, 180, 120, 255, 70],    // eu-west-1
    [145, 200, 0, 100, 225, 70, 255, 125, 105, 145],  // ap-northeast-1
    [65, 120, 100, 0, 140, 165, 175, 220, 140, 60],   // us-west-2
    [90, 25, 225, 140, 0, 155, 200, 110, 250, 95],    // eu-central-1
    [215, 170, 70, 165, 155, 0, 325, 60, 95, 210],    // ap-southeast-1
    [115, 180, 255, 175, 200, 325, 0, 300, 310, 125], // sa-east-1
    [185, 120, 125, 220, 110, 60, 300, 0, 145, 190],  // ap-south-1
    [200, 255, 105, 140, 250, 95, 310, 145, 0, 195],  // ap-southeast-2
    [15, 70, 145, 60, 95, 210, 125, 190, 195, 0],     // ca-central-1
];

/// Round trip inside one region (across availability zones), in microseconds.
pub const INTRA_REGION_RTT_US: Micros = 1_000;

/// The name of region `index` (AWS names, suffixed when there are more than ten regions).
pub fn region_name(index: usize) -> String {
    let base = AWS_REGIONS.get(index % AWS_REGIONS.len()).copied().unwrap_or("region");
    if index < AWS_REGIONS.len() {
        base.to_owned()
    } else {
        format!("{base}-{}", index / AWS_REGIONS.len())
    }
}

/// Base one-way delay between two regions, in microseconds: half the published round trip.
pub fn base_one_way_us(from_region: usize, to_region: usize) -> Micros {
    let a = from_region % AWS_REGIONS.len();
    let b = to_region % AWS_REGIONS.len();
    let rtt_ms = AWS_RTT_MS.get(a).and_then(|row| row.get(b)).copied().unwrap_or(100);
    if rtt_ms == 0 {
        // Same cloud region (or its alias past ten regions): an availability-zone hop.
        let hops = if from_region == to_region { 1 } else { 2 };
        return INTRA_REGION_RTT_US / 2 * hops;
    }
    u64::from(rtt_ms) * 1_000 / 2
}

/// How the links behave at one moment: loss, duplication and the shape of the delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkModel {
    /// Probability (per million) that a message is lost.
    pub loss_ppm: u64,
    /// Probability (per million) that a message is delivered twice.
    pub duplicate_ppm: u64,
    /// Mean of the exponential jitter added to every delay, in percent of the base delay.
    pub jitter_percent: u64,
    /// Probability (per million) of a delay spike (a queue somewhere): up to 10x the base.
    pub spike_ppm: u64,
}

impl LinkModel {
    /// A healthy network: a little jitter, nothing lost.
    pub const CALM: LinkModel = LinkModel {
        loss_ppm: 0,
        duplicate_ppm: 0,
        jitter_percent: 5,
        spike_ppm: 1_000,
    };

    /// A bad day: loss, duplicates, heavy jitter (hence reordering) and spikes.
    pub const ROUGH: LinkModel = LinkModel {
        loss_ppm: 20_000,
        duplicate_ppm: 10_000,
        jitter_percent: 40,
        spike_ppm: 20_000,
    };

    /// The delay of one message over a link with base one-way delay `base`, or `None` when lost.
    /// Each message draws its own delay, so messages on one link overtake each other.
    pub fn delay(&self, rng: &mut Rng, base: Micros) -> Option<Micros> {
        if self.loss_ppm > 0 && rng.chance_ppm(self.loss_ppm) {
            return None;
        }
        let mean = base as f64 * self.jitter_percent as f64 / 100.0;
        let mut delay = base.saturating_add(rng.exponential(mean.max(1.0)) as u64);
        if self.spike_ppm > 0 && rng.chance_ppm(self.spike_ppm) {
            delay = delay.saturating_add(rng.below(base.saturating_mul(10).max(1)));
        }
        Some(delay.max(1))
    }
}

/// A network partition, in the shapes Jepsen uses. Node indices refer to the world's nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partition {
    /// One node cut off from everyone, both ways.
    Isolate(usize),
    /// Two sides that cannot talk: `side[i]` is node i's side (the larger side is the majority).
    MajorityMinority(Vec<bool>),
    /// Nodes on a ring (by position) hear only their two neighbours.
    Ring(Vec<usize>),
    /// Two halves joined by one bridge node that talks to both.
    Bridge { side: Vec<bool>, bridge: usize },
    /// Messages from the `side[i] == true` group to the others are dropped; the reverse flows.
    OneWay(Vec<bool>),
    /// Nodes in different groups cannot talk; a node in no group (`None`) talks to everyone.
    Groups(Vec<Option<usize>>),
}

impl Partition {
    pub fn name(&self) -> &'static str {
        match self {
            Partition::Isolate(_) => "isolate",
            Partition::MajorityMinority(_) => "majority-minority",
            Partition::Ring(_) => "ring",
            Partition::Bridge { .. } => "bridge",
            Partition::OneWay(_) => "one-way",
            Partition::Groups(_) => "groups",
        }
    }

    /// Every region on its own: nodes talk only within their region (`regions[i]` is node i's).
    pub fn by_region(regions: &[usize]) -> Partition {
        Partition::Groups(regions.iter().map(|region| Some(*region)).collect())
    }

    /// `one` and `other` cannot talk to each other; every other node of the `n` talks to both.
    pub fn split(n: usize, one: &[usize], other: &[usize]) -> Partition {
        let mut groups = vec![None; n];
        for (group, members) in [(0, one), (1, other)] {
            for node in members {
                if let Some(slot) = groups.get_mut(*node) {
                    *slot = Some(group);
                }
            }
        }
        Partition::Groups(groups)
    }

    /// Whether the directed link `from -> to` is cut.
    pub fn blocks(&self, from: usize, to: usize) -> bool {
        if from == to {
            return false;
        }
        let side = |sides: &Vec<bool>, i: usize| sides.get(i).copied().unwrap_or(false);
        match self {
            Partition::Isolate(node) => from == *node || to == *node,
            Partition::MajorityMinority(sides) => side(sides, from) != side(sides, to),
            Partition::Ring(position) => {
                let n = position.len();
                match (position.get(from), position.get(to)) {
                    (Some(a), Some(b)) if n > 2 => {
                        let distance = a.abs_diff(*b);
                        distance != 1 && distance != n - 1
                    }
                    _ => false,
                }
            }
            Partition::Bridge { side: sides, bridge } => {
                from != *bridge && to != *bridge && side(sides, from) != side(sides, to)
            }
            Partition::OneWay(sides) => side(sides, from) && !side(sides, to),
            Partition::Groups(groups) => {
                let group = |i: usize| groups.get(i).copied().flatten();
                matches!((group(from), group(to)), (Some(a), Some(b)) if a != b)
            }
        }
    }

    /// Draws a random partition shape over `n` nodes.
    pub fn random(rng: &mut Rng, n: usize) -> Partition {
        let shuffled = shuffled(rng, n);
        let pick = rng.below(5);
        // A side assignment: the first `cut` nodes of the shuffle are on side `true`.
        let sides = |cut: usize| {
            let mut sides = vec![false; n];
            for node in shuffled.iter().take(cut) {
                if let Some(slot) = sides.get_mut(*node) {
                    *slot = true;
                }
            }
            sides
        };
        let minority = (n.saturating_sub(1) / 2).max(1);
        match pick {
            0 => Partition::Isolate(shuffled.first().copied().unwrap_or(0)),
            1 => Partition::MajorityMinority(sides(minority)),
            2 => {
                let mut position = vec![0; n];
                for (place, node) in shuffled.iter().enumerate() {
                    if let Some(slot) = position.get_mut(*node) {
                        *slot = place;
                    }
                }
                Partition::Ring(position)
            }
            3 => {
                let bridge = shuffled.last().copied().unwrap_or(0);
                Partition::Bridge {
                    side: sides(n / 2),
                    bridge,
                }
            }
            _ => Partition::OneWay(sides(n / 2)),
        }
    }
}

/// A seeded permutation of `0..n` (Fisher-Yates).
pub fn shuffled(rng: &mut Rng, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_orders_by_time_then_insertion() {
        let mut queue = EventQueue::new();
        queue.push(5, "c");
        queue.push(1, "a");
        queue.push(5, "d");
        queue.push(1, "b");
        let order: Vec<&str> = std::iter::from_fn(|| queue.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, ["a", "b", "c", "d"]);
    }

    #[test]
    fn partition_shapes_cut_what_they_should() {
        let isolate = Partition::Isolate(2);
        assert!(isolate.blocks(2, 0) && isolate.blocks(0, 2) && !isolate.blocks(0, 1));
        let one_way = Partition::OneWay(vec![true, false]);
        assert!(one_way.blocks(0, 1) && !one_way.blocks(1, 0));
        let ring = Partition::Ring(vec![0, 1, 2, 3, 4]);
        assert!(!ring.blocks(0, 1) && !ring.blocks(0, 4) && ring.blocks(0, 2));
        let bridge = Partition::Bridge {
            side: vec![true, true, false, false],
            bridge: 3,
        };
        assert!(bridge.blocks(0, 2) && !bridge.blocks(0, 3) && !bridge.blocks(3, 1) && !bridge.blocks(0, 1));
        let split = Partition::MajorityMinority(vec![true, false, false]);
        assert!(split.blocks(0, 1) && split.blocks(2, 0) && !split.blocks(1, 2));
        // Six nodes round-robin over three regions: 0 and 3 share a region.
        let regions = Partition::by_region(&[0, 1, 2, 0, 1, 2]);
        assert!(!regions.blocks(0, 3) && !regions.blocks(4, 1) && regions.blocks(0, 1) && regions.blocks(5, 3));
        // 0|3 split, everyone else talks to both halves.
        let halves = Partition::split(6, &[0], &[3]);
        assert!(halves.blocks(0, 3) && halves.blocks(3, 0));
        assert!(!halves.blocks(0, 1) && !halves.blocks(1, 3) && !halves.blocks(2, 4));
    }

    #[test]
    fn matrix_is_symmetric_and_delays_are_positive() {
        for (i, row) in AWS_RTT_MS.iter().enumerate() {
            for (j, rtt) in row.iter().enumerate() {
                assert_eq!(*rtt, AWS_RTT_MS[j][i], "asymmetric at {i},{j}");
                assert_eq!(*rtt == 0, i == j);
            }
        }
        let mut rng = Rng::new(3);
        for _ in 0..1000 {
            let delay = LinkModel::ROUGH.delay(&mut rng, base_one_way_us(0, 2));
            assert!(delay.is_none_or(|d| d >= 72_500));
        }
    }
}
