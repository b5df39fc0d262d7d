//! Receipts and audits built from a small in-memory log: they verify, and every modification of
//! any field fails with a reason that names what changed.

use ciborium::Value;
use custodian_core::audit::{AuditError, Auditor, EntryReader, HashStream, write_entry};
use custodian_core::checkpoint::Checkpoint;
use custodian_core::entry::{Entry, EntryKind};
use custodian_core::merkle::{Frontier, Hash, inclusion_proof};
use custodian_core::note::SignerKey;
use custodian_core::receipt::{Receipt, ReceiptError};

const ORIGIN: &str = "custodian.test/ledger";

struct Log {
    entries: Vec<Vec<u8>>,
    stored: Vec<Hash>,
    /// (size, signed note) for every checkpoint, one per "batch" of three entries.
    checkpoints: Vec<(u64, String)>,
    signer: SignerKey,
}

fn build(count: u64) -> Log {
    let signer = SignerKey::from_seed(ORIGIN, [42; 32]).expect("key");
    let mut frontier = Frontier::new();
    let mut log = Log {
        entries: Vec::new(),
        stored: Vec::new(),
        checkpoints: Vec::new(),
        signer,
    };
    let sign = |size, root, signer: &SignerKey| {
        Checkpoint::new(ORIGIN, size, root)
            .sign(signer)
            .expect("sign")
    };
    log.checkpoints.push((
        0,
        sign(0, custodian_core::merkle::empty_root(), &log.signer),
    ));
    let mut prev = Hash::ZERO;
    for i in 0..count {
        let payload = Value::Map(vec![
            (Value::Text("run".into()), Value::Integer(i.into())),
            (
                Value::Text("data_pack_sha256".into()),
                Value::Text(format!("sha256:{:064x}", i)),
            ),
        ]);
        let entry = Entry::new(EntryKind::RunAttested, prev, 1_000 + i, payload).expect("entry");
        let bytes = entry.encode();
        prev = custodian_core::merkle::leaf_hash(&bytes);
        log.stored.extend(frontier.append(prev));
        log.entries.push(bytes);
        if (i + 1) % 3 == 0 || i + 1 == count {
            log.checkpoints
                .push((i + 1, sign(i + 1, frontier.root(), &log.signer)));
        }
    }
    log
}

fn receipt(log: &Log, index: u64) -> Receipt {
    let (size, note) = log.checkpoints.last().expect("checkpoint").clone();
    Receipt {
        index,
        entry: log.entries[index as usize].clone(),
        proof: inclusion_proof(index, size, &log.stored).expect("proof"),
        checkpoint: note,
    }
}

#[test]
fn receipts_verify_and_every_modified_field_fails_with_its_reason() {
    let log = build(10);
    let verifier = log.signer.verifier();
    for index in 0..10 {
        let receipt = receipt(&log, index);
        let verified = receipt.verify(&verifier).expect("verifies");
        assert_eq!(verified.index, index);
        let round_trip = Receipt::from_json(&receipt.to_json()).expect("parse");
        assert_eq!(round_trip, receipt);
        // The C2SP tlog-proof form carries the same receipt, and `parse` tells the forms apart.
        let text = receipt.to_tlog_proof();
        assert!(text.starts_with("c2sp.org/tlog-proof@v1\nextra "), "{text}");
        assert!(text.contains(&format!("\nindex {index}\n")), "{text}");
        assert!(text.ends_with(&receipt.checkpoint), "{text}");
        assert_eq!(Receipt::from_tlog_proof(&text).expect("parse"), receipt);
        assert_eq!(Receipt::parse(&text).expect("parse"), receipt);
        assert_eq!(Receipt::parse(&receipt.to_json()).expect("parse"), receipt);
    }
    let good = receipt(&log, 4);
    // The index.
    let mut bad = good.clone();
    bad.index = 5;
    assert!(matches!(
        bad.verify(&verifier),
        Err(ReceiptError::Proof { .. })
    ));
    // Any byte of the entry.
    for at in 0..good.entry.len() {
        let mut bad = good.clone();
        bad.entry[at] ^= 0x10;
        let err = bad.verify(&verifier).expect_err("modified entry accepted");
        assert!(
            matches!(err, ReceiptError::Entry { .. } | ReceiptError::Proof { .. }),
            "{err}"
        );
    }
    // Any bit of any proof hash, a missing hash, an extra hash.
    for i in 0..good.proof.len() {
        let mut bad = good.clone();
        bad.proof[i].0[7] ^= 0x80;
        let err = bad.verify(&verifier).expect_err("modified proof accepted");
        assert!(err.to_string().contains("root recomputed"), "{err}");
    }
    let mut bad = good.clone();
    bad.proof.pop();
    assert!(
        bad.verify(&verifier)
            .expect_err("short")
            .to_string()
            .contains("exactly")
    );
    let mut bad = good.clone();
    bad.proof.push(Hash::ZERO);
    assert!(bad.verify(&verifier).is_err());
    // The checkpoint body and the signature.
    let mut bad = good.clone();
    bad.checkpoint = bad.checkpoint.replacen("\n10\n", "\n11\n", 1);
    assert!(matches!(
        bad.verify(&verifier),
        Err(ReceiptError::Checkpoint(_))
    ));
    let sig_at = good.checkpoint.rfind(' ').expect("signature") + 20;
    let mut bytes = good.checkpoint.clone().into_bytes();
    bytes[sig_at] = if bytes[sig_at] == b'A' { b'B' } else { b'A' };
    let mut bad = good.clone();
    bad.checkpoint = String::from_utf8(bytes).expect("utf8");
    let err = bad.verify(&verifier).expect_err("bad signature");
    assert!(err.to_string().contains("does not verify"), "{err}");
    // Another log's key.
    let other = SignerKey::from_seed(ORIGIN, [43; 32]).expect("key");
    assert!(good.verify(&other.verifier()).is_err());
    // The JSON form: unknown fields and wrong types are refused.
    let json = good.to_json().replace("\"type\"", "\"extra\": 1, \"type\"");
    assert!(matches!(
        Receipt::from_json(&json),
        Err(ReceiptError::Format(_))
    ));
}

