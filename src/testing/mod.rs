//! `TopologyDriver`: runs a topology without a broker, for unit tests of aggregates and
//! topologies (feature `test-util`). Records are piped into input topics, outputs read
//! back, stores inspected, and faults injected, all in memory.
//!
//! It runs the production task, processor and store code (`Task`, the aggregate
//! processor, `ChangeloggedStore` over RocksDB in a temporary directory). Only the Kafka
//! clients are replaced: an in-memory log per topic partition stands in for the broker, and
//! the driver's commit cycle follows the engine's: outputs and input offsets become visible
//! together on commit, and only then do stores write their overlay and changelog offset.
//!
//! Faults it injects:
//! - `crash()`: the process dies between produce and commit. The open transaction's outputs
//!   vanish, stores roll back to the last commit, and the uncommitted inputs are processed
//!   again after restore.
//! - `crash_after_commit()`: the process dies after the transaction committed but before
//!   the stores wrote it. Restore must replay that changelog tail.
//! - `fence()`: the producer is fenced. The tasks are dropped without retrying their writes,
//!   and the new owner restores them and processes the uncommitted input again.
//! - `rebalance()`: the partitions are revoked (the open transaction commits) and assigned
//!   again. Tasks are closed, reopened and restored.

use crate::codec::murmur2::partition_for_key;
use crate::record::{Headers, InRecord, OutRecord, TopicPartition};
use crate::runtime::engine::{peer_stores, Route, RouteStore};
use crate::runtime::{App, AppConfig, Catalog, Registry, RuntimeError, Task, TaskState};
use crate::store::{RocksStore, StoreResources};
use crate::topology::Topology;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A record as the driver's in-memory broker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Headers,
    /// Event time: the driver clock when piped, the input's time for outputs.
    pub timestamp: i64,
}

impl DriverRecord {
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref().and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The value parsed as JSON (for topics with the JSON codec).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().unwrap_or_default()).unwrap_or(serde_json::Value::Null)
    }
}

pub struct TopologyDriver {
    topology: Topology,
    routes: BTreeMap<String, Route>,
    catalog: Arc<Catalog>,
    _dir: tempfile::TempDir,
    state_dir: std::path::PathBuf,
    resources: StoreResources,
    tasks: BTreeMap<TopicPartition, Task>,
    /// The committed log of every topic partition (inputs and outputs alike).
    log: BTreeMap<TopicPartition, Vec<DriverRecord>>,
    /// Outputs of the open transaction.
    pending: Vec<OutRecord>,
    /// Committed consumer position per input partition.
    committed: BTreeMap<TopicPartition, i64>,
    /// Position of the open transaction per input partition.
    position: BTreeMap<TopicPartition, i64>,
    now_ms: i64,
    since_commit_ms: i64,
    restored: u64,
    /// Partition counts of declared and internal topics, derived once from the topology.
    partition_counts: BTreeMap<String, i32>,
    /// Global tables mirror their topic as records arrive, outside any transaction.
    globals: Vec<Arc<crate::runtime::global::GlobalTable>>,
}

impl TopologyDriver {
    /// Builds the driver; the topology is checked against `registry` as `App::new` does.
    pub fn new(topology: Topology, registry: &Registry) -> Result<Self, RuntimeError> {
        let dir = tempfile::tempdir().map_err(RuntimeError::Http)?;
        let config = AppConfig {
            kafka: crate::kafka::Clients::plain(""),
            state_dir: dir.path().to_path_buf(),
            instance_id: "driver".into(),
            advertised_http: None,
        };
        let app = App::new(topology, registry, config)?;
        let topology = app.topology().clone();
        let globals: Vec<Arc<crate::runtime::global::GlobalTable>> = app.globals().values().cloned().collect();
        let mut driver = Self {
            routes: app.routes().clone(),
            catalog: app.catalog(),
            resources: StoreResources::new(&topology.rocksdb),
            state_dir: dir.path().join(&topology.application_id),
            _dir: dir,
            topology,
            tasks: BTreeMap::new(),
            log: BTreeMap::new(),
            pending: Vec::new(),
            committed: BTreeMap::new(),
            position: BTreeMap::new(),
            now_ms: 0,
            since_commit_ms: 0,
            restored: 0,
            globals: Vec::new(),
            partition_counts: BTreeMap::new(),
        };
        driver.partition_counts = driver.topology.topic_needs().into_iter().map(|n| (n.name, n.partitions)).collect();
        for g in globals {
            let partitions = driver.partitions(&g.topic);
            for s in g.open(&driver.state_dir.join("global"), partitions, &driver.resources)? {
                driver.catalog.attach(&s);
            }
            g.mark_caught_up();
            driver.globals.push(g);
        }
        driver.assign()?;
        Ok(driver)
    }

