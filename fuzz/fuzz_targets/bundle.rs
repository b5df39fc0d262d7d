//! Badge bundles an auditor is handed: verify never panics, whatever the bytes.
#![no_main]
use custodian_core::note::SignerKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SignerKey::from_seed("fuzz.test/log", [5; 32])
        .expect("key")
        .verifier();
    let _ = custodian_core::bundle::verify(data, &key);
});
