//! Custodian's embedded default storage: blobs in RocksDB ([`RocksBackend`]) and the RocksDB
//! metadata index ([`RocksIndex`]) that the object-store backend shares, and the provenance ledger
//! ([`RocksLedger`]).

mod blobs;
mod index;
pub mod ledger;
#[allow(unsafe_code)]
mod sorted_read;

pub use blobs::{RocksBackend, RocksConfig};
pub use index::{IndexEntry, RocksIndex};
pub use ledger::RocksLedger;
pub use rocksdb::{ColumnFamilyDescriptor, WriteBatch};
pub use sorted_read::{batch_memtable_lookups, read_sorted};
