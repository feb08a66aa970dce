//! A projection's consumer: one thread, one member of the group `<app>-projection-<name>`,
//! so scaled instances split the partitions. It reads committed events, projects them,
//! and commits each batch with its positions in one PostgreSQL transaction.
//!
//! Positions live in PostgreSQL, never in the group: at each assignment the partitions are
//! positioned from `millrace_offsets` before fetching starts (a rebalance callback of its
//! own, which fills the offsets into the assignment). The group's committed offsets are
//! written too, after each batch, only so that Kafka's tools show the lag.
//!
//! Faults and what each does:
//! - PostgreSQL down: the batch is retried with backoff, the partitions paused and the
//!   consumer still polled, so the member stays in the group;
//! - positions unreadable at an assignment: the consumer leaves the group and rejoins
//!   after a backoff;
//! - another writer moved a position (this one was a zombie): the batch is given up and the
//!   consumer rejoins;
//! - an event that cannot be projected, or a row the database refuses: the event goes to
//!   the dead-letter topic with the reason, before the batch commits;
//! - the projection does not fit the database (a missing column, a type millrace cannot
//!   write): the projection stops, and says why in the log and on /health.

use super::batch::BatchWriter;
use super::postgres::ProjectionDb;
use super::projection::Projection;
use super::{Backoff, ReadSideError};
use crate::codec::Format;
use crate::error::Recovery;
use crate::kafka::Clients;
use crate::record::{InRecord, TopicPartition};
use crate::runtime::reader::in_record;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an assignment may wait for the positions in PostgreSQL.
const POSITIONS_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything one projection needs, typed and passed in.
pub struct ProjectionRunner {
    pub name: String,
    /// `<application_id>-projection-<name>`.
    pub group: String,
    /// The event topics it reads, with their codecs.
    pub topics: Vec<(String, Format)>,
    pub projection: Arc<dyn Projection>,
    pub db: Arc<ProjectionDb>,
    pub runtime: tokio::runtime::Handle,
    pub clients: Clients,
    pub dead_letter_topic: String,
    /// A batch commits at least this often...
    pub commit_interval: Duration,
    /// ... or once it holds this many events.
    pub max_batch_records: usize,
}

impl ProjectionRunner {
    /// Runs until `stop` (call it on a thread of its own). Passing faults are retried
    /// here; the result is an error only for a fatal one.
    pub fn run(&self, stop: &AtomicBool) -> Result<(), ReadSideError> {
        let _span = tracing::info_span!("projection", name = %self.name).entered();
        let r = self.run_until_fatal(stop);
        if let Err(e) = &r {
            tracing::error!(error = %e, "projection stopped");
        }
        r
    }

