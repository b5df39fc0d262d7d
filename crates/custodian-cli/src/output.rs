//! What commands print beyond their own lines: progress bars for long transfers (on a terminal
//! only) and scanner findings, in one shape wherever they appear.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar for a transfer of `len` bytes (hidden when stderr is not a terminal).
pub fn progress(len: u64, label: String) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(label);
    bar
}

/// Prints findings one per line, `indent` spaces in, leaving out those below `min`.
pub fn print_findings(
    findings: &[custodian_scan::Finding],
    omitted: u64,
    indent: usize,
    min: custodian_scan::Severity,
) {
    let pad = " ".repeat(indent);
    for f in findings.iter().filter(|f| f.severity >= min) {
        let place = if f.file.is_empty() {
            String::new()
        } else {
            format!("{}@{} ", f.file, f.offset)
        };
        let count = if f.count > 1 {
            format!(" (×{})", f.count)
        } else {
            String::new()
        };
        println!(
            "{pad}{:<8} {place}{}{count}: {}",
            f.severity.as_str().to_uppercase(),
            f.rule,
            f.message
        );
    }
    if omitted > 0 {
        println!("{pad}… and {omitted} less severe findings not recorded");
    }
}
