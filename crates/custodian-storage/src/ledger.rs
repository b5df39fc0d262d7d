//! The provenance ledger: an append-only RFC 6962 log of entries with signed checkpoints.
//!
//! [`Ledger`] holds all the logic — chaining entries, computing stored hashes, signing the
//! checkpoint, generating proofs and checking them before they leave — over a
//! [`LedgerBackend`] that only stores and fetches bytes. Each [`LedgerBatch`] (entries, their
//! stored hashes and the new signed checkpoint) is committed atomically and durably by the
//! backend; nothing in it is acknowledged before that.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};

use custodian_core::checkpoint::Checkpoint;
use custodian_core::entry::{Entry, EntryError, EntryKind, Value};
use custodian_core::merkle::{
    self, Frontier, Hash, HashReader, ProofError, empty_root, stored_hash_count, stored_hash_index,
};
use custodian_core::note::{SignerKey, VerifierKey};
use custodian_core::receipt::Receipt;

/// What went wrong in the ledger. Messages name the index, size or hash concerned.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LedgerError {
    /// The entry index is not in the log (yet).
    #[error("entry {index} does not exist; the log has {size} entries")]
    NoSuchEntry {
        /// The index asked for.
        index: u64,
        /// The log's current size.
        size: u64,
    },
    /// No entry has this leaf hash.
    #[error("no entry has leaf hash {0}")]
    NoSuchLeaf(Hash),
    /// The tree size is larger than the log.
    #[error("tree size {requested} is larger than the log ({size} entries)")]
    SizeBeyondLog {
        /// The size asked for.
        requested: u64,
        /// The log's current size.
        size: u64,
    },
    /// The log has no checkpoint of this size.
    #[error(
        "no checkpoint of size {0}; checkpoints exist only at the sizes where a batch was committed"
    )]
    NoSuchCheckpoint(u64),
    /// An append was rejected before anything was written.
    #[error("invalid entry: {0}")]
    InvalidEntry(#[from] EntryError),
    /// A proof could not be made from the stored hashes.
    #[error("proof: {0}")]
    Proof(ProofError),
    /// Stored data contradicts the signed checkpoints; nothing derived from it is served.
    #[error("ledger storage is corrupt: {0}")]
    Corrupt(String),
    /// The signing key does not belong to this log.
    #[error(
        "the log key {key} does not verify the stored checkpoint of size {size} ({reason}); the data directory belongs to another log key"
    )]
    WrongKey {
        /// The verifier key in use.
        key: String,
        /// The checkpoint size that failed.
        size: u64,
        /// Why it failed.
        reason: String,
    },
    /// The backend failed.
    #[error("{backend} ledger backend: {message}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// What failed.
        message: String,
    },
    /// The backend cannot be reached (a database that is down or restarting). A batch it
    /// reports this for may or may not have been committed; the ledger reads the stored tree
    /// again before its next append, so either way nothing is half-written or forked.
    #[error("{backend} ledger backend is unreachable: {message}")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// What failed.
        message: String,
    },
    /// The entry is durable but no checkpoint covering it has been published yet: the log
    /// publishes a checkpoint only once its witness quorum has cosigned it.
    #[error(
        "entry {index} is recorded but not yet in a published checkpoint (published size {published}): the witnesses have not cosigned one yet; retry shortly"
    )]
    NotYetPublished {
        /// The entry's index.
        index: u64,
        /// The size of the latest published checkpoint.
        published: u64,
    },
    /// An append's [`Condition`] failed against an entry another writer appended first; nothing
    /// of that append was written (the rest of its batch was).
    #[error("entry {index}, appended by another writer, conflicts: {reason}")]
    ConditionFailed {
        /// The conflicting entry.
        index: u64,
        /// Why it conflicts.
        reason: String,
    },
    /// Another writer sharing the backend extended the log first: the batch was built on an
    /// older tree and nothing of it was written. [`Ledger`] reloads the stored tree and builds
    /// the batch again.
    #[error(
        "another writer extended the log first: it has {stored} entries, the batch starts at entry {start}"
    )]
    Conflict {
        /// The stored log's size.
        stored: u64,
        /// Where the refused batch started.
        start: u64,
    },
    /// A commit failed earlier; the ledger refuses appends until it is reopened, because it
    /// cannot tell what reached the disk.
    #[error("the ledger refuses appends after an earlier failure: {0}")]
    Poisoned(String),
}

impl LedgerError {
    /// A backend failure with a message.
    pub fn backend(backend: &'static str, message: impl std::fmt::Display) -> Self {
        LedgerError::Backend {
            backend,
            message: message.to_string(),
        }
    }
}

/// A ledger result.
pub type LedgerResult<T> = std::result::Result<T, LedgerError>;

/// Everything one commit writes: entries, the stored hashes they create, and the checkpoint.
#[derive(Clone, Debug)]
pub struct LedgerBatch {
    /// The index of the first entry.
    pub first_index: u64,
    /// The encoded entries, in order.
    pub entries: Vec<Vec<u8>>,
    /// The entries' leaf hashes, in the same order.
    pub leaf_hashes: Vec<Hash>,
    /// The append-order index of the first new stored hash.
    pub first_hash_index: u64,
    /// The new stored hashes, in append order.
    pub hashes: Vec<Hash>,
    /// The tree size after the batch.
    pub checkpoint_size: u64,
    /// The signed checkpoint note for that size.
    pub checkpoint: Vec<u8>,
}

/// Storage for a ledger. Implementations must make [`LedgerBackend::commit`] atomic and durable:
/// after it returns, the whole batch survives a crash; if it fails or the process dies during it,
/// none of the batch is visible after reopening.
pub trait LedgerBackend: Send + Sync {
    /// A short name for messages, e.g. `rocksdb`.
    fn name(&self) -> &'static str;
    /// The latest checkpoint: its size and signed note.
    fn latest_checkpoint(&self) -> LedgerResult<Option<(u64, Vec<u8>)>>;
    /// The checkpoint of exactly `size`, if one was committed.
    fn checkpoint(&self, size: u64) -> LedgerResult<Option<Vec<u8>>>;
    /// Up to `limit` checkpoints with size `>= from_size`, by size.
    fn checkpoints(&self, from_size: u64, limit: usize) -> LedgerResult<Vec<(u64, Vec<u8>)>>;
    /// The entries `[start, end)`; an entry that is missing is an error.
    fn entries(&self, start: u64, end: u64) -> LedgerResult<Vec<Vec<u8>>>;
    /// The index of the entry with this leaf hash.
    fn index_of(&self, leaf: &Hash) -> LedgerResult<Option<u64>>;
    /// The stored hashes at these append-order indexes (`None` where missing).
    fn hashes(&self, indexes: &[u64]) -> LedgerResult<Vec<Option<Hash>>>;
    /// The stored hashes `[start, end)` in append order.
    fn hash_range(&self, start: u64, end: u64) -> LedgerResult<Vec<Hash>>;
    /// Writes a batch atomically and durably.
    fn commit(&self, batch: &LedgerBatch) -> LedgerResult<()>;
    /// For a backend several processes append to: takes the backend's append lock and holds it
    /// until the returned guard is dropped, so that a writer builds its batch on the stored tree
    /// and commits it before any other writer can extend the tree (no writer starves retrying).
    /// `None` for a backend with a single writer.
    fn append_lock(&self) -> LedgerResult<Option<Box<dyn AppendLock>>> {
        Ok(None)
    }

