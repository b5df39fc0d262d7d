//! `custodian audit`: an export directory audited offline with the log's key.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use custodian_core::audit::AuditError;
use custodian_core::note::VerifierKey;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::{counted, failure};

/// Options of `custodian audit`.
#[derive(Args)]
pub struct AuditArgs {
    /// A directory written by `custodian log export`
    dir: PathBuf,
    /// The log's verifier key (NAME+ID+KEY), or a file containing it
    #[arg(long, value_name = "VKEY")]
    key: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Runs `custodian audit`.
pub fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let verifier = crate::keys::load_verifier(&args.key)?;
    let started = std::time::Instant::now();
    match run_audit(&args.dir, verifier) {
        Ok(report) => {
            let seconds = started.elapsed().as_secs_f64();
            if args.json {
                let mut view = serde_json::to_value(&report)?;
                view["ok"] = json!(true);
                view["seconds"] = json!(seconds);
                println!("{view}");
            } else {
                println!(
                    "audit passed: {}, {} and {} of log {} agree",
                    counted(report.entries, "entry", "entries"),
                    counted(report.checkpoints, "checkpoint", "checkpoints"),
                    counted(report.tree_hashes, "tree hash", "tree hashes"),
                    report.origin
                );
                println!("  root {}", report.root);
                println!(
                    "  every checkpoint's signature verifies, its root equals the one recomputed from the entries, and the prev chain is intact ({:.0} entries/s)",
                    report.entries as f64 / seconds.max(1e-9)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(failure(args.json, "audit FAILED", err)),
    }
}

/// Audits an export directory, with progress on a terminal.
fn run_audit(
    dir: &Path,
    verifier: VerifierKey,
) -> Result<custodian_core::audit::AuditReport, AuditError> {
    let entries_len = std::fs::metadata(dir.join("entries")).map_or(0, |m| m.len());
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(entries_len);
        bar.set_style(
            ProgressStyle::with_template("auditing [{bar:30}] {bytes}/{total_bytes} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let report = custodian_core::audit::audit_dir(dir, verifier, |n| bar.inc(n));
    bar.finish_and_clear();
    report
}
