//! Eval-run attestations: an in-toto Statement v1 in a DSSE envelope, signed by a registered
//! attester key, saying that one eval of one package version ran against one model, with its
//! result, metrics, the data pack it read (`data_pack_sha256`) and the exact inputs
//! (`reproducibility_context`).
//!
//! Subject: `{"name": "<package>@<version>", "digest": {"sha256": "<manifest.yaml digest>"}}`.
//! Predicate type: [`RUN_PREDICATE_TYPE`]. The ledger stores the envelope as JSON text, so metric
//! values may be any JSON number (CBOR payloads exclude floats; the envelope is text inside one).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::{Algorithm, Digest};
use crate::dsse::{Envelope, INTOTO_PAYLOAD_TYPE};
use crate::manifest::Threshold;
use crate::note::{SignerKey, VerifierKey};
use crate::package::{STATEMENT_TYPE, WireStatement, WireSubject};

/// The predicate type of an eval-run attestation.
pub const RUN_PREDICATE_TYPE: &str = "https://custodian.dev/eval-run/v1";

/// Why an attestation is malformed or does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestationError {
    /// A field is missing or malformed; the message names it.
    #[error("field {field}: {reason}")]
    Field {
        /// The field, e.g. `predicate.reproducibility_context`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The envelope does not verify.
    #[error(transparent)]
    Signature(#[from] crate::dsse::DsseError),
}

pub(crate) fn field(field: &str, reason: impl Into<String>) -> AttestationError {
    AttestationError::Field {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// One metric of a run: its value and the threshold it was held to. Written as an object
/// (`{"value": 0.93, "threshold": ">= 0.9"}`) or as a bare number (`0.93`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "MetricWire")]
pub struct Metric {
    /// The measured value.
    pub value: serde_json::Number,
    /// The threshold, e.g. `">= 0.9"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<String>,
}

/// The two ways a metric may be written.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a number, or an object {\"value\": number, \"threshold\": \">= 0.9\"}"
)]
enum MetricWire {
    Bare(serde_json::Number),
    Full {
        value: serde_json::Number,
        #[serde(default)]
        threshold: Option<String>,
    },
}

impl From<MetricWire> for Metric {
    fn from(wire: MetricWire) -> Self {
        match wire {
            MetricWire::Bare(value) => Metric {
                value,
                threshold: None,
            },
            MetricWire::Full { value, threshold } => Metric { value, threshold },
        }
    }
}

/// The JSON Schema (draft 2020-12) of the run file `custodian attest` reads: one run object or
/// an array of them. docs/verifying.md describes each field.
pub const RUNS_SCHEMA: &str = r##"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "$id": "https://custodian.dev/schemas/eval-runs.json",
  "title": "Custodian eval runs (custodian attest)",
  "oneOf": [
    {"$ref": "#/$defs/run"},
    {"type": "array", "items": {"$ref": "#/$defs/run"}, "minItems": 1}
  ],
  "$defs": {
    "run": {
      "type": "object",
      "additionalProperties": false,
      "required": ["package", "version", "eval_id", "model", "passed", "reproducibility_context", "started_at", "finished_at", "runner"],
      "properties": {
        "package": {"type": "string", "minLength": 1, "description": "the package name"},
        "version": {"type": "string", "minLength": 1, "description": "the published version"},
        "eval_id": {"type": "string", "minLength": 1, "description": "an eval the manifest declares"},
        "model": {"type": "string", "minLength": 1, "description": "one of the version's compatible models"},
        "passed": {"type": "boolean", "description": "checked against the EvalSpec's thresholds: a run claiming passed must meet each"},
        "metrics": {
          "type": "object",
          "description": "metric name to value; a metric the EvalSpec thresholds must be reported by a passing run",
          "additionalProperties": {
            "oneOf": [
              {"type": "number"},
              {
                "type": "object",
                "additionalProperties": false,
                "required": ["value"],
                "properties": {
                  "value": {"type": "number"},
                  "threshold": {"type": "string", "description": "if given, the EvalSpec's threshold exactly, e.g. \">= 0.9\""}
                }
              }
            ]
          }
        },
        "data_pack_sha256": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$", "description": "required when the version has a hosted data pack: its digest"},
        "reproducibility_context": {"type": "object", "description": "eval case ids, input fingerprints, schema versions; \"seed\" must equal the EvalSpec's seed when it declares one"},
        "started_at": {"type": "string", "format": "date-time"},
        "finished_at": {"type": "string", "format": "date-time"},
        "runner": {
          "type": "object",
          "additionalProperties": false,
          "required": ["id"],
          "properties": {"id": {"type": "string", "minLength": 1}, "version": {"type": "string"}}
        }
      }
    }
  }
}
"##;

