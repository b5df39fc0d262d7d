//! `ContentStore.Get` received as the HTTP/2 frames arrive, with no copy of the blob's bytes.
//!
//! tonic's generated client hands out whole messages: it copies every HTTP/2 DATA frame into a
//! buffer of its own, and copies again what it holds whenever a message's length asks for more
//! room, before decoding the message. For a blob read that is two passes over every byte on top
//! of the socket's and the hash's; a profile of `custodian blob get` put tonic's copies at 17%
//! of the CLI's time. [`GetStream`] speaks the same gRPC over the same connection (the channel,
//! its TLS and the bearer token are those of every other call), but parses each `GetResponse`
//! where its frames lie: the `data` field comes back as slices of the frames themselves
//! ([`Bytes`] sharing their memory), and only the small `blob` field is copied to be decoded.
//!
//! What it checks is what tonic checks, and a little more: the answer must be gRPC (its content
//! type), uncompressed (none was asked for), within [`crate::MESSAGE_LIMIT`], made of whole
//! messages, and end with a `grpc-status` trailer; a stream cut short without one is an error,
//! never a short blob.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;

use bytes::{Buf as _, Bytes};
use prost::Message as _;
use tonic::client::GrpcService;
use tonic::{Code, Status};

use custodian_proto::cas::v1 as pb;
use custodian_proto::grpc_wire::{PREFIX, frame};

/// The method's path, as the generated client sends it.
const GET_PATH: &str = "/custodian.cas.v1.ContentStore/Get";

/// What a `Get` stream carries, in order: the blob's metadata (first), then its bytes.
#[derive(Debug)]
pub enum GetPiece {
    /// The blob's metadata, from a message's `blob` field.
    Info(pb::BlobInfo),
    /// The next bytes of the requested range: a slice of a received frame.
    Data(Bytes),
}

/// A `Get` in progress; see the module's documentation.
pub struct GetStream<B> {
    body: Pin<Box<B>>,
    /// Received bytes not yet parsed, as the frames brought them.
    received: Frames,
    /// Pieces of parsed messages not yet handed out.
    ready: VecDeque<GetPiece>,
    /// Set once the body has ended and its status was OK.
    done: bool,
}

impl<B> GetStream<B> {
    /// A stream that has received nothing of `body` yet.
    fn new(body: B) -> Self {
        GetStream {
            body: Box::pin(body),
            received: Frames::default(),
            ready: VecDeque::new(),
            done: false,
        }
    }
}

impl<B> std::fmt::Debug for GetStream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetStream")
            .field("received", &self.received.len)
            .field("ready", &self.ready.len())
            .field("done", &self.done)
            .finish()
    }
}

/// Starts `request` on `service` (a channel, or [`crate::Conn`] to send the caller's token) and
/// returns its stream once the daemon has answered with headers. A refusal the daemon sends in
/// place of a stream (not found, permission denied, out of range) is the error here.
pub async fn get<S>(
    service: &mut S,
    request: &pb::GetRequest,
) -> Result<GetStream<S::ResponseBody>, Status>
where
    S: GrpcService<tonic::body::Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResponseBody: Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body = tonic::body::Body::new(http_body_util::Full::new(frame(request)?));
    let body = start_call(service, GET_PATH, "Get", body).await?;
    Ok(GetStream::new(body))
}

/// Sends a gRPC call of `body` to `path` on `service`, as the generated client sends it, and
/// returns the answer's body once its headers say it is gRPC and not a refusal. `call` names the
/// method in errors.
pub(crate) async fn start_call<S>(
    service: &mut S,
    path: &'static str,
    call: &str,
    body: tonic::body::Body,
) -> Result<S::ResponseBody, Status>
where
    S: GrpcService<tonic::body::Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let http_request = http::Request::builder()
        .method(http::Method::POST)
        .version(http::Version::HTTP_2)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(body)
        .map_err(|e| Status::internal(format!("building the {call} request: {e}")))?;
    poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let response = service
        .call(http_request)
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let (head, body) = response.into_parts();
    check_head(&head, call)?;
    Ok(body)
}

