//! The ContentStore gRPC contract, end to end.

use bytes::Bytes;
use custodian_client::Conn as Authed;
use custodian_core::BlobDigests;
use custodian_proto::cas::v1 as pb;
use custodian_proto::cas::v1::content_store_client::ContentStoreClient;
use futures::StreamExt;
use tonic::Code;

use crate::pattern;
use custodian_testkit::Daemon;

const BLOCK: usize = 1 << 20;

fn header(expected_digest: &str, expected_size: Option<u64>) -> pb::PutRequest {
    pb::PutRequest {
        message: Some(pb::put_request::Message::Header(pb::PutHeader {
            expected_digest: expected_digest.into(),
            expected_size,
        })),
    }
}

fn chunk(data: Bytes) -> pb::PutRequest {
    pb::PutRequest {
        message: Some(pb::put_request::Message::Chunk(data)),
    }
}

/// Puts `data` in 256 KiB messages.
pub async fn put(
    client: &mut ContentStoreClient<Authed>,
    expected_digest: &str,
    expected_size: Option<u64>,
    data: &Bytes,
) -> Result<pb::PutResponse, tonic::Status> {
    let mut messages = vec![header(expected_digest, expected_size)];
    let mut at = 0;
    while at < data.len() {
        let end = (at + 256 * 1024).min(data.len());
        messages.push(chunk(data.slice(at..end)));
        at = end;
    }
    client
        .put(futures::stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

/// Reads a range; returns the metadata and the bytes.
pub async fn get(
    client: &mut ContentStoreClient<Authed>,
    digest: &str,
    offset: u64,
    limit: u64,
) -> Result<(pb::BlobInfo, Vec<u8>), tonic::Status> {
    let mut stream = client
        .get(pb::GetRequest {
            digest: digest.into(),
            offset,
            limit,
        })
        .await?
        .into_inner();
    let mut info = None;
    let mut data = Vec::new();
    while let Some(message) = stream.message().await? {
        if let Some(blob) = message.blob {
            assert!(info.is_none(), "blob metadata sent twice");
            info = Some(blob);
        }
        data.extend_from_slice(&message.data);
    }
    Ok((info.expect("first message carries metadata"), data))
}

/// A Put whose request stream stays open: the header and a first chunk are sent, and the
/// caller decides what happens next (more chunks, a disconnect, a daemon crash).
pub struct OpenUpload {
    /// Sends further messages; dropping it ends the request stream.
    pub tx: tokio::sync::mpsc::Sender<pb::PutRequest>,
    /// The call's eventual result.
    pub call: tokio::task::JoinHandle<Result<tonic::Response<pb::PutResponse>, tonic::Status>>,
}

impl OpenUpload {
    /// Starts a Put with `header` and sends `first` as its first chunk.
    pub async fn start(
        mut client: ContentStoreClient<Authed>,
        header: pb::PutHeader,
        first: Bytes,
    ) -> OpenUpload {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        for message in [
            pb::put_request::Message::Header(header),
            pb::put_request::Message::Chunk(first),
        ] {
            tx.send(pb::PutRequest {
                message: Some(message),
            })
            .await
            .expect("queue a Put message");
        }
        let call = tokio::spawn(async move {
            client
                .put(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        OpenUpload { tx, call }
    }

    /// Sends the next chunk.
    pub async fn send(&self, data: Bytes) {
        self.tx.send(chunk(data)).await.expect("queue a Put chunk");
    }
}

/// Asserts that the blob is not in custody under either of its digests.
pub async fn assert_absent(client: &mut ContentStoreClient<Authed>, digests: &BlobDigests) {
    for digest in [digests.sha256, digests.blake3] {
        let status = client
            .stat(pb::StatRequest {
                digest: digest.to_string(),
            })
            .await
            .expect_err("the blob must not be in custody");
        assert_eq!(status.code(), Code::NotFound, "{digest}");
    }
}

#[tokio::test]
async fn round_trip_at_block_boundaries_with_both_digests() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let mut client = daemon.client().await;
    for (i, size) in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 77]
        .into_iter()
        .enumerate()
    {
        let data = pattern(i as u64, size);
        let digests = BlobDigests::of(&data);
        let response = put(
            &mut client,
            &digests.sha256.to_string(),
            Some(size as u64),
            &data,
        )
        .await
        .unwrap();
        let blob = response.blob.unwrap();
        assert_eq!(blob.sha256, digests.sha256.to_string());
        assert_eq!(blob.blake3, digests.blake3.to_string());
        assert_eq!(blob.size, size as u64);
        assert!(!response.already_present);
        for digest in [&blob.sha256, &blob.blake3] {
            let (info, back) = get(&mut client, digest, 0, 0).await.unwrap();
            assert_eq!(info, blob);
            assert!(back == data, "{size} bytes by {digest} did not round-trip");
        }
    }
}

#[tokio::test]
async fn wrong_digest_or_size_is_invalid_argument_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let mut client = daemon.client().await;
    let data = pattern(1, 2 * BLOCK + 5);
    let actual = BlobDigests::of(&data);
    let wrong = BlobDigests::of(b"other").sha256.to_string();

    let status = put(&mut client, &wrong, None, &data).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains(&wrong), "{}", status.message());
    assert!(
        status.message().contains(&actual.sha256.to_string()),
        "{}",
        status.message()
    );

    let len = data.len() as u64;
    for declared in [len - 1, len + 1] {
        let status = put(&mut client, "", Some(declared), &data)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains(&declared.to_string()),
            "{}",
            status.message()
        );
    }

    for digest in [
        &wrong,
        &actual.sha256.to_string(),
        &actual.blake3.to_string(),
    ] {
        let status = client
            .stat(pb::StatRequest {
                digest: digest.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{digest} must not be stored");
    }
}

#[tokio::test]
async fn malformed_and_unknown_digests() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let mut client = daemon.client().await;

    for bad in [
        "",
        "sha256:abc",
        "SHA256:00",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
    ] {
        let status = client
            .stat(pb::StatRequest { digest: bad.into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        assert!(status.message().contains("digest"), "{}", status.message());
        if !bad.is_empty() {
            assert!(
                status.message().contains(bad),
                "message names the value: {}",
                status.message()
            );
        }
        let status = get(&mut client, bad, 0, 0).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
    }
    let status = put(&mut client, "blake3:xyz", None, &Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("header.expected_digest"),
        "{}",
        status.message()
    );

    let unknown = BlobDigests::of(b"never stored");
    for digest in [unknown.sha256, unknown.blake3] {
        let status = get(&mut client, &digest.to_string(), 0, 0)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains(&digest.to_string()));
    }
    let status = client
        .find_missing(pb::FindMissingRequest {
            digests: vec![unknown.sha256.to_string(), "nope".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("digests[1]"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_chunk_before_the_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let mut client = daemon.client().await;
    let status = client
        .put(futures::stream::iter(vec![chunk(Bytes::from_static(
            b"data",
        ))]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("header"), "{}", status.message());
}

/// A fresh daemon holding one blob of `size` pattern bytes: its folder (kept while the daemon
/// runs), the daemon, the bytes and their sha256 digest.
async fn daemon_with_blob(seed: u64, size: usize) -> (tempfile::TempDir, Daemon, Bytes, String) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let daemon = Daemon::start(dir.path());
    let mut client = daemon.client().await;
    let data = pattern(seed, size);
    let digest = put(&mut client, "", None, &data)
        .await
        .expect("the put")
        .blob
        .expect("the put's metadata")
        .sha256;
    (dir, daemon, data, digest)
}

#[tokio::test]
async fn ranged_reads_at_every_boundary() {
    let size = 2 * BLOCK + 3;
    let (_dir, daemon, data, digest) = daemon_with_blob(9, size).await;
    let mut client = daemon.client().await;
    let b = BLOCK as u64;
    let s = size as u64;
    for offset in [0, 1, b - 1, b, b + 1, 2 * b, s - 1, s] {
        for limit in [0, 1, b - 1, b, b + 1, s + 10] {
            let (_, got) = get(&mut client, &digest, offset, limit).await.unwrap();
            let end = if limit == 0 {
                s
            } else {
                (offset + limit).min(s)
            };
            assert!(
                got[..] == data[offset as usize..end as usize],
                "offset {offset} limit {limit}"
            );
        }
    }
    let status = get(&mut client, &digest, s + 1, 0).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(
        status.message().contains(&(s + 1).to_string()),
        "{}",
        status.message()
    );
}

/// The daemon frames `Get` itself (grpc/cas_get.rs): grpcio (PyPI), a gRPC stack nobody here
/// wrote, reads a multi-block blob and a range of it, with the metadata in the first message
/// only, and the refusal of an absent digest with its code and message.
#[tokio::test]
async fn grpcio_reads_a_blob_and_a_refusal() {
    let size = 3 * BLOCK + 17;
    let (_dir, daemon, data, digest) = daemon_with_blob(11, size).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/grpc_get.py");
    let address = daemon.address.trim_start_matches("http://").to_string();
    let read = |offset: usize, limit: usize| {
        let out = crate::run_ok(
            std::process::Command::new(crate::registry::python())
                .arg(&script)
                .args([&address, &daemon.token, &digest])
                .args([offset.to_string(), limit.to_string()]),
        );
        let report: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        report
    };
    let whole = read(0, 0);
    assert_eq!(whole["data"], size, "{whole}");
    assert_eq!(whole["data_sha256"], digest, "{whole}");
    assert_eq!(whole["metadata_in"], serde_json::json!([0]), "{whole}");
    assert_eq!(whole["metadata_sha256"], digest, "{whole}");
    assert_eq!(whole["metadata_size"], size, "{whole}");
    assert!(whole["messages"].as_u64().unwrap() > 3, "{whole}");
    assert_eq!(whole["absent"]["code"], "NOT_FOUND", "{whole}");
    assert!(
        whole["absent"]["details"]
            .as_str()
            .unwrap()
            .contains("not found"),
        "{whole}"
    );

    let (offset, limit) = (BLOCK - 5, BLOCK + 9);
    let range = read(offset, limit);
    let expected = custodian_core::Digest::of(
        custodian_core::Algorithm::Sha256,
        &data[offset..offset + limit],
    );
    assert_eq!(range["data"], limit, "{range}");
    assert_eq!(range["data_sha256"], expected.to_string(), "{range}");
}

#[tokio::test]
async fn grpcio_uploads_through_put_write_upload_and_batch_put() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/grpc_put.py");
    let address = daemon.address.trim_start_matches("http://").to_string();
    let out = crate::run_ok(
        std::process::Command::new(crate::registry::python())
            .arg(&script)
            .args([&address, &daemon.token]),
    );
    let report: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    for upload in ["put", "write_upload"] {
        let answered = &report[upload];
        assert_eq!(answered["sha256"], answered["sent"], "{report}");
        assert!(answered["size"].as_u64().unwrap() > 2 << 20, "{report}");
    }
    assert_eq!(
        report["write_upload"]["committed_size"], report["write_upload"]["size"],
        "{report}"
    );
    // Each blob is in custody, and reads back as sent.
    let mut client = daemon.client().await;
    for upload in ["put", "write_upload"] {
        let digest = report[upload]["sha256"].as_str().unwrap().to_string();
        let (_, read) = get(&mut client, &digest, 0, 0).await.unwrap();
        assert_eq!(
            custodian_core::Digest::of(custodian_core::Algorithm::Sha256, &read).to_string(),
            digest
        );
    }
    assert_eq!(report["refused"]["code"], "INVALID_ARGUMENT", "{report}");
    assert!(
        report["refused"]["details"]
            .as_str()
            .unwrap()
            .contains("must be a header"),
        "{report}"
    );
    // The batch: every item but the one whose declared digest is false is stored as sent, and
    // that one fails alone (INVALID_ARGUMENT), naming the digest its bytes have.
    assert_eq!(report["batch_put"]["results"], 300, "{report}");
    assert_eq!(report["batch_put"]["stored_as_sent"], 299, "{report}");
    assert_eq!(report["batch_put"]["wrong"]["code"], 3, "{report}");
    let message = report["batch_put"]["wrong"]["message"].as_str().unwrap();
    let actual = report["find_missing"]["expected"][1].as_str().unwrap();
    assert!(
        message.contains("digest mismatch") && message.contains(actual),
        "{report}"
    );
    assert_eq!(
        report["find_missing"]["answered"], report["find_missing"]["expected"],
        "{report}"
    );
    assert_eq!(
        report["find_missing_refused"]["code"], "INVALID_ARGUMENT",
        "{report}"
    );
    assert!(
        report["find_missing_refused"]["details"]
            .as_str()
            .unwrap()
            .contains("digests[1]"),
        "{report}"
    );
}

#[tokio::test]
async fn concurrent_puts_of_the_same_blob_store_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let data = pattern(3, 5 * BLOCK + 1);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut client = daemon.client().await;
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            put(&mut client, "", None, &data).await
        }));
    }
    let mut fresh = 0;
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        fresh += usize::from(!response.already_present);
    }
    assert_eq!(
        fresh, 1,
        "exactly one of the concurrent puts stored the blob"
    );
}

