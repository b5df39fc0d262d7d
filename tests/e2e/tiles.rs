//! The ledger served as C2SP tlog-tiles on the REST port (`/log/checkpoint`, `/log/tile/…`), read
//! by Go's `golang.org/x/mod/sumdb/tlog` through `TileHashReader` (code nobody here wrote), and
//! the promises tiles make to caches: a full tile never changes, a partial tile stays readable
//! after its tile fills, and bad or out-of-range paths are 400 or 404, never a server error.

use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use custodian_proto::ledger::v1 as pb;

use crate::ledger::{append, client, start};

async fn get(url: &str) -> (u16, Option<String>, Vec<u8>) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        status,
        cache,
        response.bytes().await.expect("body").to_vec(),
    )
}

/// Writes the log's verifier key to DIR/log.vkey, as an auditor keeps it; returns the path.
async fn verifier_key_file(
    log: &mut custodian_proto::ledger::v1::ledger_client::LedgerClient<custodian_client::Conn>,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let info = log
        .get_log_info(pb::GetLogInfoRequest {})
        .await
        .expect("log info")
        .into_inner();
    let key = dir.join("log.vkey");
    std::fs::write(&key, &info.verifier_key).expect("write");
    key
}

/// Runs `custodian log monitor` once against `log` (with object store `options`), keeping its
/// state in `state`.
fn run_monitor(
    log: &str,
    options: &[(String, String)],
    key: &std::path::Path,
    state: &std::path::Path,
) -> std::process::Output {
    let mut command = Command::new(custodian_testkit::binary());
    command.args(["log", "monitor", "--log", log]);
    for (name, value) in options {
        command.args(["--log-option", &format!("{name}={value}")]);
    }
    command
        .arg("--key")
        .arg(key)
        .arg("--state")
        .arg(state)
        .output()
        .expect("run custodian log monitor")
}

async fn tile(rest: &str, path: &str) -> Vec<u8> {
    let (status, cache, body) = get(&format!("{rest}/log/tile/{path}")).await;
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    assert_eq!(
        cache.as_deref(),
        Some("public, max-age=31536000, immutable"),
        "{path}"
    );
    body
}

