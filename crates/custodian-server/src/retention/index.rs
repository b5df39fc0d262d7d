//! Pins, legal holds and deletions as the ledger records them (`BlobRetention` and
//! `BlobsDeleted` entries); part of the registry index, so it is rebuilt by the same replay.

use std::collections::HashMap;

use custodian_core::Digest;
use custodian_core::registry::{BlobRetention, BlobsDeleted, DeletedBlob, RetentionAction};

use super::tombstones::Tombstones;

/// A pin on a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// What the pin was asked for (a digest or `NAME@VERSION`).
    pub subject: String,
    /// When it lapses; `None`: never.
    pub expires_ms: Option<u64>,
    /// Its ledger entry.
    pub index: u64,
    /// Who placed it.
    pub by: String,
}

/// A legal hold on a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// What the hold was asked for.
    pub subject: String,
    /// Why.
    pub reason: String,
    /// Its ledger entry.
    pub index: u64,
    /// When it was placed (ms since the Unix epoch).
    pub time_ms: u64,
    /// Who placed it.
    pub by: String,
}

/// Where a deleted blob's deletion is recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    /// The `BlobsDeleted` entry.
    pub index: u64,
    /// When (ms since the Unix epoch).
    pub time_ms: u64,
    /// Why.
    pub reason: String,
    /// Under which policy.
    pub policy: String,
    /// The blob's size.
    pub size: u64,
}

/// The latest creation time a copy of `blob` deleted by an entry written at `entry_ms` can
/// have: the time the entry records for the copy, or, in entries written before that was
/// recorded, the entry's own time (a copy is judged before its deletion is recorded).
pub fn deleted_copy_created_by(blob: &DeletedBlob, entry_ms: u64) -> u64 {
    blob.created_ms.unwrap_or(entry_ms)
}

/// The first 8 bytes of a digest: a tombstone's key.
fn prefix(digest: &Digest) -> [u8; 8] {
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest.bytes()[..8]);
    key
}

/// One recorded deletion, for finishing it after a crash.
#[derive(Clone, Debug)]
pub struct Deletion {
    /// The `BlobsDeleted` entry.
    pub index: u64,
    /// The blobs, each with the latest creation time a copy it deleted can have: the deleted
    /// copy's own when the entry records it, else the entry's time. A copy created later was
    /// put again after the deletion and stays.
    pub copies: Vec<(Digest, u64)>,
}

/// Pins, holds and tombstones by blob.
#[derive(Clone, Debug, Default)]
pub struct RetentionIndex {
    pins: HashMap<[u8; 32], Vec<Pin>>,
    holds: HashMap<[u8; 32], Vec<Hold>>,
    /// Each deleted blob's latest `BlobsDeleted` entry, under the first 8 bytes of its SHA-256
    /// and of its BLAKE3 digest, as a place in `deletion_entries`. A collection may delete
    /// millions, and these live as long as the daemon: 12 bytes each in sorted runs, where
    /// full digests with their entry and size in a hash map took 49 a slot (`heaptrack` of a
    /// collection of a million blobs: 308 MB as the map grew). What a prefix finds is only a
    /// candidate, confirmed by reading the entry ([`crate::registry::Registry::tombstone`]).
    tombstones: Tombstones,
    /// The ledger index of each `BlobsDeleted` entry, in ledger order; its time, reason,
    /// policy and sizes are read from the entry itself when a lookup needs them.
    deletion_entries: Vec<u64>,
    /// Recorded deletions not yet checked as carried out (see `take_deletions`).
    deletions: Vec<Deletion>,
    /// The blobs each subject's pins and holds were placed on.
    subjects: HashMap<String, std::collections::BTreeSet<[u8; 32]>>,
}

fn digests(list: &[String]) -> Vec<Digest> {
    list.iter().filter_map(|d| d.parse().ok()).collect()
}

