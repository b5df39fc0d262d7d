//! Provable retention (docs/operations.md, docs/storage.md): pins and legal holds as ledger
//! entries, online garbage collection whose every deletion is a `BlobsDeleted` entry, and the
//! answer to "why is this blob here, or where did it go".
//!
//! A blob is kept while anything keeps it ([`Keeper`]): a legal hold; a published version or a
//! hosted data pack whose files it is (or the body of a sealed entry); an OCI repository it is
//! linked into or holds it as a manifest; a pin that has not lapsed; or the grace period, which
//! runs from the blob's upload and from every later put that was told "already present".
//!
//! Collection runs while uploads and publications continue. It judges each blob without
//! stopping anything, then, for each batch of candidates, takes the exclusive side of the
//! store's retention gate (see `custodian_storage::retention`), judges each candidate again,
//! appends one `BlobsDeleted` entry naming those still collectable, and only then deletes them.
//! The entry is written first so that a crash part-way leaves a record of what was to go:
//! [`finish_recorded`] (run at start and before every collection) deletes whatever a
//! recorded deletion left behind, unless it is a copy uploaded again after the deletion.

pub mod index;
pub mod reconcile;
mod tombstones;

use std::sync::Arc;
use std::time::Duration;

use custodian_core::Digest;
use custodian_core::registry::{BlobRetention, BlobsDeleted, DeletedBlob, RetentionAction};
use custodian_storage::uploads::UploadSessions;
use custodian_storage::{BlobMeta, LedgerError, NativeHolds};

use crate::auth::{Principal, Scope};
use crate::oci::Oci;
use crate::registry::{Registry, RegistryError, invalid};

/// How many blobs one `BlobsDeleted` entry names at most: few enough that the entry is never
/// sealed (see `custodian_core::seal::must_seal`). A sealed entry's body goes into custody
/// through a put, which waits for the shared side of the retention gate the collector holds
/// exclusively while it appends: the test below keeps the two apart.
pub const DELETE_BATCH: usize = 150;

/// How many deleted blobs a report lists (the ledger entries list them all), so that an answer
/// stays small however much is collected.
pub const REPORT_LIST: usize = 1000;

/// How many digests are listed from the store per step of the sweep.
const LIST_PAGE: usize = 4096;

/// Why a blob is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keeper {
    /// A legal hold (its subject, reason and ledger entry).
    Held {
        /// What the hold was asked for.
        subject: String,
        /// Why.
        reason: String,
        /// The `BlobRetention` entry.
        index: u64,
    },
    /// Files of a package version or a hosted data pack, or a sealed entry's body.
    Referenced {
        /// The packages that refer to it (`""` for a public sealed body).
        packages: Vec<String>,
    },
    /// Linked into, or held as a manifest by, OCI repositories.
    Oci {
        /// The repositories.
        repositories: Vec<String>,
    },
    /// A pin that has not lapsed.
    Pinned {
        /// What the pin was asked for.
        subject: String,
        /// When it lapses.
        expires_ms: Option<u64>,
        /// The `BlobRetention` entry.
        index: u64,
    },
    /// Within the grace period of its upload or its latest acknowledgement.
    Grace {
        /// When the grace period ends.
        until_ms: u64,
    },
}

impl GcReport {
    fn count(&mut self, blobs: impl Iterator<Item = (Digest, u64)>) {
        for (digest, size) in blobs {
            self.deleted_count += 1;
            self.deleted_bytes += size;
            if self.deleted.len() < REPORT_LIST {
                self.deleted.push((digest, size));
            }
        }
    }
}

impl Keeper {
    /// The keeper in words.
    pub fn describe(&self) -> String {
        match self {
            Keeper::Held {
                subject,
                reason,
                index,
            } => format!("legal hold on {subject} (ledger entry {index}): {reason}"),
            Keeper::Referenced { packages } => format!(
                "referenced by {}",
                packages
                    .iter()
                    .map(|p| if p.is_empty() {
                        "a sealed ledger entry".to_string()
                    } else {
                        format!("package {p}")
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Keeper::Oci { repositories } => {
                format!("in OCI repositories {}", repositories.join(", "))
            }
            Keeper::Pinned {
                subject,
                expires_ms,
                index,
            } => match expires_ms {
                Some(ms) => format!(
                    "pinned as {subject} (ledger entry {index}) until {}",
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_millis(*ms)
                    )
                ),
                None => format!("pinned as {subject} (ledger entry {index}) with no expiry"),
            },
            Keeper::Grace { until_ms } => format!(
                "within the grace period until {}",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_millis(*until_ms)
                )
            ),
        }
    }
}

/// What `why` says about one digest.
#[derive(Clone, Debug)]
pub struct Why {
    /// The digest asked about.
    pub digest: Digest,
    /// The blob, if it is in custody.
    pub present: Option<BlobMeta>,
    /// Everything that keeps it (empty: it is collectable).
    pub keepers: Vec<Keeper>,
    /// Its latest recorded deletion, if any.
    pub tombstone: Option<index::Tombstone>,
}

/// One blob of the custody listing, with what keeps it outside the ledger.
#[derive(Clone, Debug)]
pub struct Listed {
    /// The blob.
    pub meta: BlobMeta,
    /// Its latest acknowledgement to a put (ms since the Unix epoch), if any.
    pub acknowledged_ms: Option<u64>,
    /// The OCI repositories it is linked into.
    pub oci_linked_in: Vec<String>,
}

/// A collection's options.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Blobs uploaded or acknowledged within this long ago are kept.
    pub grace: Duration,
    /// Judge only; delete nothing and record nothing.
    pub dry_run: bool,
    /// Who runs it (recorded in each entry).
    pub by: String,
}

