//! OpenSSF model-signing (OMS) v1.0 signatures, so that a Behavior Package verifies with the ML
//! world's `model_signing` tool and a folder it signed verifies here.
//!
//! The signature file (`model.sig`, beside the files) is a Sigstore bundle v0.3 (media type
//! [`BUNDLE_MEDIA_TYPE`]) whose `dsseEnvelope` carries an in-toto Statement v1 with predicate type
//! [`OMS_PREDICATE_TYPE`]; the verification material is a public-key hint (the sha256, in hex,
//! of the key's PEM SubjectPublicKeyInfo) and no transparency-log entries. The predicate lists
//! every file as a resource `{name, algorithm: sha256, digest}` in path order (compared
//! component by component), and the serialization that produced the list (`method: files`,
//! `hash_type: sha256`, `allow_symlinks: false`, `ignore_paths`). The subject is the model's
//! name and, as its sha256, the hash of every resource digest's bytes concatenated in that
//! order. The envelope is signed with ECDSA over the DSSE PAE: P-256 with SHA-256, P-384 with
//! SHA-384, P-521 with SHA-512, DER-encoded — the keys OMS accepts (not Ed25519).
//!
//! This follows `model_signing` 1.1.1 (PyPI), `_signing/signing.py` and `_signing/sign_ec_key.py`,
//! which the tests run against.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::digest::{Algorithm, Digest};
use crate::dsse::{INTOTO_PAYLOAD_TYPE, pae};

/// The predicate type of an OMS v1.0 signature.
pub const OMS_PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// The Sigstore bundle media type OMS writes.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Where OMS keeps its signature in a model folder.
pub const SIGNATURE_FILE: &str = "model.sig";
/// The paths `model_signing` always leaves out of a folder's serialization.
pub const GIT_PATHS: [&str; 4] = [".git", ".gitattributes", ".github", ".gitignore"];

/// Why an OMS signature or key is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OmsError {
    /// The key is not an ECDSA P-256, P-384 or P-521 key in PEM.
    #[error("key: {0}")]
    Key(String),
    /// A field of the bundle or its statement is missing or wrong; the message names it.
    #[error("field {field}: {reason}")]
    Field {
        /// The field, e.g. `dsseEnvelope.signatures[0].sig`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify with the key.
    #[error("the signature does not verify with the given key")]
    Signature,
    /// The signature is valid but signs other files than the package holds.
    #[error("the OMS signature signs other files than the package holds: {}", .0.join("; "))]
    Files(Vec<String>),
}

fn field(name: &str, reason: impl Into<String>) -> OmsError {
    OmsError::Field {
        field: name.to_string(),
        reason: reason.into(),
    }
}

/// An ECDSA public key of a curve OMS accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// NIST P-256, verified with SHA-256.
    P256(p256::ecdsa::VerifyingKey),
    /// NIST P-384, verified with SHA-384.
    P384(p384::ecdsa::VerifyingKey),
    /// NIST P-521, verified with SHA-512.
    P521(p521::PublicKey),
}

/// An ECDSA private key of a curve OMS accepts.
pub enum PrivateKey {
    /// NIST P-256.
    P256(p256::ecdsa::SigningKey),
    /// NIST P-384.
    P384(p384::ecdsa::SigningKey),
    /// NIST P-521, with its public key (its signing key type does not give one back as a
    /// public key).
    P521(Box<(p521::ecdsa::SigningKey, p521::PublicKey)>),
}

