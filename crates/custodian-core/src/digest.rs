//! Content digests: `sha256:<hex>` (the canonical address) and `blake3:<hex>`.
//!
//! Parsing is strict on purpose. A digest is an address: two spellings of the same address would
//! let a client store one blob twice or miss a blob that is there, so only the lower-case form
//! with exactly 64 hex digits is accepted.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// The length in bytes of every digest Custodian computes.
pub const DIGEST_LEN: usize = 32;

/// A digest algorithm Custodian computes for every blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256 (FIPS 180-4): the canonical blob address.
    Sha256,
    /// BLAKE3 with its default 32-byte output: an alternative address.
    Blake3,
}

impl Algorithm {
    /// Every algorithm, in the order their digests are reported.
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Blake3];

    /// The prefix used in the textual form, without the colon.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Blake3 => "blake3",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a textual digest was rejected. Every variant carries the offending text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The text has no `algorithm:` prefix.
    #[error(
        "digest {value:?} has no algorithm prefix; expected \"sha256:<64 hex digits>\" or \"blake3:<64 hex digits>\""
    )]
    MissingAlgorithm {
        /// The rejected text.
        value: String,
    },
    /// The prefix names an algorithm Custodian does not compute.
    #[error("digest {value:?} uses unsupported algorithm {algorithm:?}; supported: sha256, blake3")]
    UnknownAlgorithm {
        /// The rejected text.
        value: String,
        /// The algorithm name found before the colon.
        algorithm: String,
    },
    /// The hex part has the wrong number of characters.
    #[error("digest {value:?} has {got} hex digits after the prefix; {algorithm} needs exactly 64")]
    WrongLength {
        /// The rejected text.
        value: String,
        /// The algorithm named by the prefix.
        algorithm: Algorithm,
        /// How many characters followed the prefix.
        got: usize,
    },
    /// The hex part contains something other than `0-9a-f`.
    #[error("digest {value:?} must be lower-case hex (0-9, a-f) after the prefix")]
    NotLowerHex {
        /// The rejected text.
        value: String,
    },
}

/// A digest: an algorithm and its 32-byte output.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    bytes: [u8; DIGEST_LEN],
}

impl Digest {
    /// Builds a digest from raw output bytes.
    pub const fn new(algorithm: Algorithm, bytes: [u8; DIGEST_LEN]) -> Self {
        Digest { algorithm, bytes }
    }

    /// A SHA-256 digest from raw bytes.
    pub const fn sha256(bytes: [u8; DIGEST_LEN]) -> Self {
        Digest::new(Algorithm::Sha256, bytes)
    }

    /// A BLAKE3 digest from raw bytes.
    pub const fn blake3(bytes: [u8; DIGEST_LEN]) -> Self {
        Digest::new(Algorithm::Blake3, bytes)
    }

    /// The algorithm that produced this digest.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The raw digest bytes.
    pub fn bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.bytes
    }

    /// The lower-case hex of the digest bytes, without prefix.
    pub fn hex(&self) -> String {
        let mut out = [0u8; DIGEST_LEN * 2];
        encode_hex(&self.bytes, &mut out).to_owned()
    }

    /// Computes the digest of `data` with `algorithm` in one call.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Self {
        match algorithm {
            Algorithm::Sha256 => Digest::sha256(sha2::Sha256::digest(data).into()),
            Algorithm::Blake3 => Digest::blake3(*blake3::hash(data).as_bytes()),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Formatted on the stack: FindMissing and listings format thousands of digests per call.
        let mut out = [0u8; DIGEST_LEN * 2];
        f.write_str(self.algorithm.name())?;
        f.write_str(":")?;
        f.write_str(encode_hex(&self.bytes, &mut out))
    }
}

/// Writes the lower-case hex of `bytes` into `out` and returns it as text.
fn encode_hex<'a>(bytes: &[u8; DIGEST_LEN], out: &'a mut [u8; DIGEST_LEN * 2]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
    // Every byte written above is an ASCII digit or letter, so this cannot fail.
    std::str::from_utf8(out).unwrap_or_default()
}

/// The value of each lower-case hex digit, and 0xff for every other byte (upper case included).
const HEX_VALUES: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut digit = 0;
    while digit < 16 {
        table[b"0123456789abcdef"[digit] as usize] = digit as u8;
        digit += 1;
    }
    table
};

