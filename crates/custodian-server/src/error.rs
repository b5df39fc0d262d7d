//! Why the server could not start or keep running. (Errors on their way to clients become
//! statuses in `grpc::status` and HTTP responses in `rest::error`.)

use custodian_storage::StorageError;

/// Why the server could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The storage backend could not be opened.
    #[error("cannot open storage: {0}")]
    Storage(#[from] StorageError),
    /// The `--tiles-to` location cannot be opened or holds another log.
    #[error("--tiles-to {url}: {reason}")]
    TileMirror {
        /// The location as given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The `--witness-policy` setup failed (the kept checkpoint, the HTTP client).
    #[error("witnessing: {0}")]
    Witnessing(String),
    /// The data directory could not be prepared.
    #[error("cannot prepare data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The local put socket asked for with `--local-put-socket` could not be bound.
    #[error("--local-put-socket {}: {reason}", path.display())]
    LocalPutSocket {
        /// The socket's path.
        path: std::path::PathBuf,
        /// Why it could not be bound.
        reason: std::io::Error,
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
    /// The OCI front end's state (links, upload sessions) could not be opened.
    #[error("cannot open the OCI front end's state: {0}")]
    Oci(String),
    /// The upload session directory could not be opened.
    #[error("upload sessions: {0}")]
    Uploads(#[from] custodian_storage::uploads::UploadError),
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
