//! The witness (C2SP tlog-witness `add-checkpoint`; docs/formats.md, "Witness protocol") as a
//! program of HTTP requests against a model, through `custodian witness serve`'s routes in
//! process, on a state directory of the execution's own. The witness is configured for two logs,
//! one of them with two keys (a rotation); requests carry checkpoints of four histories that share
//! prefixes of different lengths, so that some extend what was cosigned and some fork it.
//!
//! What is checked, beyond "no panic" and "no 5xx":
//! - each request is answered with the status the spec gives, in the order it lists: `400` for a
//!   body that does not parse (more than 63 proof lines, a note with no signature line); `404`
//!   for an origin the witness is not configured for; `403` when no line of a configured key
//!   verifies (lines of other keys, impostors of the origin's name included, are ignored; a key
//!   one of whose lines does not verify is not trusted); `400` for an old size above the
//!   checkpoint's; `409` with the latest cosigned size as `text/x.tlog.size` when the old size is
//!   not it; `422` for a checkpoint of size 0 whose root is not the empty tree's; at the cosigned
//!   size, `409` for another root and `422` for a proof that is not empty; `422` for a proof that
//!   is not empty from size 0; above it, `200` exactly when the proof is the RFC 6962 proof of
//!   the checkpoint's tree and that tree extends the cosigned one, else `422`;
//! - a `200` answers one cosignature line of the witness's key over the checkpoint, timed now;
//!   every refusal is a sentence;
//! - so the witness never cosigns two views of a log that are not consistent: what it holds is,
//!   after every request, exactly what the model holds (`GET /checkpoint/<origin>`: the text, one
//!   line of each configured key that signed it and verified, in the order sent, and the
//!   cosignature; `404` before any), and `GET /` lists the model's sizes;
//! - a restart (the witness dropped and opened again on its state directory) forgets nothing.
//!
//! Input: a program, as in `oci_uploads`: one byte choosing the operation, then the operation's
//! own bytes.

#![no_main]

#[path = "common/world.rs"]
mod world;

#[path = "common/program.rs"]
mod program;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use custodian_core::checkpoint::Checkpoint;
use custodian_core::merkle::{self, Hash};
use custodian_core::note::{KeyType, Note, SignerKey};
use custodian_core::witness::{AddCheckpoint, MAX_PROOF_LINES};
use custodian_server::rest::witness_router;
use custodian_server::witness::{Witness, WitnessLogs};
use custodian_testkit::{TestLog, signature_lines};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use libfuzzer_sys::fuzz_target;
use program::Program;
use tower::ServiceExt as _;

/// The largest tree of any history.
const MAX_SIZE: u64 = 40;

/// The witness's logs, then an origin it is not configured for.
const ORIGINS: [&str; 3] = ["example.com/a", "example.com/b", "example.com/unknown"];

/// What one process builds once: the keys, the histories, the runtime and the state directory.
struct Setup {
    runtime: tokio::runtime::Runtime,
    state: PathBuf,
    /// Each origin's own key (the first two configured; the third's origin is not).
    primary: [SignerKey; 3],
    /// A second configured key of `example.com/a`.
    rotated: SignerKey,
    /// Keys named as each origin but configured for none.
    impostor: [SignerKey; 3],
    /// Another witness's key, whose cosignatures the witness must ignore and not keep.
    other_witness: SignerKey,
    /// The witness's own key.
    witness: SignerKey,
    /// Four histories: the first, two that share its first 7 and 16 leaves, and one that shares
    /// none.
    histories: Vec<TestLog>,
    /// Each history's root at each size.
    roots: Vec<Vec<Hash>>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let key = |name: &str, seed: u8| SignerKey::from_seed(name, [seed; 32]).expect("key");
        let history = |shared: usize, tag: u8| {
            let mut log = TestLog::new("history", 0);
            log.grow(shared, 1);
            log.grow(MAX_SIZE as usize - shared, tag);
            log
        };
        let histories = vec![
            history(MAX_SIZE as usize, 1),
            history(7, 2),
            history(16, 3),
            history(0, 4),
        ];
        let roots = histories
            .iter()
            .map(|h| (0..=MAX_SIZE).map(|size| h.root(size)).collect())
            .collect();
        Setup {
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime"),
            state: world::process_dir("custodian-fuzz-witness").join("state"),
            primary: [key(ORIGINS[0], 1), key(ORIGINS[1], 2), key(ORIGINS[2], 3)],
            rotated: key(ORIGINS[0], 4),
            impostor: [key(ORIGINS[0], 5), key(ORIGINS[1], 6), key(ORIGINS[2], 7)],
            other_witness: SignerKey::from_seed_typed(
                "witness.example/other",
                KeyType::CosignatureV1,
                [8; 32],
            )
            .expect("key"),
            witness: SignerKey::from_seed_typed("witness.fuzz/w", KeyType::CosignatureV1, [9; 32])
                .expect("key"),
            histories,
            roots,
        }
    })
}

