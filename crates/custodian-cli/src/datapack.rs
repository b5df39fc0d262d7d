//! `custodian datapack …`: data packs through the daemon's REST API (the seed's endpoints), so
//! the CLI exercises exactly what other HTTP clients use.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use custodian_core::Digest;
use futures::StreamExt as _;

use crate::client::ServerArg;
use crate::output::progress;

/// Where the REST API is.
#[derive(Args, Clone)]
pub struct RestArg {
    /// The daemon's REST address (https://… when it serves TLS)
    #[arg(long, env = "CUSTODIAN_REST", default_value = "http://127.0.0.1:7312")]
    pub(crate) rest: String,
    #[command(flatten)]
    pub(crate) server: ServerArg,
}

/// Data pack commands.
#[derive(Subcommand)]
pub enum DataPackCommand {
    /// Upload a hosted data pack for NAME@VERSION (streamed, with progress)
    #[command(
        long_about = "Upload a file as the hosted data pack of a published version. The daemon \
stores it in custody, scans it and records the registration with the scan's verdict in the \
ledger. A daemon on this machine (--rest is a loopback address and the daemon has a local put \
socket) is handed the open file and reads it itself, which costs far less CPU than sending it; \
the file must not change until the daemon has read it, or nothing is registered. Otherwise \
(and with --no-local-put) the file goes over REST: its digest is declared to the daemon, so it \
refuses (and keeps nothing of) bytes that arrive altered. Files of 8 MiB or more go over tus \
1.0, resumably: a dropped connection or a restarted daemon is retried from the last byte the \
daemon acknowledged, and running the same command again after it was stopped continues the same \
upload. Such a file is read once: it is hashed (BLAKE3) while it is sent and the digest declared \
with its last MiB, which is not sent if the file changed meanwhile; a smaller one is hashed \
(sha256) first. Either way the upload shows a progress bar on a terminal. Data packs are \
immutable per version: uploading the same bytes again is a no-op (over tus, a file of 8 MiB \
or more is refused instead, before it is sent, since its digest is not known yet), anything \
else is refused."
    )]
    Upload {
        /// NAME@VERSION
        spec: String,
        /// The data file
        file: PathBuf,
        /// The data's license, e.g. CC-BY-4.0
        #[arg(long)]
        license: String,
        /// A JSON file with the data's provenance (an object)
        #[arg(long, value_name = "FILE")]
        provenance: Option<PathBuf>,
        /// The eval set built from the data
        #[arg(long)]
        eval_set_uri: Option<String>,
        /// inherit (the version's visibility), public or private
        #[arg(long, default_value = "inherit")]
        visibility: String,
        /// The data artifact's own logical version
        #[arg(long)]
        data_version: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        rest: RestArg,
    },
    /// Register an external data pack for NAME@VERSION from a JSON declaration (seed 001)
    SetExternal {
        /// NAME@VERSION
        spec: String,
        /// The declaration: source_type, uri, checksum, access_policy, license, version, provenance
        manifest: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        rest: RestArg,
    },
    /// Show the data pack's trust view
    Show {
        /// NAME@VERSION
        spec: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        rest: RestArg,
    },
    /// Download a hosted data pack; the file appears only once its sha256 verified
    Download {
        /// NAME@VERSION
        spec: String,
        /// Destination file
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        #[command(flatten)]
        rest: RestArg,
    },
}

pub(crate) fn client(rest: &RestArg) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = &rest.server.ca_cert {
        let pem =
            std::fs::read(path).with_context(|| format!("reading --ca-cert {}", path.display()))?;
        builder = builder.add_root_certificate(
            reqwest::Certificate::from_pem(&pem).context("--ca-cert is not a PEM certificate")?,
        );
    }
    builder.build().context("building the HTTP client")
}

fn url(rest: &RestArg, spec: &str, tail: &str) -> anyhow::Result<String> {
    let crate::args::PackageSpec { name, version } = spec.parse()?;
    let name = custodian_server::rest::encode_segment(&name);
    Ok(format!(
        "{}/wrappers/{name}/versions/{version}/data-pack{tail}",
        rest.rest.trim_end_matches('/')
    ))
}

