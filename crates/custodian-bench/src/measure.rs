//! The measuring tools every scenario shares: timing commands, the disk's own limit, a quiet
//! disk between steps, and a daemon started through the test kit.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use custodian_testkit::Daemon;

/// Starts `custodian serve` on loopback with `--storage STORAGE` and `extra` arguments, with an
/// admin token; the daemon is killed when dropped.
pub fn daemon(data_dir: &Path, storage: &str, extra: &[&str]) -> anyhow::Result<Daemon> {
    let mut args = vec!["--storage", storage];
    args.extend_from_slice(extra);
    Daemon::launch(&custodian_testkit::binary(), data_dir, &args)
        .context("starting the daemon (build it first: cargo build --release -p custodian-cli)")
}

/// The daemon's `--storage` value for a backend a scenario names: the embedded RocksDB, or a
/// `file://` object store at `objects`.
pub fn storage_for(backend: &str, objects: &Path) -> anyhow::Result<String> {
    match backend {
        "rocksdb" => Ok("rocksdb".to_string()),
        "file" => Ok(format!("file://{}", objects.display())),
        other => anyhow::bail!("unknown backend {other:?}; use rocksdb or file"),
    }
}

/// Times writing `size` bytes from a prepared buffer and fsyncing them, as
/// `dd bs=8M conv=fsync` would: the disk's limit for anything that must be durable.
pub fn measure_disk(path: &Path, size: u64) -> anyhow::Result<Duration> {
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

/// Bytes as MiB, as every report prints memory and sizes.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Lets the disk finish writing back what the previous step wrote, so each timed step starts
/// from the same quiet disk instead of paying for its predecessor's writeback.
pub fn settle_disk() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(2));
}

/// The daemon's CPU time so far (user + system), from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    // utime and stime are fields 14 and 15 of stat(5).
    stat_seconds(&format!("/proc/{pid}/stat"), 14)
}

/// This process's own CPU time so far (user + system, every thread), from /proc: the bench's
/// gRPC clients' cost over a window when they are all it runs.
pub fn own_cpu_seconds() -> f64 {
    stat_seconds("/proc/self/stat", 14)
}

/// The CPU time (user + system) of this process's children that have exited and been waited
/// for, from /proc: a CLI's cost is this after it ran minus this before.
pub fn children_cpu_seconds() -> f64 {
    // cutime and cstime are fields 16 and 17 of stat(5).
    stat_seconds("/proc/self/stat", 16)
}

/// The sum of fields `field` and `field + 1` (numbered as in stat(5)) of the stat file at
/// `path`, in seconds; 0 when it cannot be read.
fn stat_seconds(path: &str, field: usize) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the last ')', with field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // The kernel counts them in USER_HZ, 100 on Linux.
    (ticks(field) + ticks(field + 1)) as f64 / 100.0
}

/// Waits until the daemon has gone quiet: less than a twentieth of a core busy over one second,
/// for at most `limit`. A burst of writes leaves RocksDB compacting for a while after it is
/// acknowledged; a scenario timed on a store just filled would otherwise pay for the fill's
/// compactions, not for the size of the store. Returns how long the wait took, which the caller
/// reports: that debt is real, only not the scenario's.
pub fn settle_daemon(pid: u32, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut before = cpu_seconds(pid);
    while started.elapsed() < limit {
        std::thread::sleep(Duration::from_secs(1));
        let now = cpu_seconds(pid);
        if now - before < 0.05 {
            break;
        }
        before = now;
    }
    started.elapsed()
}

