//! `ContentStore.Get` sent without copying the blob's bytes into tonic's messages.
//!
//! tonic's generated service encodes every message it sends into a buffer of its own: for a
//! blob read, one more pass over every byte after the read and the CRC32C check, 9% of the
//! daemon's samples while it served a 1 GiB get (docs/performance.md). [`ContentStoreRoutes`]
//! is the content store's service with that one method answered here: the request is decoded
//! and handed to the very same [`ContentStore::get`] (its checks, refusals and stream are
//! unchanged), and each `GetResponse` of the stream goes out as two pieces, the message's prefix
//! and field headers (a few bytes, encoded here) and the block's bytes themselves, which hyper
//! writes to the socket from where the read left them. The uploads (`Put`, `WriteUpload`) and
//! the two batch calls (`BatchPut`, `FindMissing`) are read where their frames lie
//! ([`super::cas_upload`], [`super::unary`]); every other method goes to the generated service
//! as before.
//!
//! The bytes on the wire are the ones prost would encode (a test compares them), so any gRPC
//! client reads them: tonic's own, Go's, Python's.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut as _, Bytes, BytesMut};
use futures::Stream;
use prost::Message as _;
use tonic::Status;
use tonic::server::NamedService;

use custodian_proto::cas::v1 as pb;
use custodian_proto::cas::v1::content_store_server::{ContentStore, ContentStoreServer};
use custodian_proto::grpc_wire::PREFIX;

use super::cas::CasService;
use super::cas_upload::UploadMethod;

/// The paths of the methods answered here rather than by the generated service.
const GET_PATH: &str = "/custodian.cas.v1.ContentStore/Get";
const PUT_PATH: &str = "/custodian.cas.v1.ContentStore/Put";
const WRITE_UPLOAD_PATH: &str = "/custodian.cas.v1.ContentStore/WriteUpload";
const BATCH_PUT_PATH: &str = "/custodian.cas.v1.ContentStore/BatchPut";
const FIND_MISSING_PATH: &str = "/custodian.cas.v1.ContentStore/FindMissing";

/// The content store's gRPC service: `Get` answered here, `Put` and `WriteUpload` read where
/// their frames lie ([`super::cas_upload`]), `BatchPut` and `FindMissing` likewise
/// ([`super::unary`]), every other method by tonic's generated service; see the module's
/// documentation.
#[derive(Clone)]
pub struct ContentStoreRoutes {
    generated: ContentStoreServer<CasService>,
    service: CasService,
    /// The largest request accepted, as for the generated methods.
    max_request: usize,
}

impl ContentStoreRoutes {
    /// Routes `Get`, `Put`, `WriteUpload`, `BatchPut` and `FindMissing` to `service` directly
    /// and everything else to tonic's generated service over the same `service`; no message of
    /// either, in or out, may be larger than `max_message_size` bytes.
    pub fn new(service: CasService, max_message_size: usize) -> Self {
        ContentStoreRoutes {
            generated: ContentStoreServer::new(service.clone())
                .max_decoding_message_size(max_message_size)
                .max_encoding_message_size(max_message_size),
            service,
            max_request: max_message_size,
        }
    }
}

impl NamedService for ContentStoreRoutes {
    const NAME: &'static str = <ContentStoreServer<CasService> as NamedService>::NAME;
}

impl tower_service::Service<http::Request<tonic::body::Body>> for ContentStoreRoutes {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        <ContentStoreServer<CasService> as tower_service::Service<
            http::Request<tonic::body::Body>,
        >>::poll_ready(&mut self.generated, cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let service = self.service.clone();
        let max_request = self.max_request;
        match request.uri().path() {
            GET_PATH => Box::pin(async move { Ok(serve_get(service, max_request, request).await) }),
            PUT_PATH | WRITE_UPLOAD_PATH => {
                let method = if request.uri().path() == PUT_PATH {
                    UploadMethod::Put
                } else {
                    UploadMethod::WriteUpload
                };
                Box::pin(async move {
                    Ok(super::cas_upload::serve(method, service, max_request, request).await)
                })
            }
            BATCH_PUT_PATH => Box::pin(async move {
                Ok(
                    super::unary::serve(request, max_request, "BatchPut", |r| async move {
                        ContentStore::batch_put(&service, r).await
                    })
                    .await,
                )
            }),
            FIND_MISSING_PATH => Box::pin(async move {
                Ok(
                    super::unary::serve(request, max_request, "FindMissing", |r| async move {
                        service.find_missing_read(r).await
                    })
                    .await,
                )
            }),
            _ => Box::pin(tower_service::Service::call(&mut self.generated, request)),
        }
    }
}

