//! Reconciling a store with its ledger, offline: a custody listing (`custodian blob list
//! --json`) beside the entries of an audited export (`custodian log export`). The verdicts are
//! the retention promises read from the record alone:
//!
//! - every blob the ledger keeps (a reference, an OCI manifest, a pin, a legal hold) is present,
//!   or its deletion is recorded (only `blob delete --force` deletes a referenced blob);
//! - every blob the ledger ever named, and every digest the caller says was acknowledged, is
//!   present or named by a `BlobsDeleted` entry;
//! - every blob present is kept by the ledger, by an OCI link, or by its grace period. One that
//!   nothing keeps is garbage not collected yet: an error only when the caller says a
//!   collection with this grace finished just before the listing (`collected`).
//!
//! The ledger is read as it stood when the listing began (entries up to `listing_started_ms`),
//! so a blob uploaded and published while the listing ran is not called missing; deletions are
//! read from the whole export, so one made while the listing ran explains an absence.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use custodian_core::Digest;
use custodian_core::entry::{Entry, EntryKind};
use custodian_core::registry::BlobsDeleted;
use serde::{Deserialize, Serialize};

use super::index::deleted_copy_created_by;
use crate::registry::index::Index;

/// One line of a custody listing (`custodian blob list --json`): a blob in custody.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListingLine {
    /// `sha256:<hex>`.
    pub sha256: String,
    /// `blake3:<hex>`.
    pub blake3: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was first committed (ms since the Unix epoch).
    pub created_ms: u64,
    /// Its latest acknowledgement to a put, if any (restarts its grace).
    pub acknowledged_ms: Option<u64>,
    /// The OCI repositories it is linked into (the front end's word, not the ledger's).
    #[serde(default)]
    pub oci_linked_in: Vec<String>,
    /// When the listing began.
    pub listing_started_ms: u64,
}

/// How to judge.
#[derive(Clone, Debug)]
pub struct ReconcileOptions {
    /// The grace period the store is collected with, in ms.
    pub grace_ms: u64,
    /// A collection with this grace finished just before the listing began: a present blob
    /// nothing keeps is then an error, not garbage awaiting collection.
    pub collected: bool,
}

/// A blob and what was found wrong or notable about it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// The blob (`sha256:<hex>`).
    pub digest: String,
    /// What the record says, in words.
    pub detail: String,
}

/// The reconciliation's verdict.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Reconciliation {
    /// Blobs in the listing.
    pub present: u64,
    /// When the listing began (ms since the Unix epoch); the ledger is read as of then.
    pub listing_started_ms: u64,
    /// Export entries read as of the listing (the rest were read for deletions only).
    pub entries_judged: u64,
    /// Present blobs by what keeps them (a blob kept several ways counts under each).
    pub kept_by: BTreeMap<String, u64>,
    /// Present blobs nothing keeps: garbage awaiting collection (an error with `collected`).
    pub collectable: Vec<Finding>,
    /// Present blobs whose deletion was recorded after they were committed: recorded deletions
    /// not yet carried out (a daemon finishes them on restart).
    pub pending_deletions: Vec<Finding>,
    /// Absent blobs whose deletion is recorded.
    pub absent_tombstoned: u64,
    /// Absent blobs the ledger keeps whose deletion is recorded anyway (an admin's forced
    /// delete of a referenced or pinned blob): on the record, listed for the auditor.
    pub forced_deletions: Vec<Finding>,
    /// Absent blobs the ledger keeps, with no recorded deletion: lost custody.
    pub missing: Vec<Finding>,
    /// Absent blobs the ledger named or the caller says were acknowledged, with no recorded
    /// deletion: gone off the record.
    pub unrecorded: Vec<Finding>,
    /// Sealed entries whose bodies the export does not carry: the blobs their events name
    /// were not judged (their bodies themselves are counted as referenced).
    pub sealed_unread: u64,
}

impl Reconciliation {
    /// Whether every promise holds.
    pub fn ok(&self, options: &ReconcileOptions) -> bool {
        self.missing.is_empty()
            && self.unrecorded.is_empty()
            && (!options.collected
                || (self.collectable.is_empty() && self.pending_deletions.is_empty()))
    }
}

/// Errors of a reconciliation's input.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A listing line does not parse.
    #[error("listing line {line}: {message}")]
    Listing {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// An entry of the export does not decode as its kind says.
    #[error("export entry {index}: {message}")]
    Entry {
        /// The entry's index.
        index: u64,
        /// What is wrong.
        message: String,
    },
    /// An acknowledged digest does not parse.
    #[error("acknowledged digest {0:?}: expected sha256:<hex> or blake3:<hex>")]
    Acknowledged(String),
}

