//! EvidencePack receipts: an entry, its inclusion proof and the signed checkpoint the proof leads
//! to, in one self-contained JSON file that anyone holding the log's verifier key can check
//! offline.
//!
//! ```json
//! {
//!   "type": "custodian.receipt.v1",
//!   "log_index": 5,
//!   "entry": "<base64 of the entry's deterministic CBOR>",
//!   "inclusion_proof": ["<base64 hash>", "..."],
//!   "checkpoint": "<the signed checkpoint note, verbatim>"
//! }
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::entry::{Entry, EntryError};
use crate::merkle::{Hash, ProofError, verify_inclusion};
use crate::note::VerifierKey;

/// The `type` of a receipt file.
pub const RECEIPT_TYPE: &str = "custodian.receipt.v1";

/// The first line of a receipt in C2SP tlog-proof form (<https://c2sp.org/tlog-proof>).
pub const TLOG_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";

/// Why a receipt did not verify. Each variant says which part failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The file is not a receipt.
    #[error("not a receipt file: {0}")]
    Format(String),
    /// The checkpoint is malformed, from another log, or its signature does not verify.
    #[error("receipt checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The entry bytes are not a valid entry.
    #[error("receipt entry {index}: {source}")]
    Entry {
        /// The log index the receipt claims.
        index: u64,
        /// Why the entry was rejected.
        source: EntryError,
    },
    /// The inclusion proof does not lead from the entry to the checkpoint's root.
    #[error("inclusion proof of entry {index} in the tree of size {size}: {source}")]
    Proof {
        /// The log index the receipt claims.
        index: u64,
        /// The checkpoint's tree size.
        size: u64,
        /// What did not match.
        source: ProofError,
    },
}

/// A receipt: the entry, the proof and the checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The entry's index in the log.
    pub index: u64,
    /// The entry's deterministic CBOR bytes.
    pub entry: Vec<u8>,
    /// The inclusion proof up to the checkpoint's tree size, leaf-up.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptFile {
    #[serde(rename = "type")]
    kind: String,
    log_index: u64,
    entry: String,
    inclusion_proof: Vec<String>,
    checkpoint: String,
}

/// What a verified receipt proves.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedReceipt {
    /// The decoded entry.
    pub entry: Entry,
    /// The entry's leaf hash.
    pub leaf_hash: Hash,
    /// The entry's index.
    pub index: u64,
    /// The checkpoint the entry is included in.
    pub checkpoint: Checkpoint,
}

/// One proof hash as both file forms write it: standard base64 of 32 bytes.
fn proof_hash(text: &str) -> Option<Hash> {
    STANDARD
        .decode(text)
        .ok()
        .and_then(|b| Hash::from_slice(&b).ok())
}

impl Receipt {
    /// The JSON file form: `serde_json`'s pretty layout of the fields in the order shown in the
    /// module's documentation, and a final newline.
    ///
    /// Every append and attestation answers with one, so it is written directly into one
    /// string: through a serializer it cost a string per proof hash and about 4% of the daemon's
    /// CPU per append. `to_json_is_the_serde_layout` holds it to the serializer's bytes.
    pub fn to_json(&self) -> String {
        // Base64 of 32 bytes is 44 characters; each proof line adds quotes, a comma and indent.
        let mut out = String::with_capacity(
            160 + self.entry.len() * 4 / 3
                + self.proof.len() * 52
                + self.checkpoint.len() * 11 / 10,
        );
        out.push_str("{\n  \"type\": \"");
        out.push_str(RECEIPT_TYPE);
        out.push_str("\",\n  \"log_index\": ");
        out.push_str(&self.index.to_string());
        out.push_str(",\n  \"entry\": \"");
        STANDARD.encode_string(&self.entry, &mut out);
        out.push_str("\",\n  \"inclusion_proof\": [");
        for (i, hash) in self.proof.iter().enumerate() {
            out.push_str(if i == 0 { "\n    \"" } else { ",\n    \"" });
            STANDARD.encode_string(hash.0, &mut out);
            out.push('"');
        }
        if !self.proof.is_empty() {
            out.push_str("\n  ");
        }
        out.push_str("],\n  \"checkpoint\": ");
        // Escaping a string as JSON cannot fail.
        out.push_str(&serde_json::to_string(&self.checkpoint).unwrap_or_default());
        out.push_str("\n}\n");
        out
    }

    /// The C2SP tlog-proof form (`.tlog-proof`): the header, `extra` carrying the entry's bytes
    /// in base64 (what a verifier needs to recompute the leaf hash; the proof then authenticates
    /// them), `index`, one base64 proof hash per line, an empty line and the checkpoint verbatim.
    pub fn to_tlog_proof(&self) -> String {
        let mut out = format!(
            "{TLOG_PROOF_HEADER}\nextra {}\nindex {}\n",
            STANDARD.encode(&self.entry),
            self.index
        );
        for hash in &self.proof {
            out.push_str(&STANDARD.encode(hash.0));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint);
        out
    }