/// Answers one `Get`: a refusal as a status in the headers ("trailers-only", as tonic sends it),
/// otherwise the stream, then its status in the trailers.
async fn serve_get(
    service: CasService,
    max_request: usize,
    request: http::Request<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let request = match super::unary::read_request(request, max_request, "Get").await {
        Ok(request) => request,
        Err(status) => return status.into_http(),
    };
    match ContentStore::get(&service, request).await {
        Ok(response) => {
            let (metadata, stream, _) = response.into_parts();
            let mut http = http::Response::new(tonic::body::Body::new(GetBody {
                stream,
                pending: None,
                done: false,
            }));
            *http.headers_mut() = answer_headers(metadata);
            http
        }
        Err(status) => status.into_http(),
    }
}

/// The headers of an answer that carries messages: the handler's metadata and gRPC's content
/// type. The status goes in the trailers; the handler's metadata cannot preempt it.
pub(super) fn answer_headers(metadata: tonic::metadata::MetadataMap) -> http::HeaderMap {
    let mut headers = metadata.into_headers();
    for reserved in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(reserved);
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers
}

/// The response body: each message's prefix and field headers, then its bytes as they are.
struct GetBody {
    stream: Pin<Box<dyn Stream<Item = Result<pb::GetResponse, Status>> + Send>>,
    /// A message's bytes, sent after its headers.
    pending: Option<Bytes>,
    done: bool,
}

