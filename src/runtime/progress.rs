//! Event-time progress: which times a table is final for, whoever happened to be alive.
//!
//! A wait that expires, or a join that looks a table up as of a record's time, must not
//! decide before every record of that time has reached the table. "The table's topic is
//! at its end" is not enough: a command may still sit in another task, in an open
//! transaction, or in a partition whose owner just died. So the writers say how far they
//! are, in event time:
//!
//! - **Writer side.** A task whose events a global table reads publishes, in the same
//!   transaction as those events, a `ProgressRecord` for its input partition (key
//!   `<topic>/<partition>` in `<app>-progress`): it is *final through* a time (every event
//!   it will still write has a later time), and which offsets of the events topic hold
//!   everything the claim covers. An input partition is final through the largest time
//!   processed, minus one; once the task has processed it to its end (the broker's
//!   read_committed end offset, asked at time `now`), through `now - max_task_idle_ms`.
//!   Within a partition a record older than one before it counts at the running maximum
//!   (`InputClock::effective`). A record that reaches the broker more than
//!   `max_task_idle_ms` after its own time is late: it keeps its time, and what was decided
//!   before it came stays decided.
//! - **Reader side.** `ProgressBoard` reads `<app>-progress`. A global table is final
//!   through the minimum, over every partition of its writer's input, of the newest claim
//!   whose offsets the table has read. A partition without an owner publishes nothing and
//!   holds the table back: correct, and a failover costs that latency.
//!
//! A replay processes the same records in the same order and meets the same claims' data,
//! so it decides as live processing did; only late records (more than `max_task_idle_ms`
//! between their time and reaching the broker) may count differently.

use super::reader::{Followed, PartitionReader};
use super::RuntimeError;
use crate::kafka::Clients;
use crate::record::TopicPartition;
use rdkafka::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What an engine's tasks publish: where, and for which input topics (with the output
/// topic their claims cover, and its partition count).
#[derive(Debug, Clone)]
pub(crate) struct ProgressSettings {
    pub topic: String,
    pub writers: HashMap<String, (String, i32)>,
}

/// A writer's claim about one input partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressRecord {
    /// Every output still to come from this input partition has an event time after this.
    pub final_through: i64,
    /// Per output topic and partition, the offset of the last record the claim covers: a
    /// reader must have read past it before it may rely on the claim. It includes what
    /// earlier owners of the partition wrote (the end offsets when the task opened).
    pub written: BTreeMap<String, BTreeMap<i32, i64>>,
}

/// The key of an input partition's progress record.
pub fn key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// What a task may claim about one input partition, in event time. Transactional: an
/// abort takes back what the open transaction added.
#[derive(Debug, Clone, Copy, Default)]
pub struct InputClock {
    committed: Claim,
    open: Claim,
}

#[derive(Debug, Clone, Copy)]
struct Claim {
    /// The largest record time processed.
    max: i64,
    /// Final through this because the input was read to its end.
    caught_up: i64,
}

impl Default for Claim {
    fn default() -> Self {
        Self { max: i64::MIN, caught_up: i64::MIN }
    }
}

impl Claim {
    fn final_through(&self) -> i64 {
        self.max.saturating_sub(1).max(self.caught_up)
    }
}

impl InputClock {
    /// The time a record of time `ts` is processed at: its own, or the running maximum of
    /// its partition if it is older (out of order). Event time never goes back within a
    /// partition, and a replay, meeting the records in the same order, counts them alike.
    pub fn effective(&self, ts: i64) -> i64 {
        ts.max(self.open.max)
    }

    /// A record was processed at (effective) time `ts`: everything before it is final.
    pub fn processed(&mut self, ts: i64) {
        self.open.max = self.open.max.max(ts);
    }

    /// The input was processed to its end as of wall-clock `now_ms`: whatever comes later
    /// has a time after `now_ms - lateness_ms`, or is late (it keeps its time, but what
    /// was decided before it came stays decided).
    pub fn caught_up(&mut self, now_ms: i64, lateness_ms: i64) {
        self.open.caught_up = self.open.caught_up.max(now_ms.saturating_sub(lateness_ms).saturating_sub(1));
    }

    /// Final through this, counting the open transaction.
    pub fn final_through(&self) -> i64 {
        self.open.final_through()
    }

    /// Final through this, as far as committed transactions say.
    pub fn published(&self) -> i64 {
        self.committed.final_through()
    }

    pub fn committed(&mut self) {
        self.committed = self.open;
    }

    pub fn aborted(&mut self) {
        self.open = self.committed;
    }
}

/// Claims kept per source partition while the reader has not read their offsets yet.
const MAX_PENDING: usize = 4_096;

/// The claims of every writer, as read from `<app>-progress`.
#[derive(Default)]
pub struct ProgressBoard {
    sources: Mutex<HashMap<String, Source>>,
    /// The progress topic has been read to its end once.
    loaded: AtomicBool,
}

