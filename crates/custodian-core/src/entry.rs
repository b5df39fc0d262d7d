//! Ledger entries: typed, versioned records in deterministic CBOR (RFC 8949 §4.2.1).
//!
//! An entry is a CBOR map with five text keys, written in deterministic order (keys sorted by
//! their encoded bytes, so shorter keys first):
//!
//! | key       | CBOR type            | meaning                                                   |
//! |-----------|----------------------|-----------------------------------------------------------|
//! | `v`       | unsigned int         | format version, 1                                         |
//! | `kind`    | text                 | what happened: `PackagePublished`, `RunAttested`, …       |
//! | `prev`    | byte string (32)     | leaf hash of the previous entry; 32 zero bytes for the first |
//! | `time`    | unsigned int         | integration time, milliseconds since the Unix epoch (UTC) |
//! | `payload` | any CBOR data item   | the event itself, in deterministic CBOR                   |
//!
//! The leaf hash of an entry is the RFC 6962 leaf hash of its encoded bytes. Decoding is strict:
//! bytes that are not the deterministic encoding of a valid entry are rejected, so every entry has
//! exactly one encoding and one leaf hash. `docs/formats.md` has a worked example.

use std::fmt;

pub use ciborium::Value;

use crate::merkle::{Hash, leaf_hash};

/// The entry format version this code writes and reads.
pub const ENTRY_VERSION: u64 = 1;
/// The largest encoded entry accepted, in bytes.
pub const MAX_ENTRY_LEN: usize = 1 << 20;

/// Why entry bytes or an entry's parts were rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The bytes are not one well-formed CBOR data item.
    #[error("entry is not well-formed CBOR: {0}")]
    NotCbor(String),
    /// The bytes are CBOR but not in deterministic encoding (RFC 8949 §4.2.1).
    #[error(
        "entry is not in deterministic CBOR encoding (RFC 8949 §4.2.1): {0}; re-encode it canonically"
    )]
    NotDeterministic(String),
    /// A field is missing, has the wrong type, or an unknown field is present.
    #[error("entry field {field:?}: {reason}")]
    Field {
        /// The field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The entry or its payload is too large.
    #[error("entry is {len} bytes; the limit is {MAX_ENTRY_LEN}")]
    TooLarge {
        /// The encoded length.
        len: usize,
    },
}

/// What an entry records. The set is open: kinds this version does not know are kept as
/// [`EntryKind::Other`] and round-trip unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// An evaluation run was attested (carries `data_pack_sha256`, `reproducibility_context`).
    RunAttested,
    /// A Behavior Package version was published.
    PackagePublished,
    /// A package version was yanked: still fetchable, flagged as not to be used.
    VersionYanked,
    /// A data pack was registered for a package version.
    DataPackRegistered,
    /// A scan of a package or data pack was recorded.
    ScanRecorded,
    /// A badge was issued.
    BadgeIssued,
    /// A key was added, rotated or revoked.
    KeyEvent,
    /// A manifest was pushed to an OCI repository (and a tag moved, if pushed by tag).
    OciManifestPut,
    /// An OCI tag or manifest was deleted.
    OciDeleted,
    /// An eval's acceptance criteria were pre-registered for a package version.
    EvalPreregistered,
    /// A blob was pinned or unpinned, or a legal hold put on it or released.
    BlobRetention,
    /// Blobs were deleted from custody (by garbage collection or an admin), with why.
    BlobsDeleted,
    /// An event about a private package, or too large for a tlog-tiles bundle, sealed: the
    /// payload commits to a body kept in custody (see [`crate::seal`]).
    Sealed,
    /// A kind this version does not know.
    Other(String),
}

impl EntryKind {
    /// The kind's name as written in entries.
    pub fn as_str(&self) -> &str {
        match self {
            EntryKind::RunAttested => "RunAttested",
            EntryKind::PackagePublished => "PackagePublished",
            EntryKind::VersionYanked => "VersionYanked",
            EntryKind::DataPackRegistered => "DataPackRegistered",
            EntryKind::ScanRecorded => "ScanRecorded",
            EntryKind::BadgeIssued => "BadgeIssued",
            EntryKind::KeyEvent => "KeyEvent",
            EntryKind::OciManifestPut => "OciManifestPut",
            EntryKind::OciDeleted => "OciDeleted",
            EntryKind::EvalPreregistered => "EvalPreregistered",
            EntryKind::BlobRetention => "BlobRetention",
            EntryKind::BlobsDeleted => "BlobsDeleted",
            EntryKind::Sealed => "Sealed",
            EntryKind::Other(name) => name,
        }
    }

    /// True for the kinds only Custodian's registry and evidence services append (after their
    /// own checks): raw `Ledger.Append` refuses them, and the registry is rebuilt from them.
    pub fn is_service(&self) -> bool {
        !matches!(self, EntryKind::Other(_))
    }

    /// Every kind this version knows, all of them service kinds.
    pub const KNOWN: [EntryKind; 13] = [
        EntryKind::RunAttested,
        EntryKind::PackagePublished,
        EntryKind::VersionYanked,
        EntryKind::DataPackRegistered,
        EntryKind::ScanRecorded,
        EntryKind::BadgeIssued,
        EntryKind::KeyEvent,
        EntryKind::OciManifestPut,
        EntryKind::OciDeleted,
        EntryKind::EvalPreregistered,
        EntryKind::BlobRetention,
        EntryKind::BlobsDeleted,
        EntryKind::Sealed,
    ];

