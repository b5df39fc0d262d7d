//! Unary content-store calls whose requests are read where their HTTP/2 frames lie.
//!
//! tonic's generated service copies every DATA frame of a request into a buffer of its own,
//! growing it (and copying again) as the frames arrive, before it decodes the message. For a
//! `BatchPut` of 1,000 blobs of 4 KiB that is 4 MiB copied and page-faulted into fresh memory per
//! call: 7% of the daemon's samples while it took batches (docs/performance.md). Here the frames
//! are gathered as they came (no copy), checked to hold exactly one uncompressed message within
//! the limit, and prost decodes the message out of them, so every `bytes` field that lies inside
//! one frame becomes a slice of that frame. The message then goes to the very same handler as
//! the generated service would call, and its answer goes back as tonic frames it: the message,
//! then `grpc-status` in the trailers, or a refusal as a status alone.

use std::future::Future;

use bytes::Buf as _;
use http_body_util::BodyExt as _;
use tonic::Status;

use custodian_proto::grpc_wire::PREFIX;

/// Reads a unary call's request: one uncompressed message of at most `limit` bytes, decoded as
/// `M` from the frames as they arrived. `method` names the call in errors.
pub(super) async fn read_one<M>(
    body: tonic::body::Body,
    limit: usize,
    method: &str,
) -> Result<M, Status>
where
    M: prost::Message + Default,
{
    let collected = http_body_util::Limited::new(body, PREFIX.saturating_add(limit))
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Status::out_of_range(format!(
                    "the {method} request is over the limit of {limit} bytes (serve --max-message-bytes)"
                ))
            } else {
                Status::from_error(e)
            }
        })?;
    // The frames, in order, without copying them into one buffer: a `bytes` field read out of
    // them is a slice of the frame it lies in (http-body-util's list of buffers hands the front
    // one's slice out when it holds the whole field).
    let mut body = collected.aggregate();
    if body.remaining() < PREFIX {
        return Err(Status::internal(format!(
            "the {method} request's body is {} bytes, too short for a gRPC message",
            body.remaining()
        )));
    }
    uncompressed(body.get_u8(), || format!("the {method} request"))?;
    let len = body.get_u32() as usize;
    if body.remaining() != len {
        return Err(Status::internal(format!(
            "the {method} request's body is {} bytes, but its message says {len}: one message expected",
            body.remaining()
        )));
    }
    M::decode(body)
        .map_err(|e| Status::internal(format!("the {method} request does not decode: {e}")))
}

/// Checks a message's compressed-flag byte, the first of its gRPC frame; `what` names the
/// message for an error. 0 is the only flag this daemon takes. 1 (compressed) is refused
/// `UNIMPLEMENTED`, as gRPC's HTTP/2 protocol asks of a server for a compression it does not
/// support; any other value is a protocol error, `INTERNAL`, as tonic answers it.
pub(super) fn uncompressed(flag: u8, what: impl FnOnce() -> String) -> Result<(), Status> {
    match flag {
        0 => Ok(()),
        1 => Err(Status::unimplemented(format!(
            "{} is compressed (flag 1); this daemon takes uncompressed messages",
            what()
        ))),
        flag => Err(Status::internal(format!(
            "protocol error: {} has the compression flag {flag} (valid flags are 0 and 1)",
            what()
        ))),
    }
}

/// The refusal of a stream of `method`'s messages that ended inside one: `arrived` of its
/// `whole` bytes, its five-byte prefix included (of the prefix alone while that is not whole,
/// since the message's length is in it).
pub(super) fn ended_inside(method: &str, arrived: u64, whole: u64) -> Status {
    Status::internal(format!(
        "the {method} stream ended inside a message: {arrived} of its {whole} bytes arrived"
    ))
}

/// Answers one unary call read here: the caller's metadata and the decoded message go to
/// `handle` (the service's own method, so its checks and refusals are unchanged), and its answer
/// goes back as [`answer`] frames it.
pub(super) async fn serve<M, R, F, Fut>(
    request: http::Request<tonic::body::Body>,
    limit: usize,
    method: &'static str,
    handle: F,
) -> http::Response<tonic::body::Body>
where
    M: prost::Message + Default,
    R: prost::Message,
    F: FnOnce(tonic::Request<M>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<R>, Status>>,
{
    match read_request::<M>(request, limit, method).await {
        Ok(request) => answer(handle(request).await),
        Err(status) => status.into_http(),
    }
}

/// A unary call's request as the generated service hands it to a method: the caller's metadata
/// and extensions, and the one message [`read_one`] reads from the body.
pub(super) async fn read_request<M>(
    request: http::Request<tonic::body::Body>,
    limit: usize,
    method: &str,
) -> Result<tonic::Request<M>, Status>
where
    M: prost::Message + Default,
{
    let (parts, body) = request.into_parts();
    let message = read_one::<M>(body, limit, method).await?;
    Ok(tonic::Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(parts.headers),
        parts.extensions,
        message,
    ))
}

