//! Every inclusion and consistency case of `transparency-dev/merkle` (commit 417fb0c3, folder
//! `testdata/`, copied to `testdata/transparency-dev-merkle/`): happy paths must verify and every
//! mutated case must fail.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use custodian_core::merkle::{Hash, ProofError, verify_consistency, verify_inclusion};
use serde::Deserialize;

fn vectors(kind: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/transparency-dev-merkle")
        .join(kind);
    let mut files = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("test data folder") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn hash(text: &str) -> Result<Hash, ProofError> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| ProofError::Read(format!("bad base64 in the vector: {e}")))?;
    Hash::from_slice(&bytes)
}

fn hashes(list: &Option<Vec<String>>) -> Result<Vec<Hash>, ProofError> {
    list.iter().flatten().map(|h| hash(h)).collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Inclusion {
    leaf_idx: u64,
    tree_size: u64,
    root: String,
    leaf_hash: String,
    proof: Option<Vec<String>>,
    desc: String,
    want_err: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Consistency {
    size1: u64,
    size2: u64,
    root1: String,
    root2: String,
    proof: Option<Vec<String>>,
    desc: String,
    want_err: bool,
}

#[test]
fn inclusion_vectors() {
    let files = vectors("inclusion");
    assert!(
        files.len() >= 98,
        "only {} inclusion vectors found",
        files.len()
    );
    let (mut happy, mut negative) = (0, 0);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read vector");
        let case: Inclusion = serde_json::from_str(&text).expect("parse vector");
        let result = (|| {
            let root = hash(&case.root)?;
            let leaf = hash(&case.leaf_hash)?;
            let proof = hashes(&case.proof)?;
            verify_inclusion(case.leaf_idx, case.tree_size, &leaf, &proof, &root)
        })();
        match (case.want_err, result) {
            (false, Ok(())) => happy += 1,
            (true, Err(_)) => negative += 1,
            (want_err, result) => panic!(
                "{}: {:?}: want_err={want_err}, got {result:?}",
                file.display(),
                case.desc
            ),
        }
    }
    assert_eq!((happy, negative), (6, 92), "happy and negative cases");
}

#[test]
fn consistency_vectors() {
    let files = vectors("consistency");
    assert!(
        files.len() >= 98,
        "only {} consistency vectors found",
        files.len()
    );
    let (mut happy, mut negative, mut stricter) = (0, 0, 0);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read vector");
        let case: Consistency = serde_json::from_str(&text).expect("parse vector");
        let result = (|| {
            let root1 = hash(&case.root1)?;
            let root2 = hash(&case.root2)?;
            let proof = hashes(&case.proof)?;
            verify_consistency(case.size1, case.size2, &proof, &root1, &root2)
        })();
        match (case.want_err, result) {
            (false, Ok(())) => happy += 1,
            (true, Err(_)) => negative += 1,
            // The one documented deviation: Go accepts equal sizes with equal roots of any
            // length; Custodian rejects any hash that is not 32 bytes before comparing anything.
            (false, Err(ProofError::WrongHashLength { got: 12 }))
                if case.desc == "sizes are equal (one) and proof is empty" =>
            {
                stricter += 1
            }
            (want_err, result) => panic!(
                "{}: {:?}: want_err={want_err}, got {result:?}",
                file.display(),
                case.desc
            ),
        }
    }
    assert_eq!(stricter, 1);
    assert_eq!((happy, negative), (5, 92), "happy and negative cases");
}
