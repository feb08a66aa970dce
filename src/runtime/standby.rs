//! Standby replicas: warm copies of other instances' stores, kept by tailing their
//! changelogs outside the group protocol (librdkafka cannot carry assignor data).
//!
//! Which instance keeps the copy of a store partition is predicted, not negotiated: it is
//! the instance the range assignor would give the partition to if its owner failed (static
//! members sorted by `group.instance.id`, each topic's partitions in contiguous ranges).
//! That is the instance that restores it after a failover, so it restores only the tail.
//! With `standby_replicas: 2` or more, the next live instances in order keep copies too.
//!
//! A standby copy lives in the very directory an active task of that partition uses, with
//! its changelog checkpoint, so taking the partition over is opening the store and reading
//! what the standby had not applied yet. The engine asks for the copy (`release`) before
//! it opens the store.

use super::partition_gauges;
use super::catalog::Catalog;
use super::members::Directory;
use super::reader::{Followed, PartitionReader};
use crate::record::TopicPartition;
use crate::kafka::Clients;
use super::RuntimeError;
use crate::store::{Indexer, RocksStore, StoreResources};
use rdkafka::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A store that can have standby copies.
#[derive(Clone)]
pub(crate) struct StandbyStore {
    pub name: String,
    pub changelog: String,
    pub partitions: i32,
    pub indexer: Option<Indexer>,
    pub history_ms: Option<u64>,
}

/// The partitions a member gets from the range assignor: each topic's partitions in
/// contiguous ranges, the first `partitions % members` members one more.
pub fn range_owner(partition: i32, partitions: i32, members: usize) -> usize {
    let (m, p) = (members.max(1) as i32, partition);
    let (per, extra) = (partitions / m, partitions % m);
    // Members below `extra` hold per + 1 partitions each.
    let boundary = extra * (per + 1);
    if p < boundary {
        (p / (per + 1)) as usize
    } else {
        (extra + (p - boundary) / per.max(1)) as usize
    }
}

/// The instances that should keep standby copies of a partition owned by `owner`, given
/// the live instances: the one the range assignor would pick without the owner first.
pub fn standbys_for(partition: i32, partitions: i32, owner: &str, live: &[String], replicas: usize) -> Vec<String> {
    let mut others: Vec<String> = live.iter().filter(|m| m.as_str() != owner).cloned().collect();
    others.sort();
    others.dedup();
    if others.is_empty() || replicas == 0 {
        return Vec::new();
    }
    let first = range_owner(partition, partitions, others.len());
    (0..others.len()).map(|i| others[(first + i) % others.len()].clone()).take(replicas).collect()
}

pub(crate) struct Standbys {
    stores: Vec<StandbyStore>,
    replicas: usize,
    state_dir: PathBuf,
    resources: StoreResources,
    directory: Arc<Directory>,
    catalog: Arc<Catalog>,
    held: Mutex<BTreeMap<(String, i32), Arc<RocksStore>>>,
    /// Partitions the engine holds as active tasks, from the moment it asks for the copy
    /// until it closes the task: never reopened as standbys meanwhile (a restore can take
    /// minutes). Once the task closes (a rebalance gave the partition to another
    /// instance), the partition may be a standby copy here at once.
    claimed: Mutex<BTreeSet<(String, i32)>>,
}

