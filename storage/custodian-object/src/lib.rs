//! Custodian blob custody on any `object_store` backend: `file://`, `memory://`, `s3://`,
//! `az://`, and `gs://` behind the `gcp` feature.
//!
//! Objects are keyed by digest, `<prefix>/blobs/sha256/ab/cd/<hex>`, and hold the blob's bytes
//! as they are. The metadata index (sizes, both digests, block checksums, pending uploads) is a
//! [`BlobIndex`]: a local RocksDB ([`custodian_rocksdb::RocksIndex`]) by default, or PostgreSQL
//! when several daemons share one bucket ([`ObjectBackend::open_with_index`]). A blob is visible
//! exactly when its index entry is committed, whatever the object store's own consistency.
//!
//! Write path of one upload:
//! 1. A pending record naming the upload's object key is written to the index and synced.
//! 2. Bytes go up as a multipart upload. When the client declared a SHA-256, straight to the
//!    final key; otherwise to `<prefix>/staging/<upload id>`.
//! 3. Only if the digest matched is the multipart upload completed (otherwise it is aborted, so
//!    no object ever appears); a staged object is then moved to its final key ([`Moves`]:
//!    renamed on `file://`, copied by S3 up to 5 GiB, otherwise copied through this process
//!    with every block checked) and removed.
//! 4. One synced index batch adds the metadata and removes the pending record.
//!
//! `BatchPut`'s small blobs take a batched form of the same path (`commit_small`). On `file://`
//! (Linux) a batch becomes one *pack*, `<prefix>/packs/<id>`: the blobs back to back at 4 KiB
//! boundaries, each blob's metadata naming the pack and its offset; one pending record, the
//! pack file fsynced with its directory, one synced index batch. A deleted packed blob's range
//! is punched out of the file (`fallocate`) under a pending record of its own, and a pack with
//! no data left is removed. Elsewhere each small blob is an object of its own: one synced batch
//! of pending records, the objects written straight to their final keys, one synced index batch
//! for all.
//!
//! On `file://` the local store is opened with fsync enabled, so step 3 is durable before
//! step 4 runs. After a crash, [`ObjectBackend::open`] removes the objects that pending records
//! name (unless a committed blob owns the key). An S3 multipart upload that a crash interrupts
//! is invisible but may hold storage until the bucket's `AbortIncompleteMultipartUpload`
//! lifecycle rule removes it.

mod local;
pub mod s3lock;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use custodian_core::{Algorithm, Digest};
use custodian_rocksdb::RocksIndex;
use custodian_storage::{
    BlobBackend, BlobIndex, BlobMeta, BlockSink, BlockStream, DEFAULT_BLOCK_SIZE, Expectation,
    Leftover, PackedAt, Result, StorageError, packs,
};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

/// Settings of an object-store backend.
#[derive(Clone, Debug)]
pub struct ObjectConfig {
    /// Where blobs live: `file:///abs/path`, `memory://`, `s3://bucket/prefix`, ...
    pub url: String,
    /// The directory of the local metadata index.
    pub index_dir: PathBuf,
    /// The block size for read verification.
    pub block_size: usize,
    /// The multipart part size (at least 5 MiB for S3).
    pub part_size: usize,
    /// Backend options as `object_store` names them (for S3: `aws_endpoint`,
    /// `aws_allow_http`, `aws_access_key_id`, ...); they override the environment.
    pub options: Vec<(String, String)>,
    /// Whether opening cleans up uploads a crash left behind (off for tools that open a shared
    /// index while daemons run).
    pub recover: bool,
    /// On S3, the largest staged upload moved to its blob's key by the store's own copy;
    /// `None` is S3's limit for one `CopyObject`, 5 GiB. Larger ones are copied through the
    /// daemon (see [`Moves`]). Tests lower it to reach that path with small blobs.
    pub store_copy_max: Option<u64>,
}

impl ObjectConfig {
    /// Defaults for `url` with the index in `index_dir`.
    pub fn new(url: impl Into<String>, index_dir: impl Into<PathBuf>) -> Self {
        ObjectConfig {
            url: url.into(),
            index_dir: index_dir.into(),
            block_size: DEFAULT_BLOCK_SIZE,
            part_size: 8 << 20,
            options: Vec::new(),
            recover: true,
            store_copy_max: None,
        }
    }
}

/// The largest object one S3 `CopyObject` copies (AWS S3 API Reference, "CopyObject": "You can
/// create a copy of an object up to 5 GB in size in a single atomic action using this API").
const S3_COPY_MAX: u64 = 5 << 30;

/// How an upload staged without a declared SHA-256 reaches its blob's key once the digest is
/// known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moves {
    /// The store renames (`file://`, `memory://`): nothing is copied.
    Rename,
    /// The store copies objects up to this size in one synchronous call and the staged object
    /// is deleted after it (S3: `CopyObject` answers once the copy exists in full).
    StoreCopyUpTo(u64),
    /// Through this process: the staged object is read back in ranged reads, every block
    /// checked against the CRC32C computed when it arrived, and written to the blob's key as
    /// a new multi-part upload. Azure's Copy Blob may answer before the copy is done ("The
    /// Copy Blob operation can finish asynchronously", learn.microsoft.com, Copy Blob) and
    /// object_store's rename deletes the source right after it, which would lose a large
    /// acknowledged blob; GCS takes this path for want of a test that its copy does not.
    ThroughProcess,
}

/// How many multipart parts may be in flight per upload.
const PART_CONCURRENCY: usize = 2;
/// How many blocks one ranged read fetches.
const READ_WINDOW_BLOCKS: u64 = 4;
/// How often pending records whose cleanup failed are looked for.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Small objects written at once by a batched commit.
const SMALL_WRITE_CONCURRENCY: usize = 32;
/// How long a deleted packed blob's range may wait to be freed (see [`packs::Freer`]): nothing
/// counts a pack's live blobs here, so a pack's ranges are freed together once the first has
/// waited this long, joined into few holes (a pack all of whose blobs went within the wait is
/// one hole, and removed). A deleted blob's bytes stay on disk, unreferenced, at most this long,
/// or until the next open after a crash.
const FREE_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// What the freeing thread does on `file://`: punches the ranges out of their packs, then
/// removes their pending records; a failure leaves the records to the sweep.
struct ObjectFreeing(Arc<Shared>);

impl packs::Freeing for ObjectFreeing {
    fn emptied(&self, _packs: &[u64]) -> Vec<u64> {
        Vec::new()
    }

    fn free(&self, ranges: Vec<packs::FreedRange>) {
        let shared = &self.0;
        let ids: Vec<u64> = ranges.iter().map(|(id, ..)| *id).collect();
        let freed = shared
            .unpack_now(ranges.iter().map(|(_, at, size)| (*at, *size)).collect())
            .map_err(|e| shared.err(format!("free deleted blobs in their packs: {e}")))
            .and_then(|()| shared.index.remove_pending(&ids));
        if let Err(err) = freed {
            tracing::error!(%err, ranges = ids.len(), "could not free deleted packed blobs; the sweep retries");
        }
        shared.ended(ids);
    }
}
/// Blob custody in an object store, with a [`BlobIndex`] deciding what is committed.
pub struct ObjectBackend {
    shared: Arc<Shared>,
    /// On `file://`, the thread that frees deleted packed blobs' ranges off the delete's path.
    freer: Option<Arc<packs::Freer>>,
    block_size: usize,
    /// The store's URL and options, for the S3 Object Lock requests `object_store` cannot send.
    url: String,
    options: Vec<(String, String)>,
}

/// What the backend and each of its uploads share.
struct Shared {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    index: Arc<dyn BlobIndex>,
    name: &'static str,
    /// Whether a failed object write poisons the backend (local files; see `write_failed`).
    poison_on_write_failure: bool,
    /// The ids of this process's uploads that have begun and not ended: their pending records
    /// are not leftovers, whatever the index says.
    live: std::sync::Mutex<std::collections::HashSet<u64>>,
    /// On `file://` under Linux, the store's root directory: a batch of small blobs is written
    /// as one pack file under it, a deleted packed blob's bytes are freed in place there (see
    /// [`Shared::unpack_many`]), and a streamed upload is written there by this crate
    /// (`local.rs`).
    packs: Option<std::path::PathBuf>,
    /// How a staged upload is moved to its blob's key.
    moves: Moves,
    /// The multi-part part size, for uploads and copies through this process.
    part_size: usize,
}

