//! PromptPack resources (seed 002, <https://promptpack.org>): Kubernetes-style YAML files with
//! `apiVersion`, `kind`, `metadata` and `spec`, of kind Arena, PromptConfig, Scenario, Provider,
//! Tool or Persona. A package may write its prompt and eval content in them; publication checks
//! them so that a package never ships an Arena that cannot run.
//!
//! Checked: known kinds and their required fields; files an Arena references exist in the
//! package and are of the right kind; every `required_vars` entry of a PromptConfig is supplied
//! (by the Arena's `vars`, or as a package input); regexes in assertions compile; tool schemas
//! are valid JSON Schema.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::manifest::{Checker, Report};
use crate::package::check_path;

/// The API group PromptPack resources use.
pub const API_GROUP: &str = "promptkit.altairalabs.ai";
/// The API versions this release understands.
pub const API_VERSIONS: [&str; 1] = ["promptkit.altairalabs.ai/v1alpha1"];
/// The resource kinds.
pub const KINDS: [&str; 6] = [
    "Arena",
    "PromptConfig",
    "Scenario",
    "Provider",
    "Tool",
    "Persona",
];
/// Assertion types PromptArena documents.
const ASSERTIONS: [&str; 8] = [
    "content_includes",
    "content_excludes",
    "content_matches",
    "content_not_matches",
    "tools_called",
    "tools_called_with",
    "tools_not_called",
    "json_schema",
];
/// Provider types PromptArena documents.
const PROVIDERS: [&str; 4] = ["openai", "anthropic", "gemini", "mock"];

/// One parsed resource.
struct Resource {
    path: String,
    text: String,
    kind: String,
    doc: Value,
}

/// True if the file looks like a PromptPack resource (a YAML mapping with `apiVersion` and `kind`).
pub fn is_resource_path(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

/// Checks every PromptPack resource among `yaml_files` (path → text). `all_paths` is the
/// package's complete file list; `inputs` are the package's declared runtime inputs.
pub fn validate(
    yaml_files: &BTreeMap<String, String>,
    all_paths: &BTreeSet<String>,
    inputs: &[String],
) -> Report {
    let mut report = Report::default();
    let mut resources = BTreeMap::new();
    for (path, text) in yaml_files {
        // A YAML file that is not a PromptPack resource (a recipe, a config) is not ours to judge.
        if !text.contains("apiVersion") || !text.contains("kind") {
            continue;
        }
        let text = &crate::manifest::normalize_newlines(text).into_owned();
        let mut c = Checker::new(path, text);
        let doc: Value = match serde_norway::from_str::<serde_norway::Value>(text)
            .map(|v| serde_json::to_value(v).unwrap_or(Value::Null))
        {
            Ok(doc) => doc,
            Err(err) => {
                c.yaml_error(String::new(), &err);
                report.extend(c.report);
                continue;
            }
        };
        let (Some(api), Some(kind)) = (
            doc.get("apiVersion").and_then(Value::as_str),
            doc.get("kind").and_then(Value::as_str),
        ) else {
            continue;
        };
        if !api.starts_with(API_GROUP) {
            continue;
        }
        if !API_VERSIONS.contains(&api) {
            c.warn(
                "apiVersion",
                format!(
                    "{api:?} is newer than this release understands ({}); checked as v1alpha1",
                    API_VERSIONS.join(", ")
                ),
            );
        }
        if !KINDS.contains(&kind) {
            c.error(
                "kind",
                format!(
                    "{kind:?} is not a PromptPack kind; expected one of {}",
                    KINDS.join(", ")
                ),
            );
            report.extend(c.report);
            continue;
        }
        check_resource(&mut c, kind, &doc);
        report.extend(c.report);
        resources.insert(
            path.clone(),
            Resource {
                path: path.clone(),
                text: text.clone(),
                kind: kind.to_string(),
                doc,
            },
        );
    }
    let mut supplied: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for arena in resources.values().filter(|r| r.kind == "Arena") {
        let mut c = Checker::new(&arena.path, &arena.text);
        check_arena_references(&mut c, arena, &resources, all_paths, &mut supplied);
        report.extend(c.report);
    }
    let inputs: BTreeSet<&str> = inputs.iter().map(String::as_str).collect();
    for config in resources.values().filter(|r| r.kind == "PromptConfig") {
        let mut c = Checker::new(&config.path, &config.text);
        let required = string_list(&config.doc, "/spec/required_vars");
        let by_arena = supplied.get(&config.path);
        for (i, var) in required.iter().enumerate() {
            let in_arena = by_arena.is_some_and(|vars| vars.contains(var));
            if !in_arena && !inputs.contains(var.as_str()) {
                c.error(
                    &format!("spec.required_vars[{i}]"),
                    format!(
                        "{var:?} is not supplied: give it in the Arena's prompt_configs[].vars or declare it in the manifest's inputs"
                    ),
                );
            }
        }
        report.extend(c.report);
    }
    report
}

fn string_list(doc: &Value, pointer: &str) -> Vec<String> {
    doc.pointer(pointer)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn require_str(c: &mut Checker<'_>, doc: &Value, pointer: &str) -> Option<String> {
    let field = pointer.trim_start_matches('/').replace('/', ".");
    match doc.pointer(pointer) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::String(_)) => {
            c.error(&field, "must not be empty");
            None
        }
        Some(other) => {
            c.error(&field, format!("must be a string, got {other}"));
            None
        }
        None => {
            c.error(&field, "required field is missing");
            None
        }
    }
}

