//! `custodian eval preregister`: sign an eval's acceptance criteria before its runs, so the
//! badge can show that the bar predates the score.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use custodian_core::manifest::Threshold;
use custodian_core::prereg::{PreregPredicate, PreregStatement};
use custodian_core::{Algorithm, Digest};
use custodian_proto::evidence::v1 as pb;
use custodian_proto::registry::v1 as rpb;

use crate::client::{ServerArg, status_error};
use crate::keys::load_signer;

/// Eval commands.
#[derive(Subcommand)]
pub enum EvalCommand {
    /// Pre-register an eval's acceptance criteria for a version, before any run of it
    #[command(
        long_about = "Pre-register what will count for one eval of a published version: the \
deciding metric and its threshold, the sample size, the seed, the eval harness (its sha256) and \
the data pack. The statement is signed with the package's publisher key or an attester key \
registered for it, and recorded as an EvalPreregistered ledger entry. Badge policy v4 counts a \
run only if a pre-registration of its eval precedes it in the log and the run matches it: its \
reproducibility_context carries the same harness_sha256, sample_size and seed, its data_pack_sha256 \
the same data pack, and a run that claims passed meets the threshold. A run logged before the \
pre-registration, or a pre-registration changed after the run, sends the badge to review; a run \
that differs from it, to failing. Each reason names the entries concerned."
    )]
    Preregister(PreregisterArgs),
}

/// Options of `custodian eval preregister`.
#[derive(Args)]
pub struct PreregisterArgs {
    /// The version, NAME@VERSION
    spec: String,
    /// The eval id (declared in the manifest)
    #[arg(long)]
    eval: String,
    /// The metric that decides whether a run passes
    #[arg(long)]
    metric: String,
    /// The threshold with its comparison, e.g. ">= 0.8" (a bare number means >=)
    #[arg(long, allow_hyphen_values = true)]
    threshold: String,
    /// How many cases each run evaluates (runs state it as reproducibility_context.sample_size)
    #[arg(long)]
    sample_size: u64,
    /// The seed every run must use (reproducibility_context.seed)
    #[arg(long)]
    seed: Option<u64>,
    /// The eval harness file; its sha256 is what runs state as
    /// reproducibility_context.harness_sha256
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "harness_sha256",
        required_unless_present = "harness_sha256"
    )]
    harness: Option<PathBuf>,
    /// The harness digest, sha256:<hex>, instead of --harness
    #[arg(long, value_name = "DIGEST")]
    harness_sha256: Option<String>,
    /// The data pack every run must read, sha256:<hex> (default: the version's hosted data pack)
    #[arg(long, value_name = "DIGEST")]
    data_pack_sha256: Option<String>,
    /// The signing key: the package's publisher key or a registered attester key
    #[arg(long, value_name = "KEY_FILE")]
    key: PathBuf,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// Runs an eval command.
pub async fn run(command: EvalCommand) -> anyhow::Result<ExitCode> {
    match command {
        EvalCommand::Preregister(args) => preregister(args).await,
    }
}

async fn preregister(args: PreregisterArgs) -> anyhow::Result<ExitCode> {
    let crate::args::PackageSpec { name, version } = args.spec.parse()?;
    let key = load_signer(&args.key)?;
    let threshold = Threshold::parse(&serde_json::Value::String(args.threshold.clone()))
        .map_err(|e| anyhow::anyhow!("--threshold: {e}"))?;
    let harness_sha256 = match (&args.harness, &args.harness_sha256) {
        (Some(path), _) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Digest::of(Algorithm::Sha256, &bytes).to_string()
        }
        (None, Some(digest)) => digest.clone(),
        (None, None) => anyhow::bail!("give --harness FILE or --harness-sha256 DIGEST"),
    };
    let connection = args.server.connect().await?;
    let record = connection
        .registry()
        .get_version(rpb::GetVersionRequest {
            name: name.clone(),
            version: version.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let manifest: Digest = record.manifest_digest.parse()?;
    let hosted = record
        .data_pack
        .as_ref()
        .filter(|d| d.mode == "hosted")
        .map(|d| d.sha256.clone())
        .filter(|d| !d.is_empty());
    let predicate = PreregPredicate {
        package: name.clone(),
        version: version.clone(),
        eval_id: args.eval.clone(),
        metric: args.metric.clone(),
        comparator: threshold.comparator.as_str().into(),
        threshold: serde_json::Number::from_f64(threshold.value)
            .context("--threshold is not a finite number")?,
        data_pack_sha256: args.data_pack_sha256.clone().or(hosted),
        sample_size: args.sample_size,
        seed: args.seed,
        harness_sha256,
    };
    let statement = PreregStatement::new(manifest, predicate)?;
    let envelope = statement.sign(&key).to_json();
    let response = connection
        .evidence()
        .preregister_eval(pb::PreregisterEvalRequest { envelope })
        .await
        .map_err(status_error)?
        .into_inner();
    let index = response.receipt.map(|r| r.log_index).unwrap_or_default();
    let p = &statement.predicate;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"ledger_index": index, "predicate": p, "manifest": manifest.to_string()})
        );
    } else {
        println!(
            "pre-registered {} of {name}@{version}: {} {}, {} cases, harness {}{}{}: ledger entry {index}",
            p.eval_id,
            p.metric,
            statement.threshold,
            p.sample_size,
            p.harness_sha256,
            p.seed.map(|s| format!(", seed {s}")).unwrap_or_default(),
            p.data_pack_sha256
                .as_deref()
                .map(|d| format!(", data pack {d}"))
                .unwrap_or_default(),
        );
        println!(
            "runs logged after this entry count; each states harness_sha256, sample_size{} in its reproducibility_context",
            if p.seed.is_some() { " and seed" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}
