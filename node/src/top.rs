//! `credence top`: a live terminal view of one node or of a whole testnet.
//!
//! Three layers: [`sample`] asks nodes over gRPC what they see; a
//! [`Tracker`] folds each round of samples into a [`View`] (rates come from
//! the difference to the round before); [`render`] draws a view. Rendering
//! is a pure function of the view, so a test draws a frame on ratatui's
//! `TestBackend` and reads it back. [`run`] owns the terminal: raw mode and
//! the alternate screen while it runs, restored on every way out.
//!
//! Only the 16 basic colours and box-drawing characters are used, and no
//! mouse, so it works over a plain SSH terminal.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use credence_proto::v1 as pb;
use credence_proto::v1::escrow_client::EscrowClient;
use credence_proto::v1::node_client::NodeClient;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use tonic::transport::{Channel, Endpoint};

/// How often the view is refreshed.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long one node may take to answer one call before the round goes on
/// without it (shorter than [`REFRESH`], so a paused node never stalls the view).
pub const CALL_TIMEOUT: Duration = Duration::from_millis(800);
/// Most distributions whose liquidity is fetched from each node per round.
pub const DISTRIBUTIONS_MAX: usize = 8;
/// Width, in cells, of a liquidity bar.
pub const BAR_WIDTH: usize = 20;

/// One region as the view shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RegionRow {
    pub region: String,
    /// The quorum mode its nodes report (`normal`, `regional`, `isolated`),
    /// or whether its quorum is reachable when no node of it answered.
    pub mode: String,
    pub reachable_weight: u64,
    pub total_weight: u64,
    /// `None`: its quorum is unreachable.
    pub quorum_latency_ms: Option<f64>,
    /// Age of the oldest view of this region among the nodes asked.
    pub view_age_ms: u64,
}

/// A validator some node suspects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SuspectRow {
    pub name: String,
    pub key: String,
    /// The highest phi any node reports for it.
    pub phi: f64,
    /// How many of the nodes asked suspect it.
    pub suspected_by: usize,
}

/// One region's liquidity in one distribution.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiquidityRow {
    pub distribution: String,
    pub region: String,
    pub escrow: u64,
    pub available: u64,
    pub pending: u64,
    pub spent: u64,
    pub disputed: u64,
    pub outflow_per_s: f64,
    /// Seconds until available reaches 0; `None` when not depleting.
    pub depletes_in_s: Option<f64>,
}

/// Claims per second by status, from the change in liquidity since the
/// last round (a claim spends `amount_per_claim`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClaimRates {
    /// Claims certified (spent) per second.
    pub certified_per_s: f64,
    /// Claims disputed per second.
    pub disputed_per_s: f64,
    /// Claims in batches awaiting certificates now (provisional).
    pub provisional: u64,
    /// Claims held as disputed now.
    pub disputed: u64,
}

/// Everything one frame shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    pub title: String,
    /// The quorum mode: one node's, or each mode with how many nodes report it.
    pub mode: String,
    pub nodes_answering: usize,
    pub nodes_total: usize,
    pub regions: Vec<RegionRow>,
    pub suspected: Vec<SuspectRow>,
    pub liquidity: Vec<LiquidityRow>,
    pub claims: ClaimRates,
    /// Nodes that did not answer, and why.
    pub problems: Vec<String>,
}

/// What one node answered in one round.
#[derive(Clone, Debug)]
pub struct NodeSample {
    /// The node's name in the view (its RPC address if it gave none).
    pub label: String,
    pub status: Result<pb::StatusResponse, String>,
    /// Each distribution it knows, with its liquidity.
    pub liquidity: Vec<(pb::DistributionInfo, pb::Liquidity)>,
}

/// A node to sample: its label and a lazily connected channel.
#[derive(Clone, Debug)]
pub struct Target {
    pub label: String,
    channel: Channel,
}

impl Target {
    /// A target at a gRPC URL such as `http://127.0.0.1:7100`; connects on first use.
    pub fn new(label: &str, url: &str) -> anyhow::Result<Target> {
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|_| anyhow::anyhow!("{url:?} is not a URL like http://127.0.0.1:7100"))?
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        Ok(Target {
            label: label.to_string(),
            channel,
        })
    }
}

