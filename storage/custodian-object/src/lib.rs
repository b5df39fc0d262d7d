//! Custodian blob custody on any `object_store` backend: `file://`, `memory://`, `s3://`, and
//! `gs://` / `az://` behind the `gcp` / `azure` features.
//!
//! Objects are keyed by digest, `<prefix>/blobs/sha256/ab/cd/<hex>`, and hold the blob's bytes
//! as they are. The metadata index (sizes, both digests, block checksums, pending uploads) stays
//! in a local RocksDB ([`custodian_rocksdb::RocksIndex`]), so a blob is visible exactly when its
//! index entry is committed, whatever the object store's own consistency.
//!
//! Write path of one upload:
//! 1. A pending record naming the upload's object key is written to the index and synced.
//! 2. Bytes go up as a multipart upload. When the client declared a SHA-256, straight to the
//!    final key; otherwise to `<prefix>/staging/<upload id>`.
//! 3. Only if the digest matched is the multipart upload completed (otherwise it is aborted, so
//!    no object ever appears); a staged object is then renamed to its final key.
//! 4. One synced index batch adds the metadata and removes the pending record.
//!
//! `BatchPut`'s small blobs take a batched form of the same path (`commit_small`): one synced
//! batch of pending records, the objects written straight to their final keys, one synced index
//! batch for all.
//!
//! On `file://` the local store is opened with fsync enabled, so step 3 is durable before
//! step 4 runs. After a crash, [`ObjectBackend::open`] removes the objects that pending records
//! name (unless a committed blob owns the key). An S3 multipart upload that a crash interrupts
//! is invisible but may hold storage until the bucket's `AbortIncompleteMultipartUpload`
//! lifecycle rule removes it.

pub mod s3lock;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use custodian_core::{Algorithm, Digest};
use custodian_rocksdb::RocksIndex;
use custodian_rocksdb::WriteBatch;
use custodian_storage::{
    BlobBackend, BlobMeta, BlockSink, BlockStream, DEFAULT_BLOCK_SIZE, Expectation, Result,
    StorageError,
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
        }
    }
}

/// How many multipart parts may be in flight per upload.
const PART_CONCURRENCY: usize = 2;
/// How many blocks one ranged read fetches.
const READ_WINDOW_BLOCKS: u64 = 4;
/// Small objects written at once by a batched commit.
const SMALL_WRITE_CONCURRENCY: usize = 32;

/// Blob custody in an object store, indexed in local RocksDB.
pub struct ObjectBackend {
    shared: Arc<Shared>,
    block_size: usize,
    part_size: usize,
    /// The store's URL and options, for the S3 Object Lock requests `object_store` cannot send.
    url: String,
    options: Vec<(String, String)>,
}

/// What the backend and each of its uploads share.
struct Shared {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    index: RocksIndex,
    name: &'static str,
    /// Whether a failed object write poisons the backend (local files; see `write_failed`).
    poison_on_write_failure: bool,
}

impl Shared {
    /// A failed object write. On `file://` it poisons the backend: the local store fsyncs
    /// inside its own calls, so a failed write cannot be told from a failed fsync, after which
    /// the page cache may no longer say what reached the disk. A remote store's failed PUT
    /// leaves no object and is reported as it is.
    fn write_failed(&self, err: StorageError) -> StorageError {
        if self.poison_on_write_failure {
            self.index.poison(err)
        } else {
            err
        }
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

    fn staging_key(&self, id: u64) -> Path {
        self.prefix
            .clone()
            .join("staging")
            .join(format!("{id:016x}"))
    }

    fn err(&self, message: impl std::fmt::Display) -> StorageError {
        StorageError::backend(self.name, message)
    }

    /// Runs blocking index work off the async worker threads.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&RocksIndex) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || f(&shared.index))
            .await
            .map_err(|e| self.err(format!("index task failed: {e}")))?
    }

