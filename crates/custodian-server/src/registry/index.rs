//! The registry index: what the ledger says about packages, versions, yanks, data packs, blobs,
//! evidence and attester keys, in memory. It is derived state only: [`Index::replay`] rebuilds it
//! from the ledger at start-up and [`Index::apply`] folds in each entry the registry appends, so
//! the two can never disagree after a crash. Nothing here does I/O beyond reading the ledger.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use custodian_core::Digest;
use custodian_core::badge::Scan;
use custodian_core::dsse::Envelope;
use custodian_core::entry::{Entry, EntryKind};
use custodian_core::keys::{self, KeyHistory};
use custodian_core::note::VerifierKey;
use custodian_core::package::PackageStatement;
use custodian_core::registry::{
    BadgeIssued, DataPackRegistered, EvalPreregistered, KeyEvent, PackagePublished, RunAttested,
    ScanRecorded, VersionYanked,
};
use custodian_storage::LedgerError;
use custodian_storage::ledger::Ledger;

use super::{DataPackRecord, VersionRecord, Yank};

/// Entries replayed per read at start-up: one complete subtree of the log, at this level.
const REPLAY_LEVEL: u8 = 12;
const REPLAY_CHUNK: u64 = 1 << REPLAY_LEVEL;
/// Entries a snapshot lists that are at most this far apart are read as one range.
const SNAPSHOT_READ_GAP: u64 = 64;

/// How many of the latest runs of each eval × model the index keeps. The badge counts the latest
/// run whose key was valid at its ledger time; when a revocation invalidates all of these, the
/// badge asks for a new run (`run_missing`, with each invalid run named) rather than reaching
/// further back — conservative, never greener than the full history.
pub const RUN_WINDOW: usize = 8;

/// One package: its pinned publisher key and its versions.
#[derive(Debug, Default)]
pub struct Package {
    publisher_key: String,
    // Shared so that a lookup (every attestation does one) copies a pointer, not the envelope.
    versions: BTreeMap<semver::Version, Arc<VersionRecord>>,
}

/// A package (or data pack) that refers to a blob, and whether it is private.
#[derive(Clone, Debug)]
pub struct BlobRef {
    /// The package name.
    pub name: String,
    /// Whether the package (or data pack) is private.
    pub private: bool,
}

/// The registry's view of the ledger: every package version with its yank and data pack, which
/// packages refer to each blob, each version's evidence and the attester keys. Rebuilt from the
/// ledger at start-up ([`Index::replay`]) and updated after each append ([`Index::apply`]).
#[derive(Default)]
pub struct Index {
    packages: BTreeMap<String, Package>,
    blobs: HashMap<[u8; 32], Vec<BlobRef>>,
    /// Runs, scans and badges per `(name, version)`.
    evidence: HashMap<(String, String), VersionEvidence>,
    /// Attester keys ever introduced (registered or rotated to), by handle (`name+hexid`).
    attesters: HashMap<String, Attester>,
    /// Every KeyEvent, for judging signatures at their ledger time.
    keys: KeyHistory,
    /// Entries whose stored bytes do not match the leaf hashes the signed tree records, found
    /// at replay. They were not applied, so state derived from the log may be missing them.
    damaged: Vec<u64>,
    /// The OCI repositories (`OciManifestPut` and `OciDeleted` entries).
    oci: crate::oci::index::OciIndex,
    /// Pins, legal holds and deletions (`BlobRetention` and `BlobsDeleted` entries).
    retention: crate::retention::index::RetentionIndex,
    /// Every entry below this index has been read from the ledger (by replay or by following
    /// it); see [`Index::ingest`].
    processed_below: u64,
    /// Entries at or above `processed_below` already applied (this daemon's own appends, applied
    /// as they are made), so that following the ledger does not apply them twice. Kept only
    /// while [`Index::track_applied`] says so: on a ledger nobody else appends to, nothing is
    /// followed after the replay, and the set would only grow.
    applied_above: std::collections::BTreeSet<u64>,
    /// Whether `applied_above` is kept (the daemon follows the ledger).
    tracking: bool,
    /// The entries this index is built from: every service entry applied, less the runs that
    /// have left their window. Applying just these, in ledger order, rebuilds the same index;
    /// this is what a snapshot lists (see [`super::snapshot`]).
    kept: BTreeSet<u64>,
}

