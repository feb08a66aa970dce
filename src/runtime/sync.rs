//! The order a task's buffered input records go in, in event time (in the spirit of
//! Kafka Streams' KIP-353, with progress in place of its best-effort idle time):
//!
//! - A co-partitioned join reads partition p of its table's topic and of its stream. The
//!   record with the smaller time goes first, ties to the table (state before lookups). A
//!   stream record with nothing of the table buffered waits until the table's input is
//!   final through its time (`runtime::progress`): a replay, with every topic full, then
//!   meets the table as live processing did. A table record with nothing of the stream
//!   buffered waits up to `max_idle` for it (the table's history then holds what late
//!   stream records look up).
//! - A join with a global table holds each stream record back until the table is final
//!   through its time. Only that partition waits; the others go on.
//! - Inputs that belong to no join pass straight through, in arrival order.

use crate::processor::Lookup;
use crate::record::{InRecord, TopicPartition};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct InputSync {
    /// topic → index of its group in `groups`.
    group_of: HashMap<String, usize>,
    /// Topics read together, table topic first (it wins ties: state before lookups).
    groups: Vec<Vec<String>>,
    /// Stream topics of joins with a global table, with the table.
    gates: HashMap<String, Arc<dyn Lookup>>,
    buffers: BTreeMap<TopicPartition, VecDeque<InRecord>>,
    waiting_since: HashMap<(usize, i32), Instant>,
    max_idle: Duration,
}

impl InputSync {
    pub fn new(groups: Vec<Vec<String>>, gates: HashMap<String, Arc<dyn Lookup>>, max_idle: Duration) -> Self {
        let group_of = groups.iter().enumerate().flat_map(|(i, g)| g.iter().map(move |t| (t.clone(), i))).collect();
        Self { group_of, groups, gates, buffers: BTreeMap::new(), waiting_since: HashMap::new(), max_idle }
    }

    pub fn push(&mut self, r: InRecord) {
        self.buffers.entry(TopicPartition::new(r.topic.as_str(), r.partition)).or_default().push_back(r);
    }

    /// Offset of the first buffered record per partition: where to seek to if the
    /// buffers are dropped.
    pub fn first_offsets(&self) -> BTreeMap<TopicPartition, i64> {
        self.buffers.iter().filter_map(|(tp, b)| Some((tp.clone(), b.front()?.offset))).collect()
    }

    /// Whether records of `tp` wait here.
    pub fn holds(&self, tp: &TopicPartition) -> bool {
        self.buffers.get(tp).is_some_and(|b| !b.is_empty())
    }

    pub fn clear(&mut self) {
        self.buffers.clear();
        self.waiting_since.clear();
    }

    fn head(&self, tp: &TopicPartition) -> Option<i64> {
        self.buffers.get(tp)?.front().map(|r| r.timestamp.unwrap_or(i64::MIN))
    }

