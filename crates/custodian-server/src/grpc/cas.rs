//! `custodian.cas.v1.ContentStore`: blob custody over gRPC.

use std::pin::Pin;

use bytes::Bytes;
use custodian_proto::cas::v1 as pb;
use custodian_proto::cas::v1::content_store_server::ContentStore;
use custodian_storage::uploads::{SessionInfo, UploadSessions};
use custodian_storage::{BlobMeta, BlobStore, ByteRange, Expectation, StorageError};
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::{Request, Response, Status, Streaming};

use std::sync::Arc;

use custodian_core::{Algorithm, Digest};

use crate::auth::{Authenticator, Principal, Scope};
use crate::grpc::digest_list::DigestList;
use crate::grpc::status::principal;
use crate::grpc::status::{GrpcError, parse_digest, parse_digest_in_batch, parse_optional_digest};
use crate::registry::Registry;
use crate::retention::{Collector, GcOptions, GcReport};

/// The largest data payload of one streamed Get message.
const GET_MESSAGE_BYTES: usize = 1 << 20;

/// Limits the content store enforces and advertises.
#[derive(Clone, Copy, Debug)]
pub struct CasLimits {
    /// The most data bytes in one BatchPut or BatchGet call.
    pub max_batch_total_size_bytes: u64,
    /// The largest gRPC message accepted.
    pub max_message_size_bytes: usize,
    /// An upload that sends nothing for this long is abandoned (slow-loris uploads), on the
    /// gRPC Put stream and the REST hosted upload alike.
    pub upload_idle_timeout: std::time::Duration,
}