impl Shared {
    /// A failed object write. On `file://` it poisons the backend: the local store fsyncs
    /// inside its own calls, so a failed write cannot be told from a failed fsync, after which
    /// the page cache may no longer say what reached the disk. A remote store's failed PUT
    /// leaves no object and is reported as it is.
    fn write_failed(&self, err: StorageError) -> StorageError {
        if self.poison_on_write_failure {
            self.index.poison(err.to_string())
        } else {
            err
        }
    }

    /// Moves a staged upload to `to`, its blob's key, as [`Moves`] says for this store, and
    /// removes the staged object.
    async fn move_into_place(&self, staged: &Path, to: &Path, meta: &BlobMeta) -> Result<()> {
        let by_store = match self.moves {
            Moves::Rename => true,
            Moves::StoreCopyUpTo(max) => meta.size <= max,
            Moves::ThroughProcess => false,
        };
        if by_store {
            return self
                .store
                .rename(staged, to)
                .await
                .map_err(|e| self.err(format!("move {staged} into place at {to}: {e}")));
        }
        self.copy_checked(staged, to, meta).await?;
        delete_if_present(&*self.store, staged, self.name).await
    }

    /// Copies the staged object `from` to `to` through this process: ranged reads of one part
    /// each, every block checked against the CRC32C computed when its bytes arrived, written as
    /// a multi-part upload that completes only after the last block was checked. A block that
    /// does not match (the staged object changed in the store) aborts the copy, so `to` never
    /// appears with bytes the digest does not name.
    async fn copy_checked(&self, from: &Path, to: &Path, meta: &BlobMeta) -> Result<()> {
        let upload = self
            .store
            .put_multipart(to)
            .await
            .map_err(|e| self.err(format!("start the copy of {from} to {to}: {e}")))?;
        let mut upload = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let blocks = meta.block_crcs.len() as u64;
        let window = (self.part_size as u64 / u64::from(meta.block_size)).max(1);
        let copied: Result<()> = async {
            let mut first = 0;
            while first < blocks {
                let end = (first + window).min(blocks);
                let pieces = self.checked_window(from, meta, first, end).await?;
                upload
                    .wait_for_capacity(PART_CONCURRENCY)
                    .await
                    .map_err(|e| self.err(format!("copy {from} to {to}: {e}")))?;
                pieces.into_iter().for_each(|piece| upload.put(piece));
                first = end;
            }
            Ok(())
        }
        .await;
        match copied {
            Ok(()) => match upload.finish().await {
                Ok(_) => Ok(()),
                Err(_) if self.placed_by_another(to, meta).await => Ok(()),
                Err(e) => Err(self.err(format!("complete the copy of {from} to {to}: {e}"))),
            },
            Err(err) => {
                let _ = upload.abort().await;
                Err(err)
            }
        }
    }

    /// Deletes the objects at these blobs' keys, many at a time; one already gone is no error.
    async fn delete_objects(&self, sha256s: &[Digest]) -> Result<()> {
        let name = self.name;
        let store = self.store.clone();
        let keys: Vec<Path> = sha256s.iter().map(|d| self.final_key(d)).collect();
        let deleted: Vec<Result<()>> = futures::stream::iter(keys)
            .map(|key| {
                let store = store.clone();
                async move { delete_if_present(&*store, &key, name).await }
            })
            .buffer_unordered(SMALL_WRITE_CONCURRENCY)
            .collect()
            .await;
        deleted.into_iter().collect()
    }

    /// Reads blocks `first..end` of the object `key` holding the blob `meta` describes and
    /// checks each against the CRC32C computed when its bytes arrived.
    async fn checked_window(
        &self,
        key: &Path,
        meta: &BlobMeta,
        first: u64,
        end: u64,
    ) -> Result<Vec<Bytes>> {
        let pieces = read_window(self, key, 0, meta, first, end).await?;
        for (index, piece) in (first..end).zip(&pieces) {
            if crc32c::crc32c(piece) != meta.block_crcs[index as usize] {
                return Err(StorageError::Corrupt {
                    digest: meta.sha256(),
                    detail: format!(
                        "block {index} of {key} does not match the CRC32C computed when its bytes arrived"
                    ),
                });
            }
        }
        Ok(pieces)
    }

    /// After this upload failed to complete at `to`, its blob's key: whether another upload of
    /// the same blob completed there first, which then stands for this one. Azure keeps one set
    /// of uncommitted blocks per blob name, and committing a block list deletes the blocks the
    /// list does not name ("Any blocks not specified in the block list are permanently deleted",
    /// learn.microsoft.com, Put Block List), so of two concurrent uploads of one blob (two
    /// clients, or two daemons) the second to commit is refused `InvalidBlockList`. The object
    /// counts only if it has the blob's size and every block reads back with the CRC32C this
    /// upload computed.
    async fn placed_by_another(&self, to: &Path, meta: &BlobMeta) -> bool {
        match self.store.head(to).await {
            Ok(object) if object.size == meta.size => {}
            _ => return false,
        }
        let blocks = meta.block_crcs.len() as u64;
        let window = (self.part_size as u64 / u64::from(meta.block_size)).max(1);
        let mut first = 0;
        while first < blocks {
            let end = (first + window).min(blocks);
            if self.checked_window(to, meta, first, end).await.is_err() {
                return false;
            }
            first = end;
        }
        tracing::debug!(%to, "another upload of this blob completed first");
        true
    }

    fn final_key(&self, sha256: &Digest) -> Path {
        let hex = sha256.hex();
        self.prefix
            .clone()
            .join("blobs")
            .join("sha256")
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(hex.as_str())
    }

    /// The object holding pack `pack`.
    fn pack_key(&self, pack: u64) -> Path {
        self.prefix
            .clone()
            .join("packs")
            .join(format!("{pack:016x}"))
    }

    /// The object a blob's bytes are in, and the offset of its first byte there.
    fn object_of(&self, meta: &BlobMeta) -> (Path, u64) {
        match meta.packed {
            Some(at) => (self.pack_key(at.pack), at.offset),
            None => (self.final_key(&meta.sha256()), 0),
        }
    }

    fn staging_key(&self, id: u64) -> Path {
        self.prefix
            .clone()
            .join("staging")
            .join(format!("{id:016x}"))
    }

    fn err(&self, message: impl std::fmt::Display) -> StorageError {
        StorageError::backend(self.name, message)
    }

