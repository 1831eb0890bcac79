//! The bench's plots: latency (p50 and p99) against offered load, and CPU
//! per committed claim against offered load, one line per system, as SVG.
//! plotters measures text while laying a plot out, so the stress reports'
//! font is registered first (`credence::stress::plot::font`).

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use plotters::prelude::*;

use crate::bench::Row;

/// Size of each plot in pixels.
const SIZE: (u32, u32) = (960, 600);
/// Smallest value drawn on a logarithmic axis (a 0 ms figure sits there).
const LOG_FLOOR: f64 = 0.01;
/// One colour per system, in the order systems first appear.
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Systems in the order their rows come.
fn systems(rows: &[Row]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in rows {
        if !out.contains(&r.system) {
            out.push(r.system);
        }
    }
    out
}

/// A logarithmic range covering `values`, with a little room either side.
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
        let v = v.max(LOG_FLOOR);
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return LOG_FLOOR..1.0;
    }
    (lo / 1.5)..(hi * 1.5).max(lo * 2.0)
}

type Plotted = Result<(), Box<dyn std::error::Error>>;

/// One line of a plot: its label after the system's name, the figure drawn,
/// and whether it is drawn faint.
type Figure<'a> = (&'a str, fn(&Row) -> f64, bool);

/// One line per system (and per figure in `figures`) of `y(row)` against
/// offered load, on log–log axes.
fn plot(path: &Path, caption: &str, y_desc: &str, rows: &[Row], figures: &[Figure<'_>]) -> Plotted {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let x = log_range(rows.iter().map(|r| r.offered));
    let y = log_range(rows.iter().flat_map(|r| figures.iter().map(move |(_, f, _)| f(r))));
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x.log_scale(), y.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered claims/s")
        .y_desc(y_desc)
        .draw()?;
    for (i, system) in systems(rows).into_iter().enumerate() {
        let colour = COLOURS.get(i % COLOURS.len()).copied().unwrap_or(BLACK);
        for (label, f, dashed) in figures {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.system == system)
                .map(|r| (r.offered, f(r).max(LOG_FLOOR)))
                .collect();
            let style = if *dashed {
                colour.mix(0.55).stroke_width(2)
            } else {
                colour.stroke_width(3)
            };
            let name = if label.is_empty() {
                system.to_string()
            } else {
                format!("{system} {label}")
            };
            chart
                .draw_series(LineSeries::new(points.clone(), style))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, style.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes `latency.svg` and `cpu-per-claim.svg` into `dir`; returns their paths.
pub fn write(rows: &[Row], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    credence::stress::plot::font()?;
    let latency = dir.join("latency.svg");
    plot(
        &latency,
        "Latency to commit (etcd) or regional (Credence)",
        "ms (p99 solid, p50 faint)",
        rows,
        &[("p99", |r| r.p99_ms, false), ("p50", |r| r.p50_ms, true)],
    )
    .map_err(|e| anyhow!("cannot draw {}: {e}", latency.display()))?;
    let cpu = dir.join("cpu-per-claim.svg");
    plot(
        &cpu,
        "Server CPU per committed claim, summed over all processes",
        "CPU ms per claim",
        rows,
        &[("", |r| r.cpu_ms_per_claim, false)],
    )
    .map_err(|e| anyhow!("cannot draw {}: {e}", cpu.display()))?;
    Ok(vec![latency, cpu])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(system: &'static str, offered: f64, p99_ms: f64) -> Row {
        Row {
            system,
            offered,
            achieved: offered,
            p50_ms: p99_ms / 3.0,
            p99_ms,
            cores: 0.5,
            cpu_ms_per_claim: 500.0 / offered,
            committed: 8 * offered as u64,
            submitted: 8 * offered as u64,
            window_s: 8.0,
        }
    }

    #[test]
    fn both_plots_are_written_as_svg_with_every_system() {
        let dir = std::env::temp_dir().join(format!("credence-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let rows = vec![
            r("etcd", 100.0, 20.0),
            r("etcd", 1000.0, 80.0),
            r("credence-3x4", 100.0, 0.0),
            r("credence-3x4", 1000.0, 400.0),
        ];
        let paths = write(&rows, &dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(paths.len(), 2);
        for p in &paths {
            let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{e}"));
            assert!(text.contains("<svg"), "{} is not SVG", p.display());
            assert!(text.contains("credence-3x4") && text.contains("etcd"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_log_range_covers_its_values_and_floors_zero() {
        let r = log_range([0.0, 5.0, 200.0].into_iter());
        assert!(r.start <= LOG_FLOOR && r.end >= 200.0);
        assert_eq!(log_range(std::iter::empty()), LOG_FLOOR..1.0);
    }
}
