//! Past one machine: three daemons in front of one PostgreSQL database (ledger and blob index)
//! and one S3 bucket (moto), or one Azure container (Azurite), sharing one log key, under a load of blob puts, raw appends,
//! attested runs and publications spread across all three, through 30 `kill -9`s of a random
//! daemon and 3 immediate PostgreSQL restarts. Afterwards every acknowledged blob, entry and
//! version is there and seen identically through every daemon, the log never forked (Go's
//! sumdb/tlog checks it, and every daemon's export audits), and each cycle's race of two
//! daemons publishing one version with different content had exactly one winner.
//!
//! Also: a daemon that loses PostgreSQL mid-run refuses writes with UNAVAILABLE, says it is not
//! ready, keeps serving the registry it holds, and recovers by itself when the database returns.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use custodian_client::{Client, Target};
use custodian_core::entry::{Value, encode_value};
use custodian_proto::ledger::v1 as pb;
use custodian_testkit::{Cloud, Daemon, Postgres};

use crate::registry::{copy_example, generate_key, stdout};

const ORIGIN: &str = "scale.test/log";
const BUCKET: &str = "custodian-scale";

/// Where each daemon is reachable right now (`None` while it is down): gRPC address and its
/// admin token (tokens live in each daemon's data directory).
type Endpoints = Arc<RwLock<Vec<Option<(String, String)>>>>;

struct Cluster {
    pg: Postgres,
    _cloud: Cloud,
    dir: tempfile::TempDir,
    daemons: Vec<Daemon>,
    endpoints: Endpoints,
    /// `--ledger URL --storage s3://… --storage-option …`, as every daemon has them.
    store_args: Vec<String>,
}

impl Cluster {
    /// `n` daemons on one database and one S3 bucket, with one log key.
    fn start(n: usize) -> Cluster {
        Self::start_on(n, &[], Cloud::s3(BUCKET))
    }

    /// [`Cluster::start`] with `extra` serve flags for every daemon.
    fn start_with(n: usize, extra: &[&str]) -> Cluster {
        Self::start_on(n, extra, Cloud::s3(BUCKET))
    }

    /// [`Cluster::start_with`] on the bucket or container `cloud`.
    fn start_on(n: usize, extra: &[&str], cloud: Cloud) -> Cluster {
        let pg = Postgres::start();
        let url = pg.database("cluster");
        let dir = tempfile::tempdir().expect("a cluster directory");
        let mut args: Vec<String> = ["--ledger", &url].iter().map(|s| s.to_string()).collect();
        args.extend(custodian_testkit::storage_args(
            &cloud.url("blobs"),
            &cloud.options(),
        ));
        args.extend(
            ["--append-token", "t", "--log-origin", ORIGIN]
                .iter()
                .map(|s| s.to_string()),
        );
        let store_args: Vec<String> = args
            .iter()
            .enumerate()
            .filter(|(i, a)| {
                let flag = if a.starts_with("--") {
                    *a
                } else {
                    &args[i - 1]
                };
                matches!(flag.as_str(), "--ledger" | "--storage" | "--storage-option")
            })
            .map(|(_, a)| a.clone())
            .collect();
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        let daemons: Vec<Daemon> = (0..n)
            .map(|i| {
                let data = dir.path().join(format!("daemon-{i}"));
                custodian_testkit::write_log_key(&data, ORIGIN, 77);
                Daemon::start_with(&data, &args)
            })
            .collect();
        let endpoints = Arc::new(RwLock::new(
            daemons
                .iter()
                .map(|d| Some((d.address.clone(), d.token.clone())))
                .collect(),
        ));
        Cluster {
            pg,
            _cloud: cloud,
            dir,
            daemons,
            endpoints,
            store_args,
        }
    }

    /// Kills daemon `i` with SIGKILL and starts it again; returns once it serves (it prints
    /// its addresses before replaying the registry from the ledger, and a daemon that cannot
    /// reach PostgreSQL while it starts exits for its supervisor to start it again).
    async fn kill_and_restart(&mut self, i: usize) {
        self.endpoints.write().expect("endpoints")[i] = None;
        self.daemons[i].kill9();
        self.daemons[i].restart_after_kill9();
        let daemon = &self.daemons[i];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let client = Client::connect(&Target::new(daemon.address.clone(), None)).await;
            if let Ok(client) = client
                && client
                    .ledger()
                    .get_log_info(pb::GetLogInfoRequest {})
                    .await
                    .is_ok()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "daemon {i} does not serve after a restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.endpoints.write().expect("endpoints")[i] =
            Some((daemon.address.clone(), daemon.token.clone()));
    }

