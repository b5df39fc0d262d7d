//! Ledger entries (deterministic CBOR) from an export or a receipt: decode, and what decodes
//! re-encodes to the same bytes. The same bytes as a client's payload (`Ledger.Append`): what the
//! daemon frames is what parsing, putting in deterministic form and encoding would make of them,
//! or the same refusal, whether the bytes take the one-pass check or the slow way.
#![no_main]
use custodian_core::entry::{canonicalize_payload, encode_value, parse_cbor, payload_from_cbor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = custodian_core::entry::Entry::decode(data) {
        assert_eq!(entry.encode(), data, "a decoded entry re-encodes differently");
    }
    let parsed = parse_cbor(data);
    let _ = custodian_core::entry::peek_kind(data);
    let slow = parsed
        .and_then(canonicalize_payload)
        .map(|value| encode_value(&value));
    assert_eq!(
        payload_from_cbor(data.to_vec()),
        slow,
        "a payload framed differently from its deterministic form"
    );
});
