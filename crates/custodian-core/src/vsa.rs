//! The badge as a SLSA Verification Summary Attestation (VSA v1,
//! <https://slsa.dev/spec/v1.0/verification_summary>): an in-toto Statement v1 whose subject is
//! the package version's `manifest.yaml` and whose predicate summarizes the badge decision,
//! signed as a DSSE envelope with the log's key, so that policy engines that read VSAs (not our
//! bundle JSON) can consume a badge.
//!
//! The summary is derived from the badge bundle alone ([`Summary::of_bundle`]): the daemon signs
//! what it derives, and `custodian verify` derives it again and requires the signed statement to
//! say exactly that, field by field.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::bundle::Bundle;
use crate::dsse::Envelope;
use crate::note::{SignerKey, VerifierKey};
use crate::{Algorithm, Digest};

/// The in-toto Statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The SLSA VSA predicate type.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/verification_summary/v1";
/// The DSSE payload type of an in-toto Statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The verifier's identity in every VSA Custodian signs.
pub const VERIFIER_ID: &str = "https://custodian.dev/verifier/badge";
/// Where a badge policy version is named: `POLICY_URI_PREFIX` + the policy id.
pub const POLICY_URI_PREFIX: &str = "https://custodian.dev/badge-policy/";

/// Why a VSA is refused: the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VsaError {
    /// The envelope does not open with the log's key.
    #[error("the VSA's DSSE envelope: {0}")]
    Envelope(String),
    /// A field is missing or differs from what the bundle says.
    #[error("the VSA's {field}: {reason}")]
    Field {
        /// The JSON path of the field, e.g. `predicate.verificationResult`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// One evidence entry the badge rests on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// Its ledger index.
    pub index: u64,
    /// SHA-256 of the entry's bytes as the log holds them.
    pub sha256: Digest,
}

