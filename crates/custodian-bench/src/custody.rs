//! `custodian-bench custody`: one large blob put and fetched through a real daemon, per backend,
//! as a ratio to `openssl dgst -sha256` of the same file and to the disk's write+fsync time.

use std::path::{Path, PathBuf};
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
    /// Skip the reference registry (Debian's docker-registry, timed on the same file by default
    /// when it is installed: monolithic upload, streamed download, download to a file)
    #[arg(long)]
    no_peer: bool,
    /// Then put this many more blobs of the same size, each different, into one store (see
    /// --grow-backend), timing each, with as many bytes again of mixed blobs put between them
    /// (64 MiB, 8 MiB, 1 MiB, and 4 KiB ones through BatchPut): the put's cost as the store
    /// grows (e.g. 11 for puts into 0, 2, … 20 GiB stored); then the last blobs' gets from the
    /// full store, and a data pack of the same size uploaded into it over REST
    #[arg(long, default_value_t = 0)]
    grow: u64,
    /// The backend the growth series fills: rocksdb, or file (a `file://` object store, whose
    /// index is RocksDB too)
    #[arg(long, default_value = "rocksdb", value_parser = ["rocksdb", "file"])]
    grow_backend: String,
    /// Write the growth series as an SVG plot to this file
    #[arg(long)]
    plot: Option<PathBuf>,
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
    /// `custodian blob put --no-local-put FILE`: the bytes streamed over gRPC (a resumable
    /// upload session), as a client on another machine sends them. `put_seconds` is the same
    /// put from this machine, where the CLI hands the daemon the file on its local put socket.
    /// Absent (0) in reports from before local puts.
    #[serde(default)]
    pub put_streamed_seconds: f64,
    /// `put_streamed_seconds` / the larger of the SHA-256 time and the disk's write+fsync time.
    #[serde(default)]
    pub put_streamed_ratio_to_floor: f64,
    /// `custodian blob get DIGEST -o FILE`: verified, fsynced and renamed into place.
    pub get_seconds: f64,
    /// `get_seconds` / the SHA-256 time.
    pub get_ratio: f64,
    /// `get_seconds` / (the SHA-256 time + the disk's write+fsync time): a verified, durable
    /// get hashes every byte and then must still write and sync it.
    pub get_ratio_to_floor: f64,
    /// `custodian blob get DIGEST -o -` to /dev/null: the transfer and its verification alone.
    pub get_stream_seconds: f64,
    /// `get_stream_seconds` / the SHA-256 time.
    pub get_stream_ratio: f64,
    /// `custodian blob get blake3:… -o -` to /dev/null: the same streamed get, asked for by the
    /// blob's BLAKE3 digest, so the client verifies BLAKE3 instead of SHA-256. Absent (0) in
    /// reports from before it was measured.
    #[serde(default)]
    pub get_stream_blake3_seconds: f64,
    /// The CPU both ends spent on the timed streamed put (the fastest run's). Absent from
    /// reports before the fiftieth session.
    #[serde(default)]
    pub put_streamed_cpu: Option<Cpu>,
    /// The same for the streamed get by the sha256 digest.
    #[serde(default)]
    pub get_stream_cpu: Option<Cpu>,
    /// The same for the streamed get by the blake3 digest.
    #[serde(default)]
    pub get_stream_blake3_cpu: Option<Cpu>,
    pub daemon_peak_rss_mib: f64,
}

/// The CPU time (user + system) a transfer cost the CLI and the daemon. On two cores the sum,
/// halved, is the least the transfer could take however well the two ends overlapped, so a row
/// whose target allows less than that is bound by the work itself, not by a wait.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Cpu {
    /// The CLI's CPU seconds.
    pub cli_seconds: f64,
    /// The daemon's CPU seconds over the same span.
    pub daemon_seconds: f64,
    /// The cores both could run on (the bench's own available parallelism, as both ran on the
    /// same machine).
    pub cores: u32,
}

impl Cpu {
    /// The least wall-clock time the work could take on [`Cpu::cores`] cores: both ends' CPU
    /// spread over all of them with no wait at all.
    pub fn least_seconds(&self) -> f64 {
        (self.cli_seconds + self.daemon_seconds) / f64::from(self.cores.max(1))
    }

    /// `CPU: CLI … s, daemon … s (at least … s on N cores)`, as the tables print it.
    pub fn describe(&self) -> String {
        format!(
            "CPU: CLI {:.2} s, daemon {:.2} s (at least {:.2} s on {} cores)",
            self.cli_seconds,
            self.daemon_seconds,
            self.least_seconds(),
            self.cores
        )
    }
}

/// A client's step (`command`) timed with the CPU it and the server with process id `server`
/// spent on it.
pub(crate) fn run_timed_with_cpu(
    server: u32,
    command: &mut Command,
) -> anyhow::Result<(Duration, Cpu)> {
    let client = crate::measure::children_cpu_seconds();
    let busy = crate::measure::cpu_seconds(server);
    let elapsed = run_timed(command)?;
    Ok((
        elapsed,
        Cpu {
            cli_seconds: crate::measure::children_cpu_seconds() - client,
            daemon_seconds: crate::measure::cpu_seconds(server) - busy,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        },
    ))
}

/// Keeps `(time, cpu)` in `best` when it is the fastest so far.
fn keep_fastest(best: &mut (Duration, Option<Cpu>), (time, cpu): (Duration, Cpu)) {
    if time < best.0 {
        *best = (time, Some(cpu));
    }
}

/// The reference registry's times on the same file, over plain HTTP with curl.
#[derive(Serialize, Deserialize)]
pub struct PeerResult {
    /// What it is.
    pub registry: String,
    /// A monolithic upload: `POST` a session, `PUT` the whole file with its digest.
    pub put_seconds: f64,
    /// `GET` of the blob into a file, then `fsync` (the registry checks nothing on read). Its
    /// stored files are dropped from the page cache first, as Custodian's put drops the pages
    /// of the blob its get to a file then reads.
    pub get_seconds: f64,
    /// `GET` of the blob to /dev/null, from the page cache its upload left the file in (as
    /// Custodian's streamed gets find theirs after its get to a file).
    pub get_stream_seconds: f64,
    /// The disk's own floor under both gets to a file: the same bytes copied from the disk (the
    /// input file dropped from the page cache first) into a new file with `copy_file_range`,
    /// then `fsync`. Nothing is hashed or framed, so no get to a file can beat it by much.
    /// Zero in reports from before it was measured.
    #[serde(default)]
    pub copy_seconds: f64,
    /// The CPU the timed streamed read cost: curl's as the client's, the registry's as the
    /// daemon's. Absent from reports before the fiftieth session.
    #[serde(default)]
    pub get_stream_cpu: Option<Cpu>,
}

