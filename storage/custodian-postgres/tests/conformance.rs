//! The ledger conformance suite on a PostgreSQL server of the test's own (Debian's binaries,
//! started by custodian-testkit), and what only a shared database adds: two writers cannot
//! fork the log, a newer schema is refused, an unreachable server is named, and a server
//! restart costs only the calls in flight.

use std::sync::Arc;

use custodian_core::entry::EntryKind;
use custodian_postgres::PgLedger;
use custodian_storage::ledger::{Ledger, LedgerBackend, LedgerError};
use custodian_storage::ledger_conformance::{self, LedgerHarness, payload, test_signer};
use custodian_testkit::Postgres;

struct Harness(String);

impl LedgerHarness for Harness {
    fn open(&self) -> Arc<dyn LedgerBackend> {
        Arc::new(PgLedger::open(&self.0).expect("open the PostgreSQL ledger"))
    }
}

fn append(ledger: &Ledger, n: u64) -> Result<u64, LedgerError> {
    let size = ledger.latest().size;
    let requests = (size..size + n)
        .map(|i| (EntryKind::RunAttested, payload(i)))
        .collect();
    ledger.append(requests, 1_000 + size).map(|(_, c)| c.size)
}

#[test]
fn the_ledger_conformance_suite_passes_on_postgresql() {
    let pg = Postgres::start();
    ledger_conformance::run(&Harness(pg.database("conformance")));

    // Two writers on one database: the second, whose view of the tree is stale, is refused
    // and the stored log keeps the first's tree; reopened, it continues that tree.
    let url = pg.database("two_writers");
    let a = Ledger::open(Harness(url.clone()).open(), test_signer()).expect("open a");
    let b = Ledger::open(Harness(url.clone()).open(), test_signer()).expect("open b");
    assert_eq!(append(&a, 3).expect("a appends"), 3);
    let err = append(&b, 2).expect_err("b's tree is stale");
    assert!(
        err.to_string()
            .contains("does not start at the end of the log"),
        "{err}"
    );
    let stored = Harness(url.clone()).open();
    assert_eq!(
        stored.latest_checkpoint().expect("latest").map(|c| c.0),
        Some(3)
    );
    drop(b);
    let b = Ledger::open(Harness(url).open(), test_signer()).expect("reopen b");
    assert_eq!(append(&b, 2).expect("b continues a's tree"), 5);

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
        text.contains("schema version 99") && text.contains("this custodian's 1"),
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