pub(crate) fn authorize(
    request: reqwest::RequestBuilder,
    rest: &RestArg,
) -> reqwest::RequestBuilder {
    match rest.server.token.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// Why a request to `--rest` failed, with a hint when the address is not a REST port.
pub(crate) fn unreachable(rest: &RestArg, err: reqwest::Error) -> anyhow::Error {
    // reqwest's own message is "error sending request"; the cause is in its source chain.
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    // A connection that was accepted and then answered with something other than HTTP/1.1 (a
    // gRPC server speaks HTTP/2 only) is the likely mix-up; a refused one is just down.
    let refused = text.contains("Connection refused") || text.contains("dns error");
    let hint = if !refused {
        " — this looks like Custodian's gRPC port (serve --listen, default 7311); --rest is the REST port (serve --rest-listen, default 7312)"
    } else {
        ""
    };
    anyhow::anyhow!("cannot reach the REST API at {}: {text}{hint}", rest.rest)
}

/// Reads a JSON answer, turning the API's error objects into readable errors.
async fn answer(response: reqwest::Response) -> anyhow::Result<serde_json::Value> {
    let status = response.status();
    let grpc = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let body = response.bytes().await.context("reading the response")?;
    if grpc {
        bail!(
            "the address answered as a gRPC server: this is Custodian's gRPC port (serve --listen, default 7311); --rest is the REST port (serve --rest-listen, default 7312)"
        );
    }
    let value: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))?;
    if !status.is_success() {
        return Err(refusal(status, &value));
    }
    Ok(value)
}

/// The error the API's `{"error": {"code", "message"}}` body with `status` stands for.
fn refusal(status: reqwest::StatusCode, value: &serde_json::Value) -> anyhow::Error {
    anyhow::anyhow!(
        "{} ({}): {}",
        value["error"]["code"].as_str().unwrap_or("error"),
        status.as_u16(),
        value["error"]["message"].as_str().unwrap_or("")
    )
}

/// What a run remembers about an unfinished tus upload.
#[derive(serde::Serialize, serde::Deserialize)]
struct TusRecord {
    location: String,
}

/// A tus request with the protocol header and the token.
fn tus(request: reqwest::RequestBuilder, rest: &RestArg) -> reqwest::RequestBuilder {
    authorize(request, rest).header("Tus-Resumable", "1.0.0")
}

/// The error in a tus answer that is not a success.
async fn tus_error(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    match answer(response).await {
        Err(err) => err,
        Ok(_) => anyhow::anyhow!("HTTP {status}"),
    }
}

fn upload_offset(response: &reqwest::Response) -> anyhow::Result<u64> {
    response
        .headers()
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .context("the answer has no Upload-Offset")
}

/// The last bytes of a tus upload, sent in a PATCH of their own that declares the whole file's
/// BLAKE3 (hashed while the rest was sent).
const DECLARING_PIECE: u64 = 1 << 20;

/// The BLAKE3 of a file being uploaded, fed with the pieces as they are read to be sent, so that
/// the file is read once. Bytes this run does not send (those the daemon kept from an earlier
/// run) are read for the hash alone, and bytes sent twice (a piece retried after a broken
/// transfer) are hashed once.
struct SentHash {
    path: PathBuf,
    hasher: blake3::Hasher,
    hashed: u64,
}

impl SentHash {
    fn new(path: &Path) -> Self {
        SentHash {
            path: path.to_path_buf(),
            hasher: blake3::Hasher::new(),
            hashed: 0,
        }
    }

    /// Feeds `piece`, which starts `at` bytes into the file.
    fn feed(&mut self, at: u64, piece: &[u8]) -> std::io::Result<()> {
        use std::io::{Read as _, Seek as _};
        if at > self.hashed {
            let mut file = std::fs::File::open(&self.path)?;
            file.seek(std::io::SeekFrom::Start(self.hashed))?;
            self.hashed += std::io::copy(&mut file.take(at - self.hashed), &mut self.hasher)?;
            if self.hashed != at {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file became shorter during the upload",
                ));
            }
        }
        let skip = usize::try_from(self.hashed - at).unwrap_or(usize::MAX);
        if let Some(new) = piece.get(skip..) {
            self.hasher.update(new);
            self.hashed += new.len() as u64;
        }
        Ok(())
    }

    /// The digest of the first `len` bytes, which must all have been fed.
    fn digest(&self, len: u64) -> std::io::Result<Digest> {
        if self.hashed != len {
            return Err(std::io::Error::other(format!(
                "{} of {len} bytes were hashed",
                self.hashed
            )));
        }
        Ok(Digest::blake3(*self.hasher.finalize().as_bytes()))
    }
}

