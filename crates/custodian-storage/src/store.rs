//! The backend traits and the verifying front ([`BlobStore`]) every caller goes through.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use custodian_core::{Algorithm, BlobDigests, Digest, StreamHasher};
use futures::stream::{BoxStream, StreamExt};

use crate::hashing::OffThreadHasher;
use crate::retention::Retention;
use crate::{BlobMeta, Result, StorageError};

/// A stream of stored blocks, in order.
pub type BlockStream = BoxStream<'static, Result<Bytes>>;

/// What a client claims about a blob it is about to upload. Both parts are optional; whatever is
/// given is enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expectation {
    /// The digest the bytes must hash to (either algorithm).
    pub digest: Option<Digest>,
    /// The exact number of bytes that will follow.
    pub size: Option<u64>,
}

impl Expectation {
    /// Checks bytes of `size` with `digests` against what was declared: the size first, then
    /// the digest under the algorithm the client named.
    pub fn check(&self, digests: &BlobDigests, size: u64) -> Result<()> {
        if let Some(expected) = self.size
            && expected != size
        {
            return Err(StorageError::SizeMismatch {
                expected,
                actual: size,
            });
        }
        if let Some(expected) = self.digest
            && !digests.matches(&expected)
        {
            return Err(StorageError::DigestMismatch {
                expected,
                actual: digests.get(expected.algorithm()),
            });
        }
        Ok(())
    }
}

/// The result of a committed put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// The stored blob's metadata (for an existing blob, the original metadata).
    pub meta: BlobMeta,
    /// Whether the blob was already in custody; if so, no second copy was kept.
    pub already_present: bool,
}

/// A byte range of a blob: `offset` and at most `limit` bytes (`None`: to the end).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByteRange {
    /// The first byte to return.
    pub offset: u64,
    /// The most bytes to return; `None` reads to the end.
    pub limit: Option<u64>,
}

impl ByteRange {
    /// The whole blob.
    pub const ALL: ByteRange = ByteRange {
        offset: 0,
        limit: None,
    };
}

/// Where a backend puts the blocks of one upload until it is committed or aborted.
///
/// A sink that is dropped without `commit` or `abort` must clean up after itself: an upload
/// whose client went away leaves nothing behind.
#[async_trait]
pub trait BlockSink: Send {
    /// Stores block `index`. Every block is exactly the backend's block size except the last.
    async fn write_block(&mut self, index: u64, block: Bytes) -> Result<()>;

    /// Takes the file at `path`, whose first `size` bytes are the blob (blocks one after
    /// another), as this upload's blocks, by moving it rather than copying it; bytes past `size`
    /// are cut away. Only before any block is written. Returns false, leaving the file where it
    /// is, when this backend cannot (it keeps no files, or the file is on another file system).
    async fn adopt_file(&mut self, _path: &std::path::Path, _size: u64) -> Result<bool> {
        Ok(false)
    }

    /// Makes the verified blob visible under both of its digests, atomically and durably, unless
    /// a blob with the same SHA-256 is already committed. Returns the committed metadata and
    /// whether it was already present; in that case this upload's blocks are discarded.
    async fn commit(self: Box<Self>, meta: BlobMeta) -> Result<(BlobMeta, bool)>;

    /// Discards every block written so far.
    async fn abort(self: Box<Self>) -> Result<()>;

    /// Forgets this upload without cleaning up, as a crash would; for crash tests only. Recovery
    /// of the leftovers must then happen when the backend is next opened.
    #[doc(hidden)]
    fn abandon_for_crash_test(self: Box<Self>);
}

/// A batch of small blobs whose bytes a backend began writing before they were hashed
/// ([`BlobBackend::stage_small`]); only the backend that made it looks inside.
pub struct StagedSmall(pub Box<dyn std::any::Any + Send>);

impl std::fmt::Debug for StagedSmall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StagedSmall")
    }
}