    fn run_until_fatal(&self, stop: &AtomicBool) -> Result<(), ReadSideError> {
        let mut backoff = Backoff::default();
        let tables = self.projection.tables();
        while !stop.load(Ordering::SeqCst) {
            match self.runtime.block_on(self.db.prepare(&tables)) {
                Ok(()) => break,
                Err(e) if e.recovery() == Recovery::Retry => backoff.wait("projection", &e, stop),
                Err(e) => return Err(e),
            }
        }
        while !stop.load(Ordering::SeqCst) {
            let joined = Instant::now();
            match self.consume(stop) {
                Ok(()) => return Ok(()),
                Err(e) if matches!(e.recovery(), Recovery::Retry | Recovery::GiveUpPartitions | Recovery::AbortAndRewind) => {
                    // A membership that lasted was a success: the next fault starts afresh.
                    if joined.elapsed() > Duration::from_secs(60) {
                        backoff = Backoff::default();
                    }
                    // Rejoin from the positions in PostgreSQL.
                    backoff.wait("projection", &e, stop);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn consumer(&self) -> Result<BaseConsumer<Positioner>, ReadSideError> {
        let mut cfg = self.clients.client();
        cfg.set("group.id", &self.group)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000")
            .set("statistics.interval.ms", "5000");
        self.clients.apply_consumer(&mut cfg);
        let context = Positioner {
            db: self.db.clone(),
            runtime: self.runtime.clone(),
            projection: self.name.clone(),
            state: Mutex::new(Assignment::default()),
        };
        let consumer: BaseConsumer<Positioner> =
            cfg.create_with_context(context).map_err(|source| ReadSideError::Kafka { op: "create consumer", source })?;
        let topics: Vec<&str> = self.topics.iter().map(|(t, _)| t.as_str()).collect();
        consumer.subscribe(&topics).map_err(|source| ReadSideError::Kafka { op: "subscribe", source })?;
        Ok(consumer)
    }

    /// One membership of the group, until `stop` or a fault that needs a new one.
    fn consume(&self, stop: &AtomicBool) -> Result<(), ReadSideError> {
        let consumer = self.consumer()?;
        let writer = BatchWriter {
            projection: self.projection.clone(),
            db: self.db.clone(),
            runtime: self.runtime.clone(),
            codecs: self.topics.iter().cloned().collect(),
            dead_letter_topic: self.dead_letter_topic.clone(),
            dead_letters: Mutex::new(crate::sink::TransactionalSink::new(&self.clients, &self.group, false, None)?),
        };
        let mut pending: Vec<InRecord> = Vec::new();
        let mut started: Option<Instant> = None;
        while !stop.load(Ordering::SeqCst) {
            let wait = started.map_or(Duration::from_millis(100), |s| self.commit_interval.saturating_sub(s.elapsed()));
            let polled = consumer.poll(wait);
            {
                let mut state = consumer.context().state.lock().expect("assignment lock");
                if let Some(e) = state.failure.take() {
                    return Err(e);
                }
                // Any rebalance re-positions every partition it hands out, from PostgreSQL;
                // what was read before it is read again.
                if std::mem::take(&mut state.rebalanced) {
                    pending.clear();
                    started = None;
                }
            }
            match polled {
                Some(Ok(m)) => {
                    let record = in_record(&m);
                    let tp = TopicPartition::new(record.topic.clone(), record.partition);
                    let mut state = consumer.context().state.lock().expect("assignment lock");
                    // Only records at or past what this writer has read (a seek can leave
                    // older ones queued), of partitions it still owns.
                    if let Some(next) = state.next.get_mut(&tp) {
                        if record.offset >= *next {
                            *next = record.offset + 1;
                            started.get_or_insert_with(Instant::now);
                            pending.push(record);
                        }
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => {}
            }
            let due = started.is_some_and(|s| s.elapsed() >= self.commit_interval) || pending.len() >= self.max_batch_records;
            if due && !pending.is_empty() {
                self.commit(&consumer, &pending, &writer, stop)?;
                pending.clear();
                started = None;
            }
        }
        Ok(())
    }

    /// Projects and commits `records`, retrying passing faults with the partitions paused.
    fn commit(&self, consumer: &BaseConsumer<Positioner>, records: &[InRecord], writer: &BatchWriter, stop: &AtomicBool) -> Result<(), ReadSideError> {
        let started = Instant::now();
        let believed = |tp: &TopicPartition| consumer.context().state.lock().expect("assignment lock").believed.get(tp).copied().flatten();
        let mut backoff = Backoff::default();
        let mut paused = false;
        let result = loop {
            match writer.write(records, &believed) {
                Ok(done) => break Ok(done),
                Err(e) if e.recovery() == Recovery::Retry && !stop.load(Ordering::SeqCst) => {
                    // Stay a member while the database is away: poll, with nothing to fetch.
                    if !paused {
                        if let Ok(assigned) = consumer.assignment() {
                            let _ = consumer.pause(&assigned);
                        }
                        paused = true;
                    }
                    backoff.wait("projection", &e, stop);
                    let _ = consumer.poll(Duration::ZERO);
                    let mut state = consumer.context().state.lock().expect("assignment lock");
                    if let Some(e) = state.failure.take() {
                        break Err(e);
                    }
                    if state.rebalanced {
                        // The batch's partitions may be someone else's now; the positions
                        // check would refuse it anyway. Read again from the new assignment.
                        return Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        if paused {
            if let Ok(assigned) = consumer.assignment() {
                let _ = consumer.resume(&assigned);
            }
        }
        let (batch, done) = result?;
        let mut state = consumer.context().state.lock().expect("assignment lock");
        let mut offsets = TopicPartitionList::new();
        for (tp, _, next) in &batch.partitions {
            state.believed.insert(tp.clone(), Some(*next));
            let _ = offsets.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*next));
        }
        drop(state);
        // For Kafka's tools only (lag per partition); PostgreSQL holds the positions.
        let _ = consumer.commit(&offsets, CommitMode::Async);
        let label = self.name.clone();
        metrics::counter!("millrace_projection_events_total", "projection" => label.clone()).increment(records.len() as u64);
        metrics::counter!("millrace_projection_rows_total", "projection" => label.clone()).increment(done.rows);
        metrics::counter!("millrace_projection_dead_letters_total", "projection" => label.clone()).increment(done.dead.len() as u64);
        metrics::histogram!("millrace_projection_batch_seconds", "projection" => label).record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// What the rebalance callback and the loop share (both run on the projection's thread,
/// inside and around `poll`).
#[derive(Default)]
struct Assignment {
    /// Per owned partition: the position PostgreSQL held at assignment, moved on by each
    /// commit (None: none stored yet).
    believed: HashMap<TopicPartition, Option<i64>>,
    /// Per owned partition: the offset after the last record taken into the batch.
    next: HashMap<TopicPartition, i64>,
    /// A rebalance happened since the loop last looked.
    rebalanced: bool,
    /// The positions could not be read at an assignment.
    failure: Option<ReadSideError>,
}

/// The consumer context: positions each assignment from PostgreSQL.
struct Positioner {
    db: Arc<ProjectionDb>,
    runtime: tokio::runtime::Handle,
    projection: String,
    state: Mutex<Assignment>,
}

impl ClientContext for Positioner {
    /// Lag per partition, from librdkafka's own statistics: the last stable offset minus
    /// the position handed to the projection.
    fn stats(&self, stats: rdkafka::Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.app_offset >= 0 && p.ls_offset >= 0 {
                    metrics::gauge!("millrace_projection_lag", "projection" => self.projection.clone(), "topic" => topic.clone(), "partition" => partition.to_string())
                        .set((p.ls_offset - p.app_offset).max(0) as f64);
                }
            }
        }
    }
}

impl ConsumerContext for Positioner {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let mut state = self.state.lock().expect("assignment lock");
        state.rebalanced = true;
        state.believed.clear();
        state.next.clear();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let lookup = self.runtime.block_on(async { tokio::time::timeout(POSITIONS_TIMEOUT, self.db.positions()).await });
                let stored = match lookup {
                    Ok(Ok(stored)) => stored,
                    Ok(Err(e)) => {
                        state.failure = Some(ReadSideError::Positions { waited_s: 0, reason: e.to_string() });
                        let _ = consumer.unassign();
                        return;
                    }
                    Err(_) => {
                        state.failure = Some(ReadSideError::Positions { waited_s: POSITIONS_TIMEOUT.as_secs(), reason: "timed out".into() });
                        let _ = consumer.unassign();
                        return;
                    }
                };
                let owned: Vec<TopicPartition> = tpl.elements().iter().map(|e| TopicPartition::new(e.topic(), e.partition())).collect();
                for tp in owned {
                    let position = stored.get(&tp).copied();
                    let offset = position.map_or(Offset::Beginning, Offset::Offset);
                    if let Err(e) = tpl.set_partition_offset(&tp.topic, tp.partition, offset) {
                        tracing::warn!(partition = %tp, error = %e, "cannot set the position of an assigned partition");
                    }
                    state.next.insert(tp.clone(), position.unwrap_or(0));
                    state.believed.insert(tp, position);
                }
                tracing::info!(partitions = state.believed.len(), "assigned; positioned from PostgreSQL");
                if let Err(e) = consumer.assign(tpl) {
                    state.failure = Some(ReadSideError::Kafka { op: "assign", source: e });
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let _ = consumer.unassign();
            }
            other => tracing::warn!(error = ?other, "rebalance error"),
        }
    }
}

