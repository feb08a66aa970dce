//! The transactional sink: one transactional producer per instance. Everything a batch
//! produces (events, replies, changelog records, dead letters) and the input offsets commit
//! together, or not at all.
//!
//! Invariant: one writer per partition. The offsets are sent with the consumer's group
//! metadata (KIP-447), so a zombie from an older generation is fenced by the coordinator.
//! A fenced producer means our partitions belong to someone else: `SinkError::Fenced`
//! answers `GiveUpPartitions`, and its writes are never retried.
//!
//! May use: record. The rdkafka transactional calls block, so this runs on the processing
//! thread, never on the async executor.

use crate::error::Recovery;
use crate::record::{OutRecord, TopicPartition};
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use crate::kafka::{Clients, PolledProducer};
use rdkafka::{ClientContext, Message, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("producer {transactional_id} was fenced: another instance owns these partitions now ({source})")]
    Fenced { transactional_id: String, source: KafkaError },
    #[error("transaction of {transactional_id} must abort: {source}")]
    Abortable { transactional_id: String, source: KafkaError },
    #[error("producer {transactional_id}: {op} failed: {source}")]
    Failed { transactional_id: String, op: &'static str, source: KafkaError },
    /// Records the broker (or the producer) refuses for good, whatever the retry: too
    /// large, invalid. The transaction must abort; the input records that wrote them are
    /// named, so the batch can run again without them.
    #[error("producer {transactional_id}: {} record(s) refused for good: {}", poisoned.len(), poisoned.first().map_or("", |p| p.reason.as_str()))]
    Poisoned { transactional_id: String, poisoned: Vec<Poisoned> },
    #[error("producer {transactional_id}: a record for {topic} that no input record wrote (a punctuation's) was refused for good: {source}")]
    Unattributable { transactional_id: String, topic: String, source: KafkaError },
    /// A call that did not return within its timeout and a margin. librdkafka 2.12's
    /// `send_offsets_to_transaction` can wait for ever after a broker restart (its
    /// coordinator lookup waits on a broker it has decommissioned: librdkafka #5456,
    /// #5511). The producer is left to its call and a new one takes over.
    #[error("producer {transactional_id}: {op} did not return within {waited_s} s; the producer is abandoned and a new one takes over")]
    Hung { transactional_id: String, op: &'static str, waited_s: u64 },
    /// Asked for a new producer while the instance stops: none starts. Its
    /// init_transactions would wait out its timeouts against a broker that may be away,
    /// and the next start fences and aborts what the last producer left open anyway.
    #[error("the instance is shutting down: no new producer starts; the next start aborts what the last one left open")]
    ShuttingDown,
}

/// The input record whose output a topic refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poisoned {
    pub input: TopicPartition,
    pub offset: i64,
    pub reason: String,
}

/// Which input record the records being sent come from: what a refused record is traced
/// back to. None for work no record triggered (punctuation).
type OriginIndex = usize;
const NO_ORIGIN: OriginIndex = usize::MAX;

/// The key of the empty records a release writes and aborts (`release_offsets`): a key,
/// because compacted topics refuse records without one.
pub const RELEASE_KEY: &[u8] = b"millrace.release";

/// How much longer than its own timeout a call to librdkafka may take before it counts as
/// hung (`SinkError::Hung`).
const HUNG_MARGIN: Duration = Duration::from_secs(15);

/// One record refused for good, as its delivery report told.
struct Refused {
    origin: OriginIndex,
    topic: String,
    partition: i32,
    bytes: usize,
    error: KafkaError,
}

/// The input records of the open transaction, each named by an index that travels with
/// its outputs as the delivery opaque. Per record this costs no allocation: input
/// partitions are kept once, records as (partition index, offset).
#[derive(Default)]
struct Origins {
    partitions: Vec<TopicPartition>,
    records: Vec<(u32, i64)>,
}

impl Origins {
    fn push(&mut self, tp: &TopicPartition, offset: i64) -> OriginIndex {
        let p = match self.partitions.iter().position(|x| x == tp) {
            Some(p) => p,
            None => {
                self.partitions.push(tp.clone());
                self.partitions.len() - 1
            }
        } as u32;
        if self.records.last() != Some(&(p, offset)) {
            self.records.push((p, offset));
        }
        self.records.len() - 1
    }