/// What a storage backend provides. Backends store and fetch; [`BlobStore`] verifies.
#[async_trait]
pub trait BlobBackend: Send + Sync + 'static {
    /// A short name for errors and logs, e.g. `rocksdb`, `file`, `s3`, `memory`.
    fn name(&self) -> &'static str;

    /// The block size new blobs are written with.
    fn block_size(&self) -> usize;

    /// The metadata of the committed blob with this digest (either algorithm), if any.
    async fn lookup(&self, digest: &Digest) -> Result<Option<BlobMeta>>;

    /// Looks up many digests at once; backends with a batched index override this.
    async fn lookup_many(&self, digests: &[Digest]) -> Result<Vec<Option<BlobMeta>>> {
        let mut out = Vec::with_capacity(digests.len());
        for digest in digests {
            out.push(self.lookup(digest).await?);
        }
        Ok(out)
    }

    /// Whether each of many digests is in custody, in order; backends whose index can answer
    /// without decoding every blob's metadata override this.
    async fn present_many(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        Ok(self
            .lookup_many(digests)
            .await?
            .iter()
            .map(Option::is_some)
            .collect())
    }

    /// Starts an upload. `expect` lets a backend write straight to the final location when the
    /// SHA-256 is known in advance.
    async fn begin(&self, expect: &Expectation) -> Result<Box<dyn BlockSink>>;

    /// Whether its sinks may take the staged file at `staged` as a blob's blocks
    /// ([`BlockSink::adopt_file`]), so that an upload engine staging in local files need not
    /// also write the blocks. A backend whose files may live on another file system than the
    /// staging directory says no for those: the engine then mirrors the blocks as they arrive
    /// instead of copying the whole file at the finish.
    fn adopts_files(&self, _staged: &std::path::Path) -> bool {
        false
    }

    /// Whether an upload with no declared SHA-256 costs a second copy of the whole blob when it
    /// commits (an object store that stages it, then copies it to its key). A caller that can
    /// read its bytes twice for less (a local file) then learns the digest first and declares
    /// it, so that the blob is written once, straight to its key.
    fn moves_by_copy(&self) -> bool {
        false
    }

    /// Streams blocks `first..end` of a committed blob, unverified; [`BlobStore`] checks them.
    async fn read_blocks(&self, meta: &BlobMeta, first: u64, end: u64) -> Result<BlockStream>;

    /// Removes a committed blob; returns whether it existed.
    async fn delete(&self, sha256: &Digest) -> Result<bool>;

    /// Removes many committed blobs; returns whether each existed. Backends with a batched
    /// durable write override this so that garbage collection costs one sync per batch.
    async fn delete_many(&self, sha256s: &[Digest]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(sha256s.len());
        for sha256 in sha256s {
            out.push(self.delete(sha256).await?);
        }
        Ok(out)
    }

    /// How many uploads are in flight or were left behind by a crash and not yet cleaned.
    async fn pending_uploads(&self) -> Result<u64>;

    /// Up to `limit` SHA-256 digests of committed blobs that sort after `after`, in byte order:
    /// how `custodian scrub` walks everything in custody. Digests are listed even when the
    /// blob's metadata no longer decodes, so that damage there is found too.
    async fn list(&self, after: Option<Digest>, limit: usize) -> Result<Vec<Digest>>;

    /// Takes a damaged blob out of custody: afterwards it is not found, so a fresh upload of the
    /// same bytes heals it. Unlike [`BlobBackend::delete`] this must work when the blob's own
    /// metadata is unreadable; backends whose delete needs the metadata override it.
    async fn quarantine(&self, sha256: &Digest) -> Result<bool> {
        self.delete(sha256).await
    }

    /// Commits many small blobs (each at most one block, already hashed and checked by
    /// [`BlobStore::put_many`]) in one durable write; returns each blob's metadata and whether
    /// it was already present, in order. `None` if the backend has no batched path, in which
    /// case the store commits them one by one.
    async fn commit_small(
        &self,
        _blobs: Vec<(BlobMeta, Bytes)>,
    ) -> Option<Result<Vec<(BlobMeta, bool)>>> {
        None
    }

    /// Starts writing the bytes of a batch of small blobs (at most one commit's worth) before
    /// [`BlobStore::put_many`] has hashed them, so that a backend which keeps such a batch in a
    /// file of its own overlaps that file's write and sync with the hashing; the batch is then
    /// committed with [`BlobBackend::commit_small_staged`], which must be called once for every
    /// batch staged. `None` (the default) if the backend has no such path or declines the batch,
    /// which is then committed with [`BlobBackend::commit_small`].
    fn stage_small(&self, _blobs: &[Bytes]) -> Option<StagedSmall> {
        None
    }

    /// Commits the blobs of a batch started with [`BlobBackend::stage_small`] that hashed and
    /// checked: each is given with its position in the staged batch, its metadata and its bytes.
    /// The staged bytes of every other blob (refused, already in custody, a repeat) are never
    /// visible and their space is given back. Returns what [`BlobBackend::commit_small`] returns.
    async fn commit_small_staged(
        &self,
        _staged: StagedSmall,
        _blobs: Vec<(usize, BlobMeta, Bytes)>,
    ) -> Result<Vec<(BlobMeta, bool)>> {
        Err(StorageError::Aborted(
            "this backend stages no batches of small blobs".into(),
        ))
    }

    /// Checks that the store can be reached now (for readiness): the object store and a
    /// remote index answer. Local stores are always reachable.
    async fn probe(&self) -> Result<()> {
        Ok(())
    }

    /// The storage service's own legal holds on stored blobs (S3 Object Lock); an error for
    /// stores without one (RocksDB, local files, memory) or when it cannot be configured.
    fn native_holds(&self) -> Result<Arc<dyn NativeHolds>> {
        Err(StorageError::backend(
            self.name(),
            "this store has no native legal hold (S3 Object Lock needs an s3:// store)",
        ))
    }

    /// The state daemons sharing this store's index keep beside it, if it is shared (see
    /// [`crate::SharedState`]); `None` for a store one daemon owns.
    fn shared_state(&self) -> Option<Arc<dyn crate::SharedState>> {
        None
    }
}

/// A storage service's own legal hold on a stored blob, set beside the ledger's hold so that
/// the bytes outlive even a delete that bypasses Custodian (someone with the bucket's keys).
#[async_trait]
pub trait NativeHolds: Send + Sync + 'static {
    /// What the service calls its hold, for messages: e.g. `S3 Object Lock legal hold`.
    fn describe(&self) -> &'static str;

    /// Checks that holds can be set at all (for S3: the bucket has Object Lock enabled), so a
    /// misconfigured daemon refuses to start rather than fail at the first hold.
    async fn check(&self) -> Result<()>;

    /// Turns the hold on the stored object of `sha256` on or off.
    async fn set(&self, sha256: &Digest, on: bool) -> Result<()>;

    /// Whether the hold on the stored object of `sha256` is on.
    async fn get(&self, sha256: &Digest) -> Result<bool>;
}

/// The sink for an upload of a blob that is already in custody: it verifies (in [`BlobWriter`])
/// but stores nothing, and reports the existing blob.
struct KnownBlobSink {
    backend: Arc<dyn BlobBackend>,
}

#[async_trait]
impl BlockSink for KnownBlobSink {
    async fn write_block(&mut self, _index: u64, _block: Bytes) -> Result<()> {
        Ok(())
    }

    async fn commit(self: Box<Self>, meta: BlobMeta) -> Result<(BlobMeta, bool)> {
        match self.backend.lookup(&meta.sha256()).await? {
            Some(existing) => Ok((existing, true)),
            // Deleted while the upload ran: its bytes were not kept, so the client must retry.
            None => Err(StorageError::Aborted(format!(
                "{} was deleted while this upload of it was running; retry the upload",
                meta.sha256()
            ))),
        }
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        Ok(())
    }

    fn abandon_for_crash_test(self: Box<Self>) {}
}

