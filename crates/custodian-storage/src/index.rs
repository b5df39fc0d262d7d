//! The metadata index of a backend that keeps the bytes somewhere else (an object store): which
//! blobs are committed, under their SHA-256 and their BLAKE3 alias, and which uploads are
//! pending. A blob is visible exactly when its index entry is committed, whatever the object
//! store's own consistency, so the index is where custody is decided.
//!
//! Two implementations exist: the embedded RocksDB index (one daemon) and the PostgreSQL index
//! (any number of daemons sharing one database and one bucket).

use custodian_core::Digest;

use std::sync::Arc;

use crate::{BlobMeta, Result, SharedState, StorageError};

/// A pending upload found when the backend is opened: its upload was interrupted (a crash) and
/// its objects must be cleaned up.
#[derive(Clone, Debug)]
pub struct Leftover {
    /// The upload's id.
    pub id: u64,
    /// The backend-specific record written when the upload began.
    pub record: Vec<u8>,
    /// Whether this daemon began the upload (in a previous run). An upload another daemon began
    /// and abandoned is cleaned more cautiously: its objects at final keys are left alone,
    /// because a live upload of the same digest may be writing the same key.
    pub own: bool,
}

/// An upload to record as pending ([`BlobIndex::add_pending`]).
#[derive(Clone, Debug)]
pub struct PendingUpload {
    /// The upload's id.
    pub id: u64,
    /// The backend-specific record, handed back as [`Leftover::record`] if the upload is left
    /// behind.
    pub record: Vec<u8>,
    /// The blob whose own object (at the key the blob's digest names) the upload writes, if it
    /// does. Daemons sharing an index agree through it that no collection deletes an object a
    /// put is writing: the record is refused while a collection has claimed the blob, and a
    /// collection does not claim a blob a pending record places ([`SharedState::claim`]). One
    /// daemon's own index needs no such agreement (its retention gate keeps the two apart).
    pub places: Option<Digest>,
}

/// A blob metadata index. Calls block (on disk or network I/O); callers on an async runtime
/// run them on its blocking pool when [`BlobIndex::remote`] says so.
pub trait BlobIndex: Send + Sync + 'static {
    /// Whether calls go over the network (and so must not run on an async worker thread).
    fn remote(&self) -> bool;

    /// Whether other daemons use this index at once (so nothing outside it may be assumed to
    /// be this daemon's alone, such as partial files in a shared directory).
    fn shared(&self) -> bool;

    /// Refuses writes once a write has failed in a way that leaves the store's state unknown.
    fn check_writable(&self) -> Result<()>;

    /// Records such a failure: writes are refused from now on, until the daemon restarts.
    fn poison(&self, cause: String) -> StorageError;

    /// The committed blob with this digest (either algorithm).
    fn lookup(&self, digest: &Digest) -> Result<Option<BlobMeta>>;

    /// Looks up many digests at once, in order.
    fn lookup_many(&self, digests: &[Digest]) -> Result<Vec<Option<BlobMeta>>>;

    /// Whether each of many digests is committed, in order. Indexes that can answer without
    /// decoding every blob's metadata override this (FindMissing asks about thousands at once).
    fn present_many(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        Ok(self
            .lookup_many(digests)?
            .iter()
            .map(Option::is_some)
            .collect())
    }

    /// A fresh upload id, unique among every daemon sharing the index.
    fn new_upload_id(&self) -> u64;

    /// Durably records uploads as pending, each with a backend-specific record; a record
    /// whose id is pending already replaces it. An upload that writes a blob's own object
    /// ([`PendingUpload::places`]) is refused by a shared index while a collection has claimed
    /// that blob ([`StorageError::Unavailable`], naming it), and nothing is recorded.
    fn add_pending(&self, records: &[PendingUpload]) -> Result<()>;

    /// Removes pending records of uploads that ended without committing. Need not be durable:
    /// a lost removal only means the next open repeats the cleanup.
    fn remove_pending(&self, ids: &[u64]) -> Result<()>;

    /// The pending records that no live upload owns: this daemon's own whose upload `live`
    /// says has ended (from before it was opened, or whose removal failed), and other daemons'
    /// whose daemon stopped without cleaning them. The record of a live upload is not read:
    /// a periodic sweep while many uploads or held deletes are in flight costs their ids, not
    /// a copy of every record.
    fn leftovers(&self, live: &(dyn Fn(u64) -> bool + Sync)) -> Result<Vec<Leftover>>;

    /// How many uploads are pending, in flight or left behind.
    fn pending_count(&self) -> Result<u64>;

    /// Checks that the index answers, as cheaply as it can (the readiness probe asks every
    /// two seconds, whatever the index holds).
    fn probe(&self) -> Result<()>;

    /// Commits uploads atomically and durably: each `(upload id, metadata)` removes the upload's
    /// pending record and makes the blob visible, unless a blob with that SHA-256 is committed
    /// already (by anyone). Returns, in order, the committed metadata and whether it was there
    /// before.
    fn commit(&self, commits: &[(u64, BlobMeta)]) -> Result<Vec<(BlobMeta, bool)>>;

    /// Removes a committed blob's entries, durably; returns the metadata it had, if it was
    /// committed (the backend needs it to find the bytes to remove).
    fn delete(&self, sha256: &Digest) -> Result<Option<BlobMeta>>;

    /// Removes many committed blobs' entries, durably; returns, in order, the metadata each had
    /// if it was committed (a digest repeated in `sha256s` is removed at its first place).
    /// Indexes that can remove them in one durable write override this.
    fn delete_many(&self, sha256s: &[Digest]) -> Result<Vec<Option<BlobMeta>>> {
        sha256s.iter().map(|sha256| self.delete(sha256)).collect()
    }

    /// Up to `limit` committed SHA-256 digests after `after`, in byte order. Entries whose
    /// metadata no longer decodes are listed too.
    fn list(&self, after: Option<Digest>, limit: usize) -> Result<Vec<Digest>>;

    /// Removes a blob's entries even when its metadata no longer decodes. Durable.
    fn forget(&self, sha256: &Digest) -> Result<()>;

    /// The state daemons sharing this index keep beside it (acknowledgements, deletion claims,
    /// OCI links), if it is shared; `None` for an index one daemon owns.
    fn shared_state(self: Arc<Self>) -> Option<Arc<dyn SharedState>> {
        None
    }
}
