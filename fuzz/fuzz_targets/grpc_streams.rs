//! The content store's calls whose requests the daemon reads out of their HTTP/2 frames itself
//! rather than through tonic (`grpc/cas_upload.rs`, `grpc/unary.rs`, `grpc/digest_list.rs`), and
//! `Get`, whose answer it frames itself (`grpc/cas_get.rs`): arbitrary request bodies, cut into
//! arbitrary DATA frames, through the daemon's services in process on custodian-server's
//! `rest::fixture` (custody in memory). Each answer is checked against a model written here
//! from what prost decodes, and each acknowledged blob against what tonic's own `BatchGet` (the
//! generated service, not the code under test) reads back:
//!
//! - no call ends `UNKNOWN` or `DATA_LOSS`, a refusal says why, and a body that is whole,
//!   uncompressed frames whose messages decode is never refused as malformed (`INTERNAL`);
//! - `Put` is answered OK exactly when the model says so (a header first and nowhere else; the
//!   declared digest and size, if any, those of the chunks), with the chunks' digests and size,
//!   and the blob then reads back as the chunks; a refused `Put` leaves custody as it was (the
//!   declared digest and the chunks' digest absent before are absent after);
//! - `BatchPut` answers one result per item, in order; an item is stored exactly when its
//!   declared digest is empty or is its bytes' digest, with its bytes' digests, and reads back;
//! - `FindMissing` names as missing exactly the requested digests custody lacks, in order;
//! - `Get` answers the blob's bytes from its offset, as many as its limit allows;
//! - `AppendStream` (read by tonic, answered by the daemon's own queue) answers every request
//!   that arrived whole, in the order sent, even when the stream breaks after it; its entries
//!   enter the log in that order and read back with the kind and the payload sent (in
//!   deterministic form) and the leaf hash answered; each refusal is what `Append` answers the
//!   same request.
//!
//! `WriteUpload` is sent the same bodies for its framing alone: its sessions' identifiers are
//! random, so the model has no session to follow.
//!
//! Input: one byte choosing the method (from 128 up, as an anonymous caller), one byte choosing
//! how the body is cut into DATA frames (0: one frame; n: frames of n bytes), then the body.

#![no_main]

#[path = "common/world.rs"]
mod world;

use bytes::Bytes;
use custodian_core::{Algorithm, Digest};
use custodian_proto::cas::v1 as pb;
use custodian_proto::ledger::v1 as ledger;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

const PUT: &str = "/custodian.cas.v1.ContentStore/Put";
const WRITE_UPLOAD: &str = "/custodian.cas.v1.ContentStore/WriteUpload";
const BATCH_PUT: &str = "/custodian.cas.v1.ContentStore/BatchPut";
const FIND_MISSING: &str = "/custodian.cas.v1.ContentStore/FindMissing";
const GET: &str = "/custodian.cas.v1.ContentStore/Get";
const APPEND_STREAM: &str = "/custodian.ledger.v1.Ledger/AppendStream";
const APPEND: &str = "/custodian.ledger.v1.Ledger/Append";
const GET_ENTRY: &str = "/custodian.ledger.v1.Ledger/GetEntry";

const METHODS: [&str; 6] = [
    PUT,
    WRITE_UPLOAD,
    BATCH_PUT,
    FIND_MISSING,
    GET,
    APPEND_STREAM,
];

/// The statuses that are never an answer to a request: the daemon's failure, not the caller's.
/// `INTERNAL` is judged on its own: it is gRPC's answer to a body that is not well-formed.
const NEVER: &[&str] = &["2", "15"];

/// The body's messages, if it is whole uncompressed frames; `None` otherwise.
fn frames(mut body: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 || body[0] != 0 {
            return None;
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let message = body.get(5..5 + len)?;
        out.push(message);
        body = &body[5 + len..];
    }
    Some(out)
}

/// The digest `text` declares, if it is a digest's canonical text.
fn declared(text: &str) -> Option<Digest> {
    text.parse().ok()
}

/// Whether custody holds `digest`; its bytes if it does.
fn stored(digest: &Digest) -> Option<Vec<u8>> {
    world::world().stored(digest)
}