impl RetentionIndex {
    /// Folds in a `BlobRetention` entry.
    pub fn apply_retention(&mut self, index: u64, time_ms: u64, event: &BlobRetention) {
        for digest in digests(&event.digests) {
            let key = *digest.bytes();
            if matches!(event.action, RetentionAction::Pin | RetentionAction::Hold) {
                self.subjects
                    .entry(event.subject.clone())
                    .or_default()
                    .insert(key);
            }
            match event.action {
                RetentionAction::Pin => self.pins.entry(key).or_default().push(Pin {
                    subject: event.subject.clone(),
                    expires_ms: event.expires_ms,
                    index,
                    by: event.by.clone(),
                }),
                RetentionAction::Unpin => {
                    if let Some(pins) = self.pins.get_mut(&key) {
                        pins.retain(|p| p.subject != event.subject);
                    }
                }
                RetentionAction::Hold => self.holds.entry(key).or_default().push(Hold {
                    subject: event.subject.clone(),
                    reason: event.reason.clone(),
                    index,
                    time_ms,
                    by: event.by.clone(),
                }),
                RetentionAction::Release => {
                    if let Some(holds) = self.holds.get_mut(&key) {
                        holds.retain(|h| h.subject != event.subject);
                    }
                }
            }
        }
        self.pins.retain(|_, v| !v.is_empty());
        self.holds.retain(|_, v| !v.is_empty());
    }

    /// Folds in a `BlobsDeleted` entry.
    pub fn apply_deleted(&mut self, index: u64, time_ms: u64, event: &BlobsDeleted) {
        let mut list = Vec::with_capacity(event.blobs.len());
        // More than four billion deletion entries would not fit the map's places; their blobs
        // are still deleted and the entries still in the log, only not named by a lookup here.
        let place = u32::try_from(self.deletion_entries.len()).ok();
        for blob in &event.blobs {
            let Ok(digest) = blob.digest.parse::<Digest>() else {
                continue;
            };
            if let Some(place) = place {
                self.tombstones.insert(prefix(&digest), place);
                // The BLAKE3 address shares the map: one more slot per deleted blob.
                if let Some(blake3) = blob
                    .blake3
                    .as_deref()
                    .and_then(|b| b.parse::<Digest>().ok())
                {
                    self.tombstones.insert(prefix(&blake3), place);
                }
            }
            list.push((digest, deleted_copy_created_by(blob, time_ms)));
        }
        self.deletion_entries.push(index);
        self.deletions.push(Deletion {
            index,
            copies: list,
        });
    }

    /// The pins on a blob, lapsed ones included.
    pub fn pins(&self, sha256: &Digest) -> &[Pin] {
        self.pins.get(sha256.bytes()).map_or(&[], Vec::as_slice)
    }

    /// The pins on a blob that have not lapsed at `now_ms`.
    pub fn pinned(&self, sha256: &Digest, now_ms: u64) -> Vec<Pin> {
        self.pins(sha256)
            .iter()
            .filter(|p| p.expires_ms.is_none_or(|e| e > now_ms))
            .cloned()
            .collect()
    }

    /// The legal holds on a blob.
    pub fn holds(&self, sha256: &Digest) -> &[Hold] {
        self.holds.get(sha256.bytes()).map_or(&[], Vec::as_slice)
    }

    /// The blobs pins or holds on `subject` were ever placed on.
    pub fn subjects(&self, subject: &str) -> Vec<Digest> {
        self.subjects
            .get(subject)
            .map(|set| set.iter().map(|b| Digest::sha256(*b)).collect())
            .unwrap_or_default()
    }

    /// Every blob a pin or hold was ever placed on.
    pub fn placed_blobs(&self) -> impl Iterator<Item = Digest> + '_ {
        self.subjects
            .values()
            .flatten()
            .map(|bytes| Digest::sha256(*bytes))
    }

    /// The ledger index of the `BlobsDeleted` entry that may record the latest deletion of a
    /// blob (by either digest): the latest filed under the digest's first 8 bytes. Only a candidate: another
    /// deleted blob may share those bytes, so the caller confirms that the entry names this
    /// digest. (Two deleted blobs sharing 8 bytes, about one chance in 10^7 among two million,
    /// leave the earlier without a named deletion: it is answered as never stored, not
    /// misattributed.)
    pub fn deletion_candidate(&self, digest: &Digest) -> Option<u64> {
        let place = self.tombstones.get(&prefix(digest))?;
        self.deletion_entries.get(place as usize).copied()
    }

    /// The recorded deletions not yet checked as carried out, in ledger order; they are
    /// forgotten here (the ledger keeps them), so each is checked once per process.
    pub fn take_deletions(&mut self) -> Vec<Deletion> {
        std::mem::take(&mut self.deletions)
    }

    /// Forgets the recorded deletion at ledger entry `index` once it has been carried out, so
    /// that its digests are not held until the next collection checks it. The collector's own
    /// entry is usually the last recorded, so the list is searched from its end.
    pub fn carried_out(&mut self, index: u64) {
        if let Some(at) = self.deletions.iter().rposition(|d| d.index == index) {
            self.deletions.remove(at);
        }
    }
}
