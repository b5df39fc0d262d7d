//! The conformance suite: the promises every backend keeps, checked the same way for each.
//!
//! A backend's own tests call [`run`] with a [`Harness`] that opens (and reopens) the backend.
//! Failures panic with a message that names the case, so they read well under `cargo test`.

use async_trait::async_trait;
use bytes::Bytes;
use custodian_core::{Algorithm, BlobDigests, BlobHasher, Digest};
use futures::StreamExt;

use crate::{BlobStore, ByteRange, Expectation, StorageError};

/// Opens the backend under test.
#[async_trait]
pub trait Harness: Sync {
    /// Opens the store. Called again after the previous store was dropped, it must reopen the
    /// same data, as a daemon restart would.
    async fn open(&self) -> BlobStore;

    /// Whether data survives a reopen (false for purely in-memory stores).
    fn survives_restart(&self) -> bool {
        true
    }
}

/// How much the suite does.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The size of the one large blob round-tripped through the store.
    pub large_blob: u64,
}

impl Options {
    /// The full suite: a 100 MiB large blob.
    pub fn full() -> Self {
        Options {
            large_blob: 100 << 20,
        }
    }

    /// A quicker suite for unit tests: a 3 MiB large blob.
    pub fn quick() -> Self {
        Options {
            large_blob: 3 << 20,
        }
    }
}

/// Runs every conformance case against the backend `harness` opens.
pub async fn run(harness: &dyn Harness, options: Options) {
    let store = harness.open().await;
    round_trip_at_block_boundaries(&store).await;
    large_round_trip(&store, options.large_blob).await;
    lookups_by_either_digest(&store).await;
    dedup_keeps_the_first_copy(&store).await;
    digest_mismatch_stores_nothing(&store).await;
    size_mismatch_stores_nothing(&store).await;
    abandoned_upload_leaves_nothing(&store).await;
    concurrent_puts_of_one_blob(&store).await;
    an_upload_outlived_by_another_of_the_same_blob(&store).await;
    ranged_reads_at_every_boundary(&store).await;
    unknown_digests(&store).await;
    find_missing_reports_absent_in_order(&store).await;
    delete_then_put_again(&store).await;
    delete_many_removes_each_and_reports_which_existed(&store).await;
    put_many_verifies_each_and_keeps_order(&store).await;
    put_many_past_one_commit_keeps_order(&store).await;
    put_many_hashed_in_parts_keeps_order(&store).await;
    list_walks_everything_and_quarantine_hides_a_blob(&store).await;
    staged_sessions_commit_and_refuse_damage(&store).await;
    assert_no_pending(&store, "after the single-session cases").await;
    if harness.survives_restart() {
        restart_keeps_commits_and_cleans_leftovers(harness, store).await;
    }
}

