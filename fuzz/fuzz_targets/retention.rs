//! Retention (docs/operations.md, "Retention: pins, legal holds, garbage collection"), as a
//! program of gRPC calls against a model: blobs put, versions published with them, hosted data
//! packs of the same bytes registered for those versions, pins and legal holds placed and removed
//! on digests and on versions, blobs linked into and unlinked from an OCI repository, `Why`,
//! `DeleteBlob` and `CollectGarbage`, through custodian-server's `rest::fixture` with upload
//! sessions that expire at once, so that a collection may be asked for no grace and collect what was put a moment
//! before. Each execution has blobs and versions of its own, so the model starts empty; at its
//! end the execution releases its holds and deletes its blobs, so that custody stays small.
//!
//! What is checked, beyond "no panic" and "a status, always":
//! - nothing leaves custody but by a `BlobsDeleted` entry: after every call, each of the
//!   execution's blobs is in custody exactly when the model says, with its bytes;
//! - a collection with no grace deletes exactly the execution's blobs that no legal hold, no
//!   published version (its files and its hosted data pack), no OCI link and no pin keeps, and with an hour's grace none of them; a dry run deletes
//!   nothing and names the same blobs; each deletion is recorded by an entry the answer names;
//! - `DeleteBlob` needs a reason, is refused under a legal hold even with force, and while a
//!   version, an OCI link or a pin keeps the blob unless forced; otherwise it deletes the blob by one entry;
//! - `Retain` checks, in this order, the action, the caller, the reason of a hold or release, that
//!   only a pin lapses, and the subject: a pin or hold covers the sha256 of a digest in custody
//!   (named by either algorithm) or of all of a version's files and its hosted data pack,
//!   refused with `NOT_FOUND` if any is not in custody; an unpin or release removes every pin or hold placed on the same subject
//!   text, and is refused if there is none;
//! - `Why` lists exactly the model's keepers (each hold and pin with its subject and entry, the
//!   package that refers to the blob, the OCI repository linking it, the grace period when
//!   judged with one) and the latest
//!   deletion's entry, reason and size, also once the blob is put again; a blob that is gone is
//!   answered `NOT_FOUND` naming that entry;
//! - an OCI push links the blob, an unlink answers `202` exactly when it was linked (and
//!   `BLOB_UNKNOWN` otherwise), and a link outlasts the blob's deletion: the blob put again is
//!   kept by it;
//! - a hosted data pack is registered (`201`) for a published version that has none, answered
//!   `200` for the same bytes again when the upload declares their sha256 (an idempotent retry)
//!   and `409` otherwise, `404` for a version never published (to anyone: that a version does
//!   not exist is not a secret); its bytes are in custody after either success;
//! - a caller without a token changes nothing and is told an admin token is needed.
//!
//! Input: a program, as in `oci_uploads`: one byte choosing the operation (from 128 up, as an
//! anonymous caller), then the operation's own bytes.

#![no_main]

#[path = "common/world.rs"]
mod world;

#[path = "common/program.rs"]
mod program;

