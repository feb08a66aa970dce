//! One reader for every topic read outside the consumer group: store restores, event
//! history catch-up, global tables, standby copies, the members directory and the
//! gateway's replies. Each is assigned partitions (never a committed offset), reads only
//! committed transactions, and is made by the client factory, so it gets the user's
//! Kafka settings.
//!
//! It owns the rules for "the end of a partition" under transactions:
//! - the end is the high watermark when reading starts; later records belong to whoever
//!   writes them now (a running task);
//! - transaction markers take offsets but are never delivered, and librdkafka's end-of-
//!   partition report does not reliably follow them, so the end is also reached when the
//!   consumer's own position has passed it (checked without broker calls, which would
//!   serve, and swallow, the end-of-partition event);
//! - a read that makes no progress for `stall` short of the end (an open transaction that
//!   holds the last stable offset back, a partition without a leader) is an error
//!   (`RestoreStalled`), never an early end: a store restored that far is partial.
//!
//! May use: kafka (the client factory), record.

use super::RuntimeError;
use crate::kafka::Clients;
use crate::record::{Headers, InRecord, TopicPartition};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one poll of `read_to_end` waits. Short: a tail that holds only an aborted
/// transaction (what a crash leaves) delivers nothing and often no end report either, and
/// the end is then found by checking the position after each empty poll.
const POLL: Duration = Duration::from_millis(20);

/// How long a read may see no progress, short of the end, before it fails.
pub const STALL: Duration = Duration::from_secs(10);

/// Since when a read has made no progress, and the last connection error since then.
struct Idle {
    since: Instant,
    trouble: Option<String>,
}

impl Idle {
    fn new() -> Idle {
        Idle { since: Instant::now(), trouble: None }
    }
}

/// Why a read stalled that saw no error: what holds a committed-only read back.
pub(crate) const NOTHING_DELIVERED: &str =
    "nothing was delivered (a transaction still open holds the last stable offset back, or the partition has no leader)";

/// Errors that say the client lost (or could not make) its connections, which it goes on
/// retrying: nothing about the partition being read. (rdkafka's poll reports every
/// error event, global ones included, as a consumption error; fatal ones are not these.)
fn connection_trouble(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::{AllBrokersDown, BrokerTransportFailure, NetworkException, OperationTimedOut, RequestTimedOut, Resolve};
    matches!(e, KafkaError::MessageConsumption(c)
        if matches!(c, AllBrokersDown | BrokerTransportFailure | Resolve | OperationTimedOut | RequestTimedOut | NetworkException))
}

/// The readers' context: reaching the end of a partition is how a read finishes, not an
/// error; rdkafka reports it as a global error too, so that report stays at debug level.
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::PartitionEOF) => tracing::debug!(reason, "end of partition"),
            _ => tracing::warn!(%error, reason, "reader error"),
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// What one step of following partitions brought.
pub enum Followed<'a> {
    Record(BorrowedMessage<'a>),
    /// A partition (of the topic being followed) reported its end.
    End(i32),
    /// Nothing arrived for a whole poll: every assigned partition is at its end, as far
    /// as this reader can tell (the signal that does not depend on end reports).
    Idle,
}

/// How a read to the end went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadToEnd {
    /// Records delivered (committed ones; markers and aborted records are not).
    pub records: u64,
    /// Offset of the last record delivered, if any.
    pub last_offset: Option<i64>,
    /// The end the read went to (the high watermark when it started).
    pub end: i64,
}

pub struct PartitionReader {
    consumer: Closing,
    what: &'static str,
    stall: Duration,
    /// Set when the instance stops: a read in progress ends (`interruptible`).
    stop: Option<Arc<AtomicBool>>,
}

impl PartitionReader {
    /// A reader named `group` (it never joins that group), with `tuning` on top of the
    /// factory's reader settings (prefetch sizes, fetch waits). `what` names it in errors.
    pub fn new(clients: &Clients, what: &'static str, group: String, tuning: &[(&str, &str)]) -> Result<Self, RuntimeError> {
        let mut cfg = clients.reader(group);
        cfg.set("enable.partition.eof", "true").set("auto.offset.reset", "earliest");
        // A reader drains its prefetch queue as fast as it can: once that queue passes its
        // thresholds, librdkafka's default is to pause fetching for a whole second
        // (`fetch.queue.backoff.ms` = 1000), which left a full restore idle more than half
        // of the time.
        cfg.set("fetch.queue.backoff.ms", "10");
        // Its prefetch stays small: librdkafka's default lets each consumer hold 64 MiB
        // fetched ahead, and a restore runs several readers at once. 4 MiB kept a full
        // restore as fast (2.8 s for 1,000,000 records either way) and its peak RSS at
        // 260-290 MiB instead of 410-450 (deploy/bench restore).
        cfg.set("queued.max.messages.kbytes", "4096");
        for (k, v) in tuning {
            cfg.set(*k, *v);
        }
        let consumer = cfg.create_with_context(ReaderContext).map_err(|source| RuntimeError::Kafka { op: what, topic: String::new(), source })?;
        Ok(Self { consumer: Closing(Some(consumer)), what, stall: STALL, stop: None })
    }

