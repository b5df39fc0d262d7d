//! Custodian's embedded default storage: blobs in RocksDB ([`RocksBackend`]) and the RocksDB
//! metadata index ([`RocksIndex`]) that the object-store backend shares.

mod blobs;
mod index;

pub use blobs::{RocksBackend, RocksConfig};
pub use index::{IndexEntry, RocksIndex};
pub use rocksdb::{ColumnFamilyDescriptor, WriteBatch};
