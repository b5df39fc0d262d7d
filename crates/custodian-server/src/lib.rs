//! Custodian's servers: the gRPC content store, ledger and registry services, the append
//! sequencer, health and reflection, the registry's REST API, access control and TLS, and the
//! serve loop with graceful shutdown. This is the only crate that turns errors into
//! `tonic::Status` or HTTP responses.

pub mod auth;
mod error;
pub mod evidence;
pub mod grpc;
mod log_key;
pub mod net;
pub mod oci;
pub mod readiness;
pub mod registry;
pub mod rest;
pub mod retention;
pub mod scan;
pub mod scrub;
mod sequencer;
mod storage_location;
pub mod tile_mirror;
pub mod witness;
pub mod witnessing;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use custodian_object::{ObjectBackend, ObjectConfig};
use custodian_proto::cas::v1::content_store_server::ContentStoreServer;
use custodian_proto::evidence::v1::evidence_server::EvidenceServer;
use custodian_proto::ledger::v1::ledger_server::LedgerServer;
use custodian_proto::registry::v1::registry_server::RegistryServer;
use custodian_rocksdb::{RocksBackend, RocksConfig, RocksLedger};
use custodian_storage::ledger::Ledger;
use custodian_storage::uploads::UploadSessions;
use custodian_storage::{BlobStore, DEFAULT_BLOCK_SIZE};
use tokio::net::TcpListener;

pub use error::ServerError;
pub use grpc::cas::{CasLimits, CasService, blob_info};
pub use grpc::evidence::EvidenceService;
pub use grpc::ledger::{LedgerService, entry_pb, receipt_pb};
pub use grpc::registry::{RegistryService, data_pack_pb, version_pb};
pub use grpc::status::{GrpcError, parse_digest};
pub use log_key::{KEY_FILE, load_or_generate};
pub use net::tls::TlsFiles;
pub use registry::{Registry, RegistryError};
pub use sequencer::{Queued, Sequencer, SequencerConfig};
pub use storage_location::{EMBEDDED_STORAGE, StorageLocation, StorageLocationError};

/// Everything the daemon needs to run.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where the daemon keeps its state (the RocksDB store, or the object backends' index).
    pub data_dir: PathBuf,
    /// Where blobs are kept: embedded RocksDB (the default) or an object store.
    pub storage: StorageLocation,
    /// Extra object store options (`aws_endpoint=...`), overriding the environment.
    pub storage_options: Vec<(String, String)>,
    /// Open the store as a tool beside running daemons (`custodian scrub` on a shared
    /// PostgreSQL index): no daemon's identity is taken and no upload is cleaned up as a crash's
    /// leftover, since the daemons may be in the middle of them.
    pub beside_daemons: bool,
    /// Where the ledger is kept: `None` for the embedded RocksDB ledger in `data_dir/ledger`, or
    /// a `postgres://` URL.
    pub ledger: Option<String>,
    /// The block size for new blobs.
    pub block_size: usize,
    /// Content store limits.
    pub limits: CasLimits,
    /// Connection limits on both ports.
    pub conn: net::conn::ConnLimits,
    /// How long in-flight requests may run after a shutdown signal before they are cut off.
    pub shutdown_grace: Duration,
    /// The ledger's origin when a new log key is generated (ignored, but checked, afterwards).
    pub log_origin: Option<String>,
    /// The bearer token that authorizes `Ledger.Append`; `None` disables it.
    pub append_token: Option<String>,
    /// How the ledger batches appends.
    pub sequencer: SequencerConfig,
    /// TLS for both ports; `None` serves plain text.
    pub tls: Option<TlsFiles>,
    /// Evidence older than this sends a badge to review.
    pub badge_max_age: Duration,
    /// The registry's license ids that count as machine-readable (badge policy v3).
    pub registry_licenses: Vec<String>,
    /// External scanners, and how they are run.
    pub scanners: scan::ScannerConfig,
    /// Where to mirror the ledger's tlog-tiles (an object store URL and its options), if anywhere.
    pub tiles_to: Option<(String, Vec<(String, String)>)>,
    /// Publish checkpoints only once a witness quorum cosigned them, if set.
    pub witnessing: Option<witnessing::WitnessingConfig>,
    /// The OCI front end's private namespaces and upload expiry.
    pub oci: oci::OciConfig,
    /// How long a resumable upload session (gRPC, tus, OCI) may sit idle before it is removed
    /// with its bytes.
    pub upload_expiry: Duration,
    /// Garbage collection's default grace period: blobs uploaded or acknowledged within it are
    /// kept.
    pub gc_grace: Duration,
    /// Collect garbage this often in the daemon (`None`: only when `custodian gc` asks).
    pub gc_every: Option<Duration>,
    /// Also set each legal hold in the storage service (S3 Object Lock legal hold); the store
    /// must support it, which is checked at start-up.
    pub native_holds: bool,
    /// The local put socket (docs/api.md, "Local puts"); `None` for none.
    pub local_put: Option<grpc::local_put::LocalPutConfig>,
}

