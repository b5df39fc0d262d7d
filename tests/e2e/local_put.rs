//! The local put socket (docs/api.md, "Local puts"): the daemon reads a file the client hands it,
//! verifies and commits it as `Put` would, and refuses everything else with `Put`'s status codes,
//! keeping nothing.

use std::io::{IoSlice, Read as _, Seek as _, SeekFrom, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd as _, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use custodian_core::BlobDigests;
use custodian_proto::cas::v1 as pb;
use custodian_proto::local_put::MAX_REQUEST_FRAME;
use custodian_testkit::{Daemon, Proxy, binary};
use prost::Message as _;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use tonic::Code;

use crate::pattern;
use crate::resumable::has_data_pack;

/// The socket a daemon announces in its capabilities, and the instance value requests repeat.
struct Announced {
    path: PathBuf,
    instance: String,
}

async fn announced_socket(daemon: &Daemon) -> Announced {
    let capabilities = daemon
        .client()
        .await
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await
        .expect("capabilities")
        .into_inner();
    assert!(
        !capabilities.local_put_socket.is_empty() && capabilities.local_put_instance.len() == 32,
        "the daemon announces no local put socket, or no instance: {capabilities:?}"
    );
    Announced {
        path: PathBuf::from(capabilities.local_put_socket),
        instance: capabilities.local_put_instance,
    }
}

fn request(
    to: &Announced,
    expected_digest: &str,
    expected_size: Option<u64>,
    token: Option<&str>,
) -> Vec<u8> {
    custodian_proto::local_put::frame(&put_request(to, expected_digest, expected_size, token))
}

/// A put request to `to` with the given declarations and token.
fn put_request(
    to: &Announced,
    expected_digest: &str,
    expected_size: Option<u64>,
    token: Option<&str>,
) -> pb::LocalPutRequest {
    pb::LocalPutRequest {
        expected_digest: expected_digest.into(),
        expected_size,
        authorization: token.map(|t| format!("Bearer {t}")).unwrap_or_default(),
        instance: to.instance.clone(),
        data_pack: None,
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

/// Sends `frame` with `fds` attached, then reads every reply frame until the daemon closes.
fn exchange(to: &Announced, frame: &[u8], fds: &[BorrowedFd<'_>]) -> Vec<pb::LocalPutReply> {
    let mut stream = UnixStream::connect(&to.path).expect("connect to the local put socket");
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    let sent = rustix::net::sendmsg(
        &stream,
        &[IoSlice::new(frame)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .expect("sendmsg");
    // A daemon that refused the frame's head may have closed already.
    let _ = stream.write_all(&frame[sent..]);
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the replies");
    let mut replies = Vec::new();
    let mut rest = &answer[..];
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().expect("a 4-byte length")) as usize;
        replies.push(pb::LocalPutReply::decode(&rest[4..4 + len]).expect("a LocalPutReply"));
        rest = &rest[4 + len..];
    }
    replies
}

/// The one error a refused request gets: its code and message.
fn refusal(replies: &[pb::LocalPutReply]) -> (Code, String) {
    match replies {
        [
            pb::LocalPutReply {
                message: Some(pb::local_put_reply::Message::Error(error)),
            },
        ] => (Code::from(error.code), error.message.clone()),
        other => panic!("expected one error reply, got {other:?}"),
    }
}

async fn stored(daemon: &Daemon, digest: &str) -> bool {
    match daemon
        .client()
        .await
        .stat(pb::StatRequest {
            digest: digest.into(),
        })
        .await
    {
        Ok(_) => true,
        Err(status) if status.code() == Code::NotFound => false,
        Err(status) => panic!("stat {digest}: {status}"),
    }
}

/// Runs `command` (a CLI command with `--json`), requires it to succeed and returns its output.
fn json_output(command: &mut Command) -> serde_json::Value {
    let output = command.output().expect("run the CLI");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json output")
}

/// A file that grows while the daemon reads it: 64 KiB appended every millisecond until
/// stopped, 16 MiB at most, so that any read of it reaches an end however slowly the store
/// takes the bytes (a hash at hundreds of MiB a second has long caught up by then).
struct Growing {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    appender: std::thread::JoinHandle<()>,
}

impl Growing {
    fn start(path: &Path) -> Growing {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let appender = {
            let (done, path) = (done.clone(), path.to_path_buf());
            std::thread::spawn(move || {
                let mut out = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .expect("open the file to append to it");
                let chunk = vec![7u8; 64 << 10];
                for _ in 0..256 {
                    if done.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    out.write_all(&chunk).expect("append to the file");
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        Growing { done, appender }
    }

    fn stop(self) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        self.appender.join().expect("the appending thread");
    }
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write the file");
    path
}

#[tokio::test]
async fn a_local_put_reads_the_whole_file_verifies_it_and_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"));
    let socket = announced_socket(&daemon).await;
    // Past one progress report (every 64 MiB), not a whole number of blocks.
    let data = pattern(7, (80 << 20) + 12_345);
    let digests = BlobDigests::of(&data);
    let path = write_file(dir.path(), "pack.bin", &data);
    let mut file = std::fs::File::open(&path).unwrap();
    // The daemon reads from offset 0 whatever the descriptor's own position.
    file.seek(SeekFrom::Start(1 << 20)).unwrap();
    let replies = exchange(
        &socket,
        &request(
            &socket,
            &digests.sha256.to_string(),
            Some(data.len() as u64),
            Some(&daemon.token),
        ),
        &[file.as_fd()],
    );
    let (last, progress) = replies.split_last().expect("replies");
    assert!(
        !progress.is_empty()
            && progress.iter().all(|reply| matches!(
                reply.message,
                Some(pb::local_put_reply::Message::ProgressBytes(n)) if n > 0 && n <= data.len() as u64
            )),
        "progress frames before the outcome: {progress:?}"
    );
    let Some(pb::local_put_reply::Message::Done(done)) = &last.message else {
        panic!("the last reply is not the outcome: {last:?}");
    };
    let blob = done.blob.as_ref().expect("blob info");
    assert_eq!(blob.sha256, digests.sha256.to_string());
    assert_eq!(blob.blake3, digests.blake3.to_string());
    assert_eq!(blob.size, data.len() as u64);
    assert!(!done.already_present);
    assert!(stored(&daemon, &digests.blake3.to_string()).await);

    // A second put of the same bytes is verified again and answered as already present.
    let replies = exchange(
        &socket,
        &request(&socket, "", None, Some(&daemon.token)),
        &[file.as_fd()],
    );
    match replies.last().and_then(|r| r.message.as_ref()) {
        Some(pb::local_put_reply::Message::Done(done)) => assert!(done.already_present),
        other => panic!("expected the outcome, got {other:?}"),
    }
}

/// On a store that stages an upload of unknown digest and then copies it to its key (S3), a
/// local put reads the file twice instead: once for its SHA-256, then straight to the blob's
/// key; and `custodian blob put --no-local-put`, told so by `GetCapabilities`, hashes the file
/// before it streams it. S3 shows which: an object completed from a multipart upload has an
/// ETag that counts its parts, a `CopyObject`'s counts none. The same size streamed over `Put`
/// without a digest is still staged and copied, so the check tells the two apart.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_put_into_s3_learns_its_digest_first_and_is_never_copied() {
    use object_store::ObjectStoreExt as _;
    let dir = tempfile::tempdir().unwrap();
    let moto = custodian_testkit::Moto::start("custodian-local");
    let args = custodian_testkit::storage_args("s3://custodian-local/store", &moto.options());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start_with(&dir.path().join("data"), &args);
    let socket = announced_socket(&daemon).await;
    // Three of the daemon's 8 MiB parts each.
    let (local, streamed, cli) = (
        pattern(13, 20 << 20),
        pattern(14, 20 << 20),
        pattern(16, 20 << 20),
    );
    let path = write_file(dir.path(), "local.bin", &local);
    let file = std::fs::File::open(&path).unwrap();
    let replies = exchange(
        &socket,
        &request(&socket, "", None, Some(&daemon.token)),
        &[file.as_fd()],
    );
    let Some(pb::local_put_reply::Message::Done(done)) =
        replies.last().and_then(|r| r.message.clone())
    else {
        panic!("no outcome: {replies:?}");
    };
    let local_sha256 = BlobDigests::of(&local).sha256;
    assert_eq!(done.blob.expect("blob").sha256, local_sha256.to_string());
    let mut client = daemon.client().await;
    let capabilities = client
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await
        .expect("capabilities")
        .into_inner();
    assert!(capabilities.undeclared_uploads_copied);
    let put = crate::cas::put(&mut client, "", None, &streamed)
        .await
        .expect("a streamed put");
    assert_eq!(
        put.blob.expect("blob").sha256,
        BlobDigests::of(&streamed).sha256.to_string()
    );

    let cli_path = write_file(dir.path(), "cli.bin", &cli);
    let output = daemon.cli(&[
        "blob",
        "put",
        "--no-local-put",
        &cli_path.display().to_string(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (bucket, _, _) =
        custodian_object::build_store("s3://custodian-local", &moto.options()).expect("s3");
    let mut etags = Vec::new();
    for data in [&local, &streamed, &cli] {
        let hex = BlobDigests::of(data).sha256.hex();
        let key = format!("store/blobs/sha256/{}/{}/{hex}", &hex[..2], &hex[2..4]);
        let meta = bucket
            .head(&object_store::path::Path::from(key))
            .await
            .expect("the blob's object");
        etags.push(meta.e_tag.expect("an ETag"));
    }
    assert!(
        etags[0].ends_with("-3\""),
        "the local put was written as its own multipart upload: {etags:?}"
    );
    assert!(
        !etags[1].contains('-'),
        "the streamed put was staged and copied: {etags:?}"
    );
    assert!(
        etags[2].ends_with("-3\""),
        "the CLI declared the file's digest, so it was written as its own upload: {etags:?}"
    );

    // A file that grows while it is read hashes to one digest and uploads as another: refused,
    // and nothing is kept.
    let path = write_file(dir.path(), "growing.bin", &pattern(15, 16 << 20));
    let file = std::fs::File::open(&path).unwrap();
    let growing = Growing::start(&path);
    let replies = exchange(
        &socket,
        &request(&socket, "", None, Some(&daemon.token)),
        &[file.as_fd()],
    );
    growing.stop();
    let (code, message) = refusal(&replies);
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert!(
        message.contains("changed while the daemon read it"),
        "{message}"
    );
    let objects: Vec<_> = futures::StreamExt::collect::<Vec<_>>(
        bucket.list(Some(&object_store::path::Path::from("store"))),
    )
    .await;
    assert_eq!(
        objects.len(),
        3,
        "only the three blobs put before are in the bucket: {objects:?}"
    );
}

/// A refused request: what it is, its frame, its descriptors, the code and a word the message
/// must contain.
type Case<'a> = (&'a str, Vec<u8>, Vec<BorrowedFd<'a>>, Code, &'a str);

#[tokio::test]
async fn a_local_put_refuses_what_put_refuses_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"));
    let socket = announced_socket(&daemon).await;
    let data = pattern(8, 3 << 20);
    let digests = BlobDigests::of(&data);
    let path = write_file(dir.path(), "blob.bin", &data);
    let file = std::fs::File::open(&path).unwrap();
    let token = Some(daemon.token.as_str());
    let sha = digests.sha256.to_string();
    let wrong = BlobDigests::of(b"other bytes").sha256.to_string();
    let reader = daemon.create_token("reader", "read", "*");
    let directory = std::fs::File::open(dir.path()).unwrap();
    let write_only = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let path_only = rustix::fs::open(
        &path,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();

    let too_long = format!("at most {MAX_REQUEST_FRAME}");
    let cases: Vec<Case<'_>> = vec![
        (
            "no token",
            request(&socket, &sha, None, None),
            vec![file.as_fd()],
            Code::Unauthenticated,
            "publish scope",
        ),
        (
            "a token without the publish scope",
            request(&socket, &sha, None, Some(&reader)),
            vec![file.as_fd()],
            Code::PermissionDenied,
            "no publish scope",
        ),
        (
            "a directory",
            request(&socket, &sha, None, token),
            vec![directory.as_fd()],
            Code::InvalidArgument,
            "a directory",
        ),
        (
            "a descriptor open for writing only",
            request(&socket, &sha, None, token),
            vec![write_only.as_fd()],
            Code::InvalidArgument,
            "for writing only",
        ),
        (
            "a descriptor opened with O_PATH",
            request(&socket, &sha, None, token),
            vec![path_only.as_fd()],
            Code::InvalidArgument,
            "O_PATH",
        ),
        (
            "another digest declared",
            request(&socket, &wrong, None, token),
            vec![file.as_fd()],
            Code::InvalidArgument,
            &wrong,
        ),
        (
            "another size declared",
            request(&socket, &sha, Some(data.len() as u64 - 1), token),
            vec![file.as_fd()],
            Code::InvalidArgument,
            "size",
        ),
        (
            "a digest that does not parse",
            request(&socket, "sha256:xyz", None, token),
            vec![file.as_fd()],
            Code::InvalidArgument,
            "expected_digest",
        ),
        (
            "no descriptor",
            request(&socket, &sha, None, token),
            vec![],
            Code::InvalidArgument,
            "exactly one file descriptor",
        ),
        (
            "two descriptors",
            request(&socket, &sha, None, token),
            vec![file.as_fd(), file.as_fd()],
            Code::InvalidArgument,
            "exactly one file descriptor",
        ),
        (
            "a frame too long",
            frame(&vec![0u8; MAX_REQUEST_FRAME + 1]),
            vec![file.as_fd()],
            Code::InvalidArgument,
            &too_long,
        ),
        (
            "a frame that is not a request",
            frame(&[0xff, 0xff, 0xff]),
            vec![file.as_fd()],
            Code::InvalidArgument,
            "not a LocalPutRequest",
        ),
    ];
    for (what, frame, fds, code, names) in cases {
        let (got, message) = refusal(&exchange(&socket, &frame, &fds));
        assert_eq!(got, code, "{what}: {message}");
        assert!(
            message.contains(names),
            "{what}: the message {message:?} does not name {names:?}"
        );
    }

    // A request meant for another daemon (as through a tunnel to a daemon elsewhere whose
    // socket has this path) is turned away before anything else is looked at.
    let elsewhere = Announced {
        path: socket.path.clone(),
        instance: "0".repeat(32),
    };
    let replies = exchange(
        &socket,
        &request(&elsewhere, &sha, None, token),
        &[file.as_fd()],
    );
    match &replies[..] {
        [
            pb::LocalPutReply {
                message: Some(pb::local_put_reply::Message::OtherDaemon(theirs)),
            },
        ] => assert_eq!(theirs, &socket.instance),
        other => panic!("expected the other-daemon reply, got {other:?}"),
    }

    assert!(
        !stored(&daemon, &sha).await,
        "a refused local put left the blob in custody"
    );
}

/// The CLI hands a daemon on this machine the file: through a proxy that counts what the gRPC
/// connection carries, a local put sends a few hundred bytes and `--no-local-put` the whole file.
#[tokio::test]
async fn the_cli_hands_a_local_daemon_the_file_and_streams_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(&dir.path().join("data"));
    let proxy = Proxy::start(&daemon.address).unwrap();
    let data = pattern(9, 16 << 20);
    let digests = BlobDigests::of(&data);
    let path = write_file(dir.path(), "model.bin", &data);
    let token = daemon.token.clone();
    let put = |extra: &[&str]| {
        let lines = json_output(
            Command::new(binary())
                .args(["blob", "put", "--json"])
                .args(extra)
                .arg(&path)
                .env("CUSTODIAN_SERVER", proxy.url())
                .env("CUSTODIAN_TOKEN", &token)
                .env("CUSTODIAN_STATE_DIR", dir.path().join("state")),
        );
        assert_eq!(lines[0]["sha256"], digests.sha256.to_string());
        lines[0]["already_present"].as_bool().unwrap()
    };

    assert!(!put(&[]), "the first put stores the blob");
    let local_bytes = proxy.sent();
    assert!(
        local_bytes < 64 << 10,
        "a local put sent {local_bytes} bytes over gRPC"
    );
    assert!(put(&["--no-local-put"]), "the second put finds it stored");
    assert!(
        proxy.sent() - local_bytes >= data.len() as u64,
        "--no-local-put did not stream the file"
    );

    // After kill -9 the daemon replaces the socket file it left behind.
    daemon.restart_after_kill9();
    proxy.set_upstream(&daemon.address).unwrap();
    let before = proxy.sent();
    assert!(put(&[]), "the put after the restart finds the blob");
    assert!(proxy.sent() - before < 64 << 10);
}

/// A daemon reached over loopback whose announced socket path holds another daemon's socket
/// (as when a daemon elsewhere is reached through a tunnel and a daemon here has the same data
/// directory path): the other daemon turns the request away and the CLI streams to the right one.
#[tokio::test]
async fn a_put_is_never_taken_by_another_daemon_at_the_announced_path() {
    let dir = tempfile::tempdir().unwrap();
    let meant = Daemon::start(&dir.path().join("meant"));
    let announced = announced_socket(&meant).await;
    // The meant daemon's socket moves aside; another daemon takes its path.
    std::fs::rename(&announced.path, dir.path().join("aside.sock")).unwrap();
    let other = Daemon::start_with(
        &dir.path().join("other"),
        &["--local-put-socket", announced.path.to_str().unwrap()],
    );
    assert_ne!(announced_socket(&other).await.instance, announced.instance);
    let proxy = Proxy::start(&meant.address).unwrap();
    let data = pattern(11, 4 << 20);
    let digests = BlobDigests::of(&data);
    let path = write_file(dir.path(), "weights.bin", &data);
    let output = Command::new(binary())
        .args(["blob", "put"])
        .arg(&path)
        .env("CUSTODIAN_SERVER", proxy.url())
        .env("CUSTODIAN_TOKEN", &meant.token)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        proxy.sent() >= data.len() as u64,
        "the put was not streamed to the daemon it was meant for"
    );
    assert!(stored(&meant, &digests.sha256.to_string()).await);
    assert!(!stored(&other, &digests.sha256.to_string()).await);

    // A daemon asked to bind a socket another live daemon answers on stops (it says where it
    // listens before it binds the socket, so it exits just after starting).
    let third = Daemon::launch(
        &binary(),
        &dir.path().join("third"),
        &["--local-put-socket", announced.path.to_str().unwrap()],
    );
    if let Ok(mut third) = third {
        assert!(
            !third.wait_exit(Duration::from_secs(30)),
            "a second daemon took over a live daemon's local put socket"
        );
    }
    assert_ne!(
        announced_socket(&other).await.instance,
        "",
        "the daemon answering on the socket is still there"
    );
    assert!(
        UnixStream::connect(&announced.path).is_ok(),
        "the live daemon's socket was removed"
    );

    // The meant daemon stops cleanly and removes its own socket file, not the one another
    // daemon has bound at its path since; the other removes its own when it stops. The waiting
    // runs off this test's runtime thread, which must stay free to close the gRPC connections
    // the test dropped (a daemon stops only once its connections are gone).
    let stop = |mut daemon: Daemon| {
        tokio::task::spawn_blocking(move || {
            daemon.terminate();
            daemon.wait_exit(Duration::from_secs(30))
        })
    };
    assert!(
        stop(meant).await.unwrap(),
        "the meant daemon did not stop cleanly"
    );
    assert!(
        UnixStream::connect(&announced.path).is_ok(),
        "a stopping daemon removed another daemon's socket"
    );
    assert!(
        stop(other).await.unwrap(),
        "the other daemon did not stop cleanly"
    );
    assert!(!announced.path.exists());
}

#[tokio::test]
async fn a_daemon_started_without_the_socket_announces_none_and_the_cli_streams() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(&dir.path().join("data"), &["--no-local-put-socket"]);
    let capabilities = daemon
        .client()
        .await
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capabilities.local_put_socket, "");
    assert!(!dir.path().join("data/local-put.sock").exists());
    let data = pattern(10, 1 << 20);
    let path = write_file(dir.path(), "small.bin", &data);
    let output = daemon.cli(&["blob", "put", path.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A data pack request: `metadata` as the REST upload's metadata part, for `spec`'s version of
/// pacman-builder, with the given declarations.
fn data_pack_request(
    to: &Announced,
    token: Option<&str>,
    version: &str,
    metadata: &str,
    expected_digest: &str,
    expected_size: Option<u64>,
) -> Vec<u8> {
    let request = pb::LocalPutRequest {
        data_pack: Some(pb::LocalDataPack {
            name: "pacman-builder".into(),
            version: version.into(),
            metadata_json: metadata.into(),
            file_name: "pack.bin".into(),
        }),
        ..put_request(to, expected_digest, expected_size, token)
    };
    custodian_proto::local_put::frame(&request)
}

/// The outcome of a data pack request, after any progress frames: the REST API's status and
/// JSON body.
fn data_pack_answer(replies: &[pb::LocalPutReply]) -> (u32, serde_json::Value) {
    let (last, progress) = replies.split_last().expect("at least one reply");
    assert!(
        progress.iter().all(|r| matches!(
            r.message,
            Some(pb::local_put_reply::Message::ProgressBytes(_))
        )),
        "{replies:?}"
    );
    match &last.message {
        Some(pb::local_put_reply::Message::DataPackAnswer(answer)) => (
            answer.http_status,
            serde_json::from_str(&answer.body_json).expect("the body is JSON"),
        ),
        other => panic!("expected a data pack answer, got {other:?}"),
    }
}

/// A data pack refusal case: what is tried, the request, the descriptor, and the status, error
/// code and message fragment expected.
type DataPackCase<'a> = (&'a str, Vec<u8>, BorrowedFd<'a>, u32, &'a str, &'a str);

/// A data pack handed over the socket is refused exactly as the REST hosted upload would refuse
/// it, with its status, code and a message naming the value, and nothing is kept or registered;
/// the right request registers it (scanned, with a receipt) and a repeat is answered as already
/// recorded.
#[tokio::test]
async fn a_local_data_pack_is_answered_as_the_rest_upload_would_be() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"));
    crate::registry::publish_example(&daemon, dir.path(), "pacman-builder", "publisher");
    let socket = announced_socket(&daemon).await;
    let data = pattern(11, (3 << 20) + 17);
    let digests = BlobDigests::of(&data);
    let path = write_file(dir.path(), "pack.bin", &data);
    let file = std::fs::File::open(&path).unwrap();
    let directory = std::fs::File::open(dir.path()).unwrap();
    let token = Some(daemon.token.as_str());
    let size = Some(data.len() as u64);
    let wrong = BlobDigests::of(b"other bytes").sha256.to_string();
    let declaring_wrong = format!(r#"{{"license": "MIT", "sha256": "{wrong}"}}"#);
    let good = r#"{"license": "MIT"}"#;
    let cases: Vec<DataPackCase<'_>> = vec![
        (
            "no token",
            data_pack_request(&socket, None, "0.2.1", good, "", size),
            file.as_fd(),
            401,
            "unauthenticated",
            "",
        ),
        (
            "a version never published",
            data_pack_request(&socket, token, "9.9.9", good, "", size),
            file.as_fd(),
            404,
            "not_found",
            "9.9.9",
        ),
        (
            "metadata that is not JSON",
            data_pack_request(&socket, token, "0.2.1", "license: MIT", "", size),
            file.as_fd(),
            400,
            "invalid_argument",
            "data_pack.metadata_json",
        ),
        (
            "a digest declared outside the metadata",
            data_pack_request(&socket, token, "0.2.1", good, &wrong, size),
            file.as_fd(),
            400,
            "invalid_argument",
            "expected_digest",
        ),
        (
            "another size declared",
            data_pack_request(&socket, token, "0.2.1", good, "", Some(5)),
            file.as_fd(),
            409,
            "failed_precondition",
            "expected_size: 5",
        ),
        (
            "a directory",
            data_pack_request(&socket, token, "0.2.1", good, "", size),
            directory.as_fd(),
            400,
            "invalid_argument",
            "a directory",
        ),
        (
            "another sha256 declared in the metadata",
            data_pack_request(&socket, token, "0.2.1", &declaring_wrong, "", size),
            file.as_fd(),
            422,
            "digest_mismatch",
            &wrong,
        ),
    ];
    for (what, frame, fd, status, code, names) in &cases {
        let (got, body) = data_pack_answer(&exchange(&socket, frame, &[*fd]));
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (*status, Some(*code)),
            "{what}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{what}: {message}");
    }
    assert!(!stored(&daemon, &digests.sha256.to_string()).await);
    assert!(
        !has_data_pack(&daemon, "pacman-builder@0.2.1"),
        "nothing was registered"
    );

    let right = data_pack_request(&socket, token, "0.2.1", good, "", size);
    let (status, body) = data_pack_answer(&exchange(&socket, &right, &[file.as_fd()]));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["record"]["sha256"], digests.sha256.to_string());
    assert_eq!(body["record"]["blake3"], digests.blake3.to_string());
    assert_eq!(body["record"]["filename"], "pack.bin");
    assert_eq!(body["scan"]["verdict"], "clean", "{body}");
    assert!(body["receipt"]["log_index"].is_u64(), "{body}");
    let shown = daemon.cli(&[
        "datapack",
        "show",
        "pacman-builder@0.2.1",
        "--json",
        "--rest",
        &daemon.rest,
    ]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["sha256"], digests.sha256.to_string());
    let (status, body) = data_pack_answer(&exchange(&socket, &right, &[file.as_fd()]));
    assert_eq!((status, &body["already_recorded"]), (200, &true.into()));
    // Other bytes for the same version are refused as over REST, and not kept.
    let other = pattern(13, 1 << 20);
    let other_file = std::fs::File::open(write_file(dir.path(), "other.bin", &other)).unwrap();
    let request = data_pack_request(&socket, token, "0.2.1", good, "", None);
    let (status, body) = data_pack_answer(&exchange(&socket, &request, &[other_file.as_fd()]));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_exists")),
        "{body}"
    );
    assert!(!stored(&daemon, &BlobDigests::of(&other).sha256.to_string()).await);
}

/// A file that changes while the daemon reads it is not registered (the bytes read could be a
/// mix of two files), and nothing is kept.
#[tokio::test]
async fn a_local_data_pack_that_changes_while_it_is_read_is_not_registered() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"));
    crate::registry::publish_example(&daemon, dir.path(), "pacman-builder", "publisher");
    let socket = announced_socket(&daemon).await;
    let path = write_file(dir.path(), "pack.bin", &pattern(12, 32 << 20));
    let file = std::fs::File::open(&path).unwrap();
    // The file's size moves during the read.
    let growing = Growing::start(&path);
    let request = data_pack_request(
        &socket,
        Some(&daemon.token),
        "0.2.1",
        r#"{"license": "MIT"}"#,
        "",
        None,
    );
    let (status, body) = data_pack_answer(&exchange(&socket, &request, &[file.as_fd()]));
    growing.stop();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("failed_precondition")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("changed while the daemon read it"),
        "{body}"
    );
    assert!(
        !has_data_pack(&daemon, "pacman-builder@0.2.1"),
        "nothing was registered"
    );
}

