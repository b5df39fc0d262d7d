//! `custodian-bench tlog`: the log as others see it. Appends answered with a cosigned receipt
//! under a 2-of-3 witness quorum on loopback, next to the same appends without witnesses and
//! next to Tessera's POSIX log (Go, from the module proxy) appending on the same disk in the same
//! run, with and without the same witnesses; full-tile reads from the daemon next to Go's static
//! file server serving the bucket `--tiles-to` wrote; and `custodian log monitor` verifying the
//! log from its tiles next to `custodian audit` on an export of it.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use custodian_proto::ledger::v1 as pb;
use custodian_testkit::{Daemon, WitnessProcess, percentile_ms, write_log_key};
use serde::{Deserialize, Serialize};

use crate::measure::run_checked;

const TOKEN: &str = "bench-tlog-token";
/// Writer counts: one (latency to a receipt) and many (what batching makes of it).
const WRITERS: [usize; 2] = [1, 64];

/// Options of `custodian-bench tlog`.
#[derive(Args)]
pub struct TlogArgs {
    /// Appends per setup and writer count, each writer waiting for its (cosigned) receipt
    #[arg(long, default_value_t = 640)]
    appends: usize,
    /// Entries in the log whose tiles are read and monitored
    #[arg(long, default_value_t = 65_536)]
    entries: u64,
    /// Seconds of tile reads per server
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent tile readers
    #[arg(long, default_value_t = 16)]
    readers: usize,
    /// Where to put the logs (default: ~/.cache/custodian/bench)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

/// One append setup's figures.
#[derive(Serialize, Deserialize)]
pub struct AppendRow {
    /// What appended, and under which witnesses.
    pub setup: String,
    pub appends_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Serialize, Deserialize)]
pub struct Report {
    pub appends: Vec<AppendRow>,
    pub tile_entries: u64,
    pub tile_readers: usize,
    pub daemon_tiles_per_second: f64,
    pub static_tiles_per_second: f64,
    /// daemon / static server.
    pub tile_ratio_to_static: f64,
    pub monitor_entries_per_second: f64,
    pub audit_entries_per_second: f64,
    /// monitor / audit.
    pub monitor_ratio_to_audit: f64,
}

/// The Go peers scripts/lib.sh builds (`ensure_go_modules`).
fn go_bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("CUSTODIAN_GO_BIN").context(
        "CUSTODIAN_GO_BIN is not set: source scripts/lib.sh and run ensure_go_modules, which builds Tessera's peers",
    )?;
    let path = Path::new(&dir).join(name);
    if !path.exists() {
        bail!("{} is missing: run ensure_go_modules", path.display());
    }
    Ok(path)
}

/// A `Ledger.Append` of one text entry with the bench's append token.
fn append_request(text: String) -> anyhow::Result<tonic::Request<pb::AppendRequest>> {
    crate::measure::append_request(&custodian_core::entry::Value::Text(text), TOKEN)
}

