//! The OCI Distribution Specification v1.1's vocabulary, parsed strictly: repository names, tags,
//! digests, references, manifests (OCI image manifest and index, Docker v2 schema 2 manifest and
//! list) with their descriptors and `subject`, and the specification's error codes. This is
//! the ground the `/v2/` front end (issue 18) stands on; it does no I/O.
//!
//! Grammars, from the distribution-spec ("Pulling manifests") and the image-spec ("Digests",
//! "Descriptor"):
//!
//! ```text
//! name      [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
//! tag       [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
//! digest    algorithm ":" encoded; algorithm [a-z0-9]+([+._-][a-z0-9]+)*, encoded [a-zA-Z0-9=_-]+
//! ```
//!
//! Only `sha256` digests are accepted for content (64 lowercase hex digits): the algorithm every
//! client speaks and the one the custody store addresses by.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::digest::{Algorithm, Digest};

/// The longest repository name accepted (the spec lets registries limit it; 255 is what most do).
pub const MAX_NAME: usize = 255;
/// The largest manifest accepted, in bytes (the spec's suggested minimum is 4 MiB).
pub const MAX_MANIFEST: usize = 4 << 20;

/// The media types of manifests this registry stores and serves.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// An OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// A Docker v2 schema 2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// A Docker v2 schema 2 manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The distribution-spec's error codes (its "Error Codes" table), with the HTTP status each one
/// is answered with here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Blob unknown to registry (404).
    BlobUnknown,
    /// Blob upload is invalid (400).
    BlobUploadInvalid,
    /// Blob upload unknown to registry (404).
    BlobUploadUnknown,
    /// Provided digest did not match uploaded content (400).
    DigestInvalid,
    /// Manifest references a manifest or blob unknown to registry (404).
    ManifestBlobUnknown,
    /// Manifest invalid (400).
    ManifestInvalid,
    /// Manifest unknown to registry (404).
    ManifestUnknown,
    /// Invalid repository name (400).
    NameInvalid,
    /// Repository name not known to registry (404).
    NameUnknown,
    /// Provided length did not match content length (400).
    SizeInvalid,
    /// Authentication required (401).
    Unauthorized,
    /// Requested access to the resource is denied (403).
    Denied,
    /// The operation is unsupported (405).
    Unsupported,
    /// Too many requests (429).
    TooManyRequests,
}

impl ErrorCode {
    /// The code as the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
        }
    }

    /// The HTTP status the code is answered with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => 404,
            // A push that names what is not there is a bad request, as CNCF distribution answers.
            ErrorCode::ManifestBlobUnknown
            | ErrorCode::BlobUploadInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::SizeInvalid => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Denied => 403,
            ErrorCode::Unsupported => 405,
            ErrorCode::TooManyRequests => 429,
        }
    }

    /// The spec's error body: `{"errors": [{"code", "message"}]}`.
    pub fn body(self, message: &str) -> String {
        serde_json::json!({"errors": [{"code": self.as_str(), "message": message}]}).to_string()
    }
}

/// Input the OCI layer refuses: the spec's code and a sentence naming the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct OciError {
    /// The distribution-spec error code.
    pub code: ErrorCode,
    /// What was wrong, naming the value.
    pub message: String,
}

