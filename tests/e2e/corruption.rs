//! Damaged storage: flipped bytes in RocksDB's files of large blobs, object files and ledger entries are
//! never served (DATA_LOSS naming the digest or entry), and `custodian scrub` finds, reports and
//! quarantines them, exiting non-zero, after which a fresh upload heals a blob.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use custodian_core::BlobDigests;
use custodian_proto::cas::v1 as pb;
use custodian_proto::ledger::v1 as lpb;
use tonic::Code;

use crate::cas::{get, put};
use crate::ledger;
use crate::pattern;
use custodian_testkit::{Daemon, binary};

/// Runs `custodian scrub --json` on a stopped daemon's data directory; returns the exit code
/// and the report.
fn scrub(data: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let out = std::process::Command::new(binary())
        .args(["scrub", "--json", "--data-dir"])
        .arg(data)
        .args(extra)
        .output()
        .expect("run custodian scrub");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "scrub printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().expect("exit code"), report)
}

/// The files of blobs larger than one block under the RocksDB backend's `dir`, largest first.
fn blob_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join("extents"))
        .expect("read the extents directory")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .map(|p| (std::fs::metadata(&p).map_or(0, |m| m.len()), p))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    files.into_iter().map(|(_, p)| p).collect()
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).expect("read the file to damage");
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes).expect("write the damaged file");
}

/// Flips one bit in the middle of ledger entry 7 (twice restores it).
fn flip_entry_7(data_dir: &Path) {
    ledger::tamper(
        &data_dir.join("ledger"),
        custodian_rocksdb::ledger::CF_ENTRIES,
        7,
        |v| {
            let at = v.len() / 2;
            v[at] ^= 0x01;
        },
    );
}

async fn read_back(daemon: &Daemon, data: &Bytes) -> Result<Bytes, tonic::Status> {
    let digest = BlobDigests::of(data).sha256.to_string();
    get(&mut daemon.client().await, &digest, 0, 0)
        .await
        .map(|(_, bytes)| Bytes::from(bytes))
}