impl Standbys {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stores: Vec<StandbyStore>,
        replicas: usize,
        state_dir: PathBuf,
        resources: StoreResources,
        directory: Arc<Directory>,
        catalog: Arc<Catalog>,
    ) -> Self {
        Self { stores, replicas, state_dir, resources, directory, catalog, held: Mutex::new(BTreeMap::new()), claimed: Mutex::new(BTreeSet::new()) }
    }

    /// The engine is about to open `store` partition `partition` as an active task: the
    /// standby copy closes (the active task continues from its checkpoint).
    pub fn release(&self, store: &str, partition: i32) {
        let key = (store.to_string(), partition);
        self.claimed.lock().expect("standby lock").insert(key.clone());
        if let Some(s) = self.held.lock().expect("standby lock").remove(&key) {
            partition_gauges::remove(&[partition_gauges::STANDBY_LAG], store, partition);
            drop(s);
            tracing::info!(store, partition, "standby copy handed to the active task");
        }
    }

    /// The engine closed its task of `store` partition `partition`: the partition may be a
    /// standby copy again (the next plan, within half a second, decides).
    pub fn unclaim(&self, store: &str, partition: i32) {
        self.claimed.lock().expect("standby lock").remove(&(store.to_string(), partition));
    }

    /// Store → partitions this instance keeps copies of, for the members directory.
    pub fn held(&self) -> BTreeMap<String, Vec<i32>> {
        let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (store, p) in self.held.lock().expect("standby lock").keys() {
            out.entry(store.clone()).or_default().push(*p);
        }
        out
    }

    /// What this instance should keep copies of now.
    fn wanted(&self) -> BTreeSet<(String, i32)> {
        let me = &self.directory.me.instance;
        let live: Vec<String> = self.directory.live().into_iter().map(|m| m.instance).collect();
        let claimed = self.claimed.lock().expect("standby lock");
        let mut out = BTreeSet::new();
        for s in &self.stores {
            for p in 0..s.partitions {
                let key = (s.name.clone(), p);
                if self.catalog.local(&s.name, p).is_some() || claimed.contains(&key) {
                    continue;
                }
                let Some(owner) = self.directory.owner(&s.name, p) else { continue };
                if owner.instance != *me && standbys_for(p, s.partitions, &owner.instance, &live, self.replicas).contains(me) {
                    out.insert(key);
                }
            }
        }
        out
    }

    /// Keeps the wanted copies current until `stop`.
    pub fn spawn(self: Arc<Self>, clients: Clients, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("millrace-standby".into())
            .spawn(move || {
                if let Err(e) = self.run(&clients, &stop) {
                    tracing::error!(error = %e, "standby replicas stopped; a failover will restore from the changelog");
                }
            })
            .expect("spawn standby thread")
    }

    fn run(&self, clients: &Clients, stop: &AtomicBool) -> Result<(), RuntimeError> {
        let reader = PartitionReader::new(clients, "standby", format!("millrace-standby-{}", self.directory.me.instance), &[])?;
        let changelog_of: BTreeMap<String, StandbyStore> = self.stores.iter().map(|s| (s.changelog.clone(), s.clone())).collect();
        let mut assigned: BTreeSet<(String, i32)> = BTreeSet::new();
        let mut wanted: BTreeSet<(String, i32)> = BTreeSet::new();
        let mut last_plan = Instant::now() - Duration::from_secs(10);
        let mut last_lag = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            if last_plan.elapsed() >= Duration::from_millis(500) {
                last_plan = Instant::now();
                let now_wanted = self.wanted();
                // A copy no longer wanted here leaves the lag gauge (held or not).
                for (store, p) in wanted.difference(&now_wanted) {
                    partition_gauges::remove(&[partition_gauges::STANDBY_LAG], store, *p);
                }
                wanted = now_wanted;
                let mut held = self.held.lock().expect("standby lock");
                held.retain(|key, _| wanted.contains(key));
                for (store, p) in &wanted {
                    if held.contains_key(&(store.clone(), *p)) {
                        continue;
                    }
                    let Some(s) = self.stores.iter().find(|s| &s.name == store) else { continue };
                    // The active task of this partition may still hold the directory (it is
                    // closing after a move): try again on the next round.
                    if let Ok(r) = RocksStore::open(&self.state_dir, &s.name, *p, &self.resources, s.indexer.clone()) {
                        // A copy of a partition this instance once owned has a complete
                        // event history, which the snapshots it follows move ahead of: the
                        // owner-to-be catches it up (`ensure_event_history`), though it
                        // restores nothing itself. Marked before the copy's first write.
                        if r.events_complete()? {
                            r.mark_events_behind()?;
                        }
                        held.insert((store.clone(), *p), Arc::new(r.keep_history(s.history_ms)));
                    }
                }
                let now: BTreeSet<(String, i32)> = held.keys().cloned().collect();
                if now != assigned {
                    let mut from = Vec::with_capacity(held.len());
                    for ((store, p), r) in held.iter() {
                        let Some(s) = self.stores.iter().find(|s| &s.name == store) else { continue };
                        from.push((TopicPartition::new(s.changelog.as_str(), *p), r.checkpoint()?.map(|o| o + 1)));
                    }
                    reader.assign(&from)?;
                    tracing::info!(partitions = ?now, "standby copies");
                    assigned = now;
                }
            }
            // Apply what arrived, one batch per partition.
            let mut batch: BTreeMap<(String, i32), Vec<(Vec<u8>, Option<Vec<u8>>, i64, i64)>> = BTreeMap::new();
            let deadline = Instant::now() + Duration::from_millis(200);
            while Instant::now() < deadline && batch.values().map(Vec::len).sum::<usize>() < 5_000 {
                match reader.follow(Duration::from_millis(50)) {
                    Some(Followed::Record(m)) => {
                        let Some(s) = changelog_of.get(m.topic()) else { continue };
                        let Some(k) = m.key() else { continue };
                        let ts = m.timestamp().to_millis().unwrap_or(i64::MIN);
                        batch.entry((s.name.clone(), m.partition())).or_default().push((k.to_vec(), m.payload().map(<[u8]>::to_vec), ts, m.offset()));
                    }
                    Some(Followed::End(_)) | None => {}
                    Some(Followed::Idle) => break,
                }
            }
            let held = self.held.lock().expect("standby lock");
            for (key, records) in batch {
                // Released to an active task meanwhile: that task restores the rest itself.
                let (Some(store), Some(last)) = (held.get(&key), records.last().map(|r| r.3)) else { continue };
                if store.history_ms_kept() {
                    store.write_versions(records.iter().map(|(k, v, ts, _)| (k.as_slice(), v.as_deref(), *ts)), Some(last))?;
                } else {
                    store.write(records.iter().map(|(k, v, _, _)| (k.as_slice(), v.as_deref())), Some(last))?;
                }
            }
            // Every copy this instance should keep has a lag, including one it could not
            // open yet: a missing copy shows as the whole changelog, not as silence.
            if last_lag.elapsed() >= Duration::from_secs(2) {
                last_lag = Instant::now();
                // Where the copies' reader stands, asked once for every partition.
                let positions = reader.positions();
                for (store, p) in &wanted {
                    let Some(s) = self.stores.iter().find(|s| &s.name == store) else { continue };
                    let tp = TopicPartition::new(s.changelog.as_str(), *p);
                    if let Some((_, high)) = reader.watermarks_once(&tp, Duration::from_secs(5)) {
                        // Where the copy's reader stands, when that is past the checkpoint:
                        // what it read is applied above, and past the last applied record
                        // it has also gone over what it never applies (commit markers, an
                        // aborted transaction: every new producer's release leaves one on
                        // every changelog partition). From the checkpoint alone, a copy
                        // that had read everything showed up to 3 of lag on a quiet
                        // partition until the next committed record.
                        let next = match held.get(&(store.clone(), *p)) {
                            Some(r) => r.checkpoint()?.map_or(0, |o| o + 1).max(positions.get(&tp).copied().unwrap_or(0)),
                            None => 0,
                        };
                        partition_gauges::set(partition_gauges::STANDBY_LAG, store, *p, (high - next).max(0) as f64);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_owner_matches_the_range_assignor() {
        // 6 partitions, 2 members: 0-2 and 3-5.
        let owners: Vec<usize> = (0..6).map(|p| range_owner(p, 6, 2)).collect();
        assert_eq!(owners, [0, 0, 0, 1, 1, 1]);
        // 7 partitions, 3 members: 3, 2, 2.
        let owners: Vec<usize> = (0..7).map(|p| range_owner(p, 7, 3)).collect();
        assert_eq!(owners, [0, 0, 0, 1, 1, 2, 2]);
        // More members than partitions: one each, the rest idle.
        let owners: Vec<usize> = (0..2).map(|p| range_owner(p, 2, 3)).collect();
        assert_eq!(owners, [0, 1]);
    }

    #[test]
    fn the_standby_is_who_takes_over_when_the_owner_fails() {
        let live: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        // With a, b, c: a has 0-1, b 2-3, c 4-5. Without a: b has 0-2, c 3-5.
        assert_eq!(standbys_for(0, 6, "a", &live, 1), ["b"]);
        assert_eq!(standbys_for(1, 6, "a", &live, 1), ["b"]);
        // Without c: a has 0-2, b 3-5.
        assert_eq!(standbys_for(4, 6, "c", &live, 1), ["b"]);
        assert_eq!(standbys_for(4, 6, "c", &live, 2), ["b", "a"]);
        assert!(standbys_for(0, 6, "a", &live[..1], 1).is_empty(), "nobody else is live");
    }
}
