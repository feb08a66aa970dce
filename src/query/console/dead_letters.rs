//! The dead-letters page: the quarantined keys of every instance, then the last dead
//! letters, read from the dead-letter topic itself when the page asks: the topic is the
//! record of what failed, whichever instance wrote it and across restarts.
//! A short-lived read_committed reader starts each partition `n` records before its end
//! and stops at every partition's end (or at a deadline, so a slow broker slows the page
//! down, never hangs it).

use super::feed::{gather, Seen};
use super::html::{self, badge, esc, notice, table, truncate, url, Tab};
use super::Ui;
use crate::kafka::Clients;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use std::fmt::Write;
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

pub(super) async fn page(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let topic = ui.console.topology.dead_letter_topic();
    let mut body = String::from("<h1>Quarantined keys</h1>");
    body.push_str(&quarantined_html(&gather(&ui, &headers).await));
    let _ = write!(body, "<h1>Dead letters</h1><p>The newest records of <code>{}</code>.</p>", esc(&topic));
    let (clients, t) = (ui.console.clients.clone(), topic.clone());
    let read = match tokio::task::spawn_blocking(move || last(&clients, &t, 50, Duration::from_secs(3))).await {
        Ok(letters) => letters.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match read {
        Ok(letters) if letters.is_empty() => body.push_str(&notice("ok", "none")),
        Ok(letters) => {
            let rows: Vec<Vec<String>> = letters
                .iter()
                .map(|d| {
                    vec![
                        d.timestamp.map_or(String::new(), html::clock),
                        esc(&d.key),
                        esc(&d.reason),
                        esc(&d.origin),
                        format!("<code>{}</code>", esc(&truncate(&d.value, 120))),
                    ]
                })
                .collect();
            body.push_str(&table("dead-letters", &["time (UTC)", "key", "reason", "from", "record"], &rows));
        }
        Err(e) => body.push_str(&notice("bad", &format!("cannot read {topic}: {e}"))),
    }
    ui.page("Dead letters", Tab::DeadLetters, &body)
}

/// Every instance's quarantined keys, with a link to each key's page (where the history
/// shows whether a repair can refold it).
fn quarantined_html(seen: &[Seen]) -> String {
    let mut rows = Vec::new();
    for s in seen {
        match &s.feed {
            Ok(f) => rows.extend(f.quarantined.iter().map(|q| {
                vec![
                    esc(&q.store),
                    format!(r#"<a href="/ui/stores/{}/keys/{}">{}</a>"#, url(&q.store), url(&q.key), esc(&q.key)),
                    esc(&f.instance),
                    html::clock(q.since_ms),
                    esc(&q.reason),
                ]
            })),
            Err(why) => rows.push(vec![String::new(), String::new(), esc(&s.instance), String::new(), badge("bad", &format!("unreachable: {why}"))]),
        }
    }
    if rows.is_empty() {
        return notice("ok", "none: every snapshot met so far could be read");
    }
    let mut out = table("quarantined", &["store", "key", "owner", "since (UTC)", "why"], &rows);
    out.push_str("<p>Each command for a quarantined key is answered <code>failed</code> until its snapshot is repaired \
(<code>POST /aggregates/{aggregate}/{id}/snapshot/repair</code>) or deleted (docs/operations.md).</p>");
    out
}
