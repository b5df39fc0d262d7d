//! `custodian-bench small`: many small blobs through `BatchPut`, and `FindMissing` over as many
//! digests (at most 100,000 per call), through a real daemon on loopback, per backend.

use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use custodian_core::{Algorithm, Digest};
use custodian_proto::cas::v1 as pb;
use custodian_proto::cas::v1::content_store_client::ContentStoreClient;
use serde::{Deserialize, Serialize};

use custodian_testkit::Daemon;

/// The longest wait for a filled store's daemon to go quiet before its timed calls.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// How many FindMissing calls are timed: enough for a steady median on a noisy machine.
const FIND_MISSING_CALLS: usize = 100;

/// The most digests one timed FindMissing call asks about. A `sha256:` digest is 73 bytes on
/// the wire, so 100,000 of them stay under the daemon's default message limit (8 MiB,
/// `serve --max-message-bytes`); a run with more blobs asks about the first 100,000 rather than
/// failing after its puts.
const FIND_MISSING_MOST_DIGESTS: usize = 100_000;

/// Options of `custodian-bench small`.
#[derive(Args)]
pub struct SmallArgs {
    /// How many blobs; each timed FindMissing call asks about all of them, or the first 100,000
    #[arg(long, default_value_t = 10_000)]
    blobs: usize,
    /// Bytes per blob
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Concurrent BatchPut calls
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Also measure each backend on a store that already holds this many other small blobs,
    /// next to the fresh store (e.g. 1000000; RocksDB fills at tens of thousands a second,
    /// `file://` at a few thousand)
    #[arg(long, default_value_t = 0)]
    prefill: u64,
    /// Bytes per prefilled blob
    #[arg(long, default_value_t = 256)]
    prefill_size: usize,
    /// Backends to measure: rocksdb, file
    #[arg(long = "backend", default_values_t = ["rocksdb".to_string(), "file".to_string()])]
    backends: Vec<String>,
    /// Where to put the daemons' data (default: the system temp dir)
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

/// One backend's figures.
#[derive(Serialize, Deserialize)]
pub struct Row {
    pub backend: String,
    /// How many other blobs the store held before the timed puts.
    #[serde(default)]
    pub stored_before: u64,
    /// How fast those were put (BatchPut, blobs/s), if any were.
    #[serde(default)]
    pub prefill_blobs_per_s: Option<f64>,
    /// Seconds the daemon stayed busy after the fill (RocksDB compacting what it had just been
    /// given) before the timed calls began.
    #[serde(default)]
    pub settled_after_s: Option<f64>,
    pub blobs: usize,
    pub blob_bytes: usize,
    pub batch_put_blobs_per_s: f64,
    pub batch_put_mib_per_s: f64,
    pub batch_ms_p50: f64,
    pub batch_ms_p99: f64,
    pub find_missing_digests: usize,
    pub find_missing_ms_p50: f64,
    pub find_missing_ms_p99: f64,
    pub daemon_peak_rss_mib: f64,
    /// RocksDB's floors on the same disk, measured just before and just after this row's timed
    /// calls (absent in reports written before they were).
    #[serde(default)]
    pub floors: Option<crate::limits::RocksFloors>,
}

/// A content-store client of the bench daemon, as the CLI's own commands connect.
async fn client(daemon: &Daemon) -> anyhow::Result<ContentStoreClient<custodian_client::Conn>> {
    Ok(
        custodian_client::Client::connect(&daemon.target(Some(&daemon.token)))
            .await?
            .store(),
    )
}

async fn measure(args: &SmallArgs, daemon: &Daemon, backend: &str) -> anyhow::Result<Row> {
    // Distinct incompressible blobs, and their digests computed here as a client would.
    let mut state = 0x2545_F491_4F6C_DD1Du64 ^ backend.len() as u64;
    let blobs: Vec<Vec<u8>> = (0..args.blobs)
        .map(|_| {
            (0..args.size)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        })
        .collect();
    let digests: Vec<String> = blobs
        .iter()
        .map(|b| Digest::of(Algorithm::Sha256, b).to_string())
        .collect();
    let mut first = client(daemon).await?;
    let caps = first
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await?
        .into_inner();
    let per_batch = ((caps.max_batch_total_size_bytes as usize) / args.size.max(1)).max(1);
    let batches: Vec<Vec<pb::BatchPutItem>> = blobs
        .chunks(per_batch)
        .zip(digests.chunks(per_batch))
        .map(|(b, d)| {
            b.iter()
                .zip(d)
                .map(|(data, digest)| pb::BatchPutItem {
                    expected_digest: digest.clone(),
                    data: data.clone().into(),
                })
                .collect()
        })
        .collect();

    // BatchPut, `clients` calls in flight, each on its own connection.
    let queue = std::sync::Arc::new(std::sync::Mutex::new(batches));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients.max(1) {
        let queue = queue.clone();
        let mut c = client(daemon).await?;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some(items) = queue.lock().map_err(|e| anyhow::anyhow!("{e}"))?.pop() else {
                    break;
                };
                let n = items.len();
                let t = Instant::now();
                let reply = c
                    .batch_put(pb::BatchPutRequest { items })
                    .await?
                    .into_inner();
                latencies.push(t.elapsed());
                let failed = reply.results.iter().filter(|r| r.error.is_some()).count();
                anyhow::ensure!(failed == 0, "{failed} of {n} blobs failed in a BatchPut");
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let put_time = started.elapsed();
    latencies.sort();

    // FindMissing over every digest (all present), then with half of them unknown.
    let mut find = Vec::new();
    let asked = find_missing_digests(args.blobs);
    let digests = &digests[..asked];
    let half_unknown: Vec<String> = digests
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                d.clone()
            } else {
                Digest::of(Algorithm::Sha256, d.as_bytes()).to_string()
            }
        })
        .collect();
    for round in 0..FIND_MISSING_CALLS {
        let request = pb::FindMissingRequest {
            digests: if round % 2 == 0 {
                digests.to_vec()
            } else {
                half_unknown.clone()
            },
        };
        let t = Instant::now();
        let reply = first.find_missing(request).await?.into_inner();
        find.push(t.elapsed());
        let expected = if round % 2 == 0 { 0 } else { asked / 2 };
        anyhow::ensure!(
            reply.missing_digests.len() == expected,
            "FindMissing answered {} missing, expected {expected}",
            reply.missing_digests.len()
        );
    }
    find.sort();
    Ok(Row {
        backend: backend.into(),
        blobs: args.blobs,
        blob_bytes: args.size,
        batch_put_blobs_per_s: args.blobs as f64 / put_time.as_secs_f64(),
        batch_put_mib_per_s: crate::measure::mib((args.blobs * args.size) as u64)
            / put_time.as_secs_f64(),
        batch_ms_p50: custodian_testkit::percentile_ms(&latencies, 0.5),
        batch_ms_p99: custodian_testkit::percentile_ms(&latencies, 0.99),
        stored_before: 0,
        prefill_blobs_per_s: None,
        settled_after_s: None,
        find_missing_digests: asked,
        find_missing_ms_p50: custodian_testkit::percentile_ms(&find, 0.5),
        find_missing_ms_p99: custodian_testkit::percentile_ms(&find, 0.99),
        daemon_peak_rss_mib: crate::measure::mib(daemon.peak_rss()),
        floors: None,
    })
}