#[tokio::test]
async fn disconnecting_mid_upload_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let data = pattern(4, 4 * BLOCK);
    let digests = BlobDigests::of(&data);
    let upload = OpenUpload::start(
        daemon.client().await,
        pb::PutHeader::default(),
        data.slice(..2 * BLOCK + 3),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Dropping the call drops the connection, as a client crash would.
    upload.call.abort();
    let _ = upload.call.await;
    drop(upload.tx);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut client = daemon.client().await;
    assert_absent(&mut client, &digests).await;
    // The same blob uploads normally afterwards.
    let response = put(&mut client, &digests.sha256.to_string(), None, &data)
        .await
        .unwrap();
    assert!(!response.already_present);
}

#[tokio::test]
async fn batch_calls_capabilities_and_find_missing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let mut client = daemon.client().await;
    let caps = client
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.backend, "rocksdb");
    assert_eq!(caps.digest_algorithms, vec!["sha256", "blake3"]);
    assert!(caps.max_batch_total_size_bytes >= 1 << 20);

    let blobs: Vec<Bytes> = (0..100).map(|i| pattern(1000 + i, 4096)).collect();
    let mut items: Vec<pb::BatchPutItem> = blobs
        .iter()
        .map(|data| pb::BatchPutItem {
            expected_digest: String::new(),
            data: data.clone(),
        })
        .collect();
    // One item with a wrong expected digest fails alone.
    items[7].expected_digest = BlobDigests::of(b"wrong").sha256.to_string();
    // So do items whose expected digest does not parse, each named in its error; the items
    // around them are put and answered in their places.
    items[3].expected_digest = "sha256:not-hex".into();
    items[64].expected_digest = "md5:d41d8cd98f00b204e9800998ecf8427e".into();
    let results = client
        .batch_put(pb::BatchPutRequest { items })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 100);
    for (i, result) in results.iter().enumerate() {
        if i == 7 {
            let error = result.error.as_ref().expect("item 7 fails");
            assert_eq!(error.code, Code::InvalidArgument as i32);
        } else if i == 3 || i == 64 {
            let error = result
                .error
                .as_ref()
                .expect("an unparsable digest fails its item");
            assert_eq!(error.code, Code::InvalidArgument as i32);
            assert!(
                error
                    .message
                    .contains(&format!("items[{i}].expected_digest")),
                "item {i}: {}",
                error.message
            );
            assert!(result.blob.is_none());
        } else {
            assert!(result.error.is_none(), "item {i}: {:?}", result.error);
            assert_eq!(
                result.blob.as_ref().unwrap().sha256,
                BlobDigests::of(&blobs[i]).sha256.to_string()
            );
        }
    }

    let mut query: Vec<String> = blobs
        .iter()
        .map(|b| BlobDigests::of(b).blake3.to_string())
        .collect();
    let missing = client
        .find_missing(pb::FindMissingRequest {
            digests: query.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .missing_digests;
    assert_eq!(
        missing,
        vec![query[3].clone(), query[7].clone(), query[64].clone()]
    );

    query.truncate(10);
    query.push(BlobDigests::of(b"absent").sha256.to_string());
    let results = client
        .batch_get(pb::BatchGetRequest {
            digests: query.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.digest, query[i]);
        match i {
            3 | 7 | 10 => assert_eq!(result.error.as_ref().unwrap().code, Code::NotFound as i32),
            _ => assert!(result.data == blobs[i], "batch get item {i}"),
        }
    }

    let oversized = vec![pb::BatchPutItem {
        expected_digest: String::new(),
        data: pattern(5, caps.max_batch_total_size_bytes as usize + 1),
    }];
    let status = client
        .batch_put(pb::BatchPutRequest { items: oversized })
        .await
        .unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::InvalidArgument | Code::ResourceExhausted
        ),
        "{status:?}"
    );
}

