//! `custodian scrub`: reads back everything in custody and the whole log, and reports (and
//! quarantines) what no longer matches what was verified when it was written.
//!
//! Blobs: every blob is streamed through [`BlobStore::get`] (each block against its CRC32C) and
//! rehashed with SHA-256 and BLAKE3 against its recorded digests and size, so damage to the
//! bytes, to the block checksums or to the metadata is found. A damaged blob is copied aside,
//! raw, into the quarantine folder with a JSON note, then taken out of custody: clients see it
//! as missing (`FindMissing` lists it), and the next upload of the same bytes heals it.
//!
//! The log: every entry is hashed and compared with the leaf hash the signed tree records; the
//! tree's stored hashes are recomputed from those leaves; every stored checkpoint's signature is
//! checked and its root compared with the recomputed tree at its size. Log entries cannot be
//! moved aside (the tree is append-only and signed); damaged ones are listed, with their index
//! and recorded leaf hash, in the quarantine folder's `ledger.json` for the operator to restore
//! from an export or a backup.

use std::path::{Path, PathBuf};

use custodian_core::checkpoint::Checkpoint;
use custodian_core::merkle::{self, Frontier, Hash, stored_hash_count};
use custodian_core::{BlobHasher, Digest};
use custodian_storage::ledger::Ledger;
use custodian_storage::{BlobStore, ByteRange, StorageError};
use futures::StreamExt;
use serde::Serialize;

/// How many blob digests one listing page holds.
const PAGE: usize = 1024;
/// How many log entries are read at a time.
const LOG_CHUNK: u64 = 4096;

/// What a scrub found.
#[derive(Debug, Default, Serialize)]
pub struct ScrubReport {
    /// Blobs read back in full.
    pub blobs_checked: u64,
    /// Bytes read back.
    pub bytes_checked: u64,
    /// Blobs whose bytes or metadata are damaged.
    pub damaged_blobs: Vec<DamagedBlob>,
    /// Uploads that a crash left unfinished and that were not cleaned.
    pub pending_uploads: u64,
    /// Log entries checked.
    pub entries_checked: u64,
    /// Signed checkpoints checked.
    pub checkpoints_checked: u64,
    /// Log entries whose bytes no longer hash to their recorded leaf hash.
    pub damaged_entries: Vec<DamagedEntry>,
    /// Damage to the log's tree or checkpoints, one sentence each.
    pub log_problems: Vec<String>,
    /// Where damaged blobs and the list of damaged entries were put, when anything was.
    pub quarantine: Option<PathBuf>,
}

impl ScrubReport {
    /// Whether nothing is damaged and nothing is left over.
    pub fn clean(&self) -> bool {
        self.damaged_blobs.is_empty()
            && self.pending_uploads == 0
            && self.damaged_entries.is_empty()
            && self.log_problems.is_empty()
    }
}

/// One damaged blob.
#[derive(Debug, Serialize)]
pub struct DamagedBlob {
    /// Its SHA-256 digest.
    pub digest: String,
    /// What did not match.
    pub detail: String,
    /// Whether it was taken out of custody.
    pub quarantined: bool,
}

/// One damaged log entry.
#[derive(Debug, Serialize)]
pub struct DamagedEntry {
    /// Its index in the log.
    pub index: u64,
    /// The leaf hash the signed tree records for it (what a restored entry must hash to).
    pub recorded_leaf_hash: String,
    /// What its stored bytes hash to now.
    pub actual_leaf_hash: String,
}

/// What `scrub` does besides reading.
#[derive(Clone, Debug)]
pub struct ScrubOptions {
    /// Where damaged blobs are copied before they are taken out of custody, and where the list
    /// of damaged log entries is written. `None` only reports.
    pub quarantine: Option<PathBuf>,
}