use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use bytes::Bytes;
use custodian_core::package::FileEntry;
use custodian_core::{Algorithm, Digest};
use custodian_proto::cas::v1 as cas;
use custodian_server::rest::fixture;
use http::{Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use program::Program;
use world::{Answer, World};

/// How many blobs an execution puts (besides its versions' manifests).
const SLOTS: usize = 4;

const RETAIN: &str = "/custodian.cas.v1.ContentStore/Retain";
const WHY: &str = "/custodian.cas.v1.ContentStore/Why";
const DELETE: &str = "/custodian.cas.v1.ContentStore/DeleteBlob";
const COLLECT: &str = "/custodian.cas.v1.ContentStore/CollectGarbage";
const STAT: &str = "/custodian.cas.v1.ContentStore/Stat";

/// One of the execution's blobs as the model knows it.
struct Blob {
    bytes: Vec<u8>,
    sha256: Digest,
    blake3: Digest,
    /// In custody now.
    present: bool,
    /// The latest deletion: its entry, reason and policy.
    deleted: Option<(u64, String, String)>,
    /// Linked into the execution's OCI repository (a link outlasts the blob's deletion).
    linked: bool,
}

/// A pin or a legal hold as the model knows it.
struct Placed {
    /// The subject as the caller wrote it.
    subject: String,
    /// The blobs it covers (indexes into `Model::blobs`).
    blobs: Vec<usize>,
    /// The `BlobRetention` entry that placed it.
    index: u64,
    /// A pin's expiry was asked for (an hour: it does not lapse within an execution).
    expiring: bool,
    /// A hold's reason.
    reason: String,
}

/// A publication the execution asked for.
struct Version {
    version: String,
    /// Its files, the manifest first (indexes into `Model::blobs`).
    files: Vec<usize>,
    published: bool,
    /// Its hosted data pack, once registered (an index into `Model::blobs`).
    data_pack: Option<usize>,
}

impl Version {
    /// The blobs it keeps: its files and its hosted data pack.
    fn blobs(&self) -> Vec<usize> {
        self.files.iter().copied().chain(self.data_pack).collect()
    }
}

/// What one execution's calls are judged against.
struct Model {
    execution: u64,
    /// The execution's OCI repository.
    repo: String,
    /// The slots' blobs first, then each version's manifest.
    blobs: Vec<Blob>,
    versions: Vec<Version>,
    pins: Vec<Placed>,
    holds: Vec<Placed>,
}

impl Model {
    fn new(execution: u64) -> Self {
        let blobs = (0..SLOTS)
            .map(|slot| blob(format!("retention fuzz {execution} slot {slot}\n").into_bytes()))
            .collect();
        Model {
            execution,
            repo: format!("fuzz/retention-{execution}"),
            blobs,
            versions: Vec::new(),
            pins: Vec::new(),
            holds: Vec::new(),
        }
    }

    fn referenced(&self, blob: usize) -> bool {
        self.versions
            .iter()
            .any(|v| v.published && v.blobs().contains(&blob))
    }

    fn held(&self, blob: usize) -> bool {
        self.holds.iter().any(|h| h.blobs.contains(&blob))
    }

    fn pinned(&self, blob: usize) -> bool {
        self.pins.iter().any(|p| p.blobs.contains(&blob))
    }

    /// Kept by something a forced deletion overrides: a version, an OCI link or a pin.
    fn kept(&self, blob: usize) -> bool {
        self.referenced(blob) || self.blobs[blob].linked || self.pinned(blob)
    }

    /// What a collection with no grace takes: in custody, and nothing keeps it.
    fn collectable(&self, blob: usize) -> bool {
        self.blobs[blob].present && !self.held(blob) && !self.kept(blob)
    }

    /// The blob whose sha256 is `digest`, if it is one of the execution's.
    fn find(&self, digest: &str) -> Option<usize> {
        self.blobs
            .iter()
            .position(|b| b.sha256.to_string() == digest)
    }

    /// `Why`'s keepers of `blob`: each a line, and whether it is only the line's beginning
    /// (a time follows).
    fn keepers(&self, blob: usize, grace: bool) -> Vec<(String, bool)> {
        if !self.blobs[blob].present {
            return Vec::new();
        }
        let mut out = Vec::new();
        for hold in self.holds.iter().filter(|h| h.blobs.contains(&blob)) {
            out.push((
                format!(
                    "legal hold on {} (ledger entry {}): {}",
                    hold.subject, hold.index, hold.reason
                ),
                false,
            ));
        }
        if self.referenced(blob) {
            out.push((format!("referenced by package {}", fixture::NAME), false));
        }
        if self.blobs[blob].linked {
            out.push((format!("in OCI repositories {}", self.repo), false));
        }
        for pin in self.pins.iter().filter(|p| p.blobs.contains(&blob)) {
            out.push(if pin.expiring {
                (
                    format!(
                        "pinned as {} (ledger entry {}) until ",
                        pin.subject, pin.index
                    ),
                    true,
                )
            } else {
                (
                    format!(
                        "pinned as {} (ledger entry {}) with no expiry",
                        pin.subject, pin.index
                    ),
                    false,
                )
            });
        }
        if grace {
            out.push(("within the grace period until ".to_string(), true));
        }
        out
    }
}

fn blob(bytes: Vec<u8>) -> Blob {
    Blob {
        sha256: Digest::of(Algorithm::Sha256, &bytes),
        blake3: Digest::of(Algorithm::Blake3, &bytes),
        bytes,
        present: false,
        deleted: None,
        linked: false,
    }
}

/// The one world this target uses.
fn the_world() -> &'static World {
    world::world_without_grace()
}

