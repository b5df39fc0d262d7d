//! `custodian-bench scale`: the ledger and blob custody past one machine. Durable appends over
//! gRPC with 1 and 3 daemons sharing one PostgreSQL ledger, beside one daemon on the embedded
//! RocksDB ledger and beside PostgreSQL's own synced single-row insert (the floor every shared
//! append pays at least once); and 4 KiB blobs through BatchPut with 1 and 3 daemons in front of
//! one S3 bucket (moto on loopback) with the blob index in PostgreSQL, beside the bucket's own
//! PUT rate. PostgreSQL and moto are started here, on loopback, and stopped at the end.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use custodian_client::Target;
use custodian_proto::cas::v1 as cas;
use custodian_testkit::{Daemon, Moto, Postgres};
use serde::Serialize;

/// Options of `custodian-bench scale`.
#[derive(Args)]
pub struct ScaleArgs {
    /// Concurrent appenders, spread over the daemons
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Seconds of appending per configuration
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// 4 KiB blobs put per configuration
    #[arg(long, default_value_t = 4000)]
    blobs: usize,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

/// One append configuration's figures.
#[derive(Serialize)]
struct Appends {
    setup: String,
    appends_per_second: f64,
    median_ms: f64,
    p99_ms: f64,
}

/// One BatchPut configuration's figures.
#[derive(Serialize)]
struct Puts {
    setup: String,
    blobs_per_second: f64,
}

#[derive(Serialize)]
struct Report {
    /// PostgreSQL's synced single-row insert, one client after another.
    pg_insert_per_second_1: f64,
    pg_insert_median_ms: f64,
    /// The same with as many clients as appenders (up to 64), each its own connection.
    pg_insert_per_second_many: f64,
    appends: Vec<Appends>,
    /// moto's own PUT of 4 KiB objects, 32 at a time.
    bucket_puts_per_second: f64,
    puts: Vec<Puts>,
}

const TOKEN: &str = "bench-append-token";
const BUCKET: &str = "custodian-bench-scale";

/// PostgreSQL's own synced single-row inserts: `clients` connections, each inserting one row
/// per transaction (a WAL flush each) for `seconds`.
fn pg_inserts(url: &str, clients: usize, seconds: u64) -> anyhow::Result<(f64, f64)> {
    let mut setup = postgres::Client::connect(url, postgres::NoTls)?;
    setup.batch_execute(
        "DROP TABLE IF EXISTS bench_floor; \
         CREATE TABLE bench_floor (id bigint PRIMARY KEY, body bytea NOT NULL)",
    )?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let url = url.to_string();
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
                let body = vec![0x5au8; 200];
                let mut times = Vec::new();
                let mut i = (c as i64) << 40;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    client.execute(
                        "INSERT INTO bench_floor (id, body) VALUES ($1, $2)",
                        &[&i, &body],
                    )?;
                    times.push(t.elapsed());
                    i += 1;
                }
                Ok(times)
            })
        })
        .collect();
    let mut times = Vec::new();
    for thread in threads {
        times.extend(
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("an insert thread panicked"))??,
        );
    }
    let elapsed = started.elapsed();
    times.sort();
    Ok((
        times.len() as f64 / elapsed.as_secs_f64(),
        custodian_testkit::percentile_ms(&times, 0.5),
    ))
}