/// Parses a custody listing (JSON lines; blank lines skipped).
pub fn parse_listing(text: &str) -> Result<Vec<ListingLine>, ReconcileError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: ListingLine =
            serde_json::from_str(line).map_err(|e| ReconcileError::Listing {
                line: n + 1,
                message: e.to_string(),
            })?;
        parsed
            .sha256
            .parse::<Digest>()
            .map_err(|e| ReconcileError::Listing {
                line: n + 1,
                message: format!("field sha256 {:?}: {e}", parsed.sha256),
            })?;
        out.push(parsed);
    }
    Ok(out)
}

/// Reconciles `listing` with the export's entries (`(index, bytes)` in order, already audited
/// against the log's checkpoints) and the digests the caller says were acknowledged.
pub fn reconcile(
    entries: impl IntoIterator<Item = (u64, Vec<u8>)>,
    listing: &[ListingLine],
    acknowledged: &[String],
    options: &ReconcileOptions,
) -> Result<Reconciliation, ReconcileError> {
    let started = listing
        .iter()
        .map(|l| l.listing_started_ms)
        .min()
        .unwrap_or(u64::MAX);
    let mut report = Reconciliation {
        present: listing.len() as u64,
        listing_started_ms: if listing.is_empty() { 0 } else { started },
        ..Reconciliation::default()
    };
    let mut index = Index::default();
    // Every blob the ledger named, as of the listing.
    let mut named: BTreeSet<[u8; 32]> = BTreeSet::new();
    // Every recorded deletion in the whole export, per blob: the latest entry, its time, and
    // the latest creation time of the copy it deleted (a copy created later was put again).
    let mut deleted: HashMap<[u8; 32], (u64, u64, u64)> = HashMap::new();
    for (at, bytes) in entries {
        let bad = |message: String| ReconcileError::Entry { index: at, message };
        if let Some(kind) = custodian_core::entry::peek_kind(&bytes)
            && !EntryKind::is_service_name(kind)
        {
            continue;
        }
        let entry = Entry::decode(&bytes).map_err(|e| bad(e.to_string()))?;
        if entry.kind == EntryKind::BlobsDeleted {
            let event: BlobsDeleted = entry.event().map_err(|e| bad(e.to_string()))?;
            for blob in &event.blobs {
                let digest: Digest = blob.digest.parse().map_err(|e| bad(format!("{e}")))?;
                let copy = deleted_copy_created_by(blob, entry.time_ms);
                deleted.insert(*digest.bytes(), (at, entry.time_ms, copy));
                if let Some(blake3) = &blob.blake3 {
                    let digest: Digest = blake3.parse().map_err(|e| bad(format!("{e}")))?;
                    deleted.insert(*digest.bytes(), (at, entry.time_ms, copy));
                }
            }
        }
        if entry.time_ms > started {
            continue;
        }
        report.entries_judged += 1;
        if entry.kind == EntryKind::Sealed {
            let (body, _) =
                custodian_core::seal::commitment(&entry).map_err(|e| bad(e.to_string()))?;
            index.add_body(&body, &entry);
            named.insert(*body.bytes());
            report.sealed_unread += 1;
            continue;
        }
        index.apply(at, &entry).map_err(bad)?;
    }
    named.extend(index.referenced_blobs().map(|d| *d.bytes()));
    named.extend(index.retention().placed_blobs().map(|d| *d.bytes()));
    named.extend(index.oci().manifests().map(|d| *d.bytes()));

    let now = started;
    // Listed blobs by either digest (a SHA-256 and a BLAKE3 digest never share 32 bytes).
    let present: BTreeSet<[u8; 32]> = listing
        .iter()
        .flat_map(|l| [&l.sha256, &l.blake3])
        .filter_map(|d| d.parse::<Digest>().ok().map(|d| *d.bytes()))
        .collect();
    let keepers = |sha: &Digest| -> Vec<String> {
        let mut out = Vec::new();
        if !index.retention().holds(sha).is_empty() {
            out.push("legal hold".to_string());
        }
        if index.blob_refs(sha).is_some_and(|r| !r.is_empty()) {
            out.push("reference".to_string());
        }
        if !index.oci().repos_with_manifest(sha).is_empty() {
            out.push("OCI manifest".to_string());
        }
        if !index.retention().pinned(sha, now).is_empty() {
            out.push("pin".to_string());
        }
        out
    };

    for line in listing {
        let sha: Digest = line.sha256.parse().map_err(|e| ReconcileError::Listing {
            line: 0,
            message: format!("{e}"),
        })?;
        let mut kept = keepers(&sha);
        if !line.oci_linked_in.is_empty() {
            kept.push("OCI link".to_string());
        }
        let touched = line.acknowledged_ms.unwrap_or(0).max(line.created_ms);
        if touched.saturating_add(options.grace_ms) > now {
            kept.push("grace".to_string());
        }
        if let Some((entry, time_ms, copy_created_by)) = deleted.get(sha.bytes())
            && *copy_created_by >= line.created_ms
            && *time_ms <= now
        {
            report.pending_deletions.push(Finding {
                digest: line.sha256.clone(),
                detail: format!(
                    "deleted at entry {entry}, still present (the daemon finishes recorded deletions on restart)"
                ),
            });
        }
        if kept.is_empty() {
            report.collectable.push(Finding {
                digest: line.sha256.clone(),
                detail: format!(
                    "nothing keeps it: no hold, reference, OCI manifest or link, or pin, and untouched since {}",
                    humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(touched)
                    )
                ),
            });
        }
        for k in kept {
            *report.kept_by.entry(k).or_default() += 1;
        }
    }

    let mut absent: BTreeMap<[u8; 32], Digest> =
        named.into_iter().map(|b| (b, Digest::sha256(b))).collect();
    for digest in acknowledged {
        let parsed: Digest = digest
            .parse()
            .map_err(|_| ReconcileError::Acknowledged(digest.clone()))?;
        absent.insert(*parsed.bytes(), parsed);
    }
    absent.retain(|b, _| !present.contains(b));
    for (bytes, sha) in absent {
        // The ledger's keepers are by SHA-256; a BLAKE3 digest is judged by its deletion only.
        let kept = keepers(&sha);
        match (deleted.get(&bytes), kept.is_empty()) {
            (Some(_), true) => report.absent_tombstoned += 1,
            (Some((entry, ..)), false) => report.forced_deletions.push(Finding {
                digest: sha.to_string(),
                detail: format!(
                    "kept by {} yet deleted on the record at entry {entry}",
                    kept.join(", ")
                ),
            }),
            (None, false) => report.missing.push(Finding {
                digest: sha.to_string(),
                detail: format!(
                    "kept by {} but not in custody, and no BlobsDeleted entry names it",
                    kept.join(", ")
                ),
            }),
            (None, true) => report.unrecorded.push(Finding {
                digest: sha.to_string(),
                detail: "named by the ledger or acknowledged, not in custody, and no BlobsDeleted entry names it".to_string(),
            }),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use custodian_core::Algorithm;
    use custodian_core::merkle::Hash;
    use custodian_core::registry::{
        BlobRetention, DeletedBlob, Event, RetentionAction, to_payload,
    };

    use super::*;

    const LISTED_AT: u64 = 1_000_000;
    const GRACE: u64 = 1_000;

    fn entry<T: Event>(time_ms: u64, event: &T) -> Vec<u8> {
        let payload = to_payload(event).expect("an event payload");
        Entry::new(T::KIND, Hash::ZERO, time_ms, payload)
            .expect("an entry")
            .encode()
    }

    fn digest(seed: u8) -> (Digest, Digest) {
        (
            Digest::of(Algorithm::Sha256, &[seed]),
            Digest::of(Algorithm::Blake3, &[seed]),
        )
    }

    fn hold(time_ms: u64, seed: u8) -> Vec<u8> {
        entry(
            time_ms,
            &BlobRetention {
                action: RetentionAction::Hold,
                subject: digest(seed).0.to_string(),
                digests: vec![digest(seed).0.to_string()],
                reason: "case".into(),
                expires_ms: None,
                by: "admin".into(),
            },
        )
    }

    /// A deletion entry as written before the deleted copy's creation time was recorded.
    fn deleted(time_ms: u64, seed: u8) -> Vec<u8> {
        deleted_copy(time_ms, seed, None)
    }

    fn deleted_copy(time_ms: u64, seed: u8, created_ms: Option<u64>) -> Vec<u8> {
        let (sha, b3) = digest(seed);
        entry(
            time_ms,
            &BlobsDeleted {
                blobs: vec![DeletedBlob {
                    digest: sha.to_string(),
                    size: 1,
                    blake3: Some(b3.to_string()),
                    created_ms,
                }],
                reason: "garbage collection".into(),
                policy: "test".into(),
                grace_ms: GRACE,
                by: "gc".into(),
            },
        )
    }

    fn line(seed: u8, created_ms: u64) -> ListingLine {
        let (sha, b3) = digest(seed);
        ListingLine {
            sha256: sha.to_string(),
            blake3: b3.to_string(),
            size: 1,
            created_ms,
            acknowledged_ms: None,
            oci_linked_in: Vec::new(),
            listing_started_ms: LISTED_AT,
        }
    }

    fn run(entries: Vec<Vec<u8>>, listing: &[ListingLine], acked: &[Digest]) -> Reconciliation {
        let acked: Vec<String> = acked.iter().map(Digest::to_string).collect();
        reconcile(
            entries.into_iter().enumerate().map(|(i, e)| (i as u64, e)),
            listing,
            &acked,
            &ReconcileOptions {
                grace_ms: GRACE,
                collected: true,
            },
        )
        .expect("a reconciliation")
    }

    #[test]
    fn a_held_blob_that_is_absent_without_a_record_is_missing() {
        let r = run(vec![hold(10, 1)], &[], &[]);
        assert_eq!(r.missing.len(), 1, "{r:?}");
        assert!(r.missing[0].detail.contains("legal hold"));
        let r = run(vec![hold(10, 1)], &[line(1, 5)], &[]);
        assert!(r.missing.is_empty() && r.collectable.is_empty(), "{r:?}");
        assert_eq!(r.kept_by.get("legal hold"), Some(&1));
    }

    #[test]
    fn a_hold_placed_after_the_listing_began_is_not_judged() {
        // The blob may have been uploaded after the listing passed its place.
        let r = run(vec![hold(LISTED_AT + 1, 1)], &[line(9, 5)], &[]);
        assert!(r.missing.is_empty(), "{r:?}");
        assert_eq!(r.entries_judged, 0);
        // An empty listing carries no start time, so the whole ledger is judged.
        let r = run(vec![hold(LISTED_AT + 1, 1)], &[], &[]);
        assert_eq!(r.missing.len(), 1, "{r:?}");
    }

    #[test]
    fn an_acknowledged_blob_must_be_present_or_recorded_deleted_by_either_digest() {
        let (sha, b3) = digest(2);
        let r = run(vec![], &[], &[sha]);
        assert_eq!(r.unrecorded.len(), 1, "{r:?}");
        // A deletion recorded after the listing began still explains the absence.
        let r = run(vec![deleted(LISTED_AT + 5, 2)], &[], &[sha, b3]);
        assert!(r.unrecorded.is_empty(), "{r:?}");
        assert_eq!(r.absent_tombstoned, 2);
        // Present under its BLAKE3 address counts as present.
        let r = run(vec![], &[line(2, LISTED_AT - 1)], &[b3]);
        assert!(r.unrecorded.is_empty(), "{r:?}");
    }

    #[test]
    fn after_a_collection_an_unkept_blob_out_of_grace_fails() {
        let old = line(3, LISTED_AT - GRACE - 1);
        let fresh = line(4, LISTED_AT - GRACE / 2);
        let r = run(vec![], &[old.clone(), fresh], &[]);
        assert_eq!(r.collectable.len(), 1, "{r:?}");
        assert_eq!(r.collectable[0].digest, old.sha256);
        assert_eq!(r.kept_by.get("grace"), Some(&1));
        let options = ReconcileOptions {
            grace_ms: GRACE,
            collected: true,
        };
        assert!(!r.ok(&options));
        assert!(r.ok(&ReconcileOptions {
            collected: false,
            ..options
        }));
    }

    #[test]
    fn a_recorded_deletion_still_present_is_pending() {
        let r = run(vec![deleted(LISTED_AT - 10, 5)], &[line(5, 1)], &[]);
        assert_eq!(r.pending_deletions.len(), 1, "{r:?}");
        // Uploaded again after the deletion: not pending.
        let r = run(vec![deleted(10, 5)], &[line(5, 20)], &[]);
        assert!(r.pending_deletions.is_empty(), "{r:?}");
    }

    /// The entry names the copy it deleted: a copy committed later is a new upload even when
    /// its commit time is earlier than the entry's (it was hashed, then waited at the gate while
    /// the collection recorded and deleted the older copy).
    #[test]
    fn a_deletion_that_names_its_copy_spares_a_later_copy() {
        let r = run(vec![deleted_copy(10, 5, Some(3))], &[line(5, 3)], &[]);
        assert_eq!(r.pending_deletions.len(), 1, "{r:?}");
        let r = run(vec![deleted_copy(10, 5, Some(3))], &[line(5, 7)], &[]);
        assert!(r.pending_deletions.is_empty(), "{r:?}");
        // Without the copy's time, the entry's own bounds it, and the same listing is pending.
        let r = run(vec![deleted(10, 5)], &[line(5, 7)], &[]);
        assert_eq!(r.pending_deletions.len(), 1, "{r:?}");
    }

    #[test]
    fn a_bad_listing_line_names_its_line() {
        let err = parse_listing("\n{\"sha256\": 1}\n").expect_err("a bad line");
        assert!(err.to_string().starts_with("listing line 2"), "{err}");
    }
}
