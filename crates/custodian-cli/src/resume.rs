//! Resumable uploads from the CLI: `blob put` and `publish` send large files through the
//! daemon's upload sessions (`StartUpload`, `WriteUpload`, `FinishUpload`), so a dropped
//! connection, a restarted daemon or a killed client costs only the bytes that were in flight.
//!
//! Within one run, a broken transfer is retried with backoff: the CLI asks the daemon how many
//! bytes it acknowledged and continues from there. Across runs, the session id is remembered in
//! a small file under the state directory, keyed by the server, the file's path, size and
//! modification time, so running the same command again after the client was killed continues
//! the same session. The file is removed when the upload finishes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use custodian_client::{Client, Target};
use custodian_core::Digest;
use custodian_proto::cas::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncSeekExt as _;
use tonic::Code;

use crate::blob::SendFailure;
use crate::client::status_error;
use crate::output::progress;

/// Files at least this large go through a resumable session; smaller ones are one `Put`.
pub const RESUMABLE_MIN: u64 = 8 << 20;

/// How long a transfer keeps retrying without making progress before it gives up.
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(120);

/// What is remembered between runs about an unfinished upload.
#[derive(Serialize, Deserialize)]
struct Record {
    upload_id: String,
    server: String,
    path: String,
    size: u64,
}

/// Where unfinished uploads are remembered: `$CUSTODIAN_STATE_DIR`, else
/// `$XDG_STATE_HOME/custodian`, else `~/.local/state/custodian`; then `uploads/`.
fn state_dir() -> Option<PathBuf> {
    let base = std::env::var_os("CUSTODIAN_STATE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_STATE_HOME").map(|d| PathBuf::from(d).join("custodian")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/custodian"))
        })?;
    Some(base.join("uploads"))
}

/// The record file for an upload: a hash of everything that must match for a remembered
/// session to hold the same bytes (where to, which file as it is now, what is declared, and the
/// token, since sessions belong to a token).
pub(crate) fn record_path(
    destination: &str,
    token: Option<&str>,
    path: &Path,
    declared: &str,
) -> Option<PathBuf> {
    let meta = std::fs::metadata(path).ok()?;
    let canonical = std::fs::canonicalize(path).ok()?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = format!(
        "{destination}\n{}\n{}\n{mtime}\n{declared}\n{}",
        canonical.display(),
        meta.len(),
        token.map(token_fingerprint).unwrap_or_default(),
    );
    let name = Digest::of(custodian_core::Algorithm::Sha256, key.as_bytes());
    Some(state_dir()?.join(format!("{}.json", name.hex())))
}

/// Remembers `value` in `file` for a later run; a failure only costs that run its resume.
pub(crate) fn remember<T: Serialize>(file: &Option<PathBuf>, value: &T) {
    if let Some(file) = file {
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(bytes) = serde_json::to_vec(value) {
            let _ = std::fs::write(file, bytes);
        }
    }
}

/// What an earlier run remembered in `file`, if anything.
pub(crate) fn recall<T: for<'de> Deserialize<'de>>(file: &Option<PathBuf>) -> Option<T> {
    let bytes = std::fs::read(file.as_ref()?).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Forgets a finished (or dead) upload.
pub(crate) fn forget(file: &Option<PathBuf>) {
    if let Some(file) = file {
        let _ = std::fs::remove_file(file);
    }
}

fn token_fingerprint(token: &str) -> String {
    Digest::of(custodian_core::Algorithm::Sha256, token.as_bytes()).hex()
}

/// Whether a failed call is worth retrying after asking the daemon where the upload stands.
fn transient(status: &tonic::Status) -> bool {
    !matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::AlreadyExists
            | Code::Unimplemented
            | Code::OutOfRange
            | Code::DataLoss
    )
}

