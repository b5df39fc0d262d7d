//! `custodian key generate` and `custodian pack build|verify`: signing and checking Behavior
//! Packages on disk, offline.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use custodian_core::dsse::Envelope;
use custodian_core::manifest::{Manifest, Problem, Report};
use custodian_core::note::{SignerKey, VerifierKey};
use custodian_core::package::{
    ENVELOPE_FILE, FileEntry, MANIFEST_FILE, META_DIR, PackageStatement, check_path,
};
use custodian_core::{Algorithm, Digest, StreamHasher, promptpack};
use serde::Serialize;

/// Where `pack build` and `install` keep the publisher's verifier key beside the envelope.
pub const PUBLISHER_KEY_FILE: &str = ".custodian/publisher.pub";
/// Folders of version control systems, never part of a package.
const SKIPPED_DIRS: [&str; 3] = [".git", ".hg", ".svn"];
/// The largest YAML file checked as a PromptPack resource.
const MAX_YAML_BYTES: u64 = 1 << 20;

/// Key commands.
#[derive(Subcommand)]
pub enum KeyCommand {
    /// Generate an Ed25519 publisher key pair: NAME.key (private, mode 0600) and NAME.pub
    #[command(
        long_about = "Generate an Ed25519 key pair for signing packages. Keys use the \
signed-note format (name+id+base64) that Custodian's log key uses too. NAME.key is the private \
key (mode 0600; keep it secret and backed up); NAME.pub is the verifier key to hand to \
consumers and auditors. The first version of a package pins its publisher key: later versions \
must be signed by the same key."
    )]
    Generate {
        /// The key's name, e.g. acme-release (letters, digits, '.', '-', '_', '@', '/')
        name: String,
        /// Folder to write NAME.key and NAME.pub into
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Overwrite existing key files
        #[arg(long)]
        force: bool,
    },
}

/// Package commands that work on a folder, offline.
#[derive(Subcommand)]
pub enum PackCommand {
    /// Hash every file, check the manifest and PromptPack resources, and sign the package
    #[command(
        long_about = "Build a package folder: hash every file (sha256), check manifest.yaml \
and any PromptPack resources (every problem is listed as file:line: field: message), compute \
the package root (an RFC 6962 Merkle root over the sorted `sha256:<hex> <size> <path>` lines) \
and sign an in-toto Statement over all of it as a DSSE envelope with your Ed25519 key. Writes \
.custodian/package.dsse.json and .custodian/publisher.pub. Version-control folders (.git, .hg, \
.svn) are left out; symbolic links are refused."
    )]
    Build {
        /// The package folder (with manifest.yaml)
        dir: PathBuf,
        /// Your private key (from `custodian key generate`)
        #[arg(long, env = "CUSTODIAN_PUBLISHER_KEY", value_name = "KEY_FILE")]
        key: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Prove that some files belong to a signed package, without the rest of its file list
    #[command(
        long_about = "Write RFC 6962 inclusion proofs that the given files belong to the package built in DIR: for each file its path, sha256, size, leaf index and audit path to the package root. Whoever trusts the root (from the signed envelope, the registry's record or the ledger's PackagePublished entry) checks them with `pack check-proof`, offline, without the other files or the full file list."
    )]
    Prove {
        /// The built package folder
        dir: PathBuf,
        /// Paths inside the package
        #[arg(required = true)]
        paths: Vec<String>,
        /// Write the proof here instead of standard output
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Check a proof from `pack prove` against a package root, offline
    CheckProof {
        /// The proof file
        proof: PathBuf,
        /// The package root you trust, sha256:<hex>
        #[arg(long)]
        root: String,
        /// Also check the files' bytes in this folder against the proven digests
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Check a package folder against its signature, offline
    #[command(
        long_about = "Verify a package folder offline: the DSSE signature with the \
publisher's verifier key, that the folder holds exactly the signed files with the signed \
sha256 and size (nothing missing, nothing added), the package root, and that the manifest and \
PromptPack resources are valid. Exits 1 listing everything that does not hold."
    )]
    Verify {
        /// The package folder
        dir: PathBuf,
        /// The publisher's verifier key: a .pub file or the key text
        #[arg(long, value_name = "VKEY")]
        key: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

/// Reads a verifier key from a file, or takes the argument as the key itself.
pub fn load_verifier(arg: &str) -> anyhow::Result<VerifierKey> {
    let text = match std::fs::read_to_string(arg) {
        Ok(text) => text,
        Err(_) if arg.contains('+') => arg.to_string(),
        Err(e) => bail!("cannot read verifier key file {arg}: {e}"),
    };
    VerifierKey::parse(text.trim()).with_context(|| format!("verifier key {arg}"))
}

/// Reads a private key file.
pub fn load_signer(path: &Path) -> anyhow::Result<SignerKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    SignerKey::parse(text.trim()).with_context(|| format!("key file {}", path.display()))
}

