//! The badge as a SLSA Verification Summary Attestation: every bundle carries one, signed with
//! the log's key; `custodian verify` requires it to say exactly what the bundle says; PyPI's
//! securesystemslib verifies its DSSE signature and an independent script checks its fields
//! against the in-toto Statement and SLSA VSA layouts (tests/interop/verify_vsa.py).

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use custodian_testkit::Daemon;

use crate::registry::{publish_example, python, stdout};

fn check_with_python(bundle: &Path, vkey: &str, vsa: Option<&Path>) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/verify_vsa.py");
    let mut command = Command::new(python());
    command.arg(script).arg(bundle).arg(vkey);
    if let Some(vsa) = vsa {
        command.arg(vsa);
    }
    command.output().expect("python runs")
}

#[test]
fn badge_bundles_carry_a_vsa_that_others_can_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("data"));
    publish_example(&daemon, dir.path(), "pacman-builder", "publisher");
    let vkey = stdout(&daemon.cli(&["log", "key"])).trim().to_string();
    let bundle = dir.path().join("bundle.json");
    let vsa = dir.path().join("badge.vsa.json");
    stdout(&daemon.cli(&[
        "badge",
        "pacman-builder@0.2.1",
        "-o",
        bundle.to_str().expect("path"),
    ]));
    let said = stdout(&daemon.cli(&[
        "badge",
        "pacman-builder@0.2.1",
        "--format",
        "vsa",
        "-o",
        vsa.to_str().expect("path"),
    ]));
    assert!(said.contains("VSA:"), "{said}");

    // Ours, offline.
    let verified = stdout(&daemon.cli(&["verify", bundle.to_str().expect("path"), "--key", &vkey]));
    assert!(
        verified.contains("its SLSA VSA signed by the log"),
        "{verified}"
    );
    // Theirs: securesystemslib's DSSE and an independent field check, on the bundle's VSA and
    // on the one --format vsa wrote.
    for vsa in [None, Some(vsa.as_path())] {
        let out = check_with_python(&bundle, &vkey, vsa);
        assert!(
            out.status.success(),
            "verify_vsa.py: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("vsa ok: pacman-builder@0.2.1"));
    }

    // A VSA whose payload was changed no longer opens, for either verifier.
    let text = std::fs::read_to_string(&bundle).expect("bundle");
    let mut parsed: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut envelope: serde_json::Value =
        serde_json::from_str(parsed["vsa"].as_str().expect("vsa")).expect("envelope");
    let payload = STANDARD
        .decode(envelope["payload"].as_str().expect("payload"))
        .expect("base64");
    let forged = String::from_utf8(payload)
        .expect("utf-8")
        .replace("\"FAILED\"", "\"PASSED\"");
    envelope["payload"] = serde_json::json!(STANDARD.encode(forged));
    parsed["vsa"] = serde_json::json!(envelope.to_string());
    let tampered = dir.path().join("tampered.json");
    std::fs::write(&tampered, parsed.to_string()).expect("write");
    let refused = daemon.cli(&["verify", tampered.to_str().expect("path"), "--key", &vkey]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("VSA's DSSE envelope")
            || String::from_utf8_lossy(&refused.stderr).contains("VSA's DSSE envelope"),
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!check_with_python(&tampered, &vkey, None).status.success());

    // A genuine VSA from another evaluation, swapped in, is refused by name: its time differs.
    let mut parsed: serde_json::Value = serde_json::from_str(&text).expect("json");
    parsed["vsa"] = serde_json::json!(std::fs::read_to_string(&vsa).expect("vsa").trim());
    std::fs::write(&tampered, parsed.to_string()).expect("write");
    let refused = daemon.cli(&["verify", tampered.to_str().expect("path"), "--key", &vkey]);
    let text = String::from_utf8_lossy(&refused.stdout).into_owned()
        + &String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(text.contains("predicate.timeVerified"), "{text}");
}
