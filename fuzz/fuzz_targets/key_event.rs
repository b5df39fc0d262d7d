//! Key events from ledger bytes and rotation envelopes: decoding and checking never panics, and
//! a rotation that opens is signed by both the keys it names.
#![no_main]
use custodian_core::dsse::Envelope;
use custodian_core::entry::Entry;
use custodian_core::keys::{ROTATION_PAYLOAD_TYPE, Rotation, check_event};
use custodian_core::note::VerifierKey;
use custodian_core::registry::KeyEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = Entry::decode(data)
        && let Ok(event) = entry.event::<KeyEvent>()
    {
        let _ = check_event(&event, entry.time_ms);
    }
    if let Ok(envelope) = Envelope::parse(data)
        && let Ok(rotation) = Rotation::open(&envelope)
    {
        for key in [&rotation.previous, &rotation.key] {
            let key = VerifierKey::parse(key).expect("a rotation that opened names valid keys");
            envelope
                .verify(ROTATION_PAYLOAD_TYPE, &key)
                .expect("and is signed by both");
        }
    }
});
