//! The topology file schema (serde, `deny_unknown_fields` everywhere) and the checks that
//! need the whole file: references between nodes, registered names, co-partitioning.

use super::{names, Position, TopologyError};
use crate::codec::Format;
use crate::store::StoreTuning;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

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
    pub aggregates: BTreeMap<String, AggregateNode>,
    #[serde(default)]
    pub processing: Processing,
    #[serde(default)]
    pub stores: StoreTuning,
    #[serde(default)]
    pub dead_letter: DeadLetter,
    #[serde(default)]
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
}

fn default_commit_interval() -> u64 {
    100
}
fn default_max_batch() -> usize {
    10_000
}

impl Default for Processing {
    fn default() -> Self {
        Self { commit_interval_ms: default_commit_interval(), max_batch_records: default_max_batch() }
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

    /// Checks that need the whole file. Positions come from the text, since serde has
    /// dropped them by now.
    pub(super) fn validate(&self, path: &Path, text: &str) -> Result<(), TopologyError> {
        let fail = |key: &str, value: &str, message: String| TopologyError::Invalid {
            at: locate(path, text, key, value),
            message,
        };
        if self.version != 1 {
            return Err(fail("version", &self.version.to_string(), format!(
                "unsupported version {}, expected 1", self.version)));
        }
        if self.application_id.is_empty()
            || !self.application_id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(fail("application_id", &self.application_id, format!(
                "application_id {:?} must be non-empty and use only [A-Za-z0-9._-], as Kafka topic names do",
                self.application_id)));
        }
        for (name, t) in &self.topics {
            if t.partitions < 1 {
                return Err(fail("partitions", &t.partitions.to_string(), format!(
                    "topic {name}: partitions must be at least 1, found {}", t.partitions)));
            }
        }
        let mut stores = BTreeMap::new();
        for (node, a) in &self.aggregates {
            for (key, topic) in [("commands", &a.commands), ("events", &a.events), ("replies", &a.replies)] {
                if !self.topics.contains_key(topic) {
                    return Err(fail(key, topic, format!(
                        "aggregate {node}: {key} topic {topic:?} is not declared under `topics`; expected one of {:?}",
                        self.topics.keys().collect::<Vec<_>>())));
                }
            }
            if let Some(other) = stores.insert(a.store.clone(), node.clone()) {
                return Err(fail("store", &a.store, format!(
                    "aggregate {node}: store {:?} is already used by aggregate {other}; each aggregate needs its own store",
                    a.store)));
            }
        }
        Ok(())
    }
}

/// Where `key: value` first appears in the text; the start of the file if nowhere.
fn locate(path: &Path, text: &str, key: &str, value: &str) -> Position {
    let needle = format!("{key}:");
    for (i, line) in text.lines().enumerate() {
        if let Some(k) = line.find(&needle) {
            let rest = &line[k + needle.len()..];
            if rest.contains(value) || value.is_empty() {
                let col = k + needle.len() + rest.find(value).unwrap_or(0) + 1;
                return Position { file: path.to_path_buf(), line: i + 1, column: col };
            }
        }
    }
    Position { file: path.to_path_buf(), line: 1, column: 1 }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, TopologyError};
    use std::path::Path;

    const GOOD: &str = "version: 1
application_id: shop
topics:
  cmds: { partitions: 2 }
  events: { partitions: 2 }
  replies: { partitions: 1 }
aggregates:
  customers:
    aggregate: customer
    commands: cmds
    events: events
    replies: replies
    store: customers
";

    fn err(text: &str) -> (usize, usize, String) {
        match parse(Path::new("t.yaml"), text) {
            Err(TopologyError::Invalid { at, message }) => (at.line, at.column, message),
            other => panic!("expected an invalid-topology error, got {other:?}"),
        }
    }

    #[test]
    fn good_file_parses() {
        let t = parse(Path::new("t.yaml"), GOOD).unwrap();
        assert_eq!(t.processing.commit_interval_ms, 100);
        assert_eq!(t.changelog_topic("customers"), "shop-customers-changelog");
        assert_eq!(t.dead_letter_topic(), "shop-dead-letters");
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let text = GOOD.replace("    store: customers\n", "    store: customers\n    stroe: x\n");
        let (line, col, msg) = err(&text);
        assert_eq!((line, col), (14, 5));
        assert!(msg.contains("unknown field `stroe`"), "{msg}");
        assert!(msg.contains("expected one of"), "{msg}");
    }

    #[test]
    fn missing_key_names_the_key() {
        let text = GOOD.replace("    replies: replies\n", "");
        let (line, _, msg) = err(&text);
        assert_eq!(line, 9, "{msg}");
        assert!(msg.contains("missing field `replies`"), "{msg}");
    }

    #[test]
    fn dangling_topic_reference() {
        let text = GOOD.replace("events: events", "events: evnts");
        let (line, col, msg) = err(&text);
        assert_eq!((line, col), (11, 13));
        assert!(msg.contains("\"evnts\" is not declared"), "{msg}");
    }
}
