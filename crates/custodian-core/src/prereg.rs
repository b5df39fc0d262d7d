//! Pre-registered eval criteria: before any run of an eval is attested, the package's publisher
//! (or an attester for it) signs what will count — the metric, the comparator and threshold, the
//! data pack, the sample size, the seed and the harness digest — and the ledger records it as an
//! `EvalPreregistered` entry. The badge policy (v4) then counts a run only if a pre-registration
//! with a **lower ledger index** governs it and the run matches it, so the bar provably predates
//! the score.
//!
//! The statement is an in-toto Statement v1 in a DSSE envelope, like an eval run:
//! subject `{"name": "<package>@<version>", "digest": {"sha256": "<manifest digest>"}}`,
//! predicate type [`PREREG_PREDICATE_TYPE`], predicate [`PreregPredicate`]. A run states what it
//! used in its `reproducibility_context`: `harness_sha256`, `sample_size` and `seed`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::attestation::{
    AttestationError, RunPredicate, VersionPredicate, field, parse_version_statement,
    version_statement_json,
};
use crate::digest::{Algorithm, Digest};
use crate::dsse::{Envelope, INTOTO_PAYLOAD_TYPE};
use crate::manifest::Threshold;
use crate::note::{SignerKey, VerifierKey};
use crate::registry::EvalPreregistered;

/// The predicate type of a pre-registration.
pub const PREREG_PREDICATE_TYPE: &str = "https://custodian.dev/eval-preregistration/v1";

/// What a pre-registration commits to, as its signer writes it (`custodian eval preregister`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreregPredicate {
    /// The package name.
    pub package: String,
    /// Its version.
    pub version: String,
    /// The eval id (declared in the manifest).
    pub eval_id: String,
    /// The metric that decides whether a run passes.
    pub metric: String,
    /// `>=`, `>`, `<=`, `<` or `==`.
    pub comparator: String,
    /// The threshold.
    pub threshold: serde_json::Number,
    /// The data pack every run must read, `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_pack_sha256: Option<String>,
    /// How many cases a run evaluates (`reproducibility_context.sample_size`).
    pub sample_size: u64,
    /// The seed every run must use (`reproducibility_context.seed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The digest of the eval harness (`reproducibility_context.harness_sha256`), `sha256:<hex>`.
    pub harness_sha256: String,
}

impl VersionPredicate for PreregPredicate {
    const TYPE: &'static str = PREREG_PREDICATE_TYPE;
    const WHAT: &'static str = "a pre-registration statement";
    fn package(&self) -> &str {
        &self.package
    }
    fn version(&self) -> &str {
        &self.version
    }
}

/// A checked pre-registration statement.
#[derive(Clone, Debug, PartialEq)]
pub struct PreregStatement {
    /// The manifest digest of the version it is about.
    pub manifest: Digest,
    /// What it commits to.
    pub predicate: PreregPredicate,
    /// The comparator and threshold, parsed.
    pub threshold: Threshold,
}

fn sha256_field(name: &str, text: &str) -> Result<(), AttestationError> {
    let digest: Digest = text.parse().map_err(|e| field(name, format!("{e}")))?;
    if digest.algorithm() != Algorithm::Sha256 {
        return Err(field(name, "must be a sha256: digest"));
    }
    Ok(())
}

impl PreregStatement {
    /// Checks a predicate and builds the statement about `manifest`.
    pub fn new(manifest: Digest, predicate: PreregPredicate) -> Result<Self, AttestationError> {
        if manifest.algorithm() != Algorithm::Sha256 {
            return Err(field("subject[0].digest", "must be the manifest's sha256"));
        }
        for (name, value) in [
            ("predicate.package", &predicate.package),
            ("predicate.version", &predicate.version),
            ("predicate.eval_id", &predicate.eval_id),
            ("predicate.metric", &predicate.metric),
        ] {
            if value.trim().is_empty() {
                return Err(field(name, "is required"));
            }
        }
        if !matches!(
            predicate.comparator.as_str(),
            ">=" | ">" | "<=" | "<" | "=="
        ) {
            return Err(field(
                "predicate.comparator",
                format!("{:?} is not one of >=, >, <=, <, ==", predicate.comparator),
            ));
        }
        let threshold = Threshold::parse(&serde_json::Value::String(format!(
            "{} {}",
            predicate.comparator, predicate.threshold
        )))
        .map_err(|e| field("predicate.threshold", e))?;
        if predicate.sample_size == 0 {
            return Err(field(
                "predicate.sample_size",
                "must be at least 1 (the number of cases a run evaluates)",
            ));
        }
        sha256_field("predicate.harness_sha256", &predicate.harness_sha256)?;
        if let Some(d) = &predicate.data_pack_sha256 {
            sha256_field("predicate.data_pack_sha256", d)?;
        }
        Ok(PreregStatement {
            manifest,
            predicate,
            threshold,
        })
    }

