//! Requests to the REST API's other routes with arbitrary header values, path pieces and bodies,
//! through the daemon's routes in process on custodian-server's `rest::fixture`: `Range` on blob
//! and data-pack downloads, the tus headers (`Upload-Length`, `Upload-Metadata`,
//! `Upload-Offset`, `Upload-Checksum`) on creation, `PATCH` and `HEAD`, tile paths, receipts,
//! version paths, the OCI API's paths with `Content-Range`, and external data-pack registrations.
//! Beyond "no panic": no answer is a server error, since custody and the ledger are in memory and
//! cannot fail, so every refusal is of the client's request and must be a 4xx.
//!
//! Input: one byte choosing the request's shape, then up to three fields and the body, separated
//! by newlines.

#![no_main]

#[path = "common/world.rs"]
mod world;

use std::sync::OnceLock;

use axum::body::Body;
use custodian_core::{Algorithm, Digest};
use custodian_server::rest::fixture;
use http::{Method, Request};
use libfuzzer_sys::fuzz_target;

/// The path of one tus session opened when the process starts (16 bytes expected), which the
/// `PATCH` and `HEAD` shapes address.
fn session() -> &'static str {
    static SESSION: OnceLock<String> = OnceLock::new();
    SESSION.get_or_init(|| {
        let world = world::world();
        let request = Request::post(world.version_path("data-pack/uploads"))
            .header("tus-resumable", "1.0.0")
            .header("upload-length", "16")
            // {"license":"CC0-1.0"}
            .header("upload-metadata", "metadata eyJsaWNlbnNlIjoiQ0MwLTEuMCJ9")
            .header("authorization", format!("Bearer {}", world.token))
            .body(Body::empty())
            .expect("request");
        let response = world.send(request);
        assert_eq!(
            response.status(),
            http::StatusCode::CREATED,
            "the tus session"
        );
        response.headers()["location"]
            .to_str()
            .expect("location")
            .to_string()
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let world = world::world();
    let session = session();
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut fields = rest.splitn(4, |&b| b == b'\n');
    let f1 = fields.next().unwrap_or_default();
    let f2 = fields.next().unwrap_or_default();
    let f3 = fields.next().unwrap_or_default();
    let body = fields.next().unwrap_or_default();
    let manifest = Digest::of(Algorithm::Sha256, fixture::MANIFEST.as_bytes());
    // (method, path, headers whose values are fuzzed)
    let (method, path, headers): (Method, String, Vec<(&str, &[u8])>) = match selector % 10 {
        0 => (
            Method::GET,
            format!("/blobs/{manifest}"),
            vec![("range", f1)],
        ),
        1 => (
            Method::GET,
            world.version_path("data-pack/download"),
            vec![("range", f1)],
        ),
        2 => (
            Method::POST,
            world.version_path("data-pack/uploads"),
            vec![
                ("tus-resumable", b"1.0.0"),
                ("upload-length", f1),
                ("upload-metadata", f2),
                ("upload-checksum", f3),
            ],
        ),
        3 => (
            Method::PATCH,
            session.to_string(),
            vec![
                ("tus-resumable", b"1.0.0"),
                ("content-type", b"application/offset+octet-stream"),
                ("upload-offset", f1),
                ("upload-checksum", f2),
                ("content-length", f3),
            ],
        ),
        4 => (
            Method::HEAD,
            format!("{}/{}", world.version_path("data-pack/uploads"), text(f1)),
            vec![("tus-resumable", f2)],
        ),
        5 => (Method::GET, format!("/log/tile/{}", text(f1)), vec![]),
        6 => (
            Method::GET,
            format!("/log/entries/{}/receipt", text(f1)),
            vec![("accept", f2)],
        ),
        7 => (
            Method::GET,
            format!("/wrappers/{}/versions/{}{}", text(f1), text(f2), text(f3)),
            vec![],
        ),
        8 => {
            let method = match f2.first().copied().unwrap_or_default() % 5 {
                0 => Method::GET,
                1 => Method::HEAD,
                2 => Method::POST,
                3 => Method::PUT,
                _ => Method::PATCH,
            };
            (
                method,
                format!("/v2/{}", text(f1)),
                vec![
                    ("content-range", f3),
                    ("content-type", b"application/octet-stream"),
                ],
            )
        }
        _ => (
            Method::PUT,
            world.version_path("data-pack/manifest"),
            vec![("content-type", b"application/json")],
        ),
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {}", world.token));
    for (name, value) in headers {
        // A value that is not a valid header value never reaches a server.
        if !value.is_empty()
            && let Ok(value) = http::HeaderValue::from_bytes(value)
        {
            builder = builder.header(name, value);
        }
    }
    // A path that is not a valid URI never reaches a server either.
    let Ok(request) = builder.body(Body::from(body.to_vec())) else {
        return;
    };
    let response = world.send(request);
    assert!(
        !response.status().is_server_error(),
        "shape {} got {}",
        selector % 10,
        response.status()
    );
});
