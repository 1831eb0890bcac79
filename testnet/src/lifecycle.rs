//! Starting, stopping and looking at a testnet's processes: `up`, `down`,
//! `kill`, `restart`, `pause`, `resume` and `status`.

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use credence::config::{NetworkFile, NodeConfig};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::faults;
use crate::layout::{Layout, Link, NodeRecord, Role, RunState, STATE_VERSION, ShaperRecord, State, write_atomically};
use crate::procs::{self, Binaries, STOP_GRACE};
use crate::rpc;
use crate::shaper::{Control, LinksFile, Request};

/// Region names used when `--regions` is a count.
pub const REGION_NAMES: [&str; 8] = ["eu", "us", "ap", "sa", "af", "me", "oc", "an"];
/// Most nodes one testnet starts (each takes three ports and a process).
pub const NODES_MAX: usize = 64;
/// Where free port ranges are looked for: below Linux's ephemeral range, so
/// outgoing connections do not take them.
const PORT_SEARCH: std::ops::Range<u16> = 10_000..32_000;
/// Attempts at finding a free port range.
const PORT_SEARCH_ATTEMPTS: usize = 200;
/// How long `up` waits for every node to answer and connect.
pub const UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the shaper gets to open its relays.
const SHAPER_START_TIMEOUT: Duration = Duration::from_secs(15);
/// How often health is polled while waiting.
const HEALTH_POLL: Duration = Duration::from_millis(250);

/// Options of `up`.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub regions: String,
    pub validators_per_region: u32,
    pub observers: u32,
    pub shaped: bool,
    pub timeout: Duration,
    /// The demo distribution's allocation in each region.
    pub region_budget: u64,
}

/// Parses `--regions`: a count (named eu, us, ap, …) or a comma list of names.
pub fn region_names(spec: &str) -> anyhow::Result<Vec<String>> {
    if let Ok(count) = spec.trim().parse::<usize>() {
        if count == 0 || count > REGION_NAMES.len() {
            bail!(
                "--regions {count}: pass 1 to {} (or the names, e.g. --regions eu,us)",
                REGION_NAMES.len()
            );
        }
        return Ok(REGION_NAMES.iter().take(count).map(|r| r.to_string()).collect());
    }
    let names: Vec<String> = spec
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        bail!("--regions {spec:?} names no region: pass a count (2) or names (eu,us)");
    }
    Ok(names)
}

/// Brings a testnet up: a new one, or the stopped one already in the directory.
pub async fn up(layout: &Layout, opts: &UpOptions) -> anyhow::Result<State> {
    let bins = procs::binaries()?;
    let mut state = if layout.state().exists() {
        let state = layout.load_state()?;
        let live: Vec<&str> = state
            .nodes
            .iter()
            .filter(|n| n.pid.is_some_and(|p| procs::alive(p, &layout.dir)))
            .map(|n| n.name.as_str())
            .collect();
        if !live.is_empty() {
            bail!(
                "a testnet is already running in {} ({}): `down --dir {}` first, or pass another --dir",
                layout.dir.display(),
                live.join(", "),
                layout.dir.display()
            );
        }
        eprintln!("restarting the stopped testnet in {}", layout.dir.display());
        state
    } else {
        create(layout, opts, &bins)?
    };
    state.credence_bin = bins.credence.clone();
    state.partition = None;
    let result = start_all(layout, &mut state, &bins, opts.timeout).await;
    if let Err(e) = result {
        // Leave nothing behind from a failed start.
        let _ = stop_all(layout, &mut state);
        layout.save_state(&state)?;
        return Err(e);
    }
    layout.save_state(&state)?;
    Ok(state)
}

