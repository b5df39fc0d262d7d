//! The one place errors become gRPC statuses: [`GrpcError`] gathers every layer's error, and
//! `From<GrpcError> for Status` picks each one's code. Handlers write `?` on registry and auth
//! errors (they convert directly) and `.map_err(GrpcError::from)?` on storage errors, whose types
//! live in another crate; ledger errors name the request field they concern with
//! [`GrpcError::ledger`]. Every message names the field and the value, as clients are promised.

use custodian_core::merkle::ProofError;
use custodian_core::{Digest, DigestError};
use custodian_storage::uploads::UploadError;
use custodian_storage::{LedgerError, StorageError};
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::auth::{AuthError, Authenticator, Principal};
use crate::registry::RegistryError;

/// An error on its way to a gRPC client.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// Blob storage refused or failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The ledger refused or failed; `field` is the request field concerned.
    #[error("field {field}: {source}")]
    Ledger {
        /// The request field the error concerns (`ledger` when none does).
        field: &'static str,
        /// The ledger's error.
        source: LedgerError,
    },
    /// The registry or evidence layer refused.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The caller could not be authenticated.
    #[error("metadata authorization: {0}")]
    Auth(#[from] AuthError),
    /// A resumable upload session refused or failed.
    #[error(transparent)]
    Upload(#[from] UploadError),
    /// A status a handler chose itself (bad input it checked, a hidden entry).
    #[error("{}", .0.message())]
    Status(#[from] Status),
}

impl GrpcError {
    /// A ledger error about the request field `field`.
    pub fn ledger(field: &'static str, source: LedgerError) -> Self {
        GrpcError::Ledger { field, source }
    }
}

impl From<LedgerError> for GrpcError {
    fn from(source: LedgerError) -> Self {
        GrpcError::ledger("ledger", source)
    }
}

impl From<GrpcError> for Status {
    fn from(err: GrpcError) -> Status {
        let message = err.to_string();
        match err {
            GrpcError::Storage(err) => match err {
                StorageError::NotFound { .. } => Status::not_found(message),
                StorageError::DigestMismatch { .. } | StorageError::SizeMismatch { .. } => {
                    Status::invalid_argument(message)
                }
                StorageError::OutOfRange { .. } => Status::out_of_range(message),
                StorageError::Corrupt { .. } => Status::data_loss(message),
                StorageError::Poisoned { .. } | StorageError::Unavailable { .. } => {
                    Status::unavailable(message)
                }
                StorageError::Aborted(_) => Status::aborted(message),
                StorageError::Backend { .. } => Status::internal(message),
            },
            GrpcError::Ledger { source, .. } => match source {
                LedgerError::NoSuchEntry { .. }
                | LedgerError::NoSuchLeaf(_)
                | LedgerError::NoSuchCheckpoint(_) => Status::not_found(message),
                LedgerError::SizeBeyondLog { .. } => Status::out_of_range(message),
                LedgerError::InvalidEntry(_) => Status::invalid_argument(message),
                LedgerError::Proof(
                    ProofError::SizesOutOfOrder { .. } | ProofError::IndexOutOfRange { .. },
                ) => Status::invalid_argument(message),
                LedgerError::Proof(_) | LedgerError::Corrupt(_) => {
                    Status::data_loss(format!("{source}; nothing derived from it is served"))
                }
                LedgerError::WrongKey { .. } => Status::failed_precondition(source.to_string()),
                // Another daemon kept appending conflicting entries through every retry.
                LedgerError::ConditionFailed { .. } => Status::aborted(source.to_string()),
                // A conflict reaches a client only after the ledger's retries ran out: the log is
                // busy with other writers, and the append may be sent again.
                LedgerError::Poisoned(_)
                | LedgerError::NotYetPublished { .. }
                | LedgerError::Conflict { .. }
                | LedgerError::Unavailable { .. } => Status::unavailable(source.to_string()),
                LedgerError::Backend { .. } => Status::internal(source.to_string()),
            },
            GrpcError::Registry(err) => match err {
                RegistryError::InvalidArgument(_) | RegistryError::Invalid(_) => {
                    Status::invalid_argument(message)
                }
                RegistryError::NotFound(_) => Status::not_found(message),
                RegistryError::AlreadyExists(_) => Status::already_exists(message),
                RegistryError::Unauthenticated(_) => Status::unauthenticated(message),
                RegistryError::PermissionDenied(_) => Status::permission_denied(message),
                RegistryError::FailedPrecondition(_) => Status::failed_precondition(message),
                RegistryError::Ledger(e) => GrpcError::ledger("ledger", e).into(),
                RegistryError::Storage(e) => GrpcError::Storage(e).into(),
            },
            GrpcError::Upload(err) => match err {
                UploadError::Unknown { .. } => Status::not_found(message),
                UploadError::OffsetMismatch { .. } | UploadError::Invalid { .. } => {
                    Status::failed_precondition(message)
                }
                UploadError::TooLarge { .. } | UploadError::PieceRejected { .. } => {
                    Status::invalid_argument(message)
                }
                UploadError::BodyFailed { .. } => Status::aborted(message),
                UploadError::Io { .. } => Status::internal(message),
                UploadError::Storage(e) => GrpcError::Storage(e).into(),
            },
            GrpcError::Auth(_) => Status::unauthenticated(message),
            GrpcError::Status(status) => status,
        }
    }
}

// Registry and auth errors are this crate's own types, so they may convert to `Status` directly
// and handlers can write `?` on them.
impl From<RegistryError> for Status {
    fn from(err: RegistryError) -> Status {
        GrpcError::Registry(err).into()
    }
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Status {
        GrpcError::Auth(err).into()
    }
}

/// The principal behind a gRPC request, from its `authorization` metadata.
pub fn principal<T>(auth: &Authenticator, request: &Request<T>) -> Result<Principal, Status> {
    Ok(auth.authenticate(authorization(request.metadata())?)?)
}

/// The `authorization` metadata of a request, if it has any.
pub fn authorization(metadata: &MetadataMap) -> Result<Option<&str>, Status> {
    metadata
        .get("authorization")
        .map(|value| {
            value
                .to_str()
                .map_err(|_| Status::unauthenticated("metadata authorization is not ASCII text"))
        })
        .transpose()
}

/// Parses a required digest field, naming the field in the error.
pub fn parse_digest(field: &str, value: &str) -> Result<Digest, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!(
            "field {field} is required: give \"sha256:<64 hex digits>\" or \"blake3:<64 hex digits>\""
        )));
    }
    value
        .parse()
        .map_err(|e: DigestError| Status::invalid_argument(format!("field {field}: {e}")))
}

