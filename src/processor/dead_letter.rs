//! Dead letters: a record that cannot be processed goes, unchanged, to the dead-letter topic
//! with the reason and its origin in headers, inside the same transaction as everything
//! else. Nothing is lost, and processing goes on.

use crate::record::{header, InRecord, OutRecord};

/// The original of `record`, bound for the dead-letter `topic`: a record that cannot be
/// read at all.
pub fn dead_letter(record: &InRecord, reason: &str, topic: &str) -> OutRecord {
    dead_letter_as(record, reason, topic, "bad_record")
}

/// As `dead_letter`; `kind` labels the metric with a fixed word (`invalid_command`,
/// `failed`), never with client input.
pub fn dead_letter_as(record: &InRecord, reason: &str, topic: &str, kind: &'static str) -> OutRecord {
    let mut headers = record.headers.clone();
    headers.insert(header::DLQ_REASON, reason.as_bytes());
    headers.insert(header::DLQ_TOPIC, record.topic.as_bytes());
    headers.insert(header::DLQ_PARTITION, record.partition.to_string());
    headers.insert(header::DLQ_OFFSET, record.offset.to_string());
    metrics::counter!("millrace_dead_letters_total", "topic" => record.topic.clone(), "reason" => kind).increment(1);
    OutRecord {
        topic: topic.to_string(),
        partition: None,
        key: record.key.clone(),
        value: record.value.clone(),
        headers,
        timestamp: record.timestamp,
    }
}