/// The size and modification time of a file, to tell whether it changed during an upload.
fn file_stamp(path: &Path) -> std::io::Result<(u64, Option<std::time::SystemTime>)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.len(), meta.modified().ok()))
}

/// One data pack upload: where it goes, the file, and the metadata declared with it.
struct Upload<'a> {
    rest: &'a RestArg,
    /// NAME@VERSION.
    spec: &'a str,
    file: &'a Path,
    /// The REST upload's metadata JSON (at least `license`).
    metadata: serde_json::Value,
    /// The file's name as the daemon records it.
    file_name: String,
    len: u64,
    bar: &'a indicatif::ProgressBar,
}

/// Uploads a large hosted data pack over tus 1.0, resuming after a dropped connection or a
/// restarted daemon (for up to [`crate::resume::RETRY_FOR`] without progress) and, through a
/// record under the state directory, after this command itself was stopped. The file is read
/// once and hashed as it is sent ([`SentHash`]): all but its last [`DECLARING_PIECE`] go first,
/// then the PATCH that completes the upload declares the BLAKE3 of the whole file, and the daemon
/// keeps nothing if the bytes do not hash to it. BLAKE3 rather than sha256 because it costs this
/// end a quarter of the CPU, which the daemon needs on a machine shared with it; the daemon hashes
/// every byte with both, so the sha256 it answers with is that of the bytes the BLAKE3 matched.
/// Returns the registration as the multipart upload reports it (`record`, `already_recorded`,
/// the `sha256` registered and the `blake3` declared).
async fn tus_upload(upload: &Upload<'_>) -> anyhow::Result<serde_json::Value> {
    let Upload {
        rest,
        spec,
        file,
        ref metadata,
        ref file_name,
        len,
        bar,
    } = *upload;
    // A file changed during the upload (its size or modification time) is not declared: the bytes
    // sent would then be a mix of two files.
    let stamp = file_stamp(file).with_context(|| format!("reading {}", file.display()))?;
    let hash = std::sync::Arc::new(std::sync::Mutex::new(SentHash::new(file)));
    let mut declared: Option<Digest> = None;
    use base64::Engine as _;
    let http = client(rest)?;
    let collection = url(rest, spec, "/uploads")?;
    let origin = rest.rest.trim_end_matches('/').to_string();
    let record_file = crate::resume::record_path(
        &collection,
        rest.server.token.as_deref(),
        file,
        &metadata.to_string(),
    );
    // A session an earlier run started, if the daemon still has it.
    let mut session: Option<(String, u64)> = None;
    if let Some(record) = crate::resume::recall::<TusRecord>(&record_file) {
        let head = tus(http.head(format!("{origin}{}", record.location)), rest)
            .send()
            .await
            .map_err(|e| unreachable(rest, e))?;
        if head.status().is_success() {
            let offset = upload_offset(&head)?;
            crate::resume::say(
                bar,
                format!(
                    "resuming the upload of {} at byte {offset} of {len}",
                    file.display()
                ),
            );
            session = Some((record.location, offset));
        }
    }
    let (location, mut offset) = match session {
        Some(session) => session,
        None => {
            let b64 = base64::engine::general_purpose::STANDARD;
            let created = tus(http.post(&collection), rest)
                .header("Upload-Length", len.to_string())
                .header(
                    "Upload-Metadata",
                    format!(
                        "metadata {},filename {}",
                        b64.encode(metadata.to_string()),
                        b64.encode(file_name)
                    ),
                )
                .send()
                .await
                .map_err(|e| unreachable(rest, e))?;
            if created.status() != reqwest::StatusCode::CREATED {
                return Err(tus_error(created).await);
            }
            let location = created
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .context("the creation answer has no Location")?
                .to_string();
            crate::resume::remember(
                &record_file,
                &TusRecord {
                    location: location.clone(),
                },
            );
            (location, 0)
        }
    };
    let target = format!("{origin}{location}");
    let mut last_progress = std::time::Instant::now();
    let mut backoff = std::time::Duration::from_millis(250);
    let mut registered: Option<(String, Option<String>, bool)> = None;
    while registered.is_none() {
        bar.set_position(offset);
        // Everything up to the declaring piece, or the declaring piece itself.
        let end = if offset < len.saturating_sub(DECLARING_PIECE) {
            len - DECLARING_PIECE
        } else {
            len
        };
        let mut request = tus(http.patch(&target), rest)
            .header("Upload-Offset", offset.to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .header("Content-Length", (end - offset).to_string());
        let body = if end == len {
            // The declaring piece is read and hashed before its PATCH starts, since the PATCH's
            // header carries the digest of the whole file.
            let (hash, path) = (hash.clone(), file.to_path_buf());
            let (piece, digest) =
                tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<u8>, Digest)> {
                    use std::io::{Read as _, Seek as _};
                    let mut reader = std::fs::File::open(&path)?;
                    reader.seek(std::io::SeekFrom::Start(offset))?;
                    let mut piece = Vec::with_capacity((len - offset) as usize);
                    reader.take(len - offset).read_to_end(&mut piece)?;
                    if file_stamp(&path)? != stamp || piece.len() as u64 != len - offset {
                        bail!(
                            "{} changed while it was uploaded, so its upload is not completed and \
                             nothing is registered; run the command again to upload it as it is now",
                            path.display()
                        );
                    }
                    let mut hash = hash
                        .lock()
                        .map_err(|_| anyhow::anyhow!("the upload's hash was lost"))?;
                    hash.feed(offset, &piece)?;
                    Ok((piece, hash.digest(len)?))
                })
                .await??;
            request = request.header("Custodian-Data-Pack-Blake3", digest.to_string());
            declared = Some(digest);
            bar.inc(piece.len() as u64);
            reqwest::Body::from(piece)
        } else {
            let reader = std::fs::File::open(file)
                .and_then(|mut reader| {
                    std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(offset))?;
                    Ok(reader)
                })
                .with_context(|| format!("opening {}", file.display()))?;
            let (hash, counter) = (hash.clone(), bar.clone());
            let pieces =
                crate::blob::file_pieces(reader, offset, end - offset, move |at, piece| {
                    hash.lock()
                        .map_err(|_| std::io::Error::other("the upload's hash was lost"))?
                        .feed(at, piece)
                })
                .map(move |piece| {
                    if let Ok(bytes) = &piece {
                        counter.inc(bytes.len() as u64);
                    }
                    piece
                });
            reqwest::Body::wrap_stream(pieces)
        };
        let sent = request.body(body).send().await;
        let failure = match sent {
            Ok(response) if response.status() == reqwest::StatusCode::NO_CONTENT => {
                offset = upload_offset(&response)?;
                last_progress = std::time::Instant::now();
                backoff = std::time::Duration::from_millis(250);
                if let Some(sha256) = response
                    .headers()
                    .get("custodian-data-pack-sha256")
                    .and_then(|v| v.to_str().ok())
                {
                    let already = response
                        .headers()
                        .get("custodian-already-recorded")
                        .is_some_and(|v| v == "true");
                    let blake3 = response
                        .headers()
                        .get("custodian-data-pack-blake3")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    registered = Some((sha256.to_string(), blake3, already));
                }
                continue;
            }
            Ok(response) if response.status().is_server_error() => {
                format!("HTTP {}", response.status())
            }
            Ok(response) => {
                crate::resume::forget(&record_file);
                return Err(tus_error(response).await);
            }
            Err(err) => unreachable(rest, err).to_string(),
        };
        if last_progress.elapsed() > crate::resume::RETRY_FOR {
            bail!(
                "the upload made no progress for {} s; the last error: {failure}. Run the same command again to resume at byte {offset}",
                crate::resume::RETRY_FOR.as_secs()
            );
        }
        crate::resume::say(bar, format!("the transfer broke ({failure}); resuming"));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(4));
        // Where the daemon stands: it keeps what arrived.
        if let Ok(head) = tus(http.head(&target), rest).send().await {
            if head.status() == reqwest::StatusCode::NOT_FOUND {
                crate::resume::forget(&record_file);
                return Err(tus_error(head).await);
            }
            if let Ok(at) = upload_offset(&head) {
                offset = at;
            }
        }
    }
    crate::resume::forget(&record_file);
    let (sha256, stored, already) = registered.expect("the loop ends registered");
    let declared = declared.context("the upload completed without its declaring PATCH")?;
    // The daemon refuses bytes that do not hash to the declaration; its answer is checked too, so
    // that a daemon which ignored the declaration is not taken at its word.
    if stored.as_deref() != Some(declared.to_string().as_str()) {
        bail!(
            "the daemon registered {sha256} and answered blake3 {}, but {} hashes to {declared}",
            stored.as_deref().unwrap_or("(none)"),
            file.display()
        );
    }
    let view = answer(
        authorize(http.get(url(rest, spec, "")?), rest)
            .send()
            .await
            .map_err(|e| unreachable(rest, e))?,
    )
    .await?;
    Ok(serde_json::json!({
        "record": view,
        "already_recorded": already,
        "uploaded_with": "tus 1.0",
        "sha256": sha256,
        "blake3": declared.to_string(),
    }))
}

