//! One batch of a projection, from records to a committed PostgreSQL transaction: each
//! record decoded and projected, the dead letters sent first, then the rows and positions
//! committed together. The live runner and the blue/green rebuild both write through it.

use super::postgres::{Batch, Committed, ProjectionDb};
use super::projection::{ProjectedEvent, Projection, RowChange};
use super::ReadSideError;
use crate::codec::Format;
use crate::record::{InRecord, TopicPartition};
use rdkafka::TopicPartitionList;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct BatchWriter {
    pub projection: Arc<dyn Projection>,
    pub db: Arc<ProjectionDb>,
    pub runtime: tokio::runtime::Handle,
    /// The codec of each input topic.
    pub codecs: HashMap<String, Format>,
    pub dead_letter_topic: String,
    /// A plain (not transactional) producer: dead letters are flushed before the batch
    /// commits, so a crash between the two repeats them and never loses one.
    pub dead_letters: Mutex<crate::sink::TransactionalSink>,
}

impl BatchWriter {
    /// Projects `records` and commits them in one transaction, where each partition's
    /// stored position is what `believed` says (None: none stored yet). One attempt: the
    /// caller decides what a failure means.
    pub fn write(&self, records: &[InRecord], believed: &dyn Fn(&TopicPartition) -> Option<i64>) -> Result<(Batch, Committed), ReadSideError> {
        let mut partitions: Vec<(TopicPartition, Option<i64>, i64)> = Vec::new();
        for r in records {
            let tp = TopicPartition::new(r.topic.clone(), r.partition);
            match partitions.iter_mut().find(|(p, _, _)| *p == tp) {
                Some(entry) => entry.2 = r.offset + 1,
                None => partitions.push((tp.clone(), believed(&tp), r.offset + 1)),
            }
        }
        let items = records.iter().map(|r| self.project(r)).collect();
        let batch = Batch { partitions, items };
        let send_dead = |dead: &[(usize, String)]| -> Result<(), ReadSideError> {
            let mut sink = self.dead_letters.lock().expect("dead letter sink lock");
            sink.begin()?;
            for (i, reason) in dead {
                sink.send(&crate::processor::dead_letter_as(&records[*i], reason, &self.dead_letter_topic, "projection"))?;
            }
            sink.commit(&TopicPartitionList::new(), None)?;
            Ok(())
        };
        let done = self.runtime.block_on(self.db.commit(&batch, &send_dead))?;
        Ok((batch, done))
    }

    /// One record's row changes, or why it has none.
    fn project(&self, record: &InRecord) -> Result<Vec<RowChange>, String> {
        let bytes = record.value.as_deref().ok_or("the record has no value (a tombstone)")?;
        let value: serde_json::Value = match self.codecs.get(&record.topic) {
            Some(Format::Json) | None => serde_json::from_slice(bytes).map_err(|e| format!("the value is not JSON: {e}"))?,
            Some(Format::Protobuf) => return Err("projections read JSON topics; this one is protobuf".into()),
        };
        let event = ProjectedEvent {
            topic: &record.topic,
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp.unwrap_or(0),
            key: record.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()),
            value: &value,
        };
        self.projection.project(&event)
    }
}
