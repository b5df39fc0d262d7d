//! Witnessing with peers nobody here wrote, from the Go module proxy (scripts/lib.sh
//! `ensure_go_interop` builds them): litewitness (filippo.io/torchwood) cosigns our log, and
//! Tessera's client and policy evaluation read and accept the result; our witness cosigns a
//! Tessera POSIX log, which Tessera checks with the C2SP formats' cosignature verifier and our
//! monitor follows through its tiles; and what our witness serves to monitors opens with
//! sumdb/note given every key.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use custodian_core::note::{KeyType, Note, SignerKey, VerifierKey, typed_key_id};
use custodian_core::witness::{AddCheckpoint, WitnessPolicy};
use custodian_testkit::{Daemon, TestLog, WitnessProcess, signature_lines, write_log_key};

use crate::ledger::{TOKEN, append, client};
use crate::{go_bin, run_ok};

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts litewitness named `name` for the log `log_vkey`, with its Ed25519 key in a dedicated
/// ssh-agent as its README prescribes; returns the processes and its cosignature vkey and URL.
fn start_litewitness(dir: &Path, name: &str, log_vkey: &str) -> (Vec<Killed>, String, String) {
    std::fs::create_dir_all(dir).expect("dir");
    let key = dir.join("litewitness");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key),
    );
    let socket = dir.join("agent.sock");
    let agent = Killed(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    run_ok(
        Command::new("ssh-add")
            .env("SSH_AUTH_SOCK", &socket)
            .arg(&key),
    );
    let fingerprint = run_ok(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(key.with_extension("pub")),
    )
    .split_whitespace()
    .nth(1)
    .expect("fingerprint")
    .to_string();
    // The witness's cosignature vkey: its Ed25519 public key, the last 32 bytes of the SSH
    // wire-format blob, under type byte 0x04 (C2SP tlog-cosignature).
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
    let blob = STANDARD
        .decode(public.split_whitespace().nth(1).expect("blob"))
        .expect("base64");
    let raw: [u8; 32] = blob[blob.len() - 32..].try_into().expect("32 bytes");
    let mut typed = vec![KeyType::CosignatureV1.byte()];
    typed.extend_from_slice(&raw);
    let vkey = format!(
        "{name}+{:08x}+{}",
        typed_key_id(name, KeyType::CosignatureV1, &raw),
        STANDARD.encode(typed)
    );
    // What `witnessctl add-log` and `add-key` write (witnessctl itself needs sigsum-go, which the
    // module proxy here does not serve): the log at size 0 with the empty tree's hash, and its key.
    let db = dir.join("litewitness.db");
    let origin = log_vkey.split('+').next().expect("origin");
    let script = format!(
        "import sqlite3\n\
         db = sqlite3.connect({db:?})\n\
         db.executescript('''CREATE TABLE IF NOT EXISTS log (origin TEXT PRIMARY KEY, tree_size INTEGER NOT NULL, tree_hash TEXT NOT NULL);\n\
         CREATE TABLE IF NOT EXISTS key (origin TEXT NOT NULL, key TEXT NOT NULL, FOREIGN KEY(origin) REFERENCES log(origin));''')\n\
         db.execute('INSERT INTO log (origin, tree_size, tree_hash) VALUES (?, 0, ?)', ({origin:?}, '47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='))\n\
         db.execute('INSERT INTO key (origin, key) VALUES (?, ?)', ({origin:?}, {log_vkey:?}))\n\
         db.commit()\n",
        db = db.display().to_string()
    );
    run_ok(Command::new("python3").args(["-c", &script]));
    let port = custodian_testkit::free_port();
    let litewitness = Killed(
        Command::new(go_bin("litewitness"))
            .arg("-db")
            .arg(&db)
            .args(["-name", name, "-key", &fingerprint, "-ssh-agent"])
            .arg(&socket)
            .args(["-listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("litewitness"),
    );
    wait_for_port(port);
    (
        vec![litewitness, agent],
        vkey,
        format!("http://127.0.0.1:{port}"),
    )
}

#[tokio::test]
async fn litewitness_cosigns_our_log_and_tesseras_client_accepts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log_vkey = write_log_key(&data, "e2e.test/litewitnessed", 31);
    let (_peers, lite_vkey, lite_url) =
        start_litewitness(&dir.path().join("lite"), "lite.e2e.test", &log_vkey);
    let policy_file = dir.path().join("policy.txt");
    let policy_text = format!("log {log_vkey}\nwitness lite {lite_vkey} {lite_url}\nquorum lite\n");
    std::fs::write(&policy_file, &policy_text).expect("policy");
    let policy = WitnessPolicy::parse(&policy_text).expect("policy");
    let daemon = Daemon::start_with(
        &data,
        &[
            "--append-token",
            TOKEN,
            "--witness-policy",
            policy_file.to_str().expect("path"),
        ],
    );
    let mut log = client(&daemon).await;
    let lite = VerifierKey::parse(&lite_vkey).expect("litewitness vkey");
    let old_file = dir.path().join("old.checkpoint");
    for i in 0..300 {
        let receipt = append(&mut log, i).await.expect("append");
        if i == 4 || i == 299 {
            // The receipt's checkpoint carries litewitness's cosignature, verified here.
            let note = Note::parse(receipt.checkpoint.as_bytes()).expect("note");
            assert!(note.signed_by(&lite).expect("cosigned").is_some());
            let size: u64 = note.text.lines().nth(1).expect("size").parse().expect("n");
            policy
                .check(receipt.checkpoint.as_bytes(), size)
                .expect("quorum");
        }
        if i == 4 {
            std::fs::write(&old_file, &receipt.checkpoint).expect("old");
            std::fs::write(dir.path().join("receipt.json"), &receipt.json).expect("receipt");
        }
    }
    std::fs::write(dir.path().join("log.vkey"), &log_vkey).expect("vkey");
    let verified = Command::new(custodian_testkit::binary())
        .args(["log", "verify-receipt"])
        .arg(dir.path().join("receipt.json"))
        .arg("--key")
        .arg(dir.path().join("log.vkey"))
        .arg("--witness-policy")
        .arg(&policy_file)
        .output()
        .expect("verify-receipt");
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    // Tessera's HTTP client reads the served checkpoint and tiles; Tessera's policy evaluation
    // accepts the cosignature; sumdb/note opens it with the formats package's cosignature
    // verifier; inclusion and consistency proofs built from our tiles verify.
    let size = run_ok(
        Command::new(go_bin("custodian-interop"))
            .args(["read-log", &format!("{}/log", daemon.rest), &log_vkey])
            .arg(&policy_file)
            .arg(&old_file),
    );
    assert_eq!(size.trim(), "300");
}

#[tokio::test]
async fn our_witness_cosigns_a_tessera_posix_log_and_our_monitor_follows_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys =
        run_ok(Command::new(go_bin("custodian-interop")).args(["keygen", "example.com/tessera"]));
    let mut lines = keys.lines();
    let (signer, vkey) = (
        lines.next().expect("skey").to_string(),
        lines.next().expect("vkey").to_string(),
    );
    let witness = WitnessProcess::start(&dir.path().join("w"), "w.e2e.test", &[&vkey]);
    let policy_file = dir.path().join("policy.txt");
    std::fs::write(
        &policy_file,
        format!("{}quorum w\n", witness.policy_line("w")),
    )
    .expect("policy");
    let log_dir = dir.path().join("tessera");
    for round in 0..2 {
        // Tessera appends, gathers our cosignature and publishes only with it.
        let out = run_ok(
            Command::new(go_bin("custodian-interop"))
                .arg("tessera-log")
                .arg(&log_dir)
                .arg(&signer)
                .arg(&policy_file)
                .arg("40"),
        );
        assert!(out.starts_with("appended 40"), "round {round}: {out}");
        // The checkpoint on disk carries our witness's cosignature, checked with our code too.
        let checkpoint = std::fs::read(log_dir.join("checkpoint")).expect("checkpoint");
        let note = Note::parse(&checkpoint).expect("note");
        let ours = VerifierKey::parse(&witness.vkey).expect("vkey");
        assert!(note.signed_by(&ours).expect("cosigned").is_some());
        // Our monitor follows the Tessera log through its tiles, with the policy.
        let monitored = Command::new(custodian_testkit::binary())
            .args(["log", "monitor", "--log"])
            .arg(format!("file://{}", log_dir.display()))
            .args(["--key", &vkey, "--state"])
            .arg(dir.path().join("monitor.state"))
            .arg("--witness-policy")
            .arg(&policy_file)
            .output()
            .expect("monitor");
        assert!(
            monitored.status.success(),
            "round {round}: {}{}",
            String::from_utf8_lossy(&monitored.stdout),
            String::from_utf8_lossy(&monitored.stderr)
        );
    }
    // The witness remembers the Tessera log at its full size.
    let about = reqwest::get(format!("{}/", witness.url))
        .await
        .expect("GET /")
        .text()
        .await
        .expect("body");
    assert!(
        about.contains("example.com/tessera  cosigned size 80"),
        "{about}"
    );
}

