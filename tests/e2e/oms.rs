//! OpenSSF model-signing (OMS) v1.0 both ways, against PyPI `model-signing` 1.1.1 (a tool nobody
//! here wrote): it verifies a package we signed, and we verify, publish and install a package it
//! signed; a changed file fails both ways; the signature is ledgered with the publication, and
//! the badge bundle re-checks it offline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::registry::{copy_example, generate_key, offline, python, stdout};
use crate::run_ok;
use custodian_testkit::Daemon;

/// The `model_signing` command from the test venv (scripts/test installs it).
fn model_signing() -> PathBuf {
    std::env::var_os("CUSTODIAN_MODEL_SIGNING")
        .map(PathBuf::from)
        .unwrap_or_else(|| python().with_file_name("model_signing"))
}

/// An ECDSA key pair on `curve` (openssl's name), as PEM files `NAME.pem` and `NAME.pub.pem`.
fn ec_key(dir: &Path, name: &str, curve: &str) -> (String, String) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    run_ok(Command::new("openssl").args([
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        &format!("ec_paramgen_curve:{curve}"),
        "-out",
        private.to_str().expect("utf-8"),
    ]));
    run_ok(Command::new("openssl").args([
        "pkey",
        "-in",
        private.to_str().expect("utf-8"),
        "-pubout",
        "-out",
        public.to_str().expect("utf-8"),
    ]));
    (
        private.to_str().expect("utf-8").to_string(),
        public.to_str().expect("utf-8").to_string(),
    )
}

/// `model_signing verify key DIR` with the signature beside the files.
fn their_verify(dir: &Path, public: &str, extra: &[&str]) -> Output {
    Command::new(model_signing())
        .args(["verify", "key"])
        .arg(dir)
        .arg("--signature")
        .arg(dir.join("model.sig"))
        .args(["--public_key", public])
        .args(extra)
        .output()
        .expect("run model_signing (scripts/test installs it)")
}

/// `model_signing sign key DIR` with the signature beside the files.
fn their_sign(dir: &Path, private: &str) {
    run_ok(
        Command::new(model_signing())
            .args(["sign", "key"])
            .arg(dir)
            .args(["--private_key", private, "--signature"])
            .arg(dir.join("model.sig")),
    );
}

