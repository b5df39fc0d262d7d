//! Signed Behavior Packages: the file list, the package root and the signed in-toto Statement.
//!
//! A package is a folder with `manifest.yaml` and its files. Publishing signs an in-toto
//! Statement v1 (<https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md>) in a
//! DSSE envelope: one subject per file (its path and sha256), and a predicate of type
//! [`PACKAGE_PREDICATE_TYPE`] with the name, version, type, manifest digest, every file's size and
//! the **package root**: the RFC 6962 Merkle root over the files sorted by path, where the leaf
//! for a file is the text line `sha256:<hex> <size> <path>\n`. An inclusion proof against the
//! root shows that a file belongs to a signed package without the rest of the list.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::digest::{Algorithm, Digest};
use crate::dsse::{DsseError, Envelope, INTOTO_PAYLOAD_TYPE};
use crate::merkle::{self, Frontier, Hash, ProofError};
use crate::note::{SignerKey, VerifierKey};

/// The in-toto Statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The predicate type of a signed Behavior Package.
pub const PACKAGE_PREDICATE_TYPE: &str = "https://custodian.dev/behavior-package/v1";
/// The manifest's path inside a package.
pub const MANIFEST_FILE: &str = "manifest.yaml";
/// The folder that holds Custodian's own files inside a package folder; never part of the package.
pub const META_DIR: &str = ".custodian";
/// Where `pack build` writes the signed envelope, relative to the package folder.
pub const ENVELOPE_FILE: &str = ".custodian/package.dsse.json";
/// The most files a package may have (its signed statement must fit in one ledger entry).
pub const MAX_FILES: usize = 2048;
/// The longest path, in bytes.
pub const MAX_PATH_LEN: usize = 512;

/// Why a package, its file list or its signature is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackageError {
    /// A file path that could escape the package or is otherwise not portable.
    #[error("file path {path:?} is not allowed: {reason}")]
    Path {
        /// The path as given.
        path: String,
        /// Why.
        reason: String,
    },
    /// Two files with the same path (or paths equal ignoring case).
    #[error("file path {path:?} appears twice (paths must be unique, also ignoring case)")]
    Duplicate {
        /// The path.
        path: String,
    },
    /// More than [`MAX_FILES`] files.
    #[error(
        "the package has {count} files, more than the {max} allowed; put bulk data in a data pack"
    )]
    TooManyFiles {
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// There is no `manifest.yaml`.
    #[error("the package has no manifest.yaml at its top level")]
    NoManifest,
    /// The statement is malformed or inconsistent.
    #[error("the package statement is invalid: {0}")]
    Statement(String),
    /// The stated root differs from the root of the stated files.
    #[error("the package root does not match its files: stated {stated}, computed {computed}")]
    Root {
        /// What the statement says.
        stated: String,
        /// What the files give.
        computed: String,
    },
    /// The envelope does not verify.
    #[error(transparent)]
    Signature(#[from] DsseError),
}

/// Checks that a package path is relative, `/`-separated and cannot escape the package folder.
pub fn check_path(path: &str) -> Result<(), PackageError> {
    let fail = |reason: &str| {
        Err(PackageError::Path {
            path: path.to_string(),
            reason: reason.to_string(),
        })
    };
    if path.is_empty() {
        return fail("it is empty");
    }
    if path.len() > MAX_PATH_LEN {
        return fail(&format!("it is longer than {MAX_PATH_LEN} bytes"));
    }
    if path.starts_with('/') {
        return fail("it is absolute; paths are relative to the package folder");
    }
    if path.contains('\\') {
        return fail("it contains a backslash; use / between folders");
    }
    if path.chars().any(char::is_control) {
        return fail("it contains a control character");
    }
    let bytes = path.as_bytes();
    if bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic() {
        return fail("it starts with a drive letter");
    }
    for component in path.split('/') {
        match component {
            "" => return fail("it has an empty component (// or a trailing /)"),
            "." => return fail("it has a . component"),
            ".." => return fail("it has a .. component, which would escape the package"),
            _ => {}
        }
    }
    if path == META_DIR || path.starts_with(".custodian/") {
        return fail(
            "the .custodian folder holds the package signature and is not package content",
        );
    }
    Ok(())
}

/// One file of a package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// The path relative to the package folder.
    pub path: String,
    /// Its sha256 digest.
    pub sha256: Digest,
    /// Its size in bytes.
    pub size: u64,
}

