//! A registry in memory with one published package, served by the daemon's REST routes, its
//! four gRPC services and its local put socket without a daemon: what the in-process REST tests
//! (`rest/tests.rs`) and the fuzz targets built with the `server` feature (`fuzz/README.md` lists
//! them) send their requests to, so that all of them meet the same setup. Compiled for tests and
//! with the `fixture` feature only; the daemon never builds it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use custodian_core::note::SignerKey;
use custodian_core::package::{FileEntry, PackageStatement};
use custodian_core::{Algorithm, Digest};
use custodian_storage::ledger::Ledger;
use custodian_storage::uploads::{DEFAULT_UPLOAD_EXPIRY, UploadSessions};
use custodian_storage::{BlobStore, Expectation, MemoryBackend, MemoryLedger};

use crate::auth::{Authenticator, Scope};
use crate::grpc::local_put::{LocalPutConfig, LocalPutSocket};
use crate::oci::{Oci, OciConfig};
use crate::registry::Registry;
use crate::rest::LocalPutAnnouncement;
use crate::scan::StreamScans;
use crate::sequencer::{Sequencer, SequencerConfig};
use crate::{CasLimits, CasService, LedgerService};

/// The published package's name.
pub const NAME: &str = "fixture-pkg";

/// The published package's version.
pub const VERSION: &str = "1.0.0";

/// The published version's `manifest.yaml`, its only file.
pub const MANIFEST: &str = "name: fixture-pkg\nversion: 1.0.0\ntype: eval_suite\nbase_model: [m0]\nevals: [e0]\nlicense: Apache-2.0\n";

/// The grace period the fixture's garbage collection and `Why` judge with when a call names
/// none (the daemon's `serve --gc-grace`).
pub const GC_GRACE: Duration = Duration::from_secs(3600);

/// What [`published`] serves.
pub struct Published {
    /// The REST routes.
    pub app: axum::Router,
    /// The gRPC services (`ContentStore`, `Ledger`, `Registry`, `Evidence`) as the daemon
    /// configures them, on the same registry; requests are HTTP/2-framed gRPC calls.
    pub grpc: axum::Router,
    /// An admin token's secret, for `Authorization: Bearer`.
    pub token: String,
    /// The local put socket, served as the daemon serves it (docs/api.md, "Local puts"), if
    /// its path in the fixture's directory could be bound.
    pub local_put: Option<LocalPutAnnouncement>,
}

/// Publishes [`NAME`]@[`VERSION`] into a registry whose custody and ledger are in memory (the
/// tokens, upload sessions and OCI links under `dir`) and returns its REST routes, whose uploads
/// are abandoned after `upload_idle` without data, and its gRPC services. A fixture: it panics
/// if a step fails.
pub async fn published(dir: &Path, upload_idle: Duration) -> Published {
    published_expiring(dir, upload_idle, DEFAULT_UPLOAD_EXPIRY).await
}

/// [`published`], with upload sessions that expire after `upload_expiry` instead of the daemon's
/// default. A garbage collection may not be asked for a grace shorter than that, so
/// `Duration::ZERO` lets one collect blobs uploaded a moment before (the `retention` fuzz target).
pub async fn published_expiring(
    dir: &Path,
    upload_idle: Duration,
    upload_expiry: Duration,
) -> Published {
    let (_, token) =
        crate::auth::create_token(dir, "fixture", vec![Scope::Admin], vec!["*".into()])
            .expect("an admin token");
    let store = BlobStore::new(Arc::new(MemoryBackend::new(64 << 10)));
    let signer = SignerKey::from_seed("fixture.example/log", [7; 32]).expect("the log key");
    let ledger = Arc::new(Ledger::open(Arc::new(MemoryLedger::new()), signer).expect("the ledger"));
    let sequencer = Sequencer::start(ledger, SequencerConfig::default(), None);
    let registry = Arc::new(
        Registry::open(store.clone(), sequencer.clone())
            .await
            .expect("the registry"),
    );
    let auth = Arc::new(Authenticator::new(dir).expect("the authenticator"));
    let who = auth
        .authenticate(Some(&format!("Bearer {token}")))
        .expect("the admin token");
    let manifest = Digest::of(Algorithm::Sha256, MANIFEST.as_bytes());
    store
        .put_bytes(
            Expectation::default(),
            Bytes::from_static(MANIFEST.as_bytes()),
        )
        .await
        .expect("the manifest into custody");
    let statement = PackageStatement::new(
        NAME,
        VERSION,
        "eval_suite",
        vec![FileEntry {
            path: "manifest.yaml".into(),
            sha256: manifest,
            size: MANIFEST.len() as u64,
        }],
    )
    .expect("the package statement");
    let publisher = SignerKey::from_seed("fixture-publisher", [8; 32]).expect("the publisher key");
    registry
        .publish(
            &who,
            &statement.sign(&publisher).to_json(),
            &publisher.verifier().to_string(),
            false,
            None,
        )
        .await
        .expect("the publication");
    // What the REST routes need besides the registry and the authenticator, as the daemon opens
    // them but in `dir`: upload sessions, the OCI front end's links, stream scans with their own
    // bound, and the local put socket.
    let uploads = Arc::new(
        UploadSessions::open(
            &dir.join("uploads"),
            upload_expiry,
            registry.store().clone(),
        )
        .expect("the upload sessions"),
    );
    let oci = Arc::new(
        Oci::open(
            registry.clone(),
            &dir.join("oci"),
            OciConfig::default(),
            uploads.clone(),
        )
        .expect("the OCI front end"),
    );
    let stream_scans = Arc::new(StreamScans::new(uploads.expiry()));
    let limits = CasLimits::default();
    let socket = LocalPutSocket::bind(&LocalPutConfig {
        path: dir.join("local-put.sock"),
        required: false,
    })
    .expect("the local put socket");
    let cas = CasService::new(
        store,
        uploads.clone(),
        Arc::new(crate::retention::Collector::new(
            registry.clone(),
            oci.clone(),
            uploads.clone(),
        )),
        GC_GRACE,
        limits,
        registry.clone(),
        auth.clone(),
    )
    .with_local_put_socket(socket.as_ref().map(LocalPutSocket::path));
    let local_put = socket.map(|socket| {
        let announced = LocalPutAnnouncement {
            path: socket.path().to_path_buf(),
            instance: cas.local_put_instance().to_string(),
        };
        // The socket is served until the runtime ends: the task that holds the stop signal's
        // sender never finishes, so the signal never comes.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _stop = stop;
            std::future::pending::<()>().await
        });
        // A test or a fuzz target connects once at a time; 16 connections at once and a
        // second's grace are room enough.
        tokio::spawn(crate::grpc::local_put::serve(
            socket,
            cas.clone(),
            stream_scans.clone(),
            16,
            Duration::from_secs(1),
            stopped,
        ));
        announced
    });
    let grpc = crate::grpc::Services::new(
        cas,
        LedgerService::new(sequencer, None, registry.clone(), auth.clone()),
        &registry,
        &auth,
        limits.max_message_size_bytes,
    )
    .into_axum_router();
    let app = super::router(
        registry,
        auth,
        upload_idle,
        oci,
        uploads,
        stream_scans,
        local_put.clone(),
    );
    Published {
        app,
        grpc,
        token,
        local_put,
    }
}
