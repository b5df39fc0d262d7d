//! The ledger conformance suite on the in-memory backend, and proofs on a 1,000,000-entry log.

use std::sync::Arc;

use custodian_storage::ledger::{Ledger, MemoryLedger};
use custodian_storage::ledger_conformance::{self, CountingBackend, LedgerHarness};

struct Memory;

impl LedgerHarness for Memory {
    fn open(&self) -> Arc<dyn custodian_storage::LedgerBackend> {
        Arc::new(MemoryLedger::new())
    }
    fn survives_restart(&self) -> bool {
        false
    }
}

#[test]
fn memory_ledger_conformance() {
    ledger_conformance::run(&Memory);
}

#[test]
fn proofs_on_a_million_entries_come_from_stored_hashes() {
    let counter = Arc::new(CountingBackend::new(Arc::new(MemoryLedger::new())));
    let ledger = Ledger::open(counter.clone(), ledger_conformance::test_signer()).expect("open");
    ledger_conformance::fill(&ledger, 1_000_000, 50_000);
    assert_eq!(ledger.latest().size, 1_000_000);
    ledger_conformance::proofs_read_only_stored_hashes(&ledger, &counter);
}
