//! The REST side's errors: JSON `{"error": {"code", "message"}}` with a stable code, from every
//! layer's error, and the middleware that gives axum's own rejections the same shape.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use custodian_storage::StorageError;
use serde_json::json;

use crate::registry::RegistryError;

/// Rewrites an error answer that is not JSON (axum's own extractor rejections) into the API's
/// `{"error": {"code", "message"}}`, keeping its status and its text as the message.
pub(super) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            // The pages' own error pages are HTML on purpose.
            v.starts_with("application/json")
                || v.starts_with("application/grpc")
                || v.starts_with("text/html")
        });
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

/// The largest request body an endpoint that reads its whole body into memory accepts (a data
/// pack manifest); the same as axum's default limit, which the extractor enforces on a body
/// that declares no length.
pub(super) const BODY_LIMIT: usize = 2 << 20;

/// Refuses a request whose declared `Content-Length` is over [`BODY_LIMIT`] before anything reads
/// its body. Reading it would first send `100 Continue`, and the client would then be cut off
/// mid-upload with a broken pipe instead of reading the answer; refused here, it reads the 413.
pub(super) async fn refuse_declared_oversize(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > BODY_LIMIT as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "header content-length: the body is {length} bytes, more than the {BODY_LIMIT} this endpoint accepts"
            ),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// A JSON error with a stable code.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    code: &'static str,
    message: String,
    problems: Option<serde_json::Value>,
}

impl ApiError {
    /// An error answered with `status`, the stable `code` and `message`.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            problems: None,
        }
    }
}

impl ApiError {
    /// The error's message.
    pub(super) fn message(&self) -> &str {
        &self.message
    }
}

impl ApiError {
    /// The status and JSON body the API answers this error with (the local put socket relays
    /// them for data pack requests).
    pub(crate) fn answer(self) -> (StatusCode, serde_json::Value) {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(problems) = self.problems {
            body["error"]["problems"] = problems;
        }
        (self.status, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.answer();
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
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
            StorageError::Poisoned { .. }
            | StorageError::Unavailable { .. }
            | StorageError::Aborted(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            StorageError::Backend { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
        }
    }
}

/// What every handler returns.
pub type ApiResult<T> = Result<T, ApiError>;

pub(super) fn bad_multipart(message: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_multipart",
        format!("multipart body: {message}"),
    )
}
