//! What survives `kill -9`, and what a graceful stop does.

use std::time::Duration;

use bytes::Bytes;
use custodian_core::BlobDigests;
use custodian_proto::cas::v1 as pb;

use crate::cas::{OpenUpload, assert_absent, get, put};
use crate::daemon::Daemon;
use crate::pattern;

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
