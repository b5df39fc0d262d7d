//! The payloads of the registry's and the evidence service's ledger entries (`PackagePublished`,
//! `RunAttested`, `KeyEvent`, `EvalPreregistered`, …). They are CBOR maps with text keys (see docs/formats.md); an auditor
//! decodes them with these types to replay the registry's history from the log alone.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::datapack::Provenance;
use crate::entry::{Entry, EntryError, EntryKind, Value};

/// Why a payload does not decode as the expected event.
#[derive(Debug, thiserror::Error)]
#[error("the {kind} payload is malformed: {reason}")]
pub struct EventError {
    /// The entry kind.
    pub kind: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// A package version was published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackagePublished {
    /// The package name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The manifest's `type`.
    #[serde(rename = "type")]
    pub package_type: String,
    /// The manifest's digest, `sha256:<hex>`: what attestations name as their subject.
    pub manifest: String,
    /// The package root, `sha256:<hex>` (see `package`).
    pub root: String,
    /// How many files.
    pub files: u64,
    /// Their total size in bytes.
    pub size: u64,
    /// The publisher's verifier key (`name+hexid+base64`), pinned for the package name.
    pub publisher_key: String,
    /// The signed DSSE envelope, as JSON text.
    pub envelope: String,
    /// True if the version is readable only with a read grant.
    pub private: bool,
    /// An OpenSSF model-signing v1.0 signature over the same files (`model.sig`, JSON text),
    /// if the publisher brought one (see `oms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oms_signature: Option<String>,
    /// The ECDSA public key (PEM) the OMS signature verifies with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oms_public_key: Option<String>,
}

/// A package version was yanked. It stays fetchable; installers warn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionYanked {
    /// The package name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Why.
    pub reason: String,
    /// True if the version is private.
    pub private: bool,
}

/// Where a registered data pack's bytes are: in custody, or somewhere its publisher names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataPackMode {
    /// Uploaded into custody: the registry holds the bytes, checked against their digest.
    Hosted,
    /// Elsewhere (`uri`); the registry records the declared checksum only.
    #[default]
    External,
}

impl DataPackMode {
    /// `hosted` or `external`, as the ledger and the APIs write it.
    pub fn as_str(self) -> &'static str {
        match self {
            DataPackMode::Hosted => "hosted",
            DataPackMode::External => "external",
        }
    }
}

impl std::fmt::Display for DataPackMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A data pack, hosted or external, as registered for one package version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPack {
    /// Hosted or external.
    pub mode: DataPackMode,
    /// The data's license.
    pub license: String,
    /// The data artifact's logical version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_version: Option<String>,
    /// Hosted: the bytes' sha256 digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Hosted: the bytes' blake3 digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Hosted: the size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Hosted: the uploaded file's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// Hosted: provenance JSON, as text (kept byte for byte).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance_json: Option<String>,
    /// Hosted: the eval set built from the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_set_uri: Option<String>,
    /// Hosted: `inherit`, `public` or `private`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<String>,
    /// Hosted: the malware scan status when registered (`pending` until a scanner reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_status: Option<String>,
    /// External: `s3`, `r2`, `gcs`, `github`, `url` or `private_api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_type: Option<String>,
    /// External: where the data is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// External: the expected digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// External: the checksum algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_algorithm: Option<String>,
    /// External: how consumers get access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<String>,
    /// External: schema, citations, eval set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

/// A data pack was registered for a package version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPackRegistered {
    /// The package name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// True if the pack's bytes or record are readable only with a read grant.
    pub private: bool,
    /// The pack.
    pub pack: DataPack,
}

/// An eval run was attested.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAttested {
    /// The package name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The manifest digest the run names as its subject.
    pub manifest: String,
    /// The eval id.
    pub eval_id: String,
    /// The model.
    pub model: String,
    /// Whether it passed.
    pub passed: bool,
    /// The data pack it read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_pack_sha256: Option<String>,
    /// `sha256:` of the canonical JSON of its reproducibility context.
    pub context_sha256: String,
    /// The runner's identity.
    pub runner: String,
    /// When it finished, Unix milliseconds.
    pub finished_ms: u64,
    /// The attester's verifier key.
    pub attester_key: String,
    /// The signed DSSE envelope, as JSON text.
    pub envelope: String,
    /// True if the version is private.
    pub private: bool,
}