    /// True if `name` (as [`peek_kind`] reads it from undecoded bytes) is a service kind, so a
    /// scan over many entries can skip the rest without decoding them.
    pub fn is_service_name(name: &str) -> bool {
        Self::KNOWN.iter().any(|kind| kind.as_str() == name)
    }

    /// Parses a kind name: 1 to 64 ASCII letters and digits, starting with an upper-case letter.
    pub fn parse(name: &str) -> Result<Self, EntryError> {
        let valid = (1..=64).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_uppercase())
            && name.bytes().all(|b| b.is_ascii_alphanumeric());
        if !valid {
            return Err(EntryError::Field {
                field: "kind",
                reason: format!(
                    "{name:?} is not a kind name (1-64 ASCII letters and digits, starting upper-case, e.g. PackagePublished)"
                ),
            });
        }
        Ok(Self::KNOWN
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .unwrap_or_else(|| EntryKind::Other(name.to_string())))
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One ledger entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// What happened.
    pub kind: EntryKind,
    /// The leaf hash of the previous entry, or [`Hash::ZERO`] for the first.
    pub prev: Hash,
    /// Integration time in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The event, a CBOR data item (kept in deterministic form).
    pub payload: Value,
}

impl Entry {
    /// Builds an entry, putting the payload in deterministic form. Floating-point numbers are
    /// rejected (they have several encodings and no event needs them); so are duplicate map keys.
    pub fn new(
        kind: EntryKind,
        prev: Hash,
        time_ms: u64,
        payload: Value,
    ) -> Result<Self, EntryError> {
        let payload = canonicalize(payload, "payload")?;
        Ok(Entry {
            kind,
            prev,
            time_ms,
            payload,
        })
    }

    /// The deterministic CBOR encoding.
    pub fn encode(&self) -> Vec<u8> {
        Entry::encode_with_payload(
            &self.kind,
            &self.prev,
            self.time_ms,
            &encode_value(&self.payload),
        )
    }

    /// The deterministic CBOR encoding of an entry whose payload is already encoded
    /// (`payload_cbor`, the deterministic encoding of a payload in [`Entry::new`]'s form).
    ///
    /// The ledger encodes each payload once and frames it here with the entry's own fields,
    /// instead of cloning the payload into one map and encoding the whole of it again for
    /// every append. The map's keys are written in the deterministic order (their encodings
    /// sorted bytewise: `v`, `kind`, `prev`, `time`, `payload`), so the bytes are exactly those
    /// of the map encoded at once (`framing_matches_the_whole_map` checks this).
    pub fn encode_with_payload(
        kind: &EntryKind,
        prev: &Hash,
        time_ms: u64,
        payload_cbor: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(Entry::encoded_len(kind, time_ms, payload_cbor.len()));
        // A map of five pairs: major type 5, length 5. The heads are written here rather than
        // through `ciborium::Value`, which would allocate each key and field once per entry.
        out.push(0xa5);
        write_text("v", &mut out);
        write_head(MAJOR_UNSIGNED, ENTRY_VERSION, &mut out);
        write_text("kind", &mut out);
        write_text(kind.as_str(), &mut out);
        write_text("prev", &mut out);
        write_head(MAJOR_BYTES, prev.0.len() as u64, &mut out);
        out.extend_from_slice(&prev.0);
        write_text("time", &mut out);
        write_head(MAJOR_UNSIGNED, time_ms, &mut out);
        write_text("payload", &mut out);
        out.extend_from_slice(payload_cbor);
        out
    }

    /// The length of [`Entry::encode_with_payload`]'s bytes for a payload of `payload_len`
    /// bytes, computed without writing them.
    pub fn encoded_len(kind: &EntryKind, time_ms: u64, payload_len: usize) -> usize {
        let text = |s: &str| head_len(s.len() as u64) + s.len();
        1 + text("v")
            + head_len(ENTRY_VERSION)
            + text("kind")
            + text(kind.as_str())
            + text("prev")
            + head_len(32)
            + 32
            + text("time")
            + head_len(time_ms)
            + text("payload")
            + payload_len
    }

    /// The RFC 6962 leaf hash of the encoded entry.
    pub fn leaf_hash(&self) -> Hash {
        leaf_hash(&self.encode())
    }