    /// Reads of this reader end with `Interrupted` once `stop` is set. A full restore of a
    /// large store takes minutes, and one waiting out a broker that went away takes as
    /// long as the outage; an instance asked to stop meanwhile would go on until its
    /// shutdown limit ended it as a crash (exit 1). What was read is kept.
    pub fn interruptible(mut self, stop: Option<Arc<AtomicBool>>) -> Self {
        self.stop = stop;
        self
    }

    /// A different stall limit (tests).
    pub fn with_stall(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    fn kafka(&self, topic: &str) -> impl FnOnce(KafkaError) -> RuntimeError + '_ {
        let topic = topic.to_string();
        move |source| RuntimeError::Kafka { op: self.what, topic, source }
    }

    /// Low and high watermarks. A topic created a moment ago may not have a leader yet
    /// (NotLeaderForPartition): that passes within seconds, so it is retried for up to
    /// 30 s before it counts as a failure.
    pub fn watermarks(&self, tp: &TopicPartition) -> Result<(i64, i64), RuntimeError> {
        watermarks(&*self.consumer, &tp.topic, tp.partition).map_err(self.kafka(&tp.topic))
    }

    /// Watermarks with one try (for gauges: a failure is only a missing figure).
    pub fn watermarks_once(&self, tp: &TopicPartition, timeout: Duration) -> Option<(i64, i64)> {
        self.consumer.fetch_watermarks(&tp.topic, tp.partition, timeout).ok()
    }

    /// Reads these partitions from these offsets (None: the beginning), replacing what
    /// was assigned before.
    pub fn assign(&self, from: &[(TopicPartition, Option<i64>)]) -> Result<(), RuntimeError> {
        let mut tpl = TopicPartitionList::new();
        for (tp, o) in from {
            let offset = o.map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(&tp.topic, tp.partition, offset).map_err(self.kafka(&tp.topic))?;
        }
        self.consumer.assign(&tpl).map_err(self.kafka(""))
    }