fn check_resource(c: &mut Checker<'_>, kind: &str, doc: &Value) {
    if let Some(name) = require_str(c, doc, "/metadata/name")
        && !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        c.error(
            "metadata.name",
            format!("{name:?} is not a resource name (letters, digits, '-', '_', '.')"),
        );
    }
    let Some(spec) = doc.get("spec").filter(|s| s.is_object()) else {
        c.error("spec", "required: a mapping with the resource's settings");
        return;
    };
    match kind {
        "Arena" => {
            match spec.get("prompt_configs").and_then(Value::as_array) {
                Some(list) if !list.is_empty() => {
                    for (i, item) in list.iter().enumerate() {
                        for key in ["id", "file"] {
                            if item.get(key).and_then(Value::as_str).is_none() {
                                c.error(
                                    &format!("spec.prompt_configs[{i}].{key}"),
                                    "required field is missing",
                                );
                            }
                        }
                    }
                }
                _ => c.error(
                    "spec.prompt_configs",
                    "required: a list of {id, file} prompt configurations",
                ),
            }
            if spec
                .get("scenarios")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                c.error("spec.scenarios", "required: a list of {file} scenarios");
            }
        }
        "PromptConfig" => {
            require_str(c, doc, "/spec/system_template");
            if let Some(vars) = spec.get("required_vars")
                && !vars
                    .as_array()
                    .is_some_and(|v| v.iter().all(Value::is_string))
            {
                c.error("spec.required_vars", "must be a list of variable names");
            }
            if let (Some(template), Some(required)) = (
                spec.get("system_template").and_then(Value::as_str),
                spec.get("required_vars").and_then(Value::as_array),
            ) {
                let declared: BTreeSet<&str> = required.iter().filter_map(Value::as_str).collect();
                for var in placeholders(template) {
                    if !declared.contains(var.as_str()) {
                        c.warn(
                            "spec.system_template",
                            format!("uses {{{{{var}}}}}, which is not in required_vars"),
                        );
                    }
                }
            }
            if let Some(validators) = spec.get("validators").and_then(Value::as_array) {
                for (i, v) in validators.iter().enumerate() {
                    if v.get("type").and_then(Value::as_str).is_none() {
                        c.error(
                            &format!("spec.validators[{i}].type"),
                            "required field is missing",
                        );
                    }
                }
            }
        }
        "Scenario" => match spec.get("turns").and_then(Value::as_array) {
            Some(turns) if !turns.is_empty() => {
                for (i, turn) in turns.iter().enumerate() {
                    let field = format!("spec.turns[{i}]");
                    match turn.get("role").and_then(Value::as_str) {
                        Some("user" | "assistant" | "system") => {}
                        Some(other) => c.error(
                            &format!("{field}.role"),
                            format!("{other:?} is not a role; expected user, assistant or system"),
                        ),
                        None => c.error(&format!("{field}.role"), "required field is missing"),
                    }
                    if turn.get("content").and_then(Value::as_str).is_none() {
                        c.error(&format!("{field}.content"), "required field is missing");
                    }
                    let assertions = turn.get("assertions").and_then(Value::as_array);
                    for (j, assertion) in assertions.into_iter().flatten().enumerate() {
                        check_assertion(c, &format!("{field}.assertions[{j}]"), assertion);
                    }
                }
            }
            _ => c.error(
                "spec.turns",
                "required: a non-empty list of conversation turns",
            ),
        },
        "Provider" => {
            if let Some(t) = require_str(c, doc, "/spec/type")
                && !PROVIDERS.contains(&t.as_str())
            {
                c.warn(
                    "spec.type",
                    format!(
                        "{t:?} is not a provider PromptArena documents ({})",
                        PROVIDERS.join(", ")
                    ),
                );
            }
            require_str(c, doc, "/spec/model");
        }
        "Tool" => {
            require_str(c, doc, "/spec/name");
            require_str(c, doc, "/spec/description");
            match spec.get("input_schema") {
                Some(schema) => check_schema(c, "spec.input_schema", schema),
                None => c.error(
                    "spec.input_schema",
                    "required: the JSON Schema of the tool's input",
                ),
            }
            if let Some(schema) = spec.get("output_schema") {
                check_schema(c, "spec.output_schema", schema);
            }
            match spec.get("mode").and_then(Value::as_str) {
                None | Some("mock" | "mcp") => {}
                Some("live") => {
                    if spec.pointer("/http/url").and_then(Value::as_str).is_none() {
                        c.error("spec.http.url", "a live tool needs http.url");
                    }
                }
                Some(other) => c.error(
                    "spec.mode",
                    format!("{other:?} is not a tool mode; expected mock, live or mcp"),
                ),
            }
        }
        "Persona" => {
            require_str(c, doc, "/spec/system_prompt");
        }
        _ => {}
    }
}

