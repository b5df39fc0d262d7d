//! Packs: one local file holding a batch of small blobs, each at a [`PACK_ALIGN`] boundary.
//!
//! A batch of thousands of small blobs written as thousands of files costs a file creation and a
//! sync each, which bounds any file system's rate far below its disk's; written inside one
//! database, it is written twice (the database's log, then its tables). A pack is written once,
//! synced once, and never rewritten: a deleted blob's range is punched out of the file in place
//! (its neighbours' bytes never move, so a blob's offset stays valid for its whole life), and a
//! pack with no data left is removed. The `file://` object backend and the RocksDB backend keep
//! their small blobs' batches this way; each decides how a crash is cleaned up.

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// Blobs inside a pack start at multiples of this (the usual file-system block), so deleting
/// one frees whole blocks of the pack's file and touches no byte of its neighbours.
pub const PACK_ALIGN: u64 = 4096;

/// Zeros to pad a packed blob up to the next [`PACK_ALIGN`] boundary.
static PADDING: [u8; PACK_ALIGN as usize] = [0; PACK_ALIGN as usize];

/// The zeros that follow a blob of `len` bytes in a pack, up to the next boundary.
pub fn padding_after(len: u64) -> &'static [u8] {
    &PADDING[..(len.next_multiple_of(PACK_ALIGN) - len) as usize]
}

/// The offset of each blob of `lens` in a pack that holds them in this order, and the pack's
/// length.
pub fn layout(lens: impl IntoIterator<Item = u64>) -> (Vec<u64>, u64) {
    let mut offsets = Vec::new();
    let mut end = 0u64;
    for len in lens {
        offsets.push(end);
        end += len.next_multiple_of(PACK_ALIGN);
    }
    (offsets, end)
}

/// The bytes of a pack holding `blobs` in order, laid out as [`layout`] says, in one buffer: the
/// reference the tests compare a written pack with ([`write_pack`] writes the pieces as they lie).
#[cfg(test)]
pub fn pack_bytes(blobs: &[&Bytes]) -> Vec<u8> {
    let (_, len) = layout(blobs.iter().map(|data| data.len() as u64));
    let mut out = Vec::with_capacity(len as usize);
    for data in blobs {
        out.extend_from_slice(data);
        out.extend_from_slice(padding_after(data.len() as u64));
    }
    out
}

/// Writes a new pack at `path` holding `blobs` (laid out as [`layout`] says) and makes it
/// durable, its bytes and its name, before anything may point into it. An existing file is never
/// overwritten. Where the file system takes direct I/O the pack bypasses the page cache (see
/// [`write_direct`]); elsewhere it is written through the page cache and its pages leave it once
/// it is synced (see [`crate::drop_cached`]): on this project's VM a 4 MiB pack written into
/// page-cache pages the guest had not used lately took 19 ms, and 1 ms into pages a dropped pack
/// had just given back (docs/performance-history.md, "Small blobs written once"). A failure names
/// the step and the path.
pub fn write_pack(path: &Path, blobs: &[&Bytes]) -> Result<(), (&'static str, std::io::Error)> {
    write_pack_with(path, blobs, true)
}

/// [`write_pack`], with direct I/O tried only when `direct` is set (the tests write both ways).
fn write_pack_with(
    path: &Path,
    blobs: &[&Bytes],
    direct: bool,
) -> Result<(), (&'static str, std::io::Error)> {
    let written = if direct {
        write_direct_new(path, blobs)?
    } else {
        false
    };
    if !written {
        write_buffered(path, blobs, direct)?;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| ("sync the directory of", e))
}

/// Creates the pack at `path` with `O_DIRECT`, writes it with [`write_direct`] and syncs it;
/// `false` if the file system refused direct I/O (`EINVAL`, for the flag itself as tmpfs on
/// older kernels does, or for a write whose alignment it does not take), and the pack is to be
/// written through the page cache instead.
fn write_direct_new(path: &Path, blobs: &[&Bytes]) -> Result<bool, (&'static str, std::io::Error)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let refused =
        |e: &std::io::Error| e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error());
    let file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if refused(&e) => return Ok(false),
        Err(e) => return Err(("write", e)),
    };
    match write_direct(&file, blobs) {
        Ok(()) => {}
        Err(e) if refused(&e) => return Ok(false),
        Err(e) => return Err(("write", e)),
    }
    file.sync_data().map_err(|e| ("sync", e))?;
    Ok(true)
}

