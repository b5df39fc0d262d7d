//! The prompt scanner on arbitrary text: offsets always inside the text.
#![no_main]
use custodian_scan::prompt::{PromptContext, scan_text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for f in scan_text(
        "p.md",
        &text,
        &PromptContext {
            no_external_calls: true,
            ..PromptContext::default()
        },
    ) {
        assert!(
            f.offset as usize <= text.len(),
            "offset {} past {}",
            f.offset,
            text.len()
        );
    }
});
