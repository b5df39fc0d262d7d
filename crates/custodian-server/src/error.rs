//! The server layer's errors, and the one place storage errors become gRPC statuses.

use custodian_core::{Digest, DigestError};
use custodian_storage::StorageError;
use tonic::Status;

/// Why the server could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The storage backend could not be opened.
    #[error("cannot open storage: {0}")]
    Storage(#[from] StorageError),
    /// The storage setting is not one the server understands.
    #[error("invalid storage setting {value:?}: {reason}")]
    InvalidStorage {
        /// The setting as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The data directory could not be prepared.
    #[error("cannot prepare data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The ledger could not be opened.
    #[error("cannot open the ledger: {0}")]
    Ledger(#[from] custodian_storage::LedgerError),
    /// The log key could not be loaded or created.
    #[error("log key {path}: {reason}")]
    LogKey {
        /// The key file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A start-up task panicked or was cancelled.
    #[error("{0}")]
    Task(String),
    /// gRPC reflection could not be built from the descriptors.
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(String),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The token file could not be read.
    #[error("access control: {0}")]
    Auth(#[from] crate::auth::AuthError),
    /// The registry could not be rebuilt from the ledger.
    #[error("registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    /// The gRPC transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Converts a storage error into the gRPC status a client sees.
pub fn storage_status(err: StorageError) -> Status {
    let message = err.to_string();
    match err {
        StorageError::NotFound { .. } => Status::not_found(message),
        StorageError::DigestMismatch { .. } | StorageError::SizeMismatch { .. } => {
            Status::invalid_argument(message)
        }
        StorageError::OutOfRange { .. } => Status::out_of_range(message),
        StorageError::Corrupt { .. } => Status::data_loss(message),
        StorageError::Poisoned { .. } => Status::unavailable(message),
        StorageError::Aborted(_) => Status::aborted(message),
        StorageError::Backend { .. } => Status::internal(message),
    }
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

/// Parses an optional digest field (empty means absent), naming the field in the error.
pub fn parse_optional_digest(field: &str, value: &str) -> Result<Option<Digest>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    parse_digest(field, value).map(Some)
}