impl http_body::Body for GetBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if let Some(data) = self.pending.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let trailers = match self.stream.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(message))) => {
                let (head, data) = encode_parts(message);
                self.pending = (!data.is_empty()).then_some(data);
                return Poll::Ready(Some(Ok(http_body::Frame::data(head))));
            }
            Poll::Ready(Some(Err(status))) => status,
            Poll::Ready(None) => Status::ok(""),
        };
        self.done = true;
        let mut headers = http::HeaderMap::new();
        // A status that cannot travel as headers (it cannot: tonic escapes the message) still
        // ends the stream with one: `internal`, never OK.
        if trailers.add_header(&mut headers).is_err() {
            headers.clear();
            headers.insert("grpc-status", http::HeaderValue::from_static("13"));
        }
        Poll::Ready(Some(Ok(http_body::Frame::trailers(headers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_none()
    }
}

/// A `GetResponse` framed for gRPC as two pieces: everything up to the `data` field's bytes,
/// and those bytes (not copied). Concatenated, they are exactly the prefix and prost's encoding.
fn encode_parts(message: pb::GetResponse) -> (Bytes, Bytes) {
    let pb::GetResponse { blob, data } = message;
    // Everything but the data, as prost encodes it (the blob field, or nothing).
    let rest = pb::GetResponse {
        blob,
        data: Bytes::new(),
    };
    let rest_len = rest.encoded_len();
    // proto3 leaves an empty `bytes` field out.
    let data_header_len = if data.is_empty() {
        0
    } else {
        1 + prost::encoding::encoded_len_varint(data.len() as u64)
    };
    let message_len = rest_len + data_header_len + data.len();
    let mut head = BytesMut::with_capacity(PREFIX + rest_len + data_header_len);
    head.put_u8(0);
    // Blocks are at most a few MiB, far below gRPC's 4 GiB message bound.
    head.put_u32(u32::try_from(message_len).unwrap_or(u32::MAX));
    rest.encode_raw(&mut head);
    if !data.is_empty() {
        // Field 2, wire type 2 (length-delimited).
        head.put_u8(0x12);
        prost::encoding::encode_varint(data.len() as u64, &mut head);
    }
    (head.freeze(), data)
}

#[cfg(test)]
mod tests {
    use super::super::unary::testing::framed as tonic_framing;
    use super::*;

    use http_body_util::BodyExt as _;
    use proptest::prelude::*;

    /// The metadata of a blob of 1 GiB, as `Get`'s first message carries it.
    fn info() -> pb::BlobInfo {
        use custodian_core::{Algorithm, Digest};
        pb::BlobInfo {
            sha256: Digest::of(Algorithm::Sha256, b"a blob").to_string(),
            blake3: Digest::of(Algorithm::Blake3, b"a blob").to_string(),
            size: 1 << 30,
            created_at: Some(prost_types::Timestamp::default()),
        }
    }

    fn sent(message: pb::GetResponse) -> (Vec<u8>, Bytes) {
        let (head, data) = encode_parts(message);
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(&data);
        (bytes, data)
    }

    #[test]
    fn the_first_message_and_an_empty_one_are_prosts_bytes() {
        for message in [
            pb::GetResponse {
                blob: Some(info()),
                data: Bytes::new(),
            },
            pb::GetResponse::default(),
            pb::GetResponse {
                blob: Some(info()),
                data: Bytes::from_static(b"both"),
            },
        ] {
            assert_eq!(sent(message.clone()).0, tonic_framing(&message));
        }
    }

    proptest! {
        /// A data message of any length is the bytes prost would send, and its data is the
        /// block itself, not a copy.
        #[test]
        fn a_data_message_is_prosts_bytes_without_a_copy(len in 0usize..70_000, byte in any::<u8>()) {
            let block = Bytes::from(vec![byte; len]);
            let message = pb::GetResponse { blob: None, data: block.clone() };
            let (bytes, data) = sent(message.clone());
            prop_assert_eq!(bytes, tonic_framing(&message));
            if len > 0 {
                prop_assert_eq!(data.as_ptr(), block.as_ptr());
            }
        }
    }

    /// Runs a body to its end: the bytes of its data frames and its trailers.
    fn drain(mut body: GetBody) -> (Vec<u8>, http::HeaderMap) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let mut bytes = Vec::new();
            let mut trailers = None;
            while let Some(frame) = body.frame().await {
                let frame = frame.expect("no body error");
                match frame.into_data() {
                    Ok(data) => bytes.extend_from_slice(&data),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                }
            }
            assert!(http_body::Body::is_end_stream(&body));
            (bytes, trailers.expect("trailers"))
        })
    }

    #[test]
    fn a_stream_ends_with_its_status_in_the_trailers() {
        let messages = vec![
            pb::GetResponse {
                blob: Some(info()),
                data: Bytes::new(),
            },
            pb::GetResponse {
                blob: None,
                data: Bytes::from_static(b"hello"),
            },
        ];
        let expected: Vec<u8> = messages.iter().flat_map(tonic_framing).collect();
        let ok = GetBody {
            stream: Box::pin(futures::stream::iter(messages.clone().into_iter().map(Ok))),
            pending: None,
            done: false,
        };
        let (bytes, trailers) = drain(ok);
        assert_eq!(bytes, expected);
        assert_eq!(trailers["grpc-status"], "0");

        let failing = GetBody {
            stream: Box::pin(futures::stream::iter(
                messages
                    .into_iter()
                    .map(Ok)
                    .chain([Err(Status::data_loss("block 3 of sha256:ab is corrupt"))]),
            )),
            pending: None,
            done: false,
        };
        let (bytes, trailers) = drain(failing);
        assert_eq!(bytes, expected);
        let status = Status::from_header_map(&trailers).expect("a status");
        assert_eq!(status.code(), tonic::Code::DataLoss);
        assert_eq!(status.message(), "block 3 of sha256:ab is corrupt");
    }
}
