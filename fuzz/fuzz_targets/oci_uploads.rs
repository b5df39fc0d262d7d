//! The OCI distribution API's blob pushes, as a program of requests against a model: upload
//! sessions started, chunks appended with and without `Content-Range` and `Content-Length`,
//! bodies that break part-way, sessions completed with the right digest, a wrong one or none,
//! cancelled, asked for their progress; monolithic pushes; blobs read, checked for and unlinked;
//! mounts — each as an admin or as an anonymous caller, through the daemon's REST routes in
//! process on custodian-server's `rest::fixture` (custody in memory, the upload engine's sessions
//! on disk). Every execution pushes into a repository of its own, so the model starts empty.
//!
//! What is checked, beyond "no panic" and "no 5xx":
//! - every refusal is the spec's JSON error body with the code the model expects, and the status
//!   the spec gives that code;
//! - a session's committed length is what the model appended: a chunk is kept exactly when it
//!   starts where the committed bytes end (otherwise `416`, with the `Range` the client resumes
//!   from, and nothing kept), and a body that breaks part-way keeps what arrived (a `400`, from
//!   which the client resumes); every answer's `Range` says how far it is;
//! - a session completes exactly when its bytes hash to the digest named, and is gone either way;
//!   a blob is then readable in the repository exactly when a push of it succeeded there (and no
//!   delete since), with exactly the bytes pushed, and `HEAD` gives their length;
//! - an anonymous caller changes nothing.
//!
//! Input: a program, one operation after another; each starts with a byte choosing the operation
//! (from 128 up, as an anonymous caller), then the operation's own bytes. Chunk bodies are pieces
//! of literal bytes or runs of one byte up to 255 KiB long, so that a chunk crosses the memory
//! backend's 64 KiB blocks.

#![no_main]

#[path = "common/world.rs"]
mod world;

#[path = "common/program.rs"]
mod program;

use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use bytes::Bytes;
use custodian_core::{Algorithm, Digest};
use http::{Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use program::{Answer, Payload, Program, send};

/// A body of up to three pieces, each literal bytes or a run of one byte up to 255 KiB long.
fn read_payload(program: &mut Program) -> Payload {
    let shape = program.byte();
    let pieces = (0..shape % 4)
        .map(|_| {
            let kind = program.byte();
            if kind < 192 {
                Bytes::copy_from_slice(program.take(usize::from(kind % 64)))
            } else {
                let len = usize::from(program.byte()) * 1024 + usize::from(kind % 64);
                Bytes::from(vec![program.byte(); len])
            }
        })
        .collect();
    Payload {
        pieces,
        breaks: shape & 4 != 0,
    }
}

/// An upload session the model follows.
struct Session {
    id: String,
    /// The bytes it has committed.
    bytes: Vec<u8>,
    /// False once completed, cancelled or refused at its completion.
    live: bool,
}

/// What the model knows of one execution's repository.
struct Model {
    repo: String,
    sessions: Vec<Session>,
    /// Every blob content the program pushed or tried to, and whether it is linked in the
    /// repository now.
    blobs: Vec<(Vec<u8>, bool)>,
}

impl Model {
    fn note(&mut self, bytes: &[u8]) -> usize {
        match self.blobs.iter().position(|(b, _)| b == bytes) {
            Some(i) => i,
            None => {
                self.blobs.push((bytes.to_vec(), false));
                self.blobs.len() - 1
            }
        }
    }

    fn link(&mut self, bytes: &[u8]) {
        let i = self.note(bytes);
        self.blobs[i].1 = true;
    }
}

/// How the OCI API's answers are judged.
trait Judged {
    fn refused(&self, what: &str, code: &str);
    fn refused_at(&self, what: &str, status: u16, code: &str);
    fn progress(&self, what: &str, status: u16, model: &Model, id: &str, committed: usize);
    fn created(&self, what: &str, model: &Model, bytes: &[u8]);
}

impl Judged for Answer {
    /// Checks that this is a refusal with `code`, in the spec's JSON body, at the status the spec
    /// gives it.
    fn refused(&self, what: &str, code: &str) {
        let status = match code {
            "BLOB_UNKNOWN" | "BLOB_UPLOAD_UNKNOWN" => 404,
            "UNAUTHORIZED" => 401,
            _ => 400,
        };
        self.refused_at(what, status, code);
    }

    /// [`Answer::refused`] at a status the spec sets for the case rather than for the code.
    fn refused_at(&self, what: &str, status: u16, code: &str) {
        self.refusal(what, status, code, "/errors/0");
    }

    /// Checks that this answers an upload session `id` with `committed` bytes, at `status`.
    fn progress(&self, what: &str, status: u16, model: &Model, id: &str, committed: usize) {
        self.expect_status(what, status);
        assert_eq!(
            self.header("location"),
            Some(format!("/v2/{}/blobs/uploads/{id}", model.repo).as_str()),
            "{what}: the session's location"
        );
        assert_eq!(
            self.header("range"),
            Some(format!("0-{}", committed.saturating_sub(1)).as_str()),
            "{what}: the committed range"
        );
    }

    /// Checks that this says the blob of `bytes` was created in the repository.
    fn created(&self, what: &str, model: &Model, bytes: &[u8]) {
        let digest = sha256(bytes);
        self.expect_status(what, 201);
        assert_eq!(
            self.header("location"),
            Some(format!("/v2/{}/blobs/{digest}", model.repo).as_str()),
            "{what}: the blob's location"
        );
        assert_eq!(
            self.header("docker-content-digest"),
            Some(digest.to_string().as_str()),
            "{what}: the blob's digest"
        );
    }
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, bytes)
}

