//! The registry's REST API (seed 001), served by axum on its own port in the same process:
//!
//! - `GET  /wrappers/{id}/versions` — list versions
//! - `GET  /wrappers/{id}/versions/{vid}` — one version with files and signed envelope
//! - `GET  /wrappers/{id}/versions/{vid}/data-pack` — the trust view of its data pack
//! - `PUT  /wrappers/{id}/versions/{vid}/data-pack/manifest` — register an external data pack
//! - `POST /wrappers/{id}/versions/{vid}/data-pack/hosted` — upload hosted bytes (multipart)
//! - `GET  /wrappers/{id}/versions/{vid}/data-pack/download` — fetch hosted bytes (`Range` too)
//! - `GET  /blobs/{digest}` — any readable blob by digest (`Range` too)
//!
//! A wrapper id is a package name (URL-encode the `/` of a scoped name: `%40acme%2Fbot`), a vid
//! a version. Errors are JSON `{"error": {"code", "message"}}` with a stable code. The whole API
//! is described in docs/openapi.yaml, which `GET /openapi.yaml` serves.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use custodian_core::Digest;
use custodian_core::datapack::DataPackSpec;
use custodian_storage::{BlobMeta, BlobStore, ByteRange, Expectation, StorageError};
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::json;

use crate::auth::{Authenticator, Principal};
use crate::registry::{
    DataPackRecord, HostedMeta, Recorded, Registry, RegistryError, VersionRecord,
};

/// How many upload bytes are gathered before they go to the store.
const UPLOAD_PIECE: usize = 1 << 20;

/// The largest `metadata` part of a hosted upload.
const MAX_METADATA_BYTES: usize = 64 << 10;

/// The OpenAPI document, served at `/openapi.yaml`.
const OPENAPI: &str = include_str!("../../../docs/openapi.yaml");

/// Shared state of the REST handlers.
#[derive(Clone)]
pub struct RestState {
    registry: Arc<Registry>,
    auth: Arc<Authenticator>,
    store: BlobStore,
    upload_idle: std::time::Duration,
}

/// The REST router; an upload body that sends nothing for `upload_idle` is abandoned.
pub fn router(
    registry: Arc<Registry>,
    auth: Arc<Authenticator>,
    upload_idle: std::time::Duration,
) -> Router {
    let store = registry.store().clone();
    let state = RestState {
        registry,
        auth,
        store,
        upload_idle,
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/openapi.yaml",
            get(|| async { ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI) }),
        )
        .route("/wrappers/{id}/versions", get(list_versions))
        .route("/wrappers/{id}/versions/{vid}", get(get_version))
        .route(
            "/wrappers/{id}/versions/{vid}/data-pack",
            get(get_data_pack),
        )
        .route(
            "/wrappers/{id}/versions/{vid}/data-pack/manifest",
            put(put_external),
        )
        .route(
            "/wrappers/{id}/versions/{vid}/data-pack/hosted",
            // The upload streams into custody, so no body limit applies to it.
            post(post_hosted).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/wrappers/{id}/versions/{vid}/data-pack/download",
            get(download_data_pack),
        )
        .route("/wrappers/{id}/versions/{vid}/badge", get(get_badge))
        .route(
            "/wrappers/{id}/versions/{vid}/badge.svg",
            get(get_badge_svg),
        )
        .route("/wrappers/{id}/versions/{vid}/evidence", get(get_evidence))
        .route("/wrappers/{id}/versions/{vid}/report", get(get_report))
        .route("/blobs/{digest}", get(download_blob))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not answer that method; see /openapi.yaml",
            )
        })
        .fallback(|headers: HeaderMap| async move {
            let grpc = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
            if grpc {
                // A gRPC client pointed at this port: a trailers-only gRPC answer that says so,
                // instead of a JSON body the client would misread as a gRPC frame.
                return Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/grpc")
                    .header("grpc-status", "12")
                    .header(
                        "grpc-message",
                        "this%20is%20Custodian%27s%20REST%20port%3B%20gRPC%20clients%20connect%20to%20the%20gRPC%20port%20%28serve%20--listen%2C%20default%207311%29",
                    )
                    .body(Body::empty())
                    .unwrap_or_default();
            }
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see /openapi.yaml",
            )
            .into_response()
        })
        // Last, so it sees every answer: rejections that axum's extractors write as plain text
        // (a path segment that is not UTF-8, a body over the limit) become the API's JSON error.
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Rewrites an error answer that is not JSON (axum's own extractor rejections) into the API's
/// `{"error": {"code", "message"}}`, keeping its status and its text as the message.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("application/grpc"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let code = match status {
        StatusCode::BAD_REQUEST => "invalid_argument",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::REQUEST_TIMEOUT => "upload_idle",
        s if s.is_server_error() => "internal",
        _ => "invalid_argument",
    };
    let bytes = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string()
    } else {
        text
    };
    ApiError::new(status, code, message).into_response()
}

