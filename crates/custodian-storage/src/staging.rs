//! Where resumable upload sessions keep their state and bytes until they finish: a directory of
//! one daemon ([`LocalStaging`]), or a database every daemon sharing the store reaches (the
//! PostgreSQL index implements [`Staging`]), so that any daemon takes any piece of any session.
//!
//! The engine ([`crate::uploads::UploadSessions`]) decides what is acknowledged; a staging area
//! only has to make a checkpoint atomic: after [`StagedWriter::checkpoint`] returns, a reader
//! sees exactly the bytes and state it recorded, and after a crash before it, exactly those of
//! the checkpoint before. A shared area also fences writers: a checkpoint whose session moved
//! on meanwhile (another daemon committed a piece first) is refused, and its bytes never count.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use crate::StorageError;
use crate::uploads::{SessionState, UploadError, UploadResult};

/// One session as a listing shows it.
#[derive(Clone, Debug)]
pub struct StagedSession {
    /// The session id.
    pub id: String,
    /// Its state; `None` when it cannot be read (a session that crashed while starting).
    pub state: Option<SessionState>,
    /// How long since the session's storage last changed, when the state says nothing.
    pub idle: Option<Duration>,
}

/// A staging area for upload sessions.
#[async_trait]
pub trait Staging: Send + Sync + 'static {
    /// What it is, for logs: a directory, or a database.
    fn describe(&self) -> String;

    /// Whether several daemons use it at once.
    fn shared(&self) -> bool;

    /// Creates session `id` with `state` and no bytes.
    async fn create(&self, id: &str, state: &SessionState) -> UploadResult<()>;

    /// The state of session `id`, if it exists.
    async fn load(&self, id: &str) -> UploadResult<Option<SessionState>>;

    /// A writer that appends to session `id` after `state.committed` bytes; anything stored
    /// past them (never acknowledged) is discarded first.
    async fn writer(&self, id: &str, state: &SessionState) -> UploadResult<Box<dyn StagedWriter>>;

    /// The file holding session `id`'s bytes, for a staging area that keeps them in one local
    /// file (so a store that keeps files may take it over instead of copying it); `None` for a
    /// database.
    fn local_file(&self, _id: &str) -> Option<PathBuf> {
        None
    }

    /// `len` committed bytes of session `id` from `from`.
    async fn read(&self, id: &str, from: u64, len: u64) -> UploadResult<Vec<u8>>;

    /// The CRC32C of each of the first `count` complete blocks of session `id`.
    async fn crcs(&self, id: &str, count: u64) -> UploadResult<Vec<u32>>;

    /// The first `size` committed bytes of session `id`, one `block`-sized item at a time.
    async fn blocks(
        &self,
        id: &str,
        size: u64,
        block: u64,
    ) -> UploadResult<BoxStream<'static, crate::Result<Bytes>>>;

    /// Removes session `id` and its bytes.
    async fn remove(&self, id: &str) -> UploadResult<()>;

    /// Every session. Blocks (for sweeps and operators, on a blocking thread).
    fn list_blocking(&self) -> Vec<StagedSession>;

    /// Removes session `id` and its bytes; true if it existed. Blocks.
    fn remove_blocking(&self, id: &str) -> bool;
}

/// Appends the bytes of one piece.
#[async_trait]
pub trait StagedWriter: Send {
    /// Appends `pieces`, in order (not durable yet). They are the bytes as the connection
    /// received them, not gathered into one buffer.
    async fn write(&mut self, pieces: Vec<Bytes>) -> UploadResult<()>;

    /// Appends the CRCs of the blocks the bytes written so far complete.
    async fn write_crcs(&mut self, crcs: &[u32]) -> UploadResult<()>;

    /// Makes everything written durable and records `state`, whose `committed` covers it and
    /// replaces `previous`. A shared area refuses with [`UploadError::OffsetMismatch`] when the
    /// session's committed length is no longer `previous`.
    async fn checkpoint(&mut self, state: &SessionState, previous: u64) -> UploadResult<()>;

