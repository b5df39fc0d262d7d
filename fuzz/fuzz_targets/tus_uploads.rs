//! Hosted data-pack uploads over tus 1.0, as a program of requests against a model: sessions
//! created with and without a declared digest, `PATCH`es at the right or a wrong offset, with
//! and without `Upload-Checksum` (right or wrong), with and without the completing `PATCH`'s
//! declared digest, whose bodies end, break part-way or run past `Upload-Length`; `HEAD`,
//! termination and the data pack's download — each as an admin or as an anonymous caller,
//! through the daemon's REST routes in process on custodian-server's `rest::fixture`. Every
//! execution publishes a version of its own (a data pack is registered once per version), so the
//! model starts empty.
//!
//! What is checked, beyond "no panic" and "no 5xx":
//! - every refusal is the REST API's JSON error with the status and code the model expects;
//! - a session's offset is what the model appended: a `PATCH` is kept exactly when it starts at
//!   the offset; with a checksum it is kept whole or not at all (`460` when it does not match,
//!   `400` when its body breaks); without one, a body that breaks keeps what arrived, and one
//!   that runs past `Upload-Length` keeps at most a prefix of what fits (the model learns how
//!   much from `HEAD`, and checks that it is a prefix);
//! - the `PATCH` that completes an upload registers the data pack exactly when its bytes match
//!   every digest declared (at creation and on that `PATCH`) and the version has no other data
//!   pack, answers both digests of exactly those bytes, and removes the session whatever the
//!   outcome; the version's data pack then downloads as exactly those bytes, and never before;
//! - an anonymous caller changes nothing.
//!
//! Input: a program, as in `oci_uploads`: one byte choosing the operation (from 128 up, as an
//! anonymous caller), then the operation's own bytes.

#![no_main]

#[path = "common/world.rs"]
mod world;

#[path = "common/program.rs"]
mod program;

use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use base64::Engine as _;
use bytes::Bytes;
use custodian_core::{Algorithm, Digest};
use custodian_server::rest::fixture;
use http::{Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use program::{Answer, Payload, Program};

/// An upload session the model follows.
struct Session {
    uid: String,
    length: u64,
    /// The sha256 its creation declared, if any.
    declared: Option<Digest>,
    /// The bytes it has committed.
    bytes: Vec<u8>,
    /// False once completed (whatever the outcome) or terminated.
    live: bool,
}

/// What the model knows of one execution's version.
struct Model {
    version: String,
    sessions: Vec<Session>,
    /// The data pack registered for the version, if one is.
    registered: Option<Vec<u8>>,
}

impl Model {
    fn path(&self, tail: &str) -> String {
        format!(
            "/wrappers/{}/versions/{}/{tail}",
            fixture::NAME,
            self.version
        )
    }
}

/// How tus answers are judged.
trait Judged {
    fn refused(&self, what: &str, status: u16, code: &str);
    fn offset(&self, what: &str, status: u16, offset: usize, length: u64);
}

impl Judged for Answer {
    /// Checks that this is a refusal at `status` with `code`, in the REST API's JSON error body.
    fn refused(&self, what: &str, status: u16, code: &str) {
        self.refusal(what, status, code, "/error");
        assert_eq!(
            self.header("tus-resumable"),
            Some("1.0.0"),
            "{what}: every tus answer says its version"
        );
    }

    /// Checks that this is a success at `status` reporting `offset` of `length`.
    fn offset(&self, what: &str, status: u16, offset: usize, length: u64) {
        self.expect_status(what, status);
        assert_eq!(
            self.header("upload-offset"),
            Some(offset.to_string().as_str()),
            "{what}: the offset"
        );
        assert_eq!(
            self.header("upload-length"),
            Some(length.to_string().as_str()),
            "{what}: the length"
        );
        assert_eq!(self.header("tus-resumable"), Some("1.0.0"), "{what}");
    }
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, bytes)
}

/// Sends a tus request (`Tus-Resumable` added), as an admin unless `anonymous`.
fn send(
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Body,
    anonymous: bool,
) -> Answer {
    let mut headers = headers.to_vec();
    headers.push(("tus-resumable", "1.0.0".to_string()));
    program::send(method, path, &headers, body, anonymous)
}

fn uid_of(model: &Model, index: Option<usize>) -> String {
    index.map_or_else(
        || "00000000000000000000000000000000".to_string(),
        |i| model.sessions[i].uid.clone(),
    )
}

