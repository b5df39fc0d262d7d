//! `custodian.ledger.v1.Ledger`: the provenance ledger over gRPC.

use std::pin::Pin;
use std::sync::Arc;

use custodian_core::entry::{Entry, EntryKind, encode_value};
use custodian_core::merkle::Hash;
use custodian_core::receipt::Receipt;
use custodian_proto::ledger::v1 as pb;
use custodian_proto::ledger::v1::ledger_server::Ledger as LedgerRpc;
use custodian_storage::ledger::{Ledger, LedgerError, SignedCheckpoint};
use futures::{Stream, StreamExt as _};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Authenticator, Principal, Scope};
use crate::grpc::status::{GrpcError, authorization, principal};
use crate::registry::Registry;
use crate::sequencer::{Queued, Sequencer};

/// Entries, checkpoints or hash chunks per streamed read from storage.
const STREAM_CHUNK: u64 = 256;
/// Stored hashes per TreeHashes message (256 KiB).
const HASH_CHUNK: u64 = 8192;

/// The Ledger service.
///
/// Checkpoints, proofs and tree hashes are public: they reveal hashes only. Entries about
/// private packages (their payload says `private: true`) are readable only with a read grant
/// for the package. Raw appends need the daemon's append token or an admin token, and may not
/// forge the registry's own kinds.
pub struct LedgerService {
    sequencer: Sequencer,
    gate: AppendGate,
    registry: Arc<Registry>,
    auth: Arc<Authenticator>,
    /// Turns true when the daemon begins to shut down: open `AppendStream`s then stop reading.
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Who may append raw entries: the holder of the daemon's append token, or of an admin token for
/// `*`. Cloned into each `AppendStream`, which asks it again for every request.
#[derive(Clone)]
struct AppendGate {
    append_token: Option<Arc<str>>,
    auth: Arc<Authenticator>,
}

impl AppendGate {
    fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let header = authorization(metadata)?;
        if let (Some(token), Some(given)) = (
            &self.append_token,
            header.and_then(|v| v.strip_prefix("Bearer ")),
        ) && constant_time_eq(given.as_bytes(), token.as_bytes())
        {
            return Ok(());
        }
        match self.auth.authenticate(header)? {
            who if who.allows_everywhere(Scope::Admin) => Ok(()),
            Principal::Anonymous => Err(Status::unauthenticated(
                "metadata authorization is required: send \"Bearer <append token or admin token>\"",
            )),
            who => Err(Status::permission_denied(format!(
                "{} may not append raw entries: that needs the append token or an admin token for *",
                who.label()
            ))),
        }
    }
}

/// How many requests of one `AppendStream` may wait for their answers at once; past it the
/// stream is read no further until the oldest is answered (HTTP/2 flow control then holds the
/// writer back).
const STREAM_IN_FLIGHT: usize = 128;

impl LedgerService {
    /// A service appending through `sequencer`; `append_token` (or an admin token) enables
    /// `Append`.
    pub fn new(
        sequencer: Sequencer,
        append_token: Option<String>,
        registry: Arc<Registry>,
        auth: Arc<Authenticator>,
    ) -> Self {
        LedgerService {
            sequencer,
            gate: AppendGate {
                append_token: append_token.filter(|t| !t.is_empty()).map(Arc::from),
                auth: auth.clone(),
            },
            registry,
            auth,
            stopping: None,
        }
    }

    /// Ends every open `AppendStream` once `stopping` turns true: the requests already read are
    /// answered, and the stream ends `UNAVAILABLE`, so that a writer sends the rest to the next
    /// daemon instead of holding this one through its shutdown grace.
    pub fn ending_streams_on(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = Some(stopping);
        self
    }

    fn ledger(&self) -> &Arc<Ledger> {
        self.sequencer.ledger()
    }

    /// Refuses an entry the caller may not read, naming only its index.
    fn check_visible(&self, who: &Principal, index: u64, bytes: &[u8]) -> Result<(), Status> {
        if self.registry.entry_visible(who, bytes) {
            Ok(())
        } else {
            Err(hidden_entry(index))
        }
    }
}

