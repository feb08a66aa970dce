//! A table: the latest value per key of a topic, materialized in a store. A record upserts
//! its key; a tombstone (no value) deletes it. This is the seed's "list all customers"
//! without event sourcing: a compacted customer topic read into a queryable RocksDB table,
//! and the table side of the joins to come.

use super::{dead_letter, Context, ProcessError, Processor, ValueRenderer};
use crate::codec::Format;
use crate::record::InRecord;

pub struct TableProcessor {
    pub format: Format,
    pub dead_letter_topic: String,
}

impl TableProcessor {
    /// Whether a value belongs in the table (as opposed to the dead-letter topic). Restore
    /// from the input topic applies the same rule.
    pub fn accepts(format: Format, value: Option<&[u8]>) -> bool {
        match (format, value) {
            (Format::Json, Some(v)) => serde_json::from_slice::<serde::de::IgnoredAny>(v).is_ok(),
            _ => true,
        }
    }
}

impl Processor for TableProcessor {
    fn process(&mut self, record: &InRecord, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let Some(key) = record.key.as_deref() else {
            ctx.out.send(dead_letter(record, "table record has no key", &self.dead_letter_topic));
            return Ok(());
        };
        if let (Format::Json, Some(v)) = (self.format, record.value.as_deref()) {
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(v) {
                ctx.out.send(dead_letter(record, &format!("invalid JSON: {e}"), &self.dead_letter_topic));
                return Ok(());
            }
        }
        ctx.put(key, record.value.clone());
        metrics::counter!("millrace_table_updates_total", "topic" => record.topic.clone()).increment(1);
        Ok(())
    }
}

/// `{"value": <the JSON value>}`, or `{"value_hex": ..}` for a protobuf table.
pub struct TableRenderer {
    pub format: Format,
}

impl ValueRenderer for TableRenderer {
    fn render(&self, value: &[u8]) -> Result<serde_json::Value, String> {
        Ok(match self.format {
            Format::Json => serde_json::json!({"value": serde_json::from_slice::<serde_json::Value>(value).map_err(|e| e.to_string())?}),
            Format::Protobuf => {
                serde_json::json!({"value_hex": value.iter().map(|b| format!("{b:02x}")).collect::<String>()})
            }
        })
    }
}