/// Checks an answer's headers: gRPC's content type, and no status sent in place of an answer.
/// `call` names the method in errors.
fn check_head(head: &http::response::Parts, call: &str) -> Result<(), Status> {
    // A refusal comes as headers only ("trailers-only"), with the status among them.
    if let Some(status) = Status::from_header_map(&head.headers) {
        return Err(if status.code() == Code::Ok {
            Status::internal(format!(
                "the daemon ended the {call} before sending its answer"
            ))
        } else {
            status
        });
    }
    let content_type = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    // The wording ("Content-Type") is what `describe_status` recognises as "not a gRPC server".
    if !content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("application/grpc"))
    {
        return Err(Status::internal(format!(
            "the answer's Content-Type is {}, not application/grpc (HTTP status {})",
            content_type.as_deref().unwrap_or("missing"),
            head.status.as_u16()
        )));
    }
    if head.status != http::StatusCode::OK {
        return Err(Status::unknown(format!(
            "the daemon answered with HTTP status {} and no gRPC status",
            head.status.as_u16()
        )));
    }
    Ok(())
}

impl<B> GetStream<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// The next piece, or `None` once the daemon has sent everything and said so. A status
    /// other than OK in the trailers (a block found corrupt, the daemon shutting down) is an
    /// error here, after the pieces before it.
    pub async fn next(&mut self) -> Result<Option<GetPiece>, Status> {
        loop {
            if let Some(piece) = self.ready.pop_front() {
                return Ok(Some(piece));
            }
            if self.done {
                return Ok(None);
            }
            if self.parse_message()? {
                continue;
            }
            match poll_fn(|cx| self.body.as_mut().poll_frame(cx)).await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.received.push(data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.end(Some(&trailers))?;
                        }
                    }
                },
                Some(Err(e)) => return Err(Status::from_error(e.into())),
                None => self.end(None)?,
            }
        }
    }

    /// Parses the next message if all of it has arrived; returns whether it did.
    fn parse_message(&mut self) -> Result<bool, Status> {
        if self.received.len < PREFIX {
            return Ok(false);
        }
        let mut prefix = [0u8; PREFIX];
        self.received.peek(&mut prefix);
        let len = message_len(&prefix)?;
        if self.received.len < PREFIX + len {
            return Ok(false);
        }
        self.received.skip(PREFIX);
        let message = self.received.take(len);
        decode_get_response(message, &mut self.ready)?;
        Ok(true)
    }

    /// The body has ended (with `trailers`, or without any): the stream is over, well or not.
    fn end(&mut self, trailers: Option<&http::HeaderMap>) -> Result<(), Status> {
        if self.received.len > 0 {
            return Err(Status::internal(format!(
                "the stream ended inside a message ({} bytes of it received)",
                self.received.len
            )));
        }
        match trailers.and_then(Status::from_header_map) {
            Some(status) if status.code() == Code::Ok => {
                self.done = true;
                Ok(())
            }
            Some(status) => Err(status),
            // gRPC requires a status at the end of every stream: without one the stream was cut
            // (by a proxy, a reset), and what came may be short.
            None => Err(Status::unknown(
                "the stream ended without a grpc-status trailer: it was cut short",
            )),
        }
    }
}

