//! `custodian serve`: the daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use custodian_server::grpc::local_put::LocalPutConfig;
use custodian_server::{CasLimits, ServerConfig};
use tracing_subscriber::EnvFilter;

/// The long help of `custodian serve`.
pub const LONG_ABOUT: &str = "Run the Custodian daemon.\n\n\
It serves the gRPC content store (custodian.cas.v1.ContentStore), the provenance ledger \
(custodian.ledger.v1.Ledger), the package registry (custodian.registry.v1.Registry), attestations and badges \
(custodian.evidence.v1.Evidence), gRPC health \
(grpc.health.v1) and server reflection, so `grpcurl -plaintext 127.0.0.1:7311 list` works; and \
the registry's REST API on --rest-listen (GET /openapi.yaml describes it).\n\n\
Access: API tokens from `custodian token create` (stored as hashes in DATA_DIR/tokens.json, \
reloaded when it changes) carry scopes (read, publish, attest, admin) over package-name \
namespaces. Without a token a client may read public content only; writes need a token. \
With --tls-cert and --tls-key both ports serve TLS.\n\n\
Storage is the embedded RocksDB under --data-dir unless --storage names an object store URL. \
The ledger lives in DATA_DIR/ledger; its Ed25519 signing key is generated on first start \
into DATA_DIR/log-key (mode 0600) — back it up, and publish the verifier key that \
`custodian log key` prints. Once listening it prints `custodian listening on ADDRESS` and `custodian rest listening on ADDRESS` on standard output. SIGTERM or \
Ctrl-C stops it: new requests are refused, in-flight ones get --shutdown-grace to finish, and \
unfinished uploads are discarded (also after a crash, at the next start).";

