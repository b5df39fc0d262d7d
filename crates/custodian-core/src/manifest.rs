//! The Behavior Package manifest (`manifest.yaml`) and its typed specs, per the seed documents:
//! name, semver version, type, description, base model(s), inputs, outputs, evals (EvalSpec),
//! safety (SafetySpec), license (LicenseSpec), and the optional PromptSpec, FineTuneSpec,
//! InstallSpec, EvidencePack and data pack sections.
//!
//! Parsing reports every problem with the file, line and field, so a publisher can fix them all
//! at once. Fields this version does not know are kept (a newer manifest still publishes) and
//! reported as warnings.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::datapack::DataPackSpec;

/// One problem found in a file: an error that blocks publication, or a warning.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file, relative to the package folder.
    pub file: String,
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// The field, as a dotted path (`safety.package_signing`, `evals[2]`); empty for the file.
    pub field: String,
    /// What is wrong, naming the value.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// Errors and warnings from checking a package's YAML.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Problems that make the package unpublishable.
    pub errors: Vec<Problem>,
    /// Problems worth knowing that do not block publication.
    pub warnings: Vec<Problem>,
}

impl Report {
    /// True when there are no errors.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// Adds everything from `other`.
    pub fn extend(&mut self, other: Report) {
        self.errors.extend(other.errors);
        self.warnings.extend(other.warnings);
    }

    /// The errors, one per line.
    pub fn error_text(&self) -> String {
        self.errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Line breaks as YAML counts them: a lone CR is one too (YAML 1.2, section 5.4), while
/// `str::lines` would not split on it. Files are checked with every break made LF, so that the
/// parser's line numbers and the locator's agree, and both match what an editor shows.
pub fn normalize_newlines(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\r') {
        std::borrow::Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Finds the line of a field in YAML text from its path, for problems found after parsing.
/// It follows block-style keys and `- ` items by indentation and returns the deepest line it
/// could find (flow-style collections resolve to their parent's line).
pub fn locate(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0usize;
    let mut parent_indent: isize = -1;
    let mut found = None;
    for segment in split_path(path) {
        let mut hit = None;
        let mut index_seen = 0usize;
        for (i, line) in lines.iter().enumerate().skip(start) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = (line.len() - trimmed.len()) as isize;
            if indent <= parent_indent && i > start {
                break;
            }
            match &segment {
                Segment::Key(key) => {
                    let body = trimmed.strip_prefix("- ").unwrap_or(trimmed);
                    let unquoted = body.trim_start_matches(['"', '\'']);
                    if unquoted.starts_with(key.as_str())
                        && unquoted[key.len()..]
                            .trim_start_matches(['"', '\''])
                            .starts_with(':')
                    {
                        let offset = trimmed.len() - body.len();
                        hit = Some((i, indent + offset as isize));
                        break;
                    }
                }
                Segment::Index(n) => {
                    if trimmed == "-" || trimmed.starts_with("- ") {
                        if index_seen == *n {
                            hit = Some((i, indent));
                            break;
                        }
                        index_seen += 1;
                    }
                }
            }
        }
        match hit {
            Some((i, indent)) => {
                found = Some(i + 1);
                start = i;
                parent_indent = indent;
                if matches!(segment, Segment::Key(_)) {
                    start = i + 1;
                }
            }
            None => break,
        }
    }
    found
}

enum Segment {
    Key(String),
    Index(usize),
}

fn split_path(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                out.push(Segment::Key(rest[..open].to_string()));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else {
                    break;
                };
                if let Ok(n) = stripped[..close].parse() {
                    out.push(Segment::Index(n));
                }
                rest = &stripped[close + 1..];
            }
        } else {
            out.push(Segment::Key(rest.to_string()));
        }
    }
    out
}

/// Collects problems for one file, locating fields in its text.
pub(crate) struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    pub(crate) report: Report,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Self {
        Checker {
            file,
            text,
            report: Report::default(),
        }
    }

    fn problem(&self, field: &str, message: String) -> Problem {
        Problem {
            file: self.file.to_string(),
            line: if field.is_empty() {
                None
            } else {
                locate(self.text, field)
            },
            field: field.to_string(),
            message,
        }
    }

    pub(crate) fn error(&mut self, field: &str, message: impl Into<String>) {
        let p = self.problem(field, message.into());
        self.report.errors.push(p);
    }

    pub(crate) fn warn(&mut self, field: &str, message: impl Into<String>) {
        let p = self.problem(field, message.into());
        self.report.warnings.push(p);
    }

    /// A YAML syntax or type error, with the parser's own position.
    pub(crate) fn yaml_error(&mut self, field: String, err: &serde_norway::Error) {
        let line = err.location().map(|l| l.line()).or_else(|| {
            (!field.is_empty())
                .then(|| locate(self.text, &field))
                .flatten()
        });
        // serde_norway appends " at line L column C"; the line is reported separately.
        let mut message = err.to_string();
        if let Some(at) = message.find(" at line ") {
            message.truncate(at);
        }
        self.report.errors.push(Problem {
            file: self.file.to_string(),
            line,
            field,
            message,
        });
    }
}

/// Parses YAML into `T`, reporting type errors with their field path and line.
pub(crate) fn parse_typed<T: serde::de::DeserializeOwned>(
    checker: &mut Checker<'_>,
    text: &str,
) -> Option<T> {
    let deserializer = serde_norway::Deserializer::from_str(text);
    match serde_path_to_error::deserialize(deserializer) {
        Ok(value) => Some(value),
        Err(err) => {
            let field = err.path().to_string();
            let field = if field == "." { String::new() } else { field };
            checker.yaml_error(field, err.inner());
            None
        }
    }
}

/// What kind of package this is (the manifest's `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PackageType {
    /// Prompt templates with runtime variables (PromptSpec).
    PromptTemplate,
    /// A system prompt with examples (PromptSpec).
    PromptSpec,
    /// A portable training recipe (FineTuneSpec).
    FineTuneRecipe,
    /// A runnable eval suite (EvalSpec).
    EvalSuite,
    /// Safety policies and guardrails (SafetySpec).
    SafetyPolicy,
    /// Usage terms and attribution (LicenseSpec).
    License,
    /// Runtime setup and dependencies (InstallSpec).
    InstallSpec,
    /// Provenance and audit artifacts (EvidencePack).
    EvidencePack,
    /// A dataset with its schema and citations.
    DataPack,
    /// Any combination of the specs.
    Bundle,
}

