//! `custodian-bench gc`: online garbage collection over many small blobs, and what it costs the
//! puts that continue meanwhile.
//!
//! A fresh daemon on the embedded RocksDB store takes `--blobs` small blobs through `BatchPut`
//! (the fill rate is the yardstick: deleting a blob should cost no more than storing it), waits
//! out a 1 s grace period, then measures the latency of unary 4 KiB puts with nothing else
//! running, and again while `CollectGarbage` examines and deletes every filled blob.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use custodian_proto::cas::v1 as pb;
use custodian_proto::cas::v1::content_store_client::ContentStoreClient;
use serde::Serialize;

use custodian_testkit::{Daemon, percentile_ms};

/// Options of `custodian-bench gc`.
#[derive(Args)]
pub struct GcArgs {
    /// How many small blobs to fill the store with (all of them garbage)
    #[arg(long, default_value_t = 1_000_000)]
    blobs: usize,
    /// Bytes per filled blob
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// The backend to collect on: rocksdb, or file (an object store in a local directory)
    #[arg(long, default_value = "rocksdb")]
    backend: String,
    /// How long to sample put latency with nothing else running, in seconds
    #[arg(long, default_value_t = 5)]
    idle_seconds: u64,
    /// Where to put the daemon's data (default: the system temp dir)
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

/// The figures.
#[derive(Serialize)]
pub struct GcRow {
    pub backend: String,
    pub blobs: usize,
    pub blob_bytes: usize,
    pub fill_blobs_per_s: f64,
    pub gc_seconds: f64,
    pub examined_per_s: f64,
    pub deleted_per_s: f64,
    pub deleted: u64,
    pub ledger_entries: usize,
    pub put_ms_p50_idle: f64,
    pub put_ms_p99_idle: f64,
    pub put_ms_p50_during_gc: f64,
    pub put_ms_p99_during_gc: f64,
    pub puts_during_gc: usize,
    /// Seconds from the collection's start until no pack is left on disk, for blobs that went
    /// into packs (their ranges are freed after the deletes return).
    pub space_freed_seconds: Option<f64>,
    pub daemon_peak_rss_mib: f64,
}

/// How many packs are in `dir` (none if it does not exist).
fn packs_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count())
}

async fn client(daemon: &Daemon) -> anyhow::Result<ContentStoreClient<custodian_client::Conn>> {
    Ok(
        custodian_client::Client::connect(&daemon.target(Some(&daemon.token)))
            .await?
            .store(),
    )
}

/// Unary 4 KiB puts of fresh blobs, one at a time, until `stop` says so; their latencies.
async fn put_latencies(
    mut c: ContentStoreClient<custodian_client::Conn>,
    seed: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let data = custodian_testkit::pattern(seed + n, 4096);
        let messages = vec![
            pb::PutRequest {
                message: Some(pb::put_request::Message::Header(pb::PutHeader::default())),
            },
            pb::PutRequest {
                message: Some(pb::put_request::Message::Chunk(data)),
            },
        ];
        let t = Instant::now();
        c.put(futures::stream::iter(messages)).await?;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    Ok(latencies)
}