fn generate(name: &str, dir: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
    let key = SignerKey::from_seed(name, seed).context("invalid key name")?;
    let file_stem = name.replace(['/', '@'], "_");
    let private = dir.join(format!("{file_stem}.key"));
    let public = dir.join(format!("{file_stem}.pub"));
    if !force && (private.exists() || public.exists()) {
        bail!(
            "{} or {} already exists; pass --force to overwrite (the old key is then lost)",
            private.display(),
            public.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write as _;
    let mut file = options
        .open(&private)
        .with_context(|| format!("writing {}", private.display()))?;
    writeln!(file, "{}", key.to_private_string())?;
    file.sync_all()?;
    std::fs::write(&public, format!("{}\n", key.verifier()))
        .with_context(|| format!("writing {}", public.display()))?;
    println!("private key: {} (keep it secret)", private.display());
    println!("public key:  {}", public.display());
    println!("{}", key.verifier());
    Ok(ExitCode::SUCCESS)
}

/// The files of a package folder: relative path → absolute path, sorted.
pub fn list_files(dir: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let entries =
            std::fs::read_dir(&folder).with_context(|| format!("reading {}", folder.display()))?;
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            let rel = path
                .strip_prefix(dir)
                .context("walking the package")?
                .to_str()
                .with_context(|| format!("{} is not a UTF-8 path", path.display()))?
                .to_string();
            if kind.is_dir() {
                let name = entry.file_name();
                if rel == META_DIR || SKIPPED_DIRS.iter().any(|d| name == *d) {
                    continue;
                }
                stack.push(path);
            } else if kind.is_symlink() {
                bail!(
                    "{rel} is a symbolic link; packages hold regular files only (copy the target in)"
                );
            } else if kind.is_file() {
                check_path(&rel)?;
                out.insert(rel, path);
            } else {
                bail!("{rel} is not a regular file");
            }
        }
    }
    Ok(out)
}

/// Hashes a file with sha256.
pub fn hash_file(path: &Path) -> anyhow::Result<(Digest, u64)> {
    hash_file_with(path, |_| {})
}

/// Hashes a file with sha256, reporting each piece's length to `progress`.
pub fn hash_file_with(path: &Path, progress: impl Fn(u64)) -> anyhow::Result<(Digest, u64)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = StreamHasher::new(Algorithm::Sha256);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        progress(n as u64);
    }
    Ok((hasher.finalize(), size))
}

/// A package folder read from disk and checked.
pub struct LocalPackage {
    /// The files with their digests.
    pub files: Vec<FileEntry>,
    /// The parsed manifest, when valid.
    pub manifest: Option<Manifest>,
    /// Problems found.
    pub report: Report,
}

