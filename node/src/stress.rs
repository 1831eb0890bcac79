//! Stress reports: what a stress scenario measured, in one shape for the simulator (`credence
//! sim --scenario`, virtual time) and the testnet (`credence-testnet stress`, real processes),
//! written as `report.md` with a summary table on top and PNG plots beside it.
//!
//! Files: `plot` (line and bar panels drawn with plotters into PNG files; reusable by any
//! command that draws). This module holds the measurements ([`Measured`]), the figures derived
//! from them (outflow, time to depletion, concentration) and the markdown.

pub mod plot;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use self::plot::{Panel, Series};

/// One region's liquidity at one moment (base units of the distribution).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RegionPoint {
    pub available: u64,
    pub pending: u64,
    pub spent: u64,
    pub disputed: u64,
    pub stranded: u64,
}

/// Every region's liquidity at `t_s` seconds into the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub regions: BTreeMap<String, RegionPoint>,
}

/// Nearest-rank percentiles of a set of latencies.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Percentiles {
    pub fn of(values: &[f64]) -> Percentiles {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = (q * sorted.len() as f64).ceil() as usize;
            sorted
                .get(rank.clamp(1, sorted.len().max(1)) - 1)
                .copied()
                .unwrap_or(0.0)
        };
        Percentiles {
            count: sorted.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
        }
    }
}

/// One look at every node's quorum state at `t_s` seconds: how many answered (were up), how
/// many suspected some peer, how many were out of `normal` mode.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModeLook {
    pub t_s: f64,
    pub up: usize,
    pub suspecting: usize,
    pub not_normal: usize,
}

/// Targets the simulator's `check` and the testnet's judge share. The other regions' claim p99
/// during a run, at most this multiple of their base p99.
pub const P99_RATIO_MAX: f64 = 1.5;
/// exit-under-partition: the longest until every node is regional after the cut, and until
/// the network has converged after the heal (each as its samples see it, so rounded up to
/// their period).
pub const DECISION_MAX_MS: f64 = 3_000.0;
pub const CONVERGENCE_MAX_MS: f64 = 5_000.0;

/// The decision-latency steps, as figures and reports name them.
pub const FAULT_TO_SUSPECT: &str = "fault → first node suspects";
pub const FAULT_TO_REGIONAL: &str = "fault → mode regional at every node";
pub const HEAL_TO_NORMAL: &str = "heal → normal at every node";

/// Decision latency from looks at every node's mode (ms): fault → first node suspects, fault →
/// every node that answered out of normal mode, heal → every node normal again. A step never
/// reached is left out; so is the heal when there is none. Rounded to 0.1 ms.
pub fn decision(looks: &[ModeLook], fault_s: f64, heal_s: Option<f64>) -> Vec<(String, f64)> {
    let after = |from: f64, pick: &dyn Fn(&ModeLook) -> bool| {
        looks
            .iter()
            .find(|l| l.t_s >= from && pick(l))
            .map(|l| (((l.t_s - from) * 1e4).round() / 10.0).max(0.0))
    };
    let mut out = Vec::new();
    if let Some(ms) = after(fault_s, &|l| l.suspecting > 0) {
        out.push((FAULT_TO_SUSPECT.to_owned(), ms));
    }
    if let Some(ms) = after(fault_s, &|l| l.up > 0 && l.not_normal == l.up) {
        out.push((FAULT_TO_REGIONAL.to_owned(), ms));
    }
    if let Some(ms) = heal_s.and_then(|h| after(h, &|l| l.not_normal == 0)) {
        out.push((HEAL_TO_NORMAL.to_owned(), ms));
    }
    out
}

/// What one run (the fragmented distribution, or its pooled baseline) measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measured {
    /// What this run is, e.g. "fragmented (per-region escrow)" or "pooled baseline".
    pub label: String,
    /// Amount one claim pays: "depleted" means less than this is available.
    pub amount_per_claim: u64,
    pub samples: Vec<Sample>,
    /// Per second: how many claims reached each final status in that second.
    pub claims_per_s: Vec<(f64, BTreeMap<String, u64>)>,
    /// Latency to `regional`, by group (e.g. "eu base", "eu run").
    pub latency: BTreeMap<String, Percentiles>,
    /// Claims refused, by reason.
    pub refused: BTreeMap<String, u64>,
    /// View age (ms) of an observed region as an observer region sees it, over time: key
    /// "observer → observed".
    pub view_age: BTreeMap<String, Vec<(f64, f64)>>,
    /// Decision latency: each step after the fault was injected (ms), e.g. "first node
    /// suspects".
    pub decision: Vec<(String, f64)>,
}

