//! Custodian's shared state on PostgreSQL, so that any number of daemons can serve one registry:
//! the ledger ([`PgLedger`]: entries, stored tree hashes, checkpoints, one locked state row per
//! commit) and the blob metadata index of the object-store backend ([`PgIndex`]: committed blobs
//! under both digests, pending uploads, and the [`custodian_storage::SharedState`] beside them:
//! acknowledgements, deletion claims, OCI repository links). The bytes themselves stay in the
//! object store.
//!
//! The driver is the `postgres` crate, the blocking face of `tokio-postgres` by the same
//! maintainers: Custodian's [`custodian_storage::LedgerBackend`] and
//! [`custodian_storage::BlobIndex`] traits are synchronous, as RocksDB's calls are, so every
//! call runs on a pool of connection threads of this crate's own ([`pool`]) and never holds an
//! async worker thread of the daemon.
//!
//! One schema, versioned in `custodian_schema`, serves both; [`SCHEMA_VERSION`] names what this
//! build writes. Opening a database migrates it forward under an advisory lock (so daemons
//! starting together take turns) and refuses a schema newer than this build, naming both.

mod index;
mod ledger;
mod pool;
mod staging;

pub use index::PgIndex;
pub use ledger::PgLedger;
pub use pool::PgFailure;
pub use staging::PgStaging;

use pool::{Connection, redact};

const BACKEND: &str = "postgres";

/// How many connections (and worker threads) the ledger and the index each keep.
pub const CONNECTIONS: usize = 4;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i32 = 4;

/// The schema's migrations: `MIGRATIONS[n]` takes version `n` to `n + 1`.
const MIGRATIONS: [&str; 4] = [
    // 1: the ledger's tables.
    "
CREATE TABLE custodian_ledger_state (
    id integer PRIMARY KEY CHECK (id = 1),
    size bigint NOT NULL,
    hash_count bigint NOT NULL
);
INSERT INTO custodian_ledger_state (id, size, hash_count) VALUES (1, 0, 0);
CREATE TABLE custodian_ledger_entries (
    idx bigint PRIMARY KEY,
    leaf bytea NOT NULL,
    entry bytea NOT NULL
);
CREATE INDEX custodian_ledger_entries_leaf ON custodian_ledger_entries (leaf);
CREATE TABLE custodian_ledger_hashes (
    idx bigint PRIMARY KEY,
    hash bytea NOT NULL
);
CREATE TABLE custodian_ledger_checkpoints (
    size bigint PRIMARY KEY,
    note bytea NOT NULL
);
",
    // 2: the blob index of the object-store backend.
    "
CREATE TABLE custodian_blobs (
    sha256 bytea PRIMARY KEY,
    blake3 bytea NOT NULL UNIQUE,
    meta bytea NOT NULL
);
CREATE TABLE custodian_index_instances (
    instance bigserial PRIMARY KEY,
    token text NOT NULL,
    seen timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE custodian_pending_uploads (
    id bigint PRIMARY KEY,
    instance bigint NOT NULL,
    record bytea NOT NULL
);
CREATE INDEX custodian_pending_uploads_instance ON custodian_pending_uploads (instance);
",
    // 3: what daemons sharing the bucket agree on beyond the blobs: acknowledgements, the
    // claims of collections deleting blobs, the OCI front end's repository links, and the
    // resumable upload sessions (state and staged bytes).
    "
ALTER TABLE custodian_blobs
    ADD COLUMN acknowledged_ms bigint,
    ADD COLUMN claimed_by bigint,
    ADD COLUMN claimed_ms bigint;
CREATE TABLE custodian_oci_links (
    repo text NOT NULL,
    sha256 bytea NOT NULL,
    PRIMARY KEY (repo, sha256)
);
CREATE INDEX custodian_oci_links_sha256 ON custodian_oci_links (sha256);
CREATE TABLE custodian_upload_sessions (
    id text PRIMARY KEY,
    state bytea NOT NULL,
    committed bigint NOT NULL,
    crcs bytea NOT NULL DEFAULT '',
    updated_ms bigint NOT NULL
);
CREATE TABLE custodian_upload_parts (
    id text NOT NULL REFERENCES custodian_upload_sessions (id) ON DELETE CASCADE,
    writer text NOT NULL,
    start bigint NOT NULL,
    bytes bytea NOT NULL,
    committed boolean NOT NULL DEFAULT false,
    PRIMARY KEY (id, writer, start)
);
CREATE INDEX custodian_upload_parts_committed ON custodian_upload_parts (id, start)
    WHERE committed;
",
    // 4: the blob whose own object a pending upload writes, so that no collection claims it
    // (and so deletes that object) while the upload is in flight on any daemon.
    "
ALTER TABLE custodian_pending_uploads ADD COLUMN places bytea;
CREATE INDEX custodian_pending_uploads_places ON custodian_pending_uploads (places)
    WHERE places IS NOT NULL;
",
];

/// Connects to `url` and brings its schema to [`SCHEMA_VERSION`]. Fails naming the URL (its
/// password hidden) when the server cannot be reached, and naming both versions when the schema
/// is newer than this build.
fn open_database(url: &str) -> Result<Connection, PgFailure> {
    let shown = redact(url);
    let mut connection = Connection::new(url);
    let client = connection.client().map_err(|e| {
        PgFailure::Unreachable(format!("cannot connect to PostgreSQL at {shown}: {e}"))
    })?;
    migrate(client, &shown)?;
    Ok(connection)
}

/// Creates the schema on an empty database, or migrates an older one forward, or refuses a newer
/// one. Daemons opening one database at once serialize on an advisory lock.
fn migrate(client: &mut postgres::Client, shown: &str) -> Result<(), PgFailure> {
    let mut tx = client.transaction()?;
    // Any fixed key: it only has to be the same for every Custodian.
    tx.execute("SELECT pg_advisory_xact_lock(7208163)", &[])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS custodian_schema (
             id integer PRIMARY KEY CHECK (id = 1),
             version integer NOT NULL
         )",
    )?;
    let found: i32 = tx
        .query_opt("SELECT version FROM custodian_schema WHERE id = 1", &[])?
        .map_or(0, |row| row.get(0));
    if found > SCHEMA_VERSION {
        return Err(PgFailure::Failed(format!(
            "the database {shown} has schema version {found}, newer than this custodian's \
             {SCHEMA_VERSION}: upgrade custodian, or point it at another database"
        )));
    }
    for (from, migration) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        tx.batch_execute(migration)?;
        tracing::info!(
            database = %shown,
            version = from + 1,
            "migrated the PostgreSQL schema"
        );
    }
    tx.execute(
        "INSERT INTO custodian_schema (id, version) VALUES (1, $1) \
         ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
        &[&SCHEMA_VERSION],
    )?;
    tx.commit()?;
    Ok(())
}
