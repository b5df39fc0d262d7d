//! Resumable uploads end to end: a 256 MiB `custodian blob put` cut three ways (the client
//! killed, the connection dropped, the daemon killed with `kill -9`) finishes from where it
//! stopped each time, and the bytes sent in total stay within 1.1× the blob.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use custodian_core::{Algorithm, Digest};
use custodian_testkit::{Daemon, Proxy, binary, write_test_file};

const MIB: u64 = 1 << 20;

/// Waits until `done` holds, failing the test after `limit`.
fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn put_through(proxy: &Proxy, daemon: &Daemon, state: &Path, file: &Path) -> Child {
    let mut put = Command::new(binary());
    // Streamed over gRPC through the proxy: a local put would hand the daemon the file past it.
    put.args(["blob", "put", "--json", "--no-local-put"])
        .arg(file)
        .env("CUSTODIAN_SERVER", proxy.url());
    spawn_cli(put, daemon, state)
}

/// Starts a CLI command with the daemon's token and its resume records under `state`, its
/// output captured.
fn spawn_cli(mut command: Command, daemon: &Daemon, state: &Path) -> Child {
    command
        .env("CUSTODIAN_TOKEN", &daemon.token)
        .env("CUSTODIAN_STATE_DIR", state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

fn sessions(daemon: &Daemon) -> usize {
    std::fs::read_dir(daemon.data_dir.join("uploads")).map_or(0, |d| d.count())
}

#[test]
fn a_256_mib_put_cut_three_ways_resumes_each_time() {
    let dir = tempfile::tempdir().expect("a resumable-upload test step");
    let mut daemon = Daemon::start(&dir.path().join("data"));
    let file = dir.path().join("pack.bin");
    let size = 256 * MIB;
    write_test_file(&file, size).expect("test file");
    let expected = Digest::of(Algorithm::Sha256, &std::fs::read(&file).expect("read"));
    let state = dir.path().join("state");
    let proxy = Proxy::start(&daemon.address).expect("proxy");
    let limit = Duration::from_secs(120);

    // 1. The client is killed a quarter of the way in. The daemon keeps what arrived.
    let mut first = put_through(&proxy, &daemon, &state, &file);
    wait_for("a quarter sent", limit, || proxy.sent() >= size / 4);
    first.kill().expect("kill the client");
    let mut cuts = vec![proxy.sent()];
    eprintln!("client killed at {} bytes sent", cuts[0]);
    let _ = first.wait();
    wait_for("the session to be kept", limit, || sessions(&daemon) == 1);

    // 2. The same command again resumes the same session; its connection is then dropped
    //    halfway, and it resumes by itself.
    let second = put_through(&proxy, &daemon, &state, &file);
    wait_for("half sent", limit, || proxy.sent() >= size / 2);
    proxy.drop_connections();
    cuts.push(proxy.sent());
    eprintln!("connection dropped at {} bytes sent", cuts[1]);

    // 3. Three quarters in, the daemon is killed with kill -9 and started again (on new ports,
    //    which the proxy follows); the client waits for it and resumes again.
    wait_for("three quarters sent", limit, || {
        proxy.sent() >= size * 3 / 4
    });
    daemon.kill9();
    cuts.push(proxy.sent());
    eprintln!("daemon killed at {} bytes sent", cuts[2]);
    daemon.restart_after_kill9();
    proxy.set_upstream(&daemon.address).expect("new upstream");

    let output = second.wait_with_output().expect("the second put");
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(output.status.success(), "the resumed put failed: {stderr}");
    assert!(
        stderr.contains("resuming the upload of") && stderr.contains("the transfer broke"),
        "the put says it resumed across runs and within one: {stderr}"
    );
    let lines: serde_json::Value = serde_json::from_slice(&output.stdout).expect("--json output");
    assert_eq!(lines[0]["sha256"], expected.to_string());
    assert_eq!(lines[0]["size"], size);

    // Nothing was sent twice beyond what was in flight at each cut.
    let sent = proxy.sent();
    eprintln!(
        "resumable put: {} bytes sent for a {} byte blob ({:.3}x) across three cuts",
        sent,
        size,
        sent as f64 / size as f64
    );
    // On failure, the cuts and the CLI's resume points say which cut cost what.
    let resumes: Vec<&str> = stderr.lines().filter(|l| l.contains("resum")).collect();
    assert!(
        sent as f64 <= 1.1 * size as f64,
        "{sent} bytes sent for {size}: more than 1.1x (cuts at {cuts:?} bytes sent; {resumes:?})"
    );
    assert_eq!(sessions(&daemon), 0, "the finished session leaves nothing");
    assert_eq!(
        std::fs::read_dir(state.join("uploads")).map_or(0, |d| d.count()),
        0,
        "the client forgets a finished upload"
    );

    // The blob reads back verified.
    let back = dir.path().join("back.bin");
    let get = daemon.cli(&[
        "blob",
        "get",
        &expected.to_string(),
        "-o",
        back.to_str().expect("a resumable-upload test step"),
    ]);
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert_eq!(
        std::fs::metadata(&back)
            .expect("a resumable-upload test step")
            .len(),
        size
    );
}

/// Creates a tus upload session of `length` bytes for the data pack of `version_path`
/// (`NAME/versions/VERSION`), license CC-BY-4.0 and no sha256; returns its URL.
pub(crate) fn tus_create(daemon: &Daemon, version_path: &str, length: u64, name: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let metadata = format!(
        "metadata {},filename {}",
        b64.encode(r#"{"license": "CC-BY-4.0"}"#),
        b64.encode(name)
    );
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "-X", "POST"])
        .args(["-H", &crate::registry::bearer(&daemon.token)])
        .args(["-H", "Tus-Resumable: 1.0.0"])
        .args(["-H", &format!("Upload-Length: {length}")])
        .args(["-H", &format!("Upload-Metadata: {metadata}")])
        .arg(format!(
            "{}/wrappers/{version_path}/data-pack/uploads",
            daemon.rest
        ))
        .output()
        .expect("curl");
    let created = answer_or_why_not(&out);
    let location = header(&created, "location").unwrap_or_else(|| panic!("no Location: {created}"));
    format!("{}{location}", daemon.rest)
}

/// Sends the bytes of `piece` at `offset` to the tus session at `url`, with `extra` headers;
/// returns the answer's status line and headers, lower-cased.
pub(crate) fn tus_patch(
    daemon: &Daemon,
    url: &str,
    offset: u64,
    piece: &Path,
    extra: &[&str],
) -> String {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "-D", "-", "-o", "/dev/null", "-X", "PATCH"])
        .args(["-H", &crate::registry::bearer(&daemon.token)])
        .args(["-H", "Tus-Resumable: 1.0.0", "-H", "Expect:"])
        .args(["-H", "Content-Type: application/offset+octet-stream"])
        .args(["-H", &format!("Upload-Offset: {offset}")]);
    for h in extra {
        command.args(["-H", h]);
    }
    let out = command
        .arg("--data-binary")
        .arg(format!("@{}", piece.display()))
        .arg(url)
        .output()
        .expect("curl");
    answer_or_why_not(&out)
}