/// What a collection did.
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    /// Blobs judged.
    pub examined: u64,
    /// Kept by a legal hold, a reference, an OCI link or a pin.
    pub kept: u64,
    /// Kept by the grace period.
    pub in_grace: u64,
    /// Deleted (or, in a dry run, that would be), with sizes: the first [`REPORT_LIST`].
    pub deleted: Vec<(Digest, u64)>,
    /// How many were deleted (or would be).
    pub deleted_count: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Candidates that were kept at the second look (something kept them meanwhile).
    pub spared: u64,
    /// The `BlobsDeleted` entries appended.
    pub entries: Vec<u64>,
    /// Deletions recorded earlier that this run finished (after a crash).
    pub finished_earlier: u64,
    /// Whether nothing was deleted or recorded.
    pub dry_run: bool,
}

/// Pins, holds, `why`, and garbage collection over one daemon's store and ledger.
pub struct Collector {
    registry: Arc<Registry>,
    oci: Arc<Oci>,
    uploads: Arc<UploadSessions>,
    /// One collection or admin deletion at a time.
    running: tokio::sync::Mutex<()>,
    /// The store's own legal hold, set beside the ledger's when `serve --native-holds`.
    native: Option<Arc<dyn NativeHolds>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn require_admin(who: &Principal, action: &str) -> Result<(), RegistryError> {
    if who.allows_everywhere(Scope::Admin) {
        return Ok(());
    }
    Err(match who {
        Principal::Anonymous => RegistryError::Unauthenticated(format!(
            "{action} needs an admin token: send authorization: Bearer <token>"
        )),
        Principal::Token(_) => RegistryError::PermissionDenied(format!(
            "{} may not {action}: it needs the admin scope on every namespace",
            who.label()
        )),
    })
}

impl Collector {
    /// A collector over the registry (its index and store) and the OCI front end's links;
    /// `uploads` bounds the grace period from below.
    pub fn new(registry: Arc<Registry>, oci: Arc<Oci>, uploads: Arc<UploadSessions>) -> Self {
        Collector {
            registry,
            oci,
            uploads,
            running: tokio::sync::Mutex::new(()),
            native: None,
        }
    }

    /// Also sets every legal hold in the store itself (`None`: the ledger's hold only).
    pub fn with_native_holds(mut self, native: Option<Arc<dyn NativeHolds>>) -> Self {
        self.native = native;
        self
    }

    /// Turns the store's own hold on or off for `digests`; on a failure, undoes what it did
    /// (best effort) and says which blob failed.
    async fn set_native(&self, digests: &[Digest], on: bool) -> Result<(), RegistryError> {
        let Some(native) = &self.native else {
            return Ok(());
        };
        for (done, digest) in digests.iter().enumerate() {
            if let Err(err) = native.set(digest, on).await {
                for undo in &digests[..done] {
                    if let Err(e) = native.set(undo, !on).await {
                        tracing::error!(%undo, %e, "could not undo a native legal hold change");
                    }
                }
                return Err(RegistryError::Storage(err));
            }
        }
        Ok(())
    }

    /// What keeps `metas`' blobs outside the ledger: the latest acknowledgement of each (by any
    /// daemon sharing the store) and the OCI repositories linking it.
    async fn outside(&self, metas: &[BlobMeta]) -> Result<Vec<Outside>, RegistryError> {
        let digests: Vec<Digest> = metas.iter().map(BlobMeta::sha256).collect();
        let acknowledged = self
            .registry
            .store()
            .retention()
            .acknowledged_at(&digests)
            .await?;
        let mut out = Vec::with_capacity(metas.len());
        for (digest, acknowledged_ms) in digests.iter().zip(acknowledged) {
            out.push(Outside {
                acknowledged_ms,
                linked_in: self.oci.linked_in(digest).await.map_err(oci_failure)?,
            });
        }
        Ok(out)
    }