impl Default for CasLimits {
    fn default() -> Self {
        CasLimits {
            max_batch_total_size_bytes: 4 << 20,
            max_message_size_bytes: 8 << 20,
            upload_idle_timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// The next message of a client stream, or DEADLINE_EXCEEDED when none arrives within `idle`:
/// an upload that trickles (slow-loris) or stalls is abandoned, and its writer dropped, so it
/// holds no storage or memory for longer than that.
async fn next_message<T>(
    stream: &mut (impl Stream<Item = Result<T, Status>> + Unpin),
    idle: std::time::Duration,
) -> Result<Option<T>, Status> {
    match tokio::time::timeout(idle, stream.next()).await {
        Ok(next) => next.transpose(),
        Err(_) => Err(idle_upload(idle)),
    }
}

/// The refusal of an upload stream that sent no complete message for `idle`.
fn idle_upload(idle: std::time::Duration) -> Status {
    Status::deadline_exceeded(format!(
        "no complete upload message arrived for {} s (serve --upload-idle-timeout); the upload is discarded",
        idle.as_secs_f64()
    ))
}

/// The bytes of a `WriteUpload` stream after its header, piece by piece, as the upload engine
/// takes them. The stream ends at the first broken or idle message, or a second header, with
/// that error as its last item: the engine keeps everything before it.
struct UploadPieces {
    stream: UploadMessages<pb::UploadWriteHeader>,
    /// The rest of the latest message's pieces.
    pending: std::vec::IntoIter<Bytes>,
    idle: std::time::Duration,
    /// Runs out `idle` after the stream was first found without a message to give.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Whether the timer runs: the stream had no message when last asked.
    waiting: bool,
    done: bool,
}

impl Stream for UploadPieces {
    type Item = Result<Bytes, String>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            if let Some(piece) = self.pending.next() {
                return Poll::Ready(Some(Ok(piece)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let failure = match self.stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(message))) => {
                    self.waiting = false;
                    match message {
                        UploadMessage::Chunk(pieces) => {
                            self.pending = pieces.into_iter();
                            continue;
                        }
                        UploadMessage::Empty => continue,
                        UploadMessage::Header(_) => "a second header arrived after data: only the first message may be a header".to_string(),
                    }
                }
                Poll::Ready(Some(Err(status))) => status.message().to_string(),
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    // As `next_message`: the idle time counts from when a message is awaited,
                    // not while the engine is busy with the previous one.
                    if !self.waiting {
                        self.waiting = true;
                        let deadline = tokio::time::Instant::now() + self.idle;
                        self.timer.as_mut().reset(deadline);
                    }
                    match self.timer.as_mut().poll(cx) {
                        Poll::Ready(()) => idle_upload(self.idle).message().to_string(),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            };
            self.done = true;
            return Poll::Ready(Some(Err(failure)));
        }
    }
}

/// The ContentStore service over a [`BlobStore`].
///
/// Writes need a token with the publish scope. Reads answer for a blob only if the caller may
/// read it (see [`Registry::blob_readable`]); for any other blob every call answers exactly as
/// for a digest that is not in custody, so a private blob's existence is never revealed.
#[derive(Clone)]
pub struct CasService {
    store: BlobStore,
    uploads: Arc<UploadSessions>,
    collector: Arc<Collector>,
    gc_grace: std::time::Duration,
    limits: CasLimits,
    registry: Arc<Registry>,
    auth: Arc<Authenticator>,
    /// The local put socket announced in `Capabilities`, if the daemon has one.
    local_put_socket: Option<std::path::PathBuf>,
    /// A random value chosen at start that local put requests repeat, so that a request meant
    /// for this daemon is never taken by another one with a socket at the same path.
    local_put_instance: String,
}

impl CasService {
    /// A service over `store` with `limits`, deciding access with `auth` and `registry`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: BlobStore,
        uploads: Arc<UploadSessions>,
        collector: Arc<Collector>,
        gc_grace: std::time::Duration,
        limits: CasLimits,
        registry: Arc<Registry>,
        auth: Arc<Authenticator>,
    ) -> Self {
        CasService {
            store,
            uploads,
            collector,
            gc_grace,
            limits,
            registry,
            auth,
            local_put_socket: None,
            local_put_instance: random_instance(),
        }
    }

    /// The value local put requests must repeat ([`Self::local_put_instance`]).
    pub(crate) fn local_put_instance(&self) -> &str {
        &self.local_put_instance
    }

    /// The same service announcing the local put socket at `path` (absolute) in its
    /// capabilities.
    pub fn with_local_put_socket(mut self, path: Option<&std::path::Path>) -> Self {
        self.local_put_socket = path.map(std::path::Path::to_path_buf);
        self
    }

    /// The registry the service decides access with.
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Who presented the bearer token or basic credentials in `authorization`.
    pub(crate) fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    /// The store the service keeps custody in.
    pub(crate) fn store(&self) -> &BlobStore {
        &self.store
    }

    /// The service's limits.
    pub(crate) fn limits(&self) -> &CasLimits {
        &self.limits
    }

    /// The principal of an `authorization` value (`Bearer <token>`, or none), if it may upload.
    pub(crate) fn uploader(&self, authorization: Option<&str>) -> Result<Principal, Status> {
        may_upload(self.auth.authenticate(authorization)?)
    }

    /// What a put answers once committed. Whether someone else already stored these bytes is
    /// not the uploader's business unless it may read them.
    pub(crate) fn put_response(
        &self,
        who: &Principal,
        outcome: &custodian_storage::PutOutcome,
    ) -> pb::PutResponse {
        pb::PutResponse {
            blob: Some(blob_info(&outcome.meta)),
            already_present: outcome.already_present && self.readable(who, &outcome.meta),
        }
    }

    pub(crate) fn writer<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        may_upload(principal(&self.auth, request)?)
    }

    /// True if `who` may read the blob with metadata `meta`.
    fn readable(&self, who: &Principal, meta: &BlobMeta) -> bool {
        who.allows_everywhere(Scope::Read) || self.registry.blob_readable(who, &meta.digests.sha256)
    }

    /// True if `who` may read the blob with this digest, if it exists (stats blake3 digests).
    async fn digest_readable(&self, who: &Principal, digest: &Digest) -> Result<bool, Status> {
        if who.allows_everywhere(Scope::Read) {
            return Ok(true);
        }
        if digest.algorithm() == Algorithm::Sha256 {
            return Ok(self.registry.blob_readable(who, digest));
        }
        Ok(
            match self.store.stat(digest).await.map_err(GrpcError::from)? {
                Some(meta) => self.readable(who, &meta),
                None => true,
            },
        )
    }

