//! `custodian-bench rest`: a 1 GiB hosted data-pack upload over the REST API (digest check and
//! scan in custody included), ranged downloads and a full verified download, against
//! `openssl dgst -sha256` of the same file.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::measure::run_timed;
use custodian_testkit::RemoveOnDrop;

/// Options of `custodian-bench rest`.
#[derive(Args)]
pub struct RestArgs {
    /// Data pack size in MiB
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Ranged reads of 1 MiB at random offsets
    #[arg(long, default_value_t = 200)]
    ranges: usize,
    /// Where to put the file and the daemon's data (default: the system temp dir)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Deserialize)]
pub struct Report {
    pub size_bytes: u64,
    pub openssl_sha256_seconds: f64,
    /// `custodian datapack upload --no-local-put`: tus upload over REST, digest check, scan,
    /// registration.
    pub upload_seconds: f64,
    pub upload_ratio_to_openssl: f64,
    /// CPU seconds (user + system) the upload cost the CLI and the daemon.
    pub upload_cli_cpu_seconds: f64,
    pub upload_daemon_cpu_seconds: f64,
    /// `custodian datapack upload` of the same file as another version's data pack, handed to
    /// the daemon over its local put socket (stored, scanned and registered as over REST);
    /// absent from reports made before it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_upload: Option<Transfer>,
    /// `custodian datapack download -o FILE`: received, sha256-verified, fsynced, renamed.
    pub download_seconds: f64,
    pub download_ratio_to_openssl: f64,
    /// CPU seconds the download cost the CLI and the daemon.
    pub download_cli_cpu_seconds: f64,
    pub download_daemon_cpu_seconds: f64,
    pub ranges: usize,
    pub range_bytes: u64,
    pub range_ms_p50: f64,
    pub range_ms_p99: f64,
    pub daemon_peak_rss_mib: f64,
}

/// One timed transfer: its time, its ratio to `openssl dgst -sha256` of the file, and the CPU
/// it cost each end.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Transfer {
    pub seconds: f64,
    pub ratio_to_openssl: f64,
    pub cli_cpu_seconds: f64,
    pub daemon_cpu_seconds: f64,
}

/// Writes a minimal valid package named `name` the bench can publish.
fn write_package(dir: &Path, name: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("prompts"))?;
    std::fs::write(
        dir.join("manifest.yaml"),
        format!(
            "name: {name}\nversion: 1.0.0\ntype: eval_suite\nbase_model: m1\nevals: [e1]\nlicense: Apache-2.0\n"
        ),
    )?;
    std::fs::write(dir.join("prompts/system.md"), "You grade answers.\n")?;
    Ok(())
}

fn run_ok(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .stdout(std::process::Stdio::null())
        .status()
        .context("running the CLI")?;
    anyhow::ensure!(status.success(), "{command:?} failed");
    Ok(())
}

/// The CLI, pointed at `daemon` (both ports) with its admin token.
fn cli(daemon: &custodian_testkit::Daemon, args: &[&str]) -> Command {
    let mut c = Command::new(custodian_testkit::binary());
    c.args(args)
        .env("CUSTODIAN_SERVER", &daemon.address)
        .env("CUSTODIAN_REST", &daemon.rest)
        .env("CUSTODIAN_TOKEN", &daemon.token);
    c
}

/// Publishes a minimal package `name`@1.0.0 to `daemon`, signed by a key generated into `work`
/// the first time, so that a data pack can be uploaded to it.
pub(crate) fn publish_for_upload(
    daemon: &custodian_testkit::Daemon,
    work: &Path,
    name: &str,
) -> anyhow::Result<()> {
    let key = work.join("bench.key");
    if !key.exists() {
        run_ok(cli(daemon, &["key", "generate", "bench", "--dir"]).arg(work))?;
    }
    let package = work.join(name);
    write_package(&package, name)?;
    run_ok(
        cli(daemon, &["publish"])
            .arg(&package)
            .arg("--key")
            .arg(&key),
    )
}

/// `custodian datapack upload NAME@1.0.0 --license CC0-1.0 FILE` against `daemon`: handed over
/// the local put socket unless `--no-local-put` is added.
fn upload_command(daemon: &custodian_testkit::Daemon, name: &str, data: &Path) -> Command {
    let version = format!("{name}@1.0.0");
    let mut c = cli(
        daemon,
        &["datapack", "upload", &version, "--license", "CC0-1.0"],
    );
    c.arg(data);
    c
}

/// Uploads `data` over REST (`--no-local-put`) as the data pack of `name`@1.0.0, published
/// with [`publish_for_upload`]: its time, its ratio to `openssl` seconds and the CPU it cost
/// each end.
pub(crate) fn timed_rest_upload(
    daemon: &custodian_testkit::Daemon,
    name: &str,
    data: &Path,
    openssl: f64,
) -> anyhow::Result<Transfer> {
    let (took, cpu) = crate::custody::run_timed_with_cpu(
        daemon.pid(),
        upload_command(daemon, name, data).arg("--no-local-put"),
    )?;
    let seconds = took.as_secs_f64();
    Ok(Transfer {
        seconds,
        ratio_to_openssl: seconds / openssl,
        cli_cpu_seconds: cpu.cli_seconds,
        daemon_cpu_seconds: cpu.daemon_seconds,
    })
}

