//! What the REST and gRPC targets share: custodian-server's `rest::fixture` (one published
//! package; registry, ledger and custody in memory) behind the daemon's REST routes and gRPC
//! services, built once per process, and one request sent through them.

// Each target uses part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use custodian_server::rest::fixture::{self, Published};
use tower::ServiceExt as _;

type Request = http::Request<axum::body::Body>;
type Response = http::Response<axum::body::Body>;

/// The fixture's routes and what a request needs to reach them.
pub struct World {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
    grpc: axum::Router,
    /// An admin token's secret.
    pub token: String,
}

/// A directory for this process's fixture (tokens, upload sessions, OCI links) under one parent
/// in the system's temporary directory. libFuzzer ends a run with `exit`, which drops no statics,
/// so a run cannot remove its own: each run removes those of runs whose process has ended.
fn fixture_dir() -> PathBuf {
    let parent = std::env::temp_dir().join("custodian-fuzz-rest");
    std::fs::create_dir_all(&parent).expect("the fixtures' parent directory");
    for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().parse::<u32>().ok();
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = parent.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the fixture's directory");
    dir
}

/// The process's world, built on first use.
pub fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = fixture_dir();
        let Published { app, grpc, token } =
            runtime.block_on(fixture::published(&dir, Duration::from_secs(1)));
        World {
            runtime,
            app,
            grpc,
            token,
        }
    })
}

impl World {
    /// Sends `request` through the REST routes.
    pub fn send(&self, request: Request) -> Response {
        self.through(&self.app, request)
    }

    /// Sends a gRPC call (an HTTP/2-framed request) through the gRPC services.
    pub fn send_grpc(&self, request: Request) -> Response {
        self.through(&self.grpc, request)
    }

    fn through(&self, router: &axum::Router, request: Request) -> Response {
        self.runtime
            .block_on(router.clone().oneshot(request))
            .expect("the router is infallible")
    }

    /// Runs `future` on the world's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The path of the fixture version's `tail` (`data-pack/hosted`, …).
    pub fn version_path(&self, tail: &str) -> String {
        format!(
            "/wrappers/{}/versions/{}/{tail}",
            fixture::NAME,
            fixture::VERSION
        )
    }
}
