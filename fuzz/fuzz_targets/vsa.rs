//! A VSA from a bundle file: checking it against a summary never panics, and whatever passes is
//! signed by the key and says exactly what the summary says.
#![no_main]
use custodian_core::note::SignerKey;
use custodian_core::vsa::{Input, Summary};
use custodian_core::{Algorithm, Digest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(key) = SignerKey::from_seed("fuzz/log", [3; 32]) else {
        return;
    };
    let summary = Summary {
        name: "pkg".into(),
        version: "1.0.0".into(),
        manifest: Digest::of(Algorithm::Sha256, b"m"),
        origin: "fuzz/log".into(),
        policy: "custodian.badge-policy.v3".into(),
        state: "green".into(),
        evaluated_ms: 0,
        inputs: vec![Input {
            index: 1,
            sha256: Digest::of(Algorithm::Sha256, b"e"),
        }],
    };
    if let Ok(text) = std::str::from_utf8(data)
        && summary.check(text, &key.verifier()).is_ok()
    {
        let opened = custodian_core::dsse::Envelope::parse(data).expect("it opened once");
        let payload = opened
            .verify(custodian_core::vsa::PAYLOAD_TYPE, &key.verifier())
            .expect("signed");
        let statement: serde_json::Value = serde_json::from_slice(&payload).expect("json");
        assert_eq!(statement, summary.statement());
    }
});
