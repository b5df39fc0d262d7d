//! `custodian-bench scan`: the built-in scanner's throughput on a mixed data pack, as a ratio to
//! `openssl dgst -sha256` on the same file, and the prompt scanner's precision and recall on the
//! labelled corpus.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::measure::run_timed;
use custodian_testkit::RemoveOnDrop;

/// Options of `custodian-bench scan`.
#[derive(Args)]
pub struct ScanBenchArgs {
    /// Size of the mixed data pack in MiB
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Where to write it (default: the system temp dir)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Repetitions per measurement; the fastest is reported
    #[arg(long, default_value_t = 2)]
    runs: u32,
    /// The labelled prompt corpus to score (JSON Lines; see testdata/prompt-corpus)
    #[arg(long, value_name = "FILE")]
    corpus: Option<PathBuf>,
    /// Print JSON instead of tables
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Deserialize)]
pub struct Row {
    pub content: String,
    pub bytes: u64,
    pub openssl_sha256_seconds: f64,
    pub scan_seconds: f64,
    pub scan_gib_per_s: f64,
    pub ratio_to_openssl: f64,
    pub bytes_scanned: u64,
    pub files: u64,
    pub verdict: String,
}

/// A xorshift stream: incompressible bytes, the same every run.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let bytes = self.0.to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }
}

fn text_block(kind: &str, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 256);
    let mut i = 0u64;
    while out.len() < size {
        let line = match kind {
            "jsonl" => format!(
                "{{\"id\": {i}, \"prompt\": \"Customer {i} writes: my parcel {} has not arrived, please check the tracking page\", \"label\": \"shipping\", \"confidence\": 0.{}}}\n",
                i * 7919 % 100_000,
                i % 97
            ),
            _ => format!(
                "{i},{},{},\"maze row {} with ghosts and pellets\",{}\n",
                i % 31,
                i * 13 % 1000,
                i % 28,
                i % 2
            ),
        };
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(size);
    out
}