/// Writes and syncs the pack through the page cache. The file is created, or with `ours` taken
/// as it is: a direct write refused with `EINVAL` came after `O_EXCL` had found no file, and
/// may have left the one it created (tmpfs creates the file before refusing the flag).
fn write_buffered(
    path: &Path,
    blobs: &[&Bytes],
    ours: bool,
) -> Result<(), (&'static str, std::io::Error)> {
    // The blobs and their padding go to the file as they lie, one gathered write per 1,024
    // pieces: assembling a 4 MiB pack first cost a fresh 4 MiB buffer (mapped, faulted in and
    // unmapped at this size) and a copy of every byte.
    let mut pieces: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(blobs.len() * 2);
    for data in blobs {
        pieces.push(std::io::IoSlice::new(data));
        let padding = padding_after(data.len() as u64);
        if !padding.is_empty() {
            pieces.push(std::io::IoSlice::new(padding));
        }
    }
    let len: u64 = pieces.iter().map(|piece| piece.len() as u64).sum();
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if ours {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let file = options
        .open(path)
        .and_then(|file| write_all_vectored_at(&file, &mut pieces, 0).map(|()| file))
        .map_err(|e| ("write", e))?;
    // Starting the writeback now lets the sync below wait for less.
    crate::drop_cached(&file, 0, len);
    file.sync_data().map_err(|e| ("sync", e))?;
    crate::drop_cached(&file, 0, len);
    Ok(())
}

/// How many bytes of a pack one direct write carries: the blobs are copied into an aligned buffer
/// of this size and written from it, so a pack of any size takes no more memory than this.
const DIRECT_CHUNK: usize = 1 << 20;

/// Aligned buffers kept between packs for [`write_direct`] (each [`DIRECT_CHUNK`] plus the slack
/// that aligns it), so a pack does not fault a fresh megabyte in; at most
/// [`DIRECT_BUFFERS_KEPT`] wait here.
static DIRECT_BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// How many idle buffers [`DIRECT_BUFFERS`] keeps: one per batch usually in flight.
const DIRECT_BUFFERS_KEPT: usize = 2;

/// Writes the pack into `file`, opened with `O_DIRECT`: each megabyte of blobs and padding is
/// copied into an aligned buffer and written from it straight to the disk. A pack is written
/// once and read rarely, and in the page cache it cost a copy into freshly mapped pages plus their
/// writeback, about a fifth of the daemon's CPU under 4 KiB `BatchPut` calls (docs/performance.md,
/// "Packs written past the page cache"); the copy into the buffer is a plain `memcpy`. Every
/// write is a multiple of [`PACK_ALIGN`] at a multiple of it, as direct I/O requires, since
/// each blob is padded to it. The caller still syncs: a direct write may sit in the disk's cache,
/// and the file's size and blocks are metadata.
fn write_direct(file: &std::fs::File, blobs: &[&Bytes]) -> std::io::Result<()> {
    let mut buffer = DIRECT_BUFFERS
        .lock()
        .ok()
        .and_then(|mut kept| kept.pop())
        .unwrap_or_else(|| vec![0u8; DIRECT_CHUNK + PACK_ALIGN as usize]);
    let start = buffer.as_ptr().align_offset(PACK_ALIGN as usize);
    let written = fill_and_write(file, &mut buffer[start..start + DIRECT_CHUNK], blobs);
    if let Ok(mut kept) = DIRECT_BUFFERS.lock()
        && kept.len() < DIRECT_BUFFERS_KEPT
    {
        kept.push(buffer);
    }
    written
}

/// Copies `blobs` with their padding into `chunk` and writes each full chunk (and the last,
/// partial one) at its place in `file`.
fn fill_and_write(file: &std::fs::File, chunk: &mut [u8], blobs: &[&Bytes]) -> std::io::Result<()> {
    let mut filled = 0usize;
    let mut offset = 0u64;
    for data in blobs {
        let mut rest: &[u8] = data;
        while !rest.is_empty() {
            let take = rest.len().min(chunk.len() - filled);
            chunk[filled..filled + take].copy_from_slice(&rest[..take]);
            filled += take;
            rest = &rest[take..];
            if filled == chunk.len() {
                file.write_all_at(chunk, offset)?;
                offset += filled as u64;
                filled = 0;
            }
        }
        // The padding never crosses the chunk's end: the chunk is a multiple of the alignment.
        let padding = padding_after(data.len() as u64).len();
        chunk[filled..filled + padding].fill(0);
        filled += padding;
    }
    if filled > 0 {
        file.write_all_at(&chunk[..filled], offset)?;
    }
    Ok(())
}

/// Writes every byte of `pieces` at `offset` and on, in order, with as few gathered writes as the
/// kernel allows (at most 1,024 pieces each); a short write carries on where it stopped.
fn write_all_vectored_at(
    file: &std::fs::File,
    mut pieces: &mut [std::io::IoSlice<'_>],
    mut offset: u64,
) -> std::io::Result<()> {
    const MAX_PIECES: usize = 1024;
    while !pieces.is_empty() {
        let take = pieces.len().min(MAX_PIECES);
        let written = match rustix::io::pwritev(file, &pieces[..take], offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => written,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        offset += written as u64;
        std::io::IoSlice::advance_slices(&mut pieces, written);
    }
    Ok(())
}

/// Deleted packed blobs' `(place, size)` grouped by pack: each pack's id with its `(offset, size)`
/// ranges, in pack order, as [`free_packed`] takes them once each id is a path.
pub fn ranges_by_pack(
    ranges: impl IntoIterator<Item = (crate::PackedAt, u64)>,
) -> std::collections::BTreeMap<u64, Vec<(u64, u64)>> {
    let mut by_pack: std::collections::BTreeMap<u64, Vec<(u64, u64)>> = Default::default();
    for (at, size) in ranges {
        by_pack.entry(at.pack).or_default().push((at.offset, size));
    }
    by_pack
}

/// Frees ranges `offset..offset + size` (each rounded up to [`PACK_ALIGN`]) of the packs at the
/// given paths, makes that durable, and removes each pack left with no data block; returns the
/// paths of the packs removed. `dir` is the directory that holds them. Adjacent ranges are freed
/// as one (a pack's blobs deleted together are usually neighbours, and each hole punched is a
/// journalled change of the file's extents). One pack is synced with `fdatasync`; the packs of a
/// larger batch (garbage collection deletes blobs from hundreds of packs at once) with one
/// `syncfs` of the file system, instead of a sync per pack. A pack already gone is fine: a
/// concurrent delete of its last other blob removed it.
pub fn free_packed(
    dir: &Path,
    packs: &[(PathBuf, Vec<(u64, u64)>)],
) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    // Opened before the first punch, so the syncfs reports any writeback error of the batch.
    let dir_handle = std::fs::File::open(dir)?;
    let single = packs.len() == 1;
    let mut punched = Vec::with_capacity(packs.len());
    for (path, ranges) in packs {
        let file = match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for (offset, len) in coalesce(ranges) {
            punch_hole(&file, offset, len)?;
        }
        if single {
            file.sync_data()?;
        }
        punched.push((path, file));
    }
    if !single && !punched.is_empty() {
        sync_filesystem(&dir_handle)?;
    }
    let mut removed = Vec::new();
    for (path, file) in punched {
        if file.metadata()?.blocks() == 0 {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => removed.push(path.clone()),
            }
        }
    }
    Ok(removed)
}

/// The `(offset, size)` ranges as `(offset, len)` runs to free: each rounded up to
/// [`PACK_ALIGN`], sorted, empty ones dropped, and overlapping or adjacent ones joined.
fn coalesce(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut sorted: Vec<(u64, u64)> = ranges
        .iter()
        .map(|&(offset, size)| (offset, offset + size.next_multiple_of(PACK_ALIGN)))
        .filter(|(start, end)| end > start)
        .collect();
    sorted.sort_unstable();
    let mut runs: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for (start, end) in sorted {
        match runs.last_mut() {
            Some((_, last_end)) if start <= *last_end => *last_end = (*last_end).max(end),
            _ => runs.push((start, end)),
        }
    }
    runs.into_iter()
        .map(|(start, end)| (start, end - start))
        .collect()
}

/// Flushes the whole file system that holds `dir` (`syncfs(2)`). Since Linux 5.8 it also
/// reports any writeback error on that file system since `dir` was opened.
#[cfg(target_os = "linux")]
fn sync_filesystem(dir: &std::fs::File) -> std::io::Result<()> {
    rustix::fs::syncfs(dir).map_err(std::io::Error::from)
}

/// Without `syncfs`, every file system's dirty data is flushed (`sync(2)` waits for it on
/// Linux and most others): slower, never less durable.
#[cfg(not(target_os = "linux"))]
fn sync_filesystem(_dir: &std::fs::File) -> std::io::Result<()> {
    rustix::fs::sync();
    Ok(())
}

/// Deallocates a range of a file, keeping its size; where the file system cannot, overwrites
/// the range with zeros instead (the bytes are gone either way, the space only in the first).
fn punch_hole(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::FallocateFlags;
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(file, flags, offset, len) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(PACK_ALIGN);
        file.write_all_at(&PADDING[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// A deleted packed blob's range to free: its pending record's id, where it lies, and its size.
pub type FreedRange = (u64, crate::PackedAt, u64);

/// What a backend does for its [`Freer`], on the freer's thread.
pub trait Freeing: Send + 'static {
    /// The packs among `packs` that hold no live blob any more (a backend that does not count
    /// its packs' blobs answers none).
    fn emptied(&self, packs: &[u64]) -> Vec<u64>;
    /// Frees `ranges` (a pack named by [`Freeing::emptied`] is removed whole), then removes
    /// their pending records. A failure is the backend's to report; the records stay, and the
    /// backend's recovery frees the ranges later.
    fn free(&self, ranges: Vec<FreedRange>);
}

/// What the freeing thread is handed.
enum FreeWork {
    /// Deleted packed blobs' ranges.
    Ranges(Vec<FreedRange>),
    /// Free everything held now (someone waits in [`Freer::settle`]).
    Now,
}

/// Ranges waiting in the freeing thread, by pack: when the pack's first waiting range was handed
/// over, and each range's pending record id, offset and size (24 bytes: a collection of a million
/// blobs holds many of them at once).
type Held = std::collections::BTreeMap<u64, (std::time::Instant, Vec<(u64, u64, u64)>)>;

/// Frees deleted packed blobs' ranges on a thread of its own, so that a delete returns once its
/// synced index write is done rather than after a hole per blob and a sync of the packs (garbage
/// collection's batches of 150 digests each touch about 150 packs: 5,515-6,374 blobs/s on
/// RocksDB with the holes on the delete's path, docs/performance.md). A pack the backend reports
/// emptied is freed at once; the ranges of a pack still alive are held up to `within`, then freed
/// together. Garbage collection deletes in digest order, so each of its batches takes a blob or
/// two from every pack: held, most packs empty within the wait and go whole (or, where nothing
/// counts their blobs, their held ranges join into one hole). The pending records the deletes
/// wrote keep this crash-safe: whatever the thread has not freed, the backend's next open frees.
pub struct Freer {
    queue: Option<std::sync::mpsc::Sender<FreeWork>>,
    /// Ranges handed over and not yet freed, and a signal for when that reaches zero.
    outstanding: std::sync::Arc<(std::sync::Mutex<usize>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Freer {
    /// Starts the thread, which frees ranges through `backend`, holding those of live packs up
    /// to `within`.
    pub fn start(backend: impl Freeing, within: std::time::Duration) -> std::io::Result<Freer> {
        let (queue, rx) = std::sync::mpsc::channel::<FreeWork>();
        let outstanding: std::sync::Arc<(std::sync::Mutex<usize>, std::sync::Condvar)> =
            Default::default();
        let counter = outstanding.clone();
        let thread = std::thread::Builder::new()
            .name("custodian-freer".into())
            .spawn(move || run_freer(&backend, within, &rx, &counter))?;
        Ok(Freer {
            queue: Some(queue),
            outstanding,
            thread: Some(thread),
        })
    }

    /// Hands ranges over to be freed.
    pub fn submit(&self, ranges: Vec<FreedRange>) {
        if ranges.is_empty() {
            return;
        }
        let (lock, _) = &*self.outstanding;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) += ranges.len();
        let count = ranges.len();
        if let Some(Err(_)) = self
            .queue
            .as_ref()
            .map(|queue| queue.send(FreeWork::Ranges(ranges)))
        {
            // The thread is gone (it never ends while the queue is open, so only a panic gets
            // here); the pending records stay, and the backend's next open frees the ranges.
            *lock.lock().unwrap_or_else(|e| e.into_inner()) -= count;
        }
    }

    /// Frees every range handed over so far now, and waits until that is done (or failed).
    pub fn settle(&self) {
        let (lock, done) = &*self.outstanding;
        let mut left = lock.lock().unwrap_or_else(|e| e.into_inner());
        // Asked again at every round, for ranges handed over after the last request.
        while *left > 0 {
            if let Some(queue) = &self.queue {
                let _ = queue.send(FreeWork::Now);
            }
            left = done.wait(left).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Freer {
    /// Frees what is queued and held, then lets the thread end; whatever it holds of the
    /// backend (a database handle) goes with it, so the store can be opened again at once.
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The freeing thread: takes what is handed over, frees what is due, and sleeps until the next
/// held range falls due or more arrives; when the queue closes, frees everything and ends.
fn run_freer(
    backend: &dyn Freeing,
    within: std::time::Duration,
    rx: &std::sync::mpsc::Receiver<FreeWork>,
    counter: &(std::sync::Mutex<usize>, std::sync::Condvar),
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut held = Held::new();
    loop {
        let oldest = held.values().map(|(since, _)| *since).min();
        let first = match oldest {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => {
                rx.recv_timeout((at + within).saturating_duration_since(std::time::Instant::now()))
            }
        };
        let mut everything = false;
        let mut ended = false;
        let mut touched = std::collections::BTreeSet::new();
        let now = std::time::Instant::now();
        let mut take = |work: FreeWork, everything: &mut bool| match work {
            FreeWork::Ranges(ranges) => {
                for (id, at, size) in ranges {
                    touched.insert(at.pack);
                    let (_, waiting) = held.entry(at.pack).or_insert((now, Vec::new()));
                    waiting.push((id, at.offset, size));
                }
            }
            FreeWork::Now => *everything = true,
        };
        match first {
            Ok(work) => take(work, &mut everything),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => ended = true,
        }
        for work in rx.try_iter() {
            take(work, &mut everything);
        }
        let due = if everything || ended {
            std::mem::take(&mut held)
        } else {
            take_due(backend, &mut held, &touched, now, within)
        };
        let ranges: Vec<FreedRange> = due
            .into_iter()
            .flat_map(|(pack, (_, waiting))| {
                waiting
                    .into_iter()
                    .map(move |(id, offset, size)| (id, crate::PackedAt { pack, offset }, size))
            })
            .collect();
        let count = ranges.len();
        if count > 0 {
            backend.free(ranges);
        }
        let (lock, done) = counter;
        let mut left = lock.lock().unwrap_or_else(|e| e.into_inner());
        *left -= count;
        if *left == 0 || everything {
            done.notify_all();
        }
        drop(left);
        if ended {
            return;
        }
    }
}

/// Takes out of `held` the packs due now: those of `touched` (their blobs were just deleted)
/// that the backend reports emptied, and those holding a range handed over `within` ago.
fn take_due(
    backend: &dyn Freeing,
    held: &mut Held,
    touched: &std::collections::BTreeSet<u64>,
    now: std::time::Instant,
    within: std::time::Duration,
) -> Held {
    let mut due = Held::new();
    let touched: Vec<u64> = touched.iter().copied().collect();
    let late: Vec<u64> = held
        .iter()
        .filter(|(_, (since, _))| now.duration_since(*since) >= within)
        .map(|(pack, _)| *pack)
        .collect();
    for pack in backend.emptied(&touched).into_iter().chain(late) {
        if let Some(ranges) = held.remove(&pack) {
            due.insert(pack, ranges);
        }
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend for the freeing thread that records what it is asked to free, and reports
    /// emptied the packs it is told to.
    #[derive(Clone, Default)]
    struct Recording {
        emptied: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
        freed: std::sync::Arc<std::sync::Mutex<Vec<FreedRange>>>,
    }

    impl Freeing for Recording {
        fn emptied(&self, packs: &[u64]) -> Vec<u64> {
            let emptied = self.emptied.lock().unwrap();
            packs
                .iter()
                .copied()
                .filter(|p| emptied.contains(p))
                .collect()
        }
        fn free(&self, ranges: Vec<FreedRange>) {
            self.freed.lock().unwrap().extend(ranges);
        }
    }

    fn range(id: u64, pack: u64) -> FreedRange {
        (
            id,
            crate::PackedAt {
                pack,
                offset: id * PACK_ALIGN,
            },
            100,
        )
    }

    fn freed_ids(backend: &Recording) -> Vec<u64> {
        let mut ids: Vec<u64> = backend.freed.lock().unwrap().iter().map(|r| r.0).collect();
        ids.sort_unstable();
        ids
    }

    /// Waits (up to 5 s) until `backend` has freed `n` ranges.
    fn wait_for(backend: &Recording, n: usize) {
        for _ in 0..500 {
            if backend.freed.lock().unwrap().len() >= n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn the_freer_holds_live_packs_frees_emptied_ones_at_once_and_everything_when_asked() {
        let backend = Recording::default();
        let freer = Freer::start(backend.clone(), std::time::Duration::from_secs(3600)).unwrap();
        freer.submit(vec![range(1, 10), range(2, 20)]);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(freed_ids(&backend).is_empty(), "live packs' ranges wait");

        // Pack 20 empties: its next delete has all of its held ranges freed at once.
        backend.emptied.lock().unwrap().push(20);
        freer.submit(vec![range(3, 20)]);
        wait_for(&backend, 2);
        assert_eq!(freed_ids(&backend), vec![2, 3]);

        freer.submit(vec![range(4, 30)]);
        freer.settle();
        assert_eq!(
            freed_ids(&backend),
            vec![1, 2, 3, 4],
            "asked, it frees everything"
        );

        freer.submit(vec![range(5, 40)]);
        drop(freer);
        assert_eq!(
            freed_ids(&backend),
            vec![1, 2, 3, 4, 5],
            "closing frees what it held"
        );
    }

    #[test]
    fn the_freer_frees_a_held_range_once_its_time_is_up() {
        let backend = Recording::default();
        let freer = Freer::start(backend.clone(), std::time::Duration::from_millis(200)).unwrap();
        freer.submit(vec![range(1, 10)]);
        assert!(freed_ids(&backend).is_empty());
        wait_for(&backend, 1);
        assert_eq!(freed_ids(&backend), vec![1]);
        drop(freer);
    }

    #[test]
    fn blobs_start_on_boundaries_and_padding_fills_the_gap() {
        let (offsets, len) = layout([4096, 1, 0, 5000]);
        assert_eq!(offsets, vec![0, 4096, 8192, 8192]);
        assert_eq!(len, 8192 + 8192);
        let blobs = [
            Bytes::from(vec![1u8; 4096]),
            Bytes::from(vec![2u8; 1]),
            Bytes::new(),
            Bytes::from(vec![3u8; 5000]),
        ];
        let bytes = pack_bytes(&blobs.iter().collect::<Vec<_>>());
        assert_eq!(bytes.len() as u64, len);
        assert!(bytes[..4096].iter().all(|b| *b == 1));
        assert_eq!(bytes[4096], 2);
        assert!(bytes[4097..8192].iter().all(|b| *b == 0));
        assert!(bytes[8192..13192].iter().all(|b| *b == 3));
        assert!(bytes[13192..].iter().all(|b| *b == 0));
    }

    /// A written pack holds its blobs where [`layout`] says; an existing pack is never
    /// overwritten.
    #[test]
    fn a_written_pack_holds_the_layout_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = [Bytes::from(vec![5u8; 5000]), Bytes::from(vec![6u8; 4096])];
        let refs: Vec<&Bytes> = blobs.iter().collect();
        let path = dir.path().join("p");
        write_pack(&path, &refs).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), pack_bytes(&refs));
        // More pieces (blobs and their padding) than one gathered write takes, of many sizes,
        // over more than one direct write's chunk; written directly and through the page cache.
        let many: Vec<Bytes> = (0..1_500usize)
            .map(|i| Bytes::from(vec![(i % 251) as u8; (i * 37) % 5_000]))
            .collect();
        let many_refs: Vec<&Bytes> = many.iter().collect();
        for direct in [true, false] {
            let many_path = dir.path().join(format!("many-{direct}"));
            write_pack_with(&many_path, &many_refs, direct).unwrap();
            assert_eq!(std::fs::read(&many_path).unwrap(), pack_bytes(&many_refs));
        }
        let (step, err) = write_pack(&path, &refs[..1]).unwrap_err();
        assert_eq!(
            (step, err.kind()),
            ("write", std::io::ErrorKind::AlreadyExists)
        );
        assert_eq!(std::fs::read(&path).unwrap(), pack_bytes(&refs));
    }

    #[test]
    fn a_pack_is_written_whole_where_direct_io_is_refused_or_emulated() {
        // tmpfs either refuses O_DIRECT (older kernels, after creating the file) or takes it
        // through its page cache; either way the pack must come out whole, and only once.
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let blobs: Vec<Bytes> = (0..300usize)
            .map(|i| Bytes::from(vec![(i % 13) as u8 + 1; 4096 + i * 11]))
            .collect();
        let refs: Vec<&Bytes> = blobs.iter().collect();
        let path = dir.path().join("p");
        write_pack(&path, &refs).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), pack_bytes(&refs));
        let (step, err) = write_pack(&path, &refs[..1]).unwrap_err();
        assert_eq!(
            (step, err.kind()),
            ("write", std::io::ErrorKind::AlreadyExists)
        );
    }

    #[test]
    fn adjacent_ranges_are_freed_as_one() {
        assert_eq!(
            coalesce(&[
                (8192, 100),
                (0, 4096),
                (4096, 4000),
                (20480, 0),
                (16384, 4096)
            ]),
            vec![(0, 12288), (16384, 4096)]
        );
        assert_eq!(coalesce(&[(0, 8192), (4096, 4096)]), vec![(0, 8192)]);
        assert!(coalesce(&[]).is_empty());
    }

    /// Freeing every blob of a pack removes it; freeing some keeps the others' bytes where they
    /// were.
    #[test]
    fn freeing_keeps_neighbours_and_removes_an_empty_pack() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = [
            Bytes::from(vec![7u8; 4096]),
            Bytes::from(vec![8u8; 100]),
            Bytes::from(vec![9u8; 8192]),
        ];
        let path = dir.path().join("p");
        std::fs::write(&path, pack_bytes(&blobs.iter().collect::<Vec<_>>())).unwrap();
        let removed = free_packed(dir.path(), &[(path.clone(), vec![(4096, 100)])]).unwrap();
        assert!(removed.is_empty());
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[..4096].iter().all(|b| *b == 7));
        assert!(
            bytes[4096..8192].iter().all(|b| *b == 0),
            "the freed blob's bytes are gone"
        );
        assert!(bytes[8192..].iter().all(|b| *b == 9));

        let removed =
            free_packed(dir.path(), &[(path.clone(), vec![(0, 4096), (8192, 8192)])]).unwrap();
        assert_eq!(removed, vec![path.clone()]);
        assert!(!path.exists());
        // Freeing ranges of a pack already removed is not an error.
        let removed = free_packed(dir.path(), &[(path, vec![(0, 4096)])]).unwrap();
        assert!(removed.is_empty());
    }
}
