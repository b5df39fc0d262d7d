//! Hosted data-pack uploads: a multipart body streamed into custody, its digest checked against
//! the one declared, nothing kept when anything is wrong.

use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use custodian_storage::{Expectation, PutOutcome};

use crate::auth::Principal;
use serde_json::json;

use super::error::{ApiError, ApiResult, bad_multipart};
use super::views::{data_pack_json, recorded_json};
use super::{RestState, principal};
use crate::registry::HostedMeta;
use crate::scan::StreamScan;

/// How many upload bytes are gathered before they go to the store.
const UPLOAD_PIECE: usize = 1 << 20;

/// The largest `metadata` part of a hosted upload.
const MAX_METADATA_BYTES: usize = 64 << 10;

/// How much of a refused upload's body is read before the answer goes out: a client still
/// sending when the server answers and closes sees a broken connection instead of the answer,
/// so a small body is read to its end first. Larger uploads go over tus, which refuses at
/// creation, before any data.
const DRAIN_REFUSED_BYTES: usize = 8 << 20;

pub(super) async fn post_hosted(
    State(state): State<RestState>,
    Path((id, vid)): Path<(String, String)>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<Response> {
    // A body that is not multipart/form-data gets the API's JSON error, not axum's plain text.
    let mut multipart = multipart.map_err(|e| bad_multipart(e.body_text()))?;
    let answer = hosted(&state, &id, &vid, &headers, &mut multipart).await;
    if answer.is_err() {
        let drain = async {
            let mut read = 0usize;
            while let Ok(Some(mut field)) = multipart.next_field().await {
                while let Ok(Some(chunk)) = field.chunk().await {
                    read += chunk.len();
                    if read > DRAIN_REFUSED_BYTES {
                        return;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
    }
    answer
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
                // The scanner reads the pieces as they are stored, on the other core.
                let mut scan = state
                    .registry
                    .stream_scan(&target, &scan_name(&meta), state.stream_scans.permits())
                    .await;
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
                        let piece = piece.split().freeze();
                        let fed = feed(&mut scan, piece.clone());
                        let (written, ()) = tokio::join!(writer.write(piece), fed);
                        written.map_err(ApiError::from)?;
                    }
                }
                if !piece.is_empty() {
                    let piece = piece.freeze();
                    let fed = feed(&mut scan, piece.clone());
                    let (written, ()) = tokio::join!(writer.write(piece), fed);
                    written.map_err(ApiError::from)?;
                }
                let stored = writer.commit().await.map_err(ApiError::from)?;
                let (status, body) =
                    register_stored(state, &who, &id, &vid, meta, &stored, scan).await?;
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

/// Feeds a stored piece to the upload's stream scan, if it has one.
async fn feed(scan: &mut Option<StreamScan>, piece: bytes::Bytes) {
    if let Some(scan) = scan {
        scan.feed(piece).await;
    }
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
    state: &RestState,
    who: &Principal,
    id: &str,
    vid: &str,
    meta: HostedMeta,
    stored: &PutOutcome,
    streamed: Option<StreamScan>,
) -> ApiResult<(StatusCode, serde_json::Value)> {
    let target = state.registry.check_data_pack_target(who, id, vid)?;
    // Scanned in custody before it is registered, so the registration carries the
    // verdict; a repeated upload of the same bytes is not scanned again.
    let sha256 = stored.meta.digests.sha256;
    // A retry of the same bytes repeats the registration as it was recorded.
    let previous = state
        .registry
        .data_pack(who, id, vid)
        .ok()
        .filter(|p| p.event.pack.sha256 == Some(sha256.to_string()))
        .map(|p| p.event.pack.scan_status.unwrap_or_default());
    let report = match (&previous, streamed) {
        (Some(_), _) => None,
        (None, Some(scan)) if scan.fed() == stored.meta.size => Some(scan.finish().await),
        (None, _) => Some(
            state
                .registry
                .scan_data(&target, &sha256, &scan_name(&meta))
                .await,
        ),
    };
    let status = match (&report, &previous) {
        (Some(r), _) => r.verdict().as_str().to_string(),
        (None, Some(p)) => p.clone(),
        (None, None) => "pending".into(),
    };
    let recorded = state
        .registry
        .register_hosted(who, id, vid, meta, stored, &status)
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
    let mut body = recorded_json(&recorded, data_pack_json(&state.registry, &recorded.record));
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