/// A blob read: the blob's metadata and a stream of the verified bytes of the requested range.
pub struct BlobRead {
    /// The blob's metadata.
    pub meta: BlobMeta,
    /// The requested bytes, in order, each block checked against its stored CRC32C first.
    pub data: BoxStream<'static, Result<Bytes>>,
}

/// The verifying front of a backend: the only way Custodian reads or writes blobs.
#[derive(Clone)]
pub struct BlobStore {
    backend: Arc<dyn BlobBackend>,
    retention: Arc<Retention>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl BlobStore {
    /// Wraps a backend.
    pub fn new(backend: Arc<dyn BlobBackend>) -> Self {
        BlobStore {
            backend,
            retention: Arc::new(Retention::in_memory()),
        }
    }

    /// The same store with `retention` as its gate and acknowledgement record (a daemon's is
    /// persistent; see [`Retention`]).
    pub fn with_retention(mut self, retention: Arc<Retention>) -> Self {
        self.retention = retention;
        self
    }

    /// The gate garbage collection deletes under, and the acknowledgement times.
    pub fn retention(&self) -> &Arc<Retention> {
        &self.retention
    }

    /// Records that the client of `outcome` was told its blob is kept; the caller holds
    /// [`Retention::keep`].
    async fn acknowledge(&self, outcome: &PutOutcome) -> Result<()> {
        if outcome.already_present {
            self.retention.acknowledged(&outcome.meta.sha256()).await?;
        }
        Ok(())
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The backend's block size.
    pub fn block_size(&self) -> usize {
        self.backend.block_size()
    }

    /// Whether the staged file at `staged` can be moved into custody
    /// ([`BlobStore::commit_staged_file`]).
    pub fn adopts_files(&self, staged: &std::path::Path) -> bool {
        self.backend.adopts_files(staged)
    }

    /// Whether an upload should declare its SHA-256 when it can ([`BlobBackend::moves_by_copy`]).
    pub fn moves_by_copy(&self) -> bool {
        self.backend.moves_by_copy()
    }

    /// Starts a verified upload.
    pub async fn begin_put(&self, expect: Expectation) -> Result<BlobWriter> {
        // A blob already in custody under the declared digest is still verified byte by byte,
        // but its bytes need not be written anywhere.
        let known = match expect.digest {
            Some(digest) => self.backend.lookup(&digest).await?,
            None => None,
        };
        let sink: Box<dyn BlockSink> = match known {
            Some(_) => Box::new(KnownBlobSink {
                backend: self.backend.clone(),
            }),
            None => self.backend.begin(&expect).await?,
        };
        Ok(BlobWriter {
            store: self.clone(),
            expect,
            received: 0,
            sha256: OffThreadHasher::new(StreamHasher::new(Algorithm::Sha256)),
            blake3: StreamHasher::new(Algorithm::Blake3),
            pending: BytesMut::new(),
            block_size: self.backend.block_size(),
            next_block: 0,
            crcs: Vec::new(),
            sink: Some(sink),
        })
    }

    /// Uploads one in-memory blob.
    pub async fn put_bytes(&self, expect: Expectation, data: Bytes) -> Result<PutOutcome> {
        let mut writer = self.begin_put(expect).await?;
        writer.write(data).await?;
        writer.commit().await
    }

    /// Puts many blobs, each verified on its own against its expectation; the results are in
    /// input order. Blobs of at most one block go to the backend's batched commit, one durable
    /// write per [`SMALL_COMMIT_MAX`] of them, where the backend has one; the rest are put one
    /// by one.
    pub async fn put_many(&self, items: Vec<(Expectation, Bytes)>) -> Vec<Result<PutOutcome>> {
        let block = self.backend.block_size();
        let mut results: Vec<Option<Result<PutOutcome>>> = items.iter().map(|_| None).collect();
        let mut large: Vec<(usize, Expectation, Bytes)> = Vec::new();
        let mut unhashed: Vec<(usize, Expectation, Bytes)> = Vec::with_capacity(items.len());
        for (i, (expect, data)) in items.into_iter().enumerate() {
            if data.len() > block {
                large.push((i, expect, data));
            } else {
                unhashed.push((i, expect, data));
            }
        }
        // Small blobs go one commit's worth at a time, each part hashed, written and committed
        // before the next is looked at. What a blob needs until its commit (its metadata, its
        // share of the write batch) is then held for at most SMALL_COMMIT_MAX blobs at once, not
        // for all 16,000 of a 4 MiB BatchPut of 256-byte blobs: with two such calls in flight,
        // those copies took the daemon past its 128 MiB budget (docs/performance.md).
        let mut rest = unhashed.into_iter();
        loop {
            let part: Vec<(usize, Expectation, Bytes)> =
                rest.by_ref().take(SMALL_COMMIT_MAX).collect();
            if part.is_empty() {
                break;
            }
            large.extend(self.put_small_part(part, block, &mut results).await);
        }
        // One by one, but many at a time.
        let one_by_one: Vec<(usize, Result<PutOutcome>)> = futures::stream::iter(large)
            .map(|(i, expect, data)| async move { (i, self.put_bytes(expect, data).await) })
            .buffer_unordered(PUT_MANY_CONCURRENCY)
            .collect()
            .await;
        for (i, outcome) in one_by_one {
            results[i] = Some(outcome);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StorageError::Aborted("not attempted".into()))))
            .collect()
    }