/// Calls a unary method as an admin, or anonymously.
fn call(path: &str, request: &impl prost::Message, anonymous: bool) -> Answer {
    the_world().grpc_unary(path, &request.encode_to_vec(), !anonymous)
}

/// Asserts that `answer` is a refusal with `code` whose message contains `says`.
fn refused(answer: &Answer, code: u8, says: &str, what: &str) {
    assert_eq!(
        answer.code,
        code.to_string(),
        "{what}: expected code {code}, got {}: {}",
        answer.code,
        answer.why
    );
    assert!(
        answer.why.contains(says),
        "{what}: the refusal {:?} does not say {says:?}",
        answer.why
    );
}

/// An anonymous caller of an admin call is told to send an admin token.
fn refused_anonymous(answer: &Answer, what: &str) {
    refused(answer, 16, "needs an admin token", what);
}

/// A blob of the execution, or (`None`) one it never put, by the next byte.
fn pick(program: &mut Program, model: &Model) -> Option<usize> {
    program.index(model.blobs.len())
}

/// How the next byte names a blob: by sha256 or by blake3.
fn name_of(program: &mut Program, model: &Model, blob: Option<usize>) -> String {
    let by_blake3 = program.byte() % 2 == 1;
    match blob {
        Some(b) if by_blake3 => model.blobs[b].blake3.to_string(),
        Some(b) => model.blobs[b].sha256.to_string(),
        None => Digest::of(
            Algorithm::Sha256,
            format!("never {}", model.execution).as_bytes(),
        )
        .to_string(),
    }
}

fn put(program: &mut Program, model: &mut Model) {
    let slot = usize::from(program.byte()) % SLOTS;
    let request = cas::BatchPutRequest {
        items: vec![cas::BatchPutItem {
            data: Bytes::from(model.blobs[slot].bytes.clone()),
            ..Default::default()
        }],
    };
    let answer: cas::BatchPutResponse =
        call("/custodian.cas.v1.ContentStore/BatchPut", &request, false).decoded("put");
    let result = &answer.results[0];
    assert!(result.error.is_none(), "put: {:?}", result.error);
    let stored = result.blob.as_ref().expect("a stored blob's metadata");
    assert_eq!(stored.sha256, model.blobs[slot].sha256.to_string());
    assert_eq!(
        result.already_present, model.blobs[slot].present,
        "put: already_present"
    );
    model.blobs[slot].present = true;
}

fn publish(program: &mut Program, model: &mut Model) {
    let mask = program.byte();
    let slots: Vec<usize> = (0..SLOTS).filter(|s| mask & (1 << s) != 0).collect();
    let version = format!("3.{}.{}", model.execution, model.versions.len());
    let files = slots
        .iter()
        .map(|&s| FileEntry {
            path: format!("slot{s}.txt"),
            sha256: model.blobs[s].sha256,
            size: model.blobs[s].bytes.len() as u64,
        })
        .collect();
    let (manifest, answer) = the_world().try_publish(&version, files);
    let mut manifest_blob = blob(
        fixture::MANIFEST
            .replace(fixture::VERSION, &version)
            .into_bytes(),
    );
    assert_eq!(manifest_blob.sha256, manifest);
    manifest_blob.present = true;
    model.blobs.push(manifest_blob);
    let lacking: Vec<usize> = slots
        .iter()
        .copied()
        .filter(|&s| !model.blobs[s].present)
        .collect();
    let published = lacking.is_empty();
    if published {
        assert_eq!(answer.code, "0", "publishing {version}: {}", answer.why);
    } else {
        refused(
            &answer,
            9,
            &format!(
                "{} of the package's files are not in custody",
                lacking.len()
            ),
            "publishing with files custody lacks",
        );
    }
    let mut files = vec![model.blobs.len() - 1];
    files.extend(slots);
    model.versions.push(Version {
        version,
        files,
        published,
        data_pack: None,
    });
}

