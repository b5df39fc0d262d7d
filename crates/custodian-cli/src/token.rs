//! `custodian token …`: API token administration, run on the daemon's host.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use custodian_server::auth::{self, Scope, TokenRecord};

/// Token commands. They edit DATA_DIR/tokens.json directly: whoever can write the daemon's data
/// directory is its administrator. A running daemon picks changes up at the next request.
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown once; only its hash is stored)
    #[command(
        long_about = "Create an API token. Scopes: read (private packages, data packs and \
blobs in the namespaces), publish (publish and yank versions, register data packs, upload \
blobs; implies read), attest (attest eval runs, record scans; implies read), admin (everything, \
including raw ledger appends). Namespaces are package-name prefixes such as @acme/ or acme-, or \
* for every name. The secret is printed once; the daemon keeps only its SHA-256.",
        after_help = "Examples:\n  \
custodian token create --name ci-publisher --scope publish --namespace @acme/\n  \
custodian token create --name auditor --scope read --namespace '*'\n  \
CUSTODIAN_TOKEN=$(custodian token create --name admin --scope admin --namespace '*' --secret-only)"
    )]
    Create {
        /// Who or what holds the token (shown in lists and logs)
        #[arg(long)]
        name: String,
        /// Scopes, comma-separated or repeated: read (private content), publish (publish, yank,
        /// data packs), attest (attester keys, runs, scan verdicts), scan (rescans and scan
        /// verdicts), admin (everything, raw ledger appends included)
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Package-name prefixes, comma-separated or repeated; * for every name
        #[arg(long = "namespace", value_delimiter = ',', required = true)]
        namespaces: Vec<String>,
        /// Print only the secret (for scripts)
        #[arg(long, conflicts_with = "json")]
        secret_only: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// The daemon's data directory (where tokens.json lives)
        #[arg(long, env = "CUSTODIAN_DATA_DIR", default_value = ".custodian")]
        data_dir: PathBuf,
        /// Create the data directory if there is none (a new registry); without it, a missing
        /// data directory is an error, so a token never lands in a registry nobody runs
        #[arg(long)]
        init: bool,
    },
    /// List tokens (ids, names, scopes, namespaces; never secrets)
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[arg(long, env = "CUSTODIAN_DATA_DIR", default_value = ".custodian")]
        data_dir: PathBuf,
    },
    /// Revoke a token by id; a running daemon refuses it from its next request
    Revoke {
        /// The token id (from `token list`)
        id: String,
        #[arg(long, env = "CUSTODIAN_DATA_DIR", default_value = ".custodian")]
        data_dir: PathBuf,
    },
}

fn describe(t: &TokenRecord) -> String {
    let scopes: Vec<String> = t.scopes.iter().map(ToString::to_string).collect();
    format!(
        "{}  {:<20} scopes={:<22} namespaces={}{}",
        t.id,
        t.name,
        scopes.join(","),
        t.namespaces.join(","),
        if t.revoked_ms.is_some() {
            "  (revoked)"
        } else {
            ""
        }
    )
}

/// Runs a token command.
pub fn run(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create {
            name,
            scopes,
            namespaces,
            secret_only,
            json,
            data_dir,
            init,
        } => {
            let scopes = scopes
                .iter()
                .map(|s| Scope::parse(s.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            crate::serve::require_data_dir(&data_dir, init)?;
            let (record, secret) = auth::create_token(&data_dir, &name, scopes, namespaces)
                .with_context(|| format!("creating a token in {}", data_dir.display()))?;
            if secret_only {
                println!("{secret}");
            } else if json {
                let mut value = serde_json::to_value(&record)?;
                value["secret"] = secret.into();
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("{}", describe(&record));
                println!("secret (shown once, keep it safe): {secret}");
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List { json, data_dir } => {
            let tokens = auth::list_tokens(&data_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else if tokens.is_empty() {
                println!("no tokens in {}", data_dir.display());
            } else {
                for token in &tokens {
                    println!("{}", describe(token));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { id, data_dir } => {
            if auth::revoke_token(&data_dir, &id)? {
                println!("revoked {id}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "error: no active token with id {id:?} in {}",
                    data_dir.display()
                );
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