/// One put of the growth series.
#[derive(Serialize, Deserialize)]
pub struct GrowthPoint {
    /// What the store held before this put, in GiB (the earlier large puts and the mixed blobs
    /// put between them).
    pub stored_gib: f64,
    /// How many blobs the store held before this put.
    #[serde(default)]
    pub stored_blobs: u64,
    pub put_seconds: f64,
    /// `put_seconds` / the larger of the SHA-256 time and the disk's write+fsync time.
    pub put_ratio_to_floor: f64,
    /// The daemon's CPU time (user + system) during the put.
    pub daemon_cpu_seconds: f64,
    /// Seconds the daemon stayed busy (RocksDB flushing and compacting the mixed blobs just put)
    /// before this put was timed; absent in reports written before the series waited for it.
    #[serde(default)]
    pub settled_after_s: Option<f64>,
    /// `openssl dgst -sha256` of the same file, timed just before and just after this put, the
    /// mean of the two (as the floors beside the small-blob and ledger rows are): the machine as
    /// this put found it. The put hashes every byte on one core, so a put that slows with the
    /// minutes of a long run, not with the store, slows with this too. Absent from reports
    /// before the thirty-seventh session.
    #[serde(default)]
    pub sha256_seconds_beside: Option<f64>,
}

#[derive(Serialize, Deserialize)]
pub struct Report {
    pub size_bytes: u64,
    pub openssl_sha256_seconds: f64,
    pub openssl_sha256_gib_per_s: f64,
    /// Writing the blob's size from memory and fsyncing it: the disk's limit for anything durable.
    pub disk_write_fsync_seconds: f64,
    pub disk_write_fsync_gib_per_s: f64,
    /// SHA-256 of the blob's size from memory on one core: what a client verifying a get by its
    /// sha256 digest cannot do without, where `openssl dgst` also reads the file. Absent from
    /// reports before the fiftieth session.
    #[serde(default)]
    pub sha256_in_memory_seconds: Option<f64>,
    pub backends: Vec<BackendResult>,
    #[serde(default)]
    pub peer: Option<PeerResult>,
    #[serde(default)]
    pub growth: Vec<GrowthPoint>,
    #[serde(default)]
    pub growth_daemon_peak_rss_mib: Option<f64>,
    /// The backend the growth series filled (absent in reports written before the series could
    /// fill anything but RocksDB).
    #[serde(default)]
    pub growth_backend: Option<String>,
    /// The gets of the growth series' last blobs from its full store (absent before they were
    /// measured).
    #[serde(default)]
    pub growth_gets: Option<GrowthGets>,
}

/// The custody scenario's gets, of the growth series' last blobs (as many as `--runs`, each
/// got once in each way, the fastest counting), from the store it filled.
#[derive(Serialize, Deserialize)]
pub struct GrowthGets {
    /// What the store held when they were got, in GiB.
    pub stored_gib: f64,
    /// How many blobs it held.
    pub stored_blobs: u64,
    /// `blob get sha256:… -o FILE`: verified, fsynced and renamed into place.
    pub get_seconds: f64,
    /// `blob get sha256:… -o -` to /dev/null.
    pub get_stream_seconds: f64,
    /// `blob get blake3:… -o -` to /dev/null.
    pub get_stream_blake3_seconds: f64,
    /// The CPU both ends spent on the fastest streamed get by the sha256 digest; absent before
    /// the fiftieth session.
    #[serde(default)]
    pub get_stream_cpu: Option<Cpu>,
    /// The same by the blake3 digest.
    #[serde(default)]
    pub get_stream_blake3_cpu: Option<Cpu>,
    /// The disk's write+fsync of the same size, timed right after these gets: after writing a
    /// store's worth, this VM's disk writes slower for a while than when the run began. Absent
    /// from reports before the twentieth session.
    #[serde(default)]
    pub disk_write_fsync_seconds: Option<f64>,
    /// A data pack of the same size uploaded over REST into the same full store, after these
    /// gets (`custodian datapack upload --no-local-put`, as `custodian-bench rest` times it on a
    /// fresh one); absent before the thirtieth session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest_upload: Option<crate::rest::Transfer>,
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

    let openssl = best_of(args.runs, || time_openssl(&input))?;
    let mut report = Report {
        size_bytes: size,
        openssl_sha256_seconds: openssl.as_secs_f64(),
        openssl_sha256_gib_per_s: gib_per_s(size, openssl),
        disk_write_fsync_seconds: disk.as_secs_f64(),
        disk_write_fsync_gib_per_s: gib_per_s(size, disk),
        sha256_in_memory_seconds: Some(
            size as f64 / (1u64 << 30) as f64 / crate::limits::hashing().0,
        ),
        backends: Vec::new(),
        peer: None,
        growth: Vec::new(),
        growth_daemon_peak_rss_mib: None,
        growth_backend: None,
        growth_gets: None,
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
        let mut streamed_best = (Duration::MAX, None);
        let mut get_best = Duration::MAX;
        let mut stream_best = (Duration::MAX, None);
        let mut stream_blake3_best = (Duration::MAX, None);
        let mut peak = 0u64;
        // A fresh daemon and store for every timed put, so that every put really stores.
        let fresh_daemon = || -> anyhow::Result<custodian_testkit::Daemon> {
            let _ = std::fs::remove_dir_all(&data_dir);
            let _ = std::fs::remove_dir_all(work.join("objects"));
            let daemon = crate::measure::daemon(&data_dir, &storage, &[])?;
            settle_disk();
            Ok(daemon)
        };
        for _ in 0..args.runs {
            let daemon = fresh_daemon()?;
            let start = Instant::now();
            let put_output = run_checked(
                Command::new(&exe)
                    .args(["blob", "put", "--json", "--server", &daemon.address])
                    .args(["--token", &daemon.token])
                    .arg(&input),
            )?;
            let put = start.elapsed();
            let (digest, blake3) = put_digests(&put_output)?;
            let [(get, _), stream, stream_blake3] =
                time_gets(&daemon, (&digest, &blake3), &work.join("out.bin"))?;
            keep_fastest(&mut stream_best, stream);
            keep_fastest(&mut stream_blake3_best, stream_blake3);
            peak = peak.max(daemon.peak_rss());
            put_best = put_best.min(put);
            get_best = get_best.min(get);
            drop(daemon);

            // The same put streamed over gRPC, into a fresh store again (into this one it
            // would only be verified, not written).
            let daemon = fresh_daemon()?;
            let streamed = run_timed_with_cpu(
                daemon.pid(),
                Command::new(&exe)
                    .args(["blob", "put", "--no-local-put", "--server", &daemon.address])
                    .args(["--token", &daemon.token])
                    .arg(&input),
            )?;
            keep_fastest(&mut streamed_best, streamed);
            peak = peak.max(daemon.peak_rss());
        }
        report.backends.push(BackendResult {
            backend: backend.clone(),
            put_seconds: put_best.as_secs_f64(),
            put_ratio: put_best.as_secs_f64() / openssl.as_secs_f64(),
            put_ratio_to_floor: put_best.as_secs_f64() / floor,
            put_streamed_seconds: streamed_best.0.as_secs_f64(),
            put_streamed_ratio_to_floor: streamed_best.0.as_secs_f64() / floor,
            get_seconds: get_best.as_secs_f64(),
            get_ratio: get_best.as_secs_f64() / openssl.as_secs_f64(),
            get_ratio_to_floor: get_best.as_secs_f64() / (openssl + disk).as_secs_f64(),
            get_stream_seconds: stream_best.0.as_secs_f64(),
            get_stream_ratio: stream_best.0.as_secs_f64() / openssl.as_secs_f64(),
            get_stream_blake3_seconds: stream_blake3_best.0.as_secs_f64(),
            put_streamed_cpu: streamed_best.1,
            get_stream_cpu: stream_best.1,
            get_stream_blake3_cpu: stream_blake3_best.1,
            daemon_peak_rss_mib: crate::measure::mib(peak),
        });
    }