/// curl's answer (status line and headers), lower-cased; when curl itself failed, its exit
/// status and message follow, so that an assertion on the answer says why there was none.
fn answer_or_why_not(out: &std::process::Output) -> String {
    let answer = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    if out.status.success() {
        return answer;
    }
    format!(
        "{answer}[curl failed, {}: {}]",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// The value of header `name` (lower-case) in a lower-cased answer.
pub(crate) fn header(answer: &str, name: &str) -> Option<String> {
    answer
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// A daemon with the customer-support-classifier example published, and a test file of `size`
/// bytes for its data pack with the file's sha256.
fn classifier_with_pack(size: u64) -> (tempfile::TempDir, Daemon, std::path::PathBuf, Digest) {
    let dir = tempfile::tempdir().expect("a resumable-upload test step");
    let daemon = Daemon::start(&dir.path().join("data"));
    crate::registry::publish_example(
        &daemon,
        dir.path(),
        "customer-support-classifier",
        "publisher",
    );
    let file = dir.path().join("pack.bin");
    write_test_file(&file, size).expect("test file");
    let sha = Digest::of(Algorithm::Sha256, &std::fs::read(&file).expect("read"));
    (dir, daemon, file, sha)
}

/// `custodian datapack show --json` of the classifier's data pack.
fn show_classifier_pack(daemon: &Daemon) -> std::process::Output {
    daemon.cli(&[
        "datapack",
        "show",
        "customer-support-classifier@0.1.0",
        "--json",
        "--rest",
        &daemon.rest,
    ])
}

/// A client that hashes while it sends declares the sha256 or the BLAKE3 on the PATCH that
/// completes the upload: on any other PATCH, under the other algorithm's header or under both
/// headers at once the declaration is refused before a byte is kept, and a wrong one leaves
/// nothing behind (no session, no data pack); the right one registers the pack, and the answer
/// names both digests.
#[test]
fn a_tus_upload_declares_its_digest_on_the_completing_patch() {
    let size = 3 * MIB;
    let (dir, daemon, file, sha) = classifier_with_pack(size);
    let bytes = std::fs::read(&file).expect("read");
    let (first, rest) = (dir.path().join("first"), dir.path().join("rest"));
    std::fs::write(&first, &bytes[..MIB as usize]).expect("write");
    std::fs::write(&rest, &bytes[MIB as usize..]).expect("write");
    let version = "customer-support-classifier/versions/0.1.0";
    let declare = |digest: &Digest| format!("Custodian-Data-Pack-Sha256: {digest}");
    let declare_blake3 = |digest: &Digest| format!("Custodian-Data-Pack-Blake3: {digest}");
    let blake = Digest::of(Algorithm::Blake3, &bytes);

    let url = tus_create(&daemon, version, size, "pack.bin");
    let early = tus_patch(&daemon, &url, 0, &first, &[&declare(&sha)]);
    assert!(early.starts_with("http/1.1 400"), "{early}");
    let early = tus_patch(&daemon, &url, 0, &first, &[&declare_blake3(&blake)]);
    assert!(early.starts_with("http/1.1 400"), "{early}");
    let answer = tus_patch(&daemon, &url, 0, &first, &[&declare(&blake)]);
    assert!(answer.starts_with("http/1.1 400"), "only sha256: {answer}");
    let answer = tus_patch(&daemon, &url, 0, &first, &[]);
    assert_eq!(
        header(&answer, "upload-offset").as_deref(),
        Some("1048576"),
        "{answer}"
    );
    let answer = tus_patch(&daemon, &url, MIB, &rest, &[&declare_blake3(&sha)]);
    assert!(answer.starts_with("http/1.1 400"), "only blake3: {answer}");
    let both = [declare(&sha), declare_blake3(&blake)];
    let answer = tus_patch(&daemon, &url, MIB, &rest, &[&both[0], &both[1]]);
    assert!(
        answer.starts_with("http/1.1 400"),
        "one declaration: {answer}"
    );
    let wrong = Digest::of(Algorithm::Sha256, b"other bytes");
    let answer = tus_patch(&daemon, &url, MIB, &rest, &[&declare(&wrong)]);
    assert!(answer.starts_with("http/1.1 422"), "{answer}");
    assert_eq!(sessions(&daemon), 0, "nothing left behind");
    let shown = show_classifier_pack(&daemon);
    assert!(!shown.status.success(), "no data pack was registered");

    let url = tus_create(&daemon, version, size, "pack.bin");
    let answer = tus_patch(&daemon, &url, 0, &first, &[]);
    assert!(answer.starts_with("http/1.1 204"), "{answer}");
    let wrong = Digest::of(Algorithm::Blake3, b"other bytes");
    let answer = tus_patch(&daemon, &url, MIB, &rest, &[&declare_blake3(&wrong)]);
    assert!(answer.starts_with("http/1.1 422"), "{answer}");
    assert_eq!(sessions(&daemon), 0, "nothing left behind");
    assert!(!show_classifier_pack(&daemon).status.success());

    // A version takes one data pack, so the BLAKE3 declaration completes an upload on a daemon
    // of its own, with its own test file.
    let (dir2, daemon2, file2, sha2) = classifier_with_pack(size);
    let bytes2 = std::fs::read(&file2).expect("read");
    let blake2 = Digest::of(Algorithm::Blake3, &bytes2);
    let (first2, rest2) = (dir2.path().join("first"), dir2.path().join("rest"));
    std::fs::write(&first2, &bytes2[..MIB as usize]).expect("write");
    std::fs::write(&rest2, &bytes2[MIB as usize..]).expect("write");
    for (daemon, (first, rest), declaration, (sha, blake)) in [
        (&daemon, (&first, &rest), declare(&sha), (sha, blake)),
        (
            &daemon2,
            (&first2, &rest2),
            declare_blake3(&blake2),
            (sha2, blake2),
        ),
    ] {
        let url = tus_create(daemon, version, size, "pack.bin");
        let answer = tus_patch(daemon, &url, 0, first, &[]);
        assert!(answer.starts_with("http/1.1 204"), "{answer}");
        let answer = tus_patch(daemon, &url, MIB, rest, &[&declaration]);
        assert!(
            answer.starts_with("http/1.1 204"),
            "{declaration}: {answer}"
        );
        assert_eq!(
            header(&answer, "custodian-data-pack-sha256"),
            Some(sha.to_string())
        );
        assert_eq!(
            header(&answer, "custodian-data-pack-blake3"),
            Some(blake.to_string())
        );
        assert!(
            header(&answer, "custodian-ledger-index").is_some(),
            "{answer}"
        );
        assert!(show_classifier_pack(daemon).status.success());
    }
}

fn python() -> std::path::PathBuf {
    crate::registry::python()
}

/// Hosted data packs over tus 1.0 with PyPI `tuspy`: creation, per-chunk `Upload-Checksum`
/// (sha1), a mismatching checksum answered 460 with nothing kept, and a new client resuming the
/// upload from tuspy's own URL store at the server's offset; the completed upload is registered.
#[test]
fn tus_uploads_resume_with_tuspy_and_refuse_bad_checksums() {
    let size = 24 * MIB;
    let (dir, daemon, file, sha) = classifier_with_pack(size);
    let collection = format!(
        "{}/wrappers/customer-support-classifier/versions/0.1.0/data-pack/uploads",
        daemon.rest
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/tus_client.py");
    let out = crate::run_ok(
        Command::new(python())
            .arg(script)
            .arg(&collection)
            .arg(&daemon.token)
            .arg(&file)
            .arg(r#"{"license": "CC-BY-4.0"}"#)
            .arg(dir.path().join("tus-urls.json")),
    );
    let report: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["options"]["status"], 204, "{report}");
    assert_eq!(report["options"]["tus_version"], "1.0.0");
    for extension in ["creation", "expiration", "checksum", "termination"] {
        assert!(
            report["options"]["extensions"]
                .as_str()
                .unwrap_or_default()
                .contains(extension),
            "{report}"
        );
    }
    assert_eq!(report["first_offset"], size / 2, "{report}");
    assert_eq!(report["mismatch_status"], 460, "{report}");
    assert_eq!(report["mismatch_tus_resumable"], "1.0.0", "{report}");
    assert_eq!(
        report["offset_after_mismatch"],
        size / 2,
        "nothing of it kept: {report}"
    );
    assert!(
        report["expires"]
            .as_str()
            .is_some_and(|e| e.ends_with("GMT"))
    );
    assert_eq!(report["resumed_url_is_the_same"], true, "{report}");
    assert_eq!(report["resumed_at"], size / 2, "{report}");
    assert_eq!(report["final_offset"], size, "{report}");
    assert_eq!(report["status_after_completion"], 404, "{report}");
    let shown = show_classifier_pack(&daemon);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("show --json");
    assert_eq!(shown["sha256"], sha.to_string(), "{shown}");
    assert_eq!(sessions(&daemon), 0);

    // Bad input at creation is refused before a byte is sent: no length, no metadata, and a
    // metadata JSON the data pack rules refuse; an unknown session is 404.
    let post = |headers: &[(&str, &str)]| {
        let mut command = Command::new("curl");
        command.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"]);
        command.args(["-H", &format!("Authorization: Bearer {}", daemon.token)]);
        for (k, v) in headers {
            command.args(["-H", &format!("{k}: {v}")]);
        }
        command.arg(&collection);
        crate::run_ok(&mut command)
    };
    assert_eq!(post(&[("Tus-Resumable", "1.0.0")]), "400");
    assert_eq!(post(&[("Upload-Length", "5")]), "412", "no Tus-Resumable");
    assert_eq!(
        post(&[("Tus-Resumable", "1.0.0"), ("Upload-Length", "5")]),
        "400",
        "no metadata"
    );
}

/// A daemon with the pacman-builder example published, a test file of `size` bytes for its data
/// pack, and a proxy to the daemon's REST API.
fn pacman_with_pack(size: u64) -> (tempfile::TempDir, Daemon, std::path::PathBuf, Proxy) {
    let dir = tempfile::tempdir().expect("a resumable-upload test step");
    let daemon = Daemon::start(&dir.path().join("data"));
    crate::registry::publish_example(&daemon, dir.path(), "pacman-builder", "publisher");
    let file = dir.path().join("pack.bin");
    write_test_file(&file, size).expect("test file");
    let proxy = Proxy::start(&daemon.rest).expect("proxy");
    (dir, daemon, file, proxy)
}

/// Starts `custodian datapack upload --json` of `file` as pacman-builder's data pack through
/// `proxy`, with its resume records under `state`.
fn upload_through(proxy: &Proxy, daemon: &Daemon, file: &Path, state: &Path) -> Child {
    let mut upload = Command::new(binary());
    upload
        .args(["datapack", "upload", "pacman-builder@0.2.1"])
        .arg(file)
        .args(["--license", "MIT", "--json", "--rest", &proxy.url()])
        // These tests are about the upload over REST, which a daemon on this machine would skip.
        .arg("--no-local-put");
    spawn_cli(upload, daemon, state)
}

/// `custodian datapack upload` of a large file goes over tus and resumes by itself after a
/// dropped connection, and after the command was killed when run again.
#[test]
fn datapack_upload_resumes_over_tus() {
    let size = 64 * MIB;
    let (dir, daemon, file, proxy) = pacman_with_pack(size);
    let sha = Digest::of(Algorithm::Sha256, &std::fs::read(&file).expect("read"));
    let state = dir.path().join("state");
    let upload = || upload_through(&proxy, &daemon, &file, &state);
    let limit = Duration::from_secs(120);
    let mut first = upload();
    wait_for("a third sent", limit, || proxy.sent() >= size / 3);
    first.kill().expect("kill the client");
    let _ = first.wait();
    let second = upload();
    wait_for("two thirds sent", limit, || proxy.sent() >= size * 2 / 3);
    proxy.drop_connections();
    let output = second.wait_with_output().expect("the second upload");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("resuming the upload of") && stderr.contains("the transfer broke"),
        "{stderr}"
    );
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("--json");
    assert_eq!(value["record"]["sha256"], sha.to_string(), "{value}");
    let sent = proxy.sent();
    eprintln!(
        "tus datapack upload: {sent} bytes sent for {size} ({:.3}x) across two cuts",
        sent as f64 / size as f64
    );
    assert!(sent as f64 <= 1.1 * size as f64, "{sent} bytes for {size}");
    assert_eq!(sessions(&daemon), 0);
}

/// `custodian datapack upload` reads the file once and declares the digest of the bytes it sent;
/// a file changed while it was sent (here its modification time, as any write sets it) is not
/// declared, so nothing is registered from a mix of two files.
#[test]
fn a_data_pack_changed_during_its_upload_is_not_registered() {
    let size = 128 * MIB;
    let (dir, daemon, file, proxy) = pacman_with_pack(size);
    let upload = upload_through(&proxy, &daemon, &file, &dir.path().join("state"));
    wait_for("a third sent", Duration::from_secs(120), || {
        proxy.sent() >= size / 3
    });
    let changed_at = proxy.sent();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() + Duration::from_secs(60)))
        .expect("change the file's modification time");
    let output = upload.wait_with_output().expect("the upload");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        changed_at < size,
        "the file changed only after the upload ({changed_at} bytes sent)"
    );
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("changed while it was uploaded"), "{stderr}");
    assert!(
        !has_data_pack(&daemon, "pacman-builder@0.2.1"),
        "no data pack was registered"
    );
}

