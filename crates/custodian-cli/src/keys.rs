//! Keys on the command line: publisher key pairs (`custodian key generate`), and reading the
//! private and verifier keys every signing or verifying command takes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use custodian_core::note::{KeyType, SignerKey, VerifierKey};

/// Key commands.
#[derive(Subcommand)]
pub enum KeyCommand {
    /// Generate an Ed25519 publisher key pair: NAME.key (private, mode 0600) and NAME.pub
    #[command(
        long_about = "Generate an Ed25519 key pair for signing packages. Keys use the \
signed-note format (name+id+base64) that Custodian's log key uses too. NAME.key is the private \
key (mode 0600; keep it secret and backed up); NAME.pub is the verifier key to hand to \
consumers and auditors. The first version of a package pins its publisher key: later versions \
must be signed by the same key, until `custodian key rotate` moves the pin."
    )]
    Generate {
        /// Where to write the pair: PATH.key and PATH.pub (e.g. acme-release, or
        /// keys/acme-release); the key is named after the file unless --name says otherwise
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// The key's name inside signatures, if not the file name (letters, digits, '.', '-',
        /// '_', '@', '/'; e.g. acme.example/release)
        #[arg(long)]
        name: Option<String>,
        /// A folder PATH is relative to
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Overwrite existing key files
        #[arg(long)]
        force: bool,
    },
    /// Rotate a publisher or attester key: both keys sign the hand-over, recorded in the ledger
    #[command(
        long_about = "Rotate a key. The previous and the new private key both sign a rotation \
statement (role, both keys, what is handed over, reason); the daemon records it as a KeyEvent. \
From that entry on, the new key signs for the packages (publisher) or namespaces (attester) and \
the previous one signs nothing new. Everything logged before the rotation keeps verifying, \
online and offline: signatures are judged against the keys valid at their entry's ledger time. \
--for names exactly the packages pinned to the previous publisher key, or the previous attester \
key's namespaces (the daemon's error lists them if they differ). Needs the publish or attest \
scope over each."
    )]
    Rotate(RotateArgs),
    /// Revoke a publisher or attester key; a compromise may be back-dated
    #[command(
        long_about = "Revoke a key, with a reason. Signatures logged from the revocation on \
stop counting. For --reason compromise, --effective back-dates it to when the key was \
compromised: runs and publications logged since then stop counting too, and badges name each \
affected entry; earlier ones stay valid. Needs the publish or attest scope over everything the \
key signs for."
    )]
    Revoke(RevokeArgs),
    /// Pin a package to a new publisher key after its key was revoked
    Introduce(IntroduceArgs),
}

/// Options of `custodian key rotate`.
#[derive(clap::Args)]
pub struct RotateArgs {
    /// publisher or attester
    #[arg(long, value_parser = ["publisher", "attester"])]
    pub role: String,
    /// The previous private key
    #[arg(long, value_name = "KEY_FILE")]
    pub old: PathBuf,
    /// The new private key
    #[arg(long, value_name = "KEY_FILE")]
    pub new: PathBuf,
    /// A package (publisher) or namespace (attester) handed over; repeat for each
    #[arg(long = "for", value_name = "NAME", required = true)]
    pub namespaces: Vec<String>,
    /// Why
    #[arg(long, default_value = "superseded")]
    pub reason: String,
    /// Print the recorded KeyEvent as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: crate::client::ServerArg,
}

/// Options of `custodian key revoke`.
#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The verifier key: a .pub file, or the key text
    pub key: String,
    /// publisher or attester
    #[arg(long, value_parser = ["publisher", "attester"])]
    pub role: String,
    /// compromise, superseded, retired, or your own words
    #[arg(long)]
    pub reason: String,
    /// When the key stopped being trustworthy (RFC 3339; only with --reason compromise)
    #[arg(long, value_name = "TIME")]
    pub effective: Option<String>,
    /// Print the recorded KeyEvent as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: crate::client::ServerArg,
}

/// Options of `custodian key introduce`.
#[derive(clap::Args)]
pub struct IntroduceArgs {
    /// The new publisher verifier key: a .pub file, or the key text
    pub key: String,
    /// The package to pin to it
    #[arg(long)]
    pub package: String,
    /// Print the recorded KeyEvent as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: crate::client::ServerArg,
}

/// Reads a verifier key from a file, or takes the argument as the key itself.
pub fn load_verifier(arg: &str) -> anyhow::Result<VerifierKey> {
    let text = match std::fs::read_to_string(arg) {
        Ok(text) => text,
        Err(_) if arg.contains('+') => arg.to_string(),
        Err(e) => bail!("cannot read verifier key file {arg}: {e}"),
    };
    VerifierKey::parse(text.trim()).with_context(|| format!("verifier key {arg}"))
}

/// Reads a private key file.
pub fn load_signer(path: &Path) -> anyhow::Result<SignerKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    SignerKey::parse(text.trim()).with_context(|| format!("key file {}", path.display()))
}