    /// Frees deleted packed blobs' bytes: each one's range of its pack's file becomes a hole
    /// (zeros where the file system cannot punch one), each pack synced once, so the bytes are
    /// gone from the disk and not only from the index. A pack whose every blob is freed holds
    /// no data blocks and is removed. Runs on the blocking pool.
    async fn unpack_many(self: &Arc<Self>, ranges: Vec<(PackedAt, u64)>) -> std::io::Result<()> {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || shared.unpack_now(ranges))
            .await
            .map_err(std::io::Error::other)?
    }

    /// [`Shared::unpack_many`] on the calling thread.
    fn unpack_now(&self, ranges: Vec<(PackedAt, u64)>) -> std::io::Result<()> {
        let packs = packs::ranges_by_pack(ranges)
            .into_iter()
            .map(|(pack, ranges)| (self.pack_key(pack), ranges))
            .collect();
        self.free_ranges_now(packs)
    }

    /// Frees `(offset, size)` ranges (each rounded up to whole blocks) of the packs at the
    /// given keys, on the blocking pool (see [`packs::free_packed`]).
    async fn free_ranges(
        self: &Arc<Self>,
        packs: Vec<(Path, Vec<(u64, u64)>)>,
    ) -> std::io::Result<()> {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || shared.free_ranges_now(packs))
            .await
            .map_err(std::io::Error::other)?
    }

    /// [`Shared::free_ranges`] on the calling thread.
    fn free_ranges_now(&self, packs: Vec<(Path, Vec<(u64, u64)>)>) -> std::io::Result<()> {
        if packs.is_empty() {
            return Ok(());
        }
        let Some(root) = &self.packs else {
            return Err(std::io::Error::other(
                "this store keeps no packs; the blob's metadata names one",
            ));
        };
        let files: Vec<(PathBuf, Vec<(u64, u64)>)> = packs
            .into_iter()
            .map(|(key, ranges)| (root.join(key.as_ref()), ranges))
            .collect();
        packs::free_packed(root, &files).map(|_| ())
    }

    /// Runs blocking index work off the async worker threads.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&dyn BlobIndex) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || f(&*shared.index))
            .await
            .map_err(|e| self.err(format!("index task failed: {e}")))?
    }

    /// Runs a quick index read: inline on an embedded index (a RocksDB read is faster than a
    /// hop to the blocking pool), on the blocking pool when the index is across the network.
    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&dyn BlobIndex) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if self.index.remote() {
            self.blocking(f).await
        } else {
            f(&*self.index)
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<u64>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks uploads as begun (before their pending records are written).
    fn started(&self, ids: impl IntoIterator<Item = u64>) {
        self.live().extend(ids);
    }

    /// Marks uploads as ended, committed or not: a pending record of theirs still in the
    /// index (a removal that failed) is a leftover from now on.
    fn ended(&self, ids: impl IntoIterator<Item = u64>) {
        let mut live = self.live();
        for id in ids {
            live.remove(&id);
        }
    }

    /// Commits upload `id`, its object in place, as the blob `meta` describes, and ends it:
    /// the committed metadata and whether the blob was already there.
    async fn commit_one(self: &Arc<Self>, id: u64, meta: BlobMeta) -> Result<(BlobMeta, bool)> {
        let committed = self
            .blocking(move |index| index.commit(&[(id, meta)]))
            .await;
        self.ended([id]);
        committed?
            .pop()
            .ok_or_else(|| self.err("the index committed nothing"))
    }

    /// Marks operations as begun and durably records their pending records (one synced write):
    /// from here on a crash leaves records the next open acts on. On failure nothing is begun.
    async fn begin_pending(self: &Arc<Self>, records: Vec<(u64, PendingRecord)>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let ids: Vec<u64> = records.iter().map(|(id, _)| *id).collect();
        self.started(ids.iter().copied());
        let encoded: Vec<custodian_storage::PendingUpload> = records
            .iter()
            .map(|(id, record)| custodian_storage::PendingUpload {
                id: *id,
                record: record.encode(),
                places: record.places(),
            })
            .collect();
        let written = self
            .blocking(move |index| index.add_pending(&encoded))
            .await;
        if written.is_err() {
            self.ended(ids);
        }
        written
    }

    /// Deletes the objects of pending uploads no live upload owns and removes their records:
    /// at open, what a crash left; later, what a failed cleanup left (the database was
    /// unreachable when an upload ended). Returns how many were cleaned.
    async fn clean_leftovers(self: &Arc<Self>) -> Result<usize> {
        let shared = self.clone();
        let leftovers: Vec<Leftover> = self
            .blocking(move |index| index.leftovers(&|id| shared.live().contains(&id)))
            .await?;
        for leftover in &leftovers {
            let id = leftover.id;
            let record = PendingRecord::decode(&leftover.record)
                .ok_or_else(|| self.err(format!("pending upload {id} has a malformed record")))?;
            if let Some((offset, size)) = record.packed_range {
                // A delete of a packed blob that a crash cut short. If the index delete did not
                // happen, the blob is still committed at this range and keeps its bytes;
                // otherwise the range is freed (again): packs are never rewritten, so no other
                // blob lies there. A lookup that fails keeps the bytes too.
                let still_there = match record.direct {
                    Some(sha256) => match self.read(move |index| index.lookup(&sha256)).await {
                        Ok(Some(meta)) => meta.packed.is_some_and(|at| {
                            at.offset == offset && self.pack_key(at.pack) == record.key
                        }),
                        Ok(None) => false,
                        Err(_) => true,
                    },
                    None => true,
                };
                if !still_there {
                    self.free_ranges(vec![(record.key.clone(), vec![(offset, size)])])
                        .await
                        .map_err(|e| self.err(format!("free {}: {e}", record.key)))?;
                }
                self.blocking(move |index| index.remove_pending(&[id]))
                    .await?;
                continue;
            }
            let remove = match record.direct {
                // On a shared index another upload of the same digest, this daemon's or
                // another's, may be writing this final key right now, or have written it and
                // be about to commit; an orphan object there is harmless (the next put of
                // those bytes overwrites it), a deleted live one is not.
                Some(_) if !leftover.own || self.index.shared() => false,
                Some(sha256) => self
                    .read(move |index| index.lookup(&sha256))
                    .await?
                    .is_none(),
                None => true,
            };
            if remove {
                delete_if_present(&*self.store, &record.key, self.name).await?;
            }
            self.blocking(move |index| index.remove_pending(&[id]))
                .await?;
        }
        Ok(leftovers.len())
    }

    /// Ends an upload that will not commit: aborts its multipart upload (so no object
    /// appears), deletes its staged object if any, and removes its pending record.
    async fn discard(
        self: &Arc<Self>,
        id: u64,
        staged: Option<&Path>,
        upload: Option<WriteMultipart>,
    ) -> Result<()> {
        if let Some(upload) = upload {
            let _ = upload.abort().await;
        }
        if let Some(key) = staged {
            delete_if_present(&*self.store, key, self.name).await?;
        }
        let removed = self
            .blocking(move |index| index.remove_pending(&[id]))
            .await;
        self.ended([id]);
        removed
    }
}

/// Writes an object whose bytes never change once written (a tlog tile): create-only, so a copy
/// already there is left as it is; a store without conditional writes gets a plain write, which
/// is equally safe because whoever writes the path writes the same bytes.
pub async fn put_immutable(
    store: &dyn ObjectStore,
    location: &Path,
    bytes: Vec<u8>,
) -> std::result::Result<(), object_store::Error> {
    let create = object_store::PutMode::Create.into();
    match store
        .put_opts(
            location,
            object_store::PutPayload::from(bytes.clone()),
            create,
        )
        .await
    {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Err(object_store::Error::NotImplemented { .. }) => store
            .put(location, object_store::PutPayload::from(bytes))
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    }
}

/// The local store under `root`, with or without an fsync inside each write.
fn local_files(
    url: &str,
    root: &std::path::Path,
    fsync: bool,
) -> Result<object_store::local::LocalFileSystem> {
    Ok(object_store::local::LocalFileSystem::new_with_prefix(root)
        .map_err(|e| StorageError::backend("file", format!("cannot open {url}: {e}")))?
        .with_fsync(fsync)
        .with_automatic_cleanup(true))
}

/// The root of a `file://` store, where small blobs are packed and freed blob by blob with
/// `fallocate` (Linux only: elsewhere every small blob is an object of its own).
fn pack_files(url: &str) -> Option<std::path::PathBuf> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    url::Url::parse(url)
        .ok()
        .filter(|parsed| parsed.scheme() == "file")
        .and_then(|parsed| parsed.to_file_path().ok())
}

/// Makes `<root>/packs` and makes its name durable, so that a pack written into it needs only
/// its own directory synced.
fn pack_dir_made(root: &std::path::Path) -> std::io::Result<()> {
    let dir = root.join("packs");
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir)?;
        std::fs::File::open(root)?.sync_all()?;
    }
    Ok(())
}

