//! The memory allocator settings of the daemon and of the CLI's transfers.
//!
//! glibc's allocator keeps up to eight arenas per core and, after the first large buffer is
//! freed, stops giving large buffers their own mappings. Under the daemon's load (1 MiB blocks,
//! 256 KiB messages and RocksDB's 1 MiB memtable blocks, freed on many threads) that leaves
//! freed memory scattered over many arenas where it can neither be reused by other threads nor
//! returned: `custodian-bench load` measured resident memory 30 to 50 MiB above what was
//! allocated, and still rising after five minutes. Two arenas, and buffers over 2 MiB always
//! mapped on their own (so freeing one returns it), keep resident memory close to the live heap.
//!
//! The threshold was 256 KiB. That mapped every 1 MiB block and message afresh, and a fresh
//! mapping costs a page fault and a zeroed page per 4 KiB: serving 1 GiB took 2.6 s of the
//! daemon's CPU, against 0.8 s with the blocks reused from the heap (docs/performance.md). Now
//! that large blobs no longer pass through RocksDB's memtables, the same five-minute load stays
//! flat with 1 MiB buffers reused (docs/reliability.md).
//!
//! Freed memory at the top of a heap is returned once more than 8 MiB of it is free. At 4 MiB,
//! an upload that keeps a few 1 MiB receive buffers and batches in flight gave back and faulted
//! in the same pages again and again: a 1 GiB put took 2.1-2.4 s with 1.1-1.2 s of the daemon's
//! CPU in the kernel, against 1.9 s and 0.8-0.9 s at 16 MiB. But 16 MiB kept up to that much
//! free in each of the two arenas, and a store holding a million small blobs then peaked at
//! 117-129 MiB, at and over the 128 MiB budget; at 8 MiB the put is as fast (1.72-2.02 s against
//! 1.74-1.77 s in the same hour) and that store peaks at 112-116 MiB (docs/performance.md).
//!
//! `custodian datapack` commands run with the same settings: a verified 1 GiB
//! download over REST (reqwest's body chunks, the hash and the file writes) cost the CLI
//! 1.96-2.16 s of CPU with glibc's defaults and 1.54-1.78 s with these, and took 1.81-2.04 s
//! against 1.53-1.68 s (three runs of each, alternating, docs/performance.md); the freed receive
//! buffers were returned and faulted in again. So do `custodian blob` and `custodian install`:
//! once a gRPC get kept the HTTP/2 frames it receives instead of copying them
//! (`custodian_client::get`), those frames' buffers were the CLI's largest cost, a third of its
//! samples page faults on memory glibc had just given back; with these settings, 3% of them.
//!
//! glibc reads these settings from `GLIBC_TUNABLES` only when a process starts, so `custodian
//! serve` and the CLI's transfers re-execute themselves once with them set. Whoever sets
//! `GLIBC_TUNABLES` themselves keeps their own settings.
//!
//! The 8 MiB still cost a streamed put dearly: the buffers its bytes arrive in were given back
//! and faulted in again by the hundred megabytes. So buffers of 128 KiB to 4 MiB no longer come
//! from glibc's heaps at all: [`Pooled`] maps them itself and keeps up to 8 MiB of freed ones
//! for reuse, a bound of its own that no heap's top can stretch. This module is the one place in
//! this crate allowed `unsafe` code (docs/ARCHITECTURE.md lists the other, in
//! `custodian-rocksdb`): a global allocator cannot be written without it.

/// The glibc tunables the daemon and the CLI's transfers run with (see the module
/// documentation for why).
pub const TUNABLES: &str = "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=2097152:glibc.malloc.trim_threshold=8388608";

