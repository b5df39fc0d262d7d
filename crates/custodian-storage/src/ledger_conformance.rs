//! The ledger conformance suite: what every [`LedgerBackend`] must do, checked the same way for
//! each (memory here, RocksDB in its crate).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use custodian_core::checkpoint::Checkpoint;
use custodian_core::entry::{Entry, EntryKind, Value};
use custodian_core::merkle::{self, Frontier, Hash, stored_hash_count};
use custodian_core::note::SignerKey;

use crate::ledger::{Ledger, LedgerBackend, LedgerBatch, LedgerError, LedgerResult};

/// Opens the backend under test.
pub trait LedgerHarness {
    /// Opens the backend; called again after the previous one was dropped, it must reopen the
    /// same data.
    fn open(&self) -> Arc<dyn LedgerBackend>;
    /// Whether data survives a reopen.
    fn survives_restart(&self) -> bool {
        true
    }
}

/// The signing key the suite uses.
pub fn test_signer() -> SignerKey {
    SignerKey::from_seed("custodian.test/ledger", [11; 32]).expect("test key")
}

/// A payload naming `i`, as tests append them.
pub fn payload(i: u64) -> Value {
    Value::Map(vec![
        (Value::Text("n".into()), Value::Integer(i.into())),
        (
            Value::Text("data_pack_sha256".into()),
            Value::Text(format!("sha256:{i:064x}")),
        ),
    ])
}

/// Runs every case.
pub fn run(harness: &dyn LedgerHarness) {
    let sizes = appends_serve_entries_proofs_and_receipts(harness);
    if harness.survives_restart() {
        reopen_continues_the_chain(harness, sizes);
        another_key_is_refused(harness);
    }
    commits_must_start_at_the_end(harness);
}

