//! Opening the stores of newly assigned tasks: each store is opened, restored from its
//! changelog and given its event history, before its task takes any input. The stores of
//! one assignment are independent of each other, so they are opened side by side, on as
//! many threads as the machine has cores: a full restore (a new instance, a lost disk,
//! a scale-out) is bound by decoding and RocksDB writes, which one thread cannot keep up
//! with for several partitions.

use super::ports::ChangelogReader;
use super::route::{open_store, RouteStore};
use super::standby::Standbys;
use super::RuntimeError;
use crate::record::TopicPartition;
use crate::store::{RocksStore, StoreResources};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A store opened and brought up to date, with the changelog records its restore read.
pub(crate) struct Opened {
    pub rocks: Arc<RocksStore>,
    pub restored: u64,
}

/// What opening needs, borrowed from the engine.
pub(crate) struct Opener<'a> {
    pub dir: &'a Path,
    pub resources: &'a StoreResources,
    pub reader: &'a dyn ChangelogReader,
    pub standbys: Option<&'a Standbys>,
}

impl Opener<'_> {
    /// Opens and restores the store of each `(task, store)`. Returns the first failure,
    /// or every store. Side by side, the others still finish after one failed; what any
    /// restore applied is checkpointed, so a retry goes on from there.
    pub fn open_all(&self, jobs: &[(TopicPartition, RouteStore)]) -> Result<HashMap<TopicPartition, Opened>, RuntimeError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len());
        let opened = if threads <= 1 {
            jobs.iter().map(|(tp, st)| Ok((tp.clone(), self.load(tp, st)?))).collect()
        } else {
            self.load_side_by_side(jobs, threads)
        }?;
        // A store loaded in bulk compacts once the whole assignment is in: compactions
        // started while other stores still load take cores from them (a full restore of
        // four partitions on two cores was ready about a tenth sooner; docs/performance.md).
        for o in opened.values() {
            o.rocks.resume_compactions()?;
        }
        Ok(opened)
    }

    /// Loads the stores of `jobs` on `threads` threads.
    fn load_side_by_side(&self, jobs: &[(TopicPartition, RouteStore)], threads: usize) -> Result<HashMap<TopicPartition, Opened>, RuntimeError> {
        // The threads log inside the caller's span (which processing thread), each line
        // naming its task.
        let parent = tracing::Span::current();
        let next = AtomicUsize::new(0);
        let results = Mutex::new(Vec::with_capacity(jobs.len()));
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    while let Some((tp, st)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let _span = tracing::info_span!(parent: &parent, "task", task = %tp).entered();
                        let opened = self.load(tp, st);
                        results.lock().expect("restore results lock").push((tp.clone(), opened));
                    }
                });
            }
        });
        results.into_inner().expect("restore results lock").into_iter().map(|(tp, r)| Ok((tp, r?))).collect()
    }

    /// Opens one store, restores its changelog tail and completes its event history.
    pub fn open(&self, tp: &TopicPartition, st: &RouteStore) -> Result<Opened, RuntimeError> {
        let opened = self.load(tp, st)?;
        opened.rocks.resume_compactions()?;
        Ok(opened)
    }

    /// As `open`, leaving a bulk load's compactions to the caller (`resume_compactions`).
    fn load(&self, tp: &TopicPartition, st: &RouteStore) -> Result<Opened, RuntimeError> {
        if let Some(s) = self.standbys {
            // A standby copy of this partition gives its state directory up first.
            s.release(&st.name, tp.partition);
        }
        let mut rocks = Arc::new(open_store(self.dir, st, tp.partition, self.resources)?);
        let restored = match self.reader.restore(&rocks, &st.changelog, st.accept.as_ref(), st.history_ms.is_some()) {
            // The store holds what the broker aborted: nothing of it can be trusted, and
            // the committed changelog has everything else. Rebuilt whole, as for a lost disk.
            Err(e @ RuntimeError::StoreAhead { .. }) => {
                tracing::error!(error = %e, "store ahead of its changelog");
                metrics::counter!("millrace_store_rebuilds_total", "store" => st.name.clone(), "partition" => tp.partition.to_string()).increment(1);
                let path = rocks.path().to_path_buf();
                drop(rocks);
                std::fs::remove_dir_all(&path).map_err(|e| {
                    RuntimeError::Store(crate::store::StoreError::Open { store: st.name.clone(), partition: tp.partition, path: path.clone(), reason: e.to_string() })
                })?;
                rocks = Arc::new(open_store(self.dir, st, tp.partition, self.resources)?);
                self.reader.restore(&rocks, &st.changelog, st.accept.as_ref(), st.history_ms.is_some())?
            }
            r => r?,
        };
        if let Some(ev) = &st.events {
            self.reader.ensure_event_history(&rocks, ev, restored)?;
        }
        Ok(Opened { rocks, restored })
    }
}
