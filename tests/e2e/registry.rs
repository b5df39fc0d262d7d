//! The registry end to end: the seed packages published, listed, installed and verified over
//! gRPC (the CLI) and REST (curl, an HTTP client nobody here wrote); every rejection records
//! nothing; private content answers exactly like absent content; a 1 GiB hosted data pack
//! streams through with bounded memory; TLS on both ports.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use custodian_core::dsse::{Envelope, INTOTO_PAYLOAD_TYPE};
use custodian_core::note::SignerKey;
use custodian_core::package::{FileEntry, PackageStatement};
use custodian_core::{Algorithm, Digest};
use custodian_proto::cas::v1 as cas;
use custodian_proto::cas::v1::content_store_client::ContentStoreClient;
use custodian_proto::ledger::v1 as lpb;
use custodian_proto::registry::v1 as pb;
use custodian_proto::registry::v1::registry_client::RegistryClient;
use tonic::Code;

use custodian_client::Conn as Authed;
use custodian_testkit::{Daemon, binary};

pub(crate) fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Copies an example package into `dir` (so that building it never touches the source tree).
pub(crate) fn copy_example(name: &str, dir: &Path) -> PathBuf {
    fn copy(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).expect("e2e step failed");
        for entry in std::fs::read_dir(src).expect("e2e step failed") {
            let entry = entry.expect("e2e step failed");
            let name = entry.file_name();
            if name == ".custodian" {
                continue;
            }
            if entry.file_type().expect("e2e step failed").is_dir() {
                copy(&entry.path(), &dst.join(&name));
            } else {
                std::fs::copy(entry.path(), dst.join(&name)).expect("e2e step failed");
            }
        }
    }
    let dst = dir.join(name);
    copy(&examples().join(name), &dst);
    dst
}

/// Copies an example package into `dir`, makes a publisher key pair named `key_name` there and
/// publishes the package with it; returns the key pair's (secret, public) files.
pub(crate) fn publish_example(
    daemon: &Daemon,
    dir: &Path,
    example: &str,
    key_name: &str,
) -> (PathBuf, PathBuf) {
    let (key, public) = generate_key(dir, key_name);
    let package = copy_example(example, dir);
    stdout(&daemon.cli(&[
        "publish",
        package.to_str().expect("utf-8 path"),
        "--key",
        key.to_str().expect("utf-8 path"),
    ]));
    (key, public)
}

/// The Python of the test virtual environment (scripts/test's ensure_moto), which has
/// pyca/cryptography; `python3` otherwise.
pub(crate) fn python() -> PathBuf {
    std::env::var_os("CUSTODIAN_MOTO_SERVER")
        .map(|moto| PathBuf::from(moto).with_file_name("python"))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

pub(crate) fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn offline(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("e2e step failed")
}

pub(crate) fn generate_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    stdout(&offline(&[
        "key",
        "generate",
        name,
        "--dir",
        dir.to_str().expect("e2e step failed"),
    ]));
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    )
}

/// Runs curl and returns (HTTP status, body).
pub(crate) fn curl(args: &[&str]) -> (u16, Vec<u8>) {
    let output = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/test installs it)");
    assert!(
        output.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut body = output.stdout;
    let at = body
        .iter()
        .rposition(|&b| b == b'\n')
        .expect("e2e step failed");
    let code = std::str::from_utf8(&body[at + 1..])
        .expect("e2e step failed")
        .parse()
        .expect("e2e step failed");
    body.truncate(at);
    (code, body)
}

pub(crate) fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

pub(crate) fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

pub(crate) async fn log_size(daemon: &Daemon) -> u64 {
    daemon
        .connect(None)
        .await
        .ledger()
        .get_log_info(lpb::GetLogInfoRequest {})
        .await
        .expect("e2e step failed")
        .into_inner()
        .size
}

async fn registry(daemon: &Daemon, token: Option<&str>) -> RegistryClient<Authed> {
    daemon.connect(token).await.registry()
}

