//! The engine's task lifecycle: partitions assigned, revoked or lost, tasks opened
//! (restored first) and closed, and the ways back from a failure (a resync from the
//! committed offsets, giving up after being fenced, a clean shutdown). The commit cycle
//! itself is in `engine.rs`.

use super::{list, Engine};
use crate::record::TopicPartition;
use crate::runtime::opening::{Opened, Opener};
use crate::runtime::ports::Input;
use crate::runtime::RuntimeError;
use crate::runtime::partition_gauges;
use crate::runtime::task::{Task, TaskState};
use std::time::{Duration, Instant};

/// How long a new owner waits for the committed offsets of its partitions to be stable
/// (a previous owner's transaction to end) before it retries as a transient failure. The
/// producers that commit these offsets are millrace's, whose transactions time out after
/// 10 s (`transaction.timeout.ms`).
const STABLE_OFFSETS_WAIT: Duration = Duration::from_secs(60);

impl Engine {
    /// Fenced: another instance owns our partitions. Drop every task without retrying its
    /// writes, start a new producer, and take up whatever the group still gives us, from
    /// the committed offsets.
    pub(super) fn give_up(&mut self, input: &dyn Input) -> Result<(), RuntimeError> {
        metrics::counter!("millrace_fenced_total").increment(1);
        self.sync.clear();
        self.close_all();
        self.new_sink()?;
        self.reopen_assignment(input)
    }

    /// After a transient failure: abort whatever is open, drop every task, and take the
    /// assignment up again from the committed offsets. Each task restores only its tail;
    /// until every one is open, the instance is not ready and processes nothing.
    pub fn resync(&mut self, input: &dyn Input) -> Result<(), RuntimeError> {
        self.catalog.set_ready(self.settings.thread, false);
        tracing::info!(tasks = self.tasks.len(), "resync: every task closes and reopens from the committed offsets");
        self.sync.clear();
        let aborted = self.sink.abort();
        self.close_all();
        if let Err(e) = aborted {
            // A producer that cannot abort cannot be trusted with the next transaction; a
            // new one (init_transactions) aborts what the old one left open.
            tracing::warn!(error = %e, "abort failed; starting a new producer");
            self.new_sink()?;
        }
        self.reopen_assignment(input)
    }

    /// A new producer with the same transactional id takes over: its `init_transactions`
    /// fences the old one and aborts whatever it left open. The old one is closed on a
    /// thread of its own: closing purges its queue and waits on its brokers, which may be
    /// the very ones it could no longer reach.
    pub(super) fn new_sink(&mut self) -> Result<(), RuntimeError> {
        tracing::info!("a new producer takes over");
        let old = std::mem::replace(&mut self.sink, (self.new_sink)()?);
        self.offsets_released = false;
        // Should the thread not start, the closure (and the old producer) drops right here.
        let _ = std::thread::Builder::new().name("millrace-producer-close".into()).spawn(move || drop(old));
        Ok(())
    }

    /// Opens a task for every assigned partition, each positioned at its committed offset.
    pub(super) fn reopen_assignment(&mut self, input: &dyn Input) -> Result<(), RuntimeError> {
        let assignment = input.assignment()?;
        self.release_offsets(input, &assignment);
        let committed = input.committed(&assignment, Duration::from_secs(30))?;
        for (tp, offset) in &committed {
            input.seek(tp, *offset)?;
        }
        self.clocks.assigned_at(&committed);
        let partitions: Vec<TopicPartition> = committed.into_iter().map(|(tp, _)| tp).collect();
        tracing::info!(partitions = %list(&partitions), "reopening the assignment");
        self.open_tasks(&partitions)
    }

    /// Creates and restores a task for every assigned input partition: their stores side
    /// by side (`runtime::opening`), then the tasks.
    pub(super) fn open_tasks(&mut self, partitions: &[TopicPartition]) -> Result<(), RuntimeError> {
        self.catalog.set_ready(self.settings.thread, false);
        let new: Vec<TopicPartition> = partitions
            .iter()
            .filter(|tp| self.settings.routes.contains_key(&tp.topic) && !self.tasks.contains_key(*tp))
            .cloned()
            .collect();
        let jobs: Vec<_> = new.iter().filter_map(|tp| Some((tp.clone(), self.settings.routes[&tp.topic].state.clone()?))).collect();
        let mut opened = self.opener().open_all(&jobs)?;
        for tp in new {
            let store = opened.remove(&tp);
            self.open_task(tp, store)?;
        }
        self.catalog.set_ready(self.settings.thread, true);
        Ok(())
    }