    /// Decodes entry bytes, rejecting anything but the deterministic encoding of a valid entry.
    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        Entry::decode_judged(bytes, true)
    }

    /// [`Entry::decode`]; with `quick` false, every entry takes the full check (build, encode,
    /// compare), as the tests compare.
    fn decode_judged(bytes: &[u8], quick: bool) -> Result<Self, EntryError> {
        if bytes.len() > MAX_ENTRY_LEN {
            return Err(EntryError::TooLarge { len: bytes.len() });
        }
        let quick = if quick {
            read_deterministic(bytes)
        } else {
            None
        };
        let judged = quick.is_some();
        let value = match quick {
            Some(value) => value,
            None => {
                let mut reader = bytes;
                let value: Value = ciborium::from_reader(&mut reader)
                    .map_err(|e| EntryError::NotCbor(e.to_string()))?;
                if !reader.is_empty() {
                    return Err(EntryError::NotCbor(format!(
                        "{} bytes follow the entry",
                        reader.len()
                    )));
                }
                value
            }
        };
        let Value::Map(fields) = value else {
            return Err(EntryError::NotCbor("an entry is a CBOR map".into()));
        };
        let mut version = None;
        let mut kind = None;
        let mut prev = None;
        let mut time_ms = None;
        let mut payload = None;
        for (key, value) in fields {
            let Value::Text(key) = key else {
                return Err(EntryError::NotCbor("entry keys are text strings".into()));
            };
            match key.as_str() {
                "v" => version = Some(value),
                "kind" => kind = Some(value),
                "prev" => prev = Some(value),
                "time" => time_ms = Some(value),
                "payload" => payload = Some(value),
                _ => {
                    return Err(EntryError::Field {
                        field: "entry",
                        reason: format!("unknown field {key:?} in a version 1 entry"),
                    });
                }
            }
        }
        let missing = |field: &'static str| EntryError::Field {
            field,
            reason: "missing".into(),
        };
        match version.ok_or_else(|| missing("v"))? {
            Value::Integer(v) if u64::try_from(v) == Ok(ENTRY_VERSION) => {}
            other => {
                return Err(EntryError::Field {
                    field: "v",
                    reason: format!("unsupported entry version {other:?}; this reader knows 1"),
                });
            }
        }
        let kind = match kind.ok_or_else(|| missing("kind"))? {
            Value::Text(name) => EntryKind::parse(&name)?,
            other => {
                return Err(EntryError::Field {
                    field: "kind",
                    reason: format!("expected a text string, got {other:?}"),
                });
            }
        };
        let prev = match prev.ok_or_else(|| missing("prev"))? {
            Value::Bytes(bytes) if bytes.len() == 32 => {
                Hash::from_slice(&bytes).map_err(|e| EntryError::Field {
                    field: "prev",
                    reason: e.to_string(),
                })?
            }
            other => {
                return Err(EntryError::Field {
                    field: "prev",
                    reason: format!("expected a 32-byte byte string, got {other:?}"),
                });
            }
        };
        let time_ms = match time_ms.ok_or_else(|| missing("time"))? {
            Value::Integer(t) => u64::try_from(t).map_err(|_| EntryError::Field {
                field: "time",
                reason: "must be a non-negative integer".into(),
            })?,
            other => {
                return Err(EntryError::Field {
                    field: "time",
                    reason: format!("expected milliseconds as an integer, got {other:?}"),
                });
            }
        };
        let payload = payload.ok_or_else(|| missing("payload"))?;
        if judged {
            // Every map in the bytes is in order without a repeated key, and no float or tag is
            // there, so the payload is already what `Entry::new` would make of it, and the
            // entry encodes to exactly these bytes: the check below would only spend the time
            // of parsing, sorting and encoding it all again.
            return Ok(Entry {
                kind,
                prev,
                time_ms,
                payload,
            });
        }
        let entry = Entry::new(kind, prev, time_ms, payload)?;
        // One encoding per entry: the bytes must be exactly what this entry encodes to.
        if entry.encode() != bytes {
            return Err(EntryError::NotDeterministic(
                "map keys out of order, non-shortest lengths or indefinite lengths".into(),
            ));
        }
        Ok(entry)
    }
}

/// How deep [`read_deterministic`] follows arrays and maps; deeper items take the full check (no
/// event nests anywhere near this).
const JUDGED_DEPTH: usize = 64;

/// Reads `bytes` as one CBOR data item, and nothing after it, if it is already in the form
/// [`Entry::encode`] writes, judged on the bytes alone (RFC 8949 §4.2.1): every head in its
/// shortest form, every length definite, every map's keys in strictly increasing bytewise order
/// of their encodings (so none repeats), text valid UTF-8. The value is the one `ciborium` reads
/// from the same bytes. `None` for anything else, and for what it does not judge — tags,
/// floats, simple values other than `false`, `true` and `null`, nesting deeper than
/// [`JUDGED_DEPTH`]: those bytes take the full check of [`Entry::decode`] (parse, build the
/// entry, encode it, compare). So a value is only ever read from bytes that check would accept
/// as they are (`a_quick_read_is_one_the_full_check_gives_too`).
fn read_deterministic(bytes: &[u8]) -> Option<Value> {
    match walk_deterministic(bytes, 0, 0, true)? {
        (value, end) if end == bytes.len() => value,
        _ => None,
    }
}

/// True if [`read_deterministic`] would read a value from `bytes`, judged the same way without
/// building the value: for a caller that keeps the bytes and needs no value (a client's payload,
/// framed as sent).
fn is_deterministic(bytes: &[u8]) -> bool {
    walk_deterministic(bytes, 0, 0, false).is_some_and(|(_, end)| end == bytes.len())
}

