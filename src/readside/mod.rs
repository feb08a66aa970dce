//! The read side: events out of Kafka into PostgreSQL, exactly once, without Kafka
//! transactions; and the outbox, rows out of PostgreSQL onto Kafka, exactly once, with
//! them. The data path, in file order:
//!
//! | file | owns |
//! |---|---|
//! | [`projection`] | the `Projection` trait: one event in, row changes out, pure |
//! | [`mapped`] | declarative projections from topology files, as a `Projection` |
//! | [`sql`] | the statements, rendered from row changes (pure, unit-tested) |
//! | [`postgres`] | the pool, the schema, and the one transaction of rows + positions |
//! | [`batch`] | one batch: records decoded and projected, dead letters first, then the commit |
//! | [`runner`] | a projection's consumer: group membership, positions from PostgreSQL, batches |
//! | [`outbox`] | the outbox relay: rows of a table onto Kafka by transaction visibility, exactly once |
//! | [`rebuild`] | blue/green: shadow tables built from offset 0, swapped in one transaction |
//!
//! Exactly once here means: each batch of events is one PostgreSQL transaction that holds
//! the row changes and the new positions (`millrace_offsets`); on assignment a partition
//! resumes from the position in PostgreSQL, never from the group's committed offset. The
//! runtime's engine knows nothing of this module, and no tokio-postgres type leaves it.

pub mod batch;
pub mod mapped;
pub mod outbox;
pub mod postgres;
pub mod projection;
pub mod rebuild;
pub mod runner;
pub mod sql;

pub use projection::{Column, Key, ProjectedEvent, Projection, RowChange, TableDef, Version};

use crate::error::Recovery;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;

/// Backoff between retries of a passing fault (the database away, the broker moving): from
/// 200 ms, doubling up to 10 s.
#[derive(Default)]
pub(crate) struct Backoff(Option<Duration>);

impl Backoff {
    /// Sleeps the next backoff (in short steps, so `stop` is heard), logging what failed.
    pub(crate) fn wait(&mut self, what: &str, why: &ReadSideError, stop: &AtomicBool) {
        let d = self.0.map_or(Duration::from_millis(200), |d| (d * 2).min(Duration::from_secs(10)));
        self.0 = Some(d);
        tracing::warn!(error = %why, retry_in_ms = d.as_millis() as u64, "{what} fault; retrying");
        sleep(d, stop);
    }
}

/// Sleeps `d`, or until `stop`.
pub(crate) fn sleep(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadSideError {
    #[error("postgres {op}: {}", describe(source))]
    Postgres { op: &'static str, source: tokio_postgres::Error },
    #[error("no connection to PostgreSQL: {reason}")]
    Pool { reason: String },
    #[error("the PostgreSQL URL is not usable: {reason} (expected postgres://user:password@host:port/database)")]
    Url { reason: String },
    #[error("{topic}-{partition} moved: this writer believed its position was {believed:?}, PostgreSQL holds {stored:?}; another writer owns it now")]
    Moved { topic: String, partition: i32, believed: Option<i64>, stored: Option<i64> },
    #[error("table {table}, column {column}: millrace cannot write type {sql_type} (text, integers, double precision, boolean, timestamptz, timestamp, json and jsonb it can)")]
    UnsupportedType { table: String, column: String, sql_type: String },
    #[error("kafka {op}: {source}")]
    Kafka { op: &'static str, source: rdkafka::error::KafkaError },
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error("no positions within {waited_s} s at assignment: {reason}")]
    Positions { waited_s: u64, reason: String },
    #[error("rebuild: {reason}")]
    Rebuild { reason: String },
    #[error("outbox table {table}: {reason}")]
    OutboxTable { table: String, reason: String },
}

/// The database's own message, SQLSTATE and detail: tokio-postgres shows only "db error".
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                s.push_str(": ");
                s.push_str(detail);
            }
            s
        }
        None => e.to_string(),
    }
}

impl ReadSideError {
    /// Whether the database refused a row for the row's own sake (a value out of range, a
    /// constraint): the event is at fault, not the database or the projection.
    pub fn is_row_fault(&self) -> bool {
        let ReadSideError::Postgres { source, .. } = self else { return false };
        // Class 22 is data exceptions, class 23 integrity constraint violations.
        source.code().is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
    }

    pub fn recovery(&self) -> Recovery {
        match self {
            ReadSideError::Postgres { source, .. } => match source.code() {
                // No code: the connection broke, or never was. Classes 08 (connection), 40
                // (serialization failure, deadlock), 53 (resources), 57 (shutdown), 58
                // (system) pass.
                None => Recovery::Retry,
                Some(c) if ["08", "40", "53", "57", "58"].iter().any(|class| c.code().starts_with(class)) => Recovery::Retry,
                Some(c) if *c == SqlState::UNIQUE_VIOLATION => Recovery::Reject,
                Some(c) if c.code().starts_with("22") || c.code().starts_with("23") => Recovery::Reject,
                // Class 42 (a table or column missing, a privilege) and the rest: the
                // projection does not fit the database; a retry would fail the same way.
                Some(_) => Recovery::Fatal,
            },
            ReadSideError::Pool { .. }
            | ReadSideError::Kafka { .. }
            | ReadSideError::Positions { .. } => Recovery::Retry,
            ReadSideError::Sink(e) => e.recovery(),
            ReadSideError::Moved { .. } => Recovery::GiveUpPartitions,
            ReadSideError::Url { .. } => Recovery::Reject,
            ReadSideError::UnsupportedType { .. } | ReadSideError::Rebuild { .. }
            | ReadSideError::OutboxTable { .. } => Recovery::Fatal,
        }
    }
}
