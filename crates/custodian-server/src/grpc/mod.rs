//! The gRPC side of the edge: one module per service, and [`status`], the one place any layer's
//! error becomes a `tonic::Status` and a request's metadata becomes a principal.

pub mod cas;
pub mod cas_get;
mod cas_upload;
mod digest_list;
pub mod evidence;
pub mod ledger;
pub mod local_put;
pub mod registry;
pub mod status;
mod unary;
mod whole_messages;

use std::sync::Arc;

use custodian_proto::evidence::v1::evidence_server::EvidenceServer;
use custodian_proto::ledger::v1::ledger_server::LedgerServer;
use custodian_proto::registry::v1::registry_server::RegistryServer;

use crate::auth::Authenticator;
use crate::registry::Registry;

/// The four services the daemon answers on its gRPC port, each limited to messages of at most
/// `--max-message-size` bytes either way. The daemon (`serve`) and the in-process fixture
/// (`rest::fixture`) both build them here, so the fixture's tests and fuzz targets meet the
/// services exactly as a client of the daemon does.
pub(crate) struct Services {
    /// The content store, with its hand-written `Get`, `Put` and batch paths.
    pub cas: cas_get::ContentStoreRoutes,
    /// The ledger, with `AppendStream`'s requests refused when cut inside a message.
    pub ledger: whole_messages::LedgerRoutes,
    /// The package registry.
    pub registry: RegistryServer<registry::RegistryService>,
    /// Evidence: attestations, badges and bundles.
    pub evidence: EvidenceServer<evidence::EvidenceService>,
}

impl Services {
    /// Wraps `cas` and `ledger`, and builds the registry and evidence services over `registry`
    /// with `auth` deciding who may call what.
    pub(crate) fn new(
        cas: cas::CasService,
        ledger: ledger::LedgerService,
        registry: &Arc<Registry>,
        auth: &Arc<Authenticator>,
        max_message_size: usize,
    ) -> Self {
        Services {
            cas: cas_get::ContentStoreRoutes::new(cas, max_message_size),
            ledger: whole_messages::LedgerRoutes::new(
                LedgerServer::new(ledger)
                    .max_decoding_message_size(max_message_size)
                    .max_encoding_message_size(max_message_size),
            ),
            registry: RegistryServer::new(registry::RegistryService::new(
                registry.clone(),
                auth.clone(),
            ))
            .max_decoding_message_size(max_message_size)
            .max_encoding_message_size(max_message_size),
            evidence: EvidenceServer::new(evidence::EvidenceService::new(
                registry.clone(),
                auth.clone(),
            ))
            .max_decoding_message_size(max_message_size)
            .max_encoding_message_size(max_message_size),
        }
    }

    /// The four services as one router, for callers that serve them without tonic's server.
    #[cfg(any(test, feature = "fixture"))]
    pub(crate) fn into_axum_router(self) -> axum::Router {
        tonic::service::Routes::new(self.cas)
            .add_service(self.ledger)
            .add_service(self.registry)
            .add_service(self.evidence)
            .into_axum_router()
    }
}
