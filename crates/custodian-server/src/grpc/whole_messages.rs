//! `Ledger.AppendStream`'s request body, refused when it stops inside a gRPC message.
//!
//! tonic's reader of a stream of messages takes a body that ends right after a message's
//! five-byte prefix, before any of the message's bytes, for a clean end: the message is dropped
//! and the call ends OK. (A body that ends after some of the message's bytes gets
//! "Unexpected EOF".) For `AppendStream` that would answer OK to a writer whose last request never
//! arrived, found by the fuzz target `grpc_streams`. The daemon's own readers (`cas_upload.rs`,
//! `unary.rs`) hand on whole messages or refuse the call; [`LedgerRoutes`] gives tonic's reader the
//! same: [`WholeMessages`] follows the prefixes as the bytes pass, without copying them, and where
//! a body stops inside a message it hands on an error in place of the end.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use custodian_proto::grpc_wire::PREFIX;
use custodian_proto::ledger::v1::ledger_server::LedgerServer;
use http_body::Frame;
use tonic::Status;
use tonic::server::NamedService;

use super::ledger::LedgerService;

/// The path of the one ledger method whose request is a stream.
const APPEND_STREAM_PATH: &str = "/custodian.ledger.v1.Ledger/AppendStream";

/// A request body of gRPC messages that ends in an error, not cleanly, if it stops inside one.
pub struct WholeMessages {
    body: tonic::body::Body,
    /// The method, for the error.
    method: &'static str,
    /// The current message's prefix, as far as it has arrived.
    prefix: [u8; PREFIX],
    /// How much of the prefix has arrived; `PREFIX` once it is whole.
    prefix_len: usize,
    /// The bytes of the current message still to come, once its prefix is whole.
    owed: u64,
    /// Set once the end, or the error in its place, has been handed on.
    done: bool,
}

impl WholeMessages {
    /// Follows `body`'s messages for a call of `method`.
    pub fn new(body: tonic::body::Body, method: &'static str) -> Self {
        WholeMessages {
            body,
            method,
            prefix: [0; PREFIX],
            prefix_len: 0,
            owed: 0,
            done: false,
        }
    }

    /// Moves the count past `data`.
    fn pass(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.prefix_len < PREFIX {
                let take = (PREFIX - self.prefix_len).min(data.len());
                self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
                self.prefix_len += take;
                data = &data[take..];
                if self.prefix_len == PREFIX {
                    let len = &self.prefix[1..];
                    self.owed = u64::from(u32::from_be_bytes([len[0], len[1], len[2], len[3]]));
                }
            } else {
                let take = self.owed.min(data.len() as u64);
                self.owed -= take;
                data = &data[take as usize..];
            }
            // A message is whole once its prefix is and no byte is owed (at once, for an empty
            // message); the next prefix begins.
            if self.prefix_len == PREFIX && self.owed == 0 {
                self.prefix_len = 0;
            }
        }
    }

    /// Whether the bytes so far end between messages.
    fn between(&self) -> bool {
        self.prefix_len == 0
    }

    /// The refusal of a body that stopped inside a message, counted as the daemon's own
    /// readers count it.
    fn cut_short(&self) -> Status {
        if self.prefix_len < PREFIX {
            super::unary::ended_inside(self.method, self.prefix_len as u64, PREFIX as u64)
        } else {
            let len = &self.prefix[1..];
            let whole =
                PREFIX as u64 + u64::from(u32::from_be_bytes([len[0], len[1], len[2], len[3]]));
            super::unary::ended_inside(self.method, whole - self.owed, whole)
        }
    }
}

impl http_body::Body for WholeMessages {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match std::task::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.pass(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(status)) => {
                self.done = true;
                Poll::Ready(Some(Err(status)))
            }
            None => {
                self.done = true;
                if self.between() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(self.cut_short())))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.between() && self.body.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The ledger's gRPC service: tonic's generated one, with `AppendStream`'s request body read
/// through [`WholeMessages`].
#[derive(Clone)]
pub struct LedgerRoutes {
    generated: LedgerServer<LedgerService>,
}

