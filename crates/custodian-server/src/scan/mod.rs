//! Scanning in the daemon: the built-in scanner (synchronous on publication, on hosted data-pack
//! upload and on demand) and external scanners (queued jobs with retries, backoff and a
//! timeout). Every verdict becomes a ScanRecorded ledger entry over the content root scanned.
//!
//! Scans read content straight from custody through a blocking bridge on tokio's blocking pool,
//! a bounded number at a time, so a 1 GiB data pack being scanned never holds an async worker
//! and small requests keep being served.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use custodian_core::Digest;
use custodian_core::package::FileEntry;
use custodian_core::receipt::Receipt;
use custodian_core::registry::{DATA_PACK_TARGET, ScanRecorded};
use custodian_scan::{Finding, Limits, Report, SCANNER, Verdict};

use crate::auth::{Principal, Scope};
use crate::registry::{Registry, RegistryError, VersionRecord};

mod external;
mod stream;

pub(crate) use stream::{StreamScan, StreamScans};

use external::{open_blob, run_external, scanner_error};

/// Scans the built-in scanner runs at once (each keeps one core busy).
pub(crate) const MAX_CONCURRENT_SCANS: usize = 2;

/// An external scanner: a command that reads the content as a tar stream on stdin and writes
/// findings as JSON on stdout.
#[derive(Clone, Debug)]
pub struct ExternalScanner {
    /// Its name; verdicts are recorded as scanner `external:<name>`.
    pub name: String,
    /// The command, run with `sh -c`.
    pub command: String,
}

/// How external scanners run.
#[derive(Clone, Debug)]
pub struct ScannerConfig {
    /// The configured scanners.
    pub external: Vec<ExternalScanner>,
    /// How long one attempt may run before it is killed.
    pub timeout: Duration,
    /// Attempts before the verdict is `error`.
    pub attempts: u32,
    /// The wait before the second attempt; doubled for each one after.
    pub backoff: Duration,
}

impl Default for ScannerConfig {
    fn default() -> Self {
        ScannerConfig {
            external: Vec::new(),
            timeout: Duration::from_secs(600),
            attempts: 3,
            backoff: Duration::from_secs(2),
        }
    }
}

/// One recorded scan verdict.
#[derive(Clone, Debug)]
pub struct Scanned {
    /// `None` for the package's files, `data_pack` for its hosted data pack.
    pub target: Option<String>,
    /// The scanner's identity.
    pub scanner: String,
    /// The content root scanned.
    pub root: String,
    /// The verdict.
    pub verdict: Verdict,
    /// The findings as recorded (at most the report limit).
    pub findings: Vec<Finding>,
    /// Findings left out of the record.
    pub omitted: u64,
    /// The ScanRecorded entry's index.
    pub index: u64,
    /// Its receipt.
    pub receipt: Receipt,
}

/// A job in a scanner service's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingScan {
    /// The package name.
    pub name: String,
    /// The version.
    pub version: String,
    /// `None` for the package's files, `data-pack` for its hosted data pack.
    pub target: Option<String>,
    /// The content root to scan (and to record the verdict against).
    pub root: String,
}

/// What one scanner concluded, before it is recorded.
struct Outcome {
    scanner: String,
    verdict: Verdict,
    findings: Vec<Finding>,
    omitted: u64,
}

/// A version (`target` `None`) or its hosted data pack (`data-pack`) that a scanner has yet to
/// judge; what an external scanner's queue holds.
#[derive(Clone, Debug)]
struct Job {
    name: String,
    version: String,
    target: Option<String>,
}

/// The queues feeding external scanners, one per scanner.
pub(crate) struct ExternalQueues {
    senders: Vec<(String, tokio::sync::mpsc::UnboundedSender<Job>)>,
}

/// What a file of content is for reading: its path in the tar stream and its blob.
pub(crate) type Content = Vec<(String, Digest, u64)>;

