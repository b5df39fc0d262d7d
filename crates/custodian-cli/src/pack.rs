//! `custodian key generate` and `custodian pack build|verify`: signing and checking Behavior
//! Packages on disk, offline.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::keys::{load_signer, load_verifier};
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

/// Package commands that work on a folder, offline.
#[derive(Subcommand)]
pub enum PackCommand {
    /// Hash every file, check the manifest and PromptPack resources, and sign the package
    #[command(
        long_about = "Build a package folder: hash every file (sha256), check manifest.yaml \
and any PromptPack resources (every problem is listed as file:line: field: message), compute \
the package root (an RFC 6962 Merkle root over the sorted `sha256:<hex> <size> <path>` lines) \
and sign an in-toto Statement over all of it as a DSSE envelope with your Ed25519 key. Writes \
.custodian/package.dsse.json and .custodian/publisher.pub.

What is packaged: every regular file except version-control folders (.git, .hg, .svn), \
Custodian's own .custodian/, and what must never ship — secrets and credentials (.env, .env.*, \
*.env, .envrc, *.key, *.pem, *.p12, *.pfx, *.jks, id_*, .netrc, .npmrc, .pypirc, .aws/, .ssh/), \
local state (out/, *.log, .venv/, __pycache__/) and editor and OS litter (.DS_Store, *.swp, *~, \
.idea/, .vscode/). A .custodianignore file in the folder adds patterns in gitignore syntax, and \
`!pattern` re-includes a default. --dry-run shows both lists. Symbolic links are refused.

Every file is then scanned for secrets (private keys of every format, Custodian's own \
PRIVATE+KEY+ keys, cloud and API tokens, secret-looking assignments in config files): a finding \
stops the build, naming the file and rule, unless --allow-secrets."
    )]
    Build {
        /// The package folder (with manifest.yaml)
        dir: PathBuf,
        /// Your private key: Ed25519 from `custodian key generate`, or with --format oms an
        /// ECDSA P-256, P-384 or P-521 key in PEM; not needed with --dry-run
        #[arg(
            long,
            env = "CUSTODIAN_PUBLISHER_KEY",
            value_name = "KEY_FILE",
            required_unless_present = "dry_run"
        )]
        key: Option<PathBuf>,
        /// custodian: sign .custodian/package.dsse.json (Ed25519, what `publish` sends); oms:
        /// write model.sig, an OpenSSF model-signing v1.0 signature that `model_signing verify
        /// key` checks (ECDSA)
        #[arg(long, value_enum, default_value = "custodian")]
        format: SignatureFormat,
        /// List what would be packaged and what is left out (and why), check and scan, but sign
        /// and write nothing
        #[arg(long)]
        dry_run: bool,
        /// Sign even though the secret scanner found credentials (the registry still refuses to
        /// publish them); for findings you have checked are not secrets
        #[arg(long)]
        allow_secrets: bool,
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
        #[arg(long, value_name = "VKEY", required_unless_present = "oms_key")]
        key: Option<String>,
        /// Also (or only) verify DIR/model.sig, an OpenSSF model-signing signature, with this
        /// ECDSA public key (PEM), against every file of the folder
        #[arg(long, value_name = "PEM")]
        oms_key: Option<PathBuf>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

/// What `pack build` signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SignatureFormat {
    /// Custodian's DSSE envelope in .custodian/ (Ed25519).
    Custodian,
    /// An OpenSSF model-signing v1.0 model.sig (ECDSA).
    Oms,
}

/// The file in a package folder that lists more files to leave out (gitignore syntax).
pub const IGNORE_FILE: &str = ".custodianignore";

