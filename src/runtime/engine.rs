//! The processing side of an instance: its tasks, the transactional sink, and the commit
//! cycle. It talks to the outside only through its ports (`runtime::ports`: input, sink,
//! changelog reader), so the same engine runs over Kafka (the poll loop and the consumer's
//! rebalance callback, on one thread, behind one mutex) and over the broker-free driver's
//! in-memory log.
//!
//! Invariants protected here:
//! - A commit covers a batch: every `commit_interval` or `max_batch_records`, never per
//!   record. At light load it may come sooner, when the input is drained, but never before
//!   `min_commit_interval`: transactions stay bounded in number whatever the load.
//! - Local state never runs ahead of the committed changelog: tasks hear `committed` only
//!   after `commit_transaction` returned Ok.
//! - On revoke, the open transaction commits (or aborts, if the assignment was lost)
//!   before the partitions go.

use super::partition_gauges;
use super::clocks::Clocks;
use super::progress::ProgressSettings;
use super::catalog::Catalog;
use super::route::{events_offsets, peer_stores, Route};
use super::sync::InputSync;
use super::task::Task;
use super::RuntimeError;
use crate::error::Recovery;
use crate::processor::dead_letter_as;
use crate::record::{InRecord, OutRecord, TopicPartition};
use super::ports::{ChangelogReader, Destination, Input, Sink, SinkFactory};
use crate::sink::SinkError;
use crate::store::StoreResources;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod lifecycle;

/// What the engine needs to build and commit tasks.
pub(crate) struct EngineSettings {
    pub state_dir: PathBuf,
    pub commit_interval: Duration,
    /// How long a transaction stays open at least when its input runs dry (at most
    /// `commit_interval`, which means: commit on the interval only).
    pub min_commit_interval: Duration,
    pub max_batch_records: usize,
    pub routes: BTreeMap<String, Route>,
    /// Topics known to exist: the topology's own, its internal ones, and any seen since.
    pub known_topics: HashSet<String>,
    pub dead_letter_topic: String,
    /// Which of the instance's processing threads this engine is.
    pub thread: usize,
    /// Topics read in time order against each other, per partition (a join's table and stream).
    pub sync_groups: Vec<Vec<String>>,
    /// How late a record may reach the broker after its time (`max_task_idle_ms`); also how
    /// long a join's table input waits for an empty stream.
    pub max_task_idle: Duration,
    /// Stream topics of joins with a global table, with the table: their records wait
    /// until it is final through their time.
    pub gates: HashMap<String, Arc<dyn crate::processor::Lookup>>,
    /// Event-time progress this engine's tasks publish (`runtime::progress`), if any.
    pub progress: Option<ProgressSettings>,
    /// Wall-clock milliseconds. The broker-free driver's stands far ahead: whatever it has
    /// read to the end of, nothing older is still coming.
    pub clock: fn() -> i64,
    /// How often inputs whose event time matters are checked against their end offsets.
    pub end_check: Duration,
    /// Standby copies this instance keeps; a task taking one over asks for it first.
    pub standbys: Option<Arc<super::standby::Standbys>>,
    /// How long a transient failure may go on before the processing thread gives up.
    pub task_timeout: Duration,
}

/// The steps of the commit cycle where the broker-free driver can inject a crash.
#[cfg(feature = "test-util")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrashPoint {
    /// A record was processed; its outputs are not sent yet.
    BeforeSend,
    /// A record's outputs are in the open transaction.
    AfterSend,
    /// The offsets are about to commit with the transaction (after they were sent to it).
    BeforeCommit,
    /// The transaction committed; the stores have not written it to RocksDB.
    AfterCommit,
    /// The stores wrote the committed transaction to RocksDB.
    AfterStoreWrite,
}

#[cfg(feature = "test-util")]
impl CrashPoint {
    pub const ALL: [CrashPoint; 5] =
        [CrashPoint::BeforeSend, CrashPoint::AfterSend, CrashPoint::BeforeCommit, CrashPoint::AfterCommit, CrashPoint::AfterStoreWrite];
}

