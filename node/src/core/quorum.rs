//! Delay tracking for the delay-aware quorum: phi-accrual suspicion on
//! heartbeat arrivals, RTT as EWMA and variance, and per-scope reachable
//! weight and quorum latency.
//!
//! Pure: the shell feeds arrival times and RTT samples and asks questions at
//! a given `now`. Delay only changes waiting and reporting; the certificate
//! threshold never depends on it.

use std::collections::{BTreeMap, VecDeque};

use super::Millis;

/// Inter-arrival samples kept per validator.
pub const ARRIVAL_WINDOW: usize = 100;
/// Floor of the inter-arrival standard deviation, so a perfectly regular
/// sender is not suspected after one late beat.
pub const MIN_STD_DEV_MS: f64 = 100.0;
/// Weight of a new RTT sample in the EWMA.
pub const RTT_ALPHA: f64 = 0.125;
/// Phi reported for a validator never heard from.
pub const PHI_NEVER_HEARD: f64 = f64::INFINITY;

/// Heartbeat arrival history of one validator.
#[derive(Clone, Debug, Default)]
pub struct ArrivalHistory {
    last: Option<Millis>,
    intervals: VecDeque<f64>,
    /// Running sum and sum of squares of `intervals`: phi is asked for
    /// every validator on every actor pass, far more often than heartbeats
    /// arrive, so it reads these instead of walking the window.
    sum: f64,
    sum_sq: f64,
    /// Heartbeats since the sums were last recomputed exactly.
    since_exact: usize,
}

impl ArrivalHistory {
    /// Records a heartbeat arriving at `now`.
    pub fn heartbeat(&mut self, now: Millis) {
        if let Some(last) = self.last {
            let gap = now.saturating_sub(last) as f64;
            if self.intervals.len() >= ARRIVAL_WINDOW
                && let Some(old) = self.intervals.pop_front()
            {
                self.sum -= old;
                self.sum_sq -= old * old;
            }
            self.intervals.push_back(gap);
            self.sum += gap;
            self.sum_sq += gap * gap;
            self.since_exact = self.since_exact.saturating_add(1);
            // Adding and removing drifts by rounding: start again from the
            // window itself once per window.
            if self.since_exact >= ARRIVAL_WINDOW {
                self.sum = self.intervals.iter().sum();
                self.sum_sq = self.intervals.iter().map(|x| x * x).sum();
                self.since_exact = 0;
            }
        }
        self.last = Some(now.max(self.last.unwrap_or(0)));
    }

    /// Mean and standard deviation of the window (None when empty).
    fn moments(&self) -> Option<(f64, f64)> {
        if self.intervals.is_empty() {
            return None;
        }
        let n = self.intervals.len() as f64;
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        Some((mean, var.sqrt()))
    }

    /// When the last heartbeat arrived.
    pub fn last(&self) -> Option<Millis> {
        self.last
    }

    /// Phi at `now`: -log10 of the probability that a heartbeat is still to
    /// come after this long, under a normal model of past inter-arrival times
    /// (the logistic approximation of its tail). `expected_interval` seeds the
    /// model before there are samples.
    pub fn phi(&self, now: Millis, expected_interval: Millis) -> f64 {
        let Some(last) = self.last else {
            return PHI_NEVER_HEARD;
        };
        let (mean, std) = match self.moments() {
            None => (expected_interval as f64, MIN_STD_DEV_MS),
            Some((mean, std)) => (mean, std.max(MIN_STD_DEV_MS)),
        };
        let elapsed = now.saturating_sub(last) as f64;
        let y = (elapsed - mean) / std;
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        // P(later) = e / (1 + e) for elapsed above the mean, 1/(1+e^-1…) below.
        let p_later = if elapsed > mean {
            e / (1.0 + e)
        } else {
            1.0 - 1.0 / (1.0 + e)
        };
        if p_later <= 0.0 { f64::MAX } else { -p_later.log10() }
    }
}

/// Round-trip time estimate of one peer.
#[derive(Clone, Copy, Debug, Default)]
pub struct RttEstimate {
    pub ewma_ms: f64,
    pub var_ms: f64,
    pub samples: u64,
}

