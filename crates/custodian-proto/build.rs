//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so no system `protoc` is
//! needed, and saves the descriptor set for gRPC server reflection.

use std::path::PathBuf;

use prost::Message as _;

/// Every proto file of the public contract, relative to `proto/`.
const FILES: &[&str] = &[
    "custodian/cas/v1/cas.proto",
    "custodian/ledger/v1/ledger.proto",
    "custodian/registry/v1/registry.proto",
    "custodian/evidence/v1/evidence.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(FILES, [&root])?;
    std::fs::write(out.join("custodian_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Blob data stays in reference-counted buffers, never copied into Vec<u8>.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
