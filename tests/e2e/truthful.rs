//! A badge never says more than was checked: secrets never ship, `no_external_calls` covers
//! every file, and a run is held to its EvalSpec — each against a real daemon or the real CLI.

use std::path::Path;
use std::process::Output;

use crate::registry::{copy_example, curl, generate_key, log_size, offline, stdout};
use custodian_testkit::Daemon;

fn said(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A package folder holding only a manifest: `name@version` with one eval and an MIT license,
/// followed by `more` (YAML).
fn minimal_package(dir: &Path, name: &str, version: &str, more: &str) -> std::path::PathBuf {
    let folder = dir.join(name);
    write(
        &folder.join("manifest.yaml"),
        &format!(
            "name: {name}\nversion: {version}\ntype: prompt_spec\nbase_model: m1\nevals: [e1]\nlicense: MIT\n{more}"
        ),
    );
    folder
}

/// `custodian pack build PACKAGE --key KEY` with `extra` arguments.
fn pack_build(package: &Path, key: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "pack",
        "build",
        package.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    offline(&args)
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// Files that must never ship are left out by default, and `--dry-run` says which and why.
#[test]
fn what_must_never_ship_is_left_out_and_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let package = copy_example("pacman-builder", dir.path());
    let (key, _) = generate_key(dir.path(), "acme");
    std::fs::copy(&key, package.join("me.key")).expect("copy key");
    write(
        &package.join(".env"),
        "OPENAI_API_KEY=Zq8vX3k9LmP2rT7wY4nB6cD1fG5hJ0aS\n",
    );
    write(
        &package.join("id_ed25519"),
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n",
    );
    write(
        &package.join("server.pem"),
        "-----BEGIN PRIVATE KEY-----\nMIIE\n",
    );
    write(&package.join("out/build.log"), "built\n");
    write(&package.join(".DS_Store"), "litter");
    let out = offline(&[
        "pack",
        "build",
        package.to_str().expect("utf-8"),
        "--dry-run",
    ]);
    let text = stdout(&out);
    for left_out in [
        ".env",
        "me.key",
        "id_ed25519",
        "server.pem",
        "out/",
        ".DS_Store",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(left_out) && l.contains("default")),
            "{left_out} not listed as left out:\n{text}"
        );
    }
    assert!(text.contains("would build"), "{text}");
    // The build itself signs none of them, says how many it left out, and verify agrees with
    // the folder as it is.
    let built = pack_build(&package, &key, &[]);
    stdout(&built);
    assert!(
        String::from_utf8_lossy(&built.stderr).contains("left out 6 file(s) or folder(s)"),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let envelope =
        std::fs::read_to_string(package.join(".custodian/package.dsse.json")).expect("envelope");
    for name in [".env", "me.key", "id_ed25519", "server.pem", "build.log"] {
        assert!(
            !envelope.contains(name),
            "{name} was signed into the package"
        );
    }
    let public = std::fs::read_to_string(package.join(".custodian/publisher.pub")).expect("pub");
    stdout(&offline(&[
        "pack",
        "verify",
        package.to_str().expect("utf-8"),
        "--key",
        public.trim(),
    ]));
}