    /// Puts at most one commit's worth of blobs of at most one block each: hashed and checked
    /// (the backend may write them meanwhile, [`BlobBackend::stage_small`]), then committed in
    /// one durable write. Each blob's outcome goes into `results` at its index; returned are the
    /// blobs to put one by one instead, when the backend has no batched commit.
    async fn put_small_part(
        &self,
        unhashed: Vec<(usize, Expectation, Bytes)>,
        block: usize,
        results: &mut [Option<Result<PutOutcome>>],
    ) -> Vec<(usize, Expectation, Bytes)> {
        // The backend starts now, and learns at the commit which of the blobs hashed and checked.
        let staged = {
            let bytes: Vec<Bytes> = unhashed.iter().map(|(_, _, data)| data.clone()).collect();
            self.backend.stage_small(&bytes)
        };
        let mut small: Vec<(usize, Expectation, BlobMeta, Bytes)> =
            Vec::with_capacity(unhashed.len());
        // Each checked blob's position among those staged.
        let mut positions: Vec<usize> = Vec::with_capacity(unhashed.len());
        for (position, ((i, expect, data), meta)) in
            hash_small(unhashed, block).await.into_iter().enumerate()
        {
            match meta {
                Ok(meta) => {
                    small.push((i, expect, meta, data));
                    positions.push(position);
                }
                Err(err) => results[i] = Some(Err(err)),
            }
        }
        if small.is_empty() {
            if let Some(staged) = staged {
                // No blob of the staged part hashed and checked: the backend gives its space
                // back.
                if let Err(err) = self.backend.commit_small_staged(staged, Vec::new()).await {
                    tracing::warn!(error = %err, "a staged batch with nothing to commit was not cleaned up; the next open removes it");
                }
            }
            return Vec::new();
        }
        let digests: Vec<Digest> = small.iter().map(|(_, _, m, _)| m.sha256()).collect();
        let keep = self.retention.keep(&digests).await;
        let created = now_unix_ms();
        let committed = match staged {
            Some(staged) => {
                let blobs = small
                    .iter()
                    .zip(positions)
                    .map(|((_, _, meta, data), position)| {
                        (position, stamped(meta.clone(), created), data.clone())
                    })
                    .collect();
                Some(self.backend.commit_small_staged(staged, blobs).await)
            }
            None => {
                let batch: Vec<(BlobMeta, Bytes)> = small
                    .iter()
                    .map(|(_, _, meta, data)| (stamped(meta.clone(), created), data.clone()))
                    .collect();
                self.backend.commit_small(batch).await
            }
        };
        match committed {
            Some(Ok(outcomes)) => {
                for ((i, ..), (meta, already_present)) in small.iter().zip(outcomes) {
                    let outcome = PutOutcome {
                        meta,
                        already_present,
                    };
                    results[*i] = Some(self.acknowledge(&outcome).await.map(|()| outcome));
                }
            }
            Some(Err(err)) => {
                let message = err.to_string();
                let mut first = Some(err);
                for (i, ..) in &small {
                    results[*i] = Some(Err(first.take().unwrap_or_else(|| {
                        StorageError::Aborted(format!(
                            "the batch this blob was in could not be committed: {message}"
                        ))
                    })));
                }
            }
            None => {
                drop(keep);
                return small.into_iter().map(|(i, e, _, d)| (i, e, d)).collect();
            }
        }
        drop(keep);
        Vec::new()
    }

    /// The metadata of a blob, if it is in custody.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<BlobMeta>> {
        self.backend.lookup(digest).await
    }

    /// The digests among `digests` that are not in custody, in the order given.
    pub async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let present = self.present(digests).await?;
        Ok(digests
            .iter()
            .zip(present)
            .filter(|(_, present)| !present)
            .map(|(digest, _)| *digest)
            .collect())
    }

    /// Whether each of `digests` is in custody, in the order given. A long list is split into
    /// one part per core, looked up at the same time: each part is a batched read of its own on
    /// the blocking pool, so a `FindMissing` of 10,000 digests uses the machine rather than one
    /// core of it.
    pub async fn present(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        let parts = lookup_parts(digests.len());
        if parts <= 1 {
            return self.backend.present_many(digests).await;
        }
        let per_part = digests.len().div_ceil(parts);
        let answers = futures::future::try_join_all(
            digests
                .chunks(per_part)
                .map(|part| self.backend.present_many(part)),
        )
        .await?;
        Ok(answers.into_iter().flatten().collect())
    }

    /// Removes a blob (by either digest); returns whether it existed.
    pub async fn delete(&self, digest: &Digest) -> Result<bool> {
        match self.backend.lookup(digest).await? {
            Some(meta) => self.backend.delete(&meta.sha256()).await,
            None => Ok(false),
        }
    }

    /// Removes many blobs by their SHA-256 digests; returns whether each existed.
    pub async fn delete_many(&self, sha256s: &[Digest]) -> Result<Vec<bool>> {
        self.backend.delete_many(sha256s).await
    }

    /// How many uploads are in flight or left over from a crash.
    pub async fn pending_uploads(&self) -> Result<u64> {
        self.backend.pending_uploads().await
    }

    /// The state shared with other daemons, if the store's index is shared (see
    /// [`BlobBackend::shared_state`]).
    pub fn shared_state(&self) -> Option<Arc<dyn crate::SharedState>> {
        self.backend.shared_state()
    }

    /// The backend's native legal holds, if it has them (see [`BlobBackend::native_holds`]).
    pub fn native_holds(&self) -> Result<Arc<dyn NativeHolds>> {
        self.backend.native_holds()
    }

    /// Up to `limit` SHA-256 digests of committed blobs after `after`, in byte order.
    pub async fn list(&self, after: Option<Digest>, limit: usize) -> Result<Vec<Digest>> {
        self.backend.list(after, limit).await
    }

    /// The stored blocks of a blob exactly as they are, unverified: for copying a damaged blob
    /// aside before it is quarantined. Never serve these bytes.
    pub async fn raw_blocks(&self, meta: &BlobMeta) -> Result<BlockStream> {
        let end = BlobMeta::block_count_for(meta.size, meta.block_size);
        self.backend.read_blocks(meta, 0, end).await
    }

    /// Checks that the backend can be reached now (see [`BlobBackend::probe`]).
    pub async fn probe(&self) -> Result<()> {
        self.backend.probe().await
    }

    /// Takes a damaged blob out of custody (see [`BlobBackend::quarantine`]); returns whether
    /// there was anything to take.
    pub async fn quarantine(&self, sha256: &Digest) -> Result<bool> {
        self.backend.quarantine(sha256).await
    }

    /// Reads `range` of a blob. Each stored block is checked against its CRC32C before any of
    /// its bytes are yielded; a mismatch ends the stream with [`StorageError::Corrupt`].
    pub async fn get(&self, digest: &Digest, range: ByteRange) -> Result<BlobRead> {
        let meta = self
            .backend
            .lookup(digest)
            .await?
            .ok_or(StorageError::NotFound { digest: *digest })?;
        if range.offset > meta.size {
            return Err(StorageError::OutOfRange {
                digest: *digest,
                offset: range.offset,
                size: meta.size,
            });
        }
        let available = meta.size - range.offset;
        let len = range.limit.map_or(available, |limit| limit.min(available));
        if len == 0 {
            return Ok(BlobRead {
                meta,
                data: futures::stream::empty().boxed(),
            });
        }
        let block_size = u64::from(meta.block_size);
        let first = range.offset / block_size;
        let end = (range.offset + len).div_ceil(block_size);
        let blocks = self.backend.read_blocks(&meta, first, end).await?;
        let data = verify_blocks(meta.clone(), blocks, first, range.offset, len);
        Ok(BlobRead { meta, data })
    }
}

