//! The OCI Distribution front end's domain (`rest/oci.rs` is its HTTP face).
//!
//! Repositories hold blobs and manifests. Blobs are the custody store's (one copy per digest,
//! verified before visible, CRC-checked on read); a repository only links them ([`links`]).
//! Uploads are sessions of the shared resumable upload engine
//! ([`custodian_storage::uploads`]), owned by their repository. Every manifest push and every tag move or delete
//! is a ledger entry (`OciManifestPut`, `OciDeleted`) appended through the registry, and the
//! repositories are derived from those entries ([`index`]), so the log alone says what every
//! `name:tag` pointed at, and when, and who moved it.
//!
//! Access follows the registry's: tokens with scopes over namespaces (a namespace `@acme/`
//! covers the repository `acme/…` too), `publish` to push, `read` for private repositories. A
//! repository is private when a `serve --oci-private` namespace covers it; to a caller who may not
//! read it, a private repository answers exactly as an absent one.

pub mod index;
pub mod links;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use custodian_core::oci::{ErrorCode, Manifest, OciError, Reference};
use custodian_core::registry::{OciDeleted, OciManifestPut};
use custodian_core::{Algorithm, Digest};
use custodian_storage::{BlobMeta, Expectation, StorageError};

use crate::auth::{Principal, Scope};
use crate::registry::{Registry, RegistryError};
use custodian_storage::uploads::{UploadError, UploadSessions};
use index::{ManifestInfo, TagState};
use links::Links;

/// The artifact type of the ledger receipt Custodian serves as a referrer of each manifest.
pub const RECEIPT_ARTIFACT_TYPE: &str = "application/vnd.custodian.receipt.v1+json";
/// The media type of the empty config of artifacts Custodian makes (image-spec's empty descriptor).
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// Why an OCI request failed.
#[derive(Debug, thiserror::Error)]
pub enum OciFailure {
    /// Refused with a distribution-spec error code.
    #[error("{}", .0.message)]
    Refused(#[from] OciError),
    /// A token is needed (401 with a challenge).
    #[error("{0}")]
    Unauthenticated(String),
    /// The token does not allow it (403 `DENIED`).
    #[error("{0}")]
    Denied(String),
    /// The registry (and so the ledger) failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The custody store failed or refused the bytes.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The upload staging area failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A bug or an unexpected condition.
    #[error("{0}")]
    Internal(String),
}

/// A chunk that does not start where the committed bytes end (the client answers 416).
#[derive(Debug)]
pub struct OutOfOrder {
    /// The bytes committed so far.
    pub committed: u64,
}

/// The owner of a repository's upload sessions in the shared engine: a session started in one
/// repository is unknown in every other.
fn upload_owner(repo: &str) -> String {
    format!("oci:{repo}")
}

impl From<UploadError> for OciFailure {
    fn from(err: UploadError) -> Self {
        match err {
            UploadError::Unknown { .. } => refused(
                ErrorCode::BlobUploadUnknown,
                format!("{err}; in this repository"),
            ),
            UploadError::Io { path, source } => OciFailure::Io { path, source },
            UploadError::Storage(e) => OciFailure::Storage(e),
            other => refused(ErrorCode::BlobUploadInvalid, other.to_string()),
        }
    }
}

fn refused(code: ErrorCode, message: String) -> OciFailure {
    OciFailure::Refused(OciError { code, message })
}

/// How the OCI front end is configured.
#[derive(Clone, Debug, Default)]
pub struct OciConfig {
    /// Repository-name prefixes whose repositories are private (`*` for all).
    pub private: Vec<String>,
}

/// A manifest as served: its bytes, media type and digest.
pub struct ServedManifest {
    /// The manifest's bytes, exactly as pushed.
    pub bytes: Bytes,
    /// Its media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
}

/// What a manifest push did.
pub struct Pushed {
    /// The manifest's digest.
    pub digest: Digest,
    /// Its subject, for the `OCI-Subject` header.
    pub subject: Option<Digest>,
}

/// One referrer, as the referrers API lists it.
#[derive(Clone, Debug)]
pub struct Referrer {
    /// The referring manifest's digest.
    pub digest: Digest,
    /// Its media type, size, artifact type and annotations.
    pub info: ManifestInfo,
}

/// The OCI front end.
pub struct Oci {
    registry: Arc<Registry>,
    links: Arc<Links>,
    uploads: Arc<UploadSessions>,
    config: OciConfig,
    /// Serializes manifest pushes and deletes, so each entry's `previous` is what the tag really
    /// pointed at.
    writes: tokio::sync::Mutex<()>,
    /// Manifests Custodian made (package versions, receipts, envelopes, badge bundles), by
    /// repository and digest, with the package version they belong to. They are made again
    /// after a restart (the same bytes, so the same digests), so memory is enough.
    made: std::sync::Mutex<HashMap<MadeKey, (ManifestInfo, Owner)>>,
    /// Blobs of those manifests, readable in their repository by whoever may read the owner.
    made_blobs: std::sync::Mutex<HashMap<MadeKey, Owner>>,
    /// The manifest made for each (repository, package version).
    packages: std::sync::Mutex<HashMap<(String, String), (Digest, ManifestInfo)>>,
    /// The receipt referrer made for each (repository, subject, ledger index), so that every
    /// listing names the same one.
    receipts: std::sync::Mutex<HashMap<ReceiptKey, Referrer>>,
}

/// The package version a made artifact belongs to (`None`: an OCI repository's own).
type Owner = Option<(String, String)>;

/// What an artifact Custodian makes is: where, of which type, about what, for whom.
struct Made<'a> {
    repo: &'a str,
    artifact_type: &'a str,
    subject: Option<(&'a Digest, &'a ManifestInfo)>,
    annotations: BTreeMap<String, String>,
    owner: Owner,
}

