//! The REST hosted data-pack upload (`POST …/data-pack/hosted`) with arbitrary multipart bodies
//! and content types, through the daemon's router in process (`rest::router_for`: registry,
//! ledger and custody in memory). Beyond "no panic": no answer is a server error, since every
//! way a body can be wrong is the client's and must be answered 4xx with a reason. The unit tests
//! in custodian-server's `rest/tests.rs` hold the same router to the same rule on named cases.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use custodian_core::note::SignerKey;
use custodian_core::package::{FileEntry, PackageStatement};
use custodian_core::{Algorithm, Digest};
use custodian_server::auth::{Authenticator, Scope};
use custodian_server::{Registry, Sequencer, SequencerConfig, rest};
use custodian_storage::ledger::Ledger;
use custodian_storage::{BlobStore, Expectation, MemoryBackend, MemoryLedger};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;

struct World {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
    token: String,
    _dir: tempfile::TempDir,
}

const MANIFEST: &str = "name: fuzz-pkg\nversion: 1.0.0\ntype: eval_suite\nbase_model: [m0]\nevals: [e0]\nlicense: Apache-2.0\n";

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, token) = custodian_server::auth::create_token(
            dir.path(),
            "fuzz",
            vec![Scope::Admin],
            vec!["*".into()],
        )
        .expect("token");
        let app = runtime.block_on(async {
            let store = BlobStore::new(Arc::new(MemoryBackend::new(1 << 20)));
            let signer = SignerKey::from_seed("fuzz.example/log", [7; 32]).expect("log key");
            let ledger =
                Arc::new(Ledger::open(Arc::new(MemoryLedger::new()), signer).expect("ledger"));
            let sequencer = Sequencer::start(ledger, SequencerConfig::default(), None);
            let registry = Arc::new(
                Registry::open(store.clone(), sequencer)
                    .await
                    .expect("registry"),
            );
            let auth = Arc::new(Authenticator::new(dir.path()).expect("auth"));
            let who = auth
                .authenticate(Some(&format!("Bearer {token}")))
                .expect("principal");
            let digest = Digest::of(Algorithm::Sha256, MANIFEST.as_bytes());
            store
                .put_bytes(
                    Expectation::default(),
                    Bytes::from_static(MANIFEST.as_bytes()),
                )
                .await
                .expect("manifest blob");
            let statement = PackageStatement::new(
                "fuzz-pkg",
                "1.0.0",
                "eval_suite",
                vec![FileEntry {
                    path: "manifest.yaml".into(),
                    sha256: digest,
                    size: MANIFEST.len() as u64,
                }],
            )
            .expect("statement");
            let publisher = SignerKey::from_seed("fuzz-publisher", [8; 32]).expect("key");
            registry
                .publish(
                    &who,
                    &statement.sign(&publisher).to_json(),
                    &publisher.verifier().to_string(),
                    false,
                    None,
                )
                .await
                .expect("publish");
            rest::router_for(
                registry,
                auth,
                &dir.path().join("state"),
                Duration::from_secs(1),
            )
            .expect("router")
        });
        World {
            runtime,
            app,
            token,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    // Mostly the boundary the seeds use, sometimes a boundary taken from the body's first line,
    // a quoted one, or none at all.
    let content_type = match selector % 8 {
        0 => "multipart/form-data".to_string(),
        1 => "multipart/form-data; boundary=\"b o\"".to_string(),
        2 => {
            let line = body.split(|&b| b == b'\r').next().unwrap_or_default();
            let boundary = String::from_utf8_lossy(line.strip_prefix(b"--").unwrap_or(line));
            format!("multipart/form-data; boundary={boundary}")
        }
        3 => "application/json".to_string(),
        _ => "multipart/form-data; boundary=XyZ".to_string(),
    };
    let Ok(request) = http::Request::post("/wrappers/fuzz-pkg/versions/1.0.0/data-pack/hosted")
        .header("content-type", content_type)
        .header("authorization", format!("Bearer {}", world.token))
        .body(axum::body::Body::from(body.to_vec()))
    else {
        return;
    };
    let response = world
        .runtime
        .block_on(world.app.clone().oneshot(request))
        .expect("the router is infallible");
    assert!(
        !response.status().is_server_error(),
        "a request body got {}",
        response.status()
    );
});