/// A unary call's answer as tonic's generated service sends it: the message, then its status
/// in the trailers; a refusal as a status alone ("trailers-only").
pub(super) fn answer<M: prost::Message>(
    response: Result<tonic::Response<M>, Status>,
) -> http::Response<tonic::body::Body> {
    let response = match response {
        Ok(response) => response,
        Err(status) => return status.into_http(),
    };
    let (metadata, message, _) = response.into_parts();
    let framed = match custodian_proto::grpc_wire::frame(&message) {
        Ok(framed) => framed,
        Err(status) => return status.into_http(),
    };
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = [
        Ok::<_, Status>(http_body::Frame::data(framed)),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    let mut http = http::Response::new(tonic::body::Body::new(body));
    *http.headers_mut() = super::cas_get::answer_headers(metadata);
    http
}

/// Helpers for the tests of the calls read where their frames lie.
#[cfg(test)]
pub(super) mod testing {
    use bytes::Bytes;

    /// What tonic's encoder sends for `message`: the prefix and prost's encoding.
    pub(in crate::grpc) fn framed(message: &impl prost::Message) -> Vec<u8> {
        custodian_proto::grpc_wire::frame(message)
            .expect("a short message")
            .to_vec()
    }

    /// `bytes` cut into frames at the lengths `cuts` gives in turn (the rest in one last frame).
    pub(in crate::grpc) fn cut(bytes: Vec<u8>, cuts: &[usize]) -> Vec<Bytes> {
        let mut rest = Bytes::from(bytes);
        let mut frames = Vec::new();
        for cut in cuts {
            if rest.is_empty() {
                break;
            }
            frames.push(rest.split_to((*cut).min(rest.len())));
        }
        if !rest.is_empty() {
            frames.push(rest);
        }
        frames
    }

    /// A request body delivering `frames` in turn, then `end` (an error) if given.
    pub(in crate::grpc) fn body_of(
        frames: Vec<Bytes>,
        end: Option<tonic::Status>,
    ) -> tonic::body::Body {
        let items = frames
            .into_iter()
            .map(|frame| Ok(http_body::Frame::data(frame)))
            .chain(end.map(Err));
        tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            items.collect::<Vec<Result<_, tonic::Status>>>(),
        )))
    }

    /// Reads one `M` from a request body delivering `frames`, as the call `method` would.
    pub(in crate::grpc) fn read<M: prost::Message + Default>(
        frames: Vec<Bytes>,
        limit: usize,
        method: &'static str,
    ) -> Result<M, tonic::Status> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime.block_on(super::read_one::<M>(body_of(frames, None), limit, method))
    }

    /// Where each frame lies in memory, to tell a slice of one from a copy.
    pub(in crate::grpc) fn spans(frames: &[Bytes]) -> Vec<(usize, usize)> {
        frames
            .iter()
            .map(|f| (f.as_ptr() as usize, f.as_ptr() as usize + f.len()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{cut, framed, spans};
    use super::*;

    use bytes::Bytes;
    use proptest::prelude::*;

    use custodian_proto::cas::v1 as pb;

    fn read<M: prost::Message + Default>(frames: Vec<Bytes>, limit: usize) -> Result<M, Status> {
        super::testing::read(frames, limit, "Get")
    }

    #[test]
    fn a_request_is_one_whole_uncompressed_message_within_the_limit() {
        let request = pb::GetRequest {
            digest: "sha256:ab".into(),
            offset: 7,
            limit: 9,
        };
        let framed = framed(&request);
        let one = |bytes: Vec<u8>| vec![Bytes::from(bytes)];
        assert_eq!(
            read::<pb::GetRequest>(one(framed.clone()), 1024).expect("read"),
            request
        );

        let err = read::<pb::GetRequest>(one(framed.clone()), 4).expect_err("over the limit");
        assert_eq!(err.code(), tonic::Code::OutOfRange);
        assert!(
            err.message()
                .contains("the Get request is over the limit of 4 bytes"),
            "{err:?}"
        );
        let mut compressed = framed.clone();
        compressed[0] = 1;
        let err = read::<pb::GetRequest>(one(compressed), 1024).expect_err("compressed");
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        assert!(
            err.message()
                .contains("the Get request is compressed (flag 1)"),
            "{err:?}"
        );
        let mut flagged = framed.clone();
        flagged[0] = 2;
        let err = read::<pb::GetRequest>(one(flagged), 1024).expect_err("flag 2");
        assert_eq!(err.code(), tonic::Code::Internal);
        assert!(
            err.message()
                .contains("the Get request has the compression flag 2"),
            "{err:?}"
        );
        let err = read::<pb::GetRequest>(one(framed[..3].to_vec()), 1024).expect_err("short");
        assert!(err.message().contains("too short"), "{err:?}");
        let err = read::<pb::GetRequest>(one(framed[..framed.len() - 1].to_vec()), 1024)
            .expect_err("cut short");
        assert!(err.message().contains("one message expected"), "{err:?}");
        let mut two = framed.clone();
        two.extend(&framed);
        let err = read::<pb::GetRequest>(one(two), 1024).expect_err("two messages");
        assert_eq!(err.code(), tonic::Code::Internal);
        assert!(err.message().contains("one message expected"), "{err:?}");
        let mut garbage = vec![0, 0, 0, 0, 2];
        garbage.extend([0x0b, 0x00]);
        let err = read::<pb::GetRequest>(one(garbage), 1024).expect_err("garbage");
        assert!(
            err.message().contains("the Get request does not decode"),
            "{err:?}"
        );
        let err = read::<pb::GetRequest>(Vec::new(), 1024).expect_err("nothing");
        assert!(err.message().contains("is 0 bytes"), "{err:?}");
    }

    #[test]
    fn a_unary_answer_is_the_message_then_an_ok_status() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let status = pb::UploadStatus {
            upload_id: "u1".into(),
            committed_size: 42,
            ..Default::default()
        };
        let response = answer(Ok(tonic::Response::new(status.clone())));
        assert_eq!(response.headers()["content-type"], "application/grpc");
        let (bytes, trailers) = runtime.block_on(async {
            let collected = response.into_body().collect().await.expect("a body");
            let trailers = collected.trailers().cloned().expect("trailers");
            (collected.to_bytes(), trailers)
        });
        assert_eq!(
            bytes,
            custodian_proto::grpc_wire::frame(&status).expect("short")
        );
        assert_eq!(trailers["grpc-status"], "0");

        let refused = answer::<pb::UploadStatus>(Err(Status::not_found("no upload u2")));
        let status = Status::from_header_map(refused.headers()).expect("a status in the headers");
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "no upload u2");
    }

    /// A batch of `sizes.len()` blobs, each of its size.
    fn batch(sizes: &[usize]) -> pb::BatchPutRequest {
        pb::BatchPutRequest {
            items: sizes
                .iter()
                .enumerate()
                .map(|(i, size)| pb::BatchPutItem {
                    data: Bytes::from(vec![i as u8; *size]),
                    expected_digest: if i % 3 == 0 {
                        format!("sha256:{i:064x}")
                    } else {
                        String::new()
                    },
                })
                .collect(),
        }
    }

    proptest! {
        /// However a request's bytes are cut into frames, it reads as prost reads the whole
        /// message, and a blob's bytes that lie inside one frame are a slice of that frame,
        /// not a copy.
        #[test]
        fn a_request_reads_as_prost_reads_it_however_the_frames_cut(
            sizes in proptest::collection::vec(0usize..20_000, 0..12),
            cuts in proptest::collection::vec(1usize..40_000, 0..10),
        ) {
            use prost::Message as _;
            let request = batch(&sizes);
            let frames = cut(framed(&request), &cuts);
            let spans = spans(&frames);
            // Where each frame begins and ends in the request.
            let mut points = vec![0];
            for frame in &frames {
                points.push(points[points.len() - 1] + frame.len());
            }
            let read: pb::BatchPutRequest = read(frames, 1 << 20).expect("read");
            prop_assert_eq!(&read, &request);
            prop_assert_eq!(read.encode_to_vec(), request.encode_to_vec());
            // Where each blob's bytes lie in the request, to know which frames hold them whole:
            // prost writes an item's fields in field order, so `data` (field 2) ends the item.
            let mut offset = PREFIX;
            for (item, sent) in read.items.iter().zip(&request.items) {
                let item_len = sent.encoded_len();
                let head = 1 + prost::encoding::encoded_len_varint(item_len as u64);
                offset += head + item_len;
                let data_at = offset - sent.data.len();
                let whole_in_one = points
                    .windows(2)
                    .any(|w| w[0] <= data_at && data_at + sent.data.len() <= w[1]);
                if whole_in_one && !item.data.is_empty() {
                    let at = item.data.as_ptr() as usize;
                    prop_assert!(
                        spans.iter().any(|(s, e)| *s <= at && at + item.data.len() <= *e),
                        "a blob's bytes that lie in one frame were copied"
                    );
                }
            }
        }
    }
}
