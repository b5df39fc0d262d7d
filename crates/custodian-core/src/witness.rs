//! Witnessing: the C2SP `tlog-witness` request body (<https://c2sp.org/tlog-witness>) and
//! witness policies in the Sigsum/Tessera syntax.
//!
//! A log asks a witness to cosign a checkpoint with `POST <prefix>/add-checkpoint`. The body is
//! an `old <size>` line, up to 63 base64 consistency-proof lines, a blank line, then the signed
//! checkpoint. The witness answers with `cosignature/v1` signature lines (see [`crate::note`]).
//!
//! A policy names witnesses by verifier key and says how many must have cosigned a checkpoint
//! before a client trusts it:
//!
//! ```text
//! log     example.com/log+1234abcd+AQ...            # optional: the log this policy is for
//! witness w1 witness.example/w1+5678ef01+BA... https://w1.example/   # URL optional
//! witness w2 witness.example/w2+9abc0123+BA...
//! group   both all w1 w2                           # or "any", or a number
//! quorum  both                                     # or "none"
//! ```
//!
//! This is the syntax of Sigsum's policy files (sigsum-go `doc/policy.md`) with the keys written
//! as C2SP vkeys, as Tessera's `NewWitnessGroupFromPolicy` reads them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::merkle::Hash;
use crate::note::{KeyType, Note, VerifierKey};

/// The most consistency-proof lines a request may carry (tlog-witness).
pub const MAX_PROOF_LINES: usize = 63;
/// The largest request body a witness reads: 63 proof lines, a checkpoint with room for
/// extension lines and a hundred signatures.
pub const MAX_BODY: usize = 64 * 1024;

/// Why a request body or a policy was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WitnessError {
    /// The add-checkpoint body does not follow tlog-witness; the text says where.
    #[error("malformed add-checkpoint request: {0}")]
    MalformedRequest(String),
    /// A policy line is wrong; `line` is its 1-based number.
    #[error("witness policy line {line}: {reason}")]
    Policy {
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The policy as a whole is incomplete.
    #[error("witness policy: {0}")]
    PolicyIncomplete(String),
    /// A checkpoint lacks the cosignatures the policy requires.
    #[error(
        "checkpoint of size {size} lacks its witness quorum: {detail} (valid cosignatures from: {have})"
    )]
    QuorumNotMet {
        /// The checkpoint's size.
        size: u64,
        /// Which group fell short and by how much.
        detail: String,
        /// The witnesses whose cosignatures verified, comma-separated, or "none".
        have: String,
    },
}

/// A parsed add-checkpoint request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the checkpoint the witness last cosigned, as the log believes.
    pub old_size: u64,
    /// The consistency proof from `old_size` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note.
    pub checkpoint: Vec<u8>,
}

impl AddCheckpoint {
    /// Parses a request body strictly: the exact line syntax of tlog-witness, at most
    /// [`MAX_PROOF_LINES`] proof lines, at most [`MAX_BODY`] bytes.
    pub fn parse(body: &[u8]) -> Result<Self, WitnessError> {
        let bad = |reason: String| WitnessError::MalformedRequest(reason);
        if body.len() > MAX_BODY {
            return Err(bad(format!(
                "the body is {} bytes, over the {MAX_BODY}-byte limit",
                body.len()
            )));
        }
        let mut rest = body;
        let mut next_line = |what: &str| -> Result<&[u8], WitnessError> {
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                return Err(bad(format!("the {what} does not end in a newline")));
            };
            let line = &rest[..end];
            rest = &rest[end + 1..];
            Ok(line)
        };
        let old_line = next_line("old size line")?;
        let old_text = std::str::from_utf8(old_line)
            .ok()
            .and_then(|l| l.strip_prefix("old "))
            .ok_or_else(|| bad("the first line must be \"old <size>\"".into()))?;
        let old_size = parse_decimal(old_text).ok_or_else(|| {
            bad(format!(
                "old size {old_text:?} is not a decimal number without leading zeros"
            ))
        })?;
        let mut proof = Vec::new();
        loop {
            let line = next_line("proof section")?;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_LINES {
                return Err(bad(format!(
                    "more than {MAX_PROOF_LINES} consistency proof lines"
                )));
            }
            let hash = STANDARD
                .decode(line)
                .ok()
                .and_then(|bytes| Hash::from_slice(&bytes).ok())
                .ok_or_else(|| {
                    bad(format!(
                        "proof line {} ({:?}) is not a 32-byte hash in standard base64",
                        proof.len() + 1,
                        String::from_utf8_lossy(line)
                    ))
                })?;
            proof.push(hash);
        }
        let checkpoint = rest.to_vec();
        Note::parse(&checkpoint).map_err(|e| bad(format!("the checkpoint: {e}")))?;
        Ok(AddCheckpoint {
            old_size,
            proof,
            checkpoint,
        })
    }

    /// The request body.
    pub fn to_body(&self) -> Vec<u8> {
        let mut body = format!("old {}\n", self.old_size).into_bytes();
        for hash in &self.proof {
            body.extend_from_slice(STANDARD.encode(hash.0).as_bytes());
            body.push(b'\n');
        }
        body.push(b'\n');
        body.extend_from_slice(&self.checkpoint);
        body
    }
}