    /// Partition count of a declared or internal topic (1 for topics the topology does not
    /// know, such as a client's reply-to topic).
    fn partitions(&self, topic: &str) -> i32 {
        self.partition_counts.get(topic).copied().unwrap_or(1)
    }

    /// Opens and restores a task for every partition of every input topic.
    fn assign(&mut self) -> Result<(), RuntimeError> {
        for (topic, route) in self.routes.clone() {
            for p in 0..self.partitions(&topic) {
                let tp = TopicPartition::new(topic.as_str(), p);
                let store = match &route.state {
                    None => None,
                    Some(st) => {
                        let rocks = Arc::new(
                            RocksStore::open(&self.state_dir, &st.name, p, &self.resources, st.indexer.clone())?.keep_history(st.history_ms),
                        );
                        let restored = self.restore(&rocks, st)?;
                        self.restored += restored;
                        if let Some(ev) = &st.events {
                            self.ensure_event_history(&rocks, ev, restored)?;
                        }
                        self.catalog.attach(&rocks);
                        Some(st.wrap(rocks, &topic))
                    }
                };
                let mut task = Task::new(tp.clone(), (route.processor)(), store);
                task.transition(TaskState::Restoring);
                task.transition(TaskState::Running);
                self.tasks.insert(tp, task);
            }
        }
        self.catalog.set_ready(0, true);
        // Like a consumer after assignment: continue from the committed offsets.
        self.position = self.committed.clone();
        self.reprocess_uncommitted()
    }

    /// Replays the changelog partition after the store's checkpoint, as runtime::restore does.
    fn restore(&self, store: &RocksStore, st: &RouteStore) -> Result<u64, RuntimeError> {
        let tp = TopicPartition::new(st.changelog.as_str(), store.partition());
        let from = store.checkpoint()?.map_or(0, |o| o + 1);
        let tail: Vec<&DriverRecord> =
            self.log.get(&tp).map(|l| l.iter().filter(|r| r.offset >= from).collect()).unwrap_or_default();
        if let Some(last) = tail.last() {
            let entries = tail
                .iter()
                .filter(|r| (st.accept)(r.value.as_deref()))
                .filter_map(|r| Some((r.key.as_deref()?, r.value.as_deref(), r.timestamp)));
            if st.history_ms.is_some() {
                store.write_versions(entries, Some(last.offset))?;
            } else {
                store.write(entries.map(|(k, v, _)| (k, v)), Some(last.offset))?;
            }
        }
        Ok(tail.len() as u64)
    }

    /// As runtime::restore::ensure_event_history, from the in-memory events log.
    /// Re-puts every event of the task's aggregates (idempotent) when the history is
    /// incomplete or the store was just brought forward from its changelog.
    fn ensure_event_history(&self, store: &RocksStore, ev: &crate::runtime::engine::EventSource, restored: u64) -> Result<(), RuntimeError> {
        if store.events_complete()? && restored == 0 {
            return Ok(());
        }
        let mine = store.partition();
        let events: Vec<(Vec<u8>, u64, Vec<u8>)> = self
            .read_output(&ev.topic)
            .into_iter()
            .filter(|r| r.key.as_deref().is_some_and(|k| partition_for_key(k, ev.input_partitions) == mine))
            .filter_map(|r| Some((r.key.clone()?, r.json()["version"].as_u64()?, r.value.clone()?)))
            .collect();
        store.put_events(&events, true)?;
        Ok(())
    }

    fn close_tasks(&mut self) {
        for (tp, mut task) in std::mem::take(&mut self.tasks) {
            self.detach(&tp);
            task.close();
        }
    }

    fn detach(&self, tp: &TopicPartition) {
        if let Some(st) = &self.routes[&tp.topic].state {
            self.catalog.detach(&st.name, tp.partition);
        }
    }

