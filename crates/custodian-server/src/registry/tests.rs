//! The registry and its index on the in-memory blob store and ledger: what publication, yanks,
//! attester registrations and runs put into the index, what a caller may see of it, and that a
//! replay of the same ledger rebuilds the same index. No daemon, no disk.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use custodian_core::attestation::{RunPredicate, RunStatement, Runner};
use custodian_core::entry::{Entry, EntryKind, Value};
use custodian_core::note::SignerKey;
use custodian_core::package::{FileEntry, PackageStatement};
use custodian_core::{Algorithm, Digest};
use custodian_storage::ledger::Ledger;
use custodian_storage::ledger_conformance::CountingBackend;
use custodian_storage::{BlobStore, Expectation, MemoryBackend, MemoryLedger};

use super::{Index, Registry, RegistryError};
use crate::auth::{Principal, Scope, TokenRecord};
use crate::sequencer::{Sequencer, SequencerConfig};

const MANIFEST: &str = "name: acme-bot\nversion: 1.0.0\ntype: eval_suite\nbase_model: [m1]\nevals: [e1]\nlicense: Apache-2.0\n";

fn admin() -> Principal {
    Principal::Token(Arc::new(TokenRecord {
        id: "t1".into(),
        name: "admin".into(),
        sha256: String::new(),
        scopes: vec![Scope::Admin],
        namespaces: vec!["*".into()],
        created_ms: 0,
        revoked_ms: None,
    }))
}

struct Fixture {
    registry: Registry,
    ledger: Arc<Ledger>,
    /// The ledger's backend, to open the same log again.
    memory: Arc<MemoryLedger>,
    publisher: SignerKey,
    manifest: Digest,
    /// Where the registry saves its index snapshot.
    snapshot: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn log_signer() -> SignerKey {
    SignerKey::from_seed("registry.test/log", [3; 32]).expect("log key")
}

async fn fixture() -> Fixture {
    let store = BlobStore::new(Arc::new(MemoryBackend::new(64 << 10)));
    let memory = Arc::new(MemoryLedger::new());
    let ledger = Arc::new(Ledger::open(memory.clone(), log_signer()).expect("ledger"));
    let dir = tempfile::tempdir().expect("dir");
    let snapshot = dir.path().join("registry-index");
    let manifest = Digest::of(Algorithm::Sha256, MANIFEST.as_bytes());
    store
        .put_bytes(
            Expectation {
                digest: Some(manifest),
                size: None,
            },
            Bytes::from_static(MANIFEST.as_bytes()),
        )
        .await
        .expect("manifest into custody");
    let sequencer = Sequencer::start(ledger.clone(), SequencerConfig::default(), None);
    let registry = Registry::open_with_snapshot(store, sequencer, Some(snapshot.clone()))
        .await
        .expect("open");
    Fixture {
        registry,
        ledger,
        memory,
        publisher: SignerKey::from_seed("acme-release", [4; 32]).expect("publisher key"),
        manifest,
        snapshot,
        _dir: dir,
    }
}

impl Fixture {
    /// The registry opened again over the same custody and log, with the fixture's snapshot
    /// path, through a backend that counts (and `damage` may set to damage) what it reads; the
    /// count starts when the registry starts opening.
    async fn reopened(
        &self,
        damage: impl FnOnce(CountingBackend) -> CountingBackend,
    ) -> (Registry, Arc<CountingBackend>) {
        let counter = Arc::new(damage(CountingBackend::new(self.memory.clone())));
        let ledger = Arc::new(Ledger::open(counter.clone(), log_signer()).expect("ledger"));
        counter.take();
        let sequencer = Sequencer::start(ledger, SequencerConfig::default(), None);
        let registry = Registry::open_with_snapshot(
            self.registry.store().clone(),
            sequencer,
            Some(self.snapshot.clone()),
        )
        .await
        .expect("reopen");
        (registry, counter)
    }

    /// Attests a passing run told apart by `seed`; returns its entry's index.
    async fn attest(&self, attester: &SignerKey, seed: u64) -> u64 {
        self.registry
            .attest(
                &admin(),
                &run_statement(self.manifest, seed).sign(attester).to_json(),
            )
            .await
            .expect("attest")
            .index
    }

