//! `custodian-bench evidence`: attested runs per second through a real daemon (signature checks
//! and durable ledger appends included), unary and batched, with 1 and 32 clients; and offline
//! verification time of a badge bundle backed by 1,000 runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use custodian_core::attestation::{Metric, RunPredicate, RunStatement, Runner};
use custodian_core::note::SignerKey;
use custodian_core::package::{FileEntry, PackageStatement};
use custodian_core::prereg::{PreregPredicate, PreregStatement};
use custodian_core::{Algorithm, Digest};
use custodian_proto::cas::v1 as cas;
use custodian_proto::evidence::v1 as pb;
use custodian_proto::registry::v1 as rpb;
use serde::{Deserialize, Serialize};

use custodian_client::{Client, Conn, Target};
use custodian_testkit::Daemon;

/// Options of `custodian-bench evidence`.
#[derive(Args)]
pub struct EvidenceArgs {
    /// Seconds per scenario
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Runs per AttestRuns call in the batch scenarios
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Then attest this many more runs (each a different signed run, in AttestRuns batches from
    /// several clients) and measure the 32-client rows again on the daemon that holds them,
    /// beside the fresh ones (e.g. 1000000)
    #[arg(long, default_value_t = 0)]
    prefill: u64,
    /// Where to put the daemon's data (default: the system temp folder)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub clients: usize,
    pub runs_per_second: f64,
    pub runs: u64,
    /// Latency of one call (one run unary, `batch` runs batched), ms.
    pub call_ms_p50: f64,
    pub call_ms_p99: f64,
    /// The daemon's CPU time (user + system) per run, µs.
    #[serde(default)]
    pub daemon_cpu_us_per_run: Option<f64>,
    /// For the 32-client rows issue 22 sets a target for: one core's Ed25519 verifications per
    /// second, measured in this process just before and just after the row, averaged
    /// (`limits::RocksFloors` says why beside the row, and why the mean).
    #[serde(default)]
    pub ed25519_verifies_per_s: Option<f64>,
}

#[derive(Serialize, Deserialize)]
pub struct Report {
    pub scenarios: Vec<Scenario>,
    pub bundle_runs: usize,
    pub bundle_entries: usize,
    pub bundle_bytes: usize,
    pub bundle_verify_ms: f64,
    pub daemon_peak_rss_mib: f64,
    /// Health checks by [`NOOP_CLIENTS`] callers, each on its connection as the unary clients
    /// are: the ceiling of any unary call with that many clients on this machine.
    #[serde(default)]
    pub noop: Option<crate::measure::CallRate>,
    /// With `--prefill`: the 32-client rows again, after that many more runs were attested.
    #[serde(default)]
    pub prefilled: Option<Prefilled>,
}

/// The 32-client rows measured on a daemon that already holds many attested runs.
#[derive(Serialize, Deserialize)]
pub struct Prefilled {
    /// Runs attested before these rows (the prefill and every row before it).
    pub runs_before: u64,
    /// Seconds the prefill's own runs took to attest.
    pub fill_seconds: f64,
    /// Seconds from the prefill's end until the daemon was idle (its storage's flushes and
    /// compactions of the prefill done), before these rows began.
    #[serde(default)]
    pub settle_seconds: f64,
    pub scenarios: Vec<Scenario>,
    /// The daemon's peak RSS from its start to the end of these rows.
    pub daemon_peak_rss_mib: f64,
}

/// The clients that attest the prefill, each one batch at a time.
const PREFILL_CLIENTS: usize = 4;

/// The client count whose unary attestations issue 22 sets a target for.
pub const NOOP_CLIENTS: usize = 32;

const EVALS: usize = 100;
const MODELS: usize = 10;

/// The harness every synthetic run names and every pre-registration fixes.
fn harness() -> Digest {
    Digest::of(Algorithm::Sha256, b"custodian-bench eval harness")
}

/// The metric each eval is pre-registered on, its threshold and what every run scores.
const METRIC: &str = "accuracy";
const THRESHOLD: &str = ">= 0.5";
const SCORE: f64 = 0.9;

fn manifest() -> String {
    let evals: Vec<String> = (0..EVALS).map(|i| format!("e{i:03}")).collect();
    let models: Vec<String> = (0..MODELS).map(|i| format!("m{i:02}")).collect();
    format!(
        "name: bench-package\nversion: 1.0.0\ntype: eval_suite\nbase_model: [{}]\nevals: [{}]\nlicense: Apache-2.0\n",
        models.join(", "),
        evals.join(", ")
    )
}

/// A signed run of the synthetic package: eval and model cycle with `i`.
pub(crate) fn envelope(manifest: Digest, key: &SignerKey, i: usize) -> String {
    let predicate = RunPredicate {
        package: "bench-package".into(),
        version: "1.0.0".into(),
        eval_id: format!("e{:03}", i % EVALS),
        model: format!("m{:02}", (i / EVALS) % MODELS),
        passed: true,
        // What badge policy v4 checks against the eval's pre-registration: the metric with its
        // threshold, the harness and the sample size.
        metrics: [(
            METRIC.to_string(),
            Metric {
                value: serde_json::Number::from_f64(SCORE).unwrap_or_else(|| 1.into()),
                threshold: Some(THRESHOLD.into()),
            },
        )]
        .into(),
        data_pack_sha256: None,
        reproducibility_context: serde_json::json!({
            "seed": i,
            "cases": [format!("c{i}")],
            "sample_size": 1,
            "harness_sha256": harness().to_string(),
        }),
        started_at: "2026-11-26T00:00:00Z".into(),
        finished_at: "2026-11-26T00:00:01Z".into(),
        runner: Runner {
            id: "bench".into(),
            version: None,
        },
    };
    RunStatement::new(manifest, predicate)
        .map(|s| s.sign(key).to_json())
        .unwrap_or_default()
}

async fn evidence_client(
    server: &Target,
) -> anyhow::Result<pb::evidence_client::EvidenceClient<Conn>> {
    Ok(Client::connect(server).await?.evidence())
}

async fn scenario(
    server: &Target,
    envelopes: Arc<Vec<String>>,
    clients: usize,
    batch: usize,
    seconds: u64,
) -> anyhow::Result<(u64, f64, f64, f64)> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut client = evidence_client(server).await?;
        let (envelopes, next, done) = (envelopes.clone(), next.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let at = next.fetch_add(batch.max(1) as u64, Ordering::Relaxed) as usize;
                let call = Instant::now();
                if batch <= 1 {
                    let envelope = envelopes[at % envelopes.len()].clone();
                    client.attest_run(pb::AttestRunRequest { envelope }).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    let runs = (at..at + batch)
                        .map(|i| pb::AttestRunRequest {
                            envelope: envelopes[i % envelopes.len()].clone(),
                        })
                        .collect();
                    let attested = attest_batch(&mut client, runs).await?;
                    done.fetch_add(attested as u64, Ordering::Relaxed);
                }
                latencies.push(call.elapsed());
            }
            Ok::<_, tonic::Status>(latencies)
        }));
    }
    let latencies = crate::measure::gather_latencies(tasks, "attest").await?;
    let elapsed = started.elapsed().as_secs_f64();
    let runs = done.load(Ordering::Relaxed);
    let ms = |p: f64| custodian_testkit::percentile_ms(&latencies, p);
    Ok((runs, runs as f64 / elapsed, ms(0.5), ms(0.99)))
}

