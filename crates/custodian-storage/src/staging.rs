//! Where resumable upload sessions keep their state and bytes until they finish: a directory of
//! one daemon ([`LocalStaging`]), or a database every daemon sharing the store reaches (the
//! PostgreSQL index implements [`Staging`]), so that any daemon takes any piece of any session.
//!
//! The engine ([`crate::uploads::UploadSessions`]) decides what is acknowledged; a staging area
//! only has to make a checkpoint atomic: after [`StagedWriter::checkpoint`] returns, a reader
//! sees exactly the bytes and state it recorded, and after a crash before it, exactly those of
//! the checkpoint before. A shared area also fences writers: a checkpoint whose session moved
//! on meanwhile (another daemon committed a piece first) is refused, and its bytes never count.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

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

    /// A record of progress in the middle of a piece, then the next bytes: records `state`,
    /// whose `committed` covers everything written so far, so that it survives the daemon's
    /// crash, then appends `pieces`. Unlike [`StagedWriter::checkpoint_then_write`] it need not
    /// make the bytes durable: a power loss may undo the record, and the staging area then
    /// falls back to the last durable checkpoint, which it must be able to tell from an intact
    /// record. By default it is a checkpoint.
    async fn progress_then_write(
        &mut self,
        state: &SessionState,
        previous: u64,
        pieces: Vec<Bytes>,
    ) -> UploadResult<()> {
        self.checkpoint_then_write(state, previous, pieces).await
    }
}

fn io(path: &Path, source: std::io::Error) -> UploadError {
    UploadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Sessions as directories `DIR/<id>/` of one daemon: `data` (the bytes), `crcs` (four bytes
/// per complete block), `state.json` (replaced atomically and durably at each checkpoint) and
/// `progress` (a later state recorded in the middle of a piece without syncing anything,
/// believed after a restart only if the bytes it counts past `state.json` match their CRCs).
#[derive(Debug)]
pub struct LocalStaging {
    dir: PathBuf,
    /// The committed length of each session's `progress` record that this process wrote, or
    /// checked against the bytes, since it started. A power loss restarts the process, so a
    /// record listed here cannot have lost its bytes; any other is checked before it is
    /// believed.
    vouched: Vouched,
}

/// See [`LocalStaging`]'s `vouched`.
type Vouched = Arc<Mutex<HashMap<String, u64>>>;

fn vouched_for(vouched: &Vouched, id: &str) -> Option<u64> {
    vouched
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(id)
        .copied()
}

fn vouch(vouched: &Vouched, id: &str, committed: Option<u64>) {
    let mut map = vouched
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match committed {
        Some(committed) => map.insert(id.to_string(), committed),
        None => map.remove(id),
    };
}

impl LocalStaging {
    /// The sessions under `dir`, created if missing.
    pub fn open(dir: &Path) -> UploadResult<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        Ok(LocalStaging {
            dir: dir.to_path_buf(),
            vouched: Vouched::default(),
        })
    }

    /// The later of a session's two states: its `progress` record when it goes past `durable`
    /// (the session's `state.json`) and is vouched for, else `durable`.
    fn latest_vouched(&self, id: &str, durable: SessionState) -> SessionState {
        match read_progress(&self.dir.join(id), &durable) {
            Some(progress) if vouched_for(&self.vouched, id) == Some(progress.committed) => {
                progress
            }
            _ => durable,
        }
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

/// Writes `state` over the record in the session directory's `progress` file, opened in `slot`
/// the first time, and syncs nothing: the record only has to survive the daemon's crash, which
/// leaves the kernel's page cache (and so every byte written before the record) as it was.
///
/// The record is one write at the start of the file: `<crc32c of the JSON, 8 hex digits>
/// <length of the JSON>\n<the JSON>`. A write cut short (a record longer than a page, killed
/// between its pages) or read while it is written shows as a bad checksum, and a reader takes
/// it for no record at all. Rewriting one file in place costs a small fraction of writing a new
/// one and renaming it over the old, which created an inode at every checkpoint (0.85 ms each
/// on the machine in docs/performance.md, a fifth of the time a 4 MiB batch spends being
/// written). Blocks.
fn record_progress(
    slot: &mut Option<std::fs::File>,
    dir: &Path,
    state: &SessionState,
) -> UploadResult<()> {
    let path = dir.join("progress");
    let file = match slot {
        Some(file) => file,
        None => slot.insert(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| io(&path, e))?,
        ),
    };
    let json = state.to_json();
    let mut record = format!("{:08x} {}\n", crc32c::crc32c(&json), json.len()).into_bytes();
    record.extend_from_slice(&json);
    std::os::unix::fs::FileExt::write_all_at(file, &record, 0).map_err(|e| io(&path, e))
}

/// The state in a `progress` record, if its checksum holds.
fn decode_progress(bytes: &[u8]) -> Option<SessionState> {
    let line = bytes.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..line]).ok()?;
    let (crc, len) = header.split_once(' ')?;
    let (crc, len) = (
        u32::from_str_radix(crc, 16).ok()?,
        len.parse::<usize>().ok()?,
    );
    let json = bytes.get(line + 1..line + 1 + len)?;
    (crc32c::crc32c(json) == crc)
        .then(|| SessionState::from_json(json).ok())
        .flatten()
}

