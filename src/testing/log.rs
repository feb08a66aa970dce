//! The driver's broker: an in-memory log per topic partition with the transaction
//! semantics the engine relies on, implementing the engine's ports.
//!
//! - A transaction's records reach the log only when it commits, all at once, together
//!   with its input offsets: aborted or abandoned records are never seen by a reader
//!   (read_committed).
//! - Each `MemorySink` holds an epoch of its transactional id. Making a new sink with the
//!   same id (a restarted instance, a zombie's successor) bumps the epoch, and every older
//!   sink is fenced: its commit fails with `SinkError::Fenced`, and nothing of it lands.
//! - Keyed records go to murmur2(key) modulo the topic's real partition count.
//!
//! May use: record, codec, runtime::ports, sink (its error type), store.

use super::DriverRecord;
use crate::codec::murmur2::partition_for_key;
use crate::record::{InRecord, OutRecord, TopicPartition};
use crate::runtime::route::EventSource;
use crate::runtime::ports::{ChangelogReader, Destination, GroupToken, Input, Sink};
use crate::runtime::RuntimeError;
use crate::sink::SinkError;
use crate::store::RocksStore;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Default)]
struct LogState {
    partitions: BTreeMap<TopicPartition, Vec<DriverRecord>>,
    /// Partition counts of the topics the topology knows (others have one).
    counts: BTreeMap<String, i32>,
    /// The group's committed input offsets (next offset to read).
    committed: BTreeMap<TopicPartition, i64>,
    /// Current epoch per transactional id.
    epochs: HashMap<String, u64>,
    /// Largest record (key + value bytes) a topic accepts, where a test set one.
    max_bytes: HashMap<String, usize>,
    /// Transactions committed, for tests that count them.
    commits: u64,
    /// Commits refused because a newer producer epoch fenced the sink.
    fenced: u64,
    /// Restores still to stall half-way (a test's fault).
    stalls: u32,
    /// Commits still to hang (a test's fault).
    hangs: u32,
    /// Commits still to fail in the producer (a test's fault).
    failures: u32,
    /// Commits still to take `slow_for` before they answer (a test's fault).
    slows: u32,
    slow_for: std::time::Duration,
}

/// The shared log; cheap to clone.
#[derive(Clone, Default)]
pub struct MemoryLog(Arc<Mutex<LogState>>);

impl MemoryLog {
    pub fn new(counts: BTreeMap<String, i32>) -> Self {
        Self(Arc::new(Mutex::new(LogState { counts, ..LogState::default() })))
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        self.0.lock().expect("memory log lock")
    }

    pub fn partitions(&self, topic: &str) -> i32 {
        self.state().counts.get(topic).copied().unwrap_or(1)
    }

    /// Appends a record outside any transaction (an external producer); returns where.
    pub fn append(&self, topic: &str, key: Option<Vec<u8>>, value: Option<Vec<u8>>, headers: crate::record::Headers, timestamp: i64) -> (TopicPartition, i64) {
        let mut st = self.state();
        let partition = key.as_deref().map_or(0, |k| partition_for_key(k, st.counts.get(topic).copied().unwrap_or(1)));
        let tp = TopicPartition::new(topic, partition);
        let log = st.partitions.entry(tp.clone()).or_default();
        let offset = log.len() as i64;
        log.push(DriverRecord { topic: topic.into(), partition, offset, key, value, headers, timestamp });
        (tp, offset)
    }

    /// Committed records of `topic`, in partition then offset order.
    pub fn read(&self, topic: &str) -> Vec<DriverRecord> {
        self.state().partitions.iter().filter(|(tp, _)| tp.topic == topic).flat_map(|(_, l)| l.iter().cloned()).collect()
    }

    /// The committed record at `offset` of `tp`, if any.
    pub fn get(&self, tp: &TopicPartition, offset: i64) -> Option<DriverRecord> {
        self.state().partitions.get(tp)?.get(usize::try_from(offset).ok()?).cloned()
    }

    /// Offset after the last committed record of `tp`.
    pub fn end(&self, tp: &TopicPartition) -> i64 {
        self.state().partitions.get(tp).map_or(0, |l| l.len() as i64)
    }

    pub fn committed_offset(&self, tp: &TopicPartition) -> Option<i64> {
        self.state().committed.get(tp).copied()
    }

    /// Another producer initialized `transactional_id` (a successor, a restarted twin):
    /// every sink holding an older epoch is fenced from now on.
    pub fn bump_epoch(&self, transactional_id: &str) -> u64 {
        let mut st = self.state();
        let e = st.epochs.entry(transactional_id.to_string()).or_insert(0);
        *e += 1;
        *e
    }

