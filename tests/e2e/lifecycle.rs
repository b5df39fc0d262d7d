//! Evidence over time, end to end: pre-registered eval criteria (badge policy v4) and keys
//! judged at their entries' ledger time. Each badge is re-checked offline by `custodian verify`
//! and by the independent Python verifier written from docs/verifying.md.

use std::path::Path;

use crate::evidence::{
    Setup, badge, bundle_verifies, codes, preregister, preregister_with, python_verifies, run,
    setup_unregistered, write_runs,
};
use crate::registry::{copy_example, generate_key, offline, stdout};

const CLASSIFIER: &str = "customer-support-classifier@0.1.0";
const MODEL: &str = "gpt-4.1-mini";

/// Attests runs (JSON values) with the setup's attester; returns each run's ledger index.
fn attest(s: &Setup, name: &str, runs: &[serde_json::Value]) -> Vec<u64> {
    let file = write_runs(&s.dir, name, runs);
    let out = stdout(&s.daemon.cli_as(
        Some(&s.attester_token),
        &["attest", &file, "--key", &s.attester_key, "--json"],
    ));
    let lines: Vec<serde_json::Value> = serde_json::from_str(&out).expect("attest --json");
    lines
        .iter()
        .map(|v| v["ledger_index"].as_u64().expect("attested"))
        .collect()
}

fn classifier_run(eval: &str) -> serde_json::Value {
    run("customer-support-classifier", "0.1.0", eval, MODEL, true)
}

/// The reasons of a badge as (code, entry).
fn reasons(badge: &serde_json::Value) -> Vec<(String, Option<u64>)> {
    badge["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| {
            (
                r["code"].as_str().expect("code").to_string(),
                r["entry"].as_u64(),
            )
        })
        .collect()
}

/// Writes the bundle, verifies it with `custodian verify` and with the Python verifier, and
/// returns the badge as `custodian verify --json` recomputed it.
fn verified_offline(s: &Setup, spec: &str, file: &str) -> serde_json::Value {
    let path = s.dir.join(file);
    bundle_verifies(s, spec, &path);
    let path = path.to_str().expect("utf-8");
    let out = stdout(&offline(&["verify", path, "--key", &s.log_key, "--json"]));
    python_verifies(Path::new(path), &s.log_key);
    serde_json::from_str::<serde_json::Value>(&out).expect("json")["badge"].clone()
}