    /// The statement's JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        version_statement_json(&self.manifest, &self.predicate)
    }

    /// Parses and checks statement JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, AttestationError> {
        let (manifest, predicate) = parse_version_statement::<PreregPredicate>(bytes)?;
        PreregStatement::new(manifest, predicate)
    }

    /// Signs the statement.
    pub fn sign(&self, key: &SignerKey) -> Envelope {
        Envelope::sign(INTOTO_PAYLOAD_TYPE, &self.to_json(), key)
    }

    /// Verifies an envelope with `key` and returns the statement.
    pub fn open(envelope: &Envelope, key: &VerifierKey) -> Result<Self, AttestationError> {
        let payload = envelope.verify(INTOTO_PAYLOAD_TYPE, key)?;
        PreregStatement::from_json(&payload)
    }

    /// The ledger event that records it.
    pub fn to_event(
        &self,
        signer: &VerifierKey,
        envelope: &Envelope,
        private: bool,
    ) -> EvalPreregistered {
        let p = &self.predicate;
        EvalPreregistered {
            name: p.package.clone(),
            version: p.version.clone(),
            manifest: self.manifest.to_string(),
            eval_id: p.eval_id.clone(),
            metric: p.metric.clone(),
            comparator: self.threshold.comparator.as_str().into(),
            threshold: crate::jcs::number(self.threshold.value),
            data_pack_sha256: p.data_pack_sha256.clone(),
            sample_size: p.sample_size,
            seed: p.seed,
            harness_sha256: p.harness_sha256.clone(),
            signer_key: signer.to_string(),
            envelope: envelope.to_json(),
            private,
        }
    }
}

/// A pre-registration as the badge policy reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Preregistration {
    /// Its ledger index.
    pub index: u64,
    /// The eval.
    pub eval_id: String,
    /// The deciding metric.
    pub metric: String,
    /// Its comparator and threshold.
    pub threshold: Threshold,
    /// The data pack runs must read.
    pub data_pack_sha256: Option<String>,
    /// The cases per run.
    pub sample_size: u64,
    /// The seed runs must use.
    pub seed: Option<u64>,
    /// The harness runs must use.
    pub harness_sha256: String,
}

impl Preregistration {
    /// Reads an `EvalPreregistered` entry at ledger `index`.
    pub fn from_event(index: u64, e: &EvalPreregistered) -> Result<Self, String> {
        let threshold = Threshold::parse(&serde_json::Value::String(format!(
            "{} {}",
            e.comparator, e.threshold
        )))?;
        Ok(Preregistration {
            index,
            eval_id: e.eval_id.clone(),
            metric: e.metric.clone(),
            threshold,
            data_pack_sha256: e.data_pack_sha256.clone(),
            sample_size: e.sample_size,
            seed: e.seed,
            harness_sha256: e.harness_sha256.clone(),
        })
    }

    /// True if two pre-registrations commit to the same terms (whatever their index).
    pub fn same_terms(&self, other: &Preregistration) -> bool {
        Preregistration {
            index: other.index,
            ..self.clone()
        } == *other
    }
}