    /// Fault: the group's committed offset of `tp` moves back to `offset`, as when a
    /// transaction's offset commit was dropped while its outputs stayed committed.
    pub fn rewind_committed(&self, tp: &TopicPartition, offset: i64) {
        self.state().committed.insert(tp.clone(), offset);
    }

    /// How many producers have initialized `transactional_id` so far (its epoch).
    pub fn producers(&self, transactional_id: &str) -> u64 {
        self.state().epochs.get(transactional_id).copied().unwrap_or(0)
    }

    /// Makes `topic` refuse records larger than `bytes` (key + value), as a broker with
    /// that `max.message.bytes` does.
    pub fn set_max_record_bytes(&self, topic: &str, bytes: usize) {
        self.state().max_bytes.insert(topic.to_string(), bytes);
    }

    /// Fault: the next `n` restores that have a tail apply half of it and then stall (a
    /// broker gone, a transaction holding the end back), as `RestoreStalled`.
    pub fn stall_restores(&self, n: u32) {
        self.state().stalls = n;
    }

    /// Fault: the next `n` commits hang, as librdkafka's `send_offsets_to_transaction` can
    /// after a broker restart. The sink answers `SinkError::Hung`, as the real one does once
    /// it gave up waiting, and that producer answers nothing more: its abort fails too.
    pub fn hang_commits(&self, n: u32) {
        self.state().hangs = n;
    }

    /// Fault: the next `n` commits fail in the producer, as a transaction does whose broker
    /// went away (`SinkError::Failed`, a timeout): nothing of it lands.
    pub fn fail_commits(&self, n: u32) {
        self.state().failures = n;
    }


    /// Fault: the next `n` commits take `each` before they answer (and then succeed), as
    /// one held up in librdkafka does while the processing thread waits on it.
    pub fn slow_commits(&self, n: u32, each: std::time::Duration) {
        let mut st = self.state();
        (st.slows, st.slow_for) = (n, each);
    }

    /// Takes one of a fault's remaining occurrences, if any is left.
    fn take(&self, fault: impl FnOnce(&mut LogState) -> &mut u32) -> bool {
        let mut st = self.state();
        let left = fault(&mut st);
        let due = *left > 0;
        *left = left.saturating_sub(1);
        due
    }


    pub fn commits(&self) -> u64 {
        self.state().commits
    }

    /// Commits refused because a newer producer with the same transactional id fenced them.
    pub fn fenced_commits(&self) -> u64 {
        self.state().fenced
    }
}

/// A transactional producer over the memory log.
pub struct MemorySink {
    log: MemoryLog,
    transactional_id: String,
    epoch: u64,
    exactly_once: bool,
    open: bool,
    pending: Vec<(OutRecord, Option<(TopicPartition, i64)>)>,
    origin: Option<(TopicPartition, i64)>,
    /// A commit hung (`MemoryLog::hang_commits`): nothing more is answered.
    hung: bool,
}

impl MemorySink {
    /// Initializes `transactional_id` anew: older sinks with it are fenced.
    pub fn new(log: &MemoryLog, transactional_id: &str, exactly_once: bool) -> Self {
        let epoch = log.bump_epoch(transactional_id);
        Self { log: log.clone(), transactional_id: transactional_id.into(), epoch, exactly_once, open: false, pending: Vec::new(), origin: None, hung: false }
    }

    fn fenced(&self) -> SinkError {
        SinkError::Fenced {
            transactional_id: self.transactional_id.clone(),
            source: KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced),
        }
    }

    fn hung(&self) -> SinkError {
        SinkError::Hung { transactional_id: self.transactional_id.clone(), op: "send_offsets_to_transaction", waited_s: 45 }
    }

    fn is_current(&self) -> bool {
        self.log.state().epochs.get(&self.transactional_id) == Some(&self.epoch)
    }
}

impl Sink for MemorySink {
    fn is_open(&self) -> bool {
        self.open
    }

    fn exactly_once(&self) -> bool {
        self.exactly_once
    }

    fn begin(&mut self) -> Result<(), SinkError> {
        if !self.is_current() {
            return Err(self.fenced());
        }
        if !self.open {
            self.pending.clear();
            self.origin = None;
            self.open = true;
        }
        Ok(())
    }

    fn set_origin(&mut self, input: Option<(&TopicPartition, i64)>) {
        self.origin = input.map(|(tp, o)| (tp.clone(), o));
    }

    fn send(&mut self, record: &OutRecord) -> Result<(), SinkError> {
        self.pending.push((record.clone(), self.origin.clone()));
        Ok(())
    }

