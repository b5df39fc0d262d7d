//! `custodian attester | attest | scan | badge | report | verify`: evidence and badges.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use custodian_core::attestation::{RunPredicate, RunStatement};
use custodian_core::badge::Badge;
use custodian_core::bundle;
use custodian_proto::evidence::v1 as pb;
use custodian_proto::evidence::v1::evidence_client::EvidenceClient;
use custodian_proto::registry::v1 as rpb;
use custodian_proto::registry::v1::registry_client::RegistryClient;

use crate::blob::{Conn, ServerArg, channel, status_error};
use crate::pack::{load_signer, load_verifier};
use crate::publish::split_spec;

async fn client(server: &ServerArg) -> anyhow::Result<EvidenceClient<Conn>> {
    Ok(EvidenceClient::new(channel(server).await?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// Attester key commands.
#[derive(Subcommand)]
pub enum AttesterCommand {
    /// Register an attester verifier key for your token's namespaces (needs the attest scope)
    Register {
        /// The verifier key: a .pub file from `custodian key generate`, or the key text
        key: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

/// Options of `custodian attest`.
#[derive(Args)]
pub struct AttestArgs {
    /// The run (a JSON object) or runs (a JSON array), each with package, version, eval_id,
    /// model, passed, metrics, data_pack_sha256, reproducibility_context, started_at,
    /// finished_at and runner {id, version}
    run: PathBuf,
    /// The attester's private key
    #[arg(long, env = "CUSTODIAN_ATTESTER_KEY", value_name = "KEY_FILE")]
    key: PathBuf,
    /// Print the receipts as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// Scan commands.
#[derive(Subcommand)]
pub enum ScanCommand {
    /// Record a scan verdict over a version's content root (needs the attest scope)
    Record {
        /// NAME@VERSION
        spec: String,
        /// clean, flagged or error
        #[arg(long)]
        verdict: String,
        /// The scanner's identity
        #[arg(long)]
        scanner: String,
        /// A JSON file with the findings (an array)
        #[arg(long, value_name = "FILE")]
        findings: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArg,
    },
}

/// Options of `custodian badge`.
#[derive(Args)]
pub struct BadgeArgs {
    /// NAME@VERSION
    spec: String,
    /// Write the badge bundle (for `custodian verify`) to this file
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print the badge as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// Options of `custodian report`.
#[derive(Args)]
pub struct ReportArgs {
    /// NAME@VERSION
    spec: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// Options of `custodian verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// The badge bundle file
    bundle: PathBuf,
    /// The log's verifier key (from `custodian log key`, obtained independently)
    #[arg(long, value_name = "VKEY")]
    key: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Registers an attester key.
pub async fn attester(command: AttesterCommand) -> anyhow::Result<ExitCode> {
    let AttesterCommand::Register { key, server } = command;
    let key = load_verifier(&key)?;
    let response = client(&server)
        .await?
        .register_attester(pb::RegisterAttesterRequest {
            verifier_key: key.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "{} attester {} for {} (ledger entry {})",
        if response.already_registered {
            "already registered:"
        } else {
            "registered"
        },
        key.handle(),
        response.namespaces.join(", "),
        response.receipt.map(|r| r.log_index).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// Signs and submits runs.
pub async fn attest(args: AttestArgs) -> anyhow::Result<ExitCode> {
    let key = load_signer(&args.key)?;
    let text =
        std::fs::read(&args.run).with_context(|| format!("reading {}", args.run.display()))?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not JSON", args.run.display()))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        other => vec![other],
    };
    let mut registry = RegistryClient::new(channel(&args.server).await?);
    let mut manifests = std::collections::HashMap::new();
    let mut envelopes = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let predicate: RunPredicate = serde_json::from_value(item)
            .with_context(|| format!("run {i} of {}", args.run.display()))?;
        let spec = (predicate.package.clone(), predicate.version.clone());
        let manifest = match manifests.get(&spec) {
            Some(m) => m,
            None => {
                let version = registry
                    .get_version(rpb::GetVersionRequest {
                        name: spec.0.clone(),
                        version: spec.1.clone(),
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                let digest: custodian_core::Digest = version.manifest_digest.parse()?;
                manifests.entry(spec).or_insert(digest)
            }
        };
        let statement =
            RunStatement::new(*manifest, predicate).with_context(|| format!("run {i}"))?;
        envelopes.push(statement.sign(&key).to_json());
    }
    let mut evidence = client(&args.server).await?;
    let mut failures = 0;
    let mut lines = Vec::new();
    if envelopes.len() == 1 {
        let response = evidence
            .attest_run(pb::AttestRunRequest {
                envelope: envelopes.remove(0),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        let index = response.receipt.map(|r| r.log_index).unwrap_or_default();
        lines.push(serde_json::json!({"ledger_index": index}));
        if !args.json {
            println!("attested: ledger entry {index}");
        }
    } else {
        let response = evidence
            .attest_runs(pb::AttestRunsRequest {
                runs: envelopes
                    .into_iter()
                    .map(|envelope| pb::AttestRunRequest { envelope })
                    .collect(),
                compact: true,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        for (i, result) in response.results.into_iter().enumerate() {
            match result.error_code {
                0 => {
                    lines.push(serde_json::json!({"run": i, "ledger_index": result.ledger_index}));
                    if !args.json {
                        println!("run {i}: attested, ledger entry {}", result.ledger_index);
                    }
                }
                _ => {
                    failures += 1;
                    lines.push(serde_json::json!({"run": i, "error": result.error_message}));
                    eprintln!("run {i}: refused: {}", result.error_message);
                }
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Records a scan.
pub async fn scan(command: ScanCommand) -> anyhow::Result<ExitCode> {
    let ScanCommand::Record {
        spec,
        verdict,
        scanner,
        findings,
        server,
    } = command;
    let (name, version) = split_spec(&spec)?;
    let record = RegistryClient::new(channel(&server).await?)
        .get_version(rpb::GetVersionRequest {
            name: name.clone(),
            version: version.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let findings_json = match findings {
        Some(path) => {
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?
        }
        None => "[]".into(),
    };
    let response = client(&server)
        .await?
        .record_scan(pb::RecordScanRequest {
            name,
            version,
            scanner,
            verdict: verdict.clone(),
            root: record.root,
            findings_json,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "recorded scan of {spec}: {verdict} (ledger entry {})",
        response.receipt.map(|r| r.log_index).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

fn print_badge(badge: &Badge) {
    println!(
        "{}@{}: {} ({})",
        badge.name,
        badge.version,
        badge.state.as_str().to_uppercase(),
        badge.policy
    );
    if badge.reasons.is_empty() {
        println!(
            "  every eval passed against every model, the content scanned clean, the signature and hashes hold, the license is declared"
        );
    }
    for r in &badge.reasons {
        let entry = r.entry.map(|e| format!(" [entry {e}]")).unwrap_or_default();
        println!(
            "  {:<8} {:<18} {}{entry}",
            r.state.as_str(),
            r.code,
            r.message
        );
    }
    println!("  evidence: ledger entries {:?}", badge.evidence);
}

/// Shows a badge (and writes its bundle).
pub async fn badge(args: BadgeArgs) -> anyhow::Result<ExitCode> {
    let (name, version) = split_spec(&args.spec)?;
    let response = client(&args.server)
        .await?
        .get_badge(pb::GetBadgeRequest { name, version })
        .await
        .map_err(status_error)?
        .into_inner();
    let badge: Badge = serde_json::from_str(&response.badge_json).context("the daemon's badge")?;
    if let Some(path) = &args.output {
        std::fs::write(path, &response.bundle_json)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&badge)?);
    } else {
        print_badge(&badge);
        if let Some(path) = &args.output {
            println!(
                "  bundle: {} (check it offline: custodian verify {} --key LOG_KEY)",
                path.display(),
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the liveness report.
pub async fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let (name, version) = split_spec(&args.spec)?;
    let response = client(&args.server)
        .await?
        .get_report(pb::GetReportRequest {
            name: name.clone(),
            version: version.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if args.json {
        let rows: Vec<serde_json::Value> = response
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "eval_id": r.eval_id, "model": r.model, "has_run": r.has_run, "passed": r.passed,
                    "ledger_index": r.ledger_index, "integrated_ms": r.integrated_ms, "age_ms": r.age_ms,
                    "data_pack_sha256": r.data_pack_sha256, "context_sha256": r.context_sha256, "runner": r.runner,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"name": name, "version": version, "badge": response.badge_state, "rows": rows})
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{name}@{version}: badge {}", response.badge_state);
    println!(
        "{:<22} {:<20} {:<7} {:>6} {:>9}  {:<20} context",
        "EVAL", "MODEL", "RESULT", "ENTRY", "AGE", "DATA PACK"
    );
    for r in &response.rows {
        if !r.has_run {
            println!("{:<22} {:<20} {:<7}", r.eval_id, r.model, "none");
            continue;
        }
        let age =
            humantime::format_duration(std::time::Duration::from_secs(r.age_ms / 1000)).to_string();
        let short = |s: &str| s.get(..19).unwrap_or(s).to_string();
        println!(
            "{:<22} {:<20} {:<7} {:>6} {:>9}  {:<20} {}",
            r.eval_id,
            r.model,
            if r.passed { "pass" } else { "FAIL" },
            r.ledger_index,
            if age.is_empty() { "0s".into() } else { age },
            if r.data_pack_sha256.is_empty() {
                "-".into()
            } else {
                short(&r.data_pack_sha256)
            },
            short(&r.context_sha256)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Verifies a bundle offline.
pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let key = load_verifier(&args.key)?;
    let bytes = std::fs::read(&args.bundle)
        .with_context(|| format!("reading {}", args.bundle.display()))?;
    match bundle::verify(&bytes, &key) {
        Ok(verified) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "ok": true, "badge": verified.badge, "tree_size": verified.tree_size, "entries": verified.entries,
                    }))?
                );
            } else {
                println!(
                    "bundle verifies: {} entries proven in the log {} at size {}, the badge recomputed under {}",
                    verified.entries,
                    key.name(),
                    verified.tree_size,
                    verified.badge.policy
                );
                print_badge(&verified.badge);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"ok": false, "error": err.to_string()})
                    )?
                );
            } else {
                eprintln!("bundle does NOT verify: {err}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
