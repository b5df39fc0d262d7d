//! The local put socket: a client on the daemon's own machine hands the daemon an open file
//! instead of streaming its bytes over gRPC (docs/api.md, "Local puts").
//!
//! Streaming a blob over gRPC on one machine costs both ends CPU that has nothing to do with
//! custody: the client reads the file and frames it, the kernel copies it through a loopback TCP
//! connection, and the daemon unframes it and copies every HTTP/2 frame once more before hashing.
//! On two cores that work competes with SHA-256 for the same CPU. Here the client sends one small
//! frame with the file descriptor attached (`SCM_RIGHTS`), and the daemon reads the file itself,
//! into the same verifying writer as `ContentStore.Put`: the bytes it hashes are the bytes it
//! stores, so a file changed during the read yields a blob that matches what was read (and is
//! refused if the client declared another digest or size). Passing a descriptor grants nothing
//! the client did not have: the daemon reads only what the client could open itself.
//!
//! The socket speaks the same access rules and the same status codes as gRPC: the request carries
//! the `authorization` value gRPC metadata would, and a refusal is answered with the code and
//! message `Put` would have given (one error edge: [`crate::grpc::status`]).

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use custodian_proto::cas::v1 as pb;
use custodian_storage::{BlobWriter, Expectation};
use prost::Message as _;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tonic::Status;

use super::cas::CasService;
use super::status::{GrpcError, parse_optional_digest};
use crate::error::ServerError;
use crate::rest::{self, ApiError};
use crate::scan::StreamScans;

pub use custodian_proto::local_put::MAX_REQUEST_FRAME;

/// How often, in bytes read, the daemon tells the client how far it is.
const PROGRESS_EVERY: u64 = 64 << 20;

/// Where the socket goes, and whether the daemon may start without it.
#[derive(Clone, Debug)]
pub struct LocalPutConfig {
    /// The socket's path.
    pub path: PathBuf,
    /// True when the path was asked for explicitly: failing to bind it stops the daemon. The
    /// default path is best effort (it may be too long for a socket address, or on a file system
    /// that has no sockets), and the daemon starts without it, with a warning.
    pub required: bool,
}

/// A bound local put socket.
pub struct LocalPutSocket {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's device and inode, so that shutdown removes this file and not one
    /// another daemon has bound at the same path since.
    file: (u64, u64),
}

impl LocalPutSocket {
    /// Binds the socket at `config.path`, replacing a socket file a stopped daemon left behind.
    /// `Ok(None)` when binding the default path failed (logged).
    pub fn bind(config: &LocalPutConfig) -> Result<Option<Self>, ServerError> {
        match bind_at(&config.path) {
            Ok(socket) => Ok(Some(socket)),
            Err(source) if !config.required => {
                tracing::warn!(
                    path = %config.path.display(),
                    %source,
                    "no local put socket: clients on this machine stream their puts over gRPC"
                );
                Ok(None)
            }
            Err(reason) => Err(ServerError::LocalPutSocket {
                path: config.path.clone(),
                reason,
            }),
        }
    }

    /// The socket's absolute path, as `Capabilities.local_put_socket` announces it.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn bind_at(path: &Path) -> io::Result<LocalPutSocket> {
    let path = std::path::absolute(path)?;
    // A socket file nobody answers on is the leftover of a daemon that was killed; anything
    // else is not ours to remove.
    match std::fs::symlink_metadata(&path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt as _;
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket",
                ));
            }
            // A path given with --local-put-socket may be outside the data directory, so make
            // sure no live process still answers there before taking it over.
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on this socket",
                ));
            }
            std::fs::remove_file(&path)?;
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let listener = UnixListener::bind(&path)?;
    let file = file_id(&path)?;
    Ok(LocalPutSocket {
        listener,
        path,
        file,
    })
}