    /// Starts [`StagedWriter::checkpoint`] for everything written so far and hands back what
    /// is left of it as a future that owns what it needs, so that later bytes may be written, and
    /// the connection read, while it syncs. The state it records is durable only once that future
    /// has completed: the caller awaits it before the next checkpoint and before acknowledging
    /// anything. By default the checkpoint is made here and the future is ready.
    async fn start_checkpoint(
        &mut self,
        state: &SessionState,
        previous: u64,
    ) -> UploadResult<Syncing> {
        self.checkpoint(state, previous).await?;
        Ok(Box::pin(std::future::ready(Ok(()))))
    }
}

/// The rest of a checkpoint started by [`StagedWriter::start_checkpoint`].
pub type Syncing = std::pin::Pin<Box<dyn std::future::Future<Output = UploadResult<()>> + Send>>;

fn io(path: &Path, source: std::io::Error) -> UploadError {
    UploadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Sessions as directories `DIR/<id>/` of one daemon: `data` (the bytes), `crcs` (four bytes
/// per complete block) and `state.json` (replaced atomically at each checkpoint).
#[derive(Debug)]
pub struct LocalStaging {
    dir: PathBuf,
}

impl LocalStaging {
    /// The sessions under `dir`, created if missing.
    pub fn open(dir: &Path) -> UploadResult<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        Ok(LocalStaging {
            dir: dir.to_path_buf(),
        })
    }

    /// Replaces `state.json` with `state` atomically and durably.
    async fn write_state(dir: &Path, state: &SessionState) -> UploadResult<()> {
        let (dir, state) = (dir.to_path_buf(), state.clone());
        let path = dir.join("state.json");
        tokio::task::spawn_blocking(move || {
            stage_state(&dir, &state)?;
            publish_state(&dir, Naming::Durable)
        })
        .await
        .map_err(|e| io(&path, std::io::Error::other(e.to_string())))?
    }
}

/// Writes `state` to the session directory's `state.json.tmp` and syncs it, ready for
/// [`publish_state`]. Blocks.
fn stage_state(dir: &Path, state: &SessionState) -> UploadResult<()> {
    let tmp = dir.join("state.json.tmp");
    let mut out = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    std::io::Write::write_all(&mut out, &state.to_json()).map_err(|e| io(&tmp, e))?;
    out.sync_all().map_err(|e| io(&tmp, e))
}

/// Renames the staged `state.json.tmp` over `state.json`, then, for [`Naming::Durable`], syncs
/// the directory so that the new name survives a power loss too. Blocks.
fn publish_state(dir: &Path, naming: Naming) -> UploadResult<()> {
    let path = dir.join("state.json");
    std::fs::rename(dir.join("state.json.tmp"), &path).map_err(|e| io(&path, e))?;
    if naming == Naming::Durable {
        let d = std::fs::File::open(dir).map_err(|e| io(dir, e))?;
        d.sync_all().map_err(|e| io(dir, e))?;
    }
    Ok(())
}

/// Whether a checkpoint's new `state.json` must survive a power loss when it completes, or only
/// the daemon's own crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Naming {
    /// The directory is synced after the rename: the checkpoint acknowledges a piece.
    Durable,
    /// The rename alone, for a checkpoint in the middle of a piece. The kernel keeps it through
    /// a `kill -9`; a power loss may bring back the state before it, which is an earlier
    /// checkpoint whose bytes are as durable (bytes past it are cut away before the next piece),
    /// and the piece's closing checkpoint syncs the directory before anything is acknowledged.
    /// Leaving out that sync shortens every checkpoint but a piece's last, and the receiving
    /// loop waits for each checkpoint before it starts the next.
    Pending,
}

/// The appending side of a [`LocalStaging`] session.
struct LocalWriter {
    dir: PathBuf,
    /// The bytes file, written from the blocking pool straight from the caller's buffer
    /// (`tokio::fs` would first copy every byte into a buffer of its own). `None` only while a
    /// write or sync has it, or after one could not give it back.
    data: Option<std::fs::File>,
    crcs: tokio::fs::File,
}

