//! The runtime: an `App` joins the consumer group, creates one task per assigned command
//! partition, restores each task's store before it runs, and drives the commit cycle.
//! It owns the Kafka consumer; the transactional producer lives in `sink` (a thread's two
//! of them take turns: `alternating_sink`).
//!
//! May use: every module above it (record, codec, store, processor, topology, sink).

pub mod activity;
mod alternating_sink;
mod app;
mod catalog;
mod clocks;
pub(crate) mod engine;
pub mod gateway;
pub mod global;
pub mod members;
mod registry;
mod kafka_ports;
mod opening;
mod poll_loop;
mod predecessor;
pub mod metrics_catalog;
pub mod partition_gauges;
pub(crate) mod ports;
pub mod progress;
pub mod reader;
pub mod refold;
mod restore;
pub(crate) mod route;
pub mod standby;
mod sync;
mod task;
pub mod plan;
pub mod topics;

pub use app::{projections, App, AppConfig, Run};
pub use catalog::{Catalog, Pulse, Stalled, StoreView};
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
    #[error("cannot reach the Kafka cluster at {bootstrap}: {reason} (check --bootstrap-servers, and --kafka-config for security.protocol, SASL credentials and the CA)")]
    Unreachable { bootstrap: String, reason: String },
    #[error(transparent)]
    Gateway(#[from] gateway::GatewayError),
    #[error("restore of {topic}-{partition} made no progress for {waited_s} s at position {position:?}, short of its end {end}: {cause}; the task stays unready and the restore is retried")]
    RestoreStalled { topic: String, partition: i32, position: Option<i64>, end: i64, waited_s: u64, cause: String },
    #[error("store {store} partition {partition} holds a transaction the broker aborted after acknowledging its commit (the changelog record at its checkpoint, offset {checkpoint}, is aborted); it is rebuilt from the committed changelog")]
    StoreAhead { store: String, partition: i32, checkpoint: i64 },
    #[error("a transient failure did not pass within {after_s} s; giving up: {last}")]
    RetriesExhausted { after_s: u64, last: Box<RuntimeError> },
    #[error("another live process runs as instance {instance:?} (its HTTP server: {http}); give each instance its own --instance-id")]
    DuplicateInstance { instance: String, http: String },
    #[error("a previous owner's transaction over {partitions} is still open (committed offsets are not stable: {source}); restoring now could miss its records. Should this last past the transaction timeout, `kafka-transactions.sh find-hanging` may list a transaction no coordinator will end, and `kafka-transactions.sh abort` ends it")]
    UnstableOffsets { partitions: String, source: Box<RuntimeError> },
    #[error("the consumer has no group metadata yet (not a member of the group); the transaction cannot commit its offsets")]
    NoGroupMetadata,
    #[error("the group member failed for good ({reason}); a new member takes its place")]
    MemberLost { reason: String },
    #[error("{what} of {partition} interrupted: the instance is shutting down; what it applied is kept, and the next start goes on from there")]
    Interrupted { what: &'static str, partition: String },
    #[error("projection node {node}: no projection is registered as {name:?}; this binary registers {known:?}")]
    UnknownProjection { node: String, name: String, known: Vec<String> },
    #[error("the topology has a read side (projections and outboxes: {nodes}) but no PostgreSQL for it: give --postgres-url or MILLRACE_POSTGRES_URL (postgres://user:password@host:port/database), or run with --run processing")]
    NoPostgres { nodes: String },
    #[error("rebuild: {reason}")]
    Rebuild { reason: String },
    #[error("{node}: {source}")]
    ReadSide { node: String, source: crate::readside::ReadSideError },
    /// A crash the broker-free driver injected at a step of the commit cycle.
    #[cfg(feature = "test-util")]
    #[error("crash injected at {0:?}")]
    InjectedCrash(engine::CrashPoint),
    /// The broker-free driver could not settle (a test that loops).
    #[cfg(feature = "test-util")]
    #[error("driver: {0}")]
    Driver(String),
}

impl RuntimeError {
    /// A call of the group member to its coordinator that failed: the committed offsets,
    /// fetched before a task opens (and found unstable for too long, or not at all).
    pub fn is_coordinator_lookup(&self) -> bool {
        match self {
            RuntimeError::UnstableOffsets { .. } => true,
            RuntimeError::Kafka { op, .. } => *op == "committed offsets",
            _ => false,
        }
    }

    pub fn recovery(&self) -> Recovery {
        match self {
            RuntimeError::Kafka { .. }
            | RuntimeError::RestoreStalled { .. }
            | RuntimeError::StoreAhead { .. }
            | RuntimeError::UnstableOffsets { .. }
            | RuntimeError::NoGroupMetadata
            | RuntimeError::MemberLost { .. }
            // The processing loop, which retries, sees the stop and ends.
            | RuntimeError::Interrupted { .. } => Recovery::Retry,
            RuntimeError::Store(e) => e.recovery(),
            RuntimeError::Sink(e) => e.recovery(),
            RuntimeError::Process(e) => e.recovery(),
            RuntimeError::DuplicateInstance { .. }
            | RuntimeError::UnknownProjection { .. }
            | RuntimeError::NoPostgres { .. }
            | RuntimeError::Rebuild { .. } => Recovery::Reject,
            RuntimeError::ReadSide { source, .. } => source.recovery(),
            RuntimeError::Gateway(gateway::GatewayError::Produce(_)) => Recovery::Retry,
            RuntimeError::Gateway(_) => Recovery::Reject,
            _ => Recovery::Fatal,
        }
    }
}
