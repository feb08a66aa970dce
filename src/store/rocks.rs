//! The RocksDB store of one (store, partition): data in the default column family, and the
//! changelog checkpoint in `meta`, written in the same WriteBatch as the data it covers.
//! All stores of an instance share one block cache and one write-buffer budget, so memory
//! stays bounded however many partitions an instance owns.

use super::history::{self, HISTORY_CF};
use super::index::{self, Indexer, DEFINITION_KEY, INDEX_CF};
use super::StoreError;
use std::collections::BTreeMap;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteBufferManager, WriteOptions, DB,
};
use std::path::{Path, PathBuf};

mod bulk;
mod loaded_keys;
pub use bulk::BulkLoad;

const META_CF: &str = "meta";
const CHECKPOINT_KEY: &[u8] = b"changelog-offset";
/// An aggregate store's event history: (aggregate id, version) → the event as JSON.
const EVENTS_CF: &str = "events";
/// Set once the event history holds every event of the store's aggregates.
const EVENTS_COMPLETE_KEY: &[u8] = b"events-complete";
/// Set while the event history is behind the snapshots (`mark_events_behind`).
const EVENTS_BEHIND_KEY: &[u8] = b"events-behind";
/// `events-offset/<partition>`: the events topic offset the history has every event up to.
const EVENTS_OFFSET_PREFIX: &str = "events-offset/";

/// Memory knobs for every store of an instance.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreTuning {
    /// Shared LRU block cache for all stores, in MiB.
    #[serde(default = "default_cache_mib")]
    pub block_cache_mib: usize,
    /// Total memtable budget for all stores, in MiB (charged against the block cache).
    #[serde(default = "default_write_buffer_mib")]
    pub write_buffer_mib: usize,
}

fn default_cache_mib() -> usize {
    64
}
fn default_write_buffer_mib() -> usize {
    32
}

impl Default for StoreTuning {
    fn default() -> Self {
        Self { block_cache_mib: default_cache_mib(), write_buffer_mib: default_write_buffer_mib() }
    }
}

/// Shared RocksDB memory: one per instance, handed to every store it opens.
#[derive(Clone)]
pub struct StoreResources {
    cache: Cache,
    write_buffers: WriteBufferManager,
}

impl StoreResources {
    pub fn new(tuning: &StoreTuning) -> Self {
        let cache = Cache::new_lru_cache(tuning.block_cache_mib << 20);
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            tuning.write_buffer_mib << 20,
            false,
            cache.clone(),
        );
        Self { cache, write_buffers }
    }
}

/// One RocksDB instance holding partition `partition` of store `name`.
pub struct RocksStore {
    name: String,
    partition: i32,
    path: PathBuf,
    db: DB,
    indexer: Option<Indexer>,
    /// How much history `write_versions` keeps per key, in event time behind its newest
    /// version. None: all of it.
    history_ms: Option<i64>,
    /// The size of the last committed batch: the next one is allocated that large at
    /// once. A transaction's batch holds megabytes of snapshots; grown by doubling, it
    /// copied itself over and over and held up to twice its size (the copies were a fifth
    /// of the processing thread's page faults in `deploy/bench`).
    batch_bytes: std::sync::atomic::AtomicUsize,
    /// A bulk load turned compactions off (`begin_bulk_load`): they resume at
    /// `resume_compactions`, or at the next transaction's write at the latest.
    compactions_waiting: std::sync::atomic::AtomicBool,
}

