//! The object-store backend's blob index on PostgreSQL, shared by every daemon in front of one
//! bucket: a blob is committed (visible through every daemon) exactly when its row in
//! `custodian_blobs` is, and the row's unique `blake3` column is its BLAKE3 alias.
//!
//! Pending uploads belong to an *instance*: one daemon's data directory, numbered by the
//! database when it first opens and remembered in `DIR/postgres-instance`. Upload ids are
//! `instance << 32 | counter`, so daemons never collide without asking the database for each
//! one. At open, a daemon's own pending records are leftovers of its previous run (no upload of
//! this run has begun). Another instance's records are leftovers only once that instance has not
//! been seen for [`STALE_AFTER`]: each open index marks its instance seen every
//! [`HEARTBEAT`].

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custodian_core::{Algorithm, Digest};
use custodian_storage::{
    BlobIndex, BlobMeta, Leftover, PendingUpload, Result, SharedState, StorageError,
};
use postgres::Client;

use crate::pool::{PgFailure, Pool, big};
use crate::{BACKEND, CONNECTIONS};

/// How often an open index marks its instance as seen.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// How long an instance may go unseen before other daemons clean up its pending uploads.
pub const STALE_AFTER: &str = "5 minutes";

/// The file in a daemon's data directory that remembers its instance.
const INSTANCE_FILE: &str = "postgres-instance";

impl From<PgFailure> for StorageError {
    fn from(failure: PgFailure) -> Self {
        match failure {
            PgFailure::Unreachable(message) => StorageError::Unavailable {
                backend: BACKEND,
                message,
            },
            PgFailure::Failed(message) => StorageError::Backend {
                backend: BACKEND,
                message,
            },
        }
    }
}

/// A driver error as the storage layer's (an outage is `Unavailable`).
pub(crate) fn db(err: postgres::Error) -> StorageError {
    PgFailure::from(err).into()
}

/// The blob index in a PostgreSQL database.
pub struct PgIndex {
    pool: Arc<Pool>,
    instance: i64,
    next_upload: AtomicU64,
    poisoned: Mutex<Option<String>>,
    /// Dropping it stops the heartbeat thread.
    _heartbeat: Sender<()>,
}

impl PgIndex {
    /// Connects to `url`, creates or migrates the schema, and takes this daemon's instance (the
    /// one remembered in `state_dir`, or a new one). Blocks; safe to call from an async task
    /// (the connection is made on a thread of its own, as the blocking client requires).
    pub fn open(url: &str, state_dir: &Path) -> Result<PgIndex> {
        let (url, state_dir) = (url.to_string(), state_dir.to_path_buf());
        std::thread::spawn(move || Self::open_here(&url, &state_dir))
            .join()
            .map_err(|_| StorageError::backend(BACKEND, "the open thread panicked"))?
    }

    fn open_here(url: &str, state_dir: &Path) -> Result<PgIndex> {
        let mut first = crate::open_database(url)?;
        let instance = claim_instance(first.client()?, state_dir)?;
        let last: i64 = first
            .client()?
            .query_one(
                "SELECT coalesce(max(id), 0) FROM custodian_pending_uploads WHERE instance = $1",
                &[&instance],
            )
            .map_err(db)?
            .get(0);
        let pool = Arc::new(Pool::start(first, CONNECTIONS, "custodian-pg-index")?);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let beating = pool.clone();
        std::thread::Builder::new()
            .name("custodian-pg-heartbeat".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(HEARTBEAT) {
                    let seen = beating.call(move |c: &mut Client| {
                        c.execute(
                            "UPDATE custodian_index_instances SET seen = now() WHERE instance = $1",
                            &[&instance],
                        )
                        .map_err(PgFailure::from)
                    });
                    if let Err(err) = seen {
                        tracing::warn!(%err, "could not mark this daemon's index instance seen");
                    }
                }
            })
            .map_err(|e| StorageError::backend(BACKEND, format!("cannot start a thread: {e}")))?;
        Ok(PgIndex {
            pool,
            instance,
            next_upload: AtomicU64::new(((last as u64) & 0xffff_ffff) + 1),
            poisoned: Mutex::new(None),
            _heartbeat: stop,
        })
    }

    /// This daemon's instance number.
    pub fn instance(&self) -> i64 {
        self.instance
    }

    fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Client) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.pool.call(job)
    }
}

