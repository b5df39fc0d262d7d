//! Resumable uploads end to end: a 256 MiB `custodian blob put` cut three ways (the client
//! killed, the connection dropped, the daemon killed with `kill -9`) finishes from where it
//! stopped each time, and the bytes sent in total stay within 1.1× the blob.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use custodian_core::{Algorithm, Digest};
use custodian_testkit::{Daemon, Proxy, binary, write_test_file};

const MIB: u64 = 1 << 20;

/// Waits until `done` holds, failing the test after `limit`.
fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn put_through(proxy: &Proxy, daemon: &Daemon, state: &Path, file: &Path) -> Child {
    Command::new(binary())
        .args(["blob", "put", "--json"])
        .arg(file)
        .env("CUSTODIAN_SERVER", proxy.url())
        .env("CUSTODIAN_TOKEN", &daemon.token)
        .env("CUSTODIAN_STATE_DIR", state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run custodian blob put")
}

fn sessions(daemon: &Daemon) -> usize {
    std::fs::read_dir(daemon.data_dir.join("uploads")).map_or(0, |d| d.count())
}

#[test]
fn a_256_mib_put_cut_three_ways_resumes_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(&dir.path().join("data"));
    let file = dir.path().join("pack.bin");
    let size = 256 * MIB;
    write_test_file(&file, size).expect("test file");
    let expected = Digest::of(Algorithm::Sha256, &std::fs::read(&file).expect("read"));
    let state = dir.path().join("state");
    let proxy = Proxy::start(&daemon.address).expect("proxy");
    let limit = Duration::from_secs(120);

    // 1. The client is killed a quarter of the way in. The daemon keeps what arrived.
    let mut first = put_through(&proxy, &daemon, &state, &file);
    wait_for("a quarter sent", limit, || proxy.sent() >= size / 4);
    first.kill().expect("kill the client");
    eprintln!("client killed at {} bytes sent", proxy.sent());
    let _ = first.wait();
    wait_for("the session to be kept", limit, || sessions(&daemon) == 1);

    // 2. The same command again resumes the same session; its connection is then dropped
    //    halfway, and it resumes by itself.
    let second = put_through(&proxy, &daemon, &state, &file);
    wait_for("half sent", limit, || proxy.sent() >= size / 2);
    proxy.drop_connections();
    eprintln!("connection dropped at {} bytes sent", proxy.sent());

    // 3. Three quarters in, the daemon is killed with kill -9 and started again (on new ports,
    //    which the proxy follows); the client waits for it and resumes again.
    wait_for("three quarters sent", limit, || {
        proxy.sent() >= size * 3 / 4
    });
    daemon.kill9();
    eprintln!("daemon killed at {} bytes sent", proxy.sent());
    daemon.restart_after_kill9();
    proxy.set_upstream(&daemon.address).expect("new upstream");

    let output = second.wait_with_output().expect("the second put");
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(output.status.success(), "the resumed put failed: {stderr}");
    assert!(
        stderr.contains("resuming the upload of") && stderr.contains("the transfer broke"),
        "the put says it resumed across runs and within one: {stderr}"
    );
    let lines: serde_json::Value = serde_json::from_slice(&output.stdout).expect("--json output");
    assert_eq!(lines[0]["sha256"], expected.to_string());
    assert_eq!(lines[0]["size"], size);

    // Nothing was sent twice beyond what was in flight at each cut.
    let sent = proxy.sent();
    eprintln!(
        "resumable put: {} bytes sent for a {} byte blob ({:.3}x) across three cuts",
        sent,
        size,
        sent as f64 / size as f64
    );
    assert!(
        sent as f64 <= 1.1 * size as f64,
        "{sent} bytes sent for {size}: more than 1.1x"
    );
    assert_eq!(sessions(&daemon), 0, "the finished session leaves nothing");
    assert_eq!(
        std::fs::read_dir(state.join("uploads")).map_or(0, |d| d.count()),
        0,
        "the client forgets a finished upload"
    );

    // The blob reads back verified.
    let back = dir.path().join("back.bin");
    let get = daemon.cli(&[
        "blob",
        "get",
        &expected.to_string(),
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert_eq!(std::fs::metadata(&back).unwrap().len(), size);
}