/// What no package should ever ship, left out of every build unless `.custodianignore`
/// re-includes it with `!pattern` (gitignore syntax; a re-included file is still scanned for
/// secrets). Secrets first, then local state, then editor and OS litter.
pub const DEFAULT_EXCLUDES: &[&str] = &[
    // Secrets and credentials.
    ".env",
    ".env.*",
    "*.env",
    ".envrc",
    "*.key",
    "*.pem",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "*.kdbx",
    "id_*",
    ".netrc",
    ".npmrc",
    ".pypirc",
    ".aws/",
    ".ssh/",
    ".gnupg/",
    ".docker/config.json",
    // Local state and build output.
    ".custodian/",
    "out/",
    "*.log",
    ".venv/",
    "__pycache__/",
    "*.pyc",
    ".ipynb_checkpoints/",
    // Editor and OS litter.
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    "*.swp",
    "*.swo",
    "*~",
    ".idea/",
    ".vscode/",
    "*.orig",
    "*.rej",
];

/// A file or folder left out of a package, and the rule that left it out.
#[derive(Clone, Debug, Serialize)]
pub struct Excluded {
    /// The path relative to the package folder (folders end in `/`).
    pub path: String,
    /// The pattern that matched.
    pub pattern: String,
    /// Where the pattern comes from: `default` or `.custodianignore`.
    pub source: &'static str,
}

/// A package folder's files after exclusions.
pub struct Listing {
    /// Relative path → absolute path, sorted.
    pub files: BTreeMap<String, PathBuf>,
    /// What was left out, sorted.
    pub excluded: Vec<Excluded>,
}

/// The exclusion rules of a folder: the defaults, then its `.custodianignore` (later lines
/// win, as in gitignore, so `!name` re-includes).
fn exclusion_rules(dir: &Path) -> anyhow::Result<ignore::gitignore::Gitignore> {
    let mut builder = ignore::gitignore::GitignoreBuilder::new(dir);
    for pattern in DEFAULT_EXCLUDES {
        builder
            .add_line(None, pattern)
            .with_context(|| format!("default exclusion {pattern:?}"))?;
    }
    let user = dir.join(IGNORE_FILE);
    if user.exists() {
        let text = std::fs::read_to_string(&user)
            .with_context(|| format!("reading {}", user.display()))?;
        for (i, line) in text.lines().enumerate() {
            builder
                .add_line(Some(user.clone()), line)
                .with_context(|| format!("{}:{}: {line:?}", user.display(), i + 1))?;
        }
    }
    builder
        .build()
        .with_context(|| format!("the exclusion rules of {}", dir.display()))
}

/// The files of a package folder: relative path → absolute path, sorted.
pub fn list_files(dir: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    Ok(list_folder(dir)?.files)
}

/// The files of a package folder and what the exclusion rules left out. Version-control
/// folders and Custodian's own `.custodian/` are skipped without being listed.
pub fn list_folder(dir: &Path) -> anyhow::Result<Listing> {
    let rules = exclusion_rules(dir)?;
    let mut out = BTreeMap::new();
    let mut excluded = Vec::new();
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
            }
            // An OpenSSF model-signing signature beside the files is a signature, like
            // .custodian/, not content.
            if rel == custodian_core::oms::SIGNATURE_FILE && kind.is_file() {
                continue;
            }
            if let ignore::Match::Ignore(glob) = rules.matched(&path, kind.is_dir()) {
                excluded.push(Excluded {
                    path: if kind.is_dir() {
                        format!("{rel}/")
                    } else {
                        rel
                    },
                    pattern: glob.original().to_string(),
                    source: if glob.from().is_some() {
                        IGNORE_FILE
                    } else {
                        "default"
                    },
                });
                continue;
            }
            if kind.is_dir() {
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
    excluded.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Listing {
        files: out,
        excluded,
    })
}