    /// Everything that keeps `meta`'s blob at `now`, judged with `grace` and what keeps it
    /// `outside` the ledger; empty if nothing does.
    fn keepers(
        &self,
        meta: &BlobMeta,
        outside: &Outside,
        grace: Duration,
        now: u64,
    ) -> Vec<Keeper> {
        let sha256 = meta.sha256();
        let mut keepers = Vec::new();
        {
            let index = self.registry.read();
            for hold in index.retention().holds(&sha256) {
                keepers.push(Keeper::Held {
                    subject: hold.subject.clone(),
                    reason: hold.reason.clone(),
                    index: hold.index,
                });
            }
            if let Some(refs) = index.blob_refs(&sha256)
                && !refs.is_empty()
            {
                let mut packages: Vec<String> = refs.iter().map(|r| r.name.clone()).collect();
                packages.sort();
                packages.dedup();
                keepers.push(Keeper::Referenced { packages });
            }
            let mut repositories = index.oci().repos_with_manifest(&sha256);
            repositories.extend(outside.linked_in.iter().cloned());
            repositories.sort();
            repositories.dedup();
            if !repositories.is_empty() {
                keepers.push(Keeper::Oci { repositories });
            }
            for pin in index.retention().pinned(&sha256, now) {
                keepers.push(Keeper::Pinned {
                    subject: pin.subject,
                    expires_ms: pin.expires_ms,
                    index: pin.index,
                });
            }
        }
        let touched = outside
            .acknowledged_ms
            .unwrap_or(0)
            .max(meta.created_unix_ms);
        let until_ms = touched.saturating_add(grace.as_millis() as u64);
        if until_ms > now {
            keepers.push(Keeper::Grace { until_ms });
        }
        keepers
    }

    /// Why `digest` is in custody, or what became of it. Needs an admin token.
    pub async fn why(
        &self,
        who: &Principal,
        digest: &Digest,
        grace: Duration,
    ) -> Result<Why, RegistryError> {
        require_admin(who, "ask why a blob is kept")?;
        let present = self.registry.store().stat(digest).await?;
        let now = now_ms();
        let keepers = match &present {
            Some(meta) => {
                let outside = self.outside(std::slice::from_ref(meta)).await?;
                self.keepers(meta, &outside[0], grace, now)
            }
            None => Vec::new(),
        };
        let sha256 = present.as_ref().map_or(*digest, BlobMeta::sha256);
        let tombstone = self.registry.tombstone(&sha256).await;
        Ok(Why {
            digest: *digest,
            present,
            keepers,
            tombstone,
        })
    }

    /// The blobs a subject names: a digest in custody, or `NAME@VERSION` (its files and hosted
    /// data pack).
    async fn resolve(&self, who: &Principal, subject: &str) -> Result<Vec<Digest>, RegistryError> {
        if let Ok(digest) = subject.parse::<Digest>() {
            return match self.registry.store().stat(&digest).await? {
                Some(meta) => Ok(vec![meta.sha256()]),
                None => Err(RegistryError::NotFound(format!(
                    "field subject: blob {digest} is not in custody, so there is nothing to keep{}",
                    match self.registry.tombstone(&digest).await {
                        Some(t) => format!(
                            " (it was deleted at ledger entry {}: {})",
                            t.index, t.reason
                        ),
                        None => String::new(),
                    }
                ))),
            };
        }
        let Some((name, version)) = subject.rsplit_once('@').filter(|(n, _)| !n.is_empty()) else {
            return Err(invalid(
                "subject",
                format!("{subject:?} is neither a digest (sha256:… or blake3:…) nor NAME@VERSION"),
            ));
        };
        let record = self.registry.get(who, name, version)?;
        let mut digests: Vec<Digest> = record.files.iter().map(|f| f.sha256).collect();
        if let Some(pack) = &record.data_pack
            && let Some(sha) = pack.event.pack.sha256.as_deref()
            && let Ok(digest) = sha.parse::<Digest>()
        {
            digests.push(digest);
        }
        digests.sort_by_key(|d| *d.bytes());
        digests.dedup();
        Ok(digests)
    }