impl Index {
    /// Remembers the entries this daemon applies as it appends them, so that following a ledger
    /// other daemons append to does not apply them again. Each follow forgets those it passes.
    pub fn track_applied(&mut self) {
        self.tracking = true;
    }

    /// Every entry below this index has been read from the ledger.
    pub fn processed_below(&self) -> u64 {
        self.processed_below
    }

    /// Pins, legal holds and deletions.
    pub fn retention(&self) -> &crate::retention::index::RetentionIndex {
        &self.retention
    }

    /// Pins, legal holds and deletions, to take the recorded deletions out.
    pub fn retention_mut(&mut self) -> &mut crate::retention::index::RetentionIndex {
        &mut self.retention
    }

    /// The OCI repositories.
    pub fn oci(&self) -> &crate::oci::index::OciIndex {
        &self.oci
    }

    /// Every blob a package version, data pack or sealed entry refers to.
    pub fn referenced_blobs(&self) -> impl Iterator<Item = Digest> + '_ {
        self.blobs
            .iter()
            .filter(|(_, refs)| !refs.is_empty())
            .map(|(bytes, _)| Digest::sha256(*bytes))
    }

    fn add_ref(&mut self, sha256: &Digest, name: &str, private: bool) {
        self.blobs
            .entry(*sha256.bytes())
            .or_default()
            .push(BlobRef {
                name: name.to_string(),
                private,
            });
    }

    /// Records the body of a sealed event as readable exactly as the event is: by anyone for a
    /// public event, with a read grant on the package for a private one.
    pub fn add_body(&mut self, body: &Digest, entry: &Entry) {
        match custodian_core::registry::private_package(entry) {
            Some(name) => self.add_ref(body, &name, true),
            None => self.add_ref(body, "", false),
        }
    }

    /// Applies one service entry (registry or evidence); other kinds are ignored. An error means
    /// the entry does not decode as its kind says.
    pub fn apply(&mut self, index: u64, entry: &Entry) -> Result<(), String> {
        // Each entry is applied once, whether this daemon appended it or read it from a ledger
        // other daemons share.
        if index < self.processed_below || (self.tracking && !self.applied_above.insert(index)) {
            return Ok(());
        }
        // Kept unless it does not apply, or (a run) falls out of its window at once.
        if entry.kind.is_service() {
            self.kept.insert(index);
        }
        let applied = self.apply_kind(index, entry);
        if applied.is_err() {
            self.kept.remove(&index);
        }
        applied
    }

    fn apply_kind(&mut self, index: u64, entry: &Entry) -> Result<(), String> {
        match entry.kind {
            EntryKind::PackagePublished => {
                let event: PackagePublished = entry.event().map_err(|e| e.to_string())?;
                let version = semver::Version::parse(&event.version).map_err(|e| e.to_string())?;
                let envelope =
                    Envelope::parse(event.envelope.as_bytes()).map_err(|e| e.to_string())?;
                let statement = PackageStatement::from_json(
                    &envelope.payload_bytes().map_err(|e| e.to_string())?,
                )
                .map_err(|e| e.to_string())?;
                let files = statement.tree.files().to_vec();
                for file in &files {
                    self.add_ref(&file.sha256, &event.name, event.private);
                }
                let package = self.packages.entry(event.name.clone()).or_default();
                if package.publisher_key.is_empty() {
                    package.publisher_key = event.publisher_key.clone();
                }
                // Versions are immutable: the first publication in ledger order stands (two
                // daemons sharing a ledger can race to publish one version; see docs/storage.md).
                package.versions.entry(version).or_insert_with(|| {
                    Arc::new(VersionRecord {
                        event,
                        files,
                        index,
                        time_ms: entry.time_ms,
                        yanked: None,
                        data_pack: None,
                    })
                });
            }
            EntryKind::VersionYanked => {
                let event: VersionYanked = entry.event().map_err(|e| e.to_string())?;
                if let Some(v) = self.version_mut(&event.name, &event.version) {
                    v.yanked = Some(Yank {
                        reason: event.reason,
                        index,
                        time_ms: entry.time_ms,
                    });
                }
            }
            EntryKind::DataPackRegistered => {
                let event: DataPackRegistered = entry.event().map_err(|e| e.to_string())?;
                if let Some(sha256) = event.pack.sha256.as_deref() {
                    let digest: Digest = sha256.parse().map_err(|e| format!("{e}"))?;
                    self.add_ref(&digest, &event.name, event.private);
                }
                let (name, version) = (event.name.clone(), event.version.clone());
                if let Some(v) = self.version_mut(&name, &version) {
                    v.data_pack = Some(DataPackRecord {
                        event,
                        index,
                        time_ms: entry.time_ms,
                    });
                }
            }
            EntryKind::OciManifestPut => {
                let event: custodian_core::registry::OciManifestPut =
                    entry.event().map_err(|e| e.to_string())?;
                self.oci.apply_put(index, entry.time_ms, &event)?;
            }
            EntryKind::OciDeleted => {
                let event: custodian_core::registry::OciDeleted =
                    entry.event().map_err(|e| e.to_string())?;
                self.oci.apply_delete(index, entry.time_ms, &event)?;
            }
            EntryKind::BlobRetention => {
                let event: custodian_core::registry::BlobRetention =
                    entry.event().map_err(|e| e.to_string())?;
                self.retention.apply_retention(index, entry.time_ms, &event);
            }
            EntryKind::BlobsDeleted => {
                let event: custodian_core::registry::BlobsDeleted =
                    entry.event().map_err(|e| e.to_string())?;
                self.retention.apply_deleted(index, entry.time_ms, &event);
            }
            EntryKind::RunAttested
            | EntryKind::ScanRecorded
            | EntryKind::KeyEvent
            | EntryKind::EvalPreregistered
            | EntryKind::BadgeIssued => self.apply_evidence(index, entry)?,
            _ => {}
        }
        Ok(())
    }

    fn version_mut(&mut self, name: &str, version: &str) -> Option<&mut VersionRecord> {
        let version = semver::Version::parse(version).ok()?;
        self.packages
            .get_mut(name)?
            .versions
            .get_mut(&version)
            .map(Arc::make_mut)
    }

    /// A version by name and parsed version.
    pub fn version(&self, name: &str, version: &semver::Version) -> Option<&Arc<VersionRecord>> {
        self.packages.get(name)?.versions.get(version)
    }

    /// A package by name.
    pub fn package(&self, name: &str) -> Option<&Package> {
        self.packages.get(name)
    }

    /// Every package, by name.
    pub fn packages(&self) -> impl Iterator<Item = (&String, &Package)> {
        self.packages.iter()
    }

    /// The packages and data packs that refer to a blob (by its sha256).
    pub fn blob_refs(&self, sha256: &Digest) -> Option<&[BlobRef]> {
        self.blobs.get(sha256.bytes()).map(Vec::as_slice)
    }

    /// The evidence recorded for one version.
    pub fn evidence(&self, name: &str, version: &str) -> Option<&VersionEvidence> {
        self.evidence.get(&(name.to_string(), version.to_string()))
    }

    /// An attester key ever introduced, by handle (`name+hexid`); whether it still counts is
    /// [`Index::keys`]' business.
    pub fn attester(&self, handle: &str) -> Option<&Attester> {
        self.attesters.get(handle)
    }

    /// Every KeyEvent, in ledger order.
    pub fn keys(&self) -> &KeyHistory {
        &self.keys
    }

    /// Entries whose stored bytes did not match the signed tree at replay (not applied).
    pub fn damaged(&self) -> &[u64] {
        &self.damaged
    }

    /// The entries the index is built from.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> &BTreeSet<u64> {
        &self.kept
    }

    /// Everything the index holds that a test compares, in an order that does not depend on
    /// hash maps' iteration: two indexes built from the same entries print the same.
    #[cfg(test)]
    pub(crate) fn fingerprint(&self) -> String {
        let sorted = |mut lines: Vec<String>| {
            lines.sort();
            lines.join("\n")
        };
        [
            format!("packages {:?}", self.packages),
            sorted(self.blobs.iter().map(|b| format!("blob {b:?}")).collect()),
            sorted(
                self.evidence
                    .iter()
                    .map(|e| format!("evidence {e:?}"))
                    .collect(),
            ),
            sorted(
                self.attesters
                    .iter()
                    .map(|a| format!("attester {a:?}"))
                    .collect(),
            ),
            format!("keys {:?}", self.keys),
            format!("damaged {:?}", self.damaged),
            format!("processed below {}", self.processed_below),
            format!("kept {:?}", self.kept),
        ]
        .join("\n")
    }

    /// How many versions the index holds, across all packages.
    pub fn version_count(&self) -> usize {
        self.packages.values().map(|p| p.versions.len()).sum()
    }
}

