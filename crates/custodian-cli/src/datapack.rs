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
        long_about = "Upload a file as the hosted data pack of a published version. The file's \
sha256 is declared to the daemon, so it refuses (and keeps nothing of) bytes that arrive \
altered. The upload streams with a progress bar on a terminal. Files of 8 MiB or more go over tus \
1.0, resumably: a dropped connection or a restarted daemon is retried from the last byte the \
daemon acknowledged, and running the same command again after it was stopped continues the same \
upload. Such a file is hashed while it is sent and its sha256 declared with its last MiB; a \
smaller one is hashed first. Data packs are immutable per version: uploading the same bytes again \
is a no-op, anything else is refused."
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
        bail!(
            "{} ({}): {}",
            value["error"]["code"].as_str().unwrap_or("error"),
            status.as_u16(),
            value["error"]["message"].as_str().unwrap_or("")
        );
    }
    Ok(value)
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
/// sha256 (hashed while the rest was sent).
const DECLARING_PIECE: u64 = 1 << 20;

/// The file's sha256, computed beside the upload and awaited only by the PATCH that declares it.
struct PendingHash(
    Option<tokio::task::JoinHandle<anyhow::Result<(Digest, u64)>>>,
    Option<Digest>,
);

impl PendingHash {
    async fn get(&mut self) -> anyhow::Result<Digest> {
        if let Some(task) = self.0.take() {
            self.1 = Some(task.await??.0);
        }
        self.1.context("the file's hash was not computed")
    }
}

/// Uploads a large hosted data pack over tus 1.0, resuming after a dropped connection or a
/// restarted daemon (for up to [`crate::resume::RETRY_FOR`] without progress) and, through a
/// record under the state directory, after this command itself was stopped. The file is hashed
/// while it is sent: all but its last [`DECLARING_PIECE`] go first, then the PATCH that completes
/// the upload declares the sha256, and the daemon keeps nothing if the bytes do not hash to it.
/// Returns the registration as the multipart upload reports it (`record`, `already_recorded`,
/// and the `sha256` declared).
async fn tus_upload(
    rest: &RestArg,
    spec: &str,
    file: &Path,
    metadata: &serde_json::Value,
    file_name: &str,
    len: u64,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<serde_json::Value> {
    let path = file.to_path_buf();
    let mut hash = PendingHash(
        Some(tokio::task::spawn_blocking(move || {
            crate::pack::hash_file_with(&path, |_| {})
        })),
        None,
    );
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
    let mut registered: Option<(String, bool)> = None;
    while registered.is_none() {
        bar.set_position(offset);
        let mut reader = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {}", file.display()))?;
        tokio::io::AsyncSeekExt::seek(&mut reader, std::io::SeekFrom::Start(offset)).await?;
        // Everything up to the declaring piece, or the declaring piece itself.
        let end = if offset < len.saturating_sub(DECLARING_PIECE) {
            len - DECLARING_PIECE
        } else {
            len
        };
        let counter = bar.clone();
        let stream = tokio_util::io::ReaderStream::with_capacity(
            tokio::io::AsyncReadExt::take(reader, end - offset),
            1 << 20,
        )
        .map(move |chunk| {
            if let Ok(bytes) = &chunk {
                counter.inc(bytes.len() as u64);
            }
            chunk
        });
        let mut request = tus(http.patch(&target), rest)
            .header("Upload-Offset", offset.to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .header("Content-Length", (end - offset).to_string());
        if end == len {
            request = request.header("Custodian-Data-Pack-Sha256", hash.get().await?.to_string());
        }
        let sent = request
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await;
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
                    registered = Some((sha256.to_string(), already));
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
    let (stored, already) = registered.expect("the loop ends registered");
    let sha256 = hash.get().await?;
    if stored != sha256.to_string() {
        bail!(
            "the daemon registered {stored}, but {} hashes to {sha256}",
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
        "sha256": sha256.to_string(),
    }))
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

fn hash_with_progress(path: &Path) -> anyhow::Result<(Digest, u64)> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let bar = progress(len, format!("sha256 {}", path.display()));
    let hashed = crate::pack::hash_file_with(path, |n| bar.inc(n));
    bar.finish_and_clear();
    hashed
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
            if !resumable {
                let path = file.clone();
                let (sha256, _) =
                    tokio::task::spawn_blocking(move || hash_with_progress(&path)).await??;
                metadata["sha256"] = sha256.to_string().into();
            }
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
            let value = if resumable {
                let value =
                    tus_upload(&rest, &spec, &file, &metadata, &file_name, len, &bar).await?;
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
                        .file_name(file_name),
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
