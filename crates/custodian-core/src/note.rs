//! C2SP `signed-note` (<https://c2sp.org/signed-note>) with Ed25519 keys, byte-compatible with Go's
//! `golang.org/x/mod/sumdb/note`.
//!
//! A note is UTF-8 text ending in a newline, a blank line, and one or more signature lines
//! `— <key name> <base64(key id || signature)>`. A verifier key is written
//! `<name>+<key id as 8 hex digits>+<base64(0x01 || public key)>`; the matching signer key is
//! `PRIVATE+KEY+<name>+<key id>+<base64(0x01 || private seed)>`. The key id is the first four bytes
//! of `SHA-256(name || "\n" || 0x01 || public key)`.
//!
//! Witness keys follow C2SP `tlog-cosignature` (<https://c2sp.org/tlog-cosignature>): the same
//! encoding with the type byte 0x04. Their signatures are `cosignature/v1` signatures: eight
//! bytes of big-endian POSIX time, then an Ed25519 signature over `cosignature/v1\n`,
//! `time <t>\n` and the note text.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// The signature-type byte of Ed25519 keys in signed notes.
const ALG_ED25519: u8 = 0x01;
/// The signature-type byte of Ed25519 `cosignature/v1` keys (C2SP tlog-cosignature).
const ALG_COSIGNATURE_V1: u8 = 0x04;
/// The header line that separates cosignatures from every other use of the key.
const COSIGNATURE_HEADER: &str = "cosignature/v1\n";

/// What a key signs: plain signed notes, or timestamped witness cosignatures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// Ed25519 over the note text (type byte 0x01): log and publisher keys.
    Ed25519,
    /// Ed25519 `cosignature/v1` over a checkpoint with a timestamp (type byte 0x04): witness
    /// keys.
    CosignatureV1,
}

impl KeyType {
    /// The type byte in the key encoding and the key id hash.
    pub fn byte(self) -> u8 {
        match self {
            KeyType::Ed25519 => ALG_ED25519,
            KeyType::CosignatureV1 => ALG_COSIGNATURE_V1,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            ALG_ED25519 => Some(KeyType::Ed25519),
            ALG_COSIGNATURE_V1 => Some(KeyType::CosignatureV1),
            _ => None,
        }
    }
}

/// The message a `cosignature/v1` signature covers: the header line, the time line, the text.
pub fn cosigned_message(text: &str, timestamp: u64) -> Vec<u8> {
    format!("{COSIGNATURE_HEADER}time {timestamp}\n{text}").into_bytes()
}
/// The em dash and space that begin every signature line.
const SIG_PREFIX: &str = "\u{2014} ";
/// Go's limit on signature lines in one note.
const MAX_SIGNATURES: usize = 100;

/// Why a key, a note or a signature was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key string is malformed; `reason` says which part.
    #[error("malformed {kind} key {key:?}: {reason}")]
    MalformedKey {
        /// "verifier" or "signer".
        kind: &'static str,
        /// The key string (for signer keys, only the public prefix is kept).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A key name is empty or contains whitespace or `+`.
    #[error("invalid key name {0:?}: it must be non-empty UTF-8 without spaces, newlines or '+'")]
    InvalidName(String),
    /// The note text cannot be signed or the note cannot be parsed.
    #[error("malformed note: {0}")]
    Malformed(String),
    /// No signature line is from the verifier's key.
    #[error("note has no signature from key {name}+{id:08x}")]
    NoSignatureFromKey {
        /// The verifier key's name.
        name: String,
        /// The verifier key's id.
        id: u32,
    },
    /// The key is of the wrong type for what was asked of it (a witness key cannot sign a
    /// plain note, a log key cannot cosign).
    #[error("key {name} is a {found} key; this needs a {wanted} key")]
    WrongKeyType {
        /// The key's name.
        name: String,
        /// The key's type.
        found: &'static str,
        /// The type needed.
        wanted: &'static str,
    },
    /// A signature line from the verifier's key does not verify.
    #[error("signature from key {name}+{id:08x} does not verify over the note text")]
    BadSignature {
        /// The verifier key's name.
        name: String,
        /// The verifier key's id.
        id: u32,
    },
}

