//! The link shaper: one userspace TCP relay per directed link, so that delay,
//! jitter, bandwidth limits, blackholes and resets apply between nodes on one
//! machine without `netem`.
//!
//! `credence-testnet shaper --dir D` runs as its own background process
//! (started by `up --shaped`). It reads the relay table from
//! `D/shaper-links.json`, listens on every relay port, and takes commands on
//! the unix socket `D/shaper.sock`: one JSON line in, one JSON line out. The
//! other subcommands talk to it through [`Control`].
//!
//! Every byte read from one side of a relayed connection is queued with the
//! instant it was read and written to the other side once its delay (plus
//! jitter, never reordering) has passed and the link's bandwidth allows. A
//! blackholed link holds its bytes and keeps its connections open, as a cut
//! network does; if an end gives up on a connection during the blackhole, the
//! whole relayed connection is dropped so that stale connections do not pile
//! up. A reset closes the link's connections at once with TCP RST.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::layout::{Layout, Link, LinkRule, RuleEntry};

/// Bytes read from a socket at once.
const CHUNK_BYTES: usize = 16 * 1024;
/// Chunks queued per direction of a connection before the relay stops
/// reading (4 MiB: enough for a 100 ms delay at 40 MiB/s).
const QUEUE_CHUNKS: usize = 256;
/// Longest control request accepted.
const CONTROL_LINE_MAX: usize = 1024 * 1024;
/// How long a control client waits for the shaper.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the relay waits to reach the real node.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `shaper-links.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinksFile {
    pub links: Vec<Link>,
    pub rules: Vec<RuleEntry>,
}

/// A control request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Is the shaper up?
    Ping,
    /// Replace every rule: pairs not listed get the default (no shaping).
    SetRules { rules: Vec<RuleEntry> },
    /// Close, with TCP RST, every open connection relayed for these
    /// (from, to) links.
    Reset { pairs: Vec<(String, String)> },
    /// Open connections and bytes per link.
    Stats,
}

/// A control answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub closed: u64,
    #[serde(default)]
    pub links: Vec<LinkStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LinkStats {
    pub from: String,
    pub to: String,
    pub open_connections: u64,
    /// Bytes sent from `from` to `to`, over every relay.
    pub bytes: u64,
    pub rule: LinkRule,
}

/// A client of a running shaper.
#[derive(Clone, Debug)]
pub struct Control {
    socket: PathBuf,
}

impl Control {
    pub fn new(socket: &Path) -> Control {
        Control {
            socket: socket.to_path_buf(),
        }
    }

    pub async fn call(&self, request: &Request) -> anyhow::Result<Reply> {
        let exchange = async {
            let stream = UnixStream::connect(&self.socket).await.with_context(|| {
                format!(
                    "the link shaper does not answer on {} (is it running? see logs/shaper.log)",
                    self.socket.display()
                )
            })?;
            let (read, mut write) = stream.into_split();
            let mut line = serde_json::to_string(request)?;
            line.push('\n');
            write.write_all(line.as_bytes()).await?;
            let mut answer = String::new();
            BufReader::new(read).read_line(&mut answer).await?;
            let reply: Reply =
                serde_json::from_str(&answer).with_context(|| format!("the link shaper answered {answer:?}"))?;
            anyhow::Ok(reply)
        };
        let reply = tokio::time::timeout(CONTROL_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("the link shaper did not answer within {CONTROL_TIMEOUT:?}"))??;
        if !reply.ok {
            bail!("the link shaper refused: {}", reply.error.clone().unwrap_or_default());
        }
        Ok(reply)
    }
}

/// The shaping state of bytes from one node to another.
struct Direction {
    rule: watch::Sender<LinkRule>,
    bytes: AtomicU64,
    /// When the link's bandwidth is next free (bandwidth is shared by every
    /// connection of the pair).
    next_free: Mutex<Instant>,
}