#[tokio::test]
async fn preregistration_failures_are_named_and_a_clean_sequence_is_green() {
    let s = setup_unregistered(&[]);
    let publisher = s.publisher_key.clone();

    // label_accuracy runs before anything is pre-registered, then is pre-registered.
    let early = attest(&s, "early.json", &[classifier_run("label_accuracy")]);
    let missing = badge(&s.daemon, &s.attester_token, CLASSIFIER);
    assert!(
        reasons(&missing).contains(&("preregistration_missing".into(), Some(early[0]))),
        "{missing}"
    );
    preregister(&s.daemon, &publisher, CLASSIFIER, "label_accuracy");

    // format_following: pre-registered, run, then the bar "pre-registered" again after the
    // result was in — the changed terms are named.
    preregister(&s.daemon, &publisher, CLASSIFIER, "format_following");
    let ff = attest(&s, "ff.json", &[classifier_run("format_following")]);
    let changed = stdout(&preregister_with(
        &s.daemon,
        &publisher,
        CLASSIFIER,
        "format_following",
        &[("--threshold", ">= 0.5"), ("--json", "")],
    ));
    let changed_at =
        serde_json::from_str::<serde_json::Value>(&changed).expect("json")["ledger_index"]
            .as_u64()
            .expect("index");

    // pii_leakage: pre-registered with a data pack and a harness the run does not use.
    let other_pack = format!("sha256:{}", "d".repeat(64));
    stdout(&preregister_with(
        &s.daemon,
        &publisher,
        CLASSIFIER,
        "pii_leakage",
        &[("--data-pack-sha256", &other_pack)],
    ));
    let pii = attest(&s, "pii.json", &[classifier_run("pii_leakage")]);

    let b = badge(&s.daemon, &s.attester_token, CLASSIFIER);
    assert_eq!(
        reasons(&b),
        [
            ("run_before_preregistration".to_string(), Some(early[0])),
            ("preregistration_changed".to_string(), Some(changed_at)),
            (
                "preregistration_data_pack_mismatch".to_string(),
                Some(pii[0])
            ),
        ],
        "{b}"
    );
    assert_eq!(b["state"], "failing");
    assert_eq!(b["policy"], "custodian.badge-policy.v4");
    // The run the changed pre-registration reaches back to is part of the evidence.
    assert!(
        b["evidence"]
            .as_array()
            .expect("evidence")
            .contains(&ff[0].into()),
        "{b}"
    );
    let offline_badge = verified_offline(&s, CLASSIFIER, "prereg-failing.json");
    assert_eq!(offline_badge["reasons"], b["reasons"]);

    // A run with another harness than the pre-registered one, on pacman-builder.
    let pacman = "pacman-builder@0.2.1";
    preregister(&s.daemon, &publisher, pacman, "render_smoke");
    let mut other_harness = run("pacman-builder", "0.2.1", "render_smoke", "gpt-4.1", true);
    other_harness["reproducibility_context"]["harness_sha256"] =
        format!("sha256:{}", "e".repeat(64)).into();
    let h = attest(&s, "harness.json", &[other_harness]);
    let b = badge(&s.daemon, &s.attester_token, pacman);
    assert!(
        reasons(&b).contains(&("preregistration_harness_mismatch".into(), Some(h[0]))),
        "{b}"
    );
    verified_offline(&s, pacman, "prereg-harness.json");

    // The clean sequence: format_following and pii_leakage pre-registered again as the runs
    // will be, then every eval run after its latest pre-registration, matching it: green,
    // offline too.
    preregister(&s.daemon, &publisher, CLASSIFIER, "format_following");
    preregister(&s.daemon, &publisher, CLASSIFIER, "pii_leakage");
    attest(
        &s,
        "clean.json",
        &[
            classifier_run("label_accuracy"),
            classifier_run("format_following"),
            classifier_run("pii_leakage"),
        ],
    );
    let green = badge(&s.daemon, &s.attester_token, CLASSIFIER);
    assert_eq!(green["state"], "green", "{green}");
    let text = stdout(&s.daemon.cli(&["badge", CLASSIFIER]));
    assert!(
        text.contains("its pre-registered bar")
            && text.contains("pre-registered [entry")
            && text.contains("format_following pass_rate >= 0.9"),
        "{text}"
    );
    let offline_badge = verified_offline(&s, CLASSIFIER, "prereg-green.json");
    assert_eq!(offline_badge["state"], "green");
    let report = stdout(&s.daemon.cli(&["report", CLASSIFIER]));
    assert!(
        report.contains("pre-registrations:") && report.contains("pass_rate >= 0.9"),
        "{report}"
    );

    // The attester key rotates: both keys sign the hand-over of its namespaces; runs by the new
    // key count, the old key signs nothing new, and the green badge stays green.
    let (next_key, _) = generate_key(&s.dir, "evals-ci-2");
    let rotated = stdout(&s.daemon.cli_as(
        Some(&s.attester_token),
        &[
            "key",
            "rotate",
            "--role",
            "attester",
            "--old",
            &s.attester_key,
            "--new",
            next_key.to_str().expect("utf-8"),
            "--for",
            "*",
        ],
    ));
    assert!(rotated.starts_with("rotated attester key"), "{rotated}");
    let file = write_runs(&s.dir, "next.json", &[classifier_run("label_accuracy")]);
    stdout(&s.daemon.cli_as(
        Some(&s.attester_token),
        &["attest", &file, "--key", next_key.to_str().expect("utf-8")],
    ));
    let out = s.daemon.cli_as(
        Some(&s.attester_token),
        &["attest", &file, "--key", &s.attester_key],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("rotated"), "{err}");
    assert_eq!(
        badge(&s.daemon, &s.attester_token, CLASSIFIER)["state"],
        "green"
    );
    verified_offline(&s, CLASSIFIER, "after-attester-rotation.json");

    // Refused: a signer that is neither the publisher nor an attester, and an eval the manifest
    // does not declare.
    let (stranger, _) = generate_key(&s.dir, "stranger");
    let out = preregister_with(
        &s.daemon,
        stranger.to_str().expect("utf-8"),
        CLASSIFIER,
        "label_accuracy",
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("neither") && err.contains("publisher key"),
        "{err}"
    );
    let out = preregister_with(&s.daemon, &publisher, CLASSIFIER, "no_such_eval", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("predicate.eval_id") && err.contains("no_such_eval"),
        "{err}"
    );
}