    /// Ends an upload that will not commit: aborts its multipart upload (so no object
    /// appears), deletes its staged object if any, and removes its pending record.
    async fn discard(
        &self,
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
        let mut batch = WriteBatch::default();
        self.index.add_pending_removal(&mut batch, id)?;
        // Not synced: a lost removal only means the next open repeats this cleanup.
        self.index.db().write(batch).map_err(|e| self.err(e))
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

/// Builds the object store for a URL and returns it with the key prefix the URL names and the
/// backend's name; cloud credentials come from the standard environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, ...), overridden by `options`.
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
            let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
                .map_err(|e| err("file", &e))?
                .with_fsync(true)
                .with_automatic_cleanup(true);
            Ok((Arc::new(store), Path::default(), "file"))
        }
        "memory" => Ok((
            Arc::new(object_store::memory::InMemory::new()),
            prefix,
            "memory",
        )),
        "s3" | "s3a" => {
            let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url);
            for (key, value) in options {
                let key = key.parse().map_err(|e| err("s3", &e))?;
                builder = builder.with_config(key, value);
            }
            let store = builder.build().map_err(|e| err("s3", &e))?;
            Ok((Arc::new(store), prefix, "s3"))
        }
        #[cfg(feature = "gcp")]
        "gs" => {
            let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .build()
                .map_err(|e| err("gcs", &e))?;
            Ok((Arc::new(store), prefix, "gcs"))
        }
        #[cfg(feature = "azure")]
        "az" | "azure" | "abfs" | "abfss" => {
            let store = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .build()
                .map_err(|e| err("azure", &e))?;
            Ok((Arc::new(store), prefix, "azure"))
        }
        other => Err(err(
            "object",
            &format!(
                "unsupported scheme {other:?}; supported: file, memory, s3{}{}",
                if cfg!(feature = "gcp") { ", gs" } else { "" },
                if cfg!(feature = "azure") { ", az" } else { "" }
            ),
        )),
    }
}

impl ObjectBackend {
    /// Opens the backend and removes whatever uploads a crash left behind.
    pub async fn open(config: ObjectConfig) -> Result<Self> {
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
        std::fs::create_dir_all(&config.index_dir).map_err(|e| {
            StorageError::backend(name, format!("create {}: {e}", config.index_dir.display()))
        })?;
        let index = RocksIndex::open(&config.index_dir, name, Vec::new())?;
        let backend = ObjectBackend {
            shared: Arc::new(Shared {
                store,
                prefix,
                index,
                name,
                poison_on_write_failure: name == "file",
            }),
            block_size: config.block_size,
            part_size: config.part_size,
            url: config.url.clone(),
            options: config.options.clone(),
        };
        backend.recover(&config.url).await?;
        Ok(backend)
    }

