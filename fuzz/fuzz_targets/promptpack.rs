//! PromptPack resources (YAML) from a publisher, checked against a file list.
#![no_main]
use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let mut files = BTreeMap::new();
    files.insert("arena.yaml".to_string(), text);
    let paths: BTreeSet<String> = ["arena.yaml", "prompts/a.yaml", "tools/t.yaml"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let _ = custodian_core::promptpack::validate(&files, &paths, &["x".to_string()]);
});
