//! What the browser pages show of packages and versions, gathered from the index and the ledger
//! in one place: the packages a caller may see, and for one version its badge with every
//! reason, the eval × model matrix with each latest run's signed statement, and every scan with
//! its findings. Visibility is the registry's own: what a caller may not read is absent here
//! exactly as it is from the APIs.

use std::collections::BTreeMap;
use std::sync::Arc;

use custodian_core::attestation::{RunPredicate, RunStatement};
use custodian_core::badge::Badge;
use custodian_core::dsse::Envelope;
use custodian_core::manifest::Manifest;
use custodian_core::registry::{RunAttested, ScanRecorded};

use super::ReportRow;
use crate::auth::Principal;
use crate::registry::{Registry, RegistryError, VersionRecord};

/// One package as the packages list shows it.
pub struct PackageSummary {
    /// The package name.
    pub name: String,
    /// Its newest version the caller may see.
    pub latest: Arc<VersionRecord>,
    /// How many versions the caller may see.
    pub versions: usize,
}

/// A recorded scan with its findings, as the version page shows it.
pub struct ScanView {
    /// Its ledger index.
    pub index: u64,
    /// Its integration time.
    pub time_ms: u64,
    /// The event, findings included.
    pub event: ScanRecorded,
}

/// Everything a version page shows.
pub struct VersionView {
    /// The version.
    pub record: Arc<VersionRecord>,
    /// Its signed manifest, parsed.
    pub manifest: Manifest,
    /// The badge as evaluated now (the same evaluation the badge API answers with).
    pub badge: Badge,
    /// One row per declared eval × compatible model.
    pub rows: Vec<ReportRow>,
    /// The signed statement of each run in `rows`, by ledger index; a run whose statement does
    /// not parse is missing (the badge names it).
    pub statements: BTreeMap<u64, RunPredicate>,
    /// Every scan recorded for the version (its files and its hosted data pack), oldest first.
    pub scans: Vec<ScanView>,
}

impl Registry {
    /// The packages `who` may see whose name contains `query` (case-insensitive; every package
    /// when empty), by name.
    pub fn package_summaries(&self, who: &Principal, query: &str) -> Vec<PackageSummary> {
        let query = query.to_lowercase();
        self.read()
            .packages()
            .filter(|(name, _)| name.to_lowercase().contains(&query))
            .filter_map(|(name, package)| {
                let visible: Vec<&Arc<VersionRecord>> = package
                    .versions()
                    .filter(|v| who.can_read(name, v.event.private))
                    .collect();
                Some(PackageSummary {
                    name: name.clone(),
                    latest: (*visible.last()?).clone(),
                    versions: visible.len(),
                })
            })
            .collect()
    }

    /// The publisher key a package is pinned to, if `who` may see any of its versions.
    pub fn pinned_publisher_key(&self, who: &Principal, name: &str) -> Option<String> {
        let state = self.read();
        let package = state.package(name)?;
        package
            .versions()
            .any(|v| who.can_read(name, v.event.private))
            .then(|| package.publisher_key().to_string())
    }

    /// Everything the version page of `name@version` shows, or the same NOT_FOUND as the APIs
    /// give when `who` may not see it.
    pub async fn version_view(
        &self,
        who: &Principal,
        name: &str,
        version: &str,
    ) -> Result<VersionView, RegistryError> {
        let record = self.get(who, name, version)?;
        let (badge, rows) = self.report(who, name, version).await?;
        let manifest = self.manifest_of(&record).await?.0.clone();
        let mut statements = BTreeMap::new();
        for run in rows.iter().filter_map(|row| row.latest.as_ref()) {
            if let Some(predicate) = self.run_statement(run.ledger_index).await? {
                statements.insert(run.ledger_index, predicate);
            }
        }
        let indexes: Vec<u64> = self
            .read()
            .evidence(&record.event.name, &record.event.version)
            .map(|e| e.scans.iter().map(|s| s.index).collect())
            .unwrap_or_default();
        let mut scans = Vec::with_capacity(indexes.len());
        for index in indexes {
            let entry = self.event_entry(index).await?;
            let event: ScanRecorded = entry.event().map_err(|e| {
                RegistryError::Ledger(custodian_storage::LedgerError::Corrupt(format!(
                    "scan entry {index}: {e}"
                )))
            })?;
            scans.push(ScanView {
                index,
                time_ms: entry.time_ms,
                event,
            });
        }
        Ok(VersionView {
            record,
            manifest,
            badge,
            rows,
            statements,
            scans,
        })
    }

    /// The signed statement of the run logged at `index`, or `None` when it does not parse.
    pub(crate) async fn run_statement(
        &self,
        index: u64,
    ) -> Result<Option<RunPredicate>, RegistryError> {
        let entry = self.event_entry(index).await?;
        let run: RunAttested = entry.event().map_err(|e| {
            RegistryError::Ledger(custodian_storage::LedgerError::Corrupt(e.to_string()))
        })?;
        Ok(statement_of(&run))
    }
}

/// The predicate of a logged run's signed statement, or `None` when it does not parse.
pub(super) fn statement_of(run: &RunAttested) -> Option<RunPredicate> {
    Envelope::parse(run.envelope.as_bytes())
        .ok()
        .and_then(|env| env.payload_bytes().ok())
        .and_then(|payload| RunStatement::from_json(&payload).ok())
        .map(|statement| statement.predicate)
}