async fn measure(
    args: &GcArgs,
    daemon: &Daemon,
    packs_dir: &std::path::Path,
) -> anyhow::Result<GcRow> {
    // Fill: distinct blobs through BatchPut, two calls in flight.
    let per_batch = 1000usize;
    let total = args.blobs;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let next = next.clone();
        let mut c = client(daemon).await?;
        let size = args.size;
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(per_batch, std::sync::atomic::Ordering::SeqCst);
                if first >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let items = (first..(first + per_batch).min(total))
                    .map(|i| pb::BatchPutItem {
                        expected_digest: String::new(),
                        data: custodian_testkit::pattern(0x6c_0000_0000 + i as u64, size),
                    })
                    .collect();
                let reply = c
                    .batch_put(pb::BatchPutRequest { items })
                    .await?
                    .into_inner();
                if let Some(err) = reply.results.iter().find_map(|r| r.error.as_ref()) {
                    anyhow::bail!("BatchPut refused a blob: {}", err.message);
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let fill = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // Put latency with nothing else running.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let idle = tokio::spawn(put_latencies(client(daemon).await?, 1 << 40, stop_rx));
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let _ = stop_tx.send(true);
    let idle = idle.await??;

    // The collection, with the same puts running beside it.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let during = tokio::spawn(put_latencies(client(daemon).await?, 2 << 40, stop_rx));
    let mut collector = client(daemon).await?;
    let packed = packs_in(packs_dir) > 0;
    let t = Instant::now();
    let report = collector
        .collect_garbage(pb::CollectGarbageRequest {
            grace_seconds: Some(1),
            dry_run: false,
        })
        .await?
        .into_inner();
    let gc = t.elapsed();
    let _ = stop_tx.send(true);
    let during = during.await??;
    let mut space_freed = None;
    if packed {
        while packs_in(packs_dir) > 0 && t.elapsed() < gc + Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        space_freed = (packs_in(packs_dir) == 0).then(|| t.elapsed().as_secs_f64());
    }
    Ok(GcRow {
        backend: args.backend.clone(),
        blobs: total,
        blob_bytes: args.size,
        fill_blobs_per_s: total as f64 / fill.as_secs_f64(),
        gc_seconds: gc.as_secs_f64(),
        examined_per_s: report.examined as f64 / gc.as_secs_f64(),
        deleted_per_s: report.deleted_count as f64 / gc.as_secs_f64(),
        deleted: report.deleted_count,
        ledger_entries: report.ledger_indexes.len(),
        put_ms_p50_idle: percentile_ms(&idle, 0.50),
        put_ms_p99_idle: percentile_ms(&idle, 0.99),
        put_ms_p50_during_gc: percentile_ms(&during, 0.50),
        put_ms_p99_during_gc: percentile_ms(&during, 0.99),
        puts_during_gc: during.len(),
        space_freed_seconds: space_freed,
        daemon_peak_rss_mib: crate::measure::mib(daemon.peak_rss()),
    })
}

/// Runs the garbage-collection benchmark.
pub fn run(args: GcArgs) -> anyhow::Result<ExitCode> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let args = &args;
    crate::measure::run_scenario(
        "custodian-bench-gc",
        Some(&base),
        args.json,
        |work| async move {
            // A 1 s upload expiry lets the collection run with a 1 s grace.
            let storage = crate::measure::storage_for(&args.backend, &work.join("objects"))?;
            let daemon =
                crate::measure::daemon(&work.join("data"), &storage, &["--upload-expiry", "1s"])?;
            let packs_dir = match args.backend.as_str() {
                "file" => work.join("objects").join("packs"),
                _ => work.join("data").join("blobs").join("packs"),
            };
            measure(args, &daemon, &packs_dir).await
        },
        print,
    )
}

/// Prints the report as a table.
fn print(row: &GcRow) {
    println!(
        "garbage collection of {} blobs of {} bytes (all garbage), {}, while 4 KiB puts continue:",
        row.blobs, row.blob_bytes, row.backend
    );
    println!("| figure | value | ratio |");
    println!("|---|---:|---:|");
    println!(
        "| fill (BatchPut, 2 in flight) | {:.0} blobs/s | 1.00 (the yardstick) |",
        row.fill_blobs_per_s
    );
    println!(
        "| GC examined | {:.0} blobs/s | {:.2}× the fill rate |",
        row.examined_per_s,
        row.examined_per_s / row.fill_blobs_per_s
    );
    println!(
        "| GC deleted | {:.0} blobs/s ({} in {:.1} s, {} BlobsDeleted entries) | {:.2}× the fill rate |",
        row.deleted_per_s,
        row.deleted,
        row.gc_seconds,
        row.ledger_entries,
        row.deleted_per_s / row.fill_blobs_per_s
    );
    println!(
        "| put p50, idle → during GC | {:.2} → {:.2} ms | {:.2}× |",
        row.put_ms_p50_idle,
        row.put_ms_p50_during_gc,
        row.put_ms_p50_during_gc / row.put_ms_p50_idle
    );
    println!(
        "| put p99, idle → during GC | {:.2} → {:.2} ms | {:.2}× |",
        row.put_ms_p99_idle,
        row.put_ms_p99_during_gc,
        row.put_ms_p99_during_gc / row.put_ms_p99_idle
    );
    if let Some(seconds) = row.space_freed_seconds {
        println!(
            "| space freed (no pack left) | {seconds:.1} s after the collection began | {:.2}× the collection |",
            seconds / row.gc_seconds
        );
    }
    println!("| daemon peak RSS | {:.0} MiB | |", row.daemon_peak_rss_mib);
}
