//! Global tables: every instance holds the whole table, outside the consumer group. Before
//! any input is processed, each partition of the table's topic is bootstrapped to its end
//! offset; a background reader keeps it current after that. The table is stored as one
//! RocksDB per topic partition, each with its own offset checkpoint, so a restart reads only
//! what it has not seen, and a key is found in the partition a Java producer put it in.
//!
//! Every applied value is also kept as a version at its record's timestamp, so lookups can
//! be made as of a stream record's time: a replay, which finds the table already loaded to
//! its end, then sees what live processing saw (Kafka Streams' versioned stores, KIP-889).
//! Which times the table is final for (`final_through`) is event-time progress
//! (`runtime::progress`): for a table of an aggregate's events, the claims its writer tasks
//! publish; for any other topic, the largest time applied per partition, or, once a
//! partition is read to its end, the time that was asked minus `max_task_idle_ms`.

use super::progress::{self, ProgressBoard};
use super::reader::{Followed, PartitionReader};
use super::restore::restore;
use crate::record::TopicPartition;
use crate::kafka::Clients;
use super::RuntimeError;
use crate::codec::murmur2::partition_for_key;
use crate::processor::Lookup;
use crate::store::{RocksStore, StoreError, StoreResources};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Records a follower applies per RocksDB batch at most.
const FOLLOW_BATCH: usize = 1_000;

pub struct GlobalTable {
    pub name: String,
    pub topic: String,
    pub store: String,
    /// Partitions of `topic`.
    pub partitions: i32,
    /// Event time of history kept per key (see `RocksStore::keep_history`).
    history_ms: u64,
    stores: RwLock<Vec<Arc<RocksStore>>>,
    progress: Mutex<Vec<Progress>>,
    /// Fed synchronously (the broker-free driver): always current.
    always_current: AtomicBool,
    /// The writer whose claims say how far the table is final (an aggregate's events),
    /// if the topology has one.
    writer: Option<Writer>,
    /// How late a record may reach the broker after its time (`max_task_idle_ms`).
    lateness_ms: i64,
}

/// The tasks that write the table's topic: their input partitions' progress records.
struct Writer {
    board: Arc<ProgressBoard>,
    input: String,
    input_partitions: i32,
}

/// How far the reader has come in one partition.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The next offset to read: every record before it is applied.
    next: i64,
    /// Event time through which the partition is final, as far as its own records and
    /// end tell (a topic no task of this topology writes).
    clock: progress::InputClock,
}

impl GlobalTable {
    pub fn new(name: &str, topic: &str, store: &str, partitions: i32, history_ms: u64) -> Self {
        Self {
            name: name.into(),
            topic: topic.into(),
            store: store.into(),
            partitions,
            history_ms,
            stores: RwLock::new(Vec::new()),
            progress: Mutex::new(Vec::new()),
            always_current: AtomicBool::new(false),
            writer: None,
            lateness_ms: 0,
        }
    }

    /// How late a record may reach the broker after its time and still count at it.
    pub fn with_lateness(mut self, lateness_ms: u64) -> Self {
        self.lateness_ms = lateness_ms as i64;
        self
    }

    /// The table's topic is an aggregate's events topic, written by the tasks of `input`:
    /// it is final as far as their progress records (on `board`) say.
    pub fn written_by(mut self, board: Arc<ProgressBoard>, input: &str, input_partitions: i32) -> Self {
        self.writer = Some(Writer { board, input: input.into(), input_partitions });
        self
    }