impl PublicKey {
    /// Parses a PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(text: &str) -> Result<PublicKey, OmsError> {
        use p256::pkcs8::DecodePublicKey as _;
        if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_pem(text) {
            return Ok(PublicKey::P256(key));
        }
        if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_pem(text) {
            return Ok(PublicKey::P384(key));
        }
        if let Ok(key) = p521::PublicKey::from_public_key_pem(text) {
            return Ok(PublicKey::P521(key));
        }
        Err(OmsError::Key(
            "not a PEM public key on P-256, P-384 or P-521 (OMS signs with ECDSA on those curves; Ed25519 is not accepted)".into(),
        ))
    }

    /// The key as PEM SubjectPublicKeyInfo with LF line endings, as `model_signing` writes it.
    pub fn to_pem(&self) -> String {
        use p256::pkcs8::{EncodePublicKey as _, LineEnding};
        let pem = match self {
            PublicKey::P256(k) => k.to_public_key_pem(LineEnding::LF),
            PublicKey::P384(k) => k.to_public_key_pem(LineEnding::LF),
            PublicKey::P521(k) => k.to_public_key_pem(LineEnding::LF),
        };
        pem.unwrap_or_default()
    }

    /// The bundle's public-key hint: the sha256, in hex, of [`PublicKey::to_pem`].
    pub fn hint(&self) -> String {
        Digest::of(Algorithm::Sha256, self.to_pem().as_bytes()).hex()
    }

    /// The curve's name, as OMS and OpenSSL call it.
    pub fn curve(&self) -> &'static str {
        match self {
            PublicKey::P256(_) => "secp256r1",
            PublicKey::P384(_) => "secp384r1",
            PublicKey::P521(_) => "secp521r1",
        }
    }

    /// Verifies a DER-encoded ECDSA signature over `message` with the curve's hash.
    pub fn verify(&self, message: &[u8], der: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier as _;
        match self {
            PublicKey::P256(k) => {
                p256::ecdsa::Signature::from_der(der).is_ok_and(|s| k.verify(message, &s).is_ok())
            }
            PublicKey::P384(k) => {
                p384::ecdsa::Signature::from_der(der).is_ok_and(|s| k.verify(message, &s).is_ok())
            }
            PublicKey::P521(k) => {
                let Ok(key) = p521::ecdsa::VerifyingKey::from_affine(*k.as_affine()) else {
                    return false;
                };
                p521::ecdsa::Signature::from_der(der).is_ok_and(|s| key.verify(message, &s).is_ok())
            }
        }
    }
}

impl PrivateKey {
    /// Parses a PEM private key: PKCS#8 (`-----BEGIN PRIVATE KEY-----`) or SEC1
    /// (`-----BEGIN EC PRIVATE KEY-----`), unencrypted.
    pub fn from_pem(text: &str) -> Result<PrivateKey, OmsError> {
        use p256::pkcs8::DecodePrivateKey as _;
        if let Ok(key) =
            p256::SecretKey::from_pkcs8_pem(text).or_else(|_| p256::SecretKey::from_sec1_pem(text))
        {
            return Ok(PrivateKey::P256(key.into()));
        }
        if let Ok(key) =
            p384::SecretKey::from_pkcs8_pem(text).or_else(|_| p384::SecretKey::from_sec1_pem(text))
        {
            return Ok(PrivateKey::P384(key.into()));
        }
        if let Ok(key) =
            p521::SecretKey::from_pkcs8_pem(text).or_else(|_| p521::SecretKey::from_sec1_pem(text))
        {
            let public = key.public_key();
            return p521::ecdsa::SigningKey::from_bytes(&key.to_bytes())
                .map(|signing| PrivateKey::P521(Box::new((signing, public))))
                .map_err(|e| OmsError::Key(format!("a P-521 key that does not load: {e}")));
        }
        Err(OmsError::Key(
            "not an unencrypted PEM private key on P-256, P-384 or P-521 (OMS signs with ECDSA on those curves; Ed25519 is not accepted)".into(),
        ))
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        match self {
            PrivateKey::P256(k) => PublicKey::P256(*k.verifying_key()),
            PrivateKey::P384(k) => PublicKey::P384(*k.verifying_key()),
            PrivateKey::P521(pair) => PublicKey::P521(pair.1),
        }
    }

