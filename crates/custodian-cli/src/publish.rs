//! `custodian publish | install | versions | show | yank`: the registry's client commands.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use custodian_core::dsse::Envelope;
use custodian_core::package::{ENVELOPE_FILE, META_DIR, PackageStatement};
use custodian_proto::cas::v1 as cas;
use custodian_proto::registry::v1 as pb;
use custodian_proto::registry::v1::registry_client::RegistryClient;
use serde::Serialize;

use crate::blob::put_file;
use crate::client::{ServerArg, status_error};
use crate::keys::{load_signer, load_verifier};
use crate::pack::{PUBLISHER_KEY_FILE, print_report, read_envelope};
use custodian_client::Conn;

async fn registry(server: &ServerArg) -> anyhow::Result<RegistryClient<Conn>> {
    Ok(server.connect().await?.registry())
}

/// Options of `custodian publish`.
#[derive(Args)]
pub struct PublishArgs {
    /// The package folder
    #[arg(required_unless_present = "from_oci")]
    dir: Option<PathBuf>,
    /// Publish the package an OCI client pushed to the daemon's /v2/ as NAME:TAG (each layer a
    /// file, its path in the org.opencontainers.image.title annotation): the files are fetched
    /// and verified against their digests, then published as a folder would be
    #[arg(long, value_name = "NAME:TAG", conflicts_with = "dir")]
    from_oci: Option<String>,
    /// The daemon's REST address, for --from-oci
    #[arg(long, env = "CUSTODIAN_REST", default_value = "http://127.0.0.1:7312")]
    rest: String,
    /// Build and sign with this private key first (otherwise the folder must already be built)
    #[arg(long, env = "CUSTODIAN_PUBLISHER_KEY", value_name = "KEY_FILE")]
    key: Option<PathBuf>,
    /// Readable only with a read grant for the package's namespace
    #[arg(long)]
    private: bool,
    /// Bring the folder's OpenSSF model-signing signature (DIR/model.sig) along, verified with
    /// this ECDSA public key (PEM): it must sign exactly the package's files, and is recorded in
    /// the ledger with the publication; `install` writes it back
    #[arg(long, value_name = "PEM", conflicts_with = "from_oci")]
    oms_key: Option<PathBuf>,
    /// Write the ledger receipt of the publication to this file
    #[arg(long, value_name = "FILE")]
    receipt: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// Options of `custodian install`.
#[derive(Args)]
pub struct InstallArgs {
    /// NAME@VERSION
    spec: String,
    /// The folder to install into (created; must be empty)
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// Require the package to be signed by this verifier key (file or key text), not only by
    /// the key the registry pinned
    #[arg(long, value_name = "VKEY")]
    key: Option<String>,
    /// Install even if DIR is not empty
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// Options of `custodian versions`.
#[derive(Args)]
pub struct VersionsArgs {
    /// The package name
    name: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// Options of `custodian show`.
#[derive(Args)]
pub struct ShowArgs {
    /// NAME@VERSION
    spec: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// Options of `custodian yank`.
#[derive(Args)]
pub struct YankArgs {
    /// NAME@VERSION
    spec: String,
    /// Why the version must not be used (recorded in the ledger)
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Serialize)]
struct VersionLine {
    name: String,
    version: String,
    #[serde(rename = "type")]
    package_type: String,
    visibility: &'static str,
    yanked: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    yank_reason: String,
    published_at: String,
    ledger_index: u64,
    root: String,
    manifest_digest: String,
    file_count: u64,
    size: u64,
    publisher_key: String,
    /// The worst of each scanner's latest verdict on the files.
    scan_status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_pack: Option<serde_json::Value>,
}

fn line(v: &pb::Version) -> VersionLine {
    let published_at = v
        .published_at
        .map(|t| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.seconds.max(0) as u64),
            )
            .to_string()
        })
        .unwrap_or_default();
    VersionLine {
        name: v.name.clone(),
        version: v.version.clone(),
        package_type: v.r#type.clone(),
        visibility: if v.visibility == pb::Visibility::Private as i32 {
            "private"
        } else {
            "public"
        },
        yanked: v.yanked,
        yank_reason: v.yank_reason.clone(),
        published_at,
        ledger_index: v.ledger_index,
        root: v.root.clone(),
        manifest_digest: v.manifest_digest.clone(),
        file_count: v.file_count,
        size: v.size,
        publisher_key: v.publisher_key.clone(),
        scan_status: v.scan_status.clone(),
        data_pack: v.data_pack.as_ref().map(|p| {
            serde_json::json!({
                "mode": p.mode, "license": p.license, "sha256": p.sha256, "size": p.size,
                "uri": p.uri, "visibility": p.visibility, "scan_status": p.scan_status,
                "ledger_index": p.ledger_index,
            })
        }),
    }
}

