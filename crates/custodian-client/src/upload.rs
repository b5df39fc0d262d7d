//! `ContentStore.Put` and `ContentStore.WriteUpload` sent with no copy of the file's bytes.
//!
//! tonic's generated client encodes every request message into a buffer of its own before
//! HTTP/2 sends it: for an upload, one more pass over every byte of the file between reading it
//! and the socket (3% of the machine's samples during a streamed 1 GiB put, where the CLI and the
//! daemon share two cores; docs/performance.md). [`client_stream`] speaks the same gRPC over the
//! same connection (the channel, its TLS and the bearer token are those of every other call),
//! but sends each chunk message as two pieces: its prefix and field header (a few bytes, encoded
//! here) and the chunk itself, which HTTP/2 sends from where the read left it. The bytes on the
//! wire are the ones prost would encode (a test compares them), so any gRPC server reads them.
//!
//! The answer is read as tonic reads a unary answer: gRPC's content type, exactly one
//! uncompressed message within [`crate::MESSAGE_LIMIT`], and an OK `grpc-status` at the end; a
//! refusal (in the headers or in the trailers) is the error, with the daemon's code and message.

use bytes::{BufMut as _, Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use http_body_util::BodyExt as _;
use tonic::client::GrpcService;
use tonic::{Code, Status};

use custodian_proto::grpc_wire::{PREFIX, frame};

/// The first byte of a `chunk` field: field 2, wire type 2 (length-delimited), in both
/// `PutRequest` and `WriteUploadRequest`.
const CHUNK_TAG: u8 = 0x12;

/// The upload methods sent here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadCall {
    /// `ContentStore.Put`: a `PutHeader`, then the blob's bytes.
    Put,
    /// `ContentStore.WriteUpload`: an `UploadWriteHeader`, then the session's next bytes.
    WriteUpload,
}

impl UploadCall {
    /// The method's path, as the generated client sends it.
    fn path(self) -> &'static str {
        match self {
            UploadCall::Put => "/custodian.cas.v1.ContentStore/Put",
            UploadCall::WriteUpload => "/custodian.cas.v1.ContentStore/WriteUpload",
        }
    }
}

/// A chunk message's prefix and field header: what precedes `len` bytes of chunk on the wire.
fn chunk_head(len: usize) -> Result<Bytes, Status> {
    let varint = prost::encoding::encoded_len_varint(len as u64);
    let message_len = u32::try_from(1 + varint + len)
        .map_err(|_| Status::internal(format!("a chunk of {len} bytes is too long for gRPC")))?;
    let mut head = BytesMut::with_capacity(PREFIX + 1 + varint);
    head.put_u8(0);
    head.put_u32(message_len);
    head.put_u8(CHUNK_TAG);
    prost::encoding::encode_varint(len as u64, &mut head);
    Ok(head.freeze())
}

/// Sends `call` on `service` (a channel, or [`crate::Conn`] to send the caller's token): the
/// message `header` first, then each of `chunks` as a message of one `chunk` field, its bytes
/// sent as they are; returns the daemon's one answer.
pub async fn client_stream<S, H, R, C>(
    service: &mut S,
    call: UploadCall,
    header: &H,
    chunks: C,
) -> Result<R, Status>
where
    S: GrpcService<tonic::body::Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResponseBody: Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    H: prost::Message,
    R: prost::Message + Default,
    C: Stream<Item = Bytes> + Send + 'static,
{
    let first = frame(header)?;
    let pieces = futures::stream::once(async move { Ok(first) }).chain(chunks.flat_map(|chunk| {
        let pieces: Vec<Result<Bytes, Status>> = match chunk_head(chunk.len()) {
            // An empty chunk is an empty message's worth of field: sent, as prost would.
            Ok(head) => vec![Ok(head), Ok(chunk)],
            Err(status) => vec![Err(status)],
        };
        futures::stream::iter(pieces)
    }));
    let frames = pieces.filter_map(|piece| async move {
        match piece {
            Ok(bytes) if bytes.is_empty() => None,
            Ok(bytes) => Some(Ok(http_body::Frame::data(bytes))),
            Err(status) => Some(Err(status)),
        }
    });
    let body = tonic::body::Body::new(http_body_util::StreamBody::new(frames));
    let name = format!("{call:?}");
    let body = crate::get::start_call(service, call.path(), &name, body).await?;
    // A peer that is not a Custodian daemon could answer without end: no more than one message
    // of the limit is taken.
    let collected = http_body_util::Limited::new(body, PREFIX + crate::MESSAGE_LIMIT)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Status::resource_exhausted(format!(
                    "the daemon's {call:?} answer is over the limit of {} bytes",
                    crate::MESSAGE_LIMIT
                ))
            } else {
                Status::from_error(e)
            }
        })?;
    let trailers = collected.trailers().cloned();
    read_answer(collected.to_bytes(), trailers.as_ref(), call)
}