/// A file's device and inode.
fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::symlink_metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// Serves local puts until `stop` turns true, then lets puts in flight finish within `grace`
/// and removes the socket file. At most `max_connections` clients are served at once.
pub(crate) async fn serve(
    socket: LocalPutSocket,
    cas: CasService,
    stream_scans: Arc<StreamScans>,
    max_connections: usize,
    grace: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let cas = Arc::new(cas);
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut running = tokio::task::JoinSet::new();
    // The guard `wait_for` returns must not be held across an await, so it is dropped here.
    let mut stopping = Box::pin(async move {
        let _ = stop.wait_for(|stop| *stop).await;
    });
    loop {
        tokio::select! {
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (cas, scans) = (cas.clone(), stream_scans.clone());
                        running.spawn(async move {
                            serve_one(stream, &cas, &scans).await;
                            drop(permit);
                        });
                    }
                    Err(_) => tracing::warn!(
                        max_connections,
                        "local put socket: connection refused, too many open"
                    ),
                },
                Err(err) => {
                    // Running out of descriptors must not stop the daemon: wait and retry.
                    tracing::warn!(%err, "local put socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = running.join_next(), if !running.is_empty() => {}
            () = &mut stopping => break,
        }
    }
    if file_id(&socket.path).is_ok_and(|file| file == socket.file) {
        let _ = std::fs::remove_file(&socket.path);
    }
    let drained = tokio::time::timeout(grace, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("local puts still running after the grace period were discarded");
    }
}

/// Reads one request, performs it and answers; a client that hangs up gets no answer.
async fn serve_one(mut stream: UnixStream, cas: &CasService, scans: &StreamScans) {
    use pb::local_put_reply::Message;
    let idle = cas.limits().upload_idle_timeout;
    let refused = |status: Status| {
        Message::Error(pb::ItemError {
            code: status.code() as i32,
            message: status.message().to_string(),
        })
    };
    let reply = match tokio::time::timeout(idle, receive(&stream)).await {
        Err(_) => refused(Status::deadline_exceeded(format!(
            "no complete request frame within {idle:?}"
        ))),
        Ok(Err(Received::Gone)) => return,
        Ok(Err(Received::Refused(status))) => refused(status),
        // Checked before anything else: the token and the file are another daemon's business.
        // The request was meant for another daemon with a socket at the same path.
        Ok(Ok((request, _))) if request.instance != cas.local_put_instance() => {
            Message::OtherDaemon(cas.local_put_instance().to_string())
        }
        Ok(Ok((mut request, file))) => match request.data_pack.take() {
            Some(pack) => match data_pack(cas, scans, &request, &pack, file, &mut stream).await {
                Some(answer) => Message::DataPackAnswer(answer),
                None => return,
            },
            None => match put(cas, request, file, &mut stream).await {
                Ok(done) => Message::Done(done),
                Err(status) if status.code() == tonic::Code::Cancelled => return,
                Err(status) => refused(status),
            },
        },
    };
    if send(&mut stream, reply).await.is_ok() {
        close_politely(stream).await;
    }
}

/// Closes after the answer without resetting the connection: on Linux, closing a Unix socket
/// with unread bytes (the rest of a refused frame) makes the client's next read fail with
/// `ECONNRESET`, which could cost it the answer. So the rest is read and dropped first, within
/// a bound and a second.
async fn close_politely(mut stream: UnixStream) {
    use tokio::io::AsyncReadExt as _;
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 8 << 10];
        let mut left = 2 * MAX_REQUEST_FRAME;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Why no request came.
enum Received {
    /// The client closed the connection before a whole frame.
    Gone,
    /// The frame came but cannot be served.
    Refused(Status),
}

/// Receives the request frame and the one descriptor attached to it.
async fn receive(stream: &UnixStream) -> Result<(pb::LocalPutRequest, OwnedFd), Received> {
    let mut frame: Vec<u8> = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 8 << 10];
    loop {
        let (read, flags) = match receive_some(stream, &mut buf, &mut fds).await {
            Ok(got) => got,
            Err(_) => return Err(Received::Gone),
        };
        if read == 0 {
            return Err(Received::Gone);
        }
        truncated |= flags.contains(ReturnFlags::CTRUNC);
        frame.extend_from_slice(&buf[..read]);
        if frame.len() < 4 {
            continue;
        }
        let len = u32::from_be_bytes(frame[..4].try_into().expect("four bytes")) as usize;
        if len > MAX_REQUEST_FRAME {
            return Err(Received::Refused(Status::invalid_argument(format!(
                "the request frame declares {len} bytes; a LocalPutRequest is at most {MAX_REQUEST_FRAME}"
            ))));
        }
        if frame.len() < 4 + len {
            continue;
        }
        if frame.len() > 4 + len {
            return Err(Received::Refused(Status::invalid_argument(format!(
                "{} bytes follow the {len}-byte request frame: send one request per connection",
                frame.len() - 4 - len
            ))));
        }
        if truncated || fds.len() != 1 {
            return Err(Received::Refused(Status::invalid_argument(format!(
                "the request must carry exactly one file descriptor (SCM_RIGHTS); it carried {}",
                if truncated {
                    "more than fit".to_string()
                } else {
                    fds.len().to_string()
                }
            ))));
        }
        let request = pb::LocalPutRequest::decode(&frame[4..]).map_err(|err| {
            Received::Refused(Status::invalid_argument(format!(
                "the request frame is not a LocalPutRequest: {err}"
            )))
        })?;
        return Ok((request, fds.pop().expect("one descriptor")));
    }
}

