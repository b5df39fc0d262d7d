//! The built-in scan of a hosted data pack while it is being uploaded.
//!
//! Scanning after the upload read the whole data pack back from custody: for 1 GiB, 1.4 s on
//! this project's 2-core machine after a 3 s upload, with one core idle during the upload. A
//! [`StreamScan`] instead runs the same scanner on the blocking pool over the bytes the upload
//! receives, as they are staged, so the scan costs the second core and no extra read.
//!
//! The report is used only when the scanner saw exactly the bytes that were committed: the
//! upload hashes those same bytes and checks them against the declared digest before anything
//! is registered, so a report over them is a report over the data pack. Whenever that cannot be
//! known — a piece refused, a broken body, a restart, two requests racing on one session — the
//! stream scan is dropped and the data pack is scanned from custody as before.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use custodian_scan::{Limits, Report};
use futures::{Stream, StreamExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::registry::{Registry, VersionRecord};

/// Uploads scanned as they arrive at once; one more upload is scanned after it lands. Each holds
/// a blocking-pool thread (mostly waiting for bytes) and at most [`QUEUED_PIECES`] pieces of
/// about [`FEED_BATCH`] bytes, and one being gathered.
pub(crate) const MAX_STREAM_SCANS: usize = 4;

/// Pieces received but not yet scanned, per upload: if the scanner falls behind, the upload
/// waits for it instead of buffering.
const QUEUED_PIECES: usize = 4;

/// The chunks of an upload are handed to the scanner in lists of at least this many bytes, not
/// one by one: an HTTP/1.1 body arrives in reads of up to 408 KiB, and each hand-over wakes the
/// scanner's thread (2,600 times for 1 GiB, on the two cores the upload itself needs).
const FEED_BATCH: usize = 1 << 20;

/// A stream scan shared between an upload request and the body it reads.
pub(crate) type SharedScan = Arc<tokio::sync::Mutex<StreamScan>>;

/// A scan of one upload's bytes in the order they are staged.
pub(crate) struct StreamScan {
    /// `None` once the scanner stopped reading (it needed no more of the stream).
    pieces: Option<mpsc::Sender<Vec<Bytes>>>,
    /// Chunks fed and not yet handed to the scanner, and how many bytes they hold.
    gathered: Vec<Bytes>,
    gathered_len: usize,
    /// How many bytes it was given: the upload offset it covers up to.
    fed: u64,
    scanner: tokio::task::JoinHandle<Report>,
    last_fed: Instant,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for StreamScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamScan")
            .field("fed", &self.fed)
            .finish_non_exhaustive()
    }
}

impl StreamScan {
    /// How many bytes the scanner was given, from the upload's first byte.
    pub(crate) fn fed(&self) -> u64 {
        self.fed
    }

    /// Gives the scanner the next bytes of the upload, in lists of [`FEED_BATCH`] bytes, waiting
    /// while it is [`QUEUED_PIECES`] lists behind.
    pub(crate) async fn feed(&mut self, bytes: Bytes) {
        self.fed += bytes.len() as u64;
        self.last_fed = Instant::now();
        if self.pieces.is_none() {
            return;
        }
        self.gathered_len += bytes.len();
        self.gathered.push(bytes);
        if self.gathered_len >= FEED_BATCH {
            self.hand_over().await;
        }
    }

    /// Hands the gathered chunks to the scanner.
    async fn hand_over(&mut self) {
        let gathered = std::mem::take(&mut self.gathered);
        self.gathered_len = 0;
        if let Some(pieces) = &self.pieces
            && !gathered.is_empty()
            && pieces.send(gathered).await.is_err()
        {
            // The scanner returned early: it has its verdict and reads no more.
            self.pieces = None;
        }
    }

    /// Ends the stream and returns the scanner's report over what it was fed.
    pub(crate) async fn finish(mut self) -> Report {
        self.hand_over().await;
        self.pieces = None;
        (&mut self.scanner).await.unwrap_or_else(|e| Report {
            error: Some(format!("the scanner stopped: {e}")),
            ..Report::default()
        })
    }

    /// Unwraps a shared stream scan once no body holds it any more.
    pub(crate) fn unshare(scan: SharedScan) -> Option<StreamScan> {
        Arc::try_unwrap(scan)
            .ok()
            .map(tokio::sync::Mutex::into_inner)
    }