    /// Signs `message` with the curve's hash; the signature DER-encoded.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer as _;
        match self {
            PrivateKey::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign(message);
                s.to_der().as_bytes().to_vec()
            }
            PrivateKey::P384(k) => {
                let s: p384::ecdsa::Signature = k.sign(message);
                s.to_der().as_bytes().to_vec()
            }
            PrivateKey::P521(pair) => {
                let s: p521::ecdsa::Signature = pair.0.sign(message);
                s.to_der().as_bytes().to_vec()
            }
        }
    }
}

/// The Sigstore bundle, as far as OMS uses it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: String,
    verification_material: VerificationMaterial,
    dsse_envelope: Envelope,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerificationMaterial {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_key: Option<KeyHint>,
    #[serde(default)]
    tlog_entries: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct KeyHint {
    #[serde(default)]
    hint: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct EnvelopeSignature {
    sig: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keyid: Option<String>,
}

/// What a verified OMS signature says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// The model's name (the subject's name; informative only).
    pub model_name: String,
    /// Every signed file, by its path relative to the folder: its sha256.
    pub files: BTreeMap<String, Digest>,
    /// The paths the signer left out (relative to the folder).
    pub ignore_paths: Vec<String>,
}

/// Orders paths as `model_signing` does: component by component (Python's `PurePosixPath`
/// ordering), so `a/b` comes before `a.txt`.
fn path_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

/// The in-toto Statement an OMS signature signs for `files` (relative path → sha256).
pub fn statement(
    model_name: &str,
    files: &BTreeMap<String, Digest>,
    ignore_paths: &[String],
) -> serde_json::Value {
    let mut names: Vec<&String> = files.keys().collect();
    names.sort_by(|a, b| path_order(a, b));
    let mut root = crate::digest::StreamHasher::new(Algorithm::Sha256);
    let resources: Vec<serde_json::Value> = names
        .iter()
        .map(|name| {
            let digest = &files[*name];
            root.update(digest.bytes());
            serde_json::json!({"name": name, "algorithm": "sha256", "digest": digest.hex()})
        })
        .collect();
    let mut serialization = serde_json::json!({
        "method": "files", "hash_type": "sha256", "allow_symlinks": false,
    });
    if !ignore_paths.is_empty() {
        serialization["ignore_paths"] = ignore_paths.into();
    }
    serde_json::json!({
        "_type": crate::package::STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root.finalize().hex()}}],
        "predicateType": OMS_PREDICATE_TYPE,
        "predicate": {"serialization": serialization, "resources": resources},
    })
}

/// Signs `files` as an OMS v1.0 signature; returns the `model.sig` text.
pub fn sign(
    model_name: &str,
    files: &BTreeMap<String, Digest>,
    ignore_paths: &[String],
    key: &PrivateKey,
) -> String {
    let payload =
        serde_json::to_vec(&statement(model_name, files, ignore_paths)).unwrap_or_default();
    let signature = key.sign(&pae(INTOTO_PAYLOAD_TYPE, &payload));
    let bundle = Bundle {
        media_type: BUNDLE_MEDIA_TYPE.into(),
        verification_material: VerificationMaterial {
            public_key: Some(KeyHint {
                hint: Some(key.public().hint()),
            }),
            tlog_entries: Vec::new(),
        },
        dsse_envelope: Envelope {
            payload: STANDARD.encode(&payload),
            payload_type: INTOTO_PAYLOAD_TYPE.into(),
            signatures: vec![EnvelopeSignature {
                sig: STANDARD.encode(signature),
                keyid: None,
            }],
        },
    };
    serde_json::to_string_pretty(&bundle).unwrap_or_default()
}

