//! `custodian-bench load`: many concurrent clients on loopback running a mixed workload (gRPC
//! puts and verified gets, attested runs, inclusion proofs, verified REST downloads) against
//! one daemon for a fixed time. Reports p50/p99 per operation, every error, and the daemon's
//! resident memory over time with a verdict on whether it stayed flat.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use custodian_core::{BlobDigests, Digest};
use custodian_proto::cas::v1 as cas;
use custodian_proto::evidence::v1 as epb;
use custodian_proto::ledger::v1 as lpb;
use serde::Serialize;

use custodian_client::{Client, Conn, Target};
use custodian_testkit::{Daemon, RemoveOnDrop, percentile_ms};

/// Options of `custodian-bench load`.
#[derive(Args)]
pub struct LoadArgs {
    /// How long the load runs, in seconds
    #[arg(long, default_value_t = 300)]
    seconds: u64,
    /// Concurrent clients, each on its own connection
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Stop after this many operations in all, if that comes first
    #[arg(long, default_value_t = 50_000_000)]
    max_ops: u64,
    /// Where to put the daemon's data (default: the system temp folder)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

/// The operations of the mix, in the order of the per-client rotation.
const MIX: [Op; 10] = [
    Op::Put,
    Op::Get,
    Op::Attest,
    Op::Get,
    Op::RestDownload,
    Op::Put,
    Op::Proof,
    Op::Get,
    Op::Attest,
    Op::RestDownload,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Put,
    Get,
    Attest,
    Proof,
    RestDownload,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put 64 KiB (gRPC)",
            Op::Get => "get 256 KiB, verified (gRPC)",
            Op::Attest => "attest a run (gRPC)",
            Op::Proof => "inclusion proof (gRPC)",
            Op::RestDownload => "download 256 KiB, verified (REST)",
        }
    }
}

#[derive(Serialize)]
struct OpReport {
    operation: String,
    count: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    first_error: Option<String>,
}

#[derive(Serialize)]
struct Report {
    clients: usize,
    seconds: f64,
    operations: u64,
    errors: u64,
    per_operation: Vec<OpReport>,
    /// Resident memory samples: (seconds since start, MiB).
    rss_mib: Vec<(f64, f64)>,
    /// Mean RSS of the first and second half after the warm-up (the first third).
    rss_first_half_mib: f64,
    rss_second_half_mib: f64,
    /// Least-squares slope of RSS after the warm-up, MiB per minute.
    rss_slope_mib_per_min: f64,
    /// The anonymous part of each sample (heap, stacks): (seconds since start, MiB). The rest of
    /// RSS is pages of the daemon's executable and libraries, which a leak cannot grow; when
    /// the verdict is "growing", this says whether the daemon's own memory grew.
    rss_anon_mib: Vec<(f64, f64)>,
    /// Mean anonymous memory of the same two halves.
    rss_anon_first_half_mib: f64,
    rss_anon_second_half_mib: f64,
    /// Whether the second half's mean is within max(8 MiB, 5%) of the first half's.
    memory_flat: bool,
}

/// Per-client results: latencies per operation, and errors.
#[derive(Default)]
struct Tally {
    latencies: BTreeMap<Op, Vec<Duration>>,
    errors: BTreeMap<Op, (u64, String)>,
}

struct Shared {
    server: Target,
    rest: String,
    pool: Vec<(String, BlobDigests)>,
    manifest: Digest,
    attester: custodian_core::note::SignerKey,
    stop: AtomicBool,
    ops: AtomicU64,
    max_ops: u64,
    seq: AtomicU64,
}

