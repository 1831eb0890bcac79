//! The CLI as a user drives it: `credence node --dev` in a temporary data
//! directory, then the client subcommands against it, with `--json`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_credence");

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run credence");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = run(args);
    assert!(ok, "credence {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("credence {args:?} printed no JSON ({e}): {stdout}"))
}

#[test]
fn a_dev_node_is_driven_by_the_client_subcommands() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("dev");
    let port = free_port();
    let rpc = format!("http://127.0.0.1:{port}");
    let node = Node(
        Command::new(BIN)
            .args(["node", "--dev", "--data-dir"])
            .arg(&data)
            .args(["--rpc-listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node"),
    );
    let start = Instant::now();
    while !run(&["status", "--rpc", &rpc, "--json"]).0 {
        assert!(start.elapsed() < Duration::from_secs(60), "dev node never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = json(&["status", "--rpc", &rpc, "--json"]);
    assert_eq!(status["run_mode"], "dev");
    assert_eq!(status["mode"], "normal");
    assert!(status["peers"]["count"].is_u64());

    let keys = data.join("keys");
    let issuer = keys.join("issuer.key");
    let (ok, subject, _) = run(&["pubkey", keys.join("claimant.key").to_str().expect("utf8")]);
    assert!(ok);
    let subject = subject.trim().to_string();
    assert_eq!(subject.len(), 64);

    let attested = json(&[
        "attest",
        "--rpc",
        &rpc,
        "--json",
        "--key",
        issuer.to_str().expect("utf8"),
        "--subject",
        &subject,
        "--schema",
        "demo",
        "--data",
        "hello",
    ]);
    let id = attested["id"].as_str().expect("id").to_string();
    let credential = json(&["credential", "--rpc", &rpc, "--json", &id]);
    assert_eq!(credential["status"], "valid");
    assert_eq!(credential["subject"], subject.as_str());
    assert!(credential["learned_at"].as_u64().unwrap_or(0) > 0);

    // Refusals: one clear line on stderr and a non-zero exit.
    let (ok, _, stderr) = run(&[
        "attest",
        "--rpc",
        &rpc,
        "--key",
        issuer.to_str().expect("utf8"),
        "--subject",
        &subject,
        "--schema",
        "nope",
    ]);
    assert!(!ok);
    assert!(stderr.contains("unknown schema"), "{stderr}");
    let (ok, _, stderr) = run(&["status", "--rpc", "http://127.0.0.1:1"]);
    assert!(!ok);
    assert!(stderr.contains("cannot reach"), "{stderr}");
    let (ok, _, stderr) = run(&["credential", "--rpc", &rpc, "not-hex"]);
    assert!(!ok);
    assert!(stderr.contains("64 hex"), "{stderr}");
    let (ok, _, _) = run(&["attest", "--no-such-flag"]);
    assert!(!ok);

    json(&[
        "revoke",
        "--rpc",
        &rpc,
        "--json",
        "--key",
        issuer.to_str().expect("utf8"),
        &id,
    ]);
    assert_eq!(json(&["credential", "--rpc", &rpc, "--json", &id])["status"], "revoked");
    drop(node);
}

#[test]
fn admin_calls_need_the_token_the_node_wrote() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("dev");
    let port = free_port();
    let rpc = format!("http://127.0.0.1:{port}");
    let node = Node(
        Command::new(BIN)
            .args(["node", "--dev", "--enable-fault-injection", "--data-dir"])
            .arg(&data)
            .args(["--rpc-listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node"),
    );
    let start = Instant::now();
    while !run(&["status", "--rpc", &rpc, "--json"]).0 {
        assert!(start.elapsed() < Duration::from_secs(60), "dev node never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
    let token = data.join("store").join("admin.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token).expect("token file").permissions());
    assert_eq!(mode & 0o777, 0o600, "token file mode {mode:o}");
    let peer = "11".repeat(32);

    // No token, and nothing in the environment to find one.
    let out = Command::new(BIN)
        .env_clear()
        .args(["block-peer", "--rpc", &rpc, &peer])
        .output()
        .expect("run credence");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "block-peer without a token was accepted");
    assert!(stderr.contains("token"), "{stderr}");
    // A wrong token.
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, format!("{}\n", "ab".repeat(32))).expect("write");
    let (ok, _, stderr) = run(&[
        "block-peer",
        "--rpc",
        &rpc,
        "--admin-token-file",
        wrong.to_str().expect("utf8"),
        &peer,
    ]);
    assert!(!ok, "block-peer with a wrong token was accepted");
    assert!(stderr.contains("wrong admin token"), "{stderr}");
    // The node's own token, by flag and by environment.
    let blocked = json(&[
        "block-peer",
        "--rpc",
        &rpc,
        "--json",
        "--admin-token-file",
        token.to_str().expect("utf8"),
        &peer,
    ]);
    assert_eq!(blocked["blocked"], true);
    let out = Command::new(BIN)
        .env("CREDENCE_ADMIN_TOKEN_FILE", &token)
        .args(["block-peer", "--rpc", &rpc, "--json", "--unblock", &peer])
        .output()
        .expect("run credence");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    drop(node);
}
