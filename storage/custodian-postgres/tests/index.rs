//! The blob index on PostgreSQL: the storage conformance suite, unchanged, on the object-store
//! backend with its index in PostgreSQL and its bytes in S3 (moto on loopback) or Azure
//! (Azurite on loopback); and what only a shared index adds: a second daemon sees the first's
//! blobs, never cleans up an upload the first still has in flight, and does clean up after a
//! daemon that went away for good; a collection on one daemon and puts on another never lose a
//! blob between them.

use std::sync::Arc;

use async_trait::async_trait;
use custodian_core::{Algorithm, Digest};
use custodian_object::{ObjectBackend, ObjectConfig};
use custodian_postgres::PgIndex;
use custodian_storage::conformance::{self, Harness, Options};
use custodian_storage::{BlobBackend, BlobMeta, BlobStore, ByteRange, Expectation, StorageError};
use custodian_testkit::{Cloud, Postgres};

struct PgObjectHarness {
    config: ObjectConfig,
    database: String,
}

impl PgObjectHarness {
    async fn backend(&self) -> ObjectBackend {
        let index = PgIndex::open(&self.database, &self.config.index_dir)
            .unwrap_or_else(|e| panic!("open the PostgreSQL index: {e}"));
        ObjectBackend::open_with_index(self.config.clone(), Arc::new(index))
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.config.url))
    }
}

#[async_trait]
impl Harness for PgObjectHarness {
    async fn open(&self) -> BlobStore {
        BlobStore::new(Arc::new(self.backend().await))
    }
}

/// PostgreSQL and an object store (S3 on moto, or Azure on Azurite) started for one test: a
/// database and a bucket that the test's daemons share, and the data directories of two of them.
struct Deployment {
    // Kept so the server stops with the test, not before.
    _pg: Postgres,
    cloud: Cloud,
    database: String,
    dirs: [tempfile::TempDir; 2],
}

impl Deployment {
    /// On S3 (moto).
    fn start(name: &str) -> Self {
        Self::on(name, Cloud::s3(&format!("custodian-pg-{name}")))
    }

    /// On Azure (Azurite).
    fn start_on_azure(name: &str) -> Self {
        Self::on(name, Cloud::azure(&format!("custodian-pg-{name}")))
    }

    fn on(name: &str, cloud: Cloud) -> Self {
        let pg = Postgres::start();
        Deployment {
            database: pg.database(name),
            _pg: pg,
            cloud,
            dirs: [(); 2].map(|()| tempfile::tempdir().expect("tempdir")),
        }
    }

    /// A daemon's object store on the shared bucket and index, its data directory `dir`.
    fn daemon(&self, dir: &std::path::Path) -> PgObjectHarness {
        let mut config = ObjectConfig::new(self.cloud.url("blobs"), dir);
        // Small blocks exercise multi-block paths quickly; parts must stay ≥ 5 MiB for S3.
        config.block_size = 256 * 1024;
        config.part_size = 5 << 20;
        config.options = self.cloud.options();
        PgObjectHarness {
            config,
            database: self.database.clone(),
        }
    }
}

