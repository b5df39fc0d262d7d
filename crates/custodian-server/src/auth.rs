//! Access control: API tokens with scopes bound to namespaces.
//!
//! Tokens live in `DATA_DIR/tokens.json`, which holds only their SHA-256 hashes. An admin creates
//! and revokes them with `custodian token …` on the daemon's host (file access to the data
//! directory is what makes someone an admin); the daemon notices the file changing and reloads
//! it, so a revoked token stops working at its next request.
//!
//! A token carries scopes (`read`, `publish`, `attest`, `admin`) over namespaces: package-name
//! prefixes such as `@acme/` or `acme-`, or `*` for every name. `admin` implies every scope;
//! `publish` and `attest` imply `read` in their namespaces. Without a token a caller is
//! anonymous: it may read public content and nothing else.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The token file's name inside the data directory.
pub const TOKENS_FILE: &str = "tokens.json";
/// What every token starts with, so that secret scanners can recognise a leaked one.
pub const TOKEN_PREFIX: &str = "cust_";

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read private packages, data packs and blobs in the namespaces.
    Read,
    /// Publish and yank versions, register data packs, upload blobs.
    Publish,
    /// Attest eval runs and record scans.
    Attest,
    /// Record scan verdicts and start rescans: the scope an external scanner's token needs.
    Scan,
    /// Everything, including raw ledger appends.
    Admin,
}

impl Scope {
    /// Parses `read`, `publish`, `attest`, `scan` or `admin`.
    pub fn parse(text: &str) -> Result<Scope, AuthError> {
        match text {
            "read" => Ok(Scope::Read),
            "publish" => Ok(Scope::Publish),
            "attest" => Ok(Scope::Attest),
            "scan" => Ok(Scope::Scan),
            "admin" => Ok(Scope::Admin),
            other => Err(AuthError::Invalid(format!(
                "{other:?} is not a scope; expected read, publish, attest, scan or admin"
            ))),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Read => "read",
            Scope::Publish => "publish",
            Scope::Attest => "attest",
            Scope::Scan => "scan",
            Scope::Admin => "admin",
        })
    }
}

/// Why a request is not authenticated, or a token command failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The authorization header is malformed.
    #[error(
        "authorization must be \"Bearer <token>\", or Basic with the token as the password; got a value that is neither"
    )]
    Malformed,
    /// The token is unknown or revoked.
    #[error(
        "the bearer token is not valid: unknown or revoked (tokens are created with `custodian token create`)"
    )]
    UnknownToken,
    /// Invalid input to a token command.
    #[error("{0}")]
    Invalid(String),
    /// The token file could not be read or written.
    #[error("token file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O or JSON error.
        source: std::io::Error,
    },
}

/// One token as stored: its hash, never the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// A short public id, shown in lists and logs.
    pub id: String,
    /// A name saying who or what holds it.
    pub name: String,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Package-name prefixes it applies to; `*` is every name.
    pub namespaces: Vec<String>,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// Revocation time, if revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
}

impl TokenRecord {
    /// True if the token has `scope` (directly or through `admin`) for package `name`.
    pub fn allows(&self, scope: Scope, name: &str) -> bool {
        self.has_scope(scope) && self.covers(name)
    }

    fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|&s| {
            s == scope
                || s == Scope::Admin
                || (scope == Scope::Read
                    && matches!(s, Scope::Publish | Scope::Attest | Scope::Scan))
        })
    }

    fn covers(&self, name: &str) -> bool {
        custodian_core::registry::namespace_covers(&self.namespaces, name)
    }

    fn covers_everything(&self) -> bool {
        self.namespaces.iter().any(|ns| ns == "*")
    }
}

/// Who is making a request.
#[derive(Clone, Debug)]
pub enum Principal {
    /// No token: public reads only.
    Anonymous,
    /// A valid token.
    Token(Arc<TokenRecord>),
}

impl Principal {
    /// True if the principal has `scope` for package `name`.
    pub fn allows(&self, scope: Scope, name: &str) -> bool {
        match self {
            Principal::Anonymous => false,
            Principal::Token(t) => t.allows(scope, name),
        }
    }

    /// True if the principal may read content of package `name` with the given privacy.
    pub fn can_read(&self, name: &str, private: bool) -> bool {
        !private || self.allows(Scope::Read, name)
    }

    /// True if the principal has `scope` for every name (`*`).
    pub fn allows_everywhere(&self, scope: Scope) -> bool {
        match self {
            Principal::Anonymous => false,
            Principal::Token(t) => t.has_scope(scope) && t.covers_everything(),
        }
    }

