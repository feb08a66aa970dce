//! Stream–table join, co-partitioned: a stream record looks its key up in the table's store
//! of the same partition (overlay included, so a table update earlier in the same
//! transaction is seen) and the pair goes to the output topic. Inner joins drop records
//! without a match; left joins emit them with `"table": null`.

use super::{dead_letter, Context, ProcessError, Processor};
use crate::record::{header, InRecord, OutRecord};
use crate::store::StoreError;
use serde_json::value::RawValue;
use std::sync::Arc;

/// A table held whole on every instance (a global table), looked up by key.
pub trait Lookup: Send + Sync {
    /// The latest value.
    fn lookup(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// The value at event time `ts`; a table without history answers the latest.
    fn lookup_as_of(&self, key: &[u8], _ts: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.lookup(key)
    }

    /// Since when `key` has existed without a break, as seen at event time `ts`; None if
    /// it does not exist then. A table without history answers from the latest value.
    fn exists_since(&self, key: &[u8], ts: i64) -> Result<Option<i64>, StoreError> {
        Ok(self.lookup_as_of(key, ts)?.map(|_| i64::MIN))
    }

    /// Through which event time the table is final: every record of that time or before
    /// is applied and none is still to come (`runtime::progress`). A lookup as of a time
    /// up to this answers what a replay will answer.
    fn final_through(&self) -> i64 {
        i64::MAX
    }
}

/// Where a join finds its table.
#[derive(Clone)]
pub enum TableSource {
    /// A co-partitioned table: the peer store of the same partition, by store name.
    Peer(String),
    /// A global table, with the stream field that holds the join key. The engine holds a
    /// stream record back until the table is final through its time (`InputSync`).
    Global { table: Arc<dyn Lookup>, key_field: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinKind {
    Inner,
    Left,
}

pub struct JoinProcessor {
    pub table: TableSource,
    pub kind: JoinKind,
    pub output_topic: String,
    pub dead_letter_topic: String,
}

impl Processor for JoinProcessor {
    fn process(&mut self, record: &InRecord, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let (Some(key), Some(value)) = (record.key.as_deref(), record.value.as_deref()) else {
            ctx.out.send(dead_letter(record, "join input needs a key and a value", &self.dead_letter_topic));
            return Ok(());
        };
        // Checked, not parsed into a tree: the record goes out as it came (`Joined`).
        let stream: &RawValue = match serde_json::from_slice(value) {
            Ok(v) => v,
            Err(e) => {
                ctx.out.send(dead_letter(record, &format!("invalid JSON: {e}"), &self.dead_letter_topic));
                return Ok(());
            }
        };
        let (join_key, found) = match &self.table {
            TableSource::Peer(store) => {
                let peer = ctx.peer(store).ok_or_else(|| ProcessError::NotCoPartitioned {
                    store: store.clone(),
                    topic: record.topic.clone(),
                    partition: record.partition,
                })?;
                // As of the record's time, so a record that arrives after a newer table
                // update (a repartition topic interleaves its writers differently on every
                // run) still meets the value of its own time.
                let found = match record.timestamp {
                    Some(ts) => peer.get_as_of(key, ts)?,
                    None => peer.get(key)?,
                };
                (key.to_vec(), found)
            }
            TableSource::Global { table, key_field } => {
                let parsed: serde_json::Value = serde_json::from_str(stream.get()).expect("checked above");
                let Some(k) = field_key(&parsed, key_field) else {
                    let reason = format!("field {key_field:?} is missing or not a string or number");
                    ctx.out.send(dead_letter(record, &reason, &self.dead_letter_topic));
                    return Ok(());
                };
                // As of the record's time: a replay, with the table already loaded to its end,
                // finds what live processing found.
                let found = match record.timestamp {
                    Some(ts) => table.lookup_as_of(k.as_bytes(), ts)?,
                    None => table.lookup(k.as_bytes())?,
                };
                (k.into_bytes(), found)
            }
        };
        let table: Option<&RawValue> = found.as_deref().and_then(|v| serde_json::from_slice(v).ok());
        if table.is_none() && self.kind == JoinKind::Inner {
            metrics::counter!("millrace_join_unmatched_total").increment(1);
            return Ok(());
        }
        let out_key = record.headers.get(header::ORIGINAL_KEY).map(<[u8]>::to_vec).unwrap_or_else(|| key.to_vec());
        let key = join_key.as_slice();
        let joined = Joined { key: String::from_utf8_lossy(key), stream, table };
        ctx.out.send(OutRecord {
            topic: self.output_topic.clone(),
            partition: None,
            key: Some(out_key),
            value: Some(serde_json::to_vec(&joined).expect("JSON values serialize")),
            headers: Default::default(),
            timestamp: record.timestamp,
        });
        Ok(())
    }
}

/// What a join writes: `{"key", "stream", "table"}`, the two values copied as they were
/// stored (checked JSON, never parsed into a tree and written again: that was most of a
/// join's work).
#[derive(serde::Serialize)]
struct Joined<'a> {
    key: std::borrow::Cow<'a, str>,
    stream: &'a RawValue,
    table: Option<&'a RawValue>,
}

/// A join or re-key key from a field, `customer_id` or a dotted path into nested objects
/// such as `payload.customer_id` (an event's payload): strings as they are, numbers as text.
pub fn field_key(value: &serde_json::Value, field: &str) -> Option<String> {
    let found = field.split('.').try_fold(value, |v, name| v.get(name))?;
    match found {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::field_key;
    use serde_json::json;

    #[test]
    fn keys_come_from_top_level_or_dotted_fields() {
        let v = json!({"customer_id": "c1", "payload": {"customer_id": 7, "empty": ""}});
        assert_eq!(field_key(&v, "customer_id").as_deref(), Some("c1"));
        assert_eq!(field_key(&v, "payload.customer_id").as_deref(), Some("7"));
        assert_eq!(field_key(&v, "payload.empty"), None, "an empty key is no key");
        assert_eq!(field_key(&v, "payload.missing"), None);
        assert_eq!(field_key(&v, "customer_id.deeper"), None);
    }
}