    /// Whether other processes append to this backend too (so a reader must follow what they
    /// append). False for a backend with a single writer.
    fn shared(&self) -> bool {
        false
    }
}

/// A held append lock of a shared ledger backend; dropping it releases the lock.
pub trait AppendLock: Send {}

/// Adapts a backend to the Merkle code's [`HashReader`], remembering a backend failure so that
/// it surfaces as itself: an unreachable database is an outage, not damaged data.
struct Reader<'a> {
    backend: &'a dyn LedgerBackend,
    /// Hashes this ledger wrote lately, read instead of the backend's copies (receipts only).
    recent: Option<&'a RwLock<RecentHashes>>,
    failed: Mutex<Option<LedgerError>>,
}

impl<'a> Reader<'a> {
    fn new(backend: &'a dyn LedgerBackend) -> Self {
        Reader {
            backend,
            recent: None,
            failed: Mutex::new(None),
        }
    }

    /// A reader that takes the hashes it finds in `recent` from there and only the rest from
    /// the backend.
    fn with_recent(backend: &'a dyn LedgerBackend, recent: &'a RwLock<RecentHashes>) -> Self {
        Reader {
            recent: Some(recent),
            ..Reader::new(backend)
        }
    }

    /// The error for a failed proof computation: the backend's own error when reading failed,
    /// else the proof error.
    fn fail(&self, err: ProofError) -> LedgerError {
        let failed = match self.failed.lock() {
            Ok(mut failed) => failed.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        match (err, failed) {
            (ProofError::Read(_), Some(backend)) => backend,
            (err, _) => LedgerError::Proof(err),
        }
    }
}

impl HashReader for Reader<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, ProofError> {
        let mut found: Vec<Option<Hash>> = vec![None; indexes.len()];
        if let Some(recent) = self.recent {
            let recent = match recent.read() {
                Ok(recent) => recent,
                Err(poisoned) => poisoned.into_inner(),
            };
            for (slot, &index) in found.iter_mut().zip(indexes) {
                *slot = recent.get(index);
            }
        }
        let unread: Vec<u64> = indexes
            .iter()
            .zip(&found)
            .filter(|(_, hash)| hash.is_none())
            .map(|(&index, _)| index)
            .collect();
        if !unread.is_empty() {
            let read = self.backend.hashes(&unread).map_err(|e| {
                let message = e.to_string();
                match self.failed.lock() {
                    Ok(mut failed) => *failed = Some(e),
                    Err(poisoned) => *poisoned.into_inner() = Some(e),
                }
                ProofError::Read(message)
            })?;
            let mut read = read.into_iter();
            for slot in found.iter_mut().filter(|hash| hash.is_none()) {
                *slot = read.next().flatten();
            }
        }
        indexes
            .iter()
            .zip(found)
            .map(|(&i, h)| {
                h.ok_or_else(|| {
                    let (level, index) = merkle::split_stored_hash_index(i);
                    ProofError::MissingHash { level, index }
                })
            })
            .collect()
    }
}

/// How many of the latest stored hashes the ledger keeps in memory: 1 MiB, several of the
/// largest batches the sequencer makes (4,096 entries write about 8,192 stored hashes).
const RECENT_HASHES: usize = 1 << 15;

/// The stored hashes this ledger's latest batches wrote, and the roots of the complete subtrees
/// of the tree it last extended (its frontier). Together they hold every hash of the inclusion
/// proof of an entry just appended: below the level where the entry's index and the tree size
/// part ways the proof's hashes were written by the last few batches, above it they are the
/// frontier's. A receipt for an append is then proved without a read from the backend (at
/// 64 gRPC writers, reading them back was a tenth of the daemon's CPU). Stored hashes never
/// change once written, and the proof is still checked against the signed root before it
/// leaves; any other proof reads the backend, so damage there is still found.
#[derive(Debug, Default)]
struct RecentHashes {
    /// The append-order index of `hashes[0]`.
    start: u64,
    /// Consecutive stored hashes, oldest first.
    hashes: VecDeque<Hash>,
    /// `(stored hash index, hash)` of each complete subtree of the frontier.
    frontier: Vec<(u64, Hash)>,
}

impl RecentHashes {
    /// Records a committed batch's stored hashes (from append-order index `first`) and the
    /// frontier after it. A batch that does not follow the last one recorded (another daemon
    /// sharing the backend appended in between) starts the run again.
    fn record(&mut self, first: u64, hashes: &[Hash], frontier: Vec<(u64, Hash)>) {
        if self.start + self.hashes.len() as u64 != first {
            self.hashes.clear();
            self.start = first;
        }
        self.hashes.extend(hashes.iter().copied());
        let excess = self.hashes.len().saturating_sub(RECENT_HASHES);
        self.hashes.drain(..excess);
        self.start += excess as u64;
        self.frontier = frontier;
    }

    /// The stored hash at append-order `index`, if it is held here.
    fn get(&self, index: u64) -> Option<Hash> {
        index
            .checked_sub(self.start)
            .and_then(|at| self.hashes.get(usize::try_from(at).ok()?).copied())
            .or_else(|| {
                self.frontier
                    .iter()
                    .find(|(stored, _)| *stored == index)
                    .map(|(_, hash)| *hash)
            })
    }
}

/// A signed checkpoint as the ledger issued it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The tree size.
    pub size: u64,
    /// The root hash.
    pub root: Hash,
    /// The signed note.
    pub note: String,
}

/// An append request checked by [`Ledger::prepare`] or [`Ledger::prepare_cbor`]: a valid kind,
/// a deterministic payload, a size within the limit.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The entry's kind.
    kind: EntryKind,
    /// The payload in deterministic form, when the request was made from a value: it comes back
    /// as the appended entry's decoded payload. `None` for a payload prepared from its bytes.
    payload: Option<Value>,
    /// The payload's deterministic encoding, made once here and framed into each attempt's
    /// entry bytes (an append rebuilt after a conflict does not encode it again).
    payload_cbor: Vec<u8>,
}

/// Refuses an entry an append cannot follow, saying why.
pub type EntryCheck = Arc<dyn Fn(&Entry) -> Result<(), String> + Send + Sync>;

/// A condition one append must meet against the entries other writers sharing the backend
/// appended since the caller last looked (for example: nobody published this version
/// meanwhile). It is checked while the shared backend's append lock is held, so no entry can
/// slip in between the check and the commit. On a backend without other writers it is not
/// checked: the caller's own locks already order its appends.
#[derive(Clone)]
pub struct Condition {
    /// The log size the caller's view covers; entries from this index on are checked.
    pub after: u64,
    /// Refuses an entry the append cannot follow, saying why.
    pub check: EntryCheck,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

/// One appended entry.
#[derive(Clone, Debug)]
pub struct Appended {
    /// Its index.
    pub index: u64,
    /// Its leaf hash.
    pub leaf_hash: Hash,
    /// Its encoded bytes.
    pub entry: Vec<u8>,
    /// The same entry, decoded, when it was prepared from a value ([`Ledger::prepare`]): what
    /// `entry` encodes, so a caller that applies the event does not decode the bytes the ledger
    /// has just encoded. A payload prepared from its bytes ([`Ledger::prepare_cbor`]) is never
    /// decoded on the way in; [`Appended::decoded`] decodes it if asked.
    decoded: Option<Entry>,
}

impl Appended {
    /// The entry decoded: as carried from its request when it was prepared from a value, or
    /// else decoded from its bytes (which fails only if they are damaged in memory).
    pub fn decoded(&self) -> LedgerResult<std::borrow::Cow<'_, Entry>> {
        match &self.decoded {
            Some(entry) => Ok(std::borrow::Cow::Borrowed(entry)),
            None => Ok(std::borrow::Cow::Owned(
                Entry::decode(&self.entry).map_err(|e| {
                    LedgerError::Corrupt(format!("appended entry {}: {e}", self.index))
                })?,
            )),
        }
    }
}

