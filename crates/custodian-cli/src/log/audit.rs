//! `custodian audit`: an export directory audited offline with the log's key.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use custodian_core::audit::{AuditError, EntryReader};
use custodian_core::checkpoint::Checkpoint;
use custodian_core::note::VerifierKey;
use custodian_server::retention::reconcile::{
    Finding, ReconcileOptions, Reconciliation, parse_listing,
};
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
    /// Also reconcile the store with the export: a custody listing written by `custodian blob
    /// list --json` before the export was taken. Every blob the ledger keeps or ever named must
    /// be present or recorded deleted; every present blob is judged by what keeps it
    #[arg(long, value_name = "LISTING")]
    reconcile: Option<PathBuf>,
    /// With --reconcile: the grace period the store is collected with (serve --gc-grace)
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    grace: std::time::Duration,
    /// With --reconcile: a collection with --grace finished just before the listing, so a
    /// present blob that nothing keeps, or a recorded deletion not carried out, is an error
    #[arg(long, requires = "reconcile")]
    collected: bool,
    /// With --reconcile: a file of digests (sha256:… or blake3:…, one a line) the store
    /// acknowledged to you; each must be present or named by a BlobsDeleted entry
    #[arg(long, value_name = "FILE", requires = "reconcile")]
    acknowledged: Option<PathBuf>,
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
    let result = result.and_then(|(report, witnesses)| {
        let reconciliation = match &args.reconcile {
            None => None,
            Some(listing) => Some(reconcile(&args, listing).map_err(|e| format!("{e:#}"))?),
        };
        Ok((report, witnesses, reconciliation))
    });
    match result {
        Ok((report, witnesses, reconciliation)) => {
            let seconds = started.elapsed().as_secs_f64();
            if args.json {
                let mut view = serde_json::to_value(&report)?;
                view["ok"] = json!(true);
                view["seconds"] = json!(seconds);
                if policy.is_some() {
                    view["witnesses"] = json!(witnesses);
                }
                if let Some(r) = &reconciliation {
                    view["reconciliation"] = serde_json::to_value(r)?;
                    view["ok"] = json!(r.ok(&options(&args)));
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
                if let Some(r) = &reconciliation {
                    print_reconciliation(r, &options(&args));
                }
            }
            Ok(match &reconciliation {
                Some(r) if !r.ok(&options(&args)) => ExitCode::from(2),
                _ => ExitCode::SUCCESS,
            })
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

fn options(args: &AuditArgs) -> ReconcileOptions {
    ReconcileOptions {
        grace_ms: args.grace.as_millis() as u64,
        collected: args.collected,
    }
}

/// Reconciles the listing with the (already audited) export's entries.
fn reconcile(args: &AuditArgs, listing: &Path) -> anyhow::Result<Reconciliation> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(listing)
        .with_context(|| format!("cannot read the listing {}", listing.display()))?;
    let listed = parse_listing(&text).with_context(|| format!("listing {}", listing.display()))?;
    let acknowledged: Vec<String> = match &args.acknowledged {
        None => Vec::new(),
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
    };
    let entries_file = args.dir.join("entries");
    let file = std::fs::File::open(&entries_file)
        .with_context(|| format!("cannot open {}", entries_file.display()))?;
    let mut entries = Vec::new();
    for (index, bytes) in EntryReader::new(std::io::BufReader::new(file)).enumerate() {
        entries.push((index as u64, bytes?));
    }
    Ok(custodian_server::retention::reconcile::reconcile(
        entries,
        &listed,
        &acknowledged,
        &options(args),
    )?)
}

fn print_findings(what: &str, findings: &[Finding]) {
    if findings.is_empty() {
        return;
    }
    println!("  {what}: {}", findings.len());
    for f in findings.iter().take(20) {
        println!("    {} {}", f.digest, f.detail);
    }
    if findings.len() > 20 {
        println!("    … (--json lists them all)");
    }
}

fn print_reconciliation(r: &Reconciliation, options: &ReconcileOptions) {
    let ok = r.ok(options);
    println!(
        "reconciliation {}: {} in custody against the ledger as of {} ({} judged)",
        if ok { "passed" } else { "FAILED" },
        counted(r.present, "blob", "blobs"),
        super::time_text(r.listing_started_ms),
        counted(r.entries_judged, "entry", "entries"),
    );
    let kept: Vec<String> = r.kept_by.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "  kept by: {}",
        if kept.is_empty() {
            "nothing".to_string()
        } else {
            kept.join(", ")
        }
    );
    println!(
        "  absent and recorded deleted: {}",
        r.absent_tombstoned + r.forced_deletions.len() as u64
    );
    print_findings(
        "MISSING (kept by the ledger, not in custody, no deletion recorded)",
        &r.missing,
    );
    print_findings(
        "GONE OFF THE RECORD (named or acknowledged, not in custody, no deletion recorded)",
        &r.unrecorded,
    );
    print_findings(
        "forced deletions of kept blobs, on the record",
        &r.forced_deletions,
    );
    let collectable = if options.collected {
        "NOT COLLECTED (nothing keeps it, yet the collection left it)"
    } else {
        "collectable (nothing keeps it; the next collection deletes it)"
    };
    print_findings(collectable, &r.collectable);
    print_findings(
        "recorded deletions not yet carried out",
        &r.pending_deletions,
    );
    if r.sealed_unread > 0 {
        println!(
            "  {} sealed: the blobs their events name were not judged (their bodies count as referenced)",
            counted(r.sealed_unread, "entry is", "entries are")
        );
    }
}