/// `writers` appenders spread over `targets` for `seconds`; every append waits for its receipt.
async fn appends(
    setup: &str,
    targets: &[Target],
    writers: usize,
    seconds: u64,
) -> anyhow::Result<Appends> {
    let mut clients = Vec::new();
    for target in targets {
        // Two HTTP/2 connections per daemon, as a few clients would share them.
        for _ in 0..2 {
            clients.push(custodian_client::Client::connect(target).await?.ledger());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = clients[w % clients.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let request = crate::measure::append_request(
                    &custodian_core::entry::Value::Integer(((w as u64) << 32 | i).into()),
                    TOKEN,
                )?;
                let t = Instant::now();
                client.append(request).await?;
                latencies.push(t.elapsed());
                i += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(Appends {
        setup: setup.into(),
        appends_per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        median_ms: custodian_testkit::percentile_ms(&latencies, 0.5),
        p99_ms: custodian_testkit::percentile_ms(&latencies, 0.99),
    })
}

/// `blobs` distinct 4 KiB blobs in BatchPuts of 100, four calls in flight per daemon.
async fn puts(setup: &str, daemons: &[&Daemon], blobs: usize, seed: u64) -> anyhow::Result<Puts> {
    let items: Vec<cas::BatchPutItem> = (0..blobs)
        .map(|i| {
            let data = custodian_testkit::pattern(seed + i as u64, 4096);
            cas::BatchPutItem {
                expected_digest: custodian_core::Digest::of(
                    custodian_core::Algorithm::Sha256,
                    &data,
                )
                .to_string(),
                data,
            }
        })
        .collect();
    let queue = Arc::new(Mutex::new(
        items.chunks(100).map(<[_]>::to_vec).collect::<Vec<_>>(),
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for daemon in daemons {
        for _ in 0..4 {
            let mut client = daemon.client().await;
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some(items) = queue.lock().map_err(|e| anyhow::anyhow!("{e}"))?.pop()
                    else {
                        break;
                    };
                    let reply = client
                        .batch_put(cas::BatchPutRequest { items })
                        .await?
                        .into_inner();
                    let failed = reply.results.iter().filter(|r| r.error.is_some()).count();
                    anyhow::ensure!(failed == 0, "{failed} blobs failed in a BatchPut");
                }
                anyhow::Ok(())
            }));
        }
    }
    for task in tasks {
        task.await??;
    }
    Ok(Puts {
        setup: setup.into(),
        blobs_per_second: blobs as f64 / started.elapsed().as_secs_f64(),
    })
}

/// moto's own PUT rate for 4 KiB objects, 32 in flight: the bucket's limit here.
async fn bucket_puts(moto: &Moto, count: usize) -> anyhow::Result<f64> {
    use futures::StreamExt as _;
    let (store, prefix, _) =
        custodian_object::build_store(&format!("s3://{BUCKET}/floor"), &moto.options())?;
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..count)
        .map(|i| {
            let (store, key) = (store.clone(), prefix.clone().join(format!("o{i}")));
            async move { custodian_object::put_immutable(&*store, &key, vec![i as u8; 4096]).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for result in results {
        result?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Starts `n` daemons sharing `url` (and, with `storage`, one bucket) and one log key.
fn cluster(
    dir: &std::path::Path,
    n: usize,
    url: &str,
    storage: &[String],
) -> anyhow::Result<Vec<Daemon>> {
    let mut args = vec![
        "--ledger",
        url,
        "--append-token",
        TOKEN,
        "--log-origin",
        "bench.custodian/scale",
    ];
    args.extend(storage.iter().map(String::as_str));
    (0..n)
        .map(|i| {
            let data = dir.join(format!("daemon-{i}"));
            custodian_testkit::write_log_key(&data, "bench.custodian/scale", 9);
            Daemon::launch(&custodian_testkit::binary(), &data, &args)
                .map_err(|e| anyhow::anyhow!("starting a daemon: {e}"))
        })
        .collect()
}

/// Runs the benchmark.
pub fn run(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let pg = Postgres::start();
    let floor_url = pg.database("floor");
    let (pg_1, pg_median) = pg_inserts(&floor_url, 1, args.seconds)?;
    let (pg_many, _) = pg_inserts(&floor_url, args.writers.min(64), args.seconds)?;

    let mut appended = Vec::new();
    {
        let embedded = crate::measure::daemon(
            &dir.path().join("embedded"),
            "rocksdb",
            &["--append-token", TOKEN],
        )?;
        appended.push(runtime.block_on(appends(
            "1 daemon, embedded RocksDB",
            &[embedded.target(None)],
            args.writers,
            args.seconds,
        ))?);
    }
    for n in [1, 3] {
        let url = pg.database(&format!("appends{n}"));
        let daemons = cluster(&dir.path().join(format!("appends-{n}")), n, &url, &[])?;
        let targets: Vec<Target> = daemons.iter().map(|d| d.target(None)).collect();
        appended.push(runtime.block_on(appends(
            &format!("{n} daemon{} on PostgreSQL", if n == 1 { "" } else { "s" }),
            &targets,
            args.writers,
            args.seconds,
        ))?);
    }

    let moto = Moto::start(BUCKET);
    let bucket = runtime.block_on(bucket_puts(&moto, args.blobs.min(2000)))?;
    let mut storage = vec!["--storage".to_string(), format!("s3://{BUCKET}/blobs")];
    for (key, value) in moto.options() {
        storage.extend(["--storage-option".into(), format!("{key}={value}")]);
    }
    let mut put = Vec::new();
    for n in [1, 3] {
        let url = pg.database(&format!("puts{n}"));
        let daemons = cluster(&dir.path().join(format!("puts-{n}")), n, &url, &storage)?;
        let refs: Vec<&Daemon> = daemons.iter().collect();
        put.push(runtime.block_on(puts(
            &format!("{n} daemon{} on one bucket", if n == 1 { "" } else { "s" }),
            &refs,
            args.blobs,
            (n as u64) << 40,
        ))?);
    }

    let report = Report {
        pg_insert_per_second_1: pg_1,
        pg_insert_median_ms: pg_median,
        pg_insert_per_second_many: pg_many,
        appends: appended,
        bucket_puts_per_second: bucket,
        puts: put,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "PostgreSQL synced single-row insert (the floor): {:.0}/s from 1 client (median {:.2} ms), {:.0}/s from {} clients",
        report.pg_insert_per_second_1,
        report.pg_insert_median_ms,
        report.pg_insert_per_second_many,
        args.writers.min(64)
    );
    println!(
        "durable appends over gRPC, {} concurrent appenders, {} s each:",
        args.writers, args.seconds
    );
    for a in &report.appends {
        println!(
            "  {:<28} {:>8.0}/s ({:.2}x the insert floor from 1 client)  median {:.2} ms  p99 {:.2} ms",
            a.setup,
            a.appends_per_second,
            a.appends_per_second / report.pg_insert_per_second_1,
            a.median_ms,
            a.p99_ms
        );
    }
    println!(
        "4 KiB blobs through BatchPut ({} blobs), the bucket's own PUT rate {:.0}/s:",
        args.blobs, report.bucket_puts_per_second
    );
    for p in &report.puts {
        println!(
            "  {:<28} {:>8.0} blobs/s ({:.2}x the bucket's PUT rate)",
            p.setup,
            p.blobs_per_second,
            p.blobs_per_second / report.bucket_puts_per_second
        );
    }
    Ok(ExitCode::SUCCESS)
}
