//! OCI manifests and references from the network: parsing never panics; whatever parses has
//! sha256 digests only and non-negative sizes, and a reference that parses is a tag or a digest
//! that prints back as it was written.
#![no_main]
use custodian_core::oci::{Manifest, OCI_MANIFEST, Reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::parse(data, OCI_MANIFEST) {
        for (digest, _) in manifest
            .blobs
            .iter()
            .chain(&manifest.manifests)
            .chain(&manifest.foreign)
        {
            assert!(digest.to_string().starts_with("sha256:"));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        match Reference::parse(text) {
            Ok(Reference::Digest(digest)) => assert_eq!(digest.to_string(), text),
            Ok(Reference::Tag(tag)) => assert_eq!(tag.as_str(), text),
            Err(_) => {}
        }
        let _ = custodian_core::oci::Name::parse(text);
    }
});