    /// True if the principal has `scope` in at least one namespace.
    pub fn has_scope(&self, scope: Scope) -> bool {
        match self {
            Principal::Anonymous => false,
            Principal::Token(t) => t.has_scope(scope),
        }
    }

    /// A label for logs and errors: `anonymous` or `token <id> (<name>)`.
    pub fn label(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".into(),
            Principal::Token(t) => format!("token {} ({})", t.id, t.name),
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<TokenRecord>,
}

fn io_error(path: &Path, source: std::io::Error) -> AuthError {
    AuthError::File {
        path: path.to_path_buf(),
        source,
    }
}

fn read_file(path: &Path) -> Result<TokenFile, AuthError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| io_error(path, e.into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Writes the file atomically: a temporary file, fsync, rename, fsync of the folder.
fn write_file(path: &Path, file: &TokenFile) -> Result<(), AuthError> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(file).map_err(|e| io_error(path, e.into()))?;
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut out = options.open(&tmp)?;
        out.write_all(&bytes)?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    result.map_err(|e| io_error(path, e))
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates a token in `data_dir` and returns its record and the secret (shown once, never stored).
pub fn create_token(
    data_dir: &Path,
    name: &str,
    scopes: Vec<Scope>,
    namespaces: Vec<String>,
) -> Result<(TokenRecord, String), AuthError> {
    if name.trim().is_empty() {
        return Err(AuthError::Invalid("--name must not be empty".into()));
    }
    if scopes.is_empty() {
        return Err(AuthError::Invalid(
            "give at least one scope: read, publish, attest or admin".into(),
        ));
    }
    if namespaces.is_empty() {
        return Err(AuthError::Invalid(
            "give at least one namespace: a package-name prefix such as @acme/, or * for every name"
                .into(),
        ));
    }
    for ns in &namespaces {
        if ns.is_empty() || ns.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AuthError::Invalid(format!(
                "namespace {ns:?} is not a package-name prefix"
            )));
        }
    }
    std::fs::create_dir_all(data_dir).map_err(|e| io_error(data_dir, e))?;
    let mut random = [0u8; 36];
    getrandom::fill(&mut random)
        .map_err(|e| AuthError::Invalid(format!("the OS random source failed: {e}")))?;
    let id = hex::encode(&random[..4]);
    let secret = format!(
        "{TOKEN_PREFIX}{id}_{}",
        URL_SAFE_NO_PAD.encode(&random[4..])
    );
    let path = data_dir.join(TOKENS_FILE);
    let mut file = read_file(&path)?;
    let record = TokenRecord {
        id,
        name: name.to_string(),
        sha256: hash_token(&secret),
        scopes,
        namespaces,
        created_ms: crate::sequencer::now_ms(),
        revoked_ms: None,
    };
    file.tokens.push(record.clone());
    write_file(&path, &file)?;
    Ok((record, secret))
}

/// Every token in `data_dir`, revoked ones included.
pub fn list_tokens(data_dir: &Path) -> Result<Vec<TokenRecord>, AuthError> {
    Ok(read_file(&data_dir.join(TOKENS_FILE))?.tokens)
}

/// Revokes the token with `id`; returns false if there is none (or it was already revoked).
pub fn revoke_token(data_dir: &Path, id: &str) -> Result<bool, AuthError> {
    let path = data_dir.join(TOKENS_FILE);
    let mut file = read_file(&path)?;
    let mut changed = false;
    for token in &mut file.tokens {
        if token.id == id && token.revoked_ms.is_none() {
            token.revoked_ms = Some(crate::sequencer::now_ms());
            changed = true;
        }
    }
    if changed {
        write_file(&path, &file)?;
    }
    Ok(changed)
}

struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    by_hash: HashMap<String, Arc<TokenRecord>>,
}

/// Checks bearer tokens against the token file, reloading it when it changes.
pub struct Authenticator {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl Authenticator {
    /// An authenticator over `data_dir/tokens.json` (which need not exist yet).
    pub fn new(data_dir: &Path) -> Result<Self, AuthError> {
        let auth = Authenticator {
            path: data_dir.join(TOKENS_FILE),
            loaded: Mutex::new(Loaded {
                stamp: None,
                by_hash: HashMap::new(),
            }),
        };
        auth.lookup(None)?;
        Ok(auth)
    }

