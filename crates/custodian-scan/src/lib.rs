//! Custodian's scanners: what a package or data pack contains, judged before anyone installs it.
//!
//! Two scanners share one report format:
//! - the **content scanner** ([`content`]) reads bytes as a stream — never a whole data pack in
//!   memory, never an archive extracted to disk — and finds native executables, scripts where
//!   data is declared, the EICAR test string, dangerous archive entries (traversal, absolute
//!   paths, links, bombs, nesting) and content whose type contradicts its name;
//! - the **prompt scanner** ([`prompt`]) reads prompt text (system prompts, templates, few-shot
//!   examples, PromptPack PromptConfig / Scenario / Persona resources) and finds instruction
//!   overrides, role-play jailbreaks, hidden Unicode, encoded payloads, exfiltration links and
//!   URLs that contradict a declared `no_external_calls`;
//! - the **secret scanner** ([`secrets`]) finds private keys, cloud and API tokens and secret
//!   assignments in config files, in every package file (archives included); a secret blocks
//!   publication.
//!
//! [`package::scan_package`] runs both over a package's files, choosing which files are prompt
//! text from its manifest. The crate does no I/O of its own: callers hand it readers, so the
//! daemon scans straight from custody and `custodian scan local` scans a directory, with the same
//! rules and the same verdict.
//!
//! A report's verdict is `flagged` when any finding is [`Severity::High`] or worse, `clean`
//! otherwise; a scan that could not read its input is `error` — never `clean`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod content;
pub mod corpus;
pub mod package;
pub mod pii;
pub mod prompt;
pub mod secrets;
mod zip;

/// The built-in scanner's identity as recorded in the ledger; the suffix is the rule-set version,
/// bumped whenever a rule changes what it finds.
pub const SCANNER: &str = "custodian.builtin/rules-2";

/// How serious a finding is. `high` and `critical` flag the content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; not a problem by itself.
    Info,
    /// Unusual.
    Low,
    /// Suspicious, or content that could not be inspected.
    Medium,
    /// Flags the content.
    High,
    /// Flags the content: known malware or a test signature for it.
    Critical,
}

