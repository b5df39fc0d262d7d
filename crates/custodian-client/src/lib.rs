//! Connecting to a Custodian daemon over gRPC, the one way every client in the workspace does it:
//! the `custodian` CLI, the end-to-end tests and the benchmarks.
//!
//! A [`Target`] says where the daemon is and who is asking; [`Client::connect`] checks the address
//! (a scheme is required, and `https://` needs a CA certificate), opens one HTTP/2 connection with
//! windows and frames sized for bulk transfers, and attaches the bearer token to every request
//! through [`BearerAuth`]. The service clients it hands out all share [`MESSAGE_LIMIT`].
//! [`describe_status`] turns a `tonic::Status` into a sentence for a person.

use std::path::PathBuf;

#[cfg(test)]
mod fake;
pub mod get;
pub mod upload;

use custodian_proto::cas::v1::content_store_client::ContentStoreClient;
use custodian_proto::coalesce::Coalesced;
use custodian_proto::evidence::v1::evidence_client::EvidenceClient;
use custodian_proto::ledger::v1::ledger_client::LedgerClient;
use custodian_proto::registry::v1::registry_client::RegistryClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig};

/// A gRPC status, as every client call returns it.
pub use tonic::Status;
/// The HTTP/2 connection under every client (tonic's), for health and reflection clients.
pub use tonic::transport::Channel;

/// The largest gRPC message a client sends or accepts, on every service. A badge bundle backed by
/// a thousand runs is a few MiB; the daemon's own limit (`serve --max-message-size`) is 8 MiB
/// by default, so this only guards against a peer that is not a Custodian daemon.
pub const MESSAGE_LIMIT: usize = 64 << 20;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address lacks `http://` or `https://`, the most common slip.
    #[error(
        "--server {0:?} has no scheme: did you mean http://{0}? (https://{0} for a daemon serving TLS)"
    )]
    NoScheme(String),
    /// The address is not a URI.
    #[error("invalid --server address {server:?}")]
    InvalidAddress {
        /// The address as given.
        server: String,
        /// Why it does not parse.
        #[source]
        source: tonic::codegen::http::uri::InvalidUri,
    },
    /// An `https://` address was given without a CA certificate to trust.
    #[error("{0} is https: give the CA certificate to trust with --ca-cert (CUSTODIAN_CA_CERT)")]
    HttpsWithoutCa(String),
    /// The CA certificate file could not be read.
    #[error("reading --ca-cert {path}")]
    ReadCaCert {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The TLS settings were refused.
    #[error("configuring TLS for the daemon connection")]
    Tls(#[source] tonic::transport::Error),
    /// Nothing answered at the address.
    #[error("cannot reach the daemon at {server} (is `custodian serve` running?)")]
    Unreachable {
        /// The address.
        server: String,
        /// The transport failure.
        #[source]
        source: tonic::transport::Error,
    },
    /// The token cannot travel in a gRPC header.
    #[error("--token contains characters not allowed in gRPC metadata")]
    InvalidToken,
}

/// Where the daemon is, and who is asking.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// The daemon's gRPC address, `http://host:port` or `https://host:port`.
    pub server: String,
    /// The API token, sent as `authorization: Bearer …`; empty counts as none.
    pub token: Option<String>,
    /// A PEM CA certificate to trust for an `https://` address.
    pub ca_cert: Option<PathBuf>,
}

impl Target {
    /// A plain-text target with an optional token.
    pub fn new(server: impl Into<String>, token: Option<&str>) -> Self {
        Target {
            server: server.into(),
            token: token.map(str::to_owned),
            ca_cert: None,
        }
    }
}

/// Adds the caller's token to every request that does not carry its own authorization.
#[derive(Clone, Debug, Default)]
pub struct BearerAuth(Option<MetadataValue<Ascii>>);

