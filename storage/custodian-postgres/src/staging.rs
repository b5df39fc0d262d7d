//! Resumable upload sessions in PostgreSQL, so that any daemon sharing the database takes any
//! piece of any session: a gRPC resumable put, a tus upload or an OCI chunked push may move from
//! daemon to daemon behind a load balancer, and survives the loss of the daemon it began on.
//!
//! A session is a row of `custodian_upload_sessions` (its state as the engine wrote it, the
//! committed length, the CRCs of its complete blocks) and its bytes are rows of
//! `custodian_upload_parts`, one per write of the engine (about 4 MiB). A part is written
//! straight away but counts only once a checkpoint marks it committed. The checkpoint is one
//! transaction:
//!
//! 1. lock the session row; its committed length must still be the one the piece started from
//!    (else another daemon committed a piece first, and this one is refused as an offset
//!    mismatch, which tells the client where to resume);
//! 2. mark this writer's parts from there committed, and check that they add up to exactly the
//!    new length (a part another request discarded fails the checkpoint, never the data);
//! 3. record the new state and append the new CRCs.
//!
//! Parts never committed (a crash, a refused piece, a lost race) are deleted when the next
//! writer opens the session, and with the session. The bytes staged here are the session's only
//! copy until it finishes into the bucket, so they live as long as PostgreSQL's data does.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use custodian_storage::StorageError;
use custodian_storage::staging::{StagedSession, StagedWriter, Staging, decode_crcs};
use custodian_storage::uploads::{SessionState, UploadError, UploadResult};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use postgres::Client;

use crate::index::db;
use crate::pool::{Pool, big};

/// How many bytes a writer gathers before it stores them as one part.
const PART: usize = 4 << 20;

/// The upload sessions of every daemon sharing one database.
pub struct PgStaging {
    pool: Arc<Pool>,
}

impl PgStaging {
    pub(crate) fn new(pool: Arc<Pool>) -> Self {
        PgStaging { pool }
    }

    /// Runs `job` on a connection, off the async worker threads.
    async fn run<T: Send + 'static>(
        pool: &Arc<Pool>,
        job: impl FnOnce(&mut Client) -> Result<T, StorageError> + Send + 'static,
    ) -> UploadResult<T> {
        let pool = pool.clone();
        tokio::task::spawn_blocking(move || pool.call(job))
            .await
            .map_err(|e| UploadError::Invalid {
                id: String::new(),
                reason: format!("the staging task failed: {e}"),
            })?
            .map_err(UploadError::Storage)
    }
}

/// The appending side of a session in PostgreSQL.
struct PgWriter {
    pool: Arc<Pool>,
    id: String,
    /// Tells this writer's parts from those of any other request on the session.
    token: String,
    /// Where the next part starts.
    next: u64,
    buffer: BytesMut,
    crcs: Vec<u8>,
}

impl PgWriter {
    /// Stores the gathered bytes as one (uncommitted) part.
    async fn flush(&mut self) -> UploadResult<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let bytes = self.buffer.split().freeze();
        let start = self.next;
        self.next += bytes.len() as u64;
        let (id, token) = (self.id.clone(), self.token.clone());
        PgStaging::run(&self.pool, move |c| {
            c.execute(
                "INSERT INTO custodian_upload_parts (id, writer, start, bytes) \
                 VALUES ($1, $2, $3, $4)",
                &[&id, &token, &big(start), &bytes.as_ref()],
            )
            .map_err(db)
            .map(|_| ())
        })
        .await
    }
}

/// Why a checkpoint was refused, found inside its transaction.
enum Refusal {
    Gone,
    Moved(u64),
    Short(u64),
}

#[async_trait]
impl StagedWriter for PgWriter {
    async fn write(&mut self, pieces: Vec<Bytes>) -> UploadResult<()> {
        for piece in &pieces {
            self.buffer.extend_from_slice(piece);
        }
        if self.buffer.len() >= PART {
            self.flush().await?;
        }
        Ok(())
    }

    async fn write_crcs(&mut self, crcs: &[u32]) -> UploadResult<()> {
        for crc in crcs {
            self.crcs.extend_from_slice(&crc.to_le_bytes());
        }
        Ok(())
    }

