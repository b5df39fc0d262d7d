//! The Green-Badge policy, a pure function of a version's evidence (seed 000, "Green-Badge QA").
//!
//! Policy [`POLICY`] (v3; docs/verifying.md states every rule precisely):
//! - **failing** when the publication's signature or an artifact hash does not hold, when the
//!   latest run of any required eval × compatible model failed or contradicts the EvalSpec
//!   (a metric below its threshold while claiming `passed`, another threshold, another seed),
//!   or when any scanner's latest scan of the version's content root (or of its hosted data
//!   pack) flagged it;
//! - **review** otherwise when evidence is missing or old: a required eval × model without a run,
//!   a latest run older than the maximum age, a latest run that does not name the version's
//!   hosted data pack, no scan of the package or of its hosted data pack (or a latest scan that
//!   ended in error), a license that is neither a valid SPDX expression, a `LicenseRef-`, nor one
//!   of the registry's license ids listed in the badge, no evals at all, or a yank;
//! - **green** when nothing above applies.
//!
//! "Latest" is by ledger order (integration), never by a time the runner wrote, so a late
//! failing run downgrades a badge at once and nobody can backdate evidence. Every badge carries
//! machine-readable reasons.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;

/// The policy version; part of every badge. v4 counts a run only if a pre-registration logged
/// before it governs it and the run matches it, and only if its signing key was valid at its
/// ledger time (see `keys`); a publication signed by a key revoked at its time fails.
pub const POLICY: &str = "custodian.badge-policy.v4";
/// The third policy: runs checked against the EvalSpec, the hosted data pack's digest required
/// in every counted run, the registry's license ids accepted. Bundles issued under it still
/// verify.
pub const POLICY_V3: &str = "custodian.badge-policy.v3";
/// The second policy: each scanner's latest verdict and the hosted data pack's scans count.
/// Bundles issued under it still verify.
pub const POLICY_V2: &str = "custodian.badge-policy.v2";
/// The first policy: the latest scan of the package root, whoever recorded it; data packs not
/// judged. Bundles issued under it still verify.
pub const POLICY_V1: &str = "custodian.badge-policy.v1";
/// Evidence older than this sends a badge to review unless configured otherwise (30 days).
pub const DEFAULT_MAX_AGE_MS: u64 = 30 * 24 * 3600 * 1000;

/// A badge state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Every check holds.
    Green,
    /// Evidence is missing or old.
    Review,
    /// Something failed.
    Failing,
}

impl State {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Green => "green",
            State::Review => "review",
            State::Failing => "failing",
        }
    }
}

/// Why a badge is not green (or, for green, nothing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// A stable code: `signature_invalid`, `run_failed`, `scan_flagged`, `run_missing`,
    /// `run_stale`, `scan_missing`, `scan_error`, `license_undeclared`, `no_evals`, `yanked`.
    pub code: String,
    /// The state this reason forces.
    pub state: State,
    /// A sentence for people.
    pub message: String,
    /// The eval concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<String>,
    /// The model concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The ledger entry concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<u64>,
}

/// A badge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Badge {
    /// The package name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The outcome.
    pub state: State,
    /// The policy version.
    pub policy: String,
    /// When it was evaluated, Unix milliseconds (ages are measured from here).
    pub evaluated_ms: u64,
    /// The maximum evidence age applied.
    pub max_age_ms: u64,
    /// Why it is not green; empty when green.
    pub reasons: Vec<Reason>,
    /// The ledger indexes of the evidence it rests on, ascending.
    pub evidence: Vec<u64>,
    /// The registry's license ids that count as machine-readable licenses (policy v3), as the
    /// registry declared them when it issued the badge; empty when none are configured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_licenses: Vec<String>,
}

/// One attested run, as the policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// Its ledger index.
    pub index: u64,
    /// Its integration time.
    pub time_ms: u64,
    /// The eval id.
    pub eval_id: String,
    /// The model.
    pub model: String,
    /// Whether it passed.
    pub passed: bool,
    /// The data pack it names (`data_pack_sha256`), if any.
    pub data_pack_sha256: Option<String>,
    /// Why the run contradicts its EvalSpec ([`crate::attestation::check_against_eval`]), if
    /// it does.
    pub problem: Option<String>,
    /// What its signed predicate says about the pre-registered terms (policy v4).
    pub facts: crate::prereg::RunFacts,
    /// Why its attester key did not count at its ledger time, if it did not (policy v4).
    pub key: Option<crate::keys::Judgement>,
}

/// One recorded scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Its ledger index.
    pub index: u64,
    /// The scanner's identity.
    pub scanner: String,
    /// The content root scanned.
    pub root: String,
    /// `clean`, `flagged` or `error`.
    pub verdict: String,
}

/// Everything the policy looks at for one version.
pub struct Evidence<'a> {
    /// The package name.
    pub name: &'a str,
    /// Its version.
    pub version: &'a str,
    /// The parsed manifest.
    pub manifest: &'a Manifest,
    /// The package root, `sha256:<hex>`.
    pub root: &'a str,
    /// The ledger index of the publication.
    pub publication: u64,
    /// Whether the publication's signature and artifact hashes hold.
    pub signature_ok: bool,
    /// The yank's ledger index, if yanked.
    pub yanked: Option<u64>,
    /// Every attested run of the version, in any order.
    pub runs: &'a [Run],
    /// Every recorded scan of the version (package and data pack), in any order.
    pub scans: &'a [Scan],
    /// The hosted data pack, if the version has one.
    pub data_pack: Option<DataPackRef<'a>>,
    /// The registry's license ids that count as machine-readable (policy v3).
    pub registry_licenses: &'a [String],
    /// Every pre-registration of the version's evals, in any order (policy v4).
    pub preregistrations: &'a [crate::prereg::Preregistration],
    /// Why the publisher key did not count at the publication's ledger time, if it did not
    /// (policy v4).
    pub publisher_key: Option<crate::keys::Judgement>,
}