/// How a chunk declares its place: not at all, rightly, at a wrong start, or with a length that is
/// not its `Content-Length`.
enum Place {
    None,
    Right,
    WrongStart(u64),
    WrongLength,
}

impl Place {
    fn read(program: &mut Program) -> Self {
        let b = program.byte();
        match b % 4 {
            0 => Place::None,
            1 => Place::Right,
            2 => Place::WrongStart(u64::from(b / 4)),
            _ => Place::WrongLength,
        }
    }
}

/// `PATCH` (a chunk) or `PUT` (a chunk, then completion) of a session.
fn append(program: &mut Program, model: &mut Model, anonymous: bool, complete: bool) {
    let index = program.index(model.sessions.len());
    let place = Place::read(program);
    let send_length = program.byte() & 1 != 0;
    // For a completion: 0 the right digest, 1 a wrong one, 2 none, 3 one that is not a digest.
    let naming = program.byte() % 4;
    let payload = read_payload(program);
    let (id, committed) = match index {
        Some(i) => (
            model.sessions[i].id.clone(),
            model.sessions[i].bytes.clone(),
        ),
        None => ("00000000000000000000000000000000".to_string(), Vec::new()),
    };
    let live = index.is_some_and(|i| model.sessions[i].live);
    let chunk = payload.bytes();
    let start = committed.len() as u64;
    let len = chunk.len() as u64;
    let mut headers = Vec::new();
    let range = match place {
        Place::None => None,
        // A range names at least one byte.
        Place::Right => (len > 0).then(|| (start, start + len - 1)),
        Place::WrongStart(off) => {
            let first = start + 1 + off;
            Some((first, first + len.max(1) - 1))
        }
        Place::WrongLength => Some((start, start + len)),
    };
    if let Some((first, last)) = range {
        headers.push(("content-range", format!("{first}-{last}")));
    }
    if send_length {
        headers.push(("content-length", len.to_string()));
    }
    let mut whole = committed;
    whole.extend_from_slice(&chunk);
    let digest = match naming {
        0 => Some(sha256(&whole).to_string()),
        1 => Some(sha256(&[&whole[..], b"!"].concat()).to_string()),
        2 => None,
        _ => Some("sha256:not-hex".to_string()),
    };
    let mut path = format!("/v2/{}/blobs/uploads/{id}", model.repo);
    if complete && let Some(digest) = &digest {
        path.push_str(&format!("?digest={digest}"));
    }
    let what = if complete { "PUT" } else { "PATCH" };
    let method = if complete { Method::PUT } else { Method::PATCH };
    let answer = send(method, &path, &headers, payload.body(), anonymous);
    let what = format!("{what} {path} {headers:?}");

    // The checks come in the order the spec's handler makes them: the chunk's headers, the digest
    // named, the caller, the session, the chunk's place, its body; then the completion.
    if let (Some((first, last)), true) = (range, send_length)
        && last - first + 1 != len
    {
        return answer.refused(&what, "BLOB_UPLOAD_INVALID");
    }
    if complete && naming >= 2 {
        return answer.refused(&what, "DIGEST_INVALID");
    }
    if anonymous {
        return answer.refused(&what, "UNAUTHORIZED");
    }
    if !live {
        return answer.refused(&what, "BLOB_UPLOAD_UNKNOWN");
    }
    let i = index.expect("a live session is one the model follows");
    if range.is_some_and(|(first, _)| first != start) {
        assert_eq!(
            answer.header("range"),
            Some(format!("0-{}", start.saturating_sub(1)).as_str()),
            "{what}: the range to resume from"
        );
        // The spec: a chunk out of order is answered 416.
        return answer.refused_at(&what, 416, "BLOB_UPLOAD_INVALID");
    }
    // What arrived is kept, even from a body that broke.
    model.sessions[i].bytes = whole.clone();
    if payload.breaks {
        return answer.refused(&what, "BLOB_UPLOAD_INVALID");
    }
    if !complete {
        return answer.progress(&what, 202, model, &id, whole.len());
    }
    // A completion removes the session whatever its outcome.
    model.sessions[i].live = false;
    model.note(&whole);
    if naming == 0 {
        answer.created(&what, model, &whole);
        model.link(&whole);
    } else {
        answer.refused(&what, "DIGEST_INVALID");
    }
}