/// The instance remembered in `state_dir` if the database still knows it (with the same token),
/// else a new one, remembered durably before it is used.
fn claim_instance(client: &mut Client, state_dir: &Path) -> Result<i64> {
    let path = state_dir.join(INSTANCE_FILE);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Some((number, token)) = text.trim().split_once(' ')
        && let Ok(number) = number.parse::<i64>()
    {
        let known = client
            .execute(
                "UPDATE custodian_index_instances SET seen = now() \
                 WHERE instance = $1 AND token = $2",
                &[&number, &token],
            )
            .map_err(db)?;
        if known == 1 {
            return Ok(number);
        }
    }
    let token = uuid::Uuid::new_v4().to_string();
    let number: i64 = client
        .query_one(
            "INSERT INTO custodian_index_instances (token) VALUES ($1) RETURNING instance",
            &[&token],
        )
        .map_err(db)?
        .get(0);
    if number >= 1 << 31 {
        return Err(StorageError::backend(
            BACKEND,
            format!("instance number {number} leaves no room for upload ids"),
        ));
    }
    std::fs::create_dir_all(state_dir)
        .and_then(|()| write_durably(&path, format!("{number} {token}\n").as_bytes()))
        .map_err(|e| StorageError::backend(BACKEND, format!("write {}: {e}", path.display())))?;
    Ok(number)
}

/// Replaces a small file atomically and durably: write, sync, rename, sync the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A row of `custodian_blobs` as [`BlobMeta`], checked against the keys it is filed under.
fn decode(sha256: &[u8], blake3: &[u8], meta: &[u8]) -> Result<BlobMeta> {
    let key: [u8; 32] = sha256
        .try_into()
        .map_err(|_| StorageError::backend(BACKEND, "a blob row's sha256 is not 32 bytes"))?;
    let corrupt = |detail: String| StorageError::Corrupt {
        digest: Digest::sha256(key),
        detail,
    };
    let meta = BlobMeta::decode(meta).map_err(|e| corrupt(e.to_string()))?;
    if meta.sha256().bytes() != &key {
        return Err(corrupt(format!(
            "metadata is filed under this digest but describes {}",
            meta.sha256()
        )));
    }
    if meta.digests.blake3.bytes().as_slice() != blake3 {
        return Err(corrupt(
            "the row's BLAKE3 column differs from the blob's BLAKE3".into(),
        ));
    }
    Ok(meta)
}

impl BlobIndex for PgIndex {
    fn remote(&self) -> bool {
        true
    }

    fn shared(&self) -> bool {
        true
    }