impl FileEntry {
    /// The Merkle leaf data: `sha256:<hex> <size> <path>\n`.
    pub fn leaf_data(&self) -> String {
        format!("{} {} {}\n", self.sha256, self.size, self.path)
    }
}

/// A package's files sorted by path, with the Merkle tree over them.
#[derive(Clone, Debug)]
pub struct FileTree {
    files: Vec<FileEntry>,
    stored: Vec<Hash>,
    root: Hash,
}

impl FileTree {
    /// Sorts and checks the files (paths, duplicates, count, a manifest) and builds the tree.
    pub fn new(mut files: Vec<FileEntry>) -> Result<FileTree, PackageError> {
        if files.len() > MAX_FILES {
            return Err(PackageError::TooManyFiles {
                count: files.len(),
                max: MAX_FILES,
            });
        }
        files.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        let mut seen = BTreeSet::new();
        for file in &files {
            check_path(&file.path)?;
            if file.sha256.algorithm() != Algorithm::Sha256 {
                return Err(PackageError::Statement(format!(
                    "file {:?} has digest {}; package files are listed by sha256",
                    file.path, file.sha256
                )));
            }
            if !seen.insert(file.path.to_lowercase()) {
                return Err(PackageError::Duplicate {
                    path: file.path.clone(),
                });
            }
        }
        if !files.iter().any(|f| f.path == MANIFEST_FILE) {
            return Err(PackageError::NoManifest);
        }
        let mut frontier = Frontier::new();
        let mut stored = Vec::new();
        for file in &files {
            stored.extend(frontier.append(merkle::leaf_hash(file.leaf_data().as_bytes())));
        }
        Ok(FileTree {
            root: frontier.root(),
            files,
            stored,
        })
    }

    /// The files, sorted by path.
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    /// The package root.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// The manifest's entry.
    pub fn manifest(&self) -> &FileEntry {
        // `new` guarantees that a manifest is present.
        self.files
            .iter()
            .find(|f| f.path == MANIFEST_FILE)
            .unwrap_or(&self.files[0])
    }

    /// The entry for `path`, if the package has it.
    pub fn get(&self, path: &str) -> Option<&FileEntry> {
        self.files
            .binary_search_by(|f| f.path.as_bytes().cmp(path.as_bytes()))
            .ok()
            .map(|i| &self.files[i])
    }

    /// An RFC 6962 inclusion proof that `path` is in the package: its leaf index and the proof.
    pub fn proof(&self, path: &str) -> Option<(u64, Vec<Hash>)> {
        let index = self
            .files
            .binary_search_by(|f| f.path.as_bytes().cmp(path.as_bytes()))
            .ok()? as u64;
        let proof = merkle::inclusion_proof(index, self.files.len() as u64, &self.stored).ok()?;
        Some((index, proof))
    }
}

/// Checks a single-file proof from [`FileTree::proof`] against a signed package root.
pub fn verify_file_proof(
    root: &Hash,
    file_count: u64,
    index: u64,
    file: &FileEntry,
    proof: &[Hash],
) -> Result<(), ProofError> {
    let leaf = merkle::leaf_hash(file.leaf_data().as_bytes());
    merkle::verify_inclusion(index, file_count, &leaf, proof, root)
}

/// An in-toto Statement v1 as JSON, with the predicate type `P`; shared by package and run
/// statements.
#[derive(Serialize, Deserialize)]
pub(crate) struct WireStatement<P> {
    #[serde(rename = "_type")]
    pub(crate) statement_type: String,
    pub(crate) subject: Vec<WireSubject>,
    #[serde(rename = "predicateType")]
    pub(crate) predicate_type: String,
    pub(crate) predicate: P,
}

/// One in-toto subject: a name and its digests by algorithm.
#[derive(Serialize, Deserialize)]
pub(crate) struct WireSubject {
    pub(crate) name: String,
    pub(crate) digest: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct WirePredicate {
    name: String,
    version: String,
    #[serde(rename = "type")]
    package_type: String,
    manifest: String,
    root: String,
    files: Vec<WireFile>,
}

#[derive(Serialize, Deserialize)]
struct WireFile {
    path: String,
    sha256: String,
    size: u64,
}

/// What a package publisher signs: who the package is and exactly which bytes it is made of.
#[derive(Clone, Debug)]
pub struct PackageStatement {
    /// The package name.
    pub name: String,
    /// Its semver version.
    pub version: String,
    /// The manifest's `type`.
    pub package_type: String,
    /// The files and their tree.
    pub tree: FileTree,
}

impl PackageStatement {
    /// A statement over `files`; fails if the file list is not a valid package.
    pub fn new(
        name: &str,
        version: &str,
        package_type: &str,
        files: Vec<FileEntry>,
    ) -> Result<Self, PackageError> {
        Ok(PackageStatement {
            name: name.to_string(),
            version: version.to_string(),
            package_type: package_type.to_string(),
            tree: FileTree::new(files)?,
        })
    }

