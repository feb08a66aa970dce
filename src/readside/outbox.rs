//! The transactional outbox relay: rows a user's transactions insert into an outbox table
//! go to Kafka exactly once, in the order their transactions committed.
//!
//! **Which rows are new.** Writers commit out of id order: a transaction that took id 10
//! may commit after one that took id 11, so "every id above the last one relayed" would
//! skip 10 for good. The relay works by transaction visibility instead. Each row carries
//! the id of the transaction that inserted it (`txid xid8 DEFAULT pg_current_xact_id()`).
//! The relay's position is a PostgreSQL snapshot `done`: every row visible in it is on
//! Kafka. Each step takes a new snapshot `now` and relays the rows visible in `now` and not
//! in `done` (their transactions committed in between), in id order, then `done = now`. A
//! transaction still open at `now` is not visible in it, so its rows come in a later step,
//! whatever their ids. No sleep, no guessed horizon.
//!
//! **Order.** Rows of one key keep their commit order where the writers' transactions on
//! that key are ordered (one after the other, or serialized by a lock on the business row):
//! a later transaction's rows either become visible in a later step, or in the same step
//! with higher ids, since they were inserted after the earlier one committed.
//!
//! **Exactly once.** The rows and the new position go to Kafka in one transaction (the
//! position to `<app>-outbox-positions`, keyed by outbox). A crash before its commit
//! relays the same rows again from the old position; after it, the relay starts from the
//! new one. One relay per outbox runs at a time: the instance that holds partition 0 of
//! the positions topic in the group `<app>-outbox-<name>`; its transactional id fences the
//! previous holder before it reads the position.
//!
//! **Rows it cannot relay** (a topic that does not exist or cannot, a record the broker
//! refuses for good) go to the dead-letter topic in the same transaction, with the reason.

use super::postgres::{OutboxDb, OutboxRow};
use super::{sleep, Backoff, ReadSideError};
use crate::error::Recovery;
use crate::kafka::Clients;
use crate::record::{header, Headers, OutRecord, TopicPartition};
use crate::runtime::reader::PartitionReader;
use crate::sink::{SinkError, TransactionalSink};
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a relay is: every row visible in `done` is on Kafka; with `current`, so are the
/// rows of the step up to snapshot `current` with ids up to `after_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub done: String,
    #[serde(default)]
    pub current: Option<String>,
    #[serde(default)]
    pub after_id: Option<i64>,
}

impl Position {
    /// Before any transaction: a snapshot that sees none (normal transaction ids start at 3).
    pub fn start() -> Self {
        Position { done: "3:3:".into(), current: None, after_id: None }
    }
}

pub struct OutboxRelay {
    pub name: String,
    /// The group and transactional id: `<app>-outbox-<name>`.
    pub group: String,
    pub positions_topic: String,
    pub spec: crate::topology::OutboxSpec,
    pub db: Arc<OutboxDb>,
    pub runtime: tokio::runtime::Handle,
    pub clients: Clients,
    pub dead_letter_topic: String,
}

/// The relay while this instance holds the outbox.
struct Leader {
    sink: TransactionalSink,
    position: Position,
    /// Topics known to exist.
    topics: HashSet<String>,
    /// When relayed rows were last swept (`sweep`).
    swept: Instant,
}

