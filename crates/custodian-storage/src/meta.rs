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
    /// Where the blob lies when the backend stored it inside a pack with others; `None` when
    /// it is stored on its own.
    pub packed: Option<PackedAt>,
}

/// The place of a blob inside a pack: one stored object holding a batch of small blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedAt {
    /// The pack's id (unique within the store; the backend names the pack's object after it).
    pub pack: u64,
    /// The offset of the blob's first byte within the pack.
    pub offset: u64,
}

/// Why stored metadata could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("stored blob metadata is malformed: {0}")]
pub struct MetaDecodeError(&'static str);

/// Format version written as the first byte for a blob stored on its own.
const META_VERSION: u8 = 1;
/// Format version of a packed blob: version 1's layout with the pack id and the offset (two
/// little-endian `u64`s) between the block size and the block count.
const META_VERSION_PACKED: u8 = 2;
const FIXED_LEN: usize = 1 + 8 + DIGEST_LEN + DIGEST_LEN + 8 + 4 + 4;
const PACKED_LEN: usize = 8 + 8;

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

    /// Encodes the metadata: version, size, sha256, blake3, created, block size, for a packed
    /// blob the pack id and offset, block count, then one little-endian CRC32C per block.
    /// Integers are little-endian. A blob stored on its own encodes as version 1, so entries
    /// written before packs existed read back unchanged.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + PACKED_LEN + 4 * self.block_crcs.len());
        out.push(match self.packed {
            None => META_VERSION,
            Some(_) => META_VERSION_PACKED,
        });
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(self.digests.sha256.bytes());
        out.extend_from_slice(self.digests.blake3.bytes());
        out.extend_from_slice(&self.created_unix_ms.to_le_bytes());
        out.extend_from_slice(&self.block_size.to_le_bytes());
        if let Some(at) = &self.packed {
            out.extend_from_slice(&at.pack.to_le_bytes());
            out.extend_from_slice(&at.offset.to_le_bytes());
        }
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
        Self::fixed_len(bytes)?;
        Ok(Digest::sha256(Reader(&bytes[9..]).take()))
    }

    /// Decodes what [`BlobMeta::encode`] wrote, checking every length.
    pub fn decode(bytes: &[u8]) -> Result<Self, MetaDecodeError> {
        Self::fixed_len(bytes)?;
        let mut r = Reader(&bytes[1..]);
        let size = u64::from_le_bytes(r.take());
        let sha256 = Digest::sha256(r.take());
        let blake3 = Digest::blake3(r.take());
        let created_unix_ms = u64::from_le_bytes(r.take());
        let block_size = u32::from_le_bytes(r.take());
        let packed = (bytes[0] == META_VERSION_PACKED).then(|| PackedAt {
            pack: u64::from_le_bytes(r.take()),
            offset: u64::from_le_bytes(r.take()),
        });
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
            packed,
        })
    }

    /// Checks the version byte and that the bytes hold at least that version's fixed header.
    fn fixed_len(bytes: &[u8]) -> Result<usize, MetaDecodeError> {
        let fixed = match bytes.first() {
            None => return Err(MetaDecodeError("shorter than the fixed header")),
            Some(&META_VERSION) => FIXED_LEN,
            Some(&META_VERSION_PACKED) => FIXED_LEN + PACKED_LEN,
            Some(_) => return Err(MetaDecodeError("unknown format version")),
        };
        if bytes.len() < fixed {
            return Err(MetaDecodeError("shorter than the fixed header"));
        }
        Ok(fixed)
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
            packed: None,
        }
    }

    fn packed_sample() -> BlobMeta {
        BlobMeta {
            packed: Some(PackedAt {
                pack: 0x0102_0304_0506_0708,
                offset: 12_288,
            }),
            ..sample()
        }
    }

    #[test]
    fn round_trip() {
        for meta in [sample(), packed_sample()] {
            assert_eq!(BlobMeta::decode(&meta.encode()).unwrap(), meta);
            assert_eq!(
                BlobMeta::peek_sha256(&meta.encode()).unwrap(),
                meta.sha256()
            );
        }
    }

    /// A blob stored on its own keeps the layout written before packs existed, byte for byte,
    /// so stores written by earlier versions read back unchanged.
    #[test]
    fn unpacked_layout_is_version_one() {
        let bytes = sample().encode();
        assert_eq!(bytes[0], 1);
        assert_eq!(bytes.len(), FIXED_LEN + 8);
        let packed = packed_sample().encode();
        assert_eq!(packed[0], 2);
        assert_eq!(packed.len(), bytes.len() + PACKED_LEN);
        // The pack id and offset sit between the block size and the block count; remove them
        // and restore the version byte, and the unpacked encoding is what is left.
        let at = FIXED_LEN - 4;
        assert_eq!(packed[at..at + 8], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(packed[at + 8..at + 16], 12_288u64.to_le_bytes());
        let mut without = packed[..at].to_vec();
        without.extend_from_slice(&packed[at + PACKED_LEN..]);
        without[0] = 1;
        assert_eq!(without, bytes);
    }

    #[test]
    fn rejects_every_truncation_and_bad_counts() {
        for bytes in [sample().encode(), packed_sample().encode()] {
            for len in 0..bytes.len() {
                assert!(
                    BlobMeta::decode(&bytes[..len]).is_err(),
                    "accepted {len} bytes"
                );
            }
            let mut wrong_version = bytes.clone();
            wrong_version[0] = 9;
            assert!(BlobMeta::decode(&wrong_version).is_err());
            assert!(BlobMeta::peek_sha256(&wrong_version).is_err());
            let mut extra = bytes.clone();
            extra.extend_from_slice(&[0; 4]);
            assert!(BlobMeta::decode(&extra).is_err());
        }
    }
}