/// A JSON error with a stable code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    problems: Option<serde_json::Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            problems: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(problems) = self.problems {
            body["error"]["problems"] = problems;
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        let message = err.to_string();
        match err {
            RegistryError::InvalidArgument(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
            }
            RegistryError::Invalid(report) => ApiError {
                problems: serde_json::to_value(&report.errors).ok(),
                ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_package", message)
            },
            RegistryError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            RegistryError::AlreadyExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", message)
            }
            RegistryError::Unauthenticated(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
            }
            RegistryError::PermissionDenied(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "permission_denied", message)
            }
            RegistryError::FailedPrecondition(_) => {
                ApiError::new(StatusCode::CONFLICT, "failed_precondition", message)
            }
            // Damaged ledger data is named as such (as DATA_LOSS is over gRPC), not as an outage.
            RegistryError::Ledger(
                custodian_storage::LedgerError::Corrupt(_)
                | custodian_storage::LedgerError::Proof(_),
            ) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "data_loss", message),
            RegistryError::Ledger(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ledger_unavailable",
                message,
            ),
            RegistryError::Storage(e) => e.into(),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        let message = err.to_string();
        match err {
            StorageError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            StorageError::DigestMismatch { .. } | StorageError::SizeMismatch { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "digest_mismatch", message)
            }
            StorageError::OutOfRange { .. } => ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                message,
            ),
            StorageError::Corrupt { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "data_loss", message)
            }
            StorageError::Poisoned { .. } | StorageError::Aborted(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            StorageError::Backend { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn principal(state: &RestState, headers: &HeaderMap) -> ApiResult<Principal> {
    let header = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the Authorization header is not ASCII text",
            )
        })?),
    };
    state
        .auth
        .authenticate(header)
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()))
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

#[derive(Serialize)]
struct FileJson<'a> {
    path: &'a str,
    sha256: String,
    size: u64,
}

fn data_pack_json(registry: &Registry, record: &DataPackRecord) -> serde_json::Value {
    let mut value = serde_json::to_value(&record.event.pack).unwrap_or_default();
    let provenance_json = record
        .event
        .pack
        .provenance_json
        .as_deref()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok());
    if let Some(object) = value.as_object_mut() {
        // The ledger records the data's own version as data_version (a version row has its own
        // version); the API answers with the seed's name for it.
        if let Some(v) = object.remove("data_version") {
            object.insert("version".into(), v);
        }
        object.remove("provenance_json");
        if let Some(p) = provenance_json {
            object.insert("provenance".into(), p);
        }
        object.insert("ledger_index".into(), record.index.into());
        object.insert("registered_at".into(), rfc3339(record.time_ms).into());
        object.insert("private".into(), record.event.private.into());
        if record.event.pack.mode == "hosted" {
            // The registration recorded the first verdict; later scans (rescans, external
            // scanners) are in the ledger, and the status shown is the worst latest of them.
            if let Some(sha256) = &record.event.pack.sha256 {
                object.insert(
                    "scan_status".into(),
                    registry
                        .scan_status(&record.event.name, &record.event.version, sha256)
                        .into(),
                );
            }
            object.insert(
                "download".into(),
                format!(
                    "/wrappers/{}/versions/{}/data-pack/download",
                    encode_segment(&record.event.name),
                    record.event.version
                )
                .into(),
            );
        }
    }
    value
}

