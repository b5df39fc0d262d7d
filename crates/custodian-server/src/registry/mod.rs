//! The Behavior Package registry: publication, yanking and data packs, shared by the gRPC and
//! REST front ends.
//!
//! The ledger is the registry's only durable state. Every publication, yank and data-pack
//! registration is a ledger entry; the in-memory index here is rebuilt from those entries at
//! start-up and updated after each append, so the two can never disagree after a crash. Writes
//! are serialized by one lock, which makes "check that the version is new, then append" atomic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use custodian_core::datapack::DataPackSpec;
use custodian_core::dsse::Envelope;
use custodian_core::entry::{Entry, EntryKind};
use custodian_core::manifest::{Manifest, Problem, Report, check_name};
use custodian_core::note::VerifierKey;
use custodian_core::package::{FileEntry, MANIFEST_FILE, PackageStatement};
use custodian_core::registry::{
    DataPack, DataPackMode, DataPackRegistered, Event, PackagePublished, VersionYanked,
    private_package, to_payload,
};
use custodian_core::{Algorithm, Digest, promptpack};
use custodian_storage::ledger::{Condition, Ledger};
use custodian_storage::{BlobStore, ByteRange, LedgerError, PutOutcome, StorageError};
use futures::TryStreamExt as _;

pub mod index;
pub mod snapshot;
#[cfg(test)]
mod tests;

pub use index::{BlobRef, Index, Package};
pub use snapshot::{Snapshot, SnapshotError};

use crate::auth::{Principal, Scope};
use crate::sequencer::Sequencer;

/// The largest YAML file publication reads to check it (manifest and PromptPack resources).
const MAX_YAML_BYTES: u64 = 1 << 20;
/// The most YAML bytes publication reads in total.
const MAX_YAML_TOTAL: u64 = 16 << 20;
/// The registry license ids a daemon accepts unless configured otherwise: the ids the seed
/// documents use (`private-commercial`, seed 000's customer-support-classifier).
pub const DEFAULT_REGISTRY_LICENSES: [&str; 1] = ["private-commercial"];

/// Why a registry operation was refused. Each variant maps to one gRPC code and one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Bad input; the message names the field and value.
    #[error("{0}")]
    InvalidArgument(String),
    /// The package's files do not pass validation; every problem is listed.
    #[error("the package is not valid:\n{}", .0.error_text())]
    Invalid(Report),
    /// No such package, version or data pack (also what a caller without a grant sees).
    #[error("{0}")]
    NotFound(String),
    /// The version (or data pack) exists with other content.
    #[error("{0}")]
    AlreadyExists(String),
    /// A token is needed.
    #[error("{0}")]
    Unauthenticated(String),
    /// The token lacks the scope or namespace.
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is valid but the state does not allow it (e.g. files not uploaded yet).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The ledger failed.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// Blob storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A published version as the registry knows it.
#[derive(Clone, Debug)]
pub struct VersionRecord {
    /// The publication event.
    pub event: PackagePublished,
    /// The files, sorted by path.
    pub files: Vec<FileEntry>,
    /// The ledger index of the publication.
    pub index: u64,
    /// Its integration time.
    pub time_ms: u64,
    /// The yank, if any.
    pub yanked: Option<Yank>,
    /// The registered data pack, if any.
    pub data_pack: Option<DataPackRecord>,
}

impl VersionRecord {
    /// The hosted data pack and its `sha256:` root, if the version has one (external data
    /// packs are not in custody, so nothing scans them).
    pub fn hosted_data_pack(&self) -> Option<(&DataPackRecord, &str)> {
        let pack = self.data_pack.as_ref()?;
        if pack.event.pack.mode != DataPackMode::Hosted {
            return None;
        }
        Some((pack, pack.event.pack.sha256.as_deref()?))
    }
}

/// A version's yank, as the ledger recorded it.
#[derive(Clone, Debug)]
pub struct Yank {
    /// Why the version must not be used.
    pub reason: String,
    /// The `VersionYanked` entry's ledger index.
    pub index: u64,
    /// Its integration time, Unix milliseconds.
    pub time_ms: u64,
}

/// A registered data pack.
#[derive(Clone, Debug)]
pub struct DataPackRecord {
    /// The registration event.
    pub event: DataPackRegistered,
    /// Its ledger index.
    pub index: u64,
    /// Its integration time.
    pub time_ms: u64,
}

/// The outcome of a publication, yank or registration: the record and its ledger receipt.
pub struct Recorded<T> {
    /// What was recorded (or found already recorded).
    pub record: T,
    /// The receipt of the ledger entry.
    pub receipt: custodian_core::receipt::Receipt,
    /// True if identical content was already recorded and nothing new was appended.
    pub already: bool,
    /// Warnings from validation.
    pub warnings: Vec<Problem>,
}

/// What a hosted data-pack upload declares alongside its bytes.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostedMeta {
    /// The data's license (required).
    #[serde(default)]
    pub license: String,
    /// The digest the bytes must have; the upload is refused and nothing kept if they do not.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Provenance as a JSON object.
    #[serde(default)]
    pub provenance: Option<serde_json::Value>,
    /// The eval set built from the data.
    #[serde(default)]
    pub eval_set_uri: Option<String>,
    /// `inherit` (default), `public` or `private`.
    #[serde(default)]
    pub visibility: Option<String>,
    /// The data artifact's logical version.
    #[serde(default)]
    pub version: Option<String>,
    /// The file name to offer on download.
    #[serde(default)]
    pub filename: Option<String>,
}

/// A version's manifest, parsed, with its bytes.
pub(crate) type ParsedManifest = Arc<(Manifest, Vec<u8>)>;

/// The registry.
pub struct Registry {
    store: BlobStore,
    sequencer: Sequencer,
    index: Arc<RwLock<Index>>,
    /// Where the index's snapshot is kept, when it is.
    snapshot: Option<SnapshotSlot>,
    /// This daemon's appends between their commit and their application ([`Unapplied`]).
    unapplied: std::sync::atomic::AtomicU64,
    /// Whether an append was given up after it may have committed, since the last follow.
    gave_up: std::sync::atomic::AtomicBool,
    pub(crate) writes: tokio::sync::Mutex<()>,
    /// Bounds the attestations being checked at once, across all callers: each holds its
    /// envelope in several forms until appended, so this bounds the daemon's memory.
    pub(crate) attest_permits: Arc<tokio::sync::Semaphore>,
    /// Evidence older than this sends a badge to review.
    pub(crate) badge_max_age_ms: std::sync::atomic::AtomicU64,
    /// Parsed manifests by manifest digest, loaded from custody on first use.
    pub(crate) manifests: std::sync::Mutex<HashMap<String, ParsedManifest>>,
    /// The registry's own license ids that count as machine-readable next to SPDX expressions
    /// (badge policy v3); listed in every badge.
    pub(crate) registry_licenses: std::sync::RwLock<Vec<String>>,
    /// Bounds the built-in scans running at once.
    pub(crate) scan_permits: tokio::sync::Semaphore,
    /// The external scanners' queues, once started.
    pub(crate) external: std::sync::OnceLock<crate::scan::ExternalQueues>,
}