/// A scan of a package version's content was recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRecorded {
    /// The package name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The scanner's identity.
    pub scanner: String,
    /// `clean`, `flagged` or `error`.
    pub verdict: String,
    /// The content root scanned (`sha256:<package root>`).
    pub root: String,
    /// Findings as JSON text (file, offset, rule, severity, message).
    pub findings: String,
    /// True if the version is private.
    pub private: bool,
    /// What was scanned: absent for the package's files, `data_pack` for its hosted data pack
    /// (whose `sha256:` is then the root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The `target` of a ScanRecorded entry over a hosted data pack.
pub const DATA_PACK_TARGET: &str = "data_pack";

/// A key event: a publisher or attester key introduced, rotated or revoked (see `keys`).
/// Entries written before rotation and revocation existed carry no `action` and are
/// introductions of attester keys; they decode unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEvent {
    /// `introduce`, `rotate` or `revoke`; absent means `introduce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `attester` or `publisher`.
    pub role: String,
    /// The verifier key introduced, rotated to, or revoked.
    pub key: String,
    /// The id of the token that recorded the event.
    pub principal: String,
    /// Attester: package-name prefixes the key may attest for (`*` for all). Publisher: the
    /// package names the key signs for.
    pub namespaces: Vec<String>,
    /// Rotate: the key being replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Rotate and revoke: why (`compromise`, `superseded`, `retired`, or free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Revoke: from when signatures by the key stop counting, Unix milliseconds; earlier than
    /// the entry's own time only for a compromise. Absent: from the entry's own time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_ms: Option<u64>,
    /// Rotate: the DSSE envelope (JSON text) of the rotation statement, signed by both the
    /// previous and the new key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<String>,
}

impl KeyEvent {
    /// An introduction of `key` in `role` for `namespaces`, recorded by token `principal`.
    pub fn introduce(role: &str, key: String, principal: String, namespaces: Vec<String>) -> Self {
        KeyEvent {
            action: None,
            role: role.into(),
            key,
            principal,
            namespaces,
            previous: None,
            reason: None,
            effective_ms: None,
            envelope: None,
        }
    }

    /// The action, with an absent one read as `introduce`.
    pub fn action(&self) -> &str {
        self.action.as_deref().unwrap_or(crate::keys::INTRODUCE)
    }
}

/// An eval's acceptance criteria, pre-registered for a package version before its runs
/// (see `prereg`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalPreregistered {
    /// The package name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The manifest digest the pre-registration names as its subject.
    pub manifest: String,
    /// The eval id.
    pub eval_id: String,
    /// The metric that decides.
    pub metric: String,
    /// `>=`, `>`, `<=`, `<` or `==`.
    pub comparator: String,
    /// The threshold, as decimal text (ledger payloads carry no floats).
    pub threshold: String,
    /// The data pack the runs must read, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_pack_sha256: Option<String>,
    /// How many cases a run evaluates.
    pub sample_size: u64,
    /// The seed the runs must use, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The digest of the eval harness the runs must use, `sha256:<hex>`.
    pub harness_sha256: String,
    /// The verifier key that signed it: the package's publisher or an attester for it.
    pub signer_key: String,
    /// The signed DSSE envelope, as JSON text.
    pub envelope: String,
    /// True if the version is private.
    pub private: bool,
}

/// A badge was issued for a package version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadgeIssued {
    /// The package name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// `green`, `review` or `failing`.
    pub state: String,
    /// The policy version.
    pub policy: String,
    /// The ledger indexes of the evidence used.
    pub evidence: Vec<u64>,
    /// The evaluation time, Unix milliseconds.
    pub evaluated_ms: u64,
    /// True if the version is private.
    pub private: bool,
    /// The registry's license ids the badge accepted as machine-readable (policy v3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_licenses: Vec<String>,
}

/// A manifest was pushed to an OCI repository through the `/v2/` front end, by tag or by digest.
/// A push by tag is also the tag's move: `previous` names what the tag pointed at before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciManifestPut {
    /// The repository, e.g. `acme/classifier`.
    pub name: String,
    /// The tag it was pushed under; absent for a push by digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The manifest's digest, `sha256:<hex>`.
    pub digest: String,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest's size in bytes.
    pub size: u64,
    /// Its artifact type (`artifactType`, else the config's media type), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The digest of the manifest it refers to (`subject`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Its annotations, as the referrers API lists them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// What the tag pointed at before this push, if it existed (a tag move).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Who pushed it: `token <id> (<name>)`.
    pub pusher: String,
    /// True if the repository is private.
    pub private: bool,
}

