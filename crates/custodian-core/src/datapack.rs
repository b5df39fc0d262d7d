//! Data packs (seed 001): the dataset, schema, eval examples and citations bundled with a package
//! version, either **hosted** (bytes in Custodian's custody) or **external** (the publisher keeps
//! custody at a URI and Custodian records where, how to access it and what it should hash to).

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Where an external data pack lives.
pub const SOURCE_TYPES: [&str; 6] = ["s3", "r2", "gcs", "github", "url", "private_api"];
/// How a consumer gets access to an external data pack.
pub const ACCESS_POLICIES: [&str; 4] = ["signed_url", "oauth", "api_key", "user_managed"];
/// Who may fetch a hosted data pack's bytes.
pub const VISIBILITIES: [&str; 3] = ["inherit", "public", "private"];

/// The fields of a data pack declaration (the manifest's `data_pack:` section and the body of
/// `PUT …/data-pack/manifest`), in the seed's order.
pub const FIELDS: [&str; 10] = [
    "mode",
    "source_type",
    "uri",
    "checksum",
    "checksum_algorithm",
    "access_policy",
    "license",
    "version",
    "provenance",
    "visibility",
];
/// The fields of a data pack's `provenance`.
pub const PROVENANCE_FIELDS: [&str; 3] = ["schema_uri", "citations", "eval_set_uri"];

/// Provenance of an external data pack.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Provenance {
    /// The dataset's schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_uri: Option<String>,
    /// Sources the data cites.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub citations: Vec<String>,
    /// The eval set built from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_set_uri: Option<String>,
}

/// A data pack declaration: the manifest's `data_pack:` section, and the body of
/// `PUT …/data-pack/manifest`. Which fields apply depends on `mode`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct DataPackSpec {
    /// `external` or `hosted`.
    #[serde(default)]
    pub mode: String,
    /// External: `s3`, `r2`, `gcs`, `github`, `url` or `private_api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_type: Option<String>,
    /// External: where the data is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// External: the digest the data should have, `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// External: the checksum's algorithm (`sha256` or `blake3`), if `checksum` is bare hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_algorithm: Option<String>,
    /// External: `signed_url`, `oauth`, `api_key` or `user_managed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<String>,
    /// The data's license.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// The data artifact's own logical version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// External: schema, citations and eval set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    /// Hosted: `inherit` (the default), `public` or `private`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<String>,
}