/// Re-executes this process with [`TUNABLES`] unless `GLIBC_TUNABLES` is already set. Returns
/// only if the settings are in place, not applicable, or the re-execution failed (then the
/// process runs with glibc's defaults and says so).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune() {
    use std::os::unix::process::CommandExt as _;

    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => {
            eprintln!(
                "warning: cannot find this executable ({err}); running with glibc's default allocator settings"
            );
            return;
        }
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    // `exec` replaces this process (same pid, same open files) and returns only on failure.
    let err = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", TUNABLES)
        .exec();
    eprintln!(
        "warning: cannot re-execute {} with GLIBC_TUNABLES={TUNABLES} ({err}); running with glibc's default allocator settings",
        exe.display()
    );
}

/// Other platforms' allocators are left as they are.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}

/// The process's allocator: glibc's (with [`TUNABLES`]), except for buffers of [`POOL_MIN`] to
/// [`POOL_MAX`] bytes, which get mappings of their own, rounded up to [`POOL_STEP`], and of
/// which up to [`POOL_KEPT`] bytes ([`TRANSFER_KEPT`] in the CLI's transfers) are kept when
/// freed and handed out again: the ones freed last, so that what is kept follows the sizes in
/// use.
///
/// Those are the buffers streamed bytes arrive in: HTTP/2 frames of up to 1 MiB, an HTTP/1.1
/// body's reads, a get's blocks. From glibc's heap, with 8 MiB free at its top returned (see the
/// module documentation for why not more), a streamed 1 GiB put gave back and faulted in again
/// about 256 MiB of them: 60,000-80,000 page faults and zeroed pages, 0.15-0.2 s of the daemon's
/// CPU (docs/performance-history.md, "Receive buffers kept for reuse"). Kept here instead, they
/// cost no fault when reused, and what is kept idle is bounded on its own, whatever the heaps do.
pub struct Pooled;

/// The smallest buffer [`Pooled`] maps itself.
const POOL_MIN: usize = 128 << 10;

/// The largest buffer [`Pooled`] maps itself; larger ones are glibc's (which maps them too).
const POOL_MAX: usize = 4 << 20;

/// [`Pooled`] rounds its buffers up to a multiple of this, so that buffers of nearly the same
/// size (a frame's payload and its header) are the same mapping.
const POOL_STEP: usize = 64 << 10;

/// How many bytes of freed buffers [`Pooled`] keeps at most in the daemon: about what one
/// upload keeps in flight (HTTP/2's window and a batch being written). More would be memory
/// the daemon holds idle against its 128 MiB budget.
const POOL_KEPT: usize = 8 << 20;

/// How many bytes of freed buffers [`Pooled`] keeps at most in the CLI's transfers (set by
/// [`keep_up_to`]): what a verified get holds in flight, its HTTP/2 stream window (8 MiB) and
/// the hashing thread's queue (16 frames of up to 1 MiB). A get's frames are freed as the hash
/// gets through them and new ones arrive in bursts, so with 8 MiB kept the rest of each burst
/// was mapped afresh: 44,000-65,000 page faults and 0.92-0.97 s of the CLI's CPU for a 1 GiB
/// get by its sha256 digest, against 11,000-15,000 and 0.85-0.90 s with 32 MiB
/// (docs/performance-history.md, fiftieth session). A CLI process is short-lived and has no
/// memory budget to keep.
pub const TRANSFER_KEPT: usize = 32 << 20;

/// How many freed buffers [`Pooled`] keeps at most.
const POOL_SLOTS: usize = POOL_KEPT / POOL_MIN;

/// The freed buffers [`Pooled`] keeps: `(address, mapped length)`, the first `count` in use,
/// oldest first.
struct Kept {
    blocks: [(usize, usize); POOL_SLOTS],
    count: usize,
    bytes: usize,
    /// The most bytes kept: [`POOL_KEPT`] unless [`keep_up_to`] said otherwise.
    limit: usize,
}

// A buffer of any pooled size must fit in the bound, or keeping it could never make room.
const _: () = assert!(POOL_MAX <= POOL_KEPT);

