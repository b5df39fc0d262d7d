//! C2SP `tlog-checkpoint` (<https://c2sp.org/tlog-checkpoint>): the signed statement of a log's
//! size and root.
//!
//! The body is three or more lines: the origin (the log's unique name), the tree size in decimal,
//! the root hash in standard base64, then optional extension lines. It is signed as a C2SP
//! signed note by the log's key, whose name is the origin.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::merkle::Hash;
use crate::note::{KeyType, Note, NoteError, SignerKey, VerifierKey};

/// Why a checkpoint was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The body does not follow the tlog-checkpoint format; `reason` says where.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// The signed note around the checkpoint is malformed or its signature does not verify.
    #[error("checkpoint signature: {0}")]
    Note(#[from] NoteError),
    /// The checkpoint is for a different log than the verifier key.
    #[error("checkpoint origin {found:?} is not the log {expected:?} named by the verifier key")]
    WrongOrigin {
        /// The origin line of the checkpoint.
        found: String,
        /// The verifier key's name.
        expected: String,
    },
}

/// A checkpoint body: origin, tree size, root hash and extension lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line.
    pub origin: String,
    /// The number of leaves.
    pub size: u64,
    /// The RFC 6962 root of the first `size` leaves.
    pub root: Hash,
    /// Extension lines, without their newlines.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: &str, size: u64, root: Hash) -> Self {
        Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// The body text, each line ending in a newline.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root.0)
        );
        for line in &self.extensions {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// Parses a checkpoint body.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let malformed = |reason: &str| CheckpointError::Malformed(reason.to_string());
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| malformed("the body must end in a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(malformed("the origin line is empty"));
        }
        let size_text = lines
            .next()
            .ok_or_else(|| malformed("the tree size line is missing"))?;
        // Decimal without sign or leading zeros, so a size has exactly one spelling.
        if size_text.is_empty()
            || !size_text.bytes().all(|b| b.is_ascii_digit())
            || (size_text.len() > 1 && size_text.starts_with('0'))
        {
            return Err(CheckpointError::Malformed(format!(
                "tree size {size_text:?} is not a decimal number without leading zeros"
            )));
        }
        let size = size_text.parse::<u64>().map_err(|_| {
            CheckpointError::Malformed(format!("tree size {size_text:?} does not fit in 64 bits"))
        })?;
        let root_text = lines
            .next()
            .ok_or_else(|| malformed("the root hash line is missing"))?;
        let root = STANDARD
            .decode(root_text)
            .ok()
            .and_then(|bytes| Hash::from_slice(&bytes).ok())
            .ok_or_else(|| {
                CheckpointError::Malformed(format!(
                    "root hash {root_text:?} is not 32 bytes of standard base64"
                ))
            })?;
        let extensions: Vec<String> = lines.map(str::to_string).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(malformed("extension lines must not be empty"));
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            extensions,
        })
    }

    /// Signs the checkpoint as a C2SP signed note.
    pub fn sign(&self, signer: &SignerKey) -> Result<String, CheckpointError> {
        Ok(signer.sign(&self.to_text())?)
    }

    /// Opens a signed checkpoint: checks the log's signature and that the origin is the key's
    /// name, then parses the body.
    pub fn open(signed: &[u8], verifier: &VerifierKey) -> Result<Self, CheckpointError> {
        // A witness's cosignature says the witness saw the checkpoint, not that the log signed
        // it, so a witness key never stands in for the log's.
        if verifier.key_type() != KeyType::Ed25519 {
            return Err(CheckpointError::Note(NoteError::WrongKeyType {
                name: verifier.name().to_string(),
                found: "witness cosignature/v1 (0x04)",
                wanted: "log signing (0x01)",
            }));
        }
        let note = Note::open(signed, verifier)?;
        let checkpoint = Checkpoint::parse(&note.text)?;
        if checkpoint.origin != verifier.name() {
            return Err(CheckpointError::WrongOrigin {
                found: checkpoint.origin,
                expected: verifier.name().to_string(),
            });
        }
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strict_parsing() {
        let signer = SignerKey::from_seed("custodian.test/log", [3; 32]).expect("key");
        let checkpoint = Checkpoint::new("custodian.test/log", 42, Hash([9; 32]));
        let signed = checkpoint.sign(&signer).expect("sign");
        assert_eq!(
            Checkpoint::open(signed.as_bytes(), &signer.verifier()).expect("open"),
            checkpoint
        );
        for bad in [
            "o\n01\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n",
            "o\n-1\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n",
            "o\n1\nCQkJ\n",
            "o\n1\n",
            "\n1\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n",
            "o\n1\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=",
            "o\n99999999999999999999\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n",
        ] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
        }
        let other = SignerKey::from_seed("other.test/log", [3; 32]).expect("key");
        let foreign = Checkpoint::new("custodian.test/log", 1, Hash([0; 32]))
            .sign(&other)
            .expect("sign");
        assert!(matches!(
            Checkpoint::open(foreign.as_bytes(), &other.verifier()),
            Err(CheckpointError::WrongOrigin { .. })
        ));
    }
}

#[cfg(test)]
mod worked_example {
    use super::*;
    use crate::entry::{Entry, EntryKind, Value};

    /// The worked example of docs/formats.md, end to end: one entry, its leaf hash (the root of
    /// a one-entry log), and the checkpoint signed by the key with the all-zero seed.
    #[test]
    fn docs_formats_worked_example() {
        let entry = Entry::new(
            EntryKind::KeyEvent,
            Hash::ZERO,
            1_764_115_200_000,
            Value::Map(vec![(Value::Text("note".into()), Value::Text("hi".into()))]),
        )
        .expect("entry");
        let signer = SignerKey::from_seed("example.com/custodian", [0; 32]).expect("key");
        let checkpoint = Checkpoint::new("example.com/custodian", 1, entry.leaf_hash());
        let signed = checkpoint.sign(&signer).expect("sign");
        assert_eq!(
            entry.leaf_hash().to_hex(),
            "8e28fde074f5dee41262fc92e54aa043c3a01bfd249b0c85ae0eae9154219c92"
        );
        assert_eq!(
            signer.verifier().to_string(),
            "example.com/custodian+30a1beb5+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
        );
        assert_eq!(signed, EXPECTED);
    }

    const EXPECTED: &str = "example.com/custodian\n1\njij94HT13uQSYvyS5UqgQ8OgG/0kmwyFrg6ukVQhnJI=\n\n\u{2014} example.com/custodian MKG+tVDM7GasqyEKr8C/wcysHtzb7gAX3Zq6hnp8uIYupc3ucgaNkhOmUyvbr5O0nxSVVxiT5hOfd+JVMCmACJJb6gQ=\n";
}