fn append(path: &Path, text: &str) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes.extend_from_slice(text.as_bytes());
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn model_signing_verifies_our_signature_and_a_changed_file_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut packages = Vec::new();
    for curve in ["P-256", "P-384", "P-521"] {
        let package = copy_example("pacman-builder", &dir.path().join(curve));
        let (private, public) = ec_key(dir.path(), curve, curve);
        let out = stdout(&offline(&[
            "pack",
            "build",
            package.to_str().expect("utf-8"),
            "--format",
            "oms",
            "--key",
            &private,
        ]));
        assert!(out.contains("for OpenSSF model-signing"), "{out}");
        let theirs = their_verify(&package, &public, &[]);
        assert!(
            theirs.status.success(),
            "{curve}: model_signing refused our signature: {}{}",
            String::from_utf8_lossy(&theirs.stdout),
            String::from_utf8_lossy(&theirs.stderr)
        );
        stdout(&offline(&[
            "pack",
            "verify",
            package.to_str().expect("utf-8"),
            "--oms-key",
            &public,
        ]));
        packages.push(package);
    }
    // One byte more in one file: both refuse, and ours names the file.
    let package = &packages[0];
    append(&package.join("manifest.yaml"), "\n");
    assert!(
        !their_verify(
            package,
            &dir.path().join("P-256.pub.pem").display().to_string(),
            &[]
        )
        .status
        .success()
    );
    let out = offline(&[
        "pack",
        "verify",
        package.to_str().expect("utf-8"),
        "--oms-key",
        dir.path().join("P-256.pub.pem").to_str().expect("utf-8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("manifest.yaml: changed"),
        "{err}"
    );
    // An Ed25519 key is not an OMS key, and says so.
    let (ed, _) = generate_key(dir.path(), "ed");
    let out = offline(&[
        "pack",
        "build",
        packages[1].to_str().expect("utf-8"),
        "--format",
        "oms",
        "--key",
        ed.to_str().expect("utf-8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Ed25519 is not accepted"),
        "{err}"
    );
}

#[test]
fn a_package_model_signing_signed_is_verified_published_installed_and_ledgered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("data"));
    let (publisher, _) = generate_key(dir.path(), "acme");
    let (private, public) = ec_key(dir.path(), "ml-team", "P-256");
    let package = copy_example("customer-support-classifier", dir.path());

    // Their tool signs the folder; ours verifies it.
    their_sign(&package, &private);
    let out = stdout(&offline(&[
        "pack",
        "verify",
        package.to_str().expect("utf-8"),
        "--oms-key",
        &public,
    ]));
    assert!(out.contains("9 files"), "{out}");

    let publish = |extra: &[&str]| {
        let mut args = vec![
            "publish",
            package.to_str().expect("utf-8"),
            "--key",
            publisher.to_str().expect("utf-8"),
            "--oms-key",
            &public,
        ];
        args.extend_from_slice(extra);
        daemon.cli(&args)
    };

    // A changed file is refused before anything is uploaded, naming it.
    let readme = package.join("README.md");
    let original = std::fs::read(&readme).expect("readme");
    append(&readme, "tampered\n");
    let out = publish(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("README.md: changed"),
        "{err}"
    );
    std::fs::write(&readme, original).expect("restore");

    // Published with our key too; the OMS signature is recorded with the publication.
    let out = stdout(&publish(&["--json"]));
    let index = serde_json::from_str::<serde_json::Value>(&out).expect("json")["ledger_index"]
        .as_u64()
        .expect("ledger index");
    let entry = stdout(&daemon.cli(&["log", "entry", &index.to_string(), "--json"]));
    assert!(
        entry.contains("oms_signature") && entry.contains("BEGIN PUBLIC KEY"),
        "{entry}"
    );

    // Installed: model.sig is written back, and their tool verifies the installed copy (our
    // .custodian/ metadata is not theirs to check).
    let installed = dir.path().join("installed");
    let out = stdout(&daemon.cli(&[
        "install",
        "customer-support-classifier@0.1.0",
        "-o",
        installed.to_str().expect("utf-8"),
    ]));
    assert!(out.contains("model.sig"), "{out}");
    let custodian_dir = installed.join(".custodian");
    let theirs = their_verify(
        &installed,
        &public,
        &["--ignore-paths", custodian_dir.to_str().expect("utf-8")],
    );
    assert!(
        theirs.status.success(),
        "{}{}",
        String::from_utf8_lossy(&theirs.stdout),
        String::from_utf8_lossy(&theirs.stderr)
    );

    // The badge bundle carries the publication with its OMS signature, and verifies offline.
    let bundle = dir.path().join("bundle.json");
    stdout(&daemon.cli(&[
        "badge",
        "customer-support-classifier@0.1.0",
        "-o",
        bundle.to_str().expect("utf-8"),
    ]));
    let log_key = stdout(&daemon.cli(&["log", "key"])).trim().to_string();
    stdout(&offline(&[
        "verify",
        bundle.to_str().expect("utf-8"),
        "--key",
        &log_key,
    ]));
    // The independent verifier checks the recorded OMS signature too.
    crate::evidence::python_verifies(&bundle, &log_key);

    // A signature over other files is refused, naming what differs.
    let other = copy_example("pacman-builder", &dir.path().join("other"));
    their_sign(&other, &private);
    std::fs::copy(other.join("model.sig"), package.join("model.sig")).expect("copy");
    let out = publish(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("signed, but missing"),
        "{err}"
    );
}