/// How many of a run's `blobs` digests each timed FindMissing call asks about.
fn find_missing_digests(blobs: usize) -> usize {
    blobs.min(FIND_MISSING_MOST_DIGESTS)
}

/// Fills the store with `count` small blobs, distinct from the ones `measure` puts (each begins
/// with its index and a marker), through `clients` concurrent `BatchPut` streams; returns the
/// rate. Batches are built as they are sent, so a million blobs never sit in memory at once.
async fn prefill(
    args: &SmallArgs,
    daemon: &Daemon,
    backend: &str,
    count: u64,
) -> anyhow::Result<f64> {
    let size = args.prefill_size.max(16);
    let caps = client(daemon)
        .await?
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await?
        .into_inner();
    let per_batch = ((caps.max_batch_total_size_bytes as usize) / size).max(1) as u64;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients.max(1) {
        let next = next.clone();
        let mut c = client(daemon).await?;
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(per_batch, std::sync::atomic::Ordering::Relaxed);
                if start >= count {
                    return anyhow::Ok(());
                }
                let items: Vec<pb::BatchPutItem> = (start..(start + per_batch).min(count))
                    .map(|i| {
                        let mut data = vec![0x5au8; size];
                        data[..8].copy_from_slice(&i.to_le_bytes());
                        data[8..16].copy_from_slice(b"prefill!");
                        pb::BatchPutItem {
                            expected_digest: Digest::of(Algorithm::Sha256, &data).to_string(),
                            data: data.into(),
                        }
                    })
                    .collect();
                let n = items.len();
                let reply = c
                    .batch_put(pb::BatchPutRequest { items })
                    .await?
                    .into_inner();
                let failed = reply.results.iter().filter(|r| r.error.is_some()).count();
                anyhow::ensure!(
                    failed == 0,
                    "{failed} of {n} prefill blobs failed in a BatchPut"
                );
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "prefilled the {backend} store with {count} blobs of {size} bytes in {:.1} s ({rate:.0}/s)",
        started.elapsed().as_secs_f64()
    );
    Ok(rate)
}

