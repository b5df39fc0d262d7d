//! Offline audit of an exported ledger: recompute every stored hash and root from the entries,
//! check every checkpoint's signature and root, check the `prev` chain and the time order, and
//! name the first index where anything diverges.
//!
//! The export format (written by `custodian log export`, described in `docs/formats.md`):
//! - `entries`: every entry in order, each as a 4-byte big-endian length and the entry bytes;
//! - `tree-hashes`: every stored hash in append order (see [`crate::merkle`]), 32 bytes each;
//! - `checkpoints/<size>`: every signed checkpoint the log issued, one note per file.
//!
//! The auditor is fed incrementally, so a log of any length is checked in constant memory.

use std::io::Read;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::entry::{Entry, EntryError, MAX_ENTRY_LEN};
use crate::merkle::{Frontier, Hash, empty_root, leaf_hash, split_stored_hash_index};
use crate::note::VerifierKey;

/// Where and how an audit failed. Every variant names the index (or size) concerned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// A checkpoint file does not verify or parse.
    #[error("checkpoint {name}: {source}")]
    Checkpoint {
        /// The checkpoint's file name or size.
        name: String,
        /// Why it was rejected.
        source: CheckpointError,
    },
    /// Two checkpoints claim the same size with different roots: the log forked.
    #[error("two checkpoints of size {size} have different roots ({a} and {b}): the log forked")]
    Fork {
        /// The tree size.
        size: u64,
        /// One root.
        a: Hash,
        /// The other root.
        b: Hash,
    },
    /// An entry's bytes are not a valid entry.
    #[error("entry {index}: {source}")]
    Entry {
        /// The entry's index.
        index: u64,
        /// Why it was rejected.
        source: EntryError,
    },
    /// An entry's `prev` is not the previous entry's leaf hash.
    #[error(
        "entry {index}: prev is {found}, but entry {previous}'s leaf hash is {expected}; entry {previous} or {index} was changed",
        previous = index - 1
    )]
    BrokenChain {
        /// The entry whose `prev` does not match.
        index: u64,
        /// Its `prev`.
        found: Hash,
        /// The previous entry's leaf hash.
        expected: Hash,
    },
    /// The first entry's `prev` is not 32 zero bytes.
    #[error("entry 0: prev must be 32 zero bytes, found {0}")]
    FirstPrev(Hash),
    /// Integration times go backwards.
    #[error(
        "entry {index}: integration time {time_ms} ms is before the previous entry's {previous_ms} ms"
    )]
    TimeWentBack {
        /// The entry's index.
        index: u64,
        /// Its time.
        time_ms: u64,
        /// The previous entry's time.
        previous_ms: u64,
    },
    /// A stored tree hash differs from the one recomputed from the entries.
    #[error(
        "stored tree hash at level {level}, index {node} (covering entries {first}..{end}) is {found}, recomputed {expected}"
    )]
    TreeHash {
        /// The tree level (0 = leaf hashes).
        level: u8,
        /// The index within the level.
        node: u64,
        /// The first entry the hash covers.
        first: u64,
        /// One past the last entry it covers.
        end: u64,
        /// The stored hash.
        found: Hash,
        /// The recomputed hash.
        expected: Hash,
    },
    /// An entry's leaf hash differs from the stored leaf hash.
    #[error(
        "entry {index}: its bytes hash to leaf hash {expected}, but the stored leaf hash is {found}; the entry or its stored hash was changed"
    )]
    LeafHash {
        /// The entry's index.
        index: u64,
        /// The stored leaf hash.
        found: Hash,
        /// The leaf hash of the entry bytes.
        expected: Hash,
    },
    /// There are fewer stored tree hashes than entries need.
    #[error("tree hashes end at {count}, but entry {index} needs more")]
    MissingTreeHashes {
        /// How many stored hashes were read.
        count: u64,
        /// The entry that needed more.
        index: u64,
    },
    /// A checkpoint's root differs from the root recomputed from the entries.
    #[error(
        "checkpoint of size {size} has root {signed}, but entries 0..{size} give {computed}; the first changed entry is at index {from} or later (the previous checkpoint matched)"
    )]
    RootMismatch {
        /// The checkpoint's size.
        size: u64,
        /// The signed root.
        signed: Hash,
        /// The recomputed root.
        computed: Hash,
        /// The size of the last checkpoint that matched (0 if none).
        from: u64,
    },
    /// The export holds fewer entries than the latest checkpoint covers.
    #[error("checkpoint of size {size} covers more entries than the {count} exported")]
    MissingEntries {
        /// The checkpoint's size.
        size: u64,
        /// The number of entries read.
        count: u64,
    },
    /// The export holds entries that no checkpoint signs.
    #[error("{count} entries from index {from} on are not covered by any signed checkpoint")]
    Unsigned {
        /// The first unsigned entry.
        from: u64,
        /// How many.
        count: u64,
    },
    /// There is trailing data after the last stored hash the entries need.
    #[error("{0} stored tree hashes are beyond what the entries need")]
    ExtraTreeHashes(u64),
    /// Reading the export failed or it is truncated.
    #[error("reading {what}: {reason}")]
    Read {
        /// Which file.
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
}

