//! A task: one partition of one aggregate's command topic, with its processor and its
//! store. It knows which input offsets the open transaction covers, so the runtime can
//! commit them or rewind to them.
//!
//! Lifecycle (checked on every move):
//!
//! ```text
//!   Created ──► Restoring ──► Running ──► Closed
//!      └────────────┴────────────────────────┘ (close from any state)
//! ```

use crate::processor::{Context, ProcessError, Processor};
use crate::record::{Collector, InRecord, TopicPartition};
use crate::store::{ChangeloggedStore, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Created,
    Restoring,
    Running,
    Closed,
}

impl TaskState {
    fn can_move_to(self, next: TaskState) -> bool {
        use TaskState::*;
        matches!((self, next), (Created, Restoring) | (Restoring, Running) | (_, Closed))
    }
}

pub struct Task {
    tp: TopicPartition,
    state: TaskState,
    processor: Box<dyn Processor>,
    store: Option<ChangeloggedStore>,
    /// First input offset of the open transaction: where to rewind to if it aborts.
    txn_first_offset: Option<i64>,
    /// Next input offset to consume: what the transaction commits for this partition.
    next_offset: Option<i64>,
}

impl Task {
    pub fn new(tp: TopicPartition, processor: Box<dyn Processor>, store: Option<ChangeloggedStore>) -> Self {
        Self { tp, state: TaskState::Created, processor, store, txn_first_offset: None, next_offset: None }
    }

    pub fn tp(&self) -> &TopicPartition {
        &self.tp
    }

    pub fn state(&self) -> TaskState {
        self.state
    }

    pub fn store(&self) -> Option<&ChangeloggedStore> {
        self.store.as_ref()
    }

    pub fn transition(&mut self, next: TaskState) {
        assert!(
            self.state.can_move_to(next),
            "task {}: illegal transition {:?} -> {:?}",
            self.tp,
            self.state,
            next
        );
        self.state = next;
    }

    pub fn process(
        &mut self,
        record: &InRecord,
        out: &mut dyn Collector,
        peers: &[(&str, &ChangeloggedStore)],
    ) -> Result<(), ProcessError> {
        self.consume(record);
        let mut ctx = Context { store: self.store.as_mut(), out, peers, timestamp: record.timestamp };
        self.processor.process(record, &mut ctx)
    }

    /// The record is part of the open transaction: its offset commits with it.
    fn consume(&mut self, record: &InRecord) {
        debug_assert_eq!(self.state, TaskState::Running);
        if self.txn_first_offset.is_none() {
            self.txn_first_offset = Some(record.offset);
        }
        self.next_offset = Some(record.offset + 1);
    }

    /// Answers a record without running it (its outputs were refused for good); false
    /// when the processor has nobody to answer and the caller must dead-letter it.
    pub fn fail(&mut self, record: &InRecord, reason: &str, out: &mut dyn Collector) -> bool {
        self.consume(record);
        let mut ctx = Context { store: self.store.as_mut(), out, peers: &[], timestamp: record.timestamp };
        self.processor.fail(record, reason, &mut ctx)
    }

    /// Passes over a record without any output: the last resort for one whose answer was
    /// refused too, which would otherwise stop the partition for good.
    pub fn skip(&mut self, record: &InRecord) {
        self.consume(record);
    }

    /// Wall-clock punctuation, inside the open transaction.
    pub fn punctuate(&mut self, now_ms: i64, out: &mut dyn Collector) -> Result<(), ProcessError> {
        debug_assert_eq!(self.state, TaskState::Running);
        let mut ctx = Context { store: self.store.as_mut(), out, peers: &[], timestamp: Some(now_ms) };
        self.processor.punctuate(now_ms, &mut ctx)
    }

    /// The input offset the open transaction commits for this partition, if it consumed any.
    pub fn offset_to_commit(&self) -> Option<i64> {
        self.txn_first_offset.and(self.next_offset)
    }

    /// Input offsets the open transaction consumed in this partition (records, plus the
    /// transaction markers between them on a transactionally written input).
    pub fn consumed_in_transaction(&self) -> u64 {
        match (self.txn_first_offset, self.next_offset) {
            (Some(first), Some(next)) => u64::try_from(next - first).unwrap_or(0),
            _ => 0,
        }
    }

    /// The transaction committed: its writes and the changelog offset go to RocksDB.
    pub fn committed(&mut self, changelog_offset: Option<i64>, events_offsets: &[(i32, i64)]) -> Result<(), StoreError> {
        self.txn_first_offset = None;
        match &mut self.store {
            Some(s) => s.commit_with_events(changelog_offset, events_offsets),
            None => Ok(()),
        }
    }

    /// The transaction aborted: drop its writes; returns the offset to rewind the input to.
    pub fn aborted(&mut self) -> Option<i64> {
        if let Some(s) = &mut self.store {
            s.abort();
        }
        self.processor.aborted();
        self.next_offset = None;
        self.txn_first_offset.take()
    }

    pub fn close(&mut self) {
        if let Some(store) = &mut self.store {
            if store.has_pending_writes() {
                // Never written to RocksDB: the transaction did not commit.
                store.abort();
            }
            if let Err(e) = store.inner().flush() {
                tracing::warn!(task = %self.tp, error = %e, "flush on close failed; restore will replay the tail");
            }
        }
        self.transition(TaskState::Closed);
    }
}

#[cfg(test)]
mod tests {
    use super::TaskState::*;

    #[test]
    fn lifecycle_transitions() {
        assert!(Created.can_move_to(Restoring));
        assert!(Restoring.can_move_to(Running));
        assert!(Running.can_move_to(Closed));
        assert!(Created.can_move_to(Closed));
        assert!(!Running.can_move_to(Restoring));
        assert!(!Closed.can_move_to(Running));
        assert!(!Created.can_move_to(Running));
    }
}