    fn check_writable(&self) -> Result<()> {
        match &*self.poisoned.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(cause) => Err(StorageError::Poisoned {
                backend: BACKEND,
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison(&self, cause: String) -> StorageError {
        tracing::error!(%cause, "a blob write failed; refusing further writes until restart");
        *self.poisoned.lock().unwrap_or_else(|e| e.into_inner()) = Some(cause.clone());
        StorageError::Poisoned {
            backend: BACKEND,
            cause,
        }
    }

    fn lookup(&self, digest: &Digest) -> Result<Option<BlobMeta>> {
        let column = match digest.algorithm() {
            Algorithm::Sha256 => "sha256",
            Algorithm::Blake3 => "blake3",
        };
        let key = digest.bytes().to_vec();
        let query = format!("SELECT sha256, blake3, meta FROM custodian_blobs WHERE {column} = $1");
        self.call(move |c| match c.query_opt(&query, &[&key]).map_err(db)? {
            None => Ok(None),
            Some(row) => decode(row.get(0), row.get(1), row.get(2)).map(Some),
        })
    }

    fn lookup_many(&self, digests: &[Digest]) -> Result<Vec<Option<BlobMeta>>> {
        let digests = digests.to_vec();
        self.call(move |c| {
            let (sha, blake): (Vec<&Digest>, Vec<&Digest>) = digests
                .iter()
                .partition(|d| d.algorithm() == Algorithm::Sha256);
            let sha: Vec<Vec<u8>> = sha.iter().map(|d| d.bytes().to_vec()).collect();
            let blake: Vec<Vec<u8>> = blake.iter().map(|d| d.bytes().to_vec()).collect();
            let rows = c
                .query(
                    "SELECT sha256, blake3, meta FROM custodian_blobs \
                     WHERE sha256 = ANY($1) OR blake3 = ANY($2)",
                    &[&sha, &blake],
                )
                .map_err(db)?;
            let mut found = std::collections::HashMap::with_capacity(rows.len() * 2);
            for row in rows {
                let meta = decode(row.get(0), row.get(1), row.get(2))?;
                found.insert(meta.sha256(), meta.clone());
                found.insert(meta.digests.blake3, meta);
            }
            Ok(digests.iter().map(|d| found.get(d).cloned()).collect())
        })
    }

    fn new_upload_id(&self) -> u64 {
        let counter = self.next_upload.fetch_add(1, Ordering::SeqCst) & 0xffff_ffff;
        ((self.instance as u64) << 32) | counter
    }

    fn add_pending(&self, records: &[PendingUpload]) -> Result<()> {
        let ids: Vec<i64> = records.iter().map(|p| p.id as i64).collect();
        let bodies: Vec<Vec<u8>> = records.iter().map(|p| p.record.clone()).collect();
        let places: Vec<Option<Vec<u8>>> = records
            .iter()
            .map(|p| p.places.map(|d| d.bytes().to_vec()))
            .collect();
        let mut placed: Vec<Vec<u8>> = places.iter().flatten().cloned().collect();
        placed.sort();
        placed.dedup();
        let instance = self.instance;
        self.call(move |c| {
            let mut tx = c.transaction().map_err(db)?;
            if !placed.is_empty() {
                // The placed blobs' rows, where they exist, are locked in the order a claim
                // locks them, every one, claimed or not (a locking read locks only the rows it
                // returns, so the check is made here), and read as they are once locked: a
                // claim being made waits for this transaction, or this read waits for the claim
                // and sees it. A claim made after this commits sees the records (`claim`).
                for row in tx
                    .query(
                        "SELECT sha256, claimed_by IS NOT NULL FROM custodian_blobs \
                         WHERE sha256 = ANY($1) ORDER BY sha256 FOR SHARE",
                        &[&placed],
                    )
                    .map_err(db)?
                {
                    if row.get::<_, bool>(1) {
                        return Err(StorageError::being_deleted(&sha256_of(row.get(0))?));
                    }
                }
            }
            // A record whose id is pending already replaces it (an upload moving its object
            // from its staging key to its blob's key says so in place).
            tx.execute(
                "INSERT INTO custodian_pending_uploads (id, instance, record, places) \
                 SELECT id, $2, record, places \
                 FROM UNNEST($1::bigint[], $3::bytea[], $4::bytea[]) AS t(id, record, places) \
                 ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record, places = EXCLUDED.places",
                &[&ids, &instance, &bodies, &places],
            )
            .map_err(db)?;
            tx.commit().map_err(db)
        })
    }

    fn remove_pending(&self, ids: &[u64]) -> Result<()> {
        let ids: Vec<i64> = ids.iter().map(|id| *id as i64).collect();
        self.call(move |c| {
            c.execute(
                "DELETE FROM custodian_pending_uploads WHERE id = ANY($1)",
                &[&ids],
            )
            .map_err(db)
            .map(|_| ())
        })
    }

    fn leftovers(&self, live: &(dyn Fn(u64) -> bool + Sync)) -> Result<Vec<Leftover>> {
        let instance = self.instance;
        // This daemon's own records are asked for by id first, so that a sweep while many of
        // its uploads are live fetches their ids, not their records.
        let own: Vec<i64> = self
            .call(move |c| {
                Ok(c.query(
                    "SELECT id FROM custodian_pending_uploads WHERE instance = $1",
                    &[&instance],
                )
                .map_err(db)?
                .into_iter()
                .map(|row| row.get::<_, i64>(0))
                .collect::<Vec<i64>>())
            })?
            .into_iter()
            .filter(|id| !live(*id as u64))
            .collect();
        let query = format!(
            "SELECT p.id, p.instance, p.record FROM custodian_pending_uploads p \
             LEFT JOIN custodian_index_instances i ON i.instance = p.instance \
             WHERE (p.instance = $1 AND p.id = ANY($2)) \
                OR (p.instance <> $1 AND (i.instance IS NULL \
                    OR i.seen < now() - interval '{STALE_AFTER}')) \
             ORDER BY p.id"
        );
        self.call(move |c| {
            Ok(c.query(&query, &[&instance, &own])
                .map_err(db)?
                .into_iter()
                .map(|row| Leftover {
                    id: row.get::<_, i64>(0) as u64,
                    own: row.get::<_, i64>(1) == instance,
                    record: row.get(2),
                })
                .collect())
        })
    }

    fn pending_count(&self) -> Result<u64> {
        self.call(|c| {
            Ok(
                c.query_one("SELECT count(*) FROM custodian_pending_uploads", &[])
                    .map_err(db)?
                    .get::<_, i64>(0) as u64,
            )
        })
    }

    fn probe(&self) -> Result<()> {
        // One round trip on a pooled connection: the database answers, whatever it holds.
        self.call(|c| c.query_one("SELECT 1", &[]).map_err(db).map(|_| ()))
    }

    fn commit(&self, commits: &[(u64, BlobMeta)]) -> Result<Vec<(BlobMeta, bool)>> {
        let commits = commits.to_vec();
        self.call(move |c| {
            let ids: Vec<i64> = commits.iter().map(|(id, _)| *id as i64).collect();
            let mut seen = std::collections::HashSet::new();
            let mut sha = Vec::new();
            let mut blake = Vec::new();
            let mut metas = Vec::new();
            for (_, meta) in &commits {
                if seen.insert(meta.sha256()) {
                    sha.push(meta.sha256().bytes().to_vec());
                    blake.push(meta.digests.blake3.bytes().to_vec());
                    metas.push(meta.encode());
                }
            }
            let mut tx = c.transaction().map_err(db)?;
            tx.execute(
                "DELETE FROM custodian_pending_uploads WHERE id = ANY($1)",
                &[&ids],
            )
            .map_err(db)?;
            // A row another daemon committed first stands (it describes the same bytes); the
            // insert waits for that daemon's transaction, then skips the row.
            let inserted: std::collections::HashSet<Vec<u8>> = tx
                .query(
                    "INSERT INTO custodian_blobs (sha256, blake3, meta) \
                     SELECT * FROM UNNEST($1::bytea[], $2::bytea[], $3::bytea[]) \
                     ON CONFLICT DO NOTHING RETURNING sha256",
                    &[&sha, &blake, &metas],
                )
                .map_err(db)?
                .into_iter()
                .map(|row| row.get(0))
                .collect();
            let others: Vec<&Vec<u8>> = sha.iter().filter(|s| !inserted.contains(*s)).collect();
            let mut existing = std::collections::HashMap::new();
            if !others.is_empty() {
                for row in tx
                    .query(
                        "SELECT sha256, blake3, meta FROM custodian_blobs WHERE sha256 = ANY($1)",
                        &[&others],
                    )
                    .map_err(db)?
                {
                    let meta = decode(row.get(0), row.get(1), row.get(2))?;
                    existing.insert(meta.sha256(), meta);
                }
            }
            // synchronous_commit is on by default: the commit returns once the WAL is flushed.
            tx.commit().map_err(db)?;
            let mut first = std::collections::HashSet::new();
            commits
                .into_iter()
                .map(|(_, meta)| {
                    let digest = meta.sha256();
                    if let Some(stored) = existing.get(&digest) {
                        return Ok((stored.clone(), true));
                    }
                    if !inserted.contains(digest.bytes().as_slice()) {
                        return Err(StorageError::Corrupt {
                            digest,
                            detail: "another blob is committed under the same BLAKE3".into(),
                        });
                    }
                    // The same digest twice in one commit: the second was already there.
                    let new = first.insert(digest);
                    Ok((meta, !new))
                })
                .collect()
        })
    }

    fn delete(&self, sha256: &Digest) -> Result<Option<BlobMeta>> {
        let key = sha256.bytes().to_vec();
        self.call(move |c| {
            // In a transaction, so that a row whose metadata does not decode stays in place
            // (and the caller quarantines it) instead of vanishing without its description.
            let mut tx = c.transaction().map_err(db)?;
            let Some(row) = tx
                .query_opt(
                    "DELETE FROM custodian_blobs WHERE sha256 = $1 RETURNING sha256, blake3, meta",
                    &[&key],
                )
                .map_err(db)?
            else {
                return Ok(None);
            };
            let meta = decode(row.get(0), row.get(1), row.get(2))?;
            tx.commit().map_err(db)?;
            Ok(Some(meta))
        })
    }

    fn list(&self, after: Option<Digest>, limit: usize) -> Result<Vec<Digest>> {
        // bytea compares byte by byte, so this is byte order; the empty value sorts first.
        let after = after.map_or_else(Vec::new, |d| d.bytes().to_vec());
        let limit = big(limit as u64);
        self.call(move |c| {
            c.query(
                "SELECT sha256 FROM custodian_blobs WHERE sha256 > $1 ORDER BY sha256 LIMIT $2",
                &[&after, &limit],
            )
            .map_err(db)?
            .into_iter()
            .map(|row| {
                let bytes: Vec<u8> = row.get(0);
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    StorageError::backend(BACKEND, "a blob row's sha256 is not 32 bytes")
                })?;
                Ok(Digest::sha256(key))
            })
            .collect()
        })
    }

    fn forget(&self, sha256: &Digest) -> Result<()> {
        // The row holds both keys, so removing it needs nothing from its metadata (which may
        // not decode: that is why the blob is being forgotten).
        let key = sha256.bytes().to_vec();
        self.call(move |c| {
            c.execute("DELETE FROM custodian_blobs WHERE sha256 = $1", &[&key])
                .map_err(db)?;
            Ok(())
        })
    }

    fn shared_state(self: Arc<Self>) -> Option<Arc<dyn SharedState>> {
        Some(self)
    }
}

/// The digests' SHA-256 bytes, as query parameters.
fn keys(digests: &[Digest]) -> Vec<Vec<u8>> {
    digests.iter().map(|d| d.bytes().to_vec()).collect()
}

/// A `sha256` column's value as a digest.
fn sha256_of(bytes: &[u8]) -> Result<Digest> {
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StorageError::backend(BACKEND, "a blob row's sha256 is not 32 bytes"))?;
    Ok(Digest::sha256(key))
}

