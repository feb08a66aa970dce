//! The console's views. Each renders whole HTML on the server from API answers; the
//! overview's live part is also served alone (`/ui/live`) for the script to refresh.

use super::feed::{gather, InstanceFeed, Seen};
use super::html::{self, esc, json_block, notice, table, url, Tab};
use super::{dead_letters, graph, Ui, TOKEN_COOKIE};
use crate::runtime::partition_gauges::{CONSUMER_LAG, RESTORE_REMAINING, STANDBY_LAG, STORE_KEYS};
use crate::topology::describe::subs;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::time::Duration;

/// Input lag above which a partition, and its owner, count as behind.
const BEHIND: f64 = 1000.0;
/// Entries per page of a store.
const PAGE: usize = 20;
/// Seconds the commit chart covers.
const CHART_SECONDS: u64 = 300;

pub(super) async fn overview(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let live = live_html(&ui, &headers).await;
    let body = format!(r#"<h1>{}</h1><div id="live" data-refresh="/ui/live">{live}</div>"#, esc(&ui.console.topology.application_id));
    ui.page("Overview", Tab::Overview, &body)
}

pub(super) async fn live(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let live = live_html(&ui, &headers).await;
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], live).into_response()
}

/// The topology with rates, the instances, every store partition, commits, rebalances.
async fn live_html(ui: &Ui, headers: &HeaderMap) -> String {
    let seen = gather(ui, headers).await;
    let feeds: Vec<&InstanceFeed> = seen.iter().filter_map(|s| s.feed.as_ref().ok()).collect();
    let t = &ui.console.topology;
    // A node's rate is its input topic's, summed over the instances.
    let mut topic_rates: BTreeMap<&str, f64> = BTreeMap::new();
    for f in &feeds {
        for (topic, r) in &f.rates {
            *topic_rates.entry(topic.as_str()).or_default() += r;
        }
    }
    let sub_topologies = subs(t);
    // With no instance answering, no rate is known: the graph shows none rather than 0.
    let node_rates: BTreeMap<String, f64> = if feeds.is_empty() {
        BTreeMap::new()
    } else {
        sub_topologies.iter().map(|s| (s.node.clone(), topic_rates.get(s.source.as_str()).copied().unwrap_or(0.0))).collect()
    };
    let store_source: BTreeMap<String, String> =
        sub_topologies.iter().filter_map(|s| Some((s.store.as_ref()?.0.clone(), s.source.clone()))).collect();

    let mut out = String::new();
    let _ = write!(out, "<section><h2>Topology</h2>{}</section>", graph::svg(t, &node_rates));
    out.push_str(&instances_html(&seen, &store_source));
    out.push_str(&partitions_html(ui, &feeds, &store_source));
    out.push_str(&commits_html(&feeds));
    out.push_str(&rebalances_html(&feeds));
    out
}

fn instances_html(seen: &[Seen], store_source: &BTreeMap<String, String>) -> String {
    let rows: Vec<Vec<String>> = seen
        .iter()
        .map(|s| match &s.feed {
            Err(why) => vec![esc(&s.instance), esc(&s.http), badge("bad", "unreachable"), esc(why), String::new(), String::new()],
            Ok(f) => {
                let held: usize = f.owned.iter().filter(|(store, _)| store_source.contains_key(*store)).map(|(_, p)| p.len()).sum();
                // Folded from +0: an empty f64 sum is -0, which prints as "-0".
                let total = |name: &str| f.gauges.iter().filter(|g| g.name == name).fold(0.0, |sum, g| sum + g.value);
                let (lag, restoring) = (total(CONSUMER_LAG), total(RESTORE_REMAINING));
                let state = if let Some(why) = &f.failure {
                    badge("bad", &format!("failed: {why}"))
                } else if restoring > 0.0 {
                    badge("warn", "restoring")
                } else if !f.ready {
                    badge("warn", "not ready")
                } else if lag > BEHIND {
                    badge("warn", "behind")
                } else {
                    badge("ok", "ready")
                };
                let commits: u32 = f.commits.iter().rev().take(60).map(|c| c.commits).sum();
                vec![esc(&f.instance), esc(&f.http), state, held.to_string(), format!("{lag:.0}"), format!("{commits} in the last minute")]
            }
        })
        .collect();
    format!(
        r#"<section><h2>Cluster</h2>{}</section>"#,
        table("instances", &["instance", "http", "state", "partitions held", "input lag", "commits"], &rows)
    )
}

