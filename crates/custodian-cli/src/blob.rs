//! `custodian blob ...`: client commands for the content store.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::output::progress;
use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use custodian_core::Digest;
use custodian_proto::cas::v1 as pb;
use futures::StreamExt;
use serde::Serialize;

use custodian_client::Conn;
use custodian_client::get::GetPiece;

use crate::client::{ServerArg, status_error};

/// Bytes read from a file per Put message.
const PUT_CHUNK: usize = 1 << 20;

/// Blob commands.
#[derive(Subcommand)]
pub enum BlobCommand {
    /// Upload files; prints each one's sha256 and blake3 digests
    #[command(
        long_about = "Upload files into custody. The daemon hashes every byte as it \
arrives and commits the blob only if it matches; a file already in custody is not stored twice. \
Prints one line per file: sha256 digest, blake3 digest, size, file, and whether it was stored \
or already present. Shows a progress bar on a terminal. A daemon on this machine (a loopback \
--server that announces a local put socket) is handed each file and reads it itself, with the \
same checks and answers; --no-local-put streams instead. Streamed, files of 8 MiB or more go \
through a resumable upload session: a dropped connection or a restarted daemon is retried for up \
to two minutes from the last byte the daemon acknowledged, and if the command itself is stopped, \
running it again continues the same upload (the session id is kept under \
$XDG_STATE_HOME/custodian/uploads until the upload finishes). When the daemon keeps blobs in an \
object store that would otherwise stage and then copy an upload of unknown digest (S3, Azure), \
each file is read once first for its sha256, which the upload then declares, so the daemon \
writes it once; the daemon does the same for a file it is handed."
    )]
    Put {
        /// Files to upload
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Refuse the upload unless the file hashes to this digest (only with one file)
        #[arg(long, value_name = "DIGEST")]
        expect: Option<Digest>,
        /// Print JSON (one array) instead of text
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Download a blob to a file that appears only once its digest has been verified
    #[command(
        long_about = "Download a blob. The bytes go to a temporary file beside the \
destination; only when the whole blob has arrived and hashes to the requested digest is it \
renamed into place (with --offset/--limit, a range is written after its length is checked). \
With `-o -` the bytes go to standard output and a mismatch is reported at the end. Either of a \
blob's digests fetches it, and the bytes are checked against the one given: a blake3:... digest \
is checked several times faster than a sha256:... one (`blob stat` and `blob put` print both)."
    )]
    Get {
        /// The blob's digest (sha256:... or blake3:...)
        digest: Digest,
        /// Destination file, or - for standard output
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// First byte to fetch
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Most bytes to fetch (default: to the end)
        #[arg(long)]
        limit: Option<u64>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show blobs' metadata; exits 1 if any is not in custody
    Stat(DigestQuery),
    /// Print which of the given digests are not in custody; exits 1 if any is missing
    Missing(DigestQuery),
    /// Why a blob is in custody (what keeps it), or when and why it was deleted (admin)
    Why(crate::retention::WhyArgs),
    /// Delete one blob, recorded in the ledger with --reason; refused under a legal hold, and
    /// while a reference or pin keeps it unless --force (admin)
    Delete(crate::retention::DeleteArgs),
    /// List every blob in custody in SHA-256 order (admin); with --json, one JSON object a
    /// line: the store side of `custodian audit --reconcile`
    List(crate::retention::ListArgs),
}

/// Arguments of the commands that look digests up.
#[derive(Args)]
pub struct DigestQuery {
    /// Digests (sha256:... or blake3:...)
    #[arg(required = true)]
    digests: Vec<Digest>,
    /// Print JSON (one array) instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// A blob as the CLI prints it.
#[derive(Serialize)]
struct BlobLine {
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    sha256: String,
    blake3: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    already_present: Option<bool>,
}

impl BlobLine {
    fn from_info(info: &pb::BlobInfo) -> Self {
        BlobLine {
            file: None,
            sha256: info.sha256.clone(),
            blake3: info.blake3.clone(),
            size: info.size,
            created_at: info.created_at.as_ref().map(|t| {
                humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32),
                )
                .to_string()
            }),
            already_present: None,
        }
    }
}