/// An upload session staged in local files commits into custody (a store that keeps files
/// takes the staged file over; others copy or mirror it), a second upload of the same bytes is
/// acknowledged as already present, and a staged file damaged after it was hashed is refused
/// with nothing visible and nothing left pending.
async fn staged_sessions_commit_and_refuse_damage(store: &BlobStore) {
    use crate::staging::LocalStaging;
    use crate::uploads::{DEFAULT_UPLOAD_EXPIRY, UploadSessions};
    use std::sync::Arc;

    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).expect("randomness");
    let dir = std::env::temp_dir().join(format!("custodian-conformance-{}", hex::encode(raw)));
    let engine = || {
        Arc::new(UploadSessions::open_in(
            Arc::new(LocalStaging::open(&dir).expect("staging dir")),
            DEFAULT_UPLOAD_EXPIRY,
            store.clone(),
        ))
    };
    let upload = |sessions: Arc<UploadSessions>, data: Bytes| async move {
        let id = sessions
            .start("conformance", Expectation::default(), Default::default())
            .await
            .expect("start")
            .id;
        let half = data.len() / 2;
        for piece in [data.slice(..half), data.slice(half..)] {
            let body = futures::stream::iter(vec![Ok::<_, String>(piece)]);
            sessions
                .append("conformance", &id, None, body)
                .await
                .expect("append");
        }
        id
    };
    let bs = store.block_size();
    let data = pattern(31, 2 * bs + 100);
    let sessions = engine();
    let id = upload(sessions.clone(), data.clone()).await;
    let outcome = sessions
        .finish("conformance", &id, Expectation::default())
        .await
        .expect("finish");
    assert!(!outcome.already_present, "a new blob through a session");
    assert!(read_all(store, &outcome.meta.sha256(), ByteRange::ALL).await == data);
    let id = upload(sessions.clone(), data.clone()).await;
    let again = sessions
        .finish("conformance", &id, Expectation::default())
        .await
        .expect("finish again");
    assert!(
        again.already_present,
        "the same bytes through a second session"
    );

    // A restart (no mirror of the blocks in this process), then one staged byte flipped.
    let damaged = pattern(32, 3 * bs + 5);
    let id = upload(sessions.clone(), damaged.clone()).await;
    drop(sessions);
    let sessions = engine();
    let path = dir.join(&id).join("data");
    let mut staged = std::fs::read(&path).expect("read the staged file");
    staged[bs + 10] ^= 1;
    std::fs::write(&path, staged).expect("write the staged file");
    let err = sessions
        .finish("conformance", &id, Expectation::default())
        .await
        .expect_err("damage is found");
    assert!(
        matches!(
            err,
            crate::uploads::UploadError::Storage(crate::StorageError::Corrupt { .. })
        ),
        "{err}"
    );
    assert_absent(
        store,
        &BlobDigests::of(&damaged).sha256,
        "a staged file damaged before its finish",
    )
    .await;
    // The engine dropped at the "restart" held its mirror of the damaged upload's blocks in the
    // backend; that sink discards them in the background.
    assert_no_pending_once_settled(store, "sessions, the first engine dropped").await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Deterministic bytes that do not compress: an xorshift stream seeded per blob.
pub fn pattern(seed: u64, len: usize) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

async fn put(store: &BlobStore, data: &Bytes) -> crate::PutOutcome {
    store
        .put_bytes(Expectation::default(), data.clone())
        .await
        .unwrap_or_else(|e| panic!("put of {} bytes failed: {e}", data.len()))
}

/// Reads a range of a blob whole, panicking on any error.
pub async fn read_all(store: &BlobStore, digest: &Digest, range: ByteRange) -> Vec<u8> {
    let read = store
        .get(digest, range)
        .await
        .unwrap_or_else(|e| panic!("get {digest} {range:?} failed: {e}"));
    let mut out = Vec::new();
    let mut data = read.data;
    while let Some(chunk) = data.next().await {
        out.extend_from_slice(&chunk.unwrap_or_else(|e| panic!("get {digest} stream: {e}")));
    }
    out
}

async fn assert_absent(store: &BlobStore, digest: &Digest, case: &str) {
    let stat = store.stat(digest).await.expect("stat");
    assert!(
        stat.is_none(),
        "{case}: {digest} is visible but must not be"
    );
}

async fn assert_no_pending(store: &BlobStore, case: &str) {
    let pending = store.pending_uploads().await.expect("pending_uploads");
    assert_eq!(pending, 0, "{case}: {pending} uploads left pending");
}