pub(crate) struct Engine {
    settings: EngineSettings,
    sink: Box<dyn Sink>,
    /// Makes a new sink with the same transactional id(s) (after fencing, or a failed abort).
    new_sink: SinkFactory,
    reader: Arc<dyn ChangelogReader>,
    /// Changelog records restores of this engine have read.
    restored: u64,
    #[cfg(feature = "test-util")]
    crash_at: Option<CrashPoint>,
    tasks: BTreeMap<TopicPartition, Task>,
    resources: StoreResources,
    catalog: Arc<Catalog>,
    out: Vec<OutRecord>,
    sync: InputSync,
    txn_records: usize,
    txn_started: Instant,
    gauges_updated: Instant,
    punctuated: Instant,
    /// A failure inside the rebalance callback, where it cannot be returned; the poll loop
    /// picks it up.
    pub failure: Option<RuntimeError>,
    /// Input records whose outputs a topic refused for good, with the reason and how
    /// often: run again, the batch answers them instead of running them. Dropped once a
    /// commit moves past them.
    poisoned: HashMap<(TopicPartition, i64), (String, u32)>,
    /// Transactions committed so far: progress, for the poll loop's retry budget.
    commits: u64,
    /// Whether the current producer has released what earlier epochs of its producer id
    /// left pending for the group (`Engine::release_offsets`).
    offsets_released: bool,
    /// Event time of the inputs it matters for: those whose tasks publish progress, and
    /// co-partitioned tables' inputs (a join's stream waits on them).
    clocks: Clocks,
    /// Beats each time the thread comes round (every `drain`, every commit's end): a
    /// thread held up longer than the session timeout makes the query server stop
    /// answering from its stores (`Catalog::stalled`).
    pulse: super::Pulse,
}

impl Engine {
    /// `new_sink` runs once now: for Kafka, `init_transactions` aborts whatever a crashed
    /// predecessor with the same transactional id left open, before anything is restored.
    pub fn new(
        settings: EngineSettings,
        resources: StoreResources,
        catalog: Arc<Catalog>,
        new_sink: SinkFactory,
        reader: Arc<dyn ChangelogReader>,
    ) -> Result<Self, RuntimeError> {
        let sink = new_sink()?;
        let sync = InputSync::new(settings.sync_groups.clone(), settings.gates.clone(), settings.max_task_idle);
        let clocks = Clocks::new(
            settings.sync_groups.iter().filter_map(|g| g.first().cloned()),
            settings.progress.clone(),
            settings.end_check,
            settings.max_task_idle,
            settings.clock,
        );
        let pulse = catalog.pulse(settings.thread);
        Ok(Self {
            pulse,
            settings,
            sink,
            new_sink,
            reader,
            restored: 0,
            #[cfg(feature = "test-util")]
            crash_at: None,
            tasks: BTreeMap::new(),
            resources,
            catalog,
            out: Vec::with_capacity(16),
            sync,
            txn_records: 0,
            txn_started: Instant::now(),
            gauges_updated: Instant::now(),
            punctuated: Instant::now(),
            failure: None,
            poisoned: HashMap::new(),
            commits: 0,
            offsets_released: false,
            clocks,
        })
    }

    /// Whether a transaction is open (records processed, not yet committed).
    #[cfg_attr(not(feature = "test-util"), allow(dead_code))]
    pub fn in_transaction(&self) -> bool {
        self.sink.is_open()
    }

    /// Transactions committed so far.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Changelog records this engine's restores have read.
    #[cfg_attr(not(feature = "test-util"), allow(dead_code))]
    pub fn restored(&self) -> u64 {
        self.restored
    }

    /// The next time the cycle reaches `at`, it stops there with `InjectedCrash`, as if
    /// the process died: the caller then drops the engine (`abandon`).
    #[cfg(feature = "test-util")]
    pub fn crash_at(&mut self, at: CrashPoint) {
        self.crash_at = Some(at);
    }

