//! `ContentStore.Put` and `ContentStore.WriteUpload` received where their HTTP/2 frames lie.
//!
//! tonic's generated service copies every DATA frame of a request into a buffer of its own
//! before it decodes a message out of it, and grows that buffer with another copy: 7.5% of the
//! daemon's samples while it received a 1 GiB upload, beside its page faults on fresh buffers
//! (docs/performance.md). Here the frames are kept as they came and each message is read out of
//! them: a message that is one `chunk` field (what every client sends for data) becomes that
//! field's bytes as slices of the frames, handed to the very same handler code
//! ([`CasService::put_from`], [`CasService::write_upload_from`]) and on to the upload engine,
//! which hashes and writes them where they lie. Any other message (a header, or data with other
//! fields beside it) is gathered and decoded by prost, so protobuf's rules hold exactly as in
//! the generated service: unknown fields skipped, the last of a `oneof` winning.
//!
//! A message counts only once all of it has arrived, as in tonic: a stream that breaks inside a
//! message hands on none of that message's bytes.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use tonic::Status;

use custodian_proto::cas::v1 as pb;
use custodian_proto::grpc_wire::PREFIX;

use super::cas::{CasService, UploadMessage, UploadMessages};

/// The first byte of a `chunk` field: field 2, wire type 2 (length-delimited), in both
/// `PutRequest` and `WriteUploadRequest`.
const CHUNK_TAG: u8 = 0x12;

/// The request frames of one call, queued as they arrived.
struct Frames {
    body: tonic::body::Body,
    queue: VecDeque<Bytes>,
    queued: usize,
    /// The method, for errors.
    method: &'static str,
    /// The largest message accepted.
    limit: usize,
}

impl Frames {
    fn new(body: tonic::body::Body, method: &'static str, limit: usize) -> Self {
        Frames {
            body,
            queue: VecDeque::new(),
            queued: 0,
            method,
            limit,
        }
    }

    /// Waits until at least `n` bytes are queued; false if the body ended first.
    async fn fill(&mut self, n: usize) -> Result<bool, Status> {
        while self.queued < n {
            match self.body.frame().await {
                None => return Ok(false),
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => {
                    // Trailers from a client carry nothing a request needs.
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        self.queued += data.len();
                        self.queue.push_back(data);
                    }
                }
            }
        }
        Ok(true)
    }

    /// Takes the next `n` queued bytes (at most what is queued) as slices of the frames.
    fn take(&mut self, mut n: usize) -> Vec<Bytes> {
        let mut pieces = Vec::new();
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                self.queued -= front.len();
                pieces.extend(self.queue.pop_front());
            } else {
                pieces.push(front.split_to(n));
                self.queued -= n;
                n = 0;
            }
        }
        pieces
    }

    /// The next message's bytes as slices of the frames; `None` at the end of the stream.
    async fn next_message(&mut self) -> Result<Option<Vec<Bytes>>, Status> {
        if !self.fill(PREFIX).await? {
            return if self.queued == 0 {
                Ok(None)
            } else {
                Err(self.ended_inside(self.queued, PREFIX))
            };
        }
        let prefix = gather(self.take(PREFIX));
        super::unary::uncompressed(prefix[0], || format!("a {} message", self.method))?;
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.limit {
            return Err(Status::out_of_range(format!(
                "a {} message of {len} bytes is too large: the limit is {} bytes (serve --max-message-bytes)",
                self.method, self.limit
            )));
        }
        if !self.fill(len).await? {
            return Err(self.ended_inside(PREFIX + self.queued, PREFIX + len));
        }
        Ok(Some(self.take(len)))
    }

    fn ended_inside(&self, arrived: usize, whole: usize) -> Status {
        super::unary::ended_inside(self.method, arrived as u64, whole as u64)
    }
}

/// The pieces as one buffer: the piece itself if there is one, a copy otherwise.
fn gather(mut pieces: Vec<Bytes>) -> Bytes {
    if pieces.len() == 1 {
        return pieces.pop().unwrap_or_default();
    }
    let mut out = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
    for piece in &pieces {
        out.extend_from_slice(piece);
    }
    out.freeze()
}