#[tokio::test]
async fn damaged_rocksdb_blobs_and_ledger_entries_are_data_loss_and_scrub_quarantines_them() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut daemon = ledger::start(&data_dir);
    let mut client = daemon.client().await;
    // A multi-block blob (kept in a file of its own) and small ones (kept in RocksDB).
    let large = pattern(8_001, 3 << 20);
    let small: Vec<Bytes> = (0..4)
        .map(|i| pattern(8_010 + i, 2_000 + i as usize))
        .collect();
    put(&mut client, "", None, &large).await.unwrap();
    for data in &small {
        put(&mut client, "", None, data).await.unwrap();
    }
    let mut log = ledger::client(&daemon).await;
    for i in 0..20 {
        ledger::append(&mut log, i).await.unwrap();
    }
    // A published version, whose badge depends on everything the log says.
    let (key, _) = crate::registry::generate_key(dir.path(), "acme");
    let package = crate::registry::copy_example("pacman-builder", dir.path());
    let out = daemon.cli(&[
        "publish",
        package.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let badge = |daemon: &Daemon| daemon.cli(&["badge", "pacman-builder@0.2.1", "--json"]);
    assert!(badge(&daemon).status.success());
    let scrubbed_clean = {
        daemon.kill9();
        let (code, report) = scrub(&data_dir, &[]);
        assert_eq!(code, 0, "{report:#}");
        report
    };
    // 20 appends, the publication, its scan, and the badge issued.
    assert_eq!(scrubbed_clean["entries_checked"], 23);
    assert!(scrubbed_clean["blobs_checked"].as_u64().unwrap() >= 5);

    // Damage: a byte in the middle of the largest blob file, and entry 7 of the log.
    let files = blob_files(&data_dir.join("blobs"));
    assert!(!files.is_empty(), "no extent file holds the 3 MiB blob");
    let len = std::fs::metadata(&files[0]).unwrap().len() as usize;
    flip(&files[0], len / 2);
    flip_entry_7(&data_dir);
    daemon.restart_after_kill9();

    // Reads of the damaged blob fail with DATA_LOSS naming it; the others are served intact.
    let large_digest = BlobDigests::of(&large).sha256.to_string();
    let status = read_back(&daemon, &large).await.unwrap_err();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(
        status.message().contains(&large_digest),
        "{}",
        status.message()
    );
    for data in &small {
        assert_eq!(read_back(&daemon, data).await.unwrap(), *data);
    }
    // The damaged entry is DATA_LOSS naming its index and both hashes; its neighbours are fine.
    let mut log = ledger::client(&daemon).await;
    let status = log
        .get_entry(lpb::GetEntryRequest { index: 7 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(
        status.message().contains("entry 7 is damaged") && status.message().contains("leaf hash"),
        "{}",
        status.message()
    );
    log.get_entry(lpb::GetEntryRequest { index: 8 })
        .await
        .unwrap();

    // scrub names both, quarantines the blob, lists the entry, and exits 2.
    daemon.kill9();
    let (code, report) = scrub(&data_dir, &[]);
    assert_eq!(code, 2, "{report:#}");
    let damaged = report["damaged_blobs"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{report:#}");
    assert_eq!(damaged[0]["digest"], large_digest.as_str());
    assert_eq!(damaged[0]["quarantined"], true);
    let entries = report["damaged_entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{report:#}");
    assert_eq!(entries[0]["index"], 7);
    assert!(
        report["log_problems"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    let quarantine = data_dir.join("quarantine");
    let hex = large_digest.replace(':', "-");
    let note: serde_json::Value =
        serde_json::from_slice(&std::fs::read(quarantine.join(format!("{hex}.json"))).unwrap())
            .unwrap();
    assert_eq!(note["digest"], large_digest.as_str());
    assert_eq!(
        std::fs::metadata(quarantine.join(format!("{hex}.bytes")))
            .unwrap()
            .len(),
        large.len() as u64,
        "the damaged bytes are kept for inspection"
    );
    let listed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(quarantine.join("ledger.json")).unwrap()).unwrap();
    assert_eq!(listed["damaged_entries"][0]["index"], 7);

    // Text output for people says the same.
    let out = std::process::Command::new(binary())
        .args(["scrub", "--report-only", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("DAMAGED entry 7") && text.contains("DAMAGE FOUND"),
        "{text}"
    );

    // After quarantine the blob is missing, so a registry re-uploads it, which heals it.
    daemon.restart_after_kill9();
    let mut client = daemon.client().await;
    let missing = client
        .find_missing(pb::FindMissingRequest {
            digests: vec![large_digest.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(missing.missing_digests, vec![large_digest.clone()]);
    put(&mut client, &large_digest, None, &large).await.unwrap();
    assert_eq!(read_back(&daemon, &large).await.unwrap(), large);

    // Restoring the entry's bytes (here: flipping the bit back) leaves a clean scrub.
    daemon.kill9();
    flip_entry_7(&data_dir);
    let (code, report) = scrub(&data_dir, &[]);
    assert_eq!(code, 0, "{report:#}");
    // Repaired, the daemon issues badges again.
    daemon.restart_after_kill9();
    let out = badge(&daemon);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_damaged_object_file_is_data_loss_and_scrub_quarantines_it() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    let url = format!("file://{}", objects.display());
    let data_dir = dir.path().join("state");
    let mut daemon = Daemon::start_with(&data_dir, &["--storage", &url]);
    let mut client = daemon.client().await;
    let damaged = pattern(8_101, (1 << 20) + 77);
    let intact = pattern(8_102, 5_000);
    for data in [&damaged, &intact] {
        put(&mut client, "", None, data).await.unwrap();
    }
    let digest = BlobDigests::of(&damaged).sha256.to_string();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let object = objects
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(hex);
    flip(&object, 1 << 20);
    let status = read_back(&daemon, &damaged).await.unwrap_err();
    assert_eq!(status.code(), Code::DataLoss);
    assert!(status.message().contains(&digest), "{}", status.message());

    daemon.kill9();
    let (code, report) = scrub(&data_dir, &["--storage", &url]);
    assert_eq!(code, 2, "{report:#}");
    assert_eq!(report["damaged_blobs"][0]["digest"], digest.as_str());
    assert!(
        report["damaged_blobs"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("block 1"),
        "{report:#}"
    );
    assert_eq!(report["damaged_blobs"].as_array().unwrap().len(), 1);
    assert!(
        !object.exists(),
        "the damaged object is taken out of the store"
    );

    daemon.restart_after_kill9();
    let mut client = daemon.client().await;
    put(&mut client, &digest, None, &damaged).await.unwrap();
    assert_eq!(read_back(&daemon, &damaged).await.unwrap(), damaged);
    assert_eq!(read_back(&daemon, &intact).await.unwrap(), intact);
    daemon.kill9();
    let (code, report) = scrub(&data_dir, &["--storage", &url]);
    assert_eq!(code, 0, "{report:#}");
}