impl DataPackSpec {
    /// Every problem with the declaration, as `(field, message)`; empty when it is valid.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bad = |field: &str, message: String| out.push((field.to_string(), message));
        let one_of = |value: &str, allowed: &[&str]| allowed.contains(&value);
        match self.mode.as_str() {
            "external" => {
                match self.source_type.as_deref() {
                    None => bad(
                        "source_type",
                        format!(
                            "required for an external data pack; one of {}",
                            SOURCE_TYPES.join(", ")
                        ),
                    ),
                    Some(t) if !one_of(t, &SOURCE_TYPES) => bad(
                        "source_type",
                        format!("{t:?} is not one of {}", SOURCE_TYPES.join(", ")),
                    ),
                    Some(_) => {}
                }
                match self.uri.as_deref() {
                    None | Some("") => bad("uri", "required for an external data pack".into()),
                    Some(uri) => {
                        if let Err(e) = check_uri(uri, self.source_type.as_deref()) {
                            bad("uri", e);
                        }
                    }
                }
                match self.access_policy.as_deref() {
                    None => bad(
                        "access_policy",
                        format!(
                            "required for an external data pack; one of {}",
                            ACCESS_POLICIES.join(", ")
                        ),
                    ),
                    Some(p) if !one_of(p, &ACCESS_POLICIES) => bad(
                        "access_policy",
                        format!("{p:?} is not one of {}", ACCESS_POLICIES.join(", ")),
                    ),
                    Some(_) => {}
                }
                if let Some(checksum) = &self.checksum
                    && let Some(Err(e)) = self.checksum_digest()
                {
                    bad("checksum", format!("{checksum:?}: {e}"));
                }
                if self.visibility.is_some() {
                    bad("visibility", "applies to hosted data packs only; an external pack's access is its access_policy".into());
                }
            }
            "hosted" => {
                if let Some(checksum) = &self.checksum
                    && let Some(Err(e)) = self.checksum_digest()
                {
                    bad("checksum", format!("{checksum:?}: {e}"));
                }
                if let Some(v) = self.visibility.as_deref()
                    && !one_of(v, &VISIBILITIES)
                {
                    bad(
                        "visibility",
                        format!("{v:?} is not one of {}", VISIBILITIES.join(", ")),
                    );
                }
                for (field, set) in [
                    ("source_type", self.source_type.is_some()),
                    ("uri", self.uri.is_some()),
                    ("access_policy", self.access_policy.is_some()),
                ] {
                    if set {
                        bad(field, "applies to external data packs only; hosted bytes are uploaded with POST …/data-pack/hosted".into());
                    }
                }
            }
            "" => bad("mode", "required: external or hosted".into()),
            other => bad(
                "mode",
                format!("{other:?} is not a mode; expected external or hosted"),
            ),
        }
        if self.license.as_deref().is_none_or(|l| l.trim().is_empty()) {
            bad(
                "license",
                "required: the data's license (an SPDX identifier such as CC-BY-4.0)".into(),
            );
        }
        out
    }

    /// Parses the body of `PUT …/data-pack/manifest`: YAML or JSON (JSON is YAML), either the
    /// declaration itself or the seed's `data_pack:` wrapper around it. Unknown fields are
    /// errors that name the field (with a did-you-mean), never silently dropped.
    pub fn parse_document(bytes: &[u8]) -> Result<DataPackSpec, String> {
        let text =
            std::str::from_utf8(bytes).map_err(|_| "the body is not UTF-8 text".to_string())?;
        let mut value: serde_json::Value = serde_norway::from_str(text)
            .map_err(|e| format!("the body is neither YAML nor JSON: {e}"))?;
        let mut prefix = "";
        if let Some(inner) = value
            .as_object_mut()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.remove("data_pack"))
        {
            value = inner;
            prefix = "data_pack.";
        }
        let Some(object) = value.as_object() else {
            return Err(format!(
                "the body must be a mapping of data pack fields ({}), optionally under data_pack:",
                FIELDS.join(", ")
            ));
        };
        let mut unknown = Vec::new();
        for key in object.keys() {
            if !FIELDS.contains(&key.as_str()) {
                unknown.push(format!(
                    "field {prefix}{key}: is not a data pack field{}",
                    crate::manifest::did_you_mean(key, &FIELDS)
                        .map(|s| format!("; did you mean {s:?}?"))
                        .unwrap_or_else(|| format!(" ({})", FIELDS.join(", ")))
                ));
            }
        }
        if let Some(p) = object.get("provenance").and_then(|p| p.as_object()) {
            for key in p.keys() {
                if !PROVENANCE_FIELDS.contains(&key.as_str()) {
                    unknown.push(format!(
                        "field {prefix}provenance.{key}: is not a provenance field ({})",
                        PROVENANCE_FIELDS.join(", ")
                    ));
                }
            }
        }
        if !unknown.is_empty() {
            return Err(unknown.join("; "));
        }
        serde_path_to_error::deserialize(value)
            .map_err(|e| format!("field {prefix}{}: {}", e.path(), e.inner()))
    }

    /// The checksum as a digest, when one is given: `sha256:<hex>`, or bare hex with
    /// `checksum_algorithm`.
    pub fn checksum_digest(&self) -> Option<Result<Digest, String>> {
        let checksum = self.checksum.as_deref()?;
        let text = if checksum.contains(':') {
            if let Some(algorithm) = &self.checksum_algorithm
                && !checksum.starts_with(&format!("{algorithm}:"))
            {
                return Some(Err(format!(
                    "checksum_algorithm is {algorithm:?} but the checksum is {checksum:?}"
                )));
            }
            checksum.to_string()
        } else {
            format!(
                "{}:{checksum}",
                self.checksum_algorithm.as_deref().unwrap_or("sha256")
            )
        };
        Some(text.parse::<Digest>().map_err(|e| e.to_string()))
    }
}