    fn get(&self, index: OriginIndex) -> Option<(&TopicPartition, i64)> {
        let (p, offset) = *self.records.get(index)?;
        Some((&self.partitions[p as usize], offset))
    }

    fn clear(&mut self) {
        self.records.clear();
    }
}

/// Delivery errors that say the record itself is unacceptable: retrying it can only fail
/// again. Anything else (timeouts, leaders moving) is transient.
fn refused_for_good(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidRecord
    )
}

impl SinkError {
    pub fn recovery(&self) -> Recovery {
        match self {
            SinkError::Fenced { .. } => Recovery::GiveUpPartitions,
            SinkError::Abortable { .. } => Recovery::AbortAndRewind,
            SinkError::Failed { .. } => Recovery::Retry,
            SinkError::Poisoned { .. } => Recovery::AbortAndRewind,
            SinkError::Unattributable { .. } => Recovery::Fatal,
            SinkError::Hung { .. } => Recovery::Retry,
            // The processing loop, which retries, sees the stop and ends.
            SinkError::ShuttingDown => Recovery::Retry,
        }
    }

    /// Whether the transaction failed in the producer rather than in a record: a broker
    /// away, a coordinator lost, a call that hung, sequence numbers out of step. Such a
    /// producer is not asked to abort and go on; a new one with the same transactional id
    /// takes over, and its `init_transactions` aborts the open transaction on the
    /// coordinator. After a broker restart, librdkafka 2.12 can keep a coordinator it has
    /// decommissioned for ever (#5456, #5511): every later call of that producer then
    /// times out, and an abort that timed out leaves it refusing any other call. A new
    /// client looks its coordinator up afresh and starts its sequence numbers from a new
    /// producer epoch. A refused record (`Poisoned`) is the record's fault: an abort is
    /// enough there.
    pub fn replaces_producer(&self) -> bool {
        matches!(self, SinkError::Failed { .. } | SinkError::Abortable { .. } | SinkError::Hung { .. })
    }
}

/// Delivery reports: the highest offset written per partition in the open transaction, so
/// a store can checkpoint the changelog offset its overlay reaches.
#[derive(Default)]
pub struct SinkContext {
    /// By topic, then partition: a report looks its topic up by &str, without allocating.
    delivered: Mutex<HashMap<String, HashMap<i32, i64>>>,
    failed: AtomicU64,
    /// Records refused for good in the open transaction.
    refused: Mutex<Vec<Refused>>,
}

impl ClientContext for SinkContext {}

impl SinkContext {
    /// The open transaction's reports so far, kept.
    fn delivered_so_far(&self) -> HashMap<TopicPartition, i64> {
        let by_topic = self.delivered.lock().expect("delivery map lock");
        by_topic
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(p, o)| (TopicPartition::new(t.as_str(), *p), *o)))
            .collect()
    }

    /// The open transaction's reports, handed over and forgotten.
    fn take_delivered(&self) -> HashMap<TopicPartition, i64> {
        let by_topic = std::mem::take(&mut *self.delivered.lock().expect("delivery map lock"));
        by_topic
            .into_iter()
            .flat_map(|(topic, parts)| parts.into_iter().map(move |(p, o)| (TopicPartition::new(topic.as_str(), p), o)))
            .collect()
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = OriginIndex;
    fn delivery(&self, result: &DeliveryResult<'_>, origin: OriginIndex) {
        match result {
            Ok(m) => {
                let mut d = self.delivered.lock().expect("delivery map lock");
                if !d.contains_key(m.topic()) {
                    d.insert(m.topic().to_string(), HashMap::new());
                }
                let by_partition = d.get_mut(m.topic()).expect("inserted above");
                let e = by_partition.entry(m.partition()).or_insert(m.offset());
                *e = (*e).max(m.offset());
            }
            Err((e, m)) => {
                // The commit that covers this record will fail and abort; count it for metrics.
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, topic = m.topic(), "delivery failed");
                if e.rdkafka_error_code().is_some_and(refused_for_good) {
                    let bytes = m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len);
                    self.refused.lock().expect("refused lock").push(Refused {
                        origin,
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        bytes,
                        error: e.clone(),
                    });
                }
            }
        }
    }
}

