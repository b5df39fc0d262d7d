//! DSSE envelopes (Dead Simple Signing Envelope, <https://github.com/secure-systems-lab/dsse>,
//! protocol v1) signed with Ed25519 keys in the signed-note key format.
//!
//! A signature covers `PAE(payloadType, payload)`, never the JSON around it, so re-serializing an
//! envelope cannot change what was signed. `keyid` is the signer's key handle `name+hexid`, the
//! first two fields of its verifier key; it only selects a key and is never trusted by itself.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use serde::{Deserialize, Serialize};

use crate::note::{SignerKey, VerifierKey};

/// The payload type of an in-toto Statement.
pub const INTOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// The largest envelope accepted, in bytes of JSON. Envelopes are stored in ledger entries,
/// which are at most 1 MiB.
pub const MAX_ENVELOPE_LEN: usize = 900 * 1024;

/// Why an envelope is malformed or does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DsseError {
    /// Not a DSSE envelope.
    #[error("not a DSSE envelope: {0}")]
    Malformed(String),
    /// The envelope is larger than [`MAX_ENVELOPE_LEN`].
    #[error("the DSSE envelope is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload type is not the one expected.
    #[error("the envelope's payloadType is {got:?}, expected {want:?}")]
    PayloadType {
        /// What the envelope says.
        got: String,
        /// What the caller expects.
        want: String,
    },
    /// No signature by the given key.
    #[error("the envelope has no signature by key {key} (it is signed by: {signed_by})")]
    NotSignedBy {
        /// The key handle looked for.
        key: String,
        /// The key ids the envelope names.
        signed_by: String,
    },
    /// A signature by the key is present but does not verify.
    #[error(
        "the signature by key {key} does not verify: the payload or signature was altered, or another key signed it"
    )]
    BadSignature {
        /// The key handle.
        key: String,
    },
}

/// One signature in an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The signer's key handle, `name+hexid`.
    #[serde(default)]
    pub keyid: String,
    /// Base64 of the 64-byte Ed25519 signature over the PAE.
    pub sig: String,
}

/// A DSSE envelope as it is written in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Base64 of the payload bytes.
    pub payload: String,
    /// What the payload is, e.g. [`INTOTO_PAYLOAD_TYPE`].
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// One or more signatures.
    pub signatures: Vec<Signature>,
}

/// The pre-authentication encoding: `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, with
/// lengths in ASCII decimal.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Decodes base64 in the standard or the URL-safe alphabet, as the DSSE spec asks verifiers to.
fn decode_base64(field: &str, text: &str) -> Result<Vec<u8>, DsseError> {
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .map_err(|e| DsseError::Malformed(format!("{field} is not base64: {e}")))
}

impl Envelope {
    /// Signs `payload` as `payload_type` with `key`.
    pub fn sign(payload_type: &str, payload: &[u8], key: &SignerKey) -> Envelope {
        let signature = key.sign_bytes(&pae(payload_type, payload));
        Envelope {
            payload: STANDARD.encode(payload),
            payload_type: payload_type.to_string(),
            signatures: vec![Signature {
                keyid: key.verifier().handle(),
                sig: STANDARD.encode(signature),
            }],
        }
    }

    /// Adds a signature by `key` over the same payload, for statements that need more than one
    /// signer (a key rotation is signed by the old and the new key).
    pub fn cosign(&mut self, key: &SignerKey) {
        let payload = self.payload_bytes().unwrap_or_default();
        let signature = key.sign_bytes(&pae(&self.payload_type, &payload));
        self.signatures.push(Signature {
            keyid: key.verifier().handle(),
            sig: STANDARD.encode(signature),
        });
    }

    /// Parses an envelope from JSON, bounded by [`MAX_ENVELOPE_LEN`].
    pub fn parse(json: &[u8]) -> Result<Envelope, DsseError> {
        if json.len() > MAX_ENVELOPE_LEN {
            return Err(DsseError::TooLarge {
                len: json.len(),
                max: MAX_ENVELOPE_LEN,
            });
        }
        let envelope: Envelope =
            serde_json::from_slice(json).map_err(|e| DsseError::Malformed(e.to_string()))?;
        if envelope.signatures.is_empty() {
            return Err(DsseError::Malformed("signatures is empty".into()));
        }
        Ok(envelope)
    }

    /// The envelope as compact JSON.
    pub fn to_json(&self) -> String {
        // Serializing strings and a vector of structs into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The payload bytes, unverified.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, DsseError> {
        decode_base64("payload", &self.payload)
    }