/// The length of a message's leading `chunk` field header (tag and length), if the message is
/// exactly that one field; `None` for any other message.
fn chunk_header(pieces: &[Bytes], len: usize) -> Option<usize> {
    // The tag and a length varint (at most ten bytes) lie in the message's first eleven bytes.
    let mut head = [0u8; 11];
    let mut filled = 0;
    for piece in pieces {
        let take = (head.len() - filled).min(piece.len());
        head[filled..filled + take].copy_from_slice(&piece[..take]);
        filled += take;
        if filled == head.len() {
            break;
        }
    }
    let head = &head[..filled];
    if head.first() != Some(&CHUNK_TAG) {
        return None;
    }
    let mut rest = &head[1..];
    let field_len = prost::encoding::decode_varint(&mut rest).ok()?;
    let header_len = filled - rest.len();
    ((header_len as u64).checked_add(field_len) == Some(len as u64)).then_some(header_len)
}

/// Reads one message out of its pieces: a lone `chunk` field as slices of the frames, anything
/// else decoded by prost into `M` and turned into an [`UploadMessage`] by `split`.
fn read_message<M, H>(
    pieces: Vec<Bytes>,
    method: &str,
    split: impl Fn(M) -> UploadMessage<H>,
) -> Result<UploadMessage<H>, Status>
where
    M: prost::Message + Default,
{
    let len: usize = pieces.iter().map(Bytes::len).sum();
    if len > 0
        && let Some(header_len) = chunk_header(&pieces, len)
    {
        let mut pieces = pieces;
        let mut skip = header_len;
        pieces.retain_mut(|piece| {
            let cut = skip.min(piece.len());
            skip -= cut;
            *piece = piece.slice(cut..);
            !piece.is_empty()
        });
        return Ok(UploadMessage::Chunk(pieces));
    }
    M::decode(gather(pieces))
        .map(split)
        .map_err(|e| Status::internal(format!("a {method} message does not decode: {e}")))
}

/// The messages of an upload call's body, read where its frames lie.
fn messages<M, H>(
    body: tonic::body::Body,
    method: &'static str,
    limit: usize,
    split: fn(M) -> UploadMessage<H>,
) -> UploadMessages<H>
where
    M: prost::Message + Default + 'static,
    H: Send + 'static,
{
    let frames = Frames::new(body, method, limit);
    Box::pin(futures::stream::unfold(
        Some(frames),
        move |frames| async move {
            let mut frames = frames?;
            match frames.next_message().await {
                Ok(Some(pieces)) => {
                    let message = read_message(pieces, method, split);
                    let go_on = message.is_ok();
                    Some((message, go_on.then_some(frames)))
                }
                Ok(None) => None,
                Err(status) => Some((Err(status), None)),
            }
        },
    ))
}

fn split_put(message: pb::PutRequest) -> UploadMessage<pb::PutHeader> {
    match message.message {
        Some(pb::put_request::Message::Header(header)) => UploadMessage::Header(header),
        Some(pb::put_request::Message::Chunk(chunk)) => UploadMessage::Chunk(vec![chunk]),
        None => UploadMessage::Empty,
    }
}

fn split_write_upload(message: pb::WriteUploadRequest) -> UploadMessage<pb::UploadWriteHeader> {
    match message.message {
        Some(pb::write_upload_request::Message::Header(header)) => UploadMessage::Header(header),
        Some(pb::write_upload_request::Message::Chunk(chunk)) => UploadMessage::Chunk(vec![chunk]),
        None => UploadMessage::Empty,
    }
}

/// The upload methods read here.
#[derive(Clone, Copy, Debug)]
pub(super) enum UploadMethod {
    Put,
    WriteUpload,
}

/// Answers one call of `method`.
pub(super) async fn serve(
    method: UploadMethod,
    service: CasService,
    limit: usize,
    request: http::Request<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    match method {
        UploadMethod::Put => {
            serve_upload(
                service,
                request,
                "Put",
                limit,
                split_put,
                |s, who, m| async move { s.put_from(who, m).await },
            )
            .await
        }
        UploadMethod::WriteUpload => {
            let split = split_write_upload;
            serve_upload(
                service,
                request,
                "WriteUpload",
                limit,
                split,
                |s, who, m| async move { s.write_upload_from(who, m).await },
            )
            .await
        }
    }
}

