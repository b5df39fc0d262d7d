//! Disk faults: the daemon runs under `tests/faultfs` (an LD_PRELOAD shim) that fails file I/O
//! under its data directory on a countdown, with EIO or ENOSPC, or makes every write short.
//! Writes then fail with a clear status, the store refuses writes until it is restarted rather
//! than guess what reached the disk, reads of what was acknowledged keep working, and after a
//! restart on a healthy disk the state matches a model of what was acknowledged.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use custodian_core::BlobDigests;
use custodian_core::checkpoint::Checkpoint;
use custodian_core::merkle::{Hash, leaf_hash};
use custodian_core::note::VerifierKey;
use custodian_proto::ledger::v1 as lpb;
use tonic::Code;

use crate::cas::{get, put};
use crate::ledger;
use crate::pattern;
use custodian_testkit::Daemon;

/// Compiles the shim once per test run.
fn shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/faultfs/faultfs.c");
        let out = std::env::temp_dir().join(format!("custodian-faultfs-{}.so", std::process::id()));
        let status = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
            .arg(&out)
            .arg(&source)
            .arg("-ldl")
            .status()
            .expect("run cc (scripts/test installs it)");
        assert!(status.success(), "compiling {}", source.display());
        out
    })
}

/// What the clients were told.
#[derive(Default)]
struct Model {
    /// Acknowledged blobs: (seed, size).
    blobs: Vec<(u64, usize)>,
    /// Blobs sent without an acknowledgement: (seed, size).
    unacked: Vec<(u64, usize)>,
    /// Acknowledged entries: (index, leaf hash), and the checkpoints their receipts carried.
    entries: Vec<(u64, Hash)>,
    checkpoints: Vec<String>,
    /// Every failure: (operation, code, message).
    failures: Vec<(String, Code, String)>,
}

/// One write of each kind in turn: a small blob, a ledger append, a multi-block blob, an append,
/// a 200 KB blob, … `seed0` keeps runs apart.
async fn drive(daemon: &Daemon, model: &mut Model, seed0: u64, count: u64) {
    let mut store = daemon.client().await;
    let mut log = ledger::client(daemon).await;
    for i in 0..count {
        let seed = seed0 + i;
        if i % 2 == 1 {
            match ledger::append(&mut log, seed).await {
                Ok(receipt) => {
                    model
                        .entries
                        .push((receipt.log_index, leaf_hash(&receipt.entry)));
                    model.checkpoints.push(receipt.checkpoint);
                }
                Err(status) => model.failures.push((
                    format!("append {seed}"),
                    status.code(),
                    status.message().to_string(),
                )),
            }
            continue;
        }
        let size = [3_000usize, (1 << 20) + 5_000, 200_000][(i / 2 % 3) as usize];
        let data = pattern(seed, size);
        match put(&mut store, "", Some(size as u64), &data).await {
            Ok(_) => model.blobs.push((seed, size)),
            Err(status) => {
                model.unacked.push((seed, size));
                model.failures.push((
                    format!("put {seed}"),
                    status.code(),
                    status.message().to_string(),
                ));
            }
        }
    }
}

