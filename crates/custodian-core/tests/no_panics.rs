//! Hostile input never panics a verifier: arbitrary bytes into every parser an auditor runs on
//! files they were handed, and arbitrary mutations of valid inputs.

use custodian_core::audit::{Auditor, EntryReader};
use custodian_core::checkpoint::Checkpoint;
use custodian_core::entry::{Entry, EntryKind, Value};
use custodian_core::merkle::Hash;
use custodian_core::note::{Note, SignerKey, VerifierKey};
use custodian_core::receipt::Receipt;
use proptest::prelude::*;

/// A P-256 public key for OMS bundles (the fuzz target's).
fn oms_key() -> custodian_core::oms::PublicKey {
    custodian_core::oms::PublicKey::from_pem(include_str!("../../../fuzz/fuzz_targets/oms.pub.pem"))
        .expect("a valid P-256 key")
}

fn signer() -> SignerKey {
    SignerKey::from_seed("fuzz.test/log", [5; 32]).expect("key")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let verifier = signer().verifier();
        let _ = Note::parse(&bytes);
        let _ = Note::open(&bytes, &verifier);
        let _ = Checkpoint::open(&bytes, &verifier);
        let _ = Entry::decode(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let _ = Checkpoint::parse(&text);
        let _ = VerifierKey::parse(&text);
        let _ = SignerKey::parse(&text);
        let _ = Receipt::from_json(&text);
        let _ = Receipt::parse(&text);
        for entry in EntryReader::new(bytes.as_slice()).take(50) {
            let _ = entry;
        }
        // The parsers of this round's evidence formats: pre-registrations, key events and
        // rotations, OpenSSF model-signing bundles and keys.
        let _ = custodian_core::prereg::PreregStatement::from_json(&bytes);
        if let Ok(entry) = Entry::decode(&bytes)
            && let Ok(event) = entry.event::<custodian_core::registry::KeyEvent>()
        {
            let _ = custodian_core::keys::check_event(&event, entry.time_ms);
        }
        if let Ok(envelope) = custodian_core::dsse::Envelope::parse(&bytes) {
            let _ = custodian_core::keys::Rotation::open(&envelope);
        }
        let _ = custodian_core::oms::verify(&bytes, &oms_key());
        let _ = custodian_core::oms::PublicKey::from_pem(&text);
        let _ = custodian_core::oms::PrivateKey::from_pem(&text);
    }

    #[test]
    fn mutated_valid_inputs(at in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
        let signer = signer();
        let verifier = signer.verifier();
        let entry = Entry::new(
            EntryKind::RunAttested,
            Hash::ZERO,
            7,
            Value::Map(vec![(Value::Text("k".into()), Value::Array(vec![Value::Bytes(vec![1, 2])]))]),
        )
        .expect("entry");
        let encoded = entry.encode();
        let note = Checkpoint::new("fuzz.test/log", 1, entry.leaf_hash())
            .sign(&signer)
            .expect("sign");
        let receipt = Receipt {
            index: 0,
            entry: encoded.clone(),
            proof: Vec::new(),
            checkpoint: note.clone(),
        };
        prop_assert!(receipt.verify(&verifier).is_ok());
        for original in [encoded, note.into_bytes(), receipt.to_json().into_bytes()] {
            let mut bad = original.clone();
            let i = at % bad.len();
            bad[i] = byte;
            bad.truncate(1 + cut % bad.len());
            let _ = Entry::decode(&bad);
            let _ = Checkpoint::open(&bad, &verifier);
            if let Ok(text) = String::from_utf8(bad.clone())
                && let Ok(r) = Receipt::from_json(&text)
            {
                let _ = r.verify(&verifier);
            }
            let checkpoints = vec![("x".to_string(), bad.clone())];
            if let Ok(mut auditor) = Auditor::new(verifier.clone(), checkpoints) {
                let _ = auditor.push_entry(&bad, None);
                let _ = auditor.finish();
            }
        }
    }
}