impl BearerAuth {
    /// Sends `Bearer TOKEN` with every request; `None` or an empty token sends nothing.
    pub fn new(token: Option<&str>) -> Result<Self, ClientError> {
        match token.filter(|t| !t.is_empty()) {
            Some(token) => format!("Bearer {token}")
                .parse()
                .map(|value| BearerAuth(Some(value)))
                .map_err(|_| ClientError::InvalidToken),
            None => Ok(BearerAuth(None)),
        }
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0
            && !request.metadata().contains_key("authorization")
        {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connection to the daemon that authenticates as the caller.
pub type Conn = InterceptedService<Channel, BearerAuth>;

/// One connection to a daemon, and the service clients on it. Cloning shares the connection.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    conn: Conn,
}

impl Client {
    /// Connects to `target`, sending its token (if any) with every request.
    pub async fn connect(target: &Target) -> Result<Self, ClientError> {
        let auth = BearerAuth::new(target.token.as_deref())?;
        Ok(Client::on(connect_channel(target).await?, auth))
    }

    /// The service clients over an open channel, with `auth` on every request.
    pub fn on(channel: Channel, auth: BearerAuth) -> Self {
        Client {
            conn: InterceptedService::new(channel.clone(), auth),
            channel,
        }
    }

    /// The same connection with another token (or none): one caller acting as several.
    pub fn with_token(&self, token: Option<&str>) -> Result<Self, ClientError> {
        Ok(Client::on(self.channel.clone(), BearerAuth::new(token)?))
    }

    /// The connection without the token, for health and reflection clients.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The authenticated connection, for a generated client this crate does not wrap.
    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// The content store.
    pub fn store(&self) -> ContentStoreClient<Conn> {
        ContentStoreClient::new(self.conn())
            .max_decoding_message_size(MESSAGE_LIMIT)
            .max_encoding_message_size(MESSAGE_LIMIT)
    }

    /// The ledger.
    pub fn ledger(&self) -> LedgerClient<Conn> {
        LedgerClient::new(self.conn())
            .max_decoding_message_size(MESSAGE_LIMIT)
            .max_encoding_message_size(MESSAGE_LIMIT)
    }

    /// The registry.
    pub fn registry(&self) -> RegistryClient<Conn> {
        RegistryClient::new(self.conn())
            .max_decoding_message_size(MESSAGE_LIMIT)
            .max_encoding_message_size(MESSAGE_LIMIT)
    }

    /// Evidence: attesters, runs, scans, badges.
    pub fn evidence(&self) -> EvidenceClient<Conn> {
        EvidenceClient::new(self.conn())
            .max_decoding_message_size(MESSAGE_LIMIT)
            .max_encoding_message_size(MESSAGE_LIMIT)
    }
}

/// Opens a channel to `target` without attaching a token (health and reflection clients need
/// nothing more).
pub async fn connect_channel(target: &Target) -> Result<Channel, ClientError> {
    let server = &target.server;
    if !server.contains("://") {
        return Err(ClientError::NoScheme(server.clone()));
    }
    let mut endpoint =
        Channel::from_shared(server.clone()).map_err(|source| ClientError::InvalidAddress {
            server: server.clone(),
            source,
        })?;
    if server.starts_with("https://") {
        let Some(path) = &target.ca_cert else {
            return Err(ClientError::HttpsWithoutCa(server.clone()));
        };
        let pem = std::fs::read(path).map_err(|source| ClientError::ReadCaCert {
            path: path.clone(),
            source,
        })?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .map_err(ClientError::Tls)?;
    }
    endpoint
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        // Large frames from the daemon mean fewer frames and system calls per blob.
        .max_frame_size(Some(1 << 20))
        .connect_with_connector(Connect)
        .await
        .map_err(|source| ClientError::Unreachable {
            server: server.clone(),
            source,
        })
}

/// Opens the TCP connection under a channel, as tonic's own connector does (`TCP_NODELAY` on;
/// TLS, when the address asks for it, is laid over it by tonic), with small writes coalesced: a
/// unary request otherwise leaves as three writes (its headers, its message, and an empty frame
/// that ends it), and the daemon wakes for each ([`custodian_proto::coalesce`]).
#[derive(Clone, Copy, Debug)]
struct Connect;

impl tower_service::Service<http::Uri> for Connect {
    type Response = hyper_util::rt::TokioIo<Coalesced<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("the address {uri} names no host"),
                )
            })?;
            // An IPv6 literal comes bracketed, as it is written in a URI.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri
                .port_u16()
                .unwrap_or(if uri.scheme_str() == Some("https") {
                    443
                } else {
                    80
                });
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(Coalesced::new(tcp)))
        })
    }
}

