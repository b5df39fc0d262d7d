//! Custodian's checkpoints, receipts and proofs checked by Go's `golang.org/x/mod/sumdb/note` and
//! `sumdb/tlog` (the module proxy's release, built by scripts/test into tests/interop/go's
//! `sumdb-verify`): an implementation nobody on this project wrote.

use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use custodian_proto::ledger::v1 as pb;

use custodian_testkit::Daemon;

#[tokio::test]
async fn go_sumdb_note_and_tlog_verify_our_checkpoints_receipts_and_proofs() {
    let dir = tempfile::tempdir().expect("a Go interoperability step");
    let daemon = Daemon::start_with(
        &dir.path().join("data"),
        &["--append-token", "t", "--log-origin", "interop.test/ledger"],
    );
    go_verifies_the_log(&daemon, &dir.path().join("go")).await;
}

/// Appends 23 raw entries (token `t`), then has Go's sumdb/note and sumdb/tlog check a
/// checkpoint, a receipt and a consistency proof from before and after 18 of them, and reject a
/// tampered proof. Works on a log that already has entries: sizes are read, not assumed.
pub(crate) async fn go_verifies_the_log(daemon: &Daemon, out: &std::path::Path) {
    let mut client = daemon.connect(None).await.ledger();
    let append = |i: u64| {
        let mut request = tonic::Request::new(pb::AppendRequest {
            kind: "InteropCheck".into(),
            payload_cbor: custodian_core::entry::encode_value(
                &custodian_core::entry::Value::Integer(i.into()),
            )
            .into(),
            ..Default::default()
        });
        request.metadata_mut().insert(
            "authorization",
            "Bearer t".parse().expect("a Go interoperability step"),
        );
        request
    };
    for i in 0..5 {
        client
            .append(append(i))
            .await
            .expect("a Go interoperability step");
    }
    let old = client
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: None })
        .await
        .expect("a Go interoperability step")
        .into_inner();
    for i in 5..23 {
        client
            .append(append(i))
            .await
            .expect("a Go interoperability step");
    }
    let new = client
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: None })
        .await
        .expect("a Go interoperability step")
        .into_inner();
    let receipt = client
        .get_receipt(pb::GetReceiptRequest {
            leaf: Some(pb::get_receipt_request::Leaf::Index(old.tree_size + 8)),
        })
        .await
        .expect("a Go interoperability step")
        .into_inner();
    let consistency = client
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            old_size: old.tree_size,
            new_size: Some(new.tree_size),
        })
        .await
        .expect("a Go interoperability step")
        .into_inner();
    let info = client
        .get_log_info(pb::GetLogInfoRequest {})
        .await
        .expect("a Go interoperability step")
        .into_inner();

    std::fs::create_dir_all(out).expect("a Go interoperability step");
    std::fs::write(out.join("vkey"), &info.verifier_key).expect("a Go interoperability step");
    std::fs::write(out.join("receipt.json"), &receipt.json).expect("a Go interoperability step");
    std::fs::write(out.join("old.checkpoint"), &old.note).expect("a Go interoperability step");
    std::fs::write(out.join("new.checkpoint"), &new.note).expect("a Go interoperability step");
    let lines: Vec<String> = consistency
        .hashes
        .iter()
        .map(|h| STANDARD.encode(h))
        .collect();
    std::fs::write(out.join("consistency"), lines.join("\n")).expect("a Go interoperability step");

    let run = |dir: &std::path::Path| {
        Command::new(crate::go_bin("sumdb-verify"))
            .arg(dir)
            .output()
            .expect("run sumdb-verify (tests/interop/go, built by scripts/test)")
    };
    let result = run(out);
    assert!(
        result.status.success(),
        "Go rejected our output: {}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(stdout.starts_with("ok: "), "{stdout}");

    // And Go rejects a tampered proof: the check can fail.
    let mut json: serde_json::Value =
        serde_json::from_str(&receipt.json).expect("a Go interoperability step");
    let hash = json["inclusion_proof"][0]
        .as_str()
        .expect("a Go interoperability step")
        .to_string();
    let flipped = if hash.starts_with('A') { "B" } else { "A" };
    json["inclusion_proof"][0] = serde_json::json!(format!("{flipped}{}", &hash[1..]));
    std::fs::write(out.join("receipt.json"), json.to_string()).expect("a Go interoperability step");
    let result = run(out);
    assert!(!result.status.success(), "Go accepted a tampered proof");
    assert!(
        String::from_utf8_lossy(&result.stderr).contains("tlog.CheckRecord"),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
}
