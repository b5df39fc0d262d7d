//! The witness: cosigns checkpoints of the logs it is configured for, each only if it is
//! consistent with the last one it cosigned for that log (C2SP tlog-witness `add-checkpoint`).
//!
//! Its whole promise is that it never cosigns two inconsistent views of one log, even across a
//! `kill -9`. So the check against the stored checkpoint and the write of the new one happen
//! under one lock, and the new checkpoint is durable (written to a temporary file, synced,
//! renamed over the old one, directory synced) before any cosignature leaves the process. A
//! crash before the rename leaves the old state and no cosignature was sent; a crash after it
//! leaves the new state, which is what was (or was about to be) cosigned.
//!
//! This module knows nothing of HTTP; `rest::witness` maps its outcomes to the spec's statuses.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use custodian_core::checkpoint::Checkpoint;
use custodian_core::merkle::{self, Hash};
use custodian_core::note::{KeyType, Note, NoteSignature, SignerKey, VerifierKey};
use custodian_core::witness::{AddCheckpoint, WitnessError};
use sha2::{Digest as _, Sha256};

/// Why a witness could not start, or why it refused a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum WitnessServiceError {
    /// The request body does not parse (HTTP 400).
    #[error(transparent)]
    Malformed(#[from] WitnessError),
    /// The checkpoint's origin is not a log this witness is configured for (HTTP 404).
    #[error("unknown log origin {0:?}: this witness is not configured for it")]
    UnknownOrigin(String),
    /// No signature on the checkpoint verifies with a key configured for its origin (HTTP 403).
    #[error("no signature on the checkpoint verifies with a key configured for log {0:?}")]
    BadSignature(String),
    /// The old size is larger than the checkpoint's (HTTP 400).
    #[error("old size {old} is larger than the checkpoint size {new}")]
    OldAfterNew {
        /// The request's old size.
        old: u64,
        /// The checkpoint's size.
        new: u64,
    },
    /// The old size is not the size this witness last cosigned (HTTP 409, body: that size).
    #[error("old size {old} is not the size of the latest cosigned checkpoint, {latest}")]
    Conflict {
        /// The request's old size.
        old: u64,
        /// The size of the latest checkpoint this witness cosigned.
        latest: u64,
    },
    /// Same size as the latest cosigned checkpoint, different root: a split view (HTTP 409).
    #[error(
        "checkpoint of size {size} has root {new}, but the cosigned checkpoint of that size has root {old}: a split view"
    )]
    RootMismatch {
        /// The shared size.
        size: u64,
        /// The root this witness cosigned.
        old: Hash,
        /// The root of the new checkpoint.
        new: Hash,
    },
    /// The consistency proof does not verify (HTTP 422).
    #[error("the consistency proof from size {old} to {new} does not verify: {reason}")]
    BadProof {
        /// The old size.
        old: u64,
        /// The new size.
        new: u64,
        /// Why.
        reason: String,
    },
    /// A checkpoint of size 0 whose root is not the empty tree's (HTTP 422): it describes no
    /// tree, so cosigning it would vouch for nothing true.
    #[error(
        "a checkpoint of size 0 must carry the empty tree's root {empty} (RFC 6962 section 2.1: \
         the SHA-256 of nothing), not {root}"
    )]
    NotTheEmptyTree {
        /// The root the checkpoint carries.
        root: Hash,
        /// The empty tree's root.
        empty: Hash,
    },
    /// The configuration file is wrong.
    #[error("witness config {path} line {line}: {reason}")]
    Config {
        /// The file.
        path: String,
        /// The 1-based line number (0: the file as a whole).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The witness key is not a cosignature key.
    #[error(
        "the witness key {0} is not a cosignature/v1 key; make one with `custodian witness keygen`"
    )]
    WrongKeyType(String),
    /// The state directory could not be read or written (HTTP 500; nothing was cosigned).
    #[error("witness state {path}: {source}")]
    State {
        /// The file or directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The state on disk does not parse; the witness refuses to run rather than forget a log.
    #[error("witness state {path} is damaged: {reason}")]
    DamagedState {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The logs a witness cosigns for: origin → the keys that may sign its checkpoints.
#[derive(Clone, Debug, Default)]
pub struct WitnessLogs {
    logs: BTreeMap<String, Vec<VerifierKey>>,
}

impl WitnessLogs {
    /// Parses a config file of `log <vkey>` lines (the policy file's log syntax; a trailing URL
    /// is allowed and ignored; `#` starts a comment). A log's origin is its key's name; several
    /// keys for one origin are all accepted (key rotation).
    pub fn parse(text: &str, path: &str) -> Result<Self, WitnessServiceError> {
        let mut logs: BTreeMap<String, Vec<VerifierKey>> = BTreeMap::new();
        for (number, raw) in text.lines().enumerate() {
            let fail = |reason: String| WitnessServiceError::Config {
                path: path.to_string(),
                line: number + 1,
                reason,
            };
            let line = raw.split('#').next().unwrap_or("").trim();
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [] => continue,
                ["log", key] | ["log", key, _] => {
                    let key = VerifierKey::parse(key).map_err(|e| fail(e.to_string()))?;
                    if key.key_type() != KeyType::Ed25519 {
                        return Err(fail("a log key has type byte 0x01".into()));
                    }
                    logs.entry(key.name().to_string()).or_default().push(key);
                }
                _ => return Err(fail("expected \"log <vkey> [url]\"".into())),
            }
        }
        if logs.is_empty() {
            return Err(WitnessServiceError::Config {
                path: path.to_string(),
                line: 0,
                reason: "no log lines: the witness would refuse every checkpoint".into(),
            });
        }
        Ok(WitnessLogs { logs })
    }

    /// The configured origins.
    pub fn origins(&self) -> impl Iterator<Item = &str> {
        self.logs.keys().map(String::as_str)
    }
}

/// What the witness last cosigned for one log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cosigned {
    /// The tree size.
    pub size: u64,
    /// The root hash.
    pub root: Hash,
    /// The checkpoint with the log's signatures and this witness's cosignature.
    pub note: String,
}

