//! Key lifecycle on the registry: rotating and revoking publisher and attester keys, and
//! re-introducing a publisher key after a revocation — each a `KeyEvent` entry (see
//! `custodian_core::keys` for the rule every verifier applies to them).

use custodian_core::dsse::Envelope;
use custodian_core::keys::{self, Rotation};
use custodian_core::note::VerifierKey;
use custodian_core::receipt::Receipt;
use custodian_core::registry::KeyEvent;

use crate::auth::{Principal, Scope};
use crate::registry::{Registry, RegistryError, invalid, require};

/// True if `who` holds `scope` over the whole of namespace `ns` (`*`, or a name prefix).
fn covers_namespace(who: &Principal, scope: Scope, ns: &str) -> bool {
    if ns == "*" {
        who.allows_everywhere(scope)
    } else {
        who.allows(scope, ns)
    }
}

fn token_id(who: &Principal) -> Result<String, RegistryError> {
    match who {
        Principal::Token(token) => Ok(token.id.clone()),
        Principal::Anonymous => Err(RegistryError::Unauthenticated(
            "key events need a token: send authorization: Bearer <token>".into(),
        )),
    }
}

fn check_role(role: &str) -> Result<Scope, RegistryError> {
    match role {
        keys::ATTESTER => Ok(Scope::Attest),
        keys::PUBLISHER => Ok(Scope::Publish),
        other => Err(invalid(
            "role",
            format!("{other:?} is not {} or {}", keys::ATTESTER, keys::PUBLISHER),
        )),
    }
}

impl Registry {
    /// Refuses an attester key that was rotated away or revoked: it signs nothing new.
    pub(crate) fn attester_counts_now(&self, key: &VerifierKey) -> Result<(), RegistryError> {
        let state = self.read();
        if state.attester(&key.handle()).is_some_and(|a| a.in_force) {
            return Ok(());
        }
        let text = key.to_string();
        let why = match state.keys().revocation(keys::ATTESTER, &text) {
            Some((index, reason, _)) => format!("was revoked ({reason}) by ledger entry {index}"),
            None => "was rotated to another key".into(),
        };
        Err(RegistryError::PermissionDenied(format!(
            "attester key {} {why}; it signs nothing new",
            key.handle()
        )))
    }

