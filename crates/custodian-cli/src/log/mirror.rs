//! `custodian log mirror`: copies a log's tlog-tiles from one place to another (a daemon, a
//! bucket, a directory) and checks everything it copies. The level-0 tiles (the leaf hashes) are
//! read from the source and must add up to the signed root; every other tile is computed from
//! them, never copied on trust. A destination that already holds this log is extended only if its
//! checkpoint is consistent with the source's.

use std::process::ExitCode;

use anyhow::Context as _;
use custodian_core::checkpoint::Checkpoint;
use custodian_core::merkle::{Frontier, Hash, consistency_proof, verify_consistency};
use custodian_core::tiles::{Tile, changed_tiles, tile_width_at};
use object_store::{ObjectStoreExt as _, PutPayload};
use serde_json::json;

use super::failure;
use super::source::Source;

/// Where the copy goes and how it is checked.
pub(super) struct MirrorArgs<'a> {
    /// The source's tile prefix.
    pub from: &'a str,
    /// Object store options for the source.
    pub from_options: &'a [(String, String)],
    /// The destination object store URL.
    pub to: &'a str,
    /// Object store options for the destination.
    pub to_options: &'a [(String, String)],
    /// The log's verifier key, or a file holding it.
    pub key: &'a str,
    /// Print JSON.
    pub json: bool,
}

/// Copies and checks the log once; returns the exit status. Runs on a blocking thread.
pub(super) fn mirror(
    args: MirrorArgs<'_>,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let verifier = crate::keys::load_verifier(args.key)?;
    let source = Source::parse(args.from, args.from_options)?;
    let note = source
        .read("checkpoint", &runtime)
        .map_err(anyhow::Error::msg)?;
    let latest = match Checkpoint::open(&note, &verifier) {
        Ok(checkpoint) => checkpoint,
        Err(err) => {
            return Ok(failure(
                json,
                "mirror FAILED",
                format!("the source's checkpoint: {err}"),
            ));
        }
    };
    // Every leaf hash, from the level-0 tiles; the stored tree is rebuilt from them.
    let mut frontier = Frontier::new();
    let mut stored: Vec<Hash> = Vec::new();
    let mut index = 0;
    loop {
        let width = tile_width_at(latest.size, 0, index);
        if width == 0 {
            break;
        }
        let tile = Tile {
            level: 0,
            index,
            width,
        };
        let bytes = source
            .read(&tile.path(), &runtime)
            .map_err(anyhow::Error::msg)?;
        if bytes.len() != usize::from(width) * 32 {
            return Ok(failure(
                json,
                "mirror FAILED",
                format!(
                    "{} is {} bytes, not {}",
                    tile.path(),
                    bytes.len(),
                    usize::from(width) * 32
                ),
            ));
        }
        for leaf in bytes.chunks_exact(32) {
            stored.extend(frontier.append(Hash::from_slice(leaf)?));
        }
        index += 1;
    }
    if frontier.root() != latest.root {
        return Ok(failure(
            json,
            "mirror FAILED",
            format!(
                "the source's level-0 tiles hash to {}, its signed checkpoint of size {} says {}",
                frontier.root(),
                latest.size,
                latest.root
            ),
        ));
    }
    let (store, prefix, _) = custodian_object::build_store(args.to, args.to_options)
        .with_context(|| format!("--to {:?}", args.to))?;
    let key = |name: &str| -> object_store::path::Path {
        prefix
            .parts()
            .chain(object_store::path::Path::from(name).parts())
            .collect()
    };
    let existing = runtime.block_on(async {
        match store.get(&key("checkpoint")).await {
            Ok(found) => found.bytes().await.map(Some),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    })?;
    let from = match existing {
        None => 0,
        Some(bytes) => {
            let held = match Checkpoint::open(&bytes, &verifier) {
                Ok(held) => held,
                Err(err) => {
                    return Ok(failure(
                        json,
                        "mirror FAILED",
                        format!("the destination holds a checkpoint that is not this log's: {err}"),
                    ));
                }
            };
            let consistent = (held.size <= latest.size)
                .then(|| consistency_proof(held.size, latest.size, &stored).ok())
                .flatten()
                .is_some_and(|proof| {
                    verify_consistency(held.size, latest.size, &proof, &held.root, &latest.root)
                        .is_ok()
                });
            if !consistent {
                return Ok(failure(
                    json,
                    "mirror FAILED",
                    format!(
                        "the destination's checkpoint of size {} is NOT consistent with the source's of size {}: they are different histories",
                        held.size, latest.size
                    ),
                ));
            }
            held.size
        }
    };
    let tiles = changed_tiles(from, latest.size);
    let written = tiles.len();
    runtime.block_on(async {
        for tile in &tiles {
            let indexes = tile
                .stored_hash_indexes()
                .context("a tile beyond 64-bit leaf numbers")?;
            let bytes: Vec<u8> = indexes
                .into_iter()
                .flat_map(|i| stored[i as usize].0)
                .collect();
            let location = key(&tile.path());
            custodian_object::put_immutable(store.as_ref(), &location, bytes)
                .await
                .with_context(|| location.to_string())?;
        }
        store
            .put(&key("checkpoint"), PutPayload::from(note.clone()))
            .await
            .context("writing the checkpoint")?;
        anyhow::Ok(())
    })?;
    if json {
        println!(
            "{}",
            json!({"ok": true, "origin": latest.origin, "from_size": from, "tree_size": latest.size, "tiles_written": written})
        );
    } else {
        println!(
            "mirrored log {} from {} to {} entries into {} ({written} tiles written, all computed from level-0 tiles that add up to the signed root)",
            latest.origin, from, latest.size, args.to
        );
    }
    Ok(ExitCode::SUCCESS)
}
