//! Processes: finding (and if need be building) the binaries, starting
//! detached processes that outlive this command, and signalling them.
//!
//! Every process the testnet starts leads its own process group, so a signal
//! to the group reaches anything it spawned too. Before signalling a recorded
//! pid, its command line is checked to still mention the testnet directory,
//! so a recycled pid never gets a signal meant for a node.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How long a process gets to exit after SIGTERM before it is SIGKILLed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often a stopping process is looked at.
const EXIT_POLL: Duration = Duration::from_millis(50);

/// The node binary and this binary: siblings in `target/release`.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub credence: PathBuf,
    pub testnet: PathBuf,
}

/// Finds `credence` next to this binary; builds the workspace once (quietly)
/// when it is missing and this binary sits in a cargo target directory.
pub fn binaries() -> anyhow::Result<Binaries> {
    let testnet = std::env::current_exe().context("cannot find this binary's own path")?;
    let dir = testnet
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", testnet.display()))?;
    let credence = dir.join("credence");
    if !credence.exists() {
        let root = workspace_root(dir).ok_or_else(|| {
            anyhow!(
                "no node binary at {} and no cargo workspace around it to build one: \
                 run `cargo build --release --workspace`",
                credence.display()
            )
        })?;
        eprintln!(
            "building the node (cargo build --release --workspace) in {}",
            root.display()
        );
        let status = Command::new("cargo")
            .args(["build", "--release", "--workspace", "-q"])
            .current_dir(&root)
            .status()
            .context("cannot run cargo")?;
        if !status.success() || !credence.exists() {
            bail!("cargo build --release --workspace failed in {}", root.display());
        }
    }
    Ok(Binaries { credence, testnet })
}

/// The directory above `target/` holding a workspace `Cargo.toml`.
fn workspace_root(bin_dir: &Path) -> Option<PathBuf> {
    bin_dir
        .ancestors()
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml"))
                .map(|t| t.contains("[workspace]"))
                .unwrap_or(false)
        })
        .map(Path::to_path_buf)
}

/// Starts `program args…` detached: own process group, no stdin, stdout and
/// stderr appended to `log`. The child is not waited for unless the caller
/// wants to (to learn how it exited): it outlives this command and its pid is
/// recorded in state.json instead.
pub fn spawn(program: &Path, args: &[&str], log: &Path) -> anyhow::Result<std::process::Child> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    Ok(child)
}

/// Whether `pid` is a live (not zombie) process whose command line mentions
/// `marker` (the testnet directory).
pub fn alive(pid: u32, marker: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // The state letter follows the parenthesised command name.
    let zombie = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        .unwrap_or(true);
    if zombie {
        return false;
    }
    let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    cmdline.contains(&*marker.to_string_lossy())
}

/// Whether `pid` is stopped (SIGSTOP).
pub fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('T')))
        .unwrap_or(false)
}

/// Sends a signal to the process group led by `pid`.
pub fn signal(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let pgid = i32::try_from(pid).map_err(|_| anyhow!("pid {pid} out of range"))?;
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(anyhow!("cannot send {signal} to process group {pid}: {e}")),
    }
}

/// Stops the process group led by `pid`: SIGCONT (a paused process cannot
/// handle SIGTERM), SIGTERM, then SIGKILL after `grace`. Returns once the
/// leader is gone. `graceful = false` goes straight to SIGKILL.
pub fn stop(pid: u32, marker: &Path, graceful: bool, grace: Duration) -> anyhow::Result<()> {
    if !alive(pid, marker) {
        return Ok(());
    }
    if graceful {
        signal(pid, Signal::SIGCONT)?;
        signal(pid, Signal::SIGTERM)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !alive(pid, marker) {
                return Ok(());
            }
            std::thread::sleep(EXIT_POLL);
        }
    }
    signal(pid, Signal::SIGKILL)?;
    let deadline = Instant::now() + grace;
    while alive(pid, marker) {
        if Instant::now() >= deadline {
            bail!("process {pid} survived SIGKILL for {grace:?}");
        }
        std::thread::sleep(EXIT_POLL);
    }
    Ok(())
}

/// The last `lines` lines of a log, for error messages.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
