//! The ledger in RocksDB: its own database (separate from blobs, so a burst of blob writes never
//! sits between an append and its fsync), one column family per kind of record. Integers in keys
//! are big-endian, so iteration order is log order.
//!
//! Column families:
//! - `entries`: entry index (8 bytes) → the entry's deterministic CBOR;
//! - `tree`: stored-hash index in append order (8 bytes, see `custodian_core::merkle`) → 32 bytes;
//! - `leaves`: the entry's partition (8 bytes: its index divided by 2^20) and its leaf hash (32
//!   bytes) → entry index (8 bytes). Leaf hashes are random, so each flush of this family
//!   overlaps every older file of the same key range, and compaction rewrites them; keyed by the
//!   hash alone, every flush was merged into the whole family, a rewrite that grew with the log
//!   (140 MB per 12 MB flushed at 3,000,000 entries). Prefixed by the partition, a flush overlaps
//!   only the current partition's keys and older partitions settle and are left alone, at the
//!   cost of one filtered lookup per partition when an entry is found by its hash. Logs written
//!   before the partitions keep their older entries under the bare hash, which lookups try too;
//! - `checkpoints`: tree size (8 bytes) → signed checkpoint note.
//!
//! A batch is one RocksDB `WriteBatch` written with `sync = true`: the WAL record holding the
//! entries, the hashes and the checkpoint is on disk before the commit returns, and a crash
//! either replays all of it or none of it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use custodian_core::merkle::{Hash, stored_hash_count};
use custodian_storage::ledger::{LedgerBackend, LedgerBatch, LedgerError, LedgerResult};
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};

/// The column family of entries.
pub const CF_ENTRIES: &str = "entries";
/// The column family of stored tree hashes.
pub const CF_TREE: &str = "tree";
/// The column family mapping leaf hashes to indexes.
pub const CF_LEAVES: &str = "leaves";
/// The column family of signed checkpoints.
pub const CF_CHECKPOINTS: &str = "checkpoints";

const NAME: &str = "rocksdb";

fn err(message: impl std::fmt::Display) -> LedgerError {
    LedgerError::backend(NAME, message)
}

/// The RocksDB ledger backend.
pub struct RocksLedger {
    db: Arc<DB>,
    /// Serialises commits so the end-of-log check and the write are one step, and holds where the
    /// stored log ends once a commit has read it (see [`End`]).
    commit_lock: Mutex<Option<End>>,
    poisoned: AtomicBool,
}

/// Where the stored log ends: the next entry's index and the next stored hash's. Every write goes
/// through [`RocksLedger::commit`] under the commit lock and RocksDB admits one process per
/// database, so after the first commit has read it from the column families it is known without
/// reading them again. Reading it positions an iterator at each family's end, which merges the
/// memtables with a file of every level: 3% of the daemon's CPU under 64 gRPC appenders, and more
/// with each level the log grows into.
#[derive(Clone, Copy)]
struct End {
    entries: u64,
    hashes: u64,
}

/// Entries per partition of the `leaves` column family, as a power of two (see the module's
/// documentation): 1,048,576 entries, about 50 MB of keys, so a lookup by leaf hash in a log of
/// 10,000,000 entries tries 11 keys. This crate's tests use partitions of 16 entries, so that
/// their logs of a hundred entries span several.
const LEAF_PARTITION_BITS: u32 = if cfg!(test) { 4 } else { 20 };

/// The `leaves` key of the entry at `index` whose leaf hash is `leaf`.
fn leaf_key(index: u64, leaf: &Hash) -> [u8; 40] {
    partition_key(index >> LEAF_PARTITION_BITS, leaf)
}

/// The `leaves` key of `leaf` in `partition`.
fn partition_key(partition: u64, leaf: &Hash) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..8].copy_from_slice(&partition.to_be_bytes());
    key[8..].copy_from_slice(&leaf.0);
    key
}

