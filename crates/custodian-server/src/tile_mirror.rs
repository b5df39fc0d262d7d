//! `serve --tiles-to URL`: the ledger's C2SP tlog-tiles written to an object store (`file://`,
//! `s3://`, …) as entries are integrated, so a static file server or a CDN in front of the bucket
//! serves the log with no daemon behind it (`custodian log monitor --log` reads it the same).
//!
//! After each growth of the log the mirror writes every tile the new size adds or widens (full
//! tiles and the partial tiles at the new widths), each create-only, and the checkpoint last: a
//! reader that sees a checkpoint finds every tile it names. Tile bytes at a path never change, so
//! a tile that already exists (an earlier run wrote it) is left as it is. A failed write is
//! retried on the next pass and never holds up an append. On start the mirror resumes from the
//! checkpoint the bucket holds, after checking it is this log's.

use std::sync::Arc;
use std::time::Duration;

use custodian_core::checkpoint::Checkpoint;
use custodian_core::tiles::{EntryBundle, changed_bundles, changed_tiles};
use custodian_storage::LedgerError;
use custodian_storage::ledger::Ledger;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

use crate::error::ServerError;

/// Why an entry bundle is not served.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle reaches past the log's end.
    #[error("{path} is beyond the log: it has {size} entries")]
    Beyond {
        /// The bundle's path.
        path: String,
        /// The log's size.
        size: u64,
    },
    /// An entry in it may not be published in a bundle.
    #[error(
        "{path} is not served: entry {index} cannot be in a public bundle ({reason}); read it with GetEntries"
    )]
    Refused {
        /// The bundle's path.
        path: String,
        /// The entry's index.
        index: u64,
        /// Why.
        reason: String,
    },
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Reads an entry bundle of the ledger: every entry in it, length-prefixed, as tlog-tiles
/// writes them; refused whole when any entry is private or too long for the format. Blocking.
pub fn read_bundle(ledger: &Ledger, bundle: &EntryBundle) -> Result<Vec<u8>, BundleError> {
    let size = ledger.latest().size;
    let path = bundle.path();
    let first = bundle.first().ok_or(BundleError::Beyond {
        path: path.clone(),
        size,
    })?;
    let end = first.saturating_add(u64::from(bundle.width));
    if end > size {
        return Err(BundleError::Beyond { path, size });
    }
    let entries = ledger.entries(first, end)?;
    for (at, entry) in entries.iter().enumerate() {
        if let Some(reason) = custodian_core::registry::bundle_refusal(entry) {
            return Err(BundleError::Refused {
                path,
                index: first + at as u64,
                reason,
            });
        }
    }
    EntryBundle::encode(&entries).map_err(|(at, len)| BundleError::Refused {
        path,
        index: first + at as u64,
        reason: format!("it is {len} bytes"),
    })
}

/// How often the mirror looks for growth.
const POLL: Duration = Duration::from_millis(100);

/// Where tiles go, opened and checked against the ledger.
pub struct TileMirror {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    ledger: Arc<Ledger>,
    /// The size the bucket's checkpoint has.
    published: u64,
    /// The checkpoint note this process last wrote (a checkpoint of the same size may come back
    /// with more cosignatures).
    written: Option<String>,
    /// Whether a refused bundle has been reported already (once is enough).
    refused_bundles: bool,
}

fn key(prefix: &Path, name: &str) -> Path {
    prefix.parts().chain(Path::from(name).parts()).collect()
}

impl TileMirror {
    /// Opens the bucket and reads its checkpoint: none (a new mirror), or one of this log no
    /// larger than it. A checkpoint of another log or a larger one is refused.
    pub async fn open(
        url: &str,
        options: &[(String, String)],
        ledger: Arc<Ledger>,
    ) -> Result<Self, ServerError> {
        let refuse = |reason: String| ServerError::TileMirror {
            url: url.to_string(),
            reason,
        };
        let (store, prefix, _) =
            custodian_object::build_store(url, options).map_err(|e| refuse(e.to_string()))?;
        let published = match store.get(&key(&prefix, "checkpoint")).await {
            Ok(found) => {
                let bytes = found.bytes().await.map_err(|e| refuse(e.to_string()))?;
                let checkpoint = Checkpoint::open(&bytes, ledger.verifier()).map_err(|e| {
                    refuse(format!(
                        "its checkpoint is not one of this log ({e}); give an empty location"
                    ))
                })?;
                let size = ledger.latest().size;
                if checkpoint.size > size {
                    return Err(refuse(format!(
                        "its checkpoint has {} entries, more than this log's {size}",
                        checkpoint.size
                    )));
                }
                checkpoint.size
            }
            Err(object_store::Error::NotFound { .. }) => 0,
            Err(e) => return Err(refuse(e.to_string())),
        };
        Ok(TileMirror {
            store,
            prefix,
            ledger,
            published,
            written: None,
            refused_bundles: false,
        })
    }

    /// Publishes growth until the process ends.
    pub async fn run(mut self) {
        loop {
            if let Err(err) = self.publish().await {
                tracing::warn!(%err, published = self.published, "tile mirror write failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Writes the tiles and the checkpoint of the ledger's published checkpoint (the latest,
    /// or with a witness policy the latest cosigned one), if it changed.
    async fn publish(&mut self) -> Result<(), String> {
        let latest = self.ledger.published();
        let (from, to) = (self.published, latest.size);
        if to < from || (to == from && from != 0 && self.written.as_ref() == Some(&latest.note)) {
            return Ok(());
        }
        let tiles = changed_tiles(from, to);
        let ledger = self.ledger.clone();
        let contents = tokio::task::spawn_blocking(move || {
            tiles
                .into_iter()
                .map(|tile| ledger.tile(&tile).map(|bytes| (tile, bytes)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        for (tile, bytes) in contents {
            let location = key(&self.prefix, &tile.path());
            custodian_object::put_immutable(self.store.as_ref(), &location, bytes)
                .await
                .map_err(|e| format!("{location}: {e}"))?;
        }
        // Entry bundles the daemon would serve; one it refuses (a private or oversize entry)
        // is left out of the bucket too, and said so once.
        let bundles = changed_bundles(from, to);
        let ledger = self.ledger.clone();
        let contents = tokio::task::spawn_blocking(move || {
            bundles
                .into_iter()
                .map(|bundle| (bundle, read_bundle(&ledger, &bundle)))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| e.to_string())?;
        for (bundle, bytes) in contents {
            match bytes {
                Ok(bytes) => {
                    let location = key(&self.prefix, &bundle.path());
                    custodian_object::put_immutable(self.store.as_ref(), &location, bytes)
                        .await
                        .map_err(|e| format!("{location}: {e}"))?;
                }
                Err(err @ BundleError::Refused { .. }) => {
                    if !self.refused_bundles {
                        tracing::warn!(error = %err, "an entry bundle is left out of the tile mirror");
                        self.refused_bundles = true;
                    }
                }
                Err(err) => return Err(err.to_string()),
            }
        }
        self.store
            .put(
                &key(&self.prefix, "checkpoint"),
                PutPayload::from(latest.note.clone().into_bytes()),
            )
            .await
            .map_err(|e| format!("checkpoint: {e}"))?;
        self.published = to;
        self.written = Some(latest.note.clone());
        Ok(())
    }
}