/// The daemon's local put socket, if this data pack's upload should be handed to it: `--rest`
/// is a loopback address, `--no-local-put` is not given, and the daemon names a socket in its
/// answer to the tus `OPTIONS` request (the REST daemon itself, not whichever daemon `--server`
/// names).
async fn local_socket(rest: &RestArg, spec: &str) -> Option<crate::local_put::LocalSocket> {
    if rest.server.no_local_put || !crate::local_put::is_loopback(&rest.rest) {
        return None;
    }
    let http = client(rest).ok()?;
    let response = tus(
        http.request(reqwest::Method::OPTIONS, url(rest, spec, "/uploads").ok()?),
        rest,
    )
    .send()
    .await
    .ok()?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    Some(crate::local_put::LocalSocket {
        path: header("custodian-local-put-socket")?.into(),
        instance: header("custodian-local-put-instance")?,
    })
}

/// Hands `file` to the daemon's local put socket as NAME@VERSION's hosted data pack: the daemon
/// reads, stores, scans and registers it as the REST hosted upload would. Returns the REST API's
/// answer with `"uploaded_with": "local put socket"`, or `None` when the socket turns out to be
/// unreachable or another daemon's (the caller uploads over REST instead).
async fn local_upload(
    upload: &Upload<'_>,
    socket: &crate::local_put::LocalSocket,
) -> anyhow::Result<Option<serde_json::Value>> {
    let crate::args::PackageSpec { name, version } = upload.spec.parse()?;
    let file = upload.file;
    let opened =
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let pack = custodian_proto::cas::v1::LocalDataPack {
        name,
        version,
        metadata_json: upload.metadata.to_string(),
        file_name: upload.file_name.clone(),
    };
    let token = upload.rest.server.token.as_deref();
    let Some(answer) =
        crate::local_put::put_data_pack(socket, &opened, upload.len, token, pack, upload.bar)
            .await?
    else {
        return Ok(None);
    };
    let status = reqwest::StatusCode::from_u16(answer.http_status as u16)
        .unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR);
    let mut value: serde_json::Value = serde_json::from_str(&answer.body_json).with_context(|| {
        format!(
            "the daemon's local put socket answered HTTP {status} with a body that is not JSON: {}",
            answer.body_json
        )
    })?;
    if !status.is_success() {
        return Err(refusal(status, &value));
    }
    value["uploaded_with"] = "local put socket".into();
    Ok(Some(value))
}