/// One `recvmsg`: bytes into `buf`, descriptors onto `fds` (received close-on-exec).
async fn receive_some(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<(usize, ReturnFlags)> {
    loop {
        stream.readable().await?;
        let got = stream.try_io(Interest::READABLE, || {
            // Room for a few descriptors, so that a client that sends too many is told so
            // rather than having them silently dropped.
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let received = rustix::net::recvmsg(
                stream,
                &mut [IoSliceMut::new(buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
            Ok((received.bytes, received.flags))
        });
        match got {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// Writes one reply frame.
async fn send(stream: &mut UnixStream, message: pb::local_put_reply::Message) -> io::Result<()> {
    let reply = pb::LocalPutReply {
        message: Some(message),
    };
    stream
        .write_all(&custodian_proto::local_put::frame(&reply))
        .await
}

/// Checks the request and the file, reads the file into a verified put, reporting progress
/// on `stream`. A client that hangs up mid-read cancels the put: nothing is kept.
async fn put(
    cas: &CasService,
    request: pb::LocalPutRequest,
    file: OwnedFd,
    stream: &mut UnixStream,
) -> Result<pb::PutResponse, Status> {
    let authorization = (!request.authorization.is_empty()).then_some(&*request.authorization);
    let who = cas.uploader(authorization)?;
    let mut expect = Expectation {
        digest: parse_optional_digest("expected_digest", &request.expected_digest)?,
        size: request.expected_size,
    };
    let size = check_readable_file(&file)?;
    // On a store that stages an upload of unknown digest and then copies it to its key (S3,
    // Azure: docs/storage.md), the file is read once more to learn its SHA-256 first: a second
    // read of a local file costs less than a copy of the whole blob inside the store.
    let hashed_here = expect.digest.is_none() && cas.store().moves_by_copy();
    if hashed_here {
        let copy = file
            .try_clone()
            .map_err(|err| Status::internal(format!("cannot duplicate the descriptor: {err}")))?;
        let sha256 = tokio::task::spawn_blocking(move || sha256_of(&copy))
            .await
            .map_err(|err| Status::internal(format!("the hashing task failed: {err}")))?
            .map_err(|(at, err)| {
                Status::failed_precondition(format!(
                    "reading the handed-over file failed at byte {at}: {err}"
                ))
            })?;
        expect.digest = Some(sha256);
    }
    let mut writer = cas
        .store()
        .begin_put(expect)
        .await
        .map_err(GrpcError::from)?;
    // A failed write has already discarded the upload; dropping the writer discards it too.
    let fed = feed_file(file, size, cas.store().block_size(), stream, &mut writer).await;
    match fed {
        Ok(()) => {}
        Err(Fed::Write(err)) => return Err(err.into()),
        Err(Fed::Read(message)) => return Err(Status::failed_precondition(message)),
        Err(Fed::HungUp) => return Err(Status::cancelled("the client hung up")),
    }
    let outcome = writer.commit().await.map_err(|err| match err {
        // The digest was the daemon's own reading of the file, not the client's claim.
        custodian_storage::StorageError::DigestMismatch { expected, actual } if hashed_here => {
            Status::failed_precondition(format!(
                "the handed-over file changed while the daemon read it: it first hashed to {expected}, then to {actual}; nothing was kept"
            ))
        }
        other => GrpcError::from(other).into(),
    })?;
    tracing::debug!(digest = %outcome.meta.sha256(), size = outcome.meta.size, hashed_here, "local put");
    Ok(cas.put_response(&who, &outcome))
}

/// Why [`feed_file`] stopped early.
enum Fed<E> {
    /// The sink refused a piece.
    Write(E),
    /// Reading the file failed (the message says where).
    Read(String),
    /// The client hung up while it was told how far the read had come.
    HungUp,
}

/// What [`feed_file`] writes the file's pieces into.
trait PieceSink {
    /// Why a piece was refused.
    type Error;
    /// Takes the next piece.
    fn take(&mut self, piece: Bytes) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

impl PieceSink for BlobWriter {
    type Error = GrpcError;
    async fn take(&mut self, piece: Bytes) -> Result<(), GrpcError> {
        self.write(piece).await.map_err(GrpcError::from)
    }
}

impl PieceSink for rest::HostedUpload {
    type Error = ApiError;
    async fn take(&mut self, piece: Bytes) -> Result<(), ApiError> {
        self.write(piece).await
    }
}

/// Reads the handed-over file from offset 0 to its end into `sink`, telling the client how far
/// it is every [`PROGRESS_EVERY`] bytes.
async fn feed_file<S: PieceSink>(
    file: OwnedFd,
    size: u64,
    piece: usize,
    stream: &mut UnixStream,
    sink: &mut S,
) -> Result<(), Fed<S::Error>> {
    let mut pieces = read_pieces(file, size, piece);
    let (mut read, mut reported) = (0u64, 0u64);
    while let Some(piece) = pieces.recv().await {
        let piece = piece.map_err(|(at, err)| {
            Fed::Read(format!(
                "reading the handed-over file failed at byte {at}: {err}"
            ))
        })?;
        read += piece.len() as u64;
        sink.take(piece).await.map_err(Fed::Write)?;
        if read - reported >= PROGRESS_EVERY {
            reported = read;
            send(stream, pb::local_put_reply::Message::ProgressBytes(read))
                .await
                .map_err(|_| Fed::HungUp)?;
        }
    }
    Ok(())
}

/// A request with a data pack: the file is stored and scanned as the REST hosted upload stores
/// and scans its body, then registered, and the answer is the REST API's. `None` if the client
/// hung up (nothing is kept).
async fn data_pack(
    cas: &CasService,
    scans: &StreamScans,
    request: &pb::LocalPutRequest,
    pack: &pb::LocalDataPack,
    file: OwnedFd,
    stream: &mut UnixStream,
) -> Option<pb::LocalDataPackAnswer> {
    use axum::http::StatusCode;
    let outcome = async {
        if !request.expected_digest.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!(
                    "field expected_digest: {:?} — a data pack declares its digest as \"sha256\" in data_pack.metadata_json, as the REST upload does",
                    request.expected_digest
                ),
            ));
        }
        let size = check_readable_file(&file).map_err(|status| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                status.message(),
            )
        })?;
        // The bytes registered must be one file's: one that changes from here until it is read
        // to its end is refused. A second handle keeps the file to look at after the read.
        let watched = file.try_clone().map_err(|err| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("cannot keep a second handle on the handed-over file: {err}"),
            )
        })?;
        let before = file_stamp(&watched);
        if let Some(expected) = request.expected_size
            && expected != size
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "failed_precondition",
                format!(
                    "field expected_size: {expected}, but the handed-over file holds {size} bytes"
                ),
            ));
        }
        let authorization = (!request.authorization.is_empty()).then_some(&*request.authorization);
        let mut upload = rest::begin_local(
            cas.registry(),
            cas.authenticator(),
            scans.permits(),
            authorization,
            pack,
        )
        .await?;
        let fed = feed_file(file, size, cas.store().block_size(), stream, &mut upload).await;
        match fed {
            Ok(()) => {}
            Err(Fed::Write(err)) => return Err(err),
            Err(Fed::Read(message)) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "failed_precondition",
                    message,
                ));
            }
            Err(Fed::HungUp) => return Ok(None),
        }
        if before.is_none() || file_stamp(&watched) != before {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "failed_precondition",
                format!(
                    "{} changed while the daemon read it (its size, modification or change time moved), so nothing was registered; upload it again once it is complete",
                    pack.file_name
                ),
            ));
        }
        upload.finish().await.map(Some)
    }
    .await;
    let (status, body) = match outcome {
        Ok(None) => return None,
        Ok(Some(answer)) => answer,
        Err(err) => err.answer(),
    };
    Some(pb::LocalDataPackAnswer {
        http_status: u32::from(status.as_u16()),
        body_json: body.to_string(),
    })
}