    pub(super) fn opener(&self) -> Opener<'_> {
        Opener {
            dir: &self.settings.state_dir,
            resources: &self.resources,
            reader: self.reader.as_ref(),
            standbys: self.settings.standbys.as_deref(),
        }
    }

    /// Creates the task of `tp` on its store, opened here unless `opened` already is.
    pub(super) fn open_task(&mut self, tp: TopicPartition, opened: Option<Opened>) -> Result<(), RuntimeError> {
        // Every line of the task's opening (its restore, its event history) names the task:
        // a field of JSON logs.
        let _span = tracing::info_span!("task", task = %tp).entered();
        let route = self.settings.routes[&tp.topic].clone();
        let store = match &route.state {
            None => None,
            Some(st) => {
                let Opened { rocks, restored } = match opened {
                    Some(o) => o,
                    None => self.opener().open(&tp, st)?,
                };
                self.restored += restored;
                partition_gauges::set(partition_gauges::STORE_KEYS, &st.name, tp.partition, rocks.estimated_keys() as f64);
                self.catalog.attach(&rocks);
                Some(st.wrap(rocks, &tp.topic))
            }
        };
        self.clocks.opened(&tp);
        let mut task = Task::new(tp.clone(), (route.processor)(), store);
        // Restore ran above, before the task exists to take input.
        task.transition(TaskState::Restoring);
        task.transition(TaskState::Running);
        self.tasks.insert(tp, task);
        Ok(())
    }

    /// The task of `tp` closes: its store leaves the catalog and its gauges leave /metrics.
    pub(super) fn detach(&mut self, tp: &TopicPartition) {
        self.clocks.closed(tp);
        partition_gauges::remove(&[partition_gauges::CONSUMER_LAG], &tp.topic, tp.partition);
        if let Some(st) = self.settings.routes.get(&tp.topic).and_then(|r| r.state.as_ref()) {
            self.catalog.detach(&st.name, tp.partition);
            if let Some(s) = &self.settings.standbys {
                s.unclaim(&st.name, tp.partition);
            }
            partition_gauges::remove(&[partition_gauges::STORE_KEYS, partition_gauges::RESTORE_REMAINING], &st.name, tp.partition);
        }
    }

    pub(super) fn reopen(&mut self, tp: &TopicPartition) -> Result<(), RuntimeError> {
        // The input stays where it is: only the task and its store start again.
        let next = self.clocks.next_of(tp);
        if let Some(mut t) = self.tasks.remove(tp) {
            self.detach(tp);
            t.close();
        }
        self.open_task(tp.clone(), None)?;
        if let Some(next) = next {
            self.clocks.set_next_of(tp, next);
        }
        Ok(())
    }

    pub(super) fn close_all(&mut self) {
        // Refused records of partitions that go are their next owner's to meet.
        self.poisoned.clear();
        for (tp, mut task) in std::mem::take(&mut self.tasks) {
            task.aborted();
            self.detach(&tp);
            task.close();
        }
    }

    /// Partitions are going away: finish the transaction first, then close the tasks.
    pub fn on_revoke(&mut self, input: &dyn Input) {
        self.catalog.set_ready(self.settings.thread, false);
        let tasks: Vec<TopicPartition> = self.tasks.keys().cloned().collect();
        // Lost: the group gave them away already (a session that timed out); there is
        // nothing left to commit, only to abort.
        tracing::info!(tasks = %list(&tasks), lost = input.assignment_lost(), "partitions revoked");
        let step = if input.assignment_lost() { "lost" } else { "revoked" };
        self.catalog.activity().rebalanced(crate::runtime::app::wall_clock_ms(), self.settings.thread, step, list(&tasks));
        let result = if input.assignment_lost() {
            self.abort_and_rewind(input, false)
        } else {
            self.commit(input)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not finish the transaction on revoke");
            self.abort_or_replace();
        }
        // Buffered records of revoked partitions are the new owner's, from the committed offsets.
        self.sync.clear();
        self.close_all();
    }

    /// The group member is gone for good (its consumer raised a fatal error, such as a
    /// static member fenced by a newer join with its `group.instance.id`): whatever is
    /// open is aborted and every task closed; a new member starts from the committed
    /// offsets, so nothing needs rewinding.
    pub fn on_member_lost(&mut self) {
        self.catalog.set_ready(self.settings.thread, false);
        self.abort_or_replace();
        self.sync.clear();
        self.close_all();
    }

    /// Once per producer, before its first offset fetch: ends any transactional offset
    /// commit an earlier epoch of this producer id left pending for the group
    /// (`TransactionalSink::release_offsets`), which would keep the group's offsets
    /// unstable for ever. A release that fails leaves a producer that cannot be trusted
    /// with the next transaction: a new one takes over, and releases at the next try.
    fn release_offsets(&mut self, input: &dyn Input, partitions: &[TopicPartition]) {
        if self.offsets_released || !self.sink.exactly_once() {
            return;
        }
        let (Some(group), Some(tp)) = (input.group(), partitions.first()) else { return };
        match self.sink.release_offsets(tp, &group) {
            Ok(()) => self.offsets_released = true,
            Err(e) => {
                tracing::warn!(error = %e, "could not release this producer's pending offsets; a new producer takes over");
                if let Err(e) = self.new_sink() {
                    tracing::warn!(error = %e, "no new producer yet");
                }
            }
        }
    }

    /// Aborts the open transaction, or, if the producer cannot, replaces it (the new one's
    /// `init_transactions` aborts it). A producer whose abort failed is never asked for
    /// anything again: librdkafka refuses every other call until that abort is resumed.
    /// Should no new producer start either, the next transaction's failure says why.
    fn abort_or_replace(&mut self) {
        if let Err(e) = self.sink.abort() {
            tracing::warn!(error = %e, "could not abort the open transaction; a new producer takes over");
            if let Err(e) = self.new_sink() {
                tracing::warn!(error = %e, "no new producer yet");
            }
        }
    }

    pub fn on_assign(&mut self, input: &dyn Input, assigned: &[TopicPartition]) {
        tracing::info!(partitions = %list(assigned), "partitions assigned");
        self.catalog.activity().rebalanced(crate::runtime::app::wall_clock_ms(), self.settings.thread, "assigned", list(assigned));
        // A previous owner (a zombie, a member that lost the partitions while stalled) may
        // still have a transaction open over these partitions. Until it ends, the committed
        // offsets are unstable and its changelog records undecided; a restore now could
        // miss records that commit a moment later, and the task would then decide commands
        // on a stale snapshot. A read_committed consumer's offset fetch requires stable
        // offsets (KIP-447), so it waits here until that transaction has ended.
        // If it does not end in time, nothing is restored: the poll loop retries (with
        // backoff, the instance unready) rather than let a task decide on a stale snapshot.
        self.release_offsets(input, assigned);
        let started = Instant::now();
        match input.committed(assigned, STABLE_OFFSETS_WAIT) {
            Ok(committed) => {
                if started.elapsed() > Duration::from_secs(1) {
                    tracing::info!(waited_ms = started.elapsed().as_millis() as u64, "waited for a previous owner's transaction to end before restoring");
                }
                self.clocks.assigned_at(&committed);
            }
            Err(source) => {
                self.catalog.set_ready(self.settings.thread, false);
                // The next attempt releases this producer's offsets again, should it have
                // left some pending since.
                self.offsets_released = false;
                self.failure = Some(RuntimeError::UnstableOffsets { partitions: list(assigned), source: Box::new(source) });
                return;
            }
        }
        if let Err(e) = self.open_tasks(assigned) {
            if matches!(e, RuntimeError::Interrupted { .. }) {
                tracing::info!(error = %e, "stopped opening the assigned tasks");
            } else {
                tracing::error!(error = %e, "cannot open assigned tasks");
            }
            self.failure = Some(e);
        }
    }

    /// Clean shutdown: commit what is open, flush and close every store.
    pub fn shutdown(&mut self, input: &dyn Input) -> Result<(), RuntimeError> {
        let result = self.commit(input);
        if result.is_err() {
            let _ = self.sink.abort();
        }
        self.close_all();
        result
    }
}