/// Builds the object store for a URL and returns it with the key prefix the URL names and the
/// backend's name; cloud credentials come from the standard environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AZURE_STORAGE_ACCOUNT_NAME`, ...),
/// overridden by `options` (object_store's configuration keys, e.g. `aws_region`,
/// `azure_storage_endpoint`).
pub fn build_store(
    url: &str,
    options: &[(String, String)],
) -> Result<(Arc<dyn ObjectStore>, Path, &'static str)> {
    let err = |backend: &'static str, e: &dyn std::fmt::Display| {
        StorageError::backend(backend, format!("cannot open {url}: {e}"))
    };
    let parsed = url::Url::parse(url).map_err(|e| err("object", &e))?;
    let prefix = Path::from_url_path(parsed.path()).map_err(|e| err("object", &e))?;
    match parsed.scheme() {
        "file" => {
            let root = parsed
                .to_file_path()
                .map_err(|()| err("file", &"not an absolute local path"))?;
            std::fs::create_dir_all(&root).map_err(|e| err("file", &e))?;
            let store = local_files(url, &root, true)?;
            Ok((Arc::new(store), Path::default(), "file"))
        }
        "memory" => Ok((
            Arc::new(object_store::memory::InMemory::new()),
            prefix,
            "memory",
        )),
        "s3" | "s3a" => {
            let builder = object_store::aws::AmazonS3Builder::from_env().with_url(url);
            let builder = configured(builder, options, |b, k, v| b.with_config(k, v))
                .map_err(|e| err("s3", &e))?;
            let store = builder.build().map_err(|e| err("s3", &e))?;
            Ok((Arc::new(store), prefix, "s3"))
        }
        #[cfg(feature = "gcp")]
        "gs" => {
            let builder = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url);
            let builder = configured(builder, options, |b, k, v| b.with_config(k, v))
                .map_err(|e| err("gcs", &e))?;
            let store = builder.build().map_err(|e| err("gcs", &e))?;
            Ok((Arc::new(store), prefix, "gcs"))
        }
        "az" | "azure" | "abfs" | "abfss" => {
            let builder = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url);
            let builder = configured(builder, options, |b, k, v| b.with_config(k, v))
                .map_err(|e| err("azure", &e))?;
            let store = builder.build().map_err(|e| err("azure", &e))?;
            Ok((Arc::new(store), prefix, "azure"))
        }
        other => Err(err(
            "object",
            &format!(
                "unsupported scheme {other:?}; supported: file, memory, s3, az{}",
                if cfg!(feature = "gcp") { ", gs" } else { "" },
            ),
        )),
    }
}

/// Applies `options` to a cloud store's builder: each key parsed as that store's
/// configuration key (`aws_region`, `azure_storage_endpoint`, ...), then set with `set`.
fn configured<B, K: std::str::FromStr>(
    mut builder: B,
    options: &[(String, String)],
    set: impl Fn(B, K, &str) -> B,
) -> std::result::Result<B, K::Err> {
    for (key, value) in options {
        builder = set(builder, key.parse()?, value);
    }
    Ok(builder)
}

impl ObjectBackend {
    /// Opens the backend with its index in local RocksDB (`config.index_dir`) and removes
    /// whatever uploads a crash left behind.
    pub async fn open(config: ObjectConfig) -> Result<Self> {
        let name = build_store(&config.url, &config.options)?.2;
        std::fs::create_dir_all(&config.index_dir).map_err(|e| {
            StorageError::backend(name, format!("create {}: {e}", config.index_dir.display()))
        })?;
        let dir = config.index_dir.clone();
        let index = tokio::task::spawn_blocking(move || RocksIndex::open(&dir, name, Vec::new()))
            .await
            .map_err(|e| StorageError::backend(name, format!("index task failed: {e}")))??;
        Self::open_with_index(config, Arc::new(index)).await
    }

    /// Opens the backend on an index of the caller's (the PostgreSQL index, when several
    /// daemons share the bucket) and removes whatever uploads a crash left behind.
    pub async fn open_with_index(config: ObjectConfig, index: Arc<dyn BlobIndex>) -> Result<Self> {
        let (store, prefix, name) = build_store(&config.url, &config.options)?;
        if config.block_size == 0 || config.part_size < config.block_size {
            return Err(StorageError::backend(
                name,
                format!(
                    "block size {} must be positive and at most the part size {}",
                    config.block_size, config.part_size
                ),
            ));
        }
        let moves = match name {
            "file" | "memory" => Moves::Rename,
            "s3" => Moves::StoreCopyUpTo(config.store_copy_max.unwrap_or(S3_COPY_MAX)),
            _ => Moves::ThroughProcess,
        };
        let shared = Arc::new(Shared {
            store,
            prefix,
            index,
            name,
            moves,
            part_size: config.part_size,
            poison_on_write_failure: name == "file",
            live: Default::default(),
            packs: pack_files(&config.url)
                .map(|root| pack_dir_made(&root).map(|()| root))
                .transpose()
                .map_err(|e| {
                    StorageError::backend(name, format!("create the packs directory: {e}"))
                })?,
        });
        let freer = match &shared.packs {
            Some(_) => Some(Arc::new(
                packs::Freer::start(ObjectFreeing(shared.clone()), FREE_WITHIN).map_err(|e| {
                    StorageError::backend(name, format!("start the freeing thread: {e}"))
                })?,
            )),
            None => None,
        };
        let backend = ObjectBackend {
            shared,
            freer,
            block_size: config.block_size,
            url: config.url.clone(),
            options: config.options.clone(),
        };
        if config.recover {
            backend.recover(&config.url).await?;
            // Later leftovers (a record whose removal failed while the index was unreachable)
            // are swept while the backend lives.
            let weak = Arc::downgrade(&backend.shared);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(shared) = weak.upgrade() else { return };
                    match shared.clean_leftovers().await {
                        Ok(0) => {}
                        Ok(count) => tracing::info!(
                            count,
                            "cleaned up after uploads whose cleanup had failed"
                        ),
                        Err(err) => {
                            tracing::debug!(%err, "could not sweep pending uploads; retrying later")
                        }
                    }
                }
            });
        }
        Ok(backend)
    }

    /// Deletes the objects of uploads that have a pending record no live upload owns, and on
    /// an unshared `file://` store the partial files the local store stages uploads in.
    async fn recover(&self, url: &str) -> Result<()> {
        let shared = &self.shared;
        let cleaned = shared.clean_leftovers().await?;
        if let Some(root) = url.strip_prefix("file://")
            && !shared.index.shared()
        {
            remove_local_partials(FsPath::new(root))
                .map_err(|e| shared.err(format!("clean partial uploads under {root}: {e}")))?;
        }
        if cleaned > 0 {
            tracing::info!(
                count = cleaned,
                "removed uploads left unfinished by a previous run"
            );
        }
        Ok(())
    }
}

/// Removes the `<name>#<suffix>` files the local object store writes multipart uploads to: at
/// open no upload is in flight, so any such file is a crash's leftover.
fn remove_local_partials(root: &FsPath) -> std::io::Result<()> {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if entry.file_name().to_string_lossy().contains('#') {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(())
}

async fn delete_if_present(store: &dyn ObjectStore, key: &Path, name: &'static str) -> Result<()> {
    match store.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(StorageError::backend(name, format!("delete {key}: {e}"))),
    }
}

/// What a pending record says: the object key, and the SHA-256 if the upload writes straight
/// to its final key (such a key may belong to a committed blob and must then be kept). A record
/// may also stand for the delete of a packed blob, naming the range of the pack to free: a
/// crash between the index delete and the punch must not leave the bytes on disk.
struct PendingRecord {
    direct: Option<Digest>,
    key: Path,
    /// For the delete of a packed blob (whose SHA-256 is then `direct`): the offset and size of
    /// its range in pack `key`.
    packed_range: Option<(u64, u64)>,
}

impl PendingRecord {
    /// The blob whose own object the upload writes: a direct upload's (not a packed blob's
    /// delete, which names the blob too).
    fn places(&self) -> Option<Digest> {
        self.direct.filter(|_| self.packed_range.is_none())
    }

    /// Tags: `0` ‖ key (staged upload or pack), `1` ‖ SHA-256 ‖ key (direct upload), `2` ‖
    /// SHA-256 ‖ offset ‖ size (little-endian `u64`s) ‖ key (delete of a packed blob).
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match (&self.direct, self.packed_range) {
            (Some(d), Some((offset, size))) => {
                out.push(2);
                out.extend_from_slice(d.bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&size.to_le_bytes());
            }
            (Some(d), None) => {
                out.push(1);
                out.extend_from_slice(d.bytes());
            }
            (None, _) => out.push(0),
        }
        out.extend_from_slice(self.key.as_ref().as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&tag, rest) = bytes.split_first()?;
        let (direct, packed_range, key) = match tag {
            0 => (None, None, rest),
            1 if rest.len() >= 32 => {
                let (d, key) = rest.split_at(32);
                (Some(Digest::sha256(d.try_into().ok()?)), None, key)
            }
            2 if rest.len() >= 48 => {
                let (d, rest) = rest.split_at(32);
                let (range, key) = rest.split_at(16);
                let offset = u64::from_le_bytes(range[..8].try_into().ok()?);
                let size = u64::from_le_bytes(range[8..].try_into().ok()?);
                (
                    Some(Digest::sha256(d.try_into().ok()?)),
                    Some((offset, size)),
                    key,
                )
            }
            _ => return None,
        };
        Some(PendingRecord {
            direct,
            key: Path::from(std::str::from_utf8(key).ok()?),
            packed_range,
        })
    }
}

