//! Witnessing, both roles, end to end: `custodian witness serve` answering every status of the
//! C2SP tlog-witness matrix; a daemon under `--witness-policy` publishing only checkpoints its
//! quorum cosigned, surviving witness outages without losing an append; a split view (two logs
//! under one key) refused by the witness and by `verify --witness-policy`; and a witness killed
//! with SIGKILL in the middle of 200 concurrent `add-checkpoint` calls from two histories of one
//! log, which must never have cosigned both.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use custodian_core::checkpoint::Checkpoint;
use custodian_core::merkle::Hash;
use custodian_core::note::Note;
use custodian_core::witness::{AddCheckpoint, WitnessPolicy};
use custodian_testkit::{Daemon, TestLog, WitnessProcess, write_log_key};

use crate::ledger::{TOKEN, append, client};

/// POSTs an add-checkpoint body; returns the status, the content type and the body.
async fn add_checkpoint(url: &str, body: Vec<u8>) -> (u16, String, String) {
    let response = reqwest::Client::new()
        .post(format!("{url}/add-checkpoint"))
        .body(body)
        .send()
        .await
        .expect("POST add-checkpoint");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, content_type, response.text().await.expect("body"))
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(custodian_testkit::binary())
        .args(args)
        .output()
        .expect("run custodian")
}

/// Runs `custodian log verify-receipt` on a receipt file, with a witness policy if given.
fn verify_receipt(receipt: &Path, key: &Path, policy: Option<&Path>) -> std::process::Output {
    let mut args = vec!["log", "verify-receipt", path(receipt), "--key", path(key)];
    if let Some(policy) = policy {
        args.extend(["--witness-policy", path(policy)]);
    }
    cli(&args)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test]