/// Writes a new key pair PATH.key (mode 0600) and PATH.pub, and prints the verifier key.
pub fn generate(
    path: &Path,
    name: Option<&str>,
    dir: &Path,
    force: bool,
    kind: KeyType,
) -> anyhow::Result<ExitCode> {
    let base = dir.join(path);
    let stem = base
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.strip_suffix(".key").unwrap_or(n).to_string())
        .filter(|n| !n.is_empty())
        .with_context(|| format!("{} does not end in a file name", path.display()))?;
    let folder = base.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = name.unwrap_or(&stem);
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
    let key = SignerKey::from_seed_typed(name, kind, seed)
        .with_context(|| format!("{name:?} is not a valid key name (letters, digits, '.', '-', '_', '@', '/'); pass --name"))?;
    let private = folder.join(format!("{stem}.key"));
    let public = folder.join(format!("{stem}.pub"));
    let dir = &folder;
    if !force && (private.exists() || public.exists()) {
        bail!(
            "{} or {} already exists; pass --force to overwrite (the old key is then lost)",
            private.display(),
            public.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write as _;
    let mut file = options
        .open(&private)
        .with_context(|| format!("writing {}", private.display()))?;
    writeln!(file, "{}", key.to_private_string())?;
    file.sync_all()?;
    std::fs::write(&public, format!("{}\n", key.verifier()))
        .with_context(|| format!("writing {}", public.display()))?;
    println!("private key: {} (keep it secret)", private.display());
    println!("public key:  {}", public.display());
    println!("{}", key.verifier());
    Ok(ExitCode::SUCCESS)
}

/// Runs a key command.
pub async fn run_key(command: KeyCommand) -> anyhow::Result<ExitCode> {
    use custodian_proto::evidence::v1 as pb;
    let (response, json) = match command {
        KeyCommand::Generate {
            path,
            name,
            dir,
            force,
        } => return generate(&path, name.as_deref(), &dir, force, KeyType::Ed25519),
        KeyCommand::Rotate(args) => {
            let (old, new) = (load_signer(&args.old)?, load_signer(&args.new)?);
            let rotation = custodian_core::keys::Rotation {
                statement_type: custodian_core::keys::ROTATION_TYPE.into(),
                role: args.role.clone(),
                previous: old.verifier().to_string(),
                key: new.verifier().to_string(),
                namespaces: args.namespaces.clone(),
                reason: args.reason.clone(),
            };
            let envelope = rotation.sign(&old, &new).to_json();
            let response = args
                .server
                .connect()
                .await?
                .evidence()
                .rotate_key(pb::RotateKeyRequest { envelope })
                .await
                .map_err(crate::client::status_error)?
                .into_inner();
            (response, args.json)
        }
        KeyCommand::Revoke(args) => {
            let key = load_verifier(&args.key)?;
            let effective_ms = match &args.effective {
                Some(text) => Some(
                    custodian_core::attestation::parse_rfc3339_ms(text).with_context(|| {
                        format!("--effective {text:?} is not an RFC 3339 time (e.g. 2026-11-30T12:00:00Z)")
                    })?,
                ),
                None => None,
            };
            let response = args
                .server
                .connect()
                .await?
                .evidence()
                .revoke_key(pb::RevokeKeyRequest {
                    role: args.role.clone(),
                    verifier_key: key.to_string(),
                    reason: args.reason.clone(),
                    effective_ms,
                })
                .await
                .map_err(crate::client::status_error)?
                .into_inner();
            (response, args.json)
        }
        KeyCommand::Introduce(args) => {
            let key = load_verifier(&args.key)?;
            let response = args
                .server
                .connect()
                .await?
                .evidence()
                .introduce_key(pb::IntroduceKeyRequest {
                    package: args.package.clone(),
                    verifier_key: key.to_string(),
                })
                .await
                .map_err(crate::client::status_error)?
                .into_inner();
            (response, args.json)
        }
    };
    let index = response.receipt.as_ref().map_or(0, |r| r.log_index);
    let event: serde_json::Value = serde_json::from_str(&response.event_json)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"ledger_index": index, "event": event})
        );
    } else {
        let text = |k: &str| event[k].as_str().unwrap_or_default().to_string();
        let handle = |k: &str| {
            VerifierKey::parse(&text(k))
                .map(|key| key.handle())
                .unwrap_or_else(|_| text(k))
        };
        let action = event["action"].as_str().unwrap_or("introduce");
        let over = event["namespaces"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        match action {
            "rotate" => println!(
                "rotated {} key {} -> {} for {over}: ledger entry {index}",
                text("role"),
                handle("previous"),
                handle("key")
            ),
            "revoke" => println!(
                "revoked {} key {} ({}){}: ledger entry {index}",
                text("role"),
                handle("key"),
                text("reason"),
                event["effective_ms"]
                    .as_u64()
                    .map(|ms| format!(", effective {}", custodian_core::vsa::rfc3339_millis(ms)))
                    .unwrap_or_default()
            ),
            _ => println!(
                "introduced {} key {} for {over}: ledger entry {index}",
                text("role"),
                handle("key")
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}
