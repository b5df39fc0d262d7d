//! Provable retention end to end: pins and legal holds as ledger entries, garbage collection
//! whose deletions are recorded first, `blob why`, 410 Gone; the GC race harness (uploads,
//! re-acknowledgements, publications and pins continuously while GC runs in a loop); and GC cut
//! by `kill -9`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use custodian_core::note::SignerKey;
use custodian_core::package::{FileEntry, PackageStatement};
use custodian_core::{Algorithm, Digest};
use custodian_proto::cas::v1 as pb;
use custodian_proto::cas::v1::content_store_client::ContentStoreClient;
use custodian_proto::registry::v1 as rpb;
use custodian_testkit::Daemon;

use crate::pattern;
use custodian_client::Conn as Authed;

/// The grace period (and upload expiry) the harnesses run with, in seconds.
const GRACE_S: u64 = 1;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a retention test step")
        .as_millis() as u64
}

fn short_grace_daemon(dir: &std::path::Path) -> Daemon {
    let mut daemon = Daemon::start(dir);
    daemon.restart_with_env(&[("CUSTODIAN_UPLOAD_EXPIRY", format!("{GRACE_S}s"))]);
    daemon
}

async fn batch_put(store: &mut ContentStoreClient<Authed>, blobs: &[Bytes]) {
    let answer = store
        .batch_put(pb::BatchPutRequest {
            items: blobs
                .iter()
                .map(|b| pb::BatchPutItem {
                    expected_digest: String::new(),
                    data: b.clone(),
                })
                .collect(),
        })
        .await
        .expect("batch put")
        .into_inner();
    for result in answer.results {
        assert!(result.error.is_none(), "{:?}", result.error);
    }
}

async fn gc(
    store: &mut ContentStoreClient<Authed>,
    grace_s: u64,
    dry_run: bool,
) -> Result<pb::CollectGarbageResponse, tonic::Status> {
    store
        .collect_garbage(pb::CollectGarbageRequest {
            grace_seconds: Some(grace_s),
            dry_run,
        })
        .await
        .map(|r| r.into_inner())
}

async fn why(store: &mut ContentStoreClient<Authed>, digest: &Digest) -> pb::WhyResponse {
    store
        .why(pb::WhyRequest {
            digest: digest.to_string(),
            grace_seconds: Some(GRACE_S),
        })
        .await
        .expect("why")
        .into_inner()
}

fn sha(data: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, data)
}

