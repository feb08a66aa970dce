//! A bulk load into a store: a full restore writing values without the WAL and without
//! their index entries, with compactions deferred until it ends. The store's own writes
//! are in `rocks.rs`.

use super::{no_wal, RocksStore, CHECKPOINT_KEY, META_CF};
use super::super::index::DEFINITION_KEY;
use super::super::StoreError;
use rocksdb::WriteBatch;

impl RocksStore {
    /// Starts a bulk load into an empty store (a full restore): `commit_bulk` writes values
    /// without the WAL and without their index entries, and `finish_bulk_load` builds the
    /// index in one scan. Per value that saves a read of the value it replaces and the
    /// WAL write; the changelog is the durable copy meanwhile. Until it finishes, the
    /// index is marked unbuilt, so a crash in between rebuilds it at the next open.
    ///
    /// Compactions wait until the load ends: compacting level 0 while the load still
    /// writes it redoes work the next flush undoes, and on a machine with few cores it
    /// takes them from the load (see `commit_bulk` for the bound).
    pub fn begin_bulk_load(&self) -> Result<(), StoreError> {
        let meta = self.db.cf_handle(META_CF).expect("meta column family is created at open");
        self.db.delete_cf(&meta, DEFINITION_KEY).map_err(self.io("begin bulk load"))?;
        self.auto_compactions(false)
    }

    fn auto_compactions(&self, on: bool) -> Result<(), StoreError> {
        let data = self.db.cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME).expect("default column family exists");
        let value = if on { "false" } else { "true" };
        self.db.set_options_cf(&data, &[("disable_auto_compactions", value)]).map_err(self.io("set compactions"))
    }

    /// Writes a bulk load's batch with the checkpoint it reaches, without the WAL. Safe
    /// because the column families flush atomically: after a crash the store holds the
    /// values and the checkpoint of the last flush, which agree, and a restore goes on
    /// from that checkpoint.
    pub fn commit_bulk(&self, BulkBatch(mut batch): BulkBatch, checkpoint: Option<i64>) -> Result<(), StoreError> {
        if let Some(offset) = checkpoint {
            let cf = self.db.cf_handle(META_CF).expect("meta column family is created at open");
            batch.put_cf(&cf, CHECKPOINT_KEY, offset.to_be_bytes());
        }
        self.db.write_opt(batch, &no_wal()).map_err(self.io("bulk write"))?;
        // A store far larger than the write buffers piles files up in level 0; well before
        // RocksDB would stall writes on them (20 files), compactions resume for the rest
        // of the load, so a load of any size finishes.
        let level0 = self.db.property_int_value("rocksdb.num-files-at-level0").ok().flatten().unwrap_or(0);
        if level0 >= BULK_LEVEL0_FILES {
            self.auto_compactions(true)?;
        }
        Ok(())
    }

    /// Ends a bulk load: builds the index and flushes every column family, so what the
    /// load wrote without the WAL is on disk before any write with the WAL follows it
    /// (WAL replay after a crash must never put a later checkpoint over lost values).
    pub fn finish_bulk_load(&self) -> Result<(), StoreError> {
        let entries = self.rebuild_index()?;
        self.auto_compactions(true)?;
        if self.indexer.is_some() {
            tracing::debug!(store = %self.name, partition = self.partition, entries, "built secondary indexes after a bulk load");
        }
        Ok(())
    }
}

/// Values of a bulk load, copied once, straight from the record into RocksDB's batch.
#[derive(Default)]
pub struct BulkBatch(WriteBatch);

