//! The REST hosted data-pack upload (`POST …/data-pack/hosted`) with arbitrary multipart bodies
//! and content types, through the daemon's routes in process on custodian-server's
//! `rest::fixture` (one published package; registry, ledger and custody in memory). Beyond "no
//! panic": no answer is a server error, since every way a body can be wrong is the client's and
//! must be answered 4xx with a reason. The unit tests in custodian-server's `rest/tests.rs` hold
//! the same routes on the same fixture to the same rule with named cases.

#![no_main]

#[path = "common/world.rs"]
mod world;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let world = world::world();
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    // Mostly the boundary the seeds use, sometimes a boundary taken from the body's first line,
    // a quoted one, or none at all.
    let content_type = match selector % 8 {
        0 => "multipart/form-data".to_string(),
        1 => "multipart/form-data; boundary=\"b o\"".to_string(),
        2 => {
            let line = body.split(|&b| b == b'\r').next().unwrap_or_default();
            let boundary = String::from_utf8_lossy(line.strip_prefix(b"--").unwrap_or(line));
            format!("multipart/form-data; boundary={boundary}")
        }
        3 => "application/json".to_string(),
        _ => "multipart/form-data; boundary=XyZ".to_string(),
    };
    let Ok(request) = http::Request::post(world.version_path("data-pack/hosted"))
        .header("content-type", content_type)
        .header("authorization", format!("Bearer {}", world.token))
        .body(axum::body::Body::from(body.to_vec()))
    else {
        return;
    };
    let response = world.send(request);
    assert!(
        !response.status().is_server_error(),
        "a request body got {}",
        response.status()
    );
});
