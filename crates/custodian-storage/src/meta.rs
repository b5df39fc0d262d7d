//! Blob metadata and its stored byte format.

use custodian_core::{BlobDigests, DIGEST_LEN, Digest};

/// What Custodian knows about a committed blob. Written once, when the digest has been verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobMeta {
    /// Both digests of the blob's bytes.
    pub digests: BlobDigests,
    /// The blob's length in bytes.
    pub size: u64,
    /// When the blob was committed, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The block size the blob was stored with.
    pub block_size: u32,
    /// CRC32C of each block, in order; checked before any block is served.
    pub block_crcs: Vec<u32>,
}

/// Why stored metadata could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("stored blob metadata is malformed: {0}")]
pub struct MetaDecodeError(&'static str);

/// Format version written as the first byte; bump when the layout changes.
const META_VERSION: u8 = 1;
const FIXED_LEN: usize = 1 + 8 + DIGEST_LEN + DIGEST_LEN + 8 + 4 + 4;

impl BlobMeta {
    /// The number of blocks a blob of `size` bytes occupies with `block_size`.
    pub fn block_count_for(size: u64, block_size: u32) -> u64 {
        size.div_ceil(u64::from(block_size))
    }

    /// The canonical (SHA-256) address.
    pub fn sha256(&self) -> Digest {
        self.digests.sha256
    }

    /// The length of block `index`: the block size, except for a shorter last block.
    pub fn block_len(&self, index: u64) -> u64 {
        let start = index * u64::from(self.block_size);
        (self.size - start).min(u64::from(self.block_size))
    }

    /// Encodes the metadata: version, size, sha256, blake3, created, block size, block count,
    /// then one little-endian CRC32C per block. Integers are little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + 4 * self.block_crcs.len());
        out.push(META_VERSION);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(self.digests.sha256.bytes());
        out.extend_from_slice(self.digests.blake3.bytes());
        out.extend_from_slice(&self.created_unix_ms.to_le_bytes());
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&(self.block_crcs.len() as u32).to_le_bytes());
        for crc in &self.block_crcs {
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out
    }

    /// The SHA-256 that encoded metadata describes, read without decoding the rest: enough for
    /// an index to check that an entry is filed under the right digest when it only needs to know
    /// that the blob is there.
    pub fn peek_sha256(bytes: &[u8]) -> Result<Digest, MetaDecodeError> {
        if bytes.len() < FIXED_LEN {
            return Err(MetaDecodeError("shorter than the fixed header"));
        }
        if bytes[0] != META_VERSION {
            return Err(MetaDecodeError("unknown format version"));
        }
        Ok(Digest::sha256(Reader(&bytes[9..]).take()))
    }

    /// Decodes what [`BlobMeta::encode`] wrote, checking every length.
    pub fn decode(bytes: &[u8]) -> Result<Self, MetaDecodeError> {
        if bytes.len() < FIXED_LEN {
            return Err(MetaDecodeError("shorter than the fixed header"));
        }
        if bytes[0] != META_VERSION {
            return Err(MetaDecodeError("unknown format version"));
        }
        let mut r = Reader(&bytes[1..]);
        let size = u64::from_le_bytes(r.take());
        let sha256 = Digest::sha256(r.take());
        let blake3 = Digest::blake3(r.take());
        let created_unix_ms = u64::from_le_bytes(r.take());
        let block_size = u32::from_le_bytes(r.take());
        let count = u32::from_le_bytes(r.take()) as usize;
        if block_size == 0 {
            return Err(MetaDecodeError("block size is zero"));
        }
        if r.0.len() != count * 4 {
            return Err(MetaDecodeError(
                "checksum list length does not match its count",
            ));
        }
        if Self::block_count_for(size, block_size) != count as u64 {
            return Err(MetaDecodeError("block count does not match the size"));
        }
        let block_crcs = (0..count).map(|_| u32::from_le_bytes(r.take())).collect();
        Ok(BlobMeta {
            digests: BlobDigests { sha256, blake3 },
            size,
            created_unix_ms,
            block_size,
            block_crcs,
        })
    }
}

/// A cursor over bytes whose length was checked up front.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BlobMeta {
        BlobMeta {
            digests: BlobDigests::of(b"hello"),
            size: 5,
            created_unix_ms: 1_700_000_000_000,
            block_size: 4,
            block_crcs: vec![1, 2],
        }
    }

    #[test]
    fn round_trip() {
        let meta = sample();
        assert_eq!(BlobMeta::decode(&meta.encode()).unwrap(), meta);
    }

    #[test]
    fn rejects_every_truncation_and_bad_counts() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(
                BlobMeta::decode(&bytes[..len]).is_err(),
                "accepted {len} bytes"
            );
        }
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 9;
        assert!(BlobMeta::decode(&wrong_version).is_err());
        let mut extra = bytes.clone();
        extra.extend_from_slice(&[0; 4]);
        assert!(BlobMeta::decode(&extra).is_err());
    }
}
