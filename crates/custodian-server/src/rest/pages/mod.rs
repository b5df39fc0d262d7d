//! Server-rendered pages for people, on the REST port, beside the JSON API they mirror:
//!
//! - `GET /packages?q=` — every package the caller may see, searchable by name
//! - `GET /packages/{name}` — one package: its versions, yanks and pinned publisher key
//! - `GET /packages/{name}/{version}` — one version: the badge and every reason, the eval ×
//!   model matrix, scans with findings, the data pack, the files, and how to verify it offline
//! - `GET /log?from=` — the latest checkpoint and the entries, decoded, with inclusion proofs
//! - `GET /log/entries/{index}` — one entry; `…/receipt` its receipt as a file
//! - `GET|POST /login`, `POST /logout` — keep an API token in a cookie for these pages
//!
//! Pages answer private content exactly as the APIs do (the same status and message as a name
//! that never existed) and with the same tokens: the `Authorization` header, or the cookie
//! `/login` sets from one (read on GET and HEAD only, so a cookie never authorizes a write).
//! Everything a package brought is escaped (see `html`); every page carries a Content Security
//! Policy that allows no script at all, and `X-Content-Type-Options: nosniff`.

use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::error::ApiError;
use super::{RestState, principal};
use crate::auth::Principal;

pub(super) mod html;
mod log;
mod version;

pub(super) use log::receipt;

use html::{esc, internal, layout, path};

/// The cookie `/login` keeps a token in.
pub(super) const TOKEN_COOKIE: &str = "custodian_token";

/// The policy every page is served under: nothing but this server's stylesheet and images, no
/// script of any kind, no framing, forms only to this server.
pub(super) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLESHEET: &str = include_str!("pages.css");

/// The pages' icon (a browser asks for one; without it, every page logs a failed request).
const ICON: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#20303c"/><path d="M4 8.5l2.5 2.5L12 5" stroke="#4c1" stroke-width="2" fill="none"/></svg>"##;

/// The pages' routes (merged into the REST router).
pub(super) fn router() -> Router<RestState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/packages") }))
        .route("/packages", get(packages))
        .route("/packages/{name}", get(package))
        .route("/packages/{name}/{version}", get(version::page))
        .route("/log", get(log::page))
        .route("/log/entries/{index}", get(log::entry))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route(
            "/assets/icon.svg",
            get(|| async { ([(header::CONTENT_TYPE, "image/svg+xml")], ICON) }),
        )
        .route(
            "/assets/pages.css",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    STYLESHEET,
                )
            }),
        )
        .layer(axum::middleware::map_response(secure))
}

/// Adds the pages' security headers to every answer of theirs, errors included.
async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Lets the token cookie stand for an `Authorization` header on reads (GET and HEAD) that
/// carry none, across the REST port: a page's download links then work as the page does. A
/// write is never authorized by a cookie, so another site cannot make a browser write.
pub(super) async fn cookie_reads(mut request: Request, next: Next) -> Response {
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    if read
        && !request.headers().contains_key(header::AUTHORIZATION)
        && let Some(token) = cookie(request.headers(), TOKEN_COOKIE)
        && let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}"))
    {
        request.headers_mut().insert(header::AUTHORIZATION, value);
    }
    next.run(request).await
}

/// The value of cookie `name`, if the request carries it.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
        .filter(|value| !value.is_empty())
}

/// The path of a version's page.
pub(super) fn version_path(name: &str, version: &str) -> String {
    path(&["packages", name, version])
}

/// A page, or an error page: HTML either way.
pub(super) type PageResult = Result<Response, PageError>;

/// An error shown as a page, with the status and the message the JSON API would give.
pub(super) struct PageError(ApiError);

impl<E: Into<ApiError>> From<E> for PageError {
    fn from(err: E) -> Self {
        PageError(err.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status;
        let title = status.canonical_reason().unwrap_or("Refused");
        let mut body = format!(
            "<h1>{}</h1><p class=\"error\">{}</p>",
            esc(title),
            esc(self.0.message())
        );
        if status == StatusCode::UNAUTHORIZED {
            // A token revoked since it was kept in the cookie: let the browser forget it.
            body.push_str(
                "<form method=\"post\" action=\"/logout\"><button>forget the token this browser keeps</button></form> \
                 <a href=\"/login\">sign in with another</a>",
            );
        }
        // The header is the anonymous one: an error page says nothing of who asked.
        html(status, &layout(title, "anonymous", &body))
    }
}

/// An HTML answer.
pub(super) fn html(status: StatusCode, page: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page.to_string(),
    )
        .into_response()
}

/// Who is asking: the `Authorization` header (or the cookie, put there by [`cookie_reads`]).
pub(super) fn who(state: &RestState, headers: &HeaderMap) -> Result<Principal, PageError> {
    Ok(principal(state, headers)?)
}

#[derive(Deserialize)]
struct Search {
    #[serde(default)]
    q: String,
}