#[tokio::test]
async fn go_reads_the_ledger_through_its_tiles_and_tiles_never_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(&dir.path().join("data"));
    let mut log = client(&daemon).await;
    for i in 0..300 {
        append(&mut log, i).await.expect("append");
    }
    let old = log
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: None })
        .await
        .expect("checkpoint")
        .into_inner();
    assert_eq!(old.tree_size, 300);
    let (status, cache, body) = get(&format!("{}/log/checkpoint", daemon.rest)).await;
    assert_eq!((status, cache.as_deref()), (200, Some("no-cache")));
    assert_eq!(String::from_utf8_lossy(&body), old.note);

    // At 300 entries: one full level-0 tile, a partial one of 44, and a level-1 tile of 1.
    let full = tile(&daemon.rest, "0/000").await;
    assert_eq!(full.len(), 256 * 32);
    let partial = tile(&daemon.rest, "0/001.p/44").await;
    assert_eq!(partial.len(), 44 * 32);
    assert_eq!(tile(&daemon.rest, "1/000.p/1").await.len(), 32);
    // Each hash in a level-0 tile is the leaf hash of its entry.
    let entry = log
        .get_entry(pb::GetEntryRequest { index: 257 })
        .await
        .expect("entry")
        .into_inner();
    assert_eq!(&partial[32..64], &entry.leaf_hash[..]);
    // Entry bundles: each entry length-prefixed, in order, the very bytes GetEntry returns.
    let bundle = tile(&daemon.rest, "entries/001.p/44").await;
    let entries = custodian_core::tiles::EntryBundle::decode(&bundle, 44).expect("a bundle of 44");
    assert_eq!(entries[1], &entry.encoded[..]);
    let full_bundle = tile(&daemon.rest, "entries/000").await;
    assert_eq!(
        custodian_core::tiles::EntryBundle::decode(&full_bundle, 256)
            .expect("a bundle of 256")
            .len(),
        256
    );

    for i in 300..600 {
        append(&mut log, i).await.expect("append");
    }
    // A full tile is the same bytes after more appends; the partial tile of an old checkpoint is
    // still served and is a prefix of the tile it grew into.
    assert!(
        tile(&daemon.rest, "0/000").await == full,
        "a full tile changed"
    );
    assert_eq!(tile(&daemon.rest, "0/001.p/44").await, partial);
    assert!(tile(&daemon.rest, "0/001").await.starts_with(&partial));
    assert_eq!(tile(&daemon.rest, "0/002.p/88").await.len(), 88 * 32);
    assert!(
        tile(&daemon.rest, "entries/000").await == full_bundle,
        "a full bundle changed"
    );
    assert_eq!(tile(&daemon.rest, "entries/001.p/44").await, bundle);
    assert!(tile(&daemon.rest, "entries/001").await.starts_with(&bundle));

    // Beyond the log: 404 naming the size. Malformed: 400 naming the rule. Never 5xx.
    for (path, want) in [
        ("0/003", 404),
        ("0/002.p/89", 404),
        ("2/000.p/1", 404),
        ("7/x018/x446/x744/x073/x709/x551/615", 404),
        ("entries/003", 404),
        ("entries/002.p/89", 404),
        ("entries/1", 400),
        ("entries/000.p/256", 400),
        ("0/1", 400),
        ("0/x000/001", 400),
        ("64/000", 400),
        ("0/000.p/256", 400),
        ("0/000.p/0", 400),
        ("0/000.p/015", 400),
        ("zero/000", 400),
    ] {
        let (status, _, body) = get(&format!("{}/log/tile/{path}", daemon.rest)).await;
        assert_eq!(status, want, "{path}: {}", String::from_utf8_lossy(&body));
        let error: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        if want == 400 {
            assert!(message.contains("is not a tile path"), "{path}: {message}");
        } else {
            assert!(message.contains("beyond the log"), "{path}: {message}");
        }
    }

    // Go's tlog reads the tiles, recomputes the root, proves entries and the old checkpoint.
    let info = log
        .get_log_info(pb::GetLogInfoRequest {})
        .await
        .expect("log info")
        .into_inner();
    let out = dir.path().join("go");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::fs::write(out.join("vkey"), &info.verifier_key).expect("write");
    std::fs::write(out.join("old.checkpoint"), &old.note).expect("write");
    let mut records = Vec::new();
    for index in [0u64, 1, 255, 256, 299, 300, 511, 512, 599] {
        let entry = log
            .get_entry(pb::GetEntryRequest { index })
            .await
            .expect("entry")
            .into_inner();
        records.push(format!("{index} {}", STANDARD.encode(&entry.encoded)));
    }
    std::fs::write(out.join("records"), records.join("\n")).expect("write");
    let run = || {
        Command::new(crate::go_bin("tiles-check"))
            .arg(&daemon.rest)
            .arg(&out)
            .output()
            .expect("run tiles-check (tests/interop/go, built by scripts/test)")
    };
    let result = run();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success() && stdout.starts_with("ok: "),
        "Go could not read our tiles: {stdout}{}",
        String::from_utf8_lossy(&result.stderr)
    );
    eprintln!("{stdout}");

    // And Go notices an entry that is not the one the tiles commit to: the check can fail.
    let (index, entry) = records[4].split_once(' ').expect("a record");
    let mut bytes = STANDARD.decode(entry).expect("base64");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    records[4] = format!("{index} {}", STANDARD.encode(&bytes));
    std::fs::write(out.join("records"), records.join("\n")).expect("write");
    let result = run();
    assert!(!result.status.success(), "Go accepted a tampered entry");
    assert!(
        String::from_utf8_lossy(&result.stderr).contains("tlog.CheckRecord"),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );

    // An entry longer than a bundle's uint16 length prefix can say keeps its bundle unserved,
    // with the reason; its hash tile is served as always.
    let mut request = tonic::Request::new(pb::AppendRequest {
        kind: "LedgerProbe".into(),
        payload_cbor: custodian_core::entry::encode_value(&custodian_core::entry::Value::Bytes(
            vec![7; 70_000],
        ))
        .into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", crate::ledger::TOKEN)
            .parse()
            .expect("metadata"),
    );
    log.append(request).await.expect("a 70 kB entry");
    let (status, _, body) = get(&format!("{}/log/tile/entries/002.p/89", daemon.rest)).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("entry 600 cannot be in a public bundle") && body.contains("65535"),
        "{body}"
    );
    assert_eq!(tile(&daemon.rest, "0/002.p/89").await.len(), 89 * 32);
}

