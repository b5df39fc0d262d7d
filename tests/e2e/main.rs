//! End-to-end tests: a real `custodian serve` process on 127.0.0.1:0, driven over gRPC and
//! through the CLI. One test binary with modules, so helpers are shared and the build is one link.

mod abuse;
mod cas;
mod cli;
mod cli_edges;
mod corruption;
mod crash;
mod evidence;
mod faults;
mod interop;
mod ledger;
mod openapi;
mod registry;
mod scan;
mod tiles;
mod truthful;
mod walkthrough;
mod witness;
mod witness_interop;

use bytes::Bytes;

/// Deterministic, incompressible test bytes.
pub fn pattern(seed: u64, len: usize) -> Bytes {
    custodian_storage::conformance::pattern(seed, len)
}
