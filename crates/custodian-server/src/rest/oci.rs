//! The OCI Distribution Specification v1.1 on the REST port, under `/v2/` (endpoints end-1 to
//! end-13): the HTTP face of [`crate::oci::Oci`]. Errors are the spec's JSON bodies
//! (`{"errors": [{"code", "message"}]}`); a 401 carries a `WWW-Authenticate` challenge. Tokens
//! are the registry's API tokens, sent as `Bearer <token>` or as the password of Basic
//! authentication (any user name).

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use custodian_core::Digest;
use custodian_core::oci::{ErrorCode, MAX_MANIFEST, Name, OciError, Reference, parse_digest};
use custodian_storage::StorageError;

use super::RestState;
use super::range::serve_blob;
use crate::auth::Principal;
use crate::oci::OciFailure;
use crate::registry::RegistryError;

/// The challenge sent with every 401.
const CHALLENGE: &str = "Basic realm=\"custodian\", charset=\"UTF-8\"";

/// The header carrying a manifest's digest (from the Docker registry API, kept by the spec).
const DIGEST_HEADER: &str = "docker-content-digest";

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(CHALLENGE),
        );
    }
    response
}

fn spec_error(code: ErrorCode, message: &str) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    error_response(status, code.as_str(), message)
}

impl IntoResponse for OciFailure {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            OciFailure::Refused(OciError { code, .. }) => spec_error(code, &message),
            OciFailure::Unauthenticated(_) => spec_error(ErrorCode::Unauthorized, &message),
            OciFailure::Denied(_) => spec_error(ErrorCode::Denied, &message),
            OciFailure::Storage(err) => storage_response(&err, &message),
            OciFailure::Registry(RegistryError::Storage(err)) => storage_response(&err, &message),
            OciFailure::Registry(RegistryError::Unauthenticated(_)) => {
                spec_error(ErrorCode::Unauthorized, &message)
            }
            OciFailure::Registry(RegistryError::PermissionDenied(_)) => {
                spec_error(ErrorCode::Denied, &message)
            }
            OciFailure::Registry(RegistryError::Ledger(_)) => {
                tracing::error!(%message, "an OCI request failed in the ledger");
                error_response(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", &message)
            }
            other => {
                tracing::error!(error = %other, "an OCI request failed");
                error_response(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", &message)
            }
        }
    }
}

fn storage_response(err: &StorageError, message: &str) -> Response {
    match err {
        StorageError::DigestMismatch { .. } => spec_error(ErrorCode::DigestInvalid, message),
        StorageError::SizeMismatch { .. } => spec_error(ErrorCode::SizeInvalid, message),
        StorageError::NotFound { .. } => spec_error(ErrorCode::BlobUnknown, message),
        StorageError::OutOfRange { .. } => {
            error_response(StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID", message)
        }
        StorageError::Poisoned { .. }
        | StorageError::Unavailable { .. }
        | StorageError::Aborted(_) => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message)
        }
        StorageError::Corrupt { .. } | StorageError::Backend { .. } => {
            tracing::error!(%message, "an OCI request failed in custody");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", message)
        }
    }
}

type OciResult = Result<Response, OciFailure>;

/// What a `/v2/` path names.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Base,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    UploadStart(&'a str),
    Upload(&'a str, &'a str),
    Referrers(&'a str, &'a str),
}

/// Splits a path after `/v2/` by its last components; a repository name may itself contain
/// `blobs` or `manifests` as a component, so the name is everything before the endpoint's suffix.
fn route(path: &str) -> Option<Route<'_>> {
    if path.is_empty() {
        return Some(Route::Base);
    }
    if let Some(name) = path.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some(name) = path.strip_suffix("/blobs/uploads/") {
        return Some(Route::UploadStart(name));
    }
    let (head, last) = path.rsplit_once('/')?;
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        return Some(Route::Upload(name, last));
    }
    if let Some(name) = head.strip_suffix("/blobs") {
        return Some(Route::Blob(name, last));
    }
    if let Some(name) = head.strip_suffix("/manifests") {
        return Some(Route::Manifest(name, last));
    }
    if let Some(name) = head.strip_suffix("/referrers") {
        return Some(Route::Referrers(name, last));
    }
    None
}

