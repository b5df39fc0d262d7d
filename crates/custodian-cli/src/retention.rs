//! `custodian pin|unpin|hold|release`, `custodian gc`, `custodian blob why` and `custodian blob
//! delete`: provable retention from the command line. Every change is a ledger entry the daemon
//! appends; these commands only ask and print.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use custodian_core::Digest;
use custodian_proto::cas::v1 as pb;
use serde_json::json;

use crate::client::{ServerArg, status_error};

/// `pin`: keep blobs until a time, or until unpinned.
#[derive(Args)]
pub struct PinArgs {
    /// A digest (sha256:… or blake3:…) or NAME@VERSION (its files and hosted data pack)
    subject: String,
    /// How long the pin keeps them, e.g. 30d (default: until unpinned)
    #[arg(long, value_parser = humantime::parse_duration)]
    expires: Option<Duration>,
    /// Why (recorded in the ledger)
    #[arg(long, default_value = "")]
    reason: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// `unpin`, `hold` and `release`: a subject and a reason.
#[derive(Args)]
pub struct SubjectArgs {
    /// A digest (sha256:… or blake3:…) or NAME@VERSION
    subject: String,
    /// Why (recorded in the ledger; required for hold and release)
    #[arg(long, default_value = "")]
    reason: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// `gc`: collect garbage.
#[derive(Args)]
pub struct GcArgs {
    /// Judge only: print what would be deleted, delete and record nothing
    #[arg(long)]
    dry_run: bool,
    /// Keep blobs uploaded or acknowledged within this long, e.g. 7d (default: the daemon's
    /// serve --gc-grace)
    #[arg(long, value_parser = humantime::parse_duration)]
    grace: Option<Duration>,
    /// Print JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// `blob list`.
#[derive(Args)]
pub struct ListArgs {
    /// Start after this SHA-256 digest
    #[arg(long, value_name = "DIGEST")]
    after: Option<Digest>,
    /// At most this many blobs (default: all)
    #[arg(long, default_value_t = 0)]
    limit: u64,
    /// Print one JSON object a line (sha256, blake3, size, created_ms, acknowledged_ms,
    /// oci_linked_in, listing_started_ms)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// `blob why`.
#[derive(Args)]
pub struct WhyArgs {
    /// The blob's digest (sha256:… or blake3:…)
    digest: Digest,
    /// Judge the grace period with this instead of the daemon's
    #[arg(long, value_parser = humantime::parse_duration)]
    grace: Option<Duration>,
    /// Print JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// `blob delete`.
#[derive(Args)]
pub struct DeleteArgs {
    /// The blob's digest (sha256:… or blake3:…)
    digest: Digest,
    /// Why (required; recorded in the ledger)
    #[arg(long)]
    reason: String,
    /// Delete even if a reference or pin keeps it (never under a legal hold)
    #[arg(long)]
    force: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// Runs `pin`, `unpin`, `hold` or `release`.
pub async fn retain(
    action: &str,
    subject: &str,
    reason: &str,
    expires: Option<Duration>,
    json: bool,
    server: &ServerArg,
) -> anyhow::Result<ExitCode> {
    let answer = server
        .connect()
        .await?
        .store()
        .retain(pb::RetainRequest {
            action: action.to_string(),
            subject: subject.to_string(),
            reason: reason.to_string(),
            expires_in_seconds: expires.map_or(0, |d| d.as_secs().max(1)),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "action": action,
                "subject": subject,
                "ledger_index": answer.ledger_index,
                "digests": answer.digests,
            }))?
        );
    } else {
        let verb = match action {
            "pin" => "pinned",
            "unpin" => "unpinned",
            "hold" => "placed a legal hold on",
            _ => "released the legal hold on",
        };
        println!(
            "{verb} {subject}: {} blob(s) (ledger entry {})",
            answer.digests.len(),
            answer.ledger_index
        );
        for digest in &answer.digests {
            println!("  {digest}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `pin`.
pub async fn pin(args: PinArgs) -> anyhow::Result<ExitCode> {
    retain(
        "pin",
        &args.subject,
        &args.reason,
        args.expires,
        args.json,
        &args.server,
    )
    .await
}

/// Runs `unpin`, `hold` or `release`.
pub async fn subject(action: &str, args: SubjectArgs) -> anyhow::Result<ExitCode> {
    retain(
        action,
        &args.subject,
        &args.reason,
        None,
        args.json,
        &args.server,
    )
    .await
}

fn report_json(report: &pb::CollectGarbageResponse) -> serde_json::Value {
    json!({
        "dry_run": report.dry_run,
        "examined": report.examined,
        "kept": report.kept,
        "in_grace": report.in_grace,
        "spared": report.spared,
        "deleted": report.deleted.iter().map(|d| json!({"digest": d.digest, "size": d.size})).collect::<Vec<_>>(),
        "deleted_count": report.deleted_count,
        "deleted_bytes": report.deleted_bytes,
        "ledger_indexes": report.ledger_indexes,
        "finished_earlier": report.finished_earlier,
    })
}

fn print_report(report: &pb::CollectGarbageResponse) {
    let listed = report.deleted.len() as u64;
    for blob in &report.deleted {
        println!(
            "{} {} ({} bytes)",
            if report.dry_run {
                "would delete"
            } else {
                "deleted"
            },
            blob.digest,
            blob.size
        );
    }
    if report.deleted_count > listed {
        println!(
            "… and {} more (the BlobsDeleted ledger entries name every one)",
            report.deleted_count - listed
        );
    }
    println!(
        "{} blob(s) examined: {} kept (hold, reference, OCI or pin), {} in grace, {} {} ({} bytes){}{}",
        report.examined,
        report.kept,
        report.in_grace,
        report.deleted_count,
        if report.dry_run {
            "would be deleted"
        } else {
            "deleted"
        },
        report.deleted_bytes,
        if report.ledger_indexes.is_empty() {
            String::new()
        } else {
            format!(
                "; recorded in ledger entries {}",
                report
                    .ledger_indexes
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        if report.spared > 0 {
            format!("; {} spared at the second look", report.spared)
        } else {
            String::new()
        }
    );
}

/// Prints a collection's (or a deletion's) report, as text or JSON.
fn show(report: &pb::CollectGarbageResponse, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(&report_json(report))?);
    } else {
        print_report(report);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `gc`.
pub async fn gc(args: GcArgs) -> anyhow::Result<ExitCode> {
    let report = args
        .server
        .connect()
        .await?
        .store()
        .collect_garbage(pb::CollectGarbageRequest {
            grace_seconds: args.grace.map(|d| d.as_secs()),
            dry_run: args.dry_run,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    show(&report, args.json)
}

/// Runs `blob delete`.
pub async fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let report = args
        .server
        .connect()
        .await?
        .store()
        .delete_blob(pb::DeleteBlobRequest {
            digest: args.digest.to_string(),
            reason: args.reason.clone(),
            force: args.force,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    show(&report, args.json)
}

/// Runs `blob why`; exits 1 when the blob is not in custody.
pub async fn why(args: WhyArgs) -> anyhow::Result<ExitCode> {
    let answer = args
        .server
        .connect()
        .await?
        .store()
        .why(pb::WhyRequest {
            digest: args.digest.to_string(),
            grace_seconds: args.grace.map(|d| d.as_secs()),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let deleted = answer.deleted.as_ref().map(|t| {
        json!({
            "ledger_index": t.ledger_index,
            "deleted_at": t.deleted_at.as_ref().map(|ts| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(ts.seconds.max(0) as u64)).to_string()),
            "reason": t.reason,
            "policy": t.policy,
            "size": t.size,
        })
    });
    let present = answer.blob.is_some();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "digest": args.digest.to_string(),
                "present": present,
                "size": answer.blob.as_ref().map(|b| b.size),
                "kept_by": answer.kept_by,
                "collectable": present && answer.kept_by.is_empty(),
                "deleted": deleted,
            }))?
        );
    } else if let Some(blob) = &answer.blob {
        println!("{} is in custody ({} bytes)", blob.sha256, blob.size);
        if answer.kept_by.is_empty() {
            println!("  nothing keeps it: the next garbage collection deletes it");
        }
        for keeper in &answer.kept_by {
            println!("  kept: {keeper}");
        }
        if let Some(d) = &deleted {
            println!(
                "  (an earlier copy was deleted at ledger entry {}: {})",
                d["ledger_index"],
                d["reason"].as_str().unwrap_or_default()
            );
        }
    } else if let Some(d) = &deleted {
        println!(
            "{} is gone: deleted at ledger entry {} on {} ({}; policy: {})",
            args.digest,
            d["ledger_index"],
            d["deleted_at"].as_str().unwrap_or("?"),
            d["reason"].as_str().unwrap_or_default(),
            d["policy"].as_str().unwrap_or_default()
        );
    } else {
        println!("{} is not in custody and was never deleted", args.digest);
    }
    Ok(if present {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A protobuf timestamp's seconds and nanoseconds as ms since the Unix epoch.
macro_rules! timestamp_ms {
    ($ts:expr) => {
        $ts.as_ref()
            .map(|t| t.seconds.max(0) as u64 * 1000 + (t.nanos.max(0) as u64) / 1_000_000)
    };
}

/// Runs `blob list`: streams the listing to standard output as it arrives.
pub async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    use futures::StreamExt as _;
    use std::io::Write as _;
    let mut stream = args
        .server
        .connect()
        .await?
        .store()
        .list_blobs(pb::ListBlobsRequest {
            after: args.after.map(|d| d.to_string()).unwrap_or_default(),
            limit: args.limit,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut count, mut bytes) = (0u64, 0u64);
    while let Some(message) = stream.next().await {
        for listed in message.map_err(status_error)?.blobs {
            let Some(blob) = listed.blob else { continue };
            count += 1;
            bytes += blob.size;
            let created_ms = timestamp_ms!(blob.created_at).unwrap_or(0);
            if args.json {
                let line = custodian_server::retention::reconcile::ListingLine {
                    sha256: blob.sha256,
                    blake3: blob.blake3,
                    size: blob.size,
                    created_ms,
                    acknowledged_ms: timestamp_ms!(listed.acknowledged_at),
                    oci_linked_in: listed.oci_linked_in,
                    listing_started_ms: timestamp_ms!(listed.listing_started_at).unwrap_or(0),
                };
                writeln!(out, "{}", serde_json::to_string(&line)?)?;
            } else {
                writeln!(
                    out,
                    "{} {:>12} {}",
                    blob.sha256,
                    blob.size,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_millis(created_ms)
                    )
                )?;
            }
        }
    }
    out.flush()?;
    if !args.json {
        eprintln!("{count} blobs, {bytes} bytes in custody");
    }
    Ok(ExitCode::SUCCESS)
}