/// Writes a tar data pack of about `size` bytes: JSON Lines and CSV text, incompressible binary,
/// a Parquet-framed member, a gzip-compressed JSON Lines member and a small zip.
fn write_mixed(path: &Path, size: u64) -> anyhow::Result<()> {
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut tar = tar::Builder::new(file);
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    let piece = 8usize << 20;
    let add = |tar: &mut tar::Builder<_>, name: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes)?;
        Ok(())
    };
    let jsonl = text_block("jsonl", piece);
    let csv = text_block("csv", piece);
    let mut binary = vec![0u8; piece];
    let mut written = 0u64;
    let mut n = 0;
    while written < size {
        // 40% JSON Lines, 20% CSV, 30% binary, 5% Parquet-framed, 5% gzip.
        let (name, bytes): (String, Vec<u8>) = match n % 20 {
            0..=7 => (format!("train/part-{n:04}.jsonl"), jsonl.clone()),
            8..=11 => (format!("tables/part-{n:04}.csv"), csv.clone()),
            12..=17 => {
                noise.fill(&mut binary);
                (format!("blobs/part-{n:04}.bin"), binary.clone())
            }
            18 => {
                noise.fill(&mut binary);
                let mut p = b"PAR1".to_vec();
                p.extend_from_slice(&binary[4..]);
                (format!("columns/part-{n:04}.parquet"), p)
            }
            _ => {
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                // Several pieces of text compress into about one piece.
                for _ in 0..6 {
                    gz.write_all(&jsonl)?;
                }
                (format!("archive/part-{n:04}.jsonl.gz"), gz.finish()?)
            }
        };
        add(&mut tar, &name, &bytes)?;
        written += bytes.len() as u64 + 512;
        n += 1;
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

fn write_text(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let block = text_block("jsonl", 8 << 20);
    let mut written = 0u64;
    while written < size {
        let n = (size - written).min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        written += n as u64;
    }
    file.flush()?;
    Ok(())
}

fn best<T>(
    runs: u32,
    mut f: impl FnMut() -> anyhow::Result<(Duration, T)>,
) -> anyhow::Result<(Duration, T)> {
    let mut best: Option<(Duration, T)> = None;
    for _ in 0..runs.max(1) {
        let (took, value) = f()?;
        if best.as_ref().is_none_or(|(b, _)| took < *b) {
            best = Some((took, value));
        }
    }
    best.context("no run")
}

fn measure(path: &Path, content: &str, runs: u32) -> anyhow::Result<Row> {
    let bytes = std::fs::metadata(path)?.len();
    let (openssl, ()) = best(runs, || {
        Ok((
            run_timed(Command::new("openssl").args(["dgst", "-sha256"]).arg(path))
                .context("running `openssl dgst -sha256` (is openssl installed?)")?,
            (),
        ))
    })?;
    let limits = custodian_scan::Limits::default();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("data")
        .to_string();
    let (took, report) = best(runs, || {
        let mut file = std::fs::File::open(path)?;
        let start = Instant::now();
        let report = custodian_scan::package::scan_blob(&name, &mut file, &limits);
        Ok((start.elapsed(), report))
    })?;
    Ok(Row {
        content: content.into(),
        bytes,
        openssl_sha256_seconds: openssl.as_secs_f64(),
        scan_seconds: took.as_secs_f64(),
        scan_gib_per_s: bytes as f64 / (1u64 << 30) as f64 / took.as_secs_f64(),
        ratio_to_openssl: took.as_secs_f64() / openssl.as_secs_f64(),
        bytes_scanned: report.bytes,
        files: report.files,
        verdict: report.verdict().as_str().into(),
    })
}

/// Runs the scanner benchmark.
pub fn run(args: ScanBenchArgs) -> anyhow::Result<ExitCode> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = base.join(format!("custodian-bench-scan-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _cleanup = RemoveOnDrop(work.clone());
    let size = args.size_mib << 20;
    let mixed = work.join("mixed-data-pack.tar");
    let text = work.join("text-data-pack.jsonl");
    eprintln!(
        "writing {} MiB test data packs to {}",
        args.size_mib,
        work.display()
    );
    write_mixed(&mixed, size)?;
    write_text(&text, size)?;
    let rows = vec![
        measure(
            &mixed,
            "mixed tar (40% JSONL, 20% CSV, 30% binary, 5% Parquet, 5% gzip JSONL)",
            args.runs,
        )?,
        measure(&text, "JSON Lines text", args.runs)?,
    ];
    let corpus = match &args.corpus {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let samples = custodian_scan::corpus::parse(&text).map_err(anyhow::Error::msg)?;
            Some(custodian_scan::corpus::evaluate(&samples))
        }
        None => None,
    };
    if args.json {
        let scores: Vec<serde_json::Value> = corpus
            .iter()
            .flat_map(|e| e.scores.iter())
            .map(|s| {
                serde_json::json!({
                    "family": s.family, "samples": s.samples, "found": s.found,
                    "recall": s.recall(), "false_alarms": s.false_alarms, "precision": s.precision(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "scanner": custodian_scan::SCANNER, "throughput": rows, "corpus": scores,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("scanner {} (one core)\n", custodian_scan::SCANNER);
    println!(
        "| content | size | openssl sha256 | scan | scan GiB/s | scan ÷ openssl | bytes scanned | files | verdict |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} MiB | {:.3} s | {:.3} s | {:.2} | {:.2}× | {} MiB | {} | {} |",
            r.content,
            r.bytes >> 20,
            r.openssl_sha256_seconds,
            r.scan_seconds,
            r.scan_gib_per_s,
            r.ratio_to_openssl,
            r.bytes_scanned >> 20,
            r.files,
            r.verdict
        );
    }
    if let Some(e) = corpus {
        println!(
            "\nprompt scanner on the labelled corpus\n\n{}",
            e.markdown()
        );
    }
    Ok(ExitCode::SUCCESS)
}