impl Package {
    /// The publisher key its first version pinned.
    pub fn publisher_key(&self) -> &str {
        &self.publisher_key
    }

    /// Its versions, oldest first.
    pub fn versions(&self) -> impl Iterator<Item = &Arc<VersionRecord>> {
        self.versions.values()
    }

    /// One version.
    pub fn version(&self, version: &semver::Version) -> Option<&Arc<VersionRecord>> {
        self.versions.get(version)
    }
}

impl Index {
    /// Applies an evidence entry to the index.
    fn apply_evidence(&mut self, index: u64, entry: &Entry) -> Result<(), String> {
        match entry.kind {
            EntryKind::RunAttested => {
                let e: RunAttested = entry.event().map_err(|e| e.to_string())?;
                let slot = self
                    .evidence
                    .entry((e.name.clone(), e.version.clone()))
                    .or_default();
                let runs = slot.runs.entry((e.eval_id, e.model)).or_default();
                // In ledger order, whatever order concurrent attestations are applied in, so the
                // window is the same as a replay's (and a snapshot's, which lists what it keeps).
                let at = runs.partition_point(|run| run.index < index);
                runs.insert(
                    at,
                    RunRef {
                        index,
                        time_ms: entry.time_ms,
                        passed: e.passed,
                        data_pack: e.data_pack_sha256,
                        context: e.context_sha256,
                        runner: e.runner,
                        attester: e.attester_key,
                    },
                );
                // A bounded window, so memory does not grow with the number of runs; the run
                // that leaves it is no longer one the index is built from.
                if runs.len() > RUN_WINDOW {
                    let left = runs.remove(0);
                    self.kept.remove(&left.index);
                }
            }
            EntryKind::ScanRecorded => {
                let e: ScanRecorded = entry.event().map_err(|e| e.to_string())?;
                self.evidence
                    .entry((e.name, e.version))
                    .or_default()
                    .scans
                    .push(Scan {
                        index,
                        scanner: e.scanner,
                        root: e.root,
                        verdict: e.verdict,
                    });
            }
            EntryKind::EvalPreregistered => {
                let e: EvalPreregistered = entry.event().map_err(|e| e.to_string())?;
                self.evidence
                    .entry((e.name.clone(), e.version.clone()))
                    .or_default()
                    .preregistrations
                    .push((index, entry.time_ms, Arc::new(e)));
            }
            EntryKind::KeyEvent => {
                let e: KeyEvent = entry.event().map_err(|e| e.to_string())?;
                let key = VerifierKey::parse(&e.key).map_err(|err| err.to_string())?;
                match (e.role.as_str(), e.action()) {
                    (keys::ATTESTER, action @ (keys::INTRODUCE | keys::ROTATE)) => {
                        if action == keys::ROTATE
                            && let Some(previous) = e
                                .previous
                                .as_deref()
                                .and_then(|p| VerifierKey::parse(p).ok())
                            && let Some(old) = self.attesters.get_mut(&previous.handle())
                        {
                            old.in_force = false;
                        }
                        self.attesters.insert(
                            key.handle(),
                            Attester {
                                key,
                                namespaces: e.namespaces.clone(),
                                index,
                                in_force: true,
                            },
                        );
                    }
                    (keys::ATTESTER, keys::REVOKE) => {
                        if let Some(revoked) = self.attesters.get_mut(&key.handle()) {
                            revoked.in_force = false;
                        }
                    }
                    // A publisher rotation or re-introduction moves the pin of each package it
                    // names, from this entry on; earlier versions keep the key they were signed
                    // with.
                    (keys::PUBLISHER, keys::INTRODUCE | keys::ROTATE) => {
                        for name in &e.namespaces {
                            if let Some(package) = self.packages.get_mut(name) {
                                package.publisher_key = e.key.clone();
                            }
                        }
                    }
                    _ => {}
                }
                self.keys.add(index, entry.time_ms, e);
            }
            EntryKind::BadgeIssued => {
                let e: BadgeIssued = entry.event().map_err(|e| e.to_string())?;
                let key = (e.name.clone(), e.version.clone());
                self.evidence.entry(key).or_default().badge = Some((index, e));
            }
            _ => {}
        }
        Ok(())
    }
}

