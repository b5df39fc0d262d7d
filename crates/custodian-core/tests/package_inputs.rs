//! Packages: the worked example of docs/formats.md (its root was computed independently with
//! Python's hashlib), and hostile input never panics the manifest, PromptPack, envelope or
//! statement parsers, and a mutated envelope never verifies to a different statement.

use std::collections::{BTreeMap, BTreeSet};

use custodian_core::datapack::DataPackSpec;
use custodian_core::dsse::Envelope;
use custodian_core::manifest::Manifest;
use custodian_core::note::SignerKey;
use custodian_core::package::{FileEntry, PackageStatement};
use custodian_core::{Algorithm, Digest, promptpack};
use proptest::prelude::*;

const MANIFEST: &[u8] =
    b"name: demo\nversion: 1.0.0\ntype: prompt_spec\nbase_model: m\nlicense: MIT\n";

fn files() -> Vec<FileEntry> {
    [
        ("manifest.yaml", MANIFEST),
        ("prompts/system.md", b"You are helpful.\n".as_slice()),
        ("evals/cases.jsonl", b"{}\n".as_slice()),
    ]
    .iter()
    .map(|(path, data)| FileEntry {
        path: path.to_string(),
        sha256: Digest::of(Algorithm::Sha256, data),
        size: data.len() as u64,
    })
    .collect()
}

fn signer() -> SignerKey {
    SignerKey::from_seed("example.publisher", [0; 32]).expect("key")
}

/// docs/formats.md, "Package root": three files, their leaf lines and the root, which Python's
/// hashlib gave for the same lines (`sha256(b"\x00" + line)`, `sha256(b"\x01" + l + r)`).
#[test]
fn worked_example_root() {
    let statement =
        PackageStatement::new("demo", "1.0.0", "prompt_spec", files()).expect("valid package");
    let lines: Vec<String> = statement
        .tree
        .files()
        .iter()
        .map(FileEntry::leaf_data)
        .collect();
    assert_eq!(
        lines,
        [
            "sha256:ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356 3 evals/cases.jsonl\n",
            "sha256:903dd014f0aad19196a99b77bff4db2bad462f5dce7722af2edfe340ef2a7cfe 71 manifest.yaml\n",
            "sha256:4b4246f390dadec7e7af966a981c1fe88a05388863d468470b2ad9605e21cadf 17 prompts/system.md\n",
        ]
    );
    assert_eq!(
        statement.tree.root().to_hex(),
        "027ce9f22ddca1f835ac7c9d7d4d2f098c1c2dbbac75b0d50f8e10ab218cd710"
    );
    // Ed25519 signatures are deterministic, so the envelope of the example is fixed too.
    let envelope = statement.sign(&signer());
    assert_eq!(envelope.signatures[0].keyid, signer().verifier().handle());
    assert_eq!(envelope, statement.sign(&signer()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let (_, report) = Manifest::parse("manifest.yaml", &text, Some(&BTreeSet::new()));
        for problem in &report.errors {
            prop_assert_eq!(&problem.file, "manifest.yaml");
        }
        let yaml = BTreeMap::from([("a.yaml".to_string(), format!("apiVersion: promptkit.altairalabs.ai/v1alpha1\nkind: Arena\n{text}"))]);
        let _ = promptpack::validate(&yaml, &BTreeSet::new(), &[]);
        let _ = Envelope::parse(&bytes);
        let _ = PackageStatement::from_json(&bytes);
        let _ = serde_json::from_slice::<DataPackSpec>(&bytes).map(|s| s.problems());
    }

    #[test]
    fn mutated_manifests_report_lines_within_the_file(at in any::<usize>(), byte in 0x20u8..0x7f) {
        let mut text = MANIFEST.to_vec();
        let i = at % text.len();
        text[i] = byte;
        let text = String::from_utf8(text).expect("ascii");
        let (manifest, report) = Manifest::parse("manifest.yaml", &text, None);
        prop_assert!(manifest.is_some() || !report.errors.is_empty());
        let lines = text.lines().count() + 1;
        for problem in report.errors.iter().chain(&report.warnings) {
            prop_assert!(problem.line.is_none_or(|l| (1..=lines).contains(&l)), "{problem}");
        }
    }

    #[test]
    fn a_mutated_envelope_never_verifies_to_another_statement(at in any::<usize>(), byte in any::<u8>()) {
        let statement = PackageStatement::new("demo", "1.0.0", "prompt_spec", files()).expect("valid");
        let json = statement.sign(&signer()).to_json().into_bytes();
        let mut bad = json.clone();
        let i = at % bad.len();
        bad[i] = byte;
        if let Ok(envelope) = Envelope::parse(&bad)
            && let Ok(opened) = PackageStatement::open(&envelope, &signer().verifier())
        {
            prop_assert_eq!(opened.to_json(), statement.to_json());
        }
    }
}