/// Reads the CBOR data item at `at` as [`read_deterministic`] judges it; returns the value (with
/// `build`; `None` without) and where the item ends, or `None` for bytes it does not accept.
fn walk_deterministic(
    bytes: &[u8],
    at: usize,
    depth: usize,
    build: bool,
) -> Option<(Option<Value>, usize)> {
    /// The major type, the argument and where the head ends, if the head is shortest-form and
    /// definite.
    fn head(bytes: &[u8], at: usize) -> Option<(u8, u64, usize)> {
        let first = *bytes.get(at)?;
        let (major, info) = (first >> 5, first & 0x1f);
        let wide = |n: usize| -> Option<u64> {
            let arg = bytes.get(at + 1..at + 1 + n)?;
            Some(arg.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
        };
        let (value, len, least) = match info {
            0..=23 => (u64::from(info), 1, 0),
            24 => (wide(1)?, 2, 24),
            25 => (wide(2)?, 3, 0x100),
            26 => (wide(4)?, 5, 0x1_0000),
            27 => (wide(8)?, 9, 0x1_0000_0000),
            _ => return None,
        };
        (value >= least).then_some((major, value, at + len))
    }
    let (major, value, next) = head(bytes, at)?;
    let span = || {
        let end = next
            .checked_add(usize::try_from(value).ok()?)
            .filter(|end| *end <= bytes.len())?;
        Some((&bytes[next..end], end))
    };
    // Counts come from the bytes, which may be anyone's (an audited bundle): room for a few
    // items is reserved up front and the rest grows as items are read, so a count that claims
    // more than the bytes hold, at every level of nesting, reserves nothing more.
    let room = |count: u64| Some(usize::try_from(count).ok()?.min(16));
    Some(match major {
        0 => (build.then(|| Value::Integer(value.into())), next),
        1 => {
            let negative = ciborium::value::Integer::try_from(-1 - i128::from(value)).ok()?;
            (build.then_some(Value::Integer(negative)), next)
        }
        2 => {
            let (data, end) = span()?;
            (build.then(|| Value::Bytes(data.to_vec())), end)
        }
        3 => {
            let (data, end) = span()?;
            let text = std::str::from_utf8(data).ok()?;
            (build.then(|| Value::Text(text.to_owned())), end)
        }
        4 if depth < JUDGED_DEPTH => {
            let mut items = Vec::with_capacity(if build { room(value)? } else { 0 });
            let mut at = next;
            for _ in 0..value {
                let (item, end) = walk_deterministic(bytes, at, depth + 1, build)?;
                items.extend(item);
                at = end;
            }
            (build.then_some(Value::Array(items)), at)
        }
        5 if depth < JUDGED_DEPTH => {
            let mut pairs = Vec::with_capacity(if build { room(value)? } else { 0 });
            let mut at = next;
            let mut previous: Option<&[u8]> = None;
            for _ in 0..value {
                let (key, key_end) = walk_deterministic(bytes, at, depth + 1, build)?;
                let encoded = &bytes[at..key_end];
                if previous.is_some_and(|p| p >= encoded) {
                    return None;
                }
                previous = Some(encoded);
                let (value, end) = walk_deterministic(bytes, key_end, depth + 1, build)?;
                pairs.extend(key.zip(value));
                at = end;
            }
            (build.then_some(Value::Map(pairs)), at)
        }
        // false, true and null, each a head of one byte.
        7 if next == at + 1 => match value {
            20 => (build.then_some(Value::Bool(false)), next),
            21 => (build.then_some(Value::Bool(true)), next),
            22 => (build.then_some(Value::Null), next),
            _ => return None,
        },
        _ => return None,
    })
}

/// The kind of an encoded entry, read from its fixed prefix without decoding the rest: every
/// version-1 entry starts with the map header, `v: 1` and the `kind` key. `None` if the bytes do
/// not start that way (a full [`Entry::decode`] then says why).
pub fn peek_kind(bytes: &[u8]) -> Option<&str> {
    // a5 (map of 5), 61 76 ("v"), 01, 64 6b 69 6e 64 ("kind"), then a text head.
    const PREFIX: [u8; 9] = [0xa5, 0x61, b'v', 0x01, 0x64, b'k', b'i', b'n', b'd'];
    let rest = bytes.strip_prefix(PREFIX.as_slice())?;
    let (&head, rest) = rest.split_first()?;
    let (len, rest) = match head {
        0x60..=0x77 => (usize::from(head - 0x60), rest),
        0x78 => (usize::from(*rest.first()?), &rest[1..]),
        _ => return None,
    };
    std::str::from_utf8(rest.get(..len)?).ok()
}

/// Encodes a CBOR value as it is (callers canonicalize first).
pub fn encode_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_value(value, &mut out);
    out
}

/// Appends the CBOR encoding of `value` to `out`.
fn write_value(value: &Value, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail, and every Value is serializable.
    if let Err(err) = ciborium::into_writer(value, out) {
        unreachable!("encoding CBOR into memory failed: {err}");
    }
}

/// CBOR's major type 0, an unsigned integer (RFC 8949 §3.1).
const MAJOR_UNSIGNED: u8 = 0;
/// CBOR's major type 2, a byte string.
const MAJOR_BYTES: u8 = 2;
/// CBOR's major type 3, a text string.
const MAJOR_TEXT: u8 = 3;

/// Appends a CBOR head: the major type and its argument in the shortest form (RFC 8949 §3 and
/// §4.2.1), as `ciborium` writes it.
fn write_head(major: u8, argument: u64, out: &mut Vec<u8>) {
    let len = head_len(argument);
    // Additional information 0-23 is the argument itself; 24-27 say it follows in 1, 2, 4 or 8
    // bytes, big-endian.
    let info = match len {
        1 => argument as u8,
        2 => 24,
        3 => 25,
        5 => 26,
        _ => 27,
    };
    out.push(major << 5 | info);
    out.extend_from_slice(&argument.to_be_bytes()[9 - len..]);
}