/// Runs the small-blob benchmark.
pub fn run(args: SmallArgs) -> anyhow::Result<ExitCode> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = base.join(format!("custodian-bench-small-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let _cleanup = custodian_testkit::RemoveOnDrop(work.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    let stores: &[u64] = if args.prefill > 0 {
        &[0, args.prefill]
    } else {
        &[0]
    };
    for backend in &args.backends {
        for &stored in stores {
            let data_dir = work.join(format!("data-{backend}-{stored}"));
            let storage =
                crate::measure::storage_for(backend, &work.join(format!("objects-{stored}")))?;
            let daemon = crate::measure::daemon(&data_dir, &storage, &[])?;
            let prefill_rate = match stored {
                0 => None,
                n => Some(runtime.block_on(prefill(&args, &daemon, backend, n))?),
            };
            // The timed calls measure a store of this size, not the fill's compaction debt.
            let settled = prefill_rate.map(|_| {
                let waited = crate::measure::settle_daemon(daemon.pid(), SETTLE_LIMIT);
                eprintln!(
                    "the {backend} daemon went quiet {:.1} s after the fill",
                    waited.as_secs_f64()
                );
                waited.as_secs_f64()
            });
            // The floors beside the row: the daemon is idle while the probe runs.
            let before = crate::limits::RocksFloors::measure(&work)?;
            let mut row = runtime.block_on(measure(&args, &daemon, backend))?;
            row.floors = Some(crate::limits::RocksFloors::after(before, &work)?);
            row.stored_before = stored;
            row.prefill_blobs_per_s = prefill_rate;
            row.settled_after_s = settled;
            rows.push(row);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} blobs of {} bytes through BatchPut ({} calls in flight), FindMissing over {} digests ({FIND_MISSING_CALLS} calls):",
        args.blobs,
        args.size,
        args.clients,
        find_missing_digests(args.blobs)
    );
    println!(
        "| backend | stored before | BatchPut blobs/s | MiB/s | batch p50 ms | batch p99 ms | FindMissing p50 ms | p99 ms | daemon peak RSS | RocksDB synced batches beside it | multi_get beside it |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let (batches, multi_get) = r.floors.map_or_else(
            || ("—".to_string(), "—".to_string()),
            |f| {
                (
                    format!(
                        "{:.0}/s ({:.2}×)",
                        f.batched_values_per_s,
                        r.batch_put_blobs_per_s / f.batched_values_per_s
                    ),
                    format!(
                        "{:.2} ms ({:.2}×)",
                        f.multi_get_10k_ms,
                        r.find_missing_ms_p50 / f.multi_get_10k_ms
                    ),
                )
            },
        );
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.0} MiB | {batches} | {multi_get} |",
            r.backend,
            r.stored_before,
            r.batch_put_blobs_per_s,
            r.batch_put_mib_per_s,
            r.batch_ms_p50,
            r.batch_ms_p99,
            r.find_missing_ms_p50,
            r.find_missing_ms_p99,
            r.daemon_peak_rss_mib
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest FindMissing call the bench makes fits the daemon's default message limit, so
    /// a run with many blobs is not refused after its puts.
    #[test]
    fn the_largest_find_missing_call_fits_the_daemons_default_message_limit() {
        let digest = Digest::of(Algorithm::Sha256, b"a blob").to_string();
        let asked = find_missing_digests(usize::MAX);
        let request = pb::FindMissingRequest {
            digests: vec![digest; asked],
        };
        let limit = custodian_server::CasLimits::default().max_message_size_bytes;
        let size = prost::Message::encoded_len(&request);
        assert!(
            size <= limit,
            "{asked} digests encode to {size} bytes, over {limit}"
        );
        assert_eq!(find_missing_digests(10_000), 10_000);
    }
}
