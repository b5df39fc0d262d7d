//! The `custodian` command line, end to end.

use std::io::Write as _;

use custodian_core::{BlobDigests, BlobHasher};

use crate::pattern;
use custodian_testkit::{Daemon, binary};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_reads_like_a_manual() {
    let output = std::process::Command::new(binary())
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = stdout(&output);
    for word in [
        "serve",
        "blob",
        "sha256:",
        "Examples",
        "eval preregister",
        "key rotate",
    ] {
        assert!(text.contains(word), "--help lacks {word:?}:\n{text}");
    }
    let output = std::process::Command::new(binary())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let text = stdout(&output);
    for word in [
        "--listen",
        "CUSTODIAN_LISTEN",
        "--storage",
        "--data-dir",
        "grpcurl",
    ] {
        assert!(text.contains(word), "serve --help lacks {word:?}:\n{text}");
    }
}

#[test]
fn put_get_stat_missing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"));
    let small = dir.path().join("small.txt");
    let big = dir.path().join("big.bin");
    std::fs::write(&small, b"hello custodian\n").unwrap();
    let big_data = pattern(5, 3 * (1 << 20) + 123);
    std::fs::write(&big, &big_data).unwrap();

    let output = daemon.cli(&[
        "blob",
        "put",
        "--json",
        small.to_str().unwrap(),
        big.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let big_digests = BlobDigests::of(&big_data);
    assert_eq!(lines[1]["sha256"], big_digests.sha256.to_string());
    assert_eq!(lines[1]["blake3"], big_digests.blake3.to_string());
    assert_eq!(lines[1]["size"], big_data.len());
    assert_eq!(lines[1]["already_present"], false);

    // A second put reports the blob as already present, in text form.
    let output = daemon.cli(&["blob", "put", small.to_str().unwrap()]);
    assert!(
        stdout(&output).contains("already present"),
        "{}",
        stdout(&output)
    );

    // Get by BLAKE3 into a file.
    let out = dir.path().join("out.bin");
    let output = daemon.cli(&[
        "blob",
        "get",
        &big_digests.blake3.to_string(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(std::fs::read(&out).unwrap() == big_data);

    // A range.
    let part = dir.path().join("part.bin");
    let output = daemon.cli(&[
        "blob",
        "get",
        &big_digests.sha256.to_string(),
        "-o",
        part.to_str().unwrap(),
        "--offset",
        "1048570",
        "--limit",
        "20",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read(&part).unwrap(), &big_data[1048570..1048590]);

    let output = daemon.cli(&["blob", "stat", "--json", &big_digests.sha256.to_string()]);
    assert!(output.status.success());
    let stat: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(stat[0]["size"], big_data.len());

    let absent = BlobDigests::of(b"absent").sha256.to_string();
    let output = daemon.cli(&["blob", "missing", &big_digests.sha256.to_string(), &absent]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output).trim(), absent);

    // Getting an unknown blob fails and creates no file.
    let nothing = dir.path().join("nothing.bin");
    let output = daemon.cli(&["blob", "get", &absent, "-o", nothing.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("not found"), "{}", stderr(&output));
    assert!(!nothing.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");

    // A malformed digest is refused before anything is sent, naming the value.
    let output = daemon.cli(&["blob", "stat", "sha256:XYZ"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("sha256:XYZ"),
        "{}",
        stderr(&output)
    );

    // --expect with a wrong digest stores nothing.
    let output = daemon.cli(&["blob", "put", "--expect", &absent, small.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("invalid argument"),
        "{}",
        stderr(&output)
    );
}

/// A 1 GiB blob goes through the daemon and back without the daemon holding it in memory.
#[test]
fn one_gib_put_and_get_stream_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"));
    let input = dir.path().join("one-gib.bin");
    let mut hasher = BlobHasher::new();
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for i in 0..1024 {
            let piece = pattern(50_000 + i, 1 << 20);
            hasher.update(&piece);
            file.write_all(&piece).unwrap();
        }
    }
    let digests = hasher.finalize();
    let output = daemon.cli(&["blob", "put", "--json", input.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains(&digests.sha256.to_string()));
    std::fs::remove_file(&input).unwrap();

    let out = dir.path().join("back.bin");
    let output = daemon.cli(&[
        "blob",
        "get",
        &digests.sha256.to_string(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 1 << 30);

    let peak = daemon.peak_rss();
    assert!(
        peak < 256 << 20,
        "daemon peak RSS {} MiB while moving a 1 GiB blob: it is buffering the blob",
        peak >> 20
    );
}
