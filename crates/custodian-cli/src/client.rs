//! Where the daemon is and who is asking (`--server`, `--token`, `--ca-cert`), the one connection
//! every command opens through `custodian_client`, and gRPC statuses as errors a person can read.
//!
//! The CLI is a gRPC client, so it does see `tonic::Status`: every command turns one into an
//! `anyhow::Error` here, with [`status_error`], and nowhere else.

use std::path::PathBuf;

use clap::Args;
use custodian_client::{Client, Target, describe_status};

use crate::DEFAULT_SERVER;

/// Where the daemon is, and who is asking.
#[derive(Args, Clone)]
pub struct ServerArg {
    /// The daemon's gRPC address (https://… when it serves TLS)
    #[arg(long, env = "CUSTODIAN_SERVER", default_value = DEFAULT_SERVER, global = true)]
    pub server: String,
    /// API token (from `custodian token create`), sent as authorization: Bearer
    #[arg(long, env = "CUSTODIAN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// PEM CA certificate to trust for an https:// server
    #[arg(long, env = "CUSTODIAN_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Stream every put over gRPC and every data pack upload over REST, even to a daemon on this
    /// machine that would read the file itself from its local put socket
    #[arg(long, env = "CUSTODIAN_NO_LOCAL_PUT", global = true)]
    pub no_local_put: bool,
}

impl ServerArg {
    /// The daemon these options name.
    pub fn target(&self) -> Target {
        Target {
            server: self.server.clone(),
            token: self.token.clone(),
            ca_cert: self.ca_cert.clone(),
        }
    }

    /// Connects to the daemon, authenticating with --token when given.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.target()).await?)
    }
}

/// Turns a gRPC status into an error a person can read.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(describe_status(&status))
}