/// Checks an `EvalPreregistered` entry against its own envelope: the signature by `signer_key`
/// holds, the statement names `manifest` (the version's), and every field of the entry is what
/// the signed statement says. The error names the first field that is not.
pub fn check_event(e: &EvalPreregistered, manifest: &str) -> Result<(), String> {
    let key = VerifierKey::parse(&e.signer_key).map_err(|err| format!("signer_key: {err}"))?;
    let envelope =
        Envelope::parse(e.envelope.as_bytes()).map_err(|err| format!("envelope: {err}"))?;
    let statement = PreregStatement::open(&envelope, &key).map_err(|err| {
        format!("the pre-registration's signature or statement does not hold: {err}")
    })?;
    if statement.manifest.to_string() != manifest {
        return Err(format!(
            "manifest: the statement names {}, the version's manifest is {manifest}",
            statement.manifest
        ));
    }
    let signed = statement.to_event(&key, &envelope, e.private);
    let fields: [(&str, bool); 12] = [
        ("name", signed.name == e.name),
        ("version", signed.version == e.version),
        ("manifest", signed.manifest == e.manifest),
        ("eval_id", signed.eval_id == e.eval_id),
        ("metric", signed.metric == e.metric),
        ("comparator", signed.comparator == e.comparator),
        ("threshold", signed.threshold == e.threshold),
        (
            "data_pack_sha256",
            signed.data_pack_sha256 == e.data_pack_sha256,
        ),
        ("sample_size", signed.sample_size == e.sample_size),
        ("seed", signed.seed == e.seed),
        ("harness_sha256", signed.harness_sha256 == e.harness_sha256),
        ("signer_key", signed.signer_key == e.signer_key),
    ];
    match fields.iter().find(|(_, same)| !same) {
        Some((name, _)) => Err(format!(
            "{name}: the entry differs from its signed statement"
        )),
        None => Ok(()),
    }
}

/// Whether a pre-registration's signer counted at its ledger time: the package's publisher
/// (`publisher_key`, the version's publication key, or a publisher key introduced for the
/// package since) or an attester for the package, not rotated away or revoked by then.
pub fn signer_counts(
    keys: &crate::keys::KeyHistory,
    publisher_key: &str,
    e: &EvalPreregistered,
    index: u64,
    time_ms: u64,
) -> bool {
    keys.judge_publisher(&e.signer_key, &e.name, publisher_key, index, time_ms)
        .is_ok()
        || keys
            .judge(
                crate::keys::ATTESTER,
                &e.signer_key,
                &e.name,
                index,
                time_ms,
            )
            .is_ok()
}

/// What a run says about the terms a pre-registration fixes, read from its signed predicate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunFacts {
    /// `reproducibility_context.harness_sha256`.
    pub harness_sha256: Option<String>,
    /// `reproducibility_context.sample_size`.
    pub sample_size: Option<u64>,
    /// `reproducibility_context.seed`.
    pub seed: Option<u64>,
    /// Each metric's value and the threshold the run states for it.
    pub metrics: BTreeMap<String, (f64, Option<String>)>,
}

impl RunFacts {
    /// Reads the facts from a run's predicate.
    pub fn of(p: &RunPredicate) -> RunFacts {
        let context = &p.reproducibility_context;
        RunFacts {
            harness_sha256: context
                .get("harness_sha256")
                .and_then(|v| v.as_str())
                .map(String::from),
            sample_size: context.get("sample_size").and_then(|v| v.as_u64()),
            seed: context.get("seed").and_then(|v| v.as_u64()),
            metrics: p
                .metrics
                .iter()
                .map(|(name, m)| {
                    (
                        name.clone(),
                        (m.value.as_f64().unwrap_or(f64::NAN), m.threshold.clone()),
                    )
                })
                .collect(),
        }
    }
}