/// Streams a response body to `output` (`-` for standard output), hashing as it goes; the file
/// appears only if the bytes hash to `expected` (and number `size`, when given). Returns how
/// many bytes were written.
pub(crate) async fn download_verified(
    response: reqwest::Response,
    output: &Path,
    expected: &Digest,
    size: Option<u64>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    let hint = size.or(response.content_length()).unwrap_or(0);
    let mut sink = crate::sink::VerifiedOutput::create(output, Some(*expected), hint)?;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                bar.inc(chunk.len() as u64);
                sink.write(chunk).await;
            }
            Err(err) => {
                sink.abandon().await;
                return Err(anyhow::Error::new(err).context("the download was cut short"));
            }
        }
    }
    sink.finish(size).await
}

fn print_view(view: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(view)?);
        return Ok(());
    }
    let field = |key: &str| {
        view[key]
            .as_str()
            .map(str::to_string)
            .or_else(|| view[key].as_u64().map(|n| n.to_string()))
    };
    for key in [
        "mode",
        "license",
        "sha256",
        "size",
        "filename",
        "visibility",
        "scan_status",
        "source_type",
        "uri",
        "checksum",
        "access_policy",
        "version",
        "eval_set_uri",
        "ledger_index",
        "registered_at",
    ] {
        if let Some(value) = field(key) {
            println!("{key:<14} {value}");
        }
    }
    if !view["provenance"].is_null() {
        println!("{:<14} {}", "provenance", view["provenance"]);
    }
    Ok(())
}