/// Publishes a package folder.
pub async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    // A package pushed with an OCI client is fetched into a folder of its own first.
    let fetched = match &args.from_oci {
        Some(reference) => {
            Some(crate::oci::fetch_package(&args.rest, &args.server, reference).await?)
        }
        None => None,
    };
    let dir = match (&fetched, &args.dir) {
        (Some(folder), _) => folder.path(),
        (None, Some(dir)) => dir.as_path(),
        (None, None) => bail!("name a package folder, or --from-oci NAME:TAG"),
    };
    let (statement, envelope, publisher_key) = match &args.key {
        Some(key_path) => {
            let key = load_signer(key_path)?;
            let (statement, envelope, report) = crate::pack::build(dir, &key, false)?;
            if !args.json {
                print_report(&report);
            }
            (statement, envelope, key.verifier())
        }
        None => {
            let envelope = read_envelope(dir)?;
            let key = load_verifier(&dir.join(PUBLISHER_KEY_FILE).display().to_string())?;
            // Refuse to publish a folder that changed since it was signed.
            let (statement, report) = crate::pack::verify(dir, &envelope, &key)?;
            if !report.is_ok() {
                print_report(&report);
                bail!(
                    "{} does not match its signature; rebuild it with `custodian pack build --key …` or pass --key",
                    dir.display()
                );
            }
            let statement = statement.context("the envelope does not open")?;
            (statement, envelope, key)
        }
    };
    let files = statement.tree.files();
    // The OMS signature must hold over the folder and sign exactly the package's files (the
    // daemon checks the second again), so a mismatch is named before anything is uploaded.
    let oms = match &args.oms_key {
        Some(path) => {
            let key = crate::modelsig::load_public(path)?;
            let signed = crate::modelsig::verify_folder(dir, &key)?;
            let package: std::collections::BTreeMap<String, custodian_core::Digest> =
                files.iter().map(|f| (f.path.clone(), f.sha256)).collect();
            let differences = custodian_core::oms::differences(&signed.files, &package);
            if !differences.is_empty() {
                bail!(
                    "the OMS signature in {} signs other files than the package holds (its exclusion rules differ): {}",
                    dir.display(),
                    differences.join("; ")
                );
            }
            let signature = std::fs::read_to_string(dir.join(custodian_core::oms::SIGNATURE_FILE))?;
            Some((signature, key.to_pem()))
        }
        None => None,
    };
    let connected = args.server.connect().await?;
    let mut store = connected.store();
    let digests: Vec<String> = files
        .iter()
        .map(|f| f.sha256.to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let missing: BTreeSet<String> = store
        .find_missing(cas::FindMissingRequest { digests })
        .await
        .map_err(status_error)?
        .into_inner()
        .missing_digests
        .into_iter()
        .collect();
    let mut uploaded = 0usize;
    let mut uploaded_bytes = 0u64;
    let local = if missing.is_empty() {
        None
    } else {
        crate::local_put::socket(&args.server, &mut store).await
    };
    for file in files {
        if !missing.contains(&file.sha256.to_string()) {
            continue;
        }
        let path = dir.join(&file.path);
        put_file(
            &args.server.target(),
            &mut connected.conn(),
            &path,
            Some(file.sha256),
            local.as_ref(),
        )
        .await
        .with_context(|| format!("uploading {}", file.path))?;
        uploaded += 1;
        uploaded_bytes += file.size;
    }
    let response = registry(&args.server)
        .await?
        .publish_version(pb::PublishVersionRequest {
            envelope: envelope.to_json(),
            publisher_key: publisher_key.to_string(),
            visibility: if args.private {
                pb::Visibility::Private
            } else {
                pb::Visibility::Public
            } as i32,
            oms_signature: oms.as_ref().map(|o| o.0.clone()).unwrap_or_default(),
            oms_public_key: oms.map(|o| o.1).unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let version = response.version.context("the reply has no version")?;
    let receipt = response.receipt.context("the reply has no receipt")?;
    if let Some(path) = &args.receipt {
        std::fs::write(path, &receipt.json)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        let mut value = serde_json::to_value(line(&version))?;
        value["already_published"] = response.already_published.into();
        value["uploaded_files"] = uploaded.into();
        value["uploaded_bytes"] = uploaded_bytes.into();
        value["receipt"] = serde_json::from_str(&receipt.json)?;
        if let Some(scan) = &response.scan {
            value["scan"] = serde_json::json!({
                "scanner": scan.scanner,
                "verdict": scan.verdict,
                "root": scan.root,
                "findings": serde_json::from_str::<serde_json::Value>(&scan.findings_json)?,
                "omitted": scan.omitted,
                "ledger_index": scan.receipt.as_ref().map(|r| r.log_index),
            });
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        for w in &response.warnings {
            eprintln!("warning: {}:{}: {}: {}", w.file, w.line, w.field, w.message);
        }
        println!(
            "{} {}@{} ({} files, {} uploaded, {} already in custody)",
            if response.already_published {
                "already published:"
            } else {
                "published"
            },
            version.name,
            version.version,
            files.len(),
            uploaded,
            files.len() - uploaded
        );
        println!("  package root     {}", version.root);
        println!("  manifest digest  {}", version.manifest_digest);
        println!("  ledger entry     {}", receipt.log_index);
        if let Some(path) = &args.receipt {
            println!("  receipt          {}", path.display());
        }
        if let Some(scan) = &response.scan {
            println!(
                "  scan             {} by {} (ledger entry {})",
                scan.verdict,
                scan.scanner,
                scan.receipt
                    .as_ref()
                    .map(|r| r.log_index)
                    .unwrap_or_default()
            );
            let findings: Vec<custodian_scan::Finding> =
                serde_json::from_str(&scan.findings_json).unwrap_or_default();
            // Only what a publisher should look at; `custodian scan` lists everything.
            crate::output::print_findings(
                &findings,
                scan.omitted,
                4,
                custodian_scan::Severity::Medium,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Installs a version into a folder, verifying everything.
pub async fn install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let crate::args::PackageSpec { name, version } = args.spec.parse()?;
    let record = registry(&args.server)
        .await?
        .get_version(pb::GetVersionRequest {
            name: name.clone(),
            version: version.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let pinned = load_verifier(&record.publisher_key)?;
    if let Some(expected) = &args.key {
        let expected = load_verifier(expected)?;
        if expected != pinned {
            bail!(
                "{name}@{version} is signed by {} but --key is {}: refusing to install",
                pinned.handle(),
                expected.handle()
            );
        }
    }
    let envelope = Envelope::parse(record.envelope.as_bytes()).context("the version's envelope")?;
    let statement = PackageStatement::open(&envelope, &pinned)
        .context("the registry's copy of the signature does not verify")?;
    let root = format!("sha256:{}", statement.tree.root().to_hex());
    if root != record.root || statement.name != name || statement.version != record.version {
        bail!(
            "the signed statement ({}@{}, root {root}) does not match the registry's record ({name}@{}, root {})",
            statement.name,
            statement.version,
            record.version,
            record.root
        );
    }
    let out = &args.output;
    if out.exists()
        && !args.force
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} is not empty; pass --force to install over it",
            out.display()
        );
    }
    if record.yanked {
        eprintln!(
            "warning: {name}@{version} is YANKED: {} — installing it only because you asked for this exact version",
            record.yank_reason
        );
    }
    let mut conn = args.server.connect().await?.conn();
    let files = statement.tree.files();
    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = crate::output::progress(total, format!("install {name}@{version}"));
    for file in files {
        let path = out.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // The download is checked against the signed sha256 (and so its size) before the file
        // appears.
        crate::blob::download(&mut conn, &file.sha256, &path, 0, None, false)
            .await
            .with_context(|| format!("fetching {} ({})", file.path, file.sha256))?;
        bar.inc(file.size);
    }
    bar.finish_and_clear();
    std::fs::create_dir_all(out.join(META_DIR))?;
    std::fs::write(out.join(ENVELOPE_FILE), envelope.to_json() + "\n")?;
    std::fs::write(out.join(PUBLISHER_KEY_FILE), format!("{pinned}\n"))?;
    std::fs::write(
        out.join(".custodian/install.json"),
        serde_json::to_string_pretty(&line(&record))? + "\n",
    )?;
    println!(
        "installed {name}@{version} into {} ({} files, {} bytes)",
        out.display(),
        files.len(),
        total
    );
    println!(
        "  signature        ok, by {} (pinned publisher key)",
        pinned.handle()
    );
    println!(
        "  files            {} verified against the signed sha256 digests",
        files.len()
    );
    println!("  package root     {}", record.root);
    println!("  ledger entry     {}", record.ledger_index);
    // The OpenSSF model-signing signature it was published with goes back beside the files,
    // checked first against what was just installed, so `model_signing verify` works on the
    // copy; its key is kept in .custodian/ for convenience (trust it only as far as the ledger).
    if !record.oms_signature.is_empty() {
        let key = custodian_core::oms::PublicKey::from_pem(&record.oms_public_key)
            .context("the version's OMS public key")?;
        custodian_core::oms::check_package(&record.oms_signature, &record.oms_public_key, files)
            .context("the version's OMS signature does not match its files")?;
        std::fs::write(
            out.join(custodian_core::oms::SIGNATURE_FILE),
            &record.oms_signature,
        )?;
        std::fs::write(out.join(".custodian/oms.pub.pem"), key.to_pem())?;
        println!(
            "  model.sig        OpenSSF model-signing signature, ECDSA {} (key in .custodian/oms.pub.pem)",
            key.curve()
        );
    }
    // The badge as the registry evaluates it now; installs go ahead whatever it says, as a
    // package manager shows a warning rather than refusing.
    let badge = args
        .server
        .connect()
        .await?
        .evidence()
        .get_badge(custodian_proto::evidence::v1::GetBadgeRequest {
            name: name.clone(),
            version: version.clone(),
        })
        .await;
    match badge {
        Ok(response) => {
            let response = response.into_inner();
            let badge: serde_json::Value =
                serde_json::from_str(&response.badge_json).unwrap_or_default();
            let reasons: Vec<&str> = badge["reasons"]
                .as_array()
                .map(|r| r.iter().filter_map(|x| x["code"].as_str()).collect())
                .unwrap_or_default();
            println!(
                "  badge            {}{}",
                response.state,
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", reasons.join(", "))
                }
            );
            if response.state != "green" {
                eprintln!(
                    "warning: {name}@{version}'s badge is {}: run `custodian badge {name}@{version}` for the reasons",
                    response.state
                );
            }
        }
        Err(status) => println!("  badge            unknown ({})", status.message()),
    }
    if let Some(pack) = &record.data_pack {
        println!(
            "  data pack        {} ({}), license {}, scan {}",
            pack.mode,
            if pack.mode == "hosted" {
                &pack.sha256
            } else {
                &pack.uri
            },
            pack.license,
            if pack.scan_status.is_empty() {
                "n/a"
            } else {
                &pack.scan_status
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists versions.
pub async fn versions(args: VersionsArgs) -> anyhow::Result<ExitCode> {
    let response = registry(&args.server)
        .await?
        .list_versions(pb::ListVersionsRequest {
            name: args.name.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let lines: Vec<VersionLine> = response.versions.iter().map(line).collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
    } else {
        println!(
            "{:<14} {:<18} {:<8} {:<21} {:>6}  root",
            "VERSION", "TYPE", "ACCESS", "PUBLISHED", "ENTRY"
        );
        for l in &lines {
            println!(
                "{:<14} {:<18} {:<8} {:<21} {:>6}  {}{}",
                l.version,
                l.package_type,
                l.visibility,
                l.published_at,
                l.ledger_index,
                l.root.get(..19).unwrap_or(&l.root),
                if l.yanked {
                    format!("  YANKED: {}", l.yank_reason)
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows one version.
pub async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let crate::args::PackageSpec { name, version } = args.spec.parse()?;
    let record = registry(&args.server)
        .await?
        .get_version(pb::GetVersionRequest { name, version })
        .await
        .map_err(status_error)?
        .into_inner();
    let summary = line(&record);
    if args.json {
        let mut value = serde_json::to_value(&summary)?;
        value["files"] = record
            .files
            .iter()
            .map(|f| serde_json::json!({"path": f.path, "sha256": f.sha256, "size": f.size}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let s = &summary;
        println!(
            "{}@{} ({}, {})",
            s.name, s.version, s.package_type, s.visibility
        );
        if s.yanked {
            println!("  YANKED           {}", s.yank_reason);
        }
        println!(
            "  published        {} (ledger entry {})",
            s.published_at, s.ledger_index
        );
        println!("  package root     {}", s.root);
        println!("  manifest digest  {}", s.manifest_digest);
        println!("  publisher key    {}", s.publisher_key);
        println!("  scan             {}", s.scan_status);
        println!("  files            {} ({} bytes)", s.file_count, s.size);
        for f in &record.files {
            println!("    {}  {:>10}  {}", f.sha256, f.size, f.path);
        }
        match &record.data_pack {
            Some(p) if p.mode == "hosted" => println!(
                "  data pack        hosted {} ({} bytes), license {}, scan {}",
                p.sha256, p.size, p.license, p.scan_status
            ),
            Some(p) => println!(
                "  data pack        external {} ({}), license {}",
                p.uri, p.access_policy, p.license
            ),
            None => println!("  data pack        none"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Yanks a version.
pub async fn yank(args: YankArgs) -> anyhow::Result<ExitCode> {
    let crate::args::PackageSpec { name, version } = args.spec.parse()?;
    let response = registry(&args.server)
        .await?
        .yank(pb::YankRequest {
            name: name.clone(),
            version: version.clone(),
            reason: args.reason,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let entry = response.receipt.map(|r| r.log_index).unwrap_or_default();
    println!(
        "{} {name}@{version} (ledger entry {entry})",
        if response.already_yanked {
            "already yanked:"
        } else {
            "yanked"
        }
    );
    Ok(ExitCode::SUCCESS)
}
