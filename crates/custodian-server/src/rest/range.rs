//! Serving blob bytes over HTTP: a `Range` header parsed (RFC 9110 §14.1.2) and the blob, or one
//! range of it, streamed with every block checked.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use custodian_core::Digest;
use custodian_storage::{BlobMeta, BlobStore, ByteRange};
use futures::StreamExt as _;

use super::error::{ApiError, ApiResult};

/// A parsed single `Range: bytes=…` header, resolved against the blob size.
pub(super) fn parse_range(
    header: Option<&HeaderValue>,
    size: u64,
) -> Result<Option<(u64, u64)>, ApiError> {
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
pub(super) async fn serve_blob(
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