/// What tells whether a file was written to: its size and its modification and change times.
fn file_stamp(file: &OwnedFd) -> Option<(i64, i64, i64, i64, i64)> {
    let stat = rustix::fs::fstat(file).ok()?;
    Some((
        stat.st_size,
        stat.st_mtime,
        stat.st_mtime_nsec as i64,
        stat.st_ctime,
        stat.st_ctime_nsec as i64,
    ))
}

/// Refuses a descriptor that is not a regular file open for reading, naming what it is;
/// returns the file's size as it is now.
fn check_readable_file(file: &OwnedFd) -> Result<u64, Status> {
    use rustix::fs::{FileType, OFlags};
    let stat = rustix::fs::fstat(file)
        .map_err(|err| Status::invalid_argument(format!("cannot stat the descriptor: {err}")))?;
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => None,
        FileType::Directory => Some("a directory"),
        FileType::Symlink => Some("a symbolic link"),
        FileType::Fifo => Some("a pipe"),
        FileType::Socket => Some("a socket"),
        FileType::CharacterDevice => Some("a character device"),
        FileType::BlockDevice => Some("a block device"),
        _ => Some("not a file"),
    };
    if let Some(kind) = kind {
        return Err(Status::invalid_argument(format!(
            "the descriptor is {kind}, not a regular file: stream other sources with ContentStore.Put"
        )));
    }
    let flags = rustix::fs::fcntl_getfl(file).map_err(|err| {
        Status::invalid_argument(format!("cannot read the descriptor's flags: {err}"))
    })?;
    // A descriptor opened with O_PATH names a file without opening it: nothing can be read
    // through it, so it is refused here rather than failing at the first read.
    if flags.contains(OFlags::PATH) {
        return Err(Status::invalid_argument(
            "the descriptor was opened with O_PATH, through which nothing can be read: open the file for reading",
        ));
    }
    if flags & OFlags::RWMODE == OFlags::WRONLY {
        return Err(Status::invalid_argument(
            "the descriptor is open for writing only: open the file for reading",
        ));
    }
    Ok(u64::try_from(stat.st_size).unwrap_or(0))
}