    /// Opens one store per topic partition.
    pub fn open(&self, dir: &Path, partitions: i32, resources: &StoreResources) -> Result<Vec<Arc<RocksStore>>, RuntimeError> {
        let mut opened = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            opened.push(Arc::new(RocksStore::open(dir, &self.store, p, resources, None)?.keep_history(Some(self.history_ms))));
        }
        *self.stores.write().expect("global table lock") = opened.clone();
        let mut progress = Vec::with_capacity(opened.len());
        for s in &opened {
            progress.push(Progress { next: s.checkpoint()?.map_or(0, |o| o + 1), clock: Default::default() });
        }
        *self.progress.lock().expect("global progress lock") = progress;
        Ok(opened)
    }

    /// Reads every partition up to its end: nothing joins against a half-loaded table.
    pub fn bootstrap(&self, clients: &Clients) -> Result<u64, RuntimeError> {
        let stores = self.stores.read().expect("global table lock").clone();
        let mut total = 0;
        for s in &stores {
            // Not interruptible: it runs before the shutdown signal is listened to, so a
            // SIGTERM now ends the process at once, as a crash would.
            total += restore(s, &self.topic, clients, &|_| true, true, None)?;
        }
        Ok(total)
    }

    /// Tails the topic from each partition's checkpoint until `stop`, applying records as
    /// they come. Global tables mirror their topic; there is no transaction to join.
    pub fn follow(self: Arc<Self>, clients: Clients, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name(format!("millrace-global-{}", self.name))
            .spawn(move || {
                if let Err(e) = self.follow_loop(&clients, &stop) {
                    tracing::error!(table = %self.name, error = %e, "global table reader stopped");
                }
            })
            .expect("spawn global table reader")
    }

    fn follow_loop(&self, clients: &Clients, stop: &AtomicBool) -> Result<(), RuntimeError> {
        let reader = PartitionReader::new(clients, "follow global table", format!("millrace-global-{}", self.topic), &[])?;
        // Offsets are asked on a connection of their own, not behind the follower's fetch.
        let offsets = PartitionReader::new(clients, "global table offsets", format!("millrace-global-{}", self.topic), &[])?;
        let stores = self.stores.read().expect("global table lock").clone();
        let mut from = Vec::with_capacity(stores.len());
        for s in &stores {
            let next = s.checkpoint()?.map(|o| o + 1);
            // Everything before the checkpoint is applied (the bootstrap read it).
            if let Some(n) = next {
                self.read_to(s.partition(), n);
            }
            from.push((TopicPartition::new(self.topic.as_str(), s.partition()), next));
        }
        reader.assign(&from)?;
        let partitions: Vec<TopicPartition> = from.into_iter().map(|(tp, _)| tp).collect();
        let mut ends_asked = Instant::now();
        let mut starts_known = false;
        while !stop.load(Ordering::SeqCst) {
            let first = match reader.follow(Duration::from_millis(20)) {
                Some(Followed::Record(m)) => Some(m.detach()),
                Some(Followed::End(_)) | Some(Followed::Idle) | None => None,
            };
            if let Some(first) = first {
                // Take what is already fetched, and write one batch per partition rather
                // than one per record. Lookups learn the new time only after the data is
                // written.
                let mut batch = vec![first];
                while batch.len() < FOLLOW_BATCH {
                    match reader.next_fetched() {
                        Some(m) => batch.push(m.detach()),
                        None => break,
                    }
                }
                let mut per_partition: BTreeMap<i32, Vec<&OwnedMessage>> = BTreeMap::new();
                for m in &batch {
                    per_partition.entry(m.partition()).or_default().push(m);
                }
                for (partition, msgs) in per_partition {
                    let (Some(store), Some(last)) = (stores.get(partition as usize), msgs.last()) else { continue };
                    let times = self.times(partition, msgs.iter().map(|m| m.timestamp().to_millis().unwrap_or(i64::MIN)));
                    let entries = msgs.iter().zip(&times).filter_map(|(m, ts)| Some((m.key()?, m.payload(), *ts)));
                    store.write_versions(entries, Some(last.offset()))?;
                    self.applied(partition, last.offset() + 1, &times);
                }
            }
            // Past markers and aborted records too: the position, once all it passed is written.
            for (tp, next) in reader.positions() {
                self.read_to(tp.partition, next);
            }
            // A topic no task of ours writes is final through what was asked of the broker,
            // once read to its end then.
            if self.writer.is_none() && ends_asked.elapsed() >= END_CHECK {
                let asked = now_ms();
                ends_asked = Instant::now();
                if let Ok(ends) = offsets.end_offsets(&partitions, Duration::from_secs(5)) {
                    let positions = reader.positions();
                    // A partition nothing was ever read from (empty, or emptied by
                    // retention) starts at its first offset.
                    let starts = if starts_known { None } else { offsets.start_offsets(&partitions, Duration::from_secs(5)).ok() };
                    let mut progress = self.progress.lock().expect("global progress lock");
                    for (tp, end) in ends {
                        let Some(p) = progress.get_mut(tp.partition as usize) else { continue };
                        if let Some(first) = starts.as_ref().and_then(|s| s.get(&tp)) {
                            p.next = p.next.max(*first);
                        }
                        if p.next.max(positions.get(&tp).copied().unwrap_or(i64::MIN)) >= end {
                            p.clock.caught_up(asked, self.lateness_ms);
                            p.clock.committed();
                        }
                    }
                    starts_known |= starts.is_some();
                }
            }
        }
        Ok(())
    }

    /// The times records of `partition` are applied at: their own, or, for one older than
    /// a record before it, the running maximum.
    fn times(&self, partition: i32, times: impl Iterator<Item = i64>) -> Vec<i64> {
        let progress = self.progress.lock().expect("global progress lock");
        let Some(mut clock) = progress.get(partition as usize).map(|p| p.clock) else { return times.collect() };
        if self.writer.is_some() {
            // The writer already placed each event at its time (`InputClock::effective`).
            return times.collect();
        }
        times
            .map(|ts| {
                let at = clock.effective(ts);
                clock.processed(at);
                at
            })
            .collect()
    }

    /// Records up to `next` are applied, at `times`.
    fn applied(&self, partition: i32, next: i64, times: &[i64]) {
        if let Some(p) = self.progress.lock().expect("global progress lock").get_mut(partition as usize) {
            p.next = p.next.max(next);
            for ts in times {
                p.clock.processed(*ts);
            }
            p.clock.committed();
        }
    }

    fn read_to(&self, partition: i32, next: i64) {
        if let Some(p) = self.progress.lock().expect("global progress lock").get_mut(partition as usize) {
            p.next = p.next.max(next);
        }
    }

    /// Through which event time the table is final: every record of that time or before
    /// is applied, and none is still to come (late ones aside).
    pub fn final_through(&self) -> i64 {
        if self.always_current.load(Ordering::SeqCst) {
            return i64::MAX;
        }
        let progress = self.progress.lock().expect("global progress lock");
        if progress.is_empty() {
            return i64::MIN;
        }
        match &self.writer {
            Some(w) => {
                let next = |topic: &str, partition: i32| {
                    if topic == self.topic { progress.get(partition as usize).map(|p| p.next) } else { None }
                };
                (0..w.input_partitions)
                    .map(|p| w.board.final_through(&progress::key(&w.input, p), &next))
                    .min()
                    .unwrap_or(i64::MIN)
            }
            None => progress.iter().map(|p| p.clock.final_through()).min().unwrap_or(i64::MIN),
        }
    }

    /// Applies records of one partition synchronously (the broker-free driver).
    pub fn apply(&self, partition: i32, key: &[u8], value: Option<&[u8]>, ts: i64, offset: i64) -> Result<(), StoreError> {
        let stores = self.stores();
        if let Some(s) = stores.get(partition as usize) {
            s.write_versions([(key, value, ts)], Some(offset))?;
        }
        self.applied(partition, offset + 1, &[ts]);
        Ok(())
    }

    /// For a table fed synchronously (the broker-free driver): it is always up to date.
    pub fn mark_caught_up(&self) {
        self.always_current.store(true, Ordering::SeqCst);
    }

    pub fn stores(&self) -> Vec<Arc<RocksStore>> {
        self.stores.read().expect("global table lock").clone()
    }
}

