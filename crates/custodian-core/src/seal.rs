//! Sealed entries: a ledger entry that commits to an event without showing it.
//!
//! The log's entries are public through tlog-tiles entry bundles, which carry each entry's bytes
//! to anyone and cap an entry at 65,535 bytes. Two kinds of event cannot be shown that way: an
//! event about a private package (its bytes name the package, readable only with a grant), and an
//! event too large for a bundle (a `PackagePublished` carries the whole signed envelope, about
//! 320 bytes per file). Both are written as a `Sealed` entry whose payload is only
//! `{body: "sha256:<hex>", size}`; the body — the deterministic CBOR map `{kind, payload, salt}`
//! with 16 random bytes of salt, so that nobody can confirm a guess of a private event by hashing
//! it — is kept in custody, readable exactly when the event would be. Whoever holds the body
//! checks it against the digest the log committed to and reads the event from it
//! ([`unseal`]); the entry's index, time and chain position are the sealed entry's.

use ciborium::Value;

use crate::digest::{Algorithm, Digest};
use crate::entry::{Entry, EntryError, EntryKind, canonicalize_payload, encode_value, parse_cbor};

/// Payload encodings longer than this are sealed, whatever their privacy: with the entry's own
/// fields it keeps every entry far below a bundle's 65,535-byte limit.
pub const SEAL_OVER: usize = 32 * 1024;

/// Why a body does not unseal an entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The entry is not a well-formed `Sealed` entry.
    #[error("not a sealed entry: {0}")]
    NotSealed(String),
    /// The body's digest or size is not the one the entry commits to.
    #[error("the body is {found}, the sealed entry commits to {expected}")]
    WrongBody {
        /// What the entry commits to.
        expected: String,
        /// What the body is.
        found: String,
    },
    /// The body does not decode as a sealed body.
    #[error("the sealed body is malformed: {0}")]
    Malformed(String),
}

/// What a sealed entry stands for: the event's kind and payload, and the salt.
#[derive(Clone, Debug, PartialEq)]
pub struct SealedBody {
    /// The event's kind.
    pub kind: EntryKind,
    /// The event's payload, in deterministic form.
    pub payload: Value,
    /// Random bytes that make the body unguessable.
    pub salt: [u8; 16],
}

impl SealedBody {
    /// The body's deterministic CBOR encoding (keys in RFC 8949 §4.2.1 order).
    pub fn encode(&self) -> Vec<u8> {
        encode_value(&Value::Map(vec![
            (
                Value::Text("kind".into()),
                Value::Text(self.kind.as_str().into()),
            ),
            (Value::Text("salt".into()), Value::Bytes(self.salt.to_vec())),
            (Value::Text("payload".into()), self.payload.clone()),
        ]))
    }

    /// Decodes a body, refusing anything but the deterministic encoding of a valid one.
    pub fn decode(bytes: &[u8]) -> Result<Self, SealError> {
        let bad = |reason: String| SealError::Malformed(reason);
        let Value::Map(fields) = parse_cbor(bytes).map_err(|e| bad(e.to_string()))? else {
            return Err(bad("a body is a CBOR map".into()));
        };
        let (mut kind, mut salt, mut payload) = (None, None, None);
        for (key, value) in fields {
            match (key.as_text(), value) {
                (Some("kind"), Value::Text(k)) => {
                    kind = Some(EntryKind::parse(&k).map_err(|e| bad(e.to_string()))?)
                }
                (Some("salt"), Value::Bytes(s)) => {
                    salt = Some(
                        <[u8; 16]>::try_from(s.as_slice())
                            .map_err(|_| bad("the salt is 16 bytes".into()))?,
                    )
                }
                (Some("payload"), value) => payload = Some(value),
                (key, _) => return Err(bad(format!("unexpected field {key:?}"))),
            }
        }
        let (Some(kind), Some(salt), Some(payload)) = (kind, salt, payload) else {
            return Err(bad("a body has kind, salt and payload".into()));
        };
        if kind == EntryKind::Sealed {
            return Err(bad("a sealed body cannot hold another sealed entry".into()));
        }
        let body = SealedBody {
            kind,
            payload: canonicalize_payload(payload).map_err(|e| bad(e.to_string()))?,
            salt,
        };
        if body.encode() != bytes {
            return Err(bad("the body is not in deterministic form".into()));
        }
        Ok(body)
    }
}

/// Whether an event's payload must be sealed: it is about a private package, or it is large.
pub fn must_seal(payload: &Value) -> bool {
    let private = matches!(payload, Value::Map(pairs) if pairs.iter().any(|(k, v)| {
        k.as_text() == Some("private") && matches!(v, Value::Bool(true))
    }));
    private || encode_value(payload).len() > SEAL_OVER
}

