//! PNG plots: a figure is a grid of panels, each either lines over time or labelled bars,
//! drawn with plotters' bitmap backend. Text is set in a TrueType font read from disk at run
//! time (nothing is embedded): the first of [`FONT_PATHS`] that exists, or the file named by
//! `CREDENCE_PLOT_FONT`; with none, drawing fails with a message saying what to install.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail};
use plotters::prelude::*;

/// Where the plot font is looked for, in order (Debian's and Arch's DejaVu Sans).
pub const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];
/// Environment variable naming another .ttf file for plot text.
pub const FONT_ENV: &str = "CREDENCE_PLOT_FONT";
/// Size of one panel in pixels; a figure is a grid of them.
pub const PANEL_WIDTH: u32 = 640;
pub const PANEL_HEIGHT: u32 = 360;
/// Panels per row of a figure.
pub const COLUMNS_MAX: usize = 2;
/// The name plot text asks plotters for.
const FAMILY: &str = "sans-serif";

/// One named line: (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.to_owned(),
            points,
        }
    }
}

/// What a panel shows.
#[derive(Debug, Clone)]
pub enum Content {
    /// Lines over time (x in seconds).
    Lines(Vec<Series>),
    /// One labelled bar each.
    Bars(Vec<(String, f64)>),
}

/// One chart of a figure.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub content: Content,
}

impl Panel {
    pub fn lines(title: &str, y_label: &str, series: Vec<Series>) -> Panel {
        Panel {
            title: title.to_owned(),
            y_label: y_label.to_owned(),
            content: Content::Lines(series),
        }
    }

    pub fn bars(title: &str, y_label: &str, bars: Vec<(String, f64)>) -> Panel {
        Panel {
            title: title.to_owned(),
            y_label: y_label.to_owned(),
            content: Content::Bars(bars),
        }
    }
}

/// Registers the plot font once under the family "sans-serif"; the error says where it was
/// looked for. Every plot of this workspace calls it first: plotters lays text out with it,
/// even for SVG.
pub fn font() -> anyhow::Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let mut candidates: Vec<String> = std::env::var(FONT_ENV).ok().into_iter().collect();
            candidates.extend(FONT_PATHS.iter().map(|p| (*p).to_owned()));
            let Some((path, bytes)) = candidates
                .iter()
                .find_map(|p| std::fs::read(p).ok().map(|bytes| (p.clone(), bytes)))
            else {
                return Err(format!(
                    "drawing plots needs a TrueType font and none was found at {} (install the package \
                     fonts-dejavu-core, or set {FONT_ENV} to a .ttf file)",
                    candidates.join(", ")
                ));
            };
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
                .map_err(|_| format!("{path} is not a TrueType font plotters can read"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let lo = lo.min(0.0);
    let hi = if hi > lo { hi * 1.08 } else { lo + 1.0 };
    (lo, hi)
}

fn failed<E: std::fmt::Display>(what: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("drawing {}: {e}", what.display())
}

/// Draws `panels` into the PNG file `path` under `title`.
pub fn draw(path: &Path, title: &str, panels: &[Panel]) -> anyhow::Result<()> {
    if panels.is_empty() {
        bail!("a figure needs at least one panel: {}", path.display());
    }
    font()?;
    let columns = panels.len().min(COLUMNS_MAX);
    let rows = panels.len().div_ceil(columns);
    let size = (PANEL_WIDTH * columns as u32, PANEL_HEIGHT * rows as u32 + 40);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(failed(path))?;
    let root = root.titled(title, (FAMILY, 22)).map_err(failed(path))?;
    let areas = root.split_evenly((rows, columns));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel).map_err(failed(path))?;
    }
    root.present().map_err(failed(path))?;
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

fn draw_panel(area: &Area<'_>, panel: &Panel) -> DrawResult {
    match &panel.content {
        Content::Lines(series) => {
            let (x0, x1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
            let (y0, y1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, (FAMILY, 16))
                .margin(10)
                .x_label_area_size(32)
                .y_label_area_size(60)
                .build_cartesian_2d(x0..x1, y0..y1)?;
            chart
                .configure_mesh()
                .x_desc("time (s)")
                .y_desc(panel.y_label.as_str())
                .label_style((FAMILY, 12))
                .draw()?;
            for (i, s) in series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            }
            if !series.is_empty() {
                chart
                    .configure_series_labels()
                    .label_font((FAMILY, 12))
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()?;
            }
        }
        Content::Bars(bars) => {
            let n = bars.len().max(1) as f64;
            let (y0, y1) = range(bars.iter().map(|b| b.1));
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, (FAMILY, 16))
                .margin(10)
                .x_label_area_size(10)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..n, y0..y1)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .disable_x_axis()
                .y_desc(panel.y_label.as_str())
                .label_style((FAMILY, 12))
                .draw()?;
            for (i, (name, value)) in bars.iter().enumerate() {
                let x = i as f64;
                let color = Palette99::pick(i).to_rgba();
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x + 0.15, 0.0), (x + 0.85, *value)],
                    color.filled(),
                )))?;
                chart.draw_series(std::iter::once(Text::new(
                    format!("{name}: {value:.0}"),
                    (x + 0.15, y1 * 0.97 - (i % 2) as f64 * y1 * 0.06),
                    (FAMILY, 11).into_font().color(&BLACK),
                )))?;
            }
            if bars.is_empty() {
                chart.draw_series(std::iter::once(Text::new(
                    "none".to_owned(),
                    (0.45, y1 * 0.5),
                    (FAMILY, 14).into_font().color(&BLACK),
                )))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_include_zero_and_leave_headroom() {
        assert_eq!(range([2.0, 4.0].into_iter()), (0.0, 4.0 * 1.08));
        assert_eq!(range(std::iter::empty()), (0.0, 1.0));
        assert_eq!(range([0.0].into_iter()), (0.0, 1.0));
    }
}