/// Reads, hashes and checks a package folder.
pub fn read_package(dir: &Path) -> anyhow::Result<LocalPackage> {
    let paths = list_files(dir)?;
    let mut files = Vec::with_capacity(paths.len());
    for (rel, abs) in &paths {
        let (sha256, size) = hash_file(abs)?;
        files.push(FileEntry {
            path: rel.clone(),
            sha256,
            size,
        });
    }
    let names: BTreeSet<String> = paths.keys().cloned().collect();
    let Some(manifest_path) = paths.get(MANIFEST_FILE) else {
        bail!("{} has no manifest.yaml", dir.display());
    };
    let text = std::fs::read_to_string(manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let (manifest, mut report) = Manifest::parse(MANIFEST_FILE, &text, Some(&names));
    let mut yaml = BTreeMap::new();
    for file in &files {
        if file.path != MANIFEST_FILE
            && promptpack::is_resource_path(&file.path)
            && file.size <= MAX_YAML_BYTES
            && let Ok(text) = std::fs::read_to_string(&paths[&file.path])
        {
            yaml.insert(file.path.clone(), text);
        }
    }
    let inputs: Vec<String> = manifest
        .as_ref()
        .map(|m| m.inputs.iter().map(|v| v.name().to_string()).collect())
        .unwrap_or_default();
    report.extend(promptpack::validate(&yaml, &names, &inputs));
    Ok(LocalPackage {
        files,
        manifest,
        report,
    })
}

/// Prints problems, errors first.
pub fn print_report(report: &Report) {
    for p in &report.errors {
        eprintln!("error: {p}");
    }
    for p in &report.warnings {
        eprintln!("warning: {p}");
    }
}

#[derive(Serialize)]
struct BuildSummary {
    name: String,
    version: String,
    #[serde(rename = "type")]
    package_type: String,
    files: usize,
    size: u64,
    root: String,
    manifest_digest: String,
    publisher_key: String,
    envelope: String,
    warnings: Vec<Problem>,
}

/// Builds and signs `dir`; returns the statement and the envelope written.
pub fn build(dir: &Path, key: &SignerKey) -> anyhow::Result<(PackageStatement, Envelope, Report)> {
    let package = read_package(dir)?;
    let Some(manifest) = package.manifest.as_ref().filter(|_| package.report.is_ok()) else {
        print_report(&package.report);
        bail!(
            "{} is not a valid package: {} problem(s), listed above",
            dir.display(),
            package.report.errors.len()
        );
    };
    let statement = PackageStatement::new(
        &manifest.name,
        &manifest.version.to_string(),
        manifest.package_type.as_str(),
        package.files.clone(),
    )?;
    let envelope = statement.sign(key);
    let len = envelope.to_json().len();
    if len > custodian_core::dsse::MAX_ENVELOPE_LEN {
        bail!(
            "the signed statement of {} files is {len} bytes, over the {} a publication may carry; \
             use fewer files or shorter paths (bulk data belongs in a data pack)",
            statement.tree.files().len(),
            custodian_core::dsse::MAX_ENVELOPE_LEN
        );
    }
    let meta = dir.join(META_DIR);
    std::fs::create_dir_all(&meta).with_context(|| format!("creating {}", meta.display()))?;
    std::fs::write(dir.join(ENVELOPE_FILE), envelope.to_json() + "\n")?;
    std::fs::write(
        dir.join(PUBLISHER_KEY_FILE),
        format!("{}\n", key.verifier()),
    )?;
    Ok((statement, envelope, package.report))
}

/// Checks a folder against an envelope and key; returns the statement and every problem.
pub fn verify(
    dir: &Path,
    envelope: &Envelope,
    key: &VerifierKey,
) -> anyhow::Result<(Option<PackageStatement>, Report)> {
    let mut report = Report::default();
    let mut fail = |file: &str, message: String| {
        report.errors.push(Problem {
            file: file.to_string(),
            line: None,
            field: String::new(),
            message,
        })
    };
    let statement = match PackageStatement::open(envelope, key) {
        Ok(s) => s,
        Err(e) => {
            fail(ENVELOPE_FILE, e.to_string());
            return Ok((None, report));
        }
    };
    let local = read_package(dir)?;
    let on_disk: BTreeMap<&str, &FileEntry> =
        local.files.iter().map(|f| (f.path.as_str(), f)).collect();
    for signed in statement.tree.files() {
        match on_disk.get(signed.path.as_str()) {
            None => fail(&signed.path, "is signed but missing from the folder".into()),
            Some(f) if f.sha256 != signed.sha256 || f.size != signed.size => fail(
                &signed.path,
                format!(
                    "has been modified: signed {} ({} bytes), on disk {} ({} bytes)",
                    signed.sha256, signed.size, f.sha256, f.size
                ),
            ),
            Some(_) => {}
        }
    }
    for file in &local.files {
        if statement.tree.get(&file.path).is_none() {
            fail(
                &file.path,
                "is in the folder but not in the signed package".into(),
            );
        }
    }
    report.extend(local.report);
    if let Some(m) = &local.manifest
        && (m.name != statement.name || m.version.to_string() != statement.version)
    {
        let (name, version) = (m.name.clone(), m.version.to_string());
        report.errors.push(Problem {
            file: MANIFEST_FILE.into(),
            line: None,
            field: "name".into(),
            message: format!(
                "declares {name}@{version}, but the signature is for {}@{}",
                statement.name, statement.version
            ),
        });
    }
    Ok((Some(statement), report))
}

/// Reads the envelope `pack build` wrote.
pub fn read_envelope(dir: &Path) -> anyhow::Result<Envelope> {
    let path = dir.join(ENVELOPE_FILE);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (run `custodian pack build {}` first)",
            path.display(),
            dir.display()
        )
    })?;
    Envelope::parse(&bytes).with_context(|| format!("{}", path.display()))
}

