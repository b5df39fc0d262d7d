//! docs/openapi.yaml against the running REST API: every documented operation is served (never
//! the "no such endpoint" fallback), and driven with valid and invalid inputs every answer's
//! status is one the document lists for that operation, with a JSON error body whose code the
//! document's `Error` schema names.

use crate::registry::{bearer, curl, examples, publish_example};
use custodian_testkit::Daemon;

fn document() -> serde_json::Value {
    let text = std::fs::read_to_string(examples().join("../docs/openapi.yaml")).expect("openapi");
    serde_norway::from_str(&text).expect("docs/openapi.yaml parses")
}

/// Every operation of the document: (method, path template).
fn operations(doc: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "put", "post", "delete", "head", "patch", "options"] {
            if item.get(method).is_some() {
                out.push((method.to_string(), path.clone()));
            }
        }
    }
    out
}

/// The routes the REST router serves (crates/custodian-server/src/rest/mod.rs), which the document
/// must describe, no more and no fewer.
const ROUTER: [(&str, &str); 22] = [
    ("get", "/healthz"),
    ("get", "/openapi.yaml"),
    ("get", "/wrappers/{id}/versions"),
    ("get", "/wrappers/{id}/versions/{vid}"),
    ("get", "/wrappers/{id}/versions/{vid}/data-pack"),
    ("put", "/wrappers/{id}/versions/{vid}/data-pack/manifest"),
    ("post", "/wrappers/{id}/versions/{vid}/data-pack/hosted"),
    ("options", "/wrappers/{id}/versions/{vid}/data-pack/uploads"),
    ("post", "/wrappers/{id}/versions/{vid}/data-pack/uploads"),
    (
        "head",
        "/wrappers/{id}/versions/{vid}/data-pack/uploads/{uid}",
    ),
    (
        "patch",
        "/wrappers/{id}/versions/{vid}/data-pack/uploads/{uid}",
    ),
    (
        "delete",
        "/wrappers/{id}/versions/{vid}/data-pack/uploads/{uid}",
    ),
    ("get", "/wrappers/{id}/versions/{vid}/data-pack/download"),
    ("get", "/wrappers/{id}/versions/{vid}/badge"),
    ("get", "/wrappers/{id}/versions/{vid}/badge.svg"),
    ("get", "/wrappers/{id}/versions/{vid}/evidence"),
    ("get", "/wrappers/{id}/versions/{vid}/report"),
    ("get", "/blobs/{digest}"),
    ("get", "/log/checkpoint"),
    ("get", "/log/entries/{index}/receipt"),
    ("get", "/log/tile/{tile}"),
    ("get", "/oci/history"),
];

#[test]
fn the_document_describes_exactly_the_router() {
    let doc = document();
    let mut documented = operations(&doc);
    documented.sort();
    let mut served: Vec<(String, String)> = ROUTER
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(
        documented, served,
        "docs/openapi.yaml and the router differ"
    );
}

