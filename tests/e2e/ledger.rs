//! The provenance ledger end to end: appends over gRPC and the CLI, receipts verified offline,
//! exports audited offline, tampering caught, and `kill -9` during concurrent appends.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custodian_client::Conn;
use custodian_core::checkpoint::Checkpoint;
use custodian_core::entry::{Value, encode_value};
use custodian_core::merkle::{Hash, verify_consistency};
use custodian_core::note::VerifierKey;
use custodian_core::receipt::Receipt;
use custodian_proto::ledger::v1 as pb;
use custodian_proto::ledger::v1::ledger_client::LedgerClient;
use futures::StreamExt;

use custodian_testkit::Daemon;

pub const TOKEN: &str = "e2e-append-token";

pub fn start(dir: &Path) -> Daemon {
    Daemon::start_with(
        dir,
        &["--append-token", TOKEN, "--log-origin", "e2e.test/ledger"],
    )
}

pub async fn client(daemon: &Daemon) -> LedgerClient<Conn> {
    daemon.connect(None).await.ledger()
}

fn payload(i: u64) -> Vec<u8> {
    encode_value(&Value::Map(vec![
        (Value::Text("run".into()), Value::Integer(i.into())),
        (
            Value::Text("data_pack_sha256".into()),
            Value::Text(format!("sha256:{i:064x}")),
        ),
        (
            Value::Text("reproducibility_context".into()),
            Value::Map(vec![(
                Value::Text("seed".into()),
                Value::Integer(42.into()),
            )]),
        ),
    ]))
}

/// [`payload`]'s map with its keys in reverse order, encoded as it is: CBOR, but not in the
/// deterministic form the log holds, which the daemon puts it in.
fn payload_out_of_order(i: u64) -> Vec<u8> {
    let Ok(Value::Map(mut pairs)) = custodian_core::entry::parse_cbor(&payload(i)) else {
        panic!("payload {i} is not a map");
    };
    pairs.reverse();
    let bytes = encode_value(&Value::Map(pairs));
    assert_ne!(
        bytes,
        payload(i),
        "payload {i}'s keys were already in reverse order"
    );
    bytes
}

/// Asserts, with a proof from the daemon verified here, that checkpoint `old` is a prefix of
/// `latest`; `what` says which check failed.
pub async fn assert_consistent(
    log: &mut LedgerClient<Conn>,
    old: &Checkpoint,
    latest: &Checkpoint,
    what: &str,
) {
    let proof = log
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            old_size: old.size,
            new_size: Some(latest.size),
        })
        .await
        .unwrap_or_else(|s| panic!("{what}: consistency proof from {}: {s:?}", old.size))
        .into_inner();
    let hashes: Vec<Hash> = proof
        .hashes
        .iter()
        .map(|h| Hash::from_slice(h).expect("a 32-byte hash"))
        .collect();
    verify_consistency(old.size, latest.size, &hashes, &old.root, &latest.root).unwrap_or_else(
        |e| {
            panic!(
                "{what}: checkpoint {} is not consistent with {}: {e}",
                old.size, latest.size
            )
        },
    );
}

pub async fn append(client: &mut LedgerClient<Conn>, i: u64) -> Result<pb::Receipt, tonic::Status> {
    let response = append_answer(client, i, false).await?;
    Ok(response.receipt.expect("receipt"))
}

