//! Both blob digests, computed across any number of upload pieces whose hash state is saved
//! between them: an upload that resumes after a crash continues the hash where the last
//! acknowledged piece left it, and no byte is hashed twice.
//!
//! Neither hashing crate lets its state be saved, so the state is kept here in forms each
//! algorithm defines publicly:
//!
//! - SHA-256 (FIPS 180-4 §6.2) is the eight-word intermediate hash value after every complete
//!   64-byte block, advanced with `sha2::block_api::compress256` (which uses the SHA extensions where the
//!   CPU has them). The bytes of an incomplete last block are not hashed yet.
//! - BLAKE3 (the BLAKE3 paper, §2.1 and §5.1.2) is a stack of chaining values of complete
//!   subtrees of [`SUBTREE`] bytes, merged exactly as the reference implementation's CV stack
//!   merges chunks, through the `blake3::hazmat` API. The last, possibly partial, subtree is not
//!   hashed until the input ends, because a root is finalized differently from an inner node.
//!
//! So a saved [`HashState`] plus the last [`HashState::tail_len`] bytes of the input (at most
//! one subtree, still unhashed) restore the hasher exactly.

use blake3::hazmat::{ChainingValue, HasherExt as _, Mode};
// sha2 0.11 takes blocks as plain arrays, so the input is hashed where it lies (viewed as
// blocks with `as_chunks`) instead of being copied into sha2 0.10's block type first.
use sha2_blocks::block_api::compress256;

use crate::{BlobDigests, Digest};

/// The size of the BLAKE3 subtrees whose chaining values are kept: 64 chunks of 1 KiB. A fixed
/// power-of-two subtree size always satisfies BLAKE3's alignment rule (the paper, §2.1).
pub const SUBTREE: u64 = 64 * 1024;

/// SHA-256's initial hash value (FIPS 180-4 §5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Why a saved hash state could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum HashStateError {
    /// The encoded state has the wrong length or layout.
    #[error("saved hash state is malformed: {0}")]
    Malformed(String),
    /// The bytes handed back are not the unhashed tail the state needs.
    #[error("saved hash state needs the last {needed} bytes of the input, got {given}")]
    WrongTail {
        /// How many bytes the state needs.
        needed: u64,
        /// How many were given.
        given: u64,
    },
    /// The two halves of a split hasher were fed different lengths.
    #[error("the SHA-256 half saw {sha256} bytes and the BLAKE3 half {blake3}")]
    Diverged {
        /// Bytes fed to SHA-256.
        sha256: u64,
        /// Bytes fed to BLAKE3.
        blake3: u64,
    },
}

/// What is saved between pieces: enough, with the input's unhashed tail, to continue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashState {
    /// How many bytes the input has so far.
    pub total: u64,
    /// SHA-256's intermediate hash value after `total - total % 64` bytes.
    pub sha256: [u32; 8],
    /// BLAKE3 chaining values of the complete subtrees pushed so far, largest first.
    pub blake3_stack: Vec<ChainingValue>,
}

impl HashState {
    /// How many subtrees a hasher that has seen `total` bytes has pushed: all but the last
    /// (possibly partial) one, which stays unhashed until the input ends.
    fn pushed(total: u64) -> u64 {
        if total == 0 { 0 } else { (total - 1) / SUBTREE }
    }

    /// How many of the input's last bytes are still unhashed by BLAKE3 (SHA-256's unhashed
    /// bytes are always among them): what [`ResumableDigests::resume`] needs back.
    pub fn tail_len(total: u64) -> u64 {
        total - Self::pushed(total) * SUBTREE
    }