    /// After a PostgreSQL restart: waits until each daemon takes an append and a blob again.
    /// A daemon's first calls after the restart may be UNAVAILABLE (a connection that died
    /// with the server is found broken, and its pool checks the others); nothing is lost.
    async fn settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, daemon) in self.daemons.iter().enumerate() {
            let data = crate::pattern(1_000_000 + i as u64, 4096);
            let sha =
                custodian_core::Digest::of(custodian_core::Algorithm::Sha256, &data).to_string();
            loop {
                let client = daemon.connect(Some(&daemon.token)).await;
                let appended = client
                    .ledger()
                    .append(append_request(u64::MAX - i as u64))
                    .await;
                let put = crate::cas::put(&mut client.store(), &sha, Some(4096), &data).await;
                if appended.is_ok() && put.is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "daemon {i} takes no writes after PostgreSQL restarted: {appended:?} {put:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Waits until every daemon serves a log of at least `size` entries.
    async fn caught_up(&self, size: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for daemon in &self.daemons {
            let mut log = daemon.connect(None).await.ledger();
            loop {
                let served = log
                    .get_checkpoint(pb::GetCheckpointRequest { tree_size: None })
                    .await
                    .map(|c| c.into_inner().tree_size)
                    .unwrap_or(0);
                if served >= size {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "daemon {} serves {served} of {size} entries",
                    daemon.address
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A tiny deterministic generator, so a failing run can be repeated.
struct Dice(u64);

impl Dice {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below as u64) as usize
    }
}

/// What the load had acknowledged.
#[derive(Default)]
struct Acknowledged {
    /// Blobs: (sha256, seed, length) of `pattern(seed, length)`.
    blobs: Vec<(String, u64, usize)>,
    /// Raw appends: (log index, the payload's number).
    entries: Vec<(u64, u64)>,
}

fn append_request(n: u64) -> tonic::Request<pb::AppendRequest> {
    let mut request = tonic::Request::new(pb::AppendRequest {
        kind: "ScaleProbe".into(),
        payload_cbor: encode_value(&Value::Integer(n.into())).into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer t".parse().expect("a header value"));
    request
}

/// One load worker: until `stop`, puts a 4 KiB blob or appends a raw entry through a random
/// live daemon, recording what was acknowledged. Failures (a daemon being killed, PostgreSQL
/// restarting) are expected and not recorded.
async fn load_worker(
    worker: u64,
    endpoints: Endpoints,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Acknowledged>>,
) -> (u64, u64) {
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15 ^ (worker + 1));
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut n = worker << 32;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let live: Vec<(String, String)> = endpoints
            .read()
            .expect("endpoints")
            .iter()
            .flatten()
            .cloned()
            .collect();
        if live.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let (address, token) = live[dice.next(live.len())].clone();
        let Ok(client) = Client::connect(&Target::new(address, Some(&token))).await else {
            failed += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let outcome = if n.is_multiple_of(2) {
            let data = crate::pattern(n, 4096);
            let sha =
                custodian_core::Digest::of(custodian_core::Algorithm::Sha256, &data).to_string();
            let put = crate::cas::put(&mut client.store(), &sha, Some(4096), &data).await;
            put.map(|_| {
                acknowledged
                    .lock()
                    .expect("acknowledged")
                    .blobs
                    .push((sha, n, 4096))
            })
        } else {
            let appended = client.ledger().append(append_request(n)).await;
            appended.map(|response| {
                let index = response
                    .into_inner()
                    .receipt
                    .expect("an append answers with a receipt")
                    .log_index;
                acknowledged
                    .lock()
                    .expect("acknowledged")
                    .entries
                    .push((index, n))
            })
        };
        match outcome {
            Ok(()) => ok += 1,
            Err(status) => {
                failed += 1;
                if failed % 100 == 1 {
                    eprintln!("worker {worker}: refused ({failed} so far): {status:?}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    (ok, failed)
}

/// Runs `custodian ARGS` against a daemon at `address` with `token`.
fn cli_at(address: &str, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(custodian_testkit::binary())
        .args(args)
        .env("CUSTODIAN_SERVER", address)
        .env("CUSTODIAN_TOKEN", token)
        .output()
        .expect("run custodian")
}

/// A copy of the pacman-builder example at `version`, optionally with one prompt changed (a
/// different package root under the same name and version).
fn variant(dir: &Path, name: &str, version: &str, changed: bool) -> PathBuf {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).expect("a variant directory");
    let package = copy_example("pacman-builder", &root);
    let manifest = package.join("manifest.yaml");
    let text = std::fs::read_to_string(&manifest).expect("the manifest");
    std::fs::write(
        &manifest,
        text.replace("version: 0.2.1", &format!("version: {version}")),
    )
    .expect("write the manifest");
    if changed {
        let prompt = package.join("prompts/system.md");
        let mut text = std::fs::read_to_string(&prompt).expect("the system prompt");
        text.push_str("\nKeep the maze symmetric.\n");
        std::fs::write(&prompt, text).expect("write the system prompt");
    }
    package
}

/// Two daemons publish one version with different content at the same moment: exactly one
/// succeeds, the other is told the version is already published. Returns which one won.
fn race(cluster: &Cluster, key: &Path, cycle: usize, x: usize, y: usize) -> usize {
    let version = format!("0.3.{cycle}");
    let dir = cluster.dir.path().join("race");
    let packages = [
        variant(&dir, &format!("{cycle}-a"), &version, false),
        variant(&dir, &format!("{cycle}-b"), &version, true),
    ];
    let endpoints: Vec<(String, String)> = [x, y]
        .iter()
        .map(|&i| {
            let d = &cluster.daemons[i];
            (d.address.clone(), d.token.clone())
        })
        .collect();
    let handles: Vec<_> = packages
        .iter()
        .zip(endpoints)
        .map(|(package, (address, token))| {
            let (package, key) = (package.clone(), key.to_path_buf());
            std::thread::spawn(move || {
                cli_at(
                    &address,
                    &token,
                    &[
                        "publish",
                        package.to_str().expect("utf-8"),
                        "--key",
                        key.to_str().expect("utf-8"),
                    ],
                )
            })
        })
        .collect();
    let outputs: Vec<std::process::Output> = handles
        .into_iter()
        .map(|h| h.join().expect("a publisher thread"))
        .collect();
    let winners: Vec<usize> = (0..2).filter(|&i| outputs[i].status.success()).collect();
    assert_eq!(
        winners.len(),
        1,
        "cycle {cycle}: {} publications of pacman-builder@{version} succeeded:\n{}\n{}",
        winners.len(),
        String::from_utf8_lossy(&outputs[0].stderr),
        String::from_utf8_lossy(&outputs[1].stderr)
    );
    let loser = String::from_utf8_lossy(&outputs[1 - winners[0]].stderr).into_owned();
    assert!(
        loser.contains(&format!("pacman-builder@{version} is already published")),
        "cycle {cycle}: the loser is told what a single daemon says: {loser}"
    );
    winners[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn three_daemons_share_one_database_and_bucket_through_crashes() {
    through_crashes(Cluster::start(3), 30).await;
}

/// The same on Azure (Azurite), through 10 crashes (one of them PostgreSQL's).
#[tokio::test(flavor = "multi_thread")]
async fn three_daemons_share_one_database_and_azure_container_through_crashes() {
    through_crashes(Cluster::start_on(3, &[], Cloud::azure(BUCKET)), 10).await;
}

/// Three daemons of `cluster` under load through `cycles` crashes (see the module's doc).
async fn through_crashes(mut cluster: Cluster, cycles: usize) {
    let dir = cluster.dir.path().to_path_buf();
    let (key, _) = generate_key(&dir, "publisher");

    // The first version pins the publisher key; an attester registered through daemon 0 is
    // known to the others once they follow the ledger.
    let first = variant(&dir, "first", "0.2.1", false);
    stdout(&cluster.daemons[0].cli(&[
        "publish",
        first.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
    ]));
    let attest_tokens: Vec<String> = cluster
        .daemons
        .iter()
        .map(|d| d.create_token("evals-ci", "attest", "*"))
        .collect();
    let (attester, attester_public) = generate_key(&dir, "evals-ci");
    stdout(&cluster.daemons[0].cli_as(
        Some(&attest_tokens[0]),
        &[
            "attester",
            "register",
            attester_public.to_str().expect("utf-8"),
        ],
    ));
    let size = crate::registry::log_size(&cluster.daemons[0]).await;
    cluster.caught_up(size).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(load_worker(
                w,
                cluster.endpoints.clone(),
                stop.clone(),
                acknowledged.clone(),
            ))
        })
        .collect();

    let mut dice = Dice(20_261_130);
    let mut winners = Vec::new();
    let mut attested = 0;
    let started = Instant::now();
    for cycle in 0..cycles {
        // The same-version race, between two different daemons.
        let x = dice.next(3);
        let y = (x + 1 + dice.next(2)) % 3;
        winners.push(race(&cluster, &key, cycle, x, y));
        // An attested run through a third daemon.
        let z = 3 - x - y;
        let runs = crate::evidence::write_runs(
            &dir,
            &format!("runs-{cycle}.json"),
            &[crate::evidence::run(
                "pacman-builder",
                "0.2.1",
                "render_smoke",
                "gpt-4.1",
                cycle % 5 != 0,
            )],
        );
        let daemon = &cluster.daemons[z];
        stdout(&daemon.cli_as(
            Some(&attest_tokens[z]),
            &["attest", &runs, "--key", attester.to_str().expect("utf-8")],
        ));
        attested += 1;
        // Then the crash: a random daemon, under load; every tenth cycle PostgreSQL too.
        let victim = dice.next(3);
        cluster.kill_and_restart(victim).await;
        if cycle % 10 == 9 {
            cluster.pg.restart();
            cluster.settled().await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut totals = (0, 0);
    for worker in workers {
        let (ok, failed) = worker.await.expect("a load worker");
        totals = (totals.0 + ok, totals.1 + failed);
    }
    eprintln!(
        "{cycles} cycles in {:?}: {} acknowledged and {} refused requests under load, {attested} attestations, {} publication races",
        started.elapsed(),
        totals.0,
        totals.1,
        winners.len()
    );
    let acknowledged = std::mem::take(&mut *acknowledged.lock().expect("acknowledged"));
    assert!(
        acknowledged.blobs.len() > 100 && acknowledged.entries.len() > 100,
        "the load was too light to mean anything: {} blobs, {} entries",
        acknowledged.blobs.len(),
        acknowledged.entries.len()
    );

    // Everything acknowledged, seen identically through every daemon.
    let size = crate::registry::log_size(&cluster.daemons[0]).await;
    cluster.caught_up(size).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut views = Vec::new();
    for daemon in &cluster.daemons {
        let client = daemon.connect(Some(&daemon.token)).await;
        let mut store = client.store();
        for (sha, seed, len) in &acknowledged.blobs {
            let (_, data) = crate::cas::get(&mut store, sha, 0, 0)
                .await
                .unwrap_or_else(|s| panic!("{sha} through {}: {s:?}", daemon.address));
            assert_eq!(data, crate::pattern(*seed, *len).to_vec(), "{sha}");
        }
        let mut log = client.ledger();
        for (index, n) in &acknowledged.entries {
            let entry = log
                .get_entry(pb::GetEntryRequest { index: *index })
                .await
                .unwrap_or_else(|s| panic!("entry {index} through {}: {s:?}", daemon.address))
                .into_inner();
            assert_eq!(entry.kind, "ScaleProbe", "entry {index}");
            assert_eq!(
                entry.payload_cbor,
                encode_value(&Value::Integer((*n).into())),
                "entry {index}"
            );
        }
        let versions = stdout(&daemon.cli_as(None, &["versions", "pacman-builder", "--json"]));
        let report = stdout(&daemon.cli_as(None, &["report", "pacman-builder@0.2.1", "--json"]));
        // Ages are measured at the moment of asking; everything else must be identical.
        let mut report: serde_json::Value = serde_json::from_str(&report).expect("report --json");
        for row in report["rows"].as_array_mut().into_iter().flatten() {
            row["age_ms"] = serde_json::Value::Null;
        }
        views.push((versions, report.to_string()));
    }
    for (i, view) in views.iter().enumerate().skip(1) {
        assert_eq!(view.0, views[0].0, "daemon {i} lists other versions");
        assert_eq!(view.1, views[0].1, "daemon {i} reports other runs");
    }
    let listed: serde_json::Value = serde_json::from_str(&views[0].0).expect("versions --json");
    let count = listed
        .as_array()
        .map(|v| v.len())
        .or_else(|| listed["versions"].as_array().map(|v| v.len()));
    assert_eq!(
        count,
        Some(cycles + 1),
        "0.2.1 and one winner per race: {listed}"
    );

    // One log: Go's verifier checks checkpoints and proofs, and each daemon's export audits
    // (every checkpoint any daemon signed is a checkpoint of the one tree).
    crate::interop::go_verifies_the_log(&cluster.daemons[1], &dir.join("go")).await;
    for (i, daemon) in cluster.daemons.iter().enumerate() {
        crate::postgres::export_audits(daemon, &dir.join(format!("export-{i}")));
    }

    // The operator's tools read the shared state directly, while the daemons run: a scrub of
    // the PostgreSQL ledger and every blob in the bucket finds nothing damaged, and an export
    // straight from the database audits.
    // Uploads cut off by a PostgreSQL restart could not remove their pending records then;
    // each daemon sweeps such records every 10 s.
    let database = cluster.store_args[1].clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let url = database.clone();
        let pending: i64 = std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
            client
                .query_one("SELECT count(*) FROM custodian_pending_uploads", &[])
                .expect("count pending uploads")
                .get(0)
        })
        .join()
        .expect("a counting thread");
        if pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} pending uploads are never swept"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let data_dir = cluster.daemons[0]
        .data_dir
        .to_str()
        .expect("utf-8")
        .to_string();
    let mut scrub = vec!["scrub", "--data-dir", &data_dir, "--report-only", "--json"];
    scrub.extend(cluster.store_args.iter().map(String::as_str));
    let report = stdout(&cluster.daemons[0].cli(&scrub));
    let report: serde_json::Value = serde_json::from_str(&report).expect("scrub --json");
    assert!(
        report["blobs_checked"].as_u64() >= Some(acknowledged.blobs.len() as u64),
        "{report}"
    );
    let export = dir.join("export-db");
    let ledger = &cluster.store_args[1];
    stdout(&cluster.daemons[0].cli(&[
        "log",
        "export",
        export.to_str().expect("utf-8"),
        "--data-dir",
        &data_dir,
        "--ledger",
        ledger,
    ]));
    crate::postgres::audits(&cluster.daemons[0], &export);
}

/// Polls `done` every 200 ms; fails with `what` after `seconds`.
async fn until(done: impl Fn() -> bool, seconds: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_that_loses_postgresql_refuses_writes_and_keeps_serving_reads() {
    let cluster = Cluster::start(1);
    let daemon = &cluster.daemons[0];
    let dir = cluster.dir.path();
    let (key, _) = generate_key(dir, "publisher");
    let first = variant(dir, "first", "0.2.1", false);
    stdout(&daemon.cli(&[
        "publish",
        first.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
    ]));
    let ready = || {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("{}/readyz", daemon.rest))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(ready(), "200");

    cluster.pg.stop();
    let client = daemon.connect(Some(&daemon.token)).await;
    let appended = client.ledger().append(append_request(1)).await;
    let status = appended.expect_err("an append without the database");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("postgres"), "{status:?}");
    let data = crate::pattern(5, 4096);
    let sha = custodian_core::Digest::of(custodian_core::Algorithm::Sha256, &data).to_string();
    let put = crate::cas::put(&mut client.store(), &sha, Some(4096), &data).await;
    let status = put.expect_err("a put without the database");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // Readiness says so within a probe interval, naming the database.
    until(|| ready() == "503", 15, "still ready without the database").await;
    let body = Command::new("curl")
        .arg("-s")
        .arg(format!("{}/readyz", daemon.rest))
        .output()
        .expect("curl");
    let body: serde_json::Value = serde_json::from_slice(&body.stdout).expect("readyz JSON");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["dependencies"][0]["name"], "database", "{body}");
    assert_eq!(body["dependencies"][0]["ready"], false, "{body}");
    let mut health = tonic_health::pb::health_client::HealthClient::new(daemon.channel().await);
    let overall = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        overall.status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    // What it holds in memory it still serves.
    let listed = stdout(&daemon.cli_as(None, &["versions", "pacman-builder"]));
    assert!(listed.contains("0.2.1"), "{listed}");

    // The database returns: the daemon is ready again and takes writes, with nothing lost.
    cluster.pg.start_again();
    until(
        || ready() == "200",
        30,
        "not ready again after the database returned",
    )
    .await;
    let receipt = client
        .ledger()
        .append(append_request(2))
        .await
        .expect("an append once the database is back")
        .into_inner();
    assert!(receipt.receipt.is_some());
    crate::cas::put(&mut client.store(), &sha, Some(4096), &data)
        .await
        .expect("a put once the database is back");
    crate::interop::go_verifies_the_log(daemon, &dir.join("go")).await;
}

/// Two daemons serve one OCI registry and one collection policy: blobs pushed through either
/// are in the repository through both (a manifest pushed through B names blobs pushed through
/// A, and a chunked push moves between them), unlinked through one they are gone from both, and
/// a collection on either daemon keeps
/// what the other was told is kept: a blob linked in a repository, or one whose put was just
/// acknowledged there.
#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_share_oci_repositories_uploads_and_acknowledgements() {
    use crate::oci::{
        basic, http, image_manifest, patch_chunk, push_blob, push_image_blobs, put_manifest,
    };

    const GRACE: &str = "2s";
    let cluster = Cluster::start_with(2, &["--upload-expiry", GRACE, "--gc-grace", GRACE]);
    let (a, b) = (&cluster.daemons[0], &cluster.daemons[1]);
    let (auth_a, auth_b) = (basic(&a.token), basic(&b.token));
    let files = tempfile::tempdir().expect("a scratch directory");
    let repo = "team/app";
    // A collection through `daemon`; its JSON report.
    let collect_through = |daemon: &Daemon| -> serde_json::Value {
        let report = cli_at(
            &daemon.address,
            &daemon.token,
            &["gc", "--grace", GRACE, "--json"],
        );
        assert!(
            report.status.success(),
            "{}",
            String::from_utf8_lossy(&report.stderr)
        );
        serde_json::from_slice(&report.stdout).expect("gc JSON")
    };
    // One request of the OCI API through `daemon`, as `auth`.
    let call = |method: &str, daemon: &Daemon, auth: &String, path: &str| {
        http(
            method,
            &format!("{}{path}", daemon.rest),
            std::slice::from_ref(auth),
            None,
        )
    };

    // Blobs through A, the manifest through B.
    let layer = crate::pattern(71, 300_000).to_vec();
    let layer_digest = push_image_blobs(&a.rest, &auth_a, repo, &layer, files.path());
    let manifest = image_manifest(&layer_digest, layer.len(), "shared");
    let pushed = put_manifest(&b.rest, &auth_b, repo, "v1", &manifest, files.path());
    assert_eq!(
        pushed.status, 201,
        "B takes a manifest over A's blobs: {pushed:?}"
    );
    for (daemon, auth) in [(a, &auth_a), (b, &auth_b)] {
        let got = call(
            "GET",
            daemon,
            auth,
            &format!("/v2/{repo}/blobs/{layer_digest}"),
        );
        assert_eq!(got.status, 200, "{}: {got:?}", daemon.rest);
        assert!(
            got.body == layer,
            "{} serves the layer verified",
            daemon.rest
        );
        let tags = call("GET", daemon, auth, &format!("/v2/{repo}/tags/list"));
        assert_eq!(tags.status, 200, "{}: {tags:?}", daemon.rest);
    }

    // A chunked push that moves between daemons behind a balancer: started through A, a chunk
    // through B, the next through A, closed through B; the session is in the database.
    let big = crate::pattern(75, 3_000_000).to_vec();
    let big_digest = custodian_core::Digest::of(custodian_core::Algorithm::Sha256, &big);
    let started = call("POST", a, &auth_a, &format!("/v2/{repo}/blobs/uploads/"));
    assert_eq!(started.status, 202, "{started:?}");
    let location = started.header("location").expect("Location").to_string();
    let chunks = [(0, 1_200_000), (1_200_000, big.len())];
    for (i, ((from, to), (daemon, auth))) in
        chunks.iter().zip([(b, &auth_b), (a, &auth_a)]).enumerate()
    {
        let chunk = files.path().join(format!("chunk-{i}"));
        std::fs::write(&chunk, &big[*from..*to]).expect("a chunk file");
        let patched = patch_chunk(&daemon.rest, &location, auth, *from, &chunk);
        assert_eq!(
            patched.status, 202,
            "chunk {i} through {}: {patched:?}",
            daemon.rest
        );
        assert_eq!(
            patched.header("range"),
            Some(format!("0-{}", to - 1).as_str())
        );
    }
    let closed = call(
        "PUT",
        b,
        &auth_b,
        &format!("{location}?digest={big_digest}"),
    );
    assert_eq!(closed.status, 201, "closed through B: {closed:?}");
    let got = call("GET", a, &auth_a, &format!("/v2/{repo}/blobs/{big_digest}"));
    assert_eq!(got.status, 200, "{got:?}");
    assert!(
        got.body == big,
        "the blob pushed in chunks through both daemons verifies"
    );

    // A loose blob pushed through B and unlinked through A is in neither repository.
    let loose = crate::pattern(72, 5000).to_vec();
    let loose_digest = push_blob(&b.rest, &auth_b, "team/scratch", &loose, files.path());
    let unlinked = call(
        "DELETE",
        a,
        &auth_a,
        &format!("/v2/team/scratch/blobs/{loose_digest}"),
    );
    assert_eq!(unlinked.status, 202, "{unlinked:?}");
    let gone = call(
        "HEAD",
        b,
        &auth_b,
        &format!("/v2/team/scratch/blobs/{loose_digest}"),
    );
    assert_eq!(
        gone.status, 404,
        "unlinked through A, gone through B: {gone:?}"
    );

    // Two unreferenced blobs, both out of grace; one is put again through A (told "already
    // present"), and B collects at once: B must keep it, and delete the other.
    let (kept, lapsed) = (crate::pattern(73, 4096), crate::pattern(74, 4096));
    let (kept_sha, lapsed_sha) = (
        custodian_core::Digest::of(custodian_core::Algorithm::Sha256, &kept).to_string(),
        custodian_core::Digest::of(custodian_core::Algorithm::Sha256, &lapsed).to_string(),
    );
    for (sha, data) in [(&kept_sha, &kept), (&lapsed_sha, &lapsed)] {
        let client = b.connect(Some(&b.token)).await;
        crate::cas::put(&mut client.store(), sha, Some(4096), data)
            .await
            .expect("put through B");
    }
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let client = a.connect(Some(&a.token)).await;
    crate::cas::put(&mut client.store(), &kept_sha, Some(4096), &kept)
        .await
        .expect("put again through A");
    let report = collect_through(b);
    let deleted: Vec<&str> = report["deleted"]
        .as_array()
        .expect("deleted")
        .iter()
        .map(|d| d["digest"].as_str().expect("digest"))
        .collect();
    assert!(deleted.contains(&lapsed_sha.as_str()), "{report}");
    assert!(
        deleted.contains(&loose_digest.to_string().as_str()),
        "{report}"
    );
    assert!(
        !deleted.contains(&kept_sha.as_str()),
        "A's acknowledgement keeps the blob from B's collection: {report}"
    );
    for kept_by_oci in [
        layer_digest.to_string(),
        format!("sha256:{}", hex_of(b"{}")),
    ] {
        assert!(
            !deleted.contains(&kept_by_oci.as_str()),
            "{kept_by_oci} is in team/app"
        );
    }
    // The other daemon says why the acknowledged blob is kept, from the shared record.
    let why = cli_at(&b.address, &b.token, &["blob", "why", &kept_sha, "--json"]);
    let why: serde_json::Value = serde_json::from_slice(&why.stdout).expect("why JSON");
    assert!(why.to_string().contains("grace"), "{why}");

    // Out of grace again, the blob goes, through A's collection this time.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let report = collect_through(a);
    assert!(report.to_string().contains(&kept_sha), "{report}");
    let layer_again = call(
        "GET",
        b,
        &auth_b,
        &format!("/v2/{repo}/blobs/{layer_digest}"),
    );
    assert_eq!(
        layer_again.status, 200,
        "the linked layer outlives both collections"
    );
}

/// The hex SHA-256 of `bytes`.
fn hex_of(bytes: &[u8]) -> String {
    custodian_core::Digest::of(custodian_core::Algorithm::Sha256, bytes).hex()
}
