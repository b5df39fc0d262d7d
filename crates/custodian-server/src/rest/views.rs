//! The JSON shapes the REST API answers with (docs/openapi.yaml describes each).

use serde::Serialize;
use serde_json::json;

use crate::auth::Principal;
use crate::registry::{DataPackRecord, Recorded, Registry, VersionRecord};

pub(super) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

#[derive(Serialize)]
pub(super) struct FileJson<'a> {
    path: &'a str,
    sha256: String,
    size: u64,
}

pub(super) fn data_pack_json(registry: &Registry, record: &DataPackRecord) -> serde_json::Value {
    let mut value = serde_json::to_value(&record.event.pack).unwrap_or_default();
    let provenance_json = record
        .event
        .pack
        .provenance_json
        .as_deref()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok());
    if let Some(object) = value.as_object_mut() {
        // The ledger records the data's own version as data_version (a version row has its own
        // version); the API answers with the seed's name for it.
        if let Some(v) = object.remove("data_version") {
            object.insert("version".into(), v);
        }
        object.remove("provenance_json");
        if let Some(p) = provenance_json {
            object.insert("provenance".into(), p);
        }
        object.insert("ledger_index".into(), record.index.into());
        object.insert("registered_at".into(), rfc3339(record.time_ms).into());
        object.insert("private".into(), record.event.private.into());
        if record.event.pack.mode == custodian_core::registry::DataPackMode::Hosted {
            // The registration recorded the first verdict; later scans (rescans, external
            // scanners) are in the ledger, and the status shown is the worst latest of them.
            if let Some(sha256) = &record.event.pack.sha256 {
                object.insert(
                    "scan_status".into(),
                    registry
                        .scan_status(&record.event.name, &record.event.version, sha256)
                        .into(),
                );
            }
            object.insert(
                "download".into(),
                format!(
                    "/wrappers/{}/versions/{}/data-pack/download",
                    encode_segment(&record.event.name),
                    record.event.version
                )
                .into(),
            );
        }
    }
    value
}

/// Percent-encodes one URL path segment (a scoped package name's `@` and `/` included).
pub fn encode_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(super) fn version_json(
    registry: &Registry,
    who: &Principal,
    record: &VersionRecord,
    full: bool,
) -> serde_json::Value {
    let e = &record.event;
    let mut value = json!({
        "name": e.name,
        "version": e.version,
        "type": e.package_type,
        "manifest_digest": e.manifest,
        "root": e.root,
        "file_count": e.files,
        "size": e.size,
        "publisher_key": e.publisher_key,
        "visibility": if e.private { "private" } else { "public" },
        "yanked": record.yanked.is_some(),
        "ledger_index": record.index,
        "published_at": rfc3339(record.time_ms),
        "scan_status": registry.scan_status(&e.name, &e.version, &e.root),
    });
    if let Some(crate::registry::Yank { reason, index, .. }) = &record.yanked {
        value["yank_reason"] = reason.clone().into();
        value["yank_ledger_index"] = (*index).into();
    }
    if let Some(pack) = record
        .data_pack
        .as_ref()
        .filter(|p| who.can_read(&e.name, p.event.private))
    {
        value["data_pack"] = data_pack_json(registry, pack);
    }
    if full {
        let files: Vec<FileJson<'_>> = record
            .files
            .iter()
            .map(|f| FileJson {
                path: &f.path,
                sha256: f.sha256.to_string(),
                size: f.size,
            })
            .collect();
        value["files"] = serde_json::to_value(files).unwrap_or_default();
        value["envelope"] = serde_json::from_str(&e.envelope).unwrap_or_default();
    }
    value
}

pub(super) fn recorded_json<T>(
    recorded: &Recorded<T>,
    record: serde_json::Value,
) -> serde_json::Value {
    json!({
        "record": record,
        "already_recorded": recorded.already,
        "receipt": serde_json::from_str::<serde_json::Value>(&recorded.receipt.to_json()).unwrap_or_default(),
    })
}