#[tokio::test]
async fn health_and_reflection_answer() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let channel = daemon.channel().await;

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in [
        "custodian.cas.v1.ContentStore",
        "custodian.ledger.v1.Ledger",
    ] {
        let response = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"custodian.cas.v1.ContentStore"),
        "{names:?}"
    );
    assert!(names.contains(&"custodian.ledger.v1.Ledger"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    // Older clients speak v1alpha; it must answer too.
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    let mut alpha = AlphaClient::new(daemon.channel().await);
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let mut responses = alpha
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(AlphaResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected v1alpha reflection answer {response:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "custodian.cas.v1.ContentStore")
    );
}

/// Checks that the daemon runs on `backend`, puts a blob of three blocks and a few bytes (from
/// `seed`) without a declared digest and reads it back by BLAKE3; returns `Put`'s answer and
/// the bytes.
async fn round_trip_on(
    client: &mut ContentStoreClient<Authed>,
    backend: &str,
    seed: u64,
) -> (pb::BlobInfo, Bytes) {
    let caps = client
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await
        .expect("capabilities")
        .into_inner();
    assert_eq!(caps.backend, backend);
    let data = pattern(seed, 3 * BLOCK + 11);
    let blob = put(client, "", None, &data)
        .await
        .expect("a put")
        .blob
        .expect("the put's blob");
    let (_, back) = get(client, &blob.blake3, 0, 0).await.expect("a get");
    assert!(back == data);
    (blob, data)
}

#[tokio::test]
async fn file_backend_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("objects").display());
    let daemon = Daemon::start_with(&dir.path().join("state"), &["--storage", &url]);
    let mut client = daemon.client().await;
    let (blob, data) = round_trip_on(&mut client, "file", 77).await;
    let hex = blob.sha256.strip_prefix("sha256:").unwrap();
    let object = dir
        .path()
        .join("objects/blobs/sha256")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(hex);
    assert_eq!(
        std::fs::read(object).unwrap(),
        data,
        "object holds the blob's bytes as they are"
    );
}