/// The length a message's prefix gives, once the prefix says the message is uncompressed (none
/// was asked for) and within [`crate::MESSAGE_LIMIT`].
pub(crate) fn message_len(prefix: &[u8; PREFIX]) -> Result<usize, Status> {
    if prefix[0] != 0 {
        return Err(Status::internal(format!(
            "the daemon sent a message with compression flag {}, but no compression was asked for",
            prefix[0]
        )));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > crate::MESSAGE_LIMIT {
        return Err(Status::resource_exhausted(format!(
            "the daemon sent a message of {len} bytes, over the limit of {}",
            crate::MESSAGE_LIMIT
        )));
    }
    Ok(len)
}

/// Received bytes as a queue of the frames that brought them.
#[derive(Default)]
struct Frames {
    frames: VecDeque<Bytes>,
    len: usize,
}

impl Frames {
    fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.len += data.len();
            self.frames.push_back(data);
        }
    }

    /// Copies the first `out.len()` bytes (there must be as many) without consuming them.
    fn peek(&self, out: &mut [u8]) {
        let mut filled = 0;
        for frame in &self.frames {
            let n = frame.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&frame[..n]);
            filled += n;
            if filled == out.len() {
                break;
            }
        }
    }

    /// Drops the first `n` bytes (there must be as many).
    fn skip(&mut self, n: usize) {
        drop(self.take(n));
    }

    /// Takes the first `n` bytes (there must be as many) as slices of their frames.
    fn take(&mut self, mut n: usize) -> Frames {
        let mut taken = Frames::default();
        while n > 0 {
            let Some(front) = self.frames.front_mut() else {
                break;
            };
            let piece = if front.len() <= n {
                self.frames.pop_front().unwrap_or_default()
            } else {
                front.split_to(n)
            };
            n -= piece.len();
            self.len -= piece.len();
            taken.push(piece);
        }
        taken
    }

    fn get_u8(&mut self) -> Option<u8> {
        let front = self.frames.front_mut()?;
        let byte = front.get_u8();
        self.len -= 1;
        if front.is_empty() {
            self.frames.pop_front();
        }
        Some(byte)
    }

    /// A protobuf varint, if the message holds a whole one.
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.get_u8()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
}