impl Measured {
    fn regions(&self) -> Vec<String> {
        let mut all: Vec<String> = self.samples.iter().flat_map(|s| s.regions.keys().cloned()).collect();
        all.sort();
        all.dedup();
        all
    }

    fn quantity(&self, region: &str, pick: fn(&RegionPoint) -> u64) -> Vec<(f64, f64)> {
        self.samples
            .iter()
            .filter_map(|s| s.regions.get(region).map(|p| (s.t_s, pick(p) as f64)))
            .collect()
    }

    /// Claim outflow per second (the growth of `spent` between samples), per region.
    pub fn outflow(&self, region: &str) -> Vec<(f64, f64)> {
        let spent = self.quantity(region, |p| p.spent);
        spent
            .windows(2)
            .filter_map(|w| match w {
                [(t0, a), (t1, b)] if t1 > t0 => Some((*t1, (b - a).max(0.0) / (t1 - t0))),
                _ => None,
            })
            .collect()
    }

    /// Seconds into the run at which the region first had less than one claim available,
    /// after having had at least one.
    pub fn depleted_at(&self, region: &str) -> Option<f64> {
        let per = self.amount_per_claim.max(1);
        let series: Vec<(f64, u64)> = self
            .samples
            .iter()
            .filter_map(|s| s.regions.get(region).map(|p| (s.t_s, p.available)))
            .collect();
        let had = series.iter().position(|(_, a)| *a >= per)?;
        series.iter().skip(had).find(|(_, a)| *a < per).map(|(t, _)| *t)
    }

    /// Herfindahl–Hirschman index of available liquidity over regions (1 = all in one region,
    /// 1/n = spread evenly), per sample; 0 when nothing is available.
    pub fn concentration(&self) -> Vec<(f64, f64)> {
        self.samples
            .iter()
            .map(|s| {
                let total: f64 = s.regions.values().map(|p| p.available as f64).sum();
                let hhi = if total > 0.0 {
                    s.regions.values().map(|p| (p.available as f64 / total).powi(2)).sum()
                } else {
                    0.0
                };
                (s.t_s, hhi)
            })
            .collect()
    }

    /// The largest view age any sample showed (ms).
    pub fn max_view_age_ms(&self) -> f64 {
        self.view_age
            .values()
            .flatten()
            .map(|(_, age)| *age)
            .fold(0.0, f64::max)
    }
}

/// A whole stress report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    /// "simulator (virtual time)" or "testnet (real processes)".
    pub source: String,
    pub run_region: String,
    /// The summary table: figure, value, target.
    pub summary: Vec<(String, String, String)>,
    /// One line each on what the run did.
    pub notes: Vec<String>,
    pub main: Measured,
    pub baseline: Option<Measured>,
}

/// Summary rows for a pooled baseline's figures: its `other_regions_*` figures, each named as
/// the baseline's (the refusals it must show: more than none).
pub fn baseline_rows(figures: &serde_json::Value) -> Vec<(String, String, String)> {
    figures
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| key.starts_with("other_regions"))
        .map(|(key, value)| {
            let want = if key == "other_regions_refused_for_escrow" {
                "> 0"
            } else {
                ""
            };
            (
                format!("pooled baseline: {}", key.replace('_', " ")),
                value.to_string(),
                want.to_owned(),
            )
        })
        .collect()
}

/// The PNG files a report draws, in the order report.md lists them.
const LIQUIDITY_PNG: &str = "liquidity.png";
const OUTFLOW_PNG: &str = "outflow.png";
const CONCENTRATION_PNG: &str = "concentration.png";
const CLAIMS_PNG: &str = "claims.png";
const DECISION_PNG: &str = "decision.png";
const VIEW_AGE_PNG: &str = "view-age.png";
const REFUSED_PNG: &str = "refused.png";
const BASELINE_LIQUIDITY_PNG: &str = "baseline-liquidity.png";

