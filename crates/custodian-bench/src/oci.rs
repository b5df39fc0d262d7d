//! `custodian-bench oci`: the OCI front end next to the reference registry. Debian's
//! `docker-registry` (CNCF distribution 2.8, which verifies nothing on read) runs on the same
//! disk in the same run; Debian's `skopeo` copies an image with one large layer into each and
//! back out, and one client times 1,000 `HEAD`s of small blobs on each. Figures are ratios:
//! Custodian's time over the reference registry's (below 1 is faster), with `openssl dgst
//! -sha256` of the layer for scale.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::Args;
use custodian_core::{Algorithm, Digest};
use custodian_testkit::write_test_file;
use serde::{Deserialize, Serialize};

use crate::measure::{gib_per_s, run_checked, run_timed, settle_disk};

/// Options of `custodian-bench oci`.
#[derive(Args)]
pub struct OciArgs {
    /// The size of the image's one large layer, in MiB
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Small blobs pushed to each registry, then each asked for with one HEAD
    #[arg(long, default_value_t = 1000)]
    heads: usize,
    /// Where to put both registries and the image (default: ~/.cache/custodian/bench)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

/// One registry's figures.
#[derive(Serialize, Deserialize)]
pub struct RegistryRow {
    pub registry: String,
    pub copy_in_seconds: f64,
    pub copy_out_seconds: f64,
    pub heads_per_second: f64,
}

/// The scenario's figures.
#[derive(Serialize, Deserialize)]
pub struct Report {
    pub layer_bytes: u64,
    pub openssl_sha256_seconds: f64,
    pub rows: Vec<RegistryRow>,
    /// Custodian's time over the reference registry's, per measure (below 1: faster).
    pub copy_in_ratio: f64,
    pub copy_out_ratio: f64,
    /// Custodian's HEAD time over the reference registry's.
    pub head_ratio: f64,
}

/// A child process killed when dropped.
pub(crate) struct Killed(std::process::Child);

impl Killed {
    /// The process id, to read its CPU time from /proc.
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_for(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Starts Debian's docker-registry on loopback with filesystem storage under `dir`.
pub(crate) fn reference_registry(dir: &Path) -> anyhow::Result<(Killed, String)> {
    let port = free_port()?;
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("storage").display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting docker-registry (scripts/lib.sh ensure_oci_tools installs it)")?;
    let child = Killed(child);
    wait_for(port)?;
    Ok((child, format!("127.0.0.1:{port}")))
}

/// Writes an OCI layout holding one image: an empty-ish config and one `size`-byte layer.
fn image_layout(dir: &Path, size: u64) -> anyhow::Result<PathBuf> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let staging = dir.join("layer.tmp");
    write_test_file(&staging, size)?;
    let layer = crate::measure::sha256_of_file(&staging)?;
    let layer_path = blobs.join(layer.hex());
    std::fs::rename(&staging, &layer_path)?;
    let put = |bytes: &[u8]| -> anyhow::Result<Digest> {
        let d = Digest::of(Algorithm::Sha256, bytes);
        std::fs::write(blobs.join(d.hex()), bytes)?;
        Ok(d)
    };
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = put(config)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": size}],
    })
    .to_string();
    let manifest_digest = put(manifest.as_bytes())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.to_string(),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "v1"},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string())?;
    Ok(layer_path)
}

fn skopeo(args: &[String]) -> anyhow::Result<Duration> {
    run_timed(Command::new("skopeo").arg("--insecure-policy").args(args))
        .context("running skopeo (scripts/lib.sh ensure_oci_tools installs it)")
}

/// Times `skopeo copy` of the layout into `host` and back out to `out`.
fn copies(
    layout: &Path,
    host: &str,
    creds: Option<&str>,
    out: &Path,
) -> anyhow::Result<(Duration, Duration)> {
    let remote = format!("docker://{host}/bench/big:v1");
    let mut push = vec![
        "copy".to_string(),
        "--preserve-digests".into(),
        "--dest-tls-verify=false".into(),
    ];
    let mut pull = vec![
        "copy".to_string(),
        "--preserve-digests".into(),
        "--src-tls-verify=false".into(),
    ];
    if let Some(creds) = creds {
        push.extend(["--dest-creds".into(), creds.to_string()]);
        pull.extend(["--src-creds".into(), creds.to_string()]);
    }
    push.extend([format!("oci:{}:v1", layout.display()), remote.clone()]);
    pull.extend([remote, format!("oci:{}:v1", out.display())]);
    settle_disk();
    let copy_in = skopeo(&push)?;
    let _ = std::fs::remove_dir_all(out);
    settle_disk();
    let copy_out = skopeo(&pull)?;
    let _ = std::fs::remove_dir_all(out);
    Ok((copy_in, copy_out))
}