/// [`assert_no_pending`] once the backend has had two seconds to end uploads that were dropped
/// rather than aborted: a dropped sink discards its blocks in the background (it cannot wait
/// in `Drop`), and its upload is pending until that is done.
async fn assert_no_pending_once_settled(store: &BlobStore, case: &str) {
    for _ in 0..100 {
        if store.pending_uploads().await.expect("pending") == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_no_pending(store, case).await;
}

/// `put_many`: new blobs, a blob already in custody, a duplicate within the batch, an empty one,
/// a wrong expected digest and one larger than a block, answered in order; the wrong one stores
/// nothing, every other one reads back.
async fn put_many_verifies_each_and_keeps_order(store: &BlobStore) {
    let block = store.block_size();
    let existing = pattern(9001, 100);
    put(store, &existing).await;
    let a = pattern(9002, 4096.min(block));
    let b = pattern(9003, 1);
    let wrong = pattern(9004, 50);
    let large = pattern(9005, block + 7);
    let empty = Bytes::new();
    // Earlier cases may have stored the empty blob already.
    let empty_digest = Digest::of(Algorithm::Sha256, &empty);
    let empty_before = store.stat(&empty_digest).await.expect("stat").is_some();
    let claimed = Digest::of(Algorithm::Sha256, b"something else");
    let items = vec![
        (Expectation::default(), a.clone()),
        (Expectation::default(), existing.clone()),
        (
            Expectation {
                digest: Some(claimed),
                size: None,
            },
            wrong.clone(),
        ),
        (Expectation::default(), a.clone()),
        (Expectation::default(), large.clone()),
        (Expectation::default(), empty.clone()),
        (
            Expectation {
                digest: Some(Digest::of(Algorithm::Sha256, &b)),
                size: Some(1),
            },
            b.clone(),
        ),
    ];
    let results = store.put_many(items).await;
    assert_eq!(results.len(), 7);
    let present: Vec<Option<bool>> = results
        .iter()
        .map(|r| r.as_ref().ok().map(|o| o.already_present))
        .collect();
    // The same new blob twice in one call: exactly one of the two stored it (which one is the
    // backend's business when it commits them concurrently).
    assert!(
        matches!(
            (present[0], present[3]),
            (Some(false), Some(true)) | (Some(true), Some(false))
        ),
        "put_many duplicate: {results:?}"
    );
    assert_eq!(
        [present[1], present[2], present[4], present[5], present[6]],
        [
            Some(true),
            None,
            Some(false),
            Some(empty_before),
            Some(false)
        ],
        "put_many results: {results:?}"
    );
    assert!(
        matches!(results[2], Err(StorageError::DigestMismatch { .. })),
        "{:?}",
        results[2]
    );
    assert_absent(
        store,
        &Digest::of(Algorithm::Sha256, &wrong),
        "put_many wrong digest",
    )
    .await;
    for data in [&a, &existing, &large, &empty, &b] {
        let digest = Digest::of(Algorithm::Sha256, data);
        assert_eq!(
            read_all(store, &digest, ByteRange::ALL).await,
            data.as_ref(),
            "put_many blob of {} bytes reads back",
            data.len()
        );
        if digest != empty_digest || !empty_before {
            assert!(store.delete(&digest).await.expect("delete"));
        }
    }
}

/// `put_many` of more small blobs than one durable commit takes (the store splits them): every
/// answer is still in input order, a duplicate split across two commits is stored once, and a
/// wrong digest in the second commit stores nothing.
async fn put_many_past_one_commit_keeps_order(store: &BlobStore) {
    let count = 1030u64;
    let (duplicate, wrong) = (1027usize, 1025usize);
    let blobs: Vec<Bytes> = (0..count)
        .map(|i| match i as usize {
            i if i == duplicate => pattern(20_003, 40),
            i => pattern(20_000 + i as u64, 40),
        })
        .collect();
    let items: Vec<(Expectation, Bytes)> = blobs
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let expect = Expectation {
                digest: Some(if i == wrong {
                    Digest::of(Algorithm::Sha256, b"not this blob")
                } else {
                    Digest::of(Algorithm::Sha256, data)
                }),
                size: None,
            };
            (expect, data.clone())
        })
        .collect();
    let results = store.put_many(items).await;
    check_put_many(
        store,
        &results,
        &blobs,
        wrong,
        Some(duplicate),
        "put_many past one commit",
    )
    .await;
    let digests: Vec<Digest> = blobs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != wrong && *i != duplicate)
        .map(|(_, data)| Digest::of(Algorithm::Sha256, data))
        .collect();
    assert!(
        store
            .find_missing(&digests)
            .await
            .expect("find_missing")
            .is_empty()
    );
    assert_eq!(
        read_all(store, &digests[1000], ByteRange::ALL).await,
        blobs[1000].as_ref()
    );
    let existed = store.delete_many(&digests).await.expect("delete_many");
    assert!(existed.iter().all(|e| *e), "every stored blob is deleted");
}