/// The one message of a unary answer's body, once its trailers say OK.
fn read_answer<R: prost::Message + Default>(
    body: Bytes,
    trailers: Option<&http::HeaderMap>,
    call: UploadCall,
) -> Result<R, Status> {
    match trailers.and_then(Status::from_header_map) {
        Some(status) if status.code() == Code::Ok => {}
        Some(status) => return Err(status),
        None => {
            return Err(Status::unknown(format!(
                "the {call:?} answer ended without a grpc-status trailer: it was cut short"
            )));
        }
    }
    if body.len() < PREFIX {
        return Err(Status::internal(format!(
            "the {call:?} answer is {} bytes, too short for a gRPC message",
            body.len()
        )));
    }
    let mut prefix = [0u8; PREFIX];
    prefix.copy_from_slice(&body[..PREFIX]);
    let len = crate::get::message_len(&prefix)?;
    if body.len() - PREFIX != len {
        return Err(Status::internal(format!(
            "the {call:?} answer's body is {} bytes, but its message says {len}: one message expected",
            body.len() - PREFIX
        )));
    }
    R::decode(body.slice(PREFIX..))
        .map_err(|e| Status::internal(format!("the {call:?} answer does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fake::{FakeDaemon, GRPC, daemon, trailers};
    use custodian_proto::cas::v1 as pb;
    use prost::Message as _;

    fn answer_of(status: &pb::UploadStatus) -> Result<http_body::Frame<Bytes>, Status> {
        Ok(http_body::Frame::data(frame(status).expect("short")))
    }

    fn send(fake: &mut FakeDaemon, chunks: Vec<Bytes>) -> Result<pb::UploadStatus, Status> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let header = pb::WriteUploadRequest {
            message: Some(pb::write_upload_request::Message::Header(
                pb::UploadWriteHeader {
                    upload_id: "u1".into(),
                    write_offset: 7,
                },
            )),
        };
        runtime.block_on(client_stream(
            fake,
            UploadCall::WriteUpload,
            &header,
            futures::stream::iter(chunks),
        ))
    }

    #[test]
    fn an_upload_is_the_bytes_prost_would_send_with_each_chunk_as_it_lies() {
        let status = pb::UploadStatus {
            upload_id: "u1".into(),
            committed_size: 42,
            ..Default::default()
        };
        let mut fake = daemon(vec![GRPC], vec![answer_of(&status), trailers("0")]);
        // Sizes on either side of a length varint's byte boundaries, and an empty chunk.
        let chunks: Vec<Bytes> = [5usize, 0, 127, 128, 16_383, 16_384, 1 << 20]
            .iter()
            .enumerate()
            .map(|(i, n)| Bytes::from(vec![i as u8; *n]))
            .collect();
        let answered = send(&mut fake, chunks.clone()).expect("an answer");
        assert_eq!(answered, status);

        let (parts, frames) = fake.seen.lock().expect("lock").take().expect("a request");
        assert_eq!(parts.method, http::Method::POST);
        assert_eq!(
            parts.uri.path(),
            "/custodian.cas.v1.ContentStore/WriteUpload"
        );
        assert_eq!(parts.headers["content-type"], "application/grpc");
        assert_eq!(parts.headers["te"], "trailers");
        // What tonic's client would have sent: each message framed, one after the other.
        let mut expected = frame(&pb::WriteUploadRequest {
            message: Some(pb::write_upload_request::Message::Header(
                pb::UploadWriteHeader {
                    upload_id: "u1".into(),
                    write_offset: 7,
                },
            )),
        })
        .expect("short")
        .to_vec();
        for chunk in &chunks {
            expected.extend(
                frame(&pb::WriteUploadRequest {
                    message: Some(pb::write_upload_request::Message::Chunk(chunk.clone())),
                })
                .expect("short"),
            );
        }
        assert_eq!(frames.concat(), expected);
        // Every non-empty chunk went out as a frame of its own, from the chunk's own memory.
        for chunk in chunks.iter().filter(|c| !c.is_empty()) {
            assert!(
                frames
                    .iter()
                    .any(|f| f.as_ptr() == chunk.as_ptr() && f.len() == chunk.len()),
                "a chunk of {} bytes was copied",
                chunk.len()
            );
        }
        let sent = pb::WriteUploadRequest::decode(&expected[PREFIX..frames[0].len()])
            .expect("the header decodes");
        assert!(matches!(
            sent.message,
            Some(pb::write_upload_request::Message::Header(_))
        ));
    }

    #[test]
    fn a_refusal_or_a_broken_answer_is_an_error_naming_what_went_wrong() {
        let status = pb::UploadStatus {
            upload_id: "u1".into(),
            ..Default::default()
        };
        let run = |headers: Vec<(&'static str, &'static str)>,
                   frames: Vec<Result<http_body::Frame<Bytes>, Status>>| {
            send(
                &mut daemon(headers, frames),
                vec![Bytes::from_static(b"abc")],
            )
            .expect_err("refused")
        };
        // A refusal in the headers alone ("trailers-only"), as a daemon sends it.
        let err = run(
            vec![
                GRPC,
                ("grpc-status", "5"),
                ("grpc-message", "no%20upload%20u1"),
            ],
            vec![],
        );
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), "no upload u1");
        // A refusal in the trailers.
        let err = run(vec![GRPC], vec![trailers("9")]);
        assert_eq!(err.code(), Code::FailedPrecondition);
        // An answer without a status, cut short.
        let err = run(vec![GRPC], vec![answer_of(&status)]);
        assert!(err.message().contains("cut short"), "{err:?}");
        // Two messages, a partial one, a compressed one, and one that does not decode.
        let two = [
            frame(&status).expect("short"),
            frame(&status).expect("short"),
        ]
        .concat();
        let err = run(
            vec![GRPC],
            vec![Ok(http_body::Frame::data(Bytes::from(two))), trailers("0")],
        );
        assert!(err.message().contains("one message expected"), "{err:?}");
        let whole = frame(&status).expect("short");
        let err = run(
            vec![GRPC],
            vec![
                Ok(http_body::Frame::data(whole.slice(..whole.len() - 1))),
                trailers("0"),
            ],
        );
        assert!(err.message().contains("one message expected"), "{err:?}");
        let mut compressed = whole.to_vec();
        compressed[0] = 1;
        let err = run(
            vec![GRPC],
            vec![
                Ok(http_body::Frame::data(Bytes::from(compressed))),
                trailers("0"),
            ],
        );
        assert!(err.message().contains("compression flag 1"), "{err:?}");
        let err = run(
            vec![GRPC],
            vec![
                Ok(http_body::Frame::data(Bytes::from_static(&[
                    0, 0, 0, 0, 1, 0x0b,
                ]))),
                trailers("0"),
            ],
        );
        assert!(err.message().contains("does not decode"), "{err:?}");
        // An answer that goes on past one message of the limit.
        let endless = Bytes::from(vec![0u8; PREFIX + crate::MESSAGE_LIMIT + 1]);
        let err = run(
            vec![GRPC],
            vec![Ok(http_body::Frame::data(endless)), trailers("0")],
        );
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        // Not gRPC at all.
        let err = run(vec![("content-type", "text/html")], vec![]);
        assert!(err.message().contains("not application/grpc"), "{err:?}");
    }
}
