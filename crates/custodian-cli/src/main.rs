//! `custodian`: the Custodian daemon and its command-line client.

mod bench;
mod bench_ledger;
mod blob;
mod log;
mod serve;

use clap::{Parser, Subcommand};

/// The address clients use unless told otherwise; `serve` listens there by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7311";

#[derive(Parser)]
#[command(
    name = "custodian",
    version,
    about = "Custody and provenance for LLM Behavior Packages",
    long_about = "Custodian keeps custody of blobs (package files, data packs) by digest, verified \
on write and never served corrupted.\n\n\
Run the daemon with `custodian serve`. `blob` and `log` commands are clients of a running \
daemon (see --server), except `log verify-receipt` and `audit`, which work offline from a file \
and the log's verifier key.\n\n\
Digests are written sha256:<64 hex> (the canonical address) or blake3:<64 hex>; every blob \
can be fetched by either.\n\n\
Provenance events go into an append-only RFC 6962 Merkle log with signed C2SP checkpoints. \
Auditors verify receipts (`custodian log verify-receipt`) and whole exports (`custodian audit`) \
offline, with nothing but the log's verifier key.",
    after_help = "Examples:\n  \
custodian serve                                   # embedded RocksDB in ./.custodian\n  \
custodian blob put dataset.parquet prompts.yaml   # prints each file's digests\n  \
custodian blob get sha256:9f86d0... -o dataset.parquet\n  \
custodian blob missing sha256:9f86d0... blake3:4878ca...\n  \
custodian log key > log.vkey                      # the key auditors need\n  \
custodian log receipt 42 -o entry42.receipt.json\n  \
custodian log verify-receipt entry42.receipt.json --key log.vkey   # offline\n  \
custodian log checkpoint > saved.checkpoint       # later: did the log only grow?\n  \
custodian log consistency --from saved.checkpoint --key log.vkey --update\n  \
custodian log export audit-dir && custodian audit audit-dir --key log.vkey   # offline",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Custodian daemon (gRPC content store, provenance ledger, health, reflection)
    #[command(long_about = serve::LONG_ABOUT)]
    Serve(serve::ServeArgs),
    /// Store, fetch and inspect blobs in a running daemon
    #[command(subcommand)]
    Blob(blob::BlobCommand),
    /// The provenance ledger: keys, checkpoints, entries, appends, receipts, consistency,
    /// exports (and offline receipt verification)
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Audit an exported ledger offline: recompute every hash and root, check every signature
    #[command(
        long_about = "Audit a directory written by `custodian log export`, offline, \
with the log's verifier key obtained independently. Recomputes every stored tree hash and root \
from the entries, checks every checkpoint's signature and that its root matches (so each is \
consistent with all before it), checks the prev hash chain and that integration times never go \
back. Exits 1 naming the first index where anything diverges."
    )]
    Audit(log::AuditArgs),
    /// Measure Custodian against this machine's own limits
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Blob(command) => blob::run(command).await,
            Command::Log(command) => log::run(command).await,
            Command::Audit(args) => tokio::task::spawn_blocking(move || log::audit(args)).await?,
            Command::Bench(command) => {
                tokio::task::spawn_blocking(move || bench::run(command)).await?
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
