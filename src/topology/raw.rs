//! The topology file's schema, as written: serde types (`deny_unknown_fields` everywhere)
//! whose references between nodes are still names. `decode` types a parsed document one
//! node at a time, so one malformed node does not hide the problems of another; `validate`
//! then resolves the names into the model the runtime runs.

use crate::codec::Format;
use crate::store::StoreTuning;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A whole topology file.
#[derive(Debug, Clone)]
pub struct RawTopology {
    /// Schema version of this file. Only 1 exists.
    pub version: u32,
    /// Consumer group id, transactional id prefix and internal topic prefix.
    pub application_id: String,
    /// Every topic the application reads or writes, by name.
    pub topics: BTreeMap<String, TopicSpec>,
    /// Event-sourced aggregates, by node name.
    pub aggregates: BTreeMap<String, AggregateSpec>,
    /// Tables: a topic's latest value per key, materialized in a queryable store.
    pub tables: BTreeMap<String, TableSpec>,
    /// Re-key nodes: a new key from a value field, through a repartition topic.
    pub rekeys: BTreeMap<String, RekeySpec>,
    /// Stream–table joins: co-partitioned with a table, or against a global table.
    pub joins: BTreeMap<String, JoinSpec>,
    /// Global tables: the whole topic on every instance, outside the consumer group.
    pub global_tables: BTreeMap<String, TableSpec>,
    /// Projections: events into PostgreSQL rows, exactly once (`readside`).
    pub projections: BTreeMap<String, ProjectionSpec>,
    /// Outbox relays: rows of a PostgreSQL table onto Kafka, exactly once (`readside`).
    pub outboxes: BTreeMap<String, OutboxSpec>,
    pub processing: Processing,
    /// Options of named stores; a store a node names but this map omits gets the defaults.
    pub stores: BTreeMap<String, StoreSpec>,
    /// RocksDB memory shared by every store of an instance.
    pub rocksdb: StoreTuning,
    pub dead_letter: DeadLetter,
    pub http: HttpSettings,
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
pub struct AggregateSpec {
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
    /// Event time from the start of a wait until it fails, in milliseconds. A wait fails
    /// only once the table is final through its deadline (`runtime::progress`).
    pub timeout_ms: u64,
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
pub struct RekeySpec {
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
pub struct JoinSpec {
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
pub struct TableSpec {
    /// The topic to materialize (usually compacted); declared under `topics`.
    pub topic: String,
    /// Store name; its changelog is `<application_id>-<store>-changelog`.
    pub store: String,
}

/// A projection: events of `from` into rows of PostgreSQL, each batch one database
/// transaction with its positions. Either `projection` (a Rust projection the binary
/// registered) or a mapping (`table`, `key`, `columns`, `events`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionSpec {
    /// The event topics it reads (declared under `topics`, JSON).
    pub from: Vec<String>,
    /// A Rust projection the binary registered, instead of a mapping.
    #[serde(default)]
    pub projection: Option<String>,
    /// The table the mapping writes, created when missing (`schema.table` allowed).
    #[serde(default)]
    pub table: Option<String>,
    /// The key column, filled with the record key (an aggregate id). `text primary key`,
    /// unless `columns` gives it another type.
    #[serde(default)]
    pub key: Option<String>,
    /// A `bigint` column filled with the event's `version`: an event changes a row only if
    /// the row's version is lower, so an older event never overwrites a newer one.
    #[serde(default)]
    pub version: Option<String>,
    /// The other columns and their SQL types, in file order, for CREATE TABLE.
    #[serde(default)]
    pub columns: serde_json::Map<String, Value>,
    /// By event type (the event's `type`): `upsert: {column: value}` or `delete`. A value
    /// is `$key`, `$timestamp`, `$offset`, `$partition`, `$topic`, `$.field.path`, or a
    /// literal. Events of other types are skipped.
    #[serde(default)]
    pub events: BTreeMap<String, EventAction>,
    /// A batch (one database transaction) commits at least this often, in milliseconds...
    #[serde(default = "default_commit_interval")]
    pub commit_interval_ms: u64,
    /// ... or once it holds this many events.
    #[serde(default = "default_projection_batch")]
    pub max_batch_records: usize,
}

fn default_projection_batch() -> usize {
    5_000
}

/// An outbox relay: the rows of `table` produced to Kafka in the order their transactions
/// committed, in Kafka transactions that also hold the relay's position.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSpec {
    /// The outbox table (`schema.table` allowed): `id bigserial, topic text, key text,
    /// value jsonb, headers jsonb, txid xid8 default pg_current_xact_id()`; created when
    /// missing.
    pub table: String,
    /// Delete rows once they are on Kafka (false: keep them).
    #[serde(default = "default_true")]
    pub delete_relayed: bool,
    /// How often an idle relay looks for new rows, in milliseconds.
    #[serde(default = "default_commit_interval")]
    pub poll_interval_ms: u64,
    /// Rows per Kafka transaction at most.
    #[serde(default = "default_outbox_batch")]
    pub max_batch_rows: usize,
}

fn default_outbox_batch() -> usize {
    1_000
}

/// What one event type does to its row.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum EventAction {
    /// Set these columns, inserting the row if it is missing.
    Upsert(serde_json::Map<String, Value>),
    /// Delete the row.
    Delete,
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
    /// At light load, a transaction commits as soon as the input has nothing more
    /// fetched, once it has been open this long, in milliseconds: replies come sooner
    /// than the commit interval, for more (and smaller) transactions. Under load nothing
    /// changes, because the input is never drained and batches close at
    /// `commit_interval_ms` or `max_batch_records`. Unset: commit on the interval only,
    /// as Kafka Streams does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_commit_interval_ms: Option<u64>,
    /// Processing threads per instance. Each is a member of the group with its own
    /// consumer and transactional producer, and owns the tasks of its partitions.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// true: every batch is one Kafka transaction (outputs, changelog and offsets commit
    /// together). false: at-least-once; outputs are flushed, then stores written, then
    /// offsets committed, and a crash can repeat a batch's outputs.
    #[serde(default = "default_true")]
    pub exactly_once: bool,
    /// How late a record may reach the broker after its timestamp and still count at its
    /// own time. An input at its end counts as final through now minus this (event-time
    /// progress, `runtime::progress`): a join's stream record, or an expiring wait, goes
    /// on about this long after its time when the table's input is idle. A record later
    /// than this counts at the time it arrived, so a replay may differ for it. It is also
    /// how long a join's table input waits for an empty stream input before it goes ahead.
    #[serde(default = "default_max_task_idle")]
    pub max_task_idle_ms: u64,
    /// Warm copies of each store partition on this many other instances, kept by tailing
    /// the changelog: a failover restores only the tail. 0: none.
    #[serde(default)]
    pub standby_replicas: usize,
    /// How long a transient failure (broker unreachable, a coordinator moving, a store
    /// locked by a predecessor) may go on before the processing thread gives up, /health
    /// turns 503 and the process exits 1, as Kafka Streams' `task.timeout.ms`.
    #[serde(default = "default_task_timeout")]
    pub task_timeout_ms: u64,
}

fn default_max_task_idle() -> u64 {
    100
}

fn default_task_timeout() -> u64 {
    300_000
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
        Self { commit_interval_ms: default_commit_interval(), max_batch_records: default_max_batch(), min_commit_interval_ms: None, threads: default_threads(), exactly_once: true, max_task_idle_ms: default_max_task_idle(), standby_replicas: 0, task_timeout_ms: default_task_timeout() }
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


/// A part of the file that does not fit the schema: the dotted path it is at, whether the
/// key itself is the problem (an unknown field) rather than its value, and serde's message.
#[derive(Debug)]
pub struct Misfit {
    pub path: String,
    pub at_key: bool,
    pub message: String,
}

/// The top-level keys, in the order the messages list them.
const SECTIONS: [&str; 15] = [
    "version", "application_id", "topics", "aggregates", "tables", "rekeys", "joins", "global_tables",
    "projections", "outboxes", "processing", "stores", "rocksdb", "dead_letter", "http",
];

impl RawTopology {
    /// Types a parsed document. Each node (each entry of `topics`, `aggregates`, ...) and
    /// each settings section is typed on its own, and every misfit is returned.
    pub fn decode(doc: &Value) -> Result<Self, Vec<Misfit>> {
        let mut misfits = Vec::new();
        let empty = serde_json::Map::new();
        let top = match doc {
            Value::Object(m) => m,
            Value::Null => &empty,
            other => {
                misfits.push(Misfit { path: String::new(), at_key: false, message: format!(
                    "expected a mapping of {SECTIONS:?}, found {}", kind(other)) });
                return Err(misfits);
            }
        };
        for key in top.keys().filter(|k| !SECTIONS.contains(&k.as_str())) {
            misfits.push(Misfit { path: key.clone(), at_key: true, message: format!(
                "unknown field `{key}`, expected one of {}", SECTIONS.map(|s| format!("`{s}`")).join(", ")) });
        }
        let mut required = |name: &str| {
            let v = top.get(name);
            if v.is_none() {
                misfits.push(Misfit { path: String::new(), at_key: false, message: format!("missing field `{name}`") });
            }
            v
        };
        let (version, application_id, topics) = (required("version"), required("application_id"), required("topics"));
        let version = version.and_then(|v| typed(v, "version", &mut misfits));
        let application_id = application_id.and_then(|v| typed(v, "application_id", &mut misfits));
        let topics = topics.map(|v| nodes(v, "topics", &mut misfits));
        let raw = RawTopology {
            version: version.unwrap_or_default(),
            application_id: application_id.unwrap_or_default(),
            topics: topics.unwrap_or_default(),
            aggregates: section_nodes(top, "aggregates", &mut misfits),
            tables: section_nodes(top, "tables", &mut misfits),
            rekeys: section_nodes(top, "rekeys", &mut misfits),
            joins: section_nodes(top, "joins", &mut misfits),
            global_tables: section_nodes(top, "global_tables", &mut misfits),
            projections: section_nodes(top, "projections", &mut misfits),
            outboxes: section_nodes(top, "outboxes", &mut misfits),
            processing: section(top, "processing", &mut misfits),
            stores: section_nodes(top, "stores", &mut misfits),
            rocksdb: section(top, "rocksdb", &mut misfits),
            dead_letter: section(top, "dead_letter", &mut misfits),
            http: section(top, "http", &mut misfits),
        };
        if misfits.is_empty() { Ok(raw) } else { Err(misfits) }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

/// `value` as a `T`, or a misfit at the exact path serde stopped at.
fn typed<T: DeserializeOwned>(value: &Value, path: &str, misfits: &mut Vec<Misfit>) -> Option<T> {
    serde_path_to_error::deserialize::<_, T>(value)
        .map_err(|e| {
            let inner = e.path().to_string();
            let message = e.into_inner().to_string();
            let mut full = if inner == "." { path.to_string() } else { format!("{path}.{inner}") };
            let at_key = message.starts_with("unknown field");
            // serde reports an unknown field at the mapping that holds it; point at the key.
            if let Some(field) = at_key.then(|| message.split('`').nth(1)).flatten() {
                if !full.ends_with(&format!(".{field}")) {
                    full = format!("{full}.{field}");
                }
            }
            misfits.push(Misfit { path: full, at_key, message });
        })
        .ok()
}

/// A settings section (a struct with defaults), or its default when absent.
fn section<T: DeserializeOwned + Default>(top: &serde_json::Map<String, Value>, name: &str, misfits: &mut Vec<Misfit>) -> T {
    match top.get(name) {
        None | Some(Value::Null) => T::default(),
        Some(v) => typed(v, name, misfits).unwrap_or_default(),
    }
}

/// A section of named nodes, each typed on its own; empty when absent.
fn section_nodes<T: DeserializeOwned>(top: &serde_json::Map<String, Value>, name: &str, misfits: &mut Vec<Misfit>) -> BTreeMap<String, T> {
    match top.get(name) {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => nodes(v, name, misfits),
    }
}

fn nodes<T: DeserializeOwned>(value: &Value, path: &str, misfits: &mut Vec<Misfit>) -> BTreeMap<String, T> {
    let Value::Object(entries) = value else {
        misfits.push(Misfit { path: path.to_string(), at_key: false, message: format!(
            "`{path}` must be a mapping from names to nodes, found {}", kind(value)) });
        return BTreeMap::new();
    };
    entries
        .iter()
        .filter_map(|(name, v)| Some((name.clone(), typed(v, &format!("{path}.{name}"), misfits)?)))
        .collect()
}