/// Options of `custodian serve`. Every flag has an environment variable.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port
    #[arg(long, env = "CUSTODIAN_LISTEN", default_value = "127.0.0.1:7311")]
    listen: SocketAddr,

    /// Address of the REST API (seed endpoints under /wrappers); port 0 picks a free port
    #[arg(long, env = "CUSTODIAN_REST_LISTEN", default_value = "127.0.0.1:7312")]
    rest_listen: SocketAddr,

    /// PEM certificate chain: serve TLS on both ports (with --tls-key)
    #[arg(
        long,
        env = "CUSTODIAN_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert
    #[arg(
        long,
        env = "CUSTODIAN_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,

    #[command(flatten)]
    store: crate::args::StoreArgs,

    /// Create the data directory when there is none (a new registry with a new log key);
    /// without it, a missing data directory is an error
    #[arg(long, env = "CUSTODIAN_INIT")]
    init: bool,

    /// Storage block size in bytes: the unit of storage and of read verification
    #[arg(long, env = "CUSTODIAN_BLOCK_SIZE", default_value_t = 1 << 20)]
    block_size: usize,

    /// Most data bytes in one BatchPut or BatchGet call
    #[arg(long, env = "CUSTODIAN_MAX_BATCH_BYTES", default_value_t = 4 << 20)]
    max_batch_bytes: u64,

    /// Largest gRPC message accepted, in bytes
    #[arg(long, env = "CUSTODIAN_MAX_MESSAGE_BYTES", default_value_t = 8 << 20)]
    max_message_bytes: usize,

    /// Connections open at once on each port; beyond it new connections are closed at once
    #[arg(long, env = "CUSTODIAN_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,

    /// Close a connection after this long without a byte in either direction (e.g. 5m)
    #[arg(long, env = "CUSTODIAN_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,

    /// REST: the time a client has to send a request's headers, and to finish TLS
    #[arg(long, env = "CUSTODIAN_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,

    /// Abandon an upload (gRPC Put, REST hosted data pack) that sends nothing for this long
    #[arg(long, env = "CUSTODIAN_UPLOAD_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    upload_idle_timeout: Duration,

    /// How long in-flight requests may finish after SIGTERM or Ctrl-C (e.g. 30s, 2m)
    #[arg(long, env = "CUSTODIAN_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,

    /// The ledger's origin (the first line of every checkpoint and the log key's name), used
    /// when the log key is generated on first start; e.g. registry.example.com/ledger.
    /// Default: custodian.local/ledger-<random>
    #[arg(long, env = "CUSTODIAN_LOG_ORIGIN")]
    log_origin: Option<String>,

    /// Bearer token that authorizes Ledger.Append for tools and tests; unset disables Append
    #[arg(long, env = "CUSTODIAN_APPEND_TOKEN", hide_env_values = true)]
    append_token: Option<String>,

    /// Most ledger entries committed in one batch (one fsync, one checkpoint signature)
    #[arg(long, env = "CUSTODIAN_LEDGER_MAX_BATCH", default_value_t = 4096)]
    ledger_max_batch: usize,

    /// How long a ledger batch waits for more appends after its first (e.g. 0s, 2ms); batches
    /// also form on their own while the previous one is being written
    #[arg(long, env = "CUSTODIAN_LEDGER_BATCH_WINDOW", default_value = "0s", value_parser = humantime::parse_duration)]
    ledger_batch_window: Duration,

    /// Evidence older than this sends a badge to review (e.g. 30d, 12h)
    #[arg(long, env = "CUSTODIAN_BADGE_MAX_AGE", default_value = "30d", value_parser = humantime::parse_duration)]
    badge_max_age: Duration,

    /// License ids of this registry that count as machine-readable licenses next to SPDX
    /// expressions and LicenseRef- (comma-separated or repeated); each badge lists them
    #[arg(
        long = "registry-license",
        env = "CUSTODIAN_REGISTRY_LICENSES",
        value_delimiter = ',',
        value_name = "ID",
        default_values_t = custodian_server::registry::DEFAULT_REGISTRY_LICENSES.map(String::from)
    )]
    registry_licenses: Vec<String>,

    /// An external scanner, NAME=COMMAND (repeatable). The command runs with `sh -c`, reads the
    /// content as a tar stream on stdin (CUSTODIAN_SCAN_NAME, _VERSION, _TARGET and _ROOT in its
    /// environment) and writes {"verdict": ..., "findings": [{file, offset, rule, severity,
    /// message}]} or a findings array on stdout. Every publication and hosted data pack is
    /// queued for it, and so is everything it has no verdict for when the daemon starts; its
    /// verdicts are recorded as scanner external:NAME
    #[arg(long = "scanner", value_name = "NAME=COMMAND", value_parser = crate::args::parse_key_value)]
    scanners: Vec<(String, String)>,

    /// How long one external scanner attempt may run before it is killed
    #[arg(long, env = "CUSTODIAN_SCANNER_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    scanner_timeout: Duration,

    /// Attempts per external scan before the verdict is recorded as error
    #[arg(long, env = "CUSTODIAN_SCANNER_ATTEMPTS", default_value_t = 3)]
    scanner_attempts: u32,

    /// The wait before retrying a failed external scan, doubled for each further attempt
    #[arg(long, env = "CUSTODIAN_SCANNER_BACKOFF", default_value = "2s", value_parser = humantime::parse_duration)]
    scanner_backoff: Duration,

    /// Also write the ledger as C2SP tlog-tiles to this object store URL (file:///dir,
    /// s3://bucket/prefix) as entries are integrated, so a static server or CDN serves the log
    #[arg(long, env = "CUSTODIAN_TILES_TO", value_name = "URL")]
    tiles_to: Option<String>,

    /// Object store option KEY=VALUE for --tiles-to, e.g. aws_endpoint=http://127.0.0.1:9000
    /// (repeatable)
    #[arg(long = "tiles-option", value_name = "KEY=VALUE", value_parser = crate::args::parse_key_value, requires = "tiles_to")]
    tiles_options: Vec<(String, String)>,

    /// Publish checkpoints only once witnesses cosigned them: a policy file of `witness NAME
    /// VKEY URL`, `group NAME all|any|N MEMBER...` and `quorum NAME` lines (Sigsum/Tessera
    /// syntax). Checkpoints are served, mirrored and put in receipts only with the quorum's
    /// cosignatures; appends are answered once one covering them is published
    #[arg(long, env = "CUSTODIAN_WITNESS_POLICY", value_name = "FILE")]
    witness_policy: Option<PathBuf>,

    /// How long one request to a witness may take
    #[arg(long, env = "CUSTODIAN_WITNESS_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, requires = "witness_policy")]
    witness_timeout: Duration,

    /// What an append does while the witness quorum is unreachable: `wait` for it (the entry
    /// is durable either way), or `uncosigned`: after --witness-patience, answer with the
    /// log-signed checkpoint alone (verifiers holding the policy will refuse that receipt)
    #[arg(long, env = "CUSTODIAN_WITNESS_UNREACHABLE", default_value = "wait", value_parser = ["wait", "uncosigned"], requires = "witness_policy")]
    witness_unreachable: String,

    /// With --witness-unreachable uncosigned: how long an append waits for the quorum first
    #[arg(long, env = "CUSTODIAN_WITNESS_PATIENCE", default_value = "30s", value_parser = humantime::parse_duration, requires = "witness_policy")]
    witness_patience: Duration,

    /// OCI repositories under this name prefix are private (repeatable; `*` for all): readable
    /// only with a read grant, and to anyone else exactly like a repository that does not exist
    #[arg(
        long = "oci-private",
        env = "CUSTODIAN_OCI_PRIVATE",
        value_name = "PREFIX",
        value_delimiter = ','
    )]
    oci_private: Vec<String>,

    /// How long a resumable upload session (gRPC, tus or OCI) may sit idle before it is removed
    /// with its bytes
    #[arg(long, alias = "oci-upload-expiry", env = "CUSTODIAN_UPLOAD_EXPIRY", default_value = "24h", value_parser = humantime::parse_duration)]
    upload_expiry: Duration,

    /// Garbage collection's grace period: blobs uploaded, or acknowledged to a put, within it
    /// are kept (at least the upload expiry)
    #[arg(long, env = "CUSTODIAN_GC_GRACE", default_value = "7d", value_parser = humantime::parse_duration)]
    gc_grace: Duration,

    /// Collect garbage in the daemon this often, e.g. 1h (default: only when `custodian gc`
    /// asks)
    #[arg(long, env = "CUSTODIAN_GC_EVERY", value_parser = humantime::parse_duration)]
    gc_every: Option<Duration>,

    /// Also set each legal hold in the storage service: an S3 Object Lock legal hold on the
    /// held blobs' objects (needs an s3:// --storage whose bucket has Object Lock enabled, and
    /// static credentials). The daemon refuses to start if the bucket cannot hold.
    #[arg(long, env = "CUSTODIAN_NATIVE_HOLDS")]
    native_holds: bool,

    /// The local put socket: a CLI on this machine hands the daemon the file to put here instead
    /// of streaming it (default: local-put.sock in the data directory, if a socket can be made
    /// there). Access is by the same tokens as gRPC; the daemon reads only files the client
    /// opened itself
    #[arg(
        long,
        env = "CUSTODIAN_LOCAL_PUT_SOCKET",
        value_name = "PATH",
        conflicts_with = "no_local_put_socket"
    )]
    local_put_socket: Option<PathBuf>,

    /// Serve no local put socket: every put streams its bytes over gRPC
    #[arg(long, env = "CUSTODIAN_NO_LOCAL_PUT_SOCKET")]
    no_local_put_socket: bool,

    /// Log filter (tracing's EnvFilter syntax), e.g. info or custodian_server=debug
    #[arg(long, env = "CUSTODIAN_LOG", default_value = "info")]
    log: String,

    /// Log as JSON lines instead of text
    #[arg(long, env = "CUSTODIAN_LOG_JSON")]
    log_json: bool,
}