/// Why a run does not match the pre-registration that governs it: a stable reason code and a
/// sentence. `manifest_threshold` is the EvalSpec's threshold for the pre-registered metric, if
/// it sets one.
pub fn mismatch(
    prereg: &Preregistration,
    run: &RunFacts,
    run_data_pack: Option<&str>,
    passed: bool,
    manifest_threshold: Option<Threshold>,
) -> Option<(&'static str, String)> {
    let at = prereg.index;
    let show = |v: Option<&str>| v.unwrap_or("absent").to_string();
    if let Some(pack) = &prereg.data_pack_sha256
        && run_data_pack != Some(pack.as_str())
    {
        return Some((
            "preregistration_data_pack_mismatch",
            format!(
                "the run read data pack {}, the pre-registration (entry {at}) fixed {pack}",
                show(run_data_pack)
            ),
        ));
    }
    if run.harness_sha256.as_deref() != Some(prereg.harness_sha256.as_str()) {
        return Some((
            "preregistration_harness_mismatch",
            format!(
                "the run used harness {} (reproducibility_context.harness_sha256), the pre-registration (entry {at}) fixed {}",
                show(run.harness_sha256.as_deref()),
                prereg.harness_sha256
            ),
        ));
    }
    if run.sample_size != Some(prereg.sample_size) {
        return Some((
            "preregistration_sample_size_mismatch",
            format!(
                "the run evaluated {} cases (reproducibility_context.sample_size), the pre-registration (entry {at}) fixed {}",
                run.sample_size
                    .map_or_else(|| "an unstated number of".into(), |n| n.to_string()),
                prereg.sample_size
            ),
        ));
    }
    if let Some(seed) = prereg.seed
        && run.seed != Some(seed)
    {
        return Some((
            "preregistration_seed_mismatch",
            format!(
                "the run used seed {}, the pre-registration (entry {at}) fixed {seed}",
                run.seed.map_or_else(|| "none".into(), |s| s.to_string())
            ),
        ));
    }
    let stated = run
        .metrics
        .get(&prereg.metric)
        .and_then(|(_, t)| t.as_deref())
        .map(|t| Threshold::parse(&serde_json::Value::String(t.to_string())));
    let differs = |t: &Threshold| *t != prereg.threshold;
    let changed = match (&manifest_threshold, &stated) {
        (Some(t), _) if differs(t) => Some(format!("the manifest sets {} {t}", prereg.metric)),
        (_, Some(Ok(t))) if differs(t) => Some(format!("the run states {} {t}", prereg.metric)),
        (_, Some(Err(_))) => Some(format!(
            "the run states a threshold for {} that does not parse",
            prereg.metric
        )),
        _ => None,
    };
    if let Some(changed) = changed {
        return Some((
            "preregistration_threshold_mismatch",
            format!(
                "{changed}, but the pre-registration (entry {at}) fixed {} {}",
                prereg.metric, prereg.threshold
            ),
        ));
    }
    if passed {
        match run.metrics.get(&prereg.metric) {
            None => {
                return Some((
                    "preregistration_threshold_unmet",
                    format!(
                        "the run claims passed but does not report {}, which the pre-registration (entry {at}) decides by",
                        prereg.metric
                    ),
                ));
            }
            Some((value, _)) if !prereg.threshold.holds(*value) => {
                return Some((
                    "preregistration_threshold_unmet",
                    format!(
                        "the run claims passed, but {} = {} does not meet the pre-registered {} (entry {at})",
                        prereg.metric,
                        crate::jcs::number(*value),
                        prereg.threshold
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HARNESS: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const PACK: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn predicate() -> PreregPredicate {
        serde_json::from_value(serde_json::json!({
            "package": "demo", "version": "1.0.0", "eval_id": "a", "metric": "accuracy",
            "comparator": ">=", "threshold": 0.8, "data_pack_sha256": PACK,
            "sample_size": 200, "seed": 7, "harness_sha256": HARNESS
        }))
        .expect("predicate")
    }

    fn manifest() -> Digest {
        format!("sha256:{}", "ab".repeat(32))
            .parse()
            .expect("digest")
    }

    fn prereg() -> Preregistration {
        let statement = PreregStatement::new(manifest(), predicate()).expect("valid");
        let key = SignerKey::from_seed("publisher", [1; 32]).expect("key");
        let envelope = statement.sign(&key);
        Preregistration::from_event(4, &statement.to_event(&key.verifier(), &envelope, false))
            .expect("reads back")
    }

    fn facts() -> RunFacts {
        RunFacts {
            harness_sha256: Some(HARNESS.into()),
            sample_size: Some(200),
            seed: Some(7),
            metrics: BTreeMap::from([("accuracy".to_string(), (0.81, None))]),
        }
    }

    #[test]
    fn statements_round_trip_and_sign() {
        let statement = PreregStatement::new(manifest(), predicate()).expect("valid");
        let key = SignerKey::from_seed("publisher", [1; 32]).expect("key");
        let envelope = statement.sign(&key);
        assert_eq!(
            PreregStatement::open(&envelope, &key.verifier()).expect("opens"),
            statement
        );
        let other = SignerKey::from_seed("other", [2; 32]).expect("key");
        assert!(PreregStatement::open(&envelope, &other.verifier()).is_err());
        let p = prereg();
        assert_eq!(p.threshold.to_string(), ">= 0.8");
        assert!(p.same_terms(&Preregistration {
            index: 9,
            ..p.clone()
        }));
    }

    #[test]
    fn every_field_is_checked_by_name() {
        let cases = [
            ("comparator", serde_json::json!("about")),
            ("sample_size", serde_json::json!(0)),
            (
                "harness_sha256",
                serde_json::json!("walkthrough-runner 1.0"),
            ),
            ("data_pack_sha256", serde_json::json!("md5:00")),
            ("eval_id", serde_json::json!(" ")),
            ("metric", serde_json::json!("")),
        ];
        for (name, value) in cases {
            let mut p = serde_json::to_value(predicate()).expect("json");
            p[name] = value;
            let p: PreregPredicate = serde_json::from_value(p).expect("shape");
            match PreregStatement::new(manifest(), p) {
                Err(AttestationError::Field { field, .. }) => {
                    assert_eq!(field, format!("predicate.{name}"))
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        let mut p = serde_json::to_value(predicate()).expect("json");
        p["surprise"] = serde_json::json!(1);
        assert!(serde_json::from_value::<PreregPredicate>(p).is_err());
    }

    #[test]
    fn a_run_matches_or_names_what_differs() {
        let p = prereg();
        assert_eq!(mismatch(&p, &facts(), Some(PACK), true, None), None);
        let code = |f: RunFacts, pack: Option<&str>, passed: bool, t: Option<&str>| {
            let t = t.map(|t| Threshold::parse(&serde_json::json!(t)).expect("threshold"));
            mismatch(&p, &f, pack, passed, t).map(|(c, _)| c)
        };
        assert_eq!(
            code(facts(), None, true, None),
            Some("preregistration_data_pack_mismatch")
        );
        let harness = RunFacts {
            harness_sha256: Some(PACK.into()),
            ..facts()
        };
        assert_eq!(
            code(harness, Some(PACK), true, None),
            Some("preregistration_harness_mismatch")
        );
        let size = RunFacts {
            sample_size: Some(150),
            ..facts()
        };
        assert_eq!(
            code(size, Some(PACK), true, None),
            Some("preregistration_sample_size_mismatch")
        );
        let seed = RunFacts {
            seed: None,
            ..facts()
        };
        assert_eq!(
            code(seed, Some(PACK), true, None),
            Some("preregistration_seed_mismatch")
        );
        assert_eq!(
            code(facts(), Some(PACK), true, Some(">= 0.75")),
            Some("preregistration_threshold_mismatch")
        );
        assert_eq!(code(facts(), Some(PACK), true, Some(">= 0.8")), None);
        let stated = RunFacts {
            metrics: BTreeMap::from([("accuracy".to_string(), (0.81, Some(">= 0.7".into())))]),
            ..facts()
        };
        assert_eq!(
            code(stated, Some(PACK), true, None),
            Some("preregistration_threshold_mismatch")
        );
        let low = RunFacts {
            metrics: BTreeMap::from([("accuracy".to_string(), (0.79, None))]),
            ..facts()
        };
        assert_eq!(
            code(low.clone(), Some(PACK), true, None),
            Some("preregistration_threshold_unmet")
        );
        // A failing run that says so is honest: it fails the badge as a failed run, not here.
        assert_eq!(code(low, Some(PACK), false, None), None);
    }
}
