//! Global tables: every instance holds the whole table, outside the consumer group. Before
//! any input is processed, each partition of the table's topic is bootstrapped to its end
//! offset; a background reader keeps it current after that. The table is stored as one
//! RocksDB per topic partition, each with its own offset checkpoint, so a restart reads only
//! what it has not seen, and a key is found in the partition a Java producer put it in.

use super::restore::restore;
use super::RuntimeError;
use crate::codec::murmur2::partition_for_key;
use crate::processor::Lookup;
use crate::store::{RocksStore, StoreError, StoreResources};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Records a follower applies per RocksDB batch at most.
const FOLLOW_BATCH: usize = 1_000;

pub struct GlobalTable {
    pub name: String,
    pub topic: String,
    pub store: String,
    partitions: RwLock<Vec<Arc<RocksStore>>>,
    /// Largest record timestamp applied so far.
    applied_ts: AtomicI64,
    /// The reader found nothing new on its last poll.
    caught_up: AtomicBool,
}

impl GlobalTable {
    pub fn new(name: &str, topic: &str, store: &str) -> Self {
        Self {
            name: name.into(),
            topic: topic.into(),
            store: store.into(),
            partitions: RwLock::new(Vec::new()),
            applied_ts: AtomicI64::new(i64::MIN),
            caught_up: AtomicBool::new(false),
        }
    }

    /// Opens one store per topic partition.
    pub fn open(&self, dir: &Path, partitions: i32, resources: &StoreResources) -> Result<Vec<Arc<RocksStore>>, RuntimeError> {
        let mut opened = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            opened.push(Arc::new(RocksStore::open(dir, &self.store, p, resources, None)?));
        }
        *self.partitions.write().expect("global table lock") = opened.clone();
        Ok(opened)
    }

    /// Reads every partition up to its end: nothing joins against a half-loaded table.
    pub fn bootstrap(&self, bootstrap_servers: &str) -> Result<u64, RuntimeError> {
        let stores = self.partitions.read().expect("global table lock").clone();
        let mut total = 0;
        for s in &stores {
            total += restore(s, &self.topic, bootstrap_servers, &|_| true)?;
        }
        Ok(total)
    }

    /// Tails the topic from each partition's checkpoint until `stop`, applying records as
    /// they come. Global tables mirror their topic; there is no transaction to join.
    pub fn follow(self: Arc<Self>, bootstrap_servers: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name(format!("millrace-global-{}", self.name))
            .spawn(move || {
                if let Err(e) = self.follow_loop(&bootstrap_servers, &stop) {
                    tracing::error!(table = %self.name, error = %e, "global table reader stopped");
                }
            })
            .expect("spawn global table reader")
    }

    fn follow_loop(&self, bootstrap_servers: &str, stop: &AtomicBool) -> Result<(), RuntimeError> {
        let kafka = |source| RuntimeError::Kafka { op: "follow global table", topic: self.topic.clone(), source };
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap_servers)
            .set("group.id", format!("millrace-global-{}", self.topic))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(kafka)?;
        let stores = self.partitions.read().expect("global table lock").clone();
        let mut tpl = TopicPartitionList::new();
        for s in &stores {
            let from = s.checkpoint()?.map_or(Offset::Beginning, |o| Offset::Offset(o + 1));
            tpl.add_partition_offset(&self.topic, s.partition(), from).map_err(kafka)?;
        }
        consumer.assign(&tpl).map_err(kafka)?;
        while !stop.load(Ordering::SeqCst) {
            let first = match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => m.detach(),
                Some(Err(e)) => {
                    tracing::warn!(table = %self.name, error = %e, "global table reader");
                    continue;
                }
                None => {
                    self.caught_up.store(true, Ordering::SeqCst);
                    continue;
                }
            };
            // Take what is already fetched, and write one batch per partition rather than
            // one per record. Lookups learn the new time only after the data is written.
            let mut batch = vec![first];
            while batch.len() < FOLLOW_BATCH {
                match consumer.poll(Duration::ZERO) {
                    Some(Ok(m)) => batch.push(m.detach()),
                    _ => break,
                }
            }
            let mut per_partition: BTreeMap<i32, Vec<&OwnedMessage>> = BTreeMap::new();
            for m in &batch {
                per_partition.entry(m.partition()).or_default().push(m);
            }
            for (partition, msgs) in per_partition {
                let (Some(store), Some(last)) = (stores.get(partition as usize), msgs.last()) else { continue };
                let entries = msgs.iter().filter_map(|m| Some((m.key()?, m.payload())));
                store.write(entries, Some(last.offset()))?;
            }
            if let Some(ts) = batch.iter().filter_map(|m| m.timestamp().to_millis()).max() {
                self.applied_ts.fetch_max(ts, Ordering::SeqCst);
            }
            self.caught_up.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    /// For a table fed synchronously (the broker-free driver): it is always up to date.
    pub fn mark_caught_up(&self) {
        self.caught_up.store(true, Ordering::SeqCst);
    }

    pub fn stores(&self) -> Vec<Arc<RocksStore>> {
        self.partitions.read().expect("global table lock").clone()
    }
}

impl Lookup for GlobalTable {
    fn lookup(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let stores = self.partitions.read().expect("global table lock");
        if stores.is_empty() {
            return Ok(None);
        }
        stores[partition_for_key(key, stores.len() as i32) as usize].get(key)
    }

    fn wait_for(&self, ts: i64, max: Duration) {
        let deadline = std::time::Instant::now() + max;
        while self.applied_ts.load(Ordering::SeqCst) < ts
            && !self.caught_up.load(Ordering::SeqCst)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn lookups_wait_for_the_table_to_reach_their_time_but_not_forever() {
        let g = GlobalTable::new("g", "t", "s");
        let started = Instant::now();
        g.wait_for(1_000, Duration::from_millis(60));
        assert!(started.elapsed() >= Duration::from_millis(60), "behind and not caught up: waits the maximum");
        g.applied_ts.store(2_000, Ordering::SeqCst);
        let started = Instant::now();
        g.wait_for(1_500, Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_millis(50), "already past the record's time");
        g.mark_caught_up();
        let started = Instant::now();
        g.wait_for(9_999, Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_millis(50), "nothing more to read");
    }
}
