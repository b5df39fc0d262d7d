//! What the end-to-end tests and the benchmarks share, so that each exists once: the harness that
//! runs a real `custodian serve` on loopback ([`Daemon`]), deterministic test data, the daemon's
//! memory as `/proc` reports it, a moto S3 server ([`Moto`]) and an Azurite blob service
//! ([`Azurite`]), latency percentiles and a directory that removes itself.
//!
//! Nothing here is shipped: only the `e2e` and `load` tests and the `custodian-bench` binary
//! depend on this crate.

mod azurite;
mod cloud;
mod daemon;
mod moto;
mod postgres;
mod proxy;
mod tlog;
mod witness;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use azurite::Azurite;
pub use cloud::Cloud;
pub use daemon::{Daemon, HarnessError, binary, free_port, serve_refuses, write_log_key};
pub use moto::Moto;
pub use postgres::Postgres;
pub use proxy::Proxy;
pub use tlog::{TestLog, signature_lines};
pub use witness::WitnessProcess;

/// `serve`'s flags for blobs at the object store `url` reached with `options`
/// (`--storage URL`, then one `--storage-option KEY=VALUE` each), as a test server's
/// `options()` gives them.
pub fn storage_args(url: &str, options: &[(String, String)]) -> Vec<String> {
    let mut args = vec!["--storage".to_string(), url.to_string()];
    for (key, value) in options {
        args.extend(["--storage-option".into(), format!("{key}={value}")]);
    }
    args
}

/// Deterministic, incompressible test bytes (the storage conformance suite's generator).
pub fn pattern(seed: u64, len: usize) -> bytes::Bytes {
    custodian_storage::conformance::pattern(seed, len)
}

/// Writes `size` incompressible bytes to `path` and syncs them, so every measurement that follows
/// starts from the same page-cache state.
pub fn write_test_file(path: &Path, size: u64) -> std::io::Result<()> {
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < size {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = (size - written).min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        written += n as u64;
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// A memory figure of a process from `/proc/PID/status`, in bytes: `VmHWM` is the peak resident
/// set, `VmRSS` the current one. `None` when the process is gone or the field is missing.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    status_bytes(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        field,
    )
}

/// One memory figure, in bytes, out of the text of a `/proc/PID/status`.
fn status_bytes(status: &str, field: &str) -> Option<u64> {
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The peak resident memory (`VmHWM`) of a process, in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    proc_status_bytes(pid, "VmHWM")
}

/// The current resident memory (`VmRSS`) of a process, in bytes.
pub fn current_rss(pid: u32) -> Option<u64> {
    proc_status_bytes(pid, "VmRSS")
}

/// A process's current resident memory (`VmRSS`) and the anonymous part of it (`RssAnon`: heap,
/// stacks and other memory that belongs to no file), in bytes, read at the same instant. The
/// rest is pages of files mapped in, chiefly the executable's own code, which cannot grow past
/// the size of the files.
pub fn current_rss_and_anon(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((
        status_bytes(&status, "VmRSS")?,
        status_bytes(&status, "RssAnon")?,
    ))
}

/// The `p` quantile (0..=1) of sorted latencies, in milliseconds; 0 for none.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

/// Removes a directory when dropped.
#[derive(Debug)]
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&sorted, 0.0), 1.0);
        assert_eq!(percentile_ms(&sorted, 0.5), 51.0);
        assert_eq!(percentile_ms(&sorted, 0.99), 99.0);
        assert_eq!(percentile_ms(&sorted, 1.0), 100.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn this_process_has_a_resident_set_and_a_peak_at_least_as_large() {
        let pid = std::process::id();
        let now = current_rss(pid).expect("VmRSS");
        let peak = peak_rss(pid).expect("VmHWM");
        assert!(now > 0 && peak >= now, "rss {now}, peak {peak}");
        assert_eq!(proc_status_bytes(pid, "NoSuchField"), None);
    }

    #[test]
    fn the_anonymous_part_grows_with_the_heap_and_stays_within_the_resident_set() {
        let pid = std::process::id();
        let (_, before) = current_rss_and_anon(pid).expect("VmRSS and RssAnon");
        // 64 MiB written to, so every page is resident and none belongs to a file.
        let held = std::hint::black_box(vec![1u8; 64 << 20]);
        let (rss, after) = current_rss_and_anon(pid).expect("VmRSS and RssAnon");
        assert!(
            after >= before + (60 << 20),
            "anonymous {before} -> {after}"
        );
        assert!(after <= rss, "anonymous {after}, resident {rss}");
        drop(std::hint::black_box(held));
    }
}