impl PackageType {
    /// Every type, in the order they are listed in errors.
    pub const ALL: [PackageType; 10] = [
        PackageType::PromptTemplate,
        PackageType::PromptSpec,
        PackageType::FineTuneRecipe,
        PackageType::EvalSuite,
        PackageType::SafetyPolicy,
        PackageType::License,
        PackageType::InstallSpec,
        PackageType::EvidencePack,
        PackageType::DataPack,
        PackageType::Bundle,
    ];

    /// The name written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            PackageType::PromptTemplate => "prompt_template",
            PackageType::PromptSpec => "prompt_spec",
            PackageType::FineTuneRecipe => "fine_tune_recipe",
            PackageType::EvalSuite => "eval_suite",
            PackageType::SafetyPolicy => "safety_policy",
            PackageType::License => "license",
            PackageType::InstallSpec => "install_spec",
            PackageType::EvidencePack => "evidence_pack",
            PackageType::DataPack => "data_pack",
            PackageType::Bundle => "bundle",
        }
    }

    /// Parses a type name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for PackageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string, or a list of strings (`base_model: gpt-4.1` or `base_model: [a, b]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// An input or output: a name, or a name with details.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Variable {
    /// Just the name.
    Name(String),
    /// The name with a description and type.
    Detailed {
        /// The name.
        name: String,
        /// What it is.
        #[serde(default)]
        description: Option<String>,
        /// Its type, free-form (`string`, `enum`, `map`).
        #[serde(default, rename = "type")]
        value_type: Option<String>,
        /// Allowed values.
        #[serde(default, rename = "enum")]
        values: Vec<String>,
    },
}

impl Variable {
    /// The variable's name.
    pub fn name(&self) -> &str {
        match self {
            Variable::Name(n) => n,
            Variable::Detailed { name, .. } => name,
        }
    }
}

/// EvalSpec: an eval the package declares, by id alone or with its cases and judging.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum EvalSpec {
    /// Just the eval id.
    Id(String),
    /// The eval with its definition.
    Detailed {
        /// The eval id (what runs attest).
        id: String,
        /// What it checks.
        #[serde(default)]
        description: Option<String>,
        /// The cases file in the package (JSONL, or a PromptPack Scenario).
        #[serde(default)]
        cases: Option<String>,
        /// How results are judged: `heuristic` or `model_as_judge`.
        #[serde(default)]
        rubric: Option<String>,
        /// The judge model, for `model_as_judge`.
        #[serde(default)]
        judge_model: Option<String>,
        /// The reproducibility seed.
        #[serde(default)]
        seed: Option<u64>,
        /// Metric thresholds a run must meet, e.g. `accuracy: ">= 0.9"`.
        #[serde(default)]
        thresholds: BTreeMap<String, serde_json::Value>,
        /// Whether the eval counts toward the badge (default true).
        #[serde(default)]
        required: Option<bool>,
    },
}

impl EvalSpec {
    /// The eval id.
    pub fn id(&self) -> &str {
        match self {
            EvalSpec::Id(id) => id,
            EvalSpec::Detailed { id, .. } => id,
        }
    }

    /// Whether the eval is required for a green badge.
    pub fn required(&self) -> bool {
        match self {
            EvalSpec::Id(_) => true,
            EvalSpec::Detailed { required, .. } => required.unwrap_or(true),
        }
    }

    /// The reproducibility seed every run must carry in its `reproducibility_context.seed`.
    pub fn seed(&self) -> Option<u64> {
        match self {
            EvalSpec::Id(_) => None,
            EvalSpec::Detailed { seed, .. } => *seed,
        }
    }

    /// The metric thresholds, parsed; a threshold that does not parse is left out here (the
    /// manifest check reports it, so a published manifest has none).
    pub fn thresholds(&self) -> BTreeMap<String, Threshold> {
        match self {
            EvalSpec::Id(_) => BTreeMap::new(),
            EvalSpec::Detailed { thresholds, .. } => thresholds
                .iter()
                .filter_map(|(metric, v)| Some((metric.clone(), Threshold::parse(v).ok()?)))
                .collect(),
        }
    }
}

/// How a metric is compared with its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparator {
    /// `>=`: at least the threshold (what a bare number means).
    AtLeast,
    /// `>`: above it.
    Above,
    /// `<=`: at most the threshold (error rates, latencies).
    AtMost,
    /// `<`: below it.
    Below,
    /// `==`: exactly it.
    Equal,
}

impl Comparator {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Comparator::AtLeast => ">=",
            Comparator::Above => ">",
            Comparator::AtMost => "<=",
            Comparator::Below => "<",
            Comparator::Equal => "==",
        }
    }
}

/// An EvalSpec threshold: `">= 0.9"`, `"< 0.05"`, or a bare number (meaning `>=`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold {
    /// The comparison.
    pub comparator: Comparator,
    /// The bound.
    pub value: f64,
}

impl Threshold {
    /// Parses a threshold as written in a manifest.
    pub fn parse(value: &serde_json::Value) -> Result<Threshold, String> {
        if let Some(v) = value.as_f64() {
            return Ok(Threshold {
                comparator: Comparator::AtLeast,
                value: v,
            });
        }
        let Some(text) = value.as_str() else {
            return Err(format!(
                "{value} is not a threshold; write a number or a comparison such as \">= 0.9\""
            ));
        };
        let text = text.trim();
        let (comparator, rest) = [
            (">=", Comparator::AtLeast),
            ("<=", Comparator::AtMost),
            ("==", Comparator::Equal),
            (">", Comparator::Above),
            ("<", Comparator::Below),
        ]
        .into_iter()
        .find_map(|(op, c)| text.strip_prefix(op).map(|rest| (c, rest)))
        .unwrap_or((Comparator::AtLeast, text));
        let bound: f64 = rest.trim().parse().map_err(|_| {
            format!("{text:?} is not a threshold; write a comparison (>=, >, <=, <, ==) and a number, such as \">= 0.9\"")
        })?;
        if !bound.is_finite() {
            return Err(format!("{text:?} is not a finite number"));
        }
        Ok(Threshold {
            comparator,
            value: bound,
        })
    }