    #[cfg(feature = "test-util")]
    fn crash_point(&mut self, at: CrashPoint) -> Result<(), RuntimeError> {
        if self.crash_at == Some(at) {
            self.crash_at = None;
            return Err(RuntimeError::InjectedCrash(at));
        }
        Ok(())
    }

    /// The process died: every task goes without committing anything (the open
    /// transaction is simply never committed, as after a SIGKILL).
    #[cfg(feature = "test-util")]
    pub fn abandon(mut self) {
        self.close_all();
    }

    /// How long the poll loop may wait for input: until the open transaction may commit
    /// once the input is drained (`maybe_commit`).
    pub fn until_commit_due(&self) -> Duration {
        if !self.sink.is_open() {
            return self.settings.commit_interval;
        }
        self.settings.min_commit_interval.saturating_sub(self.txn_started.elapsed())
    }

    pub fn process(
        &mut self,
        input: &dyn Input,
        mut record: InRecord,
    ) -> Result<(), RuntimeError> {
        let tp = TopicPartition::new(record.topic.as_str(), record.partition);
        let Some(task) = self.tasks.get_mut(&tp) else {
            // A record fetched before its partition was revoked: its new owner handles it.
            return Ok(());
        };
        let created = record.timestamp;
        // Event time never goes back within an input whose time matters: a record older
        // than one before it counts at the running maximum.
        if let (Some(clock), Some(ts)) = (self.clocks.get(&tp), record.timestamp) {
            let at = clock.effective(ts);
            if at != ts {
                metrics::counter!("millrace_out_of_order_records_total", "topic" => tp.topic.clone()).increment(1);
                record.timestamp = Some(at);
            }
        }
        if !self.sink.is_open() {
            if let Err(e) = self.sink.begin() {
                return self.recover(input, e);
            }
            self.txn_started = Instant::now();
            self.txn_records = 0;
            // Where latency goes, sampled once per transaction (no clock read per
            // record): how long the transaction's first record took from its timestamp
            // (for a command: when its producer sent it) to being processed.
            if let Some(ts) = created {
                let age_ms = super::app::wall_clock_ms().saturating_sub(ts).max(0);
                metrics::histogram!("millrace_input_delay_seconds").record(age_ms as f64 / 1000.0);
            }
        }
        self.sink.set_origin(Some((&tp, record.offset)));
        let poisoned = if self.poisoned.is_empty() { None } else { self.poisoned.get(&(tp.clone(), record.offset)) };
        let result = if let Some((reason, refusals)) = poisoned {
            // A topic refused what this record wrote, for good: the batch runs again
            // without it, and it is answered `failed` instead (one batch lost at most).
            if *refusals == 1 {
                if !task.fail(&record, reason, &mut self.out) {
                    self.out.push(dead_letter_as(&record, reason, &self.settings.dead_letter_topic, "failed"));
                }
            } else {
                // Even the answer was refused: pass over the record rather than stop the
                // partition for good.
                tracing::error!(task = %tp, offset = record.offset, %reason, "the answer to a refused record was refused too; the record is skipped");
                metrics::counter!("millrace_skipped_records_total", "topic" => tp.topic.clone()).increment(1);
                task.skip(&record);
            }
            Ok(())
        } else if self.settings.routes[&tp.topic].peers.is_empty() {
            task.process(&record, &mut self.out, &[])
        } else {
            // The task leaves the map while it runs, so the peers can be borrowed from it.
            let mut task = self.tasks.remove(&tp).expect("task looked up above");
            let peers = peer_stores(&self.settings.routes, &self.tasks, &tp);
            let r = task.process(&record, &mut self.out, &peers);
            self.tasks.insert(tp.clone(), task);
            r
        };
        if let Err(e) = result {
            tracing::error!(task = %tp, error = %e, "processing failed");
            return match e.recovery() {
                Recovery::RestoreTask => {
                    self.abort_and_rewind(input, false)?;
                    self.reopen(&tp)
                }
                _ => Err(e.into()),
            };
        }
        if let (Some(clock), Some(ts)) = (self.clocks.get_mut(&tp), record.timestamp) {
            clock.processed(ts);
        }
        if let Some(done) = self.sent_or_recovered(input, &tp.topic) {
            return done;
        }
        self.txn_records += 1;
        if self.txn_records >= self.settings.max_batch_records {
            self.commit(input)?;
        }
        Ok(())
    }