/// Each secret kind in a file that is packaged: `pack build` refuses naming the file and the
/// rule; listed in `.custodianignore` the package builds; smuggled past the CLI, the daemon
/// refuses the publication and records nothing.
#[tokio::test]
async fn secrets_block_the_build_and_the_publication() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, _) = generate_key(dir.path(), "acme");
    let custodian_key = std::fs::read_to_string(&key).expect("key");
    let kinds = [
        (
            "notes/keys.md",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n".to_string(),
            "secret.private_key",
        ),
        (
            "notes/release.txt",
            custodian_key.clone(),
            "secret.private_key",
        ),
        (
            "config/aws.yaml",
            "access_key: AKIAIOSFODNN7EXAMPLE\n".into(),
            "secret.token",
        ),
        (
            "scripts/ci.sh",
            "export GH=ghp_0123456789abcdefghijklmnopqrstuvwxyZ\n".into(),
            "secret.token",
        ),
        (
            "config/settings.toml",
            "api_key = \"Zq8vX3k9LmP2rT7wY4nB6cD1fG5hJ0aS\"\n".into(),
            "secret.env_assignment",
        ),
    ];
    for (i, (file, content, rule)) in kinds.iter().enumerate() {
        let package = copy_example("pacman-builder", &dir.path().join(format!("k{i}")));
        write(&package.join(file), content);
        let out = pack_build(&package, &key, &[]);
        assert!(!out.status.success(), "{file}: built with a secret");
        let text = said(&out);
        assert!(
            text.contains(&format!("{file}: {rule}")),
            "{file}: the refusal does not name the file and rule:\n{text}"
        );
        assert!(!package.join(".custodian/package.dsse.json").exists());
        // Left out, it builds.
        write(
            &package.join(".custodianignore"),
            &format!("# not for publication\n{file}\n"),
        );
        stdout(&pack_build(&package, &key, &[]));
    }

    // Smuggled past the CLI: the daemon scans what is in custody before it appends anything.
    let daemon = Daemon::start(&dir.path().join("data"));
    let package = copy_example("pacman-builder", &dir.path().join("smuggled"));
    write(&package.join("notes/release.txt"), &custodian_key);
    stdout(&pack_build(&package, &key, &["--allow-secrets"]));
    let before = log_size(&daemon).await;
    let out = daemon.cli(&["publish", package.to_str().expect("utf-8")]);
    assert!(!out.status.success(), "the daemon published a secret");
    let text = said(&out);
    assert!(
        text.contains("notes/release.txt") && text.contains("secret.private_key"),
        "{text}"
    );
    assert_eq!(log_size(&daemon).await, before, "something was appended");
    let versions = daemon.cli(&["versions", "pacman-builder", "--json"]);
    assert!(
        !String::from_utf8_lossy(&versions.stdout).contains("0.2.1"),
        "the version exists"
    );
    // The uploaded bytes are not served to anyone without a read-everything grant.
    let digest = format!(
        "sha256:{}",
        custodian_core::Digest::of(custodian_core::Algorithm::Sha256, custodian_key.as_bytes())
            .hex()
    );
    let (status, _) = curl(&[&format!("{}/blobs/{digest}", daemon.rest)]);
    assert_eq!(status, 404);
}

/// `no_external_calls: required` covers every file kind: a URL planted in a Tool's http.url, a
/// Provider's base_url, a template, a recipe and eval cases each flags the package; under
/// `optional` each is reported at low severity and does not flag.
#[test]
fn no_external_calls_covers_every_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plants = [
        (
            "tools/run-game.yaml",
            "\n# live endpoint\nhttp_url_note: https://api.remote-runner.io/run\n",
        ),
        (
            "providers/mock.yaml",
            "\n# base_url: https://llm-proxy.acme-corp.net/v1\n",
        ),
        (
            "templates/build-request.md",
            "\nFetch the sprites from https://cdn.sprites-host.net/pac.png\n",
        ),
        (
            "recipe/train.yaml",
            "dataset_url: https://datasets.acme-corp.net/train.jsonl\n",
        ),
        (
            "evals/cases.jsonl",
            "{\"input\": \"see https://leaderboard.acme-corp.net\"}\n",
        ),
    ];
    for (i, (file, planted)) in plants.iter().enumerate() {
        for (requirement, flagged) in [("required", true), ("optional", false)] {
            let package = copy_example(
                "pacman-builder",
                &dir.path().join(format!("{requirement}{i}")),
            );
            let manifest = package.join("manifest.yaml");
            let text = std::fs::read_to_string(&manifest).expect("manifest");
            std::fs::write(
                &manifest,
                text.replace(
                    "no_external_calls: required",
                    &format!("no_external_calls: {requirement}"),
                ),
            )
            .expect("manifest");
            let path = package.join(file);
            let mut content = std::fs::read_to_string(&path).unwrap_or_default();
            content.push_str(planted);
            write(&path, &content);
            let out = offline(&["scan", "local", package.to_str().expect("utf-8"), "--json"]);
            let report: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", said(&out)));
            let finding = report["findings"]
                .as_array()
                .expect("findings")
                .iter()
                .find(|f| f["rule"] == "prompt.external_url" && f["file"] == *file)
                .unwrap_or_else(|| panic!("{requirement}: no URL finding in {file}: {report}"));
            if flagged {
                assert_eq!(report["verdict"], "flagged", "{file}: {report}");
                assert_eq!(finding["severity"], "high");
                assert_eq!(out.status.code(), Some(2));
            } else {
                assert_eq!(report["verdict"], "clean", "{file}: {report}");
                assert_eq!(finding["severity"], "low");
            }
        }
    }
}

