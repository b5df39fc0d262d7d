//! The blob metadata index in RocksDB, shared by the RocksDB and object-store backends.
//!
//! Column families:
//! - `meta`: SHA-256 (32 bytes) → location length (1 byte), location, [`BlobMeta`] encoding.
//!   The location is backend-specific (the RocksDB backend stores its extent id there).
//! - `blake3`: BLAKE3 (32 bytes) → SHA-256 (32 bytes).
//! - `pending`: upload id (8 bytes, big-endian) → backend-specific upload record. A record exists
//!   from before an upload's first durable byte until its commit or abort, so whatever a crash
//!   leaves behind is found on the next open.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use custodian_core::{Algorithm, Digest};
use custodian_storage::{BlobMeta, Result, StorageError};
use rocksdb::{ColumnFamilyDescriptor, DB, Options, WriteBatch, WriteOptions};

const CF_META: &str = "meta";
const CF_BLAKE3: &str = "blake3";
const CF_PENDING: &str = "pending";

/// The block cache every column family of every database in the process shares. It is small on
/// purpose: table files are read through the operating system's page cache, which already keeps
/// hot data blocks without counting against the daemon, so this cache needs to hold little more
/// than index blocks. At 32 MiB, `custodian-bench load` measured it still filling after five
/// minutes (resident memory rising 9 MiB/min) and fewer operations per second than at 8 MiB
/// (246/s against 300/s for puts), where it fills during the first minute.
const BLOCK_CACHE_BYTES: usize = 8 << 20;
/// The memtable budget shared the same way: past it, the largest memtable is flushed.
const WRITE_BUFFER_BYTES: usize = 32 << 20;

/// One block cache and one memtable budget for the whole process. Without them each column
/// family gets RocksDB's own defaults (a block cache each, index and filter blocks held outside
/// any cache), and resident memory grows with the data stored: 100 to 160 MiB over five minutes
/// of load, measured with `custodian-bench load`.
fn shared_memory() -> &'static (rocksdb::Cache, rocksdb::WriteBufferManager) {
    static SHARED: std::sync::OnceLock<(rocksdb::Cache, rocksdb::WriteBufferManager)> =
        std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        (
            block_cache(BLOCK_CACHE_BYTES),
            rocksdb::WriteBufferManager::new_write_buffer_manager(WRITE_BUFFER_BYTES, false),
        )
    })
}

/// A block cache of `capacity` bytes in one shard. RocksDB splits a cache into shards of at
/// least 512 KiB by default (16 for 8 MiB), and an entry larger than its shard is dropped as soon
/// as the read that loaded it lets go of it. A table file's filter is one block of 1.25 bytes per
/// key and its index another, so once a column family holds a few hundred thousand digests in
/// one file, each lookup that needed them read them again from the file and checked their
/// checksums: with a million blobs stored, a third of the daemon's time in `FindMissing` (`perf`,
/// docs/performance.md), and 55 MB read for 2,000 absent digests in
/// `a_large_filter_stays_cached_between_lookups`. In one shard they stay; the shard's lock is
/// held for a hash-table operation, which two cores do not contend on measurably.
fn block_cache(capacity: usize) -> rocksdb::Cache {
    let mut options = rocksdb::LruCacheOptions::default();
    options.set_capacity(capacity);
    options.set_num_shard_bits(0);
    rocksdb::Cache::new_lru_cache_opts(&options)
}

/// Table options for column families looked up by digest (blob metadata, BLAKE3 aliases,
/// pending uploads), with the shared block cache; index and filter blocks live in it too, so
/// they are bounded by it rather than growing with the number of table files.
fn digest_table_options(cache: &rocksdb::Cache) -> rocksdb::BlockBasedOptions {
    let mut table = present_table_options(cache);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    // Most lookups of a digest that is not in custody (a put of new bytes, FindMissing, a
    // BatchPut) then end at a filter instead of reading a data block of every level.
    table.set_bloom_filter(10.0, false);
    table
}

/// Table options for column families whose lookups are only of keys known to exist (the
/// ledger's entries and tree hashes, blob blocks found through the index): no filter, which could
/// only say "maybe" and would take the cache's room from the filters that answer "no".
fn present_table_options(cache: &rocksdb::Cache) -> rocksdb::BlockBasedOptions {
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table
}

/// Table options for the column family of blob blocks, which are read by range (an iterator from
/// the blob's first block), where a whole-key filter is never consulted. They once had a filter
/// like the digests' all the same (1.25 MB per million small blobs, which stay inline), taking
/// the cache's room from the filters that answer `FindMissing`.
pub(crate) fn block_table_options() -> rocksdb::BlockBasedOptions {
    present_table_options(&shared_memory().0)
}

/// The error for an index entry that cannot be what it is filed under.
fn corrupt_entry(sha256: [u8; 32], detail: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt {
        digest: Digest::sha256(sha256),
        detail: detail.to_string(),
    }
}

/// The first eight bytes of a key, as a number that orders keys as their bytes do.
fn prefix_u64(key: &[u8; 32]) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&key[..8]);
    u64::from_be_bytes(head)
}