fn principal(state: &RestState, headers: &HeaderMap) -> Result<Principal, OciFailure> {
    let header = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            OciFailure::Unauthenticated("the Authorization header is not ASCII text".into())
        })?),
    };
    state
        .auth
        .authenticate(header)
        .map_err(|e| OciFailure::Unauthenticated(e.to_string()))
}

fn name(text: &str) -> Result<String, OciFailure> {
    Ok(Name::parse(text)?.as_str().to_string())
}

fn digest_param(text: Option<&String>, what: &str) -> Result<Digest, OciFailure> {
    let text = text.ok_or_else(|| {
        OciFailure::Refused(OciError {
            code: ErrorCode::DigestInvalid,
            message: format!("{what} needs the digest query parameter (?digest=sha256:…)"),
        })
    })?;
    Ok(parse_digest(text)?)
}

fn upload_location(repo: &str, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

/// The `Range` an upload reports: `0-<last byte>` (`0-0` before any byte, as distribution does).
fn upload_range(committed: u64) -> String {
    format!("0-{}", committed.saturating_sub(1))
}

fn upload_answer(status: StatusCode, repo: &str, id: &str, committed: u64) -> Response {
    Response::builder()
        .status(status)
        .header(header::LOCATION, upload_location(repo, id))
        .header(header::RANGE, upload_range(committed))
        .header("docker-upload-uuid", id)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default()
}

fn blob_created(repo: &str, digest: &Digest) -> Response {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{repo}/blobs/{digest}"))
        .header(DIGEST_HEADER, digest.to_string())
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default()
}

/// `Content-Range: <start>-<end>` of a chunk (the spec's form, without a unit; `bytes ` is
/// accepted too).
fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, OciFailure> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        OciFailure::Refused(OciError {
            code: ErrorCode::BlobUploadInvalid,
            message: format!("Content-Range {value:?} is not <start>-<end>"),
        })
    };
    let text = value.to_str().map_err(|_| bad())?;
    let text = text.strip_prefix("bytes ").unwrap_or(text);
    let text = text.split('/').next().unwrap_or(text);
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let end: u64 = end.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The single handler of `/v2/…`: routes by path and method.
pub(super) async fn handle(
    State(state): State<RestState>,
    method: Method,
    uri: Uri,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match dispatch(&state, method, &uri, &query, &headers, body).await {
        Ok(response) => response,
        Err(failure) => failure.into_response(),
    }
}