impl ServerConfig {
    /// Defaults: embedded RocksDB under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            storage: StorageLocation::Embedded,
            storage_options: Vec::new(),
            ledger: None,
            beside_daemons: false,
            block_size: DEFAULT_BLOCK_SIZE,
            limits: CasLimits::default(),
            conn: net::conn::ConnLimits::default(),
            shutdown_grace: Duration::from_secs(30),
            log_origin: None,
            append_token: None,
            sequencer: SequencerConfig::default(),
            tls: None,
            badge_max_age: Duration::from_millis(custodian_core::badge::DEFAULT_MAX_AGE_MS),
            registry_licenses: registry::DEFAULT_REGISTRY_LICENSES
                .map(String::from)
                .to_vec(),
            scanners: scan::ScannerConfig::default(),
            tiles_to: None,
            witnessing: None,
            oci: oci::OciConfig::default(),
            upload_expiry: custodian_storage::uploads::DEFAULT_UPLOAD_EXPIRY,
            gc_grace: Duration::from_secs(7 * 24 * 3600),
            gc_every: None,
            native_holds: false,
            local_put: None,
        }
    }
}

/// How often a daemon on a shared (PostgreSQL) ledger catches up with what other daemons
/// appended: the bound on how long a publication through one daemon takes to show through
/// another.
pub const LEDGER_FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// The registry index snapshot's file in the data directory (see `registry::snapshot`).
pub const REGISTRY_SNAPSHOT_FILE: &str = "registry-index";

/// A new registry index snapshot is saved once the index has read this many entries past the
/// last one: a restart then reads at most this many entries beyond those the snapshot lists.
pub const REGISTRY_SNAPSHOT_EVERY: u64 = 1 << 16;

/// Opens the configured storage backend, recovering from any earlier crash.
pub async fn open_store(config: &ServerConfig) -> Result<BlobStore, ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let url = match &config.storage {
        StorageLocation::Embedded => None,
        StorageLocation::Object(url) => Some(url.clone()),
    };
    let Some(url) = url else {
        let path = config.data_dir.join("blobs");
        let rocks_config = RocksConfig {
            block_size: config.block_size,
        };
        let backend = tokio::task::spawn_blocking(move || RocksBackend::open(&path, rocks_config))
            .await
            .map_err(|e| ServerError::Task(format!("opening the embedded store: {e}")))??;
        return Ok(BlobStore::new(Arc::new(backend)));
    };
    let mut object = ObjectConfig::new(url, config.data_dir.join("object-index"));
    object.block_size = config.block_size;
    object.part_size = object.part_size.max(config.block_size);
    object.options = config.storage_options.clone();
    // With the ledger in PostgreSQL the blob index goes there too, so that every daemon in
    // front of the bucket sees every blob.
    let backend = match &config.ledger {
        None => ObjectBackend::open(object).await?,
        Some(database) => {
            let dir = if config.beside_daemons {
                object.recover = false;
                std::env::temp_dir().join(format!("custodian-tool-{}", std::process::id()))
            } else {
                config.data_dir.clone()
            };
            let database = database.clone();
            let index = tokio::task::spawn_blocking(move || {
                custodian_postgres::PgIndex::open(&database, &dir)
            })
            .await
            .map_err(|e| ServerError::Task(format!("opening the blob index: {e}")))??;
            ObjectBackend::open_with_index(object, Arc::new(index)).await?
        }
    };
    Ok(BlobStore::new(Arc::new(backend)))
}

