//! The README walkthrough (`examples/walkthrough.sh`) run as a newcomer would: from a temporary
//! folder outside the repository, with the built binary, start to finish. It publishes both
//! seed manifests verbatim and fails unless each reaches GREEN and every offline check passes.

use std::process::Command;

use crate::daemon::binary;
use crate::registry::{examples, python};

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
        "every step did what the README says",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    // Nothing was written into the repository.
    assert!(
        !examples().join("seeds/pacman-builder/.custodian").exists(),
        "the walkthrough wrote into the repository"
    );
}