impl Index {
    /// Rebuilds the index from every entry of the ledger. Each entry is checked against the leaf
    /// hash the signed tree records first; a damaged one is listed in [`Index::damaged`], not applied.
    pub fn replay(
        ledger: &Ledger,
        body: &dyn Fn(&Digest) -> Result<Vec<u8>, String>,
    ) -> Result<Index, LedgerError> {
        let mut state = Index::default();
        let size = ledger.latest().size;
        let applied = state.follow(ledger, size, body)?;
        tracing::info!(
            entries = size,
            registry_events = applied,
            "registry rebuilt from the ledger"
        );
        Ok(state)
    }

    /// Counts every entry below `size` as read, without reading them: for a caller that knows
    /// every service entry below it is applied (`Registry::catch_up`).
    pub fn advance_to(&mut self, size: u64) {
        if size > self.processed_below {
            self.processed_below = size;
            self.applied_above = self.applied_above.split_off(&size);
        }
    }

    /// What a snapshot of this index lists: the size below which it has read every entry, the
    /// entries below it that the index is built from, and those found damaged.
    pub fn snapshot_lists(&self) -> (u64, Vec<u64>, Vec<u64>) {
        let size = self.processed_below;
        let mut damaged: Vec<u64> = self.damaged.iter().copied().filter(|i| *i < size).collect();
        damaged.sort_unstable();
        damaged.dedup();
        (size, self.kept.range(..size).copied().collect(), damaged)
    }

