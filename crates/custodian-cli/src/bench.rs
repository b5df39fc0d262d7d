//! `custodian bench`: measures Custodian against this machine's own limits.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde::Serialize;

/// Benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Every scenario in one run, each against its limit: a table, JSON (--json) and, with
    /// --write DIR, the files docs/performance.md shows (including a latency-versus-concurrency
    /// plot)
    All(crate::bench_all::AllArgs),
    /// This machine's limits: SHA-256 and BLAKE3 on one core, sequential write+fsync, fsync
    /// latency, raw RocksDB write rates
    Limits(crate::bench_limits::LimitsArgs),
    /// Put and get one large blob through a real daemon, per backend, as a ratio to
    /// `openssl dgst -sha256` of the same file
    #[command(
        long_about = "Starts a daemon per backend on loopback, then times `custodian blob \
put FILE` and `custodian blob get DIGEST -o FILE` on one large file, and prints each as a ratio \
to `openssl dgst -sha256` on the same file in the same run (the floor: every byte must be hashed \
at least once). Also prints the daemon's peak resident memory (VmHWM)."
    )]
    Custody(CustodyArgs),
    /// Durable ledger appends (1 to 1024 writers), proof latency at 1,000,000 entries, offline
    /// audit speed, with the disk's fsync latency for scale
    Ledger(crate::bench_ledger::LedgerArgs),
    /// Attested runs per second (unary and batched, 1 and 32 clients) and offline verification
    /// of a badge bundle backed by 1,000 runs
    Evidence(crate::bench_evidence::EvidenceArgs),
    /// The built-in scanner on a 1 GiB mixed data pack, as a ratio to `openssl dgst -sha256`
    /// of the same file, and the prompt scanner's precision and recall on a labelled corpus
    Scan(crate::bench_scan::ScanBenchArgs),
    /// Many small blobs (10,000 × 4 KiB) through BatchPut and FindMissing over as many digests,
    /// per backend
    Small(crate::bench_small::SmallArgs),
    /// A 1 GiB hosted data-pack upload over REST, ranged reads and a verified download
    Rest(crate::bench_rest::RestArgs),
    /// 64 clients for 5 minutes on a mixed workload (puts, verified gets, attestations, proofs,
    /// REST downloads): p50/p99 per operation, errors, and whether the daemon's memory stayed
    /// flat. Exits 1 on any error or memory growth
    Load(crate::bench_load::LoadArgs),
}

/// Options of `custodian bench custody`.
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

#[derive(Serialize)]
struct BackendResult {
    backend: String,
    /// `custodian blob put FILE`: until the daemon acknowledged a durable, verified blob.
    put_seconds: f64,
    /// `put_seconds` / the SHA-256 time.
    put_ratio: f64,
    /// `put_seconds` / the larger of the SHA-256 time and the disk's write+fsync time.
    put_ratio_to_floor: f64,
    /// `custodian blob get DIGEST -o FILE`: verified, fsynced and renamed into place.
    get_seconds: f64,
    /// `get_seconds` / the SHA-256 time.
    get_ratio: f64,
    /// `get_seconds` / the larger of the SHA-256 time and the disk's write+fsync time.
    get_ratio_to_floor: f64,
    /// `custodian blob get DIGEST -o -` to /dev/null: the transfer and its verification alone.
    get_stream_seconds: f64,
    /// `get_stream_seconds` / the SHA-256 time.
    get_stream_ratio: f64,
    daemon_peak_rss_mib: f64,
}

#[derive(Serialize)]
struct Report {
    size_bytes: u64,
    openssl_sha256_seconds: f64,
    openssl_sha256_gib_per_s: f64,
    /// Writing the blob's size from memory and fsyncing it: the disk's limit for anything durable.
    disk_write_fsync_seconds: f64,
    disk_write_fsync_gib_per_s: f64,
    backends: Vec<BackendResult>,
}

/// Runs a benchmark.
pub fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Custody(args) => custody(args),
        BenchCommand::Ledger(args) => crate::bench_ledger::run(args),
        BenchCommand::Evidence(args) => crate::bench_evidence::run(args),
        BenchCommand::Scan(args) => crate::bench_scan::run(args),
        BenchCommand::Small(args) => crate::bench_small::run(args),
        BenchCommand::Rest(args) => crate::bench_rest::run(args),
        BenchCommand::Load(args) => crate::bench_load::run(args),
        BenchCommand::Limits(args) => crate::bench_limits::run(args),
        BenchCommand::All(args) => crate::bench_all::run(args),
    }
}