    /// Pins, unpins, holds or releases `subject`; returns the entry's index and the blobs.
    pub async fn retain(
        &self,
        who: &Principal,
        action: RetentionAction,
        subject: &str,
        reason: &str,
        expires_in: Option<Duration>,
    ) -> Result<(u64, Vec<Digest>), RegistryError> {
        require_admin(who, &format!("{} blobs", action.as_str()))?;
        let needs_reason = matches!(action, RetentionAction::Hold | RetentionAction::Release);
        if needs_reason && reason.trim().is_empty() {
            return Err(invalid(
                "reason",
                format!(
                    "is required to {} a legal hold: say why (it is recorded in the ledger)",
                    if action == RetentionAction::Hold {
                        "place"
                    } else {
                        "release"
                    }
                ),
            ));
        }
        if expires_in.is_some() && action != RetentionAction::Pin {
            return Err(invalid(
                "expires_in",
                format!("only a pin lapses; a {} has no expiry", action.as_str()),
            ));
        }
        let digests = match action {
            RetentionAction::Pin | RetentionAction::Hold => self.resolve(who, subject).await?,
            // Removing a pin or hold names what it was placed on, which may be gone by now.
            RetentionAction::Unpin | RetentionAction::Release => {
                let index = self.registry.read();
                let placed: Vec<Digest> = self
                    .placed_on(&index, subject, action)
                    .into_iter()
                    .collect();
                if placed.is_empty() {
                    return Err(RegistryError::NotFound(format!(
                        "field subject: there is no {} on {subject:?} to remove",
                        if action == RetentionAction::Unpin {
                            "pin"
                        } else {
                            "legal hold"
                        }
                    )));
                }
                placed
            }
        };
        // From here until the entry is applied, garbage collection may not delete these blobs:
        // a collection that judged one before the pin or hold existed must not delete it after.
        let store = self.registry.store();
        let _keep = store.retention().keep(&digests).await;
        if matches!(action, RetentionAction::Pin | RetentionAction::Hold) {
            for digest in &digests {
                if store.stat(digest).await?.is_none() {
                    return Err(RegistryError::NotFound(format!(
                        "field subject: blob {digest} of {subject:?} left custody before the {} was placed",
                        action.as_str()
                    )));
                }
            }
        }
        // The store's own hold is set before the entry records the hold, and turned off before
        // the entry records the release (only on blobs no other hold keeps): either way, a
        // failure leaves the ledger unchanged and the store as it was.
        let native: Vec<Digest> = match action {
            RetentionAction::Hold => digests.clone(),
            RetentionAction::Release => {
                let index = self.registry.read();
                digests
                    .iter()
                    .filter(|d| {
                        index
                            .retention()
                            .holds(d)
                            .iter()
                            .all(|h| h.subject == subject)
                    })
                    .copied()
                    .collect()
            }
            _ => Vec::new(),
        };
        let on = action == RetentionAction::Hold;
        self.set_native(&native, on).await?;
        let event = BlobRetention {
            action,
            subject: subject.to_string(),
            digests: digests.iter().map(|d| d.to_string()).collect(),
            reason: reason.to_string(),
            expires_ms: expires_in.map(|d| now_ms() + d.as_millis() as u64),
            by: who.label(),
        };
        let (index, ..) = match self.registry.append(&event).await {
            Ok(appended) => appended,
            Err(err) => {
                if let Err(undo) = self.set_native(&native, !on).await {
                    tracing::error!(%undo, "could not undo the native legal hold change");
                }
                return Err(err);
            }
        };
        Ok((index, digests))
    }

    /// One page of the custody listing: up to `limit` blobs after `after` in SHA-256 order,
    /// each with what keeps it outside the ledger. Needs an admin token.
    pub async fn list_page(
        &self,
        who: &Principal,
        after: Option<Digest>,
        limit: usize,
    ) -> Result<Vec<Listed>, RegistryError> {
        require_admin(who, "list the blobs in custody")?;
        let store = self.registry.store();
        let digests = store.list(after, limit).await?;
        let mut metas = Vec::with_capacity(digests.len());
        for digest in digests {
            // A blob deleted between the list and the lookup is simply not listed.
            if let Some(meta) = store.stat(&digest).await? {
                metas.push(meta);
            }
        }
        let outside = self.outside(&metas).await?;
        Ok(metas
            .into_iter()
            .zip(outside)
            .map(|(meta, outside)| Listed {
                acknowledged_ms: outside.acknowledged_ms,
                oci_linked_in: outside.linked_in,
                meta,
            })
            .collect())
    }

    /// The blobs a pin (for `Unpin`) or a hold (for `Release`) on `subject` covers now.
    fn placed_on(
        &self,
        index: &crate::registry::index::Index,
        subject: &str,
        action: RetentionAction,
    ) -> Vec<Digest> {
        let mut out = Vec::new();
        let candidates = index.retention().subjects(subject);
        for digest in candidates {
            let placed = match action {
                RetentionAction::Unpin => index
                    .retention()
                    .pins(&digest)
                    .iter()
                    .any(|p| p.subject == subject),
                _ => index
                    .retention()
                    .holds(&digest)
                    .iter()
                    .any(|h| h.subject == subject),
            };
            if placed {
                out.push(digest);
            }
        }
        out
    }

