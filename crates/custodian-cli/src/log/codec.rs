//! Entry payloads between JSON (what people write and read) and deterministic CBOR (what the
//! ledger stores): integers, strings, booleans, null, arrays and objects; no fractions.

use anyhow::{Context as _, bail};
use custodian_core::entry::Value;

pub(super) fn parse_payload(text: &str) -> anyhow::Result<Value> {
    let text = match text.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading payload file {path}"))?
        }
        None => text.to_string(),
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).context("--payload is not valid JSON")?;
    json_to_cbor(json, "payload")
}

/// A payload's deterministic CBOR encoding (RFC 8949 §4.2.1, map keys in the order of their
/// encodings), which the daemon frames into the entry as it is sent, where other encodings it
/// must first parse and put in that order.
pub(super) fn payload_cbor(payload: Value) -> anyhow::Result<Vec<u8>> {
    let payload = custodian_core::entry::canonicalize_payload(payload)?;
    Ok(custodian_core::entry::encode_value(&payload))
}

/// Converts JSON to CBOR; fractions are refused (entries hold no floats).
pub(super) fn json_to_cbor(json: serde_json::Value, path: &str) -> anyhow::Result<Value> {
    Ok(match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Integer(i.into())
            } else if let Some(u) = n.as_u64() {
                Value::Integer(u.into())
            } else {
                bail!(
                    "{path}: {n} is not an integer; entries hold no fractions, write it as a string"
                )
            }
        }
        serde_json::Value::String(s) => Value::Text(s),
        serde_json::Value::Array(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| json_to_cbor(v, &format!("{path}[{i}]")))
                .collect::<anyhow::Result<_>>()?,
        ),
        serde_json::Value::Object(map) => Value::Map(
            map.into_iter()
                .map(|(k, v)| {
                    let value = json_to_cbor(v, &format!("{path}.{k}"))?;
                    Ok((Value::Text(k), value))
                })
                .collect::<anyhow::Result<_>>()?,
        ),
    })
}
