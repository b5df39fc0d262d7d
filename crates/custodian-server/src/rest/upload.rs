//! Hosted data-pack uploads: a multipart body streamed into custody, its digest checked against
//! the one declared, nothing kept when anything is wrong.

use std::sync::Arc;

use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use custodian_storage::{BlobWriter, Expectation, PutOutcome, StorageError};

use crate::auth::{Authenticator, Principal};
use serde_json::json;

use super::error::{ApiError, ApiResult, bad_multipart};
use super::views::{data_pack_json, recorded_json};
use super::{RestState, principal};
use crate::registry::{HostedMeta, Registry};
use crate::scan::StreamScan;

/// How many upload bytes are gathered before they go to the store.
const UPLOAD_PIECE: usize = 1 << 20;

/// The largest `metadata` part of a hosted upload.
const MAX_METADATA_BYTES: usize = 64 << 10;

/// `POST …/data-pack/hosted`: a hosted upload in one multipart body. A refused upload's body is
/// read before the answer goes out, as every REST request's is (`linger`); larger uploads go over
/// tus, which refuses at creation, before any data.
pub(super) async fn post_hosted(
    State(state): State<RestState>,
    Path((id, vid)): Path<(String, String)>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<Response> {
    // A body that is not multipart/form-data gets the API's JSON error, not axum's plain text.
    let mut multipart = multipart.map_err(|e| bad_multipart(e.body_text()))?;
    hosted(&state, &id, &vid, &headers, &mut multipart).await
}

async fn hosted(
    state: &RestState,
    id: &str,
    vid: &str,
    headers: &HeaderMap,
    multipart: &mut Multipart,
) -> ApiResult<Response> {
    let (id, vid) = (id.to_string(), vid.to_string());
    let who = principal(state, headers)?;
    // Fail before reading a byte of data if the caller may not write here.
    state.registry.check_data_pack_target(&who, &id, &vid)?;
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
                let mut upload = HostedUpload::begin(
                    &state.registry,
                    who,
                    &id,
                    &vid,
                    meta,
                    state.stream_scans.permits(),
                )
                .await?;
                // The body arrives in frames of a few KiB; they are gathered into 1 MiB pieces
                // (the store's block size) so that hashing and storage work in large steps. If
                // the client goes away the upload is dropped and nothing is kept.
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
                        upload.write(piece.split().freeze()).await?;
                    }
                }
                if !piece.is_empty() {
                    upload.write(piece.freeze()).await?;
                }
                let (status, body) = upload.finish().await?;
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

/// A hosted data pack on its way into custody: the multipart upload's file part, or a file the
/// local put socket was handed with a data pack request. Each piece goes into the verifying
/// writer and, on the other core, into the stream scan; [`HostedUpload::finish`] commits and
/// registers. Dropped before that, it keeps nothing.
pub(crate) struct HostedUpload {
    registry: Arc<Registry>,
    who: Principal,
    id: String,
    vid: String,
    meta: HostedMeta,
    writer: BlobWriter,
    scan: Option<StreamScan>,
    /// Set when the version already has a hosted data pack and the upload may only repeat its
    /// bytes: that registration's ledger index, for the refusal of other bytes.
    repeat_of: Option<u64>,
}

impl HostedUpload {
    /// Checks that `who` may register a data pack for `id`@`vid` with `meta` (the signed
    /// manifest's data_pack declaration binds it) and starts the verified write, expecting the
    /// digest the metadata or the declaration names. A stream scan is started when one of
    /// `permits` is free; otherwise the data pack is scanned from custody once stored.
    pub(crate) async fn begin(
        registry: &Arc<Registry>,
        who: Principal,
        id: &str,
        vid: &str,
        mut meta: HostedMeta,
        permits: &Arc<tokio::sync::Semaphore>,
    ) -> ApiResult<Self> {
        let target = registry.check_data_pack_target(&who, id, vid)?;
        registry.apply_declared(&target, &mut meta).await?;
        let expected = registry.check_hosted(&who, id, vid, &meta)?;
        let scan = registry
            .stream_scan(&target, &scan_name(&meta), permits)
            .await;
        let writer = registry
            .store()
            .begin_put(Expectation {
                digest: expected,
                size: None,
            })
            .await
            .map_err(ApiError::from)?;
        Ok(HostedUpload {
            registry: registry.clone(),
            who,
            id: id.to_string(),
            vid: vid.to_string(),
            meta,
            writer,
            scan,
            repeat_of: None,
        })
    }

    /// Stores and scans the next piece. A failed write has discarded the upload.
    pub(crate) async fn write(&mut self, piece: Bytes) -> ApiResult<()> {
        let fed = async {
            if let Some(scan) = &mut self.scan {
                scan.feed(piece.clone()).await;
            }
        };
        let (written, ()) = tokio::join!(self.writer.write(piece.clone()), fed);
        written.map_err(ApiError::from)
    }