impl BulkBatch {
    /// `value` None: a delete (a tombstone in the changelog).
    pub fn put(&mut self, key: &[u8], value: Option<&[u8]>) {
        match value {
            Some(v) => self.0.put(key, v),
            None => self.0.delete(key),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Level-0 files at which a bulk load lets compactions run again: below RocksDB's
/// `level0_slowdown_writes_trigger` (20), so a load is never throttled by its own files.
const BULK_LEVEL0_FILES: u64 = 12;

#[cfg(test)]
mod tests {
    use super::super::index_tests::{by_first_byte, keys};
    use super::*;
    use crate::store::{StoreResources, StoreTuning};

    fn load(s: &RocksStore, entries: &[(&[u8], Option<&[u8]>)], checkpoint: i64) {
        let mut batch = BulkBatch::default();
        for (k, v) in entries {
            batch.put(k, *v);
        }
        s.commit_bulk(batch, Some(checkpoint)).unwrap();
    }

    /// A full restore's bulk load: later values of a key win across batches, deletes
    /// apply, and the index built at the end describes only what the store holds.
    /// Flushes one small bulk batch per round: one level-0 file each.
    fn bulk_rounds(s: &RocksStore, rounds: u64) {
        for round in 0..rounds {
            let key = format!("k{round}");
            load(s, &[(key.as_bytes(), Some(&b"value"[..]))], round as i64);
            s.flush().unwrap();
        }
    }

    fn level0_files(s: &RocksStore) -> u64 {
        s.db.property_int_value("rocksdb.num-files-at-level0").unwrap().unwrap()
    }

    /// Waits up to 10 s for compactions to bring level 0 under `files`.
    fn level0_drops_under(s: &RocksStore, files: u64) -> bool {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while level0_files(s) >= files {
            if std::time::Instant::now() > until {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        true
    }

    /// A bulk load defers compactions (level 0 keeps every flush's file, where RocksDB
    /// would compact at 4), and its end lets them run.
    #[test]
    fn a_bulk_load_compacts_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let res = StoreResources::new(&StoreTuning::default());
        let s = RocksStore::open(dir.path(), "s", 0, &res, None).unwrap();
        s.begin_bulk_load().unwrap();
        bulk_rounds(&s, 8);
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(level0_files(&s), 8, "no compaction during the load");
        s.finish_bulk_load().unwrap();
        assert!(level0_drops_under(&s, 4), "compacted after the load: {} files in level 0", level0_files(&s));
        assert_eq!(s.get(b"k7").unwrap().as_deref(), Some(&b"value"[..]));
    }

    /// A load larger than the write buffers many times over never reaches RocksDB's write
    /// slowdown (20 level-0 files) or stop (36): compactions resume at `BULK_LEVEL0_FILES`.
    #[test]
    fn a_long_bulk_load_lets_compactions_resume_before_writes_would_stall() {
        let dir = tempfile::tempdir().unwrap();
        let res = StoreResources::new(&StoreTuning::default());
        let s = RocksStore::open(dir.path(), "s", 0, &res, None).unwrap();
        s.begin_bulk_load().unwrap();
        bulk_rounds(&s, 24);
        // RocksDB's level0_slowdown_writes_trigger.
        assert!(level0_drops_under(&s, 20), "{} files in level 0 mid-load", level0_files(&s));
        s.finish_bulk_load().unwrap();
        assert_eq!(s.get(b"k23").unwrap().as_deref(), Some(&b"value"[..]));
    }

    #[test]
    fn a_bulk_load_builds_the_index_of_the_final_values() {
        let dir = tempfile::tempdir().unwrap();
        let res = StoreResources::new(&StoreTuning::default());
        let s = RocksStore::open(dir.path(), "s", 0, &res, Some(by_first_byte())).unwrap();
        s.begin_bulk_load().unwrap();
        load(&s, &[(b"k1", Some(b"apple")), (b"k2", Some(b"avocado"))], 1);
        load(&s, &[(b"k1", Some(b"banana")), (b"k2", None), (b"k3", Some(b"apricot"))], 4);
        s.finish_bulk_load().unwrap();
        assert_eq!(keys(&s, "a"), vec![b"k3".to_vec()], "k1 moved on, k2 is gone");
        assert_eq!(keys(&s, "b"), vec![b"k1".to_vec()]);
        assert_eq!(s.checkpoint().unwrap(), Some(4));
        assert_eq!(s.get(b"k2").unwrap(), None);
        // After the load, writes keep the index up to date again.
        s.write([(&b"k3"[..], Some(&b"blackberry"[..]))], Some(5)).unwrap();
        assert_eq!(keys(&s, "b"), vec![b"k1".to_vec(), b"k3".to_vec()]);
    }

    /// A bulk load that never finished (the process died) leaves the index marked
    /// unbuilt: the next open builds it from what the store holds.
    #[test]
    fn an_unfinished_bulk_load_has_its_index_built_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let res = StoreResources::new(&StoreTuning::default());
        {
            let s = RocksStore::open(dir.path(), "s", 0, &res, Some(by_first_byte())).unwrap();
            s.begin_bulk_load().unwrap();
            load(&s, &[(b"k1", Some(b"apple")), (b"k2", Some(b"banana"))], 1);
            assert!(keys(&s, "a").is_empty(), "not indexed while loading");
        }
        let s = RocksStore::open(dir.path(), "s", 0, &res, Some(by_first_byte())).unwrap();
        assert_eq!(keys(&s, "a"), vec![b"k1".to_vec()]);
        assert_eq!(keys(&s, "b"), vec![b"k2".to_vec()]);
        assert_eq!(s.checkpoint().unwrap(), Some(1));
    }
}
