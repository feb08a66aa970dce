//! From the file's schema to the model the runtime runs: every check that needs the whole
//! file (references between nodes, unique names, stores and inputs, protobuf messages,
//! co-partitioning), each reported at the key or value it is about, and all of them at
//! once, so a user fixes a file in one pass rather than one error per run.

use super::model::{AggregateNode, Awaits, JoinNode, JoinTable, ProjectionKind, ProjectionNode, RekeyNode, Store, TableNode, Topic, Topology};
use super::raw::{AggregateSpec, EventAction, ProjectionSpec, RawTopology, TableSpec};
use crate::readside::mapped::{Action, Expr, Mapping};
use crate::readside::Column;
use super::{names, Diagnostic, Position, Positions, TopicRole};
use crate::codec::Format;
use std::collections::BTreeMap;
use std::path::Path;

/// Checks `raw` and resolves its names; `positions` and `path` place the messages.
pub(super) fn validate(raw: RawTopology, positions: Positions, path: &Path) -> Result<Topology, Vec<Diagnostic>> {
    let mut c = Checker { positions: &positions, path, diagnostics: Vec::new() };
    let topology = c.model(&raw);
    c.internal_topics(&topology);
    let mut diagnostics = c.diagnostics;
    diagnostics.sort_by_key(|d| (d.at.line, d.at.column));
    diagnostics.dedup_by(|a, b| a.at == b.at && a.message == b.message);
    if diagnostics.is_empty() {
        Ok(Topology { positions, path: path.to_path_buf(), ..topology })
    } else {
        Err(diagnostics)
    }
}

struct Checker<'a> {
    positions: &'a Positions,
    path: &'a Path,
    diagnostics: Vec<Diagnostic>,
}

/// The column types a projection can write (`readside::postgres` converts to each).
const SQL_TYPES: [&str; 19] = [
    "text", "varchar", "bigint", "int8", "integer", "int", "int4", "smallint", "int2", "double precision", "float8",
    "real", "float4", "boolean", "bool", "timestamptz", "timestamp", "json", "jsonb",
];

