//! `custodian-bench limits`: what this machine can do at most, measured in the same run as the
//! scenarios so each scenario is read as a ratio to its own limit.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use custodian_testkit::RemoveOnDrop;

/// Options of `custodian-bench limits`.
#[derive(Args)]
pub struct LimitsArgs {
    /// Where to measure the disk and RocksDB (default: ~/.cache/custodian/bench, the daemon's
    /// default disk)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

/// The machine's limits.
#[derive(Serialize, Clone, Debug)]
pub struct Limits {
    /// SHA-256 on one core (sha2, with SHA-NI where the CPU has it), GiB/s.
    pub sha256_gib_per_s: f64,
    /// BLAKE3 on one core (SIMD, no threads), GiB/s.
    pub blake3_gib_per_s: f64,
    /// Writing 1 GiB sequentially from memory, then fsync, GiB/s.
    pub disk_write_fsync_gib_per_s: f64,
    /// A 4 KiB write + fdatasync, median and p99, ms.
    pub fsync_median_ms: f64,
    /// The same, p99.
    pub fsync_p99_ms: f64,
    /// RocksDB: one writer, 4 KiB values, each put synced: puts/s.
    pub rocksdb_synced_puts_per_s: f64,
    /// RocksDB: 64 writers, 4 KiB values, each put synced (RocksDB groups them): puts/s.
    pub rocksdb_group_synced_puts_per_s: f64,
    /// RocksDB: those 64 writers' p99 latency of one synced put, ms (absent from reports before
    /// it was measured).
    #[serde(default)]
    pub rocksdb_group_synced_put_p99_ms: Option<f64>,
    /// RocksDB: batches of 1,000 values of 4 KiB, each batch synced: values/s.
    pub rocksdb_batched_values_per_s: f64,
    /// RocksDB: one batched read of 10,000 present digest-shaped keys (the faster of MultiGet
    /// and the batched read over sorted keys), median ms.
    pub rocksdb_multi_get_10k_ms: f64,
    /// Ed25519 signature verifications per second on one core (every attested run needs one).
    pub ed25519_verifies_per_s: f64,
}

fn gib_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / took.as_secs_f64()
}

/// SHA-256 and BLAKE3 on one core from memory, GiB/s each: the best of three passes over 256 MiB.
pub(crate) fn hashing() -> (f64, f64) {
    let buf: Vec<u8> = (0..256usize << 20).map(|i| (i * 31 % 251) as u8).collect();
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let t = Instant::now();
        let d = sha2::Sha256::digest(&buf);
        let sha = t.elapsed();
        std::hint::black_box(d);
        let t = Instant::now();
        let d = blake3::Hasher::new().update(&buf).finalize();
        let b3 = t.elapsed();
        std::hint::black_box(d);
        best = (best.0.min(sha.as_secs_f64()), best.1.min(b3.as_secs_f64()));
    }
    (
        gib_per_s(buf.len(), Duration::from_secs_f64(best.0)),
        gib_per_s(buf.len(), Duration::from_secs_f64(best.1)),
    )
}