/// A blob hashed as its bytes arrived (in an upload session) and staged elsewhere, with the
/// CRC32C of each block computed in the same pass: what [`BlobStore::commit_staged`] needs to
/// commit it without hashing it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Staged {
    /// Both digests of the staged bytes.
    pub digests: BlobDigests,
    /// Their length.
    pub size: u64,
    /// The block size the CRCs were computed with.
    pub block_size: u32,
    /// CRC32C of each block, in order.
    pub block_crcs: Vec<u32>,
}

impl Staged {
    /// The metadata the blob is committed with (its creation time is stamped by the commit).
    fn into_meta(self) -> BlobMeta {
        BlobMeta {
            digests: self.digests,
            size: self.size,
            created_unix_ms: UNSTAMPED,
            block_size: self.block_size,
            block_crcs: self.block_crcs,
            packed: None,
        }
    }
}

impl BlobStore {
    /// A raw backend sink, for an upload engine that computes digests and CRCs itself and
    /// commits with [`BlobStore::commit_blocks`]; `expect` lets the backend write straight to
    /// the final location when the SHA-256 is known.
    pub async fn begin_blocks(&self, expect: &Expectation) -> Result<Box<dyn BlockSink>> {
        self.backend.begin(expect).await
    }

    /// Commits blocks an upload engine already wrote to `sink` (every block of `staged`, each
    /// with the CRC in `staged`), after checking `staged` against `expect`. A blob already in
    /// custody is acknowledged and the sink's blocks discarded.
    pub async fn commit_blocks(
        &self,
        sink: Box<dyn BlockSink>,
        staged: Staged,
        expect: &Expectation,
    ) -> Result<PutOutcome> {
        if let Err(err) = expect.check(&staged.digests, staged.size) {
            let _ = sink.abort().await;
            return Err(err);
        }
        let meta = staged.into_meta();
        self.commit_sink(sink, meta).await
    }

    /// Commits a sink under the retention gate's shared side and records the acknowledgement of
    /// a blob that was already there: the one way every put path ends.
    async fn commit_sink(&self, sink: Box<dyn BlockSink>, meta: BlobMeta) -> Result<PutOutcome> {
        let _keep = self.retention.keep(&[meta.sha256()]).await;
        let (meta, already_present) = sink.commit(stamped(meta, now_unix_ms())).await?;
        let outcome = PutOutcome {
            meta,
            already_present,
        };
        self.acknowledge(&outcome).await?;
        Ok(outcome)
    }

    /// Commits a staged blob: checks it against `expect`, then copies `blocks` (the staged bytes,
    /// one block per item) into custody, checking each block's length and CRC32C against the
    /// ones computed when its bytes were hashed, so bytes that changed on disk in between are
    /// refused ([`StorageError::Corrupt`]) rather than committed under a digest they no longer
    /// have. A blob already in custody is not copied again.
    pub async fn commit_staged<S>(
        &self,
        staged: Staged,
        expect: &Expectation,
        mut blocks: S,
    ) -> Result<PutOutcome>
    where
        S: futures::Stream<Item = Result<Bytes>> + Unpin + Send,
    {
        let meta = match self.staged_meta(staged, expect).await? {
            Ok(meta) => meta,
            Err(already) => return Ok(already),
        };
        let mut sink = self.begin_known(&meta).await?;
        let count = BlobMeta::block_count_for(meta.size, meta.block_size);
        for index in 0..count {
            let block = match blocks.next().await {
                Some(Ok(block)) => block,
                Some(Err(err)) => {
                    let _ = sink.abort().await;
                    return Err(err);
                }
                None => {
                    let _ = sink.abort().await;
                    return Err(StorageError::Corrupt {
                        digest: meta.sha256(),
                        detail: format!("the staged upload ends at block {index} of {count}"),
                    });
                }
            };
            if block.len() as u64 != meta.block_len(index)
                || crc32c::crc32c(&block) != meta.block_crcs[index as usize]
            {
                let _ = sink.abort().await;
                return Err(StorageError::Corrupt {
                    digest: meta.sha256(),
                    detail: format!(
                        "block {index} of the staged upload changed on disk after it was hashed"
                    ),
                });
            }
            if let Err(err) = sink.write_block(index, block).await {
                let _ = sink.abort().await;
                return Err(err);
            }
        }
        self.commit_sink(sink, meta).await
    }
    /// A backend sink for a blob whose digest and size are already known.
    async fn begin_known(&self, meta: &BlobMeta) -> Result<Box<dyn BlockSink>> {
        self.backend
            .begin(&Expectation {
                digest: Some(meta.sha256()),
                size: Some(meta.size),
            })
            .await
    }

