//! Hosted data-pack uploads over the tus resumable upload protocol, version 1.0.0
//! (<https://tus.io/protocols/resumable-upload>), with the creation, expiration, checksum and
//! termination extensions, on the shared upload engine ([`custodian_storage::uploads`]).
//!
//! - `OPTIONS …/data-pack/uploads` — what the server supports;
//! - `POST …/data-pack/uploads` — creation: `Upload-Length` and `Upload-Metadata` (`metadata`:
//!   the same JSON as the multipart upload's metadata part, base64; `filename`), checked against
//!   the version and its signed manifest before a byte is sent;
//! - `HEAD …/data-pack/uploads/{uid}` — `Upload-Offset`: where to continue;
//! - `PATCH …/data-pack/uploads/{uid}` — the next bytes from `Upload-Offset`, optionally with
//!   `Upload-Checksum: sha1|sha256 <base64>` (a mismatch answers `460 Checksum Mismatch` and
//!   keeps nothing). The PATCH that completes the upload commits it into custody and registers
//!   the data pack as the multipart upload does (scan, ledger entry); it may declare the whole
//!   data pack's `Custodian-Data-Pack-Sha256: sha256:<hex>` or `Custodian-Data-Pack-Blake3:
//!   blake3:<hex>` when the creation's metadata did not (checked before anything is kept), and
//!   its answer carries `Custodian-Data-Pack-Sha256`, `Custodian-Data-Pack-Blake3` and the
//!   registration's `Custodian-Ledger-Index`;
//! - `DELETE …/data-pack/uploads/{uid}` — termination.
//!
//! A session belongs to the token that created it and to its package version: any other token or
//! version is told it does not exist.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use custodian_storage::Expectation;
use custodian_storage::uploads::{PieceCheck, SessionInfo, UploadError};
use sha2::Digest as _;

use super::error::{ApiError, ApiResult};
use super::upload::{register_stored, scan_name};
use super::{RestState, principal};
use crate::auth::Principal;
use crate::registry::HostedMeta;
use crate::scan::StreamScan;

/// A PATCH body, read as it is or through the session's stream scan.
type BodyStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes, axum::Error>> + Send>>;

/// The protocol version spoken.
const TUS_VERSION: &str = "1.0.0";

/// The largest `Upload-Metadata` header accepted.
const MAX_METADATA: usize = 64 << 10;

/// The status tus defines for a checksum mismatch.
fn checksum_mismatch() -> StatusCode {
    StatusCode::from_u16(460).expect("460 is a valid status code")
}

/// Adds `Tus-Resumable` to every answer of the tus routes, errors included, as the protocol
/// asks.
pub(super) async fn resumable_header(response: Response) -> Response {
    tus_headers(response)
}

fn tus_headers(mut response: Response) -> Response {
    response.headers_mut().insert(
        HeaderName::from_static("tus-resumable"),
        HeaderValue::from_static(TUS_VERSION),
    );
    response
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, code, message)
}

/// The owner of a tus session: the token and the package version it uploads for.
fn owner(who: &Principal, id: &str, vid: &str) -> String {
    format!("tus:{}:{id}@{vid}", who.label())
}

fn http_date(ms: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

/// Every tus request but OPTIONS must say which version it speaks (412 otherwise).
fn require_version(headers: &HeaderMap) -> ApiResult<()> {
    match headers.get("tus-resumable").and_then(|v| v.to_str().ok()) {
        Some(TUS_VERSION) => Ok(()),
        Some(other) => Err(error(
            StatusCode::PRECONDITION_FAILED,
            "tus_version",
            format!("Tus-Resumable {other:?} is not supported; this server speaks {TUS_VERSION}"),
        )),
        None => Err(error(
            StatusCode::PRECONDITION_FAILED,
            "tus_version",
            format!("header Tus-Resumable is missing; this server speaks {TUS_VERSION}"),
        )),
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> ApiResult<Option<u64>> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    "invalid_argument",
                    format!(
                        "header {name}: {:?} is not a non-negative integer",
                        String::from_utf8_lossy(value.as_bytes())
                    ),
                )
            }),
    }
}

/// Decodes a base64 header value; the error names `what` ("header <what> is not base64").
fn decode_base64(encoded: &str, what: &str) -> ApiResult<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("header {what} is not base64: {e}"),
            )
        })
}

