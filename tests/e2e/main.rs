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
mod lifecycle;
mod local_put;
mod oci;
mod oms;
mod openapi;
mod pages;
mod postgres;
mod registry;
mod resumable;
mod retention;
mod scale;
mod scan;
mod sealed;
mod tiles;
mod truthful;
mod vsa;
mod walkthrough;
mod witness;
mod witness_interop;

use bytes::Bytes;

/// Runs a command that must succeed; returns its standard output, or fails the test with the
/// command and everything it printed.
pub fn run_ok(command: &mut std::process::Command) -> String {
    let output = command.output().expect("the command starts");
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A Go interoperability peer (tests/interop/go, or litewitness) that scripts/lib.sh
/// `ensure_go_interop` built from the Go module proxy into CUSTODIAN_GO_BIN.
pub fn go_bin(name: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("CUSTODIAN_GO_BIN").unwrap_or_else(|| {
        panic!(
            "CUSTODIAN_GO_BIN is not set: run the tests through scripts/test, which builds the Go peers"
        )
    });
    let path = std::path::Path::new(&dir).join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test",
        path.display()
    );
    path
}

/// Deterministic, incompressible test bytes.
pub fn pattern(seed: u64, len: usize) -> Bytes {
    custodian_storage::conformance::pattern(seed, len)
}
