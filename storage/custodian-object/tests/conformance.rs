//! The storage conformance suite on every object-store backend: `memory://`, `file://`, `s3://`
//! against a real S3-compatible server (moto) and `az://` against Microsoft's Azure Storage
//! emulator (Azurite), each started by its test on loopback.

use std::sync::Arc;

use async_trait::async_trait;
use custodian_object::{ObjectBackend, ObjectConfig};
use custodian_storage::BlobStore;
use custodian_storage::conformance::{self, Harness, Options};
use object_store::ObjectStoreExt as _;

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
    // Nothing staged or partial is left on disk: only blobs and packs (a partial file, named
    // `<key>#<id>`, sits beside its final place, under blobs/ too).
    let leftovers: Vec<_> = walk(&dir.path().join("objects"))
        .into_iter()
        .filter(|p| {
            let p = p.to_string_lossy();
            p.contains('#') || !p.contains("/blobs/sha256/") && !p.contains("/objects/packs/")
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "files left outside blobs/ and packs/: {leftovers:?}"
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

/// The suite on a bucket or container of `cloud`; after it nothing staged is left there, and
/// every object is where the layout says (under `blobs/`; `BatchPut`'s small blobs are objects of
/// their own off `file://`).
async fn cloud_backend(cloud: custodian_testkit::Cloud) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = config(cloud.url("some/prefix"), &dir.path().join("index"));
    config.options = cloud.options();
    let harness = ObjectHarness {
        config,
        survives_restart: true,
    };
    conformance::run(&harness, Options::full()).await;
    let staged = cloud.list("some/prefix/staging");
    assert!(staged.is_empty(), "staging objects left: {staged:?}");
    let stray: Vec<_> = cloud
        .list("")
        .into_iter()
        .filter(|name| !name.starts_with("some/prefix/blobs/sha256/"))
        .collect();
    assert!(
        stray.is_empty(),
        "objects outside some/prefix/blobs/: {stray:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_against_moto() {
    cloud_backend(custodian_testkit::Cloud::s3("custodian-conformance")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_backend_against_azurite() {
    cloud_backend(custodian_testkit::Cloud::azure("custodian-conformance")).await;
}

/// On S3 a staged upload (no SHA-256 declared) larger than one `CopyObject` may copy (5 GiB;
/// 1 MiB here) is copied to its blob's key through the backend, every block checked: it reads
/// back whole and leaves no staged object; one at the limit still takes the store's copy. The
/// same bytes put again without their digest are acknowledged as present and not copied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_uploads_past_the_copy_limit_are_copied_through_the_backend() {
    use custodian_storage::Expectation;
    let bucket = "custodian-copies";
    let cloud = custodian_testkit::Cloud::s3(bucket);
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(cloud.url("p"), &dir.path().join("index"));
    config.options = cloud.options();
    config.store_copy_max = Some(1 << 20);
    let store = ObjectHarness {
        config,
        survives_restart: true,
    }
    .open()
    .await;
    let (bucket_store, _, _) =
        custodian_object::build_store(&format!("s3://{bucket}"), &cloud.options()).unwrap();
    // At the limit, then past it: three parts of 5 MiB and a last block that is not whole.
    // S3 tells the two apart: an object completed from parts has an ETag ending in `-<parts>`,
    // and a CopyObject's has none.
    let mut last = None;
    for (data, etag_suffix) in [
        (conformance::pattern(61, 1 << 20), None),
        (conformance::pattern(62, (12 << 20) + 5), Some("-3\"")),
    ] {
        let meta = store
            .put_bytes(Expectation::default(), data.clone())
            .await
            .unwrap()
            .meta;
        assert_eq!(meta.size, data.len() as u64);
        let back = read_all(&store, &meta.sha256()).await.unwrap();
        assert!(back == data, "the copied blob reads back as it was put");
        let hex = meta.sha256().hex();
        let key = format!("p/blobs/sha256/{}/{}/{hex}", &hex[..2], &hex[2..4]);
        let key = object_store::path::Path::from(key);
        let etag = bucket_store
            .head(&key)
            .await
            .unwrap()
            .e_tag
            .expect("S3 answers an ETag");
        match etag_suffix {
            Some(suffix) => assert!(etag.ends_with(suffix), "copied through the backend: {etag}"),
            None => assert!(!etag.contains('-'), "copied by S3: {etag}"),
        }
        last = Some((data, key));
    }
    let (data, key) = last.expect("two puts");
    let before = bucket_store.head(&key).await.unwrap().last_modified;
    // S3 dates objects to the second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let again = store.put_bytes(Expectation::default(), data).await.unwrap();
    assert!(again.already_present, "the same bytes, again");
    let after = bucket_store.head(&key).await.unwrap().last_modified;
    assert_eq!(
        before, after,
        "a blob already in custody is not copied again"
    );
    let staged = cloud.list("p/staging");
    assert!(staged.is_empty(), "staging objects left: {staged:?}");
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

/// Reads a whole blob back through the store, every block verified.
async fn read_all(store: &BlobStore, digest: &custodian_core::Digest) -> Result<Vec<u8>, String> {
    use futures::StreamExt;
    let read = store
        .get(digest, custodian_storage::ByteRange::ALL)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut data = read.data;
    while let Some(block) = data.next().await {
        out.extend_from_slice(&block.map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// A `file://` store under `dir`: its objects directory and the harness that opens it.
fn file_store(dir: &std::path::Path) -> (std::path::PathBuf, ObjectHarness) {
    let objects = dir.join("objects");
    let url = format!("file://{}", objects.display());
    let harness = ObjectHarness {
        config: config(url, &dir.join("index")),
        survives_restart: true,
    };
    (objects, harness)
}

/// Puts blobs through `put_many` (the batched path), expecting nothing of them.
async fn put_all(
    store: &BlobStore,
    blobs: &[bytes::Bytes],
) -> Vec<custodian_storage::Result<custodian_storage::PutOutcome>> {
    let items = blobs
        .iter()
        .map(|b| (custodian_storage::Expectation::default(), b.clone()))
        .collect();
    store.put_many(items).await
}

/// Where a `file://` store keeps a blob that is an object of its own.
fn blob_file(objects: &std::path::Path, sha256: &custodian_core::Digest) -> std::path::PathBuf {
    let hex = sha256.hex();
    objects
        .join("blobs/sha256")
        .join(&hex[0..2])
        .join(&hex[2..4])
        .join(hex.as_str())
}

/// The pack files under a `file://` store's root.
fn packs(objects: &std::path::Path) -> Vec<std::path::PathBuf> {
    walk(&objects.join("packs"))
}

/// On `file://`, a batch of small blobs is one pack file: each blob at a 4 KiB boundary, read
/// back verified, a damaged one refused without harm to its neighbours, and a deleted one's
/// bytes gone from the disk (not only from the index); the last delete removes the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_pack_and_deleted_bytes_leave_the_disk() {
    use custodian_storage::{Expectation, StorageError};
    use std::os::unix::fs::MetadataExt;

    let dir = tempfile::tempdir().unwrap();
    let (objects, harness) = file_store(dir.path());
    let store = harness.open().await;
    let sizes = [1usize, 4096, 5000, 300, 8192 + 7];
    let blobs: Vec<bytes::Bytes> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| conformance::pattern(900 + i as u64, n))
        .collect();
    let outcomes = put_all(&store, &blobs).await;
    let metas: Vec<_> = outcomes.into_iter().map(|o| o.unwrap().meta).collect();
    let files = packs(&objects);
    assert_eq!(files.len(), 1, "one pack per batch: {files:?}");
    let pack = files[0].clone();
    assert!(
        walk(&objects.join("blobs")).is_empty(),
        "no object of its own for a packed blob"
    );
    let on_disk = std::fs::read(&pack).unwrap();
    assert_eq!(
        on_disk.len() % 4096,
        0,
        "the pack is padded to whole blocks"
    );
    for (meta, data) in metas.iter().zip(&blobs) {
        let at = meta.packed.expect("a batched small blob is packed");
        assert_eq!(at.offset % 4096, 0, "each blob starts on a block boundary");
        let at = at.offset as usize;
        assert_eq!(&on_disk[at..at + data.len()], &data[..]);
        assert_eq!(read_all(&store, &meta.sha256()).await.unwrap(), *data);
    }

    // A flipped byte in the third blob: that blob is data loss, its neighbours are served.
    let third = metas[2].packed.unwrap().offset as usize;
    let mut damaged = on_disk.clone();
    damaged[third + 4999] ^= 0x01;
    std::fs::write(&pack, &damaged).unwrap();
    match store
        .get(&metas[2].sha256(), custodian_storage::ByteRange::ALL)
        .await
    {
        Ok(read) => {
            use futures::StreamExt;
            let items: Vec<_> = read.data.collect().await;
            assert!(
                items
                    .iter()
                    .any(|r| matches!(r, Err(StorageError::Corrupt { digest, .. }) if *digest == metas[2].sha256())),
                "damaged packed blob was served: {items:?}"
            );
        }
        Err(e) => assert!(matches!(e, StorageError::Corrupt { .. }), "{e}"),
    }
    assert_eq!(
        read_all(&store, &metas[1].sha256()).await.unwrap(),
        blobs[1]
    );
    assert_eq!(
        read_all(&store, &metas[3].sha256()).await.unwrap(),
        blobs[3]
    );
    std::fs::write(&pack, &on_disk).unwrap();

    // Deleting the second blob zeroes its range on disk and frees its block, once the freeing
    // thread has run (counting pending uploads has it free what it holds).
    let blocks_before = std::fs::metadata(&pack).unwrap().blocks();
    assert!(store.delete(&metas[1].sha256()).await.unwrap());
    assert_eq!(store.pending_uploads().await.unwrap(), 0);
    let after = std::fs::read(&pack).unwrap();
    let second = metas[1].packed.unwrap().offset as usize;
    assert!(
        after[second..second + 4096].iter().all(|&b| b == 0),
        "a deleted blob's bytes stay on disk"
    );
    assert!(
        std::fs::metadata(&pack).unwrap().blocks() < blocks_before,
        "the deleted blob's block was not freed"
    );
    assert!(store.stat(&metas[1].sha256()).await.unwrap().is_none());
    for i in [0, 2, 3, 4] {
        assert_eq!(
            read_all(&store, &metas[i].sha256()).await.unwrap(),
            blobs[i]
        );
    }

    // A fresh batch of the deleted bytes makes a new pack; the old one is untouched.
    let again = store
        .put_many(vec![(Expectation::default(), blobs[1].clone())])
        .await
        .remove(0)
        .unwrap();
    assert!(!again.already_present);
    assert_ne!(
        again.meta.packed.unwrap().pack,
        metas[1].packed.unwrap().pack
    );
    assert_eq!(packs(&objects).len(), 2);
    assert_eq!(
        read_all(&store, &metas[1].sha256()).await.unwrap(),
        blobs[1]
    );

    // Once every blob of the first pack is deleted (in one batch, as garbage collection
    // deletes, with a repeat and a digest never stored), its file is gone.
    let never = custodian_core::BlobDigests::of(b"never stored in a pack").sha256;
    let batch: Vec<_> = [0, 2, 0, 3, 4]
        .iter()
        .map(|&i| metas[i].sha256())
        .chain([never])
        .collect();
    assert_eq!(
        store.delete_many(&batch).await.unwrap(),
        vec![true, true, false, true, true, false]
    );
    assert_eq!(store.pending_uploads().await.unwrap(), 0);
    assert!(!pack.exists(), "an empty pack was left on disk");
    assert_eq!(packs(&objects).len(), 1);
}

/// A committed pack is kept whole across a restart: recovery removes only packs whose batch
/// never committed (the unit test `a_pack_left_by_a_crash_is_removed_at_open` in the crate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_blobs_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (objects, harness) = file_store(dir.path());
    let blobs: Vec<bytes::Bytes> = (0..50)
        .map(|i| conformance::pattern(700 + i, 100 + 97 * i as usize))
        .collect();
    {
        let store = harness.open().await;
        let outcomes = put_all(&store, &blobs).await;
        assert!(outcomes.iter().all(Result::is_ok));
    }
    let store = harness.open().await;
    for data in &blobs {
        let digest = custodian_core::BlobDigests::of(data).sha256;
        assert_eq!(read_all(&store, &digest).await.unwrap(), *data);
    }
    assert_eq!(store.pending_uploads().await.unwrap(), 0);
    assert_eq!(packs(&objects).len(), 1);
}

/// On `file://`, an upload session staged on the store's own file system is moved into custody
/// at its finish: the blob's file is the staged file itself (same inode), so its bytes were
/// written once. A staging directory on another file system is not adopted from: its blocks are
/// mirrored as they arrive, and the blob reads back the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_staged_beside_the_store_becomes_the_blob_file() {
    use custodian_storage::staging::LocalStaging;
    use custodian_storage::uploads::{DEFAULT_UPLOAD_EXPIRY, UploadSessions};
    use std::os::unix::fs::MetadataExt;

    let dir = tempfile::tempdir().unwrap();
    let (objects, harness) = file_store(dir.path());
    let store = harness.open().await;
    let data = conformance::pattern(77, 3 * 256 * 1024 + 11);
    let session = |staging_dir: std::path::PathBuf| {
        let store = store.clone();
        let data = data.clone();
        async move {
            let sessions = Arc::new(UploadSessions::open_in(
                Arc::new(LocalStaging::open(&staging_dir).expect("staging dir")),
                DEFAULT_UPLOAD_EXPIRY,
                store,
            ));
            let id = sessions
                .start("test", Default::default(), Default::default())
                .await
                .expect("start")
                .id;
            let body = futures::stream::iter(vec![Ok::<_, String>(data)]);
            sessions
                .append("test", &id, None, body)
                .await
                .expect("append");
            let staged = std::fs::metadata(staging_dir.join(&id).join("data"))
                .expect("the staged file")
                .ino();
            let outcome = sessions
                .finish("test", &id, Default::default())
                .await
                .expect("finish");
            (staged, outcome.meta.sha256())
        }
    };

    let (staged, sha256) = session(dir.path().join("uploads")).await;
    let blob_file = blob_file(&objects, &sha256);
    assert_eq!(
        std::fs::metadata(&blob_file)
            .expect("the blob's file")
            .ino(),
        staged,
        "the staged file should have become the blob's file"
    );
    assert_eq!(read_all(&store, &sha256).await.expect("read back"), data);

    // /dev/shm is a tmpfs on Linux: another file system than the temporary directory's disk.
    let shm = std::path::Path::new("/dev/shm");
    let other = tempfile::tempdir_in(shm).ok().filter(|other| {
        std::fs::metadata(other.path()).map(|m| m.dev()).ok()
            != std::fs::metadata(dir.path()).map(|m| m.dev()).ok()
    });
    let Some(other) = other else {
        eprintln!("no second file system here; the mirrored path is not exercised");
        return;
    };
    assert!(
        store
            .delete(&sha256)
            .await
            .expect("delete, to put it again")
    );
    let (staged, again) = session(other.path().join("uploads")).await;
    assert_eq!(again, sha256);
    assert_ne!(
        std::fs::metadata(&blob_file)
            .expect("the blob's file")
            .ino(),
        staged,
        "a file on another file system cannot be renamed into the store"
    );
    assert_eq!(read_all(&store, &sha256).await.expect("read back"), data);
}

/// On `file://`, a blob whose file was cut short or removed behind the store's back is damage,
/// reported as the blob's (`Corrupt`, which the daemon answers as `DATA_LOSS`), never bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_file_cut_short_or_removed_is_damage() {
    use custodian_storage::{Expectation, StorageError};

    let dir = tempfile::tempdir().unwrap();
    let (objects, harness) = file_store(dir.path());
    let store = harness.open().await;
    let data = conformance::pattern(78, 2 * 256 * 1024 + 9);
    let sha256 = store
        .put_bytes(Expectation::default(), data.clone())
        .await
        .expect("put")
        .meta
        .sha256();
    let file = blob_file(&objects, &sha256);
    assert_eq!(read_all(&store, &sha256).await.expect("intact"), data);

    let get_error = |store: BlobStore| async move {
        let read = store
            .get(&sha256, custodian_storage::ByteRange::ALL)
            .await
            .map(|read| read.data);
        let mut stream = match read {
            Ok(stream) => stream,
            Err(err) => return err,
        };
        while let Some(block) = futures::StreamExt::next(&mut stream).await {
            if let Err(err) = block {
                return err;
            }
        }
        panic!("a damaged blob was read to its end");
    };
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(256 * 1024 + 5))
        .expect("cut the file short");
    let err = get_error(store.clone()).await;
    assert!(
        matches!(&err, StorageError::Corrupt { detail, .. } if detail.contains("block 1")),
        "{err}"
    );
    std::fs::remove_file(&file).expect("remove the file");
    let err = get_error(store.clone()).await;
    assert!(
        matches!(&err, StorageError::Corrupt { detail, .. } if detail.contains("missing from the store")),
        "{err}"
    );
}