/// Parses an ASCII decimal with no sign and no leading zeros (so every size has one spelling).
pub fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty()
        || !text.bytes().all(|b| b.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return None;
    }
    text.parse().ok()
}

/// One witness of a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyWitness {
    /// The policy's name for it.
    pub name: String,
    /// Its cosignature verifier key.
    pub key: VerifierKey,
    /// Its submission prefix, if the policy gives one (needed by a log, not by a verifier).
    pub url: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Component {
    Witness(usize),
    Group {
        name: String,
        threshold: usize,
        members: Vec<Component>,
    },
}

/// A witness policy: witnesses, groups and the quorum a checkpoint needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessPolicy {
    witnesses: Vec<PolicyWitness>,
    logs: Vec<VerifierKey>,
    /// `None` is `quorum none`: no cosignature is needed.
    quorum: Option<Component>,
}

impl WitnessPolicy {
    /// Parses a policy file. `#` starts a comment; unknown keywords, duplicate names, unknown
    /// members and thresholds above a group's size are errors naming the line.
    pub fn parse(text: &str) -> Result<Self, WitnessError> {
        let mut witnesses: Vec<PolicyWitness> = Vec::new();
        let mut logs = Vec::new();
        let mut names: Vec<(String, Component)> = Vec::new();
        let mut quorum_name: Option<(usize, String)> = None;
        for (number, raw) in text.lines().enumerate() {
            let number = number + 1;
            let fail = |reason: String| WitnessError::Policy {
                line: number,
                reason,
            };
            let line = raw.split('#').next().unwrap_or("").trim();
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(&keyword) = fields.first() else {
                continue;
            };
            let check_new_name = |name: &str, names: &[(String, Component)]| {
                if KEYWORDS.contains(&name) {
                    return Err(fail(format!("{name:?} is a keyword, not a name")));
                }
                if names.iter().any(|(n, _)| n == name) {
                    return Err(fail(format!("the name {name:?} is defined twice")));
                }
                Ok(())
            };
            match keyword {
                "log" => {
                    if !(2..=3).contains(&fields.len()) {
                        return Err(fail("expected \"log <vkey> [url]\"".into()));
                    }
                    let key =
                        VerifierKey::parse(fields[1]).map_err(|e| fail(format!("log key: {e}")))?;
                    if key.key_type() != KeyType::Ed25519 {
                        return Err(fail("a log key has type byte 0x01".into()));
                    }
                    logs.push(key);
                }
                "witness" => {
                    if !(3..=4).contains(&fields.len()) {
                        return Err(fail("expected \"witness <name> <vkey> [url]\"".into()));
                    }
                    check_new_name(fields[1], &names)?;
                    let key = VerifierKey::parse(fields[2])
                        .map_err(|e| fail(format!("witness {} key: {e}", fields[1])))?;
                    if key.key_type() != KeyType::CosignatureV1 {
                        return Err(fail(format!(
                            "witness {} key must be a cosignature/v1 vkey (type byte 0x04)",
                            fields[1]
                        )));
                    }
                    let url = fields.get(3).map(|u| u.to_string());
                    if let Some(url) = &url
                        && !(url.starts_with("http://") || url.starts_with("https://"))
                    {
                        return Err(fail(format!(
                            "witness {} URL {url:?} is not http:// or https://",
                            fields[1]
                        )));
                    }
                    names.push((fields[1].to_string(), Component::Witness(witnesses.len())));
                    witnesses.push(PolicyWitness {
                        name: fields[1].to_string(),
                        key,
                        url,
                    });
                }
                "group" => {
                    if fields.len() < 4 {
                        return Err(fail(
                            "expected \"group <name> <all|any|N> <member>...\"".into(),
                        ));
                    }
                    check_new_name(fields[1], &names)?;
                    let member_names = &fields[3..];
                    let threshold = match fields[2] {
                        "all" => member_names.len(),
                        "any" => 1,
                        n => parse_decimal(n)
                            .and_then(|n| usize::try_from(n).ok())
                            .filter(|&n| n >= 1)
                            .ok_or_else(|| {
                                fail(format!("threshold {n:?} is not all, any or a number >= 1"))
                            })?,
                    };
                    if threshold > member_names.len() {
                        return Err(fail(format!(
                            "threshold {threshold} is more than the group's {} members",
                            member_names.len()
                        )));
                    }
                    let mut members = Vec::new();
                    for member in member_names {
                        let component = names
                            .iter()
                            .find(|(n, _)| n == member)
                            .map(|(_, c)| c.clone())
                            .ok_or_else(|| {
                                fail(format!(
                                    "member {member:?} is not a witness or group defined above"
                                ))
                            })?;
                        if members.contains(&component) {
                            return Err(fail(format!("member {member:?} is listed twice")));
                        }
                        members.push(component);
                    }
                    names.push((
                        fields[1].to_string(),
                        Component::Group {
                            name: fields[1].to_string(),
                            threshold,
                            members,
                        },
                    ));
                }
                "quorum" => {
                    if fields.len() != 2 {
                        return Err(fail("expected \"quorum <name|none>\"".into()));
                    }
                    if quorum_name.is_some() {
                        return Err(fail("the quorum is defined twice".into()));
                    }
                    quorum_name = Some((number, fields[1].to_string()));
                }
                other => {
                    return Err(fail(format!(
                        "unknown keyword {other:?} (expected log, witness, group or quorum)"
                    )));
                }
            }
        }
        let Some((line, quorum_name)) = quorum_name else {
            return Err(WitnessError::PolicyIncomplete(
                "no quorum line (write \"quorum none\" to require no cosignature)".into(),
            ));
        };
        let quorum = if quorum_name == "none" {
            None
        } else {
            Some(
                names
                    .iter()
                    .find(|(n, _)| *n == quorum_name)
                    .map(|(_, c)| c.clone())
                    .ok_or_else(|| WitnessError::Policy {
                        line,
                        reason: format!("quorum {quorum_name:?} is not a witness or group"),
                    })?,
            )
        };
        Ok(WitnessPolicy {
            witnesses,
            logs,
            quorum,
        })
    }

