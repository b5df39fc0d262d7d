//! `custodian-bench custody`: one large blob put and fetched through a real daemon, per backend,
//! as a ratio to `openssl dgst -sha256` of the same file and to the disk's write+fsync time.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use custodian_testkit::{RemoveOnDrop, write_test_file};
use serde::{Deserialize, Serialize};

use crate::measure::{best_of, gib_per_s, measure_disk, run_checked, run_timed, settle_disk};

/// Options of `custodian-bench custody`.
#[derive(Args)]
pub struct CustodyArgs {
    /// Blob size in MiB
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Backends to measure: rocksdb, file
    #[arg(long = "backend", default_values_t = ["rocksdb".to_string(), "file".to_string()])]
    backends: Vec<String>,
    /// Where to put the test file and the daemons' data (default: the system temp dir)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Repetitions per measurement; the fastest is reported
    #[arg(long, default_value_t = 2)]
    runs: u32,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Deserialize)]
pub struct BackendResult {
    pub backend: String,
    /// `custodian blob put FILE`: until the daemon acknowledged a durable, verified blob.
    pub put_seconds: f64,
    /// `put_seconds` / the SHA-256 time.
    pub put_ratio: f64,
    /// `put_seconds` / the larger of the SHA-256 time and the disk's write+fsync time.
    pub put_ratio_to_floor: f64,
    /// `custodian blob get DIGEST -o FILE`: verified, fsynced and renamed into place.
    pub get_seconds: f64,
    /// `get_seconds` / the SHA-256 time.
    pub get_ratio: f64,
    /// `get_seconds` / the larger of the SHA-256 time and the disk's write+fsync time.
    pub get_ratio_to_floor: f64,
    /// `custodian blob get DIGEST -o -` to /dev/null: the transfer and its verification alone.
    pub get_stream_seconds: f64,
    /// `get_stream_seconds` / the SHA-256 time.
    pub get_stream_ratio: f64,
    pub daemon_peak_rss_mib: f64,
}

#[derive(Serialize, Deserialize)]
pub struct Report {
    pub size_bytes: u64,
    pub openssl_sha256_seconds: f64,
    pub openssl_sha256_gib_per_s: f64,
    /// Writing the blob's size from memory and fsyncing it: the disk's limit for anything durable.
    pub disk_write_fsync_seconds: f64,
    pub disk_write_fsync_gib_per_s: f64,
    pub backends: Vec<BackendResult>,
}

