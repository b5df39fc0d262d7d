//! tlog-witness add-checkpoint bodies and witness policies from the network or a file: parsing
//! never panics, and a body that parses is written back byte for byte (one spelling per
//! request, so what the witness checked is what it was sent).
#![no_main]
use custodian_core::witness::{AddCheckpoint, WitnessPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = AddCheckpoint::parse(data) {
        assert_eq!(request.to_body(), data);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = WitnessPolicy::parse(text);
    }
});