/// The key id of an Ed25519 key: the first four bytes of `SHA-256(name || "\n" || 0x01 || key)`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    typed_key_id(name, KeyType::Ed25519, public_key)
}

/// The key id of a key of any type: the first four bytes of
/// `SHA-256(name || "\n" || type byte || key)`.
pub fn typed_key_id(name: &str, kind: KeyType, public_key: &[u8; 32]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([kind.byte()]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(NoteError::InvalidName(name.to_string()));
    }
    Ok(())
}

/// Splits `name+hexid+base64` on the first two `+` (the base64 part may contain `+` itself).
fn split_key<'a>(
    kind: &'static str,
    text: &'a str,
    shown: &str,
) -> Result<(&'a str, u32, KeyType, Vec<u8>), NoteError> {
    let malformed = |reason: &str| NoteError::MalformedKey {
        kind,
        key: shown.to_string(),
        reason: reason.to_string(),
    };
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("expected NAME+KEYID+BASE64"));
    };
    check_name(name).map_err(|_| malformed("the name is empty or contains whitespace"))?;
    if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed("the key id must be 8 hex digits"));
    }
    let id = u32::from_str_radix(id, 16).map_err(|_| malformed("the key id is not hex"))?;
    let key = STANDARD
        .decode(key)
        .map_err(|e| malformed(&format!("the key is not base64: {e}")))?;
    let Some(kind) = key.first().copied().and_then(KeyType::from_byte) else {
        return Err(malformed(
            "unsupported key type; Ed25519 (type byte 0x01) and Ed25519 cosignature/v1 \
             (type byte 0x04) are supported",
        ));
    };
    if key.len() != 33 {
        return Err(malformed(&format!(
            "an Ed25519 key is 1 + 32 bytes, got {}",
            key.len()
        )));
    }
    Ok((name, id, kind, key[1..].to_vec()))
}

/// A public key that verifies notes: a name, a key id and an Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    id: u32,
    kind: KeyType,
    key: VerifyingKey,
}

impl VerifierKey {
    /// Parses `name+hexid+base64(type || key)`, checking that the id matches the name and key.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let text = text.trim();
        let (name, id, kind, key) = split_key("verifier", text, text)?;
        let malformed = |reason: String| NoteError::MalformedKey {
            kind: "verifier",
            key: text.to_string(),
            reason,
        };
        let bytes: [u8; 32] = key
            .as_slice()
            .try_into()
            .map_err(|_| malformed("key length".into()))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|e| malformed(format!("not an Ed25519 point: {e}")))?;
        let expected = typed_key_id(name, kind, &bytes);
        if expected != id {
            return Err(malformed(format!(
                "key id {id:08x} does not match the name and key (expected {expected:08x})"
            )));
        }
        Ok(VerifierKey {
            name: name.to_string(),
            id,
            kind,
            key,
        })
    }

    /// What the key signs: notes, or witness cosignatures.
    pub fn key_type(&self) -> KeyType {
        self.kind
    }

    /// Checks one signature line's bytes (after the key id) from this key over a note's text.
    /// A plain key's signature is Ed25519 over the text; a witness key's is a timestamped
    /// `cosignature/v1`, whose time is returned.
    pub fn verify_note_signature(&self, text: &str, signature: &[u8]) -> Option<Option<u64>> {
        match self.kind {
            KeyType::Ed25519 => self
                .verify_signature(text.as_bytes(), signature)
                .then_some(None),
            KeyType::CosignatureV1 => {
                let (time, signature) = signature.split_at_checked(8)?;
                let timestamp = u64::from_be_bytes(time.try_into().ok()?);
                // The spec caps the time at 2^63 - 1.
                if timestamp > i64::MAX as u64 {
                    return None;
                }
                self.verify_signature(&cosigned_message(text, timestamp), signature)
                    .then_some(Some(timestamp))
            }
        }
    }

    /// The key name, which for a log is its origin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The key's short handle, `name+hexid`: what DSSE envelopes carry as `keyid`.
    pub fn handle(&self) -> String {
        format!("{}+{:08x}", self.name, self.id)
    }

    /// Checks an Ed25519 signature over `message`. Strict verification: it also rejects
    /// non-canonical signatures and small-order keys, which no honest signer produces.
    pub fn verify_signature(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.key.verify_strict(message, &signature).is_ok()
    }
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key = vec![self.kind.byte()];
        key.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.id, STANDARD.encode(key))
    }
}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifierKey({self})")
    }
}