impl RocksStore {
    pub fn open(
        dir: &Path,
        name: &str,
        partition: i32,
        resources: &StoreResources,
        indexer: Option<Indexer>,
    ) -> Result<Self, StoreError> {
        let path = dir.join(name).join(partition.to_string());
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&resources.cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_bloom_filter(10.0, false);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_manager(&resources.write_buffers);
        opts.set_max_background_jobs(2);
        // Levels 0 and 1 hold what was flushed a moment ago and is soon compacted again:
        // compressing them costs CPU on every flush (a quarter of a full restore's) for
        // files that live minutes. The deeper levels, where most of the data stays, are.
        use rocksdb::DBCompressionType::{Lz4, None as Plain};
        opts.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
        // Every flush covers all column families at once: a bulk load writes without the
        // WAL, and after a crash the store must hold the values of the last flush together
        // with the checkpoint (in `meta`) that describes them, never one without the other.
        opts.set_atomic_flush(true);
        let cfs = vec![
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, opts.clone()),
            // Every column family draws on the instance's shared block cache and write-buffer
            // budget: with default options each would get its own 64 MiB memtable.
            ColumnFamilyDescriptor::new(META_CF, opts.clone()),
            ColumnFamilyDescriptor::new(INDEX_CF, opts.clone()),
            ColumnFamilyDescriptor::new(HISTORY_CF, opts.clone()),
            ColumnFamilyDescriptor::new(EVENTS_CF, opts.clone()),
        ];
        std::fs::create_dir_all(&path).map_err(|e| StoreError::Open {
            store: name.into(),
            partition,
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let db = DB::open_cf_descriptors(&opts, &path, cfs).map_err(|e| StoreError::Open {
            store: name.into(),
            partition,
            path: path.clone(),
            reason: e.into_string(),
        })?;
        let store = Self { name: name.into(), partition, path, db, indexer, history_ms: None, batch_bytes: Default::default(), compactions_waiting: Default::default() };
        store.rebuild_index_if_changed()?;
        Ok(store)
    }

    /// The declared indexes differ from those the store was written with (or a bulk load
    /// did not finish): rebuild the index from the stored values.
    fn rebuild_index_if_changed(&self) -> Result<(), StoreError> {
        let meta = self.db.cf_handle(META_CF).expect("meta column family is created at open");
        let want = self.indexer.as_ref().map(Indexer::definition).unwrap_or_default();
        let have = self.db.get_cf(&meta, DEFINITION_KEY).map_err(self.io("read index definition"))?.unwrap_or_default();
        if want == have {
            return Ok(());
        }
        let rebuilt = self.rebuild_index()?;
        tracing::info!(store = %self.name, partition = self.partition, entries = rebuilt, "rebuilt secondary indexes");
        Ok(())
    }

    /// Drops the index and builds it again in one scan of the values, in batches; the
    /// definition is written last, so an interrupted rebuild starts over at the next open.
    /// Returns the index entries written.
    fn rebuild_index(&self) -> Result<u64, StoreError> {
        let idx = self.db.cf_handle(INDEX_CF).expect("index column family is created at open");
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(&idx, &[][..], &[0xff; 64][..]);
        let mut rebuilt = 0u64;
        if let Some(indexer) = &self.indexer {
            // One pass over every value: read ahead, and keep the block cache for lookups.
            let mut scan = ReadOptions::default();
            scan.fill_cache(false);
            scan.set_readahead_size(2 << 20);
            for item in self.db.iterator_opt(IteratorMode::Start, scan) {
                let (k, v) = item.map_err(self.io("scan for index rebuild"))?;
                for key in indexer.keys(&k, &v) {
                    batch.put_cf(&idx, key, []);
                    rebuilt += 1;
                }
                if batch.len() >= BULK_BATCH {
                    self.db.write_opt(std::mem::take(&mut batch), &no_wal()).map_err(self.io("rebuild index"))?;
                }
            }
        }
        self.write_index_definition(batch)?;
        Ok(rebuilt)
    }

    /// Marks the index as built for the declared indexes (with what `batch` still holds)
    /// and flushes every column family: the index entries were written without the WAL.
    fn write_index_definition(&self, mut batch: WriteBatch) -> Result<(), StoreError> {
        let meta = self.db.cf_handle(META_CF).expect("meta column family is created at open");
        batch.put_cf(&meta, DEFINITION_KEY, self.indexer.as_ref().map(Indexer::definition).unwrap_or_default());
        self.db.write_opt(batch, &no_wal()).map_err(self.io("write index definition"))?;
        self.flush_all()
    }

    fn flush_all(&self) -> Result<(), StoreError> {
        let cfs: Vec<_> = [rocksdb::DEFAULT_COLUMN_FAMILY_NAME, META_CF, INDEX_CF, HISTORY_CF, EVENTS_CF]
            .iter()
            .map(|n| self.db.cf_handle(n).expect("column families are created at open"))
            .collect();
        let refs: Vec<_> = cfs.iter().collect();
        self.db.flush_cfs_opt(&refs, &rocksdb::FlushOptions::default()).map_err(self.io("flush"))
    }

    /// Keep versions for `history_ms` of event time behind each key's newest one (and the
    /// one version that was current at that bound), so as-of lookups within that window
    /// are exact while the history stays bounded.
    pub fn keep_history(mut self, history_ms: Option<u64>) -> Self {
        self.history_ms = history_ms.map(|ms| ms.min(i64::MAX as u64) as i64);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether writes keep versions (see `keep_history`).
    pub fn history_ms_kept(&self) -> bool {
        self.history_ms.is_some()
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, op: &'static str) -> impl FnOnce(rocksdb::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            store: self.name.clone(),
            partition: self.partition,
            op,
            source,
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(key).map_err(self.io("get"))
    }

    /// The changelog offset of the last record this store holds, if any.
    pub fn checkpoint(&self) -> Result<Option<i64>, StoreError> {
        let cf = self.db.cf_handle(META_CF).expect("meta column family is created at open");
        match self.db.get_cf(&cf, CHECKPOINT_KEY).map_err(self.io("read checkpoint"))? {
            None => Ok(None),
            Some(v) => {
                let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                    StoreError::CorruptCheckpoint { store: self.name.clone(), partition: self.partition }
                })?;
                Ok(Some(i64::from_be_bytes(bytes)))
            }
        }
    }

