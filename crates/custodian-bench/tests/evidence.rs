//! The attestation benchmark end to end, briefly: it publishes a package, pre-registers its
//! evals, attests runs unary and batched, and verifies the resulting badge bundle offline. The
//! benchmark refuses to report unless the badge is green, so this catches a bench that no longer
//! follows the badge policy (as happened when policy v4 began to require pre-registrations).

use std::process::Command;

#[test]
fn the_evidence_bench_earns_a_green_badge_and_verifies_its_bundle() {
    let output = Command::new(env!("CARGO_BIN_EXE_custodian-bench"))
        .args(["evidence", "--seconds", "1", "--json"])
        .output()
        .expect("run custodian-bench evidence");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("bench evidence printed no JSON ({e}): {stderr}"));
    assert_eq!(report["bundle_runs"], 1000, "{report:#}");
    assert!(
        report["bundle_entries"].as_u64().unwrap_or_default() > 1000,
        "{report:#}"
    );
    for scenario in report["scenarios"].as_array().expect("scenarios") {
        assert!(
            scenario["runs"].as_u64().unwrap_or_default() > 0,
            "{scenario:#}"
        );
    }
}
