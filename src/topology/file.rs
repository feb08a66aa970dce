//! The topology file schema (serde, `deny_unknown_fields` everywhere) and the checks that
//! need the whole file: references between nodes, registered names, co-partitioning.

use super::{names, Position, Positions, TopologyError};
use crate::codec::Format;
use crate::store::StoreTuning;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A whole topology file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Schema version of this file. Only 1 exists.
    pub version: u32,
    /// Consumer group id, transactional id prefix and internal topic prefix.
    pub application_id: String,
    /// Every topic the application reads or writes, by name.
    pub topics: BTreeMap<String, TopicSpec>,
    /// Event-sourced aggregates, by node name.
    #[serde(default)]
    pub aggregates: BTreeMap<String, AggregateNode>,
    /// Tables: a topic's latest value per key, materialized in a queryable store.
    #[serde(default)]
    pub tables: BTreeMap<String, TableNode>,
    /// Re-key nodes: a new key from a value field, through a repartition topic.
    #[serde(default)]
    pub rekeys: BTreeMap<String, RekeyNode>,
    /// Stream–table joins: co-partitioned with a table, or against a global table.
    #[serde(default)]
    pub joins: BTreeMap<String, JoinNode>,
    /// Global tables: the whole topic on every instance, outside the consumer group.
    #[serde(default)]
    pub global_tables: BTreeMap<String, TableNode>,
    #[serde(default)]
    pub processing: Processing,
    /// Options of named stores; a store a node names but this map omits gets the defaults.
    #[serde(default)]
    pub stores: BTreeMap<String, StoreSpec>,
    /// RocksDB memory shared by every store of an instance.
    #[serde(default)]
    pub rocksdb: StoreTuning,
    #[serde(default)]
    pub dead_letter: DeadLetter,
    #[serde(default)]
    pub http: HttpSettings,
    /// Where each key and value sits in the file, for messages after parsing.
    #[serde(skip)]
    pub positions: Positions,
    /// The file it was read from, for messages.
    #[serde(skip)]
    pub path: std::path::PathBuf,
}

/// One topic.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Partition count; created with this count when missing.
    pub partitions: i32,
    /// Wire format of the values.
    #[serde(default = "default_codec")]
    pub codec: Format,
    /// Replication factor used when millrace creates the topic.
    #[serde(default = "default_replication")]
    pub replication: i32,
    /// Create it with `cleanup.policy=compact` (the usual choice for a table's input).
    #[serde(default)]
    pub compacted: bool,
    /// For a protobuf topic: the fully qualified message its values are, e.g.
    /// `millrace.envelope.CommandEnvelope`. Checked against the schemas this build knows
    /// and against what the reading or writing node expects.
    #[serde(default)]
    pub message: Option<String>,
}

fn default_codec() -> Format {
    Format::Json
}
fn default_replication() -> i32 {
    1
}

/// An aggregate node: commands in, events + replies out, snapshots in a store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateNode {
    /// The name the binary registered the aggregate under (e.g. `customer`).
    pub aggregate: String,
    /// Command topic; its key is the aggregate id.
    pub commands: String,
    /// Events topic.
    pub events: String,
    /// Default reply topic (a `reply-to` header overrides it per command).
    pub replies: String,
    /// Snapshot store name; its changelog is `<application_id>-<store>-changelog`.
    pub store: String,
    /// Format of the snapshot state in the store and changelog. Internal to millrace, so
    /// by default the compact one: protobuf when the aggregate has a schema, else JSON.
    #[serde(default)]
    pub store_codec: Option<Format>,
    /// Answered command ids each aggregate remembers for dedup.
    #[serde(default = "default_dedup_window")]
    pub dedup_window: usize,
    /// Lets the aggregate wait for keys of a global table (an order for products not yet
    /// created): see `Aggregate::awaiting`.
    #[serde(default)]
    pub awaits: Option<AwaitsSpec>,
    /// Keep each aggregate's events in its store, for `GET /aggregates/{type}/{id}/events`.
    /// Off by default: it is one more RocksDB write per event (a third fewer commands per
    /// second with 1 KB events on 2 cores, see docs/operations.md).
    #[serde(default)]
    pub event_history: bool,
}

/// The stash of an aggregate: which global table its waits look in, and for how long.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AwaitsSpec {
    /// A global table node.
    pub table: String,
    /// Event time from the start of a wait until it fails, in milliseconds.
    pub timeout_ms: u64,
    /// A wait fails only once the table has reached its deadline: every partition past it,
    /// or at its end for this long while this instance processes (nothing more is coming
    /// from upstream). Raise it if the table's writer can stall for longer.
    #[serde(default = "default_quiet_ms")]
    pub quiet_ms: u64,
}