    /// What every commit of a staged blob checks first: `expect`, and that the store's block
    /// size is the one the CRCs were computed over. The blob's metadata if it is new; the
    /// acknowledged outcome if it is already in custody.
    async fn staged_meta(
        &self,
        staged: Staged,
        expect: &Expectation,
    ) -> Result<std::result::Result<BlobMeta, PutOutcome>> {
        expect.check(&staged.digests, staged.size)?;
        if staged.block_size as usize != self.backend.block_size() {
            return Err(StorageError::Aborted(format!(
                "the upload was staged in blocks of {} bytes but the store now uses {}; start the upload again",
                staged.block_size,
                self.backend.block_size()
            )));
        }
        let _keep = self.retention.keep(&[staged.digests.sha256]).await;
        if let Some(existing) = self.backend.lookup(&staged.digests.sha256).await? {
            let outcome = PutOutcome {
                meta: existing,
                already_present: true,
            };
            self.acknowledge(&outcome).await?;
            return Ok(Err(outcome));
        }
        Ok(Ok(staged.into_meta()))
    }

    /// Commits a staged blob whose bytes are the file at `path` by moving the file into
    /// custody, when the backend keeps files ([`BlobBackend::adopts_files`]); `None`, leaving
    /// the file in place, when it cannot. Each block is first read back and checked against the
    /// CRC32C computed when it was hashed, exactly as [`BlobStore::commit_staged`] does, so
    /// bytes that changed on disk in between are refused. `written_here` skips that read: the
    /// caller wrote every byte of the file in this process from the very buffers it hashed
    /// (after a restart, it cannot know that).
    pub async fn commit_staged_file(
        &self,
        staged: Staged,
        expect: &Expectation,
        path: &std::path::Path,
        written_here: bool,
    ) -> Result<Option<PutOutcome>> {
        if !self.backend.adopts_files(path) {
            return Ok(None);
        }
        let meta = match self.staged_meta(staged, expect).await? {
            Ok(meta) => meta,
            Err(already) => return Ok(Some(already)),
        };
        if !written_here {
            let (checked, file) = (meta.clone(), path.to_path_buf());
            tokio::task::spawn_blocking(move || check_staged_file(&checked, &file))
                .await
                .map_err(|e| {
                    StorageError::Aborted(format!("the check of the staged file failed: {e}"))
                })??;
        }
        let mut sink = self.begin_known(&meta).await?;
        match sink.adopt_file(path, meta.size).await {
            Ok(true) => Ok(Some(self.commit_sink(sink, meta).await?)),
            Ok(false) => {
                sink.abort().await?;
                Ok(None)
            }
            Err(err) => {
                let _ = sink.abort().await;
                Err(err)
            }
        }
    }
}

/// Reads a staged file back and checks each block's length and CRC32C against `meta`.
fn check_staged_file(meta: &BlobMeta, path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::FileExt as _;
    let changed = |index: u64| StorageError::Corrupt {
        digest: meta.sha256(),
        detail: format!("block {index} of the staged upload changed on disk after it was hashed"),
    };
    let file = std::fs::File::open(path).map_err(|e| StorageError::Corrupt {
        digest: meta.sha256(),
        detail: format!("the staged upload {} cannot be read: {e}", path.display()),
    })?;
    let mut buf = vec![0u8; meta.block_size as usize];
    let count = BlobMeta::block_count_for(meta.size, meta.block_size);
    for index in 0..count {
        let block = &mut buf[..meta.block_len(index) as usize];
        file.read_exact_at(block, index * u64::from(meta.block_size))
            .map_err(|_| changed(index))?;
        if Some(&crc32c::crc32c(block)) != meta.block_crcs.get(index as usize) {
            return Err(changed(index));
        }
    }
    Ok(())
}

/// Checks each block against the stored CRC32C and trims the first and last to the range.
fn verify_blocks(
    meta: BlobMeta,
    blocks: BlockStream,
    first: u64,
    offset: u64,
    len: u64,
) -> BoxStream<'static, Result<Bytes>> {
    let block_size = u64::from(meta.block_size);
    let end_byte = offset + len;
    // The stream ends at the first error: nothing after a damaged block is ever yielded.
    blocks
        .enumerate()
        .scan(false, move |failed, (i, block)| {
            if *failed {
                return futures::future::ready(None);
            }
            let result = check_block(&meta, block, first + i as u64, offset, end_byte, block_size);
            *failed = result.is_err();
            futures::future::ready(Some(result))
        })
        .boxed()
}

/// Checks one block's length and CRC32C and trims it to the requested range.
fn check_block(
    meta: &BlobMeta,
    block: Result<Bytes>,
    index: u64,
    offset: u64,
    end_byte: u64,
    block_size: u64,
) -> Result<Bytes> {
    let block = block?;
    let corrupt = |detail: String| StorageError::Corrupt {
        digest: meta.sha256(),
        detail,
    };
    let Some(expected_crc) = meta.block_crcs.get(index as usize) else {
        return Err(corrupt(format!(
            "backend returned block {index} past the end"
        )));
    };
    if block.len() as u64 != meta.block_len(index) {
        return Err(corrupt(format!(
            "block {index} is {} bytes, expected {}",
            block.len(),
            meta.block_len(index)
        )));
    }
    let crc = crc32c::crc32c(&block);
    if crc != *expected_crc {
        return Err(corrupt(format!(
            "block {index} checksum is {crc:08x}, expected {expected_crc:08x}"
        )));
    }
    let start = index * block_size;
    let lo = offset.saturating_sub(start) as usize;
    let hi = (end_byte - start).min(block.len() as u64) as usize;
    Ok(block.slice(lo..hi))
}

/// One verified upload in progress: hashes every byte as it arrives, stores full blocks as they
/// fill, and commits only when the bytes match what the client declared.
///
/// Dropping a writer without committing discards the upload.
pub struct BlobWriter {
    store: BlobStore,
    expect: Expectation,
    received: u64,
    /// SHA-256 moves to a helper thread once the blob proves larger than one block, so that
    /// it runs beside BLAKE3, CRC32C and the storage writes.
    sha256: OffThreadHasher,
    blake3: StreamHasher,
    pending: BytesMut,
    block_size: usize,
    next_block: u64,
    crcs: Vec<u32>,
    sink: Option<Box<dyn BlockSink>>,
}