    /// Wraps an upload body so that every chunk it yields is fed to `scan` first. The caller
    /// compares [`StreamScan::fed`] with what the upload acknowledged before trusting it.
    pub(crate) fn tee<S, E>(
        scan: SharedScan,
        body: S,
    ) -> impl Stream<Item = Result<Bytes, E>> + Unpin + Send + 'static
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Send + 'static,
    {
        Box::pin(body.then(move |item| {
            let scan = scan.clone();
            async move {
                if let Ok(bytes) = &item {
                    scan.lock().await.feed(bytes.clone()).await;
                }
                item
            }
        }))
    }
}

/// A reader over the pieces an upload feeds, for the scanner's thread.
struct Pieces {
    receiver: mpsc::Receiver<Vec<Bytes>>,
    /// The rest of the list being read, and the chunk being read.
    queued: std::vec::IntoIter<Bytes>,
    current: Bytes,
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if let Some(next) = self.queued.next() {
                self.current = next;
                continue;
            }
            match self.receiver.blocking_recv() {
                Some(list) => self.queued = list.into_iter(),
                // The upload ended (or was dropped): the end of the stream.
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

impl StreamScan {
    /// Starts the built-in data-pack scan of a file named `name` whose bytes will be fed, with
    /// the PII rules at `pii`, holding `permit` until it is dropped.
    fn start(
        name: &str,
        pii: Option<custodian_scan::Severity>,
        permit: OwnedSemaphorePermit,
    ) -> StreamScan {
        let (sender, receiver) = mpsc::channel(QUEUED_PIECES);
        let name = name.to_string();
        let scanner = tokio::task::spawn_blocking(move || {
            let mut reader = Pieces {
                receiver,
                queued: Vec::new().into_iter(),
                current: Bytes::new(),
            };
            custodian_scan::package::scan_data_pack(&name, &mut reader, &Limits::default(), pii)
        });
        StreamScan {
            pieces: Some(sender),
            gathered: Vec::new(),
            gathered_len: 0,
            fed: 0,
            scanner,
            last_fed: Instant::now(),
            _permit: permit,
        }
    }
}

impl Registry {
    /// Starts the built-in data-pack scan of an upload for `record`'s version, as
    /// [`Registry::scan_data`] would run it over the stored file named `name`; `None` when
    /// [`MAX_STREAM_SCANS`] uploads are already being scanned (the data pack is then scanned from
    /// custody once it lands).
    pub(crate) async fn stream_scan(
        &self,
        record: &VersionRecord,
        name: &str,
        permits: &Arc<Semaphore>,
    ) -> Option<StreamScan> {
        let permit = permits.clone().try_acquire_owned().ok()?;
        let pii = self.pii_of(record).await;
        Some(StreamScan::start(name, pii, permit))
    }
}

/// The stream scans of resumable (tus) uploads between their requests, by session id.
#[derive(Debug)]
pub(crate) struct StreamScans {
    permits: Arc<Semaphore>,
    /// A session's scan is taken out while one of its requests feeds it, so a second request
    /// racing on the same session finds none and cannot interleave bytes into it.
    sessions: Mutex<HashMap<String, SharedScan>>,
    /// Scans not fed for this long belong to abandoned sessions and are dropped.
    idle: Duration,
}

impl StreamScans {
    /// No scans yet; a scan unfed for `idle` is dropped.
    pub(crate) fn new(idle: Duration) -> Self {
        StreamScans {
            permits: Arc::new(Semaphore::new(MAX_STREAM_SCANS)),
            sessions: Mutex::new(HashMap::new()),
            idle,
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, SharedScan>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The permits stream scans take.
    pub(crate) fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    /// Keeps `scan` for session `id` between requests, dropping scans of abandoned sessions.
    pub(crate) fn keep(&self, id: &str, scan: SharedScan) {
        let mut sessions = self.sessions();
        let idle = self.idle;
        sessions.retain(|_, s| s.try_lock().map_or(true, |s| s.last_fed.elapsed() < idle));
        sessions.insert(id.to_string(), scan);
    }

    /// Takes session `id`'s scan out, if it has one.
    pub(crate) fn take(&self, id: &str) -> Option<SharedScan> {
        self.sessions().remove(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_scan::Severity;

    /// JSON Lines with the EICAR signature twice and an e-mail address, the first signature
    /// across `boundary`.
    fn content(boundary: usize) -> Vec<u8> {
        let eicar = custodian_scan::content::EICAR;
        let mut out = Vec::new();
        let mut row = 0;
        while out.len() + 40 < boundary - eicar.len() / 2 {
            out.extend_from_slice(format!("{{\"text\": \"row {row}\"}}\n").as_bytes());
            row += 1;
        }
        out.resize(boundary - eicar.len() / 2, b' ');
        out.extend_from_slice(eicar.as_bytes());
        out.extend_from_slice(b"\n{\"contact\": \"jane.doe@acme-mail.co.uk\"}\n");
        for row in 0..5000 {
            out.extend_from_slice(format!("{{\"text\": \"more {row}\"}}\n").as_bytes());
        }
        out.extend_from_slice(eicar.as_bytes());
        out.push(b'\n');
        out
    }

    async fn streamed(bytes: &[u8], cuts: &[usize], pii: Option<Severity>) -> Report {
        let permits = Arc::new(Semaphore::new(1));
        let permit = permits.clone().try_acquire_owned().expect("a permit");
        let mut scan = StreamScan::start("train.jsonl", pii, permit);
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            scan.feed(Bytes::copy_from_slice(&bytes[at..cut])).await;
            at = cut;
        }
        assert_eq!(scan.fed(), bytes.len() as u64);
        let report = scan.finish().await;
        assert_eq!(permits.available_permits(), 1, "the permit comes back");
        report
    }

    /// However the upload's bytes are cut into pieces, the scan of the stream is the scan of
    /// the stored file, findings and offsets included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_streamed_scan_reports_what_the_scan_of_the_whole_file_reports() {
        let boundary = 1 << 20;
        let bytes = content(boundary);
        for pii in [None, Some(Severity::High)] {
            let whole = custodian_scan::package::scan_data_pack(
                "train.jsonl",
                &mut bytes.as_slice(),
                &Limits::default(),
                pii,
            );
            assert_eq!(whole.verdict(), custodian_scan::Verdict::Flagged);
            let eicar = whole.findings.iter().find(|f| f.rule == "malware.eicar");
            assert_eq!(eicar.map(|f| f.count), Some(2), "{whole:?}");
            assert_eq!(
                whole.findings.iter().any(|f| f.rule.starts_with("pii.")),
                pii.is_some(),
                "{whole:?}"
            );
            // Pieces of 70,000 bytes make several lists for the scanner and a last one
            // handed over only when the stream ends.
            let even: Vec<usize> = (70_000..bytes.len()).step_by(70_000).collect();
            let splits: [&[usize]; 6] = [
                &[],
                &[boundary],
                &[1, boundary - 1, boundary, boundary + 1],
                &[4096, 65536, 300_000, boundary + 7, bytes.len() - 3],
                &[bytes.len()],
                &even,
            ];
            for cuts in splits {
                assert_eq!(
                    streamed(&bytes, cuts, pii).await,
                    whole,
                    "cut at {cuts:?}, pii {pii:?}"
                );
            }
        }
    }

    /// An upload that stops feeding (a broken body, a refused piece) lets its scan finish over
    /// what it got, and the caller throws that report away; a scan whose reader is gone never
    /// holds the upload up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn feeding_never_blocks_on_a_scanner_that_has_finished() {
        let permits = Arc::new(Semaphore::new(1));
        let permit = permits.clone().try_acquire_owned().expect("a permit");
        // A scanner that has stopped reading: its end of the queue is gone.
        let (sender, receiver) = mpsc::channel(QUEUED_PIECES);
        drop(receiver);
        let mut scan = StreamScan {
            pieces: Some(sender),
            gathered: Vec::new(),
            gathered_len: 0,
            fed: 0,
            scanner: tokio::task::spawn_blocking(Report::default),
            last_fed: Instant::now(),
            _permit: permit,
        };
        let chunk = FEED_BATCH / 4 + 1;
        let fed = QUEUED_PIECES * 4 * 4;
        for _ in 0..fed {
            tokio::time::timeout(
                Duration::from_secs(5),
                scan.feed(Bytes::from(vec![0u8; chunk])),
            )
            .await
            .expect("a feed returns");
        }
        assert_eq!(scan.fed(), (fed * chunk) as u64);
        assert!(scan.pieces.is_none(), "the closed queue is let go");
        assert_eq!(scan.finish().await, Report::default());
        assert_eq!(permits.available_permits(), 1);
    }
}
