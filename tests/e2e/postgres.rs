//! A daemon whose ledger lives in PostgreSQL (`serve --ledger postgres://…`, Debian's server
//! started by custodian-testkit): publications and raw appends land there, survive `kill -9`
//! of the daemon and an immediate restart of PostgreSQL, the registry is rebuilt from it, the
//! export audits offline, and Go's sumdb/tlog checks the log before and after; an unreachable
//! database stops the daemon at start with the URL named.

use custodian_testkit::{Daemon, Postgres};

use crate::registry::{publish_example, stdout};

/// A daemon on the PostgreSQL ledger at `url`, taking raw appends with token `t`.
fn pg_daemon(data: &std::path::Path, url: &str, origin: &str) -> Daemon {
    Daemon::start_with(
        data,
        &[
            "--ledger",
            url,
            "--append-token",
            "t",
            "--log-origin",
            origin,
        ],
    )
}

/// Exports the daemon's log to `dir` over gRPC and audits it offline; returns the audit's JSON.
pub(crate) fn export_audits(daemon: &Daemon, dir: &std::path::Path) -> serde_json::Value {
    let export = dir.to_str().expect("a utf-8 path");
    stdout(&daemon.cli(&["log", "export", export]));
    audits(daemon, dir)
}

/// Audits the export in `dir` offline with the daemon's log key; asserts it is clean and
/// returns the audit's JSON.
pub(crate) fn audits(daemon: &Daemon, dir: &std::path::Path) -> serde_json::Value {
    let export = dir.to_str().expect("a utf-8 path");
    let key = stdout(&daemon.cli(&["log", "key"]));
    let audit = stdout(&daemon.cli(&["audit", export, "--key", key.trim(), "--json"]));
    let audit: serde_json::Value = serde_json::from_str(&audit).expect("audit --json");
    assert_eq!(audit["ok"], true, "the audit of {export}: {audit}");
    audit
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_keeps_its_ledger_in_postgresql() {
    let pg = Postgres::start();
    let url = pg.database("custodian");
    let dir = tempfile::tempdir().expect("a PostgreSQL ledger test step");
    let data = dir.path().join("data");
    let mut daemon = pg_daemon(&data, &url, "pg.test/ledger");
    assert!(
        !data.join("ledger").exists(),
        "the embedded ledger is not created beside a PostgreSQL one"
    );
    publish_example(&daemon, dir.path(), "pacman-builder", "publisher");
    crate::interop::go_verifies_the_log(&daemon, &dir.path().join("go-1")).await;

    // kill -9 of the daemon, then PostgreSQL itself stopped at once and started again.
    daemon.kill9();
    pg.restart();
    daemon.restart_after_kill9();
    let listed = stdout(&daemon.cli_as(None, &["versions", "pacman-builder"]));
    assert!(
        listed.contains("0.2.1"),
        "the registry replays from PostgreSQL: {listed}"
    );
    crate::interop::go_verifies_the_log(&daemon, &dir.path().join("go-2")).await;

    let audit = export_audits(&daemon, &dir.path().join("export"));
    assert!(audit["entries"].as_u64() >= Some(46), "{audit}");

    // Nothing listens on this port: the daemon refuses to start and names the URL.
    drop(daemon);
    let port = custodian_testkit::free_port();
    let nowhere = format!("postgres://custodian@127.0.0.1:{port}/custodian");
    let err = custodian_testkit::serve_refuses(&dir.path().join("other"), &["--ledger", &nowhere]);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

/// Two daemons on one PostgreSQL ledger with one log key: raw appends through both land in one
/// log (a batch built on a stale tree is rebuilt, never forked), each daemon catches up with the
/// other's entries within a second (a version published through one is listed through the
/// other), and the export from either audits: every checkpoint either signed is a checkpoint of
/// the one tree the entries make.
#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_append_to_one_postgresql_log() {
    use custodian_proto::ledger::v1 as pb;
    let pg = Postgres::start();
    let url = pg.database("shared");
    let dir = tempfile::tempdir().expect("a shared-ledger test step");
    let origin = "pg.test/shared";
    let daemons: Vec<Daemon> = ["a", "b"]
        .iter()
        .map(|name| {
            let data = dir.path().join(name);
            custodian_testkit::write_log_key(&data, origin, 21);
            pg_daemon(&data, &url, origin)
        })
        .collect();
    let mut clients = Vec::new();
    for daemon in &daemons {
        clients.push(daemon.connect(None).await.ledger());
    }
    for i in 0..30u64 {
        let mut request = tonic::Request::new(pb::AppendRequest {
            kind: "SharedCheck".into(),
            payload_cbor: custodian_core::entry::encode_value(
                &custodian_core::entry::Value::Integer(i.into()),
            )
            .into(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", "Bearer t".parse().expect("a header value"));
        clients[(i % 2) as usize]
            .append(request)
            .await
            .expect("an append through either daemon lands");
    }
    // Within a second or two each daemon serves the whole log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for client in &mut clients {
        loop {
            let size = client
                .get_checkpoint(pb::GetCheckpointRequest { tree_size: None })
                .await
                .expect("a checkpoint")
                .into_inner()
                .tree_size;
            if size == 30 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a daemon still serves size {size} of 30"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    // A publication through one daemon is listed through the other once it has followed the
    // ledger (every LEDGER_FOLLOW_EVERY, 1 s).
    publish_example(&daemons[0], dir.path(), "pacman-builder", "publisher");
    let published = std::time::Instant::now();
    loop {
        let listed = daemons[1].cli_as(None, &["versions", "pacman-builder"]);
        if listed.status.success() && String::from_utf8_lossy(&listed.stdout).contains("0.2.1") {
            break;
        }
        assert!(
            published.elapsed() < std::time::Duration::from_secs(10),
            "daemon b does not list a version published through daemon a: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    eprintln!(
        "a publication through daemon a was listed through daemon b after {:?}",
        published.elapsed()
    );
    for (daemon, name) in daemons.iter().zip(["a", "b"]) {
        let audit = export_audits(daemon, &dir.path().join(format!("export-{name}")));
        assert!(audit["entries"].as_u64() > Some(30), "{audit}");
    }
}