/// Percent-encodes one URL path segment (a scoped package name's `@` and `/` included).
pub fn encode_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn version_json(
    registry: &Registry,
    who: &Principal,
    record: &VersionRecord,
    full: bool,
) -> serde_json::Value {
    let e = &record.event;
    let mut value = json!({
        "name": e.name,
        "version": e.version,
        "type": e.package_type,
        "manifest_digest": e.manifest,
        "root": e.root,
        "file_count": e.files,
        "size": e.size,
        "publisher_key": e.publisher_key,
        "visibility": if e.private { "private" } else { "public" },
        "yanked": record.yanked.is_some(),
        "ledger_index": record.index,
        "published_at": rfc3339(record.time_ms),
        "scan_status": registry.scan_status(&e.name, &e.version, &e.root),
    });
    if let Some(crate::registry::Yank { reason, index, .. }) = &record.yanked {
        value["yank_reason"] = reason.clone().into();
        value["yank_ledger_index"] = (*index).into();
    }
    if let Some(pack) = record
        .data_pack
        .as_ref()
        .filter(|p| who.can_read(&e.name, p.event.private))
    {
        value["data_pack"] = data_pack_json(registry, pack);
    }
    if full {
        let files: Vec<FileJson<'_>> = record
            .files
            .iter()
            .map(|f| FileJson {
                path: &f.path,
                sha256: f.sha256.to_string(),
                size: f.size,
            })
            .collect();
        value["files"] = serde_json::to_value(files).unwrap_or_default();
        value["envelope"] = serde_json::from_str(&e.envelope).unwrap_or_default();
    }
    value
}

fn recorded_json<T>(recorded: &Recorded<T>, record: serde_json::Value) -> serde_json::Value {
    json!({
        "record": record,
        "already_recorded": recorded.already,
        "receipt": serde_json::from_str::<serde_json::Value>(&recorded.receipt.to_json()).unwrap_or_default(),
    })
}

async fn list_versions(
    State(state): State<RestState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let who = principal(&state, &headers)?;
    let versions = state.registry.list(&who, &id)?;
    Ok(axum::Json(json!({
        "name": id,
        "versions": versions.iter().map(|v| version_json(&state.registry, &who, v, false)).collect::<Vec<_>>(),
    })))
}