/// A version's hosted data pack, as the policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct DataPackRef<'a> {
    /// The ledger index of its registration.
    pub index: u64,
    /// Its content root, `sha256:<hex>`.
    pub root: &'a str,
}

/// Whether a license is declared machine-readably: a valid SPDX expression (identifiers matched
/// ignoring case, as the SPDX specification allows), with `LicenseRef-` for anything else.
pub fn check_license(license: &str) -> Result<(), String> {
    let mode = spdx::ParseMode {
        allow_deprecated: true,
        ..spdx::ParseMode::STRICT
    };
    if spdx::Expression::parse_mode(license, mode).is_ok() {
        return Ok(());
    }
    // Retry with identifiers in their canonical case (apache-2.0 → Apache-2.0).
    let canonical: Vec<String> = license
        .split_whitespace()
        .map(|word| {
            let trimmed = word.trim_matches(['(', ')']);
            let found = spdx::identifiers::LICENSES
                .iter()
                .find(|l| l.0.eq_ignore_ascii_case(trimmed));
            match found {
                Some(l) => word.replace(trimmed, l.0),
                None => word.to_string(),
            }
        })
        .collect();
    spdx::Expression::parse_mode(&canonical.join(" "), mode)
        .map(|_| ())
        .map_err(|e| format!("{license:?} is not a valid SPDX expression ({}); use an SPDX identifier or a LicenseRef-", e.reason))
}

/// Whether a license counts as declared machine-readably under policy v3: an SPDX expression or
/// `LicenseRef-` ([`check_license`]), or exactly one of the registry's license ids.
pub fn check_license_v3(license: &str, registry_licenses: &[String]) -> Result<(), String> {
    if registry_licenses.iter().any(|id| id == license) {
        return Ok(());
    }
    check_license(license).map_err(|message| {
        if registry_licenses.is_empty() {
            message
        } else {
            format!(
                "{message}, or one of the registry's license ids ({})",
                registry_licenses.join(", ")
            )
        }
    })
}

/// Applies the current policy ([`POLICY`]) at time `now_ms`.
pub fn evaluate(e: &Evidence<'_>, now_ms: u64, max_age_ms: u64) -> Badge {
    evaluate_as(4, e, now_ms, max_age_ms)
}

/// Applies a named policy version, for checking badges issued under an earlier one; `None` if
/// the policy is unknown.
pub fn evaluate_policy(
    policy: &str,
    e: &Evidence<'_>,
    now_ms: u64,
    max_age_ms: u64,
) -> Option<Badge> {
    match policy {
        POLICY_V1 => Some(evaluate_as(1, e, now_ms, max_age_ms)),
        POLICY_V2 => Some(evaluate_as(2, e, now_ms, max_age_ms)),
        POLICY_V3 => Some(evaluate_as(3, e, now_ms, max_age_ms)),
        POLICY => Some(evaluate_as(4, e, now_ms, max_age_ms)),
        _ => None,
    }
}

/// Each scanner's latest scan of `root` (by ledger index), as the policy counts them.
pub fn latest_per_scanner<'a>(scans: &'a [Scan], root: &str) -> Vec<&'a Scan> {
    let mut latest: BTreeMap<&str, &Scan> = BTreeMap::new();
    for scan in scans.iter().filter(|s| s.root == root) {
        let slot = latest.entry(scan.scanner.as_str()).or_insert(scan);
        if scan.index > slot.index {
            *slot = scan;
        }
    }
    latest.into_values().collect()
}

type ReasonFn<'r> = dyn FnMut(&str, State, String, Option<&str>, Option<&str>, Option<u64>) + 'r;

/// The reasons the counted scans of one content root give: flagged by any scanner fails, an
/// error or no scan at all sends to review.
fn scan_reasons(
    scans: Vec<&Scan>,
    root: &str,
    prefix: &str,
    used: &mut Vec<u64>,
    reason: &mut ReasonFn<'_>,
) {
    let what = if prefix.is_empty() {
        "content"
    } else {
        "data pack"
    };
    if scans.is_empty() {
        reason(
            &format!("{prefix}scan_missing"),
            State::Review,
            format!("no scan of {what} root {root} is recorded"),
            None,
            None,
            None,
        );
        return;
    }
    used.extend(scans.iter().map(|s| s.index));
    let by = |s: &Scan| {
        if s.scanner.is_empty() {
            String::new()
        } else {
            format!(" by {}", s.scanner)
        }
    };
    for scan in &scans {
        match scan.verdict.as_str() {
            "clean" => {}
            "flagged" => reason(
                &format!("{prefix}scan_flagged"),
                State::Failing,
                format!("the latest scan{} flagged the {what}", by(scan)),
                None,
                None,
                Some(scan.index),
            ),
            _ => reason(
                &format!("{prefix}scan_error"),
                State::Review,
                format!(
                    "the latest scan{} of the {what} ended in error; a new scan is needed",
                    by(scan)
                ),
                None,
                None,
                Some(scan.index),
            ),
        }
    }
}