    /// Verifies the signature by `key` over the payload and returns the payload. Signatures by
    /// other keys are ignored; one valid signature by `key` is required.
    pub fn verify(&self, payload_type: &str, key: &VerifierKey) -> Result<Vec<u8>, DsseError> {
        if self.payload_type != payload_type {
            return Err(DsseError::PayloadType {
                got: self.payload_type.clone(),
                want: payload_type.to_string(),
            });
        }
        let payload = self.payload_bytes()?;
        let handle = key.handle();
        let message = pae(&self.payload_type, &payload);
        let mut candidates = self
            .signatures
            .iter()
            .filter(|s| s.keyid == handle || s.keyid.is_empty())
            .peekable();
        if candidates.peek().is_none() {
            return Err(DsseError::NotSignedBy {
                key: handle,
                signed_by: self
                    .signatures
                    .iter()
                    .map(|s| s.keyid.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        for signature in candidates {
            let bytes = decode_base64("signatures[].sig", &signature.sig)?;
            if key.verify_signature(&message, &bytes) {
                return Ok(payload);
            }
        }
        Err(DsseError::BadSignature { key: handle })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SignerKey {
        SignerKey::from_seed("publisher.example", [7; 32]).expect("valid name")
    }

    /// The PAE test vector of the DSSE specification (protocol.md, "Test Vectors"):
    /// PAE("http://example.com/HelloWorld", "hello world").
    #[test]
    fn pae_matches_the_spec_vector() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let key = key();
        let envelope = Envelope::sign(INTOTO_PAYLOAD_TYPE, b"{\"a\":1}", &key);
        let parsed = Envelope::parse(envelope.to_json().as_bytes()).expect("parses");
        assert_eq!(parsed, envelope);
        assert_eq!(
            parsed
                .verify(INTOTO_PAYLOAD_TYPE, &key.verifier())
                .expect("verifies"),
            b"{\"a\":1}"
        );
    }

    #[test]
    fn rejects_tampering_other_keys_and_types() {
        let key = key();
        let envelope = Envelope::sign(INTOTO_PAYLOAD_TYPE, b"payload", &key);

        let mut altered = envelope.clone();
        altered.payload = STANDARD.encode(b"payloaD");
        assert_eq!(
            altered.verify(INTOTO_PAYLOAD_TYPE, &key.verifier()),
            Err(DsseError::BadSignature {
                key: key.verifier().handle()
            })
        );

        // The same payload under another type is another message.
        let mut retyped = envelope.clone();
        retyped.payload_type = "text/plain".into();
        assert!(matches!(
            retyped.verify("text/plain", &key.verifier()),
            Err(DsseError::BadSignature { .. })
        ));
        assert!(matches!(
            envelope.verify("text/plain", &key.verifier()),
            Err(DsseError::PayloadType { .. })
        ));

        let other = SignerKey::from_seed("publisher.example", [8; 32]).expect("valid");
        assert!(matches!(
            envelope.verify(INTOTO_PAYLOAD_TYPE, &other.verifier()),
            Err(DsseError::NotSignedBy { .. })
        ));

        // A signature relabelled with the other key's id still fails: the key id is a hint.
        let mut relabelled = envelope.clone();
        relabelled.signatures[0].keyid = other.verifier().handle();
        assert!(matches!(
            relabelled.verify(INTOTO_PAYLOAD_TYPE, &other.verifier()),
            Err(DsseError::BadSignature { .. })
        ));

        // Every single-bit flip of the signature is caught.
        let sig = STANDARD
            .decode(&envelope.signatures[0].sig)
            .expect("base64");
        for bit in 0..sig.len() * 8 {
            let mut flipped = sig.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let mut bad = envelope.clone();
            bad.signatures[0].sig = STANDARD.encode(&flipped);
            assert!(bad.verify(INTOTO_PAYLOAD_TYPE, &key.verifier()).is_err());
        }
    }

    #[test]
    fn parse_rejects_malformed_envelopes() {
        for bad in [
            "",
            "{}",
            r#"{"payload":"","payloadType":"x","signatures":[]}"#,
            r#"{"payload":"","payloadType":"x","signatures":[{"sig":""}],"extra":1}"#,
            "[1,2]",
        ] {
            assert!(Envelope::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let big = vec![b' '; MAX_ENVELOPE_LEN + 1];
        assert!(matches!(
            Envelope::parse(&big),
            Err(DsseError::TooLarge { .. })
        ));
    }
}
