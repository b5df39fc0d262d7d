//! Resumable upload sessions: one engine behind the gRPC resumable upload, the REST tus 1.0
//! uploads and the OCI front end's chunked uploads.
//!
//! A session keeps, in a staging area ([`crate::staging`]):
//!
//! - the bytes received so far;
//! - the CRC32C of each complete block of them;
//! - its state: who owns the session, what it expects, the committed length, and the hash
//!   state after exactly that many bytes ([`custodian_core::resumable::HashState`]).
//!
//! One daemon's sessions are directories `DIR/<id>/` (`data`, `crcs`, `state.json`,
//! `progress`); daemons sharing a database keep their sessions there, so any of them takes any
//! piece of any session. A piece is acknowledged only after its bytes are durable and the state
//! records them atomically (locally: write, sync, rename, sync the directory; shared: one
//! transaction), so after `kill -9` and a restart the session reports at least the length it
//! acknowledged. Bytes past what it reports (a piece cut off by the crash or by a dropped
//! connection) are cut away before the next piece. While a long piece streams in, the engine
//! records its progress every [`CHECKPOINT`] bytes, so that the daemon's crash loses little of
//! it, and makes it durable every [`DURABLE_EVERY`] bytes, so that a power loss loses at most
//! that much more; a piece whose connection drops keeps everything that arrived.
//!
//! Every byte is hashed once, as it arrives: the saved hash state continues where the last
//! acknowledged piece left it (only the unhashed tail, at most 64 KiB, is read back after a
//! restart). At the end the staged bytes are copied into custody by
//! [`BlobStore::commit_staged`], which checks each block against the CRC computed when it was
//! hashed; nothing is visible unless it matches what the client declared.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use custodian_core::resumable::{Blake3Part, HashState, ResumableDigests, Sha256Part};
use custodian_core::{BlobDigests, Digest};
use futures::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};

use crate::staging::{LocalStaging, StagedWriter, Staging};
use crate::store::Staged;
use crate::{BlobStore, Expectation, PutOutcome, StorageError};

/// How long an upload session may sit idle before it is removed, unless configured.
pub const DEFAULT_UPLOAD_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// While a piece streams in, its progress (the committed length and the hash state after it) is
/// recorded every this many bytes, each record made before the batch after it is written, so
/// that the daemon's crash does not undo it. A crash of the daemon costs a client what arrived
/// since the last record: the batch being written, the one arriving (`WRITE_BATCH` each), and
/// what the connection had in flight (over gRPC, a message being decoded and the server's 4 MiB
/// HTTP/2 stream window), 10–13 MiB as measured under load. While every checkpoint synced the
/// bytes, the batch whose sync was under way was lost too (15–18 MiB); with checkpoints every
/// 8 MiB synced while later batches were written it was up to 25 MiB, nearly all of the tenth
/// of a 256 MiB upload the resumable-upload test allows for three cuts (docs/storage.md,
/// "Acknowledging").
pub const CHECKPOINT: u64 = 4 << 20;

/// Of the checkpoints in the middle of a piece, one at least every this many bytes makes the
/// bytes durable; the others only record the progress so that the daemon's crash does not undo
/// it ([`StagedWriter::progress_then_write`]). A power loss may then cost a client up to this
/// much more of a piece than a crash would, and the first look at the session after a restart
/// reads back about this much to check the record against the bytes' CRCs. Syncing at every
/// checkpoint kept the write of each 4 MiB batch waiting for three syncs and a thread, and held
/// a streamed 1 GiB put to the pace of that chain (docs/performance.md).
pub const DURABLE_EVERY: u64 = 64 << 20;

/// How many bytes of a piece are gathered before they are hashed and written, however large the
/// chunks they came in. Each batch costs two hashing tasks and a write on the blocking pool, and
/// a thread woken for each: handing on every chunk of 256 KiB or more as a batch of its own (an
/// HTTP/1.1 body arrives in reads of up to 408 KiB) cost a 1 GiB REST upload 12% more of the
/// daemon's CPU than batches of 4 MiB (docs/performance.md). A batch is a list of the chunks, so
/// gathering large ones copies nothing.
const WRITE_BATCH: usize = 4 << 20;

/// Chunks smaller than this are copied together into one buffer; larger ones are kept as they
/// arrived (a batch is a list of them), so that the bytes a connection received are hashed and
/// written from where they lie. A client that sends tiny chunks still makes a batch of a few
/// buffers, not of thousands.
const KEEP_AS_IS: usize = 16 << 10;

/// The bytes of one batch, in order: chunks kept as they arrived and small ones gathered.
#[derive(Default)]
struct Batch {
    pieces: Vec<Bytes>,
    /// Small chunks being gathered, the batch's last piece once it is handed on.
    small: BytesMut,
    len: usize,
}

impl Batch {
    /// Adds a chunk; true if the batch is now due to be hashed and written.
    fn push(&mut self, chunk: Bytes) -> bool {
        self.len += chunk.len();
        if chunk.len() < KEEP_AS_IS {
            self.small.extend_from_slice(&chunk);
            return self.len >= WRITE_BATCH;
        }
        if !self.small.is_empty() {
            self.pieces.push(self.small.split().freeze());
        }
        self.pieces.push(chunk);
        self.len >= WRITE_BATCH
    }

