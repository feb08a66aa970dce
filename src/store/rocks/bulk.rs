//! A bulk load into a store: a full restore writing values without the WAL, without
//! reading what they replace, with compactions deferred until the caller resumes them, and
//! with their index entries written as they load when the load can tell which values
//! replace others.
//! The store's own writes are in `rocks.rs`.

use super::loaded_keys::LoadedKeys;
use super::{no_wal, RocksStore, CHECKPOINT_KEY, META_CF};
use super::super::index::{DEFINITION_KEY, INDEX_CF};
use super::super::StoreError;
use rocksdb::WriteBatch;
use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

/// The largest partition (in records, from its watermarks) whose load writes index
/// entries as it goes. Doing so needs to know which keys were loaded before (a key loaded
/// twice must lose its earlier value's entries): 1.5 bytes a key (`LoadedKeys`), 12 MiB
/// at this size, per partition restoring. A larger partition has its index built in one
/// scan at the end instead, which decodes every value a second time.
pub const INDEX_AS_LOADED_MAX: u64 = 8_000_000;

/// A bulk load in progress (`RocksStore::begin_bulk_load`): the batch being filled and
/// how the index is kept.
pub struct BulkLoad {
    batch: WriteBatch,
    index: LoadIndex,
}

enum LoadIndex {
    /// The store has no indexes.
    None,
    /// Entries are written with the values. `seen` knows (approximately) every key loaded
    /// so far, `in_batch` the hashes of those in the batch not yet written. A key that may
    /// have been loaded before may have entries to remove: they are those of the value the
    /// store holds for it (after a false "maybe", there is none: nothing is removed), once
    /// the batch is written if the earlier value is in it.
    AsLoaded { seen: LoadedKeys, in_batch: HashSet<u64, Prehashed>, hasher: RandomState },
    /// Built in one scan of the values when the load ends.
    AtEnd,
}

impl RocksStore {
    /// Starts a bulk load into an empty store (a full restore) of up to `records` records:
    /// `bulk_put` and `commit_bulk` write values without the WAL and without reading the
    /// values they replace, and `finish_bulk_load` ends it. Per value that saves a read
    /// and the WAL write; the changelog is the durable copy meanwhile. Until it finishes,
    /// the index is marked unbuilt, so a crash in between rebuilds it at the next open.
    ///
    /// Index entries are written with the values when `records` is at most
    /// `INDEX_AS_LOADED_MAX`; a scan of every value after the load, decoding each again,
    /// was more than half of a full restore's processing time (deploy/bench restore).
    ///
    /// Compactions, of the values and of the index, wait until the load has ended and
    /// `resume_compactions` is called: compacting level 0 while the load still writes it
    /// redoes work the next flush undoes, and on a machine with few cores it takes them
    /// from the load (see `commit_bulk` for the bound). The opener resumes them once every
    /// store of the assignment is loaded, as the other partitions' loads would share the
    /// cores with them too.
    pub fn begin_bulk_load(&self, records: u64) -> Result<BulkLoad, StoreError> {
        let meta = self.db.cf_handle(META_CF).expect("meta column family is created at open");
        let idx = self.db.cf_handle(INDEX_CF).expect("index column family is created at open");
        // An empty store has no index entries to keep; none left from before can outlive
        // the load.
        let mut begin = WriteBatch::default();
        begin.delete_cf(&meta, DEFINITION_KEY);
        begin.delete_range_cf(&idx, &[][..], &[0xff; 64][..]);
        self.db.write(begin).map_err(self.io("begin bulk load"))?;
        self.auto_compactions(false)?;
        // Set here, not when the load ends: a load that fails half-way leaves them off too.
        self.compactions_waiting.store(true, std::sync::atomic::Ordering::Relaxed);
        let index = match &self.indexer {
            None => LoadIndex::None,
            Some(_) if records <= INDEX_AS_LOADED_MAX => LoadIndex::AsLoaded {
                seen: LoadedKeys::with_capacity(records),
                in_batch: HashSet::default(),
                hasher: RandomState::new(),
            },
            Some(_) => LoadIndex::AtEnd,
        };
        Ok(BulkLoad { batch: WriteBatch::default(), index })
    }

    /// Turns automatic compactions of the values and of the index on or off.
    fn auto_compactions(&self, on: bool) -> Result<(), StoreError> {
        let value = if on { "false" } else { "true" };
        for cf in [rocksdb::DEFAULT_COLUMN_FAMILY_NAME, INDEX_CF] {
            let cf = self.db.cf_handle(cf).expect("column families are created at open");
            self.db.set_options_cf(&cf, &[("disable_auto_compactions", value)]).map_err(self.io("set compactions"))?;
        }
        Ok(())
    }