async fn dispatch(
    state: &RestState,
    method: Method,
    uri: &Uri,
    query: &std::collections::HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
) -> OciResult {
    let oci = &state.oci;
    let who = principal(state, headers)?;
    let path = uri.path().strip_prefix("/v2/").unwrap_or("");
    let Some(route) = route(path) else {
        return Ok(error_response(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("{} is no endpoint of the OCI distribution API", uri.path()),
        ));
    };
    let stream = body.into_data_stream();
    match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => match who {
            // Clients learn here that this registry takes credentials, and which kind.
            Principal::Anonymous => Err(OciFailure::Unauthenticated(
                "send an API token as a Bearer token or as the password of Basic authentication; public repositories are readable without one".into(),
            )),
            Principal::Token(_) => Ok((
                [(header::CONTENT_TYPE, "application/json")],
                "{}",
            )
                .into_response()),
        },
        (Route::Tags(repo), Method::GET) => {
            let repo = name(repo)?;
            let n = match query.get("n") {
                Some(n) => Some(n.parse::<usize>().map_err(|_| {
                    OciFailure::Refused(OciError {
                        code: ErrorCode::Unsupported,
                        message: format!("n={n:?} is not a count"),
                    })
                })?),
                None => None,
            };
            let last = query.get("last").map(String::as_str);
            let (tags, more) = oci.tags(&who, &repo, n, last).await?;
            let mut response = axum::Json(serde_json::json!({"name": repo, "tags": tags}))
                .into_response();
            if more && let Some(last) = tags.last() {
                let link = format!(
                    "</v2/{repo}/tags/list?n={}&last={last}>; rel=\"next\"",
                    n.unwrap_or(tags.len())
                );
                if let Ok(value) = HeaderValue::from_str(&link) {
                    response.headers_mut().insert(header::LINK, value);
                }
            }
            Ok(response)
        }
        (Route::Manifest(repo, reference), method) => {
            let repo = name(repo)?;
            let reference = Reference::parse(reference)?;
            match method {
                Method::GET | Method::HEAD => {
                    let served = oci.manifest(&who, &repo, &reference).await?;
                    let len = served.bytes.len();
                    Ok(Response::builder()
                        .status(StatusCode::OK)
                        .header(header::CONTENT_TYPE, served.media_type)
                        .header(DIGEST_HEADER, served.digest.to_string())
                        .header(header::CONTENT_LENGTH, len)
                        .body(if method == Method::HEAD {
                            Body::empty()
                        } else {
                            Body::from(served.bytes)
                        })
                        .unwrap_or_default())
                }
                Method::PUT => {
                    // The spec: a manifest over the registry's limit is refused with 413.
                    let too_large = || {
                        error_response(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            ErrorCode::SizeInvalid.as_str(),
                            &format!(
                                "the manifest is over the {MAX_MANIFEST} bytes this registry accepts"
                            ),
                        )
                    };
                    let Ok(bytes) =
                        axum::body::to_bytes(Body::from_stream(stream), MAX_MANIFEST + 1).await
                    else {
                        return Ok(too_large());
                    };
                    if bytes.len() > MAX_MANIFEST {
                        return Ok(too_large());
                    }
                    let content_type = headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let pushed = oci
                        .put_manifest(&who, &repo, &reference, bytes, content_type)
                        .await?;
                    let mut response = Response::builder()
                        .status(StatusCode::CREATED)
                        .header(
                            header::LOCATION,
                            format!("/v2/{repo}/manifests/{}", pushed.digest),
                        )
                        .header(DIGEST_HEADER, pushed.digest.to_string())
                        .header(header::CONTENT_LENGTH, 0);
                    if let Some(subject) = pushed.subject {
                        response = response.header("oci-subject", subject.to_string());
                    }
                    Ok(response.body(Body::empty()).unwrap_or_default())
                }
                Method::DELETE => {
                    oci.delete_manifest(&who, &repo, &reference).await?;
                    Ok(StatusCode::ACCEPTED.into_response())
                }
                _ => Ok(method_not_allowed()),
            }
        }
        (Route::Blob(repo, digest), method) => {
            let repo = name(repo)?;
            let digest = parse_digest(digest)?;
            match method {
                Method::GET | Method::HEAD => {
                    let meta = oci.blob(&who, &repo, &digest).await?;
                    let mut response = if method == Method::HEAD {
                        Response::builder()
                            .status(StatusCode::OK)
                            .header(header::CONTENT_LENGTH, meta.size)
                            .header(header::CONTENT_TYPE, "application/octet-stream")
                            .header(header::ACCEPT_RANGES, "bytes")
                            .body(Body::empty())
                            .unwrap_or_default()
                    } else {
                        match serve_blob(state.registry.store(), &digest, meta, headers, None).await {
                            Ok(response) => response,
                            // A Range that does not fit the blob is refused before any byte is read.
                            Err(e) if e.status == StatusCode::RANGE_NOT_SATISFIABLE => {
                                error_response(e.status, "RANGE_INVALID", e.message())
                            }
                            Err(e) => error_response(e.status, "UNKNOWN", e.message()),
                        }
                    };
                    if let Ok(value) = HeaderValue::from_str(&digest.to_string()) {
                        response.headers_mut().insert(DIGEST_HEADER, value);
                    }
                    Ok(response)
                }
                Method::DELETE => {
                    oci.delete_blob(&who, &repo, &digest).await?;
                    Ok(StatusCode::ACCEPTED.into_response())
                }
                _ => Ok(method_not_allowed()),
            }
        }
        (Route::UploadStart(repo), Method::POST) => {
            let repo = name(repo)?;
            if let Some(mount) = query.get("mount") {
                let digest = parse_digest(mount)?;
                let from = match query.get("from") {
                    Some(from) => Some(name(from)?),
                    None => None,
                };
                if oci.mount(&who, &repo, &digest, from.as_deref()).await? {
                    return Ok(blob_created(&repo, &digest));
                }
            } else if query.contains_key("digest") {
                let digest = digest_param(query.get("digest"), "a monolithic upload")?;
                oci.put_blob(&who, &repo, &digest, content_length(headers), stream)
                    .await?;
                return Ok(blob_created(&repo, &digest));
            }
            let id = oci.start_upload(&who, &repo).await?;
            Ok(upload_answer(StatusCode::ACCEPTED, &repo, &id, 0))
        }
        (Route::Upload(repo, id), method) => {
            let repo = name(repo)?;
            match method {
                Method::GET => {
                    let committed = oci.upload_status(&who, &repo, id).await?;
                    Ok(upload_answer(StatusCode::NO_CONTENT, &repo, id, committed))
                }
                Method::PATCH | Method::PUT => {
                    let range = content_range(headers)?;
                    if let (Some((start, end)), Some(len)) = (range, content_length(headers))
                        && end - start + 1 != len
                    {
                        return Err(OciFailure::Refused(OciError {
                            code: ErrorCode::BlobUploadInvalid,
                            message: format!(
                                "Content-Range {start}-{end} is {} bytes but Content-Length is {len}",
                                end - start + 1
                            ),
                        }));
                    }
                    let digest = if method == Method::PUT {
                        Some(digest_param(query.get("digest"), "completing an upload")?)
                    } else {
                        None
                    };
                    let appended = oci
                        .append_upload(&who, &repo, id, range.map(|r| r.0), stream)
                        .await?;
                    let committed = match appended {
                        Ok(committed) => committed,
                        Err(out_of_order) => {
                            let mut response = error_response(
                                StatusCode::RANGE_NOT_SATISFIABLE,
                                ErrorCode::BlobUploadInvalid.as_str(),
                                &format!(
                                    "this chunk starts at byte {}, but the upload has {} bytes: send the chunk that starts at {}",
                                    range.map_or(0, |r| r.0),
                                    out_of_order.committed,
                                    out_of_order.committed
                                ),
                            );
                            let h = response.headers_mut();
                            if let Ok(v) = HeaderValue::from_str(&upload_location(&repo, id)) {
                                h.insert(header::LOCATION, v);
                            }
                            if let Ok(v) = HeaderValue::from_str(&upload_range(out_of_order.committed)) {
                                h.insert(header::RANGE, v);
                            }
                            return Ok(response);
                        }
                    };
                    match digest {
                        None => Ok(upload_answer(StatusCode::ACCEPTED, &repo, id, committed)),
                        Some(digest) => {
                            oci.finish_upload(&who, &repo, id, &digest).await?;
                            Ok(blob_created(&repo, &digest))
                        }
                    }
                }
                Method::DELETE => {
                    oci.cancel_upload(&who, &repo, id).await?;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                _ => Ok(method_not_allowed()),
            }
        }
        (Route::Referrers(repo, subject), Method::GET) => {
            let repo = name(repo)?;
            let subject = parse_digest(subject)?;
            let artifact_type = query.get("artifactType").map(String::as_str);
            let referrers = oci.referrers(&who, &repo, &subject, artifact_type).await?;
            let manifests: Vec<serde_json::Value> = referrers
                .iter()
                .map(|r| {
                    let mut d = serde_json::json!({
                        "mediaType": r.info.media_type,
                        "digest": r.digest.to_string(),
                        "size": r.info.size,
                    });
                    if let Some(t) = &r.info.artifact_type {
                        d["artifactType"] = serde_json::json!(t);
                    }
                    if !r.info.annotations.is_empty() {
                        d["annotations"] = serde_json::json!(r.info.annotations);
                    }
                    d
                })
                .collect();
            let body = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": custodian_core::oci::OCI_INDEX,
                "manifests": manifests,
            });
            let mut response = (
                [(header::CONTENT_TYPE, custodian_core::oci::OCI_INDEX)],
                body.to_string(),
            )
                .into_response();
            if artifact_type.is_some() {
                response
                    .headers_mut()
                    .insert("oci-filters-applied", HeaderValue::from_static("artifactType"));
            }
            Ok(response)
        }
        _ => Ok(method_not_allowed()),
    }
}

