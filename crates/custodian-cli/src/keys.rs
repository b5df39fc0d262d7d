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
must be signed by the same key."
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
pub fn run_key(command: KeyCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeyCommand::Generate {
            path,
            name,
            dir,
            force,
        } => generate(&path, name.as_deref(), &dir, force, KeyType::Ed25519),
    }
}