/// One `AttestRuns` call with compact answers: how many results came back, or the first run's
/// refusal as an error.
async fn attest_batch(
    client: &mut pb::evidence_client::EvidenceClient<Conn>,
    runs: Vec<pb::AttestRunRequest>,
) -> Result<usize, tonic::Status> {
    let response = client
        .attest_runs(pb::AttestRunsRequest {
            runs,
            compact: true,
        })
        .await?
        .into_inner();
    if let Some(bad) = response.results.iter().find(|r| r.error_code != 0) {
        return Err(tonic::Status::internal(bad.error_message.clone()));
    }
    Ok(response.results.len())
}

/// Publishes the synthetic package (100 evals × 10 models) and registers an attester; returns
/// the manifest digest, the attester's key and the published version.
pub(crate) async fn publish_and_register(
    server: &Target,
) -> anyhow::Result<(Digest, SignerKey, rpb::Version)> {
    let text = manifest();
    let manifest_digest = Digest::of(Algorithm::Sha256, text.as_bytes());
    let mut store = Client::connect(server).await?.store();
    store
        .batch_put(cas::BatchPutRequest {
            items: vec![cas::BatchPutItem {
                expected_digest: manifest_digest.to_string(),
                data: text.clone().into_bytes().into(),
            }],
        })
        .await?;
    let publisher = SignerKey::from_seed("bench-publisher", [11; 32])?;
    let statement = PackageStatement::new(
        "bench-package",
        "1.0.0",
        "eval_suite",
        vec![FileEntry {
            path: "manifest.yaml".into(),
            sha256: manifest_digest,
            size: text.len() as u64,
        }],
    )?;
    let version = Client::connect(server)
        .await?
        .registry()
        .publish_version(rpb::PublishVersionRequest {
            envelope: statement.sign(&publisher).to_json(),
            publisher_key: publisher.verifier().to_string(),
            visibility: 0,
            ..Default::default()
        })
        .await?
        .into_inner()
        .version
        .context("no version")?;
    let attester = SignerKey::from_seed("bench-attester", [12; 32])?;
    let mut evidence = evidence_client(server).await?;
    evidence
        .register_attester(pb::RegisterAttesterRequest {
            verifier_key: attester.verifier().to_string(),
        })
        .await?;
    // Badge policy v4 counts a run only after its eval's criteria were pre-registered.
    for eval in 0..EVALS {
        let predicate = PreregPredicate {
            package: "bench-package".into(),
            version: "1.0.0".into(),
            eval_id: format!("e{eval:03}"),
            metric: METRIC.into(),
            comparator: ">=".into(),
            threshold: serde_json::Number::from_f64(0.5).context("threshold")?,
            data_pack_sha256: None,
            sample_size: 1,
            seed: None,
            harness_sha256: harness().to_string(),
        };
        let envelope = PreregStatement::new(manifest_digest, predicate)?
            .sign(&attester)
            .to_json();
        evidence
            .preregister_eval(pb::PreregisterEvalRequest { envelope })
            .await?;
    }
    Ok((manifest_digest, attester, version))
}

