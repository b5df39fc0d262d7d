//! Limits and abuse: oversized messages, slow-loris headers, bodies and uploads, thousands of
//! idle connections, malformed protobuf and HTTP. Each meets a configured limit with a clear
//! status, and the daemon keeps serving well-behaved clients throughout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use custodian_proto::cas::v1 as pb;
use tonic::Code;

use crate::cas::{OpenUpload, put};
use crate::pattern;
use custodian_testkit::Daemon;

const LIMITS: [&str; 10] = [
    "--max-message-bytes",
    "1048576",
    "--idle-timeout",
    "2s",
    "--header-timeout",
    "1s",
    "--upload-idle-timeout",
    "1s",
    "--max-connections",
    "300",
];

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// A well-behaved client's request, which must keep working whatever else is going on.
async fn still_serves(daemon: &Daemon, what: &str) {
    let mut client = daemon.client().await;
    let data = pattern(Instant::now().elapsed().as_nanos() as u64 ^ 0xab, 5_000);
    put(&mut client, "", None, &data)
        .await
        .unwrap_or_else(|s| panic!("{what}: a normal put failed: {s:?}"));
    let (code, _) = crate::registry::curl(&[&format!("{}/healthz", daemon.rest)]);
    assert_eq!(code, 200, "{what}: REST healthz");
}

/// Reads until the server closes the connection (or `limit` passes); returns what arrived and
/// how long it took.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set a read timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return (got, started.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (got, started.elapsed()),
        }
    }
    panic!("the server kept the connection open for {limit:?}");
}

#[tokio::test]
async fn oversized_messages_are_refused_with_a_status_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(dir.path(), &LIMITS);
    // A Put chunk larger than --max-message-bytes, as one message.
    let upload = OpenUpload::start(
        daemon.client().await,
        pb::PutHeader::default(),
        pattern(1, 3 << 20),
    )
    .await;
    drop(upload.tx);
    let status = upload
        .call
        .await
        .unwrap()
        .expect_err("a 3 MiB message over a 1 MiB limit");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );
    // A BatchPut whose message is over the limit.
    let items = (0..3)
        .map(|i| pb::BatchPutItem {
            expected_digest: String::new(),
            data: pattern(10 + i, 400_000),
        })
        .collect();
    let status = daemon
        .client()
        .await
        .batch_put(pb::BatchPutRequest { items })
        .await
        .expect_err("over the batch limit");
    assert!(
        matches!(
            status.code(),
            Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange
        ),
        "{status:?}"
    );
    // A REST JSON body far over its limit: 413, with the daemon unharmed.
    let body = dir.path().join("big.json");
    std::fs::write(&body, vec![b' '; 8 << 20]).unwrap();
    let (code, _) = crate::registry::curl(&[
        "-X",
        "PUT",
        "-H",
        "content-type: application/json",
        "--data-binary",
        &format!("@{}", body.display()),
        &format!(
            "{}/wrappers/x/versions/1.0.0/data-pack/manifest",
            daemon.rest
        ),
    ]);
    assert_eq!(code, 413);
    still_serves(&daemon, "after oversized messages").await;
}

#[tokio::test]
async fn slow_loris_headers_bodies_and_uploads_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(dir.path(), &LIMITS);
    let rest = host_port(&daemon.rest);

    // Headers trickled a byte at a time: cut at --header-timeout (1 s) although bytes keep coming.
    let trickle = {
        let rest = rest.clone();
        std::thread::spawn(move || {
            let mut stream = TcpStream::connect(&rest).expect("connect");
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            let started = Instant::now();
            for _ in 0..40 {
                std::thread::sleep(Duration::from_millis(150));
                if stream.write_all(b"X").is_err() {
                    break;
                }
            }
            let (reply, _) = read_until_closed(&mut stream, Duration::from_secs(10));
            (
                started.elapsed(),
                String::from_utf8_lossy(&reply).to_string(),
            )
        })
    };
    // A body that stops arriving: cut at --idle-timeout (2 s).
    let stalled_body = {
        let rest = rest.clone();
        std::thread::spawn(move || {
            let mut stream = TcpStream::connect(&rest).expect("connect");
            stream
                .write_all(
                    b"PUT /wrappers/x/versions/1.0.0/data-pack/manifest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"lic",
                )
                .unwrap();
            read_until_closed(&mut stream, Duration::from_secs(10)).1
        })
    };
    // A gRPC upload that sends its header and then nothing: DEADLINE_EXCEEDED at
    // --upload-idle-timeout (1 s).
    let started = Instant::now();
    let upload = OpenUpload::start(
        daemon.client().await,
        pb::PutHeader::default(),
        Bytes::new(),
    )
    .await;
    let status = upload
        .call
        .await
        .unwrap()
        .expect_err("a stalled upload must fail");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("upload-idle-timeout"),
        "{}",
        status.message()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(upload.tx);

    still_serves(&daemon, "while slow clients are connected").await;
    let (took, reply) = trickle.join().unwrap();
    assert!(
        took < Duration::from_secs(4),
        "header trickle lasted {took:?}"
    );
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "header trickle got {reply:?}"
    );
    let took = stalled_body.join().unwrap();
    assert!(
        took < Duration::from_secs(6),
        "stalled body lasted {took:?}"
    );
    still_serves(&daemon, "after slow clients").await;
}