/// `GET /oci/history?name=NAME&tag=TAG`: every state the tag has had, oldest first, each with
/// the receipt of the ledger entry that set it (what `custodian oci history` prints).
pub(super) async fn history(
    State(state): State<RestState>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let answer = async {
        let who = principal(&state, &headers)?;
        let repo = name(query.get("name").map_or("", String::as_str))?;
        let tag = custodian_core::oci::Tag::parse(query.get("tag").map_or("", String::as_str))?;
        let states = state.oci.history(&who, &repo, tag.as_str())?;
        let states: Vec<serde_json::Value> = states
            .into_iter()
            .map(|(s, receipt)| {
                serde_json::json!({
                    "index": s.index,
                    "time_ms": s.time_ms,
                    "digest": s.digest.map(|d| d.to_string()),
                    "pusher": s.pusher,
                    "receipt": serde_json::from_str::<serde_json::Value>(&receipt).unwrap_or_default(),
                })
            })
            .collect();
        Ok::<_, OciFailure>(
            axum::Json(serde_json::json!({"name": repo, "tag": tag.as_str(), "states": states}))
                .into_response(),
        )
    };
    // This endpoint is Custodian's own, so it answers errors in the REST API's shape.
    answer
        .await
        .unwrap_or_else(|failure| api_error(failure).into_response())
}