    /// Level-0 files of the values or of the index, whichever has more.
    fn level0_files(&self) -> u64 {
        [rocksdb::DEFAULT_COLUMN_FAMILY_NAME, INDEX_CF]
            .iter()
            .filter_map(|cf| self.db.property_int_value_cf(&self.db.cf_handle(cf)?, "rocksdb.num-files-at-level0").ok().flatten())
            .max()
            .unwrap_or(0)
    }

    /// Lets the compactions a finished bulk load left off run again; nothing to do for any
    /// other store. The store's next transaction write does it too, at the latest.
    pub fn resume_compactions(&self) -> Result<(), StoreError> {
        if self.compactions_waiting.load(std::sync::atomic::Ordering::Relaxed) {
            // Cleared once they are on: after a failure, the next write tries again.
            self.auto_compactions(true)?;
            self.compactions_waiting.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Adds a record of the load to its batch; `value` None is a delete (a tombstone in
    /// the changelog). Later records of a key replace earlier ones, index entries
    /// included.
    pub fn bulk_put(&self, load: &mut BulkLoad, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        if let (LoadIndex::AsLoaded { seen, in_batch, hasher }, Some(indexer)) = (&mut load.index, &self.indexer) {
            let idx = self.db.cf_handle(INDEX_CF).expect("index column family is created at open");
            let hash = hasher.hash_one(key);
            if seen.insert(hash) {
                if in_batch.contains(&hash) {
                    // Written without a checkpoint: values ahead of the checkpoint are
                    // overwritten again by a restore that goes on from it.
                    self.db.write_opt(std::mem::take(&mut load.batch), &no_wal()).map_err(self.io("bulk write"))?;
                    in_batch.clear();
                }
                if let Some(old) = self.db.get(key).map_err(self.io("read for index"))? {
                    for e in indexer.keys(key, &old) {
                        load.batch.delete_cf(&idx, e);
                    }
                }
            }
            in_batch.insert(hash);
            if let Some(v) = value {
                for e in indexer.keys(key, v) {
                    load.batch.put_cf(&idx, e, []);
                }
            }
        }
        match value {
            Some(v) => load.batch.put(key, v),
            None => load.batch.delete(key),
        }
        Ok(())
    }

    /// Writes the load's batch with the checkpoint it reaches, without the WAL. Safe
    /// because the column families flush atomically: after a crash the store holds the
    /// values and the checkpoint of the last flush, which agree, and a restore goes on
    /// from that checkpoint.
    pub fn commit_bulk(&self, load: &mut BulkLoad, checkpoint: Option<i64>) -> Result<(), StoreError> {
        let mut batch = std::mem::take(&mut load.batch);
        if let LoadIndex::AsLoaded { in_batch, .. } = &mut load.index {
            in_batch.clear();
        }
        if let Some(offset) = checkpoint {
            let cf = self.db.cf_handle(META_CF).expect("meta column family is created at open");
            batch.put_cf(&cf, CHECKPOINT_KEY, offset.to_be_bytes());
        }
        let bytes = batch.size_in_bytes();
        self.db.write_opt(batch, &no_wal()).map_err(self.io("bulk write"))?;
        // The next batch starts as large as this one, on the memory this one just gave
        // back, rather than growing by doubling: each doubling copied the batch into
        // memory faulted in afresh (page faults under `realloc` in `perf` of a restore).
        load.batch = WriteBatch::with_capacity_bytes(bytes.min(BULK_BATCH_RESERVE_MAX));
        // A store far larger than the write buffers piles files up in level 0 (of the
        // values or of the index). RocksDB does not slow writes for level 0 while
        // compactions are off, but turned on with 20 files it would (36: stop them) until
        // they caught up, and every read looks through all of them: well before that,
        // compactions resume for the rest of the load.
        if self.level0_files() >= BULK_LEVEL0_FILES {
            self.auto_compactions(true)?;
        }
        Ok(())
    }

    /// Ends a bulk load whose batches are all written: builds the index unless it was
    /// written as the load went, and flushes every column family, so what the load wrote
    /// without the WAL is on disk before any write with the WAL follows it (WAL replay
    /// after a crash must never put a later checkpoint over lost values). Compactions stay
    /// off until `resume_compactions` or the next transaction's write.
    pub fn finish_bulk_load(&self, load: BulkLoad) -> Result<(), StoreError> {
        match load.index {
            LoadIndex::AtEnd => {
                // The whole index is written now, in one go: it compacts as it grows
                // (`commit_bulk`'s bound never sees these writes).
                self.resume_compactions()?;
                let entries = self.rebuild_index()?;
                tracing::debug!(store = %self.name, partition = self.partition, entries, "built secondary indexes after a bulk load");
            }
            LoadIndex::None | LoadIndex::AsLoaded { .. } => self.write_index_definition(rocksdb::WriteBatch::default())?,
        }
        Ok(())
    }
}

impl BulkLoad {
    /// Records in the batch not yet written.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

/// Hashes of keys are already hashes: a set of them uses each as its own hash.
type Prehashed = BuildHasherDefault<Identity>;

#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64s are hashed here; anything else is folded in, in case.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The most a bulk batch reserves ahead (a batch of a few huge records must not make
/// every later one reserve as much); past it, a batch grows as it needs.
const BULK_BATCH_RESERVE_MAX: usize = 16 << 20;

/// Level-0 files at which a bulk load lets compactions run again: below RocksDB's
/// `level0_slowdown_writes_trigger` (20), so a load is never throttled by its own files.
const BULK_LEVEL0_FILES: u64 = 12;

#[cfg(test)]
mod tests {
    use super::super::index_tests::{by_first_byte, keys};
    use super::*;
    use crate::store::{StoreResources, StoreTuning};

    fn load(s: &RocksStore, l: &mut BulkLoad, entries: &[(&[u8], Option<&[u8]>)], checkpoint: i64) {
        for (k, v) in entries {
            s.bulk_put(l, k, *v).unwrap();
        }
        s.commit_bulk(l, Some(checkpoint)).unwrap();
    }

    /// Flushes one small bulk batch per round: one level-0 file each, in the values and
    /// (when the store has an index) in the index.
    fn bulk_rounds(s: &RocksStore, l: &mut BulkLoad, rounds: u64) {
        for round in 0..rounds {
            let key = format!("k{round}");
            load(s, l, &[(key.as_bytes(), Some(&b"value"[..]))], round as i64);
            s.flush().unwrap();
        }
    }

    /// Level-0 files of the values and of the index.
    fn level0(s: &RocksStore) -> (u64, u64) {
        let files = |cf: &str| {
            let cf = s.db.cf_handle(cf).unwrap();
            s.db.property_int_value_cf(&cf, "rocksdb.num-files-at-level0").unwrap().unwrap()
        };
        (files(rocksdb::DEFAULT_COLUMN_FAMILY_NAME), files(INDEX_CF))
    }

    /// Waits up to 10 s for compactions to bring level 0 of the values and of the index
    /// under `files`.
    fn level0_drops_under(s: &RocksStore, files: u64) -> bool {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while level0(s).0 >= files || level0(s).1 >= files {
            if std::time::Instant::now() > until {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        true
    }

    /// A store with an index, loaded in 8 flushed rounds and finished.
    fn loaded_in_rounds(dir: &std::path::Path) -> RocksStore {
        let res = StoreResources::new(&StoreTuning::default());
        let s = RocksStore::open(dir, "s", 0, &res, Some(by_first_byte())).unwrap();
        let mut l = s.begin_bulk_load(8).unwrap();
        bulk_rounds(&s, &mut l, 8);
        std::thread::sleep(std::time::Duration::from_millis(300));
        // The index has one more: its rebuild at the open (a new definition) flushed.
        let (values, index) = level0(&s);
        assert!(values == 8 && index >= 8, "no compaction of the values or the index during the load: {values} and {index} files");
        s.finish_bulk_load(l).unwrap();
        s
    }

    /// A bulk load defers compactions of the values and of the index (level 0 keeps every
    /// flush's file, where RocksDB would compact at 4) past its end, until they are
    /// resumed (the opener does, once the whole assignment is loaded).
    #[test]
    fn a_bulk_load_compacts_once_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let s = loaded_in_rounds(dir.path());
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (values, index) = level0(&s);
        assert!(values == 8 && index >= 8, "no compaction until resumed: {values} and {index} files");
        s.resume_compactions().unwrap();
        assert!(level0_drops_under(&s, 4), "compacted once resumed: {:?} files in level 0", level0(&s));
        assert_eq!(s.get(b"k7").unwrap().as_deref(), Some(&b"value"[..]));
        assert_eq!(keys(&s, "v").len(), 8);
    }

    /// A store never takes a transaction with compactions still off: its write resumes
    /// them (level 0 would otherwise grow with every flush).
    #[test]
    fn a_transaction_write_resumes_a_bulk_loads_compactions() {
        let dir = tempfile::tempdir().unwrap();
        let s = loaded_in_rounds(dir.path());
        s.write([(&b"k8"[..], Some(&b"value"[..]))], Some(8)).unwrap();
        assert!(level0_drops_under(&s, 4), "compacted after the write: {:?} files in level 0", level0(&s));
        assert_eq!(keys(&s, "v").len(), 9);
    }

    /// A load larger than the write buffers many times over never reaches RocksDB's write
    /// slowdown (20 level-0 files) or stop (36): compactions resume at `BULK_LEVEL0_FILES`.
    #[test]
    fn a_long_bulk_load_lets_compactions_resume_before_writes_would_stall() {
        let dir = tempfile::tempdir().unwrap();
        let res = StoreResources::new(&StoreTuning::default());
        let s = RocksStore::open(dir.path(), "s", 0, &res, None).unwrap();
        let mut l = s.begin_bulk_load(24).unwrap();
        bulk_rounds(&s, &mut l, 24);
        // RocksDB's level0_slowdown_writes_trigger.
        assert!(level0_drops_under(&s, 20), "{:?} files in level 0 mid-load", level0(&s));
        s.finish_bulk_load(l).unwrap();
        assert_eq!(s.get(b"k23").unwrap().as_deref(), Some(&b"value"[..]));
    }

    /// Both ways of keeping the index (with the values, for a partition of up to
    /// `INDEX_AS_LOADED_MAX` records; in one scan at the end, above that) describe only
    /// the final values: a key loaded again, in the same batch or a later one, with a new
    /// value or a tombstone, leaves no entry of its earlier value.
    #[test]
    fn a_bulk_load_builds_the_index_of_the_final_values() {
        for records in [8, INDEX_AS_LOADED_MAX + 1] {
            let dir = tempfile::tempdir().unwrap();
            let res = StoreResources::new(&StoreTuning::default());
            let s = RocksStore::open(dir.path(), "s", 0, &res, Some(by_first_byte())).unwrap();
            let mut l = s.begin_bulk_load(records).unwrap();
            load(&s, &mut l, &[(b"k1", Some(b"apple")), (b"k2", Some(b"avocado")), (b"k4", Some(b"cherry")), (b"k4", Some(b"coconut"))], 1);
            load(&s, &mut l, &[(b"k1", Some(b"banana")), (b"k2", None), (b"k3", Some(b"apricot")), (b"k3", None), (b"k3", Some(b"blueberry"))], 4);
            load(&s, &mut l, &[(b"k5", Some(b"avocado")), (b"k5", Some(b"apple"))], 5);
            s.finish_bulk_load(l).unwrap();
            assert_eq!(keys(&s, "a"), vec![b"k5".to_vec()], "k1 and k3 moved on, k2 is gone ({records} records)");
            assert_eq!(keys(&s, "b"), vec![b"k1".to_vec(), b"k3".to_vec()]);
            assert_eq!(keys(&s, "c"), vec![b"k4".to_vec()]);
            assert_eq!(s.checkpoint().unwrap(), Some(5));
            assert_eq!(s.get(b"k2").unwrap(), None);
            // After the load, writes keep the index up to date again.
            s.write([(&b"k3"[..], Some(&b"cranberry"[..]))], Some(6)).unwrap();
            assert_eq!(keys(&s, "b"), vec![b"k1".to_vec()]);
            assert_eq!(keys(&s, "c"), vec![b"k3".to_vec(), b"k4".to_vec()]);
        }
    }

    /// A bulk load that never finished (the process died) leaves the index marked
    /// unbuilt: the next open builds it from what the store holds.
    #[test]
    fn an_unfinished_bulk_load_has_its_index_built_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let res = StoreResources::new(&StoreTuning::default());
        {
            let s = RocksStore::open(dir.path(), "s", 0, &res, Some(by_first_byte())).unwrap();
            let mut l = s.begin_bulk_load(2).unwrap();
            load(&s, &mut l, &[(b"k1", Some(b"apple")), (b"k2", Some(b"banana"))], 1);
            s.db.put_cf(&s.db.cf_handle(INDEX_CF).unwrap(), crate::store::index::entry("first", "z", b"k9"), []).unwrap();
        }
        // Not finished: at the next open the index is built again from the values (the
        // entry for k9, which has no value, goes).
        let s = RocksStore::open(dir.path(), "s", 0, &res, Some(by_first_byte())).unwrap();
        assert_eq!(keys(&s, "a"), vec![b"k1".to_vec()]);
        assert_eq!(keys(&s, "b"), vec![b"k2".to_vec()]);
        assert!(keys(&s, "z").is_empty());
        assert_eq!(s.checkpoint().unwrap(), Some(1));
    }
}