    /// Sends what the last processor call wrote; on failure, recovers the transaction and
    /// returns what the caller should return (None: sent, go on).
    fn sent_or_recovered(&mut self, input: &dyn Input, origin_topic: &str) -> Option<Result<(), RuntimeError>> {
        #[cfg(feature = "test-util")]
        if let Err(e) = self.crash_point(CrashPoint::BeforeSend) {
            return Some(Err(e));
        }
        match self.send_out(input, origin_topic) {
            #[cfg(feature = "test-util")]
            Ok(()) => self.crash_point(CrashPoint::AfterSend).err().map(Err),
            #[cfg(not(feature = "test-util"))]
            Ok(()) => None,
            Err(SendError::Sink(e)) => Some(self.recover(input, e)),
            // Transient: the poll loop backs off (within its retry budget) and runs the
            // batch again from the last commit.
            Err(SendError::Destination(e)) => Some(Err(e)),
        }
    }

    /// Sends what the last processor call wrote into the open transaction.
    fn send_out(&mut self, input: &dyn Input, origin_topic: &str) -> Result<(), SendError> {
        let mut out = std::mem::take(&mut self.out);
        let mut result = Ok(());
        for r in out.iter_mut() {
            if let Err(e) = self.check_destination(input, r, origin_topic) {
                result = Err(SendError::Destination(e));
                break;
            }
        }
        if result.is_ok() {
            for r in out.iter() {
                if let Err(e) = self.sink.send(r) {
                    result = Err(SendError::Sink(e));
                    break;
                }
            }
        }
        out.clear();
        self.out = out;
        result
    }

    /// Wall-clock punctuation of every task, about once per commit interval: work that no
    /// input record triggers (a wait whose table entry arrived while its partition was
    /// quiet). What it writes goes into the open transaction, opened if needed.
    pub fn maybe_punctuate(&mut self, input: &dyn Input) -> Result<(), RuntimeError> {
        if self.punctuated.elapsed() < self.settings.commit_interval {
            return Ok(());
        }
        self.punctuated = Instant::now();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.punctuate_at(input, now_ms)?;
        self.open_for_progress(input)
    }

    /// An input read to its end moves on in event time with the clock: when a claim has
    /// moved a commit interval past the last one published, a transaction opens to carry
    /// it (tables that wait on it learn that nothing older is coming).
    fn open_for_progress(&mut self, input: &dyn Input) -> Result<(), RuntimeError> {
        if !self.clocks.publishes() || self.sink.is_open() {
            return Ok(());
        }
        self.check_ends(input);
        if self.clocks.claim_due(self.settings.commit_interval.as_millis() as i64) {
            if let Err(e) = self.sink.begin() {
                return self.recover(input, e);
            }
            self.txn_started = Instant::now();
            self.txn_records = 0;
        }
        Ok(())
    }

    /// Asks for the end offsets of the clocked inputs with nothing buffered (`Clocks`).
    fn check_ends(&mut self, input: &dyn Input) {
        let sync = &self.sync;
        self.clocks.check_ends(input, &|tp| sync.holds(tp));
    }

