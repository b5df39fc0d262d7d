//! The registry's REST API (seed 001), served by axum on its own port in the same process:
//!
//! - `GET  /wrappers/{id}/versions` — list versions
//! - `GET  /wrappers/{id}/versions/{vid}` — one version with files and signed envelope
//! - `GET  /wrappers/{id}/versions/{vid}/data-pack` — the trust view of its data pack
//! - `PUT  /wrappers/{id}/versions/{vid}/data-pack/manifest` — register an external data pack
//! - `POST /wrappers/{id}/versions/{vid}/data-pack/hosted` — upload hosted bytes (multipart)
//! - `POST|HEAD|PATCH|DELETE /wrappers/{id}/versions/{vid}/data-pack/uploads[/{uid}]` — a hosted
//!   upload over tus 1.0 (rest/tus.rs), resumable
//! - `GET  /wrappers/{id}/versions/{vid}/data-pack/download` — fetch hosted bytes (`Range` too)
//! - `GET  /blobs/{digest}` — any readable blob by digest (`Range` too)
//! - `GET  /log/checkpoint`, `GET /log/tile/<L>/<N>[.p/<W>]`, `GET /log/tile/entries/<N>[.p/<W>]`
//!   — the ledger as C2SP tlog-tiles
//! - `GET  /log/entries/{index}/receipt` — one entry's receipt as a file
//! - `/packages…`, `/log`, `/log/entries/{index}`, `/login` — the pages for people (rest/pages/)
//! - `/v2/…` — the OCI Distribution API v1.1 (rest/oci.rs, docs/oci.md)
//! - `GET  /oci/history?name=&tag=` — every state of an OCI tag, with ledger receipts
//!
//! A wrapper id is a package name (URL-encode the `/` of a scoped name: `%40acme%2Fbot`), a vid
//! a version. Errors are JSON `{"error": {"code", "message"}}` with a stable code. The whole API
//! is described in docs/openapi.yaml, which `GET /openapi.yaml` serves.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use custodian_core::Digest;
use custodian_core::datapack::DataPackSpec;
use custodian_storage::{BlobStore, StorageError};
use serde_json::json;

use crate::auth::{Authenticator, Principal};

mod badge;
mod error;
#[cfg(any(test, feature = "fixture"))]
pub mod fixture;
mod linger;
mod oci;
mod pages;
mod range;
#[cfg(test)]
mod tests;
mod tiles;
mod tus;
mod upload;
mod views;
mod witness;

use crate::registry::Registry;
use badge::get_badge_svg;
pub(crate) use error::ApiError;
use error::ApiResult;
use error::json_errors;
use range::serve_blob;
use upload::post_hosted;
pub(crate) use upload::{HostedUpload, begin_local};
pub use views::encode_segment;
use views::{data_pack_json, recorded_json, version_json};
pub use witness::witness_router;

/// The OpenAPI document, served at `/openapi.yaml`.
const OPENAPI: &str = include_str!("../../../../docs/openapi.yaml");

/// Shared state of the REST handlers.
#[derive(Clone)]
pub struct RestState {
    registry: Arc<Registry>,
    auth: Arc<Authenticator>,
    store: BlobStore,
    upload_idle: std::time::Duration,
    oci: Arc<crate::oci::Oci>,
    uploads: Arc<custodian_storage::uploads::UploadSessions>,
    /// Hosted data packs being scanned as their tus sessions receive them.
    stream_scans: Arc<crate::scan::StreamScans>,
    /// The local put socket and its instance, which the tus `OPTIONS` answer names so that a
    /// client on this machine may hand the daemon a data pack's file instead.
    local_put: Option<LocalPutAnnouncement>,
}

/// The daemon's local put socket as the REST API announces it (docs/api.md, "Local puts").
#[derive(Clone, Debug)]
pub struct LocalPutAnnouncement {
    /// The socket's absolute path.
    pub path: std::path::PathBuf,
    /// The value a request must repeat (`Capabilities.local_put_instance`).
    pub instance: String,
}

