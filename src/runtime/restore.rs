//! Restore a store from its changelog: from the offset checkpointed in RocksDB to the end
//! of the changelog (read_committed), before the task processes any input. The store is
//! never wiped; after a clean shutdown there is nothing to read, after a crash only the
//! tail of the last transactions.

use super::RuntimeError;
use crate::store::RocksStore;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use crate::kafka::Clients;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

const BATCH: usize = 2_000;

/// How long a restore may see no progress, short of the end, before it gives up (and is
/// retried from where it got to: what it applied is checkpointed).
const STALL: Duration = Duration::from_secs(10);

/// How long one poll of a restore waits. Short: a tail that holds only an aborted
/// transaction (what a crash leaves) delivers nothing and often no EOF event either, and
/// the end is then found by checking the position after each empty poll.
const POLL: Duration = Duration::from_millis(20);

/// A restore consumer's context. Reaching the end of a partition is how a restore
/// finishes, not an error; rdkafka reports it as a global error too, so that report is
/// kept at debug level.
pub(crate) struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::PartitionEOF) => tracing::debug!(reason, "end of partition"),
            _ => tracing::warn!(%error, reason, "restore consumer error"),
        }
    }
}

impl ConsumerContext for RestoreContext {}

type Batch = Vec<(Vec<u8>, Option<Vec<u8>>, i64)>;

/// Low and high watermarks of a partition. A topic created a moment ago may not have a
/// leader yet (NotLeaderForPartition): that passes within seconds, so it is retried for up
/// to 30 s before it counts as a failure.
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

