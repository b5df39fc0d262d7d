//! Badge bundles, built here from scratch (entries, RFC 6962 tree, signed checkpoint) and checked
//! by `bundle::verify`: the honest bundle verifies, and changing any part — the badge, an entry, a
//! proof hash, the checkpoint, a signature — fails, naming the part.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use custodian_core::attestation::{RunPredicate, RunStatement, Runner, fingerprint};
use custodian_core::badge::{self, Badge, Evidence, Run, Scan, State};
use custodian_core::bundle::{Bundle, BundleError, verify};
use custodian_core::checkpoint::Checkpoint;
use custodian_core::entry::Entry;
use custodian_core::manifest::Manifest;
use custodian_core::merkle::{self, Frontier, Hash};
use custodian_core::note::SignerKey;
use custodian_core::package::{FileEntry, PackageStatement};
use custodian_core::prereg::{PreregStatement, Preregistration, RunFacts};
use custodian_core::registry::{
    EvalPreregistered, KeyEvent, PackagePublished, RunAttested, ScanRecorded, to_payload,
};
use custodian_core::{Algorithm, Digest};

const MANIFEST: &[u8] = b"name: demo\nversion: 1.0.0\ntype: prompt_spec\nbase_model: [m1, m2]\nevals: [a, b]\nlicense: MIT\n";
const T0: u64 = 1_795_600_800_000;
const HARNESS: &str = "sha256:5555555555555555555555555555555555555555555555555555555555555555";

/// The reproducibility context of the fixture's run `i`: the pre-registered harness and sample.
fn context(i: usize) -> serde_json::Value {
    serde_json::json!({"seed": i, "harness_sha256": HARNESS, "sample_size": 10})
}

struct Log {
    entries: Vec<Vec<u8>>,
    prev: Hash,
}

impl Log {
    fn append<T: custodian_core::registry::Event>(&mut self, event: &T) -> u64 {
        let index = self.entries.len() as u64;
        let entry = Entry::new(
            T::KIND,
            self.prev,
            T0 + index,
            to_payload(event).expect("payload"),
        )
        .expect("entry");
        self.prev = entry.leaf_hash();
        self.entries.push(entry.encode());
        index
    }
}

struct Fixture {
    log_key: SignerKey,
    bundle: Bundle,
}

