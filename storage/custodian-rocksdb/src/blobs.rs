//! The embedded default backend: blob bytes beside their metadata, in RocksDB or in one file per
//! blob.
//!
//! Layout:
//! - A blob of at most one block is stored in the `chunks` column family, key extent id
//!   (8 bytes, big-endian) ‖ block index (8 bytes, big-endian), committed in the same synced
//!   batch as its metadata: small blobs cost one synced write each, and many of them share one
//!   (`BatchPut`).
//! - A larger blob is one file, `extents/<extent id as 16 hex digits>`, its blocks one after
//!   another. Its bytes are written once, straight into the page cache, and never rewritten:
//!   no memtable copy, no flush, no compaction, and no per-block table entries, so a large put
//!   costs the same however much the store already holds. An upload session's staged file
//!   becomes that file by a rename ([`BlockSink::adopt_file`]), so resumable uploads write each
//!   byte once too.
//! - A batch of small blobs (`BatchPut`) puts each blob of at least 4 KiB into one *pack*,
//!   `packs/<pack id as 16 hex digits>`: the blobs back to back at 4 KiB boundaries
//!   ([`custodian_storage::packs`]), each blob's metadata naming the pack and its offset. The pack
//!   is written and synced, then one synced batch commits every blob's metadata and the pack's
//!   record in the `packs` column family. Its bytes are written once: in `chunks` they were
//!   written to RocksDB's log and again into blob files at every flush, which held batches to
//!   about half the disk's rate. Smaller blobs stay in `chunks`, where a few hundred bytes cost
//!   less than a 4 KiB block of a pack.
//! - Stores written before this layout keep larger blobs in `chunks`, one key per block; they
//!   are read as before.
//!
//! The index records each blob's location: 8 bytes (an extent in `chunks`), `f` ‖ 8 bytes (a
//! file) or `p` ‖ 8 bytes (a pack; the offset is in the blob's metadata).
//!
//! Write path of a larger upload:
//! 1. The first block is held in memory until a second arrives.
//! 2. Then a pending record for the extent is written and synced, the file is created, and every
//!    block is written at its offset.
//! 3. On commit the file and its directory are synced, then one synced batch adds the metadata
//!    and BLAKE3 index and removes the pending record. Only now is the blob visible.
//!
//! Abort, a dropped upload, or a duplicate commit delete the extent's file and pending record. A
//! delete removes the index entries and writes a pending record for the file in one synced
//! batch, then removes the file. After a crash, [`RocksBackend::open`] deletes the blocks and
//! file of every extent that still has a pending record.
//!
//! A pack needs no pending record before it is written: [`RocksBackend::open`] removes every
//! pack file that has no record in `packs` (a crash came between the pack and the commit, so
//! none of its blobs was ever visible). Deleting a packed blob removes its index entries, lowers
//! its pack's count of live blobs and writes a pending record naming its range, in one synced
//! batch; the delete then returns, and a background thread frees the range: a pack whose count
//! reached zero is removed whole (with its record), any other has the range punched out. The
//! next open frees any range whose pending record is still there.

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use custodian_core::Digest;
use custodian_storage::{
    BlobBackend, BlobMeta, BlockSink, BlockStream, DEFAULT_BLOCK_SIZE, Expectation, PackedAt,
    Result, StagedSmall, StorageError, WriteBehind, packs,
};
use futures::StreamExt;
use rocksdb::{ColumnFamilyDescriptor, Options, ReadOptions, WriteBatch};

use crate::index::RocksIndex;

const CF_CHUNKS: &str = "chunks";
/// The packs whose blobs were committed: pack id (8 bytes, big-endian) to how many of its blobs
/// are still committed (an `i64`, big-endian, kept by [`merge_live_count`]; empty in packs
/// written before 2026-12-02's seventh session, whose count is unknown).
const CF_PACKS: &str = "packs";
const BACKEND: &str = "rocksdb";
/// The directory, inside the database's, of the files of blobs larger than one block.
const EXTENTS_DIR: &str = "extents";
/// The directory, inside the database's, of the packs of small blobs.
const PACKS_DIR: &str = "packs";
/// The first byte of the location of a blob kept in its own file.
const FILE_LOCATION: u8 = b'f';
/// The first byte of the location of a blob kept in a pack.
const PACK_LOCATION: u8 = b'p';
/// The first byte of a pending record naming a deleted packed blob's range, still to be freed.
const FREED_RANGE: u8 = b'p';
/// Blobs of a batch this large or larger go into its pack; smaller ones stay in `chunks`.
const PACK_MIN: usize = packs::PACK_ALIGN as usize;

/// Settings of the RocksDB backend.
#[derive(Clone, Debug)]
pub struct RocksConfig {
    /// The block size for new blobs.
    pub block_size: usize,
}

impl Default for RocksConfig {
    fn default() -> Self {
        RocksConfig {
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }
}

/// Blob custody in an embedded RocksDB database.
pub struct RocksBackend {
    index: Arc<RocksIndex>,
    extents: Arc<Files>,
    packs: Arc<Files>,
    freer: Arc<packs::Freer>,
    block_size: usize,
}

/// Where a committed blob's blocks are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Location {
    /// In the `chunks` column family under this extent id.
    Chunks(u64),
    /// In this extent's file.
    File(u64),
    /// In a pack, at this offset.
    Pack(PackedAt),
}

impl Location {
    fn encode(self) -> Vec<u8> {
        match self {
            Location::Chunks(extent) => extent.to_be_bytes().to_vec(),
            Location::File(extent) => {
                let mut out = vec![FILE_LOCATION];
                out.extend_from_slice(&extent.to_be_bytes());
                out
            }
            Location::Pack(at) => {
                let mut out = vec![PACK_LOCATION];
                out.extend_from_slice(&at.pack.to_be_bytes());
                out
            }
        }
    }

    fn decode(bytes: &[u8]) -> Option<Location> {
        match bytes {
            [FILE_LOCATION, rest @ ..] if rest.len() == 8 => {
                Some(Location::File(u64::from_be_bytes(rest.try_into().ok()?)))
            }
            _ if bytes.len() == 8 => {
                Some(Location::Chunks(u64::from_be_bytes(bytes.try_into().ok()?)))
            }
            _ => None,
        }
    }

    /// The location an index entry records, or why it cannot be read.
    fn of(entry: &crate::index::IndexEntry) -> Result<Location> {
        if let [PACK_LOCATION, rest @ ..] = entry.location.as_slice()
            && let Ok(pack) = <[u8; 8]>::try_from(rest)
        {
            let pack = u64::from_be_bytes(pack);
            return match entry.meta.packed {
                Some(at) if at.pack == pack => Ok(Location::Pack(at)),
                other => Err(StorageError::Corrupt {
                    digest: entry.meta.sha256(),
                    detail: format!(
                        "its location names pack {pack:016x} and its metadata {}",
                        other.map_or("none".into(), |at| format!("pack {:016x}", at.pack))
                    ),
                }),
            };
        }
        Location::decode(&entry.location).ok_or_else(|| StorageError::Corrupt {
            digest: entry.meta.sha256(),
            detail: format!(
                "its location ({} bytes) is neither an extent id nor a file",
                entry.location.len()
            ),
        })
    }
}

/// A directory of files named by id: the files of blobs larger than one block (extents), or
/// the packs of small blobs.
struct Files {
    dir: PathBuf,
}

impl Files {
    /// Opens the directory, creating it if needed.
    fn open(dir: PathBuf) -> Result<Files> {
        std::fs::create_dir_all(&dir).map_err(|e| {
            StorageError::backend(BACKEND, format!("create {}: {e}", dir.display()))
        })?;
        Ok(Files { dir })
    }

    fn path(&self, extent: u64) -> PathBuf {
        self.dir.join(format!("{extent:016x}"))
    }

    /// The ids of the files in the directory; names that are not ids are left alone.
    fn ids(&self) -> Result<Vec<u64>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| {
            StorageError::backend(BACKEND, format!("list {}: {e}", self.dir.display()))
        })?;
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                StorageError::backend(BACKEND, format!("list {}: {e}", self.dir.display()))
            })?;
            let name = entry.file_name();
            if let Some(id) = name
                .to_str()
                .filter(|name| name.len() == 16)
                .and_then(|name| u64::from_str_radix(name, 16).ok())
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    fn err(&self, extent: u64, e: std::io::Error) -> StorageError {
        StorageError::backend(BACKEND, format!("{}: {e}", self.path(extent).display()))
    }

    /// Makes the directory's entries (a created, renamed or removed file) durable.
    fn sync_dir(&self) -> Result<()> {
        std::fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| {
                StorageError::backend(BACKEND, format!("sync {}: {e}", self.dir.display()))
            })
    }

    /// Removes an extent's file if it exists.
    fn remove(&self, extent: u64) -> Result<()> {
        match std::fs::remove_file(self.path(extent)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.err(extent, e)),
            _ => Ok(()),
        }
    }
}

fn chunk_key(extent: u64, block: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&extent.to_be_bytes());
    key[8..].copy_from_slice(&block.to_be_bytes());
    key
}

/// Runs blocking RocksDB work off the async worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::backend(BACKEND, format!("blocking task failed: {e}")))?
}

