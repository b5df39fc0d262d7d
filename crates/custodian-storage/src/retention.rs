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
//! Both happen under the shared side of one gate ([`Retention::keep`]); a collector deletes
//! only under its exclusive side ([`Retention::exclusive`]), after checking each blob again. So
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
    gate: tokio::sync::RwLock<()>,
    acks: std::sync::Mutex<HashMap<[u8; 32], u64>>,
    /// Where acknowledgements are appended (40 bytes each: the SHA-256, then the time in ms,
    /// little-endian), if they must survive a restart.
    log: Option<(PathBuf, std::sync::Mutex<std::fs::File>)>,
}

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
            gate: tokio::sync::RwLock::new(()),
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
            gate: tokio::sync::RwLock::new(()),
            acks: std::sync::Mutex::new(acks),
            log: Some((path.to_path_buf(), std::sync::Mutex::new(file))),
        })
    }

    /// The shared side of the gate: hold it from checking that a blob is in custody until what
    /// keeps it (an acknowledgement, a ledger entry) is recorded.
    pub async fn keep(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// The exclusive side: hold it while checking blobs a last time and deleting them.
    ///
    /// It is taken only when no shared holder is in, by polling, never by queueing: a task that
    /// holds the shared side may take it again (a publication that stores a sealed body), and
    /// a queued exclusive request would make that second request wait forever behind it.
    pub async fn exclusive(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        loop {
            if let Ok(guard) = self.gate.try_write() {
                return guard;
            }
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