    /// The next record that may be processed now, if any. `final_through` tells through
    /// which time a co-partitioned table's input is final (the engine's `InputClock`).
    pub fn next(&mut self, now: Instant, final_through: &dyn Fn(&TopicPartition) -> i64) -> Option<InRecord> {
        if self.groups.is_empty() && self.gates.is_empty() {
            // No joins: arrival order, no allocation on the per-record path.
            return self.buffers.values_mut().find_map(VecDeque::pop_front);
        }
        let candidates: Vec<TopicPartition> =
            self.buffers.iter().filter(|(_, b)| !b.is_empty()).map(|(tp, _)| tp.clone()).collect();
        for tp in candidates {
            let Some(at) = self.head(&tp) else { continue };
            if let Some(table) = self.gates.get(&tp.topic) {
                if table.final_through() < at {
                    continue; // the table may still learn something of this time
                }
                return self.buffers.get_mut(&tp)?.pop_front();
            }
            let Some(&g) = self.group_of.get(&tp.topic) else {
                return self.buffers.get_mut(&tp)?.pop_front();
            };
            let table = TopicPartition::new(self.groups[g][0].as_str(), tp.partition);
            if tp == table {
                let stream_head = self.groups[g][1..]
                    .iter()
                    .filter_map(|t| self.head(&TopicPartition::new(t.as_str(), tp.partition)))
                    .min();
                match stream_head {
                    Some(s) => {
                        self.waiting_since.remove(&(g, tp.partition));
                        if s < at {
                            continue; // the stream goes first
                        }
                    }
                    None => {
                        let since = *self.waiting_since.entry((g, tp.partition)).or_insert(now);
                        if now.duration_since(since) < self.max_idle {
                            continue; // give the empty stream a chance to deliver what it has
                        }
                    }
                }
            } else {
                match self.head(&table) {
                    Some(t) if t <= at => continue, // the table goes first
                    Some(_) => {}
                    None if final_through(&table) < at => continue,
                    None => {}
                }
            }
            return self.buffers.get_mut(&tp)?.pop_front();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Headers;

    fn rec(topic: &str, offset: i64, ts: i64) -> InRecord {
        InRecord { topic: topic.into(), partition: 0, offset, timestamp: Some(ts), key: None, value: None, headers: Headers::default() }
    }

    #[test]
    fn smallest_timestamp_first_across_a_group() {
        let mut s = InputSync::new(vec![vec!["table".into(), "stream".into()]], HashMap::new(), Duration::from_millis(50));
        let t0 = Instant::now();
        s.push(rec("stream", 0, 20));
        s.push(rec("stream", 1, 40));
        assert!(s.next(t0, &|_| 19).is_none(), "the table input is final only through 19: wait for it");
        s.push(rec("table", 0, 10));
        s.push(rec("table", 1, 30));
        s.push(rec("table", 2, 40));
        let order: Vec<(String, i64)> = std::iter::from_fn(|| s.next(t0, &|_| 40)).map(|r| (r.topic, r.timestamp.unwrap())).collect();
        // Ties go to the table; the last stream record goes once the table is final through 40.
        assert_eq!(order, [("table".into(), 10), ("stream".into(), 20), ("table".into(), 30), ("table".into(), 40), ("stream".into(), 40)]);
    }

    #[test]
    fn a_stream_record_waits_for_the_table_to_be_final_through_its_time_however_long() {
        let mut s = InputSync::new(vec![vec!["table".into(), "stream".into()]], HashMap::new(), Duration::from_millis(50));
        let t0 = Instant::now();
        s.push(rec("stream", 0, 20));
        assert!(s.next(t0 + Duration::from_secs(3600), &|_| 19).is_none(), "no time limit: only progress lets it go");
        assert_eq!(s.next(t0, &|_| 20).map(|r| r.offset), Some(0));
    }

    #[test]
    fn a_table_record_waits_for_an_empty_stream_only_up_to_the_idle_time() {
        let mut s = InputSync::new(vec![vec!["table".into(), "stream".into()]], HashMap::new(), Duration::from_millis(50));
        let t0 = Instant::now();
        s.push(rec("table", 0, 20));
        assert!(s.next(t0, &|_| i64::MIN).is_none());
        assert_eq!(s.next(t0 + Duration::from_millis(60), &|_| i64::MIN).map(|r| r.offset), Some(0));
    }

    struct Final(i64);
    impl Lookup for Final {
        fn lookup(&self, _: &[u8]) -> Result<Option<Vec<u8>>, crate::store::StoreError> {
            Ok(None)
        }
        fn final_through(&self) -> i64 {
            self.0
        }
    }

    #[test]
    fn a_global_join_holds_only_its_own_partition_back() {
        let gates: HashMap<String, Arc<dyn Lookup>> = HashMap::from([("orders".to_string(), Arc::new(Final(25)) as Arc<dyn Lookup>)]);
        let mut s = InputSync::new(vec![], gates, Duration::from_millis(50));
        s.push(rec("orders", 0, 30));
        s.push(rec("cmds", 0, 99));
        let now = Instant::now();
        assert_eq!(s.next(now, &|_| i64::MIN).map(|r| r.topic), Some("cmds".to_string()));
        assert!(s.next(now, &|_| i64::MIN).is_none(), "orders@30 waits: the table is final through 25");
    }

    #[test]
    fn ungrouped_inputs_pass_through_in_arrival_order() {
        let mut s = InputSync::new(vec![], HashMap::new(), Duration::from_millis(50));
        s.push(rec("cmds", 0, 50));
        s.push(rec("cmds", 1, 10));
        let now = Instant::now();
        let none = |_: &TopicPartition| i64::MIN;
        assert_eq!((s.next(now, &none).unwrap().offset, s.next(now, &none).unwrap().offset), (0, 1));
        assert!(s.next(now, &none).is_none());
    }
}