impl LedgerRoutes {
    /// Serves `generated`.
    pub fn new(generated: LedgerServer<LedgerService>) -> Self {
        LedgerRoutes { generated }
    }
}

impl NamedService for LedgerRoutes {
    const NAME: &'static str = <LedgerServer<LedgerService> as NamedService>::NAME;
}

type Generated = LedgerServer<LedgerService>;

impl tower_service::Service<http::Request<tonic::body::Body>> for LedgerRoutes {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = <Generated as tower_service::Service<http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        <Generated as tower_service::Service<http::Request<tonic::body::Body>>>::poll_ready(
            &mut self.generated,
            cx,
        )
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let request = if request.uri().path() == APPEND_STREAM_PATH {
            request.map(|body| tonic::body::Body::new(WholeMessages::new(body, "AppendStream")))
        } else {
            request
        };
        self.generated.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::super::unary::testing::body_of;
    use super::*;
    use http_body_util::BodyExt as _;

    /// Reads a body delivering `frames` through [`WholeMessages`]: the bytes handed on, and the
    /// error in place of the end, if any.
    fn read(frames: Vec<Bytes>) -> (Vec<u8>, Option<Status>) {
        let mut body = WholeMessages::new(body_of(frames, None), "AppendStream");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let mut bytes = Vec::new();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => bytes.extend_from_slice(frame.data_ref().expect("data")),
                    Err(status) => {
                        assert!(body.frame().await.is_none(), "the error ends the body");
                        return (bytes, Some(status));
                    }
                }
            }
            (bytes, None)
        })
    }

    /// Three messages (of 3, 0 and 300 bytes), framed.
    fn messages() -> Vec<u8> {
        let mut body = Vec::new();
        for len in [3usize, 0, 300] {
            body.push(0);
            body.extend_from_slice(&(len as u32).to_be_bytes());
            body.extend(std::iter::repeat_n(0x2a, len));
        }
        body
    }

    #[test]
    fn whole_messages_pass_unchanged_however_the_frames_cut_them() {
        let body = messages();
        for step in [1, 2, 4, 5, 7, 64, body.len()] {
            let frames: Vec<Bytes> = body.chunks(step).map(Bytes::copy_from_slice).collect();
            let (bytes, error) = read(frames);
            assert_eq!(bytes, body, "cut every {step} bytes");
            assert!(error.is_none(), "cut every {step} bytes: {error:?}");
        }
        let (bytes, error) = read(Vec::new());
        assert!(
            bytes.is_empty() && error.is_none(),
            "no messages at all: {error:?}"
        );
    }

    #[test]
    fn a_body_that_stops_inside_a_message_ends_in_an_error_that_says_where() {
        let body = messages();
        // Where each message begins: a body cut there is whole.
        let boundaries = [0, 8, 13, body.len()];
        for end in 0..=body.len() {
            let (bytes, error) = read(vec![Bytes::copy_from_slice(&body[..end])]);
            assert_eq!(
                bytes,
                body[..end],
                "the bytes before the end pass unchanged"
            );
            match error {
                None => assert!(boundaries.contains(&end), "cut at {end}: no error"),
                Some(status) => {
                    assert!(!boundaries.contains(&end), "cut at {end}: {status:?}");
                    assert_eq!(status.code(), tonic::Code::Internal);
                    assert!(
                        status
                            .message()
                            .starts_with("the AppendStream stream ended inside"),
                        "{status:?}"
                    );
                }
            }
        }
        // Right after the third message's prefix: none of its 300 bytes.
        let (_, error) = read(vec![Bytes::copy_from_slice(&body[..18])]);
        let status = error.expect("refused");
        assert_eq!(
            status.message(),
            "the AppendStream stream ended inside a message: 5 of its 305 bytes arrived"
        );
        let (_, error) = read(vec![Bytes::copy_from_slice(&body[..15])]);
        assert_eq!(
            error.expect("refused").message(),
            "the AppendStream stream ended inside a message: 2 of its 5 bytes arrived"
        );
    }
}