/// Whether the version `spec` has a data pack registered (`custodian datapack show` finds one).
pub(crate) fn has_data_pack(daemon: &Daemon, spec: &str) -> bool {
    daemon
        .cli(&["datapack", "show", spec, "--rest", &daemon.rest])
        .status
        .success()
}

/// A multipart upload the daemon refuses before reading its data (here: the version already has
/// a data pack) reports the refusal to the CLI, five times over. The daemon reads a small
/// refused body to its end before answering, so a client still sending never sees a broken
/// connection instead; on loopback this test passes with or without that, so it checks the
/// answer, not the race.
#[test]
fn a_refused_multipart_upload_reports_why() {
    let dir = tempfile::tempdir().expect("a resumable-upload test step");
    let daemon = Daemon::start(&dir.path().join("data"));
    crate::registry::publish_example(&daemon, dir.path(), "pacman-builder", "publisher");
    let first = dir.path().join("first.bin");
    write_test_file(&first, 1000).expect("test file");
    let upload = |file: &Path| {
        daemon.cli(&[
            "datapack",
            "upload",
            "pacman-builder@0.2.1",
            file.to_str().expect("utf-8"),
            "--license",
            "MIT",
            "--rest",
            &daemon.rest,
            "--no-local-put",
        ])
    };
    assert!(upload(&first).status.success());
    let other = dir.path().join("other.bin");
    write_test_file(&other, 6 * MIB).expect("test file");
    for attempt in 0..5 {
        let refused = upload(&other);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && stderr.contains("already_exists (409)"),
            "attempt {attempt}: {stderr}"
        );
    }
}

