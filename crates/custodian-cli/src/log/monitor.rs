//! `custodian log monitor`: follows a log through its C2SP tlog-tiles only (a daemon's `/log/`,
//! or a directory or bucket mirror of it), and proves every new checkpoint consistent with the
//! last one it accepted, which it keeps in a state file. Run from cron, it is what catches a log
//! that rewrote history or shows this monitor a different history than it showed before.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use custodian_core::checkpoint::Checkpoint;
use custodian_core::entry::Entry;
use custodian_core::merkle::{
    HashReader as _, consistency_proof, leaf_hash, stored_hash_index, tree_hash, verify_consistency,
};
use custodian_core::note::VerifierKey;
use custodian_core::tiles::{EntryBundle, Tile, TileHashes, tile_width_at};
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
    // Every new entry from its bundle: its leaf hash must be the one the tiles (and so the
    // signed root) commit to, before it is decoded and shown.
    let from = previous.as_ref().map(|c| c.size);
    let new_entries =
        match read_new_entries(&source, &runtime, &tiles, from.unwrap_or(0), latest.size) {
            Ok(found) => found,
            Err(err) => return Ok(failure(json, "monitor FAILED", err)),
        };
    write_state(state, &latest_note)?;
    if json {
        let entries: Vec<serde_json::Value> = new_entries
            .entries
            .iter()
            .map(|(index, bytes)| entry_view(*index, bytes))
            .collect();
        println!(
            "{}",
            json!({
                "ok": true,
                "origin": latest.origin,
                "previous_size": from,
                "tree_size": latest.size,
                "root_hash": latest.root.to_hex(),
                "tiles_read": tiles.fetched(),
                "entries": entries,
                "bundles_not_served": new_entries.missing,
            })
        );
    } else {
        for (index, bytes) in &new_entries.entries {
            println!("{}", entry_line(*index, bytes));
        }
        for missing in &new_entries.missing {
            println!("  (not decoded: {missing})");
        }
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

/// New entries read from bundles, and the bundles the log does not serve.
struct NewEntries {
    entries: Vec<(u64, Vec<u8>)>,
    missing: Vec<String>,
}

/// Reads the entries `[from, to)` from their bundles and checks each one's leaf hash against the
/// level-0 tiles, which were checked against the signed root. A bundle the log does not serve
/// (a private or oversize entry in it) is noted, not fatal; a bundle that is served but does not
/// match is the first inconsistency, named by entry index.
fn read_new_entries<F: Fn(&Tile) -> Result<Vec<u8>, String>>(
    source: &Source,
    runtime: &tokio::runtime::Handle,
    tiles: &TileHashes<F>,
    from: u64,
    to: u64,
) -> Result<NewEntries, String> {
    let mut out = NewEntries {
        entries: Vec::new(),
        missing: Vec::new(),
    };
    if from >= to {
        return Ok(out);
    }
    for index in from / 256..=(to - 1) / 256 {
        let bundle = EntryBundle {
            index,
            width: tile_width_at(to, 0, index),
        };
        let first = index * 256;
        let bytes = match source.read(&bundle.path(), runtime) {
            Ok(bytes) => bytes,
            Err(err) => {
                out.missing.push(format!("{}: {err}", bundle.path()));
                continue;
            }
        };
        let entries = EntryBundle::decode(&bytes, bundle.width)
            .map_err(|e| format!("{}: {e}", bundle.path()))?;
        let wanted = from.max(first)..to.min(first + u64::from(bundle.width));
        let indexes: Vec<u64> = wanted.clone().map(|i| stored_hash_index(0, i)).collect();
        let committed = tiles
            .read_hashes(&indexes)
            .map_err(|e| format!("reading the leaf hashes of {}: {e}", bundle.path()))?;
        for (i, committed) in wanted.zip(committed) {
            let entry = entries[(i - first) as usize];
            if leaf_hash(entry) != committed {
                return Err(format!(
                    "entry {i} in {} hashes to {}, but the tiles under the signed root say {committed}: the log serves an entry it did not commit to",
                    bundle.path(),
                    leaf_hash(entry)
                ));
            }
            out.entries.push((i, entry.to_vec()));
        }
    }
    Ok(out)
}

/// One entry for --json: decoded when it is a Custodian entry, hex otherwise.
fn entry_view(index: u64, bytes: &[u8]) -> serde_json::Value {
    let leaf = leaf_hash(bytes);
    match Entry::decode(bytes) {
        Ok(entry) => super::entry_json(index, &entry, leaf.as_bytes()),
        Err(_) => json!({
            "index": index,
            "leaf_hash": leaf.to_hex(),
            "bytes_hex": hex::encode(bytes),
        }),
    }
}

/// One entry as a line of text, its payload cut at 160 characters.
fn entry_line(index: u64, bytes: &[u8]) -> String {
    match Entry::decode(bytes) {
        Ok(entry) => {
            let payload = super::cbor_to_json(&entry.payload).to_string();
            let shown: String = payload.chars().take(160).collect();
            let more = if shown.len() < payload.len() {
                "…"
            } else {
                ""
            };
            format!(
                "  entry {index} {} {} {shown}{more}",
                entry.kind,
                super::time_text(entry.time_ms)
            )
        }
        Err(_) => format!(
            "  entry {index} ({} bytes, not a Custodian entry) {:?}",
            bytes.len(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
        ),
    }
}
