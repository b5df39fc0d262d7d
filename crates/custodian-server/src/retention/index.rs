//! Pins, legal holds and deletions as the ledger records them (`BlobRetention` and
//! `BlobsDeleted` entries); part of the registry index, so it is rebuilt by the same replay.

use std::collections::HashMap;

use custodian_core::Digest;
use custodian_core::registry::{BlobRetention, BlobsDeleted, RetentionAction};

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

/// One recorded deletion, for finishing it after a crash.
#[derive(Clone, Debug)]
pub struct Deletion {
    /// The `BlobsDeleted` entry.
    pub index: u64,
    /// When it was recorded.
    pub time_ms: u64,
    /// The blobs.
    pub digests: Vec<Digest>,
}

/// Pins, holds and tombstones by blob.
#[derive(Clone, Debug, Default)]
pub struct RetentionIndex {
    pins: HashMap<[u8; 32], Vec<Pin>>,
    holds: HashMap<[u8; 32], Vec<Hold>>,
    /// Each deleted blob's latest `BlobsDeleted` entry and size: compact, since a collection
    /// may delete millions; the entry's reason and policy are kept once, in `entries`.
    tombstones: HashMap<[u8; 32], (u64, u64)>,
    /// Per `BlobsDeleted` entry: its time, reason and policy.
    entries: HashMap<u64, (u64, String, String)>,
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
        for blob in &event.blobs {
            let Ok(digest) = blob.digest.parse::<Digest>() else {
                continue;
            };
            self.tombstones.insert(*digest.bytes(), (index, blob.size));
            // The BLAKE3 address shares the map: a SHA-256 and a BLAKE3 digest never share 32
            // bytes in practice, and one map keeps the per-deletion cost to one more slot.
            if let Some(blake3) = blob
                .blake3
                .as_deref()
                .and_then(|b| b.parse::<Digest>().ok())
            {
                self.tombstones.insert(*blake3.bytes(), (index, blob.size));
            }
            list.push(digest);
        }
        self.entries
            .insert(index, (time_ms, event.reason.clone(), event.policy.clone()));
        self.deletions.push(Deletion {
            index,
            time_ms,
            digests: list,
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

    /// The latest deletion of a blob (by either digest), if it was ever deleted.
    pub fn tombstone(&self, digest: &Digest) -> Option<Tombstone> {
        let (index, size) = *self.tombstones.get(digest.bytes())?;
        let (time_ms, reason, policy) = self.entries.get(&index)?;
        Some(Tombstone {
            index,
            time_ms: *time_ms,
            reason: reason.clone(),
            policy: policy.clone(),
            size,
        })
    }

    /// The recorded deletions not yet checked as carried out, in ledger order; they are
    /// forgotten here (the ledger keeps them), so each is checked once per process.
    pub fn take_deletions(&mut self) -> Vec<Deletion> {
        std::mem::take(&mut self.deletions)
    }
}