/// Runs a key command.
pub fn run_key(command: KeyCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeyCommand::Generate { name, dir, force } => generate(&name, &dir, force),
    }
}

#[derive(Serialize, serde::Deserialize)]
struct ProofFile {
    name: String,
    version: String,
    root: String,
    file_count: u64,
    files: Vec<ProvenFile>,
}

#[derive(Serialize, serde::Deserialize)]
struct ProvenFile {
    path: String,
    sha256: String,
    size: u64,
    index: u64,
    proof: Vec<String>,
}

fn prove(dir: &Path, paths: &[String], output: Option<&Path>) -> anyhow::Result<ExitCode> {
    let envelope = read_envelope(dir)?;
    let statement = PackageStatement::from_json(&envelope.payload_bytes()?)?;
    let mut files = Vec::new();
    for path in paths {
        let (index, proof) = statement
            .tree
            .proof(path)
            .with_context(|| format!("{path:?} is not a file of the signed package"))?;
        let file = statement.tree.get(path).context("listed file")?;
        files.push(ProvenFile {
            path: path.clone(),
            sha256: file.sha256.to_string(),
            size: file.size,
            index,
            proof: proof.iter().map(|h| h.to_hex()).collect(),
        });
    }
    let proof = ProofFile {
        name: statement.name.clone(),
        version: statement.version.clone(),
        root: format!("sha256:{}", statement.tree.root().to_hex()),
        file_count: statement.tree.files().len() as u64,
        files,
    };
    let text = serde_json::to_string_pretty(&proof)? + "\n";
    match output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn check_proof(proof: &Path, root: &str, dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let text = std::fs::read(proof).with_context(|| format!("reading {}", proof.display()))?;
    let proof: ProofFile = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a proof from `pack prove`", proof.display()))?;
    let trusted = custodian_core::merkle::Hash::from_slice(
        &hex::decode(root.strip_prefix("sha256:").unwrap_or(root))
            .with_context(|| format!("--root {root:?} is not sha256:<hex>"))?,
    )
    .map_err(|e| anyhow::anyhow!("--root {root:?}: {e}"))?;
    let mut failures = 0;
    for file in &proof.files {
        let entry = FileEntry {
            path: file.path.clone(),
            sha256: file.sha256.parse()?,
            size: file.size,
        };
        let hashes = file
            .proof
            .iter()
            .map(|h| {
                custodian_core::merkle::Hash::from_slice(&hex::decode(h)?)
                    .map_err(|e| anyhow::anyhow!("{e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("{}: a proof hash is not 32 bytes of hex", file.path))?;
        let mut problem = custodian_core::package::verify_file_proof(
            &trusted,
            proof.file_count,
            file.index,
            &entry,
            &hashes,
        )
        .err()
        .map(|e| format!("does not belong to the package with that root: {e}"));
        if problem.is_none()
            && let Some(dir) = dir
        {
            let (sha256, size) = hash_file(&dir.join(&file.path))?;
            if sha256 != entry.sha256 || size != entry.size {
                problem = Some(format!(
                    "on disk is {sha256} ({size} bytes), proven {} ({} bytes)",
                    entry.sha256, entry.size
                ));
            }
        }
        match problem {
            Some(p) => {
                failures += 1;
                eprintln!("error: {}: {p}", file.path);
            }
            None => println!(
                "ok: {} ({}) is file {} of {} under root {root}",
                file.path, file.sha256, file.index, proof.file_count
            ),
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs a pack command.
pub fn run(command: PackCommand) -> anyhow::Result<ExitCode> {
    match command {
        PackCommand::Prove { dir, paths, output } => prove(&dir, &paths, output.as_deref()),
        PackCommand::CheckProof { proof, root, dir } => check_proof(&proof, &root, dir.as_deref()),
        PackCommand::Build { dir, key, json } => {
            let key = load_signer(&key)?;
            let (statement, envelope, report) = build(&dir, &key)?;
            let files = statement.tree.files();
            let summary = BuildSummary {
                name: statement.name.clone(),
                version: statement.version.clone(),
                package_type: statement.package_type.clone(),
                files: files.len(),
                size: files.iter().map(|f| f.size).sum(),
                root: format!("sha256:{}", statement.tree.root().to_hex()),
                manifest_digest: statement.manifest_digest().to_string(),
                publisher_key: key.verifier().to_string(),
                envelope: dir.join(ENVELOPE_FILE).display().to_string(),
                warnings: report.warnings.clone(),
            };
            let _ = envelope;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print_report(&report);
                println!(
                    "built {}@{} ({}): {} files, {} bytes",
                    summary.name,
                    summary.version,
                    summary.package_type,
                    summary.files,
                    summary.size
                );
                println!("  package root     {}", summary.root);
                println!("  manifest digest  {}", summary.manifest_digest);
                println!("  signed by        {}", summary.publisher_key);
                println!("  envelope         {}", summary.envelope);
            }
            Ok(ExitCode::SUCCESS)
        }
        PackCommand::Verify { dir, key, json } => {
            let key = load_verifier(&key)?;
            let envelope = read_envelope(&dir)?;
            let (statement, report) = verify(&dir, &envelope, &key)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "ok": report.is_ok(),
                        "name": statement.as_ref().map(|s| s.name.clone()),
                        "version": statement.as_ref().map(|s| s.version.clone()),
                        "root": statement.as_ref().map(|s| format!("sha256:{}", s.tree.root().to_hex())),
                        "errors": report.errors,
                        "warnings": report.warnings,
                    }))?
                );
            } else {
                print_report(&report);
                if let (Some(s), true) = (&statement, report.is_ok()) {
                    println!(
                        "ok: {}@{} — {} files match the signature by {} (root sha256:{})",
                        s.name,
                        s.version,
                        s.tree.files().len(),
                        key.handle(),
                        s.tree.root().to_hex()
                    );
                }
            }
            Ok(if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