    /// Whether a measured value meets the threshold.
    pub fn holds(&self, measured: f64) -> bool {
        match self.comparator {
            Comparator::AtLeast => measured >= self.value,
            Comparator::Above => measured > self.value,
            Comparator::AtMost => measured <= self.value,
            Comparator::Below => measured < self.value,
            Comparator::Equal => measured == self.value,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.comparator.as_str(),
            crate::jcs::number(self.value)
        )
    }
}

/// How strongly a safety control is demanded.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// Must hold for the package to be green.
    Required,
    /// Checked and reported, not required.
    Optional,
    /// Not checked.
    Disabled,
}

/// LicenseSpec: an SPDX expression (or `LicenseRef-…`, or a registry-specific identifier such as
/// `private-commercial`), optionally with the license file and attribution.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum LicenseSpec {
    /// Just the identifier.
    Id(String),
    /// The identifier with details.
    Detailed {
        /// The SPDX expression or identifier.
        spdx: String,
        /// The license text in the package.
        #[serde(default)]
        file: Option<String>,
        /// Required attribution.
        #[serde(default)]
        attribution: Option<String>,
    },
}

impl LicenseSpec {
    /// The identifier or expression.
    pub fn id(&self) -> &str {
        match self {
            LicenseSpec::Id(id) => id,
            LicenseSpec::Detailed { spdx, .. } => spdx,
        }
    }
}

/// PromptSpec: the system prompt, templates, examples, compatible models and tool schemas.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct PromptSpec {
    /// The system prompt file.
    #[serde(default)]
    pub system: Option<String>,
    /// Message template files.
    #[serde(default)]
    pub templates: Vec<String>,
    /// Few-shot example files.
    #[serde(default)]
    pub examples: Vec<String>,
    /// Models the prompt is written for (defaults to `base_model`).
    #[serde(default)]
    pub compatible_models: Vec<String>,
    /// Provider- or model-specific overrides.
    #[serde(default)]
    pub overrides: BTreeMap<String, serde_json::Value>,
    /// Output format or tool-call JSON Schema files.
    #[serde(default)]
    pub tool_schemas: Vec<String>,
    /// A PromptPack Arena in the package that drives this prompt's tests.
    #[serde(default)]
    pub arena: Option<String>,
}

/// FineTuneSpec: a portable training recipe.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct FineTuneSpec {
    /// The training dataset: a file in the package, or `data_pack` for the version's data pack.
    #[serde(default)]
    pub dataset: Option<String>,
    /// The recipe file in the package.
    #[serde(default)]
    pub recipe: Option<String>,
    /// Hyperparameters.
    #[serde(default)]
    pub hyperparameters: BTreeMap<String, serde_json::Value>,
    /// Providers the recipe runs on.
    #[serde(default)]
    pub providers: Vec<String>,
    /// The loss used in training.
    #[serde(default)]
    pub loss: Option<String>,
    /// Eval ids watched during training.
    #[serde(default)]
    pub eval_signals: Vec<String>,
}

/// InstallSpec: runtime setup and dependencies.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct InstallSpec {
    /// The runtime, e.g. `python>=3.11`.
    #[serde(default)]
    pub runtime: Option<String>,
    /// Other Behavior Packages this one needs: name → semver requirement.
    #[serde(default)]
    pub dependencies: BTreeMap<String, String>,
    /// Environment variables the package reads at run time.
    #[serde(default)]
    pub env: Vec<String>,
    /// A setup script in the package.
    #[serde(default)]
    pub setup: Option<String>,
}

/// EvidencePack: provenance and audit artifacts shipped with the package.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct EvidencePack {
    /// Artifact files in the package.
    #[serde(default)]
    pub files: Vec<String>,
    /// A provenance document (e.g. SLSA) in the package.
    #[serde(default)]
    pub provenance: Option<String>,
    /// A software bill of materials in the package.
    #[serde(default)]
    pub sbom: Option<String>,
}

/// The manifest as written, before semantic checks.
#[derive(Deserialize)]
struct RawManifest {
    name: Option<String>,
    version: Option<String>,
    #[serde(rename = "type")]
    package_type: Option<String>,
    description: Option<String>,
    base_model: Option<OneOrMany>,
    #[serde(default)]
    inputs: Vec<Variable>,
    #[serde(default)]
    outputs: Vec<Variable>,
    #[serde(default)]
    evals: Vec<EvalSpec>,
    #[serde(default)]
    safety: BTreeMap<String, Requirement>,
    license: Option<LicenseSpec>,
    prompt: Option<PromptSpec>,
    fine_tune: Option<FineTuneSpec>,
    install: Option<InstallSpec>,
    evidence: Option<EvidencePack>,
    data_pack: Option<DataPackSpec>,
    #[serde(default)]
    documentation_hosts: Vec<String>,
    /// Free-form notes of the publisher's own (strings by key), never checked.
    #[serde(default)]
    #[allow(dead_code)]
    annotations: BTreeMap<String, serde_json::Value>,
}

const KNOWN_FIELDS: [&str; 17] = [
    "name",
    "version",
    "type",
    "description",
    "base_model",
    "inputs",
    "outputs",
    "evals",
    "safety",
    "license",
    "prompt",
    "fine_tune",
    "install",
    "evidence",
    "data_pack",
    "documentation_hosts",
    "annotations",
];

/// Safety controls this version knows.
pub const KNOWN_SAFETY: [&str; 5] = [
    "package_signing",
    "artifact_hashes",
    "no_external_calls",
    "prompt_injection_scan",
    "pii_scan",
];

/// The keys a section of the manifest knows, by its dotted path with list indexes dropped
/// (`evals[2]` is `evals[]`); empty for free-form maps and unknown sections.
fn known_keys(parent: &str) -> &'static [&'static str] {
    let mut normalized = String::with_capacity(parent.len());
    let mut skipping = false;
    for c in parent.chars() {
        match c {
            '[' => {
                skipping = true;
                normalized.push_str("[]");
            }
            ']' => skipping = false,
            c if !skipping => normalized.push(c),
            _ => {}
        }
    }
    match normalized.as_str() {
        "" => &KNOWN_FIELDS,
        "safety" => &KNOWN_SAFETY,
        "evals[]" => &[
            "id",
            "description",
            "cases",
            "rubric",
            "judge_model",
            "seed",
            "thresholds",
            "required",
        ],
        "inputs[]" | "outputs[]" => &["name", "description", "type", "enum"],
        "license" => &["spdx", "file", "attribution"],
        "prompt" => &[
            "system",
            "templates",
            "examples",
            "compatible_models",
            "overrides",
            "tool_schemas",
            "arena",
        ],
        "fine_tune" => &[
            "dataset",
            "recipe",
            "hyperparameters",
            "providers",
            "loss",
            "eval_signals",
        ],
        "install" => &["runtime", "dependencies", "env", "setup"],
        "evidence" => &["files", "provenance", "sbom"],
        "data_pack" => &crate::datapack::FIELDS,
        "data_pack.provenance" => &crate::datapack::PROVENANCE_FIELDS,
        _ => &[],
    }
}

