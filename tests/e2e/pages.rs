//! The pages people look at, in a real browser (Debian's Chromium driven by playwright-core,
//! tests/browser/pages.js): they say what the JSON API says, and content a hostile publisher
//! placed in every field they show stays text — no script runs, no dialog opens, nothing is
//! fetched from elsewhere, and every page carries a strict Content-Security-Policy.

use std::path::{Path, PathBuf};

use crate::evidence::write_runs;
use crate::registry::{curl, generate_key, stdout};
use custodian_testkit::Daemon;

/// Where a test's screenshots are kept after it ends (the test artifacts).
pub(crate) fn screenshots(test: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("page-screenshots")
        .join(test)
}

/// Runs the browser script with `config` (see tests/browser/pages.js); panics with every
/// failure it lists. Returns its summary.
pub(crate) fn browse(config: &serde_json::Value) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.json");
    std::fs::write(&file, config.to_string()).expect("write the browser config");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/pages.js");
    let node_modules = std::env::var("CUSTODIAN_NODE_MODULES").unwrap_or_else(|_| {
        format!(
            "{}/.cache/custodian/node/node_modules",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let output = std::process::Command::new("node")
        .arg(&script)
        .arg(&file)
        .env("CUSTODIAN_NODE_MODULES", node_modules)
        .output()
        .expect("run node (scripts/test installs Chromium and playwright-core)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser found problems:\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the summary is not JSON ({e}): {text}"))
}

/// One page for the browser: its path, a screenshot name, and the texts it must show as text.
pub(crate) fn page(path: &str, name: &str) -> serde_json::Value {
    serde_json::json!({"path": path, "name": name})
}

/// What a hostile publisher, runner or scanner writes: markup, event attributes, script URLs,
/// SVG payloads, template syntax and Unicode that poses as other text. Every one of them calls
/// `alert`, so a dialog would show that it ran.
const XSS: [&str; 12] = [
    "<script>alert('custodian-xss')</script>",
    "<img src=x onerror=alert('custodian-xss')>",
    "\"><svg onload=alert('custodian-xss')>",
    "'><iframe srcdoc=\"<script>alert('custodian-xss')</script>\">",
    "<svg><script>alert('custodian-xss')</script></svg>",
    "<a href=\"javascript:alert('custodian-xss')\">click me</a>",
    "javascript:alert('custodian-xss')",
    "<meta http-equiv=\"refresh\" content=\"0;url=javascript:alert('custodian-xss')\">",
    "<style>body{display:none}</style>",
    "{{constructor.constructor('alert(\"custodian-xss\")')()}}",
    "\u{FF1C}script\u{FF1E}alert('custodian-xss')\u{FF1C}/script\u{FF1E}",
    "invoice\u{202E}gpj.exe java\u{200B}script:alert('custodian-xss')",
];

/// The same payloads, as the page must show them: the deceptive characters as code points.
fn shown(text: &str) -> String {
    text.replace('\u{202E}', "⟨U+202E⟩")
        .replace('\u{200B}', "⟨U+200B⟩")
}

fn yaml(text: &str) -> String {
    serde_json::to_string(text).expect("a JSON string is a YAML string")
}

#[test]
fn hostile_content_stays_text_in_a_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("data"));
    let (key, _) = generate_key(dir.path(), "publisher");
    let (runner, runner_public) = generate_key(dir.path(), "runner");

    // Every manifest field the pages show carries the corpus; so do file names.
    let package = dir.path().join("hostile");
    std::fs::create_dir_all(package.join("prompts")).expect("mkdir");
    // Model names and eval ids are checked at publication (letters, digits and a little
    // punctuation), so they cannot carry markup; everything free-form below does.
    let (model, eval) = ("m1", "e1");
    let manifest = format!(
        "name: hostile-demo\nversion: 1.0.0\ntype: prompt_spec\ndescription: {}\nbase_model: [{}]\n\
         evals:\n  - id: {}\n    description: {}\n    rubric: heuristic\n\
         license:\n  spdx: MIT\n  attribution: {}\nprompt:\n  system: prompts/system.md\n",
        yaml(&XSS.join(" | ")),
        model,
        eval,
        yaml(XSS[7]),
        yaml(XSS[3]),
    );
    std::fs::write(package.join("manifest.yaml"), &manifest).expect("manifest");
    std::fs::write(package.join("prompts/system.md"), "Be helpful.\n").expect("prompt");
    let file_names = [
        "prompts/<img src=x onerror=alert('custodian-xss')>.md",
        "prompts/\"><svg onload=alert('custodian-xss')>.md",
        "prompts/javascript:alert('custodian-xss').md",
        "prompts/invoice\u{202E}dm.exe",
    ];
    for name in file_names {
        std::fs::write(package.join(name), "nothing to see\n").expect("hostile file name");
    }
    stdout(&daemon.cli(&[
        "publish",
        package.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
    ]));

    // A run whose every free field carries the corpus.
    stdout(&daemon.cli(&[
        "attester",
        "register",
        runner_public.to_str().expect("utf-8"),
    ]));
    let mut metrics = serde_json::Map::new();
    metrics.insert(
        XSS[0].into(),
        serde_json::json!({"value": 0.97, "threshold": XSS[4]}),
    );
    let run = serde_json::json!({
        "package": "hostile-demo", "version": "1.0.0", "eval_id": eval, "model": model,
        "passed": true, "metrics": metrics,
        "reproducibility_context": {"note": XSS[5], "cases": [XSS[6], XSS[7]]},
        "started_at": "2026-11-30T10:00:00Z", "finished_at": "2026-11-30T10:01:00Z",
        "runner": {"id": XSS[3], "version": XSS[8]},
    });
    let runs = write_runs(dir.path(), "runs.json", &[run]);
    stdout(&daemon.cli(&["attest", &runs, "--key", runner.to_str().expect("utf-8")]));

    // A scanner's name and findings.
    let findings: Vec<serde_json::Value> = XSS
        .iter()
        .map(|x| serde_json::json!({"file": x, "line": 1, "rule": x, "severity": "high", "message": x}))
        .collect();
    let findings_file = dir.path().join("findings.json");
    std::fs::write(&findings_file, serde_json::to_vec(&findings).expect("json")).expect("write");
    stdout(&daemon.cli(&[
        "scan",
        "record",
        "hostile-demo@1.0.0",
        "--verdict",
        "flagged",
        "--scanner",
        XSS[9],
        "--findings",
        findings_file.to_str().expect("utf-8"),
    ]));

    // An external data pack whose URI carries markup, whose provenance URLs are script URLs,
    // and whose free fields carry the corpus.
    let spec = serde_json::json!({
        "mode": "external",
        "source_type": "s3",
        "uri": "s3://bucket/<script>alert('custodian-xss')</script>\"><img/src=x/onerror=alert('custodian-xss')>",
        "checksum": format!("sha256:{}", "ab".repeat(32)),
        "checksum_algorithm": "sha256",
        "access_policy": "signed_url",
        "license": "MIT",
        "version": XSS[10],
        "provenance": {
            "schema_uri": "data:text/html,<script>alert('custodian-xss')</script>",
            "citations": [XSS[5], XSS[6]],
            "eval_set_uri": "javascript:alert('custodian-xss')",
        },
    });
    let put = |credential: &str| {
        curl(&[
            "-X",
            "PUT",
            "-H",
            credential,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &spec.to_string(),
            &format!(
                "{}/wrappers/hostile-demo/versions/1.0.0/data-pack/manifest",
                daemon.rest
            ),
        ])
    };
    // The pages' cookie never authorizes a write: the admin's token as a cookie writes nothing.
    let (code, body) = put(&format!("Cookie: custodian_token={}", daemon.token));
    assert_eq!(
        code,
        401,
        "a cookie authorized a write: {}",
        String::from_utf8_lossy(&body)
    );
    let (code, body) = put(&crate::registry::bearer(&daemon.token));
    assert!(
        code == 201 || code == 200,
        "the data pack was refused: {code} {}",
        String::from_utf8_lossy(&body)
    );

    // The badge links to its version page.
    let (code, svg) = curl(&[&format!(
        "{}/wrappers/hostile-demo/versions/1.0.0/badge.svg",
        daemon.rest
    )]);
    assert_eq!(code, 200);
    assert!(
        String::from_utf8_lossy(&svg).contains("<a href=\"/packages/hostile-demo/1.0.0\">"),
        "{}",
        String::from_utf8_lossy(&svg)
    );

    let size = {
        let (code, body) = curl(&[&format!("{}/log/checkpoint", daemon.rest)]);
        assert_eq!(code, 200);
        String::from_utf8_lossy(&body)
            .lines()
            .nth(1)
            .and_then(|l| l.parse::<u64>().ok())
            .expect("a checkpoint size")
    };
    let version = "/packages/hostile-demo/1.0.0";
    let mut literal: Vec<String> = XSS.iter().map(|x| shown(x)).collect();
    literal.extend(file_names.iter().map(|f| shown(f)));
    let mut pages = vec![
        serde_json::json!({"path": version, "name": "hostile-version", "literal": literal}),
        page("/packages", "hostile-packages"),
        page("/packages/hostile-demo", "hostile-package"),
        page("/log", "hostile-log"),
        serde_json::json!({
            "path": format!("/packages?q={}", "%3Cscript%3Ealert('custodian-xss')%3C%2Fscript%3E"),
            "name": "hostile-search",
        }),
        serde_json::json!({
            "path": "/packages/%3Cscript%3Ealert('custodian-xss')%3C%2Fscript%3E",
            "name": "hostile-missing",
            "status": 404,
            "literal": ["<script>alert('custodian-xss')</script>"],
        }),
    ];
    for index in 0..size {
        pages.push(page(
            &format!("/log/entries/{index}"),
            &format!("hostile-entry-{index}"),
        ));
    }
    let out = screenshots("hostile");
    for (who, token) in [("admin", Some(daemon.token.as_str())), ("anonymous", None)] {
        let summary = browse(&serde_json::json!({
            "base": daemon.rest,
            "token": token,
            "out": out.join(who),
            "pages": pages,
            "versions": [{"name": "hostile-demo", "version": "1.0.0"}],
        }));
        assert_eq!(
            summary["visited"].as_array().map(Vec::len),
            Some(pages.len()),
            "{summary}"
        );
    }
    eprintln!("screenshots in {}", out.display());
}