    /// Appends a `BlobsDeleted` entry for `blobs` at `time_ms`, straight to the ledger, and
    /// applies it to the registry, as a collection records a deletion.
    fn record_deletion(
        &self,
        blobs: Vec<custodian_core::registry::DeletedBlob>,
        reason: &str,
        time_ms: u64,
    ) {
        use custodian_core::registry::{BlobsDeleted, to_payload};
        let event = BlobsDeleted {
            blobs,
            reason: reason.into(),
            policy: "test".into(),
            grace_ms: 0,
            by: "test".into(),
        };
        let (appended, _) = self
            .ledger
            .append(
                vec![(
                    EntryKind::BlobsDeleted,
                    to_payload(&event).expect("payload"),
                )],
                time_ms,
            )
            .expect("append");
        for entry in appended {
            self.registry
                .apply(entry.index, &entry.decoded().expect("decoded"));
        }
    }

    async fn publish(&self, private: bool) -> Result<u64, RegistryError> {
        let statement = PackageStatement::new(
            "acme-bot",
            "1.0.0",
            "eval_suite",
            vec![FileEntry {
                path: "manifest.yaml".into(),
                sha256: self.manifest,
                size: MANIFEST.len() as u64,
            }],
        )
        .expect("statement");
        let (recorded, _) = self
            .registry
            .publish_and_scan(
                &admin(),
                &statement.sign(&self.publisher).to_json(),
                &self.publisher.verifier().to_string(),
                private,
                None,
            )
            .await?;
        Ok(recorded.record.index)
    }