/// Every partition of every store: owner, standbys, and the state it is in.
fn partitions_html(ui: &Ui, feeds: &[&InstanceFeed], store_source: &BTreeMap<String, String>) -> String {
    let Some(directory) = &ui.ctx.directory else { return String::new() };
    let feed_of = |instance: &str| feeds.iter().find(|f| f.instance == instance).copied();
    let mut rows = Vec::new();
    for (store, parts) in directory.table() {
        let Some(source) = store_source.get(&store) else { continue };
        for (p, (owner, standbys)) in parts {
            let owner_feed = owner.as_ref().and_then(|o| feed_of(&o.instance));
            let gauge = |name: &str, scope: &str| owner_feed.and_then(|f| f.gauge(name, scope, p));
            let lag = gauge(CONSUMER_LAG, source);
            let remaining = gauge(RESTORE_REMAINING, &store);
            let state = match (&owner, owner_feed) {
                (None, _) => badge("bad", "moving"),
                (Some(_), None) => badge("bad", "owner unreachable"),
                (Some(_), Some(f)) if remaining.is_some_and(|r| r > 0.0) || !f.ready => badge("warn", "restoring"),
                (Some(_), Some(_)) if lag.is_some_and(|l| l > BEHIND) => badge("warn", "behind"),
                _ => badge("ok", "ok"),
            };
            let standby_text: Vec<String> = standbys
                .iter()
                .map(|s| {
                    let lag = feed_of(&s.instance).and_then(|f| f.gauge(STANDBY_LAG, &store, p));
                    format!("{}{}", esc(&s.instance), lag.map_or(String::new(), |l| format!(" (lag {l:.0})")))
                })
                .collect();
            let figure = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
            rows.push(vec![
                esc(&store),
                p.to_string(),
                owner.as_ref().map_or("–".to_string(), |o| esc(&o.instance)),
                standby_text.join(", "),
                state,
                figure(lag),
                figure(gauge(STORE_KEYS, &store)),
                figure(remaining),
            ]);
        }
    }
    format!(
        "<section><h2>Partitions</h2>{}</section>",
        table("partitions", &["store", "partition", "owner", "standbys (lag)", "state", "input lag", "keys", "restore remaining"], &rows)
    )
}

/// Commit latency per instance over the last minutes: each second's highest commit as a
/// bar, its mean as a dot.
fn commits_html(feeds: &[&InstanceFeed]) -> String {
    let mut out = String::from("<section><h2>Commit latency, last 5 minutes</h2>");
    let newest = feeds.iter().flat_map(|f| f.commits.last()).map(|c| c.at).max().unwrap_or(0);
    let (w, h) = (600.0, 80.0);
    for f in feeds {
        let points: Vec<_> = f.commits.iter().filter(|c| c.at + CHART_SECONDS > newest).collect();
        let count: u32 = points.iter().map(|c| c.commits).sum();
        let top = points.iter().map(|c| c.max_ms).fold(10.0_f64, f64::max);
        let caption = if count == 0 {
            format!("{}: no commits", esc(&f.instance))
        } else {
            let mean = points.iter().map(|c| c.mean_ms * f64::from(c.commits)).sum::<f64>() / f64::from(count);
            let highest = points.iter().map(|c| c.max_ms).fold(0.0_f64, f64::max);
            format!("{}: {count} commits, mean {mean:.1} ms, highest {highest:.1} ms", esc(&f.instance))
        };
        let mut marks = String::new();
        for c in &points {
            let x = w - (newest - c.at) as f64 * w / CHART_SECONDS as f64 - 2.0;
            let y = |ms: f64| h - ms / top * (h - 4.0);
            let _ = write!(marks, r#"<rect class="max" x="{x:.1}" y="{:.1}" width="2" height="{:.1}"><title>{}: {} commits, highest {:.1} ms</title></rect><circle class="mean" cx="{:.1}" cy="{:.1}" r="1.6"/>"#,
                y(c.max_ms), h - y(c.max_ms), html::clock(c.at as i64 * 1000), c.commits, c.max_ms, x + 1.0, y(c.mean_ms));
        }
        let _ = write!(
            out,
            r#"<figure class="chart"><figcaption>{caption} (scale {top:.0} ms)</figcaption><svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="commit latency of {inst}">{marks}</svg></figure>"#,
            inst = esc(&f.instance),
        );
    }
    out.push_str("</section>");
    out
}