    /// Every witness the policy names.
    pub fn witnesses(&self) -> &[PolicyWitness] {
        &self.witnesses
    }

    /// The log keys the policy names (`log` lines), if any.
    pub fn logs(&self) -> &[VerifierKey] {
        &self.logs
    }

    /// Whether the policy needs any cosignature at all.
    pub fn requires_cosignatures(&self) -> bool {
        self.quorum.is_some()
    }

    /// Which witnesses (by index into [`WitnessPolicy::witnesses`]) validly cosigned `note`.
    /// Lines from unknown keys are ignored, as tlog-witness asks of clients.
    pub fn cosigners(&self, note: &Note) -> Vec<bool> {
        self.witnesses
            .iter()
            .map(|w| note.signed_by(&w.key).is_ok())
            .collect()
    }

    /// Whether the witnesses marked in `signed` (from [`WitnessPolicy::cosigners`]) satisfy the
    /// quorum.
    pub fn satisfied_by(&self, signed: &[bool]) -> bool {
        self.quorum
            .as_ref()
            .is_none_or(|q| shortfall(q, signed).is_none())
    }

    /// Checks a signed checkpoint against the quorum; on success returns the names of the
    /// witnesses whose cosignatures verified.
    pub fn check(&self, checkpoint_note: &[u8], size: u64) -> Result<Vec<String>, WitnessError> {
        let note = Note::parse(checkpoint_note).map_err(|e| WitnessError::QuorumNotMet {
            size,
            detail: format!("the checkpoint does not parse: {e}"),
            have: "none".into(),
        })?;
        let signed = self.cosigners(&note);
        let names: Vec<String> = self
            .witnesses
            .iter()
            .zip(&signed)
            .filter(|(_, s)| **s)
            .map(|(w, _)| w.name.clone())
            .collect();
        if let Some(quorum) = &self.quorum
            && let Some(detail) = shortfall(quorum, &signed)
        {
            return Err(WitnessError::QuorumNotMet {
                size,
                detail,
                have: if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
            });
        }
        Ok(names)
    }
}