fn disk(dir: &Path) -> anyhow::Result<(f64, f64, f64)> {
    let path = dir.join("disk-probe.bin");
    let block = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    {
        let mut f = std::fs::File::create(&path)?;
        for _ in 0..1024 {
            f.write_all(&block)?;
        }
        f.sync_all()?;
    }
    let sequential = gib_per_s(1 << 30, t.elapsed());
    std::fs::remove_file(&path)?;
    let mut f = std::fs::File::create(&path)?;
    let small = [0x5au8; 4096];
    let mut times = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        f.write_all(&small)?;
        f.sync_data()?;
        times.push(t.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    times.sort();
    let ms = |p: f64| times[((times.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    Ok((sequential, ms(0.5), ms(0.99)))
}

/// RocksDB's floors on one disk: synced puts per second by one writer and by 64 (with the 64
/// writers' p99 put latency in ms), values per second in synced batches of 1,000, and the median
/// ms of one batched read of 10,000 keys.
struct Probe {
    single: f64,
    group: f64,
    group_p99_ms: f64,
    batched: f64,
    multi_get_ms: f64,
}

fn rocksdb(dir: &Path) -> anyhow::Result<Probe> {
    let path = dir.join("rocksdb-probe");
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // The daemon's index reads sorted batches with this on (a memtable search that starts where
    // the key before was found), so the floor of those reads has it too.
    custodian_rocksdb::batch_memtable_lookups(&mut opts);
    let db = std::sync::Arc::new(rocksdb::DB::open_cf(&opts, &path, ["meta"])?);
    let value = vec![0xa5u8; 4096];
    let mut synced = rocksdb::WriteOptions::default();
    synced.set_sync(true);
    // One writer, each put synced.
    let t = Instant::now();
    for i in 0..2000u32 {
        db.put_opt(i.to_be_bytes(), &value, &synced)?;
    }
    let single = 2000.0 / t.elapsed().as_secs_f64();
    // 64 writers: RocksDB forms write groups that share one WAL sync. Each put's latency is
    // kept too: the appenders' p99 target is read beside what RocksDB's own writers reach.
    let t = Instant::now();
    let threads: Vec<_> = (0..64u32)
        .map(|w| {
            let db = db.clone();
            let value = value.clone();
            std::thread::spawn(move || -> Result<Vec<Duration>, rocksdb::Error> {
                let mut synced = rocksdb::WriteOptions::default();
                synced.set_sync(true);
                let mut latencies = Vec::with_capacity(200);
                for i in 0..200u32 {
                    let put = Instant::now();
                    db.put_opt(
                        [w.to_be_bytes(), i.to_be_bytes(), [1; 4]].concat(),
                        &value,
                        &synced,
                    )?;
                    latencies.push(put.elapsed());
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(64 * 200);
    for t in threads {
        latencies.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a writer panicked"))??,
        );
    }
    let group = 64.0 * 200.0 / t.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let group_p99_ms = custodian_testkit::percentile_ms(&latencies, 0.99);
    // Batches of 1,000, each synced.
    let t = Instant::now();
    for b in 0..10u32 {
        let mut batch = rocksdb::WriteBatch::default();
        for i in 0..1000u32 {
            batch.put([b.to_be_bytes(), i.to_be_bytes(), [2; 4]].concat(), &value);
        }
        db.write_opt(batch, &synced)?;
    }
    let batched = 10_000.0 / t.elapsed().as_secs_f64();
    // One batched read of 10,000 present 32-byte keys with 120-byte values (the shape of blob
    // metadata): the storage floor of a FindMissing of 10,000 digests. The keys are SHA-256
    // digests, as the daemon's are: sequential keys would share cache lines in the memtable and
    // make the floor lower than any real query can reach. Three batched reads are tried and the
    // fastest counts: the C API's two (the per-key MultiGet, and the batched one over sorted
    // keys) and the daemon's own (`custodian_rocksdb::read_sorted`: the batched one without an
    // allocation per key).
    let mut keys: Vec<[u8; 32]> = (0..10_000u32)
        .map(|i| sha2::Sha256::digest(i.to_be_bytes()).into())
        .collect();
    let cf = db.cf_handle("meta").context("the probe's column family")?;
    let mut batch = rocksdb::WriteBatch::default();
    for k in &keys {
        batch.put_cf(&cf, k, [0x11u8; 120]);
    }
    db.write_opt(batch, &synced)?;
    keys.sort_unstable();
    let mut reads = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..60 {
        let t = Instant::now();
        let found = match round % 3 {
            0 => db
                .multi_get_cf(keys.iter().map(|k| (&cf, k)))
                .into_iter()
                .filter(|r| matches!(r, Ok(Some(_))))
                .count(),
            1 => db
                .batched_multi_get_cf(&cf, keys.iter(), true)
                .into_iter()
                .filter(|r| matches!(r, Ok(Some(_))))
                .count(),
            _ => {
                let mut found = 0;
                custodian_rocksdb::read_sorted(&db, cf, &keys, "limits", |_, _| {
                    found += 1;
                    Ok(())
                })?;
                found
            }
        };
        reads[round % 3].push(t.elapsed());
        anyhow::ensure!(
            found == keys.len(),
            "multi_get found {found} of {}",
            keys.len()
        );
    }
    let median = |mut times: Vec<Duration>| {
        times.sort();
        times[times.len() / 2].as_secs_f64() * 1000.0
    };
    let [per_key, batched_read, sorted_read] = reads;
    let multi_get_ms = median(per_key)
        .min(median(batched_read))
        .min(median(sorted_read));
    drop(db);
    let _ = rocksdb::DB::destroy(&opts, &path);
    Ok(Probe {
        single,
        group,
        group_p99_ms,
        batched,
        multi_get_ms,
    })
}

/// RocksDB's floors measured beside one timed row, on the same disk: just before the row's timed
/// calls and just after them, and averaged. A run's first limits are minutes older than its last
/// rows, and this VM's disk and cores change speed by a fifth or more within minutes
/// (docs/performance.md), so a row is judged against what the machine could do in its own
/// minutes. The mean, not the faster of the two: each probe is a short sample (ten synced
/// batches take about 0.1 s), and the faster of two such samples is the luckier one, a floor
/// that rises with the noise alone.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct RocksFloors {
    /// 64 writers, 4 KiB values, each put synced: puts/s.
    pub group_synced_puts_per_s: f64,
    /// Those 64 writers' p99 latency of one synced put, ms (absent from reports before it was
    /// measured).
    #[serde(default)]
    pub group_synced_put_p99_ms: Option<f64>,
    /// Batches of 1,000 values of 4 KiB, each batch synced: values/s.
    pub batched_values_per_s: f64,
    /// One batched read of 10,000 present digest-shaped keys, median ms.
    pub multi_get_10k_ms: f64,
}

impl RocksFloors {
    /// Measures the floors with a probe database under `dir`, removed afterwards.
    pub fn measure(dir: &Path) -> anyhow::Result<Self> {
        let probe = rocksdb(dir)?;
        Ok(RocksFloors {
            group_synced_puts_per_s: probe.group,
            group_synced_put_p99_ms: Some(probe.group_p99_ms),
            batched_values_per_s: probe.batched,
            multi_get_10k_ms: probe.multi_get_ms,
        })
    }

    /// The floors beside a row whose floors just before it were `before`: measures them again
    /// under `dir` and returns the mean, saying both measurements on standard error so that a
    /// reader sees how far they moved around the row.
    pub fn after(before: Self, dir: &Path) -> anyhow::Result<Self> {
        let after = Self::measure(dir)?;
        eprintln!(
            "floors beside the row, before and after it: RocksDB synced batches {:.0} and {:.0}/s, \
             64-writer group commit {:.0} and {:.0}/s (p99 {:.2} and {:.2} ms), multi_get of \
             10,000 keys {:.2} and {:.2} ms",
            before.batched_values_per_s,
            after.batched_values_per_s,
            before.group_synced_puts_per_s,
            after.group_synced_puts_per_s,
            before.group_synced_put_p99_ms.unwrap_or(f64::NAN),
            after.group_synced_put_p99_ms.unwrap_or(f64::NAN),
            before.multi_get_10k_ms,
            after.multi_get_10k_ms
        );
        Ok(before.between(after))
    }

    /// The floors for the minutes between two measurements: the mean of each figure.
    fn between(self, other: Self) -> Self {
        RocksFloors {
            group_synced_puts_per_s: mean(
                self.group_synced_puts_per_s,
                other.group_synced_puts_per_s,
            ),
            group_synced_put_p99_ms: self
                .group_synced_put_p99_ms
                .zip(other.group_synced_put_p99_ms)
                .map(|(a, b)| mean(a, b)),
            batched_values_per_s: mean(self.batched_values_per_s, other.batched_values_per_s),
            multi_get_10k_ms: mean(self.multi_get_10k_ms, other.multi_get_10k_ms),
        }
    }
}

/// The mean of two measurements of one figure.
fn mean(a: f64, b: f64) -> f64 {
    (a + b) / 2.0
}

/// One core's Ed25519 rate beside a row whose rate just before it was `before`: measures it
/// again and returns the mean, saying both on standard error (see [`RocksFloors::after`]).
pub fn ed25519_after(before: f64) -> anyhow::Result<f64> {
    let after = ed25519()?;
    eprintln!(
        "Ed25519 beside the row, before and after it: {before:.0} and {after:.0} verifications/s"
    );
    Ok(mean(before, after))
}

/// One core's Ed25519 verifications per second: strict checks of one 300-byte message.
pub fn ed25519() -> anyhow::Result<f64> {
    let key = custodian_core::note::SignerKey::from_seed("bench", [7u8; 32])?;
    let verifier = key.verifier();
    let message = [0x42u8; 300];
    let signature = key.sign_bytes(&message);
    let t = Instant::now();
    let n = 5000;
    for _ in 0..n {
        anyhow::ensure!(
            verifier.verify_signature(&message, &signature),
            "verify failed"
        );
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Measures the limits on the disk under `dir`.
pub fn measure(dir: &Path) -> anyhow::Result<Limits> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (sha256, blake3) = hashing();
    let (sequential, fsync_median, fsync_p99) = disk(dir)?;
    let probe = rocksdb(dir)?;
    Ok(Limits {
        sha256_gib_per_s: sha256,
        blake3_gib_per_s: blake3,
        disk_write_fsync_gib_per_s: sequential,
        fsync_median_ms: fsync_median,
        fsync_p99_ms: fsync_p99,
        rocksdb_synced_puts_per_s: probe.single,
        rocksdb_group_synced_puts_per_s: probe.group,
        rocksdb_group_synced_put_p99_ms: Some(probe.group_p99_ms),
        rocksdb_batched_values_per_s: probe.batched,
        rocksdb_multi_get_10k_ms: probe.multi_get_ms,
        ed25519_verifies_per_s: ed25519()?,
    })
}

/// The default place to measure: the daemon's default disk.
pub fn default_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/custodian/bench")
}

/// Prints the limits.
pub fn print(l: &Limits) {
    println!(
        "limits: SHA-256 {:.2} GiB/s, BLAKE3 {:.2} GiB/s (one core); disk write+fsync {:.2} GiB/s; 4 KiB fdatasync median {:.2} ms, p99 {:.2} ms",
        l.sha256_gib_per_s,
        l.blake3_gib_per_s,
        l.disk_write_fsync_gib_per_s,
        l.fsync_median_ms,
        l.fsync_p99_ms
    );
    println!(
        "        RocksDB 4 KiB synced puts: {:.0}/s one writer, {:.0}/s 64 writers (group commit; p99 {:.2} ms), {:.0}/s in synced batches of 1,000; multi_get of 10,000 keys {:.2} ms",
        l.rocksdb_synced_puts_per_s,
        l.rocksdb_group_synced_puts_per_s,
        l.rocksdb_group_synced_put_p99_ms.unwrap_or(f64::NAN),
        l.rocksdb_batched_values_per_s,
        l.rocksdb_multi_get_10k_ms
    );
    println!(
        "        Ed25519 verifications {:.0}/s on one core",
        l.ed25519_verifies_per_s
    );
}

/// Runs `custodian-bench limits`.
pub fn run(args: LimitsArgs) -> anyhow::Result<ExitCode> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(default_dir)
        .join(format!("limits-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(dir.clone());
    let limits = measure(&dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&limits)?);
    } else {
        print(&limits);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two floors measured around a row give the mean of each figure, in either order.
    #[test]
    fn the_floors_between_two_measurements_are_their_means() {
        let before = RocksFloors {
            group_synced_puts_per_s: 40_000.0,
            group_synced_put_p99_ms: Some(3.0),
            batched_values_per_s: 70_000.0,
            multi_get_10k_ms: 3.9,
        };
        let after = RocksFloors {
            group_synced_puts_per_s: 36_000.0,
            group_synced_put_p99_ms: Some(5.0),
            batched_values_per_s: 90_000.0,
            multi_get_10k_ms: 4.5,
        };
        let between = before.between(after);
        assert_eq!(between, after.between(before));
        for (got, want) in [
            (between.group_synced_puts_per_s, 38_000.0),
            (between.group_synced_put_p99_ms.unwrap_or_default(), 4.0),
            (between.batched_values_per_s, 80_000.0),
            (between.multi_get_10k_ms, 4.2),
        ] {
            assert!((got - want).abs() < 1e-9, "{got} is not {want}");
        }
    }
}