/// A private key that signs notes.
#[derive(Clone)]
pub struct SignerKey {
    name: String,
    id: u32,
    kind: KeyType,
    key: SigningKey,
}

impl SignerKey {
    /// Makes a signer from a name and a 32-byte Ed25519 seed (the caller supplies the randomness,
    /// so this crate needs no access to the operating system).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, NoteError> {
        Self::from_seed_typed(name, KeyType::Ed25519, seed)
    }

    /// Makes a signer of the given type; [`KeyType::CosignatureV1`] makes a witness key.
    pub fn from_seed_typed(name: &str, kind: KeyType, seed: [u8; 32]) -> Result<Self, NoteError> {
        check_name(name)?;
        let key = SigningKey::from_bytes(&seed);
        let id = typed_key_id(name, kind, key.verifying_key().as_bytes());
        Ok(SignerKey {
            name: name.to_string(),
            id,
            kind,
            key,
        })
    }

    /// What the key signs: notes, or witness cosignatures.
    pub fn key_type(&self) -> KeyType {
        self.kind
    }

    /// Parses `PRIVATE+KEY+name+hexid+base64(type || seed)`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let text = text.trim();
        let Some(rest) = text.strip_prefix("PRIVATE+KEY+") else {
            return Err(NoteError::MalformedKey {
                kind: "signer",
                key: "(not shown)".into(),
                reason: "a signer key starts with PRIVATE+KEY+".into(),
            });
        };
        // Never echo the private part of the key in an error.
        let shown = format!("PRIVATE+KEY+{}+…", rest.split('+').next().unwrap_or(""));
        let (name, id, kind, seed) = split_key("signer", rest, &shown)?;
        let seed: [u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| NoteError::Malformed("seed length".into()))?;
        let signer = SignerKey::from_seed_typed(name, kind, seed)?;
        if signer.id != id {
            return Err(NoteError::MalformedKey {
                kind: "signer",
                key: shown,
                reason: format!(
                    "key id {id:08x} does not match the name and key (expected {:08x})",
                    signer.id
                ),
            });
        }
        Ok(signer)
    }

    /// The signer key in its text form, `PRIVATE+KEY+…`. Keep it secret.
    pub fn to_private_string(&self) -> String {
        let mut key = vec![self.kind.byte()];
        key.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.id,
            STANDARD.encode(key)
        )
    }

    /// The matching verifier key.
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            id: self.id,
            kind: self.kind,
            key: self.key.verifying_key(),
        }
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signs arbitrary bytes (for DSSE envelopes) and returns the 64-byte Ed25519 signature.
    pub fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Signs `text` and returns the complete signed note: the text, a blank line and one
    /// signature line.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        self.require(KeyType::Ed25519)?;
        check_text(text)?;
        let signature = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_be_bytes().to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        Ok(format!(
            "{text}\n{SIG_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        ))
    }

    /// Cosigns a note's text as a witness at `timestamp` (POSIX seconds) and returns the
    /// signature line, ending in a newline, to append to the note.
    pub fn cosign(&self, text: &str, timestamp: u64) -> Result<String, NoteError> {
        self.require(KeyType::CosignatureV1)?;
        check_text(text)?;
        if timestamp > i64::MAX as u64 {
            return Err(NoteError::Malformed(format!(
                "cosignature time {timestamp} is over 2^63 - 1"
            )));
        }
        let signature = self.key.sign(&cosigned_message(text, timestamp));
        let mut blob = self.id.to_be_bytes().to_vec();
        blob.extend_from_slice(&timestamp.to_be_bytes());
        blob.extend_from_slice(&signature.to_bytes());
        Ok(format!(
            "{SIG_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        ))
    }

    fn require(&self, wanted: KeyType) -> Result<(), NoteError> {
        if self.kind == wanted {
            return Ok(());
        }
        let label = |kind| match kind {
            KeyType::Ed25519 => "signing (0x01)",
            KeyType::CosignatureV1 => "witness cosignature/v1 (0x04)",
        };
        Err(NoteError::WrongKeyType {
            name: self.name.clone(),
            found: label(self.kind),
            wanted: label(wanted),
        })
    }
}

impl fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignerKey({}+{:08x}, private)", self.name, self.id)
    }
}