/// Answers one upload call: the caller must be allowed to upload (as the generated service
/// checks first), then `handle` takes the body's messages, read where their frames lie.
async fn serve_upload<M, H, R, F, Fut>(
    service: CasService,
    request: http::Request<tonic::body::Body>,
    method: &'static str,
    limit: usize,
    split: fn(M) -> UploadMessage<H>,
    handle: F,
) -> http::Response<tonic::body::Body>
where
    M: prost::Message + Default + 'static,
    H: Send + 'static,
    R: prost::Message,
    F: FnOnce(CasService, crate::auth::Principal, UploadMessages<H>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
{
    let (parts, body) = request.into_parts();
    let request = tonic::Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(parts.headers),
        parts.extensions,
        (),
    );
    let response = match service.writer(&request) {
        Ok(who) => handle(service, who, messages(body, method, limit, split)).await,
        Err(status) => Err(status),
    };
    super::unary::answer(response)
}

#[cfg(test)]
mod tests {
    use super::super::unary::testing::{body_of, cut, spans};
    use super::*;

    use futures::StreamExt as _;
    use proptest::prelude::*;

    /// What a message was read as, comparable.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Header(pb::UploadWriteHeader),
        Chunk(Vec<u8>),
        Empty,
    }

    fn seen(message: UploadMessage<pb::UploadWriteHeader>) -> Seen {
        match message {
            UploadMessage::Header(header) => Seen::Header(header),
            UploadMessage::Chunk(pieces) => Seen::Chunk(gather(pieces).to_vec()),
            UploadMessage::Empty => Seen::Empty,
        }
    }

    /// Every message of a `WriteUpload` body, as read here, and the error it ended with.
    fn read_all(
        frames: Vec<Bytes>,
        end: Option<Status>,
        limit: usize,
    ) -> (Vec<UploadMessage<pb::UploadWriteHeader>>, Option<Status>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let mut stream = messages(
                body_of(frames, end),
                "WriteUpload",
                limit,
                split_write_upload,
            );
            let mut read = Vec::new();
            while let Some(message) = stream.next().await {
                match message {
                    Ok(message) => read.push(message),
                    Err(status) => {
                        assert!(stream.next().await.is_none(), "the stream ends at an error");
                        return (read, Some(status));
                    }
                }
            }
            (read, None)
        })
    }

    /// The message bytes a test stream is made of: what any client may send.
    fn message_strategy() -> impl Strategy<Value = Vec<u8>> {
        use prost::Message as _;
        let chunk = |data: Vec<u8>| pb::WriteUploadRequest {
            message: Some(pb::write_upload_request::Message::Chunk(data.into())),
        };
        prop_oneof![
            // A lone chunk, of sizes around the varint's length boundaries.
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..200),
                proptest::collection::vec(any::<u8>(), 16_380..16_390),
            ]
            .prop_map(move |data| chunk(data).encode_to_vec()),
            // A header.
            ("[a-z0-9]{0,40}", any::<u64>()).prop_map(|(upload_id, write_offset)| {
                pb::WriteUploadRequest {
                    message: Some(pb::write_upload_request::Message::Header(
                        pb::UploadWriteHeader {
                            upload_id,
                            write_offset,
                        },
                    )),
                }
                .encode_to_vec()
            }),
            // An empty message.
            Just(Vec::new()),
            // A chunk with an unknown field after it, and one before it.
            proptest::collection::vec(any::<u8>(), 0..100).prop_map(move |data| {
                let mut bytes = chunk(data.clone()).encode_to_vec();
                bytes.extend([0x78, 0x07]);
                let mut before = vec![0x78, 0x07];
                before.extend(chunk(data).encode_to_vec());
                [bytes, before].concat()
            }),
            // A header then a chunk in one message (the oneof's last wins), and the reverse.
            proptest::collection::vec(any::<u8>(), 0..100).prop_map(move |data| {
                let header = pb::WriteUploadRequest {
                    message: Some(pb::write_upload_request::Message::Header(
                        pb::UploadWriteHeader {
                            upload_id: "u".into(),
                            write_offset: 3,
                        },
                    )),
                }
                .encode_to_vec();
                [header.clone(), chunk(data).encode_to_vec(), header].concat()
            }),
        ]
    }

    proptest! {
        /// However a stream's messages are cut into frames, each is read as prost reads it,
        /// and a lone chunk's bytes are slices of the frames, not copies.
        #[test]
        fn messages_read_as_prost_reads_them_however_the_frames_cut(
            messages in proptest::collection::vec(message_strategy(), 0..8),
            cuts in proptest::collection::vec(1usize..20_000, 0..12),
        ) {
            use prost::Message as _;
            let mut stream = Vec::new();
            for message in &messages {
                stream.extend(
                    custodian_proto::grpc_wire::frame(&RawMessage(message.clone()))
                        .expect("a short message"),
                );
            }
            let frames = cut(stream, &cuts);
            let spans = spans(&frames);
            let (read, end) = read_all(frames, None, 1 << 20);
            prop_assert!(end.is_none(), "{end:?}");
            prop_assert_eq!(read.len(), messages.len());
            for (message, got) in messages.iter().zip(read) {
                let expected = split_write_upload(
                    pb::WriteUploadRequest::decode(message.as_slice()).expect("prost decodes it"),
                );
                if let (UploadMessage::Chunk(_), UploadMessage::Chunk(pieces)) = (&expected, &got)
                    && message.first() == Some(&CHUNK_TAG)
                    && chunk_header(&[Bytes::from(message.clone())], message.len()).is_some()
                {
                    for piece in pieces {
                        let at = piece.as_ptr() as usize;
                        prop_assert!(
                            spans.iter().any(|(start, end)| *start <= at && at + piece.len() <= *end),
                            "a piece was copied"
                        );
                    }
                }
                prop_assert_eq!(seen(got), seen(expected));
            }
        }
    }

    /// A message's bytes as they are, for framing test streams.
    #[derive(Debug, Default)]
    struct RawMessage(Vec<u8>);

    impl prost::Message for RawMessage {
        fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
            buf.put_slice(&self.0);
        }
        fn merge_field(
            &mut self,
            _: u32,
            _: prost::encoding::WireType,
            _: &mut impl bytes::Buf,
            _: prost::encoding::DecodeContext,
        ) -> Result<(), prost::DecodeError> {
            unreachable!("only encoded")
        }
        fn encoded_len(&self) -> usize {
            self.0.len()
        }
        fn clear(&mut self) {
            self.0.clear();
        }
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        custodian_proto::grpc_wire::frame(&RawMessage(message.to_vec()))
            .expect("a short message")
            .to_vec()
    }

    #[test]
    fn each_malformed_stream_is_refused_by_name_after_the_messages_before_it() {
        let chunk = [0x12, 0x03, b'a', b'b', b'c'];
        let good = framed(&chunk);
        let refused = |tail: Vec<u8>, end: Option<Status>, limit: usize| {
            let (read, status) =
                read_all(vec![Bytes::from([good.clone(), tail].concat())], end, limit);
            assert_eq!(read.len(), 1, "the whole message before the fault is read");
            assert_eq!(
                seen(read.into_iter().next().expect("one")),
                Seen::Chunk(b"abc".to_vec())
            );
            status.expect("refused")
        };
        let mut compressed = framed(&chunk);
        compressed[0] = 1;
        let status = refused(compressed, None, 1024);
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(
            status
                .message()
                .contains("WriteUpload message is compressed"),
            "{status:?}"
        );
        let mut flagged = framed(&chunk);
        flagged[0] = 2;
        let status = refused(flagged, None, 1024);
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(
            status.message().contains("compression flag 2"),
            "{status:?}"
        );
        let status = refused(framed(&[0x12, 0x04, b'a', b'b', b'c', b'd']), None, 5);
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert!(
            status.message().contains(
                "of 6 bytes is too large: the limit is 5 bytes (serve --max-message-bytes)"
            ),
            "{status:?}"
        );
        let status = refused(vec![0, 0, 0], None, 1024);
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(
            status
                .message()
                .contains("ended inside a message: 3 of its 5 bytes"),
            "{status:?}"
        );
        let status = refused(framed(&chunk)[..8].to_vec(), None, 1024);
        assert!(
            status
                .message()
                .contains("ended inside a message: 8 of its 10 bytes"),
            "{status:?}"
        );
        let status = refused(framed(&[0x12, 0x09, b'a']), None, 1024);
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(
            status
                .message()
                .contains("WriteUpload message does not decode"),
            "{status:?}"
        );
        let status = refused(
            Vec::new(),
            Some(Status::cancelled("the client went away")),
            1024,
        );
        assert_eq!(status.code(), tonic::Code::Cancelled);
        // A fault inside a message hands on none of its bytes, though they lay in the frames.
        let status = refused(
            framed(&[0x12, 0x03, b'd', b'e', b'f'])[..8].to_vec(),
            Some(Status::cancelled("gone")),
            1024,
        );
        assert_eq!(status.message(), "gone");
    }
}