    /// A fresh index replayed from the same ledger, with the bodies of sealed entries read
    /// from custody first (replay itself is synchronous).
    async fn replayed(&self) -> Index {
        let mut bodies = HashMap::new();
        let size = self.ledger.latest().size;
        for bytes in self.ledger.entries(0, size).expect("entries") {
            let entry = Entry::decode(&bytes).expect("entry");
            if let Ok((digest, _)) = custodian_core::seal::commitment(&entry) {
                let body = super::read_all(self.registry.store(), &digest)
                    .await
                    .expect("body");
                bodies.insert(digest, body);
            }
        }
        Index::replay(&self.ledger, &|digest| {
            bodies
                .get(digest)
                .cloned()
                .ok_or_else(|| "no body".to_string())
        })
        .expect("replay")
    }
}

fn version() -> semver::Version {
    semver::Version::new(1, 0, 0)
}

#[tokio::test]
async fn a_publication_is_in_the_index_and_in_its_replay() {
    let f = fixture().await;
    let index = f.publish(false).await.expect("publish");
    let replayed = f.replayed().await;
    for view in [&*f.registry.read(), &replayed] {
        let record = view
            .version("acme-bot", &version())
            .expect("published version");
        assert_eq!(record.index, index);
        assert_eq!(record.files.len(), 1);
        assert!(record.yanked.is_none());
        assert_eq!(
            view.package("acme-bot").expect("package").publisher_key(),
            f.publisher.verifier().to_string()
        );
        let refs = view
            .blob_refs(&f.manifest)
            .expect("the manifest is referred to");
        assert_eq!(refs.len(), 1);
        assert_eq!(
            (refs[0].name.as_str(), refs[0].private),
            ("acme-bot", false)
        );
        assert_eq!(view.version_count(), 1);
        assert!(view.damaged().is_empty());
    }
}

#[tokio::test]
async fn a_private_version_is_invisible_without_a_grant_and_so_are_its_blobs() {
    let f = fixture().await;
    f.publish(true).await.expect("publish");
    let anonymous = Principal::Anonymous;
    assert!(matches!(
        f.registry.get(&anonymous, "acme-bot", "1.0.0"),
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        f.registry.list(&anonymous, "acme-bot"),
        Err(RegistryError::NotFound(_))
    ));
    assert!(!f.registry.blob_readable(&anonymous, &f.manifest));
    assert!(f.registry.get(&admin(), "acme-bot", "1.0.0").is_ok());
    assert!(f.registry.blob_readable(&admin(), &f.manifest));
    let refs = f.replayed().await.blob_refs(&f.manifest).map(<[_]>::to_vec);
    assert_eq!(refs.map(|r| r[0].private), Some(true));
}

#[tokio::test]
async fn a_yank_is_recorded_with_its_reason_and_survives_replay() {
    let f = fixture().await;
    f.publish(false).await.expect("publish");
    let yanked = f
        .registry
        .yank(&admin(), "acme-bot", "1.0.0", "leaks the system prompt")
        .await
        .expect("yank");
    let yank_index = yanked.receipt.index;
    let replayed = f.replayed().await;
    for view in [&*f.registry.read(), &replayed] {
        let yank = view
            .version("acme-bot", &version())
            .and_then(|v| v.yanked.clone())
            .expect("yanked");
        assert_eq!(yank.reason, "leaks the system prompt");
        assert_eq!(yank.index, yank_index);
    }
}

/// A passing run of `acme-bot@1.0.0`'s eval `e1` on model `m1`, told apart by its seed.
fn run_statement(manifest: Digest, seed: u64) -> RunStatement {
    RunStatement::new(
        manifest,
        RunPredicate {
            package: "acme-bot".into(),
            version: "1.0.0".into(),
            eval_id: "e1".into(),
            model: "m1".into(),
            passed: true,
            metrics: Default::default(),
            data_pack_sha256: None,
            reproducibility_context: serde_json::json!({"seed": seed}),
            started_at: "2026-11-30T00:00:00Z".into(),
            finished_at: "2026-11-30T00:00:01Z".into(),
            runner: Runner {
                id: "ci".into(),
                version: None,
            },
        },
    )
    .expect("run statement")
}

/// The fixture with `acme-bot@1.0.0` published and an attester registered, and that attester's key.
async fn published_with_attester() -> (Fixture, SignerKey) {
    let f = fixture().await;
    f.publish(false).await.expect("publish");
    let attester = SignerKey::from_seed("ci-runner", [5; 32]).expect("attester key");
    f.registry
        .register_attester(&admin(), &attester.verifier().to_string())
        .await
        .expect("register attester");
    (f, attester)
}

#[tokio::test]
async fn attesters_and_runs_are_the_badge_inputs_the_index_keeps() {
    let (f, attester) = published_with_attester().await;
    let run = run_statement(f.manifest, 7);
    let receipt = f
        .registry
        .attest(&admin(), &run.sign(&attester).to_json())
        .await
        .expect("attest");
    let replayed = f.replayed().await;
    for view in [&*f.registry.read(), &replayed] {
        assert!(view.attester(&attester.verifier().handle()).is_some());
        let evidence = view.evidence("acme-bot", "1.0.0").expect("evidence");
        let latest = evidence.runs[&("e1".to_string(), "m1".to_string())]
            .last()
            .expect("a run");
        assert_eq!(latest.index, receipt.index);
        assert!(latest.passed);
        // The built-in scanner judged the publication; its verdict is a badge input too.
        assert!(
            evidence
                .scans
                .iter()
                .any(|s| s.scanner == custodian_scan::SCANNER),
            "{:?}",
            evidence.scans
        );
    }
}

/// A batch larger than the attestation slots: every run is checked and answered in request
/// order (a bad one among them gets its own error), every slot comes back, and a caller that
/// goes away mid-batch gives back the slots its runs held (they travel with the runs, taken
/// before each check starts).
#[tokio::test]
async fn a_batch_larger_than_the_slots_answers_every_run_and_gives_every_slot_back() {
    use crate::evidence::MAX_CONCURRENT_ATTESTATIONS as SLOTS;
    let (f, attester) = published_with_attester().await;
    let count = SLOTS + 44;
    let bad = SLOTS + 3;
    let envelopes: Vec<String> = (0..count as u64)
        .map(|i| {
            if i as usize == bad {
                "{\"payloadType\": \"not an envelope\"".to_string()
            } else {
                run_statement(f.manifest, i).sign(&attester).to_json()
            }
        })
        .collect();

    let results = f
        .registry
        .attest_many(&admin(), envelopes.clone(), false)
        .await;
    assert_eq!(results.len(), count);
    // Results come in request order; the runs are appended concurrently, so their ledger
    // indices need not be.
    let mut indices = std::collections::HashSet::new();
    for (i, result) in results.iter().enumerate() {
        match result {
            Err(RegistryError::InvalidArgument(message)) if i == bad => {
                assert!(message.contains("envelope"), "{message}")
            }
            Ok(crate::evidence::Attested::Index { index, .. }) if i != bad => {
                assert!(indices.insert(*index), "run {i} shares index {index}");
            }
            Ok(_) => panic!("run {i} answered with a receipt, or the bad run was accepted"),
            Err(err) => panic!("run {i}: {err}"),
        }
    }
    assert_eq!(f.registry.attest_permits.available_permits(), SLOTS);

    // Polled once, the batch holds slots; dropped, it gives all of them back.
    let who = admin();
    let mut batch = Box::pin(f.registry.attest_many(&who, envelopes, false));
    assert!(futures::poll!(&mut batch).is_pending());
    assert!(f.registry.attest_permits.available_permits() < SLOTS);
    drop(batch);
    assert_eq!(f.registry.attest_permits.available_permits(), SLOTS);
}

#[test]
fn an_entry_that_does_not_decode_as_its_kind_is_refused_and_changes_nothing() {
    let mut index = Index::default();
    let entry = Entry::new(
        EntryKind::PackagePublished,
        custodian_core::merkle::Hash([0; 32]),
        1,
        Value::Map(vec![(Value::Text("name".into()), Value::Integer(7.into()))]),
    )
    .expect("an entry");
    assert!(index.apply(0, &entry).is_err());
    assert_eq!(index.version_count(), 0);
    assert_eq!(index.packages().count(), 0);
}

/// What a publication's condition reads from a `BlobsDeleted` entry: the deleted digests, and
/// only those.
#[test]
fn a_deletion_entry_names_its_digests_to_a_publication_condition() {
    use custodian_core::registry::{BlobsDeleted, DeletedBlob, to_payload};
    let digests: Vec<String> = (0..3u8)
        .map(|i| Digest::of(Algorithm::Sha256, &[i]).to_string())
        .collect();
    let event = BlobsDeleted {
        blobs: digests
            .iter()
            .map(|digest| DeletedBlob {
                digest: digest.clone(),
                size: 1,
                blake3: None,
                created_ms: None,
            })
            .collect(),
        reason: "garbage collection".into(),
        policy: "unreferenced".into(),
        grace_ms: 0,
        by: "test".into(),
    };
    let entry = Entry::new(
        EntryKind::BlobsDeleted,
        custodian_core::merkle::Hash::ZERO,
        1,
        to_payload(&event).expect("a payload"),
    )
    .expect("an entry");
    assert_eq!(super::deleted_digests(&entry), digests);
    let other = Entry::new(
        EntryKind::ScanRecorded,
        custodian_core::merkle::Hash::ZERO,
        1,
        Value::Map(vec![]),
    )
    .expect("an entry");
    assert!(super::deleted_digests(&other).is_empty());
}

/// `count` entries of a kind the registry does not apply, appended straight to the ledger.
fn filler(ledger: &Ledger, count: u64) {
    let requests = (0..count)
        .map(|i| {
            (
                EntryKind::Other("Filler".into()),
                Value::Map(vec![(Value::Text("n".into()), Value::Integer(i.into()))]),
            )
        })
        .collect();
    ledger.append(requests, 1_700_000_000_000).expect("filler");
}

/// A replay longer than one read (4,096 entries) reads ahead on threads of its own: what the
/// registry appended is applied at its own index whichever read it falls in, and every entry is
/// processed.
#[tokio::test]
async fn a_long_replay_applies_each_chunk_in_order() {
    let f = fixture().await;
    filler(&f.ledger, 5_000);
    let published = f.publish(false).await.expect("publish");
    filler(&f.ledger, 4_000);
    let yanked = f
        .registry
        .yank(&admin(), "acme-bot", "1.0.0", "superseded")
        .await
        .expect("yank");
    filler(&f.ledger, 4_100);
    let replayed = f.replayed().await;
    assert_eq!(replayed.processed_below(), f.ledger.latest().size);
    assert!(replayed.damaged().is_empty());
    let record = replayed.version("acme-bot", &version()).expect("version");
    assert_eq!(record.index, published);
    assert!(published > 4096 && yanked.receipt.index > 8192);
    let yank = record.yanked.clone().expect("yanked");
    assert_eq!(
        (yank.index, yank.reason.as_str()),
        (yanked.receipt.index, "superseded")
    );
}

/// A ledger of `count` filler entries, opened again through a counting backend that `damage` may
/// set to hand out damaged bytes.
fn counted_ledger(
    count: u64,
    damage: impl FnOnce(CountingBackend) -> CountingBackend,
) -> (Ledger, Arc<CountingBackend>) {
    let signer = log_signer();
    let memory = Arc::new(MemoryLedger::new());
    filler(
        &Ledger::open(memory.clone(), signer.clone()).expect("ledger"),
        count,
    );
    let counter = Arc::new(damage(CountingBackend::new(memory)));
    let ledger = Ledger::open(counter.clone(), signer).expect("the same ledger, counted");
    (ledger, counter)
}

/// The body of a sealed entry, for ledgers that have none.
fn no_sealed_bodies(_: &Digest) -> Result<Vec<u8>, String> {
    Err("no sealed entries here".to_string())
}

/// How many hashes the log stores for entries `[from, to)`: what reading their leaf hashes reads.
fn stored_for(from: u64, to: u64) -> u64 {
    use custodian_core::merkle::stored_hash_count;
    stored_hash_count(to) - stored_hash_count(from)
}

/// A damaged entry is found and named, and nothing after it is lost: the replay reads on. Past
/// the first read, in a partial chunk (9,001: checked leaf by leaf) and inside a whole chunk
/// (5,000: its subtree hash fails, and the chunk is then checked entry by entry).
#[test]
fn a_long_replay_names_a_damaged_entry_in_a_later_chunk() {
    for at in [9_001, 5_000] {
        let (damaged, _) = counted_ledger(10_000, |backend| backend.damaging_entry(at));
        let replayed = Index::replay(&damaged, &no_sealed_bodies).expect("replay");
        assert_eq!(replayed.damaged(), &[at]);
        assert_eq!(replayed.processed_below(), 10_000);
    }
}

/// A replay checks each complete chunk of 4,096 entries against the one hash the tree stores for
/// that subtree, and only a partial chunk against each entry's stored leaf hash; a follow from an
/// index that is not a multiple of 4,096 reads up to the next one first, so the chunks after it
/// are whole subtrees again.
#[test]
fn a_long_replay_checks_whole_chunks_against_their_subtree_hash() {
    let (ledger, counter) = counted_ledger(14_000, |backend| backend);
    let mut index = Index::default();
    counter.take();
    index
        .follow(&ledger, 5_000, &no_sealed_bodies)
        .expect("follow to 5,000");
    // Entries 0..4096 are one subtree: one hash; 4096..5000 are checked leaf by leaf.
    assert_eq!(counter.take(), (1 + stored_for(4_096, 5_000), 5_000));
    index
        .follow(&ledger, 14_000, &no_sealed_bodies)
        .expect("follow to 14,000");
    // 5000..8192 leaf by leaf, 8192..12288 one subtree, 12288..14000 leaf by leaf.
    assert_eq!(
        counter.take(),
        (
            stored_for(5_000, 8_192) + 1 + stored_for(12_288, 14_000),
            9_000
        )
    );
    assert_eq!(index.processed_below(), 14_000);
    assert!(index.damaged().is_empty());
}

/// A damaged stored subtree hash over sound entries (each matching its own stored leaf hash)
/// names no entry as damaged: the entries are what the log committed to.
#[test]
fn a_damaged_subtree_hash_over_sound_entries_names_none_of_them() {
    use custodian_core::merkle::stored_hash_index;
    let (damaged, counter) = counted_ledger(10_000, |backend| {
        backend.damaging_hash(stored_hash_index(12, 1))
    });
    counter.take();
    let replayed = Index::replay(&damaged, &no_sealed_bodies).expect("replay");
    assert!(replayed.damaged().is_empty());
    assert_eq!(replayed.processed_below(), 10_000);
    // Two subtree hashes, the damaged chunk's leaves read to find which entry failed, and the
    // partial chunk's leaves.
    assert_eq!(
        counter.take().0,
        2 + stored_for(4_096, 8_192) + stored_for(8_192, 10_000)
    );
}

/// A deleted blob's fate is named by either of its digests, from the entry that deleted it
/// last, read back from the log; a digest that shares a deleted blob's first 8 bytes (the
/// index's key) but was never deleted is not called deleted.
#[tokio::test]
async fn a_tombstone_is_confirmed_by_the_entry_that_deleted_the_blob() {
    use custodian_core::BlobDigests;
    use custodian_core::registry::DeletedBlob;
    let f = fixture().await;
    let (a, b) = (BlobDigests::of(b"blob a"), BlobDigests::of(b"blob b"));
    let delete = |blobs: &[(&BlobDigests, u64)], reason: &str| {
        let blobs = blobs
            .iter()
            .map(|(d, size)| DeletedBlob {
                digest: d.sha256.to_string(),
                size: *size,
                blake3: Some(d.blake3.to_string()),
                created_ms: None,
            })
            .collect();
        f.record_deletion(blobs, reason, 1_700_000_000_000);
    };
    delete(&[(&a, 6), (&b, 7)], "first");
    delete(&[(&a, 6)], "again");

    let by_sha = f.registry.tombstone(&a.sha256).await.expect("a is deleted");
    let by_blake3 = f
        .registry
        .tombstone(&a.blake3)
        .await
        .expect("by BLAKE3 too");
    assert_eq!(by_sha, by_blake3);
    assert_eq!((by_sha.reason.as_str(), by_sha.size), ("again", 6));
    let first = f.registry.tombstone(&b.sha256).await.expect("b is deleted");
    assert_eq!((first.reason.as_str(), first.size), ("first", 7));
    assert!(first.index < by_sha.index);

    let mut twin = *a.sha256.bytes();
    twin[31] ^= 1;
    assert!(
        f.registry.tombstone(&Digest::sha256(twin)).await.is_none(),
        "a digest sharing the key of a deleted one was never deleted"
    );
    assert!(
        f.registry
            .tombstone(&Digest::of(Algorithm::Sha256, b"never stored"))
            .await
            .is_none()
    );
}

/// A deletion finished after a crash removes the copy its entry deleted and nothing newer: the
/// race the entry's copy time closes is a put hashed before a collection recorded the deletion
/// and committed after it deleted the older copy, so the new copy's commit time may be earlier
/// than the entry's own. Entries written before the copy's time was recorded fall back to the
/// entry's time, and (as this shows) would remove that new copy.
#[tokio::test]
async fn finishing_a_recorded_deletion_spares_a_copy_put_again_after_it() {
    use custodian_core::registry::DeletedBlob;
    let f = fixture().await;
    let store = f.registry.store().clone();
    let bytes = Bytes::from_static(b"a blob put, collected, and put again");
    let put = || async {
        let outcome = store
            .put_bytes(Expectation::default(), bytes.clone())
            .await
            .expect("put");
        assert!(!outcome.already_present);
        outcome.meta
    };
    // `created_ms` None is an entry of the earlier format.
    let record = |copy: &custodian_storage::BlobMeta, created_ms: Option<u64>, time_ms: u64| {
        let blob = DeletedBlob {
            digest: copy.sha256().to_string(),
            size: copy.size,
            blake3: Some(copy.digests.blake3.to_string()),
            created_ms,
        };
        f.record_deletion(vec![blob], "garbage collection", time_ms);
    };
    let finish = || crate::retention::finish_recorded(&f.registry);

    let first = put().await;
    assert!(store.delete(&first.sha256()).await.expect("delete"));
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = put().await;
    assert!(second.created_unix_ms > first.created_unix_ms);
    // Recorded (with the first copy's time) a minute after the second copy was committed.
    let entry_ms = second.created_unix_ms + 60_000;
    record(&first, Some(first.created_unix_ms), entry_ms);
    assert_eq!(finish().await.expect("finish"), 0);
    assert!(store.stat(&second.sha256()).await.expect("stat").is_some());

    // The same entry without the copy's time bounds the copy by its own time instead.
    record(&first, None, entry_ms);
    assert_eq!(finish().await.expect("finish"), 1);
    assert!(store.stat(&second.sha256()).await.expect("stat").is_none());

    // A crash between the entry and the delete: the copy it names is still there, and goes.
    let third = put().await;
    record(
        &third,
        Some(third.created_unix_ms),
        third.created_unix_ms + 1,
    );
    assert_eq!(finish().await.expect("finish"), 1);
    assert!(store.stat(&third.sha256()).await.expect("stat").is_none());
}

/// A published version with eleven runs of one eval × model (three more than the window keeps),
/// a yank and thousands of other entries, its snapshot saved; returns the fixture, the attester,
/// the runs' indexes and the yank's.
async fn snapshotted() -> (Fixture, SignerKey, Vec<u64>, u64) {
    let (f, attester) = published_with_attester().await;
    filler(&f.ledger, 5_000);
    let mut runs = Vec::new();
    for seed in 0..11 {
        runs.push(f.attest(&attester, seed).await);
    }
    filler(&f.ledger, 3_000);
    let yank = f
        .registry
        .yank(&admin(), "acme-bot", "1.0.0", "superseded")
        .await
        .expect("yank")
        .receipt
        .index;
    filler(&f.ledger, 100);
    let saved = f.registry.save_snapshot().await.expect("save");
    assert_eq!(saved, Some(f.ledger.latest().size));
    (f, attester, runs, yank)
}

/// A snapshot lists the entries the index is built from — not the runs that left their window,
/// not the other entries of the log — and a restart from it reads those and the entries past
/// it, and builds exactly what a replay of the whole log builds.
#[tokio::test]
async fn a_restart_from_a_snapshot_reads_what_it_lists_and_builds_what_a_replay_builds() {
    let (f, attester, runs, yank) = snapshotted().await;
    let snapshot = super::Snapshot::read(&f.snapshot)
        .expect("read")
        .expect("saved");
    let window = runs.len() - super::index::RUN_WINDOW;
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(snapshot.kept.contains(run), i >= window, "run {i}");
    }
    assert!(snapshot.kept.contains(&yank));
    assert!(snapshot.kept.len() < 20, "{:?}", snapshot.kept);
    // Past the snapshot: more entries of the log, and a registry entry (another attester).
    filler(&f.ledger, 2_000);
    let second = SignerKey::from_seed("ci-runner-2", [6; 32]).expect("second attester");
    f.registry
        .register_attester(&admin(), &second.verifier().to_string())
        .await
        .expect("register a second attester");
    let size = f.ledger.latest().size;
    let (restored, counter) = f.reopened(|backend| backend).await;
    let (_, read) = counter.take();
    let past = size - snapshot.size;
    assert!(
        read >= snapshot.kept.len() as u64 + past && read < 1_000 + past,
        "{read} entries read for {} listed and {past} past the snapshot, of {size}",
        snapshot.kept.len()
    );
    let replayed = f.replayed().await;
    f.registry.follow().await.expect("follow");
    let expected = replayed.fingerprint();
    assert_eq!(restored.read().fingerprint(), expected);
    assert_eq!(f.registry.read().fingerprint(), expected);
    let state = restored.read();
    let record = state.version("acme-bot", &version()).expect("version");
    assert_eq!(record.yanked.as_ref().map(|y| y.index), Some(yank));
    let evidence = state.evidence("acme-bot", "1.0.0").expect("evidence");
    let kept: Vec<u64> = evidence.runs[&("e1".to_string(), "m1".to_string())]
        .iter()
        .map(|run| run.index)
        .collect();
    assert_eq!(kept, runs[window..]);
    assert!(state.attester(&attester.verifier().handle()).is_some());
    assert!(state.attester(&second.verifier().handle()).is_some());
}

