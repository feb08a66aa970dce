//! The records that flow through millrace, independent of the Kafka client: what a task
//! reads (`InRecord`), what it writes (`OutRecord`), and where writes go (`Collector`).

use std::fmt;

/// A topic and one of its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self { topic: topic.into(), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Record headers in order; Kafka allows repeats, lookups take the last one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, Vec<u8>)>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.0.push((name.into(), value.into()));
    }
}

/// A record consumed from an input topic.
#[derive(Debug, Clone)]
pub struct InRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Headers,
}

/// A record to produce. `partition: None` lets the producer's Java-compatible murmur2
/// partitioner choose from the key (see `codec::murmur2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: String,
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Headers,
    /// Event time, carried over from the input record, as Kafka Streams does: a re-keyed
    /// record keeps its order's time, so the join downstream can order it against the
    /// table by time. None lets the producer stamp it.
    pub timestamp: Option<i64>,
}

/// Where a processor's output goes. In production, the open Kafka transaction; in the
/// broker-free driver, a buffer.
pub trait Collector {
    fn send(&mut self, record: OutRecord);
}

impl Collector for Vec<OutRecord> {
    fn send(&mut self, record: OutRecord) {
        self.push(record);
    }
}

/// Header names millrace reads and writes. One place, so producers and tools agree.
pub mod header {
    pub const REPLY_TO: &str = "reply-to";
    pub const CORRELATION_ID: &str = "correlation-id";
    pub const VERSION: &str = "millrace.version";
    pub const SCHEMA_VERSION: &str = "millrace.schema-version";
    pub const COMMAND_ID: &str = "millrace.command-id";
    /// An operator's request about an aggregate's snapshot, sent on its command topic so
    /// the partition's owner carries it out in its own transaction: `delete-snapshot` or
    /// `repair-snapshot` (see docs/operations.md).
    pub const ADMIN: &str = "millrace.admin";
    /// The key a record had before a re-key node replaced it.
    pub const ORIGINAL_KEY: &str = "millrace.original-key";
    pub const DLQ_REASON: &str = "millrace.dlq.reason";
    pub const DLQ_TOPIC: &str = "millrace.dlq.topic";
    pub const DLQ_PARTITION: &str = "millrace.dlq.partition";
    pub const DLQ_OFFSET: &str = "millrace.dlq.offset";
}
