//! The console's HTML: escaping, the page frame every view shares, and small builders.
//! Pages are rendered here on the server, so every read-only view works without
//! JavaScript; the script only refreshes the live parts.

use std::fmt::Write;

/// Text made safe for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment or query value, percent-encoded.
pub fn url(s: &str) -> String {
    crate::query::forward::encode_segment(s)
}

/// Which tab of the navigation a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Overview,
    Stores,
    Commands,
    DeadLetters,
}

/// The frame around a view: title, navigation, this instance's name, the view's body.
pub fn page(title: &str, tab: Tab, instance: &str, stores: &[String], body: &str) -> String {
    let mut nav = String::new();
    let link = |nav: &mut String, href: &str, label: &str, on: bool| {
        let _ = write!(nav, r#"<a href="{href}"{}>{}</a>"#, if on { r#" class="on""# } else { "" }, esc(label));
    };
    link(&mut nav, "/ui", "Overview", tab == Tab::Overview);
    for s in stores {
        link(&mut nav, &format!("/ui/stores/{}", url(s)), &format!("Store {s}"), tab == Tab::Stores);
    }
    link(&mut nav, "/ui/commands", "Commands", tab == Tab::Commands);
    link(&mut nav, "/ui/dead-letters", "Dead letters", tab == Tab::DeadLetters);
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · millrace</title><link rel="stylesheet" href="/ui/console.css"><link rel="icon" href="data:,">
</head><body><header><span class="brand">millrace</span><nav>{nav}</nav><span class="me">instance <b id="me">{instance}</b></span></header>
<main>{body}</main><script src="/ui/console.js" defer></script></body></html>"#,
        title = esc(title),
        instance = esc(instance),
    )
}

/// HTML as an answer, never cached (the figures in it are live).
pub fn response(html: String) -> axum::response::Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], html).into_response()
}

/// A table with a header row; cells are HTML already.
pub fn table(class: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!(r#"<table class="{class}"><thead><tr>"#);
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A JSON value shown as indented text.
pub fn json_block(v: &serde_json::Value) -> String {
    format!("<pre class=\"json\">{}</pre>", esc(&serde_json::to_string_pretty(v).unwrap_or_default()))
}

/// A notice in one of the states the page shows plainly: `ok`, `warn`, `bad`.
pub fn notice(kind: &str, text: &str) -> String {
    format!(r#"<p class="notice {kind}">{}</p>"#, esc(text))
}

/// A unix time in milliseconds as UTC `HH:MM:SS`.
pub fn clock(ms: i64) -> String {
    let s = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// A state shown as a coloured word: `ok`, `warn`, `bad`.
pub fn badge(kind: &str, text: &str) -> String {
    format!(r#"<span class="badge {kind}">{}</span>"#, esc(text))
}

/// At most `max` characters, with an ellipsis when cut.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

pub fn with_status(status: axum::http::StatusCode, mut r: axum::response::Response) -> axum::response::Response {
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(esc(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn a_page_escapes_what_it_is_given() {
        let p = page("<t>", Tab::Stores, "i<0>", &["s\"1".into()], "<p>body</p>");
        assert!(p.contains("<title>&lt;t&gt; · millrace</title>"));
        assert!(p.contains("instance <b id=\"me\">i&lt;0&gt;</b>"));
        assert!(p.contains("/ui/stores/s%221"));
        assert!(p.contains("<p>body</p>"));
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("ab€cd", 3), "ab€…");
        assert_eq!(truncate("abc", 3), "abc");
    }

    #[test]
    fn clock_renders_utc() {
        assert_eq!(clock(0), "00:00:00");
        assert_eq!(clock((13 * 3600 + 7 * 60 + 9) * 1000 + 999), "13:07:09");
    }
}