    /// Punctuates every task at `now_ms` (the driver's clock, or the wall clock).
    pub fn punctuate_at(&mut self, input: &dyn Input, now_ms: i64) -> Result<(), RuntimeError> {
        let tps: Vec<TopicPartition> = self.tasks.keys().cloned().collect();
        for tp in tps {
            let Some(task) = self.tasks.get_mut(&tp) else { continue };
            self.sink.set_origin(None);
            if let Err(e) = task.punctuate(now_ms, &mut self.out) {
                tracing::error!(task = %tp, error = %e, "punctuation failed");
                self.out.clear();
                return match e.recovery() {
                    Recovery::RestoreTask => {
                        self.abort_and_rewind(input, false)?;
                        self.reopen(&tp)
                    }
                    _ => Err(e.into()),
                };
            }
            if self.out.is_empty() {
                continue;
            }
            if !self.sink.is_open() {
                if let Err(e) = self.sink.begin() {
                    self.out.clear();
                    return self.recover(input, e);
                }
                self.txn_started = Instant::now();
                self.txn_records = 0;
            }
            if let Some(done) = self.sent_or_recovered(input, &tp.topic) {
                return done;
            }
        }
        Ok(())
    }

    /// Sends a record to a topic nobody declared (a `reply-to` header) only if the topic
    /// exists: a missing one would fail the whole transaction on every retry, so the record
    /// goes to the dead-letter topic instead, with the reason, and the partition keeps
    /// moving. Only the broker's own answer "no such topic" (or "not authorized") counts: a
    /// metadata timeout says nothing about the topic, and is retried (the transaction
    /// aborts and the batch runs again) rather than taken as permanent, which would
    /// dead-letter a valid reply. Existing topics are remembered, so this costs a metadata
    /// request only the first time a name is seen.
    fn check_destination(&mut self, input: &dyn Input, r: &mut OutRecord, origin_topic: &str) -> Result<(), RuntimeError> {
        if self.settings.known_topics.contains(&r.topic) {
            return Ok(());
        }
        let reason = match valid_topic_name(&r.topic).map_or_else(|| input.destination(&r.topic), Destination::Refused) {
            Destination::Exists => {
                self.settings.known_topics.insert(r.topic.clone());
                return Ok(());
            }
            Destination::Refused(reason) => reason,
            Destination::Unknown(e) => {
                metrics::counter!("millrace_transient_errors_total", "op" => "metadata").increment(1);
                return Err(e);
            }
        };
        tracing::warn!(topic = %r.topic, %reason, "output topic refused; sending the record to the dead-letter topic");
        // Labelled with the input topic and a fixed reason, never the destination: a
        // reply-to header is client input, and would grow the label set without bound.
        metrics::counter!("millrace_dead_letters_total", "topic" => origin_topic.to_string(), "reason" => "no_destination").increment(1);
        r.headers.insert(crate::record::header::DLQ_REASON, reason);
        r.headers.insert(crate::record::header::DLQ_TOPIC, r.topic.as_bytes());
        r.topic = self.settings.dead_letter_topic.clone();
        r.partition = None;
        Ok(())
    }

    /// Commits the open transaction when it is due: open for the commit interval, or, when
    /// the input had nothing more (`drained`), for the minimum one. Under a steady load
    /// the input is rarely drained and batches stay whole; at light load a reply waits
    /// for the next fetch instead of the rest of the interval.
    pub fn maybe_commit(&mut self, input: &dyn Input, drained: bool) -> Result<(), RuntimeError> {
        let open = self.txn_started.elapsed();
        let due = open >= self.settings.commit_interval || (drained && open >= self.settings.min_commit_interval);
        if self.sink.is_open() && due {
            self.commit(input)?;
        }
        Ok(())
    }

    /// Commits outputs and input offsets in one transaction, then (only then) lets each
    /// task write its overlay and changelog offset to RocksDB.
    pub fn commit(&mut self, input: &dyn Input) -> Result<(), RuntimeError> {
        let committed = self.commit_open(input);
        self.pulse.beat_at(Instant::now());
        committed
    }