    if !args.no_peer {
        if which("docker-registry") {
            report.peer = Some(measure_peer(&work, &input, args.runs)?);
        } else {
            eprintln!(
                "the reference registry is not installed (scripts/lib.sh ensure_oci_tools installs Debian's docker-registry); measuring Custodian alone"
            );
        }
    }
    if args.grow > 0 {
        let (points, gets, peak) = grow(
            &work,
            &input,
            size,
            (args.grow, args.runs),
            (floor, openssl.as_secs_f64()),
            &args.grow_backend,
        )?;
        report.growth = points;
        report.growth_gets = Some(gets);
        report.growth_backend = Some(args.grow_backend.clone());
        report.growth_daemon_peak_rss_mib = Some(crate::measure::mib(peak));
        if let Some(plot) = &args.plot {
            std::fs::write(plot, growth_svg(&report.growth, floor, &args.grow_backend))
                .with_context(|| format!("writing {}", plot.display()))?;
        }
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
            "{:<8} {:>7} {:>6} {:>7} {:>9} {:>7} {:>7} {:>6} {:>7} {:>8} {:>6} {:>9} {:>10}",
            "backend",
            "put s",
            "×sha",
            "×floor",
            "gRPC put",
            "×floor",
            "get s",
            "×sha",
            "×floor",
            "stream s",
            "×sha",
            "blake3 s",
            "peak RSS"
        );
        for b in &report.backends {
            println!(
                "{:<8} {:>7.3} {:>6.2} {:>7.2} {:>9.3} {:>7.2} {:>7.3} {:>6.2} {:>7.2} {:>8.3} {:>6.2} {:>9.3} {:>6.1} MiB",
                b.backend,
                b.put_seconds,
                b.put_ratio,
                b.put_ratio_to_floor,
                b.put_streamed_seconds,
                b.put_streamed_ratio_to_floor,
                b.get_seconds,
                b.get_ratio,
                b.get_ratio_to_floor,
                b.get_stream_seconds,
                b.get_stream_ratio,
                b.get_stream_blake3_seconds,
                b.daemon_peak_rss_mib
            );
        }
        println!(
            "put = `blob put` from this machine (the daemon reads the file from its local put \
             socket); gRPC put = `blob put --no-local-put` (streamed over gRPC, as from another \
             machine). ×sha = time / SHA-256 time; ×floor = time / the least the step can take: for a put \
             max(SHA-256, disk write+fsync), for a get to a file SHA-256 + disk write+fsync; \
             stream = get to /dev/null by the sha256 digest, blake3 = the same by the blake3 \
             digest (the client verifies BLAKE3 instead). Each timed step starts after `sync` and a 2 s pause; fastest of {} runs.",
            args.runs
        );
        for b in &report.backends {
            for (what, cpu) in [
                ("gRPC put", b.put_streamed_cpu),
                ("stream", b.get_stream_cpu),
                ("blake3", b.get_stream_blake3_cpu),
            ] {
                if let Some(cpu) = cpu {
                    println!("{:<8} {what:<8} {}", b.backend, cpu.describe());
                }
            }
        }
        print_peer(&report);
        print_growth(&report, floor);
    }
    Ok(ExitCode::SUCCESS)
}