/// Runs a data pack command.
pub async fn run(command: DataPackCommand) -> anyhow::Result<ExitCode> {
    match command {
        DataPackCommand::Upload {
            spec,
            file,
            license,
            provenance,
            eval_set_uri,
            visibility,
            data_version,
            json,
            rest,
        } => {
            let len = std::fs::metadata(&file)
                .with_context(|| format!("reading {}", file.display()))?
                .len();
            // A large file is hashed while it uploads and its sha256 declared at the end; a small
            // one is hashed first and declared in the metadata.
            let resumable = len >= crate::resume::RESUMABLE_MIN;
            let mut metadata = serde_json::json!({
                "license": license,
                "visibility": visibility,
            });
            if let Some(p) = provenance {
                let text = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                metadata["provenance"] = serde_json::from_slice(&text)
                    .with_context(|| format!("{} is not JSON", p.display()))?;
            }
            if let Some(uri) = eval_set_uri {
                metadata["eval_set_uri"] = uri.into();
            }
            if let Some(v) = data_version {
                metadata["version"] = v.into();
            }
            let file_name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("data")
                .to_string();
            let bar = progress(len, format!("upload {}", file.display()));
            let mut upload = Upload {
                rest: &rest,
                spec: &spec,
                file: &file,
                metadata,
                file_name,
                len,
                bar: &bar,
            };
            // A daemon on this machine reads the file itself: nothing to hash or send here.
            let local = match local_socket(&rest, &spec).await {
                Some(socket) => local_upload(&upload, &socket).await?,
                None => None,
            };
            if local.is_none() && !resumable {
                let path = file.clone();
                let (sha256, _) =
                    tokio::task::spawn_blocking(move || crate::pack::hash_with_progress(&path))
                        .await??;
                upload.metadata["sha256"] = sha256.to_string().into();
            }
            let Upload {
                metadata,
                file_name,
                ..
            } = &upload;
            let value = if let Some(value) = local {
                bar.finish_and_clear();
                value
            } else if resumable {
                let value = tus_upload(&upload).await?;
                bar.finish_and_clear();
                value
            } else {
                let counter = bar.clone();
                let stream = tokio_util::io::ReaderStream::with_capacity(
                    tokio::fs::File::open(&file)
                        .await
                        .with_context(|| format!("opening {}", file.display()))?,
                    1 << 20,
                )
                .map(move |chunk| {
                    if let Ok(bytes) = &chunk {
                        counter.inc(bytes.len() as u64);
                    }
                    chunk
                });
                let form = reqwest::multipart::Form::new()
                    .part(
                        "metadata",
                        reqwest::multipart::Part::text(metadata.to_string())
                            .mime_str("application/json")?,
                    )
                    .part(
                        "file",
                        reqwest::multipart::Part::stream_with_length(
                            reqwest::Body::wrap_stream(stream),
                            len,
                        )
                        .file_name(file_name.clone()),
                    );
                let response = authorize(client(&rest)?.post(url(&rest, &spec, "/hosted")?), &rest)
                    .multipart(form)
                    .send()
                    .await
                    .map_err(|e| unreachable(&rest, e))?;
                bar.finish_and_clear();
                answer(response).await?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!(
                    "{} hosted data pack of {spec}: {}, {len} bytes (ledger entry {})",
                    if value["already_recorded"] == true {
                        "already registered:"
                    } else {
                        "registered"
                    },
                    value["record"]["sha256"].as_str().unwrap_or("?"),
                    value["record"]["ledger_index"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DataPackCommand::SetExternal {
            spec,
            manifest,
            json,
            rest,
        } => {
            let body = std::fs::read(&manifest)
                .with_context(|| format!("reading {}", manifest.display()))?;
            // The seed writes data pack declarations in YAML; JSON is YAML too, and the daemon
            // reads either (with or without the seed's `data_pack:` wrapper).
            let yaml = manifest
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml");
            let response = authorize(client(&rest)?.put(url(&rest, &spec, "/manifest")?), &rest)
                .header(
                    "content-type",
                    if yaml {
                        "application/yaml"
                    } else {
                        "application/json"
                    },
                )
                .body(body)
                .send()
                .await
                .map_err(|e| unreachable(&rest, e))?;
            let value = answer(response).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!(
                    "{} external data pack of {spec}: {} (ledger entry {})",
                    if value["already_recorded"] == true {
                        "already registered:"
                    } else {
                        "registered"
                    },
                    value["record"]["uri"].as_str().unwrap_or(""),
                    value["record"]["ledger_index"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DataPackCommand::Show { spec, json, rest } => {
            let response = authorize(client(&rest)?.get(url(&rest, &spec, "")?), &rest)
                .send()
                .await
                .map_err(|e| unreachable(&rest, e))?;
            print_view(&answer(response).await?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        DataPackCommand::Download { spec, output, rest } => {
            let client = client(&rest)?;
            let view = answer(
                authorize(client.get(url(&rest, &spec, "")?), &rest)
                    .send()
                    .await
                    .map_err(|e| unreachable(&rest, e))?,
            )
            .await?;
            let expected: Digest = view["sha256"]
                .as_str()
                .with_context(|| format!("{spec}'s data pack is not hosted: {}", view["uri"]))?
                .parse()?;
            let size = view["size"].as_u64().unwrap_or(0);
            let response = authorize(client.get(url(&rest, &spec, "/download")?), &rest)
                .send()
                .await
                .map_err(|e| unreachable(&rest, e))?;
            if !response.status().is_success() {
                answer(response).await?;
                bail!("the download failed");
            }
            // The daemon sends the pack's scan status with its bytes; anything but clean is
            // said before a byte is written.
            let scan_status = response
                .headers()
                .get(custodian_server::rest::SCAN_STATUS_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("unknown")
                .to_string();
            if scan_status != "clean" {
                eprintln!(
                    "warning: {spec}'s data pack has scan status {scan_status}; read its findings with `custodian datapack show {spec}` and `custodian report {spec}` before using it"
                );
            }
            let bar = progress(size, format!("download {spec}"));
            let got = download_verified(response, &output, &expected, Some(size), &bar).await;
            bar.finish_and_clear();
            let got = got?;
            println!(
                "{got} bytes of {expected} verified and written to {}",
                output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file_of(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("pack.bin");
        std::fs::write(&path, bytes).expect("the test file");
        (dir, path)
    }

    proptest! {
        /// Whatever pieces a run sends, in whatever order and however often (a retried piece, an
        /// upload resumed past bytes an earlier run sent), the hash is that of the whole file.
        #[test]
        fn the_sent_hash_is_the_files_whatever_pieces_were_sent(
            bytes in proptest::collection::vec(any::<u8>(), 1..40_000),
            pieces in proptest::collection::vec((0.0f64..1.0, 0usize..9_000), 0..12),
            last in 1usize..5_000,
        ) {
            let (_dir, path) = file_of(&bytes);
            let mut hash = SentHash::new(&path);
            let len = bytes.len();
            for (start, size) in pieces {
                let at = ((len as f64) * start) as usize;
                let end = (at + size).min(len);
                hash.feed(at as u64, &bytes[at..end]).expect("feed");
            }
            let at = len - last.min(len);
            hash.feed(at as u64, &bytes[at..]).expect("feed");
            let digest = hash.digest(len as u64).expect("every byte hashed");
            prop_assert_eq!(digest, Digest::of(custodian_core::Algorithm::Blake3, &bytes));
        }
    }

    #[test]
    fn a_sent_hash_is_refused_until_every_byte_is_fed() {
        let bytes = vec![7u8; 10_000];
        let (_dir, path) = file_of(&bytes);
        let mut hash = SentHash::new(&path);
        hash.feed(0, &bytes[..4_000]).expect("feed");
        assert!(hash.digest(10_000).is_err(), "6,000 bytes were never fed");
        // A piece past the end of the file as it is now: the gap before it cannot be read.
        let err = hash
            .feed(20_000, &[1, 2, 3])
            .expect_err("the file is shorter");
        assert!(err.to_string().contains("shorter"), "{err}");
    }
}
