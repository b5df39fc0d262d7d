//! Storage traits for Custodian's blob custody. This crate has no dependency on RocksDB or on any
//! object store: backends live in `storage/` and implement [`BlobBackend`].
//!
//! The split of work is deliberate. Everything that decides whether bytes are trustworthy —
//! hashing while the bytes stream in, comparing against what the client claimed, per-block
//! checksums on the way out, range arithmetic — lives once, here, in [`BlobStore`] and
//! [`BlobWriter`]. A backend only stores blocks, commits a verified blob atomically, and reads
//! blocks back. So every backend makes the same promises, and [`conformance`] checks them.

pub mod conformance;
mod error;
mod file_read;
mod hashing;
pub mod index;
pub mod ledger;
pub mod ledger_conformance;
mod memory;
mod meta;
pub mod packs;
pub mod retention;
mod shared;
pub mod staging;
mod store;
pub mod uploads;

pub use error::{Result, StorageError};
pub use file_read::{ReadAhead, read_file_blocks};
pub use hashing::{OffThreadHasher, Worker};
pub use index::{BlobIndex, Leftover, PendingUpload};
pub use ledger::{
    Appended, Condition, Ledger, LedgerBackend, LedgerBatch, LedgerError, LedgerResult,
    MemoryLedger, Prepared, SignedCheckpoint,
};
pub use memory::MemoryBackend;
pub use meta::{BlobMeta, MetaDecodeError, PackedAt};
pub use shared::SharedState;
pub use staging::{WriteBehind, drop_cached};
pub use store::{
    BlobBackend, BlobRead, BlobStore, BlobWriter, BlockSink, BlockStream, ByteRange, Expectation,
    NativeHolds, PutOutcome, Staged, StagedSmall,
};

/// The block size backends use unless configured otherwise: 1 MiB.
///
/// A block is the unit of storage (one RocksDB value) and of read verification (one CRC32C).
/// 1 MiB keeps RocksDB values moderate and a 1 GiB blob's checksum list at 4 KiB.
pub const DEFAULT_BLOCK_SIZE: usize = 1 << 20;
