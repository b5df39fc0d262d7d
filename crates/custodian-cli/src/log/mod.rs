//! `custodian log ...` and `custodian audit`: the provenance ledger from the command line.
//! `verify-receipt` and `audit` are offline: they need a file and the log's verifier key, no
//! daemon and no network.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Subcommand;
use custodian_core::entry::Entry;
use custodian_proto::ledger::v1 as pb;
use custodian_proto::ledger::v1::ledger_client::LedgerClient;
use serde_json::json;

use crate::client::{ServerArg, status_error};
use custodian_client::Conn;

mod append;
mod audit;
mod codec;
mod consistency;
mod export;
mod mirror;
mod monitor;
mod receipt;
mod source;

use append::{append, append_lines};
pub use audit::{AuditArgs, audit};
use consistency::consistency;
pub use custodian_core::entry::cbor_to_json;
use export::export;
use receipt::verify_receipt;

/// The file forms of a receipt.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ReceiptFormat {
    /// `custodian.receipt.v1` JSON.
    Json,
    /// C2SP tlog-proof@v1 text.
    TlogProof,
}

/// Ledger commands.
#[derive(Subcommand)]
pub enum LogCommand {
    /// Print the log's verifier key (publish it: auditors verify everything with it)
    Key {
        /// Read the key from this data directory's log-key file instead of asking the daemon
        /// (works while the daemon is stopped)
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Print JSON (origin, verifier_key, and the size when asked of a daemon)
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print the latest signed checkpoint (C2SP tlog-checkpoint signed note), or the one at --size
    Checkpoint {
        /// The tree size of an earlier checkpoint
        #[arg(long)]
        size: Option<u64>,
        /// Print JSON (tree_size, root_hash hex, note)
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show one entry, decoded
    Entry {
        /// The entry's index
        index: u64,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Append an entry (needs the daemon's append token) and print its receipt
    #[command(
        long_about = "Append one entry to the ledger. The payload is JSON (integers, \
strings, booleans, null, arrays, objects; no fractions), stored as deterministic CBOR. Returns \
when the entry is durable and signed into a checkpoint, and prints the receipt (or writes it \
with -o). With --lines, appends one entry per line of a file or of standard input over one \
stream, and prints one receipt per line. With --compact, prints where each entry is instead of \
its receipt: the entry is as durable and as signed, and its receipt can be fetched later with \
`custodian log receipt INDEX -o FILE`."
    )]
    Append {
        /// Entry kind: a name of 1-64 ASCII letters and digits starting upper-case, e.g. AuditNote (the registry and evidence kinds are appended only by their services)
        #[arg(long)]
        kind: String,
        /// Payload as JSON, or @FILE to read it from a file
        #[arg(long, default_value = "{}", conflicts_with = "lines")]
        payload: String,
        /// Append one entry per line of FILE (- for standard input), each line a JSON payload,
        /// all over one stream (Ledger.AppendStream) in the order of the lines; each receipt (or
        /// with --compact each entry's place) is printed as one line of JSON. A line that is not
        /// a payload, or that the daemon refuses, is named on standard error with the reason, the
        /// lines after it are still appended, and the command exits 1 at the end
        #[arg(long, value_name = "FILE", conflicts_with = "output")]
        lines: Option<PathBuf>,
        /// Write the receipt (with --compact, the entry's place) to this file instead of
        /// standard output
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Print each entry's place instead of its receipt: one line of JSON with its log_index,
        /// leaf_hash (hex, RFC 6962) and checkpoint_size (the signed checkpoint of its batch).
        /// The daemon builds and sends no inclusion proof, which makes --lines faster
        #[arg(long)]
        compact: bool,
        /// The daemon's append token (or use an admin --token)
        #[arg(
            long = "append-token",
            env = "CUSTODIAN_APPEND_TOKEN",
            hide_env_values = true
        )]
        token: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Write the receipt of an entry (entry + inclusion proof + signed checkpoint) to a file
    Receipt {
        /// The entry's index
        index: u64,
        /// The receipt file to write (- for standard output)
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// `json` (custodian.receipt.v1) or `tlog-proof` (C2SP tlog-proof@v1, the entry in its
        /// `extra` line; conventionally saved as FILE.tlog-proof). verify-receipt reads both
        #[arg(long, value_enum, default_value_t = ReceiptFormat::Json)]
        format: ReceiptFormat,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Verify a receipt offline with the log's verifier key; exits 1 if it does not verify
    #[command(
        long_about = "Verify a receipt file offline (JSON, or C2SP tlog-proof as `log receipt --format tlog-proof` writes it): the checkpoint's Ed25519 signature \
by the given log key, the entry's deterministic encoding, and the inclusion proof from the \
entry's leaf hash to the checkpoint's root; with --witness-policy, also that the checkpoint \
carries the policy's quorum of witness cosignatures (C2SP tlog-cosignature). No daemon or \
network is used. Exits 0 if the receipt verifies, 1 (naming the part that failed) if not."
    )]
    VerifyReceipt {
        /// The receipt file
        file: PathBuf,
        /// The log's verifier key (NAME+ID+KEY), or a file containing it
        #[arg(long, value_name = "VKEY")]
        key: String,
        /// Also require the checkpoint to carry a quorum of witness cosignatures, as this
        /// policy file defines it (witness / group / quorum lines)
        #[arg(long, value_name = "FILE")]
        witness_policy: Option<PathBuf>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Check that the log only grew since a checkpoint you saved (both signatures and the
    /// consistency proof are verified here, not trusted from the daemon)
    #[command(
        long_about = "Check that the log only grew since a checkpoint you saved earlier \
(for example with `custodian log checkpoint > saved.checkpoint`). Verifies the saved checkpoint's \
signature, fetches the daemon's latest checkpoint and verifies its signature, then fetches the \
consistency proof between the two sizes and verifies it locally (RFC 9162 §2.1.4.2). Exits 1 if \
the log shrank, forked or rewrote history. With --update the saved file is replaced by the newer \
checkpoint once it is proven consistent, so running this periodically witnesses the log."
    )]
    Consistency {
        /// A signed checkpoint saved earlier
        #[arg(long = "from", value_name = "FILE")]
        from: PathBuf,
        /// The log's verifier key (NAME+ID+KEY), or a file containing it
        #[arg(long, value_name = "VKEY")]
        key: String,
        /// Replace FILE with the newer checkpoint once it is proven consistent
        #[arg(long)]
        update: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Follow a log through its tlog-tiles and prove each new checkpoint consistent with the
    /// last one accepted (run it from cron)
    #[command(
        long_about = "Check a log the way an independent monitor does, through its C2SP \
tlog-tiles only: a daemon's REST port (http://HOST:7312/log), or a mirror of the same files \
(file:///DIR), or the bucket `serve --tiles-to` writes (s3://BUCKET/PREFIX). Verifies the latest checkpoint's signature with the key, recomputes its root \
from the tiles, and proves it consistent with the checkpoint accepted on the previous run, kept \
in --state (RFC 9162 §2.1.4.2). The first run accepts the log as it is and saves it. Then \
every new entry is read from its entry bundle, its leaf hash checked against the tiles, and \
printed (--json: an `entries` array; bundles the log does not serve, such as those holding a \
private entry, are listed in `bundles_not_served`). With --witness-policy a checkpoint without \
the policy's quorum of witness cosignatures is refused. Exits 1 naming the sizes, or the first \
entry that does not match, if the log shrank, forked or rewrote history; the state is then left \
as it was."
    )]
    Monitor {
        /// The log's tile prefix: http(s)://HOST:PORT/log, file:///DIR, or the bucket `serve
        /// --tiles-to` writes (s3://BUCKET/PREFIX, credentials from AWS_* variables)
        #[arg(long, value_name = "URL")]
        log: String,
        /// Object store option KEY=VALUE for an s3:// --log, e.g.
        /// aws_endpoint=http://127.0.0.1:9000 (repeatable)
        #[arg(long = "log-option", value_name = "KEY=VALUE", value_parser = crate::args::parse_key_value)]
        log_options: Vec<(String, String)>,
        /// The log's verifier key (NAME+ID+KEY), or a file containing it
        #[arg(long, value_name = "VKEY")]
        key: String,
        /// The file that keeps the last checkpoint accepted (created on the first run)
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// Accept a new checkpoint only with a quorum of witness cosignatures (policy file)
        #[arg(long, value_name = "FILE")]
        witness_policy: Option<PathBuf>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Copy a log's tlog-tiles between a daemon, a bucket and a directory, checking everything
    #[command(
        long_about = "Copy a log's C2SP tlog-tiles and checkpoint from --from (a daemon's \
http://HOST:7312/log, a file:/// mirror or an s3:// bucket) to --to (file:/// or s3://). The \
level-0 tiles are read from the source and must hash to the root its checkpoint signs; every \
other tile is computed from them. A destination that already holds the log is extended only if \
its checkpoint is consistent with the source's; tiles are written create-only and the \
checkpoint last. Exits 1 naming what does not hold."
    )]
    Mirror {
        /// The source's tile prefix
        #[arg(long, value_name = "URL")]
        from: String,
        /// Object store option KEY=VALUE for an s3:// --from (repeatable)
        #[arg(long = "from-option", value_name = "KEY=VALUE", value_parser = crate::args::parse_key_value)]
        from_options: Vec<(String, String)>,
        /// The destination: file:///DIR or s3://BUCKET/PREFIX
        #[arg(long, value_name = "URL")]
        to: String,
        /// Object store option KEY=VALUE for --to (repeatable)
        #[arg(long = "to-option", value_name = "KEY=VALUE", value_parser = crate::args::parse_key_value)]
        to_options: Vec<(String, String)>,
        /// The log's verifier key (NAME+ID+KEY), or a file containing it
        #[arg(long, value_name = "VKEY")]
        key: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Export every entry, stored tree hash and checkpoint to a directory for offline audit
    Export {
        /// The directory to create (must not exist or be empty)
        dir: PathBuf,
        /// Read a stopped daemon's data directory directly instead of asking the daemon (also
        /// works when damage keeps the daemon from starting)
        #[arg(long, value_name = "DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// With --data-dir: read the ledger from this PostgreSQL database (the daemons'
        /// --ledger) instead of the data directory's RocksDB; the log key still comes from
        /// DATA_DIR
        #[arg(long, value_name = "URL", requires = "data_dir", env = "CUSTODIAN_LEDGER",
              value_parser = crate::args::parse_ledger_url)]
        ledger: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
}