/// Checks `put_many`'s answers for `blobs`: each in input order and for its own blob, the one at
/// `wrong` (declared with a wrong digest) refused and not stored, and, when a `duplicate` is
/// named, only that one already present. Returns the SHA-256 digests of the blobs stored.
async fn check_put_many(
    store: &BlobStore,
    results: &[crate::Result<crate::PutOutcome>],
    blobs: &[Bytes],
    wrong: usize,
    duplicate: Option<usize>,
    case: &str,
) -> Vec<Digest> {
    assert_eq!(results.len(), blobs.len(), "{case}: one answer per blob");
    let mut stored = Vec::new();
    for (i, (result, data)) in results.iter().zip(blobs).enumerate() {
        match result {
            Ok(outcome) => {
                assert_ne!(i, wrong, "{case}: the wrong digest was accepted");
                assert_eq!(
                    outcome.meta.sha256(),
                    Digest::of(Algorithm::Sha256, data),
                    "{case}: answer {i} is for another blob"
                );
                if let Some(duplicate) = duplicate {
                    assert_eq!(
                        outcome.already_present,
                        i == duplicate,
                        "{case}: answer {i}"
                    );
                }
                // A blob's BLAKE3 address names the same blob: a batch's index records may be
                // written in another order than its blobs came (`add_commits` on RocksDB).
                let by_blake3 = store
                    .stat(&outcome.meta.digests.blake3)
                    .await
                    .unwrap_or_else(|e| panic!("{case}: stat of answer {i} by BLAKE3: {e}"));
                assert_eq!(
                    by_blake3.map(|meta| meta.sha256()),
                    Some(outcome.meta.sha256()),
                    "{case}: answer {i}'s BLAKE3 digest names another blob"
                );
                stored.push(outcome.meta.sha256());
            }
            Err(StorageError::DigestMismatch { .. }) if i == wrong => {}
            Err(err) => panic!("{case}, blob {i}: {err}"),
        }
    }
    assert_absent(
        store,
        &Digest::of(Algorithm::Sha256, &blobs[wrong]),
        &format!("{case}, wrong digest"),
    )
    .await;
    stored
}

/// `put_many` of enough small bytes to be hashed in parts on several threads: each answer is
/// still for its own blob, and a wrong digest in the last part stores nothing.
async fn put_many_hashed_in_parts_keeps_order(store: &BlobStore) {
    let size = store.block_size().min(4096);
    let count = (5usize << 19).div_ceil(size) as u64;
    let wrong = count as usize - 2;
    let blobs: Vec<Bytes> = (0..count)
        .map(|i| pattern(40_000 + i, size.saturating_sub(i as usize % 3).max(1)))
        .collect();
    let items: Vec<(Expectation, Bytes)> = blobs
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let digest = if i == wrong {
                Digest::of(Algorithm::Blake3, b"not this blob")
            } else {
                Digest::of(Algorithm::Blake3, data)
            };
            (
                Expectation {
                    digest: Some(digest),
                    size: Some(data.len() as u64),
                },
                data.clone(),
            )
        })
        .collect();
    let results = store.put_many(items).await;
    let stored = check_put_many(
        store,
        &results,
        &blobs,
        wrong,
        None,
        "put_many hashed in parts",
    )
    .await;
    let existed = store.delete_many(&stored).await.expect("delete_many");
    assert!(existed.iter().all(|e| *e), "every stored blob is deleted");
}

async fn list_walks_everything_and_quarantine_hides_a_blob(store: &BlobStore) {
    let case = "list and quarantine";
    let mine: Vec<Digest> = (0..5u64)
        .map(|i| {
            let data = pattern(9_100 + i, 700 * i as usize);
            BlobDigests::of(&data).sha256
        })
        .collect();
    for i in 0..5u64 {
        put(store, &pattern(9_100 + i, 700 * i as usize)).await;
    }
    // Walk in pages of 2: every page sorted, pages in order, each of ours seen once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list(after, 2).await.expect("list");
        assert!(
            page.len() <= 2,
            "{case}: a page of {} exceeds the limit",
            page.len()
        );
        if page.is_empty() {
            break;
        }
        after = page.last().copied();
        seen.extend(page);
    }
    assert!(
        seen.windows(2).all(|w| w[0].bytes() < w[1].bytes()),
        "{case}: listing is not in strictly increasing digest order"
    );
    for digest in &mine {
        assert!(seen.contains(digest), "{case}: {digest} not listed");
        assert_eq!(seen.iter().filter(|d| *d == digest).count(), 1);
    }
    assert!(
        store.quarantine(&mine[3]).await.expect("quarantine"),
        "{case}"
    );
    assert_absent(store, &mine[3], case).await;
    assert!(
        !store
            .list(None, usize::MAX)
            .await
            .expect("list")
            .contains(&mine[3]),
        "{case}: a quarantined blob is still listed"
    );
    // The same bytes uploaded again heal it.
    put(store, &pattern(9_103, 2_100)).await;
    assert_eq!(
        read_all(store, &mine[3], ByteRange::default()).await,
        pattern(9_103, 2_100).to_vec(),
        "{case}: re-upload after quarantine"
    );
}