    /// Rebuilds the index from a snapshot whose root the caller has checked against the log:
    /// each entry it lists is read, checked against the leaf hash the signed tree records and
    /// applied in ledger order (a damaged one is named, as a replay names it), then the entries
    /// past its size are followed as a replay reads them.
    pub fn from_snapshot(
        ledger: &Ledger,
        snapshot: &super::Snapshot,
        body: &dyn Fn(&Digest) -> Result<Vec<u8>, String>,
    ) -> Result<Index, LedgerError> {
        let mut state = Index::default();
        let kept = &snapshot.kept;
        let mut i = 0;
        while i < kept.len() {
            // Listed entries close together are read as one range (a dense stretch of registry
            // entries costs what a replay of it costs; a lone one, two point reads).
            let first = kept[i];
            let mut j = i + 1;
            while j < kept.len()
                && kept[j] - kept[j - 1] <= SNAPSHOT_READ_GAP
                && kept[j] - first < REPLAY_CHUNK
            {
                j += 1;
            }
            let last = kept[j - 1];
            let entries = ledger.entries(first, last + 1)?;
            let leaves = ledger.leaf_hashes(first, last + 1)?;
            for &index in &kept[i..j] {
                let offset = (index - first) as usize;
                let (Some(bytes), Some(leaf)) = (entries.get(offset), leaves.get(offset)) else {
                    return Err(LedgerError::Corrupt(format!(
                        "entry {index}, listed in the registry index snapshot, was not read"
                    )));
                };
                let actual = custodian_core::merkle::leaf_hash(bytes);
                if actual != *leaf {
                    state.damaged_entry(index, &actual, leaf);
                    continue;
                }
                state.ingest(index, bytes, body)?;
            }
            i = j;
        }
        state.damaged.extend(&snapshot.damaged);
        state.damaged.sort_unstable();
        state.damaged.dedup();
        state.processed_below = snapshot.size;
        let size = ledger.latest().size;
        let applied = state.follow(ledger, size, body)?;
        tracing::debug!(
            listed = kept.len(),
            followed = size - snapshot.size,
            applied,
            "registry index restored"
        );
        Ok(state)
    }