/// What a VSA of a badge says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The package name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// SHA-256 of the version's `manifest.yaml`: the statement's subject.
    pub manifest: Digest,
    /// The log's origin (its checkpoints' first line).
    pub origin: String,
    /// The badge policy id, e.g. `custodian.badge-policy.v3`.
    pub policy: String,
    /// `green`, `review` or `failing`.
    pub state: String,
    /// When the badge was evaluated, Unix milliseconds.
    pub evaluated_ms: u64,
    /// The evidence entries, ascending by index.
    pub inputs: Vec<Input>,
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds, e.g. `2026-11-30T12:01:02.114Z`.
pub fn rfc3339_millis(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

impl Summary {
    /// The summary of a bundle's badge: its subject, the log it was decided from, the policy,
    /// the result, and every evidence entry it rests on (which the bundle must hold).
    pub fn of_bundle(bundle: &Bundle, origin: &str) -> Result<Summary, VsaError> {
        let manifest = STANDARD
            .decode(&bundle.manifest)
            .map_err(|e| VsaError::Field {
                field: "subject".into(),
                reason: format!("the bundle's manifest is not base64: {e}"),
            })?;
        let mut inputs = Vec::with_capacity(bundle.badge.evidence.len());
        for index in &bundle.badge.evidence {
            let entry = bundle
                .entries
                .iter()
                .find(|e| e.index == *index)
                .ok_or_else(|| VsaError::Field {
                    field: "predicate.inputAttestations".into(),
                    reason: format!("the badge rests on entry {index}, which the bundle lacks"),
                })?;
            let bytes = STANDARD.decode(&entry.entry).map_err(|e| VsaError::Field {
                field: "predicate.inputAttestations".into(),
                reason: format!("entry {index} is not base64: {e}"),
            })?;
            inputs.push(Input {
                index: *index,
                sha256: Digest::of(Algorithm::Sha256, &bytes),
            });
        }
        Ok(Summary {
            name: bundle.badge.name.clone(),
            version: bundle.badge.version.clone(),
            manifest: Digest::of(Algorithm::Sha256, &manifest),
            origin: origin.to_string(),
            policy: bundle.badge.policy.clone(),
            state: bundle.badge.state.as_str().to_string(),
            evaluated_ms: bundle.badge.evaluated_ms,
            inputs,
        })
    }

    /// The in-toto Statement (SLSA VSA v1 predicate) this summary is.
    pub fn statement(&self) -> Value {
        let result = if self.state == "green" {
            "PASSED"
        } else {
            "FAILED"
        };
        json!({
            "_type": STATEMENT_TYPE,
            "subject": [{
                "name": format!("{}@{}", self.name, self.version),
                "digest": {"sha256": self.manifest.hex()},
            }],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "verifier": {"id": VERIFIER_ID},
                "timeVerified": rfc3339_millis(self.evaluated_ms),
                "resourceUri": self.resource_uri(),
                "policy": {
                    "uri": format!("{POLICY_URI_PREFIX}{}", self.policy),
                    "digest": {"sha256": Digest::of(Algorithm::Sha256, self.policy.as_bytes()).hex()},
                },
                "inputAttestations": self.inputs.iter().map(|input| json!({
                    "uri": format!("{}#{}", self.log_uri(), input.index),
                    "digest": {"sha256": input.sha256.hex()},
                })).collect::<Vec<_>>(),
                "verificationResult": result,
                "verifiedLevels": [format!("CUSTODIAN_BADGE_{}", self.state.to_ascii_uppercase())],
            },
        })
    }

    /// The package version as a URI: a purl of type `custodian` naming the log.
    pub fn resource_uri(&self) -> String {
        format!(
            "pkg:custodian/{}@{}?log={}",
            self.name.replace('@', "%40"),
            self.version,
            self.origin
        )
    }

    fn log_uri(&self) -> String {
        format!("custodian-log:{}", self.origin)
    }

    /// The VSA: the statement signed as a DSSE envelope with `key` (the log's key).
    pub fn sign(&self, key: &SignerKey) -> Envelope {
        let payload = serde_json::to_vec(&self.statement()).unwrap_or_default();
        Envelope::sign(PAYLOAD_TYPE, &payload, key)
    }

    /// Checks a VSA envelope: it opens with the log's key, and its statement says exactly what
    /// this summary says, field by field (the first that differs is named).
    pub fn check(&self, envelope: &str, log_key: &VerifierKey) -> Result<(), VsaError> {
        let envelope =
            Envelope::parse(envelope.as_bytes()).map_err(|e| VsaError::Envelope(e.to_string()))?;
        let payload = envelope
            .verify(PAYLOAD_TYPE, log_key)
            .map_err(|e| VsaError::Envelope(e.to_string()))?;
        let statement: Value = serde_json::from_slice(&payload).map_err(|e| VsaError::Field {
            field: "statement".into(),
            reason: format!("not JSON: {e}"),
        })?;
        compare("", &self.statement(), &statement)
    }
}