/// Decodes the well-formed case in one pass: a known prefix and exactly 64 lower-case hex digits.
/// Anything else returns `None` and is left to the careful path, which says what is wrong.
fn parse_well_formed(value: &str) -> Option<Digest> {
    let (name, hex_part) = value.as_bytes().split_at_checked(7)?;
    let algorithm = match name {
        b"sha256:" => Algorithm::Sha256,
        b"blake3:" => Algorithm::Blake3,
        _ => return None,
    };
    if hex_part.len() != DIGEST_LEN * 2 {
        return None;
    }
    // A table lookup without a branch per digit: random hex mixes digits and letters, and a
    // branch on which one it is mispredicts half the time (FindMissing parses 10,000 per call).
    let mut bytes = [0u8; DIGEST_LEN];
    let mut invalid = 0u8;
    for (byte, pair) in bytes.iter_mut().zip(hex_part.chunks_exact(2)) {
        let (high, low) = (
            HEX_VALUES[usize::from(pair[0])],
            HEX_VALUES[usize::from(pair[1])],
        );
        invalid |= high | low;
        *byte = (high << 4) | low;
    }
    (invalid & 0xf0 == 0).then_some(Digest { algorithm, bytes })
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if let Some(digest) = parse_well_formed(value) {
            return Ok(digest);
        }
        let Some((name, hex_part)) = value.split_once(':') else {
            return Err(DigestError::MissingAlgorithm {
                value: value.to_owned(),
            });
        };
        let algorithm = match name {
            "sha256" => Algorithm::Sha256,
            "blake3" => Algorithm::Blake3,
            _ => {
                return Err(DigestError::UnknownAlgorithm {
                    value: value.to_owned(),
                    algorithm: name.to_owned(),
                });
            }
        };
        // Count characters, not bytes, so a multi-byte character reports a length a person can
        // check against what they typed.
        let got = hex_part.chars().count();
        if got != DIGEST_LEN * 2 {
            return Err(DigestError::WrongLength {
                value: value.to_owned(),
                algorithm,
                got,
            });
        }
        if !hex_part
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(DigestError::NotLowerHex {
                value: value.to_owned(),
            });
        }
        let mut bytes = [0u8; DIGEST_LEN];
        // The checks above guarantee valid hex of the right length.
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| DigestError::NotLowerHex {
            value: value.to_owned(),
        })?;
        Ok(Digest { algorithm, bytes })
    }
}

/// A streaming hasher for one algorithm.
#[derive(Clone)]
pub enum StreamHasher {
    /// SHA-256 state.
    Sha256(sha2::Sha256),
    /// BLAKE3 state (boxed: it is large).
    Blake3(Box<blake3::Hasher>),
}

impl StreamHasher {
    /// A hasher for `algorithm` that has seen no bytes.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => StreamHasher::Sha256(sha2::Sha256::default()),
            Algorithm::Blake3 => StreamHasher::Blake3(Box::default()),
        }
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            StreamHasher::Sha256(h) => h.update(data),
            StreamHasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The digest of everything fed.
    pub fn finalize(self) -> Digest {
        match self {
            StreamHasher::Sha256(h) => Digest::sha256(h.finalize().into()),
            StreamHasher::Blake3(h) => Digest::blake3(*h.finalize().as_bytes()),
        }
    }
}

/// Both digests of one blob, as computed in a single pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlobDigests {
    /// The SHA-256 digest: the blob's canonical address.
    pub sha256: Digest,
    /// The BLAKE3 digest: an alternative address.
    pub blake3: Digest,
}

impl BlobDigests {
    /// The digest for `algorithm`.
    pub fn get(&self, algorithm: Algorithm) -> Digest {
        match algorithm {
            Algorithm::Sha256 => self.sha256,
            Algorithm::Blake3 => self.blake3,
        }
    }

    /// Whether `digest` names this blob under either algorithm.
    pub fn matches(&self, digest: &Digest) -> bool {
        self.get(digest.algorithm()) == *digest
    }

    /// Computes both digests of `data`.
    pub fn of(data: &[u8]) -> Self {
        let mut hasher = BlobHasher::new();
        hasher.update(data);
        hasher.finalize()
    }
}

/// Computes SHA-256 and BLAKE3 of a stream in one pass.
#[derive(Clone, Default)]
pub struct BlobHasher {
    sha256: sha2::Sha256,
    blake3: blake3::Hasher,
    len: u64,
}

