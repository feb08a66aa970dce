//! The running topology drawn as SVG: one row per sub-topology, its source topic on the
//! left, the node (with its live rate) in the middle and its store below it, the topics it
//! writes on the right. Internal topics (changelogs, repartition topics, dead letters) are
//! drawn apart from declared ones, and the co-partition groups are listed under the
//! graph. Laid out by hand: a fixed three-column grid reads well for these shapes and needs
//! no layout engine in the binary.

use super::html::esc;
use crate::topology::describe::{co_partitioned, subs};
use crate::topology::{TopicRole, Topology};
use std::collections::BTreeMap;
use std::fmt::Write;

const COL_SOURCE: u32 = 10;
const COL_NODE: u32 = 330;
const COL_SINK: u32 = 690;
const BOX_W: u32 = 280;
const PILL_H: u32 = 26;
const GAP: u32 = 8;
const NODE_H: u32 = 56;
const STORE_H: u32 = 44;
const WIDTH: u32 = COL_SINK + BOX_W + 10;

/// The graph, with each node's input rate (records per second, over the cluster) where
/// one is known.
pub fn svg(t: &Topology, rates: &BTreeMap<String, f64>) -> String {
    let roles: BTreeMap<String, TopicRole> = t.topic_needs().into_iter().map(|n| (n.name, n.role)).collect();
    let class = |topic: &str| match roles.get(topic) {
        Some(TopicRole::Declared) | None => "topic",
        Some(TopicRole::DeadLetters) => "topic dlq",
        Some(_) => "topic internal",
    };
    let mut body = String::new();
    let mut y = 10;
    for s in subs(t) {
        let sinks_h = s.sinks.len() as u32 * (PILL_H + GAP);
        let node_h = NODE_H + if s.store.is_some() { STORE_H + GAP } else { 0 };
        let row_h = sinks_h.max(node_h).max(PILL_H) + 2 * GAP;
        let _ = write!(body, r#"<g class="sub" data-node="{node}"><rect class="row" x="2" y="{y}" width="{w}" height="{row_h}" rx="6"/>"#,
            node = esc(&s.node), w = WIDTH - 4);
        let top = y + GAP;
        let mid = top + NODE_H / 2;
        // The source topic, level with the node.
        pill(&mut body, COL_SOURCE, mid - PILL_H / 2, &s.source, class(&s.source));
        arrow(&mut body, COL_SOURCE + BOX_W, mid, COL_NODE, mid, "");
        let rate = rates.get(&s.node).map_or_else(|| "–".to_string(), |r| format!("{r:.0}/s"));
        let _ = write!(body,
            r#"<g class="node"><rect x="{COL_NODE}" y="{top}" width="{BOX_W}" height="{NODE_H}" rx="4"/><text x="{tx}" y="{ty}" class="name">{name}</text><text x="{tx}" y="{ty2}" class="kind">{kind}</text><text x="{rx}" y="{ty}" class="rate" text-anchor="end" data-rate="{name}">{rate}</text><title>{name}: {kind}</title></g>"#,
            tx = COL_NODE + 10, ty = top + 22, ty2 = top + 42, rx = COL_NODE + BOX_W - 10,
            name = esc(&s.node), kind = esc(&fit(&s.kind, 44)), rate = esc(&rate));
        if let Some((store, changelog)) = &s.store {
            let sy = top + NODE_H + GAP;
            let _ = write!(body,
                r#"<g class="store"><rect x="{COL_NODE}" y="{sy}" width="{BOX_W}" height="{STORE_H}" rx="12"/><text x="{tx}" y="{t1}" class="name">store {name}</text><text x="{tx}" y="{t2}" class="kind">changelog {log}</text><title>store {store}, changelog {changelog}</title></g>"#,
                tx = COL_NODE + 12, t1 = sy + 18, t2 = sy + 35,
                name = esc(&fit(store, 36)), log = esc(&fit(changelog, 40)), store = esc(store), changelog = esc(changelog));
        }
        for (i, sink) in s.sinks.iter().enumerate() {
            let py = top + i as u32 * (PILL_H + GAP);
            pill(&mut body, COL_SINK, py, sink, class(sink));
            arrow(&mut body, COL_NODE + BOX_W, mid, COL_SINK, py + PILL_H / 2, "");
        }
        for r in &s.reads {
            let _ = write!(body, r#"<text x="{x}" y="{yy}" class="reads">reads store {r}</text>"#, x = COL_NODE + 10, yy = top - 2 + node_h + GAP, r = esc(r));
        }
        body.push_str("</g>");
        y += row_h + GAP;
    }
    let mut out = format!(
        r#"<svg class="topology" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {y}" width="{WIDTH}" height="{y}" role="img" aria-label="topology {app}"><defs><marker id="head" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>{body}</svg>"#,
        app = esc(&t.application_id)
    );
    let groups = co_partitioned(t);
    if !groups.is_empty() {
        out.push_str(r#"<ul class="groups">"#);
        for g in groups {
            let partitions = t.topic_needs().iter().find(|n| n.name == g[0]).map_or(0, |n| n.partitions);
            let names: Vec<String> = g.iter().map(|n| format!("<code>{}</code>", esc(n))).collect();
            let _ = write!(out, "<li>co-partitioned, {partitions} partitions each: {}</li>", names.join(", "));
        }
        out.push_str("</ul>");
    }
    out
}

fn pill(out: &mut String, x: u32, y: u32, topic: &str, class: &str) {
    let _ = write!(out,
        r#"<g class="{class}"><rect x="{x}" y="{y}" width="{BOX_W}" height="{PILL_H}" rx="13"/><text x="{tx}" y="{ty}">{shown}</text><title>{name}</title></g>"#,
        tx = x + 12, ty = y + 17, shown = esc(&fit(topic, 40)), name = esc(topic));
}

/// A name cut to fit its box: the start, an ellipsis and the end, which tells topics of
/// one application apart (`millrace-shop-…-orders-changelog`). The whole name is in the
/// element's tooltip.
fn fit(name: &str, max: usize) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= max {
        return name.to_string();
    }
    let head = (max - 1) / 3;
    let tail = max - 1 - head;
    format!("{}…{}", chars[..head].iter().collect::<String>(), chars[chars.len() - tail..].iter().collect::<String>())
}

fn arrow(out: &mut String, x1: u32, y1: u32, x2: u32, y2: u32, class: &str) {
    let _ = write!(out, r#"<path class="edge {class}" d="M{x1},{y1} C{c1},{y1} {c2},{y2} {x2},{y2}" marker-end="url(#head)"/>"#,
        c1 = (x1 + x2) / 2, c2 = (x1 + x2) / 2);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(name: &str) -> Topology {
        crate::topology::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("topology").join(name)).unwrap()
    }

    #[test]
    fn every_node_topic_and_store_is_drawn_with_its_rate() {
        let t = load("customers.yaml");
        let rates = BTreeMap::from([("customers".to_string(), 12.4)]);
        let svg = svg(&t, &rates);
        for s in subs(&t) {
            assert!(svg.contains(&format!(r#"data-node="{}""#, s.node)), "node {} drawn", s.node);
            assert!(svg.contains(&format!("<title>{}</title>", s.source)), "source {} drawn", s.source);
            for sink in &s.sinks {
                assert!(svg.contains(&format!("<title>{sink}</title>")), "sink {sink} drawn");
            }
            if let Some((store, _)) = &s.store {
                assert!(svg.contains(&format!("store {store}")));
            }
        }
        assert!(svg.contains(r#"data-rate="customers">12/s<"#), "{svg}");
        assert!(svg.contains("co-partitioned"));
    }

    #[test]
    fn every_shipped_topology_is_drawn_whole() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("topology");
        let mut drawn = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let t = crate::topology::load(&path).unwrap();
            let svg = svg(&t, &BTreeMap::new());
            for s in subs(&t) {
                assert!(svg.contains(&format!(r#"data-node="{}""#, esc(&s.node))), "{}: node {}", path.display(), s.node);
            }
            assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count(), "{}", path.display());
            drawn += 1;
        }
        assert!(drawn >= 8, "the shipped topologies were found ({drawn})");
    }

    #[test]
    fn long_names_keep_their_start_and_end() {
        assert_eq!(fit("short", 10), "short");
        let cut = fit("console-29123-78681498-0-customers-changelog", 20);
        assert_eq!(cut.chars().count(), 20);
        assert!(cut.starts_with("consol") && cut.ends_with("ers-changelog") && cut.contains('…'), "{cut}");
    }

    #[test]
    fn repartition_topics_are_drawn_as_internal() {
        let t = load("order-enrichment.yaml");
        let svg = svg(&t, &BTreeMap::new());
        let repartition = t.topic_needs().into_iter().find(|n| n.role == TopicRole::Repartition).expect("the enrichment re-keys orders");
        assert!(svg.contains(&format!(r#"<g class="topic internal"><rect x="{COL_SINK}""#)), "{svg}");
        assert!(svg.contains(&format!("<title>{}</title>", repartition.name)));
        // The SVG is well-formed enough for a browser: tags balance.
        assert_eq!(svg.matches("<g ").count() + svg.matches("<g>").count(), svg.matches("</g>").count());
    }
}