async fn round_trip_at_block_boundaries(store: &BlobStore) {
    let bs = store.block_size();
    for (i, size) in [0, 1, bs - 1, bs, bs + 1, 2 * bs + 3]
        .into_iter()
        .enumerate()
    {
        let data = pattern(100 + i as u64, size);
        let outcome = put(store, &data).await;
        let expected = BlobDigests::of(&data);
        assert_eq!(
            outcome.meta.digests, expected,
            "digests of a {size}-byte blob"
        );
        assert_eq!(outcome.meta.size, size as u64, "size of a {size}-byte blob");
        let back = read_all(store, &expected.sha256, ByteRange::ALL).await;
        assert!(
            back == data,
            "{size}-byte blob did not round-trip bit-exactly"
        );
    }
}

async fn large_round_trip(store: &BlobStore, size: u64) {
    // Written in uneven pieces so blocks never align with writes; hashed on both sides rather
    // than held twice in memory.
    let piece = 64 * 1024 + 13;
    let mut writer = store
        .begin_put(Expectation::default())
        .await
        .expect("begin");
    let mut hasher = BlobHasher::new();
    let mut written = 0u64;
    let mut seed = 7_000;
    while written < size {
        let len = (size - written).min(piece as u64) as usize;
        let data = pattern(seed, len);
        seed += 1;
        hasher.update(&data);
        writer.write(data).await.expect("write large");
        written += len as u64;
    }
    let expected = hasher.finalize();
    let outcome = writer.commit().await.expect("commit large");
    assert_eq!(outcome.meta.digests, expected, "large blob digests");
    let read = store
        .get(&expected.blake3, ByteRange::ALL)
        .await
        .expect("get large");
    let mut data = read.data;
    let mut back = BlobHasher::new();
    while let Some(chunk) = data.next().await {
        back.update(&chunk.expect("large read"));
    }
    assert_eq!(back.len(), size, "large blob length read back");
    assert_eq!(
        back.finalize(),
        expected,
        "large blob did not round-trip bit-exactly"
    );
}

async fn lookups_by_either_digest(store: &BlobStore) {
    let data = pattern(1, 5000);
    let outcome = put(store, &data).await;
    for digest in [outcome.meta.digests.sha256, outcome.meta.digests.blake3] {
        let meta = store
            .stat(&digest)
            .await
            .expect("stat")
            .expect("stat finds the blob");
        assert_eq!(meta, outcome.meta, "stat by {}", digest.algorithm());
        assert!(
            read_all(store, &digest, ByteRange::ALL).await == data,
            "get by {digest}"
        );
    }
}

