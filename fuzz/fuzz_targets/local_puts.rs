//! The local put socket (docs/api.md, "Local puts"), as a program of connections against a
//! model: each connection sends one request frame, cut into pieces with the descriptors attached
//! to one of them, and reads the answer, through the socket custodian-server's `rest::fixture`
//! serves as the daemon does. A request puts a blob, or registers a hosted data pack of a version
//! the execution publishes (once per version, so the model starts empty), or one of a version
//! that was never published.
//!
//! What is checked, beyond "no panic" and "an answer, whole":
//! - a frame that ends before its declared length, because the client hung up, is answered with
//!   nothing; one that declares more than a request may hold, carries bytes after its end, or
//!   carries other than exactly one descriptor, or whose bytes are not a request, is refused with
//!   `INVALID_ARGUMENT` and a message naming what is wrong; a request for another daemon is
//!   answered with this daemon's instance;
//! - a put is refused exactly as `Put` refuses it (no token or a token that is none, a digest
//!   that does not parse, a descriptor that is a directory, a pipe, open for writing only or
//!   opened with `O_PATH`, another digest or size than the bytes'), and leaves the bytes out of
//!   custody unless an earlier put of this execution stored them; otherwise it answers both
//!   digests and the size of the file's bytes, `already_present` exactly when an earlier put of
//!   the execution stored them, and the blob then reads back as those bytes;
//! - a data pack request is answered with the REST API's status and error code for the same
//!   upload: a declared digest (which belongs in the metadata) and the descriptor, the declared
//!   size, a token, the metadata, the version and the caller's right to register are checked in
//!   that order (an anonymous caller learns that a version does not exist, as anyone may), and
//!   it registers the bytes
//!   exactly when they match the digest the metadata declares and the version has no other
//!   data pack (201, or 200 for the same bytes again), answering their sha256; the version's
//!   data pack then downloads as exactly those bytes, and never before.
//!
//! Input: a program, as in `oci_uploads`: one byte choosing the operation (from 128 up, as an
//! anonymous caller), then the operation's own bytes.

#![no_main]

#[path = "common/world.rs"]
mod world;

#[path = "common/program.rs"]
mod program;

use std::collections::HashSet;
use std::io::{IoSlice, Read as _};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use custodian_core::{Algorithm, Digest};
use custodian_proto::cas::v1 as cas;
use custodian_proto::local_put::MAX_REQUEST_FRAME;
use custodian_server::rest::fixture;
use libfuzzer_sys::fuzz_target;
use program::Program;
use prost::Message as _;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// What one execution's requests are judged against.
struct Model {
    /// Put in front of every file's bytes but an empty one's, so that no execution meets a blob
    /// an earlier one of the process stored (the fixture's custody lasts as long as the process).
    nonce: [u8; 8],
    /// The execution's own version, published when a data pack request first names it.
    version: String,
    published: bool,
    /// The sha256 of every blob a put of this execution stored.
    stored: HashSet<Digest>,
    /// The data pack registered for the version, if one is.
    registered: Option<Vec<u8>>,
}

/// What the connection hands the daemon with its request frame.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Handed {
    /// The file, open for reading.
    Readable,
    /// The file, open for reading and writing.
    ReadWrite,
    /// The file, open for writing only.
    WriteOnly,
    /// The scratch directory.
    Directory,
    /// The reading end of a pipe.
    Pipe,
    /// The file, opened with `O_PATH`.
    PathOnly,
    /// No descriptor.
    Nothing,
    /// The file, twice.
    Two,
}

impl Handed {
    fn from_byte(b: u8) -> Self {
        [
            Handed::Readable,
            Handed::ReadWrite,
            Handed::WriteOnly,
            Handed::Directory,
            Handed::Pipe,
            Handed::PathOnly,
            Handed::Nothing,
            Handed::Two,
        ][usize::from(b % 8)]
    }

    /// What the daemon says of a descriptor it cannot read, if this is one.
    fn unreadable(self) -> Option<&'static str> {
        match self {
            Handed::WriteOnly => Some("for writing only"),
            Handed::Directory => Some("a directory"),
            Handed::Pipe => Some("a pipe"),
            Handed::PathOnly => Some("O_PATH"),
            _ => None,
        }
    }
}