    /// Collects garbage (see the module docs). Needs an admin token; refuses a grace period
    /// shorter than the upload session expiry.
    pub async fn collect(
        &self,
        who: &Principal,
        options: GcOptions,
    ) -> Result<GcReport, RegistryError> {
        require_admin(who, "collect garbage")?;
        self.run(options).await
    }

    /// Collects garbage on the daemon's own schedule (no caller to check).
    pub async fn run(&self, options: GcOptions) -> Result<GcReport, RegistryError> {
        let expiry = self.uploads.expiry();
        if options.grace < expiry {
            return Err(invalid(
                "grace",
                format!(
                    "{} is shorter than the upload session expiry {} (serve --upload-expiry): a client resuming an upload, or publishing what it uploaded, may rely on a blob for that long",
                    humantime::format_duration(options.grace),
                    humantime::format_duration(expiry)
                ),
            ));
        }
        let _running = self.running.lock().await;
        let mut report = GcReport {
            dry_run: options.dry_run,
            ..GcReport::default()
        };
        if !options.dry_run {
            report.finished_earlier = finish_recorded(&self.registry).await?;
            // Claims a crashed collection left (this daemon's, or a daemon's that is gone) on
            // blobs still in custody: their deletion was not recorded, or was just finished
            // above, so the claims only block acknowledgements now.
            let retention = self.registry.store().retention();
            let abandoned = retention.abandoned_claims().await?;
            if !abandoned.is_empty() {
                tracing::info!(
                    blobs = abandoned.len(),
                    "releasing abandoned deletion claims"
                );
                retention.release_abandoned(&abandoned).await?;
            }
        }
        let store = self.registry.store().clone();
        let mut after: Option<Digest> = None;
        let mut candidates: Vec<BlobMeta> = Vec::new();
        loop {
            let page = store.list(after, LIST_PAGE).await?;
            let Some(last) = page.last().copied() else {
                break;
            };
            after = Some(last);
            let metas = futures::future::join_all(page.iter().map(|d| store.stat(d))).await;
            let metas: Vec<BlobMeta> = metas
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect();
            let outside = self.outside(&metas).await?;
            let now = now_ms();
            for (meta, outside) in metas.into_iter().zip(outside) {
                report.examined += 1;
                let keepers = self.keepers(&meta, &outside, options.grace, now);
                if keepers.is_empty() {
                    candidates.push(meta);
                } else if keepers.iter().all(|k| matches!(k, Keeper::Grace { .. })) {
                    report.in_grace += 1;
                } else {
                    report.kept += 1;
                }
                if candidates.len() >= DELETE_BATCH {
                    self.delete_batch(&mut candidates, &options, &mut report)
                        .await?;
                }
            }
        }
        self.delete_batch(&mut candidates, &options, &mut report)
            .await?;
        if !options.dry_run {
            // Acknowledgements older than the grace period protect nothing any more.
            let cutoff = now_ms().saturating_sub(options.grace.as_millis() as u64);
            if let Err(err) = store.retention().forget_before(cutoff) {
                tracing::warn!(%err, "could not compact the acknowledgement record");
            }
        }
        Ok(report)
    }

    /// Judges `candidates` again under the exclusive gate, records those still collectable in
    /// one `BlobsDeleted` entry, then deletes them.
    async fn delete_batch(
        &self,
        candidates: &mut Vec<BlobMeta>,
        options: &GcOptions,
        report: &mut GcReport,
    ) -> Result<(), RegistryError> {
        if candidates.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(candidates);
        if options.dry_run {
            report.count(batch.iter().map(|m| (m.sha256(), m.size)));
            return Ok(());
        }
        let store = self.registry.store().clone();
        let digests: Vec<Digest> = batch.iter().map(BlobMeta::sha256).collect();
        let _exclusive = store.retention().exclusive(&digests).await;
        let mut current = Vec::with_capacity(batch.len());
        for meta in batch {
            // The blob may have been deleted and uploaded again since it was listed: judge the
            // copy in custody now.
            if let Some(meta) = store.stat(&meta.sha256()).await? {
                current.push(meta);
            }
        }
        // The condition of the deletion starts where this judgement's view of the ledger ends:
        // an entry the background follow applies after it is checked by the condition.
        let judged_below = self.registry.read().processed_below();
        let outside = self.outside(&current).await?;
        let now = now_ms();
        let mut going = Vec::new();
        for (meta, outside) in current.into_iter().zip(outside) {
            if self.keepers(&meta, &outside, options.grace, now).is_empty() {
                going.push(meta);
            } else {
                report.spared += 1;
            }
        }
        // Daemons sharing the store claim what they delete, so that a put on another daemon
        // is either seen here (and the blob spared) or told the blob is going.
        let cutoff = now.saturating_sub(options.grace.as_millis() as u64);
        let before = going.len();
        self.claim(&mut going, cutoff).await?;
        report.spared += (before - going.len()) as u64;
        let grace = options.grace;
        let spare = move |collector: &Self, meta: &BlobMeta, outside: &Outside| {
            !collector.keepers(meta, outside, grace, now_ms()).is_empty()
        };
        let why = Grounds {
            reason: "garbage collection",
            policy: format!(
                "unreferenced, unpinned, not held, and neither uploaded nor acknowledged for {}",
                humantime::format_duration(options.grace)
            ),
            grace_ms: options.grace.as_millis() as u64,
            by: &options.by,
        };
        self.record_and_delete(going, judged_below, &spare, &why, report)
            .await
    }