/// A gRPC status as a sentence for a person: the code in words, then the daemon's message.
pub fn describe_status(status: &tonic::Status) -> String {
    // An HTTP server that is not a gRPC server (Custodian's REST port, a proxy) answers with a
    // body tonic cannot read as gRPC frames; say what the address is instead of echoing that.
    let message = status.message();
    if message.contains("invalid compression flag")
        || message.contains("invalid content type")
        || message.contains("Content-Type")
    {
        return format!(
            "the daemon address answered as an HTTP server, not a gRPC one ({message}): is --server Custodian's REST port? --server is the gRPC port (serve --listen, default 7311); the REST port (serve --rest-listen, default 7312) is for curl and `custodian datapack --rest`"
        );
    }
    format!("{}: {}", code_name(status.code()), message)
}

/// A gRPC code in lower-case words.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown error",
        InvalidArgument => "invalid argument",
        DeadlineExceeded => "deadline exceeded",
        NotFound => "not found",
        AlreadyExists => "already exists",
        PermissionDenied => "permission denied",
        ResourceExhausted => "resource exhausted",
        FailedPrecondition => "failed precondition",
        Aborted => "aborted",
        OutOfRange => "out of range",
        Unimplemented => "unimplemented",
        Internal => "internal error",
        Unavailable => "unavailable",
        DataLoss => "data loss",
        Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_scheme_is_refused_with_the_fix() {
        let err = ClientError::NoScheme("127.0.0.1:7311".into()).to_string();
        assert!(err.contains("did you mean http://127.0.0.1:7311?"), "{err}");
    }

    #[test]
    fn an_empty_token_sends_no_header_and_a_bad_one_is_refused() {
        let mut none = BearerAuth::new(Some("")).expect("empty token");
        let request = tonic::service::Interceptor::call(&mut none, tonic::Request::new(()))
            .expect("intercept");
        assert!(request.metadata().get("authorization").is_none());
        let mut some = BearerAuth::new(Some("cus_abc")).expect("token");
        let request = tonic::service::Interceptor::call(&mut some, tonic::Request::new(()))
            .expect("intercept");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .map(|v| v.to_str().ok()),
            Some(Some("Bearer cus_abc"))
        );
        assert!(matches!(
            BearerAuth::new(Some("line\nbreak")),
            Err(ClientError::InvalidToken)
        ));
    }

    #[test]
    fn a_request_with_its_own_authorization_keeps_it() {
        let mut auth = BearerAuth::new(Some("caller")).expect("token");
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert("authorization", "Bearer other".parse().expect("ascii"));
        let request = tonic::service::Interceptor::call(&mut auth, request).expect("intercept");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .map(|v| v.to_str().ok()),
            Some(Some("Bearer other"))
        );
    }

    #[test]
    fn a_status_reads_as_its_code_and_message() {
        let status = tonic::Status::not_found("blob sha256:00 is not in custody");
        assert_eq!(
            describe_status(&status),
            "not found: blob sha256:00 is not in custody"
        );
        let http = tonic::Status::unknown("invalid content type: text/html");
        assert!(describe_status(&http).contains("REST port"));
    }

    /// Connects with [`Connect`] to a listener bound at `bind`, through the address `uri_host`
    /// names, and checks that the listener accepted it and that a write through it arrives.
    async fn connects_to(bind: &str, uri_host: &str) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        use tower_service::Service as _;
        let listener = tokio::net::TcpListener::bind(bind).await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let uri: http::Uri = format!("http://{uri_host}:{port}").parse().expect("uri");
        let (conn, accepted) = tokio::join!(Connect.call(uri), listener.accept());
        let mut conn = conn.expect("connect").into_inner();
        let (mut server, _) = accepted.expect("accept");
        assert!(
            conn.get_ref().nodelay().expect("nodelay"),
            "TCP_NODELAY is on"
        );
        conn.write_all(b"hello").await.expect("write");
        conn.flush().await.expect("flush");
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn the_connector_reaches_ipv4_names_and_bracketed_ipv6_literals() {
        connects_to("127.0.0.1:0", "127.0.0.1").await;
        connects_to("127.0.0.1:0", "localhost").await;
        // Not every machine has IPv6 on loopback; where it has, its bracketed literal connects.
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            connects_to("[::1]:0", "[::1]").await;
        }
    }

    #[tokio::test]
    async fn the_connector_refuses_an_address_without_a_host_and_says_so() {
        use tower_service::Service as _;
        let err = Connect
            .call(http::Uri::from_static("/no-host"))
            .await
            .expect_err("no host");
        assert!(err.to_string().contains("names no host"), "{err}");
    }
}