    /// Records of the memory log take their offsets when the transaction commits: none is
    /// written before.
    fn settle(&mut self) -> Result<HashMap<TopicPartition, i64>, SinkError> {
        Ok(HashMap::new())
    }

    fn commit(&mut self, offsets: &[(TopicPartition, i64)], group: Option<&GroupToken>) -> Result<HashMap<TopicPartition, i64>, SinkError> {
        let _ = group;
        if self.log.take(|s| &mut s.slows) {
            let each = self.log.state().slow_for;
            std::thread::sleep(each);
        }
        if self.hung || (self.exactly_once && self.log.take(|s| &mut s.hangs)) {
            self.hung = true;
            return Err(self.hung());
        }
        if self.exactly_once && self.log.take(|s| &mut s.failures) {
            return Err(SinkError::Failed {
                transactional_id: self.transactional_id.clone(),
                op: "send_offsets_to_transaction",
                source: KafkaError::MessageProduction(RDKafkaErrorCode::OperationTimedOut),
            });
        }
        let mut st = self.log.state();
        if self.exactly_once && st.epochs.get(&self.transactional_id) != Some(&self.epoch) {
            st.fenced += 1;
            drop(st);
            self.open = false;
            self.pending.clear();
            return Err(self.fenced());
        }
        // A topic refuses a record larger than it accepts: the whole transaction fails,
        // and the refusal names the input record that wrote it.
        let refused: Vec<crate::sink::Poisoned> = self
            .pending
            .iter()
            .filter_map(|(r, origin)| {
                let limit = *st.max_bytes.get(&r.topic)?;
                let bytes = r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len);
                let (input, offset) = origin.clone()?;
                (bytes > limit).then(|| crate::sink::Poisoned {
                    input,
                    offset,
                    reason: format!("a record of {} KB for {} was refused: Broker: Message size too large", bytes.div_ceil(1024), r.topic),
                })
            })
            .collect();
        if !refused.is_empty() {
            drop(st);
            return Err(SinkError::Poisoned { transactional_id: self.transactional_id.clone(), poisoned: refused });
        }
        let mut written = HashMap::new();
        for (r, _) in self.pending.drain(..) {
            let count = st.counts.get(&r.topic).copied().unwrap_or(1);
            let partition = r.partition.unwrap_or_else(|| r.key.as_deref().map_or(0, |k| partition_for_key(k, count)));
            let tp = TopicPartition::new(r.topic.as_str(), partition);
            let log = st.partitions.entry(tp.clone()).or_default();
            let offset = log.len() as i64;
            log.push(DriverRecord {
                topic: r.topic,
                partition,
                offset,
                key: r.key,
                value: r.value,
                headers: r.headers,
                timestamp: r.timestamp.unwrap_or(0),
            });
            written.insert(tp, offset);
        }
        // The offsets commit with the transaction (at-least-once: the engine commits them
        // through the input afterwards).
        if self.exactly_once {
            for (tp, o) in offsets {
                st.committed.insert(tp.clone(), *o);
            }
        }
        st.commits += 1;
        self.open = false;
        Ok(written)
    }

    fn abort(&mut self) -> Result<(), SinkError> {
        if self.hung {
            return Err(self.hung());
        }
        self.pending.clear();
        self.open = false;
        Ok(())
    }
}

/// The group member's input: every partition of the input topics, with its position.
pub struct MemoryInput {
    log: MemoryLog,
    assigned: Vec<TopicPartition>,
    positions: Mutex<BTreeMap<TopicPartition, i64>>,
    /// Topics that exist beyond those with records: a destination check passes for them.
    known: Vec<String>,
}

impl MemoryInput {
    pub fn new(log: &MemoryLog, assigned: Vec<TopicPartition>, known: Vec<String>) -> Self {
        Self { log: log.clone(), assigned, positions: Mutex::new(BTreeMap::new()), known }
    }

    pub fn assigned(&self) -> &[TopicPartition] {
        &self.assigned
    }

    /// The next committed record of any assigned partition past its position, if any.
    pub fn poll(&self) -> Option<InRecord> {
        let mut positions = self.positions.lock().expect("positions lock");
        for tp in &self.assigned {
            let at = positions.get(tp).copied().unwrap_or(0);
            if let Some(r) = self.log.get(tp, at) {
                positions.insert(tp.clone(), at + 1);
                return Some(InRecord {
                    topic: r.topic,
                    partition: r.partition,
                    offset: r.offset,
                    timestamp: Some(r.timestamp),
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                });
            }
        }
        None
    }
}

impl Input for MemoryInput {
    fn assignment(&self) -> Result<Vec<TopicPartition>, RuntimeError> {
        Ok(self.assigned.clone())
    }