    /// Appends the `BlobsDeleted` entry for `going`, then deletes each; the caller holds the
    /// exclusive gate. On a ledger shared with other daemons the entry is appended only if
    /// nothing appended from `judged_below` on may keep a blob (a publication, a data pack, an
    /// OCI manifest, a pin or hold, a sealed body, a run): every entry below it had been applied
    /// when `going` was judged. Otherwise this daemon catches up, spares what `spare` now says
    /// is kept, and tries again.
    ///
    /// The blobs are claimed (see [`Collector::claim`]); a claim on a blob that is not deleted
    /// after all is released, whatever the outcome.
    async fn record_and_delete(
        &self,
        going: Vec<BlobMeta>,
        judged_below: u64,
        spare: &(dyn Fn(&Self, &BlobMeta, &Outside) -> bool + Sync),
        why: &Grounds<'_>,
        report: &mut GcReport,
    ) -> Result<(), RegistryError> {
        let claimed: Vec<Digest> = going.iter().map(BlobMeta::sha256).collect();
        let recorded = self.record(going, judged_below, spare, why, report).await;
        let kept: Vec<Digest> = match &recorded {
            Ok(Some((_, deleted))) => claimed
                .into_iter()
                .filter(|d| !deleted.contains(d))
                .collect(),
            _ => claimed,
        };
        if let Err(err) = self.registry.store().retention().release(&kept).await {
            // Left claimed, those blobs refuse acknowledgements until a later collection
            // releases its abandoned claims.
            tracing::warn!(%err, blobs = kept.len(), "could not release deletion claims");
        }
        let Some((index, deleted)) = recorded? else {
            return Ok(());
        };
        self.registry.store().delete_many(&deleted).await?;
        // Carried out: nothing is left for the next collection to finish, and the list of
        // its digests need not be held until then (a million deleted blobs held 30 MB).
        self.registry.write().retention_mut().carried_out(index);
        Ok(())
    }

    /// Appends the `BlobsDeleted` entry of [`Collector::record_and_delete`]; returns the blobs
    /// it records (none if every one was spared), counted in `report`.
    async fn record(
        &self,
        mut going: Vec<BlobMeta>,
        mut judged_below: u64,
        spare: &(dyn Fn(&Self, &BlobMeta, &Outside) -> bool + Sync),
        why: &Grounds<'_>,
        report: &mut GcReport,
    ) -> Result<Option<(u64, Vec<Digest>)>, RegistryError> {
        let mut attempts = 0;
        let index = loop {
            if going.is_empty() {
                return Ok(None);
            }
            attempts += 1;
            let event = BlobsDeleted {
                blobs: going
                    .iter()
                    .map(|m| DeletedBlob {
                        digest: m.sha256().to_string(),
                        size: m.size,
                        blake3: Some(m.digests.blake3.to_string()),
                        created_ms: Some(m.created_unix_ms),
                    })
                    .collect(),
                reason: why.reason.to_string(),
                policy: why.policy.clone(),
                grace_ms: why.grace_ms,
                by: why.by.to_string(),
            };
            let condition = nothing_new_keeps(judged_below);
            match self.registry.append_if(&event, Some(condition)).await {
                Ok((index, ..)) => break index,
                Err(RegistryError::Ledger(LedgerError::ConditionFailed { index, reason }))
                    if attempts < 8 =>
                {
                    tracing::info!(index, %reason, "another daemon appended meanwhile; judging the deletion again");
                    self.registry.follow().await?;
                    judged_below = self.registry.read().processed_below();
                    let outside = self.outside(&going).await?;
                    let before = going.len();
                    let mut judged = outside.iter();
                    going.retain(|meta| {
                        let outside = judged.next().expect("one judgement per blob");
                        !spare(self, meta, outside)
                    });
                    report.spared += (before - going.len()) as u64;
                }
                Err(err) => return Err(err),
            }
        };
        report.entries.push(index);
        report.count(going.iter().map(|m| (m.sha256(), m.size)));
        Ok(Some((index, going.iter().map(BlobMeta::sha256).collect())))
    }

