//! `custodian-bench ledger`: durable append throughput and latency through the group-commit
//! sequencer, inclusion-proof latency on a 1,000,000-entry log, and offline audit speed, with the
//! disk's own fsync latency for scale.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use custodian_core::entry::{EntryKind, Value};
use custodian_core::note::SignerKey;
use custodian_rocksdb::RocksLedger;
use custodian_server::{Sequencer, SequencerConfig};
use custodian_storage::ledger::{Ledger, LedgerBackend};
use serde::{Deserialize, Serialize};
use std::process::ExitCode;

/// Options of `custodian-bench ledger`.
#[derive(Args)]
pub struct LedgerArgs {
    /// Concurrent writers to measure; each appends one entry at a time and waits for its receipt
    #[arg(long = "writers", value_delimiter = ',', default_values_t = [1usize, 8, 64, 256, 1024])]
    writers: Vec<usize>,
    /// Seconds of appending per writer count
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Entries in the log used for proof latency and audit speed
    #[arg(long, default_value_t = 1_000_000)]
    log_size: u64,
    /// Attested runs in a second log, every entry of which the registry applies at a replay
    /// (0 skips it): the start-up of an evidence-heavy log, replayed and from its snapshot
    #[arg(long, default_value_t = 1_000_000)]
    run_log_size: u64,
    /// Where to put the benchmark's databases (default: ~/.cache/custodian/bench, i.e. the same
    /// disk as the daemon's default data)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Deserialize)]
pub struct AppendResult {
    pub writers: usize,
    pub appends: u64,
    pub appends_per_second: f64,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub mean_batch: f64,
    /// The daemon's peak resident memory (gRPC runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_peak_rss_mib: Option<f64>,
    /// The daemon's CPU time (user + system) per append, µs (gRPC runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_cpu_us_per_append: Option<f64>,
    /// The gRPC writers' own CPU time per append, µs: the bench process's, over the same window
    /// (gRPC runs only; absent from reports before it was measured). With the daemon's, what
    /// an append costs the cores both ends share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writers_cpu_us_per_append: Option<f64>,
    /// For the gRPC rows of [`NOOP_WRITERS`] writers, which issue 22 sets a target for:
    /// RocksDB's floors on the daemon's disk, measured just before and just after the row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floors: Option<crate::limits::RocksFloors>,
}

/// The registry's start-up on a log of attested runs only: every entry is the registry's, and
/// the index keeps the latest runs of each eval × model.
#[derive(Serialize, Deserialize)]
pub struct RunLogStartup {
    /// Entries (runs) in the log.
    pub entries: u64,
    /// The eval × model pairs they are spread over (10 versions × 100 evals × 10 models).
    pub pairs: u64,
    /// Seconds to fill it.
    pub fill_seconds: f64,
    /// Rebuilding the index from the whole log.
    pub replay_seconds: f64,
    /// Rebuilding it from a snapshot `followed` entries old.
    pub restore_seconds: f64,
    /// Entries the snapshot lists.
    pub listed: u64,
    /// Entries past the snapshot the restore followed.
    pub followed: u64,
}

#[derive(Serialize, Deserialize)]
pub struct Report {
    pub fsync_median_ms: f64,
    pub fsync_p99_ms: f64,
    /// In process: the sequencer and RocksDB alone.
    pub appends: Vec<AppendResult>,
    /// Over gRPC to a real daemon on loopback (the clients share the machine's cores).
    pub grpc_appends: Vec<AppendResult>,
    /// The same with [`NOOP_WRITERS`] writers, each appending on an `AppendStream` of its own
    /// (one request on it at a time, as the unary writers): what the calls' own cost takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_stream_appends: Option<AppendResult>,
    /// The same streams with compact answers (each entry's index, leaf hash and checkpoint size,
    /// no receipt): what building and sending each receipt takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_compact_stream_appends: Option<AppendResult>,
    pub log_size: u64,
    pub fill_seconds: f64,
    pub inclusion_proof_median_us: f64,
    pub inclusion_proof_p99_us: f64,
    pub receipt_median_us: f64,
    pub receipt_p99_us: f64,
    pub audit_entries_per_second: f64,
    pub audit_seconds: f64,
    /// Rebuilding the registry index from the whole log, as the daemon does at start-up.
    pub registry_replay_seconds: f64,
    /// Rebuilding it from a snapshot, as a restart does, with as many entries past the snapshot
    /// as a daemon lets pass before it saves the next one (the most a restart reads past it).
    #[serde(default)]
    pub registry_restore_seconds: Option<f64>,
    /// How many entries past the snapshot that restart followed.
    #[serde(default)]
    pub registry_restore_followed: u64,
    /// The same two start-ups on a log of attested runs only (`--run-log-size`).
    #[serde(default)]
    pub run_log: Option<RunLogStartup>,
    /// In process, into the log of `log_size` entries, with the largest writer count: the same
    /// measurement as `appends` on a full log instead of an empty one.
    #[serde(default)]
    pub appends_on_large_log: Option<AppendResult>,
    /// `openssl dgst -sha256` over the exported files: the floor of reading and hashing them once.
    pub openssl_sha256_export_seconds: f64,
    /// `audit_seconds` / `openssl_sha256_export_seconds`.
    pub audit_ratio_to_openssl: f64,
    /// Health checks by as many callers over as many connections as the target row's gRPC
    /// writers ([`NOOP_WRITERS`]): the ceiling of any unary call on this machine.
    #[serde(default)]
    pub grpc_noop: Option<crate::measure::CallRate>,
    /// `custodian serve` on the large log: seconds from launch to its first answer at its first start
    /// (a replay of the whole log) and at a restart after `kill -9` (from the snapshot the
    /// first start saved).
    #[serde(default)]
    pub daemon_start_seconds: Option<(f64, f64)>,
    /// Over gRPC, [`NOOP_WRITERS`] writers appending to that daemon on the large log after its
    /// restart: the `grpc_appends` row of the same writer count on a full log.
    #[serde(default)]
    pub grpc_appends_on_large_log: Option<AppendResult>,
}

/// The writer count whose gRPC appends issue 22 sets a target for, and whose unary ceiling is
/// measured beside them.
pub const NOOP_WRITERS: usize = 64;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at]
}