/// How many times one append is rebuilt after other writers extended the log first.
const CONFLICT_RETRIES: u32 = 64;

struct State {
    frontier: Frontier,
    prev: Hash,
    last_time_ms: u64,
    poisoned: Option<String>,
}

/// The ledger: appends in batches, serves entries, checkpoints and proofs.
pub struct Ledger {
    backend: Arc<dyn LedgerBackend>,
    signer: SignerKey,
    verifier: VerifierKey,
    state: Mutex<State>,
    /// What receipts for new entries are proved from (see [`RecentHashes`]).
    recent: RwLock<RecentHashes>,
    latest: RwLock<Arc<SignedCheckpoint>>,
    /// The checkpoint served, put in receipts and mirrored. `None`: every integrated checkpoint
    /// is published at once. `Some`: publication is gated (on witness cosignatures), and only
    /// [`Ledger::publish`] moves it.
    published: RwLock<Option<Arc<SignedCheckpoint>>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("backend", &self.backend.name())
            .field("key", &self.verifier)
            .finish_non_exhaustive()
    }
}

/// Reads the stored tree at its latest checkpoint (`size`, `note`): checks that the checkpoint
/// verifies with `verifier` and that the stored hashes lead to its root, and returns the append
/// state and the checkpoint.
fn load(
    backend: &dyn LedgerBackend,
    verifier: &VerifierKey,
    size: u64,
    note: Vec<u8>,
) -> LedgerResult<(State, SignedCheckpoint)> {
    let checkpoint = Checkpoint::open(&note, verifier).map_err(|e| LedgerError::WrongKey {
        key: verifier.to_string(),
        size,
        reason: e.to_string(),
    })?;
    if checkpoint.size != size {
        return Err(LedgerError::Corrupt(format!(
            "checkpoint stored under size {size} says size {}",
            checkpoint.size
        )));
    }
    let reader = Reader::new(backend);
    let frontier = Frontier::load(size, &reader).map_err(|e| reader.fail(e))?;
    let root = if size == 0 {
        empty_root()
    } else {
        frontier.root()
    };
    if root != checkpoint.root {
        return Err(LedgerError::Corrupt(format!(
            "stored tree hashes give root {root} at size {size}, but the signed checkpoint says {}",
            checkpoint.root
        )));
    }
    let (prev, last_time_ms) = if size == 0 {
        (Hash::ZERO, 0)
    } else {
        let last = backend.entries(size - 1, size)?;
        let bytes = last.first().ok_or(LedgerError::NoSuchEntry {
            index: size - 1,
            size,
        })?;
        let leaf = merkle::leaf_hash(bytes);
        let reader = Reader::new(backend);
        let stored = reader
            .read_hashes(&[stored_hash_index(0, size - 1)])
            .map_err(|e| reader.fail(e))?;
        if stored.first() != Some(&leaf) {
            return Err(LedgerError::Corrupt(format!(
                "entry {} does not match its stored leaf hash",
                size - 1
            )));
        }
        let entry = Entry::decode(bytes)
            .map_err(|e| LedgerError::Corrupt(format!("entry {}: {e}", size - 1)))?;
        (leaf, entry.time_ms)
    };
    let note = String::from_utf8(note)
        .map_err(|_| LedgerError::Corrupt("checkpoint is not UTF-8".into()))?;
    let state = State {
        frontier,
        prev,
        last_time_ms,
        poisoned: None,
    };
    Ok((state, SignedCheckpoint { size, root, note }))
}

impl Ledger {
    /// Opens a ledger: checks that the latest checkpoint verifies with `signer`'s key and that
    /// the stored hashes lead to its root. A fresh backend gets a signed checkpoint of size 0.
    pub fn open(backend: Arc<dyn LedgerBackend>, signer: SignerKey) -> LedgerResult<Self> {
        let verifier = signer.verifier();
        let (state, latest) = match backend.latest_checkpoint()? {
            None => {
                let root = empty_root();
                let note = Checkpoint::new(signer.name(), 0, root)
                    .sign(&signer)
                    .map_err(|e| LedgerError::Corrupt(e.to_string()))?;
                let created = backend.commit(&LedgerBatch {
                    first_index: 0,
                    entries: Vec::new(),
                    leaf_hashes: Vec::new(),
                    first_hash_index: 0,
                    hashes: Vec::new(),
                    checkpoint_size: 0,
                    checkpoint: note.clone().into_bytes(),
                });
                match created {
                    Ok(()) => (
                        State {
                            frontier: Frontier::new(),
                            prev: Hash::ZERO,
                            last_time_ms: 0,
                            poisoned: None,
                        },
                        SignedCheckpoint {
                            size: 0,
                            root,
                            note,
                        },
                    ),
                    // Another writer sharing the backend created the log, and extended it,
                    // between our read and our commit: open the tree it stored.
                    Err(LedgerError::Conflict { .. }) => match backend.latest_checkpoint()? {
                        Some((size, note)) => load(backend.as_ref(), &verifier, size, note)?,
                        None => {
                            return Err(LedgerError::Corrupt(
                                "the stored log refused an empty start but has no checkpoint"
                                    .into(),
                            ));
                        }
                    },
                    Err(err) => return Err(err),
                }
            }
            Some((size, note)) => load(backend.as_ref(), &verifier, size, note)?,
        };
        let recent = RecentHashes {
            start: stored_hash_count(state.frontier.size()),
            hashes: VecDeque::new(),
            frontier: state.frontier.stored_nodes(),
        };
        Ok(Ledger {
            backend,
            signer,
            verifier,
            recent: RwLock::new(recent),
            state: Mutex::new(state),
            latest: RwLock::new(Arc::new(latest)),
            published: RwLock::new(None),
        })
    }

    /// The log's verifier key.
    pub fn verifier(&self) -> &VerifierKey {
        &self.verifier
    }

    /// The log's origin.
    pub fn origin(&self) -> &str {
        self.signer.name()
    }

