//! Key lifecycle: publisher and attester keys introduced, rotated and revoked by `KeyEvent`
//! ledger entries, and the one rule every verifier applies — a signature is judged against the
//! keys valid **at its entry's ledger time**, never against today's keys.
//!
//! A signature by key K in an entry at index i, integrated at time t, counts when:
//! 1. K was introduced for the role (an `introduce` KeyEvent, or a `rotate` to K) at an index
//!    below i and, for an attester, for a namespace covering the package. A publisher key is
//!    introduced by the package's first publication too (the pin); the registry enforces that.
//! 2. No `rotate` away from K (previous = K) has an index below i: a rotation never invalidates
//!    what was logged before it.
//! 3. No `revoke` of K has an index below i or an effective time at or before t: a revocation
//!    for compromise may be back-dated, and then invalidates what was logged since that time.
//!
//! A rotation is signed by both keys: its envelope carries a [`Rotation`] statement with a
//! signature by the previous key and one by the new key, so nobody holding only one of them can
//! move a package or an attester's namespaces to a key of their choosing.

use serde::{Deserialize, Serialize};

use crate::dsse::{DsseError, Envelope};
use crate::note::{SignerKey, VerifierKey};
use crate::registry::{KeyEvent, namespace_covers};

/// The action of a KeyEvent that introduces a key.
pub const INTRODUCE: &str = "introduce";
/// The action of a KeyEvent that replaces one key by another.
pub const ROTATE: &str = "rotate";
/// The action of a KeyEvent that revokes a key.
pub const REVOKE: &str = "revoke";
/// The role of a key that signs eval runs and pre-registrations.
pub const ATTESTER: &str = "attester";
/// The role of a key that signs package versions.
pub const PUBLISHER: &str = "publisher";
/// The revocation reason that may be back-dated.
pub const COMPROMISE: &str = "compromise";
/// The DSSE payload type of a rotation statement.
pub const ROTATION_PAYLOAD_TYPE: &str = "application/vnd.custodian.key-rotation+json";
/// The `type` of a rotation statement.
pub const ROTATION_TYPE: &str = "custodian.key-rotation.v1";

/// Why a key event is malformed, or a signature does not count.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// A field of a key event or rotation statement is missing or wrong; the message names it.
    #[error("field {field}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The rotation envelope lacks a valid signature by one of its two keys.
    #[error("the rotation is not signed by the {which} key: {source}")]
    Signature {
        /// `previous` or `new`.
        which: &'static str,
        /// The DSSE failure.
        source: DsseError,
    },
}

fn field(field: &'static str, reason: impl Into<String>) -> KeyError {
    KeyError::Field {
        field,
        reason: reason.into(),
    }
}

/// What a rotation's two keys sign: the role, both keys, the namespaces handed over and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// [`ROTATION_TYPE`].
    #[serde(rename = "type")]
    pub statement_type: String,
    /// `publisher` or `attester`.
    pub role: String,
    /// The key being replaced.
    pub previous: String,
    /// The key replacing it.
    pub key: String,
    /// What the new key takes over: the packages (publisher) or namespaces (attester).
    pub namespaces: Vec<String>,
    /// Why.
    pub reason: String,
}

impl Rotation {
    /// The statement's canonical JSON bytes (RFC 8785), what both keys sign.
    pub fn to_json(&self) -> Vec<u8> {
        crate::jcs::to_vec(&serde_json::to_value(self).unwrap_or_default())
    }

    /// Signs the rotation with the previous key and then the new key.
    pub fn sign(&self, previous: &SignerKey, new: &SignerKey) -> Envelope {
        let mut envelope = Envelope::sign(ROTATION_PAYLOAD_TYPE, &self.to_json(), previous);
        envelope.cosign(new);
        envelope
    }