/// `custodian log monitor` over the tiles alone: the first run accepts the log, later runs prove
/// it only grew, and a log under the same key that shrank or forked is refused, naming the
/// sizes, with the state left at the last good checkpoint.
#[tokio::test]
async fn the_monitor_follows_growth_and_catches_a_rollback_and_a_fork() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_a = dir.path().join("a");
    let daemon = start(&data_a);
    let mut log = client(&daemon).await;
    for i in 0..300 {
        append(&mut log, i).await.expect("append");
    }
    let key = verifier_key_file(&mut log, dir.path()).await;
    let state = dir.path().join("monitor.state");
    let monitor =
        |d: &custodian_testkit::Daemon| run_monitor(&format!("{}/log", d.rest), &[], &key, &state);
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let out = monitor(&daemon);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("300 entries, the tiles add up"),
        "{}",
        text(&out)
    );
    for i in 300..520 {
        append(&mut log, i).await.expect("append");
    }
    let out = monitor(&daemon);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("300 -> 520 entries, consistent"),
        "{}",
        text(&out)
    );
    // Each new entry is read from its bundle, checked against the tiles and printed.
    assert!(
        text(&out).contains("  entry 300 LedgerProbe ")
            && text(&out).contains("  entry 519 LedgerProbe "),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("  entry 299 "), "{}", text(&out));
    let accepted = std::fs::read_to_string(&state).expect("state");
    assert!(accepted.contains("\n520\n"), "{accepted}");

    // A static mirror of the same files (what a bucket behind a CDN holds) monitors the same.
    let mirror = dir.path().join("mirror");
    let checkpoint = get(&format!("{}/log/checkpoint", daemon.rest)).await.2;
    std::fs::create_dir_all(&mirror).expect("mkdir");
    std::fs::write(mirror.join("checkpoint"), &checkpoint).expect("write");
    for path in [
        "tile/0/000",
        "tile/0/001",
        "tile/0/002.p/8",
        "tile/1/000.p/2",
    ] {
        let bytes = tile(&daemon.rest, &path["tile/".len()..]).await;
        let file = mirror.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(file, bytes).expect("write");
    }
    let out = Command::new(custodian_testkit::binary())
        .args(["log", "monitor", "--json", "--log"])
        .arg(format!("file://{}", mirror.display()))
        .arg("--key")
        .arg(&key)
        .arg("--state")
        .arg(dir.path().join("mirror.state"))
        .output()
        .expect("run custodian log monitor");
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (report["ok"].as_bool(), report["tree_size"].as_u64()),
        (Some(true), Some(520))
    );
    // Without bundles the entries are not decoded, and the report says which are missing.
    assert_eq!(report["entries"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        report["bundles_not_served"].as_array().map(Vec::len),
        Some(3)
    );
    // With them, every entry is decoded; an entry altered in its bundle is caught by index.
    for path in [
        "tile/entries/000",
        "tile/entries/001",
        "tile/entries/002.p/8",
    ] {
        let bytes = tile(&daemon.rest, &path["tile/".len()..]).await;
        let file = mirror.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(file, bytes).expect("write");
    }
    let monitor_mirror = |state: &str| {
        Command::new(custodian_testkit::binary())
            .args(["log", "monitor", "--json", "--log"])
            .arg(format!("file://{}", mirror.display()))
            .arg("--key")
            .arg(&key)
            .arg("--state")
            .arg(dir.path().join(state))
            .output()
            .expect("run custodian log monitor")
    };
    let out = monitor_mirror("mirror2.state");
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["entries"].as_array().map(Vec::len), Some(520));
    assert_eq!(report["entries"][257]["kind"], "LedgerProbe");
    let mut altered = std::fs::read(mirror.join("tile/entries/001")).expect("bundle");
    altered[12] ^= 1;
    std::fs::write(mirror.join("tile/entries/001"), altered).expect("write");
    let out = monitor_mirror("mirror3.state");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("entry 256 in tile/entries/001 hashes to"),
        "{}",
        text(&out)
    );
    assert!(!dir.path().join("mirror3.state").exists());

    // `log mirror` copies the log into a directory, checked; the copy monitors the same.
    let copy = dir.path().join("copy");
    let copy_url = format!("file://{}", copy.display());
    let mirror = |from: &str, to: &str| {
        Command::new(custodian_testkit::binary())
            .args(["log", "mirror", "--from", from, "--to", to, "--key"])
            .arg(&key)
            .output()
            .expect("run custodian log mirror")
    };
    let out = mirror(&format!("{}/log", daemon.rest), &copy_url);
    assert!(
        text(&out).contains("from 0 to 520 entries"),
        "{}",
        text(&out)
    );
    assert!(
        std::fs::read(copy.join("tile/1/000.p/2")).expect("computed tile")
            == tile(&daemon.rest, "1/000.p/2").await
    );
    // A copied level-0 tile with one bit flipped is caught before anything is written.
    let mut damaged = std::fs::read(copy.join("tile/0/001")).expect("tile");
    damaged[100] ^= 1;
    std::fs::write(copy.join("tile/0/001"), damaged).expect("write");
    let out = mirror(
        &copy_url,
        &format!("file://{}", dir.path().join("copy2").display()),
    );
    assert!(!out.status.success(), "a damaged tile was mirrored");
    assert!(
        text(&out).contains("level-0 tiles hash to"),
        "{}",
        text(&out)
    );
    assert!(!dir.path().join("copy2/checkpoint").exists());

    // Another log under the same key: first shorter (a rollback), then longer but different.
    let data_b = dir.path().join("b");
    std::fs::create_dir_all(&data_b).expect("mkdir");
    std::fs::copy(data_a.join("log-key"), data_b.join("log-key")).expect("copy the key");
    let forked = start(&data_b);
    let mut fork = client(&forked).await;
    for i in 1000..1100 {
        append(&mut fork, i).await.expect("append");
    }
    let out = monitor(&forked);
    assert!(!out.status.success(), "a rollback passed");
    assert!(
        text(&out).contains("the log shrank from 520 to 100"),
        "{}",
        text(&out)
    );
    for i in 1100..1700 {
        append(&mut fork, i).await.expect("append");
    }
    let out = monitor(&forked);
    assert!(!out.status.success(), "a fork passed as consistent");
    assert!(
        text(&out).contains("of size 700 is NOT consistent with the one of size 520"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&state).expect("state"),
        accepted,
        "a refused checkpoint replaced the accepted one"
    );
    // Nor does `log mirror` extend a copy of one history with the other.
    let out = mirror(&format!("{}/log", forked.rest), &copy_url);
    assert!(!out.status.success(), "a fork extended the mirror");
    assert!(
        text(&out).contains("of size 520 is NOT consistent with the source's of size 700"),
        "{}",
        text(&out)
    );
    // The real log still passes from the kept state.
    let out = monitor(&daemon);
    assert!(out.status.success(), "{}", text(&out));
}