/// Replays `changelog`'s partition into `store`; returns the number of records read.
/// Records `accept` refuses are skipped (an input topic used as changelog may hold records
/// the processor dead-lettered). With `versions`, each record is also kept as a version at
/// its timestamp (a global table's history, for as-of lookups).
pub fn restore(
    store: &RocksStore,
    changelog: &str,
    clients: &Clients,
    accept: &dyn Fn(Option<&[u8]>) -> bool,
    versions: bool,
) -> Result<u64, RuntimeError> {
    let partition = store.partition();
    let kafka = |source| RuntimeError::Kafka { op: "restore", topic: changelog.to_string(), source };
    let consumer: BaseConsumer<RestoreContext> = clients.reader(format!("millrace-restore-{changelog}"))
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create_with_context(RestoreContext)
        .map_err(kafka)?;
    let checkpoint = store.checkpoint().map_err(RuntimeError::Store)?;
    let (low, high) = watermarks(&consumer, changelog, partition).map_err(kafka)?;
    let first = checkpoint.map_or(low, |o| o + 1);
    if first >= high {
        // Nothing after the checkpoint (or an empty changelog): no consumer round trip.
        metrics::counter!("millrace_restore_records_total", "store" => store.name().to_string(), "partition" => partition.to_string()).increment(0);
        return Ok(0);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(changelog, partition, Offset::Offset(first)).map_err(kafka)?;
    consumer.assign(&tpl).map_err(kafka)?;

    let labels = [("store", store.name().to_string()), ("partition", partition.to_string())];
    let started = Instant::now();
    let mut restored = 0u64;
    let mut batch: Batch = Vec::with_capacity(BATCH);
    let mut last = checkpoint;
    let mut idle_since = Instant::now();
    let flush = |batch: &mut Batch, last: Option<i64>| {
        if versions {
            store.write_versions(batch.iter().map(|(k, v, ts)| (k.as_slice(), v.as_deref(), *ts)), last)
        } else {
            store.write(batch.iter().map(|(k, v, _)| (k.as_slice(), v.as_deref())), last)
        }
        .map_err(RuntimeError::Store)?;
        batch.clear();
        Ok::<_, RuntimeError>(())
    };
    loop {
        match consumer.poll(POLL) {
            Some(Ok(m)) => {
                if let (Some(k), true) = (m.key(), accept(m.payload())) {
                    let ts = m.timestamp().to_millis().unwrap_or(i64::MIN);
                    batch.push((k.to_vec(), m.payload().map(<[u8]>::to_vec), ts));
                }
                last = Some(m.offset());
                restored += 1;
                if batch.len() >= BATCH {
                    flush(&mut batch, last)?;
                    metrics::gauge!("millrace_restore_remaining", &labels)
                        .set((high - m.offset() - 1).max(0) as f64);
                }
                idle_since = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(kafka(e)),
            None => {
                // No EOF yet. Transaction markers occupy offsets but are never delivered, so
                // also stop once the consumer's own position reached the end seen at the
                // start (later writes belong to the running task), or nothing moved for long.
                // No broker calls here: they would serve, and swallow, the EOF event.
                let pos = consumer
                    .position()
                    .ok()
                    .and_then(|p| p.find_partition(changelog, partition).and_then(|e| e.offset().to_raw()));
                if pos.is_some_and(|p| p >= high) {
                    break;
                }
                // Nothing moved for long, short of the end: the store is partial. The task
                // must not process on it, so this is an error (retried by the poll loop,
                // the instance unready meanwhile), never an early Ok.
                if idle_since.elapsed() > STALL {
                    flush(&mut batch, last)?;
                    metrics::counter!("millrace_restore_stalls_total", &labels).increment(1);
                    return Err(RuntimeError::RestoreStalled {
                        topic: changelog.to_string(),
                        partition,
                        position: pos,
                        end: high,
                        waited_s: STALL.as_secs(),
                    });
                }
            }
        }
    }
    flush(&mut batch, last)?;
    metrics::gauge!("millrace_restore_remaining", &labels).set(0.0);
    metrics::counter!("millrace_restore_records_total", &labels).increment(restored);
    tracing::info!(
        store = store.name(),
        partition,
        from = ?checkpoint,
        restored,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "restored changelog tail"
    );
    Ok(restored)
}

/// Makes the event history of an aggregate store complete, from the events topic (the
/// history's source, as a table's input topic can be its changelog):
/// - a history marked complete, with nothing restored: nothing to do;
/// - a store brought forward from its changelog (after a crash, or a rolled-back state
///   directory): the events after the history's checkpointed events offsets are applied,
///   so the history catches up with the snapshots;
/// - a new store: its history starts with its first event;
/// - otherwise (a lost state directory, restored from the changelog; a store older than
///   the history): the whole topic is read for this task's aggregates.
pub(crate) fn ensure_event_history(
    store: &RocksStore,
    source: &super::engine::EventSource,
    clients: &Clients,
    restored: u64,
) -> Result<(), RuntimeError> {
    let complete = store.events_complete().map_err(RuntimeError::Store)?;
    if complete && restored == 0 {
        return Ok(());
    }
    if !complete && store.is_empty() {
        return store.put_events(&[], true).map_err(RuntimeError::Store);
    }
    if !source.json {
        tracing::warn!(store = store.name(), topic = %source.topic, "event history cannot be read back from protobuf events; it may miss events");
        return store.put_events(&[], true).map_err(RuntimeError::Store);
    }
    let mine = store.partition();
    // Events are keyed by aggregate id like the commands: with equal partition counts, the
    // task's events are all in the same partition number.
    let partitions: Vec<i32> =
        if source.partitions == source.input_partitions { vec![mine] } else { (0..source.partitions).collect() };
    let started = Instant::now();
    let mut applied = 0usize;
    for p in partitions {
        // Events are written idempotently (key = aggregate id + version): re-applying one
        // the history has is harmless.
        let from = if complete { store.events_offset(p).map_err(RuntimeError::Store)?.map(|o| o + 1) } else { None };
        read_to_end(&source.topic, p, from, clients, &mut |batch| {
            let events: Vec<(Vec<u8>, u64, Vec<u8>)> = batch
                .iter()
                .filter(|(k, _)| crate::codec::murmur2::partition_for_key(k, source.input_partitions) == mine)
                .filter_map(|(k, v)| {
                    let version = serde_json::from_slice::<serde_json::Value>(v.as_deref()?).ok()?["version"].as_u64()?;
                    Some((k.clone(), version, v.clone()?))
                })
                .collect();
            applied += events.len();
            store.put_events(&events, false).map_err(RuntimeError::Store)
        })?;
    }
    store.put_events(&[], true).map_err(RuntimeError::Store)?;
    tracing::info!(store = store.name(), partition = mine, events = applied, full = !complete,
        elapsed_ms = started.elapsed().as_millis() as u64, "brought the event history up to the events topic");
    Ok(())
}

/// Reads partition `partition` of `topic` from `from` (default: the beginning) to its end
/// (read_committed), handing batches of (key, value) to `apply`.
fn read_to_end(
    topic: &str,
    partition: i32,
    from: Option<i64>,
    clients: &Clients,
    apply: &mut dyn FnMut(&[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), RuntimeError>,
) -> Result<(), RuntimeError> {
    let kafka = |source| RuntimeError::Kafka { op: "read to end", topic: topic.to_string(), source };
    let consumer: BaseConsumer<RestoreContext> = clients.reader(format!("millrace-rebuild-{topic}"))
        .set("enable.partition.eof", "true")
        .create_with_context(RestoreContext)
        .map_err(kafka)?;
    let (low, high) = watermarks(&consumer, topic, partition).map_err(kafka)?;
    let first = from.unwrap_or(low).max(low);
    if first >= high {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(first)).map_err(kafka)?;
    consumer.assign(&tpl).map_err(kafka)?;
    let mut batch = Vec::with_capacity(BATCH);
    let mut idle_since = Instant::now();
    loop {
        match consumer.poll(POLL) {
            Some(Ok(m)) => {
                if let Some(k) = m.key() {
                    batch.push((k.to_vec(), m.payload().map(<[u8]>::to_vec)));
                }
                if batch.len() >= BATCH {
                    apply(&batch)?;
                    batch.clear();
                }
                idle_since = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(kafka(e)),
            None => {
                // As in restore: transaction markers hide the end from EOF reports.
                let pos = consumer.position().ok().and_then(|p| p.find_partition(topic, partition).and_then(|e| e.offset().to_raw()));
                if pos.is_some_and(|p| p >= high) {
                    break;
                }
                // The history is not complete: an error, as for a stalled restore.
                if idle_since.elapsed() > STALL {
                    apply(&batch)?;
                    return Err(RuntimeError::RestoreStalled {
                        topic: topic.to_string(),
                        partition,
                        position: pos,
                        end: high,
                        waited_s: STALL.as_secs(),
                    });
                }
            }
        }
    }
    apply(&batch)
}