/// The session's `progress` record, if it is readable, belongs to the session `durable`
/// describes and goes past it. Blocks.
fn read_progress(dir: &Path, durable: &SessionState) -> Option<SessionState> {
    let progress = decode_progress(&std::fs::read(dir.join("progress")).ok()?)?;
    (progress.committed > durable.committed
        && progress.owner == durable.owner
        && progress.block_size == durable.block_size
        && progress.started_ms == durable.started_ms)
        .then_some(progress)
}

/// Whether the bytes `progress` counts past `durable` are in the session's `data` as they were
/// received: each complete block matches the CRC recorded for it in `crcs`, and the incomplete
/// last one matches `progress.partial_crc`. After a power loss, bytes written but never synced
/// may be missing, zeroed or cut short, and so may their CRCs; either shows as a mismatch.
/// Reads at most what was received since the last durable checkpoint. Blocks.
fn progress_intact(dir: &Path, durable: &SessionState, progress: &SessionState) -> bool {
    use std::io::{Read as _, Seek as _};
    let block = u64::from(progress.block_size);
    if block == 0 {
        return false;
    }
    let (first, end) = (durable.committed / block, progress.committed);
    let full = end / block;
    let Ok(crcs) = std::fs::read(dir.join("crcs")) else {
        return false;
    };
    let Ok(crcs) = decode_crcs(&crcs, full) else {
        return false;
    };
    let Ok(mut data) = std::fs::File::open(dir.join("data")) else {
        return false;
    };
    if data.metadata().map_or(true, |m| m.len() < end)
        || data.seek(std::io::SeekFrom::Start(first * block)).is_err()
    {
        return false;
    }
    let mut buf = vec![0u8; block as usize];
    for expected in &crcs[first as usize..] {
        if data.read_exact(&mut buf).is_err() || crc32c::crc32c(&buf) != *expected {
            return false;
        }
    }
    let tail = &mut buf[..(end % block) as usize];
    data.read_exact(tail).is_ok() && crc32c::crc32c(tail) == progress.partial_crc
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
    id: String,
    vouched: Vouched,
    dir: PathBuf,
    /// The `data` and `crcs` files, written from the blocking pool (`data` straight from the
    /// caller's buffers: `tokio::fs` would first copy every byte into a buffer of its own).
    /// `None` only while a write or sync has them, or after one could not give them back.
    files: Option<Files>,
    /// CRCs of completed blocks not yet written to `crcs` (four bytes each): they go with the
    /// next write of bytes, on its task, rather than each on a task of their own.
    crcs: Vec<u8>,
}

/// A [`LocalWriter`]'s open files.
struct Files {
    data: std::fs::File,
    crcs: std::fs::File,
    /// Opened at the first progress record.
    progress: Option<std::fs::File>,
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

/// Runs `op` on the files in `slot` on the blocking pool (`dir` names the session, for errors),
/// and puts them back.
async fn on_files(
    slot: &mut Option<Files>,
    dir: &Path,
    op: impl FnOnce(&mut Files) -> UploadResult<()> + Send + 'static,
) -> UploadResult<()> {
    let mut files = slot.take().ok_or_else(|| {
        io(
            dir,
            std::io::Error::other("an earlier write to this session did not finish"),
        )
    })?;
    let (files, result) = tokio::task::spawn_blocking(move || {
        let result = op(&mut files);
        (files, result)
    })
    .await
    .map_err(|e| io(dir, std::io::Error::other(e.to_string())))?;
    *slot = Some(files);
    result
}

#[async_trait]
impl StagedWriter for LocalWriter {
    async fn write(&mut self, pieces: Vec<Bytes>) -> UploadResult<()> {
        self.checkpoint_and_append(Record::Nothing, pieces).await
    }

    async fn write_crcs(&mut self, crcs: &[u32]) -> UploadResult<()> {
        for crc in crcs {
            self.crcs.extend_from_slice(&crc.to_le_bytes());
        }
        Ok(())
    }

