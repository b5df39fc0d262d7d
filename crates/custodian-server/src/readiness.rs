//! Readiness: whether the services this daemon depends on (the PostgreSQL database, the
//! object-store bucket) answer right now. A load balancer sends traffic only to ready daemons;
//! a daemon that is not ready still serves what it can (the registry and checkpoints it holds
//! in memory) and refuses writes with UNAVAILABLE.
//!
//! Liveness (`/healthz`, and each gRPC service's own health status) says the process runs.
//! Readiness is the gRPC health status of the whole server (the empty service name) and
//! `GET /readyz`: `200` with each dependency's state, or `503` naming the one that is down.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use custodian_storage::BlobStore;
use custodian_storage::ledger::Ledger;
use serde::Serialize;

/// How often the dependencies are probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// How long one probe may take before the dependency counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One dependency's latest probe.
#[derive(Clone, Debug, Serialize)]
pub struct Dependency {
    /// What it is: `database` or `bucket`.
    pub name: &'static str,
    /// Whether it answered.
    pub ready: bool,
    /// Why not, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The daemon's readiness, as last probed.
#[derive(Default)]
pub struct Readiness {
    dependencies: RwLock<Vec<Dependency>>,
}

impl Readiness {
    /// Whether every dependency answered its last probe.
    pub fn ready(&self) -> bool {
        self.snapshot().iter().all(|d| d.ready)
    }

    /// The dependencies' latest probes.
    pub fn snapshot(&self) -> Vec<Dependency> {
        self.dependencies
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// What to probe: the shared database (through the ledger) and the object store (with its
/// index); either may be absent, and a daemon with neither is always ready.
pub struct Probes {
    /// The ledger, when it lives in PostgreSQL.
    pub database: Option<Arc<Ledger>>,
    /// The blob store, when it is an object store.
    pub bucket: Option<BlobStore>,
}

impl Probes {
    async fn run(&self) -> Vec<Dependency> {
        let mut out = Vec::new();
        if let Some(ledger) = &self.database {
            let ledger = ledger.clone();
            let probe = tokio::task::spawn_blocking(move || ledger.probe());
            let result = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                Ok(Ok(result)) => result.map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(format!("the probe failed: {e}")),
                Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
            };
            out.push(dependency("database", result));
        }
        if let Some(store) = &self.bucket {
            let result = match tokio::time::timeout(PROBE_TIMEOUT, store.probe()).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
            };
            out.push(dependency("bucket", result));
        }
        out
    }
}

fn dependency(name: &'static str, result: Result<(), String>) -> Dependency {
    Dependency {
        name,
        ready: result.is_ok(),
        error: result.err(),
    }
}

/// Probes once now (so the first answer is true), then every [`PROBE_EVERY`]; each change is
/// logged and reported to the gRPC health service as the server's overall status.
pub async fn start(probes: Probes, health: tonic_health::server::HealthReporter) -> Arc<Readiness> {
    let readiness = Arc::new(Readiness::default());
    let first = probes.run().await;
    publish(&readiness, &health, first).await;
    let shared = readiness.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = probes.run().await;
            publish(&shared, &health, now).await;
        }
    });
    readiness
}

async fn publish(
    readiness: &Readiness,
    health: &tonic_health::server::HealthReporter,
    now: Vec<Dependency>,
) {
    let ready = now.iter().all(|d| d.ready);
    let was = readiness.snapshot();
    let changed = was.len() != now.len() || was.iter().zip(&now).any(|(a, b)| a.ready != b.ready);
    if changed {
        for dependency in &now {
            match &dependency.error {
                None => tracing::info!(dependency = dependency.name, "ready"),
                Some(error) => {
                    tracing::warn!(dependency = dependency.name, %error, "not ready; writes are refused until it answers")
                }
            }
        }
    }
    *readiness
        .dependencies
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
    let status = if ready {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
}

/// `GET /readyz`: `200` when every dependency answered its last probe, else `503`; the body
/// lists each dependency as JSON either way.
pub fn router(readiness: Arc<Readiness>) -> Router {
    Router::new().route(
        "/readyz",
        get(move || {
            let readiness = readiness.clone();
            async move {
                let dependencies = readiness.snapshot();
                let ready = dependencies.iter().all(|d| d.ready);
                let code = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (
                    code,
                    axum::Json(serde_json::json!({
                        "ready": ready,
                        "dependencies": dependencies,
                    })),
                )
                    .into_response()
            }
        }),
    )
}