    /// Commits the bytes (refused, and nothing kept, unless they match what was expected) and
    /// registers them: the REST API's status and JSON answer.
    pub(crate) async fn finish(self) -> ApiResult<(StatusCode, serde_json::Value)> {
        let stored = match (self.writer.commit().await, self.repeat_of) {
            (Ok(stored), _) => stored,
            // Not the bytes registered before: refused as the REST upload refuses a second
            // data pack.
            (Err(StorageError::DigestMismatch { .. }), Some(index)) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "already_exists",
                    format!(
                        "{}@{} already has a hosted data pack with other bytes (ledger entry {index}); data packs are immutable per version",
                        self.id, self.vid
                    ),
                ));
            }
            (Err(err), _) => return Err(err.into()),
        };
        register_stored(
            &self.registry,
            &self.who,
            &self.id,
            &self.vid,
            self.meta,
            &stored,
            self.scan,
        )
        .await
    }
}

/// Starts the hosted upload a data pack request on the local put socket asks for (docs/api.md,
/// "Local puts"): the token, the metadata and the target are checked as the REST hosted upload
/// checks them, and refused with the same answers.
pub(crate) async fn begin_local(
    registry: &Arc<Registry>,
    auth: &Authenticator,
    permits: &Arc<tokio::sync::Semaphore>,
    authorization: Option<&str>,
    request: &custodian_proto::cas::v1::LocalDataPack,
) -> ApiResult<HostedUpload> {
    let who = auth
        .authenticate(authorization)
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()))?;
    if request.metadata_json.len() > MAX_METADATA_BYTES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!(
                "field data_pack.metadata_json: {} bytes, over the {MAX_METADATA_BYTES} the metadata may hold",
                request.metadata_json.len()
            ),
        ));
    }
    let mut meta: HostedMeta = serde_json::from_str(&request.metadata_json).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("field data_pack.metadata_json: not valid data pack metadata JSON: {e}"),
        )
    })?;
    if meta.filename.is_none() && !request.file_name.is_empty() {
        meta.filename = Some(request.file_name.clone());
    }
    // The daemon reads the whole file whatever it holds, so a repeat of the bytes registered
    // before is recognized without a declaration (over REST the client must declare them, or
    // the second upload is refused before its bytes are sent): those bytes are expected, and
    // other bytes are refused.
    let mut repeat_of = None;
    if meta.sha256.is_none()
        && let Ok(existing) = registry.data_pack(&who, &request.name, &request.version)
        && existing.event.pack.mode == custodian_core::registry::DataPackMode::Hosted
        && let Some(sha256) = &existing.event.pack.sha256
    {
        meta.sha256 = Some(sha256.clone());
        repeat_of = Some(existing.index);
    }
    let mut upload = HostedUpload::begin(
        registry,
        who,
        &request.name,
        &request.version,
        meta,
        permits,
    )
    .await?;
    if repeat_of.is_some() {
        // A repeat keeps the verdict recorded with the first upload (register_stored does not
        // scan the same bytes again), so its stream scan would be wasted work.
        upload.scan = None;
    }
    upload.repeat_of = repeat_of;
    Ok(upload)
}

/// The name the built-in scanner gives a hosted data pack's file.
pub(super) fn scan_name(meta: &HostedMeta) -> String {
    meta.filename.clone().unwrap_or_else(|| "data-pack".into())
}

/// Registers a hosted data pack whose bytes are now in custody (`stored`): scans them (unless the
/// same bytes were registered before), records the registration and the verdict, and returns
/// the status and JSON body the REST API answers with. The multipart upload and the tus upload
/// both end here. `streamed` is the scan that read the upload's bytes as they arrived, when it
/// read every one of them; without it the data pack is scanned from custody.
pub(super) async fn register_stored(
    registry: &Registry,
    who: &Principal,
    id: &str,
    vid: &str,
    meta: HostedMeta,
    stored: &PutOutcome,
    streamed: Option<StreamScan>,
) -> ApiResult<(StatusCode, serde_json::Value)> {
    let target = registry.check_data_pack_target(who, id, vid)?;
    // Scanned in custody before it is registered, so the registration carries the
    // verdict; a repeated upload of the same bytes is not scanned again.
    let sha256 = stored.meta.digests.sha256;
    // A retry of the same bytes repeats the registration as it was recorded.
    let previous = registry
        .data_pack(who, id, vid)
        .ok()
        .filter(|p| p.event.pack.sha256 == Some(sha256.to_string()))
        .map(|p| p.event.pack.scan_status.unwrap_or_default());
    let report = match (&previous, streamed) {
        (Some(_), _) => None,
        (None, Some(scan)) if scan.fed() == stored.meta.size => Some(scan.finish().await),
        (None, _) => Some(
            registry
                .scan_data(&target, &sha256, &scan_name(&meta))
                .await,
        ),
    };
    let status = match (&report, &previous) {
        (Some(r), _) => r.verdict().as_str().to_string(),
        (None, Some(p)) => p.clone(),
        (None, None) => "pending".into(),
    };
    let recorded = registry
        .register_hosted(who, id, vid, meta, stored, &status)
        .await?;
    let mut scan = None;
    if let Some(report) = report
        && !recorded.already
    {
        let scanned = registry
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
    let mut body = recorded_json(&recorded, data_pack_json(registry, &recorded.record));
    if let Some(scan) = scan {
        if scan["verdict"] == "flagged" {
            body["warning"] = json!(format!(
                "the data pack was stored and registered, but the scanner flagged it ({} finding(s) below): the version's badge fails until a clean scan is recorded, and downloads carry a warning",
                scan["findings"].as_array().map_or(0, Vec::len)
            ));
        }
        body["scan"] = scan;
    }
    Ok((status, body))
}
