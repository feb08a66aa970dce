//! Processor nodes: what a task runs for each input record. A processor implements one
//! method, `process`; it reads and writes its store and emits records through the
//! `Context`, and never touches a Kafka client.
//!
//! May use: store, record, codec.

pub mod aggregate;
mod aggregate_processor;
mod dead_letter;
mod table;
pub mod wire;

pub use aggregate::{Aggregate, Rejection};
pub use aggregate_processor::{AggregateProcessor, AggregateSettings, SnapshotRenderer};
pub use dead_letter::dead_letter;
pub use table::{TableProcessor, TableRenderer};

use crate::error::Recovery;
use crate::record::{Collector, InRecord};
use crate::store::{ChangeloggedStore, StoreError};

/// What a processor works with while handling one record.
pub struct Context<'a> {
    pub store: &'a mut ChangeloggedStore,
    pub out: &'a mut dyn Collector,
}

/// A node that handles records of one task.
pub trait Processor: Send {
    fn process(&mut self, record: &InRecord, ctx: &mut Context<'_>) -> Result<(), ProcessError>;
}

/// Failures a processor cannot turn into a reply or a dead letter.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored snapshot for key {key} in {store} cannot be read: {reason}")]
    CorruptSnapshot { store: String, key: String, reason: String },
}

impl ProcessError {
    pub fn recovery(&self) -> Recovery {
        match self {
            ProcessError::Store(e) => e.recovery(),
            ProcessError::CorruptSnapshot { .. } => Recovery::RestoreTask,
        }
    }
}

/// Renders a stored value as JSON for the query server, without the server knowing the
/// domain type.
pub trait ValueRenderer: Send + Sync {
    fn render(&self, value: &[u8]) -> Result<serde_json::Value, String>;
}