    /// Hands the batch's pieces on and starts an empty one.
    fn take(&mut self) -> Vec<Bytes> {
        if !self.small.is_empty() {
            self.pieces.push(self.small.split().freeze());
        }
        self.len = 0;
        std::mem::take(&mut self.pieces)
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Reads `body` into `batch` until the batch is due or the body ends; true once it has ended,
/// with `failure` set if it broke. Large chunks are kept as they came: gathering them would copy
/// every byte once more into a fresh buffer.
async fn gather<S, E>(body: &mut S, batch: &mut Batch, failure: &mut Option<String>) -> bool
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    loop {
        match body.next().await {
            Some(Ok(chunk)) => {
                if batch.push(chunk) {
                    return false;
                }
            }
            Some(Err(e)) => {
                *failure = Some(e.to_string());
                return true;
            }
            None => return true,
        }
    }
}

/// Why an upload session operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// No such session for this owner: finished, cancelled, expired or never started.
    #[error(
        "upload {id:?} is not in progress (finished, cancelled, expired after being idle, or never started)"
    )]
    Unknown {
        /// The session id asked for.
        id: String,
    },
    /// A piece that does not start where the committed bytes end.
    #[error(
        "upload {id:?}: a piece at offset {offset} does not continue the {committed} bytes committed; resume at offset {committed}"
    )]
    OffsetMismatch {
        /// The session.
        id: String,
        /// Where the piece said it starts.
        offset: u64,
        /// The bytes committed so far.
        committed: u64,
    },
    /// More bytes than the session's declared size.
    #[error(
        "upload {id:?} declared {expected} bytes but would receive {actual}; nothing past byte {expected} was kept"
    )]
    TooLarge {
        /// The session.
        id: String,
        /// The declared size.
        expected: u64,
        /// The length the piece would have reached.
        actual: u64,
    },
    /// A piece's body ended with an error. The bytes that arrived before it were kept, unless
    /// the piece carried a check ([`UploadSessions::append_checked`]), which needs the whole
    /// piece: then none of it was.
    #[error("upload {id:?}: the piece's body ended early ({cause}); resume at offset {committed}")]
    BodyFailed {
        /// The session.
        id: String,
        /// What the body reported.
        cause: String,
        /// The bytes committed now: those that arrived before the failure, or, for a checked
        /// piece, none of the piece's.
        committed: u64,
    },
    /// The piece failed the check its request carried (e.g. a tus `Upload-Checksum`); none of
    /// it was kept.
    #[error("upload {id:?}: the piece was refused and none of it kept: {reason}")]
    PieceRejected {
        /// The session.
        id: String,
        /// What the check said.
        reason: String,
    },
    /// A request that makes no sense for this session.
    #[error("upload {id:?}: {reason}")]
    Invalid {
        /// The session.
        id: String,
        /// Why.
        reason: String,
    },
    /// The staging directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The custody store refused or failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A result of the upload engine.
pub type UploadResult<T> = std::result::Result<T, UploadError>;

fn now_ms() -> u64 {
    crate::store::now_unix_ms()
}

/// A check of one whole piece that its request carries, such as a tus `Upload-Checksum`: it
/// sees the piece's bytes as they arrive, and the piece is acknowledged only if it passes. A
/// checked piece is all or nothing, so it is not made durable part-way.
pub trait PieceCheck: Send {
    /// The next bytes of the piece.
    fn update(&mut self, bytes: &[u8]);
    /// Whether the piece is as its request said; the error says how it differs.
    fn verify(self: Box<Self>) -> Result<(), String>;
}

/// What is kept beside a session's bytes (as JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionState {
    pub(crate) owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expected_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expected_size: Option<u64>,
    pub(crate) committed: u64,
    /// [`HashState::to_bytes`] after `committed` bytes, in hex.
    pub(crate) hash_state: String,
    /// The CRC32C of the bytes of the incomplete last block.
    pub(crate) partial_crc: u32,
    pub(crate) block_size: u32,
    pub(crate) started_ms: u64,
    pub(crate) updated_ms: u64,
    #[serde(default)]
    pub(crate) metadata: BTreeMap<String, String>,
    /// Whether `committed` counts bytes not known to be durable: a progress record read back
    /// after a restart ([`StagedWriter::progress_then_write`]). Never stored.
    #[serde(skip)]
    pub(crate) unsynced: bool,
}

impl SessionState {
    /// The bytes acknowledged so far.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// When the session last received bytes (ms since the Unix epoch).
    pub fn updated_ms(&self) -> u64 {
        self.updated_ms
    }

    /// The block size the session's CRCs are computed over.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The state as stored.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("session state serializes")
    }

    /// The state from what [`SessionState::to_json`] stored.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A session as callers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session id (32 hex digits).
    pub id: String,
    /// Who may write to it: a principal, an OCI repository, … as the caller chose.
    pub owner: String,
    /// The bytes acknowledged so far: where the next piece starts.
    pub committed: u64,
    /// The digest the bytes must hash to, if declared at the start.
    pub expected_digest: Option<Digest>,
    /// The total length, if declared at the start.
    pub expected_size: Option<u64>,
    /// When the session started (ms since the Unix epoch).
    pub started_ms: u64,
    /// When it last received bytes (ms since the Unix epoch).
    pub updated_ms: u64,
    /// When it expires unless it receives more (ms since the Unix epoch).
    pub expires_ms: u64,
    /// What the caller stored with it (e.g. tus Upload-Metadata).
    pub metadata: BTreeMap<String, String>,
}

/// The live hash and CRC state of a session this process is feeding, valid while its length
/// equals the session's committed length.
struct Live {
    hasher: ResumableDigests,
    partial_crc: u32,
    /// Whether this process wrote every staged byte itself, from the buffers it hashed: then the
    /// staged file holds exactly what was hashed unless something outside the engine changed
    /// it, and the finish need not read it back (as it never reads back a mirror).
    from_start: bool,
}

/// A session's hash state while a piece streams in: idle, or hashing the latest batch on the
/// blocking pool, SHA-256 on one thread and BLAKE3 with the block CRCs on another. A batch is
/// hashed while it is written and the next one is received, so the connection, both hashes and
/// the file write overlap instead of taking turns; the state is needed back (settled) before
/// the next batch is hashed and before a checkpoint records it.
enum Hashing {
    /// Every byte received so far is hashed and its block CRCs are written.
    Idle(Live),
    /// A batch is being hashed.
    Busy {
        sha256: tokio::task::JoinHandle<Sha256Part>,
        /// BLAKE3's half, the CRC of the incomplete block, and the CRCs of the blocks the
        /// batch completed.
        blake3: tokio::task::JoinHandle<(Blake3Part, u32, Vec<u32>)>,
        from_start: bool,
    },
}

impl Hashing {
    /// Starts hashing `pieces`, which follow the bytes `live` has hashed.
    fn start(live: Live, pieces: Vec<Bytes>, block: u64) -> Self {
        let Live {
            hasher,
            mut partial_crc,
            from_start,
        } = live;
        let mut start = hasher.len();
        let (mut sha256, mut blake3) = hasher.split();
        let for_sha256 = pieces.clone();
        Hashing::Busy {
            sha256: tokio::task::spawn_blocking(move || {
                for piece in &for_sha256 {
                    sha256.update(piece);
                }
                sha256
            }),
            blake3: tokio::task::spawn_blocking(move || {
                let mut done = Vec::new();
                for piece in &pieces {
                    blake3.update(piece);
                    done.extend(block_crcs(start, block, &mut partial_crc, piece));
                    start += piece.len() as u64;
                }
                (blake3, partial_crc, done)
            }),
            from_start,
        }
    }