/// `app-commands-0,app-commands-1,orders-3` as `app-commands [0, 1], orders [3]`.
fn partition_list(list: &str) -> String {
    let mut by_topic: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for tp in list.split(',').filter(|s| !s.is_empty()) {
        match tp.rsplit_once('-') {
            Some((topic, p)) if p.parse::<i32>().is_ok() => by_topic.entry(topic).or_default().push(p),
            _ => {
                by_topic.entry(tp).or_default();
            }
        }
    }
    by_topic.iter().map(|(t, ps)| format!("{t} [{}]", ps.join(", "))).collect::<Vec<_>>().join("; ")
}

fn rebalances_html(feeds: &[&InstanceFeed]) -> String {
    let mut all: Vec<(i64, &str, usize, &str, &str)> = feeds
        .iter()
        .flat_map(|f| f.rebalances.iter().map(|r| (r.at_ms, f.instance.as_str(), r.thread, r.step.as_str(), r.partitions.as_str())))
        .collect();
    all.sort_by(|a, b| b.0.cmp(&a.0));
    let rows: Vec<Vec<String>> = all
        .iter()
        .take(20)
        .map(|(at, inst, thread, step, parts)| vec![html::clock(*at), esc(inst), thread.to_string(), esc(step), esc(&partition_list(parts))])
        .collect();
    format!("<section><h2>Rebalances</h2>{}</section>", table("rebalances", &["time (UTC)", "instance", "thread", "step", "partitions"], &rows))
}