impl RocksBackend {
    /// Opens (creating if needed) the store in directory `path`, and deletes whatever uploads a
    /// crash left behind.
    pub fn open(path: &Path, config: RocksConfig) -> Result<Self> {
        if config.block_size == 0 || config.block_size > (64 << 20) {
            return Err(StorageError::backend(
                BACKEND,
                format!(
                    "block size {} is outside 1 byte ..= 64 MiB",
                    config.block_size
                ),
            ));
        }
        let mut chunks = Options::default();
        chunks.set_enable_blob_files(true);
        // Small values stay inline in the table files; blocks of real blobs go to blob files.
        chunks.set_min_blob_size(4096);
        chunks.set_blob_file_size(256 << 20);
        chunks.set_enable_blob_gc(true);
        chunks.set_write_buffer_size(8 << 20);
        chunks.set_max_write_buffer_number(3);
        chunks.set_block_based_table_factory(&crate::index::block_table_options());
        let index = RocksIndex::open(
            path,
            BACKEND,
            vec![
                ColumnFamilyDescriptor::new(CF_CHUNKS, chunks),
                packs_cf_descriptor(),
            ],
        )?;
        let index = Arc::new(index);
        let packs = Arc::new(Files::open(path.join(PACKS_DIR))?);
        let backend = RocksBackend {
            freer: Arc::new(
                packs::Freer::start(
                    RocksFreeing {
                        index: index.clone(),
                        packs: packs.clone(),
                    },
                    FREE_WITHIN,
                )
                .map_err(|e| {
                    StorageError::backend(BACKEND, format!("start the freeing thread: {e}"))
                })?,
            ),
            index,
            extents: Arc::new(Files::open(path.join(EXTENTS_DIR))?),
            packs,
            block_size: config.block_size,
        };
        backend.recover()?;
        Ok(backend)
    }

    /// Deletes the blocks of every upload that has a pending record, frees the ranges of
    /// deleted packed blobs that a crash left, and removes the packs no commit recorded.
    fn recover(&self) -> Result<()> {
        let leftovers = self.index.pending()?;
        let mut batch = WriteBatch::default();
        let mut freed = Vec::new();
        let mut uploads = 0;
        for (id, record) in &leftovers {
            if let Some((at, size)) = decode_freed_range(record) {
                freed.push((at, size));
            } else {
                self.extents.remove(*id)?;
                add_extent_removal(&self.index, &mut batch, *id)?;
                uploads += 1;
            }
            self.index.add_pending_removal(&mut batch, *id)?;
        }
        if !freed.is_empty() {
            free_ranges(&self.index, &self.packs, &mut batch, &freed)?;
        }
        let orphans = self.remove_unrecorded_packs(&mut batch)?;
        if !leftovers.is_empty() || orphans > 0 {
            self.extents.sync_dir()?;
            self.packs.sync_dir()?;
            self.index.write_synced(batch)?;
        }
        if uploads + orphans > 0 {
            tracing::info!(
                uploads,
                packs = orphans,
                "removed uploads left unfinished by a previous run"
            );
        }
        Ok(())
    }

    /// Removes every pack file that no commit recorded (a crash came between writing it and
    /// committing its blobs, none of which was ever visible), drops the records of packs whose
    /// file is gone, and keeps new ids past every pack's. Returns how many files were removed.
    fn remove_unrecorded_packs(&self, batch: &mut WriteBatch) -> Result<usize> {
        let cf = packs_cf(&self.index)?;
        let mut recorded = std::collections::BTreeSet::new();
        for item in self
            .index
            .db()
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
        {
            let (key, _) = item.map_err(|e| self.index.err(e))?;
            let id: [u8; 8] = key
                .as_ref()
                .try_into()
                .map_err(|_| self.index.err("a pack record's key is not 8 bytes"))?;
            recorded.insert(u64::from_be_bytes(id));
        }
        let files: std::collections::BTreeSet<u64> = self.packs.ids()?.into_iter().collect();
        let mut removed = 0;
        for id in files.difference(&recorded) {
            self.packs.remove(*id)?;
            removed += 1;
        }
        for id in recorded.difference(&files) {
            batch.delete_cf(cf, id.to_be_bytes());
        }
        if let Some(last) = files.iter().chain(&recorded).max() {
            self.index.reserve_ids_through(*last);
        }
        Ok(removed)
    }
}

/// The `packs` column family: small, and its values kept by [`merge_live_count`].
fn packs_cf_descriptor() -> ColumnFamilyDescriptor {
    let mut options = crate::index::cf_options(1 << 20);
    options.set_merge_operator_associative("custodian.pack_live_count", merge_live_count);
    ColumnFamilyDescriptor::new(CF_PACKS, options)
}

/// Adds the deltas a delete merges into a pack's record (-1 per blob) to its count. The same
/// function joins deltas without the record (RocksDB's partial merge): addition does not care
/// which comes first. A record without a count (empty: written before counts were kept) stays
/// without one, so such a pack is never taken for empty; it is removed once its last block is
/// punched out, as before.
fn merge_live_count(
    _key: &[u8],
    existing: Option<&[u8]>,
    deltas: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    let mut total = 0i64;
    for value in existing.into_iter().chain(deltas) {
        match <[u8; 8]>::try_from(value) {
            Ok(value) => total = total.saturating_add(i64::from_be_bytes(value)),
            Err(_) => return Some(Vec::new()),
        }
    }
    Some(total.to_be_bytes().to_vec())
}

/// A pack record's count of live blobs, if it has one.
fn live_count(record: &[u8]) -> Option<i64> {
    <[u8; 8]>::try_from(record).ok().map(i64::from_be_bytes)
}

/// The packs among `packs` whose record counts no live blob (one batched read).
fn emptied_packs(index: &RocksIndex, packs: &[u64]) -> Result<Vec<u64>> {
    let cf = packs_cf(index)?;
    let keys: Vec<[u8; 8]> = packs.iter().map(|pack| pack.to_be_bytes()).collect();
    let records = index.db().multi_get_cf(keys.iter().map(|key| (cf, key)));
    let mut emptied = Vec::new();
    for (pack, record) in packs.iter().zip(records) {
        if record
            .map_err(|e| index.err(e))?
            .as_deref()
            .and_then(live_count)
            == Some(0)
        {
            emptied.push(*pack);
        }
    }
    Ok(emptied)
}

fn packs_cf(index: &RocksIndex) -> Result<&rocksdb::ColumnFamily> {
    index
        .db()
        .cf_handle(CF_PACKS)
        .ok_or_else(|| index.err("column family packs is missing"))
}

