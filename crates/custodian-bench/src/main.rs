//! `custodian-bench`: measures Custodian against this machine's own limits. Every scenario starts
//! its own daemons (the `custodian` binary built beside this one, or `CUSTODIAN_BIN`) on loopback
//! and prints its figures as ratios to what the machine itself can do: `openssl dgst -sha256` on
//! the same bytes, the disk's write+fsync time, raw RocksDB writes. docs/performance.md shows the
//! latest run of `custodian-bench all`.

mod all;
mod custody;
mod evidence;
mod gc;
mod ledger;
mod limits;
mod load;
mod measure;
mod oci;
mod rest;
mod scale;
mod scan;
mod small;
mod tlog;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "custodian-bench",
    version,
    about = "Measure Custodian against this machine's own limits",
    long_about = "Measure Custodian against this machine's own limits. Each scenario starts its \
own daemon on loopback (the `custodian` binary beside this one, or CUSTODIAN_BIN) and reports \
ratios to the machine's own limits: openssl dgst -sha256 on the same bytes, the disk's \
write+fsync time, raw RocksDB writes. `all` runs every scenario and writes the files \
docs/performance.md shows.",
    after_help = "Examples:\n  \
cargo build --release -p custodian-cli -p custodian-bench\n  \
custodian-bench all --write docs/bench          # every scenario, about 20 minutes\n  \
custodian-bench all --quick                     # a smoke run in a few minutes\n  \
custodian-bench custody --size-mib 256 --json   # one scenario, for a script"
)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

/// The scenarios.
#[derive(Subcommand)]
enum BenchCommand {
    /// Every scenario in one run, each against its limit: a table, JSON (--json) and, with
    /// --write DIR, the files docs/performance.md shows (including a latency-versus-concurrency
    /// plot)
    All(crate::all::AllArgs),
    /// This machine's limits: SHA-256 and BLAKE3 on one core, sequential write+fsync, fsync
    /// latency, raw RocksDB write rates
    Limits(crate::limits::LimitsArgs),
    /// Put and get one large blob through a real daemon, per backend, as a ratio to
    /// `openssl dgst -sha256` of the same file
    #[command(
        long_about = "Starts a daemon per backend on loopback, then times `custodian blob \
put FILE` and `custodian blob get DIGEST -o FILE` on one large file, and prints each as a ratio \
to `openssl dgst -sha256` on the same file in the same run (the floor: every byte must be hashed \
at least once). Also prints the daemon's peak resident memory (VmHWM)."
    )]
    Custody(custody::CustodyArgs),
    /// Durable ledger appends (1 to 1024 writers), proof latency at 1,000,000 entries, offline
    /// audit speed, with the disk's fsync latency for scale
    Ledger(crate::ledger::LedgerArgs),
    /// Attested runs per second (unary and batched, 1 and 32 clients) and offline verification
    /// of a badge bundle backed by 1,000 runs
    Evidence(crate::evidence::EvidenceArgs),
    /// The built-in scanner on a 1 GiB mixed data pack, as a ratio to `openssl dgst -sha256`
    /// of the same file, and the prompt scanner's precision and recall on a labelled corpus
    Scan(crate::scan::ScanBenchArgs),
    /// Many small blobs (10,000 × 4 KiB) through BatchPut and FindMissing over as many digests,
    /// per backend
    Small(crate::small::SmallArgs),
    /// Online garbage collection of 1,000,000 small blobs: blobs examined and deleted per
    /// second against the rate they were stored at, and put latency during the collection
    /// against put latency without it
    Gc(crate::gc::GcArgs),
    /// Past one machine: durable appends with 1 and 3 daemons on one PostgreSQL ledger beside
    /// the embedded RocksDB ledger and PostgreSQL's own synced insert, and 4 KiB BatchPut with
    /// 1 and 3 daemons on one bucket beside the bucket's own PUT rate
    Scale(crate::scale::ScaleArgs),
    /// A 1 GiB hosted data-pack upload over REST, ranged reads and a verified download
    Rest(crate::rest::RestArgs),
    /// The log as others see it: appends under a 2-of-3 witness quorum next to none and next to
    /// Tessera's POSIX log, full-tile reads next to a static file server, the tile monitor next
    /// to the offline audit
    Tlog(crate::tlog::TlogArgs),
    /// The OCI front end next to Debian's docker-registry (CNCF distribution 2.8) on the same
    /// disk: skopeo copies of an image with a 1 GiB layer in and out, and 1,000 small-blob HEADs
    Oci(crate::oci::OciArgs),
    /// 64 clients for 5 minutes on a mixed workload (puts, verified gets, attestations, proofs,
    /// REST downloads): p50/p99 per operation, errors, and whether the daemon's memory stayed
    /// flat. Exits 1 on any error or memory growth
    Load(crate::load::LoadArgs),
}

/// Runs a scenario.
fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Custody(args) => custody::custody(args),
        BenchCommand::Ledger(args) => crate::ledger::run(args),
        BenchCommand::Evidence(args) => crate::evidence::run(args),
        BenchCommand::Scan(args) => crate::scan::run(args),
        BenchCommand::Small(args) => crate::small::run(args),
        BenchCommand::Gc(args) => crate::gc::run(args),
        BenchCommand::Scale(args) => crate::scale::run(args),
        BenchCommand::Rest(args) => crate::rest::run(args),
        BenchCommand::Tlog(args) => crate::tlog::run(args),
        BenchCommand::Oci(args) => crate::oci::run(args),
        BenchCommand::Load(args) => crate::load::run(args),
        BenchCommand::Limits(args) => crate::limits::run(args),
        BenchCommand::All(args) => crate::all::run(args),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