async fn measure(args: &EvidenceArgs, daemon: &Daemon) -> anyhow::Result<Report> {
    let server = daemon.target(Some(&daemon.token));
    let (manifest_digest, attester, version) = publish_and_register(&server).await?;
    let mut evidence = evidence_client(&server).await?;

    // Pre-signed runs: every eval × model, then repeats.
    let count = 60_000;
    let envelopes: Arc<Vec<String>> = Arc::new(
        (0..count)
            .map(|i| envelope(manifest_digest, &attester, i))
            .collect(),
    );
    let mut scenarios = Vec::new();
    for (name, clients, batch) in [
        ("AttestRun (unary)", 1, 1),
        ("AttestRun (unary)", 32, 1),
        ("AttestRuns (batch)", 1, args.batch),
        ("AttestRuns (batch)", 32, args.batch),
    ] {
        scenarios.push(timed_row(args, daemon, &envelopes, name, clients, batch).await?);
    }

    let noop =
        crate::measure::noop_calls(daemon, &server, NOOP_CLIENTS, NOOP_CLIENTS, args.seconds)
            .await?;
    if !args.json {
        println!(
            "  health check (no work) {:>3} client(s): {:>8.0} calls/s, call p50 {:.2} ms, p99 {:.2} ms, daemon CPU {:.0} µs per call — no unary call goes faster here",
            noop.callers,
            noop.calls_per_second,
            noop.p50_ms,
            noop.p99_ms,
            noop.daemon_cpu_us_per_call
        );
    }

    // A badge backed by 1,000 runs (one latest run per eval × model), verified offline.
    evidence
        .record_scan(pb::RecordScanRequest {
            name: "bench-package".into(),
            version: "1.0.0".into(),
            scanner: "bench".into(),
            verdict: "clean".into(),
            root: version.root.clone(),
            findings_json: "[]".into(),
            target: String::new(),
        })
        .await?;
    let response = evidence
        .get_badge(pb::GetBadgeRequest {
            name: "bench-package".into(),
            version: "1.0.0".into(),
        })
        .await?
        .into_inner();
    if response.state != "green" {
        bail!(
            "the benchmark badge is {}, not green: {}",
            response.state,
            badge_reasons(&response.badge_json)
        );
    }
    let log_key = custodian_core::note::VerifierKey::parse(
        &Client::connect(&server)
            .await?
            .ledger()
            .get_log_info(custodian_proto::ledger::v1::GetLogInfoRequest {})
            .await?
            .into_inner()
            .verifier_key,
    )?;
    let bytes = response.bundle_json.into_bytes();
    let mut times = Vec::new();
    let mut verified = None;
    for _ in 0..5 {
        let start = Instant::now();
        verified = Some(custodian_core::bundle::verify(&bytes, &log_key)?);
        times.push(start.elapsed());
    }
    times.sort();
    let verified = verified.context("verified")?;
    let fresh_peak_rss = daemon.peak_rss();

    let prefilled = if args.prefill > 0 {
        let before: u64 = scenarios.iter().map(|s| s.runs).sum();
        if !args.json {
            println!("  attesting {} more runs ...", args.prefill);
        }
        let started = Instant::now();
        prefill(
            &server,
            manifest_digest,
            &attester,
            args.prefill,
            args.batch,
        )
        .await?;
        let fill_seconds = started.elapsed().as_secs_f64();
        let settle_seconds = tokio::task::block_in_place(|| {
            crate::measure::settle_daemon(daemon.pid(), Duration::from_secs(120))
        })
        .as_secs_f64();
        if !args.json {
            println!(
                "  {} runs attested in {fill_seconds:.1} s, the daemon idle {settle_seconds:.0} s later; with {} runs in the log:",
                args.prefill,
                before + args.prefill
            );
        }
        let mut rows = Vec::new();
        for (name, batch) in [("AttestRun (unary)", 1), ("AttestRuns (batch)", args.batch)] {
            rows.push(timed_row(args, daemon, &envelopes, name, NOOP_CLIENTS, batch).await?);
        }
        Some(Prefilled {
            runs_before: before + args.prefill,
            fill_seconds,
            settle_seconds,
            scenarios: rows,
            daemon_peak_rss_mib: crate::measure::mib(daemon.peak_rss()),
        })
    } else {
        None
    };
    Ok(Report {
        scenarios,
        // A green badge judged the latest run of every eval against every model; the rest of
        // its evidence is the publication, the scan, the attester and the pre-registrations.
        bundle_runs: EVALS * MODELS,
        bundle_entries: verified.entries,
        bundle_bytes: bytes.len(),
        bundle_verify_ms: times[times.len() / 2].as_secs_f64() * 1e3,
        daemon_peak_rss_mib: crate::measure::mib(fresh_peak_rss),
        noop: Some(noop),
        prefilled,
    })
}