/// The daemon on Azure Blob Storage (Azurite on loopback): blobs put over gRPC and by the CLI
/// (a multi-part upload) read back, survive a crash, and once damaged in the container are
/// refused as data loss, never served.
#[tokio::test(flavor = "multi_thread")]
async fn azure_backend_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let azurite = custodian_testkit::Azurite::start("custodian-e2e");
    let args = custodian_testkit::storage_args("az://custodian-e2e/store", &azurite.options());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = Daemon::start_with(&dir.path().join("state"), &args);
    let mut client = daemon.client().await;
    let (blob, data) = round_trip_on(&mut client, "azure", 79).await;

    // 20 MiB through the CLI: three 8 MiB parts of one multi-part upload.
    let large = pattern(80, 20 << 20);
    let input = dir.path().join("large.bin");
    std::fs::write(&input, &large).unwrap();
    let output = daemon.cli(&["blob", "put", "--json", input.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let large_sha256 = BlobDigests::of(&large).sha256.to_string();
    assert!(String::from_utf8_lossy(&output.stdout).contains(&large_sha256));

    // Both survive a crash: the index is synced before a put is acknowledged.
    daemon.restart_after_kill9();
    let out = dir.path().join("large-back.bin");
    let output = daemon.cli(&["blob", "get", &large_sha256, "-o", out.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(std::fs::read(&out).unwrap() == large);
    let mut client = daemon.client().await;
    let (_, back) = get(&mut client, &blob.sha256, 0, 0).await.unwrap();
    assert!(back == data);

    // One bit flipped in the container, behind the daemon's back.
    let hex = blob.sha256.strip_prefix("sha256:").unwrap();
    let name = format!("store/blobs/sha256/{}/{}/{hex}", &hex[..2], &hex[2..4]);
    assert_eq!(
        azurite.list("custodian-e2e", &name),
        std::slice::from_ref(&name),
        "the blob is an object at the documented key"
    );
    let mut damaged = data.to_vec();
    damaged[BLOCK + 10] ^= 0x01;
    azurite.overwrite("custodian-e2e", &name, &damaged);
    refused_as_data_loss(&daemon, &mut client, &blob.sha256, dir.path()).await;
}

#[tokio::test]
async fn a_corrupted_blob_is_data_loss_never_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("objects").display());
    let daemon = Daemon::start_with(&dir.path().join("state"), &["--storage", &url]);
    let mut client = daemon.client().await;
    let data = pattern(78, 3 * BLOCK);
    let blob = put(&mut client, "", None, &data)
        .await
        .unwrap()
        .blob
        .unwrap();
    let hex = blob.sha256.strip_prefix("sha256:").unwrap();
    let object = dir
        .path()
        .join("objects/blobs/sha256")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(hex);
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[BLOCK + 10] ^= 0x01;
    std::fs::write(&object, bytes).unwrap();

    refused_as_data_loss(&daemon, &mut client, &blob.sha256, dir.path()).await;
}

/// A damaged blob is refused: `Get` answers `DATA_LOSS` naming the digest, and the CLI fails
/// with "data loss" and leaves no file behind in `dir`.
async fn refused_as_data_loss(
    daemon: &Daemon,
    client: &mut ContentStoreClient<Authed>,
    sha256: &str,
    dir: &std::path::Path,
) {
    let status = get(client, sha256, 0, 0)
        .await
        .expect_err("a damaged blob is refused");
    assert_eq!(status.code(), Code::DataLoss);
    assert!(status.message().contains(sha256), "{}", status.message());
    let out = dir.join("damaged.bin");
    let output = daemon.cli(&["blob", "get", sha256, "-o", &out.display().to_string()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("data loss"));
    assert!(!out.exists());
}