async fn the_witness_answers_every_status_of_the_tlog_witness_matrix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = TestLog::new("example.com/matrix", 1);
    log.grow(40, 1);
    let vkey = log.signer.verifier().to_string();
    let empty = TestLog::new("example.com/empty", 4);
    let empty_vkey = empty.signer.verifier().to_string();
    let witness = WitnessProcess::start(&dir.path().join("w"), "w.e2e.test", &[&vkey, &empty_vkey]);
    let url = &witness.url;
    let witness_key = custodian_core::note::VerifierKey::parse(&witness.vkey).expect("vkey");

    // 200: first contact (old 0), the body is a cosignature/v1 line that verifies.
    let (status, _, body) = add_checkpoint(url, log.request(0, 10)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("\u{2014} w.e2e.test "), "{body:?}");
    let cosigned = format!("{}{body}", log.checkpoint(10));
    let note = Note::parse(cosigned.as_bytes()).expect("note");
    assert!(note.signed_by(&witness_key).expect("cosignature").is_some());
    // 200: growth with a consistency proof; the same checkpoint again is fine too.
    assert_eq!(add_checkpoint(url, log.request(10, 25)).await.0, 200);
    assert_eq!(add_checkpoint(url, log.request(25, 25)).await.0, 200);

    // 409 with text/x.tlog.size: a stale old size; the body is the size to resend from.
    let (status, content_type, body) = add_checkpoint(url, log.request(10, 30)).await;
    assert_eq!(
        (status, content_type.as_str(), body.as_str()),
        (409, "text/x.tlog.size", "25\n")
    );
    // 404: an origin the witness is not configured for.
    let mut stranger = TestLog::new("example.com/stranger", 2);
    stranger.grow(3, 2);
    let (status, _, body) = add_checkpoint(url, stranger.request(0, 3)).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("example.com/stranger"), "{body}");
    // 403: the right origin signed by a key the witness does not trust.
    let mut impostor = TestLog::new("example.com/matrix", 3);
    impostor.leaves = log.leaves.clone();
    let (status, _, body) = add_checkpoint(url, impostor.request(25, 30)).await;
    assert_eq!(status, 403, "{body}");
    // 400: old size larger than the checkpoint's.
    let mut body = b"old 31\n\n".to_vec();
    body.extend_from_slice(log.checkpoint(30).as_bytes());
    let (status, _, text) = add_checkpoint(url, body).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("old size 31"), "{text}");
    // 422: a proof that does not verify.
    let mut body = log.request(25, 30);
    let at = body.iter().position(|&b| b == b'\n').expect("line") + 2;
    body[at] = if body[at] == b'A' { b'B' } else { b'A' };
    let (status, _, text) = add_checkpoint(url, body).await;
    assert_eq!(status, 422, "{text}");
    // 409: a different root at the cosigned size (a split view), and 422 for a longer fork.
    let fork = log.fork(20, 20);
    let (status, _, text) = add_checkpoint(url, fork.request(25, 25)).await;
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("split view"), "{text}");
    assert_eq!(add_checkpoint(url, fork.request(25, 40)).await.0, 422);
    // 422: from the cosigned size to itself the proof is empty (RFC 6962 section 2.1.2).
    let padded = AddCheckpoint {
        old_size: 25,
        proof: vec![log.root(3)],
        checkpoint: log.checkpoint(25).into_bytes(),
    };
    let (status, _, text) = add_checkpoint(url, padded.to_body()).await;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("must be empty"), "{text}");
    // 422: a checkpoint of size 0 whose root is not the empty tree's; 200 with it.
    let bogus = AddCheckpoint {
        old_size: 0,
        proof: Vec::new(),
        checkpoint: Checkpoint::new("example.com/empty", 0, Hash([7; 32]))
            .sign(&empty.signer)
            .expect("sign")
            .into_bytes(),
    };
    let (status, _, text) = add_checkpoint(url, bogus.to_body()).await;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("empty tree"), "{text}");
    assert_eq!(add_checkpoint(url, empty.request(0, 0)).await.0, 200);
    // 400 with a clear text, never 5xx: malformed bodies and one over the limit.
    for (body, needle) in [
        (b"old 1\n".to_vec(), "proof section"),
        (b"hello\n\n".to_vec(), "old <size>"),
        (b"old 01\n\n".to_vec(), "leading zeros"),
        (vec![b'a'; 70_000], "limit"),
    ] {
        let (status, _, text) = add_checkpoint(url, body).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(needle), "{needle}: {text}");
    }
    // The witness still holds size 25 after all that, and says so.
    let about = reqwest::get(format!("{url}/"))
        .await
        .expect("GET /")
        .text()
        .await
        .expect("body");
    assert!(about.contains(&witness.vkey), "{about}");
    assert!(
        about.contains("example.com/matrix  cosigned size 25"),
        "{about}"
    );
    let latest = reqwest::get(format!("{url}/checkpoint/example.com/matrix"))
        .await
        .expect("GET checkpoint")
        .text()
        .await
        .expect("body");
    let note = Note::parse(latest.as_bytes()).expect("note");
    assert!(
        note.text.starts_with("example.com/matrix\n25\n"),
        "{latest}"
    );
    assert!(note.signed_by(&witness_key).is_ok());
    assert!(note.signed_by(&log.signer.verifier()).is_ok());
    let missing = reqwest::get(format!("{url}/checkpoint/example.com/stranger"))
        .await
        .expect("GET");
    assert_eq!(missing.status().as_u16(), 404);
}

/// Three witnesses and a policy file requiring two of them; returns the policy's path.
fn two_of_three(dir: &Path, log_vkey: &str) -> (Vec<WitnessProcess>, PathBuf) {
    let witnesses: Vec<WitnessProcess> = (1..=3)
        .map(|i| {
            WitnessProcess::start(
                &dir.join(format!("w{i}")),
                &format!("w{i}.e2e.test"),
                &[log_vkey],
            )
        })
        .collect();
    let mut policy = format!("log {log_vkey}\n");
    for (label, w) in ["a", "b", "c"].iter().zip(&witnesses) {
        policy.push_str(&w.policy_line(label));
    }
    policy.push_str("group two-of-three 2 a b c\nquorum two-of-three\n");
    let file = dir.join("policy.txt");
    std::fs::write(&file, policy).expect("policy");
    (witnesses, file)
}

fn witnessed_daemon(data: &Path, policy: &Path, patience: &str) -> Daemon {
    Daemon::start_with(
        data,
        &[
            "--append-token",
            TOKEN,
            "--witness-policy",
            path(policy),
            "--witness-timeout",
            "2s",
            "--witness-unreachable",
            "uncosigned",
            "--witness-patience",
            patience,
        ],
    )
}

async fn published_checkpoint(daemon: &Daemon) -> String {
    reqwest::get(format!("{}/log/checkpoint", daemon.rest))
        .await
        .expect("GET checkpoint")
        .text()
        .await
        .expect("body")
}