/// The REST router; an upload body that sends nothing for `upload_idle` is abandoned. Stream
/// scans take their permits from `stream_scans`, which the local put socket shares.
pub(crate) fn router(
    registry: Arc<Registry>,
    auth: Arc<Authenticator>,
    upload_idle: std::time::Duration,
    oci: Arc<crate::oci::Oci>,
    uploads: Arc<custodian_storage::uploads::UploadSessions>,
    stream_scans: Arc<crate::scan::StreamScans>,
    local_put: Option<LocalPutAnnouncement>,
) -> Router {
    let store = registry.store().clone();
    let state = RestState {
        registry,
        auth,
        store,
        upload_idle,
        oci,
        uploads,
        stream_scans,
        local_put,
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
            put(put_external)
                .layer(DefaultBodyLimit::max(error::BODY_LIMIT))
                .layer(axum::middleware::from_fn(error::refuse_declared_oversize)),
        )
        .route(
            "/wrappers/{id}/versions/{vid}/data-pack/hosted",
            // The upload streams into custody, so no body limit applies to it.
            post(post_hosted).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/wrappers/{id}/versions/{vid}/data-pack/uploads",
            post(tus::create)
                .options(tus::options)
                .layer::<_, std::convert::Infallible>(axum::middleware::map_response(
                    tus::resumable_header,
                )),
        )
        .route(
            "/wrappers/{id}/versions/{vid}/data-pack/uploads/{uid}",
            axum::routing::patch(tus::patch)
                .head(tus::head)
                .delete(tus::terminate)
                .layer::<_, std::convert::Infallible>(axum::middleware::map_response(
                    tus::resumable_header,
                ))
                .layer(DefaultBodyLimit::disable()),
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
        .route("/log/checkpoint", get(tiles::checkpoint))
        .route("/log/entries/{index}/receipt", get(pages::receipt))
        .route("/log/tile/{*path}", get(tiles::tile))
        .route("/oci/history", get(oci::history))
        // The OCI Distribution API (docs/oci.md); blob uploads stream to disk, so no body limit.
        .route("/v2/", axum::routing::any(oci::handle).layer(DefaultBodyLimit::disable()))
        .route(
            "/v2/{*path}",
            axum::routing::any(oci::handle).layer(DefaultBodyLimit::disable()),
        )
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
        .merge(pages::router())
        // Last, so it sees every answer: rejections that axum's extractors write as plain text
        // (a path segment that is not UTF-8, a body over the limit) become the API's JSON error.
        .layer(axum::middleware::map_response(json_errors))
        // Around every route: a refused request's unread body is read before the answer goes
        // out, so that a client still sending gets the answer and not a reset (`linger`).
        .layer(axum::middleware::from_fn(linger::on_refusal))
        // Outermost, before any route reads a token: a page's cookie stands for the
        // Authorization header on reads.
        .layer(axum::middleware::from_fn(pages::cookie_reads))
        .with_state(state)
}

pub(super) fn principal(state: &RestState, headers: &HeaderMap) -> ApiResult<Principal> {
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
    let present = state.store.stat(&digest).await?;
    if present.is_none()
        && let Some(t) = state.registry.tombstone(&digest).await
    {
        // Deleted on the record: 410 Gone, naming the entry (which is public in the log).
        return Ok((
            StatusCode::GONE,
            axum::Json(json!({
                "error": {
                    "code": "gone",
                    "message": format!(
                        "blob {digest} was deleted from custody at ledger entry {} ({}): {}",
                        t.index, t.policy, t.reason
                    ),
                },
                "ledger_index": t.index,
                "deleted_at_ms": t.time_ms,
                "reason": t.reason,
                "policy": t.policy,
            })),
        )
            .into_response());
    }
    let meta = present.filter(|meta| {
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