    /// Writes `entries` (None = delete) and, when known, the changelog offset they reach, in
    /// ONE WriteBatch: data and checkpoint can never disagree after a crash.
    pub fn write<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        checkpoint: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut batch = self.transaction_batch()?;
        self.put_latest(&mut batch, entries)?;
        self.commit_batch(batch, checkpoint)
    }

    /// As `write`, plus event history entries `(aggregate id, version, event JSON)`, in the
    /// same WriteBatch: the history never disagrees with the snapshots.
    /// `events_offsets` are the events topic offsets, per partition, the history now has
    /// every event of this store up to: where a restore catches the history up from.
    pub fn write_with_events<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        events: &[(Vec<u8>, u64, Vec<u8>)],
        checkpoint: Option<i64>,
        events_offsets: &[(i32, i64)],
    ) -> Result<(), StoreError> {
        let mut batch = self.transaction_batch()?;
        self.put_latest(&mut batch, entries)?;
        let cf = self.db.cf_handle(EVENTS_CF).expect("events column family is created at open");
        for (id, version, json) in events {
            batch.put_cf(&cf, event_key(id, *version), json);
        }
        let meta = self.db.cf_handle(META_CF).expect("meta column family is created at open");
        for (partition, offset) in events_offsets {
            batch.put_cf(&meta, format!("{EVENTS_OFFSET_PREFIX}{partition}"), offset.to_be_bytes());
        }
        self.commit_batch(batch, checkpoint)
    }

    /// The events topic offset the history is complete up to, in `partition`.
    pub fn events_offset(&self, partition: i32) -> Result<Option<i64>, StoreError> {
        let meta = self.db.cf_handle(META_CF).expect("meta column family is created at open");
        let v = self.db.get_cf(&meta, format!("{EVENTS_OFFSET_PREFIX}{partition}")).map_err(self.io("read events offset"))?;
        Ok(v.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok()).map(i64::from_be_bytes))
    }

    /// Up to `limit` events of aggregate `id` from version `from` on, in version order.
    pub fn events_of(&self, id: &[u8], from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let cf = self.db.cf_handle(EVENTS_CF).expect("events column family is created at open");
        let prefix = history::prefix(id);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(&cf, IteratorMode::From(&event_key(id, from), Direction::Forward)) {
            let (k, v) = item.map_err(self.io("read events"))?;
            if k.len() != prefix.len() + 8 || !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[prefix.len()..]);
            out.push((u64::from_be_bytes(b), v.to_vec()));
        }
        Ok(out)
    }

    /// Whether the event history holds every event of this store's aggregates.
    pub fn events_complete(&self) -> Result<bool, StoreError> {
        let cf = self.db.cf_handle(META_CF).expect("meta column family is created at open");
        Ok(self.db.get_cf(&cf, EVENTS_COMPLETE_KEY).map_err(self.io("read events flag"))?.is_some())
    }

    /// Rebuilt history entries (from the events topic), and then, with `complete`, the flag
    /// (which also ends `events_behind`).
    pub fn put_events(&self, events: &[(Vec<u8>, u64, Vec<u8>)], complete: bool) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let cf = self.db.cf_handle(EVENTS_CF).expect("events column family is created at open");
        for (id, version, json) in events {
            batch.put_cf(&cf, event_key(id, *version), json);
        }
        if complete {
            let meta = self.db.cf_handle(META_CF).expect("meta column family is created at open");
            batch.put_cf(&meta, EVENTS_COMPLETE_KEY, []);
            batch.delete_cf(&meta, EVENTS_BEHIND_KEY);
        }
        self.commit_batch(batch, None)
    }

    /// Marks the event history as behind the snapshots until the next `put_events` that
    /// completes it. A restore applies snapshots from the changelog whose events the
    /// history does not have; the history is caught up from the events topic after it.
    /// Were that catch-up interrupted (a shutdown, a crash), the next start restores
    /// nothing and could not otherwise tell the history is short. Written with the WAL
    /// before the restore's first write, so no crash leaves the snapshots ahead unmarked.
    pub fn mark_events_behind(&self) -> Result<(), StoreError> {
        let meta = self.db.cf_handle(META_CF).expect("meta column family is created at open");
        self.db.put_cf(&meta, EVENTS_BEHIND_KEY, []).map_err(self.io("mark events behind"))
    }

    /// Whether `mark_events_behind` was not followed by a completed history yet.
    pub fn events_behind(&self) -> Result<bool, StoreError> {
        let meta = self.db.cf_handle(META_CF).expect("meta column family is created at open");
        Ok(self.db.get_cf(&meta, EVENTS_BEHIND_KEY).map_err(self.io("read events behind"))?.is_some())
    }

    /// Whether the store holds any value at all.
    pub fn is_empty(&self) -> bool {
        self.db.iterator(IteratorMode::Start).next().is_none()
    }

    /// As `write`, and every entry is also kept as a version at its timestamp, for
    /// `get_as_of`. Latest values, versions and checkpoint go in one WriteBatch.
    pub fn write_versions<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>, i64)>,
        checkpoint: Option<i64>,
    ) -> Result<(), StoreError> {
        let entries: Vec<(&[u8], Option<&[u8]>, i64)> = entries.into_iter().collect();
        let mut batch = self.transaction_batch()?;
        self.put_latest(&mut batch, entries.iter().map(|(k, v, _)| (*k, *v)))?;
        let cf = self.db.cf_handle(HISTORY_CF).expect("history column family is created at open");
        if let Some(keep) = self.history_ms {
            let mut newest: BTreeMap<&[u8], i64> = BTreeMap::new();
            for (k, _, ts) in &entries {
                let n = newest.entry(*k).or_insert(*ts);
                *n = (*n).max(*ts);
            }
            for (k, ts) in newest {
                self.prune_history(&mut batch, k, ts.saturating_sub(keep))?;
            }
        }
        for (k, v, ts) in &entries {
            batch.put_cf(&cf, history::version_key(k, *ts), history::encode_value(*v));
        }
        self.commit_batch(batch, checkpoint)
    }

    /// Deletes the versions of `key` older than `bound`, except the newest of them: it is
    /// the value at `bound`, which lookups at or after the bound still need.
    fn prune_history(&self, batch: &mut WriteBatch, key: &[u8], bound: i64) -> Result<(), StoreError> {
        let cf = self.db.cf_handle(HISTORY_CF).expect("history column family is created at open");
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(history::version_key(key, bound));
        let mut older = Vec::new();
        for item in self.db.iterator_cf_opt(&cf, opts, IteratorMode::From(&history::prefix(key), Direction::Forward)) {
            older.push(item.map_err(self.io("prune history"))?.0);
        }
        older.pop();
        for k in older {
            batch.delete_cf(&cf, k);
        }
        Ok(())
    }

    /// The value `key` had at time `ts`: its last version at or before `ts`. None when it
    /// did not exist yet, or was deleted then.
    pub fn get_as_of(&self, key: &[u8], ts: i64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.version_as_of(key, ts)?.and_then(|(_, v)| v))
    }

    /// The last version of `key` at or before `ts`: its time and value (None = deleted).
    pub fn version_as_of(&self, key: &[u8], ts: i64) -> Result<Option<(i64, Option<Vec<u8>>)>, StoreError> {
        let cf = self.db.cf_handle(HISTORY_CF).expect("history column family is created at open");
        let mut it = self.db.raw_iterator_cf(&cf);
        it.seek_for_prev(history::version_key(key, ts));
        let prefix = history::prefix(key);
        match (it.key(), it.value()) {
            (Some(k), Some(v)) if k.len() == prefix.len() + 8 && k.starts_with(&prefix) => {
                Ok(Some((history::version_time(k), history::decode_value(v))))
            }
            _ => {
                it.status().map_err(self.io("as-of lookup"))?;
                Ok(None)
            }
        }
    }

    /// Since when `key` has existed without a break, as seen at time `ts`: the time of the
    /// first version of its current run. None if it does not exist at `ts`.
    pub fn exists_since(&self, key: &[u8], ts: i64) -> Result<Option<i64>, StoreError> {
        let cf = self.db.cf_handle(HISTORY_CF).expect("history column family is created at open");
        let mut it = self.db.raw_iterator_cf(&cf);
        it.seek_for_prev(history::version_key(key, ts));
        let prefix = history::prefix(key);
        let mut since = None;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k.len() != prefix.len() + 8 || !k.starts_with(&prefix) || history::decode_value(v).is_none() {
                break;
            }
            since = Some(history::version_time(k));
            it.prev();
        }
        it.status().map_err(self.io("as-of lookup"))?;
        Ok(since)
    }

    /// Adds the latest values (and their index entries) to `batch`.
    fn put_latest<'a>(
        &self,
        batch: &mut WriteBatch,
        entries: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Result<(), StoreError> {
        match &self.indexer {
            None => {
                for (k, v) in entries {
                    match v {
                        Some(v) => batch.put(k, v),
                        None => batch.delete(k),
                    }
                }
            }
            Some(indexer) => {
                // Last write per key wins (a restore batch may hold one key several times);
                // index entries of the value being replaced go in the same batch.
                let latest: BTreeMap<&[u8], Option<&[u8]>> = entries.into_iter().collect();
                let idx = self.db.cf_handle(INDEX_CF).expect("index column family is created at open");
                for (k, v) in latest {
                    if let Some(old) = self.db.get(k).map_err(self.io("read for index"))? {
                        for key in indexer.keys(k, &old) {
                            batch.delete_cf(&idx, key);
                        }
                    }
                    match v {
                        Some(v) => {
                            for key in indexer.keys(k, v) {
                                batch.put_cf(&idx, key, []);
                            }
                            batch.put(k, v);
                        }
                        None => batch.delete(k),
                    }
                }
            }
        }
        Ok(())
    }

    /// An empty batch for a transaction's write, with room for as much as the last one
    /// wrote. Compactions a bulk load left off resume first: with them off, level 0 would
    /// grow with every flush, every read would look through all of it, and once they
    /// resumed RocksDB would stop writes until they caught up (36 files).
    fn transaction_batch(&self) -> Result<WriteBatch, StoreError> {
        self.resume_compactions()?;
        Ok(match self.batch_bytes.load(std::sync::atomic::Ordering::Relaxed) {
            0 => WriteBatch::default(),
            last => WriteBatch::with_capacity_bytes(last + last / 8),
        })
    }

    fn commit_batch(&self, mut batch: WriteBatch, checkpoint: Option<i64>) -> Result<(), StoreError> {
        if let Some(offset) = checkpoint {
            let cf = self.db.cf_handle(META_CF).expect("meta column family is created at open");
            batch.put_cf(&cf, CHECKPOINT_KEY, offset.to_be_bytes());
        }
        self.batch_bytes.store(batch.size_in_bytes(), std::sync::atomic::Ordering::Relaxed);
        // No fsync per batch: the changelog is the durable copy, and restore replays from the
        // checkpoint. Losing the last batches to a power cut only lengthens the tail.
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        self.db.write_opt(batch, &opts).map_err(self.io("write batch"))
    }

    /// Up to `limit` (key, value) pairs whose `index` field equals `field`, in key order,
    /// after the primary key `after`.
    pub fn index_scan(
        &self,
        index_name: &str,
        field: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let idx = self.db.cf_handle(INDEX_CF).expect("index column family is created at open");
        let prefix = index::prefix(index_name, field);
        let start = match after {
            Some(a) => index::entry(index_name, field, a),
            None => prefix.clone(),
        };
        let mut opts = ReadOptions::default();
        // Without a prefix extractor the iterator would run past the prefix: bound it.
        opts.set_iterate_upper_bound(index::upper_bound(&prefix));
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(&idx, opts, IteratorMode::From(&start, Direction::Forward)) {
            let (k, _) = item.map_err(self.io("index scan"))?;
            let primary = &k[prefix.len()..];
            if after.is_some_and(|a| a == primary) {
                continue;
            }
            if let Some(v) = self.get(primary)? {
                out.push((primary.to_vec(), v));
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn has_index(&self, name: &str) -> bool {
        self.indexer.as_ref().is_some_and(|i| i.names.iter().any(|n| n == name))
    }

    /// Up to `limit` entries with keys strictly after `after`, in key order.
    pub fn scan(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let mode = match after {
            Some(k) => IteratorMode::From(k, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self.db.iterator_opt(mode, ReadOptions::default()) {
            let (k, v) = item.map_err(self.io("scan"))?;
            if after.is_some_and(|a| k.as_ref() == a) {
                continue;
            }
            out.push((k.to_vec(), v.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// RocksDB's estimate of the number of keys (cheap; for metrics).
    pub fn estimated_keys(&self) -> u64 {
        self.db.property_int_value("rocksdb.estimate-num-keys").ok().flatten().unwrap_or(0)
    }

    /// Flush memtables so a clean shutdown leaves nothing to the WAL.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.flush_all()
    }
}

/// Writes per batch of a bulk load or an index rebuild.
const BULK_BATCH: usize = 10_000;

fn no_wal() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.disable_wal(true);
    opts
}

fn event_key(id: &[u8], version: u64) -> Vec<u8> {
    let mut k = history::prefix(id);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_and_checkpoint_survive_reopen_together() {
        let dir = tempfile::tempdir().unwrap();
        let res = StoreResources::new(&StoreTuning::default());
        {
            let s = RocksStore::open(dir.path(), "snap", 3, &res, None).unwrap();
            assert_eq!(s.checkpoint().unwrap(), None);
            s.write([(&b"a"[..], Some(&b"1"[..])), (&b"b"[..], Some(&b"2"[..]))], Some(41)).unwrap();
            s.write([(&b"a"[..], None)], Some(42)).unwrap();
        }
        let s = RocksStore::open(dir.path(), "snap", 3, &res, None).unwrap();
        assert_eq!(s.checkpoint().unwrap(), Some(42));
        assert_eq!(s.get(b"a").unwrap(), None);
        assert_eq!(s.get(b"b").unwrap(), Some(b"2".to_vec()));
    }

    #[test]
    fn as_of_lookups_see_the_value_of_their_time() {
        let dir = tempfile::tempdir().unwrap();
        let res = StoreResources::new(&StoreTuning::default());
        let s = RocksStore::open(dir.path(), "g", 0, &res, None).unwrap();
        s.write_versions([(&b"p"[..], Some(&b"v1"[..]), 100), (&b"p\0"[..], Some(&b"other"[..]), 50)], Some(0)).unwrap();
        s.write_versions([(&b"p"[..], Some(&b"v2"[..]), 200)], Some(1)).unwrap();
        s.write_versions([(&b"p"[..], None, 300)], Some(2)).unwrap();
        assert_eq!(s.get_as_of(b"p", 99).unwrap(), None, "not there yet");
        assert_eq!(s.get_as_of(b"p", 100).unwrap(), Some(b"v1".to_vec()));
        assert_eq!(s.get_as_of(b"p", 250).unwrap(), Some(b"v2".to_vec()));
        assert_eq!(s.get_as_of(b"p", 300).unwrap(), None, "deleted");
        assert_eq!(s.get(b"p").unwrap(), None, "the latest value is the tombstone");
        assert_eq!(s.get_as_of(b"q", 1_000).unwrap(), None);
        assert_eq!(s.get_as_of(b"p\0", 60).unwrap(), Some(b"other".to_vec()));
        assert_eq!(s.exists_since(b"p", 250).unwrap(), Some(100), "two versions in a row: since the first");
        assert_eq!(s.exists_since(b"p", 300).unwrap(), None);
        s.write_versions([(&b"p"[..], Some(&b"v3"[..]), 400)], Some(3)).unwrap();
        assert_eq!(s.exists_since(b"p", 500).unwrap(), Some(400), "a new run after the deletion");
    }

    #[test]
    fn history_is_pruned_behind_the_newest_version_but_the_value_at_the_bound_stays() {
        let dir = tempfile::tempdir().unwrap();
        let res = StoreResources::new(&StoreTuning::default());
        let s = RocksStore::open(dir.path(), "g", 0, &res, None).unwrap().keep_history(Some(1_000));
        for (ts, v) in [(100, "a"), (200, "b"), (300, "c"), (1_250, "d")] {
            s.write_versions([(&b"k"[..], Some(v.as_bytes()), ts)], None).unwrap();
        }
        // Bound = 250: 100 goes, 200 stays (it is the value at 250), 300 and 1250 stay.
        assert_eq!(s.get_as_of(b"k", 150).unwrap(), None, "before the window: pruned");
        assert_eq!(s.get_as_of(b"k", 250).unwrap(), Some(b"b".to_vec()), "the value at the bound is kept");
        assert_eq!(s.get_as_of(b"k", 300).unwrap(), Some(b"c".to_vec()));
        assert_eq!(s.get_as_of(b"k", 2_000).unwrap(), Some(b"d".to_vec()));
    }

    #[test]
    fn event_history_is_per_aggregate_in_version_order() {
        let dir = tempfile::tempdir().unwrap();
        let res = StoreResources::new(&StoreTuning::default());
        let s = RocksStore::open(dir.path(), "a", 0, &res, None).unwrap();
        let ev = |id: &str, v: u64| (id.as_bytes().to_vec(), v, format!("{id}@{v}").into_bytes());
        s.write_with_events([(&b"x"[..], Some(&b"snap"[..]))], &[ev("x", 1), ev("x", 2), ev("x\0", 1), ev("xy", 1)], Some(0), &[(0, 41)]).unwrap();
        s.write_with_events([], &[ev("x", 3)], Some(1), &[(0, 42), (1, 7)]).unwrap();
        assert_eq!((s.events_offset(0).unwrap(), s.events_offset(1).unwrap(), s.events_offset(2).unwrap()), (Some(42), Some(7), None));
        let got: Vec<u64> = s.events_of(b"x", 2, 10).unwrap().into_iter().map(|(v, _)| v).collect();
        assert_eq!(got, [2, 3], "from version 2, this aggregate only");
        assert_eq!(s.events_of(b"x", 1, 1).unwrap(), vec![(1, b"x@1".to_vec())]);
        assert!(!s.events_complete().unwrap());
        s.put_events(&[], true).unwrap();
        assert!(s.events_complete().unwrap());
    }

    /// A history marked behind stays so across a reopen (a catch-up cut off by a shutdown
    /// or a crash) and through partial catch-ups, until one completes it.
    #[test]
    fn a_history_marked_behind_stays_so_until_it_is_completed() {
        let dir = tempfile::tempdir().unwrap();
        let res = StoreResources::new(&StoreTuning::default());
        {
            let s = RocksStore::open(dir.path(), "a", 0, &res, None).unwrap();
            s.put_events(&[], true).unwrap();
            assert!(!s.events_behind().unwrap());
            s.mark_events_behind().unwrap();
            s.put_events(&[(b"x".to_vec(), 1, b"{}".to_vec())], false).unwrap();
        }
        let s = RocksStore::open(dir.path(), "a", 0, &res, None).unwrap();
        assert!(s.events_behind().unwrap(), "still behind after a reopen and a partial catch-up");
        assert!(s.events_complete().unwrap());
        s.put_events(&[], true).unwrap();
        assert!(!s.events_behind().unwrap());
    }

    #[test]
    fn scan_pages_after_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let res = StoreResources::new(&StoreTuning::default());
        let s = RocksStore::open(dir.path(), "snap", 0, &res, None).unwrap();
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        s.write(keys.iter().map(|k| (k.as_bytes(), Some(&b"v"[..]))), None).unwrap();
        let first = s.scan(None, 4).unwrap();
        assert_eq!(first.len(), 4);
        let next = s.scan(Some(&first[3].0), 100).unwrap();
        assert_eq!(next.len(), 6);
        assert_eq!(next[0].0, b"k4");
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;
    use std::sync::Arc;

    pub(super) fn by_first_byte() -> Indexer {
        Indexer { names: vec!["first".into()], extract: Arc::new(|v| vec![("first".into(), String::from_utf8_lossy(&v[..1]).into_owned())]) }
    }

    #[test]
    fn index_is_rebuilt_when_its_definition_changes_and_tracks_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let res = StoreResources::new(&StoreTuning::default());
        {
            let s = RocksStore::open(dir.path(), "s", 0, &res, None).unwrap();
            s.write([(&b"k1"[..], Some(&b"apple"[..])), (&b"k2"[..], Some(&b"avocado"[..])), (&b"k3"[..], Some(&b"banana"[..]))], Some(1)).unwrap();
        }
        let s = RocksStore::open(dir.path(), "s", 0, &res, Some(by_first_byte())).unwrap();
        let keys = |s: &RocksStore, f: &str| s.index_scan("first", f, None, 10).unwrap().into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(&s, "a"), vec![b"k1".to_vec(), b"k2".to_vec()], "rebuilt from the stored values");
        // An overwrite moves the key; a delete removes it; a batch with a key twice keeps the last.
        s.write([(&b"k1"[..], Some(&b"blueberry"[..])), (&b"k2"[..], None), (&b"k3"[..], Some(&b"x"[..])), (&b"k3"[..], Some(&b"cherry"[..]))], Some(2)).unwrap();
        assert!(keys(&s, "a").is_empty());
        assert_eq!(keys(&s, "b"), vec![b"k1".to_vec()]);
        assert_eq!(keys(&s, "c"), vec![b"k3".to_vec()]);
        assert!(keys(&s, "x").is_empty(), "the earlier value of a key in the same batch is not indexed");
        let page = s.index_scan("first", "b", Some(b"k1"), 10).unwrap();
        assert!(page.is_empty(), "pagination continues after the given key");
    }

    pub(super) fn keys(s: &RocksStore, f: &str) -> Vec<Vec<u8>> {
        s.index_scan("first", f, None, 10).unwrap().into_iter().map(|(k, _)| k).collect()
    }
}
