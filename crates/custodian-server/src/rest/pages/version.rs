//! The version page: what a consumer deciding whether to install a version, or an auditor
//! following a badge's link, wants to see, each fact with the ledger entry it comes from.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

use super::html::{self, digest, esc, external, internal, layout, path};
use super::{PageResult, RestState, who};
use crate::evidence::VersionView;
use crate::rest::badge::badge_svg;
use crate::rest::views::data_pack_json;

pub(super) async fn page(
    State(state): State<RestState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> PageResult {
    let who = who(&state, &headers)?;
    let view = state.registry.version_view(&who, &name, &version).await?;
    let now = view.badge.evaluated_ms;
    let e = &view.record.event;
    let mut body = String::new();
    body.push_str(&format!(
        "<h1 class=\"name\">{}<span class=\"at\">@</span>{}</h1>",
        esc(&e.name),
        esc(&e.version)
    ));
    body.push_str(&format!(
        "<p class=\"badge\" data-state=\"{state}\">{svg} <b class=\"state\">{state}</b> under badge policy {policy}, evaluated {time}</p>",
        state = view.badge.state.as_str(),
        svg = badge_svg(view.badge.state, None),
        policy = esc(&view.badge.policy),
        time = html::time(view.badge.evaluated_ms, now),
    ));
    if let Some(yank) = &view.record.yanked {
        body.push_str(&format!(
            "<p class=\"yanked\">Yanked: {} ({})</p>",
            esc(&yank.reason),
            entry_link(yank.index)
        ));
    }
    body.push_str(&reasons(&view));
    body.push_str(&facts(&view, now));
    body.push_str(&matrix(&view, now));
    body.push_str(&scans(&view, now));
    body.push_str(&data_pack(&state, &view));
    body.push_str(&files(&view));
    body.push_str(&verify(&view));
    let title = format!("{}@{}", e.name, e.version);
    Ok(super::html(
        StatusCode::OK,
        &layout(&title, &who.label(), &body),
    ))
}

fn entry_link(index: u64) -> String {
    internal(
        &["log", "entries", &index.to_string()],
        &format!("entry {index}"),
    )
}

fn receipt_link(index: u64) -> String {
    internal(
        &["log", "entries", &index.to_string(), "receipt"],
        "receipt",
    )
}

/// Why the badge is what it is, in words.
fn reasons(view: &VersionView) -> String {
    let badge = &view.badge;
    if badge.reasons.is_empty() {
        return format!(
            "<section id=\"reasons\"><h2>Why</h2><p class=\"reason-none\">Every requirement of policy {} holds, on the {} ledger entries the badge rests on.</p></section>",
            esc(&badge.policy),
            badge.evidence.len()
        );
    }
    let mut items = String::new();
    for reason in &badge.reasons {
        let mut about = Vec::new();
        if let Some(eval) = &reason.eval {
            about.push(format!("eval <code>{}</code>", esc(eval)));
        }
        if let Some(model) = &reason.model {
            about.push(format!("model <code>{}</code>", esc(model)));
        }
        if let Some(index) = reason.entry {
            about.push(entry_link(index));
        }
        items.push_str(&format!(
            "<li class=\"reason\" data-code=\"{code}\"><code>{code}</code> <span class=\"forces\">{forces}</span> {message}{about}</li>",
            code = esc(&reason.code),
            forces = reason.state.as_str(),
            message = esc(&reason.message),
            about = if about.is_empty() {
                String::new()
            } else {
                format!(" <span class=\"about\">({})</span>", about.join(", "))
            },
        ));
    }
    format!("<section id=\"reasons\"><h2>Why</h2><ul class=\"reasons\">{items}</ul></section>")
}

/// The version's facts: manifest, publication, keys and digests.
fn facts(view: &VersionView, now: u64) -> String {
    let e = &view.record.event;
    let m = &view.manifest;
    let mut rows = vec![
        ("type", esc(&e.package_type)),
        (
            "description",
            esc(m.description.as_deref().unwrap_or("(none)")),
        ),
        ("license", license(&m.license)),
        (
            "published",
            format!(
                "{} ({}, {})",
                html::time(view.record.time_ms, now),
                entry_link(view.record.index),
                receipt_link(view.record.index)
            ),
        ),
        (
            "visibility",
            if e.private { "private" } else { "public" }.to_string(),
        ),
        (
            "publisher key",
            format!("<code>{}</code>", esc(&e.publisher_key)),
        ),
        ("package root", format!("<code>{}</code>", esc(&e.root))),
        (
            "manifest digest",
            format!("<code>{}</code>", esc(&e.manifest)),
        ),
        ("files", format!("{} ({} bytes)", e.files, e.size)),
    ];
    for (label, list) in [
        ("base models", &m.base_model),
        ("documentation hosts", &m.documentation_hosts),
    ] {
        if !list.is_empty() {
            let codes: Vec<String> = list
                .iter()
                .map(|item| format!("<code>{}</code>", esc(item)))
                .collect();
            rows.push((label, codes.join(" ")));
        }
    }
    let rows: String = rows
        .into_iter()
        .map(|(k, v)| format!("<dt>{k}</dt><dd>{v}</dd>"))
        .collect();
    format!("<section id=\"facts\"><h2>Version</h2><dl>{rows}</dl></section>")
}

/// The eval × model matrix: each cell the latest run, its metrics against their thresholds, its
/// age, data pack and context fingerprint.
fn matrix(view: &VersionView, now: u64) -> String {
    if view.rows.is_empty() {
        return "<section id=\"runs\"><h2>Evals</h2><p>The manifest declares no evals or no compatible models.</p></section>".into();
    }
    let mut models: Vec<&str> = Vec::new();
    let mut evals: Vec<&str> = Vec::new();
    for row in &view.rows {
        if !models.contains(&row.model.as_str()) {
            models.push(&row.model);
        }
        if !evals.contains(&row.eval_id.as_str()) {
            evals.push(&row.eval_id);
        }
    }
    let mut out = String::from(
        "<section id=\"runs\"><h2>Evals × models</h2><table class=\"matrix\"><thead><tr><th>eval</th>",
    );
    for model in &models {
        out.push_str(&format!("<th><code>{}</code></th>", esc(model)));
    }
    out.push_str("</tr></thead><tbody>");
    for eval in &evals {
        out.push_str(&format!(
            "<tr data-eval=\"{}\"><th><code>{}</code>",
            esc(eval),
            esc(eval)
        ));
        out.push_str(&eval_terms(view, eval));
        if let Some((index, terms)) = view
            .rows
            .iter()
            .find(|r| r.eval_id == *eval)
            .and_then(|r| r.preregistration.as_ref())
        {
            out.push_str(&format!(
                "<div class=\"prereg\">pre-registered: {} {} {} ({})</div>",
                esc(terms["metric"].as_str().unwrap_or("")),
                esc(terms["comparator"].as_str().unwrap_or("")),
                esc(&terms["threshold"]
                    .as_str()
                    .map_or_else(|| terms["threshold"].to_string(), str::to_string)),
                entry_link(*index)
            ));
        }
        out.push_str("</th>");
        for model in &models {
            let row = view
                .rows
                .iter()
                .find(|r| r.eval_id == *eval && r.model == *model);
            out.push_str(&cell(view, row.and_then(|r| r.latest.as_ref()), model, now));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></section>");
    out
}

/// What the signed manifest says of an eval: its description, how it is judged, and the
/// thresholds its runs must meet.
fn eval_terms(view: &VersionView, eval: &str) -> String {
    let Some(custodian_core::manifest::EvalSpec::Detailed {
        description,
        rubric,
        thresholds,
        ..
    }) = view.manifest.evals.iter().find(|e| e.id() == eval)
    else {
        return String::new();
    };
    let mut out = String::new();
    if let Some(description) = description {
        out.push_str(&format!(
            "<div class=\"evaldesc\">{}</div>",
            esc(description)
        ));
    }
    if let Some(rubric) = rubric {
        out.push_str(&format!(
            "<div class=\"prereg\">judged by {}</div>",
            esc(rubric)
        ));
    }
    for (metric, threshold) in thresholds {
        let threshold = threshold
            .as_str()
            .map_or_else(|| threshold.to_string(), str::to_string);
        out.push_str(&format!(
            "<div class=\"prereg\">manifest threshold: {} {}</div>",
            esc(metric),
            esc(&threshold)
        ));
    }
    out
}

/// The license: its SPDX expression, and the attribution it requires, if any.
fn license(spec: &custodian_core::manifest::LicenseSpec) -> String {
    let mut out = format!("<code>{}</code>", esc(spec.id()));
    if let custodian_core::manifest::LicenseSpec::Detailed {
        attribution: Some(attribution),
        ..
    } = spec
    {
        out.push_str(&format!("; attribution: {}", esc(attribution)));
    }
    out
}

fn cell(
    view: &VersionView,
    run: Option<&crate::evidence::ReportRun>,
    model: &str,
    now: u64,
) -> String {
    let Some(run) = run else {
        return format!(
            "<td class=\"run missing\" data-model=\"{}\" data-result=\"missing\">no run</td>",
            esc(model)
        );
    };
    let result = if run.passed { "passed" } else { "failed" };
    let mut out = format!(
        "<td class=\"run {result}\" data-model=\"{}\" data-result=\"{result}\" data-entry=\"{}\"><b>{result}</b> {} ({}) · {} ago",
        esc(model),
        run.ledger_index,
        entry_link(run.ledger_index),
        receipt_link(run.ledger_index),
        html::age(now.saturating_sub(run.integrated_ms)),
    );
    if let Some(statement) = view.statements.get(&run.ledger_index) {
        if !statement.metrics.is_empty() {
            out.push_str("<ul class=\"metrics\">");
            for (metric, value) in &statement.metrics {
                out.push_str(&format!(
                    "<li><code>{}</code> {}{}</li>",
                    esc(metric),
                    esc(&value.value.to_string()),
                    value
                        .threshold
                        .as_deref()
                        .map(|t| format!(" (threshold <code>{}</code>)", esc(t)))
                        .unwrap_or_default()
                ));
            }
            out.push_str("</ul>");
        }
        out.push_str(&format!(
            "<div class=\"when\">ran {} to {}</div>",
            esc(&statement.started_at),
            esc(&statement.finished_at)
        ));
    }
    out.push_str(&format!(
        "<div>data pack {}</div><div>context {}</div><div>runner <code>{}</code></div></td>",
        run.data_pack_sha256
            .as_deref()
            .map(digest)
            .unwrap_or_else(|| "(none)".into()),
        digest(&run.context_sha256),
        esc(&run.runner),
    ));
    out
}

/// Every scan, by scanner, with its findings.
fn scans(view: &VersionView, now: u64) -> String {
    if view.scans.is_empty() {
        return "<section id=\"scans\"><h2>Scans</h2><p>No scan is recorded.</p></section>".into();
    }
    let mut out = String::from(
        "<section id=\"scans\"><h2>Scans</h2><table><thead><tr><th>scanner</th><th>of</th><th>verdict</th>\
         <th>when</th><th>findings</th></tr></thead><tbody>",
    );
    for scan in &view.scans {
        let event = &scan.event;
        out.push_str(&format!(
            "<tr class=\"scan\" data-scanner=\"{}\" data-verdict=\"{}\"><td><code>{}</code></td><td>{}</td><td class=\"verdict {}\">{}</td><td>{} ({}, {})</td><td>{}</td></tr>",
            esc(&event.scanner),
            esc(&event.verdict),
            esc(&event.scanner),
            if event.target.is_some() { "data pack" } else { "files" },
            esc(&event.verdict),
            esc(&event.verdict),
            html::time(scan.time_ms, now),
            entry_link(scan.index),
            receipt_link(scan.index),
            findings(&event.findings),
        ));
    }
    out.push_str("</tbody></table></section>");
    out
}

/// A scan's findings: a list when they are the usual JSON array of objects, the text otherwise.
fn findings(text: &str) -> String {
    let items = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Array(items)) => items,
        _ if text.trim().is_empty() => return "none".into(),
        _ => return format!("<pre>{}</pre>", esc(text)),
    };
    if items.is_empty() {
        return "none".into();
    }
    let mut out = String::from("<ul class=\"findings\">");
    for item in &items {
        let field = |key: &str| match &item[key] {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
        match item {
            serde_json::Value::Object(_) => {
                let place = match (field("file"), field("line").or_else(|| field("offset"))) {
                    (Some(file), Some(at)) => format!("<code>{}</code>:{}", esc(&file), esc(&at)),
                    (Some(file), None) => format!("<code>{}</code>", esc(&file)),
                    _ => String::new(),
                };
                out.push_str(&format!(
                    "<li><span class=\"severity\">{}</span> <code>{}</code> {} {}</li>",
                    esc(&field("severity").unwrap_or_default()),
                    esc(&field("rule").unwrap_or_default()),
                    place,
                    esc(&field("message").unwrap_or_default()),
                ));
            }
            other => out.push_str(&format!("<li>{}</li>", esc(&other.to_string()))),
        }
    }
    out.push_str("</ul>");
    out
}

/// The data pack, as the trust view (`GET …/data-pack`) shows it.
fn data_pack(state: &RestState, view: &VersionView) -> String {
    let Some(pack) = view.record.data_pack.as_ref() else {
        return "<section id=\"data-pack\"><h2>Data pack</h2><p>None is registered.</p></section>"
            .into();
    };
    let json = data_pack_json(&state.registry, pack);
    let mut rows = String::new();
    if let serde_json::Value::Object(fields) = &json {
        for (key, value) in fields {
            let shown = match value {
                serde_json::Value::String(s) if key == "download" => {
                    format!("<a href=\"{}\">download</a>", esc(s))
                }
                serde_json::Value::String(s) if s.contains("://") => external(s),
                serde_json::Value::String(s) => esc(s),
                other => format!("<code>{}</code>", esc(&other.to_string())),
            };
            rows.push_str(&format!("<dt>{}</dt><dd>{shown}</dd>", esc(key)));
        }
    }
    format!(
        "<section id=\"data-pack\"><h2>Data pack</h2><dl>{rows}</dl><p>{} · {}</p></section>",
        internal(
            &["log", "entries", &pack.index.to_string()],
            "registration entry"
        ),
        receipt_link(pack.index)
    )
}

/// The files with their digests, each downloadable.
fn files(view: &VersionView) -> String {
    let mut rows = String::new();
    for file in &view.record.files {
        let sha256 = file.sha256.to_string();
        rows.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&file.path),
            file.size,
            digest(&sha256),
            internal(&["blobs", &sha256], "download"),
        ));
    }
    format!(
        "<section id=\"files\"><h2>Files</h2><table><thead><tr><th>path</th><th>bytes</th><th>sha256</th><th></th></tr></thead><tbody>{rows}</tbody></table></section>"
    )
}

/// The badge bundle and receipts to download, and the commands that check them offline.
fn verify(view: &VersionView) -> String {
    let e = &view.record.event;
    let evidence = format!(
        "{}/evidence",
        path(&["wrappers", &e.name, "versions", &e.version])
    );
    let spec = format!("{}@{}", e.name, e.version);
    format!(
        "<section id=\"verify\"><h2>Verify it yourself</h2>\
         <p><a href=\"{evidence}\">Download the badge bundle</a> (every entry the badge rests on, \
         with its inclusion proof and the signed checkpoint) and the log's public key from the \
         registry's operator, then, with no server and no network:</p>\
         <pre>custodian verify bundle.json --key log.vkey</pre>\
         <p>Or fetch it with the CLI: <code>custodian badge {spec} -o bundle.json</code>. Each \
         entry's receipt (the publication's: {}) verifies the same way:</p>\
         <pre>custodian log verify-receipt receipt.json --key log.vkey</pre></section>",
        receipt_link(view.record.index),
        evidence = esc(&evidence),
        spec = esc(&spec),
    )
}