async fn get_version(
    State(state): State<RestState>,
    Path((id, vid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let who = principal(&state, &headers)?;
    let record = state.registry.get(&who, &id, &vid)?;
    Ok(axum::Json(version_json(
        &state.registry,
        &who,
        &record,
        true,
    )))
}

async fn get_data_pack(
    State(state): State<RestState>,
    Path((id, vid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let who = principal(&state, &headers)?;
    let pack = state.registry.data_pack(&who, &id, &vid)?;
    Ok(axum::Json(data_pack_json(&state.registry, &pack)))
}

async fn put_external(
    State(state): State<RestState>,
    Path((id, vid)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let who = principal(&state, &headers)?;
    let mut spec = DataPackSpec::parse_document(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", e))?;
    if spec.mode.is_empty() {
        spec.mode = "external".into();
    }
    let recorded = state
        .registry
        .register_external(&who, &id, &vid, spec)
        .await?;
    let status = if recorded.already {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let body = recorded_json(&recorded, data_pack_json(&state.registry, &recorded.record));
    Ok((status, axum::Json(body)).into_response())
}

fn bad_multipart(message: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_multipart",
        format!("multipart body: {message}"),
    )
}

async fn post_hosted(
    State(state): State<RestState>,
    Path((id, vid)): Path<(String, String)>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<Response> {
    let who = principal(&state, &headers)?;
    // A body that is not multipart/form-data gets the API's JSON error, not axum's plain text.
    let mut multipart = multipart.map_err(|e| bad_multipart(e.body_text()))?;
    // Fail before reading a byte of data if the caller may not write here.
    let target = state.registry.check_data_pack_target(&who, &id, &vid)?;
    let mut meta: Option<HostedMeta> = None;
    loop {
        let Some(mut field) = multipart.next_field().await.map_err(bad_multipart)? else {
            return Err(bad_multipart("no part named \"file\" with the data"));
        };
        match field.name() {
            Some("metadata") => {
                // Metadata is small; cap it so that a huge part cannot be buffered.
                let mut bytes = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(bad_multipart)? {
                    bytes.extend_from_slice(&chunk);
                    if bytes.len() > MAX_METADATA_BYTES {
                        return Err(bad_multipart(format!(
                            "the metadata part is over {MAX_METADATA_BYTES} bytes"
                        )));
                    }
                }
                meta = Some(serde_json::from_slice(&bytes).map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_argument",
                        format!("part metadata: not valid data pack metadata JSON: {e}"),
                    )
                })?);
            }
            Some("file") => {
                let Some(mut meta) = meta.take() else {
                    return Err(bad_multipart(
                        "the \"metadata\" part (JSON with at least license) must come before the \"file\" part",
                    ));
                };
                if meta.filename.is_none() {
                    meta.filename = field.file_name().map(str::to_string);
                }
                // The signed manifest's data_pack declaration is binding.
                state.registry.apply_declared(&target, &mut meta).await?;
                let expected = state.registry.check_hosted(&who, &id, &vid, &meta)?;
                let mut writer = state
                    .store
                    .begin_put(Expectation {
                        digest: expected,
                        size: None,
                    })
                    .await
                    .map_err(ApiError::from)?;
                // The body arrives in frames of a few KiB; they are gathered into 1 MiB pieces
                // (the store's block size) so that hashing and storage work in large steps. If
                // the client goes away the writer is dropped and nothing is kept.
                let mut piece = bytes::BytesMut::with_capacity(UPLOAD_PIECE);
                let idle = state.upload_idle;
                while let Some(chunk) = tokio::time::timeout(idle, field.chunk())
                    .await
                    .map_err(|_| {
                        ApiError::new(
                            StatusCode::REQUEST_TIMEOUT,
                            "upload_idle",
                            format!(
                                "no upload data arrived for {} s (serve --upload-idle-timeout); the upload is discarded",
                                idle.as_secs_f64()
                            ),
                        )
                    })?
                    .map_err(bad_multipart)?
                {
                    piece.extend_from_slice(&chunk);
                    if piece.len() >= UPLOAD_PIECE {
                        writer
                            .write(piece.split().freeze())
                            .await
                            .map_err(ApiError::from)?;
                    }
                }
                if !piece.is_empty() {
                    writer.write(piece.freeze()).await.map_err(ApiError::from)?;
                }
                let stored = writer.commit().await.map_err(ApiError::from)?;
                // Scanned in custody before it is registered, so the registration carries the
                // verdict; a repeated upload of the same bytes is not scanned again.
                let sha256 = stored.meta.digests.sha256;
                // A retry of the same bytes repeats the registration as it was recorded.
                let previous = state
                    .registry
                    .data_pack(&who, &id, &vid)
                    .ok()
                    .filter(|p| p.event.pack.sha256 == Some(sha256.to_string()))
                    .map(|p| p.event.pack.scan_status.unwrap_or_default());
                let report = match previous {
                    Some(_) => None,
                    None => {
                        let name = meta.filename.clone().unwrap_or_else(|| "data-pack".into());
                        Some(state.registry.scan_data(&target, &sha256, &name).await)
                    }
                };
                let status = match (&report, &previous) {
                    (Some(r), _) => r.verdict().as_str().to_string(),
                    (None, Some(p)) => p.clone(),
                    (None, None) => "pending".into(),
                };
                let recorded = state
                    .registry
                    .register_hosted(&who, &id, &vid, meta, &stored, &status)
                    .await?;
                let mut scan = None;
                if let Some(report) = report
                    && !recorded.already
                {
                    let scanned = state
                        .registry
                        .record_report(
                            &target,
                            Some(custodian_core::registry::DATA_PACK_TARGET),
                            sha256.to_string(),
                            report,
                        )
                        .await?;
                    scan = Some(json!({
                        "scanner": scanned.scanner,
                        "verdict": scanned.verdict.as_str(),
                        "findings": scanned.findings,
                        "ledger_index": scanned.index,
                    }));
                }
                let status = if recorded.already {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                };
                let mut body =
                    recorded_json(&recorded, data_pack_json(&state.registry, &recorded.record));
                if let Some(scan) = scan {
                    if scan["verdict"] == "flagged" {
                        body["warning"] = json!(format!(
                            "the data pack was stored and registered, but the scanner flagged it ({} finding(s) below): the version's badge fails until a clean scan is recorded, and downloads carry a warning",
                            scan["findings"].as_array().map_or(0, Vec::len)
                        ));
                    }
                    body["scan"] = scan;
                }
                return Ok((status, axum::Json(body)).into_response());
            }
            other => {
                return Err(bad_multipart(format!(
                    "unexpected part {:?}; send \"metadata\" then \"file\"",
                    other.unwrap_or("")
                )));
            }
        }
    }
}

/// A parsed single `Range: bytes=…` header, resolved against the blob size.
fn parse_range(header: Option<&HeaderValue>, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(value) = header else {
        return Ok(None);
    };
    let unsatisfiable = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            format!(
                "Range {value:?} does not fit a blob of {size} bytes; send bytes=START-END, bytes=START- or bytes=-SUFFIX"
            ),
        )
    };
    let text = value.to_str().map_err(|_| unsatisfiable())?;
    let spec = text.strip_prefix("bytes=").ok_or_else(unsatisfiable)?;
    if spec.contains(',') {
        return Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            "multiple ranges are not supported; ask for one range per request",
        ));
    }
    let (start, end) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let parse = |s: &str| s.trim().parse::<u64>().map_err(|_| unsatisfiable());
    let (first, last) = if start.trim().is_empty() {
        let suffix = parse(end)?;
        if suffix == 0 {
            return Err(unsatisfiable());
        }
        (
            size.saturating_sub(suffix),
            size.checked_sub(1).ok_or_else(unsatisfiable)?,
        )
    } else {
        let first = parse(start)?;
        let last = if end.trim().is_empty() {
            size.saturating_sub(1)
        } else {
            parse(end)?.min(size.saturating_sub(1))
        };
        (first, last)
    };
    if first >= size || last < first {
        return Err(unsatisfiable());
    }
    Ok(Some((first, last)))
}