    /// Opens a rotation envelope: both signatures must verify, with the keys it names.
    pub fn open(envelope: &Envelope) -> Result<Rotation, KeyError> {
        let payload = envelope
            .payload_bytes()
            .map_err(|e| field("envelope.payload", e.to_string()))?;
        let rotation: Rotation = serde_json::from_slice(&payload)
            .map_err(|e| field("envelope.payload", format!("not a rotation statement: {e}")))?;
        if rotation.statement_type != ROTATION_TYPE {
            return Err(field(
                "type",
                format!(
                    "is {:?}, expected {ROTATION_TYPE:?}",
                    rotation.statement_type
                ),
            ));
        }
        check_role(&rotation.role)?;
        let previous =
            VerifierKey::parse(&rotation.previous).map_err(|e| field("previous", e.to_string()))?;
        let key = VerifierKey::parse(&rotation.key).map_err(|e| field("key", e.to_string()))?;
        if previous == key {
            return Err(field(
                "key",
                "is the previous key; a rotation needs a new one",
            ));
        }
        if rotation.namespaces.is_empty() {
            return Err(field("namespaces", "is empty"));
        }
        envelope
            .verify(ROTATION_PAYLOAD_TYPE, &previous)
            .map_err(|source| KeyError::Signature {
                which: "previous",
                source,
            })?;
        envelope
            .verify(ROTATION_PAYLOAD_TYPE, &key)
            .map_err(|source| KeyError::Signature {
                which: "new",
                source,
            })?;
        Ok(rotation)
    }
}

fn check_role(role: &str) -> Result<(), KeyError> {
    if role == ATTESTER || role == PUBLISHER {
        Ok(())
    } else {
        Err(field(
            "role",
            format!("{role:?} is not {ATTESTER} or {PUBLISHER}"),
        ))
    }
}

/// Checks a KeyEvent as a verifier reads it from the ledger: a known action and role, keys that
/// parse, a rotation signed by both keys saying exactly what the event says, and a revocation
/// with a reason and an effective time no later than `entry_ms` (the entry's ledger time) — and
/// earlier than it only for a compromise.
pub fn check_event(event: &KeyEvent, entry_ms: u64) -> Result<(), KeyError> {
    check_role(&event.role)?;
    VerifierKey::parse(&event.key).map_err(|e| field("key", e.to_string()))?;
    match event.action() {
        INTRODUCE => {
            if event.namespaces.is_empty() {
                return Err(field("namespaces", "is empty"));
            }
        }
        ROTATE => {
            let envelope = event
                .envelope
                .as_deref()
                .ok_or_else(|| field("envelope", "a rotation must carry its signed statement"))?;
            let envelope = Envelope::parse(envelope.as_bytes())
                .map_err(|e| field("envelope", e.to_string()))?;
            let rotation = Rotation::open(&envelope)?;
            let says = |f: &'static str, ok: bool| {
                if ok {
                    Ok(())
                } else {
                    Err(field(f, "differs from the signed rotation statement"))
                }
            };
            says("role", rotation.role == event.role)?;
            says("key", rotation.key == event.key)?;
            says(
                "previous",
                event.previous.as_deref() == Some(rotation.previous.as_str()),
            )?;
            says("namespaces", rotation.namespaces == event.namespaces)?;
            says(
                "reason",
                event.reason.as_deref() == Some(rotation.reason.as_str()),
            )?;
        }
        REVOKE => {
            let reason = event
                .reason
                .as_deref()
                .filter(|r| !r.trim().is_empty())
                .ok_or_else(|| field("reason", "a revocation must say why"))?;
            // Absent, the revocation takes effect at its own ledger time.
            let effective = event.effective_ms.unwrap_or(entry_ms);
            if effective > entry_ms {
                return Err(field(
                    "effective_ms",
                    format!(
                        "{effective} is after the entry's ledger time {entry_ms}; a revocation takes effect when it is logged or earlier"
                    ),
                ));
            }
            if effective < entry_ms && reason != COMPROMISE {
                return Err(field(
                    "effective_ms",
                    format!(
                        "is back-dated, which only a revocation for {COMPROMISE} may be (the reason is {reason:?})"
                    ),
                ));
            }
        }
        other => {
            return Err(field(
                "action",
                format!("{other:?} is not {INTRODUCE}, {ROTATE} or {REVOKE}"),
            ));
        }
    }
    Ok(())
}