/// What is wrong with the frame, if anything.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    /// The client hangs up after this many of the frame's bytes.
    HangsUp(usize),
    /// The length prefix declares more than a request may hold.
    TooLong,
    /// Bytes follow the frame, in its last piece.
    Trailing(usize),
    /// The frame's bytes are not a `LocalPutRequest`.
    NotARequest,
}

/// The gRPC status codes the socket answers with (google.rpc.Code).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Code {
    InvalidArgument = 3,
    Unauthenticated = 16,
}

/// What the daemon must answer.
#[derive(Debug)]
enum Expect {
    /// Nothing: the connection closes without a reply.
    Nothing,
    /// An `ItemError` with this code, whose message names one of these.
    Refused(Code, Vec<String>),
    /// `other_daemon`, naming this daemon's instance.
    OtherDaemon,
    /// `done`, for the file's bytes; `already_present` as given, unless unknown.
    Stored(Option<bool>),
    /// `data_pack_answer` with this status, and the REST error code unless it is a success.
    DataPack(u16, Option<&'static str>),
}

/// The scratch directory the files are written in.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| world::process_dir("custodian-fuzz-local-put"))
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, bytes)
}

/// The file's bytes: empty (byte 255), literal bytes from the program, or a run of one byte up
/// to 255 KiB long (so that the memory backend's 64 KiB blocks are crossed); all but the empty
/// one after the execution's nonce.
fn content(program: &mut Program, model: &Model) -> Vec<u8> {
    let b = program.byte();
    let body = match b {
        255 => return Vec::new(),
        0..192 => program.take(usize::from(b % 48)).to_vec(),
        _ => {
            let len = usize::from(program.byte()) * 1024 + usize::from(b % 64);
            vec![program.byte(); len]
        }
    };
    [&model.nonce[..], &body].concat()
}

/// Opens what is handed over; the second vector keeps what must stay open until the answer (a
/// pipe's writing end).
fn open(handed: Handed, file: &std::path::Path) -> (Vec<OwnedFd>, Vec<OwnedFd>) {
    use std::fs::OpenOptions;
    let opened = |options: &OpenOptions| OwnedFd::from(options.open(file).expect("the file"));
    match handed {
        Handed::Readable => (vec![opened(OpenOptions::new().read(true))], vec![]),
        Handed::ReadWrite => (
            vec![opened(OpenOptions::new().read(true).write(true))],
            vec![],
        ),
        Handed::WriteOnly => (vec![opened(OpenOptions::new().write(true))], vec![]),
        Handed::Directory => (
            vec![OwnedFd::from(
                std::fs::File::open(scratch()).expect("the directory"),
            )],
            vec![],
        ),
        Handed::Pipe => {
            let (reader, writer) = std::io::pipe().expect("a pipe");
            (vec![OwnedFd::from(reader)], vec![OwnedFd::from(writer)])
        }
        Handed::PathOnly => (
            vec![
                rustix::fs::open(
                    file,
                    rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .expect("the file with O_PATH"),
            ],
            vec![],
        ),
        Handed::Nothing => (vec![], vec![]),
        Handed::Two => (
            vec![
                opened(OpenOptions::new().read(true)),
                opened(OpenOptions::new().read(true)),
            ],
            vec![],
        ),
    }
}

/// Sends `pieces` on a new connection, the descriptors attached to piece `with_fds`, hangs up
/// (its writing half) if `hang_up`, and reads every byte of the answer until the daemon closes.
fn exchange(pieces: &[&[u8]], fds: &[OwnedFd], with_fds: usize, hang_up: bool) -> Vec<u8> {
    let path = &world::world().local_put.path;
    let mut stream = UnixStream::connect(path).expect("connect to the local put socket");
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if i == with_fds && !borrowed.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        }
        // A daemon that has refused the frame may have closed already: what it answered is read
        // below, so a failed send is not an error here.
        match rustix::net::sendmsg(
            &stream,
            &[IoSlice::new(piece)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(sent) => assert_eq!(sent, piece.len(), "a small piece is sent whole"),
            Err(_) => break,
        }
    }
    if hang_up {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("read the daemon's answer");
    answer
}

/// The reply frames in `answer`; panics unless it is whole frames that decode.
fn replies(answer: &[u8]) -> Vec<cas::LocalPutReply> {
    let mut rest = answer;
    let mut out = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 4, "a reply's length is cut short");
        let len = u32::from_be_bytes(rest[..4].try_into().expect("four bytes")) as usize;
        assert!(rest.len() >= 4 + len, "a reply is cut short");
        out.push(cas::LocalPutReply::decode(&rest[4..4 + len]).expect("a LocalPutReply"));
        rest = &rest[4 + len..];
    }
    out
}

