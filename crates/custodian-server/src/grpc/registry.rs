//! `custodian.registry.v1.Registry`: the registry over gRPC.

use std::sync::Arc;

use custodian_proto::registry::v1 as pb;
use custodian_proto::registry::v1::registry_server::Registry as RegistryRpc;
use tonic::{Request, Response, Status};

use crate::auth::{Authenticator, Principal};
use crate::grpc::ledger::receipt_pb;
use crate::grpc::status::principal;
use crate::registry::{DataPackRecord, Registry, VersionRecord};

fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// The wire form of a data pack.
pub fn data_pack_pb(registry: &Registry, record: &DataPackRecord) -> pb::DataPack {
    let p = &record.event.pack;
    let provenance = p.provenance.clone().unwrap_or_default();
    pb::DataPack {
        mode: p.mode.to_string(),
        license: p.license.clone(),
        data_version: p.data_version.clone().unwrap_or_default(),
        sha256: p.sha256.clone().unwrap_or_default(),
        blake3: p.blake3.clone().unwrap_or_default(),
        size: p.size.unwrap_or_default(),
        filename: p.filename.clone().unwrap_or_default(),
        provenance_json: p.provenance_json.clone().unwrap_or_default(),
        eval_set_uri: p
            .eval_set_uri
            .clone()
            .or(provenance.eval_set_uri)
            .unwrap_or_default(),
        visibility: p.visibility.clone().unwrap_or_default(),
        scan_status: match (&p.sha256, p.mode.as_str()) {
            (Some(sha256), "hosted") => {
                registry.scan_status(&record.event.name, &record.event.version, sha256)
            }
            _ => p.scan_status.clone().unwrap_or_default(),
        },
        source_type: p.source_type.clone().unwrap_or_default(),
        uri: p.uri.clone().unwrap_or_default(),
        checksum: p.checksum.clone().unwrap_or_default(),
        checksum_algorithm: p.checksum_algorithm.clone().unwrap_or_default(),
        access_policy: p.access_policy.clone().unwrap_or_default(),
        schema_uri: provenance.schema_uri.unwrap_or_default(),
        citations: provenance.citations,
        ledger_index: record.index,
    }
}

/// The wire form of a version; `full` adds the files and the envelope.
pub fn version_pb(
    registry: &Registry,
    who: &Principal,
    record: &VersionRecord,
    full: bool,
) -> pb::Version {
    let e = &record.event;
    pb::Version {
        name: e.name.clone(),
        version: e.version.clone(),
        r#type: e.package_type.clone(),
        manifest_digest: e.manifest.clone(),
        root: e.root.clone(),
        file_count: e.files,
        size: e.size,
        publisher_key: e.publisher_key.clone(),
        visibility: if e.private {
            pb::Visibility::Private
        } else {
            pb::Visibility::Public
        } as i32,
        yanked: record.yanked.is_some(),
        yank_reason: record
            .yanked
            .as_ref()
            .map(|y| y.reason.clone())
            .unwrap_or_default(),
        ledger_index: record.index,
        published_at: Some(timestamp(record.time_ms)),
        files: if full {
            record
                .files
                .iter()
                .map(|f| pb::File {
                    path: f.path.clone(),
                    sha256: f.sha256.to_string(),
                    size: f.size,
                })
                .collect()
        } else {
            Vec::new()
        },
        envelope: if full {
            e.envelope.clone()
        } else {
            String::new()
        },
        oms_signature: e.oms_signature.clone().filter(|_| full).unwrap_or_default(),
        oms_public_key: e
            .oms_public_key
            .clone()
            .filter(|_| full)
            .unwrap_or_default(),
        data_pack: record
            .data_pack
            .as_ref()
            .filter(|p| who.can_read(&e.name, p.event.private))
            .map(|p| data_pack_pb(registry, p)),
        scan_status: registry.scan_status(&e.name, &e.version, &e.root),
    }
}

/// A recorded scan as the API returns it.
pub fn scan_result_pb(s: &crate::scan::Scanned) -> pb::ScanResult {
    pb::ScanResult {
        target: s.target.clone().unwrap_or_default(),
        scanner: s.scanner.clone(),
        verdict: s.verdict.as_str().into(),
        root: s.root.clone(),
        findings_json: serde_json::to_string(&s.findings).unwrap_or_else(|_| "[]".into()),
        omitted: s.omitted,
        receipt: Some(receipt_pb(&s.receipt)),
    }
}

/// The Registry service.
pub struct RegistryService {
    registry: Arc<Registry>,
    auth: Arc<Authenticator>,
}

impl RegistryService {
    /// A service over `registry`.
    pub fn new(registry: Arc<Registry>, auth: Arc<Authenticator>) -> Self {
        RegistryService { registry, auth }
    }
}

#[tonic::async_trait]
impl RegistryRpc for RegistryService {
    async fn publish_version(
        &self,
        request: Request<pb::PublishVersionRequest>,
    ) -> Result<Response<pb::PublishVersionResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let request = request.into_inner();
        let private = match pb::Visibility::try_from(request.visibility) {
            Ok(pb::Visibility::Private) => true,
            Ok(_) => false,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "field visibility: {} is not a Visibility value",
                    request.visibility
                )));
            }
        };
        let oms = match (
            request.oms_signature.is_empty(),
            request.oms_public_key.is_empty(),
        ) {
            (true, true) => None,
            (false, false) => Some(crate::registry::OmsSignature {
                signature: request.oms_signature.clone(),
                public_key: request.oms_public_key.clone(),
            }),
            _ => {
                return Err(Status::invalid_argument(
                    "field oms_signature: an OMS signature and its oms_public_key come together",
                ));
            }
        };
        let (recorded, scanned) = self
            .registry
            .publish_and_scan(
                &who,
                &request.envelope,
                &request.publisher_key,
                private,
                oms.as_ref(),
            )
            .await?;
        Ok(Response::new(pb::PublishVersionResponse {
            version: Some(version_pb(&self.registry, &who, &recorded.record, true)),
            receipt: Some(receipt_pb(&recorded.receipt)),
            already_published: recorded.already,
            warnings: recorded
                .warnings
                .into_iter()
                .map(|p| pb::Problem {
                    file: p.file,
                    line: p.line.unwrap_or(0) as u32,
                    field: p.field,
                    message: p.message,
                })
                .collect(),
            scan: scanned.as_ref().map(scan_result_pb),
        }))
    }

    async fn list_versions(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let versions = self.registry.list(&who, &request.get_ref().name)?;
        Ok(Response::new(pb::ListVersionsResponse {
            versions: versions
                .iter()
                .map(|v| version_pb(&self.registry, &who, v, false))
                .collect(),
        }))
    }

    async fn get_version(
        &self,
        request: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::Version>, Status> {
        let who = principal(&self.auth, &request)?;
        let request = request.get_ref();
        let record = self.registry.get(&who, &request.name, &request.version)?;
        Ok(Response::new(version_pb(
            &self.registry,
            &who,
            &record,
            true,
        )))
    }

    async fn yank(
        &self,
        request: Request<pb::YankRequest>,
    ) -> Result<Response<pb::YankResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let request = request.get_ref();
        let recorded = self
            .registry
            .yank(&who, &request.name, &request.version, &request.reason)
            .await?;
        Ok(Response::new(pb::YankResponse {
            version: Some(version_pb(&self.registry, &who, &recorded.record, false)),
            receipt: Some(receipt_pb(&recorded.receipt)),
            already_yanked: recorded.already,
        }))
    }
}