/// Refuses a data directory that does not exist unless `init` says to create a new registry
/// there: a daemon or token started in the wrong folder must not silently found a second
/// registry with its own log key. With `init`, says loudly where the registry is created.
pub(crate) fn require_data_dir(data_dir: &std::path::Path, init: bool) -> anyhow::Result<()> {
    if data_dir.exists() {
        return Ok(());
    }
    let shown = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    if !init {
        anyhow::bail!(
            "there is no registry at {} (no data directory): pass --data-dir (CUSTODIAN_DATA_DIR) to point at yours, or --init to create a new registry there",
            shown.display()
        );
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", shown.display()))?;
    eprintln!(
        "custodian: created a new registry at {} (its log key is generated on first start; back it up)",
        shown.display()
    );
    Ok(())
}

/// Sends the process's tracing output to standard error, as text (coloured on a terminal) or
/// JSON lines.
pub(crate) fn init_logging(filter: &str, json: bool) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(filter).with_context(|| format!("invalid --log filter {filter:?}"))?;
    // Colour only on a terminal: redirected logs stay plain text.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        subscriber.json().init();
    } else {
        subscriber.init();
    }
    Ok(())
}

/// Runs the daemon until a shutdown signal.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(&args.log, args.log_json)?;

    raise_open_file_limit(args.max_connections);
    let config = ServerConfig {
        data_dir: args.store.data_dir.clone(),
        storage: args.store.storage.clone(),
        storage_options: args.store.storage_options,
        ledger: args.store.ledger.clone(),
        beside_daemons: false,
        block_size: args.block_size,
        limits: CasLimits {
            max_batch_total_size_bytes: args.max_batch_bytes,
            max_message_size_bytes: args.max_message_bytes,
            upload_idle_timeout: args.upload_idle_timeout,
        },
        conn: custodian_server::net::conn::ConnLimits {
            max_connections: args.max_connections,
            idle_timeout: args.idle_timeout,
            header_timeout: args.header_timeout,
        },
        shutdown_grace: args.shutdown_grace,
        log_origin: args.log_origin,
        append_token: args.append_token,
        sequencer: custodian_server::SequencerConfig {
            max_batch: args.ledger_max_batch,
            window: args.ledger_batch_window,
            ..Default::default()
        },
        badge_max_age: args.badge_max_age,
        registry_licenses: args.registry_licenses,
        scanners: custodian_server::scan::ScannerConfig {
            external: args
                .scanners
                .into_iter()
                .map(|(name, command)| custodian_server::scan::ExternalScanner { name, command })
                .collect(),
            timeout: args.scanner_timeout,
            attempts: args.scanner_attempts,
            backoff: args.scanner_backoff,
        },
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(custodian_server::TlsFiles { cert, key }),
            _ => None,
        },
        tiles_to: args.tiles_to.map(|url| (url, args.tiles_options)),
        oci: custodian_server::oci::OciConfig {
            private: args.oci_private,
        },
        upload_expiry: args.upload_expiry,
        gc_grace: args.gc_grace,
        gc_every: args.gc_every,
        native_holds: args.native_holds,
        local_put: match (args.no_local_put_socket, args.local_put_socket) {
            (true, _) => None,
            (false, Some(path)) => Some(LocalPutConfig {
                path,
                required: true,
            }),
            (false, None) => Some(LocalPutConfig {
                path: args.store.data_dir.join("local-put.sock"),
                required: false,
            }),
        },
        witnessing: match &args.witness_policy {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read the witness policy {}", path.display())
                })?;
                let policy = custodian_core::witness::WitnessPolicy::parse(&text)
                    .with_context(|| format!("witness policy {}", path.display()))?;
                if let Some(nameless) = policy.witnesses().iter().find(|w| w.url.is_none()) {
                    anyhow::bail!(
                        "witness policy {}: witness {} has no URL; a log needs one to ask it for cosignatures",
                        path.display(),
                        nameless.name
                    );
                }
                Some(custodian_server::witnessing::WitnessingConfig {
                    policy,
                    request_timeout: args.witness_timeout,
                    unreachable: if args.witness_unreachable == "uncosigned" {
                        custodian_server::witnessing::Unreachable::Uncosigned(args.witness_patience)
                    } else {
                        custodian_server::witnessing::Unreachable::Wait
                    },
                })
            }
        },
    };
    // Both ports first: a daemon that cannot listen must fail before it creates anything.
    let (listener, address) = bind(args.listen, "gRPC").await?;
    let (rest_listener, rest_address) = bind(args.rest_listen, "REST").await?;
    require_data_dir(&args.store.data_dir, args.init)?;
    let store = custodian_server::open_store(&config)
        .await
        .with_context(|| {
            format!(
                "opening storage \"{}\" in {}",
                args.store.storage,
                args.store.data_dir.display()
            )
        })?;
    let ledger = custodian_server::open_ledger(&config)
        .await
        .with_context(|| format!("opening the ledger in {}", args.store.data_dir.display()))?;
    tracing::info!(origin = ledger.origin(), key = %ledger.verifier(), size = ledger.latest().size, "ledger open");
    let tls = if config.tls.is_some() { " (TLS)" } else { "" };
    tracing::info!(%address, %rest_address, storage = %args.store.storage, backend = store.backend_name(), data_dir = %args.store.data_dir.display(), "custodian listening");
    // Whoever started the daemon may read these lines and close the pipe; a daemon whose
    // stdout is gone keeps serving (println! would panic on the broken pipe).
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "custodian listening on {address}{tls}");
        let _ = writeln!(out, "custodian rest listening on {rest_address}{tls}");
        let _ = out.flush();
    }
    custodian_server::serve(
        config,
        store,
        ledger,
        listener,
        Some(rest_listener),
        shutdown_signal(),
    )
    .await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Binds one port; the error says which and the likely cause.