/// Database options shared by Custodian's RocksDB databases (blob index and ledger).
pub(crate) fn db_options() -> Options {
    let mut db_opts = Options::default();
    db_opts.set_write_buffer_manager(&shared_memory().1);
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    // The daemon must stay small (a 100 MiB RSS budget); RocksDB's own defaults assume a
    // dedicated server.
    db_opts.set_max_open_files(256);
    db_opts.set_max_total_wal_size(64 << 20);
    db_opts.set_keep_log_file_num(3);
    db_opts.set_max_background_jobs(2);
    db_opts
}

/// A column family keyed by digest (or id), with a memtable of `write_buffer` bytes.
pub(crate) fn cf_descriptor(name: &str, write_buffer: usize) -> ColumnFamilyDescriptor {
    ColumnFamilyDescriptor::new(name, cf_options(write_buffer))
}

/// The options of [`cf_descriptor`], for a caller that adds its own.
pub(crate) fn cf_options(write_buffer: usize) -> Options {
    let mut o = Options::default();
    o.set_write_buffer_size(write_buffer);
    o.set_block_based_table_factory(&digest_table_options(&shared_memory().0));
    // The memtable gets a filter of its own (a tenth of its size): most digests looked up are
    // not in custody (every new blob of a put or `BatchPut`, twice; `FindMissing`), and without
    // it each of them searched the memtable's skip list, a chain of cache misses.
    o.set_memtable_prefix_bloom_ratio(0.1);
    o.set_memtable_whole_key_filtering(true);
    // A batched read's sorted keys are looked up in the memtable one after another from where
    // the key before was found, not each from the skip list's head: the memtable's search was
    // the largest part of a `FindMissing` of 10,000 digests.
    crate::sorted_read::batch_memtable_lookups(&mut o);
    o
}

/// A column family keyed by position (the ledger's entries and tree hashes): every key below
/// the end exists, and nothing is looked up that is not there, so a Bloom filter could only say
/// "maybe" and costs memory. At 10,000,000 entries the tree's filters alone are about 25 MB,
/// three times the shared block cache, and an inclusion proof (about 24 lookups) spent most of
/// its time reloading filter blocks the cache had just evicted: median 451 µs, p99 915 µs,
/// against 152 µs and 400 µs without filters (`custodian-bench ledger --log-size 10000000`,
/// docs/performance.md). A partitioned index was tried too and was slower (190 µs, 812 µs).
pub(crate) fn dense_cf_descriptor(name: &str, write_buffer: usize) -> ColumnFamilyDescriptor {
    let mut o = Options::default();
    o.set_write_buffer_size(write_buffer);
    o.set_block_based_table_factory(&present_table_options(&shared_memory().0));
    ColumnFamilyDescriptor::new(name, o)
}

/// A committed blob as the index records it.
#[derive(Clone, Debug)]
pub struct IndexEntry {
    /// Where the backend keeps the bytes.
    pub location: Vec<u8>,
    /// The verified metadata.
    pub meta: BlobMeta,
}

/// The RocksDB index of committed blobs and pending uploads.
pub struct RocksIndex {
    db: Arc<DB>,
    backend: &'static str,
    next_upload: AtomicU64,
    /// Serialise commits and deletes of one digest, so that check-then-write on it is atomic.
    /// Striped by digest rather than one lock for all: commits of different blobs then reach
    /// RocksDB together, and its write group shares one WAL sync among them.
    commit_locks: Vec<Mutex<()>>,
    poisoned: AtomicBool,
    poison_cause: Mutex<String>,
}

/// How many commit locks the digests are spread over.
const COMMIT_LOCK_STRIPES: usize = 64;

impl RocksIndex {
    /// Opens (creating if needed) the index at `path`, with extra column families for the
    /// backend's own data.
    pub fn open(
        path: &Path,
        backend: &'static str,
        extra: Vec<ColumnFamilyDescriptor>,
    ) -> Result<Self> {
        let db_opts = db_options();
        let mut cfs = vec![
            cf_descriptor(CF_META, 4 << 20),
            cf_descriptor(CF_BLAKE3, 4 << 20),
            cf_descriptor(CF_PENDING, 4 << 20),
        ];
        cfs.extend(extra);
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)
            .map_err(|e| StorageError::backend(backend, format!("open {}: {e}", path.display())))?;
        let index = RocksIndex {
            db: Arc::new(db),
            backend,
            next_upload: AtomicU64::new(0),
            commit_locks: (0..COMMIT_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(String::new()),
        };
        let last = index.pending()?.last().map_or(0, |(id, _)| *id);
        // Upload ids only need to be unique among live uploads and leftovers; starting past both
        // the largest leftover and the clock keeps them unique across restarts too.
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        index
            .next_upload
            .store(last.max(clock) + 1, Ordering::SeqCst);
        Ok(index)
    }