/// Checks that a URI is absolute and its scheme fits the source type.
fn check_uri(uri: &str, source_type: Option<&str>) -> Result<(), String> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!("{uri:?} is not an absolute URI (scheme://…)"));
    };
    if rest.is_empty() || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{uri:?} is not a valid URI"));
    }
    let expected: &[&str] = match source_type {
        Some("s3") => &["s3"],
        Some("r2") => &["r2", "s3", "https"],
        Some("gcs") => &["gs", "gcs", "https"],
        Some("github") | Some("url") | Some("private_api") => &["https", "http"],
        _ => return Ok(()),
    };
    if expected.contains(&scheme) {
        Ok(())
    } else {
        Err(format!(
            "scheme {scheme:?} does not fit source_type {:?} (expected {})",
            source_type.unwrap_or_default(),
            expected.join(" or ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The external data pack of seed 001.
    const SEED: &str = r#"{
        "mode": "external",
        "source_type": "s3",
        "uri": "s3://my-org-bucket/prompt-packs/tax-2026/v3/dataset.parquet",
        "checksum": "sha256:8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc09aa8a",
        "checksum_algorithm": "sha256",
        "access_policy": "signed_url",
        "license": "CC-BY-4.0",
        "version": "2026.03.1",
        "provenance": {
            "schema_uri": "https://example.org/schemas/tax-v1.json",
            "citations": ["https://www.irs.gov/publications/p17"],
            "eval_set_uri": "https://example.org/evals/tax-pack-v3.jsonl"
        }
    }"#;

    #[test]
    fn the_seed_external_pack_is_valid() {
        let spec: DataPackSpec = serde_json::from_str(SEED).expect("parses");
        assert_eq!(spec.problems(), Vec::<(String, String)>::new());
        assert!(spec.checksum_digest().expect("present").is_ok());
    }

    /// The seed prints its checksum with 65 hex digits (an extraction slip); that must be an
    /// error naming the field, not a silently truncated digest.
    #[test]
    fn a_malformed_checksum_is_named() {
        let mut spec: DataPackSpec = serde_json::from_str(SEED).expect("parses");
        spec.checksum =
            Some("sha256:8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc09aa8ad".into());
        let problems = spec.problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "checksum");
    }

    /// The seed's YAML, as seed 001 prints it (under `data_pack:`), with its checksum's 65th
    /// digit removed.
    const SEED_YAML: &str = "data_pack:
  mode: external
  source_type: s3
  uri: s3://my-org-bucket/prompt-packs/tax-2026/v3/dataset.parquet
  checksum: sha256:8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc09aa8a
  checksum_algorithm: sha256
  access_policy: signed_url
  license: CC-BY-4.0
  version: \"2026.03.1\"
  provenance:
    schema_uri: https://example.org/schemas/tax-v1.json
    citations:
      - https://www.irs.gov/publications/p17
    eval_set_uri: https://example.org/evals/tax-pack-v3.jsonl
";

    #[test]
    fn documents_in_yaml_or_json_with_or_without_the_wrapper() {
        let from_json: DataPackSpec = serde_json::from_str(SEED).expect("parses");
        for body in [
            SEED.to_string(),
            SEED_YAML.to_string(),
            format!("{{\"data_pack\": {SEED}}}"),
        ] {
            let spec = DataPackSpec::parse_document(body.as_bytes()).expect("parses");
            assert_eq!(spec, from_json, "{body}");
        }
        let typo = SEED_YAML.replace("access_policy", "acces_policy");
        let err = DataPackSpec::parse_document(typo.as_bytes()).expect_err("unknown field");
        assert!(
            err.contains("data_pack.acces_policy")
                && err.contains("did you mean \"access_policy\""),
            "{err}"
        );
        let err = DataPackSpec::parse_document(b"- a\n- b\n").expect_err("not a mapping");
        assert!(err.contains("mapping"), "{err}");
    }

    #[test]
    fn each_missing_or_wrong_field_is_named() {
        let spec = DataPackSpec {
            mode: "external".into(),
            source_type: Some("ftp".into()),
            uri: Some("not a uri".into()),
            access_policy: Some("password".into()),
            ..Default::default()
        };
        let fields: Vec<String> = spec.problems().into_iter().map(|p| p.0).collect();
        assert_eq!(fields, ["source_type", "uri", "access_policy", "license"]);

        let spec = DataPackSpec {
            mode: "external".into(),
            source_type: Some("gcs".into()),
            uri: Some("s3://bucket/x".into()),
            access_policy: Some("oauth".into()),
            license: Some("MIT".into()),
            ..Default::default()
        };
        assert_eq!(spec.problems()[0].0, "uri");

        let spec = DataPackSpec {
            mode: "hosted".into(),
            visibility: Some("secret".into()),
            license: Some("MIT".into()),
            ..Default::default()
        };
        assert_eq!(spec.problems()[0].0, "visibility");
        assert_eq!(DataPackSpec::default().problems()[0].0, "mode");
    }
}