/// The storage conformance suite, unchanged, with the index in PostgreSQL; nothing staged is
/// left behind.
async fn conformance_with_a_shared_index(deployment: Deployment) {
    let harness = deployment.daemon(deployment.dirs[0].path());
    conformance::run(&harness, Options::full()).await;
    let staged = deployment.cloud.list("blobs/staging");
    assert!(staged.is_empty(), "staging objects left: {staged:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_conformance_suite_passes_with_the_index_on_postgresql() {
    conformance_with_a_shared_index(Deployment::start("conformance")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_conformance_suite_passes_with_the_index_on_postgresql_on_azure() {
    conformance_with_a_shared_index(Deployment::start_on_azure("conformance")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_one_index_and_bucket() {
    let deployment = Deployment::start("shared");
    let (a, b) = (
        deployment.daemon(deployment.dirs[0].path()),
        deployment.daemon(deployment.dirs[1].path()),
    );
    let backend_a = Arc::new(a.backend().await);
    let store_a = BlobStore::new(backend_a.clone());

    // An upload of A's is in flight (its bytes are written to the final key, its pending
    // record says so) when B starts: B must not take it for a leftover.
    let data = conformance::pattern(41, 700 * 1024);
    let sha256 = custodian_core::Digest::of(custodian_core::Algorithm::Sha256, &data);
    let blake3 = custodian_core::Digest::of(custodian_core::Algorithm::Blake3, &data);
    let mut sink = backend_a
        .begin(&Expectation {
            digest: Some(sha256),
            size: Some(data.len() as u64),
        })
        .await
        .expect("begin");
    let block = 256 * 1024;
    for (i, start) in (0..data.len()).step_by(block).enumerate() {
        let end = (start + block).min(data.len());
        sink.write_block(i as u64, data.slice(start..end))
            .await
            .expect("write a block");
    }
    let store_b = b.open().await;
    let meta = store_a
        .put_bytes(Expectation::default(), data.clone())
        .await
        .expect("put through A")
        .meta;
    let (_, present) = sink.commit(meta.clone()).await.expect("commit A's upload");
    assert!(present, "the same bytes were committed first by the put");

    // B reads through either digest what A committed, verified.
    for digest in [sha256, blake3] {
        let read = conformance::read_all(&store_b, &digest, ByteRange::ALL).await;
        assert_eq!(read, data, "B read {digest}");
    }

    // A daemon that went away for good leaves a pending upload behind; once it has not been
    // seen for the stale interval, the next daemon to open cleans it up.
    let dir_c = tempfile::tempdir().expect("tempdir");
    let backend_c = deployment.daemon(dir_c.path()).backend().await;
    let orphan = backend_c
        .begin(&Expectation::default())
        .await
        .expect("begin");
    orphan.abandon_for_crash_test();
    drop(backend_c);
    assert!(backend_a.pending_uploads().await.expect("count") >= 1);
    let aged = deployment.database.clone();
    let gone: i64 = std::fs::read_to_string(dir_c.path().join("postgres-instance"))
        .expect("C's instance file")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("an instance number");
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&aged, postgres::NoTls).expect("connect");
        client.execute(
            "UPDATE custodian_index_instances SET seen = now() - interval '1 hour' \
             WHERE instance = $1",
            &[&gone],
        )
    })
    .join()
    .expect("the ageing thread")
    .expect("age the other instances");
    let fresh = tempfile::tempdir().expect("tempdir");
    let backend_d = deployment.daemon(fresh.path()).backend().await;
    assert_eq!(
        backend_d.pending_uploads().await.expect("count"),
        0,
        "the stale instance's upload was cleaned up"
    );
}

/// What several daemons agree on beyond the blobs: an acknowledgement by one daemon keeps a
/// blob from another's collection, a claim by a collection refuses the acknowledgement, and of
/// the two racing exactly one wins for every blob; claims a crashed collection left are found
/// and released; OCI links are one set for every daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_claims_and_links_are_shared() {
    use custodian_storage::SharedState;
    use custodian_storage::retention::Retention;

    let deployment = Deployment::start("state");
    let [dir_a, dir_b] = &deployment.dirs;
    let open_index = |dir: &std::path::Path| {
        Arc::new(
            PgIndex::open(&deployment.database, dir)
                .unwrap_or_else(|e| panic!("open the index: {e}")),
        )
    };
    let index_a = open_index(dir_a.path());
    let index_b = open_index(dir_b.path());
    let backend_a =
        ObjectBackend::open_with_index(deployment.daemon(dir_a.path()).config, index_a.clone())
            .await
            .expect("open A");
    let shared_a = backend_a
        .shared_state()
        .expect("a shared index has shared state");
    let store_a = BlobStore::new(Arc::new(backend_a))
        .with_retention(Arc::new(Retention::in_memory().with_shared(Some(shared_a))));
    let b: Arc<dyn SharedState> = index_b.clone();

    let blobs: Vec<_> = (0..203u64)
        .map(|i| conformance::pattern(i, 1024 + i as usize))
        .collect();
    let mut digests = Vec::new();
    for data in &blobs {
        let put = store_a
            .put_bytes(Expectation::default(), data.clone())
            .await
            .expect("put");
        assert!(!put.already_present);
        digests.push(put.meta.sha256());
    }

    // A put of bytes in custody through A is acknowledged there, and B's collection sees it.
    let (x, y) = (digests[0], digests[1]);
    let again = store_a
        .put_bytes(Expectation::default(), blobs[0].clone())
        .await
        .expect("put X again");
    assert!(again.already_present);
    let acked = {
        let b = b.clone();
        tokio::task::spawn_blocking(move || b.acknowledged_at(&[x, y]))
            .await
            .expect("task")
            .expect("read acknowledgements")
    };
    let x_at = acked[0].expect("X's acknowledgement is seen by B");
    assert_eq!(acked[1], None, "Y was never acknowledged");
    let claimed = {
        let b = b.clone();
        tokio::task::spawn_blocking(move || b.claim(&[x, y], x_at))
            .await
            .expect("task")
            .expect("claim")
    };
    assert_eq!(claimed, vec![y], "X is spared: acknowledged at the cutoff");

    // Y is claimed by B: a put of Y through A is refused, not acknowledged, with a reason.
    let refused = store_a
        .put_bytes(Expectation::default(), blobs[1].clone())
        .await
        .expect_err("a put of a blob being deleted is refused");
    assert!(
        matches!(refused, custodian_storage::StorageError::Unavailable { .. })
            && refused.to_string().contains("being deleted"),
        "{refused}"
    );
    // A claim is exclusive: A cannot claim what B claimed, and A cannot release B's claim.
    let a: Arc<dyn SharedState> = index_a.clone();
    let (a2, b2) = (a.clone(), b.clone());
    let (taken, still) = tokio::task::spawn_blocking(move || {
        let taken = a2.claim(&[y], u64::MAX).expect("claim");
        a2.release(&[y]).expect("release");
        let still = a2.acknowledge(&y, 1).expect("acknowledge");
        b2.release(&[y]).expect("release");
        (taken, still)
    })
    .await
    .expect("task");
    assert!(taken.is_empty(), "a claimed blob is claimed once");
    assert!(!still, "A's release leaves B's claim in place");
    store_a
        .put_bytes(Expectation::default(), blobs[1].clone())
        .await
        .expect("once released, Y is acknowledged");

    // The race, blob by blob: A acknowledges every blob while B claims them all in batches.
    // Exactly one of the two wins for each blob.
    let rest: Vec<custodian_core::Digest> = digests[2..].to_vec();
    let (a3, b3) = (a.clone(), b.clone());
    let (acks, claims) = tokio::task::spawn_blocking(move || {
        let acker = {
            let rest = rest.clone();
            std::thread::spawn(move || {
                rest.iter()
                    .map(|d| a3.acknowledge(d, u64::MAX / 2).expect("acknowledge"))
                    .collect::<Vec<bool>>()
            })
        };
        let mut claimed = std::collections::HashSet::new();
        for batch in rest.chunks(7) {
            claimed.extend(b3.claim(batch, u64::MAX / 4).expect("claim"));
        }
        (acker.join().expect("acker"), claimed)
    })
    .await
    .expect("task");
    let mut won_by_ack = 0;
    for (digest, acked) in digests[2..].iter().zip(&acks) {
        assert_ne!(
            *acked,
            claims.contains(digest),
            "{digest}: acknowledged {acked}, claimed {}",
            claims.contains(digest)
        );
        won_by_ack += usize::from(*acked);
    }
    eprintln!("race: {won_by_ack} acknowledged, {} claimed", claims.len());

    // B "crashes" with its claims: a new B on the same data directory finds them abandoned,
    // A does not while B's instance is alive; releasing them lets acknowledgements through.
    let claimed: Vec<custodian_core::Digest> = claims.into_iter().collect();
    drop(b);
    drop(index_b);
    let index_b = open_index(dir_b.path());
    let b: Arc<dyn SharedState> = index_b.clone();
    let (a4, b4, expected) = (a.clone(), b.clone(), claimed.clone());
    tokio::task::spawn_blocking(move || {
        let mut found = b4.abandoned_claims().expect("abandoned claims");
        found.sort_by_key(|d| *d.bytes());
        let mut expected = expected;
        expected.sort_by_key(|d| *d.bytes());
        assert_eq!(found, expected, "B's own claims from before its restart");
        assert!(
            a4.abandoned_claims().expect("abandoned").is_empty(),
            "a live daemon's claims are not A's to release"
        );
        b4.release_abandoned(&found).expect("release");
        for digest in &found {
            assert!(a4.acknowledge(digest, 1).expect("acknowledge"));
        }
    })
    .await
    .expect("task");

    // OCI links: one set for every daemon.
    let (a5, b5) = (a.clone(), b.clone());
    tokio::task::spawn_blocking(move || {
        assert!(a5.link("team/app", &x).expect("link"));
        assert!(!a5.link("team/app", &x).expect("link"), "linked once");
        assert!(b5.link("other/app", &x).expect("link"));
        assert!(b5.linked("team/app", &x).expect("linked"));
        assert!(!b5.linked("team/app", &y).expect("linked"));
        assert!(b5.repo_has_links("team/app").expect("has links"));
        assert_eq!(
            a5.repos_linking(&x).expect("repos"),
            vec!["other/app".to_string(), "team/app".to_string()]
        );
        assert!(b5.unlink("team/app", &x).expect("unlink"));
        assert!(!a5.unlink("team/app", &x).expect("unlink"), "unlinked once");
        assert!(!a5.repo_has_links("team/app").expect("has links"));
    })
    .await
    .expect("task");
}

/// Resumable upload sessions staged in PostgreSQL: a session started through one daemon takes
/// pieces through another and finishes through the first; two daemons racing one piece at the
/// same offset leave exactly one of them committed; a session survives the loss of the daemon
/// it began on; expired sessions are swept with their bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_sessions_move_between_daemons() {
    use custodian_storage::uploads::{DEFAULT_UPLOAD_EXPIRY, UploadError, UploadSessions};
    use std::collections::BTreeMap;

    let deployment = Deployment::start("uploads");
    let (dirs, database) = (&deployment.dirs, &deployment.database);
    let mut engines = Vec::new();
    for dir in dirs {
        let store = deployment.daemon(dir.path()).open().await;
        let sessions =
            UploadSessions::open(&dir.path().join("uploads"), DEFAULT_UPLOAD_EXPIRY, store)
                .expect("open the sessions");
        assert!(
            sessions.shared(),
            "a shared store stages sessions in the database"
        );
        engines.push(Arc::new(sessions));
    }
    let (a, b) = (engines[0].clone(), engines[1].clone());
    let piece = |bytes: &[u8]| {
        futures::stream::iter(vec![Ok::<_, String>(bytes::Bytes::copy_from_slice(bytes))])
    };

    // Started on A, pieces through A and B (one over 4 MiB, so it is staged in several
    // parts, and ends mid-block), finished through A.
    let data = conformance::pattern(90, 9 * 1024 * 1024 + 12_345);
    let digest = custodian_core::Digest::of(custodian_core::Algorithm::Sha256, &data);
    let session = a
        .start("alice", Expectation::default(), BTreeMap::new())
        .await
        .expect("start on A");
    let id = session.id.clone();
    let cut = [1_000_001, 6_500_000];
    let after_a = a
        .append("alice", &id, Some(0), piece(&data[..cut[0]]))
        .await
        .expect("a piece through A");
    assert_eq!(after_a.committed, cut[0] as u64);
    let seen_by_b = b.status("alice", &id).await.expect("B sees A's session");
    assert_eq!(seen_by_b.committed, cut[0] as u64);
    assert!(matches!(
        b.status("mallory", &id).await,
        Err(UploadError::Unknown { .. })
    ));
    b.append(
        "alice",
        &id,
        Some(cut[0] as u64),
        piece(&data[cut[0]..cut[1]]),
    )
    .await
    .expect("a piece through B");
    // A's cached hash state is for an older length: it resumes from the saved one.
    a.append("alice", &id, Some(cut[1] as u64), piece(&data[cut[1]..]))
        .await
        .expect("the last piece through A");
    let done = a
        .finish(
            "alice",
            &id,
            Expectation {
                digest: Some(digest),
                size: Some(data.len() as u64),
            },
        )
        .await
        .expect("finish through A");
    assert_eq!(done.meta.sha256(), digest);
    let read = conformance::read_all(b.store(), &digest, ByteRange::ALL).await;
    assert!(read == data, "B reads the finished blob back");
    assert!(matches!(
        b.status("alice", &id).await,
        Err(UploadError::Unknown { .. })
    ));

    // A race: A and B each send a different piece at offset 0. Exactly one is committed;
    // the other is told where the session stands, and the session holds the winner's bytes.
    for round in 0..4u64 {
        let session = b
            .start("alice", Expectation::default(), BTreeMap::new())
            .await
            .expect("start");
        let id = session.id;
        let mine = conformance::pattern(100 + round, 5 * 1024 * 1024 + 7);
        let theirs = conformance::pattern(200 + round, 5 * 1024 * 1024 + 7);
        let (ra, rb) = tokio::join!(
            a.append("alice", &id, Some(0), piece(&mine)),
            b.append("alice", &id, Some(0), piece(&theirs))
        );
        let winner = match (&ra, &rb) {
            (Ok(_), Err(_)) => &mine,
            (Err(_), Ok(_)) => &theirs,
            other => panic!("round {round}: exactly one piece may win: {other:?}"),
        };
        for loser in [&ra, &rb].into_iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(
                    loser,
                    UploadError::OffsetMismatch { .. } | UploadError::Invalid { .. }
                ),
                "round {round}: {loser}"
            );
        }
        let winner_digest = custodian_core::Digest::of(custodian_core::Algorithm::Sha256, winner);
        let done = a
            .finish(
                "alice",
                &id,
                Expectation {
                    digest: Some(winner_digest),
                    size: Some(winner.len() as u64),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}: the winner's bytes finish: {e}"));
        assert_eq!(done.meta.sha256(), winner_digest);
    }

    // A survives the loss of B: a session begun on B, B dropped, finished through A.
    let session = b
        .start("bob", Expectation::default(), BTreeMap::new())
        .await
        .expect("start");
    let small = conformance::pattern(300, 70_000);
    b.append("bob", &session.id, Some(0), piece(&small))
        .await
        .expect("a piece through B");
    drop(b);
    drop(engines);
    let done = a
        .finish("bob", &session.id, Expectation::default())
        .await
        .expect("finish through A after B is gone");
    assert_eq!(
        done.meta.sha256(),
        custodian_core::Digest::of(custodian_core::Algorithm::Sha256, &small)
    );

    // An expired session is swept, with its staged bytes.
    let store = deployment.daemon(dirs[0].path()).open().await;
    let quick = Arc::new(
        UploadSessions::open(
            &dirs[0].path().join("uploads"),
            std::time::Duration::from_millis(1),
            store,
        )
        .expect("open"),
    );
    // A (whose sessions live a day) stages a piece; to `quick`, whose expiry is 1 ms, the
    // same session in the same database is long expired.
    let session = a
        .start("carol", Expectation::default(), BTreeMap::new())
        .await
        .expect("start");
    a.append("carol", &session.id, Some(0), piece(&small))
        .await
        .expect("a piece");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let swept = {
        let quick = quick.clone();
        tokio::task::spawn_blocking(move || quick.sweep())
            .await
            .expect("sweep")
    };
    assert!(swept >= 1, "the expired session is swept");
    let database = database.clone();
    let parts: i64 = std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&database, postgres::NoTls).expect("connect");
        client
            .query_one("SELECT count(*) FROM custodian_upload_parts", &[])
            .expect("count")
            .get(0)
    })
    .join()
    .expect("the counting thread");
    assert_eq!(parts, 0, "no staged bytes are left behind");
}

