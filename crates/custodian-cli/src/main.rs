//! `custodian`: the Custodian daemon and its command-line client.

mod bench;
mod blob;
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
Run the daemon with `custodian serve`; every other command is a client of a running daemon \
(see --server).\n\n\
Digests are written sha256:<64 hex> (the canonical address) or blake3:<64 hex>; every blob \
can be fetched by either.",
    after_help = "Examples:\n  \
custodian serve                                   # embedded RocksDB in ./.custodian\n  \
custodian blob put dataset.parquet prompts.yaml   # prints each file's digests\n  \
custodian blob get sha256:9f86d0... -o dataset.parquet\n  \
custodian blob missing sha256:9f86d0... blake3:4878ca...",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Custodian daemon (gRPC content store, health, reflection)
    #[command(long_about = serve::LONG_ABOUT)]
    Serve(serve::ServeArgs),
    /// Store, fetch and inspect blobs in a running daemon
    #[command(subcommand)]
    Blob(blob::BlobCommand),
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