pub struct TransactionalSink {
    /// Shared with a call that may not return (see `send_offsets`).
    producer: Arc<PolledProducer<SinkContext>>,
    /// A call hung: nothing more is asked of this producer, and the engine makes a new one.
    hung: bool,
    transactional_id: String,
    /// False for `processing.exactly_once: false`: an idempotent producer whose batches are
    /// flushed, not committed, and whose input offsets the consumer commits afterwards.
    exactly_once: bool,
    open: bool,
    timeout: Duration,
    /// Input records of the open transaction whose outputs were sent, by origin index.
    origins: Origins,
    current: OriginIndex,
    /// Every partition this producer may write: `release_offsets` ends there too what an
    /// earlier epoch of its producer id left pending.
    release_to: Vec<TopicPartition>,
}

impl TransactionalSink {
    /// Creates the producer and runs `init_transactions`, which also aborts whatever a
    /// previous incarnation with the same transactional id left open (a SIGKILLed process).
    /// `writes` names a topic the producer writes: under exactly-once, its metadata is
    /// asked for first (see `await_broker`).
    pub fn new(clients: &Clients, transactional_id: &str, exactly_once: bool, writes: Option<&str>) -> Result<Self, SinkError> {
        let mut cfg = clients.client();
        if exactly_once {
            // A transaction its producer left open (a SIGKILLed instance that does not come
            // back) holds its partitions' last stable offset, and so every reader and the
            // next owner, until the coordinator aborts it after this long. Kafka Streams
            // uses 10 s under exactly-once too. librdkafka caps message.timeout.ms at it.
            cfg.set("transactional.id", transactional_id).set("transaction.timeout.ms", "10000");
        } else {
            cfg.set("message.timeout.ms", "60000");
        }
        cfg.set("enable.idempotence", "true")
            // Java-compatible partitioning for every keyed record (invariant 3).
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            // The first back-off of a refused request, doubling to retry.backoff.max.ms. A
            // transaction that begins while the coordinator still completes the one before
            // is refused (CONCURRENT_TRANSACTIONS) until the markers are written, a few
            // milliseconds; at the default 100 ms, that wait was the latency tail of
            // frequent commits. Java's producer retries that case after 20 ms as well.
            .set("retry.backoff.ms", "20");
        clients.apply_producer(&mut cfg);
        let failed = |op, source| SinkError::Failed { transactional_id: transactional_id.into(), op, source };
        let producer = PolledProducer::create(&cfg, SinkContext::default()).map_err(|e| failed("create", e))?;
        let timeout = Duration::from_secs(30);
        let sink = Self {
            producer: Arc::new(producer),
            hung: false,
            transactional_id: transactional_id.into(),
            exactly_once,
            open: false,
            timeout,
            origins: Origins::default(),
            current: NO_ORIGIN,
            release_to: Vec::new(),
        };
        let started = Instant::now();
        if let (true, Some(topic)) = (exactly_once, writes) {
            await_broker(&sink.producer, topic, CONNECT_WAIT);
        }
        while exactly_once {
            match sink.producer.init_transactions(timeout) {
                Ok(()) => break,
                Err(e) if started.elapsed() < Duration::from_secs(120) && is_retriable(&e) => {
                    tracing::warn!(error = %e, "init_transactions failed; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(sink.classify("init_transactions", e)),
            }
        }
        Ok(sink)
    }

    /// The partitions `release_offsets` also ends an earlier epoch's pending transaction
    /// on: every partition of every topic this producer writes (see there).
    pub fn releasing(mut self, partitions: Vec<TopicPartition>) -> Self {
        self.release_to = partitions;
        self
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    fn classify(&self, op: &'static str, e: KafkaError) -> SinkError {
        let transactional_id = self.transactional_id.clone();
        let fenced = matches!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
        );
        match &e {
            _ if fenced => SinkError::Fenced { transactional_id, source: e },
            KafkaError::Transaction(t) if t.is_fatal() => SinkError::Fenced { transactional_id, source: e },
            KafkaError::Transaction(t) if t.txn_requires_abort() => SinkError::Abortable { transactional_id, source: e },
            _ => SinkError::Failed { transactional_id, op, source: e },
        }
    }

    /// Opens a transaction if none is open.
    pub fn begin(&mut self) -> Result<(), SinkError> {
        if !self.open {
            self.producer.context().delivered.lock().expect("delivery map lock").clear();
            self.producer.context().refused.lock().expect("refused lock").clear();
            self.origins.clear();
            self.current = NO_ORIGIN;
            if self.exactly_once {
                self.producer.begin_transaction().map_err(|e| self.classify("begin_transaction", e))?;
            }
            self.open = true;
        }
        Ok(())
    }

    /// The records sent next come from this input record (None: from no record).
    pub fn set_origin(&mut self, input: Option<(&TopicPartition, i64)>) {
        self.current = match input {
            None => NO_ORIGIN,
            Some((tp, offset)) => self.origins.push(tp, offset),
        };
    }

    /// The input records whose outputs were refused for good in the open transaction.
    ///
    /// The broker refuses a whole batch when it is over a topic's `max.message.bytes`, so
    /// every record that shared a batch with the culprit reports the same error. Only the
    /// largest refused record of each partition is taken for the culprit; the others run
    /// again (and, were one of them too large as well, are found the next round).
    fn poisoned(&self) -> Option<SinkError> {
        let refused = std::mem::take(&mut *self.producer.context().refused.lock().expect("refused lock"));
        let mut largest: HashMap<(String, i32), Refused> = HashMap::new();
        for r in refused {
            let key = (r.topic.clone(), r.partition);
            if largest.get(&key).is_none_or(|l| r.bytes > l.bytes) {
                largest.insert(key, r);
            }
        }
        let mut poisoned: Vec<Poisoned> = Vec::new();
        for r in largest.into_values() {
            let Some((input, offset)) = self.origins.get(r.origin) else {
                // Written by no input record (a punctuation): nothing to answer and no
                // batch to run without it. Stop, rather than run it again for ever.
                return Some(SinkError::Unattributable { transactional_id: self.transactional_id.clone(), topic: r.topic, source: r.error });
            };
            if poisoned.iter().any(|p| p.input == *input && p.offset == offset) {
                continue;
            }
            poisoned.push(Poisoned {
                input: input.clone(),
                offset,
                reason: format!("a record of {} KB for {} was refused: {}", r.bytes.div_ceil(1024), r.topic, r.error),
            });
        }
        (!poisoned.is_empty()).then(|| SinkError::Poisoned { transactional_id: self.transactional_id.clone(), poisoned })
    }

    /// Queues one record in the open transaction.
    pub fn send(&mut self, r: &OutRecord) -> Result<(), SinkError> {
        let mut record: BaseRecord<'_, [u8], [u8], OriginIndex> = BaseRecord::with_opaque_to(&r.topic, self.current);
        // Changelog records carry no headers: skip the native header list for them.
        if !r.headers.0.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.0.len());
            for (k, v) in &r.headers.0 {
                headers = headers.insert(Header { key: k, value: Some(v.as_slice()) });
            }
            record = record.headers(headers);
        }
        if let Some(p) = r.partition {
            record = record.partition(p);
        }
        if let Some(ts) = r.timestamp {
            record = record.timestamp(ts);
        }
        if let Some(k) = &r.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            record = record.payload(v.as_slice());
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), rec)) => {
                    // Back-pressure: the background thread drains the queue.
                    record = rec;
                    std::thread::sleep(Duration::from_millis(1));
                }
                // Larger than the producer's message.max.bytes: refused before it is sent.
                Err((e, _)) if e.rdkafka_error_code().is_some_and(refused_for_good) => {
                    if let Some((input, offset)) = self.origins.get(self.current) {
                        let size = r.value.as_ref().map_or(0, Vec::len) + r.key.as_ref().map_or(0, Vec::len);
                        return Err(SinkError::Poisoned {
                            transactional_id: self.transactional_id.clone(),
                            poisoned: vec![Poisoned {
                                input: input.clone(),
                                offset,
                                reason: format!("a record of {} KB for {} was refused: {e}", size.div_ceil(1024), r.topic),
                            }],
                        });
                    }
                    return Err(self.classify("send", e));
                }
                // A refusal reported earlier puts the transaction in an abortable state, and
                // every later send fails: report the refusal, not its consequence.
                Err((e, _)) => {
                    self.drain();
                    return Err(self.poisoned().unwrap_or_else(|| self.classify("send", e)));
                }
            }
        }
    }

    /// Waits until every record sent so far is written; returns the highest offset written
    /// per partition in the open transaction, which stays open.
    pub fn settle(&mut self) -> Result<HashMap<TopicPartition, i64>, SinkError> {
        self.drain();
        if let Some(p) = self.poisoned() {
            return Err(p);
        }
        if self.producer.in_flight_count() > 0 {
            return Err(SinkError::Failed {
                transactional_id: self.transactional_id.clone(),
                op: "settle",
                source: KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut),
            });
        }
        Ok(self.producer.context().delivered_so_far())
    }

    /// `send_offsets_to_transaction`, on a thread of its own, waited for up to its timeout
    /// and a margin (`SinkError::Hung` past that). librdkafka's own timeout does not bound
    /// the call when the group coordinator's broker was decommissioned by a restart
    /// (librdkafka #5456, #5511, open in 2.12 and 2.14), and a processing thread blocked in
    /// it would hold its partitions for ever. A thread per commit costs tens of
    /// microseconds, a few commits a second.
    fn send_offsets(&mut self, offsets: &TopicPartitionList, group: Arc<ConsumerGroupMetadata>) -> Result<(), SinkError> {
        let sending = self.start_sending_offsets(offsets, group)?;
        self.offsets_sent(sending)
    }

    /// Starts `send_offsets_to_transaction` on its thread; `offsets_sent` waits for it.
    /// Meanwhile the caller may flush: the call's two round trips (AddOffsetsToTxn to the
    /// transaction coordinator, TxnOffsetCommit to the group coordinator) need not wait
    /// for the outputs, nor they for it.
    fn start_sending_offsets(&mut self, offsets: &TopicPartitionList, group: Arc<ConsumerGroupMetadata>) -> Result<SendingOffsets, SinkError> {
        if self.hung {
            return Err(self.hung_error("send_offsets_to_transaction"));
        }
        let (producer, offsets, timeout) = (self.producer.clone(), offsets.clone(), self.timeout);
        let (done, answer) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("millrace-offsets".into())
            .spawn(move || {
                let _ = done.send(producer.send_offsets_to_transaction(&offsets, &group, timeout));
            })
            .map_err(|e| SinkError::Failed {
                transactional_id: self.transactional_id.clone(),
                op: "send_offsets_to_transaction",
                source: KafkaError::ClientCreation(format!("cannot start the thread that sends the offsets: {e}")),
            })?;
        Ok(SendingOffsets { answer, deadline: Instant::now() + timeout + HUNG_MARGIN })
    }

    /// The answer of a `start_sending_offsets`; `Hung` when none came by its deadline.
    fn offsets_sent(&mut self, sending: SendingOffsets) -> Result<(), SinkError> {
        match sending.answer.recv_timeout(sending.deadline.saturating_duration_since(Instant::now())) {
            Ok(sent) => sent.map_err(|e| self.classify("send_offsets_to_transaction", e)),
            Err(_) => {
                self.hung = true;
                metrics::counter!("millrace_producer_hangs_total").increment(1);
                let e = self.hung_error("send_offsets_to_transaction");
                tracing::error!(error = %e, "a Kafka call hung");
                Err(e)
            }
        }
    }

    fn hung_error(&self, op: &'static str) -> SinkError {
        SinkError::Hung { transactional_id: self.transactional_id.clone(), op, waited_s: (self.timeout + HUNG_MARGIN).as_secs() }
    }

    /// Sends the input offsets with the group metadata and commits. Returns the highest
    /// offset delivered per partition in this transaction.
    pub fn commit(
        &mut self,
        offsets: &TopicPartitionList,
        group: Option<Arc<ConsumerGroupMetadata>>,
    ) -> Result<HashMap<TopicPartition, i64>, SinkError> {
        if !self.exactly_once {
            return self.flush_batch();
        }
        // Timed from here: sending the offsets (two round trips) is part of every commit.
        let started = Instant::now();
        // The offsets go out while the outputs are flushed: a commit waits for the slower
        // of the two, not for both in turn.
        let sending = match (offsets.count() > 0, group) {
            (true, Some(group)) => Some(self.start_sending_offsets(offsets, group)?),
            _ => None,
        };
        self.drain();
        let sent = sending.map_or(Ok(()), |s| self.offsets_sent(s));
        if self.hung {
            return Err(sent.err().unwrap_or_else(|| self.hung_error("send_offsets_to_transaction")));
        }
        // A refused record fails the transaction; the refusal, not the failure it causes
        // downstream, is what the engine needs to hear, so it is looked for first.
        if let Some(p) = self.poisoned() {
            return Err(p);
        }
        sent?;
        let mut pause = Duration::from_millis(20);
        loop {
            match self.producer.commit_transaction(self.timeout) {
                Ok(()) => break,
                // Retriable means: the same call again, once the coordinator answers. Not
                // at once (that once wrote 4 GB of log in a minute), and not when another
                // call (an abort) holds the producer: that one must finish first, which
                // repeating this one cannot bring about.
                Err(e) if is_retriable(&e) && !is_conflict(&e) && started.elapsed() < Duration::from_secs(60) => {
                    tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "commit_transaction is retriable; retrying after a pause");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(self.poisoned().unwrap_or_else(|| self.classify("commit_transaction", e))),
            }
        }
        self.open = false;
        metrics::histogram!("millrace_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("millrace_transactions_total", "result" => "committed").increment(1);
        Ok(self.producer.context().take_delivered())
    }

    /// At-least-once: the batch is done when every record is delivered. The caller then
    /// writes the stores and commits the input offsets, in that order.
    fn flush_batch(&mut self) -> Result<HashMap<TopicPartition, i64>, SinkError> {
        let started = Instant::now();
        self.drain();
        if let Some(p) = self.poisoned() {
            self.producer.context().failed.store(0, Ordering::Relaxed);
            return Err(p);
        }
        self.all_delivered("flush")?;
        self.open = false;
        metrics::histogram!("millrace_commit_seconds").record(started.elapsed().as_secs_f64());
        Ok(self.producer.context().take_delivered())
    }

    pub fn exactly_once(&self) -> bool {
        self.exactly_once
    }

    fn drain(&self) {
        drain(&self.producer, self.timeout);
    }

    /// Opens a transaction that holds nothing but `offsets` for the group and an empty
    /// record on every partition of `release_to`, and aborts it.
    ///
    /// Its ABORT markers, written for this producer id, end whatever transaction an
    /// earlier epoch of the same producer id left pending on those partitions and on the
    /// group's offsets partition. Kafka 4.3 brokers leave such transactions behind: a
    /// transaction in PrepareCommit when the broker stopped (SIGTERM or SIGKILL) was
    /// marked CompleteCommit after the restart without a marker on any of its partitions
    /// (`tests/broker_restart.rs`; docs/operations.md, the failure table). Its records then
    /// wait, holding each partition's last stable offset, until this producer id writes
    /// its next marker there, and that marker decides them. Before, only the offsets
    /// partition was released, by an abort, while the next commit on the data partitions
    /// committed the same transaction's outputs: its commands were read again and
    /// answered twice. Now every partition gets the same abort, so such a transaction is
    /// aborted everywhere and its commands run once more, once. (Kafka's own remedy is the
    /// admin tool `kafka-transactions.sh abort`, which librdkafka cannot call.)
    ///
    /// The empty records are never visible to read_committed readers, and compaction
    /// removes aborted records. The offsets sent here are never committed. No-op while a
    /// transaction is open, and for at-least-once.
    pub fn release_offsets(&mut self, offsets: &TopicPartitionList, group: Arc<ConsumerGroupMetadata>) -> Result<(), SinkError> {
        if self.open || !self.exactly_once || offsets.count() == 0 {
            return Ok(());
        }
        self.begin()?;
        let sent = self.send_offsets(offsets, group).and_then(|()| self.send_release_records());
        // Aborted even if the offsets could not be sent: the transaction may hold the
        // group's partition already (AddOffsetsToTxn comes first).
        let aborted = self.abort();
        sent.and(aborted)?;
        metrics::counter!("millrace_offsets_released_total").increment(1);
        Ok(())
    }

    /// An empty record (key `RELEASE_KEY`, no value) on every partition of `release_to`,
    /// delivered: a partition joins the transaction, and gets its marker, only once
    /// a record reached it.
    fn send_release_records(&mut self) -> Result<(), SinkError> {
        for tp in &self.release_to {
            let record: BaseRecord<'_, [u8], [u8], OriginIndex> = BaseRecord::with_opaque_to(&tp.topic, NO_ORIGIN).partition(tp.partition).key(RELEASE_KEY);
            if let Err((e, _)) = self.producer.send(record) {
                return Err(self.classify("release", e));
            }
        }
        self.drain();
        self.all_delivered("release")
    }

    /// After a drain: every record sent was delivered (none still in flight, none failed
    /// since the last look).
    fn all_delivered(&self, op: &'static str) -> Result<(), SinkError> {
        let failed = self.producer.context().failed.swap(0, Ordering::Relaxed);
        if self.producer.in_flight_count() > 0 || failed > 0 {
            return Err(SinkError::Failed {
                transactional_id: self.transactional_id.clone(),
                op,
                source: KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut),
            });
        }
        Ok(())
    }

    /// Aborts the open transaction, if any. Its records are never visible to
    /// read_committed consumers.
    pub fn abort(&mut self) -> Result<(), SinkError> {
        if !self.open {
            return Ok(());
        }
        if !self.exactly_once {
            // Nothing to take back: at-least-once outputs may be repeated on reprocessing.
            self.open = false;
            return Ok(());
        }
        if self.hung {
            // Asked to abort, a hung producer could hang again; the new producer's
            // init_transactions aborts what this one left open.
            return Err(self.hung_error("abort_transaction"));
        }
        metrics::counter!("millrace_transactions_total", "result" => "aborted").increment(1);
        self.producer.abort_transaction(self.timeout).map_err(|e| self.classify("abort_transaction", e))?;
        self.open = false;
        Ok(())
    }
}

