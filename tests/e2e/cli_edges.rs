//! The errors that used to send users the wrong way, one test per row of the list in the
//! issue that fixed them: each now says what is wrong and what to do.

use std::process::{Command, Output, Stdio};

use custodian_testkit::{Daemon, binary};

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn custodian(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env_remove("CUSTODIAN_SERVER")
        .env_remove("CUSTODIAN_TOKEN")
        .env_remove("CUSTODIAN_DATA_DIR")
        .output()
        .expect("run custodian")
}

#[test]
fn mixed_up_ports_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("data"));
    // The REST port given as --server, and the gRPC port given as --rest.
    for (args, says) in [
        (
            vec![
                "blob",
                "stat",
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "--server",
                &daemon.rest,
            ],
            ["REST port", "7311"],
        ),
        (
            vec![
                "datapack",
                "show",
                "pacman-builder@0.2.1",
                "--rest",
                &daemon.address,
            ],
            ["gRPC port", "7312"],
        ),
    ] {
        let out = custodian(&args);
        assert!(!out.status.success());
        let said = text(&out);
        assert!(
            says.iter().all(|s| said.contains(s)) && !said.contains("compression flag"),
            "{args:?}: {said}"
        );
    }
}

#[test]
fn a_server_without_a_scheme_gets_a_suggestion() {
    let out = custodian(&[
        "blob",
        "stat",
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "--server",
        "127.0.0.1:7311",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("did you mean http://127.0.0.1:7311?"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    // A pipe whose reader is gone before the first byte is written: every write is EPIPE.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(binary())
        .args(["attest", "--schema"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run custodian");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}

#[test]
fn serve_and_token_refuse_to_found_a_registry_by_accident() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-registry");
    let out = Command::new(binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--rest-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&missing)
        .output()
        .expect("run custodian");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("there is no registry at") && text(&out).contains("--init"),
        "{}",
        text(&out)
    );
    assert!(!missing.exists(), "serve created {}", missing.display());
    let out = custodian(&[
        "token",
        "create",
        "--name",
        "x",
        "--scope",
        "read",
        "--namespace",
        "*",
        "--data-dir",
        missing.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--init"), "{}", text(&out));
    assert!(
        !missing.exists(),
        "token create created {}",
        missing.display()
    );
    // With --init it is created, and said so.
    let out = custodian(&[
        "token",
        "create",
        "--init",
        "--name",
        "x",
        "--scope",
        "read",
        "--namespace",
        "*",
        "--data-dir",
        missing.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("created a new registry at"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_busy_port_fails_before_anything_is_created() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = Command::new(binary())
        .args([
            "serve",
            "--init",
            "--listen",
            &port,
            "--rest-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .expect("run custodian");
    assert!(!out.status.success());
    assert!(text(&out).contains("cannot listen on"), "{}", text(&out));
    assert!(
        !data.exists(),
        "a daemon that could not listen created its data directory"
    );
}

#[test]
fn version_is_the_real_one() {
    let out = custodian(&["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("custodian {}", env!("CARGO_PKG_VERSION"))
    );
    assert_ne!(env!("CARGO_PKG_VERSION"), "0.0.0");
}

#[test]
fn logs_are_plain_text_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_file = dir.path().join("serve.out");
    let log_file = dir.path().join("serve.log");
    let mut child = Command::new(binary())
        .args([
            "serve",
            "--init",
            "--listen",
            "127.0.0.1:0",
            "--rest-listen",
            "127.0.0.1:0",
            "--log",
            "info",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdout(std::fs::File::create(&out_file).expect("file"))
        .stderr(std::fs::File::create(&log_file).expect("file"))
        .spawn()
        .expect("start serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&out_file)
        .unwrap_or_default()
        .contains("rest listening")
    {
        assert!(std::time::Instant::now() < deadline, "serve did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_file).expect("log");
    assert!(log.contains("custodian listening"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a redirected log: {log:?}"
    );
}

#[test]
fn help_lists_every_scope() {
    let out = custodian(&["token", "create", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for scope in ["read", "publish", "attest", "scan", "admin"] {
        assert!(
            help.contains(scope),
            "token create --help lacks {scope}:\n{help}"
        );
    }
}

#[test]
fn key_generate_takes_a_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys/release");
    let out = Command::new(binary())
        .args(["key", "generate"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .expect("run custodian");
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.path().join("keys/release.key").exists());
    let public = std::fs::read_to_string(dir.path().join("keys/release.pub")).expect("pub");
    assert!(public.starts_with("release+"), "{public}");
    let stray: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".key"))
        .collect();
    assert!(
        stray.is_empty(),
        "a key was written into the current folder"
    );
}

#[test]
fn a_malformed_run_names_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = dir.path().join("runs.json");
    std::fs::write(
        &runs,
        r#"{"package": "p", "version": "1.0.0", "eval_id": "e", "model": "m", "passed": true,
            "metrics": {"accuracy": "high"}, "reproducibility_context": {},
            "started_at": "2026-11-30T10:00:00Z", "finished_at": "2026-11-30T10:01:00Z",
            "runner": {"id": "ci"}}"#,
    )
    .expect("write");
    let key = dir.path().join("runner");
    assert!(
        custodian(&["key", "generate", key.to_str().expect("utf-8")])
            .status
            .success()
    );
    let out = custodian(&[
        "attest",
        runs.to_str().expect("utf-8"),
        "--key",
        dir.path().join("runner.key").to_str().expect("utf-8"),
        "--server",
        "http://127.0.0.1:9",
    ]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("/metrics/accuracy") && said.contains("attest --schema"),
        "{said}"
    );
}