pub fn gib_per_s(bytes: u64, time: Duration) -> f64 {
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
pub fn run_checked(command: &mut Command) -> anyhow::Result<Vec<u8>> {
    let output = command.stderr(Stdio::piped()).output()?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

pub fn best_of(
    runs: u32,
    mut f: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..runs.max(1) {
        best = best.min(f()?);
    }
    Ok(best)
}

/// Runs a scenario in a fresh work directory `NAME-PID` under `dir` (default: the bench
/// directory under the home folder), removed afterwards; prints its report as JSON or as text.
pub fn run_scenario<R, F, Fut>(
    name: &str,
    dir: Option<&Path>,
    json: bool,
    measure: F,
    print: fn(&R),
) -> anyhow::Result<std::process::ExitCode>
where
    R: serde::Serialize,
    F: FnOnce(std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<R>>,
{
    let base = dir.map_or_else(crate::limits::default_dir, Path::to_path_buf);
    let work = base.join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _cleanup = custodian_testkit::RemoveOnDrop(work.clone());
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(measure(work))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A `Ledger.Append` of one `BenchEvent` entry carrying `payload`, with an append token.
pub fn append_request(
    payload: &custodian_core::entry::Value,
    token: &str,
) -> anyhow::Result<tonic::Request<custodian_proto::ledger::v1::AppendRequest>> {
    let mut request = tonic::Request::new(custodian_proto::ledger::v1::AppendRequest {
        kind: "BenchEvent".into(),
        payload_cbor: custodian_core::entry::encode_value(payload).into(),
        compact: false,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// The SHA-256 of a file, read 1 MiB at a time.
pub fn sha256_of_file(path: &std::path::Path) -> anyhow::Result<custodian_core::Digest> {
    let mut hasher = custodian_core::StreamHasher::new(custodian_core::Algorithm::Sha256);
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize())
}

/// How fast the daemon answers unary calls that do no work.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct CallRate {
    /// Concurrent callers.
    pub callers: usize,
    /// HTTP/2 connections they shared.
    pub connections: usize,
    /// Calls answered per second.
    pub calls_per_second: f64,
    /// Latency of one call, ms.
    pub p50_ms: f64,
    /// Latency of one call, ms.
    pub p99_ms: f64,
    /// The daemon's CPU time (user + system) per call, µs.
    pub daemon_cpu_us_per_call: f64,
}

/// Standard gRPC health checks (`grpc.health.v1.Health/Check`) by `callers` concurrent callers
/// over `connections` HTTP/2 connections for `seconds`. A health check does no work, so its rate
/// is the most unary calls per second this daemon's gRPC stack and its clients, sharing the
/// machine's cores, can carry whatever a call does: the ceiling of every unary scenario with the
/// same callers and connections.
pub async fn noop_calls(
    daemon: &Daemon,
    target: &custodian_client::Target,
    callers: usize,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<CallRate> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let connections = connections.clamp(1, callers.max(1));
    let mut clients = Vec::new();
    for _ in 0..connections {
        let client = custodian_client::Client::connect(target).await?;
        clients.push(HealthClient::new(client.channel()));
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let cpu = cpu_seconds(daemon.pid());
    let mut tasks = Vec::new();
    for c in 0..callers {
        let mut client = clients[c % connections].clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let call = Instant::now();
                client.check(HealthCheckRequest::default()).await?;
                latencies.push(call.elapsed());
            }
            Ok::<_, tonic::Status>(latencies)
        }));
    }
    let latencies = gather_latencies(tasks, "health check").await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(daemon.pid()) - cpu;
    Ok(CallRate {
        daemon_cpu_us_per_call: cpu * 1e6 / latencies.len().max(1) as f64,
        callers,
        connections,
        calls_per_second: latencies.len() as f64 / elapsed,
        p50_ms: custodian_testkit::percentile_ms(&latencies, 0.5),
        p99_ms: custodian_testkit::percentile_ms(&latencies, 0.99),
    })
}

/// A caller task of a scenario: the latency of each of its calls, or the error that stopped it.
pub type Caller<E> = tokio::task::JoinHandle<Result<Vec<Duration>, E>>;

/// Waits for every caller and returns all their latencies, sorted; the first failure names
/// `what` failed and why.
pub async fn gather_latencies<E: std::fmt::Display>(
    callers: Vec<Caller<E>>,
    what: &str,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    for caller in callers {
        latencies.extend(
            caller
                .await?
                .map_err(|e| anyhow::anyhow!("{what} failed: {e}"))?,
        );
    }
    latencies.sort();
    Ok(latencies)
}