/// Policy v4's pre-registration rules for the counted run of one eval: the pre-registration
/// that governs it is the latest of that eval with a lower ledger index; there must be one; the
/// run must match it; and no pre-registration logged after the run may change its terms. The
/// entries consulted are added to `used`. Returns the reason code, state, message and entry.
fn preregistration_reason(
    e: &Evidence<'_>,
    eval: &str,
    run: &Run,
    used: &mut Vec<u64>,
) -> Option<(&'static str, State, String, u64)> {
    let mut preregs: Vec<&crate::prereg::Preregistration> = e
        .preregistrations
        .iter()
        .filter(|p| p.eval_id == eval)
        .collect();
    preregs.sort_by_key(|p| p.index);
    let Some(governing) = preregs.iter().rev().find(|p| p.index < run.index) else {
        if let Some(first) = preregs.first() {
            used.push(first.index);
            return Some((
                "run_before_preregistration",
                State::Review,
                format!(
                    "the run (entry {}) was logged before the eval's pre-registration (entry {}); a run after it is needed",
                    run.index, first.index
                ),
                run.index,
            ));
        }
        return Some((
            "preregistration_missing",
            State::Review,
            format!(
                "no pre-registration of {eval} precedes the run (entry {}); pre-register the eval's criteria, then run it",
                run.index
            ),
            run.index,
        ));
    };
    used.push(governing.index);
    let manifest_threshold = e
        .manifest
        .evals
        .iter()
        .find(|x| x.id() == eval)
        .and_then(|x| x.thresholds().get(&governing.metric).copied());
    if let Some((code, message)) = crate::prereg::mismatch(
        governing,
        &run.facts,
        run.data_pack_sha256.as_deref(),
        run.passed,
        manifest_threshold,
    ) {
        return Some((code, State::Failing, message, run.index));
    }
    if let Some(changed) = preregs
        .iter()
        .find(|p| p.index > run.index && !p.same_terms(governing))
    {
        used.push(changed.index);
        return Some((
            "preregistration_changed",
            State::Review,
            format!(
                "the eval's pre-registration was changed at entry {}, after the run (entry {}) was logged; a run after the change is needed",
                changed.index, run.index
            ),
            changed.index,
        ));
    }
    None
}