/// Drops the cached pages of bytes `from..to` of `file` once they are durable, so that the next
/// bytes written reuse those pages; on pages not yet written back it starts their writeback
/// instead (`POSIX_FADV_DONTNEED` does both), without waiting for it. Bytes staged for custody
/// are not read again soon, and a page cache that grows by every byte written makes each write
/// pay for a fresh page: on the virtual machine measured in docs/performance.md that doubled
/// the cost of a large upload.
pub fn drop_cached(file: &std::fs::File, from: u64, to: u64) {
    if let Some(len) = std::num::NonZeroU64::new(to.saturating_sub(from)) {
        // Advice only: failing it changes the speed, never the bytes.
        let _ = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::DontNeed);
    }
}

/// Keeps a large file written front to back out of the page cache: each write's writeback starts
/// at once, and every [`WriteBehind::EVERY`] bytes the file is synced and those pages dropped
/// (see [`drop_cached`] for why). Only the position reached so far is kept, so it is `Copy` and
/// can travel to a blocking task and back.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteBehind {
    synced: u64,
}

impl WriteBehind {
    /// How many bytes are written between syncs.
    pub const EVERY: u64 = 8 << 20;

    /// After bytes `start..end` of `file` were written: starts their writeback and, once
    /// [`WriteBehind::EVERY`] bytes are unsynced, syncs the file and drops what is durable.
    pub fn wrote(&mut self, file: &std::fs::File, start: u64, end: u64) -> std::io::Result<()> {
        drop_cached(file, start, end);
        if end >= self.synced + Self::EVERY {
            file.sync_data()?;
            drop_cached(file, self.synced, end);
            self.synced = end;
        }
        Ok(())
    }
}

/// Runs `op` on the file in `slot` (at `path`, for errors) on the blocking pool.
async fn on_file(
    slot: &mut Option<std::fs::File>,
    path: PathBuf,
    op: impl FnOnce(&mut std::fs::File) -> std::io::Result<()> + Send + 'static,
) -> UploadResult<()> {
    let mut file = slot.take().ok_or_else(|| {
        io(
            &path,
            std::io::Error::other("an earlier write to this file did not finish"),
        )
    })?;
    let (file, result) = tokio::task::spawn_blocking(move || {
        let result = op(&mut file);
        (file, result)
    })
    .await
    .map_err(|e| io(&path, std::io::Error::other(e.to_string())))?;
    *slot = Some(file);
    result.map_err(|e| io(&path, e))
}

#[async_trait]
impl StagedWriter for LocalWriter {
    async fn write(&mut self, pieces: Vec<Bytes>) -> UploadResult<()> {
        write_data(&mut self.data, &self.dir, pieces).await
    }

    async fn write_crcs(&mut self, crcs: &[u32]) -> UploadResult<()> {
        let mut encoded = Vec::with_capacity(crcs.len() * 4);
        for crc in crcs {
            encoded.extend_from_slice(&crc.to_le_bytes());
        }
        self.crcs
            .write_all(&encoded)
            .await
            .map_err(|e| io(&self.dir.join("crcs"), e))
    }

    async fn checkpoint(&mut self, state: &SessionState, previous: u64) -> UploadResult<()> {
        self.begin_checkpoint(state, previous, Naming::Durable)
            .await?
            .await
    }

    async fn start_checkpoint(
        &mut self,
        state: &SessionState,
        previous: u64,
    ) -> UploadResult<Syncing> {
        self.begin_checkpoint(state, previous, Naming::Pending)
            .await
    }
}

impl LocalWriter {
    /// Starts a checkpoint of everything written so far, its `state.json` named as `naming`
    /// says, and hands back the syncs still to come.
    async fn begin_checkpoint(
        &mut self,
        state: &SessionState,
        previous: u64,
        naming: Naming,
    ) -> UploadResult<Syncing> {
        let LocalWriter { dir, data, crcs } = self;
        // The bytes written meanwhile lie past `state.committed`, so a crash before the next
        // checkpoint cuts them away. The CRCs written so far are handed to the file first, so
        // that a sync through the second handle covers them.
        let crcs_path = dir.join("crcs");
        crcs.flush().await.map_err(|e| io(&crcs_path, e))?;
        let crcs = std::os::fd::AsFd::as_fd(&*crcs)
            .try_clone_to_owned()
            .map_err(|e| io(&crcs_path, e))?
            .into();
        let for_sync = second_handle(data, dir)?;
        Ok(Box::pin(sync_and_record(
            for_sync,
            crcs,
            dir.clone(),
            state.clone(),
            previous,
            naming,
        )))
    }
}