/// A made manifest's key: repository and digest.
type MadeKey = (String, [u8; 32]);

/// One layer of an artifact Custodian makes.
struct Layer {
    digest: Digest,
    size: u64,
    media_type: String,
    annotations: BTreeMap<String, String>,
}

/// The artifact type of a published Behavior Package version served as an OCI artifact.
pub const PACKAGE_ARTIFACT_TYPE: &str = "application/vnd.custodian.package.v1";
/// The media type of each file layer of a package artifact.
pub const PACKAGE_FILE_MEDIA_TYPE: &str = "application/vnd.custodian.package.file.v1";
/// The artifact type (and layer media type) of a package's signed DSSE envelope.
pub const ENVELOPE_ARTIFACT_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The artifact type of a package version's badge bundle.
pub const BADGE_ARTIFACT_TYPE: &str = "application/vnd.custodian.badge-bundle.v1+json";
/// The annotation naming the ledger entry an artifact is about.
pub const LEDGER_INDEX: &str = "vnd.custodian.ledger.index";
/// The layer annotation carrying a file's path (what `oras pull` names the file).
pub const TITLE: &str = "org.opencontainers.image.title";

/// A package version as an OCI tag: semver's `+` is not allowed in tags, so it becomes `_`
/// (as Helm does).
pub fn version_tag(version: &str) -> String {
    version.replace('+', "_")
}

/// A receipt referrer's key: repository, subject, and the ledger index of the subject's push.
type ReceiptKey = (String, [u8; 32], u64);

/// The guard of a mutex, poisoned or not: every critical section here is one map or file
/// operation that leaves the state whole if it panics, so a poisoned lock is still usable.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A read guard, poisoned or not (see [`lock`]).
pub(crate) fn read_lock<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A write guard, poisoned or not (see [`lock`]).
pub(crate) fn write_lock<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The principal's label as the ledger records a pusher.
fn pusher(who: &Principal) -> String {
    who.label()
}

impl Oci {
    /// Opens the front end over the registry, keeping links and upload sessions in `dir`.
    pub fn open(
        registry: Arc<Registry>,
        dir: &std::path::Path,
        config: OciConfig,
        uploads: Arc<UploadSessions>,
    ) -> Result<Self, OciFailure> {
        // Daemons sharing the store's index share the links too.
        let shared = registry.store().shared_state();
        Ok(Oci {
            links: Arc::new(Links::open(dir, shared)?),
            registry,
            uploads,
            config,
            writes: tokio::sync::Mutex::new(()),
            made: Default::default(),
            made_blobs: Default::default(),
            packages: Default::default(),
            receipts: Default::default(),
        })
    }

    /// The repositories a blob is linked into (pushed, mounted or referenced by a manifest):
    /// each of them keeps it.
    pub async fn linked_in(&self, digest: &Digest) -> Result<Vec<String>, OciFailure> {
        self.links.repos_with(digest).await
    }

    /// True if the repository is private.
    pub fn is_private(&self, repo: &str) -> bool {
        custodian_core::registry::namespace_covers(&self.config.private, repo)
    }

    /// The published package whose repository `repo` is (`@scope/name` is served as
    /// `scope/name`), if any.
    pub fn package_name(&self, repo: &str) -> Option<String> {
        let state = self.registry.read();
        [repo.to_string(), format!("@{repo}")]
            .into_iter()
            .find(|name| state.package(name).is_some())
    }

    fn owner_visible(&self, who: &Principal, owner: &Owner) -> bool {
        match owner {
            None => true,
            Some((name, version)) => self.registry.get(who, name, version).is_ok(),
        }
    }

    /// Makes the artifacts of every version of package `name` that `who` may see, so that
    /// their manifests can be found by digest (after a restart, before anyone asked by tag).
    async fn warm_package(
        &self,
        who: &Principal,
        repo: &str,
        name: &str,
    ) -> Result<(), OciFailure> {
        let versions: Vec<String> = self
            .registry
            .list(who, name)
            .map(|records| records.iter().map(|r| r.event.version.clone()).collect())
            .unwrap_or_default();
        for version in versions {
            self.package_manifest(who, repo, name, &version).await?;
        }
        Ok(())
    }