/// Asks one node for its status, its distributions and their liquidity.
pub async fn sample(target: &Target) -> NodeSample {
    let mut node = NodeClient::new(target.channel.clone());
    let mut escrow = EscrowClient::new(target.channel.clone());
    let status = match node.status(pb::StatusRequest {}).await {
        Ok(s) => s.into_inner(),
        Err(e) => {
            return NodeSample {
                label: target.label.clone(),
                status: Err(e.message().to_string()),
                liquidity: Vec::new(),
            };
        }
    };
    let mut liquidity = Vec::new();
    if let Ok(list) = escrow.list_distributions(pb::ListDistributionsRequest {}).await {
        for d in list.into_inner().distributions.into_iter().take(DISTRIBUTIONS_MAX) {
            let request = pb::GetLiquidityRequest {
                distribution_id: d.id.clone(),
            };
            if let Ok(l) = escrow.get_liquidity(request).await {
                liquidity.push((d, l.into_inner()));
            }
        }
    }
    NodeSample {
        label: if status.name.is_empty() {
            target.label.clone()
        } else {
            status.name.clone()
        },
        status: Ok(status),
        liquidity,
    }
}

/// Asks every target at once.
pub async fn sample_all(targets: &[Target]) -> Vec<NodeSample> {
    futures::future::join_all(targets.iter().map(sample)).await
}

/// Folds rounds of samples into views; remembers the last round's totals
/// for the rates.
#[derive(Debug, Default)]
pub struct Tracker {
    title: String,
    last: Option<(Instant, f64, f64)>,
}

impl Tracker {
    pub fn new(title: &str) -> Tracker {
        Tracker {
            title: title.to_string(),
            last: None,
        }
    }

    /// The view of one round, taken at `now`.
    pub fn update(&mut self, samples: &[NodeSample], now: Instant) -> View {
        let mut view = build(&self.title, samples);
        let (certified, disputed) = claim_totals(samples);
        if let Some((then, c0, d0)) = self.last {
            let secs = now.saturating_duration_since(then).as_secs_f64();
            if secs > 0.0 {
                view.claims.certified_per_s = (certified - c0).max(0.0) / secs;
                view.claims.disputed_per_s = (disputed - d0).max(0.0) / secs;
            }
        }
        self.last = Some((now, certified, disputed));
        view
    }
}

/// The node whose view of `region` to trust most: the first that answered
/// from inside it, else the first that answered at all.
fn vantage<'a>(samples: &'a [NodeSample], region: &str) -> Option<&'a NodeSample> {
    let answered = || samples.iter().filter(|s| s.status.is_ok());
    answered()
        .find(|s| s.status.as_ref().is_ok_and(|st| st.region == region))
        .or_else(|| answered().next())
}

/// Certified and disputed claims in the whole network, each region read
/// at its vantage node.
fn claim_totals(samples: &[NodeSample]) -> (f64, f64) {
    let mut certified = 0.0;
    let mut disputed = 0.0;
    for row in liquidity_rows(samples) {
        if let Some(per) = per_claim(samples, &row.distribution) {
            certified += row.spent as f64 / per;
            disputed += row.disputed as f64 / per;
        }
    }
    (certified, disputed)
}

fn per_claim(samples: &[NodeSample], distribution: &str) -> Option<f64> {
    samples
        .iter()
        .flat_map(|s| &s.liquidity)
        .find(|(d, _)| distribution_label(d) == distribution)
        .map(|(d, _)| d.amount_per_claim as f64)
        .filter(|p| *p > 0.0)
}

fn distribution_label(d: &pb::DistributionInfo) -> String {
    if d.name.is_empty() {
        d.id.chars().take(8).collect()
    } else {
        d.name.clone()
    }
}

