//! The store a task writes through during a transaction. Reads see the open transaction's
//! overlay first, then RocksDB. Writes go to the overlay and, as records, to the compacted
//! changelog in the same Kafka transaction.
//!
//! Invariant: local state never runs ahead of the committed changelog. The overlay reaches
//! RocksDB only through `commit`, which the runtime calls after `commit_transaction`
//! succeeded; `abort` drops it.

use super::{RocksStore, StoreError};
use crate::record::{Collector, Headers, OutRecord};
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct ChangeloggedStore {
    inner: Arc<RocksStore>,
    /// None: the input topic is the changelog, so writes emit no records.
    changelog_topic: Option<String>,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// A versioned store (a table a join reads as of a time) also keeps every write of the
    /// open transaction with its time, per key in write order.
    versions: Option<BTreeMap<Vec<u8>, Vec<(i64, Option<Vec<u8>>)>>>,
    /// Event history entries of the open transaction: (aggregate id, version, JSON).
    events: Vec<(Vec<u8>, u64, Vec<u8>)>,
}

impl ChangeloggedStore {
    pub fn new(inner: Arc<RocksStore>, changelog_topic: impl Into<String>) -> Self {
        Self { inner, changelog_topic: Some(changelog_topic.into()), overlay: BTreeMap::new(), versions: None, events: Vec::new() }
    }

    /// A store whose input topic serves as its changelog (a table with `changelog: false`).
    /// It still writes through the overlay, so it never runs ahead of the commit.
    pub fn without_changelog(inner: Arc<RocksStore>) -> Self {
        Self { inner, changelog_topic: None, overlay: BTreeMap::new(), versions: None, events: Vec::new() }
    }

    /// Keeps every value with its time, for `get_as_of` (see `RocksStore::write_versions`).
    pub fn versioned(mut self) -> Self {
        self.versions = Some(BTreeMap::new());
        self
    }

    /// The value `key` had at event time `ts`, the open transaction's writes included.
    pub fn get_as_of(&self, key: &[u8], ts: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(versions) = &self.versions else { return self.get(key) };
        let open = versions.get(key).and_then(|vs| vs.iter().rev().find(|(t, _)| *t <= ts));
        let committed = self.inner.version_as_of(key, ts)?;
        Ok(match (open, committed) {
            // A later write of the same time wins: the open transaction's.
            (Some((t, v)), Some((ct, cv))) => if *t >= ct { v.clone() } else { cv },
            (Some((_, v)), None) => v.clone(),
            (None, Some((_, cv))) => cv,
            (None, None) => None,
        })
    }

    pub fn inner(&self) -> &Arc<RocksStore> {
        &self.inner
    }

