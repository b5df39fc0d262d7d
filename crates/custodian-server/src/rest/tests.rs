//! The REST API in process, through [`super::router_for`], with custody and the ledger in memory:
//! the hosted upload's multipart bodies, well formed and not. Every way such a body can be wrong
//! is the client's, so each is answered 4xx with the API's JSON error saying what is wrong, never
//! 5xx, and nothing is registered. The fuzz target `rest_multipart` holds the same router to the
//! same rule with arbitrary bytes; these cases keep the rule, and the constructor the target
//! needs, checked on every test run.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use custodian_core::note::SignerKey;
use custodian_core::package::{FileEntry, PackageStatement};
use custodian_core::{Algorithm, Digest};
use custodian_storage::ledger::Ledger;
use custodian_storage::{BlobStore, Expectation, MemoryBackend, MemoryLedger};
use http_body_util::BodyExt as _;
use tower_service::Service as _;

use crate::auth::{Authenticator, Scope};
use crate::registry::Registry;
use crate::sequencer::{Sequencer, SequencerConfig};

const MANIFEST: &str = "name: rest-pkg\nversion: 1.0.0\ntype: eval_suite\nbase_model: [m0]\nevals: [e0]\nlicense: Apache-2.0\n";

const HOSTED: &str = "/wrappers/rest-pkg/versions/1.0.0/data-pack/hosted";

/// The boundary of the bodies [`multipart`] builds.
const BOUNDARY: &str = "XyZ";

/// The data the well-formed upload carries.
const DATA: &[u8] = b"{\"a\":1}\n{\"a\":2}\n";

/// A registry with one published version, `rest-pkg@1.0.0`, served by [`super::router_for`].
struct Api {
    app: Router,
    /// An admin token's secret.
    token: String,
    _dir: tempfile::TempDir,
}

async fn api() -> Api {
    let dir = tempfile::tempdir().expect("dir");
    let (_, token) =
        crate::auth::create_token(dir.path(), "rest", vec![Scope::Admin], vec!["*".into()])
            .expect("token");
    let store = BlobStore::new(Arc::new(MemoryBackend::new(64 << 10)));
    let signer = SignerKey::from_seed("rest.test/log", [7; 32]).expect("log key");
    let ledger = Arc::new(Ledger::open(Arc::new(MemoryLedger::new()), signer).expect("ledger"));
    let sequencer = Sequencer::start(ledger, SequencerConfig::default(), None);
    let registry = Arc::new(
        Registry::open(store.clone(), sequencer)
            .await
            .expect("open"),
    );
    let auth = Arc::new(Authenticator::new(dir.path()).expect("auth"));
    let who = auth
        .authenticate(Some(&format!("Bearer {token}")))
        .expect("admin");
    let manifest = Digest::of(Algorithm::Sha256, MANIFEST.as_bytes());
    store
        .put_bytes(
            Expectation::default(),
            Bytes::from_static(MANIFEST.as_bytes()),
        )
        .await
        .expect("manifest into custody");
    let statement = PackageStatement::new(
        "rest-pkg",
        "1.0.0",
        "eval_suite",
        vec![FileEntry {
            path: "manifest.yaml".into(),
            sha256: manifest,
            size: MANIFEST.len() as u64,
        }],
    )
    .expect("statement");
    let publisher = SignerKey::from_seed("rest-publisher", [8; 32]).expect("publisher key");
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
    let app = super::router_for(
        registry,
        auth,
        &dir.path().join("state"),
        Duration::from_secs(5),
    )
    .expect("router");
    Api {
        app,
        token,
        _dir: dir,
    }
}

