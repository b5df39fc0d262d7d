//! Custodian's pure core: the digests and formats an auditor needs to check Custodian's work.
//!
//! This crate does no I/O and pulls in no async runtime, RPC framework or database, so an
//! offline verifier can be built from it alone.

pub mod attestation;
pub mod audit;
pub mod badge;
pub mod bundle;
pub mod checkpoint;
pub mod datapack;
pub mod digest;
pub mod dsse;
pub mod entry;
pub mod jcs;
pub mod keys;
pub mod manifest;
pub mod merkle;
pub mod note;
pub mod oci;
pub mod oms;
pub mod package;
pub mod prereg;
pub mod promptpack;
pub mod receipt;
pub mod registry;
pub mod resumable;
pub mod seal;
pub mod tiles;
pub mod vsa;
pub mod witness;

pub use digest::{
    Algorithm, BlobDigests, BlobHasher, DIGEST_LEN, Digest, DigestError, StreamHasher,
};
