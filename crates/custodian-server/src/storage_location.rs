//! Where blobs are kept, as `serve --storage` and `scrub --storage` name it, parsed once.

use std::fmt;
use std::str::FromStr;

/// The storage setting that selects the embedded RocksDB backend.
pub const EMBEDDED_STORAGE: &str = "rocksdb";

/// Where the daemon keeps blobs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StorageLocation {
    /// The embedded RocksDB store under the data directory (the default).
    #[default]
    Embedded,
    /// An object store URL (`file:///abs/path`, `s3://bucket/prefix`, `az://container/prefix`,
    /// `memory://`), with its index in RocksDB under the data directory.
    Object(String),
}

/// A storage setting that is neither `rocksdb` nor a URL.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid storage setting {0:?}: expected \"rocksdb\" or a URL such as file:///var/lib/custodian/objects or s3://bucket/prefix"
)]
pub struct StorageLocationError(pub String);

impl FromStr for StorageLocation {
    type Err = StorageLocationError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value == EMBEDDED_STORAGE {
            return Ok(StorageLocation::Embedded);
        }
        // The object store crate checks the rest of the URL when the backend opens; a missing
        // scheme is the slip worth catching here, where the flag is named.
        match value.split_once("://") {
            Some((scheme, _)) if !scheme.is_empty() => Ok(StorageLocation::Object(value.into())),
            _ => Err(StorageLocationError(value.into())),
        }
    }
}

impl fmt::Display for StorageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageLocation::Embedded => f.write_str(EMBEDDED_STORAGE),
            StorageLocation::Object(url) => f.write_str(url),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rocksdb_and_urls_parse_and_print_back() {
        for text in [
            "rocksdb",
            "file:///var/lib/x",
            "s3://bucket/prefix",
            "az://container/prefix",
            "memory://",
        ] {
            let location: StorageLocation = text.parse().expect(text);
            assert_eq!(location.to_string(), text);
        }
        assert_eq!(
            "rocksdb".parse::<StorageLocation>().ok(),
            Some(StorageLocation::Embedded)
        );
    }

    #[test]
    fn anything_else_is_refused_naming_the_value() {
        for text in ["", "RocksDB", "/var/lib/x", "://x", "bucket/prefix"] {
            let err = text.parse::<StorageLocation>().expect_err(text).to_string();
            assert!(err.contains(&format!("{text:?}")), "{err}");
        }
    }
}
