//! DSSE envelopes and the in-toto statements inside them (packages and eval runs).
#![no_main]
use custodian_core::attestation::RunStatement;
use custodian_core::dsse::Envelope;
use custodian_core::note::SignerKey;
use custodian_core::package::PackageStatement;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SignerKey::from_seed("fuzz", [9; 32])
        .expect("key")
        .verifier();
    if let Ok(envelope) = Envelope::parse(data) {
        let _ = envelope.payload_bytes();
        let _ = PackageStatement::open(&envelope, &key);
        let _ = RunStatement::open(&envelope, &key);
    }
    let _ = PackageStatement::from_json(data);
    let _ = RunStatement::from_json(data);
});