    /// Waits for the batch being hashed, if any, and writes the CRCs of the blocks it
    /// completed; returns the state after every byte received so far.
    async fn settle(self, id: &str, writer: &mut dyn StagedWriter) -> UploadResult<Live> {
        let (sha256, blake3, from_start) = match self {
            Hashing::Idle(live) => return Ok(live),
            Hashing::Busy {
                sha256,
                blake3,
                from_start,
            } => (sha256, blake3, from_start),
        };
        let failed = |reason: String| UploadError::Invalid {
            id: id.to_string(),
            reason: format!("the hashing task failed: {reason}"),
        };
        let (sha256, blake3) = tokio::join!(sha256, blake3);
        let sha256 = sha256.map_err(|e| failed(e.to_string()))?;
        let (blake3, partial_crc, done) = blake3.map_err(|e| failed(e.to_string()))?;
        let hasher = ResumableDigests::join(sha256, blake3).map_err(|e| failed(e.to_string()))?;
        writer.write_crcs(&done).await?;
        Ok(Live {
            hasher,
            partial_crc,
            from_start,
        })
    }
}

/// The blocks of a session this process has also written to a backend sink as they arrived, so
/// that finishing commits them instead of copying the staged file. Valid while it holds exactly
/// the committed bytes; the staged file stays the truth (after a restart, or any failure, the
/// finish copies from it).
struct Mirror {
    sink: Box<dyn crate::BlockSink>,
    next_block: u64,
    pending: BytesMut,
    block: usize,
}

impl Mirror {
    fn len(&self) -> u64 {
        self.next_block * self.block as u64 + self.pending.len() as u64
    }

    /// Writes the complete blocks `bytes` fills.
    async fn write(&mut self, mut bytes: Bytes) -> crate::Result<()> {
        while !bytes.is_empty() {
            if self.pending.is_empty() && bytes.len() >= self.block {
                let block = bytes.split_to(self.block);
                self.sink.write_block(self.next_block, block).await?;
                self.next_block += 1;
                continue;
            }
            let take = (self.block - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes.split_to(take));
            if self.pending.len() == self.block {
                let block = self.pending.split().freeze();
                self.sink.write_block(self.next_block, block).await?;
                self.next_block += 1;
            }
        }
        Ok(())
    }
}

/// The upload sessions of one staging area.
pub struct UploadSessions {
    staging: Arc<dyn Staging>,
    expiry: Duration,
    store: BlobStore,
    /// One lock per session id, so that two requests on one session never interleave.
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    live: std::sync::Mutex<HashMap<String, Live>>,
    mirrors: std::sync::Mutex<HashMap<String, Mirror>>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for UploadSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadSessions")
            .field("staging", &self.staging.describe())
            .finish_non_exhaustive()
    }
}

impl UploadSessions {
    /// The sessions committing into `store`: under `dir` (created if missing), or in the
    /// database when the store's index is shared with other daemons. Idle ones older than
    /// `expiry` are removed now and by each [`UploadSessions::sweep`].
    pub fn open(dir: &Path, expiry: Duration, store: BlobStore) -> UploadResult<Self> {
        let staging: Arc<dyn Staging> = match store.shared_state() {
            Some(shared) => shared.upload_staging(),
            None => Arc::new(LocalStaging::open(dir)?),
        };
        Ok(Self::open_in(staging, expiry, store))
    }

    /// The sessions in `staging`, committing into `store`.
    pub fn open_in(staging: Arc<dyn Staging>, expiry: Duration, store: BlobStore) -> Self {
        let sessions = UploadSessions {
            staging,
            expiry,
            store,
            locks: Default::default(),
            live: Default::default(),
            mirrors: Default::default(),
        };
        sessions.sweep();
        sessions
    }

    /// Whether other daemons share the sessions.
    pub fn shared(&self) -> bool {
        self.staging.shared()
    }