struct ObjectSink {
    shared: Arc<Shared>,
    id: u64,
    key: Path,
    /// Whether the upload goes straight to its final key (the client declared the SHA-256).
    direct: bool,
    upload: Option<WriteMultipart>,
}

impl ObjectSink {
    fn err(&self, what: &str, e: impl std::fmt::Display) -> StorageError {
        self.shared.err(format!("{what} {}: {e}", self.key))
    }

    /// The staged object this upload would leave behind, if it is staged.
    fn staged(&self) -> Option<&Path> {
        (!self.direct).then_some(&self.key)
    }
}

impl Drop for ObjectSink {
    fn drop(&mut self) {
        let Some(upload) = self.upload.take() else {
            return;
        };
        // Cleanup needs the async runtime; without one it is left to the next open.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            let id = self.id;
            let staged = self.staged().cloned();
            handle.spawn(async move {
                if let Err(err) = shared.discard(id, staged.as_ref(), Some(upload)).await {
                    tracing::warn!(id, %err, "could not discard an abandoned upload; it is removed at the next start");
                }
            });
        }
    }
}

#[async_trait]
impl BlockSink for ObjectSink {
    async fn write_block(&mut self, _index: u64, block: Bytes) -> Result<()> {
        let Some(upload) = self.upload.as_mut() else {
            return Err(StorageError::Aborted("upload already finished".into()));
        };
        if let Err(e) = upload.wait_for_capacity(PART_CONCURRENCY).await {
            return Err(self.shared.write_failed(self.err("upload part of", e)));
        }
        upload.put(block);
        Ok(())
    }

    async fn commit(mut self: Box<Self>, meta: BlobMeta) -> Result<(BlobMeta, bool)> {
        let upload = self
            .upload
            .take()
            .ok_or_else(|| StorageError::Aborted("upload already finished".into()))?;
        let mut placing = None;
        let placed = match upload.finish().await {
            Err(_) if self.direct && self.shared.placed_by_another(&self.key, &meta).await => {
                Ok(())
            }
            Err(e) => Err(self.err("complete upload of", e)),
            Ok(_) if self.direct => Ok(()),
            Ok(_) => {
                // From the move on an object is at the blob's key. A second pending record
                // names it, so that a crash before the index commit leaves it to be removed,
                // and so that on a shared index no collection deletes it under this upload
                // (`PendingUpload::places`); the staged upload's record still names the staged
                // object until it is gone.
                let final_key = self.shared.final_key(&meta.sha256());
                let id = self.shared.index.new_upload_id();
                let record = PendingRecord {
                    direct: Some(meta.sha256()),
                    key: final_key.clone(),
                    packed_range: None,
                };
                if let Err(err) = self.shared.begin_pending(vec![(id, record)]).await {
                    // Not a failed write (nothing was written): the index refused or failed.
                    let _ = self.shared.discard(self.id, self.staged(), None).await;
                    return Err(err);
                }
                placing = Some(id);
                // Bytes already in custody need no copy: the index answers for them, and from
                // the record above no collection on any daemon claims them (on one daemon, the
                // retention gate the caller holds keeps collections out).
                let sha256 = meta.sha256();
                match self.shared.read(move |index| index.lookup(&sha256)).await {
                    Ok(Some(_)) => {
                        delete_if_present(&*self.shared.store, &self.key, self.shared.name).await
                    }
                    _ => {
                        self.shared
                            .move_into_place(&self.key, &final_key, &meta)
                            .await
                    }
                }
            }
        };
        let committed = match placed {
            Ok(()) => self.shared.commit_one(self.id, meta).await,
            Err(err) => {
                let _ = self.shared.discard(self.id, self.staged(), None).await;
                Err(self.shared.write_failed(err))
            }
        };
        if let Some(id) = placing {
            // Committed, the blob's object is the index's; not committed, it is left as an
            // orphan a later put of the same bytes overwrites (it may be another upload's).
            let _ = self.shared.discard(id, None, None).await;
        }
        committed
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        let upload = self.upload.take();
        self.shared.discard(self.id, self.staged(), upload).await
    }

    fn abandon_for_crash_test(mut self: Box<Self>) {
        // Dropping the multipart upload without abort leaves, as a crash would, a partial
        // upload behind (on file://, a staged partial file).
        drop(self.upload.take());
    }
}

impl ObjectBackend {
    /// The batched write path for small blobs whose digests are known. Each new digest is
    /// written once: on `file://` (Linux) into one pack, elsewhere as objects of their own.
    async fn commit_small_now(
        &self,
        blobs: Vec<(BlobMeta, Bytes)>,
    ) -> Result<Vec<(BlobMeta, bool)>> {
        let shared = self.shared.clone();
        shared.index.check_writable()?;
        let digests: Vec<Digest> = blobs.iter().map(|(m, _)| m.sha256()).collect();
        let known = {
            let digests = digests.clone();
            shared
                .blocking(move |index| index.lookup_many(&digests))
                .await?
        };
        // What to write: each new digest once.
        let mut first_of: std::collections::HashMap<Digest, usize> =
            std::collections::HashMap::new();
        let mut todo: Vec<(BlobMeta, Bytes)> = Vec::new();
        for (i, ((meta, data), existing)) in blobs.iter().zip(&known).enumerate() {
            if existing.is_none() && !first_of.contains_key(&digests[i]) {
                first_of.insert(digests[i], i);
                todo.push((meta.clone(), data.clone()));
            }
        }
        if todo.is_empty() {
            return Ok(known
                .into_iter()
                .zip(blobs)
                .map(|(existing, (meta, _))| (existing.unwrap_or(meta), true))
                .collect());
        }
        let committed = match &shared.packs {
            Some(root) => commit_pack(&shared, root, todo).await?,
            None => commit_objects(&shared, todo).await?,
        };
        let committed: std::collections::HashMap<Digest, (BlobMeta, bool)> = committed
            .into_iter()
            .map(|(meta, present)| (meta.sha256(), (meta, present)))
            .collect();
        let mut out = Vec::with_capacity(blobs.len());
        for (i, existing) in known.into_iter().enumerate() {
            out.push(match existing {
                Some(meta) => (meta, true),
                None => {
                    let (meta, present) = committed
                        .get(&digests[i])
                        .cloned()
                        .ok_or_else(|| shared.err(format!("{} was not committed", digests[i])))?;
                    // A repeat within the batch was present by the time its turn came.
                    (meta, present || first_of.get(&digests[i]) != Some(&i))
                }
            });
        }
        Ok(out)
    }
}

/// Commits new small blobs as objects of their own: one synced batch of pending records, the
/// objects written straight to their final keys (many at a time), then one synced index batch
/// committing them all. Crash recovery is the single-upload path's: pending records name the
/// objects to remove.
async fn commit_objects(
    shared: &Arc<Shared>,
    todo: Vec<(BlobMeta, Bytes)>,
) -> Result<Vec<(BlobMeta, bool)>> {
    let todo: Vec<(u64, Path, BlobMeta, Bytes)> = todo
        .into_iter()
        .map(|(meta, data)| {
            let key = shared.final_key(&meta.sha256());
            (shared.index.new_upload_id(), key, meta, data)
        })
        .collect();
    let records = todo
        .iter()
        .map(|(id, key, meta, _)| {
            let record = PendingRecord {
                direct: Some(meta.sha256()),
                key: key.clone(),
                packed_range: None,
            };
            (*id, record)
        })
        .collect();
    shared.begin_pending(records).await?;
    let name = shared.name;
    let store = shared.store.clone();
    let written: Vec<Result<()>> = futures::stream::iter(
        todo.iter()
            .map(|(_, key, _, data)| (key.clone(), data.clone()))
            .collect::<Vec<_>>(),
    )
    .map(move |(key, data)| {
        let store = store.clone();
        async move {
            store
                .put(&key, data.into())
                .await
                .map(|_| ())
                .map_err(|e| StorageError::backend(name, format!("write {key}: {e}")))
        }
    })
    .buffer_unordered(SMALL_WRITE_CONCURRENCY)
    .collect()
    .await;
    if let Some(err) = written.into_iter().find_map(Result::err) {
        for (id, ..) in &todo {
            let _ = shared.discard(*id, None, None).await;
        }
        return Err(shared.write_failed(err));
    }
    let commits: Vec<(u64, BlobMeta)> = todo
        .into_iter()
        .map(|(id, _, meta, _)| (id, meta))
        .collect();
    let ids: Vec<u64> = commits.iter().map(|(id, _)| *id).collect();
    let committed = shared.blocking(move |index| index.commit(&commits)).await;
    shared.ended(ids);
    committed
}

