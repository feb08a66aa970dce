//! Restore a store from its changelog: from the offset checkpointed in RocksDB to the end
//! of the changelog (read_committed), before the task processes any input. The store is
//! never wiped; after a clean shutdown there is nothing to read, after a crash only the
//! tail of the last transactions.

use super::partition_gauges;
use super::reader::PartitionReader;
use super::RuntimeError;
use crate::kafka::Clients;
use crate::record::TopicPartition;
use crate::store::{BulkLoad, RocksStore};
use rdkafka::Message;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

const BATCH: usize = 2_000;

/// Records read and not yet written.
enum Batch {
    /// A bulk load writes each record straight into RocksDB's batch.
    Bulk(BulkLoad),
    /// Otherwise the store's write sees them together (index entries, versions).
    Records(Vec<(Vec<u8>, Option<Vec<u8>>, i64)>),
}

impl Batch {
    fn push(&mut self, store: &RocksStore, key: &[u8], value: Option<&[u8]>, ts: i64) -> Result<(), RuntimeError> {
        match self {
            Batch::Bulk(b) => store.bulk_put(b, key, value).map_err(RuntimeError::Store)?,
            Batch::Records(r) => r.push((key.to_vec(), value.map(<[u8]>::to_vec), ts)),
        }
        Ok(())
    }

    fn len(&self) -> usize {
        match self {
            Batch::Bulk(b) => b.len(),
            Batch::Records(r) => r.len(),
        }
    }
}

/// Replays `changelog`'s partition into `store`; returns the number of records read.
/// Records `accept` refuses are skipped (an input topic used as changelog may hold records
/// the processor dead-lettered). With `versions`, each record is also kept as a version at
/// its timestamp (a global table's history, for as-of lookups). Once `stop` is set, the
/// read ends with `Interrupted`, what it read applied and checkpointed.
pub fn restore(
    store: &RocksStore,
    changelog: &str,
    clients: &Clients,
    accept: &dyn Fn(Option<&[u8]>) -> bool,
    versions: bool,
    stop: Option<Arc<AtomicBool>>,
) -> Result<u64, RuntimeError> {
    let partition = store.partition();
    let tp = TopicPartition::new(changelog, partition);
    let reader = PartitionReader::new(clients, "restore", format!("millrace-restore-{changelog}"), &[])?.interruptible(stop);
    let checkpoint = store.checkpoint().map_err(RuntimeError::Store)?;
    let labels = [("store", store.name().to_string()), ("partition", partition.to_string())];
    let started = Instant::now();
    // A full restore (a new instance, a lost disk) writes into an empty store: in bulk
    // (see `RocksStore::begin_bulk_load`).
    let bulk = !versions && checkpoint.is_none() && store.is_empty();
    // The end of the read, the remaining-records gauge and the size of a bulk load; fetched
    // before reading, as a broker call in the middle of the read could swallow its end
    // report.
    let (low, high) = reader.watermarks(&tp)?;
    // Whether the first record to apply must first mark the event history behind.
    let mut mark_behind = store.events_complete().map_err(RuntimeError::Store)?;
    let mut batch = if bulk {
        Batch::Bulk(store.begin_bulk_load((high - low).max(0) as u64).map_err(RuntimeError::Store)?)
    } else {
        Batch::Records(Vec::with_capacity(BATCH))
    };
    let flush = |batch: &mut Batch, last: Option<i64>| {
        let written = match batch {
            Batch::Bulk(b) => store.commit_bulk(b, last),
            Batch::Records(r) => {
                let written = if versions {
                    store.write_versions(r.iter().map(|(k, v, ts)| (k.as_slice(), v.as_deref(), *ts)), last)
                } else {
                    store.write(r.iter().map(|(k, v, _)| (k.as_slice(), v.as_deref())), last)
                };
                r.clear();
                written
            }
        };
        written.map_err(RuntimeError::Store)
    };
    let mut last = checkpoint;
    // The read starts at the checkpoint itself when it is checked (see `check_first`): its
    // record is already applied, so it is not applied or counted again.
    let verified = checkpoint.filter(|_| !versions);
    let mut expect = verified;
    let mut again = 0u64;
    let read = reader.read_to(&tp, verified.or(checkpoint.map(|o| o + 1)), (low, high), &mut |m| {
        if let Some(c) = expect.take() {
            if m.offset() == c {
                again = 1;
                return Ok(());
            }
            check_first(store, clients, &tp, c)?;
        }
        if let (Some(k), true) = (m.key(), accept(m.payload())) {
            // Snapshots are about to move ahead of a complete event history: say so first
            // (`ensure_event_history` catches it up, and clears the mark). Only when a
            // record is applied: the offsets after a checkpoint usually hold only markers.
            if std::mem::take(&mut mark_behind) {
                store.mark_events_behind().map_err(RuntimeError::Store)?;
            }
            batch.push(store, k, m.payload(), m.timestamp().to_millis().unwrap_or(i64::MIN))?;
        }
        last = Some(m.offset());
        if batch.len() >= BATCH {
            flush(&mut batch, last)?;
            partition_gauges::set(partition_gauges::RESTORE_REMAINING, store.name(), partition, (high - m.offset() - 1).max(0) as f64);
        }
        Ok(())
    });
    let read = match read {
        Ok(r) => r,
        Err(e) => {
            // What was read is applied and checkpointed: a retry, or the next start after
            // a shutdown, goes on from there.
            match e {
                RuntimeError::RestoreStalled { .. } => {
                    flush(&mut batch, last)?;
                    metrics::counter!("millrace_restore_stalls_total", &labels).increment(1);
                }
                RuntimeError::Interrupted { .. } => flush(&mut batch, last)?,
                _ => {}
            }
            if let Batch::Bulk(load) = batch {
                store.finish_bulk_load(load).map_err(RuntimeError::Store)?;
            }
            return Err(e);
        }
    };
    if let Some(c) = expect {
        // Nothing delivered from the checkpoint on: its record too may be gone.
        check_first(store, clients, &tp, c)?;
    }
    let read = super::reader::ReadToEnd { records: read.records - again, ..read };
    if read.records > 0 {
        flush(&mut batch, read.last_offset)?;
    }
    if let Batch::Bulk(load) = batch {
        store.finish_bulk_load(load).map_err(RuntimeError::Store)?;
    }
    partition_gauges::set(partition_gauges::RESTORE_REMAINING, store.name(), partition, 0.0);
    metrics::counter!("millrace_restore_records_total", &labels).increment(read.records);
    if read.records > 0 {
        tracing::info!(
            store = store.name(),
            partition,
            from = ?checkpoint,
            restored = read.records,
            bulk,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "restored changelog tail"
        );
    }
    Ok(read.records)
}

