//! RFC 6962/9162 proof verification with hostile sizes, indexes and paths: errors, never panics.
#![no_main]
use custodian_core::merkle::{Hash, verify_consistency, verify_inclusion};
use libfuzzer_sys::fuzz_target;

fn hashes(bytes: &[u8]) -> Vec<Hash> {
    bytes
        .chunks_exact(32)
        .map(|c| Hash(c.try_into().expect("32 bytes")))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 + 64 {
        return;
    }
    let a = u64::from_le_bytes(data[0..8].try_into().expect("8 bytes"));
    let b = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    let fixed = hashes(&data[16..80]);
    let path = hashes(&data[80..]);
    let _ = verify_inclusion(a, b, &fixed[0], &path, &fixed[1]);
    let _ = verify_consistency(a, b, &path, &fixed[0], &fixed[1]);
    // Small sizes reach the interesting branches far more often than random u64s.
    let _ = verify_inclusion(a % 64, b % 64, &fixed[0], &path, &fixed[1]);
    let _ = verify_consistency(a % 64, b % 64, &path, &fixed[0], &fixed[1]);
});