/// The subject of a `Retain`, by the next bytes: a digest (either algorithm), one of the
/// execution's versions, a version never published, or not a subject at all. Returns it with
/// the blobs it names, or `Err` with the refusal expected when it names none.
fn subject(program: &mut Program, model: &Model) -> (String, Result<Vec<usize>, (u8, String)>) {
    match program.byte() % 8 {
        0..=3 => {
            let blob = pick(program, model);
            let subject = name_of(program, model, blob);
            let named = match blob {
                Some(b) if model.blobs[b].present => Ok(vec![b]),
                Some(b) => Err((
                    5,
                    match &model.blobs[b].deleted {
                        Some((index, reason, _)) => {
                            format!("(it was deleted at ledger entry {index}: {reason})")
                        }
                        None => "is not in custody".to_string(),
                    },
                )),
                None => Err((5, "is not in custody".to_string())),
            };
            (subject, named)
        }
        4..=6 => match program.index(model.versions.len()) {
            Some(v) => {
                let version = &model.versions[v];
                let subject = format!("{}@{}", fixture::NAME, version.version);
                if !version.published {
                    return (subject, Err((5, String::new())));
                }
                let named = if version.blobs().iter().all(|&f| model.blobs[f].present) {
                    Ok(version.blobs())
                } else {
                    Err((5, "left custody before the".to_string()))
                };
                (subject, named)
            }
            None => (
                format!("{}@3.{}.999", fixture::NAME, model.execution),
                Err((5, String::new())),
            ),
        },
        _ => (
            "nonsense".to_string(),
            Err((3, "is neither a digest".to_string())),
        ),
    }
}

fn retain(program: &mut Program, model: &mut Model, anonymous: bool) {
    let action = ["pin", "unpin", "hold", "release", "keep"][usize::from(program.byte() % 5)];
    let (subject, named) = subject(program, model);
    let reason = ["", "  ", "audit 7"][usize::from(program.byte() % 3)];
    let expiring = program.byte() % 3 == 2;
    let request = cas::RetainRequest {
        action: action.to_string(),
        subject: subject.clone(),
        reason: reason.to_string(),
        expires_in_seconds: if expiring { 3600 } else { 0 },
    };
    let answer = call(RETAIN, &request, anonymous);
    let what = format!("{action} {subject:?}");
    if action == "keep" {
        return refused(&answer, 3, "field action", &what);
    }
    if anonymous {
        return refused_anonymous(&answer, &what);
    }
    let removes = action == "unpin" || action == "release";
    if (action == "hold" || action == "release") && reason.trim().is_empty() {
        return refused(&answer, 3, "reason", &what);
    }
    if expiring && action != "pin" {
        return refused(&answer, 3, "expires_in", &what);
    }
    if removes {
        let placed = if action == "unpin" {
            &mut model.pins
        } else {
            &mut model.holds
        };
        let mut covered: Vec<usize> = placed
            .iter()
            .filter(|p| p.subject == subject)
            .flat_map(|p| p.blobs.iter().copied())
            .collect();
        if covered.is_empty() {
            return refused(&answer, 5, "to remove", &what);
        }
        covered.sort_unstable();
        covered.dedup();
        let response: cas::RetainResponse = answer.decoded(&what);
        let mut digests: Vec<String> = covered
            .iter()
            .map(|&b| model.blobs[b].sha256.to_string())
            .collect();
        let mut answered_digests = response.digests.clone();
        digests.sort();
        answered_digests.sort();
        assert_eq!(answered_digests, digests, "{what}: the blobs it covers");
        placed.retain(|p| p.subject != subject);
        return;
    }
    let blobs = match named {
        Ok(blobs) => blobs,
        Err((code, says)) => return refused(&answer, code, &says, &what),
    };
    let response: cas::RetainResponse = answer.decoded(&what);
    let mut digests: Vec<String> = blobs
        .iter()
        .map(|&b| model.blobs[b].sha256.to_string())
        .collect();
    digests.sort();
    digests.dedup();
    let mut answered_digests = response.digests.clone();
    answered_digests.sort();
    assert_eq!(answered_digests, digests, "{what}: the blobs it covers");
    let placed = Placed {
        subject,
        blobs,
        index: response.ledger_index,
        expiring,
        reason: reason.to_string(),
    };
    if action == "pin" {
        model.pins.push(placed);
    } else {
        model.holds.push(placed);
    }
}