    /// The manifest digest: the subject attestations about this package version name.
    pub fn manifest_digest(&self) -> Digest {
        self.tree.manifest().sha256
    }

    /// The statement's JSON bytes (what the envelope carries).
    pub fn to_json(&self) -> Vec<u8> {
        let files = self.tree.files();
        let wire = WireStatement {
            statement_type: STATEMENT_TYPE.into(),
            subject: files
                .iter()
                .map(|f| WireSubject {
                    name: f.path.clone(),
                    digest: BTreeMap::from([("sha256".to_string(), f.sha256.hex())]),
                })
                .collect(),
            predicate_type: PACKAGE_PREDICATE_TYPE.into(),
            predicate: WirePredicate {
                name: self.name.clone(),
                version: self.version.clone(),
                package_type: self.package_type.clone(),
                manifest: self.manifest_digest().to_string(),
                root: format!("sha256:{}", self.tree.root().to_hex()),
                files: files
                    .iter()
                    .map(|f| WireFile {
                        path: f.path.clone(),
                        sha256: f.sha256.to_string(),
                        size: f.size,
                    })
                    .collect(),
            },
        };
        // Plain structs of strings and integers always serialize.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Parses statement JSON and checks that it is consistent: the types, every path, the
    /// subjects against the files, the manifest digest and the root.
    pub fn from_json(bytes: &[u8]) -> Result<Self, PackageError> {
        let bad = |m: String| PackageError::Statement(m);
        let wire: WireStatement<WirePredicate> =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a statement: {e}")))?;
        if wire.statement_type != STATEMENT_TYPE {
            return Err(bad(format!(
                "_type is {:?}, expected {STATEMENT_TYPE:?}",
                wire.statement_type
            )));
        }
        if wire.predicate_type != PACKAGE_PREDICATE_TYPE {
            return Err(bad(format!(
                "predicateType is {:?}, expected {PACKAGE_PREDICATE_TYPE:?}",
                wire.predicate_type
            )));
        }
        let p = wire.predicate;
        let mut files = Vec::with_capacity(p.files.len());
        for f in p.files {
            let sha256: Digest = f
                .sha256
                .parse()
                .map_err(|e| bad(format!("predicate.files {:?}: sha256: {e}", f.path)))?;
            files.push(FileEntry {
                path: f.path,
                sha256,
                size: f.size,
            });
        }
        let statement = PackageStatement::new(&p.name, &p.version, &p.package_type, files)?;
        let files = statement.tree.files();
        if wire.subject.len() != files.len() {
            return Err(bad(format!(
                "{} subjects for {} files; each file is one subject",
                wire.subject.len(),
                files.len()
            )));
        }
        let mut subjects: Vec<&WireSubject> = wire.subject.iter().collect();
        subjects.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        for (subject, file) in subjects.iter().zip(files) {
            if subject.name != file.path || subject.digest.get("sha256") != Some(&file.sha256.hex())
            {
                return Err(bad(format!(
                    "subject {:?} does not match file {:?} ({})",
                    subject.name, file.path, file.sha256
                )));
            }
        }
        if p.manifest != statement.manifest_digest().to_string() {
            return Err(bad(format!(
                "predicate.manifest is {}, but manifest.yaml is {}",
                p.manifest,
                statement.manifest_digest()
            )));
        }
        let computed = format!("sha256:{}", statement.tree.root().to_hex());
        if p.root != computed {
            return Err(PackageError::Root {
                stated: p.root,
                computed,
            });
        }
        Ok(statement)
    }

    /// Signs the statement into a DSSE envelope.
    pub fn sign(&self, key: &SignerKey) -> Envelope {
        Envelope::sign(INTOTO_PAYLOAD_TYPE, &self.to_json(), key)
    }

    /// Verifies `envelope` with `key` and returns the statement it carries.
    pub fn open(envelope: &Envelope, key: &VerifierKey) -> Result<Self, PackageError> {
        let payload = envelope.verify(INTOTO_PAYLOAD_TYPE, key)?;
        PackageStatement::from_json(&payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, data: &[u8]) -> FileEntry {
        FileEntry {
            path: path.into(),
            sha256: Digest::of(Algorithm::Sha256, data),
            size: data.len() as u64,
        }
    }

    fn files() -> Vec<FileEntry> {
        vec![
            entry("prompts/system.md", b"You are helpful."),
            entry(MANIFEST_FILE, b"name: x\n"),
            entry("evals/cases.jsonl", b"{}\n"),
        ]
    }

    #[test]
    fn paths_that_escape_or_do_not_port_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "C:/x",
            "a\nb",
            ".custodian/package.dsse.json",
            ".custodian",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} must be refused");
        }
        for good in ["manifest.yaml", "a/b/c.txt", ".hidden", "a..b", "x y.md"] {
            check_path(good).expect(good);
        }
        assert!(check_path(&"a".repeat(MAX_PATH_LEN + 1)).is_err());
    }

