//! What the REST and gRPC targets share: custodian-server's `rest::fixture` (one published
//! package; registry, ledger and custody in memory) behind the daemon's REST routes and gRPC
//! services, built once per process, and one request sent through them.

// Each target uses part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use custodian_core::note::SignerKey;
use custodian_core::package::{FileEntry, PackageStatement};
use custodian_core::{Algorithm, Digest};
use custodian_proto::cas::v1 as cas;
use custodian_proto::registry::v1 as registry;
use custodian_server::rest::LocalPutAnnouncement;
use custodian_server::rest::fixture::{self, Published};
use http_body_util::BodyExt as _;
use prost::Message as _;
use tower::ServiceExt as _;

type Request = http::Request<axum::body::Body>;
type Response = http::Response<axum::body::Body>;

/// The fixture's routes and what a request needs to reach them.
pub struct World {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
    grpc: axum::Router,
    /// An admin token's secret.
    pub token: String,
    /// The fixture's local put socket, served on the world's runtime.
    pub local_put: LocalPutAnnouncement,
}

/// A directory of this process's own under `parent` in the system's temporary directory: the
/// fixture's (tokens, upload sessions, OCI links, the local put socket), or a target's scratch
/// files. libFuzzer ends a run with `exit`, which drops no statics, so a run cannot remove its
/// own: each run removes those of runs whose process has ended.
pub fn process_dir(parent: &str) -> PathBuf {
    let parent = std::env::temp_dir().join(parent);
    std::fs::create_dir_all(&parent).expect("the fixtures' parent directory");
    for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().parse::<u32>().ok();
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = parent.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the fixture's directory");
    dir
}

/// The process's world, built on first use.
pub fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| build(None))
}

/// The process's world with upload sessions that expire at once, so that a garbage collection
/// may be asked for no grace at all and collect what was uploaded a moment before; built on
/// first use (a target uses this one or [`world`], not both).
pub fn world_without_grace() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| build(Some(Duration::ZERO)))
}

/// Builds a world whose upload sessions expire after `upload_expiry`, or the daemon's default.
fn build(upload_expiry: Option<Duration>) -> World {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = process_dir("custodian-fuzz-rest");
    let Published {
        app,
        grpc,
        token,
        local_put,
    } = runtime.block_on(async {
        let idle = Duration::from_secs(1);
        match upload_expiry {
            Some(expiry) => fixture::published_expiring(&dir, idle, expiry).await,
            None => fixture::published(&dir, idle).await,
        }
    });
    World {
        runtime,
        app,
        grpc,
        token,
        local_put: local_put.expect("the fixture's local put socket"),
    }
}

impl World {
    /// Sends `request` through the REST routes.
    pub fn send(&self, request: Request) -> Response {
        self.through(&self.app, request)
    }

    /// Sends a gRPC call (an HTTP/2-framed request) through the gRPC services.
    pub fn send_grpc(&self, request: Request) -> Response {
        self.through(&self.grpc, request)
    }

    fn through(&self, router: &axum::Router, request: Request) -> Response {
        self.runtime
            .block_on(router.clone().oneshot(request))
            .expect("the router is infallible")
    }

    /// Calls the gRPC method at `path` with `body` (its frames as they are, each piece of
    /// `pieces` its own HTTP/2 DATA frame), as an admin if `admin`, and reads the whole answer.
    /// Panics if the answer carries no `grpc-status`: every call must end with one.
    pub fn grpc_call(&self, path: &str, pieces: Vec<Bytes>, admin: bool) -> Answer {
        let stream = futures::stream::iter(pieces.into_iter().map(Ok::<_, std::io::Error>));
        let mut request = http::Request::post(path)
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if admin {
            request = request.header("authorization", format!("Bearer {}", self.token));
        }
        let request = request
            .body(axum::body::Body::from_stream(stream))
            .expect("request");
        let response = self.send_grpc(request);
        let status = response.status();
        let (parts, body) = response.into_parts();
        let collected = self.block_on(body.collect()).expect("the answer's body");
        // A refusal comes as headers only; an answer's status is in its trailers.
        let fields = match parts.headers.get("grpc-status") {
            Some(_) => parts.headers,
            None => collected.trailers().cloned().unwrap_or_default(),
        };
        let code = fields
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{path}: HTTP {status} without a grpc-status"))
            .to_string();
        let why = fields
            .get("grpc-message")
            .map(|v| percent_decoded(v.as_bytes()))
            .unwrap_or_default();
        Answer {
            code,
            why,
            body: collected.to_bytes(),
        }
    }

    /// Calls a method with one message, framed as gRPC frames it, as an admin if `admin`.
    pub fn grpc_unary(&self, path: &str, message: &[u8], admin: bool) -> Answer {
        self.grpc_call(path, vec![Bytes::from(framed(message))], admin)
    }

    /// Runs `future` on the world's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Publishes `fixture::NAME`@`version`, whose only file is a `manifest.yaml` naming it, so
    /// that an execution has a version of its own (a data pack is registered once per version).
    pub fn publish(&self, version: &str) {
        let (_, answer) = self.try_publish(version, Vec::new());
        assert_eq!(answer.code, "0", "publishing {version}: {}", answer.why);
    }