async fn packages(
    State(state): State<RestState>,
    headers: HeaderMap,
    Query(search): Query<Search>,
) -> PageResult {
    let who = who(&state, &headers)?;
    let found = state.registry.package_summaries(&who, search.q.trim());
    let now = crate::sequencer::now_ms();
    let mut rows = String::new();
    for summary in &found {
        let e = &summary.latest.event;
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            internal(&["packages", &summary.name], &summary.name),
            internal(&["packages", &summary.name, &e.version], &e.version),
            esc(&e.package_type),
            summary.versions,
            html::time(summary.latest.time_ms, now),
        ));
    }
    let table = if found.is_empty() {
        "<p>No package matches.</p>".to_string()
    } else {
        format!(
            "<table><thead><tr><th>package</th><th>latest</th><th>type</th><th>versions</th>\
             <th>published</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    };
    let body = format!(
        "<h1>Packages</h1><form method=\"get\" action=\"/packages\" role=\"search\">\
         <input type=\"search\" name=\"q\" value=\"{}\" placeholder=\"name contains…\" aria-label=\"search by name\">\
         <button>search</button></form><p class=\"count\">{} found</p>{table}",
        esc(&search.q),
        found.len()
    );
    Ok(html(
        StatusCode::OK,
        &layout("Packages", &who.label(), &body),
    ))
}

async fn package(
    State(state): State<RestState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> PageResult {
    let who = who(&state, &headers)?;
    let versions = state.registry.list(&who, &name)?;
    let key = state
        .registry
        .pinned_publisher_key(&who, &name)
        .unwrap_or_default();
    let now = crate::sequencer::now_ms();
    let mut rows = String::new();
    for record in versions.iter().rev() {
        let e = &record.event;
        let yank = match &record.yanked {
            Some(y) => format!(
                "<span class=\"yanked\">yanked</span> {} ({})",
                esc(&y.reason),
                internal(
                    &["log", "entries", &y.index.to_string()],
                    &format!("entry {}", y.index)
                )
            ),
            None => String::new(),
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            internal(&["packages", &name, &e.version], &e.version),
            html::time(record.time_ms, now),
            if e.private { "private" } else { "public" },
            esc(&state.registry.scan_status(&e.name, &e.version, &e.root)),
            yank,
        ));
    }
    let body = format!(
        "<h1 class=\"name\">{}</h1><dl><dt>publisher key</dt><dd><code>{}</code></dd>\
         <dt>versions</dt><dd>{}</dd><dt>JSON</dt><dd><a href=\"{}/versions\">{}/versions</a></dd></dl>\
         <table><thead><tr><th>version</th><th>published</th><th>visibility</th><th>scan</th>\
         <th>yank</th></tr></thead><tbody>{rows}</tbody></table>",
        esc(&name),
        esc(&key),
        versions.len(),
        path(&["wrappers", &name]),
        esc(&path(&["wrappers", &name])),
    );
    Ok(html(StatusCode::OK, &layout(&name, &who.label(), &body)))
}

async fn login_form(State(state): State<RestState>, headers: HeaderMap) -> PageResult {
    // The form must show even when the kept token no longer works: it is how to replace it.
    let who = who(&state, &headers).map_or_else(|_| "anonymous".to_string(), |w| w.label());
    Ok(html(StatusCode::OK, &layout("Sign in", &who, LOGIN_FORM)))
}

const LOGIN_FORM: &str = "<h1>Sign in</h1><p>Paste an API token (<code>custodian token create</code> makes one). \
     It is kept in a cookie this browser sends only to this server, and only on reads: pages \
     then show what the token may read, as the APIs do.</p>\
     <form method=\"post\" action=\"/login\"><input type=\"password\" name=\"token\" \
     autocomplete=\"off\" aria-label=\"API token\" required> <button>sign in</button></form>";

#[derive(Deserialize)]
struct Login {
    token: String,
}

async fn login(State(state): State<RestState>, Form(form): Form<Login>) -> PageResult {
    let token = form.token.trim();
    // Only a token the daemon accepts is kept; a cookie value cannot hold separators.
    let valid = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',');
    let who = if valid {
        state
            .auth
            .authenticate(Some(&format!("Bearer {token}")))
            .ok()
    } else {
        None
    };
    let Some(who) = who.filter(|w| !matches!(w, Principal::Anonymous)) else {
        let body = format!(
            "<p class=\"error\">That token is not one this daemon accepts.</p>{LOGIN_FORM}"
        );
        return Ok(html(
            StatusCode::UNAUTHORIZED,
            &layout("Sign in", "anonymous", &body),
        ));
    };
    tracing::info!(who = %who.label(), "signed in to the pages");
    Ok((
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"),
            ),
            (header::LOCATION, "/packages".to_string()),
        ],
    )
        .into_response())
}

async fn logout() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!("{TOKEN_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
            ),
            (header::LOCATION, "/packages".to_string()),
        ],
    )
        .into_response()
}