    /// Claims `going` for deletion, keeping in it only the blobs claimed: those no daemon
    /// sharing the store acknowledged since `cutoff_ms` and no other collection is deleting.
    /// Within one daemon every blob is claimed (the exclusive gate the caller holds does it).
    async fn claim(&self, going: &mut Vec<BlobMeta>, cutoff_ms: u64) -> Result<(), RegistryError> {
        let digests: Vec<Digest> = going.iter().map(BlobMeta::sha256).collect();
        let claimed: std::collections::HashSet<Digest> = self
            .registry
            .store()
            .retention()
            .claim(&digests, cutoff_ms)
            .await?
            .into_iter()
            .collect();
        going.retain(|meta| claimed.contains(&meta.sha256()));
        Ok(())
    }

    /// Deletes one blob on an admin's word, recorded like a collection. Refused under a legal
    /// hold, and while anything else keeps it unless `force`.
    pub async fn delete(
        &self,
        who: &Principal,
        digest: &Digest,
        reason: &str,
        force: bool,
    ) -> Result<GcReport, RegistryError> {
        require_admin(who, "delete blobs")?;
        if reason.trim().is_empty() {
            return Err(invalid(
                "reason",
                "is required to delete a blob: say why (it is recorded in the ledger)",
            ));
        }
        let _running = self.running.lock().await;
        let store = self.registry.store().clone();
        // A blake3 digest is resolved first; the gate is by SHA-256.
        let sha256 = store
            .stat(digest)
            .await?
            .map_or(*digest, |meta| meta.sha256());
        let _exclusive = store.retention().exclusive(&[sha256]).await;
        let Some(meta) = store.stat(&sha256).await? else {
            return Err(RegistryError::NotFound(format!(
                "field digest: blob {digest} is not in custody"
            )));
        };
        let judged_below = self.registry.read().processed_below();
        let outside = self.outside(std::slice::from_ref(&meta)).await?;
        let keepers = self.keepers(&meta, &outside[0], Duration::ZERO, now_ms());
        if let Some(Keeper::Held { index, reason, .. }) =
            keepers.iter().find(|k| matches!(k, Keeper::Held { .. }))
        {
            return Err(RegistryError::FailedPrecondition(format!(
                "blob {digest} is under a legal hold (ledger entry {index}: {reason}); an admin must release it first"
            )));
        }
        if !force && !keepers.is_empty() {
            return Err(RegistryError::FailedPrecondition(format!(
                "blob {digest} is kept: {}; delete with force to remove it anyway",
                keepers
                    .iter()
                    .map(Keeper::describe)
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        let mut report = GcReport {
            examined: 1,
            ..GcReport::default()
        };
        // Rejudged if another daemon appended meanwhile: a legal hold always spares the blob,
        // anything else only without force.
        let spare = move |collector: &Self, meta: &BlobMeta, outside: &Outside| {
            let keepers = collector.keepers(meta, outside, Duration::ZERO, now_ms());
            keepers.iter().any(|k| matches!(k, Keeper::Held { .. }))
                || (!force && !keepers.is_empty())
        };
        let by = who.label();
        let why = Grounds {
            reason,
            policy: "admin delete".into(),
            grace_ms: 0,
            by: &by,
        };
        // An admin's deletion does not wait out acknowledgements (it is deliberate), but it does
        // not race a collection on another daemon deleting the same blob.
        let mut going = vec![meta];
        self.claim(&mut going, u64::MAX).await?;
        if going.is_empty() {
            return Err(RegistryError::FailedPrecondition(format!(
                "blob {digest} is being deleted by garbage collection on another daemon"
            )));
        }
        self.record_and_delete(going, judged_below, &spare, &why, &mut report)
            .await?;
        Ok(report)
    }
}

/// Finishes the deletions `registry` recorded but did not carry out (a crash between the entry
/// and the deletes): each blob still in custody as the copy the entry deleted goes; a copy
/// uploaded again after the deletion (committed later than the deleted copy) stays. Returns how
/// many were deleted now.
pub async fn finish_recorded(registry: &Registry) -> Result<u64, RegistryError> {
    let deletions = registry.write().retention_mut().take_deletions();
    let store = registry.store();
    let mut done = 0;
    for deletion in deletions {
        for (digest, created_by) in &deletion.copies {
            if let Some(meta) = store.stat(digest).await?
                && meta.created_unix_ms <= *created_by
                && store.delete(digest).await?
            {
                tracing::debug!(%digest, entry = deletion.index, "finished a recorded deletion");
                done += 1;
            }
        }
    }
    Ok(done)
}

/// What keeps a blob outside the ledger.
struct Outside {
    /// Its latest acknowledgement to a put, by any daemon sharing the store.
    acknowledged_ms: Option<u64>,
    /// The OCI repositories it is linked into.
    linked_in: Vec<String>,
}

/// A failure of the OCI front end's links as the registry's.
fn oci_failure(failure: crate::oci::OciFailure) -> RegistryError {
    match failure {
        crate::oci::OciFailure::Storage(err) => RegistryError::Storage(err),
        crate::oci::OciFailure::Registry(err) => err,
        other => RegistryError::Storage(custodian_storage::StorageError::Aborted(format!(
            "reading the OCI repository links: {other}"
        ))),
    }
}

/// Why blobs are deleted, as their `BlobsDeleted` entry says.
struct Grounds<'a> {
    reason: &'a str,
    policy: String,
    grace_ms: u64,
    by: &'a str,
}

/// The condition of a deletion on a shared ledger: no entry after `after` is of a kind that
/// may keep a blob. Kinds that never keep one (scans, badges, yanks, keys, pre-registrations,
/// OCI deletions, other deletions, and entries that are not the service's) pass.
fn nothing_new_keeps(after: u64) -> custodian_storage::ledger::Condition {
    use custodian_core::entry::EntryKind;
    custodian_storage::ledger::Condition {
        after,
        check: std::sync::Arc::new(|entry: &custodian_core::entry::Entry| match &entry.kind {
            EntryKind::BlobsDeleted
            | EntryKind::ScanRecorded
            | EntryKind::BadgeIssued
            | EntryKind::VersionYanked
            | EntryKind::KeyEvent
            | EntryKind::EvalPreregistered
            | EntryKind::OciDeleted
            | EntryKind::Other(_) => Ok(()),
            kind => Err(format!("a {kind} entry may keep the blobs")),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deletion on a shared ledger waits out every entry kind that may keep a blob, and only
    /// those.
    #[test]
    fn a_deletion_yields_to_every_entry_that_may_keep_a_blob() {
        use custodian_core::entry::{Entry, EntryKind, Value};
        let condition = nothing_new_keeps(0);
        let judge = |kind: EntryKind| {
            let entry = Entry::new(
                kind,
                custodian_core::merkle::Hash::ZERO,
                1,
                Value::Map(vec![]),
            )
            .expect("an entry");
            (condition.check)(&entry).is_ok()
        };
        for keeper in [
            EntryKind::PackagePublished,
            EntryKind::DataPackRegistered,
            EntryKind::OciManifestPut,
            EntryKind::BlobRetention,
            EntryKind::Sealed,
            EntryKind::RunAttested,
        ] {
            assert!(!judge(keeper.clone()), "{keeper} may keep a blob");
        }
        for harmless in [
            EntryKind::BlobsDeleted,
            EntryKind::ScanRecorded,
            EntryKind::BadgeIssued,
            EntryKind::VersionYanked,
            EntryKind::KeyEvent,
            EntryKind::EvalPreregistered,
            EntryKind::OciDeleted,
            EntryKind::Other("ScaleProbe".into()),
        ] {
            assert!(judge(harmless.clone()), "{harmless} keeps nothing");
        }
    }

    /// A full batch's entry stays under the size that would seal it.
    #[test]
    fn a_full_deletion_batch_is_never_sealed() {
        let event = BlobsDeleted {
            blobs: (0..DELETE_BATCH)
                .map(|i| DeletedBlob {
                    digest: Digest::of(custodian_core::Algorithm::Sha256, &i.to_le_bytes())
                        .to_string(),
                    size: u64::MAX,
                    blake3: Some(
                        Digest::of(custodian_core::Algorithm::Blake3, &i.to_le_bytes()).to_string(),
                    ),
                    created_ms: Some(u64::MAX),
                })
                .collect(),
            reason: "garbage collection".repeat(20),
            policy: "unreferenced, unpinned, not held, and neither uploaded nor acknowledged for 365days".into(),
            grace_ms: u64::MAX,
            by: "a-rather-long-token-label-for-an-operator".repeat(4),
        };
        let payload = custodian_core::registry::to_payload(&event).expect("payload");
        assert!(!custodian_core::seal::must_seal(&payload));
    }
}