    /// Puts a `manifest.yaml` naming `fixture::NAME`@`version` into custody, then asks to
    /// publish the version with it and `files` (which custody may lack) as an admin. Returns the
    /// manifest's sha256 and how the publication ended.
    pub fn try_publish(&self, version: &str, mut files: Vec<FileEntry>) -> (Digest, Answer) {
        let manifest = fixture::MANIFEST.replace(fixture::VERSION, version);
        let put = cas::BatchPutRequest {
            items: vec![cas::BatchPutItem {
                data: Bytes::from(manifest.clone()),
                ..Default::default()
            }],
        };
        let _: cas::BatchPutResponse = self.call("/custodian.cas.v1.ContentStore/BatchPut", &put);
        let sha256 = Digest::of(Algorithm::Sha256, manifest.as_bytes());
        files.insert(
            0,
            FileEntry {
                path: "manifest.yaml".into(),
                sha256,
                size: manifest.len() as u64,
            },
        );
        let statement = PackageStatement::new(fixture::NAME, version, "eval_suite", files)
            .expect("the package statement");
        let publisher = SignerKey::from_seed("fixture-publisher", [8; 32]).expect("the key");
        let request = registry::PublishVersionRequest {
            envelope: statement.sign(&publisher).to_json(),
            publisher_key: publisher.verifier().to_string(),
            ..Default::default()
        };
        let answer = self.grpc_unary(
            "/custodian.registry.v1.Registry/PublishVersion",
            &request.encode_to_vec(),
            true,
        );
        (sha256, answer)
    }

    /// Whether custody holds `digest`, asked through tonic's own `BatchGet` as an admin; its
    /// bytes if it does.
    pub fn stored(&self, digest: &Digest) -> Option<Vec<u8>> {
        let request = cas::BatchGetRequest {
            digests: vec![digest.to_string()],
        };
        let response: cas::BatchGetResponse =
            self.call("/custodian.cas.v1.ContentStore/BatchGet", &request);
        assert_eq!(
            response.results.len(),
            1,
            "BatchGet answers one result per digest"
        );
        let result = &response.results[0];
        match (&result.blob, &result.error) {
            (Some(_), None) => Some(result.data.to_vec()),
            (None, Some(error)) => {
                assert_eq!(error.code, 5, "BatchGet of {digest}: {}", error.message);
                None
            }
            _ => panic!("BatchGet of {digest}: a result is a blob or an error"),
        }
    }

    /// Calls the unary method at `path` with `request` as an admin and decodes its answer;
    /// panics unless the call succeeds.
    pub fn call<A: prost::Message + Default>(
        &self,
        path: &str,
        request: &impl prost::Message,
    ) -> A {
        self.grpc_unary(path, &request.encode_to_vec(), true)
            .decoded(path)
    }

    /// The path of the fixture version's `tail` (`data-pack/hosted`, …).
    pub fn version_path(&self, tail: &str) -> String {
        format!(
            "/wrappers/{}/versions/{}/{tail}",
            fixture::NAME,
            fixture::VERSION
        )
    }
}

/// How a gRPC call ended, and what it answered.
pub struct Answer {
    /// The `grpc-status` code, as sent.
    pub code: String,
    /// The `grpc-message`, decoded, empty if none was sent.
    pub why: String,
    /// The answer's body: its messages, each in its gRPC frame.
    pub body: Bytes,
}

impl Answer {
    /// The answer's messages. Panics on a body that is not whole uncompressed frames: the
    /// daemon must frame what it sends.
    pub fn messages(&self) -> Vec<&[u8]> {
        let mut rest = &self.body[..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            assert!(
                rest.len() >= 5 && rest[0] == 0,
                "an answer's frame is malformed"
            );
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            assert!(rest.len() >= 5 + len, "an answer's frame is cut short");
            out.push(&rest[5..5 + len]);
            rest = &rest[5 + len..];
        }
        out
    }

    /// The answer's first message, empty if there is none.
    pub fn first(&self) -> &[u8] {
        self.messages().first().copied().unwrap_or_default()
    }

    /// The answer of a call that succeeded, decoded; panics, naming `what`, if the call failed
    /// or its answer does not decode.
    pub fn decoded<A: prost::Message + Default>(&self, what: &str) -> A {
        assert_eq!(self.code, "0", "{what}: {}", self.why);
        A::decode(self.first())
            .unwrap_or_else(|e| panic!("{what}: the answer does not decode: {e}"))
    }
}

/// One uncompressed gRPC message: the flag, the length, the bytes.
pub fn framed(message: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(5 + message.len());
    body.push(0);
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    body
}

/// A `grpc-message` as its sender wrote it: the gRPC protocol over HTTP/2 sends it
/// percent-encoded (`%XX` for each byte outside printable ASCII, and for `%` itself).
fn percent_decoded(sent: &[u8]) -> String {
    let mut out = Vec::with_capacity(sent.len());
    let mut rest = sent;
    while let Some((&b, tail)) = rest.split_first() {
        let escaped = (b == b'%')
            .then(|| tail.get(..2))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                rest = &tail[2..];
            }
            None => {
                out.push(b);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