/// A sweep fetches the records of this daemon's uploads that have ended and of daemons gone
/// for good, never those of its live uploads or of another daemon still running; the count sees
/// every record, and the probe answers with the database.
#[test]
fn leftovers_leave_out_live_uploads_and_running_daemons() {
    use custodian_storage::BlobIndex as _;
    let pg = Postgres::start();
    let database = pg.database("leftovers");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = PgIndex::open(&database, dir_a.path()).expect("open index A");
    let b = PgIndex::open(&database, dir_b.path()).expect("open index B");
    let ids: Vec<u64> = (0..4).map(|_| a.new_upload_id()).collect();
    let pending = |id: u64, record: Vec<u8>| custodian_storage::PendingUpload {
        id,
        record,
        places: None,
    };
    let records: Vec<_> = ids
        .iter()
        .map(|id| pending(*id, id.to_le_bytes().to_vec()))
        .collect();
    a.add_pending(&records).expect("A's records");
    let theirs = b.new_upload_id();
    b.add_pending(&[pending(theirs, b"B's".to_vec())])
        .expect("B's record");

    let live = |id: u64| id == ids[1] || id == ids[2];
    let found: Vec<(u64, Vec<u8>, bool)> = a
        .leftovers(&live)
        .expect("A's leftovers")
        .into_iter()
        .map(|l| (l.id, l.record, l.own))
        .collect();
    let expected: Vec<(u64, Vec<u8>, bool)> = [0, 3]
        .iter()
        .map(|i| (ids[*i], ids[*i].to_le_bytes().to_vec(), true))
        .collect();
    assert_eq!(
        found, expected,
        "B is running: its record is not A's to clean"
    );
    assert!(a.leftovers(&|_| true).expect("none ended").is_empty());
    assert_eq!(a.pending_count().expect("count"), 5);
    a.probe().expect("the database answers");
}