/// The claims no live collection holds, as a condition on `custodian_blobs b`: this instance's
/// own ($1) and those of instances gone or unseen for [`STALE_AFTER`].
fn abandoned_claim() -> String {
    format!(
        "b.claimed_by IS NOT NULL AND (b.claimed_by = $1 OR NOT EXISTS ( \
             SELECT 1 FROM custodian_index_instances i \
             WHERE i.instance = b.claimed_by AND i.seen >= now() - interval '{STALE_AFTER}'))"
    )
}

impl SharedState for PgIndex {
    fn acknowledge(&self, sha256: &Digest, at_ms: u64) -> Result<bool> {
        let key = sha256.bytes().to_vec();
        let at = big(at_ms);
        // One statement on the blob's row: it waits for a claim being made on the row, then
        // sees it (READ COMMITTED re-checks the condition on the newest row version).
        self.call(move |c| {
            Ok(c.execute(
                "UPDATE custodian_blobs \
                 SET acknowledged_ms = greatest(coalesce(acknowledged_ms, 0), $2) \
                 WHERE sha256 = $1 AND claimed_by IS NULL",
                &[&key, &at],
            )
            .map_err(db)?
                == 1)
        })
    }

    fn acknowledged_at(&self, digests: &[Digest]) -> Result<Vec<Option<u64>>> {
        let wanted = digests.to_vec();
        let keys = keys(digests);
        self.call(move |c| {
            let mut found = std::collections::HashMap::new();
            for row in c
                .query(
                    "SELECT sha256, acknowledged_ms FROM custodian_blobs \
                     WHERE sha256 = ANY($1) AND acknowledged_ms IS NOT NULL",
                    &[&keys],
                )
                .map_err(db)?
            {
                let at: i64 = row.get(1);
                found.insert(sha256_of(row.get(0))?, at.max(0) as u64);
            }
            Ok(wanted.iter().map(|d| found.get(d).copied()).collect())
        })
    }