impl BlobWriter {
    /// Appends the next bytes of the blob.
    ///
    /// Fails at once, and discards the upload, if the bytes exceed the declared size.
    pub async fn write(&mut self, mut data: Bytes) -> Result<()> {
        if let Some(expected) = self.expect.size {
            let actual = self.received + data.len() as u64;
            if actual > expected {
                self.abort_quietly().await;
                return Err(StorageError::SizeMismatch { expected, actual });
            }
        }
        if self.received >= self.block_size as u64 {
            self.sha256.go_parallel();
        }
        self.received += data.len() as u64;
        self.sha256.update(&data).await;
        self.blake3.update(&data);
        // Whole blocks that arrive aligned are passed on without copying.
        while !data.is_empty() {
            if self.pending.is_empty() && data.len() >= self.block_size {
                let block = data.split_to(self.block_size);
                self.store_block(block).await?;
                continue;
            }
            let take = (self.block_size - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data.split_to(take));
            if self.pending.len() == self.block_size {
                let block = self.pending.split().freeze();
                self.store_block(block).await?;
            }
        }
        Ok(())
    }

    async fn store_block(&mut self, block: Bytes) -> Result<()> {
        self.crcs.push(crc32c::crc32c(&block));
        let index = self.next_block;
        self.next_block += 1;
        let sink = self.sink_mut()?;
        if let Err(err) = sink.write_block(index, block).await {
            self.abort_quietly().await;
            return Err(err);
        }
        Ok(())
    }

    fn sink_mut(&mut self) -> Result<&mut Box<dyn BlockSink>> {
        self.sink
            .as_mut()
            .ok_or_else(|| StorageError::Aborted("the upload was already aborted".into()))
    }

    async fn abort_quietly(&mut self) {
        if let Some(sink) = self.sink.take() {
            // The caller reports the original error; a failed cleanup is retried on next open.
            let _ = sink.abort().await;
        }
    }

    /// Replaces the expectation the bytes are verified against at commit: for uploads that
    /// learn their digest only at the end (an OCI chunked upload names it in its last request).
    pub fn set_expectation(&mut self, expect: Expectation) {
        self.expect = expect;
    }

    /// How many bytes were written so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Verifies the received bytes against the expectation and commits them.
    ///
    /// On any mismatch the upload is discarded and nothing becomes visible.
    pub async fn commit(mut self) -> Result<PutOutcome> {
        if !self.pending.is_empty() {
            let block = self.pending.split().freeze();
            self.store_block(block).await?;
        }
        let size = self.received;
        let blake3 = std::mem::replace(&mut self.blake3, StreamHasher::new(Algorithm::Blake3));
        let sha256 = std::mem::replace(
            &mut self.sha256,
            OffThreadHasher::new(StreamHasher::new(Algorithm::Sha256)),
        );
        let Some(sha256) = sha256.finalize().await else {
            self.abort_quietly().await;
            return Err(StorageError::Aborted(
                "the hashing thread stopped unexpectedly".into(),
            ));
        };
        let digests = BlobDigests {
            sha256,
            blake3: blake3.finalize(),
        };
        if let Err(err) = self.expect.check(&digests, size) {
            self.abort_quietly().await;
            return Err(err);
        }
        let meta = BlobMeta {
            digests,
            size,
            created_unix_ms: UNSTAMPED,
            block_size: self.block_size as u32,
            block_crcs: std::mem::take(&mut self.crcs),
            packed: None,
        };
        let sink = self
            .sink
            .take()
            .ok_or_else(|| StorageError::Aborted("the upload was already aborted".into()))?;
        self.store.clone().commit_sink(sink, meta).await
    }

    /// Discards the upload.
    pub async fn abort(mut self) -> Result<()> {
        match self.sink.take() {
            Some(sink) => sink.abort().await,
            None => Ok(()),
        }
    }

    /// Leaves the upload's partial data behind as a crash would; for crash-recovery tests.
    #[doc(hidden)]
    pub fn abandon_for_crash_test(mut self) {
        if let Some(sink) = self.sink.take() {
            sink.abandon_for_crash_test();
        }
    }
}

/// The fewest digests worth a lookup of their own on another core: below this, handing the
/// work to another thread costs about what it saves.
const LOOKUP_PART_MIN: usize = 2048;

/// Into how many parts a lookup of `count` digests is split: one per core, each of at least
/// [`LOOKUP_PART_MIN`] digests.
fn lookup_parts(count: usize) -> usize {
    core_parts(count, LOOKUP_PART_MIN)
}

/// Into how many parts work of size `amount` is split to use every core: at most one per core,
/// each of at least `min_part`, and always at least one.
fn core_parts(amount: usize, min_part: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (amount / min_part.max(1)).clamp(1, cores)
}

/// How many blobs `put_many` puts at once when it puts them one by one.
const PUT_MANY_CONCURRENCY: usize = 64;

/// The most small blobs `put_many` commits in one durable write. A 4 MiB `BatchPut` of 256-byte
/// blobs is 16,000 of them; committed at once, their write batch and bookkeeping took the
/// daemon's memory past its budget (a 138 MiB peak filling a store with a million of them; with
/// this limit, 108–113 MiB), for no gain in speed: one synced write per 1,024 blobs is already a
/// small share of their cost.
const SMALL_COMMIT_MAX: usize = 1024;

/// The fewest bytes of small blobs worth hashing on a core of their own.
const HASH_PART_MIN_BYTES: usize = 1 << 20;

/// Below this many bytes, small blobs are hashed where they arrived: a few dozen microseconds of
/// hashing cost less than the hop to the blocking pool and back.
const HASH_INLINE_MAX_BYTES: usize = 64 << 10;

