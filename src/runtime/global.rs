//! Global tables: every instance holds the whole table, outside the consumer group. Before
//! any input is processed, each partition of the table's topic is bootstrapped to its end
//! offset; a background reader keeps it current after that. The table is stored as one
//! RocksDB per topic partition, each with its own offset checkpoint, so a restart reads only
//! what it has not seen, and a key is found in the partition a Java producer put it in.
//!
//! Every applied value is also kept as a version at its record's timestamp, so lookups can
//! be made as of a stream record's time: a replay, which finds the table already loaded to
//! its end, then sees what live processing saw (Kafka Streams' versioned stores, KIP-889).
//! How far the table has come is tracked per partition: the largest timestamp applied, and
//! since when the reader has been at the partition's end.

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
}

/// How far the reader has come in one partition.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Largest record timestamp applied.
    applied_ts: i64,
    /// Since when the reader has been at the partition's end, if it is.
    at_end_since: Option<Instant>,
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
        }
    }

    /// Opens one store per topic partition.
    pub fn open(&self, dir: &Path, partitions: i32, resources: &StoreResources) -> Result<Vec<Arc<RocksStore>>, RuntimeError> {
        let mut opened = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            opened.push(Arc::new(RocksStore::open(dir, &self.store, p, resources, None)?.keep_history(Some(self.history_ms))));
        }
        *self.stores.write().expect("global table lock") = opened.clone();
        *self.progress.lock().expect("global progress lock") =
            vec![Progress { applied_ts: i64::MIN, at_end_since: None }; partitions as usize];
        Ok(opened)
    }

    /// Reads every partition up to its end: nothing joins against a half-loaded table.
    pub fn bootstrap(&self, clients: &Clients) -> Result<u64, RuntimeError> {
        let stores = self.stores.read().expect("global table lock").clone();
        let mut total = 0;
        for s in &stores {
            total += restore(s, &self.topic, clients, &|_| true, true)?;
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
        let stores = self.stores.read().expect("global table lock").clone();
        let mut from = Vec::with_capacity(stores.len());
        for s in &stores {
            from.push((TopicPartition::new(self.topic.as_str(), s.partition()), s.checkpoint()?.map(|o| o + 1)));
        }
        reader.assign(&from)?;
        while !stop.load(Ordering::SeqCst) {
            let first = match reader.follow(Duration::from_millis(100)) {
                Some(Followed::Record(m)) => m.detach(),
                Some(Followed::End(p)) => {
                    self.at_end(p);
                    continue;
                }
                // Nothing arrived for a whole poll: every partition is at its end.
                Some(Followed::Idle) => {
                    for p in 0..stores.len() as i32 {
                        self.at_end(p);
                    }
                    continue;
                }
                None => continue,
            };
            // Take what is already fetched, and write one batch per partition rather than
            // one per record. Lookups learn the new time only after the data is written.
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
                let ts = |m: &OwnedMessage| m.timestamp().to_millis().unwrap_or(i64::MIN);
                let entries = msgs.iter().filter_map(|m| Some((m.key()?, m.payload(), ts(m))));
                store.write_versions(entries, Some(last.offset()))?;
                self.applied(partition, msgs.iter().map(|m| ts(m)).max().unwrap_or(i64::MIN));
            }
        }
        Ok(())
    }

    fn applied(&self, partition: i32, ts: i64) {
        if let Some(p) = self.progress.lock().expect("global progress lock").get_mut(partition as usize) {
            p.applied_ts = p.applied_ts.max(ts);
            p.at_end_since = None;
        }
    }

    fn at_end(&self, partition: i32) {
        if let Some(p) = self.progress.lock().expect("global progress lock").get_mut(partition as usize) {
            p.at_end_since.get_or_insert_with(Instant::now);
        }
    }

    /// Quiet time counts from now: partitions at their end stay there, but must be quiet
    /// for the full `quiet` again before a wait may time out against them.
    pub fn restart_quiet(&self) {
        for p in self.progress.lock().expect("global progress lock").iter_mut() {
            if p.at_end_since.is_some() {
                p.at_end_since = Some(Instant::now());
            }
        }
    }

    /// Applies records of one partition synchronously (the broker-free driver).
    pub fn apply(&self, partition: i32, key: &[u8], value: Option<&[u8]>, ts: i64, offset: i64) -> Result<(), StoreError> {
        let stores = self.stores();
        if let Some(s) = stores.get(partition as usize) {
            s.write_versions([(key, value, ts)], Some(offset))?;
        }
        self.applied(partition, ts);
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

    fn reached(&self, ts: i64, quiet: Duration) -> bool {
        if self.always_current.load(Ordering::SeqCst) {
            return true;
        }
        let progress = self.progress.lock().expect("global progress lock");
        !progress.is_empty()
            && progress.iter().all(|p| p.applied_ts >= ts || p.at_end_since.is_some_and(|s| s.elapsed() >= quiet))
    }

    fn wait_for(&self, ts: i64, max: Duration) {
        let deadline = Instant::now() + max;
        while !self.reached(ts, Duration::ZERO) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn lookups_wait_for_every_partition_to_reach_their_time_but_not_forever() {
        let dir = tempfile::tempdir().unwrap();
        let g = GlobalTable::new("g", "t", "s", 1, 86_400_000);
        g.open(dir.path(), 2, &StoreResources::new(&Default::default())).unwrap();
        let started = Instant::now();
        g.wait_for(1_000, Duration::from_millis(60));
        assert!(started.elapsed() >= Duration::from_millis(60), "behind and not at the end: waits the maximum");
        g.applied(0, 2_000);
        assert!(!g.reached(1_500, Duration::ZERO), "partition 1 is behind");
        g.at_end(1);
        let started = Instant::now();
        g.wait_for(1_500, Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_millis(50), "one partition past the time, the other at its end");
        assert!(!g.reached(1_500, Duration::from_secs(60)), "at the end, but not quiet for long");
        g.apply(1, b"k", Some(b"v"), 3_000, 0).unwrap();
        assert!(g.reached(1_500, Duration::from_secs(60)), "both partitions past the time");
        assert_eq!(g.lookup_as_of(b"k", 2_999).unwrap(), None);
    }
}