/// Checks what Go's `note.Sign` requires of a text: UTF-8 (guaranteed by `&str`), ends in a
/// newline, no control characters other than newline, no signature-like blank line inside.
fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::Malformed(
            "note text must end in a newline".into(),
        ));
    }
    if text.contains("\n\n") {
        return Err(NoteError::Malformed(
            "note text must not contain a blank line".into(),
        ));
    }
    if let Some(c) = text.chars().find(|&c| c.is_control() && c != '\n') {
        return Err(NoteError::Malformed(format!(
            "note text contains the control character {c:?}"
        )));
    }
    Ok(())
}

/// One signature line of a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    /// The signer's key name.
    pub name: String,
    /// The signer's key id.
    pub id: u32,
    /// The signature bytes (for Ed25519, 64 bytes).
    pub signature: Vec<u8>,
}

/// A parsed signed note whose signature from a given key has been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// The signed text, ending in a newline.
    pub text: String,
    /// Every signature line, verified or not.
    pub signatures: Vec<NoteSignature>,
}

impl Note {
    /// Parses a signed note without verifying anything (Go's `note.Open` minus the checks).
    pub fn parse(message: &[u8]) -> Result<Note, NoteError> {
        let message = std::str::from_utf8(message)
            .map_err(|_| NoteError::Malformed("note is not UTF-8".into()))?;
        let Some(split) = message.rfind("\n\n") else {
            return Err(NoteError::Malformed(
                "no blank line separates the text from the signatures".into(),
            ));
        };
        let text = &message[..split + 1];
        check_text(text)?;
        let sigs = &message[split + 2..];
        if sigs.is_empty() || !sigs.ends_with('\n') {
            return Err(NoteError::Malformed(
                "the signature block must be non-empty and end in a newline".into(),
            ));
        }
        let mut signatures = Vec::new();
        for line in sigs[..sigs.len() - 1].split('\n') {
            let Some(rest) = line.strip_prefix(SIG_PREFIX) else {
                return Err(NoteError::Malformed(format!(
                    "signature line {line:?} does not start with an em dash and a space"
                )));
            };
            let Some((name, blob)) = rest.split_once(' ') else {
                return Err(NoteError::Malformed(format!(
                    "signature line {line:?} has no space between name and signature"
                )));
            };
            check_name(name)?;
            let blob = STANDARD.decode(blob).map_err(|e| {
                NoteError::Malformed(format!("signature of {name} is not base64: {e}"))
            })?;
            if blob.len() < 5 {
                return Err(NoteError::Malformed(format!(
                    "signature of {name} is too short ({} bytes)",
                    blob.len()
                )));
            }
            signatures.push(NoteSignature {
                name: name.to_string(),
                id: u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]),
                signature: blob[4..].to_vec(),
            });
            if signatures.len() > MAX_SIGNATURES {
                return Err(NoteError::Malformed(format!(
                    "more than {MAX_SIGNATURES} signatures"
                )));
            }
        }
        Ok(Note {
            text: text.to_string(),
            signatures,
        })
    }

    /// Parses a note and checks that `verifier` signed it. Signatures from other keys are kept
    /// but not checked, as in Go's `note.Open` with one known key.
    pub fn open(message: &[u8], verifier: &VerifierKey) -> Result<Note, NoteError> {
        let note = Note::parse(message)?;
        note.signed_by(verifier)?;
        Ok(note)
    }

    /// Checks that `verifier` signed this note: at least one signature line carries its name
    /// and key id, and every such line verifies. Returns the cosignature time for a witness key
    /// (the latest, if it cosigned more than once), `None` for a plain key.
    pub fn signed_by(&self, verifier: &VerifierKey) -> Result<Option<u64>, NoteError> {
        let mut found = false;
        let mut time = None;
        for sig in self
            .signatures
            .iter()
            .filter(|s| s.name == verifier.name && s.id == verifier.id)
        {
            found = true;
            match verifier.verify_note_signature(&self.text, &sig.signature) {
                Some(t) => time = time.max(t),
                None => {
                    return Err(NoteError::BadSignature {
                        name: verifier.name.clone(),
                        id: verifier.id,
                    });
                }
            }
        }
        if !found {
            return Err(NoteError::NoSignatureFromKey {
                name: verifier.name.clone(),
                id: verifier.id,
            });
        }
        Ok(time)
    }

    /// The note written out again: the text, a blank line and every signature line.
    pub fn to_signed_string(&self) -> String {
        let mut out = format!("{}\n", self.text);
        for sig in &self.signatures {
            let mut blob = sig.id.to_be_bytes().to_vec();
            blob.extend_from_slice(&sig.signature);
            out.push_str(&format!(
                "{SIG_PREFIX}{} {}\n",
                sig.name,
                STANDARD.encode(blob)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from Go's golang.org/x/mod/sumdb/note note_test.go (see testdata/README.md of the
    // shared test data) and the C2SP signed-note specification's example.
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn go_sumdb_note_vector_signs_byte_for_byte() {
        let signer = SignerKey::parse(PETER_SKEY).expect("signer key");
        assert_eq!(signer.verifier().to_string(), PETER_VKEY);
        assert_eq!(signer.to_private_string(), PETER_SKEY);
        let note = signer.sign(PETER_TEXT).expect("sign");
        assert_eq!(note, format!("{PETER_TEXT}\n{PETER_SIG}"));
        let verifier = VerifierKey::parse(PETER_VKEY).expect("verifier key");
        let opened = Note::open(note.as_bytes(), &verifier).expect("open");
        assert_eq!(opened.text, PETER_TEXT);
    }

    #[test]
    fn c2sp_signed_note_example_verifies() {
        let verifier = VerifierKey::parse(
            "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        )
        .expect("verifier key");
        let note = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";
        Note::open(note.as_bytes(), &verifier).expect("open");
        let tampered = note.replace("example message", "example massage");
        assert!(matches!(
            Note::open(tampered.as_bytes(), &verifier),
            Err(NoteError::BadSignature { .. })
        ));
    }

    #[test]
    fn negative_cases_name_the_problem() {
        let verifier = VerifierKey::parse(PETER_VKEY).expect("verifier key");
        let note = format!("{PETER_TEXT}\n{PETER_SIG}");
        // A different key of the same name.
        let other = SignerKey::from_seed("PeterNeumann", [7; 32]).expect("key");
        assert!(matches!(
            Note::open(note.as_bytes(), &other.verifier()),
            Err(NoteError::NoSignatureFromKey { .. })
        ));
        // Every single-bit flip in the signature line fails.
        let sig_start = note.find('\u{2014}').expect("sig line");
        let bytes = note.as_bytes();
        for at in (sig_start + 16..bytes.len() - 2).step_by(3) {
            let mut bad = bytes.to_vec();
            bad[at] ^= 0x01;
            assert!(
                Note::open(&bad, &verifier).is_err(),
                "flip at {at} accepted"
            );
        }
        // Every single-bit flip in the text fails.
        for at in 0..PETER_TEXT.len() {
            let mut bad = bytes.to_vec();
            bad[at] ^= 0x02;
            assert!(
                Note::open(&bad, &verifier).is_err(),
                "flip at {at} accepted"
            );
        }
        for bad in [
            "no signatures\n".to_string(),
            format!("{PETER_TEXT}\n"),
            format!("{PETER_TEXT}\n- PeterNeumann abc\n"),
            format!("{PETER_TEXT}\n{}", PETER_SIG.trim_end()),
        ] {
            assert!(
                matches!(
                    Note::open(bad.as_bytes(), &verifier),
                    Err(NoteError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        // Key ids that do not match the key are rejected.
        assert!(matches!(
            VerifierKey::parse(&PETER_VKEY.replace("c74f20a3", "c74f20a4")),
            Err(NoteError::MalformedKey { .. })
        ));
        assert!(matches!(
            VerifierKey::parse("PeterNeumann+c74f20a3"),
            Err(NoteError::MalformedKey { .. })
        ));
        // Errors about signer keys never repeat the secret.
        let err = SignerKey::parse(&PETER_SKEY.replace("+AYEK", "+AYEL"))
            .expect_err("bad signer")
            .to_string();
        assert!(!err.contains("AYEL"), "{err}");
        // Texts Go refuses to sign.
        let signer = SignerKey::parse(PETER_SKEY).expect("signer key");
        assert!(signer.sign("no newline").is_err());
        assert!(signer.sign("blank\n\nline\n").is_err());
        assert!(signer.sign("tab\there\n").is_err());
    }

    #[test]
    fn cosignature_v1_signs_the_spec_message_and_verifies() {
        let witness =
            SignerKey::from_seed_typed("witness.example/w1", KeyType::CosignatureV1, [5; 32])
                .expect("witness key");
        let vkey = witness.verifier();
        // The vkey carries type byte 0x04 and the key id hashes it (C2SP tlog-cosignature).
        let encoded = STANDARD
            .decode(vkey.to_string().rsplit('+').next().expect("key part"))
            .expect("base64");
        assert_eq!(encoded[0], 0x04);
        assert_eq!(
            vkey.id(),
            typed_key_id(
                "witness.example/w1",
                KeyType::CosignatureV1,
                encoded[1..].try_into().expect("32")
            )
        );
        assert_ne!(
            vkey.id(),
            key_id("witness.example/w1", encoded[1..].try_into().expect("32"))
        );
        assert_eq!(VerifierKey::parse(&vkey.to_string()).expect("parse"), vkey);
        assert_eq!(
            SignerKey::parse(&witness.to_private_string())
                .expect("parse")
                .verifier(),
            vkey
        );

        let log = SignerKey::from_seed("example.com/behind-the-sofa", [6; 32]).expect("log key");
        let text =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let line = witness.cosign(text, 1_679_315_147).expect("cosign");
        let signed = format!("{}{line}", log.sign(text).expect("sign"));
        // The signature bytes are key id || big-endian time || Ed25519 over the spec's message.
        let blob = STANDARD
            .decode(line.trim_end().rsplit(' ').next().expect("blob"))
            .expect("base64");
        assert_eq!(blob.len(), 4 + 8 + 64);
        assert_eq!(&blob[4..12], &1_679_315_147u64.to_be_bytes());
        let message = format!("cosignature/v1\ntime 1679315147\n{text}");
        assert!(vkey.verify_signature(message.as_bytes(), &blob[12..]));

        let note = Note::parse(signed.as_bytes()).expect("parse");
        assert_eq!(
            note.signed_by(&vkey).expect("cosigned"),
            Some(1_679_315_147)
        );
        assert_eq!(note.signed_by(&log.verifier()).expect("signed"), None);
        assert_eq!(note.to_signed_string(), signed);
        // A flipped time or text fails; a plain key cannot cosign nor a witness key sign.
        let mut bad = blob.clone();
        bad[11] ^= 1;
        assert!(vkey.verify_note_signature(text, &bad[4..]).is_none());
        assert!(vkey.verify_note_signature("other\n", &blob[4..]).is_none());
        assert!(matches!(
            log.cosign(text, 1),
            Err(NoteError::WrongKeyType { .. })
        ));
        assert!(matches!(
            witness.sign(text),
            Err(NoteError::WrongKeyType { .. })
        ));
    }
}
