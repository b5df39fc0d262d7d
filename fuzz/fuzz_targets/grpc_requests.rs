//! Every unary gRPC method of the four services (`ContentStore`, `Ledger`, `Registry`,
//! `Evidence`) with an arbitrary request message, through the daemon's services in process on
//! custodian-server's `rest::fixture` (one published package; registry, ledger and custody in
//! memory), as an admin or as an anonymous caller. Beyond "no panic": every call ends with a
//! gRPC status, never `UNKNOWN`, `UNIMPLEMENTED`, `INTERNAL` or `DATA_LOSS`, since custody and the
//! ledger are in memory and cannot fail, so every refusal is of the request; and a refusal says
//! why (its message is not empty).
//!
//! Input: one byte choosing the method (and, from 216 up, an anonymous caller), then the request
//! message's protobuf bytes. Bytes that do not decode as the method's request are skipped: tonic
//! itself answers them `INTERNAL` before the daemon's code sees them.

#![no_main]

#[path = "common/world.rs"]
mod world;

use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fn decodes<M: prost::Message + Default>(bytes: &[u8]) -> bool {
    M::decode(bytes).is_ok()
}

/// Each unary method's path and whether bytes decode as its request.
const METHODS: &[(&str, fn(&[u8]) -> bool)] = &[
    (
        "/custodian.cas.v1.ContentStore/GetCapabilities",
        decodes::<custodian_proto::cas::v1::GetCapabilitiesRequest>,
    ),
    (
        "/custodian.cas.v1.ContentStore/StartUpload",
        decodes::<custodian_proto::cas::v1::StartUploadRequest>,
    ),
    (
        "/custodian.cas.v1.ContentStore/QueryUpload",
        decodes::<custodian_proto::cas::v1::QueryUploadRequest>,
    ),
    (
        "/custodian.cas.v1.ContentStore/FinishUpload",
        decodes::<custodian_proto::cas::v1::FinishUploadRequest>,
    ),
    (
        "/custodian.cas.v1.ContentStore/CancelUpload",
        decodes::<custodian_proto::cas::v1::CancelUploadRequest>,
    ),
    (
        "/custodian.cas.v1.ContentStore/Retain",
        decodes::<custodian_proto::cas::v1::RetainRequest>,
    ),
    (
        "/custodian.cas.v1.ContentStore/Why",
        decodes::<custodian_proto::cas::v1::WhyRequest>,
    ),
    (
        "/custodian.cas.v1.ContentStore/CollectGarbage",
        decodes::<custodian_proto::cas::v1::CollectGarbageRequest>,
    ),
    (
        "/custodian.cas.v1.ContentStore/DeleteBlob",
        decodes::<custodian_proto::cas::v1::DeleteBlobRequest>,
    ),
    (
        "/custodian.cas.v1.ContentStore/Stat",
        decodes::<custodian_proto::cas::v1::StatRequest>,
    ),
    (
        "/custodian.cas.v1.ContentStore/FindMissing",
        decodes::<custodian_proto::cas::v1::FindMissingRequest>,
    ),
    (
        "/custodian.cas.v1.ContentStore/BatchPut",
        decodes::<custodian_proto::cas::v1::BatchPutRequest>,
    ),
    (
        "/custodian.cas.v1.ContentStore/BatchGet",
        decodes::<custodian_proto::cas::v1::BatchGetRequest>,
    ),
    (
        "/custodian.ledger.v1.Ledger/GetLogInfo",
        decodes::<custodian_proto::ledger::v1::GetLogInfoRequest>,
    ),
    (
        "/custodian.ledger.v1.Ledger/GetCheckpoint",
        decodes::<custodian_proto::ledger::v1::GetCheckpointRequest>,
    ),
    (
        "/custodian.ledger.v1.Ledger/GetEntry",
        decodes::<custodian_proto::ledger::v1::GetEntryRequest>,
    ),
    (
        "/custodian.ledger.v1.Ledger/GetInclusionProof",
        decodes::<custodian_proto::ledger::v1::GetInclusionProofRequest>,
    ),
    (
        "/custodian.ledger.v1.Ledger/GetConsistencyProof",
        decodes::<custodian_proto::ledger::v1::GetConsistencyProofRequest>,
    ),
    (
        "/custodian.ledger.v1.Ledger/GetReceipt",
        decodes::<custodian_proto::ledger::v1::GetReceiptRequest>,
    ),
    (
        "/custodian.ledger.v1.Ledger/Append",
        decodes::<custodian_proto::ledger::v1::AppendRequest>,
    ),
    (
        "/custodian.registry.v1.Registry/PublishVersion",
        decodes::<custodian_proto::registry::v1::PublishVersionRequest>,
    ),
    (
        "/custodian.registry.v1.Registry/ListVersions",
        decodes::<custodian_proto::registry::v1::ListVersionsRequest>,
    ),
    (
        "/custodian.registry.v1.Registry/GetVersion",
        decodes::<custodian_proto::registry::v1::GetVersionRequest>,
    ),
    (
        "/custodian.registry.v1.Registry/Yank",
        decodes::<custodian_proto::registry::v1::YankRequest>,
    ),
    (
        "/custodian.evidence.v1.Evidence/RegisterAttester",
        decodes::<custodian_proto::evidence::v1::RegisterAttesterRequest>,
    ),
    (
        "/custodian.evidence.v1.Evidence/AttestRun",
        decodes::<custodian_proto::evidence::v1::AttestRunRequest>,
    ),
    (
        "/custodian.evidence.v1.Evidence/AttestRuns",
        decodes::<custodian_proto::evidence::v1::AttestRunsRequest>,
    ),
    (
        "/custodian.evidence.v1.Evidence/RecordScan",
        decodes::<custodian_proto::evidence::v1::RecordScanRequest>,
    ),
    (
        "/custodian.evidence.v1.Evidence/ScanVersion",
        decodes::<custodian_proto::evidence::v1::ScanVersionRequest>,
    ),
    (
        "/custodian.evidence.v1.Evidence/ListPendingScans",
        decodes::<custodian_proto::evidence::v1::ListPendingScansRequest>,
    ),
    (
        "/custodian.evidence.v1.Evidence/GetBadge",
        decodes::<custodian_proto::evidence::v1::GetBadgeRequest>,
    ),
    (
        "/custodian.evidence.v1.Evidence/GetReport",
        decodes::<custodian_proto::evidence::v1::GetReportRequest>,
    ),
    (
        "/custodian.evidence.v1.Evidence/PreregisterEval",
        decodes::<custodian_proto::evidence::v1::PreregisterEvalRequest>,
    ),
    (
        "/custodian.evidence.v1.Evidence/RotateKey",
        decodes::<custodian_proto::evidence::v1::RotateKeyRequest>,
    ),
    (
        "/custodian.evidence.v1.Evidence/RevokeKey",
        decodes::<custodian_proto::evidence::v1::RevokeKeyRequest>,
    ),
    (
        "/custodian.evidence.v1.Evidence/IntroduceKey",
        decodes::<custodian_proto::evidence::v1::IntroduceKeyRequest>,
    ),
];