/// Pushes `n` small blobs to `host`, then times one HEAD of each from one client.
async fn heads(host: &str, auth: Option<&str>, n: usize) -> anyhow::Result<Duration> {
    let http = reqwest::Client::new();
    let with_auth = |r: reqwest::RequestBuilder| match auth {
        Some(a) => r.header("authorization", a),
        None => r,
    };
    let mut digests = Vec::with_capacity(n);
    for i in 0..n {
        let bytes = format!("small blob {i} {}", "x".repeat(4000)).into_bytes();
        let digest = Digest::of(Algorithm::Sha256, &bytes);
        // POST, then PUT with the bytes: the upload every registry supports (distribution 2.8
        // has no monolithic POST).
        let started = with_auth(http.post(format!("http://{host}/v2/bench/small/blobs/uploads/")))
            .send()
            .await?;
        let location = started
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .context("no Location on an upload")?
            .to_string();
        let location = if location.starts_with("http") {
            location
        } else {
            format!("http://{host}{location}")
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let response = with_auth(http.put(format!("{location}{separator}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await?;
        if response.status().as_u16() != 201 {
            bail!("pushing a small blob to {host}: HTTP {}", response.status());
        }
        digests.push(digest);
    }
    let started = Instant::now();
    for digest in &digests {
        let response = with_auth(http.head(format!("http://{host}/v2/bench/small/blobs/{digest}")))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("HEAD {digest} on {host}: HTTP {}", response.status());
        }
    }
    Ok(started.elapsed())
}

async fn measure(args: &OciArgs, dir: &Path) -> anyhow::Result<Report> {
    let size = args.size_mib << 20;
    eprintln!("writing an image with a {} MiB layer", args.size_mib);
    let layout = dir.join("layout");
    let layer = image_layout(&layout, size)?;
    let openssl = run_timed(
        Command::new("openssl")
            .args(["dgst", "-sha256"])
            .arg(&layer),
    )
    .context("running openssl")?;
    let out = dir.join("out");

    let mut rows = Vec::new();
    {
        let reference_dir = dir.join("reference");
        std::fs::create_dir_all(&reference_dir)?;
        let (_registry, host) = reference_registry(&reference_dir)?;
        eprintln!("skopeo copy into and out of docker-registry at {host}");
        let (copy_in, copy_out) = copies(&layout, &host, None, &out)?;
        let head = heads(&host, None, args.heads).await?;
        rows.push(RegistryRow {
            registry: "docker-registry (CNCF distribution 2.8, Debian)".into(),
            copy_in_seconds: copy_in.as_secs_f64(),
            copy_out_seconds: copy_out.as_secs_f64(),
            heads_per_second: args.heads as f64 / head.as_secs_f64(),
        });
    }
    {
        let daemon = crate::measure::daemon(&dir.join("custodian"), "rocksdb", &[])?;
        let token = daemon.create_token("bench", "publish", "bench/");
        let host = daemon.rest.trim_start_matches("http://").to_string();
        let creds = format!("bench:{token}");
        eprintln!("skopeo copy into and out of custodian at {host}");
        let (copy_in, copy_out) = copies(&layout, &host, Some(&creds), &out)?;
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(&creds)
        );
        let head = heads(&host, Some(&basic), args.heads).await?;
        rows.push(RegistryRow {
            registry: "custodian (RocksDB)".into(),
            copy_in_seconds: copy_in.as_secs_f64(),
            copy_out_seconds: copy_out.as_secs_f64(),
            heads_per_second: args.heads as f64 / head.as_secs_f64(),
        });
    }
    let (reference, ours) = (&rows[0], &rows[1]);
    Ok(Report {
        layer_bytes: size,
        openssl_sha256_seconds: openssl.as_secs_f64(),
        copy_in_ratio: ours.copy_in_seconds / reference.copy_in_seconds,
        copy_out_ratio: ours.copy_out_seconds / reference.copy_out_seconds,
        head_ratio: reference.heads_per_second / ours.heads_per_second,
        rows,
    })
}

/// Runs the scenario.
pub fn run(args: OciArgs) -> anyhow::Result<ExitCode> {
    run_checked(Command::new("skopeo").arg("--version")).context("skopeo is not installed")?;
    let args = &args;
    crate::measure::run_scenario(
        "oci",
        args.dir.as_deref(),
        args.json,
        |dir| async move { measure(args, &dir).await },
        print,
    )
}

/// Prints the report as text.
pub fn print(report: &Report) {
    let size = report.layer_bytes;
    println!(
        "skopeo copy of an image with a {} MiB layer, and HEADs of small blobs (same disk, same run; openssl dgst -sha256 of the layer: {:.2} s, {:.2} GiB/s):",
        size >> 20,
        report.openssl_sha256_seconds,
        gib_per_s(size, Duration::from_secs_f64(report.openssl_sha256_seconds))
    );
    for row in &report.rows {
        println!(
            "  {:<48} in {:>6.2} s ({:.2} GiB/s)  out {:>6.2} s ({:.2} GiB/s)  {:>8.0} HEADs/s",
            row.registry,
            row.copy_in_seconds,
            gib_per_s(size, Duration::from_secs_f64(row.copy_in_seconds)),
            row.copy_out_seconds,
            gib_per_s(size, Duration::from_secs_f64(row.copy_out_seconds)),
            row.heads_per_second
        );
    }
    println!(
        "  custodian / reference registry: copy in {:.2}×, copy out {:.2}×, HEAD {:.2}× the time (below 1: faster)",
        report.copy_in_ratio, report.copy_out_ratio, report.head_ratio
    );
}
