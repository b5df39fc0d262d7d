//! Evidence: attester keys, attested runs, scans, badges, bundles and liveness reports, on top of
//! the registry's index (the same ledger, the same principals).

use std::sync::Arc;

use custodian_core::Digest;
use custodian_core::attestation::{AttestationError, RunStatement, check_against_eval};
use custodian_core::badge::{self, Badge, Evidence, Run};
use custodian_core::bundle::Bundle;
use custodian_core::dsse::Envelope;
use custodian_core::entry::Entry;
use custodian_core::keys::ATTESTER;
use custodian_core::manifest::Manifest;
use custodian_core::note::VerifierKey;
use custodian_core::package::MANIFEST_FILE;
use custodian_core::prereg::{Preregistration, RunFacts};
use custodian_core::receipt::Receipt;
use custodian_core::registry::{
    BadgeIssued, KeyEvent, RunAttested, ScanRecorded, namespace_covers,
};
use futures::StreamExt as _;

mod keys;
mod prereg;
mod view;

pub use view::{PackageSummary, ScanView, VersionView};

use crate::auth::{Principal, Scope};
pub use crate::registry::index::{Attester, RunRef, VersionEvidence};
use crate::registry::{Registry, RegistryError, VersionRecord, invalid, require};

/// How many attestations are checked and appended at once; enough to fill the sequencer's
/// batches, few enough to bound memory.
pub const MAX_CONCURRENT_ATTESTATIONS: usize = 256;

/// What an attestation returns.
pub enum Attested {
    /// The full receipt.
    Receipt(Receipt),
    /// Only where the run went (receipts are available from the ledger later).
    Index {
        /// The ledger index.
        index: u64,
        /// The entry's leaf hash.
        leaf_hash: custodian_core::merkle::Hash,
    },
}

/// One row of a liveness report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReportRow {
    /// The eval.
    pub eval_id: String,
    /// The model.
    pub model: String,
    /// The latest run, if any.
    pub latest: Option<ReportRun>,
    /// The eval's latest pre-registration, if any: its ledger index and terms.
    pub preregistration: Option<(u64, serde_json::Value)>,
}

/// The latest run in a report row.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReportRun {
    /// Passed or not.
    pub passed: bool,
    /// Its ledger index.
    pub ledger_index: u64,
    /// Its integration time.
    pub integrated_ms: u64,
    /// Its age at report time.
    pub age_ms: u64,
    /// The data pack it read.
    pub data_pack_sha256: Option<String>,
    /// Its context fingerprint.
    pub context_sha256: String,
    /// The runner.
    pub runner: String,
}

impl Registry {
    /// Registers an attester key for the caller's namespaces (a KeyEvent).
    pub async fn register_attester(
        &self,
        who: &Principal,
        key: &str,
    ) -> Result<(Vec<String>, Receipt, bool), RegistryError> {
        let key = VerifierKey::parse(key).map_err(|e| invalid("verifier_key", e))?;
        let Principal::Token(token) = who else {
            return Err(RegistryError::Unauthenticated(
                "registering an attester key needs a token with the attest scope".into(),
            ));
        };
        if !who.has_scope(Scope::Attest) {
            return Err(RegistryError::PermissionDenied(format!(
                "{} may not register attester keys: it has no attest scope",
                who.label()
            )));
        }
        let namespaces = token.namespaces.clone();
        let _write = self.writes.lock().await;
        if let Some(existing) = self.read().attester(&key.handle()) {
            if existing.key != key {
                return Err(invalid(
                    "verifier_key",
                    format!(
                        "another key with the handle {} is already registered",
                        key.handle()
                    ),
                ));
            }
            if existing.namespaces == namespaces {
                let receipt = self.ledger().receipt(existing.index)?;
                return Ok((namespaces, receipt, true));
            }
        }
        if let Some((index, reason, _)) = self.read().keys().revocation(ATTESTER, &key.to_string())
        {
            return Err(RegistryError::FailedPrecondition(format!(
                "attester key {} was revoked ({reason}) by ledger entry {index}; register a new key",
                key.handle()
            )));
        }
        let event = KeyEvent::introduce(
            ATTESTER,
            key.to_string(),
            token.id.clone(),
            namespaces.clone(),
        );
        let (_, _, receipt) = self.append(&event).await?;
        Ok((namespaces, receipt, false))
    }

