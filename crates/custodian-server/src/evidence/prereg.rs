//! Pre-registration on the registry: an eval's acceptance criteria, signed by the package's
//! publisher or an attester for it, recorded as an `EvalPreregistered` entry before its runs
//! (see `custodian_core::prereg`).

use custodian_core::dsse::Envelope;
use custodian_core::note::VerifierKey;
use custodian_core::prereg::PreregStatement;
use custodian_core::receipt::Receipt;
use custodian_core::registry::namespace_covers;

use crate::auth::{Principal, Scope};
use crate::registry::{Registry, RegistryError, invalid, require};

impl Registry {
    /// Checks and records a pre-registration. It must be signed by the package's pinned
    /// publisher key (the caller needs the publish scope) or by an attester key in force for
    /// the package (the attest scope), be about a published, non-yanked version and one of its
    /// evals, and agree with what the manifest already fixes (the metric's threshold, the seed)
    /// and with the version's hosted data pack.
    pub async fn preregister(
        &self,
        who: &Principal,
        envelope_json: &str,
    ) -> Result<Receipt, RegistryError> {
        let envelope =
            Envelope::parse(envelope_json.as_bytes()).map_err(|e| invalid("envelope", e))?;
        // The statement says which package it is about; its signature is checked below with
        // the key that package allows.
        let payload = envelope
            .payload_bytes()
            .map_err(|e| invalid("envelope", e))?;
        let claimed = PreregStatement::from_json(&payload).map_err(|e| invalid("envelope", e))?;
        let (name, version) = (
            claimed.predicate.package.clone(),
            claimed.predicate.version.clone(),
        );
        let record = self.get(who, &name, &version)?;
        let signer: VerifierKey = {
            let state = self.read();
            let publisher = state
                .package(&name)
                .and_then(|p| VerifierKey::parse(p.publisher_key()).ok());
            let attester = envelope.signatures.iter().find_map(|s| {
                state
                    .attester(&s.keyid)
                    .filter(|a| a.in_force && namespace_covers(&a.namespaces, &name))
                    .map(|a| a.key.clone())
            });
            match publisher.filter(|k| envelope.signatures.iter().any(|s| s.keyid == k.handle())) {
                Some(key) => {
                    require(who, Scope::Publish, &name, "pre-register evals of")?;
                    key
                }
                None => match attester {
                    Some(key) => {
                        require(who, Scope::Attest, &name, "pre-register evals of")?;
                        key
                    }
                    None => {
                        return Err(RegistryError::PermissionDenied(format!(
                            "the pre-registration is signed by {}, which is neither {name:?}'s publisher key nor an attester key in force for it",
                            envelope
                                .signatures
                                .iter()
                                .map(|s| s.keyid.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                },
            }
        };
        let statement =
            PreregStatement::open(&envelope, &signer).map_err(|e| invalid("envelope", e))?;
        let p = &statement.predicate;
        if record.event.manifest != statement.manifest.to_string() {
            return Err(invalid(
                "envelope: subject[0].digest",
                format!(
                    "names manifest {} but {name}@{version} has manifest {}",
                    statement.manifest, record.event.manifest
                ),
            ));
        }
        if let Some(crate::registry::Yank { reason, .. }) = &record.yanked {
            return Err(RegistryError::FailedPrecondition(format!(
                "{name}@{version} is yanked ({reason}); its evals are not pre-registered"
            )));
        }
        let manifest = self.manifest_of(&record).await?;
        let manifest = &manifest.0;
        let Some(eval) = manifest.evals.iter().find(|e| e.id() == p.eval_id) else {
            return Err(invalid(
                "predicate.eval_id",
                format!(
                    "{:?} is not an eval of {name}@{version} (its evals: {})",
                    p.eval_id,
                    manifest.eval_ids().join(", ")
                ),
            ));
        };
        if let Some(fixed) = eval.thresholds().get(&p.metric)
            && *fixed != statement.threshold
        {
            return Err(invalid(
                "predicate.threshold",
                format!(
                    "is {} {}, but the manifest already sets {} {fixed} for eval {}; a pre-registration cannot move a bar the signed manifest fixes",
                    p.metric, statement.threshold, p.metric, p.eval_id
                ),
            ));
        }
        if let (Some(fixed), got) = (eval.seed(), p.seed)
            && got != Some(fixed)
        {
            return Err(invalid(
                "predicate.seed",
                format!(
                    "is {}, but the manifest declares seed {fixed} for eval {}",
                    got.map_or_else(|| "absent".into(), |s| s.to_string()),
                    p.eval_id
                ),
            ));
        }
        if let Some((_, hosted)) = record.hosted_data_pack()
            && p.data_pack_sha256.as_deref().is_some_and(|d| d != hosted)
        {
            return Err(invalid(
                "predicate.data_pack_sha256",
                format!(
                    "is {}, but {name}@{version}'s hosted data pack is {hosted}",
                    p.data_pack_sha256.as_deref().unwrap_or_default()
                ),
            ));
        }
        let event = statement.to_event(&signer, &envelope, record.event.private);
        let (index, _, receipt) = self.append(&event).await?;
        tracing::info!(%name, %version, eval = %p.eval_id, index, "eval pre-registered");
        Ok(receipt)
    }
}
