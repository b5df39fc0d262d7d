//! Measuring the prompt scanner against a labelled corpus: precision and recall per rule family.
//!
//! A corpus is JSON Lines, one sample per line:
//! `{"id": "...", "label": "benign" | "<family>" | "jailbreak", "text": "...", "source": "...",
//! "no_external_calls": false}`. `<family>` is a rule family without its `prompt.` prefix
//! (`override`, `roleplay`, `hidden_unicode`, `encoded`, `exfiltration`, `external_url`);
//! `jailbreak` marks in-the-wild jailbreaks that mix override and role-play and counts as found
//! when either family fires.
//!
//! Recall of a family is the share of its samples that the family flags. Precision of a family is
//! the share of the samples it flags that are malicious (any label but `benign`): one family
//! firing on a sample labelled with another is not a false alarm, one firing on a benign sample
//! is.

use serde::Deserialize;

use crate::prompt::{FAMILIES, PromptContext, scan_text};
use crate::{Severity, excerpt};

/// One labelled sample.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// A stable id.
    pub id: String,
    /// `benign`, a family, or `jailbreak`.
    pub label: String,
    /// The prompt text.
    pub text: String,
    /// Where it came from (see the corpus README).
    pub source: String,
    /// Scan as if the manifest declared `no_external_calls`.
    #[serde(default)]
    pub no_external_calls: bool,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Score {
    /// The family (or `jailbreak`, or `any` for the scanner as a whole).
    pub family: String,
    /// Samples labelled with it.
    pub samples: usize,
    /// Of those, how many it flagged.
    pub found: usize,
    /// Malicious samples it flagged.
    pub true_alarms: usize,
    /// Benign samples it flagged.
    pub false_alarms: usize,
}

impl Score {
    /// found / samples.
    pub fn recall(&self) -> f64 {
        ratio(self.found, self.samples)
    }

    /// true alarms / all alarms.
    pub fn precision(&self) -> f64 {
        ratio(self.true_alarms, self.true_alarms + self.false_alarms)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

/// The evaluation of a corpus.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// One row per family, then `jailbreak`, then `any`.
    pub scores: Vec<Score>,
    /// Benign samples.
    pub benign: usize,
    /// Samples scored wrongly: `(id, label, families that fired)`, for tuning.
    pub misses: Vec<(String, String, Vec<String>)>,
}

/// Parses a JSON Lines corpus; names the line of the first bad sample.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// Scans every sample and scores the families.
pub fn evaluate(samples: &[Sample]) -> Evaluation {
    let fired: Vec<Vec<String>> = samples
        .iter()
        .map(|s| {
            let ctx = PromptContext {
                no_external_calls: s.no_external_calls,
                ..PromptContext::default()
            };
            let mut families: Vec<String> = scan_text(&s.id, &s.text, &ctx)
                .into_iter()
                .filter(|f| f.severity >= Severity::High)
                .map(|f| f.rule)
                .collect();
            families.sort();
            families.dedup();
            families
        })
        .collect();
    let is_benign = |s: &Sample| s.label == "benign";
    let mut scores = Vec::new();
    let row =
        |name: &str, labelled: &dyn Fn(&Sample) -> bool, fires: &dyn Fn(&[String]) -> bool| {
            let mut score = Score {
                family: name.to_string(),
                samples: 0,
                found: 0,
                true_alarms: 0,
                false_alarms: 0,
            };
            for (s, f) in samples.iter().zip(&fired) {
                let hit = fires(f);
                if labelled(s) {
                    score.samples += 1;
                    score.found += usize::from(hit);
                }
                if hit {
                    if is_benign(s) {
                        score.false_alarms += 1;
                    } else {
                        score.true_alarms += 1;
                    }
                }
            }
            score
        };
    for family in FAMILIES {
        let short = family.trim_start_matches("prompt.");
        scores.push(row(short, &|s| s.label == short, &|f| {
            f.iter().any(|x| x == family)
        }));
    }
    let either = |f: &[String]| {
        f.iter()
            .any(|x| x == "prompt.override" || x == "prompt.roleplay")
    };
    scores.push(row("jailbreak", &|s| s.label == "jailbreak", &either));
    scores.push(row("any", &|s| !is_benign(s), &|f| !f.is_empty()));
    let misses = samples
        .iter()
        .zip(&fired)
        .filter(|(s, f)| {
            if is_benign(s) {
                !f.is_empty()
            } else if s.label == "jailbreak" {
                !either(f)
            } else {
                !f.iter().any(|x| x.trim_start_matches("prompt.") == s.label)
            }
        })
        .map(|(s, f)| (s.id.clone(), s.label.clone(), f.clone()))
        .collect();
    Evaluation {
        scores,
        benign: samples.iter().filter(|s| is_benign(s)).count(),
        misses,
    }
}

impl Evaluation {
    /// The table as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| family | samples | found | recall | alarms on malicious | alarms on benign | precision |\n|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for s in &self.scores {
            out.push_str(&format!(
                "| {} | {} | {} | {:.3} | {} | {} | {:.3} |\n",
                s.family,
                s.samples,
                s.found,
                s.recall(),
                s.true_alarms,
                s.false_alarms,
                s.precision()
            ));
        }
        out.push_str(&format!("\nBenign samples: {}.\n", self.benign));
        out
    }

    /// The misclassified samples, one per line.
    pub fn misses_text(&self, samples: &[Sample]) -> String {
        self.misses
            .iter()
            .map(|(id, label, fired)| {
                let text = samples
                    .iter()
                    .find(|s| &s.id == id)
                    .map(|s| excerpt(&s.text, 100))
                    .unwrap_or_default();
                format!("{id} [{label}] fired {fired:?}: {text}\n")
            })
            .collect()
    }
}
