//! What several daemons in front of one bucket must agree on beyond the blobs themselves: when
//! a blob was last acknowledged to a put, which blobs a collection is deleting, which blobs each
//! OCI repository links, and the resumable upload sessions in progress. One daemon keeps these in
//! its data directory ([`crate::retention::Retention`], the OCI front end's link file, the upload
//! sessions' directories); daemons sharing a database
//! keep them in it, behind this trait (the PostgreSQL index implements it).
//!
//! Acknowledgements and deletions meet on one record per blob. An acknowledgement is recorded
//! only if no collection has claimed the blob, and a collection claims a blob only if nothing
//! acknowledged it within the grace period; each is one atomic step on that record. So of a put
//! that is told "already present" and a collection on another daemon, exactly one wins: either
//! the claim sees the acknowledgement (the blob is spared), or the put sees the claim (and is
//! told to try again once the deletion is done). A put that writes the blob's own object meets
//! the collection on the same record before it writes anything (its pending record names the
//! blob: [`crate::PendingUpload::places`]), and a collection deletes a claimed blob's object
//! before its row, so the claim covers the object's deletion: no put's object is deleted under
//! it, whichever daemon runs either. The in-process gate
//! ([`crate::retention::Retention::keep`]) does the same between requests of one daemon.

use std::sync::Arc;

use custodian_core::Digest;

use crate::Result;
use crate::staging::Staging;

/// The state daemons sharing one database keep there. Calls block (network I/O): callers on an
/// async runtime run them on its blocking pool.
pub trait SharedState: Send + Sync + 'static {
    /// Records that a put of `sha256` was answered "already present" at `at_ms`. `Ok(false)`
    /// when a collection has claimed the blob (it is being deleted), so nothing was recorded
    /// and the put must not be acknowledged.
    fn acknowledge(&self, sha256: &Digest, at_ms: u64) -> Result<bool>;

    /// The latest acknowledgement of each blob (ms since the Unix epoch), in order.
    fn acknowledged_at(&self, digests: &[Digest]) -> Result<Vec<Option<u64>>>;

    /// Claims blobs for deletion by this daemon: each blob not acknowledged at or after
    /// `cutoff_ms`, not claimed already, and whose own object no pending upload is writing
    /// ([`crate::PendingUpload::places`]). Returns the claimed ones; an acknowledgement of a
    /// claimed blob, and a pending upload placing it, are refused until the claim is released
    /// or the blob deleted.
    fn claim(&self, digests: &[Digest], cutoff_ms: u64) -> Result<Vec<Digest>>;

    /// Releases this daemon's claims on blobs it decided to keep after all.
    fn release(&self, digests: &[Digest]) -> Result<()>;

    /// Claims no live collection holds: this daemon's own (left by a run that crashed; a
    /// daemon runs one collection at a time, so call it between collections) and those of
    /// daemons that stopped being seen. The caller finishes those whose deletion was recorded
    /// and releases the rest with [`SharedState::release_abandoned`].
    fn abandoned_claims(&self) -> Result<Vec<Digest>>;

    /// Releases abandoned claims, whoever made them.
    fn release_abandoned(&self, digests: &[Digest]) -> Result<()>;

    /// Links `sha256` to the OCI repository `repo`, durably; true if it was not linked.
    fn link(&self, repo: &str, sha256: &Digest) -> Result<bool>;

    /// Unlinks `sha256` from `repo`, durably; true if it was linked.
    fn unlink(&self, repo: &str, sha256: &Digest) -> Result<bool>;

    /// Whether `sha256` is linked to `repo`.
    fn linked(&self, repo: &str, sha256: &Digest) -> Result<bool>;

    /// Whether any blob is linked to `repo`.
    fn repo_has_links(&self, repo: &str) -> Result<bool>;

    /// The repositories `sha256` is linked to, sorted.
    fn repos_linking(&self, sha256: &Digest) -> Result<Vec<String>>;

    /// Where resumable upload sessions are staged, so that any daemon takes any piece of any
    /// session (see [`crate::staging`]).
    fn upload_staging(self: Arc<Self>) -> Arc<dyn Staging>;
}
