//! `custodian witness`: run a C2SP tlog-witness that cosigns other logs' checkpoints, and make
//! its key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use custodian_core::note::KeyType;
use custodian_server::witness::{Witness, WitnessLogs};

/// The long help of `custodian witness serve`.
const SERVE_ABOUT: &str = "Run a witness (C2SP tlog-witness): an independent party that cosigns \
a log's checkpoint only if it is consistent with every checkpoint of that log it cosigned \
before. Clients that require a quorum of witness cosignatures cannot be shown a split view.\n\n\
POST /add-checkpoint takes the spec's body (old size, consistency proof, signed checkpoint) and \
answers 200 with a cosignature/v1 line, or 400 (malformed, old > new), 403 (no signature from a \
configured key), 404 (unknown origin), 409 (stale old size: the body, text/x.tlog.size, is the \
size to resend from; or a different root at the same size), 422 (the proof does not verify, \
or a checkpoint of size 0 does not carry the empty tree's root). GET / names the witness and its \
logs; GET /checkpoint/<origin> is the latest checkpoint it cosigned for a log, with one verified \
line of each of the log's keys that signed it and its own cosignature.\n\n\
--logs is a file of `log <vkey>` lines, one per key a log signs with (the origin is the key's \
name). --state holds one file per log: the checkpoint last cosigned. The check and the durable \
write of the new checkpoint happen under one lock before any cosignature is sent, so a crash or \
kill -9 at any moment never leads the witness to cosign two inconsistent checkpoints. Never \
delete or roll back the state directory: the witness would forget what it promised.";

/// Witness commands.
#[derive(Subcommand)]
pub enum WitnessCommand {
    /// Run the witness until SIGTERM or Ctrl-C
    #[command(long_about = SERVE_ABOUT)]
    Serve(ServeArgs),
    /// Generate a witness key pair: PATH.key (private, mode 0600) and PATH.pub (the
    /// cosignature/v1 vkey, type 0x04, that logs and verifiers put in their witness policies)
    Keygen {
        /// Where to write the pair: PATH.key and PATH.pub
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// The witness's name in cosignature lines, a schema-less URL such as
        /// witness.example.com/w1 (default: the file name)
        #[arg(long)]
        name: Option<String>,
        /// Overwrite existing key files
        #[arg(long)]
        force: bool,
    },
}

/// Options of `custodian witness serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The witness's private key (from `custodian witness keygen`)
    #[arg(long, env = "CUSTODIAN_WITNESS_KEY", value_name = "FILE")]
    key: PathBuf,
    /// The logs to cosign for: `log <vkey>` lines
    #[arg(long, env = "CUSTODIAN_WITNESS_LOGS", value_name = "FILE")]
    logs: PathBuf,
    /// Directory for the witness's state (created if missing; locked while running)
    #[arg(long, env = "CUSTODIAN_WITNESS_STATE", value_name = "DIR")]
    state: PathBuf,
    /// Address to listen on; port 0 picks a free port
    #[arg(
        long,
        env = "CUSTODIAN_WITNESS_LISTEN",
        default_value = "127.0.0.1:7380"
    )]
    listen: SocketAddr,
    /// PEM certificate chain: serve TLS (with --tls-key)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Connections open at once; beyond it new connections are closed at once
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Log filter (tracing's EnvFilter syntax)
    #[arg(long, env = "CUSTODIAN_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines instead of text
    #[arg(long, env = "CUSTODIAN_LOG_JSON")]
    log_json: bool,
}

/// Runs a witness command.
pub async fn run(command: WitnessCommand) -> anyhow::Result<ExitCode> {
    match command {
        WitnessCommand::Keygen { path, name, force } => crate::keys::generate(
            &path,
            name.as_deref(),
            std::path::Path::new("."),
            force,
            KeyType::CosignatureV1,
        ),
        WitnessCommand::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    crate::serve::init_logging(&args.log, args.log_json)?;
    let signer = crate::keys::load_signer(&args.key)?;
    let config = std::fs::read_to_string(&args.logs)
        .with_context(|| format!("cannot read the witness's log list {}", args.logs.display()))?;
    let logs = WitnessLogs::parse(&config, &args.logs.display().to_string())?;
    let (listener, address) = crate::serve::bind(args.listen, "the witness").await?;
    let state = args.state.clone();
    let witness = tokio::task::spawn_blocking(move || Witness::open(signer, logs, &state))
        .await?
        .with_context(|| format!("opening the witness state {}", args.state.display()))?;
    let witness = Arc::new(witness);
    let origins: Vec<&str> = witness.logs().origins().collect();
    tracing::info!(key = %witness.verifier(), logs = ?origins, "witness listening");
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "custodian witness listening on {address}");
        let _ = writeln!(out, "witness key {}", witness.verifier());
        let _ = out.flush();
    }
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(custodian_server::TlsFiles { cert, key }),
        _ => None,
    };
    custodian_server::serve_witness(
        witness,
        listener,
        custodian_server::net::conn::ConnLimits {
            max_connections: args.max_connections,
            idle_timeout: Duration::from_secs(300),
            header_timeout: Duration::from_secs(10),
        },
        tls,
        crate::serve::shutdown_signal(),
    )
    .await?;
    tracing::info!("witness stopped");
    Ok(ExitCode::SUCCESS)
}
