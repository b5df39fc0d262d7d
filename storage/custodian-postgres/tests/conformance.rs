//! The ledger conformance suite on a PostgreSQL server of the test's own (Debian's binaries,
//! started by custodian-testkit), and what only a shared database adds: two writers cannot
//! fork the log, a newer schema is refused, an unreachable server is named, and a server
//! restart costs only the calls in flight.

use std::sync::Arc;

use custodian_core::entry::EntryKind;
use custodian_core::merkle::Hash;
use custodian_postgres::PgLedger;
use custodian_storage::ledger::{Ledger, LedgerBackend, LedgerBatch, LedgerError};
use custodian_storage::ledger_conformance::{self, LedgerHarness, payload, test_signer};
use custodian_testkit::Postgres;

struct Harness(String);

impl LedgerHarness for Harness {
    fn open(&self) -> Arc<dyn LedgerBackend> {
        Arc::new(PgLedger::open(&self.0).expect("open the PostgreSQL ledger"))
    }
}

/// A PostgreSQL ledger whose writer skips the append lock: its stale batches reach the
/// database, which must refuse them (the `Conflict` path the lock otherwise avoids).
struct NoLock(Arc<dyn LedgerBackend>);

impl LedgerBackend for NoLock {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, LedgerError> {
        self.0.latest_checkpoint()
    }
    fn checkpoint(&self, size: u64) -> Result<Option<Vec<u8>>, LedgerError> {
        self.0.checkpoint(size)
    }
    fn checkpoints(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, LedgerError> {
        self.0.checkpoints(from, limit)
    }
    fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, LedgerError> {
        self.0.entries(start, end)
    }
    fn index_of(&self, leaf: &Hash) -> Result<Option<u64>, LedgerError> {
        self.0.index_of(leaf)
    }
    fn hashes(&self, indexes: &[u64]) -> Result<Vec<Option<Hash>>, LedgerError> {
        self.0.hashes(indexes)
    }
    fn hash_range(&self, start: u64, end: u64) -> Result<Vec<Hash>, LedgerError> {
        self.0.hash_range(start, end)
    }
    fn commit(&self, batch: &LedgerBatch) -> Result<(), LedgerError> {
        let result = self.0.commit(batch);
        if matches!(result, Err(LedgerError::Conflict { .. })) {
            CONFLICTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        result
    }
}

static CONFLICTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn append(ledger: &Ledger, n: u64) -> Result<u64, LedgerError> {
    let size = ledger.latest().size;
    let requests = (size..size + n)
        .map(|i| (EntryKind::RunAttested, payload(i)))
        .collect();
    ledger.append(requests, 1_000 + size).map(|(_, c)| c.size)
}

/// Checks that the database holds one log of `size` entries: the entries chain, and every
/// stored checkpoint verifies and has the root of the entries' prefix of its size, so no two
/// writers ever stored two trees.
fn no_fork(url: &str, size: u64) {
    let backend = Harness(url.to_string()).open();
    let verifier = test_signer().verifier();
    let entries = backend.entries(0, size).expect("every entry");
    let mut frontier = custodian_core::merkle::Frontier::new();
    let mut roots = vec![custodian_core::merkle::empty_root()];
    let mut prev = Hash::ZERO;
    for bytes in &entries {
        let entry = custodian_core::entry::Entry::decode(bytes).expect("an entry");
        assert_eq!(entry.prev, prev, "the entries chain");
        prev = custodian_core::merkle::leaf_hash(bytes);
        frontier.append(prev);
        roots.push(frontier.root());
    }
    let checkpoints = backend.checkpoints(0, usize::MAX).expect("checkpoints");
    assert!(!checkpoints.is_empty());
    for (at, note) in checkpoints {
        let checkpoint = custodian_core::checkpoint::Checkpoint::open(&note, &verifier)
            .expect("a checkpoint that verifies");
        assert_eq!(checkpoint.size, at);
        assert!(at <= size, "a checkpoint beyond the log: {at}");
        assert_eq!(
            checkpoint.root, roots[at as usize],
            "the checkpoint of size {at} is of another tree"
        );
    }
}

/// Three writers append concurrently to one database: every append succeeds (each refused
/// batch is rebuilt on the stored tree), and the database holds one log.
#[test]
fn three_writers_append_to_one_log_without_a_fork() {
    let pg = Postgres::start();
    let url = pg.database("three_writers");
    let writers: Vec<std::thread::JoinHandle<u64>> = (0..3)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                let ledger = Ledger::open(Harness(url).open(), test_signer()).expect("open");
                let mut appended = 0;
                for round in 0..40u64 {
                    let n = 1 + (round + w) % 3;
                    append(&ledger, n).expect("every append lands");
                    appended += n;
                }
                appended
            })
        })
        .collect();
    let total: u64 = writers
        .into_iter()
        .map(|w| w.join().expect("a writer"))
        .sum();
    let latest = Harness(url.clone())
        .open()
        .latest_checkpoint()
        .expect("latest")
        .map(|c| c.0);
    assert_eq!(latest, Some(total));
    no_fork(&url, total);
}

