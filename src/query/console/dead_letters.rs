//! The last dead letters, read from the dead-letter topic itself when the page asks: the
//! topic is the record of what failed, whichever instance wrote it and across restarts.
//! A short-lived read_committed reader starts each partition `n` records before its end
//! and stops at every partition's end (or at a deadline, so a slow broker slows the page
//! down, never hangs it).

use crate::kafka::Clients;
use crate::record::header;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// One dead letter as the console lists it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: String,
    pub reason: String,
    /// `topic-partition@offset` of the record that failed.
    pub origin: String,
    /// The start of the record's value, as text.
    pub value: String,
}

/// Up to `n` of the newest dead letters, newest first.
pub fn last(clients: &Clients, topic: &str, n: usize, deadline: Duration) -> Result<Vec<DeadLetter>, KafkaError> {
    let started = Instant::now();
    let mut cfg = clients.reader(format!("millrace-console-{}", std::process::id()));
    cfg.set("enable.partition.eof", "true");
    let consumer: BaseConsumer = cfg.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), deadline)?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, deadline.saturating_sub(started.elapsed()))?;
        assignment.add_partition_offset(topic, p, Offset::Offset(low.max(high - n as i64)))?;
    }
    consumer.assign(&assignment)?;
    let mut out = Vec::new();
    let mut at_end = 0;
    while at_end < partitions.len() && started.elapsed() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => at_end += 1,
            Some(Err(e)) => return Err(e),
            Some(Ok(m)) => {
                let text = |name: &str| -> String {
                    m.headers()
                        .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                let value = m.payload().map(|v| String::from_utf8_lossy(&v[..v.len().min(300)]).into_owned()).unwrap_or_default();
                out.push(DeadLetter {
                    offset: m.offset(),
                    timestamp: m.timestamp().to_millis(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
                    reason: text(header::DLQ_REASON),
                    origin: format!("{}-{}@{}", text(header::DLQ_TOPIC), text(header::DLQ_PARTITION), text(header::DLQ_OFFSET)),
                    value,
                });
            }
        }
    }
    out.sort_by_key(|d| std::cmp::Reverse((d.timestamp, d.offset)));
    out.truncate(n);
    Ok(out)
}
