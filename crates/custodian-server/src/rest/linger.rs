//! Lingering reads: a request body that a handler refused, or stopped reading, is read to its end
//! (up to a bound) before the answer goes out. [`on_refusal`] does it for every REST request.
//!
//! A server that answers and closes while the client is still sending has bytes unread in its
//! socket, so its kernel resets the connection; the client's next write then fails, and a client
//! that stops at a failed write (curl does, at times) never reads the answer it was sent. RFC 9112
//! §9.6 names this the TCP reset problem and asks servers to go on reading before they close.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::extract::Request;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt as _};

/// How much of a refused body is read before the answer goes out. Past it the connection is
/// closed anyway: the bound keeps a refusal from costing the daemon a whole upload.
const LINGER_BYTES: usize = 8 << 20;

/// How long a refused body is read before the answer goes out.
const LINGER_FOR: Duration = Duration::from_secs(5);

/// Middleware for every REST route: the handler gets the request's body on loan, and when its
/// answer is not a success, what it left unread is read before the answer goes out. A success
/// read its body whole, or had none.
pub(super) async fn on_refusal(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers.clone();
    let (body, unread) = lend(body);
    let response = next
        .run(Request::from_parts(parts, Body::from_stream(body)))
        .await;
    if !response.status().is_success() {
        unread.linger(&headers).await;
    }
    response
}

/// What a lent body leaves behind: the rest of its stream, and whether any of it was read.
#[derive(Default)]
struct Left {
    stream: Option<BodyDataStream>,
    polled: bool,
}

/// A request body lent to code that may drop it unread; whatever it does not read comes back to
/// the [`Unread`] it was lent with.
struct Lent {
    stream: Option<BodyDataStream>,
    /// Whether the borrower read at all; told to the [`Unread`] with the stream, on drop, so that
    /// no poll of an upload's body takes a lock.
    polled: bool,
    home: Arc<Mutex<Left>>,
}

/// The rest of a lent body once the [`Lent`] is dropped.
struct Unread(Arc<Mutex<Left>>);

/// Lends `body` out; after the borrower is done, [`Unread::linger`] reads what it left.
fn lend(body: Body) -> (Lent, Unread) {
    let home = Arc::new(Mutex::new(Left::default()));
    let lent = Lent {
        stream: Some(body.into_data_stream()),
        polled: false,
        home: home.clone(),
    };
    (lent, Unread(home))
}

impl Stream for Lent {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.polled = true;
        match self.stream.as_mut() {
            Some(stream) => stream.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut left = self.home.lock().unwrap_or_else(PoisonError::into_inner);
        left.stream = self.stream.take();
        left.polled = self.polled;
    }
}

impl Unread {
    /// Reads what the borrower left of the body, up to [`LINGER_BYTES`] and [`LINGER_FOR`], so
    /// that the answer reaches a client that sends its whole body before it reads. A client that
    /// asked to be told before it sends (`Expect: 100-continue`) and was never asked for the body
    /// sends nothing, and reading would only invite the bytes it was spared.
    async fn linger(self, headers: &HeaderMap) {
        let (stream, polled) = {
            let mut left = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            (left.stream.take(), left.polled)
        };
        let Some(mut stream) = stream else { return };
        let waits_for_continue = headers
            .get(header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if waits_for_continue && !polled {
            return;
        }
        let read = async {
            let mut read = 0usize;
            while let Some(Ok(chunk)) = stream.next().await {
                read += chunk.len();
                if read > LINGER_BYTES {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_FOR, read).await;
    }
}