/// Why a signature does not count at its entry's ledger time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// No introduction of the key for the role (and package) precedes the entry.
    NotIntroduced,
    /// The key was rotated away by the KeyEvent at this index, before the entry.
    RotatedAway {
        /// The rotation's ledger index.
        index: u64,
    },
    /// The key was revoked by the KeyEvent at this index, with effect at or before the entry.
    Revoked {
        /// The revocation's ledger index.
        index: u64,
        /// Its reason.
        reason: String,
        /// Its effective time, Unix milliseconds.
        effective_ms: u64,
    },
}

impl Judgement {
    /// A short machine-readable code: `key_not_introduced`, `key_rotated`, `key_revoked`.
    pub fn code(&self) -> &'static str {
        match self {
            Judgement::NotIntroduced => "key_not_introduced",
            Judgement::RotatedAway { .. } => "key_rotated",
            Judgement::Revoked { .. } => "key_revoked",
        }
    }

    /// The KeyEvent responsible, if any.
    pub fn entry(&self) -> Option<u64> {
        match self {
            Judgement::NotIntroduced => None,
            Judgement::RotatedAway { index } | Judgement::Revoked { index, .. } => Some(*index),
        }
    }
}

impl std::fmt::Display for Judgement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Judgement::NotIntroduced => f.write_str("the key was not introduced for it before"),
            Judgement::RotatedAway { index } => {
                write!(f, "the key had been rotated away at ledger entry {index}")
            }
            Judgement::Revoked {
                index,
                reason,
                effective_ms,
            } => write!(
                f,
                "the key is revoked ({reason}) by ledger entry {index}, effective {}",
                crate::vsa::rfc3339_millis(*effective_ms)
            ),
        }
    }
}

/// The key events of a log (or of a bundle), in ledger order, and the rule above.
#[derive(Clone, Debug, Default)]
pub struct KeyHistory {
    events: Vec<(u64, u64, KeyEvent)>,
}

impl KeyHistory {
    /// Adds the KeyEvent at ledger `index`, integrated at `time_ms`. Events may come in any
    /// order; judgements compare indexes and times, not arrival.
    pub fn add(&mut self, index: u64, time_ms: u64, event: KeyEvent) {
        let at = self.events.partition_point(|(i, _, _)| *i < index);
        self.events.insert(at, (index, time_ms, event));
    }

    /// Every event, in ledger order, as `(index, time_ms, event)`.
    pub fn events(&self) -> &[(u64, u64, KeyEvent)] {
        &self.events
    }

    /// The ledger indexes of the events about `key` (introducing, rotating to or from, or
    /// revoking it): what a bundle carries so a verifier can judge the key's signatures.
    pub fn about(&self, key: &str) -> Vec<u64> {
        self.events
            .iter()
            .filter(|(_, _, e)| e.key == key || e.previous.as_deref() == Some(key))
            .map(|(i, _, _)| *i)
            .collect()
    }