/// The payload of the `Sealed` entry standing for `body` (its encoded bytes).
pub fn sealed_payload(body: &[u8]) -> Value {
    Value::Map(vec![
        (
            Value::Text("body".into()),
            Value::Text(Digest::of(Algorithm::Sha256, body).to_string()),
        ),
        (
            Value::Text("size".into()),
            Value::Integer((body.len() as u64).into()),
        ),
    ])
}

/// The body digest and size a `Sealed` entry commits to.
pub fn commitment(entry: &Entry) -> Result<(Digest, u64), SealError> {
    if entry.kind != EntryKind::Sealed {
        return Err(SealError::NotSealed(format!(
            "the entry is a {}",
            entry.kind
        )));
    }
    let Value::Map(pairs) = &entry.payload else {
        return Err(SealError::NotSealed("the payload is not a map".into()));
    };
    let field = |name: &str| pairs.iter().find(|(k, _)| k.as_text() == Some(name));
    let digest = match field("body") {
        Some((_, Value::Text(text))) => text
            .parse::<Digest>()
            .ok()
            .filter(|d| d.algorithm() == Algorithm::Sha256)
            .ok_or_else(|| SealError::NotSealed(format!("body {text:?} is not a sha256 digest")))?,
        _ => return Err(SealError::NotSealed("no body digest".into())),
    };
    let size = match field("size") {
        Some((_, Value::Integer(n))) => u64::try_from(*n)
            .map_err(|_| SealError::NotSealed("the size is not a byte count".into()))?,
        _ => return Err(SealError::NotSealed("no body size".into())),
    };
    if pairs.len() != 2 {
        return Err(SealError::NotSealed("unexpected payload fields".into()));
    }
    Ok((digest, size))
}

/// The event a `Sealed` entry stands for, given its body: the body must be the one the entry
/// commits to. The result has the sealed entry's `prev` and time and the body's kind and payload
/// (its leaf hash is not the log's: the log committed to the sealed entry).
pub fn unseal(entry: &Entry, body: &[u8]) -> Result<Entry, SealError> {
    let (digest, size) = commitment(entry)?;
    let found = Digest::of(Algorithm::Sha256, body);
    if found != digest || body.len() as u64 != size {
        return Err(SealError::WrongBody {
            expected: format!("{digest} ({size} bytes)"),
            found: format!("{found} ({} bytes)", body.len()),
        });
    }
    let body = SealedBody::decode(body)?;
    Entry::new(body.kind, entry.prev, entry.time_ms, body.payload)
        .map_err(|e: EntryError| SealError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::Hash;

    fn private_event() -> Value {
        Value::Map(vec![
            (Value::Text("name".into()), Value::Text("@acme/bot".into())),
            (Value::Text("private".into()), Value::Bool(true)),
        ])
    }

    #[test]
    fn a_sealed_entry_shows_nothing_and_unseals_only_with_its_body() {
        assert!(must_seal(&private_event()));
        assert!(!must_seal(&Value::Map(vec![(
            Value::Text("private".into()),
            Value::Bool(false)
        )])));
        assert!(must_seal(&Value::Bytes(vec![1; SEAL_OVER + 1])));
        let body = SealedBody {
            kind: EntryKind::PackagePublished,
            payload: private_event(),
            salt: [9; 16],
        };
        let bytes = body.encode();
        let sealed = Entry::new(EntryKind::Sealed, Hash([1; 32]), 42, sealed_payload(&bytes))
            .expect("sealed entry");
        let encoded = sealed.encode();
        assert!(
            !encoded.windows(4).any(|w| w == b"acme"),
            "the sealed entry names the package"
        );
        let entry = Entry::decode(&encoded).expect("decode");
        let open = unseal(&entry, &bytes).expect("unseal");
        assert_eq!(
            (open.kind, open.prev, open.time_ms, &open.payload),
            (
                EntryKind::PackagePublished,
                Hash([1; 32]),
                42,
                &private_event()
            )
        );
        // Another body, a changed byte, a truncated body, a body of the right digest but a
        // nested seal: all refused.
        let other = SealedBody {
            salt: [8; 16],
            ..body.clone()
        }
        .encode();
        assert!(matches!(
            unseal(&entry, &other),
            Err(SealError::WrongBody { .. })
        ));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(unseal(&entry, &flipped).is_err());
        assert!(unseal(&entry, &bytes[..bytes.len() - 1]).is_err());
        let nested = SealedBody {
            kind: EntryKind::Sealed,
            ..body
        }
        .encode();
        let wrapper =
            Entry::new(EntryKind::Sealed, Hash::ZERO, 1, sealed_payload(&nested)).expect("entry");
        assert!(matches!(
            unseal(&wrapper, &nested),
            Err(SealError::Malformed(_))
        ));
        // Not a sealed entry at all.
        let plain = Entry::new(EntryKind::KeyEvent, Hash::ZERO, 1, private_event()).expect("e");
        assert!(matches!(
            unseal(&plain, &bytes),
            Err(SealError::NotSealed(_))
        ));
    }
}
