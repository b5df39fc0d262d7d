//! `custodian log export`: every entry, stored tree hash and checkpoint into a directory for
//! offline audit, over gRPC or straight from a stopped daemon's data directory.

use std::io::IsTerminal as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use custodian_core::audit::ExportWriter;
use custodian_core::checkpoint::Checkpoint;
use custodian_core::merkle::stored_hash_count;
use custodian_proto::ledger::v1 as pb;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::connect;
use crate::client::{ServerArg, status_error};

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

pub(super) async fn export(
    dir: &Path,
    data_dir: Option<&Path>,
    ledger: Option<String>,
    server: &ServerArg,
) -> anyhow::Result<ExitCode> {
    if let Some(data_dir) = data_dir {
        let (dir, data_dir) = (dir.to_path_buf(), data_dir.to_path_buf());
        return tokio::task::spawn_blocking(move || export_data_dir(&dir, &data_dir, ledger))
            .await?;
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
        // The newest is written as published: with a witness policy it carries cosignatures.
        let note = if checkpoint.tree_size == size {
            &latest.note
        } else {
            &checkpoint.note
        };
        out.checkpoint(checkpoint.tree_size, note.as_bytes())?;
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
/// auditor, who then names the index. With `ledger`, the entries, hashes and checkpoints come
/// from that PostgreSQL database instead (the daemons may keep running).
fn export_data_dir(
    dir: &Path,
    data_dir: &Path,
    ledger: Option<String>,
) -> anyhow::Result<ExitCode> {
    let backend: Box<dyn custodian_storage::ledger::LedgerBackend> = match ledger {
        Some(url) => Box::new(custodian_postgres::PgLedger::open(&url)?),
        None => {
            let path = data_dir.join("ledger");
            if !path.is_dir() {
                bail!(
                    "{} has no ledger (no {} directory)",
                    data_dir.display(),
                    path.display()
                );
            }
            Box::new(custodian_rocksdb::RocksLedger::open(&path).with_context(|| {
                format!(
                    "opening {} (stop the daemon first, or export over gRPC without --data-dir)",
                    path.display()
                )
            })?)
        }
    };
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
