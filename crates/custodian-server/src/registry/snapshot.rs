//! The registry index's snapshot: which ledger entries the index is built from, as of a tree size,
//! so that a restart reads those entries instead of the whole log.
//!
//! The index is derived state (see [`super::index`]): the same entries applied in ledger order
//! give the same index. Most of a large log is not the registry's (plain ledger appends), and of
//! the runs only the latest [`super::index::RUN_WINDOW`] per eval × model count, so the entries
//! the index depends on are usually a small part of the log. The snapshot lists them, and nothing
//! derived from them: at start-up each listed entry is read, checked against the leaf hash the
//! signed tree records and applied as a replay would, and the entries past the snapshot's size
//! are then followed as usual. The snapshot is bound to the log by the root hash of its size, so
//! a snapshot of another log, or of a log since rebuilt, is refused and the ledger replayed.
//!
//! The file (`DATA_DIR/registry-index`) is, in order: the line
//! `custodian registry index snapshot v1\n`; the line of [`rules`] (which entries the writer
//! keeps: a daemon that keeps other entries, or more runs, must replay instead); the tree size
//! (u64, big-endian); the root hash of that tree (32 bytes); the number of listed entries (u64)
//! and their indexes (u64 each, ascending); the number of damaged entries (u64) and their
//! indexes; and the SHA-256 of everything before it (32 bytes). It is replaced whole (written beside, synced, renamed), so a
//! crash leaves the previous snapshot or the new one, never a mix; a damaged file fails its
//! checksum and the ledger is replayed.

use std::io::Write as _;
use std::path::Path;

use custodian_core::merkle::Hash;
use sha2::{Digest as _, Sha256};

/// The first line of a snapshot file: what it is and its format's version.
const MAGIC: &[u8] = b"custodian registry index snapshot v1\n";

/// What decides which entries an index keeps: the service kinds this daemon applies (a kind it
/// does not know is not kept, so a daemon that knows more kinds cannot use the snapshot) and the
/// runs it keeps per eval × model. One line, ending in a newline.
pub fn rules() -> String {
    let kinds: Vec<&str> = custodian_core::entry::EntryKind::KNOWN
        .iter()
        .map(|kind| kind.as_str())
        .collect();
    format!(
        "kinds {}; runs per eval and model {}\n",
        kinds.join(","),
        super::index::RUN_WINDOW
    )
}

/// The entries a registry index is built from, as of the first `size` entries of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The tree size the snapshot describes: every entry below it was read by the index.
    pub size: u64,
    /// The root hash of the tree of `size` entries.
    pub root: Hash,
    /// The entries the index applied and still depends on, ascending.
    pub kept: Vec<u64>,
    /// The entries found damaged (not applied), ascending.
    pub damaged: Vec<u64>,
}

/// Why a snapshot file could not be read. Any of these means: replay the ledger instead.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The snapshot file.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The ledger could not be followed to its end, or its root read, for a new snapshot.
    #[error("ledger: {0}")]
    Ledger(#[from] custodian_storage::LedgerError),
    /// The file is not a snapshot this daemon wrote, or is damaged.
    #[error("{path} is not a usable registry index snapshot: {reason}")]
    Malformed {
        /// The snapshot file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads a snapshot's fields in order.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("it ends early".into());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let bytes: [u8; 8] = self.take(8)?.try_into().map_err(|_| "it ends early")?;
        Ok(u64::from_be_bytes(bytes))
    }

    /// A count and that many entry indexes, ascending and below `size`.
    fn list(&mut self, what: &str, size: u64) -> Result<Vec<u64>, String> {
        let count = self.u64()?;
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(8))
            .ok_or_else(|| format!("its {what} count {count} is impossible"))?;
        let list: Vec<u64> = self
            .take(len)?
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
            .collect();
        if list.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("its {what} entries are not in ascending order"));
        }
        if list.last().is_some_and(|last| *last >= size) {
            return Err(format!(
                "it lists {what} entries at or past its size {size}"
            ));
        }
        Ok(list)
    }
}

impl Snapshot {
    /// The snapshot's bytes, as the module documentation lays them out.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            MAGIC.len() + 8 + 32 + 16 + 8 * (self.kept.len() + self.damaged.len()) + 32,
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(rules().as_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(self.root.as_bytes());
        for list in [&self.kept, &self.damaged] {
            out.extend_from_slice(&(list.len() as u64).to_be_bytes());
            for index in list {
                out.extend_from_slice(&index.to_be_bytes());
            }
        }
        let checksum = Sha256::digest(&out);
        out.extend_from_slice(&checksum);
        out
    }