fn payload(i: u64) -> Value {
    Value::Map(vec![
        (Value::Text("run".into()), Value::Integer(i.into())),
        (
            Value::Text("data_pack_sha256".into()),
            Value::Text(format!("sha256:{i:064x}")),
        ),
        (
            Value::Text("reproducibility_context".into()),
            Value::Map(vec![
                (Value::Text("seed".into()), Value::Integer(1234.into())),
                (Value::Text("runner".into()), Value::Text("bench".into())),
            ]),
        ),
    ])
}

/// Versions, evals per version and models in the attested-runs log.
const RUN_LOG_SHAPE: (u64, u64, u64) = (10, 100, 10);

/// Fills a log at `path` with `count` attested runs cycling over [`RUN_LOG_SHAPE`]'s eval × model
/// pairs, each carrying an envelope of 1 KiB (real ones are 1–2 KiB); then measures the registry's
/// start-up on it: a replay of the whole log, and a restart from a snapshot as old as a daemon
/// lets it get.
fn run_log_startup(path: &Path, count: u64) -> anyhow::Result<RunLogStartup> {
    use custodian_core::registry::{RunAttested, to_payload};
    let backend: Arc<dyn LedgerBackend> = Arc::new(RocksLedger::open(path)?);
    let ledger = Ledger::open(backend, signer()?)?;
    let (versions, evals, models) = RUN_LOG_SHAPE;
    let envelope = "e".repeat(1024);
    let started = Instant::now();
    let mut done = 0u64;
    while done < count {
        let n = 10_000.min(count - done);
        let requests = (done..done + n)
            .map(|i| {
                let run = RunAttested {
                    name: "bench-package".into(),
                    version: format!("1.0.{}", i % versions),
                    manifest: format!("sha256:{:064x}", i % versions),
                    eval_id: format!("e{:03}", (i / versions) % evals),
                    model: format!("m{:02}", (i / (versions * evals)) % models),
                    passed: true,
                    data_pack_sha256: None,
                    context_sha256: format!("sha256:{i:064x}"),
                    runner: "bench".into(),
                    finished_ms: 1_700_000_000_000 + i,
                    attester_key: "bench+00000000+AAAA".into(),
                    envelope: envelope.clone(),
                    private: false,
                };
                Ok((EntryKind::RunAttested, to_payload(&run)?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        ledger.append(requests, 1_700_000_000_000 + done)?;
        done += n;
    }
    let fill_seconds = started.elapsed().as_secs_f64();
    let size = ledger.latest().size;
    let startups = registry_startups(&ledger, &path.with_extension("registry-index"))?;
    Ok(RunLogStartup {
        entries: size,
        pairs: versions * evals * models,
        fill_seconds,
        replay_seconds: startups.replay_seconds,
        restore_seconds: startups.restore_seconds,
        listed: startups.listed,
        followed: startups.followed,
    })
}

/// The registry's two start-ups on one log, timed in process.
struct Startups {
    replay_seconds: f64,
    restore_seconds: f64,
    listed: u64,
    followed: u64,
}

/// Times the registry index rebuilt from the whole of `ledger`, as a first start does, then from
/// a snapshot at `snapshot` as old as a daemon lets it get (so the restart also follows that many
/// entries past it).
fn registry_startups(ledger: &Ledger, snapshot: &Path) -> anyhow::Result<Startups> {
    let size = ledger.latest().size;
    let started = Instant::now();
    custodian_server::registry::replay_count(ledger)?;
    let replay_seconds = started.elapsed().as_secs_f64();
    let followed = custodian_server::REGISTRY_SNAPSHOT_EVERY.min(size);
    custodian_server::registry::save_snapshot_at(ledger, size - followed, snapshot)?;
    let listed =
        custodian_server::registry::Snapshot::read(snapshot)?.map_or(0, |s| s.kept.len() as u64);
    let started = Instant::now();
    anyhow::ensure!(
        custodian_server::registry::restore_count(ledger, snapshot).is_some(),
        "the registry index snapshot at {} was not used",
        snapshot.display()
    );
    Ok(Startups {
        replay_seconds,
        restore_seconds: started.elapsed().as_secs_f64(),
        listed,
        followed,
    })
}

fn signer() -> anyhow::Result<SignerKey> {
    Ok(SignerKey::from_seed("bench.custodian/ledger", [7; 32])?)
}

/// The disk's fdatasync latency for a small write, the floor of a durable append's latency.
fn fsync_latency(dir: &Path) -> anyhow::Result<(Duration, Duration)> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = vec![0x5au8; 4096];
    let mut times = Vec::new();
    for _ in 0..300 {
        file.write_all(&block)?;
        let start = Instant::now();
        file.sync_data()?;
        times.push(start.elapsed());
    }
    std::fs::remove_file(&path)?;
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

async fn appends(dir: &Path, writers: usize, seconds: u64) -> anyhow::Result<AppendResult> {
    let path = dir.join(format!("appends-{writers}"));
    let _ = std::fs::remove_dir_all(&path);
    appends_to(&path, writers, seconds).await
}

/// Durable appends by `writers` concurrent writers for `seconds` into the ledger at `path`, new
/// or already holding entries.
async fn appends_to(path: &Path, writers: usize, seconds: u64) -> anyhow::Result<AppendResult> {
    let backend: Arc<dyn LedgerBackend> = Arc::new(RocksLedger::open(path)?);
    let before = backend.checkpoints(1, usize::MAX)?.len() as u64;
    let ledger = Arc::new(Ledger::open(backend.clone(), signer()?)?);
    let sequencer = Sequencer::start(ledger.clone(), SequencerConfig::default(), None);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let sequencer = sequencer.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let start = Instant::now();
                let (appended, checkpoint) = sequencer
                    .append(
                        EntryKind::Other("BenchEvent".into()),
                        payload(w as u64 * 1_000_000_000 + i),
                    )
                    .await?;
                // A durable receipt: the proof against the batch's signed checkpoint.
                sequencer.ledger().receipt_for(&appended, &checkpoint)?;
                latencies.push(start.elapsed());
                i += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let (latencies, elapsed) = collect(tasks).await?;
    let checkpoints = backend.checkpoints(1, usize::MAX)?.len() as u64 - before;
    drop(sequencer);
    Ok(summarize(writers, latencies, elapsed, checkpoints, None))
}

/// Waits for every writer; returns all latencies, sorted, and the wall time.
async fn collect(
    tasks: Vec<crate::measure::Caller<anyhow::Error>>,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let started = Instant::now();
    let latencies = crate::measure::gather_latencies(tasks, "an append").await?;
    Ok((latencies, started.elapsed()))
}

fn summarize(
    writers: usize,
    latencies: Vec<Duration>,
    elapsed: Duration,
    checkpoints: u64,
    daemon_peak_rss: Option<u64>,
) -> AppendResult {
    let appends = latencies.len() as u64;
    AppendResult {
        writers,
        appends,
        appends_per_second: appends as f64 / elapsed.as_secs_f64(),
        median_ms: percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        p99_ms: percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        mean_batch: appends as f64 / checkpoints.max(1) as f64,
        daemon_peak_rss_mib: daemon_peak_rss.map(crate::measure::mib),
        daemon_cpu_us_per_append: None,
        writers_cpu_us_per_append: None,
        floors: None,
    }
}

const BENCH_TOKEN: &str = "bench-append-token";
/// HTTP/2 connections the gRPC writers share.
const GRPC_CONNECTIONS: usize = 4;

/// How the gRPC writers send their appends.
#[derive(Clone, Copy)]
enum Calls {
    /// One `Append` call per entry.
    Unary,
    /// One `AppendStream` per writer, one request on it at a time.
    Stream,
    /// The same, each request asking for a compact answer instead of a receipt.
    CompactStream,
}

/// What the rows of writers asking for compact answers add to their name.
pub(crate) const COMPACT_ANSWERS: &str = ", compact answers";

impl Calls {
    /// Whether each request asks for a compact answer.
    fn compact(self) -> bool {
        matches!(self, Calls::CompactStream)
    }
}

async fn grpc_appends(
    dir: &Path,
    writers: usize,
    seconds: u64,
    calls: Calls,
) -> anyhow::Result<AppendResult> {
    let name = match calls {
        Calls::Unary => format!("grpc-{writers}"),
        Calls::Stream => format!("grpc-stream-{writers}"),
        Calls::CompactStream => format!("grpc-compact-stream-{writers}"),
    };
    let daemon =
        crate::measure::daemon(&dir.join(name), "rocksdb", &["--append-token", BENCH_TOKEN])?;
    grpc_append_load(&daemon, writers, seconds, calls).await
}

/// One writer's `AppendStream`: requests go in through the sender, answers come out in order.
struct AppendStreamWriter {
    requests: tokio::sync::mpsc::Sender<custodian_proto::ledger::v1::AppendRequest>,
    answers: tonic::Streaming<custodian_proto::ledger::v1::AppendStreamResponse>,
}

impl AppendStreamWriter {
    async fn open(
        client: &mut custodian_proto::ledger::v1::ledger_client::LedgerClient<
            custodian_client::Conn,
        >,
    ) -> anyhow::Result<Self> {
        let (requests, outgoing) = tokio::sync::mpsc::channel(1);
        let answers = client
            .append_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        Ok(AppendStreamWriter { requests, answers })
    }

    async fn append(
        &mut self,
        request: custodian_proto::ledger::v1::AppendRequest,
    ) -> anyhow::Result<()> {
        let compact = request.compact;
        self.requests
            .send(request)
            .await
            .map_err(|_| anyhow::anyhow!("the append stream closed"))?;
        let answer = self
            .answers
            .message()
            .await?
            .context("the append stream ended without an answer")?;
        anyhow::ensure!(
            answer.error_code == 0,
            "an append on the stream was refused: {} ({})",
            answer.error_message,
            answer.error_code
        );
        // A compact answer carries the entry's place and no receipt; the others, a receipt.
        anyhow::ensure!(
            answer.receipt.is_none() == compact && answer.leaf_hash.len() == 32,
            "the daemon's answer does not match the request (compact {compact}): receipt {}, a leaf hash of {} bytes",
            answer.receipt.is_some(),
            answer.leaf_hash.len()
        );
        Ok(())
    }
}

/// `writers` appending over gRPC to `daemon` (started with `--append-token BENCH_TOKEN`) for
/// `seconds`, each one entry at a time, waiting for its receipt.
async fn grpc_append_load(
    daemon: &custodian_testkit::Daemon,
    writers: usize,
    seconds: u64,
    calls: Calls,
) -> anyhow::Result<AppendResult> {
    use custodian_proto::ledger::v1 as pb;
    // Writers share a few HTTP/2 connections, as many clients would: one connection is served by
    // one task on the daemon, so a single connection would measure one core.
    let connections = writers.clamp(1, GRPC_CONNECTIONS);
    let mut clients = Vec::new();
    for _ in 0..connections {
        // Every call on these connections carries the append token (the client's bearer
        // interceptor), unary calls and streams alike.
        let client = custodian_client::Client::connect(&daemon.target(Some(BENCH_TOKEN))).await?;
        clients.push(client.ledger());
    }
    let client = clients[0].clone();
    let size_before = client
        .clone()
        .get_log_info(pb::GetLogInfoRequest {})
        .await?
        .into_inner()
        .size;
    // The floors beside a targeted row, on the daemon's disk while it is idle.
    let probe = daemon
        .data_dir
        .parent()
        .unwrap_or(&daemon.data_dir)
        .to_path_buf();
    let before = match writers {
        NOOP_WRITERS => Some(tokio::task::block_in_place(|| {
            crate::limits::RocksFloors::measure(&probe)
        })?),
        _ => None,
    };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let cpu = crate::measure::cpu_seconds(daemon.pid());
    let own_cpu = crate::measure::own_cpu_seconds();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = clients[w % connections].clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = match calls {
                Calls::Unary => None,
                Calls::Stream | Calls::CompactStream => {
                    Some(AppendStreamWriter::open(&mut client).await?)
                }
            };
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let payload =
                    custodian_core::entry::encode_value(&payload(w as u64 * 1_000_000_000 + i));
                let request = pb::AppendRequest {
                    kind: "BenchEvent".into(),
                    payload_cbor: payload.into(),
                    compact: calls.compact(),
                };
                let start = Instant::now();
                match stream.as_mut() {
                    None => {
                        client.append(request).await?;
                    }
                    Some(stream) => stream.append(request).await?,
                }
                latencies.push(start.elapsed());
                i += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let (latencies, elapsed) = collect(tasks).await?;
    let cpu = crate::measure::cpu_seconds(daemon.pid()) - cpu;
    let own_cpu = crate::measure::own_cpu_seconds() - own_cpu;
    // The batches are the checkpoints signed while the writers appended: on a log that held
    // entries before, those the log had already signed are not counted.
    let mut checkpoints = 0u64;
    let mut stream = client
        .clone()
        .list_checkpoints(pb::ListCheckpointsRequest {
            from_size: size_before + 1,
        })
        .await?
        .into_inner();
    while let Some(item) = futures::StreamExt::next(&mut stream).await {
        item?;
        checkpoints += 1;
    }
    let appends = latencies.len().max(1) as f64;
    let mut result = summarize(
        writers,
        latencies,
        elapsed,
        checkpoints,
        Some(daemon.peak_rss()),
    );
    result.daemon_cpu_us_per_append = Some(cpu * 1e6 / appends);
    result.writers_cpu_us_per_append = Some(own_cpu * 1e6 / appends);
    if let Some(before) = before {
        let after =
            tokio::task::block_in_place(|| crate::limits::RocksFloors::after(before, &probe))?;
        result.floors = Some(after);
    }
    Ok(result)
}

/// What an append cost the CPU, for the text output: the daemon's time and, where measured, the
/// writers' and the rate the machine's cores would reach if both ends kept them all busy at
/// that cost.
fn cpu_per_append(result: &AppendResult) -> String {
    let daemon = result.daemon_cpu_us_per_append.unwrap_or_default();
    match result.writers_cpu_us_per_append {
        Some(writers) if daemon + writers > 0.0 => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            format!(
                "daemon CPU {daemon:.0} µs and the writers' {writers:.0} µs per append (at that \
                 cost {cores} busy cores reach {:.0}/s)",
                cores as f64 * 1e6 / (daemon + writers)
            )
        }
        _ => format!("daemon CPU {daemon:.0} µs per append"),
    }
}

/// RocksDB's group commit measured beside a row, the row's ratio to it and the group commit's own
/// p99, for the text output.
fn floor_beside(result: &AppendResult) -> String {
    result.floors.map_or_else(String::new, |f| {
        let p99 = f
            .group_synced_put_p99_ms
            .map_or(String::new(), |p99| format!(", their p99 {p99:.2} ms"));
        format!(
            "; RocksDB {}-writer synced puts {:.0}/s beside it ({:.2}×{p99})",
            NOOP_WRITERS,
            f.group_synced_puts_per_s,
            result.appends_per_second / f.group_synced_puts_per_s
        )
    })
}

/// Health checks against a fresh daemon by `callers` over the gRPC writers' connections.
async fn grpc_noop(
    dir: &Path,
    callers: usize,
    seconds: u64,
) -> anyhow::Result<crate::measure::CallRate> {
    let daemon = crate::measure::daemon(&dir.join("grpc-noop"), "rocksdb", &[])?;
    crate::measure::noop_calls(
        &daemon,
        &daemon.target(None),
        callers,
        GRPC_CONNECTIONS,
        seconds,
    )
    .await
}

/// Runs the benchmark.
pub fn run(args: LedgerArgs) -> anyhow::Result<ExitCode> {
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set; pass --dir")?;
            PathBuf::from(home).join(".cache/custodian/bench")
        }
    };
    let dir = dir.join(format!("ledger-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = measure(&args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "disk fdatasync (4 KiB): median {:.2} ms, p99 {:.2} ms — the floor of one durable append",
        report.fsync_median_ms, report.fsync_p99_ms
    );
    for (title, results) in [
        (
            "durable appends in process (sequencer + RocksDB; request → durable, signed receipt):",
            &report.appends,
        ),
        (
            "durable appends over gRPC to a daemon on loopback (clients share the 2 cores):",
            &report.grpc_appends,
        ),
    ] {
        println!("{title}");
        println!(
            "  writers  appends/s   median ms (× fsync)   p99 ms   entries per batch (fsync)   daemon peak RSS"
        );
        for a in results {
            let rss = a
                .daemon_peak_rss_mib
                .map_or(String::new(), |m| format!("{m:.0} MiB"));
            println!(
                "  {:>7}  {:>9.0}   {:>9.2} ({:>5.1}×)   {:>6.2}   {:>8.1}                    {rss}",
                a.writers,
                a.appends_per_second,
                a.median_ms,
                a.median_ms / report.fsync_median_ms,
                a.p99_ms,
                a.mean_batch
            );
        }
    }
    for (a, answers) in [
        (&report.grpc_stream_appends, ""),
        (&report.grpc_compact_stream_appends, COMPACT_ANSWERS),
    ]
    .into_iter()
    .filter_map(|(a, answers)| Some((a.as_ref()?, answers)))
    {
        println!(
            "the {} gRPC writers again, each on an AppendStream of its own (one request at a time{answers}): {:.0} appends/s, median {:.2} ms ({:.1}× fsync), p99 {:.2} ms, {:.1} entries per batch, {}{}",
            a.writers,
            a.appends_per_second,
            a.median_ms,
            a.median_ms / report.fsync_median_ms,
            a.p99_ms,
            a.mean_batch,
            cpu_per_append(a),
            floor_beside(a)
        );
    }
    if let Some(noop) = &report.grpc_noop {
        println!(
            "unary gRPC calls that do no work (health checks), {} callers over {} connections: {:.0} calls/s, median {:.2} ms, p99 {:.2} ms, daemon CPU {:.0} µs per call — no unary call goes faster here",
            noop.callers,
            noop.connections,
            noop.calls_per_second,
            noop.p50_ms,
            noop.p99_ms,
            noop.daemon_cpu_us_per_call
        );
    }
    println!(
        "log of {} entries filled in {:.1} s ({:.0} entries/s in batches of 10,000)",
        report.log_size,
        report.fill_seconds,
        report.log_size as f64 / report.fill_seconds
    );
    println!(
        "inclusion proof at {} entries (from stored hashes, checked against the signed root): median {:.1} µs, p99 {:.1} µs",
        report.log_size, report.inclusion_proof_median_us, report.inclusion_proof_p99_us
    );
    println!(
        "receipt (entry + proof + checkpoint, verified before it is returned): median {:.1} µs, p99 {:.1} µs",
        report.receipt_median_us, report.receipt_p99_us
    );
    println!(
        "offline audit of the exported log: {:.0} entries/s ({:.1} s for {} entries) = {:.1}× `openssl dgst -sha256` of the export ({:.2} s)",
        report.audit_entries_per_second,
        report.audit_seconds,
        report.log_size,
        report.audit_ratio_to_openssl,
        report.openssl_sha256_export_seconds
    );
    println!(
        "registry index rebuilt from the log (daemon start-up): {:.2} s for {} entries ({:.0} entries/s)",
        report.registry_replay_seconds,
        report.log_size,
        report.log_size as f64 / report.registry_replay_seconds
    );
    if let Some(runs) = &report.run_log {
        println!(
            "a log of {} attested runs over {} eval × model pairs (filled in {:.1} s): registry index replayed in {:.2} s; rebuilt from its snapshot ({} entries listed, {} past it) in {:.3} s ({:.4}× the replay)",
            runs.entries,
            runs.pairs,
            runs.fill_seconds,
            runs.replay_seconds,
            runs.listed,
            runs.followed,
            runs.restore_seconds,
            runs.restore_seconds / runs.replay_seconds
        );
    }
    if let Some((first, restart)) = report.daemon_start_seconds {
        println!(
            "custodian serve on the {}-entry log, launch to its first answer: {:.2} s at its first start (whole-log replay), {:.2} s at a restart after kill -9 (from its snapshot)",
            report.log_size, first, restart
        );
    }
    if let Some(seconds) = report.registry_restore_seconds {
        println!(
            "registry index rebuilt from its snapshot (daemon restart): {:.3} s for {} entries, {} of them past the snapshot ({:.4}× the replay)",
            seconds,
            report.log_size,
            report.registry_restore_followed,
            seconds / report.registry_replay_seconds
        );
    }
    if let Some(large) = &report.grpc_appends_on_large_log {
        let fresh = report
            .grpc_appends
            .iter()
            .find(|a| a.writers == large.writers);
        println!(
            "{} gRPC writers appending to that daemon on the {}-entry log: {:.0} appends/s, median {:.2} ms, p99 {:.2} ms, {}{}",
            large.writers,
            report.log_size,
            large.appends_per_second,
            large.median_ms,
            large.p99_ms,
            cpu_per_append(large),
            fresh.map_or(String::new(), |f| format!(
                " ({:.2}× the rate to a fresh daemon)",
                large.appends_per_second / f.appends_per_second
            ))
        );
    }
    if let Some(large) = &report.appends_on_large_log {
        let fresh = report.appends.iter().find(|a| a.writers == large.writers);
        println!(
            "{} writers appending into the {}-entry log: {:.0} appends/s, median {:.2} ms, p99 {:.2} ms{}",
            large.writers,
            report.log_size,
            large.appends_per_second,
            large.median_ms,
            large.p99_ms,
            fresh.map_or(String::new(), |f| format!(
                " ({:.2}× the rate into an empty log)",
                large.appends_per_second / f.appends_per_second
            ))
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn measure(args: &LedgerArgs, dir: &Path) -> anyhow::Result<Report> {
    let (fsync_median, fsync_p99) = fsync_latency(dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut append_results = Vec::new();
    for &writers in &args.writers {
        let result = runtime.block_on(appends(dir, writers, args.seconds))?;
        eprintln!(
            "  {writers} writers: {:.0} appends/s, median {:.2} ms, p99 {:.2} ms",
            result.appends_per_second, result.median_ms, result.p99_ms
        );
        append_results.push(result);
    }
    let mut grpc_results = Vec::new();
    for &writers in &args.writers {
        let result = runtime.block_on(grpc_appends(dir, writers, args.seconds, Calls::Unary))?;
        eprintln!(
            "  {writers} gRPC writers: {:.0} appends/s, median {:.2} ms, p99 {:.2} ms, {}{}",
            result.appends_per_second,
            result.median_ms,
            result.p99_ms,
            cpu_per_append(&result),
            floor_beside(&result)
        );
        grpc_results.push(result);
    }
    // The 64 writers on streams, with receipts and then with compact answers.
    let stream_row = |calls: Calls| -> anyhow::Result<Option<AppendResult>> {
        if !args.writers.contains(&NOOP_WRITERS) {
            return Ok(None);
        }
        let result = runtime.block_on(grpc_appends(dir, NOOP_WRITERS, args.seconds, calls))?;
        eprintln!(
            "  {NOOP_WRITERS} gRPC writers, each on its own AppendStream{}: {:.0} appends/s, median {:.2} ms, p99 {:.2} ms, {}{}",
            if calls.compact() { COMPACT_ANSWERS } else { "" },
            result.appends_per_second,
            result.median_ms,
            result.p99_ms,
            cpu_per_append(&result),
            floor_beside(&result)
        );
        Ok(Some(result))
    };
    let grpc_stream_appends = stream_row(Calls::Stream)?;
    let grpc_compact_stream_appends = stream_row(Calls::CompactStream)?;
    let grpc_noop = if args.writers.contains(&NOOP_WRITERS) {
        let noop = runtime.block_on(grpc_noop(dir, NOOP_WRITERS, args.seconds))?;
        eprintln!(
            "  {NOOP_WRITERS} gRPC callers of a health check (no work): {:.0} calls/s, median {:.2} ms, p99 {:.2} ms, daemon CPU {:.0} µs per call",
            noop.calls_per_second, noop.p50_ms, noop.p99_ms, noop.daemon_cpu_us_per_call
        );
        Some(noop)
    } else {
        None
    };
    drop(runtime);

    // A large log: proofs and receipts at random indexes.
    let path = dir.join("large");
    let backend: Arc<dyn LedgerBackend> = Arc::new(RocksLedger::open(&path)?);
    let ledger = Ledger::open(backend, signer()?)?;
    let started = Instant::now();
    let mut done = 0u64;
    while done < args.log_size {
        let n = 10_000.min(args.log_size - done);
        let requests = (done..done + n)
            .map(|i| (EntryKind::Other("BenchEvent".into()), payload(i)))
            .collect();
        ledger.append(requests, 1_700_000_000_000 + done)?;
        done += n;
    }
    let fill_seconds = started.elapsed().as_secs_f64();
    let size = ledger.latest().size;
    // What a daemon does at start-up: read every entry and rebuild the registry index; and
    // what a restart does with the snapshot a daemon saves.
    let startups = registry_startups(&ledger, &dir.join(custodian_server::REGISTRY_SNAPSHOT_FILE))?;
    let run_log = match args.run_log_size {
        0 => None,
        count => Some(run_log_startup(&dir.join("runs"), count)?),
    };
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next_index = || {
        // xorshift: a fixed pseudo-random sequence of indexes, the same every run.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % size
    };
    let mut proofs = Vec::new();
    for _ in 0..20_000 {
        let index = next_index();
        let start = Instant::now();
        ledger.inclusion_proof(index, size)?;
        proofs.push(start.elapsed());
    }
    proofs.sort();
    let mut receipts = Vec::new();
    for _ in 0..5_000 {
        let index = next_index();
        let start = Instant::now();
        ledger.receipt(index)?;
        receipts.push(start.elapsed());
    }
    receipts.sort();

    // Export as `custodian log export` lays it out, then audit it as `custodian audit` does.
    let export = dir.join("export");
    let mut out = custodian_core::audit::ExportWriter::create(&export)?;
    for (cp_size, note) in ledger.checkpoints(0, usize::MAX)? {
        out.checkpoint(cp_size, &note)?;
    }
    out.copy_log(
        size,
        |start, end| anyhow::Ok(ledger.entries(start, end)?),
        |start, end| Ok(ledger.stored_hashes(start, end)?),
        |_| {},
    )?;
    out.finish(&serde_json::json!({}))?;
    let verifier = ledger.verifier().clone();
    drop(ledger);
    let started = Instant::now();
    let report = custodian_core::audit::audit_dir(&export, verifier, |_| {})?;
    let audit_seconds = started.elapsed().as_secs_f64();
    // Appends into the full log, after the audit so that the export stays the size it was.
    let appends_on_large_log = match args.writers.iter().max() {
        Some(&writers) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let result = runtime.block_on(appends_to(&path, writers, args.seconds))?;
            eprintln!(
                "  {writers} writers into the {size}-entry log: {:.0} appends/s, median {:.2} ms, p99 {:.2} ms",
                result.appends_per_second, result.median_ms, result.p99_ms
            );
            Some(result)
        }
        None => None,
    };
    // A daemon saves its first snapshot at start-up only after replaying a log of at least
    // REGISTRY_SNAPSHOT_EVERY entries; on a shorter log there is no restart from one to time.
    let grpc_writers = args.writers.contains(&NOOP_WRITERS).then_some(NOOP_WRITERS);
    let (daemon_start_seconds, grpc_appends_on_large_log) = if size
        >= custodian_server::REGISTRY_SNAPSHOT_EVERY
    {
        let (first, restart, appends) = daemon_starts(dir, &path, grpc_writers, args.seconds)?;
        if let Some(a) = &appends {
            eprintln!(
                "  {} gRPC writers into the {size}-entry log: {:.0} appends/s, median {:.2} ms, p99 {:.2} ms, {}{}",
                a.writers,
                a.appends_per_second,
                a.median_ms,
                a.p99_ms,
                cpu_per_append(a),
                floor_beside(a)
            );
        }
        (Some((first, restart)), appends)
    } else {
        eprintln!(
            "  the daemon's start and restart on the large log: not measured, the log is under the {} entries past which a first start saves its registry snapshot",
            custodian_server::REGISTRY_SNAPSHOT_EVERY
        );
        (None, None)
    };
    let openssl = crate::measure::run_timed(
        std::process::Command::new("openssl")
            .args(["dgst", "-sha256"])
            .arg(export.join("entries"))
            .arg(export.join("tree-hashes")),
    )
    .context("running openssl dgst -sha256 on the export (is openssl installed?)")?
    .as_secs_f64();
    anyhow::ensure!(
        report.entries == size,
        "audit saw {} entries",
        report.entries
    );

    Ok(Report {
        fsync_median_ms: fsync_median.as_secs_f64() * 1e3,
        fsync_p99_ms: fsync_p99.as_secs_f64() * 1e3,
        appends: append_results,
        grpc_appends: grpc_results,
        grpc_stream_appends,
        grpc_compact_stream_appends,
        log_size: size,
        fill_seconds,
        inclusion_proof_median_us: percentile(&proofs, 0.5).as_secs_f64() * 1e6,
        inclusion_proof_p99_us: percentile(&proofs, 0.99).as_secs_f64() * 1e6,
        receipt_median_us: percentile(&receipts, 0.5).as_secs_f64() * 1e6,
        receipt_p99_us: percentile(&receipts, 0.99).as_secs_f64() * 1e6,
        audit_entries_per_second: size as f64 / audit_seconds,
        registry_replay_seconds: startups.replay_seconds,
        registry_restore_seconds: Some(startups.restore_seconds),
        registry_restore_followed: startups.followed,
        run_log,
        appends_on_large_log,
        audit_seconds,
        openssl_sha256_export_seconds: openssl,
        audit_ratio_to_openssl: audit_seconds / openssl,
        grpc_noop,
        daemon_start_seconds,
        grpc_appends_on_large_log,
    })
}

/// Starts `custodian serve` on the log at `log` (moved into a data directory of its own, with the
/// bench's log key): seconds from launch to its first answer at its first start, which replays the log
/// and then saves the registry index snapshot, and at a restart after `kill -9`, which reads it.
/// Then, with `grpc_writers`, that many writers append over gRPC for `seconds`, as
/// `grpc_appends` measures them on a fresh daemon.
fn daemon_starts(
    dir: &Path,
    log: &Path,
    grpc_writers: Option<usize>,
    seconds: u64,
) -> anyhow::Result<(f64, f64, Option<AppendResult>)> {
    let data = dir.join("daemon-on-large-log");
    std::fs::create_dir_all(&data)?;
    std::fs::rename(log, data.join("ledger"))?;
    custodian_testkit::write_log_key(&data, "bench.custodian/ledger", 7);
    // The same kind of runtime as the fresh gRPC rows' clients run on.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut daemon = crate::measure::daemon(&data, "rocksdb", &["--append-token", BENCH_TOKEN])?;
    runtime.block_on(first_answer(&daemon))?;
    let first = started.elapsed().as_secs_f64();
    let snapshot = data.join(custodian_server::REGISTRY_SNAPSHOT_FILE);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !snapshot.exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the daemon saved no registry index snapshot at {} within 2 minutes",
            snapshot.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    daemon.restart_after_kill9();
    runtime.block_on(first_answer(&daemon))?;
    let restart = started.elapsed().as_secs_f64();
    let appends = match grpc_writers {
        Some(writers) => {
            Some(runtime.block_on(grpc_append_load(&daemon, writers, seconds, Calls::Unary))?)
        }
        None => None,
    };
    Ok((first, restart, appends))
}

/// Waits for the daemon's first answer to a gRPC health check. The daemon prints its listening
/// lines once its ports are bound, before it opens the registry; connections wait in the
/// listening socket's queue until it serves them.
async fn first_answer(daemon: &custodian_testkit::Daemon) -> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let attempt = async {
            let client = custodian_client::Client::connect(&daemon.target(None)).await?;
            HealthClient::new(client.channel())
                .check(HealthCheckRequest::default())
                .await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(60), attempt).await {
            Ok(Ok(())) => return Ok(()),
            failed if Instant::now() > deadline => {
                anyhow::bail!(
                    "the daemon did not answer a health check within 5 minutes: {failed:?}"
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}
