//! Declarative projections: a topology file maps event types to row changes of one table,
//! with column values taken from the event by small expressions. `Mapping` is what the
//! topology validates; `MappedProjection` runs it through the same `Projection` trait a
//! Rust projection implements.

use super::projection::{Column, Key, ProjectedEvent, Projection, RowChange, TableDef, Version};
use serde_json::Value;
use std::collections::BTreeMap;

/// Where a column's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `$key`: the record key (the aggregate id).
    Key,
    /// `$timestamp`: the record timestamp, epoch milliseconds (fits a timestamptz column).
    Timestamp,
    /// `$offset`, `$partition`, `$topic`: the record's coordinates.
    Offset,
    Partition,
    Topic,
    /// `$.a.b`: a field of the event value; a missing field is NULL.
    Path(Vec<String>),
    /// Anything else, as written (`ACTIVE`, `0`, `true`).
    Literal(Value),
}

impl Expr {
    /// Parses a value written in the file. A string starting with `$` must be one of the
    /// expressions above; every other value is a literal.
    pub fn parse(written: &Value) -> Result<Expr, String> {
        let Value::String(s) = written else { return Ok(Expr::Literal(written.clone())) };
        match s.as_str() {
            "$key" => Ok(Expr::Key),
            "$timestamp" => Ok(Expr::Timestamp),
            "$offset" => Ok(Expr::Offset),
            "$partition" => Ok(Expr::Partition),
            "$topic" => Ok(Expr::Topic),
            _ if s.starts_with("$.") => {
                let path: Vec<String> = s[2..].split('.').map(str::to_string).collect();
                if path.iter().any(String::is_empty) {
                    return Err(format!("{s:?} is not a field path; expected $.field or $.field.subfield"));
                }
                Ok(Expr::Path(path))
            }
            _ if s.starts_with('$') => Err(format!(
                "unknown expression {s:?}; expected $key, $timestamp, $offset, $partition, $topic or $.field.path"
            )),
            _ => Ok(Expr::Literal(written.clone())),
        }
    }

    pub fn eval(&self, event: &ProjectedEvent<'_>) -> Value {
        match self {
            Expr::Key => event.key.map_or(Value::Null, |k| Value::String(k.to_string())),
            Expr::Timestamp => Value::from(event.timestamp_ms),
            Expr::Offset => Value::from(event.offset),
            Expr::Partition => Value::from(event.partition),
            Expr::Topic => Value::String(event.topic.to_string()),
            Expr::Path(path) => field(event.value, path).cloned().unwrap_or(Value::Null),
            Expr::Literal(v) => v.clone(),
        }
    }
}

fn field<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, name| match v {
        Value::Object(m) => m.get(name),
        Value::Array(a) => name.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// What one event type does to its row.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Set these columns (inserting the row if missing).
    Upsert(Vec<(String, Expr)>),
    Delete,
}

/// A declarative projection, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub table: String,
    /// The key column; its value is the record key.
    pub key: Column,
    /// The version column, filled from the event's `version`; guards older events.
    pub version: Option<String>,
    /// The other columns, for CREATE TABLE.
    pub columns: Vec<Column>,
    /// By event type (the event's `type` field). Other types are skipped.
    pub events: BTreeMap<String, Action>,
}

pub struct MappedProjection(pub Mapping);

impl Projection for MappedProjection {
    fn project(&self, event: &ProjectedEvent<'_>) -> Result<Vec<RowChange>, String> {
        let m = &self.0;
        let ty = event.value.get("type").and_then(Value::as_str).ok_or("the event has no string field `type`")?;
        let Some(action) = m.events.get(ty) else { return Ok(Vec::new()) };
        let key_value = event.key.ok_or("the record has no UTF-8 key to fill the key column with")?;
        let key = Key { column: m.key.name.clone(), value: Value::String(key_value.to_string()) };
        let version = match &m.version {
            None => None,
            Some(column) => {
                let v = event.value.get("version").and_then(Value::as_i64).ok_or("the event has no integer field `version`")?;
                Some(Version { column: column.clone(), value: v })
            }
        };
        let change = match action {
            Action::Delete => RowChange::Delete { table: m.table.clone(), key, version },
            Action::Upsert(set) => {
                let mut columns: Vec<(String, Value)> = set.iter().map(|(c, e)| (c.clone(), e.eval(event))).collect();
                if let Some(v) = &version {
                    columns.push((v.column.clone(), Value::from(v.value)));
                }
                RowChange::Upsert { table: m.table.clone(), key, columns, version }
            }
        };
        Ok(vec![change])
    }