/// A run is held to its EvalSpec: a run claiming `passed` below the threshold, held to another
/// threshold, or without the declared seed is refused with both numbers named, and nothing is
/// appended; an honest run is recorded.
#[tokio::test]
async fn runs_are_checked_against_the_evalspec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("data"));
    let (key, _) = generate_key(dir.path(), "acme");
    let (runner, runner_pub) = generate_key(dir.path(), "runner");
    let package = dir.path().join("strict-evals");
    write(
        &package.join("manifest.yaml"),
        "name: strict-evals\nversion: 1.0.0\ntype: eval_suite\nbase_model: m1\nevals:\n  - id: accuracy\n    seed: 42\n    thresholds:\n      pass_rate: \">= 0.9\"\nlicense: MIT\n",
    );
    stdout(&daemon.cli(&[
        "publish",
        package.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
    ]));
    stdout(&daemon.cli(&["attester", "register", runner_pub.to_str().expect("utf-8")]));
    let run = |value: f64, threshold: Option<&str>, seed: Option<u64>| {
        let mut metric = serde_json::json!({"value": value});
        if let Some(t) = threshold {
            metric["threshold"] = t.into();
        }
        let mut context = serde_json::json!({"cases": "all"});
        if let Some(s) = seed {
            context["seed"] = s.into();
        }
        serde_json::json!({
            "package": "strict-evals", "version": "1.0.0", "eval_id": "accuracy", "model": "m1",
            "passed": true, "metrics": {"pass_rate": metric}, "reproducibility_context": context,
            "started_at": "2026-11-30T10:00:00Z", "finished_at": "2026-11-30T10:01:00Z",
            "runner": {"id": "ci"}
        })
    };
    let attest = |name: &str, body: serde_json::Value| {
        let file = dir.path().join(name);
        std::fs::write(&file, body.to_string()).expect("write");
        daemon.cli(&[
            "attest",
            file.to_str().expect("utf-8"),
            "--key",
            runner.to_str().expect("utf-8"),
        ])
    };
    let before = log_size(&daemon).await;
    for (name, body, expected) in [
        (
            "below.json",
            run(0.81, None, Some(42)),
            vec!["0.81", ">= 0.9"],
        ),
        (
            "other-bar.json",
            run(0.95, Some("> 0.5"), Some(42)),
            vec!["> 0.5", ">= 0.9"],
        ),
        (
            "no-seed.json",
            run(0.95, None, None),
            vec!["seed 42", "no seed"],
        ),
        (
            "wrong-seed.json",
            run(0.95, None, Some(7)),
            vec!["seed 42", "seed 7"],
        ),
    ] {
        let out = attest(name, body);
        assert!(!out.status.success(), "{name}: attested");
        let text = said(&out);
        for part in expected {
            assert!(text.contains(part), "{name}: {part:?} not in {text}");
        }
    }
    assert_eq!(
        log_size(&daemon).await,
        before,
        "a refused run was appended"
    );
    stdout(&attest("honest.json", run(0.93, Some(">=0.9"), Some(42))));
    assert_eq!(log_size(&daemon).await, before + 1);
}

fn publish(daemon: &Daemon, package: &Path, key: &Path, private: bool) {
    let mut args = vec![
        "publish",
        package.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
    ];
    if private {
        args.push("--private");
    }
    stdout(&daemon.cli(&args));
}

fn upload(daemon: &Daemon, spec: &str, metadata: &str, file: &Path) -> (u16, serde_json::Value) {
    let (name, version) = spec.split_once('@').expect("spec");
    let (code, body) = curl(&[
        "-H",
        &crate::registry::bearer(&daemon.token),
        "-F",
        &format!("metadata={metadata};type=application/json"),
        "-F",
        &format!("file=@{}", file.display()),
        &format!(
            "{}/wrappers/{name}/versions/{version}/data-pack/hosted",
            daemon.rest
        ),
    ]);
    (code, crate::registry::json(&body))
}