/// `custodian datapack upload` to a daemon on this machine hands it the file (the REST port
/// sees only the tus OPTIONS request that names the socket), and with `--no-local-put` uploads
/// over tus as before; both register the same data pack view.
#[tokio::test]
async fn the_cli_hands_a_local_daemon_its_data_pack_and_uploads_over_rest_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"));
    crate::registry::publish_example(&daemon, dir.path(), "pacman-builder", "publisher");
    crate::registry::publish_example(
        &daemon,
        dir.path(),
        "customer-support-classifier",
        "classifier-publisher",
    );
    let proxy = Proxy::start(&daemon.rest).unwrap();
    let size = 20u64 << 20;
    let path = dir.path().join("pack.bin");
    custodian_testkit::write_test_file(&path, size).unwrap();
    let sha = BlobDigests::of(&std::fs::read(&path).unwrap()).sha256;
    let upload = |spec: &str, extra: &[&str]| {
        let value = json_output(
            Command::new(binary())
                .args(["datapack", "upload", spec, "--license", "MIT", "--json"])
                .args(extra)
                .arg(&path)
                .args(["--rest", &proxy.url()])
                .env("CUSTODIAN_TOKEN", &daemon.token)
                .env("CUSTODIAN_STATE_DIR", dir.path().join("state")),
        );
        assert_eq!(value["record"]["sha256"], sha.to_string(), "{value}");
        value
    };

    let local = upload("pacman-builder@0.2.1", &[]);
    assert_eq!(local["uploaded_with"], "local put socket", "{local}");
    assert_eq!(local["scan"]["verdict"], "clean", "{local}");
    let local_bytes = proxy.sent();
    assert!(
        local_bytes < 64 << 10,
        "a local data pack upload sent {local_bytes} bytes over REST"
    );
    let over_rest = upload("customer-support-classifier@0.1.0", &["--no-local-put"]);
    assert_eq!(over_rest["uploaded_with"], "tus 1.0", "{over_rest}");
    assert!(
        proxy.sent() - local_bytes >= size,
        "--no-local-put did not upload the file over REST"
    );
    let fetched = dir.path().join("fetched.bin");
    let download = daemon.cli(&[
        "datapack",
        "download",
        "pacman-builder@0.2.1",
        "-o",
        fetched.to_str().unwrap(),
        "--rest",
        &daemon.rest,
    ]);
    assert!(
        download.status.success(),
        "{}",
        String::from_utf8_lossy(&download.stderr)
    );
    assert_eq!(
        std::fs::read(&fetched).unwrap(),
        std::fs::read(&path).unwrap()
    );
}