/// Verifies an OMS signature with `key` and returns what it signs. Every step names the field
/// that fails: the media type, the key hint, the envelope's payload type and signature, the
/// statement's type, predicate type, serialization, resources and subject digest.
pub fn verify(bundle_json: &[u8], key: &PublicKey) -> Result<Signed, OmsError> {
    let bundle: Bundle = serde_json::from_slice(bundle_json)
        .map_err(|e| field("(bundle)", format!("not a Sigstore bundle: {e}")))?;
    if bundle.media_type != BUNDLE_MEDIA_TYPE {
        return Err(field(
            "mediaType",
            format!("is {:?}, expected {BUNDLE_MEDIA_TYPE:?}", bundle.media_type),
        ));
    }
    if let Some(hint) = bundle
        .verification_material
        .public_key
        .as_ref()
        .and_then(|k| k.hint.as_deref())
        && hint != key.hint()
    {
        return Err(field(
            "verificationMaterial.publicKey.hint",
            format!(
                "is {hint}, but the given key's is {}: the signature names another key",
                key.hint()
            ),
        ));
    }
    let envelope = &bundle.dsse_envelope;
    if envelope.payload_type != INTOTO_PAYLOAD_TYPE {
        return Err(field(
            "dsseEnvelope.payloadType",
            format!(
                "is {:?}, expected {INTOTO_PAYLOAD_TYPE:?}",
                envelope.payload_type
            ),
        ));
    }
    let payload = STANDARD
        .decode(&envelope.payload)
        .map_err(|e| field("dsseEnvelope.payload", format!("not base64: {e}")))?;
    let [signature] = envelope.signatures.as_slice() else {
        return Err(field(
            "dsseEnvelope.signatures",
            format!(
                "holds {} signatures, OMS signs with one",
                envelope.signatures.len()
            ),
        ));
    };
    let der = STANDARD
        .decode(&signature.sig)
        .map_err(|e| field("dsseEnvelope.signatures[0].sig", format!("not base64: {e}")))?;
    if !key.verify(&pae(INTOTO_PAYLOAD_TYPE, &payload), &der) {
        return Err(OmsError::Signature);
    }
    let statement: serde_json::Value = serde_json::from_slice(&payload)
        .map_err(|e| field("dsseEnvelope.payload", format!("not JSON: {e}")))?;
    read_statement(&statement)
}

fn read_statement(statement: &serde_json::Value) -> Result<Signed, OmsError> {
    let text = |value: &serde_json::Value, name: &str| {
        value
            .as_str()
            .map(String::from)
            .ok_or_else(|| field(name, "is missing or not a string"))
    };
    if text(&statement["_type"], "_type")? != crate::package::STATEMENT_TYPE {
        return Err(field("_type", "is not an in-toto Statement v1"));
    }
    let predicate_type = text(&statement["predicateType"], "predicateType")?;
    if predicate_type != OMS_PREDICATE_TYPE {
        return Err(field(
            "predicateType",
            format!("is {predicate_type:?}, expected {OMS_PREDICATE_TYPE:?}"),
        ));
    }
    let subjects = statement["subject"]
        .as_array()
        .ok_or_else(|| field("subject", "is missing"))?;
    let [subject] = subjects.as_slice() else {
        return Err(field("subject", "must hold exactly one subject"));
    };
    let model_name = text(&subject["name"], "subject[0].name")?;
    let root = text(&subject["digest"]["sha256"], "subject[0].digest.sha256")?;
    let predicate = &statement["predicate"];
    let serialization = &predicate["serialization"];
    if text(&serialization["method"], "predicate.serialization.method")? != "files" {
        return Err(field(
            "predicate.serialization.method",
            "only \"files\" is read here (not shards)",
        ));
    }
    if text(
        &serialization["hash_type"],
        "predicate.serialization.hash_type",
    )? != "sha256"
    {
        return Err(field(
            "predicate.serialization.hash_type",
            "only sha256 is read here",
        ));
    }
    if serialization["allow_symlinks"].as_bool() == Some(true) {
        return Err(field(
            "predicate.serialization.allow_symlinks",
            "is true; packages hold regular files only",
        ));
    }
    let ignore_paths = match &serialization["ignore_paths"] {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|v| text(v, "predicate.serialization.ignore_paths[]"))
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(field(
                "predicate.serialization.ignore_paths",
                "is not a list",
            ));
        }
    };
    let resources = predicate["resources"]
        .as_array()
        .ok_or_else(|| field("predicate.resources", "is missing"))?;
    let mut hasher = crate::digest::StreamHasher::new(Algorithm::Sha256);
    let mut files = BTreeMap::new();
    for (i, resource) in resources.iter().enumerate() {
        let at = |f: &str| format!("predicate.resources[{i}].{f}");
        let name = text(&resource["name"], &at("name"))?;
        if text(&resource["algorithm"], &at("algorithm"))? != "sha256" {
            return Err(field(&at("algorithm"), "only sha256 is read here"));
        }
        let hex = text(&resource["digest"], &at("digest"))?;
        let digest: Digest = format!("sha256:{hex}")
            .parse()
            .map_err(|e| field(&at("digest"), format!("{e}")))?;
        hasher.update(digest.bytes());
        if files.insert(name.clone(), digest).is_some() {
            return Err(field(&at("name"), format!("{name:?} is listed twice")));
        }
    }
    let computed = hasher.finalize().hex();
    if computed != root {
        return Err(field(
            "subject[0].digest.sha256",
            format!("is {root}, but the resources hash to {computed}"),
        ));
    }
    Ok(Signed {
        model_name,
        files,
        ignore_paths,
    })
}