fn badge(kind: &str, text: &str) -> String {
    format!(r#"<span class="badge {kind}">{}</span>"#, esc(text))
}

/// The aggregate whose snapshots a store holds, if any.
fn aggregate_of(ui: &Ui, store: &str) -> Option<String> {
    ui.console.topology.aggregates.values().find(|a| a.store.name == store).map(|a| a.aggregate.clone())
}

pub(super) async fn store(State(ui): State<Ui>, Path(store): Path<String>, Query(q): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    let Some(view) = ui.ctx.catalog.view(&store) else {
        return not_found(&ui, &format!("no store {store:?} here"));
    };
    let mut body = format!("<h1>Store {}</h1>", esc(&store));
    let _ = write!(
        body,
        r#"<form class="inline" method="get" action="/ui/stores/{s}/lookup"><label>Key <input name="key" required></label><button>Look up</button></form>"#,
        s = url(&store)
    );
    let field = q.get("field").filter(|f| !f.is_empty());
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
    let mut path = match (field, q.get("value")) {
        (Some(f), Some(v)) => format!("/stores/{}/index/{}/{}?limit={PAGE}", url(&store), url(f), url(v)),
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
    if let (Some(f), Some(v)) = (field, q.get("value")) {
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
            let shown = rest.get("state").or_else(|| rest.get("value")).unwrap_or(&rest);
            vec![
                format!(r#"<a href="/ui/stores/{}/keys/{}">{}</a>"#, url(&store), url(key), esc(key)),
                version,
                format!("<code>{}</code>", esc(&truncate(&shown.to_string(), 160))),
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
        if let (Some(f), Some(v)) = (field, q.get("value")) {
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
            let shown = answer.body.get("state").or_else(|| answer.body.get("value")).unwrap_or(&answer.body);
            body.push_str(&json_block(shown));
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
        body.push_str(&command_form(&aggregate, &key, version.unwrap_or(0), "", "{}"));
    }
    ui.page(&key, Tab::Stores, &body)
}

fn command_form(aggregate: &str, id: &str, expected: u64, ty: &str, payload: &str) -> String {
    format!(
        r#"<h2>Send a command</h2><form class="command" method="post" action="/ui/commands">
<label>Aggregate <input name="aggregate" value="{a}" required></label>
<label>Id <input name="id" value="{i}" required></label>
<label>Type <input name="type" value="{t}" placeholder="CreateCustomer" required></label>
<label>Expected version <input name="expected_version" value="{e}" inputmode="numeric"></label>
<label class="wide">Payload (JSON) <textarea name="payload" rows="4">{p}</textarea></label>
<button>Send</button></form>"#,
        a = esc(aggregate),
        i = esc(id),
        t = esc(ty),
        e = expected,
        p = esc(payload),
    )
}

pub(super) async fn commands_form(State(ui): State<Ui>) -> Response {
    let first = ui.console.topology.aggregates.values().next().map(|a| a.aggregate.clone()).unwrap_or_default();
    let mut body = String::from("<h1>Commands</h1>");
    if ui.ctx.gateway.is_none() {
        body.push_str(&notice("warn", "this instance sends no commands (it runs no aggregate)"));
    }
    body.push_str(&command_form(&first, "", 0, "", "{}").replace("expected_version\" value=\"0\"", "expected_version\" value=\"\""));
    ui.page("Commands", Tab::Commands, &body)
}

#[derive(serde::Deserialize)]
pub(super) struct CommandForm {
    aggregate: String,
    id: String,
    r#type: String,
    #[serde(default)]
    expected_version: String,
    #[serde(default)]
    payload: String,
}

pub(super) async fn send_command(State(ui): State<Ui>, headers: HeaderMap, Form(f): Form<CommandForm>) -> Response {
    let mut body = String::from("<h1>Command sent</h1>");
    let payload = match f.payload.trim() {
        "" => Value::Object(Default::default()),
        text => match serde_json::from_str::<Value>(text) {
            Ok(v) => v,
            Err(e) => {
                body = String::from("<h1>Command not sent</h1>");
                body.push_str(&notice("bad", &format!("the payload is not JSON: {e}")));
                body.push_str(&command_form(&f.aggregate, &f.id, 0, &f.r#type, &f.payload));
                return with_status(StatusCode::BAD_REQUEST, ui.page("Command", Tab::Commands, &body));
            }
        },
    };
    let mut request = json!({"type": f.r#type, "payload": payload});
    match f.expected_version.trim() {
        "" => {}
        v => match v.parse::<u64>() {
            Ok(v) => request["expected_version"] = json!(v),
            Err(_) => {
                body = String::from("<h1>Command not sent</h1>");
                body.push_str(&notice("bad", &format!("expected version {v:?} is not a whole number")));
                body.push_str(&command_form(&f.aggregate, &f.id, 0, &f.r#type, &f.payload));
                return with_status(StatusCode::BAD_REQUEST, ui.page("Command", Tab::Commands, &body));
            }
        },
    }
    let path = format!("/aggregates/{}/{}/commands", url(&f.aggregate), url(&f.id));
    let answer = ui.call(Method::POST, &path, &headers, Some(request.to_string().into_bytes())).await;
    let outcome = answer.body["outcome"].as_str().unwrap_or("");
    let kind = if answer.status.is_success() { "ok" } else { "bad" };
    let summary = match outcome {
        "" => format!("{}: {}", answer.status, answer.error()),
        o => format!("{o}, version {}", answer.body["version"]),
    };
    let _ = write!(body, r#"<p class="notice {kind}" id="outcome">{}</p>"#, esc(&summary));
    body.push_str(&json_block(&answer.body));
    if let Some(store) = ui.ctx.catalog.aggregate_store(&f.aggregate) {
        let _ = write!(body, r#"<p><a href="/ui/stores/{}/keys/{}">Look up {}</a></p>"#, url(&store), url(&f.id), esc(&f.id));
    }
    let next = answer.body["version"].as_u64().unwrap_or(0);
    body.push_str(&command_form(&f.aggregate, &f.id, next, &f.r#type, &f.payload));
    ui.page("Command", Tab::Commands, &body)
}

pub(super) async fn dead_letters(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let topic = ui.console.topology.dead_letter_topic();
    let mut body = String::from("<h1>Quarantined keys</h1>");
    body.push_str(&quarantined_html(&gather(&ui, &headers).await));
    let _ = write!(body, "<h1>Dead letters</h1><p>The newest records of <code>{}</code>.</p>", esc(&topic));
    let Some(clients) = ui.console.clients.clone() else {
        body.push_str(&notice("warn", "this instance does not read the dead-letter topic"));
        return ui.page("Dead letters", Tab::DeadLetters, &body);
    };
    let t = topic.clone();
    let read = tokio::task::spawn_blocking(move || dead_letters::last(&clients, &t, 50, Duration::from_secs(3))).await;
    match read {
        Ok(Ok(letters)) if letters.is_empty() => body.push_str(&notice("ok", "none")),
        Ok(Ok(letters)) => {
            let rows: Vec<Vec<String>> = letters
                .iter()
                .map(|d| {
                    vec![
                        d.timestamp.map_or(String::new(), html::clock),
                        esc(&d.key),
                        esc(&d.reason),
                        esc(&d.origin),
                        format!("<code>{}</code>", esc(&truncate(&d.value, 120))),
                    ]
                })
                .collect();
            body.push_str(&table("dead-letters", &["time (UTC)", "key", "reason", "from", "record"], &rows));
        }
        Ok(Err(e)) => body.push_str(&notice("bad", &format!("cannot read {topic}: {e}"))),
        Err(e) => body.push_str(&notice("bad", &format!("cannot read {topic}: {e}"))),
    }
    ui.page("Dead letters", Tab::DeadLetters, &body)
}

/// Every instance's quarantined keys, with a link to each key's page (where the history
/// shows whether a repair can refold it).
fn quarantined_html(seen: &[Seen]) -> String {
    let mut rows = Vec::new();
    for s in seen {
        match &s.feed {
            Ok(f) => rows.extend(f.quarantined.iter().map(|q| {
                vec![
                    esc(&q.store),
                    format!(r#"<a href="/ui/stores/{}/keys/{}">{}</a>"#, url(&q.store), url(&q.key), esc(&q.key)),
                    esc(&f.instance),
                    html::clock(q.since_ms),
                    esc(&q.reason),
                ]
            })),
            Err(why) => rows.push(vec![String::new(), String::new(), esc(&s.instance), String::new(), badge("bad", &format!("unreachable: {why}"))]),
        }
    }
    if rows.is_empty() {
        return notice("ok", "none: every snapshot met so far could be read");
    }
    let mut out = table("quarantined", &["store", "key", "owner", "since (UTC)", "why"], &rows);
    out.push_str("<p>Each command for a quarantined key is answered <code>failed</code> until its snapshot is repaired \
(<code>POST /aggregates/{aggregate}/{id}/snapshot/repair</code>) or deleted (docs/operations.md).</p>");
    out
}

pub(super) async fn login_form(State(ui): State<Ui>) -> Response {
    let body = r#"<h1>Sign in</h1><p>This cluster needs a token (the same tokens as its HTTP API).</p>
<form method="post" action="/ui/login"><label>Token <input name="token" type="password" required autocomplete="off"></label><button>Sign in</button></form>"#;
    ui.page("Sign in", Tab::Overview, body)
}

#[derive(serde::Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

pub(super) async fn login(State(ui): State<Ui>, Form(f): Form<LoginForm>) -> Response {
    let token: String = f.token.trim().chars().filter(|c| c.is_ascii_graphic() && *c != ';').collect();
    // HttpOnly: no script reads it; SameSite=Strict: no other site's form sends it.
    let secure = if ui.ctx.security.tls.is_some() { "; Secure" } else { "" };
    let cookie = format!("{TOKEN_COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict{secure}");
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, "/ui".to_string())]).into_response()
}

fn not_found(ui: &Ui, why: &str) -> Response {
    with_status(StatusCode::NOT_FOUND, ui.page("Not found", Tab::Overview, &notice("bad", why)))
}

fn with_status(status: StatusCode, mut r: Response) -> Response {
    *r.status_mut() = status;
    r
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_lists_group_by_topic() {
        assert_eq!(partition_list("app-commands-0,app-commands-1,orders-3"), "app-commands [0, 1]; orders [3]");
        assert_eq!(partition_list(""), "");
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("ab€cd", 3), "ab€…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
