//! The blob index on PostgreSQL: the storage conformance suite, unchanged, on the object-store
//! backend with its index in PostgreSQL and its bytes in S3 (moto on loopback); and what only a
//! shared index adds: a second daemon sees the first's blobs, never cleans up an upload the
//! first still has in flight, and does clean up after a daemon that went away for good.

use std::sync::Arc;

use async_trait::async_trait;
use custodian_object::{ObjectBackend, ObjectConfig};
use custodian_postgres::PgIndex;
use custodian_storage::conformance::{self, Harness, Options};
use custodian_storage::{BlobBackend, BlobStore, ByteRange, Expectation};
use custodian_testkit::{Moto, Postgres};

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

fn config(url: String, state: &std::path::Path, moto: &Moto) -> ObjectConfig {
    let mut config = ObjectConfig::new(url, state);
    // Small blocks exercise multi-block paths quickly; parts must stay ≥ 5 MiB for S3.
    config.block_size = 256 * 1024;
    config.part_size = 5 << 20;
    config.options = moto.options();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_conformance_suite_passes_with_the_index_on_postgresql() {
    let pg = Postgres::start();
    let bucket = "custodian-pg-conformance";
    let moto = Moto::start(bucket);
    let dir = tempfile::tempdir().expect("tempdir");
    let harness = PgObjectHarness {
        config: config(format!("s3://{bucket}/blobs"), dir.path(), &moto),
        database: pg.database("conformance"),
    };
    conformance::run(&harness, Options::full()).await;
    let listing = moto
        .http(&format!(
            "GET /{bucket}?list-type=2&prefix=blobs/staging HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            moto.port
        ))
        .expect("list the bucket");
    assert!(
        listing.contains("<KeyCount>0</KeyCount>"),
        "staging objects left: {listing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_one_index_and_bucket() {
    let pg = Postgres::start();
    let bucket = "custodian-pg-shared";
    let moto = Moto::start(bucket);
    let database = pg.database("shared");
    let url = format!("s3://{bucket}/blobs");
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = PgObjectHarness {
        config: config(url.clone(), dir_a.path(), &moto),
        database: database.clone(),
    };
    let b = PgObjectHarness {
        config: config(url, dir_b.path(), &moto),
        database: database.clone(),
    };
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
    let backend_c = PgObjectHarness {
        config: config(format!("s3://{bucket}/blobs"), dir_c.path(), &moto),
        database: database.clone(),
    }
    .backend()
    .await;
    let orphan = backend_c
        .begin(&Expectation::default())
        .await
        .expect("begin");
    orphan.abandon_for_crash_test();
    drop(backend_c);
    assert!(backend_a.pending_uploads().await.expect("count") >= 1);
    let aged = database.clone();
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
    let d = PgObjectHarness {
        config: config(format!("s3://{bucket}/blobs"), fresh.path(), &moto),
        database,
    };
    let backend_d = d.backend().await;
    assert_eq!(
        backend_d.pending_uploads().await.expect("count"),
        0,
        "the stale instance's upload was cleaned up"
    );
}
