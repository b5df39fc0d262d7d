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
    /// The JSON file form.
    pub fn to_json(&self) -> String {
        let file = ReceiptFile {
            kind: RECEIPT_TYPE.into(),
            log_index: self.index,
            entry: STANDARD.encode(&self.entry),
            inclusion_proof: self.proof.iter().map(|h| STANDARD.encode(h.0)).collect(),
            checkpoint: self.checkpoint.clone(),
        };
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string_pretty(&file).unwrap_or_default() + "\n"
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