/// Hashes and checks small blobs on the blocking pool, split into one part per core when there
/// are enough bytes: a 4 MiB `BatchPut` is about 5 ms of SHA-256 and BLAKE3, which would
/// otherwise hold an async worker (and every connection waiting on it) for that long. The answers
/// are in input order.
async fn hash_small(
    items: Vec<(usize, Expectation, Bytes)>,
    block_size: usize,
) -> Vec<((usize, Expectation, Bytes), Result<BlobMeta>)> {
    let bytes: usize = items.iter().map(|(_, _, data)| data.len()).sum();
    if bytes < HASH_INLINE_MAX_BYTES {
        return items
            .into_iter()
            .map(|(i, expect, data)| {
                let meta = small_meta(&expect, &data, block_size);
                ((i, expect, data), meta)
            })
            .collect();
    }
    let parts = core_parts(bytes, HASH_PART_MIN_BYTES);
    let per_part = items.len().div_ceil(parts);
    let tasks: Vec<_> = items
        .chunks(per_part)
        .map(|part| {
            // Bytes are reference-counted: the part shares the request's buffers.
            let part: Vec<(Expectation, Bytes)> =
                part.iter().map(|(_, e, d)| (*e, d.clone())).collect();
            tokio::task::spawn_blocking(move || {
                part.iter()
                    .map(|(expect, data)| small_meta(expect, data, block_size))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut metas = Vec::with_capacity(items.len());
    for (task, part) in tasks.into_iter().zip(items.chunks(per_part)) {
        match task.await {
            Ok(part) => metas.extend(part),
            Err(join) => metas.extend(part.iter().map(|_| {
                Err(StorageError::Aborted(format!(
                    "hashing the blob failed: {join}"
                )))
            })),
        }
    }
    items.into_iter().zip(metas).collect()
}

/// Hashes a blob of at most one block and checks it against what the client declared, as
/// [`BlobWriter::commit`] does for a streamed one.
fn small_meta(expect: &Expectation, data: &Bytes, block_size: usize) -> Result<BlobMeta> {
    let size = data.len() as u64;
    let digests = custodian_core::BlobDigests::of(data);
    expect.check(&digests, size)?;
    Ok(BlobMeta {
        digests,
        size,
        created_unix_ms: UNSTAMPED,
        block_size: block_size as u32,
        block_crcs: if data.is_empty() {
            Vec::new()
        } else {
            vec![crc32c::crc32c(data)]
        },
        packed: None,
    })
}

/// The creation time of metadata not committed yet: every commit stamps its own.
const UNSTAMPED: u64 = 0;

/// `meta` created at `created_ms`. A blob's creation time is taken when its commit holds the
/// retention gate's shared side, not when its bytes were hashed: a collection that recorded the
/// deletion of an earlier copy of the same digest and deleted it while this upload waited at the
/// gate must see this copy as newer than that deletion, or a restart that finishes recorded
/// deletions ([`BlobMeta::created_unix_ms`] against the entry) would remove an acknowledged blob.
fn stamped(mut meta: BlobMeta, created_ms: u64) -> BlobMeta {
    meta.created_unix_ms = created_ms;
    meta
}

/// Milliseconds since the Unix epoch, from the system clock.
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_core::BlobDigests;

    fn meta_for(blocks: &[&[u8]], block_size: u32) -> BlobMeta {
        let all: Vec<u8> = blocks.concat();
        BlobMeta {
            digests: BlobDigests::of(&all),
            size: all.len() as u64,
            created_unix_ms: 0,
            block_size,
            block_crcs: blocks.iter().map(|b| crc32c::crc32c(b)).collect(),
            packed: None,
        }
    }

    fn stream_of(blocks: Vec<Result<Bytes>>) -> BlockStream {
        futures::stream::iter(blocks).boxed()
    }

    #[tokio::test]
    async fn a_damaged_block_ends_the_stream() {
        let meta = meta_for(&[b"aaaa", b"bbbb", b"cc"], 4);
        let blocks = stream_of(vec![
            Ok(Bytes::from_static(b"aaaa")),
            Ok(Bytes::from_static(b"bXbb")),
            Ok(Bytes::from_static(b"cc")),
        ]);
        let items: Vec<_> = verify_blocks(meta.clone(), blocks, 0, 0, 10)
            .collect()
            .await;
        assert_eq!(items.len(), 2, "nothing after the damaged block");
        assert_eq!(items[0].as_ref().unwrap(), &Bytes::from_static(b"aaaa"));
        assert!(
            matches!(&items[1], Err(StorageError::Corrupt { detail, .. }) if detail.contains("block 1 checksum"))
        );
    }

    #[tokio::test]
    async fn wrong_length_and_extra_blocks_are_corruption() {
        let meta = meta_for(&[b"aaaa", b"cc"], 4);
        let short = stream_of(vec![Ok(Bytes::from_static(b"aaa"))]);
        let items: Vec<_> = verify_blocks(meta.clone(), short, 0, 0, 6).collect().await;
        assert!(
            matches!(&items[0], Err(StorageError::Corrupt { detail, .. }) if detail.contains("3 bytes, expected 4"))
        );
        let extra = stream_of(vec![
            Ok(Bytes::from_static(b"aaaa")),
            Ok(Bytes::from_static(b"cc")),
            Ok(Bytes::from_static(b"zz")),
        ]);
        let items: Vec<_> = verify_blocks(meta, extra, 0, 0, 6).collect().await;
        assert!(
            matches!(&items[2], Err(StorageError::Corrupt { detail, .. }) if detail.contains("past the end"))
        );
    }

    #[tokio::test]
    async fn backend_errors_pass_through_and_end_the_stream() {
        let meta = meta_for(&[b"aaaa", b"bbbb"], 4);
        let blocks = stream_of(vec![
            Err(StorageError::backend("test", "disk on fire")),
            Ok(Bytes::from_static(b"bbbb")),
        ]);
        let items: Vec<_> = verify_blocks(meta, blocks, 0, 0, 8).collect().await;
        assert_eq!(items.len(), 1);
        assert!(matches!(&items[0], Err(StorageError::Backend { .. })));
    }
}