/// Opens the witness on the state directory and returns its routes.
fn open(setup: &Setup) -> axum::Router {
    let config = format!(
        "log {}\nlog {}\nlog {}\n",
        setup.primary[0].verifier(),
        setup.rotated.verifier(),
        setup.primary[1].verifier()
    );
    let logs = WitnessLogs::parse(&config, "witness.conf").expect("config");
    let witness = Witness::open(setup.witness.clone(), logs, &setup.state).expect("open");
    witness_router(Arc::new(witness))
}

/// An answer, read whole.
struct Answer {
    status: StatusCode,
    content_type: String,
    body: String,
}

fn send(setup: &Setup, app: &axum::Router, method: Method, path: &str, body: Vec<u8>) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::from(body))
        .expect("request");
    let response = setup
        .runtime
        .block_on(app.clone().oneshot(request))
        .expect("the router is infallible");
    let (parts, body) = response.into_parts();
    let body = setup
        .runtime
        .block_on(body.collect())
        .expect("the answer's body")
        .to_bytes();
    let body = String::from_utf8(body.to_vec()).expect("every answer is text");
    assert!(
        !parts.status.is_server_error(),
        "{path}: {} {body:?}",
        parts.status
    );
    let content_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Answer {
        status: parts.status,
        content_type,
        body,
    }
}

/// What the witness holds for a log, in the model.
#[derive(Clone)]
struct Cosigned {
    size: u64,
    root: Hash,
    /// The note `GET /checkpoint/<origin>` answers, but for the cosignature line.
    note: String,
    cosignature: String,
}

/// What a request is expected to be answered with.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Cosigned,
    /// A refusal with this status; `409` with a size body when the size is given.
    Refused(u16),
    Stale(u64),
}

