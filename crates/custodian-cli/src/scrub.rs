//! `custodian scrub`: read back every blob and the whole log of a stopped daemon's data directory;
//! report, and quarantine, what is damaged.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use custodian_server::ServerConfig;
use custodian_server::scrub::{ScrubOptions, ScrubReport, scrub_blobs, scrub_log};
use indicatif::{ProgressBar, ProgressStyle};

/// The long help of `custodian scrub`.
pub const LONG_ABOUT: &str = "Read back everything in custody and the whole provenance log, \
and report what no longer matches what was verified when it was written.\n\n\
Blobs: each one is read in full (every block against its CRC32C) and rehashed with SHA-256 and \
BLAKE3 against its recorded digests and size. A damaged blob is copied, raw, into the \
quarantine folder (DATA_DIR/quarantine unless --quarantine-dir) with a JSON note saying what \
failed, and taken out of custody: clients then see it as missing (`blob missing` lists it), and \
the next upload of the same bytes heals it. --report-only changes nothing.\n\n\
The log: every entry is hashed and compared with the leaf hash the signed tree records, every \
stored tree hash is recomputed from the leaves, and every checkpoint's signature and root are \
checked. Log entries cannot be moved aside (the tree is signed and append-only): damaged ones \
are listed in the quarantine folder's ledger.json with the leaf hash a restored entry must \
have. While any entry is damaged the daemon withholds badges.\n\n\
Run it on a stopped daemon's data directory (RocksDB allows one process). With --ledger \
postgres://… it reads the shared ledger and blob index in PostgreSQL (and the bucket --storage \
names), and may run while the daemons do. Exit status: 0 \
when everything is intact, 2 when anything is damaged, 1 when the scrub itself failed.";

/// Options of `custodian scrub`.
#[derive(Args)]
pub struct ScrubArgs {
    #[command(flatten)]
    store: crate::args::StoreArgs,

    /// Where damaged blobs are copied and damaged entries listed (default DATA_DIR/quarantine)
    #[arg(long, value_name = "DIR")]
    quarantine_dir: Option<PathBuf>,

    /// Only report: take nothing out of custody, write nothing
    #[arg(long)]
    report_only: bool,

    /// Skip the blobs; check the log only
    #[arg(long)]
    log_only: bool,

    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

/// Runs the scrub and prints the report.
pub async fn run(args: ScrubArgs) -> anyhow::Result<ExitCode> {
    if !args.store.data_dir.is_dir() {
        anyhow::bail!(
            "{} is not a directory; pass the daemon's --data-dir",
            args.store.data_dir.display()
        );
    }
    let mut config = ServerConfig::new(&args.store.data_dir);
    config.storage = args.store.storage.clone();
    config.storage_options = args.store.storage_options.clone();
    config.ledger = args.store.ledger.clone();
    config.beside_daemons = config.ledger.is_some();
    let options = ScrubOptions {
        quarantine: (!args.report_only).then(|| {
            args.quarantine_dir
                .clone()
                .unwrap_or_else(|| args.store.data_dir.join("quarantine"))
        }),
    };
    let mut report = ScrubReport::default();
    let bar = spinner(args.json);

    // The log first: it is small next to the blobs, and a damaged log is the graver news.
    let ledger_dir = args.store.data_dir.join("ledger");
    let has_log = ledger_dir.is_dir() || config.ledger.is_some();
    let key_file = args.store.data_dir.join(custodian_server::KEY_FILE);
    if has_log && !key_file.is_file() {
        // Opening the ledger would generate a new key; a scrub must change nothing of the sort.
        report.log_problems.push(format!(
            "{} is missing, so the checkpoints cannot be checked; restore the log key from its backup",
            key_file.display()
        ));
    } else if has_log {
        bar.set_message("log");
        match custodian_server::open_ledger(&config).await {
            Ok(ledger) => {
                let (options, bar2) = (options.clone(), bar.clone());
                report = tokio::task::spawn_blocking(move || {
                    scrub_log(&ledger, &options, &mut report, &|n| bar2.inc(n)).map(|()| report)
                })
                .await?
                .context("reading the log")?;
            }
            Err(err) if err.to_string().contains("LOCK") => {
                anyhow::bail!(
                    "{} is in use ({err}); stop the daemon first: RocksDB allows one process",
                    ledger_dir.display()
                )
            }
            Err(err) => report.log_problems.push(format!(
                "the log does not open ({err}); `custodian log export --data-dir` still exports it for `custodian audit`, which names the first damaged entry"
            )),
        }
    }
    if !args.log_only {
        bar.set_message("blobs");
        bar.set_position(0);
        let store = custodian_server::open_store(&config).await.with_context(|| {
            format!(
                "opening storage \"{}\" in {} (stop the daemon first: RocksDB allows one process)",
                args.store.storage,
                args.store.data_dir.display()
            )
        })?;
        scrub_blobs(&store, &options, &mut report, &|n| bar.inc(n))
            .await
            .context("walking the blobs")?;
    }
    bar.finish_and_clear();

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, args.log_only);
    }
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn spinner(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} scrubbing {msg}: {pos} read")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

fn print_report(report: &ScrubReport, log_only: bool) {
    println!(
        "log: {} entries and {} checkpoints checked",
        report.entries_checked, report.checkpoints_checked
    );
    for entry in &report.damaged_entries {
        println!(
            "  DAMAGED entry {}: its bytes hash to {}, the signed tree records {}",
            entry.index, entry.actual_leaf_hash, entry.recorded_leaf_hash
        );
    }
    for problem in &report.log_problems {
        println!("  DAMAGED {problem}");
    }
    if !log_only {
        println!(
            "blobs: {} checked, {} bytes read back",
            report.blobs_checked, report.bytes_checked
        );
        for blob in &report.damaged_blobs {
            let action = if blob.quarantined {
                "quarantined"
            } else {
                "left in place"
            };
            println!("  DAMAGED {}: {} ({action})", blob.digest, blob.detail);
        }
        if report.pending_uploads > 0 {
            println!(
                "  {} unfinished uploads were left over",
                report.pending_uploads
            );
        }
    }
    if let Some(dir) = &report.quarantine {
        println!("quarantine: {}", dir.display());
    }
    if report.clean() {
        println!("scrub: everything is intact");
    } else {
        println!(
            "scrub: DAMAGE FOUND ({} blobs, {} log entries, {} other log problems)",
            report.damaged_blobs.len(),
            report.damaged_entries.len(),
            report.log_problems.len()
        );
    }
}