/// The index of a daemon under test: PostgreSQL's, with a hook run right after each
/// `delete_many` of committed blobs, where a collection on another daemon would be between its
/// index delete and whatever it does next.
struct AfterDelete {
    inner: Arc<PgIndex>,
    hook: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl custodian_storage::BlobIndex for AfterDelete {
    fn remote(&self) -> bool {
        self.inner.remote()
    }
    fn shared(&self) -> bool {
        self.inner.shared()
    }
    fn check_writable(&self) -> custodian_storage::Result<()> {
        self.inner.check_writable()
    }
    fn poison(&self, cause: String) -> custodian_storage::StorageError {
        self.inner.poison(cause)
    }
    fn lookup(&self, digest: &Digest) -> custodian_storage::Result<Option<BlobMeta>> {
        self.inner.lookup(digest)
    }
    fn lookup_many(&self, digests: &[Digest]) -> custodian_storage::Result<Vec<Option<BlobMeta>>> {
        self.inner.lookup_many(digests)
    }
    fn new_upload_id(&self) -> u64 {
        self.inner.new_upload_id()
    }
    fn add_pending(
        &self,
        records: &[custodian_storage::PendingUpload],
    ) -> custodian_storage::Result<()> {
        self.inner.add_pending(records)
    }
    fn remove_pending(&self, ids: &[u64]) -> custodian_storage::Result<()> {
        self.inner.remove_pending(ids)
    }
    fn leftovers(
        &self,
        live: &(dyn Fn(u64) -> bool + Sync),
    ) -> custodian_storage::Result<Vec<custodian_storage::Leftover>> {
        self.inner.leftovers(live)
    }
    fn pending_count(&self) -> custodian_storage::Result<u64> {
        self.inner.pending_count()
    }
    fn probe(&self) -> custodian_storage::Result<()> {
        self.inner.probe()
    }
    fn commit(
        &self,
        commits: &[(u64, BlobMeta)],
    ) -> custodian_storage::Result<Vec<(BlobMeta, bool)>> {
        self.inner.commit(commits)
    }
    fn delete(&self, sha256: &Digest) -> custodian_storage::Result<Option<BlobMeta>> {
        self.inner.delete(sha256)
    }
    fn delete_many(&self, sha256s: &[Digest]) -> custodian_storage::Result<Vec<Option<BlobMeta>>> {
        let deleted = self.inner.delete_many(sha256s)?;
        let hook = self.hook.lock().expect("hook").take();
        if let Some(hook) = hook {
            hook();
        }
        Ok(deleted)
    }
    fn list(&self, after: Option<Digest>, limit: usize) -> custodian_storage::Result<Vec<Digest>> {
        self.inner.list(after, limit)
    }
    fn forget(&self, sha256: &Digest) -> custodian_storage::Result<()> {
        self.inner.forget(sha256)
    }
    fn shared_state(self: Arc<Self>) -> Option<Arc<dyn custodian_storage::SharedState>> {
        self.inner.clone().shared_state()
    }
}

/// A put on one daemon and a collection on another never lose a blob between them. A pending
/// upload that writes a blob's object keeps the blob from being claimed; a claimed blob
/// refuses such uploads, declared or staged, with a reason; and a collection deletes the
/// objects while the rows (and claims) still stand, so that puts of the same bytes on another
/// daemon right after its index delete keep their blobs, whole.
async fn collection_against_puts(deployment: Deployment) {
    use custodian_storage::SharedState;

    let [dir_a, dir_b] = &deployment.dirs;
    let a = deployment.daemon(dir_a.path());
    let index_a = Arc::new(AfterDelete {
        inner: Arc::new(PgIndex::open(&a.database, dir_a.path()).expect("open A's index")),
        hook: std::sync::Mutex::new(None),
    });
    let backend_a = ObjectBackend::open_with_index(a.config, index_a.clone())
        .await
        .expect("open A");
    let claims: Arc<dyn SharedState> = backend_a.shared_state().expect("shared state");
    let backend_a = Arc::new(backend_a);
    let store_a = BlobStore::new(backend_a.clone());
    let backend_b = Arc::new(deployment.daemon(dir_b.path()).backend().await);
    let store_b = BlobStore::new(backend_b.clone());
    let claim = |digests: Vec<Digest>| {
        let claims = claims.clone();
        async move {
            tokio::task::spawn_blocking(move || claims.claim(&digests, u64::MAX))
                .await
                .expect("task")
                .expect("claim")
        }
    };

    let blobs: Vec<bytes::Bytes> = (0..2)
        .map(|i| conformance::pattern(90 + i, (1 << 20) + 7))
        .collect();
    let mut digests = Vec::new();
    for data in &blobs {
        let put = store_a
            .put_bytes(Expectation::default(), data.clone())
            .await
            .expect("put through A");
        digests.push(put.meta.sha256());
    }
    let (x, y) = (digests[0], digests[1]);
    let declared = |data: &bytes::Bytes| Expectation {
        digest: Some(Digest::of(Algorithm::Sha256, data)),
        size: Some(data.len() as u64),
    };

    // B writes X's object (an upload that declared X, straight to its key): X is not claimed
    // while it does; once B's upload is gone, it is.
    let sink = backend_b.begin(&declared(&blobs[0])).await.expect("begin");
    assert!(
        claim(vec![x]).await.is_empty(),
        "X's object is being written"
    );
    sink.abort().await.expect("abort");
    assert_eq!(
        claim(vec![x, y]).await.len(),
        2,
        "both claimed once B is done"
    );

    // Claimed, neither may be written: a declared upload is refused as it begins, a staged
    // one before its object is moved to the blob's key, each naming the blob.
    for refused in [
        backend_b
            .begin(&declared(&blobs[0]))
            .await
            .map(|_| ())
            .expect_err("an upload declaring X while X is claimed"),
        store_b
            .put_bytes(Expectation::default(), blobs[1].clone())
            .await
            .map(|_| ())
            .expect_err("a staged upload of Y while Y is claimed"),
    ] {
        assert!(
            matches!(refused, StorageError::Unavailable { .. })
                && refused
                    .to_string()
                    .contains("being deleted by garbage collection"),
            "{refused}"
        );
    }

    // A deletes both. Right after its index delete, B puts both again (X declared, Y staged):
    // those are new blobs, and must read back whole once A is done.
    let (handle, again_b, again) = (
        tokio::runtime::Handle::current(),
        store_b.clone(),
        blobs.clone(),
    );
    *index_a.hook.lock().expect("hook") = Some(Box::new(move || {
        handle.block_on(async move {
            let x = again_b
                .put_bytes(declared(&again[0]), again[0].clone())
                .await
                .expect("B puts X again");
            let y = again_b
                .put_bytes(Expectation::default(), again[1].clone())
                .await
                .expect("B puts Y again");
            assert!(!x.already_present && !y.already_present);
        })
    }));
    let existed = backend_a
        .delete_many(&[x, y])
        .await
        .expect("A deletes X and Y");
    assert_eq!(existed, vec![true, true]);
    assert!(
        index_a.hook.lock().expect("hook").is_none(),
        "B's puts ran between A's steps"
    );
    for (digest, data) in [x, y].iter().zip(&blobs) {
        for store in [&store_a, &store_b] {
            let read = conformance::read_all(store, digest, ByteRange::ALL).await;
            assert!(read == data[..], "{digest} reads back whole");
        }
    }
    assert_eq!(backend_a.pending_uploads().await.expect("pending"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_never_deletes_what_a_put_on_another_daemon_writes() {
    collection_against_puts(Deployment::start("race")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_never_deletes_what_a_put_on_another_daemon_writes_on_azure() {
    collection_against_puts(Deployment::start_on_azure("race")).await;
}