/// What our witness serves to monitors (`GET /checkpoint/<origin>`) opens with sumdb/note given
/// every key of the log and the witness's, even when the checkpoint it cosigned came with a bad
/// signature from one of the log's keys and another witness's cosignature: it keeps one verified
/// line of each key and its own (`note.Open` refuses a note with a bad signature from a key it
/// was given).
#[tokio::test]
async fn what_our_witness_serves_to_monitors_opens_with_sumdb_note() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = TestLog::new("example.com/rotating", 1);
    log.grow(9, 1);
    let mut rotated = TestLog::new("example.com/rotating", 2);
    rotated.leaves = log.leaves.clone();
    let (log_vkey, rotated_vkey) = (
        log.signer.verifier().to_string(),
        rotated.signer.verifier().to_string(),
    );
    let witness = WitnessProcess::start(
        &dir.path().join("w"),
        "w.e2e.test",
        &[&log_vkey, &rotated_vkey],
    );
    let checkpoint = log.checkpoint(9);
    let text = checkpoint.rsplit_once("\n\n").expect("note").0.to_string() + "\n";
    let other =
        SignerKey::from_seed_typed("witness.example/other", KeyType::CosignatureV1, [8; 32])
            .expect("key");
    let sent = format!(
        "{checkpoint}{}{}",
        signature_lines(&rotated.checkpoint(8)),
        other.cosign(&text, 1).expect("cosign")
    );
    let body = AddCheckpoint {
        old_size: 0,
        proof: Vec::new(),
        checkpoint: sent.into_bytes(),
    }
    .to_body();
    let answer = reqwest::Client::new()
        .post(format!("{}/add-checkpoint", witness.url))
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(answer.status().as_u16(), 200);
    let served = reqwest::get(format!("{}/checkpoint/example.com/rotating", witness.url))
        .await
        .expect("GET")
        .text()
        .await
        .expect("body");
    let file = dir.path().join("served");
    std::fs::write(&file, &served).expect("write");
    let opened = run_ok(
        Command::new(go_bin("custodian-interop"))
            .arg("open-note")
            .arg(&file)
            .args([&log_vkey, &rotated_vkey, &witness.vkey]),
    );
    assert_eq!(opened, "example.com/rotating\nw.e2e.test\n", "{served}");
}