    /// Reads `tp` from `from` (None: its beginning) to its end as of now, handing each
    /// committed record to `on_record`. Ends at the end-of-partition report, or when the
    /// position passed the end; fails with `RestoreStalled` after `stall` without
    /// progress short of it.
    pub fn read_to_end(
        &self,
        tp: &TopicPartition,
        from: Option<i64>,
        on_record: &mut dyn FnMut(&BorrowedMessage<'_>) -> Result<(), RuntimeError>,
    ) -> Result<ReadToEnd, RuntimeError> {
        let watermarks = self.watermarks(tp)?;
        self.read_to(tp, from, watermarks, on_record)
    }

    /// `read_to_end` with the watermarks the caller fetched already (one broker round trip
    /// fewer); `high` is the end.
    pub fn read_to(
        &self,
        tp: &TopicPartition,
        from: Option<i64>,
        (low, high): (i64, i64),
        on_record: &mut dyn FnMut(&BorrowedMessage<'_>) -> Result<(), RuntimeError>,
    ) -> Result<ReadToEnd, RuntimeError> {
        let first = from.unwrap_or(low).max(low);
        let mut done = ReadToEnd { records: 0, last_offset: None, end: high };
        if first >= high {
            // Nothing there: no fetch round trip.
            return Ok(done);
        }
        self.assign(&[(tp.clone(), Some(first))])?;
        let mut idle = Idle::new();
        loop {
            self.check_stop(tp)?;
            match self.consumer.poll(POLL) {
                Some(Ok(m)) => {
                    on_record(&m)?;
                    done.records += 1;
                    done.last_offset = Some(m.offset());
                    idle = Idle::new();
                }
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(done),
                Some(Err(e)) if connection_trouble(&e) => self.read_on(tp, &e, high, &mut idle)?,
                // Named by partition: the log line says which restore could not finish.
                Some(Err(e)) => return Err(self.kafka(&tp.to_string())(e)),
                None if self.passed_end(tp, high, &idle)? => return Ok(done),
                None => {}
            }
        }
    }

    /// Once the instance stops, a read ends with `Interrupted`.
    fn check_stop(&self, tp: &TopicPartition) -> Result<(), RuntimeError> {
        if self.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err(RuntimeError::Interrupted { what: self.what, partition: tp.to_string() });
        }
        Ok(())
    }

    /// The offset of the first record at or after `from` this reader delivers (one that
    /// reads committed records only skips aborted ones), or None when there is none before
    /// the end. Reads one record, not the partition.
    pub fn first_from(&self, tp: &TopicPartition, from: i64) -> Result<Option<i64>, RuntimeError> {
        let (_, high) = self.watermarks(tp)?;
        if from >= high {
            return Ok(None);
        }
        self.assign(&[(tp.clone(), Some(from))])?;
        let mut idle = Idle::new();
        loop {
            self.check_stop(tp)?;
            match self.consumer.poll(POLL) {
                Some(Ok(m)) => return Ok(Some(m.offset())),
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(None),
                Some(Err(e)) if connection_trouble(&e) => self.read_on(tp, &e, high, &mut idle)?,
                Some(Err(e)) => return Err(self.kafka(&tp.to_string())(e)),
                None if self.passed_end(tp, high, &idle)? => return Ok(None),
                None => {}
            }
        }
    }

    /// A read that lost its broker connections goes on: librdkafka reconnects by itself,
    /// and the stall limit (`RestoreStalled`) bounds an outage that lasts. Failing at
    /// once turned a connection dropped for a moment (seen as "2/2 brokers are down"
    /// right after a large load into the broker) into a failed assignment, reopened
    /// whole after a pause.
    fn read_on(&self, tp: &TopicPartition, e: &KafkaError, high: i64, idle: &mut Idle) -> Result<(), RuntimeError> {
        tracing::debug!(reader = self.what, partition = %tp, error = %e, "connection trouble; reading on");
        idle.trouble = Some(e.to_string());
        // Reported errors are not progress: the stall limit still counts.
        self.passed_end(tp, high, idle).map(|_| ())
    }

    /// After a poll that delivered nothing: whether the position reached `high`, or
    /// `RestoreStalled` once nothing came for the stall limit.
    fn passed_end(&self, tp: &TopicPartition, high: i64, idle: &Idle) -> Result<bool, RuntimeError> {
        let pos = self.position(tp);
        if pos.is_some_and(|p| p >= high) {
            return Ok(true);
        }
        if idle.since.elapsed() > self.stall {
            return Err(RuntimeError::RestoreStalled {
                topic: tp.topic.clone(),
                partition: tp.partition,
                position: pos,
                end: high,
                waited_s: self.stall.as_secs(),
                cause: match &idle.trouble {
                    Some(e) => format!("the broker connections failed (last: {e})"),
                    None => NOTHING_DELIVERED.to_string(),
                },
            });
        }
        Ok(false)
    }

    /// The next offset this reader will read from `tp`, as it knows locally.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.consumer.position().ok().and_then(|p| p.find_partition(&tp.topic, tp.partition)?.offset().to_raw())
    }

    /// One step of following the assigned partitions: waits up to `wait`. Errors other
    /// than an end report are logged at debug level and read as nothing.
    pub fn follow(&self, wait: Duration) -> Option<Followed<'_>> {
        match self.consumer.poll(wait) {
            Some(Ok(m)) => Some(Followed::Record(m)),
            Some(Err(KafkaError::PartitionEOF(p))) => Some(Followed::End(p)),
            Some(Err(e)) => {
                tracing::debug!(reader = self.what, error = %e, "reader");
                None
            }
            None => Some(Followed::Idle),
        }
    }

    /// End offsets (last stable, as this reader reads committed only) of `partitions`, now.
    /// Ask a reader that fetches nothing: behind a long-polling fetch on the same
    /// connection the answer waits up to `fetch.wait.max.ms`.
    pub fn end_offsets(&self, partitions: &[TopicPartition], timeout: Duration) -> Result<std::collections::HashMap<TopicPartition, i64>, RuntimeError> {
        end_offsets(&*self.consumer, partitions, timeout).map_err(self.kafka(""))
    }

    /// First offsets (what retention left) of `partitions`, now.
    pub fn start_offsets(&self, partitions: &[TopicPartition], timeout: Duration) -> Result<std::collections::HashMap<TopicPartition, i64>, RuntimeError> {
        start_offsets(&*self.consumer, partitions, timeout).map_err(self.kafka(""))
    }

    /// The next offset to read per assigned partition, as this reader knows locally.
    pub fn positions(&self) -> std::collections::HashMap<TopicPartition, i64> {
        positions(&*self.consumer)
    }

    /// A record already fetched, without waiting (to build a batch after `follow`).
    pub fn next_fetched(&self) -> Option<BorrowedMessage<'_>> {
        match self.consumer.poll(Duration::ZERO) {
            Some(Ok(m)) => Some(m),
            _ => None,
        }
    }
}

