//! The log pages: the published checkpoint and the entries, decoded, each with its inclusion
//! proof against that checkpoint and its receipt — what `custodian log` and the tiles say, for
//! people.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use custodian_core::entry::{Entry, EntryKind};
use custodian_core::merkle::Hash;
use custodian_storage::ledger::{Ledger, SignedCheckpoint};
use serde::Deserialize;

use super::html::{self, esc, internal, layout};
use super::{PageError, PageResult, RestState, who};
use crate::auth::Principal;
use crate::registry::{Registry, RegistryError};

/// Entries per log page.
const PAGE: u64 = 25;

/// One entry as the pages show it.
struct Shown {
    index: u64,
    leaf: Hash,
    /// The decoded entry, or `None` when the caller may not read it or it does not decode.
    entry: Option<Entry>,
    /// Its inclusion proof against the published checkpoint.
    proof: Vec<Hash>,
}

#[derive(Deserialize)]
pub(super) struct From {
    from: Option<u64>,
}

/// Runs `read` on the ledger off the async threads (its storage calls block); a task that
/// could not finish is reported as the ledger's failure, as everywhere else.
async fn on_ledger<T: Send + 'static>(
    ledger: &Arc<Ledger>,
    read: impl FnOnce(&Ledger) -> Result<T, custodian_storage::LedgerError> + Send + 'static,
) -> Result<T, RegistryError> {
    let ledger = ledger.clone();
    tokio::task::spawn_blocking(move || read(&ledger))
        .await
        .map_err(|e| {
            RegistryError::Ledger(custodian_storage::LedgerError::Poisoned(e.to_string()))
        })?
        .map_err(RegistryError::Ledger)
}

/// Reads entries `start..end` (all below the published size) with their proofs, off the async
/// threads: the ledger's storage calls block.
async fn read(
    registry: &Arc<Registry>,
    who: &Principal,
    start: u64,
    end: u64,
) -> Result<(Arc<SignedCheckpoint>, Vec<Shown>), PageError> {
    let (checkpoint, raw) = on_ledger(registry.ledger(), move |ledger| {
        let checkpoint = ledger.published();
        let end = end.min(checkpoint.size);
        let start = start.min(end);
        let bytes = ledger.entries(start, end)?;
        let leaves = ledger.leaf_hashes(start, end)?;
        let mut raw = Vec::with_capacity(bytes.len());
        for (offset, (bytes, leaf)) in bytes.into_iter().zip(leaves).enumerate() {
            let index = start + offset as u64;
            let (proof, _) = ledger.inclusion_proof(index, checkpoint.size)?;
            raw.push((index, bytes, leaf, proof));
        }
        Ok((checkpoint, raw))
    })
    .await?;
    let shown = raw
        .into_iter()
        .map(|(index, bytes, leaf, proof)| Shown {
            index,
            leaf,
            // An entry whose bytes do not hash to the recorded leaf is not decoded: it is damage.
            entry: (custodian_core::merkle::leaf_hash(&bytes) == leaf
                && registry.entry_visible(who, &bytes))
            .then(|| Entry::decode(&bytes).ok())
            .flatten(),
            proof,
        })
        .collect();
    Ok((checkpoint, shown))
}

/// What an entry is about, in a few words.
fn summary(entry: &Entry) -> String {
    let text =
        |key: &str| custodian_core::registry::payload_field(entry, key).and_then(|v| v.as_text());
    if entry.kind == EntryKind::Sealed {
        return format!(
            "sealed: the log commits to a body {}",
            text("body").map(html::digest).unwrap_or_default()
        );
    }
    match (text("name"), text("version")) {
        (Some(name), Some(version)) => {
            internal(&["packages", name, version], &format!("{name}@{version}"))
        }
        (Some(name), None) => format!("<code>{}</code>", esc(name)),
        _ => String::new(),
    }
}

fn proof_list(proof: &[Hash], size: u64) -> String {
    if proof.is_empty() {
        return format!("<p>The entry is the whole tree of size {size}: its proof is empty.</p>");
    }
    let items: String = proof
        .iter()
        .map(|h| format!("<li><code>{}</code></li>", h.to_hex()))
        .collect();
    format!("<ol class=\"proof\">{items}</ol>")
}

fn checkpoint_section(checkpoint: &SignedCheckpoint) -> String {
    format!(
        "<section id=\"checkpoint\"><h2>Published checkpoint</h2><dl><dt>size</dt><dd>{}</dd>\
         <dt>root</dt><dd><code>{}</code></dd></dl><pre class=\"note\">{}</pre>\
         <p><a href=\"/log/checkpoint\">the checkpoint as a file</a> · entries and hashes as \
         C2SP tlog-tiles under <code>/log/tile/</code></p></section>",
        checkpoint.size,
        checkpoint.root.to_hex(),
        esc(&checkpoint.note)
    )
}