/// One timed row: `clients` attesting for `args.seconds`, one run a call or `batch` runs a call,
/// with the daemon's CPU per run.
async fn timed_row(
    args: &EvidenceArgs,
    daemon: &Daemon,
    envelopes: &Arc<Vec<String>>,
    name: &str,
    clients: usize,
    batch: usize,
) -> anyhow::Result<Scenario> {
    let server = daemon.target(Some(&daemon.token));
    // The floor beside a targeted row, while the daemon is idle.
    let before = match clients {
        NOOP_CLIENTS => Some(tokio::task::block_in_place(crate::limits::ed25519)?),
        _ => None,
    };
    let cpu = crate::measure::cpu_seconds(daemon.pid());
    let (runs, rate, p50, p99) =
        scenario(&server, envelopes.clone(), clients, batch, args.seconds).await?;
    let cpu_us = (crate::measure::cpu_seconds(daemon.pid()) - cpu) * 1e6 / runs.max(1) as f64;
    let floor = match before {
        Some(before) => Some(tokio::task::block_in_place(|| {
            crate::limits::ed25519_after(before)
        })?),
        None => None,
    };
    if !args.json {
        let beside = floor.map_or_else(String::new, |f| {
            format!(
                "; Ed25519 {f:.0}/s on one core beside it ({:.2}×)",
                rate / f
            )
        });
        println!(
            "  {name:<20} {clients:>3} client(s): {rate:>8.0} runs/s ({runs} runs), call p50 {p50:.2} ms, p99 {p99:.2} ms, daemon CPU {cpu_us:.0} µs per run{beside}"
        );
    }
    Ok(Scenario {
        name: name.into(),
        clients,
        runs_per_second: rate,
        runs,
        call_ms_p50: p50,
        call_ms_p99: p99,
        daemon_cpu_us_per_run: Some(cpu_us),
        ed25519_verifies_per_s: floor,
    })
}