/// `openssl dgst -sha256` of `input`: SHA-256 on one core at the machine's best (SHA-NI), the
/// put's floor when the disk writes faster.
fn time_openssl(input: &Path) -> anyhow::Result<Duration> {
    run_timed(Command::new("openssl").args(["dgst", "-sha256"]).arg(input))
        .context("running `openssl dgst -sha256` (is openssl installed?)")
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Times the reference registry on `input`, each run on a fresh registry and store.
fn measure_peer(work: &Path, input: &Path, runs: u32) -> anyhow::Result<PeerResult> {
    let digest = crate::measure::sha256_of_file(input)?.to_string();
    let (mut put_best, mut get_best, mut copy_best) = (Duration::MAX, Duration::MAX, Duration::MAX);
    let mut stream_best = (Duration::MAX, None);
    for _ in 0..runs {
        let dir = work.join("peer");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (registry, host) = crate::oci::reference_registry(&dir)?;
        let base = format!("http://{host}/v2/bench/blob");
        settle_disk();
        let start = Instant::now();
        let headers = run_checked(Command::new("curl").args([
            "-sS",
            "-f",
            "-X",
            "POST",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("{base}/blobs/uploads/"),
        ]))?;
        let headers = String::from_utf8_lossy(&headers);
        let location = headers
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("location")
                    .then(|| value.trim().to_string())
            })
            .context("the reference registry's upload answer has no Location")?;
        let location = if location.starts_with('/') {
            format!("http://{host}{location}")
        } else {
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        run_checked(
            Command::new("curl")
                .args([
                    "-sS",
                    "-f",
                    "-H",
                    "Content-Type: application/octet-stream",
                    "-T",
                ])
                .arg(input)
                .arg(format!("{location}{separator}digest={digest}")),
        )?;
        put_best = put_best.min(start.elapsed());
        let url = format!("{base}/blobs/{digest}");
        settle_disk();
        let stream = run_timed_with_cpu(
            registry.pid(),
            Command::new("curl").args(["-sS", "-f", "-o", "/dev/null", &url]),
        )?;
        keep_fastest(&mut stream_best, stream);
        let out = work.join("peer-out.bin");
        settle_disk();
        // Custodian's get to a file reads the blob from the disk (its put drops the pages it
        // wrote), so the registry's is timed from the disk too: its stored files are dropped
        // from the page cache that its upload and streamed read left them in.
        drop_cached_tree(&dir.join("storage"))?;
        let start = Instant::now();
        run_checked(
            Command::new("curl")
                .args(["-sS", "-f", "-o"])
                .arg(&out)
                .arg(&url),
        )?;
        std::fs::File::open(&out)?.sync_all()?;
        get_best = get_best.min(start.elapsed());
        let _ = std::fs::remove_file(&out);
        settle_disk();
        let source = std::fs::File::open(input)?;
        custodian_storage::drop_cached(&source, 0, source.metadata()?.len());
        let start = Instant::now();
        // `std::fs::copy` copies in the kernel (`copy_file_range`), as coreutils' `cp` and `cat`
        // do: the cheapest way there is to move the bytes from the disk into a new file.
        std::fs::copy(input, &out)?;
        std::fs::File::open(&out)?.sync_all()?;
        copy_best = copy_best.min(start.elapsed());
        let _ = std::fs::remove_file(&out);
    }
    let _ = std::fs::remove_dir_all(work.join("peer"));
    Ok(PeerResult {
        registry: "docker-registry (Debian; CNCF distribution), filesystem storage, loopback"
            .into(),
        put_seconds: put_best.as_secs_f64(),
        get_seconds: get_best.as_secs_f64(),
        get_stream_seconds: stream_best.0.as_secs_f64(),
        copy_seconds: copy_best.as_secs_f64(),
        get_stream_cpu: stream_best.1,
    })
}

/// Drops every file under `dir` from the page cache (they are synced, so their pages are
/// clean and go at once), so that the next read of them comes from the disk.
fn drop_cached_tree(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            drop_cached_tree(&path)?;
        } else if entry.file_type()?.is_file() {
            let file = std::fs::File::open(&path)?;
            custodian_storage::drop_cached(&file, 0, file.metadata()?.len());
        }
    }
    Ok(())
}

fn print_peer(report: &Report) {
    let Some(peer) = &report.peer else {
        return;
    };
    let stream_cpu = peer.get_stream_cpu.map_or_else(String::new, |c| {
        format!(
            " (CPU: curl {:.2} s, the registry {:.2} s)",
            c.cli_seconds, c.daemon_seconds
        )
    });
    println!(
        "reference registry ({}): put {:.3} s, get to a file {:.3} s, stream {:.3} s{stream_cpu}; \
         the disk's own copy of the same bytes with fsync {:.3} s",
        peer.registry,
        peer.put_seconds,
        peer.get_seconds,
        peer.get_stream_seconds,
        peer.copy_seconds
    );
    println!(
        "{:<8} {:>14} {:>16} {:>17} {:>24}",
        "backend", "put ×registry", "get ×registry", "stream ×registry", "blake3 stream ×registry"
    );
    for b in &report.backends {
        println!(
            "{:<8} {:>14.2} {:>16.2} {:>17.2} {:>24.2}",
            b.backend,
            b.put_seconds / peer.put_seconds,
            b.get_seconds / peer.get_seconds,
            b.get_stream_seconds / peer.get_stream_seconds,
            b.get_stream_blake3_seconds / peer.get_stream_seconds
        );
    }
    if let Some(lean) = receive_paths(report) {
        println!("{lean}");
    }
}