#[test]
fn the_ledger_conformance_suite_passes_on_postgresql() {
    let pg = Postgres::start();
    ledger_conformance::run(&Harness(pg.database("conformance")));

    // Two writers on one database: the second, whose view of the tree is stale, has its batch
    // refused and rebuilds it on the stored tree.
    let url = pg.database("two_writers");
    let a = Ledger::open(Harness(url.clone()).open(), test_signer()).expect("open a");
    // b does not take the append lock, so its stale batch reaches the database and is refused.
    let b =
        Ledger::open(Arc::new(NoLock(Harness(url.clone()).open())), test_signer()).expect("open b");
    assert_eq!(append(&a, 3).expect("a appends"), 3);
    assert_eq!(append(&b, 2).expect("b continues a's tree"), 5);
    assert!(
        CONFLICTS.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "b's stale batch was refused and rebuilt"
    );
    assert!(a.refresh().expect("a catches up"));
    assert_eq!(a.latest().size, 5);
    no_fork(&url, 5);

    // A restart of the server: calls in flight may fail; the next ones reconnect.
    pg.restart();
    let mut after = append(&b, 1);
    for _ in 0..20 {
        if after.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        // A refused append poisons the Ledger handle (it cannot tell what reached the disk),
        // so the daemon reopens; the backend itself reconnects.
        let reopened = Ledger::open(Harness(pg.url("two_writers")).open(), test_signer());
        after = reopened.and_then(|l| append(&l, 1));
    }
    assert!(after.is_ok(), "no append after a restart: {after:?}");
}

#[test]
fn a_newer_schema_and_an_unreachable_server_are_refused_by_name() {
    let pg = Postgres::start();
    let url = pg.database("newer");
    drop(PgLedger::open(&url).expect("create the schema"));
    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    client
        .execute("UPDATE custodian_schema SET version = 99", &[])
        .expect("pretend a newer custodian migrated");
    let err = PgLedger::open(&url)
        .err()
        .expect("a newer schema is refused");
    let text = err.to_string();
    assert!(
        text.contains("schema version 99")
            && text.contains(&format!(
                "this custodian's {}",
                custodian_postgres::SCHEMA_VERSION
            )),
        "{text}"
    );

    let port = custodian_testkit::free_port();
    let nowhere = format!("postgres://custodian:secret@127.0.0.1:{port}/custodian");
    let err = PgLedger::open(&nowhere)
        .err()
        .expect("nothing listens there");
    let text = err.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && !text.contains("secret"),
        "{text}"
    );
}

/// A conditional append sees what another writer appended since the caller's view, under the
/// append lock: a request whose condition refuses such an entry is left out with
/// `ConditionFailed` naming it, and the rest of its batch is committed.
#[test]
fn a_condition_refuses_what_another_writer_appended_first() {
    use custodian_storage::ledger::Condition;
    let pg = Postgres::start();
    let url = pg.database("conditions");
    let a = Ledger::open(Harness(url.clone()).open(), test_signer()).expect("writer a");
    let b = Ledger::open(Harness(url.clone()).open(), test_signer()).expect("writer b");
    append(&a, 2).expect("a's first entries");
    b.refresh().expect("b catches up");
    let view = b.latest().size;
    // A appends a claim that b has not seen yet.
    a.append(
        vec![(
            EntryKind::Other("Claim".into()),
            custodian_core::entry::Value::Text("x".into()),
        )],
        5_000,
    )
    .expect("a's claim");
    let refuses_claims = Condition {
        after: view,
        check: Arc::new(|entry: &custodian_core::entry::Entry| {
            if entry.kind == EntryKind::Other("Claim".into()) {
                Err("already claimed".into())
            } else {
                Ok(())
            }
        }),
    };
    let requests = vec![
        (
            Ledger::prepare(
                EntryKind::Other("Claim".into()),
                custodian_core::entry::Value::Text("x".into()),
            )
            .expect("prepared"),
            Some(refuses_claims.clone()),
        ),
        (
            Ledger::prepare(EntryKind::RunAttested, payload(77)).expect("prepared"),
            None,
        ),
    ];
    let (results, checkpoint) = b.append_conditional(requests, 6_000).expect("b's batch");
    match &results[0] {
        Err(LedgerError::ConditionFailed { index, reason }) => {
            assert_eq!(*index, view, "the conflicting entry is named");
            assert_eq!(reason, "already claimed");
        }
        other => panic!("the claim was not refused: {other:?}"),
    }
    let other = results[1]
        .as_ref()
        .expect("the unconditional request is committed");
    assert_eq!(other.index, view + 1, "it follows a's claim");
    assert_eq!(checkpoint.size, view + 2);
    // A condition with nothing after its view passes.
    let passes = Condition {
        after: checkpoint.size,
        ..refuses_claims
    };
    let (results, _) = b
        .append_conditional(
            vec![(
                Ledger::prepare(
                    EntryKind::Other("Claim".into()),
                    custodian_core::entry::Value::Text("y".into()),
                )
                .expect("prepared"),
                Some(passes),
            )],
            7_000,
        )
        .expect("b's second batch");
    assert!(results[0].is_ok(), "{:?}", results[0]);
    no_fork(&url, view + 3);
}
