//! The pages' HTML building blocks. Every text that reaches a page goes through [`esc`], and
//! every link through [`internal`] (a path this server builds from escaped segments) or
//! [`external`] (http and https only), so nothing a package author wrote can become markup, an
//! attribute or a script URL.

use std::fmt::Write as _;

use super::super::encode_segment;

/// Escapes text for an HTML element body or a quoted attribute value. Characters that would let
/// text pose as other text (bidirectional overrides and isolates, zero-width characters, other
/// control characters) are shown as their code point, `⟨U+202E⟩`, instead of acting.
pub(in crate::rest) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if deceptive(c) => {
                let _ = write!(out, "⟨U+{:04X}⟩", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Characters that change how surrounding text is displayed rather than showing themselves.
fn deceptive(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// A link to a page or file of this server, its path built from `segments`, each
/// percent-encoded, and an optional query; the link text is escaped.
pub(super) fn internal(segments: &[&str], text: &str) -> String {
    format!("<a href=\"{}\">{}</a>", path(segments), esc(text))
}

/// The path of a page or file of this server from its segments, each percent-encoded.
pub(super) fn path(segments: &[&str]) -> String {
    let mut out = String::new();
    for segment in segments {
        out.push('/');
        out.push_str(&encode_segment(segment));
    }
    out
}

/// A link to a URL a package author gave, only when it is an http or https URL; anything else
/// (`javascript:`, `data:`, relative paths) is shown as text and not linked.
pub(super) fn external(url: &str) -> String {
    // The text must say what the link does: a lenient parse would turn `http:/x` into
    // `http://x/`, so only text that is already written as an absolute http(s) URL is linked.
    let written = ["http://", "https://"].iter().any(|scheme| {
        url.get(..scheme.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(scheme))
    });
    match url::Url::parse(url) {
        Ok(parsed)
            if written
                && matches!(parsed.scheme(), "http" | "https")
                && parsed.host().is_some() =>
        {
            format!(
                "<a href=\"{}\" rel=\"nofollow noopener noreferrer\">{}</a>",
                esc(parsed.as_str()),
                esc(url)
            )
        }
        _ => format!("<code>{}</code>", esc(url)),
    }
}

/// A digest shortened for a table, the full value in its title.
pub(super) fn digest(text: &str) -> String {
    let short: String = match text.split_once(':') {
        Some((algorithm, hex)) => format!("{algorithm}:{}…", &hex[..hex.len().min(12)]),
        None => text.chars().take(16).collect(),
    };
    format!(
        "<code class=\"digest\" title=\"{}\">{}</code>",
        esc(text),
        esc(&short)
    )
}

/// A time as RFC 3339, with how long ago it was (from `now_ms`) in its title.
pub(super) fn time(ms: u64, now_ms: u64) -> String {
    format!(
        "<time title=\"{} ago\">{}</time>",
        age(now_ms.saturating_sub(ms)),
        crate::rest::views::rfc3339(ms)
    )
}

/// A duration in the largest whole units that say it: `3d 4h`, `12m`, `40s`.
pub(super) fn age(ms: u64) -> String {
    let secs = ms / 1000;
    let (d, h, m) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// A whole page: the shared header (with who is signed in), the title and the body. Nothing in
/// it runs script; the stylesheet is a file of this server.
pub(super) fn layout(title: &str, who: &str, body: &str) -> String {
    let session = if who == "anonymous" {
        "<a href=\"/login\">sign in with a token</a>".to_string()
    } else {
        format!(
            "signed in as <b>{}</b> <form method=\"post\" action=\"/logout\"><button>sign out</button></form>",
            esc(who)
        )
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Custodian</title><link rel=\"stylesheet\" href=\"/assets/pages.css\">\
         <link rel=\"icon\" type=\"image/svg+xml\" href=\"/assets/icon.svg\"></head>\
         <body><header><a class=\"home\" href=\"/packages\">Custodian</a>\
         <nav><a href=\"/packages\">packages</a> <a href=\"/log\">log</a></nav>\
         <span class=\"session\">{session}</span></header><main>{body}</main>\
         <footer>Every fact on this page comes from the signed ledger; \
         <code>custodian verify</code> checks it offline.</footer></body></html>\n",
        title = esc(title),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_text_is_inert() {
        assert_eq!(
            esc(r#"<script>alert("x")</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
        );
        assert_eq!(esc("a' onmouseover='x"), "a&#39; onmouseover=&#39;x");
        assert_eq!(esc("&amp;"), "&amp;amp;");
    }

    #[test]
    fn text_that_acts_on_other_text_is_shown_as_code_points() {
        assert_eq!(esc("evil\u{202E}gpj.exe"), "evil⟨U+202E⟩gpj.exe");
        assert_eq!(esc("a\u{200B}b\u{0007}"), "a⟨U+200B⟩b⟨U+0007⟩");
        assert_eq!(esc("naïve 名前"), "naïve 名前");
    }

    #[test]
    fn only_http_urls_become_links() {
        assert!(
            external("https://example.com/x?a=1&b=2")
                .starts_with("<a href=\"https://example.com/x?a=1&amp;b=2\"")
        );
        for hostile in [
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            " javascript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "vbscript:x",
            "//evil.example/x",
            "/relative",
            "http:/x",
        ] {
            let html = external(hostile);
            assert!(!html.contains("<a "), "{hostile:?} became a link: {html}");
            assert!(!html.contains("<script"), "{hostile:?}: {html}");
        }
        // A URL that parses is linked in its normalized form, which cannot break the quotes.
        let html = external("https://example.com/\"><script>alert(1)</script>");
        assert!(!html.contains("<script"), "{html}");
    }

    #[test]
    fn internal_paths_encode_every_segment() {
        assert_eq!(
            path(&["packages", "@acme/bot", "1.0.0"]),
            "/packages/%40acme%2Fbot/1.0.0"
        );
        assert_eq!(
            internal(&["packages", "a\"b"], "<x>"),
            "<a href=\"/packages/a%22b\">&lt;x&gt;</a>"
        );
    }
}