/// Checks that `blob` describes `data`, and that custody serves `data` under its digest.
fn check_blob(method: &str, blob: Option<&pb::BlobInfo>, data: &[u8]) {
    let blob = blob.unwrap_or_else(|| panic!("{method}: an acknowledged blob without its info"));
    let sha256 = Digest::of(Algorithm::Sha256, data);
    assert_eq!(
        blob.sha256,
        sha256.to_string(),
        "{method}: the blob's sha256"
    );
    assert_eq!(
        blob.blake3,
        Digest::of(Algorithm::Blake3, data).to_string(),
        "{method}: the blob's blake3"
    );
    assert_eq!(blob.size, data.len() as u64, "{method}: the blob's size");
    assert_eq!(
        stored(&sha256).as_deref(),
        Some(data),
        "{method}: the acknowledged blob {sha256} does not read back"
    );
}

/// What the model says a `Put` of `messages` ends with: the chunks' bytes, or a refusal.
fn put_model(messages: &[pb::PutRequest]) -> Result<Vec<u8>, &'static str> {
    use pb::put_request::Message;
    let Some(Message::Header(header)) = messages.first().and_then(|m| m.message.clone()) else {
        return Err("the first message is not a header");
    };
    let mut data = Vec::new();
    for message in &messages[1..] {
        match &message.message {
            Some(Message::Chunk(chunk)) => data.extend_from_slice(chunk),
            Some(Message::Header(_)) => return Err("a second header"),
            None => {}
        }
    }
    if !header.expected_digest.is_empty() {
        let digest =
            declared(&header.expected_digest).ok_or("a declared digest that is not one")?;
        if Digest::of(digest.algorithm(), &data) != digest {
            return Err("the chunks are not the declared digest");
        }
    }
    if header
        .expected_size
        .is_some_and(|size| size != data.len() as u64)
    {
        return Err("the chunks are not the declared size");
    }
    Ok(data)
}

