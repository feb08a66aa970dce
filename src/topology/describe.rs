//! `millrace describe`: the topology drawn for humans, in the spirit of Kafka Streams'
//! `Topology#describe()`: sub-topologies with their sources, processors, stores and sinks,
//! the internal topics, and which topics must be co-partitioned. Also as Graphviz dot and
//! Mermaid.

use super::{TopicRole, Topology};
use std::fmt::Write;

/// One aggregate's sub-topology, as the three renderings need it.
struct Sub<'a> {
    index: usize,
    node: &'a str,
    /// `aggregate: <name>` or `table`.
    kind: String,
    source: &'a str,
    sinks: Vec<String>,
    store: &'a str,
    changelog: String,
}

fn subs(t: &Topology) -> Vec<Sub<'_>> {
    let aggregates = t.aggregates.iter().map(|(node, a)| Sub {
        index: 0,
        node,
        kind: format!("aggregate: {}", a.aggregate),
        source: &a.commands,
        sinks: vec![a.events.clone(), a.replies.clone(), t.dead_letter_topic()],
        store: &a.store,
        changelog: t.changelog_topic(&a.store),
    });
    let tables = t.tables.iter().map(|(node, x)| Sub {
        index: 0,
        node,
        kind: "table".to_string(),
        source: &x.topic,
        sinks: vec![t.dead_letter_topic()],
        store: &x.store,
        changelog: t.changelog_topic(&x.store),
    });
    aggregates.chain(tables).enumerate().map(|(index, s)| Sub { index, ..s }).collect()
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
        let _ = writeln!(out, "  Sub-topology: {}", s.index);
        let _ = writeln!(out, "    Source: {} (topics: [{}])", s.source, topic_line(t, s.source));
        let _ = writeln!(out, "      --> {}", s.node);
        let _ = writeln!(out, "    Processor: {} ({}, stores: [{}])", s.node, s.kind, s.store);
        let _ = writeln!(out, "      --> {}", s.sinks.join(", "));
        let _ = writeln!(out, "      <-- {}", s.source);
        for sink in &s.sinks {
            let _ = writeln!(out, "    Sink: {sink} (topic: {})", topic_line(t, sink));
            let _ = writeln!(out, "      <-- {}", s.node);
        }
        let _ = writeln!(out, "    Store: {} (RocksDB, changelog: {})", s.store, s.changelog);
    }
    let _ = writeln!(out, "  Internal topics:");
    for n in t.topic_needs().iter().filter(|n| n.role != TopicRole::Declared) {
        let policy = if n.compacted { "compact" } else { "delete" };
        let _ = writeln!(out, "    {} ({} partitions, cleanup.policy={policy}, {:?})", n.name, n.partitions, n.role);
    }
    let _ = writeln!(out, "  Co-partitioned groups:");
    for s in subs(t) {
        let p = t.topics[s.source].partitions;
        let _ = writeln!(out, "    [{}, {}] ({p} partitions each)", s.source, s.changelog);
    }
    let guarantee = if t.processing.exactly_once { "exactly once" } else { "at least once" };
    let _ = writeln!(out, "  Processing: commit every {} ms or {} records, {guarantee}, {} thread(s)",
        t.processing.commit_interval_ms, t.processing.max_batch_records, t.processing.threads);
    out
}

pub fn dot(t: &Topology) -> String {
    let mut out = format!("digraph \"{}\" {{\n  rankdir=LR;\n", t.application_id);
    for s in subs(t) {
        let _ = writeln!(out, "  subgraph cluster_{} {{\n    label=\"sub-topology {}\";", s.index, s.index);
        let _ = writeln!(out, "    \"{}\" [shape=box, label=\"{}\\n({})\"];", s.node, s.node, s.kind);
        let _ = writeln!(out, "    \"store:{}\" [shape=cylinder, label=\"{}\"];", s.store, s.store);
        let _ = writeln!(out, "  }}");
        let _ = writeln!(out, "  \"{}\" [shape=ellipse];", s.source);
        let _ = writeln!(out, "  \"{}\" -> \"{}\";", s.source, s.node);
        let _ = writeln!(out, "  \"{}\" -> \"store:{}\" [dir=both];", s.node, s.store);
        let _ = writeln!(out, "  \"store:{}\" -> \"{}\" [style=dashed];", s.store, s.changelog);
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
        let _ = writeln!(out, "    {}[\"{} ({})\"]", id("p", s.node), s.node, s.kind);
        let _ = writeln!(out, "    {}[(\"{}\")]", id("s", s.store), s.store);
        let _ = writeln!(out, "  end");
        let _ = writeln!(out, "  {}([\"{}\"]) --> {}", id("t", s.source), s.source, id("p", s.node));
        let _ = writeln!(out, "  {} <--> {}", id("p", s.node), id("s", s.store));
        let _ = writeln!(out, "  {} -.-> {}([\"{}\"])", id("s", s.store), id("t", &s.changelog), s.changelog);
        for sink in &s.sinks {
            let _ = writeln!(out, "  {} --> {}([\"{sink}\"])", id("p", s.node), id("t", sink));
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
