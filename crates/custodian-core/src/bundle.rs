//! Badge bundles: a badge with every ledger entry it rests on, their inclusion proofs and the
//! signed checkpoint they lead to — everything an auditor needs to recompute and check the badge
//! offline with nothing but the log's verifier key (docs/verifying.md).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::attestation::{RunStatement, check_against_eval};
use crate::badge::{Badge, DataPackRef, Evidence, POLICY, Run, Scan, evaluate_policy};
use crate::checkpoint::Checkpoint;
use crate::digest::{Algorithm, Digest};
use crate::dsse::Envelope;
use crate::entry::{Entry, EntryKind};
use crate::manifest::Manifest;
use crate::merkle::{self, Hash};
use crate::note::VerifierKey;
use crate::package::PackageStatement;
use crate::registry::{
    BadgeIssued, DataPackRegistered, EvalPreregistered, KeyEvent, PackagePublished, RunAttested,
    ScanRecorded, VersionYanked,
};

/// The `type` of a bundle file.
pub const BUNDLE_TYPE: &str = "custodian.badge-bundle.v1";

/// One ledger entry with its inclusion proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleEntry {
    /// Its index in the log.
    pub index: u64,
    /// Base64 of its deterministic CBOR bytes.
    pub entry: String,
    /// Base64 of each hash of its RFC 6962 audit path to the checkpoint's size, leaf-up.
    pub proof: Vec<String>,
}

/// A badge bundle file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// [`BUNDLE_TYPE`].
    #[serde(rename = "type")]
    pub bundle_type: String,
    /// The badge the server issued.
    pub badge: Badge,
    /// Base64 of the version's `manifest.yaml`.
    pub manifest: String,
    /// The signed checkpoint (C2SP signed note) every proof leads to.
    pub checkpoint: String,
    /// The evidence entries, by index.
    pub entries: Vec<BundleEntry>,
    /// The bodies of the sealed entries among them (base64), which the entries commit to by
    /// digest (see `seal`); absent when none is sealed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bodies: Vec<String>,
    /// The badge as a SLSA Verification Summary Attestation: a DSSE envelope (JSON text)
    /// signed with the log's key (see `vsa`). Bundles made before it existed lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsa: Option<String>,
}

/// The first thing in a bundle that does not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    /// Not a bundle.
    #[error("not a badge bundle: {0}")]
    Malformed(String),
    /// The checkpoint does not verify with the key.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// An entry is malformed or its proof does not lead to the checkpoint.
    #[error("entries[{position}] (log index {index}): {reason}")]
    Entry {
        /// Its position in the bundle.
        position: usize,
        /// Its log index.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// The VSA does not open with the log's key, or says something the bundle does not.
    #[error("{0}")]
    Vsa(crate::vsa::VsaError),
    /// The manifest or publication does not hold together.
    #[error("publication: {0}")]
    Publication(String),
    /// The badge differs from what the policy gives for the evidence.
    #[error("badge.{field}: the bundle says {bundled}, the evidence gives {computed}")]
    BadgeMismatch {
        /// The field that differs.
        field: &'static str,
        /// What the bundle says.
        bundled: String,
        /// What the evidence gives.
        computed: String,
    },
}

/// What a verified bundle shows.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The badge, recomputed and equal to the bundled one.
    pub badge: Badge,
    /// The checkpoint's tree size.
    pub tree_size: u64,
    /// How many entries were checked.
    pub entries: usize,
    /// Whether the bundle carried a VSA, which was then checked.
    pub vsa: bool,
}

impl Bundle {
    /// Assembles a bundle from a badge, the manifest bytes, the signed checkpoint and each
    /// evidence entry with its audit path to that checkpoint.
    pub fn new(
        badge: Badge,
        manifest: &[u8],
        checkpoint: String,
        entries: Vec<(u64, Vec<u8>, Vec<Hash>)>,
        bodies: Vec<Vec<u8>>,
    ) -> Bundle {
        Bundle {
            bundle_type: BUNDLE_TYPE.into(),
            badge,
            manifest: STANDARD.encode(manifest),
            checkpoint,
            entries: entries
                .into_iter()
                .map(|(index, bytes, proof)| BundleEntry {
                    index,
                    entry: STANDARD.encode(bytes),
                    proof: proof.iter().map(|h| STANDARD.encode(h.0)).collect(),
                })
                .collect(),
            bodies: bodies.iter().map(|b| STANDARD.encode(b)).collect(),
            vsa: None,
        }
    }

    /// Signs the badge's VSA with the log's key (whose origin the checkpoint names) and carries it.
    pub fn attach_vsa(
        &mut self,
        log_key: &crate::note::SignerKey,
    ) -> Result<(), crate::vsa::VsaError> {
        let summary = crate::vsa::Summary::of_bundle(self, log_key.name())?;
        self.vsa = Some(summary.sign(log_key).to_json());
        Ok(())
    }