fn check_assertion(c: &mut Checker<'_>, field: &str, assertion: &Value) {
    let Some(kind) = assertion.get("type").and_then(Value::as_str) else {
        c.error(&format!("{field}.type"), "required field is missing");
        return;
    };
    if !ASSERTIONS.contains(&kind) {
        c.warn(
            &format!("{field}.type"),
            format!("{kind:?} is not an assertion type PromptArena documents; kept as written"),
        );
    }
    if kind.ends_with("matches") {
        match assertion.pointer("/params/pattern").and_then(Value::as_str) {
            Some(pattern) => {
                if let Err(e) = regex::Regex::new(pattern) {
                    c.error(
                        &format!("{field}.params.pattern"),
                        format!("{pattern:?} does not compile: {}", one_line(&e.to_string())),
                    );
                }
            }
            None => c.error(
                &format!("{field}.params.pattern"),
                "required field is missing",
            ),
        }
    }
    if kind == "json_schema"
        && let Some(schema) = assertion.pointer("/params/schema")
    {
        check_schema(c, &format!("{field}.params.schema"), schema);
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks a JSON Schema against its meta-schema, then compiles it (which catches what the
/// meta-schema cannot, such as a `pattern` that is not a valid regex).
fn check_schema(c: &mut Checker<'_>, field: &str, schema: &Value) {
    if let Err(e) = jsonschema::meta::validate(schema) {
        c.error(field, format!("is not a valid JSON Schema: {e}"));
        return;
    }
    if let Err(e) = jsonschema::validator_for(schema) {
        c.error(field, format!("is not a usable JSON Schema: {e}"));
    }
}

/// The `{{name}}` placeholders in a template.
fn placeholders(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            break;
        };
        let name = after[..close].trim();
        if !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !out.iter().any(|n| n == name)
        {
            out.push(name.to_string());
        }
        rest = &after[close + 2..];
    }
    out
}

/// Resolves a path an Arena names, relative to the Arena's folder.
fn resolve(base: &str, reference: &str) -> Result<String, String> {
    let dir = base.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    let mut parts: Vec<&str> = if dir.is_empty() {
        Vec::new()
    } else {
        dir.split('/').collect()
    };
    if reference.starts_with('/') {
        return Err(format!(
            "{reference:?} is absolute; paths are relative to the Arena file"
        ));
    }
    for part in reference.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("{reference:?} escapes the package"));
                }
            }
            p => parts.push(p),
        }
    }
    let path = parts.join("/");
    check_path(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

fn check_arena_references(
    c: &mut Checker<'_>,
    arena: &Resource,
    resources: &BTreeMap<String, Resource>,
    all_paths: &BTreeSet<String>,
    supplied: &mut BTreeMap<String, BTreeSet<String>>,
) {
    let Some(spec) = arena.doc.get("spec") else {
        return;
    };
    for (list, kind) in [
        ("prompt_configs", "PromptConfig"),
        ("scenarios", "Scenario"),
        ("providers", "Provider"),
        ("tools", "Tool"),
    ] {
        let Some(items) = spec.get(list).and_then(Value::as_array) else {
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let field = format!("spec.{list}[{i}].file");
            let Some(reference) = item.get("file").and_then(Value::as_str) else {
                continue;
            };
            let path = match resolve(&arena.path, reference) {
                Ok(path) => path,
                Err(e) => {
                    c.error(&field, e);
                    continue;
                }
            };
            if !all_paths.contains(&path) {
                c.error(
                    &field,
                    format!("{reference:?} (resolved to {path:?}) is not a file in the package"),
                );
                continue;
            }
            match resources.get(&path) {
                Some(r) if r.kind == kind => {}
                Some(r) => c.error(
                    &field,
                    format!(
                        "{reference:?} is a {}, but {list} lists {kind} resources",
                        r.kind
                    ),
                ),
                None => c.error(
                    &field,
                    format!("{reference:?} is not a PromptPack {kind} resource"),
                ),
            }
            if list == "prompt_configs" {
                let vars = item
                    .get("vars")
                    .and_then(Value::as_object)
                    .map(|m| m.keys().cloned().collect::<BTreeSet<_>>())
                    .unwrap_or_default();
                supplied.entry(path).or_default().extend(vars);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARENA: &str = "apiVersion: promptkit.altairalabs.ai/v1alpha1
kind: Arena
metadata:
  name: support-suite
spec:
  prompt_configs:
    - id: support
      file: prompts/support.yaml
      vars:
        company_name: TechCo
  providers:
    - file: providers/mock.yaml
  scenarios:
    - file: scenarios/order.yaml
  tools:
    - file: tools/weather.yaml
";
    const PROMPT: &str = "apiVersion: promptkit.altairalabs.ai/v1alpha1
kind: PromptConfig
metadata:
  name: support
spec:
  system_template: |
    You are a support agent for {{company_name}}.
  required_vars:
    - company_name
";
    const SCENARIO: &str = "apiVersion: promptkit.altairalabs.ai/v1alpha1
kind: Scenario
metadata:
  name: order
spec:
  turns:
    - role: user
      content: track my order
      assertions:
        - type: content_matches
          params:
            pattern: \"(?i)(order|#12345)\"
";
    const PROVIDER: &str = "apiVersion: promptkit.altairalabs.ai/v1alpha1
kind: Provider
metadata:
  name: mock
spec:
  type: mock
  model: mock-model
";
    const TOOL: &str = "apiVersion: promptkit.altairalabs.ai/v1alpha1
kind: Tool
metadata:
  name: get-weather
spec:
  name: get_weather
  description: Get current weather
  input_schema:
    type: object
    properties:
      location:
        type: string
    required: [location]
  mode: mock
";

    fn pack(overrides: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut files: BTreeMap<String, String> = [
            ("arena.yaml", ARENA),
            ("prompts/support.yaml", PROMPT),
            ("scenarios/order.yaml", SCENARIO),
            ("providers/mock.yaml", PROVIDER),
            ("tools/weather.yaml", TOOL),
        ]
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
        for (path, text) in overrides {
            files.insert(path.to_string(), text.to_string());
        }
        files
    }

    fn check(files: &BTreeMap<String, String>) -> Report {
        let paths: BTreeSet<String> = files.keys().cloned().collect();
        validate(files, &paths, &[])
    }

    fn error_fields(report: &Report) -> Vec<(String, String, Option<usize>)> {
        report
            .errors
            .iter()
            .map(|p| (p.file.clone(), p.field.clone(), p.line))
            .collect()
    }

    #[test]
    fn a_complete_pack_is_valid() {
        let report = check(&pack(&[]));
        assert!(report.is_ok(), "{report:?}");
        assert!(report.warnings.is_empty(), "{report:?}");
    }

    #[test]
    fn unknown_kinds_and_missing_fields_are_named() {
        let report = check(&pack(&[(
            "providers/mock.yaml",
            "apiVersion: promptkit.altairalabs.ai/v1alpha1\nkind: Model\nmetadata:\n  name: m\nspec: {}\n",
        )]));
        let fields = error_fields(&report);
        assert!(
            fields.contains(&("providers/mock.yaml".into(), "kind".into(), Some(2))),
            "{fields:?}"
        );
        // The Arena now points at something that is not a Provider.
        assert!(
            fields.contains(&(
                "arena.yaml".into(),
                "spec.providers[0].file".into(),
                Some(12)
            )),
            "{fields:?}"
        );

        let report = check(&pack(&[(
            "prompts/support.yaml",
            &PROMPT.replace(
                "  system_template: |\n    You are a support agent for {{company_name}}.\n",
                "",
            ),
        )]));
        assert_eq!(
            error_fields(&report),
            [(
                "prompts/support.yaml".into(),
                "spec.system_template".into(),
                Some(5)
            )]
        );
    }

    #[test]
    fn referenced_files_must_exist() {
        let mut files = pack(&[]);
        files.remove("scenarios/order.yaml");
        let report = check(&files);
        assert_eq!(
            error_fields(&report),
            [(
                "arena.yaml".into(),
                "spec.scenarios[0].file".into(),
                Some(14)
            )]
        );

        let report = check(&pack(&[(
            "arena.yaml",
            &ARENA.replace("scenarios/order.yaml", "../../etc/passwd"),
        )]));
        assert_eq!(report.errors[0].field, "spec.scenarios[0].file");
        assert!(report.errors[0].message.contains("escapes"), "{report:?}");
    }

    #[test]
    fn required_vars_must_be_supplied() {
        let report = check(&pack(&[(
            "arena.yaml",
            &ARENA.replace("      vars:\n        company_name: TechCo\n", ""),
        )]));
        assert_eq!(
            error_fields(&report),
            [(
                "prompts/support.yaml".into(),
                "spec.required_vars[0]".into(),
                Some(9)
            )]
        );
        // A package input supplies it as well.
        let mut files = pack(&[(
            "arena.yaml",
            &ARENA.replace("      vars:\n        company_name: TechCo\n", ""),
        )]);
        let paths: BTreeSet<String> = files.keys().cloned().collect();
        assert!(validate(&files, &paths, &["company_name".into()]).is_ok());
        files.clear();
    }

    #[test]
    fn regexes_must_compile() {
        let report = check(&pack(&[(
            "scenarios/order.yaml",
            &SCENARIO.replace("(?i)(order|#12345)", "(unclosed"),
        )]));
        assert_eq!(
            error_fields(&report),
            [(
                "scenarios/order.yaml".into(),
                "spec.turns[0].assertions[0].params.pattern".into(),
                Some(12)
            )]
        );
    }

    #[test]
    fn tool_schemas_must_be_json_schema() {
        let report = check(&pack(&[(
            "tools/weather.yaml",
            &TOOL.replace("type: string", "type: text"),
        )]));
        assert_eq!(
            error_fields(&report),
            [(
                "tools/weather.yaml".into(),
                "spec.input_schema".into(),
                Some(8)
            )]
        );
        let report = check(&pack(&[(
            "tools/weather.yaml",
            &TOOL.replace("required: [location]", "required: location"),
        )]));
        assert_eq!(report.errors.len(), 1, "{report:?}");
        let report = check(&pack(&[(
            "tools/weather.yaml",
            &TOOL.replace("  mode: mock\n", "  mode: live\n"),
        )]));
        assert_eq!(
            error_fields(&report),
            [("tools/weather.yaml".into(), "spec.http.url".into(), Some(5))]
        );
    }

    #[test]
    fn files_that_are_not_promptpack_are_ignored() {
        let files = pack(&[
            ("recipe.yaml", "learning_rate: 0.0001\nepochs: 3\n"),
            ("broken.yaml", "a: [b\n"),
        ]);
        assert!(check(&files).is_ok());
    }
}