fn appends_serve_entries_proofs_and_receipts(harness: &dyn LedgerHarness) -> u64 {
    let ledger = Ledger::open(harness.open(), test_signer()).expect("open");
    let verifier = ledger.verifier().clone();
    assert_eq!(ledger.latest().size, 0, "a fresh ledger starts at size 0");
    Checkpoint::open(ledger.latest().note.as_bytes(), &verifier).expect("size-0 checkpoint");
    let mut frontier = Frontier::new();
    let mut stored = Vec::new();
    let mut sizes = vec![0u64];
    let mut next = 0u64;
    for batch in [1usize, 2, 5, 1, 37, 100] {
        let requests = (0..batch)
            .map(|i| (EntryKind::RunAttested, payload(next + i as u64)))
            .collect();
        let (appended, checkpoint) = ledger.append(requests, 1_000 + next).expect("append");
        assert_eq!(appended.len(), batch);
        for a in &appended {
            assert_eq!(a.index, next);
            stored.extend(frontier.append(a.leaf_hash));
            next += 1;
        }
        assert_eq!(checkpoint.size, next);
        assert_eq!(checkpoint.root, frontier.root());
        sizes.push(next);
    }
    let size = next;
    // Entries chain and decode, and are found by leaf hash.
    let entries = ledger.entries(0, size).expect("entries");
    let mut prev = Hash::ZERO;
    for (i, bytes) in entries.iter().enumerate() {
        let entry = Entry::decode(bytes).expect("decode");
        assert_eq!(entry.prev, prev, "prev of entry {i}");
        prev = merkle::leaf_hash(bytes);
        assert_eq!(ledger.index_of(&prev).expect("index_of"), i as u64);
        assert_eq!(entry.payload, payload(i as u64));
    }
    // Leaf hashes of any range, read as one range of stored hashes, are the entries' own.
    let leaves: Vec<Hash> = entries.iter().map(|b| merkle::leaf_hash(b)).collect();
    for (start, end) in [(0, size), (0, 1), (3, 4), (5, 46), (45, size), (size, size)] {
        assert_eq!(
            ledger.leaf_hashes(start, end).expect("leaf hashes"),
            leaves[start as usize..end as usize],
            "leaf hashes of [{start}, {end})"
        );
    }
    assert!(matches!(
        ledger.leaf_hashes(0, size + 1),
        Err(LedgerError::SizeBeyondLog { .. })
    ));
    // Each complete subtree's stored hash is the root of its leaves; a subtree not yet complete
    // (or past any size) is beyond the log.
    for level in 0..6u8 {
        let width = 1u64 << level;
        for n in 0..size / width {
            let (from, to) = ((n * width) as usize, ((n + 1) * width) as usize);
            assert_eq!(
                ledger.subtree_hash(level, n).expect("subtree hash"),
                merkle::subtree_root(&leaves[from..to]),
                "subtree {n} at level {level}"
            );
        }
        assert!(matches!(
            ledger.subtree_hash(level, size / width),
            Err(LedgerError::SizeBeyondLog { .. })
        ));
    }
    assert!(matches!(
        ledger.subtree_hash(63, u64::MAX),
        Err(LedgerError::SizeBeyondLog { .. })
    ));
    assert!(matches!(
        ledger.entry(size),
        Err(LedgerError::NoSuchEntry { .. })
    ));
    assert!(matches!(
        ledger.index_of(&Hash([9; 32])),
        Err(LedgerError::NoSuchLeaf(_))
    ));
    // Stored hashes are exactly the recomputed ones.
    assert_eq!(
        ledger
            .stored_hashes(0, stored_hash_count(size))
            .expect("hashes"),
        stored
    );
    // Every checkpoint is stored, verifies, and is consistent with every later one.
    let checkpoints = ledger.checkpoints(0, 1000).expect("checkpoints");
    assert_eq!(
        checkpoints.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        sizes
    );
    for &old in &sizes {
        let old_cp = ledger.checkpoint(old).expect("checkpoint");
        for &new in sizes.iter().filter(|&&n| n >= old) {
            let new_cp = ledger.checkpoint(new).expect("checkpoint");
            let proof = ledger.consistency_proof(old, new).expect("consistency");
            merkle::verify_consistency(old, new, &proof, &old_cp.root, &new_cp.root)
                .expect("verifies");
        }
    }
    // Receipts for every entry verify offline, also against older checkpoints.
    for index in 0..size {
        let receipt = ledger.receipt(index).expect("receipt");
        receipt.verify(&verifier).expect("receipt verifies");
    }
    let older = ledger.checkpoint(9).expect("checkpoint 9");
    for index in 0..9 {
        ledger
            .receipt_at(index, &older)
            .expect("receipt at 9")
            .verify(&verifier)
            .expect("verifies");
    }
    assert!(matches!(
        ledger.inclusion_proof(0, size + 1),
        Err(LedgerError::SizeBeyondLog { .. })
    ));
    assert!(matches!(
        ledger.checkpoint(4),
        Err(LedgerError::NoSuchCheckpoint(4))
    ));
    // An invalid request rejects the batch and writes nothing.
    let bad = vec![
        (EntryKind::KeyEvent, payload(0)),
        (EntryKind::KeyEvent, Value::Float(0.5)),
    ];
    assert!(matches!(
        ledger.append(bad, 0),
        Err(LedgerError::InvalidEntry(_))
    ));
    assert_eq!(ledger.latest().size, size);
    // Integration time never goes back, even if the clock does.
    let (appended, _) = ledger
        .append(vec![(EntryKind::KeyEvent, payload(size))], 5)
        .expect("append");
    let entry = Entry::decode(&appended[0].entry).expect("decode");
    assert!(
        entry.time_ms >= 1_000 + 46,
        "time went back: {}",
        entry.time_ms
    );
    size + 1
}

fn reopen_continues_the_chain(harness: &dyn LedgerHarness, size: u64) {
    let ledger = Ledger::open(harness.open(), test_signer()).expect("reopen");
    assert_eq!(ledger.latest().size, size, "reopened size");
    let last = ledger.entry(size - 1).expect("last entry");
    let (appended, checkpoint) = ledger
        .append(vec![(EntryKind::BadgeIssued, payload(size))], 10_000)
        .expect("append after reopen");
    let entry = Entry::decode(&appended[0].entry).expect("decode");
    assert_eq!(entry.prev, merkle::leaf_hash(&last), "chain across restart");
    assert_eq!(checkpoint.size, size + 1);
    ledger
        .receipt(size)
        .expect("receipt")
        .verify(ledger.verifier())
        .expect("verifies");
}

fn another_key_is_refused(harness: &dyn LedgerHarness) {
    let other = SignerKey::from_seed("custodian.test/ledger", [12; 32]).expect("key");
    assert!(matches!(
        Ledger::open(harness.open(), other),
        Err(LedgerError::WrongKey { .. })
    ));
}