    // One daemon owns the directory and the engine serializes each session's requests, so
    // nothing else can have moved the session past `previous`.
    async fn checkpoint(&mut self, state: &SessionState, _previous: u64) -> UploadResult<()> {
        self.checkpoint_and_append(Record::Durable(state.clone(), Naming::Durable), Vec::new())
            .await
    }

    async fn checkpoint_then_write(
        &mut self,
        state: &SessionState,
        _previous: u64,
        pieces: Vec<Bytes>,
    ) -> UploadResult<()> {
        self.checkpoint_and_append(Record::Durable(state.clone(), Naming::Pending), pieces)
            .await
    }

    async fn progress_then_write(
        &mut self,
        state: &SessionState,
        _previous: u64,
        pieces: Vec<Bytes>,
    ) -> UploadResult<()> {
        self.checkpoint_and_append(Record::Progress(state.clone()), pieces)
            .await?;
        vouch(&self.vouched, &self.id, Some(state.committed));
        Ok(())
    }
}

/// What [`LocalWriter::checkpoint_and_append`] records before it appends.
enum Record {
    /// Nothing.
    Nothing,
    /// A checkpoint: the bytes and CRCs synced, `state.json` replaced, named as it says.
    Durable(SessionState, Naming),
    /// The `progress` record rewritten, nothing synced.
    Progress(SessionState),
}

impl LocalWriter {
    /// On one task of the blocking pool: the CRCs held back, then the record, if any, then
    /// `pieces` appended to `data`. A checkpoint's sync of `data` runs before the next bytes are
    /// written, so that it waits only for the bytes it counts: a sync started while later bytes
    /// were written (through a second handle, as checkpoints ran until the twenty-fourth
    /// session) also waited for those, and with a checkpoint every 4 MiB the receiving loop
    /// stalled on it.
    async fn checkpoint_and_append(
        &mut self,
        record: Record,
        pieces: Vec<Bytes>,
    ) -> UploadResult<()> {
        let dir = self.dir.clone();
        // The CRCs go first: a record that counts their blocks must find them in the file.
        let crcs = std::mem::take(&mut self.crcs);
        on_files(&mut self.files, &self.dir.clone(), move |files| {
            std::io::Write::write_all(&mut files.crcs, &crcs)
                .map_err(|e| io(&dir.join("crcs"), e))?;
            match record {
                Record::Durable(state, naming) => record_durably(files, &dir, &state, naming)?,
                Record::Progress(state) => record_progress(&mut files.progress, &dir, &state)?,
                Record::Nothing => {}
            }
            append(&mut files.data, &pieces).map_err(|e| io(&dir.join("data"), e))
        })
        .await
    }
}

/// Makes a session's `data` and `crcs` durable, drops the cached pages of `data`, and replaces
/// `state.json` with `state` (named as `naming` says): the new state takes its real name only
/// once the bytes it counts are durable. One daemon owns the directory and the engine serializes
/// requests per session, so nothing else can have moved the session. Blocks.
fn record_durably(
    files: &Files,
    dir: &Path,
    state: &SessionState,
    naming: Naming,
) -> UploadResult<()> {
    files
        .data
        .sync_data()
        .map_err(|e| io(&dir.join("data"), e))?;
    // From the start: the pages written since the last sync were only advised away as they
    // were written, and those still under writeback then stayed in the cache.
    drop_cached(&files.data, 0, state.committed);
    files
        .crcs
        .sync_data()
        .map_err(|e| io(&dir.join("crcs"), e))?;
    stage_state(dir, state)?;
    publish_state(dir, naming)
}

/// Appends `pieces` to a session's `data` file and starts writing them back at once, while the
/// next ones arrive, so that the checkpoint's sync waits only for what is still in flight. The
/// advice also covers as many bytes again before them: written back by now, unless the disk is
/// slow, those pages are dropped, so that the cache does not grow between syncs, which a piece
/// recording only its progress may not reach for tens of MiB. Blocks.
fn append(file: &mut std::fs::File, pieces: &[Bytes]) -> std::io::Result<()> {
    let mut written = 0;
    for piece in pieces {
        std::io::Write::write_all(file, piece)?;
        written += piece.len() as u64;
    }
    let end = std::io::Seek::stream_position(file)?;
    drop_cached(file, end.saturating_sub(2 * written), end);
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
        let dir = self.dir.join(id);
        let path = dir.join("state.json");
        let text = match tokio::fs::read(&path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, e)),
        };
        let durable = SessionState::from_json(&text).map_err(|e| {
            io(
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        let (id, vouched) = (id.to_string(), self.vouched.clone());
        tokio::task::spawn_blocking(move || {
            let Some(progress) = read_progress(&dir, &durable) else {
                return durable;
            };
            let progress = SessionState {
                unsynced: true,
                ..progress
            };
            if vouched_for(&vouched, &id) == Some(progress.committed) {
                return progress;
            }
            if progress_intact(&dir, &durable, &progress) {
                vouch(&vouched, &id, Some(progress.committed));
                return progress;
            }
            // The bytes the record counts did not all survive (a power loss after it was
            // written): the session goes on from its last durable checkpoint, and a writer
            // cuts the bytes past it away. The record stays until the next one replaces it: a
            // writer may hold the file open, and should the same bytes be written again, the
            // record is true of them again.
            tracing::warn!(
                session = %id,
                durable = durable.committed,
                recorded = progress.committed,
                "an upload's progress record counts bytes that did not survive; it resumes from its last durable checkpoint"
            );
            durable
        })
        .await
        .map(Some)
        .map_err(|e| io(&path, std::io::Error::other(e.to_string())))
    }

    async fn writer(&self, id: &str, state: &SessionState) -> UploadResult<Box<dyn StagedWriter>> {
        let dir = self.dir.join(id);
        let (committed, block) = (state.committed, u64::from(state.block_size));
        let opened = dir.clone();
        let files = tokio::task::spawn_blocking(move || -> UploadResult<Files> {
            // Bytes past the committed length were never acknowledged: they go first, and so do
            // the CRCs of blocks they completed.
            let open = |name: &str, len: u64| {
                let path = opened.join(name);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io(&path, e))?;
                file.set_len(len).map_err(|e| io(&path, e))?;
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(len))
                    .map_err(|e| io(&path, e))?;
                Ok::<_, UploadError>(file)
            };
            Ok(Files {
                data: open("data", committed)?,
                crcs: open("crcs", committed / block * 4)?,
                progress: None,
            })
        })
        .await
        .map_err(|e| io(&dir, std::io::Error::other(e.to_string())))??;
        Ok(Box::new(LocalWriter {
            id: id.to_string(),
            vouched: self.vouched.clone(),
            dir,
            files: Some(files),
            crcs: Vec::new(),
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
        vouch(&self.vouched, id, None);
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
                let id = entry.file_name().to_string_lossy().into_owned();
                let state = std::fs::read(entry.path().join("state.json"))
                    .ok()
                    .and_then(|t| SessionState::from_json(&t).ok())
                    .map(|durable| self.latest_vouched(&id, durable));
                let idle = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok());
                StagedSession { id, state, idle }
            })
            .collect()
    }

    fn remove_blocking(&self, id: &str) -> bool {
        vouch(&self.vouched, id, None);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(committed: u64, metadata: usize) -> SessionState {
        SessionState {
            owner: "alice".into(),
            expected_digest: None,
            expected_size: Some(1 << 30),
            committed,
            hash_state: "ab".repeat(40),
            partial_crc: 7,
            block_size: 1024,
            started_ms: 1,
            updated_ms: 2,
            metadata: (0..metadata)
                .map(|i| (format!("key{i}"), "v".repeat(100)))
                .collect(),
            unsynced: false,
        }
    }

    #[test]
    fn a_progress_record_reads_back_only_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut slot = None;
        // A long record (several pages), then a short one over it: the reader takes the short
        // one and ignores what is left of the long one after it.
        record_progress(&mut slot, dir.path(), &state(4 << 20, 100)).expect("long record");
        record_progress(&mut slot, dir.path(), &state(8 << 20, 0)).expect("short record");
        let bytes = std::fs::read(dir.path().join("progress")).expect("read");
        assert_eq!(decode_progress(&bytes).map(|s| s.committed), Some(8 << 20));
        // Any byte of the record changed, as a write cut short or a torn read leaves it, makes
        // it no record at all; a byte changed past it (what is left of the long one) does not.
        let short = state(8 << 20, 0).to_json().len();
        let record = bytes.iter().position(|&b| b == b'\n').expect("header") + 1 + short;
        for at in 0..record + 100 {
            let mut torn = bytes.clone();
            torn[at] = torn[at].wrapping_add(1);
            let read = decode_progress(&torn).map(|s| s.committed);
            let expected = (at >= record).then_some(8 << 20);
            assert_eq!(read, expected, "the record changed at byte {at}");
        }
        assert!(decode_progress(&bytes[..record - 1]).is_none());
        assert!(decode_progress(b"").is_none());
    }
}
