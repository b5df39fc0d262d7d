//! Large uploads into a `file://` store, written by this crate rather than through
//! `object_store`'s local multipart upload.
//!
//! That upload wrote every part into the page cache and synced once at the end: a profile of the
//! daemon during a 1 GiB put on this project's 2-core VM put 70% of its CPU in the kernel copying
//! into fresh page-cache pages, and the put took 12 s against 1.1 s for the disk's own write and
//! fsync. Written here, each block's writeback starts at once and the file is synced and its pages
//! dropped every 8 MiB ([`WriteBehind`], as for the RocksDB backend's extent files), so the page
//! cache stays small and its pages are reused.
//!
//! The object's bytes go to `<key>#<upload id>` beside their final place: a crash leaves only
//! such a file, which the next open removes with `object_store`'s own leftovers; the commit
//! syncs it and renames it into place, then fsyncs the directory, before the index names it.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use custodian_storage::{BlobMeta, BlockSink, Result, StorageError, WriteBehind};
use object_store::path::Path;

use crate::Shared;

/// One upload into a `file://` store; see the module's documentation.
pub(crate) struct LocalSink {
    shared: Arc<Shared>,
    id: u64,
    /// The store's root directory.
    root: PathBuf,
    /// Where the bytes are written until the commit.
    partial: PathBuf,
    /// Whether the pending record already names the final key (the SHA-256 was declared).
    direct: bool,
    /// The open partial file; `None` once committed or aborted (or while a write holds it).
    file: Option<std::fs::File>,
    written: u64,
    behind: WriteBehind,
}

impl LocalSink {
    /// Starts upload `id` (its pending record already written, naming `key`, the final key when
    /// `direct`) under `root`, on the blocking pool.
    pub(crate) async fn create(
        shared: Arc<Shared>,
        id: u64,
        root: PathBuf,
        key: Path,
        direct: bool,
    ) -> Result<Self> {
        let name = shared.name;
        tokio::task::spawn_blocking(move || Self::create_now(shared, id, root, &key, direct))
            .await
            .map_err(|e| StorageError::backend(name, format!("upload task failed: {e}")))?
    }

    fn create_now(
        shared: Arc<Shared>,
        id: u64,
        root: PathBuf,
        key: &Path,
        direct: bool,
    ) -> Result<Self> {
        let partial = root.join(format!("{}#{id:016x}", key.as_ref()));
        let failed = |e: std::io::Error| shared.err(format!("create {}: {e}", partial.display()));
        if let Some(dir) = partial.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let file = std::fs::File::create(&partial).map_err(failed)?;
        Ok(LocalSink {
            shared,
            id,
            root,
            partial,
            direct,
            file: Some(file),
            written: 0,
            behind: WriteBehind::default(),
        })
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> StorageError {
        self.shared.write_failed(
            self.shared
                .err(format!("{what} {}: {e}", self.partial.display())),
        )
    }

    /// Removes the partial file and the upload's pending record.
    async fn discard(&mut self) -> Result<()> {
        self.file = None;
        let partial = self.partial.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(partial)).await;
        self.shared.discard(self.id, None, None).await
    }
}

impl Drop for LocalSink {
    fn drop(&mut self) {
        // An upload dropped before its commit or abort (the client went away): clean up, which
        // needs the async runtime; without one it is left to the next open.
        if self.file.is_none() {
            return;
        }
        self.file = None;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (shared, id, partial) = (self.shared.clone(), self.id, self.partial.clone());
            handle.spawn(async move {
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(partial)).await;
                if let Err(err) = shared.discard(id, None, None).await {
                    tracing::warn!(id, %err, "could not discard an abandoned upload; it is removed at the next start");
                }
            });
        }
    }
}

#[async_trait]
impl BlockSink for LocalSink {
    async fn write_block(&mut self, _index: u64, block: Bytes) -> Result<()> {
        let Some(mut file) = self.file.take() else {
            return Err(StorageError::Aborted("upload already finished".into()));
        };
        let (start, mut behind) = (self.written, self.behind);
        let end = start + block.len() as u64;
        let (file, written) = tokio::task::spawn_blocking(move || {
            let written = std::io::Write::write_all(&mut file, &block)
                .and_then(|()| behind.wrote(&file, start, end));
            (file, written.map(|()| behind))
        })
        .await
        .map_err(|e| self.failed("write", e))?;
        self.file = Some(file);
        self.behind = written.map_err(|e| self.failed("write", e))?;
        self.written = end;
        Ok(())
    }

    async fn adopt_file(&mut self, path: &std::path::Path, size: u64) -> Result<bool> {
        if self.written > 0 || self.file.is_none() {
            return Ok(false);
        }
        let (staged, partial) = (path.to_path_buf(), self.partial.clone());
        let adopted =
            tokio::task::spawn_blocking(move || -> std::io::Result<Option<std::fs::File>> {
                let file = std::fs::OpenOptions::new().write(true).open(&staged)?;
                // Bytes past the committed length (a piece cut off before it was acknowledged) are
                // not the blob's.
                if file.metadata()?.len() != size {
                    file.set_len(size)?;
                }
                // The staged file replaces this upload's empty partial file; the commit syncs it
                // before moving it to its final name, as for blocks written here.
                match std::fs::rename(&staged, &partial) {
                    Ok(()) => Ok(Some(file)),
                    Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|e| self.failed("adopt the staged file as", e))?
            .map_err(|e| self.failed("adopt the staged file as", e))?;
        let Some(file) = adopted else {
            return Ok(false);
        };
        self.file = Some(file);
        self.written = size;
        Ok(true)
    }

    async fn commit(mut self: Box<Self>, meta: BlobMeta) -> Result<(BlobMeta, bool)> {
        let Some(file) = self.file.take() else {
            return Err(StorageError::Aborted("upload already finished".into()));
        };
        let final_key = self.shared.final_key(&meta.sha256());
        if !self.direct {
            // The record named the staging key; from the rename on, the object is at its final
            // key, which a crash before the index commit must not leave behind.
            let record = crate::PendingRecord {
                direct: Some(meta.sha256()),
                key: final_key.clone(),
                packed_range: None,
            };
            if let Err(err) = self.shared.begin_pending(vec![(self.id, record)]).await {
                let _ = self.discard().await;
                return Err(err);
            }
        }
        let destination = self.root.join(final_key.as_ref());
        let partial = self.partial.clone();
        let placed = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            file.sync_all()?;
            let dir = destination
                .parent()
                .ok_or_else(|| std::io::Error::other("a blob's path has no directory"))?;
            std::fs::create_dir_all(dir)?;
            std::fs::rename(&partial, &destination)?;
            // The rename is durable once its directory is.
            std::fs::File::open(dir)?.sync_all()
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|placed| placed);
        if let Err(e) = placed {
            let err = self.failed("move into place", e);
            let _ = self.discard().await;
            return Err(err);
        }
        self.shared.commit_one(self.id, meta).await
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.discard().await
    }

    fn abandon_for_crash_test(mut self: Box<Self>) {
        // As a crash would: the partial file and the pending record stay behind.
        self.file = None;
    }
}
