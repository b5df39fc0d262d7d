//! OCI blob upload sessions that survive a restart.
//!
//! Each session is a directory `DATA_DIR/oci/uploads/<id>/` holding `data` (the bytes received so
//! far) and `state.json` (the repository, the committed length and times). A chunk is
//! acknowledged only after its bytes are synced and the new committed length is written
//! atomically beside them, so after `kill -9` and a restart a client's `GET` on its upload URL
//! reports exactly the bytes it was told were stored and the upload resumes from there. Bytes past
//! the committed length (a chunk cut off by the crash) are cut away before the next chunk.
//!
//! The bytes become a blob only at the final `PUT ?digest=`: they are streamed from `data`
//! through the custody store's verifying writer, so nothing is visible unless it hashes to the
//! digest the client named. Sessions idle for longer than the expiry are removed with their bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use custodian_storage::{BlobStore, BlobWriter, Expectation, PutOutcome};
use futures::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use super::{OciFailure, lock};
use custodian_core::oci::{ErrorCode, OciError};

/// How long an upload session may sit idle before it is removed, unless configured.
pub const DEFAULT_UPLOAD_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// How many bytes of a chunk are gathered before they are written.
const WRITE_BATCH: usize = 1 << 20;

/// What is kept beside a session's bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SessionState {
    repo: String,
    committed: u64,
    started_ms: u64,
    updated_ms: u64,
}

/// The upload sessions of one daemon.
pub struct Uploads {
    dir: PathBuf,
    expiry: Duration,
    /// One lock per session id, so that two requests on one session never interleave.
    locks: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The custody store's verifying writer of each session this process has fed since it
    /// started, with how many bytes it holds: chunks are hashed and stored as they arrive, so
    /// the final `PUT` only commits. The staged file stays the truth: a session without a writer
    /// (after a restart, or after a chunk that failed) is read back from it at the end.
    live: std::sync::Mutex<std::collections::HashMap<String, BlobWriter>>,
    store: BlobStore,
}