/// Runs a blob command.
pub async fn run(command: BlobCommand) -> anyhow::Result<ExitCode> {
    match command {
        BlobCommand::Put {
            files,
            expect,
            json,
            server,
        } => put(&server, &files, expect, json).await,
        BlobCommand::Get {
            digest,
            output,
            offset,
            limit,
            server,
        } => get(&server, digest, &output, offset, limit).await,
        BlobCommand::Stat(query) => stat(&query.server, &query.digests, query.json).await,
        BlobCommand::Missing(query) => missing(&query.server, &query.digests, query.json).await,
        BlobCommand::Why(args) => crate::retention::why(args).await,
        BlobCommand::Delete(args) => crate::retention::delete(args).await,
        BlobCommand::List(args) => crate::retention::list(args).await,
    }
}

async fn put(
    server: &ServerArg,
    files: &[PathBuf],
    expect: Option<Digest>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if expect.is_some() && files.len() > 1 {
        bail!(
            "--expect names one digest, so it takes exactly one file ({} given)",
            files.len()
        );
    }
    let connected = server.connect().await?;
    let mut client = connected.store();
    let local = crate::local_put::socket(server, &mut client).await;
    // A daemon that stages an upload of unknown digest and then copies it to its key (S3,
    // Azure) is sent each file's SHA-256 first, so the bytes are written once. A local put
    // needs none: the daemon hashes the file it is handed first itself.
    let declare = expect.is_none()
        && local.is_none()
        && client
            .get_capabilities(pb::GetCapabilitiesRequest {})
            .await
            .is_ok_and(|caps| caps.into_inner().undeclared_uploads_copied);
    let mut conn = connected.conn();
    let mut lines = Vec::new();
    for path in files {
        let expect = match expect {
            None if declare && std::fs::metadata(path).is_ok_and(|m| m.is_file()) => {
                Some(crate::pack::hash_with_progress(path)?.0)
            }
            given => given,
        };
        let response = put_file(&server.target(), &mut conn, path, expect, local.as_ref())
            .await
            .with_context(|| format!("put {}", path.display()))?;
        let info = response.blob.context("the daemon's reply has no blob")?;
        let mut line = BlobLine::from_info(&info);
        line.file = Some(path.display().to_string());
        line.created_at = None;
        line.already_present = Some(response.already_present);
        if !json {
            println!(
                "{}  {}  {:>10}  {}  {}",
                line.sha256,
                line.blake3,
                line.size,
                path.display(),
                if response.already_present {
                    "already present"
                } else {
                    "stored"
                }
            );
        }
        lines.push(line);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Why sending a file failed: reading it, or the call itself.
pub(crate) enum SendFailure {
    /// The file could not be read to its end; the daemon was sent what came before.
    Read(std::io::Error),
    /// The daemon refused the call, or the connection broke.
    Status(tonic::Status),
}

/// Sends `call` on `conn`: `header`, then `file` from its current position to its end in
/// [`PUT_CHUNK`] pieces counted on `bar`, each sent from where it was read
/// (custodian_client::upload). Returns the daemon's answer. A read error ends the stream early
/// and is the failure, whatever the daemon answered to the short upload.
pub(crate) async fn send_file<H, R>(
    conn: &mut Conn,
    call: custodian_client::upload::UploadCall,
    header: &H,
    file: tokio::fs::File,
    bar: &indicatif::ProgressBar,
) -> Result<R, SendFailure>
where
    H: prost::Message,
    R: prost::Message + Default,
{
    let (error_tx, mut error_rx) = tokio::sync::oneshot::channel::<std::io::Error>();
    let pieces = futures::stream::once(file.into_std())
        .flat_map(|file| file_pieces(file, 0, u64::MAX, |_, _| Ok(())));
    let chunks = futures::stream::unfold(
        (Box::pin(pieces), Some(error_tx), bar.clone()),
        move |(mut pieces, mut error_tx, bar)| async move {
            match pieces.next().await {
                None => {
                    bar.set_message("all bytes sent; the daemon is verifying and committing");
                    None
                }
                Some(Ok(piece)) => {
                    bar.inc(piece.len() as u64);
                    Some((piece, (pieces, error_tx, bar)))
                }
                Some(Err(err)) => {
                    if let Some(tx) = error_tx.take() {
                        let _ = tx.send(err);
                    }
                    None
                }
            }
        },
    );
    let result = custodian_client::upload::client_stream(conn, call, header, chunks).await;
    if let Ok(err) = error_rx.try_recv() {
        return Err(SendFailure::Read(err));
    }
    result.map_err(SendFailure::Status)
}

/// The bytes of `file` from its current position (`at`, as the file's offset) up to `limit`
/// bytes or its end, as [`PUT_CHUNK`] pieces; `seen` is handed each piece with its offset in the
/// file before the piece is sent (to hash it while it is in the cache). The stream ends after
/// the first error.
///
/// Each piece is read on the blocking pool straight into the buffer that is sent (tokio's own
/// file reads go through a buffer of their own, one more copy of every byte), and the next piece
/// is read while this one is sent; so at most two pieces are in memory.
pub(crate) fn file_pieces<F>(
    file: std::fs::File,
    at: u64,
    limit: u64,
    seen: F,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static
where
    F: FnMut(u64, &[u8]) -> std::io::Result<()> + Send + 'static,
{
    struct Reader<F> {
        file: std::fs::File,
        at: u64,
        left: u64,
        seen: F,
    }
    type Read<F> = tokio::task::JoinHandle<(Reader<F>, std::io::Result<Vec<u8>>)>;
    fn read_next<F>(mut reader: Reader<F>) -> Read<F>
    where
        F: FnMut(u64, &[u8]) -> std::io::Result<()> + Send + 'static,
    {
        tokio::task::spawn_blocking(move || {
            use std::io::Read as _;
            // `read_to_end` fills the spare capacity without zeroing it first.
            let want = reader.left.min(PUT_CHUNK as u64);
            let mut piece = Vec::with_capacity(want as usize);
            let read = (&mut reader.file)
                .take(want)
                .read_to_end(&mut piece)
                .and_then(|_| (reader.seen)(reader.at, &piece))
                .map(|()| piece);
            if let Ok(piece) = &read {
                reader.at += piece.len() as u64;
                reader.left -= piece.len() as u64;
            }
            (reader, read)
        })
    }
    let first = read_next(Reader {
        file,
        at,
        left: limit,
        seen,
    });
    futures::stream::unfold(Some(first), |reading| async move {
        // The reading task fails only if it panicked; that is reported as a read error.
        let outcome = reading?
            .await
            .map_err(|join| std::io::Error::other(join.to_string()))
            .and_then(|(reader, read)| read.map(|piece| (reader, piece)));
        match outcome {
            Ok((_, piece)) if piece.is_empty() => None,
            Ok((reader, piece)) => {
                let next = (reader.left > 0).then(|| read_next(reader));
                Some((Ok(bytes::Bytes::from(piece)), next))
            }
            Err(err) => Some((Err(err), None)),
        }
    })
}

/// Uploads one file, with a progress bar on a terminal. With `local` (the daemon's local put
/// socket, from [`crate::local_put::socket`]) the daemon is handed the open file and reads it
/// itself. Otherwise files of at least [`crate::resume::RESUMABLE_MIN`] bytes go through a
/// resumable session on `target`, so a broken transfer continues where it stopped, also in a
/// later run; smaller ones go in one `Put` on `conn`.
pub async fn put_file(
    target: &custodian_client::Target,
    conn: &mut Conn,
    path: &Path,
    expect: Option<Digest>,
    local: Option<&crate::local_put::LocalSocket>,
) -> anyhow::Result<pb::PutResponse> {
    let file = std::fs::File::open(path).context("cannot open")?;
    let meta = file.metadata().context("cannot read metadata")?;
    let len = meta.len();
    let bar = progress(len, format!("put {}", path.display()));
    // Only a regular file has an end the daemon can read to; a pipe or device is streamed.
    if let Some(socket) = local.filter(|_| meta.is_file()) {
        let token = target.token.as_deref();
        let done = crate::local_put::put(socket, &file, expect, len, token, &bar).await;
        if let Some(done) = done.transpose() {
            bar.finish_and_clear();
            return done;
        }
    }
    if len >= crate::resume::RESUMABLE_MIN {
        bar.finish_and_clear();
        drop(file);
        return crate::resume::put_resumable(target, path, expect).await;
    }
    let header = pb::PutRequest {
        message: Some(pb::put_request::Message::Header(pb::PutHeader {
            expected_digest: expect.map(|d| d.to_string()).unwrap_or_default(),
            // A pipe's length is not known ahead; the daemon takes what arrives.
            expected_size: meta.is_file().then_some(len),
        })),
    };
    // A read error ends the stream early; the declared size then makes the daemon refuse the
    // upload, and the error itself is reported from here.
    let call = custodian_client::upload::UploadCall::Put;
    let file = tokio::fs::File::from_std(file);
    let result = send_file(conn, call, &header, file, &bar).await;
    bar.finish_and_clear();
    match result {
        Ok(response) => Ok(response),
        Err(SendFailure::Read(err)) => bail!("reading the file failed: {err}"),
        Err(SendFailure::Status(status)) => Err(status_error(status)),
    }
}

async fn get(
    server: &ServerArg,
    digest: Digest,
    output: &Path,
    offset: u64,
    limit: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let mut conn = server.connect().await?.conn();
    let received = download(&mut conn, &digest, output, offset, limit, true).await?;
    if output.as_os_str() != "-" {
        eprintln!(
            "{} bytes of {} verified and written to {}",
            received,
            short(&digest),
            output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Downloads a blob (or a range) to `output` (`-` for standard output). A file appears only
/// once every byte has arrived and, for a whole blob, hashes to `digest`; otherwise nothing is
/// left behind. Returns the bytes received. `show_progress` draws a bar on a terminal.
pub async fn download(
    conn: &mut Conn,
    digest: &Digest,
    output: &Path,
    offset: u64,
    limit: Option<u64>,
    show_progress: bool,
) -> anyhow::Result<u64> {
    let digest = *digest;
    let request = pb::GetRequest {
        digest: digest.to_string(),
        offset,
        limit: limit.unwrap_or(0),
    };
    // The blob's bytes come as slices of the HTTP/2 frames that brought them, not through
    // tonic's message buffer: one copy fewer of every byte (custodian_client::get).
    let mut stream = custodian_client::get::get(conn, &request)
        .await
        .map_err(status_error)?;
    let info = match stream.next().await.map_err(status_error)? {
        Some(GetPiece::Info(info)) => info,
        Some(GetPiece::Data(_)) => bail!("the daemon's first message has no blob metadata"),
        None => bail!("the daemon sent an empty stream"),
    };
    let whole = offset == 0 && limit.is_none_or(|l| l >= info.size);
    let expected_len = limit.map_or(info.size.saturating_sub(offset), |l| {
        l.min(info.size.saturating_sub(offset))
    });
    // Only a whole blob can be checked against its digest; a range is checked for length (the
    // daemon has already checked every block's CRC32C before sending it).
    let mut sink =
        crate::sink::VerifiedOutput::create(output, whole.then_some(digest), expected_len)?;
    let bar = if show_progress {
        progress(expected_len, format!("get {}", short(&digest)))
    } else {
        indicatif::ProgressBar::hidden()
    };
    let received: anyhow::Result<()> = async {
        while let Some(piece) = stream.next().await.map_err(status_error)? {
            match piece {
                GetPiece::Data(data) => {
                    bar.inc(data.len() as u64);
                    sink.write(data).await;
                }
                GetPiece::Info(_) => bail!("the daemon sent the blob's metadata twice"),
            }
        }
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    let context = || format!("get {digest}");
    if let Err(err) = received {
        sink.abandon().await;
        return Err(err.context(context()));
    }
    sink.finish(Some(expected_len)).await.with_context(context)
}

fn short(digest: &Digest) -> String {
    let text = digest.to_string();
    format!("{}…", &text[..text.find(':').map_or(0, |i| i + 13)])
}

async fn stat(server: &ServerArg, digests: &[Digest], json: bool) -> anyhow::Result<ExitCode> {
    let mut client = server.connect().await?.store();
    let mut lines = Vec::new();
    let mut missing = 0;
    for digest in digests {
        match client
            .stat(pb::StatRequest {
                digest: digest.to_string(),
            })
            .await
        {
            Ok(response) => {
                let line = BlobLine::from_info(response.get_ref());
                if !json {
                    println!(
                        "{}  {}  {:>10}  {}",
                        line.sha256,
                        line.blake3,
                        line.size,
                        line.created_at.as_deref().unwrap_or("")
                    );
                }
                lines.push(line);
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                missing += 1;
                eprintln!("{digest}: not in custody");
            }
            Err(status) => return Err(status_error(status).context(format!("stat {digest}"))),
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
    }
    Ok(if missing > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn missing(server: &ServerArg, digests: &[Digest], json: bool) -> anyhow::Result<ExitCode> {
    let mut client = server.connect().await?.store();
    let response = client
        .find_missing(pb::FindMissingRequest {
            digests: digests.iter().map(ToString::to_string).collect(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&response.missing_digests)?
        );
    } else {
        for digest in &response.missing_digests {
            println!("{digest}");
        }
    }
    Ok(if response.missing_digests.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