impl Api {
    /// Sends one request with the admin token; returns the status and the body as JSON (`Null`
    /// when it is not JSON).
    async fn send(&self, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> Answer {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", content_type)
            .header("authorization", format!("Bearer {}", self.token))
            .body(Body::from(body))
            .expect("request");
        let mut app = self.app.clone();
        let response = app.call(request).await.expect("the router is infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Answer {
            status,
            json: serde_json::from_slice(&bytes).unwrap_or_default(),
        }
    }

    async fn post_hosted(&self, content_type: &str, body: Vec<u8>) -> Answer {
        self.send("POST", HOSTED, content_type, body).await
    }
}

/// A response as the tests read it.
struct Answer {
    status: StatusCode,
    json: serde_json::Value,
}

impl Answer {
    /// The API error's code and message (empty when the answer is not an API error).
    fn error(&self) -> (&str, &str) {
        let error = &self.json["error"];
        (
            error["code"].as_str().unwrap_or_default(),
            error["message"].as_str().unwrap_or_default(),
        )
    }
}

/// A multipart/form-data body (boundary [`BOUNDARY`]) with the parts `(name, content)` in order.
fn multipart(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, content) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        body.extend_from_slice(
            format!(
                "Content-Disposition: form-data; name=\"{name}\"; filename=\"d.jsonl\"\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn form() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

#[tokio::test]
async fn a_well_formed_hosted_upload_is_registered_with_its_digest() {
    let api = api().await;
    let body = multipart(&[("metadata", br#"{"license":"CC0-1.0"}"#), ("file", DATA)]);
    let answer = api.post_hosted(&form(), body).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    let sha256 = Digest::of(Algorithm::Sha256, DATA).to_string();
    assert_eq!(
        answer.json["record"]["sha256"],
        sha256.as_str(),
        "{}",
        answer.json
    );
    let view = api
        .send(
            "GET",
            "/wrappers/rest-pkg/versions/1.0.0/data-pack",
            "",
            Vec::new(),
        )
        .await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.json);
    assert_eq!(view.json["sha256"], sha256.as_str(), "{}", view.json);
}

#[tokio::test]
async fn malformed_hosted_uploads_are_refused_with_a_reason_and_nothing_is_registered() {
    let api = api().await;
    let wrong_digest = format!(
        r#"{{"license":"CC0-1.0","sha256":"{}"}}"#,
        Digest::of(Algorithm::Sha256, b"other bytes")
    );
    let huge = format!(
        r#"{{"license":"CC0-1.0","filename":"{}"}}"#,
        "x".repeat(70_000)
    );
    let valid = multipart(&[("metadata", br#"{"license":"CC0-1.0"}"#), ("file", DATA)]);
    // (what is wrong, content type, body, the error code, words its message must hold)
    let cases: Vec<(&str, String, Vec<u8>, &str, &str)> = vec![
        (
            "not multipart",
            "application/json".into(),
            b"{}".to_vec(),
            "invalid_multipart",
            "multipart body",
        ),
        (
            "no boundary",
            "multipart/form-data".into(),
            valid.clone(),
            "invalid_multipart",
            "multipart body",
        ),
        (
            "another boundary",
            "multipart/form-data; boundary=other".into(),
            valid.clone(),
            "invalid_multipart",
            "multipart body",
        ),
        (
            "empty body",
            form(),
            Vec::new(),
            "invalid_multipart",
            "multipart body",
        ),
        (
            "truncated in the metadata",
            form(),
            valid[..60].to_vec(),
            "invalid_multipart",
            "multipart body",
        ),
        (
            "truncated in the file",
            form(),
            valid[..valid.len() - 12].to_vec(),
            "invalid_multipart",
            "multipart body",
        ),
        (
            "metadata not JSON",
            form(),
            multipart(&[("metadata", b"{\"license\":"), ("file", DATA)]),
            "invalid_argument",
            "part metadata",
        ),
        (
            "metadata over 64 KiB",
            form(),
            multipart(&[("metadata", huge.as_bytes()), ("file", DATA)]),
            "invalid_multipart",
            "over 65536 bytes",
        ),
        (
            "file before metadata",
            form(),
            multipart(&[("file", DATA), ("metadata", br#"{"license":"CC0-1.0"}"#)]),
            "invalid_multipart",
            "must come before",
        ),
        (
            "an unknown part",
            form(),
            multipart(&[("notes", b"hello")]),
            "invalid_multipart",
            "unexpected part \"notes\"",
        ),
        (
            "no file part",
            form(),
            multipart(&[("metadata", br#"{"license":"CC0-1.0"}"#)]),
            "invalid_multipart",
            "no part named \"file\"",
        ),
        (
            "no license",
            form(),
            multipart(&[("metadata", b"{}"), ("file", DATA)]),
            "invalid_argument",
            "license",
        ),
        (
            "bytes that are not the declared digest",
            form(),
            multipart(&[("metadata", wrong_digest.as_bytes()), ("file", DATA)]),
            "digest_mismatch",
            "sha256",
        ),
    ];
    for (what, content_type, body, code, words) in cases {
        let answer = api.post_hosted(&content_type, body).await;
        assert!(
            answer.status.is_client_error(),
            "{what}: answered {} {}",
            answer.status,
            answer.json
        );
        let (got_code, message) = answer.error();
        assert_eq!(got_code, code, "{what}: {}", answer.json);
        assert!(
            message.contains(words),
            "{what}: the message {message:?} does not say {words:?}"
        );
    }
    let view = api
        .send(
            "GET",
            "/wrappers/rest-pkg/versions/1.0.0/data-pack",
            "",
            Vec::new(),
        )
        .await;
    assert_eq!(
        view.status,
        StatusCode::NOT_FOUND,
        "a refused upload registered a data pack: {}",
        view.json
    );
}