    /// How long an idle session lives.
    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    /// The store sessions commit into.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    fn check_id(id: &str) -> UploadResult<()> {
        // Ids are ours (hex); anything else names no session and must not become a path.
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(UploadError::Unknown { id: id.to_string() });
        }
        Ok(())
    }

    fn session_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks).entry(id.to_string()).or_default().clone()
    }

    fn forget(&self, id: &str) {
        lock(&self.locks).remove(id);
        lock(&self.live).remove(id);
        // A dropped sink discards its blocks.
        lock(&self.mirrors).remove(id);
    }

    /// The mirror of session `id` if it holds exactly `committed` bytes; a new one for a session
    /// that has none yet; none otherwise (the finish then copies from the staged file).
    async fn take_mirror(&self, id: &str, file: &SessionState) -> Option<Mirror> {
        if self.adopts_staged(id) {
            // The finish moves the staged file into custody: nothing to mirror.
            return None;
        }
        let existing = lock(&self.mirrors).remove(id);
        match existing {
            Some(mirror) if mirror.len() == file.committed => Some(mirror),
            Some(_) => None,
            None if file.committed == 0 => {
                let expect = Expectation {
                    digest: file.expected_digest.as_deref().and_then(|d| d.parse().ok()),
                    size: file.expected_size,
                };
                let sink = self.store.begin_blocks(&expect).await.ok()?;
                Some(Mirror {
                    sink,
                    next_block: 0,
                    pending: BytesMut::new(),
                    block: file.block_size as usize,
                })
            }
            None => None,
        }
    }

    /// Whether the finish of session `id` can move its staged file into custody rather than
    /// copy it: the bytes are then written once.
    fn adopts_staged(&self, id: &str) -> bool {
        self.staging
            .local_file(id)
            .is_some_and(|path| self.store.adopts_files(&path))
    }

    fn info(&self, id: &str, file: &SessionState) -> SessionInfo {
        SessionInfo {
            id: id.to_string(),
            owner: file.owner.clone(),
            committed: file.committed,
            expected_digest: file.expected_digest.as_deref().and_then(|d| d.parse().ok()),
            expected_size: file.expected_size,
            started_ms: file.started_ms,
            updated_ms: file.updated_ms,
            expires_ms: file.updated_ms + self.expiry.as_millis() as u64,
            metadata: file.metadata.clone(),
        }
    }

    async fn read_file(&self, id: &str, owner: &str) -> UploadResult<SessionState> {
        Self::check_id(id)?;
        let Some(file) = self.staging.load(id).await? else {
            return Err(UploadError::Unknown { id: id.to_string() });
        };
        // Another owner's session is answered exactly like one that does not exist.
        if file.owner != owner {
            return Err(UploadError::Unknown { id: id.to_string() });
        }
        if now_ms().saturating_sub(file.updated_ms) > self.expiry.as_millis() as u64 {
            let _ = self.staging.remove(id).await;
            self.forget(id);
            return Err(UploadError::Unknown { id: id.to_string() });
        }
        Ok(file)
    }

    /// Starts a session owned by `owner`, expecting `expect` (either part may be unknown until
    /// the end) and keeping `metadata` with it; returns it.
    pub async fn start(
        &self,
        owner: &str,
        expect: Expectation,
        metadata: BTreeMap<String, String>,
    ) -> UploadResult<SessionInfo> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| UploadError::Invalid {
            id: String::new(),
            reason: format!("no randomness for a session id: {e}"),
        })?;
        let id = hex::encode(raw);
        let now = now_ms();
        let file = SessionState {
            owner: owner.to_string(),
            expected_digest: expect.digest.map(|d| d.to_string()),
            expected_size: expect.size,
            committed: 0,
            hash_state: hex::encode(ResumableDigests::new().state().to_bytes()),
            partial_crc: 0,
            block_size: self.store.block_size() as u32,
            started_ms: now,
            updated_ms: now,
            metadata,
            unsynced: false,
        };
        self.staging.create(&id, &file).await?;
        Ok(self.info(&id, &file))
    }

    /// The session `id` of `owner`.
    pub async fn status(&self, owner: &str, id: &str) -> UploadResult<SessionInfo> {
        let session = self.session_lock(id);
        let _held = session.lock().await;
        let file = self.read_file(id, owner).await?;
        Ok(self.info(id, &file))
    }

    /// The live state if it holds exactly the committed bytes; else the saved state, restored
    /// with the unhashed tail read back from the staged bytes.
    async fn resume(&self, id: &str, file: &SessionState) -> UploadResult<Live> {
        if let Some(live) = lock(&self.live).remove(id)
            && live.hasher.len() == file.committed
        {
            return Ok(live);
        }
        let damaged = |reason: String| UploadError::Invalid {
            id: id.to_string(),
            reason: format!("its saved state is damaged ({reason}); start the upload again"),
        };
        let bytes = hex::decode(&file.hash_state).map_err(|e| damaged(e.to_string()))?;
        let state = HashState::from_bytes(&bytes).map_err(|e| damaged(e.to_string()))?;
        if state.total != file.committed {
            return Err(damaged("the hash state is for another length".into()));
        }
        let tail_len = HashState::tail_len(state.total);
        let tail = self
            .staging
            .read(id, state.total - tail_len, tail_len)
            .await?;
        let hasher = ResumableDigests::resume(&state, &tail).map_err(|e| damaged(e.to_string()))?;
        Ok(Live {
            hasher,
            partial_crc: file.partial_crc,
            from_start: file.committed == 0,
        })
    }

    /// Appends a piece to session `id` of `owner`. `offset`, if given, must equal the committed
    /// length. Returns the new committed length once the bytes are durable. If the body fails
    /// part-way, what arrived is kept (and reported in [`UploadError::BodyFailed`]), so the
    /// client resumes after it; bytes past a declared size are refused and not kept.
    ///
    /// The work runs as its own task: a server drops a request's future when its client goes
    /// away, and the bytes that arrived before that must still be made durable.
    pub async fn append<S, E>(
        self: &Arc<Self>,
        owner: &str,
        id: &str,
        offset: Option<u64>,
        body: S,
    ) -> UploadResult<SessionInfo>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.append_checked(owner, id, offset, body, None).await
    }

    /// [`UploadSessions::append`] with a check of the whole piece: if it fails
    /// ([`UploadError::PieceRejected`]), or the body breaks ([`UploadError::BodyFailed`], at the
    /// piece's start), none of the piece is kept.
    pub async fn append_checked<S, E>(
        self: &Arc<Self>,
        owner: &str,
        id: &str,
        offset: Option<u64>,
        body: S,
        check: Option<Box<dyn PieceCheck>>,
    ) -> UploadResult<SessionInfo>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let this = self.clone();
        let (owner, id_owned) = (owner.to_string(), id.to_string());
        tokio::spawn(async move {
            this.append_here(&owner, &id_owned, offset, body, check)
                .await
        })
        .await
        .unwrap_or_else(|e| {
            Err(UploadError::Invalid {
                id: id.to_string(),
                reason: format!("the upload task failed: {e}"),
            })
        })
    }

    async fn append_here<S, E>(
        &self,
        owner: &str,
        id: &str,
        offset: Option<u64>,
        body: S,
        mut check: Option<Box<dyn PieceCheck>>,
    ) -> UploadResult<SessionInfo>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let session = self.session_lock(id);
        let _held = session.lock().await;
        let mut file = self.read_file(id, owner).await?;
        if let Some(offset) = offset
            && offset != file.committed
        {
            return Err(UploadError::OffsetMismatch {
                id: id.to_string(),
                offset,
                committed: file.committed,
            });
        }
        let mut hashing = Hashing::Idle(self.resume(id, &file).await?);
        let mut mirror = self.take_mirror(id, &file).await;
        let block = u64::from(file.block_size);
        let mut writer = self.staging.writer(id, &file).await?;

        let mut body = body;
        let mut batch = Batch::default();
        let mut failure: Option<String> = None;
        let mut received = file.committed;
        // Where the bytes were last made durable, as far as this piece knows. A session resumed
        // from a progress record is durable only up to an earlier point, so its first
        // checkpoint is durable: a power loss then never costs more than `DURABLE_EVERY`,
        // however often the daemon crashed before it.
        let mut durable = (!file.unsynced).then_some(file.committed);
        let received_all = async {
            let mut ended = gather(&mut body, &mut batch, &mut failure).await;
            while !batch.is_empty() {
                let pieces = batch.take();
                let len: usize = pieces.iter().map(Bytes::len).sum();
                let reached = received + len as u64;
                if let Some(expected) = file.expected_size
                    && reached > expected
                {
                    // What came before this batch stays acknowledged below; this batch does not.
                    let err = UploadError::TooLarge {
                        id: id.to_string(),
                        expected,
                        actual: reached,
                    };
                    if check.is_none() {
                        let live = hashing.settle(id, &mut *writer).await?;
                        self.checkpoint(&mut *writer, &mut file, &live).await?;
                        lock(&self.live).insert(id.to_string(), live);
                        if let Some(mirror) = mirror.take() {
                            lock(&self.mirrors).insert(id.to_string(), mirror);
                        }
                    }
                    return Err(err);
                }
                received = reached;
                // The previous bytes were hashed while these arrived; a checkpoint needs their
                // state, and these bytes need it to go on from.
                let live = hashing.settle(id, &mut *writer).await?;
                // A checkpoint is due: it records the state before these bytes (all of them
                // written by now) just before they are written, while the next ones arrive, and
                // every `DURABLE_EVERY` bytes it makes them durable first.
                let previous = file.committed;
                let live_len = live.hasher.len();
                let due = live_len - previous >= CHECKPOINT && check.is_none();
                let sync = due && durable.is_none_or(|at| live_len - at >= DURABLE_EVERY);
                if due {
                    Self::record(&mut file, &live);
                }
                if sync {
                    durable = Some(live_len);
                }
                // These bytes are hashed on the blocking pool while they are written here and
                // the next ones arrive.
                hashing = Hashing::start(live, pieces.clone(), block);
                if let Some(check) = check.as_mut() {
                    for piece in &pieces {
                        check.update(piece);
                    }
                }
                let mirrored = async {
                    match mirror.as_mut() {
                        Some(m) => {
                            for piece in &pieces {
                                if m.write(piece.clone()).await.is_err() {
                                    return false;
                                }
                            }
                            true
                        }
                        None => true,
                    }
                };
                // The next batch is received while this one is written: the connection does not
                // wait for the disk. Measured on a 1 GiB upload, the loop had spent 1.5 s of its
                // 2.4 s waiting on writes and syncs with the connection unread.
                let next = async { ended || gather(&mut body, &mut batch, &mut failure).await };
                let written = async {
                    if sync {
                        writer
                            .checkpoint_then_write(&file, previous, pieces.clone())
                            .await
                    } else if due {
                        writer
                            .progress_then_write(&file, previous, pieces.clone())
                            .await
                    } else {
                        writer.write(pieces.clone()).await
                    }
                };
                let (written, mirrored, now_ended) =
                    futures::future::join3(written, mirrored, next).await;
                ended = now_ended;
                written?;
                if !mirrored {
                    // The backend refused a block: finish from the staged file instead.
                    mirror = None;
                }
            }
            Ok(hashing)
        }
        .await;
        let live = received_all?.settle(id, &mut *writer).await?;
        if let Some(check) = check {
            // All or nothing: the saved state stays at the piece's start, and the bytes
            // written past it are cut away before the next piece. A body that broke is not a
            // piece that failed its check (which a tus client is told with 460): the check was
            // never made, and the client is told to resume where the piece began.
            if let Some(cause) = failure {
                return Err(UploadError::BodyFailed {
                    id: id.to_string(),
                    cause,
                    committed: file.committed,
                });
            }
            if let Err(reason) = check.verify() {
                return Err(UploadError::PieceRejected {
                    id: id.to_string(),
                    reason,
                });
            }
        }
        self.checkpoint(&mut *writer, &mut file, &live).await?;
        lock(&self.live).insert(id.to_string(), live);
        if let Some(mirror) = mirror {
            lock(&self.mirrors).insert(id.to_string(), mirror);
        }
        if let Some(cause) = failure {
            return Err(UploadError::BodyFailed {
                id: id.to_string(),
                cause,
                committed: file.committed,
            });
        }
        Ok(self.info(id, &file))
    }

    /// Makes everything `live` has hashed durable and acknowledged.
    async fn checkpoint(
        &self,
        writer: &mut dyn StagedWriter,
        file: &mut SessionState,
        live: &Live,
    ) -> UploadResult<()> {
        if live.hasher.len() == file.committed {
            return Ok(());
        }
        let previous = file.committed;
        Self::record(file, live);
        writer.checkpoint(file, previous).await
    }

    /// Records in `file` what `live` has hashed, as the state a checkpoint makes durable.
    fn record(file: &mut SessionState, live: &Live) {
        file.committed = live.hasher.len();
        file.hash_state = hex::encode(live.hasher.state().to_bytes());
        file.partial_crc = live.partial_crc;
        file.updated_ms = now_ms();
    }

    /// Commits session `id` of `owner` into custody, expecting `expect` on top of what the
    /// session declared at its start. The session is removed whatever the outcome: a mismatch
    /// leaves nothing visible and nothing behind.
    pub async fn finish(
        &self,
        owner: &str,
        id: &str,
        expect: Expectation,
    ) -> UploadResult<PutOutcome> {
        let session = self.session_lock(id);
        let _held = session.lock().await;
        let file = self.read_file(id, owner).await?;
        let outcome = self.commit(id, &file, expect).await;
        let _ = self.staging.remove(id).await;
        drop(_held);
        self.forget(id);
        outcome
    }

    async fn commit(
        &self,
        id: &str,
        file: &SessionState,
        expect: Expectation,
    ) -> UploadResult<PutOutcome> {
        let declared = Expectation {
            digest: file.expected_digest.as_deref().and_then(|d| d.parse().ok()),
            size: file.expected_size,
        };
        let live = self.resume(id, file).await?;
        let written_here = live.from_start;
        let digests: BlobDigests = live.hasher.finalize();
        let block = u64::from(file.block_size);
        let mut block_crcs = self.staging.crcs(id, file.committed / block).await?;
        if !file.committed.is_multiple_of(block) {
            block_crcs.push(live.partial_crc);
        }
        let staged = Staged {
            digests,
            size: file.committed,
            block_size: file.block_size,
            block_crcs,
        };
        // Both are checked before a byte is copied, so a mismatch costs nothing.
        declared.check(&staged.digests, staged.size)?;
        expect.check(&staged.digests, staged.size)?;
        // The fast path: this process wrote every block to the backend as it arrived.
        let mirror = lock(&self.mirrors).remove(id);
        if let Some(mut mirror) = mirror.filter(|m| m.len() == file.committed) {
            let last = mirror.pending.split().freeze();
            let written = if last.is_empty() {
                Ok(())
            } else {
                mirror.sink.write_block(mirror.next_block, last).await
            };
            if written.is_ok() {
                return Ok(self
                    .store
                    .commit_blocks(mirror.sink, staged, &Expectation::default())
                    .await?);
            }
        }
        if let Some(path) = self.staging.local_file(id)
            && let Some(outcome) = self
                .store
                .commit_staged_file(staged.clone(), &Expectation::default(), &path, written_here)
                .await?
        {
            return Ok(outcome);
        }
        let blocks = self.staging.blocks(id, file.committed, block).await?;
        Ok(self
            .store
            .commit_staged(staged, &Expectation::default(), blocks)
            .await?)
    }

    /// Cancels session `id` of `owner`, removing its bytes.
    pub async fn cancel(&self, owner: &str, id: &str) -> UploadResult<()> {
        let session = self.session_lock(id);
        let _held = session.lock().await;
        self.read_file(id, owner).await?;
        self.staging.remove(id).await?;
        drop(_held);
        self.forget(id);
        Ok(())
    }

    /// Every session now, any owner (for operators, and for garbage collection's check that its
    /// grace period outlasts any upload). Blocks.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = self
            .staging
            .list_blocking()
            .into_iter()
            .filter_map(|s| s.state.map(|state| self.info(&s.id, &state)))
            .collect();
        out.sort_by(|a, b| a.started_ms.cmp(&b.started_ms).then(a.id.cmp(&b.id)));
        out
    }

    /// Removes every session idle for longer than the expiry, and any left without a readable
    /// state (a crash between creating it and writing its state). Returns how many. Blocks.
    pub fn sweep(&self) -> usize {
        let now = now_ms();
        let mut removed = 0;
        for session in self.staging.list_blocking() {
            let id = session.id;
            // A session a request holds right now is not idle.
            if lock(&self.locks)
                .get(&id)
                .is_some_and(|l| l.try_lock().is_err())
            {
                continue;
            }
            let stale = match session.state {
                Some(s) => now.saturating_sub(s.updated_ms) > self.expiry.as_millis() as u64,
                // A session without a state crashed while starting, unless it is one starting
                // right now.
                None => session
                    .idle
                    .is_some_and(|age| age > Duration::from_secs(60)),
            };
            if stale && self.staging.remove_blocking(&id) {
                self.forget(&id);
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "expired upload sessions removed");
        }
        removed
    }

    /// How many sessions exist now. Blocks.
    pub fn count(&self) -> usize {
        self.staging.list_blocking().len()
    }
}

