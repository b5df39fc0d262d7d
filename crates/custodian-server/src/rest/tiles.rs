//! The ledger as a C2SP tlog-tiles log (<https://c2sp.org/tlog-tiles>) under `/log/`: the signed
//! checkpoint and the hash tiles, readable by any tlog-tiles client (Go's `sumdb/tlog`,
//! Tessera's client) without a token, as the checkpoint and tree hashes are over gRPC. Clients
//! authenticate every tile against the signed checkpoint, as the tile design intends; the daemon
//! serves the stored hashes its own proofs are built from.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use custodian_core::tiles::Tile;
use custodian_storage::LedgerError;

use super::RestState;
use super::error::{ApiError, ApiResult};

/// Full and partial tiles of a given width never change, so caches may keep them for good.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `GET /log/checkpoint`: the latest signed checkpoint (C2SP tlog-checkpoint). It changes with
/// every append, so caches must ask again each time.
pub(super) async fn checkpoint(State(state): State<RestState>) -> Response {
    let note = state.registry.ledger().published().note.clone();
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        note,
    )
        .into_response()
}

/// `GET /log/tile/<L>/<N>[.p/<W>]`: one hash tile, `W` (or 256) hashes of 32 bytes.
pub(super) async fn tile(
    State(state): State<RestState>,
    Path(path): Path<String>,
) -> ApiResult<Response> {
    let path = format!("tile/{path}");
    if path.starts_with("tile/entries/") {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "entry bundles (tile/entries/…) are not served yet: read entries with GetEntries or `custodian log export`",
        ));
    }
    let tile = Tile::parse(&path)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string()))?;
    let ledger = state.registry.ledger().clone();
    let read = tokio::task::spawn_blocking(move || ledger.tile(&tile))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(LedgerError::SizeBeyondLog { size, .. }) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "{path} is beyond the log: it has {size} entries (a tile's width comes from a checkpoint's size)"
                ),
            ));
        }
        Err(err) => return Err(crate::registry::RegistryError::Ledger(err).into()),
    };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
        ],
        Body::from(bytes),
    )
        .into_response())
}