fn evaluate_as(version: u8, e: &Evidence<'_>, now_ms: u64, max_age_ms: u64) -> Badge {
    let mut reasons = Vec::new();
    let mut used = vec![e.publication];
    let mut reason = |code: &str,
                      state: State,
                      message: String,
                      eval: Option<&str>,
                      model: Option<&str>,
                      entry: Option<u64>| {
        reasons.push(Reason {
            code: code.into(),
            state,
            message,
            eval: eval.map(String::from),
            model: model.map(String::from),
            entry,
        });
    };
    if !e.signature_ok {
        reason(
            "signature_invalid",
            State::Failing,
            "the publication's signature or artifact hashes do not hold".into(),
            None,
            None,
            Some(e.publication),
        );
    }
    if version >= 4
        && let Some(judgement) = &e.publisher_key
    {
        reason(
            "publisher_key_invalid",
            State::Failing,
            format!("the publication's signature does not count: {judgement}"),
            None,
            None,
            Some(e.publication),
        );
    }
    // Under v4 a run whose attester key did not count at its ledger time is passed over: the
    // latest run by a valid key counts, and each invalid one after it is named.
    let counts = |run: &&Run| version < 4 || run.key.is_none();
    let mut latest: BTreeMap<(&str, &str), &Run> = BTreeMap::new();
    for run in e.runs.iter().filter(counts) {
        let slot = latest
            .entry((run.eval_id.as_str(), run.model.as_str()))
            .or_insert(run);
        if run.index > slot.index {
            *slot = run;
        }
    }
    let models = e.manifest.compatible_models();
    let required: Vec<&str> = e
        .manifest
        .evals
        .iter()
        .filter(|x| x.required())
        .map(|x| x.id())
        .collect();
    if required.is_empty() {
        reason(
            "no_evals",
            State::Review,
            "the manifest declares no required evals".into(),
            None,
            None,
            None,
        );
    }
    for eval in &required {
        for model in &models {
            let counted = latest.get(&(*eval, model.as_str())).map(|r| r.index);
            if version >= 4 {
                let mut passed_over: Vec<&Run> = e
                    .runs
                    .iter()
                    .filter(|r| r.eval_id == *eval && r.model == *model)
                    .filter(|r| r.key.is_some() && counted.is_none_or(|c| r.index > c))
                    .collect();
                passed_over.sort_by_key(|r| r.index);
                for run in passed_over {
                    used.push(run.index);
                    reason(
                        "run_key_invalid",
                        State::Review,
                        format!(
                            "the run of {eval} against {model} at entry {} does not count: {}",
                            run.index,
                            run.key
                                .as_ref()
                                .map(ToString::to_string)
                                .unwrap_or_default()
                        ),
                        Some(eval),
                        Some(model),
                        Some(run.index),
                    );
                }
            }
            match latest.get(&(*eval, model.as_str())) {
                None => reason(
                    "run_missing",
                    State::Review,
                    format!("no attested run of {eval} against {model}"),
                    Some(eval),
                    Some(model),
                    None,
                ),
                Some(run) => {
                    used.push(run.index);
                    let pack_missing = version >= 3
                        && e.data_pack
                            .is_some_and(|pack| run.data_pack_sha256.as_deref() != Some(pack.root));
                    if let (true, Some(problem)) = (version >= 3, &run.problem) {
                        reason(
                            "run_invalid",
                            State::Failing,
                            format!(
                                "the latest run of {eval} against {model} contradicts the EvalSpec: {problem}"
                            ),
                            Some(eval),
                            Some(model),
                            Some(run.index),
                        );
                    } else if !run.passed {
                        reason(
                            "run_failed",
                            State::Failing,
                            format!("the latest run of {eval} against {model} failed"),
                            Some(eval),
                            Some(model),
                            Some(run.index),
                        );
                    } else if let Some((code, state, message, entry)) = (version >= 4)
                        .then(|| preregistration_reason(e, eval, run, &mut used))
                        .flatten()
                    {
                        reason(
                            code,
                            state,
                            format!("the latest run of {eval} against {model}: {message}"),
                            Some(eval),
                            Some(model),
                            Some(entry),
                        );
                    } else if pack_missing {
                        reason(
                            "run_data_pack_missing",
                            State::Review,
                            format!(
                                "the latest run of {eval} against {model} does not name the hosted data pack {} in data_pack_sha256",
                                e.data_pack.map(|p| p.root).unwrap_or_default()
                            ),
                            Some(eval),
                            Some(model),
                            Some(run.index),
                        );
                    } else if now_ms.saturating_sub(run.time_ms) > max_age_ms {
                        reason(
                            "run_stale",
                            State::Review,
                            format!(
                                "the latest run of {eval} against {model} is {} days old, more than {} allowed",
                                now_ms.saturating_sub(run.time_ms) / 86_400_000,
                                max_age_ms / 86_400_000
                            ),
                            Some(eval),
                            Some(model),
                            Some(run.index),
                        );
                    }
                }
            }
        }
    }
    if version == 1 {
        // v1: the latest scan of the package root, whoever recorded it.
        let latest = e
            .scans
            .iter()
            .filter(|s| s.root == e.root)
            .max_by_key(|s| s.index);
        scan_reasons(
            latest.into_iter().collect(),
            e.root,
            "",
            &mut used,
            &mut reason,
        );
    } else {
        // v2: each scanner's latest verdict counts, the worst of them decides, so a clean
        // rescan by one scanner cannot hide another scanner's flag.
        scan_reasons(
            latest_per_scanner(e.scans, e.root),
            e.root,
            "",
            &mut used,
            &mut reason,
        );
        if let Some(pack) = &e.data_pack {
            used.push(pack.index);
            scan_reasons(
                latest_per_scanner(e.scans, pack.root),
                pack.root,
                "data_pack_",
                &mut used,
                &mut reason,
            );
        }
    }
    let license = if version >= 3 {
        check_license_v3(e.manifest.license.id(), e.registry_licenses)
    } else {
        check_license(e.manifest.license.id())
    };
    if let Err(message) = license {
        reason(
            "license_undeclared",
            State::Review,
            message,
            None,
            None,
            None,
        );
    }
    if let Some(index) = e.yanked {
        used.push(index);
        reason(
            "yanked",
            State::Review,
            "the version is yanked".into(),
            None,
            None,
            Some(index),
        );
    }
    used.sort_unstable();
    used.dedup();
    let state = reasons
        .iter()
        .map(|r| r.state)
        .max()
        .unwrap_or(State::Green);
    Badge {
        name: e.name.to_string(),
        version: e.version.to_string(),
        state,
        policy: match version {
            1 => POLICY_V1,
            2 => POLICY_V2,
            3 => POLICY_V3,
            _ => POLICY,
        }
        .into(),
        evaluated_ms: now_ms,
        max_age_ms,
        reasons,
        evidence: used,
        registry_licenses: if version >= 3 {
            e.registry_licenses.to_vec()
        } else {
            Vec::new()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The v1–v3 tests below pin policy v3's behaviour, which old bundles keep verifying under;
    /// v4's additions are tested on their own further down.
    fn evaluate(e: &Evidence<'_>, now_ms: u64, max_age_ms: u64) -> Badge {
        evaluate_policy(POLICY_V3, e, now_ms, max_age_ms).expect("v3 is known")
    }

    const MANIFEST: &str = "name: demo\nversion: 1.0.0\ntype: prompt_spec\nbase_model: [m1, m2]\nevals: [a, b]\nlicense: apache-2.0\n";
    const DAY: u64 = 86_400_000;

    fn manifest(text: &str) -> Manifest {
        Manifest::parse("manifest.yaml", text, None)
            .0
            .expect("valid manifest")
    }

    fn run(index: u64, eval: &str, model: &str, passed: bool) -> Run {
        Run {
            index,
            time_ms: 1000 * DAY + index,
            eval_id: eval.into(),
            model: model.into(),
            passed,
            data_pack_sha256: None,
            problem: None,
            facts: Default::default(),
            key: None,
        }
    }

    fn all_passing() -> Vec<Run> {
        vec![
            run(1, "a", "m1", true),
            run(2, "a", "m2", true),
            run(3, "b", "m1", true),
            run(4, "b", "m2", true),
        ]
    }

    fn clean() -> Vec<Scan> {
        vec![Scan {
            index: 5,
            scanner: "custodian.builtin".into(),
            root: "sha256:r".into(),
            verdict: "clean".into(),
        }]
    }

    /// The evidence of the demo version `demo@1.0.0` (root `sha256:r`, publication 0, signed).
    fn demo<'a>(m: &'a Manifest, runs: &'a [Run], scans: &'a [Scan]) -> Evidence<'a> {
        Evidence {
            name: "demo",
            version: "1.0.0",
            manifest: m,
            root: "sha256:r",
            publication: 0,
            signature_ok: true,
            yanked: None,
            runs,
            scans,
            data_pack: None,
            registry_licenses: &[],
            preregistrations: &[],
            publisher_key: None,
        }
    }

    fn badge(
        m: &Manifest,
        runs: &[Run],
        scans: &[Scan],
        signature_ok: bool,
        yanked: Option<u64>,
    ) -> Badge {
        let e = Evidence {
            signature_ok,
            yanked,
            ..demo(m, runs, scans)
        };
        evaluate(&e, 1001 * DAY, DEFAULT_MAX_AGE_MS)
    }

    fn scan(index: u64, scanner: &str, root: &str, verdict: &str) -> Scan {
        Scan {
            index,
            scanner: scanner.into(),
            root: root.into(),
            verdict: verdict.into(),
        }
    }

    #[test]
    fn every_scanners_latest_verdict_counts() {
        let m = manifest(MANIFEST);
        let runs = all_passing();
        // A clean rescan by the built-in scanner does not hide the vendor's flag…
        let hidden = [
            scan(5, "vendor", "sha256:r", "flagged"),
            scan(6, "custodian.builtin", "sha256:r", "clean"),
        ];
        let b = badge(&m, &runs, &hidden, true, None);
        assert_eq!(b.state, State::Failing);
        assert_eq!(codes(&b), ["scan_flagged"]);
        assert_eq!(b.evidence, [0, 1, 2, 3, 4, 5, 6]);
        // …but the vendor's own later clean verdict replaces its flag.
        let cleared = [
            scan(5, "vendor", "sha256:r", "flagged"),
            scan(6, "custodian.builtin", "sha256:r", "clean"),
            scan(7, "vendor", "sha256:r", "clean"),
        ];
        assert_eq!(badge(&m, &runs, &cleared, true, None).state, State::Green);
        // Under policy v1 the latest scan alone decided, as bundles issued then recorded.
        let e = demo(&m, &runs, &hidden);
        let v1 = evaluate_policy(POLICY_V1, &e, 1001 * DAY, DEFAULT_MAX_AGE_MS).expect("v1 known");
        assert_eq!((v1.state, v1.policy.as_str()), (State::Green, POLICY_V1));
        assert!(evaluate_policy("custodian.badge-policy.v0", &e, 0, 0).is_none());
    }

    #[test]
    fn a_hosted_data_pack_must_be_scanned_clean() {
        let m = manifest(MANIFEST);
        // Runs name the hosted pack (policy v3 counts no other run; see the next test).
        let runs: Vec<Run> = all_passing()
            .into_iter()
            .map(|r| Run {
                data_pack_sha256: Some("sha256:d".into()),
                ..r
            })
            .collect();
        let with = |scans: &[Scan]| {
            evaluate(
                &Evidence {
                    data_pack: Some(DataPackRef {
                        index: 9,
                        root: "sha256:d",
                    }),
                    ..demo(&m, &runs, scans)
                },
                1001 * DAY,
                DEFAULT_MAX_AGE_MS,
            )
        };
        let package_only = [scan(5, "custodian.builtin", "sha256:r", "clean")];
        let b = with(&package_only);
        assert_eq!(
            (b.state, codes(&b)),
            (State::Review, vec!["data_pack_scan_missing"])
        );
        let flagged = [
            scan(5, "custodian.builtin", "sha256:r", "clean"),
            scan(10, "custodian.builtin", "sha256:d", "flagged"),
        ];
        let b = with(&flagged);
        assert_eq!(
            (b.state, codes(&b)),
            (State::Failing, vec!["data_pack_scan_flagged"])
        );
        let clean = [
            scan(5, "custodian.builtin", "sha256:r", "clean"),
            scan(10, "custodian.builtin", "sha256:d", "clean"),
        ];
        let b = with(&clean);
        assert_eq!(b.state, State::Green);
        assert!(b.evidence.contains(&9) && b.evidence.contains(&10));
    }

    /// Policy v3: with a hosted data pack, a latest run that does not name it does not count,
    /// whenever the pack was registered; v2 still counted it.
    #[test]
    fn runs_must_name_the_hosted_data_pack() {
        let m = manifest(MANIFEST);
        let mut runs: Vec<Run> = all_passing()
            .into_iter()
            .map(|r| Run {
                data_pack_sha256: Some("sha256:d".into()),
                ..r
            })
            .collect();
        runs[3].data_pack_sha256 = None;
        let scans = [
            scan(5, "custodian.builtin", "sha256:r", "clean"),
            scan(10, "custodian.builtin", "sha256:d", "clean"),
        ];
        let e = Evidence {
            data_pack: Some(DataPackRef {
                index: 9,
                root: "sha256:d",
            }),
            ..demo(&m, &runs, &scans)
        };
        let b = evaluate(&e, 1001 * DAY, DEFAULT_MAX_AGE_MS);
        assert_eq!(
            (b.state, codes(&b)),
            (State::Review, vec!["run_data_pack_missing"])
        );
        assert_eq!(
            (
                b.reasons[0].eval.as_deref(),
                b.reasons[0].model.as_deref(),
                b.reasons[0].entry
            ),
            (Some("b"), Some("m2"), Some(4))
        );
        let mut other = runs.clone();
        other[3].data_pack_sha256 = Some("sha256:other".into());
        let e = Evidence { runs: &other, ..e };
        assert_eq!(
            codes(&evaluate(&e, 1001 * DAY, DEFAULT_MAX_AGE_MS)),
            ["run_data_pack_missing"]
        );
        let v2 = evaluate_policy(POLICY_V2, &e, 1001 * DAY, DEFAULT_MAX_AGE_MS).expect("v2");
        assert_eq!(v2.state, State::Green);
    }

    /// Policy v3: a run that contradicts its EvalSpec fails the badge, whatever it claims.
    #[test]
    fn a_run_contradicting_its_evalspec_fails() {
        let m = manifest(MANIFEST);
        let mut runs = all_passing();
        runs[0].problem = Some("accuracy = 0.81 does not meet >= 0.9".into());
        let b = badge(&m, &runs, &clean(), true, None);
        assert_eq!((b.state, codes(&b)), (State::Failing, vec!["run_invalid"]));
        assert!(b.reasons[0].message.contains("0.81"), "{:?}", b.reasons);
    }

    /// Policy v3: the registry's license ids count; anything else still needs SPDX.
    #[test]
    fn registry_license_ids_count_under_v3() {
        let m = manifest(&MANIFEST.replace("apache-2.0", "private-commercial"));
        let runs = all_passing();
        let scans = clean();
        let ids = vec!["private-commercial".to_string()];
        let mut e = Evidence {
            registry_licenses: &ids,
            ..demo(&m, &runs, &scans)
        };
        let b = evaluate(&e, 1001 * DAY, DEFAULT_MAX_AGE_MS);
        assert_eq!(b.state, State::Green, "{:?}", b.reasons);
        assert_eq!(b.registry_licenses, ids);
        e.registry_licenses = &[];
        let b = evaluate(&e, 1001 * DAY, DEFAULT_MAX_AGE_MS);
        assert_eq!(codes(&b), ["license_undeclared"]);
        e.registry_licenses = &ids;
        let v2 = evaluate_policy(POLICY_V2, &e, 1001 * DAY, DEFAULT_MAX_AGE_MS).expect("v2");
        assert_eq!(codes(&v2), ["license_undeclared"]);
        assert!(v2.registry_licenses.is_empty());
    }

    fn codes(b: &Badge) -> Vec<&str> {
        b.reasons.iter().map(|r| r.code.as_str()).collect()
    }

    #[test]
    fn green_when_every_check_holds() {
        let m = manifest(MANIFEST);
        let b = badge(&m, &all_passing(), &clean(), true, None);
        assert_eq!((b.state, codes(&b)), (State::Green, vec![]));
        assert_eq!(b.evidence, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_later_failing_run_downgrades_at_once_and_a_later_pass_restores() {
        let m = manifest(MANIFEST);
        let mut runs = all_passing();
        runs.push(run(9, "b", "m2", false));
        let b = badge(&m, &runs, &clean(), true, None);
        assert_eq!((b.state, codes(&b)), (State::Failing, vec!["run_failed"]));
        assert_eq!(b.reasons[0].entry, Some(9));
        runs.push(run(10, "b", "m2", true));
        assert_eq!(badge(&m, &runs, &clean(), true, None).state, State::Green);
    }

    #[test]
    fn review_for_missing_or_old_evidence() {
        let m = manifest(MANIFEST);
        let runs: Vec<Run> = all_passing()
            .into_iter()
            .filter(|r| r.model != "m2" || r.eval_id != "b")
            .collect();
        let b = badge(&m, &runs, &clean(), true, None);
        assert_eq!((b.state, codes(&b)), (State::Review, vec!["run_missing"]));
        assert_eq!(
            (b.reasons[0].eval.as_deref(), b.reasons[0].model.as_deref()),
            (Some("b"), Some("m2"))
        );
        let b = badge(&m, &all_passing(), &[], true, None);
        assert_eq!(codes(&b), ["scan_missing"]);
        let other_root = vec![Scan {
            index: 5,
            scanner: "custodian.builtin".into(),
            root: "sha256:other".into(),
            verdict: "clean".into(),
        }];
        assert_eq!(
            codes(&badge(&m, &all_passing(), &other_root, true, None)),
            ["scan_missing"]
        );
        let error = vec![Scan {
            index: 5,
            scanner: "custodian.builtin".into(),
            root: "sha256:r".into(),
            verdict: "error".into(),
        }];
        assert_eq!(
            codes(&badge(&m, &all_passing(), &error, true, None)),
            ["scan_error"]
        );
        let e = Evidence {
            name: "demo",
            version: "1.0.0",
            manifest: &m,
            root: "sha256:r",
            publication: 0,
            signature_ok: true,
            yanked: None,
            runs: &all_passing(),
            scans: &clean(),
            data_pack: None,
            registry_licenses: &[],
            preregistrations: &[],
            publisher_key: None,
        };
        let b = evaluate(&e, 1000 * DAY + 31 * DAY, DEFAULT_MAX_AGE_MS);
        assert_eq!((b.state, b.reasons.len()), (State::Review, 4));
        assert!(codes(&b).iter().all(|c| *c == "run_stale"));
        assert_eq!(
            codes(&badge(&m, &all_passing(), &clean(), true, Some(7))),
            ["yanked"]
        );
        let m = manifest(&MANIFEST.replace("evals: [a, b]\n", ""));
        assert_eq!(codes(&badge(&m, &[], &clean(), true, None)), ["no_evals"]);
    }

    #[test]
    fn failing_beats_review() {
        let m = manifest(MANIFEST);
        let flagged = vec![Scan {
            index: 5,
            scanner: "custodian.builtin".into(),
            root: "sha256:r".into(),
            verdict: "flagged".into(),
        }];
        let b = badge(&m, &[], &flagged, false, None);
        assert_eq!(b.state, State::Failing);
        assert_eq!(codes(&b)[0], "signature_invalid");
        assert!(codes(&b).contains(&"scan_flagged") && codes(&b).contains(&"run_missing"));
    }

    #[test]
    fn licenses() {
        for ok in [
            "Apache-2.0",
            "apache-2.0",
            "MIT OR Apache-2.0",
            "LicenseRef-acme-internal",
            "GPL-2.0-only WITH Classpath-exception-2.0",
            "(MIT AND BSD-3-Clause)",
        ] {
            check_license(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["private-commercial", "", "MIT OR", "Apache 2"] {
            assert!(check_license(bad).is_err(), "{bad}");
        }
        let m = manifest(&MANIFEST.replace("apache-2.0", "private-commercial"));
        assert_eq!(
            codes(&badge(&m, &all_passing(), &clean(), true, None)),
            ["license_undeclared"]
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    const MANIFEST: &str = "name: demo\nversion: 1.0.0\ntype: prompt_spec\nbase_model: [m1, m2]\nevals: [a, b, c]\nlicense: MIT\n";

    fn runs() -> impl Strategy<Value = Vec<(u8, u8, bool)>> {
        proptest::collection::vec((0u8..3, 0u8..2, any::<bool>()), 0..20)
    }

    fn evaluate_runs(list: &[(u8, u8, bool)], scan: Option<&str>) -> Badge {
        let manifest = Manifest::parse("manifest.yaml", MANIFEST, None)
            .0
            .expect("manifest");
        let runs: Vec<Run> = list
            .iter()
            .enumerate()
            .map(|(i, (e, m, passed))| Run {
                index: 10 + i as u64,
                time_ms: 1_000,
                eval_id: ["a", "b", "c"][*e as usize].into(),
                model: ["m1", "m2"][*m as usize].into(),
                passed: *passed,
                data_pack_sha256: None,
                problem: None,
                facts: Default::default(),
                key: None,
            })
            .collect();
        let scans: Vec<Scan> = scan
            .map(|v| Scan {
                index: 1,
                scanner: "custodian.builtin".into(),
                root: "r".into(),
                verdict: v.into(),
            })
            .into_iter()
            .collect();
        let e = Evidence {
            name: "demo",
            version: "1.0.0",
            manifest: &manifest,
            root: "r",
            publication: 0,
            signature_ok: true,
            yanked: None,
            runs: &runs,
            scans: &scans,
            data_pack: None,
            registry_licenses: &[],
            preregistrations: &[],
            publisher_key: None,
        };
        evaluate_policy(POLICY_V3, &e, 2_000, DEFAULT_MAX_AGE_MS).expect("v3 is known")
    }

    proptest! {
        /// The state is exactly what the rules say, computed here independently from the runs.
        #[test]
        fn state_follows_the_latest_runs(list in runs(), scan in proptest::option::of(prop_oneof!["clean", "flagged", "error"])) {
            let badge = evaluate_runs(&list, scan.as_deref());
            let mut latest = std::collections::BTreeMap::new();
            for (e, m, passed) in &list {
                latest.insert((*e, *m), *passed);
            }
            let any_failed = latest.values().any(|p| !p);
            let complete = latest.len() == 6;
            let expected = if any_failed || scan.as_deref() == Some("flagged") {
                State::Failing
            } else if complete && scan.as_deref() == Some("clean") {
                State::Green
            } else {
                State::Review
            };
            prop_assert_eq!(badge.state, expected);
            // Appending a failing run for any pair never leaves the badge green.
            let mut worse = list.clone();
            worse.push((0, 0, false));
            prop_assert_eq!(evaluate_runs(&worse, scan.as_deref()).state, State::Failing);
            // Evidence is sorted and unique, and holds the publication.
            prop_assert!(badge.evidence.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(badge.evidence.first(), Some(&0));
        }
    }
}

/// Policy v4: pre-registration and keys judged at ledger time.
#[cfg(test)]
mod v4 {
    use super::*;
    use crate::keys::Judgement;
    use crate::manifest::{Comparator, Threshold};
    use crate::prereg::{Preregistration, RunFacts};

    const MANIFEST: &str =
        "name: demo\nversion: 1.0.0\ntype: prompt_spec\nbase_model: m1\nevals: [a]\nlicense: MIT\n";
    const HARNESS: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn prereg(index: u64, value: f64) -> Preregistration {
        Preregistration {
            index,
            eval_id: "a".into(),
            metric: "score".into(),
            threshold: Threshold {
                comparator: Comparator::AtLeast,
                value,
            },
            data_pack_sha256: None,
            sample_size: 10,
            seed: None,
            harness_sha256: HARNESS.into(),
        }
    }

    fn run(index: u64, score: f64) -> Run {
        Run {
            index,
            time_ms: index * 1000,
            eval_id: "a".into(),
            model: "m1".into(),
            passed: true,
            data_pack_sha256: None,
            problem: None,
            facts: RunFacts {
                harness_sha256: Some(HARNESS.into()),
                sample_size: Some(10),
                seed: None,
                metrics: [("score".to_string(), (score, None))].into(),
            },
            key: None,
        }
    }

    fn badge(runs: &[Run], preregs: &[Preregistration], publisher: Option<Judgement>) -> Badge {
        let m = Manifest::parse("manifest.yaml", MANIFEST, None)
            .0
            .expect("manifest");
        let scans = [Scan {
            index: 1,
            scanner: "s".into(),
            root: "sha256:r".into(),
            verdict: "clean".into(),
        }];
        evaluate(
            &Evidence {
                name: "demo",
                version: "1.0.0",
                manifest: &m,
                root: "sha256:r",
                publication: 0,
                signature_ok: true,
                yanked: None,
                runs,
                scans: &scans,
                data_pack: None,
                registry_licenses: &[],
                preregistrations: preregs,
                publisher_key: publisher,
            },
            100_000,
            DEFAULT_MAX_AGE_MS,
        )
    }

    fn codes(b: &Badge) -> Vec<(&str, Option<u64>)> {
        b.reasons
            .iter()
            .map(|r| (r.code.as_str(), r.entry))
            .collect()
    }

    #[test]
    fn a_clean_sequence_is_green_and_rests_on_its_preregistration() {
        let b = badge(&[run(5, 0.81)], &[prereg(2, 0.8)], None);
        assert_eq!((b.state, b.policy.as_str()), (State::Green, POLICY));
        assert_eq!(b.evidence, [0, 1, 2, 5]);
        // The same evidence under v3 needs no pre-registration.
        let m = Manifest::parse("manifest.yaml", MANIFEST, None)
            .0
            .expect("manifest");
        let e = Evidence {
            name: "demo",
            version: "1.0.0",
            manifest: &m,
            root: "sha256:r",
            publication: 0,
            signature_ok: true,
            yanked: None,
            runs: &[run(5, 0.81)],
            scans: &[],
            data_pack: None,
            registry_licenses: &[],
            preregistrations: &[],
            publisher_key: None,
        };
        let v3 = evaluate_policy(POLICY_V3, &e, 100_000, DEFAULT_MAX_AGE_MS).expect("v3");
        assert!(!codes(&v3).iter().any(|(c, _)| c.starts_with("prereg")));
    }

    #[test]
    fn each_preregistration_failure_has_its_own_reason() {
        type Case = (
            Vec<Run>,
            Vec<Preregistration>,
            (&'static str, Option<u64>),
            State,
        );
        let cases: Vec<Case> = vec![
            (
                vec![run(5, 0.81)],
                vec![],
                ("preregistration_missing", Some(5)),
                State::Review,
            ),
            (
                vec![run(5, 0.81)],
                vec![prereg(7, 0.8)],
                ("run_before_preregistration", Some(5)),
                State::Review,
            ),
            // Seen 0.81 against a bar of 0.9, then the bar "pre-registered" again at 0.8.
            (
                vec![run(5, 0.81)],
                vec![prereg(2, 0.9), prereg(7, 0.8)],
                ("preregistration_threshold_unmet", Some(5)),
                State::Failing,
            ),
            (
                vec![run(5, 0.95)],
                vec![prereg(2, 0.9), prereg(7, 0.8)],
                ("preregistration_changed", Some(7)),
                State::Review,
            ),
            (
                vec![Run {
                    data_pack_sha256: None,
                    facts: RunFacts {
                        harness_sha256: None,
                        ..run(5, 0.9).facts
                    },
                    ..run(5, 0.9)
                }],
                vec![prereg(2, 0.8)],
                ("preregistration_harness_mismatch", Some(5)),
                State::Failing,
            ),
        ];
        for (runs, preregs, reason, state) in cases {
            let b = badge(&runs, &preregs, None);
            assert_eq!(codes(&b), [reason], "{b:?}");
            assert_eq!(b.state, state);
        }
        // A re-registration with the same terms after the run changes nothing.
        let b = badge(&[run(5, 0.81)], &[prereg(2, 0.8), prereg(7, 0.8)], None);
        assert_eq!(b.state, State::Green, "{b:?}");
    }

    #[test]
    fn runs_by_keys_invalid_at_their_time_are_passed_over_and_named() {
        let revoked = Judgement::Revoked {
            index: 9,
            reason: "compromise".into(),
            effective_ms: 6_000,
        };
        let late = Run {
            key: Some(revoked.clone()),
            ..run(6, 0.99)
        };
        // The earlier run by a valid key counts; the later one is named.
        let b = badge(&[run(5, 0.81), late.clone()], &[prereg(2, 0.8)], None);
        assert_eq!(codes(&b), [("run_key_invalid", Some(6))]);
        assert_eq!(b.state, State::Review);
        assert!(b.evidence.contains(&5) && b.evidence.contains(&6));
        // With nothing else to count, the eval has no run as well.
        let b = badge(&[late], &[prereg(2, 0.8)], None);
        assert_eq!(
            codes(&b),
            [("run_key_invalid", Some(6)), ("run_missing", None)]
        );
        // A later valid run clears it.
        let b = badge(
            &[
                run(5, 0.81),
                Run {
                    key: Some(revoked.clone()),
                    ..run(6, 0.99)
                },
                run(8, 0.85),
            ],
            &[prereg(2, 0.8)],
            None,
        );
        assert_eq!(b.state, State::Green, "{b:?}");
        // A publication signed by a key that did not count fails.
        let b = badge(&[run(5, 0.81)], &[prereg(2, 0.8)], Some(revoked));
        assert_eq!(codes(&b), [("publisher_key_invalid", Some(0))]);
        assert_eq!(b.state, State::Failing);
    }
}
