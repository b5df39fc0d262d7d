//! Arguments several commands share: where a daemon's state and blobs are (`serve`, `scrub`),
//! `KEY=VALUE` options, and `NAME@VERSION`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Args;
use custodian_server::StorageLocation;

/// Where a daemon keeps its state and its blobs.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// Directory for the daemon's state (embedded store, object-store index, log key, tokens)
    #[arg(long, env = "CUSTODIAN_DATA_DIR", default_value = ".custodian")]
    pub data_dir: PathBuf,

    /// Blob storage: `rocksdb` (embedded) or an object store URL: file:///abs/path,
    /// s3://bucket/prefix (credentials and endpoint from AWS_* variables),
    /// az://container/prefix (Azure Blob Storage; account and key from AZURE_STORAGE_*
    /// variables), memory://
    #[arg(long, env = "CUSTODIAN_STORAGE", default_value = "rocksdb")]
    pub storage: StorageLocation,

    /// Object store option KEY=VALUE, e.g. aws_endpoint=http://127.0.0.1:9000 or
    /// azure_storage_endpoint=http://127.0.0.1:10000/devstoreaccount1 (repeatable)
    #[arg(long = "storage-option", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub storage_options: Vec<(String, String)>,

    /// Keep the ledger, and with an object store the blob index, in PostgreSQL instead of the
    /// embedded RocksDB: postgres://USER[:PASSWORD]@HOST:PORT/DATABASE (the schema is created
    /// on first use). Daemons sharing the database, the bucket and the log key serve one
    /// registry: one log, never a fork, each following the others' entries within a second
    #[arg(long, env = "CUSTODIAN_LEDGER", value_name = "URL", value_parser = parse_ledger_url)]
    pub ledger: Option<String>,
}

/// Parses a PostgreSQL URL for `--ledger`.
pub fn parse_ledger_url(text: &str) -> Result<String, String> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "postgres" | "postgresql") => Ok(text.to_string()),
        Ok(url) => Err(format!(
            "{:?} is not a PostgreSQL URL: expected postgres://USER@HOST:PORT/DATABASE (omit --ledger for the embedded ledger)",
            url.scheme()
        )),
        Err(e) => Err(format!(
            "not a URL ({e}): expected postgres://USER@HOST:PORT/DATABASE"
        )),
    }
}

/// Parses `KEY=VALUE`.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

/// A package version as the command line names it: `NAME@VERSION` (a scoped name keeps its
/// leading `@`: `@acme/bot@1.0.0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageSpec {
    /// The package name.
    pub name: String,
    /// The version, as written.
    pub version: String,
}

/// Text that is not `NAME@VERSION`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not NAME@VERSION (e.g. pacman-builder@0.2.1)")]
pub struct PackageSpecError(String);

impl FromStr for PackageSpec {
    type Err = PackageSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        match spec.rsplit_once('@') {
            Some((name, version)) if !name.is_empty() && !version.is_empty() => Ok(PackageSpec {
                name: name.to_string(),
                version: version.to_string(),
            }),
            _ => Err(PackageSpecError(spec.to_string())),
        }
    }
}

impl fmt::Display for PackageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Option<(String, String)> {
        text.parse::<PackageSpec>()
            .ok()
            .map(|s| (s.name, s.version))
    }

    #[test]
    fn specs_split_at_the_last_at_sign() {
        assert_eq!(
            spec("pacman-builder@0.2.1"),
            Some(("pacman-builder".into(), "0.2.1".into()))
        );
        assert_eq!(
            spec("@acme/bot@1.0.0-rc.1"),
            Some(("@acme/bot".into(), "1.0.0-rc.1".into()))
        );
        assert_eq!(spec("nover"), None);
        assert_eq!(spec("@acme/bot"), None);
        assert_eq!(
            "@acme/bot@1.0.0"
                .parse::<PackageSpec>()
                .map(|s| s.to_string())
                .ok(),
            Some("@acme/bot@1.0.0".into())
        );
    }

    #[test]
    fn key_values_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_key_value("aws_endpoint=http://x/?a=b"),
            Ok(("aws_endpoint".into(), "http://x/?a=b".into()))
        );
        assert!(parse_key_value("novalue").is_err());
    }
}