/// What a successful audit checked.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditReport {
    /// The log's origin.
    pub origin: String,
    /// Entries checked.
    pub entries: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Stored tree hashes recomputed and compared.
    pub tree_hashes: u64,
    /// The root of the whole log, equal to the latest checkpoint's.
    pub root: String,
    /// Every signature judged against the keys valid at its entry's ledger time.
    pub keys: KeyAuditReport,
}

/// The key rule (docs/verifying.md, "Keys valid at ledger time") applied to a whole log: every
/// publication, eval run and pre-registration is judged against the keys valid at its entry's
/// ledger time. Signatures are collected as the entries go by and judged at the end, because a
/// revocation for compromise logged later may reach back to them.
#[derive(Default)]
pub struct KeyAudit {
    history: crate::keys::KeyHistory,
    /// Each package's first publication key: the pin.
    pins: std::collections::HashMap<String, u32>,
    /// Each version's publication key, for its pre-registrations.
    publications: std::collections::HashMap<(String, String), u32>,
    /// Keys and package names, interned: a log holds many signatures by few keys.
    strings: Vec<String>,
    interned: std::collections::HashMap<String, u32>,
    signed: Vec<SignedEntry>,
    key_events: u64,
    bad_key_events: Vec<(u64, String)>,
    sealed: u64,
}

/// One signature to judge.
struct SignedEntry {
    index: u64,
    time_ms: u64,
    kind: SignedKind,
    key: u32,
    name: u32,
    /// The publication key of the version (pre-registrations).
    pinned: u32,
}

#[derive(Clone, Copy)]
enum SignedKind {
    Publication,
    Run,
    Preregistration,
}

/// What the key rule found in a log.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyAuditReport {
    /// `KeyEvent` entries read.
    pub key_events: u64,
    /// Signatures judged (publications, runs, pre-registrations).
    pub judged: u64,
    /// Sealed entries, whose events the export does not carry, so not judged.
    pub sealed_not_judged: u64,
    /// Signatures that do not count at their entry's ledger time, in log order.
    pub not_counting: Vec<NotCounting>,
    /// `KeyEvent` entries that do not hold (a rotation without both signatures, …).
    pub bad_key_events: Vec<BadKeyEvent>,
}

/// A signature that does not count at its entry's ledger time.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NotCounting {
    /// The entry's index.
    pub index: u64,
    /// `PackagePublished`, `RunAttested` or `EvalPreregistered`.
    pub kind: &'static str,
    /// The package.
    pub name: String,
    /// The signing key.
    pub key: String,
    /// Why, in a sentence.
    pub why: String,
}

/// A `KeyEvent` entry that does not hold.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BadKeyEvent {
    /// The entry's index.
    pub index: u64,
    /// What is wrong.
    pub reason: String,
}

impl KeyAudit {
    fn intern(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.interned.get(text) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(text.to_string());
        self.interned.insert(text.to_string(), id);
        id
    }