/// CPU seconds spent so far by the CLI runs this process waited for, and by `daemon`: on two
/// cores a transfer is bound by the sum as much as by either end.
fn cpu_spent(daemon: &custodian_testkit::Daemon) -> (f64, f64) {
    (
        crate::measure::children_cpu_seconds(),
        crate::measure::cpu_seconds(daemon.pid()),
    )
}

/// Runs the REST benchmark.
pub fn run(args: RestArgs) -> anyhow::Result<ExitCode> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = base.join(format!("custodian-bench-rest-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let _cleanup = RemoveOnDrop(work.clone());
    let size = args.size_mib << 20;
    let data = work.join("data-pack.bin");
    custodian_testkit::write_test_file(&data, size)?;
    let openssl = run_timed(Command::new("openssl").args(["dgst", "-sha256"]).arg(&data))
        .context("running `openssl dgst -sha256` (is openssl installed?)")?;

    let daemon = crate::measure::daemon(&work.join("daemon"), "rocksdb", &[])?;
    // One version for the upload over REST, another for the one handed over locally.
    for name in ["bench-data", "bench-data-local"] {
        publish_for_upload(&daemon, &work, name)?;
    }
    let upload = timed_rest_upload(&daemon, "bench-data", &data, openssl.as_secs_f64())?;
    let after_rest = cpu_spent(&daemon);
    let local = run_timed(&mut upload_command(&daemon, "bench-data-local", &data))?;
    let after_local = cpu_spent(&daemon);
    let local_upload = Some(Transfer {
        seconds: local.as_secs_f64(),
        ratio_to_openssl: local.as_secs_f64() / openssl.as_secs_f64(),
        cli_cpu_seconds: after_local.0 - after_rest.0,
        daemon_cpu_seconds: after_local.1 - after_rest.1,
    });
    let out = work.join("downloaded.bin");
    let download =
        run_timed(cli(&daemon, &["datapack", "download", "bench-data@1.0.0", "-o"]).arg(&out))?;
    let after_download = cpu_spent(&daemon);
    let _ = std::fs::remove_file(&out);

    // Ranged reads of 1 MiB at pseudo-random offsets, one at a time, over one connection.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let url = format!(
        "{}/wrappers/bench-data/versions/1.0.0/data-pack/download",
        daemon.rest
    );
    let latencies = runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut state = 0x9E37_79B9u64;
        let mut out = Vec::new();
        for _ in 0..args.ranges {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let start = (state >> 16) % size.saturating_sub(1 << 20).max(1);
            let t = Instant::now();
            let response = client
                .get(&url)
                .header("range", format!("bytes={start}-{}", start + (1 << 20) - 1))
                .send()
                .await?;
            anyhow::ensure!(
                response.status() == reqwest::StatusCode::PARTIAL_CONTENT,
                "a ranged read answered {}",
                response.status()
            );
            let body = response.bytes().await?;
            anyhow::ensure!(
                body.len() == 1 << 20,
                "a ranged read returned {} bytes",
                body.len()
            );
            out.push(t.elapsed());
        }
        anyhow::Ok(out)
    })?;
    let mut latencies = latencies;
    latencies.sort();
    let report = Report {
        size_bytes: size,
        openssl_sha256_seconds: openssl.as_secs_f64(),
        upload_seconds: upload.seconds,
        upload_ratio_to_openssl: upload.ratio_to_openssl,
        upload_cli_cpu_seconds: upload.cli_cpu_seconds,
        upload_daemon_cpu_seconds: upload.daemon_cpu_seconds,
        local_upload,
        download_seconds: download.as_secs_f64(),
        download_ratio_to_openssl: download.as_secs_f64() / openssl.as_secs_f64(),
        download_cli_cpu_seconds: after_download.0 - after_local.0,
        download_daemon_cpu_seconds: after_download.1 - after_local.1,
        ranges: args.ranges,
        range_bytes: 1 << 20,
        range_ms_p50: custodian_testkit::percentile_ms(&latencies, 0.5),
        range_ms_p99: custodian_testkit::percentile_ms(&latencies, 0.99),
        daemon_peak_rss_mib: crate::measure::mib(daemon.peak_rss()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "REST data pack of {} MiB; openssl dgst -sha256 {:.3} s",
            args.size_mib, report.openssl_sha256_seconds
        );
        println!(
            "upload over REST (digest check and scan in custody included) {:.3} s ({:.2}× openssl), CPU: CLI {:.2} s, daemon {:.2} s",
            report.upload_seconds,
            report.upload_ratio_to_openssl,
            report.upload_cli_cpu_seconds,
            report.upload_daemon_cpu_seconds,
        );
        if let Some(local) = &report.local_upload {
            println!(
                "upload handed over the local put socket (the same checks and scan) {:.3} s ({:.2}× openssl), CPU: CLI {:.2} s, daemon {:.2} s",
                local.seconds,
                local.ratio_to_openssl,
                local.cli_cpu_seconds,
                local.daemon_cpu_seconds,
            );
        }
        println!(
            "verified download to a file {:.3} s ({:.2}× openssl), CPU: CLI {:.2} s, daemon {:.2} s",
            report.download_seconds,
            report.download_ratio_to_openssl,
            report.download_cli_cpu_seconds,
            report.download_daemon_cpu_seconds,
        );
        println!(
            "{} ranged reads of 1 MiB: p50 {:.2} ms, p99 {:.2} ms; daemon peak RSS {:.0} MiB",
            report.ranges, report.range_ms_p50, report.range_ms_p99, report.daemon_peak_rss_mib
        );
    }
    Ok(ExitCode::SUCCESS)
}