/// Attests `total` runs, each signed afresh (seeds past the timed rows' envelopes), in batches
/// of `batch` from [`PREFILL_CLIENTS`] clients; every run must be accepted.
async fn prefill(
    server: &Target,
    manifest: Digest,
    attester: &SignerKey,
    total: u64,
    batch: usize,
) -> anyhow::Result<()> {
    // Past the 60,000 envelopes the timed rows repeat, so every prefilled run is new.
    const FIRST: u64 = 1 << 32;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..PREFILL_CLIENTS {
        let mut client = evidence_client(server).await?;
        let (next, attester) = (next.clone(), attester.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let at = next.fetch_add(batch as u64, Ordering::Relaxed);
                if at >= total {
                    return anyhow::Ok(());
                }
                let end = (at + batch as u64).min(total);
                let runs = (at..end)
                    .map(|i| pb::AttestRunRequest {
                        envelope: envelope(manifest, &attester, (FIRST + i) as usize),
                    })
                    .collect();
                let attested = attest_batch(&mut client, runs)
                    .await
                    .map_err(|e| anyhow::anyhow!("a prefilled batch failed: {}", e.message()))?;
                anyhow::ensure!(
                    attested as u64 == end - at,
                    "AttestRuns answered {attested} results for {} runs",
                    end - at
                );
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Runs the benchmark.
pub fn run(args: EvidenceArgs) -> anyhow::Result<ExitCode> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let data = base.join(format!("custodian-bench-evidence-{}", std::process::id()));
    let daemon = crate::measure::daemon(&data, "rocksdb", &[])?;
    if !args.json {
        println!(
            "attested runs through a daemon on loopback (DSSE signature checks and durable appends included):"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(measure(&args, &daemon));
    drop(daemon);
    let _ = std::fs::remove_dir_all(&data);
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "badge bundle backed by {} runs ({} entries, {} KiB): verified offline in {:.1} ms (median of 5)",
            report.bundle_runs,
            report.bundle_entries,
            report.bundle_bytes / 1024,
            report.bundle_verify_ms
        );
        println!("daemon peak RSS {:.0} MiB", report.daemon_peak_rss_mib);
        if let Some(prefilled) = &report.prefilled {
            println!(
                "daemon peak RSS through the prefill and the rows after it {:.0} MiB",
                prefilled.daemon_peak_rss_mib
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The first few reasons a badge gives, one line each: a badge backed by 1,000 runs can carry a
/// thousand reasons, and the first ones say what the bench got wrong.
fn badge_reasons(badge_json: &str) -> String {
    let badge: serde_json::Value = serde_json::from_str(badge_json).unwrap_or_default();
    let reasons = badge["reasons"].as_array().cloned().unwrap_or_default();
    let mut shown: Vec<String> = reasons
        .iter()
        .take(3)
        .map(|r| {
            format!(
                "{}: {}",
                r["code"].as_str().unwrap_or("?"),
                r["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    if reasons.len() > shown.len() {
        shown.push(format!("and {} more", reasons.len() - shown.len()));
    }
    shown.join("; ")
}