/// Advances the CRC of the incomplete block by `bytes` (which start at byte `start` of the
/// blob); returns the CRCs of the blocks they complete.
fn block_crcs(start: u64, block: u64, partial: &mut u32, mut bytes: &[u8]) -> Vec<u32> {
    let mut done = Vec::new();
    let mut at = start;
    while !bytes.is_empty() {
        let room = (block - at % block) as usize;
        let take = room.min(bytes.len());
        *partial = crc32c::crc32c_append(*partial, &bytes[..take]);
        at += take as u64;
        bytes = &bytes[take..];
        if at.is_multiple_of(block) {
            done.push(std::mem::take(partial));
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;
    use custodian_core::Algorithm;

    fn store() -> BlobStore {
        BlobStore::new(Arc::new(MemoryBackend::new(1024)))
    }

    fn piece(bytes: &[u8]) -> futures::stream::Iter<std::vec::IntoIter<Result<Bytes, String>>> {
        futures::stream::iter(vec![Ok(Bytes::copy_from_slice(bytes))])
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// The sessions under `dir` over `store`, as a process opens them.
    fn sessions_in(dir: &std::path::Path, store: &BlobStore) -> Arc<UploadSessions> {
        Arc::new(UploadSessions::open(dir, DEFAULT_UPLOAD_EXPIRY, store.clone()).expect("open"))
    }

    /// The sessions under `dir` over `store`, and a session `owner` started there.
    async fn opened(
        dir: &std::path::Path,
        store: &BlobStore,
        owner: &str,
    ) -> (Arc<UploadSessions>, String) {
        let sessions = sessions_in(dir, store);
        let id = sessions
            .start(owner, Expectation::default(), BTreeMap::new())
            .await
            .expect("start")
            .id;
        (sessions, id)
    }

    #[tokio::test]
    async fn a_session_resumes_from_its_committed_length_after_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store();
        let bytes = data(200_000);
        let digest = Digest::of(Algorithm::Sha256, &bytes);
        let (sessions, id) = opened(dir.path(), &store, "alice").await;
        let info = sessions
            .append("alice", &id, Some(0), piece(&bytes[..70_001]))
            .await
            .expect("append");
        assert_eq!(info.committed, 70_001);
        // A piece that skips ahead, or another owner, changes nothing.
        assert!(matches!(
            sessions
                .append("alice", &id, Some(80_000), piece(&bytes[80_000..]))
                .await,
            Err(UploadError::OffsetMismatch {
                committed: 70_001,
                ..
            })
        ));
        assert!(matches!(
            sessions.status("mallory", &id).await,
            Err(UploadError::Unknown { .. })
        ));
        // A crash mid-piece leaves unacknowledged bytes; a new process (no live state) reports
        // the committed length, cuts them away, and continues the saved hash.
        drop(sessions);
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(&id).join("data"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"garbage"))
            .expect("torn tail");
        let sessions = Arc::new(
            UploadSessions::open(dir.path(), DEFAULT_UPLOAD_EXPIRY, store.clone()).expect("reopen"),
        );
        assert_eq!(
            sessions
                .status("alice", &id)
                .await
                .expect("status")
                .committed,
            70_001
        );
        sessions
            .append("alice", &id, Some(70_001), piece(&bytes[70_001..]))
            .await
            .expect("append");
        let outcome = sessions
            .finish(
                "alice",
                &id,
                Expectation {
                    digest: Some(digest),
                    size: Some(200_000),
                },
            )
            .await
            .expect("finish");
        assert_eq!(outcome.meta.size, 200_000);
        assert_eq!(outcome.meta.digests, BlobDigests::of(&bytes));
        let mut read = store
            .get(&digest, crate::ByteRange::ALL)
            .await
            .expect("get");
        let mut back = Vec::new();
        while let Some(b) = read.data.next().await {
            back.extend_from_slice(&b.expect("verified block"));
        }
        assert_eq!(back, bytes);
        assert_eq!(sessions.count(), 0);
    }

    /// The sessions under `dir` as a new process opens them, and what session `id` of "alice"
    /// reports as committed there.
    async fn reopened(
        dir: &std::path::Path,
        store: &BlobStore,
        id: &str,
    ) -> (Arc<UploadSessions>, u64) {
        let sessions = sessions_in(dir, store);
        let committed = sessions
            .status("alice", id)
            .await
            .expect("status")
            .committed;
        (sessions, committed)
    }

    /// Streams `bytes[from..sent]` into session `id` as a piece whose client then stalls, waits
    /// until the session records at least `at_least` bytes, and stops the piece as a crash of
    /// the daemon would (its task dropped mid-piece, nothing closing it).
    async fn stream_and_stop(
        sessions: &Arc<UploadSessions>,
        id: &str,
        bytes: &[u8],
        (from, sent): (usize, usize),
        at_least: u64,
    ) {
        let chunks: Vec<Result<Bytes, String>> = bytes[from..sent]
            .chunks(1 << 20)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let body = futures::stream::iter(chunks).chain(futures::stream::pending());
        let appending = {
            let (sessions, id) = (sessions.clone(), id.to_string());
            tokio::spawn(
                async move { sessions.append("alice", &id, Some(from as u64), body).await },
            )
        };
        // The listing shows the progress this process recorded, as `status` would once the
        // piece let go of the session.
        let committed = || {
            sessions
                .list()
                .into_iter()
                .find(|s| s.id == id)
                .map_or(0, |s| s.committed)
        };
        let waited = std::time::Instant::now();
        while committed() < at_least {
            assert!(
                waited.elapsed() < Duration::from_secs(30),
                "no checkpoint past {at_least} bytes landed while the piece streamed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        appending.abort();
        assert!(appending.await.expect_err("aborted").is_cancelled());
    }

    /// A long piece checkpoints while it streams (recording its progress, syncing nothing): a
    /// process stopped mid-piece leaves a prefix of at least the checkpoints that landed, which
    /// a new process checks against the bytes' CRCs and takes, and whose saved hash state goes
    /// on to the digest of the whole. The first checkpoint after such a restart is durable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_piece_stopped_mid_stream_keeps_its_checkpoints() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store();
        let bytes = data(5 * CHECKPOINT as usize + 12_345);
        let sent = 3 * CHECKPOINT as usize + (1 << 20);
        let (sessions, id) = opened(dir.path(), &store, "alice").await;
        stream_and_stop(&sessions, &id, &bytes, (0, sent), 2 * CHECKPOINT).await;
        drop(sessions);
        let (sessions, kept) = reopened(dir.path(), &store, &id).await;
        assert!(
            kept >= 2 * CHECKPOINT && kept <= sent as u64,
            "{kept} bytes kept of {sent} sent"
        );
        // Those bytes were never synced, so the next piece's first checkpoint is durable:
        // `state.json` moves past them.
        let durable = || {
            std::fs::read(dir.path().join(&id).join("state.json"))
                .ok()
                .and_then(|json| SessionState::from_json(&json).ok())
                .map_or(0, |s| s.committed)
        };
        assert!(durable() < kept);
        let again = kept as usize + 2 * CHECKPOINT as usize;
        stream_and_stop(
            &sessions,
            &id,
            &bytes,
            (kept as usize, again),
            kept + CHECKPOINT,
        )
        .await;
        assert!(
            durable() >= kept + CHECKPOINT,
            "the first checkpoint after a restart syncs"
        );
        drop(sessions);
        let (sessions, kept) = reopened(dir.path(), &store, &id).await;
        sessions
            .append("alice", &id, Some(kept), piece(&bytes[kept as usize..]))
            .await
            .expect("append the rest");
        let outcome = sessions
            .finish("alice", &id, Expectation::default())
            .await
            .expect("finish");
        assert_eq!(outcome.meta.digests, BlobDigests::of(&bytes));
    }

    /// What a power loss may do to the bytes a progress record counts (they were never synced):
    /// cut them short, zero some, or lose their CRCs. A new process then takes the session's
    /// last durable checkpoint (here the end of its first piece), never the record, and the
    /// upload still ends at the right digest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_progress_record_whose_bytes_were_lost_is_not_believed() {
        type Damage = fn(&std::path::Path, u64);
        let damages: [(&str, Damage); 3] = [
            ("bytes cut short", |dir, durable| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("data"))
                    .and_then(|f| f.set_len(durable + (1 << 20)))
                    .expect("cut");
            }),
            ("a page of bytes zeroed", |dir, durable| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("data"))
                    .expect("open");
                std::os::unix::fs::FileExt::write_all_at(&f, &[0; 4096], durable + 5_000_000)
                    .expect("zero");
            }),
            ("CRCs lost", |dir, durable| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("crcs"))
                    .and_then(|f| f.set_len(durable / 1024 * 4 + 40))
                    .expect("cut");
            }),
        ];
        for (what, damage) in damages {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = store();
            let bytes = data(5 * CHECKPOINT as usize + 12_345);
            let durable = 70_001;
            let (sessions, id) = opened(dir.path(), &store, "alice").await;
            sessions
                .append("alice", &id, Some(0), piece(&bytes[..durable]))
                .await
                .expect("first piece");
            let sent = 3 * CHECKPOINT as usize + (1 << 20);
            stream_and_stop(&sessions, &id, &bytes, (durable, sent), 2 * CHECKPOINT).await;
            drop(sessions);
            damage(&dir.path().join(&id), durable as u64);
            let (sessions, kept) = reopened(dir.path(), &store, &id).await;
            assert_eq!(kept, durable as u64, "{what}: the session resumes from");
            sessions
                .append("alice", &id, Some(kept), piece(&bytes[durable..]))
                .await
                .expect("append the rest");
            let outcome = sessions
                .finish("alice", &id, Expectation::default())
                .await
                .expect("finish");
            assert_eq!(outcome.meta.digests, BlobDigests::of(&bytes), "{what}");
        }
    }

    /// Upload sessions in a directory of their own (kept while the first value lives), and one
    /// session of owner "a" in them.
    async fn one_session() -> (tempfile::TempDir, Arc<UploadSessions>, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sessions = Arc::new(
            UploadSessions::open(dir.path(), DEFAULT_UPLOAD_EXPIRY, store()).expect("open"),
        );
        let id = sessions
            .start("a", Expectation::default(), BTreeMap::new())
            .await
            .expect("start")
            .id;
        (dir, sessions, id)
    }

    #[tokio::test]
    async fn a_failed_body_keeps_what_arrived() {
        let (_dir, sessions, id) = one_session().await;
        let body = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"hello ")),
            Err("connection reset".to_string()),
        ]);
        assert!(matches!(
            sessions.append("a", &id, Some(0), body).await,
            Err(UploadError::BodyFailed { committed: 6, .. })
        ));
        assert_eq!(
            sessions.status("a", &id).await.expect("status").committed,
            6
        );
    }

    #[tokio::test]
    async fn a_checked_piece_whose_body_fails_keeps_none_of_it() {
        let (_dir, sessions, id) = one_session().await;
        sessions
            .append("a", &id, Some(0), piece(b"abc"))
            .await
            .expect("the first piece");
        // The check would pass on the bytes that arrived: what refuses them is the break.
        let check = Box::new(Exactly(b"hello ".to_vec(), Vec::new()));
        let body = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"hello ")),
            Err("connection reset".to_string()),
        ]);
        assert!(matches!(
            sessions
                .append_checked("a", &id, Some(3), body, Some(check))
                .await,
            Err(UploadError::BodyFailed { committed: 3, .. })
        ));
        the_right_piece_follows(&sessions, &id).await;
    }

    /// Checks that session `id` of owner "a" holds only the 3 bytes before a refused piece, and
    /// that the right piece after it completes the upload as `abcdef`.
    async fn the_right_piece_follows(sessions: &Arc<UploadSessions>, id: &str) {
        assert_eq!(sessions.status("a", id).await.expect("status").committed, 3);
        sessions
            .append("a", id, Some(3), piece(b"def"))
            .await
            .expect("the right piece after a refused one");
        let outcome = sessions
            .finish("a", id, Expectation::default())
            .await
            .expect("finish");
        assert_eq!(outcome.meta.digests, BlobDigests::of(b"abcdef"));
    }

    struct Exactly(Vec<u8>, Vec<u8>);

    impl PieceCheck for Exactly {
        fn update(&mut self, bytes: &[u8]) {
            self.1.extend_from_slice(bytes);
        }
        fn verify(self: Box<Self>) -> Result<(), String> {
            if self.0 == self.1 {
                Ok(())
            } else {
                Err("not the expected bytes".into())
            }
        }
    }

    #[tokio::test]
    async fn a_piece_that_fails_its_check_is_not_kept() {
        let (_dir, sessions, id) = one_session().await;
        let good = Box::new(Exactly(b"abc".to_vec(), Vec::new()));
        sessions
            .append_checked("a", &id, Some(0), piece(b"abc"), Some(good))
            .await
            .expect("checked piece");
        let bad = Box::new(Exactly(b"def".to_vec(), Vec::new()));
        assert!(matches!(
            sessions
                .append_checked("a", &id, Some(3), piece(b"xyz"), Some(bad))
                .await,
            Err(UploadError::PieceRejected { .. })
        ));
        the_right_piece_follows(&sessions, &id).await;
    }

    #[tokio::test]
    async fn mismatches_and_overflows_leave_nothing_visible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store();
        let sessions = Arc::new(
            UploadSessions::open(dir.path(), DEFAULT_UPLOAD_EXPIRY, store.clone()).expect("open"),
        );
        let wrong = Digest::of(Algorithm::Sha256, b"other");
        let id = sessions
            .start("a", Expectation::default(), BTreeMap::new())
            .await
            .expect("start")
            .id;
        sessions
            .append("a", &id, None, piece(b"x"))
            .await
            .expect("append");
        let err = sessions
            .finish(
                "a",
                &id,
                Expectation {
                    digest: Some(wrong),
                    size: None,
                },
            )
            .await
            .expect_err("mismatch");
        assert!(matches!(
            err,
            UploadError::Storage(StorageError::DigestMismatch { .. })
        ));
        assert!(store.stat(&wrong).await.expect("stat").is_none());
        assert_eq!(sessions.count(), 0, "a failed finish leaves nothing behind");
        let sized = sessions
            .start(
                "a",
                Expectation {
                    digest: None,
                    size: Some(3),
                },
                BTreeMap::new(),
            )
            .await
            .expect("start")
            .id;
        assert!(matches!(
            sessions.append("a", &sized, None, piece(b"four")).await,
            Err(UploadError::TooLarge {
                expected: 3,
                actual: 4,
                ..
            })
        ));
        assert_eq!(
            sessions
                .status("a", &sized)
                .await
                .expect("status")
                .committed,
            0
        );
    }

    #[tokio::test]
    async fn staged_bytes_that_change_on_disk_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store();
        let sessions = Arc::new(
            UploadSessions::open(dir.path(), DEFAULT_UPLOAD_EXPIRY, store.clone()).expect("open"),
        );
        let bytes = data(5000);
        let id = sessions
            .start("a", Expectation::default(), BTreeMap::new())
            .await
            .expect("start")
            .id;
        sessions
            .append("a", &id, None, piece(&bytes))
            .await
            .expect("append");
        // A restart (a new engine, without this process's mirror of the blocks in the backend),
        // then one byte of the staged file flipped after it was hashed.
        drop(sessions);
        let sessions = Arc::new(
            UploadSessions::open(dir.path(), DEFAULT_UPLOAD_EXPIRY, store.clone()).expect("reopen"),
        );
        let path = dir.path().join(&id).join("data");
        let mut staged = std::fs::read(&path).expect("read");
        staged[10] ^= 1;
        std::fs::write(&path, staged).expect("write");
        let err = sessions
            .finish("a", &id, Expectation::default())
            .await
            .expect_err("damage found");
        assert!(matches!(
            err,
            UploadError::Storage(StorageError::Corrupt { .. })
        ));
        assert!(
            store
                .stat(&Digest::of(Algorithm::Sha256, &bytes))
                .await
                .expect("stat")
                .is_none()
        );
    }

    #[tokio::test]
    async fn idle_sessions_expire_with_their_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sessions =
            UploadSessions::open(dir.path(), Duration::from_millis(1), store()).expect("open");
        let id = sessions
            .start("r", Expectation::default(), BTreeMap::new())
            .await
            .expect("start")
            .id;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(sessions.sweep(), 1);
        assert_eq!(sessions.count(), 0);
        assert!(sessions.status("r", &id).await.is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// However a piece's chunks come, the batches hold its bytes in order; every chunk of
        /// at least `KEEP_AS_IS` bytes is handed on as it arrived (the same memory, not a
        /// copy); a batch is due once it holds `WRITE_BATCH`, never later.
        #[test]
        fn batches_hand_large_chunks_on_where_they_lie(
            sizes in proptest::collection::vec(
                proptest::prop_oneof![
                    0usize..64,
                    KEEP_AS_IS - 2..KEEP_AS_IS + 2,
                    WRITE_BATCH - 2..WRITE_BATCH + 2,
                    0usize..(1 << 20) + 9,
                ],
                0..24,
            )
        ) {
            let mut batch = Batch::default();
            let (mut sent, mut received) = (Vec::new(), Vec::new());
            let mut kept = Vec::new();
            let mut handed: Vec<Bytes> = Vec::new();
            for (i, size) in sizes.iter().enumerate() {
                let chunk = Bytes::from(vec![i as u8; *size]);
                sent.extend_from_slice(&chunk);
                if chunk.len() >= KEEP_AS_IS {
                    kept.push(chunk.as_ptr());
                }
                let before = batch.len;
                let due = batch.push(chunk);
                proptest::prop_assert_eq!(due, before + size >= WRITE_BATCH);
                if due {
                    handed.extend(batch.take());
                    proptest::prop_assert!(batch.is_empty());
                }
            }
            handed.extend(batch.take());
            for piece in &handed {
                received.extend_from_slice(piece);
            }
            proptest::prop_assert_eq!(received, sent);
            let pointers: Vec<*const u8> = handed.iter().map(|p| p.as_ptr()).collect();
            for pointer in kept {
                proptest::prop_assert!(pointers.contains(&pointer));
            }
        }
    }
}