/// Sends `head` (a request's lines, each ending in CRLF, without `Content-Length`) to the server
/// at `address`, then a body of `len` bytes in 64 KiB pieces 10 ms apart, and reads only after
/// the last piece: the server has long decided by then. Returns the answer, or why a piece could
/// not be sent and what answer had come by then.
pub(crate) fn send_whole_body_then_read(
    address: &str,
    head: &str,
    len: u64,
) -> Result<String, String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    let head = format!("{head}Connection: close\r\nContent-Length: {len}\r\n\r\n");
    stream.write_all(head.as_bytes()).expect("send the head");
    let piece = vec![7u8; 64 << 10];
    for n in 0..len.div_ceil(piece.len() as u64) {
        std::thread::sleep(Duration::from_millis(10));
        let end = (len - n * piece.len() as u64).min(piece.len() as u64) as usize;
        if let Err(e) = stream.write_all(&piece[..end]) {
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            return Err(format!(
                "piece {n} of the body could not be sent ({e}); answer {answer:?}"
            ));
        }
    }
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    match read {
        Ok(_) => Ok(answer),
        Err(e) => Err(format!(
            "the answer could not be read ({e}); {answer:?} came"
        )),
    }
}

/// A PATCH refused before its body is read still gets its answer when the client sends the whole
/// body before it reads: the daemon reads a refused body of up to 8 MiB before it answers. Without
/// that, the daemon answers and closes with bytes unread, its kernel resets the connection, and
/// the client's next write fails; a client that stops there never reads the answer (the likeliest
/// reason a CI run once saw curl get no answer at all).
#[test]
fn a_refused_tus_patch_reads_the_body_it_was_sent_before_it_answers() {
    let size = 3 * MIB;
    let (_dir, daemon, _file, sha) = classifier_with_pack(size);
    let url = tus_create(
        &daemon,
        "customer-support-classifier/versions/0.1.0",
        size,
        "p",
    );
    let address = daemon.rest.trim_start_matches("http://");
    let path = url.trim_start_matches(&daemon.rest);
    for (refusal, headers, status) in [
        (
            "a declaration on a PATCH that does not complete",
            format!("Upload-Offset: 0\r\nCustodian-Data-Pack-Sha256: {sha}"),
            "400",
        ),
        (
            "a declaration that is no digest",
            "Upload-Offset: 0\r\nCustodian-Data-Pack-Sha256: sha256:nothex".to_string(),
            "400",
        ),
        (
            "an offset past the session's",
            format!("Upload-Offset: {MIB}"),
            "409",
        ),
    ] {
        let head = format!(
            "PATCH {path} HTTP/1.1\r\nHost: {address}\r\n{}\r\nTus-Resumable: 1.0.0\r\n\
             Content-Type: application/offset+octet-stream\r\n{headers}\r\n",
            crate::registry::bearer(&daemon.token)
        );
        let answer = send_whole_body_then_read(address, &head, MIB)
            .unwrap_or_else(|why| panic!("{refusal}: {why}"));
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{refusal}: {answer:?}"
        );
    }
    // A client that waits for `100 Continue` before it sends is answered at once, and not invited
    // to send the body only to have it read and thrown away.
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {address}\r\n{}\r\nTus-Resumable: 1.0.0\r\n\
         Content-Type: application/offset+octet-stream\r\nUpload-Offset: {MIB}\r\n\
         Expect: 100-continue\r\nConnection: close\r\nContent-Length: {MIB}\r\n\r\n",
        crate::registry::bearer(&daemon.token)
    );
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    std::io::Write::write_all(&mut stream, head.as_bytes()).expect("send the head");
    let mut answer = String::new();
    let read = std::io::Read::read_to_string(&mut stream, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 409"), "{read:?}: {answer:?}");
    assert_eq!(sessions(&daemon), 1, "the session is still there");
}