/// Runs the built-in scanner (content, prompt, secret, URL and PII rules) over the files of a
/// folder, as the daemon does over a publication.
pub fn scan_folder(files: &BTreeMap<String, PathBuf>) -> anyhow::Result<custodian_scan::Report> {
    let limits = custodian_scan::Limits::default();
    let mut list = Vec::with_capacity(files.len());
    for (rel, abs) in files {
        list.push((rel.clone(), std::fs::metadata(abs)?.len()));
    }
    let mut open = |rel: &str| -> std::io::Result<Box<dyn std::io::Read>> {
        let abs = files
            .get(rel)
            .ok_or_else(|| std::io::Error::other(format!("no file {rel}")))?;
        Ok(Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(abs)?,
        )))
    };
    Ok(custodian_scan::package::scan_package(
        &list, &mut open, &limits,
    ))
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

/// Hashes a file with sha256 behind a progress bar on a terminal ("sha256 FILE").
pub(crate) fn hash_with_progress(path: &Path) -> anyhow::Result<(Digest, u64)> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let bar = crate::output::progress(len, format!("sha256 {}", path.display()));
    let hashed = hash_file_with(path, |n| bar.inc(n));
    bar.finish_and_clear();
    hashed
}

/// A package folder read from disk and checked.
pub struct LocalPackage {
    /// The files with their digests.
    pub files: Vec<FileEntry>,
    /// What the exclusion rules left out.
    pub excluded: Vec<Excluded>,
    /// The files on disk, by relative path.
    pub paths: BTreeMap<String, PathBuf>,
    /// The parsed manifest, when valid.
    pub manifest: Option<Manifest>,
    /// Problems found.
    pub report: Report,
}

