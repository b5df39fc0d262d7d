//! `--witness-policy FILE` on the verifying commands: a checkpoint counts only with its
//! witnesses' quorum of cosignatures.

use std::path::Path;

use anyhow::Context as _;
use custodian_core::witness::{WitnessError, WitnessPolicy};

/// Reads and parses a witness policy file, if one was given.
pub fn load(path: Option<&Path>) -> anyhow::Result<Option<WitnessPolicy>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the witness policy {}", path.display()))?;
    let policy = WitnessPolicy::parse(&text)
        .with_context(|| format!("witness policy {}", path.display()))?;
    Ok(Some(policy))
}

/// Checks a signed checkpoint against the policy; returns the witnesses that cosigned (empty
/// without a policy).
pub fn require_quorum(
    policy: Option<&WitnessPolicy>,
    note: &[u8],
    size: u64,
) -> Result<Vec<String>, WitnessError> {
    match policy {
        None => Ok(Vec::new()),
        Some(policy) => policy.check(note, size),
    }
}
