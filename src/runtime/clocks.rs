//! Event time of one engine's clocked inputs: the inputs whose tasks publish progress
//! (`runtime::progress`) and the table inputs a join's stream waits on. It owns each such
//! partition's clock, where the engine knows the partition's next offset to be, when it
//! is read to its end (final through now minus `max_task_idle`), and the progress records
//! a commit carries. The engine tells it what happened (a record polled, a task opened or
//! closed, a rewind, a commit); it answers how far each input is final.

use super::ports::{Input, Sink};
use super::progress::{self, InputClock, ProgressRecord, ProgressSettings};
use crate::record::{InRecord, OutRecord, TopicPartition};
use crate::sink::SinkError;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

pub(crate) struct Clocks {
    /// Event time per clocked input partition of an open task.
    clocks: HashMap<TopicPartition, InputClock>,
    /// Topics whose partitions get a clock.
    clocked: HashSet<String>,
    /// What this engine's tasks publish, if anything.
    progress: Option<ProgressSettings>,
    /// Highest offset written per output partition that progress claims cover: what this
    /// engine wrote, and what was there when a task that publishes opened.
    written: HashMap<TopicPartition, i64>,
    /// Tasks that publish progress and have not learned their output's end offsets yet.
    unseeded: HashSet<TopicPartition>,
    /// The next offset of each clocked input as the engine knows it: where it was assigned
    /// or rewound to, and past every record polled. The consumer knows its position only
    /// once it has fetched something; None: nothing committed, the first offset is asked.
    next_of: HashMap<TopicPartition, Option<i64>>,
    ends_checked: Instant,
    /// How often end offsets are asked for, and how late a record may still come.
    end_check: Duration,
    max_task_idle: Duration,
    /// Wall-clock milliseconds (the broker-free driver's stands far ahead).
    clock: fn() -> i64,
}

impl Clocks {
    /// `tables`: the first topic of each sync group (a join's table input).
    pub fn new(tables: impl Iterator<Item = String>, progress: Option<ProgressSettings>, end_check: Duration, max_task_idle: Duration, clock: fn() -> i64) -> Self {
        let clocked = tables.chain(progress.iter().flat_map(|p| p.writers.keys().cloned())).collect();
        Self {
            clocks: HashMap::new(),
            clocked,
            progress,
            written: HashMap::new(),
            unseeded: HashSet::new(),
            next_of: HashMap::new(),
            ends_checked: Instant::now(),
            end_check,
            max_task_idle,
            clock,
        }
    }