    /// The state as bytes: `total` (8, little-endian), the SHA-256 words (32, big-endian), then
    /// each chaining value (32 each).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + 32 * self.blake3_stack.len());
        out.extend_from_slice(&self.total.to_le_bytes());
        for word in self.sha256 {
            out.extend_from_slice(&word.to_be_bytes());
        }
        for cv in &self.blake3_stack {
            out.extend_from_slice(cv);
        }
        out
    }

    /// Reads what [`HashState::to_bytes`] wrote, checking that the stack has the one entry per
    /// set bit of the pushed-subtree count that the merging rule leaves.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HashStateError> {
        if bytes.len() < 40 || !(bytes.len() - 40).is_multiple_of(32) {
            return Err(HashStateError::Malformed(format!(
                "{} bytes is not 40 plus a multiple of 32",
                bytes.len()
            )));
        }
        let total = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let mut sha256 = [0u32; 8];
        for (i, word) in sha256.iter_mut().enumerate() {
            *word = u32::from_be_bytes(bytes[8 + 4 * i..12 + 4 * i].try_into().expect("4 bytes"));
        }
        let blake3_stack: Vec<ChainingValue> = bytes[40..]
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        let expected = Self::pushed(total).count_ones() as usize;
        if blake3_stack.len() != expected {
            return Err(HashStateError::Malformed(format!(
                "{} BLAKE3 chaining values for {total} bytes, expected {expected}",
                blake3_stack.len()
            )));
        }
        Ok(HashState {
            total,
            sha256,
            blake3_stack,
        })
    }
}

/// SHA-256 and BLAKE3 of a stream, with a state that can be saved and restored.
///
/// The two halves can also be fed on two threads: [`ResumableDigests::split`] hands out each
/// algorithm's state, and [`ResumableDigests::join`] takes them back once both have seen the
/// same bytes.
#[derive(Clone, Default)]
pub struct ResumableDigests {
    sha256: Sha256Part,
    blake3: Blake3Part,
}

/// SHA-256's half of a [`ResumableDigests`].
#[derive(Clone)]
pub struct Sha256Part {
    fed: u64,
    state: [u32; 8],
    /// The bytes of the incomplete block (fewer than 64).
    pending: Vec<u8>,
}

impl Default for Sha256Part {
    fn default() -> Self {
        Sha256Part {
            fed: 0,
            state: SHA256_IV,
            pending: Vec::with_capacity(64),
        }
    }
}

/// BLAKE3's half of a [`ResumableDigests`].
#[derive(Clone, Default)]
pub struct Blake3Part {
    fed: u64,
    stack: Vec<ChainingValue>,
    pushed: u64,
    /// The unhashed bytes: at most one subtree once `update` returns.
    tail: Vec<u8>,
}

impl std::fmt::Debug for ResumableDigests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumableDigests")
            .field("total", &self.len())
            .finish_non_exhaustive()
    }
}

impl ResumableDigests {
    /// A hasher that has seen no bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Continues from `state`; `tail` must be the input's last [`HashState::tail_len`] bytes.
    pub fn resume(state: &HashState, tail: &[u8]) -> Result<Self, HashStateError> {
        let needed = HashState::tail_len(state.total);
        if tail.len() as u64 != needed {
            return Err(HashStateError::WrongTail {
                needed,
                given: tail.len() as u64,
            });
        }
        let pushed = HashState::pushed(state.total);
        if state.blake3_stack.len() != pushed.count_ones() as usize {
            return Err(HashStateError::Malformed(
                "the BLAKE3 stack does not match the length".into(),
            ));
        }
        let sha_len = (state.total % 64) as usize;
        Ok(ResumableDigests {
            sha256: Sha256Part {
                fed: state.total,
                state: state.sha256,
                pending: tail[tail.len() - sha_len..].to_vec(),
            },
            blake3: Blake3Part {
                fed: state.total,
                stack: state.blake3_stack.clone(),
                pushed,
                tail: tail.to_vec(),
            },
        })
    }

    /// The state to save; restore it with the input's last [`HashState::tail_len`] bytes.
    pub fn state(&self) -> HashState {
        HashState {
            total: self.len(),
            sha256: self.sha256.state,
            blake3_stack: self.blake3.stack.clone(),
        }
    }

    /// How many bytes have been fed.
    pub fn len(&self) -> u64 {
        self.sha256.fed
    }