/// Compares a signed statement with the expected one and names the first field that is missing,
/// added or different.
fn compare(path: &str, expected: &Value, actual: &Value) -> Result<(), VsaError> {
    let field = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, value) in e {
                let Some(other) = a.get(key) else {
                    return Err(VsaError::Field {
                        field: field(key),
                        reason: "missing".into(),
                    });
                };
                compare(&field(key), value, other)?;
            }
            if let Some(key) = a.keys().find(|k| !e.contains_key(*k)) {
                return Err(VsaError::Field {
                    field: field(key),
                    reason: "not a field this verifier signs".into(),
                });
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Err(VsaError::Field {
                    field: path.to_string(),
                    reason: format!("{} items, expected {}", a.len(), e.len()),
                });
            }
            for (i, (x, y)) in e.iter().zip(a).enumerate() {
                compare(&format!("{path}[{i}]"), x, y)?;
            }
            Ok(())
        }
        (e, a) if e == a => Ok(()),
        (e, a) => Err(VsaError::Field {
            field: path.to_string(),
            reason: format!("is {a}, the bundle says {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            name: "@acme/bot".into(),
            version: "1.2.0".into(),
            manifest: Digest::of(Algorithm::Sha256, b"manifest"),
            origin: "custodian.example/ledger".into(),
            policy: "custodian.badge-policy.v3".into(),
            state: "green".into(),
            evaluated_ms: 1_764_504_062_114,
            inputs: vec![
                Input {
                    index: 3,
                    sha256: Digest::of(Algorithm::Sha256, b"run"),
                },
                Input {
                    index: 5,
                    sha256: Digest::of(Algorithm::Sha256, b"scan"),
                },
            ],
        }
    }

    /// Known answers: the epoch, a leap day, and a date from the SLSA VSA example's era.
    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_764_504_062_114),
            "2025-11-30T12:01:02.114Z"
        );
    }

    #[test]
    fn a_signed_summary_checks_and_its_statement_is_a_vsa() {
        let key = SignerKey::from_seed("custodian.example/ledger", [7; 32]).expect("key");
        let s = summary();
        let envelope = s.sign(&key).to_json();
        s.check(&envelope, &key.verifier()).expect("checks");
        let statement = s.statement();
        assert_eq!(statement["predicateType"], PREDICATE_TYPE);
        assert_eq!(statement["predicate"]["verificationResult"], "PASSED");
        assert_eq!(
            statement["subject"][0]["digest"]["sha256"],
            s.manifest.hex()
        );
        assert_eq!(
            statement["predicate"]["resourceUri"],
            "pkg:custodian/%40acme/bot@1.2.0?log=custodian.example/ledger"
        );
        let other = SignerKey::from_seed("custodian.example/ledger", [8; 32]).expect("key");
        assert!(matches!(
            s.check(&envelope, &other.verifier()),
            Err(VsaError::Envelope(_))
        ));
    }

    /// Every leaf of the statement, changed or removed, and an added field, is refused with
    /// that field named.
    #[test]
    fn every_field_changed_or_missing_is_refused_by_name() {
        let key = SignerKey::from_seed("log", [9; 32]).expect("key");
        let s = summary();
        let mut leaves = Vec::new();
        fn walk(path: &str, value: &Value, out: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    for (k, v) in map {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        walk(&p, v, out);
                    }
                }
                Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        walk(&format!("{path}[{i}]"), v, out);
                    }
                }
                _ => out.push(path.to_string()),
            }
        }
        walk("", &s.statement(), &mut leaves);
        assert!(leaves.len() >= 14, "{leaves:?}");
        let pointer = |path: &str| {
            "/".to_string() + &path.replace("[", ".").replace(']', "").replace('.', "/")
        };
        for leaf in &leaves {
            for removed in [false, true] {
                let mut statement = s.statement();
                if removed {
                    let (parent, key) = leaf.rsplit_once('.').unwrap_or(("", leaf));
                    if key.ends_with(']') {
                        continue;
                    }
                    let target = if parent.is_empty() {
                        &mut statement
                    } else {
                        statement.pointer_mut(&pointer(parent)).expect("parent")
                    };
                    target.as_object_mut().expect("object").remove(key);
                } else {
                    let value = statement.pointer_mut(&pointer(leaf)).expect("leaf");
                    *value = json!("changed");
                }
                let envelope = Envelope::sign(
                    PAYLOAD_TYPE,
                    &serde_json::to_vec(&statement).expect("json"),
                    &key,
                )
                .to_json();
                match s.check(&envelope, &key.verifier()) {
                    Err(VsaError::Field { field, .. }) => assert_eq!(&field, leaf, "{leaf}"),
                    other => panic!("{leaf} (removed: {removed}) gave {other:?}"),
                }
            }
        }
        let mut statement = s.statement();
        statement["predicate"]["extra"] = json!(1);
        let envelope = Envelope::sign(
            PAYLOAD_TYPE,
            &serde_json::to_vec(&statement).expect("json"),
            &key,
        )
        .to_json();
        assert!(
            matches!(s.check(&envelope, &key.verifier()), Err(VsaError::Field { field, .. }) if field == "predicate.extra")
        );
    }
}
