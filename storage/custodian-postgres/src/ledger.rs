//! The ledger on PostgreSQL: entries, stored tree hashes and checkpoints in four tables, each
//! batch committed in one transaction that first locks the log's state row and refuses a batch
//! that does not continue the stored tree (so two writers can never store two trees of one
//! size). Writers also take a session advisory lock around build-and-commit, so they take turns
//! rather than refuse each other's batches.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, sync_channel};

use custodian_core::merkle::{HASH_LEN, Hash};
use custodian_storage::ledger::{
    AppendLock, LedgerBackend, LedgerBatch, LedgerError, LedgerResult,
};
use postgres::Client;

use crate::pool::{Connection, PgFailure, Pool, big};
use crate::{BACKEND, CONNECTIONS};

impl From<PgFailure> for LedgerError {
    fn from(failure: PgFailure) -> Self {
        match failure {
            PgFailure::Unreachable(message) => LedgerError::Unavailable {
                backend: BACKEND,
                message,
            },
            PgFailure::Failed(message) => LedgerError::Backend {
                backend: BACKEND,
                message,
            },
        }
    }
}

fn db(err: postgres::Error) -> LedgerError {
    PgFailure::from(err).into()
}

fn hash_of(bytes: &[u8]) -> LedgerResult<Hash> {
    let array: [u8; HASH_LEN] = bytes.try_into().map_err(|_| {
        LedgerError::backend(BACKEND, format!("a stored hash has {} bytes", bytes.len()))
    })?;
    Ok(Hash(array))
}

/// The advisory lock key every Custodian appending to a database takes (any fixed number).
const APPEND_LOCK_KEY: i64 = 7_208_164;

/// A request to the lock worker: answer on the first channel once the lock is held, then hold
/// it until the second channel is closed (the guard dropped).
type LockRequest = (std::sync::mpsc::SyncSender<LedgerResult<()>>, Receiver<()>);

/// The ledger's tables in a PostgreSQL database.
pub struct PgLedger {
    pool: Pool,
    locks: Mutex<Sender<LockRequest>>,
}

/// A held append lock: a session advisory lock on the lock worker's connection, released when
/// this is dropped (or by PostgreSQL, if the connection or the process dies).
struct PgAppendLock {
    _release: std::sync::mpsc::SyncSender<()>,
}

impl AppendLock for PgAppendLock {}

/// Serves lock requests on a connection of its own: the advisory lock is the connection's, so
/// taking and releasing it must happen on one connection.
fn lock_worker(mut worker: Connection, requests: Receiver<LockRequest>) {
    while let Ok((held, release)) = requests.recv() {
        let taken = worker.client().map_err(LedgerError::from).and_then(|c| {
            c.execute("SELECT pg_advisory_lock($1)", &[&APPEND_LOCK_KEY])
                .map(|_| ())
                .map_err(db)
        });
        let ok = taken.is_ok();
        if held.send(taken).is_err() || !ok {
            if ok {
                release_lock(&mut worker);
            }
            continue;
        }
        // Blocks until the guard is dropped (its sender closes).
        let _ = release.recv();
        release_lock(&mut worker);
    }
}

fn release_lock(worker: &mut Connection) {
    let released = worker.client().and_then(|c| {
        c.execute("SELECT pg_advisory_unlock($1)", &[&APPEND_LOCK_KEY])
            .map(|_| ())
            .map_err(PgFailure::from)
    });
    if released.is_err() {
        // A broken connection released the lock with it; start afresh.
        worker.reset();
    }
}

impl PgLedger {
    /// Connects to `url` (`postgres://user@host:port/db`), creates or checks the schema, and
    /// starts the workers. Fails with the URL named (password hidden) when the server cannot be
    /// reached, and with both versions named when the schema is newer than this build.
    pub fn open(url: &str) -> LedgerResult<PgLedger> {
        let first = crate::open_database(url).map_err(LedgerError::from)?;
        let pool = Pool::start(first, CONNECTIONS, "custodian-pg-ledger")?;
        let (lock_tx, lock_rx) = std::sync::mpsc::channel::<LockRequest>();
        let locker = Connection::new(url);
        std::thread::Builder::new()
            .name("custodian-pg-lock".into())
            .spawn(move || lock_worker(locker, lock_rx))
            .map_err(|e| LedgerError::backend(BACKEND, format!("cannot start a worker: {e}")))?;
        Ok(PgLedger {
            pool,
            locks: Mutex::new(lock_tx),
        })
    }

    fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Client) -> LedgerResult<T> + Send + 'static,
    ) -> LedgerResult<T> {
        self.pool.call(job)
    }
}

impl LedgerBackend for PgLedger {
    fn shared(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        BACKEND
    }

    fn append_lock(&self) -> LedgerResult<Option<Box<dyn AppendLock>>> {
        let (held_tx, held_rx) = sync_channel(1);
        let (release_tx, release_rx) = sync_channel(1);
        self.locks
            .lock()
            .map_err(|_| LedgerError::backend(BACKEND, "the lock queue was poisoned"))?
            .send((held_tx, release_rx))
            .map_err(|_| LedgerError::backend(BACKEND, "the lock worker stopped"))?;
        held_rx
            .recv()
            .map_err(|_| LedgerError::backend(BACKEND, "the lock worker stopped mid-call"))??;
        Ok(Some(Box::new(PgAppendLock {
            _release: release_tx,
        })))
    }

    fn latest_checkpoint(&self) -> LedgerResult<Option<(u64, Vec<u8>)>> {
        self.call(|c| {
            Ok(c.query_opt(
                "SELECT size, note FROM custodian_ledger_checkpoints ORDER BY size DESC LIMIT 1",
                &[],
            )
            .map_err(db)?
            .map(|row| (row.get::<_, i64>(0) as u64, row.get(1))))
        })
    }

    fn checkpoint(&self, size: u64) -> LedgerResult<Option<Vec<u8>>> {
        self.call(move |c| {
            Ok(c.query_opt(
                "SELECT note FROM custodian_ledger_checkpoints WHERE size = $1",
                &[&big(size)],
            )
            .map_err(db)?
            .map(|row| row.get(0)))
        })
    }

    fn checkpoints(&self, from_size: u64, limit: usize) -> LedgerResult<Vec<(u64, Vec<u8>)>> {
        self.call(move |c| {
            Ok(c.query(
                "SELECT size, note FROM custodian_ledger_checkpoints WHERE size >= $1 \
                 ORDER BY size LIMIT $2",
                &[&big(from_size), &big(limit as u64)],
            )
            .map_err(db)?
            .into_iter()
            .map(|row| (row.get::<_, i64>(0) as u64, row.get(1)))
            .collect())
        })
    }

    fn entries(&self, start: u64, end: u64) -> LedgerResult<Vec<Vec<u8>>> {
        if end <= start {
            return Ok(Vec::new());
        }
        self.call(move |c| {
            let rows = c
                .query(
                    "SELECT idx, entry FROM custodian_ledger_entries \
                     WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                    &[&big(start), &big(end)],
                )
                .map_err(db)?;
            let mut out = Vec::with_capacity(rows.len());
            for (offset, row) in rows.iter().enumerate() {
                let index = row.get::<_, i64>(0) as u64;
                if index != start + offset as u64 {
                    break;
                }
                out.push(row.get(1));
            }
            if out.len() as u64 != end - start {
                let size: i64 = c
                    .query_one("SELECT size FROM custodian_ledger_state WHERE id = 1", &[])
                    .map_err(db)?
                    .get(0);
                return Err(LedgerError::NoSuchEntry {
                    index: start + out.len() as u64,
                    size: size as u64,
                });
            }
            Ok(out)
        })
    }

    fn index_of(&self, leaf: &Hash) -> LedgerResult<Option<u64>> {
        let leaf = leaf.0.to_vec();
        self.call(move |c| {
            Ok(c.query_opt(
                "SELECT idx FROM custodian_ledger_entries WHERE leaf = $1 ORDER BY idx LIMIT 1",
                &[&leaf],
            )
            .map_err(db)?
            .map(|row| row.get::<_, i64>(0) as u64))
        })
    }

