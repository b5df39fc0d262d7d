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

use crate::client::{ServerArg, status_error};
use crate::keys::{load_signer, load_verifier};
use custodian_client::Conn;

async fn client(server: &ServerArg) -> anyhow::Result<EvidenceClient<Conn>> {
    Ok(server.connect().await?.evidence())
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
    /// model, passed, metrics ({"accuracy": 0.93} or {"accuracy": {"value": 0.93, "threshold":
    /// ">= 0.9"}}), data_pack_sha256, reproducibility_context (an object; with the EvalSpec's
    /// seed as "seed"), started_at, finished_at (RFC 3339) and runner {id, version}; the full
    /// JSON Schema is printed by --schema
    #[arg(required_unless_present = "schema")]
    run: Option<PathBuf>,
    /// The attester's private key
    #[arg(
        long,
        env = "CUSTODIAN_ATTESTER_KEY",
        value_name = "KEY_FILE",
        required_unless_present = "schema"
    )]
    key: Option<PathBuf>,
    /// Print the JSON Schema (draft 2020-12) of a run file and exit
    #[arg(long)]
    schema: bool,
    /// Print the receipts as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// Options of `custodian scan`.
#[derive(Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Exit status: 0 clean, 2 flagged, 3 the scan ended in error, 1 the command failed.\n\n\
Examples:\n  \
custodian scan pacman-builder@0.2.1          # rescan on the daemon, record the verdicts\n  \
custodian scan local examples/pacman-builder # offline, same rules, nothing recorded\n  \
custodian scan local levels.tar.gz --data    # a data pack file\n  \
custodian scan record pacman-builder@0.2.1 --scanner acme-av --verdict clean"
)]
pub struct ScanArgs {
    #[command(subcommand)]
    command: Option<ScanCommand>,
    /// NAME@VERSION: rescan it now with the daemon's built-in scanner (the package and its
    /// hosted data pack), record the verdicts and queue the external scanners (needs the scan
    /// or publish scope)
    spec: Option<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// Scan subcommands.
#[derive(Subcommand)]
pub enum ScanCommand {
    /// Scan a package folder or a data-pack file here, offline, with the built-in rules
    Local {
        /// A package folder (content and prompt rules) or a file (content rules)
        path: PathBuf,
        /// Treat a file as a data pack: every byte is data, whatever its name says
        #[arg(long)]
        data: bool,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Record a verdict from your own scanner (needs the scan or attest scope)
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
        /// Record it over the version's hosted data pack instead of its files
        #[arg(long)]
        data_pack: bool,
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
    /// What --output writes: `bundle` (everything `custodian verify` checks), or `vsa`: the
    /// badge alone as a SLSA Verification Summary Attestation (a DSSE envelope over an in-toto
    /// Statement, signed with the log's key) for policy engines
    #[arg(long, default_value = "bundle", value_parser = ["bundle", "vsa"], requires = "output")]
    format: String,
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
    /// Also require the bundle's checkpoint to carry a quorum of witness cosignatures, as this
    /// policy file defines it
    #[arg(long, value_name = "FILE")]
    witness_policy: Option<std::path::PathBuf>,
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
    if args.schema {
        println!("{}", custodian_core::attestation::RUNS_SCHEMA.trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(run), Some(key)) = (&args.run, &args.key) else {
        anyhow::bail!("give the run file and --key (or --schema)");
    };
    let key = load_signer(key)?;
    let text = std::fs::read(run).with_context(|| format!("reading {}", run.display()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", run.display()))?;
    if let Err(errors) = custodian_core::attestation::check_runs_file(&value) {
        for e in &errors {
            eprintln!("error: {}: {e}", run.display());
        }
        anyhow::bail!(
            "{} does not match the run schema ({} problem(s) above; `custodian attest --schema` prints it)",
            run.display(),
            errors.len()
        );
    }
    let items = match value {
        serde_json::Value::Array(items) => items,
        other => vec![other],
    };
    let mut registry = args.server.connect().await?.registry();
    let mut manifests = std::collections::HashMap::new();
    let mut envelopes = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let predicate: RunPredicate = serde_path_to_error::deserialize(item).map_err(|e| {
            anyhow::anyhow!(
                "run {i} of {}: field {}: {} (see `custodian attest --schema`)",
                run.display(),
                e.path(),
                e.inner()
            )
        })?;
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
/// The exit status of a verdict: 0 clean, 2 flagged, 3 error.
fn verdict_code(verdict: &str) -> ExitCode {
    match verdict {
        "clean" => ExitCode::SUCCESS,
        "flagged" => ExitCode::from(2),
        _ => ExitCode::from(3),
    }
}

/// Rescans, scans locally, or records an external verdict.
pub async fn scan(args: ScanArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(ScanCommand::Local { path, data, json }) => {
            tokio::task::spawn_blocking(move || scan_local(&path, data, json)).await?
        }
        Some(ScanCommand::Record {
            spec,
            verdict,
            scanner,
            findings,
            data_pack,
            server,
        }) => record_scan(spec, verdict, scanner, findings, data_pack, server).await,
        None => {
            let Some(spec) = args.spec else {
                anyhow::bail!(
                    "give NAME@VERSION to rescan, or a subcommand (local, record); see custodian scan --help"
                );
            };
            rescan(&spec, args.json, &args.server).await
        }
    }
}

async fn rescan(spec: &str, json: bool, server: &ServerArg) -> anyhow::Result<ExitCode> {
    let crate::args::PackageSpec { name, version } = spec.parse()?;
    let response = client(server)
        .await?
        .scan_version(pb::ScanVersionRequest { name, version })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut worst = custodian_scan::Verdict::Clean;
    let mut out = Vec::new();
    for r in &response.results {
        let findings: Vec<custodian_scan::Finding> =
            serde_json::from_str(&r.findings_json).unwrap_or_default();
        let verdict =
            custodian_scan::Verdict::parse(&r.verdict).unwrap_or(custodian_scan::Verdict::Error);
        worst = worst.worst(verdict);
        let index = r.receipt.as_ref().map(|x| x.log_index).unwrap_or_default();
        if json {
            out.push(serde_json::json!({
                "target": if r.target.is_empty() { "package" } else { r.target.as_str() },
                "scanner": r.scanner, "verdict": r.verdict, "root": r.root,
                "findings": findings, "omitted": r.omitted, "ledger_index": index,
            }));
        } else {
            println!(
                "{spec} {}: {} by {} (root {}, ledger entry {index})",
                if r.target.is_empty() {
                    "package"
                } else {
                    "data pack"
                },
                r.verdict.to_uppercase(),
                r.scanner,
                r.root
            );
            crate::output::print_findings(&findings, r.omitted, 2, custodian_scan::Severity::Info);
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"results": out, "queued": response.queued})
            )?
        );
    } else if !response.queued.is_empty() {
        println!("queued for: {}", response.queued.join(", "));
    }
    Ok(verdict_code(worst.as_str()))
}

fn scan_local(path: &std::path::Path, data: bool, json: bool) -> anyhow::Result<ExitCode> {
    let limits = custodian_scan::Limits::default();
    let report = if path.is_dir() {
        crate::pack::scan_folder(&crate::pack::list_files(path)?)?
    } else {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("file")
            .to_string();
        let mut file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        if data {
            custodian_scan::package::scan_blob(&name, &mut file, &limits)
        } else {
            // A single file is judged as a package file would be: secrets included.
            let mut scanner = custodian_scan::content::Scanner::new(&limits).with_secrets(true);
            let outcome = scanner.scan(&name, false, &mut file);
            let mut report = scanner.finish();
            if let Err(e) = outcome {
                report.error = Some(e.to_string());
            }
            report
        }
    };
    let verdict = report.verdict();
    if json {
        let mut value = serde_json::to_value(&report)?;
        value["verdict"] = verdict.as_str().into();
        value["scanner"] = custodian_scan::SCANNER.into();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "{}: {} ({} files, {} bytes read, {})",
            path.display(),
            verdict.as_str().to_uppercase(),
            report.files,
            report.bytes,
            custodian_scan::SCANNER
        );
        if let Some(error) = &report.error {
            println!("  error: {error}");
        }
        crate::output::print_findings(
            &report.findings,
            report.omitted,
            2,
            custodian_scan::Severity::Info,
        );
    }
    Ok(verdict_code(verdict.as_str()))
}

async fn record_scan(
    spec: String,
    verdict: String,
    scanner: String,
    findings: Option<PathBuf>,
    data_pack: bool,
    server: ServerArg,
) -> anyhow::Result<ExitCode> {
    let crate::args::PackageSpec { name, version } = spec.parse()?;
    let record = server
        .connect()
        .await?
        .registry()
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
    let root = if data_pack {
        record
            .data_pack
            .as_ref()
            .filter(|p| p.mode == "hosted")
            .map(|p| p.sha256.clone())
            .with_context(|| format!("{spec} has no hosted data pack"))?
    } else {
        record.root
    };
    let response = client(&server)
        .await?
        .record_scan(pb::RecordScanRequest {
            name,
            version,
            scanner,
            verdict: verdict.clone(),
            root,
            findings_json,
            target: if data_pack {
                "data_pack".into()
            } else {
                String::new()
            },
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
            "  every eval passed{} against every model, the content scanned clean, the signature and hashes hold, the license is declared",
            if badge.policy == custodian_core::badge::POLICY {
                " its pre-registered bar"
            } else {
                ""
            }
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

/// The `EvalPreregistered` entries a bundle carries (sealed ones opened with the bundle's
/// bodies), with their ledger indexes.
fn bundle_preregistrations(
    bundle: &bundle::Bundle,
) -> Vec<(u64, custodian_core::registry::EvalPreregistered)> {
    use base64::Engine as _;
    let decode = |text: &str| base64::engine::general_purpose::STANDARD.decode(text).ok();
    let bodies: Vec<Vec<u8>> = bundle.bodies.iter().filter_map(|b| decode(b)).collect();
    let mut out = Vec::new();
    for item in &bundle.entries {
        let Some(mut entry) =
            decode(&item.entry).and_then(|b| custodian_core::entry::Entry::decode(&b).ok())
        else {
            continue;
        };
        if let Ok((digest, _)) = custodian_core::seal::commitment(&entry)
            && let Some(body) = bodies.iter().find(|b| {
                custodian_core::Digest::of(custodian_core::Algorithm::Sha256, b) == digest
            })
            && let Ok(opened) = custodian_core::seal::unseal(&entry, body)
        {
            entry = opened;
        }
        if let Ok(event) = entry.event::<custodian_core::registry::EvalPreregistered>() {
            out.push((item.index, event));
        }
    }
    out
}

/// Shows a badge (and writes its bundle).
pub async fn badge(args: BadgeArgs) -> anyhow::Result<ExitCode> {
    let crate::args::PackageSpec { name, version } = args.spec.parse()?;
    let response = client(&args.server)
        .await?
        .get_badge(pb::GetBadgeRequest { name, version })
        .await
        .map_err(status_error)?
        .into_inner();
    let badge: Badge = serde_json::from_str(&response.badge_json).context("the daemon's badge")?;
    if let Some(path) = &args.output {
        let bytes = if args.format == "vsa" {
            let bundle: bundle::Bundle =
                serde_json::from_str(&response.bundle_json).context("the daemon's badge bundle")?;
            bundle
                .vsa
                .context("the daemon's bundle carries no VSA (a daemon older than this client)")?
                + "\n"
        } else {
            response.bundle_json.clone()
        };
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&badge)?);
    } else {
        print_badge(&badge);
        // The pre-registrations the badge rests on, from the bundle's own entries.
        if let Ok(bundle) = serde_json::from_str::<bundle::Bundle>(&response.bundle_json) {
            for (index, p) in bundle_preregistrations(&bundle) {
                println!(
                    "  pre-registered [entry {index}]: {} {} {} {}, {} cases, harness {}",
                    p.eval_id,
                    p.metric,
                    p.comparator,
                    p.threshold,
                    p.sample_size,
                    p.harness_sha256.get(..19).unwrap_or(&p.harness_sha256)
                );
            }
        }
        if let Some(path) = &args.output {
            if args.format == "vsa" {
                println!(
                    "  VSA: {} (SLSA verification_summary/v1 in a DSSE envelope signed with the log's key)",
                    path.display()
                );
            } else {
                println!(
                    "  bundle: {} (check it offline: custodian verify {} --key LOG_KEY)",
                    path.display(),
                    path.display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the liveness report.
pub async fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let crate::args::PackageSpec { name, version } = args.spec.parse()?;
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
                    "preregistration": r.preregistered.then(|| serde_json::json!({
                        "ledger_index": r.preregistration_index,
                        "terms": serde_json::from_str::<serde_json::Value>(&r.preregistration_json).unwrap_or_default(),
                    })),
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
    // Each eval's pre-registration, once: what policy v4 holds its runs to.
    let mut seen = std::collections::BTreeSet::new();
    println!("pre-registrations:");
    for r in &response.rows {
        if !seen.insert(r.eval_id.clone()) {
            continue;
        }
        if !r.preregistered {
            println!(
                "  {:<22} none: no run of it counts under {} (custodian eval preregister)",
                r.eval_id,
                custodian_core::badge::POLICY
            );
            continue;
        }
        let t: serde_json::Value =
            serde_json::from_str(&r.preregistration_json).unwrap_or_default();
        let text = |k: &str| t[k].as_str().unwrap_or_default().to_string();
        println!(
            "  {:<22} entry {}: {} {} {}, {} cases, harness {}{}{}",
            r.eval_id,
            r.preregistration_index,
            text("metric"),
            text("comparator"),
            text("threshold"),
            t["sample_size"],
            text("harness_sha256").get(..19).unwrap_or_default(),
            t["seed"]
                .as_u64()
                .map(|s| format!(", seed {s}"))
                .unwrap_or_default(),
            t["data_pack_sha256"]
                .as_str()
                .map(|d| format!(", data pack {}", d.get(..19).unwrap_or(d)))
                .unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Verifies a bundle offline.
pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let key = load_verifier(&args.key)?;
    let policy = crate::policy::load(args.witness_policy.as_deref())?;
    let bytes = std::fs::read(&args.bundle)
        .with_context(|| format!("reading {}", args.bundle.display()))?;
    let result = bundle::verify(&bytes, &key)
        .map_err(|e| e.to_string())
        .and_then(|verified| {
            // The bundle verified, so it parses; its checkpoint is the one the proofs end at.
            let parsed: bundle::Bundle =
                serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            crate::policy::require_quorum(
                policy.as_ref(),
                parsed.checkpoint.as_bytes(),
                verified.tree_size,
            )
            .map_err(|e| e.to_string())?;
            Ok(verified)
        });
    match result {
        Ok(verified) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "ok": true, "badge": verified.badge, "tree_size": verified.tree_size, "entries": verified.entries, "vsa": verified.vsa,
                    }))?
                );
            } else {
                println!(
                    "bundle verifies: {} entries proven in the log {} at size {}, the badge recomputed under {}{}",
                    verified.entries,
                    key.name(),
                    verified.tree_size,
                    verified.badge.policy,
                    if verified.vsa {
                        ", its SLSA VSA signed by the log and equal to it"
                    } else {
                        ""
                    }
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