    /// Reads the entry at `index` (its bytes as the log holds them).
    pub fn push(&mut self, index: u64, bytes: &[u8]) {
        use crate::entry::EntryKind;
        let Some(kind) = crate::entry::peek_kind(bytes) else {
            return;
        };
        if !matches!(
            kind,
            "KeyEvent" | "PackagePublished" | "RunAttested" | "EvalPreregistered" | "Sealed"
        ) {
            return;
        }
        let Ok(entry) = Entry::decode(bytes) else {
            return;
        };
        match &entry.kind {
            EntryKind::Sealed => self.sealed += 1,
            EntryKind::KeyEvent => {
                self.key_events += 1;
                match entry.event::<crate::registry::KeyEvent>() {
                    Ok(event) => match crate::keys::check_event(&event, entry.time_ms) {
                        Ok(()) => self.history.add(index, entry.time_ms, event),
                        Err(e) => self.bad_key_events.push((index, e.to_string())),
                    },
                    Err(e) => self.bad_key_events.push((index, e.to_string())),
                }
            }
            EntryKind::PackagePublished => {
                if let Ok(e) = entry.event::<crate::registry::PackagePublished>() {
                    let key = self.intern(&e.publisher_key);
                    let name = self.intern(&e.name);
                    let pinned = *self.pins.entry(e.name.clone()).or_insert(key);
                    self.publications.insert((e.name, e.version), key);
                    self.signed.push(SignedEntry {
                        index,
                        time_ms: entry.time_ms,
                        kind: SignedKind::Publication,
                        key,
                        name,
                        pinned,
                    });
                }
            }
            EntryKind::RunAttested => {
                if let Ok(e) = entry.event::<crate::registry::RunAttested>() {
                    let (key, name) = (self.intern(&e.attester_key), self.intern(&e.name));
                    self.signed.push(SignedEntry {
                        index,
                        time_ms: entry.time_ms,
                        kind: SignedKind::Run,
                        key,
                        name,
                        pinned: key,
                    });
                }
            }
            EntryKind::EvalPreregistered => {
                if let Ok(e) = entry.event::<crate::registry::EvalPreregistered>() {
                    let (key, name) = (self.intern(&e.signer_key), self.intern(&e.name));
                    let pinned = self
                        .publications
                        .get(&(e.name.clone(), e.version.clone()))
                        .copied()
                        .unwrap_or(u32::MAX);
                    self.signed.push(SignedEntry {
                        index,
                        time_ms: entry.time_ms,
                        kind: SignedKind::Preregistration,
                        key,
                        name,
                        pinned,
                    });
                }
            }
            _ => {}
        }
    }

    /// Judges every signature collected.
    pub fn finish(self) -> KeyAuditReport {
        use crate::keys::ATTESTER;
        let text = |id: u32| self.strings.get(id as usize).map_or("", String::as_str);
        let mut not_counting = Vec::new();
        for s in &self.signed {
            let (key, name) = (text(s.key), text(s.name));
            let (kind, judgement) = match s.kind {
                SignedKind::Publication => (
                    "PackagePublished",
                    self.history
                        .judge_publisher(key, name, text(s.pinned), s.index, s.time_ms)
                        .err(),
                ),
                SignedKind::Run => (
                    "RunAttested",
                    self.history
                        .judge(ATTESTER, key, name, s.index, s.time_ms)
                        .err(),
                ),
                SignedKind::Preregistration => {
                    let publisher =
                        self.history
                            .judge_publisher(key, name, text(s.pinned), s.index, s.time_ms);
                    let attester = self.history.judge(ATTESTER, key, name, s.index, s.time_ms);
                    ("EvalPreregistered", publisher.or(attester).err())
                }
            };
            if let Some(judgement) = judgement {
                not_counting.push(NotCounting {
                    index: s.index,
                    kind,
                    name: name.to_string(),
                    key: key.to_string(),
                    why: judgement.to_string(),
                });
            }
        }
        KeyAuditReport {
            key_events: self.key_events,
            judged: self.signed.len() as u64,
            sealed_not_judged: self.sealed,
            not_counting,
            bad_key_events: self
                .bad_key_events
                .into_iter()
                .map(|(index, reason)| BadKeyEvent { index, reason })
                .collect(),
        }
    }
}

/// An incremental auditor. Feed it the checkpoints, then every entry in order (with the stored
/// hashes if the export has them), then call [`Auditor::finish`].
pub struct Auditor {
    verifier: VerifierKey,
    /// Checkpoints sorted by size, deduplicated.
    checkpoints: Vec<Checkpoint>,
    next_checkpoint: usize,
    last_matched: u64,
    frontier: Frontier,
    prev: Hash,
    prev_time: u64,
    hashes_checked: u64,
}

