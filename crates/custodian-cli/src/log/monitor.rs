//! `custodian log monitor`: follows a log through its C2SP tlog-tiles only (a daemon's `/log/`,
//! or a directory or bucket mirror of it), and proves every new checkpoint consistent with the
//! last one it accepted, which it keeps in a state file. Run from cron, it is what catches a log
//! that rewrote history or shows this monitor a different history than it showed before.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use custodian_core::checkpoint::Checkpoint;
use custodian_core::merkle::{consistency_proof, tree_hash, verify_consistency};
use custodian_core::note::VerifierKey;
use custodian_core::tiles::{Tile, TileHashes};
use serde_json::json;

use super::failure;
use super::source::Source;

/// Checks the log once; returns the exit status. Runs on a blocking thread.
pub(super) fn monitor(
    log: &str,
    options: &[(String, String)],
    key: &str,
    state: &Path,
    policy: Option<&custodian_core::witness::WitnessPolicy>,
    json: bool,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<ExitCode> {
    let verifier = crate::keys::load_verifier(key)?;
    let source = Source::parse(log, options)?;
    let latest_note = source
        .read("checkpoint", &runtime)
        .map_err(anyhow::Error::msg)?;
    let latest = match Checkpoint::open(&latest_note, &verifier) {
        Ok(checkpoint) => checkpoint,
        Err(err) => {
            return Ok(failure(
                json,
                "monitor FAILED",
                format!("the log's checkpoint: {err}"),
            ));
        }
    };
    // Under a policy, a checkpoint without its quorum is not the log's word yet: the log may be
    // showing this monitor a view no witness has checked.
    if let Err(err) = crate::policy::require_quorum(policy, &latest_note, latest.size) {
        return Ok(failure(json, "monitor FAILED", err));
    }
    let previous = read_state(state, &verifier)?;
    let tiles = TileHashes::new(latest.size, |tile: &Tile| {
        source.read(&tile.path(), &runtime)
    });
    // The tiles must add up to the signed root before anything read from them counts.
    match tree_hash(latest.size, &tiles) {
        Ok(root) if root == latest.root => {}
        Ok(root) => {
            return Ok(failure(
                json,
                "monitor FAILED",
                format!(
                    "the tiles of size {} hash to {root}, the signed checkpoint says {}",
                    latest.size, latest.root
                ),
            ));
        }
        Err(err) => {
            return Ok(failure(
                json,
                "monitor FAILED",
                format!("reading the tiles: {err}"),
            ));
        }
    }
    if let Some(previous) = &previous {
        if latest.size < previous.size {
            return Ok(failure(
                json,
                "monitor FAILED",
                format!(
                    "the log shrank from {} to {} entries: it rolled back, or shows this monitor another history",
                    previous.size, latest.size
                ),
            ));
        }
        let consistent = consistency_proof(previous.size, latest.size, &tiles)
            .map_err(|e| e.to_string())
            .and_then(|proof| {
                verify_consistency(
                    previous.size,
                    latest.size,
                    &proof,
                    &previous.root,
                    &latest.root,
                )
                .map_err(|e| e.to_string())
            });
        if let Err(err) = consistent {
            return Ok(failure(
                json,
                "monitor FAILED",
                format!(
                    "the checkpoint of size {} is NOT consistent with the one of size {} this monitor accepted before ({err}): the log forked or rewrote history",
                    latest.size, previous.size
                ),
            ));
        }
    }
    write_state(state, &latest_note)?;
    let from = previous.as_ref().map(|c| c.size);
    if json {
        println!(
            "{}",
            json!({
                "ok": true,
                "origin": latest.origin,
                "previous_size": from,
                "tree_size": latest.size,
                "root_hash": latest.root.to_hex(),
                "tiles_read": tiles.fetched(),
            })
        );
    } else {
        match from {
            Some(from) => println!(
                "log {}: {from} -> {} entries, consistent ({} tiles read); state saved to {}",
                latest.origin,
                latest.size,
                tiles.fetched(),
                state.display()
            ),
            None => println!(
                "log {}: {} entries, the tiles add up to the signed root; first checkpoint saved to {} (later runs prove the log only grew from it)",
                latest.origin,
                latest.size,
                state.display()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The checkpoint the monitor accepted last, if it has run before.
fn read_state(state: &Path, verifier: &VerifierKey) -> anyhow::Result<Option<Checkpoint>> {
    match std::fs::read(state) {
        Ok(bytes) => Checkpoint::open(&bytes, verifier)
            .map(Some)
            .with_context(|| {
                format!(
                    "the state file {} holds no checkpoint of this log",
                    state.display()
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", state.display())),
    }
}

/// Replaces the state file atomically, so a crash leaves the old checkpoint or the new one.
fn write_state(state: &Path, note: &[u8]) -> anyhow::Result<()> {
    let temp = state.with_extension("tmp");
    let mut file =
        std::fs::File::create(&temp).with_context(|| format!("writing {}", temp.display()))?;
    std::io::Write::write_all(&mut file, note)?;
    file.sync_all()?;
    std::fs::rename(&temp, state).with_context(|| format!("replacing {}", state.display()))
}