    /// The parsed manifest of a version, read from custody once and cached.
    pub(crate) async fn manifest_of(
        &self,
        record: &VersionRecord,
    ) -> Result<crate::registry::ParsedManifest, RegistryError> {
        let digest = record.event.manifest.clone();
        if let Some(m) = self
            .manifests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&digest)
        {
            return Ok(m.clone());
        }
        let file = record
            .files
            .iter()
            .find(|f| f.path == MANIFEST_FILE)
            .ok_or_else(|| RegistryError::NotFound("the version has no manifest".into()))?;
        let text = self.read_text(file).await?;
        let (manifest, report) = Manifest::parse_published(MANIFEST_FILE, &text);
        let manifest = manifest.ok_or(RegistryError::Invalid(report))?;
        let parsed = Arc::new((manifest, text.into_bytes()));
        self.manifests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(digest, parsed.clone());
        Ok(parsed)
    }

    /// Checks and records one attested run.
    pub async fn attest(
        &self,
        who: &Principal,
        envelope_json: &str,
    ) -> Result<Receipt, RegistryError> {
        match self.attest_entry(who, envelope_json, true).await? {
            Attested::Receipt(receipt) => Ok(receipt),
            Attested::Index { index, .. } => Ok(self.ledger().receipt(index)?),
        }
    }

    /// Checks and records one attested run; with `receipt` false only its index and leaf hash
    /// come back (no proof is built).
    pub async fn attest_entry(
        &self,
        who: &Principal,
        envelope_json: &str,
        receipt: bool,
    ) -> Result<Attested, RegistryError> {
        let permit = acquire_slot(self.attest_permits.clone()).await?;
        self.attest_permitted(who, envelope_json, receipt, permit)
            .await
    }

    /// [`Self::attest_entry`] once its slot is held; the slot is given back when this returns.
    async fn attest_permitted(
        &self,
        who: &Principal,
        envelope_json: &str,
        receipt: bool,
        _permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Attested, RegistryError> {
        let envelope =
            Envelope::parse(envelope_json.as_bytes()).map_err(|e| invalid("envelope", e))?;
        let attester = {
            let state = self.read();
            envelope
                .signatures
                .iter()
                .find_map(|s| state.attester(&s.keyid).cloned())
        };
        let Some(attester) = attester else {
            let ids: Vec<&str> = envelope
                .signatures
                .iter()
                .map(|s| s.keyid.as_str())
                .collect();
            return Err(RegistryError::PermissionDenied(format!(
                "unknown attester: the envelope is signed by {}, which is not a registered attester key (custodian attester register)",
                ids.join(", ")
            )));
        };
        let statement =
            RunStatement::open(&envelope, &attester.key).map_err(|e| invalid("envelope", e))?;
        let p = &statement.predicate;
        require(who, Scope::Attest, &p.package, "attest runs of")?;
        self.attester_counts_now(&attester.key)?;
        if !namespace_covers(&attester.namespaces, &p.package) {
            return Err(RegistryError::PermissionDenied(format!(
                "attester key {} is registered for {}, not for {:?}",
                attester.key.handle(),
                attester.namespaces.join(", "),
                p.package
            )));
        }
        let record = self.get(who, &p.package, &p.version)?;
        if record.event.manifest != statement.manifest.to_string() {
            return Err(invalid(
                "envelope: subject[0].digest",
                format!(
                    "names manifest {} but {}@{} has manifest {}",
                    statement.manifest, p.package, p.version, record.event.manifest
                ),
            ));
        }
        if let Some(crate::registry::Yank { reason, .. }) = &record.yanked {
            return Err(RegistryError::FailedPrecondition(format!(
                "{}@{} is yanked ({reason}); runs of it are not attested",
                p.package, p.version
            )));
        }
        let manifest = self.manifest_of(&record).await?;
        let (manifest, _) = manifest.as_ref();
        if !manifest.eval_ids().contains(&p.eval_id.as_str()) {
            return Err(invalid(
                "predicate.eval_id",
                format!(
                    "{:?} is not an eval of {}@{} (its evals: {})",
                    p.eval_id,
                    p.package,
                    p.version,
                    manifest.eval_ids().join(", ")
                ),
            ));
        }
        if let Some(eval) = manifest.evals.iter().find(|e| e.id() == p.eval_id)
            && let Err(AttestationError::Field { field, reason }) = check_against_eval(p, eval)
        {
            return Err(invalid(&format!("envelope: {field}"), reason));
        }
        let models = manifest.compatible_models();
        if !models.contains(&p.model) {
            return Err(invalid(
                "predicate.model",
                format!(
                    "{:?} is not a compatible model of {}@{} (its models: {})",
                    p.model,
                    p.package,
                    p.version,
                    models.join(", ")
                ),
            ));
        }
        if let Some(pack) = record
            .data_pack
            .as_ref()
            .and_then(|d| d.event.pack.sha256.clone())
        {
            if p.data_pack_sha256.as_deref() != Some(pack.as_str()) {
                return Err(invalid(
                    "predicate.data_pack_sha256",
                    format!(
                        "is {}, but {}@{}'s hosted data pack is {pack}",
                        p.data_pack_sha256.as_deref().unwrap_or("absent"),
                        p.package,
                        p.version
                    ),
                ));
            }
            let digest: Digest = pack.parse().map_err(|e| invalid("data pack", e))?;
            if self.store().stat(&digest).await?.is_none() {
                return Err(RegistryError::FailedPrecondition(format!(
                    "the hosted data pack {pack} is not in custody"
                )));
            }
        }
        let event = RunAttested {
            name: p.package.clone(),
            version: p.version.clone(),
            manifest: statement.manifest.to_string(),
            eval_id: p.eval_id.clone(),
            model: p.model.clone(),
            passed: p.passed,
            data_pack_sha256: p.data_pack_sha256.clone(),
            context_sha256: statement.context_fingerprint(),
            runner: p.runner.id.clone(),
            finished_ms: statement.finished_ms,
            attester_key: attester.key.to_string(),
            envelope: envelope.to_json(),
            private: record.event.private,
        };
        let (appended, checkpoint) = self.append_entry(&event).await?;
        if receipt {
            Ok(Attested::Receipt(
                self.ledger().receipt_for(&appended, &checkpoint)?,
            ))
        } else {
            Ok(Attested::Index {
                index: appended.index,
                leaf_hash: appended.leaf_hash,
            })
        }
    }

    /// Attests many runs concurrently (their appends share ledger batches).
    pub async fn attest_many(
        &self,
        who: &Principal,
        envelopes: Vec<String>,
        receipts: bool,
    ) -> Vec<Result<Attested, RegistryError>> {
        // Each run's slot is taken before its check starts, not inside it. A check's state is a
        // few KiB and exists from the moment the check is queued: with each call queueing 256,
        // 32 clients sending 512 runs each held about 8,000 of them while all but 256 waited for
        // a slot (30 MiB of the daemon's 70 MiB peak heap, heaptrack during `custodian-bench
        // evidence`). Now a call holds one state per slot it holds, plus one run waiting for the
        // next slot.
        futures::stream::iter(envelopes)
            .then(|e| {
                // Only owned values cross into this future: one that borrows the registry makes
                // the compiler unable to prove the gRPC handler's future `Send`.
                let slots = self.attest_permits.clone();
                async move { (acquire_slot(slots).await, e) }
            })
            .map(|(permit, e)| async move {
                self.attest_permitted(who, &e, receipts, permit?).await
            })
            .buffered(MAX_CONCURRENT_ATTESTATIONS)
            .collect()
            .await
    }

    /// Records a scan verdict over a version's content root.
    pub async fn record_scan(
        &self,
        who: &Principal,
        scan: ScanRecorded,
    ) -> Result<Receipt, RegistryError> {
        if !who.allows(Scope::Attest, &scan.name) {
            require(who, Scope::Scan, &scan.name, "record scans of")?;
        }
        let record = self.get(who, &scan.name, &scan.version)?;
        if !matches!(scan.verdict.as_str(), "clean" | "flagged" | "error") {
            return Err(invalid(
                "verdict",
                format!("{:?} is not clean, flagged or error", scan.verdict),
            ));
        }
        let expected = match scan.target.as_deref() {
            None => record.event.root.clone(),
            Some(custodian_core::registry::DATA_PACK_TARGET) => record
                .hosted_data_pack()
                .map(|(_, sha256)| sha256.to_string())
                .ok_or_else(|| {
                    RegistryError::FailedPrecondition(format!(
                        "{}@{} has no hosted data pack to record a scan of",
                        scan.name, scan.version
                    ))
                })?,
            Some(other) => {
                return Err(invalid(
                    "target",
                    format!("{other:?} is not empty (the package) or data_pack"),
                ));
            }
        };
        if scan.root != expected {
            return Err(invalid(
                "root",
                format!(
                    "is {}, but {}@{}'s {} root is {expected}",
                    scan.root,
                    scan.name,
                    scan.version,
                    if scan.target.is_some() {
                        "data pack"
                    } else {
                        "content"
                    }
                ),
            ));
        }
        if scan.scanner.trim().is_empty() {
            return Err(invalid("scanner", "is required"));
        }
        let findings: serde_json::Value = serde_json::from_str(if scan.findings.is_empty() {
            "[]"
        } else {
            &scan.findings
        })
        .map_err(|e| invalid("findings_json", e))?;
        if !findings.is_array() {
            return Err(invalid("findings_json", "must be a JSON array"));
        }
        let event = ScanRecorded {
            findings: findings.to_string(),
            private: record.event.private,
            ..scan
        };
        let (_, _, receipt) = self.append(&event).await?;
        Ok(receipt)
    }

    /// Evaluates the badge of a version now.
    async fn evaluate(
        &self,
        record: &VersionRecord,
    ) -> Result<(Badge, VersionEvidence, crate::registry::ParsedManifest), RegistryError> {
        // Checked under the read lock; the list is copied only when there is damage to name.
        let damaged = {
            let state = self.read();
            (!state.damaged().is_empty()).then(|| state.damaged().to_vec())
        };
        if let Some(damaged) = damaged {
            let listed: Vec<String> = damaged.iter().take(10).map(u64::to_string).collect();
            return Err(RegistryError::Ledger(
                custodian_storage::LedgerError::Corrupt(format!(
                    "ledger entries {}{} do not match the leaf hashes the signed tree records, so the evidence behind badges cannot be trusted; badges are withheld until the log is repaired (`custodian scrub` names the damage)",
                    listed.join(", "),
                    if damaged.len() > 10 { ", …" } else { "" }
                )),
            ));
        }
        let manifest = self.manifest_of(record).await?;
        let name = record.event.name.as_str();
        let evidence = self
            .read()
            .evidence(&record.event.name, &record.event.version)
            .cloned()
            .unwrap_or_default();
        // Under the read lock: each eval × model's latest run by a key valid at its ledger
        // time, and every later run whose key was not (the policy names those); the counted
        // runs' signed predicates are read after.
        let (mut runs, counted, preregistrations, publisher_key) = {
            let state = self.read();
            let history = state.keys();
            let mut runs: Vec<Run> = Vec::new();
            let mut counted: Vec<(usize, u64)> = Vec::new();
            for ((eval, model), list) in &evidence.runs {
                for r in list.iter().rev() {
                    let judgement = history
                        .judge(ATTESTER, &r.attester, name, r.index, r.time_ms)
                        .err();
                    let valid = judgement.is_none();
                    if valid {
                        counted.push((runs.len(), r.index));
                    }
                    runs.push(Run {
                        index: r.index,
                        time_ms: r.time_ms,
                        eval_id: eval.clone(),
                        model: model.clone(),
                        passed: r.passed,
                        data_pack_sha256: r.data_pack.clone(),
                        problem: None,
                        facts: RunFacts::default(),
                        key: judgement,
                    });
                    if valid {
                        break;
                    }
                }
            }
            let published = &record.event.publisher_key;
            let preregistrations: Vec<Preregistration> = evidence
                .preregistrations
                .iter()
                .filter(|(index, time_ms, e)| {
                    custodian_core::prereg::signer_counts(history, published, e, *index, *time_ms)
                })
                .filter_map(|(index, _, e)| Preregistration::from_event(*index, e).ok())
                .collect();
            let publisher_key = history
                .judge_publisher(published, name, published, record.index, record.time_ms)
                .err();
            (runs, counted, preregistrations, publisher_key)
        };
        for (position, index) in counted {
            let (problem, facts) = self.run_problem(index, &manifest.0).await?;
            runs[position].problem = problem;
            runs[position].facts = facts;
        }
        let registry_licenses = self.registry_licenses();
        let badge = badge::evaluate(
            &Evidence {
                name: &record.event.name,
                version: &record.event.version,
                manifest: &manifest.0,
                root: &record.event.root,
                publication: record.index,
                // Publication checked the signature and every artifact hash against custody.
                signature_ok: true,
                yanked: record.yanked.as_ref().map(|y| y.index),
                runs: &runs,
                scans: &evidence.scans,
                data_pack: record
                    .hosted_data_pack()
                    .map(|(pack, root)| badge::DataPackRef {
                        index: pack.index,
                        root,
                    }),
                registry_licenses: &registry_licenses,
                preregistrations: &preregistrations,
                publisher_key,
            },
            crate::sequencer::now_ms(),
            self.badge_max_age_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        Ok((badge, evidence, manifest))
    }

    /// Why a logged run contradicts its EvalSpec, re-checked from its signed statement exactly
    /// as an offline verifier does (`custodian_core::bundle::verify`), so that a run logged
    /// before attestation checked thresholds is judged the same way by both; and what its
    /// statement says about the pre-registered terms.
    async fn run_problem(
        &self,
        index: u64,
        manifest: &Manifest,
    ) -> Result<(Option<String>, RunFacts), RegistryError> {
        let entry = self.event_entry(index).await?;
        let run: RunAttested = entry.event().map_err(|e| {
            RegistryError::Ledger(custodian_storage::LedgerError::Corrupt(e.to_string()))
        })?;
        let Some(predicate) = view::statement_of(&run) else {
            return Ok((
                Some("its signed statement does not parse".into()),
                RunFacts::default(),
            ));
        };
        let problem = manifest
            .evals
            .iter()
            .find(|e| e.id() == run.eval_id)
            .and_then(|eval| check_against_eval(&predicate, eval).err())
            .map(|e| e.to_string());
        Ok((problem, RunFacts::of(&predicate)))
    }

    /// The badge of a version and its bundle; appends BadgeIssued when the badge changed.
    pub async fn badge(
        &self,
        who: &Principal,
        name: &str,
        version: &str,
    ) -> Result<(Badge, Bundle), RegistryError> {
        let record = self.get(who, name, version)?;
        let (badge, evidence, manifest) = self.evaluate(&record).await?;
        let changed = evidence.badge.as_ref().is_none_or(|(_, issued)| {
            issued.state != badge.state.as_str()
                || issued.evidence != badge.evidence
                || issued.registry_licenses != badge.registry_licenses
        });
        let mut issued_index = evidence.badge.as_ref().map(|(i, _)| *i);
        if changed {
            let _write = self.writes.lock().await;
            let current = self
                .read()
                .evidence(&record.event.name, &record.event.version)
                .and_then(|e| e.badge.clone());
            let still_changed = current.as_ref().is_none_or(|(_, issued)| {
                issued.state != badge.state.as_str()
                    || issued.evidence != badge.evidence
                    || issued.registry_licenses != badge.registry_licenses
            });
            if still_changed {
                let event = BadgeIssued {
                    name: record.event.name.clone(),
                    version: record.event.version.clone(),
                    state: badge.state.as_str().into(),
                    policy: badge.policy.clone(),
                    evidence: badge.evidence.clone(),
                    evaluated_ms: badge.evaluated_ms,
                    private: record.event.private,
                    registry_licenses: badge.registry_licenses.clone(),
                };
                let (index, ..) = self.append(&event).await?;
                issued_index = Some(index);
            } else {
                issued_index = current.map(|(i, _)| i);
            }
        }
        // The bundle: the evidence entries, the attester registrations they need and the badge
        // entry, each with its audit path to the latest checkpoint.
        // The key events a verifier needs to judge every signature in the evidence at its
        // ledger time: those about the publisher key, each counted or named run's attester key
        // and each pre-registration's signer.
        let mut indexes: Vec<u64> = badge.evidence.clone();
        {
            let state = self.read();
            let mut signers = vec![record.event.publisher_key.as_str()];
            for run in evidence.runs.values().flatten() {
                if badge.evidence.contains(&run.index) {
                    signers.push(&run.attester);
                }
            }
            for (index, _, e) in &evidence.preregistrations {
                if badge.evidence.contains(index) {
                    signers.push(&e.signer_key);
                }
            }
            signers.sort_unstable();
            signers.dedup();
            for key in signers {
                indexes.extend(state.keys().about(key));
            }
        }
        indexes.extend(issued_index);
        indexes.sort_unstable();
        indexes.dedup();
        let ledger = self.ledger().clone();
        type Proven = (
            String,
            Vec<(u64, Vec<u8>, Vec<custodian_core::merkle::Hash>)>,
        );
        let proven = tokio::task::spawn_blocking(move || -> Result<Proven, RegistryError> {
            // The published (with a witness policy: cosigned) checkpoint, unless an entry is
            // newer than it, as when witnesses were unreachable and the badge was answered
            // uncosigned; then the log-signed latest, which a verifier holding the policy
            // refuses, as it should.
            let published = ledger.published();
            let checkpoint = if indexes.iter().any(|&i| i >= published.size) {
                ledger.latest()
            } else {
                published
            };
            let mut entries = Vec::with_capacity(indexes.len());
            for index in indexes {
                let bytes = ledger.verified_entry(index)?;
                let (proof, _) = ledger.inclusion_proof(index, checkpoint.size)?;
                entries.push((index, bytes, proof));
            }
            Ok((checkpoint.note.clone(), entries))
        })
        .await
        .map_err(|e| {
            RegistryError::Ledger(custodian_storage::LedgerError::Poisoned(e.to_string()))
        })??;
        // The bodies of sealed entries travel with them, so the bundle verifies offline; the
        // caller may read them, as it may read the version the badge is about.
        let (note, entries) = proven;
        let mut bodies = Vec::new();
        for (_, bytes, _) in &entries {
            let entry = Entry::decode(bytes).map_err(|e| {
                RegistryError::Ledger(custodian_storage::LedgerError::InvalidEntry(e))
            })?;
            if let Ok((digest, _)) = custodian_core::seal::commitment(&entry) {
                bodies.push(crate::registry::read_all(self.store(), &digest).await?);
            }
        }
        let mut bundle = Bundle::new(badge.clone(), &manifest.1, note, entries, bodies);
        // The same decision as a SLSA VSA, signed with the log's key, for policy engines.
        bundle.attach_vsa(self.ledger().signer()).map_err(|e| {
            RegistryError::Ledger(custodian_storage::LedgerError::Corrupt(e.to_string()))
        })?;
        Ok((bundle.badge.clone(), bundle))
    }

    /// The liveness report of a version.
    pub async fn report(
        &self,
        who: &Principal,
        name: &str,
        version: &str,
    ) -> Result<(Badge, Vec<ReportRow>), RegistryError> {
        let record = self.get(who, name, version)?;
        let (badge, evidence, manifest) = self.evaluate(&record).await?;
        let now = badge.evaluated_ms;
        let mut rows = Vec::new();
        for eval in manifest.0.eval_ids() {
            for model in manifest.0.compatible_models() {
                let latest = evidence
                    .runs
                    .get(&(eval.to_string(), model.clone()))
                    .and_then(|runs| runs.last())
                    .map(|r| ReportRun {
                        passed: r.passed,
                        ledger_index: r.index,
                        integrated_ms: r.time_ms,
                        age_ms: now.saturating_sub(r.time_ms),
                        data_pack_sha256: r.data_pack.clone(),
                        context_sha256: r.context.clone(),
                        runner: r.runner.clone(),
                    });
                let preregistration = evidence
                    .preregistrations
                    .iter()
                    .rfind(|(_, _, p)| p.eval_id == eval)
                    .map(|(index, _, p)| {
                        (
                            *index,
                            serde_json::json!({
                                "metric": p.metric,
                                "comparator": p.comparator,
                                "threshold": p.threshold,
                                "data_pack_sha256": p.data_pack_sha256,
                                "sample_size": p.sample_size,
                                "seed": p.seed,
                                "harness_sha256": p.harness_sha256,
                                "signer_key": p.signer_key,
                            }),
                        )
                    });
                rows.push(ReportRow {
                    eval_id: eval.to_string(),
                    model,
                    latest,
                    preregistration,
                });
            }
        }
        Ok((badge, rows))
    }
}

/// One of the [`MAX_CONCURRENT_ATTESTATIONS`] slots for checking and appending a run. The permit
/// is owned so that it can travel with a run through `attest_many`'s stream.
async fn acquire_slot(
    slots: Arc<tokio::sync::Semaphore>,
) -> Result<tokio::sync::OwnedSemaphorePermit, RegistryError> {
    slots
        .acquire_owned()
        .await
        .map_err(|e| RegistryError::Ledger(custodian_storage::LedgerError::Poisoned(e.to_string())))
}
