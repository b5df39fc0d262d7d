//! A registry in memory with one published package, served by the daemon's REST routes without a
//! daemon ([`super::router_for`]): what the in-process REST tests (`rest/tests.rs`) and the fuzz
//! target `rest_multipart` send their requests to, so that both meet the same setup. Compiled
//! for tests and with the `fixture` feature only; the daemon never builds it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use custodian_core::note::SignerKey;
use custodian_core::package::{FileEntry, PackageStatement};
use custodian_core::{Algorithm, Digest};
use custodian_storage::ledger::Ledger;
use custodian_storage::{BlobStore, Expectation, MemoryBackend, MemoryLedger};

use crate::auth::{Authenticator, Scope};
use crate::registry::Registry;
use crate::sequencer::{Sequencer, SequencerConfig};

/// The published package's name.
pub const NAME: &str = "fixture-pkg";

/// The published package's version.
pub const VERSION: &str = "1.0.0";

/// The published version's `manifest.yaml`, its only file.
pub const MANIFEST: &str = "name: fixture-pkg\nversion: 1.0.0\ntype: eval_suite\nbase_model: [m0]\nevals: [e0]\nlicense: Apache-2.0\n";

/// What [`published`] serves.
pub struct Published {
    /// The REST routes.
    pub app: axum::Router,
    /// An admin token's secret, for `Authorization: Bearer`.
    pub token: String,
}

/// Publishes [`NAME`]@[`VERSION`] into a registry whose custody and ledger are in memory (the
/// tokens, upload sessions and OCI links under `dir`) and returns its REST routes, whose uploads
/// are abandoned after `upload_idle` without data. A fixture: it panics if a step fails.
pub async fn published(dir: &Path, upload_idle: Duration) -> Published {
    let (_, token) =
        crate::auth::create_token(dir, "fixture", vec![Scope::Admin], vec!["*".into()])
            .expect("an admin token");
    let store = BlobStore::new(Arc::new(MemoryBackend::new(64 << 10)));
    let signer = SignerKey::from_seed("fixture.example/log", [7; 32]).expect("the log key");
    let ledger = Arc::new(Ledger::open(Arc::new(MemoryLedger::new()), signer).expect("the ledger"));
    let sequencer = Sequencer::start(ledger, SequencerConfig::default(), None);
    let registry = Arc::new(
        Registry::open(store.clone(), sequencer)
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
    let app = super::router_for(registry, auth, &dir.join("state"), upload_idle)
        .expect("the REST routes");
    Published { app, token }
}
