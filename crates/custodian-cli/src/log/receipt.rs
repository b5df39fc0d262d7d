//! `custodian log verify-receipt`: a receipt checked offline against the log's key.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use custodian_core::receipt::Receipt;
use serde_json::json;

use super::{cbor_to_json, entry_json, failure, time_text};

pub(super) fn verify_receipt(
    file: &Path,
    key: &str,
    witness_policy: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let verifier = crate::keys::load_verifier(key)?;
    let policy = crate::policy::load(witness_policy)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let result = Receipt::parse(&text).and_then(|r| {
        let verified = r.verify(&verifier)?;
        Ok((r, verified))
    });
    let result = match result {
        Ok((receipt, verified)) => crate::policy::require_quorum(
            policy.as_ref(),
            receipt.checkpoint.as_bytes(),
            verified.checkpoint.size,
        )
        .map(|witnesses| (verified, witnesses))
        .map_err(|e| e.to_string()),
        Err(err) => Err(err.to_string()),
    };
    match result {
        Ok((verified, witnesses)) => {
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
                if policy.is_some() {
                    view["witnesses"] = json!(witnesses);
                }
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
                if policy.is_some() {
                    println!(
                        "  witnesses   {} (the policy's quorum)",
                        witnesses.join(", ")
                    );
                }
                println!("  payload     {}", cbor_to_json(&verified.entry.payload));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(failure(json, "receipt does NOT verify", err)),
    }
}