fn start(model: &mut Model, anonymous: bool) {
    let path = format!("/v2/{}/blobs/uploads/", model.repo);
    let answer = send(Method::POST, &path, &[], Body::empty(), anonymous);
    if anonymous {
        return answer.refused(&path, "UNAUTHORIZED");
    }
    follow(&answer, &path, model);
}

/// Checks that `answer` started an empty session, and follows it from now on.
fn follow(answer: &Answer, path: &str, model: &mut Model) {
    let id = answer
        .header("location")
        .and_then(|l| l.rsplit_once('/'))
        .map(|(_, id)| id.to_string())
        .unwrap_or_else(|| panic!("POST {path}: no session in {:?}", answer.headers));
    answer.progress(path, 202, model, &id, 0);
    model.sessions.push(Session {
        id,
        bytes: Vec::new(),
        live: true,
    });
}

/// `GET` of a session's progress (`status`), or `DELETE` of the session.
fn session_call(program: &mut Program, model: &mut Model, anonymous: bool, cancel: bool) {
    let index = program.index(model.sessions.len());
    let id = index.map_or_else(
        || "00000000000000000000000000000000".to_string(),
        |i| model.sessions[i].id.clone(),
    );
    let path = format!("/v2/{}/blobs/uploads/{id}", model.repo);
    let method = if cancel { Method::DELETE } else { Method::GET };
    let answer = send(method, &path, &[], Body::empty(), anonymous);
    if anonymous {
        return answer.refused(&path, "UNAUTHORIZED");
    }
    let Some(i) = index.filter(|&i| model.sessions[i].live) else {
        return answer.refused(&path, "BLOB_UPLOAD_UNKNOWN");
    };
    if cancel {
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "DELETE {path}");
        model.sessions[i].live = false;
    } else {
        let committed = model.sessions[i].bytes.len();
        answer.progress(&path, 204, model, &id, committed);
    }
}

/// `POST ?digest=`: a whole blob in one request.
fn monolithic(program: &mut Program, model: &mut Model, anonymous: bool) {
    // 0 the right digest, 1 a wrong one, 2 one that is not a digest.
    let naming = program.byte() % 3;
    // 0 no Content-Length, 1 the body's, 2 one byte more than it.
    let length = program.byte() % 3;
    let payload = read_payload(program);
    let bytes = payload.bytes();
    let digest = match naming {
        0 => sha256(&bytes).to_string(),
        1 => sha256(&[&bytes[..], b"!"].concat()).to_string(),
        _ => "sha256:NOT-HEX".to_string(),
    };
    let mut headers = Vec::new();
    if length > 0 {
        let declared = bytes.len() + usize::from(length) - 1;
        headers.push(("content-length", declared.to_string()));
    }
    let path = format!("/v2/{}/blobs/uploads/?digest={digest}", model.repo);
    let answer = send(Method::POST, &path, &headers, payload.body(), anonymous);
    let what = format!("POST {path} {headers:?}");
    if naming == 2 {
        return answer.refused(&what, "DIGEST_INVALID");
    }
    if anonymous {
        return answer.refused(&what, "UNAUTHORIZED");
    }
    model.note(&bytes);
    if payload.breaks {
        return answer.refused(&what, "BLOB_UPLOAD_INVALID");
    }
    match (naming, length) {
        (0, 0 | 1) => {
            answer.created(&what, model, &bytes);
            model.link(&bytes);
        }
        // Either check may come first when both fail.
        (1, 2) => {
            let code = if answer.body.windows(12).any(|w| w == b"SIZE_INVALID") {
                "SIZE_INVALID"
            } else {
                "DIGEST_INVALID"
            };
            answer.refused(&what, code);
        }
        (_, 2) => answer.refused(&what, "SIZE_INVALID"),
        _ => answer.refused(&what, "DIGEST_INVALID"),
    }
}

