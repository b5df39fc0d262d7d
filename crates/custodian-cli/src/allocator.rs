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
