//! The README walkthrough (`examples/walkthrough.sh`) run as a newcomer would: from a temporary
//! folder outside the repository, with the built binary, start to finish. It publishes both
//! seed manifests verbatim and fails unless each reaches GREEN and every offline check passes.

use std::process::Command;

use crate::registry::{examples, python};
use custodian_testkit::binary;

/// One way of tampering with a bundle.
type Tamper = Box<dyn Fn(&mut serde_json::Value)>;

#[test]
fn the_readme_walkthrough_runs_from_any_folder() {
    let outside = tempfile::tempdir().expect("a temporary folder");
    let work = outside.path().join("walkthrough");
    let output = Command::new("bash")
        .arg(examples().join("walkthrough.sh"))
        .arg(&work)
        .current_dir(outside.path())
        .env("CUSTODIAN", binary())
        .env("CUSTODIAN_PYTHON", python())
        .env_remove("CUSTODIAN_SERVER")
        .env_remove("CUSTODIAN_TOKEN")
        .env_remove("CUSTODIAN_DATA_DIR")
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the walkthrough failed:\n{stdout}\n--- stderr ---\n{stderr}"
    );
    for line in [
        "pacman-builder@0.2.1: GREEN",
        "customer-support-classifier@0.1.0: GREEN",
        "bundle verifies",
        "receipt verifies",
        "acme/mirror:stable: 1 state (from the daemon)",
        "every step did what the README says",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    // A second verifier, written from docs/verifying.md alone in Python, agrees on both
    // bundles — and refuses each tampered copy.
    let verify_bundle = |bundle: &std::path::Path| {
        Command::new(python())
            .arg(examples().join("../tests/interop/verify_bundle.py"))
            .arg(bundle)
            .arg(work.join("log.vkey"))
            .output()
            .expect("run python (scripts/test provides the venv)")
    };
    for (name, state) in [
        ("pacman-builder", "GREEN"),
        ("customer-support-classifier", "GREEN"),
    ] {
        let bundle = work.join(format!("{name}.bundle.json"));
        let out = verify_bundle(&bundle);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(state),
            "{name}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let original: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&bundle).expect("bundle")).expect("json");
        let tampered: [(&str, Tamper); 4] = [
            ("state", Box::new(|b| b["badge"]["state"] = "review".into())),
            (
                "evidence",
                Box::new(|b| {
                    b["badge"]["evidence"]
                        .as_array_mut()
                        .expect("evidence")
                        .pop();
                }),
            ),
            (
                "a dropped run",
                Box::new(|b| {
                    let last = b["badge"]["evidence"]
                        .as_array()
                        .and_then(|e| e.last())
                        .cloned()
                        .expect("evidence");
                    let entries = b["entries"].as_array_mut().expect("entries");
                    entries.retain(|e| e["index"] != last);
                }),
            ),
            (
                "a license the registry did not list",
                Box::new(|b| b["badge"]["registry_licenses"] = serde_json::json!(["other"])),
            ),
        ];
        for (what, change) in tampered {
            let mut copy = original.clone();
            change(&mut copy);
            let path = work.join(format!("{name}.tampered.json"));
            std::fs::write(&path, serde_json::to_vec(&copy).expect("json")).expect("write");
            if what.starts_with("a license") && name == "pacman-builder" {
                continue; // Apache-2.0 is SPDX: the registry's list does not matter to it.
            }
            let out = verify_bundle(&path);
            assert!(
                !out.status.success(),
                "{name}: the Python verifier accepted a bundle with {what} changed"
            );
        }
    }
    // The same registry in a browser: each page kind for both packages, signed in with a token
    // (the private one shows) and anonymously (it answers as absent), each version page saying
    // what the JSON API says.
    let daemon = custodian_testkit::Daemon::start(&work.join("registry"));
    let pages = |signed_in: bool| {
        let private = if signed_in { 200 } else { 404 };
        let listed = if signed_in {
            serde_json::json!([])
        } else {
            serde_json::json!(["customer-support-classifier"])
        };
        serde_json::json!([
            {"path": "/packages", "name": "packages", "absent": listed},
            {"path": "/packages?q=pac", "name": "search"},
            {"path": "/packages/pacman-builder", "name": "package"},
            {"path": "/packages/pacman-builder/0.2.1", "name": "version-pacman-builder"},
            {"path": "/packages/customer-support-classifier", "name": "package-private",
             "status": private},
            {"path": "/packages/customer-support-classifier/0.1.0",
             "name": "version-customer-support-classifier", "status": private},
            {"path": "/log", "name": "log"},
            {"path": "/log/entries/0", "name": "entry-0"},
        ])
    };
    let out = crate::pages::screenshots("walkthrough");
    let summary = crate::pages::browse(&serde_json::json!({
        "base": daemon.rest,
        "token": daemon.token,
        "out": out.join("signed-in"),
        "pages": pages(true),
        "versions": [
            {"name": "pacman-builder", "version": "0.2.1"},
            {"name": "customer-support-classifier", "version": "0.1.0"},
        ],
    }));
    for compared in summary["compared"].as_array().expect("compared") {
        assert_eq!(compared["state"], "green", "{summary}");
        assert!(compared["cells"].as_u64() >= Some(3), "{summary}");
    }
    crate::pages::browse(&serde_json::json!({
        "base": daemon.rest,
        "out": out.join("anonymous"),
        "pages": pages(false),
        "versions": [{"name": "pacman-builder", "version": "0.2.1"}],
    }));
    eprintln!("screenshots in {}", out.display());
    drop(daemon);

    // Nothing was written into the repository.
    assert!(
        !examples().join("seeds/pacman-builder/.custodian").exists(),
        "the walkthrough wrote into the repository"
    );
}