    pub fn publishes(&self) -> bool {
        self.progress.is_some()
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<&InputClock> {
        self.clocks.get(tp)
    }

    pub fn get_mut(&mut self, tp: &TopicPartition) -> Option<&mut InputClock> {
        self.clocks.get_mut(tp)
    }

    /// How far `tp` is final; an input without a clock never is.
    pub fn final_through(&self, tp: &TopicPartition) -> i64 {
        self.clocks.get(tp).map_or(i64::MIN, InputClock::final_through)
    }

    /// A transaction committed: what the clocks held for it is now published.
    pub fn committed(&mut self) {
        for clock in self.clocks.values_mut() {
            clock.committed();
        }
    }

    /// The open transaction aborted: what it processed will be read again.
    pub fn aborted(&mut self) {
        for clock in self.clocks.values_mut() {
            clock.aborted();
        }
    }

    /// The input of `tp` was moved to `next`.
    pub fn seeked(&mut self, tp: &TopicPartition, next: i64) {
        if let Some(n) = self.next_of.get_mut(tp) {
            *n = Some(next);
        }
    }

    /// A record was polled: the input is past it.
    pub fn polled(&mut self, record: &InRecord) {
        if self.clocks.is_empty() {
            return;
        }
        if let Some(next) = self.next_of.get_mut(&TopicPartition::new(record.topic.as_str(), record.partition)) {
            *next = Some(next.map_or(record.offset + 1, |n| n.max(record.offset + 1)));
        }
    }

    /// Where the clocked inputs of a new assignment start: their committed offsets.
    pub fn assigned_at(&mut self, committed: &[(TopicPartition, Option<i64>)]) {
        for (tp, offset) in committed.iter().filter(|(tp, _)| self.clocked.contains(&tp.topic)) {
            self.next_of.insert(tp.clone(), *offset);
        }
    }

    /// The task of `tp` opened: a clock if its input is clocked.
    pub fn opened(&mut self, tp: &TopicPartition) {
        if self.clocked.contains(&tp.topic) {
            self.clocks.insert(tp.clone(), InputClock::default());
            if self.progress.as_ref().is_some_and(|p| p.writers.contains_key(&tp.topic)) {
                self.unseeded.insert(tp.clone());
            }
        }
    }

    /// The task of `tp` closed.
    pub fn closed(&mut self, tp: &TopicPartition) {
        self.clocks.remove(tp);
        self.next_of.remove(tp);
        self.unseeded.remove(tp);
    }

    /// Where the input of `tp` is, as the engine knows it (kept across a task's reopening).
    pub fn next_of(&self, tp: &TopicPartition) -> Option<Option<i64>> {
        self.next_of.get(tp).copied()
    }

    pub fn set_next_of(&mut self, tp: &TopicPartition, next: Option<i64>) {
        self.next_of.insert(tp.clone(), next);
    }

    /// The clocks of tasks that publish progress.
    fn publishers(&self) -> impl Iterator<Item = (&TopicPartition, &InputClock)> {
        let writers = self.progress.as_ref().map(|p| &p.writers);
        self.clocks.iter().filter(move |(tp, _)| writers.is_some_and(|w| w.contains_key(&tp.topic)))
    }

    /// Whether a publisher's claim has moved `step` past the last one published: an idle
    /// input moving on with the clock, worth a transaction of its own.
    pub fn claim_due(&self, step: i64) -> bool {
        self.publishers().any(|(_, c)| c.final_through() > c.published().saturating_add(step))
    }

    /// Asks the broker for the end offsets of the clocked inputs with nothing waiting here
    /// (`held`: records of it are buffered), at most every `end_check`: one read to its
    /// end is final through the time asked, minus `max_task_idle`.
    pub fn check_ends(&mut self, input: &dyn Input, held: &dyn Fn(&TopicPartition) -> bool) {
        if self.clocks.is_empty() || self.ends_checked.elapsed() < self.end_check {
            return;
        }
        self.ends_checked = Instant::now();
        let candidates: Vec<TopicPartition> = self.clocks.keys().filter(|tp| !held(tp)).cloned().collect();
        if candidates.is_empty() {
            return;
        }
        // The time is taken before asking: whatever the broker had then is below its answer.
        let asked = (self.clock)();
        let ends = match input.end_offsets(&candidates) {
            Ok(ends) => ends,
            Err(e) => {
                tracing::debug!(error = %e, "end offsets unknown; event time waits");
                return;
            }
        };
        // Nothing committed and nothing polled yet: the input starts at its first offset.
        let unknown: Vec<TopicPartition> = candidates.iter().filter(|tp| matches!(self.next_of.get(*tp), Some(None))).cloned().collect();
        if !unknown.is_empty() {
            if let Ok(starts) = input.start_offsets(&unknown) {
                for (tp, o) in starts {
                    if let Some(next @ None) = self.next_of.get_mut(&tp) {
                        *next = Some(o);
                    }
                }
            }
        }
        let positions = input.positions();
        tracing::trace!(?ends, ?positions, next_of = ?self.next_of, "end offsets of clocked inputs");
        let lateness = self.max_task_idle.as_millis() as i64;
        for (tp, end) in ends {
            let known = self.next_of.get(&tp).copied().flatten();
            let at = match (known, positions.get(&tp)) {
                (Some(a), Some(b)) => a.max(*b),
                (a, b) => a.or(b.copied()).unwrap_or(i64::MIN),
            };
            if let Some(clock) = self.clocks.get_mut(&tp) {
                if at >= end {
                    clock.caught_up(asked, lateness);
                }
            }
        }
    }

    /// Sends, into the open transaction, a progress record for each task whose claim moved
    /// since the last commit: how far it is final, and which offsets hold what it covers.
    pub fn publish(&mut self, input: &dyn Input, sink: &mut dyn Sink) -> Result<(), SinkError> {
        let Some(settings) = self.progress.clone() else { return Ok(()) };
        let due: Vec<(TopicPartition, i64)> =
            self.publishers().filter(|(_, c)| c.final_through() > c.published()).map(|(tp, c)| (tp.clone(), c.final_through())).collect();
        if due.is_empty() {
            return Ok(());
        }
        // What earlier owners wrote: the committed end of every output partition.
        let unseeded: Vec<TopicPartition> = self.unseeded.iter().cloned().collect();
        for tp in unseeded {
            let (out, partitions) = &settings.writers[&tp.topic];
            let outputs: Vec<TopicPartition> = (0..*partitions).map(|p| TopicPartition::new(out.as_str(), p)).collect();
            match input.end_offsets(&outputs) {
                Ok(ends) if ends.len() == outputs.len() => {
                    for (o, end) in ends {
                        let w = self.written.entry(o).or_insert(-1);
                        *w = (*w).max(end - 1);
                    }
                    self.unseeded.remove(&tp);
                }
                Ok(_) | Err(_) => tracing::debug!(task = %tp, "end offsets of its output unknown; its progress waits"),
            }
        }
        for (tp, o) in sink.settle()? {
            if settings.writers.values().any(|(out, _)| *out == tp.topic) {
                let w = self.written.entry(tp).or_insert(-1);
                *w = (*w).max(o);
            }
        }
        let now_ms = (self.clock)();
        sink.set_origin(None);
        for (tp, final_through) in due.into_iter().filter(|(tp, _)| !self.unseeded.contains(tp)) {
            let out = &settings.writers[&tp.topic].0;
            let written = self.written.iter().filter(|(w, _)| w.topic == *out).map(|(w, o)| (w.partition, *o)).collect();
            let claim = ProgressRecord { final_through, written: BTreeMap::from([(out.clone(), written)]) };
            sink.send(&OutRecord {
                topic: settings.topic.clone(),
                partition: Some(0),
                key: Some(progress::key(&tp.topic, tp.partition).into_bytes()),
                value: Some(serde_json::to_vec(&claim).expect("a progress record serializes")),
                headers: Default::default(),
                timestamp: Some(now_ms),
            })?;
        }
        Ok(())
    }
}