/// A damaged snapshot file, a snapshot of another log (its root is not this log's at its size)
/// and one longer than the log are not used: the whole ledger is replayed, and the index is
/// still what a replay builds.
#[tokio::test]
async fn a_damaged_or_foreign_snapshot_is_not_used() {
    let (f, _, _, _) = snapshotted().await;
    let good = std::fs::read(&f.snapshot).expect("read");
    let parsed = super::Snapshot::decode(&good).expect("decode");
    let size = f.ledger.latest().size;
    let mut flipped = good.clone();
    flipped[60] ^= 1;
    let foreign = super::Snapshot {
        root: custodian_core::merkle::Hash([9; 32]),
        ..parsed.clone()
    }
    .encode();
    let longer = super::Snapshot {
        size: size + 1,
        ..parsed.clone()
    }
    .encode();
    let expected = f.replayed().await.fingerprint();
    for (what, bytes) in [
        ("damaged", flipped),
        ("foreign", foreign),
        ("longer", longer),
    ] {
        std::fs::write(&f.snapshot, bytes).expect("write");
        let (restored, counter) = f.reopened(|backend| backend).await;
        assert_eq!(counter.take().1, size, "{what}: the whole log is read");
        assert_eq!(restored.read().fingerprint(), expected, "{what}");
    }
}

