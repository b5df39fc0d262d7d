//! Scanning a whole package or a data pack: which files are prompt text, and one report for all.

use std::collections::BTreeSet;
use std::io::{self, Read};

use custodian_core::manifest::{Manifest, Requirement};

use crate::content::Scanner;
use crate::prompt::{self, PromptContext};
use crate::{Limits, Report, Severity};

/// Opens a package file by path for reading.
pub type Opener<'a> = dyn FnMut(&str) -> io::Result<Box<dyn Read + 'a>> + 'a;

/// The manifest's path in a package.
const MANIFEST: &str = custodian_core::package::MANIFEST_FILE;

/// The PromptPack kinds whose text is prompt text.
const PROMPT_KINDS: [&str; 3] = ["PromptConfig", "Scenario", "Persona"];

/// The prompt-scanner context a manifest implies.
pub fn context(manifest: Option<&Manifest>) -> PromptContext {
    let requirement = |control: &str| manifest.and_then(|m| m.safety.get(control).copied());
    PromptContext {
        no_external_calls: matches!(
            requirement("no_external_calls"),
            Some(Requirement::Required | Requirement::Optional)
        ),
        external_url_severity: match requirement("no_external_calls") {
            Some(Requirement::Optional) => Severity::Low,
            _ => Severity::High,
        },
        injection: requirement("prompt_injection_scan") != Some(Requirement::Disabled),
    }
}

/// How PII findings are reported under a manifest: `None` when `safety.pii_scan` is not
/// declared (or disabled), high when required, low when optional.
pub fn pii_severity(manifest: Option<&Manifest>) -> Option<Severity> {
    match manifest.and_then(|m| m.safety.get("pii_scan")) {
        Some(Requirement::Required) => Some(Severity::High),
        Some(Requirement::Optional) => Some(Severity::Low),
        _ => None,
    }
}

/// Documentation files: README, LICENSE, COPYING, NOTICE, CHANGELOG (any extension), anything
/// under `docs/`, and the license file the manifest names. Their links to the manifest's
/// `documentation_hosts` are not external calls.
fn is_documentation(path: &str, manifest: Option<&Manifest>) -> bool {
    let lower = path.to_ascii_lowercase();
    let base = lower.rsplit('/').next().unwrap_or(&lower);
    let stem = base.split('.').next().unwrap_or(base);
    matches!(stem, "readme" | "license" | "licence" | "copying" | "notice" | "changelog")
        || lower.starts_with("docs/")
        || manifest.is_some_and(|m| {
            matches!(&m.license, custodian_core::manifest::LicenseSpec::Detailed { file: Some(f), .. } if f == path)
        })
}

