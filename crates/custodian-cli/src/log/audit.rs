//! `custodian audit`: an export directory audited offline with the log's key.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use custodian_core::audit::AuditError;
use custodian_core::checkpoint::Checkpoint;
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
    /// Also require the export's newest checkpoint to carry a quorum of witness cosignatures,
    /// as this policy file defines it
    #[arg(long, value_name = "FILE")]
    witness_policy: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Runs `custodian audit`.
pub fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let verifier = crate::keys::load_verifier(&args.key)?;
    let policy = crate::policy::load(args.witness_policy.as_deref())?;
    let started = std::time::Instant::now();
    let result = run_audit(&args.dir, verifier.clone())
        .map_err(|e| e.to_string())
        .and_then(|report| {
            let witnesses = match &policy {
                None => Vec::new(),
                Some(policy) => newest_checkpoint_quorum(&args.dir, &verifier, policy)?,
            };
            Ok((report, witnesses))
        });
    match result {
        Ok((report, witnesses)) => {
            let seconds = started.elapsed().as_secs_f64();
            if args.json {
                let mut view = serde_json::to_value(&report)?;
                view["ok"] = json!(true);
                view["seconds"] = json!(seconds);
                if policy.is_some() {
                    view["witnesses"] = json!(witnesses);
                }
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
                if policy.is_some() {
                    println!(
                        "  the newest checkpoint carries the witness quorum: {}",
                        witnesses.join(", ")
                    );
                }
                let keys = &report.keys;
                println!(
                    "  keys: {} judged against the keys valid at their entries' ledger time ({}{})",
                    counted(keys.judged, "signature", "signatures"),
                    counted(keys.key_events, "key event", "key events"),
                    if keys.sealed_not_judged > 0 {
                        format!(
                            "; {} sealed, not judged here",
                            counted(keys.sealed_not_judged, "entry", "entries")
                        )
                    } else {
                        String::new()
                    }
                );
                if !keys.not_counting.is_empty() {
                    println!(
                        "  {} no longer count (the log is intact; badges pass these over):",
                        counted(keys.not_counting.len() as u64, "signature", "signatures")
                    );
                    for n in keys.not_counting.iter().take(20) {
                        let handle = VerifierKey::parse(&n.key)
                            .map(|k| k.handle())
                            .unwrap_or_else(|_| n.key.clone());
                        println!(
                            "    entry {} {} of {} by {handle}: {}",
                            n.index, n.kind, n.name, n.why
                        );
                    }
                    if keys.not_counting.len() > 20 {
                        println!("    … (--json lists them all)");
                    }
                }
                for bad in &keys.bad_key_events {
                    println!("  key event {} does not hold: {}", bad.index, bad.reason);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(failure(args.json, "audit FAILED", err)),
    }
}

/// Checks the policy's quorum on the export's newest checkpoint (the one the audit's root is
/// compared with); returns the witnesses that cosigned it.
fn newest_checkpoint_quorum(
    dir: &Path,
    verifier: &VerifierKey,
    policy: &custodian_core::witness::WitnessPolicy,
) -> Result<Vec<String>, String> {
    let listing = std::fs::read_dir(dir.join("checkpoints")).map_err(|e| e.to_string())?;
    let mut newest: Option<(u64, Vec<u8>)> = None;
    for file in listing {
        let bytes =
            std::fs::read(file.map_err(|e| e.to_string())?.path()).map_err(|e| e.to_string())?;
        let size = Checkpoint::open(&bytes, verifier)
            .map_err(|e| e.to_string())?
            .size;
        if newest.as_ref().is_none_or(|(s, _)| size > *s) {
            newest = Some((size, bytes));
        }
    }
    let (size, note) = newest.ok_or("the export has no checkpoint")?;
    policy.check(&note, size).map_err(|e| e.to_string())
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