    fn commit_open(&mut self, input: &dyn Input) -> Result<(), RuntimeError> {
        if !self.sink.is_open() {
            return Ok(());
        }
        // How long outputs waited for this commit: from the first record of the
        // transaction (half a commit interval on average, under a steady load).
        metrics::histogram!("millrace_transaction_open_seconds").record(self.txn_started.elapsed().as_secs_f64());
        if self.clocks.publishes() {
            self.check_ends(input);
            if let Err(e) = self.clocks.publish(input, self.sink.as_mut()) {
                return self.recover(input, e);
            }
        }
        let offsets: Vec<(TopicPartition, i64)> =
            self.tasks.iter().filter_map(|(tp, task)| Some((tp.clone(), task.offset_to_commit()?))).collect();
        let group = input.group();
        if group.is_none() && self.sink.exactly_once() && !offsets.is_empty() {
            return Err(RuntimeError::NoGroupMetadata);
        }
        #[cfg(feature = "test-util")]
        self.crash_point(CrashPoint::BeforeCommit)?;
        let committing = Instant::now();
        match self.sink.commit(&offsets, group.as_ref()) {
            Ok(delivered) => {
                self.commits += 1;
                self.record_activity(committing.elapsed());
                self.clocks.committed();
                // Committed in Kafka, not yet in RocksDB: the store must catch up from the
                // changelog tail on restart.
                #[cfg(feature = "test-util")]
                self.crash_point(CrashPoint::AfterCommit)?;
                // Refused records this commit moved past are done with.
                let tasks = &self.tasks;
                self.poisoned.retain(|(tp, o), _| tasks.get(tp).is_some_and(|t| t.offset_to_commit().is_none_or(|next| *o >= next)));
                for (tp, task) in self.tasks.iter_mut() {
                    let checkpoint = match &self.settings.routes[&tp.topic].state {
                        Some(st) if st.source_is_changelog(&tp.topic) => task.offset_to_commit().map(|next| next - 1),
                        Some(st) => delivered.get(&TopicPartition::new(st.changelog.as_str(), tp.partition)).copied(),
                        None => None,
                    };
                    let events_offsets = events_offsets(&self.settings.routes[&tp.topic], &delivered);
                    task.committed(checkpoint, &events_offsets)?;
                }
                #[cfg(feature = "test-util")]
                self.crash_point(CrashPoint::AfterStoreWrite)?;
                if !self.sink.exactly_once() && !offsets.is_empty() {
                    // At-least-once: outputs are delivered and stores written; only now may
                    // the input move on. A crash before this line repeats the batch.
                    input.commit_offsets(&offsets)?;
                }
                self.txn_records = 0;
                if self.gauges_updated.elapsed() >= Duration::from_secs(5) {
                    self.update_store_gauges();
                }
                Ok(())
            }
            Err(e) => self.recover(input, e),
        }
    }

    /// The console's rates and commit latency, for a transaction that committed: what
    /// each task consumed, read off its offsets once per commit (before `Task::committed`
    /// clears them) rather than counted per record, and only for commits that happened.
    fn record_activity(&self, took: Duration) {
        let mut consumed: Vec<(String, u64)> = Vec::new();
        for (tp, task) in &self.tasks {
            match consumed.iter_mut().find(|(t, _)| *t == tp.topic) {
                Some((_, n)) => *n += task.consumed_in_transaction(),
                None => consumed.push((tp.topic.clone(), task.consumed_in_transaction())),
            }
        }
        let now_s = u64::try_from(super::app::wall_clock_ms() / 1000).unwrap_or(0);
        self.catalog.activity().committed(now_s, &consumed, took);
    }

    /// Store sizes for /metrics: RocksDB's key estimate, read at most every few seconds.
    fn update_store_gauges(&mut self) {
        for (tp, task) in &self.tasks {
            if let Some(store) = task.store().map(|s| s.inner()) {
                partition_gauges::set(partition_gauges::STORE_KEYS, store.name(), tp.partition, store.estimated_keys() as f64);
            }
        }
        self.gauges_updated = Instant::now();
    }