/// How many bytes [`write_head`] writes for `argument`: the shortest form that holds it.
fn head_len(argument: u64) -> usize {
    match argument {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Appends a CBOR text string.
fn write_text(text: &str, out: &mut Vec<u8>) {
    write_head(MAJOR_TEXT, text.len() as u64, out);
    out.extend_from_slice(text.as_bytes());
}

/// A payload sent as CBOR bytes, in the deterministic encoding an entry frames. Bytes already in
/// that encoding, which is what a careful client sends, are checked in one pass without being
/// decoded, and kept as they are; any other encoding takes [`payload_reencoded`]: parsed and put
/// in deterministic form as [`Entry::new`] does, with the same refusals (floats, repeated map
/// keys, bytes after the item), and framed as a reader will read it back. Either way the result
/// is what the slow way makes of the bytes, and an entry framing it decodes
/// (`a_payload_prepares_the_same_from_any_encoding`).
pub fn payload_from_cbor(bytes: Vec<u8>) -> Result<Vec<u8>, EntryError> {
    if is_deterministic(&bytes) {
        return Ok(bytes);
    }
    payload_reencoded(&bytes)
}

/// A payload's bytes the slow way: parsed, put in deterministic form and encoded, and then the
/// same again until the encoding holds still, or refused. A reader of the entry parses these
/// bytes again, and `ciborium` reads some tagged items as other values than the ones it wrote: a
/// bignum (tag 2 or 3) over a definite byte string of at most 16 bytes is read as an integer,
/// while one sent over an indefinite-length string was kept as the tag. Framed as first encoded,
/// such an entry would not read back as itself, and every later read would call it corrupt; so
/// the payload is framed as it will be read (RFC 8949 §3.4.3 prefers the integer for a bignum
/// that fits one). [`payload_from_cbor`] takes this way for bytes its one-pass check refuses.
pub fn payload_reencoded(bytes: &[u8]) -> Result<Vec<u8>, EntryError> {
    let once = |bytes: &[u8]| -> Result<Vec<u8>, EntryError> {
        Ok(encode_value(&canonicalize(parse_cbor(bytes)?, "payload")?))
    };
    let mut encoded = once(bytes)?;
    for _ in 0..2 {
        let again = once(&encoded)?;
        if again == encoded {
            return Ok(encoded);
        }
        encoded = again;
    }
    Err(EntryError::Field {
        field: "payload",
        reason: "a tagged item does not read back as it is written; send the payload in \
                 deterministic form (RFC 8949 §4.2.1) without it"
            .into(),
    })
}

/// Parses one CBOR data item (with nothing after it), as it is; [`Entry::new`] puts it in
/// deterministic form.
pub fn parse_cbor(bytes: &[u8]) -> Result<Value, EntryError> {
    let mut reader = bytes;
    let value: Value =
        ciborium::from_reader(&mut reader).map_err(|e| EntryError::NotCbor(e.to_string()))?;
    if !reader.is_empty() {
        return Err(EntryError::NotCbor(format!(
            "{} bytes follow the payload",
            reader.len()
        )));
    }
    Ok(value)
}

/// Puts a payload in deterministic form, as [`Entry::new`] does.
pub fn canonicalize_payload(value: Value) -> Result<Value, EntryError> {
    canonicalize(value, "payload")
}

/// Puts a value in RFC 8949 §4.2.1 deterministic form: map keys sorted by the bytewise order of
/// their encodings (ciborium already writes shortest-form heads and definite lengths).
fn canonicalize(value: Value, field: &'static str) -> Result<Value, EntryError> {
    Ok(match value {
        Value::Float(f) => {
            return Err(EntryError::Field {
                field,
                reason: format!(
                    "floating-point number {f} is not allowed; use an integer or a string"
                ),
            });
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| canonicalize(v, field))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(pairs) => {
            let mut keyed = Vec::with_capacity(pairs.len());
            for (k, v) in pairs {
                let k = canonicalize(k, field)?;
                keyed.push((encode_value(&k), k, canonicalize(v, field)?));
            }
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some(pair) = keyed.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(EntryError::Field {
                    field,
                    reason: format!("map key {:?} appears twice", pair[0].1),
                });
            }
            Value::Map(keyed.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
        Value::Tag(tag, inner) => Value::Tag(tag, Box::new(canonicalize(*inner, field)?)),
        other => other,
    })
}

/// Renders CBOR as JSON for people and scripts: byte strings become lower-case hex.
pub fn cbor_to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::json!(b),
        Value::Integer(i) => {
            let i = i128::from(*i);
            if let Ok(v) = i64::try_from(i) {
                serde_json::json!(v)
            } else if let Ok(v) = u64::try_from(i) {
                serde_json::json!(v)
            } else {
                serde_json::json!(i.to_string())
            }
        }
        Value::Text(s) => serde_json::json!(s),
        Value::Bytes(b) => serde_json::json!(hex::encode(b)),
        Value::Float(f) => serde_json::json!(f),
        Value::Array(items) => serde_json::Value::Array(items.iter().map(cbor_to_json).collect()),
        Value::Map(pairs) => {
            let mut map = serde_json::Map::new();
            for (k, v) in pairs {
                let key = match k {
                    Value::Text(s) => s.clone(),
                    other => cbor_to_json(other).to_string(),
                };
                map.insert(key, cbor_to_json(v));
            }
            serde_json::Value::Object(map)
        }
        Value::Tag(_, inner) => cbor_to_json(inner),
        _ => serde_json::Value::Null,
    }
}

#[cfg(test)]
mod peek_tests {
    use super::*;

    #[test]
    fn peek_kind_reads_the_prefix_of_every_kind() {
        for name in ["RunAttested", "PackagePublished", "X", &"K".repeat(64)] {
            let kind = EntryKind::parse(name).expect("valid kind");
            let entry = Entry::new(kind, Hash::ZERO, 1, Value::Null).expect("entry");
            assert_eq!(peek_kind(&entry.encode()), Some(name));
        }
        assert_eq!(peek_kind(b""), None);
        assert_eq!(
            peek_kind(&[
                0xa5, 0x61, b'v', 0x01, 0x64, b'k', b'i', b'n', b'd', 0x65, b'a'
            ]),
            None
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    /// The entry as one map, encoded at once: what [`Entry::encode`] wrote before it framed a
    /// payload encoded on its own.
    fn encode_as_one_map(entry: &Entry) -> Vec<u8> {
        encode_value(&Value::Map(vec![
            (text("v"), Value::Integer(ENTRY_VERSION.into())),
            (text("kind"), text(entry.kind.as_str())),
            (text("prev"), Value::Bytes(entry.prev.0.to_vec())),
            (text("time"), Value::Integer(entry.time_ms.into())),
            (text("payload"), entry.payload.clone()),
        ]))
    }

    proptest::proptest! {
        /// Framing a payload encoded on its own gives the bytes of the whole map encoded at
        /// once, for every kind, time (every head length) and payload shape.
        #[test]
        fn framing_matches_the_whole_map(
            kind in proptest::sample::select(vec![
                "RunAttested", "PackagePublished", "KeyEvent", "Sealed", "BlobsDeleted",
                "SomethingNew", "SomethingNewWhoseNameTakesATwoByteHead",
            ]),
            prev in proptest::array::uniform32(proptest::num::u8::ANY),
            time_ms in proptest::prop_oneof![
                0u64..24, 24u64..0x100, 0x100u64..0x1_0000, 0x1_0000u64..0x1_0000_0000,
                proptest::num::u64::ANY,
            ],
            keys in proptest::collection::vec("[a-z]{0,30}", 0..8),
            number in proptest::num::i64::ANY,
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let mut pairs: Vec<(Value, Value)> = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                if pairs.iter().any(|(k, _)| k == &text(key)) {
                    continue;
                }
                let value = match i % 3 {
                    0 => Value::Integer(number.into()),
                    1 => Value::Bytes(bytes.clone()),
                    _ => Value::Array(vec![text(key), Value::Map(vec![(text("n"), Value::Integer(i.into()))])]),
                };
                pairs.push((text(key), value));
            }
            let kind = EntryKind::parse(kind).expect("kind");
            let entry = Entry::new(kind, Hash(prev), time_ms, Value::Map(pairs)).expect("entry");
            let framed = entry.encode();
            proptest::prop_assert_eq!(&framed, &encode_as_one_map(&entry));
            proptest::prop_assert_eq!(
                framed.len(),
                Entry::encoded_len(&entry.kind, time_ms, encode_value(&entry.payload).len())
            );
            proptest::prop_assert_eq!(Entry::decode(&framed).expect("decodes"), entry);
        }
    }

    /// Any CBOR value an entry's payload could hold, and some it must not: floats, tags, repeated
    /// and unsorted map keys, integers of every head length, nesting.
    fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            any::<i64>().prop_map(|n| Value::Integer(n.into())),
            any::<u64>().prop_map(|n| Value::Integer(n.into())),
            (0u64..300).prop_map(|n| Value::Integer(n.into())),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
            "[a-z\\u{e9}\\u{1f600}]{0,12}".prop_map(Value::Text),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
            (-1e3f64..1e3).prop_map(Value::Float),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            "[a-c]{0,3}".prop_map(Value::Text),
                            (-30i64..30).prop_map(|n| Value::Integer(n.into())),
                        ],
                        inner.clone()
                    ),
                    0..6
                )
                .prop_map(Value::Map),
                (0u64..40, inner).prop_map(|(tag, v)| Value::Tag(tag, Box::new(v))),
            ]
        })
    }

    /// Whether the quick judgement is meant to say yes to this value once it is in order: no
    /// float, no tag.
    fn plain(value: &Value) -> bool {
        match value {
            Value::Float(_) | Value::Tag(..) => false,
            Value::Array(items) => items.iter().all(plain),
            Value::Map(pairs) => pairs.iter().all(|(k, v)| plain(k) && plain(v)),
            _ => true,
        }
    }

    /// The quick judgement and the full check give the same answer on `bytes`: the same entry,
    /// or the same refusal.
    fn same_answer(bytes: &[u8]) -> Result<(), proptest::test_runner::TestCaseError> {
        let quick = Entry::decode(bytes);
        let full = Entry::decode_judged(bytes, false);
        proptest::prop_assert_eq!(format!("{quick:?}"), format!("{full:?}"));
        let Some(read) = read_deterministic(bytes) else {
            return Ok(());
        };
        // The value read is ciborium's.
        let parsed = parse_cbor(bytes);
        proptest::prop_assert!(
            matches!(&parsed, Ok(v) if *v == read),
            "read {read:?}, ciborium {parsed:?}"
        );
        // A quick read says nothing of the fields (an unknown one is still refused), but the
        // full check must never find the encoding itself wrong.
        {
            proptest::prop_assert!(
                !matches!(full, Err(EntryError::NotDeterministic(_))),
                "quick read, full check says {full:?}"
            );
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

        /// Said of any payload as it is written (keys in any order, repeated, floats, tags), in
        /// order, and after any one byte is changed, dropped or added: a quick read is only ever
        /// made where the full check accepts the same entry, and the quick path is the one
        /// taken for every entry in order.
        #[test]
        fn a_quick_read_is_one_the_full_check_gives_too(
            value in any_value(),
            time_ms in proptest::num::u64::ANY,
            at in proptest::num::usize::ANY,
            byte in proptest::num::u8::ANY,
        ) {
            let as_written = Entry::encode_with_payload(
                &EntryKind::RunAttested,
                &Hash([3; 32]),
                time_ms,
                &encode_value(&value),
            );
            same_answer(&as_written)?;
            if let Ok(entry) = Entry::new(EntryKind::RunAttested, Hash([3; 32]), time_ms, value.clone()) {
                let bytes = entry.encode();
                same_answer(&bytes)?;
                proptest::prop_assert_eq!(read_deterministic(&bytes).is_some(), plain(&value));
                for off in one_byte_off(&bytes, at, byte) {
                    same_answer(&off)?;
                }
            }
        }
    }

    /// `bytes` with one byte changed to `byte`, dropped, and `byte` added, each at `at` (taken
    /// modulo the length; `bytes` must not be empty).
    fn one_byte_off(bytes: &[u8], at: usize, byte: u8) -> [Vec<u8>; 3] {
        let at = at % bytes.len();
        let mut changed = bytes.to_vec();
        changed[at] = byte;
        let mut shorter = bytes.to_vec();
        shorter.remove(at);
        let mut longer = bytes.to_vec();
        longer.insert(at, byte);
        [changed, shorter, longer]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

        /// A payload sent in any encoding (keys in any order or repeated, floats, tags), in
        /// deterministic form, or with one byte changed, dropped or added, prepares exactly as
        /// the slow way does: the same encoding, or the same refusal; bytes already
        /// deterministic are kept as they were sent, where the one-pass reader judges them (no
        /// tags: `ciborium` reads a bignum of 0 as the integer 0, for one); and the check that
        /// builds no value judges every case as the read that builds one.
        #[test]
        fn a_payload_prepares_the_same_from_any_encoding(
            value in any_value(),
            at in proptest::num::usize::ANY,
            byte in proptest::num::u8::ANY,
        ) {
            let as_written = encode_value(&value);
            let mut cases = vec![as_written.clone()];
            if let Ok(canonical) = canonicalize_payload(value.clone()) {
                let bytes = encode_value(&canonical);
                if plain(&canonical) {
                    proptest::prop_assert_eq!(payload_from_cbor(bytes.clone()), Ok(bytes.clone()));
                }
                cases.push(bytes);
            }
            for bytes in cases.clone() {
                cases.extend(one_byte_off(&bytes, at, byte));
            }
            for bytes in cases {
                proptest::prop_assert_eq!(
                    is_deterministic(&bytes),
                    read_deterministic(&bytes).is_some(),
                    "{}", hex::encode(&bytes)
                );
                let fast = payload_from_cbor(bytes.clone());
                let slow = payload_reencoded(&bytes);
                proptest::prop_assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{}", hex::encode(&bytes));
                // What is framed reads back as itself, inside an entry too.
                if let Ok(framed) = fast {
                    let reread = payload_reencoded(&framed);
                    proptest::prop_assert_eq!(reread.as_ref(), Ok(&framed), "{}", hex::encode(&bytes));
                    let entry = Entry::encode_with_payload(
                        &EntryKind::KeyEvent, &crate::merkle::Hash([0; 32]), 1, &framed,
                    );
                    proptest::prop_assert!(
                        Entry::decode(&entry).is_ok(), "{}", hex::encode(&bytes)
                    );
                }
            }
        }
    }

    /// Found by the fuzz target `grpc_requests` (an `Append` whose entry was then refused as
    /// corrupt on every read): a bignum over an indefinite-length byte string, `2(_ h'87')`. It
    /// is framed as the integer a reader will read (135), and its entry reads back.
    #[test]
    fn a_bignum_sent_over_an_indefinite_string_is_framed_as_it_reads_back() {
        let framed = payload_from_cbor(hex::decode("c25f4187ff").expect("hex")).expect("framed");
        assert_eq!(hex::encode(&framed), "1887");
        let entry = Entry::encode_with_payload(
            &EntryKind::KeyEvent,
            &crate::merkle::Hash([0; 32]),
            1,
            &framed,
        );
        assert!(Entry::decode(&entry).is_ok());
        // The same bignum over a definite string was already read as the integer.
        assert_eq!(
            payload_from_cbor(hex::decode("c24187").expect("hex")).expect("framed"),
            framed
        );
    }

    #[test]
    fn the_quick_judgement_refuses_each_non_deterministic_form() {
        let no = |hex_bytes: &str| {
            assert!(
                read_deterministic(&hex::decode(hex_bytes).expect("hex")).is_none(),
                "{hex_bytes}"
            )
        };
        let yes = |hex_bytes: &str| {
            assert!(
                read_deterministic(&hex::decode(hex_bytes).expect("hex")).is_some(),
                "{hex_bytes}"
            )
        };
        // RFC 8949 Appendix A examples in their shortest forms.
        for ok in [
            "00",
            "17",
            "1818",
            "1903e8",
            "1a000f4240",
            "1b000000e8d4a51000",
            "20",
            "3863",
            "f4",
            "f5",
            "f6",
            "40",
            "4401020304",
            "60",
            "6449455446",
            "80",
            "83010203",
            "a0",
            "a201020304",
            "a26161016162820203",
        ] {
            yes(ok);
        }
        no("1817"); // 23 in two bytes
        no("190017"); // 23 in three bytes
        no("1a000000ff"); // 255 in five bytes
        no("1b00000000ffffffff"); // 2^32 - 1 in nine bytes
        no("5f42010243030405ff"); // an indefinite byte string
        no("9fff"); // an indefinite array
        no("a20102"); // a map cut short
        no("a203040102"); // keys out of order
        no("a201020103"); // a key twice
        no("f93c00"); // a half-precision float
        no("f7"); // undefined
        no("f0"); // a simple value
        no("c11a514b67b0"); // a tag
        no("62c328"); // text that is not UTF-8
        no("0000"); // a byte after the item
    }

    /// The worked example of docs/formats.md; the expected bytes are written out by hand there.
    #[test]
    fn worked_example_bytes() {
        let entry = Entry::new(
            EntryKind::KeyEvent,
            Hash::ZERO,
            1_764_115_200_000,
            Value::Map(vec![(text("note"), text("hi"))]),
        )
        .expect("entry");
        let bytes = entry.encode();
        let expected = concat!(
            "a5", // map of 5 pairs
            "61",
            "76",
            "01", // "v": 1
            "64",
            "6b696e64", // "kind":
            "68",
            "4b65794576656e74", //   "KeyEvent"
            "64",
            "70726576", // "prev":
            "5820",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "64",
            "74696d65", // "time":
            "1b",
            "0000019abd75b800", //   1764115200000
            "67",
            "7061796c6f6164", // "payload":
            "a1",
            "64",
            "6e6f7465",
            "62",
            "6869", // {"note": "hi"}
        );
        assert_eq!(hex::encode(&bytes), expected);
        assert_eq!(Entry::decode(&bytes).expect("decode"), entry);
        assert_eq!(
            entry.leaf_hash(),
            leaf_hash(&hex::decode(expected).expect("hex"))
        );
    }

    #[test]
    fn payload_maps_are_sorted_bytewise_not_length_first() {
        // RFC 8949 §4.2.1 sorts by encoded bytes: 24 (0x1818) comes before -1 (0x20), although
        // its encoding is longer; RFC 7049's length-first order would put -1 first.
        let payload = Value::Map(vec![
            (Value::Integer((-1).into()), text("minus one")),
            (Value::Integer(24.into()), text("twenty-four")),
            (text("b"), Value::Null),
            (text("aa"), Value::Null),
        ]);
        let entry = Entry::new(EntryKind::ScanRecorded, Hash::ZERO, 0, payload).expect("entry");
        let Value::Map(pairs) = &entry.payload else {
            panic!("map")
        };
        let keys: Vec<Vec<u8>> = pairs.iter().map(|(k, _)| encode_value(k)).collect();
        assert_eq!(
            keys,
            vec![
                vec![0x18, 0x18],
                vec![0x20],
                vec![0x61, b'b'],
                vec![0x62, b'a', b'a']
            ]
        );
    }

    #[test]
    fn strict_decoding_rejects_other_encodings() {
        let entry = Entry::new(EntryKind::BadgeIssued, Hash([7; 32]), 5, text("x")).expect("entry");
        let good = entry.encode();
        assert!(Entry::decode(&good).is_ok());
        // A trailing byte.
        let mut bad = good.clone();
        bad.push(0);
        assert!(matches!(Entry::decode(&bad), Err(EntryError::NotCbor(_))));
        // Non-shortest time: 5 as a two-byte integer (0x19 0x0005).
        let at = good
            .windows(5)
            .position(|w| w == [0x64, b't', b'i', b'm', b'e'])
            .expect("time key")
            + 5;
        let mut bad = good.clone();
        bad.splice(at..at + 1, [0x19, 0x00, 0x05]);
        assert!(matches!(
            Entry::decode(&bad),
            Err(EntryError::NotDeterministic(_))
        ));
        // Floats and duplicate keys in payloads.
        assert!(Entry::new(EntryKind::KeyEvent, Hash::ZERO, 0, Value::Float(1.5)).is_err());
        let dup = Value::Map(vec![
            (text("a"), Value::Null),
            (text("a"), Value::Bool(true)),
        ]);
        assert!(Entry::new(EntryKind::KeyEvent, Hash::ZERO, 0, dup).is_err());
        assert!(EntryKind::parse("lower").is_err());
        assert!(EntryKind::parse("Has Space").is_err());
        assert_eq!(
            EntryKind::parse("FutureThing").expect("kind"),
            EntryKind::Other("FutureThing".into())
        );
    }

    #[test]
    fn every_single_byte_change_is_rejected_or_changes_the_entry() {
        let entry = Entry::new(
            EntryKind::PackagePublished,
            Hash([1; 32]),
            1_700_000_000_000,
            Value::Map(vec![
                (text("name"), text("pkg")),
                (text("version"), text("1.0.0")),
            ]),
        )
        .expect("entry");
        let good = entry.encode();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            if let Ok(decoded) = Entry::decode(&bad) {
                assert_ne!(decoded, entry, "flip at {at} decoded to the same entry");
                assert_ne!(leaf_hash(&bad), entry.leaf_hash());
            }
        }
    }
}