/// The pending record of a deleted packed blob whose range is still to be freed.
fn freed_range_record(at: PackedAt, size: u64) -> Vec<u8> {
    let mut out = vec![FREED_RANGE];
    out.extend_from_slice(&at.pack.to_be_bytes());
    out.extend_from_slice(&at.offset.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out
}

/// The range a pending record names, if it is a deleted packed blob's (an upload's is empty).
fn decode_freed_range(record: &[u8]) -> Option<(PackedAt, u64)> {
    let [FREED_RANGE, rest @ ..] = record else {
        return None;
    };
    if rest.len() != 24 {
        return None;
    }
    let word = |i: usize| u64::from_be_bytes(rest[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    Some((
        PackedAt {
            pack: word(0),
            offset: word(1),
        },
        word(2),
    ))
}

/// Frees deleted packed blobs' ranges in their packs and makes that durable; the records of
/// packs removed go into `batch`. A pack whose record counts no live blob is removed whole (one
/// unlink rather than a hole per blob: garbage collection deletes in digest order, so a pack's
/// blobs go one or two per batch); any other has its ranges punched out, and is removed if
/// that left it no data block.
fn free_ranges(
    index: &RocksIndex,
    packs: &Files,
    batch: &mut WriteBatch,
    ranges: &[(PackedAt, u64)],
) -> Result<()> {
    let by_pack = packs::ranges_by_pack(ranges.iter().copied());
    let cf = packs_cf(index)?;
    let dead = emptied_packs(index, &by_pack.keys().copied().collect::<Vec<_>>())?;
    let punched: Vec<_> = by_pack
        .into_iter()
        .filter(|(pack, _)| !dead.contains(pack))
        .map(|(pack, ranges)| (pack, packs.path(pack), ranges))
        .collect();
    for pack in &dead {
        packs.remove(*pack)?;
        batch.delete_cf(cf, pack.to_be_bytes());
    }
    if !dead.is_empty() {
        packs.sync_dir()?;
    }
    let files: Vec<(PathBuf, Vec<(u64, u64)>)> = punched
        .iter()
        .map(|(_, path, ranges)| (path.clone(), ranges.clone()))
        .collect();
    let removed = packs::free_packed(&packs.dir, &files).map_err(|e| {
        index.poison(format!(
            "free deleted blobs in {}: {e}",
            packs.dir.display()
        ))
    })?;
    for (pack, path, _) in &punched {
        if removed.contains(path) {
            batch.delete_cf(cf, pack.to_be_bytes());
        }
    }
    Ok(())
}

fn chunks_cf(index: &RocksIndex) -> Result<&rocksdb::ColumnFamily> {
    index
        .db()
        .cf_handle(CF_CHUNKS)
        .ok_or_else(|| index.err("column family chunks is missing"))
}

fn add_extent_removal(index: &RocksIndex, batch: &mut WriteBatch, extent: u64) -> Result<()> {
    let end = extent
        .checked_add(1)
        .map_or([0xff; 16], |next| chunk_key(next, 0));
    batch.delete_range_cf(chunks_cf(index)?, chunk_key(extent, 0), end);
    Ok(())
}

/// The most blocks of a committed blob deleted one key each; past it, one range.
const POINT_DELETED_BLOCKS: u64 = 64;

/// Removes the blocks of a committed blob kept in `chunks`, whose count its metadata gives.
/// One point delete per block, not a range: a garbage collection deletes blobs by the
/// hundred thousand, and each range tombstone is carried by every flush and compaction and
/// consulted by every read of the column family until compacted away (`heaptrack` of a
/// collection of 200,000 small blobs: 15 MB of fragmented range tombstones at its peak).
/// Blobs in `chunks` are one block since large ones became files; older stores' larger ones
/// keep the range.
fn add_blocks_removal(
    index: &RocksIndex,
    batch: &mut WriteBatch,
    extent: u64,
    blocks: u64,
) -> Result<()> {
    if blocks > POINT_DELETED_BLOCKS {
        return add_extent_removal(index, batch, extent);
    }
    let cf = chunks_cf(index)?;
    // An empty blob has no block; its key 0 is deleted all the same, in case a writer stored
    // an empty one (deleting a key that is not there costs one tombstone).
    for block in 0..blocks.max(1) {
        batch.delete_cf(cf, chunk_key(extent, block));
    }
    Ok(())
}

/// What a delete leaves to do once its synced batch is written: files to remove and packed
/// ranges to free, each under a pending record written in that batch.
#[derive(Default)]
struct Removals {
    /// Extents whose files go (the pending record's id is the extent's).
    files: Vec<u64>,
    /// Packed blobs' ranges, with the id of each one's pending record.
    ranges: Vec<(u64, PackedAt, u64)>,
}

/// Adds the removal of a committed blob (its blocks, metadata and BLAKE3 alias) to `batch`;
/// false if there is no such blob. A blob kept in a file or a pack also gets a pending record in
/// the batch, so that a crash before [`finish_removals`] removes the file or frees the range at
/// the next open. The caller holds its commit lock.
fn add_blob_removal(
    index: &RocksIndex,
    batch: &mut WriteBatch,
    sha256: &Digest,
    removals: &mut Removals,
) -> Result<bool> {
    let Some(entry) = index.lookup(sha256)? else {
        return Ok(false);
    };
    match Location::of(&entry)? {
        Location::Chunks(extent) => {
            let blocks = BlobMeta::block_count_for(entry.meta.size, entry.meta.block_size);
            add_blocks_removal(index, batch, extent, blocks)?;
        }
        Location::File(extent) => {
            index.add_pending_to(batch, extent)?;
            removals.files.push(extent);
        }
        Location::Pack(at) => {
            let id = index.new_upload_id();
            index.add_pending_record_to(batch, id, &freed_range_record(at, entry.meta.size))?;
            batch.merge_cf(
                packs_cf(index)?,
                at.pack.to_be_bytes(),
                (-1i64).to_be_bytes(),
            );
            removals.ranges.push((id, at, entry.meta.size));
        }
    }
    index.add_delete(batch, &entry.meta)?;
    Ok(true)
}

/// After the synced batch that removed their blobs: removes the files and their pending records
/// (not synced: a lost removal is redone from the pending record at the next open), and hands
/// the packed ranges to `freer`.
fn finish_removals(
    index: &RocksIndex,
    extents: &Files,
    freer: &packs::Freer,
    removals: Removals,
) -> Result<()> {
    freer.submit(removals.ranges);
    if removals.files.is_empty() {
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    for extent in &removals.files {
        match extents.remove(*extent) {
            Ok(()) => index.add_pending_removal(&mut batch, *extent)?,
            // The blob is gone from the index either way; its pending record stays, and the
            // next open removes the file.
            Err(err) => {
                tracing::warn!(%err, "could not remove a deleted blob's file; it is removed at the next start")
            }
        }
    }
    index.db().write(batch).map_err(|e| index.err(e))
}

/// How long a deleted packed blob's range may wait to be freed while its pack still holds live
/// blobs (see [`packs::Freer`]). A deleted blob's bytes stay on disk (unreadable: nothing refers
/// to them) at most this long, or until the next open after a crash.
const FREE_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// What the freeing thread does on RocksDB: packs are counted, so an emptied one is known.
struct RocksFreeing {
    index: Arc<RocksIndex>,
    packs: Arc<Files>,
}

impl packs::Freeing for RocksFreeing {
    fn emptied(&self, touched: &[u64]) -> Vec<u64> {
        // If the counts cannot be read, every pack waits its time.
        emptied_packs(&self.index, touched).unwrap_or_default()
    }

    fn free(&self, ranges: Vec<packs::FreedRange>) {
        let mut batch = WriteBatch::default();
        let freed = add_freed_ranges(&self.index, &self.packs, &mut batch, &ranges)
            .and_then(|()| self.index.db().write(batch).map_err(|e| self.index.err(e)));
        if let Err(err) = freed {
            // The pending records stay; the next open frees the ranges.
            tracing::error!(%err, ranges = ranges.len(), "could not free deleted packed blobs; the next start frees them");
        }
    }
}

/// Frees packed ranges that nothing refers to any more, each under pending record `id`, and adds
/// the removal of those records (and of the records of packs left empty) to `batch`.
fn add_freed_ranges(
    index: &RocksIndex,
    packs: &Files,
    batch: &mut WriteBatch,
    ranges: &[(u64, PackedAt, u64)],
) -> Result<()> {
    if ranges.is_empty() {
        return Ok(());
    }
    let freed: Vec<(PackedAt, u64)> = ranges.iter().map(|(_, at, size)| (*at, *size)).collect();
    // A failure here poisons the store (the pack's state is unknown); the pending records stay,
    // and the next open frees the ranges.
    free_ranges(index, packs, batch, &freed)?;
    for (id, ..) in ranges {
        index.add_pending_removal(batch, *id)?;
    }
    Ok(())
}

struct RocksSink {
    index: Arc<RocksIndex>,
    extents: Arc<Files>,
    extent: u64,
    block_size: u64,
    /// The first block, held back until the blob proves larger than one block.
    first: Option<Bytes>,
    /// The extent's file, once the blob proved larger than one block (or a file was adopted).
    file: Option<Arc<std::fs::File>>,
    /// Whether a pending record may exist, so that cleanup must look for leftovers.
    pending: bool,
    /// How far the file is synced and out of the page cache.
    behind: WriteBehind,
    /// Whether cleanup is no longer this sink's job.
    done: bool,
}

impl RocksSink {
    /// Deletes this upload's file, blocks and pending record (not synced: a lost delete is
    /// redone from the pending record at the next open).
    fn discard(index: &RocksIndex, extents: &Files, extent: u64) -> Result<()> {
        extents.remove(extent)?;
        let mut batch = WriteBatch::default();
        add_extent_removal(index, &mut batch, extent)?;
        index.add_pending_removal(&mut batch, extent)?;
        index.db().write(batch).map_err(|e| index.err(e))
    }

    /// The extent's file, created (after a synced pending record) with the held first block.
    async fn file(&mut self) -> Result<Arc<std::fs::File>> {
        if let Some(file) = &self.file {
            return Ok(file.clone());
        }
        let (index, extents, extent) = (self.index.clone(), self.extents.clone(), self.extent);
        let first = self.first.take();
        self.pending = true;
        let file = blocking(move || {
            index.check_writable()?;
            index.add_pending(extent, b"")?;
            let file = std::fs::File::create_new(extents.path(extent))
                .map_err(|e| index.poison(extents.err(extent, e)))?;
            if let Some(first) = first {
                file.write_all_at(&first, 0)
                    .map_err(|e| index.poison(extents.err(extent, e)))?;
            }
            Ok(Arc::new(file))
        })
        .await?;
        self.file = Some(file.clone());
        Ok(file)
    }
}

impl Drop for RocksSink {
    fn drop(&mut self) {
        if !self.done
            && self.pending
            && let Err(err) = Self::discard(&self.index, &self.extents, self.extent)
        {
            tracing::warn!(extent = self.extent, %err, "could not discard an abandoned upload; it is removed at the next start");
        }
    }
}

#[async_trait]
impl BlockSink for RocksSink {
    async fn write_block(&mut self, block: u64, data: Bytes) -> Result<()> {
        if block == 0 && self.file.is_none() {
            self.first = Some(data);
            return Ok(());
        }
        let file = self.file().await?;
        let (index, extents, extent) = (self.index.clone(), self.extents.clone(), self.extent);
        let offset = block * self.block_size;
        let end = offset + data.len() as u64;
        let mut behind = self.behind;
        self.behind = blocking(move || {
            index.check_writable()?;
            // A failed write or sync leaves the file in a state nobody can know: the store
            // refuses writes from here on, as it does when RocksDB's own writes fail.
            file.write_all_at(&data, offset)
                .and_then(|()| behind.wrote(&file, offset, end))
                .map_err(|e| index.poison(extents.err(extent, e)))?;
            Ok(behind)
        })
        .await?;
        Ok(())
    }

    async fn adopt_file(&mut self, path: &Path, size: u64) -> Result<bool> {
        if self.file.is_some() || self.first.is_some() {
            return Ok(false);
        }
        let (index, extents, extent) = (self.index.clone(), self.extents.clone(), self.extent);
        let path = path.to_path_buf();
        self.pending = true;
        let adopted = blocking(move || {
            index.check_writable()?;
            index.add_pending(extent, b"")?;
            let failed = |e: std::io::Error| {
                StorageError::backend(BACKEND, format!("{}: {e}", path.display()))
            };
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(failed)?;
            // Bytes past the committed length (a piece cut off before it was acknowledged) are
            // not the blob's.
            if file.metadata().map_err(failed)?.len() != size {
                file.set_len(size).map_err(|e| index.poison(failed(e)))?;
            }
            file.sync_all().map_err(|e| index.poison(failed(e)))?;
            match std::fs::rename(&path, extents.path(extent)) {
                Ok(()) => Ok(Some(Arc::new(file))),
                // Staged on another file system: the caller copies the blocks instead.
                Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => Ok(None),
                Err(e) => Err(index.poison(failed(e))),
            }
        })
        .await?;
        let took = adopted.is_some();
        self.file = adopted;
        Ok(took)
    }

    async fn commit(mut self: Box<Self>, meta: BlobMeta) -> Result<(BlobMeta, bool)> {
        let (index, extents, extent) = (self.index.clone(), self.extents.clone(), self.extent);
        let pending = self.pending;
        let file = self.file.take();
        let first = self.first.take();
        // From here on the blocking task owns cleanup, even if this future is dropped.
        self.done = true;
        blocking(move || {
            let location = match &file {
                Some(file) => {
                    // The bytes, then the file's name, before the index may point at them.
                    index.check_writable()?;
                    file.sync_data()
                        .map_err(|e| index.poison(extents.err(extent, e)))?;
                    extents.sync_dir().map_err(|e| index.poison(e))?;
                    Location::File(extent)
                }
                None => Location::Chunks(extent),
            };
            drop(file);
            let _guard = index.lock_commits(&meta.sha256());
            if let Some(existing) = index.lookup(&meta.sha256())? {
                if pending {
                    Self::discard(&index, &extents, extent)?;
                }
                return Ok((existing.meta, true));
            }
            let mut batch = WriteBatch::default();
            if let (Location::Chunks(_), Some(first)) = (location, first) {
                batch.put_cf(chunks_cf(&index)?, chunk_key(extent, 0), &first);
            }
            index.add_commit(&mut batch, &location.encode(), &meta)?;
            if pending {
                index.add_pending_removal(&mut batch, extent)?;
            }
            index.write_synced(batch)?;
            Ok((meta, false))
        })
        .await
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.done = true;
        if !self.pending {
            return Ok(());
        }
        let (index, extents, extent) = (self.index.clone(), self.extents.clone(), self.extent);
        blocking(move || Self::discard(&index, &extents, extent)).await
    }

    fn abandon_for_crash_test(mut self: Box<Self>) {
        self.done = true;
    }
}

#[async_trait]
impl BlobBackend for RocksBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn block_size(&self) -> usize {
        self.block_size
    }

    async fn lookup(&self, digest: &Digest) -> Result<Option<BlobMeta>> {
        Ok(self.index.lookup(digest)?.map(|entry| entry.meta))
    }

    async fn lookup_many(&self, digests: &[Digest]) -> Result<Vec<Option<BlobMeta>>> {
        let index = self.index.clone();
        let digests = digests.to_vec();
        blocking(move || index.lookup_many(&digests)).await
    }

    async fn present_many(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        let index = self.index.clone();
        let digests = digests.to_vec();
        blocking(move || index.present_many(&digests)).await
    }

    async fn begin(&self, _expect: &Expectation) -> Result<Box<dyn BlockSink>> {
        self.index.check_writable()?;
        Ok(Box::new(RocksSink {
            index: self.index.clone(),
            extents: self.extents.clone(),
            extent: self.index.new_upload_id(),
            block_size: self.block_size as u64,
            first: None,
            file: None,
            pending: false,
            behind: WriteBehind::default(),
            done: false,
        }))
    }

    fn adopts_files(&self, _staged: &Path) -> bool {
        true
    }

    async fn read_blocks(&self, meta: &BlobMeta, first: u64, end: u64) -> Result<BlockStream> {
        let entry = self
            .index
            .lookup(&meta.sha256())?
            .ok_or(StorageError::NotFound {
                digest: meta.sha256(),
            })?;
        let extent = match Location::of(&entry)? {
            Location::Chunks(extent) => extent,
            Location::File(extent) => {
                return Ok(read_file_blocks(&self.extents, extent, meta, first, end));
            }
            Location::Pack(at) => return Ok(read_packed(&self.packs, at, meta, first, end)),
        };
        let index = self.index.clone();
        let digest = meta.sha256();
        // A bounded channel keeps at most a few blocks in memory however slow the reader is.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(2);
        tokio::task::spawn_blocking(move || {
            let result = (|| -> Result<()> {
                let mut opts = ReadOptions::default();
                opts.fill_cache(false);
                // Every block carries Custodian's own CRC32C, checked before any byte is served
                // (BlobStore::get); RocksDB's software checksum of the same bytes was half of
                // the read path's CPU and adds no protection.
                opts.set_verify_checksums(false);
                opts.set_readahead_size(4 << 20);
                opts.set_iterate_upper_bound(chunk_key(extent, end).to_vec());
                let start = chunk_key(extent, first);
                let iter = index.db().iterator_cf_opt(
                    chunks_cf(&index)?,
                    opts,
                    rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
                );
                let mut expected = first;
                for item in iter {
                    let (key, value) = item.map_err(|e| index.read_err(Some(&digest), e))?;
                    if key.as_ref() != chunk_key(extent, expected) {
                        break;
                    }
                    if tx.blocking_send(Ok(Bytes::from(value.into_vec()))).is_err() {
                        return Ok(()); // The reader went away.
                    }
                    expected += 1;
                }
                if expected != end {
                    return Err(StorageError::Corrupt {
                        digest,
                        detail: format!("block {expected} is missing from storage"),
                    });
                }
                Ok(())
            })();
            if let Err(err) = result {
                let _ = tx.blocking_send(Err(err));
            }
        });
        Ok(tokio_stream_from(rx))
    }

    async fn delete(&self, sha256: &Digest) -> Result<bool> {
        Ok(self.delete_many(&[*sha256]).await?[0])
    }

    async fn delete_many(&self, sha256s: &[Digest]) -> Result<Vec<bool>> {
        let (index, extents, freer) =
            (self.index.clone(), self.extents.clone(), self.freer.clone());
        let sha256s = sha256s.to_vec();
        blocking(move || {
            let _guards = index.lock_commits_many(&sha256s);
            let mut batch = WriteBatch::default();
            let mut existed = Vec::with_capacity(sha256s.len());
            let mut removals = Removals::default();
            // A digest repeated in the batch is removed once: the index is read outside the
            // batch, so a second removal would count the blob out of its pack twice.
            let mut seen = std::collections::HashSet::with_capacity(sha256s.len());
            for sha256 in &sha256s {
                existed.push(
                    seen.insert(*sha256)
                        && add_blob_removal(&index, &mut batch, sha256, &mut removals)?,
                );
            }
            // One synced write for the whole batch: all of it is gone, or none.
            index.write_synced(batch)?;
            finish_removals(&index, &extents, &freer, removals)?;
            Ok(existed)
        })
        .await
    }

    async fn list(&self, after: Option<Digest>, limit: usize) -> Result<Vec<Digest>> {
        let index = self.index.clone();
        blocking(move || index.list(after, limit)).await
    }

    async fn quarantine(&self, sha256: &Digest) -> Result<bool> {
        match self.delete(sha256).await {
            Err(StorageError::Corrupt { .. }) => {
                // The metadata no longer says where the blocks are; forget the blob, and leave
                // its blocks to the copy scrub made (they are not reachable any more).
                let index = self.index.clone();
                let sha256 = *sha256;
                blocking(move || index.forget(&sha256).map(|()| true)).await
            }
            other => other,
        }
    }

    async fn commit_small(
        &self,
        blobs: Vec<(BlobMeta, Bytes)>,
    ) -> Option<Result<Vec<(BlobMeta, bool)>>> {
        let (index, packs) = (self.index.clone(), self.packs.clone());
        Some(blocking(move || commit_batch(&index, &packs, blobs, None)).await)
    }

    fn stage_small(&self, blobs: &[Bytes]) -> Option<StagedSmall> {
        // The pack is written while the store hashes the blobs: its write and sync took as long
        // as the hashing, one after the other, in each `BatchPut` (docs/performance.md, "A
        // pack written while its blobs are hashed").
        self.index.check_writable().ok()?;
        let positions: Vec<usize> = (0..blobs.len())
            .filter(|&p| blobs[p].len() >= PACK_MIN)
            .collect();
        if positions.is_empty() {
            return None;
        }
        let pack = self.index.new_upload_id();
        let (offsets, _) = packs::layout(positions.iter().map(|&p| blobs[p].len() as u64));
        let mut at = vec![None; blobs.len()];
        for (&p, offset) in positions.iter().zip(offsets) {
            at[p] = Some(offset);
        }
        let packed: Vec<Bytes> = positions.iter().map(|&p| blobs[p].clone()).collect();
        let (index, files) = (self.index.clone(), self.packs.clone());
        let write = tokio::task::spawn_blocking(move || write_pack(&index, &files, pack, &packed));
        Some(StagedSmall(Box::new(StagedPack {
            pack,
            at,
            sizes: blobs.iter().map(|data| data.len() as u64).collect(),
            write,
        })))
    }

    async fn commit_small_staged(
        &self,
        staged: StagedSmall,
        blobs: Vec<(usize, BlobMeta, Bytes)>,
    ) -> Result<Vec<(BlobMeta, bool)>> {
        let staged = staged.0.downcast::<StagedPack>().map_err(|_| {
            StorageError::Aborted("a batch staged by another backend was handed to RocksDB".into())
        })?;
        let StagedPack {
            pack,
            at,
            sizes,
            write,
        } = *staged;
        // Nothing may point into the pack before it is durable; a failed write poisoned the
        // store, and the pack, never recorded, is removed at the next open.
        write.await.map_err(|e| {
            StorageError::backend(BACKEND, format!("writing a staged pack failed: {e}"))
        })??;
        let (index, packs) = (self.index.clone(), self.packs.clone());
        blocking(move || {
            let mut positions = Vec::with_capacity(blobs.len());
            let blobs = blobs
                .into_iter()
                .map(|(position, meta, data)| {
                    positions.push(position);
                    (meta, data)
                })
                .collect();
            let staged = Prewritten {
                pack,
                at,
                sizes,
                positions,
            };
            commit_batch(&index, &packs, blobs, Some(staged))
        })
        .await
    }

    async fn pending_uploads(&self) -> Result<u64> {
        // Deleted packed blobs whose ranges the freeing thread has yet to free are not left
        // over: wait for it, so that what is counted is what a crash or a failure left.
        let (index, freer) = (self.index.clone(), self.freer.clone());
        blocking(move || {
            freer.settle();
            Ok(index.pending()?.len() as u64)
        })
        .await
    }
}

/// A pack being written from a batch's blobs before they are hashed
/// ([`BlobBackend::stage_small`]).
struct StagedPack {
    pack: u64,
    /// Each staged blob's offset in the pack, by position; `None` for one too small to pack.
    at: Vec<Option<u64>>,
    /// Each staged blob's size, by position.
    sizes: Vec<u64>,
    /// The pack's write and sync.
    write: tokio::task::JoinHandle<Result<()>>,
}

/// A staged pack, written and synced, as [`commit_batch`] takes it.
struct Prewritten {
    pack: u64,
    at: Vec<Option<u64>>,
    sizes: Vec<u64>,
    /// Each blob's position among those staged, in the order of the blobs committed.
    positions: Vec<usize>,
}

/// Commits a batch of blobs of at most one block (`BatchPut`), each new digest once, and returns
/// each blob's metadata and whether it was already present, in order.
///
/// New blobs of at least [`PACK_MIN`] bytes go into one pack, written and synced *before* the
/// commit locks are taken, so that concurrent batches write and sync their packs at the same
/// time rather than one after another (the locks cover every stripe once a batch has a few
/// hundred digests). Under the locks, each blob still absent is committed, all in one synced
/// batch, none visible before all are durable. A blob another upload committed in between keeps
/// that upload's metadata; its range of this pack is freed at once, under a pending record
/// written in the commit, so a crash cannot leave it behind; a pack none of whose blobs was
/// committed is thereby removed (or, after a crash, by the next open: it has no record).
fn commit_batch(
    index: &RocksIndex,
    packs: &Files,
    blobs: Vec<(BlobMeta, Bytes)>,
    prewritten: Option<Prewritten>,
) -> Result<Vec<(BlobMeta, bool)>> {
    index.check_writable()?;
    let digests: Vec<Digest> = blobs.iter().map(|(m, _)| m.sha256()).collect();
    // Without the locks: a blob already in custody needs no bytes written. One batched read for
    // the whole batch rather than a point lookup per blob.
    let known = index.lookup_many(&digests)?;
    // The blobs to write, each new digest's first occurrence; `slot` maps a digest to its place
    // in `new`.
    let mut slot: std::collections::HashMap<Digest, usize> = std::collections::HashMap::new();
    let mut new: Vec<usize> = Vec::new();
    for (i, existing) in known.iter().enumerate() {
        if existing.is_none() && !slot.contains_key(&digests[i]) {
            slot.insert(digests[i], new.len());
            new.push(i);
        }
    }
    let mut metas: Vec<BlobMeta> = new.iter().map(|&i| blobs[i].0.clone()).collect();
    let mut pack: Option<u64> = None;
    if let Some(staged) = &prewritten {
        // Written already, every blob of the batch: the new ones take their places in it.
        for (meta, &i) in metas.iter_mut().zip(&new) {
            if let Some(offset) = staged.at[staged.positions[i]] {
                meta.packed = Some(PackedAt {
                    pack: staged.pack,
                    offset,
                });
            }
        }
        pack = Some(staged.pack);
    } else {
        let mut packed: Vec<Bytes> = Vec::new();
        let mut pack_end = 0u64;
        for (meta, &i) in metas.iter_mut().zip(&new) {
            let data = &blobs[i].1;
            if data.len() >= PACK_MIN {
                let at = PackedAt {
                    pack: *pack.get_or_insert_with(|| index.new_upload_id()),
                    offset: pack_end,
                };
                pack_end += (data.len() as u64).next_multiple_of(packs::PACK_ALIGN);
                meta.packed = Some(at);
                packed.push(data.clone());
            }
        }
        if let Some(pack) = pack {
            write_pack(index, packs, pack, &packed)?;
        }
    }

    let new_digests: Vec<Digest> = new.iter().map(|&i| digests[i]).collect();
    let guards = index.lock_commits_many(&new_digests);
    let now = index.lookup_many(&new_digests)?;
    let mut batch = WriteBatch::default();
    let mut outcomes: Vec<(BlobMeta, bool)> = Vec::with_capacity(new.len());
    let mut raced: Vec<(u64, PackedAt, u64)> = Vec::new();
    let mut pack_live = 0i64;
    // Index records are gathered and added together, so each column family's keys go in
    // ascending order (`add_commits`).
    let mut commits: Vec<(Vec<u8>, usize)> = Vec::with_capacity(new.len());
    // The positions of the staged blobs this batch commits into the staged pack.
    let mut used: Vec<usize> = Vec::new();
    for ((meta, &i), existing) in metas.into_iter().zip(&new).zip(now) {
        if let Some(existing) = existing {
            // A staged pack's unused ranges are all freed below, this one among them.
            if let Some(at) = meta.packed.filter(|_| prewritten.is_none()) {
                let id = index.new_upload_id();
                index.add_pending_record_to(&mut batch, id, &freed_range_record(at, meta.size))?;
                raced.push((id, at, meta.size));
            }
            outcomes.push((existing, true));
            continue;
        }
        match meta.packed {
            Some(at) => {
                commits.push((Location::Pack(at).encode(), outcomes.len()));
                pack_live += 1;
                if let Some(staged) = &prewritten {
                    used.push(staged.positions[i]);
                }
            }
            None => {
                let extent = index.new_upload_id();
                let data = &blobs[i].1;
                if !data.is_empty() {
                    batch.put_cf(chunks_cf(index)?, chunk_key(extent, 0), data);
                }
                commits.push((extent.to_be_bytes().to_vec(), outcomes.len()));
            }
        }
        outcomes.push((meta, false));
    }
    let commits: Vec<(&[u8], &BlobMeta)> = commits
        .iter()
        .map(|(location, at)| (location.as_slice(), &outcomes[*at].0))
        .collect();
    index.add_commits(&mut batch, &commits)?;
    if let Some(pack) = pack.filter(|_| pack_live > 0) {
        batch.put_cf(
            packs_cf(index)?,
            pack.to_be_bytes(),
            pack_live.to_be_bytes(),
        );
    }
    // Every other range of a staged pack holds bytes nothing will point to (a blob refused,
    // already in custody, repeated or raced): each is freed under a pending record written with
    // the commit, as a raced blob's is. A staged pack with nothing committed is removed whole
    // after the commit; unrecorded, it would be removed at the next open too.
    let mut unused_pack: Option<u64> = None;
    if let Some(staged) = &prewritten {
        if pack_live == 0 {
            unused_pack = Some(staged.pack);
        } else {
            used.sort_unstable();
            for (position, offset) in staged.at.iter().enumerate() {
                let Some(offset) = *offset else { continue };
                if used.binary_search(&position).is_ok() {
                    continue;
                }
                let at = PackedAt {
                    pack: staged.pack,
                    offset,
                };
                let size = staged.sizes[position];
                let id = index.new_upload_id();
                index.add_pending_record_to(&mut batch, id, &freed_range_record(at, size))?;
                raced.push((id, at, size));
            }
        }
    }
    if !batch.is_empty() {
        // A pack whose commit failed is removed at the next open, as after a crash: the store
        // refuses writes until then.
        index.write_synced(batch)?;
    }
    drop(guards);
    if let Some(pack) = unused_pack
        && let Err(err) = packs.remove(pack)
    {
        // The batch is committed whatever happens to a file it does not use; unrecorded, the
        // pack is removed at the next open.
        tracing::warn!(pack, error = %err, "a staged pack with nothing committed was not removed");
    }
    if !raced.is_empty() {
        // A pack all of whose blobs raced is left with no data and removed here.
        let mut batch = WriteBatch::default();
        add_freed_ranges(index, packs, &mut batch, &raced)?;
        index.db().write(batch).map_err(|e| index.err(e))?;
    }

    let mut out = Vec::with_capacity(blobs.len());
    for (i, existing) in known.into_iter().enumerate() {
        out.push(match existing {
            Some(existing) => (existing, true),
            None => {
                let new_at = slot[&digests[i]];
                let (meta, present) = &outcomes[new_at];
                // A repeat within the batch was present by the time its turn came.
                (meta.clone(), *present || new[new_at] != i)
            }
        });
    }
    Ok(out)
}

/// Writes pack `pack` holding `blobs` and makes it durable, file and name, before any index
/// entry may point into it. A failure poisons the store: what reached the disk is unknown.
fn write_pack(index: &RocksIndex, packs: &Files, pack: u64, blobs: &[Bytes]) -> Result<()> {
    let path = packs.path(pack);
    packs::write_pack(&path, &blobs.iter().collect::<Vec<_>>()).map_err(|(step, e)| {
        index.poison(StorageError::backend(
            BACKEND,
            format!("{step} {}: {e}", path.display()),
        ))
    })
}

/// Streams blocks `first..end` (at most the one block a packed blob has) of a blob kept in a
/// pack; a missing pack or a short one is damage, reported as the blob's.
fn read_packed(
    packs: &Arc<Files>,
    at: PackedAt,
    meta: &BlobMeta,
    first: u64,
    end: u64,
) -> BlockStream {
    let (packs, meta) = (packs.clone(), meta.clone());
    let read = async move {
        let digest = meta.sha256();
        let damaged = move |detail: String| StorageError::Corrupt { digest, detail };
        if first >= end {
            return Ok(None);
        }
        if first != 0 || end != 1 {
            return Err(damaged(format!(
                "blocks {first}..{end} asked of a packed blob, which has one"
            )));
        }
        blocking(move || {
            let file = std::fs::File::open(packs.path(at.pack)).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    damaged(format!("its pack ({:016x}) is missing", at.pack))
                } else {
                    packs.err(at.pack, e)
                }
            })?;
            let mut buf = vec![0u8; meta.size as usize];
            file.read_exact_at(&mut buf, at.offset).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    damaged(format!(
                        "its pack ({:016x}) is shorter than its range",
                        at.pack
                    ))
                } else {
                    packs.err(at.pack, e)
                }
            })?;
            Ok(Some(Bytes::from(buf)))
        })
        .await
    };
    futures::stream::once(read)
        .filter_map(|item| async move { item.transpose() })
        .boxed()
}

