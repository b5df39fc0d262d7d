//! External scanner processes: how one attempt runs (content in as a tar stream, verdict out as
//! JSON, a timeout, capped output), supervised by the workers in the parent module. Nothing here
//! knows the registry; it reads content from the blob store only.

use std::io::{self, Read};
use std::time::Duration;

use custodian_core::Digest;
use custodian_scan::{Finding, Severity, Verdict};
use custodian_storage::{BlobStore, ByteRange};
use futures::TryStreamExt as _;
use tokio::io::AsyncReadExt as _;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::{Content, ExternalScanner};
use crate::registry::VersionRecord;

/// The most stdout an external scanner may write.
const MAX_SCANNER_OUTPUT: u64 = 4 << 20;

/// Opens a blob for blocking reads on the current runtime.
pub(super) fn open_blob(
    store: &BlobStore,
    handle: &tokio::runtime::Handle,
    digest: &Digest,
) -> io::Result<Box<dyn Read + Send>> {
    let read = handle
        .block_on(store.get(digest, ByteRange::ALL))
        .map_err(io::Error::other)?;
    let stream = read.data.map_err(io::Error::other);
    Ok(Box::new(SyncIoBridge::new_with_handle(
        StreamReader::new(stream),
        handle.clone(),
    )))
}

/// Runs one external scan attempt: `scanner` reads the content as a tar stream on stdin, straight
/// from custody, and answers with JSON on stdout, within `timeout`. The process is killed if it
/// overruns or the attempt is dropped.
pub(super) async fn run_external(
    store: &BlobStore,
    scanner: &ExternalScanner,
    record: &VersionRecord,
    target: Option<&str>,
    root: &str,
    content: Content,
    timeout: Duration,
) -> Result<(Verdict, Vec<Finding>), String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        // exec, so that killing the child kills the scanner, not just the shell.
        .arg(format!("exec {}", scanner.command))
        .env("CUSTODIAN_SCAN_NAME", &record.event.name)
        .env("CUSTODIAN_SCAN_VERSION", &record.event.version)
        .env("CUSTODIAN_SCAN_TARGET", target.unwrap_or("package"))
        .env("CUSTODIAN_SCAN_ROOT", root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("could not start {:?}: {e}", scanner.command))?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let store = store.clone();
    let handle = tokio::runtime::Handle::current();
    // The content goes in as a tar stream; a scanner that stops reading early just ends it.
    let feeder = tokio::task::spawn_blocking(move || -> io::Result<()> {
        let mut tar = tar::Builder::new(SyncIoBridge::new_with_handle(stdin, handle.clone()));
        for (path, digest, size) in content {
            let mut header = tar::Header::new_ustar();
            header.set_size(size);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            let reader = open_blob(&store, &handle, &digest)?;
            tar.append_data(&mut header, &path, reader)?;
        }
        tar.finish()?;
        tar.into_inner()?.shutdown()?;
        Ok(())
    });
    let run = async {
        // Both pipes are read to their end (what is over the limit is discarded), so a
        // scanner that logs a lot or answers too much never blocks on a full pipe.
        let (read_out, read_err, status) = tokio::join!(
            read_capped(&mut stdout, MAX_SCANNER_OUTPUT),
            read_capped(&mut stderr, 64 << 10),
            child.wait()
        );
        let (out, out_total) = read_out.map_err(|e| format!("reading its output: {e}"))?;
        let (err, _) = read_err.unwrap_or_default();
        let status = status.map_err(|e| format!("waiting for it: {e}"))?;
        if out_total > MAX_SCANNER_OUTPUT {
            return Err(format!(
                "it wrote {out_total} bytes of output, more than the {MAX_SCANNER_OUTPUT} allowed"
            ));
        }
        Ok::<_, String>((status, out, err))
    };
    let (status, out, err) = match tokio::time::timeout(timeout, run).await {
        Ok(result) => result?,
        Err(_) => {
            feeder.abort();
            return Err(format!(
                "it did not finish within {}; killed",
                humantime::format_duration(timeout)
            ));
        }
    };
    let _ = feeder.await;
    if !status.success() {
        let tail = String::from_utf8_lossy(&err);
        let tail: String = tail
            .chars()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(format!("it exited with {status}: {}", tail.trim()));
    }
    parse_external(&out)
}

/// Reads a pipe to its end, keeping the first `limit` bytes; returns them and the total read.
async fn read_capped(
    pipe: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: u64,
) -> std::io::Result<(Vec<u8>, u64)> {
    let mut kept = Vec::new();
    (&mut *pipe).take(limit).read_to_end(&mut kept).await?;
    let rest = tokio::io::copy(pipe, &mut tokio::io::sink()).await?;
    let total = kept.len() as u64 + rest;
    Ok((kept, total))
}

/// The finding that says why a scan ended in error (its verdict says that it did).
pub(super) fn scanner_error(message: String) -> Finding {
    Finding {
        file: String::new(),
        offset: 0,
        rule: "scanner.error".into(),
        severity: Severity::Info,
        message,
        count: 1,
    }
}

/// Reads an external scanner's answer: `{"verdict"?, "findings": [...]}` or a bare findings
/// array. The verdict is never weaker than the findings: a `high` finding flags.
fn parse_external(out: &[u8]) -> Result<(Verdict, Vec<Finding>), String> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Answer {
        Findings(Vec<RawFinding>),
        Object {
            #[serde(default)]
            verdict: Option<String>,
            #[serde(default)]
            findings: Vec<RawFinding>,
        },
    }
    #[derive(serde::Deserialize)]
    struct RawFinding {
        #[serde(default)]
        file: String,
        #[serde(default)]
        offset: u64,
        rule: String,
        severity: String,
        #[serde(default)]
        message: String,
    }
    let answer: Answer = serde_json::from_slice(out).map_err(|e| {
        format!(
            "its output is not a findings JSON object or array: {e} (output starts {:?})",
            String::from_utf8_lossy(&out[..out.len().min(120)])
        )
    })?;
    let (verdict, raw) = match answer {
        Answer::Findings(f) => (None, f),
        Answer::Object { verdict, findings } => (verdict, findings),
    };
    let mut findings = Vec::new();
    for f in raw {
        let severity = Severity::parse(&f.severity).ok_or_else(|| {
            format!(
                "finding {:?} has severity {:?}; expected info, low, medium, high or critical",
                f.rule, f.severity
            )
        })?;
        findings.push(Finding {
            file: f.file,
            offset: f.offset,
            rule: f.rule,
            severity,
            message: f.message,
            count: 1,
        });
    }
    let from_findings = if findings.iter().any(|f| f.severity >= Severity::High) {
        Verdict::Flagged
    } else {
        Verdict::Clean
    };
    let stated = match verdict.as_deref() {
        None => Verdict::Clean,
        Some(v) => Verdict::parse(v)
            .ok_or_else(|| format!("verdict {v:?} is not clean, flagged or error"))?,
    };
    Ok((stated.worst(from_findings), findings))
}
