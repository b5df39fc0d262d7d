//! What survives `kill -9`, and what a graceful stop does; and the crash harness: 50 cycles of
//! mixed concurrent writes, each cut by `kill -9`, each followed by a check of everything.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use custodian_core::attestation::{RunPredicate, RunStatement, Runner};
use custodian_core::checkpoint::Checkpoint;
use custodian_core::merkle::Hash;
use custodian_core::note::{SignerKey, VerifierKey};
use custodian_core::package::{FileEntry, PackageStatement};
use custodian_core::{Algorithm, BlobDigests, Digest};
use custodian_proto::cas::v1 as pb;
use custodian_proto::cas::v1::content_store_client::ContentStoreClient;
use custodian_proto::evidence::v1 as epb;
use custodian_proto::ledger::v1 as lpb;
use custodian_proto::registry::v1 as rpb;
use custodian_proto::registry::v1::registry_client::RegistryClient;
use futures::StreamExt;

use crate::cas::{OpenUpload, assert_absent, get, put};
use crate::pattern;
use custodian_client::Conn as Authed;
use custodian_testkit::Daemon;

#[tokio::test]
async fn acknowledged_blobs_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path());
    let blobs: Vec<Bytes> = [0, 10, 4096, (1 << 20) + 1, 6 << 20]
        .into_iter()
        .enumerate()
        .map(|(i, size)| pattern(300 + i as u64, size))
        .collect();
    let mut client = daemon.client().await;
    for data in &blobs {
        put(&mut client, "", None, data).await.unwrap();
    }
    // Killed the instant the last acknowledgement arrived.
    daemon.restart_after_kill9();
    let mut client = daemon.client().await;
    for data in &blobs {
        let digest = BlobDigests::of(data).sha256.to_string();
        let (info, back) = get(&mut client, &digest, 0, 0).await.unwrap();
        assert_eq!(info.size, data.len() as u64);
        assert!(back == *data, "{digest} changed across kill -9");
    }
}

#[tokio::test]
async fn an_upload_cut_by_kill_9_leaves_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path());
    let data = pattern(400, 8 << 20);
    let digests = BlobDigests::of(&data);
    let upload = OpenUpload::start(
        daemon.client().await,
        pb::PutHeader::default(),
        data.slice(..5 << 20),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.restart_after_kill9();
    assert!(
        upload.call.await.unwrap().is_err(),
        "the cut upload must not succeed"
    );

    let mut client = daemon.client().await;
    assert_absent(&mut client, &digests).await;
    let response = put(&mut client, &digests.sha256.to_string(), None, &data)
        .await
        .unwrap();
    assert!(!response.already_present);
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_upload_finish_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path());
    let data = pattern(500, 3 << 20);
    let digest = BlobDigests::of(&data).sha256.to_string();
    let upload = OpenUpload::start(
        daemon.client().await,
        pb::PutHeader {
            expected_digest: digest.clone(),
            expected_size: Some(data.len() as u64),
        },
        data.slice(..1 << 20),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    upload.send(data.slice(1 << 20..)).await;
    drop(upload.tx);
    let call = upload.call;
    let response = call
        .await
        .unwrap()
        .expect("the in-flight upload completes during shutdown");
    assert_eq!(response.into_inner().blob.unwrap().sha256, digest);
    assert!(
        daemon.wait_exit(Duration::from_secs(20)),
        "daemon exits cleanly after SIGTERM"
    );
}

/// What the clients were told was durable, and what was only attempted.
#[derive(Default)]
struct Acked {
    /// Blobs whose put (or batch put) was acknowledged: (sha256, seed, size).
    blobs: Vec<(String, u64, usize)>,
    /// Blobs sent whose acknowledgement never came: (sha256, seed, size).
    attempted: Vec<(String, u64, usize)>,
    /// Ledger entries acknowledged with a receipt: (index, leaf hash).
    entries: Vec<(u64, Hash)>,
    /// Every checkpoint a receipt carried.
    checkpoints: Vec<String>,
    /// Published versions: (version, root).
    versions: Vec<(String, String)>,
}

