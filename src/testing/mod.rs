//! `TopologyDriver`: runs a topology without a broker, for unit tests of aggregates and
//! topologies (feature `test-util`). Records are piped into input topics, outputs read
//! back, stores inspected, and faults injected, all in memory.
//!
//! It runs the production engine (`runtime::engine::Engine`: the commit cycle, tasks,
//! processors, restore, fencing, poison records) over its ports, implemented here by an
//! in-memory log with real transaction semantics (`log`): outputs and input offsets become
//! visible together on commit, aborted or abandoned transactions never do, and a new
//! producer with the same transactional id fences the old one. Stores are RocksDB in a
//! temporary directory.
//!
//! Faults it injects, each through the same engine code a real process runs:
//! - `crash()`: the process dies between produce and commit. The engine is dropped with its
//!   open transaction; a new one (a new producer epoch) restores the stores' changelog
//!   tails and processes the uncommitted input again.
//! - `crash_after_commit()`: the process dies after the transaction committed but before
//!   the stores wrote it. Restore must replay that changelog tail.
//! - `crash_at(point)`: the process dies the next time the commit cycle reaches `point`
//!   (before or after a send, before the commit, after it, after the store write).
//! - `fence()`: another producer took the transactional id over. The next commit fails as
//!   fenced; the engine drops its tasks without retrying their writes, and takes the
//!   partitions up again from the committed offsets.
//! - `rebalance()`: the partitions are revoked (the open transaction commits) and assigned
//!   again. Tasks are closed, reopened and restored.

mod log;

pub use crate::runtime::engine::CrashPoint;
pub use log::MemoryLog;