/// An entry a snapshot lists that no longer matches its leaf hash is named as damaged at the
/// restart and not applied, as a replay names it: the yank it was is not a registry fact.
#[tokio::test]
async fn a_damaged_entry_a_snapshot_lists_is_named_at_restart() {
    let (f, _, _, yank) = snapshotted().await;
    let (restored, _) = f.reopened(|backend| backend.damaging_entry(yank)).await;
    let state = restored.read();
    assert_eq!(state.damaged(), &[yank]);
    let record = state.version("acme-bot", &version()).expect("version");
    assert!(record.yanked.is_none());
}

/// Runs applied out of ledger order (concurrent attestations finish in any order) leave the
/// window a replay leaves, so what a snapshot lists does not depend on that order.
#[tokio::test]
async fn runs_applied_in_any_order_keep_the_window_a_replay_keeps() {
    let (f, attester) = published_with_attester().await;
    let mut runs = Vec::new();
    for seed in 0..11 {
        runs.push(f.attest(&attester, seed).await);
    }
    let mut reversed = Index::default();
    for &index in runs.iter().rev() {
        let bytes = f.ledger.entry(index).expect("entry");
        reversed
            .apply(index, &Entry::decode(&bytes).expect("decode"))
            .expect("apply");
    }
    let replayed = f.replayed().await;
    let key = ("e1".to_string(), "m1".to_string());
    let window = |index: &Index| {
        index.evidence("acme-bot", "1.0.0").expect("evidence").runs[&key]
            .iter()
            .map(|run| run.index)
            .collect::<Vec<_>>()
    };
    assert_eq!(window(&reversed), window(&replayed));
    assert_eq!(
        window(&reversed),
        runs[runs.len() - super::index::RUN_WINDOW..]
    );
    let listed = |index: &Index| {
        index
            .kept()
            .iter()
            .copied()
            .filter(|i| runs.contains(i))
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(&reversed), listed(&replayed));
    assert_eq!(listed(&reversed), window(&replayed));
}