/// A second handle on a session's open `data` file. A sync through it covers every byte
/// written before the sync starts, whichever handle wrote them, so writing may go on through the
/// first one meanwhile.
fn second_handle(data: &Option<std::fs::File>, dir: &Path) -> UploadResult<std::fs::File> {
    let data_path = dir.join("data");
    data.as_ref()
        .ok_or_else(|| {
            io(
                &data_path,
                std::io::Error::other("an earlier write to this file did not finish"),
            )
        })?
        .try_clone()
        .map_err(|e| io(&data_path, e))
}

/// Makes a session's `data` (through `for_sync`, a [`second_handle`]) and `crcs` (through a
/// second handle too) durable, drops the cached pages of `data` from `previous` to
/// `state.committed`, and replaces `state.json` with `state` (named as `naming` says). One
/// daemon owns the directory and the engine serializes requests per session, so nothing else can
/// have moved the session.
async fn sync_and_record(
    for_sync: std::fs::File,
    crcs: std::fs::File,
    dir: PathBuf,
    state: SessionState,
    previous: u64,
    naming: Naming,
) -> UploadResult<()> {
    let path = dir.join("state.json");
    let joined = |e: tokio::task::JoinError| io(&path, std::io::Error::other(e.to_string()));
    // Three tasks on the blocking pool, not one per step (a checkpoint comes every 4 MiB, and a
    // thread woken for each step took CPU from the hashing): the sync of the bytes, which waits
    // for the disk to write them, runs beside the sync of the CRCs and the staging of the new
    // state; the rename comes last, since the state may take its real name only once the bytes
    // it counts are durable.
    let (meta_dir, meta_state) = (dir.clone(), state.clone());
    let meta = tokio::task::spawn_blocking(move || {
        crcs.sync_data()
            .map_err(|e| io(&meta_dir.join("crcs"), e))?;
        stage_state(&meta_dir, &meta_state)
    });
    let data_path = dir.join("data");
    let data = tokio::task::spawn_blocking(move || {
        for_sync.sync_data()?;
        drop_cached(&for_sync, previous, state.committed);
        Ok::<_, std::io::Error>(())
    });
    let (meta, data) = tokio::join!(meta, data);
    data.map_err(joined)?.map_err(|e| io(&data_path, e))?;
    meta.map_err(joined)??;
    tokio::task::spawn_blocking(move || publish_state(&dir, naming))
        .await
        .map_err(joined)?
}

/// Appends `pieces` to a session's `data` file and starts writing them back at once, while the
/// next ones arrive, so that the checkpoint's sync waits only for what is still in flight.
async fn write_data(
    slot: &mut Option<std::fs::File>,
    dir: &Path,
    pieces: Vec<Bytes>,
) -> UploadResult<()> {
    on_file(slot, dir.join("data"), move |file| {
        let mut written = 0;
        for piece in &pieces {
            std::io::Write::write_all(file, piece)?;
            written += piece.len() as u64;
        }
        let end = std::io::Seek::stream_position(file)?;
        drop_cached(file, end - written, end);
        Ok(())
    })
    .await
}

#[async_trait]
impl Staging for LocalStaging {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn shared(&self) -> bool {
        false
    }

    async fn create(&self, id: &str, state: &SessionState) -> UploadResult<()> {
        let dir = self.dir.join(id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io(&dir, e))?;
        for name in ["data", "crcs"] {
            let path = dir.join(name);
            tokio::fs::File::create(&path)
                .await
                .map_err(|e| io(&path, e))?;
        }
        Self::write_state(&dir, state).await
    }