impl BlobHasher {
    /// A hasher that has seen no bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        self.blake3.update(data);
        self.len += data.len() as u64;
    }

    /// How many bytes have been fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no bytes have been fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Both digests of everything fed.
    pub fn finalize(self) -> BlobDigests {
        BlobDigests {
            sha256: Digest::sha256(self.sha256.finalize().into()),
            blake3: Digest::blake3(*self.blake3.finalize().as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Known answers: SHA-256 test vectors from FIPS 180-4 examples (NIST CSRC "SHA256.pdf",
    // messages "" and "abc") and BLAKE3's official test_vectors.json (input length 0) from
    // BLAKE3-team/BLAKE3, file test_vectors/test_vectors.json.
    const SHA256_EMPTY: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const SHA256_ABC: &str =
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const BLAKE3_EMPTY: &str =
        "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    #[test]
    fn known_answers() {
        assert_eq!(BlobDigests::of(b"").sha256.to_string(), SHA256_EMPTY);
        assert_eq!(BlobDigests::of(b"abc").sha256.to_string(), SHA256_ABC);
        assert_eq!(BlobDigests::of(b"").blake3.to_string(), BLAKE3_EMPTY);
        assert_eq!(
            Digest::of(Algorithm::Sha256, b"abc"),
            SHA256_ABC.parse().unwrap()
        );
    }

    #[test]
    fn parse_round_trips() {
        for text in [SHA256_EMPTY, SHA256_ABC, BLAKE3_EMPTY] {
            let digest: Digest = text.parse().unwrap();
            assert_eq!(digest.to_string(), text);
        }
    }

    #[test]
    fn rejects_malformed_with_the_value() {
        type Check = fn(&DigestError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("e3b0c442", |e| {
                matches!(e, DigestError::MissingAlgorithm { .. })
            }),
            (
                "md5:d41d8cd98f00b204e9800998ecf8427e",
                |e| matches!(e, DigestError::UnknownAlgorithm { algorithm, .. } if algorithm == "md5"),
            ),
            (
                "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                |e| matches!(e, DigestError::UnknownAlgorithm { .. }),
            ),
            ("sha256:e3b0", |e| {
                matches!(e, DigestError::WrongLength { got: 4, .. })
            }),
            ("sha256:", |e| {
                matches!(e, DigestError::WrongLength { got: 0, .. })
            }),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                |e| matches!(e, DigestError::NotLowerHex { .. }),
            ),
            (
                "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                |e| matches!(e, DigestError::NotLowerHex { .. }),
            ),
            (
                "sha256: 3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                |e| matches!(e, DigestError::NotLowerHex { .. }),
            ),
            (
                "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
                |e| matches!(e, DigestError::WrongLength { got: 65, .. }),
            ),
        ];
        for (text, is_expected) in cases {
            let err = text.parse::<Digest>().unwrap_err();
            assert!(is_expected(&err), "{text}: unexpected error {err:?}");
            assert!(
                err.to_string().contains(&format!("{text:?}")),
                "{err} does not name the value"
            );
        }
    }

    #[test]
    fn stream_hasher_matches_one_shot() {
        for algorithm in Algorithm::ALL {
            let mut hasher = StreamHasher::new(algorithm);
            hasher.update(b"a");
            hasher.update(b"bc");
            assert_eq!(hasher.finalize(), Digest::of(algorithm, b"abc"));
        }
    }

    #[test]
    fn blob_digests_match_either_algorithm() {
        let d = BlobDigests::of(b"abc");
        assert!(d.matches(&d.sha256));
        assert!(d.matches(&d.blake3));
        assert!(!d.matches(&BlobDigests::of(b"abd").sha256));
    }

    proptest! {
        #[test]
        fn streaming_equals_one_shot(data in proptest::collection::vec(any::<u8>(), 0..4096), split in 0usize..4096) {
            let split = split.min(data.len());
            let mut hasher = BlobHasher::new();
            hasher.update(&data[..split]);
            hasher.update(&data[split..]);
            prop_assert_eq!(hasher.len(), data.len() as u64);
            prop_assert_eq!(hasher.finalize(), BlobDigests::of(&data));
        }

        #[test]
        fn display_parse_round_trip(bytes in proptest::array::uniform32(any::<u8>()), blake in any::<bool>()) {
            let algorithm = if blake { Algorithm::Blake3 } else { Algorithm::Sha256 };
            let digest = Digest::new(algorithm, bytes);
            prop_assert_eq!(digest.to_string().parse::<Digest>().unwrap(), digest);
        }

        #[test]
        fn display_matches_the_hex_crate(bytes in proptest::array::uniform32(any::<u8>())) {
            let digest = Digest::sha256(bytes);
            prop_assert_eq!(digest.to_string(), format!("sha256:{}", hex::encode(bytes)));
            prop_assert_eq!(digest.hex(), hex::encode(bytes));
        }

        /// The one-pass parser accepts exactly what the strict rules accept: near-misses (an
        /// upper-case digit, a stray character, the wrong prefix) must still be refused.
        #[test]
        fn one_pass_parse_agrees_with_the_rules(
            prefix in prop::sample::select(vec!["sha256:", "blake3:", "SHA256:", "sha256;", "md5:12"]),
            hex_part in "[0-9a-fA-Fg ]{64}",
        ) {
            let text = format!("{prefix}{hex_part}");
            let valid = (prefix == "sha256:" || prefix == "blake3:")
                && hex_part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            match text.parse::<Digest>() {
                Ok(digest) => {
                    prop_assert!(valid, "{} was accepted", text);
                    prop_assert_eq!(digest.to_string(), text);
                }
                Err(err) => prop_assert!(!valid, "{} was refused: {}", text, err),
            }
        }

        #[test]
        fn parse_never_panics(text in ".{0,80}") {
            let _ = text.parse::<Digest>();
        }
    }
}
