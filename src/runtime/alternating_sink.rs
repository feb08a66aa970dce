//! Two transactional producers of one processing thread that take turns, one transaction
//! each: the next transaction begins on the producer whose coordinator is not still
//! finishing the last one.
//!
//! Why: `commit_transaction` returns once the coordinator has logged the decision; it
//! writes the markers afterwards. A transaction that begins on the same producer before
//! they are written has its first `AddPartitionsToTxn` refused (CONCURRENT_TRANSACTIONS),
//! and librdkafka retries it after a fixed 20 ms (`rdkafka_txnmgr.c`), whatever
//! `retry.backoff.ms` says. With commits every few milliseconds
//! (`processing.min_commit_interval_ms`), most transactions met that refusal, and it was
//! the commit's latency tail (docs/performance.md). The other producer has no transaction
//! in the coordinator's hands, so it begins at once.
//!
//! Exactly-once is unchanged: transactions still run one at a time (the next begins only
//! after the last one's commit returned), every commit carries the group's metadata
//! (KIP-447, so a zombie of an older generation is fenced on either producer), and both
//! transactional ids are initialised at start, which aborts whatever either left open.
//! Records of consecutive transactions keep their order in each partition: the later
//! ones are written after the earlier ones, and a read_committed reader sees both once
//! both markers are written.

use super::ports::{GroupToken, Sink};
use crate::record::{OutRecord, TopicPartition};
use crate::sink::SinkError;
use std::collections::HashMap;

pub struct AlternatingSink {
    sinks: [Box<dyn Sink>; 2],
    /// The producer of the open (or next) transaction.
    turn: usize,
}

impl AlternatingSink {
    pub fn new(first: Box<dyn Sink>, second: Box<dyn Sink>) -> Self {
        Self { sinks: [first, second], turn: 0 }
    }

    fn current(&mut self) -> &mut dyn Sink {
        self.sinks[self.turn].as_mut()
    }
}

impl Sink for AlternatingSink {
    fn is_open(&self) -> bool {
        self.sinks[self.turn].is_open()
    }

    fn exactly_once(&self) -> bool {
        self.sinks[self.turn].exactly_once()
    }

    fn begin(&mut self) -> Result<(), SinkError> {
        self.current().begin()
    }

    fn set_origin(&mut self, input: Option<(&TopicPartition, i64)>) {
        self.current().set_origin(input)
    }

    fn send(&mut self, record: &OutRecord) -> Result<(), SinkError> {
        self.current().send(record)
    }

    fn settle(&mut self) -> Result<HashMap<TopicPartition, i64>, SinkError> {
        self.current().settle()
    }

    /// Commits on the producer whose turn it is; the next transaction is the other's. A
    /// failed commit keeps the turn: the engine aborts (or replaces the pair) next.
    fn commit(&mut self, offsets: &[(TopicPartition, i64)], group: Option<&GroupToken>) -> Result<HashMap<TopicPartition, i64>, SinkError> {
        let delivered = self.current().commit(offsets, group)?;
        self.turn = 1 - self.turn;
        Ok(delivered)
    }

    fn abort(&mut self) -> Result<(), SinkError> {
        self.current().abort()
    }