impl Kept {
    const EMPTY: Kept = Kept {
        blocks: [(0, 0); POOL_SLOTS],
        count: 0,
        bytes: 0,
        limit: POOL_KEPT,
    };

    /// Takes the kept buffer of exactly `len` mapped bytes freed last, if there is one.
    fn take(&mut self, len: usize) -> Option<usize> {
        let count = self.count;
        let found = self.blocks[..count].iter().rposition(|&(_, l)| l == len)?;
        let (address, _) = self.blocks[found];
        self.blocks.copy_within(found + 1..count, found);
        self.count -= 1;
        self.bytes -= len;
        Some(address)
    }

    /// Keeps a freed buffer, making room by dropping the buffers freed longest ago into
    /// `evicted` (so that what is kept is of the sizes in use now, never a stale set that
    /// fills the bound for good); returns how many were dropped there.
    fn keep(
        &mut self,
        address: usize,
        len: usize,
        evicted: &mut [(usize, usize); POOL_SLOTS],
    ) -> usize {
        let mut gone = 0;
        while self.count == POOL_SLOTS || self.bytes + len > self.limit {
            let oldest = self.blocks[0];
            let count = self.count;
            self.blocks.copy_within(1..count, 0);
            self.count -= 1;
            self.bytes -= oldest.1;
            evicted[gone] = oldest;
            gone += 1;
        }
        let count = self.count;
        self.blocks[count] = (address, len);
        self.count += 1;
        self.bytes += len;
        gone
    }
}

static KEPT: std::sync::Mutex<Kept> = std::sync::Mutex::new(Kept::EMPTY);

/// Keeps up to `bytes` of freed buffers from now on (at least one buffer of the largest pooled
/// size; the slots still bound how many), in place of the daemon's [`POOL_KEPT`]. Called once,
/// before a transfer starts; buffers kept beyond a lower bound go as the next ones are freed.
pub fn keep_up_to(bytes: usize) {
    kept().limit = bytes.max(POOL_MAX);
}

/// The mapped length of a buffer laid out as `layout` if [`Pooled`] maps it itself. Mappings
/// start on a page, so any alignment up to a page is met.
fn pooled(layout: std::alloc::Layout) -> Option<usize> {
    (layout.size() >= POOL_MIN && layout.size() <= POOL_MAX && layout.align() <= 4096)
        .then(|| layout.size().next_multiple_of(POOL_STEP))
}

fn kept() -> std::sync::MutexGuard<'static, Kept> {
    // Nothing under this lock can panic; a poisoned lock still guards whole entries.
    KEPT.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A kept buffer of exactly `len` mapped bytes, if there is one.
fn take_kept(len: usize) -> Option<*mut u8> {
    kept().take(len).map(|address| address as *mut u8)
}

/// Keeps a freed buffer, and unmaps the ones that made room for it once the lock is released
/// (an unmapping costs the other cores a TLB flush; nobody should wait for it on the lock).
///
/// # Safety
/// `ptr` and `len` are a live mapping of [`map`] that nothing refers to any more.
unsafe fn keep(ptr: *mut u8, len: usize) {
    let mut evicted = [(0usize, 0usize); POOL_SLOTS];
    let gone = kept().keep(ptr as usize, len, &mut evicted);
    for &(address, len) in &evicted[..gone] {
        // SAFETY: every kept buffer is a mapping of `map` that only the pool refers to.
        unsafe { unmap(address as *mut u8, len) }
    }
}

/// A fresh mapping of `len` bytes (zeroed by the kernel), or null.
fn map(len: usize) -> *mut u8 {
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: a new anonymous private mapping at an address the kernel picks aliases nothing.
    unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    }
    .map_or(std::ptr::null_mut(), |ptr| ptr.cast())
}