    /// Reads and applies the ledger's entries from [`Index::processed_below`] up to `size`
    /// (entries this daemon already applied are skipped); returns how many were applied. This
    /// is the replay at start-up, and how a daemon follows a ledger other daemons append to.
    pub fn follow(
        &mut self,
        ledger: &Ledger,
        size: u64,
        body: &dyn Fn(&Digest) -> Result<Vec<u8>, String>,
    ) -> Result<u64, LedgerError> {
        let start = self.processed_below;
        if size <= start.saturating_add(REPLAY_CHUNK) {
            // A follow of a few new entries: not worth a thread.
            let mut applied = 0u64;
            if start < size {
                applied = self.apply_chunk(ledger, Chunk::read(ledger, start, size)?, body)?;
            }
            return Ok(applied);
        }
        // A replay reads and hashes the entries on two threads of its own (alternate chunks), a
        // few chunks ahead of this one, which checks and applies them in order. The chunks are
        // the log's complete subtrees of 4,096 entries (the first and last may be partial), so
        // each is checked against the one hash the tree stores for it rather than against 4,096
        // stored leaf hashes: reading every stored hash of the range took a third of the replay.
        // 10,000,000 entries took 11.8 s on one thread, 7.3–7.8 s with one reader thread for the
        // entries and one for the stored leaf hashes.
        std::thread::scope(|scope| {
            // The first multiple of the chunk size past `from`.
            let boundary = |from: u64| (from / REPLAY_CHUNK + 1) * REPLAY_CHUNK;
            let chunks = move || {
                std::iter::successors(Some(start), move |&from| {
                    Some(boundary(from)).filter(|next| *next < size)
                })
                .map(move |from| (from, boundary(from).min(size)))
            };
            let read = |(from, to)| Chunk::read(ledger, from, to);
            let even = ahead(scope, chunks().step_by(2), read);
            let odd = ahead(scope, chunks().skip(1).step_by(2), read);
            let mut applied = 0u64;
            for (n, _) in chunks().enumerate() {
                let chunk = if n % 2 == 0 { even.recv() } else { odd.recv() };
                // A closed channel means its reader stopped; the check below names where.
                let Ok(chunk) = chunk else { break };
                applied += self.apply_chunk(ledger, chunk?, body)?;
            }
            // A reader stops early only at an error, which the loop returned, or by panicking.
            if self.processed_below != size {
                return Err(LedgerError::Backend {
                    backend: "registry replay",
                    message: format!(
                        "a reader thread stopped before entry {} of {size}",
                        self.processed_below
                    ),
                });
            }
            Ok(applied)
        })
    }