/// Copies the classifier example as version `version`.
fn classifier_version(dir: &Path, version: &str) -> String {
    let folder = copy_example("customer-support-classifier", &dir.join(version));
    let manifest = folder.join("manifest.yaml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(
        &manifest,
        text.replace("version: 0.1.0", &format!("version: {version}")),
    )
    .expect("write manifest");
    folder.to_str().expect("utf-8").to_string()
}

#[tokio::test]
async fn rotated_keys_keep_old_evidence_and_back_dated_revocations_cut_exactly_the_later_runs() {
    let s = setup_unregistered(&[]);
    let daemon = &s.daemon;
    for eval in ["label_accuracy", "format_following", "pii_leakage"] {
        preregister(daemon, &s.publisher_key, CLASSIFIER, eval);
    }
    let runs: Vec<_> = ["label_accuracy", "format_following", "pii_leakage"]
        .iter()
        .map(|e| classifier_run(e))
        .collect();
    attest(&s, "before.json", &runs);
    assert_eq!(
        badge(daemon, &s.attester_token, CLASSIFIER)["state"],
        "green"
    );

    // Rotate the publisher key: both keys sign; both packages pinned to it move.
    let (new_key, new_pub) = generate_key(&s.dir, "acme-2026");
    let old_pub = s.publisher_key.replace(".key", ".pub");
    let rotated = stdout(&daemon.cli(&[
        "key",
        "rotate",
        "--role",
        "publisher",
        "--old",
        &s.publisher_key,
        "--new",
        new_key.to_str().expect("utf-8"),
        "--for",
        "customer-support-classifier",
        "--for",
        "pacman-builder",
    ]));
    assert!(
        rotated.starts_with("rotated publisher key acme+"),
        "{rotated}"
    );
    // A rotation that leaves out a pinned package is refused, naming the packages.
    let (third, _) = generate_key(&s.dir, "third");
    let out = daemon.cli(&[
        "key",
        "rotate",
        "--role",
        "publisher",
        "--old",
        new_key.to_str().expect("utf-8"),
        "--new",
        third.to_str().expect("utf-8"),
        "--for",
        "pacman-builder",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("customer-support-classifier"),
        "{err}"
    );

    // A new version with the new key publishes; with the old key it is refused.
    let v2 = classifier_version(&s.dir, "0.2.0");
    stdout(&daemon.cli(&["publish", &v2, "--key", new_key.to_str().expect("utf-8")]));
    let v3 = classifier_version(&s.dir, "0.3.0");
    let out = daemon.cli(&["publish", &v3, "--key", &s.publisher_key]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("pinned"), "{err}");

    // Every old version still installs, with the key it was signed with, and verifies offline;
    // its badge is still green, online and offline.
    let installed = s.dir.join("installed-0.1.0");
    stdout(&daemon.cli(&[
        "install",
        CLASSIFIER,
        "-o",
        installed.to_str().expect("utf-8"),
        "--key",
        &old_pub,
    ]));
    stdout(&offline(&[
        "pack",
        "verify",
        installed.to_str().expect("utf-8"),
        "--key",
        &old_pub,
    ]));
    let old = verified_offline(&s, CLASSIFIER, "after-rotation.json");
    assert_eq!(old["state"], "green", "{old}");
    // The bundle carries the key events its signatures are judged by: the attester's
    // registration and the publisher key's rotation.
    let bundle: custodian_core::bundle::Bundle =
        serde_json::from_slice(&std::fs::read(s.dir.join("after-rotation.json")).expect("bundle"))
            .expect("bundle json");
    let key_events = bundle
        .entries
        .iter()
        .filter(|e| {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&e.entry)
                .expect("base64");
            custodian_core::entry::Entry::decode(&bytes)
                .expect("entry")
                .kind
                == custodian_core::entry::EntryKind::KeyEvent
        })
        .count();
    assert_eq!(key_events, 2);
    let installed = s.dir.join("installed-0.2.0");
    stdout(&daemon.cli(&[
        "install",
        "customer-support-classifier@0.2.0",
        "-o",
        installed.to_str().expect("utf-8"),
        "--key",
        new_pub.to_str().expect("utf-8"),
    ]));

    // Two runs of one eval × model, with a moment between them; then the attester key is
    // revoked for compromise, back-dated to that moment.
    let first = attest(&s, "r1.json", &[classifier_run("label_accuracy")]);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let compromised_at = custodian_core::vsa::rfc3339_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64,
    );
    std::thread::sleep(std::time::Duration::from_millis(50));
    let second = attest(&s, "r2.json", &[classifier_run("label_accuracy")]);
    let attester_pub = s.attester_key.replace(".key", ".pub");
    let revoked = stdout(&daemon.cli(&[
        "key",
        "revoke",
        &attester_pub,
        "--role",
        "attester",
        "--reason",
        "compromise",
        "--effective",
        &compromised_at,
    ]));
    assert!(revoked.contains("revoked attester key"), "{revoked}");

    // Exactly the later run stops counting: it is named, the earlier one is the evidence.
    let b = badge(daemon, &s.attester_token, CLASSIFIER);
    assert_eq!(
        reasons(&b),
        [("run_key_invalid".to_string(), Some(second[0]))],
        "{b}"
    );
    let evidence: Vec<u64> = b["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    assert!(evidence.contains(&first[0]) && evidence.contains(&second[0]));
    let offline_badge = verified_offline(&s, CLASSIFIER, "after-revocation.json");
    assert_eq!(offline_badge["reasons"], b["reasons"]);
    assert_eq!(codes(&offline_badge), ["run_key_invalid"]);

    // An audit of the exported log applies the same rule: exactly the later run no longer
    // counts (and the log is intact).
    let export = s.dir.join("export");
    stdout(&daemon.cli(&["log", "export", export.to_str().expect("utf-8")]));
    let audit: serde_json::Value = serde_json::from_str(&stdout(&offline(&[
        "audit",
        export.to_str().expect("utf-8"),
        "--key",
        &s.log_key,
        "--json",
    ])))
    .expect("audit --json");
    let cut: Vec<u64> = audit["keys"]["not_counting"]
        .as_array()
        .expect("not_counting")
        .iter()
        .filter_map(|n| n["index"].as_u64())
        .collect();
    assert_eq!(cut, [second[0]], "{audit}");

    // The revoked key signs nothing new, and a second revocation is refused.
    let out = daemon.cli_as(
        Some(&s.attester_token),
        &[
            "attest",
            &write_runs(&s.dir, "r3.json", &[classifier_run("label_accuracy")]),
            "--key",
            &s.attester_key,
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("revoked"), "{err}");
    let out = daemon.cli(&[
        "key",
        "revoke",
        &attester_pub,
        "--role",
        "attester",
        "--reason",
        "retired",
    ]);
    assert!(!out.status.success());
    // Back-dating is for compromise only.
    let out = daemon.cli(&[
        "key",
        "revoke",
        new_pub.to_str().expect("utf-8"),
        "--role",
        "publisher",
        "--reason",
        "retired",
        "--effective",
        &compromised_at,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("effective") && err.contains("compromise"),
        "{err}"
    );

    // Everything survives a restart: the key history is rebuilt from the ledger.
    let mut s = s;
    s.daemon.restart_after_kill9();
    let after = badge(&s.daemon, &s.attester_token, CLASSIFIER);
    assert_eq!(after["reasons"], b["reasons"]);
}