    /// Pipes a record into `topic` (partitioned by murmur2 of the key, like a Java producer)
    /// and processes it in the open transaction.
    pub fn pipe(&mut self, topic: &str, key: &str, value: &[u8]) -> Result<(), RuntimeError> {
        self.pipe_with_headers(topic, key, value, Headers::default())
    }

    /// Pipes a tombstone (a record without a value) for `key`.
    pub fn pipe_tombstone(&mut self, topic: &str, key: &str) -> Result<(), RuntimeError> {
        self.pipe_record(topic, key, None, Headers::default())
    }

    pub fn pipe_with_headers(&mut self, topic: &str, key: &str, value: &[u8], headers: Headers) -> Result<(), RuntimeError> {
        self.pipe_record(topic, key, Some(value.to_vec()), headers)
    }

    fn pipe_record(&mut self, topic: &str, key: &str, value: Option<Vec<u8>>, headers: Headers) -> Result<(), RuntimeError> {
        let partition = partition_for_key(key.as_bytes(), self.partitions(topic));
        let tp = TopicPartition::new(topic, partition);
        let log = self.log.entry(tp.clone()).or_default();
        let offset = log.len() as i64;
        log.push(DriverRecord {
            topic: topic.into(),
            partition,
            offset,
            key: Some(key.as_bytes().to_vec()),
            value,
            headers,
            timestamp: self.now_ms,
        });
        self.mirror_to_globals(&tp, offset)?;
        if self.tasks.contains_key(&tp) {
            self.process_next(&tp)?;
        }
        Ok(())
    }

    /// Global tables read committed records of their topic, outside any transaction.
    fn mirror_to_globals(&self, tp: &TopicPartition, offset: i64) -> Result<(), RuntimeError> {
        for g in self.globals.iter().filter(|g| g.topic == tp.topic) {
            let r = &self.log[tp][offset as usize];
            if let Some(key) = &r.key {
                g.apply(tp.partition, key, r.value.as_deref(), r.timestamp, offset)?;
            }
        }
        Ok(())
    }

    fn process_next(&mut self, tp: &TopicPartition) -> Result<(), RuntimeError> {
        let next = self.position.get(tp).copied().unwrap_or(0);
        let Some(r) = self.log.get(tp).and_then(|l| l.get(next as usize)).cloned() else { return Ok(()) };
        let record = InRecord {
            topic: r.topic,
            partition: r.partition,
            offset: r.offset,
            timestamp: Some(r.timestamp),
            key: r.key,
            value: r.value,
            headers: r.headers,
        };
        // As the engine does: a node with peers reads their stores of the same partition.
        let mut task = self.tasks.remove(tp).expect("task exists for piped partition");
        let peers = peer_stores(&self.routes, &self.tasks, tp);
        let result = task.process(&record, &mut self.pending, &peers);
        self.tasks.insert(tp.clone(), task);
        result?;
        self.position.insert(tp.clone(), next + 1);
        Ok(())
    }

    fn reprocess_uncommitted(&mut self) -> Result<(), RuntimeError> {
        let tps: Vec<TopicPartition> = self.tasks.keys().cloned().collect();
        for tp in tps {
            let end = self.log.get(&tp).map_or(0, |l| l.len() as i64);
            while self.position.get(&tp).copied().unwrap_or(0) < end {
                self.process_next(&tp)?;
            }
        }
        Ok(())
    }

    /// Appends the open transaction's outputs to the log; returns the changelog offsets.
    fn publish(&mut self) -> BTreeMap<TopicPartition, i64> {
        let mut last = BTreeMap::new();
        let mut published = Vec::new();
        for r in std::mem::take(&mut self.pending) {
            let partition = r.partition.unwrap_or_else(|| match &r.key {
                Some(k) => partition_for_key(k, self.partitions(&r.topic)),
                None => 0,
            });
            let tp = TopicPartition::new(r.topic.as_str(), partition);
            let log = self.log.entry(tp.clone()).or_default();
            let offset = log.len() as i64;
            let timestamp = r.timestamp.unwrap_or(self.now_ms);
            log.push(DriverRecord { topic: r.topic, partition, offset, key: r.key, value: r.value, headers: r.headers, timestamp });
            last.insert(tp.clone(), offset);
            published.push((tp, offset));
        }
        for (tp, offset) in published {
            if let Err(e) = self.mirror_to_globals(&tp, offset) {
                tracing::error!(error = %e, "driver: global table write failed");
            }
        }
        self.committed = self.position.clone();
        self.since_commit_ms = 0;
        last
    }