/// Parses `Upload-Metadata`: comma-separated `key base64value` pairs (the value may be absent).
fn parse_metadata(headers: &HeaderMap) -> ApiResult<BTreeMap<String, String>> {
    let Some(raw) = headers.get("upload-metadata") else {
        return Ok(BTreeMap::new());
    };
    let bad = |why: String| error(StatusCode::BAD_REQUEST, "invalid_argument", why);
    if raw.len() > MAX_METADATA {
        return Err(bad(format!(
            "header Upload-Metadata is over {MAX_METADATA} bytes"
        )));
    }
    let raw = raw
        .to_str()
        .map_err(|_| bad("header Upload-Metadata is not ASCII".into()))?;
    let mut out = BTreeMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut parts = pair.splitn(2, ' ');
        let key = parts.next().unwrap_or_default();
        let value = match parts.next() {
            None => String::new(),
            Some(encoded) => {
                let bytes =
                    decode_base64(encoded, &format!("Upload-Metadata: the value of {key:?}"))?;
                String::from_utf8(bytes).map_err(|_| {
                    bad(format!(
                        "header Upload-Metadata: the value of {key:?} is not UTF-8"
                    ))
                })?
            }
        };
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

/// The data pack metadata a session carries: the `metadata` JSON, with `filename` filled in
/// from the tus key of that name when the JSON has none.
fn hosted_meta(metadata: &BTreeMap<String, String>) -> ApiResult<HostedMeta> {
    let json = metadata.get("metadata").ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "header Upload-Metadata: key \"metadata\" is missing: give the data pack metadata JSON (at least {\"license\": …}), base64-encoded",
        )
    })?;
    let mut meta: HostedMeta = serde_json::from_str(json).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("header Upload-Metadata, key metadata: not valid data pack metadata JSON: {e}"),
        )
    })?;
    if meta.filename.is_none() {
        meta.filename = metadata.get("filename").cloned();
    }
    Ok(meta)
}

impl From<UploadError> for ApiError {
    fn from(err: UploadError) -> Self {
        let message = err.to_string();
        match err {
            UploadError::Unknown { .. } => error(StatusCode::NOT_FOUND, "not_found", message),
            UploadError::OffsetMismatch { .. } => {
                error(StatusCode::CONFLICT, "offset_mismatch", message)
            }
            UploadError::TooLarge { .. } => {
                error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            }
            UploadError::PieceRejected { .. } => {
                error(checksum_mismatch(), "checksum_mismatch", message)
            }
            UploadError::BodyFailed { .. } => {
                error(StatusCode::BAD_REQUEST, "body_incomplete", message)
            }
            UploadError::Invalid { .. } => error(StatusCode::CONFLICT, "upload_invalid", message),
            UploadError::Storage(e) => e.into(),
            UploadError::Io { .. } => {
                tracing::error!(%message, "tus upload staging failed");
                error(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
        }
    }
}

/// `OPTIONS`: the protocol versions, extensions and checksum algorithms, and the daemon's local
/// put socket if it has one (a client on this machine may hand it the file there instead).
pub(super) async fn options(State(state): State<RestState>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    if let Some(local) = &state.local_put
        && let (Some(path), Ok(instance)) = (
            local
                .path
                .to_str()
                .and_then(|p| HeaderValue::from_str(p).ok()),
            HeaderValue::from_str(&local.instance),
        )
    {
        h.insert("custodian-local-put-socket", path);
        h.insert("custodian-local-put-instance", instance);
    }
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert(
        "tus-extension",
        HeaderValue::from_static("creation,expiration,checksum,termination"),
    );
    h.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static("sha1,sha256"),
    );
    tus_headers(response)
}

/// `POST`: creation.
pub(super) async fn create(
    State(state): State<RestState>,
    Path((id, vid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    require_version(&headers)?;
    let who = principal(&state, &headers)?;
    if headers.contains_key("upload-defer-length") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "Upload-Defer-Length is not supported: give Upload-Length",
        ));
    }
    let length = header_u64(&headers, "upload-length")?.ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "header Upload-Length is missing: give the data pack's size in bytes",
        )
    })?;
    let metadata = parse_metadata(&headers)?;
    let mut meta = hosted_meta(&metadata)?;
    // Everything that would refuse the data pack is checked before a byte is sent.
    let target = state.registry.check_data_pack_target(&who, &id, &vid)?;
    state.registry.apply_declared(&target, &mut meta).await?;
    let expected = state.registry.check_hosted(&who, &id, &vid, &meta)?;
    let info = state
        .uploads
        .start(
            &owner(&who, &id, &vid),
            Expectation {
                digest: expected,
                size: Some(length),
            },
            metadata,
        )
        .await?;
    // The scanner reads the session's bytes as its PATCHes stage them, on the other core.
    if let Some(scan) = state
        .registry
        .stream_scan(&target, &scan_name(&meta), state.stream_scans.permits())
        .await
    {
        state
            .stream_scans
            .keep(&info.id, std::sync::Arc::new(tokio::sync::Mutex::new(scan)));
    }
    let location = format!(
        "/wrappers/{}/versions/{}/data-pack/uploads/{}",
        super::encode_segment(&id),
        super::encode_segment(&vid),
        info.id
    );
    let mut response = StatusCode::CREATED.into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(info.expires_ms)) {
        h.insert("upload-expires", v);
    }
    Ok(tus_headers(response))
}