/// c2sp.org/tlog-proof: the layout the spec fixes (header, extra, index without leading zeros,
/// one base64 hash a line, an empty line, the checkpoint), each deviation refused with its reason,
/// and a tampered proof in this form fails verification like the JSON form.
#[test]
fn the_tlog_proof_form_is_strict_and_verifies_the_same() {
    let log = build(10);
    let verifier = log.signer.verifier();
    let good = receipt(&log, 4).to_tlog_proof();
    let lines: Vec<&str> = good.lines().collect();
    assert_eq!(lines[0], "c2sp.org/tlog-proof@v1");
    assert_eq!(lines[2], "index 4");
    for (bad, reason) in [
        (good.replacen("@v1", "@v2", 1), "first line"),
        (good.replacen("index 4", "index 04", 1), "no leading zeros"),
        (good.replacen("index 4", "idx 4", 1), "index N"),
        (good.replacen("\nextra ", "\nextra !", 1), "not base64"),
        (
            good.replacen(&format!("{}\n", lines[1]), "", 1),
            "no extra line",
        ),
        (good.replacen(lines[3], "AAAA", 1), "32-byte hash"),
        // Without the empty line the checkpoint's origin is read as a proof hash.
        (
            good.replacen("\n\n", "\n", 1),
            "is not a base64 32-byte hash",
        ),
    ] {
        let err = Receipt::from_tlog_proof(&bad)
            .expect_err(reason)
            .to_string();
        assert!(err.contains(reason), "{reason}: {err}");
    }
    let verified = Receipt::parse(&good)
        .and_then(|r| r.verify(&verifier))
        .expect("verifies");
    assert_eq!(verified.index, 4);
    // A flipped bit in a proof line parses but no longer leads to the signed root.
    let hash = lines[3];
    let flipped = format!(
        "{}{}",
        if hash.starts_with('A') { "B" } else { "A" },
        &hash[1..]
    );
    let err = Receipt::parse(&good.replacen(hash, &flipped, 1))
        .and_then(|r| r.verify(&verifier))
        .expect_err("tampered proof accepted")
        .to_string();
    assert!(err.contains("root recomputed"), "{err}");
}

fn export(log: &Log) -> (Vec<u8>, Vec<u8>) {
    let mut entries = Vec::new();
    for e in &log.entries {
        write_entry(&mut entries, e);
    }
    let hashes = log.stored.iter().flat_map(|h| h.0).collect();
    (entries, hashes)
}

fn audit(log: &Log, entries: &[u8], hashes: &[u8]) -> Result<u64, AuditError> {
    let checkpoints = log
        .checkpoints
        .iter()
        .map(|(size, note)| (size.to_string(), note.clone().into_bytes()));
    let mut auditor = Auditor::new(log.signer.verifier(), checkpoints)?;
    let mut stream = HashStream::new(hashes);
    for bytes in EntryReader::new(entries) {
        let bytes = bytes?;
        let mut next = || stream.next_hash();
        auditor.push_entry(&bytes, Some(&mut next))?;
    }
    stream.expect_end()?;
    Ok(auditor.finish()?.entries)
}

#[test]
fn audit_passes_and_names_the_index_of_any_changed_byte() {
    let log = build(12);
    let (entries, hashes) = export(&log);
    assert_eq!(audit(&log, &entries, &hashes), Ok(12));
    // Every byte of every entry (skipping length prefixes, which only truncate).
    let mut offset = 0usize;
    for (index, entry) in log.entries.iter().enumerate() {
        let start = offset + 4;
        for at in start..start + entry.len() {
            let mut bad = entries.clone();
            bad[at] ^= 0x01;
            let err = audit(&log, &bad, &hashes).expect_err("changed entry byte accepted");
            let message = err.to_string();
            let names_it = message.contains(&format!("entry {index}"))
                || message.contains(&format!("entry {}", index + 1))
                || message.contains(&format!("covering entries {index}.."));
            assert!(names_it, "byte {at} of entry {index}: {message}");
        }
        offset = start + entry.len();
    }
    // Every stored tree hash.
    for i in 0..log.stored.len() {
        let mut bad = hashes.clone();
        bad[i * 32 + 31] ^= 0x01;
        let err = audit(&log, &entries, &bad).expect_err("changed tree hash accepted");
        assert!(
            matches!(
                err,
                AuditError::TreeHash { .. } | AuditError::LeafHash { .. }
            ),
            "{err}"
        );
    }
    // A missing last entry, a dropped checkpoint signature, a forked checkpoint.
    let cut = entries.len() - (log.entries[11].len() + 4);
    assert!(matches!(
        audit(&log, &entries[..cut], &hashes),
        Err(AuditError::MissingEntries { .. }) | Err(AuditError::ExtraTreeHashes(_))
    ));
    let mut forked = build(12);
    let other_root = Hash([5; 32]);
    let fork = Checkpoint::new(ORIGIN, 6, other_root)
        .sign(&forked.signer)
        .expect("sign");
    forked.checkpoints.push((6, fork));
    assert!(matches!(
        audit(&forked, &entries, &hashes),
        Err(AuditError::Fork { size: 6, .. })
    ));
}