/// Checks what the repository answers for the blob of `bytes`, linked there or not.
fn check_read(model: &Model, bytes: &[u8], linked: bool, head: bool, anonymous: bool) {
    let digest = sha256(bytes);
    let path = format!("/v2/{}/blobs/{digest}", model.repo);
    let method = if head { Method::HEAD } else { Method::GET };
    let answer = send(method, &path, &[], Body::empty(), anonymous);
    if !linked {
        if head {
            // A HEAD answer has no body to carry the error.
            return assert_eq!(answer.status, StatusCode::NOT_FOUND, "HEAD {path}");
        }
        return answer.refused(&path, "BLOB_UNKNOWN");
    }
    assert_eq!(answer.status, StatusCode::OK, "{path}");
    assert_eq!(
        answer.header("docker-content-digest"),
        Some(digest.to_string().as_str()),
        "{path}: the digest"
    );
    assert_eq!(
        answer.header("content-length"),
        Some(bytes.len().to_string().as_str()),
        "{path}: the length"
    );
    if head {
        assert!(answer.body.is_empty(), "HEAD {path} answered a body");
    } else {
        assert!(
            answer.body == bytes,
            "GET {path}: other bytes than were pushed"
        );
    }
}

fn read_blob(program: &mut Program, model: &Model, anonymous: bool) {
    let head = program.byte() & 1 != 0;
    match program.index(model.blobs.len()) {
        Some(i) => check_read(model, &model.blobs[i].0, model.blobs[i].1, head, anonymous),
        None => check_read(model, b"never pushed", false, head, anonymous),
    }
}

fn delete_blob(program: &mut Program, model: &mut Model, anonymous: bool) {
    let (bytes, linked) = match program.index(model.blobs.len()) {
        Some(i) => model.blobs[i].clone(),
        None => (b"never pushed".to_vec(), false),
    };
    let path = format!("/v2/{}/blobs/{}", model.repo, sha256(&bytes));
    let answer = send(Method::DELETE, &path, &[], Body::empty(), anonymous);
    if anonymous {
        return answer.refused(&path, "UNAUTHORIZED");
    }
    if !linked {
        return answer.refused(&path, "BLOB_UNKNOWN");
    }
    assert_eq!(answer.status, StatusCode::ACCEPTED, "DELETE {path}");
    let i = model.note(&bytes);
    model.blobs[i].1 = false;
}

/// `POST ?mount=&from=` the repository itself: mounted if linked there, else a new session.
fn mount(program: &mut Program, model: &mut Model, anonymous: bool) {
    let (bytes, linked) = match program.index(model.blobs.len()) {
        Some(i) => model.blobs[i].clone(),
        None => (b"never pushed".to_vec(), false),
    };
    let path = format!(
        "/v2/{0}/blobs/uploads/?mount={1}&from={0}",
        model.repo,
        sha256(&bytes)
    );
    let answer = send(Method::POST, &path, &[], Body::empty(), anonymous);
    if anonymous {
        return answer.refused(&path, "UNAUTHORIZED");
    }
    if linked {
        return answer.created(&path, model, &bytes);
    }
    follow(&answer, &path, model);
}

fuzz_target!(|data: &[u8]| {
    static EXECUTION: AtomicU64 = AtomicU64::new(0);
    let mut model = Model {
        repo: format!("fuzz/uploads-{}", EXECUTION.fetch_add(1, Ordering::Relaxed)),
        sessions: Vec::new(),
        blobs: Vec::new(),
    };
    program::run(data, |program, op, anonymous| match op % 10 {
        0 | 1 if model.sessions.len() < 6 => start(&mut model, anonymous),
        0 | 1 => {}
        2 | 3 => append(program, &mut model, anonymous, false),
        4 => append(program, &mut model, anonymous, true),
        5 => session_call(program, &mut model, anonymous, false),
        6 => session_call(program, &mut model, anonymous, true),
        7 => monolithic(program, &mut model, anonymous),
        8 => match program.byte() % 3 {
            0 => delete_blob(program, &mut model, anonymous),
            1 => mount(program, &mut model, anonymous),
            _ => read_blob(program, &model, anonymous),
        },
        _ => read_blob(program, &model, anonymous),
    });
    // At the end: every session where the model left it, and every blob readable exactly when
    // the model says so; the sessions still open are cancelled, so that none stays on disk.
    for i in 0..model.sessions.len() {
        if model.sessions[i].live {
            let id = model.sessions[i].id.clone();
            let path = format!("/v2/{}/blobs/uploads/{id}", model.repo);
            let answer = send(Method::GET, &path, &[], Body::empty(), false);
            answer.progress(&path, 204, &model, &id, model.sessions[i].bytes.len());
            let answer = send(Method::DELETE, &path, &[], Body::empty(), false);
            assert_eq!(answer.status, StatusCode::NO_CONTENT, "DELETE {path}");
        }
    }
    for (bytes, linked) in &model.blobs {
        check_read(&model, bytes, *linked, false, false);
    }
});
