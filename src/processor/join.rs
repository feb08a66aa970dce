//! Stream–table join, co-partitioned: a stream record looks its key up in the table's store
//! of the same partition (overlay included, so a table update earlier in the same
//! transaction is seen) and the pair goes to the output topic. Inner joins drop records
//! without a match; left joins emit them with `"table": null`.

use super::{dead_letter, Context, ProcessError, Processor};
use crate::record::{header, InRecord, OutRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinKind {
    Inner,
    Left,
}

pub struct JoinProcessor {
    pub table_store: String,
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
        let stream: serde_json::Value = match serde_json::from_slice(value) {
            Ok(v) => v,
            Err(e) => {
                ctx.out.send(dead_letter(record, &format!("invalid JSON: {e}"), &self.dead_letter_topic));
                return Ok(());
            }
        };
        let table = ctx
            .peer(&self.table_store)
            .expect("co-partitioning puts the table's task of this partition on this instance")
            .get(key)?
            .and_then(|v| serde_json::from_slice::<serde_json::Value>(&v).ok());
        if table.is_none() && self.kind == JoinKind::Inner {
            metrics::counter!("millrace_join_unmatched_total", "store" => self.table_store.clone()).increment(1);
            return Ok(());
        }
        let out_key = record.headers.get(header::ORIGINAL_KEY).map(<[u8]>::to_vec).unwrap_or_else(|| key.to_vec());
        let joined = serde_json::json!({
            "key": String::from_utf8_lossy(key),
            "stream": stream,
            "table": table,
        });
        ctx.out.send(OutRecord {
            topic: self.output_topic.clone(),
            partition: None,
            key: Some(out_key),
            value: Some(serde_json::to_vec(&joined).expect("JSON values serialize")),
            headers: Default::default(),
        });
        Ok(())
    }
}