/// Writes a new testnet: genesis and validator configs (by `credence
/// genesis`), observer configs, and the shaper's relay table.
fn create(layout: &Layout, opts: &UpOptions, bins: &Binaries) -> anyhow::Result<State> {
    let regions = region_names(&opts.regions)?;
    if opts.validators_per_region == 0 {
        bail!("--validators-per-region must be at least 1");
    }
    let validators = regions.len().saturating_mul(opts.validators_per_region as usize);
    let nodes = validators.saturating_add(opts.observers as usize);
    if nodes > NODES_MAX {
        bail!("{nodes} nodes asked for; a local testnet runs at most {NODES_MAX}");
    }
    if layout.dir.exists()
        && std::fs::read_dir(&layout.dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        bail!(
            "{} exists and is not empty: pass a new --dir, or remove it",
            layout.dir.display()
        );
    }
    std::fs::create_dir_all(layout.logs()).with_context(|| format!("cannot create {}", layout.dir.display()))?;
    // Links exist towards validators (observers are dialled by nobody).
    let link_count = if opts.shaped {
        nodes.saturating_mul(validators)
    } else {
        0
    };
    let port_count = nodes.saturating_mul(3).saturating_add(link_count);
    let base = free_port_range(port_count)?;

    let out = Command::new(&bins.credence)
        .arg("genesis")
        .arg("--regions")
        .arg(regions.join(","))
        .arg("--validators-per-region")
        .arg(opts.validators_per_region.to_string())
        .arg("--out")
        .arg(&layout.dir)
        .arg("--base-port")
        .arg(base.to_string())
        .arg("--network-name")
        .arg("credence-testnet")
        .arg("--region-budget")
        .arg(opts.region_budget.to_string())
        .output()
        .with_context(|| format!("cannot run {}", bins.credence.display()))?;
    if !out.status.success() {
        bail!(
            "credence genesis failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let network: NetworkFile = serde_json::from_str(
        &std::fs::read_to_string(layout.network()).context("credence genesis wrote no network.json")?,
    )
    .context("network.json is malformed")?;

    let mut records = Vec::new();
    for n in &network.nodes {
        records.push(NodeRecord {
            name: n.name.clone(),
            region: n.region.clone(),
            role: Role::Validator,
            peer_id: n.peer_id.clone(),
            rpc: n.rpc.clone(),
            p2p: n.p2p.clone(),
            config: n.config.clone(),
            log: layout.log(&n.name),
            pid: None,
            state: RunState::Stopped,
        });
    }
    let mut next_port = base.saturating_add(u16::try_from(validators * 3).unwrap_or(u16::MAX));
    let mut take_port = || {
        let p = next_port;
        next_port = next_port.saturating_add(1);
        p
    };
    for i in 0..opts.observers {
        let name = format!("obs-{i}");
        let dir = layout.node_dir(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let key = credence::keys::generate();
        credence::keys::write(&dir.join("node.key"), &key)?;
        let peer_id = credence::keys::peer_id_of(&key.verifying_key().to_bytes())
            .map(|p| p.to_string())
            .unwrap_or_default();
        let (rpc, p2p, http) = (take_port(), take_port(), take_port());
        let config = NodeConfig {
            genesis: PathBuf::from("../../genesis.toml"),
            key: PathBuf::from("node.key"),
            data_dir: PathBuf::from("data"),
            rpc_listen: ([127, 0, 0, 1], rpc).into(),
            http_listen: ([127, 0, 0, 1], http).into(),
            p2p_listen: vec![format!("/ip4/127.0.0.1/tcp/{p2p}")],
            peers: vec![],
            max_incoming_connections: credence::config::DEFAULT_MAX_INCOMING_CONNECTIONS,
            enable_fault_injection: true,
            dial_genesis_addresses: true,
        };
        let path = dir.join("node.toml");
        write_config(&path, &format!("observer {name}"), &config)?;
        records.push(NodeRecord {
            name: name.clone(),
            region: String::new(),
            role: Role::Observer,
            peer_id,
            rpc: format!("http://127.0.0.1:{rpc}"),
            p2p: format!("/ip4/127.0.0.1/tcp/{p2p}"),
            config: path,
            log: layout.log(&name),
            pid: None,
            state: RunState::Stopped,
        });
    }

    let mut links = Vec::new();
    if opts.shaped {
        for from in &records {
            for to in records
                .iter()
                .filter(|t| t.role == Role::Validator && t.name != from.name)
            {
                links.push(Link {
                    from: from.name.clone(),
                    to: to.name.clone(),
                    relay_port: take_port(),
                    target: tcp_target(&to.p2p)?,
                });
            }
        }
    }
    // Every node: fault injection on (partitions use the block-list); when
    // shaped, each node reaches each validator only through its relay.
    for r in &records {
        let text = std::fs::read_to_string(&r.config).with_context(|| format!("cannot read {}", r.config.display()))?;
        let mut config: NodeConfig =
            toml::from_str(&text).with_context(|| format!("{} is not a node config", r.config.display()))?;
        config.enable_fault_injection = true;
        if opts.shaped {
            config.dial_genesis_addresses = false;
            config.peers = links
                .iter()
                .filter(|l| l.from == r.name)
                .filter_map(|l| {
                    let to = records.iter().find(|t| t.name == l.to)?;
                    Some(format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", l.relay_port, to.peer_id))
                })
                .collect();
        } else if r.role == Role::Observer {
            config.peers = records
                .iter()
                .filter(|t| t.role == Role::Validator)
                .map(|t| format!("{}/p2p/{}", t.p2p, t.peer_id))
                .collect();
        }
        let what = match r.role {
            Role::Validator => format!("validator {} (region {})", r.name, r.region),
            Role::Observer => format!("observer {}", r.name),
        };
        write_config(&r.config, &what, &config)?;
    }

    let shaper = if opts.shaped {
        let file = LinksFile {
            links: links.clone(),
            rules: vec![],
        };
        write_atomically(&layout.shaper_links(), serde_json::to_string_pretty(&file)?.as_bytes())?;
        Some(ShaperRecord {
            pid: None,
            socket: layout.shaper_socket(),
            log: layout.log("shaper"),
            links,
            rules: vec![],
        })
    } else {
        None
    };
    let state = State {
        version: STATE_VERSION,
        dir: layout.dir.clone(),
        credence_bin: bins.credence.clone(),
        network_id: network.network_id,
        nodes: records,
        shaper,
        partition: None,
    };
    layout.save_state(&state)?;
    Ok(state)
}

fn write_config(path: &Path, what: &str, config: &NodeConfig) -> anyhow::Result<()> {
    let text = toml::to_string(config).context("cannot encode a node config")?;
    write_atomically(
        path,
        format!("# Credence {what}, written by credence-testnet\n{text}").as_bytes(),
    )
}

/// `/ip4/127.0.0.1/tcp/PORT` → `127.0.0.1:PORT`.
fn tcp_target(multiaddr: &str) -> anyhow::Result<String> {
    let parts: Vec<&str> = multiaddr.split('/').collect();
    match parts.as_slice() {
        ["", "ip4", ip, "tcp", port, ..] => Ok(format!("{ip}:{port}")),
        _ => bail!("cannot relay to {multiaddr:?}: expected /ip4/IP/tcp/PORT"),
    }
}

/// A run of `count` consecutive ports that are free on 127.0.0.1 right now.
fn free_port_range(count: usize) -> anyhow::Result<u16> {
    let count = u16::try_from(count).map_err(|_| anyhow!("{count} ports is too many"))?;
    let span = PORT_SEARCH.end - PORT_SEARCH.start - count;
    for _ in 0..PORT_SEARCH_ATTEMPTS {
        let base = PORT_SEARCH.start + rand::random_range(0..span);
        if (base..base + count).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return Ok(base);
        }
    }
    bail!(
        "found no {count} consecutive free ports in {}..{} after {PORT_SEARCH_ATTEMPTS} tries",
        PORT_SEARCH.start,
        PORT_SEARCH.end
    )
}

/// Starts the shaper (if any) and every node, then waits until all are healthy.
async fn start_all(layout: &Layout, state: &mut State, bins: &Binaries, timeout: Duration) -> anyhow::Result<()> {
    if let Some(shaper) = state.shaper.as_mut() {
        start_shaper(layout, shaper, bins).await?;
    }
    let mut children = HashMap::new();
    for i in 0..state.nodes.len() {
        let Some(node) = state.nodes.get_mut(i) else { continue };
        children.insert(node.name.clone(), start_node(node, &state.credence_bin)?);
        layout.save_state(state)?;
    }
    wait_healthy(layout, state, None, &mut children, timeout).await
}

async fn start_shaper(layout: &Layout, shaper: &mut ShaperRecord, bins: &Binaries) -> anyhow::Result<()> {
    let dir = layout.dir.to_string_lossy().to_string();
    let pid = procs::spawn(&bins.testnet, &["shaper", "--dir", &dir], &shaper.log)?.id();
    shaper.pid = Some(pid);
    let control = Control::new(&shaper.socket);
    let deadline = Instant::now() + SHAPER_START_TIMEOUT;
    loop {
        if control.call(&Request::Ping).await.is_ok() {
            break;
        }
        if !procs::alive(pid, &layout.dir) {
            bail!(
                "the link shaper exited at start: see {}\n{}",
                shaper.log.display(),
                procs::log_tail(&shaper.log, 5)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the link shaper did not answer within {SHAPER_START_TIMEOUT:?}: see {}",
                shaper.log.display()
            );
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
    // Rules survive a down/up cycle.
    control
        .call(&Request::SetRules {
            rules: shaper.rules.clone(),
        })
        .await?;
    Ok(())
}

fn start_node(node: &mut NodeRecord, credence: &Path) -> anyhow::Result<Child> {
    let config = node.config.to_string_lossy().to_string();
    let child = procs::spawn(
        credence,
        &["node", "--config", &config, "--enable-fault-injection"],
        &node.log,
    )?;
    node.pid = Some(child.id());
    node.state = RunState::Running;
    Ok(child)
}

/// Waits until every running node (or just `only`) answers its status and is
/// connected to every other running validator.
async fn wait_healthy(
    layout: &Layout,
    state: &State,
    only: Option<&str>,
    children: &mut HashMap<String, Child>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let running: Vec<&NodeRecord> = state.nodes.iter().filter(|n| n.state == RunState::Running).collect();
    // During a partition a node only reaches its own side.
    let reachable = |n: &NodeRecord| -> BTreeSet<&str> {
        let side: Option<&Vec<String>> = state
            .partition
            .as_ref()
            .and_then(|g| g.iter().find(|g| g.contains(&n.name)));
        running
            .iter()
            .filter(|v| v.role == Role::Validator && v.name != n.name)
            .filter(|v| side.is_none_or(|s| s.contains(&v.name)))
            .map(|v| v.peer_id.as_str())
            .collect()
    };
    loop {
        let mut waiting = Vec::new();
        for n in running.iter().filter(|n| only.is_none_or(|o| o == n.name)) {
            let exited = match children.get_mut(&n.name) {
                Some(child) => child.try_wait().ok().flatten().map(|s| s.to_string()),
                None => n
                    .pid
                    .filter(|pid| !procs::alive(*pid, &layout.dir))
                    .map(|_| "exited".to_string()),
            };
            if let Some(how) = exited {
                bail!(
                    "node {} {how}: see {}\n{}",
                    n.name,
                    n.log.display(),
                    procs::log_tail(&n.log, 8)
                );
            }
            match rpc::status(&n.rpc).await {
                Ok(s) => {
                    let connected: BTreeSet<&str> = s.peers.iter().map(|p| p.peer_id.as_str()).collect();
                    let missing: Vec<&str> = reachable(n)
                        .into_iter()
                        .filter(|p| !connected.contains(p))
                        .filter_map(|p| state.nodes.iter().find(|x| x.peer_id == p).map(|x| x.name.as_str()))
                        .collect();
                    if !missing.is_empty() {
                        waiting.push(format!("{} is not yet connected to {}", n.name, missing.join(", ")));
                    }
                }
                Err(e) => waiting.push(format!("{} does not answer yet ({e})", n.name)),
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the testnet did not become healthy within {timeout:?}:\n  {}\nlogs are in {}",
                waiting.join("\n  "),
                layout.logs().display()
            );
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

/// Stops every process of the testnet (nodes first, then the shaper), and
/// any stray process of it that state.json does not know about.
pub fn stop_all(layout: &Layout, state: &mut State) -> anyhow::Result<Vec<String>> {
    let mut stopped = Vec::new();
    // SIGTERM to all at once, then wait: stopping six nodes takes one grace
    // period, not six.
    for n in &state.nodes {
        if let Some(pid) = n.pid
            && procs::alive(pid, &layout.dir)
        {
            stopped.push(n.name.clone());
            procs::signal(pid, Signal::SIGCONT)?;
            procs::signal(pid, Signal::SIGTERM)?;
        }
    }
    let mut errors = Vec::new();
    for n in state.nodes.iter_mut() {
        if let Some(pid) = n.pid
            && let Err(e) = procs::stop(pid, &layout.dir, true, STOP_GRACE)
        {
            errors.push(format!("{}: {e}", n.name));
        }
        n.pid = None;
        n.state = RunState::Stopped;
    }
    if let Some(shaper) = state.shaper.as_mut() {
        if let Some(pid) = shaper.pid {
            if procs::alive(pid, &layout.dir) {
                stopped.push("shaper".into());
            }
            if let Err(e) = procs::stop(pid, &layout.dir, true, STOP_GRACE) {
                errors.push(format!("shaper: {e}"));
            }
        }
        shaper.pid = None;
        for r in shaper.rules.iter_mut() {
            r.rule.blackhole = false;
        }
        shaper.rules.retain(|r| !r.rule.is_default());
    }
    state.partition = None;
    for pid in strays(layout) {
        if procs::stop(pid, &layout.dir, true, STOP_GRACE).is_ok() {
            stopped.push(format!("stray process {pid}"));
        }
    }
    if !errors.is_empty() {
        bail!("could not stop: {}", errors.join("; "));
    }
    Ok(stopped)
}

/// Processes of this testnet that state.json does not account for: a node
/// whose config is under the directory, or a shaper for it.
fn strays(layout: &Layout) -> Vec<u32> {
    let me = std::process::id();
    let dir = layout.dir.to_string_lossy().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        let program = args
            .first()
            .and_then(|a| Path::new(a).file_name())
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        let node = program == "credence"
            && args.get(1).is_some_and(|a| a == "node")
            && args
                .windows(2)
                .any(|w| w.first().is_some_and(|a| a == "--config") && w.get(1).is_some_and(|c| c.starts_with(&dir)));
        let shaper = program == "credence-testnet" && args.get(1).is_some_and(|a| a == "shaper") && args.contains(&dir);
        if (node || shaper) && procs::alive(pid, &layout.dir) {
            found.push(pid);
        }
    }
    found
}

pub fn down(layout: &Layout) -> anyhow::Result<Vec<String>> {
    let mut state = layout.load_state()?;
    let result = stop_all(layout, &mut state);
    layout.save_state(&state)?;
    result
}

/// Looks up a node that should be running and whose process is alive.
fn running_pid(layout: &Layout, node: &NodeRecord) -> anyhow::Result<u32> {
    match node.pid {
        Some(pid) if procs::alive(pid, &layout.dir) => Ok(pid),
        _ => bail!(
            "node {} is not running ({}): see {}",
            node.name,
            node.state.name(),
            node.log.display()
        ),
    }
}

pub fn kill(layout: &Layout, name: &str, graceful: bool) -> anyhow::Result<()> {
    let mut state = layout.load_state()?;
    let node = state.node_mut(name)?;
    let pid = running_pid(layout, node)?;
    procs::stop(pid, &layout.dir, graceful, STOP_GRACE)?;
    node.pid = None;
    node.state = RunState::Killed;
    layout.save_state(&state)
}

pub fn pause(layout: &Layout, name: &str, pause: bool) -> anyhow::Result<()> {
    let mut state = layout.load_state()?;
    let node = state.node_mut(name)?;
    let pid = running_pid(layout, node)?;
    if pause {
        procs::signal(pid, Signal::SIGSTOP)?;
        node.state = RunState::Paused;
    } else {
        procs::signal(pid, Signal::SIGCONT)?;
        node.state = RunState::Running;
    }
    layout.save_state(&state)
}

/// Stops a node if it runs, starts it again with the same data, waits until
/// it is healthy, and puts it back into the current partition.
pub async fn restart(layout: &Layout, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let mut state = layout.load_state()?;
    let credence = state.credence_bin.clone();
    let node = state.node_mut(name)?;
    if let Some(pid) = node.pid {
        procs::stop(pid, &layout.dir, true, STOP_GRACE)?;
    }
    let child = start_node(node, &credence)?;
    let mut children = HashMap::from([(name.to_string(), child)]);
    layout.save_state(&state)?;
    if state.shaper.is_none() && state.partition.is_some() {
        // The block-list lives in the node's memory: the new process must
        // be told again, before it connects across the partition.
        faults::apply_block_list(layout, &state, Some(name), true).await?;
    }
    wait_healthy(layout, &state, Some(name), &mut children, timeout).await
}

/// `status`: one row per node, from state.json and each node's own answers.
pub async fn status(layout: &Layout) -> anyhow::Result<Value> {
    let mut state = layout.load_state()?;
    // A process that died on its own is reported as such.
    for n in state.nodes.iter_mut() {
        if let Some(pid) = n.pid {
            if !procs::alive(pid, &layout.dir) {
                n.pid = None;
                n.state = RunState::Killed;
            } else if procs::stopped(pid) {
                n.state = RunState::Paused;
            }
        }
    }
    // Status calls are bounded by rpc::REQUEST_TIMEOUT; asking every node at
    // once keeps `status` quick when one is paused.
    let rows = futures::future::join_all(state.nodes.iter().map(|n| node_view(&state, n))).await;
    let shaper = state.shaper.as_ref().map(|s| {
        json!({
            "pid": s.pid,
            "running": s.pid.is_some_and(|p| procs::alive(p, &layout.dir)),
            "log": s.log,
            "rules": s.rules,
        })
    });
    Ok(json!({
        "dir": layout.dir,
        "network_id": state.network_id,
        "shaped": state.shaper.is_some(),
        "shaper": shaper,
        "partition": state.partition,
        "nodes": rows,
    }))
}

async fn node_view(state: &State, n: &NodeRecord) -> Value {
    let mut row = json!({
        "name": n.name,
        "region": n.region,
        "role": n.role,
        "state": n.state.name(),
        "pid": n.pid,
        "rpc": n.rpc,
        "log": n.log,
    });
    if n.state != RunState::Running {
        return row;
    }
    let out = tokio::process::Command::new(&state.credence_bin)
        .args(["status", "--rpc", &n.rpc, "--json"])
        .output();
    match tokio::time::timeout(rpc::REQUEST_TIMEOUT, out).await {
        Ok(Ok(out)) if out.status.success() => {
            if let Ok(s) = serde_json::from_slice::<Value>(&out.stdout) {
                row["mode"] = s["mode"].clone();
                row["peers"] = s["peers"]["count"].clone();
                row["attestations"] = s["attestations"].clone();
                row["view_ages_ms"] = view_ages(&s);
                row["node_status"] = s;
            }
        }
        Ok(Ok(out)) => row["error"] = json!(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        _ => row["error"] = json!("no answer"),
    }
    let ch = match rpc::channel(&n.rpc) {
        Ok(ch) => ch,
        Err(_) => return row,
    };
    match rpc::escrow(&ch).audit(credence_proto::v1::AuditRequest {}).await {
        Ok(a) => {
            let a = a.into_inner();
            row["certified_batches"] = json!(a.buckets.iter().map(|b| b.certified_len).sum::<u64>());
            row["funded_claims"] = json!(a.slots.len());
            row["state_digest"] = json!(a.state_digest);
        }
        Err(e) => row["audit_error"] = json!(rpc::describe(&e)),
    }
    row
}

/// Collects `{region: view_age_ms}` from wherever a node's status reports
/// per-region view ages (any object holding both `region` and `view_age_ms`).
fn view_ages(status: &Value) -> Value {
    let mut ages = serde_json::Map::new();
    fn walk(v: &Value, ages: &mut serde_json::Map<String, Value>) {
        match v {
            Value::Object(map) => {
                if let (Some(Value::String(region)), Some(age)) = (map.get("region"), map.get("view_age_ms"))
                    && !region.is_empty()
                {
                    ages.insert(region.clone(), age.clone());
                }
                for (k, child) in map {
                    if k != "peers" {
                        walk(child, ages);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, ages)),
            _ => {}
        }
    }
    walk(status, &mut ages);
    Value::Object(ages)
}

/// The `status` table for humans.
pub fn print_status(v: &Value) {
    outln!(
        "testnet {} ({}), network {}",
        v["dir"].as_str().unwrap_or(""),
        if v["shaped"].as_bool() == Some(true) {
            "links through the shaper"
        } else {
            "direct links"
        },
        v["network_id"].as_str().map(|s| s.get(..16).unwrap_or(s)).unwrap_or("")
    );
    if let Some(groups) = v["partition"].as_array() {
        let text: Vec<String> = groups
            .iter()
            .map(|g| {
                g.as_array()
                    .map(|ns| ns.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                    .unwrap_or_default()
            })
            .collect();
        outln!("partitioned: {}", text.join(" | "));
    }
    outln!(
        "{:<8} {:<6} {:<8} {:>7}  {:<9} {:>5} {:>6} {:>9} {:>7}  {:<22} log",
        "NODE",
        "REGION",
        "STATE",
        "PID",
        "MODE",
        "PEERS",
        "CREDS",
        "CERTIFIED",
        "CLAIMS",
        "VIEW AGES (ms)"
    );
    let text = |x: &Value| match x {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for n in v["nodes"].as_array().into_iter().flatten() {
        let ages = n["view_ages_ms"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(r, a)| format!("{r}:{}", text(a)))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into());
        outln!(
            "{:<8} {:<6} {:<8} {:>7}  {:<9} {:>5} {:>6} {:>9} {:>7}  {:<22} {}",
            text(&n["name"]),
            if n["region"].as_str() == Some("") {
                "-".into()
            } else {
                text(&n["region"])
            },
            text(&n["state"]),
            text(&n["pid"]),
            text(&n["mode"]),
            text(&n["peers"]),
            text(&n["attestations"]),
            text(&n["certified_batches"]),
            text(&n["funded_claims"]),
            ages,
            text(&n["log"]),
        );
        if let Some(e) = n["error"].as_str() {
            outln!("         ! {e}");
        }
    }
}
