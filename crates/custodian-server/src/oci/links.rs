//! Which blobs belong to which OCI repository. A blob pushed (or mounted) into a repository is
//! linked to it; reads through `/v2/<name>/blobs/` serve only linked blobs, so a digest known
//! from elsewhere opens nothing. The bytes themselves are the custody store's, one copy per
//! digest whatever repositories link it.
//!
//! Links are not ledger events (blob uploads are not provenance; the manifests that use them
//! are), but they must survive a crash like the blob they name: each is one line appended to
//! `DATA_DIR/oci/links` and synced before the upload is acknowledged. The file is compacted at
//! start-up. Daemons sharing a database keep the links there instead (one row each, see
//! [`custodian_storage::SharedState`]), so a blob pushed through one daemon is in the
//! repository through every other at once.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use std::sync::Arc;

use custodian_core::Digest;
use custodian_storage::SharedState;

use super::{OciFailure, lock, read_lock, write_lock};

/// The durable set of (repository, blob) links: in the data directory, or in the database
/// daemons share.
pub enum Links {
    /// One daemon's link file.
    File(Arc<FileLinks>),
    /// The shared database's rows.
    Shared(Arc<dyn SharedState>),
}

impl Links {
    /// The links in `shared` when given, else in the link file in `dir` (opened and compacted).
    pub fn open(dir: &Path, shared: Option<Arc<dyn SharedState>>) -> Result<Self, OciFailure> {
        Ok(match shared {
            Some(shared) => Links::Shared(shared),
            None => Links::File(Arc::new(FileLinks::open(dir)?)),
        })
    }

    /// Runs a call to the shared database on the blocking pool.
    async fn shared<T: Send + 'static>(
        shared: &Arc<dyn SharedState>,
        call: impl FnOnce(&dyn SharedState) -> custodian_storage::Result<T> + Send + 'static,
    ) -> Result<T, OciFailure> {
        let shared = shared.clone();
        Ok(tokio::task::spawn_blocking(move || call(&*shared))
            .await
            .map_err(|e| OciFailure::Internal(e.to_string()))??)
    }

    /// Links `digest` (a SHA-256) to `repo`, durably.
    pub async fn add(&self, repo: &str, digest: &Digest) -> Result<(), OciFailure> {
        match self {
            Links::File(file) => file.add(repo, digest).await,
            Links::Shared(shared) => {
                let (repo, digest) = (repo.to_string(), *digest);
                Self::shared(shared, move |s| s.link(&repo, &digest))
                    .await
                    .map(|_| ())
            }
        }
    }

    /// Unlinks `digest` from `repo`; returns whether it was linked.
    pub async fn remove(&self, repo: &str, digest: &Digest) -> Result<bool, OciFailure> {
        match self {
            Links::File(file) => file.remove(repo, digest).await,
            Links::Shared(shared) => {
                let (repo, digest) = (repo.to_string(), *digest);
                Self::shared(shared, move |s| s.unlink(&repo, &digest)).await
            }
        }
    }

    /// True if `digest` is linked to `repo`.
    pub async fn contains(&self, repo: &str, digest: &Digest) -> Result<bool, OciFailure> {
        match self {
            Links::File(file) => Ok(file.contains(repo, digest)),
            Links::Shared(shared) => {
                let (repo, digest) = (repo.to_string(), *digest);
                Self::shared(shared, move |s| s.linked(&repo, &digest)).await
            }
        }
    }

    /// True if any blob is linked to `repo`.
    pub async fn has_repo(&self, repo: &str) -> Result<bool, OciFailure> {
        match self {
            Links::File(file) => Ok(file.has_repo(repo)),
            Links::Shared(shared) => {
                let repo = repo.to_string();
                Self::shared(shared, move |s| s.repo_has_links(&repo)).await
            }
        }
    }

    /// The repositories `digest` is linked to, sorted.
    pub async fn repos_with(&self, digest: &Digest) -> Result<Vec<String>, OciFailure> {
        match self {
            Links::File(file) => Ok(file.repos_with(digest)),
            Links::Shared(shared) => {
                let digest = *digest;
                Self::shared(shared, move |s| s.repos_linking(&digest)).await
            }
        }
    }
}

