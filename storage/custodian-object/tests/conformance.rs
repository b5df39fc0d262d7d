//! The storage conformance suite on every object-store backend: `memory://`, `file://`, and
//! `s3://` against a real S3-compatible server (moto) that this test starts on loopback.

use std::sync::Arc;

use async_trait::async_trait;
use custodian_object::{ObjectBackend, ObjectConfig};
use custodian_storage::BlobStore;
use custodian_storage::conformance::{self, Harness, Options};

struct ObjectHarness {
    config: ObjectConfig,
    survives_restart: bool,
}

#[async_trait]
impl Harness for ObjectHarness {
    async fn open(&self) -> BlobStore {
        let backend = ObjectBackend::open(self.config.clone())
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.config.url));
        BlobStore::new(Arc::new(backend))
    }

    fn survives_restart(&self) -> bool {
        self.survives_restart
    }
}

fn config(url: String, index: &std::path::Path) -> ObjectConfig {
    let mut config = ObjectConfig::new(url, index);
    // Small blocks exercise multi-block paths quickly; parts must stay ≥ 5 MiB for S3.
    config.block_size = 256 * 1024;
    config.part_size = 5 << 20;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend() {
    let dir = tempfile::tempdir().unwrap();
    let harness = ObjectHarness {
        config: config("memory://".into(), &dir.path().join("index")),
        // The in-memory object store is recreated at each open, so nothing survives.
        survives_restart: false,
    };
    conformance::run(&harness, Options::full()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_backend() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("objects").display());
    let harness = ObjectHarness {
        config: config(url, &dir.path().join("index")),
        survives_restart: true,
    };
    conformance::run(&harness, Options::full()).await;
    // Nothing staged or partial is left on disk.
    let leftovers: Vec<_> = walk(&dir.path().join("objects"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/blobs/sha256/"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "files left outside blobs/: {leftovers:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().expect("file type").is_dir() {
                out.extend(walk(&entry.path()));
            } else {
                out.push(entry.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_against_moto() {
    let bucket = "custodian-conformance";
    let moto = custodian_testkit::Moto::start(bucket);
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(
        format!("s3://{bucket}/some/prefix"),
        &dir.path().join("index"),
    );
    config.options = moto.options();
    let harness = ObjectHarness {
        config,
        survives_restart: true,
    };
    conformance::run(&harness, Options::full()).await;
    // Nothing staged is left in the bucket: list it through moto's S3 API.
    let listing = moto
        .http(&format!(
            "GET /{bucket}?list-type=2&prefix=some/prefix/staging HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            moto.port
        ))
        .unwrap();
    assert!(
        listing.contains("<KeyCount>0</KeyCount>"),
        "staging objects left: {listing}"
    );
}

/// A flipped byte in a stored object is never served: the read fails at the damaged block,
/// naming the digest, and the blocks before it are intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_object_is_not_served() {
    use custodian_storage::{ByteRange, Expectation, StorageError};
    use futures::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("objects").display());
    let mut config = config(url, &dir.path().join("index"));
    config.block_size = 4096;
    let store = ObjectHarness {
        config,
        survives_restart: true,
    }
    .open()
    .await;
    let data = conformance::pattern(3, 10 * 4096);
    let meta = store
        .put_bytes(Expectation::default(), data)
        .await
        .unwrap()
        .meta;
    let hex = meta.sha256().hex();
    let object = dir
        .path()
        .join("objects/blobs/sha256")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(&hex);
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[6 * 4096 + 5] ^= 0x80;
    std::fs::write(&object, bytes).unwrap();

    let items: Vec<_> = store
        .get(&meta.sha256(), ByteRange::ALL)
        .await
        .unwrap()
        .data
        .collect()
        .await;
    assert_eq!(
        items.len(),
        7,
        "blocks 0-5 intact, then the error, then nothing"
    );
    assert!(items[..6].iter().all(Result::is_ok));
    match &items[6] {
        Err(StorageError::Corrupt { digest, detail }) => {
            assert_eq!(*digest, meta.sha256());
            assert!(detail.contains("block 6"), "{detail}");
        }
        other => panic!("corrupt object gave {other:?}"),
    }
    // A range that avoids the damaged block is still served.
    let items: Vec<_> = store
        .get(
            &meta.sha256(),
            ByteRange {
                offset: 0,
                limit: Some(4096),
            },
        )
        .await
        .unwrap()
        .data
        .collect()
        .await;
    assert!(items.iter().all(Result::is_ok));
}