/// A log with a publication, an attester registration, one run per eval × model (the last one
/// `last_passes`), a clean scan, and the bundle the server would give.
fn fixture(last_passes: bool) -> Fixture {
    let log_key = SignerKey::from_seed("bundle.test/log", [1; 32]).expect("key");
    let publisher = SignerKey::from_seed("publisher", [2; 32]).expect("key");
    let attester = SignerKey::from_seed("attester", [3; 32]).expect("key");
    let manifest = Digest::of(Algorithm::Sha256, MANIFEST);
    let statement = PackageStatement::new(
        "demo",
        "1.0.0",
        "prompt_spec",
        vec![FileEntry {
            path: "manifest.yaml".into(),
            sha256: manifest,
            size: MANIFEST.len() as u64,
        }],
    )
    .expect("statement");
    let root = format!("sha256:{}", statement.tree.root().to_hex());
    let mut log = Log {
        entries: Vec::new(),
        prev: Hash::ZERO,
    };
    let publication = log.append(&PackagePublished {
        name: "demo".into(),
        version: "1.0.0".into(),
        package_type: "prompt_spec".into(),
        manifest: manifest.to_string(),
        root: root.clone(),
        files: 1,
        size: MANIFEST.len() as u64,
        publisher_key: publisher.verifier().to_string(),
        envelope: statement.sign(&publisher).to_json(),
        private: false,
        oms_signature: None,
        oms_public_key: None,
    });
    log.append(&KeyEvent::introduce(
        "attester",
        attester.verifier().to_string(),
        "t1".into(),
        vec!["*".into()],
    ));
    // Policy v4: each eval's criteria are pre-registered by the publisher before its runs.
    let mut preregistrations = Vec::new();
    for eval in ["a", "b"] {
        let statement = PreregStatement::new(
            manifest,
            serde_json::from_value(serde_json::json!({
                "package": "demo", "version": "1.0.0", "eval_id": eval, "metric": "score",
                "comparator": ">=", "threshold": 0.5, "sample_size": 10, "harness_sha256": HARNESS
            }))
            .expect("predicate"),
        )
        .expect("statement");
        let envelope = statement.sign(&publisher);
        let event: EvalPreregistered = statement.to_event(&publisher.verifier(), &envelope, false);
        let index = log.append(&event);
        preregistrations.push(Preregistration::from_event(index, &event).expect("reads"));
    }
    let mut runs = Vec::new();
    let pairs = [("a", "m1"), ("a", "m2"), ("b", "m1"), ("b", "m2")];
    for (i, (eval, model)) in pairs.iter().enumerate() {
        let passed = i < 3 || last_passes;
        let run = RunStatement::new(
            manifest,
            RunPredicate {
                package: "demo".into(),
                version: "1.0.0".into(),
                eval_id: eval.to_string(),
                model: model.to_string(),
                passed,
                metrics: serde_json::from_value(serde_json::json!({"score": 0.9}))
                    .expect("metrics"),
                data_pack_sha256: None,
                reproducibility_context: context(i),
                started_at: "2026-11-25T10:00:00Z".into(),
                finished_at: "2026-11-25T10:01:00Z".into(),
                runner: Runner {
                    id: "ci".into(),
                    version: None,
                },
            },
        )
        .expect("run");
        let index = log.append(&RunAttested {
            name: "demo".into(),
            version: "1.0.0".into(),
            manifest: manifest.to_string(),
            eval_id: eval.to_string(),
            model: model.to_string(),
            passed,
            data_pack_sha256: None,
            context_sha256: fingerprint(&context(i)),
            runner: "ci".into(),
            finished_ms: run.finished_ms,
            attester_key: attester.verifier().to_string(),
            envelope: run.sign(&attester).to_json(),
            private: false,
        });
        runs.push(Run {
            index,
            time_ms: T0 + index,
            eval_id: eval.to_string(),
            model: model.to_string(),
            passed,
            data_pack_sha256: None,
            problem: None,
            facts: RunFacts::of(&run.predicate),
            key: None,
        });
    }
    let scan = log.append(&ScanRecorded {
        name: "demo".into(),
        version: "1.0.0".into(),
        scanner: "s".into(),
        verdict: "clean".into(),
        root: root.clone(),
        findings: "[]".into(),
        private: false,
        target: None,
    });
    let parsed = Manifest::parse(
        "manifest.yaml",
        std::str::from_utf8(MANIFEST).expect("utf-8"),
        None,
    )
    .0
    .expect("manifest");
    let scans = vec![Scan {
        index: scan,
        scanner: "s".into(),
        root: root.clone(),
        verdict: "clean".into(),
    }];
    let badge = badge::evaluate(
        &Evidence {
            name: "demo",
            version: "1.0.0",
            manifest: &parsed,
            root: &root,
            publication,
            signature_ok: true,
            yanked: None,
            runs: &runs,
            scans: &scans,
            data_pack: None,
            registry_licenses: &[],
            preregistrations: &preregistrations,
            publisher_key: None,
        },
        T0 + 60_000,
        badge::DEFAULT_MAX_AGE_MS,
    );
    // The tree, its signed checkpoint and every entry's audit path.
    let mut frontier = Frontier::new();
    let mut stored = Vec::new();
    for bytes in &log.entries {
        stored.extend(frontier.append(merkle::leaf_hash(bytes)));
    }
    let size = log.entries.len() as u64;
    let note = Checkpoint::new("bundle.test/log", size, frontier.root())
        .sign(&log_key)
        .expect("sign");
    let entries = log
        .entries
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            (
                i as u64,
                bytes.clone(),
                merkle::inclusion_proof(i as u64, size, &stored).expect("proof"),
            )
        })
        .collect();
    Fixture {
        bundle: Bundle::new(badge, MANIFEST, note, entries, Vec::new()),
        log_key,
    }
}

fn check(f: &Fixture, bundle: &Bundle) -> Result<Badge, BundleError> {
    verify(bundle.to_json().as_bytes(), &f.log_key.verifier()).map(|v| v.badge)
}