/// Seed 001's data packs end to end: a manifest's external `data_pack:` is registered at
/// publication; a declared hosted pack binds the upload; a flagged upload answers with its
/// findings and downloads warn; a pack's visibility is the same on every endpoint.
#[test]
fn data_packs_as_the_seed_describes_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("data"));
    let (key, _) = generate_key(dir.path(), "acme");
    let seed_pack =
        std::fs::read_to_string(crate::registry::examples().join("seeds/data-pack.yaml"))
            .expect("seed data pack");

    // Declared external: registered with the version, answered with the seed's field names.
    let external = minimal_package(dir.path(), "tax-prompts", "3.0.0", &seed_pack);
    publish(&daemon, &external, &key, false);
    let (code, body) = curl(&[&format!(
        "{}/wrappers/tax-prompts/versions/3.0.0/data-pack",
        daemon.rest
    )]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let view = crate::registry::json(&body);
    assert_eq!(view["mode"], "external");
    assert_eq!(view["version"], "2026.03.1");
    assert!(view.get("data_version").is_none(), "{view}");

    // Declared hosted: the upload takes the manifest's license, and may not contradict it.
    let hosted = minimal_package(
        dir.path(),
        "levels",
        "1.0.0",
        "data_pack:\n  mode: hosted\n  license: CC-BY-4.0\n  visibility: public\n",
    );
    publish(&daemon, &hosted, &key, true);
    let eicar = dir.path().join("levels.csv");
    std::fs::write(
        &eicar,
        format!("level,notes\n1,{}\n", custodian_scan::content::EICAR),
    )
    .expect("write");
    let (code, answer) = upload(&daemon, "levels@1.0.0", r#"{"license":"MIT"}"#, &eicar);
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("CC-BY-4.0"),
        "{answer}"
    );
    let (code, answer) = upload(&daemon, "levels@1.0.0", "{}", &eicar);
    assert_eq!(code, 201, "{answer}");
    assert_eq!(answer["record"]["license"], "CC-BY-4.0");
    assert_eq!(answer["scan"]["verdict"], "flagged", "{answer}");
    assert!(
        answer["scan"]["findings"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["rule"] == "malware.eicar")),
        "{answer}"
    );
    assert!(
        answer["warning"]
            .as_str()
            .is_some_and(|w| w.contains("flagged")),
        "{answer}"
    );

    // The version is private, its pack public: anyone downloads it, with the warning, and the
    // same bytes are readable by digest; the version itself stays invisible.
    let headers = dir.path().join("headers.txt");
    let (code, _) = curl(&[
        "-D",
        headers.to_str().expect("utf-8"),
        "-o",
        "/dev/null",
        &format!(
            "{}/wrappers/levels/versions/1.0.0/data-pack/download",
            daemon.rest
        ),
    ]);
    assert_eq!(code, 200);
    let headers = std::fs::read_to_string(&headers)
        .expect("headers")
        .to_ascii_lowercase();
    assert!(
        headers.contains("x-custodian-scan-status: flagged"),
        "{headers}"
    );
    assert!(headers.contains("warning: 199"), "{headers}");
    let sha256 = answer["record"]["sha256"]
        .as_str()
        .expect("sha256")
        .to_string();
    let (code, _) = curl(&[&format!("{}/blobs/{sha256}", daemon.rest)]);
    assert_eq!(code, 200, "a public pack is readable by digest too");
    let (code, _) = curl(&[&format!("{}/wrappers/levels/versions/1.0.0", daemon.rest)]);
    assert_eq!(code, 404, "the private version itself must stay invisible");
    let out = daemon.cli_as(
        None,
        &[
            "datapack",
            "download",
            "levels@1.0.0",
            "-o",
            dir.path().join("got.csv").to_str().expect("utf-8"),
            "--rest",
            &daemon.rest,
        ],
    );
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("scan status flagged"), "{}", said(&out));

    // A public version whose pack is private: neither endpoint serves the bytes anonymously.
    let quiet = minimal_package(dir.path(), "quiet", "1.0.0", "");
    publish(&daemon, &quiet, &key, false);
    let data = dir.path().join("quiet.csv");
    std::fs::write(&data, "a,b\n1,2\n").expect("write");
    let (code, answer) = upload(
        &daemon,
        "quiet@1.0.0",
        r#"{"license":"MIT","visibility":"private"}"#,
        &data,
    );
    assert_eq!(code, 201, "{answer}");
    let sha256 = answer["record"]["sha256"]
        .as_str()
        .expect("sha256")
        .to_string();
    for url in [
        format!(
            "{}/wrappers/quiet/versions/1.0.0/data-pack/download",
            daemon.rest
        ),
        format!("{}/wrappers/quiet/versions/1.0.0/data-pack", daemon.rest),
        format!("{}/blobs/{sha256}", daemon.rest),
    ] {
        let (code, _) = curl(&[&url]);
        assert_eq!(code, 404, "{url} served a private pack anonymously");
    }
}