fn liquidity_rows(samples: &[NodeSample]) -> Vec<LiquidityRow> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for s in samples {
        for (d, l) in &s.liquidity {
            for r in &l.regions {
                let key = (distribution_label(d), r.region.clone());
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
    }
    keys.sort();
    let mut rows = Vec::new();
    for (distribution, region) in keys {
        let found = vantage_with(samples, &region, &distribution).and_then(|s| {
            s.liquidity
                .iter()
                .filter(|(d, _)| distribution_label(d) == distribution)
                .flat_map(|(_, l)| &l.regions)
                .find(|r| r.region == region)
        });
        if let Some(r) = found {
            rows.push(LiquidityRow {
                distribution: distribution.clone(),
                region: region.clone(),
                escrow: r.escrow,
                available: r.available,
                pending: r.pending,
                spent: r.spent,
                disputed: r.disputed,
                outflow_per_s: r.outflow_per_s,
                depletes_in_s: (r.depletes_in_s >= 0.0).then_some(r.depletes_in_s),
            });
        }
    }
    rows
}

/// The vantage node for a region that reported the distribution.
fn vantage_with<'a>(samples: &'a [NodeSample], region: &str, distribution: &str) -> Option<&'a NodeSample> {
    let has = |s: &&NodeSample| s.liquidity.iter().any(|(d, _)| distribution_label(d) == distribution);
    samples
        .iter()
        .filter(has)
        .find(|s| s.status.as_ref().is_ok_and(|st| st.region == region))
        .or_else(|| samples.iter().find(has))
}

/// The view of one round of samples (rates left at 0).
pub fn build(title: &str, samples: &[NodeSample]) -> View {
    let mut view = View {
        title: title.to_string(),
        nodes_total: samples.len(),
        ..View::default()
    };
    let mut modes: BTreeMap<String, usize> = BTreeMap::new();
    let mut region_modes: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut ages: BTreeMap<String, u64> = BTreeMap::new();
    let mut suspects: BTreeMap<String, SuspectRow> = BTreeMap::new();
    for s in samples {
        let st = match &s.status {
            Ok(st) => st,
            Err(e) => {
                view.problems.push(format!("{}: {e}", s.label));
                continue;
            }
        };
        view.nodes_answering += 1;
        *modes.entry(st.mode.clone()).or_default() += 1;
        if !st.region.is_empty() {
            *region_modes
                .entry(st.region.clone())
                .or_default()
                .entry(st.mode.clone())
                .or_default() += 1;
        }
        for scope in st.scopes.iter().filter(|c| c.scope != "network") {
            let age = ages.entry(scope.scope.clone()).or_default();
            *age = (*age).max(scope.view_age_ms);
        }
        for x in &st.suspected {
            let row = suspects.entry(x.key.clone()).or_insert_with(|| SuspectRow {
                name: x.name.clone(),
                key: x.key.clone(),
                ..SuspectRow::default()
            });
            row.phi = row.phi.max(x.phi);
            row.suspected_by += 1;
        }
    }
    view.mode = match modes.len() {
        0 => "unknown".to_string(),
        1 if view.nodes_answering == 1 => modes.keys().next().cloned().unwrap_or_default(),
        _ => modes
            .iter()
            .map(|(m, n)| format!("{m} ×{n}"))
            .collect::<Vec<_>>()
            .join("  "),
    };
    for (region, age) in ages {
        let Some(st) = vantage(samples, &region).and_then(|s| s.status.as_ref().ok()) else {
            continue;
        };
        let Some(scope) = st.scopes.iter().find(|c| c.scope == region) else {
            continue;
        };
        let mode = match region_modes.get(&region) {
            Some(m) => m
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(m, _)| m.clone())
                .unwrap_or_default(),
            None if scope.quorum_latency_ms.is_some() => "reachable".to_string(),
            None => "unreachable".to_string(),
        };
        view.regions.push(RegionRow {
            region,
            mode,
            reachable_weight: scope.reachable_weight,
            total_weight: scope.total_weight,
            quorum_latency_ms: scope.quorum_latency_ms,
            view_age_ms: age,
        });
    }
    view.suspected = suspects.into_values().collect();
    view.suspected.sort_by(|a, b| b.phi.total_cmp(&a.phi));
    view.liquidity = liquidity_rows(samples);
    for row in &view.liquidity {
        if let Some(per) = per_claim(samples, &row.distribution) {
            view.claims.provisional += (row.pending as f64 / per) as u64;
            view.claims.disputed += (row.disputed as f64 / per) as u64;
        }
    }
    view
}