/// What the model expects of the frame `fault` describes, carrying `request` with `handed`, for
/// a file of `bytes`.
fn expect(
    model: &Model,
    request: &cas::LocalPutRequest,
    handed: Handed,
    bytes: &[u8],
    fault: Fault,
) -> Expect {
    let invalid = |names: &str| Expect::Refused(Code::InvalidArgument, vec![names.to_string()]);
    match fault {
        Fault::HangsUp(_) => return Expect::Nothing,
        Fault::TooLong => return invalid(&format!("at most {MAX_REQUEST_FRAME}")),
        Fault::Trailing(_) => return invalid("follow the"),
        Fault::None | Fault::NotARequest => {}
    }
    if matches!(handed, Handed::Nothing | Handed::Two) {
        return invalid("exactly one file descriptor");
    }
    if fault == Fault::NotARequest {
        return invalid("not a LocalPutRequest");
    }
    if request.instance != world::world().local_put.instance {
        return Expect::OtherDaemon;
    }
    let size_wrong = request
        .expected_size
        .is_some_and(|size| size != bytes.len() as u64);
    let authorized = request.authorization == format!("Bearer {}", world::world().token);
    if let Some(pack) = &request.data_pack {
        if !request.expected_digest.is_empty() || handed.unreadable().is_some() {
            return Expect::DataPack(400, Some("invalid_argument"));
        }
        if size_wrong {
            return Expect::DataPack(409, Some("failed_precondition"));
        }
        // A token that is none is refused at once; without a token the caller is anonymous,
        // who may learn what anyone may read (that a version does not exist) but may not
        // register anything.
        let anonymous = request.authorization.is_empty();
        if !authorized && !anonymous {
            return Expect::DataPack(401, Some("unauthenticated"));
        }
        let Ok(metadata) = serde_json::from_str::<serde_json::Value>(&pack.metadata_json) else {
            return Expect::DataPack(400, Some("invalid_argument"));
        };
        if pack.version != model.version {
            return Expect::DataPack(404, Some("not_found"));
        }
        if anonymous {
            return Expect::DataPack(401, Some("unauthenticated"));
        }
        let declared = metadata["sha256"].as_str().map(str::to_string);
        let mine = sha256(bytes).to_string();
        return match (&model.registered, declared) {
            (Some(registered), None) if registered == bytes => Expect::DataPack(200, None),
            (Some(_), None) => Expect::DataPack(409, Some("already_exists")),
            (Some(registered), Some(declared)) if declared != sha256(registered).to_string() => {
                Expect::DataPack(409, Some("already_exists"))
            }
            (Some(registered), Some(_)) if registered == bytes => Expect::DataPack(200, None),
            (_, Some(declared)) if declared != mine => {
                Expect::DataPack(422, Some("digest_mismatch"))
            }
            (Some(_), Some(_)) => unreachable!(
                "the declared digest is both the registered one and the bytes', which differ"
            ),
            (None, _) => Expect::DataPack(201, None),
        };
    }
    if !authorized {
        return Expect::Refused(Code::Unauthenticated, vec![String::new()]);
    }
    let declared = match request.expected_digest.as_str() {
        "" => None,
        text => match text.parse::<Digest>() {
            Ok(digest) => Some(digest),
            Err(_) => return invalid("expected_digest"),
        },
    };
    if let Some(what) = handed.unreadable() {
        return invalid(what);
    }
    let digest_wrong = declared.is_some_and(|d| Digest::of(d.algorithm(), bytes) != d);
    match (digest_wrong, size_wrong) {
        (true, true) => Expect::Refused(
            Code::InvalidArgument,
            vec!["digest mismatch".into(), "size mismatch".into()],
        ),
        (true, false) => invalid("digest mismatch"),
        (false, true) => invalid("size mismatch"),
        (false, false) if bytes.is_empty() => Expect::Stored(None),
        (false, false) => Expect::Stored(Some(model.stored.contains(&sha256(bytes)))),
    }
}