    /// Checks the entries of a chunk read from the ledger against what the tree records for
    /// them, and applies them; returns how many were applied.
    fn apply_chunk(
        &mut self,
        ledger: &Ledger,
        chunk: Chunk,
        body: &dyn Fn(&Digest) -> Result<Vec<u8>, String>,
    ) -> Result<u64, LedgerError> {
        let Chunk {
            start,
            entries,
            actual,
            recorded,
        } = chunk;
        let end = start + entries.len() as u64;
        // Every entry is checked against what the signed tree records before anything is derived
        // from it: a damaged byte must not become a registry fact (a run that passes, a version
        // not yanked).
        let leaves = match recorded {
            Recorded::Leaves(leaves) => Some(leaves),
            Recorded::Subtree { recorded, computed } if computed == recorded => None,
            Recorded::Subtree { recorded, .. } => {
                // Something in the chunk differs from what the tree records: compare each entry
                // with its own stored leaf hash to name the damaged ones.
                let leaves = ledger.leaf_hashes(start, end)?;
                if leaves == actual {
                    tracing::error!(
                        first = start,
                        last = end - 1,
                        %recorded,
                        "the stored hash of these entries' subtree does not match them, though each matches its own stored leaf hash: a stored interior hash is damaged, and proofs through it will fail their checks"
                    );
                }
                Some(leaves)
            }
        };
        let mut applied = 0u64;
        for (offset, (bytes, actual)) in entries.into_iter().zip(&actual).enumerate() {
            let index = start + offset as u64;
            if self.applied_above.contains(&index) {
                continue;
            }
            if let Some(leaves) = &leaves {
                let leaf = leaves.get(offset).ok_or_else(|| {
                    LedgerError::Corrupt(format!("no recorded leaf hash for entry {index}"))
                })?;
                if actual != leaf {
                    self.damaged_entry(index, actual, leaf);
                    continue;
                }
            }
            applied += u64::from(self.ingest(index, &bytes, body)?);
        }
        self.processed_below = end;
        self.applied_above = self.applied_above.split_off(&end);
        Ok(applied)
    }

    /// Names an entry whose bytes do not hash to the leaf hash the tree records: it is not
    /// applied, and badges are withheld while any is named.
    fn damaged_entry(
        &mut self,
        index: u64,
        actual: &custodian_core::merkle::Hash,
        recorded: &custodian_core::merkle::Hash,
    ) {
        tracing::error!(
            index,
            %actual,
            %recorded,
            "ledger entry is damaged; it is not applied, and badges are withheld until `custodian scrub` finds the log clean"
        );
        self.damaged.push(index);
    }

    /// Applies one entry read from the ledger and checked against the tree, if it is a service
    /// entry (a sealed one through its body); returns whether it was applied.
    fn ingest(
        &mut self,
        index: u64,
        bytes: &[u8],
        body: &dyn Fn(&Digest) -> Result<Vec<u8>, String>,
    ) -> Result<bool, LedgerError> {
        // Most entries are not the registry's: skip them without decoding.
        if let Some(kind) = custodian_core::entry::peek_kind(bytes)
            && !EntryKind::is_service_name(kind)
        {
            return Ok(false);
        }
        let mut entry = Entry::decode(bytes)
            .map_err(|e| LedgerError::Corrupt(format!("entry {index} does not decode: {e}")))?;
        // A sealed entry is applied as the event in its body, which must be the one the log
        // committed to; a missing or wrong body is damage, like a damaged entry.
        if entry.kind == EntryKind::Sealed {
            let unsealed = custodian_core::seal::commitment(&entry)
                .map_err(|e| e.to_string())
                .and_then(|(digest, _)| {
                    let bytes = body(&digest)?;
                    let event =
                        custodian_core::seal::unseal(&entry, &bytes).map_err(|e| e.to_string())?;
                    Ok((digest, event))
                });
            match unsealed {
                Ok((digest, event)) => {
                    self.add_body(&digest, &event);
                    entry = event;
                }
                Err(err) => {
                    tracing::error!(index, %err, "the body of a sealed entry cannot be read; it is not applied, and badges are withheld until `custodian scrub` finds the store clean");
                    self.damaged.push(index);
                    return Ok(false);
                }
            }
        }
        if !entry.kind.is_service() {
            return Ok(false);
        }
        // These kinds are appended only by the registry and evidence services, so a bad one
        // means the code that wrote it was wrong: skip it loudly rather than refuse to start.
        match self.apply(index, &entry) {
            Ok(()) => Ok(true),
            Err(err) => {
                tracing::error!(index, %err, "skipping a registry entry that does not apply");
                Ok(false)
            }
        }
    }
}