fn cli_ok(daemon: &Daemon, args: &[&str]) -> String {
    let out = daemon.cli(args);
    assert!(
        out.status.success(),
        "custodian {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli_err(daemon: &Daemon, args: &[&str]) -> String {
    let out = daemon.cli(args);
    assert!(!out.status.success(), "custodian {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Pins, holds, `gc --dry-run`, `gc`, `blob why`, `blob delete`, 410 Gone, the audit of the
/// export, and the bad input each command refuses.
#[tokio::test(flavor = "multi_thread")]
async fn pins_holds_and_gc_leave_a_record() {
    let dir = tempfile::tempdir().expect("a retention test step");
    let daemon = short_grace_daemon(&dir.path().join("data"));
    crate::registry::publish_example(&daemon, dir.path(), "pacman-builder", "publisher");
    let mut store = daemon.client().await;
    let (pinned, held, loose, acked) = (
        pattern(9001, 3000),
        pattern(9002, 3000),
        pattern(9003, 3000),
        pattern(9004, 3000),
    );
    batch_put(
        &mut store,
        &[pinned.clone(), held.clone(), loose.clone(), acked.clone()],
    )
    .await;
    let (pinned_d, held_d, loose_d, acked_d) = (sha(&pinned), sha(&held), sha(&loose), sha(&acked));

    // Bad input: a pin on a digest not in custody, a hold without a reason, a grace shorter
    // than the upload expiry, an unknown version, an unpin of nothing.
    let unknown = sha(b"never stored");
    let err = cli_err(&daemon, &["pin", &unknown.to_string()]);
    assert!(
        err.contains("not in custody") && err.contains(&unknown.to_string()),
        "{err}"
    );
    let err = cli_err(&daemon, &["hold", &held_d.to_string()]);
    assert!(
        err.contains("field reason") && err.contains("legal hold"),
        "{err}"
    );
    let err = cli_err(&daemon, &["gc", "--grace", "0s"]);
    assert!(
        err.contains("field grace") && err.contains("upload session expiry"),
        "{err}"
    );
    let err = cli_err(&daemon, &["pin", "pacman-builder@9.9.9"]);
    assert!(err.contains("9.9.9"), "{err}");
    let err = cli_err(&daemon, &["unpin", &loose_d.to_string()]);
    assert!(err.contains("no pin"), "{err}");
    let anonymous = daemon.cli_as(None, &["gc", "--dry-run"]);
    assert!(!anonymous.status.success());

    let out = cli_ok(
        &daemon,
        &["pin", &pinned_d.to_string(), "--expires", "1h", "--json"],
    );
    let pin: serde_json::Value = serde_json::from_str(&out).expect("a retention test step");
    assert_eq!(pin["digests"][0], pinned_d.to_string());
    cli_ok(
        &daemon,
        &[
            "hold",
            &held_d.to_string(),
            "--reason",
            "litigation 2026-17",
        ],
    );
    let version_pin = cli_ok(&daemon, &["pin", "pacman-builder@0.2.1", "--json"]);
    let version_pin: serde_json::Value =
        serde_json::from_str(&version_pin).expect("a retention test step");
    assert!(
        !version_pin["digests"]
            .as_array()
            .expect("a retention test step")
            .is_empty()
    );

    // Out of grace; then one blob is acknowledged again, which restarts its grace.
    tokio::time::sleep(Duration::from_millis(GRACE_S * 1000 + 300)).await;
    batch_put(&mut store, std::slice::from_ref(&acked)).await;

    let dry = cli_ok(&daemon, &["gc", "--dry-run", "--grace", "1s", "--json"]);
    let dry: serde_json::Value = serde_json::from_str(&dry).expect("a retention test step");
    let would: Vec<&str> = dry["deleted"]
        .as_array()
        .expect("a retention test step")
        .iter()
        .map(|d| d["digest"].as_str().expect("a retention test step"))
        .collect();
    assert_eq!(would, vec![loose_d.to_string().as_str()], "{dry}");
    assert!(
        dry["ledger_indexes"]
            .as_array()
            .expect("a retention test step")
            .is_empty()
    );
    assert!(
        store
            .stat(pb::StatRequest {
                digest: loose_d.to_string()
            })
            .await
            .is_ok(),
        "a dry run deletes nothing"
    );

    let done = cli_ok(&daemon, &["gc", "--grace", "1s", "--json"]);
    let done: serde_json::Value = serde_json::from_str(&done).expect("a retention test step");
    assert_eq!(done["deleted"][0]["digest"], loose_d.to_string(), "{done}");
    let entry = done["ledger_indexes"][0]
        .as_u64()
        .expect("a BlobsDeleted entry");

    // What is gone says where it went, on every face.
    let gone = daemon.cli(&["blob", "why", &loose_d.to_string(), "--json"]);
    assert_eq!(gone.status.code(), Some(1));
    let gone: serde_json::Value =
        serde_json::from_slice(&gone.stdout).expect("a retention test step");
    assert_eq!(gone["deleted"]["ledger_index"], entry, "{gone}");
    assert_eq!(gone["deleted"]["reason"], "garbage collection");
    let get = daemon.cli(&["blob", "get", &loose_d.to_string(), "-o", "-"]);
    let stderr = String::from_utf8_lossy(&get.stderr);
    assert!(
        stderr.contains(&format!("deleted from custody at ledger entry {entry}")),
        "{stderr}"
    );
    let rest = reqwest::get(format!("{}/blobs/{loose_d}", daemon.rest))
        .await
        .expect("a retention test step");
    assert_eq!(rest.status().as_u16(), 410);
    let body: serde_json::Value =
        serde_json::from_slice(&rest.bytes().await.expect("a retention test step"))
            .expect("a retention test step");
    assert_eq!(body["ledger_index"], entry);
    // The same by its BLAKE3 address: the entry records both digests.
    let loose_b3 = Digest::of(Algorithm::Blake3, &loose);
    let rest = reqwest::get(format!("{}/blobs/{loose_b3}", daemon.rest))
        .await
        .expect("a retention test step");
    assert_eq!(
        rest.status().as_u16(),
        410,
        "a deleted blob by its blake3 digest"
    );
    let gone = daemon.cli(&["blob", "why", &loose_b3.to_string(), "--json"]);
    let gone: serde_json::Value =
        serde_json::from_slice(&gone.stdout).expect("a retention test step");
    assert_eq!(gone["deleted"]["ledger_index"], entry, "{gone}");

    // What is kept says why.
    let kept = cli_ok(&daemon, &["blob", "why", &pinned_d.to_string(), "--json"]);
    assert!(kept.contains("pinned as"), "{kept}");
    let kept = cli_ok(&daemon, &["blob", "why", &held_d.to_string()]);
    assert!(
        kept.contains("legal hold") && kept.contains("litigation 2026-17"),
        "{kept}"
    );
    let kept = cli_ok(&daemon, &["blob", "why", &acked_d.to_string()]);
    assert!(kept.contains("within the grace period"), "{kept}");

    // A legal hold blocks every deletion path: GC (above), and an admin delete even forced.
    let err = cli_err(
        &daemon,
        &[
            "blob",
            "delete",
            &held_d.to_string(),
            "--reason",
            "cleanup",
            "--force",
        ],
    );
    assert!(
        err.contains("legal hold") && err.contains("release it first"),
        "{err}"
    );
    let err = cli_err(&daemon, &["release", &held_d.to_string()]);
    assert!(err.contains("field reason"), "{err}");
    cli_ok(
        &daemon,
        &["release", &held_d.to_string(), "--reason", "case closed"],
    );
    let deleted = cli_ok(
        &daemon,
        &[
            "blob",
            "delete",
            &held_d.to_string(),
            "--reason",
            "takedown request 42",
            "--json",
        ],
    );
    assert!(deleted.contains(&held_d.to_string()), "{deleted}");
    let gone = daemon.cli(&["blob", "why", &held_d.to_string()]);
    assert!(String::from_utf8_lossy(&gone.stdout).contains("takedown request 42"));

    // A pinned blob refuses an unforced admin delete; unpinned, GC takes it.
    let err = cli_err(
        &daemon,
        &[
            "blob",
            "delete",
            &pinned_d.to_string(),
            "--reason",
            "cleanup",
        ],
    );
    assert!(err.contains("pinned as"), "{err}");
    cli_ok(&daemon, &["unpin", &pinned_d.to_string()]);
    let again = cli_ok(&daemon, &["gc", "--grace", "1s", "--json"]);
    assert!(again.contains(&pinned_d.to_string()), "{again}");

    // The ledger with these entries still audits.
    let export = dir.path().join("export");
    cli_ok(
        &daemon,
        &[
            "log",
            "export",
            export.to_str().expect("a retention test step"),
        ],
    );
    let key = cli_ok(&daemon, &["log", "key"]);
    let audit = daemon.cli(&[
        "audit",
        export.to_str().expect("a retention test step"),
        "--key",
        key.trim(),
    ]);
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );

    // The offline reconciliation of a listing with an export, and what it catches.
    let acked_all = [pinned_d, held_d, loose_d, acked_d, loose_b3];
    let (verdict, ok) = reconcile_offline(&daemon, dir.path(), &acked_all, false, None);
    assert!(ok, "{verdict}");
    let r = &verdict["reconciliation"];
    assert!(r["absent_tombstoned"].as_u64() >= Some(2), "{verdict}");
    assert!(r["kept_by"]["reference"].as_u64() >= Some(1), "{verdict}");
    // A listing that lacks a published version's file: custody lost, and the audit says so.
    let file: Digest = version_pin["digests"][0]
        .as_str()
        .and_then(|d| d.parse().ok())
        .expect("the pinned version's first file");
    let (verdict, ok) = reconcile_offline(&daemon, dir.path(), &acked_all, false, Some(&file));
    assert!(!ok, "{verdict}");
    let missing = verdict["reconciliation"]["missing"].to_string();
    assert!(missing.contains(&file.to_string()), "{verdict}");
    assert!(missing.contains("reference"), "{verdict}");
    // A digest the store acknowledged that is neither present nor recorded deleted.
    let (verdict, ok) = reconcile_offline(&daemon, dir.path(), &[unknown], false, None);
    assert!(!ok, "{verdict}");
    assert!(
        verdict["reconciliation"]["unrecorded"]
            .to_string()
            .contains(&unknown.to_string()),
        "{verdict}"
    );
}

/// Lists the store (`blob list --json`), exports the log, and audits the export with
/// `--reconcile` (grace 1 s, `--collected` if asked), offline; `drop` takes one blob out of
/// the listing first, as a store that lost it would list. Returns the audit's JSON and whether
/// it passed (exit 0; a failed reconciliation exits 2).
fn reconcile_offline(
    daemon: &Daemon,
    dir: &std::path::Path,
    acknowledged: &[Digest],
    collected: bool,
    drop: Option<&Digest>,
) -> (serde_json::Value, bool) {
    let work = tempfile::tempdir_in(dir).expect("a reconciliation step");
    let listing = cli_ok(daemon, &["blob", "list", "--json"]);
    let listing: String = listing
        .lines()
        .filter(|l| drop.is_none_or(|d| !l.contains(&d.to_string())))
        .map(|l| format!("{l}\n"))
        .collect();
    let listing_file = work.path().join("listing.jsonl");
    std::fs::write(&listing_file, listing).expect("write the listing");
    let acks_file = work.path().join("acknowledged");
    let acks: String = acknowledged.iter().map(|d| format!("{d}\n")).collect();
    std::fs::write(&acks_file, acks).expect("write the acknowledged digests");
    let export = work.path().join("export");
    let path = |p: &std::path::Path| p.to_str().expect("a utf-8 path").to_string();
    cli_ok(daemon, &["log", "export", &path(&export)]);
    let key = cli_ok(daemon, &["log", "key"]);
    let mut args = vec![
        "audit".to_string(),
        path(&export),
        "--key".into(),
        key.trim().to_string(),
        "--reconcile".into(),
        path(&listing_file),
        "--acknowledged".into(),
        path(&acks_file),
        "--grace".into(),
        format!("{GRACE_S}s"),
        "--json".into(),
    ];
    if collected {
        args.push("--collected".into());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = daemon.cli(&refs);
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "audit --reconcile printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (verdict, out.status.success())
}

/// What the race harness's tasks saw: every acknowledgement with the time its request was
/// sent, the publications that succeeded, and the pins.
#[derive(Default)]
struct Seen {
    /// digest → (sent ms, acknowledged ms) of each put that was acknowledged.
    acks: HashMap<Digest, Vec<(u64, u64)>>,
    /// Bytes of every blob, to put again.
    bytes: Vec<Bytes>,
    /// Files of every version published successfully.
    published: Vec<Vec<Digest>>,
    /// (digest, acknowledged ms, sent ms + pin length) of each pin.
    pins: Vec<(Digest, u64, u64)>,
    /// Publications refused because a file was gone (allowed: nothing was acknowledged).
    refused: u64,
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().expect("a retention test step")
}

async fn publish_with(
    store: &mut ContentStoreClient<Authed>,
    registry: &mut custodian_proto::registry::v1::registry_client::RegistryClient<Authed>,
    publisher: &SignerKey,
    version: &str,
    files: &[(Digest, u64)],
) -> Result<(), tonic::Status> {
    let manifest = format!(
        "name: gc-harness\nversion: {version}\ntype: eval_suite\nbase_model: [m0]\nevals: [e0]\nlicense: Apache-2.0\n"
    );
    let digest = sha(manifest.as_bytes());
    batch_put(store, &[Bytes::from(manifest.clone())]).await;
    let mut entries = vec![FileEntry {
        path: "manifest.yaml".into(),
        sha256: digest,
        size: manifest.len() as u64,
    }];
    for (i, (d, size)) in files.iter().enumerate() {
        entries.push(FileEntry {
            path: format!("data/part-{i}.bin"),
            sha256: *d,
            size: *size,
        });
    }
    let statement =
        PackageStatement::new("gc-harness", version, "eval_suite", entries).expect("statement");
    registry
        .publish_version(rpb::PublishVersionRequest {
            envelope: statement.sign(publisher).to_json(),
            publisher_key: publisher.verifier().to_string(),
            visibility: 0,
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// The GC race: for 60 s, two uploaders put new blobs and re-put old ones, a publisher
/// publishes versions whose files are old blobs it does not upload again (the classic race),
/// and pins come and go, while garbage collection runs in a loop with a 1 s grace. Nothing
/// referenced, pinned, or acknowledged within the grace is ever deleted; everything deleted is
/// in a BlobsDeleted entry; afterwards the store and the ledger reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_never_deletes_what_is_kept_while_writes_continue() {
    let dir = tempfile::tempdir().expect("a retention test step");
    let daemon = short_grace_daemon(&dir.path().join("data"));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let run_for = Duration::from_secs(
        std::env::var("CUSTODIAN_GC_RACE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let deadline = Instant::now() + run_for;
    let publisher = Arc::new(SignerKey::from_seed("gc-harness", [31; 32]).expect("key"));
    let mut tasks = Vec::new();
    for worker in 0..2u64 {
        let mut store = daemon.client().await;
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let again = n.is_multiple_of(3);
                let blob = {
                    let s = lock(&seen);
                    if again && !s.bytes.is_empty() {
                        s.bytes[(n as usize * 7919 + worker as usize) % s.bytes.len()].clone()
                    } else {
                        pattern(worker * 1_000_000 + n, 512 + (n as usize * 37) % 4096)
                    }
                };
                let sent = now_ms();
                let answer = store
                    .batch_put(pb::BatchPutRequest {
                        items: vec![pb::BatchPutItem {
                            expected_digest: String::new(),
                            data: blob.clone(),
                        }],
                    })
                    .await
                    .expect("batch put")
                    .into_inner();
                if answer.results[0].error.is_none() {
                    let acked = now_ms();
                    let mut s = lock(&seen);
                    s.acks.entry(sha(&blob)).or_default().push((sent, acked));
                    if !again {
                        s.bytes.push(blob);
                    }
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }));
    }
    {
        let mut store = daemon.client().await;
        let mut registry = daemon.connect(Some(&daemon.token)).await.registry();
        let seen = seen.clone();
        let publisher = publisher.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                // Files among the oldest blobs, likely out of grace: the race GC must not win.
                let files: Vec<(Digest, u64)> = {
                    let s = lock(&seen);
                    if s.bytes.len() < 10 {
                        Vec::new()
                    } else {
                        (0..2)
                            .map(|k| {
                                let b = &s.bytes[(n as usize * 13 + k * 5) % (s.bytes.len() / 2)];
                                (sha(b), b.len() as u64)
                            })
                            .collect()
                    }
                };
                if files.is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let version = format!("0.0.{n}");
                match publish_with(&mut store, &mut registry, &publisher, &version, &files).await {
                    Ok(()) => lock(&seen)
                        .published
                        .push(files.iter().map(|(d, _)| *d).collect()),
                    Err(status) if status.message().contains("not in custody") => {
                        lock(&seen).refused += 1
                    }
                    Err(status) => panic!("publication {version} failed: {status}"),
                }
                // A pin on an old blob now and then, for 3 s.
                if n.is_multiple_of(4) {
                    let target = files[0].0;
                    let sent = now_ms();
                    if store
                        .retain(pb::RetainRequest {
                            action: "pin".into(),
                            subject: target.to_string(),
                            reason: String::new(),
                            expires_in_seconds: 3,
                        })
                        .await
                        .is_ok()
                    {
                        lock(&seen).pins.push((target, now_ms(), sent + 3000));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let mut collector = daemon.client().await;
    let mut runs = 0u64;
    let mut deleted_total = 0u64;
    while Instant::now() < deadline {
        let report = gc(&mut collector, GRACE_S, false).await.expect("gc");
        runs += 1;
        deleted_total += report.deleted_count;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        task.await.expect("a harness task");
    }
    let seen = Arc::try_unwrap(seen)
        .ok()
        .expect("a retention test step")
        .into_inner()
        .expect("a retention test step");
    eprintln!(
        "gc race: {runs} collections deleted {deleted_total} blobs; {} blobs acknowledged, {} versions published, {} refused for a missing file, {} pins",
        seen.acks.len(),
        seen.published.len(),
        seen.refused,
        seen.pins.len()
    );
    assert!(deleted_total > 0, "the harness exercised deletion");
    assert!(
        !seen.published.is_empty(),
        "the harness exercised publication"
    );

    let grace_ms = GRACE_S * 1000;
    let mut store = daemon.client().await;
    // Every published version's files are in custody: referenced blobs are never deleted.
    for files in &seen.published {
        for d in files {
            let w = why(&mut store, d).await;
            assert!(
                w.blob.is_some(),
                "{d} of a published version was deleted: {w:?}"
            );
        }
    }
    // Every acknowledged blob is present, or its latest deletion came a full grace period
    // after its latest acknowledgement was asked for, and outside every pin.
    for (digest, acks) in &seen.acks {
        let w = why(&mut store, digest).await;
        let Some(t) = &w.deleted else {
            assert!(
                w.blob.is_some(),
                "{digest} is gone without a BlobsDeleted entry"
            );
            continue;
        };
        let deleted_ms = t
            .deleted_at
            .as_ref()
            .map(|ts| ts.seconds as u64 * 1000 + ts.nanos as u64 / 1_000_000)
            .expect("a retention test step");
        for (sent, acked) in acks {
            if *acked <= deleted_ms {
                assert!(
                    sent + grace_ms <= deleted_ms,
                    "{digest} acknowledged (sent {sent}) within grace of its deletion at {deleted_ms} (entry {})",
                    t.ledger_index
                );
            }
        }
        for (pinned, pinned_at, until) in &seen.pins {
            if pinned == digest && *pinned_at <= deleted_ms {
                assert!(
                    deleted_ms >= *until,
                    "{digest} deleted at {deleted_ms} under a pin until {until}"
                );
            }
        }
        if let Some(blob) = &w.blob {
            // Present after a deletion: uploaded again after it.
            let created = blob.created_at.as_ref().expect("a retention test step");
            assert!(created.seconds as u64 * 1000 + 999 >= deleted_ms);
        }
    }
    // Reconciliation: after a last collection out of grace, every blob in custody is kept by
    // something, and every blob ever acknowledged and absent is tombstoned.
    tokio::time::sleep(Duration::from_millis(grace_ms + 3500)).await;
    gc(&mut store, GRACE_S, false).await.expect("final gc");
    let mut present = 0;
    for digest in seen.acks.keys() {
        let w = why(&mut store, digest).await;
        match &w.blob {
            Some(_) => {
                present += 1;
                assert!(
                    !w.kept_by.is_empty(),
                    "{digest} is present but nothing keeps it"
                );
            }
            None => assert!(w.deleted.is_some(), "{digest} is absent and not tombstoned"),
        }
    }
    eprintln!("gc race: {present} blobs remain, each kept by a reference");
    // The same, offline: the listing and the export reconcile with every acknowledged digest,
    // and right after a collection nothing is left uncollected.
    let acked: Vec<Digest> = seen.acks.keys().copied().collect();
    let (verdict, ok) = reconcile_offline(&daemon, dir.path(), &acked, true, None);
    assert!(ok, "{verdict}");
    assert!(
        verdict["reconciliation"]["present"].as_u64() >= Some(present as u64),
        "{verdict}"
    );
}

/// `kill -9` in the middle of garbage collection: after a restart, every blob a recorded
/// deletion names is gone (the daemon finishes it), every other is whole, and a second run
/// reconciles everything.
#[tokio::test(flavor = "multi_thread")]
async fn gc_cut_by_kill_9_finishes_on_restart() {
    let dir = tempfile::tempdir().expect("a retention test step");
    let mut daemon = short_grace_daemon(&dir.path().join("data"));
    let mut all: Vec<Bytes> = Vec::new();
    for (cycle, delay_ms) in [5u64, 40, 120].into_iter().enumerate() {
        let mut store = daemon.client().await;
        let blobs: Vec<Bytes> = (0..2500)
            .map(|i| pattern(50_000 + cycle as u64 * 10_000 + i, 256 + (i as usize % 700)))
            .collect();
        for chunk in blobs.chunks(500) {
            batch_put(&mut store, chunk).await;
        }
        all.extend(blobs);
        tokio::time::sleep(Duration::from_millis(GRACE_S * 1000 + 200)).await;
        let mut collector = daemon.client().await;
        let running = tokio::spawn(async move { gc(&mut collector, GRACE_S, false).await });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        daemon.kill9();
        let _ = running.await;
        daemon.restart_after_kill9();
        // After the restart: each blob is either whole or tombstoned and absent.
        let mut store = daemon.client().await;
        let (mut gone, mut whole) = (0, 0);
        for blob in &all {
            let d = sha(blob);
            let w = why(&mut store, &d).await;
            match (&w.blob, &w.deleted) {
                (Some(_), _) => {
                    let (_, back) = crate::cas::get(&mut store, &d.to_string(), 0, 0)
                        .await
                        .expect("a present blob reads back whole");
                    assert!(back == *blob, "{d} is damaged after kill -9 during GC");
                    whole += 1;
                }
                (None, Some(_)) => gone += 1,
                (None, None) => panic!("{d} is gone without a BlobsDeleted entry"),
            }
        }
        eprintln!("gc cut by kill -9 after {delay_ms} ms: {gone} recorded and gone, {whole} whole");
    }
    // A second run reconciles: nothing keeps these blobs, so all go, each on the record.
    let mut store = daemon.client().await;
    gc(&mut store, GRACE_S, false)
        .await
        .expect("gc after restart");
    for blob in &all {
        let w = why(&mut store, &sha(blob)).await;
        assert!(w.blob.is_none() && w.deleted.is_some(), "{:?}", w);
    }
    let acked: Vec<Digest> = all.iter().map(|b| sha(b)).collect();
    let (verdict, ok) = reconcile_offline(&daemon, dir.path(), &acked, true, None);
    assert!(ok, "{verdict}");
    assert_eq!(
        verdict["reconciliation"]["absent_tombstoned"].as_u64(),
        Some(all.len() as u64),
        "{verdict}"
    );
}

/// What boto3 (AWS's SDK) reads of a blob's S3 Object Lock legal hold, and whether it could
/// destroy the blob's stored version (tried only while the hold is on).
fn s3_hold(moto: &custodian_testkit::Moto, bucket: &str, blob: &Digest) -> serde_json::Value {
    let hex = blob.hex();
    let key = format!("blobs/blobs/sha256/{}/{}/{hex}", &hex[..2], &hex[2..4]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/interop/s3_legal_hold.py");
    let out = std::process::Command::new(crate::registry::python())
        .arg(script)
        .args([&format!("http://127.0.0.1:{}", moto.port), bucket, &key])
        .output()
        .expect("run tests/interop/s3_legal_hold.py");
    assert!(
        out.status.success(),
        "s3_legal_hold.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("s3_legal_hold.py prints JSON")
}

/// `serve --native-holds` on S3 (moto on loopback): a legal hold is also an S3 Object Lock
/// legal hold, which boto3 reads back and which refuses boto3's delete of the stored version;
/// a release turns it off only where no other hold remains; a store that cannot hold refuses
/// to start.
#[tokio::test(flavor = "multi_thread")]
async fn legal_holds_are_also_s3_object_lock_legal_holds() {
    let dir = tempfile::tempdir().expect("a native-hold test step");
    let moto = custodian_testkit::Moto::start("custodian-plain");
    moto.create_bucket("custodian-held", true);
    let mut storage_args: Vec<String> = Vec::new();
    for (key, value) in moto.options() {
        storage_args.extend(["--storage-option".into(), format!("{key}={value}")]);
    }

    // Stores that cannot hold: the embedded RocksDB, and a bucket without Object Lock.
    let err = custodian_testkit::serve_refuses(&dir.path().join("embedded"), &["--native-holds"]);
    assert!(err.contains("no native legal hold"), "{err}");
    let mut plain: Vec<&str> = vec!["--native-holds", "--storage", "s3://custodian-plain/blobs"];
    plain.extend(storage_args.iter().map(String::as_str));
    let err = custodian_testkit::serve_refuses(&dir.path().join("plain"), &plain);
    assert!(
        err.contains("Object Lock") && err.contains("custodian-plain"),
        "{err}"
    );

    let mut held_args: Vec<&str> = vec!["--storage", "s3://custodian-held/blobs", "--native-holds"];
    held_args.extend(storage_args.iter().map(String::as_str));
    let daemon = Daemon::start_with(&dir.path().join("data"), &held_args);
    crate::registry::publish_example(&daemon, dir.path(), "pacman-builder", "publisher");
    let mut store = daemon.client().await;
    let (kept, other) = (pattern(9101, 5000), pattern(9102, 5000));
    batch_put(&mut store, &[kept.clone(), other.clone()]).await;
    let (kept_d, other_d) = (sha(&kept), sha(&other));

    cli_ok(
        &daemon,
        &[
            "hold",
            &kept_d.to_string(),
            "--reason",
            "litigation 2026-31",
        ],
    );
    let on = s3_hold(&moto, "custodian-held", &kept_d);
    assert_eq!(on["status"], "ON", "{on}");
    assert_eq!(
        on["version_delete"], "AccessDenied",
        "the held version must survive a delete by someone with the bucket's keys: {on}"
    );
    let off = s3_hold(&moto, "custodian-held", &other_d);
    assert_ne!(off["status"], "ON", "only held blobs are locked: {off}");
    let read = store
        .stat(pb::StatRequest {
            digest: kept_d.to_string(),
        })
        .await;
    assert!(read.is_ok(), "a held blob stays served");

    // Two holds on one blob: the version's, and one by digest on the first of its files.
    let version = cli_ok(
        &daemon,
        &[
            "hold",
            "pacman-builder@0.2.1",
            "--reason",
            "audit 7",
            "--json",
        ],
    );
    let version: serde_json::Value = serde_json::from_str(&version).expect("hold --json");
    let files: Vec<Digest> = version["digests"]
        .as_array()
        .expect("the held digests")
        .iter()
        .map(|d| d.as_str().expect("a digest").parse().expect("a digest"))
        .collect();
    assert!(files.len() >= 2, "{version}");
    cli_ok(
        &daemon,
        &["hold", &files[0].to_string(), "--reason", "audit 7, file"],
    );
    for file in &files {
        assert_eq!(s3_hold(&moto, "custodian-held", file)["status"], "ON");
    }
    cli_ok(
        &daemon,
        &[
            "release",
            "pacman-builder@0.2.1",
            "--reason",
            "audit 7 closed",
        ],
    );
    assert_eq!(
        s3_hold(&moto, "custodian-held", &files[0])["status"],
        "ON",
        "the file's own hold remains"
    );
    assert_eq!(s3_hold(&moto, "custodian-held", &files[1])["status"], "OFF");

    cli_ok(
        &daemon,
        &["release", &kept_d.to_string(), "--reason", "case closed"],
    );
    assert_eq!(s3_hold(&moto, "custodian-held", &kept_d)["status"], "OFF");
}
