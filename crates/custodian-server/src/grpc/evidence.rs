//! `custodian.evidence.v1.Evidence`: attestations, scans and badges over gRPC.

use std::sync::Arc;

use custodian_core::registry::ScanRecorded;
use custodian_proto::evidence::v1 as pb;
use custodian_proto::evidence::v1::evidence_server::Evidence as EvidenceRpc;
use tonic::{Request, Response, Status};

use crate::auth::Authenticator;
use crate::evidence::Attested;
use crate::grpc::ledger::receipt_pb;
use crate::grpc::status::principal;
use crate::registry::Registry;

/// The Evidence service.
pub struct EvidenceService {
    registry: Arc<Registry>,
    auth: Arc<Authenticator>,
}

impl EvidenceService {
    /// A service over `registry`.
    pub fn new(registry: Arc<Registry>, auth: Arc<Authenticator>) -> Self {
        EvidenceService { registry, auth }
    }
}

#[tonic::async_trait]
impl EvidenceRpc for EvidenceService {
    async fn register_attester(
        &self,
        request: Request<pb::RegisterAttesterRequest>,
    ) -> Result<Response<pb::RegisterAttesterResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let (namespaces, receipt, already) = self
            .registry
            .register_attester(&who, &request.get_ref().verifier_key)
            .await?;
        Ok(Response::new(pb::RegisterAttesterResponse {
            namespaces,
            receipt: Some(receipt_pb(&receipt)),
            already_registered: already,
        }))
    }

    async fn attest_run(
        &self,
        request: Request<pb::AttestRunRequest>,
    ) -> Result<Response<pb::AttestRunResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let receipt = self
            .registry
            .attest(&who, &request.get_ref().envelope)
            .await?;
        Ok(Response::new(pb::AttestRunResponse {
            receipt: Some(receipt_pb(&receipt)),
        }))
    }

    async fn attest_runs(
        &self,
        request: Request<pb::AttestRunsRequest>,
    ) -> Result<Response<pb::AttestRunsResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let request = request.into_inner();
        let envelopes = request.runs.into_iter().map(|r| r.envelope).collect();
        let results = self
            .registry
            .attest_many(&who, envelopes, !request.compact)
            .await
            .into_iter()
            .map(|r| match r {
                Ok(Attested::Receipt(receipt)) => pb::AttestRunResult {
                    ledger_index: receipt.index,
                    leaf_hash: custodian_core::merkle::leaf_hash(&receipt.entry)
                        .0
                        .to_vec()
                        .into(),
                    receipt: Some(receipt_pb(&receipt)),
                    ..Default::default()
                },
                Ok(Attested::Index { index, leaf_hash }) => pb::AttestRunResult {
                    ledger_index: index,
                    leaf_hash: leaf_hash.0.to_vec().into(),
                    ..Default::default()
                },
                Err(err) => {
                    let status = Status::from(err);
                    pb::AttestRunResult {
                        error_code: status.code() as i32,
                        error_message: status.message().to_string(),
                        ..Default::default()
                    }
                }
            })
            .collect();
        Ok(Response::new(pb::AttestRunsResponse { results }))
    }

    async fn record_scan(
        &self,
        request: Request<pb::RecordScanRequest>,
    ) -> Result<Response<pb::RecordScanResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let r = request.into_inner();
        let receipt = self
            .registry
            .record_scan(
                &who,
                ScanRecorded {
                    name: r.name,
                    version: r.version,
                    scanner: r.scanner,
                    verdict: r.verdict,
                    root: r.root,
                    findings: r.findings_json,
                    private: false,
                    target: (!r.target.is_empty()).then_some(r.target),
                },
            )
            .await?;
        Ok(Response::new(pb::RecordScanResponse {
            receipt: Some(receipt_pb(&receipt)),
        }))
    }

    async fn scan_version(
        &self,
        request: Request<pb::ScanVersionRequest>,
    ) -> Result<Response<pb::ScanVersionResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let r = request.into_inner();
        let (results, queued) = self.registry.rescan(&who, &r.name, &r.version).await?;
        Ok(Response::new(pb::ScanVersionResponse {
            results: results
                .iter()
                .map(crate::grpc::registry::scan_result_pb)
                .collect(),
            queued,
        }))
    }

    async fn list_pending_scans(
        &self,
        request: Request<pb::ListPendingScansRequest>,
    ) -> Result<Response<pb::ListPendingScansResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let r = request.into_inner();
        let limit = match r.limit {
            0 => 1000,
            n => n.min(1000) as usize,
        };
        let pending = self.registry.pending_scans(&who, &r.scanner, limit)?;
        Ok(Response::new(pb::ListPendingScansResponse {
            pending: pending
                .into_iter()
                .map(|p| pb::PendingScan {
                    name: p.name,
                    version: p.version,
                    target: p.target.unwrap_or_default(),
                    root: p.root,
                })
                .collect(),
        }))
    }

    async fn get_badge(
        &self,
        request: Request<pb::GetBadgeRequest>,
    ) -> Result<Response<pb::GetBadgeResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let r = request.get_ref();
        let (badge, bundle) = self.registry.badge(&who, &r.name, &r.version).await?;
        Ok(Response::new(pb::GetBadgeResponse {
            state: badge.state.as_str().into(),
            badge_json: serde_json::to_string(&badge).unwrap_or_default(),
            bundle_json: bundle.to_json(),
        }))
    }

    async fn get_report(
        &self,
        request: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::GetReportResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let r = request.get_ref();
        let (badge, rows) = self.registry.report(&who, &r.name, &r.version).await?;
        Ok(Response::new(pb::GetReportResponse {
            badge_state: badge.state.as_str().into(),
            rows: rows
                .into_iter()
                .map(|row| {
                    let latest = row.latest;
                    pb::ReportRow {
                        eval_id: row.eval_id,
                        model: row.model,
                        has_run: latest.is_some(),
                        passed: latest.as_ref().is_some_and(|l| l.passed),
                        ledger_index: latest.as_ref().map_or(0, |l| l.ledger_index),
                        integrated_ms: latest.as_ref().map_or(0, |l| l.integrated_ms),
                        age_ms: latest.as_ref().map_or(0, |l| l.age_ms),
                        data_pack_sha256: latest
                            .as_ref()
                            .and_then(|l| l.data_pack_sha256.clone())
                            .unwrap_or_default(),
                        context_sha256: latest
                            .as_ref()
                            .map(|l| l.context_sha256.clone())
                            .unwrap_or_default(),
                        runner: latest.map(|l| l.runner).unwrap_or_default(),
                        preregistered: row.preregistration.is_some(),
                        preregistration_index: row.preregistration.as_ref().map_or(0, |p| p.0),
                        preregistration_json: row
                            .preregistration
                            .map(|p| p.1.to_string())
                            .unwrap_or_default(),
                    }
                })
                .collect(),
        }))
    }

    async fn preregister_eval(
        &self,
        request: Request<pb::PreregisterEvalRequest>,
    ) -> Result<Response<pb::PreregisterEvalResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let receipt = self
            .registry
            .preregister(&who, &request.get_ref().envelope)
            .await?;
        Ok(Response::new(pb::PreregisterEvalResponse {
            receipt: Some(receipt_pb(&receipt)),
        }))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::KeyEventResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let recorded = self
            .registry
            .rotate_key(&who, &request.get_ref().envelope)
            .await?;
        Ok(key_event_response(recorded))
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::KeyEventResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let r = request.get_ref();
        let recorded = self
            .registry
            .revoke_key(&who, &r.role, &r.verifier_key, &r.reason, r.effective_ms)
            .await?;
        Ok(key_event_response(recorded))
    }

    async fn introduce_key(
        &self,
        request: Request<pb::IntroduceKeyRequest>,
    ) -> Result<Response<pb::KeyEventResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let r = request.get_ref();
        let recorded = self
            .registry
            .introduce_publisher(&who, &r.package, &r.verifier_key)
            .await?;
        Ok(key_event_response(recorded))
    }
}

fn key_event_response(
    (event, receipt): (
        custodian_core::registry::KeyEvent,
        custodian_core::receipt::Receipt,
    ),
) -> Response<pb::KeyEventResponse> {
    Response::new(pb::KeyEventResponse {
        event_json: serde_json::to_string(&event).unwrap_or_default(),
        receipt: Some(receipt_pb(&receipt)),
    })
}
