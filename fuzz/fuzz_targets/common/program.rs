//! What the targets that run programs against a model share (`oci_uploads`, `tus_uploads`,
//! `local_puts`, `retention`): the program's bytes, a request body that may break part-way, one
//! REST request sent through the fixture's routes and read whole, and a data pack's download.

// Each target uses part of this module.
#![allow(dead_code)]

use axum::body::Body;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;

use crate::world;

/// The most operations one input runs, so that one execution stays short.
pub const MAX_OPERATIONS: usize = 16;

/// Runs the program in `data`: at most [`MAX_OPERATIONS`] operations, each a byte choosing it
/// (from 128 up, as an anonymous caller), then the operation's own bytes, which `step` reads.
/// `step` is given the choice without the caller's bit, and whether the caller is anonymous.
pub fn run(data: &[u8], mut step: impl FnMut(&mut Program, u8, bool)) {
    let mut program = Program(data);
    for _ in 0..MAX_OPERATIONS {
        if program.is_empty() {
            break;
        }
        let op = program.byte();
        step(&mut program, op % 128, op >= 128);
    }
}

/// The bytes of the program not read yet; reading past the end gives zeros.
pub struct Program<'a>(pub &'a [u8]);

impl Program<'_> {
    /// The next byte, or zero past the end.
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// The next `n` bytes, or as many as are left.
    pub fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An index into `len` things, or `None` (for one that never existed) when there are none or
    /// the byte read is 255.
    pub fn index(&mut self, len: usize) -> Option<usize> {
        let b = self.byte();
        (len > 0 && b != 255).then(|| usize::from(b) % len)
    }
}

/// A request body: its pieces, each sent as one frame of the stream, and whether the stream then
/// breaks (as when the client goes away) instead of ending.
pub struct Payload {
    /// The pieces, in order.
    pub pieces: Vec<Bytes>,
    /// True if the stream fails after the pieces.
    pub breaks: bool,
}

impl Payload {
    /// The bytes the daemon receives before the stream ends or breaks.
    pub fn bytes(&self) -> Vec<u8> {
        self.pieces.concat()
    }

    /// The body that sends them.
    pub fn body(&self) -> Body {
        let mut items: Vec<Result<Bytes, std::io::Error>> =
            self.pieces.iter().cloned().map(Ok).collect();
        if self.breaks {
            items.push(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the client went away",
            )));
        }
        Body::from_stream(futures::stream::iter(items))
    }
}

/// An answer, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// A header's value, if it is there and is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Checks that this answers with `status`, showing the body if it does not.
    pub fn expect_status(&self, what: &str, status: u16) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{what}: {:?}",
            String::from_utf8_lossy(&self.body)
        );
    }

    /// Checks that this is a refusal at `status` whose JSON body holds, at the JSON pointer
    /// `at`, an error object with `code` and a message; panics, naming `what`, if it is not.
    pub fn refusal(&self, what: &str, status: u16, code: &str, at: &str) {
        let body: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{what}: a {} whose body is not JSON ({e}): {:?}",
                self.status, self.body
            )
        });
        let error = body.pointer(at).cloned().unwrap_or_default();
        assert_eq!(
            (self.status.as_u16(), error["code"].as_str()),
            (status, Some(code)),
            "{what}: the refusal {body}"
        );
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: a refusal without a message"
        );
    }
}

/// Sends a request through the fixture's REST routes, as an admin unless `anonymous`, and reads
/// the whole answer. Panics on a 5xx: custody and the ledger are in memory and cannot fail, so
/// every refusal must be of the request.
pub fn send(
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Body,
    anonymous: bool,
) -> Answer {
    send_to(world::world(), method, path, headers, body, anonymous)
}

/// [`send`], through `world`'s routes.
pub fn send_to(
    world: &world::World,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Body,
    anonymous: bool,
) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if !anonymous {
        request = request.header("authorization", format!("Bearer {}", world.token));
    }
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = world.send(request.body(body).expect("request"));
    let (parts, body) = response.into_parts();
    let body = world
        .block_on(body.collect())
        .expect("the answer's body")
        .to_bytes();
    assert!(
        !parts.status.is_server_error(),
        "{path}: {} {:?}",
        parts.status,
        String::from_utf8_lossy(&body)
    );
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Checks, naming `what`, that the hosted data pack of the fixture's package at `version`
/// downloads (as an admin unless `anonymous`) as exactly `registered`, and is not found when
/// nothing is registered.
pub fn check_download(version: &str, registered: Option<&[u8]>, anonymous: bool, what: &str) {
    let path = format!(
        "/wrappers/{}/versions/{version}/data-pack/download",
        custodian_server::rest::fixture::NAME
    );
    let answer = send(Method::GET, &path, &[], Body::empty(), anonymous);
    let what = format!("{what}: GET {path}");
    match registered {
        Some(bytes) => {
            answer.expect_status(&what, 200);
            assert!(answer.body == bytes, "{what}: other bytes");
        }
        None => answer.expect_status(&what, 404),
    }
}
