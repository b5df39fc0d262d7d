//! The REST API in process, on the registry of [`super::fixture`] (custody and the ledger in
//! memory, served by the daemon's routes): the hosted upload's multipart bodies, well formed and
//! not. Every way such a body can be wrong is the client's, so each is answered 4xx with the API's
//! JSON error saying what is wrong, never 5xx, and nothing is registered. The fixture's gRPC
//! services are called once each way (answered, refused with the field and the value), and an
//! `AppendStream` cut inside a message once. The fuzz targets `rest_multipart`, `grpc_requests`
//! and `grpc_streams` hold the same fixture to the same rules with arbitrary bytes; these cases
//! keep the rules, and the setup the targets need, checked on every test run.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use custodian_core::{Algorithm, Digest};
use http_body_util::BodyExt as _;
use tower_service::Service as _;

use super::fixture::{self, Published};

/// The boundary of the bodies [`multipart`] builds.
const BOUNDARY: &str = "XyZ";

/// The data the well-formed upload carries.
const DATA: &[u8] = b"{\"a\":1}\n{\"a\":2}\n";

/// The fixture's registry (one published version) behind the REST routes.
struct Api {
    app: Router,
    /// An admin token's secret.
    token: String,
    _dir: tempfile::TempDir,
}

async fn api() -> Api {
    let dir = tempfile::tempdir().expect("dir");
    let Published { app, token, .. } = fixture::published(dir.path(), Duration::from_secs(5)).await;
    Api {
        app,
        token,
        _dir: dir,
    }
}

fn version_path(tail: &str) -> String {
    format!(
        "/wrappers/{}/versions/{}/{tail}",
        fixture::NAME,
        fixture::VERSION
    )
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
        self.send(
            "POST",
            &version_path("data-pack/hosted"),
            content_type,
            body,
        )
        .await
    }

    /// The version's data-pack view.
    async fn data_pack(&self) -> Answer {
        self.send("GET", &version_path("data-pack"), "", Vec::new())
            .await
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
    let view = api.data_pack().await;
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
    let view = api.data_pack().await;
    assert_eq!(
        view.status,
        StatusCode::NOT_FOUND,
        "a refused upload registered a data pack: {}",
        view.json
    );
}

/// `message` in its gRPC frame: the uncompressed flag, the length, the bytes.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    body
}

/// A gRPC call of the method at `path` with `body` (its frames), as an admin of the fixture.
fn grpc_request(published: &Published, path: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {}", published.token))
        .body(Body::from(body))
        .expect("request")
}

/// Calls one unary gRPC method of the fixture with `message`, as an admin; returns the status
/// code and message of the answer (its headers when refused, its trailers when answered).
async fn grpc_call(published: &Published, path: &str, message: &[u8]) -> (String, String) {
    let request = grpc_request(published, path, framed(message));
    let mut grpc = published.grpc.clone();
    let (parts, body) = grpc.call(request).await.expect("infallible").into_parts();
    let collected = body.collect().await.expect("body");
    let fields = match parts.headers.get("grpc-status") {
        Some(_) => parts.headers,
        None => collected.trailers().cloned().unwrap_or_default(),
    };
    let text = |name: &str| {
        fields
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    (text("grpc-status"), text("grpc-message"))
}

#[tokio::test]
async fn the_fixture_serves_the_grpc_services_on_the_same_registry() {
    use prost::Message as _;
    let dir = tempfile::tempdir().expect("dir");
    let published = fixture::published(dir.path(), Duration::from_secs(5)).await;
    let request = custodian_proto::registry::v1::GetVersionRequest {
        name: fixture::NAME.into(),
        version: fixture::VERSION.into(),
    };
    let (code, why) = grpc_call(
        &published,
        "/custodian.registry.v1.Registry/GetVersion",
        &request.encode_to_vec(),
    )
    .await;
    assert_eq!(code, "0", "the published version: {why}");
    // A refusal names the field and the value (here percent-encoded, as gRPC sends messages).
    let request = custodian_proto::cas::v1::StatRequest {
        digest: "sha256:nope".into(),
    };
    let (code, why) = grpc_call(
        &published,
        "/custodian.cas.v1.ContentStore/Stat",
        &request.encode_to_vec(),
    )
    .await;
    assert_eq!(code, "3", "INVALID_ARGUMENT: {why}");
    assert!(
        why.contains("digest") && why.contains("nope"),
        "the refusal says {why:?}"
    );
}

/// An `AppendStream` whose last message is cut short, after one of its bytes or before any: the
/// whole message before it is answered, then the stream ends refused, once, saying where it was
/// cut. (tonic's reader took a stream cut right after a message's prefix for a clean end, and
/// after a cut inside a message it repeats its refusal each time it is read again: the daemon's
/// answers ran on after it, so a reader of the answer that reads until the end, as this test does,
/// never got there.)
#[tokio::test]
async fn an_append_stream_cut_inside_a_message_answers_what_came_whole_and_ends() {
    use custodian_proto::ledger::v1 as pb;
    use prost::Message as _;
    let dir = tempfile::tempdir().expect("dir");
    let published = fixture::published(dir.path(), Duration::from_secs(5)).await;
    let request = pb::AppendRequest {
        kind: "FuzzEvent".into(),
        payload_cbor: vec![0xa1, 0x61, 0x61, 0x01].into(),
        compact: true,
    }
    .encode_to_vec();
    // The next message's prefix and one of its nine bytes; its prefix alone.
    // The cut message's bytes that arrived, of its 14 (prefix included).
    for (tail, arrived) in [(&[0, 0, 0, 0, 9, 0x0a][..], 6), (&[0, 0, 0, 0, 9][..], 5)] {
        let body = [framed(&request), tail.to_vec()].concat();
        let request = grpc_request(&published, "/custodian.ledger.v1.Ledger/AppendStream", body);
        let mut grpc = published.grpc.clone();
        let mut body = grpc.call(request).await.expect("infallible").into_body();
        // At most a few frames are read, so that an answer that never ends fails here.
        let mut data = Vec::new();
        let mut trailers = Vec::new();
        for _ in 0..8 {
            let Some(frame) = body.frame().await else {
                break;
            };
            let frame = frame.expect("a frame");
            match frame.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => trailers.extend(frame.into_trailers().ok()),
            }
        }
        assert!(
            body.frame().await.is_none(),
            "the answer ends after its trailers"
        );
        assert_eq!(trailers.len(), 1, "one status: {trailers:?}");
        let field = |name: &str| {
            trailers[0]
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        assert_eq!(field("grpc-status").as_deref(), Some("13"), "{trailers:?}");
        assert_eq!(
            field("grpc-message").as_deref(),
            Some(
                format!(
                    "the%20AppendStream%20stream%20ended%20inside%20a%20message:%20{arrived}%20of%20its%2014%20bytes%20arrived"
                )
                .as_str()
            )
        );
        assert!(data.len() > 5, "one answer before the status");
        let answer = pb::AppendStreamResponse::decode(&data[5..]).expect("an answer");
        assert_eq!(
            (answer.error_code, answer.receipt),
            (0, None),
            "appended, compact"
        );
        assert_eq!(answer.leaf_hash.len(), 32);
    }
}