fn create(program: &mut Program, model: &mut Model, anonymous: bool) {
    let b = program.byte();
    // Short lengths mostly, and now and then one that spans the memory backend's 64 KiB blocks.
    let length = if b < 192 {
        u64::from(b % 64)
    } else {
        u64::from(program.byte()) * 1024 + u64::from(b % 64)
    };
    // 0 nothing declared, 1 a sha256 no upload will match, 2 the registered data pack's sha256.
    let naming = program.byte() % 3;
    let declared = match naming {
        1 => Some(sha256(b"no data pack is this")),
        2 => model.registered.as_deref().map(sha256),
        _ => None,
    };
    let mut metadata = serde_json::json!({"license": "CC0-1.0"});
    if let Some(digest) = &declared {
        metadata["sha256"] = serde_json::json!(digest.to_string());
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(metadata.to_string());
    let headers = [
        ("upload-length", length.to_string()),
        ("upload-metadata", format!("metadata {encoded}")),
    ];
    let path = model.path("data-pack/uploads");
    let answer = send(Method::POST, &path, &headers, Body::empty(), anonymous);
    let what = format!("POST {path} {metadata}");
    if anonymous {
        return answer.refused(&what, 401, "unauthenticated");
    }
    // A second data pack for a version is refused before a byte is sent, unless it declares
    // the one registered (a retry).
    if let Some(registered) = &model.registered
        && declared != Some(sha256(registered))
    {
        return answer.refused(&what, 409, "already_exists");
    }
    answer.expect_status(&what, 201);
    let location = answer
        .header("location")
        .expect("a created session's location");
    let (prefix, uid) = location
        .rsplit_once('/')
        .expect("a location with a session");
    assert_eq!(prefix, path, "{what}: the session's location");
    model.sessions.push(Session {
        uid: uid.to_string(),
        length,
        declared,
        bytes: Vec::new(),
        live: true,
    });
}

/// The body of a `PATCH`: literal pieces, or exactly the bytes that complete the upload, or
/// one more; a large piece is sent in two, so that a body is more than one frame.
fn read_payload(program: &mut Program, remaining: usize) -> Payload {
    let shape = program.byte();
    let fill = program.byte();
    let pieces: Vec<Bytes> = match shape % 4 {
        0 | 1 => (0..shape / 4 % 4)
            .map(|_| {
                let n = usize::from(program.byte() % 64);
                Bytes::copy_from_slice(program.take(n))
            })
            .collect(),
        2 => vec![Bytes::from(vec![fill; remaining])],
        _ => vec![Bytes::from(vec![fill; remaining + 1])],
    };
    let pieces = pieces
        .into_iter()
        .flat_map(|p| {
            let half = p.len() / 2;
            [p.slice(..half), p.slice(half..)]
        })
        .filter(|p| !p.is_empty())
        .collect();
    Payload {
        pieces,
        breaks: shape & 64 != 0,
    }
}

fn patch(program: &mut Program, model: &mut Model, anonymous: bool) {
    let index = program.index(model.sessions.len());
    let modes = program.byte();
    let uid = uid_of(model, index);
    let (committed, length) = match index {
        Some(i) => (model.sessions[i].bytes.clone(), model.sessions[i].length),
        None => (Vec::new(), 0),
    };
    let live = index.is_some_and(|i| model.sessions[i].live);
    let remaining = (length as usize).saturating_sub(committed.len());
    let payload = read_payload(program, remaining);
    let piece = payload.bytes();
    let start = committed.len();
    let right_offset = modes & 1 == 0;
    let offset = if right_offset { start } else { start + 1 };
    // 0 no checksum, 1 the piece's sha256, 2 a wrong sha256, 3 the piece's sha1 (not checked
    // here, beyond being accepted).
    let checksum = (modes >> 1) % 4;
    // 0 no digest declared on the PATCH, 1 the upload's sha256, 2 a wrong blake3.
    let naming = (modes >> 3) % 3;
    let send_length = modes & 32 == 0;
    let mut whole = committed;
    whole.extend_from_slice(&piece);

    let b64 = base64::engine::general_purpose::STANDARD;
    let mut headers = vec![
        (
            "content-type",
            "application/offset+octet-stream".to_string(),
        ),
        ("upload-offset", offset.to_string()),
    ];
    if send_length {
        headers.push(("content-length", piece.len().to_string()));
    }
    match checksum {
        1 => headers.push((
            "upload-checksum",
            format!("sha256 {}", b64.encode(sha256(&piece).bytes())),
        )),
        2 => headers.push((
            "upload-checksum",
            format!("sha256 {}", b64.encode([0u8; 32])),
        )),
        3 => {
            use sha1::Digest as _;
            let sha1 = sha1::Sha1::digest(&piece);
            headers.push(("upload-checksum", format!("sha1 {}", b64.encode(sha1))));
        }
        _ => {}
    }
    let declared_here = match naming {
        1 => {
            let d = sha256(&whole);
            headers.push(("custodian-data-pack-sha256", d.to_string()));
            Some(d)
        }
        2 => {
            let d = Digest::of(Algorithm::Blake3, b"not this data pack");
            headers.push(("custodian-data-pack-blake3", d.to_string()));
            Some(d)
        }
        _ => None,
    };
    let path = model.path(&format!("data-pack/uploads/{uid}"));
    let answer = send(Method::PATCH, &path, &headers, payload.body(), anonymous);
    let what = format!(
        "PATCH {path} {headers:?}, {} bytes{}",
        piece.len(),
        if payload.breaks { ", then broken" } else { "" }
    );

    // In the order the handler checks: the declared digest (which asks for the session, and
    // needs a PATCH that completes it), then the session, the offset, the body.
    let owned = live && !anonymous;
    if declared_here.is_some() {
        if !owned {
            return answer.refused(&what, 404, "not_found");
        }
        let completes = send_length && offset + piece.len() == length as usize;
        if !completes {
            return answer.refused(&what, 400, "invalid_argument");
        }
    }
    if !owned {
        return answer.refused(&what, 404, "not_found");
    }
    let i = index.expect("a live session is one the model follows");
    if !right_offset {
        return answer.refused(&what, 409, "offset_mismatch");
    }
    let too_long = whole.len() as u64 > length;
    if checksum != 0 {
        // All or nothing.
        if too_long {
            return answer.refused(&what, 413, "payload_too_large");
        }
        if payload.breaks {
            return answer.refused(&what, 400, "body_incomplete");
        }
        if checksum == 2 {
            return answer.refused(&what, 460, "checksum_mismatch");
        }
    } else if too_long {
        // What came before the batch that ran past the length may be kept: ask how much, and
        // check that it is no more than fits.
        answer.refused(&what, 413, "payload_too_large");
        let head = send(Method::HEAD, &path, &[], Body::empty(), false);
        let kept: usize = head
            .header("upload-offset")
            .and_then(|o| o.parse().ok())
            .unwrap_or_else(|| panic!("HEAD {path} after {what}: no offset"));
        assert!(
            (start..=length as usize).contains(&kept),
            "{what}: {kept} bytes kept of {length}, from {start}"
        );
        model.sessions[i].bytes = whole[..kept].to_vec();
        return;
    } else if payload.breaks {
        model.sessions[i].bytes = whole;
        return answer.refused(&what, 400, "body_incomplete");
    }
    model.sessions[i].bytes = whole.clone();
    if (whole.len() as u64) < length {
        return answer.offset(&what, 204, whole.len(), length);
    }
    // The PATCH completes the upload: the session ends whatever the outcome.
    model.sessions[i].live = false;
    let digest = sha256(&whole);
    let matches = |d: &Option<Digest>| d.is_none_or(|d| Digest::of(d.algorithm(), &whole) == d);
    if !matches(&model.sessions[i].declared) || !matches(&declared_here) {
        return answer.refused(&what, 422, "digest_mismatch");
    }
    if let Some(registered) = &model.registered
        && *registered != whole
    {
        return answer.refused(&what, 409, "already_exists");
    }
    answer.offset(&what, 204, whole.len(), length);
    assert_eq!(
        answer.header("custodian-data-pack-sha256"),
        Some(digest.to_string().as_str()),
        "{what}: the stored sha256"
    );
    assert_eq!(
        answer.header("custodian-data-pack-blake3"),
        Some(Digest::of(Algorithm::Blake3, &whole).to_string().as_str()),
        "{what}: the stored blake3"
    );
    assert!(
        answer.header("custodian-ledger-index").is_some(),
        "{what}: no ledger index for the registration"
    );
    model.registered = Some(whole);
}

/// `HEAD` of a session (`terminate` false), or its termination.
fn session_call(program: &mut Program, model: &mut Model, anonymous: bool, terminate: bool) {
    let index = program.index(model.sessions.len());
    let path = model.path(&format!("data-pack/uploads/{}", uid_of(model, index)));
    let method = if terminate {
        Method::DELETE
    } else {
        Method::HEAD
    };
    let answer = send(method, &path, &[], Body::empty(), anonymous);
    let Some(i) = index.filter(|&i| model.sessions[i].live && !anonymous) else {
        return assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
    };
    if terminate {
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "DELETE {path}");
        model.sessions[i].live = false;
    } else {
        let s = &model.sessions[i];
        answer.offset(&format!("HEAD {path}"), 200, s.bytes.len(), s.length);
    }
}