/// Where a registry keeps its index snapshot, and the size of the last one it saved.
struct SnapshotSlot {
    path: std::path::PathBuf,
    written: std::sync::atomic::AtomicU64,
    /// One save at a time: two would race to rename their files.
    saving: tokio::sync::Mutex<()>,
}

/// Entries a follow applies per hold of the index's write lock.
const FOLLOW_STEP: u64 = 4096;

/// An append of this daemon's from before its commit until its entry is applied. While none is
/// under way, and none was given up between its commit and its application, every service entry
/// of a ledger only this daemon appends to is in the index, so the index can count the whole log
/// as read without reading it (`Registry::catch_up`).
struct Unapplied<'a> {
    registry: &'a Registry,
    applied: bool,
}

impl<'a> Unapplied<'a> {
    fn new(registry: &'a Registry) -> Self {
        registry
            .unapplied
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Unapplied {
            registry,
            applied: false,
        }
    }

    fn applied(mut self) {
        self.applied = true;
    }
}

impl Drop for Unapplied<'_> {
    fn drop(&mut self) {
        // An append given up (an error after its commit, or a caller gone) may have committed
        // an entry nobody applies: the next catch-up reads the log. Marked before the count
        // falls, so whoever sees the count at zero sees the mark.
        if !self.applied {
            self.registry
                .gave_up
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.registry
            .unapplied
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The index rebuilt from the snapshot at `path`, or `None` (logged) when there is no usable
/// one: none yet, damaged, of another log (its root is not this log's at its size), or one
/// whose entries cannot be read.
fn restore(
    ledger: &Ledger,
    path: &std::path::Path,
    body: &dyn Fn(&Digest) -> Result<Vec<u8>, String>,
) -> Option<Index> {
    let snapshot = match Snapshot::read(path) {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => return None,
        Err(err) => {
            tracing::warn!(%err, "replaying the whole ledger instead");
            return None;
        }
    };
    match ledger.root_at(snapshot.size) {
        Ok(root) if root == snapshot.root => {}
        Ok(root) => {
            tracing::warn!(
                size = snapshot.size,
                snapshot_root = %snapshot.root,
                log_root = %root,
                path = %path.display(),
                "the registry index snapshot is not of this log (its root differs from the log's at its size); replaying the whole ledger instead"
            );
            return None;
        }
        Err(err) => {
            tracing::warn!(size = snapshot.size, %err, path = %path.display(), "the registry index snapshot's size is not in this log; replaying the whole ledger instead");
            return None;
        }
    }
    let started = std::time::Instant::now();
    match Index::from_snapshot(ledger, &snapshot, body) {
        Ok(index) => {
            tracing::info!(
                entries = index.processed_below(),
                snapshot_size = snapshot.size,
                snapshot_entries = snapshot.kept.len(),
                millis = started.elapsed().as_millis() as u64,
                "registry rebuilt from its snapshot and the entries past it"
            );
            Some(index)
        }
        Err(err) => {
            tracing::warn!(%err, "the registry index snapshot could not be applied; replaying the whole ledger instead");
            None
        }
    }
}

pub(crate) fn not_found_version(name: &str, version: &str) -> RegistryError {
    RegistryError::NotFound(format!("package {name:?} has no version {version:?}"))
}

/// An OpenSSF model-signing v1.0 signature brought with a publication (see
/// `custodian_core::oms`).
#[derive(Clone, Debug)]
pub struct OmsSignature {
    /// The `model.sig` Sigstore bundle, JSON.
    pub signature: String,
    /// The ECDSA public key it verifies with, PEM.
    pub public_key: String,
}

pub(crate) fn invalid(field: &str, message: impl std::fmt::Display) -> RegistryError {
    RegistryError::InvalidArgument(format!("field {field}: {message}"))
}

fn parse_version(version: &str) -> Result<semver::Version, RegistryError> {
    semver::Version::parse(version).map_err(|e| {
        invalid(
            "version",
            format!("{version:?} is not a semver version: {e}"),
        )
    })
}

/// Refuses `who` unless it has `scope` for `name`, distinguishing "no token" from "wrong token".
pub(crate) fn require(
    who: &Principal,
    scope: Scope,
    name: &str,
    action: &str,
) -> Result<(), RegistryError> {
    if who.allows(scope, name) {
        return Ok(());
    }
    Err(match who {
        Principal::Anonymous => RegistryError::Unauthenticated(format!(
            "to {action} {name:?} you need a token with the {scope} scope: send authorization: Bearer <token>"
        )),
        Principal::Token(_) => RegistryError::PermissionDenied(format!(
            "{} may not {action} {name:?}: it lacks the {scope} scope for a namespace covering that name",
            who.label()
        )),
    })
}

impl Registry {
    /// Opens the registry by replaying the registry entries of the ledger.
    pub async fn open(store: BlobStore, sequencer: Sequencer) -> Result<Self, RegistryError> {
        Registry::open_with_snapshot(store, sequencer, None).await
    }

    /// Opens the registry from the index snapshot at `snapshot` when there is a usable one
    /// (reading only the entries it lists and those past it), else by replaying the registry
    /// entries of the whole ledger; [`Registry::save_snapshot`] writes it there.
    pub async fn open_with_snapshot(
        store: BlobStore,
        sequencer: Sequencer,
        snapshot: Option<std::path::PathBuf>,
    ) -> Result<Self, RegistryError> {
        let ledger = sequencer.ledger().clone();
        let bodies = store.clone();
        let runtime = tokio::runtime::Handle::current();
        let path = snapshot.clone();
        // Sealed entries are replayed from their bodies in custody.
        let state = tokio::task::spawn_blocking(move || {
            let body = |digest: &Digest| {
                runtime
                    .block_on(read_all(&bodies, digest))
                    .map_err(|e| e.to_string())
            };
            if let Some(state) = path.as_deref().and_then(|p| restore(&ledger, p, &body)) {
                return Ok(state);
            }
            Index::replay(&ledger, &body)
        })
        .await
        .map_err(|e| RegistryError::Ledger(LedgerError::Poisoned(e.to_string())))??;
        let mut state = state;
        // Every entry this daemon applies as it appends is remembered until the ledger is
        // followed past it, so that following (for a snapshot, or a ledger other daemons
        // share) never applies one twice.
        state.track_applied();
        Ok(Registry {
            store,
            sequencer,
            index: Arc::new(RwLock::new(state)),
            snapshot: snapshot.map(|path| SnapshotSlot {
                path,
                // As if none were saved: the first follow saves one if the log is long, so
                // a crash soon after this start does not find the snapshot further behind.
                written: std::sync::atomic::AtomicU64::new(0),
                saving: tokio::sync::Mutex::new(()),
            }),
            unapplied: std::sync::atomic::AtomicU64::new(0),
            gave_up: std::sync::atomic::AtomicBool::new(false),
            writes: tokio::sync::Mutex::new(()),
            attest_permits: Arc::new(tokio::sync::Semaphore::new(
                crate::evidence::MAX_CONCURRENT_ATTESTATIONS,
            )),
            badge_max_age_ms: std::sync::atomic::AtomicU64::new(
                custodian_core::badge::DEFAULT_MAX_AGE_MS,
            ),
            manifests: std::sync::Mutex::new(HashMap::new()),
            registry_licenses: std::sync::RwLock::new(
                DEFAULT_REGISTRY_LICENSES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
            scan_permits: tokio::sync::Semaphore::new(crate::scan::MAX_CONCURRENT_SCANS),
            external: std::sync::OnceLock::new(),
        })
    }

    /// Reads and applies the ledger's entries past those the index has read: what other daemons
    /// appended to a ledger this daemon shares (PostgreSQL), and on any ledger the entries this
    /// daemon appended, so that everything below [`Index::processed_below`] is in the index (a
    /// snapshot describes that much). Publications, yanks, data packs, evidence, keys, OCI and
    /// retention entries appended through any daemon become visible through this one. Returns
    /// how many were applied.
    pub async fn follow(&self) -> Result<u64, RegistryError> {
        self.follow_ledger().await.map_err(RegistryError::Ledger)
    }

    async fn follow_ledger(&self) -> Result<u64, LedgerError> {
        let (ledger, state, bodies) = (
            self.sequencer.ledger().clone(),
            self.index.clone(),
            self.store.clone(),
        );
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let size = ledger.latest().size;
            let mut applied = 0;
            // A few thousand entries per hold of the write lock: attestations and reads wait
            // for it, and a daemon that appends fast has many entries to follow.
            loop {
                let below = state
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .processed_below();
                if size <= below {
                    return Ok(applied);
                }
                let to = size.min(below.saturating_add(FOLLOW_STEP));
                applied += state
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .follow(&ledger, to, &|digest| {
                        runtime
                            .block_on(read_all(&bodies, digest))
                            .map_err(|e| e.to_string())
                    })?;
            }
        })
        .await
        .map_err(|e| LedgerError::Poisoned(e.to_string()))?
    }

    /// Brings the index to the ledger's end. On a ledger only this daemon appends to, with no
    /// append of its own between commit and application and none given up, every service entry
    /// is applied already and the index counts the log as read without reading it; otherwise
    /// it follows the log (reads every entry past those it has read).
    async fn catch_up(&self) -> Result<(), LedgerError> {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.ledger().is_shared() {
            // Any append committed below `size` counted itself before its commit, so it is
            // still counted now, or applied, or marked given up.
            let size = self.ledger().latest().size;
            if self.unapplied.load(SeqCst) == 0 && !self.gave_up.load(SeqCst) {
                self.write().advance_to(size);
                return Ok(());
            }
        }
        // Cleared first: an append given up during the follow marks it again.
        self.gave_up.store(false, SeqCst);
        self.follow_ledger().await.map(|_| ())
    }

    /// Brings the index to the ledger's end and replaces the index snapshot with one of
    /// everything read; returns the size it describes (`None` when this registry keeps no
    /// snapshot).
    pub async fn save_snapshot(&self) -> Result<Option<u64>, SnapshotError> {
        let Some(slot) = &self.snapshot else {
            return Ok(None);
        };
        let _one = slot.saving.lock().await;
        self.catch_up().await?;
        let (size, kept, damaged) = self.read().snapshot_lists();
        let (ledger, path) = (self.ledger().clone(), slot.path.clone());
        tokio::task::spawn_blocking(move || {
            let root = ledger.root_at(size)?;
            Snapshot {
                size,
                root,
                kept,
                damaged,
            }
            .write(&path)
        })
        .await
        .map_err(|e| LedgerError::Poisoned(e.to_string()))??;
        slot.written
            .store(size, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(size))
    }

    /// On a shared ledger, follows it to its end (what other daemons appended becomes visible
    /// here); on any ledger, saves the snapshot once the log has grown by `every` entries past
    /// the last one saved. Returns the size saved, if it saved one.
    pub async fn save_snapshot_every(&self, every: u64) -> Result<Option<u64>, SnapshotError> {
        if self.ledger().is_shared() {
            self.follow_ledger().await?;
        }
        let Some(slot) = &self.snapshot else {
            return Ok(None);
        };
        let written = slot.written.load(std::sync::atomic::Ordering::Relaxed);
        if self.ledger().latest().size < written.saturating_add(every) {
            return Ok(None);
        }
        self.save_snapshot().await
    }

    /// Sets the registry's license ids (replacing [`DEFAULT_REGISTRY_LICENSES`]).
    pub fn set_registry_licenses(&self, ids: Vec<String>) {
        *self
            .registry_licenses
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ids;
    }

    /// The registry's license ids.
    pub fn registry_licenses(&self) -> Vec<String> {
        self.registry_licenses
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sets the maximum evidence age the badge policy applies.
    pub fn set_badge_max_age(&self, age: std::time::Duration) {
        self.badge_max_age_ms.store(
            age.as_millis().min(u128::from(u64::MAX)) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The index, for the few changes that are not ledger entries (taking out the recorded
    /// deletions once they are checked).
    pub(crate) fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The index, for reading.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The blob store the registry checks files against.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<Ledger> {
        self.sequencer.ledger()
    }

    /// Appends an event under its own kind and applies it; returns its index, integration time
    /// and receipt.
    pub(crate) async fn append<T: Event>(
        &self,
        event: &T,
    ) -> Result<(u64, u64, custodian_core::receipt::Receipt), RegistryError> {
        self.append_if(event, None).await
    }

    /// Appends an event as [`Registry::append`] does, provided `condition` holds against what
    /// other daemons sharing the ledger appended meanwhile.
    pub(crate) async fn append_if<T: Event>(
        &self,
        event: &T,
        condition: Option<Condition>,
    ) -> Result<(u64, u64, custodian_core::receipt::Receipt), RegistryError> {
        let (appended, checkpoint) = self.append_entry_if(event, condition).await?;
        let receipt = self.ledger().receipt_for(&appended, &checkpoint)?;
        Ok((appended.index, appended.decoded()?.time_ms, receipt))
    }

    /// Appends an event and applies it; returns what was appended and the checkpoint that
    /// covers it, without building a receipt (for batch callers that asked for none).
    pub(crate) async fn append_entry<T: Event>(
        &self,
        event: &T,
    ) -> Result<
        (
            custodian_storage::ledger::Appended,
            Arc<custodian_storage::ledger::SignedCheckpoint>,
        ),
        RegistryError,
    > {
        self.append_entry_if(event, None).await
    }

    async fn append_entry_if<T: Event>(
        &self,
        event: &T,
        condition: Option<Condition>,
    ) -> Result<
        (
            custodian_storage::ledger::Appended,
            Arc<custodian_storage::ledger::SignedCheckpoint>,
        ),
        RegistryError,
    > {
        let invalid = |e: custodian_core::entry::EntryError| {
            RegistryError::Ledger(LedgerError::InvalidEntry(e))
        };
        let payload = to_payload(event).map_err(|e| invalid(e.into()))?;
        // From before the commit until the entry is applied (see `Unapplied`).
        let unapplied = Unapplied::new(self);
        if !custodian_core::seal::must_seal(&payload) {
            let (appended, checkpoint) = self
                .sequencer
                .append_if(T::KIND, payload, condition)
                .await?;
            self.apply(appended.index, &*appended.decoded()?);
            unapplied.applied();
            return Ok((appended, checkpoint));
        }
        // A private or large event is sealed: its body goes into custody first (verified and
        // durable), then the log commits to its digest, so an acknowledged entry never points at
        // a body that is not there.
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| {
            RegistryError::Ledger(LedgerError::Poisoned(format!("no randomness: {e}")))
        })?;
        let body = custodian_core::seal::SealedBody {
            kind: T::KIND,
            payload: custodian_core::entry::canonicalize_payload(payload).map_err(invalid)?,
            salt,
        }
        .encode();
        let digest = Digest::of(Algorithm::Sha256, &body);
        self.store
            .put_bytes(
                custodian_storage::Expectation {
                    digest: Some(digest),
                    size: Some(body.len() as u64),
                },
                bytes::Bytes::from(body.clone()),
            )
            .await?;
        let (appended, checkpoint) = self
            .sequencer
            .append_if(
                EntryKind::Sealed,
                custodian_core::seal::sealed_payload(&body),
                condition,
            )
            .await?;
        let entry = custodian_core::seal::unseal(&*appended.decoded()?, &body)
            .map_err(|e| RegistryError::Ledger(LedgerError::Corrupt(e.to_string())))?;
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .add_body(&digest, &entry);
        self.apply(appended.index, &entry);
        unapplied.applied();
        Ok((appended, checkpoint))
    }

    /// The latest recorded deletion of a blob (by either digest), if it was ever deleted: the
    /// index's candidate entry, read back from the log and confirmed to name this digest. An
    /// entry that cannot be read is logged and answered as no deletion, so a blob is never said
    /// deleted without its entry in hand.
    pub async fn tombstone(&self, digest: &Digest) -> Option<crate::retention::index::Tombstone> {
        let index = self.read().retention().deletion_candidate(digest)?;
        let entry = match self.event_entry(index).await {
            Ok(entry) => entry,
            Err(err) => {
                tracing::warn!(entry = index, %err, "cannot read a deletion entry");
                return None;
            }
        };
        let event: custodian_core::registry::BlobsDeleted = entry.event().ok()?;
        let named =
            |text: Option<&str>| text.and_then(|t| t.parse::<Digest>().ok()) == Some(*digest);
        let blob = event
            .blobs
            .iter()
            .find(|b| named(Some(&b.digest)) || named(b.blake3.as_deref()))?;
        Some(crate::retention::index::Tombstone {
            index,
            time_ms: entry.time_ms,
            size: blob.size,
            reason: event.reason,
            policy: event.policy,
        })
    }

    /// The event entry at `index`, checked against its leaf hash, and unsealed from its body in
    /// custody when the log holds it sealed.
    pub(crate) async fn event_entry(&self, index: u64) -> Result<Entry, RegistryError> {
        let corrupt = |reason: String| RegistryError::Ledger(LedgerError::Corrupt(reason));
        let bytes = self.ledger().verified_entry(index)?;
        let entry = Entry::decode(&bytes).map_err(|e| corrupt(format!("entry {index}: {e}")))?;
        if entry.kind != EntryKind::Sealed {
            return Ok(entry);
        }
        let (digest, _) = custodian_core::seal::commitment(&entry)
            .map_err(|e| corrupt(format!("entry {index}: {e}")))?;
        let body = read_all(&self.store, &digest).await?;
        custodian_core::seal::unseal(&entry, &body)
            .map_err(|e| corrupt(format!("entry {index}: {e}")))
    }

    pub(crate) fn apply(&self, index: u64, entry: &Entry) {
        let mut state = self
            .index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(err) = state.apply(index, entry) {
            // The entry was built by this process from checked input, so this cannot happen
            // unless the code is wrong; the ledger stays the truth and a restart replays it.
            tracing::error!(index, %err, "a registry entry just appended does not apply");
        }
    }

    /// Publishes a signed package version whose files are already in custody. An OpenSSF
    /// model-signing signature (`oms`) over the same files is checked and recorded with it. The built-in
    /// scanner reads every file before anything is appended: a publication carrying a secret
    /// is refused and leaves no trace in the log. The scan's report is returned for recording
    /// (`None` when the version was already published).
    pub async fn publish(
        &self,
        who: &Principal,
        envelope_json: &str,
        publisher_key: &str,
        private: bool,
        oms: Option<&OmsSignature>,
    ) -> Result<(Recorded<Arc<VersionRecord>>, Option<custodian_scan::Report>), RegistryError> {
        let key = VerifierKey::parse(publisher_key).map_err(|e| invalid("publisher_key", e))?;
        let envelope =
            Envelope::parse(envelope_json.as_bytes()).map_err(|e| invalid("envelope", e))?;
        let statement =
            PackageStatement::open(&envelope, &key).map_err(|e| invalid("envelope", e))?;
        let name = statement.name.clone();
        check_name(&name).map_err(|e| invalid("envelope: predicate.name", e))?;
        let version = semver::Version::parse(&statement.version).map_err(|e| {
            invalid(
                "envelope: predicate.version",
                format!("{:?} is not semver: {e}", statement.version),
            )
        })?;
        require(who, Scope::Publish, &name, "publish")?;
        // An OMS signature brought along must sign exactly the files the envelope signs.
        if let Some(oms) = oms {
            custodian_core::oms::check_package(
                &oms.signature,
                &oms.public_key,
                statement.tree.files(),
            )
            .map_err(|e| invalid("oms_signature", e))?;
        }
        let root = format!("sha256:{}", statement.tree.root().to_hex());
        if let Prior::Published(existing) = self.existing(&name, &version, &root, &key, private)? {
            return Ok((existing, None));
        }

        // From the custody check until the entry that references the files is applied, garbage
        // collection may not delete any of them (see custodian_storage::retention).
        let files: Vec<Digest> = statement.tree.files().iter().map(|f| f.sha256).collect();
        let _keep = self.store.retention().keep(&files).await;
        // Every file must be in custody with the stated size; the store verified its digest
        // when it was written.
        let mut missing = Vec::new();
        for file in statement.tree.files() {
            match self.store.stat(&file.sha256).await? {
                None => missing.push(format!(
                    "{} ({}, {} bytes)",
                    file.path, file.sha256, file.size
                )),
                Some(meta) if meta.size != file.size => {
                    return Err(invalid(
                        "envelope",
                        format!(
                            "file {:?} is signed as {} bytes, but the blob {} in custody is {} bytes",
                            file.path, file.size, file.sha256, meta.size
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        if !missing.is_empty() {
            return Err(RegistryError::FailedPrecondition(format!(
                "{} of the package's files are not in custody; upload them first (custodian publish does): {}",
                missing.len(),
                missing.join(", ")
            )));
        }
        let warnings = self.validate(&statement).await?;
        let scan = self
            .builtin(
                statement
                    .tree
                    .files()
                    .iter()
                    .map(|f| (f.path.clone(), f.sha256, f.size))
                    .collect(),
                false,
            )
            .await;
        refuse_secrets(&name, &version, &scan)?;

        let _write = self.writes.lock().await;
        let files = statement.tree.files();
        let event = PackagePublished {
            name: name.clone(),
            version: version.to_string(),
            package_type: statement.package_type.clone(),
            manifest: statement.manifest_digest().to_string(),
            root: root.clone(),
            files: files.len() as u64,
            size: files.iter().map(|f| f.size).sum(),
            publisher_key: key.to_string(),
            envelope: envelope.to_json(),
            private,
            oms_signature: oms.map(|o| o.signature.clone()),
            oms_public_key: oms.map(|o| o.public_key.clone()),
        };
        // Another daemon sharing the ledger may publish the same version at the same moment:
        // the append is conditional on no publication of it among the entries the index had
        // not applied when it said the version was absent, checked under the ledger's append
        // lock. The condition starts exactly where that judgement ended, taken under one read
        // of the index: the ledger is followed in the background, and an entry applied between
        // the judgement and the condition would be seen by neither. When the condition fails,
        // this daemon catches up and answers as a single daemon would (the idempotent answer,
        // or ALREADY_EXISTS).
        let digests: Vec<Digest> = files.iter().map(|f| f.sha256).collect();
        let mut attempts = 0;
        let (index, receipt) = loop {
            attempts += 1;
            let judged_below = match self.existing(&name, &version, &root, &key, private)? {
                Prior::Published(existing) => return Ok((existing, None)),
                Prior::Absent { judged_below } => judged_below,
            };
            let condition = no_publication_of(judged_below, &name, &event.version, &digests);
            match self.append_if(&event, Some(condition)).await {
                Ok((index, _, receipt)) => break (index, receipt),
                Err(RegistryError::Ledger(LedgerError::ConditionFailed { index, reason }))
                    if attempts < 8 =>
                {
                    tracing::info!(%name, %version, index, %reason, "another daemon appended first; catching up");
                    self.follow().await?;
                    // Another daemon's garbage collection recorded some of the files deleted.
                    let mut gone = Vec::new();
                    for file in files {
                        if self.store.stat(&file.sha256).await?.is_none() {
                            gone.push(format!("{} ({})", file.path, file.sha256));
                        }
                    }
                    if !gone.is_empty() {
                        return Err(RegistryError::FailedPrecondition(format!(
                            "{} of the package's files were deleted by garbage collection while it was being published; upload them again (custodian publish does): {}",
                            gone.len(),
                            gone.join(", ")
                        )));
                    }
                }
                Err(err) => return Err(err),
            }
        };
        tracing::info!(%name, %version, index, by = %who.label(), "published");
        let record = self
            .read()
            .version(&name, &version)
            .cloned()
            .ok_or_else(|| not_found_version(&name, &event.version))?;
        Ok((
            Recorded {
                record,
                receipt,
                already: false,
                warnings,
            },
            Some(scan),
        ))
    }

    /// Publishes a version and scans it within the same request: the publication is recorded
    /// first (it is what the signature covers), then the built-in scan's verdict. A version
    /// published before (`already`) is not scanned again; `custodian scan` does that.
    pub async fn publish_and_scan(
        &self,
        who: &Principal,
        envelope_json: &str,
        publisher_key: &str,
        private: bool,
        oms: Option<&OmsSignature>,
    ) -> Result<(Recorded<Arc<VersionRecord>>, Option<crate::scan::Scanned>), RegistryError> {
        let (recorded, scan) = self
            .publish(who, envelope_json, publisher_key, private, oms)
            .await?;
        let Some(report) = scan.filter(|_| !recorded.already) else {
            return Ok((recorded, None));
        };
        // The publication is recorded; a scan that cannot be recorded (the ledger refusing
        // writes) must not turn that success into an error. The version then shows no scan
        // (`scan_missing` on its badge) until `custodian scan` records one.
        // An external data pack the signed manifest declares is registered with the version
        // (a hosted one is registered when its bytes are uploaded, under the manifest's terms).
        if let Ok(manifest) = self.manifest_of(&recorded.record).await
            && let Some(spec) = manifest
                .0
                .data_pack
                .clone()
                .filter(|d| d.mode == "external")
        {
            let (name, version) = (&recorded.record.event.name, &recorded.record.event.version);
            if let Err(err) = self.register_external(who, name, version, spec).await {
                tracing::error!(%name, %version, %err, "published, but the data pack its manifest declares could not be registered");
            }
        }
        let root = recorded.record.event.root.clone();
        match self
            .record_report(&recorded.record, None, root, report)
            .await
        {
            Ok(scanned) => Ok((recorded, Some(scanned))),
            Err(err) => {
                tracing::error!(name = %recorded.record.event.name, version = %recorded.record.event.version, %err, "published, but the scan could not be recorded");
                Ok((recorded, None))
            }
        }
    }

    /// For a version that already exists: the idempotent answer if the content is the same, or
    /// ALREADY_EXISTS; also enforces the package's pinned publisher key.
    fn existing(
        &self,
        name: &str,
        version: &semver::Version,
        root: &str,
        key: &VerifierKey,
        private: bool,
    ) -> Result<Prior, RegistryError> {
        let state = self.read();
        let judged_below = state.processed_below();
        let package = state.package(name);
        // The same content under the same version, signed by the key it was published with, is
        // the idempotent answer, even after that key was rotated away.
        let record = package.and_then(|p| p.version(version));
        let same_key = record.is_some_and(|r| {
            r.event.publisher_key == key.to_string()
                && r.event.root == root
                && r.event.private == private
        });
        if !same_key {
            if let Some((index, reason, _)) = state
                .keys()
                .revocation(custodian_core::keys::PUBLISHER, &key.to_string())
            {
                return Err(RegistryError::PermissionDenied(format!(
                    "publisher key {} was revoked ({reason}) by ledger entry {index}; it signs nothing new (custodian key introduce pins a new key)",
                    key.handle()
                )));
            }
            let Some(package) = package else {
                return Ok(Prior::Absent { judged_below });
            };
            let pinned = VerifierKey::parse(package.publisher_key()).ok();
            if pinned.as_ref() != Some(key) {
                return Err(RegistryError::PermissionDenied(format!(
                    "package {name:?} is pinned to publisher key {} (by its first version or its latest key rotation); this version is signed by {} (custodian key rotate moves the pin, signed by both keys)",
                    pinned.map(|k| k.handle()).unwrap_or_default(),
                    key.handle()
                )));
            }
        }
        if let Some(record) = record
            && (record.event.root != root || record.event.private != private)
        {
            return Err(RegistryError::AlreadyExists(format!(
                "{name}@{version} is already published with package root {} ({}; ledger entry {}); versions are immutable, so publish the change as a new version",
                record.event.root,
                if record.event.private {
                    "private"
                } else {
                    "public"
                },
                record.index
            )));
        }
        let Some(record) = record else {
            return Ok(Prior::Absent { judged_below });
        };
        let record = record.clone();
        drop(state);
        let receipt = self.ledger().receipt(record.index)?;
        Ok(Prior::Published(Recorded {
            record,
            receipt,
            already: true,
            warnings: Vec::new(),
        }))
    }

    pub(crate) async fn read_text(&self, file: &FileEntry) -> Result<String, RegistryError> {
        String::from_utf8(read_all(&self.store, &file.sha256).await?)
            .map_err(|_| RegistryError::Invalid(report_one(&file.path, "is not UTF-8 text")))
    }

    /// Checks the manifest and the PromptPack resources, reading them from custody.
    async fn validate(&self, statement: &PackageStatement) -> Result<Vec<Problem>, RegistryError> {
        let files = statement.tree.files();
        let paths: BTreeSet<String> = files.iter().map(|f| f.path.clone()).collect();
        let manifest_file = statement.tree.manifest();
        if manifest_file.size > MAX_YAML_BYTES {
            return Err(RegistryError::Invalid(report_one(
                MANIFEST_FILE,
                &format!(
                    "is {} bytes, more than the {MAX_YAML_BYTES} allowed",
                    manifest_file.size
                ),
            )));
        }
        let text = self.read_text(manifest_file).await?;
        let (manifest, mut report) = Manifest::parse(MANIFEST_FILE, &text, Some(&paths));
        let Some(manifest) = manifest else {
            return Err(RegistryError::Invalid(report));
        };
        for (field, signed, declared) in [
            ("name", statement.name.clone(), manifest.name.clone()),
            (
                "version",
                statement.version.clone(),
                manifest.version.to_string(),
            ),
            (
                "type",
                statement.package_type.clone(),
                manifest.package_type.to_string(),
            ),
        ] {
            if signed != declared {
                report.errors.push(Problem {
                    file: MANIFEST_FILE.into(),
                    line: custodian_core::manifest::locate(&text, field),
                    field: field.into(),
                    message: format!("is {declared:?}, but the signed statement says {signed:?}"),
                });
            }
        }
        let mut yaml = BTreeMap::new();
        let mut total = 0u64;
        for file in files {
            if file.path == MANIFEST_FILE || !promptpack::is_resource_path(&file.path) {
                continue;
            }
            if file.size > MAX_YAML_BYTES || total + file.size > MAX_YAML_TOTAL {
                report.warnings.push(Problem {
                    file: file.path.clone(),
                    line: None,
                    field: String::new(),
                    message: "too large to check as a PromptPack resource; not checked".into(),
                });
                continue;
            }
            total += file.size;
            match self.read_text(file).await {
                Ok(text) => {
                    yaml.insert(file.path.clone(), text);
                }
                Err(RegistryError::Invalid(r)) => report.extend(r),
                Err(e) => return Err(e),
            }
        }
        let inputs: Vec<String> = manifest
            .inputs
            .iter()
            .map(|v| v.name().to_string())
            .collect();
        report.extend(promptpack::validate(&yaml, &paths, &inputs));
        if !report.is_ok() {
            return Err(RegistryError::Invalid(report));
        }
        // Attestations need the parsed manifest; keep the one just read so the first of them
        // does not read and parse it again.
        self.manifests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                manifest_file.sha256.to_string(),
                Arc::new((manifest, text.into_bytes())),
            );
        Ok(report.warnings)
    }

    /// Yanks a version: it stays fetchable and is flagged. Yanking twice is idempotent.
    pub async fn yank(
        &self,
        who: &Principal,
        name: &str,
        version: &str,
        reason: &str,
    ) -> Result<Recorded<Arc<VersionRecord>>, RegistryError> {
        let parsed = parse_version(version)?;
        self.visible_version(who, name, &parsed)?;
        require(who, Scope::Publish, name, "yank")?;
        if reason.trim().is_empty() {
            return Err(invalid(
                "reason",
                "is required: say why the version must not be used",
            ));
        }
        let _write = self.writes.lock().await;
        let record = self.visible_version(who, name, &parsed)?;
        if let Some(Yank { index, .. }) = &record.yanked {
            let receipt = self.ledger().receipt(*index)?;
            return Ok(Recorded {
                record,
                receipt,
                already: true,
                warnings: Vec::new(),
            });
        }
        let event = VersionYanked {
            name: name.to_string(),
            version: parsed.to_string(),
            reason: reason.to_string(),
            private: record.event.private,
        };
        let (_, _, receipt) = self.append(&event).await?;
        let record = self.visible_version(who, name, &parsed)?;
        Ok(Recorded {
            record,
            receipt,
            already: false,
            warnings: Vec::new(),
        })
    }

    /// The version, if it exists and `who` may see it; otherwise the same NOT_FOUND either way.
    pub fn visible_version(
        &self,
        who: &Principal,
        name: &str,
        version: &semver::Version,
    ) -> Result<Arc<VersionRecord>, RegistryError> {
        self.read()
            .version(name, version)
            .filter(|v| who.can_read(name, v.event.private))
            .cloned()
            .ok_or_else(|| not_found_version(name, &version.to_string()))
    }

    /// Looks a version up by its text form.
    pub fn get(
        &self,
        who: &Principal,
        name: &str,
        version: &str,
    ) -> Result<Arc<VersionRecord>, RegistryError> {
        let parsed = parse_version(version)?;
        self.visible_version(who, name, &parsed)
    }

    /// The versions of `name` that `who` may see, oldest first.
    pub fn list(
        &self,
        who: &Principal,
        name: &str,
    ) -> Result<Vec<Arc<VersionRecord>>, RegistryError> {
        let versions: Vec<Arc<VersionRecord>> = self
            .read()
            .package(name)
            .map(|p| {
                p.versions()
                    .filter(|v| who.can_read(name, v.event.private))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if versions.is_empty() {
            return Err(RegistryError::NotFound(format!(
                "no package named {name:?}"
            )));
        }
        Ok(versions)
    }

    /// True if `who` may read the blob with this sha256: it belongs to a public package or data
    /// pack, or to a private one `who` has a read grant for. Blobs no package refers to are
    /// readable by tokens that may read every namespace.
    pub fn blob_readable(&self, who: &Principal, sha256: &Digest) -> bool {
        match self.read().blob_refs(sha256) {
            Some(refs) => refs.iter().any(|r| who.can_read(&r.name, r.private)),
            None => who.allows_everywhere(Scope::Read),
        }
    }

    /// True if `who` may see a ledger entry (entries about private content need a read grant).
    pub fn entry_visible(&self, who: &Principal, entry_bytes: &[u8]) -> bool {
        // Only the services' own entries can be about private content; an export reads every
        // entry, so the rest pass without being decoded.
        if who.allows_everywhere(Scope::Read)
            || custodian_core::entry::peek_kind(entry_bytes)
                .is_some_and(|kind| !EntryKind::is_service_name(kind))
        {
            return true;
        }
        match Entry::decode(entry_bytes) {
            Ok(entry) => match private_package(&entry) {
                Some(name) => who.allows(Scope::Read, &name),
                None => true,
            },
            Err(_) => true,
        }
    }

    /// Checks that `who` may register a data pack for the version and that it has none yet (or
    /// the same one); returns the version.
    pub fn check_data_pack_target(
        &self,
        who: &Principal,
        name: &str,
        version: &str,
    ) -> Result<Arc<VersionRecord>, RegistryError> {
        let record = self.get(who, name, version)?;
        require(who, Scope::Publish, name, "register a data pack for")?;
        Ok(record)
    }

    async fn register(
        &self,
        who: &Principal,
        name: &str,
        version: &str,
        pack: DataPack,
        private_override: Option<bool>,
    ) -> Result<Recorded<DataPackRecord>, RegistryError> {
        let _write = self.writes.lock().await;
        let record = self.check_data_pack_target(who, name, version)?;
        let private = private_override.unwrap_or(record.event.private);
        if let Some(existing) = &record.data_pack {
            if existing.event.pack == pack && existing.event.private == private {
                let receipt = self.ledger().receipt(existing.index)?;
                return Ok(Recorded {
                    record: existing.clone(),
                    receipt,
                    already: true,
                    warnings: Vec::new(),
                });
            }
            return Err(RegistryError::AlreadyExists(format!(
                "{name}@{} already has a {} data pack (ledger entry {}); data packs are immutable per version, so publish a new version to change it",
                record.event.version, existing.event.pack.mode, existing.index
            )));
        }
        let event = DataPackRegistered {
            name: name.to_string(),
            version: record.event.version.clone(),
            private,
            pack,
        };
        let (index, time_ms, receipt) = self.append(&event).await?;
        Ok(Recorded {
            record: DataPackRecord {
                event,
                index,
                time_ms,
            },
            receipt,
            already: false,
            warnings: Vec::new(),
        })
    }

    /// Registers an external data pack (`PUT …/data-pack/manifest`).
    pub async fn register_external(
        &self,
        who: &Principal,
        name: &str,
        version: &str,
        spec: DataPackSpec,
    ) -> Result<Recorded<DataPackRecord>, RegistryError> {
        self.check_data_pack_target(who, name, version)?;
        let problems = spec.problems();
        if !problems.is_empty() {
            return Err(RegistryError::InvalidArgument(
                problems
                    .iter()
                    .map(|(f, m)| format!("field {f}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ));
        }
        if spec.mode != "external" {
            return Err(invalid(
                "mode",
                "is \"hosted\": upload hosted bytes with POST …/data-pack/hosted",
            ));
        }
        let record = self.check_data_pack_target(who, name, version)?;
        if let Some(declared) = self.declared_data_pack(&record).await
            && declared.mode == "hosted"
        {
            return Err(RegistryError::FailedPrecondition(format!(
                "{name}@{version}'s signed manifest declares a hosted data pack; upload its bytes with POST …/data-pack/hosted"
            )));
        }
        let checksum = spec
            .checksum_digest()
            .and_then(Result::ok)
            .map(|d| d.to_string());
        let pack = DataPack {
            mode: DataPackMode::External,
            license: spec.license.unwrap_or_default(),
            data_version: spec.version,
            source_type: spec.source_type,
            uri: spec.uri,
            checksum,
            checksum_algorithm: spec.checksum_algorithm,
            access_policy: spec.access_policy,
            provenance: spec.provenance,
            ..Default::default()
        };
        self.register(who, name, version, pack, None).await
    }

    /// The data pack a version's signed manifest declares, if any.
    pub async fn declared_data_pack(&self, record: &VersionRecord) -> Option<DataPackSpec> {
        self.manifest_of(record).await.ok()?.0.data_pack.clone()
    }

    /// Completes a hosted upload's metadata from the data pack the signed manifest declares:
    /// what the upload leaves out is taken from the manifest, and what it states must agree.
    pub async fn apply_declared(
        &self,
        record: &VersionRecord,
        meta: &mut HostedMeta,
    ) -> Result<(), RegistryError> {
        let Some(declared) = self.declared_data_pack(record).await else {
            return Ok(());
        };
        let (name, version) = (&record.event.name, &record.event.version);
        if declared.mode != "hosted" {
            return Err(RegistryError::FailedPrecondition(format!(
                "{name}@{version}'s signed manifest declares an {} data pack, not a hosted one",
                declared.mode
            )));
        }
        let agree = |field: &str, stated: &mut Option<String>, signed: &Option<String>| match (
            stated.as_deref(),
            signed.as_deref(),
        ) {
            (Some(a), Some(b)) if a != b => Err(invalid(
                &format!("metadata.{field}"),
                format!("is {a:?}, but {name}@{version}'s signed manifest declares {b:?}"),
            )),
            (None, Some(b)) => {
                *stated = Some(b.to_string());
                Ok(())
            }
            _ => Ok(()),
        };
        let mut license = (!meta.license.is_empty()).then(|| meta.license.clone());
        agree("license", &mut license, &declared.license)?;
        meta.license = license.unwrap_or_default();
        agree("version", &mut meta.version, &declared.version)?;
        agree("visibility", &mut meta.visibility, &declared.visibility)?;
        if let Some(Ok(digest)) = declared.checksum_digest()
            && digest.algorithm() == Algorithm::Sha256
        {
            let digest = digest.to_string();
            agree("sha256", &mut meta.sha256, &Some(digest))?;
        }
        Ok(())
    }

    /// Checks a hosted upload's declarations before any byte is accepted; returns the digest the
    /// bytes must have, if one was declared.
    pub fn check_hosted(
        &self,
        who: &Principal,
        name: &str,
        version: &str,
        meta: &HostedMeta,
    ) -> Result<Option<Digest>, RegistryError> {
        let record = self.check_data_pack_target(who, name, version)?;
        if let Some(existing) = &record.data_pack {
            // A second upload is accepted only to repeat the same bytes (idempotent retry).
            if meta.sha256.is_none() || existing.event.pack.sha256 != meta.sha256 {
                return Err(RegistryError::AlreadyExists(format!(
                    "{name}@{version} already has a {} data pack (ledger entry {}); data packs are immutable per version",
                    existing.event.pack.mode, existing.index
                )));
            }
        }
        if meta.license.trim().is_empty() {
            return Err(invalid(
                "metadata.license",
                "is required: the data's license, e.g. CC-BY-4.0",
            ));
        }
        if let Some(v) = meta.visibility.as_deref()
            && !custodian_core::datapack::VISIBILITIES.contains(&v)
        {
            return Err(invalid(
                "metadata.visibility",
                format!("{v:?} is not inherit, public or private"),
            ));
        }
        if let Some(p) = &meta.provenance
            && !p.is_object()
        {
            return Err(invalid("metadata.provenance", "must be a JSON object"));
        }
        match meta.sha256.as_deref() {
            None => Ok(None),
            Some(text) => {
                let digest: Digest = text.parse().map_err(|e| invalid("metadata.sha256", e))?;
                if digest.algorithm() != Algorithm::Sha256 {
                    return Err(invalid(
                        "metadata.sha256",
                        format!("{text} is not a sha256 digest"),
                    ));
                }
                Ok(Some(digest))
            }
        }
    }

    /// Records a hosted data pack whose bytes are now in custody; `scan_status` is the verdict of
    /// the scan run on them before registration.
    pub async fn register_hosted(
        &self,
        who: &Principal,
        name: &str,
        version: &str,
        meta: HostedMeta,
        stored: &PutOutcome,
        scan_status: &str,
    ) -> Result<Recorded<DataPackRecord>, RegistryError> {
        let visibility = meta.visibility.unwrap_or_else(|| "inherit".into());
        let private_override = match visibility.as_str() {
            "public" => Some(false),
            "private" => Some(true),
            _ => None,
        };
        let pack = DataPack {
            mode: DataPackMode::Hosted,
            license: meta.license,
            data_version: meta.version,
            sha256: Some(stored.meta.digests.sha256.to_string()),
            blake3: Some(stored.meta.digests.blake3.to_string()),
            size: Some(stored.meta.size),
            filename: meta.filename,
            provenance_json: meta.provenance.map(|p| p.to_string()),
            eval_set_uri: meta.eval_set_uri,
            visibility: Some(visibility),
            scan_status: Some(scan_status.into()),
            ..Default::default()
        };
        self.register(who, name, version, pack, private_override)
            .await
    }

    /// The data pack of a version, if `who` may see it. The pack's own visibility decides, on
    /// every endpoint alike: a `public` pack of a private version is readable by anyone (its
    /// publisher chose so), a `private` pack of a public version only with a read grant. A pack
    /// `who` may not see answers as no pack; a version `who` may not see answers as no version.
    pub fn data_pack(
        &self,
        who: &Principal,
        name: &str,
        version: &str,
    ) -> Result<DataPackRecord, RegistryError> {
        let parsed = parse_version(version)?;
        let record = self.read().version(name, &parsed).cloned();
        let version_visible = record
            .as_ref()
            .is_some_and(|r| who.can_read(name, r.event.private));
        let pack = record
            .and_then(|r| r.data_pack.clone())
            .filter(|p| who.can_read(name, p.event.private));
        match (pack, version_visible) {
            (Some(pack), _) => Ok(pack),
            (None, true) => Err(RegistryError::NotFound(format!(
                "{name}@{version} has no data pack"
            ))),
            (None, false) => Err(not_found_version(name, version)),
        }
    }
}

/// Refuses a publication whose scan found secrets, naming each file and rule.
fn refuse_secrets(
    name: &str,
    version: &semver::Version,
    scan: &custodian_scan::Report,
) -> Result<(), RegistryError> {
    let errors: Vec<Problem> = scan
        .findings
        .iter()
        .filter(|f| custodian_scan::secrets::is_secret_rule(&f.rule))
        .map(|f| Problem {
            file: f.file.clone(),
            line: None,
            field: f.rule.clone(),
            message: format!(
                "{}; {name}@{version} is not published, and nothing was recorded",
                f.message
            ),
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(RegistryError::Invalid(Report {
            errors,
            warnings: Vec::new(),
        }))
    }
}

fn report_one(file: &str, message: &str) -> Report {
    Report {
        errors: vec![Problem {
            file: file.to_string(),
            line: None,
            field: String::new(),
            message: message.to_string(),
        }],
        warnings: Vec::new(),
    }
}

/// The condition under which a publication of `name@version` may be appended: no entry from
/// `after` on (those the index had not applied when it judged the version absent) publishes
/// that version, records any of its `files` deleted, or changes the publisher keys. A sealed
/// entry cannot be read without its body, so it also fails the condition (the caller catches
/// up, which reads the body, and tries again).
fn no_publication_of(after: u64, name: &str, version: &str, files: &[Digest]) -> Condition {
    let (name, version) = (name.to_string(), version.to_string());
    let files: std::collections::HashSet<String> = files.iter().map(ToString::to_string).collect();
    Condition {
        after,
        check: Arc::new(move |entry: &Entry| match entry.kind {
            EntryKind::BlobsDeleted => match deleted_digests(entry)
                .into_iter()
                .find(|digest| files.contains(digest))
            {
                Some(digest) => Err(format!("file {digest} was recorded deleted")),
                None => Ok(()),
            },
            EntryKind::Sealed => Err("a sealed entry may publish the same version".into()),
            // A revocation or a rotation decides whether this key may publish the package.
            EntryKind::KeyEvent => Err("a key event may change who may publish".into()),
            EntryKind::PackagePublished => {
                let same = entry_text(entry, "name") == Some(name.as_str())
                    && entry_text(entry, "version") == Some(version.as_str());
                if same {
                    Err(format!(
                        "{name}@{version} was published through another daemon"
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }),
    }
}

/// What the index says of a version about to be published.
enum Prior {
    /// It is published with the same content: the idempotent answer.
    Published(Recorded<Arc<VersionRecord>>),
    /// It is not published among the entries below `judged_below`.
    Absent {
        /// Every entry below this one had been applied when the judgement was made.
        judged_below: u64,
    },
}

/// A whole blob from custody, verified block by block as it is read.
pub(crate) async fn read_all(store: &BlobStore, digest: &Digest) -> Result<Vec<u8>, StorageError> {
    let read = store.get(digest, ByteRange::ALL).await?;
    let chunks: Vec<bytes::Bytes> = read.data.try_collect().await?;
    Ok(chunks.concat())
}

/// Rebuilds the registry index from a ledger without serving it; returns how many registry
/// events it applied. For measuring start-up time (`custodian-bench ledger`).
pub fn replay_count(ledger: &Ledger) -> Result<usize, RegistryError> {
    // The benchmark's log has no sealed entries, so no body is ever asked for.
    Ok(Index::replay(ledger, &|digest| {
        Err(format!("no custody to read the body {digest} from"))
    })?
    .version_count())
}

/// Writes the snapshot of the registry index of the first `size` entries of `ledger` at `path`,
/// as a daemon saves it. For measuring a restart from a snapshot (`custodian-bench ledger`).
pub fn save_snapshot_at(
    ledger: &Ledger,
    size: u64,
    path: &std::path::Path,
) -> Result<(), SnapshotError> {
    let mut index = Index::default();
    index.follow(ledger, size, &|digest| {
        Err(format!("no custody to read the body {digest} from"))
    })?;
    let (size, kept, damaged) = index.snapshot_lists();
    Snapshot {
        size,
        root: ledger.root_at(size)?,
        kept,
        damaged,
    }
    .write(path)
}

/// Rebuilds the registry index as a restart with the snapshot at `path` does; returns how many
/// versions it holds, or `None` when the snapshot was not usable (nothing was rebuilt then).
/// For measuring start-up time (`custodian-bench ledger`).
pub fn restore_count(ledger: &Ledger, path: &std::path::Path) -> Option<usize> {
    restore(ledger, path, &|digest| {
        Err(format!("no custody to read the body {digest} from"))
    })
    .map(|index| index.version_count())
}

/// A text field of an entry's payload map, if it has one.
fn entry_text<'a>(entry: &'a Entry, key: &str) -> Option<&'a str> {
    custodian_core::registry::payload_field(entry, key).and_then(|v| v.as_text())
}

/// The SHA-256 digests a `BlobsDeleted` entry records deleted, as text.
fn deleted_digests(entry: &Entry) -> Vec<String> {
    let Some(custodian_core::entry::Value::Array(blobs)) =
        custodian_core::registry::payload_field(entry, "blobs")
    else {
        return Vec::new();
    };
    blobs
        .iter()
        .filter_map(|blob| match blob {
            custodian_core::entry::Value::Map(fields) => fields
                .iter()
                .find(|(k, _)| k.as_text() == Some("digest"))
                .and_then(|(_, v)| v.as_text())
                .map(str::to_string),
            _ => None,
        })
        .collect()
}