#[tokio::test]
async fn seed_packages_publish_list_install_and_verify_over_grpc_and_rest() {
    let dir = tempfile::tempdir().expect("e2e step failed");
    let daemon = Daemon::start(&dir.path().join("data"));
    let (key, public) = generate_key(dir.path(), "acme-release");
    let key = key.to_str().expect("e2e step failed");
    let public = public.to_str().expect("e2e step failed");

    for (name, version, files) in [
        ("customer-support-classifier", "0.1.0", 9),
        ("pacman-builder", "0.2.1", 11),
    ] {
        let package = copy_example(name, dir.path());
        let receipt = dir.path().join(format!("{name}.receipt.json"));
        let out = stdout(&daemon.cli(&[
            "publish",
            package.to_str().expect("e2e step failed"),
            "--key",
            key,
            "--receipt",
            receipt.to_str().expect("e2e step failed"),
            "--json",
        ]));
        let published = json(out.as_bytes());
        assert_eq!(published["name"], name);
        assert_eq!(published["version"], version);
        assert_eq!(published["file_count"], files);
        assert_eq!(published["uploaded_files"], files);
        assert_eq!(published["already_published"], false);

        // The receipt verifies offline with the log key.
        let log_key = stdout(&daemon.cli(&["log", "key"]));
        stdout(&offline(&[
            "log",
            "verify-receipt",
            receipt.to_str().expect("e2e step failed"),
            "--key",
            log_key.trim(),
        ]));

        // Publishing the same folder again is a no-op that uploads nothing.
        let again = json(
            stdout(&daemon.cli(&[
                "publish",
                package.to_str().expect("e2e step failed"),
                "--json",
            ]))
            .as_bytes(),
        );
        assert_eq!(again["already_published"], true);
        assert_eq!(again["uploaded_files"], 0);
        assert_eq!(again["ledger_index"], published["ledger_index"]);

        // Listed over gRPC and REST, anonymously (public content).
        let listed = stdout(&daemon.cli_as(None, &["versions", name]));
        assert!(listed.contains(version), "{listed}");
        let (code, body) = curl(&[&format!("{}/wrappers/{name}/versions", daemon.rest)]);
        assert_eq!(code, 200);
        let body = json(&body);
        assert_eq!(body["versions"][0]["version"], version);
        assert_eq!(body["versions"][0]["root"], published["root"]);

        // Installed over gRPC without a token, then verified offline against the publisher key.
        let target = dir.path().join(format!("{name}-installed"));
        let out = stdout(&daemon.cli_as(
            None,
            &[
                "install",
                &format!("{name}@{version}"),
                "-o",
                target.to_str().expect("e2e step failed"),
                "--key",
                public,
            ],
        ));
        assert!(out.contains("signature        ok"), "{out}");
        assert!(out.contains("badge"), "{out}");
        let out = stdout(&offline(&[
            "pack",
            "verify",
            target.to_str().expect("e2e step failed"),
            "--key",
            public,
        ]));
        assert!(out.starts_with("ok: "), "{out}");

        // Installed over REST with curl: the version record, every file by digest, the
        // envelope; then the same offline verification.
        let (code, body) = curl(&[&format!(
            "{}/wrappers/{name}/versions/{version}",
            daemon.rest
        )]);
        assert_eq!(code, 200);
        let record = json(&body);
        let rest_dir = dir.path().join(format!("{name}-rest"));
        for file in record["files"].as_array().expect("e2e step failed") {
            let path = rest_dir.join(file["path"].as_str().expect("e2e step failed"));
            std::fs::create_dir_all(path.parent().expect("e2e step failed"))
                .expect("e2e step failed");
            let (code, _) = curl(&[
                "-o",
                path.to_str().expect("e2e step failed"),
                &format!(
                    "{}/blobs/{}",
                    daemon.rest,
                    file["sha256"].as_str().expect("e2e step failed")
                ),
            ]);
            assert_eq!(code, 200);
        }
        std::fs::create_dir_all(rest_dir.join(".custodian")).expect("e2e step failed");
        std::fs::write(
            rest_dir.join(".custodian/package.dsse.json"),
            serde_json::to_vec(&record["envelope"]).expect("e2e step failed"),
        )
        .expect("e2e step failed");
        let out = stdout(&offline(&[
            "pack",
            "verify",
            rest_dir.to_str().expect("e2e step failed"),
            "--key",
            public,
        ]));
        assert!(out.starts_with("ok: "), "{out}");

        // An implementation nobody on this project's Rust side wrote agrees: Python's hashlib and
        // pyca/cryptography, from docs/formats.md (tests/interop/verify_package.py).
        let python_check = |folder: &Path| {
            Command::new(python())
                .arg(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../../tests/interop/verify_package.py"),
                )
                .arg(folder)
                .arg(public)
                .output()
                .expect("run python (scripts/test provides a venv with cryptography)")
        };
        let out = stdout(&python_check(&target));
        assert!(out.starts_with(&format!("ok {name}@{version}")), "{out}");
        assert!(
            out.contains(published["root"].as_str().expect("root")),
            "{out}"
        );

        // A subset of the files is proven against the root the registry recorded, offline.
        let proof = dir.path().join(format!("{name}.proof.json"));
        stdout(&offline(&[
            "pack",
            "prove",
            target.to_str().expect("utf-8"),
            "manifest.yaml",
            "-o",
            proof.to_str().expect("utf-8"),
        ]));
        let root = published["root"].as_str().expect("root");
        let out = stdout(&offline(&[
            "pack",
            "check-proof",
            proof.to_str().expect("utf-8"),
            "--root",
            root,
            "--dir",
            target.to_str().expect("utf-8"),
        ]));
        assert!(out.starts_with("ok: manifest.yaml"), "{out}");
        let mut forged = json(&std::fs::read(&proof).expect("proof"));
        forged["files"][0]["size"] =
            (forged["files"][0]["size"].as_u64().expect("size") + 1).into();
        std::fs::write(&proof, serde_json::to_vec(&forged).expect("json")).expect("write");
        let output = offline(&[
            "pack",
            "check-proof",
            proof.to_str().expect("utf-8"),
            "--root",
            root,
        ]);
        assert!(!output.status.success(), "a forged proof was accepted");

        // A modified installed file is named by the offline check.
        std::fs::write(target.join("manifest.yaml"), "name: changed\n").expect("e2e step failed");
        let output = offline(&[
            "pack",
            "verify",
            target.to_str().expect("e2e step failed"),
            "--key",
            public,
        ]);
        assert!(!output.status.success());
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("manifest.yaml: has been modified")
        );
        let output = python_check(&target);
        assert!(!output.status.success());
        assert!(
            String::from_utf8_lossy(&output.stderr)
                .contains("manifest.yaml on disk does not match")
        );
    }

    // Data packs (seed 001): the external one for pacman-builder, hosted bytes for the classifier.
    let rest = &daemon.rest;
    let auth = bearer(&daemon.token);
    let manifest = examples().join("pacman-builder.data-pack.json");
    let url = format!("{rest}/wrappers/pacman-builder/versions/0.2.1/data-pack");
    let (code, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        &auth,
        "-H",
        "content-type: application/json",
        "--data-binary",
        &format!("@{}", manifest.display()),
        &format!("{url}/manifest"),
    ]);
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let registered = json(&body);
    assert_eq!(registered["record"]["source_type"], "s3");
    assert_eq!(registered["receipt"]["type"], "custodian.receipt.v1");
    // The same declaration again is idempotent; another one conflicts.
    let (code, _) = curl(&[
        "-X",
        "PUT",
        "-H",
        &auth,
        "--data-binary",
        &format!("@{}", manifest.display()),
        &format!("{url}/manifest"),
    ]);
    assert_eq!(code, 200);
    let (code, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        &auth,
        "--data",
        r#"{"source_type":"url","uri":"https://example.org/x","access_policy":"user_managed","license":"MIT"}"#,
        &format!("{url}/manifest"),
    ]);
    assert_eq!(
        (code, json(&body)["error"]["code"].clone()),
        (409, "already_exists".into())
    );
    let (code, body) = curl(&[&url]);
    assert_eq!(code, 200);
    let view = json(&body);
    assert_eq!(
        view["uri"],
        "s3://my-org-bucket/prompt-packs/pacman/v2/levels.parquet"
    );
    assert_eq!(
        view["provenance"]["citations"][0],
        "https://example.org/arcade-scoring"
    );
    let (code, body) = curl(&[&format!("{url}/download")]);
    assert_eq!(
        (code, json(&body)["error"]["code"].clone()),
        (409, "external_data_pack".into())
    );

    let data = examples().join("customer-support-classifier.train.jsonl");
    let bytes = std::fs::read(&data).expect("e2e step failed");
    let sha = Digest::of(Algorithm::Sha256, &bytes);
    let url = format!("{rest}/wrappers/customer-support-classifier/versions/0.1.0/data-pack");
    let metadata = format!(
        r#"metadata={{"license":"CC-BY-4.0","sha256":"{sha}","provenance":{{"generator":"synthetic","rows":60}},"eval_set_uri":"https://example.org/evals/support.jsonl"}};type=application/json"#
    );
    std::fs::write(
        dir.path().join("provenance.json"),
        r#"{"generator":"synthetic","rows":60}"#,
    )
    .expect("write provenance");
    let (code, body) = curl(&[
        "-H",
        &auth,
        "-F",
        &metadata,
        "-F",
        &format!("file=@{}", data.display()),
        &format!("{url}/hosted"),
    ]);
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let (code, body) = curl(&[&url]);
    assert_eq!(code, 200);
    let view = json(&body);
    assert_eq!(view["sha256"], sha.to_string());
    assert_eq!(view["size"], bytes.len());
    // The upload was scanned in custody before it was registered.
    assert_eq!(view["scan_status"], "clean");
    assert_eq!(view["visibility"], "inherit");
    assert_eq!(view["provenance"]["rows"], 60);
    let out = dir.path().join("range.bin");
    let (code, _) = curl(&[
        "-r",
        "100-199",
        "-o",
        out.to_str().expect("e2e step failed"),
        &format!("{url}/download"),
    ]);
    assert_eq!(code, 206);
    assert_eq!(
        std::fs::read(&out).expect("e2e step failed"),
        bytes[100..200]
    );
    let (code, _) = curl(&[
        "-o",
        out.to_str().expect("e2e step failed"),
        &format!("{url}/download"),
    ]);
    assert_eq!(code, 200);
    assert_eq!(std::fs::read(&out).expect("e2e step failed"), bytes);
    let (code, _) = curl(&["-r", "999999-", &format!("{url}/download")]);
    assert_eq!(code, 416);

    // The CLI's data pack commands use the same REST API: show, a verified download, and an
    // idempotent repeat of the upload and of the external declaration.
    let with_rest = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--rest", rest.as_str()]);
        daemon.cli(&all)
    };
    let shown = stdout(&with_rest(&[
        "datapack",
        "show",
        "customer-support-classifier@0.1.0",
        "--json",
    ]));
    assert_eq!(json(shown.as_bytes())["sha256"], sha.to_string());
    let fetched = dir.path().join("fetched.jsonl");
    stdout(&with_rest(&[
        "datapack",
        "download",
        "customer-support-classifier@0.1.0",
        "-o",
        fetched.to_str().expect("utf-8"),
    ]));
    assert_eq!(std::fs::read(&fetched).expect("downloaded"), bytes);
    let again = stdout(&with_rest(&[
        "datapack",
        "upload",
        "customer-support-classifier@0.1.0",
        data.to_str().expect("utf-8"),
        "--license",
        "CC-BY-4.0",
        "--provenance",
        dir.path().join("provenance.json").to_str().expect("utf-8"),
        "--eval-set-uri",
        "https://example.org/evals/support.jsonl",
    ]));
    assert!(again.starts_with("already registered"), "{again}");
    let again = stdout(&with_rest(&[
        "datapack",
        "set-external",
        "pacman-builder@0.2.1",
        manifest.to_str().expect("utf-8"),
    ]));
    assert!(again.starts_with("already registered"), "{again}");
    let refused = with_rest(&[
        "datapack",
        "upload",
        "pacman-builder@0.2.1",
        data.to_str().expect("utf-8"),
        "--license",
        "MIT",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("already_exists (409)"), "{stderr}");

    // gRPC shows the data pack with the version; install reports it.
    let version = registry(&daemon, None)
        .await
        .get_version(pb::GetVersionRequest {
            name: "customer-support-classifier".into(),
            version: "0.1.0".into(),
        })
        .await
        .expect("e2e step failed")
        .into_inner();
    assert_eq!(
        version.data_pack.expect("e2e step failed").sha256,
        sha.to_string()
    );

    // Yank: still fetchable, flagged, and installs warn.
    let out = stdout(&daemon.cli(&[
        "yank",
        "pacman-builder@0.2.1",
        "--reason",
        "ghost AI regression",
    ]));
    assert!(out.starts_with("yanked"), "{out}");
    let output = daemon.cli_as(
        None,
        &[
            "install",
            "pacman-builder@0.2.1",
            "-o",
            dir.path().join("yanked").to_str().expect("e2e step failed"),
        ],
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("YANKED: ghost AI regression"));
    assert!(output.status.success());
    let (_, body) = curl(&[&format!("{rest}/wrappers/pacman-builder/versions")]);
    assert_eq!(json(&body)["versions"][0]["yanked"], true);

    // Everything survives a restart: the registry is rebuilt from the ledger.
    let mut daemon = daemon;
    daemon.restart_after_kill9();
    let (code, body) = curl(&[&format!("{}/wrappers/pacman-builder/versions", daemon.rest)]);
    assert_eq!(code, 200);
    assert_eq!(
        json(&body)["versions"][0]["yank_reason"],
        "ghost AI regression"
    );
    let (code, _) = curl(&[&format!(
        "{}/wrappers/customer-support-classifier/versions/0.1.0/data-pack",
        daemon.rest
    )]);
    assert_eq!(code, 200);
}

