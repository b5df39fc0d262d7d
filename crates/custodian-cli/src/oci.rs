//! `custodian oci …`: what the OCI front end's ledger entries say, online (the daemon's
//! `/oci/history`, each receipt checked here with the log's key) or offline from an auditor's
//! export (audited first, then replayed).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use custodian_core::entry::{Entry, EntryKind};
use custodian_core::note::VerifierKey;
use custodian_core::receipt::Receipt;
use custodian_core::registry::{OciDeleted, OciManifestPut};
use custodian_server::oci::index::OciIndex;
use serde_json::json;

use crate::datapack::RestArg;

/// OCI commands.
#[derive(Subcommand)]
pub enum OciCommand {
    /// Print every state an OCI tag has had, each with the ledger entry that set it
    #[command(
        long_about = "Print every state NAME:TAG has had, oldest first: the manifest \
digest it pointed at (or `deleted`), when, who pushed it, and the ledger entry that recorded it. \
Every manifest push and tag move or delete through the daemon's /v2/ API is a ledger entry, so \
this is the tag's whole history, not a cache.\n\n\
With --key, each state's receipt is verified here, offline, with the log's verifier key, and must \
name exactly that push or delete. With --export DIR the daemon is not asked at all: the history \
is read from an auditor's export (`custodian log export`), which is audited with --key first. \
Exits 1 if anything does not verify."
    )]
    History(HistoryArgs),
}

/// Options of `custodian oci history`.
#[derive(Args)]
pub struct HistoryArgs {
    /// NAME:TAG, e.g. acme/classifier:stable
    reference: String,
    /// The log's verifier key (NAME+ID+KEY, or a file containing it): verify every receipt
    #[arg(long, value_name = "VKEY")]
    key: Option<String>,
    /// Read the history from this export directory (`custodian log export`) instead of the daemon
    #[arg(long, value_name = "DIR", requires = "key")]
    export: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    rest: RestArg,
}

/// Runs an OCI command.
pub async fn run(command: OciCommand) -> anyhow::Result<ExitCode> {
    match command {
        OciCommand::History(args) => history(args).await,
    }
}

/// One state of a tag as printed.
struct State {
    index: u64,
    time_ms: u64,
    digest: Option<String>,
    pusher: String,
    /// `verified`, `sealed (private; verified inclusion)`, or absent when not checked.
    check: Option<String>,
}

fn split_reference(reference: &str) -> anyhow::Result<(String, String)> {
    let Some((name, tag)) = reference.rsplit_once(':') else {
        bail!("{reference:?} is not NAME:TAG");
    };
    let name = custodian_core::oci::Name::parse(name).map_err(|e| anyhow::anyhow!(e.message))?;
    let tag = custodian_core::oci::Tag::parse(tag).map_err(|e| anyhow::anyhow!(e.message))?;
    Ok((name.as_str().to_string(), tag.as_str().to_string()))
}

async fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let (name, tag) = split_reference(&args.reference)?;
    let verifier = match &args.key {
        Some(key) => Some(crate::keys::load_verifier(key)?),
        None => None,
    };
    let (states, source) = match (&args.export, &verifier) {
        (Some(dir), Some(verifier)) => (from_export(dir, verifier, &name, &tag)?, "export"),
        _ => (
            from_daemon(&args, verifier.as_ref(), &name, &tag).await?,
            "daemon",
        ),
    };
    if states.is_empty() {
        bail!(
            "{name}:{tag} has no history in the {source}: it was never pushed (or is private to you)"
        );
    }
    if args.json {
        let view = json!({
            "name": name,
            "tag": tag,
            "source": source,
            "states": states.iter().map(|s| json!({
                "index": s.index,
                "time_ms": s.time_ms,
                "digest": s.digest,
                "pusher": s.pusher,
                "check": s.check,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        let plural = if states.len() == 1 { "" } else { "s" };
        println!(
            "{name}:{tag}: {} state{plural} (from the {source})",
            states.len()
        );
        for s in &states {
            println!(
                "  #{:<8} {}  {:<71}  {}{}",
                s.index,
                crate::log::time_text(s.time_ms),
                s.digest.as_deref().unwrap_or("deleted"),
                s.pusher,
                s.check
                    .as_deref()
                    .map(|c| format!("  [{c}]"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn from_daemon(
    args: &HistoryArgs,
    verifier: Option<&VerifierKey>,
    name: &str,
    tag: &str,
) -> anyhow::Result<Vec<State>> {
    let client = crate::datapack::client(&args.rest)?;
    // Names and tags are checked above: their characters need no escaping in a query.
    let url = format!(
        "{}/oci/history?name={name}&tag={tag}",
        args.rest.rest.trim_end_matches('/')
    );
    let request = client.get(&url);
    let response = crate::datapack::authorize(request, &args.rest)
        .send()
        .await
        .map_err(|e| crate::datapack::unreachable(&args.rest, e))?;
    let status = response.status();
    let bytes = response.bytes().await.context("reading the response")?;
    let body: serde_json::Value = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "HTTP {status} from {url}: {}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    if !status.is_success() {
        bail!(
            "{} ({}): {}",
            body["error"]["code"].as_str().unwrap_or("error"),
            status.as_u16(),
            body["error"]["message"].as_str().unwrap_or("")
        );
    }
    let mut states = Vec::new();
    for s in body["states"].as_array().into_iter().flatten() {
        let index = s["index"].as_u64().context("a state without an index")?;
        let digest = s["digest"].as_str().map(str::to_string);
        let check = match verifier {
            None => None,
            Some(verifier) => Some(check_receipt(
                &s["receipt"],
                verifier,
                index,
                name,
                tag,
                digest.as_deref(),
            )?),
        };
        states.push(State {
            index,
            time_ms: s["time_ms"].as_u64().unwrap_or(0),
            digest,
            pusher: s["pusher"].as_str().unwrap_or("").to_string(),
            check,
        });
    }
    Ok(states)
}

/// Verifies a state's receipt with the log's key and checks that its entry is that very push
/// or delete (a sealed entry, of a private repository, can be checked for inclusion only).
fn check_receipt(
    receipt: &serde_json::Value,
    verifier: &VerifierKey,
    index: u64,
    name: &str,
    tag: &str,
    digest: Option<&str>,
) -> anyhow::Result<String> {
    let receipt = Receipt::from_json(&receipt.to_string())
        .with_context(|| format!("the receipt of entry {index} is malformed"))?;
    let verified = receipt
        .verify(verifier)
        .with_context(|| format!("the receipt of entry {index} does not verify"))?;
    if verified.index != index {
        bail!(
            "the receipt for entry {index} is for entry {}",
            verified.index
        );
    }
    let entry = verified.entry;
    if entry.kind == EntryKind::Sealed {
        return Ok("sealed (private); inclusion verified".into());
    }
    let matches = match digest {
        Some(digest) => entry
            .event::<OciManifestPut>()
            .is_ok_and(|e| e.name == name && e.tag.as_deref() == Some(tag) && e.digest == digest),
        None => entry
            .event::<OciDeleted>()
            .is_ok_and(|e| e.name == name && e.tag.as_deref().is_none_or(|t| t == tag)),
    };
    if !matches {
        bail!(
            "entry {index} ({}) does not record {name}:{tag} → {}",
            entry.kind.as_str(),
            digest.unwrap_or("deleted")
        );
    }
    Ok("verified".into())
}

/// The tag's history from an export: audited with the log's key first, then every OCI entry
/// replayed as the daemon replays them.
fn from_export(
    dir: &Path,
    verifier: &VerifierKey,
    name: &str,
    tag: &str,
) -> anyhow::Result<Vec<State>> {
    let report = custodian_core::audit::audit_dir(dir, verifier.clone(), |_| {})
        .map_err(|e| anyhow::anyhow!("the export does not audit: {e}"))?;
    let file = std::fs::File::open(dir.join("entries"))
        .with_context(|| format!("reading {}", dir.join("entries").display()))?;
    let mut index = OciIndex::default();
    let reader =
        custodian_core::audit::EntryReader::new(std::io::BufReader::with_capacity(1 << 20, file));
    for (i, bytes) in reader.enumerate() {
        let bytes = bytes?;
        let kind = custodian_core::entry::peek_kind(&bytes);
        if !matches!(kind, Some("OciManifestPut" | "OciDeleted")) {
            continue;
        }
        let entry = Entry::decode(&bytes).with_context(|| format!("entry {i}"))?;
        let applied = match entry.kind {
            EntryKind::OciManifestPut => entry
                .event::<OciManifestPut>()
                .map_err(|e| e.to_string())
                .and_then(|e| index.apply_put(i as u64, entry.time_ms, &e)),
            _ => entry
                .event::<OciDeleted>()
                .map_err(|e| e.to_string())
                .and_then(|e| index.apply_delete(i as u64, entry.time_ms, &e)),
        };
        applied.map_err(|e| anyhow::anyhow!("entry {i}: {e}"))?;
    }
    let check = format!("audited export of {} entries", report.entries);
    Ok(index
        .repo(name)
        .and_then(|r| r.history.get(tag))
        .into_iter()
        .flatten()
        .map(|s| State {
            index: s.index,
            time_ms: s.time_ms,
            digest: s.digest.map(|d| d.to_string()),
            pusher: s.pusher.clone(),
            check: Some(check.clone()),
        })
        .collect())
}

/// Fetches the package an OCI client pushed as `reference` (NAME:TAG) from the daemon's `/v2/`
/// into a new temporary folder: every layer is a file at the path its title annotation names,
/// checked against the layer's digest before the folder is used.
pub async fn fetch_package(
    rest: &str,
    server: &crate::client::ServerArg,
    reference: &str,
) -> anyhow::Result<tempfile::TempDir> {
    use custodian_core::Digest;
    let (name, tag) = split_reference(reference)?;
    let rest = RestArg {
        rest: rest.to_string(),
        server: server.clone(),
    };
    let client = crate::datapack::client(&rest)?;
    let base = rest.rest.trim_end_matches('/').to_string();
    let get = |url: String, accept: &'static str| {
        let request = client.get(url).header("accept", accept);
        crate::datapack::authorize(request, &rest).send()
    };
    let response = get(
        format!("{base}/v2/{name}/manifests/{tag}"),
        custodian_core::oci::OCI_MANIFEST,
    )
    .await
    .map_err(|e| crate::datapack::unreachable(&rest, e))?;
    let status = response.status();
    let bytes = response.bytes().await.context("reading the manifest")?;
    if !status.is_success() {
        bail!(
            "{name}:{tag}: HTTP {}: {}",
            status.as_u16(),
            String::from_utf8_lossy(&bytes)
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&bytes).context("the manifest is not JSON")?;
    let folder = tempfile::Builder::new()
        .prefix("custodian-oci-")
        .tempdir()
        .context("creating a folder for the package")?;
    let layers: Vec<&serde_json::Value> = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let total: u64 = layers.iter().filter_map(|l| l["size"].as_u64()).sum();
    let bar = crate::output::progress(total, format!("fetching {name}:{tag}"));
    for (i, layer) in layers.into_iter().enumerate() {
        let path = layer["annotations"][custodian_server::oci::TITLE]
            .as_str()
            .with_context(|| {
                format!(
                    "layers[{i}] has no {} annotation naming its file",
                    custodian_server::oci::TITLE
                )
            })?;
        custodian_core::package::check_path(path)
            .map_err(|e| anyhow::anyhow!("layers[{i}]: {e}"))?;
        let digest: Digest = layer["digest"]
            .as_str()
            .context("a layer without a digest")?
            .parse()
            .with_context(|| format!("layers[{i}] digest"))?;
        let response = get(format!("{base}/v2/{name}/blobs/{digest}"), "*/*")
            .await
            .map_err(|e| crate::datapack::unreachable(&rest, e))?;
        if !response.status().is_success() {
            bail!("{path} ({digest}): HTTP {}", response.status().as_u16());
        }
        let target = folder.path().join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        crate::datapack::download_verified(response, &target, &digest, None, &bar)
            .await
            .with_context(|| format!("{path}: layer {digest}"))?;
    }
    bar.finish_and_clear();
    Ok(folder)
}
