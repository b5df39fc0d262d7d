//! `custodian log ...` and `custodian audit`: the provenance ledger from the command line.
//! `verify-receipt` and `audit` are offline: they need a file and the log's verifier key, no
//! daemon and no network.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use custodian_core::audit::{AuditError, ExportWriter};
use custodian_core::checkpoint::Checkpoint;
use custodian_core::entry::{Entry, Value, encode_value};
use custodian_core::merkle::{Hash, stored_hash_count, verify_consistency};
use custodian_core::note::VerifierKey;
use custodian_core::receipt::Receipt;
use custodian_proto::ledger::v1 as pb;
use custodian_proto::ledger::v1::ledger_client::LedgerClient;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::client::{ServerArg, status_error};
use custodian_client::Conn;

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
with -o)."
    )]
    Append {
        /// Entry kind: a name of 1-64 ASCII letters and digits starting upper-case, e.g. AuditNote (the registry and evidence kinds are appended only by their services)
        #[arg(long)]
        kind: String,
        /// Payload as JSON, or @FILE to read it from a file
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Write the receipt to this file instead of standard output
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
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
        #[command(flatten)]
        server: ServerArg,
    },
    /// Verify a receipt offline with the log's verifier key; exits 1 if it does not verify
    #[command(
        long_about = "Verify a receipt file offline: the checkpoint's Ed25519 signature \
by the given log key, the entry's deterministic encoding, and the inclusion proof from the \
entry's leaf hash to the checkpoint's root. No daemon or network is used. Exits 0 if the \
receipt verifies, 1 (naming the part that failed) if not."
    )]
    VerifyReceipt {
        /// The receipt file
        file: PathBuf,
        /// The log's verifier key (NAME+ID+KEY), or a file containing it
        #[arg(long, value_name = "VKEY")]
        key: String,
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
    /// Export every entry, stored tree hash and checkpoint to a directory for offline audit
    Export {
        /// The directory to create (must not exist or be empty)
        dir: PathBuf,
        /// Read a stopped daemon's data directory directly instead of asking the daemon (also
        /// works when damage keeps the daemon from starting)
        #[arg(long, value_name = "DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArg,
    },
}

/// Options of `custodian audit`.
#[derive(Args)]
pub struct AuditArgs {
    /// A directory written by `custodian log export`
    dir: PathBuf,
    /// The log's verifier key (NAME+ID+KEY), or a file containing it
    #[arg(long, value_name = "VKEY")]
    key: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

async fn connect(server: &ServerArg) -> anyhow::Result<LedgerClient<Conn>> {
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
            payload,
            output,
            token,
            server,
        } => append(kind, payload, output, token, server).await,
        LogCommand::Receipt {
            index,
            output,
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
            write_output(&output, receipt.json.as_bytes())?;
            if output != Path::new("-") {
                eprintln!("receipt of entry {index} written to {}", output.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::VerifyReceipt { file, key, json } => verify_receipt(&file, &key, json),
        LogCommand::Export {
            dir,
            data_dir,
            server,
        } => export(&dir, data_dir.as_deref(), &server).await,
        LogCommand::Consistency {
            from,
            key,
            update,
            json,
            server,
        } => consistency(&from, &key, update, json, &server).await,
    }
}

fn write_output(output: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if output == Path::new("-") {
        std::io::stdout().write_all(bytes)?;
        return Ok(());
    }
    std::fs::write(output, bytes).with_context(|| format!("writing {}", output.display()))
}

fn parse_payload(text: &str) -> anyhow::Result<Value> {
    let text = match text.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading payload file {path}"))?
        }
        None => text.to_string(),
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).context("--payload is not valid JSON")?;
    json_to_cbor(json, "payload")
}

/// Converts JSON to CBOR; fractions are refused (entries hold no floats).
fn json_to_cbor(json: serde_json::Value, path: &str) -> anyhow::Result<Value> {
    Ok(match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Integer(i.into())
            } else if let Some(u) = n.as_u64() {
                Value::Integer(u.into())
            } else {
                bail!(
                    "{path}: {n} is not an integer; entries hold no fractions, write it as a string"
                )
            }
        }
        serde_json::Value::String(s) => Value::Text(s),
        serde_json::Value::Array(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| json_to_cbor(v, &format!("{path}[{i}]")))
                .collect::<anyhow::Result<_>>()?,
        ),
        serde_json::Value::Object(map) => Value::Map(
            map.into_iter()
                .map(|(k, v)| {
                    let value = json_to_cbor(v, &format!("{path}.{k}"))?;
                    Ok((Value::Text(k), value))
                })
                .collect::<anyhow::Result<_>>()?,
        ),
    })
}

