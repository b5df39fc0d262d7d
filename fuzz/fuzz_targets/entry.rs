//! Ledger entries (deterministic CBOR) from an export or a receipt: decode, and what decodes
//! re-encodes to the same bytes. The same bytes as a client's payload (`Ledger.Append`): what the
//! daemon frames is what the slow way (`payload_reencoded`: parse, put in deterministic form,
//! encode, until it holds still) makes of them, or the same refusal, whether the bytes take the
//! one-pass check or not; and an entry framing what was accepted decodes.
#![no_main]
use custodian_core::entry::{Entry, EntryKind, payload_from_cbor, payload_reencoded};
use custodian_core::merkle::Hash;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = Entry::decode(data) {
        assert_eq!(
            entry.encode(),
            data,
            "a decoded entry re-encodes differently"
        );
    }
    let _ = custodian_core::entry::peek_kind(data);
    let framed = payload_from_cbor(data.to_vec());
    assert_eq!(
        framed,
        payload_reencoded(data),
        "a payload framed differently from its deterministic form"
    );
    if let Ok(framed) = framed {
        let entry = Entry::encode_with_payload(&EntryKind::KeyEvent, &Hash([0; 32]), 1, &framed);
        assert!(
            Entry::decode(&entry).is_ok(),
            "an entry framing an accepted payload does not read back"
        );
    }
});
