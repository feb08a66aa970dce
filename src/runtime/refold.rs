//! `millrace rebuild`: an aggregate store's snapshots folded again from its events topic,
//! after a fix to `evolve`. It reads every committed event and the store's changelog,
//! refolds each aggregate (`processor::refold`), and writes only the snapshots that change
//! to the changelog, in transactions. Instances pick them up as they restore: a restart
//! reads the changelog tail past its checkpoint, so it reads these too.
//!
//! It runs beside no live instance of the application (unless forced): a live task owns
//! its partitions' snapshots and would overwrite a rewritten one with its own, and its own
//! store would not see the rewrite until a restart.

use super::reader::PartitionReader;
use super::RuntimeError;
use crate::codec::murmur2::partition_for_key;
use crate::kafka::Clients;
use crate::processor::refold::{HistoryEvent, Refolded, Refolder};
use crate::record::{header, Headers, OutRecord, TopicPartition};
use crate::sink::TransactionalSink;
use rdkafka::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One snapshot that changes.
#[derive(Debug)]
pub struct Change {
    pub key: String,
    /// Its changelog partition.
    pub partition: i32,
    /// The stored snapshot's version and state (None: there was none).
    pub before: Option<(u64, serde_json::Value)>,
    pub after: Refolded,
}

/// What a rebuild would do.
#[derive(Debug, Default)]
pub struct Plan {
    /// Aggregates with events.
    pub aggregates: usize,
    pub changed: Vec<Change>,
    /// Aggregates whose events cannot be refolded (unreadable, or a history that does not
    /// start at version 1, as retention leaves it), with why: their snapshots stay.
    pub unfoldable: Vec<(String, String)>,
}

pub struct StoreRebuild {
    pub store: String,
    events_topic: String,
    changelog: String,
    members_topic: String,
    refolder: Arc<dyn Refolder>,
    clients: Clients,
    transactional_id: String,
}

impl StoreRebuild {
    /// The rebuild of the aggregate store `store` of `topology` (its store name or its
    /// node name), with the aggregate as `registry` has it now (the fixed `evolve`).
    pub fn of(topology: &crate::topology::Topology, store: &str, registry: &super::Registry, clients: Clients) -> Result<Self, RuntimeError> {
        let (_, node) = topology
            .aggregates
            .iter()
            .find(|(name, a)| a.store.name == store || name.as_str() == store)
            .ok_or_else(|| RuntimeError::Rebuild {
                reason: format!(
                    "no aggregate keeps its snapshots in store {store:?}; the aggregate stores are {:?}",
                    topology.aggregates.values().map(|a| a.store.name.as_str()).collect::<Vec<_>>()
                ),
            })?;
        let registered = registry.get(&node.aggregate).ok_or_else(|| RuntimeError::UnknownAggregate {
            node: store.to_string(),
            name: node.aggregate.clone(),
            known: registry.names().map(str::to_string).collect(),
        })?;
        let store_format = registry.store_format(node).expect("registered");
        Ok(Self {
            store: node.store.name.clone(),
            events_topic: node.events.name.clone(),
            changelog: node.store.changelog.clone(),
            members_topic: topology.members_topic(),
            refolder: (registered.refolder)(node.events.codec, store_format, node.dedup_window),
            clients,
            transactional_id: format!("{}-rebuild-{}", topology.application_id, node.store.name),
        })
    }

    /// The instances of the application alive now (their ids).
    pub fn live_instances(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(super::members::live_instances(&self.clients, &self.members_topic)?.into_iter().map(|m| m.instance).collect())
    }

    /// Reads everything and refolds: what would change. `progress(read, total)` is called
    /// as records are read.
    pub fn plan(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<Plan, RuntimeError> {
        let reader = PartitionReader::new(&self.clients, "rebuild", format!("{}-reader", self.transactional_id), &[])?;
        let counts = super::topics::partition_counts(&self.clients, &[&self.events_topic, &self.changelog])?;
        let partitions = |topic: &str| (0..counts.get(topic).copied().unwrap_or(0)).map(|p| TopicPartition::new(topic, p)).collect::<Vec<_>>();
        let mut total = 0u64;
        for tp in partitions(&self.events_topic).iter().chain(&partitions(&self.changelog)) {
            let (low, high) = reader.watermarks(tp)?;
            total += (high - low).max(0) as u64;
        }
        let mut read = 0u64;
        let mut events: BTreeMap<String, Vec<HistoryEvent>> = BTreeMap::new();
        for tp in partitions(&self.events_topic) {
            reader.read_to_end(&tp, None, &mut |m| {
                read += 1;
                if read % 10_000 == 0 {
                    progress(read, total);
                }
                let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else { return Ok(()) };
                let r = super::reader::in_record(m);
                events.entry(key.to_string()).or_default().push(HistoryEvent {
                    value: r.value.unwrap_or_default(),
                    schema_version: r.headers.get_str(header::SCHEMA_VERSION).and_then(|v| v.parse().ok()),
                    command_id: r.headers.get_str(header::COMMAND_ID).map(str::to_string),
                });
                Ok(())
            })?;
        }
        // The latest snapshot of each key (a compacted topic: the last record wins).
        let mut snapshots: HashMap<String, (i32, Option<Vec<u8>>)> = HashMap::new();
        for tp in partitions(&self.changelog) {
            reader.read_to_end(&tp, None, &mut |m| {
                read += 1;
                if read % 10_000 == 0 {
                    progress(read, total);
                }
                if let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                    snapshots.insert(key.to_string(), (m.partition(), m.payload().map(<[u8]>::to_vec)));
                }
                Ok(())
            })?;
        }
        progress(read, total);
        let changelog_partitions = counts.get(&self.changelog).copied().unwrap_or(1);
        let mut plan = Plan { aggregates: events.len(), ..Plan::default() };
        for (key, history) in events {
            let (partition, stored) = match snapshots.remove(&key) {
                Some((p, bytes)) => (p, bytes),
                None => (partition_for_key(key.as_bytes(), changelog_partitions), None),
            };
            let after = match self.refolder.refold(&history, stored.as_deref()) {
                Ok(r) => r,
                Err(reason) => {
                    plan.unfoldable.push((key, reason));
                    continue;
                }
            };
            let before = match stored.as_deref().map(|b| self.refolder.read(b)) {
                Some(Ok(b)) => Some(b),
                // An unreadable snapshot is replaced by the refolded one.
                Some(Err(_)) | None => None,
            };
            if before.as_ref() != Some(&(after.version, after.state.clone())) {
                plan.changed.push(Change { key, partition, before, after });
            }
        }
        Ok(plan)
    }

    /// Writes the changed snapshots to the changelog, a thousand per transaction.
    /// `progress(written, total)` after each transaction.
    pub fn apply(&self, plan: &Plan, progress: &mut dyn FnMut(u64, u64)) -> Result<u64, RuntimeError> {
        let mut sink = TransactionalSink::new(&self.clients, &self.transactional_id, true, Some(self.changelog.as_str()))?;
        let mut written = 0u64;
        for chunk in plan.changed.chunks(1_000) {
            sink.begin()?;
            for c in chunk {
                sink.send(&OutRecord {
                    topic: self.changelog.clone(),
                    partition: Some(c.partition),
                    key: Some(c.key.as_bytes().to_vec()),
                    value: Some(c.after.snapshot.clone()),
                    headers: Headers::default(),
                    timestamp: None,
                })?;
            }
            sink.commit(&rdkafka::TopicPartitionList::new(), None)?;
            written += chunk.len() as u64;
            progress(written, plan.changed.len() as u64);
        }
        Ok(written)
    }
}