pub(super) async fn page(
    State(state): State<RestState>,
    headers: HeaderMap,
    Query(query): Query<From>,
) -> PageResult {
    let who = who(&state, &headers)?;
    let size = state.registry.ledger().published().size;
    let start = query
        .from
        .unwrap_or_else(|| size.saturating_sub(PAGE))
        .min(size);
    let (checkpoint, shown) = read(&state.registry, &who, start, start + PAGE).await?;
    let now = crate::sequencer::now_ms();
    let mut rows = String::new();
    for s in shown.iter().rev() {
        let (kind, time, what) = match &s.entry {
            Some(entry) => (
                esc(&entry.kind.to_string()),
                html::time(entry.time_ms, now),
                summary(entry),
            ),
            None => (
                "—".into(),
                String::new(),
                "not shown: you may not read it, or its bytes do not match the tree".into(),
            ),
        };
        rows.push_str(&format!(
            "<tr id=\"entry-{index}\" class=\"entry\"><td>{link}</td><td><code>{kind}</code></td><td>{time}</td><td>{what}</td>\
             <td><details><summary>{count} hashes</summary>{proof}</details></td><td>{receipt}</td></tr>",
            index = s.index,
            link = internal(&["log", "entries", &s.index.to_string()], &s.index.to_string()),
            count = s.proof.len(),
            proof = proof_list(&s.proof, checkpoint.size),
            receipt = internal(&["log", "entries", &s.index.to_string(), "receipt"], "receipt"),
        ));
    }
    let mut pager = Vec::new();
    let end = (start + PAGE).min(checkpoint.size);
    if end < checkpoint.size {
        pager.push(format!("<a href=\"/log?from={end}\">newer</a>"));
    }
    if start > 0 {
        pager.push(format!(
            "<a href=\"/log?from={}\">older</a>",
            start.saturating_sub(PAGE)
        ));
    }
    let body = format!(
        "<h1>Log</h1>{}<section id=\"entries\"><h2>Entries {start} to {}</h2>\
         <table><thead><tr><th>index</th><th>kind</th><th>integrated</th><th>about</th>\
         <th>inclusion proof</th><th></th></tr></thead><tbody>{rows}</tbody></table>\
         <p class=\"pager\">{}</p></section>",
        checkpoint_section(&checkpoint),
        end.saturating_sub(1),
        pager.join(" · "),
    );
    Ok(super::html(
        StatusCode::OK,
        &layout("Log", &who.label(), &body),
    ))
}

pub(super) async fn entry(
    State(state): State<RestState>,
    Path(index): Path<u64>,
    headers: HeaderMap,
) -> PageResult {
    let who = who(&state, &headers)?;
    let (checkpoint, shown) = read(&state.registry, &who, index, index + 1).await?;
    let Some(s) = shown.into_iter().next() else {
        return Err(not_published(index, checkpoint.size));
    };
    let now = crate::sequencer::now_ms();
    let decoded = match &s.entry {
        Some(entry) => {
            let payload = custodian_core::entry::cbor_to_json(&entry.payload);
            format!(
                "<dl><dt>kind</dt><dd><code>{}</code></dd><dt>integrated</dt><dd>{}</dd>\
                 <dt>about</dt><dd>{}</dd><dt>previous leaf</dt><dd><code>{}</code></dd></dl>\
                 <h2>Payload</h2><pre class=\"payload\">{}</pre>",
                esc(&entry.kind.to_string()),
                html::time(entry.time_ms, now),
                summary(entry),
                entry.prev.to_hex(),
                esc(&serde_json::to_string_pretty(&payload).unwrap_or_default()),
            )
        }
        None => {
            "<p>Not shown: you may not read this entry, or its bytes do not match the tree.</p>"
                .into()
        }
    };
    let body = format!(
        "<h1>Entry {index}</h1><dl><dt>leaf hash</dt><dd><code>{}</code></dd></dl>{decoded}\
         <h2>Inclusion proof</h2><p>Against the published checkpoint of size {} (root <code>{}</code>):</p>{}\
         <p>{} — check it offline with <code>custodian log verify-receipt receipt.json --key log.vkey</code>.</p>",
        s.leaf.to_hex(),
        checkpoint.size,
        checkpoint.root.to_hex(),
        proof_list(&s.proof, checkpoint.size),
        internal(
            &["log", "entries", &index.to_string(), "receipt"],
            "Download its receipt"
        ),
    );
    Ok(super::html(
        StatusCode::OK,
        &layout(&format!("Entry {index}"), &who.label(), &body),
    ))
}

fn not_published(index: u64, size: u64) -> PageError {
    PageError::from(RegistryError::NotFound(format!(
        "there is no entry {index} you may read in the published log ({size} entries)"
    )))
}

/// An entry's receipt as a file (the JSON `custodian log verify-receipt` reads); an API route,
/// so its errors are the API's JSON.
pub(in crate::rest) async fn receipt(
    State(state): State<RestState>,
    Path(index): Path<u64>,
    headers: HeaderMap,
) -> crate::rest::error::ApiResult<axum::response::Response> {
    let who = crate::rest::principal(&state, &headers)?;
    let receipt = on_ledger(state.registry.ledger(), move |ledger| {
        if index >= ledger.published().size {
            return Ok(None);
        }
        ledger.receipt(index).map(Some)
    })
    .await?;
    let size = state.registry.ledger().published().size;
    let Some(receipt) = receipt.filter(|r| state.registry.entry_visible(&who, &r.entry)) else {
        return Err(RegistryError::NotFound(format!(
            "there is no entry {index} you may read in the published log ({size} entries)"
        ))
        .into());
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"receipt-{index}.json\""),
            ),
        ],
        receipt.to_json(),
    )
        .into_response())
}