/// Who ran the eval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runner {
    /// The runner's identity, e.g. `ci.acme.example/evals`.
    pub id: String,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The predicate of an eval-run attestation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunPredicate {
    /// The package name.
    pub package: String,
    /// Its version.
    pub version: String,
    /// The eval id (declared in the manifest).
    pub eval_id: String,
    /// The model it ran against (one of the version's compatible models).
    pub model: String,
    /// Whether the run passed.
    pub passed: bool,
    /// Metrics with their thresholds.
    #[serde(default)]
    pub metrics: BTreeMap<String, Metric>,
    /// The data pack the run read, `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_pack_sha256: Option<String>,
    /// The exact inputs: eval case ids, input fingerprints, schema versions, seed, … (an object).
    pub reproducibility_context: serde_json::Value,
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// When it finished (RFC 3339).
    pub finished_at: String,
    /// Who ran it.
    pub runner: Runner,
}

/// Checks a run file against [`RUNS_SCHEMA`]; every violation, each as `path: message`.
pub fn check_runs_file(value: &serde_json::Value) -> Result<(), Vec<String>> {
    let mut schema: serde_json::Value = serde_json::from_str(RUNS_SCHEMA).unwrap_or_default();
    // Each run is checked against the run definition itself, so that an error names the field
    // (`/metrics/accuracy`) rather than the top-level "one of object or array".
    if let Some(object) = schema.as_object_mut() {
        object.remove("oneOf");
        object.insert("$ref".into(), "#/$defs/run".into());
    }
    let validator = jsonschema::validator_for(&schema)
        .map_err(|e| vec![format!("the built-in run schema does not compile: {e}")])?;
    let runs: Vec<(String, &serde_json::Value)> = match value {
        serde_json::Value::Array(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, run)| (format!("/{i}"), run))
            .collect(),
        serde_json::Value::Array(_) => return Err(vec!["(top): the list of runs is empty".into()]),
        run => vec![(String::new(), run)],
    };
    let mut errors = Vec::new();
    for (prefix, run) in runs {
        for e in validator.iter_errors(run) {
            let path = format!("{prefix}{}", e.instance_path());
            errors.push(format!(
                "{}: {e}",
                if path.is_empty() {
                    "(top)".to_string()
                } else {
                    path
                }
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A checked run statement.
#[derive(Clone, Debug, PartialEq)]
pub struct RunStatement {
    /// The manifest digest of the package version the run is about.
    pub manifest: Digest,
    /// What the run says.
    pub predicate: RunPredicate,
    /// `started_at` in Unix milliseconds.
    pub started_ms: u64,
    /// `finished_at` in Unix milliseconds.
    pub finished_ms: u64,
}

impl RunStatement {
    /// Checks a predicate and builds the statement about `manifest`.
    pub fn new(manifest: Digest, predicate: RunPredicate) -> Result<Self, AttestationError> {
        if manifest.algorithm() != Algorithm::Sha256 {
            return Err(field("subject[0].digest", "must be the manifest's sha256"));
        }
        for (name, value) in [
            ("predicate.package", &predicate.package),
            ("predicate.version", &predicate.version),
            ("predicate.eval_id", &predicate.eval_id),
            ("predicate.model", &predicate.model),
            ("predicate.runner.id", &predicate.runner.id),
        ] {
            if value.trim().is_empty() {
                return Err(field(name, "is required"));
            }
        }
        if !predicate.reproducibility_context.is_object() {
            return Err(field(
                "predicate.reproducibility_context",
                format!(
                    "must be a JSON object (eval case ids, input fingerprints, schema versions, seed, …), got {}",
                    json_kind(&predicate.reproducibility_context)
                ),
            ));
        }
        if let Some(d) = &predicate.data_pack_sha256 {
            let digest: Digest = d
                .parse()
                .map_err(|e| field("predicate.data_pack_sha256", format!("{e}")))?;
            if digest.algorithm() != Algorithm::Sha256 {
                return Err(field(
                    "predicate.data_pack_sha256",
                    "must be a sha256 digest",
                ));
            }
        }
        let started_ms = parse_rfc3339_ms(&predicate.started_at).ok_or_else(|| {
            field(
                "predicate.started_at",
                format!("{:?} is not an RFC 3339 time", predicate.started_at),
            )
        })?;
        let finished_ms = parse_rfc3339_ms(&predicate.finished_at).ok_or_else(|| {
            field(
                "predicate.finished_at",
                format!("{:?} is not an RFC 3339 time", predicate.finished_at),
            )
        })?;
        if finished_ms < started_ms {
            return Err(field("predicate.finished_at", "is before started_at"));
        }
        Ok(RunStatement {
            manifest,
            predicate,
            started_ms,
            finished_ms,
        })
    }

    /// The statement's JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        version_statement_json(&self.manifest, &self.predicate)
    }

    /// Parses and checks statement JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, AttestationError> {
        let (manifest, predicate) = parse_version_statement::<RunPredicate>(bytes)?;
        RunStatement::new(manifest, predicate)
    }

    /// Signs the statement.
    pub fn sign(&self, key: &SignerKey) -> Envelope {
        Envelope::sign(INTOTO_PAYLOAD_TYPE, &self.to_json(), key)
    }

    /// Verifies an envelope with `key` and returns the statement.
    pub fn open(envelope: &Envelope, key: &VerifierKey) -> Result<Self, AttestationError> {
        let payload = envelope.verify(INTOTO_PAYLOAD_TYPE, key)?;
        RunStatement::from_json(&payload)
    }

    /// The fingerprint of the reproducibility context: `sha256:` of its RFC 8785 canonical JSON.
    pub fn context_fingerprint(&self) -> String {
        fingerprint(&self.predicate.reproducibility_context)
    }
}

/// A predicate about one package version, carried in an in-toto Statement v1 whose one subject
/// is the version's manifest: an eval run, a pre-registration.
pub(crate) trait VersionPredicate: Serialize + serde::de::DeserializeOwned + Clone {
    /// The predicate type.
    const TYPE: &'static str;
    /// What the statement is, for errors: `an eval-run statement`.
    const WHAT: &'static str;
    /// The package name it is about.
    fn package(&self) -> &str;
    /// The version it is about.
    fn version(&self) -> &str;
}

impl VersionPredicate for RunPredicate {
    const TYPE: &'static str = RUN_PREDICATE_TYPE;
    const WHAT: &'static str = "an eval-run statement";
    fn package(&self) -> &str {
        &self.package
    }
    fn version(&self) -> &str {
        &self.version
    }
}

/// The JSON bytes of the statement of `predicate` about the version whose manifest is `manifest`.
pub(crate) fn version_statement_json<P: VersionPredicate>(
    manifest: &Digest,
    predicate: &P,
) -> Vec<u8> {
    let wire = WireStatement {
        statement_type: STATEMENT_TYPE.into(),
        subject: vec![WireSubject {
            name: format!("{}@{}", predicate.package(), predicate.version()),
            digest: BTreeMap::from([("sha256".to_string(), manifest.hex())]),
        }],
        predicate_type: P::TYPE.into(),
        predicate: predicate.clone(),
    };
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// Parses such a statement: its type, its predicate type, and its one subject naming the
/// predicate's version; returns the manifest digest and the predicate, unchecked otherwise.
pub(crate) fn parse_version_statement<P: VersionPredicate>(
    bytes: &[u8],
) -> Result<(Digest, P), AttestationError> {
    let wire: WireStatement<P> = serde_json::from_slice(bytes)
        .map_err(|e| field("payload", format!("not {}: {e}", P::WHAT)))?;
    if wire.statement_type != STATEMENT_TYPE {
        return Err(field(
            "_type",
            format!("is {:?}, expected {STATEMENT_TYPE:?}", wire.statement_type),
        ));
    }
    if wire.predicate_type != P::TYPE {
        return Err(field(
            "predicateType",
            format!("is {:?}, expected {:?}", wire.predicate_type, P::TYPE),
        ));
    }
    let manifest = subject_manifest(
        &wire.subject,
        wire.predicate.package(),
        wire.predicate.version(),
    )?;
    Ok((manifest, wire.predicate))
}

/// The manifest digest a statement about one package version names as its only subject
/// (`{"name": "<package>@<version>", "digest": {"sha256": …}}`).
pub(crate) fn subject_manifest(
    subjects: &[WireSubject],
    package: &str,
    version: &str,
) -> Result<Digest, AttestationError> {
    let [subject] = subjects else {
        return Err(field("subject", "must name exactly one package version"));
    };
    let expected = format!("{package}@{version}");
    if subject.name != expected {
        return Err(field(
            "subject[0].name",
            format!(
                "is {:?} but the predicate is about {expected:?}",
                subject.name
            ),
        ));
    }
    let hex = subject
        .digest
        .get("sha256")
        .ok_or_else(|| field("subject[0].digest.sha256", "is required"))?;
    format!("sha256:{hex}")
        .parse()
        .map_err(|e| field("subject[0].digest.sha256", format!("{e}")))
}

/// Checks a run against the EvalSpec it claims to run: every threshold the EvalSpec sets is the
/// one the run was held to, a run that claims `passed` meets each of them (with the metric
/// reported), and a declared seed is the run's `reproducibility_context.seed`. The attester's
/// `passed` is never taken on trust where the manifest says what passing means.
pub fn check_against_eval(
    predicate: &RunPredicate,
    eval: &crate::manifest::EvalSpec,
) -> Result<(), AttestationError> {
    for (metric, threshold) in eval.thresholds() {
        let at = format!("predicate.metrics.{metric}");
        let Some(reported) = predicate.metrics.get(&metric) else {
            if predicate.passed {
                return Err(field(
                    &at,
                    format!(
                        "is missing: eval {} sets the threshold {metric} {threshold}, so a run that claims passed must report {metric}",
                        predicate.eval_id
                    ),
                ));
            }
            continue;
        };
        if let Some(stated) = &reported.threshold {
            let same = parse_threshold_text(stated).is_ok_and(|t| t == threshold);
            if !same {
                return Err(field(
                    &format!("{at}.threshold"),
                    format!(
                        "is {stated:?}, but eval {} sets {metric} {threshold}; a run is held to the manifest's threshold",
                        predicate.eval_id
                    ),
                ));
            }
        }
        let value = reported.value.as_f64().unwrap_or(f64::NAN);
        if predicate.passed && !threshold.holds(value) {
            return Err(field(
                &at,
                format!(
                    "the run claims passed, but {metric} = {} does not meet eval {}'s threshold {threshold}",
                    crate::jcs::number(value),
                    predicate.eval_id
                ),
            ));
        }
    }
    if let Some(seed) = eval.seed() {
        let got = predicate.reproducibility_context.get("seed");
        if got.and_then(serde_json::Value::as_u64) != Some(seed) {
            return Err(field(
                "predicate.reproducibility_context.seed",
                format!(
                    "eval {} declares seed {seed}, but the run's context has {}",
                    predicate.eval_id,
                    got.map_or_else(|| "no seed".to_string(), |v| format!("seed {v}"))
                ),
            ));
        }
    }
    Ok(())
}

fn parse_threshold_text(text: &str) -> Result<Threshold, String> {
    Threshold::parse(&serde_json::Value::String(text.to_string()))
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `sha256:` of the RFC 8785 (JCS) canonical JSON of `value` ([`crate::jcs`]).
pub fn fingerprint(value: &serde_json::Value) -> String {
    crate::jcs::sha256(value)
}

/// Parses an RFC 3339 date-time (`2026-11-25T10:00:00Z`, optional fraction, `Z` or `±HH:MM`) to
/// Unix milliseconds. Times before 1970 are refused.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse().ok()?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let h: i64 = rest[1..3].parse().ok()?;
            let m: i64 = rest[4..6].parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 60 + m)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds * 1000 + millis).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    pub(crate) fn predicate() -> RunPredicate {
        RunPredicate {
            package: "pacman-builder".into(),
            version: "0.2.1".into(),
            eval_id: "render_smoke".into(),
            model: "gpt-4.1".into(),
            passed: true,
            metrics: BTreeMap::from([(
                "pass_rate".to_string(),
                Metric {
                    value: serde_json::Number::from_f64(0.97).expect("finite"),
                    threshold: Some(">= 0.9".into()),
                },
            )]),
            data_pack_sha256: None,
            reproducibility_context: serde_json::json!({"seed": 42, "cases": ["rs-1", "rs-2"]}),
            started_at: "2026-11-25T10:00:00Z".into(),
            finished_at: "2026-11-25T10:05:30.250Z".into(),
            runner: Runner {
                id: "ci.example/evals".into(),
                version: Some("1.4".into()),
            },
        }
    }

    #[test]
    fn round_trip_and_verify() {
        let key = SignerKey::from_seed("attester", [9; 32]).expect("key");
        let manifest = Digest::of(Algorithm::Sha256, b"manifest");
        let statement = RunStatement::new(manifest, predicate()).expect("valid");
        assert_eq!(statement.finished_ms - statement.started_ms, 330_250);
        let envelope = statement.sign(&key);
        let opened = RunStatement::open(&envelope, &key.verifier()).expect("verifies");
        assert_eq!(opened, statement);
    }

    #[test]
    fn malformed_predicates_name_the_field() {
        let manifest = Digest::of(Algorithm::Sha256, b"manifest");
        let mut p = predicate();
        p.reproducibility_context = serde_json::json!(["not", "an", "object"]);
        assert_eq!(
            RunStatement::new(manifest, p).err().map(|e| e.to_string()),
            Some("field predicate.reproducibility_context: must be a JSON object (eval case ids, input fingerprints, schema versions, seed, …), got an array".into())
        );
        let mut p = predicate();
        p.finished_at = "yesterday".into();
        assert!(
            matches!(RunStatement::new(manifest, p), Err(AttestationError::Field { field, .. }) if field == "predicate.finished_at")
        );
        let mut p = predicate();
        p.data_pack_sha256 = Some("sha256:12".into());
        assert!(RunStatement::new(manifest, p).is_err());
        let mut p = predicate();
        p.eval_id = " ".into();
        assert!(RunStatement::new(manifest, p).is_err());
    }

    #[test]
    fn rfc3339_known_answers() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2000-03-01T00:00:00Z"),
            Some(951_868_800_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-25T10:00:00.5Z"),
            Some(1_795_600_800_500)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-25T11:00:00+01:00"),
            Some(1_795_600_800_000)
        );
        for bad in [
            "",
            "2026-11-25",
            "2026-13-01T00:00:00Z",
            "2026-11-25T10:00:00",
            "1969-12-31T23:59:59Z",
            "2026-11-25T10:00:00.Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_run_schema_accepts_runs_and_names_what_is_wrong() {
        let run = serde_json::json!({
            "package": "pacman-builder", "version": "0.2.1", "eval_id": "render_smoke",
            "model": "gpt-4.1", "passed": true, "metrics": {"pass_rate": 1.0, "f1": {"value": 0.9}},
            "reproducibility_context": {"seed": 7}, "started_at": "2026-11-30T10:00:00Z",
            "finished_at": "2026-11-30T10:05:00Z", "runner": {"id": "ci.example/evals"}
        });
        check_runs_file(&run).expect("a valid run");
        check_runs_file(&serde_json::json!([run.clone(), run.clone()])).expect("a list of runs");
        let predicate: RunPredicate = serde_json::from_value(run.clone()).expect("parses");
        assert_eq!(predicate.metrics["pass_rate"].threshold, None);
        let mut bad = run.clone();
        bad["metrics"]["pass_rate"] = serde_json::json!("high");
        bad["passd"] = serde_json::json!(true);
        let errors = check_runs_file(&bad).expect_err("invalid");
        assert!(errors.iter().any(|e| e.contains("passd")), "{errors:?}");
    }

    #[test]
    fn runs_are_held_to_the_evalspec() {
        let eval: crate::manifest::EvalSpec = serde_norway::from_str(
            "id: render_smoke\nseed: 42\nthresholds:\n  pass_rate: \">= 0.9\"\n",
        )
        .expect("eval spec");
        let mut p = predicate();
        p.eval_id = "render_smoke".into();
        p.metrics = BTreeMap::from([(
            "pass_rate".to_string(),
            Metric {
                value: serde_json::Number::from_f64(0.95).expect("finite"),
                threshold: None,
            },
        )]);
        p.reproducibility_context = serde_json::json!({"seed": 42});
        check_against_eval(&p, &eval).expect("meets the bar");
        // Passing with a metric below the bar: refused, naming both numbers.
        p.metrics.get_mut("pass_rate").expect("metric").value =
            serde_json::Number::from_f64(0.81).expect("finite");
        let err = check_against_eval(&p, &eval)
            .expect_err("below")
            .to_string();
        assert!(err.contains("0.81") && err.contains(">= 0.9"), "{err}");
        // Failing below the bar is honest.
        p.passed = false;
        check_against_eval(&p, &eval).expect("an honest failure");
        p.passed = true;
        p.metrics.get_mut("pass_rate").expect("metric").value =
            serde_json::Number::from_f64(0.95).expect("finite");
        // Another threshold than the manifest's.
        p.metrics.get_mut("pass_rate").expect("metric").threshold = Some("> 0.5".into());
        let err = check_against_eval(&p, &eval)
            .expect_err("other bar")
            .to_string();
        assert!(err.contains("threshold"), "{err}");
        p.metrics.get_mut("pass_rate").expect("metric").threshold = Some(">=0.9".into());
        check_against_eval(&p, &eval).expect("the same bar, spelled differently");
        // A passing run must report the metric.
        p.metrics.clear();
        assert!(check_against_eval(&p, &eval).is_err());
        p.metrics.insert(
            "pass_rate".into(),
            Metric {
                value: serde_json::Number::from_f64(0.95).expect("finite"),
                threshold: None,
            },
        );
        // The declared seed.
        p.reproducibility_context = serde_json::json!({"seed": 7});
        let err = check_against_eval(&p, &eval).expect_err("seed").to_string();
        assert!(err.contains("seed 42") && err.contains("seed 7"), "{err}");
        p.reproducibility_context = serde_json::json!({});
        assert!(check_against_eval(&p, &eval).is_err());
    }

    #[test]
    fn fingerprints_ignore_key_order_and_whitespace() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": [1, {"y": 2, "x": 1}], "a": "s"}"#).expect("json");
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a":"s","b":[1,{"x":1,"y":2}]}"#).expect("json");
        assert_eq!(fingerprint(&a), fingerprint(&b));
        // sha256 of the canonical text, computed independently: printf '{"a":"s","b":[1,{"x":1,"y":2}]}' | sha256sum
        assert_eq!(
            fingerprint(&a),
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(br#"{"a":"s","b":[1,{"x":1,"y":2}]}"#))
            )
        );
    }
}