/// Unmaps a buffer [`map`] made.
///
/// # Safety
/// `ptr` and `len` are a live mapping of [`map`] that nothing refers to any more.
unsafe fn unmap(ptr: *mut u8, len: usize) {
    // SAFETY: the caller's promise. A failure leaves the mapping in place: memory not given
    // back, never memory in use.
    let _ = unsafe { rustix::mm::munmap(ptr.cast(), len) };
}

// SAFETY: every buffer is either glibc's (alloc and free through `System` with the same layout)
// or a mapping of its own whose length follows from the layout alone, so `dealloc` and `realloc`
// find what `alloc` made; a kept mapping is handed to one caller at a time under the lock.
unsafe impl std::alloc::GlobalAlloc for Pooled {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        match pooled(layout) {
            None => unsafe { std::alloc::System.alloc(layout) },
            Some(len) => take_kept(len).unwrap_or_else(|| map(len)),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        match pooled(layout) {
            None => unsafe { std::alloc::System.alloc_zeroed(layout) },
            Some(len) => match take_kept(len) {
                // SAFETY: the kept mapping is `len >= layout.size()` bytes, and now the caller's.
                Some(ptr) => unsafe {
                    std::ptr::write_bytes(ptr, 0, layout.size());
                    ptr
                },
                None => map(len),
            },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        match pooled(layout) {
            None => unsafe { std::alloc::System.dealloc(ptr, layout) },
            // SAFETY: `alloc` mapped `len` bytes at `ptr` for this layout, and it is freed.
            Some(len) => unsafe { keep(ptr, len) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller promises `new_size`, rounded up to the alignment, does not overflow.
        let new_layout =
            unsafe { std::alloc::Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (pooled(layout), pooled(new_layout)) {
            (None, None) => unsafe { std::alloc::System.realloc(ptr, layout, new_size) },
            (Some(old), Some(new)) if old == new => ptr,
            _ => {
                // SAFETY: `new_layout` is valid (see above) and not zero-sized.
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: both are live and distinct; the copy stays within the smaller.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc as _, Layout};

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).expect("layout")
    }

    #[test]
    fn buffers_keep_their_bytes_through_reallocation_and_reuse() {
        // Sizes below, at, inside and above the pooled range, grown and shrunk across it.
        let sizes = [
            1000,
            POOL_MIN - 1,
            POOL_MIN,
            POOL_MIN + 1,
            (1 << 20) + 9,
            POOL_MAX,
            POOL_MAX + 1,
            3 << 20,
            100,
        ];
        for round in 0..3 {
            let mut size = sizes[0];
            // SAFETY: each pointer is used within its layout and freed once, with that layout.
            unsafe {
                let mut ptr = Pooled.alloc(layout(size));
                assert!(!ptr.is_null());
                std::ptr::write_bytes(ptr, 0xA5, size);
                for &next in &sizes[1..] {
                    ptr = Pooled.realloc(ptr, layout(size), next);
                    assert!(!ptr.is_null());
                    let kept = std::slice::from_raw_parts(ptr, size.min(next));
                    assert!(
                        kept.iter().all(|&b| b == 0xA5),
                        "round {round}: {size} -> {next} lost bytes"
                    );
                    std::ptr::write_bytes(ptr, 0xA5, next);
                    size = next;
                }
                Pooled.dealloc(ptr, layout(size));
            }
        }
    }

    #[test]
    fn a_reused_buffer_asked_for_zeroed_is_zeroed() {
        let size = (1 << 20) + 9;
        // SAFETY: each pointer is used within its layout and freed once, with that layout.
        unsafe {
            for _ in 0..4 {
                let dirty = Pooled.alloc(layout(size));
                std::ptr::write_bytes(dirty, 0xFF, size);
                Pooled.dealloc(dirty, layout(size));
                let clean = Pooled.alloc_zeroed(layout(size));
                let bytes = std::slice::from_raw_parts(clean, size);
                assert!(
                    bytes.iter().all(|&b| b == 0),
                    "a kept buffer came back dirty"
                );
                Pooled.dealloc(clean, layout(size));
            }
        }
    }

    #[test]
    fn no_buffer_is_handed_to_two_threads_at_once() {
        // Eight threads allocate, fill, check and free buffers of pooled sizes; a buffer handed
        // out twice would show another thread's bytes.
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut seed = u64::from(t) * 7919 + 1;
                    for _ in 0..300 {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let size = POOL_MIN + (seed >> 33) as usize % (POOL_MAX - POOL_MIN);
                        // SAFETY: the pointer is used within its layout and freed once, with it.
                        unsafe {
                            let ptr = Pooled.alloc(layout(size));
                            assert!(!ptr.is_null());
                            std::ptr::write_bytes(ptr, t, size);
                            std::thread::yield_now();
                            let bytes = std::slice::from_raw_parts(ptr, size);
                            assert!(bytes.iter().all(|&b| b == t), "thread {t}'s buffer changed");
                            Pooled.dealloc(ptr, layout(size));
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a thread failed");
        }
    }

    #[test]
    fn the_buffers_freed_longest_ago_make_room_and_the_last_freed_is_taken_first() {
        let mut kept = Kept::EMPTY;
        let mut evicted = [(0, 0); POOL_SLOTS];
        let mib = 1 << 20;
        // Eight 1 MiB buffers fill the bound.
        for i in 0..8 {
            assert_eq!(kept.keep(0x1000 * (i + 1), mib, &mut evicted), 0);
        }
        assert_eq!(kept.bytes, POOL_KEPT);
        // A 2 MiB one makes room by dropping the two freed first, not by being turned away.
        assert_eq!(kept.keep(0x10_0000, 2 * mib, &mut evicted), 2);
        assert_eq!(&evicted[..2], &[(0x1000, mib), (0x2000, mib)]);
        assert_eq!(kept.bytes, POOL_KEPT);
        // The last freed of a size is taken first; a size not kept is not found.
        assert_eq!(kept.take(mib), Some(0x8000));
        assert_eq!(kept.take(2 * mib), Some(0x10_0000));
        assert_eq!(kept.take(3 * mib), None);
        assert_eq!(kept.count, 5);
        assert_eq!(kept.bytes, 5 * mib);
        // A higher bound keeps more; the slots still bound how many.
        let mut more = Kept::EMPTY;
        more.limit = TRANSFER_KEPT;
        let dropped: usize = (0..TRANSFER_KEPT / mib + 3)
            .map(|i| more.keep(0x1000 * (i + 1), mib, &mut evicted))
            .sum();
        assert_eq!((more.bytes, dropped), (TRANSFER_KEPT, 3));
        // The slots bound what is kept too: more small buffers push out the oldest.
        let mut small = Kept::EMPTY;
        let dropped: usize = (0..POOL_SLOTS + 5)
            .map(|i| small.keep(i + 1, POOL_MIN, &mut evicted))
            .sum();
        assert_eq!(
            (small.count, dropped, small.blocks[0].0),
            (POOL_SLOTS, 5, 6)
        );
    }

    #[test]
    fn freed_buffers_are_kept_up_to_the_bound_and_reused() {
        let size = 1 << 20;
        let many = 2 * POOL_KEPT / size;
        // SAFETY: each pointer is used within its layout and freed once, with that layout.
        unsafe {
            let first: Vec<usize> = (0..many)
                .map(|_| Pooled.alloc(layout(size)) as usize)
                .collect();
            for &ptr in &first {
                Pooled.dealloc(ptr as *mut u8, layout(size));
                assert!(kept().bytes <= POOL_KEPT, "kept more than the bound");
            }
            // What was kept is handed out again (other tests may take some meanwhile).
            let again = Pooled.alloc(layout(size));
            let reused = first.contains(&(again as usize));
            Pooled.dealloc(again, layout(size));
            assert!(reused || kept().count == 0, "a kept buffer was not reused");
        }
    }
}