#[tokio::test]
async fn a_log_publishes_only_checkpoints_its_witness_quorum_cosigned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let vkey = write_log_key(&data, "e2e.test/witnessed", 7);
    std::fs::write(dir.path().join("log.vkey"), &vkey).expect("vkey");
    let (mut witnesses, policy_file) = two_of_three(dir.path(), &vkey);
    let policy = WitnessPolicy::parse(&std::fs::read_to_string(&policy_file).expect("policy"))
        .expect("policy");
    let mut daemon = witnessed_daemon(&data, &policy_file, "3s");
    let mut log = client(&daemon).await;

    // Every append's receipt carries the quorum, and so does the served checkpoint.
    let mut last = None;
    for i in 0..5 {
        let receipt = append(&mut log, i).await.expect("append");
        let size = checkpoint_size(&receipt.checkpoint);
        assert!(size > receipt.log_index);
        let cosigners = policy
            .check(receipt.checkpoint.as_bytes(), size)
            .expect("the receipt's checkpoint carries the quorum");
        assert!(cosigners.len() >= 2, "{cosigners:?}");
        last = Some(receipt);
    }
    let receipt = last.expect("receipt");
    let receipt_file = dir.path().join("receipt.json");
    std::fs::write(&receipt_file, &receipt.json).expect("receipt");
    let key_file = dir.path().join("log.vkey");
    let ok = verify_receipt(&receipt_file, &key_file, Some(&policy_file));
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.contains("witnesses"), "{out}");
    let served = published_checkpoint(&daemon).await;
    assert!(policy.check(served.as_bytes(), 5).is_ok(), "{served}");

    // One witness down: two of three still cosign, appends are still witnessed.
    witnesses[0].kill9();
    let receipt = append(&mut log, 5).await.expect("append");
    assert!(
        policy
            .check(
                receipt.checkpoint.as_bytes(),
                checkpoint_size(&receipt.checkpoint)
            )
            .is_ok()
    );

    // Two down: the quorum is unreachable. The append is not lost: after the policy's patience
    // it is answered with the log-signed checkpoint alone, which a verifier holding the policy
    // refuses while one without it accepts; the served checkpoint stays the last cosigned one.
    witnesses[1].kill9();
    let started = Instant::now();
    let receipt = append(&mut log, 6)
        .await
        .expect("append while witnesses are down");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it waited its patience first"
    );
    assert_eq!(receipt.log_index, 6);
    std::fs::write(&receipt_file, &receipt.json).expect("receipt");
    let refused = verify_receipt(&receipt_file, &key_file, Some(&policy_file));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(
        err.contains("lacks its witness quorum")
            && err.contains("group two-of-three needs 2 of 3 members, 0 cosigned"),
        "{err}"
    );
    let plain = verify_receipt(&receipt_file, &key_file, None);
    assert!(plain.status.success());
    let served = published_checkpoint(&daemon).await;
    assert!(
        served.contains("\n6\n"),
        "still the cosigned size 6: {served}"
    );

    // A witness comes back: the log catches up and publishes the cosigned checkpoint of size 7.
    witnesses[0].restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let served = published_checkpoint(&daemon).await;
        if served.contains("\n7\n") && policy.check(served.as_bytes(), 7).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "never re-cosigned: {served}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A receipt fetched now carries the quorum.
    let fetched = cli(&[
        "log",
        "receipt",
        "6",
        "-o",
        path(&receipt_file),
        "--server",
        &daemon.address,
    ]);
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let ok = verify_receipt(&receipt_file, &key_file, Some(&policy_file));
    assert!(
        ok.status.success(),
        "{}\n{}\nserved: {}",
        String::from_utf8_lossy(&ok.stderr),
        std::fs::read_to_string(&receipt_file).unwrap_or_default(),
        published_checkpoint(&daemon).await
    );

    // After a crash the daemon serves the cosigned checkpoint it kept, at once.
    daemon.restart_after_kill9();
    let served = published_checkpoint(&daemon).await;
    assert!(policy.check(served.as_bytes(), 7).is_ok(), "{served}");

    // An export audits, and its newest checkpoint carries the quorum.
    let export = dir.path().join("export");
    let exported = cli(&["log", "export", path(&export), "--server", &daemon.address]);
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let audit = cli(&[
        "audit",
        path(&export),
        "--key",
        path(&key_file),
        "--witness-policy",
        path(&policy_file),
    ]);
    let out = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    assert!(out.contains("carries the witness quorum"), "{out}");
}