    /// The packages pinned to publisher key `key` now.
    fn pinned_to(&self, key: &str) -> Vec<String> {
        self.read()
            .packages()
            .filter(|(_, p)| p.publisher_key() == key)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Rotates a key: the envelope carries a rotation statement signed by the previous and the
    /// new key. From the KeyEvent on, the new key takes over the previous one's packages
    /// (publisher) or namespaces (attester); what was logged before stays valid.
    pub async fn rotate_key(
        &self,
        who: &Principal,
        envelope_json: &str,
    ) -> Result<(KeyEvent, Receipt), RegistryError> {
        let envelope =
            Envelope::parse(envelope_json.as_bytes()).map_err(|e| invalid("envelope", e))?;
        let rotation = Rotation::open(&envelope).map_err(|e| invalid("envelope", e))?;
        let scope = check_role(&rotation.role)?;
        let principal = token_id(who)?;
        let new = VerifierKey::parse(&rotation.key).map_err(|e| invalid("envelope: key", e))?;
        let _write = self.writes.lock().await;
        if rotation.role == keys::ATTESTER {
            let current = self.read().keys().attester_now(&rotation.previous);
            let Some(current) = current else {
                return Err(RegistryError::FailedPrecondition(format!(
                    "{} is not an attester key in force (never registered, rotated away or revoked)",
                    rotation.previous
                )));
            };
            if current != rotation.namespaces {
                return Err(invalid(
                    "envelope: namespaces",
                    format!(
                        "are {}, but the previous key holds {}; a rotation hands over exactly those",
                        rotation.namespaces.join(", "),
                        current.join(", ")
                    ),
                ));
            }
            if self.read().attester(&new.handle()).is_some() {
                return Err(invalid(
                    "envelope: key",
                    format!("{} is already an attester key", new.handle()),
                ));
            }
        } else {
            let pinned = self.pinned_to(&rotation.previous);
            let mut named = rotation.namespaces.clone();
            named.sort();
            if pinned != named {
                return Err(invalid(
                    "envelope: namespaces",
                    format!(
                        "are {}, but the packages pinned to the previous key are {}; a rotation names exactly those",
                        rotation.namespaces.join(", "),
                        if pinned.is_empty() {
                            "none".to_string()
                        } else {
                            pinned.join(", ")
                        }
                    ),
                ));
            }
        }
        for ns in &rotation.namespaces {
            if !covers_namespace(who, scope, ns) {
                return Err(RegistryError::PermissionDenied(format!(
                    "{} may not rotate keys for {ns:?}: it needs the {scope} scope there",
                    who.label()
                )));
            }
        }
        let event = KeyEvent {
            action: Some(keys::ROTATE.into()),
            role: rotation.role.clone(),
            key: rotation.key.clone(),
            principal,
            namespaces: rotation.namespaces.clone(),
            previous: Some(rotation.previous.clone()),
            reason: Some(rotation.reason.clone()),
            effective_ms: None,
            envelope: Some(envelope.to_json()),
        };
        let (index, _, receipt) = self.append(&event).await?;
        tracing::info!(index, role = %event.role, from = %rotation.previous, to = %rotation.key, "key rotated");
        Ok((event, receipt))
    }

    /// Revokes a key. `effective_ms` back-dates a revocation for compromise; without it the
    /// revocation takes effect at its own ledger time. Signatures logged from then on stop
    /// counting; those before stay valid.
    pub async fn revoke_key(
        &self,
        who: &Principal,
        role: &str,
        key: &str,
        reason: &str,
        effective_ms: Option<u64>,
    ) -> Result<(KeyEvent, Receipt), RegistryError> {
        let scope = check_role(role)?;
        let principal = token_id(who)?;
        let key = VerifierKey::parse(key).map_err(|e| invalid("key", e))?;
        let text = key.to_string();
        if reason.trim().is_empty() {
            return Err(invalid(
                "reason",
                "is required (compromise, superseded, retired, …)",
            ));
        }
        let now = crate::sequencer::now_ms();
        if let Some(effective) = effective_ms {
            if effective > now {
                return Err(invalid(
                    "effective",
                    format!(
                        "{} is in the future; a revocation takes effect when it is logged or earlier",
                        custodian_core::vsa::rfc3339_millis(effective)
                    ),
                ));
            }
            if reason != keys::COMPROMISE {
                return Err(invalid(
                    "effective",
                    format!(
                        "only a revocation for {} may be back-dated (the reason is {reason:?})",
                        keys::COMPROMISE
                    ),
                ));
            }
        }
        let _write = self.writes.lock().await;
        if let Some((index, reason, _)) = self.read().keys().revocation(role, &text) {
            return Err(RegistryError::AlreadyExists(format!(
                "{} is already revoked ({reason}) by ledger entry {index}",
                key.handle()
            )));
        }
        // What the key signs for: the namespaces it attests for, or the packages pinned to it.
        let namespaces = if role == keys::ATTESTER {
            let state = self.read();
            let introduced = state.attester(&key.handle()).map(|a| a.namespaces.clone());
            introduced.ok_or_else(|| {
                RegistryError::NotFound(format!("{} is not an attester key", key.handle()))
            })?
        } else {
            let pinned = self.pinned_to(&text);
            if pinned.is_empty() {
                return Err(RegistryError::NotFound(format!(
                    "no package is pinned to publisher key {}",
                    key.handle()
                )));
            }
            pinned
        };
        for ns in &namespaces {
            if !covers_namespace(who, scope, ns) {
                return Err(RegistryError::PermissionDenied(format!(
                    "{} may not revoke {}: it needs the {scope} scope over {ns:?}",
                    who.label(),
                    key.handle()
                )));
            }
        }
        let event = KeyEvent {
            action: Some(keys::REVOKE.into()),
            role: role.into(),
            key: text,
            principal,
            namespaces,
            previous: None,
            reason: Some(reason.into()),
            effective_ms,
            envelope: None,
        };
        let (index, _, receipt) = self.append(&event).await?;
        tracing::warn!(index, role, key = %key.handle(), reason, "key revoked");
        Ok((event, receipt))
    }

    /// Pins a package to a new publisher key after its key was revoked (a rotation needs the
    /// old key's signature, which a compromised or lost key cannot honestly give).
    pub async fn introduce_publisher(
        &self,
        who: &Principal,
        name: &str,
        key: &str,
    ) -> Result<(KeyEvent, Receipt), RegistryError> {
        let principal = token_id(who)?;
        require(who, Scope::Publish, name, "introduce a publisher key for")?;
        let key = VerifierKey::parse(key).map_err(|e| invalid("key", e))?;
        let _write = self.writes.lock().await;
        let current = self
            .read()
            .package(name)
            .map(|p| p.publisher_key().to_string())
            .ok_or_else(|| RegistryError::NotFound(format!("no package {name:?}")))?;
        if self
            .read()
            .keys()
            .revocation(keys::PUBLISHER, &current)
            .is_none()
        {
            return Err(RegistryError::FailedPrecondition(format!(
                "{name:?} is pinned to {current}, which is not revoked; rotate it instead (custodian key rotate, signed by both keys)"
            )));
        }
        if self
            .read()
            .keys()
            .revocation(keys::PUBLISHER, &key.to_string())
            .is_some()
        {
            return Err(invalid(
                "key",
                format!("{} is itself revoked", key.handle()),
            ));
        }
        let event = KeyEvent {
            action: Some(keys::INTRODUCE.into()),
            ..KeyEvent::introduce(
                keys::PUBLISHER,
                key.to_string(),
                principal,
                vec![name.to_string()],
            )
        };
        let (_, _, receipt) = self.append(&event).await?;
        Ok((event, receipt))
    }
}