/// The known key closest to `word` when it is close enough to be a typo: at most two edits
/// (insertions, deletions, substitutions or swaps of neighbours), and fewer than a third of
/// the word; ties go to the first key in schema order.
pub fn did_you_mean<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let limit = (word.chars().count() / 3).clamp(1, 2);
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal string alignment distance: Levenshtein plus transposition of adjacent characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// A checked `manifest.yaml`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Manifest {
    /// The package name.
    pub name: String,
    /// The semver version.
    pub version: semver::Version,
    /// The package type.
    #[serde(serialize_with = "serialize_type", rename = "type")]
    pub package_type: PackageType,
    /// What the package does.
    pub description: Option<String>,
    /// The base model(s) it targets; the compatible models evals run against.
    pub base_model: Vec<String>,
    /// Runtime inputs.
    pub inputs: Vec<Variable>,
    /// What it produces.
    pub outputs: Vec<Variable>,
    /// EvalSpec: the evals a green badge requires.
    pub evals: Vec<EvalSpec>,
    /// SafetySpec: safety controls and how strongly each is demanded.
    pub safety: BTreeMap<String, Requirement>,
    /// LicenseSpec.
    pub license: LicenseSpec,
    /// PromptSpec.
    pub prompt: Option<PromptSpec>,
    /// FineTuneSpec.
    pub fine_tune: Option<FineTuneSpec>,
    /// InstallSpec.
    pub install: Option<InstallSpec>,
    /// EvidencePack.
    pub evidence: Option<EvidencePack>,
    /// The data pack declared with the package (seed 001).
    pub data_pack: Option<DataPackSpec>,
    /// Hosts that documentation files (README, LICENSE, CHANGELOG, NOTICE, docs/) may link to
    /// without counting as external calls under `safety.no_external_calls`.
    pub documentation_hosts: Vec<String>,
    /// `x-` keys (and, in a published manifest read leniently, unknown keys), kept as written.
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn serialize_type<S: serde::Serializer>(t: &PackageType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t.as_str())
}

/// Collects the keys of the document that its schema does not know, with their dotted paths:
/// at the top level, in every section written as a mapping, and in the items of its lists.
/// Free-form maps (thresholds, overrides, hyperparameters, dependencies, annotations) are not
/// looked into.
fn unknown_keys(value: &serde_json::Value, path: &str, out: &mut Vec<(String, serde_json::Value)>) {
    match value {
        serde_json::Value::Object(map) => {
            let known = known_keys(path);
            if known.is_empty() {
                return;
            }
            for (key, child) in map {
                let field = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if known.contains(&key.as_str()) {
                    unknown_keys(child, &field, out);
                } else {
                    out.push((field, child.clone()));
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                unknown_keys(item, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Checks a package name: lower-case ASCII letters, digits, `.`, `_`, `-`, optionally under an
/// `@scope/`, at most 214 bytes (npm's rules, so names port between registries).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.as_bytes()[0].is_ascii_lowercase() | p.as_bytes()[0].is_ascii_digit()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    };
    let valid = name.len() <= 214
        && match name.strip_prefix('@') {
            Some(scoped) => {
                matches!(scoped.split_once('/'), Some((scope, rest)) if ok_part(scope) && ok_part(rest))
            }
            None => ok_part(name),
        };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a package name: use lower-case letters, digits, '.', '_' and '-', starting with a letter or digit, optionally as @scope/name, at most 214 characters"
        ))
    }
}

fn check_identifier(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b))
}

impl Manifest {
    /// Parses and checks `manifest.yaml` for publication. `files` is the package's file list
    /// (for checking referenced files); `None` skips that check. Unknown keys are errors (with a
    /// did-you-mean), except `x-` keys and the `annotations` map, so that a typo cannot silently
    /// drop a guarantee.
    pub fn parse(
        file: &str,
        text: &str,
        files: Option<&BTreeSet<String>>,
    ) -> (Option<Manifest>, Report) {
        Self::parse_with(file, text, files, true)
    }

    /// Parses a manifest that is already published (in custody, in a bundle): unknown keys are
    /// warnings, so versions published before manifests were strict keep their badges.
    pub fn parse_published(file: &str, text: &str) -> (Option<Manifest>, Report) {
        Self::parse_with(file, text, None, false)
    }

    fn parse_with(
        file: &str,
        text: &str,
        files: Option<&BTreeSet<String>>,
        strict: bool,
    ) -> (Option<Manifest>, Report) {
        let text = &*normalize_newlines(text);
        let mut checker = Checker::new(file, text);
        let value: serde_norway::Value = match serde_norway::from_str(text) {
            Ok(v) => v,
            Err(err) => {
                checker.yaml_error(String::new(), &err);
                return (None, checker.report);
            }
        };
        let Some(mapping) = value.as_mapping() else {
            checker.error(
                "",
                "the manifest must be a YAML mapping of fields (name: …, version: …)",
            );
            return (None, checker.report);
        };
        let mut extra = BTreeMap::new();
        for key in mapping.keys() {
            if key.as_str().is_none() {
                checker.error("", format!("field names must be strings, got {key:?}"));
            }
        }
        // Unknown keys are found on the document itself, before the typed parse, so that a typo
        // inside a section written as a mapping (`license: {spxd: MIT}`) is named as the typo,
        // not as a section that matches no form.
        let original = serde_json::to_value(&value).unwrap_or(serde_json::Value::Null);
        let mut unknown = Vec::new();
        unknown_keys(&original, "", &mut unknown);
        let raw = parse_typed::<RawManifest>(&mut checker, text);
        if strict && !unknown.is_empty() {
            // A section that failed to parse only because of a misspelt key is already named
            // by that key.
            let under_unknown = |field: &str| {
                unknown
                    .iter()
                    .any(|(u, _)| u.starts_with(&format!("{field}.")))
            };
            checker.report.errors.retain(|p| !under_unknown(&p.field));
        }
        for (field, value) in unknown {
            let last = field.rsplit('.').next().unwrap_or(&field);
            let last = last.split('[').next().unwrap_or(last);
            if last.starts_with("x-") || field == "annotations" {
                extra.insert(field, value);
                continue;
            }
            let parent = field.rsplit_once('.').map_or("", |(p, _)| p);
            let known = known_keys(parent);
            let mut message = if parent == "safety" {
                format!("{last:?} is not a safety control")
            } else if parent.is_empty() {
                format!("{last:?} is not a manifest section")
            } else {
                format!("{last:?} is not a field of {parent}")
            };
            match did_you_mean(last, known) {
                Some(suggestion) => message.push_str(&format!("; did you mean {suggestion:?}?")),
                None if !known.is_empty() => {
                    message.push_str(&format!("; known: {}", known.join(", ")))
                }
                None => {}
            }
            if strict {
                message.push_str(" (keys of your own go under annotations: or start with x-)");
                checker.error(&field, message);
            } else {
                checker.warn(&field, format!("{message}; kept as written"));
                extra.insert(field, value);
            }
        }
        let Some(raw) = raw else {
            return (None, checker.report);
        };
        let manifest = Self::check(&mut checker, raw, extra, files);
        let ok = checker.report.is_ok();
        (manifest.filter(|_| ok), checker.report)
    }

