//! The content scanner on hostile bytes under every declared type, archives included: never a
//! panic, never more bytes read than given unless decompressed, bombs stopped.
#![no_main]
use custodian_scan::Limits;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 8] = [
    "x.zip",
    "x.tar",
    "x.gz",
    "x.jsonl",
    "x.parquet",
    "x.bin",
    "x.csv",
    "x.tgz",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    // Small limits, so that nested archives and bombs are reached quickly.
    let limits = Limits {
        max_depth: 2,
        ratio_floor: 1 << 16,
        max_expanded: 16 << 20,
        max_entries: 64,
        ..Limits::default()
    };
    let name = NAMES[pick as usize % NAMES.len()];
    let report = custodian_scan::package::scan_blob(name, &mut &rest[..], &limits);
    assert!(report.findings.len() <= limits.max_findings);
});