/// A cosigning witness with its key, its logs and its state directory.
pub struct Witness {
    signer: SignerKey,
    logs: WitnessLogs,
    dir: PathBuf,
    /// Held across check, persist and sign: the atomicity tlog-witness demands.
    state: Mutex<BTreeMap<String, Cosigned>>,
    /// Held for the witness's life: a second witness process on the same state would break
    /// the check-and-persist atomicity.
    _lock: File,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("key", &self.signer.verifier())
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> WitnessServiceError + '_ {
    move |source| WitnessServiceError::State {
        path: path.display().to_string(),
        source,
    }
}

/// The state file of one origin: named by a hash, since an origin may hold any character.
fn state_file(dir: &Path, origin: &str) -> PathBuf {
    dir.join(format!(
        "{}.checkpoint",
        hex::encode(Sha256::digest(origin.as_bytes()))
    ))
}

impl Witness {
    /// Opens (creating if needed) the state directory, locks it, and loads every stored
    /// checkpoint, checking each still carries a valid log signature and this witness's
    /// cosignature.
    pub fn open(
        signer: SignerKey,
        logs: WitnessLogs,
        dir: &Path,
    ) -> Result<Self, WitnessServiceError> {
        if signer.key_type() != KeyType::CosignatureV1 {
            return Err(WitnessServiceError::WrongKeyType(
                signer.verifier().to_string(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| WitnessServiceError::State {
                path: lock_path.display().to_string(),
                source: std::io::Error::other("another witness process holds this state directory"),
            },
        )?;
        let mut state = BTreeMap::new();
        let verifier = signer.verifier();
        for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
            let path = entry.map_err(io_error(dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("checkpoint") {
                continue;
            }
            let damaged = |reason: String| WitnessServiceError::DamagedState {
                path: path.display().to_string(),
                reason,
            };
            let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
            let note = Note::parse(text.as_bytes()).map_err(|e| damaged(e.to_string()))?;
            note.signed_by(&verifier)
                .map_err(|e| damaged(format!("not cosigned by this witness's key: {e}")))?;
            let checkpoint = Checkpoint::parse(&note.text).map_err(|e| damaged(e.to_string()))?;
            if state_file(dir, &checkpoint.origin) != path {
                return Err(damaged(format!(
                    "holds a checkpoint of {:?}, which belongs in another file",
                    checkpoint.origin
                )));
            }
            state.insert(
                checkpoint.origin.clone(),
                Cosigned {
                    size: checkpoint.size,
                    root: checkpoint.root,
                    note: text,
                },
            );
        }
        Ok(Witness {
            signer,
            logs,
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
            _lock: lock,
        })
    }

    /// The witness's verifier key (type 0x04), which logs put in their policies.
    pub fn verifier(&self) -> VerifierKey {
        self.signer.verifier()
    }

    /// The configured logs.
    pub fn logs(&self) -> &WitnessLogs {
        &self.logs
    }

    /// What this witness last cosigned for `origin`.
    pub fn latest(&self, origin: &str) -> Option<Cosigned> {
        self.lock().get(origin).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Cosigned>> {
        // A panic while holding the lock cannot leave a half-made promise: the file on disk is
        // either old or new, and the map is updated only after the rename.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles one `add-checkpoint` body at POSIX time `now`: checks it in the order the spec
    /// lists (origin, signature, sizes, old size, then the proof and the same-size root, with a
    /// size-0 checkpoint's root first and, at the cosigned size, a different root reported as
    /// the split view it is whatever proof came with it), persists the new checkpoint, and
    /// returns the cosignature line. Blocking: it syncs files.
    pub fn add_checkpoint(&self, body: &[u8], now: u64) -> Result<String, WitnessServiceError> {
        let request = AddCheckpoint::parse(body)?;
        let note = Note::parse(&request.checkpoint)
            .map_err(|e| WitnessError::MalformedRequest(format!("the checkpoint: {e}")))?;
        let checkpoint = Checkpoint::parse(&note.text)
            .map_err(|e| WitnessError::MalformedRequest(format!("the checkpoint: {e}")))?;
        let origin = &checkpoint.origin;
        let keys = self
            .logs
            .logs
            .get(origin)
            .ok_or_else(|| WitnessServiceError::UnknownOrigin(origin.clone()))?;
        // Signatures from keys not configured for the origin are ignored; one valid one is
        // enough, a bad one from a configured key is not.
        let trusted: Vec<&VerifierKey> =
            keys.iter().filter(|k| note.signed_by(k).is_ok()).collect();
        if trusted.is_empty() {
            return Err(WitnessServiceError::BadSignature(origin.clone()));
        }
        let (old, new) = (request.old_size, checkpoint.size);
        if old > new {
            return Err(WitnessServiceError::OldAfterNew { old, new });
        }
        let mut state = self.lock();
        let latest = state.get(origin);
        let latest_size = latest.map_or(0, |c| c.size);
        if old != latest_size {
            return Err(WitnessServiceError::Conflict {
                old,
                latest: latest_size,
            });
        }
        let empty = merkle::empty_root();
        if new == 0 && checkpoint.root != empty {
            return Err(WitnessServiceError::NotTheEmptyTree {
                root: checkpoint.root,
                empty,
            });
        }
        if old == new {
            // The spec's same-size check: a different root at the size last cosigned is a split
            // view, whatever the proof says. Before anything was cosigned (old size 0) there is
            // no root to compare.
            if let Some(cosigned) = latest.filter(|c| c.root != checkpoint.root) {
                return Err(WitnessServiceError::RootMismatch {
                    size: new,
                    old: cosigned.root,
                    new: checkpoint.root,
                });
            }
            // RFC 6962 section 2.1.2: the proof from a tree to itself is empty.
            if !request.proof.is_empty() {
                return Err(WitnessServiceError::BadProof {
                    old,
                    new,
                    reason: "the proof must be empty when the old size is the checkpoint size"
                        .into(),
                });
            }
        } else if old == 0 {
            if !request.proof.is_empty() {
                return Err(WitnessServiceError::BadProof {
                    old,
                    new,
                    reason: "the proof must be empty when the old size is 0".into(),
                });
            }
        } else {
            let old_root = latest.map(|c| c.root).unwrap_or(Hash::ZERO);
            merkle::verify_consistency(old, new, &request.proof, &old_root, &checkpoint.root)
                .map_err(|e| WitnessServiceError::BadProof {
                    old,
                    new,
                    reason: e.to_string(),
                })?;
        }
        let line = self
            .signer
            .cosign(&note.text, now)
            .map_err(|e| WitnessError::MalformedRequest(format!("the checkpoint: {e}")))?;
        // What is stored is the checkpoint as the log signed it plus this cosignature: one line
        // of each key that signed it and verified, so that a monitor's note verifier given
        // every configured key accepts it (Go's `note.Open` refuses a note with a bad signature
        // from a key it knows). Other witnesses' lines are dropped: they are not this witness's
        // to vouch for.
        let mut signatures: Vec<NoteSignature> = Vec::new();
        for signature in &note.signatures {
            let signer = |k: &&VerifierKey| k.name() == signature.name && k.id() == signature.id;
            let kept = |s: &NoteSignature| s.name == signature.name && s.id == signature.id;
            if trusted.iter().any(signer) && !signatures.iter().any(kept) {
                signatures.push(signature.clone());
            }
        }
        let mut stored = Note {
            text: note.text.clone(),
            signatures,
        }
        .to_signed_string();
        stored.push_str(&line);
        self.persist(origin, &stored)?;
        state.insert(
            origin.clone(),
            Cosigned {
                size: new,
                root: checkpoint.root,
                note: stored,
            },
        );
        Ok(line)
    }

    /// Replaces the origin's state file durably: temporary file, fsync, rename, directory fsync.
    fn persist(&self, origin: &str, text: &str) -> Result<(), WitnessServiceError> {
        let path = state_file(&self.dir, origin);
        crate::witnessing::write_atomically(&path, text.as_bytes()).map_err(io_error(&path))
    }
}

#[cfg(test)]
mod tests;
