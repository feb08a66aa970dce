//! The runtime: an `App` joins the consumer group, creates one task per assigned command
//! partition, restores each task's store before it runs, and drives the commit cycle.
//! It owns the Kafka consumer; the transactional producer lives in `sink`.
//!
//! May use: every module above it (record, codec, store, processor, topology, sink).

mod app;
mod catalog;
pub(crate) mod engine;
pub mod gateway;
pub mod global;
pub mod members;
mod registry;
mod restore;
pub mod standby;
mod sync;
mod task;
pub mod plan;
pub mod topics;

pub use app::{App, AppConfig};
pub use catalog::{Catalog, StoreView};
pub use members::{Directory, Owner};
pub use registry::Registry;
pub use task::{Task, TaskState};

use crate::error::Recovery;
use crate::sink::SinkError;
use crate::store::StoreError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("kafka {op} {topic}: {source}")]
    Kafka { op: &'static str, topic: String, source: KafkaError },
    #[error("cannot create topic {topic}: {code}")]
    CreateTopic { topic: String, code: RDKafkaErrorCode },
    #[error("topic {topic} has {found} partitions, but the topology expects {expected}")]
    PartitionMismatch { topic: String, expected: i32, found: i32 },
    #[error("aggregate node {node}: no aggregate is registered as {name:?}; this binary registers {known:?}")]
    UnknownAggregate { node: String, name: String, known: Vec<String> },
    #[error("aggregate {name:?} has no protobuf schema, but topic {topic} uses the protobuf codec")]
    NoProtobuf { name: String, topic: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("processing failed: {0}")]
    Process(#[from] crate::processor::ProcessError),
    #[error("http server: {0}")]
    Http(std::io::Error),
}

impl RuntimeError {
    pub fn recovery(&self) -> Recovery {
        match self {
            RuntimeError::Kafka { .. } => Recovery::Retry,
            RuntimeError::Store(e) => e.recovery(),
            RuntimeError::Sink(e) => e.recovery(),
            RuntimeError::Process(e) => e.recovery(),
            _ => Recovery::Fatal,
        }
    }
}