    fn recover(&mut self, input: &dyn Input, e: SinkError) -> Result<(), RuntimeError> {
        tracing::warn!(error = %e, recovery = ?e.recovery(), "transaction failed");
        if let SinkError::Poisoned { poisoned, .. } = &e {
            for p in poisoned {
                metrics::counter!("millrace_refused_records_total", "topic" => p.input.topic.clone()).increment(1);
                self.poisoned.entry((p.input.clone(), p.offset)).or_insert_with(|| (p.reason.clone(), 0)).1 += 1;
            }
        }
        // Until the failure is dealt with, the group may give these partitions to another
        // instance (a broker restart ends sessions, and an abort can block for its whole
        // timeout meanwhile): reads of them here could be stale, so the thread is unready,
        // which makes the query server answer 503 for them, until it has recovered.
        self.catalog.set_ready(self.settings.thread, false);
        let recovered = match e.recovery() {
            Recovery::GiveUpPartitions => self.give_up(input),
            Recovery::Fatal => {
                let _ = self.sink.abort();
                Err(e.into())
            }
            _ => self.abort_and_rewind(input, e.replaces_producer()),
        };
        if recovered.is_ok() {
            self.catalog.set_ready(self.settings.thread, true);
        }
        recovered
    }

    /// Ends the open transaction without committing it and rewinds every task's input to
    /// its first record in it, so those records are processed again in a new transaction.
    ///
    /// The producer aborts it, unless the producer itself failed (`replace`, see
    /// `SinkError::replaces_producer`) or its abort does: then a new producer with the same
    /// transactional id takes over, and its `init_transactions` aborts the transaction on
    /// the coordinator before anything else is sent.
    fn abort_and_rewind(&mut self, input: &dyn Input, replace: bool) -> Result<(), RuntimeError> {
        if replace {
            self.new_sink()?;
        } else if let Err(e) = self.sink.abort() {
            if e.recovery() == Recovery::GiveUpPartitions {
                return self.give_up(input);
            }
            tracing::warn!(error = %e, "abort failed; a new producer takes over");
            self.new_sink()?;
        }
        // Rewind every partition to its first record not yet committed: the first one the
        // aborted transaction processed, or else the first one still buffered.
        let mut targets = self.sync.first_offsets();
        self.sync.clear();
        self.clocks.aborted();
        for (tp, task) in self.tasks.iter_mut() {
            if let Some(o) = task.aborted() {
                targets.insert(tp.clone(), o);
            }
        }
        for (tp, o) in targets.into_iter().filter(|(tp, _)| self.tasks.contains_key(tp)) {
            input.seek(&tp, Some(o))?;
            self.clocks.seeked(&tp, o);
        }
        Ok(())
    }

    /// Takes a polled record; `drain` decides when it is processed.
    pub fn buffer(&mut self, record: InRecord) {
        self.clocks.polled(&record);
        self.sync.push(record);
    }

    /// Processes every buffered record that time synchronization lets through now.
    pub fn drain(&mut self, input: &dyn Input) -> Result<(), RuntimeError> {
        let now = Instant::now();
        self.pulse.beat_at(now);
        self.drain_at(input, now)
    }

    /// As `drain`, with `now` deciding how long an empty join input has been waited for.
    pub fn drain_at(&mut self, input: &dyn Input, now: Instant) -> Result<(), RuntimeError> {
        self.check_ends(input);
        loop {
            let next = {
                let clocks = &self.clocks;
                self.sync.next(now, &|tp| clocks.final_through(tp))
            };
            let Some(r) = next else { return Ok(()) };
            self.process(input, r)?;
        }
    }
}

/// A record could not be queued in the open transaction.
enum SendError {
    Sink(SinkError),
    /// Whether a destination exists could not be learned (a transient metadata failure).
    Destination(RuntimeError),
}

/// Why `topic` cannot be a Kafka topic name (None if it can): a `reply-to` header is
/// client input, and a name the client library cannot even ask about must not stall the
/// partition (nor reach rdkafka, which panics on names over 512 bytes).
fn valid_topic_name(topic: &str) -> Option<String> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    (!ok).then(|| format!("destination topic name {:?} is not a valid Kafka topic name", topic.chars().take(80).collect::<String>()))
}

/// Partitions for a log line: `topic-0,topic-1`.
fn list(partitions: &[TopicPartition]) -> String {
    partitions.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}