/// Runs the scenario.
pub fn custody(args: CustodyArgs) -> anyhow::Result<ExitCode> {
    let exe = custodian_testkit::binary();
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = base.join(format!("custodian-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _cleanup = RemoveOnDrop(work.clone());

    let size = args.size_mib << 20;
    let input = work.join("blob.bin");
    eprintln!(
        "writing a {} MiB test file to {}",
        args.size_mib,
        input.display()
    );
    write_test_file(&input, size)?;
    let disk = best_of(args.runs, || {
        measure_disk(&work.join("disk-probe.bin"), size)
    })?;

    let openssl = best_of(args.runs, || {
        run_timed(
            Command::new("openssl")
                .args(["dgst", "-sha256"])
                .arg(&input),
        )
    })
    .context("running `openssl dgst -sha256` (is openssl installed?)")?;
    let mut report = Report {
        size_bytes: size,
        openssl_sha256_seconds: openssl.as_secs_f64(),
        openssl_sha256_gib_per_s: gib_per_s(size, openssl),
        disk_write_fsync_seconds: disk.as_secs_f64(),
        disk_write_fsync_gib_per_s: gib_per_s(size, disk),
        backends: Vec::new(),
    };
    let floor = openssl.max(disk).as_secs_f64();

    for backend in &args.backends {
        let data_dir = work.join(format!("data-{backend}"));
        let storage = match backend.as_str() {
            "rocksdb" => "rocksdb".to_string(),
            "file" => format!("file://{}", work.join("objects").display()),
            other => bail!("unknown backend {other:?}; choose rocksdb or file"),
        };
        let mut put_best = Duration::MAX;
        let mut get_best = Duration::MAX;
        let mut stream_best = Duration::MAX;
        let mut peak = 0u64;
        for _ in 0..args.runs {
            // A fresh daemon and store per run, so every put really stores.
            let _ = std::fs::remove_dir_all(&data_dir);
            let _ = std::fs::remove_dir_all(work.join("objects"));
            let daemon = crate::measure::daemon(&data_dir, &storage, &[])?;
            settle_disk();
            let start = Instant::now();
            let put_output = run_checked(
                Command::new(&exe)
                    .args(["blob", "put", "--json", "--server", &daemon.address])
                    .args(["--token", &daemon.token])
                    .arg(&input),
            )?;
            let put = start.elapsed();
            let lines: serde_json::Value =
                serde_json::from_slice(&put_output).context("parsing put --json")?;
            let digest = lines[0]["sha256"]
                .as_str()
                .context("put --json printed no sha256")?
                .to_owned();
            let output = work.join("out.bin");
            settle_disk();
            let get = run_timed(
                Command::new(&exe)
                    .args(["blob", "get", &digest, "--server", &daemon.address])
                    .args(["--token", &daemon.token, "-o"])
                    .arg(&output),
            )?;
            let _ = std::fs::remove_file(&output);
            settle_disk();
            let stream = run_timed(Command::new(&exe).args([
                "blob",
                "get",
                &digest,
                "--server",
                &daemon.address,
                "--token",
                &daemon.token,
                "-o",
                "-",
            ]))?;
            stream_best = stream_best.min(stream);
            peak = peak.max(daemon.peak_rss());
            put_best = put_best.min(put);
            get_best = get_best.min(get);
        }
        report.backends.push(BackendResult {
            backend: backend.clone(),
            put_seconds: put_best.as_secs_f64(),
            put_ratio: put_best.as_secs_f64() / openssl.as_secs_f64(),
            put_ratio_to_floor: put_best.as_secs_f64() / floor,
            get_seconds: get_best.as_secs_f64(),
            get_ratio: get_best.as_secs_f64() / openssl.as_secs_f64(),
            get_ratio_to_floor: get_best.as_secs_f64() / floor,
            get_stream_seconds: stream_best.as_secs_f64(),
            get_stream_ratio: stream_best.as_secs_f64() / openssl.as_secs_f64(),
            daemon_peak_rss_mib: peak as f64 / (1 << 20) as f64,
        });
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "blob {} MiB; limits: openssl dgst -sha256 {:.3} s ({:.2} GiB/s), \
             disk write+fsync {:.3} s ({:.2} GiB/s)",
            args.size_mib,
            report.openssl_sha256_seconds,
            report.openssl_sha256_gib_per_s,
            report.disk_write_fsync_seconds,
            report.disk_write_fsync_gib_per_s
        );
        println!(
            "{:<8} {:>7} {:>6} {:>7} {:>7} {:>6} {:>7} {:>8} {:>6} {:>10}",
            "backend",
            "put s",
            "×sha",
            "×floor",
            "get s",
            "×sha",
            "×floor",
            "stream s",
            "×sha",
            "peak RSS"
        );
        for b in &report.backends {
            println!(
                "{:<8} {:>7.3} {:>6.2} {:>7.2} {:>7.3} {:>6.2} {:>7.2} {:>8.3} {:>6.2} {:>6.1} MiB",
                b.backend,
                b.put_seconds,
                b.put_ratio,
                b.put_ratio_to_floor,
                b.get_seconds,
                b.get_ratio,
                b.get_ratio_to_floor,
                b.get_stream_seconds,
                b.get_stream_ratio,
                b.daemon_peak_rss_mib
            );
        }
        println!(
            "×sha = time / SHA-256 time; ×floor = time / max(SHA-256, disk write+fsync) time, the \
             least a durable put or an fsynced get can take; stream = get to /dev/null. Each timed step starts after `sync` and a 2 s pause; fastest of {} runs.",
            args.runs
        );
    }
    Ok(ExitCode::SUCCESS)
}
