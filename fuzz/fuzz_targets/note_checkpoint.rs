//! Signed notes, checkpoints, keys and receipts an auditor is handed.
#![no_main]
use custodian_core::checkpoint::Checkpoint;
use custodian_core::note::{Note, SignerKey, VerifierKey};
use custodian_core::receipt::Receipt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let signer = SignerKey::from_seed("fuzz.test/log", [5; 32]).expect("key");
    let verifier = signer.verifier();
    let _ = Note::parse(data);
    let _ = Note::open(data, &verifier);
    let _ = Checkpoint::open(data, &verifier);
    let text = String::from_utf8_lossy(data);
    let _ = Checkpoint::parse(&text);
    let _ = VerifierKey::parse(&text);
    let _ = SignerKey::parse(&text);
    if let Ok(receipt) = Receipt::from_json(&text) {
        let _ = receipt.verify(&verifier);
    }
});
