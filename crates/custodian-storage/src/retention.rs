//! What lets garbage collection run while uploads and publications continue without ever
//! deleting a blob someone was just told is kept.
//!
//! Two things keep a blob alive that the ledger does not show yet:
//!
//! - an acknowledgement: a put of bytes already in custody is answered "already present", and
//!   the client relies on that. Each such acknowledgement is recorded here with its time,
//!   durably (synced before the answer goes out), so the grace period runs from the latest
//!   acknowledgement, not only from the first upload;
//! - a reference in the making: a publication checks that its files are in custody and then
//!   appends the entry that references them.
//!
//! Both happen under the shared side of a gate ([`Retention::keep`]); a collector deletes
//! only under its exclusive side ([`Retention::exclusive`]), after checking each blob again. The
//! gate is striped by the first byte of the SHA-256, and a collector's batch is a run of
//! consecutive digests (it walks them in order), so a batch closes one or two stripes of 256 and
//! puts of every other blob go on while it deletes. So
//! either the collector deleted first (and the put stores the bytes anew, or the publication
//! finds the file missing and says so), or the acknowledgement or reference came first (and the
//! collector's second check sees it). Nothing can slip between.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use custodian_core::Digest;

use crate::{SharedState, StorageError};

/// The gate between what keeps blobs and what deletes them, and the acknowledgement times.
pub struct Retention {
    gate: Vec<tokio::sync::RwLock<()>>,
    /// This daemon's acknowledgements (all of them, when nothing is shared).
    acks: std::sync::Mutex<HashMap<[u8; 32], u64>>,
    /// Where acknowledgements are appended (40 bytes each: the SHA-256, then the time in ms,
    /// little-endian), if they must survive a restart.
    log: Option<(PathBuf, std::sync::Mutex<std::fs::File>)>,
    /// The record every daemon sharing the store's index acknowledges and claims on, instead of
    /// the file (see [`crate::SharedState`]).
    shared: Option<Arc<dyn SharedState>>,
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("log", &self.log.as_ref().map(|(path, _)| path))
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// How many stripes the gate has: one per value of a digest's first byte.
const STRIPES: usize = 256;

fn stripes() -> Vec<tokio::sync::RwLock<()>> {
    (0..STRIPES).map(|_| tokio::sync::RwLock::new(())).collect()
}

/// The stripes `digests` fall in, ascending and without repeats (the one order every caller
/// takes several in, so two never wait on each other in a cycle).
fn stripes_of(digests: &[Digest]) -> Vec<usize> {
    let mut out: Vec<usize> = digests.iter().map(|d| d.bytes()[0] as usize).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Held shared guards; dropping it releases them.
pub struct Kept<'a>(#[allow(dead_code)] Vec<tokio::sync::RwLockReadGuard<'a, ()>>);

/// Held exclusive guards; dropping it releases them.
pub struct Exclusive<'a>(#[allow(dead_code)] Vec<tokio::sync::RwLockWriteGuard<'a, ()>>);

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Default for Retention {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl Retention {
    /// A gate whose acknowledgements live as long as the process (tests, tools).
    pub fn in_memory() -> Self {
        Retention {
            gate: stripes(),
            acks: Default::default(),
            log: None,
            shared: None,
        }
    }

    /// A gate whose acknowledgements are kept in the file at `path` (created if missing); a torn
    /// last record (a crash mid-write) is ignored.
    pub fn persistent(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut acks = HashMap::new();
        if let Ok(mut file) = std::fs::File::open(path) {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            for record in bytes.chunks_exact(40) {
                let digest: [u8; 32] = record[..32].try_into().expect("32 bytes");
                let ms = u64::from_le_bytes(record[32..].try_into().expect("8 bytes"));
                let at = acks.entry(digest).or_insert(0);
                *at = ms.max(*at);
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Retention {
            gate: stripes(),
            acks: std::sync::Mutex::new(acks),
            log: Some((path.to_path_buf(), std::sync::Mutex::new(file))),
            shared: None,
        })
    }

    /// The same gate, acknowledging and claiming on `shared` (the record every daemon sharing
    /// the store's index uses) instead of the file, when given.
    pub fn with_shared(mut self, shared: Option<Arc<dyn SharedState>>) -> Self {
        self.shared = shared;
        self
    }

    /// Whether acknowledgements and deletions are shared with other daemons.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Runs a call to the shared record on the blocking pool (it goes over the network).
    async fn on_shared<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn SharedState) -> crate::Result<T> + Send + 'static,
    ) -> Option<crate::Result<T>> {
        let shared = self.shared.clone()?;
        Some(
            tokio::task::spawn_blocking(move || call(&*shared))
                .await
                .unwrap_or_else(|e| {
                    Err(StorageError::Aborted(format!(
                        "the shared retention task failed: {e}"
                    )))
                }),
        )
    }

    /// The shared side of the gate for `digests`: hold it from checking that the blobs are in
    /// custody until what keeps them (an acknowledgement, a ledger entry) is recorded.
    pub async fn keep(&self, digests: &[Digest]) -> Kept<'_> {
        let mut guards = Vec::new();
        for stripe in stripes_of(digests) {
            guards.push(self.gate[stripe].read().await);
        }
        Kept(guards)
    }

    /// The exclusive side for `digests`: hold it while checking those blobs a last time and
    /// deleting them.
    ///
    /// It is taken only when no shared holder is in, by polling, never by queueing: a task that
    /// holds the shared side may take it again (a publication that stores a sealed body), and
    /// a queued exclusive request would make that second request wait forever behind it. All
    /// stripes are taken at once or none is held while waiting.
    pub async fn exclusive(&self, digests: &[Digest]) -> Exclusive<'_> {
        let wanted = stripes_of(digests);
        loop {
            let mut guards = Vec::with_capacity(wanted.len());
            for stripe in &wanted {
                match self.gate[*stripe].try_write() {
                    Ok(guard) => guards.push(guard),
                    Err(_) => break,
                }
            }
            if guards.len() == wanted.len() {
                return Exclusive(guards);
            }
            drop(guards);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Records that a client was told `sha256` is in custody, now; durably when persistent.
    /// When shared, refused with [`StorageError::Unavailable`] while a collection on any daemon
    /// is deleting the blob: the client must not be told it is kept, and may put it again once
    /// the deletion is done.
    pub async fn acknowledged(&self, sha256: &Digest) -> crate::Result<()> {
        let now = crate::store::now_unix_ms();
        let digest = *sha256;
        if let Some(recorded) = self
            .on_shared(move |shared| shared.acknowledge(&digest, now))
            .await
        {
            if !recorded? {
                return Err(StorageError::being_deleted(sha256));
            }
        } else if let Some((path, file)) = &self.log {
            let mut record = [0u8; 40];
            record[..32].copy_from_slice(sha256.bytes());
            record[32..].copy_from_slice(&now.to_le_bytes());
            let mut file = lock(file);
            file.write_all(&record)
                .and_then(|()| file.sync_data())
                .map_err(|e| {
                    StorageError::Aborted(format!(
                        "cannot record the acknowledgement of {sha256} in {}: {e}",
                        path.display()
                    ))
                })?;
        }
        lock(&self.acks).insert(*sha256.bytes(), now);
        Ok(())
    }

    /// The latest acknowledgement of each of `digests`, by any daemon sharing the store.
    pub async fn acknowledged_at(&self, digests: &[Digest]) -> crate::Result<Vec<Option<u64>>> {
        let wanted = digests.to_vec();
        match self
            .on_shared(move |shared| shared.acknowledged_at(&wanted))
            .await
        {
            Some(found) => found,
            None => Ok(digests.iter().map(|d| self.last_acknowledged(d)).collect()),
        }
    }

    /// Claims `digests` for deletion: those no daemon acknowledged at or after `cutoff_ms` and
    /// no other collection claimed. Without sharing, every digest (the caller holds
    /// [`Retention::exclusive`], which is claim enough within one daemon).
    pub async fn claim(&self, digests: &[Digest], cutoff_ms: u64) -> crate::Result<Vec<Digest>> {
        let wanted = digests.to_vec();
        match self
            .on_shared(move |shared| shared.claim(&wanted, cutoff_ms))
            .await
        {
            Some(claimed) => claimed,
            None => Ok(digests.to_vec()),
        }
    }

    /// Releases claims on blobs that are kept after all.
    pub async fn release(&self, digests: &[Digest]) -> crate::Result<()> {
        if digests.is_empty() {
            return Ok(());
        }
        let wanted = digests.to_vec();
        self.on_shared(move |shared| shared.release(&wanted))
            .await
            .unwrap_or(Ok(()))
    }

    /// Claims no live collection holds (see [`SharedState::abandoned_claims`]); none without
    /// sharing.
    pub async fn abandoned_claims(&self) -> crate::Result<Vec<Digest>> {
        self.on_shared(|shared| shared.abandoned_claims())
            .await
            .unwrap_or(Ok(Vec::new()))
    }

    /// Releases abandoned claims.
    pub async fn release_abandoned(&self, digests: &[Digest]) -> crate::Result<()> {
        if digests.is_empty() {
            return Ok(());
        }
        let wanted = digests.to_vec();
        self.on_shared(move |shared| shared.release_abandoned(&wanted))
            .await
            .unwrap_or(Ok(()))
    }

    /// When a client of this daemon was last told `sha256` is in custody of a put that stored
    /// nothing new (other daemons' too when nothing is shared; see
    /// [`Retention::acknowledged_at`]).
    pub fn last_acknowledged(&self, sha256: &Digest) -> Option<u64> {
        lock(&self.acks).get(sha256.bytes()).copied()
    }

    /// Forgets acknowledgements older than `cutoff_ms` (they no longer protect anything) and
    /// rewrites the file with the rest.
    pub fn forget_before(&self, cutoff_ms: u64) -> std::io::Result<()> {
        let mut acks = lock(&self.acks);
        acks.retain(|_, ms| *ms >= cutoff_ms);
        if let Some((path, file)) = &self.log {
            let mut bytes = Vec::with_capacity(acks.len() * 40);
            for (digest, ms) in acks.iter() {
                bytes.extend_from_slice(digest);
                bytes.extend_from_slice(&ms.to_le_bytes());
            }
            let tmp = path.with_extension("tmp");
            let mut out = std::fs::File::create(&tmp)?;
            out.write_all(&bytes)?;
            out.sync_all()?;
            std::fs::rename(&tmp, path)?;
            *lock(file) = std::fs::OpenOptions::new().append(true).open(path)?;
        }
        Ok(())
    }
}