impl Registry {
    /// The content a scan of `target` reads: the package's files, or the hosted data pack.
    fn content(
        record: &VersionRecord,
        target: Option<&str>,
    ) -> Result<(String, Content), RegistryError> {
        match target {
            None => Ok((
                record.event.root.clone(),
                record
                    .files
                    .iter()
                    .map(|f: &FileEntry| (f.path.clone(), f.sha256, f.size))
                    .collect(),
            )),
            Some(DATA_PACK_TARGET) => {
                let (pack, sha256) = record.hosted_data_pack().ok_or_else(|| {
                    RegistryError::FailedPrecondition(format!(
                        "{}@{} has no hosted data pack to scan",
                        record.event.name, record.event.version
                    ))
                })?;
                let digest: Digest = sha256.parse().map_err(|e| {
                    RegistryError::FailedPrecondition(format!("data pack digest {sha256}: {e}"))
                })?;
                let pack = &pack.event.pack;
                let name = pack
                    .filename
                    .clone()
                    .filter(|f| custodian_core::package::check_path(f).is_ok())
                    .unwrap_or_else(|| "data-pack".into());
                Ok((
                    sha256.to_string(),
                    vec![(name, digest, pack.size.unwrap_or(0))],
                ))
            }
            Some(other) => Err(crate::registry::invalid(
                "target",
                format!("{other:?} is not empty (the package) or data_pack"),
            )),
        }
    }

    /// Runs the built-in scanner over content in custody, on the blocking pool.
    pub(crate) async fn builtin(&self, content: Content, data: bool) -> Report {
        self.builtin_with(content, data, None).await
    }

    /// The PII severity a version's manifest asks for (`safety.pii_scan`), if any.
    pub(crate) async fn pii_of(&self, record: &VersionRecord) -> Option<custodian_scan::Severity> {
        let manifest = self.manifest_of(record).await.ok()?;
        custodian_scan::package::pii_severity(Some(&manifest.0))
    }

    /// Runs the built-in scanner; a data pack's text also goes through the PII rules at `pii`.
    async fn builtin_with(
        &self,
        content: Content,
        data: bool,
        pii: Option<custodian_scan::Severity>,
    ) -> Report {
        let _permit = self.scan_permits.acquire().await;
        let store = self.store().clone();
        let handle = tokio::runtime::Handle::current();
        let limits = Limits::default();
        let outcome = tokio::task::spawn_blocking(move || {
            let by_path: HashMap<String, Digest> =
                content.iter().map(|(p, d, _)| (p.clone(), *d)).collect();
            if data {
                let (name, digest, _) = &content[0];
                return match open_blob(&store, &handle, digest) {
                    Ok(mut reader) => {
                        custodian_scan::package::scan_data_pack(name, &mut reader, &limits, pii)
                    }
                    Err(e) => Report {
                        error: Some(format!("the data pack could not be read: {e}")),
                        ..Report::default()
                    },
                };
            }
            let files: Vec<(String, u64)> =
                content.iter().map(|(p, _, s)| (p.clone(), *s)).collect();
            let mut open = |path: &str| -> io::Result<Box<dyn Read>> {
                let digest = by_path
                    .get(path)
                    .ok_or_else(|| io::Error::other(format!("no file {path:?}")))?;
                Ok(open_blob(&store, &handle, digest)? as Box<dyn Read>)
            };
            custodian_scan::package::scan_package(&files, &mut open, &limits)
        })
        .await;
        outcome.unwrap_or_else(|e| Report {
            error: Some(format!("the scanner stopped: {e}")),
            ..Report::default()
        })
    }

    /// Appends a ScanRecorded entry and applies it.
    async fn record(
        &self,
        record: &VersionRecord,
        target: Option<&str>,
        root: String,
        outcome: Outcome,
    ) -> Result<Scanned, RegistryError> {
        let Outcome {
            scanner,
            verdict,
            findings,
            omitted,
        } = outcome;
        let event = ScanRecorded {
            name: record.event.name.clone(),
            version: record.event.version.clone(),
            scanner: scanner.clone(),
            verdict: verdict.as_str().into(),
            root: root.clone(),
            findings: serde_json::to_string(&findings).unwrap_or_else(|_| "[]".into()),
            private: record.event.private,
            target: target.map(String::from),
        };
        let (index, _, receipt) = self.append(&event).await?;
        tracing::info!(
            name = %record.event.name, version = %record.event.version,
            target = target.unwrap_or("package"), %scanner, verdict = verdict.as_str(), index,
            "scan recorded"
        );
        Ok(Scanned {
            target: target.map(String::from),
            scanner,
            root,
            verdict,
            findings,
            omitted,
            index,
            receipt,
        })
    }

    /// Scans a version's package files (or its hosted data pack) with the built-in scanner now,
    /// records the verdict and queues the external scanners.
    pub async fn scan_now(
        &self,
        record: &VersionRecord,
        target: Option<&str>,
    ) -> Result<Scanned, RegistryError> {
        let (root, content) = Self::content(record, target)?;
        let pii = if target.is_some() {
            self.pii_of(record).await
        } else {
            None
        };
        let report = self.builtin_with(content, target.is_some(), pii).await;
        self.record_report(record, target, root, report).await
    }

