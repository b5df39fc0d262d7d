//! The ledger as a C2SP tlog-tiles log (<https://c2sp.org/tlog-tiles>) under `/log/`: the
//! published checkpoint, the hash tiles and the entry bundles, readable by any tlog-tiles client
//! (Go's `sumdb/tlog`, Tessera's client) without a token, as the checkpoint and tree hashes are
//! over gRPC. Clients authenticate every tile and bundle against the signed checkpoint, as the
//! tile design intends; the daemon serves the stored hashes its own proofs are built from. A
//! bundle holding an entry that cannot be public (a private package's, or one too long for the
//! format) is refused whole.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use custodian_core::tiles::{EntryBundle, Tile};
use custodian_storage::LedgerError;

use super::RestState;
use super::error::{ApiError, ApiResult};
use crate::tile_mirror::{BundleError, read_bundle};

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

/// `GET /log/tile/<L>/<N>[.p/<W>]`: one hash tile, `W` (or 256) hashes of 32 bytes; entry
/// bundles (`tile/entries/…`) are under the same route.
pub(super) async fn tile(
    State(state): State<RestState>,
    Path(path): Path<String>,
) -> ApiResult<Response> {
    let path = format!("tile/{path}");
    if path.starts_with("tile/entries/") {
        return bundle(state, &path).await;
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
    Ok(immutable(bytes))
}

/// `GET /log/tile/entries/<N>[.p/<W>]`: an entry bundle, each entry as a big-endian uint16 length
/// and its bytes. A bundle holding an entry about a private package, or one longer than the
/// format can say, is 404 with the reason: its bytes would leak or cannot be written.
async fn bundle(state: RestState, path: &str) -> ApiResult<Response> {
    let bundle = EntryBundle::parse(path)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string()))?;
    let ledger = state.registry.ledger().clone();
    let read = tokio::task::spawn_blocking(move || read_bundle(&ledger, &bundle))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(err @ (BundleError::Beyond { .. } | BundleError::Refused { .. })) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                err.to_string(),
            ));
        }
        Err(BundleError::Ledger(err)) => {
            return Err(crate::registry::RegistryError::Ledger(err).into());
        }
    };
    Ok(immutable(bytes))
}

/// Tile or bundle bytes, which never change at their path: cacheable for good.
fn immutable(bytes: Vec<u8>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
        ],
        Body::from(bytes),
    )
        .into_response()
}