pub(crate) async fn bind(
    address: std::net::SocketAddr,
    what: &str,
) -> anyhow::Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| {
            format!("cannot listen on {address} for {what} (is another daemon running there?)")
        })?;
    let bound = listener
        .local_addr()
        .with_context(|| format!("reading the bound {what} address"))?;
    Ok((listener, bound))
}

/// Raises the soft limit on open files to the hard limit: two ports of --max-connections each,
/// plus RocksDB's files, need more than the common default of 1,024. Without it, accept fails
/// with EMFILE long before the connection limit is reached.
fn raise_open_file_limit(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let (Some(current), maximum) = (limit.current, limit.maximum) else {
        return; // Unlimited already.
    };
    let needed = 2 * max_connections as u64 + 1024;
    let wanted = maximum.map_or(needed, |max| needed.min(max));
    let mut have = current;
    if current < wanted {
        limit.current = Some(wanted);
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => have = wanted,
            Err(err) => tracing::warn!(%err, wanted, "cannot raise the open-file limit"),
        }
    }
    if have < needed {
        tracing::warn!(
            open_files = have,
            max_connections,
            "the open-file limit is below what --max-connections needs on two ports; accept may fail with EMFILE first (it is retried, not fatal)"
        );
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot watch SIGTERM; only Ctrl-C stops the daemon");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