/// Checks the restarted daemon against the model: acknowledged blobs whole, unacknowledged
/// ones absent or whole, acknowledged entries unchanged, checkpoints consistent.
async fn check_model(daemon: &Daemon, model: &Model, verifier: &VerifierKey, case: &str) {
    let mut store = daemon.client().await;
    for (seed, size) in &model.blobs {
        let data = pattern(*seed, *size);
        let digest = BlobDigests::of(&data).sha256.to_string();
        let (_, back) = get(&mut store, &digest, 0, 0)
            .await
            .unwrap_or_else(|s| panic!("{case}: acknowledged blob {digest} lost: {s:?}"));
        assert!(back == data, "{case}: acknowledged blob {digest} changed");
    }
    for (seed, size) in &model.unacked {
        let data = pattern(*seed, *size);
        let digest = BlobDigests::of(&data).sha256.to_string();
        match get(&mut store, &digest, 0, 0).await {
            Ok((_, back)) => assert!(back == data, "{case}: {digest} visible but not whole"),
            Err(status) => assert_eq!(status.code(), Code::NotFound, "{case}: {status:?}"),
        }
    }
    let mut log = ledger::client(daemon).await;
    let latest = log
        .get_checkpoint(lpb::GetCheckpointRequest { tree_size: None })
        .await
        .expect("a step of the fault test")
        .into_inner();
    let latest =
        Checkpoint::open(latest.note.as_bytes(), verifier).expect("a step of the fault test");
    for (index, leaf) in &model.entries {
        let entry = log
            .get_entry(lpb::GetEntryRequest { index: *index })
            .await
            .unwrap_or_else(|s| panic!("{case}: acknowledged entry {index} lost: {s:?}"))
            .into_inner();
        assert_eq!(
            leaf_hash(&entry.encoded),
            *leaf,
            "{case}: entry {index} changed"
        );
    }
    for note in &model.checkpoints {
        let old = Checkpoint::open(note.as_bytes(), verifier).expect("a step of the fault test");
        ledger::assert_consistent(&mut log, &old, &latest, case).await;
    }
}

/// One fault scenario on one backend: clean writes, then the armed shim, then a healthy restart.
async fn scenario(storage: Option<&str>, scope: &str, mode: &str, ops: &str, after: u64) {
    let case = format!(
        "{} {mode} on {ops} after {after} under {scope:?}",
        storage.unwrap_or("rocksdb")
    );
    let dir = tempfile::tempdir().expect("a step of the fault test");
    let root = dir.path().canonicalize().expect("a step of the fault test");
    let data_dir = root.join("data");
    let url = storage.map(|s| s.replace("ROOT", root.to_str().expect("a step of the fault test")));
    let mut daemon = match &url {
        Some(url) => Daemon::start_with(
            &data_dir,
            &[
                "--storage",
                url,
                "--append-token",
                "e2e-append-token",
                "--log-origin",
                "e2e.test/ledger",
            ],
        ),
        None => ledger::start(&data_dir),
    };
    let arm = root.join("arm");
    let faults = root.join("faults.log");
    daemon.restart_with_env(&[
        ("LD_PRELOAD", shim().display().to_string()),
        ("FAULTFS_DIR", root.join(scope).display().to_string()),
        ("FAULTFS_ARM", arm.display().to_string()),
        ("FAULTFS_AFTER", after.to_string()),
        ("FAULTFS_MODE", mode.to_string()),
        ("FAULTFS_OPS", ops.to_string()),
        ("FAULTFS_LOG", faults.display().to_string()),
    ]);
    let verifier = {
        let mut log = ledger::client(&daemon).await;
        let info = log
            .get_log_info(lpb::GetLogInfoRequest {})
            .await
            .expect("a step of the fault test")
            .into_inner();
        VerifierKey::parse(&info.verifier_key).expect("a step of the fault test")
    };
    let mut model = Model::default();
    drive(&daemon, &mut model, 10_000, 6).await;
    assert!(
        model.failures.is_empty(),
        "{case}: failed before the shim was armed: {:?}",
        model.failures
    );
    std::fs::write(&arm, b"armed").expect("a step of the fault test");
    drive(&daemon, &mut model, 20_000, 30).await;

    if mode == "short" {
        // Short writes are legal; every caller must loop, and nothing may fail.
        assert!(model.failures.is_empty(), "{case}: {:?}", model.failures);
    } else {
        let fired = std::fs::read_to_string(&faults).unwrap_or_default();
        assert!(!fired.is_empty(), "{case}: the shim injected nothing");
        let (first, code, message) = model
            .failures
            .first()
            .unwrap_or_else(|| {
                panic!("{case}: a fault was injected ({fired}) but every write succeeded")
            })
            .clone();
        assert!(
            matches!(code, Code::Unavailable | Code::Internal),
            "{case}: {first} failed with {code:?}: {message}"
        );
        let expected = if mode == "enospc" {
            "No space left"
        } else {
            "Input/output error"
        };
        assert!(
            message.contains(expected) || message.contains("refuse"),
            "{case}: {first}: the message should say what failed: {message}"
        );
        // Once a write to a store has failed, that store acknowledges no later write: it refuses
        // until it is restarted, with UNAVAILABLE saying why. (The blob store and the ledger are
        // separate databases and fail separately.)
        let failed_at = model.failures.len();
        let blobs_failed = model
            .failures
            .iter()
            .any(|(op, _, _)| op.starts_with("put"));
        let log_failed = model
            .failures
            .iter()
            .any(|(op, _, _)| op.starts_with("append"));
        let before = (model.blobs.len(), model.entries.len());
        drive(&daemon, &mut model, 30_000, 6).await;
        eprintln!("{case}: first failure: {first}: {code:?}: {message}");
        if blobs_failed {
            assert_eq!(
                model.blobs.len(),
                before.0,
                "{case}: a put was acknowledged after a failed one"
            );
        }
        if log_failed {
            assert_eq!(
                model.entries.len(),
                before.1,
                "{case}: an append was acknowledged after a failed one"
            );
        }
        for (op, code, message) in &model.failures[failed_at..] {
            assert_eq!(*code, Code::Unavailable, "{case}: {op}: {message}");
            assert!(message.contains("refuses"), "{case}: {op}: {message}");
        }
        // Reads of what was acknowledged still work.
        if let Some((seed, size)) = model.blobs.first() {
            let data = pattern(*seed, *size);
            let digest = BlobDigests::of(&data).sha256.to_string();
            let (_, back) = get(&mut daemon.client().await, &digest, 0, 0)
                .await
                .unwrap_or_else(|s| panic!("{case}: read while refusing writes: {s:?}"));
            assert!(back == data);
        }
    }

    // A restart on a healthy disk: the state matches the model, and writes work again.
    daemon.restart_with_env(&[]);
    check_model(&daemon, &model, &verifier, &case).await;
    let mut after_restart = Model::default();
    drive(&daemon, &mut after_restart, 40_000, 4).await;
    assert!(
        after_restart.failures.is_empty(),
        "{case}: {:?}",
        after_restart.failures
    );
    eprintln!(
        "{case}: {} blobs and {} entries acknowledged, {} writes refused, state matches after restart",
        model.blobs.len(),
        model.entries.len(),
        model.failures.len()
    );
}