    /// Whether each of `digests` is in custody for `who`, in order: blobs the caller may not
    /// read are reported missing, as if they were not in custody.
    async fn present_to(&self, who: &Principal, digests: &[Digest]) -> Result<Vec<bool>, Status> {
        let mut present = self.store.present(digests).await.map_err(GrpcError::from)?;
        if !who.allows_everywhere(Scope::Read) {
            for (digest, present) in digests.iter().zip(present.iter_mut()) {
                if *present && !self.digest_readable(who, digest).await? {
                    *present = false;
                }
            }
        }
        Ok(present)
    }

    /// `FindMissing` as the daemon serves it (`cas_get::ContentStoreRoutes`): the digests parsed
    /// where they lay in the request, the missing ones formatted into the answer as it is
    /// written. The generated service's `find_missing` answers the same.
    pub(super) async fn find_missing_read(
        &self,
        request: Request<DigestList>,
    ) -> Result<Response<DigestList>, Status> {
        let who = principal(&self.auth, &request)?;
        let query = request.into_inner();
        if let Some((i, text)) = query.refused {
            let field = format!("digests[{i}]");
            return Err(match parse_digest(&field, &text) {
                Err(status) => status,
                // Never reached: an entry is refused for not parsing, or for not being UTF-8,
                // and its lossy text then holds U+FFFD. Should one parse, it is still refused.
                Ok(_) => Status::invalid_argument(format!("field {field}: not UTF-8 text")),
            });
        }
        let present = self.present_to(&who, &query.digests).await?;
        Ok(Response::new(DigestList {
            digests: missing(query.digests, present),
            refused: None,
        }))
    }
}

/// The items whose `present` is false, in order: what `FindMissing` answers.
fn missing<T>(items: Vec<T>, present: Vec<bool>) -> Vec<T> {
    items
        .into_iter()
        .zip(present)
        .filter(|(_, present)| !present)
        .map(|(item, _)| item)
        .collect()
}

/// 128 random bits in hex; without randomness (never seen on Linux) the time and process id,
/// which still tell two daemons apart.
fn random_instance() -> String {
    let mut random = [0u8; 16];
    match getrandom::fill(&mut random) {
        Ok(()) => hex::encode(random),
        Err(_) => format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ),
    }
}

/// `who`, if it may upload blobs (the publish scope).
fn may_upload(who: Principal) -> Result<Principal, Status> {
    if who.has_scope(Scope::Publish) {
        return Ok(who);
    }
    Err(match who {
        Principal::Anonymous => Status::unauthenticated(
            "uploading blobs needs a token with the publish scope: send authorization: Bearer <token>",
        ),
        Principal::Token(_) => Status::permission_denied(format!(
            "{} may not upload blobs: it has no publish scope",
            who.label()
        )),
    })
}

/// What a caller who may not read a blob is told: exactly what it would be told if the blob
/// were not in custody.
fn hidden(digest: &Digest) -> Status {
    GrpcError::Storage(StorageError::NotFound { digest: *digest }).into()
}

/// NOT_FOUND for a blob not in custody; for one that was deleted, the message says by which
/// ledger entry, when and why (the entry is public, so this reveals nothing the log does not).
async fn absent(registry: &Registry, digest: &Digest) -> Status {
    match registry.tombstone(digest).await {
        Some(t) => Status::not_found(format!(
            "blob {digest} was deleted from custody at ledger entry {} ({}: {}); it is gone",
            t.index,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.time_ms)
            ),
            t.reason
        )),
        None => hidden(digest),
    }
}

fn gc_answer(report: &GcReport) -> pb::CollectGarbageResponse {
    pb::CollectGarbageResponse {
        examined: report.examined,
        kept: report.kept,
        in_grace: report.in_grace,
        spared: report.spared,
        deleted_bytes: report.deleted_bytes,
        deleted_count: report.deleted_count,
        deleted: report
            .deleted
            .iter()
            .map(|(digest, size)| pb::DeletedBlobInfo {
                digest: digest.to_string(),
                size: *size,
            })
            .collect(),
        ledger_indexes: report.entries.clone(),
        finished_earlier: report.finished_earlier,
        dry_run: report.dry_run,
    }
}