    /// Parses and checks a snapshot's bytes: its checksum, its lengths, and that every listed
    /// index is below its size and in ascending order.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
        let body_len = bytes
            .len()
            .checked_sub(32)
            .ok_or("shorter than its checksum")?;
        let (body, checksum) = bytes.split_at(body_len);
        if Sha256::digest(body).as_slice() != checksum {
            return Err("its checksum does not match its contents".into());
        }
        let rest = body
            .strip_prefix(MAGIC)
            .ok_or("it does not start with the snapshot line")?;
        let rules = rules();
        let rest = rest.strip_prefix(rules.as_bytes()).ok_or_else(|| {
            let line = rest.split(|b| *b == b'\n').next().unwrap_or_default();
            format!(
                "it was written by a daemon that keeps other entries ({:?}; this one: {:?})",
                String::from_utf8_lossy(line),
                rules.trim_end()
            )
        })?;
        let mut cursor = Cursor(rest);
        let size = cursor.u64()?;
        let root = Hash(cursor.take(32)?.try_into().map_err(|_| "it ends early")?);
        let kept = cursor.list("kept", size)?;
        let damaged = cursor.list("damaged", size)?;
        if !cursor.0.is_empty() {
            return Err(format!("{} bytes follow its lists", cursor.0.len()));
        }
        Ok(Snapshot {
            size,
            root,
            kept,
            damaged,
        })
    }

    /// Reads the snapshot at `path`; `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<Snapshot>, SnapshotError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SnapshotError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        Snapshot::decode(&bytes)
            .map(Some)
            .map_err(|reason| SnapshotError::Malformed {
                path: path.display().to_string(),
                reason,
            })
    }

    /// Replaces the snapshot at `path` with this one: written beside it, synced, renamed over
    /// it and the directory synced, so the rename is durable too.
    pub fn write(&self, path: &Path) -> Result<(), SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: path.display().to_string(),
            source,
        };
        let partial = path.with_extension("partial");
        let mut file = std::fs::File::create(&partial).map_err(io)?;
        file.write_all(&self.encode()).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&partial, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Snapshot {
        Snapshot {
            size: 10_000,
            root: Hash([7; 32]),
            kept: vec![0, 5, 4_096, 9_999],
            damaged: vec![17],
        }
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("registry-index");
        assert_eq!(Snapshot::read(&path).expect("absent is fine"), None);
        sample().write(&path).expect("write");
        assert_eq!(Snapshot::read(&path).expect("read"), Some(sample()));
        assert!(!path.with_extension("partial").exists());
    }

    /// Every single flipped bit and every truncation is refused: the checksum covers it all.
    #[test]
    fn a_damaged_or_truncated_snapshot_is_refused() {
        let bytes = sample().encode();
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(Snapshot::decode(&damaged).is_err(), "bit flipped at {at}");
            assert!(Snapshot::decode(&bytes[..at]).is_err(), "cut at {at}");
        }
    }

    /// A snapshot written under other rules (a daemon that keeps more runs, or knows other
    /// kinds) is refused even under a correct checksum: its list would miss entries this daemon
    /// keeps.
    #[test]
    fn a_snapshot_written_under_other_rules_is_refused() {
        let encoded = sample().encode();
        let ours = rules();
        let theirs = ours.replace("runs per eval and model 8", "runs per eval and model 16");
        assert_ne!(ours, theirs);
        let mut body = encoded[..encoded.len() - 32].to_vec();
        let at = MAGIC.len();
        body.splice(at..at + ours.len(), theirs.bytes());
        let checksum = Sha256::digest(&body);
        body.extend_from_slice(&checksum);
        let err = Snapshot::decode(&body).expect_err("other rules");
        assert!(err.contains("keeps other entries"), "{err}");
    }

    /// Lists out of order or past the size are refused even under a correct checksum (a bug in
    /// the writer must not become a wrong index).
    #[test]
    fn lists_out_of_order_or_past_the_size_are_refused() {
        for (kept, damaged) in [
            (vec![5, 5], vec![]),
            (vec![6, 5], vec![]),
            (vec![10_000], vec![]),
            (vec![], vec![10_001]),
        ] {
            let bytes = Snapshot {
                kept,
                damaged,
                ..sample()
            }
            .encode();
            assert!(Snapshot::decode(&bytes).is_err());
        }
    }

    proptest! {
        #[test]
        fn any_snapshot_round_trips(
            size in 1u64..u64::MAX,
            root in any::<[u8; 32]>(),
            kept in proptest::collection::btree_set(any::<u64>(), 0..64),
            damaged in proptest::collection::btree_set(any::<u64>(), 0..8),
        ) {
            let snapshot = Snapshot {
                size,
                root: Hash(root),
                kept: kept.into_iter().map(|i| i % size).collect::<std::collections::BTreeSet<_>>().into_iter().collect(),
                damaged: damaged.into_iter().map(|i| i % size).collect::<std::collections::BTreeSet<_>>().into_iter().collect(),
            };
            prop_assert_eq!(Snapshot::decode(&snapshot.encode()), Ok(snapshot));
        }
    }
}