/// Reads, hashes and checks a package folder.
pub fn read_package(dir: &Path) -> anyhow::Result<LocalPackage> {
    let Listing {
        files: paths,
        excluded,
    } = list_folder(dir)?;
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
        excluded,
        paths,
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

/// The secret findings of a scan, most severe first.
pub fn secret_findings(report: &custodian_scan::Report) -> Vec<custodian_scan::Finding> {
    report
        .findings
        .iter()
        .filter(|f| custodian_scan::secrets::is_secret_rule(&f.rule))
        .cloned()
        .collect()
}

/// Reads, checks and scans `dir`; fails listing every problem, and every secret unless
/// `allow_secrets`.
pub fn check(dir: &Path, allow_secrets: bool) -> anyhow::Result<LocalPackage> {
    let package = read_package(dir)?;
    if package.manifest.is_none() || !package.report.is_ok() {
        print_report(&package.report);
        bail!(
            "{} is not a valid package: {} problem(s), listed above",
            dir.display(),
            package.report.errors.len()
        );
    }
    let scan = scan_folder(&package.paths)?;
    let secrets = secret_findings(&scan);
    if !secrets.is_empty() {
        let label = if allow_secrets { "warning" } else { "error" };
        for f in &secrets {
            eprintln!("{label}: {}: {}: {}", f.file, f.rule, f.message);
        }
        if !allow_secrets {
            bail!(
                "{} holds {} secret(s), listed above: remove them (and revoke them), or leave the files out with {IGNORE_FILE}; \
                 --allow-secrets signs anyway, but no registry running Custodian publishes a package that carries one",
                dir.display(),
                secrets.len()
            );
        }
    }
    Ok(package)
}

/// Builds and signs `dir`; returns the statement and the envelope written.
pub fn build(
    dir: &Path,
    key: &SignerKey,
    allow_secrets: bool,
) -> anyhow::Result<(PackageStatement, Envelope, Report)> {
    let package = check(dir, allow_secrets)?;
    let Some(manifest) = package.manifest.as_ref() else {
        bail!("{} is not a valid package", dir.display());
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
    if !package.excluded.is_empty() {
        // Nothing is left out silently: the count here, the list with `--dry-run`.
        eprintln!(
            "left out {} file(s) or folder(s) by the exclusion rules ({}); `custodian pack build {} --dry-run` lists them",
            package.excluded.len(),
            package
                .excluded
                .iter()
                .take(5)
                .map(|e| e.path.as_str())
                .collect::<Vec<_>>()
                .join(", ")
                + if package.excluded.len() > 5 {
                    ", …"
                } else {
                    ""
                },
            dir.display()
        );
    }
    Ok((statement, envelope, package.report))
}

/// `pack build --dry-run`: what would be packaged, what is left out and why, and the scan.
fn dry_run(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let package = read_package(dir)?;
    let scan = scan_folder(&package.paths)?;
    let secrets = secret_findings(&scan);
    let ok = package.report.is_ok() && package.manifest.is_some() && secrets.is_empty();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": ok,
                "files": package.files.iter().map(|f| serde_json::json!({"path": f.path, "size": f.size, "sha256": f.sha256.to_string()})).collect::<Vec<_>>(),
                "excluded": package.excluded,
                "errors": package.report.errors,
                "warnings": package.report.warnings,
                "secrets": secrets,
            }))?
        );
    } else {
        println!("would package {} file(s):", package.files.len());
        for f in &package.files {
            println!("  {:>10}  {}", f.size, f.path);
        }
        if package.excluded.is_empty() {
            println!("left out: nothing");
        } else {
            println!("left out {} (pattern, from):", package.excluded.len());
            for e in &package.excluded {
                println!("  {}  ({}, {})", e.path, e.pattern, e.source);
            }
        }
        print_report(&package.report);
        for f in &secrets {
            eprintln!("error: {}: {}: {}", f.file, f.rule, f.message);
        }
        println!(
            "{}",
            if ok {
                "dry run: the package would build (nothing was signed or written)"
            } else {
                "dry run: the package would NOT build, for the problems above"
            }
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
        PackCommand::Build {
            dir,
            dry_run: true,
            json,
            ..
        } => dry_run(&dir, json),
        PackCommand::Build {
            dir,
            key,
            allow_secrets,
            json,
            format: SignatureFormat::Oms,
            ..
        } => {
            let key = crate::modelsig::load_private(&key.context("--key is required to sign")?)?;
            let package = check(&dir, allow_secrets)?;
            let Some(manifest) = package.manifest.as_ref() else {
                bail!("{} is not a valid package", dir.display());
            };
            let path =
                crate::modelsig::sign_package(&dir, &package.files, &package.excluded, &key)?;
            let public = key.public();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "name": manifest.name, "version": manifest.version.to_string(),
                        "files": package.files.len(), "signature": path.display().to_string(),
                        "format": "oms", "curve": public.curve(), "key_hint": public.hint(),
                        "warnings": package.report.warnings,
                    }))?
                );
            } else {
                print_report(&package.report);
                println!(
                    "signed {}@{} for OpenSSF model-signing: {} files",
                    manifest.name,
                    manifest.version,
                    package.files.len()
                );
                println!("  signature        {}", path.display());
                println!(
                    "  key              ECDSA {} (hint {})",
                    public.curve(),
                    public.hint()
                );
                println!(
                    "  check it with    model_signing verify key {} --signature {} --public-key PUBLIC.pem",
                    dir.display(),
                    path.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PackCommand::Build {
            dir,
            key,
            allow_secrets,
            json,
            ..
        } => {
            let key = load_signer(&key.context("--key is required to sign")?)?;
            let (statement, envelope, report) = build(&dir, &key, allow_secrets)?;
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
        PackCommand::Verify {
            dir,
            key,
            oms_key,
            json,
        } => {
            let oms = match &oms_key {
                Some(path) => {
                    let signed =
                        crate::modelsig::verify_folder(&dir, &crate::modelsig::load_public(path)?)?;
                    if !json {
                        println!(
                            "ok: {} matches its OpenSSF model-signing signature: {} files signed by the ECDSA key in {}",
                            dir.display(),
                            signed.files.len(),
                            path.display()
                        );
                    }
                    Some(signed.files.len())
                }
                None => None,
            };
            let Some(key) = key else {
                if json {
                    println!("{}", serde_json::json!({"ok": true, "oms": {"files": oms}}));
                }
                return Ok(ExitCode::SUCCESS);
            };
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
                        "oms": oms.map(|files| serde_json::json!({"files": files})),
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