    fn made_here(&self, repo: &str, digest: &Digest) -> bool {
        lock(&self.made).contains_key(&(repo.to_string(), *digest.bytes()))
    }

    /// For a digest in a package repository that nothing made yet, makes the package's
    /// artifacts first.
    async fn warm_for(
        &self,
        who: &Principal,
        repo: &str,
        digest: &Digest,
    ) -> Result<(), OciFailure> {
        if self.made_here(repo, digest) {
            return Ok(());
        }
        if let Some(name) = self.package_name(repo) {
            self.warm_package(who, repo, &name).await?;
        }
        Ok(())
    }

    fn refuse_package_repo(&self, repo: &str) -> Result<(), OciFailure> {
        match self.package_name(repo) {
            Some(name) => Err(OciFailure::Denied(format!(
                "{repo:?} is the repository of the Behavior Package {name}: its versions are published with `custodian publish`, not pushed"
            ))),
            None => Ok(()),
        }
    }

    fn allows(who: &Principal, scope: Scope, repo: &str) -> bool {
        who.allows(scope, repo) || who.allows(scope, &format!("@{repo}"))
    }

    /// True if `who` may read `repo`.
    pub fn can_read(&self, who: &Principal, repo: &str) -> bool {
        !self.is_private(repo) || Self::allows(who, Scope::Read, repo)
    }

    /// Refuses `who` unless it may push to `repo`.
    pub fn require_push(&self, who: &Principal, repo: &str) -> Result<(), OciFailure> {
        if Self::allows(who, Scope::Publish, repo) {
            return Ok(());
        }
        Err(match who {
            Principal::Anonymous => OciFailure::Unauthenticated(format!(
                "pushing to {repo:?} needs a token with the publish scope for it, as a Bearer token or the password of Basic authentication"
            )),
            Principal::Token(_) => OciFailure::Denied(format!(
                "{} may not push to {repo:?}: it lacks the publish scope for a namespace covering that name",
                who.label()
            )),
        })
    }

    /// True if the repository exists for `who`: readable, and holding anything.
    pub async fn repo_exists(&self, who: &Principal, repo: &str) -> Result<bool, OciFailure> {
        if !self.can_read(who, repo) {
            return Ok(false);
        }
        let has_manifests = self
            .registry
            .read()
            .oci()
            .repo(repo)
            .is_some_and(|r| !r.manifests.is_empty() || !r.tags.is_empty());
        Ok(has_manifests || self.links.has_repo(repo).await?)
    }

    /// The blob `digest` in `repo`, if `who` may read it there.
    pub async fn blob(
        &self,
        who: &Principal,
        repo: &str,
        digest: &Digest,
    ) -> Result<BlobMeta, OciFailure> {
        let unknown = || {
            refused(
                ErrorCode::BlobUnknown,
                format!("blob {digest} is not in repository {repo:?}"),
            )
        };
        let made_blob = |oci: &Self| {
            lock(&oci.made_blobs)
                .get(&(repo.to_string(), *digest.bytes()))
                .cloned()
        };
        let mut made = made_blob(self);
        let linked = self.links.contains(repo, digest).await?;
        if made.is_none()
            && !linked
            && let Some(name) = self.package_name(repo)
        {
            self.warm_package(who, repo, &name).await?;
            made = made_blob(self);
        }
        let readable = match made {
            _ if linked => self.can_read(who, repo),
            Some(owner @ Some(_)) => self.owner_visible(who, &owner),
            Some(None) => self.can_read(who, repo),
            None => false,
        };
        if !readable {
            return Err(unknown());
        }
        self.registry
            .store()
            .stat(digest)
            .await?
            .ok_or_else(unknown)
    }

    /// Unlinks a blob from a repository (its bytes stay in custody for whatever else uses them).
    pub async fn delete_blob(
        &self,
        who: &Principal,
        repo: &str,
        digest: &Digest,
    ) -> Result<(), OciFailure> {
        self.require_push(who, repo)?;
        self.refuse_package_repo(repo)?;
        let made = lock(&self.made_blobs)
            .remove(&(repo.to_string(), *digest.bytes()))
            .is_some();
        if self.links.remove(repo, digest).await? || made {
            Ok(())
        } else {
            Err(refused(
                ErrorCode::BlobUnknown,
                format!("blob {digest} is not in repository {repo:?}"),
            ))
        }
    }

    /// Mounts `digest` from repository `from` (or, without one, from any repository `who` may
    /// read that holds it) into `repo`. `Ok(false)` if it cannot, and the caller starts an
    /// upload instead, as the spec says.
    pub async fn mount(
        &self,
        who: &Principal,
        repo: &str,
        digest: &Digest,
        from: Option<&str>,
    ) -> Result<bool, OciFailure> {
        self.require_push(who, repo)?;
        let sources = match from {
            Some(from) => vec![from.to_string()],
            None => self.links.repos_with(digest).await?,
        };
        let mut readable = false;
        for source in &sources {
            if self.can_read(who, source) && self.links.contains(source, digest).await? {
                readable = true;
                break;
            }
        }
        if !readable || self.registry.store().stat(digest).await?.is_none() {
            return Ok(false);
        }
        self.links.add(repo, digest).await?;
        Ok(true)
    }