fn io(path: &Path, source: std::io::Error) -> OciFailure {
    OciFailure::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unknown(id: &str) -> OciFailure {
    OciFailure::Refused(OciError {
        code: ErrorCode::BlobUploadUnknown,
        message: format!(
            "upload {id:?} is not in progress in this repository (finished, cancelled, expired, or never started)"
        ),
    })
}

/// A chunk that does not start where the committed bytes end (the client answers 416).
#[derive(Debug)]
pub struct OutOfOrder {
    /// The bytes committed so far.
    pub committed: u64,
}

impl Uploads {
    /// The sessions under `dir` (created if missing); idle ones older than `expiry` are removed.
    pub fn open(dir: &Path, expiry: Duration, store: BlobStore) -> Result<Self, OciFailure> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let uploads = Uploads {
            dir: dir.to_path_buf(),
            expiry,
            locks: Default::default(),
            live: Default::default(),
            store,
        };
        uploads.sweep();
        Ok(uploads)
    }

    /// How long an idle session lives.
    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    fn session_dir(&self, id: &str) -> Result<PathBuf, OciFailure> {
        // Ids are ours (hex); anything else names no session and must not become a path.
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(unknown(id));
        }
        Ok(self.dir.join(id))
    }

    fn session_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks).entry(id.to_string()).or_default().clone()
    }

    fn forget_lock(&self, id: &str) {
        lock(&self.locks).remove(id);
        self.take_live(id);
    }

    fn take_live(&self, id: &str) -> Option<BlobWriter> {
        lock(&self.live).remove(id)
    }

    async fn read_state(
        &self,
        id: &str,
        repo: &str,
    ) -> Result<(PathBuf, SessionState), OciFailure> {
        let dir = self.session_dir(id)?;
        let path = dir.join("state.json");
        let text = match tokio::fs::read(&path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(unknown(id)),
            Err(e) => return Err(io(&path, e)),
        };
        let state: SessionState = serde_json::from_slice(&text)
            .map_err(|e| OciFailure::Internal(format!("{}: {e}", path.display())))?;
        if state.repo != repo {
            return Err(unknown(id));
        }
        if now_ms().saturating_sub(state.updated_ms) > self.expiry.as_millis() as u64 {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(unknown(id));
        }
        Ok((dir, state))
    }

    async fn write_state(dir: &Path, state: &SessionState) -> Result<(), OciFailure> {
        let tmp = dir.join("state.json.tmp");
        let path = dir.join("state.json");
        let text = serde_json::to_vec(state).map_err(|e| OciFailure::Internal(e.to_string()))?;
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io(&tmp, e))?;
        file.write_all(&text).await.map_err(|e| io(&tmp, e))?;
        file.sync_all().await.map_err(|e| io(&tmp, e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| io(&path, e))?;
        let d = tokio::fs::File::open(dir).await.map_err(|e| io(dir, e))?;
        d.sync_all().await.map_err(|e| io(dir, e))
    }

    /// Starts a session for `repo`; returns its id.
    pub async fn start(&self, repo: &str) -> Result<String, OciFailure> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw)
            .map_err(|e| OciFailure::Internal(format!("no randomness: {e}")))?;
        let id = hex::encode(raw);
        let dir = self.dir.join(&id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io(&dir, e))?;
        let data = dir.join("data");
        tokio::fs::File::create(&data)
            .await
            .map_err(|e| io(&data, e))?;
        let now = now_ms();
        Self::write_state(
            &dir,
            &SessionState {
                repo: repo.to_string(),
                committed: 0,
                started_ms: now,
                updated_ms: now,
            },
        )
        .await?;
        Ok(id)
    }

    /// The bytes committed so far in session `id` of `repo`.
    pub async fn status(&self, repo: &str, id: &str) -> Result<u64, OciFailure> {
        let session = self.session_lock(id);
        let _held = session.lock().await;
        Ok(self.read_state(id, repo).await?.1.committed)
    }

    /// Appends a chunk. `start`, from `Content-Range`, must equal the committed length
    /// (`Err(Ok(OutOfOrder))` otherwise); the bytes are synced and the new length recorded before
    /// this returns it. A body that fails part-way is cut back to the committed length.
    pub async fn append<S, E>(
        &self,
        repo: &str,
        id: &str,
        start: Option<u64>,
        body: S,
    ) -> Result<Result<u64, OutOfOrder>, OciFailure>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let session = self.session_lock(id);
        let _held = session.lock().await;
        let (dir, mut state) = self.read_state(id, repo).await?;
        if let Some(start) = start
            && start != state.committed
        {
            return Ok(Err(OutOfOrder {
                committed: state.committed,
            }));
        }
        let path = dir.join("data");
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .await
            .map_err(|e| io(&path, e))?;
        // Bytes past the committed length were never acknowledged (a crash or a broken
        // connection mid-chunk): they go before anything new is written.
        file.set_len(state.committed)
            .await
            .map_err(|e| io(&path, e))?;
        file.seek(std::io::SeekFrom::Start(state.committed))
            .await
            .map_err(|e| io(&path, e))?;
        // The live writer continues only if it holds exactly the committed bytes; a fresh session
        // gets one; otherwise the bytes are read back from the file at the end.
        let mut writer = match self.take_live(id) {
            Some(writer) if writer.received() == state.committed => Some(writer),
            _ if state.committed == 0 => Some(self.store.begin_put(Expectation::default()).await?),
            _ => None,
        };
        let mut written = 0u64;
        let mut body = body;
        // Network chunks are small; they are gathered into batches so that the file write (a
        // trip to the blocking pool) and the store's write run once per batch, side by side.
        let mut batch = bytes::BytesMut::new();
        let mut ended = false;
        while !ended {
            match body.next().await {
                Some(Ok(chunk)) => {
                    batch.extend_from_slice(&chunk);
                    if batch.len() < WRITE_BATCH {
                        continue;
                    }
                }
                Some(Err(e)) => {
                    let _ = file.set_len(state.committed).await;
                    return Err(OciFailure::Refused(OciError {
                        code: ErrorCode::BlobUploadInvalid,
                        message: format!(
                            "the chunk's body ended early: {e}; nothing of it was kept, resume at byte {}",
                            state.committed
                        ),
                    }));
                }
                None => ended = true,
            }
            if batch.is_empty() {
                continue;
            }
            let bytes = batch.split().freeze();
            written += bytes.len() as u64;
            let to_store = async {
                match writer.as_mut() {
                    Some(w) => w.write(bytes.clone()).await.is_ok(),
                    None => true,
                }
            };
            let (to_file, stored) = tokio::join!(file.write_all(&bytes), to_store);
            to_file.map_err(|e| io(&path, e))?;
            if !stored {
                // The store refused (it keeps nothing of it); the file still has the bytes.
                writer = None;
            }
        }
        file.sync_data().await.map_err(|e| io(&path, e))?;
        state.committed += written;
        state.updated_ms = now_ms();
        Self::write_state(&dir, &state).await?;
        if let Some(writer) = writer {
            lock(&self.live).insert(id.to_string(), writer);
        }
        Ok(Ok(state.committed))
    }

    /// Streams the committed bytes of session `id` into custody, expecting `expect`; the session
    /// is removed whatever the outcome (a digest mismatch leaves nothing visible and nothing
    /// behind).
    pub async fn finish(
        &self,
        store: &BlobStore,
        repo: &str,
        id: &str,
        expect: Expectation,
    ) -> Result<PutOutcome, OciFailure> {
        let session = self.session_lock(id);
        let _held = session.lock().await;
        let (dir, state) = self.read_state(id, repo).await?;
        let outcome = match self.take_live(id) {
            Some(mut writer) if writer.received() == state.committed => {
                writer.set_expectation(expect);
                writer.commit().await.map_err(OciFailure::from)
            }
            _ => Self::ingest(store, &dir.join("data"), state.committed, expect).await,
        };
        let _ = tokio::fs::remove_dir_all(&dir).await;
        drop(_held);
        self.forget_lock(id);
        outcome
    }

    async fn ingest(
        store: &BlobStore,
        path: &Path,
        committed: u64,
        expect: Expectation,
    ) -> Result<PutOutcome, OciFailure> {
        let mut file = tokio::fs::File::open(path).await.map_err(|e| io(path, e))?;
        let mut writer = store.begin_put(expect).await?;
        let mut left = committed;
        let chunk = store.block_size().max(1 << 20);
        while left > 0 {
            let want = (chunk as u64).min(left) as usize;
            let mut buf = vec![0u8; want];
            file.read_exact(&mut buf).await.map_err(|e| io(path, e))?;
            writer.write(Bytes::from(buf)).await?;
            left -= want as u64;
        }
        Ok(writer.commit().await?)
    }

    /// Cancels session `id`, removing its bytes.
    pub async fn cancel(&self, repo: &str, id: &str) -> Result<(), OciFailure> {
        let session = self.session_lock(id);
        let _held = session.lock().await;
        let (dir, _) = self.read_state(id, repo).await?;
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|e| io(&dir, e))?;
        drop(_held);
        self.forget_lock(id);
        Ok(())
    }

    /// Removes every session idle for longer than the expiry, and any directory left without a
    /// readable state (a crash between creating it and writing its state). Returns how many.
    pub fn sweep(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let now = now_ms();
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let state = std::fs::read(path.join("state.json"))
                .ok()
                .and_then(|t| serde_json::from_slice::<SessionState>(&t).ok());
            let stale = match state {
                Some(s) => now.saturating_sub(s.updated_ms) > self.expiry.as_millis() as u64,
                // A directory without a state is a session that crashed while starting, unless
                // it is one starting right now.
                None => entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(60)),
            };
            if stale && std::fs::remove_dir_all(&path).is_ok() {
                // Its writer, if this process fed it, goes too (the store discards its blocks).
                self.take_live(&entry.file_name().to_string_lossy());
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "expired OCI upload sessions removed");
        }
        removed
    }

    /// How many sessions exist now.
    pub fn count(&self) -> usize {
        std::fs::read_dir(&self.dir).map_or(0, |d| d.count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_core::{Algorithm, Digest};
    use custodian_storage::MemoryBackend;

    fn store() -> BlobStore {
        BlobStore::new(Arc::new(MemoryBackend::new(1024)))
    }

    fn chunk(bytes: &[u8]) -> futures::stream::Iter<std::vec::IntoIter<Result<Bytes, String>>> {
        futures::stream::iter(vec![Ok(Bytes::copy_from_slice(bytes))])
    }

    #[tokio::test]
    async fn sessions_resume_from_the_committed_length_after_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store();
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(Algorithm::Sha256, &data);
        let uploads =
            Uploads::open(dir.path(), DEFAULT_UPLOAD_EXPIRY, store.clone()).expect("open");
        let id = uploads.start("r").await.expect("start");
        let committed = uploads
            .append("r", &id, Some(0), chunk(&data[..3000]))
            .await
            .expect("append")
            .expect("in order");
        assert_eq!(committed, 3000);
        // A chunk that skips ahead, or one for another repository, changes nothing.
        let skipped = uploads
            .append("r", &id, Some(3500), chunk(&data[3500..]))
            .await
            .expect("append");
        assert!(matches!(skipped, Err(OutOfOrder { committed: 3000 })));
        assert!(uploads.status("other", &id).await.is_err());
        // A crash mid-chunk leaves unacknowledged bytes in the file; a new process (a reopen,
        // without the live writer) reports the committed length and cuts them away.
        drop(uploads);
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(&id).join("data"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"garbage"))
            .expect("torn tail");
        let uploads =
            Uploads::open(dir.path(), DEFAULT_UPLOAD_EXPIRY, store.clone()).expect("reopen");
        assert_eq!(uploads.status("r", &id).await.expect("status"), 3000);
        uploads
            .append("r", &id, Some(3000), chunk(&data[3000..]))
            .await
            .expect("append")
            .expect("in order");
        let wrong = Digest::of(Algorithm::Sha256, b"other");
        let id2 = uploads.start("r").await.expect("start");
        uploads
            .append("r", &id2, None, chunk(b"x"))
            .await
            .expect("append")
            .expect("streamed");
        assert!(
            uploads
                .finish(
                    &store,
                    "r",
                    &id2,
                    Expectation {
                        digest: Some(wrong),
                        size: None
                    }
                )
                .await
                .is_err()
        );
        assert!(
            store.stat(&wrong).await.expect("stat").is_none(),
            "nothing visible"
        );
        assert!(
            !dir.path().join(&id2).exists(),
            "a failed finish leaves nothing behind"
        );
        let outcome = uploads
            .finish(
                &store,
                "r",
                &id,
                Expectation {
                    digest: Some(digest),
                    size: None,
                },
            )
            .await
            .expect("finish");
        assert_eq!(outcome.meta.size, 5000);
        assert_eq!(uploads.count(), 0);
    }

    #[tokio::test]
    async fn idle_sessions_expire_with_their_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uploads = Uploads::open(dir.path(), Duration::from_millis(1), store()).expect("open");
        let id = uploads.start("r").await.expect("start");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(uploads.sweep(), 1);
        assert_eq!(uploads.count(), 0);
        assert!(uploads.status("r", &id).await.is_err());
    }
}
