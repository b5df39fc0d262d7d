//! The witness's checks, each refusal of the tlog-witness matrix, and its memory across restarts.

use super::*;
use custodian_testkit::{TestLog as Log, signature_lines};

const T: u64 = 1_764_115_200;

fn witness_for(dir: &Path, logs: &[&Log]) -> Witness {
    let config: String = logs
        .iter()
        .map(|l| format!("log {}\n", l.signer.verifier()))
        .collect();
    let signer = SignerKey::from_seed_typed("witness.test/w", KeyType::CosignatureV1, [42; 32])
        .expect("key");
    Witness::open(
        signer,
        WitnessLogs::parse(&config, "test").expect("config"),
        dir,
    )
    .expect("open")
}

#[test]
fn cosigns_consistent_growth_and_refuses_every_case_of_the_matrix() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut log = Log::new("example.com/log", 1);
    log.grow(20, 1);
    let witness = witness_for(dir.path(), &[&log]);

    // First contact: old 0, empty proof.
    let line = witness
        .add_checkpoint(&log.request(0, 5), T)
        .expect("cosign 5");
    let cosigned = format!("{}{line}", log.checkpoint(5));
    let note = Note::parse(cosigned.as_bytes()).expect("note");
    assert_eq!(note.signed_by(&witness.verifier()).expect("cosig"), Some(T));
    // Growth with a proof.
    witness
        .add_checkpoint(&log.request(5, 12), T)
        .expect("cosign 12");
    // The same checkpoint again is fine (old == new, same root).
    witness
        .add_checkpoint(&log.request(12, 12), T)
        .expect("same");

    // 404: a log this witness does not know.
    let mut stranger = Log::new("example.com/other", 2);
    stranger.grow(3, 2);
    assert!(matches!(
        witness.add_checkpoint(&stranger.request(0, 3), T),
        Err(WitnessServiceError::UnknownOrigin(_))
    ));
    // 403: the right origin signed by another key.
    let mut impostor = Log::new("example.com/log", 3);
    impostor.leaves = log.leaves.clone();
    assert!(matches!(
        witness.add_checkpoint(&impostor.request(12, 15), T),
        Err(WitnessServiceError::BadSignature(_))
    ));
    // 400: old size after new.
    assert!(matches!(
        witness.add_checkpoint(
            &[b"old 13".as_slice(), &log.request(12, 12)[6..]].concat(),
            T
        ),
        Err(WitnessServiceError::OldAfterNew { old: 13, new: 12 })
    ));
    // 409: a stale old size, with the latest size to resend from.
    assert!(matches!(
        witness.add_checkpoint(&log.request(5, 15), T),
        Err(WitnessServiceError::Conflict { old: 5, latest: 12 })
    ));
    assert!(matches!(
        witness.add_checkpoint(&log.request(0, 15), T),
        Err(WitnessServiceError::Conflict { old: 0, latest: 12 })
    ));
    // 422: a proof that does not verify.
    let mut body = log.request(12, 15);
    let at = body.iter().position(|&b| b == b'\n').expect("line") + 3;
    body[at] = if body[at] == b'A' { b'B' } else { b'A' };
    assert!(matches!(
        witness.add_checkpoint(&body, T),
        Err(WitnessServiceError::BadProof { .. })
    ));
    // 409: a fork of the same size (split view).
    let fork = log.fork(3, 17);
    assert!(matches!(
        witness.add_checkpoint(&fork.request(12, 12), T),
        Err(WitnessServiceError::RootMismatch { size: 12, .. })
    ));
    // 422: a longer fork cannot prove consistency with what was cosigned.
    assert!(matches!(
        witness.add_checkpoint(&fork.request(12, 20), T),
        Err(WitnessServiceError::BadProof { .. })
    ));
    // 400: malformed bodies.
    assert!(matches!(
        witness.add_checkpoint(b"old 1\n", T),
        Err(WitnessServiceError::Malformed(_))
    ));
    assert_eq!(witness.latest("example.com/log").expect("state").size, 12);
}

#[test]
fn remembers_across_restarts_and_refuses_a_second_process() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut log = Log::new("example.com/log", 1);
    log.grow(10, 1);
    {
        let witness = witness_for(dir.path(), &[&log]);
        witness
            .add_checkpoint(&log.request(0, 7), T)
            .expect("cosign");
        let second = SignerKey::from_seed_typed("witness.test/w", KeyType::CosignatureV1, [42; 32])
            .expect("key");
        let err = Witness::open(
            second,
            WitnessLogs::parse(&format!("log {}\n", log.signer.verifier()), "t").expect("cfg"),
            dir.path(),
        )
        .expect_err("locked");
        assert!(err.to_string().contains("another witness process"), "{err}");
    }
    let witness = witness_for(dir.path(), &[&log]);
    assert_eq!(witness.latest("example.com/log").expect("state").size, 7);
    assert!(matches!(
        witness.add_checkpoint(&log.request(0, 10), T),
        Err(WitnessServiceError::Conflict { latest: 7, .. })
    ));
    witness
        .add_checkpoint(&log.request(7, 10), T)
        .expect("cosign");

    // A state file not cosigned by this key stops the witness instead of being forgotten.
    drop(witness);
    let file = state_file(dir.path(), "example.com/log");
    let text = std::fs::read_to_string(&file).expect("state");
    std::fs::write(
        &file,
        text.replace("example.com/log\n10", "example.com/log\n11"),
    )
    .expect("w");
    let other = SignerKey::from_seed_typed("witness.test/w", KeyType::CosignatureV1, [42; 32])
        .expect("key");
    let err = Witness::open(
        other,
        WitnessLogs::parse(&format!("log {}\n", log.signer.verifier()), "t").expect("cfg"),
        dir.path(),
    )
    .expect_err("damaged");
    assert!(err.to_string().contains("damaged"), "{err}");
}