/// The files PII rules read: prompt text, few-shot examples and eval cases.
fn pii_targets(manifest: Option<&Manifest>) -> BTreeSet<String> {
    let mut out = named_prompts(manifest);
    if let Some(m) = manifest {
        for eval in &m.evals {
            if let custodian_core::manifest::EvalSpec::Detailed { cases: Some(c), .. } = eval {
                out.insert(c.clone());
            }
        }
    }
    out
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

/// Scans every file of a package: content and secret rules on all; prompt rules on prompt
/// text; under `safety.no_external_calls`, the URL rule on every text file (the manifest's own
/// declarations aside); under `safety.pii_scan`, the PII rules on prompts, examples and eval
/// cases. `files` are `(path, size)`; `open` reads one. An error reading any file makes the
/// verdict `error`.
pub fn scan_package(files: &[(String, u64)], open: &mut Opener<'_>, limits: &Limits) -> Report {
    let mut scanner = Scanner::new(limits).with_secrets(true);
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
            .and_then(|b| Manifest::parse_published(MANIFEST, &String::from_utf8_lossy(b)).0);
        let manifest = manifest.as_ref();
        let named = named_prompts(manifest);
        let ctx = context(manifest);
        let pii = pii_severity(manifest);
        let pii_files = pii_targets(manifest);
        let allowed_hosts: BTreeSet<String> = manifest
            .map(|m| {
                m.documentation_hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default();
        let mut prompt_bytes = 0u64;
        for (path, size) in files {
            if let (MANIFEST, Some(bytes)) = (path.as_str(), &manifest_bytes) {
                scanner.scan(path, false, &mut bytes.as_slice())?;
                continue;
            }
            let text_rules = ctx.no_external_calls || (pii.is_some() && pii_files.contains(path));
            let mut reader = open(path)?;
            if *size > limits.max_prompt_bytes as u64 {
                scanner.scan(path, false, &mut reader)?;
                if text_rules {
                    scanner.add([not_checked(path, limits, &ctx, pii.is_some())]);
                }
                continue;
            }
            if !(may_be_prompt(path, *size, &named, limits) || text_rules) {
                scanner.scan(path, false, &mut reader)?;
                continue;
            }
            let mut bytes = Vec::with_capacity(*size as usize);
            reader.read_to_end(&mut bytes)?;
            scanner.scan(path, false, &mut bytes.as_slice())?;
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            let prompt = is_prompt(path, &named, Some(text));
            if prompt {
                prompt_bytes += text.len() as u64;
                if prompt_bytes <= limits.max_prompt_total {
                    scanner.add(prompt::scan_text(path, text, &ctx));
                } else {
                    scanner.add([crate::Finding {
                        file: path.clone(),
                        offset: 0,
                        rule: "prompt.not_scanned".into(),
                        severity: Severity::Medium,
                        message: format!(
                            "the package holds more than {} bytes of prompt text; {path} was content-scanned only",
                            limits.max_prompt_total
                        ),
                        count: 1,
                    }]);
                }
            } else if ctx.no_external_calls {
                // Recipes, tools, providers, eval cases, scripts: a URL anywhere is a call the
                // package may make. Documentation may link to the hosts the manifest allows.
                let documentation = is_documentation(path, manifest);
                let mut found = crate::FileFindings::default();
                for (at, url) in prompt::urls(text) {
                    if documentation
                        && prompt::url_host(url).is_some_and(|h| allowed_hosts.contains(&h))
                    {
                        continue;
                    }
                    found.push(path, at as u64, "prompt.external_url", ctx.external_url_severity, || {
                        format!(
                            "the manifest declares no_external_calls, but {path} references {} at byte {at}{}",
                            crate::excerpt(url, 100),
                            if documentation {
                                " (list its host under documentation_hosts if it is only a link)"
                            } else {
                                ""
                            }
                        )
                    });
                }
                scanner.add(found.into_findings());
            }
            if let Some(severity) = pii
                && (prompt || pii_files.contains(path))
            {
                scanner.add(crate::pii::scan_text(path, text, severity));
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

/// A file too large for the text rules a manifest asked for: said, so the report does not
/// pretend it was checked.
fn not_checked(path: &str, limits: &Limits, ctx: &PromptContext, pii: bool) -> crate::Finding {
    let what = match (ctx.no_external_calls, pii) {
        (true, true) => "URLs (no_external_calls) and personal data (pii_scan)",
        (true, false) => "URLs (no_external_calls)",
        _ => "personal data (pii_scan)",
    };
    crate::Finding {
        file: path.to_string(),
        offset: 0,
        rule: "safety.not_checked".into(),
        severity: Severity::Medium,
        message: format!(
            "{path} is larger than {} bytes and was not checked for {what}; bulk data belongs in a data pack",
            limits.max_prompt_bytes
        ),
        count: 1,
    }
}

/// Scans one data-pack file (every byte is data, whatever its name says); `pii` runs the PII
/// rules over its text at that severity (the version's manifest declares `safety.pii_scan`).
pub fn scan_data_pack(
    name: &str,
    reader: &mut dyn Read,
    limits: &Limits,
    pii: Option<Severity>,
) -> Report {
    let Some(severity) = pii else {
        return scan_blob(name, reader, limits);
    };
    // The PII rules read the text as it streams past the content scanner, in pieces cut at
    // line ends so that no value is split between two pieces.
    let mut tee = PiiTee {
        inner: reader,
        name,
        severity,
        pending: Vec::new(),
        offset: 0,
        findings: Vec::new(),
    };
    let mut report = scan_blob(name, &mut tee, limits);
    tee.flush_all();
    report.add(tee.findings, limits.max_findings);
    report.sort();
    report
}

/// A reader that runs the PII rules over the bytes passing through it.
struct PiiTee<'a> {
    inner: &'a mut dyn Read,
    name: &'a str,
    severity: Severity,
    pending: Vec<u8>,
    offset: u64,
    findings: Vec<crate::Finding>,
}

impl PiiTee<'_> {
    fn scan(&mut self, upto: usize) {
        let piece: Vec<u8> = self.pending.drain(..upto).collect();
        let text = String::from_utf8_lossy(&piece);
        for f in crate::pii::scan_text_from(self.name, &text, self.severity, self.offset) {
            // One finding per family for the whole file, counted.
            match self.findings.iter_mut().find(|g| g.rule == f.rule) {
                Some(g) => g.count += f.count,
                None => self.findings.push(f),
            }
        }
        self.offset += piece.len() as u64;
    }

    fn flush_all(&mut self) {
        let n = self.pending.len();
        if n > 0 {
            self.scan(n);
        }
    }
}

impl Read for PiiTee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() >= 1 << 20 {
            let cut = self
                .pending
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(self.pending.len(), |p| p + 1);
            self.scan(cut);
        }
        Ok(n)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A hosted data pack's text goes through the PII rules as it streams: a value past the
    /// first megabyte piece is found, counted once per family, at its offset in the file.
    #[test]
    fn data_pack_text_is_read_for_pii_across_pieces() {
        let mut text = String::new();
        while text.len() < (3 << 20) {
            text.push_str("ticket,queue,text\n1001,billing,charged twice for one order\n");
        }
        let at = text.len();
        text.push_str("1002,account,write to maria.gonzalez@correo-mx.com.mx please\n");
        text.push_str("1003,account,or to li.wei@qq-mail.cn\n");
        let limits = Limits::default();
        let report = scan_data_pack(
            "tickets.csv",
            &mut text.as_bytes(),
            &limits,
            Some(Severity::High),
        );
        let email: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.rule == "pii.email")
            .collect();
        assert_eq!(email.len(), 1, "{:?}", report.findings);
        assert_eq!(email[0].count, 2);
        // The offset, and the message naming it, count from the file's start, not the piece's.
        let offset = (at + "1002,account,write to ".len()) as u64;
        assert_eq!(email[0].offset, offset);
        assert!(
            email[0].message.contains(&format!("at byte {offset} ")),
            "{}",
            email[0].message
        );
        assert_eq!(report.verdict(), crate::Verdict::Flagged);
        // Without pii_scan the same pack is clean.
        let report = scan_data_pack("tickets.csv", &mut text.as_bytes(), &limits, None);
        assert_eq!(
            report.verdict(),
            crate::Verdict::Clean,
            "{:?}",
            report.findings
        );
    }
}
