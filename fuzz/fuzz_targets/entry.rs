//! Ledger entries (deterministic CBOR) from an export or a receipt: decode, and what decodes
//! re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = custodian_core::entry::Entry::decode(data) {
        assert_eq!(entry.encode(), data, "a decoded entry re-encodes differently");
    }
    let _ = custodian_core::entry::parse_cbor(data);
    let _ = custodian_core::entry::peek_kind(data);
});
