//! Ledger entries (deterministic CBOR) from an export or a receipt: decode, and what decodes
//! re-encodes to the same bytes. The same bytes as a client's payload (`Ledger.Append`): what the
//! daemon frames is what parsing, putting in deterministic form and encoding would make of them,
//! read back until it holds still (a reader parses it again), or the same refusal, whether the
//! bytes take the one-pass check or the slow way; and an entry framing it decodes.
#![no_main]
use custodian_core::entry::{
    Entry, EntryError, EntryKind, canonicalize_payload, encode_value, parse_cbor, payload_from_cbor,
};
use custodian_core::merkle::Hash;
use libfuzzer_sys::fuzz_target;

fn slow_way(bytes: &[u8]) -> Result<Vec<u8>, EntryError> {
    let mut encoded = encode_value(&canonicalize_payload(parse_cbor(bytes)?)?);
    for _ in 0..2 {
        let again = encode_value(&canonicalize_payload(parse_cbor(&encoded)?)?);
        if again == encoded {
            return Ok(encoded);
        }
        encoded = again;
    }
    Err(EntryError::Field {
        field: "payload",
        reason: "a tagged item does not read back as it is written; send the payload in \
                 deterministic form (RFC 8949 §4.2.1) without it"
            .into(),
    })
}

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
        slow_way(data),
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
