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
    /// Put and get one large blob through a real daemon, per backend, as a ratio to
    /// `openssl dgst -sha256` of the same file
    #[command(
        long_about = "Starts a daemon per backend on loopback, then times `custodian blob \
put FILE` and `custodian blob get DIGEST -o FILE` on one large file, and prints each as a ratio \
to `openssl dgst -sha256` on the same file in the same run (the floor: every byte must be hashed \
at least once). Also prints the daemon's peak resident memory (VmHWM)."
    )]
    Custody(CustodyArgs),
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
    put_seconds: f64,
    put_ratio: f64,
    get_seconds: f64,
    get_ratio: f64,
    daemon_peak_rss_mib: f64,
}

#[derive(Serialize)]
struct Report {
    size_bytes: u64,
    openssl_sha256_seconds: f64,
    openssl_sha256_gib_per_s: f64,
    backends: Vec<BackendResult>,
}

/// Runs a benchmark.
pub fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Custody(args) => custody(args),
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
        openssl_sha256_gib_per_s: size as f64 / (1u64 << 30) as f64 / openssl.as_secs_f64(),
        backends: Vec::new(),
    };

    for backend in &args.backends {
        let data_dir = work.join(format!("data-{backend}"));
        let storage = match backend.as_str() {
            "rocksdb" => "rocksdb".to_string(),
            "file" => format!("file://{}", work.join("objects").display()),
            other => bail!("unknown backend {other:?}; choose rocksdb or file"),
        };
        let mut put_best = Duration::MAX;
        let mut get_best = Duration::MAX;
        let mut peak = 0u64;
        for _ in 0..args.runs {
            // A fresh daemon and store per run, so every put really stores.
            let _ = std::fs::remove_dir_all(&data_dir);
            let _ = std::fs::remove_dir_all(work.join("objects"));
            let daemon = BenchDaemon::start(&exe, &data_dir, &storage)?;
            let put = run_timed(
                Command::new(&exe)
                    .args(["blob", "put", "--json", "--server", &daemon.address])
                    .arg(&input),
            )?;
            let digest = sha256_of_put(&exe, &daemon.address, &input)?;
            let output = work.join("out.bin");
            let get = run_timed(
                Command::new(&exe)
                    .args(["blob", "get", &digest, "--server", &daemon.address, "-o"])
                    .arg(&output),
            )?;
            let _ = std::fs::remove_file(&output);
            peak = peak.max(daemon.peak_rss()?);
            put_best = put_best.min(put);
            get_best = get_best.min(get);
        }
        report.backends.push(BackendResult {
            backend: backend.clone(),
            put_seconds: put_best.as_secs_f64(),
            put_ratio: put_best.as_secs_f64() / openssl.as_secs_f64(),
            get_seconds: get_best.as_secs_f64(),
            get_ratio: get_best.as_secs_f64() / openssl.as_secs_f64(),
            daemon_peak_rss_mib: peak as f64 / (1 << 20) as f64,
        });
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "blob {} MiB; openssl dgst -sha256: {:.3} s ({:.2} GiB/s)",
            args.size_mib, report.openssl_sha256_seconds, report.openssl_sha256_gib_per_s
        );
        println!(
            "{:<8} {:>9} {:>8} {:>9} {:>8} {:>15}",
            "backend", "put s", "put ×", "get s", "get ×", "daemon peak RSS"
        );
        for b in &report.backends {
            println!(
                "{:<8} {:>9.3} {:>8.2} {:>9.3} {:>8.2} {:>11.1} MiB",
                b.backend,
                b.put_seconds,
                b.put_ratio,
                b.get_seconds,
                b.get_ratio,
                b.daemon_peak_rss_mib
            );
        }
        println!(
            "(× = time / openssl time on the same file; fastest of {} runs)",
            args.runs
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes incompressible bytes, then flushes them to disk so the page cache state is the same
/// for every measurement that follows.
fn write_test_file(path: &Path, size: u64) -> anyhow::Result<()> {
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

fn run_timed(command: &mut Command) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let output = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let elapsed = start.elapsed();
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(elapsed)
}

fn best_of(runs: u32, mut f: impl FnMut() -> anyhow::Result<Duration>) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..runs.max(1) {
        best = best.min(f()?);
    }
    Ok(best)
}

/// Puts the file again (a dedup hit: cheap) to learn its digest from the daemon's own answer.
fn sha256_of_put(exe: &Path, address: &str, input: &Path) -> anyhow::Result<String> {
    let output = Command::new(exe)
        .args(["blob", "put", "--json", "--server", address])
        .arg(input)
        .output()?;
    let lines: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing put --json")?;
    lines[0]["sha256"]
        .as_str()
        .map(str::to_owned)
        .context("put --json printed no sha256")
}

struct BenchDaemon {
    child: Child,
    address: String,
}

impl BenchDaemon {
    fn start(exe: &Path, data_dir: &Path, storage: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(exe)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log",
                "warn",
                "--storage",
                storage,
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the daemon")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("daemon stdout")?).read_line(&mut line)?;
        let address = line
            .trim()
            .strip_prefix("custodian listening on ")
            .with_context(|| format!("unexpected daemon output {line:?}"))?;
        Ok(BenchDaemon {
            address: format!("http://{address}"),
            child,
        })
    }

    fn peak_rss(&self) -> anyhow::Result<u64> {
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

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
