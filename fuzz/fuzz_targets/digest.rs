//! Digest parsing: `sha256:<hex>` / `blake3:<hex>` from clients, manifests and files.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(digest) = text.parse::<custodian_core::Digest>()
    {
        // What parses must print back to the same canonical text.
        let again: custodian_core::Digest = digest.to_string().parse().expect("round trip");
        assert_eq!(again, digest);
    }
});