fn custody(args: CustodyArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the custodian binary")?;
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
            let daemon = BenchDaemon::start(&exe, &data_dir, &storage, &[])?;
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
            peak = peak.max(daemon.peak_rss()?);
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

/// Writes incompressible bytes and syncs them, so every measurement that follows starts from the
/// same page-cache state.
pub fn write_test_file(path: &Path, size: u64) -> anyhow::Result<()> {
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
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

/// Times writing `size` bytes from a prepared buffer and fsyncing them, as
/// `dd bs=8M conv=fsync` would: the disk's limit for anything that must be durable.
fn measure_disk(path: &Path, size: u64) -> anyhow::Result<Duration> {
    let buffer: Vec<u8> = (0..8u64 << 20)
        .map(|i| (i.wrapping_mul(0x9E37_79B9) >> 13) as u8)
        .collect();
    let start = Instant::now();
    let mut file = std::fs::File::create(path)?;
    let mut written = 0;
    while written < size {
        let n = (size - written).min(buffer.len() as u64) as usize;
        file.write_all(&buffer[..n])?;
        written += n as u64;
    }
    file.sync_all()?;
    let elapsed = start.elapsed();
    drop(file);
    std::fs::remove_file(path)?;
    Ok(elapsed)
}

/// Lets the disk finish writing back what the previous step wrote, so each timed step starts
/// from the same quiet disk instead of paying for its predecessor's writeback.
fn settle_disk() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(2));
}

fn gib_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / time.as_secs_f64()
}

/// Runs a command to completion and returns how long it took.
pub fn run_timed(command: &mut Command) -> anyhow::Result<Duration> {
    let start = Instant::now();
    command.stdout(Stdio::null());
    run_checked(command)?;
    Ok(start.elapsed())
}

/// Runs a command to completion; returns its standard output, or an error with its stderr.
fn run_checked(command: &mut Command) -> anyhow::Result<Vec<u8>> {
    let output = command.stderr(Stdio::piped()).output()?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

fn best_of(runs: u32, mut f: impl FnMut() -> anyhow::Result<Duration>) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..runs.max(1) {
        best = best.min(f()?);
    }
    Ok(best)
}

/// A daemon started for a benchmark, killed when dropped.
pub struct BenchDaemon {
    child: Child,
    /// Its gRPC address.
    pub address: String,
    /// Its REST address.
    pub rest: String,
    /// An admin token for it.
    pub token: String,
}

impl BenchDaemon {
    /// Starts `exe serve` on a free loopback port with `extra` arguments.
    pub fn start(
        exe: &Path,
        data_dir: &Path,
        storage: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let (_, token) = custodian_server::auth::create_token(
            data_dir,
            "bench",
            vec![custodian_server::auth::Scope::Admin],
            vec!["*".into()],
        )
        .context("creating the benchmark's admin token")?;
        let mut child = Command::new(exe)
            .args([
                "serve",
                "--init",
                "--listen",
                "127.0.0.1:0",
                "--log",
                "warn",
                "--storage",
                storage,
                "--rest-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the daemon")?;
        let mut out = BufReader::new(child.stdout.take().context("daemon stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        let address = line
            .trim()
            .strip_prefix("custodian listening on ")
            .with_context(|| format!("unexpected daemon output {line:?}"))?
            .to_string();
        let mut line = String::new();
        out.read_line(&mut line)?;
        let rest = line
            .trim()
            .strip_prefix("custodian rest listening on ")
            .with_context(|| format!("unexpected daemon output {line:?}"))?
            .to_string();
        Ok(BenchDaemon {
            address: format!("http://{address}"),
            rest: format!("http://{rest}"),
            token,
            child,
        })
    }

    /// The client options that reach this daemon with its admin token.
    pub fn server_arg(&self) -> crate::blob::ServerArg {
        crate::blob::ServerArg {
            server: self.address.clone(),
            token: Some(self.token.clone()),
            ca_cert: None,
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's peak resident memory (VmHWM) in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmHWM in /proc status")?
            .parse()?;
        Ok(kib * 1024)
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `p` quantile (0..=1) of sorted latencies, in milliseconds; 0 for none.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

/// Removes a directory when dropped.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