    /// The underlying database, for the backend's own column families.
    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// A backend error with this index's backend name.
    pub fn err(&self, message: impl std::fmt::Display) -> StorageError {
        StorageError::backend(self.backend, message)
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| self.err(format!("column family {name} is missing")))
    }

    /// Refuses writes once a write or sync has failed: after such a failure the store can no
    /// longer tell what reached the disk, so it stops rather than guess.
    pub fn check_writable(&self) -> Result<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            let cause = self
                .poison_cause
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            return Err(StorageError::Poisoned {
                backend: self.backend,
                cause,
            });
        }
        Ok(())
    }

    /// Writes a batch, synced to disk before returning. A failure poisons the index.
    pub fn write_synced(&self, batch: WriteBatch) -> Result<()> {
        self.check_writable()?;
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        // When RocksDB applies several writers' batches at once, each batch keeps its place in
        // each memtable between its keys, which helps the ascending keys of `add_commits`.
        opts.set_memtable_insert_hint_per_batch(true);
        self.db.write_opt(batch, &opts).map_err(|e| self.poison(e))
    }

    /// Records a write failure and refuses further writes until reopened.
    pub fn poison(&self, cause: impl std::fmt::Display) -> StorageError {
        let cause = cause.to_string();
        tracing::error!(backend = self.backend, %cause, "write failed; refusing further writes until restart");
        *self.poison_cause.lock().unwrap_or_else(|e| e.into_inner()) = cause.clone();
        self.poisoned.store(true, Ordering::SeqCst);
        StorageError::Poisoned {
            backend: self.backend,
            cause,
        }
    }

    /// Takes the commit lock of a blob (by its SHA-256). Hold it across a check of the index and
    /// the write that follows.
    pub fn lock_commits(&self, sha256: &Digest) -> MutexGuard<'_, ()> {
        let stripe = sha256.bytes()[0] as usize % COMMIT_LOCK_STRIPES;
        self.commit_locks[stripe]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the commit locks of many blobs at once, in stripe order (so two callers never wait
    /// on each other in a cycle).
    pub fn lock_commits_many(&self, sha256s: &[Digest]) -> Vec<MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = sha256s
            .iter()
            .map(|d| d.bytes()[0] as usize % COMMIT_LOCK_STRIPES)
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .map(|s| {
                self.commit_locks[s]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
            })
            .collect()
    }

    fn sha256_for(&self, digest: &Digest) -> Result<Option<[u8; 32]>> {
        match digest.algorithm() {
            Algorithm::Sha256 => Ok(Some(*digest.bytes())),
            Algorithm::Blake3 => {
                let value = self
                    .db
                    .get_pinned_cf(self.cf(CF_BLAKE3)?, digest.bytes())
                    .map_err(|e| self.read_err(Some(digest), e))?;
                match value {
                    None => Ok(None),
                    Some(v) => {
                        let bytes: [u8; 32] =
                            v.as_ref().try_into().map_err(|_| StorageError::Corrupt {
                                digest: *digest,
                                detail: "BLAKE3 index entry is not 32 bytes".into(),
                            })?;
                        Ok(Some(bytes))
                    }
                }
            }
        }
    }

    fn decode_entry(sha256: [u8; 32], value: &[u8]) -> Result<IndexEntry> {
        let (location, meta) = Self::split_entry(sha256, value)?;
        Ok(IndexEntry {
            location: location.to_vec(),
            meta,
        })
    }

    /// Splits a metadata value into its location and its checked metadata.
    fn split_entry(sha256: [u8; 32], value: &[u8]) -> Result<(&[u8], BlobMeta)> {
        let (location, encoded) = Self::split_location(sha256, value)?;
        let meta = BlobMeta::decode(encoded).map_err(|e| corrupt_entry(sha256, e))?;
        Self::check_filed_under(sha256, &meta.sha256())?;
        Ok((location, meta))
    }

    /// Checks a metadata value as far as a presence answer needs: well framed, and describing
    /// the digest it is filed under.
    fn check_present(sha256: [u8; 32], value: &[u8]) -> Result<()> {
        let (_, encoded) = Self::split_location(sha256, value)?;
        let described = BlobMeta::peek_sha256(encoded).map_err(|e| corrupt_entry(sha256, e))?;
        Self::check_filed_under(sha256, &described)
    }

    /// Splits a metadata value into the location and the encoded metadata.
    fn split_location(sha256: [u8; 32], value: &[u8]) -> Result<(&[u8], &[u8])> {
        let (&len, rest) = value
            .split_first()
            .ok_or_else(|| corrupt_entry(sha256, "metadata entry is empty"))?;
        let len = usize::from(len);
        if rest.len() < len {
            return Err(corrupt_entry(sha256, "metadata entry is truncated"));
        }
        Ok(rest.split_at(len))
    }

    fn check_filed_under(sha256: [u8; 32], described: &Digest) -> Result<()> {
        if described.bytes() != &sha256 {
            return Err(corrupt_entry(
                sha256,
                format!("metadata is filed under this digest but describes {described}"),
            ));
        }
        Ok(())
    }

    /// The committed entry for a digest of either algorithm.
    pub fn lookup(&self, digest: &Digest) -> Result<Option<IndexEntry>> {
        let Some(sha256) = self.sha256_for(digest)? else {
            return Ok(None);
        };
        let value = self
            .db
            .get_pinned_cf(self.cf(CF_META)?, sha256)
            .map_err(|e| self.read_err(Some(&Digest::sha256(sha256)), e))?;
        match value {
            None => Ok(None),
            Some(v) => {
                let entry = Self::decode_entry(sha256, &v)?;
                if digest.algorithm() == Algorithm::Blake3 && entry.meta.digests.blake3 != *digest {
                    return Err(StorageError::Corrupt {
                        digest: entry.meta.sha256(),
                        detail: format!(
                            "BLAKE3 index points here for {digest}, but the blob's BLAKE3 differs"
                        ),
                    });
                }
                Ok(Some(entry))
            }
        }
    }

    /// Looks up many digests with batched reads.
    pub fn lookup_many(&self, digests: &[Digest]) -> Result<Vec<Option<BlobMeta>>> {
        self.read_many(digests, |sha256, value| {
            Ok(Self::split_entry(sha256, value)?.1)
        })
    }

    /// Whether each of many digests is committed, with batched reads and without decoding
    /// each blob's metadata.
    pub fn present_many(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        let found = self.read_many(digests, Self::check_present)?;
        Ok(found.iter().map(Option::is_some).collect())
    }

    /// Reads the metadata values of many digests (either algorithm) in two batched reads and
    /// turns each value found into a `T` with `read`, where the value lies.
    fn read_many<T>(
        &self,
        digests: &[Digest],
        read: impl Fn([u8; 32], &[u8]) -> Result<T>,
    ) -> Result<Vec<Option<T>>> {
        // Resolve BLAKE3 digests first, in one batch, then fetch all metadata in another.
        let mut sha_keys: Vec<Option<[u8; 32]>> = digests
            .iter()
            .map(|d| (d.algorithm() == Algorithm::Sha256).then(|| *d.bytes()))
            .collect();
        let blake3_keys: Vec<([u8; 32], usize)> = digests
            .iter()
            .enumerate()
            .filter(|(_, d)| d.algorithm() == Algorithm::Blake3)
            .map(|(i, d)| (*d.bytes(), i))
            .collect();
        if !blake3_keys.is_empty() {
            self.read_keys(CF_BLAKE3, blake3_keys, |_, i, sha256| {
                sha_keys[i] = sha256.try_into().ok();
                Ok(())
            })?;
        }
        let meta_keys: Vec<([u8; 32], usize)> = sha_keys
            .iter()
            .enumerate()
            .filter_map(|(i, key)| key.map(|k| (k, i)))
            .collect();
        let mut out: Vec<Option<T>> = (0..digests.len()).map(|_| None).collect();
        self.read_keys(CF_META, meta_keys, |sha256, i, value| {
            out[i] = Some(read(sha256, value)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Reads many keys of `cf` in one batched read and calls `visit` with each key found, the
    /// place the caller gave it, and its value (lent, not copied).
    fn read_keys(
        &self,
        cf: &str,
        keys: Vec<([u8; 32], usize)>,
        mut visit: impl FnMut([u8; 32], usize, &[u8]) -> Result<()>,
    ) -> Result<()> {
        // RocksDB sorts a batch it is given unsorted through its comparator, which costs more than
        // the read itself at 10,000 keys. Sorting here is cheaper: digests are uniformly spread,
        // so their first eight bytes order them almost always, and the whole key breaks the rare
        // tie (and orders a digest asked for twice).
        let mut order: Vec<(u64, [u8; 32], usize)> = keys
            .into_iter()
            .map(|(key, i)| (prefix_u64(&key), key, i))
            .collect();
        order.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let sorted: Vec<[u8; 32]> = order.iter().map(|(_, key, _)| *key).collect();
        crate::sorted_read::read_sorted(
            &self.db,
            self.cf(cf)?,
            &sorted,
            self.backend,
            |j, value| {
                let (_, key, i) = order[j];
                visit(key, i, value)
            },
        )
    }

    /// Adds the index records of a newly committed blob to `batch`.
    pub fn add_commit(
        &self,
        batch: &mut WriteBatch,
        location: &[u8],
        meta: &BlobMeta,
    ) -> Result<()> {
        self.add_commits(batch, &[(location, meta)])
    }

    /// Adds the index records of many newly committed blobs to `batch`, each column family's keys
    /// in ascending order. RocksDB inserts a batch's keys into a memtable one after another, and
    /// an insert just after the one before it reuses that insert's path through the skip list
    /// instead of searching from its top: with a thousand random digests, the searches were
    /// most of the memtable's cost in a `BatchPut`.
    pub fn add_commits(
        &self,
        batch: &mut WriteBatch,
        commits: &[(&[u8], &BlobMeta)],
    ) -> Result<()> {
        let mut order: Vec<usize> = (0..commits.len()).collect();
        order.sort_unstable_by_key(|&i| *commits[i].1.sha256().bytes());
        let meta_cf = self.cf(CF_META)?;
        for &i in &order {
            let (location, meta) = commits[i];
            let len = u8::try_from(location.len())
                .map_err(|_| self.err("location longer than 255 bytes"))?;
            let mut value = Vec::with_capacity(1 + location.len() + 64);
            value.push(len);
            value.extend_from_slice(location);
            value.extend_from_slice(&meta.encode());
            batch.put_cf(meta_cf, meta.sha256().bytes(), value);
        }
        order.sort_unstable_by_key(|&i| *commits[i].1.digests.blake3.bytes());
        let blake3_cf = self.cf(CF_BLAKE3)?;
        for &i in &order {
            let meta = commits[i].1;
            batch.put_cf(
                blake3_cf,
                meta.digests.blake3.bytes(),
                meta.sha256().bytes(),
            );
        }
        Ok(())
    }

    /// Adds the removal of a committed blob's index records to `batch`.
    pub fn add_delete(&self, batch: &mut WriteBatch, meta: &BlobMeta) -> Result<()> {
        batch.delete_cf(self.cf(CF_META)?, meta.sha256().bytes());
        batch.delete_cf(self.cf(CF_BLAKE3)?, meta.digests.blake3.bytes());
        Ok(())
    }

    /// Up to `limit` committed SHA-256 digests after `after`, in byte order (keys only, so an
    /// entry whose value no longer decodes is still listed).
    pub fn list(&self, after: Option<Digest>, limit: usize) -> Result<Vec<Digest>> {
        let start = after.map(|d| *d.bytes());
        let mode = match &start {
            Some(key) => rocksdb::IteratorMode::From(key, rocksdb::Direction::Forward),
            None => rocksdb::IteratorMode::Start,
        };
        let mut out = Vec::with_capacity(limit.min(4096));
        for item in self.db.iterator_cf(self.cf(CF_META)?, mode) {
            let (key, _) = item.map_err(|e| self.read_err(None, e))?;
            let Ok(bytes) = <[u8; 32]>::try_from(key.as_ref()) else {
                return Err(self.err(format!(
                    "metadata key of {} bytes; keys are 32-byte SHA-256 digests",
                    key.len()
                )));
            };
            if start == Some(bytes) {
                continue;
            }
            out.push(Digest::sha256(bytes));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// Removes a blob's index records when its metadata may be unreadable: the metadata entry
    /// always, the BLAKE3 entry when the metadata still names it. Synced.
    /// Takes the blob's commit lock itself.
    pub fn forget(&self, sha256: &Digest) -> Result<()> {
        let _guard = self.lock_commits(sha256);
        let mut batch = WriteBatch::default();
        if let Ok(Some(entry)) = self.lookup(sha256) {
            batch.delete_cf(self.cf(CF_BLAKE3)?, entry.meta.digests.blake3.bytes());
        }
        batch.delete_cf(self.cf(CF_META)?, sha256.bytes());
        self.write_synced(batch)
    }

    /// Converts a RocksDB read error: a checksum or format failure in stored data is
    /// [`StorageError::Corrupt`] naming the blob read (so clients see DATA_LOSS, not an internal
    /// error); anything else is a backend error.
    pub fn read_err(&self, digest: Option<&Digest>, e: rocksdb::Error) -> StorageError {
        match (e.kind(), digest) {
            (rocksdb::ErrorKind::Corruption, Some(digest)) => StorageError::Corrupt {
                digest: *digest,
                detail: format!("RocksDB reports stored data damaged: {e}"),
            },
            _ => self.err(e),
        }
    }

    /// A fresh upload id.
    pub fn new_upload_id(&self) -> u64 {
        self.next_upload.fetch_add(1, Ordering::SeqCst)
    }

    /// Durably records an upload as pending, with a backend-specific record.
    pub fn add_pending(&self, id: u64, record: &[u8]) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_PENDING)?, id.to_be_bytes(), record);
        self.write_synced(batch)
    }

    /// Adds a pending record for upload `id` to `batch`.
    pub fn add_pending_to(&self, batch: &mut WriteBatch, id: u64) -> Result<()> {
        batch.put_cf(self.cf(CF_PENDING)?, id.to_be_bytes(), b"");
        Ok(())
    }

    /// Adds pending record `id` with a backend-specific `record` to `batch`.
    pub fn add_pending_record_to(
        &self,
        batch: &mut WriteBatch,
        id: u64,
        record: &[u8],
    ) -> Result<()> {
        batch.put_cf(self.cf(CF_PENDING)?, id.to_be_bytes(), record);
        Ok(())
    }

    /// Keeps fresh ids past `id`: the backend found a file named by it that must never be
    /// named again (the clock the ids start from may have gone back since it was made).
    pub fn reserve_ids_through(&self, id: u64) {
        self.next_upload
            .fetch_max(id.saturating_add(1), Ordering::SeqCst);
    }

    /// Durably records many uploads as pending, in one synced write.
    pub fn add_pending_many<'a>(
        &self,
        records: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (id, record) in records {
            batch.put_cf(self.cf(CF_PENDING)?, id.to_be_bytes(), record);
        }
        self.write_synced(batch)
    }

    /// Adds the removal of a pending-upload record to `batch`.
    pub fn add_pending_removal(&self, batch: &mut WriteBatch, id: u64) -> Result<()> {
        batch.delete_cf(self.cf(CF_PENDING)?, id.to_be_bytes());
        Ok(())
    }

    /// Every pending upload record, oldest id first.
    pub fn pending(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        self.each_pending(|id, record| out.push((id, record.to_vec())))?;
        Ok(out)
    }

    /// Calls `f` with each pending record's id and bytes, oldest id first. The raw iterator
    /// lends each record, so a caller that keeps few of them copies only those.
    fn each_pending(&self, mut f: impl FnMut(u64, &[u8])) -> Result<()> {
        let mut records = self.db.raw_iterator_cf(self.cf(CF_PENDING)?);
        records.seek_to_first();
        while let (Some(key), Some(record)) = (records.key(), records.value()) {
            let id: [u8; 8] = key
                .try_into()
                .map_err(|_| self.err("pending-upload key is not 8 bytes"))?;
            f(u64::from_be_bytes(id), record);
            records.next();
        }
        records.status().map_err(|e| self.err(e))
    }
}

/// The embedded index as an object-store backend's index: one daemon's alone.
impl custodian_storage::BlobIndex for RocksIndex {
    fn remote(&self) -> bool {
        false
    }

    fn shared(&self) -> bool {
        false
    }

    fn check_writable(&self) -> Result<()> {
        RocksIndex::check_writable(self)
    }

    fn poison(&self, cause: String) -> StorageError {
        RocksIndex::poison(self, cause)
    }

    fn lookup(&self, digest: &Digest) -> Result<Option<BlobMeta>> {
        Ok(RocksIndex::lookup(self, digest)?.map(|entry| entry.meta))
    }

    fn lookup_many(&self, digests: &[Digest]) -> Result<Vec<Option<BlobMeta>>> {
        RocksIndex::lookup_many(self, digests)
    }

    fn present_many(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        RocksIndex::present_many(self, digests)
    }

    fn new_upload_id(&self) -> u64 {
        RocksIndex::new_upload_id(self)
    }

    fn add_pending(&self, records: &[custodian_storage::PendingUpload]) -> Result<()> {
        // One daemon owns this index: its retention gate, not the index, keeps a collection
        // from deleting what a put writes, so `places` is not recorded.
        self.add_pending_many(records.iter().map(|p| (p.id, p.record.as_slice())))
    }

    fn remove_pending(&self, ids: &[u64]) -> Result<()> {
        let mut batch = WriteBatch::default();
        for id in ids {
            self.add_pending_removal(&mut batch, *id)?;
        }
        self.db.write(batch).map_err(|e| self.err(e))
    }

    fn leftovers(
        &self,
        live: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Vec<custodian_storage::Leftover>> {
        // Nobody else uses this index: every record is this daemon's, and one whose upload has
        // ended is a leftover. Only leftovers' records are copied.
        let mut out = Vec::new();
        self.each_pending(|id, record| {
            if !live(id) {
                out.push(custodian_storage::Leftover {
                    id,
                    record: record.to_vec(),
                    own: true,
                });
            }
        })?;
        Ok(out)
    }

    fn pending_count(&self) -> Result<u64> {
        let mut count = 0;
        self.each_pending(|_, _| count += 1)?;
        Ok(count)
    }

    fn probe(&self) -> Result<()> {
        // The database is in this process: it answers unless a failed write has poisoned it.
        RocksIndex::check_writable(self)
    }

    fn commit(&self, commits: &[(u64, BlobMeta)]) -> Result<Vec<(BlobMeta, bool)>> {
        let digests: Vec<Digest> = commits.iter().map(|(_, meta)| meta.sha256()).collect();
        let _guards = self.lock_commits_many(&digests);
        let mut batch = WriteBatch::default();
        let mut added: std::collections::HashMap<Digest, BlobMeta> =
            std::collections::HashMap::new();
        let mut out = Vec::with_capacity(commits.len());
        // One batched read for the whole commit (a batch of small blobs is a thousand digests;
        // a point read each cost more than the write on a store of a million blobs).
        let existing = RocksIndex::lookup_many(self, &digests)?;
        for ((id, meta), existing) in commits.iter().zip(existing) {
            self.add_pending_removal(&mut batch, *id)?;
            if let Some(earlier) = added.get(&meta.sha256()) {
                out.push((earlier.clone(), true));
                continue;
            }
            match existing {
                // Committed by another upload meanwhile: its record stands, and the object was
                // overwritten with identical bytes.
                Some(existing) => out.push((existing, true)),
                None => {
                    self.add_commit(&mut batch, &[], meta)?;
                    added.insert(meta.sha256(), meta.clone());
                    out.push((meta.clone(), false));
                }
            }
        }
        self.write_synced(batch)?;
        Ok(out)
    }

    fn delete(&self, sha256: &Digest) -> Result<Option<BlobMeta>> {
        let _guard = self.lock_commits(sha256);
        let Some(entry) = RocksIndex::lookup(self, sha256)? else {
            return Ok(None);
        };
        let mut batch = WriteBatch::default();
        self.add_delete(&mut batch, &entry.meta)?;
        self.write_synced(batch)?;
        Ok(Some(entry.meta))
    }

    fn delete_many(&self, sha256s: &[Digest]) -> Result<Vec<Option<BlobMeta>>> {
        let _guards = self.lock_commits_many(sha256s);
        let found = RocksIndex::lookup_many(self, sha256s)?;
        let mut batch = WriteBatch::default();
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(sha256s.len());
        for (sha256, meta) in sha256s.iter().zip(found) {
            match meta {
                Some(meta) if seen.insert(*sha256) => {
                    self.add_delete(&mut batch, &meta)?;
                    out.push(Some(meta));
                }
                _ => out.push(None),
            }
        }
        // One synced write for all of them: every entry is gone, or none.
        if !seen.is_empty() {
            self.write_synced(batch)?;
        }
        Ok(out)
    }

    fn list(&self, after: Option<Digest>, limit: usize) -> Result<Vec<Digest>> {
        RocksIndex::list(self, after, limit)
    }

    fn forget(&self, sha256: &Digest) -> Result<()> {
        RocksIndex::forget(self, sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_core::BlobDigests;

    fn meta_of(data: &[u8]) -> BlobMeta {
        BlobMeta {
            digests: BlobDigests::of(data),
            size: data.len() as u64,
            created_unix_ms: 1,
            block_size: 4096,
            block_crcs: vec![crc32c::crc32c(data)],
            packed: None,
        }
    }

    /// The batched reads (presence and metadata) agree with what was committed, whether the
    /// entries are in the memtable or in table files, for digests of both algorithms asked for
    /// in any order, absent ones and one asked for twice among them. RocksDB's sorted reads
    /// would answer wrongly for keys out of order, and the memtable's batched search starts
    /// each key where the one before was found, so a key found at the wrong place fails here.
    #[test]
    fn batched_reads_agree_with_what_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let index = RocksIndex::open(dir.path(), "test", Vec::new()).unwrap();
        let metas: Vec<BlobMeta> = (0..3000u32).map(|i| meta_of(&i.to_le_bytes())).collect();
        for part in metas.chunks(500) {
            let mut batch = WriteBatch::default();
            let entries: Vec<(&[u8], &BlobMeta)> = part.iter().map(|m| (&b"loc"[..], m)).collect();
            index.add_commits(&mut batch, &entries).unwrap();
            index.write_synced(batch).unwrap();
        }
        // Every third blob by SHA-256, every fifth by BLAKE3, 1,000 digests never committed,
        // one digest twice; then scrambled by a fixed permutation.
        let mut query: Vec<(Digest, Option<&BlobMeta>)> = Vec::new();
        for (i, meta) in metas.iter().enumerate() {
            if i % 3 == 0 {
                query.push((meta.sha256(), Some(meta)));
            }
            if i % 5 == 0 {
                query.push((meta.digests.blake3, Some(meta)));
            }
        }
        for i in 0..1000u32 {
            query.push((
                Digest::of(Algorithm::Sha256, &(i + 100_000).to_le_bytes()),
                None,
            ));
            query.push((
                Digest::of(Algorithm::Blake3, &(i + 100_000).to_le_bytes()),
                None,
            ));
        }
        query.push((metas[7].sha256(), Some(&metas[7])));
        query.push((metas[7].sha256(), Some(&metas[7])));
        // 7919 is prime and does not divide the length, so this visits every place once.
        let n = query.len();
        assert_ne!(n % 7919, 0);
        let scrambled: Vec<(Digest, Option<&BlobMeta>)> =
            (0..n).map(|i| query[(i * 7919) % n]).collect();
        let digests: Vec<Digest> = scrambled.iter().map(|(d, _)| *d).collect();
        let expected: Vec<Option<Digest>> = scrambled
            .iter()
            .map(|(_, meta)| meta.map(BlobMeta::sha256))
            .collect();
        let check = |index: &RocksIndex| {
            let present = index.present_many(&digests).unwrap();
            assert_eq!(
                present,
                expected.iter().map(Option::is_some).collect::<Vec<_>>()
            );
            let found: Vec<Option<Digest>> = index
                .lookup_many(&digests)
                .unwrap()
                .iter()
                .map(|m| m.as_ref().map(BlobMeta::sha256))
                .collect();
            assert_eq!(found, expected);
        };
        check(&index);
        for cf in [CF_META, CF_BLAKE3] {
            index.db.flush_cf(index.cf(cf).unwrap()).unwrap();
        }
        check(&index);
    }

    /// Every read path refuses an entry that describes another blob than the digest it is filed
    /// under, or that is cut short: the presence check too, though it decodes less.
    #[test]
    fn misfiled_and_truncated_entries_are_corrupt_on_every_read_path() {
        let dir = tempfile::tempdir().unwrap();
        let index = RocksIndex::open(dir.path(), "test", Vec::new()).unwrap();
        let good = meta_of(b"good");
        let other = meta_of(b"other");
        let misfiled = Digest::of(Algorithm::Sha256, b"misfiled");
        let truncated = Digest::of(Algorithm::Sha256, b"truncated");
        let mut batch = WriteBatch::default();
        index.add_commit(&mut batch, b"loc", &good).unwrap();
        // `other`'s metadata under a digest that is not its own.
        let mut value = vec![3u8];
        value.extend_from_slice(b"loc");
        value.extend_from_slice(&other.encode());
        batch.put_cf(index.cf(CF_META).unwrap(), misfiled.bytes(), &value);
        batch.put_cf(index.cf(CF_META).unwrap(), truncated.bytes(), &value[..20]);
        index.write_synced(batch).unwrap();

        let absent = Digest::of(Algorithm::Sha256, b"absent");
        assert_eq!(
            index
                .present_many(&[absent, good.sha256(), good.digests.blake3])
                .unwrap(),
            vec![false, true, true]
        );
        for bad in [misfiled, truncated] {
            let query = [good.sha256(), bad];
            let corrupt = |result: Result<()>| match result {
                Err(StorageError::Corrupt { digest, .. }) => assert_eq!(digest, bad),
                other => panic!("{bad}: expected Corrupt, got {other:?}"),
            };
            corrupt(index.lookup(&bad).map(drop));
            corrupt(index.lookup_many(&query).map(drop));
            corrupt(index.present_many(&query).map(drop));
        }
    }

    /// A sweep reads only the records of uploads that have ended; the count and the probe
    /// read no record at all, and all three see every record however many are pending.
    #[test]
    fn leftovers_leave_out_live_uploads_and_the_count_sees_every_record() {
        use custodian_storage::BlobIndex as _;
        let dir = tempfile::tempdir().unwrap();
        let index = RocksIndex::open(dir.path(), "test", Vec::new()).unwrap();
        let ids: Vec<u64> = (0..5).map(|_| index.new_upload_id()).collect();
        let records: Vec<(u64, Vec<u8>)> = ids
            .iter()
            .map(|id| (*id, id.to_le_bytes().to_vec()))
            .collect();
        index
            .add_pending_many(records.iter().map(|(id, r)| (*id, r.as_slice())))
            .unwrap();
        let live = |id: u64| id == ids[1] || id == ids[3];
        let leftovers = index.leftovers(&live).unwrap();
        let found: Vec<(u64, Vec<u8>, bool)> = leftovers
            .into_iter()
            .map(|l| (l.id, l.record, l.own))
            .collect();
        let expected: Vec<(u64, Vec<u8>, bool)> = [0, 2, 4]
            .iter()
            .map(|i| (ids[*i], ids[*i].to_le_bytes().to_vec(), true))
            .collect();
        assert_eq!(found, expected);
        assert_eq!(index.pending_count().unwrap(), 5);
        assert!(index.leftovers(&|_| true).unwrap().is_empty());
        index.remove_pending(&ids[..2]).unwrap();
        assert_eq!(index.pending_count().unwrap(), 3);
        index.probe().unwrap();
        index.poison("a write failed");
        assert!(
            index.probe().is_err(),
            "a poisoned index must not answer as ready"
        );
    }

    /// A table file's filter and index stay in a cache built like the daemon's between two
    /// queries for absent digests, with other blocks read in between, although the filter alone
    /// is larger than one of the 512 KiB shards RocksDB would split the cache into by default.
    /// The second query then reads from the table file only the data blocks of its
    /// filter's false positives (about 1% of the digests asked).
    #[test]
    fn a_large_filter_stays_cached_between_lookups() {
        use rocksdb::perf::{PerfContext, PerfMetric, PerfStatsLevel};
        let dir = tempfile::tempdir().unwrap();
        let cache = block_cache(BLOCK_CACHE_BYTES);
        let mut cf_options = Options::default();
        cf_options.set_block_based_table_factory(&digest_table_options(&cache));
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        let db = DB::open_cf_descriptors(
            &db_options,
            dir.path(),
            vec![ColumnFamilyDescriptor::new(CF_META, cf_options)],
        )
        .unwrap();
        let cf = db.cf_handle(CF_META).unwrap();
        let key = |i: u32| *Digest::of(Algorithm::Sha256, &i.to_be_bytes()).bytes();
        // 700,000 digests in one table file: a filter of 875 KB and an index of 208 KB, where a
        // default shard of this cache holds 512 KiB in all.
        const STORED: u32 = 700_000;
        // Two overlapping flushes, merged by a compaction: a file moved down whole would keep the
        // table reader it had in level 0, whose filter and index are pinned.
        for half in [0..STORED / 2, STORED / 2..STORED] {
            let mut batch = WriteBatch::default();
            for i in half {
                batch.put_cf(cf, key(i), [0x11u8; 40]);
            }
            db.write(batch).unwrap();
            db.flush_cf(cf).unwrap();
        }
        db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        let sorted = |range: std::ops::Range<u32>| {
            let mut keys: Vec<[u8; 32]> = range.map(key).collect();
            keys.sort_unstable();
            keys
        };
        let read = |keys: &[[u8; 32]]| -> usize {
            db.batched_multi_get_cf(cf, keys.iter(), true)
                .into_iter()
                .filter(|r| matches!(r, Ok(Some(_))))
                .count()
        };
        const ASKED: u32 = 2_000;
        assert_eq!(read(&sorted(STORED..STORED + ASKED)), 0);
        // Data blocks of stored digests pass through the cache.
        assert_eq!(read(&sorted(0..500)), 500);
        rocksdb::perf::set_perf_stats(PerfStatsLevel::EnableCount);
        let mut context = PerfContext::default();
        context.reset();
        assert_eq!(read(&sorted(2 * STORED..2 * STORED + ASKED)), 0);
        let read_bytes = context.metric(PerfMetric::BlockReadByte);
        rocksdb::perf::set_perf_stats(PerfStatsLevel::Disable);
        // False positives: about 20 data blocks of 4 KiB (74 KB measured). With RocksDB's default
        // 16 shards the filter and index were read again for each of them: 55 MB.
        assert!(
            read_bytes < 200_000,
            "the second lookup of {ASKED} absent digests read {read_bytes} bytes of table blocks"
        );
    }
}
