//! OpenSSF model-signing bundles: verifying never panics, and whatever verifies lists each file
//! once with a sha256 digest.
#![no_main]
use custodian_core::Algorithm;
use custodian_core::oms::{PublicKey, verify};
use libfuzzer_sys::fuzz_target;

/// A P-256 public key made for this target.
const KEY: &str = include_str!("oms.pub.pem");

fuzz_target!(|data: &[u8]| {
    let Ok(key) = PublicKey::from_pem(KEY) else {
        return;
    };
    if let Ok(signed) = verify(data, &key) {
        assert!(
            signed
                .files
                .values()
                .all(|d| d.algorithm() == Algorithm::Sha256)
        );
    }
});