/// A tag, or a manifest with every tag on it, was deleted from an OCI repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciDeleted {
    /// The repository.
    pub name: String,
    /// The deleted tag; absent when the manifest itself was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The manifest digest the tag pointed at, or the deleted manifest.
    pub digest: String,
    /// Who deleted it.
    pub pusher: String,
    /// True if the repository is private.
    pub private: bool,
}

/// What a [`BlobRetention`] event does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetentionAction {
    /// Keep the blobs until the pin's expiry (or until unpinned).
    Pin,
    /// Remove a pin placed on the same subject.
    Unpin,
    /// A legal hold: keep the blobs, whatever else happens, until an admin releases it.
    Hold,
    /// Release a legal hold placed on the same subject.
    Release,
}

impl RetentionAction {
    /// The action's name as written in entries.
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionAction::Pin => "pin",
            RetentionAction::Unpin => "unpin",
            RetentionAction::Hold => "hold",
            RetentionAction::Release => "release",
        }
    }
}

/// A pin or a legal hold placed on blobs, or removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRetention {
    /// What is done.
    pub action: RetentionAction,
    /// What it was asked for: a digest, or `NAME@VERSION` (its files and hosted data pack).
    pub subject: String,
    /// The blobs it covers, as `sha256:<hex>`.
    pub digests: Vec<String>,
    /// Why (required for holds and their release).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When a pin lapses (ms since the Unix epoch); absent: never. Holds have no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Who asked (the token's label).
    pub by: String,
}

/// One blob removed from custody.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedBlob {
    /// Its digest, `sha256:<hex>`.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its other address, `blake3:<hex>`, so that a client or auditor holding only that digest
    /// can learn its fate (absent in entries written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// When the deleted copy was committed (ms since the Unix epoch). The same digest put again
    /// after the deletion is a new copy, committed later; a daemon finishing this deletion after
    /// a crash, or an auditor reconciling a listing, tells the two apart by this time (absent in
    /// entries written before it was recorded: the entry's own time bounds the copy then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<u64>,
}

/// Blobs removed from custody, recorded before they are removed: an auditor can tell every
/// absent blob's fate, and a daemon that crashed part-way finishes the removal on restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobsDeleted {
    /// The blobs.
    pub blobs: Vec<DeletedBlob>,
    /// Why: `garbage collection` or an admin's reason.
    pub reason: String,
    /// The policy they were judged under, e.g. `unreferenced, unpinned, unheld, untouched for
    /// 7d` or `admin delete`.
    pub policy: String,
    /// The grace period applied, in milliseconds (0 for an admin delete).
    pub grace_ms: u64,
    /// Who ran it (the token's label, or `gc` for the daemon's schedule).
    pub by: String,
}

/// True if a package-name prefix in `namespaces` covers `name` (`*` covers every name).
pub fn namespace_covers(namespaces: &[String], name: &str) -> bool {
    namespaces
        .iter()
        .any(|ns| ns == "*" || name.starts_with(ns.as_str()))
}

/// A registry or evidence event: a payload type and the entry kind it is written under, so
/// that the kind is named once, by the type, and never as a string beside it.
pub trait Event: Serialize + DeserializeOwned {
    /// The entry kind this event is written under.
    const KIND: EntryKind;
    /// The kind's name, for errors.
    const NAME: &'static str;
}

macro_rules! event {
    ($type:ty, $kind:ident) => {
        impl Event for $type {
            const KIND: EntryKind = EntryKind::$kind;
            const NAME: &'static str = stringify!($kind);
        }
    };
}

event!(PackagePublished, PackagePublished);
event!(VersionYanked, VersionYanked);
event!(DataPackRegistered, DataPackRegistered);
event!(RunAttested, RunAttested);
event!(ScanRecorded, ScanRecorded);
event!(KeyEvent, KeyEvent);
event!(EvalPreregistered, EvalPreregistered);
event!(BadgeIssued, BadgeIssued);
event!(OciManifestPut, OciManifestPut);
event!(OciDeleted, OciDeleted);
event!(BlobRetention, BlobRetention);
event!(BlobsDeleted, BlobsDeleted);