/// Commits new small blobs as one pack under the store's `root`: a single local file holding
/// them all, each at a [`packs::PACK_ALIGN`] boundary, its metadata naming the pack and the
/// offset. One synced pending record, the pack written and fsynced (with its directory), one
/// synced index batch: one new file per batch instead of one per blob, which is what bounds a
/// file system's rate.
/// A crash before the index commit leaves the pending record, and the next open deletes the
/// pack it names; none of its blobs was visible.
async fn commit_pack(
    shared: &Arc<Shared>,
    root: &std::path::Path,
    todo: Vec<(BlobMeta, Bytes)>,
) -> Result<Vec<(BlobMeta, bool)>> {
    let name = shared.name;
    let id = shared.index.new_upload_id();
    let key = shared.pack_key(id);
    let record = PendingRecord {
        direct: None,
        key: key.clone(),
        packed_range: None,
    };
    shared.begin_pending(vec![(id, record)]).await?;
    let mut blobs: Vec<Bytes> = Vec::with_capacity(todo.len());
    let mut commits: Vec<(u64, BlobMeta)> = Vec::with_capacity(todo.len());
    let mut offset = 0u64;
    for (mut meta, data) in todo {
        meta.packed = Some(PackedAt { pack: id, offset });
        offset += (data.len() as u64).next_multiple_of(packs::PACK_ALIGN);
        blobs.push(data);
        commits.push((id, meta));
    }
    // Written as the RocksDB backend writes its packs, straight to the pack's name (the pending
    // record makes a partial one a leftover the next open removes), synced with its directory,
    // and its pages dropped from the page cache once synced. Through `object_store`'s local
    // store the pack stayed cached: after a million small blobs had been put, writing a new pack
    // spent most of its time in the kernel taking fresh page-cache pages, and `BatchPut` ran at
    // 0.57x the rate into an empty store (docs/performance.md).
    let path = root.join(key.as_ref());
    let written = tokio::task::spawn_blocking(move || {
        packs::write_pack(&path, &blobs.iter().collect::<Vec<_>>())
    })
    .await
    .map_err(|e| shared.err(format!("pack task failed: {e}")))
    .and_then(|written| written.map_err(|(step, e)| shared.err(format!("{step} {key}: {e}"))));
    if let Err(err) = written {
        let _ = shared.discard(id, Some(&key), None).await;
        return Err(shared.write_failed(err));
    }
    let ours: Vec<(Option<PackedAt>, u64)> = commits
        .iter()
        .map(|(_, meta)| (meta.packed, meta.size))
        .collect();
    let committed = shared.blocking(move |index| index.commit(&commits)).await;
    shared.ended([id]);
    let committed = committed?;
    // A blob another upload committed first is described by that upload's metadata; this
    // pack's copy is referenced by nothing, so its bytes are freed now rather than left behind.
    let duplicates: Vec<(PackedAt, u64)> = committed
        .iter()
        .zip(&ours)
        .filter(|((meta, present), (at, _))| *present && meta.packed != *at)
        .filter_map(|(_, (at, size))| at.map(|at| (at, *size)))
        .collect();
    shared
        .unpack_many(duplicates)
        .await
        .map_err(|e| StorageError::backend(name, format!("free duplicates in {key}: {e}")))?;
    Ok(committed)
}