impl Direction {
    fn new(rule: LinkRule) -> Direction {
        Direction {
            rule: watch::Sender::new(rule),
            bytes: AtomicU64::new(0),
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Reserves bandwidth for `len` bytes; returns when they are through.
    fn reserve(&self, len: usize, kbps: u64) -> Instant {
        let seconds = (len as f64 * 8.0) / (kbps as f64 * 1000.0);
        let now = Instant::now();
        let mut next = self.next_free.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = (*next).max(now);
        *next = start + Duration::from_secs_f64(seconds);
        *next
    }
}

/// Per relay: a reset generation that open connections watch, and a count.
struct Relay {
    reset: watch::Sender<u64>,
    open: AtomicU64,
}

struct Shaper {
    directions: HashMap<(String, String), Arc<Direction>>,
    relays: HashMap<(String, String), Arc<Relay>>,
}

impl Shaper {
    fn direction(&self, from: &str, to: &str) -> Option<Arc<Direction>> {
        self.directions.get(&(from.to_string(), to.to_string())).cloned()
    }

    fn set_rules(&self, rules: &[RuleEntry]) -> Result<(), String> {
        let mut wanted: HashMap<(String, String), LinkRule> = HashMap::new();
        for r in rules {
            let key = (r.from.clone(), r.to.clone());
            if !self.directions.contains_key(&key) {
                return Err(format!("no link from {} to {}", r.from, r.to));
            }
            wanted.insert(key, r.rule.clone());
        }
        for (key, dir) in &self.directions {
            let rule = wanted.remove(key).unwrap_or_default();
            dir.rule.send_if_modified(|current| {
                let changed = *current != rule;
                *current = rule;
                changed
            });
        }
        Ok(())
    }

    fn answer(&self, request: Request) -> Reply {
        match request {
            Request::Ping => Reply {
                ok: true,
                ..Reply::default()
            },
            Request::SetRules { rules } => match self.set_rules(&rules) {
                Ok(()) => Reply {
                    ok: true,
                    ..Reply::default()
                },
                Err(e) => Reply {
                    ok: false,
                    error: Some(e),
                    ..Reply::default()
                },
            },
            Request::Reset { pairs } => {
                let mut closed = 0;
                for pair in pairs {
                    if let Some(relay) = self.relays.get(&pair) {
                        closed += relay.open.load(Ordering::Relaxed);
                        relay.reset.send_modify(|g| *g = g.wrapping_add(1));
                    }
                }
                Reply {
                    ok: true,
                    closed,
                    ..Reply::default()
                }
            }
            Request::Stats => {
                let mut links: Vec<LinkStats> = self
                    .directions
                    .iter()
                    .map(|((from, to), d)| LinkStats {
                        from: from.clone(),
                        to: to.clone(),
                        open_connections: self
                            .relays
                            .get(&(from.clone(), to.clone()))
                            .map(|r| r.open.load(Ordering::Relaxed))
                            .unwrap_or(0),
                        bytes: d.bytes.load(Ordering::Relaxed),
                        rule: d.rule.borrow().clone(),
                    })
                    .collect();
                links.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
                Reply {
                    ok: true,
                    links,
                    ..Reply::default()
                }
            }
        }
    }
}

/// Runs the shaper of the testnet in `layout` until SIGTERM or SIGINT.
pub async fn run(layout: &Layout) -> anyhow::Result<()> {
    let path = layout.shaper_links();
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: LinksFile = serde_json::from_str(&text).with_context(|| format!("{} is malformed", path.display()))?;
    let names: BTreeSet<&str> = file
        .links
        .iter()
        .flat_map(|l| [l.from.as_str(), l.to.as_str()])
        .collect();
    let mut directions = HashMap::new();
    for from in &names {
        for to in &names {
            if from != to {
                directions.insert(
                    (from.to_string(), to.to_string()),
                    Arc::new(Direction::new(LinkRule::default())),
                );
            }
        }
    }
    let mut relays = HashMap::new();
    let mut listeners = Vec::new();
    for link in &file.links {
        let listener = TcpListener::bind(("127.0.0.1", link.relay_port))
            .await
            .with_context(|| {
                format!(
                    "cannot listen on relay port {} ({} -> {})",
                    link.relay_port, link.from, link.to
                )
            })?;
        let relay = Arc::new(Relay {
            reset: watch::Sender::new(0),
            open: AtomicU64::new(0),
        });
        relays.insert((link.from.clone(), link.to.clone()), relay.clone());
        listeners.push((listener, link.clone(), relay));
    }
    let shaper = Arc::new(Shaper { directions, relays });
    shaper
        .set_rules(&file.rules)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;

    for (listener, link, relay) in listeners {
        let (Some(forward), Some(back)) = (
            shaper.direction(&link.from, &link.to),
            shaper.direction(&link.to, &link.from),
        ) else {
            continue;
        };
        tokio::spawn(accept_loop(listener, link, relay, forward, back));
    }

    let socket = layout.shaper_socket();
    let _ = std::fs::remove_file(&socket);
    let control = UnixListener::bind(&socket).with_context(|| {
        format!(
            "cannot listen on {} (paths longer than about 100 bytes do not fit a unix socket: use a shorter --dir)",
            socket.display()
        )
    })?;
    eprintln!("shaper: {} relays, control on {}", file.links.len(), socket.display());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            biased;
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            accepted = control.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_control(stream, shaper.clone()));
                }
            }
        }
    }
    let _ = std::fs::remove_file(&socket);
    eprintln!("shaper: stopped");
    Ok(())
}

