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

    /// A checkpoint in the middle of a piece, then the next bytes: makes everything written so
    /// far durable and records `state` as [`StagedWriter::checkpoint`] does, then appends
    /// `pieces`. When it returns, the checkpoint is done; the caller receives the next bytes
    /// meanwhile. Its record must survive the daemon's crash; a power loss may undo it as long
    /// as the earlier state it falls back to is intact, for the piece's closing
    /// [`StagedWriter::checkpoint`] makes everything durable before it is acknowledged. By
    /// default the two run in turn.
    async fn checkpoint_then_write(
        &mut self,
        state: &SessionState,
        previous: u64,
        pieces: Vec<Bytes>,
    ) -> UploadResult<()> {
        self.checkpoint(state, previous).await?;
        self.write(pieces).await
    }
}

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
    /// Leaving out that sync shortens every checkpoint but a piece's last, each of which holds
    /// up the write of the batch after it.
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

/// Runs `op` on the file in `slot` (at `path`, for errors) on the blocking pool, and puts the
/// file back.
async fn on_file(
    slot: &mut Option<std::fs::File>,
    path: PathBuf,
    op: impl FnOnce(&mut std::fs::File) -> UploadResult<()> + Send + 'static,
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
    result
}

#[async_trait]
impl StagedWriter for LocalWriter {
    async fn write(&mut self, pieces: Vec<Bytes>) -> UploadResult<()> {
        self.checkpoint_and_append(None, pieces).await
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
        self.checkpoint_and_append(Some((state, previous, Naming::Durable)), Vec::new())
            .await
    }

    async fn checkpoint_then_write(
        &mut self,
        state: &SessionState,
        previous: u64,
        pieces: Vec<Bytes>,
    ) -> UploadResult<()> {
        self.checkpoint_and_append(Some((state, previous, Naming::Pending)), pieces)
            .await
    }
}

impl LocalWriter {
    /// On one task of the blocking pool: the checkpoint, if any, then `pieces` appended to
    /// `data`. The checkpoint's sync of `data` runs before the next bytes are written, so that
    /// it waits only for the bytes it counts: a sync started while later bytes were written
    /// (through a second handle, as checkpoints ran until the twenty-fourth session) also waited
    /// for those, and with a checkpoint every 4 MiB the receiving loop stalled on it.
    async fn checkpoint_and_append(
        &mut self,
        checkpoint: Option<(&SessionState, u64, Naming)>,
        pieces: Vec<Bytes>,
    ) -> UploadResult<()> {
        let dir = self.dir.clone();
        let checkpoint = match checkpoint {
            Some((state, previous, naming)) => {
                // The CRCs written so far are handed to the file, so that a sync through a
                // second handle on it covers them.
                let crcs_path = dir.join("crcs");
                self.crcs.flush().await.map_err(|e| io(&crcs_path, e))?;
                let crcs: std::fs::File = std::os::fd::AsFd::as_fd(&self.crcs)
                    .try_clone_to_owned()
                    .map_err(|e| io(&crcs_path, e))?
                    .into();
                Some((crcs, state.clone(), previous, naming))
            }
            None => None,
        };
        let data_path = dir.join("data");
        on_file(&mut self.data, data_path.clone(), move |file| {
            if let Some((crcs, state, previous, naming)) = checkpoint {
                record_durably(file, &crcs, &dir, &state, previous, naming)?;
            }
            append(file, &pieces).map_err(|e| io(&data_path, e))
        })
        .await
    }
}

/// Makes a session's `data` and `crcs` durable, drops the cached pages of `data` from
/// `previous` to `state.committed`, and replaces `state.json` with `state` (named as `naming`
/// says): the new state takes its real name only once the bytes it counts are durable. One
/// daemon owns the directory and the engine serializes requests per session, so nothing else can
/// have moved the session. Blocks.
fn record_durably(
    data: &std::fs::File,
    crcs: &std::fs::File,
    dir: &Path,
    state: &SessionState,
    previous: u64,
    naming: Naming,
) -> UploadResult<()> {
    data.sync_data().map_err(|e| io(&dir.join("data"), e))?;
    drop_cached(data, previous, state.committed);
    crcs.sync_data().map_err(|e| io(&dir.join("crcs"), e))?;
    stage_state(dir, state)?;
    publish_state(dir, naming)
}

/// Appends `pieces` to a session's `data` file and starts writing them back at once, while the
/// next ones arrive, so that the checkpoint's sync waits only for what is still in flight.
/// Blocks.
fn append(file: &mut std::fs::File, pieces: &[Bytes]) -> std::io::Result<()> {
    let mut written = 0;
    for piece in pieces {
        std::io::Write::write_all(file, piece)?;
        written += piece.len() as u64;
    }
    let end = std::io::Seek::stream_position(file)?;
    drop_cached(file, end - written, end);
    Ok(())
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