    /// Judges a signature by `key` in role `role` over an entry about package `name`, logged at
    /// `index` and `time_ms`. Publisher keys are introduced by the package's pin, which the
    /// registry enforces, so only rotations and revocations are judged for them.
    pub fn judge(
        &self,
        role: &str,
        key: &str,
        name: &str,
        index: u64,
        time_ms: u64,
    ) -> Result<(), Judgement> {
        let mine = |e: &KeyEvent| e.role == role;
        if role == ATTESTER {
            let introduced = self.events.iter().any(|(i, _, e)| {
                *i < index
                    && mine(e)
                    && e.key == key
                    && matches!(e.action(), INTRODUCE | ROTATE)
                    && namespace_covers(&e.namespaces, name)
            });
            if !introduced {
                return Err(Judgement::NotIntroduced);
            }
        }
        for (i, t, e) in &self.events {
            if !mine(e) {
                continue;
            }
            match e.action() {
                ROTATE
                    if *i < index
                        && e.previous.as_deref() == Some(key)
                        && (role == ATTESTER || e.namespaces.iter().any(|n| n == name)) =>
                {
                    return Err(Judgement::RotatedAway { index: *i });
                }
                REVOKE if e.key == key => {
                    let effective = e.effective_ms.unwrap_or(*t);
                    if *i < index || effective <= time_ms {
                        return Err(Judgement::Revoked {
                            index: *i,
                            reason: e.reason.clone().unwrap_or_default(),
                            effective_ms: effective,
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Judges a publisher signature by `key` over an entry about package `name` at `index` and
    /// `time_ms`, where `pinned` is a key the package is known to have been pinned to before
    /// (the version's own publication key): the key must be `pinned` or have been introduced
    /// for the package (an `introduce` or a `rotate` to it) before the entry, and then not
    /// rotated away or revoked.
    pub fn judge_publisher(
        &self,
        key: &str,
        name: &str,
        pinned: &str,
        index: u64,
        time_ms: u64,
    ) -> Result<(), Judgement> {
        let introduced = key == pinned
            || self.events.iter().any(|(i, _, e)| {
                *i < index
                    && e.role == PUBLISHER
                    && e.key == key
                    && matches!(e.action(), INTRODUCE | ROTATE)
                    && e.namespaces.iter().any(|n| n == name)
            });
        if !introduced {
            return Err(Judgement::NotIntroduced);
        }
        self.judge(PUBLISHER, key, name, index, time_ms)
    }

    /// The namespaces `key` holds as an attester now (after every event), or `None` if it was
    /// never introduced, or was rotated away or revoked.
    pub fn attester_now(&self, key: &str) -> Option<Vec<String>> {
        let mut namespaces = None;
        for (_, _, e) in self.events.iter().filter(|(_, _, e)| e.role == ATTESTER) {
            match e.action() {
                INTRODUCE | ROTATE if e.key == key => namespaces = Some(e.namespaces.clone()),
                ROTATE if e.previous.as_deref() == Some(key) => namespaces = None,
                REVOKE if e.key == key => namespaces = None,
                _ => {}
            }
        }
        namespaces
    }

    /// The revocation of `key` in `role`, if any: `(index, reason, effective_ms)`.
    pub fn revocation(&self, role: &str, key: &str) -> Option<(u64, String, u64)> {
        self.events
            .iter()
            .find(|(_, _, e)| e.role == role && e.action() == REVOKE && e.key == key)
            .map(|(i, t, e)| {
                (
                    *i,
                    e.reason.clone().unwrap_or_default(),
                    e.effective_ms.unwrap_or(*t),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, seed: u8) -> SignerKey {
        SignerKey::from_seed(name, [seed; 32]).expect("valid name")
    }

    fn introduce(key: &SignerKey, namespaces: &[&str]) -> KeyEvent {
        KeyEvent::introduce(
            ATTESTER,
            key.verifier().to_string(),
            "t1".into(),
            namespaces.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn rotate(role: &str, old: &SignerKey, new: &SignerKey, namespaces: &[&str]) -> KeyEvent {
        let rotation = Rotation {
            statement_type: ROTATION_TYPE.into(),
            role: role.into(),
            previous: old.verifier().to_string(),
            key: new.verifier().to_string(),
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            reason: "superseded".into(),
        };
        KeyEvent {
            action: Some(ROTATE.into()),
            role: role.into(),
            key: rotation.key.clone(),
            principal: "t1".into(),
            namespaces: rotation.namespaces.clone(),
            previous: Some(rotation.previous.clone()),
            reason: Some(rotation.reason.clone()),
            effective_ms: None,
            envelope: Some(rotation.sign(old, new).to_json()),
        }
    }

    fn revoke(role: &str, key: &SignerKey, reason: &str, effective_ms: u64) -> KeyEvent {
        KeyEvent {
            action: Some(REVOKE.into()),
            role: role.into(),
            key: key.verifier().to_string(),
            principal: "admin".into(),
            namespaces: vec![],
            previous: None,
            reason: Some(reason.into()),
            effective_ms: Some(effective_ms),
            envelope: None,
        }
    }

    #[test]
    fn signatures_are_judged_at_their_ledger_time() {
        let (a, b) = (key("att-a", 1), key("att-b", 2));
        let (ka, kb) = (a.verifier().to_string(), b.verifier().to_string());
        let mut h = KeyHistory::default();
        h.add(1, 1_000, introduce(&a, &["acme-"]));
        h.add(10, 10_000, rotate(ATTESTER, &a, &b, &["acme-"]));
        // Before its introduction, outside its namespace, and after its rotation, A does not
        // count; between the two it does, for ever (the rotation does not reach back).
        assert_eq!(
            h.judge(ATTESTER, &ka, "acme-bot", 1, 1_000),
            Err(Judgement::NotIntroduced)
        );
        assert_eq!(
            h.judge(ATTESTER, &ka, "other", 5, 5_000),
            Err(Judgement::NotIntroduced)
        );
        assert_eq!(h.judge(ATTESTER, &ka, "acme-bot", 5, 5_000), Ok(()));
        assert_eq!(
            h.judge(ATTESTER, &ka, "acme-bot", 11, 11_000),
            Err(Judgement::RotatedAway { index: 10 })
        );
        assert_eq!(h.judge(ATTESTER, &kb, "acme-bot", 11, 11_000), Ok(()));
        assert_eq!(
            h.judge(ATTESTER, &kb, "acme-bot", 9, 9_000),
            Err(Judgement::NotIntroduced)
        );
        assert_eq!(h.attester_now(&ka), None);
        assert_eq!(h.attester_now(&kb), Some(vec!["acme-".to_string()]));

        // A compromise back-dated to 15 000 invalidates B's entry at 16 000, not the one at 12 000.
        h.add(20, 20_000, revoke(ATTESTER, &b, COMPROMISE, 15_000));
        assert_eq!(h.judge(ATTESTER, &kb, "acme-bot", 12, 12_000), Ok(()));
        assert!(matches!(
            h.judge(ATTESTER, &kb, "acme-bot", 16, 16_000),
            Err(Judgement::Revoked { index: 20, .. })
        ));
        assert!(h.judge(ATTESTER, &kb, "acme-bot", 21, 21_000).is_err());
        assert_eq!(h.about(&kb), vec![10, 20]);
        assert_eq!(h.revocation(ATTESTER, &kb).map(|r| r.0), Some(20));
    }

    #[test]
    fn publisher_rotation_covers_only_its_packages() {
        let (a, b) = (key("pub-a", 3), key("pub-b", 4));
        let ka = a.verifier().to_string();
        let mut h = KeyHistory::default();
        h.add(7, 7_000, rotate(PUBLISHER, &a, &b, &["demo"]));
        assert_eq!(h.judge(PUBLISHER, &ka, "demo", 3, 3_000), Ok(()));
        assert_eq!(
            h.judge(PUBLISHER, &ka, "demo", 8, 8_000),
            Err(Judgement::RotatedAway { index: 7 })
        );
        assert_eq!(h.judge(PUBLISHER, &ka, "other", 8, 8_000), Ok(()));
    }

    #[test]
    fn key_events_are_checked_field_by_field() {
        let (a, b, c) = (key("k-a", 5), key("k-b", 6), key("k-c", 7));
        let good = rotate(PUBLISHER, &a, &b, &["demo"]);
        assert_eq!(check_event(&good, 1), Ok(()));
        assert_eq!(check_event(&introduce(&a, &["x"]), 1), Ok(()));
        assert_eq!(
            check_event(&revoke(ATTESTER, &a, COMPROMISE, 5), 10),
            Ok(())
        );

        // A rotation signed by the old key alone, or by a third key, is refused.
        let rotation =
            Rotation::open(&Envelope::parse(good.envelope.as_deref().unwrap().as_bytes()).unwrap())
                .expect("opens");
        let mut single = good.clone();
        single.envelope =
            Some(Envelope::sign(ROTATION_PAYLOAD_TYPE, &rotation.to_json(), &a).to_json());
        assert!(matches!(
            check_event(&single, 1),
            Err(KeyError::Signature { which: "new", .. })
        ));
        let mut third = good.clone();
        let mut envelope = Envelope::sign(ROTATION_PAYLOAD_TYPE, &rotation.to_json(), &a);
        envelope.cosign(&c);
        third.envelope = Some(envelope.to_json());
        assert!(matches!(
            check_event(&third, 1),
            Err(KeyError::Signature { which: "new", .. })
        ));

        let cases: Vec<(&str, KeyEvent)> = vec![
            (
                "role",
                KeyEvent {
                    role: "admin".into(),
                    ..good.clone()
                },
            ),
            (
                "key",
                KeyEvent {
                    key: "nonsense".into(),
                    ..good.clone()
                },
            ),
            (
                "key",
                KeyEvent {
                    key: c.verifier().to_string(),
                    ..good.clone()
                },
            ),
            (
                "previous",
                KeyEvent {
                    previous: None,
                    ..good.clone()
                },
            ),
            (
                "namespaces",
                KeyEvent {
                    namespaces: vec!["other".into()],
                    ..good.clone()
                },
            ),
            (
                "reason",
                KeyEvent {
                    reason: Some("other".into()),
                    ..good.clone()
                },
            ),
            (
                "envelope",
                KeyEvent {
                    envelope: None,
                    ..good.clone()
                },
            ),
            (
                "action",
                KeyEvent {
                    action: Some("delete".into()),
                    ..good.clone()
                },
            ),
            (
                "namespaces",
                KeyEvent {
                    namespaces: vec![],
                    ..introduce(&a, &["x"])
                },
            ),
            (
                "reason",
                KeyEvent {
                    reason: None,
                    ..revoke(ATTESTER, &a, COMPROMISE, 5)
                },
            ),
        ];
        for (name, event) in cases {
            match check_event(&event, 1) {
                Err(KeyError::Field { field, .. }) => assert_eq!(field, name, "{event:?}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        // Only a compromise is back-dated; nothing is post-dated.
        assert!(matches!(
            check_event(&revoke(ATTESTER, &a, "retired", 5), 10),
            Err(KeyError::Field {
                field: "effective_ms",
                ..
            })
        ));
        assert!(matches!(
            check_event(&revoke(ATTESTER, &a, COMPROMISE, 11), 10),
            Err(KeyError::Field {
                field: "effective_ms",
                ..
            })
        ));
    }

    proptest::proptest! {
        /// Any single field of a rotation changed to arbitrary text, or removed, is refused
        /// with that field named (unless the change makes another valid event).
        #[test]
        fn any_changed_or_missing_field_of_a_rotation_is_named(
            which in 0usize..7,
            remove in proptest::bool::ANY,
            text in "[a-z0-9+/=-]{0,40}",
        ) {
            let (a, b) = (key("k-a", 5), key("k-b", 6));
            let good = rotate(PUBLISHER, &a, &b, &["demo"]);
            let mut e = good.clone();
            let name = match which {
                0 => { e.role = text.clone(); "role" }
                1 => { e.key = text.clone(); "key" }
                2 => { e.previous = (!remove).then(|| text.clone()); "previous" }
                3 => { e.namespaces = if remove { vec![] } else { vec![text.clone()] }; "namespaces" }
                4 => { e.reason = (!remove).then(|| text.clone()); "reason" }
                5 => { e.envelope = (!remove).then(|| text.clone()); "envelope" }
                _ => { e.action = Some(text.clone()); "action" }
            };
            proptest::prop_assume!(e != good);
            // Another action may make another valid event: an introduction, a revocation.
            proptest::prop_assume!(!(which == 6 && (text == INTRODUCE || text == REVOKE)));
            match check_event(&e, 1) {
                Err(KeyError::Field { field, .. }) => proptest::prop_assert_eq!(field, name),
                other => proptest::prop_assert!(false, "{}: {:?}", name, other),
            }
        }
    }
}