/// The digest the request declares: none, the bytes' sha256 or blake3, another blob's, one
/// that does not parse, or one of an algorithm custody does not know.
fn declared_digest(b: u8, bytes: &[u8]) -> String {
    match b % 8 {
        1 => sha256(bytes).to_string(),
        2 => Digest::of(Algorithm::Blake3, bytes).to_string(),
        3 => sha256(b"no put is this").to_string(),
        4 => "sha256:xyz".into(),
        5 => sha256(bytes).to_string().to_uppercase(),
        6 => format!("md5:{}", "0".repeat(32)),
        _ => String::new(),
    }
}

/// One connection: the request's choices, then the frame's.
fn connection(program: &mut Program, model: &mut Model, anonymous: bool) {
    let world = world::world();
    let choice = program.byte();
    let handed = Handed::from_byte(choice);
    let data_pack = choice & 8 != 0;
    let other_daemon = choice & 16 != 0;
    let bogus_token = choice & 32 != 0;
    let bytes = content(program, model);
    let declarations = program.byte();
    let expected_size = match (declarations >> 3) % 4 {
        1 => Some(bytes.len() as u64),
        2 => Some((bytes.len() as u64).wrapping_sub(1)),
        3 => Some(bytes.len() as u64 + 1),
        _ => None,
    };
    let authorization = match (anonymous, bogus_token) {
        (true, _) => String::new(),
        (false, true) => "Bearer not-a-token".into(),
        (false, false) => format!("Bearer {}", world.token),
    };
    let mut request = cas::LocalPutRequest {
        // A data pack request declares its digest in its metadata; one here is refused.
        expected_digest: match data_pack && declarations & 128 == 0 {
            true => String::new(),
            false => declared_digest(declarations, &bytes),
        },
        expected_size,
        authorization,
        instance: match other_daemon {
            true => "0".repeat(32),
            false => world.local_put.instance.clone(),
        },
        data_pack: None,
    };
    if data_pack {
        let shape = program.byte();
        let metadata = match shape % 4 {
            0 => r#"{"license": "CC0-1.0"}"#.to_string(),
            1 => serde_json::json!({"license": "CC0-1.0", "sha256": sha256(&bytes).to_string()})
                .to_string(),
            2 => {
                serde_json::json!({"license": "CC0-1.0", "sha256": sha256(b"no pack").to_string()})
                    .to_string()
            }
            _ => r#"{"license": "#.to_string(),
        };
        let version = match shape & 4 {
            0 => model.version.clone(),
            _ => "9.9.9".to_string(),
        };
        if version == model.version && !model.published {
            world.publish(&model.version);
            model.published = true;
        }
        request.data_pack = Some(cas::LocalDataPack {
            name: fixture::NAME.into(),
            version,
            metadata_json: metadata,
            file_name: "pack.bin".into(),
        });
    }

    // The frame, and what is wrong with it.
    let framing = program.byte();
    let mut body = request.encode_to_vec();
    let fault = match framing % 8 {
        1 => Fault::TooLong,
        2 => Fault::Trailing(1 + usize::from(framing >> 6)),
        3 => Fault::NotARequest,
        4 => Fault::HangsUp(usize::from(program.byte())),
        _ => Fault::None,
    };
    if fault == Fault::NotARequest {
        body = vec![0xff, 0xff, 0xff];
    }
    let declared_len = match fault {
        Fault::TooLong => (MAX_REQUEST_FRAME + 1 + usize::from(program.byte())) as u32,
        _ => body.len() as u32,
    };
    let mut frame = declared_len.to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    let frame_end = frame.len();
    // A hang-up comes before the frame's end; trailing bytes ride in the frame's last piece, so
    // that the daemon reads them with its end.
    let (fault, sent) = match fault {
        Fault::HangsUp(at) => (Fault::HangsUp(at % frame_end), at % frame_end),
        Fault::Trailing(n) => {
            frame.extend(std::iter::repeat_n(0x5a, n));
            (fault, frame.len())
        }
        _ => (fault, frame.len()),
    };
    let mut cuts: Vec<usize> = (0..(framing >> 3) % 4)
        .map(|_| usize::from(program.byte()))
        .filter(|&c| c > 0 && c < frame_end.min(sent.max(1)))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces = Vec::new();
    let mut from = 0;
    for cut in cuts.into_iter().chain([sent]) {
        if cut > from {
            pieces.push(&frame[from..cut]);
            from = cut;
        }
    }
    let with_fds = usize::from(program.byte()) % pieces.len().max(1);

    let file = scratch().join("file");
    std::fs::write(&file, &bytes).expect("write the file");
    let (fds, keep) = open(handed, &file);
    let hang_up = matches!(fault, Fault::HangsUp(_));
    let answer = exchange(&pieces, &fds, with_fds, hang_up);
    drop((fds, keep));

    let expected = expect(model, &request, handed, &bytes, fault);
    let what = format!("{handed:?}, {fault:?}, {request:?}");
    let replies = replies(&answer);
    use cas::local_put_reply::Message;
    let reply = match (&expected, &replies[..]) {
        (Expect::Nothing, []) => return,
        (Expect::Nothing, other) => panic!("{what}: answered {other:?}, expected nothing"),
        (_, [reply]) => reply.message.clone(),
        (_, other) => panic!("{what}: expected one reply, got {other:?}"),
    };
    match (expected, reply) {
        (Expect::Refused(code, names), Some(Message::Error(error))) => {
            assert_eq!(error.code, code as i32, "{what}: refused with {error:?}");
            assert!(
                !error.message.is_empty() && names.iter().any(|n| error.message.contains(n)),
                "{what}: the message {:?} names none of {names:?}",
                error.message
            );
            absent_unless_stored(model, &bytes, &what);
        }
        (Expect::OtherDaemon, Some(Message::OtherDaemon(theirs))) => {
            assert_eq!(theirs, world.local_put.instance, "{what}");
            absent_unless_stored(model, &bytes, &what);
        }
        (Expect::Stored(already), Some(Message::Done(done))) => {
            let blob = done.blob.expect("a stored blob's info");
            assert_eq!(
                (blob.sha256, blob.blake3, blob.size),
                (
                    sha256(&bytes).to_string(),
                    Digest::of(Algorithm::Blake3, &bytes).to_string(),
                    bytes.len() as u64
                ),
                "{what}: the stored blob"
            );
            if let Some(already) = already {
                assert_eq!(done.already_present, already, "{what}: already_present");
            }
            model.stored.insert(sha256(&bytes));
            reads_back(&bytes, &what);
        }
        (Expect::DataPack(status, code), Some(Message::DataPackAnswer(answer))) => {
            let body: serde_json::Value = serde_json::from_str(&answer.body_json)
                .unwrap_or_else(|e| panic!("{what}: a body that is not JSON ({e})"));
            assert_eq!(
                (answer.http_status, body["error"]["code"].as_str()),
                (u32::from(status), code),
                "{what}: answered {body}"
            );
            if code.is_none() {
                assert!(
                    answer.body_json.contains(&sha256(&bytes).to_string()),
                    "{what}: the registration does not name the bytes' sha256: {body}"
                );
                model.stored.insert(sha256(&bytes));
                model.registered = Some(bytes.clone());
            } else {
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{what}: a refusal without a message"
                );
                absent_unless_stored(model, &bytes, &what);
            }
            if model.published {
                program::check_download(&model.version, model.registered.as_deref(), false, &what);
            }
        }
        (expected, reply) => panic!("{what}: expected {expected:?}, answered {reply:?}"),
    }
}

/// Checks that a refused or turned-away request left its bytes out of custody, unless a put of
/// this execution stored them (or they are the empty blob, which any execution may have stored).
fn absent_unless_stored(model: &Model, bytes: &[u8], what: &str) {
    let digest = sha256(bytes);
    if bytes.is_empty() || model.stored.contains(&digest) {
        return;
    }
    assert!(
        world::world().stored(&digest).is_none(),
        "{what}: the bytes of a request that was not served are in custody"
    );
}

/// Checks that the blob of `bytes` reads back as them.
fn reads_back(bytes: &[u8], what: &str) {
    let digest = sha256(bytes);
    assert!(
        world::world().stored(&digest).as_deref() == Some(bytes),
        "{what}: {digest} does not read back as the bytes put"
    );
}

fuzz_target!(|data: &[u8]| {
    static EXECUTION: AtomicU64 = AtomicU64::new(0);
    let execution = EXECUTION.fetch_add(1, Ordering::Relaxed);
    let mut model = Model {
        nonce: execution.to_be_bytes(),
        version: format!("0.1.{execution}"),
        published: false,
        stored: HashSet::new(),
        registered: None,
    };
    program::run(data, |program, _op, anonymous| {
        connection(program, &mut model, anonymous)
    });
});
