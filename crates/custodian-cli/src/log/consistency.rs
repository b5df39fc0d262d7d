//! `custodian log consistency`: did the log only grow since a saved checkpoint? Both signatures
//! and the RFC 9162 consistency proof are verified here, not trusted from the daemon.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use custodian_core::checkpoint::Checkpoint;
use custodian_core::merkle::{Hash, verify_consistency};
use custodian_proto::ledger::v1 as pb;
use serde_json::json;

use super::{connect, failure};
use crate::client::{ServerArg, status_error};

pub(super) async fn consistency(
    from: &Path,
    key: &str,
    update: bool,
    json: bool,
    server: &ServerArg,
) -> anyhow::Result<ExitCode> {
    let verifier = crate::keys::load_verifier(key)?;
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