/// A chunk of entries read from the ledger for a replay, with their leaf hashes and what the tree
/// records for them.
struct Chunk {
    /// The index of its first entry.
    start: u64,
    /// The entries as stored.
    entries: Vec<Vec<u8>>,
    /// Each entry's leaf hash, computed from its bytes.
    actual: Vec<custodian_core::merkle::Hash>,
    /// What the tree records for them.
    recorded: Recorded,
}

/// What the tree records for a chunk of entries: the stored hash of the complete subtree the chunk
/// is (beside the root computed from the entries), or else each entry's stored leaf hash.
enum Recorded {
    Subtree {
        recorded: custodian_core::merkle::Hash,
        computed: custodian_core::merkle::Hash,
    },
    Leaves(Vec<custodian_core::merkle::Hash>),
}

impl Chunk {
    /// Reads entries `[from, to)` and what the tree records for them, and hashes the entries
    /// (the part of a replay that can run ahead of applying them).
    fn read(ledger: &Ledger, from: u64, to: u64) -> Result<Chunk, LedgerError> {
        let entries = ledger.entries(from, to)?;
        let actual: Vec<custodian_core::merkle::Hash> = entries
            .iter()
            .map(|bytes| custodian_core::merkle::leaf_hash(bytes))
            .collect();
        let recorded = if from.is_multiple_of(REPLAY_CHUNK) && to - from == REPLAY_CHUNK {
            Recorded::Subtree {
                recorded: ledger.subtree_hash(REPLAY_LEVEL, from / REPLAY_CHUNK)?,
                computed: custodian_core::merkle::subtree_root(&actual),
            }
        } else {
            Recorded::Leaves(ledger.leaf_hashes(from, to)?)
        };
        Ok(Chunk {
            start: from,
            entries,
            actual,
            recorded,
        })
    }
}

/// Runs `read` over `chunks` in order on a thread of `scope`, at most two chunks ahead of the
/// receiver; it stops at the first error (after sending it) or when the receiver is dropped.
fn ahead<'scope, C, T>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    chunks: impl Iterator<Item = C> + Send + 'scope,
    read: impl Fn(C) -> Result<T, LedgerError> + Send + 'scope,
) -> std::sync::mpsc::Receiver<Result<T, LedgerError>>
where
    T: Send + 'scope,
{
    let (sender, receiver) = std::sync::mpsc::sync_channel(2);
    scope.spawn(move || {
        for chunk in chunks {
            let result = read(chunk);
            let failed = result.is_err();
            if sender.send(result).is_err() || failed {
                break;
            }
        }
    });
    receiver
}

/// One attested run of an eval × model.
#[derive(Clone, Debug)]
pub struct RunRef {
    /// Its ledger index.
    pub index: u64,
    /// Its integration time.
    pub time_ms: u64,
    /// Whether it passed.
    pub passed: bool,
    /// The data pack it read.
    pub data_pack: Option<String>,
    /// Its context fingerprint.
    pub context: String,
    /// The runner.
    pub runner: String,
    /// The attester key that signed it.
    pub attester: String,
}

/// The evidence of one version.
#[derive(Clone, Debug, Default)]
pub struct VersionEvidence {
    /// The latest runs per (eval, model), at most [`RUN_WINDOW`], in ledger order: the latest
    /// is last, and the policy falls back to an earlier one when a later one's key did not count
    /// at its time.
    pub runs: BTreeMap<(String, String), Vec<RunRef>>,
    /// Every pre-registration of the version's evals: `(index, time_ms, event)`, in ledger order.
    pub preregistrations: Vec<(u64, u64, Arc<EvalPreregistered>)>,
    /// Every scan, as the badge policy reads them.
    pub scans: Vec<Scan>,
    /// The last badge issued, with its entry index.
    pub badge: Option<(u64, BadgeIssued)>,
}

/// An attester key as introduced (registered, or rotated to).
#[derive(Clone, Debug)]
pub struct Attester {
    /// The key.
    pub key: VerifierKey,
    /// Its namespaces.
    pub namespaces: Vec<String>,
    /// The KeyEvent that introduced it.
    pub index: u64,
    /// False once it was rotated away or revoked: it signs nothing new.
    pub in_force: bool,
}
