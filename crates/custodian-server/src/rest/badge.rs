//! The badge as a shields-style SVG for READMEs.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiResult;
use super::{RestState, principal};

/// A shields-style badge: "custodian | green", "custodian | review", "custodian | failing";
/// with `link` (a path of this server), the badge is a link to it.
pub(super) fn badge_svg(state: custodian_core::badge::State, link: Option<&str>) -> String {
    let (text, color) = match state {
        custodian_core::badge::State::Green => ("green", "#4c1"),
        custodian_core::badge::State::Review => ("review", "#dfb317"),
        custodian_core::badge::State::Failing => ("failing", "#e05d44"),
    };
    let (label_w, value_w) = (70, 8 + 7 * text.len() as u32);
    let width = label_w + value_w;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" aria-label="custodian: {text}"><title>custodian: {text}</title>{open}<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient><clipPath id="r"><rect width="{width}" height="20" rx="3" fill="#fff"/></clipPath><g clip-path="url(#r)"><rect width="{label_w}" height="20" fill="#555"/><rect x="{label_w}" width="{value_w}" height="20" fill="{color}"/><rect width="{width}" height="20" fill="url(#s)"/></g><g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11"><text x="{lx}" y="14">custodian</text><text x="{vx}" y="14">{text}</text></g>{close}</svg>"##,
        lx = label_w / 2,
        vx = label_w + value_w / 2,
        // The link is a path this server built from percent-encoded segments, escaped again
        // for the attribute.
        open = link
            .map(|l| format!(r#"<a href="{}">"#, super::pages::html::esc(l)))
            .unwrap_or_default(),
        close = if link.is_some() { "</a>" } else { "" },
    )
}

pub(super) async fn get_badge_svg(
    State(state): State<RestState>,
    Path((id, vid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers)?;
    let (badge, _) = state.registry.badge(&who, &id, &vid).await?;
    let page = super::pages::version_path(&badge.name, &badge.version);
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-cache"),
            // Opened on its own, the badge is a document: it runs nothing and loads nothing.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        badge_svg(badge.state, Some(&page)),
    )
        .into_response())
}