/// A tiny deterministic generator, so a failing cycle can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const PACKAGE: &str = "crash-harness";

fn manifest_text(version: &str) -> String {
    format!(
        "name: {PACKAGE}\nversion: {version}\ntype: eval_suite\nbase_model: [m0, m1]\nevals: [e0, e1, e2]\nlicense: Apache-2.0\n"
    )
}

/// Publishes `version` over gRPC (manifest blob, then the signed statement); returns the
/// response.
async fn publish(
    store: &mut ContentStoreClient<Authed>,
    registry: &mut RegistryClient<Authed>,
    publisher: &SignerKey,
    version: &str,
) -> Result<rpb::PublishVersionResponse, tonic::Status> {
    let text = manifest_text(version);
    let digest = Digest::of(Algorithm::Sha256, text.as_bytes());
    let stored = store
        .batch_put(pb::BatchPutRequest {
            items: vec![pb::BatchPutItem {
                expected_digest: digest.to_string(),
                data: text.clone().into_bytes().into(),
            }],
        })
        .await?
        .into_inner();
    if let Some(error) = stored.results.first().and_then(|r| r.error.as_ref()) {
        return Err(tonic::Status::internal(error.message.clone()));
    }
    let statement = PackageStatement::new(
        PACKAGE,
        version,
        "eval_suite",
        vec![FileEntry {
            path: "manifest.yaml".into(),
            sha256: digest,
            size: text.len() as u64,
        }],
    )
    .expect("statement");
    registry
        .publish_version(rpb::PublishVersionRequest {
            envelope: statement.sign(publisher).to_json(),
            publisher_key: publisher.verifier().to_string(),
            visibility: 0,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

fn run_envelope(manifest: Digest, attester: &SignerKey, version: &str, seed: u64) -> String {
    let predicate = RunPredicate {
        package: PACKAGE.into(),
        version: version.into(),
        eval_id: format!("e{}", seed % 3),
        model: format!("m{}", seed % 2),
        passed: !seed.is_multiple_of(5),
        metrics: Default::default(),
        data_pack_sha256: None,
        reproducibility_context: serde_json::json!({"seed": seed, "cases": [format!("case-{seed}")]}),
        started_at: "2026-11-26T00:00:00Z".into(),
        finished_at: "2026-11-26T00:00:01Z".into(),
        runner: Runner {
            id: "crash-harness".into(),
            version: None,
        },
    };
    RunStatement::new(manifest, predicate)
        .expect("run statement")
        .sign(attester)
        .to_json()
}

fn record_receipt(acked: &Mutex<Acked>, receipt: Option<lpb::Receipt>) {
    let receipt = receipt.expect("an acknowledged write carries a receipt");
    let mut acked = acked.lock().expect("the record lock");
    acked.entries.push((
        receipt.log_index,
        custodian_core::merkle::leaf_hash(&receipt.entry),
    ));
    acked.checkpoints.push(receipt.checkpoint);
}

/// What every writer task takes along.
#[derive(Clone)]
struct Ctx {
    acked: Arc<Mutex<Acked>>,
    address: String,
    token: String,
    keys: Arc<(SignerKey, SignerKey, Digest)>,
}

impl Ctx {
    /// A writer's own handles: the record, the daemon's address and its token.
    fn parts(&self) -> (Arc<Mutex<Acked>>, String, String) {
        (self.acked.clone(), self.address.clone(), self.token.clone())
    }
}

/// Starts the cycle's writers: blob puts of every size class, batch puts, publications and
/// attested runs. Each runs until its call fails (the daemon died).
fn start_writers(
    daemon: &Daemon,
    cycle: u64,
    acked: &Arc<Mutex<Acked>>,
    keys: &Arc<(SignerKey, SignerKey, Digest)>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ctx = Ctx {
        acked: acked.clone(),
        address: daemon.address.clone(),
        token: daemon.token.clone(),
        keys: keys.clone(),
    };
    let mut tasks = Vec::new();
    for writer in 0..3u64 {
        let (acked, address, token) = ctx.parts();
        tasks.push(tokio::spawn(async move {
            let mut client = connect_store(&address, &token).await;
            let mut rng = Rng(cycle * 7919 + writer + 1);
            for i in 0.. {
                let size = match rng.below(10) {
                    0..=4 => rng.below(8 << 10) as usize,
                    5..=7 => 100_000 + rng.below(200_000) as usize,
                    _ => (1 << 20) + rng.below(2 << 20) as usize,
                };
                let seed = 1_000_000 + cycle * 100_000 + writer * 10_000 + i;
                let data = crate::pattern(seed, size);
                let digest = custodian_core::BlobDigests::of(&data).sha256.to_string();
                acked
                    .lock()
                    .expect("the record lock")
                    .attempted
                    .push((digest.clone(), seed, size));
                match crate::cas::put(&mut client, &digest, Some(size as u64), &data).await {
                    Ok(_) => acked
                        .lock()
                        .expect("the record lock")
                        .blobs
                        .push((digest, seed, size)),
                    Err(_) => return,
                }
            }
        }));
    }
    {
        let (acked, address, token) = ctx.parts();
        tasks.push(tokio::spawn(async move {
            let mut client = connect_store(&address, &token).await;
            for i in 0.. {
                let items: Vec<(String, u64, usize, Bytes)> = (0..16u64)
                    .map(|j| {
                        let seed = 5_000_000 + cycle * 100_000 + i * 16 + j;
                        let data = crate::pattern(seed, 4096);
                        let digest = custodian_core::BlobDigests::of(&data).sha256.to_string();
                        (digest, seed, 4096, data)
                    })
                    .collect();
                acked
                    .lock()
                    .expect("the record lock")
                    .attempted
                    .extend(items.iter().map(|(d, s, n, _)| (d.clone(), *s, *n)));
                let request = pb::BatchPutRequest {
                    items: items
                        .iter()
                        .map(|(d, _, _, data)| pb::BatchPutItem {
                            expected_digest: d.clone(),
                            data: data.clone(),
                        })
                        .collect(),
                };
                let Ok(response) = client.batch_put(request).await else {
                    return;
                };
                let mut acked = acked.lock().expect("the record lock");
                for ((digest, seed, size, _), result) in
                    items.into_iter().zip(response.into_inner().results)
                {
                    assert!(
                        result.error.is_none(),
                        "batch item failed: {:?}",
                        result.error
                    );
                    acked.blobs.push((digest, seed, size));
                }
            }
        }));
    }
    {
        let ((acked, address, token), keys) = (ctx.parts(), ctx.keys.clone());
        tasks.push(tokio::spawn(async move {
            let mut store = connect_store(&address, &token).await;
            let mut registry = connect(&address, &token).await.registry();
            for i in 0.. {
                let version = format!("{}.{i}.0", cycle + 2);
                match publish(&mut store, &mut registry, &keys.0, &version).await {
                    Ok(response) => {
                        let root = response.version.expect("version").root;
                        acked
                            .lock()
                            .expect("the record lock")
                            .versions
                            .push((version, root));
                        record_receipt(&acked, response.receipt);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    for attester in 0..2u64 {
        let ((acked, address, token), keys) = (ctx.parts(), ctx.keys.clone());
        tasks.push(tokio::spawn(async move {
            let mut evidence = connect(&address, &token).await.evidence();
            for i in 0.. {
                let seed = cycle * 1_000_000 + attester * 100_000 + i;
                let envelope = run_envelope(keys.2, &keys.1, "1.0.0", seed);
                match evidence
                    .attest_run(epb::AttestRunRequest { envelope })
                    .await
                {
                    Ok(response) => record_receipt(&acked, response.into_inner().receipt),
                    Err(_) => return,
                }
            }
        }));
    }
    tasks
}

async fn connect(address: &str, token: &str) -> custodian_client::Client {
    custodian_client::Client::connect(&custodian_client::Target::new(address, Some(token)))
        .await
        .expect("connect")
}

async fn connect_store(address: &str, token: &str) -> ContentStoreClient<Authed> {
    connect(address, token).await.store()
}

/// Opens a stopped daemon's index database read-only and asserts that no pending-upload record
/// survived its restart.
fn open_without_pending(path: &Path, cycle: u64) -> rocksdb::DB {
    let cfs =
        rocksdb::DB::list_cf(&rocksdb::Options::default(), path).expect("list column families");
    let db = rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), path, &cfs, false)
        .expect("open the index read-only");
    let pending = db.cf_handle("pending").expect("pending");
    let leftovers = db
        .iterator_cf(pending, rocksdb::IteratorMode::Start)
        .count();
    assert_eq!(
        leftovers, 0,
        "cycle {cycle}: {leftovers} pending uploads survived the restart"
    );
    db
}

/// Opens the stopped daemon's blob database read-only and checks that nothing temporary is
/// left: no pending-upload record, and no stored block, extent file or pack outside a committed
/// blob.
fn assert_no_leftovers(data_dir: &Path, cycle: u64) {
    let db = open_without_pending(&data_dir.join("blobs"), cycle);
    let meta = db.cf_handle("meta").expect("meta");
    let committed: std::collections::HashSet<Vec<u8>> = db
        .iterator_cf(meta, rocksdb::IteratorMode::Start)
        .map(|item| {
            let (_, value) = item.expect("read meta");
            let len = value[0] as usize;
            value[1..1 + len].to_vec()
        })
        .collect();
    let chunks = db.cf_handle("chunks").expect("chunks");
    for item in db.iterator_cf(chunks, rocksdb::IteratorMode::Start) {
        let (key, _) = item.expect("read chunks");
        assert!(
            committed.contains(&key[..8]),
            "cycle {cycle}: a block of extent {} belongs to no committed blob",
            hex::encode(&key[..8])
        );
    }
    // Blobs larger than one block are files named by their extent, and batches of small blobs
    // packs named by their id; each must be committed (a blob's location is `f` followed by the
    // extent id, or `p` followed by the pack id): a batch cut before its commit loses its pack.
    for (dir, tag) in [("extents", b'f'), ("packs", b'p')] {
        for entry in std::fs::read_dir(data_dir.join("blobs").join(dir)).expect("blob files") {
            let name = entry.expect("read a blob directory").file_name();
            let name = name.to_string_lossy();
            let mut location = vec![tag];
            location.extend(hex::decode(name.as_ref()).expect("a blob file is named in hex"));
            assert!(
                committed.contains(&location),
                "cycle {cycle}: {dir}/{name} holds no committed blob"
            );
        }
    }
}

/// The harness: 50 cycles of mixed writes cut by `kill -9` at a random moment, each followed by
/// a restart and a check of everything acknowledged so far.
#[tokio::test]
async fn fifty_kill_9_cycles_under_mixed_load_lose_nothing_acknowledged() {
    let cycles: u64 = std::env::var("CUSTODIAN_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    crash_cycles(None, cycles).await;
}

/// The same harness on the object backend over `file://`, fewer cycles.
#[tokio::test]
async fn kill_9_cycles_on_the_file_object_backend_lose_nothing_acknowledged() {
    let cycles: u64 = std::env::var("CUSTODIAN_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(15, |n: u64| n.min(15));
    crash_cycles(Some("file"), cycles).await;
}

/// What a restarted object backend must not leave behind: no pending-upload record in its
/// index, no staged object, no partial file of the local store's multipart uploads, and no pack
/// that no committed blob lies in (a batch cut before its commit must lose its pack).
fn assert_no_object_leftovers(data_dir: &Path, objects: &Path, cycle: u64) {
    let db = open_without_pending(&data_dir.join("object-index"), cycle);
    let meta = db.cf_handle("meta").expect("meta");
    let referenced: std::collections::HashSet<String> = db
        .iterator_cf(meta, rocksdb::IteratorMode::Start)
        .filter_map(|item| {
            let (_, value) = item.expect("read meta");
            let len = value[0] as usize;
            let meta = custodian_storage::BlobMeta::decode(&value[1 + len..]).expect("decode meta");
            meta.packed.map(|at| format!("{:016x}", at.pack))
        })
        .collect();
    let mut stack = vec![objects.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.to_string_lossy();
            assert!(
                !name.contains("/staging/") && !name.contains('#'),
                "cycle {cycle}: {name} was left behind"
            );
            if path.parent().and_then(Path::file_name) == Some("packs".as_ref()) {
                let id = entry.file_name().to_string_lossy().into_owned();
                assert!(
                    referenced.contains(&id),
                    "cycle {cycle}: pack {id} holds no committed blob"
                );
            }
        }
    }
}

async fn crash_cycles(storage: Option<&str>, cycles: u64) {
    let dir = tempfile::tempdir().expect("a crash harness step");
    let data_dir = dir.path().join("data");
    let objects = dir.path().join("objects");
    let url = format!("file://{}", objects.display());
    let mut daemon = match storage {
        Some(_) => Daemon::start_with(&data_dir, &["--storage", &url]),
        None => Daemon::start(&data_dir),
    };
    let publisher =
        SignerKey::from_seed("crash-publisher", [21; 32]).expect("a crash harness step");
    let attester = SignerKey::from_seed("crash-attester", [22; 32]).expect("a crash harness step");
    let mut store = daemon.client().await;
    let mut registry = daemon.connect(Some(&daemon.token)).await.registry();
    let base = publish(&mut store, &mut registry, &publisher, "1.0.0")
        .await
        .expect("a crash harness step");
    let manifest: Digest = base
        .version
        .expect("a crash harness step")
        .manifest_digest
        .parse()
        .expect("a crash harness step");
    daemon
        .connect(Some(&daemon.token))
        .await
        .evidence()
        .register_attester(epb::RegisterAttesterRequest {
            verifier_key: attester.verifier().to_string(),
        })
        .await
        .expect("a crash harness step");
    let keys = Arc::new((publisher, attester, manifest));
    let verifier: VerifierKey = {
        let mut log = daemon.connect(None).await.ledger();
        let info = log
            .get_log_info(lpb::GetLogInfoRequest {})
            .await
            .expect("a crash harness step")
            .into_inner();
        VerifierKey::parse(&info.verifier_key).expect("a crash harness step")
    };
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut trusted: Option<Checkpoint> = None;
    let mut rng = Rng(0x5eed);
    let started = std::time::Instant::now();
    for cycle in 0..cycles {
        let tasks = start_writers(&daemon, cycle, &acked, &keys);
        tokio::time::sleep(Duration::from_millis(40 + rng.below(400))).await;
        daemon.kill9();
        for task in tasks {
            task.await.expect("a writer panicked");
        }
        daemon.restart_after_kill9();

        let (blobs, attempted, entries, checkpoints, versions) = {
            let mut a = acked.lock().expect("the record lock");
            (
                a.blobs.clone(),
                std::mem::take(&mut a.attempted),
                a.entries.clone(),
                std::mem::take(&mut a.checkpoints),
                a.versions.clone(),
            )
        };
        let mut client = daemon.client().await;
        // Every acknowledged blob is present...
        let missing = client
            .find_missing(pb::FindMissingRequest {
                digests: blobs.iter().map(|(d, _, _)| d.clone()).collect(),
            })
            .await
            .expect("a crash harness step")
            .into_inner()
            .missing_digests;
        assert!(
            missing.is_empty(),
            "cycle {cycle}: acknowledged blobs lost: {missing:?}"
        );
        // ...and whatever was sent this cycle, acknowledged or not, is either absent or whole:
        // read back in full, its digest verifies.
        for (digest, seed, size) in &attempted {
            match crate::cas::get(&mut client, digest, 0, 0).await {
                Ok((info, bytes)) => {
                    assert_eq!(info.size, *size as u64, "cycle {cycle}: {digest}");
                    assert!(
                        bytes == crate::pattern(*seed, *size),
                        "cycle {cycle}: {digest} is visible but its bytes differ"
                    );
                }
                Err(status) => {
                    assert_eq!(
                        status.code(),
                        tonic::Code::NotFound,
                        "cycle {cycle}: {status:?}"
                    );
                    assert!(
                        !blobs.iter().any(|(d, _, _)| d == digest),
                        "cycle {cycle}: acknowledged {digest} is not found"
                    );
                }
            }
        }

        // The log: its latest checkpoint verifies, every acknowledged entry is in it unchanged,
        // and every checkpoint returned before the crash is consistent with it.
        let mut log = daemon.connect(None).await.ledger();
        let latest = log
            .get_checkpoint(lpb::GetCheckpointRequest { tree_size: None })
            .await
            .expect("a crash harness step")
            .into_inner();
        let latest =
            Checkpoint::open(latest.note.as_bytes(), &verifier).expect("a crash harness step");
        let mut stored = Vec::with_capacity(latest.size as usize);
        let mut stream = log
            .get_entries(lpb::GetEntriesRequest {
                start: 0,
                end: None,
            })
            .await
            .expect("a crash harness step")
            .into_inner();
        while let Some(entry) = stream.next().await {
            stored.push(
                Hash::from_slice(&entry.expect("a crash harness step").leaf_hash)
                    .expect("a crash harness step"),
            );
        }
        assert_eq!(stored.len() as u64, latest.size);
        for (index, leaf) in &entries {
            assert!(
                *index < latest.size,
                "cycle {cycle}: acknowledged entry {index} lost (log size {})",
                latest.size
            );
            assert_eq!(
                stored[*index as usize], *leaf,
                "cycle {cycle}: entry {index} changed"
            );
        }
        let mut seen: Vec<Checkpoint> = checkpoints
            .iter()
            .map(|note| Checkpoint::open(note.as_bytes(), &verifier).expect("a crash harness step"))
            .collect();
        seen.extend(trusted.take());
        seen.sort_by_key(|c| c.size);
        seen.dedup_by_key(|c| c.size);
        for old in &seen {
            crate::ledger::assert_consistent(&mut log, old, &latest, &format!("cycle {cycle}"))
                .await;
        }
        // Published versions are all there, with the root they were acknowledged with.
        let mut registry = daemon.connect(Some(&daemon.token)).await.registry();
        for (version, root) in versions.iter().rev().take(20) {
            let found = registry
                .get_version(rpb::GetVersionRequest {
                    name: PACKAGE.into(),
                    version: version.clone(),
                })
                .await
                .unwrap_or_else(|s| panic!("cycle {cycle}: version {version} lost: {s:?}"))
                .into_inner();
            assert_eq!(&found.root, root, "cycle {cycle}: version {version}");
        }
        eprintln!(
            "crash cycle {cycle}: {} blobs, {} entries, {} versions acknowledged so far; log size {}",
            blobs.len(),
            entries.len(),
            versions.len(),
            latest.size
        );
        // Transitivity: checking each cycle's checkpoints against the recovered one, and that
        // one against the next, covers every checkpoint ever returned.
        trusted = Some(latest);
        // Leftovers are checked with the daemon stopped (RocksDB allows one process); the
        // restart above has already recovered, and nothing has been written since.
        if cycle % 5 == 4 || cycle + 1 == cycles {
            daemon.kill9();
            match storage {
                Some(_) => assert_no_object_leftovers(&data_dir, &objects, cycle),
                None => assert_no_leftovers(&data_dir, cycle),
            }
            daemon.restart_after_kill9();
        }
    }
    // Finally every acknowledged blob is read back in full and its digest verified.
    let mut client = daemon.client().await;
    let blobs = acked.lock().expect("the record lock").blobs.clone();
    for (digest, seed, size) in &blobs {
        let (_, bytes) = crate::cas::get(&mut client, digest, 0, 0)
            .await
            .expect("a crash harness step");
        assert!(bytes == crate::pattern(*seed, *size), "{digest} changed");
    }
    eprintln!(
        "{cycles} crash cycles on {} in {:.1} s: {} blobs and {} entries acknowledged, all intact",
        storage.unwrap_or("rocksdb"),
        started.elapsed().as_secs_f64(),
        blobs.len(),
        acked.lock().expect("the record lock").entries.len()
    );
}