    fn committed(&self, partitions: &[TopicPartition], _timeout: Duration) -> Result<Vec<(TopicPartition, Option<i64>)>, RuntimeError> {
        Ok(partitions.iter().map(|tp| (tp.clone(), self.log.committed_offset(tp))).collect())
    }

    fn seek(&self, partition: &TopicPartition, offset: Option<i64>) -> Result<(), RuntimeError> {
        self.positions.lock().expect("positions lock").insert(partition.clone(), offset.unwrap_or(0));
        Ok(())
    }

    fn assignment_lost(&self) -> bool {
        false
    }

    fn group(&self) -> Option<GroupToken> {
        Some(GroupToken(std::sync::Arc::new(())))
    }

    fn commit_offsets(&self, offsets: &[(TopicPartition, i64)]) -> Result<(), RuntimeError> {
        let mut st = self.log.state();
        for (tp, o) in offsets {
            st.committed.insert(tp.clone(), *o);
        }
        Ok(())
    }

    fn end_offsets(&self, partitions: &[TopicPartition]) -> Result<HashMap<TopicPartition, i64>, RuntimeError> {
        Ok(partitions.iter().map(|tp| (tp.clone(), self.log.end(tp))).collect())
    }

    fn start_offsets(&self, partitions: &[TopicPartition]) -> Result<HashMap<TopicPartition, i64>, RuntimeError> {
        Ok(partitions.iter().map(|tp| (tp.clone(), 0)).collect())
    }

    fn positions(&self) -> HashMap<TopicPartition, i64> {
        let positions = self.positions.lock().expect("positions lock");
        self.assigned.iter().map(|tp| (tp.clone(), positions.get(tp).copied().unwrap_or(0))).collect()
    }

    fn destination(&self, topic: &str) -> Destination {
        let st = self.log.state();
        if st.counts.contains_key(topic) || self.known.iter().any(|k| k == topic) || st.partitions.keys().any(|tp| tp.topic == topic) {
            Destination::Exists
        } else {
            Destination::Refused(format!("destination topic {topic} does not exist"))
        }
    }
}

/// Restores from the memory log, as `runtime::restore` does from Kafka.
pub struct MemoryChangelog {
    pub log: MemoryLog,
}

impl ChangelogReader for MemoryChangelog {
    fn restore(&self, store: &RocksStore, changelog: &str, accept: &dyn Fn(Option<&[u8]>) -> bool, versions: bool) -> Result<u64, RuntimeError> {
        let tp = TopicPartition::new(changelog, store.partition());
        let from = store.checkpoint()?.map_or(0, |o| o + 1);
        let mut tail: Vec<DriverRecord> = (from..self.log.end(&tp)).filter_map(|o| self.log.get(&tp, o)).collect();
        let stalled = !tail.is_empty() && self.log.take(|s| &mut s.stalls);
        if stalled {
            tail.truncate(tail.len() / 2);
        }
        if let Some(last) = tail.last() {
            let entries = tail
                .iter()
                .filter(|r| accept(r.value.as_deref()))
                .filter_map(|r| Some((r.key.as_deref()?, r.value.as_deref(), r.timestamp)));
            if versions {
                store.write_versions(entries, Some(last.offset))?;
            } else {
                store.write(entries.map(|(k, v, _)| (k, v)), Some(last.offset))?;
            }
        }
        if stalled {
            // What was read is applied and checkpointed, as the Kafka reader does.
            return Err(RuntimeError::RestoreStalled {
                topic: changelog.to_string(),
                partition: store.partition(),
                position: tail.last().map(|r| r.offset + 1),
                end: self.log.end(&tp),
                waited_s: 10,
                cause: crate::runtime::reader::NOTHING_DELIVERED.to_string(),
            });
        }
        Ok(tail.len() as u64)
    }

    /// Re-puts every event of the task's aggregates (idempotent) when the history is
    /// incomplete or the store was just brought forward from its changelog.
    fn ensure_event_history(&self, store: &RocksStore, ev: &EventSource, restored: u64) -> Result<(), RuntimeError> {
        if store.events_complete()? && restored == 0 {
            return Ok(());
        }
        let mine = store.partition();
        let events: Vec<(Vec<u8>, u64, Vec<u8>)> = self
            .log
            .read(&ev.topic)
            .into_iter()
            .filter(|r| r.key.as_deref().is_some_and(|k| partition_for_key(k, ev.input_partitions) == mine))
            .filter_map(|r| Some((r.key.clone()?, r.json()["version"].as_u64()?, r.value.clone()?)))
            .collect();
        store.put_events(&events, true)?;
        Ok(())
    }
}