/// `1.5 s`, `3 m 20 s`, `2 h 5 m`.
pub fn duration_text(secs: f64) -> String {
    if !secs.is_finite() {
        return "never".to_string();
    }
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 if secs < 10.0 => format!("{secs:.1} s"),
        0..60 => format!("{s} s"),
        60..3600 => format!("{} m {} s", s / 60, s % 60),
        3600..86400 => format!("{} h {} m", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

/// The cells of a liquidity bar: available, pending, spent and disputed,
/// each in proportion to the escrow, in that order.
pub fn bar(row: &LiquidityRow, width: usize) -> Vec<(usize, char, Color)> {
    let parts = [
        (row.available, '█', Color::Green),
        (row.pending, '▓', Color::Yellow),
        (row.spent, '░', Color::Blue),
        (row.disputed, '!', Color::Red),
    ];
    let total: u64 = parts.iter().map(|p| p.0).sum();
    if total == 0 {
        return vec![(width, '·', Color::DarkGray)];
    }
    let mut out = Vec::new();
    let mut used = 0;
    for (i, (amount, c, color)) in parts.iter().enumerate() {
        let n = if i + 1 == parts.len() {
            width.saturating_sub(used)
        } else {
            ((*amount as f64 / total as f64) * width as f64).round() as usize
        };
        let n = n.min(width.saturating_sub(used));
        if n > 0 {
            out.push((n, *c, *color));
            used += n;
        }
    }
    out
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

fn mode_style(mode: &str) -> Style {
    match mode {
        "normal" | "reachable" => Style::default().fg(Color::Green),
        "regional" => Style::default().fg(Color::Yellow),
        _ => Style::default().fg(Color::Red),
    }
}

/// Draws one frame of `view` over the whole area.
pub fn render(frame: &mut Frame, view: &View) {
    let suspects_h = if view.suspected.is_empty() {
        3
    } else {
        view.suspected.len().min(6) as u16 + 2
    };
    let [header, regions, suspects, liquidity, claims] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(view.regions.len() as u16 + 3),
        Constraint::Length(suspects_h),
        Constraint::Min(4),
        Constraint::Length(3),
    ])
    .areas(frame.area());
    render_header(frame, header, view);
    render_regions(frame, regions, view);
    render_suspects(frame, suspects, view);
    render_liquidity(frame, liquidity, view);
    render_claims(frame, claims, view);
}

fn render_header(frame: &mut Frame, area: Rect, view: &View) {
    let mut spans = vec![
        Span::styled(view.title.clone(), bold()),
        Span::raw("   mode "),
        Span::styled(view.mode.clone(), mode_style(&view.mode).add_modifier(Modifier::BOLD)),
        Span::raw(format!("   nodes {}/{}", view.nodes_answering, view.nodes_total)),
    ];
    if let Some(p) = view.problems.first() {
        spans.push(Span::styled(format!("   {p}"), Style::default().fg(Color::Red)));
    }
    let block = Block::default().borders(Borders::ALL).title(" credence top · q quits ");
    frame.render_widget(Paragraph::new(Line::from(spans)).block(block), area);
}

fn render_regions(frame: &mut Frame, area: Rect, view: &View) {
    let rows = view.regions.iter().map(|r| {
        Row::new(vec![
            Span::raw(r.region.clone()),
            Span::styled(r.mode.clone(), mode_style(&r.mode)),
            Span::raw(format!("{}/{}", r.reachable_weight, r.total_weight)),
            Span::raw(match r.quorum_latency_ms {
                Some(ms) => format!("{ms:.0} ms"),
                None => "unreachable".to_string(),
            }),
            Span::raw(duration_text(r.view_age_ms as f64 / 1000.0)),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(14),
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Length(14),
            Constraint::Length(12),
        ],
    )
    .header(Row::new(["region", "mode", "reachable", "quorum latency", "view age"]).style(bold()))
    .block(Block::default().borders(Borders::ALL).title(" regions "));
    frame.render_widget(table, area);
}

fn render_suspects(frame: &mut Frame, area: Rect, view: &View) {
    let block = Block::default().borders(Borders::ALL).title(" suspected validators ");
    if view.suspected.is_empty() {
        frame.render_widget(Paragraph::new("none").block(block), area);
        return;
    }
    let rows = view.suspected.iter().map(|x| {
        Row::new(vec![
            Span::styled(x.name.clone(), Style::default().fg(Color::Red)),
            Span::raw(x.key.chars().take(16).collect::<String>()),
            Span::raw(if x.phi >= 1e6 {
                "phi ∞".to_string()
            } else {
                format!("phi {:.1}", x.phi)
            }),
            Span::raw(format!("by {}", x.suspected_by)),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(14),
            Constraint::Length(18),
            Constraint::Length(12),
            Constraint::Length(8),
        ],
    )
    .block(block);
    frame.render_widget(table, area);
}

fn render_liquidity(frame: &mut Frame, area: Rect, view: &View) {
    let mut lines = Vec::new();
    for row in &view.liquidity {
        let mut spans = vec![Span::styled(
            format!("{:<10} {:<8} ", row.distribution, row.region),
            bold(),
        )];
        for (n, c, color) in bar(row, BAR_WIDTH) {
            spans.push(Span::styled(c.to_string().repeat(n), Style::default().fg(color)));
        }
        spans.push(Span::raw(format!(
            " avail {} pend {} spent {} disp {}  out {:.1}/s  empty in {}",
            row.available,
            row.pending,
            row.spent,
            row.disputed,
            row.outflow_per_s,
            row.depletes_in_s.map_or_else(|| "never".to_string(), duration_text),
        )));
        lines.push(Line::from(spans));
    }
    if lines.is_empty() {
        lines.push(Line::from("no distributions"));
    }
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" liquidity: █ available ▓ pending ░ spent ! disputed ");
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn render_claims(frame: &mut Frame, area: Rect, view: &View) {
    let c = &view.claims;
    let text = format!(
        "certified {:.1}/s   disputed {:.1}/s   provisional now {}   disputed now {}",
        c.certified_per_s, c.disputed_per_s, c.provisional, c.disputed
    );
    let block = Block::default().borders(Borders::ALL).title(" claims ");
    frame.render_widget(Paragraph::new(text).block(block), area);
}

/// Runs the live view until `q`, Esc or Ctrl-C: every [`REFRESH`] it
/// samples `targets` and draws. The terminal is restored however it ends.
pub async fn run(title: &str, targets: Vec<Target>) -> anyhow::Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    let mut terminal =
        ratatui::try_init().map_err(|e| anyhow::anyhow!("cannot take over the terminal (is this a terminal?): {e}"))?;
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel::<Event>(16);
    // crossterm reads blocking; a thread forwards events until the view is gone.
    std::thread::spawn(move || {
        while !keys_tx.is_closed() {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => {
                    let sent = event::read().ok().is_some_and(|e| keys_tx.blocking_send(e).is_ok());
                    if !sent {
                        break;
                    }
                }
                Ok(false) => {}
                Err(_) => break,
            }
        }
    });
    let quits = |e: &Event| match e {
        Event::Key(k) if k.kind != KeyEventKind::Release => {
            matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL))
        }
        _ => false,
    };
    let mut tracker = Tracker::new(title);
    let mut view = View {
        title: title.to_string(),
        mode: "…".to_string(),
        nodes_total: targets.len(),
        ..View::default()
    };
    let result: anyhow::Result<()> = async {
        loop {
            terminal.draw(|f| render(f, &view))?;
            let round = async {
                let samples = sample_all(&targets).await;
                tokio::time::sleep(REFRESH).await;
                samples
            };
            tokio::pin!(round);
            loop {
                tokio::select! {
                    samples = &mut round => {
                        view = tracker.update(&samples, Instant::now());
                        break;
                    }
                    event = keys.recv() => match event {
                        Some(e) if quits(&e) => return Ok(()),
                        Some(_) => terminal.draw(|f| render(f, &view)).map(|_| ())?,
                        None => return Ok(()),
                    },
                }
            }
        }
    }
    .await;
    drop(keys);
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn frame_text(view: &View) -> String {
        let mut terminal = Terminal::new(TestBackend::new(120, 40)).expect("terminal");
        terminal.draw(|f| render(f, view)).expect("draw");
        let buffer = terminal.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn status(name: &str, region: &str, mode: &str) -> pb::StatusResponse {
        pb::StatusResponse {
            name: name.into(),
            region: region.into(),
            mode: mode.into(),
            scopes: vec![
                pb::ScopeInfo {
                    scope: "eu".into(),
                    total_weight: 3,
                    reachable_weight: 3,
                    quorum_latency_ms: Some(42.0),
                    view_age_ms: 0,
                },
                pb::ScopeInfo {
                    scope: "us".into(),
                    total_weight: 3,
                    reachable_weight: 1,
                    quorum_latency_ms: None,
                    view_age_ms: 12_000,
                },
            ],
            ..Default::default()
        }
    }

    fn liquidity(spent: u64) -> Vec<(pb::DistributionInfo, pb::Liquidity)> {
        vec![(
            pb::DistributionInfo {
                id: "ab".repeat(32),
                name: "demo".into(),
                amount_per_claim: 100,
                ..Default::default()
            },
            pb::Liquidity {
                regions: vec![pb::RegionLiquidityInfo {
                    region: "eu".into(),
                    escrow: 10_000,
                    available: 10_000 - spent - 300,
                    pending: 300,
                    spent,
                    outflow_per_s: 50.0,
                    depletes_in_s: (10_000 - spent - 300) as f64 / 50.0,
                    ..Default::default()
                }],
                ..Default::default()
            },
        )]
    }

    fn sample_of(status: pb::StatusResponse, spent: u64) -> NodeSample {
        NodeSample {
            label: status.name.clone(),
            status: Ok(status),
            liquidity: liquidity(spent),
        }
    }

    #[test]
    fn a_frame_shows_the_mode_regions_suspects_and_liquidity() {
        let mut st = status("eu-0", "eu", "regional");
        st.suspected = vec![pb::SuspectInfo {
            key: "cd".repeat(32),
            name: "us-1".into(),
            phi: 9.25,
        }];
        let view = build("node eu-0", &[sample_of(st, 2_000)]);
        let text = frame_text(&view);
        assert!(text.contains("mode regional"), "{text}");
        assert!(text.contains("42 ms"), "{text}");
        assert!(text.contains("unreachable"), "{text}");
        assert!(text.contains("12 s"), "the view age of us: {text}");
        assert!(text.contains("us-1") && text.contains("phi 9.2"), "{text}");
        assert!(text.contains("avail 7700 pend 300 spent 2000"), "{text}");
        assert!(text.contains("empty in 2 m 34 s"), "{text}");
        assert!(text.contains("provisional now 3"), "{text}");
        assert!(text.contains('█') && text.contains('░'), "bars: {text}");
    }

    #[test]
    fn a_testnet_frame_counts_modes_and_nodes_that_did_not_answer() {
        let samples = vec![
            sample_of(status("eu-0", "eu", "normal"), 0),
            sample_of(status("eu-1", "eu", "normal"), 0),
            NodeSample {
                label: "us-0".into(),
                status: Err("connection refused".into()),
                liquidity: Vec::new(),
            },
        ];
        let view = build("testnet", &samples);
        assert_eq!(view.mode, "normal ×2");
        let text = frame_text(&view);
        assert!(text.contains("nodes 2/3"), "{text}");
        assert!(text.contains("us-0: connection refused"), "{text}");
        assert!(text.contains("none"), "no suspects: {text}");
    }

    #[test]
    fn rates_come_from_the_change_between_rounds() {
        let mut tracker = Tracker::new("t");
        let t0 = Instant::now();
        let first = tracker.update(&[sample_of(status("eu-0", "eu", "normal"), 1_000)], t0);
        assert_eq!(first.claims.certified_per_s, 0.0);
        let second = tracker.update(
            &[sample_of(status("eu-0", "eu", "normal"), 3_000)],
            t0 + Duration::from_secs(2),
        );
        assert!(
            (second.claims.certified_per_s - 10.0).abs() < 1e-9,
            "{:?}",
            second.claims
        );
        assert!(frame_text(&second).contains("certified 10.0/s"));
    }

    #[test]
    fn bars_fill_their_width_in_proportion() {
        let row = LiquidityRow {
            available: 50,
            pending: 25,
            spent: 25,
            ..LiquidityRow::default()
        };
        let cells = bar(&row, 20);
        assert_eq!(cells.iter().map(|c| c.0).sum::<usize>(), 20);
        assert_eq!(cells.first().map(|c| (c.0, c.1)), Some((10, '█')));
        assert_eq!(duration_text(3725.0), "1 h 2 m");
    }
}