    fn tables(&self) -> Vec<TableDef> {
        let m = &self.0;
        let mut columns = Vec::new();
        if let Some(v) = &m.version {
            columns.push(Column { name: v.clone(), sql_type: "bigint".into() });
        }
        columns.extend(m.columns.iter().cloned());
        vec![TableDef { name: m.table.clone(), key: m.key.clone(), columns }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn customers() -> MappedProjection {
        let text = |n: &str| Column { name: n.into(), sql_type: "text".into() };
        let upsert = |set: &[(&str, &str)]| {
            Action::Upsert(set.iter().map(|(c, e)| (c.to_string(), Expr::parse(&json!(e)).unwrap())).collect())
        };
        MappedProjection(Mapping {
            table: "customers".into(),
            key: text("id"),
            version: Some("version".into()),
            columns: vec![text("status"), text("name")],
            events: BTreeMap::from([
                ("CustomerCreated".into(), upsert(&[("status", "ACTIVE"), ("name", "$.payload.name")])),
                ("CustomerDeleted".into(), upsert(&[("status", "DELETED")])),
                ("CustomerPurged".into(), Action::Delete),
            ]),
        })
    }

    fn event<'a>(key: Option<&'a str>, value: &'a Value) -> ProjectedEvent<'a> {
        ProjectedEvent { topic: "customer-events", partition: 2, offset: 7, timestamp_ms: 1_700_000_000_000, key, value }
    }

    #[test]
    fn an_event_type_becomes_its_row_change_with_the_version_guard() {
        let v = json!({"aggregate_id": "c1", "version": 3, "type": "CustomerCreated", "payload": {"name": "Ada"}});
        let changes = customers().project(&event(Some("c1"), &v)).unwrap();
        assert_eq!(changes, vec![RowChange::Upsert {
            table: "customers".into(),
            key: Key { column: "id".into(), value: json!("c1") },
            columns: vec![("status".into(), json!("ACTIVE")), ("name".into(), json!("Ada")), ("version".into(), json!(3))],
            version: Some(Version { column: "version".into(), value: 3 }),
        }]);
        let purge = json!({"version": 4, "type": "CustomerPurged"});
        assert!(matches!(customers().project(&event(Some("c1"), &purge)).unwrap()[..], [RowChange::Delete { .. }]));
    }

    #[test]
    fn other_event_types_are_skipped_and_a_bad_event_says_why() {
        let other = json!({"version": 1, "type": "CustomerRenamed"});
        assert_eq!(customers().project(&event(Some("c1"), &other)).unwrap(), vec![]);
        let no_version = json!({"type": "CustomerDeleted"});
        assert!(customers().project(&event(Some("c1"), &no_version)).unwrap_err().contains("version"));
        let v = json!({"version": 1, "type": "CustomerDeleted"});
        assert!(customers().project(&event(None, &v)).unwrap_err().contains("key"));
        assert!(customers().project(&event(Some("c1"), &json!([1]))).unwrap_err().contains("type"));
    }

    #[test]
    fn expressions_parse_and_evaluate() {
        let v = json!({"a": {"b": [10, 20]}});
        let e = event(Some("k"), &v);
        assert_eq!(Expr::parse(&json!("$.a.b.1")).unwrap().eval(&e), json!(20));
        assert_eq!(Expr::parse(&json!("$.a.missing")).unwrap().eval(&e), Value::Null);
        assert_eq!(Expr::parse(&json!("$key")).unwrap().eval(&e), json!("k"));
        assert_eq!(Expr::parse(&json!("$timestamp")).unwrap().eval(&e), json!(1_700_000_000_000i64));
        assert_eq!(Expr::parse(&json!("$partition")).unwrap().eval(&e), json!(2));
        assert_eq!(Expr::parse(&json!(5)).unwrap(), Expr::Literal(json!(5)));
        assert!(Expr::parse(&json!("$nope")).unwrap_err().contains("unknown expression"));
        assert!(Expr::parse(&json!("$.a..b")).is_err());
    }
}
