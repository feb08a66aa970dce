//! The overview (`/ui`): the topology with live rates, every instance and every store
//! partition with the state it is in, commit latency, the last rebalances. Its live part
//! is also served alone (`/ui/live`) for the script to refresh.

use super::feed::{gather, InstanceFeed, Seen};
use super::html::{self, badge, esc, table, Tab};
use super::{graph, Ui};
use crate::runtime::partition_gauges::{CONSUMER_LAG, RESTORE_REMAINING, STANDBY_LAG, STORE_KEYS};
use crate::topology::describe::subs;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Input lag above which a partition, and its owner, count as behind.
const BEHIND: f64 = 1000.0;
/// Seconds the commit chart covers.
const CHART_SECONDS: u64 = 300;

pub(super) async fn overview(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let live = live_html(&ui, &headers).await;
    let body = format!(r#"<h1>{}</h1><div id="live" data-refresh="/ui/live">{live}</div>"#, esc(&ui.console.topology.application_id));
    ui.page("Overview", Tab::Overview, &body)
}

pub(super) async fn live(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    html::response(live_html(&ui, &headers).await)
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
    // Rates are counted by the processing threads' commits. Global tables and projections
    // read outside them, and with no instance answering nothing is known: such nodes show
    // no rate rather than a false 0.
    let counted = |node: &str| !feeds.is_empty() && !t.global_tables.contains_key(node) && !t.projections.contains_key(node);
    let node_rates: BTreeMap<String, f64> = sub_topologies
        .iter()
        .filter(|s| counted(&s.node))
        .map(|s| (s.node.clone(), topic_rates.get(s.source.as_str()).copied().unwrap_or(0.0)))
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_lists_group_by_topic() {
        assert_eq!(partition_list("app-commands-0,app-commands-1,orders-3"), "app-commands [0, 1]; orders [3]");
        assert_eq!(partition_list(""), "");
    }
}