impl RttEstimate {
    /// Folds in one sample (RFC 6298 style).
    pub fn sample(&mut self, rtt_ms: f64) {
        if self.samples == 0 {
            self.ewma_ms = rtt_ms;
            self.var_ms = rtt_ms / 2.0;
        } else {
            self.var_ms = (1.0 - RTT_ALPHA / 2.0) * self.var_ms + (RTT_ALPHA / 2.0) * (self.ewma_ms - rtt_ms).abs();
            self.ewma_ms = (1.0 - RTT_ALPHA) * self.ewma_ms + RTT_ALPHA * rtt_ms;
        }
        self.samples = self.samples.saturating_add(1);
    }
}

/// One validator as a scope sees it.
#[derive(Clone, Debug)]
pub struct Member {
    pub weight: u64,
    /// Unsuspected (or this node itself).
    pub reachable: bool,
    /// RTT estimate; 0 for this node.
    pub rtt_ms: f64,
}

/// Reachable weight and quorum latency of one scope.
#[derive(Clone, Debug, PartialEq)]
pub struct ScopeView {
    pub total_weight: u64,
    pub reachable_weight: u64,
    /// Smallest delay within which unsuspected validators holding more than
    /// the threshold answer; `None` (infinite) when they cannot.
    pub quorum_latency_ms: Option<f64>,
}

/// True when `weight` is more than `num/den` of `total` (exact, no floats).
pub fn above(weight: u64, total: u64, num: u64, den: u64) -> bool {
    // u64 × u64 always fits in u128, so these cannot overflow.
    let lhs = u128::from(weight).saturating_mul(u128::from(den));
    let rhs = u128::from(total).saturating_mul(u128::from(num));
    lhs > rhs
}

/// The scope's view, with threshold `num/den` (2/3 Byzantine, 1/2 crash).
pub fn scope_view(members: &[Member], num: u64, den: u64) -> ScopeView {
    let total_weight = members.iter().map(|m| m.weight).fold(0u64, u64::saturating_add);
    let reachable_weight = members
        .iter()
        .filter(|m| m.reachable)
        .map(|m| m.weight)
        .fold(0u64, u64::saturating_add);
    let mut reachable: Vec<&Member> = members.iter().filter(|m| m.reachable).collect();
    reachable.sort_by(|a, b| a.rtt_ms.total_cmp(&b.rtt_ms));
    let mut weight = 0u64;
    let mut quorum_latency_ms = None;
    for m in reachable {
        weight = weight.saturating_add(m.weight);
        if above(weight, total_weight, num, den) {
            quorum_latency_ms = Some(m.rtt_ms);
            break;
        }
    }
    ScopeView {
        total_weight,
        reachable_weight,
        quorum_latency_ms,
    }
}

/// A node's mode, from its own region's and the other regions' views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every region's quorum is reachable.
    Normal,
    /// This region's quorum is reachable, some other region's is not: keep
    /// certifying, mark cross-region views stale.
    Regional,
    /// This region's quorum is not reachable: provisional only.
    Isolated,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Regional => "regional",
            Mode::Isolated => "isolated",
        }
    }
}

/// The mode from each region's scope view (`own` names this node's region).
pub fn mode(own: &str, regions: &BTreeMap<String, ScopeView>) -> Mode {
    if regions.get(own).is_some_and(|v| v.quorum_latency_ms.is_none()) {
        return Mode::Isolated;
    }
    if regions.iter().any(|(r, v)| r != own && v.quorum_latency_ms.is_none()) {
        Mode::Regional
    } else {
        Mode::Normal
    }
}