/// The CLI's streamed get by the sha256 digest against curl's read of the same blob from the
/// registry plus one SHA-256 pass from memory (issue 22: "the CLI's receive path as lean as
/// curl's plus one SHA-256 pass"), per backend; `None` when the report lacks a figure.
pub(crate) fn receive_paths(report: &Report) -> Option<String> {
    let curl = report.peer.as_ref()?.get_stream_cpu?.cli_seconds;
    let hash = report.sha256_in_memory_seconds?;
    let lines: Vec<String> = report
        .backends
        .iter()
        .filter_map(|b| {
            let cli = b.get_stream_cpu?.cli_seconds;
            Some(format!(
                "{}: the CLI's streamed get by sha256 {cli:.2} s of CPU, {:.2}× curl's read \
                 ({curl:.2} s) plus SHA-256 alone from memory ({hash:.2} s)",
                b.backend,
                cli / (curl + hash)
            ))
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// The blobs put between two timed puts of the growth series, `total` bytes in all: half in
/// 64 MiB blobs, a quarter in 8 MiB ones, an eighth in blobs of one block (1 MiB) and an eighth
/// in 4 KiB blobs through `BatchPut` (those go into packs on RocksDB), so that the store grows
/// the way a registry's does rather than by large blobs alone. Returns how many were put.
async fn fill_mixed(
    daemon: &custodian_testkit::Daemon,
    total: u64,
    seed: u64,
) -> anyhow::Result<u64> {
    use custodian_proto::cas::v1 as pb;
    let mut store = custodian_client::Client::connect(&daemon.target(Some(&daemon.token)))
        .await?
        .store();
    let mut put = 0u64;
    let mut seed = seed;
    for (share, size) in [(2, 64u64 << 20), (4, 8 << 20), (8, 1 << 20)] {
        for _ in 0..(total / share / size).max(1) {
            seed += 1;
            let data = custodian_testkit::pattern(seed, size as usize);
            let mut messages = vec![pb::PutRequest {
                message: Some(pb::put_request::Message::Header(pb::PutHeader::default())),
            }];
            messages.extend((0..data.len()).step_by(1 << 20).map(|at| pb::PutRequest {
                message: Some(pb::put_request::Message::Chunk(
                    data.slice(at..(at + (1 << 20)).min(data.len())),
                )),
            }));
            store.put(futures::stream::iter(messages)).await?;
            put += 1;
        }
    }
    let small = (total / 8 / 4096).max(1000);
    for first in (0..small).step_by(1000) {
        let items = (first..(first + 1000).min(small))
            .map(|i| pb::BatchPutItem {
                expected_digest: String::new(),
                data: custodian_testkit::pattern(seed + 1 + i, 4096),
            })
            .collect();
        let reply = store
            .batch_put(pb::BatchPutRequest { items })
            .await?
            .into_inner();
        if let Some(err) = reply.results.iter().find_map(|r| r.error.as_ref()) {
            bail!("BatchPut refused a blob: {}", err.message);
        }
        put += reply.results.len() as u64;
    }
    Ok(put)
}

/// The bytes [`fill_mixed`] puts for `total`.
fn mixed_bytes(total: u64) -> u64 {
    [(2, 64u64 << 20), (4, 8 << 20), (8, 1 << 20)]
        .iter()
        .map(|(share, size)| (total / share / size).max(1) * size)
        .sum::<u64>()
        + (total / 8 / 4096).max(1000) * 4096
}

/// Puts `count` different blobs of `size` bytes into one fresh store of `backend`, one after
/// another, timing each, with `size` bytes of mixed blobs ([`fill_mixed`]) put after each, then
/// gets the last one back as the fresh store's gets are timed (the fastest of `runs`), then
/// uploads a data pack of the same size over REST into the same store; returns the series, the
/// gets and the upload, and the daemon's peak RSS. `floor` is the put's floor in seconds and
/// `openssl` the SHA-256 time of `input`.
fn grow(
    work: &Path,
    input: &Path,
    size: u64,
    (count, runs): (u64, u32),
    (floor, openssl): (f64, f64),
    backend: &str,
) -> anyhow::Result<(Vec<GrowthPoint>, GrowthGets, u64)> {
    use std::os::unix::fs::FileExt as _;
    let exe = custodian_testkit::binary();
    let data_dir = work.join("data-grow");
    let objects = work.join("objects-grow");
    for dir in [&data_dir, &objects] {
        let _ = std::fs::remove_dir_all(dir);
    }
    let storage = crate::measure::storage_for(backend, &objects)?;
    let daemon = crate::measure::daemon(&data_dir, &storage, &[])?;
    let file = std::fs::OpenOptions::new().write(true).open(input)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut points = Vec::new();
    let (mut stored, mut blobs) = (0u64, 0u64);
    let mut digests = Vec::new();
    for i in 0..count {
        // A different first block makes a different blob of the same size.
        file.write_all_at(format!("growth {i:>8}").as_bytes(), 0)?;
        file.sync_all()?;
        // As before the gets below and the small-blob bench's timed calls: the put is timed
        // once the daemon has finished with the mixed blobs put before it, so that their
        // flushes and compactions count as the time it took to settle, not as this put's.
        let settled = crate::measure::settle_daemon(daemon.pid(), Duration::from_secs(60));
        let sha256_before = time_openssl(input)?;
        settle_disk();
        let cpu = crate::measure::cpu_seconds(daemon.pid());
        let start = Instant::now();
        let output = run_checked(
            Command::new(&exe)
                .args(["blob", "put", "--json", "--server", &daemon.address])
                .args(["--token", &daemon.token])
                .arg(input),
        )?;
        let put = start.elapsed().as_secs_f64();
        let cpu = crate::measure::cpu_seconds(daemon.pid()) - cpu;
        let sha256_beside = (sha256_before + time_openssl(input)?) / 2;
        digests.push(put_digests(&output)?);
        let point = GrowthPoint {
            stored_gib: stored as f64 / (1u64 << 30) as f64,
            stored_blobs: blobs,
            put_seconds: put,
            put_ratio_to_floor: put / floor,
            daemon_cpu_seconds: cpu,
            settled_after_s: Some(settled.as_secs_f64()),
            sha256_seconds_beside: Some(sha256_beside.as_secs_f64()),
        };
        eprintln!(
            "growth: {:.1} GiB in {} blobs stored, put {:.2} s ({:.2}× floor, {:.2}× SHA-256 timed beside it, {:.2} s), daemon CPU {:.2} s, after the daemon settled in {:.0} s",
            point.stored_gib,
            point.stored_blobs,
            point.put_seconds,
            point.put_ratio_to_floor,
            point.put_seconds / sha256_beside.as_secs_f64(),
            sha256_beside.as_secs_f64(),
            point.daemon_cpu_seconds,
            settled.as_secs_f64()
        );
        points.push(point);
        stored += size;
        blobs += 1;
        if i + 1 < count {
            blobs += runtime
                .block_on(fill_mixed(&daemon, size, 0x6d_0000_0000 + i * 1_000_000))
                .context("putting the mixed blobs between two timed puts")?;
            stored += mixed_bytes(size);
        }
    }
    // The last blobs back from the full store, as the fresh store's gets are timed: each of the
    // last `runs` blobs once (a blob read twice would come from the page cache the second
    // time, where each fresh run reads a blob just put), in the fresh runs' order, the fastest of
    // each kind counting; and only once the daemon is idle. Right after the fill the page cache
    // is full of the 19 GiB just written, and a read that must first reclaim it ran 1.3-1.9×
    // slower for a while whatever the store held (docs/performance-history.md, nineteenth
    // session): that is the machine recovering from the fill, not the store's size.
    anyhow::ensure!(!digests.is_empty(), "the growth series put nothing");
    let at = stored as f64 / (1u64 << 30) as f64;
    crate::measure::settle_daemon(daemon.pid(), Duration::from_secs(60));
    let mut get = Duration::MAX;
    let (mut stream, mut stream_blake3) = ((Duration::MAX, None), (Duration::MAX, None));
    let newest = digests.len().saturating_sub(runs.max(1) as usize);
    for (sha256, blake3) in &digests[newest..] {
        let [(g, _), s, b] = time_gets(&daemon, (sha256, blake3), &work.join("grow-out.bin"))?;
        get = get.min(g);
        keep_fastest(&mut stream, s);
        keep_fastest(&mut stream_blake3, b);
    }
    // The disk as the gets found it: the floor measured at the start may not hold after a fill.
    settle_disk();
    let disk = measure_disk(&work.join("disk-probe-after.bin"), size)?;
    let mut gets = GrowthGets {
        stored_gib: at,
        stored_blobs: blobs,
        get_seconds: get.as_secs_f64(),
        get_stream_seconds: stream.0.as_secs_f64(),
        get_stream_blake3_seconds: stream_blake3.0.as_secs_f64(),
        get_stream_cpu: stream.1,
        get_stream_blake3_cpu: stream_blake3.1,
        disk_write_fsync_seconds: Some(disk.as_secs_f64()),
        rest_upload: None,
    };
    eprintln!(
        "growth: the last blobs back from {at:.1} GiB stored: get to a file {:.2} s, streamed {:.2} s, streamed by their BLAKE3 digests {:.2} s; disk write+fsync right after {:.2} s",
        gets.get_seconds,
        gets.get_stream_seconds,
        gets.get_stream_blake3_seconds,
        disk.as_secs_f64()
    );
    // A data pack uploaded over REST into the same full store: a new blob (its first block
    // differs from every put's), staged, hashed, scanned and registered as on a fresh store.
    file.write_all_at(b"rest upload     ", 0)?;
    file.sync_all()?;
    crate::rest::publish_for_upload(&daemon, work, "bench-grown-data")?;
    crate::measure::settle_daemon(daemon.pid(), Duration::from_secs(60));
    settle_disk();
    let rest_upload = crate::rest::timed_rest_upload(&daemon, "bench-grown-data", input, openssl)?;
    eprintln!(
        "growth: a {} MiB data pack uploaded over REST into {at:.1} GiB stored: {:.2} s ({:.2}× openssl), CPU: CLI {:.2} s, daemon {:.2} s",
        size >> 20,
        rest_upload.seconds,
        rest_upload.ratio_to_openssl,
        rest_upload.cli_cpu_seconds,
        rest_upload.daemon_cpu_seconds
    );
    gets.rest_upload = Some(rest_upload);
    let peak = daemon.peak_rss();
    drop(daemon);
    for dir in [&data_dir, &objects] {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok((points, gets, peak))
}

/// Times the gets of one blob as every run times them, each after `sync` and a pause, in this
/// order: to `output` (verified, fsynced and renamed into place; removed afterwards), streamed
/// to /dev/null by its `sha256` digest, and the same by its `blake3` digest — verified as fully,
/// by a hash that runs at several times SHA-256's rate on one core. The two streamed gets may
/// find in the page cache what the first one read.
fn time_gets(
    daemon: &custodian_testkit::Daemon,
    (sha256, blake3): (&str, &str),
    output: &Path,
) -> anyhow::Result<[(Duration, Cpu); 3]> {
    let exe = custodian_testkit::binary();
    let get = |digest: &str, to: &Path| {
        settle_disk();
        run_timed_with_cpu(
            daemon.pid(),
            Command::new(&exe)
                .args(["blob", "get", digest, "--server", &daemon.address])
                .args(["--token", &daemon.token, "-o"])
                .arg(to),
        )
    };
    let to_file = get(sha256, output);
    let _ = std::fs::remove_file(output);
    let stdout = Path::new("-");
    Ok([to_file?, get(sha256, stdout)?, get(blake3, stdout)?])
}

/// The sha256 and blake3 digests `blob put --json` printed for its one file.
fn put_digests(output: &[u8]) -> anyhow::Result<(String, String)> {
    let lines: serde_json::Value = serde_json::from_slice(output).context("parsing put --json")?;
    let digest = |algorithm: &str| {
        lines[0][algorithm]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("put --json printed no {algorithm}"))
    };
    Ok((digest("sha256")?, digest("blake3")?))
}

/// Fresh against prefilled: the first put against the median of the last quarter (one put
/// each is timed as the store grows, so a single late put would judge the whole series by one
/// noisy sample), and what the store held where that quarter begins, in GiB.
pub(crate) fn growth_summary(points: &[GrowthPoint]) -> Option<(&GrowthPoint, &GrowthPoint, f64)> {
    let first = points.first()?;
    let tail = last_quarter(points);
    let mut last: Vec<&GrowthPoint> = tail.iter().collect();
    last.sort_by(|a, b| a.put_seconds.total_cmp(&b.put_seconds));
    let median = last[last.len() / 2];
    Some((first, median, tail[0].stored_gib))
}

/// The last quarter of the series' puts (rounded up, so at least one): the puts a grown store is
/// judged by.
fn last_quarter(points: &[GrowthPoint]) -> &[GrowthPoint] {
    &points[points.len() - points.len().div_ceil(4)..]
}

/// The same comparison with each put against the SHA-256 time measured beside it: the
/// first put's ratio and the median ratio of the last quarter (the quarter
/// [`growth_summary`] takes). Where the machine slowed or sped up over the series, this is
/// what the store's size did to the put; `None` when a put of either has no such measurement
/// (reports before the thirty-seventh session).
pub(crate) fn growth_summary_beside(points: &[GrowthPoint]) -> Option<(f64, f64)> {
    let ratio = |p: &GrowthPoint| {
        p.sha256_seconds_beside
            .filter(|s| *s > 0.0)
            .map(|s| p.put_seconds / s)
    };
    let first = ratio(points.first()?)?;
    let mut last = last_quarter(points)
        .iter()
        .map(ratio)
        .collect::<Option<Vec<f64>>>()?;
    last.sort_by(f64::total_cmp);
    Some((first, last[last.len() / 2]))
}

fn print_growth(report: &Report, floor: f64) {
    if report.growth.is_empty() {
        return;
    }
    println!(
        "{:>10} {:>12} {:>7} {:>7} {:>14} {:>10} {:>8}",
        "stored GiB", "stored blobs", "put s", "×floor", "×SHA-256 then", "daemon CPU", "settled"
    );
    for p in &report.growth {
        let settled = p
            .settled_after_s
            .map_or_else(|| "—".to_string(), |s| format!("{s:.0} s"));
        let beside = p
            .sha256_seconds_beside
            .map_or_else(|| "—".to_string(), |s| format!("{:.2}", p.put_seconds / s));
        println!(
            "{:>10.1} {:>12} {:>7.2} {:>7.2} {:>14} {:>8.2} s {:>8}",
            p.stored_gib,
            p.stored_blobs,
            p.put_seconds,
            p.put_ratio_to_floor,
            beside,
            p.daemon_cpu_seconds,
            settled
        );
    }
    if let Some((fresh, grown, at)) = growth_summary(&report.growth) {
        let (fresh, grown) = (fresh.put_seconds, grown.put_seconds);
        println!(
            "{}: fresh store {fresh:.2} s ({:.2}× floor); from {at:.0} GiB stored, median {grown:.2} s ({:.2}× floor): prefilled / fresh = {:.2}; daemon peak RSS {:.1} MiB",
            report.growth_backend.as_deref().unwrap_or("rocksdb"),
            fresh / floor,
            grown / floor,
            grown / fresh,
            report.growth_daemon_peak_rss_mib.unwrap_or(0.0)
        );
    }
    if let Some((fresh, grown)) = growth_summary_beside(&report.growth) {
        println!(
            "each put against SHA-256 timed beside it: fresh store {fresh:.2}×, the last quarter's median {grown:.2}×: {:.2} (the store's size with the machine's pace taken out)",
            grown / fresh
        );
    }
    if let Some(gets) = &report.growth_gets {
        println!(
            "the last blobs back from {:.0} GiB stored in {} blobs: get to a file {:.3} s ({:.2}× floor), streamed {:.3} s, streamed by their BLAKE3 digests {:.3} s",
            gets.stored_gib,
            gets.stored_blobs,
            gets.get_seconds,
            gets.get_seconds / (report.openssl_sha256_seconds + report.disk_write_fsync_seconds),
            gets.get_stream_seconds,
            gets.get_stream_blake3_seconds
        );
        if let Some(disk) = gets.disk_write_fsync_seconds {
            println!(
                "the disk right after those gets: write+fsync {disk:.3} s ({:.2}× the {:.3} s measured at the start); the get to a file against a floor with it: {:.2}×",
                disk / report.disk_write_fsync_seconds,
                report.disk_write_fsync_seconds,
                gets.get_seconds / (report.openssl_sha256_seconds + disk)
            );
        }
        if let Some(upload) = &gets.rest_upload {
            println!(
                "then a data pack of the same size uploaded over REST into that store: {:.3} s ({:.2}× SHA-256), CPU: CLI {:.2} s, daemon {:.2} s",
                upload.seconds,
                upload.ratio_to_openssl,
                upload.cli_cpu_seconds,
                upload.daemon_cpu_seconds
            );
        }
    }
}

/// The growth series as an SVG line plot: put time against what the store held, with the
/// machine's floor for scale and, where the series measured it, SHA-256 of the same bytes timed
/// beside each put (the machine's pace at that minute); `backend` (rocksdb or file) names
/// the store in the title.
pub fn growth_svg(points: &[GrowthPoint], floor: f64, backend: &str) -> String {
    let store = match backend {
        "file" => "file://",
        _ => "RocksDB",
    };
    let (w, h, left, right, top, bottom) = (640.0, 360.0, 60.0, 20.0, 40.0, 50.0);
    let max_x = points.iter().map(|p| p.stored_gib).fold(1.0, f64::max);
    let beside: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| p.sha256_seconds_beside.map(|s| (p.stored_gib, s)))
        .collect();
    let max_y = points
        .iter()
        .map(|p| p.put_seconds)
        .chain(beside.iter().map(|(_, s)| *s))
        .fold(floor, f64::max)
        * 1.15;
    let x = |v: f64| left + v / max_x * (w - left - right);
    let y = |v: f64| h - bottom - v / max_y * (h - top - bottom);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"22\" font-size=\"14\">Put of one large blob against what the store already holds ({store})</text>\n"
    );
    svg += &format!(
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for i in 0..=4 {
        let v = max_y * f64::from(i) / 4.0;
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.1} s</text>\n",
            left - 6.0,
            y(v) + 4.0
        );
        let g = max_x * f64::from(i) / 4.0;
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{g:.0} GiB</text>\n",
            x(g),
            h - bottom + 18.0
        );
    }
    svg += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">stored before the put</text>\n",
        (left + w - right) / 2.0,
        h - 10.0
    );
    svg += &format!(
        "<line x1=\"{left}\" y1=\"{fy:.1}\" x2=\"{}\" y2=\"{fy:.1}\" stroke=\"gray\" stroke-dasharray=\"4 4\"/>\n<text x=\"{}\" y=\"{:.1}\" fill=\"gray\" text-anchor=\"end\">floor: max(SHA-256, write+fsync) {floor:.2} s</text>\n",
        w - right,
        w - right,
        y(floor) - 6.0,
        fy = y(floor)
    );
    let path: Vec<String> = points
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.stored_gib), y(p.put_seconds)))
        .collect();
    svg += &format!(
        "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\n",
        path.join(" ")
    );
    for p in points {
        svg += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#1f77b4\"/>\n",
            x(p.stored_gib),
            y(p.put_seconds)
        );
    }
    if !beside.is_empty() {
        let path: Vec<String> = beside
            .iter()
            .map(|(g, s)| format!("{:.1},{:.1}", x(*g), y(*s)))
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"#ff7f0e\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            path.join(" ")
        );
        for (g, s) in &beside {
            svg += &format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"5\" height=\"5\" fill=\"#ff7f0e\"/>\n",
                x(*g) - 2.5,
                y(*s) - 2.5
            );
        }
    }
    // A legend under the title: what each line is.
    svg += &format!(
        "<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"#1f77b4\"/><text x=\"{}\" y=\"{}\">the put</text>\n",
        left + 10.0,
        top - 8.0,
        left + 18.0,
        top - 4.0
    );
    if !beside.is_empty() {
        svg += &format!(
            "<rect x=\"{}\" y=\"{}\" width=\"5\" height=\"5\" fill=\"#ff7f0e\"/><text x=\"{}\" y=\"{}\">openssl SHA-256 of the same bytes, timed beside it</text>\n",
            left + 87.5,
            top - 10.5,
            left + 96.0,
            top - 4.0
        );
    }
    svg + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CLI's receive path is set against curl's read plus one SHA-256 pass, per backend,
    /// and a report that lacks any of the three figures (every report before the fiftieth
    /// session) says nothing rather than something made up.
    #[test]
    fn the_receive_path_is_judged_against_curl_plus_one_hash() {
        let cpu = |cli: f64, daemon: f64| Cpu {
            cli_seconds: cli,
            daemon_seconds: daemon,
            cores: 2,
        };
        let backend = |name: &str, cli: Option<f64>| BackendResult {
            backend: name.into(),
            put_seconds: 1.0,
            put_ratio: 1.0,
            put_ratio_to_floor: 1.0,
            put_streamed_seconds: 1.0,
            put_streamed_ratio_to_floor: 1.0,
            get_seconds: 1.0,
            get_ratio: 1.0,
            get_ratio_to_floor: 1.0,
            get_stream_seconds: 0.8,
            get_stream_ratio: 1.0,
            get_stream_blake3_seconds: 0.5,
            put_streamed_cpu: None,
            get_stream_cpu: cli.map(|c| cpu(c, 0.5)),
            get_stream_blake3_cpu: None,
            daemon_peak_rss_mib: 40.0,
        };
        let mut report = Report {
            size_bytes: 1 << 30,
            openssl_sha256_seconds: 0.76,
            openssl_sha256_gib_per_s: 1.3,
            disk_write_fsync_seconds: 0.8,
            disk_write_fsync_gib_per_s: 1.25,
            sha256_in_memory_seconds: Some(0.6),
            backends: vec![backend("rocksdb", Some(1.0)), backend("file", None)],
            peer: Some(PeerResult {
                registry: "docker-registry".into(),
                put_seconds: 4.0,
                get_seconds: 3.0,
                get_stream_seconds: 0.5,
                copy_seconds: 1.0,
                get_stream_cpu: Some(cpu(0.2, 0.1)),
            }),
            growth: Vec::new(),
            growth_daemon_peak_rss_mib: None,
            growth_backend: None,
            growth_gets: None,
        };
        assert_eq!(
            receive_paths(&report).as_deref(),
            Some(
                "rocksdb: the CLI's streamed get by sha256 1.00 s of CPU, 1.25× curl's read \
                 (0.20 s) plus SHA-256 alone from memory (0.60 s)"
            )
        );
        report.sha256_in_memory_seconds = None;
        assert_eq!(receive_paths(&report), None);
        report.sha256_in_memory_seconds = Some(0.6);
        report.peer.as_mut().unwrap().get_stream_cpu = None;
        assert_eq!(receive_paths(&report), None);
    }

    /// The bytes of `path` in the page cache, as util-linux's `fincore` counts them.
    fn resident_bytes(path: &Path) -> u64 {
        let output = Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(path)
            .output()
            .expect("running fincore (util-linux)");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("fincore prints a byte count")
    }

    /// The registry's stored files, nested as its storage nests them, leave the page cache
    /// before its get to a file is timed, so that get reads from the disk as Custodian's does.
    #[test]
    fn every_stored_file_leaves_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("docker/registry/v2/blobs/sha256/ab/abcd");
        std::fs::create_dir_all(&nested).unwrap();
        let files = [dir.path().join("top"), nested.join("data")];
        for file in &files {
            std::fs::write(file, vec![7u8; 4 << 20]).unwrap();
            std::fs::File::open(file).unwrap().sync_all().unwrap();
            std::fs::read(file).unwrap();
            assert_eq!(
                resident_bytes(file),
                4 << 20,
                "{} is cached",
                file.display()
            );
        }
        drop_cached_tree(dir.path()).unwrap();
        for file in &files {
            assert_eq!(resident_bytes(file), 0, "{} left the cache", file.display());
        }
    }

    fn point(stored_gib: f64, put_seconds: f64) -> GrowthPoint {
        GrowthPoint {
            stored_gib,
            stored_blobs: 0,
            put_seconds,
            put_ratio_to_floor: put_seconds,
            daemon_cpu_seconds: 0.0,
            settled_after_s: None,
            sha256_seconds_beside: None,
        }
    }

    #[test]
    fn the_growth_plot_has_one_point_per_put_and_the_floor() {
        let points: Vec<GrowthPoint> = (0..8)
            .map(|i| point(f64::from(i), 2.0 + 0.1 * f64::from(i)))
            .collect();
        let svg = growth_svg(&points, 1.0, "file");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("already holds (file://)"));
        // One per put and one in the legend.
        assert_eq!(svg.matches("<circle").count(), 9);
        assert!(svg.contains(">the put</text>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("floor: max(SHA-256, write+fsync) 1.00 s"));
        // A series from before SHA-256 was timed beside each put has no line for it.
        assert!(!svg.contains("timed beside it"));
    }

    /// A series that measured the machine beside each put draws it as a second line, named in
    /// the legend; one that did not draws the put alone (the test above).
    #[test]
    fn the_growth_plot_draws_sha256_beside_each_put_where_it_was_measured() {
        let points: Vec<GrowthPoint> = (0..4)
            .map(|i| GrowthPoint {
                sha256_seconds_beside: Some(0.9 + 0.5 * f64::from(i)),
                ..point(f64::from(i), 1.0)
            })
            .collect();
        let svg = growth_svg(&points, 1.0, "rocksdb");
        assert_eq!(svg.matches("<polyline").count(), 2);
        // Four squares on the line and one in the legend.
        assert_eq!(svg.matches("<rect x=").count(), 5);
        assert!(svg.contains("openssl SHA-256 of the same bytes, timed beside it"));
        // The scale reaches the slowest SHA-256 (2.4 s), not only the puts (1.0 s): the top
        // label is 2.4 × 1.15.
        assert!(svg.contains(">2.8 s</text>"), "{svg}");
    }

    #[test]
    fn the_summary_beside_takes_the_machine_out_of_each_put() {
        // The puts slow from 1.0 s to 1.5 s while SHA-256 beside them slows from 0.8 s to
        // 1.25 s: per put against its SHA-256, 1.25× fresh and 1.2–1.27× in the last quarter.
        let timed = [
            (1.0, 0.8),
            (1.1, 0.9),
            (1.2, 1.0),
            (1.3, 1.0),
            (1.5, 1.25),
            (1.4, 1.1),
        ];
        let points: Vec<GrowthPoint> = timed
            .iter()
            .enumerate()
            .map(|(i, (put, sha))| GrowthPoint {
                sha256_seconds_beside: Some(*sha),
                ..point(i as f64, *put)
            })
            .collect();
        let (fresh, grown) = growth_summary_beside(&points).expect("a summary");
        assert!((fresh - 1.25).abs() < 1e-9, "{fresh}");
        // The last quarter of six puts is the last two: 1.2× and 1.27×; the median of two is
        // the larger, as the raw summary takes it.
        assert!((grown - 1.4 / 1.1).abs() < 1e-9, "{grown}");
        // A report from before the measurement has none, and neither has a series with one
        // put in its last quarter unmeasured.
        let older: Vec<GrowthPoint> = (0..6).map(|i| point(f64::from(i), 1.0)).collect();
        assert!(growth_summary_beside(&older).is_none());
        let mut gap = points;
        gap.last_mut().unwrap().sha256_seconds_beside = None;
        assert!(growth_summary_beside(&gap).is_none());
        assert!(growth_summary_beside(&[]).is_none());
    }

    #[test]
    fn the_summary_compares_the_first_put_with_the_median_of_the_last_quarter() {
        let points: Vec<GrowthPoint> = [2.0, 2.2, 2.1, 2.3, 9.0, 3.0, 3.2, 3.1]
            .iter()
            .enumerate()
            .map(|(i, s)| point(i as f64, *s))
            .collect();
        let (fresh, grown, at) = growth_summary(&points).expect("a summary");
        let (fresh, grown) = (fresh.put_seconds, grown.put_seconds);
        assert_eq!(fresh, 2.0);
        // The last quarter of eight puts is the last two: 3.2 and 3.1; the median of two is
        // the larger, so one slow put never hides behind a fast one.
        assert_eq!(grown, 3.2);
        assert_eq!(at, 6.0);
        assert!(growth_summary(&[]).is_none());
    }
}