/// Read options for the positions `[start, end)` in order. The iterator stops at `end` rather
/// than reading the block past it, and a long range (a replay at start-up, an export, a tile
/// mirror catching up) leaves the block cache as it found it: its blocks are read once, and
/// inserting them would push out the index and filter blocks every lookup needs, under the
/// cache's one lock that the replay's two reading threads share.
fn range_read(start: u64, end: u64) -> ReadOptions {
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(end.to_be_bytes());
    if end.saturating_sub(start) > LONG_RANGE {
        options.fill_cache(false);
    }
    options
}

/// Past this many positions a range read does not fill the block cache: a tile (256 entries)
/// and a proof's hashes do, a replay's chunk of 4,096 does not.
const LONG_RANGE: u64 = 1024;

impl RocksLedger {
    /// Opens (creating if needed) the ledger database at `path`.
    pub fn open(path: &Path) -> LedgerResult<Self> {
        let mut db_opts = crate::index::db_options();
        let cf = crate::index::cf_descriptor;
        // Small memtables and a cap on their total: the daemon's memory budget is shared with
        // the blob store, and ledger records are small (a 1,000,000-entry log is ~400 MB on disk).
        db_opts.set_db_write_buffer_size(24 << 20);
        let dense = crate::index::dense_cf_descriptor;
        let cfs = vec![
            dense(CF_ENTRIES, 8 << 20),
            dense(CF_TREE, 8 << 20),
            cf(CF_LEAVES, 4 << 20),
            cf(CF_CHECKPOINTS, 2 << 20),
        ];
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)
            .map_err(|e| err(format!("open {}: {e}", path.display())))?;
        Ok(RocksLedger {
            db: Arc::new(db),
            commit_lock: Mutex::new(None),
            poisoned: AtomicBool::new(false),
        })
    }

    /// Reads the positions `[start, end)` of a column family keyed by position, in order, and
    /// hands each value to `each`; returns how many were read, fewer than asked when what is
    /// stored ends first. A position out of order is an error naming it (`what` says what a
    /// position holds). A raw iterator lends each key and value where they lie, where the
    /// iterator adapter allocated both for every position.
    fn scan(
        &self,
        name: &str,
        what: &str,
        start: u64,
        end: u64,
        mut each: impl FnMut(u64, &[u8]) -> LedgerResult<()>,
    ) -> LedgerResult<u64> {
        let mut iter = self
            .db
            .raw_iterator_cf_opt(self.cf(name)?, range_read(start, end));
        iter.seek(start.to_be_bytes());
        let mut expected = start;
        while expected < end && iter.valid() {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            if key_u64(key)? != expected {
                return Err(LedgerError::Corrupt(format!(
                    "{what} {expected} is missing"
                )));
            }
            each(expected, value)?;
            expected += 1;
            iter.next();
        }
        iter.status().map_err(err)?;
        Ok(expected - start)
    }

    fn cf(&self, name: &str) -> LedgerResult<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| err(format!("column family {name} is missing")))
    }

    fn last_key(&self, cf: &str) -> LedgerResult<Option<(u64, Vec<u8>)>> {
        let mut iter = self.db.iterator_cf(self.cf(cf)?, IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(Err(e)) => Err(err(e)),
            Some(Ok((key, value))) => Ok(Some((key_u64(&key)?, value.to_vec()))),
        }
    }

    fn count(&self, cf: &str) -> LedgerResult<u64> {
        let mut iter = self.db.raw_iterator_cf(self.cf(cf)?);
        iter.seek_to_last();
        iter.status().map_err(err)?;
        match iter.key() {
            Some(key) => Ok(key_u64(key)? + 1),
            None => Ok(0),
        }
    }

    /// Where the stored log ends, read from the column families the first time.
    fn end(&self, known: &mut Option<End>) -> LedgerResult<End> {
        if let Some(end) = *known {
            return Ok(end);
        }
        let end = End {
            entries: self.count(CF_ENTRIES)?,
            hashes: self.count(CF_TREE)?,
        };
        *known = Some(end);
        Ok(end)
    }
}

fn key_u64(key: &[u8]) -> LedgerResult<u64> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| err(format!("malformed key of {} bytes", key.len())))
}