const KEYWORDS: [&str; 7] = ["log", "witness", "group", "quorum", "all", "any", "none"];

/// `None` when the component is satisfied; otherwise which group is short and by how much.
fn shortfall(component: &Component, signed: &[bool]) -> Option<String> {
    match component {
        Component::Witness(i) => (!signed[*i]).then(|| "its witness did not cosign".to_string()),
        Component::Group {
            name,
            threshold,
            members,
        } => {
            let met = members
                .iter()
                .filter(|m| shortfall(m, signed).is_none())
                .count();
            (met < *threshold).then(|| {
                format!(
                    "group {name} needs {threshold} of {} members, {met} cosigned",
                    members.len()
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::note::SignerKey;

    fn witness(n: u8) -> SignerKey {
        SignerKey::from_seed_typed(&format!("w{n}.example"), KeyType::CosignatureV1, [n; 32])
            .expect("key")
    }

    #[test]
    fn add_checkpoint_body_round_trips_and_rejects_bad_bodies() {
        let log = SignerKey::from_seed("example.com/log", [1; 32]).expect("key");
        let checkpoint = Checkpoint::new("example.com/log", 5, Hash([2; 32]))
            .sign(&log)
            .expect("sign");
        let request = AddCheckpoint {
            old_size: 3,
            proof: vec![Hash([7; 32]), Hash([8; 32])],
            checkpoint: checkpoint.clone().into_bytes(),
        };
        let body = request.to_body();
        assert!(body.starts_with(b"old 3\nBwcH"));
        assert_eq!(AddCheckpoint::parse(&body).expect("parse"), request);
        let empty = format!("old 0\n\n{checkpoint}");
        assert_eq!(
            AddCheckpoint::parse(empty.as_bytes())
                .expect("parse")
                .proof
                .len(),
            0
        );
        let line = STANDARD.encode([9u8; 32]);
        let too_many = format!("old 1\n{}\n{checkpoint}", format!("{line}\n").repeat(64));
        let exactly = format!("old 1\n{}\n{checkpoint}", format!("{line}\n").repeat(63));
        assert!(AddCheckpoint::parse(exactly.as_bytes()).is_ok());
        for bad in [
            String::new(),
            "old 1".to_string(),
            format!("old 01\n\n{checkpoint}"),
            format!("old -1\n\n{checkpoint}"),
            format!("old 1 \n\n{checkpoint}"),
            format!("new 1\n\n{checkpoint}"),
            format!("old 18446744073709551616\n\n{checkpoint}"),
            format!("old 1\nnot base64\n\n{checkpoint}"),
            format!("old 1\n{}\n\n{checkpoint}", STANDARD.encode([1u8; 31])),
            format!("old 1\n{line}\n"),
            "old 1\n\nno signatures\n".to_string(),
            too_many,
            format!("old 1\n\n{checkpoint}{}", " ".repeat(MAX_BODY)),
        ] {
            assert!(
                matches!(
                    AddCheckpoint::parse(bad.as_bytes()),
                    Err(WitnessError::MalformedRequest(_))
                ),
                "{bad:?}"
            );
        }
    }

    /// What the fuzz target checks, over every single-byte change of a valid body: parsing
    /// never panics, and whatever parses is written back byte for byte.
    #[test]
    fn every_mutated_body_is_refused_or_round_trips() {
        let log = SignerKey::from_seed("example.com/log", [1; 32]).expect("key");
        let body = AddCheckpoint {
            old_size: 12,
            proof: vec![Hash([7; 32]), Hash([8; 32])],
            checkpoint: Checkpoint::new("example.com/log", 40, Hash([2; 32]))
                .sign(&log)
                .expect("sign")
                .into_bytes(),
        }
        .to_body();
        let mut parsed = 0;
        for at in 0..body.len() {
            for byte in [b'\n', b' ', b'0', b'9', b'A', b'=', b'+', 0x00, 0xff] {
                let mut mutated = body.clone();
                mutated[at] = byte;
                if let Ok(request) = AddCheckpoint::parse(&mutated) {
                    assert_eq!(request.to_body(), mutated, "at {at}");
                    parsed += 1;
                }
            }
        }
        assert!(parsed > 0);
    }

    #[test]
    fn policy_quorums_count_valid_cosignatures_only() {
        let (w1, w2, w3) = (witness(1), witness(2), witness(3));
        let log = SignerKey::from_seed("example.com/log", [9; 32]).expect("key");
        let policy = WitnessPolicy::parse(&format!(
            "# a 2-of-3 quorum\nlog {}\nwitness a {} http://127.0.0.1:1/\nwitness b {}\n\
             witness c {} https://c.example/w\ngroup two 2 a b c   # comment\nquorum two\n",
            log.verifier(),
            w1.verifier(),
            w2.verifier(),
            w3.verifier()
        ))
        .expect("policy");
        assert_eq!(policy.witnesses().len(), 3);
        assert_eq!(policy.logs(), &[log.verifier()]);
        let text = Checkpoint::new("example.com/log", 5, Hash([2; 32])).to_text();
        let signed = log.sign(&text).expect("sign");
        let err = policy
            .check(signed.as_bytes(), 5)
            .expect_err("no cosignatures");
        assert!(
            err.to_string()
                .contains("group two needs 2 of 3 members, 0 cosigned"),
            "{err}"
        );
        let one = format!("{signed}{}", w1.cosign(&text, 10).expect("cosign"));
        assert!(policy.check(one.as_bytes(), 5).is_err());
        let two = format!("{one}{}", w3.cosign(&text, 11).expect("cosign"));
        assert_eq!(policy.check(two.as_bytes(), 5).expect("quorum"), ["a", "c"]);
        // A cosignature over another checkpoint does not count, nor does a stranger's.
        let other = Checkpoint::new("example.com/log", 6, Hash([2; 32])).to_text();
        let stray = format!("{one}{}", w2.cosign(&other, 11).expect("cosign"));
        assert!(policy.check(stray.as_bytes(), 5).is_err());
        let stranger = format!("{one}{}", witness(4).cosign(&text, 1).expect("cosign"));
        assert!(policy.check(stranger.as_bytes(), 5).is_err());

        // Nested groups and "any"/"all".
        let nested = WitnessPolicy::parse(&format!(
            "witness a {}\nwitness b {}\nwitness c {}\ngroup ab all a b\ngroup top any ab c\nquorum top\n",
            w1.verifier(),
            w2.verifier(),
            w3.verifier()
        ))
        .expect("policy");
        assert!(nested.satisfied_by(&[false, false, true]));
        assert!(nested.satisfied_by(&[true, true, false]));
        assert!(!nested.satisfied_by(&[true, false, false]));
        let none = WitnessPolicy::parse("quorum none\n").expect("policy");
        assert!(!none.requires_cosignatures());
        assert!(none.check(signed.as_bytes(), 5).is_ok());
    }

    #[test]
    fn policy_errors_name_the_line() {
        let w = witness(1).verifier();
        let log = SignerKey::from_seed("l", [1; 32]).expect("key").verifier();
        for (text, line, needle) in [
            (format!("witness a {w}\n"), 0, "no quorum line"),
            (
                format!("witness a {w}\nquorum b\n"),
                2,
                "not a witness or group",
            ),
            (
                format!("witness a {w}\nwitness a {w}\nquorum a\n"),
                2,
                "defined twice",
            ),
            (format!("witness a {log}\nquorum a\n"), 1, "type byte 0x04"),
            (format!("witness any {w}\nquorum any\n"), 1, "keyword"),
            (
                format!("witness a {w}\ngroup g 2 a\nquorum g\n"),
                2,
                "more than the group",
            ),
            (
                format!("witness a {w}\ngroup g 0 a\nquorum g\n"),
                2,
                "number >= 1",
            ),
            (
                format!("witness a {w}\ngroup g 1 b\nquorum g\n"),
                2,
                "not a witness or group",
            ),
            (
                format!("witness a {w}\ngroup g 1 a a\nquorum g\n"),
                2,
                "listed twice",
            ),
            (format!("witness a {w} ftp://x\nquorum a\n"), 1, "not http"),
            (format!("witnesses a {w}\nquorum a\n"), 1, "unknown keyword"),
            (
                format!("witness a {w}\nquorum a\nquorum a\n"),
                3,
                "defined twice",
            ),
            ("log 00ff\nquorum none\n".to_string(), 1, "log key"),
        ] {
            let err = WitnessPolicy::parse(&text).expect_err(&text).to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            if line > 0 {
                assert!(err.contains(&format!("line {line}:")), "{text:?}: {err}");
            }
        }
    }
}