/// One `add-checkpoint` request built from the program, sent, and checked against the model.
fn submit(setup: &Setup, app: &axum::Router, p: &mut Program, model: &mut [Option<Cosigned>; 2]) {
    let origin = usize::from(p.byte()) % ORIGINS.len();
    let history = usize::from(p.byte()) % setup.histories.len();
    let new = u64::from(p.byte()) % (MAX_SIZE + 1);
    let latest = model.get(origin).cloned().flatten();
    let latest_size = latest.as_ref().map_or(0, |c| c.size);
    let old = match p.byte() {
        b if b < 192 => latest_size,
        b => u64::from(b - 192) % (MAX_SIZE + 8),
    };
    let root_choice = p.byte();
    let bogus = root_choice % 16 == 0;
    let root = if bogus {
        Hash([root_choice ^ 0x5a; 32])
    } else {
        setup.roots[history][new as usize]
    };
    let text = Checkpoint::new(ORIGINS[origin], new, root).to_text();

    // The signature lines, and which configured keys the witness should trust.
    let signers = p.byte();
    let primary = &setup.primary[origin];
    // A line of the origin's key over another text: it does not verify.
    let bad_line = || {
        let other = Checkpoint::new(ORIGINS[origin], new + 1, root).to_text();
        signature_lines(&primary.sign(&other).expect("sign")).to_string()
    };
    let mut lines: Vec<String> = Vec::new();
    let primary_line = signature_lines(&primary.sign(&text).expect("sign")).to_string();
    let rotated_line = signature_lines(&setup.rotated.sign(&text).expect("sign")).to_string();
    if signers & 1 != 0 {
        if signers & 16 != 0 {
            lines.push(bad_line());
        } else {
            lines.push(primary_line.clone());
        }
        if signers & 32 != 0 {
            lines.push(primary_line.clone());
        }
        if signers & 64 != 0 {
            lines.push(bad_line());
        }
    }
    if signers & 2 != 0 {
        lines.push(rotated_line.clone());
    }
    if signers & 4 != 0 {
        lines.push(signature_lines(&setup.impostor[origin].sign(&text).expect("sign")).to_string());
    }
    if signers & 8 != 0 {
        let cosignature = setup.other_witness.cosign(&text, 1).expect("cosign");
        lines.push(cosignature);
    }
    if signers & 128 != 0 {
        lines.reverse();
    }
    let primary_trusted = origin < 2 && lines.contains(&primary_line) && signers & 80 == 0;
    let rotated_trusted = origin == 0 && signers & 2 != 0;
    // What the witness keeps: the first line of each trusted key, in the order sent.
    let mut kept: Vec<&str> = Vec::new();
    for line in &lines {
        let keep = (*line == primary_line && primary_trusted)
            || (*line == rotated_line && rotated_trusted);
        if keep && !kept.contains(&line.as_str()) {
            kept.push(line);
        }
    }
    let checkpoint = format!("{text}\n{}", lines.concat());

    // The proof, and whether it is the RFC 6962 proof of the checkpoint's tree.
    let proof_of = |h: usize, old: u64, new: u64| {
        if old > new || new > MAX_SIZE {
            Vec::new()
        } else {
            setup.histories[h].proof(old, new)
        }
    };
    let canonical = proof_of(history, old, new);
    let proof = match p.byte() % 12 {
        0..=4 => canonical.clone(),
        5 => Vec::new(),
        6 => {
            let mut proof = canonical.clone();
            match proof.first_mut() {
                Some(first) => first.0[7] ^= 1,
                None => proof.push(setup.roots[0][3]),
            }
            proof
        }
        7 => {
            let mut proof = canonical.clone();
            proof.pop();
            proof
        }
        8 => {
            let mut proof = canonical.clone();
            proof.push(setup.roots[0][3]);
            proof
        }
        9 => proof_of(0, old, new),
        10 => proof_of(history, old.saturating_sub(1).max(1), new),
        _ => vec![setup.roots[0][5]; MAX_PROOF_LINES + 1],
    };

    let expected = if proof.len() > MAX_PROOF_LINES || lines.is_empty() {
        Expected::Refused(400)
    } else if origin == 2 {
        Expected::Refused(404)
    } else if !primary_trusted && !rotated_trusted {
        Expected::Refused(403)
    } else if old > new {
        Expected::Refused(400)
    } else if old != latest_size {
        Expected::Stale(latest_size)
    } else if new == 0 && root != merkle::empty_root() {
        Expected::Refused(422)
    } else if old == new {
        if latest.as_ref().is_some_and(|c| c.root != root) {
            Expected::Refused(409)
        } else if !proof.is_empty() {
            Expected::Refused(422)
        } else {
            Expected::Cosigned
        }
    } else if old == 0 {
        if proof.is_empty() {
            Expected::Cosigned
        } else {
            Expected::Refused(422)
        }
    } else {
        let cosigned_root = latest.as_ref().map(|c| c.root);
        let extends = cosigned_root == Some(setup.roots[history][old as usize]);
        if !bogus && extends && proof == canonical {
            Expected::Cosigned
        } else {
            Expected::Refused(422)
        }
    };

    // With no lines, the note's signature block is empty: the body does not parse.
    let body = AddCheckpoint {
        old_size: old,
        proof: proof.clone(),
        checkpoint: checkpoint.clone().into_bytes(),
    }
    .to_body();
    let before = now();
    let answer = send(setup, app, Method::POST, "/add-checkpoint", body);
    let after = now();
    let what = format!(
        "{}: old {old}, size {new} of history {history}{}, {} lines (signers {signers:#010b}), \
         proof of {} hashes (canonical: {}), cosigned {:?}",
        ORIGINS[origin],
        if bogus { " with a bogus root" } else { "" },
        lines.len(),
        proof.len(),
        proof == canonical,
        latest.as_ref().map(|c| c.size),
    );
    match expected {
        Expected::Cosigned => {
            assert_eq!(answer.status, StatusCode::OK, "{what}: {:?}", answer.body);
            assert!(answer.content_type.starts_with("text/plain"), "{what}");
            let line = answer.body.clone();
            assert_eq!(line.matches('\n').count(), 1, "{what}: one line, {line:?}");
            let note = Note::parse(format!("{text}\n{line}").as_bytes()).expect("note");
            let time = note
                .signed_by(&setup.witness.verifier())
                .unwrap_or_else(|e| panic!("{what}: the cosignature {line:?}: {e}"))
                .expect("a cosignature's time");
            assert!(
                (before..=after).contains(&time),
                "{what}: cosigned at {time}"
            );
            model[origin] = Some(Cosigned {
                size: new,
                root,
                note: format!("{text}\n{}", kept.concat()),
                cosignature: line,
            });
        }
        Expected::Stale(size) => {
            assert_eq!(
                (answer.status.as_u16(), answer.content_type.as_str()),
                (409, "text/x.tlog.size"),
                "{what}: {:?}",
                answer.body
            );
            assert_eq!(answer.body, format!("{size}\n"), "{what}");
        }
        Expected::Refused(status) => {
            assert_eq!(answer.status.as_u16(), status, "{what}: {:?}", answer.body);
            assert!(answer.content_type.starts_with("text/plain"), "{what}");
            assert!(
                answer.body.len() > 1 && answer.body.ends_with('\n'),
                "{what}: a refusal is a sentence: {:?}",
                answer.body
            );
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Checks that the witness holds exactly what the model does.
fn check_state(setup: &Setup, app: &axum::Router, model: &[Option<Cosigned>; 2], when: &str) {
    for (origin, cosigned) in ORIGINS.iter().zip(model) {
        let answer = send(
            setup,
            app,
            Method::GET,
            &format!("/checkpoint/{origin}"),
            Vec::new(),
        );
        match cosigned {
            Some(c) => {
                assert_eq!(answer.status, StatusCode::OK, "{when}: {origin}");
                assert_eq!(
                    answer.body,
                    format!("{}{}", c.note, c.cosignature),
                    "{when}: what the witness holds of {origin}"
                );
            }
            None => assert_eq!(
                answer.status,
                StatusCode::NOT_FOUND,
                "{when}: {origin} holds {:?}",
                answer.body
            ),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let setup = setup();
    let _ = std::fs::remove_dir_all(&setup.state);
    let mut app = open(setup);
    let mut model: [Option<Cosigned>; 2] = [None, None];
    program::run(data, |p, op, _| {
        match op % 8 {
            0..=4 => submit(setup, &app, p, &mut model),
            5 => {
                // The old witness must be gone (its lock released) before the new one opens.
                drop(std::mem::take(&mut app));
                app = open(setup);
            }
            6 => {
                let answer = send(setup, &app, Method::GET, "/", Vec::new());
                assert_eq!(answer.status, StatusCode::OK);
                for (origin, cosigned) in ORIGINS.iter().zip(&model) {
                    let size = cosigned.as_ref().map_or(0, |c| c.size);
                    let line = format!("  {origin}  cosigned size {size}\n");
                    assert!(
                        answer.body.contains(&line),
                        "GET /: {line:?} in {:?}",
                        answer.body
                    );
                }
            }
            _ => {}
        }
        check_state(setup, &app, &model, &format!("after operation {op}"));
    });
});