impl Auditor {
    /// Opens every checkpoint (`(name, bytes)` pairs; the name is used in errors), checking its
    /// signature and origin, and rejects forks (two roots for one size).
    pub fn new(
        verifier: VerifierKey,
        checkpoints: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> Result<Self, AuditError> {
        let mut opened = Vec::new();
        for (name, bytes) in checkpoints {
            let checkpoint = Checkpoint::open(&bytes, &verifier)
                .map_err(|source| AuditError::Checkpoint { name, source })?;
            opened.push(checkpoint);
        }
        opened.sort_by_key(|c| c.size);
        let mut checkpoints: Vec<Checkpoint> = Vec::with_capacity(opened.len());
        for checkpoint in opened {
            if let Some(last) = checkpoints.last()
                && last.size == checkpoint.size
            {
                if last.root != checkpoint.root {
                    return Err(AuditError::Fork {
                        size: checkpoint.size,
                        a: last.root,
                        b: checkpoint.root,
                    });
                }
                continue;
            }
            checkpoints.push(checkpoint);
        }
        let mut auditor = Auditor {
            verifier,
            checkpoints,
            next_checkpoint: 0,
            last_matched: 0,
            frontier: Frontier::new(),
            prev: Hash::ZERO,
            prev_time: 0,
            hashes_checked: 0,
        };
        auditor.check_checkpoints()?;
        Ok(auditor)
    }

    /// The number of entries checked so far.
    pub fn entries(&self) -> u64 {
        self.frontier.size()
    }

    /// Checks the next entry. `stored` supplies the export's stored hashes; pass `None` to
    /// check entries and checkpoints only.
    pub fn push_entry(
        &mut self,
        bytes: &[u8],
        stored: Option<&mut dyn FnMut() -> Result<Option<Hash>, AuditError>>,
    ) -> Result<(), AuditError> {
        let index = self.frontier.size();
        let entry = Entry::decode(bytes).map_err(|source| AuditError::Entry { index, source })?;
        if index == 0 && entry.prev != Hash::ZERO {
            return Err(AuditError::FirstPrev(entry.prev));
        }
        if index > 0 && entry.prev != self.prev {
            return Err(AuditError::BrokenChain {
                index,
                found: entry.prev,
                expected: self.prev,
            });
        }
        if entry.time_ms < self.prev_time {
            return Err(AuditError::TimeWentBack {
                index,
                time_ms: entry.time_ms,
                previous_ms: self.prev_time,
            });
        }
        let leaf = leaf_hash(bytes);
        let first_stored = crate::merkle::stored_hash_count(index);
        let created = self.frontier.append(leaf);
        if let Some(next) = stored {
            for (offset, expected) in created.iter().enumerate() {
                let stored_index = first_stored + offset as u64;
                let found = next()?.ok_or(AuditError::MissingTreeHashes {
                    count: stored_index,
                    index,
                })?;
                if found != *expected {
                    if offset == 0 {
                        return Err(AuditError::LeafHash {
                            index,
                            found,
                            expected: *expected,
                        });
                    }
                    let (level, node) = split_stored_hash_index(stored_index);
                    return Err(AuditError::TreeHash {
                        level,
                        node,
                        first: node << level,
                        end: (node + 1) << level,
                        found,
                        expected: *expected,
                    });
                }
                self.hashes_checked += 1;
            }
        }
        self.prev = leaf;
        self.prev_time = entry.time_ms;
        self.check_checkpoints()
    }

    /// Compares every checkpoint whose size has been reached with the recomputed root.
    fn check_checkpoints(&mut self) -> Result<(), AuditError> {
        while let Some(checkpoint) = self.checkpoints.get(self.next_checkpoint) {
            if checkpoint.size != self.frontier.size() {
                break;
            }
            let computed = if checkpoint.size == 0 {
                empty_root()
            } else {
                self.frontier.root()
            };
            if computed != checkpoint.root {
                return Err(AuditError::RootMismatch {
                    size: checkpoint.size,
                    signed: checkpoint.root,
                    computed,
                    from: self.last_matched,
                });
            }
            self.last_matched = checkpoint.size;
            self.next_checkpoint += 1;
        }
        Ok(())
    }

    /// Ends the audit: every checkpoint must have been reached and every entry signed.
    pub fn finish(self) -> Result<AuditReport, AuditError> {
        let count = self.frontier.size();
        if let Some(checkpoint) = self.checkpoints.get(self.next_checkpoint) {
            return Err(AuditError::MissingEntries {
                size: checkpoint.size,
                count,
            });
        }
        if count > self.last_matched {
            return Err(AuditError::Unsigned {
                from: self.last_matched,
                count: count - self.last_matched,
            });
        }
        Ok(AuditReport {
            keys: KeyAuditReport::default(),
            origin: self.verifier.name().to_string(),
            entries: count,
            checkpoints: self.checkpoints.len() as u64,
            tree_hashes: self.hashes_checked,
            root: if count == 0 {
                empty_root().to_hex()
            } else {
                self.frontier.root().to_hex()
            },
        })
    }
}

/// Reads length-prefixed entries (4-byte big-endian length, then the bytes) one at a time.
pub struct EntryReader<R> {
    inner: R,
    index: u64,
}

impl<R: Read> EntryReader<R> {
    /// Wraps a reader positioned at the first entry.
    pub fn new(inner: R) -> Self {
        EntryReader { inner, index: 0 }
    }
}

impl<R: Read> Iterator for EntryReader<R> {
    type Item = Result<Vec<u8>, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut len = [0u8; 4];
        match read_full(&mut self.inner, &mut len) {
            Ok(0) => return None,
            Ok(4) => {}
            Ok(_) => {
                return Some(Err(AuditError::Read {
                    what: "entries",
                    reason: format!("truncated length prefix of entry {}", self.index),
                }));
            }
            Err(e) => return Some(Err(e)),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_ENTRY_LEN {
            return Some(Err(AuditError::Entry {
                index: self.index,
                source: EntryError::TooLarge { len },
            }));
        }
        let mut bytes = vec![0u8; len];
        match read_full(&mut self.inner, &mut bytes) {
            Ok(n) if n == len => {}
            Ok(_) => {
                return Some(Err(AuditError::Read {
                    what: "entries",
                    reason: format!("entry {} is truncated", self.index),
                }));
            }
            Err(e) => return Some(Err(e)),
        }
        self.index += 1;
        Some(Ok(bytes))
    }
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize, AuditError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(AuditError::Read {
                    what: "export",
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(filled)
}

/// Reads 32-byte stored hashes one at a time.
pub struct HashStream<R> {
    inner: R,
    read: u64,
}

impl<R: Read> HashStream<R> {
    /// Wraps a reader positioned at the first stored hash.
    pub fn new(inner: R) -> Self {
        HashStream { inner, read: 0 }
    }

    /// The next hash, or `None` at the end.
    pub fn next_hash(&mut self) -> Result<Option<Hash>, AuditError> {
        let mut hash = [0u8; 32];
        match read_full(&mut self.inner, &mut hash)? {
            0 => Ok(None),
            32 => {
                self.read += 1;
                Ok(Some(Hash(hash)))
            }
            n => Err(AuditError::Read {
                what: "tree-hashes",
                reason: format!("the last hash is truncated to {n} bytes"),
            }),
        }
    }

    /// Fails if any hash is left unread.
    pub fn expect_end(&mut self) -> Result<(), AuditError> {
        let mut extra = 0;
        while self.next_hash()?.is_some() {
            extra += 1;
        }
        if extra > 0 {
            return Err(AuditError::ExtraTreeHashes(extra));
        }
        Ok(())
    }
}

/// Writes one entry in the export's length-prefixed form.
pub fn write_entry(out: &mut Vec<u8>, entry: &[u8]) {
    out.extend_from_slice(&(entry.len() as u32).to_be_bytes());
    out.extend_from_slice(entry);
}

/// Why an export directory could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Exports go into a new directory, never over an old one.
    #[error("{0} is not empty; export into a new directory")]
    NotEmpty(std::path::PathBuf),
    /// A file could not be created or written.
    #[error("writing {path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
}

/// Writes an export directory in the layout [`audit_dir`] reads (see the module documentation).
pub struct ExportWriter {
    dir: std::path::PathBuf,
    entries: std::io::BufWriter<std::fs::File>,
    hashes: std::io::BufWriter<std::fs::File>,
    buf: Vec<u8>,
    /// Entries written.
    pub entry_count: u64,
    /// Stored tree hashes written.
    pub hash_count: u64,
    /// Checkpoints written.
    pub checkpoint_count: u64,
}

impl ExportWriter {
    /// Creates the directory, which must not exist or be empty.
    pub fn create(dir: &std::path::Path) -> Result<Self, ExportError> {
        let io = |path: std::path::PathBuf| move |source| ExportError::Io { path, source };
        if dir.exists()
            && std::fs::read_dir(dir)
                .map_err(io(dir.to_path_buf()))?
                .next()
                .is_some()
        {
            return Err(ExportError::NotEmpty(dir.to_path_buf()));
        }
        std::fs::create_dir_all(dir.join("checkpoints")).map_err(io(dir.to_path_buf()))?;
        let create = |name: &str| {
            std::fs::File::create(dir.join(name))
                .map(std::io::BufWriter::new)
                .map_err(io(dir.join(name)))
        };
        Ok(ExportWriter {
            dir: dir.to_path_buf(),
            entries: create("entries")?,
            hashes: create("tree-hashes")?,
            buf: Vec::new(),
            entry_count: 0,
            hash_count: 0,
            checkpoint_count: 0,
        })
    }