/// `Append` of payload `i` with the append token, compact or not; the daemon's whole answer.
async fn append_answer(
    client: &mut LedgerClient<Conn>,
    i: u64,
    compact: bool,
) -> Result<pb::AppendResponse, tonic::Status> {
    let mut request = tonic::Request::new(pb::AppendRequest {
        kind: "LedgerProbe".into(),
        payload_cbor: payload(i).into(),
        compact,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("metadata"),
    );
    Ok(client.append(request).await?.into_inner())
}

async fn verifier(client: &mut LedgerClient<Conn>) -> VerifierKey {
    let info = client
        .get_log_info(pb::GetLogInfoRequest {})
        .await
        .expect("log info")
        .into_inner();
    assert_eq!(info.origin, "e2e.test/ledger");
    VerifierKey::parse(&info.verifier_key).expect("verifier key")
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn appends_return_receipts_that_verify_offline_and_tampering_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(&dir.path().join("data"));
    let mut client = client(&daemon).await;
    let verifier = verifier(&mut client).await;
    for i in 0..20 {
        let receipt = append(&mut client, i).await.unwrap();
        assert_eq!(receipt.log_index, i);
        let parsed = Receipt::from_json(&receipt.json).unwrap();
        let verified = parsed.verify(&verifier).unwrap();
        assert_eq!(verified.index, i);
    }

    // Unauthorized and malformed appends are refused with a reason and write nothing.
    let mut request = tonic::Request::new(pb::AppendRequest {
        kind: "LedgerProbe".into(),
        payload_cbor: payload(99).into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    let status = client.append(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = client
        .append(pb::AppendRequest {
            kind: "LedgerProbe".into(),
            payload_cbor: payload(99).into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(pb::AppendRequest {
        kind: "LedgerProbe".into(),
        payload_cbor: vec![0xff, 0x00].into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let status = client.append(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("payload_cbor"), "{status:?}");
    let latest = client
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest.tree_size, 20, "a refused append wrote something");

    // Reads name the field and the value.
    let status = client
        .get_entry(pb::GetEntryRequest { index: 20 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(
        status.message().contains("field index: entry 20"),
        "{status:?}"
    );
    let status = client
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            old_size: 5,
            new_size: Some(21),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("field new_size: tree size 21"),
        "{status:?}"
    );
    let status = client
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            old_size: 9,
            new_size: Some(5),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("field old_size"), "{status:?}");
    let status = client
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            leaf: Some(pb::get_inclusion_proof_request::Leaf::LeafHash(
                vec![1, 2, 3].into(),
            )),
            tree_size: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("field leaf_hash: a leaf hash is 32 bytes, got 3"),
        "{status:?}"
    );

    // A proof by leaf hash equals the proof by index.
    let entry = client
        .get_entry(pb::GetEntryRequest { index: 7 })
        .await
        .unwrap()
        .into_inner();
    let by_hash = client
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            leaf: Some(pb::get_inclusion_proof_request::Leaf::LeafHash(
                entry.leaf_hash.clone(),
            )),
            tree_size: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_hash.index, 7);
    assert_eq!(by_hash.tree_size, 20);
    assert!(by_hash.checkpoint.is_some());

    // The CLI: receipt to a file, verified offline (the daemon is not consulted: a wrong
    // --server would not matter), then every field modified.
    let key_file = dir.path().join("log.vkey");
    let key = daemon.cli(&["log", "key"]);
    assert!(key.status.success(), "{}", stderr(&key));
    let offline = daemon.cli(&[
        "log",
        "key",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
    assert_eq!(
        stdout(&offline),
        stdout(&key),
        "offline key differs from the daemon's"
    );
    std::fs::write(&key_file, stdout(&key)).unwrap();
    let receipt_file = dir.path().join("r7.json");
    let out = daemon.cli(&["log", "receipt", "7", "-o", receipt_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let verify = |file: &Path| {
        std::process::Command::new(custodian_testkit::binary())
            .args(["log", "verify-receipt"])
            .arg(file)
            .arg("--key")
            .arg(&key_file)
            .env("CUSTODIAN_SERVER", "http://127.0.0.1:1")
            .output()
            .unwrap()
    };
    let good = verify(&receipt_file);
    assert!(good.status.success(), "{}", stderr(&good));
    assert!(stdout(&good).contains("receipt verifies: entry 7"));
    // The same receipt in C2SP tlog-proof form verifies the same way, and a flipped proof line
    // does not.
    let proof_file = dir.path().join("r7.tlog-proof");
    let out = daemon.cli(&[
        "log",
        "receipt",
        "7",
        "--format",
        "tlog-proof",
        "-o",
        proof_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let proof_text = std::fs::read_to_string(&proof_file).unwrap();
    assert!(
        proof_text.starts_with("c2sp.org/tlog-proof@v1\nextra "),
        "{proof_text}"
    );
    let good = verify(&proof_file);
    assert!(good.status.success(), "{}", stderr(&good));
    assert!(stdout(&good).contains("receipt verifies: entry 7"));
    let line = proof_text.lines().nth(3).unwrap();
    let flipped = if line.starts_with('A') { "B" } else { "A" };
    std::fs::write(
        &proof_file,
        proof_text.replacen(line, &format!("{flipped}{}", &line[1..]), 1),
    )
    .unwrap();
    let bad = verify(&proof_file);
    assert!(!bad.status.success(), "a tampered tlog-proof verified");
    assert!(
        stderr(&bad).contains("root recomputed from the proof"),
        "{}",
        stderr(&bad)
    );

    let original = std::fs::read_to_string(&receipt_file).unwrap();
    let json: serde_json::Value = serde_json::from_str(&original).unwrap();
    let mut cases: Vec<(&str, serde_json::Value, &str)> = Vec::new();
    let mut changed = json.clone();
    changed["log_index"] = serde_json::json!(8);
    cases.push(("log_index", changed, "inclusion proof of entry 8"));
    let mut changed = json.clone();
    let entry_b64 = json["entry"].as_str().unwrap();
    let flipped = if entry_b64.starts_with('p') { "q" } else { "p" };
    changed["entry"] = serde_json::json!(format!("{flipped}{}", &entry_b64[1..]));
    cases.push(("entry", changed, "receipt entry 7"));
    let mut changed = json.clone();
    let hash = json["inclusion_proof"][1].as_str().unwrap();
    let flipped = if hash.starts_with('A') { "B" } else { "A" };
    changed["inclusion_proof"][1] = serde_json::json!(format!("{flipped}{}", &hash[1..]));
    cases.push(("inclusion_proof", changed, "root recomputed from the proof"));
    let mut changed = json.clone();
    let note = json["checkpoint"].as_str().unwrap();
    changed["checkpoint"] = serde_json::json!(note.replacen("\n20\n", "\n21\n", 1));
    cases.push(("checkpoint size", changed, "does not verify"));
    let mut changed = json.clone();
    let sig_at = note.rfind(' ').unwrap() + 30;
    let mut bytes = note.as_bytes().to_vec();
    bytes[sig_at] = if bytes[sig_at] == b'x' { b'y' } else { b'x' };
    changed["checkpoint"] = serde_json::json!(String::from_utf8(bytes).unwrap());
    cases.push(("signature", changed, "does not verify"));
    for (what, changed, reason) in cases {
        let file = dir
            .path()
            .join(format!("bad-{}.json", what.replace(' ', "-")));
        std::fs::write(&file, serde_json::to_string_pretty(&changed).unwrap()).unwrap();
        let out = verify(&file);
        assert!(!out.status.success(), "modified {what} verified");
        assert!(
            stderr(&out).contains("does NOT verify") && stderr(&out).contains(reason),
            "modified {what}: {}",
            stderr(&out)
        );
    }
    // Another log's key.
    let other = "e2e.test/ledger+00000000+AUR2ieeDaRhQwSEcx1k/A8OTqKMfLDuNhcA2sw/jlEvF";
    let out = std::process::Command::new(custodian_testkit::binary())
        .args(["log", "verify-receipt"])
        .arg(&receipt_file)
        .args(["--key", other])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test]
async fn export_audits_offline_and_a_changed_stored_byte_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut daemon = start(&data);
    let client = client(&daemon).await;
    // Concurrent appends, so batches of several entries and many checkpoints.
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                append(&mut client, t * 1000 + i).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let key_file = dir.path().join("log.vkey");
    std::fs::write(&key_file, stdout(&daemon.cli(&["log", "key"]))).unwrap();
    let export = |name: &str, daemon: &Daemon| {
        let target = dir.path().join(name);
        let out = daemon.cli(&["log", "export", target.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        target
    };
    let audit = |target: &Path| {
        std::process::Command::new(custodian_testkit::binary())
            .arg("audit")
            .arg(target)
            .arg("--key")
            .arg(&key_file)
            .output()
            .unwrap()
    };
    let clean = export("clean", &daemon);
    let out = audit(&clean);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("audit passed: 200 entries,"),
        "{}",
        stdout(&out)
    );

    // Change one byte of a stored entry and, separately, one stored tree hash, in RocksDB
    // itself while the daemon is down.
    daemon.kill9();
    flip_entry_57(&data);
    // Leaf 3's stored hash: inside the tree, not on its right edge.
    let leaf3 = custodian_core::merkle::stored_hash_index(0, 3);
    tamper(
        &data.join("ledger"),
        custodian_rocksdb::ledger::CF_TREE,
        leaf3,
        |v| {
            v[0] ^= 0x80;
        },
    );
    daemon.restart_after_kill9();

    // The daemon refuses to serve what the change touches...
    let mut client = daemon.connect(None).await.ledger();
    let status = client
        .get_entry(pb::GetEntryRequest { index: 57 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    let status = client
        .get_receipt(pb::GetReceiptRequest {
            leaf: Some(pb::get_receipt_request::Leaf::Index(2)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    // ...and the audit of an export names the index.
    let tampered = export("tampered", &daemon);
    let out = audit(&tampered);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("audit FAILED")
            && message.contains("entry 3: its bytes hash to leaf hash"),
        "{message}"
    );
    // With the tree hashes restored from the clean export, the changed entry is named.
    std::fs::copy(clean.join("tree-hashes"), tampered.join("tree-hashes")).unwrap();
    let out = audit(&tampered);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains("entry 57"), "{message}");

    // Damage to the last entry keeps the daemon from starting at all; an export straight from
    // the data directory still reaches the auditor, who names the entry.
    daemon.kill9();
    // Undo the change to entry 57 first: an audit names only the first divergence.
    flip_entry_57(&data);
    tamper(
        &data.join("ledger"),
        custodian_rocksdb::ledger::CF_ENTRIES,
        199,
        |v| {
            v[5] ^= 0x04;
        },
    );
    let mut serve = std::process::Command::new(custodian_testkit::binary())
        .args(["serve", "--init", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = serve.kill();
            panic!("the daemon started on a ledger whose last entry was changed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut refused = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut refused).unwrap();
    assert!(refused.contains("entry 199"), "{refused}");
    let offline = dir.path().join("offline");
    let out = std::process::Command::new(custodian_testkit::binary())
        .args(["log", "export", "--data-dir"])
        .arg(&data)
        .arg(&offline)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::copy(clean.join("tree-hashes"), offline.join("tree-hashes")).unwrap();
    let out = audit(&offline);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains("entry 199"), "{message}");
}

/// Flips one bit near the end of entry 57 in the stored ledger (twice restores it).
fn flip_entry_57(data: &Path) {
    tamper(
        &data.join("ledger"),
        custodian_rocksdb::ledger::CF_ENTRIES,
        57,
        |v| {
            let at = v.len() - 3;
            v[at] ^= 0x01;
        },
    );
}

/// Changes the value under a big-endian u64 key in one column family of the ledger database.
pub fn tamper(path: &Path, cf: &str, key: u64, change: impl FnOnce(&mut Vec<u8>)) {
    let cfs = [
        custodian_rocksdb::ledger::CF_ENTRIES,
        custodian_rocksdb::ledger::CF_TREE,
        custodian_rocksdb::ledger::CF_LEAVES,
        custodian_rocksdb::ledger::CF_CHECKPOINTS,
    ];
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), path, cfs).expect("open ledger db");
    let handle = db.cf_handle(cf).expect("column family");
    let mut value = db
        .get_cf(handle, key.to_be_bytes())
        .expect("read")
        .expect("key present");
    change(&mut value);
    db.put_cf(handle, key.to_be_bytes(), value).expect("write");
    db.flush_cf(handle).expect("flush");
}

#[tokio::test]
async fn kill_9_during_concurrent_appends_loses_no_acknowledged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start(dir.path());
    let mut client = client(&daemon).await;
    let verifier = verifier(&mut client).await;
    // (index, leaf hash, the checkpoint its receipt carried) of every acknowledged append.
    type Acked = Vec<(u64, Vec<u8>, String)>;
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let mut seen_checkpoints: Vec<(u64, Hash)> = Vec::new();
    // Five crashes at different moments of a stream of appends.
    for (round, run_ms) in [(0u64, 300u64), (1, 170), (2, 650), (3, 45), (4, 420)] {
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let mut client = client.clone();
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    match append(&mut client, round * 1_000_000 + t * 10_000 + i).await {
                        Ok(receipt) => {
                            let leaf = custodian_core::merkle::leaf_hash(&receipt.entry);
                            acked.lock().unwrap().push((
                                receipt.log_index,
                                leaf.0.to_vec(),
                                receipt.checkpoint,
                            ));
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        // Let appends run, remember a checkpoint issued on the way, then crash mid-stream.
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        let mid = client
            .get_checkpoint(pb::GetCheckpointRequest { tree_size: None })
            .await
            .unwrap()
            .into_inner();
        let opened = Checkpoint::open(mid.note.as_bytes(), &verifier).unwrap();
        seen_checkpoints.push((opened.size, opened.root));
        tokio::time::sleep(Duration::from_millis(run_ms / 3)).await;
        daemon.kill9();
        for task in tasks {
            task.await.unwrap();
        }
        daemon.restart_after_kill9();
        client = daemon.connect(None).await.ledger();

        let latest = client
            .get_checkpoint(pb::GetCheckpointRequest { tree_size: None })
            .await
            .unwrap()
            .into_inner();
        let latest_cp = Checkpoint::open(latest.note.as_bytes(), &verifier).unwrap();
        let acked = acked.lock().unwrap().clone();
        assert!(!acked.is_empty());
        // Every acknowledged entry is there, unchanged (one streamed read of the whole log).
        let mut stored = Vec::new();
        let mut stream = client
            .get_entries(pb::GetEntriesRequest {
                start: 0,
                end: None,
            })
            .await
            .unwrap()
            .into_inner();
        while let Some(entry) = stream.next().await {
            stored.push(entry.unwrap().leaf_hash.to_vec());
        }
        assert_eq!(stored.len() as u64, latest_cp.size);
        for (index, leaf, note) in &acked {
            assert!(
                *index < latest_cp.size,
                "acknowledged entry {index} is beyond the recovered size {}",
                latest_cp.size
            );
            assert_eq!(&stored[*index as usize], leaf, "entry {index} changed");
            let issued = Checkpoint::open(note.as_bytes(), &verifier).unwrap();
            if !seen_checkpoints.contains(&(issued.size, issued.root)) {
                seen_checkpoints.push((issued.size, issued.root));
            }
        }
        // The stored tree's root is the last checkpoint's: proofs against it verify.
        let proof = client
            .get_inclusion_proof(pb::GetInclusionProofRequest {
                leaf: Some(pb::get_inclusion_proof_request::Leaf::Index(0)),
                tree_size: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(proof.tree_size, latest_cp.size);
        // Every checkpoint seen before the crash is consistent with the one after.
        for (size, root) in &seen_checkpoints {
            let proof = client
                .get_consistency_proof(pb::GetConsistencyProofRequest {
                    old_size: *size,
                    new_size: Some(latest_cp.size),
                })
                .await
                .unwrap()
                .into_inner();
            let hashes: Vec<Hash> = proof
                .hashes
                .iter()
                .map(|h| Hash::from_slice(h).unwrap())
                .collect();
            verify_consistency(*size, latest_cp.size, &hashes, root, &latest_cp.root)
                .unwrap_or_else(|e| panic!("checkpoint {size} inconsistent after crash: {e}"));
        }
        seen_checkpoints.push((latest_cp.size, latest_cp.root));
        eprintln!(
            "round {round}: {} acknowledged, {} after restart, {} checkpoints checked",
            acked.len(),
            latest_cp.size,
            seen_checkpoints.len()
        );
    }
}

#[tokio::test]
async fn consistency_witnesses_growth_and_catches_a_fork_signed_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let data_a = dir.path().join("a");
    let daemon = start(&data_a);
    let mut client = client(&daemon).await;
    for i in 0..5 {
        append(&mut client, i).await.unwrap();
    }
    let key_file = dir.path().join("log.vkey");
    std::fs::write(&key_file, stdout(&daemon.cli(&["log", "key"]))).unwrap();
    let saved = dir.path().join("saved.checkpoint");
    let out = daemon.cli(&["log", "checkpoint"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(&saved, &out.stdout).unwrap();
    for i in 5..12 {
        append(&mut client, i).await.unwrap();
    }
    let consistency = |daemon: &Daemon| {
        daemon.cli(&[
            "log",
            "consistency",
            "--from",
            saved.to_str().unwrap(),
            "--key",
            key_file.to_str().unwrap(),
            "--update",
        ])
    };
    let out = consistency(&daemon);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("grew from 5 to 12 entries"),
        "{}",
        stdout(&out)
    );
    let updated = std::fs::read_to_string(&saved).unwrap();
    assert!(updated.contains("\n12\n"), "{updated}");

    // A second log under the same key (a stolen or reused key): its history differs.
    let data_b = dir.path().join("b");
    std::fs::create_dir_all(&data_b).unwrap();
    std::fs::copy(data_a.join("log-key"), data_b.join("log-key")).unwrap();
    let forked = start(&data_b);
    let mut fork_client = forked.connect(None).await.ledger();
    for i in 100..104 {
        append(&mut fork_client, i).await.unwrap();
    }
    let out = consistency(&forked);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("the log shrank"), "{}", stderr(&out));
    for i in 104..120 {
        append(&mut fork_client, i).await.unwrap();
    }
    let out = consistency(&forked);
    assert!(!out.status.success(), "a fork passed as consistent");
    assert!(
        stderr(&out).contains("NOT consistent") && stderr(&out).contains("root recomputed"),
        "{}",
        stderr(&out)
    );
    // The saved checkpoint was not replaced by the fork's.
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), updated);
}

/// The log's size as the daemon reports it.
async fn log_size(client: &mut LedgerClient<Conn>) -> u64 {
    client
        .get_log_info(pb::GetLogInfoRequest {})
        .await
        .expect("log info")
        .into_inner()
        .size
}

/// A request on an `AppendStream` carrying `payload_cbor` of the given kind.
fn stream_request(kind: &str, payload_cbor: Vec<u8>) -> pb::AppendRequest {
    pb::AppendRequest {
        kind: kind.into(),
        payload_cbor: payload_cbor.into(),
        ..Default::default()
    }
}

/// Opens an `AppendStream` with `token`, fed from the returned sender.
async fn open_append_stream(
    client: &mut LedgerClient<Conn>,
    token: &str,
) -> Result<
    (
        tokio::sync::mpsc::Sender<pb::AppendRequest>,
        tonic::Streaming<pb::AppendStreamResponse>,
    ),
    tonic::Status,
> {
    let (requests, outgoing) = tokio::sync::mpsc::channel(256);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    let answers = client.append_stream(request).await?.into_inner();
    Ok((requests, answers))
}

/// `AppendStream`: requests sent without waiting are answered one each, in the order sent, and
/// appended in that order, each with a receipt that verifies offline; a refused request (a
/// registry kind, CBOR that does not decode, a float) is answered with its code and a message
/// naming the field, appends nothing, and the stream goes on. A caller without the right is
/// refused when the stream opens, and a token revoked while its stream is open is refused at
/// its next request.
#[tokio::test]
async fn append_stream_answers_in_order_and_a_refusal_ends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(&dir.path().join("data"));
    let mut client = client(&daemon).await;
    let verifier = verifier(&mut client).await;
    let float = encode_value(&Value::Map(vec![(
        Value::Text("score".into()),
        Value::Float(0.5),
    )]));
    let refused = [
        (40, stream_request("RunAttested", payload(40)), "kind"),
        (
            90,
            stream_request("LedgerProbe", vec![0xff, 0x00]),
            "payload_cbor",
        ),
        (150, stream_request("LedgerProbe", float), "payload_cbor"),
    ];
    let (requests, mut answers) = open_append_stream(&mut client, TOKEN).await.unwrap();
    // All 200 go out before the first answer is read: up to 128 are in flight in the daemon.
    let to_send = refused.clone();
    let sent = tokio::spawn(async move {
        let refused = to_send;
        for i in 0..200u64 {
            let request = match refused.iter().find(|(at, _, _)| *at == i) {
                Some((_, request, _)) => request.clone(),
                None => stream_request("LedgerProbe", payload(i)),
            };
            requests.send(request).await.expect("the stream is open");
        }
        requests
    });
    let mut last_index = None;
    for i in 0..200u64 {
        let answer = answers
            .message()
            .await
            .unwrap_or_else(|s| panic!("answer {i}: {s:?}"))
            .unwrap_or_else(|| panic!("the stream ended before answer {i}"));
        if let Some((_, _, field)) = refused.iter().find(|(at, _, _)| *at == i) {
            assert_eq!(
                answer.error_code,
                tonic::Code::InvalidArgument as i32,
                "answer {i}: {answer:?}"
            );
            assert!(
                answer.error_message.contains(field),
                "answer {i} should name {field}: {}",
                answer.error_message
            );
            assert!(answer.receipt.is_none(), "answer {i}: {answer:?}");
            continue;
        }
        assert_eq!(answer.error_code, 0, "answer {i}: {answer:?}");
        let receipt = answer.receipt.expect("a receipt");
        let verified = Receipt::from_json(&receipt.json)
            .unwrap()
            .verify(&verifier)
            .unwrap_or_else(|e| panic!("answer {i}'s receipt: {e}"));
        assert_eq!(verified.index, receipt.log_index);
        // The entry answered is the one sent, and the stream's entries are in the order sent.
        let entry = custodian_core::entry::Entry::decode(&receipt.entry).unwrap();
        assert_eq!(encode_value(&entry.payload), payload(i), "answer {i}");
        assert!(
            last_index.is_none_or(|last| receipt.log_index > last),
            "answer {i} at index {} came after index {last_index:?}",
            receipt.log_index
        );
        last_index = Some(receipt.log_index);
    }
    let requests = sent.await.unwrap();
    drop(requests);
    assert!(
        answers.message().await.unwrap().is_none(),
        "the daemon ends the stream once the writer has and every request is answered"
    );
    // The refused three appended nothing: the log holds exactly the 197 appended.
    assert_eq!(log_size(&mut client).await, 197);

    // No token, and a token that may not append, are refused before anything is read.
    for (token, code) in [
        ("wrong", tonic::Code::Unauthenticated),
        (
            daemon.create_token("reader", "read", "*").as_str(),
            tonic::Code::PermissionDenied,
        ),
    ] {
        let status = match open_append_stream(&mut client, token).await {
            Err(status) => status,
            // The refusal may also come as the stream's first item.
            Ok((_requests, mut answers)) => answers.message().await.unwrap_err(),
        };
        assert_eq!(status.code(), code, "{status:?}");
    }

    // An admin token revoked while its stream is open stops appending at its next request.
    let admin = daemon.create_token("stream-admin", "admin", "*");
    let (requests, mut answers) = open_append_stream(&mut client, &admin).await.unwrap();
    requests
        .send(stream_request("LedgerProbe", payload(1000)))
        .await
        .unwrap();
    let first = answers.message().await.unwrap().unwrap();
    assert_eq!(first.error_code, 0, "{first:?}");
    let listed = String::from_utf8(
        crate::registry::offline(&[
            "token",
            "list",
            "--json",
            "--data-dir",
            daemon.data_dir.to_str().unwrap(),
        ])
        .stdout,
    )
    .unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let id = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "stream-admin")
        .expect("the token is listed")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let revoke = crate::registry::offline(&[
        "token",
        "revoke",
        &id,
        "--data-dir",
        daemon.data_dir.to_str().unwrap(),
    ]);
    assert!(revoke.status.success(), "{revoke:?}");
    requests
        .send(stream_request("LedgerProbe", payload(1001)))
        .await
        .unwrap();
    let second = answers.message().await.unwrap().unwrap();
    assert_eq!(
        second.error_code,
        tonic::Code::Unauthenticated as i32,
        "{second:?}"
    );
    assert!(second.receipt.is_none());
    assert_eq!(
        log_size(&mut client).await,
        198,
        "only the request before the revocation appended"
    );
}

/// A compact append, unary or on a stream, is answered with where the entry is and no receipt:
/// its index, the leaf hash of the bytes the log holds there, and the size of a signed
/// checkpoint that exists and covers it; the receipt fetched afterwards verifies offline and
/// is for that leaf. An answer with a receipt carries the same three fields, and they agree
/// with its receipt.
#[tokio::test]
async fn compact_appends_answer_where_the_entry_is_and_its_receipt_follows() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(&dir.path().join("data"));
    let mut client = client(&daemon).await;
    let verifier = verifier(&mut client).await;
    // The places answered, each with the receipt sent beside it (if any) and the payload sent.
    let mut places = Vec::new();
    for (i, compact) in [(0, true), (1, false)] {
        let answer = append_answer(&mut client, i, compact).await.unwrap();
        places.push((
            answer.log_index,
            answer.leaf_hash.to_vec(),
            answer.checkpoint_size,
            answer.receipt,
            i,
        ));
    }
    // On a stream, compact and full requests alternate, all sent before any answer is read.
    // Every fourth payload is sent with its keys out of order: the log holds it in deterministic
    // form all the same (a receipt whose entry is not would not verify), and its place is that
    // entry's.
    let (requests, mut answers) = open_append_stream(&mut client, TOKEN).await.unwrap();
    for i in 2..22u64 {
        let sent = if i % 4 == 3 {
            payload_out_of_order(i)
        } else {
            payload(i)
        };
        let mut request = stream_request("LedgerProbe", sent);
        request.compact = i % 2 == 0;
        requests.send(request).await.expect("the stream is open");
    }
    drop(requests);
    for i in 2..22u64 {
        let answer = answers.message().await.unwrap().expect("an answer");
        assert_eq!(answer.error_code, 0, "answer {i}: {answer:?}");
        places.push((
            answer.log_index,
            answer.leaf_hash.to_vec(),
            answer.checkpoint_size,
            answer.receipt,
            i,
        ));
    }
    for (index, leaf_hash, checkpoint_size, sent, i) in places {
        // Even payloads were sent compact: their answers carry no receipt; the others, one.
        assert_eq!(sent.is_none(), i % 2 == 0, "answer {i}");
        assert_eq!(index, i, "answer {i}: the entries are in the order sent");
        assert!(
            checkpoint_size > index,
            "answer {i}: checkpoint size {checkpoint_size} does not cover index {index}"
        );
        let checkpoint = client
            .get_checkpoint(pb::GetCheckpointRequest {
                tree_size: Some(checkpoint_size),
            })
            .await
            .unwrap_or_else(|s| panic!("answer {i}: no checkpoint at {checkpoint_size}: {s:?}"))
            .into_inner();
        Checkpoint::open(checkpoint.note.as_bytes(), &verifier).unwrap();
        let receipt = client
            .get_receipt(pb::GetReceiptRequest {
                leaf: Some(pb::get_receipt_request::Leaf::Index(index)),
            })
            .await
            .unwrap()
            .into_inner();
        let verified = Receipt::from_json(&receipt.json)
            .unwrap()
            .verify(&verifier)
            .unwrap_or_else(|e| panic!("answer {i}'s receipt: {e}"));
        assert_eq!(verified.leaf_hash.0.as_slice(), leaf_hash, "answer {i}");
        assert_eq!(
            encode_value(&verified.entry.payload),
            payload(i),
            "answer {i}"
        );
        if let Some(sent) = sent {
            // The receipt sent with the answer is for the same leaf, at the checkpoint named.
            let sent = Receipt::from_json(&sent.json)
                .unwrap()
                .verify(&verifier)
                .unwrap();
            assert_eq!((sent.index, sent.leaf_hash), (index, verified.leaf_hash));
            assert_eq!(sent.checkpoint.size, checkpoint_size, "answer {i}");
        }
    }
}

/// Checks an entry's place as JSON (`log_index`, `leaf_hash` in hex, `checkpoint_size`) against
/// the log: it is at `index` (an absent `log_index` is 0, which protobuf leaves off the wire),
/// its checkpoint covers it, and its leaf hash is that of the entry the log holds there, whose
/// receipt is returned.
async fn assert_place_is_the_logs(
    client: &mut LedgerClient<Conn>,
    place: &serde_json::Value,
    index: u64,
) -> pb::Receipt {
    assert_eq!(place["log_index"].as_u64().unwrap_or(0), index, "{place}");
    let checkpoint_size = place["checkpoint_size"]
        .as_u64()
        .unwrap_or_else(|| panic!("no checkpoint_size: {place}"));
    assert!(checkpoint_size > index, "{place}");
    let logged = client
        .get_receipt(pb::GetReceiptRequest {
            leaf: Some(pb::get_receipt_request::Leaf::Index(index)),
        })
        .await
        .unwrap_or_else(|s| panic!("no receipt at {index}: {s:?}"))
        .into_inner();
    assert_eq!(
        place["leaf_hash"],
        hex::encode(custodian_core::merkle::leaf_hash(&logged.entry).0),
        "{place}"
    );
    logged
}

/// grpcio (PyPI), a gRPC stack nobody here wrote, appends 50 entries on one `AppendStream`
/// (tests/interop/grpc_append_stream.py): every answer comes back in the order sent, the one
/// request that is not CBOR refused by name, each receipt verifies offline and holds the entry
/// sent, each answer's place (index, leaf hash, checkpoint size) is the log's, and the requests
/// that ask for compact answers get their place and no receipt; a stream opened with a false
/// token is refused `UNAUTHENTICATED`, and one whose second message does not decode ends
/// `INTERNAL` after the first's answer.
#[tokio::test]
async fn grpcio_appends_on_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(&dir.path().join("data"));
    let mut client = client(&daemon).await;
    let verifier = verifier(&mut client).await;
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/grpc_append_stream.py");
    let address = daemon.address.trim_start_matches("http://").to_string();
    let out = crate::run_ok(
        std::process::Command::new(crate::registry::python())
            .arg(&script)
            .args([&address, TOKEN]),
    );
    let report: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let answers = report["answers"].as_array().expect("answers");
    assert_eq!(answers.len(), 50, "{report}");
    let mut next_index = 0;
    for (i, answer) in answers.iter().enumerate() {
        if i == 20 {
            assert_eq!(
                answer["error_code"],
                tonic::Code::InvalidArgument as i32,
                "{answer}"
            );
            let message = answer["error_message"].as_str().unwrap();
            assert!(message.contains("payload_cbor"), "{message}");
            assert!(answer.get("receipt").is_none(), "{answer}");
            continue;
        }
        assert_eq!(answer["error_code"], 0, "{answer}");
        // Every appended entry's answer names its place.
        let logged = assert_place_is_the_logs(&mut client, answer, next_index).await;
        let index = next_index;
        next_index += 1;
        // Requests from 40 on asked for compact answers: no receipt, and the log's entry is
        // the one sent.
        if i >= 40 {
            assert!(answer.get("receipt").is_none(), "{answer}");
            let entry = custodian_core::entry::Entry::decode(&logged.entry).unwrap();
            assert_eq!(
                entry.payload,
                Value::Map(vec![(Value::Text("n".into()), Value::Integer(i.into()))]),
                "answer {i}"
            );
            continue;
        }
        let receipt = &answer["receipt"];
        assert_eq!(receipt["index"].as_u64().unwrap_or(0), index, "{answer}");
        let verified = Receipt::from_json(receipt["json"].as_str().unwrap())
            .unwrap()
            .verify(&verifier)
            .unwrap_or_else(|e| panic!("answer {i}'s receipt: {e}"));
        let entry = custodian_core::entry::Entry::decode(
            &hex::decode(receipt["entry"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(verified.index, receipt["index"].as_u64().unwrap_or(0));
        assert_eq!(
            entry.payload,
            Value::Map(vec![(Value::Text("n".into()), Value::Integer(i.into()))]),
            "answer {i}"
        );
    }
    assert_eq!(
        report["refused_stream"]["code"], "UNAUTHENTICATED",
        "{report}"
    );
    // A message that is not an AppendRequest ends its stream after the answer before it.
    let malformed = &report["malformed"];
    assert_eq!(malformed["answers"], 1, "{report}");
    assert_eq!(malformed["first"]["error_code"], 0, "{report}");
    assert_eq!(malformed["code"], "INTERNAL", "{report}");
    assert!(
        malformed["details"]
            .as_str()
            .unwrap()
            .contains("failed to decode"),
        "{report}"
    );
}

/// `custodian log append --lines`: one entry per line over one stream, in the order of the
/// lines, each receipt printed as one line of JSON that verifies offline; a line that is not
/// JSON and one with a fraction are named and not sent, a line the daemon refuses (an entry over
/// 1 MiB) is named with the daemon's reason, the lines after each are still appended, and the
/// command exits 1. Then every line of standard input, appended with exit 0; with `--compact`,
/// lines and one entry alike print each entry's place, naming the leaf the log holds; `--lines`
/// and `--payload` are not given together.
#[tokio::test]
async fn log_append_lines_appends_each_line_in_order_and_names_the_refused() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(&dir.path().join("data"));
    let mut client = client(&daemon).await;
    let verifier = verifier(&mut client).await;
    let big = format!("{{\"note\": \"{}\"}}", "x".repeat((1 << 20) + 10));
    let lines = [
        r#"{"note": "first", "n": 1}"#.to_string(),
        "not json".to_string(),
        r#"{"note": "second", "n": 2}"#.to_string(),
        String::new(),
        r#"{"score": 0.5}"#.to_string(),
        big,
        r#"{"note": "third", "n": 3}"#.to_string(),
    ];
    let file = dir.path().join("notes.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let run = |extra: &[&str], stdin: Option<&str>| {
        let mut command = std::process::Command::new(custodian_testkit::binary());
        command
            .args(["log", "append", "--kind", "AuditNote"])
            .args(extra)
            .args(["--append-token", TOKEN, "--server", &daemon.address]);
        command.stdin(std::process::Stdio::piped());
        command.stdout(std::process::Stdio::piped());
        command.stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("run custodian");
        let mut input = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut input, stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    };
    let out = run(&["--lines", file.to_str().unwrap()], None);
    let (printed, said) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{said}");
    let receipts: Vec<&str> = printed.lines().collect();
    assert_eq!(receipts.len(), 3, "{printed}\n{said}");
    for (at, (receipt, n)) in receipts.iter().zip(1..).enumerate() {
        let verified = Receipt::from_json(receipt)
            .unwrap()
            .verify(&verifier)
            .unwrap_or_else(|e| panic!("receipt {at}: {e}"));
        assert_eq!(verified.index, at as u64, "the lines' order is the log's");
        let entry = &verified.entry;
        assert_eq!(entry.kind.to_string(), "AuditNote");
        let Value::Map(fields) = &entry.payload else {
            panic!("{:?}", entry.payload)
        };
        assert!(
            fields.contains(&(Value::Text("n".into()), Value::Integer(n.into()))),
            "receipt {at}: {fields:?}"
        );
    }
    assert!(said.contains("line 2: not appended: not JSON"), "{said}");
    assert!(
        said.contains("line 5: not appended") && said.contains("0.5"),
        "{said}"
    );
    assert!(
        said.contains("line 6: refused") && said.contains("payload_cbor"),
        "{said}"
    );
    assert!(
        said.contains("appended 3 entries of 6 lines; 3 not appended"),
        "{said}"
    );

    // From standard input, every line appended: exit 0.
    let out = run(&["--lines", "-"], Some("{\"n\": 4}\n{\"n\": 5}\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 2);
    assert_eq!(log_size(&mut client).await, 5);

    // --compact prints each entry's place, one line of JSON each, for the lines and for one
    // entry alike; each names the leaf whose receipt the log then gives.
    let lines = run(
        &["--lines", "-", "--compact"],
        Some("{\"n\": 6}\n{\"n\": 7}\n"),
    );
    assert!(lines.status.success(), "{}", stderr(&lines));
    let one = run(&["--payload", "{\"n\": 8}", "--compact"], None);
    assert!(one.status.success(), "{}", stderr(&one));
    let printed = stdout(&lines) + &stdout(&one);
    let places: Vec<serde_json::Value> = printed
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect();
    assert_eq!(places.len(), 3, "{printed}");
    for (place, index) in places.iter().zip(5u64..) {
        assert_place_is_the_logs(&mut client, place, index).await;
    }

    let out = run(&["--lines", "-", "--payload", "{}"], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}

/// A daemon told to stop does not wait its whole shutdown grace for a writer's open
/// `AppendStream`: the requests it read are answered, the stream ends `UNAVAILABLE` saying the
/// rest were not read, and the daemon exits long before a grace of ten minutes; every entry
/// answered is in the log when it starts again.
#[tokio::test]
async fn an_append_stream_ends_unavailable_when_the_daemon_stops() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut daemon = Daemon::start_with(
        &data,
        &[
            "--append-token",
            TOKEN,
            "--log-origin",
            "e2e.test/ledger",
            "--shutdown-grace",
            "10m",
        ],
    );
    let mut client = client(&daemon).await;
    let (requests, mut answers) = open_append_stream(&mut client, TOKEN).await.unwrap();
    for i in 0..3 {
        requests
            .send(stream_request("LedgerProbe", payload(i)))
            .await
            .unwrap();
        let answer = answers.message().await.unwrap().unwrap();
        assert_eq!(answer.error_code, 0, "{answer:?}");
    }
    let stopped = std::time::Instant::now();
    daemon.terminate();
    let ended = tokio::time::timeout(Duration::from_secs(60), answers.message())
        .await
        .expect("the stream ends once the daemon stops")
        .expect_err("the stream ends with an error");
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(
        ended.message().contains("shutting down"),
        "{}",
        ended.message()
    );
    drop(requests);
    let exited = tokio::task::spawn_blocking(move || {
        let clean = daemon.wait_exit(Duration::from_secs(120));
        (daemon, clean)
    })
    .await
    .unwrap();
    let (mut daemon, clean) = exited;
    assert!(clean, "the daemon exits cleanly");
    assert!(
        stopped.elapsed() < Duration::from_secs(120),
        "the open stream held the daemon for {:?}",
        stopped.elapsed()
    );
    daemon.restart_with_env(&[]);
    let mut client = self::client(&daemon).await;
    assert_eq!(log_size(&mut client).await, 3);
}