    /// Deletes the objects of uploads that have a pending record, and on `file://` the partial
    /// files the local store stages uploads in.
    async fn recover(&self, url: &str) -> Result<()> {
        let shared = &self.shared;
        let leftovers = shared.index.pending()?;
        for (id, record) in &leftovers {
            let record = PendingRecord::decode(record)
                .ok_or_else(|| shared.err(format!("pending upload {id} has a malformed record")))?;
            let owned = match record.direct {
                Some(sha256) => shared.index.lookup(&sha256)?.is_some(),
                None => false,
            };
            if !owned {
                delete_if_present(&*shared.store, &record.key, shared.name).await?;
            }
            let mut batch = WriteBatch::default();
            shared.index.add_pending_removal(&mut batch, *id)?;
            shared.index.write_synced(batch)?;
        }
        if let Some(root) = url.strip_prefix("file://") {
            remove_local_partials(FsPath::new(root))
                .map_err(|e| shared.err(format!("clean partial uploads under {root}: {e}")))?;
        }
        if !leftovers.is_empty() {
            tracing::info!(
                count = leftovers.len(),
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
/// to its final key (such a key may belong to a committed blob and must then be kept).
struct PendingRecord {
    direct: Option<Digest>,
    key: Path,
}

impl PendingRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match &self.direct {
            Some(d) => {
                out.push(1);
                out.extend_from_slice(d.bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(self.key.as_ref().as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&tag, rest) = bytes.split_first()?;
        let (direct, key) = match tag {
            0 => (None, rest),
            1 if rest.len() >= 32 => {
                let (d, key) = rest.split_at(32);
                (Some(Digest::sha256(d.try_into().ok()?)), key)
            }
            _ => return None,
        };
        Some(PendingRecord {
            direct,
            key: Path::from(std::str::from_utf8(key).ok()?),
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
        let placed = match upload.finish().await {
            Err(e) => Err(self.err("complete upload of", e)),
            Ok(_) if self.direct => Ok(()),
            Ok(_) => {
                let final_key = self.shared.final_key(&meta.sha256());
                self.shared
                    .store
                    .rename(&self.key, &final_key)
                    .await
                    .map_err(|e| self.err("move into place", e))
            }
        };
        if let Err(err) = placed {
            let _ = self.shared.discard(self.id, self.staged(), None).await;
            return Err(self.shared.write_failed(err));
        }
        let id = self.id;
        self.shared
            .blocking(move |index| {
                let _guard = index.lock_commits(&meta.sha256());
                let mut batch = WriteBatch::default();
                index.add_pending_removal(&mut batch, id)?;
                if let Some(existing) = index.lookup(&meta.sha256())? {
                    // The object was overwritten with identical bytes; only the record goes.
                    index.write_synced(batch)?;
                    return Ok((existing.meta, true));
                }
                index.add_commit(&mut batch, &[], &meta)?;
                index.write_synced(batch)?;
                Ok((meta, false))
            })
            .await
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
    /// The batched write path for small blobs whose digests are known: one synced batch of
    /// pending records, the objects written straight to their final keys (many at a time; on
    /// `file://` each is fsynced), then one synced index batch committing them all. Crash
    /// recovery is the single-upload path's: pending records name the objects to remove.
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
        let mut todo: Vec<(u64, Path, BlobMeta, Bytes)> = Vec::new();
        for (i, ((meta, data), existing)) in blobs.iter().zip(&known).enumerate() {
            if existing.is_none() && !first_of.contains_key(&digests[i]) {
                first_of.insert(digests[i], i);
                let id = shared.index.new_upload_id();
                todo.push((
                    id,
                    shared.final_key(&digests[i]),
                    meta.clone(),
                    data.clone(),
                ));
            }
        }
        if !todo.is_empty() {
            let records: Vec<(u64, Vec<u8>)> = todo
                .iter()
                .map(|(id, key, meta, _)| {
                    let record = PendingRecord {
                        direct: Some(meta.sha256()),
                        key: key.clone(),
                    };
                    (*id, record.encode())
                })
                .collect();
            shared
                .blocking(move |index| index.add_pending_many(&records))
                .await?;
            let writes: Vec<(Path, Bytes)> = todo
                .iter()
                .map(|(_, key, _, data)| (key.clone(), data.clone()))
                .collect();
            let store = shared.store.clone();
            let name = shared.name;
            let written: Vec<Result<()>> =
                futures::stream::iter(writes)
                    .map(move |(key, data)| {
                        let store = store.clone();
                        async move {
                            store.put(&key, data.into()).await.map(|_| ()).map_err(|e| {
                                StorageError::backend(name, format!("write {key}: {e}"))
                            })
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
                .iter()
                .map(|(id, _, meta, _)| (*id, meta.clone()))
                .collect();
            let locked = digests.clone();
            let committed = shared
                .blocking(move |index| {
                    let _guards = index.lock_commits_many(&locked);
                    let mut batch = WriteBatch::default();
                    let mut out = std::collections::HashMap::new();
                    for (id, meta) in commits {
                        index.add_pending_removal(&mut batch, id)?;
                        match index.lookup(&meta.sha256())? {
                            // Committed by another upload meanwhile: its record stands.
                            Some(existing) => {
                                out.insert(meta.sha256(), (existing.meta, true));
                            }
                            None => {
                                index.add_commit(&mut batch, &[], &meta)?;
                                out.insert(meta.sha256(), (meta, false));
                            }
                        }
                    }
                    index.write_synced(batch)?;
                    Ok(out)
                })
                .await?;
            let mut out = Vec::with_capacity(blobs.len());
            for (i, existing) in known.into_iter().enumerate() {
                out.push(match existing {
                    Some(meta) => (meta, true),
                    None if first_of.get(&digests[i]) == Some(&i) => committed
                        .get(&digests[i])
                        .cloned()
                        .ok_or_else(|| shared.err(format!("{} was not committed", digests[i])))?,
                    None => {
                        let (meta, _) = committed.get(&digests[i]).cloned().ok_or_else(|| {
                            shared.err(format!("{} was not committed", digests[i]))
                        })?;
                        (meta, true)
                    }
                });
            }
            return Ok(out);
        }
        Ok(known
            .into_iter()
            .zip(blobs)
            .map(|(existing, (meta, _))| match existing {
                Some(existing) => (existing, true),
                None => (meta, true),
            })
            .collect())
    }
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
        Ok(self.shared.index.lookup(digest)?.map(|entry| entry.meta))
    }

    async fn lookup_many(&self, digests: &[Digest]) -> Result<Vec<Option<BlobMeta>>> {
        let digests = digests.to_vec();
        self.shared
            .blocking(move |index| index.lookup_many(&digests))
            .await
    }

    async fn commit_small(
        &self,
        blobs: Vec<(BlobMeta, Bytes)>,
    ) -> Option<Result<Vec<(BlobMeta, bool)>>> {
        Some(self.commit_small_now(blobs).await)
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
        }
        .encode();
        shared
            .blocking(move |index| index.add_pending(id, &record))
            .await?;
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
            upload: Some(WriteMultipart::new_with_chunk_size(upload, self.part_size)),
        }))
    }

    async fn read_blocks(&self, meta: &BlobMeta, first: u64, end: u64) -> Result<BlockStream> {
        let shared = self.shared.clone();
        let meta = meta.clone();
        let key = shared.final_key(&meta.sha256());
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
                async move { read_window(&shared, &key, &meta, w_first, w_end).await }
            })
            .buffered(2)
            .map_ok(|blocks| futures::stream::iter(blocks.into_iter().map(Ok)))
            .try_flatten();
        Ok(stream.boxed())
    }

    async fn delete(&self, sha256: &Digest) -> Result<bool> {
        let digest = *sha256;
        let existed = self
            .shared
            .blocking(move |index| {
                let _guard = index.lock_commits(&digest);
                let Some(entry) = index.lookup(&digest)? else {
                    return Ok(false);
                };
                // The index entry goes first: the blob is invisible from here on, and an object
                // left by a crash before the object delete is harmless (a later put overwrites it).
                let mut batch = WriteBatch::default();
                index.add_delete(&mut batch, &entry.meta)?;
                index.write_synced(batch)?;
                Ok(true)
            })
            .await?;
        if existed {
            let key = self.shared.final_key(sha256);
            delete_if_present(&*self.shared.store, &key, self.shared.name).await?;
        }
        Ok(existed)
    }

    async fn pending_uploads(&self) -> Result<u64> {
        Ok(self.shared.index.pending()?.len() as u64)
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

/// Reads blocks `first..end` of a blob with one ranged request and slices them apart.
async fn read_window(
    shared: &Shared,
    key: &Path,
    meta: &BlobMeta,
    first: u64,
    end: u64,
) -> Result<Vec<Bytes>> {
    let block_size = u64::from(meta.block_size);
    let start = first * block_size;
    let stop = (end * block_size).min(meta.size);
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