/// An append given up between its commit and its application (here: a yank committed straight
/// to the ledger, and an append marked given up) makes the next snapshot read the log instead of
/// counting it read, so the entry is applied and listed. Without the mark the snapshot counts the
/// log as read on the daemon's word, which is what the mark exists to withhold.
#[tokio::test]
async fn an_append_given_up_after_its_commit_is_read_before_a_snapshot() {
    use custodian_core::registry::{VersionYanked, to_payload};
    let f = fixture().await;
    f.publish(false).await.expect("publish");
    let yank = VersionYanked {
        name: "acme-bot".into(),
        version: "1.0.0".into(),
        reason: "committed, never applied".into(),
        private: false,
    };
    let (appended, _) = f
        .ledger
        .append(
            vec![(
                EntryKind::VersionYanked,
                to_payload(&yank).expect("payload"),
            )],
            1_700_000_000_000,
        )
        .expect("append");
    let index = appended[0].index;
    drop(super::Unapplied::new(&f.registry));
    f.registry.save_snapshot().await.expect("save");
    let snapshot = super::Snapshot::read(&f.snapshot)
        .expect("read")
        .expect("saved");
    assert!(snapshot.kept.contains(&index), "{:?}", snapshot.kept);
    let state = f.registry.read();
    let record = state.version("acme-bot", &version()).expect("version");
    assert_eq!(record.yanked.as_ref().map(|y| y.index), Some(index));
}