fn why(program: &mut Program, model: &Model, anonymous: bool) {
    let blob = pick(program, model);
    let digest = name_of(program, model, blob);
    let grace = program.byte() % 2 == 1;
    let request = cas::WhyRequest {
        digest: digest.clone(),
        grace_seconds: if grace { None } else { Some(0) },
    };
    let answer = call(WHY, &request, anonymous);
    let what = format!("why {digest}");
    if anonymous {
        return refused_anonymous(&answer, &what);
    }
    let response: cas::WhyResponse = answer.decoded(&what);
    let Some(b) = blob else {
        assert!(
            response.blob.is_none() && response.kept_by.is_empty() && response.deleted.is_none()
        );
        return;
    };
    let known = &model.blobs[b];
    assert_eq!(response.blob.is_some(), known.present, "{what}: in custody");
    if let Some(info) = &response.blob {
        assert_eq!(info.sha256, known.sha256.to_string(), "{what}: the blob");
        assert_eq!(info.size, known.bytes.len() as u64, "{what}: the size");
    }
    let mut lines = response.kept_by.clone();
    for (line, prefix) in model.keepers(b, grace) {
        let at = lines
            .iter()
            .position(|l| {
                if prefix {
                    l.starts_with(&line)
                } else {
                    *l == line
                }
            })
            .unwrap_or_else(|| panic!("{what}: {line:?} is not among {:?}", response.kept_by));
        lines.remove(at);
    }
    assert!(
        lines.is_empty(),
        "{what}: keepers the model does not know: {lines:?}"
    );
    match (&known.deleted, &response.deleted) {
        (None, None) => {}
        (Some((index, reason, policy)), Some(tombstone)) => {
            assert_eq!(
                tombstone.ledger_index, *index,
                "{what}: the deletion's entry"
            );
            assert_eq!(&tombstone.reason, reason, "{what}: the deletion's reason");
            assert_eq!(&tombstone.policy, policy, "{what}: the deletion's policy");
            assert_eq!(
                tombstone.size,
                known.bytes.len() as u64,
                "{what}: the size deleted"
            );
        }
        (known, answered) => panic!("{what}: deleted {known:?}, answered {answered:?}"),
    }
}

fn delete(program: &mut Program, model: &mut Model, anonymous: bool) {
    let blob = pick(program, model);
    let digest = name_of(program, model, blob);
    let reason = ["", " ", "takedown 4"][usize::from(program.byte() % 3)];
    let force = program.byte() % 2 == 1;
    let request = cas::DeleteBlobRequest {
        digest: digest.clone(),
        reason: reason.to_string(),
        force,
    };
    let answer = call(DELETE, &request, anonymous);
    let what = format!("delete {digest} (force {force})");
    if anonymous {
        return refused_anonymous(&answer, &what);
    }
    if reason.trim().is_empty() {
        return refused(&answer, 3, "reason", &what);
    }
    let Some(b) = blob.filter(|&b| model.blobs[b].present) else {
        return refused(&answer, 5, "is not in custody", &what);
    };
    if model.held(b) {
        return refused(&answer, 9, "is under a legal hold", &what);
    }
    if !force && model.kept(b) {
        return refused(&answer, 9, "delete with force", &what);
    }
    let report: cas::CollectGarbageResponse = answer.decoded(&what);
    assert_eq!(report.deleted_count, 1, "{what}: deleted");
    assert_eq!(report.deleted[0].digest, model.blobs[b].sha256.to_string());
    assert_eq!(report.ledger_indexes.len(), 1, "{what}: its entry");
    model.blobs[b].present = false;
    model.blobs[b].deleted = Some((
        report.ledger_indexes[0],
        reason.to_string(),
        "admin delete".to_string(),
    ));
}