/// A reader's consumer, closed off the caller's thread when the reader is dropped.
/// rust-rdkafka closes a consumer with a group id by polling until the close completes,
/// and its poll waits out the whole 100 ms it asks for: every restore paid that once per
/// partition, on the thread that goes on to open the next store (on two cores, 100 ms per
/// two partitions of a full restore, and as much on every restart). A reader never joined
/// its group, so nothing waits for that close.
struct Closing(Option<BaseConsumer<ReaderContext>>);

impl std::ops::Deref for Closing {
    type Target = BaseConsumer<ReaderContext>;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("a reader's consumer is there until the reader is dropped")
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        let Some(consumer) = self.0.take() else { return };
        let closing = std::thread::Builder::new().name("millrace-reader-close".into());
        if let Err(e) = closing.spawn(move || drop(consumer)) {
            // No thread to spare: the consumer went with the closure, closed right here.
            tracing::debug!(error = %e, "closed a reader on the caller's thread");
        }
    }
}

/// The end offsets of `partitions` as the broker knows them now (for a read_committed
/// consumer: the last stable offsets), in one request per leader. The caller compares a
/// position with them to learn whether an input was read to its end at the time asked.
pub(crate) fn end_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &[TopicPartition],
    timeout: Duration,
) -> Result<std::collections::HashMap<TopicPartition, i64>, KafkaError> {
    list_offsets(consumer, partitions, Offset::End, timeout)
}

/// The first offsets of `partitions` (what retention left), in one request per leader.
pub(crate) fn start_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &[TopicPartition],
    timeout: Duration,
) -> Result<std::collections::HashMap<TopicPartition, i64>, KafkaError> {
    list_offsets(consumer, partitions, Offset::Beginning, timeout)
}

/// ListOffsets: `at` is End (-1, latest) or Beginning (-2, earliest).
fn list_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &[TopicPartition],
    at: Offset,
    timeout: Duration,
) -> Result<std::collections::HashMap<TopicPartition, i64>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for tp in partitions {
        tpl.add_partition_offset(&tp.topic, tp.partition, at)?;
    }
    let ends = consumer.offsets_for_times(tpl, timeout)?;
    Ok(ends
        .elements()
        .iter()
        .filter(|e| e.error().is_ok())
        .filter_map(|e| Some((TopicPartition::new(e.topic(), e.partition()), e.offset().to_raw()?)))
        .filter(|(_, o)| *o >= 0)
        .collect())
}

/// The next offset `consumer` will hand out for each of `partitions` (its own view, no
/// broker call): past every record returned, and past transaction markers after them.
pub(crate) fn positions<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> std::collections::HashMap<TopicPartition, i64> {
    consumer
        .position()
        .map(|l| {
            l.elements()
                .iter()
                .filter_map(|e| Some((TopicPartition::new(e.topic(), e.partition()), e.offset().to_raw().filter(|o| *o >= 0)?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Low and high watermarks, retried while a new topic has no leader yet.
pub(crate) fn watermarks<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, partition: i32) -> Result<(i64, i64), KafkaError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok(w) => return Ok(w),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(topic, partition, error = %e, "watermarks not known yet; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A polled message as the engine and the read side take it: owned, headers included.
pub(crate) fn in_record(m: &BorrowedMessage<'_>) -> InRecord {
    let headers = m
        .headers()
        .map(|h| {
            Headers(h.iter().map(|x| (x.key.to_string(), x.value.map(<[u8]>::to_vec).unwrap_or_default())).collect())
        })
        .unwrap_or_default();
    InRecord {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lost connections are read on (librdkafka retries them; the stall limit bounds an
    /// outage); anything about the partition itself ends the read.
    #[test]
    fn only_connection_errors_are_read_on() {
        for code in [RDKafkaErrorCode::AllBrokersDown, RDKafkaErrorCode::BrokerTransportFailure, RDKafkaErrorCode::RequestTimedOut] {
            assert!(connection_trouble(&KafkaError::MessageConsumption(code)), "{code:?}");
            assert!(!connection_trouble(&KafkaError::MessageConsumptionFatal(code)), "fatal {code:?}");
        }
        for code in [RDKafkaErrorCode::UnknownTopicOrPartition, RDKafkaErrorCode::TopicAuthorizationFailed, RDKafkaErrorCode::OffsetOutOfRange] {
            assert!(!connection_trouble(&KafkaError::MessageConsumption(code)), "{code:?}");
        }
        assert!(!connection_trouble(&KafkaError::PartitionEOF(0)));
    }
}