/// Streams a blob, or one range of it, given its metadata (`meta`, from a stat the caller made).
async fn serve_blob(
    store: &BlobStore,
    digest: &Digest,
    meta: BlobMeta,
    headers: &HeaderMap,
    filename: Option<&str>,
) -> ApiResult<Response> {
    let range = parse_range(headers.get(header::RANGE), meta.size)?;
    let (status, byte_range, length) = match range {
        Some((first, last)) => (
            StatusCode::PARTIAL_CONTENT,
            ByteRange {
                offset: first,
                limit: Some(last - first + 1),
            },
            last - first + 1,
        ),
        None => (StatusCode::OK, ByteRange::ALL, meta.size),
    };
    let read = store.get(digest, byte_range).await?;
    let body = Body::from_stream(read.data.map(|block| {
        block.map_err(|err| {
            // A damaged block ends the response early: the client sees a short body, never
            // corrupt bytes.
            tracing::error!(%err, "download cut short");
            std::io::Error::other(err.to_string())
        })
    }));
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{}\"", meta.digests.sha256))
        .header("x-content-sha256", meta.digests.sha256.to_string())
        .header("x-content-blake3", meta.digests.blake3.to_string());
    if let Some((first, last)) = range {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {first}-{last}/{}", meta.size),
        );
    }
    if let Some(name) = filename.filter(|n| !n.contains(['"', '\\', '\r', '\n'])) {
        response = response.header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        );
    }
    response
        .body(body)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

async fn download_data_pack(
    State(state): State<RestState>,
    Path((id, vid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers)?;
    let pack = state.registry.data_pack(&who, &id, &vid)?;
    let p = &pack.event.pack;
    let Some(sha256) = p.sha256.as_deref() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "external_data_pack",
            format!(
                "{id}@{vid}'s data pack is external: fetch it from {} under your own credentials ({})",
                p.uri.as_deref().unwrap_or("its uri"),
                p.access_policy.as_deref().unwrap_or("see access_policy")
            ),
        ));
    };
    let digest: Digest = sha256.parse().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("stored digest {sha256}: {e}"),
        )
    })?;
    let meta = state
        .store
        .stat(&digest)
        .await?
        .ok_or(StorageError::NotFound { digest })?;
    let mut response =
        serve_blob(&state.store, &digest, meta, &headers, p.filename.as_deref()).await?;
    // A consumer learns the scan status with the bytes, not only from the trust view: the
    // worst latest verdict of every scanner, and a warning when it is not clean.
    let status = state
        .registry
        .scan_status(&pack.event.name, &pack.event.version, sha256);
    if let Ok(value) = HeaderValue::from_str(&status) {
        response.headers_mut().insert(SCAN_STATUS_HEADER, value);
    }
    if status != "clean"
        && let Ok(value) = HeaderValue::from_str(&format!(
            "199 custodian \"the data pack's scan status is {status}; see GET /wrappers/{}/versions/{vid}/data-pack before using it\"",
            encode_segment(&id)
        ))
    {
        response.headers_mut().insert(header::WARNING, value);
    }
    Ok(response)
}