    fn hashes(&self, indexes: &[u64]) -> LedgerResult<Vec<Option<Hash>>> {
        let wanted: Vec<i64> = indexes.iter().map(|&i| big(i)).collect();
        let order = indexes.to_vec();
        self.call(move |c| {
            let rows = c
                .query(
                    "SELECT idx, hash FROM custodian_ledger_hashes WHERE idx = ANY($1)",
                    &[&wanted],
                )
                .map_err(db)?;
            let mut found = std::collections::HashMap::with_capacity(rows.len());
            for row in rows {
                let bytes: Vec<u8> = row.get(1);
                found.insert(row.get::<_, i64>(0) as u64, hash_of(&bytes)?);
            }
            Ok(order.iter().map(|i| found.get(i).copied()).collect())
        })
    }

    fn hash_range(&self, start: u64, end: u64) -> LedgerResult<Vec<Hash>> {
        if end <= start {
            return Ok(Vec::new());
        }
        self.call(move |c| {
            c.query(
                "SELECT hash FROM custodian_ledger_hashes WHERE idx >= $1 AND idx < $2 \
                 ORDER BY idx",
                &[&big(start), &big(end)],
            )
            .map_err(db)?
            .iter()
            .map(|row| hash_of(row.get::<_, &[u8]>(0)))
            .collect()
        })
    }

    fn commit(&self, batch: &LedgerBatch) -> LedgerResult<()> {
        let batch = batch.clone();
        self.call(move |c| {
            let mut tx = c.transaction().map_err(db)?;
            // The state row is the log's one point of order: whoever holds it decides what
            // comes next, and a batch built on any other tree than the stored one is refused.
            let state = tx
                .query_one(
                    "SELECT size, hash_count FROM custodian_ledger_state WHERE id = 1 FOR UPDATE",
                    &[],
                )
                .map_err(db)?;
            let (size, hash_count) = (state.get::<_, i64>(0) as u64, state.get::<_, i64>(1) as u64);
            if size > batch.first_index && hash_count > batch.first_hash_index {
                // Another writer got there first; the caller rebuilds the batch on its tree.
                return Err(LedgerError::Conflict {
                    stored: size,
                    start: batch.first_index,
                });
            }
            if size != batch.first_index || hash_count != batch.first_hash_index {
                return Err(LedgerError::backend(
                    BACKEND,
                    format!(
                        "batch does not start at the end of the log: the log has {size} entries \
                         and {hash_count} stored hashes, the batch starts at entry {} and hash {}",
                        batch.first_index, batch.first_hash_index
                    ),
                ));
            }
            let count = batch.entries.len() as u64;
            let indexes: Vec<i64> = (0..count).map(|i| big(batch.first_index + i)).collect();
            let leaves: Vec<Vec<u8>> = batch.leaf_hashes.iter().map(|h| h.0.to_vec()).collect();
            tx.execute(
                "INSERT INTO custodian_ledger_entries (idx, leaf, entry) \
                 SELECT * FROM UNNEST($1::bigint[], $2::bytea[], $3::bytea[])",
                &[&indexes, &leaves, &batch.entries],
            )
            .map_err(db)?;
            let hash_indexes: Vec<i64> = (0..batch.hashes.len() as u64)
                .map(|i| big(batch.first_hash_index + i))
                .collect();
            let hashes: Vec<Vec<u8>> = batch.hashes.iter().map(|h| h.0.to_vec()).collect();
            tx.execute(
                "INSERT INTO custodian_ledger_hashes (idx, hash) \
                 SELECT * FROM UNNEST($1::bigint[], $2::bytea[])",
                &[&hash_indexes, &hashes],
            )
            .map_err(db)?;
            tx.execute(
                "INSERT INTO custodian_ledger_checkpoints (size, note) VALUES ($1, $2) \
                 ON CONFLICT (size) DO UPDATE SET note = EXCLUDED.note",
                &[&big(batch.checkpoint_size), &batch.checkpoint],
            )
            .map_err(db)?;
            tx.execute(
                "UPDATE custodian_ledger_state SET size = $1, hash_count = $2 WHERE id = 1",
                &[
                    &big(size + count),
                    &big(hash_count + batch.hashes.len() as u64),
                ],
            )
            .map_err(db)?;
            // synchronous_commit is on by default: the commit returns once the WAL is flushed.
            tx.commit().map_err(db)
        })
    }
}