#[tokio::test]
async fn rocksdb_write_and_sync_failures_refuse_writes_until_restart() {
    for (scope, mode, ops, after) in [
        ("", "eio", "sync", 0),
        ("", "eio", "sync", 5),
        ("", "eio", "write", 3),
        ("", "enospc", "write", 0),
        ("", "enospc", "all", 11),
        // The ledger's own database.
        ("data/ledger", "eio", "sync", 0),
        ("data/ledger", "enospc", "write", 4),
    ] {
        scenario(None, scope, mode, ops, after).await;
    }
}

#[tokio::test]
async fn object_backend_write_and_sync_failures_refuse_writes_until_restart() {
    for (mode, ops, after) in [
        ("eio", "sync", 0),
        ("eio", "write", 2),
        ("eio", "sync", 7),
        ("enospc", "write", 0),
        ("enospc", "all", 9),
    ] {
        scenario(Some("file://ROOT/objects"), "", mode, ops, after).await;
    }
}

#[tokio::test]
async fn short_writes_everywhere_lose_nothing() {
    scenario(None, "", "short", "write", 0).await;
    scenario(Some("file://ROOT/objects"), "", "short", "write", 0).await;
}

/// On `file://`, a batch of small blobs is one pack file, made durable by one fsync of that file.
/// When that fsync fails, no blob of the batch is acknowledged, the store refuses writes until
/// restarted, and after the restart none of the batch is in custody.
#[tokio::test]
async fn object_backend_batch_whose_pack_sync_fails_acknowledges_nothing() {
    batch_whose_pack_sync_fails_acknowledges_nothing(true).await;
}