/// The response header that carries a hosted data pack's scan status on download.
pub const SCAN_STATUS_HEADER: &str = "x-custodian-scan-status";

async fn download_blob(
    State(state): State<RestState>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers)?;
    let digest: Digest = digest.parse().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("path digest: {e}"),
        )
    })?;
    let meta = state.store.stat(&digest).await?.filter(|meta| {
        who.allows_everywhere(crate::auth::Scope::Read)
            || state.registry.blob_readable(&who, &meta.digests.sha256)
    });
    // A blob the caller may not read gets the same answer as a digest not in custody.
    let meta = meta.ok_or(StorageError::NotFound { digest })?;
    serve_blob(&state.store, &digest, meta, &headers, None).await
}

async fn get_badge(
    State(state): State<RestState>,
    Path((id, vid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let who = principal(&state, &headers)?;
    let (badge, _) = state.registry.badge(&who, &id, &vid).await?;
    Ok(axum::Json(serde_json::to_value(&badge).unwrap_or_default()))
}

/// A shields-style badge: "custodian | green", "custodian | review", "custodian | failing".
fn badge_svg(state: custodian_core::badge::State) -> String {
    let (text, color) = match state {
        custodian_core::badge::State::Green => ("green", "#4c1"),
        custodian_core::badge::State::Review => ("review", "#dfb317"),
        custodian_core::badge::State::Failing => ("failing", "#e05d44"),
    };
    let (label_w, value_w) = (70, 8 + 7 * text.len() as u32);
    let width = label_w + value_w;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" aria-label="custodian: {text}"><title>custodian: {text}</title><linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient><clipPath id="r"><rect width="{width}" height="20" rx="3" fill="#fff"/></clipPath><g clip-path="url(#r)"><rect width="{label_w}" height="20" fill="#555"/><rect x="{label_w}" width="{value_w}" height="20" fill="{color}"/><rect width="{width}" height="20" fill="url(#s)"/></g><g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11"><text x="{lx}" y="14">custodian</text><text x="{vx}" y="14">{text}</text></g></svg>"##,
        lx = label_w / 2,
        vx = label_w + value_w / 2,
    )
}

async fn get_badge_svg(
    State(state): State<RestState>,
    Path((id, vid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers)?;
    let (badge, _) = state.registry.badge(&who, &id, &vid).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        badge_svg(badge.state),
    )
        .into_response())
}

async fn get_evidence(
    State(state): State<RestState>,
    Path((id, vid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers)?;
    let (_, bundle) = state.registry.badge(&who, &id, &vid).await?;
    let filename = format!("{}-{vid}.bundle.json", id.replace(['/', '@'], "_"));
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        bundle.to_json(),
    )
        .into_response())
}

async fn get_report(
    State(state): State<RestState>,
    Path((id, vid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let who = principal(&state, &headers)?;
    let (badge, rows) = state.registry.report(&who, &id, &vid).await?;
    Ok(axum::Json(json!({
        "name": id,
        "version": vid,
        "badge": badge.state,
        "evaluated_ms": badge.evaluated_ms,
        "rows": rows,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str, size: u64) -> Result<Option<(u64, u64)>, StatusCode> {
        let value = HeaderValue::from_str(text).expect("ascii");
        parse_range(Some(&value), size).map_err(|e| e.status)
    }

    /// RFC 9110 §14.1.2 byte ranges: first-last, open-ended, suffix; clamped to the size.
    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-499", 1000), Ok(Some((0, 499))));
        assert_eq!(range("bytes=500-", 1000), Ok(Some((500, 999))));
        assert_eq!(range("bytes=-200", 1000), Ok(Some((800, 999))));
        assert_eq!(range("bytes=-2000", 1000), Ok(Some((0, 999))));
        assert_eq!(range("bytes=900-5000", 1000), Ok(Some((900, 999))));
        for bad in [
            "bytes=1000-",
            "bytes=5-4",
            "bytes=-0",
            "items=0-1",
            "bytes=0-1,4-5",
            "bytes=a-b",
        ] {
            assert_eq!(
                range(bad, 1000),
                Err(StatusCode::RANGE_NOT_SATISFIABLE),
                "{bad}"
            );
        }
        assert_eq!(range("bytes=0-", 0), Err(StatusCode::RANGE_NOT_SATISFIABLE));
        assert_eq!(parse_range(None, 10).map_err(|e| e.status), Ok(None));
    }
}