pub(super) async fn connect(server: &ServerArg) -> anyhow::Result<LedgerClient<Conn>> {
    Ok(server.connect().await?.ledger())
}

/// Runs a `custodian log` command.
pub async fn run(command: LogCommand) -> anyhow::Result<ExitCode> {
    match command {
        LogCommand::Key {
            data_dir,
            json,
            server,
        } => {
            // (origin, verifier key, size when a daemon was asked)
            let (origin, key, size) = match data_dir {
                Some(dir) => {
                    let path = dir.join(custodian_server::KEY_FILE);
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading the log key {}", path.display()))?;
                    let verifier = custodian_core::note::SignerKey::parse(&text)
                        .with_context(|| format!("{} is not a log key", path.display()))?
                        .verifier();
                    (verifier.name().to_string(), verifier.to_string(), None)
                }
                None => {
                    let info = connect(&server)
                        .await?
                        .get_log_info(pb::GetLogInfoRequest {})
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    (info.origin, info.verifier_key, Some(info.size))
                }
            };
            if json {
                let mut view = json!({"origin": origin, "verifier_key": key});
                if let Some(size) = size {
                    view["size"] = json!(size);
                }
                println!("{view}");
            } else {
                println!("{key}");
            }
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Checkpoint { size, json, server } => {
            let checkpoint = connect(&server)
                .await?
                .get_checkpoint(pb::GetCheckpointRequest { tree_size: size })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    json!({
                        "tree_size": checkpoint.tree_size,
                        "root_hash": hex::encode(&checkpoint.root_hash),
                        "note": checkpoint.note,
                    })
                );
            } else {
                print!("{}", checkpoint.note);
            }
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Entry {
            index,
            json,
            server,
        } => {
            let entry = connect(&server)
                .await?
                .get_entry(pb::GetEntryRequest { index })
                .await
                .map_err(status_error)?
                .into_inner();
            let decoded = Entry::decode(&entry.encoded)
                .with_context(|| format!("the daemon sent an invalid entry {index}"))?;
            let view = entry_json(index, &decoded, &entry.leaf_hash);
            if json {
                println!("{view}");
            } else {
                println!("{}", serde_json::to_string_pretty(&view)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Append {
            kind,
            lines: Some(lines),
            compact,
            token,
            server,
            ..
        } => append_lines(kind, lines, compact, token, server).await,
        LogCommand::Append {
            kind,
            payload,
            lines: None,
            output,
            compact,
            token,
            server,
        } => append(kind, payload, output, compact, token, server).await,
        LogCommand::Receipt {
            index,
            output,
            format,
            server,
        } => {
            let receipt = connect(&server)
                .await?
                .get_receipt(pb::GetReceiptRequest {
                    leaf: Some(pb::get_receipt_request::Leaf::Index(index)),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let text = match format {
                ReceiptFormat::Json => receipt.json,
                ReceiptFormat::TlogProof => {
                    custodian_core::receipt::Receipt::from_json(&receipt.json)
                        .context("the daemon sent a receipt that does not parse")?
                        .to_tlog_proof()
                }
            };
            write_output(&output, text.as_bytes())?;
            if output != Path::new("-") {
                eprintln!("receipt of entry {index} written to {}", output.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::VerifyReceipt {
            file,
            key,
            witness_policy,
            json,
        } => verify_receipt(&file, &key, witness_policy.as_deref(), json),
        LogCommand::Mirror {
            from,
            from_options,
            to,
            to_options,
            key,
            json,
        } => {
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                mirror::mirror(
                    mirror::MirrorArgs {
                        from: &from,
                        from_options: &from_options,
                        to: &to,
                        to_options: &to_options,
                        key: &key,
                        json,
                    },
                    runtime,
                )
            })
            .await?
        }
        LogCommand::Monitor {
            log,
            log_options,
            key,
            state,
            witness_policy,
            json,
        } => {
            let runtime = tokio::runtime::Handle::current();
            let policy = crate::policy::load(witness_policy.as_deref())?;
            tokio::task::spawn_blocking(move || {
                monitor::monitor(
                    &log,
                    &log_options,
                    &key,
                    &state,
                    policy.as_ref(),
                    json,
                    runtime,
                )
            })
            .await?
        }
        LogCommand::Export {
            dir,
            data_dir,
            ledger,
            server,
        } => export(&dir, data_dir.as_deref(), ledger, &server).await,
        LogCommand::Consistency {
            from,
            key,
            update,
            json,
            server,
        } => consistency(&from, &key, update, json, &server).await,
    }
}

pub(super) fn write_output(output: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if output == Path::new("-") {
        std::io::stdout().write_all(bytes)?;
        return Ok(());
    }
    std::fs::write(output, bytes).with_context(|| format!("writing {}", output.display()))
}

pub(super) fn time_text(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub(super) fn entry_json(index: u64, entry: &Entry, leaf_hash: &[u8]) -> serde_json::Value {
    json!({
        "index": index,
        "kind": entry.kind.to_string(),
        "integrated_time": time_text(entry.time_ms),
        "integrated_time_ms": entry.time_ms,
        "leaf_hash": hex::encode(leaf_hash),
        "prev": entry.prev.to_hex(),
        "payload": cbor_to_json(&entry.payload),
    })
}

/// Reports a failed offline check: `{"ok": false, "error": …}` on standard output with --json,
/// otherwise `HEADLINE: reason` on standard error. The exit code is 1 either way.
pub(super) fn failure(json: bool, headline: &str, reason: impl std::fmt::Display) -> ExitCode {
    if json {
        println!("{}", json!({"ok": false, "error": reason.to_string()}));
    } else {
        eprintln!("{headline}: {reason}");
    }
    ExitCode::FAILURE
}

/// "1 entry", "2 entries".
pub(super) fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