#[async_trait]
impl BlobBackend for ObjectBackend {
    fn name(&self) -> &'static str {
        self.shared.name
    }

    fn block_size(&self) -> usize {
        self.block_size
    }

    async fn lookup(&self, digest: &Digest) -> Result<Option<BlobMeta>> {
        let digest = *digest;
        self.shared.read(move |index| index.lookup(&digest)).await
    }

    async fn lookup_many(&self, digests: &[Digest]) -> Result<Vec<Option<BlobMeta>>> {
        let digests = digests.to_vec();
        self.shared
            .blocking(move |index| index.lookup_many(&digests))
            .await
    }

    async fn present_many(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        let digests = digests.to_vec();
        self.shared
            .blocking(move |index| index.present_many(&digests))
            .await
    }

    async fn commit_small(
        &self,
        blobs: Vec<(BlobMeta, Bytes)>,
    ) -> Option<Result<Vec<(BlobMeta, bool)>>> {
        Some(self.commit_small_now(blobs).await)
    }

    /// A `file://` store on the staged file's own file system takes the file by renaming it:
    /// an upload session's bytes are then written once, not staged and mirrored.
    fn moves_by_copy(&self) -> bool {
        self.shared.moves != Moves::Rename
    }

    fn adopts_files(&self, staged: &std::path::Path) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let Some(root) = &self.shared.packs else {
            return false;
        };
        let device = |path: &std::path::Path| std::fs::metadata(path).map(|m| m.dev()).ok();
        let staged_dir = staged.parent().unwrap_or(staged);
        matches!((device(root), device(staged_dir)), (Some(a), Some(b)) if a == b)
    }

    async fn begin(&self, expect: &Expectation) -> Result<Box<dyn BlockSink>> {
        let shared = &self.shared;
        shared.index.check_writable()?;
        let id = shared.index.new_upload_id();
        let direct = expect.digest.filter(|d| d.algorithm() == Algorithm::Sha256);
        let key = match &direct {
            Some(sha256) => shared.final_key(sha256),
            None => shared.staging_key(id),
        };
        let record = PendingRecord {
            direct,
            key: key.clone(),
            packed_range: None,
        };
        shared.begin_pending(vec![(id, record)]).await?;
        if let Some(root) = &shared.packs {
            let root = root.clone();
            let sink = local::LocalSink::create(shared.clone(), id, root, key, direct.is_some());
            return match sink.await {
                Ok(sink) => Ok(Box::new(sink)),
                Err(err) => {
                    let _ = shared.discard(id, None, None).await;
                    Err(err)
                }
            };
        }
        let upload = match shared.store.put_multipart(&key).await {
            Ok(upload) => upload,
            Err(e) => {
                let _ = shared.discard(id, None, None).await;
                return Err(shared.err(format!("start upload of {key}: {e}")));
            }
        };
        Ok(Box::new(ObjectSink {
            shared: shared.clone(),
            id,
            key,
            direct: direct.is_some(),
            upload: Some(WriteMultipart::new_with_chunk_size(
                upload,
                self.shared.part_size,
            )),
        }))
    }

    async fn read_blocks(&self, meta: &BlobMeta, first: u64, end: u64) -> Result<BlockStream> {
        let shared = self.shared.clone();
        let meta = meta.clone();
        let (key, base) = shared.object_of(&meta);
        // On `file://` a blob that is a file of its own is read as the RocksDB backend reads its
        // extent files: one open, forward reads with the kernel asked to read ahead. Through
        // `object_store` each 4 MiB window was a fresh open, a fresh buffer and a hop to the
        // blocking pool, with the disk idle between windows: a cold 1 GiB get to a file took
        // 2.9-3.3 s against 1.9-2.3 s on RocksDB (docs/performance.md).
        if let (Some(root), None) = (&shared.packs, meta.packed) {
            let path = root.join(key.as_ref());
            let failed = shared.clone();
            return Ok(custodian_storage::read_file_blocks(
                path,
                &meta,
                first,
                end,
                format!("object {key} is missing from the store"),
                move |e| failed.err(format!("read {key}: {e}")),
            ));
        }
        // Each ranged read covers a window of blocks: one request (one pread on file://) per
        // window, sliced into blocks without copying; two windows are in flight at a time.
        let windows = (first..end)
            .step_by(READ_WINDOW_BLOCKS as usize)
            .map(move |w| (w, (w + READ_WINDOW_BLOCKS).min(end)));
        let stream = futures::stream::iter(windows)
            .map(move |(w_first, w_end)| {
                let shared = shared.clone();
                let meta = meta.clone();
                let key = key.clone();
                async move { read_window(&shared, &key, base, &meta, w_first, w_end).await }
            })
            .buffered(2)
            .map_ok(|blocks| futures::stream::iter(blocks.into_iter().map(Ok)))
            .try_flatten();
        Ok(stream.boxed())
    }

    async fn delete(&self, sha256: &Digest) -> Result<bool> {
        Ok(self.delete_many(std::slice::from_ref(sha256)).await?[0])
    }

    async fn delete_many(&self, sha256s: &[Digest]) -> Result<Vec<bool>> {
        let shared = &self.shared;
        if sha256s.is_empty() {
            return Ok(Vec::new());
        }
        // A packed blob's delete is recorded first (synced), naming the blob and the range to
        // free, so a crash after the index delete still frees the bytes at the next open.
        let digests = sha256s.to_vec();
        let looked_up = shared
            .blocking(move |index| index.lookup_many(&digests))
            .await?;
        let records: Vec<(u64, PendingRecord)> = looked_up
            .iter()
            .flatten()
            .filter_map(|meta| {
                let at = meta.packed?;
                let record = PendingRecord {
                    direct: Some(meta.sha256()),
                    key: shared.pack_key(at.pack),
                    packed_range: Some((at.offset, meta.size)),
                };
                Some((shared.index.new_upload_id(), record))
            })
            .collect();
        // A digest repeated in the batch has a record per occurrence; one of them stays with its
        // range, the others are done with once the index delete is.
        let mut ids: std::collections::HashMap<Digest, Vec<u64>> = Default::default();
        for (id, record) in &records {
            if let Some(digest) = record.direct {
                ids.entry(digest).or_default().push(*id);
            }
        }
        shared.begin_pending(records).await?;
        // On an index other daemons share, the objects go first, while the blobs' rows (and a
        // collection's claims on them) still stand: a put on another daemon that would write
        // one of these objects is refused until the row is gone (`PendingUpload::places`), and
        // once it is gone there is no delete left to remove what that put writes. A crash in
        // between leaves rows without objects, read as damage until the recorded deletion is
        // finished. With one daemon's own index the rows go first instead: its retention gate
        // keeps puts of these blobs waiting until every step is done, and a crash then leaves
        // only objects nothing names (a later put overwrites them).
        let objects_first: Vec<Digest> = if shared.index.shared() {
            sha256s
                .iter()
                .zip(&looked_up)
                .filter(|(_, meta)| meta.is_some())
                .map(|(sha256, _)| *sha256)
                .collect()
        } else {
            Vec::new()
        };
        if let Err(err) = shared.delete_objects(&objects_first).await {
            // Nothing was deleted from the index: the packed blobs' records are done with.
            let recorded: Vec<u64> = ids.values().flatten().copied().collect();
            let ended = recorded.clone();
            let _ = shared
                .blocking(move |index| index.remove_pending(&recorded))
                .await;
            shared.ended(ended);
            return Err(err);
        }
        let objects_first: std::collections::HashSet<Digest> = objects_first.into_iter().collect();
        let digests = sha256s.to_vec();
        let removed = shared
            .blocking(move |index| index.delete_many(&digests))
            .await;
        // The ranges of the blobs removed go to the freeing thread, under their records; a
        // record whose blob was not removed (gone already) is done with.
        let mut ranges = Vec::new();
        let mut done: std::collections::HashSet<u64> = ids.values().flatten().copied().collect();
        let mut unrecorded = Vec::new();
        if let Ok(removed) = &removed {
            for meta in removed.iter().flatten() {
                let Some(at) = meta.packed else { continue };
                match ids.get(&meta.sha256()).and_then(|ids| ids.first()) {
                    Some(&id) => {
                        done.remove(&id);
                        ranges.push((id, at, meta.size));
                    }
                    // Committed after this call looked it up: no record names its range, so
                    // it is freed now, as every range was before the freeing thread.
                    None => unrecorded.push((at, meta.size)),
                }
            }
        }
        match &self.freer {
            Some(freer) => freer.submit(ranges),
            // Packed blobs on a store that keeps no packs (opened at another URL): their
            // records stay, and the sweep reports what it cannot free.
            None => shared.ended(ranges.iter().map(|(id, ..)| *id)),
        }
        if removed.is_ok() && !done.is_empty() {
            let done: Vec<u64> = done.iter().copied().collect();
            let _ = shared
                .blocking(move |index| index.remove_pending(&done))
                .await;
        }
        shared.ended(done);
        let freed = shared.unpack_many(unrecorded).await;
        let removed = removed?;
        freed.map_err(|e| shared.err(format!("free deleted blobs in their packs: {e}")))?;
        // A packed blob may also have an object of its own: a streamed upload of the same
        // bytes that lost the race to commit. Unpacked blobs are objects of their own.
        let objects: Vec<Digest> = sha256s
            .iter()
            .zip(&removed)
            .filter(|(sha256, meta)| meta.is_some() && !objects_first.contains(sha256))
            .map(|(sha256, _)| *sha256)
            .collect();
        shared.delete_objects(&objects).await?;
        Ok(removed.iter().map(Option::is_some).collect())
    }

    async fn pending_uploads(&self) -> Result<u64> {
        // Deleted packed blobs whose ranges the freeing thread holds are not left over: have
        // it free them, so that what is counted is what a crash or a failure left.
        if let Some(freer) = self.freer.clone() {
            tokio::task::spawn_blocking(move || freer.settle())
                .await
                .map_err(|e| self.shared.err(format!("freeing task failed: {e}")))?;
        }
        self.shared.read(|index| index.pending_count()).await
    }

    async fn probe(&self) -> Result<()> {
        // A key nobody writes: "not found" is the healthy answer, and it needs only read access.
        let key = self.shared.prefix.clone().join("custodian-readiness-probe");
        match self.shared.store.head(&key).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(StorageError::Unavailable {
                    backend: self.shared.name,
                    message: format!("the object store does not answer: {e}"),
                });
            }
        }
        self.shared.read(|index| index.probe()).await
    }

    fn shared_state(&self) -> Option<Arc<dyn custodian_storage::SharedState>> {
        self.shared.index.clone().shared_state()
    }

    fn native_holds(&self) -> Result<Arc<dyn custodian_storage::NativeHolds>> {
        let shared = self.shared.clone();
        let holds = s3lock::S3LegalHolds::new(
            &self.url,
            &self.options,
            Box::new(move |sha256| shared.final_key(sha256)),
        )?;
        Ok(Arc::new(holds))
    }

    async fn list(&self, after: Option<Digest>, limit: usize) -> Result<Vec<Digest>> {
        self.shared
            .blocking(move |index| index.list(after, limit))
            .await
    }

    async fn quarantine(&self, sha256: &Digest) -> Result<bool> {
        match self.delete(sha256).await {
            Err(StorageError::Corrupt { .. }) => {
                let digest = *sha256;
                self.shared
                    .blocking(move |index| index.forget(&digest).map(|()| true))
                    .await?;
                let key = self.shared.final_key(sha256);
                delete_if_present(&*self.shared.store, &key, self.shared.name).await?;
                Ok(true)
            }
            other => other,
        }
    }
}

