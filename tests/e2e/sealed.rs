//! Sealed entries end to end: a private publication, and a public one with more files than a
//! tlog-tiles bundle could hold inline, are written as `Sealed` entries that commit to a body in
//! custody. Their entry bundles are served and name nothing; the registry is rebuilt from the
//! bodies after a crash; a badge bundle carries the bodies and verifies offline.

use std::path::Path;

use custodian_core::tiles::EntryBundle;
use custodian_testkit::Daemon;

use crate::registry::{curl, examples, stdout};

/// Copies the pacman-builder example under a new name, with `extra` more small files.
fn package(dir: &Path, name: &str, extra: usize) -> std::path::PathBuf {
    let target = dir.join(name);
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(examples().join("pacman-builder"))
        .arg(&target)
        .status()
        .expect("cp");
    assert!(status.success());
    let manifest = std::fs::read_to_string(target.join("manifest.yaml")).expect("manifest");
    std::fs::write(
        target.join("manifest.yaml"),
        manifest.replace("name: pacman-builder", &format!("name: {name}")),
    )
    .expect("manifest");
    std::fs::create_dir_all(target.join("notes")).expect("mkdir");
    for i in 0..extra {
        std::fs::write(
            target.join(format!("notes/note-{i:04}.md")),
            format!("note {i}\n"),
        )
        .expect("note");
    }
    target
}

#[test]
fn private_and_large_publications_are_sealed_and_survive_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(&dir.path().join("data"));
    let key = dir.path().join("keys/acme");
    stdout(&daemon.cli(&["key", "generate", key.to_str().expect("path")]));
    let key = key.with_extension("key");
    let big = package(dir.path(), "big-bot", 250);
    let secret = package(dir.path(), "secret-bot", 0);
    stdout(&daemon.cli(&[
        "publish",
        big.to_str().expect("path"),
        "--key",
        key.to_str().expect("path"),
    ]));
    stdout(&daemon.cli(&[
        "publish",
        secret.to_str().expect("path"),
        "--key",
        key.to_str().expect("path"),
        "--private",
    ]));

    // Both publications are sealed; every bundle is served, and none names the private package.
    let checkpoint = stdout(&daemon.cli(&["log", "checkpoint"]));
    let size: u16 = checkpoint
        .lines()
        .nth(1)
        .expect("size")
        .parse()
        .expect("size");
    let url = format!("{}/log/tile/entries/000.p/{size}", daemon.rest);
    let (code, bundle) = curl(&[&url]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&bundle));
    let entries = EntryBundle::decode(&bundle, size).expect("a bundle of every entry");
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| custodian_core::entry::peek_kind(e).expect("kind"))
        .collect();
    assert_eq!(kinds[0], "Sealed", "the 251-file publication: {kinds:?}");
    assert!(
        entries.iter().all(|e| e.len() < 2048),
        "every entry is small"
    );
    assert!(
        !bundle.windows(10).any(|w| w == b"secret-bot"),
        "a public bundle names the private package"
    );
    assert!(
        kinds.iter().filter(|k| **k == "Sealed").count() >= 3,
        "{kinds:?}"
    );

    // After a crash the registry is rebuilt from the sealed bodies in custody.
    daemon.restart_after_kill9();
    let shown = stdout(&daemon.cli(&["show", "big-bot@0.2.1"]));
    assert!(shown.contains("big-bot"), "{shown}");
    let target = dir.path().join("installed");
    stdout(&daemon.cli(&[
        "install",
        "big-bot@0.2.1",
        "-o",
        target.to_str().expect("path"),
    ]));
    assert!(target.join("notes/note-0249.md").exists());
    let shown = stdout(&daemon.cli(&["show", "secret-bot@0.2.1"]));
    assert!(shown.contains("secret-bot"), "{shown}");

    // The private version's badge bundle carries the bodies its sealed entries commit to, and
    // verifies offline with nothing but the log's key.
    let vkey = dir.path().join("log.vkey");
    std::fs::write(&vkey, stdout(&daemon.cli(&["log", "key"]))).expect("vkey");
    let bundle = dir.path().join("secret.bundle.json");
    stdout(&daemon.cli(&[
        "badge",
        "secret-bot@0.2.1",
        "-o",
        bundle.to_str().expect("path"),
    ]));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle).expect("bundle")).expect("json");
    assert!(
        json["bodies"].as_array().is_some_and(|b| !b.is_empty()),
        "{json}"
    );
    let verified = stdout(&daemon.cli(&[
        "verify",
        bundle.to_str().expect("path"),
        "--key",
        vkey.to_str().expect("path"),
    ]));
    assert!(verified.contains("bundle verifies"), "{verified}");
    // Without the bodies it cannot be checked, and says why.
    let mut stripped = json.clone();
    stripped.as_object_mut().expect("object").remove("bodies");
    std::fs::write(&bundle, stripped.to_string()).expect("write");
    let refused = daemon.cli(&[
        "verify",
        bundle.to_str().expect("path"),
        "--key",
        vkey.to_str().expect("path"),
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("is sealed and the bundle lacks its body"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