/// Waits until the mirror's checkpoint names `size` entries.
fn wait_for_checkpoint(bucket: &std::path::Path, size: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(bucket.join("checkpoint")).unwrap_or_default();
        if text.contains(&format!("\n{size}\n")) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the mirror did not reach {size} entries: {text:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `serve --tiles-to file://DIR`: the tiles and checkpoint land in the directory as the log
/// grows, identical to what the daemon serves; the monitor follows the directory with the daemon
/// killed; a restarted daemon resumes the mirror; a daemon of another log refuses the directory.
#[tokio::test]
async fn tiles_mirrored_to_a_directory_serve_the_log_with_the_daemon_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket = dir.path().join("bucket");
    let url = format!("file://{}", bucket.display());
    let mut daemon = custodian_testkit::Daemon::start_with(
        &dir.path().join("data"),
        &[
            "--append-token",
            crate::ledger::TOKEN,
            "--log-origin",
            "e2e.test/mirror",
            "--tiles-to",
            &url,
        ],
    );
    let mut log = client(&daemon).await;
    for i in 0..300 {
        append(&mut log, i).await.expect("append");
    }
    wait_for_checkpoint(&bucket, 300);
    let first_checkpoint = std::fs::read(bucket.join("checkpoint")).expect("checkpoint");
    for path in [
        "0/000",
        "0/001.p/44",
        "1/000.p/1",
        "entries/000",
        "entries/001.p/44",
    ] {
        let mirrored = std::fs::read(bucket.join("tile").join(path)).expect("mirrored tile");
        assert!(tile(&daemon.rest, path).await == mirrored, "{path} differs");
    }
    let key = verifier_key_file(&mut log, dir.path()).await;
    let monitor = || run_monitor(&url, &[], &key, &dir.path().join("state"));
    let out = monitor();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 300..520 {
        append(&mut log, i).await.expect("append");
    }
    wait_for_checkpoint(&bucket, 520);
    daemon.kill9();
    let out = monitor();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("300 -> 520"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The new entries came from the bucket's bundles, with the daemon stopped.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("  entry 300 LedgerProbe") && stdout.contains("  entry 519 LedgerProbe"),
        "{stdout}"
    );
    assert!(!stdout.contains("not decoded"), "{stdout}");
    // Go reads the directory served by a plain static file server, the daemon still stopped:
    // x/mod's TileHashReader, and Tessera's client with its checkpoint, tiles and bundles.
    let go = dir.path().join("go");
    std::fs::create_dir_all(&go).expect("mkdir");
    std::fs::copy(&key, go.join("vkey")).expect("vkey");
    std::fs::write(go.join("old.checkpoint"), &first_checkpoint).expect("old");
    let bundle = std::fs::read(bucket.join("tile/entries/000")).expect("bundle");
    let first_entry =
        custodian_core::tiles::EntryBundle::decode(&bundle, 256).expect("bundle")[0].to_vec();
    std::fs::write(
        go.join("records"),
        format!("0 {}", STANDARD.encode(&first_entry)),
    )
    .expect("records");
    // tiles-check takes the daemon's REST root and reads BASE/log/…; give it a root whose /log
    // is the directory.
    std::fs::create_dir_all(dir.path().join("root")).expect("mkdir");
    std::os::unix::fs::symlink(&bucket, dir.path().join("root/log")).expect("symlink");
    let mut server = Command::new(crate::go_bin("custodian-interop"))
        .arg("serve-dir")
        .arg(dir.path().join("root"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("static server");
    let mut address = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().expect("stdout")),
        &mut address,
    )
    .expect("address");
    let root_url = format!("http://{}", address.trim());
    let checked = Command::new(crate::go_bin("tiles-check"))
        .arg(&root_url)
        .arg(&go)
        .output()
        .expect("tiles-check");
    let policy = dir.path().join("no-witnesses.policy");
    std::fs::write(&policy, "quorum none\n").expect("policy");
    let read = Command::new(crate::go_bin("custodian-interop"))
        .args(["read-log", &format!("{root_url}/log")])
        .arg(std::fs::read_to_string(&key).expect("vkey").trim())
        .arg(&policy)
        .arg(go.join("old.checkpoint"))
        .output()
        .expect("read-log");
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        checked.status.success(),
        "x/mod over the static directory: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        read.status.success() && String::from_utf8_lossy(&read.stdout).trim() == "520",
        "Tessera's client over the static directory: {}{}",
        String::from_utf8_lossy(&read.stdout),
        String::from_utf8_lossy(&read.stderr)
    );

    // Restarted, the daemon resumes from the directory's checkpoint.
    daemon.restart_after_kill9();
    let mut log = client(&daemon).await;
    for i in 520..530 {
        append(&mut log, i).await.expect("append");
    }
    wait_for_checkpoint(&bucket, 530);
    assert!(
        tile(&daemon.rest, "0/002.p/18").await
            == std::fs::read(bucket.join("tile/0/002.p/18")).expect("mirrored tile")
    );

    // Another log (its own key) must not write over this one's tiles.
    let stderr = custodian_testkit::serve_refuses(&dir.path().join("other"), &["--tiles-to", &url]);
    assert!(
        stderr.contains("--tiles-to") && stderr.contains("not one of this log"),
        "{stderr}"
    );
}