#[tokio::test]
async fn a_split_view_is_refused_by_the_witness_the_monitor_and_the_verifier() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two daemons with one key and one origin: the same log to anyone holding the key.
    let honest_dir = dir.path().join("honest");
    let evil_dir = dir.path().join("evil");
    let vkey = write_log_key(&honest_dir, "e2e.test/split", 9);
    write_log_key(&evil_dir, "e2e.test/split", 9);
    let key_file = dir.path().join("log.vkey");
    std::fs::write(&key_file, &vkey).expect("vkey");
    let witness = WitnessProcess::start(&dir.path().join("w"), "w.e2e.test", &[&vkey]);
    let policy_file = dir.path().join("policy.txt");
    std::fs::write(
        &policy_file,
        format!("{}quorum a\n", witness.policy_line("a")),
    )
    .expect("policy");

    let honest = witnessed_daemon(&honest_dir, &policy_file, "2s");
    let mut log = client(&honest).await;
    for i in 0..3 {
        append(&mut log, i).await.expect("honest append");
    }
    // The monitor accepts the honest view.
    let state = dir.path().join("monitor.state");
    let monitor = |rest: &str| {
        cli(&[
            "log",
            "monitor",
            "--log",
            &format!("{rest}/log"),
            "--key",
            path(&key_file),
            "--state",
            path(&state),
            "--witness-policy",
            path(&policy_file),
        ])
    };
    let first = monitor(&honest.rest);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    // The evil twin writes other entries under the same key. The witness refuses its
    // checkpoints (it cosigned the honest size 3 already), so it never gets a quorum.
    let evil = witnessed_daemon(&evil_dir, &policy_file, "2s");
    let mut twin = client(&evil).await;
    let mut receipt = None;
    for i in 100..104 {
        receipt = Some(append(&mut twin, i).await.expect("evil append (durable)"));
    }
    let receipt = receipt.expect("receipt");
    let note = Note::parse(receipt.checkpoint.as_bytes()).expect("note");
    let witness_key = custodian_core::note::VerifierKey::parse(&witness.vkey).expect("vkey");
    assert!(
        note.signed_by(&witness_key).is_err(),
        "the witness must not cosign the split view"
    );
    let receipt_file = dir.path().join("evil.receipt.json");
    std::fs::write(&receipt_file, &receipt.json).expect("receipt");
    let refused = verify_receipt(&receipt_file, &key_file, Some(&policy_file));
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("lacks its witness quorum"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // Without the policy the signature alone verifies: exactly the gap witnesses close.
    let plain = verify_receipt(&receipt_file, &key_file, None);
    assert!(plain.status.success());
    // The evil daemon serves no cosigned checkpoint beyond its empty start, and the monitor
    // pointed at it refuses; without the policy it catches the rollback by size.
    let served = published_checkpoint(&evil).await;
    assert!(served.contains("\n0\n"), "{served}");
    let caught = monitor(&evil.rest);
    assert_eq!(caught.status.code(), Some(1));
    let err = String::from_utf8_lossy(&caught.stderr);
    assert!(err.contains("monitor FAILED"), "{err}");
    // And the witness still holds the honest view, so the honest log keeps growing cosigned.
    let receipt = append(&mut log, 3).await.expect("honest append");
    let note = Note::parse(receipt.checkpoint.as_bytes()).expect("note");
    assert!(note.signed_by(&witness_key).is_ok());
    let again = monitor(&honest.rest);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[tokio::test]
async fn a_witness_killed_during_200_concurrent_calls_never_cosigns_two_histories() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Log one has two histories under its key that diverge after 8 entries; log two is honest.
    let mut one = TestLog::new("example.com/one", 21);
    one.grow(200, 1);
    let fork = one.fork(8, 192);
    let mut two = TestLog::new("example.com/two", 22);
    two.grow(200, 2);
    let vkeys = [
        one.signer.verifier().to_string(),
        two.signer.verifier().to_string(),
    ];
    let mut witness =
        WitnessProcess::start(&dir.path().join("w"), "w.e2e.test", &[&vkeys[0], &vkeys[1]]);
    let witness_key = custodian_core::note::VerifierKey::parse(&witness.vkey).expect("vkey");
    let url = witness.url.clone();

    // 200 callers, each growing one history to its own size: they race on the witness's old
    // size and resend after 409s with proofs from their own history, as a log would.
    let histories = [one.clone(), fork.clone(), two.clone()];
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for caller in 0..200usize {
        let history = histories[caller % 3].clone();
        let url = url.clone();
        let size = 9 + (caller as u64 * 7) % 190;
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut old = 0;
            for _ in 0..20 {
                if old > size {
                    return None;
                }
                let Ok(response) = http
                    .post(format!("{url}/add-checkpoint"))
                    .body(history.request(old, size))
                    .send()
                    .await
                else {
                    return None; // The witness was killed under this call.
                };
                let status = response.status().as_u16();
                let Ok(body) = response.text().await else {
                    return None;
                };
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match status {
                    200 => return Some((caller % 3, size, history.checkpoint(size) + &body)),
                    409 if body.ends_with('\n') && body.trim().parse::<u64>().is_ok() => {
                        old = body.trim().parse().expect("size");
                    }
                    _ => return None,
                }
            }
            None
        }));
    }
    // Kill the witness in the middle of the storm: once it has answered 60 calls.
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.load(std::sync::atomic::Ordering::Relaxed) < 60 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    witness.kill9();
    let at_kill = answered.load(std::sync::atomic::Ordering::Relaxed);
    let mut cosigned = Vec::new();
    for task in tasks {
        if let Some(result) = task.await.expect("task") {
            cosigned.push(result);
        }
    }
    let finished = answered.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        at_kill >= 60,
        "the storm never got going ({at_kill} answers)"
    );
    eprintln!("witness crash: killed after {at_kill} answers; {finished} answered in all");
    witness.restart();
    // What the witness holds after the crash was cosigned too (or is the newest it promised).
    for (i, origin) in ["example.com/one", "example.com/two"].iter().enumerate() {
        let response = reqwest::get(format!("{}/checkpoint/{origin}", witness.url))
            .await
            .expect("GET");
        if response.status().as_u16() == 200 {
            let note = response.text().await.expect("body");
            let size: u64 = note.lines().nth(1).expect("size").parse().expect("size");
            let history = if i == 0 {
                // Which history of log one the witness kept is for it to say; the check below
                // is that everything it cosigned agrees with one of them.
                if note.contains(&base64_root(&one, size)) {
                    0
                } else {
                    1
                }
            } else {
                2
            };
            cosigned.push((history, size, note));
        }
    }
    // Every cosignature verifies, and for log one all of them lie on one history: beyond the
    // shared first 8 entries, never both.
    let mut sides = std::collections::BTreeSet::new();
    for (history, size, note) in &cosigned {
        let parsed = Note::parse(note.as_bytes()).expect("note");
        assert!(parsed.signed_by(&witness_key).is_ok(), "{note}");
        let expected = match history {
            0 => &one,
            1 => &fork,
            _ => &two,
        };
        assert!(note.contains(&base64_root(expected, *size)), "{note}");
        if *history < 2 && *size > 8 {
            sides.insert(*history);
        }
    }
    assert!(
        sides.len() <= 1,
        "the witness cosigned both histories of example.com/one: {cosigned:?}"
    );
    assert!(
        !cosigned.is_empty(),
        "the witness cosigned nothing before it was killed"
    );
    // And after the restart it still refuses the other history.
    let kept = if sides.contains(&1) { &fork } else { &one };
    let other = if sides.contains(&1) { &one } else { &fork };
    let size = reqwest::get(format!("{}/checkpoint/example.com/one", witness.url))
        .await
        .expect("GET")
        .text()
        .await
        .expect("body")
        .lines()
        .nth(1)
        .map(|s| s.parse::<u64>().unwrap_or(0))
        .unwrap_or(0);
    if size > 8 {
        let (status, _, _) = add_checkpoint(&witness.url, other.request(size, 200)).await;
        assert_eq!(status, 422, "the other history after the restart");
        let (status, _, body) = add_checkpoint(&witness.url, kept.request(size, 200)).await;
        assert_eq!(status, 200, "{body}");
    }
}

/// The tree size a signed checkpoint states.
fn checkpoint_size(note: &str) -> u64 {
    note.lines()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a checkpoint's size line")
}

fn base64_root(log: &TestLog, size: u64) -> String {
    use base64::Engine as _;
    format!(
        "\n{size}\n{}\n",
        base64::engine::general_purpose::STANDARD.encode(log.root(size).0)
    )
}