#[test]
fn config_errors_name_the_line() {
    let log = SignerKey::from_seed("l.example", [1; 32]).expect("key");
    let w = SignerKey::from_seed_typed("w", KeyType::CosignatureV1, [1; 32]).expect("key");
    for (text, needle) in [
        (String::new(), "no log lines"),
        (format!("log {}\nwitness x\n", log.verifier()), "line 2"),
        (format!("log {}\n", w.verifier()), "type byte 0x01"),
        ("log nonsense\n".to_string(), "line 1"),
    ] {
        let err = WitnessLogs::parse(&text, "witness.conf")
            .expect_err(&text)
            .to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
}

#[test]
fn refuses_what_rfc_6962_rules_out_and_stores_only_signatures_that_verify() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut log = Log::new("example.com/log", 1);
    log.grow(12, 1);
    // A second key for the same origin (a rotation), and a log of size 0 to configure.
    let rotated = Log::new("example.com/log", 9);
    let empty = Log::new("example.com/empty", 5);
    let witness = witness_for(dir.path(), &[&log, &rotated, &empty]);
    witness.add_checkpoint(&log.request(0, 5), T).expect("5");

    // From a size to itself the proof is empty (RFC 6962 section 2.1.2): 422, not a split view.
    let padded = |old: u64, checkpoint: String| {
        AddCheckpoint {
            old_size: old,
            proof: vec![log.root(3)],
            checkpoint: checkpoint.into_bytes(),
        }
        .to_body()
    };
    match witness.add_checkpoint(&padded(5, log.checkpoint(5)), T) {
        Err(WitnessServiceError::BadProof {
            old: 5,
            new: 5,
            reason,
        }) => {
            assert!(reason.contains("must be empty"), "{reason}")
        }
        other => panic!("a proof from size 5 to itself: {other:?}"),
    }
    // A different root at the cosigned size is a split view whatever proof comes with it.
    let fork = log.fork(2, 10);
    assert!(matches!(
        witness.add_checkpoint(&padded(5, fork.checkpoint(5)), T),
        Err(WitnessServiceError::RootMismatch { size: 5, .. })
    ));

    // A checkpoint of size 0 carries the empty tree's root, or it describes no tree.
    let bogus = Checkpoint::new("example.com/empty", 0, Hash([7; 32]))
        .sign(&empty.signer)
        .expect("sign");
    let body = |checkpoint: String| {
        AddCheckpoint {
            old_size: 0,
            proof: Vec::new(),
            checkpoint: checkpoint.into_bytes(),
        }
        .to_body()
    };
    match witness.add_checkpoint(&body(bogus), T) {
        Err(err @ WitnessServiceError::NotTheEmptyTree { root, empty: e }) => {
            assert_eq!((root, e), (Hash([7; 32]), merkle::empty_root()));
            assert!(err.to_string().contains("empty tree"), "{err}");
        }
        other => panic!("a size-0 checkpoint with another root: {other:?}"),
    }
    assert!(witness.latest("example.com/empty").is_none());
    witness.add_checkpoint(&empty.request(0, 0), T).expect("0");
    witness
        .add_checkpoint(&empty.request(0, 0), T)
        .expect("0 again");

    // Stored: one line of each configured key that verified, nothing else. The checkpoint of
    // size 8 is signed by the log's key twice, by the rotated key over another text (a bad
    // signature: that key is not trusted, but the log's key is) and by a stranger.
    let stranger = Log::new("example.com/stranger", 3);
    let checkpoint = log.checkpoint(8);
    let good = signature_lines(&checkpoint).to_string();
    let mut rotated_log = rotated.clone();
    rotated_log.leaves = log.leaves.clone();
    let bad = signature_lines(&rotated_log.checkpoint(7)).to_string();
    let unknown = signature_lines(&stranger.checkpoint(0)).to_string();
    let sent = format!("{checkpoint}{good}{bad}{unknown}");
    let request = AddCheckpoint {
        old_size: 5,
        proof: log.proof(5, 8),
        checkpoint: sent.into_bytes(),
    };
    let line = witness.add_checkpoint(&request.to_body(), T).expect("8");
    let stored = witness.latest("example.com/log").expect("state").note;
    assert_eq!(stored, format!("{checkpoint}{line}"));

    // Signed by both keys, both lines are kept, in the order sent.
    let both = format!(
        "{}{}",
        rotated_log.checkpoint(9),
        signature_lines(&log.checkpoint(9))
    );
    let request = AddCheckpoint {
        old_size: 8,
        proof: log.proof(8, 9),
        checkpoint: both.clone().into_bytes(),
    };
    let line = witness.add_checkpoint(&request.to_body(), T).expect("9");
    assert_eq!(
        witness.latest("example.com/log").expect("state").note,
        format!("{both}{line}")
    );
}