fn collect(program: &mut Program, model: &mut Model, anonymous: bool) {
    let choice = program.byte();
    let grace_seconds = [Some(0), None, Some(3600)][usize::from(choice % 3)];
    let dry_run = choice & 0x80 != 0;
    let request = cas::CollectGarbageRequest {
        grace_seconds,
        dry_run,
    };
    let answer = call(COLLECT, &request, anonymous);
    let what = format!("collect (grace {grace_seconds:?}, dry run {dry_run})");
    if anonymous {
        return refused_anonymous(&answer, &what);
    }
    let report: cas::CollectGarbageResponse = answer.decoded(&what);
    assert_eq!(report.dry_run, dry_run, "{what}");
    // Earlier executions' blobs may be collected too; only this execution's are judged.
    let mut named: Vec<usize> = report
        .deleted
        .iter()
        .filter_map(|d| model.find(&d.digest))
        .collect();
    named.sort_unstable();
    let expected: Vec<usize> = if grace_seconds == Some(0) {
        (0..model.blobs.len())
            .filter(|&b| model.collectable(b))
            .collect()
    } else {
        Vec::new()
    };
    if report.deleted_count as usize == report.deleted.len() {
        assert_eq!(named, expected, "{what}: the execution's blobs it names");
    }
    if dry_run {
        assert!(
            report.ledger_indexes.is_empty(),
            "{what}: a dry run records nothing"
        );
        return;
    }
    for b in expected {
        model.blobs[b].present = false;
        // Which of the collection's entries recorded the blob, `Why` says.
        let request = cas::WhyRequest {
            digest: model.blobs[b].sha256.to_string(),
            grace_seconds: Some(0),
        };
        let why: cas::WhyResponse = call(WHY, &request, false).decoded("why, after a collection");
        let tombstone = why.deleted.expect("a collected blob's deletion");
        assert!(
            report.ledger_indexes.contains(&tombstone.ledger_index),
            "{what}: deleted by entry {}, not one of {:?}",
            tombstone.ledger_index,
            report.ledger_indexes
        );
        assert_eq!(tombstone.reason, "garbage collection", "{what}");
        assert!(
            why.blob.is_none(),
            "{what}: collected, but still in custody"
        );
        model.blobs[b].deleted = Some((tombstone.ledger_index, tombstone.reason, tombstone.policy));
    }
}

/// Links a blob into the execution's OCI repository by a monolithic push (which stores it, if
/// custody lacks it), or unlinks it (`DELETE`, which deletes nothing from custody), by the next
/// bytes.
fn oci(program: &mut Program, model: &mut Model, anonymous: bool) {
    let unlink = program.byte() % 2 == 1;
    let Some(b) = pick(program, model) else {
        return;
    };
    let digest = model.blobs[b].sha256;
    let (method, path, body) = if unlink {
        let path = format!("/v2/{}/blobs/{digest}", model.repo);
        (Method::DELETE, path, Vec::new())
    } else {
        let path = format!("/v2/{}/blobs/uploads/?digest={digest}", model.repo);
        (Method::POST, path, model.blobs[b].bytes.clone())
    };
    let what = format!("{method} {path}");
    let length = vec![("content-length", body.len().to_string())];
    let answer = program::send_to(
        the_world(),
        method,
        &path,
        &length,
        Body::from(body),
        anonymous,
    );
    let (status, answer) = (answer.status, answer.body);
    let says = |code: &str| {
        assert!(
            answer.windows(code.len()).any(|w| w == code.as_bytes()),
            "{what}: {status} {:?} does not say {code}",
            String::from_utf8_lossy(&answer)
        )
    };
    if anonymous {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        return says("UNAUTHORIZED");
    }
    if !unlink {
        assert_eq!(status, StatusCode::CREATED, "{what}");
        model.blobs[b].present = true;
        model.blobs[b].linked = true;
    } else if model.blobs[b].linked {
        assert_eq!(status, StatusCode::ACCEPTED, "{what}");
        model.blobs[b].linked = false;
    } else {
        assert_eq!(status, StatusCode::NOT_FOUND, "{what}");
        says("BLOB_UNKNOWN");
    }
}