    /// Writes the checkpoint of `size`.
    pub fn checkpoint(&mut self, size: u64, note: &[u8]) -> std::io::Result<()> {
        std::fs::write(self.dir.join("checkpoints").join(size.to_string()), note)?;
        self.checkpoint_count += 1;
        Ok(())
    }

    /// Appends the next entry.
    pub fn entry(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        self.buf.clear();
        write_entry(&mut self.buf, bytes);
        self.entries.write_all(&self.buf)?;
        self.entry_count += 1;
        Ok(())
    }

    /// Appends stored tree hashes (concatenated 32-byte hashes).
    pub fn hashes(&mut self, hashes: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        self.hashes.write_all(hashes)?;
        self.hash_count += hashes.len() as u64 / 32;
        Ok(())
    }

    /// Writes the first `size` entries and their stored hashes, read in chunks from a local
    /// ledger (`entries(start, end)`, `hashes(start, end)`); `progress` hears of each entry.
    pub fn copy_log<E: From<std::io::Error>>(
        &mut self,
        size: u64,
        mut entries: impl FnMut(u64, u64) -> Result<Vec<Vec<u8>>, E>,
        mut hashes: impl FnMut(u64, u64) -> Result<Vec<Hash>, E>,
        mut progress: impl FnMut(u64),
    ) -> Result<(), E> {
        let mut at = 0;
        while at < size {
            let stop = (at + 10_000).min(size);
            for entry in entries(at, stop)? {
                self.entry(&entry)?;
                progress(1);
            }
            at = stop;
        }
        let total = crate::merkle::stored_hash_count(size);
        let mut at = 0;
        while at < total {
            let stop = (at + 65_536).min(total);
            let chunk: Vec<u8> = hashes(at, stop)?.iter().flat_map(|h| h.0).collect();
            self.hashes(&chunk)?;
            at = stop;
        }
        Ok(())
    }