/// The statuses that are never an answer to a request: the daemon's failure, not the caller's.
const NEVER: &[&str] = &["2", "12", "13", "15"];

/// One unary call with `message` (admin if `admin`); the status code, its message, and the
/// answer's first message.
fn call(path: &str, message: &[u8], admin: bool) -> (String, String, Vec<u8>) {
    let answer = world::world().grpc_unary(path, message, admin);
    let first = answer.first().to_vec();
    (answer.code, answer.why, first)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, message)) = data.split_first() else {
        return;
    };
    let (path, decodes) = METHODS[usize::from(selector) % METHODS.len()];
    if !decodes(message) {
        return;
    }
    // Every method is reached both ways: 216 is a multiple of the 36 methods.
    let (code, why, _) = call(path, message, selector < 216);
    assert!(
        !NEVER.contains(&code.as_str()),
        "{path}: status {code}: {why}"
    );
    assert!(
        code == "0" || !why.is_empty(),
        "{path}: status {code} without a message"
    );
    if code != "0" {
        return;
    }
    // What was acknowledged can be read back: the newest entry's receipt is served, whatever the
    // call appended.
    let (code, why, info) = call("/custodian.ledger.v1.Ledger/GetLogInfo", &[], true);
    assert_eq!(code, "0", "GetLogInfo: {why}");
    let size = custodian_proto::ledger::v1::LogInfo::decode(info.as_slice())
        .expect("LogInfo")
        .size;
    if size == 0 {
        return;
    }
    let request = custodian_proto::ledger::v1::GetReceiptRequest {
        leaf: Some(custodian_proto::ledger::v1::get_receipt_request::Leaf::Index(size - 1)),
    };
    let (code, why, _) = call(
        "/custodian.ledger.v1.Ledger/GetReceipt",
        &request.encode_to_vec(),
        true,
    );
    assert_eq!(
        code,
        "0",
        "after {path} answered OK, the newest entry ({}) is not served: {why}",
        size - 1
    );
});
