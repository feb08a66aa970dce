//! `millrace describe`: the topology drawn for humans, in the spirit of Kafka Streams'
//! `Topology#describe()`: sub-topologies with their sources, processors, stores and sinks,
//! the internal topics, and which topics must be co-partitioned. Also as Graphviz dot and
//! Mermaid.

use super::{TopicRole, Topology};
use std::fmt::Write;

/// One node's sub-topology, as the renderings need it (these three, and the console's
/// graph).
pub struct Sub {
    pub index: usize,
    pub node: String,
    /// `aggregate: <name>`, `table`, `rekey by <field>`, `inner join with table <t>`.
    pub kind: String,
    pub source: String,
    pub sinks: Vec<String>,
    /// The node's own store and its changelog; stateless nodes have none.
    pub store: Option<(String, String)>,
    /// Stores of other nodes it reads (a join's table).
    pub reads: Vec<String>,
}

pub fn subs(t: &Topology) -> Vec<Sub> {
    let dlq = t.dead_letter_topic();
    let mut all = Vec::new();
    for (node, a) in &t.aggregates {
        all.push(Sub {
            index: 0,
            node: node.clone(),
            kind: match &a.awaits {
                None => format!("aggregate: {}", a.aggregate),
                Some(aw) => format!("aggregate: {}, awaits global table {} for {} ms", a.aggregate, aw.table, aw.timeout_ms),
            },
            source: a.commands.name.clone(),
            sinks: vec![a.events.name.clone(), a.replies.name.clone(), dlq.clone()],
            store: Some((a.store.name.clone(), a.store.changelog.clone())),
            reads: a.awaits.iter().map(|aw| aw.global.store.name.clone()).collect(),
        });
    }
    for (node, x) in &t.tables {
        let changelog = if x.store.changelog == x.topic.name { format!("{} (input topic)", x.topic) } else { x.store.changelog.clone() };
        all.push(Sub {
            index: 0,
            node: node.clone(),
            kind: "table".into(),
            source: x.topic.name.clone(),
            sinks: vec![dlq.clone()],
            store: Some((x.store.name.clone(), changelog)),
            reads: vec![],
        });
    }
    for (node, r) in &t.rekeys {
        all.push(Sub {
            index: 0,
            node: node.clone(),
            kind: format!("rekey by {}", r.key_field),
            source: r.from.name.clone(),
            sinks: vec![r.repartition.name.clone(), dlq.clone()],
            store: None,
            reads: vec![],
        });
    }
    for (node, g) in &t.global_tables {
        all.push(Sub {
            index: 0,
            node: node.clone(),
            kind: "global table, every instance, outside the group".into(),
            source: g.topic.name.clone(),
            sinks: vec![],
            store: Some((g.store.name.clone(), format!("{} (input topic)", g.topic))),
            reads: vec![],
        });
    }
    for (node, j) in &t.joins {
        all.push(Sub {
            index: 0,
            node: node.clone(),
            kind: format!("{} join with table {}", if j.kind == crate::processor::JoinKind::Inner { "inner" } else { "left" }, j.table.node()),
            source: j.stream_topic.clone(),
            sinks: vec![j.output.name.clone(), dlq.clone()],
            store: None,
            reads: vec![j.table.store().to_string()],
        });
    }
    for (node, p) in &t.projections {
        let target = match &p.kind {
            super::ProjectionKind::Mapped(m) => format!("postgres table {}", m.table),
            super::ProjectionKind::Registered(name) => format!("postgres (projection {name})"),
        };
        // One sub-topology per input topic: each is read on its own, by one group.
        for topic in &p.from {
            all.push(Sub {
                index: 0,
                node: node.clone(),
                kind: format!("projection, exactly once into PostgreSQL, group {}", t.projection_group(node)),
                source: topic.name.clone(),
                sinks: vec![target.clone(), dlq.clone()],
                store: None,
                reads: vec![],
            });
        }
    }
    for (i, s) in all.iter_mut().enumerate() {
        s.index = i;
    }
    all
}

fn topic_line(t: &Topology, name: &str) -> String {
    match t.topics.get(name) {
        Some(spec) => format!("{name} ({} partitions, {})", spec.partitions, spec.codec),
        None => name.to_string(),
    }
}

pub fn text(t: &Topology) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Topology {} (version {})", t.application_id, t.version);
    for s in subs(t) {
        let stores: Vec<&str> = s.store.iter().map(|(n, _)| n.as_str()).chain(s.reads.iter().map(String::as_str)).collect();
        let _ = writeln!(out, "  Sub-topology: {}", s.index);
        let _ = writeln!(out, "    Source: {} (topics: [{}])", s.source, topic_line(t, &s.source));
        let _ = writeln!(out, "      --> {}", s.node);
        let _ = writeln!(out, "    Processor: {} ({}, stores: [{}])", s.node, s.kind, stores.join(", "));
        let _ = writeln!(out, "      --> {}", s.sinks.join(", "));
        let _ = writeln!(out, "      <-- {}", s.source);
        for sink in &s.sinks {
            let _ = writeln!(out, "    Sink: {sink} (topic: {})", topic_line(t, sink));
            let _ = writeln!(out, "      <-- {}", s.node);
        }
        if let Some((name, changelog)) = &s.store {
            let _ = writeln!(out, "    Store: {name} (RocksDB, changelog: {changelog})");
        }
    }
    let _ = writeln!(out, "  Internal topics:");
    for n in t.topic_needs().iter().filter(|n| n.role != TopicRole::Declared) {
        let policy = if n.compacted { "compact" } else { "delete" };
        let _ = writeln!(out, "    {} ({} partitions, cleanup.policy={policy}, {:?})", n.name, n.partitions, n.role);
    }
    let _ = writeln!(out, "  Co-partitioned groups:");
    for g in co_partitioned(t) {
        let p = t.topic_needs().iter().find(|n| n.name == g[0]).map_or(0, |n| n.partitions);
        let _ = writeln!(out, "    [{}] ({p} partitions each)", g.join(", "));
    }
    let guarantee = if t.processing.exactly_once { "exactly once" } else { "at least once" };
    let _ = writeln!(out, "  Processing: commit every {} ms or {} records, {guarantee}, {} thread(s)",
        t.processing.commit_interval_ms, t.processing.max_batch_records, t.processing.threads);
    out
}