fn default_quiet_ms() -> u64 {
    2_000
}

/// Options of one store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    /// Keep a compacted changelog topic. A table may turn it off: its input topic then
    /// serves as the changelog (restore re-reads it from the store's checkpoint). An
    /// aggregate's snapshots always need one.
    #[serde(default = "default_true")]
    pub changelog: bool,
    /// Delete changelog records older than this (cleanup.policy=compact,delete): a table
    /// that forgets keys not updated for that long. Not for aggregate snapshots.
    #[serde(default)]
    pub retention_ms: Option<u64>,
    /// Secondary indexes: top-level fields of the stored state (an aggregate's snapshot
    /// state, a table's value) to look keys up by, e.g. `[status]`.
    #[serde(default)]
    pub indexes: Vec<String>,
    /// For a table a join reads, and a global table: how much event time of past values
    /// to keep per key, behind its newest one, for lookups as of a record's time.
    #[serde(default = "default_history_ms")]
    pub history_ms: u64,
}

fn default_history_ms() -> u64 {
    24 * 60 * 60 * 1000
}

impl Default for StoreSpec {
    fn default() -> Self {
        Self { changelog: true, retention_ms: None, indexes: Vec::new(), history_ms: default_history_ms() }
    }
}

/// A re-key node: records of `from` get the value of `key_field` as their key and go to
/// the repartition topic `<application_id>-<node>-repartition`, which has the partition
/// count of the topic of table `into`, so they meet that table co-partitioned.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RekeyNode {
    /// Input topic (JSON values).
    pub from: String,
    /// Top-level field of the value that becomes the key.
    pub key_field: String,
    /// The table node the re-keyed stream is joined with.
    pub into: String,
}

/// A stream–table join: each record of `stream` (a re-key node, or a topic already keyed
/// and partitioned like the table's) looks its key up in `table`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JoinNode {
    /// A re-key node or a declared topic.
    pub stream: String,
    /// A table node.
    pub table: String,
    /// `inner` drops records without a match; `left` emits them with `"table": null`.
    #[serde(default = "default_join_kind")]
    pub kind: crate::processor::JoinKind,
    /// Output topic (declared under `topics`).
    pub output: String,
    /// With a global table only: the stream value field that holds the join key (no
    /// repartitioning needed, since every instance holds the whole table).
    #[serde(default)]
    pub key_field: Option<String>,
}

fn default_join_kind() -> crate::processor::JoinKind {
    crate::processor::JoinKind::Inner
}

/// A table node: the latest value per key of `topic`, kept in `store`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableNode {
    /// The topic to materialize (usually compacted); declared under `topics`.
    pub topic: String,
    /// Store name; its changelog is `<application_id>-<store>-changelog`.
    pub store: String,
}

fn default_dedup_window() -> usize {
    32
}

/// How transactions are cut.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Processing {
    /// A transaction commits at least this often, in milliseconds.
    #[serde(default = "default_commit_interval")]
    pub commit_interval_ms: u64,
    /// ... or as soon as it holds this many input records.
    #[serde(default = "default_max_batch")]
    pub max_batch_records: usize,
    /// Processing threads per instance. Each is a member of the group with its own
    /// consumer and transactional producer, and owns the tasks of its partitions.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// true: every batch is one Kafka transaction (outputs, changelog and offsets commit
    /// together). false: at-least-once; outputs are flushed, then stores written, then
    /// offsets committed, and a crash can repeat a batch's outputs.
    #[serde(default = "default_true")]
    pub exactly_once: bool,
    /// How long a join's input with records waits for its other input (table or stream)
    /// when that one has nothing buffered, so the two are read in timestamp order. 0: never
    /// wait (lowest latency; a replay may then see the table later than live processing did).
    #[serde(default)]
    pub max_task_idle_ms: u64,
    /// Warm copies of each store partition on this many other instances, kept by tailing
    /// the changelog: a failover restores only the tail. 0: none.
    #[serde(default)]
    pub standby_replicas: usize,
}

fn default_true() -> bool {
    true
}

fn default_threads() -> usize {
    1
}

fn default_commit_interval() -> u64 {
    100
}
fn default_max_batch() -> usize {
    10_000
}