fn refuse(code: ErrorCode, message: String) -> OciError {
    OciError { code, message }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Checks one path component of a repository name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn component_ok(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__", or one or more "-".
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
    true
}

/// A repository name, e.g. `acme/pacman-builder`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Parses a repository name by the spec's grammar (`NAME_INVALID` otherwise).
    pub fn parse(text: &str) -> Result<Self, OciError> {
        if text.len() > MAX_NAME {
            return Err(refuse(
                ErrorCode::NameInvalid,
                format!(
                    "repository name is {} characters, over the {MAX_NAME} allowed",
                    text.len()
                ),
            ));
        }
        if text.is_empty() || !text.split('/').all(component_ok) {
            return Err(refuse(
                ErrorCode::NameInvalid,
                format!(
                    "invalid repository name {text:?}: lowercase letters and digits in /-separated components, joined within a component by '.', '_', '__' or dashes"
                ),
            ));
        }
        Ok(Name(text.to_string()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A tag, e.g. `0.2.1` or `latest`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(String);

impl Tag {
    /// Parses a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}` (`MANIFEST_INVALID` otherwise, as
    /// the reference registry answers a bad reference on a manifest path).
    pub fn parse(text: &str) -> Result<Self, OciError> {
        let bytes = text.as_bytes();
        let first_ok = bytes
            .first()
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
        let rest_ok = bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !first_ok || !rest_ok || bytes.len() > 128 {
            return Err(refuse(
                ErrorCode::ManifestInvalid,
                format!(
                    "invalid tag {text:?}: 1 to 128 of letters, digits, '_', '.', '-', not starting with '.' or '-'"
                ),
            ));
        }
        Ok(Tag(text.to_string()))
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Parses a content digest: the spec's digest grammar, and only `sha256` with 64 lowercase hex
/// digits is accepted (`DIGEST_INVALID` otherwise, naming why).
pub fn parse_digest(text: &str) -> Result<Digest, OciError> {
    let bad = |why: &str| {
        refuse(
            ErrorCode::DigestInvalid,
            format!("invalid digest {text:?}: {why}"),
        )
    };
    let Some((algorithm, encoded)) = text.split_once(':') else {
        return Err(bad("a digest is algorithm:encoded"));
    };
    let algorithm_ok = !algorithm.is_empty()
        && algorithm
            .split(['+', '.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(is_alnum));
    let encoded_ok = !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
    if !algorithm_ok || !encoded_ok {
        return Err(bad("it does not follow the digest grammar"));
    }
    if algorithm != "sha256" {
        return Err(bad("only sha256 digests are supported"));
    }
    if encoded.len() != 64
        || !encoded
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad("a sha256 digest is 64 lowercase hex digits"));
    }
    let digest: Digest = text
        .parse()
        .map_err(|_| bad("it does not parse as a sha256 digest"))?;
    debug_assert_eq!(digest.algorithm(), Algorithm::Sha256);
    Ok(digest)
}

/// What a manifest path names: a tag, or a manifest by its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    /// A tag.
    Tag(Tag),
    /// A manifest digest.
    Digest(Digest),
}

impl Reference {
    /// A reference is a digest when it contains `:`, a tag otherwise.
    pub fn parse(text: &str) -> Result<Self, OciError> {
        if text.contains(':') {
            parse_digest(text).map(Reference::Digest)
        } else {
            Tag::parse(text).map(Reference::Tag)
        }
    }
}

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The content's media type.
    pub media_type: String,
    /// The content's digest, as written.
    pub digest: String,
    /// The content's size in bytes.
    pub size: i64,
    /// The artifact type, for a manifest descriptor in an index or a referrer.
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Where a non-distributable layer can be fetched instead of from the registry.
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

impl Descriptor {
    /// True for a layer the registry need not hold: a non-distributable (foreign) media type,
    /// or one with `urls` to fetch it from elsewhere (image-spec, "Non-distributable layers").
    pub fn is_foreign(&self) -> bool {
        self.media_type.contains(".nondistributable.")
            || self.media_type.contains(".foreign.")
            || self.urls.as_ref().is_some_and(|urls| !urls.is_empty())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: i64,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    subject: Option<Descriptor>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// A checked manifest: its media type, what it references and what it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The media type it is stored and served under.
    pub media_type: String,
    /// The artifact type: `artifactType`, else the config's media type (image manifests).
    pub artifact_type: Option<String>,
    /// Blobs it references (config and layers), with their declared sizes: all must be in the
    /// repository.
    pub blobs: Vec<(Digest, u64)>,
    /// Non-distributable layers it references, which the registry need not hold.
    pub foreign: Vec<(Digest, u64)>,
    /// Manifests it references (an index's entries).
    pub manifests: Vec<(Digest, u64)>,
    /// The manifest it refers to, if it has a `subject`.
    pub subject: Option<Digest>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
}

fn checked(descriptor: &Descriptor, what: &str) -> Result<(Digest, u64), OciError> {
    let invalid = |why: String| refuse(ErrorCode::ManifestInvalid, format!("{what}: {why}"));
    let digest = parse_digest(&descriptor.digest).map_err(|e| invalid(e.message))?;
    let size = u64::try_from(descriptor.size)
        .map_err(|_| invalid(format!("size {} is negative", descriptor.size)))?;
    if descriptor.media_type.is_empty() {
        return Err(invalid("mediaType is empty".into()));
    }
    Ok((digest, size))
}

impl Manifest {
    /// Parses a manifest pushed with `content_type`: JSON of schema version 2 whose `mediaType`
    /// (if present) equals the content type, one of the four manifest kinds, with well-formed
    /// descriptors (`MANIFEST_INVALID` otherwise, naming the field).
    pub fn parse(bytes: &[u8], content_type: &str) -> Result<Self, OciError> {
        let invalid = |why: String| refuse(ErrorCode::ManifestInvalid, why);
        if bytes.len() > MAX_MANIFEST {
            return Err(invalid(format!(
                "the manifest is {} bytes, over the {MAX_MANIFEST} allowed",
                bytes.len()
            )));
        }
        let raw: RawManifest = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("the manifest is not valid JSON: {e}")))?;
        if raw.schema_version != 2 {
            return Err(invalid(format!(
                "schemaVersion is {}, not 2",
                raw.schema_version
            )));
        }
        let content_type = content_type.split(';').next().unwrap_or("").trim();
        let media_type = match (&raw.media_type, content_type) {
            (Some(declared), given) if !given.is_empty() && declared != given => {
                return Err(invalid(format!(
                    "mediaType {declared:?} differs from the Content-Type {given:?}"
                )));
            }
            (Some(declared), _) => declared.clone(),
            (None, given) => given.to_string(),
        };
        let is_index = matches!(media_type.as_str(), OCI_INDEX | DOCKER_LIST);
        let is_image = matches!(media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST);
        if !is_index && !is_image {
            return Err(invalid(format!(
                "unsupported manifest media type {media_type:?} (supported: {OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_LIST})"
            )));
        }
        let mut blobs = Vec::new();
        let mut foreign = Vec::new();
        let mut manifests = Vec::new();
        let mut artifact_type = raw.artifact_type.clone();
        if is_image {
            let config = raw
                .config
                .as_ref()
                .ok_or_else(|| invalid("an image manifest has a config".into()))?;
            blobs.push(checked(config, "config")?);
            if artifact_type.is_none() {
                artifact_type = Some(config.media_type.clone());
            }
            for (i, layer) in raw.layers.iter().flatten().enumerate() {
                let described = checked(layer, &format!("layers[{i}]"))?;
                if layer.is_foreign() {
                    foreign.push(described);
                } else {
                    blobs.push(described);
                }
            }
            if raw.manifests.is_some() {
                return Err(invalid("an image manifest has no manifests field".into()));
            }
        } else {
            let entries = raw
                .manifests
                .as_ref()
                .ok_or_else(|| invalid("an index has a manifests field".into()))?;
            for (i, entry) in entries.iter().enumerate() {
                manifests.push(checked(entry, &format!("manifests[{i}]"))?);
            }
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(invalid("an index has no config or layers".into()));
            }
        }
        let subject = match &raw.subject {
            Some(subject) => Some(checked(subject, "subject")?.0),
            None => None,
        };
        Ok(Manifest {
            media_type,
            artifact_type,
            blobs,
            foreign,
            manifests,
            subject,
            annotations: raw.annotations.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7";
    const LAYER: &str = "sha256:9834876dcfb05cb167a5c24953eba58c4ac89b1adf57f28f2f9d09af107ee8f0";

    /// The image manifest example of the OCI image-spec (manifest.md, "Example Image Manifest"),
    /// with a subject added as the distribution-spec's referrers example does.
    fn image_manifest() -> String {
        format!(
            r#"{{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "{CONFIG}", "size": 7023}},
  "layers": [
    {{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "{LAYER}", "size": 32654}}
  ],
  "subject": {{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "{CONFIG}", "size": 7682}},
  "annotations": {{"com.example.key1": "value1"}}
}}"#
        )
    }

    #[test]
    fn names_tags_digests_and_references_follow_the_spec_grammar() {
        for good in [
            "a",
            "acme/pacman-builder",
            "a.b_c__d---e/f0",
            "library/ubuntu",
        ] {
            assert!(Name::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "A",
            "acme/",
            "/acme",
            "a..b",
            "a___b",
            "a-",
            "-a",
            "a/b/",
            "a b",
            "a:b",
            &"a".repeat(256),
        ] {
            assert_eq!(
                Name::parse(bad).map_err(|e| e.code),
                Err(ErrorCode::NameInvalid),
                "{bad:?}"
            );
        }
        for good in ["latest", "0.2.1", "_x", "v1.0-rc_2", &"a".repeat(128)] {
            assert!(Tag::parse(good).is_ok(), "{good}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(Reference::parse(CONFIG), Ok(Reference::Digest(_))));
        assert!(matches!(Reference::parse("latest"), Ok(Reference::Tag(_))));
        for (bad, why) in [
            ("sha256:abc", "64 lowercase"),
            (
                &CONFIG.to_uppercase().replace("SHA256", "sha256"),
                "64 lowercase",
            ),
            (&CONFIG.replace("sha256", "sha512"), "only sha256"),
            (&CONFIG.replace("sha256", "blake3"), "only sha256"),
            ("sha256", "algorithm:encoded"),
            ("SHA256:00", "grammar"),
            ("sha256:a/b", "grammar"),
        ] {
            let err = parse_digest(bad).expect_err(bad);
            assert_eq!(err.code, ErrorCode::DigestInvalid);
            assert!(err.message.contains(why), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn manifests_are_parsed_strictly_with_what_they_reference() {
        let manifest = Manifest::parse(image_manifest().as_bytes(), OCI_MANIFEST).expect("parse");
        assert_eq!(manifest.media_type, OCI_MANIFEST);
        assert_eq!(
            manifest.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert_eq!(manifest.blobs.len(), 2);
        assert_eq!(manifest.blobs[1], (parse_digest(LAYER).expect("d"), 32654));
        assert_eq!(manifest.subject, Some(parse_digest(CONFIG).expect("d")));
        assert_eq!(manifest.annotations["com.example.key1"], "value1");
        // The Content-Type may carry parameters, and may be left to the mediaType.
        assert!(
            Manifest::parse(
                image_manifest().as_bytes(),
                &format!("{OCI_MANIFEST}; charset=utf-8")
            )
            .is_ok()
        );
        assert!(Manifest::parse(image_manifest().as_bytes(), "").is_ok());

        let index = format!(
            r#"{{"schemaVersion": 2, "mediaType": "{OCI_INDEX}", "manifests": [{{"mediaType": "{OCI_MANIFEST}", "digest": "{CONFIG}", "size": 7143, "platform": {{"architecture": "amd64", "os": "linux"}}}}]}}"#
        );
        let index = Manifest::parse(index.as_bytes(), OCI_INDEX).expect("index");
        assert_eq!((index.blobs.len(), index.manifests.len()), (0, 1));

        let image = image_manifest();
        let other_layer = image.replace(LAYER, "sha256:1234");
        let no_config = image.replace(r#""config""#, r#""konfig""#);
        let negative = image.replace("32654", "-1");
        for (bytes, content_type, needle) in [
            (image.clone(), OCI_INDEX, "differs from the Content-Type"),
            ("not json".to_string(), OCI_MANIFEST, "not valid JSON"),
            (
                image.replace(r#""schemaVersion": 2"#, r#""schemaVersion": 1"#),
                OCI_MANIFEST,
                "schemaVersion",
            ),
            (other_layer, OCI_MANIFEST, "layers[0]"),
            (no_config, OCI_MANIFEST, "has a config"),
            (negative, OCI_MANIFEST, "negative"),
            (
                image.replace(OCI_MANIFEST, "application/x-other"),
                "application/x-other",
                "unsupported manifest media type",
            ),
            (
                format!("{}{}", " ".repeat(MAX_MANIFEST), image),
                OCI_MANIFEST,
                "over the",
            ),
        ] {
            let err = Manifest::parse(bytes.as_bytes(), content_type).expect_err(needle);
            assert_eq!(err.code, ErrorCode::ManifestInvalid);
            assert!(err.message.contains(needle), "{needle}: {}", err.message);
        }
    }

    #[test]
    fn error_bodies_and_statuses_are_the_specs() {
        assert_eq!(
            ErrorCode::ManifestBlobUnknown.body("layer sha256:… is not in this repository"),
            r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"layer sha256:… is not in this repository"}]}"#
        );
        assert_eq!(ErrorCode::BlobUnknown.status(), 404);
        assert_eq!(ErrorCode::DigestInvalid.status(), 400);
        assert_eq!(ErrorCode::Unauthorized.status(), 401);
        assert_eq!(ErrorCode::TooManyRequests.as_str(), "TOOMANYREQUESTS");
    }
}
