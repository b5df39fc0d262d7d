//! The embedded default backend: blob bytes in RocksDB, in blocks, beside their metadata.
//!
//! Layout: the `chunks` column family maps extent id (8 bytes, big-endian) ‖ block index
//! (8 bytes, big-endian) to one block. It uses RocksDB's integrated blob files, so block bytes are
//! written once and never rewritten by compaction. The index records each blob's extent id as
//! its location.
//!
//! Write path of one upload:
//! 1. The first block is held in memory. A blob of one block or less never touches disk before
//!    step 4, so small blobs cost one synced write each.
//! 2. When a second block arrives, a pending record for the extent is written and synced, then
//!    blocks are written without the WAL (they are written once, to blob files, at flush).
//! 3. On commit, the `chunks` column family is flushed and synced, making every block durable.
//! 4. One synced batch adds the metadata and BLAKE3 index and removes the pending record. Only
//!    now is the blob visible.
//!
//! Abort, a dropped upload, or a duplicate commit delete the extent's blocks and pending record.
//! After a crash, [`RocksBackend::open`] deletes every extent that still has a pending record.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use custodian_core::Digest;
use custodian_storage::{
    BlobBackend, BlobMeta, BlockSink, BlockStream, DEFAULT_BLOCK_SIZE, Expectation, Result,
    StorageError,
};
use futures::StreamExt;
use rocksdb::{
    ColumnFamilyDescriptor, FlushOptions, Options, ReadOptions, WriteBatch, WriteOptions,
};

use crate::index::RocksIndex;

const CF_CHUNKS: &str = "chunks";
const BACKEND: &str = "rocksdb";

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
    block_size: usize,
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
        chunks.set_block_based_table_factory(&crate::index::table_options());
        let index = RocksIndex::open(
            path,
            BACKEND,
            vec![ColumnFamilyDescriptor::new(CF_CHUNKS, chunks)],
        )?;
        let backend = RocksBackend {
            index: Arc::new(index),
            block_size: config.block_size,
        };
        backend.recover()?;
        Ok(backend)
    }

    /// Deletes the blocks of every upload that has a pending record.
    fn recover(&self) -> Result<()> {
        let leftovers = self.index.pending()?;
        if leftovers.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for (extent, _) in &leftovers {
            add_extent_removal(&self.index, &mut batch, *extent)?;
            self.index.add_pending_removal(&mut batch, *extent)?;
        }
        self.index.write_synced(batch)?;
        tracing::info!(
            count = leftovers.len(),
            "removed uploads left unfinished by a previous run"
        );
        Ok(())
    }
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

/// Adds the removal of a committed blob (its blocks, metadata and BLAKE3 alias) to `batch`;
/// false if there is no such blob. The caller holds its commit lock.
fn add_blob_removal(index: &RocksIndex, batch: &mut WriteBatch, sha256: &Digest) -> Result<bool> {
    let Some(entry) = index.lookup(sha256)? else {
        return Ok(false);
    };
    let extent = u64::from_be_bytes(
        entry
            .location
            .as_slice()
            .try_into()
            .map_err(|_| index.err("extent id is not 8 bytes"))?,
    );
    add_extent_removal(index, batch, extent)?;
    index.add_delete(batch, &entry.meta)?;
    Ok(true)
}

struct RocksSink {
    index: Arc<RocksIndex>,
    extent: u64,
    /// The first block, held back until the blob proves larger than one block.
    first: Option<Bytes>,
    /// Whether a pending record exists and blocks are on disk.
    spilled: bool,
    /// Whether cleanup is no longer this sink's job.
    done: bool,
}

impl RocksSink {
    /// Writes a block without the WAL; durability comes from the flush before commit.
    fn put_block(index: &RocksIndex, extent: u64, block: u64, data: &[u8]) -> Result<()> {
        index.check_writable()?;
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        index
            .db()
            .put_cf_opt(chunks_cf(index)?, chunk_key(extent, block), data, &opts)
            .map_err(|e| index.poison(e))
    }

    /// Deletes this upload's blocks and pending record (not synced: a lost delete is redone
    /// from the pending record at the next open).
    fn discard(index: &RocksIndex, extent: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        add_extent_removal(index, &mut batch, extent)?;
        index.add_pending_removal(&mut batch, extent)?;
        index.db().write(batch).map_err(|e| index.err(e))
    }
}

impl Drop for RocksSink {
    fn drop(&mut self) {
        if !self.done
            && self.spilled
            && let Err(err) = Self::discard(&self.index, self.extent)
        {
            tracing::warn!(extent = self.extent, %err, "could not discard an abandoned upload; it is removed at the next start");
        }
    }
}

#[async_trait]
impl BlockSink for RocksSink {
    async fn write_block(&mut self, block: u64, data: Bytes) -> Result<()> {
        if block == 0 {
            self.first = Some(data);
            return Ok(());
        }
        let index = self.index.clone();
        let extent = self.extent;
        let first = if self.spilled {
            None
        } else {
            self.first.take()
        };
        self.spilled = true;
        blocking(move || {
            if let Some(first) = first {
                index.add_pending(extent, b"")?;
                Self::put_block(&index, extent, 0, &first)?;
            }
            Self::put_block(&index, extent, block, &data)
        })
        .await
    }