/// Topics whose partition p must live on one instance: an input and its store's
/// changelog; a join's stream, its table's input and that table's changelog.
pub fn co_partitioned(t: &Topology) -> Vec<Vec<String>> {
    let mut groups = Vec::new();
    for a in t.aggregates.values() {
        groups.push(vec![a.commands.name.clone(), a.store.changelog.clone()]);
    }
    for (node, x) in &t.tables {
        let mut g = vec![x.topic.name.clone()];
        if x.store.changelog != x.topic.name {
            g.push(x.store.changelog.clone());
        }
        for j in t.joins.values().filter(|j| j.table.node() == node) {
            g.push(j.stream_topic.clone());
        }
        groups.push(g);
    }
    groups
}

pub fn dot(t: &Topology) -> String {
    let mut out = format!("digraph \"{}\" {{\n  rankdir=LR;\n", t.application_id);
    for s in subs(t) {
        let _ = writeln!(out, "  subgraph cluster_{} {{\n    label=\"sub-topology {}\";", s.index, s.index);
        let _ = writeln!(out, "    \"{}\" [shape=box, label=\"{}\\n({})\"];", s.node, s.node, s.kind);
        if let Some((name, _)) = &s.store {
            let _ = writeln!(out, "    \"store:{name}\" [shape=cylinder, label=\"{name}\"];");
        }
        let _ = writeln!(out, "  }}");
        let _ = writeln!(out, "  \"{}\" [shape=ellipse];", s.source);
        let _ = writeln!(out, "  \"{}\" -> \"{}\";", s.source, s.node);
        if let Some((name, changelog)) = &s.store {
            let _ = writeln!(out, "  \"{}\" -> \"store:{name}\" [dir=both];", s.node);
            let _ = writeln!(out, "  \"store:{name}\" -> \"{changelog}\" [style=dashed];");
        }
        for r in &s.reads {
            let _ = writeln!(out, "  \"store:{r}\" -> \"{}\" [style=dotted, label=\"lookup\"];", s.node);
        }
        for sink in &s.sinks {
            let _ = writeln!(out, "  \"{}\" -> \"{sink}\";", s.node);
        }
    }
    out.push_str("}\n");
    out
}

/// Mermaid node ids must be simple: topic names may carry dots and dashes.
fn id(prefix: &str, name: &str) -> String {
    format!("{prefix}_{}", name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"))
}

pub fn mermaid(t: &Topology) -> String {
    let mut out = String::from("flowchart LR\n");
    for s in subs(t) {
        let _ = writeln!(out, "  subgraph sub{}[\"sub-topology {}\"]", s.index, s.index);
        let _ = writeln!(out, "    {}[\"{} ({})\"]", id("p", &s.node), s.node, s.kind);
        if let Some((name, _)) = &s.store {
            let _ = writeln!(out, "    {}[(\"{name}\")]", id("s", name));
        }
        let _ = writeln!(out, "  end");
        let _ = writeln!(out, "  {}([\"{}\"]) --> {}", id("t", &s.source), s.source, id("p", &s.node));
        if let Some((name, changelog)) = &s.store {
            let _ = writeln!(out, "  {} <--> {}", id("p", &s.node), id("s", name));
            let _ = writeln!(out, "  {} -.-> {}([\"{changelog}\"])", id("s", name), id("t", changelog));
        }
        for r in &s.reads {
            let _ = writeln!(out, "  {} -. lookup .-> {}", id("s", r), id("p", &s.node));
        }
        for sink in &s.sinks {
            let _ = writeln!(out, "  {} --> {}([\"{sink}\"])", id("p", &s.node), id("t", sink));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn topology() -> Topology {
        crate::topology::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/topology/customers.yaml"))).unwrap()
    }

    #[test]
    fn text_names_every_part() {
        let d = text(&topology());
        for part in [
            "Source: customer-commands (topics: [customer-commands (4 partitions, json)])",
            "Processor: customers (aggregate: customer, stores: [customers])",
            "Sink: customer-events",
            "Sink: customers-dead-letters",
            "Store: customers (RocksDB, changelog: customers-customers-changelog)",
            "customers-customers-changelog (4 partitions, cleanup.policy=compact, Changelog)",
            "[customer-commands, customers-customers-changelog] (4 partitions each)",
        ] {
            assert!(d.contains(part), "missing {part:?} in:\n{d}");
        }
    }

    #[test]
    fn dot_and_mermaid_link_source_processor_store_and_sinks() {
        let t = topology();
        let g = dot(&t);
        assert!(g.starts_with("digraph \"customers\""));
        assert!(g.contains("\"customer-commands\" -> \"customers\";"));
        assert!(g.contains("\"store:customers\" -> \"customers-customers-changelog\" [style=dashed];"));
        let m = mermaid(&t);
        assert!(m.contains("t_customer_commands([\"customer-commands\"]) --> p_customers"));
        assert!(m.contains("p_customers --> t_customer_replies([\"customer-replies\"])"));
    }
}