impl Severity {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(text: &str) -> Option<Severity> {
        Some(match text {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

/// One thing a scanner found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The file, with `!` between an archive and the entry inside it (`data.tar.gz!a/b.csv`).
    pub file: String,
    /// The byte offset of the first occurrence in that file (in an archive entry: in its
    /// decompressed bytes).
    pub offset: u64,
    /// The rule, e.g. `archive.traversal` or `prompt.override`.
    pub rule: String,
    /// How serious it is.
    pub severity: Severity,
    /// A sentence for people, naming what was seen.
    pub message: String,
    /// How many times the rule matched in this file (first occurrence reported).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

/// A scan's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Nothing at `high` or above was found.
    Clean,
    /// Something at `high` or above was found.
    Flagged,
    /// The scan could not finish; the content is not known to be clean.
    Error,
}

impl Verdict {
    /// The lower-case name, as recorded in ScanRecorded entries.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Flagged => "flagged",
            Verdict::Error => "error",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(text: &str) -> Option<Verdict> {
        Some(match text {
            "clean" => Verdict::Clean,
            "flagged" => Verdict::Flagged,
            "error" => Verdict::Error,
            _ => return None,
        })
    }

    /// The worse of two verdicts: flagged over error over clean.
    pub fn worst(self, other: Verdict) -> Verdict {
        let rank = |v: Verdict| match v {
            Verdict::Clean => 0,
            Verdict::Error => 1,
            Verdict::Flagged => 2,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// Bounds that keep a hostile input from costing unbounded time or memory.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Archives inside archives deeper than this are flagged and not opened (the top level is 0).
    pub max_depth: u32,
    /// A compressed stream that expands more than this many times its compressed size is a bomb…
    pub max_ratio: u64,
    /// …once it has produced at least this many bytes (small files compress well legitimately).
    pub ratio_floor: u64,
    /// The most decompressed bytes one scan produces in total, across every archive level.
    pub max_expanded: u64,
    /// The most entries one archive may hold.
    pub max_entries: u64,
    /// The most prompt text read from one file; the rest is content-scanned only.
    pub max_prompt_bytes: usize,
    /// The most prompt text prompt-scanned in one package (the prompt rules run at a few MB/s
    /// on hostile text; real prompts are kilobytes). Beyond it, files are content-scanned only,
    /// and a finding says so.
    pub max_prompt_total: u64,
    /// The most findings a report keeps; the rest are counted in [`Report::omitted`].
    pub max_findings: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 3,
            max_ratio: 200,
            ratio_floor: 8 << 20,
            max_expanded: 8 << 30,
            max_entries: 100_000,
            max_prompt_bytes: 4 << 20,
            max_prompt_total: 32 << 20,
            max_findings: 200,
        }
    }
}

/// Everything a scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The findings, most severe first, at most [`Limits::max_findings`].
    pub findings: Vec<Finding>,
    /// Findings left out because the report was full.
    #[serde(default)]
    pub omitted: u64,
    /// Files (and archive entries) scanned.
    pub files: u64,
    /// Bytes read, decompressed bytes included.
    pub bytes: u64,
    /// Why the scan could not finish, if it could not; the verdict is then `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    /// The verdict: error if the scan did not finish, flagged if anything is high or critical.
    pub fn verdict(&self) -> Verdict {
        if self.error.is_some() {
            Verdict::Error
        } else if self.findings.iter().any(|f| f.severity >= Severity::High) {
            Verdict::Flagged
        } else {
            Verdict::Clean
        }
    }

    /// Adds findings, keeping the most severe when there are more than `max` in all.
    pub fn add(&mut self, findings: impl IntoIterator<Item = Finding>, max: usize) {
        self.findings.extend(findings);
        if self.findings.len() > max {
            self.findings
                .sort_by(|a, b| b.severity.cmp(&a.severity).then(a.file.cmp(&b.file)));
            self.omitted += (self.findings.len() - max) as u64;
            self.findings.truncate(max);
        }
    }

    /// Sorts findings most severe first, then by file and offset, so reports compare and read
    /// the same every time.
    pub fn sort(&mut self) {
        self.findings.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| a.file.cmp(&b.file))
                .then(a.offset.cmp(&b.offset))
                .then_with(|| a.rule.cmp(&b.rule))
        });
    }

    /// How many findings each rule produced.
    pub fn rules(&self) -> BTreeMap<&str, u64> {
        let mut out = BTreeMap::new();
        for f in &self.findings {
            *out.entry(f.rule.as_str()).or_default() += 1;
        }
        out
    }
}

/// Collects a file's findings, one per rule (the first occurrence, with a count), so that a data
/// pack with a million matching lines yields one finding, not a million.
#[derive(Default)]
pub(crate) struct FileFindings {
    by_rule: BTreeMap<String, Finding>,
}

impl FileFindings {
    pub(crate) fn push(
        &mut self,
        file: &str,
        offset: u64,
        rule: &str,
        severity: Severity,
        message: impl FnOnce() -> String,
    ) {
        match self.by_rule.get_mut(rule) {
            Some(f) => {
                f.count += 1;
                if severity > f.severity {
                    f.severity = severity;
                }
            }
            None => {
                self.by_rule.insert(
                    rule.to_string(),
                    Finding {
                        file: file.to_string(),
                        offset,
                        rule: rule.to_string(),
                        severity,
                        message: message(),
                        count: 1,
                    },
                );
            }
        }
    }

    pub(crate) fn into_findings(self) -> impl Iterator<Item = Finding> {
        self.by_rule.into_values()
    }
}

/// Shortens text for a message, on a character boundary, escaping control characters.
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