/// The same on RocksDB, whose batches of blobs of 4 KiB and more are packs too.
#[tokio::test]
async fn rocksdb_batch_whose_pack_sync_fails_acknowledges_nothing() {
    batch_whose_pack_sync_fails_acknowledges_nothing(false).await;
}

async fn batch_whose_pack_sync_fails_acknowledges_nothing(on_files: bool) {
    use custodian_proto::cas::v1 as pb;

    let dir = tempfile::tempdir().expect("a step of the fault test");
    let root = dir.path().canonicalize().expect("a step of the fault test");
    let url = format!("file://{}", root.join("objects").display());
    let (args, faulty): (Vec<&str>, _) = if on_files {
        (vec!["--storage", &url], root.join("objects"))
    } else {
        (vec![], root.join("data").join("blobs").join("packs"))
    };
    let mut daemon = Daemon::start_with(&root.join("data"), &args);
    let arm = root.join("arm");
    let faults = root.join("faults.log");
    daemon.restart_with_env(&[
        ("LD_PRELOAD", shim().display().to_string()),
        ("FAULTFS_DIR", faulty.display().to_string()),
        ("FAULTFS_ARM", arm.display().to_string()),
        ("FAULTFS_AFTER", "0".to_string()),
        ("FAULTFS_MODE", "eio".to_string()),
        ("FAULTFS_OPS", "sync".to_string()),
        ("FAULTFS_LOG", faults.display().to_string()),
    ]);
    let blobs: Vec<_> = (0..64u64).map(|i| pattern(50_000 + i, 4096)).collect();
    let batch = |blobs: &[bytes::Bytes]| pb::BatchPutRequest {
        items: blobs
            .iter()
            .map(|data| pb::BatchPutItem {
                expected_digest: String::new(),
                data: data.clone(),
            })
            .collect(),
    };
    // Before the shim is armed, a batch goes through (and proves the path works).
    let mut client = daemon.client().await;
    let ok = client
        .batch_put(batch(&blobs[..8]))
        .await
        .expect("BatchPut before the fault")
        .into_inner();
    assert!(ok.results.iter().all(|r| r.error.is_none()), "{ok:?}");

    std::fs::write(&arm, b"armed").expect("a step of the fault test");
    let failed = client
        .batch_put(batch(&blobs[8..]))
        .await
        .expect("BatchPut answers per item")
        .into_inner();
    let fired = std::fs::read_to_string(&faults).unwrap_or_default();
    assert!(
        (fired.starts_with("fsync ") || fired.starts_with("fdatasync "))
            && fired.lines().next().is_some_and(|l| l.contains("/packs/")),
        "the first sync in the pack's directory should be the batch's pack: {fired:?}"
    );
    for result in &failed.results {
        let error = result
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("an item was acknowledged after a failed sync: {result:?}"));
        assert!(
            error.message.contains("packs/")
                && error.message.contains("sync")
                && error.message.contains("Input/output error"),
            "the error should name the pack and the failed sync: {error:?}"
        );
    }
    // The store now refuses writes until it is restarted.
    let refused = client
        .batch_put(batch(&blobs[8..9]))
        .await
        .expect("BatchPut answers per item")
        .into_inner();
    let message = &refused.results[0]
        .error
        .as_ref()
        .expect("refused after the failed sync")
        .message;
    assert!(message.contains("refuses"), "{message}");

    daemon.restart_with_env(&[]);
    let digests: Vec<String> = blobs
        .iter()
        .map(|data| BlobDigests::of(data).sha256.to_string())
        .collect();
    let missing = daemon
        .client()
        .await
        .find_missing(pb::FindMissingRequest {
            digests: digests.clone(),
        })
        .await
        .expect("FindMissing after the restart")
        .into_inner()
        .missing_digests;
    assert_eq!(
        missing,
        digests[8..].to_vec(),
        "exactly the batch whose sync failed is absent"
    );
}