fn commits_must_start_at_the_end(harness: &dyn LedgerHarness) {
    let backend = harness.open();
    // Checked on a backend just opened, then again after a commit through it: a backend may
    // read where the log ends once and remember it from its own commits.
    for round in 0..2u64 {
        let before = backend.latest_checkpoint().expect("latest").map(|c| c.0);
        let size = before.unwrap_or(0);
        let batch = |first_index: u64| LedgerBatch {
            first_index,
            entries: vec![b"x".to_vec()],
            leaf_hashes: vec![Hash::ZERO],
            first_hash_index: stored_hash_count(first_index),
            hashes: merkle_hashes_after(first_index),
            checkpoint_size: first_index + 1,
            checkpoint: b"not a note".to_vec(),
        };
        assert!(
            backend.commit(&batch(size + 5)).is_err(),
            "round {round}: a batch that leaves a gap must be refused"
        );
        if size > 0 {
            assert!(
                backend.commit(&batch(size - 1)).is_err(),
                "round {round}: a batch over the log's last entry must be refused"
            );
        }
        assert_eq!(
            backend.latest_checkpoint().expect("latest").map(|c| c.0),
            before,
            "round {round}: a refused batch wrote nothing"
        );
        let ledger = Ledger::open(backend.clone(), test_signer()).expect("open");
        ledger
            .append(vec![(EntryKind::BadgeIssued, payload(size))], 20_000)
            .expect("an append at the end is accepted");
    }
}

/// As many placeholder hashes as appending one leaf at `index` stores (its leaf hash and one per
/// subtree it completes), so that only the batch's position can be wrong.
fn merkle_hashes_after(index: u64) -> Vec<Hash> {
    vec![Hash::ZERO; (stored_hash_count(index + 1) - stored_hash_count(index)) as usize]
}

/// Wraps a backend for tests: counts what is read (to show proofs come from stored hashes) and
/// committed, and can make each commit take a while (as an fsync does) or hand out one entry
/// with a byte changed (as a damaged disk would).
pub struct CountingBackend {
    /// The wrapped backend.
    pub inner: Arc<dyn LedgerBackend>,
    /// Stored hashes read.
    pub hashes_read: AtomicU64,
    /// Entries read.
    pub entries_read: AtomicU64,
    /// Batches committed.
    pub commits: AtomicU64,
    /// How long each commit waits before it is passed on.
    commit_delay: std::time::Duration,
    /// The entry handed out damaged, if any.
    damaged_entry: Option<u64>,
    /// The stored hash (append-order index) handed out damaged, if any.
    damaged_hash: Option<u64>,
    /// Whether the next commit panics instead of committing.
    panic_next_commit: std::sync::atomic::AtomicBool,
}

