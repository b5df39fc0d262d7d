//! The OCI repositories as the ledger says they are: manifests, tags, referrers and each tag's
//! history, derived only from `OciManifestPut` and `OciDeleted` entries (part of the registry
//! [`crate::registry::index::Index`], so one replay rebuilds both).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use custodian_core::Digest;
use custodian_core::registry::{OciDeleted, OciManifestPut};

/// One manifest in a repository.
#[derive(Clone, Debug)]
pub struct ManifestInfo {
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its artifact type, if any.
    pub artifact_type: Option<String>,
    /// The manifest it refers to, if any.
    pub subject: Option<Digest>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// The ledger index of the push that put it here.
    pub index: u64,
}

/// One state of a tag: what it pointed at from a ledger entry on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagState {
    /// The entry that set this state.
    pub index: u64,
    /// The entry's integration time, Unix milliseconds.
    pub time_ms: u64,
    /// The manifest the tag pointed at; `None` once deleted.
    pub digest: Option<Digest>,
    /// Who pushed or deleted it.
    pub pusher: String,
}

/// One repository.
#[derive(Default, Debug)]
pub struct Repo {
    /// Whether the repository is private (as its latest event says).
    pub private: bool,
    /// Tag → manifest.
    pub tags: BTreeMap<String, Digest>,
    /// The manifests it holds.
    pub manifests: HashMap<[u8; 32], ManifestInfo>,
    /// Subject → the manifests that refer to it.
    pub referrers: HashMap<[u8; 32], BTreeSet<[u8; 32]>>,
    /// Tag → every state it has had, oldest first.
    pub history: BTreeMap<String, Vec<TagState>>,
}

/// Every OCI repository.
#[derive(Default, Debug)]
pub struct OciIndex {
    repos: BTreeMap<String, Repo>,
}

fn digest(text: &str) -> Result<Digest, String> {
    text.parse::<Digest>()
        .map_err(|e| format!("digest {text:?}: {e}"))
}

impl OciIndex {
    /// The repository `name`, if anything was ever pushed to it.
    pub fn repo(&self, name: &str) -> Option<&Repo> {
        self.repos.get(name)
    }

    /// Every manifest some repository holds now.
    pub fn manifests(&self) -> impl Iterator<Item = Digest> + '_ {
        self.repos
            .values()
            .flat_map(|repo| repo.manifests.keys())
            .map(|bytes| Digest::sha256(*bytes))
    }

    /// The repositories that hold the manifest `digest`.
    pub fn repos_with_manifest(&self, digest: &Digest) -> Vec<String> {
        self.repos
            .iter()
            .filter(|(_, repo)| repo.manifests.contains_key(digest.bytes()))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Folds in a manifest push.
    pub fn apply_put(
        &mut self,
        index: u64,
        time_ms: u64,
        event: &OciManifestPut,
    ) -> Result<(), String> {
        let manifest = digest(&event.digest)?;
        let subject = event.subject.as_deref().map(digest).transpose()?;
        let repo = self.repos.entry(event.name.clone()).or_default();
        repo.private = event.private;
        if let Some(subject) = &subject {
            repo.referrers
                .entry(*subject.bytes())
                .or_default()
                .insert(*manifest.bytes());
        }
        repo.manifests.insert(
            *manifest.bytes(),
            ManifestInfo {
                media_type: event.media_type.clone(),
                size: event.size,
                artifact_type: event.artifact_type.clone(),
                subject,
                annotations: event.annotations.clone(),
                index,
            },
        );
        if let Some(tag) = &event.tag {
            repo.tags.insert(tag.clone(), manifest);
            repo.history.entry(tag.clone()).or_default().push(TagState {
                index,
                time_ms,
                digest: Some(manifest),
                pusher: event.pusher.clone(),
            });
        }
        Ok(())
    }

    /// Folds in a deletion: of one tag, or of a manifest with every tag on it.
    pub fn apply_delete(
        &mut self,
        index: u64,
        time_ms: u64,
        event: &OciDeleted,
    ) -> Result<(), String> {
        let target = digest(&event.digest)?;
        let Some(repo) = self.repos.get_mut(&event.name) else {
            return Ok(());
        };
        repo.private = event.private;
        let mut gone = Vec::new();
        match &event.tag {
            Some(tag) => {
                repo.tags.remove(tag);
                gone.push(tag.clone());
            }
            None => {
                if let Some(info) = repo.manifests.remove(target.bytes())
                    && let Some(subject) = info.subject
                    && let Some(set) = repo.referrers.get_mut(subject.bytes())
                {
                    set.remove(target.bytes());
                }
                let tags: Vec<String> = repo
                    .tags
                    .iter()
                    .filter(|(_, d)| **d == target)
                    .map(|(t, _)| t.clone())
                    .collect();
                for tag in tags {
                    repo.tags.remove(&tag);
                    gone.push(tag);
                }
            }
        }
        for tag in gone {
            repo.history.entry(tag).or_default().push(TagState {
                index,
                time_ms,
                digest: None,
                pusher: event.pusher.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(name: &str, tag: Option<&str>, d: &Digest, subject: Option<&Digest>) -> OciManifestPut {
        OciManifestPut {
            name: name.into(),
            tag: tag.map(String::from),
            digest: d.to_string(),
            media_type: custodian_core::oci::OCI_MANIFEST.into(),
            size: 10,
            artifact_type: None,
            subject: subject.map(|s| s.to_string()),
            annotations: BTreeMap::new(),
            previous: None,
            pusher: "token t (ci)".into(),
            private: false,
        }
    }

    #[test]
    fn tags_move_are_deleted_and_keep_their_history() {
        let a = Digest::of(custodian_core::Algorithm::Sha256, b"a");
        let b = Digest::of(custodian_core::Algorithm::Sha256, b"b");
        let mut index = OciIndex::default();
        index
            .apply_put(1, 100, &put("r", Some("v1"), &a, None))
            .unwrap();
        index
            .apply_put(2, 200, &put("r", Some("v1"), &b, Some(&a)))
            .unwrap();
        let repo = index.repo("r").unwrap();
        assert_eq!(repo.tags["v1"], b);
        assert!(repo.referrers[a.bytes()].contains(b.bytes()));
        index
            .apply_delete(
                3,
                300,
                &OciDeleted {
                    name: "r".into(),
                    tag: None,
                    digest: b.to_string(),
                    pusher: "p".into(),
                    private: false,
                },
            )
            .unwrap();
        let repo = index.repo("r").unwrap();
        assert!(repo.tags.is_empty(), "deleting a manifest deletes its tags");
        assert!(repo.referrers[a.bytes()].is_empty());
        let states: Vec<Option<Digest>> = repo.history["v1"].iter().map(|s| s.digest).collect();
        assert_eq!(states, vec![Some(a), Some(b), None]);
    }
}
