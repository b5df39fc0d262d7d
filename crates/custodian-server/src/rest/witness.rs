//! The witness's HTTP interface, C2SP tlog-witness (<https://c2sp.org/tlog-witness>):
//!
//! - `POST /add-checkpoint` — cosign a checkpoint; the statuses are the spec's: 200 with
//!   `cosignature/v1` lines, 400 malformed or old > new, 403 no trusted signature, 404 unknown
//!   origin, 409 stale old size (body: the latest size, `text/x.tlog.size`) or a same-size fork,
//!   422 a consistency proof that does not verify (or is not empty from a size to itself), or a
//!   checkpoint of size 0 whose root is not the empty tree's;
//! - `GET /` — who this witness is: its name, its verifier key, its logs and their sizes;
//! - `GET /checkpoint/<origin>` — the latest checkpoint it cosigned for a log, with the log's
//!   signature and its cosignature (for monitors; the spec leaves monitoring open).
//!
//! Every refusal is a plain-text sentence naming what was wrong; nothing a client sends makes a
//! 5xx, except a failure to write the witness's own state (then nothing was cosigned).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use custodian_core::witness::MAX_BODY;

use crate::witness::{Witness, WitnessServiceError};

/// The witness's HTTP router.
pub fn witness_router(witness: Arc<Witness>) -> Router {
    Router::new()
        .route("/add-checkpoint", post(add_checkpoint))
        .route("/", get(about))
        .route("/checkpoint/{*origin}", get(latest))
        .with_state(witness)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

fn refusal(status: StatusCode, message: impl std::fmt::Display) -> Response {
    text(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

async fn add_checkpoint(State(witness): State<Arc<Witness>>, body: Body) -> Response {
    // Read one byte past the limit so an oversize body is refused by name, not truncated.
    let body = match to_bytes(body, MAX_BODY + 1).await {
        Ok(body) if body.len() <= MAX_BODY => body,
        Ok(_) | Err(_) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                format!("the request body is over the {MAX_BODY}-byte limit or was cut off"),
            );
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let worker = witness.clone();
    // The check-and-persist syncs files, so it runs off the async threads.
    let result = tokio::task::spawn_blocking(move || worker.add_checkpoint(&body, now)).await;
    let result = match result {
        Ok(result) => result,
        Err(join) => {
            return refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the witness task failed: {join}; nothing was cosigned"),
            );
        }
    };
    match result {
        Ok(line) => text(StatusCode::OK, "text/plain; charset=utf-8", line),
        Err(err) => {
            let status = match &err {
                WitnessServiceError::Malformed(_) | WitnessServiceError::OldAfterNew { .. } => {
                    StatusCode::BAD_REQUEST
                }
                WitnessServiceError::UnknownOrigin(_) => StatusCode::NOT_FOUND,
                WitnessServiceError::BadSignature(_) => StatusCode::FORBIDDEN,
                WitnessServiceError::Conflict { latest, .. } => {
                    tracing::debug!(%err, "add-checkpoint conflict");
                    return text(
                        StatusCode::CONFLICT,
                        "text/x.tlog.size",
                        format!("{latest}\n"),
                    );
                }
                WitnessServiceError::RootMismatch { .. } => {
                    tracing::warn!(%err, "refused a checkpoint that forks a cosigned one");
                    StatusCode::CONFLICT
                }
                WitnessServiceError::BadProof { .. } => {
                    tracing::warn!(%err, "refused a checkpoint with a bad consistency proof");
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                WitnessServiceError::NotTheEmptyTree { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                _ => {
                    tracing::error!(%err, "witness state write failed");
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            refusal(status, err)
        }
    }
}

async fn about(State(witness): State<Arc<Witness>>) -> Response {
    let key = witness.verifier();
    let mut out = format!(
        "# Custodian witness {}\n\nverifier key: {key}\nsubmission: POST /add-checkpoint (c2sp.org/tlog-witness)\n\nlogs:\n",
        key.name()
    );
    for origin in witness.logs().origins() {
        let size = witness.latest(origin).map_or(0, |c| c.size);
        out.push_str(&format!("  {origin}  cosigned size {size}\n"));
    }
    text(StatusCode::OK, "text/plain; charset=utf-8", out)
}

async fn latest(State(witness): State<Arc<Witness>>, Path(origin): Path<String>) -> Response {
    match witness.latest(&origin) {
        Some(cosigned) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            cosigned.note,
        )
            .into_response(),
        None => refusal(
            StatusCode::NOT_FOUND,
            format!("this witness has cosigned no checkpoint of {origin:?}"),
        ),
    }
}
