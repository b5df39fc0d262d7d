//! Load: 64 concurrent clients on loopback run a mixed workload (gRPC puts and verified gets,
//! attested runs, inclusion proofs, verified REST downloads) against one daemon for five
//! minutes (`CUSTODIAN_LOAD_SECS` shortens it for local runs). Zero errors, and the daemon's
//! resident memory flat after warm-up. The run is `custodian-bench load`, so the figures this
//! test prints are the ones docs/reliability.md reports.

use std::process::Command;

#[test]
fn sixty_four_clients_mixed_workload_no_errors_and_flat_memory() {
    let seconds: u64 = std::env::var("CUSTODIAN_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let output = Command::new(env!("CARGO_BIN_EXE_custodian-bench"))
        .args(["load", "--clients", "64", "--json", "--seconds"])
        .arg(seconds.to_string())
        .output()
        .expect("run custodian-bench load");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("bench load printed no JSON ({e}): {stderr}"));
    for op in report["per_operation"].as_array().expect("per_operation") {
        eprintln!(
            "{:<36} {:>8} ops  {:>7.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
            op["operation"].as_str().unwrap_or_default(),
            op["count"],
            op["per_second"].as_f64().unwrap_or_default(),
            op["p50_ms"].as_f64().unwrap_or_default(),
            op["p99_ms"].as_f64().unwrap_or_default(),
            op["errors"]
        );
        assert_eq!(op["errors"], 0, "{op:#}");
        assert!(op["count"].as_u64().unwrap_or_default() > 0, "{op:#}");
    }
    eprintln!(
        "daemon RSS after warm-up {:.1} -> {:.1} MiB, slope {:+.2} MiB/min; anonymous {:.1} -> {:.1} MiB",
        report["rss_first_half_mib"].as_f64().unwrap_or_default(),
        report["rss_second_half_mib"].as_f64().unwrap_or_default(),
        report["rss_slope_mib_per_min"].as_f64().unwrap_or_default(),
        report["rss_anon_first_half_mib"]
            .as_f64()
            .unwrap_or_default(),
        report["rss_anon_second_half_mib"]
            .as_f64()
            .unwrap_or_default(),
    );
    assert_eq!(report["errors"], 0, "{stderr}");
    assert_eq!(
        report["memory_flat"], true,
        "the daemon's memory grew: RSS {:?}; of it anonymous {:?}",
        report["rss_mib"], report["rss_anon_mib"]
    );
    assert!(output.status.success(), "{stderr}");
}