    #[test]
    fn tree_sorts_and_rejects_duplicates_and_missing_manifests() {
        let tree = FileTree::new(files()).expect("valid");
        let paths: Vec<&str> = tree.files().iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["evals/cases.jsonl", "manifest.yaml", "prompts/system.md"]
        );
        let mut dup = files();
        dup.push(entry("Manifest.yaml", b"other"));
        assert!(matches!(
            FileTree::new(dup),
            Err(PackageError::Duplicate { .. })
        ));
        assert_eq!(
            FileTree::new(vec![entry("a.txt", b"")]).err(),
            Some(PackageError::NoManifest)
        );
    }

    #[test]
    fn root_is_rfc6962_over_the_leaf_lines() {
        let tree = FileTree::new(files()).expect("valid");
        let leaves: Vec<Hash> = tree
            .files()
            .iter()
            .map(|f| merkle::leaf_hash(f.leaf_data().as_bytes()))
            .collect();
        // MTH of three leaves: node(node(l0, l1), l2).
        let expected = merkle::node_hash(&merkle::node_hash(&leaves[0], &leaves[1]), &leaves[2]);
        assert_eq!(tree.root(), expected);
        assert_eq!(
            tree.files()[0].leaf_data(),
            format!(
                "{} 3 evals/cases.jsonl\n",
                Digest::of(Algorithm::Sha256, b"{}\n")
            )
        );
        for file in tree.files() {
            let (index, proof) = tree.proof(&file.path).expect("present");
            verify_file_proof(&tree.root(), 3, index, file, &proof).expect("proof verifies");
            let mut forged = file.clone();
            forged.size += 1;
            assert!(verify_file_proof(&tree.root(), 3, index, &forged, &proof).is_err());
        }
        assert!(tree.proof("missing").is_none());
    }

    #[test]
    fn statement_round_trips_and_detects_inconsistency() {
        let key = SignerKey::from_seed("alice", [1; 32]).expect("key");
        let statement =
            PackageStatement::new("demo", "1.0.0", "prompt_template", files()).expect("valid");
        let envelope = statement.sign(&key);
        let opened = PackageStatement::open(&envelope, &key.verifier()).expect("opens");
        assert_eq!(opened.tree.root(), statement.tree.root());
        assert_eq!(opened.to_json(), statement.to_json());

        // Change one file's size in the predicate: the root no longer matches.
        let mut json: serde_json::Value =
            serde_json::from_slice(&statement.to_json()).expect("json");
        json["predicate"]["files"][0]["size"] = 99.into();
        let err = PackageStatement::from_json(&serde_json::to_vec(&json).expect("json"));
        assert!(matches!(err, Err(PackageError::Root { .. })), "{err:?}");

        // A subject whose digest differs from its file.
        let mut json: serde_json::Value =
            serde_json::from_slice(&statement.to_json()).expect("json");
        json["subject"][1]["digest"]["sha256"] = "00".repeat(32).into();
        assert!(matches!(
            PackageStatement::from_json(&serde_json::to_vec(&json).expect("json")),
            Err(PackageError::Statement(_))
        ));

        // A path that escapes the package.
        let mut json: serde_json::Value =
            serde_json::from_slice(&statement.to_json()).expect("json");
        json["predicate"]["files"][2]["path"] = "../../etc/cron.d/x".into();
        assert!(matches!(
            PackageStatement::from_json(&serde_json::to_vec(&json).expect("json")),
            Err(PackageError::Path { .. })
        ));
    }
}