    /// Reloads the file if it changed, then looks `hash` up (one stat per call; no copy of the
    /// token table).
    fn lookup(&self, hash: Option<&str>) -> Result<Option<Arc<TokenRecord>>, AuthError> {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if loaded.stamp != stamp || stamp.is_none() {
            let file = read_file(&self.path)?;
            loaded.by_hash = file
                .tokens
                .into_iter()
                .filter(|t| t.revoked_ms.is_none())
                .map(|t| (t.sha256.clone(), Arc::new(t)))
                .collect();
            loaded.stamp = stamp;
        }
        Ok(hash.and_then(|h| loaded.by_hash.get(h).cloned()))
    }

    /// The principal for an `authorization` header value (`None` when there is no header).
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let Some(header) = header else {
            return Ok(Principal::Anonymous);
        };
        // Registry clients (docker, skopeo, oras) send the token as the password of Basic
        // authentication; the user name is not checked.
        let basic = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))
            .map(|encoded| {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| AuthError::Malformed)?;
                let text = String::from_utf8(decoded).map_err(|_| AuthError::Malformed)?;
                let (_, password) = text.split_once(':').ok_or(AuthError::Malformed)?;
                Ok::<String, AuthError>(password.to_string())
            })
            .transpose()?;
        let token = match &basic {
            // Registry clients without credentials send an empty user and password (skopeo's
            // `Basic Og==`): that is an anonymous caller, not a bad token.
            Some(password) if password.is_empty() => return Ok(Principal::Anonymous),
            Some(password) => password.as_str(),
            None => header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
                .map(str::trim)
                .ok_or(AuthError::Malformed)?,
        };
        if !token.starts_with(TOKEN_PREFIX) {
            return Err(AuthError::UnknownToken);
        }
        // The lookup is by hash, so comparing against stored values leaks nothing about a secret.
        let found = self.lookup(Some(&hash_token(token))).map_err(|err| {
            tracing::error!(%err, "cannot read the token file; refusing tokens until it is fixed");
            AuthError::UnknownToken
        })?;
        found.map(Principal::Token).ok_or(AuthError::UnknownToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_as_hashes_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (record, secret) = create_token(
            dir.path(),
            "ci",
            vec![Scope::Publish],
            vec!["@acme/".into()],
        )
        .expect("created");
        let stored = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).expect("file");
        assert!(!stored.contains(&secret), "the secret must not be stored");
        assert!(stored.contains(&record.sha256));

        let auth = Authenticator::new(dir.path()).expect("auth");
        let principal = auth
            .authenticate(Some(&format!("Bearer {secret}")))
            .expect("valid");
        assert!(principal.allows(Scope::Publish, "@acme/bot"));
        assert!(
            principal.allows(Scope::Read, "@acme/bot"),
            "publish implies read"
        );
        assert!(!principal.allows(Scope::Publish, "@other/bot"));
        assert!(!principal.allows(Scope::Attest, "@acme/bot"));
        assert!(!principal.allows_everywhere(Scope::Read));
        assert!(matches!(
            auth.authenticate(Some("Bearer cust_nope")),
            Err(AuthError::UnknownToken)
        ));
        assert!(matches!(
            auth.authenticate(Some(&secret)),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(auth.authenticate(None), Ok(Principal::Anonymous)));

        // Revocation takes effect without a restart.
        assert!(revoke_token(dir.path(), &record.id).expect("revoked"));
        assert!(!revoke_token(dir.path(), &record.id).expect("already revoked"));
        assert!(matches!(
            auth.authenticate(Some(&format!("Bearer {secret}"))),
            Err(AuthError::UnknownToken)
        ));
        assert_eq!(list_tokens(dir.path()).expect("list").len(), 1);
    }

    #[test]
    fn admin_covers_everything_and_anonymous_reads_public_only() {
        let record = TokenRecord {
            id: "x".into(),
            name: "root".into(),
            sha256: String::new(),
            scopes: vec![Scope::Admin],
            namespaces: vec!["*".into()],
            created_ms: 0,
            revoked_ms: None,
        };
        let admin = Principal::Token(Arc::new(record));
        for scope in [Scope::Read, Scope::Publish, Scope::Attest, Scope::Admin] {
            assert!(admin.allows(scope, "anything"));
            assert!(admin.allows_everywhere(scope));
        }
        assert!(Principal::Anonymous.can_read("x", false));
        assert!(!Principal::Anonymous.can_read("x", true));
        assert!(create_token(Path::new("/nonexistent"), "", vec![], vec![]).is_err());
    }
}
