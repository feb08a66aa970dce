//! A store's views: a page of entries gathered from every partition's owner, an index
//! query, a key lookup, and a key's page (snapshot, version, event history, a command
//! form with the expected version filled in).

use super::commands::command_form;
use super::html::{esc, json_block, notice, table, truncate, url, Tab};
use super::Ui;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write;

/// Entries per page of a store.
const PAGE: usize = 20;

/// What an entry shows of itself: an aggregate's state, a table's value, else all of it.
fn shown(entry: &Value) -> &Value {
    entry.get("state").or_else(|| entry.get("value")).unwrap_or(entry)
}

/// The aggregate whose snapshots a store holds, if any.
fn aggregate_of(ui: &Ui, store: &str) -> Option<String> {
    ui.console.topology.aggregates.values().find(|a| a.store.name == store).map(|a| a.aggregate.clone())
}

pub(super) async fn store(State(ui): State<Ui>, Path(store): Path<String>, Query(q): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    let Some(view) = ui.ctx.catalog.view(&store) else {
        return ui.not_found(&format!("no store {store:?} here"));
    };
    let mut body = format!("<h1>Store {}</h1>", esc(&store));
    let _ = write!(
        body,
        r#"<form class="inline" method="get" action="/ui/stores/{s}/lookup"><label>Key <input name="key" required></label><button>Look up</button></form>"#,
        s = url(&store)
    );
    let field = q.get("field").filter(|f| !f.is_empty());
    // An index query: its field and the value asked for.
    let index = field.zip(q.get("value"));
    if !view.indexes.is_empty() {
        let options: String = view
            .indexes
            .iter()
            .map(|f| format!(r#"<option{}>{}</option>"#, if field == Some(f) { " selected" } else { "" }, esc(f)))
            .collect();
        let _ = write!(
            body,
            r#"<form class="inline" method="get" action="/ui/stores/{s}"><label>Index <select name="field">{options}</select></label><label>equals <input name="value" value="{v}" required></label><button>Query</button></form>"#,
            s = url(&store),
            v = esc(q.get("value").map_or("", String::as_str)),
        );
    }
    let mut path = match index {
        Some((f, v)) => format!("/stores/{}/index/{}/{}?limit={PAGE}", url(&store), url(f), url(v)),
        _ => format!("/stores/{}?limit={PAGE}", url(&store)),
    };
    if let Some(after) = q.get("after") {
        let _ = write!(path, "&after={}", url(after));
    }
    let answer = ui.get(&path, &headers).await;
    if !answer.status.is_success() {
        body.push_str(&notice("bad", &format!("{}: {}", answer.status, answer.error())));
        return ui.page(&store, Tab::Stores, &body);
    }
    let entries = answer.body["entries"].as_array().cloned().unwrap_or_default();
    if let Some((f, v)) = index {
        let _ = write!(body, "<h2>{} = {}</h2>", esc(f), esc(v));
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let mut rest = e.clone();
            if let Some(m) = rest.as_object_mut() {
                m.remove("key");
            }
            let version = rest.get("version").map_or(String::new(), ToString::to_string);
            vec![
                format!(r#"<a href="/ui/stores/{}/keys/{}">{}</a>"#, url(&store), url(key), esc(key)),
                version,
                format!("<code>{}</code>", esc(&truncate(&shown(&rest).to_string(), 160))),
            ]
        })
        .collect();
    body.push_str(&table("entries", &["key", "version", "value"], &rows));
    let covered = answer.body["partitions"].as_array().map_or(0, Vec::len);
    let total = answer.body["total_partitions"].as_i64().unwrap_or(0);
    if (covered as i64) < total {
        body.push_str(&notice("warn", &format!("{covered} of {total} partitions answered; the others are moving")));
    }
    if let Some(next) = answer.body["next"].as_str() {
        let mut link = format!("/ui/stores/{}?after={}", url(&store), url(next));
        if let Some((f, v)) = index {
            let _ = write!(link, "&field={}&value={}", url(f), url(v));
        }
        let _ = write!(body, r#"<p><a class="next" href="{}">Next page</a></p>"#, esc(&link));
    }
    ui.page(&store, Tab::Stores, &body)
}

pub(super) async fn lookup(Path(store): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    let key = q.get("key").map_or("", String::as_str);
    Redirect::to(&format!("/ui/stores/{}/keys/{}", url(&store), url(key))).into_response()
}

pub(super) async fn key(State(ui): State<Ui>, Path((store, key)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let mut body = format!(
        r#"<h1>{} <small>in store <a href="/ui/stores/{}">{}</a></small></h1>"#,
        esc(&key),
        url(&store),
        esc(&store)
    );
    let answer = ui.get(&format!("/stores/{}/keys/{}", url(&store), url(&key)), &headers).await;
    let version = answer.body["version"].as_u64();
    match answer.status {
        s if s.is_success() => {
            if let Some(v) = version {
                let _ = write!(body, r#"<p class="version">version <b id="version">{v}</b></p>"#);
            }
            body.push_str(&json_block(shown(&answer.body)));
        }
        StatusCode::NOT_FOUND => body.push_str(&notice("warn", &answer.error())),
        _ => body.push_str(&notice("bad", &format!("{}: {}", answer.status, answer.error()))),
    }
    if let Some(aggregate) = aggregate_of(&ui, &store) {
        let history = ui.get(&format!("/aggregates/{}/{}/events?limit=100", url(&aggregate), url(&key)), &headers).await;
        body.push_str("<h2>History</h2>");
        match history.body["events"].as_array() {
            Some(events) if history.status.is_success() && !events.is_empty() => {
                body.push_str(r#"<ol class="timeline">"#);
                for e in events {
                    let _ = write!(
                        body,
                        r#"<li><span class="v">v{}</span> <b>{}</b>{}</li>"#,
                        e["version"],
                        esc(e["type"].as_str().unwrap_or("?")),
                        json_block(e.get("payload").unwrap_or(&Value::Null))
                    );
                }
                body.push_str("</ol>");
            }
            Some(_) if history.status.is_success() => body.push_str(&notice("warn", "no events")),
            _ => body.push_str(&notice("warn", &format!("history: {}", history.error()))),
        }
        body.push_str(&command_form(&aggregate, &key, &version.unwrap_or(0).to_string(), "", "{}"));
    }
    ui.page(&key, Tab::Stores, &body)
}