async fn dedup_keeps_the_first_copy(store: &BlobStore) {
    let data = pattern(2, 3 * store.block_size() + 1);
    let first = put(store, &data).await;
    let second = store
        .put_bytes(
            Expectation {
                digest: Some(first.meta.digests.sha256),
                size: Some(data.len() as u64),
            },
            data.clone(),
        )
        .await
        .expect("second put");
    assert!(!first.already_present || second.already_present);
    assert!(
        second.already_present,
        "second put of the same bytes is not reported present"
    );
    assert_eq!(
        second.meta, first.meta,
        "second put must report the original metadata"
    );
    assert_no_pending(store, "dedup").await;

    // A put that declares a digest already in custody is still verified: wrong bytes are
    // refused even though nothing would have been stored.
    let err = store
        .put_bytes(
            Expectation {
                digest: Some(first.meta.digests.blake3),
                size: None,
            },
            pattern(99, data.len()),
        )
        .await
        .expect_err("wrong bytes under a known digest must be refused");
    assert!(
        matches!(err, StorageError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(
        store.stat(&first.meta.sha256()).await.expect("stat"),
        Some(first.meta.clone()),
        "the stored blob is untouched"
    );
}

async fn digest_mismatch_stores_nothing(store: &BlobStore) {
    let data = pattern(3, 2 * store.block_size() + 10);
    let actual = BlobDigests::of(&data);
    for algorithm in Algorithm::ALL {
        let wrong = Digest::of(algorithm, b"something else");
        let err = store
            .put_bytes(
                Expectation {
                    digest: Some(wrong),
                    size: None,
                },
                data.clone(),
            )
            .await
            .expect_err("a wrong expected digest must be refused");
        match err {
            StorageError::DigestMismatch {
                expected,
                actual: got,
            } => {
                assert_eq!(expected, wrong, "mismatch error names the expected digest");
                assert_eq!(
                    got,
                    actual.get(algorithm),
                    "mismatch error names the actual digest"
                );
            }
            other => panic!("wrong expected {algorithm} digest gave {other:?}"),
        }
        assert_absent(store, &wrong, "digest mismatch").await;
        assert_absent(store, &actual.sha256, "digest mismatch").await;
        assert_absent(store, &actual.blake3, "digest mismatch").await;
    }
    assert_no_pending(store, "digest mismatch").await;
}

async fn size_mismatch_stores_nothing(store: &BlobStore) {
    let data = pattern(4, store.block_size() + 10);
    let actual = BlobDigests::of(&data);
    let len = data.len() as u64;
    for declared in [len - 1, len + 1, 0] {
        let err = store
            .put_bytes(
                Expectation {
                    digest: None,
                    size: Some(declared),
                },
                data.clone(),
            )
            .await
            .expect_err("a wrong expected size must be refused");
        match err {
            StorageError::SizeMismatch { expected, .. } => {
                assert_eq!(expected, declared, "size mismatch names the declared size");
            }
            other => panic!("declared size {declared} for {len} bytes gave {other:?}"),
        }
        assert_absent(store, &actual.sha256, "size mismatch").await;
    }
    assert_no_pending(store, "size mismatch").await;
}

async fn abandoned_upload_leaves_nothing(store: &BlobStore) {
    let bs = store.block_size();
    let data = pattern(5, 3 * bs);
    let digests = BlobDigests::of(&data);

    let mut writer = store
        .begin_put(Expectation::default())
        .await
        .expect("begin");
    writer.write(data.slice(..2 * bs + 5)).await.expect("write");
    writer.abort().await.expect("abort");
    assert_absent(store, &digests.sha256, "explicit abort").await;

    // A client that disconnects mid-upload: the writer is simply dropped.
    let mut writer = store
        .begin_put(Expectation::default())
        .await
        .expect("begin");
    writer.write(data.slice(..bs + 7)).await.expect("write");
    drop(writer);
    assert_absent(store, &digests.sha256, "dropped upload").await;
    assert_no_pending_once_settled(store, "dropped upload").await;
}

/// Puts `data` from `writers` concurrent uploads, each writing pieces of `piece` bytes and
/// yielding between them so the uploads interleave; returns every outcome.
pub async fn put_concurrently(
    store: &BlobStore,
    data: &Bytes,
    writers: usize,
    piece: usize,
) -> Vec<crate::PutOutcome> {
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let store = store.clone();
            let data = data.clone();
            tokio::spawn(async move {
                let mut writer = store.begin_put(Expectation::default()).await?;
                for chunk in data.chunks(piece) {
                    writer.write(Bytes::copy_from_slice(chunk)).await?;
                    tokio::task::yield_now().await;
                }
                writer.commit().await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("join").expect("concurrent put"));
    }
    outcomes
}

async fn concurrent_puts_of_one_blob(store: &BlobStore) {
    let bs = store.block_size();
    let data = pattern(6, 4 * bs + 99);
    let outcomes = put_concurrently(store, &data, 2, bs / 2 + 1).await;
    let fresh = outcomes.iter().filter(|o| !o.already_present).count();
    assert_eq!(
        fresh, 1,
        "exactly one of two concurrent puts stores the blob"
    );
    assert_eq!(
        outcomes[0].meta, outcomes[1].meta,
        "both puts report the same blob"
    );
    assert_no_pending(store, "concurrent puts").await;
    assert!(read_all(store, &outcomes[0].meta.sha256(), ByteRange::ALL).await == data);
}

/// Two uploads of one blob, its digest declared: the second begun and past its first parts
/// before the first commits, and finished after. Both are acknowledged, once as stored and
/// once as already present, and the blob reads back whole. Azure is the store this is for: it
/// keeps one set of uncommitted blocks per blob name and the first commit deletes the second's,
/// which must then be answered by the blob the first placed, not refused.
async fn an_upload_outlived_by_another_of_the_same_blob(store: &BlobStore) {
    // Larger than two of the object stores' 5 MiB parts, so the second upload has sent parts
    // of its own before the first commits.
    let data = pattern(61, (11 << 20) + 99);
    let expect = || Expectation {
        digest: Some(Digest::of(Algorithm::Sha256, &data)),
        size: Some(data.len() as u64),
    };
    let piece = 1 << 20;
    let (head, tail) = data.split_at(data.len() / 2);
    let mut second = store.begin_put(expect()).await.expect("begin the second");
    for chunk in head.chunks(piece) {
        second
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("write the second");
    }
    // The parts the second upload has handed over are sent in the background.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut first = store.begin_put(expect()).await.expect("begin the first");
    for chunk in data.chunks(piece) {
        first
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("write the first");
    }
    let first = first.commit().await.expect("commit the first");
    for chunk in tail.chunks(piece) {
        second
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("write the second");
    }
    let second = second
        .commit()
        .await
        .expect("the upload that committed second is acknowledged");
    assert!(
        !first.already_present && second.already_present,
        "the first to commit stores the blob, the second finds it present"
    );
    assert_eq!(first.meta, second.meta, "both report the same blob");
    assert_no_pending(store, "an upload outlived by another").await;
    assert!(read_all(store, &first.meta.sha256(), ByteRange::ALL).await == data);
}

async fn ranged_reads_at_every_boundary(store: &BlobStore) {
    let bs = store.block_size() as u64;
    let size = 3 * bs + 5;
    let data = pattern(8, size as usize);
    let digest = put(store, &data).await.meta.sha256();
    let offsets = [0, 1, bs - 1, bs, bs + 1, 2 * bs, 3 * bs, size - 1, size];
    let limits = [
        None,
        Some(0),
        Some(1),
        Some(bs - 1),
        Some(bs),
        Some(bs + 1),
        Some(size + 100),
    ];
    for offset in offsets {
        for limit in limits {
            let range = ByteRange { offset, limit };
            let end = limit.map_or(size, |l| (offset + l).min(size));
            let got = read_all(store, &digest, range).await;
            assert!(
                got[..] == data[offset as usize..end as usize],
                "range {range:?} of a {size}-byte blob returned wrong bytes ({} bytes)",
                got.len()
            );
        }
    }
    match store
        .get(
            &digest,
            ByteRange {
                offset: size + 1,
                limit: None,
            },
        )
        .await
    {
        Err(StorageError::OutOfRange {
            offset, size: s, ..
        }) => {
            assert_eq!(
                (offset, s),
                (size + 1, size),
                "out-of-range error names offset and size"
            );
        }
        Err(other) => panic!("offset past the end gave {other:?}"),
        Ok(_) => panic!("offset past the end was accepted"),
    }
}

async fn unknown_digests(store: &BlobStore) {
    for algorithm in Algorithm::ALL {
        let unknown = Digest::of(algorithm, b"never stored anywhere");
        assert_absent(store, &unknown, "unknown digest").await;
        match store.get(&unknown, ByteRange::ALL).await {
            Err(StorageError::NotFound { digest }) => assert_eq!(digest, unknown),
            Err(other) => panic!("get of an unknown digest gave {other:?}"),
            Ok(_) => panic!("get of an unknown digest succeeded"),
        }
    }
}

async fn find_missing_reports_absent_in_order(store: &BlobStore) {
    let present = put(store, &pattern(9, 10)).await.meta.digests;
    let absent_a = Digest::of(Algorithm::Sha256, b"absent a");
    let absent_b = Digest::of(Algorithm::Blake3, b"absent b");
    let query = [absent_a, present.sha256, absent_b, present.blake3];
    let missing = store.find_missing(&query).await.expect("find_missing");
    assert_eq!(missing, vec![absent_a, absent_b], "find_missing result");
    assert!(store.find_missing(&[]).await.expect("empty").is_empty());

    // A larger query in no particular order, with repeats of both kinds: backends that batch or
    // sort their reads must still answer each position for its own digest.
    let mut stored = Vec::new();
    for seed in 0..16u64 {
        stored.push(
            put(store, &pattern(200 + seed, 64 + seed as usize))
                .await
                .meta
                .digests,
        );
    }
    let mut query = Vec::new();
    let mut expected = Vec::new();
    for (i, digests) in stored.iter().enumerate().rev() {
        let absent = Digest::of(Algorithm::Sha256, format!("absent {i}").as_bytes());
        query.extend([
            digests.blake3,
            absent,
            digests.sha256,
            absent,
            digests.sha256,
        ]);
        expected.extend([absent, absent]);
    }
    let missing = store.find_missing(&query).await.expect("find_missing");
    assert_eq!(
        missing, expected,
        "find_missing of a mixed query with repeats"
    );

    // A query long enough to be looked up in parts on several cores: the answer must still be
    // in request order, each position for its own digest, whichever part it fell in.
    let mut query = Vec::new();
    let mut expected = Vec::new();
    for i in 0..9_001usize {
        let digests = &stored[i % stored.len()];
        if i % 7 == 3 {
            let absent = Digest::of(Algorithm::Sha256, format!("long query {i}").as_bytes());
            query.push(absent);
            expected.push(absent);
        } else if i % 2 == 0 {
            query.push(digests.sha256);
        } else {
            query.push(digests.blake3);
        }
    }
    let missing = store.find_missing(&query).await.expect("find_missing");
    assert_eq!(
        missing.len(),
        expected.len(),
        "find_missing of 9,001 digests"
    );
    assert!(
        missing == expected,
        "find_missing of 9,001 digests answered out of order"
    );
    let present = store.present(&query).await.expect("present");
    for (i, (digest, present)) in query.iter().zip(&present).enumerate() {
        assert_eq!(
            *present,
            !expected.contains(digest),
            "present() position {i} ({digest})"
        );
    }
}

async fn delete_many_removes_each_and_reports_which_existed(store: &BlobStore) {
    let small = put(store, &pattern(11, 100)).await.meta;
    let large = put(store, &pattern(12, 2 * store.block_size() + 7))
        .await
        .meta;
    let kept = put(store, &pattern(13, 50)).await.meta;
    let never = Digest::of(Algorithm::Sha256, b"never stored for delete_many");
    // A digest repeated in one call is removed once: the repeat finds it gone.
    let existed = store
        .delete_many(&[small.sha256(), never, large.sha256(), small.sha256()])
        .await
        .expect("delete_many");
    assert_eq!(
        existed,
        vec![true, false, true, false],
        "delete_many reports each"
    );
    assert_absent(store, &small.sha256(), "after delete_many").await;
    assert_absent(store, &large.digests.blake3, "after delete_many").await;
    assert!(read_all(store, &kept.sha256(), ByteRange::ALL).await == pattern(13, 50));
    assert!(store.delete_many(&[]).await.expect("empty").is_empty());
}

async fn delete_then_put_again(store: &BlobStore) {
    let data = pattern(10, 2 * store.block_size() + 1);
    let meta = put(store, &data).await.meta;
    assert!(
        store.delete(&meta.digests.blake3).await.expect("delete"),
        "delete finds the blob"
    );
    assert_absent(store, &meta.sha256(), "after delete").await;
    assert_absent(store, &meta.digests.blake3, "after delete").await;
    assert!(
        !store.delete(&meta.sha256()).await.expect("delete again"),
        "second delete"
    );
    let again = put(store, &data).await;
    assert!(
        !again.already_present,
        "a deleted blob put again is stored afresh"
    );
    assert!(read_all(store, &meta.sha256(), ByteRange::ALL).await == data);
}

async fn restart_keeps_commits_and_cleans_leftovers(harness: &dyn Harness, store: BlobStore) {
    let bs = store.block_size();
    let kept = pattern(11, 2 * bs + 17);
    let kept_meta = put(&store, &kept).await.meta;
    let lost = pattern(12, 3 * bs);
    let mut writer = store
        .begin_put(Expectation::default())
        .await
        .expect("begin");
    writer.write(lost.slice(..2 * bs + 1)).await.expect("write");
    writer.abandon_for_crash_test();
    drop(store);

    let store = harness.open().await;
    assert_no_pending(&store, "after a restart with an abandoned upload").await;
    assert_absent(
        &store,
        &BlobDigests::of(&lost).sha256,
        "abandoned before restart",
    )
    .await;
    let meta = store
        .stat(&kept_meta.sha256())
        .await
        .expect("stat")
        .expect("kept blob");
    assert_eq!(meta, kept_meta, "metadata survives a restart");
    assert!(read_all(&store, &kept_meta.sha256(), ByteRange::ALL).await == kept);
}