    /// Puts a whole blob sent in one request (`POST ?digest=`), verified against `digest`.
    pub async fn put_blob<S, E>(
        &self,
        who: &Principal,
        repo: &str,
        digest: &Digest,
        size: Option<u64>,
        body: S,
    ) -> Result<(), OciFailure>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures::StreamExt as _;
        self.require_push(who, repo)?;
        let mut writer = self
            .registry
            .store()
            .begin_put(Expectation {
                digest: Some(*digest),
                size,
            })
            .await?;
        let mut body = body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                refused(
                    ErrorCode::BlobUploadInvalid,
                    format!("the upload's body ended early: {e}"),
                )
            })?;
            writer.write(chunk).await?;
        }
        writer.commit().await?;
        self.links.add(repo, digest).await
    }

    /// Starts an upload session in `repo`.
    pub async fn start_upload(&self, who: &Principal, repo: &str) -> Result<String, OciFailure> {
        self.require_push(who, repo)?;
        let started = self
            .uploads
            .start(&upload_owner(repo), Expectation::default(), BTreeMap::new())
            .await?;
        Ok(started.id)
    }

    /// The bytes committed in an upload session.
    pub async fn upload_status(
        &self,
        who: &Principal,
        repo: &str,
        id: &str,
    ) -> Result<u64, OciFailure> {
        self.require_push(who, repo)?;
        Ok(self
            .uploads
            .status(&upload_owner(repo), id)
            .await?
            .committed)
    }

    /// Appends a chunk to an upload session (see [`UploadSessions::append`]); a chunk that does
    /// not start where the committed bytes end is `Ok(Err(OutOfOrder))`.
    pub async fn append_upload<S, E>(
        &self,
        who: &Principal,
        repo: &str,
        id: &str,
        start: Option<u64>,
        body: S,
    ) -> Result<Result<u64, OutOfOrder>, OciFailure>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.require_push(who, repo)?;
        match self
            .uploads
            .append(&upload_owner(repo), id, start, body)
            .await
        {
            Ok(info) => Ok(Ok(info.committed)),
            Err(UploadError::OffsetMismatch { committed, .. }) => Ok(Err(OutOfOrder { committed })),
            Err(err) => Err(err.into()),
        }
    }

    /// Completes an upload session: its bytes must hash to `digest`, else nothing is kept.
    pub async fn finish_upload(
        &self,
        who: &Principal,
        repo: &str,
        id: &str,
        digest: &Digest,
    ) -> Result<(), OciFailure> {
        self.require_push(who, repo)?;
        self.uploads
            .finish(
                &upload_owner(repo),
                id,
                Expectation {
                    digest: Some(*digest),
                    size: None,
                },
            )
            .await?;
        self.links.add(repo, digest).await
    }

    /// Cancels an upload session.
    pub async fn cancel_upload(
        &self,
        who: &Principal,
        repo: &str,
        id: &str,
    ) -> Result<(), OciFailure> {
        self.require_push(who, repo)?;
        Ok(self.uploads.cancel(&upload_owner(repo), id).await?)
    }

    fn resolve(&self, repo: &str, reference: &Reference) -> Option<(Digest, ManifestInfo, Owner)> {
        let made = |digest: &Digest| {
            lock(&self.made)
                .get(&(repo.to_string(), *digest.bytes()))
                .cloned()
        };
        let state = self.registry.read();
        let found = state.oci().repo(repo);
        match reference {
            Reference::Tag(tag) => {
                let r = found?;
                let digest = *r.tags.get(tag.as_str())?;
                let info = r.manifests.get(digest.bytes())?.clone();
                Some((digest, info, None))
            }
            Reference::Digest(digest) => found
                .and_then(|r| r.manifests.get(digest.bytes()).cloned())
                .map(|info| (info, None))
                .or_else(|| made(digest))
                .map(|(info, owner)| (*digest, info, owner)),
        }
    }

    /// The manifest `reference` names in `repo`, for `who`.
    pub async fn manifest(
        &self,
        who: &Principal,
        repo: &str,
        reference: &Reference,
    ) -> Result<ServedManifest, OciFailure> {
        let unknown = || {
            refused(
                ErrorCode::ManifestUnknown,
                format!("manifest {} is not in repository {repo:?}", show(reference)),
            )
        };
        if let (Some(name), Reference::Tag(tag)) = (self.package_name(repo), reference) {
            let version = tag.as_str().replace('_', "+");
            let (digest, info) = self
                .package_manifest(who, repo, &name, &version)
                .await?
                .ok_or_else(unknown)?;
            let bytes = crate::registry::read_all(self.registry.store(), &digest).await?;
            return Ok(ServedManifest {
                bytes: Bytes::from(bytes),
                media_type: info.media_type,
                digest,
            });
        }
        if let Reference::Digest(digest) = reference {
            self.warm_for(who, repo, digest).await?;
        }
        let (digest, info, owner) = self.resolve(repo, reference).ok_or_else(unknown)?;
        let visible = match owner {
            None => self.can_read(who, repo),
            owner => self.owner_visible(who, &owner),
        };
        if !visible {
            return Err(unknown());
        }
        let bytes = crate::registry::read_all(self.registry.store(), &digest).await?;
        Ok(ServedManifest {
            bytes: Bytes::from(bytes),
            media_type: info.media_type,
            digest,
        })
    }

    /// Checks and stores a manifest pushed to `repo` under `reference`, and appends its ledger
    /// entry.
    pub async fn put_manifest(
        &self,
        who: &Principal,
        repo: &str,
        reference: &Reference,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<Pushed, OciFailure> {
        self.require_push(who, repo)?;
        self.refuse_package_repo(repo)?;
        let manifest = Manifest::parse(&bytes, content_type)?;
        let digest = Digest::of(Algorithm::Sha256, &bytes);
        if let Reference::Digest(named) = reference
            && *named != digest
        {
            return Err(refused(
                ErrorCode::DigestInvalid,
                format!("the manifest's sha256 is {digest}, not the {named} it was pushed as"),
            ));
        }
        for (blob, size) in &manifest.blobs {
            let meta = if self.links.contains(repo, blob).await? {
                self.registry.store().stat(blob).await?
            } else {
                None
            };
            match meta {
                Some(meta) if meta.size == *size => {}
                Some(meta) => {
                    return Err(refused(
                        ErrorCode::ManifestInvalid,
                        format!(
                            "blob {blob} is {} bytes, but the manifest says {size}",
                            meta.size
                        ),
                    ));
                }
                None => {
                    return Err(refused(
                        ErrorCode::ManifestBlobUnknown,
                        format!("blob {blob} is not in repository {repo:?}: push it first"),
                    ));
                }
            }
        }
        {
            let state = self.registry.read();
            let existing = state.oci().repo(repo);
            for (child, size) in &manifest.manifests {
                match existing.and_then(|r| r.manifests.get(child.bytes())) {
                    Some(info) if info.size == *size => {}
                    Some(info) => {
                        return Err(refused(
                            ErrorCode::ManifestInvalid,
                            format!(
                                "manifest {child} is {} bytes, but the index says {size}",
                                info.size
                            ),
                        ));
                    }
                    None => {
                        return Err(refused(
                            ErrorCode::ManifestBlobUnknown,
                            format!(
                                "manifest {child} is not in repository {repo:?}: push it first"
                            ),
                        ));
                    }
                }
            }
        }
        // The bytes are in custody, verified and durable, before the log names them.
        self.registry
            .store()
            .put_bytes(
                Expectation {
                    digest: Some(digest),
                    size: Some(bytes.len() as u64),
                },
                bytes.clone(),
            )
            .await?;
        let tag = match reference {
            Reference::Tag(tag) => Some(tag.as_str().to_string()),
            Reference::Digest(_) => None,
        };
        let _writing = self.writes.lock().await;
        let (previous, unchanged) = {
            let state = self.registry.read();
            let r = state.oci().repo(repo);
            let held = r.is_some_and(|r| r.manifests.contains_key(digest.bytes()));
            let previous = tag
                .as_ref()
                .and_then(|t| r.and_then(|r| r.tags.get(t)).copied());
            let unchanged = held && (tag.is_none() || previous == Some(digest));
            (previous, unchanged)
        };
        if !unchanged {
            let event = OciManifestPut {
                name: repo.to_string(),
                tag,
                digest: digest.to_string(),
                media_type: manifest.media_type.clone(),
                size: bytes.len() as u64,
                artifact_type: manifest.artifact_type.clone(),
                subject: manifest.subject.map(|s| s.to_string()),
                annotations: manifest.annotations.clone(),
                previous: previous.map(|p| p.to_string()),
                pusher: pusher(who),
                private: self.is_private(repo),
            };
            self.registry.append(&event).await?;
        }
        Ok(Pushed {
            digest,
            subject: manifest.subject,
        })
    }

    /// Deletes a tag, or a manifest with every tag on it, appending the ledger entry.
    pub async fn delete_manifest(
        &self,
        who: &Principal,
        repo: &str,
        reference: &Reference,
    ) -> Result<(), OciFailure> {
        self.require_push(who, repo)?;
        self.refuse_package_repo(repo)?;
        let _writing = self.writes.lock().await;
        let target = {
            let state = self.registry.read();
            let r = state.oci().repo(repo);
            match reference {
                Reference::Tag(tag) => r.and_then(|r| r.tags.get(tag.as_str())).copied(),
                Reference::Digest(d) => r
                    .filter(|r| r.manifests.contains_key(d.bytes()))
                    .map(|_| *d),
            }
        };
        let Some(digest) = target else {
            return Err(refused(
                ErrorCode::ManifestUnknown,
                format!("manifest {} is not in repository {repo:?}", show(reference)),
            ));
        };
        let event = OciDeleted {
            name: repo.to_string(),
            tag: match reference {
                Reference::Tag(tag) => Some(tag.as_str().to_string()),
                Reference::Digest(_) => None,
            },
            digest: digest.to_string(),
            pusher: pusher(who),
            private: self.is_private(repo),
        };
        self.registry.append(&event).await?;
        Ok(())
    }

    /// The repository's tags in order, after `last`, at most `n`; and whether more follow.
    pub async fn tags(
        &self,
        who: &Principal,
        repo: &str,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<(Vec<String>, bool), OciFailure> {
        if let Some(name) = self.package_name(repo) {
            let mut versions: Vec<String> = self
                .registry
                .list(who, &name)
                .map(|records| {
                    records
                        .iter()
                        .map(|r| version_tag(&r.event.version))
                        .collect()
                })
                .unwrap_or_default();
            if versions.is_empty() {
                return Err(refused(
                    ErrorCode::NameUnknown,
                    format!("repository {repo:?} is not known to this registry"),
                ));
            }
            versions.sort();
            versions.retain(|t| last.is_none_or(|l| t.as_str() > l));
            let limit = n.unwrap_or(usize::MAX);
            let more = versions.len() > limit;
            versions.truncate(limit);
            return Ok((versions, more));
        }
        if !self.repo_exists(who, repo).await? {
            return Err(refused(
                ErrorCode::NameUnknown,
                format!("repository {repo:?} is not known to this registry"),
            ));
        }
        let state = self.registry.read();
        let all: Vec<String> = state
            .oci()
            .repo(repo)
            .map(|r| {
                r.tags
                    .keys()
                    .filter(|t| last.is_none_or(|l| t.as_str() > l))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let limit = n.unwrap_or(usize::MAX);
        let more = all.len() > limit;
        Ok((all.into_iter().take(limit).collect(), more))
    }

    /// The manifests in `repo` whose subject is `subject`, filtered by artifact type, with the
    /// ledger receipt of the subject's push among them.
    pub async fn referrers(
        &self,
        who: &Principal,
        repo: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, OciFailure> {
        self.warm_for(who, repo, subject).await?;
        let made = lock(&self.made)
            .get(&(repo.to_string(), *subject.bytes()))
            .cloned();
        if let Some((info, Some((name, version)))) = made {
            let mut list = match self.registry.get(who, &name, &version) {
                Ok(record) if info.artifact_type.as_deref() == Some(PACKAGE_ARTIFACT_TYPE) => {
                    self.package_referrers(who, repo, subject, &info, &record)
                        .await?
                }
                _ => Vec::new(),
            };
            if let Some(wanted) = artifact_type {
                list.retain(|r| r.info.artifact_type.as_deref() == Some(wanted));
            }
            return Ok(list);
        }
        if !self.can_read(who, repo) {
            return Ok(Vec::new());
        }
        let (mut list, pushed_at) = {
            let state = self.registry.read();
            let Some(r) = state.oci().repo(repo) else {
                return Ok(Vec::new());
            };
            let list: Vec<Referrer> = r
                .referrers
                .get(subject.bytes())
                .into_iter()
                .flatten()
                .filter_map(|d| {
                    let info = r.manifests.get(d)?.clone();
                    Some(Referrer {
                        digest: Digest::sha256(*d),
                        info,
                    })
                })
                .collect();
            (list, r.manifests.get(subject.bytes()).cloned())
        };
        if let Some(info) = pushed_at {
            list.push(
                self.receipt_referrer(repo, subject, &info, info.index, None)
                    .await?,
            );
        }
        if let Some(wanted) = artifact_type {
            list.retain(|r| r.info.artifact_type.as_deref() == Some(wanted));
        }
        Ok(list)
    }

    /// The receipt of the ledger entry at `index` as an OCI artifact whose subject is
    /// `subject`, made once and kept.
    async fn receipt_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        subject_info: &ManifestInfo,
        index: u64,
        owner: Owner,
    ) -> Result<Referrer, OciFailure> {
        let key = (repo.to_string(), *subject.bytes(), index);
        if let Some(made) = self.attached_already(&key) {
            return Ok(made);
        }
        let receipt = self
            .registry
            .ledger()
            .receipt(index)
            .map_err(RegistryError::from)?
            .to_json();
        let mut annotations = BTreeMap::new();
        annotations.insert(LEDGER_INDEX.to_string(), index.to_string());
        let made = Made {
            repo,
            artifact_type: RECEIPT_ARTIFACT_TYPE,
            subject: Some((subject, subject_info)),
            annotations,
            owner,
        };
        self.attached(key, made, Bytes::from(receipt)).await
    }

    /// The referrers of a package version's artifact: its signed DSSE envelope, the receipt of
    /// its publication, and its badge bundle once a badge was issued.
    async fn package_referrers(
        &self,
        who: &Principal,
        repo: &str,
        subject: &Digest,
        info: &ManifestInfo,
        record: &crate::registry::VersionRecord,
    ) -> Result<Vec<Referrer>, OciFailure> {
        let owner: Owner = Some((record.event.name.clone(), record.event.version.clone()));
        let mut annotations = BTreeMap::new();
        annotations.insert(LEDGER_INDEX.to_string(), record.index.to_string());
        // Keys for the envelope and the badge: the subject with a marker index no ledger entry
        // has, so they never collide with receipt keys.
        let envelope = self
            .attached(
                (repo.to_string(), *subject.bytes(), u64::MAX),
                Made {
                    repo,
                    artifact_type: ENVELOPE_ARTIFACT_TYPE,
                    subject: Some((subject, info)),
                    annotations,
                    owner: owner.clone(),
                },
                Bytes::from(record.event.envelope.clone()),
            )
            .await?;
        let receipt = self
            .receipt_referrer(repo, subject, info, record.index, owner.clone())
            .await?;
        let mut list = vec![envelope, receipt];
        let issued = self
            .registry
            .read()
            .evidence(&record.event.name, &record.event.version)
            .and_then(|e| e.badge.as_ref().map(|(index, _)| *index));
        if let Some(issued) = issued {
            let key = (repo.to_string(), *subject.bytes(), u64::MAX - 1 - issued);
            let badge = match self.attached_already(&key) {
                Some(made) => made,
                None => {
                    let (badge, bundle) = self
                        .registry
                        .badge(who, &record.event.name, &record.event.version)
                        .await?;
                    let mut annotations = BTreeMap::new();
                    annotations.insert(
                        "vnd.custodian.badge.state".to_string(),
                        badge.state.as_str().to_string(),
                    );
                    annotations.insert(LEDGER_INDEX.to_string(), issued.to_string());
                    let made = Made {
                        repo,
                        artifact_type: BADGE_ARTIFACT_TYPE,
                        subject: Some((subject, info)),
                        annotations,
                        owner,
                    };
                    self.attached(key, made, Bytes::from(bundle.to_json()))
                        .await?
                }
            };
            list.push(badge);
        }
        Ok(list)
    }

    /// The manifest of a published package version as an OCI artifact: an empty config and one
    /// layer per file (in custody already), its path as the title annotation; the package's
    /// name, version, manifest digest, root and ledger entry as annotations. `None` if `who`
    /// cannot see that version.
    async fn package_manifest(
        &self,
        who: &Principal,
        repo: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<(Digest, ManifestInfo)>, OciFailure> {
        let record = match self.registry.get(who, name, version) {
            Ok(record) => record,
            Err(RegistryError::NotFound(_) | RegistryError::InvalidArgument(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let key = (repo.to_string(), record.event.version.clone());
        if let Some(made) = lock(&self.packages).get(&key) {
            return Ok(Some(made.clone()));
        }
        let mut layers: Vec<Layer> = record
            .files
            .iter()
            .map(|file| Layer {
                digest: file.sha256,
                size: file.size,
                media_type: PACKAGE_FILE_MEDIA_TYPE.to_string(),
                annotations: BTreeMap::from([(TITLE.to_string(), file.path.clone())]),
            })
            .collect();
        // The signed envelope goes along where `custodian pack build` writes it, so a folder
        // `oras pull` fills is one `custodian pack verify` checks as it is.
        let envelope = Bytes::from(record.event.envelope.clone() + "\n");
        layers.push(Layer {
            digest: Digest::of(Algorithm::Sha256, &envelope),
            size: envelope.len() as u64,
            media_type: ENVELOPE_ARTIFACT_TYPE.to_string(),
            annotations: BTreeMap::from([(
                TITLE.to_string(),
                custodian_core::package::ENVELOPE_FILE.to_string(),
            )]),
        });
        let event = &record.event;
        let annotations = BTreeMap::from([
            (
                "org.opencontainers.image.title".to_string(),
                event.name.clone(),
            ),
            (
                "org.opencontainers.image.version".to_string(),
                event.version.clone(),
            ),
            ("vnd.custodian.package.name".to_string(), event.name.clone()),
            (
                "vnd.custodian.package.version".to_string(),
                event.version.clone(),
            ),
            (
                "vnd.custodian.package.type".to_string(),
                event.package_type.clone(),
            ),
            (
                "vnd.custodian.package.manifest".to_string(),
                event.manifest.clone(),
            ),
            ("vnd.custodian.package.root".to_string(), event.root.clone()),
            (LEDGER_INDEX.to_string(), record.index.to_string()),
        ]);
        let (digest, mut info) = self
            .make_artifact(
                Made {
                    repo,
                    artifact_type: PACKAGE_ARTIFACT_TYPE,
                    subject: None,
                    annotations,
                    owner: Some((event.name.clone(), event.version.clone())),
                },
                layers,
                vec![envelope],
            )
            .await?;
        info.index = record.index;
        lock(&self.packages).insert(key, (digest, info.clone()));
        Ok(Some((digest, info)))
    }

    /// Makes an OCI artifact manifest (empty config, the given layers) readable in `repo` by
    /// digest, storing `new_blobs` in custody first; returns its digest and listing. The JSON is
    /// built the same way every time, so the same inputs always give the same digest.
    async fn make_artifact(
        &self,
        made: Made<'_>,
        layers: Vec<Layer>,
        new_blobs: Vec<Bytes>,
    ) -> Result<(Digest, ManifestInfo), OciFailure> {
        let Made {
            repo,
            artifact_type,
            subject,
            annotations,
            owner,
        } = made;
        let store = self.registry.store();
        let empty = Bytes::from_static(b"{}");
        let empty_digest = Digest::of(Algorithm::Sha256, &empty);
        let layer_json: Vec<serde_json::Value> = layers
            .iter()
            .map(|layer| {
                let mut descriptor = serde_json::json!({
                    "mediaType": layer.media_type,
                    "digest": layer.digest.to_string(),
                    "size": layer.size,
                });
                if !layer.annotations.is_empty() {
                    descriptor["annotations"] = serde_json::json!(layer.annotations);
                }
                descriptor
            })
            .collect();
        let mut manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": custodian_core::oci::OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {
                "mediaType": EMPTY_CONFIG,
                "digest": empty_digest.to_string(),
                "size": 2,
                "data": "e30=",
            },
            "layers": layer_json,
        });
        if let Some((d, info)) = subject {
            manifest["subject"] = serde_json::json!({
                "mediaType": info.media_type,
                "digest": d.to_string(),
                "size": info.size,
            });
        }
        if !annotations.is_empty() {
            manifest["annotations"] = serde_json::json!(annotations);
        }
        let manifest = Bytes::from(manifest.to_string());
        let digest = Digest::of(Algorithm::Sha256, &manifest);
        let mut blobs = new_blobs;
        blobs.push(empty);
        blobs.push(manifest.clone());
        let items = blobs
            .iter()
            .map(|b| {
                (
                    Expectation {
                        digest: Some(Digest::of(Algorithm::Sha256, b)),
                        size: Some(b.len() as u64),
                    },
                    b.clone(),
                )
            })
            .collect();
        for outcome in store.put_many(items).await {
            outcome?;
        }
        let info = ManifestInfo {
            media_type: custodian_core::oci::OCI_MANIFEST.to_string(),
            size: manifest.len() as u64,
            artifact_type: Some(artifact_type.to_string()),
            subject: subject.map(|(d, _)| *d),
            annotations,
            index: 0,
        };
        {
            let mut made_blobs = lock(&self.made_blobs);
            made_blobs.insert((repo.to_string(), *empty_digest.bytes()), owner.clone());
            for layer in &layers {
                made_blobs.insert((repo.to_string(), *layer.digest.bytes()), owner.clone());
            }
        }
        lock(&self.made).insert((repo.to_string(), *digest.bytes()), (info.clone(), owner));
        Ok((digest, info))
    }

    fn attached_already(&self, key: &ReceiptKey) -> Option<Referrer> {
        lock(&self.receipts).get(key).cloned()
    }

    /// An artifact with one layer of new bytes, its subject `subject` in `repo`, made once per
    /// `key` and kept (receipts, envelopes, badge bundles).
    async fn attached(
        &self,
        key: ReceiptKey,
        made: Made<'_>,
        bytes: Bytes,
    ) -> Result<Referrer, OciFailure> {
        if let Some(made) = self.attached_already(&key) {
            return Ok(made);
        }
        let layer = Layer {
            digest: Digest::of(Algorithm::Sha256, &bytes),
            size: bytes.len() as u64,
            media_type: made.artifact_type.to_string(),
            annotations: BTreeMap::new(),
        };
        let (digest, info) = self.make_artifact(made, vec![layer], vec![bytes]).await?;
        let referrer = Referrer { digest, info };
        lock(&self.receipts).insert(key, referrer.clone());
        Ok(referrer)
    }

    /// Every state a tag has had, oldest first, each with the receipt of its ledger entry.
    pub fn history(
        &self,
        who: &Principal,
        repo: &str,
        tag: &str,
    ) -> Result<Vec<(TagState, String)>, OciFailure> {
        let states: Vec<TagState> = if self.can_read(who, repo) {
            self.registry
                .read()
                .oci()
                .repo(repo)
                .and_then(|r| r.history.get(tag))
                .cloned()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if states.is_empty() {
            return Err(refused(
                ErrorCode::ManifestUnknown,
                format!("tag {tag:?} has never been pushed to repository {repo:?}"),
            ));
        }
        let ledger = self.registry.ledger();
        states
            .into_iter()
            .map(|s| {
                let receipt = ledger.receipt(s.index).map_err(RegistryError::from)?;
                Ok((s, receipt.to_json()))
            })
            .collect()
    }
}

fn show(reference: &Reference) -> String {
    match reference {
        Reference::Tag(tag) => tag.as_str().to_string(),
        Reference::Digest(d) => d.to_string(),
    }
}