/// Whether the server has closed this connection: reads what it sent (an HTTP/2 settings
/// frame, say) until the end of the stream, a reset, or a pause that means it is still open.
fn closed_by_server(stream: &TcpStream) -> bool {
    let mut stream = stream;
    stream
        .set_read_timeout(Some(Duration::from_millis(5)))
        .expect("set a read timeout");
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Raises this test process's open-file limit so it can hold thousands of sockets.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

#[tokio::test]
async fn thousands_of_idle_connections_are_bounded_and_timed_out() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    // Room for 3,000 per port; 2,500 idle connections fit and a new client is still served.
    let mut args = LIMITS.to_vec();
    args[9] = "3000";
    let daemon = Daemon::start_with(&dir.path().join("roomy"), &args);
    let grpc = host_port(&daemon.address);
    let idle: Vec<TcpStream> = (0..2_500)
        .map(|_| TcpStream::connect(&grpc).expect("connect an idle client"))
        .collect();
    still_serves(&daemon, "with 2,500 idle gRPC connections").await;
    // After --idle-timeout every one of them has been closed by the daemon.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let open = idle.iter().filter(|s| !closed_by_server(s)).count();
    assert_eq!(
        open, 0,
        "{open} idle connections were not closed after the idle timeout"
    );

    // At the limit (300), new connections are closed at once, while a client already
    // connected keeps working.
    let small = Daemon::start_with(&dir.path().join("small"), &LIMITS);
    let mut connected = small.client().await;
    let grpc = host_port(&small.address);
    let held: Vec<TcpStream> = (0..1_000)
        .filter_map(|_| TcpStream::connect(&grpc).ok())
        .collect();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let closed = held.iter().filter(|s| closed_by_server(s)).count();
    assert!(
        closed >= 700,
        "only {closed} of 1,000 connections over a limit of 300 were closed"
    );
    put(&mut connected, "", None, &pattern(77, 3_000))
        .await
        .expect("a connected client is served at the connection limit");
    drop(held);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    still_serves(&small, "after the flood timed out").await;
}

#[tokio::test]
async fn malformed_protobuf_and_http_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(dir.path(), &LIMITS);
    // A gRPC frame whose payload is not a StatRequest.
    let garbage = dir.path().join("garbage.bin");
    let mut frame = vec![0u8, 0, 0, 0, 6];
    frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    std::fs::write(&garbage, frame).unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-D",
            "-",
            "-o",
            "/dev/null",
        ])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("--data-binary")
        .arg(format!("@{}", garbage.display()))
        .arg(format!(
            "{}/custodian.cas.v1.ContentStore/Stat",
            daemon.address
        ))
        .output()
        .expect("run curl");
    let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(headers.contains("grpc-status: 13"), "{headers}");
    assert!(
        headers.contains("decode"),
        "the status should say the message did not decode: {headers}"
    );

    // Not HTTP at all, on both ports.
    for port in [host_port(&daemon.rest), host_port(&daemon.address)] {
        let mut stream = TcpStream::connect(&port).unwrap();
        stream
            .write_all(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n")
            .unwrap();
        let (reply, took) = read_until_closed(&mut stream, Duration::from_secs(5));
        let reply = String::from_utf8_lossy(&reply);
        assert!(took < Duration::from_secs(3), "{port}: {took:?}");
        if port == host_port(&daemon.rest) {
            assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
        }
    }
    // A request line with a bad method and a header without a colon.
    let mut stream = TcpStream::connect(host_port(&daemon.rest)).unwrap();
    stream
        .write_all(b"G\x01T / HTTP/1.1\r\nno colon here\r\n\r\n")
        .unwrap();
    let (reply, _) = read_until_closed(&mut stream, Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 400"));
    still_serves(&daemon, "after malformed input").await;
}