/// Registers one of the slots' bytes as the hosted data pack of one of the execution's versions
/// (`POST …/data-pack/hosted`): the bytes enter custody and the version keeps them.
fn data_pack(program: &mut Program, model: &mut Model, anonymous: bool) {
    let slot = usize::from(program.byte()) % SLOTS;
    let Some(v) = program.index(model.versions.len()) else {
        return;
    };
    // Declaring the bytes' sha256 is what lets a repeated upload be recognised before its bytes
    // arrive; without it, a second upload is refused whatever its bytes.
    let declared = program.byte() % 2 == 1;
    let version = &model.versions[v];
    let path = format!(
        "/wrappers/{}/versions/{}/data-pack/hosted",
        fixture::NAME,
        version.version
    );
    let boundary = "retention-fuzz";
    let mut body = Vec::new();
    let metadata = if declared {
        format!(
            r#"{{"license":"CC0-1.0","sha256":"{}"}}"#,
            model.blobs[slot].sha256
        )
    } else {
        r#"{"license":"CC0-1.0"}"#.to_string()
    };
    for (name, content) in [
        ("metadata", metadata.as_bytes()),
        ("file", &model.blobs[slot].bytes[..]),
    ] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"pack.txt\"\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let headers = [(
        "content-type",
        format!("multipart/form-data; boundary={boundary}"),
    )];
    let answer = program::send_to(
        the_world(),
        Method::POST,
        &path,
        &headers,
        Body::from(body),
        anonymous,
    );
    let what = format!("POST {path} with slot {slot} (sha256 declared: {declared})");
    // Anyone may learn that a version does not exist (as on the local put socket); only then is
    // the caller asked for a token.
    if !version.published {
        return answer.refusal(&what, 404, "not_found", "/error");
    }
    if anonymous {
        return answer.refusal(&what, 401, "unauthenticated", "/error");
    }
    match version.data_pack {
        Some(registered) if registered != slot || !declared => {
            answer.refusal(&what, 409, "already_exists", "/error")
        }
        registered => {
            answer.expect_status(&what, if registered.is_some() { 200 } else { 201 });
            model.blobs[slot].present = true;
            model.versions[v].data_pack = Some(slot);
        }
    }
}

/// Checks that custody holds exactly the blobs the model says, with their bytes, and that one
/// that is gone is answered `NOT_FOUND` naming its deletion's entry.
fn check_custody(model: &Model) {
    for known in &model.blobs {
        let stored = the_world().stored(&known.sha256);
        assert_eq!(
            stored.as_deref(),
            known.present.then_some(&known.bytes[..]),
            "custody of {}",
            known.sha256
        );
        if known.present {
            continue;
        }
        if let Some((index, reason, _)) = &known.deleted {
            let request = cas::StatRequest {
                digest: known.blake3.to_string(),
            };
            let answer = call(STAT, &request, false);
            refused(
                &answer,
                5,
                &format!("was deleted from custody at ledger entry {index} ("),
                "stat of a deleted blob",
            );
            assert!(answer.why.contains(reason.as_str()), "stat: {}", answer.why);
        }
    }
}

/// Ends an execution: its holds released and its blobs deleted, so that later executions'
/// collections have little to examine.
fn clean_up(model: &Model) {
    let mut subjects: Vec<&str> = model.holds.iter().map(|h| h.subject.as_str()).collect();
    subjects.sort_unstable();
    subjects.dedup();
    for subject in subjects {
        let request = cas::RetainRequest {
            action: "release".into(),
            subject: subject.into(),
            reason: "the execution ends".into(),
            expires_in_seconds: 0,
        };
        let _: cas::RetainResponse = call(RETAIN, &request, false).decoded("clean-up release");
    }
    for known in model.blobs.iter().filter(|b| b.present) {
        let request = cas::DeleteBlobRequest {
            digest: known.sha256.to_string(),
            reason: "the execution ends".into(),
            force: true,
        };
        let _: cas::CollectGarbageResponse =
            call(DELETE, &request, false).decoded("clean-up delete");
    }
}

fuzz_target!(|data: &[u8]| {
    static EXECUTION: AtomicU64 = AtomicU64::new(0);
    let mut model = Model::new(EXECUTION.fetch_add(1, Ordering::Relaxed));
    program::run(data, |program, op, anonymous| {
        match op % 9 {
            0 | 1 => put(program, &mut model),
            2 => publish(program, &mut model),
            3 => retain(program, &mut model, anonymous),
            4 => why(program, &model, anonymous),
            5 => delete(program, &mut model, anonymous),
            6 => collect(program, &mut model, anonymous),
            7 => oci(program, &mut model, anonymous),
            _ => data_pack(program, &mut model, anonymous),
        }
        check_custody(&model);
    });
    clean_up(&model);
});
