//! State stores. A task reads and writes its store through `ChangeloggedStore`: writes go to
//! an in-memory overlay of the open transaction and to the compacted changelog; RocksDB only
//! sees them, with the changelog offset, after the Kafka transaction commits.
//!
//! May use: record, codec. Never the Kafka client: restore input arrives as plain records.

mod changelogged;
mod history;
mod index;
mod rocks;

pub use changelogged::ChangeloggedStore;
pub use index::{Extract, Indexer};
pub use rocks::{BulkLoad, RocksStore, StoreResources, StoreTuning};

use crate::error::Recovery;
use std::path::PathBuf;

/// Store failures, with the store and partition they concern.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store {store} partition {partition} at {path}: {reason}")]
    Open { store: String, partition: i32, path: PathBuf, reason: String },
    #[error("store {store} partition {partition}: {op} failed: {source}")]
    Io { store: String, partition: i32, op: &'static str, source: rocksdb::Error },
    #[error("store {store} partition {partition}: corrupt checkpoint value")]
    CorruptCheckpoint { store: String, partition: i32 },
}

impl StoreError {
    pub fn recovery(&self) -> Recovery {
        match self {
            // Another process may hold the lock (a rolling restart): try again.
            StoreError::Open { .. } => Recovery::Retry,
            StoreError::Io { .. } => Recovery::Fatal,
            StoreError::CorruptCheckpoint { .. } => Recovery::RestoreTask,
        }
    }
}