    /// Runs the built-in scanner over one blob in custody as the data pack of `record`, named
    /// `name` (with the PII rules when its manifest declares `safety.pii_scan`).
    pub async fn scan_data(&self, record: &VersionRecord, sha256: &Digest, name: &str) -> Report {
        let pii = self.pii_of(record).await;
        self.builtin_with(vec![(name.to_string(), *sha256, 0)], true, pii)
            .await
    }

    /// Records a built-in report as a ScanRecorded entry and queues the external scanners.
    pub async fn record_report(
        &self,
        record: &VersionRecord,
        target: Option<&str>,
        root: String,
        report: Report,
    ) -> Result<Scanned, RegistryError> {
        let verdict = report.verdict();
        let mut findings = report.findings;
        if let Some(error) = report.error {
            findings.push(scanner_error(error));
        }
        let scanned = self
            .record(
                record,
                target,
                root,
                Outcome {
                    scanner: SCANNER.into(),
                    verdict,
                    findings,
                    omitted: report.omitted,
                },
            )
            .await?;
        self.queue_external(&record.event.name, &record.event.version, target);
        Ok(scanned)
    }

    /// Rescans a version on demand: the package and its hosted data pack, if any.
    pub async fn rescan(
        &self,
        who: &Principal,
        name: &str,
        version: &str,
    ) -> Result<(Vec<Scanned>, Vec<String>), RegistryError> {
        let record = self.get(who, name, version)?;
        if !(who.allows(Scope::Scan, name) || who.allows(Scope::Publish, name)) {
            crate::registry::require(who, Scope::Scan, name, "rescan")?;
        }
        let mut out = vec![self.scan_now(&record, None).await?];
        if record.hosted_data_pack().is_some() {
            out.push(self.scan_now(&record, Some(DATA_PACK_TARGET)).await?);
        }
        let queued = self
            .external
            .get()
            .map(|q| {
                q.senders
                    .iter()
                    .map(|(n, _)| format!("external:{n}"))
                    .collect()
            })
            .unwrap_or_default();
        Ok((out, queued))
    }

    /// Every version and hosted data pack without a verdict from `scanner`.
    fn unscanned_by(&self, scanner: &str) -> Vec<Job> {
        self.unscanned_for(scanner, &Principal::Anonymous, true)
    }

    /// Like `unscanned_by`, limited to what `who` may read unless `everything`.
    fn unscanned_for(&self, scanner: &str, who: &Principal, everything: bool) -> Vec<Job> {
        let state = self.read();
        let mut out = Vec::new();
        for (name, package) in state.packages() {
            for record in package
                .versions()
                .filter(|r| everything || who.can_read(name, r.event.private))
            {
                let version = record.event.version.clone();
                let scanned = |root: &str| {
                    state.evidence(name, &version).is_some_and(|e| {
                        e.scans
                            .iter()
                            .any(|s| s.scanner == scanner && s.root == root)
                    })
                };
                if !scanned(&record.event.root) {
                    out.push(Job {
                        name: name.clone(),
                        version: version.clone(),
                        target: None,
                    });
                }
                if let Some((_, sha256)) = record.hosted_data_pack()
                    && !scanned(sha256)
                {
                    out.push(Job {
                        name: name.clone(),
                        version,
                        target: Some(DATA_PACK_TARGET.into()),
                    });
                }
            }
        }
        out
    }

    /// A scanner service's queue: what `who` may read that `scanner` has not judged yet.
    pub fn pending_scans(
        &self,
        who: &Principal,
        scanner: &str,
        limit: usize,
    ) -> Result<Vec<PendingScan>, RegistryError> {
        if !who.has_scope(Scope::Scan) {
            return Err(match who {
                Principal::Anonymous => RegistryError::Unauthenticated(
                    "listing pending scans needs a token with the scan scope".into(),
                ),
                Principal::Token(_) => {
                    RegistryError::PermissionDenied(format!("{} lacks the scan scope", who.label()))
                }
            });
        }
        if scanner.trim().is_empty() {
            return Err(crate::registry::invalid("scanner", "is required"));
        }
        let mut out = Vec::new();
        for Job {
            name,
            version,
            target,
        } in self.unscanned_for(scanner, who, false)
        {
            if out.len() >= limit {
                break;
            }
            if !who.allows(Scope::Scan, &name) {
                continue;
            }
            let Ok(record) = self.get(who, &name, &version) else {
                continue;
            };
            if let Ok((root, _)) = Self::content(&record, target.as_deref()) {
                out.push(PendingScan {
                    name,
                    version,
                    target,
                    root,
                });
            }
        }
        Ok(out)
    }