use crate::codec::murmur2::partition_for_key;
use crate::record::{Headers, TopicPartition};
use crate::runtime::engine::Engine;
use crate::runtime::ports::{Input, Sink, SinkFactory};
use crate::runtime::{App, AppConfig, Catalog, Registry, RuntimeError};
use crate::store::StoreResources;
use crate::topology::Topology;
use log::{MemoryChangelog, MemoryInput, MemorySink};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    app: App,
    catalog: Arc<Catalog>,
    _dir: tempfile::TempDir,
    resources: StoreResources,
    log: MemoryLog,
    input: MemoryInput,
    engine: Option<Engine>,
    transactional_id: String,
    now_ms: i64,
    since_commit_ms: i64,
    /// Changelog records restored by engines that crashed since.
    restored_before: u64,
    /// Global tables mirror their topic as records arrive, outside any transaction.
    globals: Vec<Arc<crate::runtime::global::GlobalTable>>,
    /// How far each global table's partitions are mirrored.
    mirrored: BTreeMap<TopicPartition, i64>,
    /// The clock the engine's join-input synchronization waits by. The driver never waits:
    /// each pump moves it past `max_task_idle`, so a record piped in is processed at once.
    sync_clock: Instant,
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
            http: Default::default(),
            // The driver runs the processing side; projections need a real PostgreSQL.
            postgres_url: None,
            run: crate::runtime::Run::Processing,
        };
        let app = App::new(topology, registry, config)?;
        let topology = app.topology().clone();
        let counts: BTreeMap<String, i32> = topology.topic_needs().into_iter().map(|n| (n.name, n.partitions)).collect();
        let log = MemoryLog::new(counts.clone());
        let resources = StoreResources::new(&topology.rocksdb);
        let globals: Vec<Arc<crate::runtime::global::GlobalTable>> = app.globals().values().cloned().collect();
        let state_dir = dir.path().join(&topology.application_id);
        for g in &globals {
            for s in g.open(&state_dir.join("global"), log.partitions(&g.topic), &resources)? {
                app.catalog().attach(&s);
            }
            g.mark_caught_up();
        }
        let assigned: Vec<TopicPartition> = app
            .engine_settings(0, None)
            .routes
            .keys()
            .flat_map(|t| (0..log.partitions(t)).map(move |p| TopicPartition::new(t.as_str(), p)))
            .collect();
        let input = MemoryInput::new(&log, assigned, counts.into_keys().collect());
        let mut driver = Self {
            catalog: app.catalog(),
            transactional_id: app.member_id(0),
            app,
            _dir: dir,
            resources,
            log,
            input,
            engine: None,
            now_ms: 0,
            since_commit_ms: 0,
            restored_before: 0,
            globals,
            mirrored: BTreeMap::new(),
            sync_clock: Instant::now(),
        };
        driver.start()?;
        Ok(driver)
    }

    /// What the driver's query server would see: stores, readiness, a stalled thread.
    pub fn catalog(&self) -> Arc<crate::runtime::Catalog> {
        self.catalog.clone()
    }

    /// The transactional id of the driver's producer.
    pub fn transactional_id(&self) -> String {
        self.transactional_id.clone()
    }

    /// The log the driver's engine reads and writes, e.g. to make a topic refuse large
    /// records (`set_max_record_bytes`).
    pub fn log(&self) -> &MemoryLog {
        &self.log
    }

    /// Starts an engine (a new producer epoch: any older one is fenced), assigns it every
    /// input partition from the committed offsets, and processes what is uncommitted.
    fn start(&mut self) -> Result<(), RuntimeError> {
        let (log, tid, eos) = (self.log.clone(), self.transactional_id.clone(), self.app.topology().processing.exactly_once);
        let new_sink: SinkFactory = Box::new(move || Ok(Box::new(MemorySink::new(&log, &tid, eos)) as Box<dyn Sink>));
        let reader = Arc::new(MemoryChangelog { log: self.log.clone() });
        let mut settings = self.app.engine_settings(0, None);
        // Everything here is written at once, in order: an input read to its end has
        // nothing older still coming, and global tables are always current, so nothing
        // publishes progress and the clock stands far ahead.
        settings.progress = None;
        settings.clock = || i64::MAX / 4;
        settings.end_check = Duration::ZERO;
        let mut engine = Engine::new(settings, self.resources.clone(), self.catalog.clone(), new_sink, reader)?;
        // As a consumer after assignment: every partition continues from its committed offset.
        for tp in self.input.assigned() {
            self.input.seek(tp, self.log.committed_offset(tp))?;
        }
        engine.on_assign(&self.input, &self.input.assigned().to_vec());
        let failure = engine.failure.take();
        self.engine = Some(engine);
        // A transient failure (a stalled restore) is the caller's to retry (`retry`).
        match failure {
            Some(e) => Err(e),
            None => self.pump(),
        }
    }

    /// After a transient failure: what the poll loop does next, a resync (the open
    /// transaction aborted, every task reopened from the last commit, restoring only its
    /// tail), then processing of what is uncommitted.
    pub fn retry(&mut self) -> Result<(), RuntimeError> {
        self.step(|e, input| e.resync(input))?;
        self.pump()
    }

    /// Whether the engine's tasks are all restored and ready (`/ready`).
    pub fn is_ready(&self) -> bool {
        self.catalog.is_ready()
    }

    fn engine(&mut self) -> &mut Engine {
        self.engine.as_mut().expect("the driver always has an engine between calls")
    }

    /// The process died where the engine stopped: its open transaction is lost with it.
    fn restart(&mut self) -> Result<(), RuntimeError> {
        if let Some(engine) = self.engine.take() {
            self.restored_before += engine.restored();
            engine.abandon();
        }
        self.start()
    }

    /// A step of the engine; an injected crash restarts it, as a real crash would.
    fn step(&mut self, f: impl FnOnce(&mut Engine, &MemoryInput) -> Result<(), RuntimeError>) -> Result<(), RuntimeError> {
        let engine = self.engine.as_mut().expect("engine");
        match f(engine, &self.input) {
            Err(RuntimeError::InjectedCrash(_)) => self.restart(),
            other => other,
        }
    }

    /// Hands every committed input record past the positions to the engine, until none is
    /// left (a rewind after an abort makes more).
    fn pump(&mut self) -> Result<(), RuntimeError> {
        for _ in 0..10_000 {
            let mut any = false;
            while let Some(r) = self.input.poll() {
                self.engine().buffer(r);
                any = true;
            }
            // Once at the current time (what may go in order goes), then past the idle
            // time (what waited for an empty input goes too).
            let idle = Duration::from_millis(self.app.topology().processing.max_task_idle_ms) + Duration::from_millis(1);
            for _ in 0..2 {
                let now = self.sync_clock;
                self.step(|e, input| e.drain_at(input, now))?;
                self.sync_clock += idle;
            }
            if !any {
                return Ok(());
            }
        }
        Err(RuntimeError::Driver("the engine rewound its input 10,000 times in a row".into()))
    }

    /// Global tables read committed records of their topic, outside any transaction.
    fn mirror_globals(&mut self) -> Result<(), RuntimeError> {
        for g in &self.globals {
            for p in 0..self.log.partitions(&g.topic) {
                let tp = TopicPartition::new(g.topic.as_str(), p);
                let from = self.mirrored.get(&tp).copied().unwrap_or(0);
                let end = self.log.end(&tp);
                for o in from..end {
                    if let Some(r) = self.log.get(&tp, o) {
                        if let Some(key) = &r.key {
                            g.apply(p, key, r.value.as_deref(), r.timestamp, o)?;
                        }
                    }
                }
                self.mirrored.insert(tp, end);
            }
        }
        Ok(())
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
        self.log.append(topic, Some(key.as_bytes().to_vec()), value, headers, self.now_ms);
        self.mirror_globals()?;
        self.pump()
    }

    /// Commits the open transaction: outputs and input offsets become visible, then the
    /// stores write their overlay with the changelog offset. If the commit could not
    /// happen (fenced, aborted), the engine has taken its partitions up again from the
    /// last commit; the uncommitted input is processed again and committed.
    pub fn commit(&mut self) -> Result<(), RuntimeError> {
        let before = self.log.commits();
        self.step(|e, input| e.commit(input))?;
        self.mirror_globals()?;
        if self.log.commits() == before && self.engine().in_transaction() {
            return Ok(());
        }
        if self.log.commits() == before {
            // Nothing committed: either nothing was open, or the transaction failed and
            // was taken up again. Run what is uncommitted and commit it.
            self.pump()?;
            self.step(|e, input| e.commit(input))?;
            self.mirror_globals()?;
        }
        Ok(())
    }

    /// Commits, then lets every task consume what the commit made visible on its inputs
    /// (a re-key node's repartition topic feeding a join), and commits again, until
    /// nothing is left to process.
    pub fn flush(&mut self) -> Result<(), RuntimeError> {
        for _ in 0..1_000 {
            self.commit()?;
            self.pump()?;
            if !self.engine().in_transaction() {
                return Ok(());
            }
        }
        Err(RuntimeError::Driver("flush did not settle in 1,000 commits".into()))
    }

    /// Moves time forward and punctuates every task with the new time, as the engine does
    /// with the wall clock; commits when the topology's commit interval is reached.
    pub fn advance_time(&mut self, ms: i64) -> Result<(), RuntimeError> {
        self.now_ms += ms;
        self.since_commit_ms += ms;
        let now = self.now_ms;
        self.step(|e, input| e.punctuate_at(input, now))?;
        if self.since_commit_ms >= self.app.topology().processing.commit_interval_ms as i64 {
            self.since_commit_ms = 0;
            self.commit()?;
        }
        Ok(())
    }

    /// Fault: the process dies between produce and commit.
    pub fn crash(&mut self) -> Result<(), RuntimeError> {
        self.restart()
    }

    /// Fault: the process dies after the commit, before the stores applied it.
    pub fn crash_after_commit(&mut self) -> Result<(), RuntimeError> {
        self.crash_at(CrashPoint::AfterCommit);
        self.step(|e, input| e.commit(input))?;
        self.mirror_globals()
    }

    /// Fault: the process dies the next time the commit cycle reaches `point`. The driver
    /// restarts it at once (a new producer epoch, restore, reprocessing).
    pub fn crash_at(&mut self, point: CrashPoint) {
        self.engine().crash_at(point);
    }

    /// Fault: another producer initialized this instance's transactional id. The open
    /// transaction can no longer commit; its writes are never retried.
    pub fn fence(&mut self) -> Result<(), RuntimeError> {
        self.log.bump_epoch(&self.transactional_id);
        Ok(())
    }

    /// The partitions are revoked (the open transaction commits) and assigned again.
    pub fn rebalance(&mut self) -> Result<(), RuntimeError> {
        let engine = self.engine.as_mut().expect("engine");
        engine.on_revoke(&self.input);
        self.mirror_globals()?;
        for tp in self.input.assigned() {
            self.input.seek(tp, self.log.committed_offset(tp))?;
        }
        let assigned = self.input.assigned().to_vec();
        let engine = self.engine.as_mut().expect("engine");
        engine.on_assign(&self.input, &assigned);
        if let Some(e) = engine.failure.take() {
            return Err(e);
        }
        self.pump()
    }

    /// Committed records of `topic`, across partitions, in partition then offset order.
    pub fn read_output(&self, topic: &str) -> Vec<DriverRecord> {
        self.log.read(topic)
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
        self.restored_before + self.engine.as_ref().map_or(0, Engine::restored)
    }
}