/// Decodes one `GetResponse` from its bytes, pushing its metadata (if any) and then its data.
/// Protobuf's rules hold: an embedded message sent in several parts is their merge (the parts'
/// concatenation decoded), a `bytes` field sent twice is its last value, and unknown fields are
/// skipped.
fn decode_get_response(mut message: Frames, out: &mut VecDeque<GetPiece>) -> Result<(), Status> {
    let malformed = |what: &str| Status::internal(format!("a malformed GetResponse: {what}"));
    let mut blob: Option<Vec<u8>> = None;
    let mut data: Option<Frames> = None;
    while message.len > 0 {
        let key = message
            .varint()
            .ok_or_else(|| malformed("a truncated field key"))?;
        let (field, wire_type) = (key >> 3, key & 7);
        let skip = match wire_type {
            0 => {
                message
                    .varint()
                    .ok_or_else(|| malformed("a truncated varint"))?;
                continue;
            }
            1 => 8,
            2 => {
                let len = message
                    .varint()
                    .ok_or_else(|| malformed("a truncated length"))?;
                usize::try_from(len)
                    .ok()
                    .filter(|len| *len <= message.len)
                    .ok_or_else(|| malformed("a field longer than its message"))?
            }
            5 => 4,
            other => return Err(malformed(&format!("wire type {other}"))),
        };
        if skip > message.len {
            return Err(malformed("a field longer than its message"));
        }
        match (field, wire_type) {
            (1, 2) => {
                let part = message.take(skip);
                let blob = blob.get_or_insert_with(Vec::new);
                for frame in &part.frames {
                    blob.extend_from_slice(frame);
                }
            }
            (2, 2) => data = Some(message.take(skip)),
            _ => message.skip(skip),
        }
    }
    if let Some(blob) = blob {
        let info = pb::BlobInfo::decode(blob.as_slice())
            .map_err(|e| malformed(&format!("its blob field: {e}")))?;
        out.push_back(GetPiece::Info(info));
    }
    if let Some(data) = data {
        out.extend(data.frames.into_iter().map(GetPiece::Data));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fake::{FakeDaemon, GRPC, daemon, trailers};
    use proptest::prelude::*;

    /// A `GetResponse` framed as the daemon sends it.
    fn framed(message: &pb::GetResponse) -> Vec<u8> {
        frame(message).expect("a short message").to_vec()
    }

    fn info() -> pb::BlobInfo {
        pb::BlobInfo {
            sha256: format!("sha256:{}", "ab".repeat(32)),
            blake3: format!("blake3:{}", "cd".repeat(32)),
            size: 5,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 7,
            }),
        }
    }

    /// Feeds `bytes` in frames cut at `cuts` and collects every piece the parser hands out.
    fn parse_in_frames(
        bytes: &[u8],
        cuts: &[usize],
    ) -> Result<(Vec<pb::BlobInfo>, Vec<u8>), Status> {
        let mut stream = GetStream::new(http_body_util::Empty::<Bytes>::new());
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(bytes.len());
        let (mut infos, mut data) = (Vec::new(), Vec::new());
        for cut in cuts {
            stream
                .received
                .push(Bytes::copy_from_slice(&bytes[at..cut]));
            at = cut;
            while stream.parse_message()? {}
            for piece in stream.ready.drain(..) {
                match piece {
                    GetPiece::Info(info) => infos.push(info),
                    GetPiece::Data(bytes) => data.extend_from_slice(&bytes),
                }
            }
        }
        if stream.received.len > 0 {
            return Err(Status::internal("left over"));
        }
        Ok((infos, data))
    }

    #[test]
    fn metadata_then_data_come_back_as_prost_decodes_them() {
        let mut bytes = framed(&pb::GetResponse {
            blob: Some(info()),
            data: Bytes::new(),
        });
        bytes.extend(framed(&pb::GetResponse {
            blob: None,
            data: Bytes::from_static(b"hello"),
        }));
        bytes.extend(framed(&pb::GetResponse {
            blob: None,
            data: Bytes::from_static(b" world"),
        }));
        let (infos, data) = parse_in_frames(&bytes, &[]).expect("parses");
        assert_eq!(infos, vec![info()]);
        assert_eq!(data, b"hello world");
    }

    #[test]
    fn protobuf_rules_hold_for_repeated_and_unknown_fields() {
        // The blob field in two parts (merged), data sent twice (the last counts), and unknown
        // fields of every wire type between them.
        let first = pb::BlobInfo {
            size: 5,
            ..Default::default()
        }
        .encode_to_vec();
        let second = pb::BlobInfo {
            sha256: "sha256:x".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut message = Vec::new();
        message.push(0x0a);
        message.push(first.len() as u8);
        message.extend(&first);
        message.extend([0x18, 0x96, 0x01]); // field 3, varint 150
        message.extend([0x21, 1, 2, 3, 4, 5, 6, 7, 8]); // field 4, fixed64
        message.extend([0x2d, 1, 2, 3, 4]); // field 5, fixed32
        message.extend([0x12, 3, b'o', b'l', b'd']); // data "old"
        message.extend([0x32, 2, b'z', b'z']); // field 6, bytes
        message.push(0x0a);
        message.push(second.len() as u8);
        message.extend(&second);
        message.extend([0x12, 3, b'n', b'e', b'w']); // data "new"
        let mut bytes = vec![0];
        bytes.extend((message.len() as u32).to_be_bytes());
        bytes.extend(&message);
        let decoded = pb::GetResponse::decode(message.as_slice()).expect("prost decodes it");
        let (infos, data) = parse_in_frames(&bytes, &[1, 7, 12]).expect("parses");
        assert_eq!(infos, vec![decoded.blob.expect("a blob")]);
        assert_eq!(data, decoded.data.to_vec());
        assert_eq!(data, b"new");
    }

    #[test]
    fn malformed_messages_are_refused_by_name() {
        let cases: [(&[u8], &str); 5] = [
            (&[0x12, 9, b'x'], "longer than its message"),
            (&[0x12], "truncated length"),
            (&[0x80], "truncated field key"),
            (&[0x0b], "wire type 3"),
            (&[0x0a, 2, 0xff, 0xff], "its blob field"),
        ];
        for (message, expected) in cases {
            let mut bytes = vec![0];
            bytes.extend((message.len() as u32).to_be_bytes());
            bytes.extend(message);
            let err = parse_in_frames(&bytes, &[]).expect_err("refused");
            assert!(err.message().contains(expected), "{message:?}: {err:?}");
        }
    }

    #[test]
    fn compressed_and_oversized_messages_are_refused() {
        let mut compressed = framed(&pb::GetResponse::default());
        compressed[0] = 1;
        let err = parse_in_frames(&compressed, &[]).expect_err("refused");
        assert!(err.message().contains("compression flag 1"), "{err:?}");
        let mut oversized = vec![0];
        oversized.extend(((crate::MESSAGE_LIMIT + 1) as u32).to_be_bytes());
        let err = parse_in_frames(&oversized, &[]).expect_err("refused");
        assert_eq!(err.code(), Code::ResourceExhausted);
    }

    #[test]
    fn a_stream_ends_well_only_with_an_ok_status_and_no_partial_message() {
        let ok: http::HeaderMap = [(
            http::HeaderName::from_static("grpc-status"),
            http::HeaderValue::from_static("0"),
        )]
        .into_iter()
        .collect();
        let data_loss: http::HeaderMap = [
            (
                http::HeaderName::from_static("grpc-status"),
                http::HeaderValue::from_static("15"),
            ),
            (
                http::HeaderName::from_static("grpc-message"),
                http::HeaderValue::from_static("block%203%20is%20corrupt"),
            ),
        ]
        .into_iter()
        .collect();
        let stream = || GetStream::new(http_body_util::Empty::<Bytes>::new());
        stream()
            .end(Some(&ok))
            .expect("an OK status ends the stream");
        let err = stream().end(Some(&data_loss)).expect_err("not OK");
        assert_eq!(err.code(), Code::DataLoss);
        assert_eq!(err.message(), "block 3 is corrupt");
        let err = stream().end(None).expect_err("no status");
        assert!(err.message().contains("cut short"), "{err:?}");
        let err = stream()
            .end(Some(&http::HeaderMap::new()))
            .expect_err("no status");
        assert!(err.message().contains("cut short"), "{err:?}");
        let mut partial = stream();
        partial.received.push(Bytes::from_static(&[0, 0, 0]));
        let err = partial.end(Some(&ok)).expect_err("inside a message");
        assert!(err.message().contains("inside a message"), "{err:?}");
    }

    /// Runs a whole `Get` against `daemon`: the pieces' metadata and bytes, or the error.
    fn run_get(daemon: &mut FakeDaemon) -> Result<(Vec<pb::BlobInfo>, Vec<u8>), Status> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let request = pb::GetRequest {
                digest: "sha256:ab".into(),
                offset: 3,
                limit: 4,
            };
            let mut stream = get(daemon, &request).await?;
            let (mut infos, mut data) = (Vec::new(), Vec::new());
            while let Some(piece) = stream.next().await? {
                match piece {
                    GetPiece::Info(info) => infos.push(info),
                    GetPiece::Data(bytes) => data.extend_from_slice(&bytes),
                }
            }
            Ok((infos, data))
        })
    }

    #[test]
    fn a_get_sends_grpc_and_reads_the_answer_to_its_status() {
        let mut bytes = framed(&pb::GetResponse {
            blob: Some(info()),
            data: Bytes::from_static(b"he"),
        });
        bytes.extend(framed(&pb::GetResponse {
            blob: None,
            data: Bytes::from_static(b"llo"),
        }));
        let (a, b) = bytes.split_at(9);
        let mut fake = daemon(
            vec![GRPC],
            vec![
                Ok(http_body::Frame::data(Bytes::copy_from_slice(a))),
                Ok(http_body::Frame::data(Bytes::copy_from_slice(b))),
                trailers("0"),
            ],
        );
        let (infos, data) = run_get(&mut fake).expect("a whole stream");
        assert_eq!(infos, vec![info()]);
        assert_eq!(data, b"hello");
        // What was sent is the request tonic's client would send.
        let (parts, frames) = fake.seen.lock().expect("lock").take().expect("a request");
        let body = frames.concat();
        assert_eq!(parts.method, http::Method::POST);
        assert_eq!(parts.uri.path(), GET_PATH);
        assert_eq!(parts.headers["content-type"], "application/grpc");
        assert_eq!(parts.headers["te"], "trailers");
        assert_eq!(body[0], 0);
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert_eq!(len, body.len() - PREFIX);
        let request = pb::GetRequest::decode(&body[PREFIX..]).expect("a GetRequest");
        assert_eq!(
            (request.digest.as_str(), request.offset, request.limit),
            ("sha256:ab", 3, 4)
        );

        // The same stream without its final status is an error after the bytes, not a short
        // blob; so is a status other than OK, or an error of the connection.
        for (last, expected) in [
            (None, "cut short"),
            (Some(trailers("15")), "data loss"),
            (
                Some(Err(Status::unavailable("connection reset"))),
                "connection reset",
            ),
        ] {
            let mut frames = vec![
                Ok(http_body::Frame::data(Bytes::copy_from_slice(a))),
                Ok(http_body::Frame::data(Bytes::copy_from_slice(b))),
            ];
            frames.extend(last);
            let err = run_get(&mut daemon(vec![GRPC], frames)).expect_err("refused");
            let text = format!("{:?} {}", err.code(), crate::describe_status(&err));
            assert!(text.contains(expected), "{text}");
        }
        // A stream that stops inside a message, even with an OK status.
        let err = run_get(&mut daemon(
            vec![GRPC],
            vec![
                Ok(http_body::Frame::data(Bytes::copy_from_slice(a))),
                trailers("0"),
            ],
        ))
        .expect_err("refused");
        assert!(err.message().contains("inside a message"), "{err:?}");
    }

    #[test]
    fn a_refusal_or_an_answer_that_is_not_grpc_is_an_error_before_any_byte() {
        let err = run_get(&mut daemon(
            vec![
                GRPC,
                ("grpc-status", "5"),
                ("grpc-message", "blob%20not%20found"),
            ],
            vec![],
        ))
        .expect_err("refused");
        assert_eq!(
            (err.code(), err.message()),
            (Code::NotFound, "blob not found")
        );
        // An HTTP server that is not a gRPC one reads as such.
        let err =
            run_get(&mut daemon(vec![("content-type", "text/html")], vec![])).expect_err("refused");
        assert!(
            crate::describe_status(&err).contains("answered as an HTTP server, not a gRPC one"),
            "{err:?}"
        );
        let mut not_ok = daemon(vec![GRPC], vec![]);
        not_ok.status = http::StatusCode::BAD_GATEWAY;
        let err = run_get(&mut not_ok).expect_err("refused");
        assert!(err.message().contains("HTTP status 502"), "{err:?}");
    }

    proptest! {
        /// However the frames cut the stream, the pieces are the messages' metadata and bytes.
        #[test]
        fn any_framing_gives_the_same_pieces(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut bytes = framed(&pb::GetResponse { blob: Some(info()), data: Bytes::new() });
            let mut expected = Vec::new();
            for chunk in &chunks {
                bytes.extend(framed(&pb::GetResponse { blob: None, data: Bytes::from(chunk.clone()) }));
                expected.extend_from_slice(chunk);
            }
            let (infos, data) = parse_in_frames(&bytes, &cuts).expect("parses");
            prop_assert_eq!(infos, vec![info()]);
            prop_assert_eq!(data, expected);
        }
    }
}
