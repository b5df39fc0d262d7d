//! OpenSSF model-signing (OMS) v1.0 on the command line: `pack build --format oms` writes a
//! `model.sig` the `model_signing` tool verifies, and `pack verify --oms-key`, `publish
//! --oms-key` and `install` read one (see `custodian_core::oms`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use custodian_core::Digest;
use custodian_core::oms::{self, PrivateKey, PublicKey, SIGNATURE_FILE, Signed};
use custodian_core::package::{FileEntry, META_DIR};

/// Reads an ECDSA public key (PEM) for OMS.
pub fn load_public(path: &Path) -> anyhow::Result<PublicKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read OMS public key {}", path.display()))?;
    PublicKey::from_pem(&text).with_context(|| format!("OMS public key {}", path.display()))
}

/// Reads an ECDSA private key (PEM) for OMS.
pub fn load_private(path: &Path) -> anyhow::Result<PrivateKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read OMS key {}", path.display()))?;
    PrivateKey::from_pem(&text).with_context(|| format!("OMS key {}", path.display()))
}

/// What the OMS signature leaves out of a package folder: Custodian's metadata, the signature
/// itself, version-control folders and everything the package's exclusion rules left out — so
/// that `model_signing` hashing the folder sees exactly the package's files.
pub fn ignore_paths(excluded: &[crate::pack::Excluded]) -> Vec<String> {
    let mut paths: Vec<String> = [META_DIR, ".hg", ".svn", SIGNATURE_FILE]
        .iter()
        .map(|s| s.to_string())
        .chain(
            excluded
                .iter()
                .map(|e| e.path.trim_end_matches('/').to_string()),
        )
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// Signs a built package's files as `DIR/model.sig`; returns its path.
pub fn sign_package(
    dir: &Path,
    files: &[FileEntry],
    excluded: &[crate::pack::Excluded],
    key: &PrivateKey,
) -> anyhow::Result<PathBuf> {
    let model_name = std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let signed: BTreeMap<String, Digest> =
        files.iter().map(|f| (f.path.clone(), f.sha256)).collect();
    let text = oms::sign(&model_name, &signed, &ignore_paths(excluded), key);
    let path = dir.join(SIGNATURE_FILE);
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Every regular file of a folder as `model_signing` hashes it: all but the signature's
/// `ignore_paths`, the git paths, the signature file and Custodian's own `.custodian/` (its
/// metadata, never package content).
fn folder_files(dir: &Path, ignore: &[String]) -> anyhow::Result<BTreeMap<String, Digest>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in
            std::fs::read_dir(&folder).with_context(|| format!("reading {}", folder.display()))?
        {
            let entry = entry?;
            let path = entry.path();
            let rel = path
                .strip_prefix(dir)
                .context("walking the folder")?
                .to_str()
                .with_context(|| format!("{} is not a UTF-8 path", path.display()))?
                .replace(std::path::MAIN_SEPARATOR, "/");
            if rel == SIGNATURE_FILE || rel == META_DIR || oms::ignored(&rel, ignore) {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                bail!("{rel} is a symbolic link, which an OMS files signature does not cover");
            } else if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                out.insert(rel, crate::pack::hash_file(&path)?.0);
            }
        }
    }
    Ok(out)
}

/// Verifies `DIR/model.sig` with `key` against the folder's files; returns what it signs, or
/// an error listing every file that differs.
pub fn verify_folder(dir: &Path, key: &PublicKey) -> anyhow::Result<Signed> {
    let path = dir.join(SIGNATURE_FILE);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (an OpenSSF model-signing signature)",
            path.display()
        )
    })?;
    let signed = oms::verify(&bytes, key).with_context(|| format!("{}", path.display()))?;
    let actual = folder_files(dir, &signed.ignore_paths)?;
    let differences = oms::differences(&signed.files, &actual);
    if !differences.is_empty() {
        bail!(
            "{} does not match the folder: {}",
            path.display(),
            differences.join("; ")
        );
    }
    Ok(signed)
}