/// Uploads `path` through a resumable session, continuing one an earlier run left unfinished.
pub async fn put_resumable(
    target: &Target,
    path: &Path,
    expect: Option<Digest>,
) -> anyhow::Result<pb::PutResponse> {
    let size = tokio::fs::metadata(path)
        .await
        .context("cannot read metadata")?
        .len();
    let record_file = record_path(
        &target.server,
        target.token.as_deref(),
        path,
        &expect.map(|d| d.to_string()).unwrap_or_default(),
    );
    let bar = progress(size, format!("put {}", path.display()));
    let mut connected = Client::connect(target).await?;
    // A session an earlier run started, if the daemon still has it.
    let mut session: Option<pb::UploadStatus> = None;
    if let Some(record) = recall::<Record>(&record_file) {
        match connected
            .store()
            .query_upload(pb::QueryUploadRequest {
                upload_id: record.upload_id.clone(),
            })
            .await
        {
            Ok(status) => {
                let status = status.into_inner();
                say(
                    &bar,
                    format!(
                        "resuming the upload of {} at byte {} of {size}",
                        path.display(),
                        status.committed_size
                    ),
                );
                session = Some(status);
            }
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(status_error(status)),
        }
    }
    let mut session = match session {
        Some(session) => session,
        None => {
            let started = connected
                .store()
                .start_upload(pb::StartUploadRequest {
                    expected_digest: expect.map(|d| d.to_string()).unwrap_or_default(),
                    expected_size: Some(size),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            remember(
                &record_file,
                &Record {
                    upload_id: started.upload_id.clone(),
                    server: target.server.clone(),
                    path: path.display().to_string(),
                    size,
                },
            );
            started
        }
    };
    let id = session.upload_id.clone();
    let mut last_progress = Instant::now();
    let mut backoff = Duration::from_millis(250);
    while session.committed_size < size {
        bar.set_position(session.committed_size);
        let mut conn = connected.conn();
        match write_from(&mut conn, path, &id, session.committed_size, &bar).await {
            Ok(status) => {
                if status.committed_size == session.committed_size {
                    bail!(
                        "the daemon acknowledged no bytes at offset {}; the file may have shrunk",
                        status.committed_size
                    );
                }
                session = status;
                last_progress = Instant::now();
                backoff = Duration::from_millis(250);
            }
            Err(WriteFailure::File(err)) => return Err(err),
            Err(WriteFailure::Status(status)) if !transient(&status) => {
                if status.code() == Code::NotFound {
                    forget(&record_file);
                }
                return Err(status_error(status));
            }
            Err(WriteFailure::Status(status)) => {
                if last_progress.elapsed() > RETRY_FOR {
                    bail!(
                        "the upload made no progress for {} s; the last error: {}. Run the same command again to resume at byte {}",
                        RETRY_FOR.as_secs(),
                        status_error(status),
                        session.committed_size
                    );
                }
                say(
                    &bar,
                    format!(
                        "the transfer broke ({}); resuming",
                        custodian_client::describe_status(&status)
                    ),
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(4));
                // A new connection, then where the daemon stands: it keeps what arrived.
                match reconnect_and_query(target, &id).await {
                    Ok((fresh, status)) => {
                        // The daemon's answer is what the break cost: everything between here
                        // and the bytes already sent goes again.
                        say(
                            &bar,
                            format!("resuming at byte {} of {size}", status.committed_size),
                        );
                        connected = fresh;
                        session = status;
                    }
                    Err(status) if transient(&status) => continue,
                    Err(status) => return Err(status_error(status)),
                }
            }
        }
    }
    bar.set_message("all bytes sent; the daemon is committing");
    let finished = loop {
        match connected
            .store()
            .finish_upload(pb::FinishUploadRequest {
                upload_id: id.clone(),
                expected_digest: expect.map(|d| d.to_string()).unwrap_or_default(),
            })
            .await
        {
            Ok(response) => break response.into_inner(),
            Err(status) if transient(&status) && last_progress.elapsed() < RETRY_FOR => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(4));
                if let Ok(fresh) = Client::connect(target).await {
                    connected = fresh;
                }
            }
            Err(status) => {
                bar.finish_and_clear();
                forget(&record_file);
                return Err(status_error(status));
            }
        }
    };
    bar.finish_and_clear();
    forget(&record_file);
    Ok(finished)
}

async fn reconnect_and_query(
    target: &Target,
    id: &str,
) -> Result<(Client, pb::UploadStatus), tonic::Status> {
    let connected = Client::connect(target)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let status = connected
        .store()
        .query_upload(pb::QueryUploadRequest {
            upload_id: id.to_string(),
        })
        .await?
        .into_inner();
    Ok((connected, status))
}

/// A line for the person watching: above the bar on a terminal, else on standard error.
pub(crate) fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

enum WriteFailure {
    File(anyhow::Error),
    Status(tonic::Status),
}

/// One WriteUpload call: the file from `offset` to its end.
async fn write_from(
    conn: &mut custodian_client::Conn,
    path: &Path,
    id: &str,
    offset: u64,
    bar: &indicatif::ProgressBar,
) -> Result<pb::UploadStatus, WriteFailure> {
    let mut file = tokio::fs::File::open(path)
        .await
        .context("cannot open")
        .map_err(WriteFailure::File)?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .context("cannot seek")
        .map_err(WriteFailure::File)?;
    let header = pb::WriteUploadRequest {
        message: Some(pb::write_upload_request::Message::Header(
            pb::UploadWriteHeader {
                upload_id: id.to_string(),
                write_offset: offset,
            },
        )),
    };
    let call = custodian_client::upload::UploadCall::WriteUpload;
    crate::blob::send_file(conn, call, &header, file, bar)
        .await
        .map_err(|failure| match failure {
            SendFailure::Read(err) => {
                WriteFailure::File(anyhow::anyhow!("reading the file failed: {err}"))
            }
            SendFailure::Status(status) => WriteFailure::Status(status),
        })
}
