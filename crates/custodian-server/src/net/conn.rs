//! Connection limits for both ports: at most `max_connections` open at once (the rest are
//! closed as soon as they are accepted, with a warning), each closed after `idle_timeout`
//! without a byte in either direction; on the REST port request headers must arrive within
//! `header_timeout` (slow-loris) and the TLS handshake within the same. Accept errors such as
//! running out of file descriptors are logged and retried: they never stop the daemon.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use custodian_proto::coalesce::Coalesced;

/// The limits every connection is held to.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Connections open at once, per port.
    pub max_connections: usize,
    /// A connection with no byte read or written for this long is closed.
    pub idle_timeout: Duration,
    /// REST: the time a client has to send a request's headers (and to finish TLS).
    pub header_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 4096,
            idle_timeout: Duration::from_secs(300),
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Admits connections up to the limit.
#[derive(Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    limits: ConnLimits,
    refused: Arc<AtomicU64>,
    port: &'static str,
}

impl Gate {
    /// A gate for one port (`grpc` or `rest`, for the log).
    pub fn new(limits: ConnLimits, port: &'static str) -> Self {
        Gate {
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            refused: Arc::default(),
            port,
        }
    }

    /// Admits an accepted connection, or closes it when the limit is reached.
    fn admit(&self, stream: TcpStream) -> Option<Guarded<TcpStream>> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(%err, "cannot set TCP_NODELAY on a connection");
                }
                Some(Guarded::new(stream, permit, self.limits.idle_timeout))
            }
            Err(_) => {
                // One warning per 1,000 refusals: a flood must not become a flood of logs.
                let n = self.refused.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    tracing::warn!(
                        port = self.port,
                        limit = self.limits.max_connections,
                        refused = n + 1,
                        "connection limit reached; closing new connections (--max-connections)"
                    );
                }
                None
            }
        }
    }

    /// Accepts the next admitted connection; accept errors (for example, no file descriptors
    /// left) are logged and retried after a pause.
    pub async fn accept(&self, listener: &TcpListener) -> Guarded<TcpStream> {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if let Some(guarded) = self.admit(stream) {
                        return guarded;
                    }
                }
                Err(err) => {
                    tracing::warn!(port = self.port, %err, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// A connection that holds a slot of its port's limit, times out when idle, and sends each
/// answer in as few writes as it can ([`Coalesced`]).
pub struct Guarded<T> {
    inner: Coalesced<T>,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<T> Guarded<T> {
    fn new(inner: T, permit: OwnedSemaphorePermit, idle: Duration) -> Self {
        let now = Instant::now();
        Guarded {
            inner: Coalesced::new(inner),
            _permit: permit,
            idle,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    /// Counts a write that moved bytes as activity.
    fn wrote(&mut self, result: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = &result
            && *n > 0
        {
            self.last = Instant::now();
        }
        result
    }

    /// Err(TimedOut) once the connection has been idle too long; otherwise arms the timer.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let deadline = self.last + self.idle;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for longer than --idle-timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.last = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.poll_idle(cx) {
                Poll::Ready(err) => Poll::Ready(err),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Guarded<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.get_ref().connect_info()
    }
}

/// The gRPC port's connections, admitted by `gate`.
pub fn grpc_incoming(
    listener: TcpListener,
    gate: Gate,
) -> impl tokio_stream::Stream<Item = io::Result<Guarded<TcpStream>>> {
    futures::stream::unfold((listener, gate), |(listener, gate)| async move {
        let conn = gate.accept(&listener).await;
        Some((Ok(conn), (listener, gate)))
    })
}

/// Serves the REST router on `listener` (over TLS when `tls` is given) until `stop` turns true,
/// then lets open connections finish their requests.
pub async fn serve_rest(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    gate: Gate,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let header_timeout = gate.limits.header_timeout;
    loop {
        let conn = tokio::select! {
            conn = gate.accept(&listener) => conn,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let app = app.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            builder.http2().timer(TokioTimer::new());
            let service = TowerToHyperService::new(app);
            let result = match acceptor {
                None => {
                    watcher
                        .watch(builder.serve_connection_with_upgrades(TokioIo::new(conn), service))
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(conn)).await {
                        Ok(Ok(tls)) => {
                            watcher
                                .watch(
                                    builder
                                        .serve_connection_with_upgrades(TokioIo::new(tls), service),
                                )
                                .await
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(err) = result {
                tracing::debug!(%err, "REST connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