#[test]
fn honest_bundles_verify() {
    let f = fixture(true);
    let badge = check(&f, &f.bundle).expect("verifies");
    assert_eq!(badge.state, State::Green);
    assert_eq!(badge.evidence, [0, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(badge.policy, badge::POLICY);
    let f = fixture(false);
    let badge = check(&f, &f.bundle).expect("verifies");
    assert_eq!(badge.state, State::Failing);
    assert_eq!(badge.reasons[0].code, "run_failed");
}

#[test]
fn every_change_is_caught_and_named() {
    let f = fixture(true);

    // The badge claims more than the evidence gives.
    let mut b = f.bundle.clone();
    b.badge.state = State::Failing;
    assert!(matches!(
        check(&f, &b),
        Err(BundleError::BadgeMismatch { field: "state", .. })
    ));
    let mut b = f.bundle.clone();
    b.badge.evidence.pop();
    assert!(matches!(
        check(&f, &b),
        Err(BundleError::BadgeMismatch {
            field: "evidence",
            ..
        })
    ));
    let mut b = f.bundle.clone();
    b.badge.policy = "custodian.badge-policy.v0".into();
    assert!(matches!(
        check(&f, &b),
        Err(BundleError::BadgeMismatch {
            field: "policy",
            ..
        })
    ));

    // Leaving out the run that a failing badge rests on makes the evidence give another badge.
    let failing = fixture(false);
    let mut b = failing.bundle.clone();
    b.entries.retain(|e| e.index != 7);
    assert!(matches!(
        check(&failing, &b),
        Err(BundleError::BadgeMismatch { field: "state", .. })
    ));

    // A byte of an entry.
    let mut b = f.bundle.clone();
    let mut bytes = STANDARD.decode(&b.entries[3].entry).expect("base64");
    let last = bytes.len() - 3;
    bytes[last] ^= 1;
    b.entries[3].entry = STANDARD.encode(bytes);
    assert!(
        matches!(
            check(&f, &b),
            Err(BundleError::Entry {
                position: 3,
                index: 3,
                ..
            })
        ),
        "{:?}",
        check(&f, &b)
    );

    // A proof hash.
    let mut b = f.bundle.clone();
    let mut hash = STANDARD.decode(&b.entries[1].proof[0]).expect("base64");
    hash[0] ^= 0x80;
    b.entries[1].proof[0] = STANDARD.encode(hash);
    let err = check(&f, &b).expect_err("a changed proof hash");
    assert!(matches!(err, BundleError::Entry { index: 1, .. }), "{err}");
    assert!(err.to_string().contains("inclusion proof"), "{err}");

    // The checkpoint: its size, its root, its signature, and another log's key.
    let mut b = f.bundle.clone();
    b.checkpoint = b.checkpoint.replacen("\n9\n", "\n10\n", 1);
    assert!(matches!(check(&f, &b), Err(BundleError::Checkpoint(_))));
    let mut b = f.bundle.clone();
    let sig_line = b
        .checkpoint
        .lines()
        .last()
        .expect("signature line")
        .to_string();
    let mut chars: Vec<char> = sig_line.chars().collect();
    let at = chars.len() - 5;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    b.checkpoint = b
        .checkpoint
        .replace(&sig_line, &chars.into_iter().collect::<String>());
    assert!(matches!(check(&f, &b), Err(BundleError::Checkpoint(_))));
    let other = SignerKey::from_seed("bundle.test/log", [9; 32]).expect("key");
    assert!(matches!(
        verify(f.bundle.to_json().as_bytes(), &other.verifier()),
        Err(BundleError::Checkpoint(_))
    ));

    // The manifest.
    let mut b = f.bundle.clone();
    b.manifest = STANDARD.encode(b"name: demo\nversion: 1.0.0\ntype: prompt_spec\nbase_model: [m1]\nevals: [a]\nlicense: MIT\n");
    assert!(matches!(check(&f, &b), Err(BundleError::Publication(_))));

    // Type and shape.
    let mut b = f.bundle.clone();
    b.bundle_type = "something.else".into();
    assert!(matches!(check(&f, &b), Err(BundleError::Malformed(_))));
    assert!(matches!(
        verify(b"{}", &f.log_key.verifier()),
        Err(BundleError::Malformed(_))
    ));
}

#[test]
fn a_run_signed_by_an_unregistered_key_is_refused() {
    let f = fixture(true);
    let mut b = f.bundle.clone();
    b.entries.retain(|e| e.index != 1);
    let err = check(&f, &b).expect_err("no KeyEvent");
    assert!(err.to_string().contains("not registered"), "{err}");
}

/// The worked example of docs/verifying.md: a bundle from a real daemon (testdata/badge-bundle).
#[test]
fn the_committed_example_bundle_verifies() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/badge-bundle");
    let key = custodian_core::note::VerifierKey::parse(
        std::fs::read_to_string(dir.join("log.vkey"))
            .expect("key")
            .trim(),
    )
    .expect("verifier key");
    let bytes = std::fs::read(dir.join("pacman-builder-0.2.1.bundle.json")).expect("bundle");
    let verified = verify(&bytes, &key).expect("the example verifies");
    assert_eq!(verified.badge.state, State::Green);
    assert_eq!((verified.entries, verified.tree_size), (12, 13));
    // Flip one byte anywhere in the file: it either stops being a bundle or stops verifying.
    for at in (0..bytes.len()).step_by(97) {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        if let Ok(v) = verify(&bad, &key) {
            // Only bytes that do not change the outcome may be flipped and still verify (JSON
            // whitespace, or the evaluation time within the evidence's age limit).
            assert_eq!(
                (v.badge.state, &v.badge.reasons, &v.badge.evidence),
                (
                    verified.badge.state,
                    &verified.badge.reasons,
                    &verified.badge.evidence
                ),
                "byte {at} changed the badge yet verified"
            );
        }
    }
}