/// The wire form of blob metadata.
pub fn blob_info(meta: &BlobMeta) -> pb::BlobInfo {
    pb::BlobInfo {
        sha256: meta.digests.sha256.to_string(),
        blake3: meta.digests.blake3.to_string(),
        size: meta.size,
        created_at: Some(timestamp(meta.created_unix_ms)),
    }
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// The wire form of an upload session.
fn upload_status(info: &SessionInfo) -> pb::UploadStatus {
    pb::UploadStatus {
        upload_id: info.id.clone(),
        committed_size: info.committed,
        expected_digest: info
            .expected_digest
            .map(|d| d.to_string())
            .unwrap_or_default(),
        expected_size: info.expected_size,
        expires_at: Some(timestamp(info.expires_ms)),
    }
}

/// The owner of a caller's upload sessions: its token, so no other token can see or feed them.
fn upload_owner(who: &Principal) -> String {
    format!("token:{}", who.label())
}

fn item_error(status: &Status) -> pb::ItemError {
    pb::ItemError {
        code: status.code() as i32,
        message: status.message().to_string(),
    }
}

type GetStream = Pin<Box<dyn Stream<Item = Result<pb::GetResponse, Status>> + Send>>;
type ListBlobsStream = Pin<Box<dyn Stream<Item = Result<pb::ListBlobsResponse, Status>> + Send>>;

/// Blobs per message of a custody listing.
const LIST_PAGE: u64 = 1000;

/// One message of an upload stream (`Put` or `WriteUpload`), however it was received: by
/// tonic's generated service, or where its HTTP/2 frames lie ([`super::cas_upload`]).
pub enum UploadMessage<H> {
    /// The stream's header (its first message, and only the first).
    Header(H),
    /// The next bytes, in one or more pieces.
    Chunk(Vec<Bytes>),
    /// A message with neither field set, which adds nothing.
    Empty,
}

/// The messages of an upload stream; the stream ends at the first error.
pub type UploadMessages<H> =
    Pin<Box<dyn Stream<Item = Result<UploadMessage<H>, Status>> + Send + 'static>>;

impl CasService {
    /// `Put` for `who`, from its messages.
    pub(crate) async fn put_from(
        &self,
        who: Principal,
        mut stream: UploadMessages<pb::PutHeader>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let idle = self.limits.upload_idle_timeout;
        let header = match next_message(&mut stream, idle).await? {
            Some(UploadMessage::Header(header)) => header,
            Some(UploadMessage::Chunk(_)) => {
                return Err(Status::invalid_argument(
                    "the first Put message must be a header (field header), not a chunk",
                ));
            }
            Some(UploadMessage::Empty) | None => {
                return Err(Status::invalid_argument(
                    "Put stream ended before its header: send a PutHeader first",
                ));
            }
        };
        let expect = Expectation {
            digest: parse_optional_digest("header.expected_digest", &header.expected_digest)?,
            size: header.expected_size,
        };
        let mut writer = self
            .store
            .begin_put(expect)
            .await
            .map_err(GrpcError::from)?;
        // If the client disconnects, the stream fails and the writer is dropped here: the
        // upload is discarded and nothing becomes visible.
        while let Some(message) = next_message(&mut stream, idle).await? {
            match message {
                UploadMessage::Chunk(pieces) => {
                    for piece in pieces {
                        writer.write(piece).await.map_err(GrpcError::from)?;
                    }
                }
                UploadMessage::Header(_) => {
                    return Err(Status::invalid_argument(
                        "a second Put header arrived after data: only the first message may be a header",
                    ));
                }
                UploadMessage::Empty => {}
            }
        }
        let outcome = writer.commit().await.map_err(GrpcError::from)?;
        tracing::debug!(digest = %outcome.meta.sha256(), size = outcome.meta.size, already_present = outcome.already_present, "put");
        Ok(Response::new(self.put_response(&who, &outcome)))
    }

    /// `WriteUpload` for `who`, from its messages.
    pub(crate) async fn write_upload_from(
        &self,
        who: Principal,
        mut stream: UploadMessages<pb::UploadWriteHeader>,
    ) -> Result<Response<pb::UploadStatus>, Status> {
        let idle = self.limits.upload_idle_timeout;
        let header = match next_message(&mut stream, idle).await? {
            Some(UploadMessage::Header(header)) => header,
            Some(UploadMessage::Chunk(_)) => {
                return Err(Status::invalid_argument(
                    "the first WriteUpload message must be a header (field header) naming upload_id and write_offset, not a chunk",
                ));
            }
            Some(UploadMessage::Empty) | None => {
                return Err(Status::invalid_argument(
                    "WriteUpload stream ended before its header: send an UploadWriteHeader first",
                ));
            }
        };
        // The stream's chunks, piece by piece, ending at the first broken or idle message: the
        // engine keeps everything before it.
        let chunks = UploadPieces {
            stream,
            pending: Vec::new().into_iter(),
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
            done: false,
        };
        let info = self
            .uploads
            .append(
                &upload_owner(&who),
                &header.upload_id,
                Some(header.write_offset),
                Box::pin(chunks),
            )
            .await
            .map_err(GrpcError::from)?;
        Ok(Response::new(upload_status(&info)))
    }
}

#[tonic::async_trait]
impl ContentStore for CasService {
    async fn get_capabilities(
        &self,
        _request: Request<pb::GetCapabilitiesRequest>,
    ) -> Result<Response<pb::Capabilities>, Status> {
        Ok(Response::new(pb::Capabilities {
            max_batch_total_size_bytes: self.limits.max_batch_total_size_bytes,
            max_message_size_bytes: self.limits.max_message_size_bytes as u64,
            block_size_bytes: self.store.block_size() as u64,
            digest_algorithms: vec!["sha256".into(), "blake3".into()],
            backend: self.store.backend_name().into(),
            server_version: env!("CARGO_PKG_VERSION").into(),
            local_put_socket: self
                .local_put_socket
                .as_ref()
                .map(|path| path.display().to_string())
                .unwrap_or_default(),
            local_put_instance: match self.local_put_socket {
                Some(_) => self.local_put_instance.clone(),
                None => String::new(),
            },
            undeclared_uploads_copied: self.store.moves_by_copy(),
        }))
    }

    async fn put(
        &self,
        request: Request<Streaming<pb::PutRequest>>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let who = self.writer(&request)?;
        let messages = request.into_inner().map_ok(|m| match m.message {
            Some(pb::put_request::Message::Header(header)) => UploadMessage::Header(header),
            Some(pb::put_request::Message::Chunk(chunk)) => UploadMessage::Chunk(vec![chunk]),
            None => UploadMessage::Empty,
        });
        self.put_from(who, Box::pin(messages)).await
    }

    async fn start_upload(
        &self,
        request: Request<pb::StartUploadRequest>,
    ) -> Result<Response<pb::UploadStatus>, Status> {
        let who = self.writer(&request)?;
        let request = request.into_inner();
        let expect = Expectation {
            digest: parse_optional_digest("expected_digest", &request.expected_digest)?,
            size: request.expected_size,
        };
        let info = self
            .uploads
            .start(&upload_owner(&who), expect, Default::default())
            .await
            .map_err(GrpcError::from)?;
        Ok(Response::new(upload_status(&info)))
    }

    async fn query_upload(
        &self,
        request: Request<pb::QueryUploadRequest>,
    ) -> Result<Response<pb::UploadStatus>, Status> {
        let who = self.writer(&request)?;
        let info = self
            .uploads
            .status(&upload_owner(&who), &request.get_ref().upload_id)
            .await
            .map_err(GrpcError::from)?;
        Ok(Response::new(upload_status(&info)))
    }

    async fn write_upload(
        &self,
        request: Request<Streaming<pb::WriteUploadRequest>>,
    ) -> Result<Response<pb::UploadStatus>, Status> {
        let who = self.writer(&request)?;
        let messages = request.into_inner().map_ok(|m| match m.message {
            Some(pb::write_upload_request::Message::Header(header)) => {
                UploadMessage::Header(header)
            }
            Some(pb::write_upload_request::Message::Chunk(chunk)) => {
                UploadMessage::Chunk(vec![chunk])
            }
            None => UploadMessage::Empty,
        });
        self.write_upload_from(who, Box::pin(messages)).await
    }

    async fn finish_upload(
        &self,
        request: Request<pb::FinishUploadRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let who = self.writer(&request)?;
        let request = request.into_inner();
        let expect = Expectation {
            digest: parse_optional_digest("expected_digest", &request.expected_digest)?,
            size: None,
        };
        let outcome = self
            .uploads
            .finish(&upload_owner(&who), &request.upload_id, expect)
            .await
            .map_err(GrpcError::from)?;
        tracing::debug!(digest = %outcome.meta.sha256(), size = outcome.meta.size, "resumable upload finished");
        let already_present = outcome.already_present && self.readable(&who, &outcome.meta);
        Ok(Response::new(pb::PutResponse {
            blob: Some(blob_info(&outcome.meta)),
            already_present,
        }))
    }

    async fn cancel_upload(
        &self,
        request: Request<pb::CancelUploadRequest>,
    ) -> Result<Response<pb::CancelUploadResponse>, Status> {
        let who = self.writer(&request)?;
        self.uploads
            .cancel(&upload_owner(&who), &request.get_ref().upload_id)
            .await
            .map_err(GrpcError::from)?;
        Ok(Response::new(pb::CancelUploadResponse {}))
    }

    async fn retain(
        &self,
        request: Request<pb::RetainRequest>,
    ) -> Result<Response<pb::RetainResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let request = request.into_inner();
        let action = match request.action.as_str() {
            "pin" => custodian_core::registry::RetentionAction::Pin,
            "unpin" => custodian_core::registry::RetentionAction::Unpin,
            "hold" => custodian_core::registry::RetentionAction::Hold,
            "release" => custodian_core::registry::RetentionAction::Release,
            other => {
                return Err(Status::invalid_argument(format!(
                    "field action: {other:?} is not pin, unpin, hold or release"
                )));
            }
        };
        let expires = (request.expires_in_seconds > 0)
            .then(|| std::time::Duration::from_secs(request.expires_in_seconds));
        let (index, digests) = self
            .collector
            .retain(&who, action, &request.subject, &request.reason, expires)
            .await?;
        Ok(Response::new(pb::RetainResponse {
            ledger_index: index,
            digests: digests.iter().map(|d| d.to_string()).collect(),
        }))
    }

    async fn why(
        &self,
        request: Request<pb::WhyRequest>,
    ) -> Result<Response<pb::WhyResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let request = request.into_inner();
        let digest = parse_digest("digest", &request.digest)?;
        let grace = request
            .grace_seconds
            .map_or(self.gc_grace, std::time::Duration::from_secs);
        let why = self.collector.why(&who, &digest, grace).await?;
        Ok(Response::new(pb::WhyResponse {
            blob: why.present.as_ref().map(blob_info),
            kept_by: why
                .keepers
                .iter()
                .map(crate::retention::Keeper::describe)
                .collect(),
            deleted: why.tombstone.map(|t| pb::Tombstone {
                ledger_index: t.index,
                deleted_at: Some(timestamp(t.time_ms)),
                reason: t.reason,
                policy: t.policy,
                size: t.size,
            }),
        }))
    }

    async fn collect_garbage(
        &self,
        request: Request<pb::CollectGarbageRequest>,
    ) -> Result<Response<pb::CollectGarbageResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let request = request.into_inner();
        let grace = request
            .grace_seconds
            .map_or(self.gc_grace, std::time::Duration::from_secs);
        let report = self
            .collector
            .collect(
                &who,
                GcOptions {
                    grace,
                    dry_run: request.dry_run,
                    by: who.label(),
                },
            )
            .await?;
        Ok(Response::new(gc_answer(&report)))
    }

    async fn delete_blob(
        &self,
        request: Request<pb::DeleteBlobRequest>,
    ) -> Result<Response<pb::CollectGarbageResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let request = request.into_inner();
        let digest = parse_digest("digest", &request.digest)?;
        let report = self
            .collector
            .delete(&who, &digest, &request.reason, request.force)
            .await?;
        Ok(Response::new(gc_answer(&report)))
    }

    type ListBlobsStream = ListBlobsStream;

    async fn list_blobs(
        &self,
        request: Request<pb::ListBlobsRequest>,
    ) -> Result<Response<Self::ListBlobsStream>, Status> {
        let who = principal(&self.auth, &request)?;
        let request = request.into_inner();
        let after = parse_optional_digest("after", &request.after)?;
        let started = timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        );
        // The first page is read here, so a refusal (not an admin) is the call's status.
        let mut remaining = if request.limit == 0 {
            u64::MAX
        } else {
            request.limit
        };
        let page = LIST_PAGE.min(remaining) as usize;
        let first = self.collector.list_page(&who, after, page).await?;
        let collector = self.collector.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let mut listed = first;
            loop {
                let full = listed.len() as u64 >= LIST_PAGE.min(remaining);
                remaining = remaining.saturating_sub(listed.len() as u64);
                let cursor = listed.last().map(|l| l.meta.sha256());
                let blobs = listed
                    .iter()
                    .map(|l| pb::ListedBlob {
                        blob: Some(blob_info(&l.meta)),
                        acknowledged_at: l.acknowledged_ms.map(timestamp),
                        oci_linked_in: l.oci_linked_in.clone(),
                        listing_started_at: Some(started),
                    })
                    .collect();
                if !listed.is_empty() && tx.send(Ok(pb::ListBlobsResponse { blobs })).await.is_err()
                {
                    return;
                }
                if !full || remaining == 0 {
                    return;
                }
                let page = LIST_PAGE.min(remaining) as usize;
                listed = match collector.list_page(&who, cursor, page).await {
                    Ok(listed) => listed,
                    Err(err) => {
                        let _ = tx.send(Err(Status::from(err))).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type GetStream = GetStream;

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let who = principal(&self.auth, &request)?;
        let request = request.into_inner();
        let digest = parse_digest("digest", &request.digest)?;
        if !self.digest_readable(&who, &digest).await? {
            return Err(hidden(&digest));
        }
        let range = ByteRange {
            offset: request.offset,
            limit: (request.limit != 0).then_some(request.limit),
        };
        let read = match self.store.get(&digest, range).await {
            Ok(read) => read,
            Err(StorageError::NotFound { .. }) => return Err(absent(&self.registry, &digest).await),
            Err(err) => return Err(GrpcError::from(err).into()),
        };
        let first = pb::GetResponse {
            blob: Some(blob_info(&read.meta)),
            data: Bytes::new(),
        };
        let data = read
            .data
            .map_ok(|block| {
                // Blocks larger than one message are split without copying.
                let pieces: Vec<Result<Bytes, StorageError>> = (0..block.len())
                    .step_by(GET_MESSAGE_BYTES)
                    .map(|at| Ok(block.slice(at..(at + GET_MESSAGE_BYTES).min(block.len()))))
                    .collect();
                futures::stream::iter(pieces)
            })
            .try_flatten()
            .map(|piece| match piece {
                Ok(data) => Ok(pb::GetResponse { blob: None, data }),
                Err(err) => {
                    tracing::error!(%err, "read failed");
                    Err(GrpcError::Storage(err).into())
                }
            });
        let stream = futures::stream::once(async { Ok(first) }).chain(data);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn stat(
        &self,
        request: Request<pb::StatRequest>,
    ) -> Result<Response<pb::BlobInfo>, Status> {
        let who = principal(&self.auth, &request)?;
        let digest = parse_digest("digest", &request.get_ref().digest)?;
        match self.store.stat(&digest).await.map_err(GrpcError::from)? {
            Some(meta) if self.readable(&who, &meta) => Ok(Response::new(blob_info(&meta))),
            None if who.allows_everywhere(Scope::Read) => {
                Err(absent(&self.registry, &digest).await)
            }
            _ => Err(hidden(&digest)),
        }
    }

    async fn find_missing(
        &self,
        request: Request<pb::FindMissingRequest>,
    ) -> Result<Response<pb::FindMissingResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let request = request.into_inner();
        let digests = request
            .digests
            .iter()
            .enumerate()
            .map(|(i, d)| parse_digest_in_batch(|| format!("digests[{i}]"), d))
            .collect::<Result<Vec<_>, _>>()?;
        let present = self.present_to(&who, &digests).await?;
        // The caller's own strings go back (a digest parses only in its canonical form, so they
        // are what formatting it would give), without formatting thousands of digests again.
        Ok(Response::new(pb::FindMissingResponse {
            missing_digests: missing(request.digests, present),
        }))
    }

    async fn batch_put(
        &self,
        request: Request<pb::BatchPutRequest>,
    ) -> Result<Response<pb::BatchPutResponse>, Status> {
        let who = self.writer(&request)?;
        let who = &who;
        let items = request.into_inner().items;
        let total: u64 = items.iter().map(|i| i.data.len() as u64).sum();
        if total > self.limits.max_batch_total_size_bytes {
            return Err(Status::invalid_argument(format!(
                "BatchPut carries {total} data bytes, over max_batch_total_size_bytes = {}; use Put for large blobs",
                self.limits.max_batch_total_size_bytes
            )));
        }
        // Expectations are parsed first (a bad one fails only its item); the rest are put
        // together, so the backend can commit them in one durable write. The items that parse
        // are moved out as they are, and only the (rare) failures are kept beside them: a
        // 4 MiB BatchPut of 256-byte blobs is 16,000 items, and a second list of all of them,
        // each the size of a gRPC status, cost the daemon megabytes per call.
        let count = items.len();
        let mut valid: Vec<(Expectation, bytes::Bytes)> = Vec::with_capacity(count);
        let mut refused: Vec<(usize, Status)> = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let digest = match item.expected_digest.as_str() {
                "" => Ok(None),
                text => {
                    parse_digest_in_batch(|| format!("items[{i}].expected_digest"), text).map(Some)
                }
            };
            match digest {
                Ok(digest) => valid.push((Expectation { digest, size: None }, item.data)),
                Err(status) => refused.push((i, status)),
            }
        }
        let mut refused = refused.into_iter().peekable();
        let mut stored = self.store.put_many(valid).await.into_iter();
        let results = (0..count)
            .map(|i| {
                let outcome = match refused.next_if(|(at, _)| *at == i) {
                    Some((_, status)) => Err(status),
                    None => stored
                        .next()
                        .unwrap_or_else(|| Err(StorageError::Aborted("not attempted".into())))
                        .map_err(|err| Status::from(GrpcError::from(err))),
                };
                match outcome {
                    Ok(outcome) => pb::BatchPutResult {
                        blob: Some(blob_info(&outcome.meta)),
                        already_present: outcome.already_present
                            && self.readable(who, &outcome.meta),
                        error: None,
                    },
                    Err(status) => pb::BatchPutResult {
                        blob: None,
                        already_present: false,
                        error: Some(item_error(&status)),
                    },
                }
            })
            .collect();
        Ok(Response::new(pb::BatchPutResponse { results }))
    }

    async fn batch_get(
        &self,
        request: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        let who = principal(&self.auth, &request)?;
        let mut budget = self.limits.max_batch_total_size_bytes;
        let mut results = Vec::new();
        for (i, text) in request.into_inner().digests.into_iter().enumerate() {
            let result = async {
                let digest = parse_digest(&format!("digests[{i}]"), &text)?;
                let meta = self
                    .store
                    .stat(&digest)
                    .await
                    .map_err(GrpcError::from)?
                    .filter(|meta| self.readable(&who, meta))
                    .ok_or_else(|| hidden(&digest))?;
                if meta.size > budget {
                    return Err(Status::resource_exhausted(format!(
                        "{digest} is {} bytes, more than the {budget} bytes left of max_batch_total_size_bytes; fetch it with Get",
                        meta.size
                    )));
                }
                let read = self.store.get(&digest, ByteRange::ALL).await.map_err(GrpcError::from)?;
                let chunks: Vec<Bytes> = read.data.try_collect().await.map_err(GrpcError::from)?;
                budget -= meta.size;
                Ok((meta, chunks.concat()))
            }
            .await;
            results.push(match result {
                Ok((meta, data)) => pb::BatchGetResult {
                    digest: text,
                    blob: Some(blob_info(&meta)),
                    data: Bytes::from(data),
                    error: None,
                },
                Err(status) => pb::BatchGetResult {
                    digest: text,
                    blob: None,
                    data: Bytes::new(),
                    error: Some(item_error(&status)),
                },
            });
        }
        Ok(Response::new(pb::BatchGetResponse { results }))
    }
}