/// A SQL identifier that needs no quoting to mean what it says (and `schema.table`).
fn is_sql_name(s: &str, qualified: bool) -> bool {
    let part = |p: &str| {
        p.len() <= 63 && p.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match s.split_once('.') {
        Some((schema, table)) if qualified => part(schema) && part(table),
        _ => part(s),
    }
}

/// Kafka's rule for topic names (and so for anything a topic name is derived from).
fn is_topic_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 249 && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl Checker<'_> {
    fn report(&mut self, (line, column): (usize, usize), message: String) {
        self.diagnostics.push(Diagnostic { at: Position { file: self.path.to_path_buf(), line, column }, message });
    }

    /// An error at the value of `path` (or its key).
    fn at_value(&mut self, path: &str, message: String) {
        self.report(self.positions.value(path).unwrap_or((1, 1)), message);
    }

    /// An error at the key of `path` (a name that is the problem).
    fn at_key(&mut self, path: &str, message: String) {
        self.report(self.positions.key(path).unwrap_or((1, 1)), message);
    }

    /// The names of `section`, in file order, so a conflict is reported at its second
    /// occurrence.
    fn in_file_order<'m, T>(&self, section: &str, map: &'m BTreeMap<String, T>) -> Vec<(&'m String, &'m T)> {
        let mut v: Vec<_> = map.iter().collect();
        v.sort_by_key(|(n, _)| self.positions.key(&format!("{section}.{n}")));
        v
    }

    /// The declared topic `name`, referred to at `at` by `who`.
    fn topic(&mut self, topics: &BTreeMap<String, Topic>, at: &str, who: &str, name: &str) -> Option<Topic> {
        let found = topics.get(name).cloned();
        if found.is_none() {
            self.at_value(at, format!("{who} {name:?} is not declared under `topics`; expected one of {:?}", topics.keys().collect::<Vec<_>>()));
        }
        found
    }

    fn model(&mut self, raw: &RawTopology) -> Topology {
        if raw.version != 1 {
            self.at_value("version", format!("unsupported version {}, expected 1", raw.version));
        }
        if !is_topic_name(&raw.application_id) {
            self.at_value("application_id", format!(
                "application_id {:?} must be non-empty and use only [A-Za-z0-9._-]: it prefixes topic names", raw.application_id));
        }
        let topics = self.topics(raw);
        let app = &raw.application_id;
        let store_of = |name: &str, changelog: String| Store { name: name.to_string(), spec: raw.stores.get(name).cloned().unwrap_or_default(), changelog };
        // Which node uses each store, and which node reads each input topic.
        let mut stores: BTreeMap<String, String> = BTreeMap::new();
        let mut inputs: BTreeMap<String, String> = BTreeMap::new();
        self.unique_node_names(raw);

        let mut aggregates = BTreeMap::new();
        for (node, a) in self.in_file_order("aggregates", &raw.aggregates) {
            if let Some(n) = self.aggregate(raw, &topics, node, a, &mut stores, &mut inputs) {
                aggregates.insert(node.clone(), AggregateNode { store: store_of(&a.store, names::changelog_topic(app, &a.store)), ..n });
            }
        }
        let mut tables = BTreeMap::new();
        for (node, t) in self.in_file_order("tables", &raw.tables) {
            let Some(topic) = self.table(&topics, "tables", node, t, &mut stores) else { continue };
            if let Some(other) = inputs.insert(topic.name.clone(), node.clone()) {
                self.at_value(&format!("tables.{node}.topic"), format!(
                    "table {node}: topic {:?} is already read by {other}; each input topic feeds one node", topic.name));
            }
            let changelog = if raw.stores.get(&t.store).is_none_or(|s| s.changelog) { names::changelog_topic(app, &t.store) } else { topic.name.clone() };
            let joined = raw.joins.values().any(|j| j.table == *node);
            tables.insert(node.clone(), TableNode { topic, store: store_of(&t.store, changelog), joined });
        }
        let mut global_tables = BTreeMap::new();
        for (node, g) in self.in_file_order("global_tables", &raw.global_tables) {
            let Some(topic) = self.table(&topics, "global_tables", node, g, &mut stores) else { continue };
            let changelog = topic.name.clone();
            global_tables.insert(node.clone(), TableNode { topic, store: store_of(&g.store, changelog), joined: false });
        }
        let rekeys = self.rekeys(raw, &topics, &tables, &mut inputs);
        let joins = self.joins(raw, &topics, &global_tables, &rekeys, &mut inputs);
        // Awaits resolve against the global tables, which are known only now.
        for (node, a) in aggregates.iter_mut() {
            let Some(aw) = raw.aggregates.get(node).and_then(|spec| spec.awaits.as_ref()) else { continue };
            match global_tables.get(&aw.table) {
                Some(g) => a.awaits = Some(Awaits { table: aw.table.clone(), global: g.clone(), timeout_ms: aw.timeout_ms }),
                None => self.at_value(&format!("aggregates.{node}.awaits.table"), format!(
                    "aggregate {node}: awaits {:?}, which is not a global table node; expected one of {:?}",
                    aw.table, raw.global_tables.keys().collect::<Vec<_>>())),
            }
        }
        self.stores(raw, &stores);
        let projections = self.projections(raw, &topics);
        self.outboxes(raw);
        if raw.aggregates.is_empty() && raw.tables.is_empty() && raw.rekeys.is_empty() && raw.joins.is_empty() && raw.global_tables.is_empty() && raw.projections.is_empty() && raw.outboxes.is_empty() {
            self.at_value("aggregates", "the topology has no nodes; expected at least one aggregate, table, projection or outbox".into());
        }
        self.processing(raw, &inputs);
        Topology {
            version: raw.version,
            application_id: raw.application_id.clone(),
            topics,
            aggregates,
            tables,
            rekeys,
            joins,
            global_tables,
            projections,
            outboxes: raw.outboxes.clone(),
            processing: raw.processing.clone(),
            rocksdb: raw.rocksdb.clone(),
            dead_letter: raw.dead_letter.clone(),
            http: raw.http.clone(),
            positions: Positions::default(),
            path: self.path.to_path_buf(),
        }
    }

    fn topics(&mut self, raw: &RawTopology) -> BTreeMap<String, Topic> {
        let known = crate::codec::proto::known_messages();
        let mut topics = BTreeMap::new();
        for (name, t) in &raw.topics {
            let at = |key: &str| format!("topics.{name}.{key}");
            if !is_topic_name(name) {
                self.at_key(&format!("topics.{name}"), format!(
                    "topic name {name:?} is not a valid Kafka topic name; expected only [A-Za-z0-9._-]"));
            }
            if t.partitions < 1 {
                self.at_value(&at("partitions"), format!("topic {name}: partitions must be at least 1, found {}", t.partitions));
            }
            if t.replication < 1 {
                self.at_value(&at("replication"), format!("topic {name}: replication must be at least 1, found {}", t.replication));
            }
            if let Some(message) = &t.message {
                if t.codec != Format::Protobuf {
                    self.at_value(&at("message"), format!(
                        "topic {name}: `message` names a protobuf message, but the topic's codec is {}", t.codec));
                } else if !known.contains(message) {
                    self.at_value(&at("message"), format!(
                        "topic {name}: unknown protobuf message {message:?}; this build knows {known:?}"));
                }
            }
            topics.insert(name.clone(), Topic {
                name: name.clone(),
                partitions: t.partitions,
                codec: t.codec,
                replication: t.replication,
                compacted: t.compacted,
                message: t.message.clone(),
            });
        }
        topics
    }

    /// Node names are unique across sections: they name routes and stores' owners.
    fn unique_node_names(&mut self, raw: &RawTopology) {
        let mut seen: Vec<(&str, &String)> = raw.aggregates.keys().map(|n| ("aggregates", n)).collect();
        for (section, names) in [
            ("tables", raw.tables.keys().collect::<Vec<_>>()),
            ("rekeys", raw.rekeys.keys().collect()),
            ("joins", raw.joins.keys().collect()),
            ("global_tables", raw.global_tables.keys().collect()),
            ("projections", raw.projections.keys().collect()),
            ("outboxes", raw.outboxes.keys().collect()),
        ] {
            for name in names {
                if let Some((other, _)) = seen.iter().find(|(_, n)| *n == name) {
                    let what = if *other == "aggregates" { "is already an aggregate".to_string() } else { format!("is already used under `{other}`") };
                    self.at_key(&format!("{section}.{name}"), format!("node name {name:?} {what}; node names are unique across sections"));
                }
                seen.push((section, name));
            }
        }
    }

    /// Checks one aggregate node; its topics resolved (the store is filled in by the caller).
    fn aggregate(
        &mut self,
        raw: &RawTopology,
        topics: &BTreeMap<String, Topic>,
        node: &str,
        a: &AggregateSpec,
        stores: &mut BTreeMap<String, String>,
        inputs: &mut BTreeMap<String, String>,
    ) -> Option<AggregateNode> {
        let at = |key: &str| format!("aggregates.{node}.{key}");
        let mut resolve = |key: &str, name: &str, envelope: &str| {
            let t = self.topic(topics, &at(key), &format!("aggregate {node}: {key} topic"), name)?;
            if let Some(m) = t.message.as_deref().filter(|m| *m != envelope) {
                self.at_value(&format!("topics.{name}.message"), format!(
                    "topic {name} carries aggregate {node}'s {key}, which are {envelope}, not {m}"));
            }
            Some(t)
        };
        let commands = resolve("commands", &a.commands, "millrace.envelope.CommandEnvelope");
        let events = resolve("events", &a.events, "millrace.envelope.EventEnvelope");
        let replies = resolve("replies", &a.replies, "millrace.envelope.Reply");
        for (key, topic) in [("events", &a.events), ("replies", &a.replies)] {
            if topic == &a.commands {
                self.at_value(&at(key), format!(
                    "aggregate {node}: {key} topic {topic:?} is its own command topic; the aggregate would read its own output"));
            }
        }
        if let Some(other) = inputs.insert(a.commands.clone(), node.to_string()) {
            self.at_value(&at("commands"), format!(
                "aggregate {node}: topic {:?} is already the command topic of aggregate {other}; each command topic has one aggregate", a.commands));
        }
        if !is_topic_name(&a.store) {
            self.at_value(&at("store"), format!(
                "aggregate {node}: store name {:?} must use only [A-Za-z0-9._-]: it names the changelog topic {:?}",
                a.store, names::changelog_topic(&raw.application_id, &a.store)));
        }
        if let Some(other) = stores.insert(a.store.clone(), node.to_string()) {
            self.at_value(&at("store"), format!(
                "aggregate {node}: store {:?} is already used by aggregate {other}; each aggregate needs its own store", a.store));
        }
        let spec = raw.stores.get(&a.store).cloned().unwrap_or_default();
        if !spec.changelog {
            self.at_value(&format!("stores.{}.changelog", a.store), format!(
                "store {} holds aggregate {node}'s snapshots and needs its changelog: without it a moved or lost task loses state", a.store));
        }
        if spec.retention_ms.is_some() {
            self.at_value(&format!("stores.{}.retention_ms", a.store), format!(
                "store {} holds aggregate {node}'s snapshots; retention would delete aggregates that are merely idle", a.store));
        }
        if a.dedup_window == 0 {
            self.at_value(&at("dedup_window"), format!(
                "aggregate {node}: dedup_window must be at least 1; it is how many answered command ids each aggregate remembers"));
        }
        if a.awaits.as_ref().is_some_and(|aw| aw.timeout_ms == 0) {
            self.at_value(&at("awaits.timeout_ms"), format!("aggregate {node}: awaits.timeout_ms must be at least 1"));
        }
        Some(AggregateNode {
            aggregate: a.aggregate.clone(),
            commands: commands?,
            events: events?,
            replies: replies?,
            store: Store { name: a.store.clone(), spec, changelog: String::new() },
            store_codec: a.store_codec,
            dedup_window: a.dedup_window,
            awaits: None,
            event_history: a.event_history,
        })
    }

    /// Checks a table or global table node: its topic, and its store's name and owner.
    fn table(
        &mut self,
        topics: &BTreeMap<String, Topic>,
        section: &str,
        node: &str,
        t: &TableSpec,
        stores: &mut BTreeMap<String, String>,
    ) -> Option<Topic> {
        let what = if section == "tables" { "table" } else { "global table" };
        let at = |key: &str| format!("{section}.{node}.{key}");
        let topic = self.topic(topics, &at("topic"), &format!("{what} {node}: topic"), &t.topic);
        if !is_topic_name(&t.store) {
            self.at_value(&at("store"), format!(
                "{what} {node}: store name {:?} must use only [A-Za-z0-9._-]: it names the changelog topic", t.store));
        }
        if let Some(other) = stores.insert(t.store.clone(), node.to_string()) {
            self.at_value(&at("store"), format!("{what} {node}: store {:?} is already used by {other}; each node needs its own store", t.store));
        }
        topic
    }

    fn rekeys(
        &mut self,
        raw: &RawTopology,
        topics: &BTreeMap<String, Topic>,
        tables: &BTreeMap<String, TableNode>,
        inputs: &mut BTreeMap<String, String>,
    ) -> BTreeMap<String, RekeyNode> {
        let mut out = BTreeMap::new();
        for (node, r) in self.in_file_order("rekeys", &raw.rekeys) {
            let at = |key: &str| format!("rekeys.{node}.{key}");
            let from = self.topic(topics, &at("from"), &format!("rekey {node}: topic"), &r.from);
            if from.as_ref().is_some_and(|t| t.codec != Format::Json) {
                self.at_value(&at("from"), format!(
                    "rekey {node}: topic {} must use the json codec to read field {:?} from its values", r.from, r.key_field));
            }
            let into = tables.get(&r.into);
            if into.is_none() && !raw.tables.contains_key(&r.into) {
                self.at_value(&at("into"), format!(
                    "rekey {node}: {:?} is not a table node; expected one of {:?}", r.into, raw.tables.keys().collect::<Vec<_>>()));
            }
            if let Some(other) = inputs.insert(r.from.clone(), node.clone()) {
                self.at_value(&at("from"), format!(
                    "rekey {node}: topic {:?} is already read by {other}; each input topic feeds one node", r.from));
            }
            let (Some(from), Some(into)) = (from, into) else { continue };
            let repartition = Topic {
                name: names::repartition_topic(&raw.application_id, node),
                compacted: false,
                message: None,
                codec: Format::Json,
                ..into.topic.clone()
            };
            out.insert(node.clone(), RekeyNode { from, key_field: r.key_field.clone(), into: r.into.clone(), repartition });
        }
        out
    }

    fn joins(
        &mut self,
        raw: &RawTopology,
        topics: &BTreeMap<String, Topic>,
        global_tables: &BTreeMap<String, TableNode>,
        rekeys: &BTreeMap<String, RekeyNode>,
        inputs: &mut BTreeMap<String, String>,
    ) -> BTreeMap<String, JoinNode> {
        let mut out = BTreeMap::new();
        for (node, j) in self.in_file_order("joins", &raw.joins) {
            let at = |key: &str| format!("joins.{node}.{key}");
            let output = self.topic(topics, &at("output"), &format!("join {node}: output topic"), &j.output);
            let resolved = if raw.global_tables.contains_key(&j.table) {
                if j.key_field.is_none() {
                    self.at_value(&at("table"), format!(
                        "join {node}: joining global table {} needs `key_field`, the stream field that holds the join key", j.table));
                }
                if !topics.contains_key(&j.stream) {
                    self.at_value(&at("stream"), format!(
                        "join {node}: a global-table join reads a declared topic directly; {:?} is not one", j.stream));
                }
                let global = global_tables.get(&j.table).cloned();
                global.zip(j.key_field.clone()).map(|(global, key_field)| (j.stream.clone(), JoinTable::Global { node: j.table.clone(), global, key_field }))
            } else {
                if j.key_field.is_some() {
                    self.at_value(&at("key_field"), format!(
                        "join {node}: `key_field` is for global tables; a co-partitioned join uses the record key (re-key the stream first)"));
                }
                match raw.tables.get(&j.table) {
                    None => {
                        self.at_value(&at("table"), format!(
                            "join {node}: {:?} is not a table or global table node; expected one of {:?}",
                            j.table, raw.tables.keys().chain(raw.global_tables.keys()).collect::<Vec<_>>()));
                        None
                    }
                    Some(spec) => self.co_partitioned_stream(raw, topics, rekeys, node, &j.stream, &j.table, spec).map(|stream_topic| {
                        (stream_topic, JoinTable::Table { node: j.table.clone(), topic: spec.topic.clone(), store: spec.store.clone() })
                    }),
                }
            };
            let Some((stream_topic, table)) = resolved else { continue };
            if let Some(other) = inputs.insert(stream_topic.clone(), node.clone()) {
                self.at_value(&at("stream"), format!(
                    "join {node}: topic {stream_topic:?} is already read by {other}; each input topic feeds one node"));
            }
            let Some(output) = output else { continue };
            out.insert(node.clone(), JoinNode { stream: j.stream.clone(), stream_topic, table, kind: j.kind, output });
        }
        out
    }

    /// The topic a co-partitioned join reads its stream from, checked against the table's
    /// partitioning.
    fn co_partitioned_stream(
        &mut self,
        raw: &RawTopology,
        topics: &BTreeMap<String, Topic>,
        rekeys: &BTreeMap<String, RekeyNode>,
        node: &str,
        stream: &str,
        table: &str,
        spec: &TableSpec,
    ) -> Option<String> {
        let at = |key: &str| format!("joins.{node}.{key}");
        if let Some(r) = raw.rekeys.get(stream) {
            if r.into != table {
                self.at_value(&at("table"), format!("join {node}: rekey {stream} is partitioned for table {}, not {table}", r.into));
            }
            return rekeys.get(stream).map(|r| r.repartition.name.clone());
        }
        let Some(t) = topics.get(stream) else {
            self.at_value(&at("stream"), format!("join {node}: {stream:?} is neither a rekey node nor a declared topic"));
            return None;
        };
        let table_partitions = topics.get(&spec.topic)?.partitions;
        if t.partitions != table_partitions {
            self.at_value(&at("stream"), format!(
                "join {node}: stream topic {stream} has {} partitions but table topic {} has {table_partitions}; co-partitioned inputs need equal counts (re-key the stream into the table instead)",
                t.partitions, spec.topic));
        }
        Some(stream.to_string())
    }

    fn stores(&mut self, raw: &RawTopology, used: &BTreeMap<String, String>) {
        for (name, spec) in &raw.stores {
            for (i, field) in spec.indexes.iter().enumerate() {
                if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    self.at_value(&format!("stores.{name}.indexes.{i}"), format!(
                        "store {name}: index {field:?} must name a top-level field: [A-Za-z0-9_]+"));
                }
            }
            if !used.contains_key(name) {
                self.at_key(&format!("stores.{name}"), format!(
                    "store {name:?} is declared but no node uses it; expected one of {:?}", used.keys().collect::<Vec<_>>()));
            }
        }
    }

    fn processing(&mut self, raw: &RawTopology, inputs: &BTreeMap<String, String>) {
        let p = &raw.processing;
        if p.commit_interval_ms == 0 {
            self.at_value("processing.commit_interval_ms", "commit_interval_ms must be at least 1: a commit per record is what batching avoids".into());
        }
        match p.min_commit_interval_ms {
            Some(0) => self.at_value("processing.min_commit_interval_ms", "min_commit_interval_ms must be at least 1: a commit per record is what batching avoids".into()),
            Some(min) if min > p.commit_interval_ms => self.at_value(
                "processing.min_commit_interval_ms",
                format!("min_commit_interval_ms ({min}) must not exceed commit_interval_ms ({})", p.commit_interval_ms),
            ),
            _ => {}
        }
        if p.threads == 0 || p.threads > 64 {
            self.at_value("processing.threads", format!("threads must be between 1 and 64, found {}", p.threads));
        }
        if p.task_timeout_ms == 0 {
            self.at_value("processing.task_timeout_ms", "task_timeout_ms must be at least 1".into());
        }
        if p.max_batch_records == 0 {
            self.at_value("processing.max_batch_records", "max_batch_records must be at least 1".into());
        }
        let dlq = raw.dead_letter.topic.clone().unwrap_or_else(|| names::dead_letter_topic(&raw.application_id));
        if inputs.contains_key(&dlq) {
            self.at_value("dead_letter.topic", format!("dead-letter topic {dlq:?} is an input topic; dead letters would be processed again"));
        }
        if raw.http.listen.parse::<std::net::SocketAddr>().is_err() {
            self.at_value("http.listen", format!(
                "http.listen {:?} is not a socket address; expected host:port such as 127.0.0.1:8080", raw.http.listen));
        }
    }

    /// Internal topics derive their partition counts; one declared under `topics` must agree.
    fn projections(&mut self, raw: &RawTopology, topics: &BTreeMap<String, Topic>) -> BTreeMap<String, ProjectionNode> {
        let mut out = BTreeMap::new();
        for (node, p) in self.in_file_order("projections", &raw.projections) {
            let at = format!("projections.{node}");
            if !is_topic_name(node) {
                self.at_key(&at, format!("projection name {node:?} must use only [A-Za-z0-9._-]: it names the consumer group `<application_id>-projection-{node}`"));
            }
            if p.from.is_empty() {
                self.at_value(&format!("{at}.from"), format!("projection {node}: `from` is empty; expected the event topics it reads"));
            }
            let mut from = Vec::new();
            for (i, name) in p.from.iter().enumerate() {
                let Some(topic) = self.topic(topics, &format!("{at}.from.{i}"), &format!("projection {node}: topic"), name) else { continue };
                if topic.codec != Format::Json {
                    self.at_value(&format!("{at}.from.{i}"), format!("projection {node}: topic {name} is {:?}; projections read JSON topics", topic.codec));
                }
                from.push(topic);
            }
            let kind = match (&p.projection, &p.table) {
                (Some(name), None) => {
                    for (field, set) in [("key", p.key.is_some()), ("version", p.version.is_some()), ("columns", !p.columns.is_empty()), ("events", !p.events.is_empty())] {
                        if set {
                            self.at_key(&format!("{at}.{field}"), format!("projection {node}: `{field}` belongs to a mapping, but this projection is the registered {name:?}"));
                        }
                    }
                    Some(ProjectionKind::Registered(name.clone()))
                }
                (None, Some(_)) => self.mapping(&at, node, p).map(ProjectionKind::Mapped),
                (Some(_), Some(_)) => {
                    self.at_key(&format!("{at}.table"), format!("projection {node}: give either `projection` (a registered one) or a mapping (`table`, `key`, `columns`, `events`), not both"));
                    None
                }
                (None, None) => {
                    self.at_key(&at, format!("projection {node}: expected `projection` (a registered one) or a mapping (`table`, `key`, `columns`, `events`)"));
                    None
                }
            };
            if p.max_batch_records == 0 || p.commit_interval_ms == 0 {
                self.at_key(&at, format!("projection {node}: `max_batch_records` and `commit_interval_ms` must be at least 1"));
            }
            if let Some(kind) = kind {
                out.insert(node.clone(), ProjectionNode { from, kind, commit_interval_ms: p.commit_interval_ms, max_batch_records: p.max_batch_records });
            }
        }
        out
    }

    fn outboxes(&mut self, raw: &RawTopology) {
        for (node, o) in self.in_file_order("outboxes", &raw.outboxes) {
            let at = format!("outboxes.{node}");
            if !is_topic_name(node) {
                self.at_key(&at, format!("outbox name {node:?} must use only [A-Za-z0-9._-]: it names the group and transactional id `<application_id>-outbox-{node}`"));
            }
            if !is_sql_name(&o.table, true) {
                self.at_value(&format!("{at}.table"), format!("outbox {node}: table {:?} is not a plain SQL name; expected letters, digits and _, optionally schema.table", o.table));
            }
            if o.max_batch_rows == 0 || o.poll_interval_ms == 0 {
                self.at_key(&at, format!("outbox {node}: `max_batch_rows` and `poll_interval_ms` must be at least 1"));
            }
        }
    }

    /// A declarative projection: its table, columns and event actions.
    fn mapping(&mut self, at: &str, node: &str, p: &ProjectionSpec) -> Option<Mapping> {
        let before = self.diagnostics.len();
        let table = p.table.clone().unwrap_or_default();
        if !is_sql_name(&table, true) {
            self.at_value(&format!("{at}.table"), format!("projection {node}: table {table:?} is not a plain SQL name; expected letters, digits and _, optionally schema.table"));
        }
        let mut columns = Vec::new();
        for (name, ty) in &p.columns {
            let path = format!("{at}.columns.{name}");
            if !is_sql_name(name, false) {
                self.at_key(&path, format!("projection {node}: column {name:?} is not a plain SQL name; expected letters, digits and _"));
            }
            let sql_type = ty.as_str().map(|t| t.trim().to_ascii_lowercase()).unwrap_or_default();
            if !SQL_TYPES.contains(&sql_type.as_str()) {
                self.at_value(&path, format!("projection {node}: column {name}: type {ty} is not one millrace writes; expected one of {SQL_TYPES:?}"));
            }
            // Kept even when its type is wrong, so the events naming it raise no second error.
            columns.push(Column { name: name.clone(), sql_type });
        }
        let Some(key_name) = p.key.clone() else {
            self.at_key(at, format!("projection {node}: a mapping needs `key`, the column the record key fills"));
            return None;
        };
        if !is_sql_name(&key_name, false) {
            self.at_value(&format!("{at}.key"), format!("projection {node}: key column {key_name:?} is not a plain SQL name"));
        }
        // The key column's type may be declared among the columns; it is text otherwise.
        let key = match columns.iter().position(|c| c.name == key_name) {
            Some(i) => columns.remove(i),
            None => Column { name: key_name.clone(), sql_type: "text".into() },
        };
        if let Some(v) = &p.version {
            if !is_sql_name(v, false) || *v == key_name {
                self.at_value(&format!("{at}.version"), format!("projection {node}: version column {v:?} must be a plain SQL name other than the key"));
            }
            if let Some(i) = columns.iter().position(|c| c.name == *v) {
                if !matches!(columns[i].sql_type.as_str(), "bigint" | "int8") {
                    self.at_value(&format!("{at}.columns.{v}"), format!("projection {node}: the version column {v} is a bigint"));
                }
                columns.remove(i);
            }
        }
        if p.events.is_empty() {
            self.at_key(at, format!("projection {node}: a mapping needs `events`: for each event type, `upsert: {{column: value}}` or `delete`"));
        }
        let mut events = BTreeMap::new();
        for (ty, action) in &p.events {
            let path = format!("{at}.events.{ty}");
            let action = match action {
                EventAction::Delete => Action::Delete,
                EventAction::Upsert(set) => {
                    let mut out = Vec::new();
                    for (column, written) in set {
                        let cpath = format!("{path}.upsert.{column}");
                        if *column == key_name || p.version.as_deref() == Some(column) {
                            self.at_key(&cpath, format!("projection {node}: column {column} is filled by millrace (the key, or the version); leave it out"));
                        } else if !columns.iter().any(|c| c.name == *column) {
                            self.at_key(&cpath, format!("projection {node}: column {column} is not under `columns`; expected one of {:?}",
                                columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>()));
                        }
                        match Expr::parse(written) {
                            Ok(e) => out.push((column.clone(), e)),
                            Err(e) => self.at_value(&cpath, format!("projection {node}: {e}")),
                        }
                    }
                    Action::Upsert(out)
                }
            };
            events.insert(ty.clone(), action);
        }
        (self.diagnostics.len() == before).then(|| Mapping { table, key, version: p.version.clone(), columns, events })
    }

    fn internal_topics(&mut self, t: &Topology) {
        for need in t.topic_needs().iter().filter(|n| matches!(n.role, TopicRole::Changelog | TopicRole::Repartition)) {
            if let Some(declared) = t.topics.get(&need.name).filter(|d| d.partitions != need.partitions) {
                self.at_value(&format!("topics.{}.partitions", need.name), format!(
                    "topic {} is internal ({:?}) and must have {} partitions to stay co-partitioned with its input, found {}",
                    need.name, need.role, need.partitions, declared.partitions));
            }
        }
    }
}