    fn check(
        c: &mut Checker<'_>,
        raw: RawManifest,
        extra: BTreeMap<String, serde_json::Value>,
        files: Option<&BTreeSet<String>>,
    ) -> Option<Manifest> {
        let name = match raw.name {
            Some(name) => {
                if let Err(e) = check_name(&name) {
                    c.error("name", e);
                }
                name
            }
            None => {
                c.error("name", "required field is missing (the package name)");
                String::new()
            }
        };
        let version = match raw.version.as_deref().map(semver::Version::parse) {
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => {
                c.error(
                    "version",
                    format!(
                        "{:?} is not a semver version ({e}); write e.g. 1.2.3",
                        raw.version.unwrap_or_default()
                    ),
                );
                None
            }
            None => {
                c.error(
                    "version",
                    "required field is missing (a semver version such as 0.1.0)",
                );
                None
            }
        };
        let known_types = || {
            PackageType::ALL
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let package_type = match raw.package_type.as_deref() {
            Some(t) => {
                let parsed = PackageType::parse(t);
                if parsed.is_none() {
                    c.error(
                        "type",
                        format!(
                            "{t:?} is not a package type; expected one of {}",
                            known_types()
                        ),
                    );
                }
                parsed
            }
            None => {
                c.error(
                    "type",
                    format!("required field is missing; one of {}", known_types()),
                );
                None
            }
        };
        let base_model = raw.base_model.map(|b| b.to_vec()).unwrap_or_default();
        if base_model.is_empty() {
            c.error(
                "base_model",
                "required field is missing or empty: the model (or list of models) the package targets",
            );
        }
        for (i, model) in base_model.iter().enumerate() {
            if !check_identifier(model) {
                c.error(
                    &format!("base_model[{i}]"),
                    format!(
                        "{model:?} is not a model name (letters, digits, '.', '_', '-', ':', '/')"
                    ),
                );
            }
        }
        let mut seen = BTreeSet::new();
        for (list, vars) in [("inputs", &raw.inputs), ("outputs", &raw.outputs)] {
            seen.clear();
            for (i, var) in vars.iter().enumerate() {
                if !check_identifier(var.name()) {
                    c.error(
                        &format!("{list}[{i}]"),
                        format!("{:?} is not a variable name", var.name()),
                    );
                } else if !seen.insert(var.name().to_string()) {
                    c.error(
                        &format!("{list}[{i}]"),
                        format!("{:?} is declared twice", var.name()),
                    );
                }
            }
        }
        seen.clear();
        for (i, eval) in raw.evals.iter().enumerate() {
            let field = format!("evals[{i}]");
            if !check_identifier(eval.id()) {
                c.error(&field, format!("{:?} is not an eval id", eval.id()));
            } else if !seen.insert(eval.id().to_string()) {
                c.error(&field, format!("eval {:?} is declared twice", eval.id()));
            }
            if let EvalSpec::Detailed {
                rubric: Some(rubric),
                judge_model,
                ..
            } = eval
            {
                match rubric.as_str() {
                    "heuristic" => {}
                    "model_as_judge" if judge_model.is_none() => c.error(
                        &format!("{field}.judge_model"),
                        "a model_as_judge rubric needs judge_model",
                    ),
                    "model_as_judge" => {}
                    other => c.error(
                        &format!("{field}.rubric"),
                        format!("{other:?} is not a rubric; expected heuristic or model_as_judge"),
                    ),
                }
            }
        }
        for (i, eval) in raw.evals.iter().enumerate() {
            if let EvalSpec::Detailed { thresholds, .. } = eval {
                for (metric, value) in thresholds {
                    if let Err(e) = Threshold::parse(value) {
                        c.error(&format!("evals[{i}].thresholds.{metric}"), e);
                    }
                }
            }
        }
        if raw.evals.is_empty() {
            c.warn(
                "evals",
                "no evals are declared, so the package can never earn a green badge",
            );
        }
        for (control, requirement) in &raw.safety {
            let field = format!("safety.{control}");
            if matches!(control.as_str(), "package_signing" | "artifact_hashes")
                && *requirement != Requirement::Required
            {
                c.warn(
                    &field,
                    "Custodian signs and hashes every published package; this setting has no effect",
                );
            }
        }
        let license = match raw.license {
            Some(license) if !license.id().trim().is_empty() => Some(license),
            Some(_) => {
                c.error(
                    "license",
                    "is empty; give an SPDX expression (e.g. Apache-2.0) or a LicenseRef-",
                );
                None
            }
            None => {
                c.error(
                    "license",
                    "required field is missing: an SPDX expression (e.g. Apache-2.0), a LicenseRef-, or a registry license id",
                );
                None
            }
        };
        if let Some(data_pack) = &raw.data_pack {
            for (field, message) in data_pack.problems() {
                c.error(&format!("data_pack.{field}"), message);
            }
        }
        for (i, host) in raw.documentation_hosts.iter().enumerate() {
            let valid = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            if !valid {
                c.error(
                    &format!("documentation_hosts[{i}]"),
                    format!("{host:?} is not a host name (write docs.example.org, without a scheme or path)"),
                );
            }
        }
        if let Some(install) = &raw.install {
            for (dep, requirement) in &install.dependencies {
                let field = format!("install.dependencies.{dep}");
                if let Err(e) = check_name(dep) {
                    c.error(&field, e);
                }
                if let Err(e) = semver::VersionReq::parse(requirement) {
                    c.error(
                        &field,
                        format!("{requirement:?} is not a semver requirement: {e}"),
                    );
                }
            }
        }
        if let Some(fine_tune) = &raw.fine_tune {
            for (i, signal) in fine_tune.eval_signals.iter().enumerate() {
                if !seen.contains(signal) {
                    c.error(
                        &format!("fine_tune.eval_signals[{i}]"),
                        format!("{signal:?} is not one of the package's evals"),
                    );
                }
            }
        }
        let manifest = Manifest {
            name,
            version: version?,
            package_type: package_type?,
            description: raw.description,
            base_model,
            inputs: raw.inputs,
            outputs: raw.outputs,
            evals: raw.evals,
            safety: raw.safety,
            license: license?,
            prompt: raw.prompt,
            fine_tune: raw.fine_tune,
            install: raw.install,
            evidence: raw.evidence,
            data_pack: raw.data_pack,
            documentation_hosts: raw.documentation_hosts,
            extra,
        };
        if let Some(files) = files {
            for (field, path) in manifest.referenced_files() {
                if !files.contains(&path) {
                    c.error(
                        &field,
                        format!("refers to {path:?}, which is not a file in the package"),
                    );
                }
            }
        }
        Some(manifest)
    }

    /// Every package file the manifest refers to, with the field that names it.
    pub fn referenced_files(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut push = |field: String, path: &Option<String>| {
            if let Some(p) = path {
                out.push((field, p.clone()));
            }
        };
        if let Some(p) = &self.prompt {
            push("prompt.system".into(), &p.system);
            push("prompt.arena".into(), &p.arena);
            for (list, files) in [
                ("templates", &p.templates),
                ("examples", &p.examples),
                ("tool_schemas", &p.tool_schemas),
            ] {
                for (i, f) in files.iter().enumerate() {
                    push(format!("prompt.{list}[{i}]"), &Some(f.clone()));
                }
            }
        }
        if let Some(f) = &self.fine_tune {
            push("fine_tune.recipe".into(), &f.recipe);
            if f.dataset.as_deref() != Some("data_pack") {
                push("fine_tune.dataset".into(), &f.dataset);
            }
        }
        for (i, eval) in self.evals.iter().enumerate() {
            if let EvalSpec::Detailed { cases, .. } = eval {
                push(format!("evals[{i}].cases"), cases);
            }
        }
        if let LicenseSpec::Detailed { file, .. } = &self.license {
            push("license.file".into(), file);
        }
        if let Some(i) = &self.install {
            push("install.setup".into(), &i.setup);
        }
        if let Some(e) = &self.evidence {
            push("evidence.provenance".into(), &e.provenance);
            push("evidence.sbom".into(), &e.sbom);
            for (i, f) in e.files.iter().enumerate() {
                push(format!("evidence.files[{i}]"), &Some(f.clone()));
            }
        }
        out
    }

    /// The eval ids, in manifest order.
    pub fn eval_ids(&self) -> Vec<&str> {
        self.evals.iter().map(EvalSpec::id).collect()
    }

    /// The models evals must pass against: the prompt's compatible models, else `base_model`.
    pub fn compatible_models(&self) -> Vec<String> {
        match &self.prompt {
            Some(p) if !p.compatible_models.is_empty() => p.compatible_models.clone(),
            _ => self.base_model.clone(),
        }
    }

    /// Whether a safety control is required.
    pub fn requires(&self, control: &str) -> bool {
        self.safety.get(control) == Some(&Requirement::Required)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The minimal manifest of seed 000, as multi-line YAML.
    pub const CUSTOMER_SUPPORT: &str = "name: customer-support-classifier
version: 0.1.0
type: fine_tune_recipe
base_model: gpt-4.1-mini
evals:
  - label_accuracy
  - format_following
  - pii_leakage
safety:
  package_signing: required
  artifact_hashes: required
license: private-commercial
";

    /// The pacman-builder manifest of seed 001, comments included.
    pub const PACMAN: &str = "name: pacman-builder
version: 0.2.1
type: prompt_template
description: >-
  Generates a runnable, single-file Pac-Man clone in the requested language.
  Includes maze layout, ghost AI behaviors, scoring, and a level-completion check.
base_model:
  - gpt-4.1
  - claude-4.6-sonnet
inputs:
  - target_language   # python | javascript | typescript
  - canvas_size       # e.g. \"28x31\" (classic arcade dimensions)
  - difficulty        # easy | classic | nightmare
  - ghost_ai          # chase | scatter | mixed
outputs:
  - source_files      # map of filename -> file body
  - run_instructions  # how to launch the game locally
evals:
  - render_smoke          # generated code starts without runtime errors
  - ghost_ai_correctness  # ghosts respect their assigned mode
  - score_logic           # dot/pellet/ghost points match arcade rules
  - level_completion      # clearing all dots ends the level
safety:
  package_signing: required
  artifact_hashes: required
  no_external_calls: required   # generated game must run fully offline
license: apache-2.0
";

    fn parse(text: &str) -> (Option<Manifest>, Report) {
        Manifest::parse("manifest.yaml", text, None)
    }

    /// The copies in `examples/seeds/` (which the walkthrough publishes) are these, byte for
    /// byte.
    #[test]
    fn the_seed_files_are_the_seed_manifests() {
        assert_eq!(
            include_str!("../../../examples/seeds/customer-support-classifier/manifest.yaml"),
            CUSTOMER_SUPPORT
        );
        assert_eq!(
            include_str!("../../../examples/seeds/pacman-builder/manifest.yaml"),
            PACMAN
        );
    }

    /// Found by `cargo fuzz run manifest`: with bare CR line endings the YAML parser counted
    /// lines that `str::lines` did not, so one report mixed two numberings and a line could lie
    /// past the end of the file.
    #[test]
    fn carriage_returns_are_line_breaks_for_every_problem() {
        let lf = "name: demo\nversion: 0.2\ntype: prompt_spec\nlicense: mit\nhomepage: x\n";
        for text in [
            lf.to_string(),
            lf.replace('\n', "\r"),
            lf.replace('\n', "\r\n"),
        ] {
            let (_, report) = parse(&text);
            let lines: Vec<(String, Option<usize>)> = report
                .errors
                .iter()
                .chain(&report.warnings)
                .map(|p| (p.field.clone(), p.line))
                .collect();
            assert!(
                lines.contains(&("version".into(), Some(2))),
                "{text:?}: {lines:?}"
            );
            assert!(
                lines.contains(&("homepage".into(), Some(5))),
                "{text:?}: {lines:?}"
            );
        }
    }

    #[test]
    fn seed_manifests_parse() {
        let (m, report) = parse(CUSTOMER_SUPPORT);
        let m = m.unwrap_or_else(|| panic!("{report:?}"));
        assert_eq!(m.name, "customer-support-classifier");
        assert_eq!(m.version, semver::Version::new(0, 1, 0));
        assert_eq!(m.package_type, PackageType::FineTuneRecipe);
        assert_eq!(m.base_model, ["gpt-4.1-mini"]);
        assert_eq!(
            m.eval_ids(),
            ["label_accuracy", "format_following", "pii_leakage"]
        );
        assert!(m.requires("package_signing"));
        assert_eq!(m.license.id(), "private-commercial");
        assert!(report.warnings.is_empty(), "{report:?}");

        let (m, report) = parse(PACMAN);
        let m = m.unwrap_or_else(|| panic!("{report:?}"));
        assert_eq!(m.base_model, ["gpt-4.1", "claude-4.6-sonnet"]);
        assert_eq!(m.inputs.len(), 4);
        assert_eq!(m.outputs[1].name(), "run_instructions");
        assert!(m.requires("no_external_calls"));
        assert!(
            m.description
                .as_deref()
                .unwrap_or("")
                .starts_with("Generates")
        );
    }

    #[test]
    fn missing_required_fields_are_each_named() {
        let (m, report) = parse("name: demo\n");
        assert!(m.is_none());
        let fields: Vec<&str> = report.errors.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["version", "type", "base_model", "license"]);
        assert_eq!(
            report.errors[0].to_string(),
            "manifest.yaml: version: required field is missing (a semver version such as 0.1.0)"
        );
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let text = CUSTOMER_SUPPORT.replace("version: 0.1.0", "version: 0.1");
        let (_, report) = parse(&text);
        assert_eq!(report.errors.len(), 1, "{report:?}");
        let p = &report.errors[0];
        assert_eq!((p.line, p.field.as_str()), (Some(2), "version"));
        assert!(p.message.contains("\"0.1\""), "{p}");

        // A type error inside a nested field: the parser's position and the field path.
        let text =
            CUSTOMER_SUPPORT.replace("artifact_hashes: required", "artifact_hashes: sometimes");
        let (_, report) = parse(&text);
        let p = &report.errors[0];
        assert_eq!(p.field, "safety.artifact_hashes");
        assert_eq!(p.line, Some(11));
        assert!(p.message.contains("sometimes"), "{p}");

        // YAML syntax errors carry the line.
        let (_, report) = parse("name: [unclosed\nversion: 1.0.0\n");
        assert!(report.errors[0].line.is_some(), "{report:?}");

        let text = CUSTOMER_SUPPORT.replace("type: fine_tune_recipe", "type: recipe");
        let (_, report) = parse(&text);
        assert_eq!(report.errors[0].line, Some(3));
        assert!(report.errors[0].message.contains("fine_tune_recipe"));

        let text = CUSTOMER_SUPPORT.replace(
            "name: customer-support-classifier",
            "name: Customer Support",
        );
        let (_, report) = parse(&text);
        assert_eq!(report.errors[0].field, "name");
        assert_eq!(report.errors[0].line, Some(1));
    }

    #[test]
    fn unknown_keys_are_errors_but_published_manifests_keep_them() {
        let text = format!("{CUSTOMER_SUPPORT}homepage: https://example.org\nsafety_extra: 1\n");
        let (m, report) = parse(&text);
        assert!(m.is_none());
        let errors: Vec<(&str, Option<usize>)> = report
            .errors
            .iter()
            .map(|p| (p.field.as_str(), p.line))
            .collect();
        assert_eq!(errors, [("homepage", Some(13)), ("safety_extra", Some(14))]);
        assert!(
            report.errors[0].message.contains("annotations"),
            "{}",
            report.errors[0]
        );

        // What is already published stays readable: the same keys are warnings and kept.
        let (m, report) = Manifest::parse_published("manifest.yaml", &text);
        let m = m.expect("still valid once published");
        assert_eq!(
            m.extra.get("homepage"),
            Some(&serde_json::Value::String("https://example.org".into()))
        );
        assert_eq!(report.warnings.len(), 2, "{report:?}");

        // Unknown keys inside known sections are found under their dotted path.
        let text = format!("{CUSTOMER_SUPPORT}fine_tune:\n  recipe_v2: recipe.yaml\n");
        let (_, report) = parse(&text);
        assert_eq!(report.errors[0].field, "fine_tune.recipe_v2");
        assert_eq!(report.errors[0].line, Some(14));
    }

    #[test]
    fn keys_of_your_own_go_under_annotations_or_x() {
        let text = format!(
            "{CUSTOMER_SUPPORT}x-team: support\nannotations:\n  owner: ops@example.org\nfine_tune:\n  x-cluster: a100\n"
        );
        let (m, report) = parse(&text);
        let m = m.unwrap_or_else(|| panic!("{report:?}"));
        assert!(
            report.errors.is_empty() && report.warnings.is_empty(),
            "{report:?}"
        );
        assert!(m.extra.contains_key("x-team"), "{:?}", m.extra);
        assert!(m.extra.contains_key("fine_tune.x-cluster"), "{:?}", m.extra);
    }

    /// Twenty real typos of manifest and safety keys: each is an error on its own line that
    /// suggests the key meant.
    #[test]
    fn twenty_typos_each_get_the_right_suggestion_and_line() {
        let full = "name: demo
version: 1.0.0
type: bundle
description: d
base_model: [m1]
inputs:
  - name: a
    description: x
outputs: [b]
evals:
  - id: e1
    thresholds:
      accuracy: \">= 0.9\"
safety:
  package_signing: required
  artifact_hashes: required
  no_external_calls: required
  pii_scan: optional
  prompt_injection_scan: required
license:
  spdx: MIT
prompt:
  system: s.md
  templates: [t.md]
fine_tune:
  recipe: r.yaml
  hyperparameters: {epochs: 3}
install:
  dependencies: {other: \"^1\"}
evidence:
  sbom: sbom.json
data_pack:
  mode: external
  source_type: url
  uri: https://data.example.org/x.csv
  access_policy: user_managed
  license: CC-BY-4.0
";
        let (m, report) = parse(full);
        assert!(m.is_some(), "{report:?}");
        // (what to replace, its typo, the field reported, the suggestion)
        let typos = [
            ("evals:", "evlas:", "evlas", "evals"),
            ("version: 1.0.0", "versoin: 1.0.0", "versoin", "version"),
            ("license:\n", "licence:\n", "licence", "license"),
            ("base_model:", "base_modle:", "base_modle", "base_model"),
            (
                "description: d",
                "desciption: d",
                "desciption",
                "description",
            ),
            ("safety:", "saftey:", "saftey", "safety"),
            ("inputs:", "inptus:", "inptus", "inputs"),
            ("outputs:", "ouputs:", "ouputs", "outputs"),
            ("type: bundle", "tpye: bundle", "tpye", "type"),
            (
                "  no_external_calls:",
                "  no_externel_calls:",
                "safety.no_externel_calls",
                "no_external_calls",
            ),
            (
                "  package_signing:",
                "  package_signin:",
                "safety.package_signin",
                "package_signing",
            ),
            (
                "  artifact_hashes:",
                "  artifact_hash:",
                "safety.artifact_hash",
                "artifact_hashes",
            ),
            ("  pii_scan:", "  pii_scna:", "safety.pii_scna", "pii_scan"),
            (
                "  prompt_injection_scan:",
                "  prompt_injection_scans:",
                "safety.prompt_injection_scans",
                "prompt_injection_scan",
            ),
            ("  system: s.md", "  sytem: s.md", "prompt.sytem", "system"),
            (
                "  templates:",
                "  template:",
                "prompt.template",
                "templates",
            ),
            (
                "  recipe: r.yaml",
                "  recipie: r.yaml",
                "fine_tune.recipie",
                "recipe",
            ),
            (
                "  dependencies:",
                "  dependancies:",
                "install.dependancies",
                "dependencies",
            ),
            ("  spdx: MIT", "  spxd: MIT", "license.spxd", "spdx"),
            (
                "  access_policy:",
                "  acess_policy:",
                "data_pack.acess_policy",
                "access_policy",
            ),
        ];
        assert_eq!(typos.len(), 20);
        for (right, wrong, field, suggestion) in typos {
            assert!(full.contains(right), "{right}");
            let text = full.replacen(right, wrong, 1);
            let line = text
                .lines()
                .position(|l| l.contains(wrong.trim_end_matches('\n')))
                .map(|i| i + 1);
            let (m, report) = parse(&text);
            assert!(m.is_none(), "{wrong}: accepted");
            let p = report
                .errors
                .iter()
                .find(|p| p.field == field)
                .unwrap_or_else(|| panic!("{wrong}: no error on {field}: {report:?}"));
            assert_eq!(p.line, line, "{wrong}: {p}");
            assert!(
                p.message.contains(&format!("did you mean {suggestion:?}")),
                "{wrong}: {p}"
            );
        }
    }

    #[test]
    fn thresholds_must_parse() {
        let text = CUSTOMER_SUPPORT.replace(
            "  - label_accuracy\n",
            "  - id: label_accuracy\n    thresholds:\n      accuracy: \"about 0.9\"\n",
        );
        let (m, report) = parse(&text);
        assert!(m.is_none());
        assert_eq!(report.errors[0].field, "evals[0].thresholds.accuracy");
        assert_eq!(report.errors[0].line, Some(8));
        for (written, shown) in [
            (serde_json::json!(">= 0.9"), ">= 0.9"),
            (serde_json::json!("<0.05"), "< 0.05"),
            (serde_json::json!(0.75), ">= 0.75"),
            (serde_json::json!("== 1"), "== 1"),
        ] {
            let t = Threshold::parse(&written).expect("parses");
            assert_eq!(t.to_string(), shown);
        }
        let t = Threshold::parse(&serde_json::json!("> 0.5")).expect("parses");
        assert!(t.holds(0.51) && !t.holds(0.5));
    }

    #[test]
    fn referenced_files_must_exist() {
        let text = format!(
            "{PACMAN}prompt:\n  system: prompts/system.md\n  templates:\n    - prompts/user.md\n"
        );
        let files: BTreeSet<String> = ["manifest.yaml", "prompts/system.md"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (m, report) = Manifest::parse("manifest.yaml", &text, Some(&files));
        assert!(m.is_none());
        assert_eq!(report.errors.len(), 1, "{report:?}");
        assert_eq!(report.errors[0].field, "prompt.templates[0]");
        assert_eq!(report.errors[0].line, Some(31));
    }

    #[test]
    fn detailed_evals_and_licenses() {
        let text = "name: '@acme/bot'
version: 1.0.0-rc.1
type: bundle
base_model: [m1]
evals:
  - id: accuracy
    cases: evals/accuracy.jsonl
    rubric: model_as_judge
  - format
license:
  spdx: Apache-2.0
  file: LICENSE
";
        let (_, report) = parse(text);
        assert_eq!(report.errors.len(), 1, "{report:?}");
        assert_eq!(report.errors[0].field, "evals[0].judge_model");
        assert_eq!(report.errors[0].line, Some(6));
        let fixed = text.replace("rubric: model_as_judge", "rubric: heuristic");
        let (m, report) = parse(&fixed);
        let m = m.unwrap_or_else(|| panic!("{report:?}"));
        assert_eq!(m.license.id(), "Apache-2.0");
        assert_eq!(
            m.referenced_files(),
            [
                (
                    "evals[0].cases".to_string(),
                    "evals/accuracy.jsonl".to_string()
                ),
                ("license.file".to_string(), "LICENSE".to_string())
            ]
        );
    }

    #[test]
    fn names() {
        for good in ["a", "pacman-builder", "@acme/support.bot_2", "0x"] {
            check_name(good).expect(good);
        }
        for bad in ["", "A", "-a", "a b", "@acme", "@/a", "a/b", "@a/b/c", "é"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