    /// The bundle as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

fn entry_error(position: usize, index: u64, reason: impl Into<String>) -> BundleError {
    BundleError::Entry {
        position,
        index,
        reason: reason.into(),
    }
}

/// Verifies a bundle offline with the log's verifier key and returns the recomputed badge.
pub fn verify(bytes: &[u8], log_key: &VerifierKey) -> Result<Verified, BundleError> {
    let bundle: Bundle =
        serde_json::from_slice(bytes).map_err(|e| BundleError::Malformed(e.to_string()))?;
    if bundle.bundle_type != BUNDLE_TYPE {
        return Err(BundleError::Malformed(format!(
            "type is {:?}, expected {BUNDLE_TYPE:?}",
            bundle.bundle_type
        )));
    }
    let checkpoint = Checkpoint::open(bundle.checkpoint.as_bytes(), log_key)
        .map_err(|e| BundleError::Checkpoint(e.to_string()))?;
    let badge = &bundle.badge;

    // The bodies of sealed entries, by digest.
    let bodies: BTreeMap<Digest, Vec<u8>> = bundle
        .bodies
        .iter()
        .map(|b| {
            STANDARD
                .decode(b)
                .map(|bytes| (Digest::of(Algorithm::Sha256, &bytes), bytes))
                .map_err(|e| BundleError::Malformed(format!("a body is not base64: {e}")))
        })
        .collect::<Result<_, _>>()?;

    // Every entry is in the log the checkpoint commits to.
    let mut entries: BTreeMap<u64, Entry> = BTreeMap::new();
    for (position, item) in bundle.entries.iter().enumerate() {
        let fail = |reason: String| entry_error(position, item.index, reason);
        let bytes = STANDARD
            .decode(&item.entry)
            .map_err(|e| fail(format!("entry is not base64: {e}")))?;
        let proof = item
            .proof
            .iter()
            .map(|h| {
                STANDARD
                    .decode(h)
                    .ok()
                    .and_then(|b| Hash::from_slice(&b).ok())
                    .ok_or_else(|| fail("a proof hash is not 32 bytes of base64".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        merkle::verify_inclusion(
            item.index,
            checkpoint.size,
            &merkle::leaf_hash(&bytes),
            &proof,
            &checkpoint.root,
        )
        .map_err(|e| {
            fail(format!(
                "the inclusion proof does not lead to the checkpoint's root: {e}"
            ))
        })?;
        let mut entry =
            Entry::decode(&bytes).map_err(|e| fail(format!("not a ledger entry: {e}")))?;
        // A sealed entry stands for the event in its body, which must be the one it commits to.
        if entry.kind == EntryKind::Sealed {
            let (digest, _) = crate::seal::commitment(&entry).map_err(|e| fail(e.to_string()))?;
            let body = bodies.get(&digest).ok_or_else(|| {
                fail(format!(
                    "the entry is sealed and the bundle lacks its body {digest}"
                ))
            })?;
            entry = crate::seal::unseal(&entry, body).map_err(|e| fail(e.to_string()))?;
        }
        if entries.insert(item.index, entry).is_some() {
            return Err(fail("the index appears twice".into()));
        }
    }
    let position_of = |index: u64| {
        bundle
            .entries
            .iter()
            .position(|e| e.index == index)
            .unwrap_or(0)
    };

    // The publication, its manifest and its signature.
    let mut publications = Vec::new();
    let mut keys = crate::keys::KeyHistory::default();
    let mut preregs = Vec::new();
    let (mut runs, mut scans, mut yanked, mut issued) = (Vec::new(), Vec::new(), None, None);
    let mut data_pack: Option<(u64, String)> = None;
    for (&index, entry) in &entries {
        let fail = |reason: String| entry_error(position_of(index), index, reason);
        let about = |name: &str, version: &str| name == badge.name && version == badge.version;
        match &entry.kind {
            EntryKind::PackagePublished => {
                let e: PackagePublished = entry.event().map_err(|e| fail(e.to_string()))?;
                if about(&e.name, &e.version) {
                    publications.push((index, e));
                }
            }
            EntryKind::KeyEvent => {
                let e: KeyEvent = entry.event().map_err(|e| fail(e.to_string()))?;
                crate::keys::check_event(&e, entry.time_ms)
                    .map_err(|e| fail(format!("the KeyEvent does not hold: {e}")))?;
                keys.add(index, entry.time_ms, e);
            }
            EntryKind::EvalPreregistered => {
                let e: EvalPreregistered = entry.event().map_err(|e| fail(e.to_string()))?;
                if about(&e.name, &e.version) {
                    preregs.push((index, entry.time_ms, e));
                }
            }
            EntryKind::RunAttested => {
                let e: RunAttested = entry.event().map_err(|e| fail(e.to_string()))?;
                if about(&e.name, &e.version) {
                    runs.push((index, entry.time_ms, e));
                }
            }
            EntryKind::ScanRecorded => {
                let e: ScanRecorded = entry.event().map_err(|e| fail(e.to_string()))?;
                if about(&e.name, &e.version) {
                    scans.push(Scan {
                        index,
                        scanner: e.scanner,
                        root: e.root,
                        verdict: e.verdict,
                    });
                }
            }
            EntryKind::DataPackRegistered => {
                let e: DataPackRegistered = entry.event().map_err(|e| fail(e.to_string()))?;
                if about(&e.name, &e.version)
                    && e.pack.mode == crate::registry::DataPackMode::Hosted
                    && let Some(sha256) = e.pack.sha256
                {
                    data_pack = Some((index, sha256));
                }
            }
            EntryKind::VersionYanked => {
                let e: VersionYanked = entry.event().map_err(|e| fail(e.to_string()))?;
                if about(&e.name, &e.version) {
                    yanked = yanked.max(Some(index));
                }
            }
            EntryKind::BadgeIssued => {
                let e: BadgeIssued = entry.event().map_err(|e| fail(e.to_string()))?;
                if about(&e.name, &e.version) && issued.as_ref().is_none_or(|(i, _)| *i < index) {
                    issued = Some((index, e));
                }
            }
            _ => {}
        }
    }
    let [(publication, published)] = publications.as_slice() else {
        return Err(BundleError::Publication(format!(
            "the bundle must hold exactly one PackagePublished entry for {}@{}, it holds {}",
            badge.name,
            badge.version,
            publications.len()
        )));
    };
    let manifest_bytes = STANDARD
        .decode(&bundle.manifest)
        .map_err(|e| BundleError::Publication(format!("manifest is not base64: {e}")))?;
    let manifest_digest = Digest::of(Algorithm::Sha256, &manifest_bytes);
    if manifest_digest.to_string() != published.manifest {
        return Err(BundleError::Publication(format!(
            "the bundled manifest hashes to {manifest_digest}, the publication names {}",
            published.manifest
        )));
    }
    let manifest_text = String::from_utf8(manifest_bytes)
        .map_err(|_| BundleError::Publication("the manifest is not UTF-8".into()))?;
    let (manifest, report) = Manifest::parse_published("manifest.yaml", &manifest_text);
    let manifest = manifest.ok_or_else(|| {
        BundleError::Publication(format!(
            "the manifest does not parse: {}",
            report.error_text()
        ))
    })?;
    let signature_ok = (|| {
        let key = VerifierKey::parse(&published.publisher_key).ok()?;
        let envelope = Envelope::parse(published.envelope.as_bytes()).ok()?;
        let statement = PackageStatement::open(&envelope, &key).ok()?;
        // An OMS signature recorded with the publication must hold too, over the same files.
        let oms_ok = match (&published.oms_signature, &published.oms_public_key) {
            (None, None) => true,
            (Some(signature), Some(key)) => {
                crate::oms::check_package(signature, key, statement.tree.files()).is_ok()
            }
            _ => false,
        };
        (format!("sha256:{}", statement.tree.root().to_hex()) == published.root
            && statement.manifest_digest() == manifest_digest
            && statement.name == published.name
            && statement.version == published.version
            && oms_ok)
            .then_some(())
    })()
    .is_some();

    // The publisher key is judged at the publication's ledger time (policy v4).
    let publication_time = entries.get(publication).map_or(0, |e| e.time_ms);
    let publisher_key = keys
        .judge_publisher(
            &published.publisher_key,
            &published.name,
            &published.publisher_key,
            *publication,
            publication_time,
        )
        .err();

    // Every run is signed by an attester key the bundle shows registered for the package
    // before the run; whether the key still counted at the run's ledger time is the policy's
    // business (a key rotated away or revoked by then).
    let mut evidence_runs = Vec::new();
    for (index, time_ms, run) in runs {
        let fail = |reason: String| entry_error(position_of(index), index, reason);
        let judgement = keys.judge(
            crate::keys::ATTESTER,
            &run.attester_key,
            &run.name,
            index,
            time_ms,
        );
        if judgement == Err(crate::keys::Judgement::NotIntroduced) {
            return Err(fail(format!(
                "the attester key {} is not registered for {} by a KeyEvent in the bundle before the run",
                run.attester_key, run.name
            )));
        }
        let key = VerifierKey::parse(&run.attester_key)
            .map_err(|e| fail(format!("attester_key: {e}")))?;
        let envelope =
            Envelope::parse(run.envelope.as_bytes()).map_err(|e| fail(format!("envelope: {e}")))?;
        let statement = RunStatement::open(&envelope, &key).map_err(|e| {
            fail(format!(
                "the run's signature or statement does not hold: {e}"
            ))
        })?;
        let p = &statement.predicate;
        if statement.manifest.to_string() != run.manifest
            || run.manifest != published.manifest
            || p.eval_id != run.eval_id
            || p.model != run.model
            || p.passed != run.passed
            || p.data_pack_sha256 != run.data_pack_sha256
            || statement.context_fingerprint() != run.context_sha256
            || p.runner.id != run.runner
        {
            return Err(fail(
                "the entry's fields differ from its signed statement".into(),
            ));
        }
        // A run that contradicts its EvalSpec fails the badge under policy v3, so an auditor
        // re-checks every threshold and seed rather than trusting the server's refusal.
        let problem = manifest
            .evals
            .iter()
            .find(|e| e.id() == run.eval_id)
            .and_then(|eval| check_against_eval(p, eval).err())
            .map(|e| e.to_string());
        evidence_runs.push(Run {
            index,
            time_ms,
            eval_id: run.eval_id,
            model: run.model,
            passed: run.passed,
            data_pack_sha256: run.data_pack_sha256,
            problem,
            facts: crate::prereg::RunFacts::of(p),
            key: judgement.err(),
        });
    }

    // Every pre-registration is signed by the key it names, says what its statement says, and
    // counts if that key was the package's publisher or an attester for it at its ledger time.
    let mut preregistrations = Vec::new();
    for (index, time_ms, e) in preregs {
        let fail = |reason: String| entry_error(position_of(index), index, reason);
        crate::prereg::check_event(&e, &published.manifest).map_err(fail)?;
        if crate::prereg::signer_counts(&keys, &published.publisher_key, &e, index, time_ms) {
            preregistrations.push(
                crate::prereg::Preregistration::from_event(index, &e)
                    .map_err(|r| fail(format!("threshold: {r}")))?,
            );
        }
    }

    let evidence = Evidence {
        name: &badge.name,
        version: &badge.version,
        manifest: &manifest,
        root: &published.root,
        publication: *publication,
        signature_ok,
        yanked,
        runs: &evidence_runs,
        scans: &scans,
        data_pack: data_pack.as_ref().map(|(index, root)| DataPackRef {
            index: *index,
            root,
        }),
        registry_licenses: &badge.registry_licenses,
        preregistrations: &preregistrations,
        publisher_key,
    };
    let computed = evaluate_policy(
        &badge.policy,
        &evidence,
        badge.evaluated_ms,
        badge.max_age_ms,
    )
    .ok_or_else(|| BundleError::BadgeMismatch {
        field: "policy",
        bundled: badge.policy.clone(),
        computed: format!("a known policy ({POLICY} or earlier)"),
    })?;
    let show = |v: &dyn std::fmt::Debug| format!("{v:?}");
    if computed.state != badge.state {
        return Err(BundleError::BadgeMismatch {
            field: "state",
            bundled: badge.state.as_str().into(),
            computed: format!(
                "{} ({})",
                computed.state.as_str(),
                computed
                    .reasons
                    .iter()
                    .map(|r| r.code.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    // Reasons are compared by what a machine reads (code, state, eval, model, entry); the
    // message is for people, so a verifier written elsewhere need not reproduce its wording.
    let key = |r: &crate::badge::Reason| {
        (
            r.code.clone(),
            r.state,
            r.eval.clone(),
            r.model.clone(),
            r.entry,
        )
    };
    if computed.reasons.iter().map(key).collect::<Vec<_>>()
        != badge.reasons.iter().map(key).collect::<Vec<_>>()
    {
        return Err(BundleError::BadgeMismatch {
            field: "reasons",
            bundled: show(&badge.reasons),
            computed: show(&computed.reasons),
        });
    }
    if computed.evidence != badge.evidence {
        return Err(BundleError::BadgeMismatch {
            field: "evidence",
            bundled: show(&badge.evidence),
            computed: show(&computed.evidence),
        });
    }
    let present: BTreeSet<u64> = entries.keys().copied().collect();
    if let Some((index, e)) = issued
        && (e.state != badge.state.as_str()
            || e.evidence != badge.evidence
            || e.registry_licenses != badge.registry_licenses)
    {
        return Err(entry_error(
            position_of(index),
            index,
            "the BadgeIssued entry differs from the bundle's badge",
        ));
    }
    debug_assert!(computed.evidence.iter().all(|i| present.contains(i)));
    // The VSA says exactly what the bundle says, signed by the log's key.
    if let Some(vsa) = &bundle.vsa {
        crate::vsa::Summary::of_bundle(&bundle, &checkpoint.origin)
            .and_then(|summary| summary.check(vsa, log_key))
            .map_err(BundleError::Vsa)?;
    }
    Ok(Verified {
        badge: computed,
        tree_size: checkpoint.size,
        entries: entries.len(),
        vsa: bundle.vsa.is_some(),
    })
}