/// The file from offset 0 to its end in pieces of about `piece` bytes, read on the blocking
/// pool two pieces ahead of the writer, with the kernel asked to read ahead of them (`size`,
/// the file's size when it was checked, bounds that advice, not the reading). `pread` leaves the
/// descriptor's offset, which the client shares, alone. A read error ends the pieces with the
/// offset it happened at.
/// The SHA-256 of the whole file behind `file`, read with `pread` from its start (the
/// descriptor's offset is left alone); on failure, the byte it failed at.
fn sha256_of(file: &OwnedFd) -> Result<custodian_core::Digest, (u64, io::Error)> {
    use sha2::Digest as _;
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Sequential);
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        match rustix::io::pread(file, &mut buf[..], at) {
            Ok(0) => return Ok(custodian_core::Digest::sha256(hasher.finalize().into())),
            Ok(read) => {
                hasher.update(&buf[..read]);
                at += read as u64;
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err((at, err.into())),
        }
    }
}

fn read_pieces(
    file: OwnedFd,
    size: u64,
    piece: usize,
) -> tokio::sync::mpsc::Receiver<Result<Bytes, (u64, io::Error)>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
        let mut ahead = custodian_storage::ReadAhead::new(0, size);
        let mut at = 0u64;
        loop {
            ahead.before_reading(&file, at);
            let mut buf = Vec::with_capacity(piece);
            match rustix::io::pread(&file, rustix::buffer::spare_capacity(&mut buf), at) {
                Ok(0) => return,
                Ok(read) => {
                    at += read as u64;
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(err) => {
                    let _ = tx.blocking_send(Err((at, err.into())));
                    return;
                }
            }
        }
    });
    rx
}