    /// Flushes everything and writes `log.json`, the informational summary.
    pub fn finish(mut self, manifest: &serde_json::Value) -> std::io::Result<()> {
        use std::io::Write as _;
        self.entries.flush()?;
        self.hashes.flush()?;
        let text = serde_json::to_string_pretty(manifest).map_err(std::io::Error::other)?;
        std::fs::write(self.dir.join("log.json"), text + "\n")
    }
}

/// Audits an export directory with the log's verifier key; `progress` hears of every byte of
/// `entries` read (its total is the file's length).
pub fn audit_dir(
    dir: &std::path::Path,
    verifier: VerifierKey,
    mut progress: impl FnMut(u64),
) -> Result<AuditReport, AuditError> {
    use std::io::BufReader;
    let read_error = |what: &'static str, e: std::io::Error| AuditError::Read {
        what,
        reason: e.to_string(),
    };
    let mut checkpoints = Vec::new();
    let listing =
        std::fs::read_dir(dir.join("checkpoints")).map_err(|e| read_error("checkpoints", e))?;
    for file in listing {
        let file = file.map_err(|e| read_error("checkpoints", e))?;
        let name = file.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(file.path()).map_err(|e| read_error("checkpoints", e))?;
        checkpoints.push((name, bytes));
    }
    let mut auditor = Auditor::new(verifier, checkpoints)?;
    let entries = std::fs::File::open(dir.join("entries")).map_err(|e| read_error("entries", e))?;
    let mut hashes = match std::fs::File::open(dir.join("tree-hashes")) {
        Ok(file) => Some(HashStream::new(BufReader::with_capacity(1 << 20, file))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(read_error("tree-hashes", e)),
    };
    let mut keys = KeyAudit::default();
    for bytes in EntryReader::new(BufReader::with_capacity(1 << 20, entries)) {
        let bytes = bytes?;
        keys.push(auditor.entries(), &bytes);
        match hashes.as_mut() {
            Some(stream) => {
                let mut next = || stream.next_hash();
                auditor.push_entry(&bytes, Some(&mut next))?;
            }
            None => auditor.push_entry(&bytes, None)?,
        }
        progress(bytes.len() as u64 + 4);
    }
    if let Some(stream) = hashes.as_mut() {
        stream.expect_end()?;
    }
    let mut report = auditor.finish()?;
    report.keys = keys.finish();
    Ok(report)
}