/// The same mirror on S3 (moto on loopback): with the daemon killed, the monitor reads the log
/// straight from the bucket and finds it consistent with what it saw before.
#[tokio::test]
async fn tiles_mirrored_to_s3_are_read_from_the_bucket_with_the_daemon_stopped() {
    let moto = custodian_testkit::Moto::start("custodian-tiles");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<String> = [
        "--append-token",
        crate::ledger::TOKEN,
        "--log-origin",
        "e2e.test/s3-mirror",
        "--tiles-to",
        "s3://custodian-tiles/log",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (key, value) in moto.options() {
        args.extend(["--tiles-option".into(), format!("{key}={value}")]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = custodian_testkit::Daemon::start_with(&dir.path().join("data"), &refs);
    let mut log = client(&daemon).await;
    // The test reads the bucket as the monitor does: through the S3 API, with credentials.
    let (store, prefix, _) =
        custodian_object::build_store("s3://custodian-tiles/log", &moto.options()).expect("s3");
    let wait = async |size: u64| {
        use object_store::ObjectStoreExt as _;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let text = match store.get(&prefix.clone().join("checkpoint")).await {
                Ok(found) => {
                    String::from_utf8_lossy(&found.bytes().await.expect("body")).into_owned()
                }
                Err(_) => String::new(),
            };
            if text.contains(&format!("\n{size}\n")) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the S3 mirror did not reach {size}: {text:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    for i in 0..40 {
        append(&mut log, i).await.expect("append");
    }
    wait(40).await;
    let first_checkpoint = {
        use object_store::ObjectStoreExt as _;
        store
            .get(&prefix.clone().join("checkpoint"))
            .await
            .expect("checkpoint")
            .bytes()
            .await
            .expect("body")
    };
    let key = verifier_key_file(&mut log, dir.path()).await;
    let options = moto.options();
    let monitor = || {
        run_monitor(
            "s3://custodian-tiles/log",
            &options,
            &key,
            &dir.path().join("state"),
        )
    };
    let out = monitor();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 40..300 {
        append(&mut log, i).await.expect("append");
    }
    wait(300).await;
    daemon.kill9();
    let out = monitor();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("40 -> 300"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Tessera's client reads the bucket over plain HTTP, as a public bucket behind a CDN is
    // read: a bucket policy lets anyone get its objects (moto takes it unsigned).
    let public = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::custodian-tiles/*"}]}"#;
    let answer = moto
        .http(&format!(
            "PUT /custodian-tiles?policy HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{public}",
            public.len()
        ))
        .expect("put the bucket policy");
    assert!(answer.starts_with("HTTP/1.1 2"), "{answer}");
    let policy = dir.path().join("no-witnesses.policy");
    std::fs::write(&policy, "quorum none\n").expect("policy");
    let read = Command::new(crate::go_bin("custodian-interop"))
        .args([
            "read-log",
            &format!("http://127.0.0.1:{}/custodian-tiles/log", moto.port),
        ])
        .arg(std::fs::read_to_string(&key).expect("vkey").trim())
        .arg(&policy)
        .output()
        .expect("read-log");
    assert!(
        read.status.success() && String::from_utf8_lossy(&read.stdout).trim() == "300",
        "Tessera's client over the S3 bucket: {}{}",
        String::from_utf8_lossy(&read.stdout),
        String::from_utf8_lossy(&read.stderr)
    );
    // And x/mod's TileHashReader over the same bucket: the root, a record, the old checkpoint.
    let go = dir.path().join("go");
    std::fs::create_dir_all(&go).expect("mkdir");
    std::fs::copy(&key, go.join("vkey")).expect("vkey");
    std::fs::write(go.join("old.checkpoint"), &first_checkpoint).expect("old");
    let bundle = get(&format!(
        "http://127.0.0.1:{}/custodian-tiles/log/tile/entries/000",
        moto.port
    ))
    .await
    .2;
    let entry =
        custodian_core::tiles::EntryBundle::decode(&bundle, 256).expect("bundle")[7].to_vec();
    std::fs::write(go.join("records"), format!("7 {}", STANDARD.encode(&entry))).expect("records");
    let checked = Command::new(crate::go_bin("tiles-check"))
        .arg(format!("http://127.0.0.1:{}/custodian-tiles", moto.port))
        .arg(&go)
        .output()
        .expect("tiles-check");
    assert!(
        checked.status.success(),
        "x/mod over the S3 bucket: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}