impl CountingBackend {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn LedgerBackend>) -> Self {
        CountingBackend {
            inner,
            hashes_read: AtomicU64::new(0),
            entries_read: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            commit_delay: std::time::Duration::ZERO,
            damaged_entry: None,
            damaged_hash: None,
            panic_next_commit: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Makes the next commit panic, before anything reaches the wrapped backend, as a bug in a
    /// backend would; the commits after it go through.
    pub fn panic_on_next_commit(&self) {
        self.panic_next_commit.store(true, Ordering::SeqCst);
    }

    /// Makes each commit wait `delay` first.
    pub fn slow_commits(mut self, delay: std::time::Duration) -> Self {
        self.commit_delay = delay;
        self
    }

    /// Hands out entry `index` with its last byte changed whenever it is read.
    pub fn damaging_entry(mut self, index: u64) -> Self {
        self.damaged_entry = Some(index);
        self
    }

    /// Hands out the stored hash at append-order index `index` with its last byte changed
    /// whenever it is read.
    pub fn damaging_hash(mut self, index: u64) -> Self {
        self.damaged_hash = Some(index);
        self
    }

    /// Returns and resets the counters `(hashes, entries)`.
    pub fn take(&self) -> (u64, u64) {
        (
            self.hashes_read.swap(0, Ordering::Relaxed),
            self.entries_read.swap(0, Ordering::Relaxed),
        )
    }
}

impl LedgerBackend for CountingBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn latest_checkpoint(&self) -> LedgerResult<Option<(u64, Vec<u8>)>> {
        self.inner.latest_checkpoint()
    }
    fn checkpoint(&self, size: u64) -> LedgerResult<Option<Vec<u8>>> {
        self.inner.checkpoint(size)
    }
    fn checkpoints(&self, from_size: u64, limit: usize) -> LedgerResult<Vec<(u64, Vec<u8>)>> {
        self.inner.checkpoints(from_size, limit)
    }
    fn entries(&self, start: u64, end: u64) -> LedgerResult<Vec<Vec<u8>>> {
        self.entries_read
            .fetch_add(end.saturating_sub(start), Ordering::Relaxed);
        let mut entries = self.inner.entries(start, end)?;
        if let Some(at) = self.damaged_entry.filter(|at| (start..end).contains(at))
            && let Some(byte) = entries[(at - start) as usize].last_mut()
        {
            *byte ^= 1;
        }
        Ok(entries)
    }
    fn index_of(&self, leaf: &Hash) -> LedgerResult<Option<u64>> {
        self.inner.index_of(leaf)
    }
    fn hashes(&self, indexes: &[u64]) -> LedgerResult<Vec<Option<Hash>>> {
        self.hashes_read
            .fetch_add(indexes.len() as u64, Ordering::Relaxed);
        let mut hashes = self.inner.hashes(indexes)?;
        for (hash, index) in hashes.iter_mut().zip(indexes) {
            if let Some(hash) = hash.as_mut().filter(|_| self.damaged_hash == Some(*index)) {
                *hash = damaged(hash);
            }
        }
        Ok(hashes)
    }
    fn hash_range(&self, start: u64, end: u64) -> LedgerResult<Vec<Hash>> {
        self.hashes_read
            .fetch_add(end.saturating_sub(start), Ordering::Relaxed);
        let mut hashes = self.inner.hash_range(start, end)?;
        if let Some(at) = self.damaged_hash.filter(|at| (start..end).contains(at))
            && let Some(hash) = hashes.get_mut((at - start) as usize)
        {
            *hash = damaged(hash);
        }
        Ok(hashes)
    }
    fn commit(&self, batch: &LedgerBatch) -> LedgerResult<()> {
        if self.panic_next_commit.swap(false, Ordering::SeqCst) {
            panic!("a commit that panics, as the test asked");
        }
        std::thread::sleep(self.commit_delay);
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(batch)
    }
}

/// `hash` with its last byte changed.
fn damaged(hash: &Hash) -> Hash {
    let mut bytes = *hash.as_bytes();
    bytes[31] ^= 1;
    Hash::from_slice(&bytes).expect("32 bytes")
}

/// Fills a ledger with `count` entries in batches of `batch`, quickly (for large-log tests).
pub fn fill(ledger: &Ledger, count: u64, batch: u64) {
    let mut done = ledger.latest().size;
    while done < count {
        let n = batch.min(count - done);
        let requests = (done..done + n)
            .map(|i| (EntryKind::RunAttested, payload(i)))
            .collect();
        ledger.append(requests, done).expect("fill");
        done += n;
    }
}

/// Checks that proofs on a large ledger read only `O(log n)` stored hashes and no entries:
/// they are served from stored hashes, with no tree recomputation.
pub fn proofs_read_only_stored_hashes(ledger: &Ledger, counter: &CountingBackend) {
    let size = ledger.latest().size;
    let log2 = 64 - size.leading_zeros() as u64;
    counter.take();
    for index in [0, 1, size / 3, size / 2 + 7, size - 2, size - 1] {
        let (proof, _) = ledger.inclusion_proof(index, size).expect("proof");
        let (hashes, entries) = counter.take();
        assert_eq!(entries, 0, "an inclusion proof read entries");
        assert!(
            hashes <= 2 * log2 + 2,
            "inclusion proof of {index} at {size} read {hashes} stored hashes (proof has {})",
            proof.len()
        );
    }
    for old in [1, size / 2, size - 1] {
        ledger.consistency_proof(old, size).expect("proof");
        let (hashes, entries) = counter.take();
        assert_eq!(entries, 0, "a consistency proof read entries");
        assert!(
            hashes <= 4 * log2 + 4,
            "consistency proof {old}->{size} read {hashes} stored hashes"
        );
    }
}
