//! The storage layer's error type.

use custodian_core::Digest;

/// A storage result.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// What went wrong in the storage layer. Messages name the values involved so that an operator
/// or a client can act on them without reading logs.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No blob is stored under the digest.
    #[error("blob {digest} not found")]
    NotFound {
        /// The digest that was looked up.
        digest: Digest,
    },
    /// The bytes received hash to something other than the digest the client declared.
    #[error("digest mismatch: expected {expected}, but the bytes received hash to {actual}")]
    DigestMismatch {
        /// What the client declared.
        expected: Digest,
        /// What the received bytes hash to, under the same algorithm.
        actual: Digest,
    },
    /// The number of bytes received differs from the size the client declared.
    #[error("size mismatch: expected {expected} bytes, received {actual}")]
    SizeMismatch {
        /// What the client declared.
        expected: u64,
        /// How many bytes arrived (or would have, counting the chunk that overflowed).
        actual: u64,
    },
    /// A read started past the end of the blob.
    #[error("offset {offset} is past the end of blob {digest} ({size} bytes)")]
    OutOfRange {
        /// The blob read.
        digest: Digest,
        /// The requested offset.
        offset: u64,
        /// The blob's size.
        size: u64,
    },
    /// Stored bytes or metadata no longer match what was verified when the blob was committed.
    /// The bytes are not served.
    #[error("blob {digest} is corrupt in storage: {detail}")]
    Corrupt {
        /// The damaged blob.
        digest: Digest,
        /// What did not match.
        detail: String,
    },
    /// The backend refused or failed an operation.
    #[error("{backend} backend: {message}")]
    Backend {
        /// The backend's name, e.g. `rocksdb` or `s3`.
        backend: &'static str,
        /// What failed, in the backend's words.
        message: String,
    },
    /// The backend cannot be reached (a database or service that is down or restarting). The
    /// operation did not complete; retrying once it is back is safe.
    #[error("{backend} is unreachable: {message}")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// What failed, in the backend's words.
        message: String,
    },
    /// A write after a failed sync: the store refuses writes until it is reopened, because it
    /// can no longer tell what reached the disk.
    #[error(
        "{backend} backend refuses writes until it is restarted, because a write failed: {cause}"
    )]
    Poisoned {
        /// The backend's name.
        backend: &'static str,
        /// The failure that poisoned it.
        cause: String,
    },
    /// The operation was abandoned before it completed (for example, the daemon is stopping).
    #[error("operation aborted: {0}")]
    Aborted(String),
}

impl StorageError {
    /// A backend failure with a message.
    pub fn backend(backend: &'static str, message: impl std::fmt::Display) -> Self {
        StorageError::Backend {
            backend,
            message: message.to_string(),
        }
    }

    /// The refusal of a put while a collection (on any daemon) is deleting the blob: the client
    /// must not be told it is kept, and may put it again once the deletion is done.
    pub fn being_deleted(sha256: &Digest) -> Self {
        StorageError::Unavailable {
            backend: "retention",
            message: format!(
                "blob {sha256} is being deleted by garbage collection; put it again in a moment to store it anew"
            ),
        }
    }
}
