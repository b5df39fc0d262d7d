//! Scanning a whole package or a data pack: which files are prompt text, and one report for all.

use std::collections::BTreeSet;
use std::io::{self, Read};

use custodian_core::manifest::{Manifest, Requirement};

use crate::content::Scanner;
use crate::prompt::{self, PromptContext};
use crate::{Limits, Report};

/// Opens a package file by path for reading.
pub type Opener<'a> = dyn FnMut(&str) -> io::Result<Box<dyn Read + 'a>> + 'a;

/// The manifest's path in a package.
const MANIFEST: &str = custodian_core::package::MANIFEST_FILE;

/// The PromptPack kinds whose text is prompt text.
const PROMPT_KINDS: [&str; 3] = ["PromptConfig", "Scenario", "Persona"];

/// The prompt-scanner context a manifest implies.
pub fn context(manifest: Option<&Manifest>) -> PromptContext {
    PromptContext {
        no_external_calls: manifest.is_some_and(|m| {
            matches!(
                m.safety.get("no_external_calls"),
                Some(Requirement::Required | Requirement::Optional)
            )
        }),
    }
}

/// The files the manifest names as prompt text (system prompt, templates, few-shot examples).
fn named_prompts(manifest: Option<&Manifest>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(p) = manifest.and_then(|m| m.prompt.as_ref()) {
        out.extend(p.system.iter().cloned());
        out.extend(p.templates.iter().cloned());
        out.extend(p.examples.iter().cloned());
    }
    out
}

/// True if a file is prompt text: named by the manifest, a prompt file under `prompts/`, or a
/// PromptPack PromptConfig, Scenario or Persona resource.
fn is_prompt(path: &str, named: &BTreeSet<String>, text: Option<&str>) -> bool {
    if named.contains(path) {
        return true;
    }
    let lower = path.to_ascii_lowercase();
    if lower.starts_with("prompts/")
        && [".md", ".txt", ".prompt", ".j2", ".jinja", ".tmpl"]
            .iter()
            .any(|e| lower.ends_with(e))
    {
        return true;
    }
    let yaml = lower.ends_with(".yaml") || lower.ends_with(".yml");
    yaml && text.is_some_and(|t| {
        t.lines().any(|line| {
            line.strip_prefix("kind:")
                .is_some_and(|k| PROMPT_KINDS.contains(&k.trim().trim_matches(['"', '\''])))
        })
    })
}

/// Candidates worth reading whole: small files that may be prompt text.
fn may_be_prompt(path: &str, size: u64, named: &BTreeSet<String>, limits: &Limits) -> bool {
    let lower = path.to_ascii_lowercase();
    size <= limits.max_prompt_bytes as u64
        && (named.contains(path)
            || lower.starts_with("prompts/")
            || lower.ends_with(".yaml")
            || lower.ends_with(".yml"))
}

/// Scans every file of a package: content rules on all, prompt rules on prompt text. `files` are
/// `(path, size)`; `open` reads one. The manifest (`manifest.yaml`) decides which files are
/// prompts and whether URLs are allowed. An error reading any file makes the verdict `error`.
pub fn scan_package(files: &[(String, u64)], open: &mut Opener<'_>, limits: &Limits) -> Report {
    let mut scanner = Scanner::new(limits);
    let outcome = (|| -> io::Result<()> {
        // The manifest is read once: parsed here, and scanned from these bytes in the loop.
        let manifest_bytes = match files.iter().find(|(p, _)| p == MANIFEST) {
            Some((_, size)) if *size <= limits.max_prompt_bytes as u64 => {
                let mut bytes = Vec::with_capacity(*size as usize);
                open(MANIFEST)?.read_to_end(&mut bytes)?;
                Some(bytes)
            }
            _ => None,
        };
        let manifest = manifest_bytes
            .as_deref()
            .and_then(|b| Manifest::parse(MANIFEST, &String::from_utf8_lossy(b), None).0);
        let named = named_prompts(manifest.as_ref());
        let ctx = context(manifest.as_ref());
        let mut prompt_bytes = 0u64;
        for (path, size) in files {
            if let (MANIFEST, Some(bytes)) = (path.as_str(), &manifest_bytes) {
                scanner.scan(path, false, &mut bytes.as_slice())?;
                continue;
            }
            let mut reader = open(path)?;
            if may_be_prompt(path, *size, &named, limits) {
                let mut bytes = Vec::with_capacity(*size as usize);
                reader.read_to_end(&mut bytes)?;
                scanner.scan(path, false, &mut bytes.as_slice())?;
                let text = std::str::from_utf8(&bytes).ok();
                if is_prompt(path, &named, text)
                    && let Some(text) = text
                {
                    prompt_bytes += text.len() as u64;
                    if prompt_bytes <= limits.max_prompt_total {
                        scanner.add(prompt::scan_text(path, text, &ctx));
                    } else {
                        scanner.add([crate::Finding {
                            file: path.clone(),
                            offset: 0,
                            rule: "prompt.not_scanned".into(),
                            severity: crate::Severity::Medium,
                            message: format!(
                                "the package holds more than {} bytes of prompt text; {path} was content-scanned only",
                                limits.max_prompt_total
                            ),
                            count: 1,
                        }]);
                    }
                }
            } else {
                scanner.scan(path, false, &mut reader)?;
            }
        }
        Ok(())
    })();
    let mut report = scanner.finish();
    if let Err(err) = outcome {
        report.error = Some(format!("the scan could not read the content: {err}"));
    }
    report
}

/// Scans one data-pack file (every byte is data, whatever its name says).
pub fn scan_blob(name: &str, reader: &mut dyn Read, limits: &Limits) -> Report {
    let mut scanner = Scanner::new(limits);
    let outcome = scanner.scan(name, true, reader);
    let mut report = scanner.finish();
    if let Err(err) = outcome {
        report.error = Some(format!("the scan could not read the content: {err}"));
    }
    report
}