/// The links of one daemon, in its data directory and in memory.
pub struct FileLinks {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    sets: RwLock<HashMap<String, HashSet<[u8; 32]>>>,
}

fn io(path: &Path, source: std::io::Error) -> OciFailure {
    OciFailure::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl FileLinks {
    /// Opens (or creates) the link file in `dir`, compacting it.
    pub fn open(dir: &Path) -> Result<Self, OciFailure> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join("links");
        let mut sets: HashMap<String, HashSet<[u8; 32]>> = HashMap::new();
        if let Ok(file) = std::fs::File::open(&path) {
            for line in std::io::BufReader::new(file).lines() {
                let line = line.map_err(|e| io(&path, e))?;
                // A torn last line (a crash mid-append) was never acknowledged: skip it.
                let Some((op, rest)) = line.split_once(' ') else {
                    continue;
                };
                let Some((repo, digest)) = rest.rsplit_once(' ') else {
                    continue;
                };
                let Ok(digest) = digest.parse::<Digest>() else {
                    continue;
                };
                match op {
                    "+" => {
                        sets.entry(repo.to_string())
                            .or_default()
                            .insert(*digest.bytes());
                    }
                    "-" => {
                        if let Some(set) = sets.get_mut(repo) {
                            set.remove(digest.bytes());
                        }
                    }
                    _ => {}
                }
            }
        }
        // Compaction: the current set, written aside and renamed over the old file.
        let tmp = dir.join("links.tmp");
        {
            let mut out =
                std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?);
            for (repo, set) in &sets {
                for bytes in set {
                    writeln!(out, "+ {repo} sha256:{}", hex::encode(bytes))
                        .map_err(|e| io(&tmp, e))?;
                }
            }
            let file = out.into_inner().map_err(|e| io(&tmp, e.into_error()))?;
            file.sync_all().map_err(|e| io(&tmp, e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        Ok(FileLinks {
            path,
            file: Mutex::new(file),
            sets: RwLock::new(sets),
        })
    }

    fn append(&self, line: String) -> Result<(), OciFailure> {
        let mut file = lock(&self.file);
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|e| io(&self.path, e))
    }

    /// Links `digest` (a SHA-256) to `repo`, durably.
    pub async fn add(self: &Arc<Self>, repo: &str, digest: &Digest) -> Result<(), OciFailure> {
        if self.contains(repo, digest) {
            return Ok(());
        }
        let this = self.clone();
        let line = format!("+ {repo} {digest}\n");
        tokio::task::spawn_blocking(move || this.append(line))
            .await
            .map_err(|e| OciFailure::Internal(e.to_string()))??;
        write_lock(&self.sets)
            .entry(repo.to_string())
            .or_default()
            .insert(*digest.bytes());
        Ok(())
    }

    /// Unlinks `digest` from `repo`; returns whether it was linked.
    pub async fn remove(self: &Arc<Self>, repo: &str, digest: &Digest) -> Result<bool, OciFailure> {
        if !self.contains(repo, digest) {
            return Ok(false);
        }
        let this = self.clone();
        let line = format!("- {repo} {digest}\n");
        tokio::task::spawn_blocking(move || this.append(line))
            .await
            .map_err(|e| OciFailure::Internal(e.to_string()))??;
        if let Some(set) = write_lock(&self.sets).get_mut(repo) {
            set.remove(digest.bytes());
        }
        Ok(true)
    }

    /// True if `digest` is linked to `repo`.
    pub fn contains(&self, repo: &str, digest: &Digest) -> bool {
        read_lock(&self.sets)
            .get(repo)
            .is_some_and(|set| set.contains(digest.bytes()))
    }

    /// True if any blob is linked to `repo`.
    pub fn has_repo(&self, repo: &str) -> bool {
        read_lock(&self.sets)
            .get(repo)
            .is_some_and(|set| !set.is_empty())
    }

    /// The repositories `digest` is linked to, sorted.
    pub fn repos_with(&self, digest: &Digest) -> Vec<String> {
        let mut repos: Vec<String> = read_lock(&self.sets)
            .iter()
            .filter(|(_, set)| set.contains(digest.bytes()))
            .map(|(repo, _)| repo.clone())
            .collect();
        repos.sort();
        repos
    }
}