fn put(body: &[u8], pieces: Vec<Bytes>, admin: bool) {
    let messages: Option<Vec<pb::PutRequest>> = frames(body).and_then(|frames| {
        frames
            .into_iter()
            .map(|m| pb::PutRequest::decode(m).ok())
            .collect()
    });
    // What custody held before, of what the call might store: the declared digest and the
    // chunks' own.
    let mut watched = Vec::new();
    if let Some(messages) = &messages {
        for message in messages {
            if let Some(pb::put_request::Message::Header(header)) = &message.message {
                watched.extend(declared(&header.expected_digest));
            }
        }
        let data: Vec<u8> = messages
            .iter()
            .filter_map(|m| match &m.message {
                Some(pb::put_request::Message::Chunk(chunk)) => Some(chunk.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        watched.push(Digest::of(Algorithm::Sha256, &data));
    }
    let before: Vec<bool> = watched.iter().map(|d| stored(d).is_some()).collect();
    let answer = world::world().grpc_call(PUT, pieces, admin);
    judge(PUT, &answer, messages.is_some());
    let model = match &messages {
        Some(messages) => put_model(messages),
        None => Err("the body is not whole frames that decode"),
    };
    if answer.code == "0" {
        let data = model.unwrap_or_else(|why| panic!("Put answered OK, but {why}"));
        assert!(admin, "Put answered OK to an anonymous caller");
        let response = pb::PutResponse::decode(answer.first()).expect("PutResponse");
        check_blob(PUT, response.blob.as_ref(), &data);
        return;
    }
    if let (true, Ok(_)) = (admin, &model) {
        panic!(
            "Put refused what the model accepts: {} {}",
            answer.code, answer.why
        );
    }
    for (digest, was) in watched.iter().zip(before) {
        assert!(
            was || stored(digest).is_none(),
            "a refused Put ({}: {}) left {digest} in custody",
            answer.code,
            answer.why
        );
    }
}

/// The one message of a unary body, if the body is exactly one uncompressed frame.
fn one_message(body: &[u8]) -> Option<&[u8]> {
    match frames(body)?.as_slice() {
        [message] => Some(message),
        _ => None,
    }
}

fn batch_put(body: &[u8], pieces: Vec<Bytes>, admin: bool) {
    let request = one_message(body).and_then(|m| pb::BatchPutRequest::decode(m).ok());
    let answer = world::world().grpc_call(BATCH_PUT, pieces, admin);
    judge(BATCH_PUT, &answer, request.is_some());
    let Some(request) = request else {
        assert_ne!(answer.code, "0", "BatchPut answered OK to a malformed body");
        return;
    };
    if answer.code != "0" {
        assert!(
            !admin,
            "BatchPut refused an admin: {} {}",
            answer.code, answer.why
        );
        return;
    }
    assert!(admin, "BatchPut answered OK to an anonymous caller");
    let response = pb::BatchPutResponse::decode(answer.first()).expect("BatchPutResponse");
    assert_eq!(
        response.results.len(),
        request.items.len(),
        "BatchPut answers one result per item"
    );
    for (i, (item, result)) in request.items.iter().zip(&response.results).enumerate() {
        let accepted = match item.expected_digest.as_str() {
            "" => true,
            text => declared(text).is_some_and(|d| Digest::of(d.algorithm(), &item.data) == d),
        };
        match (&result.blob, &result.error) {
            (Some(_), None) if accepted => check_blob(BATCH_PUT, result.blob.as_ref(), &item.data),
            (None, Some(error)) if !accepted => {
                assert!(
                    error.code != 0 && !error.message.is_empty(),
                    "items[{i}]: a refusal without a code and a reason"
                );
            }
            _ => panic!("items[{i}]: stored {accepted} by the model, answered {result:?}"),
        }
    }
}

fn find_missing(body: &[u8], pieces: Vec<Bytes>, admin: bool) {
    let request = one_message(body).and_then(|m| pb::FindMissingRequest::decode(m).ok());
    let answer = world::world().grpc_call(FIND_MISSING, pieces, admin);
    judge(FIND_MISSING, &answer, request.is_some());
    if answer.code != "0" {
        return;
    }
    let request = request.expect("FindMissing answered OK to a malformed body");
    let digests: Vec<Digest> = request
        .digests
        .iter()
        .map(|text| declared(text).expect("FindMissing answered OK with a digest that is not one"))
        .collect();
    let missing = pb::FindMissingResponse::decode(answer.first())
        .expect("FindMissingResponse")
        .missing_digests;
    if admin {
        let expected: Vec<String> = digests
            .iter()
            .filter(|d| stored(d).is_none())
            .map(Digest::to_string)
            .collect();
        assert_eq!(missing, expected, "FindMissing's missing digests");
    } else {
        // An anonymous caller is also told "missing" of what it may not read.
        let mut requested = request.digests.iter();
        for digest in &missing {
            assert!(
                requested.any(|r| r == digest),
                "FindMissing named {digest}, not requested in that order"
            );
        }
    }
}

fn get(body: &[u8], pieces: Vec<Bytes>, admin: bool) {
    let request = one_message(body).and_then(|m| pb::GetRequest::decode(m).ok());
    let answer = world::world().grpc_call(GET, pieces, admin);
    judge(GET, &answer, request.is_some());
    if answer.code != "0" {
        return;
    }
    let request = request.expect("Get answered OK to a malformed body");
    let digest = declared(&request.digest).expect("Get answered OK for a digest that is not one");
    let whole = stored(&digest).expect("Get answered OK for a blob custody lacks");
    let messages: Vec<pb::GetResponse> = answer
        .messages()
        .into_iter()
        .map(|m| pb::GetResponse::decode(m).expect("GetResponse"))
        .collect();
    let data: Vec<u8> = messages.iter().flat_map(|m| m.data.to_vec()).collect();
    let from = usize::try_from(request.offset).expect("an offset within memory");
    assert!(
        from <= whole.len(),
        "Get answered OK from past the blob's end"
    );
    let limit = match request.limit {
        0 => whole.len(),
        limit => usize::try_from(limit).unwrap_or(usize::MAX),
    };
    let end = from.saturating_add(limit).min(whole.len());
    assert_eq!(data, whole[from..end], "Get's bytes");
    let info = messages.first().and_then(|m| m.blob.as_ref());
    assert_eq!(
        info.map(|b| b.sha256.as_str()),
        Some(Digest::of(Algorithm::Sha256, &whole).to_string().as_str()),
        "Get's first message names the blob"
    );
}

/// The leading messages of `body` that are whole uncompressed frames and decode as `M`, and
/// whether that is all of it.
fn leading<M: prost::Message + Default>(mut body: &[u8]) -> (Vec<M>, bool) {
    let mut out = Vec::new();
    while !body.is_empty() {
        let message = (body.len() >= 5 && body[0] == 0)
            .then(|| u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize)
            .and_then(|len| body.get(5..5 + len))
            .and_then(|bytes| M::decode(bytes).ok());
        let Some(message) = message else {
            return (out, false);
        };
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push(message);
        body = &body[5 + len..];
    }
    (out, true)
}

/// `AppendStream` is read by tonic, but its answers are the daemon's own: one per request, in
/// the order sent, the entries in the log in that order, each refusal what `Append` answers.
fn append_stream(body: &[u8], pieces: Vec<Bytes>, admin: bool) {
    let (requests, whole) = leading::<ledger::AppendRequest>(body);
    let answer = world::world().grpc_call(APPEND_STREAM, pieces, admin);
    judge(APPEND_STREAM, &answer, whole);
    let answers: Vec<ledger::AppendStreamResponse> = answer
        .messages()
        .into_iter()
        .map(|m| ledger::AppendStreamResponse::decode(m).expect("AppendStreamResponse"))
        .collect();
    if !admin {
        assert_ne!(
            answer.code, "0",
            "AppendStream opened to an anonymous caller"
        );
        assert!(
            answers.is_empty(),
            "AppendStream answered an anonymous caller"
        );
        return;
    }
    // Every request that arrived whole is answered, even when the stream breaks after it.
    assert_eq!(answers.len(), requests.len(), "one answer per request read");
    assert_eq!(
        answer.code == "0",
        whole,
        "AppendStream ended {} ({}) on a body that is {}whole frames that decode",
        answer.code,
        answer.why,
        if whole { "" } else { "not " }
    );
    let mut last = None;
    for (i, (request, answered)) in requests.iter().zip(&answers).enumerate() {
        if answered.error_code != 0 {
            assert!(
                !answered.error_message.is_empty()
                    && !NEVER.contains(&answered.error_code.to_string().as_str())
                    && answered.error_code != 13,
                "requests[{i}]: refused {} without a reason that is the caller's: {}",
                answered.error_code,
                answered.error_message
            );
            // What Append answers the same request.
            let unary = world::world().grpc_unary(APPEND, &request.encode_to_vec(), true);
            assert_eq!(
                unary.code,
                answered.error_code.to_string(),
                "requests[{i}]: AppendStream refused it ({}), Append answered {}: {}",
                answered.error_message,
                unary.code,
                unary.why
            );
            continue;
        }
        assert!(
            last.is_none_or(|last| answered.log_index > last),
            "requests[{i}]: entry {} entered the log out of the order sent",
            answered.log_index
        );
        last = Some(answered.log_index);
        assert!(answered.checkpoint_size > answered.log_index);
        assert_eq!(
            answered.receipt.is_none(),
            request.compact,
            "requests[{i}]: a receipt exactly when not compact"
        );
        let payload = custodian_core::entry::payload_from_cbor(request.payload_cbor.to_vec())
            .unwrap_or_else(|e| panic!("requests[{i}]: appended a payload that is refused: {e}"));
        let entry: ledger::Entry = world::world().call(
            GET_ENTRY,
            &ledger::GetEntryRequest {
                index: answered.log_index,
            },
        );
        assert_eq!(entry.kind, request.kind, "requests[{i}]: the entry's kind");
        assert_eq!(
            entry.payload_cbor, payload,
            "requests[{i}]: the entry's payload"
        );
        assert_eq!(
            entry.leaf_hash, answered.leaf_hash,
            "requests[{i}]: the leaf hash"
        );
    }
}

/// The checks every answer meets: never a code of the daemon's own failure, a reason with every
/// refusal, and `INTERNAL` only for a body that is not well-formed (`well_formed`: whole
/// uncompressed frames whose messages decode).
fn judge(method: &str, answer: &world::Answer, well_formed: bool) {
    assert!(
        !NEVER.contains(&answer.code.as_str()),
        "{method}: status {}: {}",
        answer.code,
        answer.why
    );
    assert!(
        answer.code == "0" || !answer.why.is_empty(),
        "{method}: status {} without a message",
        answer.code
    );
    assert!(
        !(well_formed && answer.code == "13"),
        "{method}: a well-formed body refused as malformed: {}",
        answer.why
    );
}

fuzz_target!(|data: &[u8]| {
    let [selector, cut, body @ ..] = data else {
        return;
    };
    let method = METHODS[usize::from(*selector & 0x7f) % METHODS.len()];
    let admin = *selector < 128;
    let whole = Bytes::copy_from_slice(body);
    let pieces: Vec<Bytes> = match usize::from(*cut) {
        0 => vec![whole],
        n => (0..whole.len())
            .step_by(n)
            .map(|at| whole.slice(at..(at + n).min(whole.len())))
            .collect(),
    };
    match method {
        PUT => put(body, pieces, admin),
        BATCH_PUT => batch_put(body, pieces, admin),
        FIND_MISSING => find_missing(body, pieces, admin),
        GET => get(body, pieces, admin),
        APPEND_STREAM => append_stream(body, pieces, admin),
        _ => {
            let well_formed = frames(body).is_some_and(|messages| {
                messages
                    .iter()
                    .all(|m| pb::WriteUploadRequest::decode(*m).is_ok())
            });
            judge(
                method,
                &world::world().grpc_call(method, pieces, admin),
                well_formed,
            );
        }
    }
});