/// Runs `custodian-bench load`.
pub fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = base.join(format!("custodian-bench-load-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _cleanup = RemoveOnDrop(work.clone());
    let daemon = crate::measure::daemon(&work.join("daemon"), "rocksdb", &[])?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(measure(&args, &daemon))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.errors == 0 && report.memory_flat {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn measure(args: &LoadArgs, daemon: &Daemon) -> anyhow::Result<Report> {
    let server = daemon.target(Some(&daemon.token));
    let (manifest, attester, _) = crate::evidence::publish_and_register(&server).await?;
    // A pool of 256 × 256 KiB blobs that gets and downloads read.
    let mut store = Client::connect(&server).await?.store();
    let mut pool = Vec::new();
    for i in 0..256u64 {
        let data = custodian_storage::conformance::pattern(0x10ad_0000 + i, 256 << 10);
        let digests = BlobDigests::of(&data);
        put(&mut store, &digests, data).await?;
        pool.push((digests.sha256.to_string(), digests));
    }
    let shared = Arc::new(Shared {
        server,
        rest: daemon.rest.clone(),
        pool,
        manifest,
        attester,
        stop: AtomicBool::new(false),
        ops: AtomicU64::new(0),
        max_ops: args.max_ops,
        seq: AtomicU64::new(0),
    });
    if !args.json {
        eprintln!(
            "{} clients, mixed workload, {} s on a fresh daemon …",
            args.clients, args.seconds
        );
    }
    let started = Instant::now();
    let sampler = {
        let shared = shared.clone();
        let pid = daemon.pid();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !shared.stop.load(Ordering::Relaxed) {
                if let Some((rss, anon)) = custodian_testkit::current_rss_and_anon(pid) {
                    let now = started.elapsed().as_secs_f64();
                    samples.push((
                        (now, crate::measure::mib(rss)),
                        (now, crate::measure::mib(anon)),
                    ));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            samples
        })
    };
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let shared = shared.clone();
        tasks.push(tokio::spawn(
            async move { run_client(shared, client).await },
        ));
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    shared.stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for task in tasks {
        let t = task.await??;
        for (op, lat) in t.latencies {
            tally.latencies.entry(op).or_default().extend(lat);
        }
        for (op, (n, first)) in t.errors {
            let e = tally.errors.entry(op).or_insert((0, first));
            e.0 += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let samples = sampler.await?;
    let mut per_operation = Vec::new();
    let mut errors = 0;
    let mut operations = 0;
    for op in [Op::Put, Op::Get, Op::Attest, Op::Proof, Op::RestDownload] {
        let mut lat = tally.latencies.remove(&op).unwrap_or_default();
        lat.sort();
        let (n_err, first) = tally.errors.remove(&op).unwrap_or_default();
        errors += n_err;
        operations += lat.len() as u64 + n_err;
        per_operation.push(OpReport {
            operation: op.name().into(),
            count: lat.len(),
            per_second: lat.len() as f64 / elapsed,
            p50_ms: percentile_ms(&lat, 0.5),
            p99_ms: percentile_ms(&lat, 0.99),
            errors: n_err,
            first_error: (n_err > 0).then_some(first),
        });
    }
    let (samples, anon): (Vec<_>, Vec<_>) = samples.into_iter().unzip();
    let (first, second, slope) = memory_trend(&samples);
    let (anon_first, anon_second, _) = memory_trend(&anon);
    let memory_flat = second - first <= (first * 0.05).max(8.0);
    Ok(Report {
        clients: args.clients,
        seconds: elapsed,
        operations,
        errors,
        per_operation,
        rss_mib: samples,
        rss_first_half_mib: first,
        rss_second_half_mib: second,
        rss_slope_mib_per_min: slope,
        rss_anon_mib: anon,
        rss_anon_first_half_mib: anon_first,
        rss_anon_second_half_mib: anon_second,
        memory_flat,
    })
}

/// After a warm-up of the first third (the block cache and memtables fill to their budgets in
/// about a minute): the mean of each half, and the least-squares slope in MiB per minute.
fn memory_trend(samples: &[(f64, f64)]) -> (f64, f64, f64) {
    let steady = &samples[samples.len() / 3..];
    if steady.len() < 2 {
        return (0.0, 0.0, 0.0);
    }
    let mean = |s: &[(f64, f64)]| s.iter().map(|(_, m)| m).sum::<f64>() / s.len().max(1) as f64;
    let (a, b) = steady.split_at(steady.len() / 2);
    let n = steady.len() as f64;
    let mx = steady.iter().map(|(t, _)| t).sum::<f64>() / n;
    let my = mean(steady);
    let sxy: f64 = steady.iter().map(|(t, m)| (t - mx) * (m - my)).sum();
    let sxx: f64 = steady.iter().map(|(t, _)| (t - mx) * (t - mx)).sum();
    let slope = if sxx > 0.0 { sxy / sxx * 60.0 } else { 0.0 };
    (mean(a), mean(b), slope)
}

async fn put(
    store: &mut cas::content_store_client::ContentStoreClient<Conn>,
    digests: &BlobDigests,
    data: Bytes,
) -> Result<(), tonic::Status> {
    let messages = vec![
        cas::PutRequest {
            message: Some(cas::put_request::Message::Header(cas::PutHeader {
                expected_digest: digests.sha256.to_string(),
                expected_size: Some(data.len() as u64),
            })),
        },
        cas::PutRequest {
            message: Some(cas::put_request::Message::Chunk(data)),
        },
    ];
    store.put(futures::stream::iter(messages)).await.map(|_| ())
}

async fn run_client(shared: Arc<Shared>, client: usize) -> anyhow::Result<Tally> {
    let conn = Client::connect(&shared.server).await?;
    let mut store = conn.store();
    let mut evidence = conn.evidence();
    let mut ledger = conn.ledger();
    let http = reqwest::Client::new();
    let token = shared.server.token.clone().unwrap_or_default();
    let mut tally = Tally::default();
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (client as u64 + 1);
    let mut turn = client;
    while !shared.stop.load(Ordering::Relaxed)
        && shared.ops.fetch_add(1, Ordering::Relaxed) < shared.max_ops
    {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let op = MIX[turn % MIX.len()];
        turn += 1;
        let (name, expected) = &shared.pool[(state % shared.pool.len() as u64) as usize];
        let started = Instant::now();
        let result: Result<(), String> = match op {
            Op::Put => {
                let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
                let data =
                    custodian_storage::conformance::pattern(0x5eed_0000_0000 + seq, 64 << 10);
                let digests = BlobDigests::of(&data);
                put(&mut store, &digests, data)
                    .await
                    .map_err(|s| s.to_string())
            }
            Op::Get => get_verified(&mut store, name, expected).await,
            Op::Attest => {
                let seq = shared.seq.fetch_add(1, Ordering::Relaxed) as usize;
                let envelope = crate::evidence::envelope(shared.manifest, &shared.attester, seq);
                evidence
                    .attest_run(epb::AttestRunRequest { envelope })
                    .await
                    .map(|_| ())
                    .map_err(|s| s.to_string())
            }
            Op::Proof => proof(&mut ledger, state).await,
            Op::RestDownload => {
                let url = format!("{}/blobs/{name}", shared.rest);
                match http.get(&url).bearer_auth(&token).send().await {
                    Ok(response) if response.status().is_success() => {
                        match response.bytes().await {
                            Ok(body) if BlobDigests::of(&body) == *expected => Ok(()),
                            Ok(_) => Err(format!("{name}: downloaded bytes do not match")),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Ok(response) => Err(format!("{url}: {}", response.status())),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        match result {
            Ok(()) => tally
                .latencies
                .entry(op)
                .or_default()
                .push(started.elapsed()),
            Err(message) => {
                let e = tally.errors.entry(op).or_insert((0, message));
                e.0 += 1;
            }
        }
    }
    Ok(tally)
}

/// The inclusion proof of a pseudo-random entry in the current log.
async fn proof(
    ledger: &mut lpb::ledger_client::LedgerClient<Conn>,
    state: u64,
) -> Result<(), String> {
    let size = ledger
        .get_log_info(lpb::GetLogInfoRequest {})
        .await
        .map_err(|s| s.to_string())?
        .into_inner()
        .size;
    ledger
        .get_inclusion_proof(lpb::GetInclusionProofRequest {
            leaf: Some(lpb::get_inclusion_proof_request::Leaf::Index(
                state % size.max(1),
            )),
            tree_size: None,
        })
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

async fn get_verified(
    store: &mut cas::content_store_client::ContentStoreClient<Conn>,
    name: &str,
    expected: &BlobDigests,
) -> Result<(), String> {
    let mut stream = store
        .get(cas::GetRequest {
            digest: name.into(),
            offset: 0,
            limit: 0,
        })
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    let mut hasher = custodian_core::BlobHasher::new();
    while let Some(message) = stream.message().await.map_err(|s| s.to_string())? {
        hasher.update(&message.data);
    }
    if hasher.finalize() == *expected {
        Ok(())
    } else {
        Err(format!("{name}: the bytes read do not match"))
    }
}

fn print_report(report: &Report) {
    println!(
        "{} clients for {:.0} s: {} operations, {} errors",
        report.clients, report.seconds, report.operations, report.errors
    );
    println!(
        "  {:<36} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "operation", "count", "per s", "p50 ms", "p99 ms", "errors"
    );
    for op in &report.per_operation {
        println!(
            "  {:<36} {:>9} {:>9.0} {:>9.2} {:>9.2} {:>7}",
            op.operation, op.count, op.per_second, op.p50_ms, op.p99_ms, op.errors
        );
        if let Some(first) = &op.first_error {
            println!("      first error: {first}");
        }
    }
    println!(
        "  daemon RSS after warm-up: {:.1} MiB (first half) -> {:.1} MiB (second half), slope {:+.2} MiB/min: {}",
        report.rss_first_half_mib,
        report.rss_second_half_mib,
        report.rss_slope_mib_per_min,
        if report.memory_flat {
            "flat"
        } else {
            "GROWING"
        }
    );
    println!(
        "    of which anonymous (heap, stacks): {:.1} MiB -> {:.1} MiB; the rest is the daemon's code and libraries",
        report.rss_anon_first_half_mib, report.rss_anon_second_half_mib,
    );
}