/// [`parse_digest`] for a field of a batch call, which carries thousands: the field's name is
/// made by `field` only for an error.
pub fn parse_digest_in_batch(
    field: impl FnOnce() -> String,
    value: &str,
) -> Result<Digest, Status> {
    value.parse().or_else(|_| parse_digest(&field(), value))
}

/// Parses an optional digest field (empty means absent), naming the field in the error.
pub fn parse_optional_digest(field: &str, value: &str) -> Result<Option<Digest>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    parse_digest(field, value).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_layer_keeps_its_code_and_names_the_field() {
        let status = Status::from(GrpcError::ledger(
            "tree_size",
            LedgerError::SizeBeyondLog {
                requested: 9,
                size: 3,
            },
        ));
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert!(
            status.message().starts_with("field tree_size: "),
            "{status:?}"
        );
        let status = Status::from(RegistryError::NotFound("no package named \"x\"".into()));
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "no package named \"x\"");
        let status = Status::from(GrpcError::Storage(StorageError::Aborted("gone".into())));
        assert_eq!(status.code(), tonic::Code::Aborted);
        let status = Status::from(GrpcError::from(Status::invalid_argument("field x: y")));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "field x: y");
    }

    #[test]
    fn a_missing_or_bad_digest_names_its_field() {
        let err = parse_digest("digest", "").expect_err("empty");
        assert!(
            err.message().starts_with("field digest is required"),
            "{err:?}"
        );
        let err = parse_digest("digest", "md5:00").expect_err("bad");
        assert!(err.message().starts_with("field digest: "), "{err:?}");
        assert_eq!(parse_optional_digest("digest", "").expect("empty"), None);
    }
}
