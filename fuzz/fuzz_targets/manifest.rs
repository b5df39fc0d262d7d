//! `manifest.yaml` from a publisher: every problem reported, never a panic, lines in the file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (_, report) = custodian_core::manifest::Manifest::parse("manifest.yaml", &text, None);
    // Lines as YAML and editors count them (a lone CR breaks a line too).
    let lines = custodian_core::manifest::normalize_newlines(&text)
        .lines()
        .count()
        .max(1) as u64;
    for p in report.errors.iter().chain(&report.warnings) {
        if let Some(line) = p.line {
            assert!(
                (line as u64) <= lines + 1,
                "line {line} past the end ({lines})"
            );
        }
    }
});
