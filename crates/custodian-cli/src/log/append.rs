//! `custodian log append`: one entry of a kind the services do not own, with its receipt; or,
//! with `--lines`, one entry per line of a file, all over one `AppendStream`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use custodian_proto::ledger::v1 as pb;

use super::codec::{json_to_cbor, parse_payload, payload_cbor};
use super::{connect, write_output};
use crate::client::{ServerArg, status_error};
use custodian_client::describe_status;

pub(super) async fn append(
    kind: String,
    payload: String,
    output: Option<PathBuf>,
    compact: bool,
    token: Option<String>,
    server: ServerArg,
) -> anyhow::Result<ExitCode> {
    let payload = parse_payload(&payload)?;
    let mut request = tonic::Request::new(pb::AppendRequest {
        kind,
        payload_cbor: payload_cbor(payload)?.into(),
        compact,
    });
    with_token(&mut request, token)?;
    let response = connect(&server)
        .await?
        .append(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let (text, what) = if compact {
        let place = place_json(
            response.log_index,
            &response.leaf_hash,
            response.checkpoint_size,
        );
        (format!("{place}\n"), "its place")
    } else {
        let receipt = response
            .receipt
            .context("the daemon sent no receipt for the append")?;
        (receipt.json, "receipt")
    };
    match output {
        Some(path) => {
            write_output(&path, text.as_bytes())?;
            eprintln!(
                "appended entry {}; {what} written to {}",
                response.log_index,
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// What `--compact` prints for an appended entry: where it is, on one line of JSON.
fn place_json(log_index: u64, leaf_hash: &[u8], checkpoint_size: u64) -> serde_json::Value {
    serde_json::json!({
        "log_index": log_index,
        "leaf_hash": hex::encode(leaf_hash),
        "checkpoint_size": checkpoint_size,
    })
}

/// Sends `token`, when given, as the request's bearer token (the daemon's append token; without
/// it the connection's `--token` is sent).
fn with_token<T>(request: &mut tonic::Request<T>, token: Option<String>) -> anyhow::Result<()> {
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .context("the append token contains characters not allowed in gRPC metadata")?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(())
}

/// `custodian log append --lines FILE`: each line of `source` (`-` for standard input) a JSON
/// payload, appended in order over one stream; prints each receipt (with `compact`, each entry's
/// place) as one line of JSON.
pub(crate) async fn append_lines(
    kind: String,
    source: PathBuf,
    compact: bool,
    token: Option<String>,
    server: ServerArg,
) -> anyhow::Result<ExitCode> {
    use tokio::io::AsyncBufReadExt as _;
    let input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if source.as_os_str() == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(&source)
                .await
                .with_context(|| format!("cannot open {}", source.display()))?,
        )
    };
    // Requests go to the daemon through `requests`; the number of each request's line goes to
    // `sent`, in the same order, so that each answer can name its line.
    let (requests, outgoing) = tokio::sync::mpsc::channel::<pb::AppendRequest>(256);
    let (sent, mut sent_lines) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(input).lines();
        let (mut number, mut unreadable) = (0u64, 0u64);
        while let Some(line) = lines.next_line().await? {
            number += 1;
            if line.trim().is_empty() {
                continue;
            }
            let payload = match serde_json::from_str(&line)
                .context("not JSON")
                .and_then(|json| json_to_cbor(json, "payload"))
                .and_then(payload_cbor)
            {
                Ok(payload) => payload,
                Err(err) => {
                    eprintln!("line {number}: not appended: {err:#}");
                    unreadable += 1;
                    continue;
                }
            };
            let request = pb::AppendRequest {
                kind: kind.clone(),
                payload_cbor: payload.into(),
                compact,
            };
            if requests.send(request).await.is_err() {
                // The stream ended; the answers' side says why.
                break;
            }
            let _ = sent.send(number);
        }
        anyhow::Ok(unreadable)
    });
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    with_token(&mut request, token)?;
    let mut answers = connect(&server)
        .await?
        .append_stream(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut stdout = std::io::stdout().lock();
    let (mut appended, mut refused) = (0u64, 0u64);
    while let Some(answer) = answers.message().await.map_err(status_error)? {
        let line = sent_lines
            .recv()
            .await
            .context("the daemon answered more requests than were sent")?;
        match answer.receipt {
            None if answer.error_code == 0 && compact => {
                let place = place_json(answer.log_index, &answer.leaf_hash, answer.checkpoint_size);
                writeln!(stdout, "{place}")?;
                appended += 1;
            }
            Some(receipt) if answer.error_code == 0 => {
                // The receipt's file form, on one line: each line of the output verifies alone.
                let json: serde_json::Value = serde_json::from_str(&receipt.json)
                    .context("the daemon sent a receipt that is not JSON")?;
                writeln!(stdout, "{json}")?;
                appended += 1;
            }
            _ => {
                let status = tonic::Status::new(answer.error_code.into(), answer.error_message);
                eprintln!("line {line}: refused: {}", describe_status(&status));
                refused += 1;
            }
        }
    }
    stdout.flush()?;
    let unreadable = reader
        .await
        .context("the line reader stopped unexpectedly")?
        .with_context(|| format!("reading {}", source.display()))?;
    let failed = refused + unreadable;
    eprintln!(
        "appended {appended} entries of {} lines{}",
        appended + failed,
        if failed > 0 {
            format!("; {failed} not appended (named above)")
        } else {
            String::new()
        }
    );
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