    fn claim(&self, digests: &[Digest], cutoff_ms: u64) -> Result<Vec<Digest>> {
        let keys = keys(digests);
        let (cutoff, instance) = (big(cutoff_ms), self.instance);
        let now = big(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64));
        self.call(move |c| {
            let mut tx = c.transaction().map_err(db)?;
            // The rows are locked in one order first, so two collections claiming overlapping
            // batches wait for each other instead of deadlocking. The update then reads each
            // row as it is once locked, and, as a new statement, every pending record committed
            // by then: a put that locked a row to record that it places the blob (see
            // `add_pending`) has committed that record, and the blob is not claimed.
            tx.execute(
                "SELECT 1 FROM custodian_blobs WHERE sha256 = ANY($1) ORDER BY sha256 FOR UPDATE",
                &[&keys],
            )
            .map_err(db)?;
            let claimed = tx
                .query(
                    "UPDATE custodian_blobs b SET claimed_by = $3, claimed_ms = $4 \
                     WHERE b.sha256 = ANY($1) AND b.claimed_by IS NULL \
                       AND coalesce(b.acknowledged_ms, 0) < $2 \
                       AND NOT EXISTS (SELECT 1 FROM custodian_pending_uploads p \
                                       WHERE p.places = b.sha256) \
                     RETURNING b.sha256",
                    &[&keys, &cutoff, &instance, &now],
                )
                .map_err(db)?
                .into_iter()
                .map(|row| sha256_of(row.get(0)))
                .collect::<Result<Vec<_>>>()?;
            tx.commit().map_err(db)?;
            Ok(claimed)
        })
    }

    fn release(&self, digests: &[Digest]) -> Result<()> {
        let keys = keys(digests);
        let instance = self.instance;
        self.call(move |c| {
            c.execute(
                "UPDATE custodian_blobs SET claimed_by = NULL, claimed_ms = NULL \
                 WHERE sha256 = ANY($1) AND claimed_by = $2",
                &[&keys, &instance],
            )
            .map_err(db)
            .map(|_| ())
        })
    }

    fn abandoned_claims(&self) -> Result<Vec<Digest>> {
        let instance = self.instance;
        let query = format!(
            "SELECT b.sha256 FROM custodian_blobs b WHERE {} ORDER BY b.sha256",
            abandoned_claim()
        );
        self.call(move |c| {
            c.query(&query, &[&instance])
                .map_err(db)?
                .into_iter()
                .map(|row| sha256_of(row.get(0)))
                .collect()
        })
    }

    fn release_abandoned(&self, digests: &[Digest]) -> Result<()> {
        let keys = keys(digests);
        let instance = self.instance;
        // The condition is checked again: a daemon seen again since the list was made keeps
        // its claims.
        let query = format!(
            "UPDATE custodian_blobs b SET claimed_by = NULL, claimed_ms = NULL \
             WHERE b.sha256 = ANY($2) AND {}",
            abandoned_claim()
        );
        self.call(move |c| {
            c.execute(&query, &[&instance, &keys])
                .map_err(db)
                .map(|_| ())
        })
    }

    fn link(&self, repo: &str, sha256: &Digest) -> Result<bool> {
        let (repo, key) = (repo.to_string(), sha256.bytes().to_vec());
        self.call(move |c| {
            Ok(c.execute(
                "INSERT INTO custodian_oci_links (repo, sha256) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
                &[&repo, &key],
            )
            .map_err(db)?
                == 1)
        })
    }

    fn unlink(&self, repo: &str, sha256: &Digest) -> Result<bool> {
        let (repo, key) = (repo.to_string(), sha256.bytes().to_vec());
        self.call(move |c| {
            Ok(c.execute(
                "DELETE FROM custodian_oci_links WHERE repo = $1 AND sha256 = $2",
                &[&repo, &key],
            )
            .map_err(db)?
                == 1)
        })
    }

    fn linked(&self, repo: &str, sha256: &Digest) -> Result<bool> {
        let (repo, key) = (repo.to_string(), sha256.bytes().to_vec());
        self.call(move |c| {
            Ok(c.query_one(
                "SELECT EXISTS (SELECT 1 FROM custodian_oci_links WHERE repo = $1 AND sha256 = $2)",
                &[&repo, &key],
            )
            .map_err(db)?
            .get(0))
        })
    }

    fn repo_has_links(&self, repo: &str) -> Result<bool> {
        let repo = repo.to_string();
        self.call(move |c| {
            Ok(c.query_one(
                "SELECT EXISTS (SELECT 1 FROM custodian_oci_links WHERE repo = $1)",
                &[&repo],
            )
            .map_err(db)?
            .get(0))
        })
    }

    fn upload_staging(self: Arc<Self>) -> Arc<dyn custodian_storage::staging::Staging> {
        Arc::new(crate::staging::PgStaging::new(self.pool.clone()))
    }

    fn repos_linking(&self, sha256: &Digest) -> Result<Vec<String>> {
        let key = sha256.bytes().to_vec();
        self.call(move |c| {
            Ok(c.query(
                "SELECT repo FROM custodian_oci_links WHERE sha256 = $1 ORDER BY repo",
                &[&key],
            )
            .map_err(db)?
            .into_iter()
            .map(|row| row.get(0))
            .collect())
        })
    }
}
