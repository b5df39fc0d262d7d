//! A daemon for the client's unit tests: it keeps the request it was sent, frame by frame, and
//! answers with the HTTP status, headers and body frames a test gives it.

use bytes::Bytes;
use http_body_util::BodyExt as _;
use tonic::Status;

/// A request as the fake daemon received it: its head and its data frames as they came.
pub(crate) type Seen = std::sync::Arc<std::sync::Mutex<Option<(http::request::Parts, Vec<Bytes>)>>>;

/// gRPC's content type, as a header a test answers with.
pub(crate) const GRPC: (&str, &str) = ("content-type", "application/grpc");

/// A daemon in a test; see the module's documentation.
pub(crate) struct FakeDaemon {
    /// The HTTP status of the answer.
    pub(crate) status: http::StatusCode,
    headers: Vec<(&'static str, &'static str)>,
    frames: Vec<Result<http_body::Frame<Bytes>, Status>>,
    /// The request, once sent.
    pub(crate) seen: Seen,
}

type FakeBody = http_body_util::StreamBody<
    futures::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, Status>>>,
>;

impl tower_service::Service<http::Request<tonic::body::Body>> for FakeDaemon {
    type Response = http::Response<FakeBody>;
    type Error = Status;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Status>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Status>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let frames = std::mem::take(&mut self.frames);
        let (status, headers, seen) = (self.status, self.headers.clone(), self.seen.clone());
        Box::pin(async move {
            let (parts, mut body) = request.into_parts();
            let mut data = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(bytes) = frame?.into_data() {
                    data.push(bytes);
                }
            }
            *seen.lock().expect("lock") = Some((parts, data));
            let mut response = http::Response::builder().status(status);
            for (name, value) in &headers {
                response = response.header(*name, *value);
            }
            Ok(response
                .body(http_body_util::StreamBody::new(futures::stream::iter(
                    frames,
                )))
                .expect("a response"))
        })
    }
}

/// A daemon that answers 200 with `headers` and `frames`.
pub(crate) fn daemon(
    headers: Vec<(&'static str, &'static str)>,
    frames: Vec<Result<http_body::Frame<Bytes>, Status>>,
) -> FakeDaemon {
    FakeDaemon {
        status: http::StatusCode::OK,
        headers,
        frames,
        seen: Default::default(),
    }
}

/// Trailers carrying `grpc-status: status`.
pub(crate) fn trailers(status: &'static str) -> Result<http_body::Frame<Bytes>, Status> {
    let mut map = http::HeaderMap::new();
    map.insert("grpc-status", http::HeaderValue::from_static(status));
    Ok(http_body::Frame::trailers(map))
}