impl LedgerBackend for RocksLedger {
    fn name(&self) -> &'static str {
        NAME
    }

    fn latest_checkpoint(&self) -> LedgerResult<Option<(u64, Vec<u8>)>> {
        self.last_key(CF_CHECKPOINTS)
    }

    fn checkpoint(&self, size: u64) -> LedgerResult<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(CF_CHECKPOINTS)?, size.to_be_bytes())
            .map_err(err)
    }

    fn checkpoints(&self, from_size: u64, limit: usize) -> LedgerResult<Vec<(u64, Vec<u8>)>> {
        let start = from_size.to_be_bytes();
        let iter = self.db.iterator_cf(
            self.cf(CF_CHECKPOINTS)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (key, value) = item.map_err(err)?;
            out.push((key_u64(&key)?, value.to_vec()));
        }
        Ok(out)
    }

    fn entries(&self, start: u64, end: u64) -> LedgerResult<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
        let read = self.scan(CF_ENTRIES, "entry", start, end, |_, value| {
            out.push(value.to_vec());
            Ok(())
        })?;
        if read < end.saturating_sub(start) {
            return Err(LedgerError::Corrupt(format!(
                "entry {} is missing",
                start + read
            )));
        }
        Ok(out)
    }

    fn index_of(&self, leaf: &Hash) -> LedgerResult<Option<u64>> {
        // Every partition the stored entries reach, and the bare hash of a log written before
        // partitions; each lookup of a key that is not there ends at its Bloom filter.
        let partitions = self.count(CF_ENTRIES)?.div_ceil(1 << LEAF_PARTITION_BITS);
        let mut keys: Vec<Vec<u8>> = (0..partitions)
            .map(|partition| partition_key(partition, leaf).to_vec())
            .collect();
        keys.push(leaf.0.to_vec());
        for found in self
            .db
            .batched_multi_get_cf(self.cf(CF_LEAVES)?, &keys, false)
        {
            if let Some(value) = found.map_err(err)? {
                return Ok(Some(key_u64(&value)?));
            }
        }
        Ok(None)
    }

    fn hashes(&self, indexes: &[u64]) -> LedgerResult<Vec<Option<Hash>>> {
        let cf = self.cf(CF_TREE)?;
        let keys: Vec<[u8; 8]> = indexes.iter().map(|i| i.to_be_bytes()).collect();
        self.db
            .batched_multi_get_cf(cf, &keys, false)
            .into_iter()
            .map(|result| match result.map_err(err)? {
                None => Ok(None),
                Some(value) => Hash::from_slice(&value).map(Some).map_err(|_| {
                    LedgerError::Corrupt(format!("a stored tree hash is {} bytes", value.len()))
                }),
            })
            .collect()
    }

    fn hash_range(&self, start: u64, end: u64) -> LedgerResult<Vec<Hash>> {
        let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
        self.scan(
            CF_TREE,
            "stored tree hash",
            start,
            end,
            |position, value| {
                out.push(Hash::from_slice(value).map_err(|_| {
                    LedgerError::Corrupt(format!(
                        "stored tree hash {position} is {} bytes",
                        value.len()
                    ))
                })?);
                Ok(())
            },
        )?;
        Ok(out)
    }

    fn commit(&self, batch: &LedgerBatch) -> LedgerResult<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(LedgerError::Poisoned(
                "an earlier ledger write failed".into(),
            ));
        }
        let mut known = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        // The batch must continue the log exactly where it ends, or the tree would have a gap.
        let End { entries, hashes } = self.end(&mut known)?;
        if entries != batch.first_index
            || hashes != batch.first_hash_index
            || batch.first_hash_index != stored_hash_count(batch.first_index)
            || batch.first_hash_index + batch.hashes.len() as u64
                != stored_hash_count(batch.checkpoint_size)
        {
            return Err(err(format!(
                "batch at entry {} / hash {} does not continue the log ({entries} entries, {hashes} hashes)",
                batch.first_index, batch.first_hash_index
            )));
        }
        let (cf_entries, cf_tree, cf_leaves, cf_checkpoints) = (
            self.cf(CF_ENTRIES)?,
            self.cf(CF_TREE)?,
            self.cf(CF_LEAVES)?,
            self.cf(CF_CHECKPOINTS)?,
        );
        let mut wb = WriteBatch::default();
        for (offset, (entry, leaf)) in batch.entries.iter().zip(&batch.leaf_hashes).enumerate() {
            let index = (batch.first_index + offset as u64).to_be_bytes();
            wb.put_cf(cf_entries, index, entry);
            wb.put_cf(
                cf_leaves,
                leaf_key(batch.first_index + offset as u64, leaf),
                index,
            );
        }
        for (offset, hash) in batch.hashes.iter().enumerate() {
            wb.put_cf(
                cf_tree,
                (batch.first_hash_index + offset as u64).to_be_bytes(),
                hash.0,
            );
        }
        wb.put_cf(
            cf_checkpoints,
            batch.checkpoint_size.to_be_bytes(),
            &batch.checkpoint,
        );
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(wb, &opts).map_err(|e| {
            // After a failed synced write we cannot tell what reached the disk.
            self.poisoned.store(true, Ordering::SeqCst);
            tracing::error!(error = %e, "ledger write failed; refusing appends until restart");
            err(format!("synced write failed: {e}"))
        })?;
        *known = Some(End {
            entries: batch.first_index + batch.entries.len() as u64,
            hashes: batch.first_hash_index + batch.hashes.len() as u64,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_storage::ledger::Ledger;
    use custodian_storage::ledger_conformance::{self, CountingBackend, LedgerHarness};

    struct Harness(tempfile::TempDir);

    impl LedgerHarness for Harness {
        fn open(&self) -> Arc<dyn LedgerBackend> {
            Arc::new(RocksLedger::open(self.0.path()).expect("open"))
        }
    }

    /// A RocksDB ledger in a new directory (kept while the first value lives), filled with
    /// `count` entries in batches of `batch`.
    fn filled(count: u64, batch: u64) -> (tempfile::TempDir, Arc<RocksLedger>, Ledger) {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = Arc::new(RocksLedger::open(dir.path()).expect("open"));
        let ledger =
            Ledger::open(backend.clone(), ledger_conformance::test_signer()).expect("open");
        ledger_conformance::fill(&ledger, count, batch);
        (dir, backend, ledger)
    }

    #[test]
    fn rocksdb_ledger_conformance() {
        ledger_conformance::run(&Harness(tempfile::tempdir().expect("tempdir")));
    }

    #[test]
    fn entries_are_found_by_leaf_hash_in_every_partition() {
        // Seven partitions of 16, the last one partly filled.
        let (_dir, backend, ledger) = filled(100, 7);
        let leaves = ledger.leaf_hashes(0, 100).expect("leaf hashes");
        let cf = backend.cf(CF_LEAVES).expect("cf");
        for (index, leaf) in leaves.iter().enumerate() {
            let index = index as u64;
            assert_eq!(ledger.index_of(leaf).expect("found"), index);
            assert!(
                backend
                    .db
                    .get_cf(cf, leaf_key(index, leaf))
                    .expect("read")
                    .is_some(),
                "entry {index} is filed in partition {}",
                index >> LEAF_PARTITION_BITS
            );
            assert!(
                backend.db.get_cf(cf, leaf.0).expect("read").is_none(),
                "entry {index} is not filed under its bare hash"
            );
        }
        assert!(matches!(
            ledger.index_of(&Hash([7; 32])),
            Err(LedgerError::NoSuchLeaf(_))
        ));
    }

    #[test]
    fn a_log_written_before_the_partitions_is_still_found_by_leaf_hash() {
        let (_dir, backend, ledger) = filled(40, 10);
        // The first 25 entries filed as a ledger before the partitions filed them.
        let leaves = ledger.leaf_hashes(0, 40).expect("leaf hashes");
        let cf = backend.cf(CF_LEAVES).expect("cf");
        for (index, leaf) in leaves.iter().enumerate().take(25) {
            let index = index as u64;
            backend
                .db
                .delete_cf(cf, leaf_key(index, leaf))
                .expect("delete");
            backend
                .db
                .put_cf(cf, leaf.0, index.to_be_bytes())
                .expect("put");
        }
        for (index, leaf) in leaves.iter().enumerate() {
            assert_eq!(ledger.index_of(leaf).expect("found"), index as u64);
        }
    }

    #[test]
    fn proofs_on_a_million_entries_come_from_stored_hashes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend: Arc<dyn LedgerBackend> =
            Arc::new(RocksLedger::open(dir.path()).expect("open"));
        let counter = Arc::new(CountingBackend::new(backend));
        let ledger =
            Ledger::open(counter.clone(), ledger_conformance::test_signer()).expect("open");
        ledger_conformance::fill(&ledger, 1_000_000, 20_000);
        ledger_conformance::proofs_read_only_stored_hashes(&ledger, &counter);
    }

    /// The write amplification of a column family so far, from RocksDB's own compaction
    /// statistics (the `Sum` row of `rocksdb.cfstats`: bytes written by flushes and compactions
    /// over the bytes flushed).
    fn write_amplification(backend: &RocksLedger, name: &str) -> f64 {
        let stats = backend
            .db
            .property_value_cf(backend.cf(name).expect("cf"), "rocksdb.cfstats")
            .expect("property")
            .expect("cfstats");
        let header = stats
            .lines()
            .find(|l| l.trim_start().starts_with("Level"))
            .expect("header row");
        let sum = stats
            .lines()
            .find(|l| l.trim_start().starts_with("Sum"))
            .expect("Sum row");
        // The size column is two tokens ("149.85 MB") in the rows and one in the header.
        let column = header
            .split_whitespace()
            .position(|h| h == "W-Amp")
            .expect("W-Amp column");
        sum.split_whitespace()
            .nth(column + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no W-Amp in {sum:?} under {header:?}"))
    }

    #[test]
    fn the_leaf_index_is_not_rewritten_as_the_log_grows() {
        // Enough entries for several flushes of `leaves` and the compactions they trigger.
        let (_dir, backend, _ledger) = filled(1_000_000, 20_000);
        // Keyed by the bare leaf hash, compactions rewrote the older keys with every few
        // flushes (2.5× here, 6.3× at 3,000,000 entries); with partitions each key is written
        // about once.
        let amplification = write_amplification(&backend, CF_LEAVES);
        assert!(
            amplification <= 1.3,
            "the leaf index was written {amplification}× over"
        );
    }

    #[test]
    fn a_changed_tree_hash_is_never_served_in_a_proof() {
        let (_dir, backend, ledger) = filled(6, 6);
        // Leaf 0's stored hash is not on the right edge of a 6-leaf tree, so opening still
        // works; the proofs that use it must fail instead of going out wrong.
        let cf = backend.cf(CF_TREE).expect("cf");
        backend
            .db
            .put_cf(cf, 0u64.to_be_bytes(), [0xEE; 32])
            .expect("tamper");
        let err = ledger
            .inclusion_proof(1, 6)
            .expect_err("proof from a bad hash");
        assert!(matches!(err, LedgerError::Corrupt(_)), "{err}");
        assert!(ledger.receipt(1).is_err());
        // Entry 5's proof does not use leaf 0's hash and is still served.
        ledger.receipt(5).expect("unaffected receipt");
        // A changed right-edge hash stops the ledger from opening at all.
        drop(ledger);
        let right_edge = custodian_core::merkle::stored_hash_index(1, 2);
        backend
            .db
            .put_cf(cf, right_edge.to_be_bytes(), [0xEE; 32])
            .expect("tamper");
        let err = Ledger::open(backend.clone(), ledger_conformance::test_signer())
            .expect_err("opened with a bad frontier");
        assert!(err.to_string().contains("signed checkpoint says"), "{err}");
    }
}
