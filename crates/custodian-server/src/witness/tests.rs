//! The witness's checks, each refusal of the tlog-witness matrix, and its memory across restarts.

use super::*;
use custodian_testkit::TestLog as Log;

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
