//! The user's side of a projection: a pure function from one event to the row changes it
//! causes. No I/O happens here; the runner (`readside::runner`) turns the changes into SQL
//! and commits them with the consumed positions in one PostgreSQL transaction. The
//! declarative projections of topology files (`readside::mapped`) implement the same trait.

use serde_json::Value;

/// One event as a projection sees it: the record's coordinates and its value as JSON.
#[derive(Debug, Clone, Copy)]
pub struct ProjectedEvent<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp, milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// The record key as UTF-8 (an aggregate id); None when absent or not UTF-8.
    pub key: Option<&'a str>,
    /// The value, decoded from the topic's codec (a millrace event:
    /// `{"aggregate_id", "version", "type", "payload"}`).
    pub value: &'a Value,
}

/// A change to one row, identified by its key column.
///
/// Column values are JSON; the runner converts each to the column's SQL type (text,
/// bigint, integer, double precision, boolean, timestamptz from epoch milliseconds or
/// RFC 3339, json/jsonb from anything). A value that does not convert sends the event to
/// the dead-letter topic with the column named.
#[derive(Debug, Clone, PartialEq)]
pub enum RowChange {
    /// Insert the row, or update the named columns of an existing one. Columns not named
    /// keep their value (or their default, on insert).
    Upsert { table: String, key: Key, columns: Vec<(String, Value)>, version: Option<Version> },
    /// Delete the row.
    Delete { table: String, key: Key, version: Option<Version> },
}

impl RowChange {
    pub fn table(&self) -> &str {
        match self {
            RowChange::Upsert { table, .. } | RowChange::Delete { table, .. } => table,
        }
    }
}

/// The key column of a row and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub column: String,
    pub value: Value,
}

/// A version column: the change applies only to a row whose version is lower (or absent),
/// so an older event never overwrites a newer one (a rebuild racing the live table, events
/// of one key from two topics).
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub column: String,
    pub value: i64,
}

/// A table a projection writes, created when missing. Later schema changes are the
/// user's migrations: millrace never alters an existing table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDef {
    pub name: String,
    /// The primary key column, first.
    pub key: Column,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    /// The SQL type as written in CREATE TABLE (`text`, `bigint`, `timestamptz`, ...).
    pub sql_type: String,
}

/// Events into rows. Implement `project`; `tables` is optional.
pub trait Projection: Send + Sync + 'static {
    /// The row changes one event causes, in order. Pure. An empty list skips the event.
    /// An `Err` is the event's fault (a field missing that the projection needs): the event
    /// goes to the dead-letter topic with the reason, and the projection goes on.
    fn project(&self, event: &ProjectedEvent<'_>) -> Result<Vec<RowChange>, String>;

    /// The tables to create when missing, before the first event.
    fn tables(&self) -> Vec<TableDef> {
        Vec::new()
    }
}