    async fn commit(mut self: Box<Self>, meta: BlobMeta) -> Result<(BlobMeta, bool)> {
        let index = self.index.clone();
        let extent = self.extent;
        let spilled = self.spilled;
        let first = self.first.take();
        // From here on the blocking task owns cleanup, even if this future is dropped.
        self.done = true;
        blocking(move || {
            if spilled {
                let mut opts = FlushOptions::default();
                opts.set_wait(true);
                index
                    .db()
                    .flush_cf_opt(chunks_cf(&index)?, &opts)
                    .map_err(|e| index.poison(e))?;
            }
            let _guard = index.lock_commits(&meta.sha256());
            if let Some(existing) = index.lookup(&meta.sha256())? {
                if spilled {
                    Self::discard(&index, extent)?;
                }
                return Ok((existing.meta, true));
            }
            let mut batch = WriteBatch::default();
            if let Some(first) = first.filter(|_| !spilled) {
                batch.put_cf(chunks_cf(&index)?, chunk_key(extent, 0), &first);
            }
            index.add_commit(&mut batch, &extent.to_be_bytes(), &meta)?;
            if spilled {
                index.add_pending_removal(&mut batch, extent)?;
            }
            index.write_synced(batch)?;
            Ok((meta, false))
        })
        .await
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.done = true;
        if !self.spilled {
            return Ok(());
        }
        let index = self.index.clone();
        let extent = self.extent;
        blocking(move || Self::discard(&index, extent)).await
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

    async fn begin(&self, _expect: &Expectation) -> Result<Box<dyn BlockSink>> {
        self.index.check_writable()?;
        Ok(Box::new(RocksSink {
            index: self.index.clone(),
            extent: self.index.new_upload_id(),
            first: None,
            spilled: false,
            done: false,
        }))
    }

    async fn read_blocks(&self, meta: &BlobMeta, first: u64, end: u64) -> Result<BlockStream> {
        let entry = self
            .index
            .lookup(&meta.sha256())?
            .ok_or(StorageError::NotFound {
                digest: meta.sha256(),
            })?;
        let extent = u64::from_be_bytes(entry.location.as_slice().try_into().map_err(|_| {
            StorageError::Corrupt {
                digest: meta.sha256(),
                detail: "extent id is not 8 bytes".into(),
            }
        })?);
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
        let index = self.index.clone();
        let sha256 = *sha256;
        blocking(move || {
            let _guard = index.lock_commits(&sha256);
            let mut batch = WriteBatch::default();
            if !add_blob_removal(&index, &mut batch, &sha256)? {
                return Ok(false);
            }
            index.write_synced(batch)?;
            Ok(true)
        })
        .await
    }

    async fn delete_many(&self, sha256s: &[Digest]) -> Result<Vec<bool>> {
        let index = self.index.clone();
        let sha256s = sha256s.to_vec();
        blocking(move || {
            let _guards = index.lock_commits_many(&sha256s);
            let mut batch = WriteBatch::default();
            let mut existed = Vec::with_capacity(sha256s.len());
            for sha256 in &sha256s {
                existed.push(add_blob_removal(&index, &mut batch, sha256)?);
            }
            // One synced write for the whole batch: all of it is gone, or none.
            index.write_synced(batch)?;
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
        let index = self.index.clone();
        Some(
            blocking(move || {
                index.check_writable()?;
                let digests: Vec<Digest> = blobs.iter().map(|(m, _)| m.sha256()).collect();
                let _guards = index.lock_commits_many(&digests);
                // Every new blob's block and index entry go into one batch, synced once: none
                // is visible before all are durable, and all share one WAL sync.
                let mut batch = WriteBatch::default();
                let mut out = Vec::with_capacity(blobs.len());
                let mut added: std::collections::HashMap<Digest, BlobMeta> =
                    std::collections::HashMap::new();
                // One batched read for the whole batch rather than a point lookup per blob.
                let known = index.lookup_many(&digests)?;
                for ((meta, data), existing) in blobs.into_iter().zip(known) {
                    let sha256 = meta.sha256();
                    if let Some(existing) = existing {
                        out.push((existing, true));
                        continue;
                    }
                    if let Some(first) = added.get(&sha256) {
                        out.push((first.clone(), true));
                        continue;
                    }
                    let extent = index.new_upload_id();
                    if !data.is_empty() {
                        batch.put_cf(chunks_cf(&index)?, chunk_key(extent, 0), &data);
                    }
                    index.add_commit(&mut batch, &extent.to_be_bytes(), &meta)?;
                    added.insert(sha256, meta.clone());
                    out.push((meta, false));
                }
                if !added.is_empty() {
                    index.write_synced(batch)?;
                }
                Ok(out)
            })
            .await,
        )
    }

    async fn pending_uploads(&self) -> Result<u64> {
        Ok(self.index.pending()?.len() as u64)
    }
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
        let entry = backend.index.lookup(&meta.sha256()).unwrap().unwrap();
        let extent = u64::from_be_bytes(entry.location.try_into().unwrap());
        let cf = chunks_cf(&backend.index).unwrap();
        let mut block = backend
            .index
            .db()
            .get_cf(cf, chunk_key(extent, 1))
            .unwrap()
            .unwrap();
        block[17] ^= 0x01;
        backend
            .index
            .db()
            .put_cf(cf, chunk_key(extent, 1), &block)
            .unwrap();

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

    fn chunk_keys(backend: &RocksBackend) -> usize {
        let cf = chunks_cf(&backend.index).unwrap();
        backend
            .index
            .db()
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .count()
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
            chunk_keys(&backend),
            5,
            "exactly one blob's blocks are stored"
        );
        assert_eq!(backend.index.pending().unwrap().len(), 0);

        let digest = BlobDigests::of(&data).sha256;
        assert!(store.delete(&digest).await.unwrap());
        assert_eq!(chunk_keys(&backend), 0, "delete removes every block");
    }
}