fn hidden_entry(index: u64) -> Status {
    Status::permission_denied(format!(
        "entry {index} concerns a private package: reading it needs a token with read on that package's namespace (a full export needs read on *)"
    ))
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_hash(field: &str, bytes: &[u8]) -> Result<Hash, Status> {
    Hash::from_slice(bytes).map_err(|_| {
        Status::invalid_argument(format!(
            "field {field}: a leaf hash is 32 bytes, got {} bytes",
            bytes.len()
        ))
    })
}

fn checkpoint_pb(checkpoint: &SignedCheckpoint) -> pb::SignedCheckpoint {
    pb::SignedCheckpoint {
        tree_size: checkpoint.size,
        root_hash: checkpoint.root.0.to_vec().into(),
        note: checkpoint.note.clone(),
    }
}

/// The wire form of an entry. The decoded fields are filled in when the bytes decode; the bytes
/// and their leaf hash are always sent as stored, so an export shows an auditor exactly what is
/// on disk.
pub fn entry_pb(index: u64, bytes: Vec<u8>) -> pb::Entry {
    let leaf = custodian_core::merkle::leaf_hash(&bytes);
    let mut message = pb::Entry {
        index,
        leaf_hash: leaf.0.to_vec().into(),
        ..Default::default()
    };
    if let Ok(entry) = Entry::decode(&bytes) {
        message.kind = entry.kind.to_string();
        message.integrated_time_ms = entry.time_ms;
        message.prev = entry.prev.0.to_vec().into();
        message.payload_cbor = encode_value(&entry.payload).into();
    }
    message.encoded = bytes.into();
    message
}

/// The wire form of a receipt.
pub fn receipt_pb(receipt: &Receipt) -> pb::Receipt {
    pb::Receipt {
        log_index: receipt.index,
        entry: receipt.entry.clone().into(),
        inclusion_proof: receipt.proof.iter().map(|h| h.0.to_vec().into()).collect(),
        checkpoint: receipt.checkpoint.clone(),
        json: receipt.to_json(),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Streams chunks produced by `next(start)` on a blocking thread until it returns an empty chunk.
fn chunked<T: Send + 'static>(
    mut next: impl FnMut() -> Result<Vec<T>, Status> + Send + 'static,
) -> BoxStream<T> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        loop {
            match next() {
                Ok(items) if items.is_empty() => return,
                Ok(items) => {
                    for item in items {
                        if tx.blocking_send(Ok(item)).is_err() {
                            return;
                        }
                    }
                }
                Err(status) => {
                    let _ = tx.blocking_send(Err(status));
                    return;
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl LedgerRpc for LedgerService {
    async fn get_log_info(
        &self,
        _request: Request<pb::GetLogInfoRequest>,
    ) -> Result<Response<pb::LogInfo>, Status> {
        let ledger = self.ledger();
        Ok(Response::new(pb::LogInfo {
            origin: ledger.origin().to_string(),
            verifier_key: ledger.verifier().to_string(),
            size: ledger.latest().size,
        }))
    }

    async fn get_checkpoint(
        &self,
        request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::SignedCheckpoint>, Status> {
        let checkpoint = match request.into_inner().tree_size {
            None => self.ledger().published().as_ref().clone(),
            Some(size) => self
                .ledger()
                .checkpoint(size)
                .map_err(|e| GrpcError::ledger("tree_size", e))?,
        };
        Ok(Response::new(checkpoint_pb(&checkpoint)))
    }

    type ListCheckpointsStream = BoxStream<pb::SignedCheckpoint>;

    async fn list_checkpoints(
        &self,
        request: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<Self::ListCheckpointsStream>, Status> {
        let ledger = self.ledger().clone();
        let end = ledger.latest().size;
        let mut from = request.into_inner().from_size;
        Ok(Response::new(chunked(move || {
            if from > end {
                return Ok(Vec::new());
            }
            let chunk = ledger
                .checkpoints(from, STREAM_CHUNK as usize)
                .map_err(|e| GrpcError::ledger("from_size", e))?;
            let mut out = Vec::new();
            for (size, note) in chunk {
                if size > end {
                    break;
                }
                from = size + 1;
                let checkpoint =
                    custodian_core::checkpoint::Checkpoint::open(&note, ledger.verifier())
                        .map_err(|e| {
                            GrpcError::ledger(
                                "from_size",
                                LedgerError::Corrupt(format!("checkpoint of size {size}: {e}")),
                            )
                        })?;
                out.push(pb::SignedCheckpoint {
                    tree_size: size,
                    root_hash: checkpoint.root.0.to_vec().into(),
                    note: String::from_utf8_lossy(&note).into_owned(),
                });
            }
            if out.is_empty() {
                from = end + 1;
            }
            Ok(out)
        })))
    }

    async fn get_entry(
        &self,
        request: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let who = principal(&self.auth, &request)?;
        let index = request.into_inner().index;
        let bytes = self
            .ledger()
            .verified_entry(index)
            .map_err(|e| GrpcError::ledger("index", e))?;
        self.check_visible(&who, index, &bytes)?;
        Ok(Response::new(entry_pb(index, bytes)))
    }

    type GetEntriesStream = BoxStream<pb::Entry>;

    async fn get_entries(
        &self,
        request: Request<pb::GetEntriesRequest>,
    ) -> Result<Response<Self::GetEntriesStream>, Status> {
        let who = principal(&self.auth, &request)?;
        let registry = self.registry.clone();
        let request = request.into_inner();
        let ledger = self.ledger().clone();
        let size = ledger.latest().size;
        let end = request.end.unwrap_or(size);
        if end > size {
            return Err(GrpcError::ledger(
                "end",
                LedgerError::SizeBeyondLog {
                    requested: end,
                    size,
                },
            )
            .into());
        }
        let mut at = request.start;
        Ok(Response::new(chunked(move || {
            if at >= end {
                return Ok(Vec::new());
            }
            let stop = (at + STREAM_CHUNK).min(end);
            let entries = ledger
                .entries(at, stop)
                .map_err(|e| GrpcError::ledger("start", e))?;
            let mut out = Vec::with_capacity(entries.len());
            for (bytes, index) in entries.into_iter().zip(at..) {
                if !registry.entry_visible(&who, &bytes) {
                    return Err(hidden_entry(index));
                }
                out.push(entry_pb(index, bytes));
            }
            at = stop;
            Ok(out)
        })))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        let request = request.into_inner();
        let ledger = self.ledger();
        let index = match request.leaf {
            Some(pb::get_inclusion_proof_request::Leaf::Index(index)) => index,
            Some(pb::get_inclusion_proof_request::Leaf::LeafHash(hash)) => ledger
                .index_of(&parse_hash("leaf_hash", &hash)?)
                .map_err(|e| GrpcError::ledger("leaf_hash", e))?,
            None => {
                return Err(Status::invalid_argument(
                    "field leaf is required: give index or leaf_hash",
                ));
            }
        };
        let latest = ledger.latest();
        let size = request.tree_size.unwrap_or(latest.size);
        let (hashes, leaf) = ledger.inclusion_proof(index, size).map_err(|e| {
            let field = match e {
                LedgerError::SizeBeyondLog { .. } => "tree_size",
                _ => "index",
            };
            GrpcError::ledger(field, e)
        })?;
        let checkpoint = match ledger.checkpoint(size) {
            Ok(checkpoint) => Some(checkpoint_pb(&checkpoint)),
            Err(LedgerError::NoSuchCheckpoint(_)) => None,
            Err(e) => return Err(GrpcError::ledger("tree_size", e).into()),
        };
        Ok(Response::new(pb::InclusionProof {
            index,
            tree_size: size,
            leaf_hash: leaf.0.to_vec().into(),
            hashes: hashes.iter().map(|h| h.0.to_vec().into()).collect(),
            checkpoint,
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        let request = request.into_inner();
        let ledger = self.ledger();
        let new = request.new_size.unwrap_or(ledger.latest().size);
        let hashes = ledger
            .consistency_proof(request.old_size, new)
            .map_err(|e| {
                let field = match e {
                    LedgerError::SizeBeyondLog { .. } => "new_size",
                    _ => "old_size",
                };
                GrpcError::ledger(field, e)
            })?;
        Ok(Response::new(pb::ConsistencyProof {
            old_size: request.old_size,
            new_size: new,
            hashes: hashes.iter().map(|h| h.0.to_vec().into()).collect(),
        }))
    }

    async fn get_receipt(
        &self,
        request: Request<pb::GetReceiptRequest>,
    ) -> Result<Response<pb::Receipt>, Status> {
        let who = principal(&self.auth, &request)?;
        let ledger = self.ledger();
        let (field, index) = match request.into_inner().leaf {
            Some(pb::get_receipt_request::Leaf::Index(index)) => ("index", index),
            Some(pb::get_receipt_request::Leaf::LeafHash(hash)) => (
                "leaf_hash",
                ledger
                    .index_of(&parse_hash("leaf_hash", &hash)?)
                    .map_err(|e| GrpcError::ledger("leaf_hash", e))?,
            ),
            None => {
                return Err(Status::invalid_argument(
                    "field leaf is required: give index or leaf_hash",
                ));
            }
        };
        let receipt = ledger
            .receipt(index)
            .map_err(|e| GrpcError::ledger(field, e))?;
        self.check_visible(&who, index, &receipt.entry)?;
        Ok(Response::new(receipt_pb(&receipt)))
    }

    type GetTreeHashesStream = BoxStream<pb::TreeHashes>;

    async fn get_tree_hashes(
        &self,
        request: Request<pb::GetTreeHashesRequest>,
    ) -> Result<Response<Self::GetTreeHashesStream>, Status> {
        let request = request.into_inner();
        let ledger = self.ledger().clone();
        let limit = custodian_core::merkle::stored_hash_count(ledger.latest().size);
        if request.end > limit {
            return Err(Status::out_of_range(format!(
                "field end: {} is past the {limit} stored hashes of the latest checkpoint",
                request.end
            )));
        }
        let (mut at, end) = (request.start, request.end);
        Ok(Response::new(chunked(move || {
            if at >= end {
                return Ok(Vec::new());
            }
            let stop = (at + HASH_CHUNK).min(end);
            let hashes = ledger
                .stored_hashes(at, stop)
                .map_err(|e| GrpcError::ledger("start", e))?;
            let message = pb::TreeHashes {
                start: at,
                hashes: hashes.iter().flat_map(|h| h.0).collect::<Vec<u8>>().into(),
            };
            at = stop;
            Ok(vec![message])
        })))
    }

    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        self.gate.check(request.metadata())?;
        let request = request.into_inner();
        let compact = request.compact;
        let queued = enqueue(&self.sequencer, request).await?;
        Ok(Response::new(
            answer(&self.sequencer, queued, compact).await?,
        ))
    }

    type AppendStreamStream = BoxStream<pb::AppendStreamResponse>;

    async fn append_stream(
        &self,
        request: Request<Streaming<pb::AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        // A caller who may not append is refused before anything is read.
        self.gate.check(request.metadata())?;
        let (metadata, _, incoming) = request.into_parts();
        let incoming = until_stopping(incoming, self.stopping.clone());
        let writer = Arc::new(StreamWriter {
            gate: self.gate.clone(),
            metadata,
            sequencer: self.sequencer.clone(),
        });
        let answering = writer.clone();
        // Requests are checked and queued one after another, in the order sent (`then`), so the
        // stream's entries enter the log in that order; their answers are awaited together
        // (`buffered`) and sent in the same order.
        let answers = incoming
            .then(move |message| {
                let writer = writer.clone();
                async move {
                    let request = message?;
                    let compact = request.compact;
                    Ok(match writer.gate.check(&writer.metadata) {
                        Ok(()) => enqueue(&writer.sequencer, request)
                            .await
                            .map(|queued| (queued, compact)),
                        Err(refused) => Err(refused),
                    })
                }
            })
            .map(move |queued: Result<Queueing, Status>| {
                let writer = answering.clone();
                async move {
                    // A broken stream (a message that does not decode, a reset) ends it with
                    // that error; a refused request is answered and the stream goes on.
                    let answered = match queued? {
                        Ok((queued, compact)) => answer(&writer.sequencer, queued, compact).await,
                        Err(refused) => Err(refused),
                    };
                    Ok(match answered {
                        Ok(appended) => pb::AppendStreamResponse {
                            receipt: appended.receipt,
                            log_index: appended.log_index,
                            leaf_hash: appended.leaf_hash,
                            checkpoint_size: appended.checkpoint_size,
                            ..Default::default()
                        },
                        Err(refused) => pb::AppendStreamResponse {
                            error_code: refused.code() as i32,
                            error_message: refused.message().to_string(),
                            ..Default::default()
                        },
                    })
                }
            })
            .buffered(STREAM_IN_FLIGHT);
        Ok(Response::new(Box::pin(answers)))
    }
}

/// A request of an `AppendStream` checked and queued, with whether it asked for a compact
/// answer; or the refusal it is answered with.
type Queueing = Result<(Queued, bool), Status>;

/// What every request of one `AppendStream` is checked and queued with: the stream's own
/// metadata, checked again for each request.
struct StreamWriter {
    gate: AppendGate,
    metadata: MetadataMap,
    sequencer: Sequencer,
}

/// The requests of an `AppendStream`, ending with an `UNAVAILABLE` item once `stopping` turns
/// true (or its sender is gone): nothing is read from the writer after that. A broken stream
/// ends with its error.
fn until_stopping(
    incoming: Streaming<pb::AppendRequest>,
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
) -> impl Stream<Item = Result<pb::AppendRequest, Status>> + Send {
    futures::stream::unfold(Some((incoming, stopping)), |state| async move {
        let (mut incoming, mut stopping) = state?;
        let stop = async {
            match stopping.as_mut() {
                // A closed channel means the daemon is past its shutdown too.
                Some(stopping) => {
                    let _ = stopping.wait_for(|stop| *stop).await;
                }
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            biased;
            () = stop => None,
            next = incoming.next() => Some(next),
        };
        match next {
            None => Some((
                Err(Status::unavailable(
                    "the daemon is shutting down: requests after the last answer on this stream were not read; send them again to a running daemon",
                )),
                None,
            )),
            Some(None) => None,
            Some(Some(Ok(request))) => Some((Ok(request), Some((incoming, stopping)))),
            // A broken stream ends with its first error. tonic's reader does not end by itself
            // after a stream that stops inside a message: read again, it answers "Unexpected EOF"
            // again, every time, and the answers would run on after the status that ends them.
            Some(Some(Err(status))) => Some((Err(status), None)),
        }
    })
}

/// Checks an `AppendRequest` as `Append` does and queues its entry.
async fn enqueue(sequencer: &Sequencer, request: pb::AppendRequest) -> Result<Queued, Status> {
    let kind = EntryKind::parse(&request.kind)
        .map_err(|e| GrpcError::ledger("kind", LedgerError::InvalidEntry(e)))?;
    if kind.is_service() {
        return Err(Status::invalid_argument(format!(
            "field kind: {kind} entries are appended only by the registry and evidence services after their checks; use custodian.registry.v1.Registry or custodian.evidence.v1.Evidence"
        )));
    }
    let prepared = Ledger::prepare_cbor(kind, request.payload_cbor.into())
        .map_err(|e| GrpcError::ledger("payload_cbor", e))?;
    Ok(sequencer
        .enqueue_prepared(prepared, None)
        .await
        .map_err(|e| GrpcError::ledger("payload_cbor", e))?)
}

/// Waits for a queued entry and answers with where it is and, unless `compact`, its receipt.
async fn answer(
    sequencer: &Sequencer,
    queued: Queued,
    compact: bool,
) -> Result<pb::AppendResponse, Status> {
    let (appended, checkpoint) = queued
        .wait()
        .await
        .map_err(|e| GrpcError::ledger("payload_cbor", e))?;
    // A compact answer skips the proof, its check against the batch's root, and the receipt's
    // copies of the entry and the checkpoint: most of what an answer costs the daemon.
    let receipt = if compact {
        None
    } else {
        let receipt = sequencer
            .ledger()
            .receipt_for(&appended, &checkpoint)
            .map_err(|e| GrpcError::ledger("index", e))?;
        Some(receipt_pb(&receipt))
    };
    Ok(pb::AppendResponse {
        receipt,
        log_index: appended.index,
        leaf_hash: appended.leaf_hash.0.to_vec().into(),
        checkpoint_size: checkpoint.size,
    })
}
