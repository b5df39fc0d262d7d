//! Puts by handing the daemon the file: when the daemon runs on this machine and announces a
//! local put socket, `blob put` and `publish` send it the open file (`SCM_RIGHTS`) instead of
//! streaming the bytes over gRPC, and the daemon reads, verifies and commits it itself
//! (docs/api.md, "Local puts"). Streaming stays the path for every other daemon, and for this one
//! with `--no-local-put`.

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::AsFd as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use custodian_client::Conn;
use custodian_core::Digest;
use custodian_proto::cas::v1 as pb;
use custodian_proto::cas::v1::content_store_client::ContentStoreClient;
use prost::Message as _;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use tokio::io::{AsyncReadExt as _, Interest};
use tokio::net::UnixStream;

use crate::client::{ServerArg, status_error};

/// The largest reply frame read; a reply holds a blob's metadata or an error message.
const MAX_REPLY_FRAME: usize = 1 << 20;

/// A daemon's local put socket and the instance value its requests must repeat.
pub struct LocalSocket {
    /// The socket's path.
    pub path: PathBuf,
    /// `Capabilities.local_put_instance`.
    pub instance: String,
}

/// The daemon's local put socket, if puts from here should use it: the daemon is addressed on a
/// loopback address, announces a socket, and `--no-local-put` is not given.
pub async fn socket(
    server: &ServerArg,
    client: &mut ContentStoreClient<Conn>,
) -> Option<LocalSocket> {
    if server.no_local_put || !is_loopback(&server.server) {
        return None;
    }
    // A daemon too old to announce one, or one that cannot answer, is streamed to; if it cannot
    // answer at all, the put itself reports why.
    let capabilities = client
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await
        .ok()?
        .into_inner();
    (!capabilities.local_put_socket.is_empty()).then(|| LocalSocket {
        path: capabilities.local_put_socket.into(),
        instance: capabilities.local_put_instance,
    })
}

/// True if `server` (a gRPC or REST address) names this machine by a loopback address.
pub(crate) fn is_loopback(server: &str) -> bool {
    let Ok(uri) = server.parse::<tonic::transport::Uri>() else {
        return false;
    };
    match uri.host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Puts `file` (of `size` bytes, as read before) through the local put socket `socket`, moving
/// `bar` as the daemon reports its progress. `Ok(None)` if the socket cannot be reached or
/// belongs to another daemon (one reached through a tunnel has its socket on its own machine),
/// so the caller streams instead; otherwise, once the request is sent, every failure is an
/// error.
pub async fn put(
    socket: &LocalSocket,
    file: &std::fs::File,
    expect: Option<Digest>,
    size: u64,
    token: Option<&str>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Option<pb::PutResponse>> {
    let request = pb::LocalPutRequest {
        expected_digest: expect.map(|d| d.to_string()).unwrap_or_default(),
        expected_size: Some(size),
        authorization: bearer(token),
        instance: socket.instance.clone(),
        data_pack: None,
    };
    match exchange(socket, file, &request, bar).await? {
        None => Ok(None),
        Some(pb::local_put_reply::Message::Done(done)) => Ok(Some(done)),
        Some(_) => bail!("the daemon answered a put with a data pack's answer"),
    }
}

/// Hands `file` (of `size` bytes, as read before) to the daemon at `socket` to register as the
/// hosted data pack `pack`: the daemon stores, scans and registers it as the REST hosted upload
/// would, and answers what the REST API would have (`Ok(None)` as for [`put`]).
pub async fn put_data_pack(
    socket: &LocalSocket,
    file: &std::fs::File,
    size: u64,
    token: Option<&str>,
    pack: pb::LocalDataPack,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Option<pb::LocalDataPackAnswer>> {
    let request = pb::LocalPutRequest {
        expected_digest: String::new(),
        expected_size: Some(size),
        authorization: bearer(token),
        instance: socket.instance.clone(),
        data_pack: Some(pack),
    };
    match exchange(socket, file, &request, bar).await? {
        None => Ok(None),
        Some(pb::local_put_reply::Message::DataPackAnswer(answer)) => Ok(Some(answer)),
        Some(_) => bail!("the daemon answered a data pack upload with a put's answer"),
    }
}

/// The `authorization` value of a request: what gRPC metadata would carry.
fn bearer(token: Option<&str>) -> String {
    token
        .filter(|token| !token.is_empty())
        .map(|token| format!("Bearer {token}"))
        .unwrap_or_default()
}

/// Sends `request` with `file` attached and reads the replies up to the outcome: `None` if the
/// socket cannot be reached or is another daemon's; a refusal as an error.
async fn exchange(
    socket: &LocalSocket,
    file: &std::fs::File,
    request: &pb::LocalPutRequest,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Option<pb::local_put_reply::Message>> {
    let socket = socket.path.as_path();
    let mut stream = match UnixStream::connect(socket).await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::debug!(socket = %socket.display(), %err, "local put socket unreachable; streaming");
            return Ok(None);
        }
    };
    let frame = custodian_proto::local_put::frame(request);
    send_with_descriptor(&stream, &frame, file)
        .await
        .with_context(|| {
            format!(
                "sending the file to the daemon's local put socket {}",
                socket.display()
            )
        })?;
    bar.set_message(format!("{} (read by the daemon)", bar.message()));
    loop {
        let reply = receive(&mut stream).await.with_context(|| {
            format!(
                "the daemon's local put socket {} broke off before answering",
                socket.display()
            )
        })?;
        match reply.message {
            Some(pb::local_put_reply::Message::ProgressBytes(read)) => bar.set_position(read),
            Some(pb::local_put_reply::Message::OtherDaemon(theirs)) => {
                tracing::debug!(socket = %socket.display(), %theirs, "the local put socket is another daemon's; streaming");
                return Ok(None);
            }
            Some(pb::local_put_reply::Message::Error(error)) => {
                return Err(status_error(tonic::Status::new(
                    tonic::Code::from(error.code),
                    error.message,
                )));
            }
            Some(outcome) => return Ok(Some(outcome)),
            None => bail!("the daemon's local put socket sent an empty reply"),
        }
    }
}

/// Sends `frame` with `file`'s descriptor attached to its first byte.
async fn send_with_descriptor(
    stream: &UnixStream,
    frame: &[u8],
    file: &std::fs::File,
) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < frame.len() {
        stream.writable().await?;
        let result = stream.try_io(Interest::WRITABLE, || {
            let fds = [file.as_fd()];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            // The descriptor goes with the first bytes only.
            if sent == 0 && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(std::io::Error::other("no room for the descriptor"));
            }
            Ok(rustix::net::sendmsg(
                stream,
                &[IoSlice::new(&frame[sent..])],
                &mut control,
                SendFlags::NOSIGNAL,
            )?)
        });
        match result {
            Ok(n) => sent += n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Reads one reply frame.
async fn receive(stream: &mut UnixStream) -> anyhow::Result<pb::LocalPutReply> {
    let len = stream.read_u32().await? as usize;
    if len > MAX_REPLY_FRAME {
        bail!("a reply frame of {len} bytes is more than a LocalPutReply can be");
    }
    let mut frame = vec![0; len];
    stream.read_exact(&mut frame).await?;
    Ok(pb::LocalPutReply::decode(&frame[..])?)
}