/// Reads blocks `first..end` of a blob that starts at byte `base` of object `key`, with one
/// ranged request, and slices them apart.
async fn read_window(
    shared: &Shared,
    key: &Path,
    base: u64,
    meta: &BlobMeta,
    first: u64,
    end: u64,
) -> Result<Vec<Bytes>> {
    let block_size = u64::from(meta.block_size);
    let start = base + first * block_size;
    let stop = base + (end * block_size).min(meta.size);
    let bytes = match shared.store.get_range(key, start..stop).await {
        Ok(bytes) => bytes,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(StorageError::Corrupt {
                digest: meta.sha256(),
                detail: format!("object {key} is missing from the store"),
            });
        }
        Err(e) => return Err(shared.err(format!("read {key} bytes {start}..{stop}: {e}"))),
    };
    if bytes.len() as u64 != stop - start {
        return Err(StorageError::Corrupt {
            digest: meta.sha256(),
            detail: format!(
                "object {key} returned {} bytes for range {start}..{stop}",
                bytes.len()
            ),
        });
    }
    Ok((first..end)
        .map(|index| {
            let at = ((index - first) * block_size) as usize;
            bytes.slice(at..at + meta.block_len(index) as usize)
        })
        .collect())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// A `file://` store under `dir`: its objects directory and its configuration.
    fn file_config(dir: &FsPath) -> (PathBuf, ObjectConfig) {
        let objects = dir.join("objects");
        let config = ObjectConfig::new(format!("file://{}", objects.display()), dir.join("index"));
        (objects, config)
    }

    /// A `memory://` backend of 4 KiB blocks and 12 KiB parts, its index under `dir`, and a
    /// blob of seven blocks and a bit, made with `step`, with its metadata.
    async fn memory_blob(dir: &FsPath, step: usize) -> (ObjectBackend, Bytes, BlobMeta) {
        let mut config = ObjectConfig::new("memory://", dir.join("index"));
        config.block_size = 4096;
        config.part_size = 3 * 4096;
        let backend = ObjectBackend::open(config)
            .await
            .expect("open a memory:// backend");
        let data: Bytes = (0..7 * 4096 + 100)
            .map(|i| (i * step % 251) as u8)
            .collect();
        let meta = BlobMeta {
            digests: custodian_core::BlobDigests::of(&data),
            size: data.len() as u64,
            created_unix_ms: 0,
            block_size: 4096,
            block_crcs: data.chunks(4096).map(crc32c::crc32c).collect(),
            packed: None,
        };
        (backend, data, meta)
    }

    /// A copy through the backend checks every block: a staged object whose bytes are not
    /// the ones whose CRC32Cs the upload computed is refused as corrupt, naming the block, and
    /// no object appears at the destination; the staged object as received copies whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_through_the_backend_checks_every_block() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, data, meta) = memory_blob(dir.path(), 7).await;
        let shared = backend.shared.clone();
        let (staged, to) = (Path::from("staging/1"), Path::from("blobs/x"));
        let mut damaged = data.to_vec();
        damaged[5 * 4096 + 1] ^= 0x10;
        shared
            .store
            .put(&staged, Bytes::from(damaged).into())
            .await
            .unwrap();
        match shared.copy_checked(&staged, &to, &meta).await {
            Err(StorageError::Corrupt { digest, detail }) => {
                assert_eq!(digest, meta.sha256());
                assert!(detail.contains("block 5"), "{detail}");
            }
            other => panic!("a damaged staged object was copied: {other:?}"),
        }
        assert!(
            shared.store.head(&to).await.is_err(),
            "nothing at the destination"
        );

        shared
            .store
            .put(&staged, data.clone().into())
            .await
            .unwrap();
        shared.copy_checked(&staged, &to, &meta).await.unwrap();
        let copied = shared.store.get(&to).await.unwrap().bytes().await.unwrap();
        assert!(copied == data);
    }

    /// An upload that failed to complete at its blob's key is answered by an object there only
    /// if that object is the blob: its size, and every block's CRC32C as this upload computed
    /// it. A damaged, short or missing object is not taken for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_blob_itself_stands_for_a_failed_upload() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, data, meta) = memory_blob(dir.path(), 13).await;
        let shared = backend.shared.clone();
        let to = shared.final_key(&meta.sha256());
        assert!(!shared.placed_by_another(&to, &meta).await, "nothing there");
        let mut damaged = data.to_vec();
        damaged[6 * 4096 + 3] ^= 0x01;
        let cases = [
            ("a damaged object", Bytes::from(damaged)),
            ("a short object", data.slice(..data.len() - 1)),
        ];
        for (case, bytes) in cases {
            shared.store.put(&to, bytes.into()).await.unwrap();
            assert!(!shared.placed_by_another(&to, &meta).await, "{case}");
        }
        shared.store.put(&to, data.clone().into()).await.unwrap();
        assert!(
            shared.placed_by_another(&to, &meta).await,
            "the blob itself"
        );
    }

    /// A crash between writing a pack and committing its batch leaves a pending record naming
    /// the pack; the next open deletes the pack and the record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pack_left_by_a_crash_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (objects, config) = file_config(dir.path());
        let backend = ObjectBackend::open(config.clone()).await.unwrap();
        let shared = backend.shared.clone();
        let id = shared.index.new_upload_id();
        let key = shared.pack_key(id);
        let record = PendingRecord {
            direct: None,
            key: key.clone(),
            packed_range: None,
        }
        .encode();
        let pending = custodian_storage::PendingUpload {
            id,
            record,
            places: None,
        };
        shared.index.add_pending(&[pending]).unwrap();
        shared
            .store
            .put(&key, Bytes::from_static(&[7; 8192]).into())
            .await
            .unwrap();
        let path = objects.join(key.as_ref());
        assert!(path.exists());
        drop(shared);
        drop(backend);

        let reopened = ObjectBackend::open(config).await.unwrap();
        assert!(!path.exists(), "the uncommitted pack survived the restart");
        assert_eq!(reopened.pending_uploads().await.unwrap(), 0);
    }

    /// A crash in the middle of a packed blob's delete leaves the delete's record. At the next
    /// open, a blob whose index entry is gone has its range freed; a blob the crash caught
    /// before its index delete is still committed and keeps its bytes; neighbours are untouched.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delete_cut_by_a_crash_frees_the_range_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (objects, config) = file_config(dir.path());
        let backend = ObjectBackend::open(config.clone()).await.unwrap();
        let blobs: Vec<Bytes> = (0..3u8).map(|i| Bytes::from(vec![i + 1; 4000])).collect();
        let metas: Vec<BlobMeta> = blobs
            .iter()
            .map(|data| BlobMeta {
                digests: custodian_core::BlobDigests::of(data),
                size: data.len() as u64,
                created_unix_ms: 0,
                block_size: DEFAULT_BLOCK_SIZE as u32,
                // Not read back here: the test looks at the pack's bytes on disk.
                block_crcs: vec![0],
                packed: None,
            })
            .collect();
        let committed = backend
            .commit_small_now(metas.iter().cloned().zip(blobs.iter().cloned()).collect())
            .await
            .unwrap();
        let metas: Vec<BlobMeta> = committed.into_iter().map(|(meta, _)| meta).collect();
        let at: Vec<PackedAt> = metas.iter().map(|m| m.packed.unwrap()).collect();
        let shared = backend.shared.clone();
        let key = shared.pack_key(at[0].pack);
        let records: Vec<custodian_storage::PendingUpload> = [1, 2]
            .iter()
            .map(|&i| {
                let record = PendingRecord {
                    direct: Some(metas[i].sha256()),
                    key: key.clone(),
                    packed_range: Some((at[i].offset, metas[i].size)),
                };
                let encoded = record.encode();
                let decoded = PendingRecord::decode(&encoded).unwrap();
                assert_eq!(
                    record.places(),
                    None,
                    "a packed blob's delete places nothing"
                );
                assert_eq!(
                    (decoded.direct, decoded.key, decoded.packed_range),
                    (record.direct, record.key, record.packed_range)
                );
                custodian_storage::PendingUpload {
                    id: shared.index.new_upload_id(),
                    record: encoded,
                    places: None,
                }
            })
            .collect();
        shared.index.add_pending(&records).unwrap();
        // Blob 2's index delete happened before the crash; blob 1's did not.
        assert!(shared.index.delete(&metas[2].sha256()).unwrap().is_some());
        drop(shared);
        drop(backend);

        let reopened = ObjectBackend::open(config).await.unwrap();
        let bytes = std::fs::read(objects.join(key.as_ref())).unwrap();
        let range = |i: usize| at[i].offset as usize..at[i].offset as usize + 4000;
        assert!(
            bytes[range(0)].iter().all(|&b| b == 1),
            "a neighbour was freed"
        );
        assert!(
            bytes[range(1)].iter().all(|&b| b == 2),
            "a blob still committed lost its bytes"
        );
        assert!(
            bytes[range(2)].iter().all(|&b| b == 0),
            "the range was not freed"
        );
        assert!(reopened.lookup(&metas[1].sha256()).await.unwrap().is_some());
        assert_eq!(reopened.pending_uploads().await.unwrap(), 0);
    }
}
