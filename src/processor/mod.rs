//! Processor nodes: what a task runs for each input record. A processor implements one
//! method, `process`; it reads and writes its store and emits records through the
//! `Context`, and never touches a Kafka client. Each store also says how the query
//! server renders its values (`ValueRenderer`).
//!
//! May use: store, record, codec.

pub mod aggregate;
mod aggregate_processor;
mod dead_letter;
mod dedup_window;
pub mod index_fields;
mod join;
pub mod quarantine;
pub mod refold;
mod rekey;
mod table;
pub mod wire;

pub use aggregate::{Aggregate, Await, Rejection};
pub use aggregate_processor::{AggregateProcessor, AggregateSettings, AwaitSettings, SnapshotRenderer, AWAITING_INDEX};
pub use dead_letter::{dead_letter, dead_letter_as};
pub use index_fields::IndexFields;
pub use join::{field_key, JoinKind, JoinProcessor, Lookup, TableSource};
pub use rekey::RekeyProcessor;
pub use table::{TableProcessor, TableRenderer};

use crate::error::Recovery;
use crate::record::{Collector, InRecord};
use crate::store::{ChangeloggedStore, StoreError};

/// What a processor works with while handling one record.
pub struct Context<'a> {
    /// The task's own store; stateless nodes (re-key, join) have none.
    pub store: Option<&'a mut ChangeloggedStore>,
    pub out: &'a mut dyn Collector,
    /// Stores of other tasks of the same partition on this instance, by store name: a
    /// join reads its table here, overlay included, so it sees table updates of the open
    /// transaction. Co-partitioning puts partition p of both inputs on one member.
    pub peers: &'a [(&'a str, &'a ChangeloggedStore)],
    /// Event time of the record being processed (or of a punctuation): what outputs and
    /// changelog records carry.
    pub timestamp: Option<i64>,
}

impl Context<'_> {
    fn own(&self) -> &ChangeloggedStore {
        self.store.as_deref().expect("a processor that reads its store belongs to a node with a store")
    }

    /// Reads the task's own store (open transaction first).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.own().get(key)
    }

    /// Writes the task's own store and its changelog in the open transaction.
    pub fn put(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        let store = self.store.as_deref_mut().expect("a processor that writes its store belongs to a node with a store");
        store.put(key, value, self.timestamp, self.out);
    }

    /// Adds an event to the task store's event history (same commit as the snapshot).
    pub fn put_event(&mut self, id: &[u8], version: u64, json: Vec<u8>) {
        let store = self.store.as_deref_mut().expect("an aggregate has a store");
        store.put_event(id, version, json);
    }

    /// A peer store of the same partition, by name.
    pub fn peer(&self, store: &str) -> Option<&ChangeloggedStore> {
        self.peers.iter().find(|(name, _)| *name == store).map(|(_, s)| *s)
    }
}

/// A node that handles records of one task.
pub trait Processor: Send {
    fn process(&mut self, record: &InRecord, ctx: &mut Context<'_>) -> Result<(), ProcessError>;

    /// Called as the wall clock moves (about once per commit interval), inside the open
    /// transaction, for work no record triggers: a wait whose table entry arrived while
    /// the partition was quiet.
    fn punctuate(&mut self, now_ms: i64, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let _ = (now_ms, ctx);
        Ok(())
    }

    /// The open transaction aborted: forget anything cached from it.
    fn aborted(&mut self) {}

    /// What this record wrote could not be committed (a topic refused an output for good:
    /// too large, invalid), so it is not run again: answer it as failed, with `reason`.
    /// Returns false when there is nobody to answer; the engine then dead-letters it.
    fn fail(&mut self, record: &InRecord, reason: &str, ctx: &mut Context<'_>) -> bool {
        let _ = (record, reason, ctx);
        false
    }
}

/// Failures a processor cannot turn into a reply or a dead letter.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored snapshot for key {key} in {store} cannot be read: {reason}")]
    CorruptSnapshot { store: String, key: String, reason: String },
    #[error("join input {topic}-{partition} has no task of store {store} beside it: inputs are not co-partitioned")]
    NotCoPartitioned { store: String, topic: String, partition: i32 },
}

impl ProcessError {
    pub fn recovery(&self) -> Recovery {
        match self {
            ProcessError::Store(e) => e.recovery(),
            ProcessError::CorruptSnapshot { .. } => Recovery::RestoreTask,
            // A broken assumption, not a passing fault: stop rather than join against nothing.
            ProcessError::NotCoPartitioned { .. } => Recovery::Fatal,
        }
    }
}

/// `{"key": .., <rendered fields>}`: the key first, as docs/json-contract.md shows it.
pub fn keyed(key: String, rendered: serde_json::Value) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert("key".into(), serde_json::Value::String(key));
    if let serde_json::Value::Object(fields) = rendered {
        out.extend(fields);
    }
    serde_json::Value::Object(out)
}

/// One key's answer, rendered.
pub struct RenderedEntry {
    /// The value's version, for values that have one (aggregate snapshots).
    pub version: Option<u64>,
    pub json: Vec<u8>,
}

/// Whether a value with this version is there for a reader: an aggregate at version 0 was
/// never written, only rejections recorded for it (kept for dedup). Values without
/// versions always are.
pub fn written(version: Option<u64>) -> bool {
    version.is_none_or(|v| v > 0)
}

/// Renders a stored value as JSON for the query server, without the server knowing the
/// domain type.
pub trait ValueRenderer: Send + Sync {
    fn render(&self, value: &[u8]) -> Result<serde_json::Value, String>;

    /// One key's answer as JSON text, `{"key": <key>, <the fields of render>}`, with the
    /// value's version if it has one. The default goes through `render`; a renderer that
    /// writes the text directly saves building and dropping a JSON tree per lookup.
    fn render_entry(&self, key: &str, value: &[u8]) -> Result<RenderedEntry, String> {
        let fields = self.render(value)?;
        let version = fields.get("version").and_then(serde_json::Value::as_u64);
        Ok(RenderedEntry { version, json: serde_json::to_vec(&keyed(key.to_string(), fields)).map_err(|e| e.to_string())? })
    }

    /// What the store's secondary indexes read from `value`: the `fields` of its body and
    /// whether it waits. The default renders the whole document; a renderer that reaches
    /// the body more cheaply says so (a full restore indexes every value).
    fn index_fields(&self, value: &[u8], fields: &[String]) -> Result<IndexFields, String> {
        Ok(index_fields::from_document(&self.render(value)?, fields))
    }
}