#[test]
fn every_operation_answers_only_documented_statuses() {
    let doc = document();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("data"));
    publish_example(&daemon, dir.path(), "pacman-builder", "acme");
    let codes: Vec<String> =
        doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
            .as_array()
            .expect("error codes")
            .iter()
            .map(|c| c.as_str().expect("code").to_string())
            .collect();
    let seed_pack = examples().join("seeds/data-pack.yaml");
    let data = dir.path().join("data.csv");
    std::fs::write(&data, "a,b\n1,2\n").expect("write");
    let digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    // Valid and invalid values for each path parameter.
    let fill = |path: &str, id: &str, vid: &str, digest: &str, tile: &str| {
        path.replace("{id}", id)
            .replace("{vid}", vid)
            .replace("{digest}", digest)
            .replace("{tile}", tile)
            .replace("{uid}", "0123456789abcdef0123456789abcdef")
    };
    let token = bearer(&daemon.token);
    let mut checked = 0;
    for (method, path) in operations(&doc) {
        let documented: Vec<u16> = doc["paths"][&path][&method]["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .filter_map(|k| k.parse().ok())
            .collect();
        for (case, (id, vid, blob, tile)) in [
            ("pacman-builder", "0.2.1", digest, "0/000.p/1"),
            ("pacman-builder", "9.9.9", digest, "3/x001/000"),
            ("no-such-package", "0.2.1", "blake3:00", "0/x000/001"),
            ("Not%20A%20Name", "not-semver", "md5:abc", "64/000.p/256"),
        ]
        .into_iter()
        .enumerate()
        {
            // An entry in the log, one past it, and two that are not indexes.
            let index = ["0", "999999", "-1", "first"][case];
            let mut url = format!(
                "{}{}",
                daemon.rest,
                fill(&path, id, vid, blob, tile).replace("{index}", index)
            );
            // The one operation with query parameters: valid ones first, then invalid ones.
            if path == "/oci/history" {
                url.push_str(
                    [
                        "?name=pacman-builder&tag=0.2.1",
                        "?name=acme/absent&tag=v1",
                        "?name=Not%20A%20Name&tag=v1",
                        "",
                    ][case],
                );
            }
            // curl's -X HEAD would wait for a body that never comes; -I sends a HEAD.
            let verb = |m: &str| -> Vec<String> {
                if m == "head" {
                    vec!["-I".into()]
                } else {
                    vec!["-X".into(), m.to_uppercase()]
                }
            };
            let mut args: Vec<String> = verb(&method);
            for with_token in [false, true] {
                let mut call = args.clone();
                if with_token {
                    call.extend(["-H".into(), token.clone()]);
                }
                if method == "put" {
                    call.extend([
                        "-H".into(),
                        "Content-Type: application/yaml".into(),
                        "--data-binary".into(),
                        format!("@{}", seed_pack.display()),
                    ]);
                }
                if method == "post" {
                    call.extend([
                        "-F".into(),
                        r#"metadata={"license":"MIT"};type=application/json"#.into(),
                        "-F".into(),
                        format!("file=@{}", data.display()),
                    ]);
                }
                call.push(url.clone());
                let refs: Vec<&str> = call.iter().map(String::as_str).collect();
                let (status, body) = curl(&refs);
                // Values the document's patterns accept are never refused as malformed.
                assert!(
                    case > 1 || status != 400,
                    "{method} {url}: schema-valid parameters answered 400: {}",
                    String::from_utf8_lossy(&body)
                );
                assert!(
                    documented.contains(&status),
                    "{method} {url}: {status} is not among the documented {documented:?}: {}",
                    String::from_utf8_lossy(&body)
                );
                // A HEAD answer has no body to carry a JSON error.
                if status >= 400 && method != "head" {
                    let error: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or_else(|_| {
                            panic!(
                                "{method} {url}: a {status} without a JSON error body: {}",
                                String::from_utf8_lossy(&body)
                            )
                        });
                    let code = error["error"]["code"].as_str().unwrap_or("");
                    assert!(
                        codes.iter().any(|c| c == code),
                        "{method} {url}: error code {code:?} is not in the document"
                    );
                    assert_ne!(
                        error["error"]["message"], "no such endpoint; see /openapi.yaml",
                        "{method} {path} is documented but not served"
                    );
                }
                checked += 1;
            }
            args.clear();
            args.extend(verb(&method));
        }
    }
    assert!(checked >= 80, "only {checked} calls were checked");
}

/// What axum's extractors refuse before a handler runs is answered as the API's JSON error too.
#[test]
fn refusals_before_any_handler_are_json_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("data"));
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, vec![b'#'; 3 << 20]).expect("write");
    let token = bearer(&daemon.token);
    let base = &daemon.rest;
    let cases: [(Vec<String>, u16, &str); 3] = [
        (
            vec![format!("{base}/wrappers/%FF%FE/versions")],
            400,
            "invalid_argument",
        ),
        (
            vec![
                "-X".into(),
                "PUT".into(),
                "-H".into(),
                token.clone(),
                "--data-binary".into(),
                format!("@{}", big.display()),
                format!("{base}/wrappers/pacman-builder/versions/0.2.1/data-pack/manifest"),
            ],
            413,
            "payload_too_large",
        ),
        (
            vec![format!(
                "{base}/wrappers/pacman-builder/versions/0.2.1/data-pack/hosted"
            )],
            405,
            "method_not_allowed",
        ),
    ];
    for (args, status, code) in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (got, body) = curl(&refs);
        assert_eq!(got, status, "{args:?}: {}", String::from_utf8_lossy(&body));
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
            panic!(
                "{args:?}: not a JSON error: {}",
                String::from_utf8_lossy(&body)
            )
        });
        assert_eq!(error["error"]["code"], code, "{error}");
    }
}