/// How often a relay deletes every row its position says is relayed (`sweep`).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl OutboxRelay {
    /// Runs until `stop` (on a thread of its own). Passing faults are retried; the result
    /// is an error only for a fatal one.
    pub fn run(&self, stop: &AtomicBool) -> Result<(), ReadSideError> {
        let _span = tracing::info_span!("outbox", name = %self.name).entered();
        let mut backoff = Backoff::default();
        while !stop.load(Ordering::SeqCst) {
            match self.runtime.block_on(self.db.prepare()) {
                Ok(()) => break,
                Err(e) if e.recovery() == Recovery::Retry => backoff.wait("outbox", &e, stop),
                Err(e) => return Err(e),
            }
        }
        let consumer = self.member()?;
        let mut leader: Option<Leader> = None;
        let mut backoff = Backoff::default();
        while !stop.load(Ordering::SeqCst) {
            // Membership: the holder of partition 0 relays.
            let _ = consumer.poll(if leader.is_some() { Duration::ZERO } else { Duration::from_millis(200) });
            let holds = consumer.assignment().is_ok_and(|a| a.find_partition(&self.positions_topic, 0).is_some());
            if !holds {
                leader = None;
                continue;
            }
            let step = match leader.as_mut() {
                Some(l) => self.step(l),
                None => self.lead().map(|l| {
                    leader = Some(l);
                    true
                }),
            };
            match step {
                Ok(more) => {
                    backoff = Backoff::default();
                    if !more {
                        sleep(Duration::from_millis(self.spec.poll_interval_ms), stop);
                    }
                }
                Err(e) if matches!(e.recovery(), Recovery::Retry | Recovery::GiveUpPartitions | Recovery::AbortAndRewind) => {
                    // Start over as leader: a new producer (fencing a zombie, or fenced
                    // by the new holder) and the position as Kafka has it.
                    leader = None;
                    backoff.wait("outbox", &e, stop);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn member(&self) -> Result<BaseConsumer<DefaultConsumerContext>, ReadSideError> {
        let mut cfg = self.clients.client();
        cfg.set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000");
        self.clients.apply_consumer(&mut cfg);
        let consumer: BaseConsumer = cfg.create().map_err(|source| ReadSideError::Kafka { op: "create outbox member", source })?;
        consumer.subscribe(&[&self.positions_topic]).map_err(|source| ReadSideError::Kafka { op: "subscribe", source })?;
        Ok(consumer)
    }

    /// Becomes the relay: a producer with the outbox's transactional id (which aborts what
    /// a previous holder left open and fences it), then the position as committed.
    fn lead(&self) -> Result<Leader, ReadSideError> {
        let sink = TransactionalSink::new(&self.clients, &self.group, true, Some(self.positions_topic.as_str()))?;
        let reader = PartitionReader::new(&self.clients, "outbox position", format!("{}-position", self.group), &[])
            .map_err(|e| ReadSideError::Positions { waited_s: 0, reason: e.to_string() })?;
        let mut position = Position::start();
        reader
            .read_to_end(&TopicPartition::new(self.positions_topic.clone(), 0), None, &mut |m| {
                if m.key() == Some(self.name.as_bytes()) {
                    if let Some(p) = m.payload().and_then(|v| serde_json::from_slice::<Position>(v).ok()) {
                        position = p;
                    }
                }
                Ok(())
            })
            .map_err(|e| ReadSideError::Positions { waited_s: 0, reason: e.to_string() })?;
        if self.spec.delete_relayed {
            let n = self.runtime.block_on(self.db.cleanup(&position.done))?;
            if n > 0 {
                tracing::info!(rows = n, "deleted rows relayed before a restart");
            }
        }
        tracing::info!(done = %position.done, "relaying the outbox");
        Ok(Leader { sink, position, topics: HashSet::new(), swept: Instant::now() })
    }

    /// One step: the next rows, relayed in one transaction with the new position. Whether
    /// there may be more right away.
    fn step(&self, l: &mut Leader) -> Result<bool, ReadSideError> {
        if self.spec.delete_relayed && l.swept.elapsed() >= SWEEP_EVERY {
            self.sweep(l);
        }
        let started = Instant::now();
        let now = match &l.position.current {
            Some(c) => c.clone(),
            None => self.runtime.block_on(self.db.snapshot())?,
        };
        let after = l.position.after_id.unwrap_or(i64::MIN);
        let rows = self.runtime.block_on(self.db.rows(&l.position.done, &now, after, self.spec.max_batch_rows))?;
        let full = rows.len() >= self.spec.max_batch_rows;
        let next = match rows.last() {
            Some(last) if full => Position { done: l.position.done.clone(), current: Some(now), after_id: Some(last.id) },
            _ => Position { done: now, current: None, after_id: None },
        };
        if rows.is_empty() && l.position.current.is_none() {
            // Nothing committed since `done`: the next step looks again from there.
            return Ok(false);
        }
        let mut dead: BTreeMap<i64, String> = BTreeMap::new();
        for row in &rows {
            if let Some(reason) = self.unrelayable(l, row) {
                dead.insert(row.id, reason);
            }
        }
        // A record the broker refuses for good fails the transaction: it is redone with
        // that row dead-lettered; a row whose dead letter is refused too (larger than the
        // dead-letter topic takes) is skipped, logged and counted. Each round moves a row
        // on, so this ends.
        let mut skipped: HashSet<i64> = HashSet::new();
        loop {
            match self.send(l, &rows, &dead, &skipped, &next) {
                Ok(()) => break,
                Err(SinkError::Poisoned { poisoned, .. }) => {
                    let _ = l.sink.abort();
                    for p in poisoned {
                        if dead.contains_key(&p.offset) {
                            tracing::error!(row = p.offset, reason = %p.reason, "outbox row refused, and its dead letter too; skipped");
                            skipped.insert(p.offset);
                        } else {
                            dead.insert(p.offset, p.reason);
                        }
                    }
                }
                Err(e) => {
                    let _ = l.sink.abort();
                    return Err(e.into());
                }
            }
        }
        l.position = next;
        if self.spec.delete_relayed && !rows.is_empty() {
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            // Committed on Kafka already: a failure here leaves rows the next leader's
            // cleanup deletes (they are visible in its `done`).
            if let Err(e) = self.runtime.block_on(self.db.delete(&ids)) {
                tracing::warn!(error = %e, "relayed rows not deleted yet");
            }
        }
        let label = self.name.clone();
        metrics::counter!("millrace_outbox_rows_total", "outbox" => label.clone()).increment((rows.len() - dead.len()) as u64);
        metrics::counter!("millrace_outbox_dead_letters_total", "outbox" => label.clone()).increment((dead.len() - skipped.len()) as u64);
        metrics::counter!("millrace_outbox_skipped_rows_total", "outbox" => label.clone()).increment(skipped.len() as u64);
        metrics::histogram!("millrace_outbox_batch_seconds", "outbox" => label).record(started.elapsed().as_secs_f64());
        Ok(full)
    }

    /// Deletes the rows of every transaction that ended before the position's `done`
    /// snapshot: all relayed. A step deletes its own rows once Kafka committed them, but
    /// a relay killed in between leaves them, and the next leader's cleanup at `lead`
    /// takes only those below its snapshot's oldest open transaction: with writers
    /// running, some of them stayed, and with no later change of leader they stayed for
    /// good (`tests/outbox.rs` failed once on 36 such rows). A failure is retried at the
    /// next sweep.
    fn sweep(&self, l: &mut Leader) {
        l.swept = Instant::now();
        match self.runtime.block_on(self.db.cleanup(&l.position.done)) {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "deleted relayed rows a step had left"),
            Err(e) => tracing::warn!(error = %e, "relayed rows not deleted yet"),
        }
    }

    /// Why `row` cannot go to its topic, if it cannot.
    fn unrelayable(&self, l: &mut Leader, row: &OutboxRow) -> Option<String> {
        if l.topics.contains(&row.topic) {
            return None;
        }
        let valid = !row.topic.is_empty() && row.topic.len() <= 249 && row.topic.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !valid {
            return Some(format!("outbox row {}: {:?} is not a valid topic name", row.id, row.topic));
        }
        match crate::runtime::topics::partition_counts(&self.clients, &[&row.topic]) {
            Ok(found) if found.contains_key(&row.topic) => {
                l.topics.insert(row.topic.clone());
                None
            }
            Ok(_) => Some(format!("outbox row {}: topic {} does not exist", row.id, row.topic)),
            // Unknown for now: the row is sent, and a failure retries the step.
            Err(_) => None,
        }
    }

    /// One Kafka transaction: the rows (or their dead letters) and the position.
    fn send(&self, l: &mut Leader, rows: &[OutboxRow], dead: &BTreeMap<i64, String>, skipped: &HashSet<i64>, next: &Position) -> Result<(), SinkError> {
        l.sink.begin()?;
        let origin = TopicPartition::new(format!("outbox:{}", self.name), 0);
        for row in rows.iter().filter(|r| !skipped.contains(&r.id)) {
            l.sink.set_origin(Some((&origin, row.id)));
            let mut headers = Headers::default();
            if let Some(serde_json::Value::Object(h)) = row.headers.as_deref().and_then(|h| serde_json::from_str(h).ok()) {
                for (k, v) in h {
                    headers.insert(k, v.as_str().map_or_else(|| v.to_string(), str::to_string));
                }
            }
            let record = match dead.get(&row.id) {
                None => OutRecord {
                    topic: row.topic.clone(),
                    partition: None,
                    key: row.key.clone().map(String::into_bytes),
                    value: row.value.clone().map(String::into_bytes),
                    headers,
                    timestamp: None,
                },
                Some(reason) => {
                    headers.insert(header::DLQ_REASON, reason.as_bytes());
                    headers.insert(header::DLQ_TOPIC, format!("outbox:{}", self.name));
                    headers.insert(header::DLQ_OFFSET, row.id.to_string());
                    OutRecord {
                        topic: self.dead_letter_topic.clone(),
                        partition: None,
                        key: row.key.clone().map(String::into_bytes),
                        value: row.value.clone().map(String::into_bytes),
                        headers,
                        timestamp: None,
                    }
                }
            };
            l.sink.send(&record)?;
        }
        l.sink.set_origin(None);
        l.sink.send(&OutRecord {
            topic: self.positions_topic.clone(),
            partition: Some(0),
            key: Some(self.name.as_bytes().to_vec()),
            value: Some(serde_json::to_vec(next).expect("a position serializes")),
            headers: Headers::default(),
            timestamp: None,
        })?;
        l.sink.commit(&rdkafka::TopicPartitionList::new(), None)?;
        Ok(())
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_round_trips_and_starts_before_every_transaction() {
        let p = Position { done: "10:12:11".into(), current: Some("10:20:".into()), after_id: Some(7) };
        assert_eq!(serde_json::from_slice::<Position>(&serde_json::to_vec(&p).unwrap()).unwrap(), p);
        assert_eq!(serde_json::from_str::<Position>(r#"{"done":"3:3:"}"#).unwrap(), Position::start());
    }
}
