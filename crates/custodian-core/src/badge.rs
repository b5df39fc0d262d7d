//! The Green-Badge policy, a pure function of a version's evidence (seed 000, "Green-Badge QA").
//!
//! Policy [`POLICY`]:
//! - **failing** when the publication's signature or an artifact hash does not hold, when the
//!   latest run of any required eval × compatible model failed, or when the latest scan of the
//!   version's content root flagged it;
//! - **review** otherwise when evidence is missing or old: a required eval × model without a run,
//!   a latest run older than the maximum age, no scan (or a scan that ended in error), a license
//!   that is neither a valid SPDX expression nor a `LicenseRef-`, no evals at all, or a yank;
//! - **green** when nothing above applies.
//!
//! "Latest" is by ledger order (integration), never by a time the runner wrote, so a late
//! failing run downgrades a badge at once and nobody can backdate evidence. Every badge carries
//! machine-readable reasons.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;

/// The policy version; part of every badge.
pub const POLICY: &str = "custodian.badge-policy.v1";
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
}

/// One attested run, as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

/// One recorded scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Its ledger index.
    pub index: u64,
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
    /// Every recorded scan of the version, in any order.
    pub scans: &'a [Scan],
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

/// Applies the policy at time `now_ms`.
pub fn evaluate(e: &Evidence<'_>, now_ms: u64, max_age_ms: u64) -> Badge {
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
    let mut latest: BTreeMap<(&str, &str), &Run> = BTreeMap::new();
    for run in e.runs {
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
                    if !run.passed {
                        reason(
                            "run_failed",
                            State::Failing,
                            format!("the latest run of {eval} against {model} failed"),
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
    match e
        .scans
        .iter()
        .filter(|s| s.root == e.root)
        .max_by_key(|s| s.index)
    {
        None => reason(
            "scan_missing",
            State::Review,
            format!("no scan of content root {} is recorded", e.root),
            None,
            None,
            None,
        ),
        Some(scan) => {
            used.push(scan.index);
            match scan.verdict.as_str() {
                "clean" => {}
                "flagged" => reason(
                    "scan_flagged",
                    State::Failing,
                    "the latest scan flagged the content".into(),
                    None,
                    None,
                    Some(scan.index),
                ),
                _ => reason(
                    "scan_error",
                    State::Review,
                    "the latest scan ended in error; a new scan is needed".into(),
                    None,
                    None,
                    Some(scan.index),
                ),
            }
        }
    }
    if let Err(message) = check_license(e.manifest.license.id()) {
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
        policy: POLICY.into(),
        evaluated_ms: now_ms,
        max_age_ms,
        reasons,
        evidence: used,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            root: "sha256:r".into(),
            verdict: "clean".into(),
        }]
    }

    fn badge(
        m: &Manifest,
        runs: &[Run],
        scans: &[Scan],
        signature_ok: bool,
        yanked: Option<u64>,
    ) -> Badge {
        let e = Evidence {
            name: "demo",
            version: "1.0.0",
            manifest: m,
            root: "sha256:r",
            publication: 0,
            signature_ok,
            yanked,
            runs,
            scans,
        };
        evaluate(&e, 1001 * DAY, DEFAULT_MAX_AGE_MS)
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
            root: "sha256:other".into(),
            verdict: "clean".into(),
        }];
        assert_eq!(
            codes(&badge(&m, &all_passing(), &other_root, true, None)),
            ["scan_missing"]
        );
        let error = vec![Scan {
            index: 5,
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
            })
            .collect();
        let scans: Vec<Scan> = scan
            .map(|v| Scan {
                index: 1,
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
        };
        evaluate(&e, 2_000, DEFAULT_MAX_AGE_MS)
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
