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

use custodian_core::Digest;

/// The gate between what keeps blobs and what deletes them, and the acknowledgement times.
#[derive(Debug)]
pub struct Retention {
    gate: Vec<tokio::sync::RwLock<()>>,
    acks: std::sync::Mutex<HashMap<[u8; 32], u64>>,
    /// Where acknowledgements are appended (40 bytes each: the SHA-256, then the time in ms,
    /// little-endian), if they must survive a restart.
    log: Option<(PathBuf, std::sync::Mutex<std::fs::File>)>,
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
        })
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
    pub fn acknowledged(&self, sha256: &Digest) -> std::io::Result<()> {
        let now = crate::store::now_unix_ms();
        if let Some((_, file)) = &self.log {
            let mut record = [0u8; 40];
            record[..32].copy_from_slice(sha256.bytes());
            record[32..].copy_from_slice(&now.to_le_bytes());
            let mut file = lock(file);
            file.write_all(&record)?;
            file.sync_data()?;
        }
        lock(&self.acks).insert(*sha256.bytes(), now);
        Ok(())
    }

    /// When a client was last told `sha256` is in custody of a put that stored nothing new.
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