    /// The scan status of a content root: the worst of each scanner's latest verdict, or
    /// `pending` when nothing has been recorded.
    pub fn scan_status(&self, name: &str, version: &str, root: &str) -> String {
        let state = self.read();
        let Some(evidence) = state.evidence(name, version) else {
            return "pending".into();
        };
        // The same per-scanner reading the badge policy applies.
        custodian_core::badge::latest_per_scanner(&evidence.scans, root)
            .into_iter()
            .filter_map(|s| Verdict::parse(&s.verdict))
            .reduce(Verdict::worst)
            .map_or_else(|| "pending".into(), |v| v.as_str().into())
    }

    /// Starts the external scanners' workers and queues every version and hosted data pack they
    /// have no verdict for yet (the ledger is the queue's durable form).
    pub fn start_external(self: &Arc<Self>, config: ScannerConfig) {
        if config.external.is_empty() {
            return;
        }
        let mut senders = Vec::new();
        for scanner in &config.external {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            senders.push((scanner.name.clone(), tx));
            tokio::spawn(worker(
                Arc::downgrade(self),
                scanner.clone(),
                config.clone(),
                rx,
            ));
        }
        if self.external.set(ExternalQueues { senders }).is_err() {
            tracing::warn!("external scanners were already started");
            return;
        }
        for scanner in &config.external {
            let identity = format!("external:{}", scanner.name);
            for job in self.unscanned_by(&identity) {
                self.queue_one(&scanner.name, job);
            }
        }
    }

    fn queue_one(&self, scanner: &str, job: Job) {
        if let Some(queues) = self.external.get()
            && let Some((_, tx)) = queues.senders.iter().find(|(n, _)| n == scanner)
        {
            let _ = tx.send(job);
        }
    }

    /// Queues a scan of the version's `target` with every external scanner.
    fn queue_external(&self, name: &str, version: &str, target: Option<&str>) {
        if let Some(queues) = self.external.get() {
            for (_, tx) in &queues.senders {
                let _ = tx.send(Job {
                    name: name.to_string(),
                    version: version.to_string(),
                    target: target.map(String::from),
                });
            }
        }
    }
}

/// One external scanner's worker: takes jobs in order, retries failed attempts with backoff, and
/// records `error` when every attempt failed (a scanner that crashes or hangs never yields clean).
async fn worker(
    registry: std::sync::Weak<Registry>,
    scanner: ExternalScanner,
    config: ScannerConfig,
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<Job>,
) {
    let identity = format!("external:{}", scanner.name);
    while let Some(job) = jobs.recv().await {
        let Some(registry) = registry.upgrade() else {
            return;
        };
        let Some(record) = semver::Version::parse(&job.version)
            .ok()
            .and_then(|v| registry.read().version(&job.name, &v).cloned())
        else {
            continue;
        };
        let target = job.target.as_deref();
        let (root, content) = match Registry::content(&record, target) {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(%identity, name = %job.name, %err, "external scan skipped");
                continue;
            }
        };
        let mut failures = Vec::new();
        let mut outcome = None;
        for attempt in 1..=config.attempts.max(1) {
            match run_external(
                registry.store(),
                &scanner,
                &record,
                target,
                &root,
                content.clone(),
                config.timeout,
            )
            .await
            {
                Ok(result) => {
                    outcome = Some(result);
                    break;
                }
                Err(err) => {
                    tracing::warn!(%identity, name = %job.name, version = %job.version, attempt, %err, "external scan attempt failed");
                    failures.push(format!("attempt {attempt}: {err}"));
                    if attempt < config.attempts {
                        tokio::time::sleep(config.backoff * 2u32.saturating_pow(attempt - 1)).await;
                    }
                }
            }
        }
        let (verdict, findings) =
            outcome.unwrap_or_else(|| (Verdict::Error, vec![scanner_error(failures.join("; "))]));
        if let Err(err) = registry
            .record(
                &record,
                target,
                root,
                Outcome {
                    scanner: identity.clone(),
                    verdict,
                    findings,
                    omitted: 0,
                },
            )
            .await
        {
            tracing::error!(%identity, name = %job.name, %err, "could not record an external scan");
        }
    }
}