    pub fn changelog_topic(&self) -> Option<&str> {
        self.changelog_topic.as_deref()
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlay.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.inner.get(key),
        }
    }

    /// Writes `value` (None = tombstone) in the open transaction. The changelog record goes
    /// to the task's own partition: the changelog is co-partitioned with the input. It
    /// carries the time of the input record that caused it (as Kafka Streams does), so a
    /// table read from the changelog can be looked up as of a time.
    pub fn put(&mut self, key: &[u8], value: Option<Vec<u8>>, timestamp: Option<i64>, out: &mut dyn Collector) {
        if let Some(topic) = &self.changelog_topic {
            out.send(OutRecord {
                topic: topic.clone(),
                partition: Some(self.inner.partition()),
                key: Some(key.to_vec()),
                value: value.clone(),
                headers: Headers::default(),
                timestamp,
            });
        }
        if let Some(versions) = &mut self.versions {
            versions.entry(key.to_vec()).or_default().push((timestamp.unwrap_or(i64::MIN), value.clone()));
        }
        self.overlay.insert(key.to_vec(), value);
    }

    /// Adds an event to the aggregate's history, committed with the snapshot. The history
    /// is derived (from the events topic), so it has no changelog records.
    pub fn put_event(&mut self, id: &[u8], version: u64, json: Vec<u8>) {
        self.events.push((id.to_vec(), version, json));
    }

    pub fn has_pending_writes(&self) -> bool {
        !self.overlay.is_empty() || !self.events.is_empty()
    }

    /// Called only after the Kafka transaction committed: the overlay and the changelog
    /// offset it reached go to RocksDB in one WriteBatch.
    pub fn commit(&mut self, changelog_offset: Option<i64>) -> Result<(), StoreError> {
        self.commit_with_events(changelog_offset, &[])
    }

    /// As `commit`, with the events topic offsets (per partition) the transaction reached:
    /// the event history is complete up to them.
    pub fn commit_with_events(&mut self, changelog_offset: Option<i64>, events_offsets: &[(i32, i64)]) -> Result<(), StoreError> {
        if self.overlay.is_empty() && self.events.is_empty() && changelog_offset.is_none() {
            return Ok(());
        }
        let overlay = std::mem::take(&mut self.overlay);
        if !self.events.is_empty() {
            let events = std::mem::take(&mut self.events);
            return self.inner.write_with_events(
                overlay.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
                &events,
                changelog_offset,
                events_offsets,
            );
        }
        match &mut self.versions {
            Some(versions) => {
                let versions = std::mem::take(versions);
                let entries = versions.iter().flat_map(|(k, vs)| vs.iter().map(move |(t, v)| (k.as_slice(), v.as_deref(), *t)));
                self.inner.write_versions(entries, changelog_offset)
            }
            None => self.inner.write(overlay.iter().map(|(k, v)| (k.as_slice(), v.as_deref())), changelog_offset),
        }
    }

    /// The transaction aborted: forget everything it wrote.
    pub fn abort(&mut self) {
        self.overlay.clear();
        self.events.clear();
        if let Some(v) = &mut self.versions {
            v.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoreResources, StoreTuning};

    #[test]
    fn writes_are_invisible_to_rocksdb_until_commit_and_vanish_on_abort() {
        let dir = tempfile::tempdir().unwrap();
        let res = StoreResources::new(&StoreTuning::default());
        let rocks = Arc::new(RocksStore::open(dir.path(), "s", 0, &res, None).unwrap());
        let mut store = ChangeloggedStore::new(rocks.clone(), "app-s-changelog");
        let mut out: Vec<OutRecord> = Vec::new();

        store.put(b"k", Some(b"v1".to_vec()), Some(5), &mut out);
        assert_eq!(store.get(b"k").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(rocks.get(b"k").unwrap(), None, "state must not run ahead of the commit");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "app-s-changelog");
        assert_eq!(out[0].partition, Some(0));
        assert_eq!(out[0].timestamp, Some(5), "the changelog record keeps its input's time");

        store.abort();
        assert_eq!(store.get(b"k").unwrap(), None);

        store.put(b"k", Some(b"v2".to_vec()), None, &mut out);
        store.commit(Some(7)).unwrap();
        assert_eq!(rocks.get(b"k").unwrap(), Some(b"v2".to_vec()));
        assert_eq!(rocks.checkpoint().unwrap(), Some(7));
    }

    #[test]
    fn a_versioned_store_answers_as_of_a_time_before_and_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let res = StoreResources::new(&StoreTuning::default());
        let rocks = Arc::new(RocksStore::open(dir.path(), "t", 0, &res, None).unwrap());
        let mut store = ChangeloggedStore::new(rocks.clone(), "app-t-changelog").versioned();
        let mut out: Vec<OutRecord> = Vec::new();
        store.put(b"c", Some(b"old".to_vec()), Some(100), &mut out);
        store.put(b"c", Some(b"new".to_vec()), Some(200), &mut out);
        assert_eq!(store.get_as_of(b"c", 150).unwrap(), Some(b"old".to_vec()), "open transaction, as of a time");
        store.commit(Some(1)).unwrap();
        assert_eq!(store.get_as_of(b"c", 150).unwrap(), Some(b"old".to_vec()));
        assert_eq!(store.get_as_of(b"c", 99).unwrap(), None);
        store.put(b"c", None, Some(300), &mut out);
        assert_eq!(store.get_as_of(b"c", 300).unwrap(), None, "the open deletion wins over the committed value");
        assert_eq!(store.get_as_of(b"c", 250).unwrap(), Some(b"new".to_vec()));
        store.abort();
        assert_eq!(store.get_as_of(b"c", 300).unwrap(), Some(b"new".to_vec()));
        assert_eq!(store.get(b"c").unwrap(), Some(b"new".to_vec()));
    }
}
