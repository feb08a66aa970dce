//! What the query server may see of the runtime: the committed stores this instance holds,
//! per partition, how to render their values, and whether restore is done. Read-only for
//! the query side; the processing thread updates it on assignment and revocation.

use crate::processor::ValueRenderer;
use crate::store::RocksStore;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// One store as the query server sees it.
#[derive(Clone)]
pub struct StoreView {
    /// Partitions of the input topic the store is sharded by.
    pub partitions: i32,
    pub renderer: Arc<dyn ValueRenderer>,
    /// Declared secondary indexes (fields) of the store.
    pub indexes: Vec<String>,
    /// A global table: every instance holds all of it.
    pub global: bool,
}

#[derive(Default)]
pub struct Catalog {
    views: RwLock<BTreeMap<String, StoreView>>,
    /// Aggregate (registered name and node name) → its snapshot store.
    aggregates: RwLock<BTreeMap<String, String>>,
    open: RwLock<BTreeMap<(String, i32), Arc<RocksStore>>>,
    /// Processing threads of this instance, and which of them are ready.
    threads: AtomicUsize,
    ready: Mutex<BTreeMap<usize, bool>>,
    /// Set when a processing thread died: /health answers 503 with it.
    failed: Mutex<Option<String>>,
    /// Recent rates, commits and rebalances, for the console.
    activity: super::activity::Activity,
    /// Keys whose snapshot cannot be read, shared by this instance's aggregate processors.
    quarantine: Arc<crate::processor::quarantine::Quarantine>,
}

impl Catalog {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn define(&self, store: &str, view: StoreView) {
        self.views.write().expect("catalog lock").insert(store.to_string(), view);
    }

    pub fn define_aggregate(&self, name: &str, store: &str) {
        self.aggregates.write().expect("catalog lock").insert(name.to_string(), store.to_string());
    }

    /// The snapshot store of an aggregate, by registered name or node name.
    pub fn aggregate_store(&self, name: &str) -> Option<String> {
        self.aggregates.read().expect("catalog lock").get(name).cloned()
    }

    pub fn aggregate_names(&self) -> Vec<String> {
        self.aggregates.read().expect("catalog lock").keys().cloned().collect()
    }

    pub fn view(&self, store: &str) -> Option<StoreView> {
        self.views.read().expect("catalog lock").get(store).cloned()
    }

    pub fn store_names(&self) -> Vec<String> {
        self.views.read().expect("catalog lock").keys().cloned().collect()
    }

    pub fn attach(&self, store: &Arc<RocksStore>) {
        self.open
            .write()
            .expect("catalog lock")
            .insert((store.name().to_string(), store.partition()), store.clone());
    }

    pub fn detach(&self, store: &str, partition: i32) {
        self.open.write().expect("catalog lock").remove(&(store.to_string(), partition));
    }

    pub fn local(&self, store: &str, partition: i32) -> Option<Arc<RocksStore>> {
        self.open.read().expect("catalog lock").get(&(store.to_string(), partition)).cloned()
    }

    /// Store → partitions this instance holds, for the members directory. Global tables
    /// are left out: every instance holds them whole.
    pub fn owned(&self) -> BTreeMap<String, Vec<i32>> {
        let views = self.views.read().expect("catalog lock");
        let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (store, partition) in self.open.read().expect("catalog lock").keys() {
            if views.get(store).is_some_and(|v| !v.global) {
                out.entry(store.clone()).or_default().push(*partition);
            }
        }
        out
    }

    pub fn local_partitions(&self, store: &str) -> Vec<Arc<RocksStore>> {
        self.open
            .read()
            .expect("catalog lock")
            .iter()
            .filter(|((s, _), _)| s == store)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// How many processing threads report readiness (default 1).
    pub fn expect_threads(&self, n: usize) {
        self.threads.store(n.max(1), Ordering::SeqCst);
    }

    /// A processing thread is ready once the group assigned it partitions (possibly none)
    /// and every task it was given has finished restoring.
    pub fn set_ready(&self, thread: usize, ready: bool) {
        self.ready.lock().expect("catalog lock").insert(thread, ready);
    }

    /// A processing thread died: the instance is failing and about to exit.
    pub fn set_failed(&self, reason: String) {
        self.failed.lock().expect("catalog lock").get_or_insert(reason);
    }

    /// Why the instance is failing, if it is.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().expect("catalog lock").clone()
    }

    pub fn quarantine(&self) -> Arc<crate::processor::quarantine::Quarantine> {
        self.quarantine.clone()
    }

    pub fn activity(&self) -> &super::activity::Activity {
        &self.activity
    }

    pub fn is_ready(&self) -> bool {
        if self.failure().is_some() {
            return false;
        }
        let ready = self.ready.lock().expect("catalog lock");
        ready.len() >= self.threads.load(Ordering::SeqCst).max(1) && ready.values().all(|r| *r)
    }
}
