//! `custodian log append`: one entry of a kind the services do not own, with its receipt.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use custodian_core::entry::encode_value;
use custodian_proto::ledger::v1 as pb;

use super::codec::parse_payload;
use super::{connect, write_output};
use crate::client::{ServerArg, status_error};

pub(super) async fn append(
    kind: String,
    payload: String,
    output: Option<PathBuf>,
    token: Option<String>,
    server: ServerArg,
) -> anyhow::Result<ExitCode> {
    let payload = parse_payload(&payload)?;
    let mut request = tonic::Request::new(pb::AppendRequest {
        kind,
        payload_cbor: encode_value(&payload).into(),
    });
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .context("the append token contains characters not allowed in gRPC metadata")?;
        request.metadata_mut().insert("authorization", value);
    }
    let response = connect(&server)
        .await?
        .append(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let receipt = response
        .receipt
        .context("the daemon sent no receipt for the append")?;
    match output {
        Some(path) => {
            write_output(&path, receipt.json.as_bytes())?;
            eprintln!(
                "appended entry {}; receipt written to {}",
                receipt.log_index,
                path.display()
            );
        }
        None => print!("{}", receipt.json),
    }
    Ok(ExitCode::SUCCESS)
}