/// Fails with `StoreAhead` when the store holds a transaction the broker aborted after
/// acknowledging its commit. Kafka 4.3 was seen to leave a transaction committed as the
/// broker stopped without a marker on any of its partitions (`tests/broker_restart.rs`);
/// the new producer's release (`TransactionalSink::release_offsets`) then aborts it
/// everywhere. millrace had written the store on the answer, so the store ran ahead of
/// its changelog, and the commands read again would have been taken as done.
///
/// Called when the restore's committed-only read, started at the checkpoint, did not
/// deliver the checkpoint's record first, though the store applied it: compaction removed
/// it (a later record for its key exists: nothing wrong), or it was aborted, which a read
/// of every record tells apart. Stores that keep versions (global tables, stores with a
/// history window) are not checked: their restore reads versions, not a snapshot each.
fn check_first(store: &RocksStore, clients: &Clients, tp: &TopicPartition, checkpoint: i64) -> Result<(), RuntimeError> {
    let every = PartitionReader::new(clients, "verify checkpoint", format!("millrace-restore-{}", tp.topic), &[("isolation.level", "read_uncommitted")])?;
    if every.first_from(tp, checkpoint)? == Some(checkpoint) {
        return Err(RuntimeError::StoreAhead { store: store.name().to_string(), partition: tp.partition, checkpoint });
    }
    Ok(())
}

/// Makes the event history of an aggregate store complete, from the events topic (the
/// history's source, as a table's input topic can be its changelog):
/// - a history marked complete, with nothing restored and no earlier catch-up left
///   unfinished (`RocksStore::events_behind`): nothing to do;
/// - a store brought forward from its changelog (after a crash, or a rolled-back state
///   directory): the events after the history's checkpointed events offsets are applied,
///   so the history catches up with the snapshots;
/// - a new store: its history starts with its first event;
/// - otherwise (a lost state directory, restored from the changelog; a store older than
///   the history): the whole topic is read for this task's aggregates.
pub(crate) fn ensure_event_history(
    store: &RocksStore,
    source: &super::route::EventSource,
    clients: &Clients,
    restored: u64,
    stop: Option<Arc<AtomicBool>>,
) -> Result<(), RuntimeError> {
    let complete = store.events_complete().map_err(RuntimeError::Store)?;
    // Nothing restored this time, but an earlier catch-up may not have finished.
    let behind = store.events_behind().map_err(RuntimeError::Store)?;
    if complete && restored == 0 && !behind {
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
    // Interrupted, the history stays incomplete and the next start reads it again.
    let reader = PartitionReader::new(clients, "read event history", format!("millrace-rebuild-{}", source.topic), &[])?.interruptible(stop);
    for p in partitions {
        // Events are written idempotently (key = aggregate id + version): re-applying one
        // the history has is harmless.
        let from = if complete { store.events_offset(p).map_err(RuntimeError::Store)?.map(|o| o + 1) } else { None };
        let mut events: Vec<(Vec<u8>, u64, Vec<u8>)> = Vec::with_capacity(BATCH);
        let mut put = |events: &mut Vec<(Vec<u8>, u64, Vec<u8>)>| {
            applied += events.len();
            let r = store.put_events(events, false).map_err(RuntimeError::Store);
            events.clear();
            r
        };
        reader.read_to_end(&TopicPartition::new(source.topic.as_str(), p), from, &mut |m| {
            let (Some(k), Some(v)) = (m.key(), m.payload()) else { return Ok(()) };
            if crate::codec::murmur2::partition_for_key(k, source.input_partitions) != mine {
                return Ok(());
            }
            if let Some(version) = serde_json::from_slice::<serde_json::Value>(v).ok().and_then(|e| e["version"].as_u64()) {
                events.push((k.to_vec(), version, v.to_vec()));
            }
            if events.len() >= BATCH {
                put(&mut events)?;
            }
            Ok(())
        })?;
        put(&mut events)?;
    }
    store.put_events(&[], true).map_err(RuntimeError::Store)?;
    tracing::info!(store = store.name(), partition = mine, events = applied, full = !complete,
        elapsed_ms = started.elapsed().as_millis() as u64, "brought the event history up to the events topic");
    Ok(())
}