impl Default for Processing {
    fn default() -> Self {
        Self { commit_interval_ms: default_commit_interval(), max_batch_records: default_max_batch(), threads: default_threads(), exactly_once: true, max_task_idle_ms: 0, standby_replicas: 0 }
    }
}

/// Where records that cannot be processed go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    /// Topic name; default `<application_id>-dead-letters`.
    pub topic: Option<String>,
    /// Partitions of the dead-letter topic when millrace creates it.
    #[serde(default = "one")]
    pub partitions: i32,
}

fn one() -> i32 {
    1
}

impl Default for DeadLetter {
    fn default() -> Self {
        Self { topic: None, partitions: one() }
    }
}

/// The query server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Listen address; `--http` overrides it.
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { listen: default_listen() }
    }
}

impl Topology {
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter.topic.clone().unwrap_or_else(|| names::dead_letter_topic(&self.application_id))
    }

    pub fn changelog_topic(&self, store: &str) -> String {
        names::changelog_topic(&self.application_id, store)
    }

    pub fn members_topic(&self) -> String {
        names::members_topic(&self.application_id)
    }

    pub fn repartition_topic(&self, rekey_node: &str) -> String {
        names::repartition_topic(&self.application_id, rekey_node)
    }

    /// The topic a join reads its stream from: a re-key node's repartition topic, or a
    /// declared topic.
    pub fn join_stream_topic(&self, join: &JoinNode) -> String {
        if self.rekeys.contains_key(&join.stream) {
            self.repartition_topic(&join.stream)
        } else {
            join.stream.clone()
        }
    }

    /// The options of `store`: declared under `stores`, or the defaults.
    pub fn store_spec(&self, store: &str) -> StoreSpec {
        self.stores.get(store).cloned().unwrap_or_default()
    }

    /// An error at the value of `path` (or its key), as `file:line:col: message`.
    pub fn error_at(&self, path: &str, message: String) -> TopologyError {
        let (line, column) = self.positions.value(path).unwrap_or((1, 1));
        TopologyError::Invalid { at: Position { file: self.path.clone(), line, column }, message }
    }

    /// Checks that need the whole file, each reported at the value it is about.
    pub(super) fn validate(&self) -> Result<(), TopologyError> {
        if self.version != 1 {
            return Err(self.error_at("version", format!("unsupported version {}, expected 1", self.version)));
        }
        if !is_topic_name(&self.application_id) {
            return Err(self.error_at("application_id", format!(
                "application_id {:?} must be non-empty and use only [A-Za-z0-9._-]: it prefixes topic names",
                self.application_id)));
        }
        for (name, t) in &self.topics {
            if !is_topic_name(name) {
                return Err(TopologyError::Invalid {
                    at: self.key_position(&format!("topics.{name}")),
                    message: format!("topic name {name:?} is not a valid Kafka topic name; expected only [A-Za-z0-9._-]"),
                });
            }
            if t.partitions < 1 {
                return Err(self.error_at(&format!("topics.{name}.partitions"), format!(
                    "topic {name}: partitions must be at least 1, found {}", t.partitions)));
            }
            if t.replication < 1 {
                return Err(self.error_at(&format!("topics.{name}.replication"), format!(
                    "topic {name}: replication must be at least 1, found {}", t.replication)));
            }
        }
        let known = crate::codec::proto::known_messages();
        for (name, t) in &self.topics {
            let Some(message) = &t.message else { continue };
            let at = format!("topics.{name}.message");
            if t.codec != Format::Protobuf {
                return Err(self.error_at(&at, format!(
                    "topic {name}: `message` names a protobuf message, but the topic's codec is {}", t.codec)));
            }
            if !known.contains(message) {
                return Err(self.error_at(&at, format!(
                    "topic {name}: unknown protobuf message {message:?}; this build knows {known:?}")));
            }
        }
        let mut stores = BTreeMap::new();
        let mut command_topics = BTreeMap::new();
        // In file order, so a conflict is reported at its second occurrence.
        let mut nodes: Vec<(&String, &AggregateNode)> = self.aggregates.iter().collect();
        nodes.sort_by_key(|(n, _)| self.positions.key(&format!("aggregates.{n}")));
        for (node, a) in nodes {
            let at = |key: &str| format!("aggregates.{node}.{key}");
            for (key, topic) in [("commands", &a.commands), ("events", &a.events), ("replies", &a.replies)] {
                if !self.topics.contains_key(topic) {
                    return Err(self.error_at(&at(key), format!(
                        "aggregate {node}: {key} topic {topic:?} is not declared under `topics`; expected one of {:?}",
                        self.topics.keys().collect::<Vec<_>>())));
                }
            }
            for (key, topic, envelope) in [
                ("commands", &a.commands, "millrace.envelope.CommandEnvelope"),
                ("events", &a.events, "millrace.envelope.EventEnvelope"),
                ("replies", &a.replies, "millrace.envelope.Reply"),
            ] {
                if let Some(m) = self.topics[topic].message.as_deref().filter(|m| *m != envelope) {
                    return Err(self.error_at(&format!("topics.{topic}.message"), format!(
                        "topic {topic} carries aggregate {node}'s {key}, which are {envelope}, not {m}")));
                }
            }
            for (key, topic) in [("events", &a.events), ("replies", &a.replies)] {
                if topic == &a.commands {
                    return Err(self.error_at(&at(key), format!(
                        "aggregate {node}: {key} topic {topic:?} is its own command topic; the aggregate would read its own output")));
                }
            }
            if let Some(other) = command_topics.insert(a.commands.clone(), node.clone()) {
                return Err(self.error_at(&at("commands"), format!(
                    "aggregate {node}: topic {:?} is already the command topic of aggregate {other}; each command topic has one aggregate",
                    a.commands)));
            }
            if !is_topic_name(&a.store) {
                return Err(self.error_at(&at("store"), format!(
                    "aggregate {node}: store name {:?} must use only [A-Za-z0-9._-]: it names the changelog topic {:?}",
                    a.store, self.changelog_topic(&a.store))));
            }
            if let Some(other) = stores.insert(a.store.clone(), node.clone()) {
                return Err(self.error_at(&at("store"), format!(
                    "aggregate {node}: store {:?} is already used by aggregate {other}; each aggregate needs its own store",
                    a.store)));
            }
            let spec = self.store_spec(&a.store);
            if !spec.changelog {
                return Err(self.error_at(&format!("stores.{}.changelog", a.store), format!(
                    "store {} holds aggregate {node}'s snapshots and needs its changelog: without it a moved or lost task loses state",
                    a.store)));
            }
            if spec.retention_ms.is_some() {
                return Err(self.error_at(&format!("stores.{}.retention_ms", a.store), format!(
                    "store {} holds aggregate {node}'s snapshots; retention would delete aggregates that are merely idle",
                    a.store)));
            }
            if a.dedup_window == 0 {
                return Err(self.error_at(&at("dedup_window"), format!(
                    "aggregate {node}: dedup_window must be at least 1; it is how many answered command ids each aggregate remembers")));
            }
            if let Some(aw) = &a.awaits {
                if !self.global_tables.contains_key(&aw.table) {
                    return Err(self.error_at(&at("awaits.table"), format!(
                        "aggregate {node}: awaits {:?}, which is not a global table node; expected one of {:?}",
                        aw.table, self.global_tables.keys().collect::<Vec<_>>())));
                }
                if aw.timeout_ms == 0 {
                    return Err(self.error_at(&at("awaits.timeout_ms"), format!(
                        "aggregate {node}: awaits.timeout_ms must be at least 1")));
                }
            }
        }
        let mut tables: Vec<(&String, &TableNode)> = self.tables.iter().collect();
        tables.sort_by_key(|(n, _)| self.positions.key(&format!("tables.{n}")));
        for (node, t) in tables {
            let at = |key: &str| format!("tables.{node}.{key}");
            if self.aggregates.contains_key(node.as_str()) {
                return Err(TopologyError::Invalid {
                    at: self.key_position(&format!("tables.{node}")),
                    message: format!("node name {node:?} is already an aggregate; node names are unique across sections"),
                });
            }
            if !self.topics.contains_key(&t.topic) {
                return Err(self.error_at(&at("topic"), format!(
                    "table {node}: topic {:?} is not declared under `topics`; expected one of {:?}",
                    t.topic, self.topics.keys().collect::<Vec<_>>())));
            }
            if let Some(other) = command_topics.insert(t.topic.clone(), node.clone()) {
                return Err(self.error_at(&at("topic"), format!(
                    "table {node}: topic {:?} is already read by {other}; each input topic feeds one node", t.topic)));
            }
            if !is_topic_name(&t.store) {
                return Err(self.error_at(&at("store"), format!(
                    "table {node}: store name {:?} must use only [A-Za-z0-9._-]: it names the changelog topic", t.store)));
            }
            if let Some(other) = stores.insert(t.store.clone(), node.clone()) {
                return Err(self.error_at(&at("store"), format!(
                    "table {node}: store {:?} is already used by {other}; each node needs its own store", t.store)));
            }
        }
        self.validate_rekeys_and_joins(&mut command_topics)?;
        for (name, spec) in &self.stores {
            for (i, field) in spec.indexes.iter().enumerate() {
                if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(self.error_at(&format!("stores.{name}.indexes.{i}"), format!(
                        "store {name}: index {field:?} must name a top-level field: [A-Za-z0-9_]+")));
                }
            }
            if !stores.contains_key(name) {
                return Err(TopologyError::Invalid {
                    at: self.key_position(&format!("stores.{name}")),
                    message: format!("store {name:?} is declared but no node uses it; expected one of {:?}", stores.keys().collect::<Vec<_>>()),
                });
            }
        }
        if self.aggregates.is_empty() && self.tables.is_empty() && self.rekeys.is_empty() && self.joins.is_empty() && self.global_tables.is_empty() {
            return Err(self.error_at("aggregates", "the topology has no nodes; expected at least one aggregate or table".into()));
        }
        // Internal topics derive their partition counts; one declared under `topics` must agree.
        for need in self.topic_needs().iter().filter(|n| matches!(n.role, super::TopicRole::Changelog | super::TopicRole::Repartition)) {
            if let Some(declared) = self.topics.get(&need.name) {
                if declared.partitions != need.partitions {
                    return Err(self.error_at(&format!("topics.{}.partitions", need.name), format!(
                        "topic {} is internal ({:?}) and must have {} partitions to stay co-partitioned with its input, found {}",
                        need.name, need.role, need.partitions, declared.partitions)));
                }
            }
        }
        if self.processing.commit_interval_ms == 0 {
            return Err(self.error_at("processing.commit_interval_ms",
                "commit_interval_ms must be at least 1: a commit per record is what batching avoids".into()));
        }
        if self.processing.threads == 0 || self.processing.threads > 64 {
            return Err(self.error_at("processing.threads", format!(
                "threads must be between 1 and 64, found {}", self.processing.threads)));
        }
        if self.processing.max_batch_records == 0 {
            return Err(self.error_at("processing.max_batch_records", "max_batch_records must be at least 1".into()));
        }
        let dlq = self.dead_letter_topic();
        if command_topics.contains_key(&dlq) {
            return Err(self.error_at("dead_letter.topic", format!(
                "dead-letter topic {dlq:?} is a command topic; dead letters would be processed again")));
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(self.error_at("http.listen", format!(
                "http.listen {:?} is not a socket address; expected host:port such as 127.0.0.1:8080", self.http.listen)));
        }
        Ok(())
    }

    fn validate_rekeys_and_joins(&self, inputs: &mut BTreeMap<String, String>) -> Result<(), TopologyError> {
        let mut nodes: Vec<(&str, &String)> = self.aggregates.keys().map(|n| ("aggregates", n))
            .chain(self.tables.keys().map(|n| ("tables", n)))
            .collect();
        for (section, names) in [
            ("rekeys", self.rekeys.keys().collect::<Vec<_>>()),
            ("joins", self.joins.keys().collect()),
            ("global_tables", self.global_tables.keys().collect()),
        ] {
            for name in names {
                if let Some((other, _)) = nodes.iter().find(|(_, n)| *n == name) {
                    return Err(TopologyError::Invalid {
                        at: self.key_position(&format!("{section}.{name}")),
                        message: format!("node name {name:?} is already used under `{other}`; node names are unique across sections"),
                    });
                }
                nodes.push((section, name));
            }
        }
        for (node, r) in &self.rekeys {
            let at = |key: &str| format!("rekeys.{node}.{key}");
            if !self.topics.contains_key(&r.from) {
                return Err(self.error_at(&at("from"), format!(
                    "rekey {node}: topic {:?} is not declared under `topics`; expected one of {:?}", r.from, self.topics.keys().collect::<Vec<_>>())));
            }
            if self.topics[&r.from].codec != Format::Json {
                return Err(self.error_at(&at("from"), format!(
                    "rekey {node}: topic {} must use the json codec to read field {:?} from its values", r.from, r.key_field)));
            }
            if !self.tables.contains_key(&r.into) {
                return Err(self.error_at(&at("into"), format!(
                    "rekey {node}: {:?} is not a table node; expected one of {:?}", r.into, self.tables.keys().collect::<Vec<_>>())));
            }
            if let Some(other) = inputs.insert(r.from.clone(), node.clone()) {
                return Err(self.error_at(&at("from"), format!(
                    "rekey {node}: topic {:?} is already read by {other}; each input topic feeds one node", r.from)));
            }
        }
        for (node, g) in &self.global_tables {
            if !self.topics.contains_key(&g.topic) {
                return Err(self.error_at(&format!("global_tables.{node}.topic"), format!(
                    "global table {node}: topic {:?} is not declared under `topics`", g.topic)));
            }
            if self.tables.values().any(|t| t.store == g.store) || self.aggregates.values().any(|a| a.store == g.store) {
                return Err(self.error_at(&format!("global_tables.{node}.store"), format!(
                    "global table {node}: store {:?} is already used by another node", g.store)));
            }
        }
        for (node, j) in &self.joins {
            let at = |key: &str| format!("joins.{node}.{key}");
            if self.global_tables.contains_key(&j.table) {
                if j.key_field.is_none() {
                    return Err(self.error_at(&at("table"), format!(
                        "join {node}: joining global table {} needs `key_field`, the stream field that holds the join key", j.table)));
                }
                if !self.topics.contains_key(&j.stream) {
                    return Err(self.error_at(&at("stream"), format!(
                        "join {node}: a global-table join reads a declared topic directly; {:?} is not one", j.stream)));
                }
                if !self.topics.contains_key(&j.output) {
                    return Err(self.error_at(&at("output"), format!(
                        "join {node}: output topic {:?} is not declared under `topics`", j.output)));
                }
                if let Some(other) = inputs.insert(j.stream.clone(), node.clone()) {
                    return Err(self.error_at(&at("stream"), format!(
                        "join {node}: topic {:?} is already read by {other}; each input topic feeds one node", j.stream)));
                }
                continue;
            }
            if j.key_field.is_some() {
                return Err(self.error_at(&at("key_field"), format!(
                    "join {node}: `key_field` is for global tables; a co-partitioned join uses the record key (re-key the stream first)")));
            }
            let Some(table) = self.tables.get(&j.table) else {
                return Err(self.error_at(&at("table"), format!(
                    "join {node}: {:?} is not a table or global table node; expected one of {:?}",
                    j.table, self.tables.keys().chain(self.global_tables.keys()).collect::<Vec<_>>())));
            };
            let table_partitions = self.topics[&table.topic].partitions;
            if let Some(r) = self.rekeys.get(&j.stream) {
                if r.into != j.table {
                    return Err(self.error_at(&at("table"), format!(
                        "join {node}: rekey {} is partitioned for table {}, not {}", j.stream, r.into, j.table)));
                }
            } else if let Some(t) = self.topics.get(&j.stream) {
                if t.partitions != table_partitions {
                    return Err(self.error_at(&at("stream"), format!(
                        "join {node}: stream topic {} has {} partitions but table topic {} has {}; co-partitioned inputs need equal counts (re-key the stream into the table instead)",
                        j.stream, t.partitions, table.topic, table_partitions)));
                }
            } else {
                return Err(self.error_at(&at("stream"), format!(
                    "join {node}: {:?} is neither a rekey node nor a declared topic", j.stream)));
            }
            if !self.topics.contains_key(&j.output) {
                return Err(self.error_at(&at("output"), format!(
                    "join {node}: output topic {:?} is not declared under `topics`", j.output)));
            }
            let stream_topic = self.join_stream_topic(j);
            if let Some(other) = inputs.insert(stream_topic.clone(), node.clone()) {
                return Err(self.error_at(&at("stream"), format!(
                    "join {node}: topic {stream_topic:?} is already read by {other}; each input topic feeds one node")));
            }
        }
        Ok(())
    }

    fn key_position(&self, path: &str) -> Position {
        let (line, column) = self.positions.key(path).unwrap_or((1, 1));
        Position { file: self.path.clone(), line, column }
    }

    /// Checks that every aggregate node names an aggregate the binary registered.
    pub fn check_registered<'a>(&self, names: impl Iterator<Item = &'a str> + Clone) -> Result<(), TopologyError> {
        for (node, a) in &self.aggregates {
            if !names.clone().any(|n| n == a.aggregate) {
                return Err(self.error_at(&format!("aggregates.{node}.aggregate"), format!(
                    "aggregate {node}: no aggregate is registered as {:?}; this binary registers {:?}",
                    a.aggregate, names.clone().collect::<Vec<_>>())));
            }
        }
        Ok(())
    }
}

/// Kafka's rule for topic names (and so for anything a topic name is derived from).
fn is_topic_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 249 && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}