/// Reads back every blob in `store`; `progress` is told the bytes read as they are read.
pub async fn scrub_blobs(
    store: &BlobStore,
    options: &ScrubOptions,
    report: &mut ScrubReport,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), StorageError> {
    report.pending_uploads = store.pending_uploads().await?;
    let mut after = None;
    loop {
        let page = store.list(after, PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(*last);
        for digest in page {
            report.blobs_checked += 1;
            match check_blob(store, &digest, progress).await {
                Ok(bytes) => report.bytes_checked += bytes,
                Err(detail) => {
                    let quarantined = match &options.quarantine {
                        Some(dir) => {
                            copy_aside(store, &digest, &detail, dir).await;
                            store.quarantine(&digest).await?
                        }
                        None => false,
                    };
                    if quarantined {
                        report.quarantine = options.quarantine.clone();
                    }
                    report.damaged_blobs.push(DamagedBlob {
                        digest: digest.to_string(),
                        detail,
                        quarantined,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Reads one blob in full and rehashes it; returns its size, or what is wrong.
async fn check_blob(
    store: &BlobStore,
    digest: &Digest,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64, String> {
    let read = match store.get(digest, ByteRange::default()).await {
        Ok(read) => read,
        Err(err) => return Err(damage_detail(err)),
    };
    let meta = read.meta;
    let mut data = read.data;
    let mut hasher = BlobHasher::new();
    let mut size = 0u64;
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(damage_detail)?;
        size += chunk.len() as u64;
        progress(chunk.len() as u64);
        hasher.update(&chunk);
    }
    let digests = hasher.finalize();
    if size != meta.size {
        return Err(format!(
            "read back {size} bytes; the metadata records {}",
            meta.size
        ));
    }
    if digests.sha256 != meta.digests.sha256 || digests.sha256 != *digest {
        return Err(format!(
            "the stored bytes hash to {}, not to the digest they are filed under",
            digests.sha256
        ));
    }
    if digests.blake3 != meta.digests.blake3 {
        return Err(format!(
            "the stored bytes hash to {}, but the metadata records {}",
            digests.blake3, meta.digests.blake3
        ));
    }
    Ok(size)
}

fn damage_detail(err: StorageError) -> String {
    match err {
        StorageError::Corrupt { detail, .. } => detail,
        other => other.to_string(),
    }
}

/// Copies what can still be read of a damaged blob into `dir/<hex>.bytes`, with a note in
/// `dir/<hex>.json`. Best effort: the blob is quarantined whether or not its bytes can be read.
async fn copy_aside(store: &BlobStore, digest: &Digest, detail: &str, dir: &Path) {
    let hex = digest.to_string().replace(':', "-");
    if let Err(err) = std::fs::create_dir_all(dir) {
        tracing::warn!(%err, dir = %dir.display(), "cannot create the quarantine folder");
        return;
    }
    // Streamed block by block into the file: a damaged blob may be gigabytes.
    let mut copied = 0u64;
    if let Ok(Some(meta)) = store.stat(digest).await
        && let Ok(mut blocks) = store.raw_blocks(&meta).await
    {
        let path = dir.join(format!("{hex}.bytes"));
        match std::fs::File::create(&path) {
            Ok(mut file) => {
                while let Some(Ok(block)) = blocks.next().await {
                    if let Err(err) = std::io::Write::write_all(&mut file, &block) {
                        tracing::warn!(%err, path = %path.display(), "cannot copy a damaged blob aside");
                        break;
                    }
                    copied += block.len() as u64;
                }
            }
            Err(err) => {
                tracing::warn!(%err, path = %path.display(), "cannot copy a damaged blob aside")
            }
        }
    }
    let note = serde_json::json!({
        "digest": digest.to_string(),
        "detail": detail,
        "bytes_copied": copied,
        "quarantined_at_ms": now_ms(),
    });
    if let Err(err) = std::fs::write(
        dir.join(format!("{hex}.json")),
        serde_json::to_vec_pretty(&note).unwrap_or_default(),
    ) {
        tracing::warn!(%err, "cannot write a quarantine note");
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Checks every entry, stored hash and checkpoint of the log.
pub fn scrub_log(
    ledger: &Ledger,
    options: &ScrubOptions,
    report: &mut ScrubReport,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), custodian_storage::LedgerError> {
    let latest = ledger.latest();
    let size = latest.size;
    // The checkpoints, by size, each opened with the log key.
    let mut checkpoints: Vec<(u64, Hash)> = Vec::new();
    let mut from = 0u64;
    loop {
        let page = ledger.checkpoints(from, 1024)?;
        let Some((last, _)) = page.last() else {
            break;
        };
        from = last + 1;
        for (cp_size, note) in page {
            report.checkpoints_checked += 1;
            match Checkpoint::open(&note, ledger.verifier()) {
                Ok(cp) if cp.size == cp_size => checkpoints.push((cp.size, cp.root)),
                Ok(cp) => report.log_problems.push(format!(
                    "the checkpoint stored for size {cp_size} states size {}",
                    cp.size
                )),
                Err(err) => report.log_problems.push(format!(
                    "the checkpoint of size {cp_size} does not verify with the log key: {err}"
                )),
            }
        }
        if from > size {
            break;
        }
    }
    let mut expected_roots = checkpoints.into_iter().peekable();
    let mut frontier = Frontier::new();
    let mut start = 0u64;
    while start < size {
        let end = (start + LOG_CHUNK).min(size);
        let entries = ledger.entries(start, end)?;
        let stored = ledger.stored_hashes(stored_hash_count(start), stored_hash_count(end))?;
        let mut stored = stored.into_iter();
        for (offset, bytes) in entries.iter().enumerate() {
            let index = start + offset as u64;
            report.entries_checked += 1;
            let actual = merkle::leaf_hash(bytes);
            // The frontier follows the stored leaf hashes, which the signed roots cover, so one
            // damaged entry does not make every later hash look wrong.
            let created = stored_leaf_then_tree(&mut frontier, &mut stored, index, report);
            if let Some(recorded) = created
                && recorded != actual
            {
                report.damaged_entries.push(DamagedEntry {
                    index,
                    recorded_leaf_hash: recorded.to_string(),
                    actual_leaf_hash: actual.to_string(),
                });
            }
            while let Some((cp_size, root)) = expected_roots.peek() {
                if *cp_size > index + 1 {
                    break;
                }
                if *cp_size == index + 1 && frontier.root() != *root {
                    report.log_problems.push(format!(
                        "the stored tree of size {cp_size} has root {}, but its signed checkpoint says {root}",
                        frontier.root()
                    ));
                }
                expected_roots.next();
            }
        }
        progress(end - start);
        start = end;
    }
    if size > 0 && frontier.root() != latest.root {
        report.log_problems.push(format!(
            "the stored tree has root {}, but the latest signed checkpoint (size {size}) says {}",
            frontier.root(),
            latest.root
        ));
    }
    if !report.damaged_entries.is_empty()
        && let Some(dir) = &options.quarantine
    {
        let list = serde_json::json!({
            "log_origin": ledger.origin(),
            "log_size": size,
            "damaged_entries": report.damaged_entries,
            "how_to_repair": "restore each entry from an export (custodian log export) or a backup whose bytes hash to recorded_leaf_hash",
        });
        match std::fs::create_dir_all(dir).and_then(|()| {
            std::fs::write(
                dir.join("ledger.json"),
                serde_json::to_vec_pretty(&list).unwrap_or_default(),
            )
        }) {
            Ok(()) => report.quarantine = Some(dir.clone()),
            Err(err) => tracing::warn!(%err, "cannot write the list of damaged entries"),
        }
    }
    Ok(())
}

/// Takes the stored hashes one appended leaf created (its leaf hash, then each subtree it
/// completes), appends the stored leaf hash to the frontier, and reports any stored interior
/// hash that differs from the one recomputed. Returns the stored leaf hash.
fn stored_leaf_then_tree(
    frontier: &mut Frontier,
    stored: &mut impl Iterator<Item = Hash>,
    index: u64,
    report: &mut ScrubReport,
) -> Option<Hash> {
    let leaf = stored.next()?;
    let created = frontier.append(leaf);
    for (level, expected) in created.iter().enumerate().skip(1) {
        match stored.next() {
            Some(hash) if hash == *expected => {}
            Some(hash) => report.log_problems.push(format!(
                "the stored tree hash at level {level} completed by entry {index} is {hash}, but its children hash to {expected}"
            )),
            None => report.log_problems.push(format!(
                "the stored tree ends before the hash at level {level} completed by entry {index}"
            )),
        }
    }
    Some(leaf)
}