/// True if `path` (relative, `/`-separated) lies under one of `ignore_paths` or the git paths
/// `model_signing` always leaves out — what it skips when it hashes a folder.
pub fn ignored(path: &str, ignore_paths: &[String]) -> bool {
    let under = |prefix: &str| {
        let prefix = prefix.trim_end_matches('/');
        !prefix.is_empty() && (path == prefix || path.starts_with(&format!("{prefix}/")))
    };
    ignore_paths.iter().any(|p| under(p)) || GIT_PATHS.iter().any(|p| under(p))
}

/// How a folder's files differ from what an OMS signature signs, one line each; empty when
/// they are the same.
pub fn differences(
    signed: &BTreeMap<String, Digest>,
    actual: &BTreeMap<String, Digest>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, digest) in signed {
        match actual.get(name) {
            None => out.push(format!("{name}: signed, but missing")),
            Some(d) if d != digest => {
                out.push(format!("{name}: changed (signed {digest}, now {d})"))
            }
            Some(_) => {}
        }
    }
    for name in actual.keys().filter(|n| !signed.contains_key(*n)) {
        out.push(format!("{name}: present, but not signed"));
    }
    out
}

/// Checks an OMS signature brought with a package: it verifies with the PEM public key and
/// signs exactly the package's files, no more and no fewer.
pub fn check_package(
    signature: &str,
    public_key_pem: &str,
    files: &[crate::package::FileEntry],
) -> Result<Signed, OmsError> {
    let key = PublicKey::from_pem(public_key_pem)?;
    let signed = verify(signature.as_bytes(), &key)?;
    let actual: BTreeMap<String, Digest> =
        files.iter().map(|f| (f.path.clone(), f.sha256)).collect();
    let differences = differences(&signed.files, &actual);
    if differences.is_empty() {
        Ok(signed)
    } else {
        Err(OmsError::Files(differences))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 key in PKCS#8 PEM, made for these tests.
    fn key() -> PrivateKey {
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).expect("scalar");
        PrivateKey::P256(secret.into())
    }

    fn files() -> BTreeMap<String, Digest> {
        ["manifest.yaml", "a/b", "a.txt", "prompts/system.md"]
            .iter()
            .map(|p| (p.to_string(), Digest::of(Algorithm::Sha256, p.as_bytes())))
            .collect()
    }

    #[test]
    fn signatures_round_trip_and_resources_are_in_path_order() {
        let k = key();
        let text = sign(
            "demo",
            &files(),
            &[".custodian".into(), "model.sig".into()],
            &k,
        );
        let signed = verify(text.as_bytes(), &k.public()).expect("verifies");
        assert_eq!(signed.files, files());
        assert_eq!(signed.model_name, "demo");
        let s = statement("demo", &files(), &[]);
        let names: Vec<&str> = s["predicate"]["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| r["name"].as_str().expect("name"))
            .collect();
        assert_eq!(
            names,
            ["a/b", "a.txt", "manifest.yaml", "prompts/system.md"]
        );
        // The key round-trips through PEM, and another key is refused by its hint.
        assert_eq!(
            PublicKey::from_pem(&k.public().to_pem()).expect("pem"),
            k.public()
        );
        let other = PrivateKey::P256(
            p256::SecretKey::from_slice(&[9u8; 32])
                .expect("scalar")
                .into(),
        );
        assert!(matches!(
            verify(text.as_bytes(), &other.public()),
            Err(OmsError::Field { field, .. }) if field == "verificationMaterial.publicKey.hint"
        ));
    }

    /// The bundle with `statement` as its payload, signed again with `key`, so that only the
    /// statement's own checks can refuse it.
    fn resigned(
        bundle: &serde_json::Value,
        statement: &serde_json::Value,
        key: &PrivateKey,
    ) -> String {
        let bytes = serde_json::to_vec(statement).expect("json");
        let mut b = bundle.clone();
        b["dsseEnvelope"]["payload"] = STANDARD.encode(&bytes).into();
        b["dsseEnvelope"]["signatures"][0]["sig"] = STANDARD
            .encode(key.sign(&pae(INTOTO_PAYLOAD_TYPE, &bytes)))
            .into();
        b.to_string()
    }

    /// A field's name and a change to it.
    type Change = (&'static str, Box<dyn Fn(&mut serde_json::Value)>);

    #[test]
    fn every_changed_field_is_refused_by_name() {
        let k = key();
        let text = sign("demo", &files(), &[], &k);
        let bundle: serde_json::Value = serde_json::from_str(&text).expect("json");
        let payload: serde_json::Value = serde_json::from_slice(
            &STANDARD
                .decode(bundle["dsseEnvelope"]["payload"].as_str().expect("payload"))
                .expect("base64"),
        )
        .expect("statement");
        // Changes to the statement, re-signed so that only the named check can refuse them.
        let statement_cases: Vec<Change> = vec![
            ("_type", Box::new(|s| s["_type"] = "x".into())),
            (
                "predicateType",
                Box::new(|s| s["predicateType"] = "x".into()),
            ),
            (
                "subject",
                Box::new(|s| s["subject"] = serde_json::json!([])),
            ),
            (
                "subject[0].digest.sha256",
                Box::new(|s| s["subject"][0]["digest"]["sha256"] = "00".into()),
            ),
            (
                "predicate.serialization.method",
                Box::new(|s| s["predicate"]["serialization"]["method"] = "shards".into()),
            ),
            (
                "predicate.serialization.hash_type",
                Box::new(|s| s["predicate"]["serialization"]["hash_type"] = "blake2".into()),
            ),
            (
                "predicate.serialization.allow_symlinks",
                Box::new(|s| s["predicate"]["serialization"]["allow_symlinks"] = true.into()),
            ),
            (
                "predicate.resources",
                Box::new(|s| s["predicate"]["resources"] = serde_json::Value::Null),
            ),
            (
                "predicate.resources[0].algorithm",
                Box::new(|s| s["predicate"]["resources"][0]["algorithm"] = "md5".into()),
            ),
            (
                "predicate.resources[0].digest",
                Box::new(|s| s["predicate"]["resources"][0]["digest"] = "zz".into()),
            ),
            (
                "subject[0].digest.sha256",
                Box::new(|s| s["predicate"]["resources"][0]["digest"] = "11".repeat(32).into()),
            ),
            (
                "predicate.resources[0].name",
                Box::new(|s| s["predicate"]["resources"][0]["name"] = serde_json::Value::Null),
            ),
        ];
        for (name, change) in statement_cases {
            let mut s = payload.clone();
            change(&mut s);
            match verify(resigned(&bundle, &s, &k).as_bytes(), &k.public()) {
                Err(OmsError::Field { field, .. }) => assert_eq!(field, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        // Each required field of the statement removed, re-signed: refused, naming it.
        let required = [
            ("/_type", "_type"),
            ("/predicateType", "predicateType"),
            ("/subject", "subject"),
            ("/subject/0/name", "subject[0].name"),
            ("/subject/0/digest", "subject[0].digest.sha256"),
            (
                "/predicate/serialization/method",
                "predicate.serialization.method",
            ),
            (
                "/predicate/serialization/hash_type",
                "predicate.serialization.hash_type",
            ),
            ("/predicate/resources", "predicate.resources"),
            ("/predicate/resources/0/name", "predicate.resources[0].name"),
            (
                "/predicate/resources/0/algorithm",
                "predicate.resources[0].algorithm",
            ),
            (
                "/predicate/resources/0/digest",
                "predicate.resources[0].digest",
            ),
        ];
        for (pointer, name) in required {
            let mut s = payload.clone();
            let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
            match s.pointer_mut(parent).expect("the field exists") {
                serde_json::Value::Object(map) => {
                    map.remove(key);
                }
                other => panic!("{pointer}: {other}"),
            }
            match verify(resigned(&bundle, &s, &k).as_bytes(), &k.public()) {
                Err(OmsError::Field { field, .. }) => assert_eq!(field, name, "{pointer}"),
                other => panic!("{pointer}: {other:?}"),
            }
        }
        // Changes to the bundle.
        let bundle_cases: Vec<Change> = vec![
            ("mediaType", Box::new(|b| b["mediaType"] = "x".into())),
            (
                "dsseEnvelope.payloadType",
                Box::new(|b| b["dsseEnvelope"]["payloadType"] = "x".into()),
            ),
            (
                "dsseEnvelope.payload",
                Box::new(|b| b["dsseEnvelope"]["payload"] = "!".into()),
            ),
            (
                "dsseEnvelope.signatures",
                Box::new(|b| b["dsseEnvelope"]["signatures"] = serde_json::json!([])),
            ),
            (
                "dsseEnvelope.signatures[0].sig",
                Box::new(|b| b["dsseEnvelope"]["signatures"][0]["sig"] = "!".into()),
            ),
            (
                "verificationMaterial.publicKey.hint",
                Box::new(|b| b["verificationMaterial"]["publicKey"]["hint"] = "00".into()),
            ),
            (
                "(bundle)",
                Box::new(|b| b["dsseEnvelope"] = serde_json::Value::Null),
            ),
        ];
        for (name, change) in bundle_cases {
            let mut b = bundle.clone();
            change(&mut b);
            match verify(b.to_string().as_bytes(), &k.public()) {
                Err(OmsError::Field { field, .. }) => assert_eq!(field, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        // A payload changed without re-signing fails the signature.
        let mut b = bundle.clone();
        let mut s = payload.clone();
        s["subject"][0]["name"] = "other".into();
        b["dsseEnvelope"]["payload"] = STANDARD
            .encode(serde_json::to_vec(&s).expect("json"))
            .into();
        assert_eq!(
            verify(b.to_string().as_bytes(), &k.public()),
            Err(OmsError::Signature)
        );
    }

    #[test]
    fn ignore_paths_match_whole_components() {
        let ignore = vec![".custodian".to_string(), "out/".to_string()];
        assert!(ignored(".custodian/package.dsse.json", &ignore));
        assert!(ignored("out/x", &ignore));
        assert!(ignored(".git/HEAD", &ignore));
        assert!(!ignored("outside.txt", &ignore));
        assert!(!ignored("prompts/out", &ignore));
    }

    #[test]
    fn ed25519_and_garbage_keys_are_refused() {
        assert!(matches!(
            PublicKey::from_pem("not a key"),
            Err(OmsError::Key(_))
        ));
        assert!(matches!(
            PrivateKey::from_pem(
                "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n"
            ),
            Err(OmsError::Key(_))
        ));
    }
}