async fn serve_control(stream: UnixStream, shaper: Arc<Shaper>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(CONTROL_LINE_MAX as u64));
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => shaper.answer(request),
        Err(e) => Reply {
            ok: false,
            error: Some(format!("malformed request: {e}")),
            ..Reply::default()
        },
    };
    if let Ok(mut text) = serde_json::to_string(&reply) {
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    link: Link,
    relay: Arc<Relay>,
    forward: Arc<Direction>,
    back: Arc<Direction>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        let (link, relay, forward, back) = (link.clone(), relay.clone(), forward.clone(), back.clone());
        tokio::spawn(async move {
            let upstream = match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(&link.target)).await
            {
                Ok(Ok(s)) => s,
                // The target is down: close the inbound side, as a refused
                // connection would.
                _ => return,
            };
            let _ = inbound.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            relay.open.fetch_add(1, Ordering::Relaxed);
            splice(inbound, upstream, &relay, forward, back).await;
            relay.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Relays one connection until both sides are done, one fails, or the
/// relay is reset.
async fn splice(mut a: TcpStream, mut b: TcpStream, relay: &Relay, forward: Arc<Direction>, back: Arc<Direction>) {
    let mut reset = relay.reset.subscribe();
    let was_reset = {
        let (ar, aw) = a.split();
        let (br, bw) = b.split();
        tokio::select! {
            _ = reset.changed() => true,
            _ = async { tokio::try_join!(pump(ar, bw, &forward), pump(br, aw, &back)) } => false,
        }
    };
    if was_reset {
        // RST rather than FIN: the peers see "connection reset".
        let _ = a.set_zero_linger();
        let _ = b.set_zero_linger();
    }
}

/// Why a relayed connection is dropped as a whole.
#[derive(Debug)]
struct Abort;

async fn pump<R, W>(mut read: R, mut write: W, dir: &Direction) -> Result<(), Abort>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(QUEUE_CHUNKS);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = read.read(&mut buf).await.map_err(|_| Abort)?;
            let now = Instant::now();
            if n == 0 {
                if dir.rule.borrow().blackhole {
                    return Err(Abort);
                }
                tx.send((now, None)).await.map_err(|_| Abort)?;
                return Ok(());
            }
            dir.bytes.fetch_add(n as u64, Ordering::Relaxed);
            tx.send((now, Some(buf.get(..n).unwrap_or_default().to_vec())))
                .await
                .map_err(|_| Abort)?;
        }
    };
    let writer = async {
        let mut rules = dir.rule.subscribe();
        let mut last_due = Instant::now();
        while let Some((read_at, chunk)) = rx.recv().await {
            hold_while_blackholed(&mut rules).await?;
            let rule = rules.borrow().clone();
            let mut due = read_at + Duration::from_millis(rule.delay_ms);
            if rule.jitter_ms > 0 {
                let span = rule.jitter_ms.saturating_mul(2);
                let offset = rand::random_range(0..=span);
                due = if offset >= rule.jitter_ms {
                    due + Duration::from_millis(offset - rule.jitter_ms)
                } else {
                    due.checked_sub(Duration::from_millis(rule.jitter_ms - offset))
                        .unwrap_or(due)
                };
            }
            // Jitter never reorders bytes of one stream.
            due = due.max(last_due);
            last_due = due;
            tokio::time::sleep_until(due).await;
            // A blackhole that began while the bytes were in flight holds them.
            hold_while_blackholed(&mut rules).await?;
            let Some(bytes) = chunk else {
                let _ = write.shutdown().await;
                return Ok(());
            };
            if rule.bandwidth_kbps > 0 {
                tokio::time::sleep_until(dir.reserve(bytes.len(), rule.bandwidth_kbps)).await;
            }
            write.write_all(&bytes).await.map_err(|_| Abort)?;
        }
        Ok(())
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

async fn hold_while_blackholed(rules: &mut watch::Receiver<LinkRule>) -> Result<(), Abort> {
    while rules.borrow_and_update().blackhole {
        rules.changed().await.map_err(|_| Abort)?;
    }
    Ok(())
}