    /// Both producer ids may have left an offset commit pending: each releases its own.
    fn release_offsets(&mut self, partition: &TopicPartition, group: &GroupToken) -> Result<(), SinkError> {
        for sink in &mut self.sinks {
            sink.release_offsets(partition, group)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records which producer was asked what.
    struct Recording {
        name: &'static str,
        open: bool,
        calls: Arc<Mutex<Vec<String>>>,
        /// Its commit and its release fail.
        failing: bool,
    }

    impl Recording {
        fn log(&self, what: &str) {
            self.calls.lock().unwrap().push(format!("{}:{what}", self.name));
        }
    }

    impl Sink for Recording {
        fn is_open(&self) -> bool {
            self.open
        }
        fn exactly_once(&self) -> bool {
            true
        }
        fn begin(&mut self) -> Result<(), SinkError> {
            self.log("begin");
            self.open = true;
            Ok(())
        }
        fn set_origin(&mut self, _: Option<(&TopicPartition, i64)>) {}
        fn send(&mut self, r: &OutRecord) -> Result<(), SinkError> {
            self.log(&format!("send {}", r.topic));
            Ok(())
        }
        fn settle(&mut self) -> Result<HashMap<TopicPartition, i64>, SinkError> {
            Ok(HashMap::new())
        }
        fn commit(&mut self, _: &[(TopicPartition, i64)], _: Option<&GroupToken>) -> Result<HashMap<TopicPartition, i64>, SinkError> {
            self.log("commit");
            if self.failing {
                return Err(SinkError::Hung { transactional_id: self.name.into(), op: "commit_transaction", waited_s: 0 });
            }
            self.open = false;
            Ok(HashMap::from([(TopicPartition::new(self.name, 0), 7)]))
        }
        fn abort(&mut self) -> Result<(), SinkError> {
            self.log("abort");
            self.open = false;
            Ok(())
        }
        fn release_offsets(&mut self, _: &TopicPartition, _: &GroupToken) -> Result<(), SinkError> {
            self.log("release");
            if self.failing {
                return Err(SinkError::Hung { transactional_id: self.name.into(), op: "send_offsets_to_transaction", waited_s: 0 });
            }
            Ok(())
        }
    }

    fn pair(fail_a: bool) -> (AlternatingSink, Arc<Mutex<Vec<String>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let a = Recording { name: "a", open: false, calls: calls.clone(), failing: fail_a };
        let b = Recording { name: "b", open: false, calls: calls.clone(), failing: false };
        (AlternatingSink::new(Box::new(a), Box::new(b)), calls)
    }

    fn record(topic: &str) -> OutRecord {
        OutRecord { topic: topic.into(), partition: None, key: None, value: None, headers: Default::default(), timestamp: None }
    }

    #[test]
    fn transactions_take_turns_and_each_commit_reports_its_own_outputs() {
        let (mut sink, calls) = pair(false);
        for (i, expected) in ["a", "b", "a"].iter().enumerate() {
            assert!(!sink.is_open(), "transaction {i} begins closed");
            sink.begin().unwrap();
            assert!(sink.is_open());
            sink.send(&record(&format!("t{i}"))).unwrap();
            let delivered = sink.commit(&[], None).unwrap();
            assert_eq!(delivered.keys().map(|tp| tp.topic.as_str()).collect::<Vec<_>>(), [*expected]);
        }
        assert_eq!(
            *calls.lock().unwrap(),
            ["a:begin", "a:send t0", "a:commit", "b:begin", "b:send t1", "b:commit", "a:begin", "a:send t2", "a:commit"]
        );
    }

    #[test]
    fn a_failed_commit_keeps_the_turn_so_the_abort_reaches_the_same_producer() {
        let (mut sink, calls) = pair(true);
        sink.begin().unwrap();
        assert!(sink.commit(&[], None).is_err());
        assert!(sink.is_open(), "the failed transaction is still open");
        sink.abort().unwrap();
        assert!(!sink.is_open());
        assert_eq!(*calls.lock().unwrap(), ["a:begin", "a:commit", "a:abort"]);
    }

    #[test]
    fn both_producers_release_what_they_left_pending() {
        let (mut sink, calls) = pair(false);
        let group = GroupToken(Arc::new(()));
        sink.release_offsets(&TopicPartition::new("commands", 0), &group).unwrap();
        assert_eq!(*calls.lock().unwrap(), ["a:release", "b:release"]);
    }

    /// A release that fails is the caller's to hear (the engine then replaces the pair,
    /// which releases again), not passed over for the other producer's.
    #[test]
    fn a_failed_release_is_reported() {
        let (mut sink, calls) = pair(true);
        let group = GroupToken(Arc::new(()));
        assert!(sink.release_offsets(&TopicPartition::new("commands", 0), &group).is_err());
        assert_eq!(*calls.lock().unwrap(), ["a:release"]);
    }
}