impl Lookup for GlobalTable {
    fn lookup(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let stores = self.stores.read().expect("global table lock");
        if stores.is_empty() {
            return Ok(None);
        }
        stores[partition_for_key(key, stores.len() as i32) as usize].get(key)
    }

    fn lookup_as_of(&self, key: &[u8], ts: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let stores = self.stores.read().expect("global table lock");
        if stores.is_empty() {
            return Ok(None);
        }
        stores[partition_for_key(key, stores.len() as i32) as usize].get_as_of(key, ts)
    }

    fn exists_since(&self, key: &[u8], ts: i64) -> Result<Option<i64>, StoreError> {
        let stores = self.stores.read().expect("global table lock");
        if stores.is_empty() {
            return Ok(None);
        }
        stores[partition_for_key(key, stores.len() as i32) as usize].exists_since(key, ts)
    }

    fn final_through(&self) -> i64 {
        GlobalTable::final_through(self)
    }
}

/// How often a follower asks the broker whether it has read a topic to its end.
const END_CHECK: Duration = Duration::from_millis(50);

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::progress::ProgressRecord;

    #[test]
    fn a_topic_nobody_here_writes_is_final_through_the_times_applied_in_every_partition() {
        let dir = tempfile::tempdir().unwrap();
        let g = GlobalTable::new("g", "t", "s", 2, 86_400_000);
        g.open(dir.path(), 2, &StoreResources::new(&Default::default())).unwrap();
        assert_eq!(g.final_through(), i64::MIN, "nothing applied");
        g.apply(0, b"a", Some(b"v"), 2_000, 0).unwrap();
        assert_eq!(g.final_through(), i64::MIN, "partition 1 has told nothing");
        g.apply(1, b"k", Some(b"v"), 3_000, 0).unwrap();
        assert_eq!(g.final_through(), 1_999, "a record of 2000 may still come in partition 0");
        assert_eq!(g.lookup_as_of(b"k", 2_999).unwrap(), None);
    }

    #[test]
    fn a_table_of_events_is_final_as_far_as_its_writers_claims_that_it_has_read() {
        let dir = tempfile::tempdir().unwrap();
        let board = ProgressBoard::new();
        let g = GlobalTable::new("g", "events", "s", 1, 86_400_000).written_by(board.clone(), "cmds", 2);
        g.open(dir.path(), 1, &StoreResources::new(&Default::default())).unwrap();
        let claim = |t: i64, o: i64| ProgressRecord { final_through: t, written: [("events".to_string(), [(0, o)].into())].into() };
        board.record("cmds/0", claim(5_000, 0));
        assert_eq!(g.final_through(), i64::MIN, "input partition 1 has no claim: no owner, no progress");
        board.record("cmds/1", claim(4_000, -1));
        assert_eq!(g.final_through(), i64::MIN, "the event at offset 0 is not read yet");
        g.apply(0, b"p", Some(b"created"), 4_500, 0).unwrap();
        assert_eq!(g.final_through(), 4_000);
    }
}