/// A named quantity of a region's liquidity.
type Quantity = (&'static str, fn(&RegionPoint) -> u64);

fn liquidity_panels(m: &Measured) -> Vec<Panel> {
    let quantities: [Quantity; 5] = [
        ("available", |p| p.available),
        ("pending", |p| p.pending),
        ("spent", |p| p.spent),
        ("disputed", |p| p.disputed),
        ("stranded", |p| p.stranded),
    ];
    quantities
        .iter()
        .map(|(name, pick)| {
            Panel::lines(
                name,
                "units",
                m.regions()
                    .iter()
                    .map(|r| Series::new(r, m.quantity(r, *pick)))
                    .collect(),
            )
        })
        .collect()
}

fn claims_panels(m: &Measured) -> Vec<Panel> {
    let mut statuses: Vec<String> = m.claims_per_s.iter().flat_map(|(_, c)| c.keys().cloned()).collect();
    statuses.sort();
    statuses.dedup();
    let per_s = statuses
        .iter()
        .map(|status| {
            Series::new(
                status,
                m.claims_per_s
                    .iter()
                    .map(|(t, counts)| (*t, counts.get(status).copied().unwrap_or(0) as f64))
                    .collect(),
            )
        })
        .collect();
    let mut bars = Vec::new();
    for (group, p) in &m.latency {
        bars.push((format!("{group} p50"), p.p50_ms));
        bars.push((format!("{group} p99"), p.p99_ms));
    }
    vec![
        Panel::lines("claims by status per second", "claims/s", per_s),
        Panel::bars("latency to regional (ms)", "ms", bars),
    ]
}

impl Report {
    /// Writes `dir/report.md` and its plots; returns the PNG files written.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<String>> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the report directory {}", dir.display()))?;
        let m = &self.main;
        let mut drawn: Vec<(String, String)> = Vec::new();
        let mut draw = |file: &str, what: &str, panels: Vec<Panel>| -> anyhow::Result<()> {
            plot::draw(&dir.join(file), &format!("{} — {what}", self.scenario), &panels)?;
            drawn.push((file.to_owned(), what.to_owned()));
            Ok(())
        };
        draw(
            LIQUIDITY_PNG,
            "liquidity per region: available, pending, spent, disputed, stranded",
            liquidity_panels(m),
        )?;
        let outflow: Vec<Series> = m.regions().iter().map(|r| Series::new(r, m.outflow(r))).collect();
        let depletion: Vec<(String, f64)> = m
            .regions()
            .iter()
            .map(|r| (r.clone(), m.depleted_at(r).unwrap_or(0.0)))
            .collect();
        draw(
            OUTFLOW_PNG,
            "outflow per second and time to depletion",
            vec![
                Panel::lines("outflow", "units/s", outflow),
                Panel::bars("depleted at (s; 0 = never)", "s", depletion),
            ],
        )?;
        let mut hhi = vec![Series::new(&m.label, m.concentration())];
        if let Some(b) = &self.baseline {
            hhi.push(Series::new(&b.label, b.concentration()));
        }
        draw(
            CONCENTRATION_PNG,
            "concentration of available liquidity (HHI)",
            vec![Panel::lines("HHI over regions", "HHI", hhi)],
        )?;
        draw(
            CLAIMS_PNG,
            "claims by status per second, latency percentiles",
            claims_panels(m),
        )?;
        if !m.decision.is_empty() {
            draw(
                DECISION_PNG,
                "decision latency after the fault (ms)",
                vec![Panel::bars("decision latency", "ms", m.decision.clone())],
            )?;
        }
        if !m.view_age.is_empty() {
            let series = m.view_age.iter().map(|(k, v)| Series::new(k, v.clone())).collect();
            draw(
                VIEW_AGE_PNG,
                "view age of each region as the others see it",
                vec![Panel::lines("view age", "ms", series)],
            )?;
        }
        let mut refused = vec![Panel::bars(
            &format!("refused claims by reason: {}", m.label),
            "claims",
            m.refused.iter().map(|(k, v)| (k.clone(), *v as f64)).collect(),
        )];
        if let Some(b) = &self.baseline {
            refused.push(Panel::bars(
                &format!("refused claims by reason: {}", b.label),
                "claims",
                b.refused.iter().map(|(k, v)| (k.clone(), *v as f64)).collect(),
            ));
        }
        draw(REFUSED_PNG, "refused claims by reason", refused)?;
        if let Some(b) = &self.baseline {
            draw(
                BASELINE_LIQUIDITY_PNG,
                "pooled baseline: liquidity per region",
                liquidity_panels(b),
            )?;
        }
        let markdown = self.markdown(&drawn);
        std::fs::write(dir.join("report.md"), markdown)
            .with_context(|| format!("cannot write {}", dir.join("report.md").display()))?;
        Ok(drawn.into_iter().map(|(file, _)| file).collect())
    }

    fn markdown(&self, drawn: &[(String, String)]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Stress report: {}\n", self.scenario);
        let _ = writeln!(
            out,
            "{}; run region: {}.\n",
            self.source,
            if self.run_region.is_empty() {
                "none"
            } else {
                &self.run_region
            }
        );
        let _ = writeln!(out, "| figure | value | target |\n|---|---|---|");
        for (figure, value, target) in &self.summary {
            let _ = writeln!(out, "| {figure} | {value} | {target} |");
        }
        let _ = writeln!(out);
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        let _ = writeln!(out, "\n## Per region\n");
        for m in std::iter::once(&self.main).chain(self.baseline.as_ref()) {
            let _ = writeln!(out, "### {}\n", m.label);
            let _ = writeln!(
                out,
                "| region | available (end) | pending | spent | disputed | stranded | depleted at |\n|---|---|---|---|---|---|---|"
            );
            let last = m.samples.last();
            for r in m.regions() {
                let p = last.and_then(|s| s.regions.get(&r)).copied().unwrap_or_default();
                let depleted = m
                    .depleted_at(&r)
                    .map_or_else(|| "never".to_owned(), |t| format!("{t:.1} s"));
                let _ = writeln!(
                    out,
                    "| {r} | {} | {} | {} | {} | {} | {depleted} |",
                    p.available, p.pending, p.spent, p.disputed, p.stranded
                );
            }
            let _ = writeln!(out, "\nLatency to regional (p50 / p99, ms):\n");
            for (group, p) in &m.latency {
                let _ = writeln!(
                    out,
                    "- {group}: {:.0} / {:.0} over {} claims",
                    p.p50_ms, p.p99_ms, p.count
                );
            }
            let _ = writeln!(out, "\nRefused claims by reason:\n");
            if m.refused.is_empty() {
                let _ = writeln!(out, "- none refused");
            }
            for (reason, n) in &m.refused {
                let _ = writeln!(out, "- {reason}: {n}");
            }
            if !m.decision.is_empty() {
                let _ = writeln!(out, "\nDecision latency after the fault:\n");
                for (step, ms) in &m.decision {
                    let _ = writeln!(out, "- {step}: {ms:.0} ms");
                }
            }
            let _ = writeln!(out, "\nLargest view age seen: {:.0} ms\n", m.max_view_age_ms());
        }
        let _ = writeln!(out, "## Plots\n");
        for (file, what) in drawn {
            let _ = writeln!(out, "- {what}: ![{what}]({file})");
        }
        let _ = writeln!(
            out,
            "\nConcentration is the Herfindahl–Hirschman index (HHI) of available liquidity over regions. \
             Stranded liquidity is the remainder of ended buckets with no live successor; in the \
             fragmented run, liquidity left in regions nobody rushes is what fragmentation strands, \
             and the pooled baseline shows what it protects."
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, eu: u64, us: u64) -> Sample {
        let point = |available| RegionPoint {
            available,
            spent: 100 - available,
            ..RegionPoint::default()
        };
        Sample {
            t_s: t,
            regions: [("eu".to_owned(), point(eu)), ("us".to_owned(), point(us))].into(),
        }
    }

    #[test]
    fn depletion_outflow_and_concentration_follow_the_samples() {
        let m = Measured {
            amount_per_claim: 10,
            samples: vec![sample(0.0, 100, 100), sample(1.0, 50, 100), sample(2.0, 5, 100)],
            ..Measured::default()
        };
        assert_eq!(m.depleted_at("eu"), Some(2.0));
        assert_eq!(m.depleted_at("us"), None);
        assert_eq!(m.outflow("eu"), vec![(1.0, 50.0), (2.0, 45.0)]);
        let hhi = m.concentration();
        assert!((hhi.first().map_or(0.0, |p| p.1) - 0.5).abs() < 1e-9);
        assert!(hhi.last().map_or(0.0, |p| p.1) > 0.9);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&values);
        assert_eq!((p.count, p.p50_ms, p.p99_ms), (100, 50.0, 99.0));
        assert_eq!(Percentiles::of(&[]).count, 0);
    }
}
