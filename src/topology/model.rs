//! The validated topology: what the runtime runs. Only `validate` builds one, and it has
//! resolved every name a node refers to (a topic, a table, a store) into the thing itself,
//! so the runtime never looks a name up and can never miss.

use super::raw::{DeadLetter, HttpSettings, Processing, StoreSpec};
use super::{names, Diagnostic, Position, Positions, TopologyError};
use crate::codec::Format;
use crate::processor::JoinKind;
use crate::store::StoreTuning;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Topology {
    /// Schema version of the file (1).
    pub version: u32,
    /// Consumer group id, transactional id prefix and internal topic prefix.
    pub application_id: String,
    /// Every declared topic, by name.
    pub topics: BTreeMap<String, Topic>,
    pub aggregates: BTreeMap<String, AggregateNode>,
    pub tables: BTreeMap<String, TableNode>,
    pub rekeys: BTreeMap<String, RekeyNode>,
    pub joins: BTreeMap<String, JoinNode>,
    pub global_tables: BTreeMap<String, TableNode>,
    pub projections: BTreeMap<String, ProjectionNode>,
    pub outboxes: BTreeMap<String, super::raw::OutboxSpec>,
    pub processing: Processing,
    pub rocksdb: StoreTuning,
    pub dead_letter: DeadLetter,
    pub http: HttpSettings,
    /// Where each key and value sits in the file, for messages about registered names.
    pub(super) positions: Positions,
    /// The file it was read from, for messages.
    pub(super) path: PathBuf,
}

/// A declared topic, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Topic {
    pub name: String,
    pub partitions: i32,
    pub codec: Format,
    pub replication: i32,
    pub compacted: bool,
    /// For a protobuf topic: the message its values are.
    pub message: Option<String>,
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A node's store: its options and the topic it restores from.
#[derive(Debug, Clone)]
pub struct Store {
    pub name: String,
    pub spec: StoreSpec,
    /// `<application_id>-<store>-changelog`, or for a table without one, its input topic.
    pub changelog: String,
}

/// An aggregate node: commands in, events + replies out, snapshots in a store.
#[derive(Debug, Clone)]
pub struct AggregateNode {
    /// The name the binary registered the aggregate under.
    pub aggregate: String,
    pub commands: Topic,
    pub events: Topic,
    /// Default reply topic (a `reply-to` header overrides it per command).
    pub replies: Topic,
    pub store: Store,
    /// Format of the snapshot state; None: the aggregate's compact default.
    pub store_codec: Option<Format>,
    pub dedup_window: usize,
    pub awaits: Option<Awaits>,
    pub event_history: bool,
}

/// Which global table an aggregate's waits look in, and for how long.
#[derive(Debug, Clone)]
pub struct Awaits {
    /// A global table node of this topology, and the table itself.
    pub table: String,
    pub global: TableNode,
    pub timeout_ms: u64,
}

/// A table or global table node.
#[derive(Debug, Clone)]
pub struct TableNode {
    pub topic: Topic,
    pub store: Store,
    /// A co-partitioned join reads it as of each record's time, so it keeps history.
    pub joined: bool,
}

/// A re-key node and the repartition topic it writes.
#[derive(Debug, Clone)]
pub struct RekeyNode {
    pub from: Topic,
    pub key_field: String,
    /// The table node it feeds.
    pub into: String,
    /// `<application_id>-<node>-repartition`, partitioned like the table's topic.
    pub repartition: Topic,
}

/// A stream–table join.
#[derive(Debug, Clone)]
pub struct JoinNode {
    /// As written: a re-key node or a declared topic.
    pub stream: String,
    /// The topic the stream is read from (a re-key node's repartition topic).
    pub stream_topic: String,
    pub table: JoinTable,
    pub kind: JoinKind,
    pub output: Topic,
}

/// A projection: events into PostgreSQL rows (`readside`).
#[derive(Debug, Clone)]
pub struct ProjectionNode {
    pub from: Vec<Topic>,
    pub kind: ProjectionKind,
    pub commit_interval_ms: u64,
    pub max_batch_records: usize,
}