    async fn checkpoint(&mut self, state: &SessionState, previous: u64) -> UploadResult<()> {
        self.flush().await?;
        let (id, token) = (self.id.clone(), self.token.clone());
        let crcs = std::mem::take(&mut self.crcs);
        let json = state.to_json();
        let (committed, updated) = (state.committed(), state.updated_ms());
        let refusal = PgStaging::run(&self.pool, move |c| {
            let mut tx = c.transaction().map_err(db)?;
            let row = tx
                .query_opt(
                    "SELECT committed FROM custodian_upload_sessions WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .map_err(db)?;
            let Some(row) = row else {
                return Ok(Some(Refusal::Gone));
            };
            let stored = row.get::<_, i64>(0) as u64;
            if stored != previous {
                return Ok(Some(Refusal::Moved(stored)));
            }
            let marked: i64 = tx
                .query_one(
                    "WITH marked AS ( \
                         UPDATE custodian_upload_parts SET committed = true \
                         WHERE id = $1 AND writer = $2 AND start >= $3 AND NOT committed \
                         RETURNING length(bytes) AS len) \
                     SELECT coalesce(sum(len), 0)::bigint FROM marked",
                    &[&id, &token, &big(previous)],
                )
                .map_err(db)?
                .get(0);
            if marked as u64 != committed - previous {
                return Ok(Some(Refusal::Short(marked as u64)));
            }
            tx.execute(
                "UPDATE custodian_upload_sessions \
                 SET state = $2, committed = $3, crcs = crcs || $4, updated_ms = $5 \
                 WHERE id = $1",
                &[&id, &json, &big(committed), &crcs, &big(updated)],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(None)
        })
        .await?;
        let id = self.id.clone();
        match refusal {
            None => Ok(()),
            Some(Refusal::Gone) => Err(UploadError::Unknown { id }),
            Some(Refusal::Moved(stored)) => Err(UploadError::OffsetMismatch {
                id,
                offset: previous,
                committed: stored,
            }),
            Some(Refusal::Short(found)) => Err(UploadError::Invalid {
                id,
                reason: format!(
                    "{found} of the piece's {} bytes are still staged (another request on this session discarded the rest); resume at offset {previous}",
                    committed - previous
                ),
            }),
        }
    }
}

#[async_trait]
impl Staging for PgStaging {
    fn describe(&self) -> String {
        "PostgreSQL (custodian_upload_sessions)".into()
    }

    fn shared(&self) -> bool {
        true
    }

    async fn create(&self, id: &str, state: &SessionState) -> UploadResult<()> {
        let (id, json, updated) = (id.to_string(), state.to_json(), state.updated_ms());
        Self::run(&self.pool, move |c| {
            c.execute(
                "INSERT INTO custodian_upload_sessions (id, state, committed, updated_ms) \
                 VALUES ($1, $2, 0, $3)",
                &[&id, &json, &big(updated)],
            )
            .map_err(db)
            .map(|_| ())
        })
        .await
    }

    async fn load(&self, id: &str) -> UploadResult<Option<SessionState>> {
        let key = id.to_string();
        let json: Option<Vec<u8>> = Self::run(&self.pool, move |c| {
            Ok(c.query_opt(
                "SELECT state FROM custodian_upload_sessions WHERE id = $1",
                &[&key],
            )
            .map_err(db)?
            .map(|row| row.get(0)))
        })
        .await?;
        json.map(|json| {
            SessionState::from_json(&json).map_err(|e| UploadError::Invalid {
                id: id.to_string(),
                reason: format!("its saved state is damaged ({e}); start the upload again"),
            })
        })
        .transpose()
    }

    async fn writer(&self, id: &str, state: &SessionState) -> UploadResult<Box<dyn StagedWriter>> {
        let key = id.to_string();
        // Parts no checkpoint counted were never acknowledged. Deleting a part another request
        // is still writing only makes that request's checkpoint fail.
        Self::run(&self.pool, move |c| {
            c.execute(
                "DELETE FROM custodian_upload_parts WHERE id = $1 AND NOT committed",
                &[&key],
            )
            .map_err(db)
            .map(|_| ())
        })
        .await?;
        Ok(Box::new(PgWriter {
            pool: self.pool.clone(),
            id: id.to_string(),
            token: uuid::Uuid::new_v4().simple().to_string(),
            next: state.committed(),
            buffer: BytesMut::new(),
            crcs: Vec::new(),
        }))
    }

    async fn read(&self, id: &str, from: u64, len: u64) -> UploadResult<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let key = id.to_string();
        let end = from + len;
        let parts: Vec<(i64, Vec<u8>)> = Self::run(&self.pool, move |c| {
            Ok(c.query(
                "SELECT start, bytes FROM custodian_upload_parts \
                 WHERE id = $1 AND committed AND start < $3 \
                   AND start + length(bytes) > $2 \
                 ORDER BY start",
                &[&key, &big(from), &big(end)],
            )
            .map_err(db)?
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
        })
        .await?;
        let mut out = Vec::with_capacity(len as usize);
        for (start, bytes) in parts {
            let start = start as u64;
            let at = from + out.len() as u64;
            if start > at {
                break;
            }
            let skip = (at - start) as usize;
            let take = ((end - at) as usize).min(bytes.len().saturating_sub(skip));
            out.extend_from_slice(&bytes[skip..skip + take]);
        }
        if out.len() as u64 != len {
            return Err(UploadError::Invalid {
                id: id.to_string(),
                reason: format!(
                    "its staged bytes {from}..{end} are incomplete; start the upload again"
                ),
            });
        }
        Ok(out)
    }

    async fn crcs(&self, id: &str, count: u64) -> UploadResult<Vec<u32>> {
        let key = id.to_string();
        let bytes: Vec<u8> = Self::run(&self.pool, move |c| {
            Ok(c.query_opt(
                "SELECT crcs FROM custodian_upload_sessions WHERE id = $1",
                &[&key],
            )
            .map_err(db)?
            .map_or_else(Vec::new, |row| row.get(0)))
        })
        .await?;
        decode_crcs(&bytes, count).map_err(|e| UploadError::Invalid {
            id: id.to_string(),
            reason: format!("its block checksums are incomplete ({e}); start the upload again"),
        })
    }

    async fn blocks(
        &self,
        id: &str,
        size: u64,
        block: u64,
    ) -> UploadResult<BoxStream<'static, custodian_storage::Result<Bytes>>> {
        struct Cursor {
            pool: Arc<Pool>,
            id: String,
            /// Where the next part starts.
            next: u64,
            /// Bytes read and not yet yielded.
            carry: BytesMut,
            /// Bytes yielded so far.
            yielded: u64,
        }
        let cursor = Cursor {
            pool: self.pool.clone(),
            id: id.to_string(),
            next: 0,
            carry: BytesMut::new(),
            yielded: 0,
        };
        Ok(
            futures::stream::unfold(cursor, move |mut cursor| async move {
                if cursor.yielded >= size {
                    return None;
                }
                let want = block.min(size - cursor.yielded) as usize;
                while cursor.carry.len() < want {
                    let (pool, id, start) = (cursor.pool.clone(), cursor.id.clone(), cursor.next);
                    let part: Result<Option<Vec<u8>>, StorageError> =
                        tokio::task::spawn_blocking(move || {
                            pool.call(move |c| {
                                Ok(c.query_opt(
                                    "SELECT bytes FROM custodian_upload_parts \
                                 WHERE id = $1 AND committed AND start = $2",
                                    &[&id, &big(start)],
                                )
                                .map_err(db)?
                                .map(|row| row.get(0)))
                            })
                        })
                        .await
                        .unwrap_or_else(|e| Err(StorageError::Aborted(e.to_string())));
                    match part {
                        Ok(Some(bytes)) if !bytes.is_empty() => {
                            cursor.next += bytes.len() as u64;
                            cursor.carry.extend_from_slice(&bytes);
                        }
                        Ok(_) => {
                            let err = StorageError::Aborted(format!(
                                "upload {}: no staged bytes at offset {start}",
                                cursor.id
                            ));
                            cursor.yielded = size;
                            return Some((Err(err), cursor));
                        }
                        Err(err) => {
                            cursor.yielded = size;
                            return Some((Err(err), cursor));
                        }
                    }
                }
                let item = cursor.carry.split_to(want).freeze();
                cursor.yielded += want as u64;
                Some((Ok(item), cursor))
            })
            .boxed(),
        )
    }

    async fn remove(&self, id: &str) -> UploadResult<()> {
        let key = id.to_string();
        Self::run(&self.pool, move |c| {
            c.execute(
                "DELETE FROM custodian_upload_sessions WHERE id = $1",
                &[&key],
            )
            .map_err(db)
            .map(|_| ())
        })
        .await
    }

    fn list_blocking(&self) -> Vec<StagedSession> {
        let rows = self.pool.call(|c| {
            c.query("SELECT id, state FROM custodian_upload_sessions", &[])
                .map_err(db)
        });
        match rows {
            Ok(rows) => rows
                .into_iter()
                .map(|row| {
                    let state: Vec<u8> = row.get(1);
                    StagedSession {
                        id: row.get(0),
                        state: SessionState::from_json(&state).ok(),
                        idle: None,
                    }
                })
                .collect(),
            Err(err) => {
                tracing::warn!(%err, "could not list the upload sessions");
                Vec::new()
            }
        }
    }

    fn remove_blocking(&self, id: &str) -> bool {
        let key = id.to_string();
        self.pool
            .call(move |c| {
                c.execute(
                    "DELETE FROM custodian_upload_sessions WHERE id = $1",
                    &[&key],
                )
                .map_err(db)
            })
            .is_ok_and(|n| n == 1)
    }
}