/// An OCI failure as the REST API's JSON error (for Custodian's own endpoints beside `/v2/`).
fn api_error(failure: OciFailure) -> super::error::ApiError {
    use super::error::ApiError;
    let message = failure.to_string();
    match failure {
        OciFailure::Refused(OciError { code, .. }) => match code {
            ErrorCode::ManifestUnknown | ErrorCode::NameUnknown | ErrorCode::BlobUnknown => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            _ => ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message),
        },
        OciFailure::Unauthenticated(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
        }
        OciFailure::Denied(_) => ApiError::new(StatusCode::FORBIDDEN, "permission_denied", message),
        OciFailure::Registry(e) => e.into(),
        OciFailure::Storage(e) => e.into(),
        OciFailure::Io { .. } | OciFailure::Internal(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
        }
    }
}

fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Unsupported.as_str(),
        "this OCI endpoint does not answer that method",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_by_their_last_components() {
        assert_eq!(route(""), Some(Route::Base));
        assert_eq!(route("a/b/tags/list"), Some(Route::Tags("a/b")));
        assert_eq!(route("a/blobs/uploads/"), Some(Route::UploadStart("a")));
        assert_eq!(route("a/blobs/uploads/x1"), Some(Route::Upload("a", "x1")));
        assert_eq!(
            route("blobs/manifests/blobs/sha256:0"),
            Some(Route::Blob("blobs/manifests", "sha256:0"))
        );
        assert_eq!(route("a/manifests/v1"), Some(Route::Manifest("a", "v1")));
        assert_eq!(
            route("a/referrers/sha256:0"),
            Some(Route::Referrers("a", "sha256:0"))
        );
        assert_eq!(route("a/nothing/here"), None);
    }

    #[test]
    fn content_ranges_are_the_specs_form() {
        let parse = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(value).expect("ascii"),
            );
            content_range(&headers).ok().flatten()
        };
        assert_eq!(parse("0-99"), Some((0, 99)));
        assert_eq!(parse("100-100"), Some((100, 100)));
        assert_eq!(
            parse("bytes 5-9/10"),
            Some((5, 9)),
            "the RFC 9110 form is accepted too"
        );
        for bad in ["", "5", "9-5", "a-b", "-5", "1-"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(content_range(&HeaderMap::new()).ok().flatten(), None);
    }

    #[test]
    fn upload_ranges_are_inclusive_and_start_at_zero() {
        assert_eq!(upload_range(0), "0-0");
        assert_eq!(upload_range(1), "0-0");
        assert_eq!(upload_range(1024), "0-1023");
    }
}