/// Encodes an event as its CBOR payload value.
pub fn to_payload<T: Event>(event: &T) -> Result<Value, EventError> {
    Value::serialized(event).map_err(|e| EventError {
        kind: T::NAME,
        reason: e.to_string(),
    })
}

/// Decodes an event from a CBOR payload value.
pub fn from_payload<T: Event>(payload: &Value) -> Result<T, EventError> {
    payload.deserialized().map_err(|e| EventError {
        kind: T::NAME,
        reason: e.to_string(),
    })
}

impl Entry {
    /// The entry's event, if the entry is of `T`'s kind and its payload decodes as `T`.
    pub fn event<T: Event>(&self) -> Result<T, EventError> {
        if self.kind != T::KIND {
            return Err(EventError {
                kind: T::NAME,
                reason: format!("the entry is a {}", self.kind.as_str()),
            });
        }
        from_payload(&self.payload)
    }
}

/// A field of an entry's payload map, if the payload is a map with that key.
pub fn payload_field<'a>(entry: &'a Entry, key: &str) -> Option<&'a Value> {
    let Value::Map(pairs) = &entry.payload else {
        return None;
    };
    pairs
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

/// The package an entry concerns, if the entry says that it is about private content (its
/// payload is a map with `private: true` and a `name`). Readers without a grant for that name
/// must not see the entry.
pub fn private_package(entry: &Entry) -> Option<String> {
    match (
        payload_field(entry, "private"),
        payload_field(entry, "name"),
    ) {
        (Some(Value::Bool(true)), Some(Value::Text(name))) => Some(name.clone()),
        _ => None,
    }
}

/// Why an entry cannot go into a public tlog-tiles entry bundle, if it cannot: it is about a
/// private package (readable only with a grant), or longer than a bundle's uint16 length prefix
/// can say. An entry that does not decode is published as it is: the bundle only carries bytes.
pub fn bundle_refusal(entry_bytes: &[u8]) -> Option<String> {
    if entry_bytes.len() > crate::tiles::MAX_BUNDLE_ENTRY {
        return Some(format!(
            "it is {} bytes, over the {} a tlog-tiles entry bundle can hold",
            entry_bytes.len(),
            crate::tiles::MAX_BUNDLE_ENTRY
        ));
    }
    let service =
        crate::entry::peek_kind(entry_bytes).is_some_and(crate::entry::EntryKind::is_service_name);
    if !service {
        return None;
    }
    let entry = Entry::decode(entry_bytes).ok()?;
    private_package(&entry)
        .map(|_| "it is about a private package, readable only with a grant".into())
}

impl From<EventError> for EntryError {
    fn from(err: EventError) -> Self {
        EntryError::Field {
            field: "payload",
            reason: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::EntryKind;
    use crate::merkle::Hash;

    #[test]
    fn events_round_trip_through_deterministic_entries() {
        let event = DataPackRegistered {
            name: "pacman-builder".into(),
            version: "0.2.1".into(),
            private: false,
            pack: DataPack {
                mode: DataPackMode::Hosted,
                license: "CC-BY-4.0".into(),
                sha256: Some(format!("sha256:{}", "ab".repeat(32))),
                size: Some(12),
                provenance_json: Some("{\"score\": 0.5}".into()),
                ..Default::default()
            },
        };
        let payload = to_payload(&event).expect("encodes");
        let entry = Entry::new(EntryKind::DataPackRegistered, Hash::ZERO, 1, payload)
            .expect("deterministic, no floats");
        let decoded = Entry::decode(&entry.encode()).expect("decodes");
        let back: DataPackRegistered = from_payload(&decoded.payload).expect("event");
        assert_eq!(back, event);
        assert!(from_payload::<PackagePublished>(&decoded.payload).is_err());
        assert!(decoded.event::<PackagePublished>().is_err());
        assert_eq!(
            decoded.event::<DataPackRegistered>().ok(),
            Some(event.clone())
        );
        assert_eq!(private_package(&decoded), None);

        let private = DataPackRegistered {
            private: true,
            ..event
        };
        let entry = Entry::new(
            EntryKind::DataPackRegistered,
            Hash::ZERO,
            1,
            to_payload(&private).expect("encodes"),
        )
        .expect("entry");
        assert_eq!(private_package(&entry).as_deref(), Some("pacman-builder"));
    }
}