#[derive(Default)]
struct Source {
    /// The largest claim whose offsets a reader has read.
    credited: Option<i64>,
    /// Newer claims, oldest first.
    pending: VecDeque<ProgressRecord>,
}

impl ProgressBoard {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A claim read from the topic.
    pub fn record(&self, key: &str, r: ProgressRecord) {
        let mut sources = self.sources.lock().expect("progress lock");
        let s = sources.entry(key.to_string()).or_default();
        if s.pending.len() >= MAX_PENDING {
            s.pending.pop_front();
        }
        s.pending.push_back(r);
    }

    /// How far source `key` is final through, for a reader whose next offset to read in
    /// each output partition is `next(topic, partition)`: the largest claim whose offsets
    /// it has read past. i64::MIN while there is none.
    pub fn final_through(&self, key: &str, next: &dyn Fn(&str, i32) -> Option<i64>) -> i64 {
        let mut sources = self.sources.lock().expect("progress lock");
        let Some(s) = sources.get_mut(key) else { return i64::MIN };
        let read = |r: &ProgressRecord| {
            r.written.iter().all(|(topic, parts)| parts.iter().all(|(p, o)| next(topic, *p).is_some_and(|n| n > *o)))
        };
        // Offsets only grow in log order, so the newest claim read covers the older ones.
        if let Some(i) = s.pending.iter().rposition(read) {
            for r in s.pending.drain(..=i) {
                s.credited = Some(s.credited.map_or(r.final_through, |c| c.max(r.final_through)));
            }
        }
        s.credited.unwrap_or(i64::MIN)
    }

    /// Whether the topic has been read to its end once since the start.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::SeqCst)
    }

    /// Follows `topic` from its beginning until `stop`.
    pub fn follow(self: Arc<Self>, clients: Clients, topic: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("millrace-progress".into())
            .spawn(move || {
                if let Err(e) = self.follow_loop(&clients, &topic, &stop) {
                    tracing::error!(%topic, error = %e, "progress reader stopped; tables that wait for it stop deciding");
                }
            })
            .expect("spawn progress reader")
    }

    fn follow_loop(&self, clients: &Clients, topic: &str, stop: &AtomicBool) -> Result<(), RuntimeError> {
        let reader = PartitionReader::new(clients, "follow progress", format!("millrace-progress-{topic}"), &[("fetch.wait.max.ms", "10")])?;
        reader.assign(&[(TopicPartition::new(topic, 0), None)])?;
        while !stop.load(Ordering::SeqCst) {
            match reader.follow(Duration::from_millis(100)) {
                Some(Followed::Record(m)) => {
                    let (Some(k), Some(v)) = (m.key(), m.payload()) else { continue };
                    match serde_json::from_slice::<ProgressRecord>(v) {
                        Ok(r) => self.record(&String::from_utf8_lossy(k), r),
                        Err(e) => tracing::warn!(%topic, offset = m.offset(), error = %e, "unreadable progress record skipped"),
                    }
                }
                Some(Followed::End(_)) | Some(Followed::Idle) => self.loaded.store(true, Ordering::SeqCst),
                None => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(final_through: i64, offset: i64) -> ProgressRecord {
        ProgressRecord { final_through, written: BTreeMap::from([("events".to_string(), BTreeMap::from([(0, offset)]))]) }
    }

    #[test]
    fn a_claim_counts_once_its_offsets_are_read() {
        let board = ProgressBoard::new();
        assert_eq!(board.final_through("cmds/0", &|_, _| Some(0)), i64::MIN, "no claim yet");
        board.record("cmds/0", claim(100, 9));
        board.record("cmds/0", claim(200, 19));
        assert_eq!(board.final_through("cmds/0", &|_, _| Some(9)), i64::MIN, "offset 9 not read yet");
        assert_eq!(board.final_through("cmds/0", &|_, _| Some(10)), 100);
        assert_eq!(board.final_through("cmds/0", &|_, _| Some(15)), 100, "the newer claim needs offset 19");
        assert_eq!(board.final_through("cmds/0", &|_, _| Some(25)), 200);
        // A new owner's first claim may be lower: what was claimed stays claimed.
        board.record("cmds/0", claim(150, 30));
        assert_eq!(board.final_through("cmds/0", &|_, _| Some(31)), 200);
        assert_eq!(board.final_through("cmds/1", &|_, _| Some(31)), i64::MIN, "another source");
    }

    #[test]
    fn a_clock_takes_back_what_an_abort_took_back_and_never_goes_back_in_time() {
        let mut c = InputClock::default();
        c.processed(c.effective(1_000));
        assert_eq!(c.final_through(), 999);
        c.committed();
        c.caught_up(5_000, 100);
        assert_eq!(c.final_through(), 4_899, "read to its end at 5000, 100 ms allowed for lateness");
        assert_eq!(c.effective(3_000), 3_000, "late: it keeps its own time");
        c.aborted();
        assert_eq!(c.final_through(), 999);
        assert_eq!(c.effective(998), 1_000, "out of order: the running maximum");
    }
}
