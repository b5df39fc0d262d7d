//! Generated types and service stubs for Custodian's public gRPC contract (`proto/`).

/// `custodian.cas.v1`: blob custody by digest.
pub mod cas {
    /// Version 1 of the content store API.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("custodian.cas.v1");
    }
}

/// `custodian.ledger.v1`: the provenance ledger.
pub mod ledger {
    /// Version 1 of the ledger API.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("custodian.ledger.v1");
    }
}

/// `custodian.registry.v1`: Behavior Package versions.
pub mod registry {
    /// Version 1 of the registry API.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("custodian.registry.v1");
    }
}

/// `custodian.evidence.v1`: attestations, scans and badges.
pub mod evidence {
    /// Version 1 of the evidence API.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("custodian.evidence.v1");
    }
}

/// The encoded `FileDescriptorSet` of every proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/custodian_descriptor.bin"));