/// Signs statement JSON as it is (for crafting statements the library would refuse to build).
fn sign_raw(statement: &serde_json::Value, key: &SignerKey) -> String {
    Envelope::sign(
        INTOTO_PAYLOAD_TYPE,
        &serde_json::to_vec(statement).expect("e2e step failed"),
        key,
    )
    .to_json()
}

/// Uploads one blob with BatchPut and returns its result.
async fn batch_put_one(
    client: &mut ContentStoreClient<Authed>,
    data: &[u8],
) -> cas::BatchPutResult {
    let mut response = client
        .batch_put(cas::BatchPutRequest {
            items: vec![cas::BatchPutItem {
                expected_digest: String::new(),
                data: data.to_vec().into(),
            }],
        })
        .await
        .expect("BatchPut")
        .into_inner();
    response.results.remove(0)
}

async fn put(client: &mut ContentStoreClient<Authed>, data: &[u8]) -> Digest {
    batch_put_one(client, data)
        .await
        .blob
        .expect("stored")
        .sha256
        .parse()
        .expect("a digest")
}

#[tokio::test]
async fn every_rejection_is_clear_and_records_nothing() {
    let dir = tempfile::tempdir().expect("e2e step failed");
    let daemon = Daemon::start(&dir.path().join("data"));
    let key = SignerKey::from_seed("acme", [3; 32]).expect("e2e step failed");
    let other = SignerKey::from_seed("acme", [4; 32]).expect("e2e step failed");
    let mut store = daemon.client().await;
    let mut registry = registry(&daemon, Some(&daemon.token)).await;

    let manifest =
        std::fs::read(examples().join("pacman-builder/manifest.yaml")).expect("e2e step failed");
    let system = b"You write games.".to_vec();
    let system_digest = put(&mut store, &system).await;
    let system_file = FileEntry {
        path: "prompts/system.md".into(),
        sha256: system_digest,
        size: system.len() as u64,
    };
    // The pacman manifest refers to files this minimal package lacks: drop the prompt section.
    let text = String::from_utf8(manifest.clone()).expect("e2e step failed");
    let minimal = text
        .split("\nprompt:")
        .next()
        .expect("e2e step failed")
        .to_string()
        + "\n";
    let minimal_digest = put(&mut store, minimal.as_bytes()).await;
    let files = vec![
        FileEntry {
            path: "manifest.yaml".into(),
            sha256: minimal_digest,
            size: minimal.len() as u64,
        },
        system_file,
    ];
    let statement =
        PackageStatement::new("pacman-builder", "0.2.1", "prompt_template", files.clone())
            .expect("e2e step failed");
    let good = statement.sign(&key).to_json();
    let publish = |envelope: String, publisher: &SignerKey| pb::PublishVersionRequest {
        envelope,
        publisher_key: publisher.verifier().to_string(),
        visibility: 0,
        ..Default::default()
    };

    let before = log_size(&daemon).await;
    let statement_json: serde_json::Value =
        serde_json::from_slice(&statement.to_json()).expect("e2e step failed");
    let mut cases: Vec<(&str, pb::PublishVersionRequest, Code, &str)> = Vec::new();

    // A wrong signature: signed by one key, presented with another; and a flipped signature.
    cases.push((
        "wrong key",
        publish(good.clone(), &other),
        Code::InvalidArgument,
        "no signature by key",
    ));
    let mut flipped: serde_json::Value = serde_json::from_str(&good).expect("e2e step failed");
    let sig = flipped["signatures"][0]["sig"]
        .as_str()
        .expect("e2e step failed")
        .to_string();
    let replaced = if sig.starts_with('A') {
        sig.replacen('A', "B", 1)
    } else {
        format!("A{}", &sig[1..])
    };
    flipped["signatures"][0]["sig"] = replaced.into();
    cases.push((
        "flipped signature",
        publish(flipped.to_string(), &key),
        Code::InvalidArgument,
        "does not verify",
    ));

    // A tampered file: the signed digest is not what is in custody.
    let fake = Digest::of(Algorithm::Sha256, b"tampered");
    let mut tampered_files = files.clone();
    tampered_files[1].sha256 = fake;
    let tampered_statement =
        PackageStatement::new("pacman-builder", "0.2.1", "prompt_template", tampered_files)
            .expect("e2e step failed");
    let tampered = tampered_statement.sign(&key).to_json();
    cases.push((
        "tampered file",
        publish(tampered, &key),
        Code::FailedPrecondition,
        "prompts/system.md",
    ));

    // A mismatched hash: the stated root is not the root of the stated files.
    let mut wrong_root = statement_json.clone();
    wrong_root["predicate"]["root"] = format!("sha256:{}", "00".repeat(32)).into();
    cases.push((
        "wrong root",
        publish(sign_raw(&wrong_root, &key), &key),
        Code::InvalidArgument,
        "package root does not match",
    ));
    // A mismatched size for a stored blob.
    let mut wrong_size_files = files.clone();
    wrong_size_files[1].size += 1;
    let wrong_size = PackageStatement::new(
        "pacman-builder",
        "0.2.1",
        "prompt_template",
        wrong_size_files,
    )
    .expect("e2e step failed");
    cases.push((
        "wrong size",
        publish(wrong_size.sign(&key).to_json(), &key),
        Code::InvalidArgument,
        "in custody is",
    ));

    // Paths escaping the package.
    for bad in ["../escape.md", "/etc/passwd"] {
        let mut escaping = statement_json.clone();
        escaping["subject"][1]["name"] = bad.into();
        escaping["predicate"]["files"][1]["path"] = bad.into();
        let leaked: &'static str = Box::leak(format!("file path {bad:?}").into_boxed_str());
        cases.push((
            "escaping path",
            publish(sign_raw(&escaping, &key), &key),
            Code::InvalidArgument,
            leaked,
        ));
    }

    // A missing required field in the manifest.
    let no_license = minimal.replace("license: apache-2.0\n", "");
    let no_license_digest = put(&mut store, no_license.as_bytes()).await;
    let mut no_license_files = files.clone();
    no_license_files[0] = FileEntry {
        path: "manifest.yaml".into(),
        sha256: no_license_digest,
        size: no_license.len() as u64,
    };
    let no_license_statement = PackageStatement::new(
        "pacman-builder",
        "0.2.1",
        "prompt_template",
        no_license_files,
    )
    .expect("e2e step failed");
    cases.push((
        "missing license",
        publish(no_license_statement.sign(&key).to_json(), &key),
        Code::InvalidArgument,
        "manifest.yaml: license: required field is missing",
    ));
    // A manifest that disagrees with the signed name.
    let renamed = PackageStatement::new(
        "pacman-builder-fork",
        "0.2.1",
        "prompt_template",
        files.clone(),
    )
    .expect("e2e step failed");
    cases.push((
        "renamed",
        publish(renamed.sign(&key).to_json(), &key),
        Code::InvalidArgument,
        "the signed statement says",
    ));
    // A malformed key and envelope.
    cases.push((
        "malformed key",
        pb::PublishVersionRequest {
            envelope: good.clone(),
            publisher_key: "not-a-key".into(),
            visibility: 0,
            ..Default::default()
        },
        Code::InvalidArgument,
        "field publisher_key",
    ));
    cases.push((
        "malformed envelope",
        publish("{}".into(), &key),
        Code::InvalidArgument,
        "field envelope",
    ));

    for (what, request, code, needle) in cases {
        let status = registry.publish_version(request).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        assert!(
            status.message().contains(needle),
            "{what}: {:?} lacks {needle:?}",
            status.message()
        );
        assert_eq!(log_size(&daemon).await, before, "{what} recorded something");
    }

    // Anonymous and under-scoped publishers.
    let status = registry_anon(&daemon)
        .await
        .publish_version(publish(good.clone(), &key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let reader = daemon.create_token("reader", "read", "*");
    let status = crate::registry::registry(&daemon, Some(&reader))
        .await
        .publish_version(publish(good.clone(), &key))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    assert_eq!(log_size(&daemon).await, before);

    // The good one publishes; the same name@version with other content is ALREADY_EXISTS;
    // another key for the same name is PERMISSION_DENIED (the first version pinned the key).
    registry
        .publish_version(publish(good.clone(), &key))
        .await
        .expect("e2e step failed");
    let after = log_size(&daemon).await;
    // The publication and the built-in scan's verdict.
    assert_eq!(after, before + 2);
    let other_content = PackageStatement::new(
        "pacman-builder",
        "0.2.1",
        "prompt_template",
        vec![files[0].clone()],
    )
    .expect("e2e step failed");
    let status = registry
        .publish_version(publish(other_content.sign(&key).to_json(), &key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{}", status.message());
    assert!(status.message().contains("versions are immutable"));
    let status = registry
        .publish_version(publish(other_content.sign(&other).to_json(), &other))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("pinned"), "{}", status.message());
    // Raw ledger appends cannot forge registry events.
    let mut ledger = daemon.connect(Some(&daemon.token)).await.ledger();
    let status = ledger
        .append(lpb::AppendRequest {
            kind: "PackagePublished".into(),
            payload_cbor: vec![0xa0].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(log_size(&daemon).await, after);

    // A hosted data pack whose bytes do not match the declared sha256: refused, nothing kept.
    let data = crate::pattern(7, 100_000);
    let file = dir.path().join("pack.bin");
    std::fs::write(&file, &data).expect("e2e step failed");
    let declared = Digest::of(Algorithm::Sha256, b"something else");
    let (code, body) = curl(&[
        "-H",
        &bearer(&daemon.token),
        "-F",
        &format!(r#"metadata={{"license":"MIT","sha256":"{declared}"}};type=application/json"#),
        "-F",
        &format!("file=@{}", file.display()),
        &format!(
            "{}/wrappers/pacman-builder/versions/0.2.1/data-pack/hosted",
            daemon.rest
        ),
    ]);
    assert_eq!(code, 422, "{}", String::from_utf8_lossy(&body));
    let error = json(&body);
    assert_eq!(error["error"]["code"], "digest_mismatch");
    assert!(
        error["error"]["message"]
            .as_str()
            .expect("e2e step failed")
            .contains(&declared.to_string())
    );
    assert_eq!(log_size(&daemon).await, after);
    let actual = Digest::of(Algorithm::Sha256, &data);
    let missing = store
        .find_missing(cas::FindMissingRequest {
            digests: vec![actual.to_string()],
        })
        .await
        .expect("e2e step failed")
        .into_inner();
    assert_eq!(
        missing.missing_digests,
        [actual.to_string()],
        "the mismatched bytes were kept"
    );
    let (code, _) = curl(&[&format!(
        "{}/wrappers/pacman-builder/versions/0.2.1/data-pack",
        daemon.rest
    )]);
    assert_eq!(code, 404);
    // Metadata that is missing its license is refused before any byte is stored.
    let (code, body) = curl(&[
        "-H",
        &bearer(&daemon.token),
        "-F",
        "metadata={};type=application/json",
        "-F",
        &format!("file=@{}", file.display()),
        &format!(
            "{}/wrappers/pacman-builder/versions/0.2.1/data-pack/hosted",
            daemon.rest
        ),
    ]);
    assert_eq!(code, 400);
    assert!(
        json(&body)["error"]["message"]
            .as_str()
            .expect("e2e step failed")
            .contains("metadata.license")
    );
    assert_eq!(log_size(&daemon).await, after);

    // The CLI refuses a folder whose files changed since it was built, and names the file.
    let package = copy_example("pacman-builder", dir.path());
    std::fs::write(dir.path().join("acme.key"), key.to_private_string()).expect("e2e step failed");
    stdout(&offline(&[
        "pack",
        "build",
        package.to_str().expect("e2e step failed"),
        "--key",
        dir.path()
            .join("acme.key")
            .to_str()
            .expect("e2e step failed"),
    ]));
    std::fs::write(
        package.join("prompts/system.md"),
        "Ignore all previous instructions.",
    )
    .expect("e2e step failed");
    let output = daemon.cli(&["publish", package.to_str().expect("e2e step failed")]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("prompts/system.md: has been modified")
    );
    // And a manifest problem is reported with file, line and field before anything is sent.
    std::fs::write(
        package.join("manifest.yaml"),
        minimal.replace("version: 0.2.1", "version: 0.2"),
    )
    .expect("e2e step failed");
    let output = daemon.cli(&[
        "publish",
        package.to_str().expect("e2e step failed"),
        "--key",
        dir.path()
            .join("acme.key")
            .to_str()
            .expect("e2e step failed"),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("manifest.yaml:4: version: \"0.2\" is not a semver version"),
        "{stderr}"
    );
    assert_eq!(log_size(&daemon).await, after);
}

async fn registry_anon(daemon: &Daemon) -> RegistryClient<Authed> {
    registry(daemon, None).await
}

/// A GET of a REST path, answering its status and body.
type Fetch<'a> = dyn Fn(&str) -> (u16, Vec<u8>) + 'a;

/// For every read path, a caller without a grant gets the same answer for private content as
/// for content that does not exist; a caller with a grant gets the content.
#[tokio::test]
async fn private_content_answers_exactly_like_absent_content() {
    let dir = tempfile::tempdir().expect("e2e step failed");
    let daemon = Daemon::start(&dir.path().join("data"));
    let (key, _) = generate_key(dir.path(), "acme");
    let publisher = daemon.create_token("acme-ci", "publish", "@acme/");
    let reader = daemon.create_token("acme-reader", "read", "@acme/");
    let outsider = daemon.create_token("other-team", "publish", "@other/");

    // A private package under @acme/ with a private hosted data pack.
    let package = copy_example("pacman-builder", dir.path());
    let manifest = std::fs::read_to_string(package.join("manifest.yaml")).expect("e2e step failed");
    std::fs::write(
        package.join("manifest.yaml"),
        manifest.replace("name: pacman-builder", "name: \"@acme/pacman\""),
    )
    .expect("e2e step failed");
    let secret = b"ACME internal prompt: never published anywhere else".to_vec();
    std::fs::write(package.join("prompts/secret.md"), &secret).expect("e2e step failed");
    stdout(&daemon.cli_as(
        Some(&publisher),
        &[
            "publish",
            package.to_str().expect("e2e step failed"),
            "--key",
            key.to_str().expect("e2e step failed"),
            "--private",
        ],
    ));
    let data = crate::pattern(11, 50_000);
    let data_file = dir.path().join("private.bin");
    std::fs::write(&data_file, &data).expect("e2e step failed");
    let (code, body) = curl(&[
        "-H",
        &bearer(&publisher),
        "-F",
        r#"metadata={"license":"LicenseRef-acme"};type=application/json"#,
        "-F",
        &format!("file=@{}", data_file.display()),
        &format!(
            "{}/wrappers/%40acme%2Fpacman/versions/0.2.1/data-pack/hosted",
            daemon.rest
        ),
    ]);
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let secret_digest = Digest::of(Algorithm::Sha256, &secret);
    let data_digest = Digest::of(Algorithm::Sha256, &data);
    let absent_digest = Digest::of(Algorithm::Sha256, b"never stored");
    let secret_blake3 = Digest::of(Algorithm::Blake3, &secret);
    let absent_blake3 = Digest::of(Algorithm::Blake3, b"never stored");

    // Answers for (private, absent) pairs must be identical once the names are swapped.
    let same = |private: &str, absent: &str, swap: &[(&str, &str)]| {
        let mut normalized = private.to_string();
        for (from, to) in swap {
            normalized = normalized.replace(from, to);
        }
        assert_eq!(
            normalized, absent,
            "private content answered differently from absent content"
        );
    };
    let names = [("@acme/pacman", "@acme/nothing")];

    for (who, token) in [("anonymous", None), ("outsider", Some(outsider.as_str()))] {
        // gRPC Registry, by name: each call for the private name and for an absent one.
        let registry = registry(&daemon, token).await;
        let compare = |what: &str, a: tonic::Status, b: tonic::Status, swap: &[(&str, &str)]| {
            assert_eq!(
                (a.code(), b.code()),
                (Code::NotFound, Code::NotFound),
                "{who} {what}"
            );
            same(a.message(), b.message(), swap);
        };
        let get_version = |name: &'static str| {
            let mut registry = registry.clone();
            async move {
                registry
                    .get_version(pb::GetVersionRequest {
                        name: name.into(),
                        version: "0.2.1".into(),
                    })
                    .await
                    .expect_err("hidden or absent")
            }
        };
        let list_versions = |name: &'static str| {
            let mut registry = registry.clone();
            async move {
                registry
                    .list_versions(pb::ListVersionsRequest { name: name.into() })
                    .await
                    .expect_err("hidden or absent")
            }
        };
        let (private, absent) = names[0];
        compare(
            "GetVersion",
            get_version(private).await,
            get_version(absent).await,
            &names,
        );
        compare(
            "ListVersions",
            list_versions(private).await,
            list_versions(absent).await,
            &names,
        );

        // gRPC ContentStore, by digest (both algorithms).
        let mut store = daemon.connect(token).await.store();
        let reader = store.clone();
        let stat = |digest: Digest| {
            let mut store = reader.clone();
            async move {
                store
                    .stat(cas::StatRequest {
                        digest: digest.to_string(),
                    })
                    .await
                    .expect_err("hidden or absent")
            }
        };
        let get = |digest: Digest| {
            let mut store = reader.clone();
            async move {
                store
                    .get(cas::GetRequest {
                        digest: digest.to_string(),
                        offset: 0,
                        limit: 0,
                    })
                    .await
                    .expect_err("hidden or absent")
            }
        };
        for (private, absent) in [
            (secret_digest, absent_digest),
            (data_digest, absent_digest),
            (secret_blake3, absent_blake3),
        ] {
            let swap = [(private.to_string(), absent.to_string())];
            let swap: Vec<(&str, &str)> =
                swap.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            compare("Stat", stat(private).await, stat(absent).await, &swap);
            compare("Get", get(private).await, get(absent).await, &swap);
            let missing = store
                .find_missing(cas::FindMissingRequest {
                    digests: vec![private.to_string(), absent.to_string()],
                })
                .await
                .expect("e2e step failed")
                .into_inner();
            assert_eq!(
                missing.missing_digests,
                [private.to_string(), absent.to_string()],
                "{who} find_missing"
            );
            let batch = store
                .batch_get(cas::BatchGetRequest {
                    digests: vec![private.to_string(), absent.to_string()],
                })
                .await
                .expect("e2e step failed")
                .into_inner();
            let (a, b) = (
                batch.results[0].error.clone().expect("e2e step failed"),
                batch.results[1].error.clone().expect("e2e step failed"),
            );
            assert_eq!(a.code, b.code, "{who} batch_get");
            same(&a.message, &b.message, &swap);
        }
        // An upload of the private bytes does not reveal that they were already present.
        if token.is_some() {
            let put = batch_put_one(&mut store, &secret).await;
            assert!(!put.already_present, "{who} learned the blob existed");
        }

        // The ledger entry of a private publication is sealed: a commitment to a body in
        // custody, readable by anyone (as its entry bundle is) and naming nothing.
        let mut ledger = daemon.connect(token).await.ledger();
        let entry = ledger
            .get_entry(lpb::GetEntryRequest { index: 0 })
            .await
            .expect("a sealed entry is public")
            .into_inner();
        assert_eq!(entry.kind, "Sealed", "{who}");
        assert!(
            !entry.encoded.windows(4).any(|w| w == b"acme"),
            "the sealed entry names the package"
        );
        let (code, bundle) = curl(&[&format!("{}/log/tile/entries/000.p/1", daemon.rest)]);
        assert_eq!(code, 200, "{who}: {}", String::from_utf8_lossy(&bundle));
        assert!(bundle.ends_with(&entry.encoded), "{who}");
        assert!(!bundle.windows(4).any(|w| w == b"acme"), "{who}");
        // Its body, which holds the event, is private content like the package's files (below).
        let custodian_core::entry::Value::Map(fields) =
            custodian_core::entry::parse_cbor(&entry.payload_cbor).expect("payload")
        else {
            panic!("a sealed payload is a map");
        };
        let body_digest: Digest = fields
            .iter()
            .find(|(k, _)| k.as_text() == Some("body"))
            .and_then(|(_, v)| v.as_text())
            .expect("body digest")
            .parse()
            .expect("digest");

        // REST, by name and by digest.
        let fetch = |header: &Option<String>, path: &str| {
            let url = format!("{}{path}", daemon.rest);
            match header {
                Some(h) => curl(&["-H", h, &url]),
                None => curl(&[&url]),
            }
        };
        let auth = token.map(bearer);
        let get = |path: &str| fetch(&auth, path);
        // The pages too, with the token as a header and as the pages' cookie.
        let cookie = token.map(|t| format!("Cookie: custodian_token={t}"));
        let page = |path: &str| fetch(&cookie, path);
        let both: [&Fetch; 2] = [&get, &page];
        for (private, absent, fetchers) in [
            (
                "/packages/%40acme%2Fpacman",
                "/packages/%40acme%2Fnothing",
                &both[..],
            ),
            (
                "/packages/%40acme%2Fpacman/0.2.1",
                "/packages/%40acme%2Fnothing/0.2.1",
                &both[..],
            ),
            (
                "/wrappers/%40acme%2Fpacman/versions",
                "/wrappers/%40acme%2Fnothing/versions",
                &both[..1],
            ),
            (
                "/wrappers/%40acme%2Fpacman/versions/0.2.1",
                "/wrappers/%40acme%2Fnothing/versions/0.2.1",
                &both[..1],
            ),
            (
                "/wrappers/%40acme%2Fpacman/versions/0.2.1/data-pack",
                "/wrappers/%40acme%2Fnothing/versions/0.2.1/data-pack",
                &both[..1],
            ),
            (
                "/wrappers/%40acme%2Fpacman/versions/0.2.1/data-pack/download",
                "/wrappers/%40acme%2Fnothing/versions/0.2.1/data-pack/download",
                &both[..1],
            ),
        ] {
            for fetch in fetchers {
                let (a, b) = (fetch(private), fetch(absent));
                assert_eq!((a.0, b.0), (404, 404), "{who} {private}");
                same(
                    &String::from_utf8_lossy(&a.1),
                    &String::from_utf8_lossy(&b.1),
                    &names,
                );
            }
        }
        for fetch in both {
            let (code, listed) = fetch("/packages?q=acme");
            assert_eq!(code, 200, "{who}");
            assert!(
                !String::from_utf8_lossy(&listed).contains("@acme/pacman"),
                "{who}: the packages page lists a private package"
            );
        }
        for (private, absent) in [
            (secret_digest, absent_digest),
            (data_digest, absent_digest),
            (body_digest, absent_digest),
        ] {
            let (a, b) = (
                get(&format!("/blobs/{private}")),
                get(&format!("/blobs/{absent}")),
            );
            assert_eq!((a.0, b.0), (404, 404), "{who} /blobs");
            same(
                &String::from_utf8_lossy(&a.1),
                &String::from_utf8_lossy(&b.1),
                &[(&private.to_string(), &absent.to_string())],
            );
        }
        // Writes by someone without publish on @acme/ are refused.
        let output = daemon.cli_as(token, &["yank", "@acme/pacman@0.2.1", "--reason", "x"]);
        assert!(
            !output.status.success(),
            "{who} yanked a package it cannot see"
        );
    }

    // The reader sees all of it, over gRPC and REST.
    let mut registry = registry(&daemon, Some(&reader)).await;
    let version = registry
        .get_version(pb::GetVersionRequest {
            name: "@acme/pacman".into(),
            version: "0.2.1".into(),
        })
        .await
        .expect("e2e step failed")
        .into_inner();
    assert_eq!(version.visibility, pb::Visibility::Private as i32);
    assert_eq!(
        version.data_pack.expect("e2e step failed").sha256,
        data_digest.to_string()
    );
    let mut store = daemon.connect(Some(&reader)).await.store();
    store
        .stat(cas::StatRequest {
            digest: secret_blake3.to_string(),
        })
        .await
        .expect("e2e step failed");
    let mut ledger = daemon.connect(Some(&reader)).await.ledger();
    ledger
        .get_entry(lpb::GetEntryRequest { index: 0 })
        .await
        .expect("e2e step failed");
    let (code, body) = curl(&[
        "-H",
        &bearer(&reader),
        &format!("{}/blobs/{secret_digest}", daemon.rest),
    ]);
    assert_eq!((code, body), (200, secret.clone()));
    let (code, _) = curl(&[
        "-H",
        &bearer(&reader),
        &format!(
            "{}/wrappers/%40acme%2Fpacman/versions/0.2.1/data-pack/download",
            daemon.rest
        ),
    ]);
    assert_eq!(code, 200);
    // Its pages, with the reader's token as the pages' cookie; and a cookie never writes.
    let cookie = format!("Cookie: custodian_token={reader}");
    let (code, body) = curl(&[
        "-H",
        &cookie,
        &format!("{}/packages/%40acme%2Fpacman/0.2.1", daemon.rest),
    ]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("prompts/secret.md"));
    let target = dir.path().join("installed");
    stdout(&daemon.cli_as(
        Some(&reader),
        &[
            "install",
            "@acme/pacman@0.2.1",
            "-o",
            target.to_str().expect("e2e step failed"),
        ],
    ));
    assert_eq!(
        std::fs::read(target.join("prompts/secret.md")).expect("e2e step failed"),
        secret
    );

    // A revoked token stops working at its next request.
    let revoked = daemon.create_token("temp", "read", "@acme/");
    let id = stdout(&offline(&[
        "token",
        "list",
        "--json",
        "--data-dir",
        daemon.data_dir.to_str().expect("e2e step failed"),
    ]));
    let id = json(id.as_bytes())
        .as_array()
        .expect("e2e step failed")
        .iter()
        .find(|t| t["name"] == "temp")
        .expect("e2e step failed")["id"]
        .as_str()
        .expect("e2e step failed")
        .to_string();
    let mut registry = crate::registry::registry(&daemon, Some(&revoked)).await;
    registry
        .list_versions(pb::ListVersionsRequest {
            name: "@acme/pacman".into(),
        })
        .await
        .expect("e2e step failed");
    stdout(&offline(&[
        "token",
        "revoke",
        &id,
        "--data-dir",
        daemon.data_dir.to_str().expect("e2e step failed"),
    ]));
    let status = registry
        .list_versions(pb::ListVersionsRequest {
            name: "@acme/pacman".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let stored =
        std::fs::read_to_string(daemon.data_dir.join("tokens.json")).expect("e2e step failed");
    assert!(
        !stored.contains(&revoked) && !stored.contains(&reader),
        "secrets must never be stored"
    );
}

/// A 1 GiB hosted data pack streams through the multipart endpoint into custody and back out
/// (whole and by range) while the daemon's resident memory stays under 100 MiB.
#[tokio::test]
async fn one_gib_multipart_upload_and_download_with_bounded_memory() {
    let dir = tempfile::tempdir().expect("e2e step failed");
    let daemon = Daemon::start(&dir.path().join("data"));
    publish_example(&daemon, dir.path(), "customer-support-classifier", "acme");
    let file = dir.path().join("big.bin");
    {
        use std::io::Write as _;
        let mut out =
            std::io::BufWriter::new(std::fs::File::create(&file).expect("e2e step failed"));
        for i in 0..1024u64 {
            out.write_all(&crate::pattern(i, 1 << 20))
                .expect("e2e step failed");
        }
    }
    let sha = Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .arg(&file)
        .output()
        .expect("e2e step failed");
    let sha = format!(
        "sha256:{}",
        String::from_utf8_lossy(&sha.stdout)
            .split_whitespace()
            .next()
            .expect("e2e step failed")
    );
    let url = format!(
        "{}/wrappers/customer-support-classifier/versions/0.1.0/data-pack",
        daemon.rest
    );
    let (code, body) = curl(&[
        "-H",
        &bearer(&daemon.token),
        "-F",
        &format!(r#"metadata={{"license":"CC-BY-4.0","sha256":"{sha}"}};type=application/json"#),
        "-F",
        &format!("file=@{}", file.display()),
        &format!("{url}/hosted"),
    ]);
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["record"]["size"], 1u64 << 30);
    let after_upload = daemon.peak_rss();

    // A range in the middle, byte for byte.
    let part = dir.path().join("part.bin");
    let (code, _) = curl(&[
        "-r",
        "536870000-537920000",
        "-o",
        part.to_str().expect("e2e step failed"),
        &format!("{url}/download"),
    ]);
    assert_eq!(code, 206);
    let expected: Vec<u8> = {
        let mut f = std::fs::File::open(&file).expect("e2e step failed");
        use std::io::{Read as _, Seek as _};
        f.seek(std::io::SeekFrom::Start(536_870_000))
            .expect("e2e step failed");
        let mut buf = vec![0u8; 1_050_001];
        f.read_exact(&mut buf).expect("e2e step failed");
        buf
    };
    assert!(
        std::fs::read(&part).expect("e2e step failed") == expected,
        "the range differs"
    );
    // The whole pack, hashed by openssl as it arrives.
    let whole = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -sS --fail {url}/download | openssl dgst -sha256 -r"
        ))
        .output()
        .expect("e2e step failed");
    assert!(whole.status.success());
    assert_eq!(
        format!(
            "sha256:{}",
            String::from_utf8_lossy(&whole.stdout)
                .split_whitespace()
                .next()
                .expect("e2e step failed")
        ),
        sha
    );
    let peak = daemon.peak_rss();
    eprintln!(
        "1 GiB multipart upload: daemon peak RSS {:.1} MiB after upload, {:.1} MiB after downloads",
        after_upload as f64 / (1 << 20) as f64,
        peak as f64 / (1 << 20) as f64
    );
    assert!(
        peak < 100 << 20,
        "daemon peak RSS {peak} bytes is over 100 MiB"
    );
}

/// Both ports serve TLS with --tls-cert/--tls-key; clients trust the CA with --ca-cert / --cacert.
#[tokio::test]
async fn tls_on_both_ports() {
    let dir = tempfile::tempdir().expect("e2e step failed");
    // A private CA and a server certificate for 127.0.0.1 signed by it, made with openssl.
    let path = |name: &str| {
        dir.path()
            .join(name)
            .to_str()
            .expect("e2e step failed")
            .to_string()
    };
    let (ca_key, ca, key_file, csr, cert, ext) = (
        path("ca.key"),
        path("ca.pem"),
        path("server.key"),
        path("server.csr"),
        path("server.pem"),
        path("server.ext"),
    );
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("e2e step failed");
    for args in [
        vec![
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &ca_key,
        ],
        vec![
            "req",
            "-x509",
            "-new",
            "-key",
            &ca_key,
            "-subj",
            "/CN=Custodian test CA",
            "-days",
            "1",
            "-out",
            &ca,
        ],
        vec![
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &key_file,
        ],
        vec![
            "req",
            "-new",
            "-key",
            &key_file,
            "-subj",
            "/CN=localhost",
            "-out",
            &csr,
        ],
        vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    ] {
        let output = Command::new("openssl")
            .args(&args)
            .output()
            .expect("e2e step failed");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let (cert, key_file) = (PathBuf::from(cert), PathBuf::from(key_file));
    let ca = PathBuf::from(ca);
    let daemon = Daemon::start_with(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().expect("e2e step failed"),
            "--tls-key",
            key_file.to_str().expect("e2e step failed"),
        ],
    );
    let https = daemon.address.replace("http://", "https://");
    let (publisher_key, _) = generate_key(dir.path(), "acme");
    let package = copy_example("pacman-builder", dir.path());
    let output = Command::new(binary())
        .args([
            "publish",
            package.to_str().expect("e2e step failed"),
            "--key",
            publisher_key.to_str().expect("e2e step failed"),
        ])
        .args([
            "--server",
            &https,
            "--ca-cert",
            ca.to_str().expect("e2e step failed"),
            "--token",
            &daemon.token,
        ])
        .output()
        .expect("e2e step failed");
    stdout(&output);
    // Plain text to a TLS port fails; TLS without trusting the CA fails.
    let plain = daemon.cli(&["versions", "pacman-builder"]);
    assert!(!plain.status.success());
    let untrusted = Command::new(binary())
        .args(["versions", "pacman-builder", "--server", &https])
        .output()
        .expect("e2e step failed");
    assert!(!untrusted.status.success());
    let rest = daemon.rest.replace("http://", "https://");
    let (code, body) = curl(&[
        "--cacert",
        ca.to_str().expect("e2e step failed"),
        &format!("{rest}/wrappers/pacman-builder/versions"),
    ]);
    assert_eq!(code, 200);
    assert_eq!(json(&body)["versions"][0]["version"], "0.2.1");
    let insecure = Command::new("curl")
        .args(["-sS", &format!("{rest}/healthz")])
        .output()
        .expect("e2e step failed");
    assert!(
        !insecure.status.success(),
        "curl trusted a self-signed certificate"
    );
}
