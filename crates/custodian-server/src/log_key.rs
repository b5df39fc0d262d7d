//! The log's signing key: generated on first start, kept in the data directory with mode 0600.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use custodian_core::note::SignerKey;

use crate::error::ServerError;

/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "log-key";

/// Loads the log key from `data_dir/log-key`, or generates one named `origin` (default:
/// `custodian.local/ledger-<8 random hex digits>`) and writes it with mode 0600. An existing key
/// whose name differs from a requested origin is an error: the origin is part of every
/// checkpoint and cannot change under a running log.
pub fn load_or_generate(data_dir: &Path, origin: Option<&str>) -> Result<SignerKey, ServerError> {
    let path = data_dir.join(KEY_FILE);
    let key_error = |reason: String| ServerError::LogKey {
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mode = std::fs::metadata(&path)
                .map_err(|e| key_error(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(key_error(format!(
                    "the private key is readable by others (mode {:o}); run chmod 600 on it",
                    mode & 0o777
                )));
            }
            let key = SignerKey::parse(&text).map_err(|e| key_error(e.to_string()))?;
            if let Some(origin) = origin
                && origin != key.name()
            {
                return Err(key_error(format!(
                    "the log key is for origin {:?}, but --log-origin asks for {origin:?}; the origin of an existing log cannot change",
                    key.name()
                )));
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| key_error(format!("no randomness: {e}")))?;
            let mut suffix = [0u8; 4];
            getrandom::fill(&mut suffix).map_err(|e| key_error(format!("no randomness: {e}")))?;
            let default_origin = format!("custodian.local/ledger-{}", hex::encode(suffix));
            let name = origin.unwrap_or(&default_origin);
            let key = SignerKey::from_seed(name, seed).map_err(|e| key_error(e.to_string()))?;
            // Write a temporary file, sync it, then rename: a crash leaves either no key or a
            // whole one, never a torn key that would orphan a log.
            let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| key_error(format!("create {}: {e}", tmp.display())))?;
            file.write_all(format!("{}\n", key.to_private_string()).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| key_error(format!("write {}: {e}", tmp.display())))?;
            std::fs::rename(&tmp, &path).map_err(|e| key_error(format!("rename: {e}")))?;
            std::fs::File::open(data_dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|e| key_error(format!("sync {}: {e}", data_dir.display())))?;
            tracing::info!(path = %path.display(), key = %key.verifier(), "generated the log key");
            Ok(key)
        }
        Err(e) => Err(key_error(e.to_string())),
    }
}