    /// Commits the open transaction: outputs and input offsets become visible, then the
    /// stores write their overlay with the changelog offset.
    pub fn commit(&mut self) -> Result<(), RuntimeError> {
        let last = self.publish();
        for (tp, task) in self.tasks.iter_mut() {
            let checkpoint = match &self.routes[&tp.topic].state {
                Some(st) if st.source_is_changelog(&tp.topic) => task.offset_to_commit().map(|next| next - 1),
                Some(st) => last.get(&TopicPartition::new(st.changelog.as_str(), tp.partition)).copied(),
                None => None,
            };
            let events_offsets = crate::runtime::engine::events_offsets(&self.routes[&tp.topic], &last);
            task.committed(checkpoint, &events_offsets)?;
        }
        Ok(())
    }

    /// Commits, then lets every task consume what the commit made visible on its inputs
    /// (a re-key node's repartition topic feeding a join), and commits again, until
    /// nothing is left to process.
    pub fn flush(&mut self) -> Result<(), RuntimeError> {
        loop {
            self.commit()?;
            self.reprocess_uncommitted()?;
            if self.pending.is_empty() && self.tasks.values().all(|t| t.offset_to_commit().is_none()) {
                return Ok(());
            }
        }
    }

    /// Moves time forward and punctuates every task with the new time, as the engine does
    /// with the wall clock; commits when the topology's commit interval is reached.
    pub fn advance_time(&mut self, ms: i64) -> Result<(), RuntimeError> {
        self.now_ms += ms;
        self.since_commit_ms += ms;
        for task in self.tasks.values_mut() {
            task.punctuate(self.now_ms, &mut self.pending)?;
        }
        if self.since_commit_ms >= self.topology.processing.commit_interval_ms as i64 {
            self.commit()?;
        }
        Ok(())
    }

    /// Fault: the process dies between produce and commit.
    pub fn crash(&mut self) -> Result<(), RuntimeError> {
        self.pending.clear();
        self.drop_tasks_and_reassign()
    }

    /// Fault: the process dies after the commit, before the stores applied it.
    pub fn crash_after_commit(&mut self) -> Result<(), RuntimeError> {
        self.publish();
        self.drop_tasks_and_reassign()
    }

    /// Fault: the producer is fenced; the open transaction's writes are not retried.
    pub fn fence(&mut self) -> Result<(), RuntimeError> {
        self.pending.clear();
        self.drop_tasks_and_reassign()
    }

    /// The partitions are revoked (the open transaction commits first) and assigned again.
    pub fn rebalance(&mut self) -> Result<(), RuntimeError> {
        self.commit()?;
        self.close_tasks();
        self.assign()
    }

    fn drop_tasks_and_reassign(&mut self) -> Result<(), RuntimeError> {
        for task in self.tasks.values_mut() {
            // Dropped without committing: the overlay never reaches RocksDB.
            task.aborted();
        }
        self.close_tasks();
        self.assign()
    }

    /// Committed records of `topic`, across partitions, in partition then offset order.
    pub fn read_output(&self, topic: &str) -> Vec<DriverRecord> {
        self.log.iter().filter(|(tp, _)| tp.topic == topic).flat_map(|(_, l)| l.iter().cloned()).collect()
    }

    /// A committed store entry as the query server renders it (`{"version","state"}`).
    pub fn store(&self, store: &str, key: &str) -> Option<serde_json::Value> {
        let view = self.catalog.view(store)?;
        let partition = partition_for_key(key.as_bytes(), view.partitions);
        let value = self.catalog.local(store, partition)?.get(key.as_bytes()).ok()??;
        view.renderer.render(&value).ok()
    }

    /// Keys of `store` whose indexed `field` equals `value`, in key order.
    pub fn index(&self, store: &str, field: &str, value: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .catalog
            .local_partitions(store)
            .iter()
            .flat_map(|p| p.index_scan(field, value, None, usize::MAX).unwrap_or_default())
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect();
        keys.sort();
        keys
    }

    /// Changelog records replayed by every restore so far.
    pub fn restored_records(&self) -> u64 {
        self.restored
    }
}