/// Opens the ledger (in `data_dir/ledger`, or in PostgreSQL when `config.ledger` names it) with
/// the log key from `data_dir/log-key` (generated on first start), checking that stored data
/// and the signed checkpoint agree.
pub async fn open_ledger(config: &ServerConfig) -> Result<Arc<Ledger>, ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let data_dir = config.data_dir.clone();
    let origin = config.log_origin.clone();
    let url = config.ledger.clone();
    tokio::task::spawn_blocking(move || {
        let key = load_or_generate(&data_dir, origin.as_deref())?;
        let backend: Arc<dyn custodian_storage::ledger::LedgerBackend> = match url {
            None => Arc::new(RocksLedger::open(&data_dir.join("ledger"))?),
            Some(url) => Arc::new(custodian_postgres::PgLedger::open(&url)?),
        };
        Ok(Arc::new(Ledger::open(backend, key)?))
    })
    .await
    .map_err(|e| ServerError::Task(format!("the ledger open task failed: {e}")))?
}

/// Serves gRPC on `listener` and, when given, the REST API on `rest_listener`, until `shutdown`
/// completes; then lets in-flight requests finish for up to the configured grace period.
/// Uploads still running after that are discarded.
pub async fn serve(
    config: ServerConfig,
    store: BlobStore,
    ledger: Arc<Ledger>,
    listener: TcpListener,
    rest_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let limits = config.limits;
    // Acknowledgements of puts that stored nothing new keep their blobs within the grace
    // period across restarts (see custodian_storage::retention); daemons sharing a database
    // record them there, where every daemon's collection sees them.
    let acks = config.data_dir.join("retention").join("acknowledged");
    let retention = custodian_storage::retention::Retention::persistent(&acks)
        .map_err(|source| ServerError::DataDir {
            path: acks.clone(),
            source,
        })?
        .with_shared(store.shared_state());
    let store = store.with_retention(Arc::new(retention));
    let auth = Arc::new(auth::Authenticator::new(&config.data_dir)?);
    // Publication is gated before anything can read the published checkpoint (the mirror, the
    // REST port), so no uncosigned checkpoint is ever published under a policy.
    let publication = match &config.witnessing {
        Some(witnessing) if witnessing.policy.requires_cosignatures() => {
            let (task, publication) = witnessing::Witnessing::start(
                ledger.clone(),
                witnessing.clone(),
                &config.data_dir,
            )?;
            tokio::spawn(task.run());
            Some(publication)
        }
        _ => None,
    };
    // The mirror is opened (and its bucket checked) before anything is served, so a wrong
    // --tiles-to stops the daemon at start instead of failing quietly later.
    if let Some((url, options)) = &config.tiles_to {
        let mirror = tile_mirror::TileMirror::open(url, options, ledger.clone()).await?;
        tokio::spawn(mirror.run());
    }
    let sequencer = Sequencer::start(ledger.clone(), config.sequencer, publication);
    let registry = Arc::new(
        Registry::open_with_snapshot(
            store.clone(),
            sequencer.clone(),
            Some(config.data_dir.join(REGISTRY_SNAPSHOT_FILE)),
        )
        .await?,
    );
    registry.set_badge_max_age(config.badge_max_age);
    registry.set_registry_licenses(config.registry_licenses.clone());
    registry.start_external(config.scanners.clone());
    // One engine for every resumable upload: gRPC, tus and OCI sessions alike.
    let uploads = Arc::new(UploadSessions::open(
        &config.data_dir.join("uploads"),
        config.upload_expiry,
        store.clone(),
    )?);
    // Abandoned sessions are swept a few times per expiry period.
    let sweeper = uploads.clone();
    let period = (config.upload_expiry / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(600),
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let uploads = sweeper.clone();
            let _ = tokio::task::spawn_blocking(move || uploads.sweep()).await;
        }
    });
    // The OCI front end's state (links, repositories) exists whether or not the REST port is
    // on: garbage collection must see what OCI repositories keep either way.
    let oci = Arc::new(
        oci::Oci::open(
            registry.clone(),
            &config.data_dir.join("oci"),
            config.oci.clone(),
            uploads.clone(),
        )
        .map_err(|e| ServerError::Oci(e.to_string()))?,
    );
    let native_holds = if config.native_holds {
        // Checked before anything is served: a daemon asked to set native holds that cannot
        // set them must not start and record holds the bucket does not enforce.
        let holds = store.native_holds()?;
        holds.check().await?;
        tracing::info!(
            kind = holds.describe(),
            "legal holds are also set in the store"
        );
        Some(holds)
    } else {
        None
    };
    {
        // Other daemons sharing a PostgreSQL ledger append too: catch up with their entries,
        // so that this daemon's checkpoints, receipts and proofs include them within a second,
        // and the registry index applies what they appended. On any ledger the registry saves
        // its index snapshot every REGISTRY_SNAPSHOT_EVERY entries, the first one at once after
        // a start that replayed a long log.
        let shared = config.ledger.is_some().then(|| ledger.clone());
        let follower = registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEDGER_FOLLOW_EVERY);
            loop {
                tick.tick().await;
                if let Some(ledger) = shared.clone()
                    && let Ok(Err(err)) =
                        tokio::task::spawn_blocking(move || ledger.refresh()).await
                {
                    tracing::warn!(%err, "could not catch up with the shared ledger");
                }
                if let Err(err) = follower.save_snapshot_every(REGISTRY_SNAPSHOT_EVERY).await {
                    tracing::warn!(%err, "could not follow the ledger or save the registry index snapshot");
                }
            }
        });
    }
    let collector = Arc::new(
        retention::Collector::new(registry.clone(), oci.clone(), uploads.clone())
            .with_native_holds(native_holds),
    );
    // Deletions recorded before a crash are finished before anything is served.
    let finished = retention::finish_recorded(&registry).await?;
    if finished > 0 {
        tracing::warn!(finished, "finished deletions recorded before a crash");
    }
    if let Some(every) = config.gc_every {
        let scheduled = collector.clone();
        let grace = config.gc_grace;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let options = retention::GcOptions {
                    grace,
                    dry_run: false,
                    by: "gc schedule".into(),
                };
                match scheduled.run(options).await {
                    Ok(report) => tracing::info!(
                        examined = report.examined,
                        deleted = report.deleted.len(),
                        "scheduled garbage collection"
                    ),
                    Err(err) => tracing::error!(%err, "scheduled garbage collection failed"),
                }
            }
        });
    }
    let probed_store = store.clone();
    let local_put = match &config.local_put {
        Some(local) => grpc::local_put::LocalPutSocket::bind(local)?,
        None => None,
    };
    let cas_service = CasService::new(
        store,
        uploads.clone(),
        collector,
        config.gc_grace,
        limits,
        registry.clone(),
        auth.clone(),
    )
    .with_local_put_socket(local_put.as_ref().map(|socket| socket.path()));
    let local_cas = cas_service.clone();
    let local_put_announcement = local_put.as_ref().map(|socket| rest::LocalPutAnnouncement {
        path: socket.path().to_path_buf(),
        instance: local_cas.local_put_instance().to_string(),
    });
    // Stream scans of hosted data packs, whether uploaded over REST or handed over locally,
    // share one bound.
    let stream_scans = Arc::new(scan::StreamScans::new(uploads.expiry()));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // `Get` is answered without copying each block into a message (grpc/cas_get.rs), and
    // `Put` and `WriteUpload` are read where their frames lie (grpc/cas_upload.rs).
    let services = grpc::Services::new(
        cas_service,
        LedgerService::new(
            sequencer,
            config.append_token.clone(),
            registry.clone(),
            auth.clone(),
        )
        .ending_streams_on(stop_rx.clone()),
        &registry,
        &auth,
        limits.max_message_size_bytes,
    );

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ContentStoreServer<CasService>>()
        .await;
    health_reporter
        .set_serving::<LedgerServer<LedgerService>>()
        .await;
    health_reporter
        .set_serving::<RegistryServer<RegistryService>>()
        .await;
    health_reporter
        .set_serving::<EvidenceServer<EvidenceService>>()
        .await;
    let readiness = readiness::start(
        readiness::Probes {
            database: config.ledger.is_some().then(|| ledger.clone()),
            bucket: matches!(config.storage, StorageLocation::Object(_)).then_some(probed_store),
        },
        health_reporter.clone(),
    )
    .await;
    // Both reflection versions: grpcurl asks for v1 first, but older grpcurl releases and other
    // clients (for example Python's grpc_requests) know only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(custodian_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;

    let mut stop_server = stop_rx.clone();
    let rest = match rest_listener {
        None => None,
        Some(rest_listener) => {
            let app = rest::router(
                registry.clone(),
                auth.clone(),
                limits.upload_idle_timeout,
                oci,
                uploads.clone(),
                stream_scans.clone(),
                local_put_announcement,
            )
            .merge(readiness::router(readiness.clone()));
            let tls = match &config.tls {
                Some(tls) => Some(tls.rustls_config()?),
                None => None,
            };
            let gate = net::conn::Gate::new(config.conn, "rest");
            Some(tokio::spawn(net::conn::serve_rest(
                rest_listener,
                tls,
                app,
                gate,
                stop_rx.clone(),
            )))
        }
    };
    let local_put = local_put.map(|socket| {
        tracing::info!(path = %socket.path().display(), "local put socket");
        tokio::spawn(grpc::local_put::serve(
            socket,
            local_cas,
            stream_scans,
            config.conn.max_connections,
            config.shutdown_grace,
            stop_rx.clone(),
        ))
    });
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(tls.grpc_identity()?))?;
    }
    // Every connection holds a slot of --max-connections and is closed after --idle-timeout
    // without traffic; TCP_NODELAY is set on each (small replies such as ledger appends would
    // otherwise wait for delayed ACKs).
    let incoming = net::conn::grpc_incoming(listener, net::conn::Gate::new(config.conn, "grpc"));
    let server = builder
        .tcp_nodelay(true)
        // Large windows let one stream move a big blob at loopback speed.
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        // Large frames from the client mean fewer frames and system calls per blob.
        .max_frame_size(Some(1 << 20))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(services.cas)
        .add_service(services.ledger)
        .add_service(services.registry)
        .add_service(services.evidence)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_server.wait_for(|stop| *stop).await;
            tracing::info!("shutting down: no new requests; waiting for in-flight ones");
        });
    let grace = config.shutdown_grace;
    let deadline = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result?,
        () = deadline => {
            tracing::warn!(?grace, "grace period over; unfinished uploads are discarded");
        }
    }
    if let Some(local_put) = local_put {
        // It waits out its own grace period once stopped.
        if let Err(err) = local_put.await {
            tracing::warn!(%err, "the local put socket's task failed");
        }
    }
    if let Some(rest) = rest {
        // The REST server stops on the same signal; give it what is left of the grace period.
        match tokio::time::timeout(grace, rest).await {
            Ok(Err(err)) => tracing::warn!(%err, "the REST server task failed"),
            Ok(Ok(())) => {}
            Err(_) => {
                tracing::warn!("REST requests still running after the grace period were cut off")
            }
        }
    }
    // Everything served is applied by now: the next start reads no more than it must.
    match registry.save_snapshot().await {
        Ok(Some(size)) => tracing::info!(size, "registry index snapshot saved"),
        Ok(None) => {}
        Err(err) => tracing::warn!(%err, "could not save the registry index snapshot"),
    }
    Ok(())
}

/// Serves a witness (C2SP tlog-witness) on `listener` until `shutdown` completes, then lets
/// in-flight requests finish: a cosignature is only sent after its checkpoint is durable, so a
/// request cut off by the shutdown leaves nothing half-promised.
pub async fn serve_witness(
    witness: Arc<witness::Witness>,
    listener: TcpListener,
    conn: net::conn::ConnLimits,
    tls: Option<TlsFiles>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let tls = match &tls {
        Some(tls) => Some(tls.rustls_config()?),
        None => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    net::conn::serve_rest(
        listener,
        tls,
        rest::witness_router(witness),
        net::conn::Gate::new(conn, "witness"),
        stop_rx,
    )
    .await;
    Ok(())
}
