//! What the query server may see of the runtime: the committed stores this instance holds,
//! per partition, how to render their values, and whether restore is done. Read-only for
//! the query side; the processing thread updates it on assignment and revocation.

use crate::processor::ValueRenderer;
use crate::store::RocksStore;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

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
    pulses: Pulses,
}

/// When each processing thread last came round its loop. A thread held up in one call
/// (a commit that hangs after a broker restart) cannot hear that the group took its
/// partitions away meanwhile, and another instance may already have moved their keys on:
/// past the stall limit, what it holds no longer counts as owned.
struct Pulses {
    born: Instant,
    threads: Mutex<BTreeMap<usize, Arc<AtomicU64>>>,
    /// Milliseconds; none until the runtime sets it.
    limit_ms: AtomicU64,
}

impl Default for Pulses {
    fn default() -> Self {
        Self { born: Instant::now(), threads: Mutex::default(), limit_ms: AtomicU64::new(u64::MAX) }
    }
}

/// A processing thread's side of its pulse.
pub struct Pulse {
    born: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Pulse {
    /// The thread came round at `now` (a time it read anyway: no clock read of its own).
    pub fn beat_at(&self, now: Instant) {
        self.last_ms.store(now.saturating_duration_since(self.born).as_millis() as u64, Ordering::Relaxed);
    }
}

/// A processing thread that has not come round its loop for longer than the stall limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stalled {
    pub thread: usize,
    pub for_: Duration,
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
        if self.failure().is_some() || self.stalled().is_some() {
            return false;
        }
        let ready = self.ready.lock().expect("catalog lock");
        ready.len() >= self.threads.load(Ordering::SeqCst).max(1) && ready.values().all(|r| *r)
    }

    /// Registers processing thread `thread`'s pulse, as of now.
    pub fn pulse(&self, thread: usize) -> Pulse {
        let p = &self.pulses;
        let pulse = Pulse { born: p.born, last_ms: Arc::default() };
        pulse.beat_at(Instant::now());
        p.threads.lock().expect("catalog lock").insert(thread, pulse.last_ms.clone());
        pulse
    }

    /// How long a processing thread may stay in one call before its partitions count as
    /// possibly moved: the group consumer's session timeout, after which the group may
    /// have given them to another member.
    pub fn set_stall_limit(&self, limit: Duration) {
        self.pulses.limit_ms.store(limit.as_millis() as u64, Ordering::Relaxed);
    }

    /// The first processing thread away from its loop for longer than the stall limit.
    pub fn stalled(&self) -> Option<Stalled> {
        let p = &self.pulses;
        let limit = p.limit_ms.load(Ordering::Relaxed);
        let now = p.born.elapsed().as_millis() as u64;
        p.threads.lock().expect("catalog lock").iter().find_map(|(&thread, last)| {
            let away = now.saturating_sub(last.load(Ordering::Relaxed));
            (away > limit).then(|| Stalled { thread, for_: Duration::from_millis(away) })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_away_from_its_loop_past_the_limit_makes_the_instance_unready() {
        let catalog = Catalog::new();
        catalog.set_ready(0, true);
        let pulse = catalog.pulse(0);
        assert!(catalog.is_ready(), "no limit set: never stalled");
        catalog.set_stall_limit(Duration::from_millis(50));
        assert!(catalog.is_ready(), "it beat just now");
        std::thread::sleep(Duration::from_millis(80));
        let stalled = catalog.stalled().expect("80 ms away against a 50 ms limit");
        assert_eq!(stalled.thread, 0);
        assert!(stalled.for_ >= Duration::from_millis(50), "{stalled:?}");
        assert!(!catalog.is_ready());
        pulse.beat_at(Instant::now());
        assert_eq!(catalog.stalled(), None);
        assert!(catalog.is_ready(), "back in its loop: ready again");
    }
}