/// Waits until every queued record is delivered and its report served, sending what
/// `linger.ms` still holds back at once.
///
/// librdkafka's own `rd_kafka_flush`, called directly: it marks the producer as
/// flushing (linger counts as expired) and, with delivery reports as events (rdkafka's
/// producers), waits on the message count until the poll thread has served the last
/// report. Not rdkafka's `flush`, which calls it with no wait and then polls the
/// event queue in 100 ms slices that the poll thread drains first; and not a wait on
/// the queue alone, which sits out the linger (5 ms) on every commit. Past the
/// timeout records are still in flight, which the callers check.
#[allow(unsafe_code)] // rdkafka offers no safe form of it (the other FFI calls: kafka/producer.rs)
fn drain(producer: &PolledProducer<SinkContext>, timeout: Duration) {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the client pointer is valid for as long as `producer` lives, and
    // rd_kafka_flush is thread-safe (the poll thread serves reports meanwhile).
    unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), ms) };
}

/// How long a new transactional producer waits for a broker connection before
/// `init_transactions`; past it, `init_transactions` waits and retries on its own.
const CONNECT_WAIT: Duration = Duration::from_secs(2);

/// Waits (up to `timeout`) until a broker the producer learned of (not the bootstrap
/// address) has answered it, by asking for the metadata of `topic`, one it writes anyway
/// (a request that names no topic asks for every topic of the cluster).
///
/// librdkafka's `init_transactions` looks for a connected broker to find its coordinator
/// through, and if there is none at that moment, looks again only on a 500 ms timer. A
/// new producer drops its bootstrap connection as soon as the first metadata names the
/// brokers, and connects to them afresh: in between, none is up (librdkafka's broker
/// debug log shows the bootstrap terminated at the first answer). Half of the starts in
/// a row waited 0.45 s more for their producers (time to the group's assignment, 0.22 s
/// or 0.67 s), and so did every producer taking over after a failure. An answer from a
/// learned broker (a node id, where the bootstrap has -1) means that one is up. A failure
/// is left to `init_transactions`, which waits and retries on its own.
fn await_broker(producer: &PolledProducer<SinkContext>, topic: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match producer.client().fetch_metadata(Some(topic), deadline.saturating_duration_since(Instant::now())) {
            Ok(m) if m.orig_broker_id() >= 0 => return,
            Ok(_) if Instant::now() < deadline => {}
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(topic, error = %e, "no broker answered before init_transactions");
                return;
            }
        }
    }
}

/// A `send_offsets_to_transaction` under way on its own thread.
struct SendingOffsets {
    answer: std::sync::mpsc::Receiver<Result<(), KafkaError>>,
    /// Past this, the call is taken for hung.
    deadline: Instant,
}

fn is_retriable(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_retriable())
}

/// Another transactional call is under way on this producer (librdkafka's `__CONFLICT`:
/// an abort that timed out waits to be called again).
fn is_conflict(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::Conflict)
}