    /// The log's signing key, for the statements the log itself signs besides checkpoints
    /// (a badge's VSA, as a DSSE envelope: its pre-authentication encoding never reads as a
    /// checkpoint, nor a checkpoint as one).
    pub fn signer(&self) -> &SignerKey {
        &self.signer
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The latest signed checkpoint.
    pub fn latest(&self) -> Arc<SignedCheckpoint> {
        match self.latest.read() {
            Ok(latest) => latest.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The published checkpoint: what is served as the log's checkpoint, put in receipts and
    /// bundles, and mirrored. Without a publication gate it is the latest one.
    pub fn published(&self) -> Arc<SignedCheckpoint> {
        let gated = match self.published.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        gated.unwrap_or_else(|| self.latest())
    }

    /// Whether publication is gated (see [`Ledger::gate_publication`]).
    pub fn is_gated(&self) -> bool {
        match self.published.read() {
            Ok(slot) => slot.is_some(),
            Err(poisoned) => poisoned.into_inner().is_some(),
        }
    }

    /// From now on, only [`Ledger::publish`] moves the published checkpoint; it starts at
    /// `initial`, which must be a checkpoint of this log no larger than the latest.
    pub fn gate_publication(&self, initial: SignedCheckpoint) -> LedgerResult<()> {
        self.check_published(&initial)?;
        match self.published.write() {
            Ok(mut slot) => *slot = Some(Arc::new(initial)),
            Err(poisoned) => *poisoned.into_inner() = Some(Arc::new(initial)),
        }
        Ok(())
    }

    /// Publishes a checkpoint (the log's signed note, usually with cosignatures appended). It
    /// must be signed by the log, match the root the log committed at its size, and not be
    /// smaller than the one published now; a smaller one is ignored.
    pub fn publish(&self, checkpoint: SignedCheckpoint) -> LedgerResult<()> {
        self.check_published(&checkpoint)?;
        let mut slot = match self.published.write() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        if slot.as_ref().is_none_or(|p| p.size <= checkpoint.size) {
            *slot = Some(Arc::new(checkpoint));
        }
        Ok(())
    }

    fn check_published(&self, checkpoint: &SignedCheckpoint) -> LedgerResult<()> {
        let opened = Checkpoint::open(checkpoint.note.as_bytes(), &self.verifier)
            .map_err(|e| LedgerError::Corrupt(format!("published checkpoint: {e}")))?;
        let (root, _) = self.trusted_root(opened.size)?;
        if opened.size != checkpoint.size || opened.root != checkpoint.root || root != opened.root {
            return Err(LedgerError::Corrupt(format!(
                "published checkpoint of size {} does not match the log's root at that size",
                opened.size
            )));
        }
        Ok(())
    }

    /// Appends entries as one batch (see [`Ledger::append_prepared`]). Any invalid request
    /// rejects the whole batch before anything is written.
    pub fn append(
        &self,
        requests: Vec<(EntryKind, Value)>,
        now_ms: u64,
    ) -> LedgerResult<(Vec<Appended>, Arc<SignedCheckpoint>)> {
        let prepared = requests
            .into_iter()
            .map(|(kind, payload)| Ledger::prepare(kind, payload))
            .collect::<LedgerResult<Vec<_>>>()?;
        self.append_prepared(prepared, now_ms)
    }

    /// Appends prepared requests as one batch: chains them, writes them with their stored hashes
    /// and a new signed checkpoint in one durable commit, and only then returns. `now_ms` is the
    /// integration time (kept monotonic). Requests were checked when prepared, so a batch of
    /// unrelated requests cannot fail because of one of them.
    pub fn append_prepared(
        &self,
        requests: Vec<Prepared>,
        now_ms: u64,
    ) -> LedgerResult<(Vec<Appended>, Arc<SignedCheckpoint>)> {
        let requests = requests.into_iter().map(|r| (r, None)).collect();
        let (results, checkpoint) = self.append_conditional(requests, now_ms)?;
        // Without conditions no single request can fail.
        let appended = results.into_iter().collect::<LedgerResult<Vec<_>>>()?;
        Ok((appended, checkpoint))
    }

    /// Appends prepared requests as one batch, as [`Ledger::append_prepared`] does, except that a
    /// request whose [`Condition`] fails against entries other writers appended is left out and
    /// answered with [`LedgerError::ConditionFailed`]; the others are committed. Returns each
    /// request's outcome, in order.
    pub fn append_conditional(
        &self,
        requests: Vec<(Prepared, Option<Condition>)>,
        now_ms: u64,
    ) -> LedgerResult<(Vec<LedgerResult<Appended>>, Arc<SignedCheckpoint>)> {
        if requests.is_empty() {
            return Ok((Vec::new(), self.latest()));
        }
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(cause) = &state.poisoned {
            return Err(LedgerError::Poisoned(cause.clone()));
        }
        // On a shared backend, hold its append lock from reading the stored tree to the commit:
        // no other writer extends the tree meanwhile.
        let lock = self.backend.append_lock()?;
        if lock.is_some() {
            let stored = self
                .backend
                .latest_checkpoint()?
                .map_or(0, |(size, _)| size);
            if stored != state.frontier.size() {
                self.reload(&mut state)?;
            }
        }
        // A writer that does not take the lock may still extend the log between our reads and
        // our commit; each refused batch is rebuilt on the tree it left, a bounded number of
        // times.
        let mut retries = CONFLICT_RETRIES;
        let (frontier, prev, time_ms, batch, size, root, note, refused) = loop {
            let refused = if lock.is_some() {
                self.refused(&requests, state.frontier.size())?
            } else {
                vec![None; requests.len()]
            };
            let live: Vec<&Prepared> = requests
                .iter()
                .zip(&refused)
                .filter(|(_, refusal)| refusal.is_none())
                .map(|((request, _), _)| request)
                .collect();
            if live.is_empty() {
                let results = refused.into_iter().flatten().map(Err).collect();
                return Ok((results, self.latest()));
            }
            let time_ms = now_ms.max(state.last_time_ms);
            let first_index = state.frontier.size();
            let mut frontier = state.frontier.clone();
            let mut prev = state.prev;
            let mut entries = Vec::with_capacity(live.len());
            let mut leaf_hashes = Vec::with_capacity(live.len());
            let mut hashes = Vec::with_capacity(live.len() * 2);
            for prepared in live {
                // The payload is already deterministic and the entry's size was checked with
                // the largest possible time, so nothing here can fail.
                let bytes = Entry::encode_with_payload(
                    &prepared.kind,
                    &prev,
                    time_ms,
                    &prepared.payload_cbor,
                );
                let leaf = merkle::leaf_hash(&bytes);
                hashes.extend(frontier.append(leaf));
                entries.push(bytes);
                leaf_hashes.push(leaf);
                prev = leaf;
            }
            let size = frontier.size();
            let root = if size == 0 {
                empty_root()
            } else {
                frontier.root()
            };
            let note = Checkpoint::new(self.signer.name(), size, root)
                .sign(&self.signer)
                .map_err(|e| LedgerError::Corrupt(e.to_string()))?;
            let batch = LedgerBatch {
                first_index,
                leaf_hashes,
                entries,
                first_hash_index: stored_hash_count(first_index),
                hashes,
                checkpoint_size: size,
                checkpoint: note.clone().into_bytes(),
            };
            match self.backend.commit(&batch) {
                Ok(()) => {
                    let mut recent = match self.recent.write() {
                        Ok(recent) => recent,
                        Err(poisoned) => poisoned.into_inner(),
                    };
                    recent.record(
                        batch.first_hash_index,
                        &batch.hashes,
                        frontier.stored_nodes(),
                    );
                    break (frontier, prev, time_ms, batch, size, root, note, refused);
                }
                Err(LedgerError::Conflict { .. }) if retries > 0 => {
                    // Nothing of the batch was written: read the tree the other writer left.
                    retries -= 1;
                    self.reload(&mut state)?;
                }
                // A shared backend that could not be reached: the next append takes the lock
                // and reads the stored tree again, whether or not this batch got in, so
                // there is nothing to poison.
                Err(err @ LedgerError::Unavailable { .. }) if lock.is_some() => return Err(err),
                Err(err) => {
                    state.poisoned = Some(err.to_string());
                    return Err(err);
                }
            }
        };
        let first_index = batch.first_index;
        let chain_start = state.prev;
        state.frontier = frontier;
        state.prev = prev;
        state.last_time_ms = time_ms;
        let latest = Arc::new(SignedCheckpoint { size, root, note });
        match self.latest.write() {
            Ok(mut slot) => *slot = latest.clone(),
            Err(poisoned) => *poisoned.into_inner() = latest.clone(),
        }
        // The committed bytes and the payload values of the requests not refused (moved, not
        // copied) become the callers' entries: each entry's `prev` is the leaf before it, the
        // first one's the tip before the batch.
        let templates = requests
            .into_iter()
            .zip(&refused)
            .filter(|(_, refusal)| refusal.is_none())
            .map(|((prepared, _), _)| (prepared.kind, prepared.payload));
        let mut entry_prev = chain_start;
        let mut appended = batch
            .entries
            .into_iter()
            .zip(batch.leaf_hashes)
            .zip(templates)
            .enumerate()
            .map(|(offset, ((entry, leaf_hash), (kind, payload)))| {
                let decoded = payload.map(|payload| Entry {
                    kind,
                    prev: entry_prev,
                    time_ms,
                    payload,
                });
                entry_prev = leaf_hash;
                Appended {
                    index: first_index + offset as u64,
                    leaf_hash,
                    entry,
                    decoded,
                }
            })
            .collect::<Vec<_>>()
            .into_iter();
        let results = refused
            .into_iter()
            .map(|refusal| match refusal {
                Some(err) => Err(err),
                // One appended entry per request not refused, in order.
                None => appended.next().ok_or_else(|| {
                    LedgerError::Corrupt("a batch lost track of its entries".into())
                }),
            })
            .collect();
        Ok((results, latest))
    }

    /// Which requests' conditions fail against the stored entries from the smallest
    /// `Condition::after` up to `size` (the stored log, read under the append lock).
    fn refused(
        &self,
        requests: &[(Prepared, Option<Condition>)],
        size: u64,
    ) -> LedgerResult<Vec<Option<LedgerError>>> {
        let Some(start) = requests
            .iter()
            .filter_map(|(_, c)| c.as_ref().map(|c| c.after))
            .min()
            .filter(|&after| after < size)
        else {
            return Ok(vec![None; requests.len()]);
        };
        let mut entries = Vec::with_capacity((size - start) as usize);
        for (offset, bytes) in self.backend.entries(start, size)?.iter().enumerate() {
            let index = start + offset as u64;
            let entry = Entry::decode(bytes)
                .map_err(|e| LedgerError::Corrupt(format!("entry {index} does not decode: {e}")))?;
            entries.push((index, entry));
        }
        Ok(requests
            .iter()
            .map(|(_, condition)| {
                let condition = condition.as_ref()?;
                entries
                    .iter()
                    .filter(|(index, _)| *index >= condition.after)
                    .find_map(|(index, entry)| {
                        (condition.check)(entry)
                            .err()
                            .map(|reason| LedgerError::ConditionFailed {
                                index: *index,
                                reason,
                            })
                    })
            })
            .collect())
    }

    /// Reads the stored tree into `state` and the latest checkpoint (after another writer
    /// extended it). A stored tree that does not verify poisons the ledger.
    fn reload(&self, state: &mut State) -> LedgerResult<()> {
        let result = match self.backend.latest_checkpoint() {
            Ok(Some((size, note))) => load(self.backend.as_ref(), &self.verifier, size, note),
            Ok(None) => Err(LedgerError::Corrupt(
                "the stored log lost its checkpoints".into(),
            )),
            Err(e) => Err(e),
        };
        match result {
            Ok((loaded, latest)) => {
                let poisoned = state.poisoned.take();
                *state = State { poisoned, ..loaded };
                match self.latest.write() {
                    Ok(mut slot) => *slot = Arc::new(latest),
                    Err(p) => *p.into_inner() = Arc::new(latest),
                }
                Ok(())
            }
            // An unreachable backend says nothing about the stored tree; only a tree that does not
            // verify poisons.
            Err(err @ LedgerError::Unavailable { .. }) => Err(err),
            Err(err) => {
                state.poisoned = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// Checks that the backend can be reached now (for readiness), by reading its latest
    /// checkpoint.
    pub fn probe(&self) -> LedgerResult<()> {
        self.backend.latest_checkpoint().map(|_| ())
    }

    /// Whether other processes append to the same backend (see [`LedgerBackend::shared`]).
    pub fn is_shared(&self) -> bool {
        self.backend.shared()
    }

    /// Catches up with entries other writers sharing the backend appended: if the stored log is
    /// longer than this handle's, reads its tree and latest checkpoint. A daemon on a shared
    /// ledger calls this periodically so its checkpoints, receipts and proofs include them.
    pub fn refresh(&self) -> LedgerResult<bool> {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        let stored = self
            .backend
            .latest_checkpoint()?
            .map_or(0, |(size, _)| size);
        if stored <= state.frontier.size() {
            return Ok(false);
        }
        self.reload(&mut state)?;
        Ok(true)
    }

    /// Checks a request and puts its payload in deterministic form, once: the sequencer prepares
    /// each request as it arrives, so an invalid one is refused alone and a batch never fails
    /// because of it.
    pub fn prepare(kind: EntryKind, payload: Value) -> LedgerResult<Prepared> {
        let payload = custodian_core::entry::canonicalize_payload(payload)?;
        let payload_cbor = custodian_core::entry::encode_value(&payload);
        Ledger::prepared(kind, Some(payload), payload_cbor)
    }

    /// [`Ledger::prepare`] for a payload sent as CBOR bytes (a client's append): bytes already
    /// in deterministic form are checked in one pass and framed as they are, without being
    /// decoded, put in order and encoded again; any others are parsed and put in that form, with
    /// the same refusals (`custodian_core::entry::payload_from_cbor`). The appended entry is not
    /// carried decoded ([`Appended::decoded`] decodes it if asked).
    pub fn prepare_cbor(kind: EntryKind, payload_cbor: Vec<u8>) -> LedgerResult<Prepared> {
        let payload_cbor = custodian_core::entry::payload_from_cbor(payload_cbor)?;
        Ledger::prepared(kind, None, payload_cbor)
    }

    /// A request from a payload's deterministic encoding (and its value, if the caller has it),
    /// once its entry is known to fit.
    fn prepared(
        kind: EntryKind,
        payload: Option<Value>,
        payload_cbor: Vec<u8>,
    ) -> LedgerResult<Prepared> {
        // The largest time encodes longest, so an entry that fits now fits at any time.
        let len = Entry::encoded_len(&kind, u64::MAX, payload_cbor.len());
        if len > custodian_core::entry::MAX_ENTRY_LEN {
            return Err(EntryError::TooLarge { len }.into());
        }
        Ok(Prepared {
            kind,
            payload,
            payload_cbor,
        })
    }

    fn check_size(&self, size: u64) -> LedgerResult<()> {
        let latest = self.latest().size;
        if size > latest {
            return Err(LedgerError::SizeBeyondLog {
                requested: size,
                size: latest,
            });
        }
        Ok(())
    }

    /// The entry at `index`.
    pub fn entry(&self, index: u64) -> LedgerResult<Vec<u8>> {
        let size = self.latest().size;
        if index >= size {
            return Err(LedgerError::NoSuchEntry { index, size });
        }
        let mut entries = self.backend.entries(index, index + 1)?;
        entries
            .pop()
            .ok_or(LedgerError::NoSuchEntry { index, size })
    }

    /// The entry at `index`, checked against its stored leaf hash (which the signed root
    /// covers); a mismatch is [`LedgerError::Corrupt`], and the bytes are not returned.
    pub fn verified_entry(&self, index: u64) -> LedgerResult<Vec<u8>> {
        let bytes = self.entry(index)?;
        let reader = Reader::new(self.backend.as_ref());
        let stored = reader
            .read_hashes(&[stored_hash_index(0, index)])
            .map_err(|e| reader.fail(e))?[0];
        let actual = merkle::leaf_hash(&bytes);
        if actual != stored {
            return Err(LedgerError::Corrupt(format!(
                "entry {index} is damaged: its bytes hash to leaf hash {actual}, but the signed tree records {stored}"
            )));
        }
        Ok(bytes)
    }

    /// The entries `[start, end)` exactly as stored, not checked: exports hand them to an
    /// auditor, who recomputes everything (see `custodian_core::audit`).
    pub fn entries(&self, start: u64, end: u64) -> LedgerResult<Vec<Vec<u8>>> {
        self.check_size(end)?;
        if start >= end {
            return Ok(Vec::new());
        }
        self.backend.entries(start, end)
    }

    /// The index of the entry with this leaf hash.
    pub fn index_of(&self, leaf: &Hash) -> LedgerResult<u64> {
        match self.backend.index_of(leaf)? {
            Some(index) if index < self.latest().size => Ok(index),
            _ => Err(LedgerError::NoSuchLeaf(*leaf)),
        }
    }

    /// The checkpoint of exactly `size` (with its cosignatures when it is the published one).
    pub fn checkpoint(&self, size: u64) -> LedgerResult<SignedCheckpoint> {
        self.check_size(size)?;
        // The published checkpoint of that size carries the witnesses' cosignatures too.
        let published = self.published();
        if published.size == size {
            return Ok(published.as_ref().clone());
        }
        let note = self
            .backend
            .checkpoint(size)?
            .ok_or(LedgerError::NoSuchCheckpoint(size))?;
        let checkpoint = Checkpoint::open(&note, &self.verifier)
            .map_err(|e| LedgerError::Corrupt(format!("checkpoint of size {size}: {e}")))?;
        Ok(SignedCheckpoint {
            size,
            root: checkpoint.root,
            note: String::from_utf8(note)
                .map_err(|_| LedgerError::Corrupt("checkpoint is not UTF-8".into()))?,
        })
    }

    /// Up to `limit` checkpoints of size `>= from_size`.
    pub fn checkpoints(&self, from_size: u64, limit: usize) -> LedgerResult<Vec<(u64, Vec<u8>)>> {
        self.backend.checkpoints(from_size, limit)
    }

    /// The root hash of the tree of the first `size` entries, vouched for by a signature: the
    /// signed root of that size, or one recomputed from stored hashes and proven consistent with
    /// the latest signed root.
    pub fn root_at(&self, size: u64) -> LedgerResult<Hash> {
        self.check_size(size)?;
        Ok(self.trusted_root(size)?.0)
    }

    /// The root of the first `size` entries: the signed root when a checkpoint of that size
    /// exists, otherwise recomputed from stored hashes and proven consistent with the latest
    /// signed root.
    fn trusted_root(&self, size: u64) -> LedgerResult<(Hash, bool)> {
        let latest = self.latest();
        if size == latest.size {
            return Ok((latest.root, true));
        }
        if let Some(note) = self.backend.checkpoint(size)? {
            let checkpoint = Checkpoint::open(&note, &self.verifier)
                .map_err(|e| LedgerError::Corrupt(format!("checkpoint of size {size}: {e}")))?;
            return Ok((checkpoint.root, true));
        }
        // No checkpoint at this size: recompute the root and anchor it to the latest signed root
        // with a consistency proof, so even this root is vouched for by a signature.
        let reader = Reader::new(self.backend.as_ref());
        let root = merkle::tree_hash(size, &reader).map_err(|e| reader.fail(e))?;
        let proof =
            merkle::consistency_proof(size, latest.size, &reader).map_err(|e| reader.fail(e))?;
        merkle::verify_consistency(size, latest.size, &proof, &root, &latest.root).map_err(|e| {
            LedgerError::Corrupt(format!(
                "stored hashes at size {size} are not consistent with the signed checkpoint of size {}: {e}",
                latest.size
            ))
        })?;
        Ok((root, false))
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries, read from stored
    /// hashes and checked against the signed root before it is returned.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> LedgerResult<(Vec<Hash>, Hash)> {
        self.check_size(size)?;
        if index >= size {
            return Err(LedgerError::NoSuchEntry { index, size });
        }
        let (root, _) = self.trusted_root(size)?;
        self.proof_against(index, size, &root)
    }

    /// Reads the inclusion proof and the leaf hash, and checks them against `root`.
    fn proof_against(&self, index: u64, size: u64, root: &Hash) -> LedgerResult<(Vec<Hash>, Hash)> {
        self.proof_with(&Reader::new(self.backend.as_ref()), index, size, root)
    }

    /// [`Ledger::proof_against`] with hashes read through `reader`.
    fn proof_with(
        &self,
        reader: &Reader<'_>,
        index: u64,
        size: u64,
        root: &Hash,
    ) -> LedgerResult<(Vec<Hash>, Hash)> {
        let proof = merkle::inclusion_proof(index, size, reader).map_err(|e| reader.fail(e))?;
        let leaf = reader
            .read_hashes(&[stored_hash_index(0, index)])
            .map_err(|e| reader.fail(e))?[0];
        merkle::verify_inclusion(index, size, &leaf, &proof, root).map_err(|e| {
            LedgerError::Corrupt(format!(
                "stored hashes give a wrong inclusion proof for entry {index} at size {size}: {e}"
            ))
        })?;
        Ok((proof, leaf))
    }

    /// The consistency proof from `old` to `new` entries, checked before it is returned.
    pub fn consistency_proof(&self, old: u64, new: u64) -> LedgerResult<Vec<Hash>> {
        self.check_size(new)?;
        if old > new {
            return Err(LedgerError::Proof(ProofError::SizesOutOfOrder { old, new }));
        }
        let reader = Reader::new(self.backend.as_ref());
        let proof = merkle::consistency_proof(old, new, &reader).map_err(|e| reader.fail(e))?;
        let (old_root, _) = self.trusted_root(old)?;
        let (new_root, _) = self.trusted_root(new)?;
        merkle::verify_consistency(old, new, &proof, &old_root, &new_root).map_err(|e| {
            LedgerError::Corrupt(format!(
                "stored hashes give a wrong consistency proof from {old} to {new}: {e}"
            ))
        })?;
        Ok(proof)
    }

    /// A receipt for entry `index` against the published checkpoint.
    pub fn receipt(&self, index: u64) -> LedgerResult<Receipt> {
        let published = self.published();
        if index >= published.size && index < self.latest().size {
            return Err(LedgerError::NotYetPublished {
                index,
                published: published.size,
            });
        }
        self.receipt_at(index, &published)
    }

    /// A receipt for entry `index` against a given checkpoint (which must include it).
    pub fn receipt_at(&self, index: u64, checkpoint: &SignedCheckpoint) -> LedgerResult<Receipt> {
        // The entry is checked against its stored leaf hash, and that hash against the signed
        // root by the proof check, so the receipt below verifies unless storage changed between.
        let entry = self.verified_entry(index)?;
        let (proof, _) = self.inclusion_proof(index, checkpoint.size)?;
        let receipt = Receipt {
            index,
            entry,
            proof,
            checkpoint: checkpoint.note.clone(),
        };
        // Never hand out a receipt that would not verify.
        receipt
            .verify(&self.verifier)
            .map_err(|e| LedgerError::Corrupt(format!("receipt of entry {index}: {e}")))?;
        Ok(receipt)
    }

    /// A receipt for an entry this ledger has just appended, against the checkpoint of its
    /// batch. The proof's hashes come from those the latest batches wrote, kept in memory
    /// ([`RecentHashes`]), and from the backend only where they are no longer held; the proof
    /// is checked against the batch's root. The signature, made moments ago by this process, is
    /// not checked again (that would cost more than the rest of the append).
    pub fn receipt_for(
        &self,
        appended: &Appended,
        checkpoint: &SignedCheckpoint,
    ) -> LedgerResult<Receipt> {
        let reader = Reader::with_recent(self.backend.as_ref(), &self.recent);
        let (proof, leaf) =
            self.proof_with(&reader, appended.index, checkpoint.size, &checkpoint.root)?;
        if leaf != appended.leaf_hash {
            return Err(LedgerError::Corrupt(format!(
                "stored leaf hash of entry {} differs from the one just appended",
                appended.index
            )));
        }
        Ok(Receipt {
            index: appended.index,
            entry: appended.entry.clone(),
            proof,
            checkpoint: checkpoint.note.clone(),
        })
    }

    /// The stored hash of the complete subtree `n` at `level`: the one hash the tree records for
    /// leaves `[n·2^level, (n+1)·2^level)`, which the log's roots are built from. A reader holding
    /// those leaves checks every one of them against it with [`merkle::subtree_root`], instead of
    /// reading each leaf's stored hash (about twice as many hashes as entries).
    pub fn subtree_hash(&self, level: u8, n: u64) -> LedgerResult<Hash> {
        let end = n
            .checked_add(1)
            .and_then(|count| {
                count
                    .checked_shl(u32::from(level))
                    .filter(|end| *end >> level == count)
            })
            .ok_or_else(|| LedgerError::SizeBeyondLog {
                requested: u64::MAX,
                size: self.latest().size,
            })?;
        self.check_size(end)?;
        self.backend
            .hashes(&[stored_hash_index(level, n)])?
            .into_iter()
            .next()
            .flatten()
            .ok_or_else(|| {
                LedgerError::Corrupt(format!(
                    "the stored tree has no hash for level {level}, index {n} (entries {} to {})",
                    end - (1 << level),
                    end - 1
                ))
            })
    }

    /// The stored leaf hashes of entries `[start, end)`: what each entry must hash to, since the
    /// signed roots cover these hashes. Read as one contiguous range of stored hashes (appending
    /// leaf `i` stores its leaf hash, then one hash per subtree it completes: `i.trailing_ones()`
    /// of them), which is several times faster than fetching each leaf's hash on its own.
    pub fn leaf_hashes(&self, start: u64, end: u64) -> LedgerResult<Vec<Hash>> {
        self.check_size(end)?;
        if start >= end {
            return Ok(Vec::new());
        }
        let all = self
            .backend
            .hash_range(stored_hash_count(start), stored_hash_count(end))?;
        let mut out = Vec::with_capacity((end - start) as usize);
        let mut at = 0usize;
        for i in start..end {
            let leaf = all.get(at).ok_or_else(|| {
                LedgerError::Corrupt(format!("the stored tree ends before leaf {i}'s hash"))
            })?;
            out.push(*leaf);
            at += 1 + i.trailing_ones() as usize;
        }
        Ok(out)
    }

    /// The hashes of a C2SP tlog-tiles hash tile, concatenated (32 bytes each), as a tile
    /// server sends them. A tile wider than the log has reached is `SizeBeyondLog`.
    pub fn tile(&self, tile: &custodian_core::tiles::Tile) -> LedgerResult<Vec<u8>> {
        let size = self.latest().size;
        let available = custodian_core::tiles::tile_width_at(size, tile.level, tile.index);
        let indexes = tile
            .stored_hash_indexes()
            .filter(|_| tile.width <= available)
            .ok_or(LedgerError::SizeBeyondLog {
                requested: tile
                    .index
                    .saturating_mul(256)
                    .saturating_add(u64::from(tile.width)),
                size,
            })?;
        let (Some(&first), Some(&last)) = (indexes.first(), indexes.last()) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(indexes.len() * 32);
        if tile.level == 0 {
            // Leaf hashes lie within twice their count of one another: one read covers them.
            let span = self.backend.hash_range(first, last + 1)?;
            for index in indexes {
                let hash = span.get((index - first) as usize).ok_or_else(|| {
                    LedgerError::Corrupt(format!("stored hash {index} is missing"))
                })?;
                out.extend_from_slice(&hash.0);
            }
        } else {
            // Upper-level hashes are far apart in the append order: read each one.
            for index in indexes {
                let hash = self.backend.hash_range(index, index + 1)?;
                let hash = hash.first().ok_or_else(|| {
                    LedgerError::Corrupt(format!("stored hash {index} is missing"))
                })?;
                out.extend_from_slice(&hash.0);
            }
        }
        Ok(out)
    }

    /// The stored hashes `[start, end)` in append order, for export.
    pub fn stored_hashes(&self, start: u64, end: u64) -> LedgerResult<Vec<Hash>> {
        let limit = stored_hash_count(self.latest().size);
        if end > limit {
            return Err(LedgerError::SizeBeyondLog {
                requested: end,
                size: limit,
            });
        }
        self.backend.hash_range(start, end)
    }
}

/// An in-memory ledger backend for tests and tools.
#[derive(Default)]
pub struct MemoryLedger {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    entries: Vec<Vec<u8>>,
    hashes: Vec<Hash>,
    leaves: std::collections::HashMap<Hash, u64>,
    checkpoints: std::collections::BTreeMap<u64, Vec<u8>>,
}

impl MemoryLedger {
    /// An empty in-memory backend.
    pub fn new() -> Self {
        MemoryLedger::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        match self.inner.lock() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl LedgerBackend for MemoryLedger {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn latest_checkpoint(&self) -> LedgerResult<Option<(u64, Vec<u8>)>> {
        Ok(self
            .lock()
            .checkpoints
            .iter()
            .next_back()
            .map(|(s, n)| (*s, n.clone())))
    }

    fn checkpoint(&self, size: u64) -> LedgerResult<Option<Vec<u8>>> {
        Ok(self.lock().checkpoints.get(&size).cloned())
    }

    fn checkpoints(&self, from_size: u64, limit: usize) -> LedgerResult<Vec<(u64, Vec<u8>)>> {
        Ok(self
            .lock()
            .checkpoints
            .range(from_size..)
            .take(limit)
            .map(|(s, n)| (*s, n.clone()))
            .collect())
    }

    fn entries(&self, start: u64, end: u64) -> LedgerResult<Vec<Vec<u8>>> {
        let inner = self.lock();
        (start..end)
            .map(|i| {
                inner
                    .entries
                    .get(i as usize)
                    .cloned()
                    .ok_or(LedgerError::NoSuchEntry {
                        index: i,
                        size: inner.entries.len() as u64,
                    })
            })
            .collect()
    }

    fn index_of(&self, leaf: &Hash) -> LedgerResult<Option<u64>> {
        Ok(self.lock().leaves.get(leaf).copied())
    }

    fn hashes(&self, indexes: &[u64]) -> LedgerResult<Vec<Option<Hash>>> {
        let inner = self.lock();
        Ok(indexes
            .iter()
            .map(|&i| inner.hashes.get(i as usize).copied())
            .collect())
    }

    fn hash_range(&self, start: u64, end: u64) -> LedgerResult<Vec<Hash>> {
        let inner = self.lock();
        let end = (end as usize).min(inner.hashes.len());
        Ok(inner.hashes[(start as usize).min(end)..end].to_vec())
    }

    fn commit(&self, batch: &LedgerBatch) -> LedgerResult<()> {
        let mut inner = self.lock();
        if inner.entries.len() as u64 != batch.first_index
            || inner.hashes.len() as u64 != batch.first_hash_index
        {
            return Err(LedgerError::backend(
                "memory",
                "batch does not start at the end of the log",
            ));
        }
        for (i, (entry, leaf)) in batch.entries.iter().zip(&batch.leaf_hashes).enumerate() {
            inner.entries.push(entry.clone());
            inner.leaves.insert(*leaf, batch.first_index + i as u64);
        }
        inner.hashes.extend_from_slice(&batch.hashes);
        inner
            .checkpoints
            .insert(batch.checkpoint_size, batch.checkpoint.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger_conformance::{CountingBackend, payload, test_signer};

    fn counted() -> (Ledger, Arc<CountingBackend>) {
        let counter = Arc::new(CountingBackend::new(Arc::new(MemoryLedger::new())));
        let ledger = Ledger::open(counter.clone(), test_signer()).expect("open");
        (ledger, counter)
    }

    fn append(ledger: &Ledger, count: u64) -> (Vec<Appended>, Arc<SignedCheckpoint>) {
        let size = ledger.latest().size;
        let requests = (size..size + count)
            .map(|i| (EntryKind::RunAttested, payload(i)))
            .collect();
        ledger.append(requests, size).expect("append")
    }

    #[test]
    fn each_appended_entry_comes_back_decoded_as_its_bytes_say() {
        // The registry applies `decoded` without reading `entry`, so the two must agree: the
        // same kind, payload, time, and `prev` chained across the batch and from the batch before.
        // Every third request is prepared from its payload's bytes, as a client's append is: it
        // is not carried decoded, and `decoded()` decodes its bytes instead.
        let (ledger, _) = counted();
        let mut tip = Hash::ZERO;
        let mut next = 0;
        for count in [3, 1, 4] {
            let size = ledger.latest().size;
            let requests = (size..size + count)
                .map(|i| {
                    let prepared = if i % 3 == 1 {
                        let bytes = custodian_core::entry::encode_value(&payload(i));
                        Ledger::prepare_cbor(EntryKind::RunAttested, bytes)
                    } else {
                        Ledger::prepare(EntryKind::RunAttested, payload(i))
                    };
                    (prepared.expect("prepared"), None)
                })
                .collect();
            let (appended, _) = ledger.append_conditional(requests, size).expect("append");
            assert_eq!(appended.len() as u64, count);
            for a in appended {
                let a = a.expect("appended");
                assert_eq!(a.index, next);
                assert_eq!(a.leaf_hash, merkle::leaf_hash(&a.entry));
                assert_eq!(a.decoded.is_none(), next % 3 == 1, "entry {next}");
                let from_bytes = Entry::decode(&a.entry).expect("decode");
                let decoded = a.decoded().expect("decoded");
                assert_eq!(*decoded, from_bytes);
                assert_eq!(decoded.prev, tip);
                assert_eq!(decoded.payload, payload(next));
                tip = a.leaf_hash;
                next += 1;
            }
        }
    }

    #[test]
    fn receipts_for_new_entries_read_no_stored_hashes() {
        let (ledger, counter) = counted();
        // Batches of every size from 1 to 40 cross every kind of subtree boundary.
        for count in 1..=40u64 {
            let (appended, checkpoint) = append(&ledger, count);
            counter.take();
            for entry in &appended {
                let receipt = ledger.receipt_for(entry, &checkpoint).expect("receipt");
                receipt.verify(ledger.verifier()).expect("receipt verifies");
                assert_eq!(
                    receipt.proof,
                    ledger
                        .inclusion_proof(entry.index, checkpoint.size)
                        .expect("proof")
                        .0
                );
                counter.take();
            }
            for entry in &appended {
                ledger.receipt_for(entry, &checkpoint).expect("receipt");
            }
            assert_eq!(
                counter.take().0,
                0,
                "receipts of a batch of {count} read stored hashes"
            );
        }
    }

    #[test]
    fn a_receipt_for_an_entry_no_longer_held_reads_the_backend() {
        let (ledger, counter) = counted();
        let (first, _) = append(&ledger, 3);
        // Enough entries that entry 1's neighbours leave the recent hashes.
        let mut latest = ledger.latest();
        while stored_hash_count(latest.size) < RECENT_HASHES as u64 + 1_000 {
            latest = append(&ledger, 4_000).1;
        }
        counter.take();
        let receipt = ledger.receipt_for(&first[1], &latest).expect("receipt");
        receipt.verify(ledger.verifier()).expect("receipt verifies");
        assert!(
            counter.take().0 > 0,
            "an old receipt was answered from memory alone"
        );
        assert_eq!(
            receipt.proof,
            ledger.inclusion_proof(1, latest.size).expect("proof").0
        );
    }

    #[test]
    fn recent_hashes_keep_a_consecutive_run_and_the_frontier() {
        let hash = |n: u8| Hash([n; 32]);
        let mut recent = RecentHashes::default();
        recent.record(0, &[hash(1), hash(2)], vec![(100, hash(9))]);
        assert_eq!(recent.get(0), Some(hash(1)));
        assert_eq!(recent.get(1), Some(hash(2)));
        assert_eq!(recent.get(2), None);
        assert_eq!(recent.get(100), Some(hash(9)));
        recent.record(2, &[hash(3)], vec![]);
        assert_eq!(recent.get(2), Some(hash(3)));
        assert_eq!(recent.get(100), None, "the frontier is replaced");
        // A batch after a gap (another daemon appended): only the new run is held.
        recent.record(10, &[hash(4)], vec![]);
        assert_eq!(recent.get(0), None);
        assert_eq!(recent.get(2), None);
        assert_eq!(recent.get(10), Some(hash(4)));
        // The oldest hashes leave first once the run is full.
        let many = vec![hash(5); RECENT_HASHES];
        recent.record(11, &many, vec![]);
        assert_eq!(recent.get(10), None);
        assert_eq!(recent.get(11), Some(hash(5)));
        assert_eq!(recent.get(11 + RECENT_HASHES as u64 - 1), Some(hash(5)));
        assert_eq!(recent.hashes.len(), RECENT_HASHES);
    }
}