async fn timed_appends(
    daemon: &Daemon,
    n: usize,
    writers: usize,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let client = custodian_client::Client::connect(&daemon.target(None))
        .await?
        .ledger();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for i in (w..n).step_by(writers) {
                let request = append_request(format!("bench entry {i}"))?;
                let start = Instant::now();
                client.append(request).await?;
                latencies.push(start.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    Ok((rate, latencies))
}

fn row(setup: &str, rate: f64, sorted: &[Duration]) -> AppendRow {
    AppendRow {
        setup: setup.to_string(),
        appends_per_second: rate,
        p50_ms: percentile_ms(sorted, 0.5),
        p99_ms: percentile_ms(sorted, 0.99),
    }
}

fn tessera_row(
    setup: &str,
    dir: &Path,
    key: &str,
    n: usize,
    writers: usize,
    policy: Option<&Path>,
) -> anyhow::Result<AppendRow> {
    let mut command = Command::new(go_bin("custodian-interop")?);
    command
        .arg("tessera-bench")
        .arg(dir)
        .arg(key)
        .arg(n.to_string())
        .arg(writers.to_string());
    if let Some(policy) = policy {
        command.arg(policy);
    }
    let out = String::from_utf8(run_checked(&mut command)?)?;
    let figures: Vec<f64> = out
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("tessera-bench printed {out:?}"))?;
    let [rate, p50, p99] = figures[..] else {
        bail!("tessera-bench printed {out:?}");
    };
    Ok(AppendRow {
        setup: setup.to_string(),
        appends_per_second: rate,
        p50_ms: p50,
        p99_ms: p99,
    })
}

/// Full level-0 tiles fetched per second by `readers` clients for `seconds`.
async fn tile_rate(base: &str, tiles: u64, readers: usize, seconds: u64) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for r in 0..readers {
        let base = base.to_string();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0u64;
            let mut i = r as u64;
            while Instant::now() < deadline {
                let path = custodian_core::tiles::Tile {
                    level: 0,
                    index: i % tiles,
                    width: 256,
                }
                .path();
                let body = http
                    .get(format!("{base}/{path}"))
                    .send()
                    .await?
                    .error_for_status()?
                    .bytes()
                    .await?;
                anyhow::ensure!(body.len() == 256 * 32, "{path}: {} bytes", body.len());
                n += 1;
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407)
                    >> 1;
            }
            anyhow::Ok(n)
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Fills a log with `entries` entries from 64 concurrent writers.
async fn fill(daemon: &Daemon, entries: u64) -> anyhow::Result<()> {
    let client = custodian_client::Client::connect(&daemon.target(None))
        .await?
        .ledger();
    let writers = 64u64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < entries {
                client.append(append_request(format!("entry {i}"))?).await?;
                i += writers;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn cli(args: &[&str]) -> anyhow::Result<String> {
    Ok(String::from_utf8(run_checked(
        Command::new(custodian_testkit::binary()).args(args),
    )?)?)
}

async fn measure(args: &TlogArgs, dir: &Path) -> anyhow::Result<Report> {
    let mut appends = Vec::new();
    let tessera_keys = String::from_utf8(run_checked(
        Command::new(go_bin("custodian-interop")?).args(["keygen", "bench.custodian/tessera"]),
    )?)?;
    let mut lines = tessera_keys.lines();
    let (tessera_skey, tessera_vkey) = (
        lines.next().context("tessera key")?.to_string(),
        lines.next().context("tessera vkey")?.to_string(),
    );
    let witnessed_data = dir.join("witnessed");
    let log_vkey = write_log_key(&witnessed_data, "bench.custodian/witnessed", 3);
    let witnesses: Vec<WitnessProcess> = (1..=3)
        .map(|i| {
            WitnessProcess::start(
                &dir.join(format!("w{i}")),
                &format!("w{i}.bench.custodian"),
                &[&log_vkey, &tessera_vkey],
            )
        })
        .collect();
    let mut policy = String::new();
    for (label, w) in ["a", "b", "c"].iter().zip(&witnesses) {
        policy.push_str(&w.policy_line(label));
    }
    policy.push_str("group q 2 a b c\nquorum q\n");
    let policy_file = dir.join("policy.txt");
    std::fs::write(&policy_file, policy)?;

    for writers in WRITERS {
        let daemon = crate::measure::daemon(
            &dir.join(format!("plain-{writers}")),
            "rocksdb",
            &["--append-token", TOKEN],
        )?;
        let (rate, sorted) = timed_appends(&daemon, args.appends, writers).await?;
        appends.push(row(
            &format!("custodian, no witnesses, {writers} writers"),
            rate,
            &sorted,
        ));
    }
    {
        let daemon = crate::measure::daemon(
            &witnessed_data,
            "rocksdb",
            &[
                "--append-token",
                TOKEN,
                "--witness-policy",
                policy_file.to_str().context("path")?,
            ],
        )?;
        for writers in WRITERS {
            let (rate, sorted) = timed_appends(&daemon, args.appends, writers).await?;
            appends.push(row(
                &format!("custodian, 2-of-3 witnesses, {writers} writers"),
                rate,
                &sorted,
            ));
        }
    }
    for writers in WRITERS {
        appends.push(tessera_row(
            &format!("Tessera POSIX, no witnesses, {writers} writers"),
            &dir.join(format!("tessera-plain-{writers}")),
            &tessera_skey,
            args.appends,
            writers,
            None,
        )?);
    }
    // One Tessera log for both writer counts: the witnesses remember it between the runs.
    for writers in WRITERS {
        appends.push(tessera_row(
            &format!("Tessera POSIX, 2-of-3 witnesses, {writers} writers"),
            &dir.join("tessera-witnessed"),
            &tessera_skey,
            args.appends,
            writers,
            Some(&policy_file),
        )?);
    }
    drop(witnesses);

    // Tiles: a log written by the daemon and mirrored to a directory by --tiles-to.
    let bucket = dir.join("bucket");
    std::fs::create_dir_all(&bucket)?;
    let bucket_url = format!("file://{}", bucket.display());
    let daemon = crate::measure::daemon(
        &dir.join("tiles"),
        "rocksdb",
        &["--append-token", TOKEN, "--tiles-to", &bucket_url],
    )?;
    fill(&daemon, args.entries).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let checkpoint = std::fs::read_to_string(bucket.join("checkpoint")).unwrap_or_default();
        if checkpoint.lines().nth(1) == Some(args.entries.to_string().as_str()) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the tile mirror did not catch up with {} entries",
                args.entries
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let full_tiles = args.entries / 256;
    let daemon_rate = tile_rate(
        &format!("{}/log", daemon.rest),
        full_tiles,
        args.readers,
        args.seconds,
    )
    .await?;
    let mut server = Command::new(go_bin("custodian-interop")?)
        .arg("serve-dir")
        .arg(&bucket)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut address = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().context("stdout")?),
        &mut address,
    )?;
    let static_rate = tile_rate(
        &format!("http://{}", address.trim()),
        full_tiles,
        args.readers,
        args.seconds,
    )
    .await;
    let _ = server.kill();
    let _ = server.wait();
    let static_rate = static_rate?;

    // The monitor's first run verifies every entry's leaf hash into the signed root from tiles.
    let key = dir.join("log.vkey");
    let info = custodian_client::Client::connect(&daemon.target(None))
        .await?
        .ledger()
        .get_log_info(pb::GetLogInfoRequest {})
        .await?
        .into_inner();
    std::fs::write(&key, &info.verifier_key)?;
    let state = dir.join("monitor.state");
    let _ = std::fs::remove_file(&state);
    let started = Instant::now();
    cli(&[
        "log",
        "monitor",
        "--log",
        &format!("{}/log", daemon.rest),
        "--key",
        key.to_str().context("path")?,
        "--state",
        state.to_str().context("path")?,
    ])?;
    let monitor_seconds = started.elapsed().as_secs_f64();
    let export = dir.join("export");
    let _ = std::fs::remove_dir_all(&export);
    cli(&[
        "log",
        "export",
        export.to_str().context("path")?,
        "--server",
        &daemon.address,
    ])?;
    let started = Instant::now();
    cli(&[
        "audit",
        export.to_str().context("path")?,
        "--key",
        key.to_str().context("path")?,
    ])?;
    let audit_seconds = started.elapsed().as_secs_f64();
    let entries = args.entries as f64;
    Ok(Report {
        appends,
        tile_entries: args.entries,
        tile_readers: args.readers,
        daemon_tiles_per_second: daemon_rate,
        static_tiles_per_second: static_rate,
        tile_ratio_to_static: daemon_rate / static_rate,
        monitor_entries_per_second: entries / monitor_seconds,
        audit_entries_per_second: entries / audit_seconds,
        monitor_ratio_to_audit: audit_seconds / monitor_seconds,
    })
}

/// Runs the scenario.
pub fn run(args: TlogArgs) -> anyhow::Result<ExitCode> {
    let args = &args;
    crate::measure::run_scenario(
        "tlog",
        args.dir.as_deref(),
        args.json,
        |dir| async move { measure(args, &dir).await },
        print,
    )
}

/// Prints the report as text.
pub fn print(report: &Report) {
    println!("appends, each writer waiting for its receipt (same disk, same run):");
    for row in &report.appends {
        println!(
            "  {:<52} {:>8.1} appends/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
            row.setup, row.appends_per_second, row.p50_ms, row.p99_ms
        );
    }
    println!(
        "full tiles, {} readers over {} entries: daemon {:.0}/s, Go's static file server on the --tiles-to directory {:.0}/s ({:.2}× the static server)",
        report.tile_readers,
        report.tile_entries,
        report.daemon_tiles_per_second,
        report.static_tiles_per_second,
        report.tile_ratio_to_static
    );
    println!(
        "verifying the whole log: `log monitor` from tiles {:.0} entries/s, `audit` of an export {:.0} entries/s ({:.2}× audit's speed)",
        report.monitor_entries_per_second,
        report.audit_entries_per_second,
        report.monitor_ratio_to_audit
    );
}