    async fn load(&self, id: &str) -> UploadResult<Option<SessionState>> {
        let path = self.dir.join(id).join("state.json");
        let text = match tokio::fs::read(&path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, e)),
        };
        SessionState::from_json(&text).map(Some).map_err(|e| {
            io(
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }

    async fn writer(&self, id: &str, state: &SessionState) -> UploadResult<Box<dyn StagedWriter>> {
        let dir = self.dir.join(id);
        let data_path = dir.join("data");
        let crcs_path = dir.join("crcs");
        let mut data = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&data_path)
            .await
            .map_err(|e| io(&data_path, e))?;
        let mut crcs = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&crcs_path)
            .await
            .map_err(|e| io(&crcs_path, e))?;
        // Bytes past the committed length were never acknowledged: they go first.
        let committed = state.committed;
        data.set_len(committed)
            .await
            .map_err(|e| io(&data_path, e))?;
        data.seek(std::io::SeekFrom::Start(committed))
            .await
            .map_err(|e| io(&data_path, e))?;
        let full_blocks = committed / u64::from(state.block_size);
        crcs.set_len(full_blocks * 4)
            .await
            .map_err(|e| io(&crcs_path, e))?;
        crcs.seek(std::io::SeekFrom::Start(full_blocks * 4))
            .await
            .map_err(|e| io(&crcs_path, e))?;
        let data = data.into_std().await;
        Ok(Box::new(LocalWriter {
            dir,
            data: Some(data),
            crcs,
        }))
    }

    fn local_file(&self, id: &str) -> Option<PathBuf> {
        Some(self.dir.join(id).join("data"))
    }

    async fn read(&self, id: &str, from: u64, len: u64) -> UploadResult<Vec<u8>> {
        let path = self.dir.join(id).join("data");
        let mut data = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io(&path, e))?;
        data.seek(std::io::SeekFrom::Start(from))
            .await
            .map_err(|e| io(&path, e))?;
        let mut out = vec![0u8; len as usize];
        data.read_exact(&mut out).await.map_err(|e| io(&path, e))?;
        Ok(out)
    }

    async fn crcs(&self, id: &str, count: u64) -> UploadResult<Vec<u32>> {
        let path = self.dir.join(id).join("crcs");
        let bytes = tokio::fs::read(&path).await.map_err(|e| io(&path, e))?;
        decode_crcs(&bytes, count).map_err(|e| io(&path, e))
    }

    async fn blocks(
        &self,
        id: &str,
        size: u64,
        block: u64,
    ) -> UploadResult<BoxStream<'static, crate::Result<Bytes>>> {
        let path = self.dir.join(id).join("data");
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io(&path, e))?;
        Ok(
            futures::stream::unfold((file, 0u64), move |(mut file, at)| {
                let path = path.clone();
                async move {
                    if at >= size {
                        return None;
                    }
                    let len = block.min(size - at) as usize;
                    let mut buf = vec![0u8; len];
                    let item = file.read_exact(&mut buf).await.map(|_| Bytes::from(buf));
                    let item = item.map_err(|e| {
                        StorageError::Aborted(format!(
                            "reading the staged upload {}: {e}",
                            path.display()
                        ))
                    });
                    Some((item, (file, at + len as u64)))
                }
            })
            .boxed(),
        )
    }

    async fn remove(&self, id: &str) -> UploadResult<()> {
        let dir = self.dir.join(id);
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|e| io(&dir, e))
    }

    fn list_blocking(&self) -> Vec<StagedSession> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|entry| {
                let state = std::fs::read(entry.path().join("state.json"))
                    .ok()
                    .and_then(|t| SessionState::from_json(&t).ok());
                let idle = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok());
                StagedSession {
                    id: entry.file_name().to_string_lossy().into_owned(),
                    state,
                    idle,
                }
            })
            .collect()
    }

    fn remove_blocking(&self, id: &str) -> bool {
        std::fs::remove_dir_all(self.dir.join(id)).is_ok()
    }
}

/// The first `count` CRCs of an encoded list (four bytes each, little-endian).
pub fn decode_crcs(bytes: &[u8], count: u64) -> std::io::Result<Vec<u32>> {
    if (bytes.len() as u64) < count * 4 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{} block checksums, expected {count}", bytes.len() / 4),
        ));
    }
    Ok(bytes[..count as usize * 4]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect())
}
