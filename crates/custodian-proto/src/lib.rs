//! Generated types and service stubs for Custodian's public gRPC contract (`proto/`), and how
//! both ends put its calls on the wire ([`coalesce`]).

pub mod coalesce;

/// `custodian.cas.v1`: blob custody by digest.
pub mod cas {
    /// Version 1 of the content store API.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("custodian.cas.v1");
    }
}

/// The framing of the local put socket (`LocalPutRequest`, `LocalPutReply`; docs/api.md, "Local
/// puts"), in one place for the daemon, the CLI and the tests.
pub mod local_put {
    /// The largest request frame a daemon accepts; a request holds a digest, a token and, for
    /// a data pack, its metadata (at most 64 KiB, as the REST upload's).
    pub const MAX_REQUEST_FRAME: usize = 128 << 10;

    /// One frame: the message's length as 4 bytes, big-endian, then the message.
    pub fn frame(message: &impl prost::Message) -> Vec<u8> {
        let len = message.encoded_len();
        let mut frame = Vec::with_capacity(4 + len);
        frame.extend_from_slice(&(len as u32).to_be_bytes());
        message.encode(&mut frame).expect("a Vec grows");
        frame
    }
}

/// gRPC's message framing, for the calls whose bytes the daemon and the CLI frame themselves
/// (`ContentStore.Get`, `Put`, `WriteUpload`, `BatchPut` and `FindMissing`; docs/ARCHITECTURE.md).
pub mod grpc_wire {
    use prost::bytes::{Bytes, BytesMut};

    /// The length of a gRPC message's prefix: a compression flag and a big-endian length.
    pub const PREFIX: usize = 5;

    /// `message` as one gRPC message on the wire: uncompressed, its length, its protobuf
    /// encoding (what tonic's encoder sends; tests compare other framings with it).
    pub fn frame(message: &impl prost::Message) -> Result<Bytes, tonic::Status> {
        let len = message.encoded_len();
        let prefix_len = u32::try_from(len).map_err(|_| {
            tonic::Status::internal(format!("a message of {len} bytes is too long for gRPC"))
        })?;
        let mut framed = BytesMut::with_capacity(PREFIX + len);
        framed.extend_from_slice(&[0]);
        framed.extend_from_slice(&prefix_len.to_be_bytes());
        message.encode_raw(&mut framed);
        Ok(framed.freeze())
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