fuzz_target!(|data: &[u8]| {
    static EXECUTION: AtomicU64 = AtomicU64::new(0);
    let mut model = Model {
        version: format!("0.0.{}", EXECUTION.fetch_add(1, Ordering::Relaxed)),
        sessions: Vec::new(),
        registered: None,
    };
    world::world().publish(&model.version);
    program::run(data, |program, op, anonymous| match op % 8 {
        0 | 1 if model.sessions.len() < 6 => create(program, &mut model, anonymous),
        0 | 1 => {}
        2..=4 => patch(program, &mut model, anonymous),
        5 => session_call(program, &mut model, anonymous, false),
        6 => session_call(program, &mut model, anonymous, true),
        _ => program::check_download(
            &model.version,
            model.registered.as_deref(),
            anonymous,
            "tus",
        ),
    });
    // At the end: every open session where the model left it (then terminated, so that none
    // stays on disk), and the data pack as the model says.
    for i in 0..model.sessions.len() {
        let s = &model.sessions[i];
        if s.live {
            let path = model.path(&format!("data-pack/uploads/{}", s.uid));
            let answer = send(Method::HEAD, &path, &[], Body::empty(), false);
            answer.offset(&format!("HEAD {path}"), 200, s.bytes.len(), s.length);
            let answer = send(Method::DELETE, &path, &[], Body::empty(), false);
            assert_eq!(answer.status, StatusCode::NO_CONTENT, "DELETE {path}");
        }
    }
    program::check_download(
        &model.version,
        model.registered.as_deref(),
        false,
        "tus, at the end",
    );
});