/// Lifeguard: an overloaded node suspects others more slowly. `load` in
/// `[0, 1]` (queue fill) raises the threshold up to `max_factor` times.
pub fn scaled_threshold(threshold: f64, load: f64, max_factor: f64) -> f64 {
    threshold * (1.0 + load.clamp(0.0, 1.0) * (max_factor - 1.0).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regular(every: Millis, count: u64) -> ArrivalHistory {
        let mut h = ArrivalHistory::default();
        for i in 0..count {
            h.heartbeat(1_000 + i * every);
        }
        h
    }

    #[test]
    fn running_moments_match_the_window_through_many_windows() {
        // Irregular gaps, long enough to slide the window many times over.
        let mut h = ArrivalHistory::default();
        let mut t = 1_000;
        for i in 0..(ARRIVAL_WINDOW as u64 * 7 + 13) {
            t += 200 + (i * 7919) % 113;
            h.heartbeat(t);
            if i == 0 {
                assert!(h.moments().is_none(), "one beat is no interval yet");
                continue;
            }
            let n = h.intervals.len() as f64;
            let mean = h.intervals.iter().sum::<f64>() / n;
            let var = h.intervals.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
            let (m, sd) = h.moments().expect("samples");
            assert!((m - mean).abs() < 1e-6, "mean {m} vs {mean}");
            assert!((sd - var.sqrt()).abs() < 1e-6, "std {sd} vs {}", var.sqrt());
        }
    }

    #[test]
    fn phi_stays_low_while_beats_arrive_and_climbs_in_silence() {
        let h = regular(250, 50);
        let last = 1_000 + 49 * 250;
        let cases = [
            (last + 100, false),
            (last + 250, false),
            (last + 500, false),
            (last + 2_000, true),
        ];
        for (now, suspected) in cases {
            assert_eq!(
                h.phi(now, 250) > 8.0,
                suspected,
                "at +{} ms phi = {}",
                now - last,
                h.phi(now, 250)
            );
        }
        assert!(h.phi(last + 3_000, 250) > h.phi(last + 2_000, 250));
        assert_eq!(ArrivalHistory::default().phi(0, 250), PHI_NEVER_HEARD);
    }

    #[test]
    fn a_jittery_sender_is_given_more_room() {
        let mut jittery = ArrivalHistory::default();
        let mut t = 0;
        for i in 0..60u64 {
            t += if i % 2 == 0 { 50 } else { 950 };
            jittery.heartbeat(t);
        }
        let steady = regular(500, 60);
        let now_j = t + 1_500;
        let now_s = 1_000 + 59 * 500 + 1_500;
        assert!(jittery.phi(now_j, 500) < steady.phi(now_s, 500));
    }

    fn member(weight: u64, reachable: bool, rtt_ms: f64) -> Member {
        Member {
            weight,
            reachable,
            rtt_ms,
        }
    }

    #[test]
    fn quorum_latency_is_the_delay_of_the_member_completing_the_quorum() {
        let check = |members: &[Member], expected: Option<f64>, reachable: u64| {
            let v = scope_view(members, 2, 3);
            assert_eq!(v.quorum_latency_ms, expected, "{members:?}");
            assert_eq!(v.reachable_weight, reachable);
        };
        let four = [
            member(1, true, 0.0),
            member(1, true, 5.0),
            member(1, true, 80.0),
            member(1, true, 20.0),
        ];
        check(&four, Some(20.0), 4);
        let one_down = [
            member(1, true, 0.0),
            member(1, false, 5.0),
            member(1, true, 80.0),
            member(1, true, 20.0),
        ];
        check(&one_down, Some(80.0), 3);
        let two_down = [
            member(1, true, 0.0),
            member(1, false, 5.0),
            member(1, false, 80.0),
            member(1, true, 20.0),
        ];
        check(&two_down, None, 2);
        // Weight counts, not heads.
        let heavy = [member(5, true, 0.0), member(1, true, 1.0), member(1, false, 2.0)];
        check(&heavy, Some(0.0), 6);
        assert_eq!(scope_view(&two_down, 1, 2).quorum_latency_ms, None);
        assert_eq!(scope_view(&one_down, 1, 2).quorum_latency_ms, Some(80.0));
    }

    #[test]
    fn modes_follow_reachability() {
        let ok = ScopeView {
            total_weight: 4,
            reachable_weight: 4,
            quorum_latency_ms: Some(1.0),
        };
        let cut = ScopeView {
            total_weight: 4,
            reachable_weight: 0,
            quorum_latency_ms: None,
        };
        let map = |a: &ScopeView, b: &ScopeView| -> BTreeMap<String, ScopeView> {
            [("eu".to_string(), a.clone()), ("us".to_string(), b.clone())]
                .into_iter()
                .collect()
        };
        assert_eq!(mode("eu", &map(&ok, &ok)), Mode::Normal);
        assert_eq!(mode("eu", &map(&ok, &cut)), Mode::Regional);
        assert_eq!(mode("eu", &map(&cut, &ok)), Mode::Isolated);
    }

    #[test]
    fn rtt_ewma_converges_and_load_slows_suspicion() {
        let mut r = RttEstimate::default();
        for _ in 0..100 {
            r.sample(40.0);
        }
        assert!((r.ewma_ms - 40.0).abs() < 0.01);
        r.sample(400.0);
        assert!(r.ewma_ms > 40.0 && r.ewma_ms < 100.0);
        assert_eq!(scaled_threshold(8.0, 0.0, 3.0), 8.0);
        assert_eq!(scaled_threshold(8.0, 1.0, 3.0), 24.0);
        assert_eq!(scaled_threshold(8.0, 5.0, 3.0), 24.0);
    }
}
