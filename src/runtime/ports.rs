//! The commit cycle's three ports: all the engine needs from the outside world.
//!
//! - [`Input`]: the group member's side of the input: its assignment, committed offsets,
//!   seeks, the group token a transaction commits offsets under, and whether an output
//!   topic exists.
//! - [`Sink`]: the transactional producer(s): begin, send, commit with the input offsets,
//!   abort, and fencing as an error.
//! - [`ChangelogReader`]: a store's changelog tail, and an aggregate's event history.
//!
//! `runtime::kafka_ports` (with `sink::TransactionalSink`) implements them over rdkafka. The
//! broker-free `TopologyDriver` implements them over an in-memory log with real transaction
//! semantics. Both run the same `Engine`, so every broker-free test runs the production
//! commit cycle.
//!
//! May use: record, store, sink (its error type).

use super::route::EventSource;
use super::RuntimeError;
use crate::record::{OutRecord, TopicPartition};
use crate::sink::SinkError;
use crate::store::RocksStore;
use std::collections::HashMap;
use std::time::Duration;

/// What a transaction commits its input offsets under: the consumer group's generation
/// and member (KIP-447), so a zombie from an older generation is fenced. Opaque to the
/// engine; the sink of the same adapter reads it.
pub struct GroupToken(pub std::sync::Arc<dyn std::any::Any + Send + Sync>);

/// What the broker says about an output topic.
pub enum Destination {
    Exists,
    /// Refused for good: the reason, for the dead letter.
    Refused(String),
    /// No answer (timeout, broker unreachable, leader moving): ask again later.
    Unknown(RuntimeError),
}

/// The input side of one group member.
pub trait Input {
    /// The partitions assigned to this member now.
    fn assignment(&self) -> Result<Vec<TopicPartition>, RuntimeError>;

    /// Committed offsets of `partitions` (None: nothing committed), once they are stable:
    /// a previous owner's transaction over them must end first. Err when it did not end
    /// within `timeout`.
    fn committed(&self, partitions: &[TopicPartition], timeout: Duration) -> Result<Vec<(TopicPartition, Option<i64>)>, RuntimeError>;

    /// Moves the position of `partition` (None: its beginning).
    fn seek(&self, partition: &TopicPartition, offset: Option<i64>) -> Result<(), RuntimeError>;

    /// The group dropped this member (a stall past the session timeout): its partitions
    /// may already be someone else's.
    fn assignment_lost(&self) -> bool;

    /// The token transactions commit offsets under; None while the member has none.
    fn group(&self) -> Option<GroupToken>;

    /// At-least-once only: commits input offsets directly, after the batch is delivered.
    fn commit_offsets(&self, offsets: &[(TopicPartition, i64)]) -> Result<(), RuntimeError>;

    /// Whether `topic` exists, for records bound to a topic no topology declared.
    fn destination(&self, topic: &str) -> Destination;

    /// The end offsets of `partitions` as the broker knows them now (read_committed: the
    /// last stable offsets). Err when it did not answer.
    fn end_offsets(&self, partitions: &[TopicPartition]) -> Result<HashMap<TopicPartition, i64>, RuntimeError>;

    /// The first offsets of `partitions` (what retention left). Err when the broker did
    /// not answer.
    fn start_offsets(&self, partitions: &[TopicPartition]) -> Result<HashMap<TopicPartition, i64>, RuntimeError>;

    /// The next offset this member hands out per assigned partition it has fetched from:
    /// past every record polled (and the markers after them).
    fn positions(&self) -> HashMap<TopicPartition, i64>;
}

/// The transactional producer of one processing thread (over Kafka, a pair taking turns:
/// `alternating_sink`).
pub trait Sink: Send {
    fn is_open(&self) -> bool;

    /// False for at-least-once batches (no transactions).
    fn exactly_once(&self) -> bool;

    /// Opens a transaction if none is open.
    fn begin(&mut self) -> Result<(), SinkError>;

    /// The records sent next come from this input record (None: from none), so a record
    /// a topic refuses can be traced back to it.
    fn set_origin(&mut self, input: Option<(&TopicPartition, i64)>);

    /// Queues one record in the open transaction.
    fn send(&mut self, record: &OutRecord) -> Result<(), SinkError>;

    /// Waits until every record sent in the open transaction is written, and returns the
    /// highest offset written per output partition so far (the transaction is still open).
    fn settle(&mut self) -> Result<HashMap<TopicPartition, i64>, SinkError>;

    /// Commits the open transaction with the input offsets (`group` for exactly-once).
    /// Returns the highest offset written per output partition.
    fn commit(&mut self, offsets: &[(TopicPartition, i64)], group: Option<&GroupToken>) -> Result<HashMap<TopicPartition, i64>, SinkError>;

    /// Aborts the open transaction, if any: none of its records ever becomes visible.
    fn abort(&mut self) -> Result<(), SinkError>;

    /// Ends any transaction an earlier epoch of this producer left pending, on the group's
    /// offsets and on the partitions it writes (see `TransactionalSink::release_offsets`).
    /// Not while a transaction is open. Sinks without such a limbo do nothing.
    fn release_offsets(&mut self, partition: &TopicPartition, group: &GroupToken) -> Result<(), SinkError> {
        let _ = (partition, group);
        Ok(())
    }
}

/// Makes a new sink with the same transactional id(s): it fences every older one, and aborts
/// whatever they left open. Called at start and after fencing.
pub type SinkFactory = Box<dyn Fn() -> Result<Box<dyn Sink>, SinkError> + Send>;

/// Reads changelogs and event topics into stores, before a task runs.
pub trait ChangelogReader: Send + Sync {
    /// Replays `changelog`'s partition (the store's) from the store's checkpoint to its
    /// end, read_committed. Records `accept` refuses are skipped; with `versions` each is
    /// kept as a version at its time. Returns the records read.
    fn restore(&self, store: &RocksStore, changelog: &str, accept: &dyn Fn(Option<&[u8]>) -> bool, versions: bool) -> Result<u64, RuntimeError>;

    /// Makes an aggregate store's event history complete from its events topic.
    fn ensure_event_history(&self, store: &RocksStore, source: &EventSource, restored: u64) -> Result<(), RuntimeError>;
}