fn offset_headers(response: &mut Response, info: &SessionInfo) {
    let h = response.headers_mut();
    h.insert("upload-offset", HeaderValue::from(info.committed));
    if let Some(length) = info.expected_size {
        h.insert("upload-length", HeaderValue::from(length));
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(info.expires_ms)) {
        h.insert("upload-expires", v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// `HEAD`: where the upload stands.
pub(super) async fn head(
    State(state): State<RestState>,
    Path((id, vid, uid)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    require_version(&headers)?;
    let who = principal(&state, &headers)?;
    let info = state.uploads.status(&owner(&who, &id, &vid), &uid).await?;
    let mut response = StatusCode::OK.into_response();
    offset_headers(&mut response, &info);
    Ok(tus_headers(response))
}

/// The `Upload-Checksum` of one PATCH, checked over the piece's bytes as they arrive.
enum Checksum {
    Sha1(sha1::Sha1, Vec<u8>),
    Sha256(sha2::Sha256, Vec<u8>),
}

impl PieceCheck for Checksum {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Checksum::Sha1(h, _) => h.update(bytes),
            Checksum::Sha256(h, _) => h.update(bytes),
        }
    }

    fn verify(self: Box<Self>) -> Result<(), String> {
        let (name, actual, expected) = match *self {
            Checksum::Sha1(h, expected) => ("sha1", h.finalize().to_vec(), expected),
            Checksum::Sha256(h, expected) => ("sha256", h.finalize().to_vec(), expected),
        };
        if actual == expected {
            return Ok(());
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        Err(format!(
            "Upload-Checksum {name} {} does not match the piece's {name} {}",
            b64.encode(expected),
            b64.encode(actual)
        ))
    }
}

fn parse_checksum(headers: &HeaderMap) -> ApiResult<Option<Checksum>> {
    let Some(raw) = headers.get("upload-checksum") else {
        return Ok(None);
    };
    let bad = |why: String| error(StatusCode::BAD_REQUEST, "invalid_argument", why);
    let raw = raw
        .to_str()
        .map_err(|_| bad("header Upload-Checksum is not ASCII".into()))?;
    let (algorithm, encoded) = raw.split_once(' ').ok_or_else(|| {
        bad(format!(
            "header Upload-Checksum {raw:?}: expected \"<algorithm> <base64 digest>\""
        ))
    })?;
    let expected = decode_base64(encoded, "Upload-Checksum: the digest")?;
    match algorithm {
        "sha1" => Ok(Some(Checksum::Sha1(sha1::Sha1::new(), expected))),
        "sha256" => Ok(Some(Checksum::Sha256(sha2::Sha256::new(), expected))),
        other => Err(bad(format!(
            "header Upload-Checksum: algorithm {other:?} is not supported (Tus-Checksum-Algorithm: sha1,sha256)"
        ))),
    }
}

/// The headers with which the PATCH that completes an upload may declare the data pack's
/// digest, one algorithm each, when its creation did not: a client can then hash the file while
/// it sends it instead of before (BLAKE3 costs it a quarter of sha256's CPU). The answer to that
/// PATCH carries both headers with the digests stored.
const DECLARED: [(&str, custodian_core::Algorithm); 2] = [
    (
        "custodian-data-pack-sha256",
        custodian_core::Algorithm::Sha256,
    ),
    (
        "custodian-data-pack-blake3",
        custodian_core::Algorithm::Blake3,
    ),
];

/// The digest a PATCH declares for the whole upload; refused unless the PATCH completes it, so
/// that a declaration is never silently ignored, and refused when it names both algorithms.
async fn declared_digest(
    state: &RestState,
    session_owner: &str,
    uid: &str,
    headers: &HeaderMap,
    offset: u64,
) -> ApiResult<Option<custodian_core::Digest>> {
    let bad = |why: String| error(StatusCode::BAD_REQUEST, "invalid_argument", why);
    let mut present = DECLARED
        .iter()
        .filter_map(|&(name, algorithm)| headers.get(name).map(|raw| (name, algorithm, raw)));
    let Some((name, algorithm, raw)) = present.next() else {
        return Ok(None);
    };
    if present.next().is_some() {
        return Err(bad(format!(
            "headers {} and {} are both given: declare the data pack's digest once",
            DECLARED[0].0, DECLARED[1].0
        )));
    }
    let text = raw
        .to_str()
        .map_err(|_| bad(format!("header {name} is not ASCII")))?;
    let digest: custodian_core::Digest = text
        .parse()
        .map_err(|e| bad(format!("header {name} {text:?}: {e}")))?;
    if digest.algorithm() != algorithm {
        return Err(bad(format!(
            "header {name} {text:?}: give the data pack's {algorithm}:<64 hex digits>"
        )));
    }
    let info = state.uploads.status(session_owner, uid).await?;
    let completes = match (info.expected_size, header_u64(headers, "content-length")?) {
        (Some(total), Some(length)) => offset.checked_add(length) == Some(total),
        _ => false,
    };
    if !completes {
        return Err(bad(format!(
            "header {name} is read only on the PATCH that completes the upload (Upload-Offset plus Content-Length equal to Upload-Length)"
        )));
    }
    Ok(Some(digest))
}

/// `PATCH`: the next bytes; the one that completes the upload registers the data pack.
pub(super) async fn patch(
    State(state): State<RestState>,
    Path((id, vid, uid)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    require_version(&headers)?;
    let who = principal(&state, &headers)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if content_type != Some("application/offset+octet-stream") {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "a PATCH must have Content-Type application/offset+octet-stream, not {content_type:?}"
            ),
        ));
    }
    let offset = header_u64(&headers, "upload-offset")?.ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "header Upload-Offset is missing: send the offset from HEAD",
        )
    })?;
    let check = parse_checksum(&headers)?.map(|c| Box::new(c) as Box<dyn PieceCheck>);
    let session_owner = owner(&who, &id, &vid);
    let declared = declared_digest(&state, &session_owner, &uid, &headers, offset).await?;
    // The session's stream scan reads this PATCH's bytes only if it has read every byte before
    // them; otherwise it is dropped and the data pack is scanned from custody when it lands.
    let mut scan = state.stream_scans.take(&uid);
    if let Some(shared) = &scan
        && shared.lock().await.fed() != offset
    {
        scan = None;
    }
    let body: BodyStream = match &scan {
        Some(shared) => Box::pin(StreamScan::tee(shared.clone(), body.into_data_stream())),
        None => Box::pin(body.into_data_stream()),
    };
    // A refused or broken PATCH drops the scan with it: what it read may not all be staged.
    let info = state
        .uploads
        .append_checked(&session_owner, &uid, Some(offset), body, check)
        .await?;
    let scan = match scan.and_then(StreamScan::unshare) {
        Some(scan) if scan.fed() == info.committed => Some(scan),
        _ => None,
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    if Some(info.committed) != info.expected_size {
        if let Some(scan) = scan {
            state
                .stream_scans
                .keep(&uid, std::sync::Arc::new(tokio::sync::Mutex::new(scan)));
        }
    } else {
        let meta = hosted_meta(&info.metadata)?;
        let target = state.registry.check_data_pack_target(&who, &id, &vid)?;
        let mut meta = meta;
        state.registry.apply_declared(&target, &mut meta).await?;
        let stored = state
            .uploads
            .finish(
                &session_owner,
                &uid,
                Expectation {
                    digest: declared,
                    size: None,
                },
            )
            .await?;
        let (_, registered) =
            register_stored(&state.registry, &who, &id, &vid, meta, &stored, scan).await?;
        let h = response.headers_mut();
        for (name, algorithm) in DECLARED {
            if let Ok(v) = HeaderValue::from_str(&stored.meta.digests.get(algorithm).to_string()) {
                h.insert(name, v);
            }
        }
        if let Some(index) = registered["receipt"]["log_index"].as_u64() {
            h.insert("custodian-ledger-index", HeaderValue::from(index));
        }
        if registered["already_recorded"] == true {
            h.insert(
                "custodian-already-recorded",
                HeaderValue::from_static("true"),
            );
        }
    }
    offset_headers(&mut response, &info);
    Ok(tus_headers(response))
}

/// `DELETE`: termination.
pub(super) async fn terminate(
    State(state): State<RestState>,
    Path((id, vid, uid)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    require_version(&headers)?;
    let who = principal(&state, &headers)?;
    state.uploads.cancel(&owner(&who, &id, &vid), &uid).await?;
    drop(state.stream_scans.take(&uid));
    Ok(tus_headers(StatusCode::NO_CONTENT.into_response()))
}