    /// Parses the C2SP tlog-proof form (nothing is verified yet). The `extra` line must carry
    /// the entry: without it there is nothing to prove included.
    pub fn from_tlog_proof(text: &str) -> Result<Self, ReceiptError> {
        let bad = |what: String| ReceiptError::Format(format!("tlog-proof: {what}"));
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no empty line before the checkpoint".into()))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(TLOG_PROOF_HEADER) {
            return Err(bad(format!("the first line must be {TLOG_PROOF_HEADER}")));
        }
        let mut line = lines.next().unwrap_or_default();
        let entry = match line.strip_prefix("extra ") {
            Some(extra) => {
                let entry = STANDARD
                    .decode(extra)
                    .map_err(|e| bad(format!("extra is not base64: {e}")))?;
                line = lines.next().unwrap_or_default();
                entry
            }
            None => {
                return Err(bad(
                    "no extra line: Custodian's proofs carry the entry there, base64".into(),
                ));
            }
        };
        let index = line
            .strip_prefix("index ")
            .filter(|n| *n == "0" || (!n.is_empty() && !n.starts_with('0')))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                bad(format!(
                    "{line:?} is not \"index N\" (decimal, no leading zeros)"
                ))
            })?;
        let proof = lines
            .enumerate()
            .map(|(i, h)| {
                proof_hash(h).ok_or_else(|| {
                    bad(format!(
                        "proof line {} {h:?} is not a base64 32-byte hash",
                        i + 1
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Receipt {
            index,
            entry,
            proof,
            checkpoint: checkpoint.to_string(),
        })
    }

    /// Parses either file form, told apart by the first line.
    pub fn parse(text: &str) -> Result<Self, ReceiptError> {
        if text.starts_with(TLOG_PROOF_HEADER) {
            Self::from_tlog_proof(text)
        } else {
            Self::from_json(text)
        }
    }

    /// Parses the JSON file form (nothing is verified yet).
    pub fn from_json(text: &str) -> Result<Self, ReceiptError> {
        let file: ReceiptFile =
            serde_json::from_str(text).map_err(|e| ReceiptError::Format(e.to_string()))?;
        if file.kind != RECEIPT_TYPE {
            return Err(ReceiptError::Format(format!(
                "type is {:?}, expected {RECEIPT_TYPE:?}",
                file.kind
            )));
        }
        let entry = STANDARD
            .decode(&file.entry)
            .map_err(|e| ReceiptError::Format(format!("entry is not base64: {e}")))?;
        let proof = file
            .inclusion_proof
            .iter()
            .enumerate()
            .map(|(i, h)| {
                proof_hash(h).ok_or_else(|| {
                    ReceiptError::Format(format!(
                        "inclusion_proof[{i}] {h:?} is not a base64 32-byte hash"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Receipt {
            index: file.log_index,
            entry,
            proof,
            checkpoint: file.checkpoint,
        })
    }

    /// Verifies the receipt offline: the checkpoint's signature by `verifier`, the entry's
    /// encoding, and the inclusion proof from the entry's leaf hash to the checkpoint's root.
    pub fn verify(&self, verifier: &VerifierKey) -> Result<VerifiedReceipt, ReceiptError> {
        let checkpoint = Checkpoint::open(self.checkpoint.as_bytes(), verifier)?;
        let entry = Entry::decode(&self.entry).map_err(|source| ReceiptError::Entry {
            index: self.index,
            source,
        })?;
        let leaf_hash = crate::merkle::leaf_hash(&self.entry);
        verify_inclusion(
            self.index,
            checkpoint.size,
            &leaf_hash,
            &self.proof,
            &checkpoint.root,
        )
        .map_err(|source| ReceiptError::Proof {
            index: self.index,
            size: checkpoint.size,
            source,
        })?;
        Ok(VerifiedReceipt {
            entry,
            leaf_hash,
            index: self.index,
            checkpoint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The layout `to_json` writes by hand, as the serializer writes it.
    fn serde_layout(receipt: &Receipt) -> String {
        let file = ReceiptFile {
            kind: RECEIPT_TYPE.into(),
            log_index: receipt.index,
            entry: STANDARD.encode(&receipt.entry),
            inclusion_proof: receipt.proof.iter().map(|h| STANDARD.encode(h.0)).collect(),
            checkpoint: receipt.checkpoint.clone(),
        };
        serde_json::to_string_pretty(&file).expect("serializes") + "\n"
    }

    proptest! {
        #[test]
        fn to_json_is_the_serde_layout(
            index in any::<u64>(),
            entry in proptest::collection::vec(any::<u8>(), 0..300),
            proof in proptest::collection::vec(any::<[u8; 32]>(), 0..40),
            // Any text: quotes, backslashes, control characters and non-ASCII must be escaped
            // exactly as the serializer escapes them.
            checkpoint in any::<String>(),
        ) {
            let receipt = Receipt {
                index,
                entry,
                proof: proof.into_iter().map(Hash).collect(),
                checkpoint,
            };
            let json = receipt.to_json();
            prop_assert_eq!(&json, &serde_layout(&receipt));
            prop_assert_eq!(Receipt::from_json(&json).expect("parses"), receipt);
        }
    }

    #[test]
    fn to_json_of_an_empty_proof_and_a_real_note() {
        let receipt = Receipt {
            index: 0,
            entry: vec![0xa5, 0x00],
            proof: Vec::new(),
            checkpoint: "example.com/log\n1\nAAAA\n\n\u{2014} example.com/log abc=\n".into(),
        };
        assert_eq!(receipt.to_json(), serde_layout(&receipt));
        assert!(receipt.to_json().contains("\"inclusion_proof\": [],"));
    }
}