#[derive(Debug, Clone)]
pub enum ProjectionKind {
    /// A Rust projection the binary registered under this name.
    Registered(String),
    /// A declarative mapping from the file.
    Mapped(crate::readside::mapped::Mapping),
}

/// What a join looks its records up in.
#[derive(Debug, Clone)]
pub enum JoinTable {
    /// A table co-partitioned with the stream.
    Table { node: String, topic: String, store: String },
    /// A global table; `key_field` of the stream value holds the key.
    Global { node: String, global: TableNode, key_field: String },
}

impl JoinTable {
    pub fn node(&self) -> &str {
        match self {
            JoinTable::Table { node, .. } | JoinTable::Global { node, .. } => node,
        }
    }

    pub fn store(&self) -> &str {
        match self {
            JoinTable::Table { store, .. } => store,
            JoinTable::Global { global, .. } => &global.store.name,
        }
    }
}

impl Topology {
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter.topic.clone().unwrap_or_else(|| names::dead_letter_topic(&self.application_id))
    }

    pub fn changelog_topic(&self, store: &str) -> String {
        names::changelog_topic(&self.application_id, store)
    }

    /// The consumer group of projection `node`.
    pub fn projection_group(&self, node: &str) -> String {
        format!("{}-projection-{node}", self.application_id)
    }

    /// Where the outbox relays keep their positions, written in their transactions.
    pub fn outbox_positions_topic(&self) -> String {
        format!("{}-outbox-positions", self.application_id)
    }

    /// The group whose one member relays outbox `node` (and its transactional id).
    pub fn outbox_group(&self, node: &str) -> String {
        format!("{}-outbox-{node}", self.application_id)
    }

    pub fn members_topic(&self) -> String {
        names::members_topic(&self.application_id)
    }

    pub fn progress_topic(&self) -> String {
        names::progress_topic(&self.application_id)
    }

    /// The aggregates whose events topic a global table of this topology reads, by events
    /// topic: they publish their event-time progress, so the table knows which times it
    /// is final for (`runtime::progress`).
    pub fn progress_writers(&self) -> BTreeMap<String, &AggregateNode> {
        self.aggregates
            .values()
            .filter(|a| self.global_tables.values().any(|g| g.topic.name == a.events.name))
            .map(|a| (a.events.name.clone(), a))
            .collect()
    }

    /// Checks that every aggregate node names an aggregate the binary registered; every
    /// node that does not is reported.
    pub fn check_registered<'a>(&self, names: impl Iterator<Item = &'a str> + Clone) -> Result<(), TopologyError> {
        let wanted = self.aggregates.iter().map(|(node, a)| (format!("aggregates.{node}.aggregate"), format!("aggregate {node}"), a.aggregate.as_str()));
        self.unregistered(wanted, "aggregate", names)
    }

    /// As `check_registered`, for the projection nodes that name a Rust projection.
    pub fn check_projections_registered<'a>(&self, names: impl Iterator<Item = &'a str> + Clone) -> Result<(), TopologyError> {
        let wanted = self.projections.iter().filter_map(|(node, p)| match &p.kind {
            ProjectionKind::Registered(name) => Some((format!("projections.{node}.projection"), format!("projection {node}"), name.as_str())),
            ProjectionKind::Mapped(_) => None,
        });
        self.unregistered(wanted, "projection", names)
    }

    /// The nodes among `wanted` (position path, node, registered name) whose name this
    /// binary did not register as a `kind`.
    fn unregistered<'a, 'w>(
        &self,
        wanted: impl Iterator<Item = (String, String, &'w str)>,
        kind: &str,
        names: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<(), TopologyError> {
        let diagnostics: Vec<Diagnostic> = wanted
            .filter(|(_, _, name)| !names.clone().any(|n| n == *name))
            .map(|(path, node, name)| {
                let (line, column) = self.positions.value(&path).unwrap_or((1, 1));
                Diagnostic {
                    at: Position { file: self.path.clone(), line, column },
                    message: format!(
                        "{node}: no {kind} is registered as {name:?}; this binary registers {:?}",
                        names.clone().collect::<Vec<_>>()
                    ),
                }
            })
            .collect();
        if diagnostics.is_empty() { Ok(()) } else { Err(TopologyError::Invalid(diagnostics)) }
    }
}