    /// Whether no bytes have been fed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        self.blake3.update(data);
    }

    /// Each algorithm's half, to be fed the same bytes on two threads.
    pub fn split(self) -> (Sha256Part, Blake3Part) {
        (self.sha256, self.blake3)
    }

    /// Puts the halves back together; refused if they were fed different lengths.
    pub fn join(sha256: Sha256Part, blake3: Blake3Part) -> Result<Self, HashStateError> {
        if sha256.fed != blake3.fed {
            return Err(HashStateError::Diverged {
                sha256: sha256.fed,
                blake3: blake3.fed,
            });
        }
        Ok(ResumableDigests { sha256, blake3 })
    }

    /// Both digests of everything fed.
    pub fn finalize(&self) -> BlobDigests {
        BlobDigests {
            sha256: Digest::sha256(self.sha256.finalize()),
            blake3: Digest::blake3(self.blake3.finalize()),
        }
    }
}

impl Sha256Part {
    /// Feeds the next bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.fed += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (64 - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            let Ok(block) = <[u8; 64]>::try_from(self.pending.as_slice()) else {
                return;
            };
            compress256(&mut self.state, &[block]);
            self.pending.clear();
        }
        // The input's own bytes, viewed as blocks: nothing is copied.
        let (blocks, rest) = data.as_chunks::<64>();
        if !blocks.is_empty() {
            compress256(&mut self.state, blocks);
        }
        self.pending.extend_from_slice(rest);
    }

    fn finalize(&self) -> [u8; 32] {
        // FIPS 180-4 §5.1.1: a one bit, zeros, and the length in bits as 64 big-endian bits.
        let mut state = self.state;
        let mut last = self.pending.clone();
        last.push(0x80);
        while last.len() % 64 != 56 {
            last.push(0);
        }
        last.extend_from_slice(&(self.fed.wrapping_mul(8)).to_be_bytes());
        compress256(&mut state, last.as_chunks::<64>().0);
        let mut out = [0u8; 32];
        for (i, word) in state.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

impl Blake3Part {
    /// Feeds the next bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.fed += data.len() as u64;
        let subtree = SUBTREE as usize;
        // A subtree is pushed only once a byte after it has arrived, so the last subtree is
        // always held back for the root.
        if !self.tail.is_empty() {
            let take = (subtree - self.tail.len().min(subtree)).min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if data.is_empty() {
                return;
            }
            let full = std::mem::take(&mut self.tail);
            self.push_subtree(&full);
        }
        while data.len() > subtree {
            let (head, rest) = data.split_at(subtree);
            self.push_subtree(head);
            data = rest;
        }
        self.tail.extend_from_slice(data);
    }

    fn push_subtree(&mut self, bytes: &[u8]) {
        let mut cv = blake3::Hasher::new()
            .set_input_offset(self.pushed * SUBTREE)
            .update(bytes)
            .finalize_non_root();
        self.pushed += 1;
        // Merge every subtree this one completes: as many as the new count's trailing zeros.
        let mut count = self.pushed;
        while count & 1 == 0 {
            let left = self
                .stack
                .pop()
                .expect("a left sibling for each trailing zero");
            cv = blake3::hazmat::merge_subtrees_non_root(&left, &cv, Mode::Hash);
            count >>= 1;
        }
        self.stack.push(cv);
    }

    fn finalize(&self) -> [u8; 32] {
        if self.stack.is_empty() {
            return *blake3::hash(&self.tail).as_bytes();
        }
        let mut cv = blake3::Hasher::new()
            .set_input_offset(self.pushed * SUBTREE)
            .update(&self.tail)
            .finalize_non_root();
        for left in self.stack[1..].iter().rev() {
            cv = blake3::hazmat::merge_subtrees_non_root(left, &cv, Mode::Hash);
        }
        *blake3::hazmat::merge_subtrees_root(&self.stack[0], &cv, Mode::Hash).as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Saves and restores at `split`, as an upload resumed after a restart does.
    fn across(data: &[u8], split: usize) -> BlobDigests {
        let mut first = ResumableDigests::new();
        first.update(&data[..split]);
        let state = HashState::from_bytes(&first.state().to_bytes()).expect("round trip");
        let tail = HashState::tail_len(state.total) as usize;
        let mut resumed = ResumableDigests::resume(&state, &data[split - tail..split])
            .expect("resume with the tail");
        resumed.update(&data[split..]);
        resumed.finalize()
    }

    #[test]
    fn matches_one_shot_hashes_at_every_subtree_edge() {
        let s = SUBTREE as usize;
        for len in [
            0,
            1,
            63,
            64,
            65,
            1023,
            1024,
            1025,
            s - 1,
            s,
            s + 1,
            2 * s,
            2 * s + 1,
            3 * s,
            3 * s + 7,
            4 * s,
            7 * s + 1000,
            8 * s,
            8 * s + 1,
        ] {
            let bytes = data(len);
            let mut h = ResumableDigests::new();
            h.update(&bytes);
            assert_eq!(h.finalize(), BlobDigests::of(&bytes), "length {len}");
            for split in [0, len / 3, len / 2, len.saturating_sub(1), len] {
                assert_eq!(
                    across(&bytes, split),
                    BlobDigests::of(&bytes),
                    "length {len} resumed at {split}"
                );
            }
        }
    }

    /// FIPS 180-4 and the BLAKE3 reference vectors (test_vectors.json, input length 0) for the
    /// empty input, and "abc" from FIPS 180-4 appendix B.1.
    #[test]
    fn known_answers() {
        let empty = ResumableDigests::new().finalize();
        assert_eq!(
            empty.sha256.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            empty.blake3.to_string(),
            "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        let mut abc = ResumableDigests::new();
        abc.update(b"abc");
        assert_eq!(
            abc.finalize().sha256.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn restoring_with_the_wrong_tail_or_a_damaged_state_is_refused() {
        let bytes = data(3 * SUBTREE as usize + 5);
        let mut h = ResumableDigests::new();
        h.update(&bytes);
        let state = h.state();
        assert!(matches!(
            ResumableDigests::resume(&state, &bytes[..4]),
            Err(HashStateError::WrongTail {
                needed: 5,
                given: 4
            })
        ));
        let mut encoded = state.to_bytes();
        encoded.truncate(encoded.len() - 32);
        assert!(HashState::from_bytes(&encoded).is_err());
        assert!(HashState::from_bytes(&[0u8; 39]).is_err());
    }

    #[test]
    fn halves_fed_different_lengths_do_not_join() {
        let (mut sha, mut b3) = ResumableDigests::new().split();
        sha.update(b"abc");
        b3.update(b"ab");
        assert!(matches!(
            ResumableDigests::join(sha, b3),
            Err(HashStateError::Diverged {
                sha256: 3,
                blake3: 2
            })
        ));
    }

    proptest! {
        /// The halves fed apart, each in its own pieces, join into the one-shot digests and
        /// into the state the whole hasher would have saved.
        #[test]
        fn split_halves_fed_apart_join_into_the_same_digests(
            len in 0usize..(5 * SUBTREE as usize),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
            split_at in any::<prop::sample::Index>(),
        ) {
            let bytes = data(len);
            let first = split_at.index(len + 1);
            let mut whole = ResumableDigests::new();
            whole.update(&bytes[..first]);
            let (mut sha, mut b3) = whole.clone().split();
            let mut points: Vec<usize> =
                cuts.iter().map(|c| first + c.index(len - first + 1)).collect();
            points.sort_unstable();
            points.push(len);
            let mut at = first;
            for &point in &points {
                sha.update(&bytes[at..point]);
                at = point;
            }
            // BLAKE3's half in one piece: the two halves need not see the same pieces.
            b3.update(&bytes[first..]);
            whole.update(&bytes[first..]);
            let joined = ResumableDigests::join(sha, b3).expect("same length");
            prop_assert_eq!(joined.state(), whole.state());
            prop_assert_eq!(joined.finalize(), BlobDigests::of(&bytes));
        }

        #[test]
        fn any_pieces_any_resume_point(
            len in 0usize..(5 * SUBTREE as usize),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let bytes = data(len);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
            points.sort_unstable();
            points.push(len);
            // Feed piece by piece, saving and restoring at every cut.
            let mut h = ResumableDigests::new();
            let mut at = 0;
            for point in points {
                h.update(&bytes[at..point]);
                let state = h.state();
                let tail = HashState::tail_len(state.total) as usize;
                h = ResumableDigests::resume(&state, &bytes[point - tail..point]).expect("resume");
                at = point;
            }
            prop_assert_eq!(h.finalize(), BlobDigests::of(&bytes));
        }
    }
}
