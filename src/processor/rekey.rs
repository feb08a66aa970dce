//! Re-key: takes a record's new key from a field of its JSON value and writes it to the
//! node's repartition topic, where the producer's murmur2 places it on the partition of
//! the table it will meet. The write is part of the open transaction, with the input
//! offset: exactly once across the hop.

use super::{dead_letter, Context, ProcessError, Processor};
use crate::record::{header, InRecord, OutRecord};

pub struct RekeyProcessor {
    pub key_field: String,
    pub repartition_topic: String,
    pub dead_letter_topic: String,
}

impl Processor for RekeyProcessor {
    fn process(&mut self, record: &InRecord, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let value: serde_json::Value = match record.value.as_deref().map(serde_json::from_slice) {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                ctx.out.send(dead_letter(record, &format!("invalid JSON: {e}"), &self.dead_letter_topic));
                return Ok(());
            }
            None => {
                ctx.out.send(dead_letter(record, "record has no value to re-key by", &self.dead_letter_topic));
                return Ok(());
            }
        };
        let key = match super::join::field_key(&value, &self.key_field) {
            Some(k) => k,
            None => {
                let reason = format!("field {:?} is missing or not a string or number", self.key_field);
                ctx.out.send(dead_letter(record, &reason, &self.dead_letter_topic));
                return Ok(());
            }
        };
        let mut headers = record.headers.clone();
        if let Some(k) = &record.key {
            headers.insert(header::ORIGINAL_KEY, k.clone());
        }
        ctx.out.send(OutRecord {
            topic: self.repartition_topic.clone(),
            partition: None,
            key: Some(key.into_bytes()),
            value: record.value.clone(),
            headers,
            timestamp: record.timestamp,
        });
        Ok(())
    }
}