/// Streams blocks `first..end` of a blob kept in `extent`'s file; a missing file or a short one
/// is damage, reported as the blob's.
fn read_file_blocks(
    extents: &Arc<Files>,
    extent: u64,
    meta: &BlobMeta,
    first: u64,
    end: u64,
) -> BlockStream {
    let files = extents.clone();
    custodian_storage::read_file_blocks(
        extents.path(extent),
        meta,
        first,
        end,
        format!("the file of its blocks ({extent:016x}) is missing"),
        move |e| files.err(extent, e),
    )
}

/// Adapts a channel receiver into a stream.
fn tokio_stream_from(mut rx: tokio::sync::mpsc::Receiver<Result<Bytes>>) -> BlockStream {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_core::BlobDigests;
    use custodian_storage::conformance::{self, Harness};
    use custodian_storage::{BlobStore, ByteRange, Expectation};

    struct RocksHarness {
        dir: tempfile::TempDir,
        block_size: usize,
    }

    #[async_trait]
    impl Harness for RocksHarness {
        async fn open(&self) -> BlobStore {
            let backend = RocksBackend::open(
                self.dir.path(),
                RocksConfig {
                    block_size: self.block_size,
                },
            )
            .expect("open rocksdb");
            BlobStore::new(Arc::new(backend))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_small_blocks() {
        let harness = RocksHarness {
            dir: tempfile::tempdir().unwrap(),
            block_size: 64 * 1024,
        };
        conformance::run(&harness, conformance::Options::full()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_default_blocks() {
        let harness = RocksHarness {
            dir: tempfile::tempdir().unwrap(),
            block_size: DEFAULT_BLOCK_SIZE,
        };
        conformance::run(&harness, conformance::Options::full()).await;
    }

    /// A flipped byte in a stored block is never served: the read fails naming the digest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_block_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = open_small(dir.path());
        let data = conformance::pattern(1, 3 * 4096);
        let meta = store
            .put_bytes(Expectation::default(), data.clone())
            .await
            .unwrap()
            .meta;
        // A blob of three blocks is one file; flip a byte of its second block.
        let entry = backend.index.lookup(&meta.sha256()).unwrap().unwrap();
        let Location::File(extent) = Location::of(&entry).unwrap() else {
            panic!("a blob of three blocks is kept in a file");
        };
        let path = backend.extents.path(extent);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[4096 + 17] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();

        // Block 0 is intact and may be served; block 1 must fail before any of it is.
        let read = store.get(&meta.sha256(), ByteRange::ALL).await.unwrap();
        let items: Vec<_> = read.data.collect().await;
        assert!(items[0].is_ok());
        match &items[1] {
            Err(StorageError::Corrupt { digest, detail }) => {
                assert_eq!(*digest, meta.sha256());
                assert!(detail.contains("block 1"), "{detail}");
            }
            other => panic!("corrupt block gave {other:?}"),
        }
        assert_eq!(items.len(), 2, "nothing after the corrupt block is served");
    }

    /// A backend with 4 KiB blocks, and the store over it.
    fn open_small(dir: &std::path::Path) -> (Arc<RocksBackend>, BlobStore) {
        let backend = Arc::new(RocksBackend::open(dir, RocksConfig { block_size: 4096 }).unwrap());
        (backend.clone(), BlobStore::new(backend))
    }

    /// A backend with 64 KiB blocks, so that blobs of a few KiB are one block and packed, and
    /// the store over it.
    fn open_packing(dir: &std::path::Path) -> (Arc<RocksBackend>, BlobStore) {
        let config = RocksConfig {
            block_size: 64 << 10,
        };
        let backend = Arc::new(RocksBackend::open(dir, config).unwrap());
        (backend.clone(), BlobStore::new(backend))
    }

    /// How many pieces of blobs are stored: block keys in `chunks`, files and packs.
    fn stored_pieces(backend: &RocksBackend) -> usize {
        let cf = chunks_cf(&backend.index).unwrap();
        let keys = backend
            .index
            .db()
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .count();
        keys + backend.extents.ids().unwrap().len() + backend.packs.ids().unwrap().len()
    }

    /// The ids of the packs with a record in the `packs` column family.
    fn pack_records(backend: &RocksBackend) -> Vec<u64> {
        live_counts(backend).into_iter().map(|(id, _)| id).collect()
    }

    /// Each pack record's id and count of live blobs.
    fn live_counts(backend: &RocksBackend) -> Vec<(u64, Option<i64>)> {
        let cf = packs_cf(&backend.index).unwrap();
        backend
            .index
            .db()
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .map(|item| {
                let (key, value) = item.unwrap();
                (
                    u64::from_be_bytes(key.as_ref().try_into().unwrap()),
                    live_count(&value),
                )
            })
            .collect()
    }

    /// Waits until the freeing thread has freed every range handed to it.
    fn settle(backend: &RocksBackend) {
        backend.freer.settle();
    }

    /// Where a packed blob lies.
    async fn packed_at(store: &BlobStore, digest: &Digest) -> PackedAt {
        let meta = store
            .stat(digest)
            .await
            .unwrap()
            .expect("the blob is stored");
        meta.packed.expect("the blob is packed")
    }

    /// 40 blobs of 4 KiB and more (packed) and 5 of 100 bytes (kept in `chunks`), put in one
    /// batch; returns them.
    async fn put_a_batch(store: &BlobStore, seed: u64) -> Vec<Bytes> {
        let blobs: Vec<Bytes> = (0..45u64)
            .map(|i| {
                let len = if i < 40 {
                    4096 + 512 * (i as usize % 3)
                } else {
                    100
                };
                conformance::pattern(seed + i, len)
            })
            .collect();
        let items = blobs
            .iter()
            .map(|data| (Expectation::default(), data.clone()))
            .collect();
        for result in store.put_many(items).await {
            assert!(!result.unwrap().already_present);
        }
        blobs
    }

    /// The digests of the packed blobs (the first 40) of a [`put_a_batch`] batch.
    fn packed_digests(blobs: &[Bytes]) -> Vec<Digest> {
        blobs[..40]
            .iter()
            .map(|data| BlobDigests::of(data).sha256)
            .collect()
    }

    /// A batch's blobs of 4 KiB and more are one pack, written once; they read back after a
    /// restart, a delete frees each one's range and leaves its neighbours, and the last delete
    /// removes the pack and its record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_is_one_pack_that_deletes_free_blob_by_blob() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = {
            let (backend, store) = open_packing(dir.path());
            let blobs = put_a_batch(&store, 100).await;
            assert_eq!(
                backend.packs.ids().unwrap().len(),
                1,
                "one pack for the batch"
            );
            assert_eq!(
                stored_pieces(&backend),
                1 + 5,
                "the pack, and 5 keys in chunks"
            );
            let pack = backend.packs.ids().unwrap()[0];
            assert_eq!(live_counts(&backend), vec![(pack, Some(40))]);
            blobs
        };
        let (backend, store) = open_packing(dir.path());
        let pack = backend.packs.ids().unwrap()[0];
        let allocated = || {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(backend.packs.path(pack))
                .unwrap()
                .blocks()
        };
        let before = allocated();
        for data in &blobs {
            let digest = BlobDigests::of(data).sha256;
            assert!(conformance::read_all(&store, &digest, ByteRange::ALL).await == data.as_ref());
        }
        // Every other packed blob goes; the rest still read back.
        let (gone, kept): (Vec<_>, Vec<_>) = blobs[..40]
            .iter()
            .enumerate()
            .partition(|(i, _)| i % 2 == 0);
        let gone: Vec<Digest> = gone
            .iter()
            .map(|(_, d)| BlobDigests::of(d).sha256)
            .collect();
        assert!(store.delete_many(&gone).await.unwrap().iter().all(|e| *e));
        assert!(
            store
                .delete(&BlobDigests::of(&blobs[1]).sha256)
                .await
                .unwrap()
        );
        assert_eq!(
            live_counts(&backend),
            vec![(pack, Some(19))],
            "each delete counts its blob out"
        );
        settle(&backend);
        assert!(allocated() < before, "the deleted blobs' blocks are freed");
        assert_eq!(backend.index.pending().unwrap().len(), 0);
        for (i, data) in kept.iter().skip(1) {
            let digest = BlobDigests::of(data).sha256;
            let read = conformance::read_all(&store, &digest, ByteRange::ALL).await;
            assert!(
                read == data.as_ref(),
                "blob {i} reads back after its neighbours went"
            );
        }
        let rest: Vec<Digest> = kept
            .iter()
            .skip(1)
            .map(|(_, d)| BlobDigests::of(d).sha256)
            .collect();
        assert!(store.delete_many(&rest).await.unwrap().iter().all(|e| *e));
        settle(&backend);
        assert!(
            backend.packs.ids().unwrap().is_empty(),
            "an empty pack is removed"
        );
        assert!(pack_records(&backend).is_empty(), "and its record");
        assert_eq!(stored_pieces(&backend), 5);
    }

    /// A pack whose record counts no live blob is removed whole, whichever of its ranges are
    /// freed; one whose record has no count (written before counts were kept) is removed only
    /// once no data block is left in it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pack_counted_empty_is_removed_whole_and_an_uncounted_one_when_punched_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = open_packing(dir.path());
        let blobs = put_a_batch(&store, 500).await;
        let pack = backend.packs.ids().unwrap()[0];
        let first = packed_at(&store, &BlobDigests::of(&blobs[0]).sha256).await;
        let free_first = |backend: &RocksBackend| {
            let mut batch = WriteBatch::default();
            free_ranges(
                &backend.index,
                &backend.packs,
                &mut batch,
                &[(first, blobs[0].len() as u64)],
            )
            .unwrap();
            backend.index.db().write(batch).unwrap();
        };
        let cf = packs_cf(&backend.index).unwrap();
        let db = backend.index.db();

        // No count: freeing one range leaves the pack and its record.
        db.put_cf(cf, pack.to_be_bytes(), b"").unwrap();
        db.merge_cf(cf, pack.to_be_bytes(), (-1i64).to_be_bytes())
            .unwrap();
        assert_eq!(
            live_counts(&backend),
            vec![(pack, None)],
            "no count stays none"
        );
        free_first(&backend);
        assert_eq!(backend.packs.ids().unwrap(), vec![pack]);
        assert_eq!(pack_records(&backend), vec![pack]);

        // Counted empty: freeing one range removes the whole pack, though its other blobs'
        // blocks are still there.
        db.put_cf(cf, pack.to_be_bytes(), 40i64.to_be_bytes())
            .unwrap();
        for _ in 0..40 {
            db.merge_cf(cf, pack.to_be_bytes(), (-1i64).to_be_bytes())
                .unwrap();
        }
        assert_eq!(live_counts(&backend), vec![(pack, Some(0))]);
        free_first(&backend);
        assert!(
            backend.packs.ids().unwrap().is_empty(),
            "the pack is removed"
        );
        assert!(pack_records(&backend).is_empty(), "and its record");
    }

    /// A deleted blob's range waits while its pack still holds live blobs (its pending record
    /// stays, the bytes are unreachable), and is freed when asked; the deletes that leave a pack
    /// with no live blob have it removed without being asked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranges_of_a_live_pack_wait_and_an_emptied_pack_goes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = open_packing(dir.path());
        let digests = packed_digests(&put_a_batch(&store, 700).await);
        // A digest repeated in one call counts its blob out once.
        assert_eq!(
            store.delete_many(&[digests[0], digests[0]]).await.unwrap(),
            vec![true, false]
        );
        let pack = backend.packs.ids().unwrap()[0];
        assert_eq!(live_counts(&backend), vec![(pack, Some(39))]);
        // The freeing thread has had the range since the delete returned; it holds it, well
        // within FREE_WITHIN.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(backend.index.pending().unwrap().len(), 1, "the range waits");
        assert_eq!(store.pending_uploads().await.unwrap(), 0, "until asked");
        assert_eq!(backend.index.pending().unwrap().len(), 0);

        assert!(
            store
                .delete_many(&digests[1..])
                .await
                .unwrap()
                .iter()
                .all(|e| *e)
        );
        let mut waited = 0;
        // The thread removes the file, then writes the removal of the records.
        while !backend.index.pending().unwrap().is_empty() && waited < 100 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            waited += 1;
        }
        assert!(
            backend.packs.ids().unwrap().is_empty(),
            "the emptied pack is removed"
        );
        assert!(pack_records(&backend).is_empty());
        assert_eq!(backend.index.pending().unwrap().len(), 0);
    }

    /// Deletes return before their packed ranges are freed; a store dropped right after still
    /// frees them before it lets go of the database, so that it opens again at once with no
    /// range left to free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranges_handed_to_the_freeing_thread_are_freed_before_the_store_closes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_, store) = open_packing(dir.path());
            let digests = packed_digests(&put_a_batch(&store, 600).await);
            for digest in digests.chunks(7) {
                assert!(store.delete_many(digest).await.unwrap().iter().all(|e| *e));
            }
        }
        let (backend, store) = open_packing(dir.path());
        assert!(backend.packs.ids().unwrap().is_empty());
        assert!(pack_records(&backend).is_empty());
        assert_eq!(store.pending_uploads().await.unwrap(), 0);
    }

    /// A pack that a crash left before its commit (no record) is removed at open, and new ids
    /// never name it again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pack_without_a_commit_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let far = {
            let (backend, store) = open_packing(dir.path());
            put_a_batch(&store, 200).await;
            // What a crash right after `write_pack` leaves, from an id far past the clock.
            let far = u64::MAX / 2;
            write_pack(
                &backend.index,
                &backend.packs,
                far,
                &[Bytes::from(vec![1u8; 4096])],
            )
            .unwrap();
            assert_eq!(backend.packs.ids().unwrap().len(), 2);
            far
        };
        let (backend, store) = open_packing(dir.path());
        let packs = backend.packs.ids().unwrap();
        assert_eq!(packs.len(), 1, "the uncommitted pack is gone");
        assert_ne!(packs[0], far);
        assert!(
            backend.index.new_upload_id() > far,
            "ids start past every pack seen"
        );
        assert!(
            store
                .stat(&BlobDigests::of(&vec![1u8; 4096]).sha256)
                .await
                .unwrap()
                .is_none()
        );
    }

    /// A delete that a crash cut after its synced batch (the range not yet freed) is finished at
    /// the next open: the range is a hole, the neighbours read back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delete_cut_by_a_crash_frees_the_range_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (blobs, at) = {
            let (backend, store) = open_packing(dir.path());
            let blobs = put_a_batch(&store, 300).await;
            let digest = BlobDigests::of(&blobs[3]).sha256;
            let at = packed_at(&store, &digest).await;
            let _guard = backend.index.lock_commits(&digest);
            let mut batch = WriteBatch::default();
            let mut removals = Removals::default();
            assert!(add_blob_removal(&backend.index, &mut batch, &digest, &mut removals).unwrap());
            backend.index.write_synced(batch).unwrap();
            assert_eq!(removals.ranges.len(), 1);
            (blobs, at)
        };
        let (backend, store) = open_packing(dir.path());
        assert_eq!(backend.index.pending().unwrap().len(), 0);
        let pack = std::fs::read(backend.packs.path(at.pack)).unwrap();
        let range = at.offset as usize..at.offset as usize + blobs[3].len();
        assert!(
            pack[range].iter().all(|b| *b == 0),
            "the deleted blob's bytes are gone"
        );
        assert!(
            store
                .stat(&BlobDigests::of(&blobs[3]).sha256)
                .await
                .unwrap()
                .is_none()
        );
        for i in [2, 4] {
            let digest = BlobDigests::of(&blobs[i]).sha256;
            assert!(conformance::read_all(&store, &digest, ByteRange::ALL).await == blobs[i]);
        }
    }

    /// A blob of `len` bytes made from `seed`, with the metadata the store would give it in a
    /// backend of 64 KiB blocks.
    fn hashed_blob(seed: u64, len: usize) -> (BlobMeta, Bytes) {
        let data = conformance::pattern(seed, len);
        let meta = BlobMeta {
            digests: BlobDigests::of(&data),
            size: len as u64,
            created_unix_ms: 1,
            block_size: 64 << 10,
            block_crcs: vec![crc32c::crc32c(&data)],
            packed: None,
        };
        (meta, data)
    }

    /// A backend of 64 KiB blocks in `dir`.
    fn backend_of_small_blocks(dir: &Path) -> RocksBackend {
        RocksBackend::open(
            dir,
            RocksConfig {
                block_size: 64 << 10,
            },
        )
        .unwrap()
    }

    /// A batch whose pack was written while it was hashed keeps the ranges of the blobs it
    /// commits, frees every other one (a blob refused, already in custody, repeated), and a
    /// staged pack none of whose blobs is committed is removed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_staged_pack_keeps_what_it_commits_and_frees_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend_of_small_blocks(dir.path());
        let blob = |seed: u64| hashed_blob(seed, 4096 + seed as usize);
        let (known, fresh, other, refused) = (blob(1), blob(2), blob(3), blob(4));
        let stored = backend.commit_small(vec![known.clone()]).await.unwrap();
        assert!(!stored.unwrap()[0].1);
        let packs_before = backend.packs.ids().unwrap();

        // Staged: a new blob, one already in custody, the new one again, one the store
        // refused (not handed to the commit) and another new one.
        let staged_bytes = [&fresh, &known, &fresh, &refused, &other].map(|(_, data)| data.clone());
        let staged = backend.stage_small(&staged_bytes).unwrap();
        let handed = [(0, &fresh), (1, &known), (2, &fresh), (4, &other)]
            .map(|(position, (meta, data))| (position, meta.clone(), data.clone()))
            .to_vec();
        let outcomes = backend.commit_small_staged(staged, handed).await.unwrap();
        let present: Vec<bool> = outcomes.iter().map(|(_, present)| *present).collect();
        assert_eq!(present, [false, true, true, false]);
        let (offsets, _) = packs::layout(staged_bytes.iter().map(|data| data.len() as u64));
        let at = outcomes[0].0.packed.unwrap();
        assert_eq!(at.offset, offsets[0]);
        assert_eq!(outcomes[3].0.packed.unwrap().offset, offsets[4]);
        let pack = std::fs::read(backend.packs.path(at.pack)).unwrap();
        for (position, data) in staged_bytes.iter().enumerate() {
            let range = &pack[offsets[position] as usize..][..data.len()];
            if position == 0 || position == 4 {
                assert_eq!(range, &data[..], "committed blob {position} in its place");
            } else {
                assert!(
                    range.iter().all(|b| *b == 0),
                    "unused range {position} freed"
                );
            }
        }
        assert_eq!(backend.index.pending().unwrap().len(), 0);
        assert_eq!(
            live_counts(&backend)
                .into_iter()
                .find(|(id, _)| *id == at.pack)
                .and_then(|(_, live)| live),
            Some(2)
        );
        for ((meta, _), outcome) in [(&fresh, &outcomes[0]), (&other, &outcomes[3])] {
            let entry = backend.index.lookup(&meta.sha256()).unwrap().unwrap();
            assert!(matches!(Location::of(&entry).unwrap(), Location::Pack(_)));
            assert_eq!(entry.meta.packed, outcome.0.packed);
        }

        // A staged batch of which nothing is committed leaves no pack behind: all of it known,
        // or all of it refused.
        let packs_now = backend.packs.ids().unwrap();
        let staged = backend.stage_small(std::slice::from_ref(&known.1)).unwrap();
        let outcomes = backend
            .commit_small_staged(staged, vec![(0, known.0.clone(), known.1.clone())])
            .await
            .unwrap();
        assert!(outcomes[0].1);
        let staged = backend
            .stage_small(std::slice::from_ref(&refused.1))
            .unwrap();
        assert!(
            backend
                .commit_small_staged(staged, Vec::new())
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(backend.packs.ids().unwrap(), packs_now);
        assert_eq!(packs_now.len(), packs_before.len() + 1);
        assert_eq!(backend.index.pending().unwrap().len(), 0);
    }

    /// A blob another upload commits while a batch's pack is written keeps that upload's copy:
    /// the batch reports it present, its range of the pack is freed, and a pack none of whose
    /// blobs was committed is removed.
    #[test]
    fn a_blob_committed_while_the_pack_is_written_keeps_the_first_copy() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend_of_small_blocks(dir.path());
        let blob = |seed: u64| hashed_blob(seed, 4096);
        // What another upload commits for `raced`: its block in `chunks`.
        let commit_elsewhere = |meta: &BlobMeta, data: &Bytes| {
            let extent = backend.index.new_upload_id();
            let mut batch = WriteBatch::default();
            batch.put_cf(
                chunks_cf(&backend.index).unwrap(),
                chunk_key(extent, 0),
                data,
            );
            backend
                .index
                .add_commit(&mut batch, &extent.to_be_bytes(), meta)
                .unwrap();
            backend.index.write_synced(batch).unwrap();
        };
        for (batch, raced) in [(vec![blob(1), blob(2), blob(3)], 1), (vec![blob(4)], 0)] {
            let (raced_meta, raced_data) = batch[raced].clone();
            let outcomes = std::thread::scope(|scope| {
                let guard = backend.index.lock_commits(&raced_meta.sha256());
                let packs_before = backend.packs.ids().unwrap().len();
                let committing = scope
                    .spawn(|| commit_batch(&backend.index, &backend.packs, batch.clone(), None));
                // The batch writes its pack, then waits for the lock held here.
                while backend.packs.ids().unwrap().len() == packs_before {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                commit_elsewhere(&raced_meta, &raced_data);
                drop(guard);
                committing.join().unwrap().unwrap()
            });
            for (i, ((meta, present), (sent, _))) in outcomes.iter().zip(&batch).enumerate() {
                assert_eq!(meta.sha256(), sent.sha256());
                assert_eq!(*present, i == raced, "blob {i}");
                assert_eq!(meta.packed.is_none(), i == raced, "blob {i}");
            }
            let entry = backend.index.lookup(&raced_meta.sha256()).unwrap().unwrap();
            assert!(matches!(Location::of(&entry).unwrap(), Location::Chunks(_)));
            assert_eq!(
                backend.index.pending().unwrap().len(),
                0,
                "the raced range is freed"
            );
            if batch.len() == 1 {
                assert_eq!(
                    backend.packs.ids().unwrap().len(),
                    1,
                    "a pack with no committed blob is removed"
                );
                assert_eq!(pack_records(&backend).len(), 1);
            } else {
                let at = outcomes[0].0.packed.unwrap();
                let pack = std::fs::read(backend.packs.path(at.pack)).unwrap();
                assert!(
                    pack[4096..8192].iter().all(|b| *b == 0),
                    "the raced copy is freed"
                );
                assert!(pack[..4096] == batch[0].1[..] && pack[8192..] == batch[2].1[..]);
            }
        }
    }

    /// A flipped byte in a packed blob, or a pack cut short, is never served: the read fails
    /// naming the blob.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_pack_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = open_packing(dir.path());
        let blobs = put_a_batch(&store, 400).await;
        let digest = |i: usize| BlobDigests::of(&blobs[i]).sha256;
        let at = packed_at(&store, &digest(5)).await;
        let path = backend.packs.path(at.pack);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at.offset as usize + 17] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let read = store.get(&digest(5), ByteRange::ALL).await.unwrap();
        let items: Vec<_> = read.data.collect().await;
        assert!(
            matches!(&items[..], [Err(StorageError::Corrupt { digest: d, .. })] if *d == digest(5)),
            "{items:?}"
        );
        // Cut the pack inside the last packed blob.
        let last = packed_at(&store, &digest(39)).await;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(last.offset + 10)
            .unwrap();
        let read = store.get(&digest(39), ByteRange::ALL).await.unwrap();
        let items: Vec<_> = read.data.collect().await;
        match &items[..] {
            [Err(StorageError::Corrupt { digest: d, detail })] => {
                assert_eq!(*d, digest(39));
                assert!(detail.contains("shorter"), "{detail}");
            }
            other => panic!("a cut pack gave {other:?}"),
        }
        let intact = conformance::read_all(&store, &digest(4), ByteRange::ALL).await;
        assert!(
            intact == blobs[4],
            "the blobs before the damage still read back"
        );
    }

    /// Concurrent puts of one blob keep exactly one copy of its blocks, and a delete removes
    /// them all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_puts_keep_one_copy_and_delete_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = open_small(dir.path());
        let data = conformance::pattern(2, 5 * 4096);
        let fresh = conformance::put_concurrently(&store, &data, 4, 3000)
            .await
            .iter()
            .filter(|o| !o.already_present)
            .count();
        assert_eq!(fresh, 1);
        assert_eq!(
            stored_pieces(&backend),
            1,
            "exactly one blob's file is stored"
        );
        assert_eq!(backend.index.pending().unwrap().len(), 0);

        let digest = BlobDigests::of(&data).sha256;
        assert!(store.delete(&digest).await.unwrap());
        assert_eq!(stored_pieces(&backend), 0, "delete removes the file");
        assert_eq!(backend.index.pending().unwrap().len(), 0);
    }

    /// A store written before blobs larger than one block got their own file keeps serving
    /// them from `chunks`, verified, and deletes them there: block by block up to
    /// [`POINT_DELETED_BLOCKS`], by one range past it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blobs_in_the_earlier_block_layout_are_served_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = open_small(dir.path());
        for blocks in [3, POINT_DELETED_BLOCKS + 6] {
            let data = conformance::pattern(blocks, blocks as usize * 4096 + 10);
            let digests = BlobDigests::of(&data);
            let crcs: Vec<u32> = data.chunks(4096).map(crc32c::crc32c).collect();
            let meta = BlobMeta {
                digests,
                size: data.len() as u64,
                created_unix_ms: 1,
                block_size: 4096,
                block_crcs: crcs,
                packed: None,
            };
            // Exactly what the earlier write path left: one key per block, an 8-byte location.
            let extent = backend.index.new_upload_id();
            let mut batch = WriteBatch::default();
            for (i, block) in data.chunks(4096).enumerate() {
                batch.put_cf(
                    chunks_cf(&backend.index).unwrap(),
                    chunk_key(extent, i as u64),
                    block,
                );
            }
            backend
                .index
                .add_commit(&mut batch, &extent.to_be_bytes(), &meta)
                .unwrap();
            backend.index.write_synced(batch).unwrap();

            let read = conformance::read_all(&store, &meta.sha256(), ByteRange::ALL).await;
            assert!(read == data);
            let range = ByteRange {
                offset: 4000,
                limit: Some(5000),
            };
            let read = conformance::read_all(&store, &meta.sha256(), range).await;
            assert!(read == data[4000..9000]);
            assert!(store.delete(&meta.sha256()).await.unwrap());
            assert_eq!(
                stored_pieces(&backend),
                0,
                "delete removes every block of a blob of {} blocks",
                data.len().div_ceil(4096)
            );
        }
    }

    /// A delete interrupted after its index batch (the file still there, its pending record
    /// durable) is finished by the next open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_left_by_an_interrupted_delete_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let data = conformance::pattern(4, 2 * 4096 + 1);
        {
            let (backend, store) = open_small(dir.path());
            let meta = store
                .put_bytes(Expectation::default(), data.clone())
                .await
                .unwrap()
                .meta;
            // The delete's synced batch alone, as a crash right after it would leave things.
            let _guard = backend.index.lock_commits(&meta.sha256());
            let mut batch = WriteBatch::default();
            let mut removals = Removals::default();
            assert!(
                add_blob_removal(&backend.index, &mut batch, &meta.sha256(), &mut removals)
                    .unwrap()
            );
            backend.index.write_synced(batch).unwrap();
            assert_eq!(removals.files.len(), 1);
            assert_eq!(stored_pieces(&backend), 1, "the file is still there");
        }
        let (backend, store) = open_small(dir.path());
        assert_eq!(stored_pieces(&backend), 0, "the open removed the file");
        assert_eq!(backend.index.pending().unwrap().len(), 0);
        assert!(
            store
                .stat(&BlobDigests::of(&data).sha256)
                .await
                .unwrap()
                .is_none()
        );
    }
}