/// Renders CBOR as JSON for people and scripts: byte strings become lower-case hex.
pub fn cbor_to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => json!(b),
        Value::Integer(i) => {
            let i = i128::from(*i);
            if let Ok(v) = i64::try_from(i) {
                json!(v)
            } else if let Ok(v) = u64::try_from(i) {
                json!(v)
            } else {
                json!(i.to_string())
            }
        }
        Value::Text(s) => json!(s),
        Value::Bytes(b) => json!(hex::encode(b)),
        Value::Float(f) => json!(f),
        Value::Array(items) => serde_json::Value::Array(items.iter().map(cbor_to_json).collect()),
        Value::Map(pairs) => {
            let mut map = serde_json::Map::new();
            for (k, v) in pairs {
                let key = match k {
                    Value::Text(s) => s.clone(),
                    other => cbor_to_json(other).to_string(),
                };
                map.insert(key, cbor_to_json(v));
            }
            serde_json::Value::Object(map)
        }
        Value::Tag(_, inner) => cbor_to_json(inner),
        _ => serde_json::Value::Null,
    }
}

fn time_text(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn entry_json(index: u64, entry: &Entry, leaf_hash: &[u8]) -> serde_json::Value {
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

async fn append(
    kind: String,
    payload: String,
    output: Option<PathBuf>,
    token: Option<String>,
    server: ServerArg,
) -> anyhow::Result<ExitCode> {
    let payload = parse_payload(&payload)?;
    let mut request = tonic::Request::new(pb::AppendRequest {
        kind,
        payload_cbor: encode_value(&payload).into(),
    });
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .context("the append token contains characters not allowed in gRPC metadata")?;
        request.metadata_mut().insert("authorization", value);
    }
    let response = connect(&server)
        .await?
        .append(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let receipt = response
        .receipt
        .context("the daemon sent no receipt for the append")?;
    match output {
        Some(path) => {
            write_output(&path, receipt.json.as_bytes())?;
            eprintln!(
                "appended entry {}; receipt written to {}",
                receipt.log_index,
                path.display()
            );
        }
        None => print!("{}", receipt.json),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a verifier key given inline or as a file.
fn verifier_key(text: &str) -> anyhow::Result<VerifierKey> {
    let path = Path::new(text);
    let key = if !text.contains('+') && path.exists() {
        std::fs::read_to_string(path).with_context(|| format!("reading key file {text}"))?
    } else {
        text.to_string()
    };
    Ok(VerifierKey::parse(key.trim())?)
}

fn verify_receipt(file: &Path, key: &str, json: bool) -> anyhow::Result<ExitCode> {
    let verifier = verifier_key(key)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let result = Receipt::from_json(&text).and_then(|r| r.verify(&verifier));
    match result {
        Ok(verified) => {
            if json {
                let mut view = entry_json(
                    verified.index,
                    &verified.entry,
                    verified.leaf_hash.as_bytes(),
                );
                view["ok"] = json!(true);
                view["origin"] = json!(verified.checkpoint.origin);
                view["tree_size"] = json!(verified.checkpoint.size);
                view["root_hash"] = json!(verified.checkpoint.root.to_hex());
                println!("{view}");
            } else {
                println!("receipt verifies: entry {} is in the log", verified.index);
                println!(
                    "  log         {} (key id {:08x})",
                    verifier.name(),
                    verifier.id()
                );
                println!(
                    "  entry       {} {} integrated {}",
                    verified.index,
                    verified.entry.kind,
                    time_text(verified.entry.time_ms)
                );
                println!("  leaf hash   {}", verified.leaf_hash);
                println!(
                    "  checkpoint  size {} root {}",
                    verified.checkpoint.size, verified.checkpoint.root
                );
                println!("  payload     {}", cbor_to_json(&verified.entry.payload));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(failure(json, "receipt does NOT verify", err)),
    }
}

async fn consistency(
    from: &Path,
    key: &str,
    update: bool,
    json: bool,
    server: &ServerArg,
) -> anyhow::Result<ExitCode> {
    let verifier = verifier_key(key)?;
    let saved = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    let old = Checkpoint::open(&saved, &verifier)
        .with_context(|| format!("the saved checkpoint {} does not verify", from.display()))?;
    let mut client = connect(server).await?;
    let latest = client
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: None })
        .await
        .map_err(status_error)?
        .into_inner();
    let new = Checkpoint::open(latest.note.as_bytes(), &verifier)
        .context("the daemon's latest checkpoint does not verify with this key")?;
    let outcome: Result<Vec<Hash>, String> = if new.size < old.size {
        Err(format!(
            "the log shrank: the saved checkpoint has size {}, the latest {}",
            old.size, new.size
        ))
    } else {
        let proof = client
            .get_consistency_proof(pb::GetConsistencyProofRequest {
                old_size: old.size,
                new_size: Some(new.size),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        let hashes = proof
            .hashes
            .iter()
            .map(|h| Hash::from_slice(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string());
        hashes.and_then(|hashes| {
            verify_consistency(old.size, new.size, &hashes, &old.root, &new.root)
                .map(|()| hashes)
                .map_err(|e| format!("consistency proof {} -> {}: {e}", old.size, new.size))
        })
    };
    match outcome {
        Ok(_) => {
            if update && new.size > old.size {
                let tmp = from.with_extension("tmp");
                std::fs::write(&tmp, latest.note.as_bytes())?;
                std::fs::rename(&tmp, from)?;
            }
            if json {
                println!(
                    "{}",
                    json!({"ok": true, "origin": new.origin, "old_size": old.size, "new_size": new.size,
                           "new_root_hash": new.root.to_hex(), "updated": update && new.size > old.size})
                );
            } else {
                println!(
                    "consistent: the log {} grew from {} to {} entries without changing any of the first {}",
                    new.origin, old.size, new.size, old.size
                );
                if update && new.size > old.size {
                    println!(
                        "  {} now holds the checkpoint of size {}",
                        from.display(),
                        new.size
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(reason) => Ok(failure(json, "NOT consistent", reason)),
    }
}

/// Reports a failed offline check: `{"ok": false, "error": …}` on standard output with --json,
/// otherwise `HEADLINE: reason` on standard error. The exit code is 1 either way.
fn failure(json: bool, headline: &str, reason: impl std::fmt::Display) -> ExitCode {
    if json {
        println!("{}", json!({"ok": false, "error": reason.to_string()}));
    } else {
        eprintln!("{headline}: {reason}");
    }
    ExitCode::FAILURE
}

/// "1 entry", "2 entries".
fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn counter(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn manifest(
    origin: &str,
    verifier_key: &str,
    size: u64,
    root: &[u8],
    checkpoints: u64,
) -> serde_json::Value {
    json!({
        "origin": origin,
        "verifier_key": verifier_key,
        "tree_size": size,
        "root_hash": hex::encode(root),
        "checkpoints": checkpoints,
        "note": "Informational. Audit with a verifier key obtained independently: custodian audit DIR --key VKEY",
    })
}

async fn export(
    dir: &Path,
    data_dir: Option<&Path>,
    server: &ServerArg,
) -> anyhow::Result<ExitCode> {
    if let Some(data_dir) = data_dir {
        let (dir, data_dir) = (dir.to_path_buf(), data_dir.to_path_buf());
        return tokio::task::spawn_blocking(move || export_data_dir(&dir, &data_dir)).await?;
    }
    let mut client = connect(server).await?;
    let info = client
        .get_log_info(pb::GetLogInfoRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    // Everything is exported up to one signed checkpoint, so the export is self-consistent even
    // while the log grows.
    let latest = client
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: None })
        .await
        .map_err(status_error)?
        .into_inner();
    let size = latest.tree_size;
    let mut out = ExportWriter::create(dir)?;

    let mut stream = client
        .list_checkpoints(pb::ListCheckpointsRequest { from_size: 0 })
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(checkpoint) = stream.next().await {
        let checkpoint = checkpoint.map_err(status_error)?;
        if checkpoint.tree_size > size {
            break;
        }
        out.checkpoint(checkpoint.tree_size, checkpoint.note.as_bytes())?;
    }

    let bar = counter(size, "entries");
    let mut stream = client
        .get_entries(pb::GetEntriesRequest {
            start: 0,
            end: Some(size),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(entry) = stream.next().await {
        let entry = entry.map_err(status_error)?;
        if entry.index != out.entry_count {
            bail!(
                "the daemon sent entry {} where {} was expected",
                entry.index,
                out.entry_count
            );
        }
        out.entry(&entry.encoded)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if out.entry_count != size {
        bail!(
            "the daemon sent {} entries, expected {size}",
            out.entry_count
        );
    }

    let total = stored_hash_count(size);
    let mut stream = client
        .get_tree_hashes(pb::GetTreeHashesRequest {
            start: 0,
            end: total,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(chunk) = stream.next().await {
        out.hashes(&chunk.map_err(status_error)?.hashes)?;
    }
    if out.hash_count != total {
        bail!(
            "the daemon sent {} tree hashes, expected {total}",
            out.hash_count
        );
    }
    finish_export(
        out,
        manifest(&info.origin, &info.verifier_key, size, &latest.root_hash, 0),
        dir,
    )
}

fn finish_export(
    out: ExportWriter,
    mut manifest: serde_json::Value,
    dir: &Path,
) -> anyhow::Result<ExitCode> {
    let (entries, hashes, checkpoints) = (out.entry_count, out.hash_count, out.checkpoint_count);
    manifest["checkpoints"] = json!(checkpoints);
    out.finish(&manifest)?;
    println!(
        "exported {entries} entries, {hashes} tree hashes and {checkpoints} checkpoints to {}",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Exports straight from a stopped daemon's data directory, reading RocksDB as it is, without the
/// daemon's start-up checks: damage that keeps the daemon from starting still reaches the
/// auditor, who then names the index.
fn export_data_dir(dir: &Path, data_dir: &Path) -> anyhow::Result<ExitCode> {
    use custodian_storage::ledger::LedgerBackend as _;
    let path = data_dir.join("ledger");
    if !path.is_dir() {
        bail!(
            "{} has no ledger (no {} directory)",
            data_dir.display(),
            path.display()
        );
    }
    let backend = custodian_rocksdb::RocksLedger::open(&path).with_context(|| {
        format!(
            "opening {} (stop the daemon first, or export over gRPC without --data-dir)",
            path.display()
        )
    })?;
    let (size, latest) = backend
        .latest_checkpoint()?
        .context("the ledger has no checkpoint")?;
    let latest = custodian_core::note::Note::parse(&latest)
        .ok()
        .and_then(|note| Checkpoint::parse(&note.text).ok());
    let key = std::fs::read_to_string(data_dir.join(custodian_server::KEY_FILE))
        .ok()
        .and_then(|text| custodian_core::note::SignerKey::parse(&text).ok())
        .map(|key| key.verifier().to_string())
        .unwrap_or_default();
    let mut out = ExportWriter::create(dir)?;
    let mut from = 0;
    loop {
        let chunk = backend.checkpoints(from, 4096)?;
        let Some(&(last, _)) = chunk.last() else {
            break;
        };
        for (cp_size, note) in chunk.iter().filter(|(s, _)| *s <= size) {
            out.checkpoint(*cp_size, note)?;
        }
        from = last + 1;
    }
    let bar = counter(size, "entries");
    out.copy_log(
        size,
        |start, end| anyhow::Ok(backend.entries(start, end)?),
        |start, end| Ok(backend.hash_range(start, end)?),
        |n| bar.inc(n),
    )?;
    bar.finish_and_clear();
    let (origin, root) = latest.map_or((String::new(), Vec::new()), |c| {
        (c.origin, c.root.0.to_vec())
    });
    finish_export(out, manifest(&origin, &key, size, &root, 0), dir)
}

/// Runs `custodian audit`.
pub fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let verifier = verifier_key(&args.key)?;
    let started = std::time::Instant::now();
    match run_audit(&args.dir, verifier) {
        Ok(report) => {
            let seconds = started.elapsed().as_secs_f64();
            if args.json {
                let mut view = serde_json::to_value(&report)?;
                view["ok"] = json!(true);
                view["seconds"] = json!(seconds);
                println!("{view}");
            } else {
                println!(
                    "audit passed: {}, {} and {} of log {} agree",
                    counted(report.entries, "entry", "entries"),
                    counted(report.checkpoints, "checkpoint", "checkpoints"),
                    counted(report.tree_hashes, "tree hash", "tree hashes"),
                    report.origin
                );
                println!("  root {}", report.root);
                println!(
                    "  every checkpoint's signature verifies, its root equals the one recomputed from the entries, and the prev chain is intact ({:.0} entries/s)",
                    report.entries as f64 / seconds.max(1e-9)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(failure(args.json, "audit FAILED", err)),
    }
}

/// Audits an export directory, with progress on a terminal.
fn run_audit(
    dir: &Path,
    verifier: VerifierKey,
) -> Result<custodian_core::audit::AuditReport, AuditError> {
    let entries_len = std::fs::metadata(dir.join("entries")).map_or(0, |m| m.len());
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(entries_len);
        bar.set_style(
            ProgressStyle::with_template("auditing [{bar:30}] {bytes}/{total_bytes} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let report = custodian_core::audit::audit_dir(dir, verifier, |n| bar.inc(n));
    bar.finish_and_clear();
    report
}
