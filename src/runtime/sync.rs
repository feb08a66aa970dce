//! Time synchronization across the inputs of a co-partitioned join (in the spirit of Kafka
//! Streams' KIP-353): records of partition p of a join's stream and of its table's topic
//! are buffered, and the one with the smallest timestamp goes first. When one of them has
//! nothing buffered, the other waits up to `max_task_idle` for it. A replay, where every
//! topic is already full, then sees the table as live processing did at that time.
//! Inputs that belong to no join pass straight through, in arrival order.

use crate::record::{InRecord, TopicPartition};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

pub struct InputSync {
    /// topic → index of its group in `groups`.
    group_of: HashMap<String, usize>,
    /// Topics read together, table topic first (it wins ties: state before lookups).
    groups: Vec<Vec<String>>,
    buffers: BTreeMap<TopicPartition, VecDeque<InRecord>>,
    waiting_since: HashMap<(usize, i32), Instant>,
    max_idle: Duration,
}

impl InputSync {
    pub fn new(groups: Vec<Vec<String>>, max_idle: Duration) -> Self {
        let group_of = groups.iter().enumerate().flat_map(|(i, g)| g.iter().map(move |t| (t.clone(), i))).collect();
        Self { group_of, groups, buffers: BTreeMap::new(), waiting_since: HashMap::new(), max_idle }
    }

    pub fn push(&mut self, r: InRecord) {
        self.buffers.entry(TopicPartition::new(r.topic.as_str(), r.partition)).or_default().push_back(r);
    }

    /// Offset of the first buffered record per partition: where to seek to if the
    /// buffers are dropped.
    pub fn first_offsets(&self) -> BTreeMap<TopicPartition, i64> {
        self.buffers.iter().filter_map(|(tp, b)| Some((tp.clone(), b.front()?.offset))).collect()
    }

    pub fn clear(&mut self) {
        self.buffers.clear();
        self.waiting_since.clear();
    }

    /// The next record that may be processed now, if any.
    pub fn next(&mut self, now: Instant) -> Option<InRecord> {
        if self.groups.is_empty() {
            // No joins: arrival order, no allocation on the per-record path.
            return self.buffers.values_mut().find_map(VecDeque::pop_front);
        }
        let candidates: Vec<TopicPartition> =
            self.buffers.iter().filter(|(_, b)| !b.is_empty()).map(|(tp, _)| tp.clone()).collect();
        for tp in candidates {
            let Some(&g) = self.group_of.get(&tp.topic) else {
                return self.buffers.get_mut(&tp)?.pop_front();
            };
            let members: Vec<TopicPartition> =
                self.groups[g].iter().map(|t| TopicPartition::new(t.as_str(), tp.partition)).collect();
            let heads: Vec<(usize, Option<i64>)> = members
                .iter()
                .enumerate()
                .filter_map(|(i, m)| self.buffers.get(m).and_then(|b| b.front()).map(|r| (i, r.timestamp)))
                .collect();
            if heads.len() < members.len() {
                let since = *self.waiting_since.entry((g, tp.partition)).or_insert(now);
                if now.duration_since(since) < self.max_idle {
                    continue; // give the empty input a chance to deliver what it has
                }
            } else {
                self.waiting_since.remove(&(g, tp.partition));
            }
            // Smallest timestamp first; ties go to the earlier member (the table).
            let (i, _) = heads.iter().min_by_key(|(i, ts)| (ts.unwrap_or(i64::MIN), *i))?;
            return self.buffers.get_mut(&members[*i])?.pop_front();
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
        let mut s = InputSync::new(vec![vec!["table".into(), "stream".into()]], Duration::from_millis(50));
        let t0 = Instant::now();
        s.push(rec("stream", 0, 20));
        s.push(rec("stream", 1, 40));
        assert!(s.next(t0).is_none(), "the table input is empty: wait for it");
        s.push(rec("table", 0, 10));
        s.push(rec("table", 1, 30));
        s.push(rec("table", 2, 40));
        let order: Vec<(String, i64)> = std::iter::from_fn(|| s.next(t0)).map(|r| (r.topic, r.timestamp.unwrap())).collect();
        // After table@40 the stream is empty again, so table@40 waits only once the stream
        // has nothing left: stream@40 goes after table@30, and ties go to the table.
        assert_eq!(order[..4], [("table".into(), 10), ("stream".into(), 20), ("table".into(), 30), ("table".into(), 40)]);
    }

    #[test]
    fn an_empty_input_is_waited_for_only_up_to_the_idle_time() {
        let mut s = InputSync::new(vec![vec!["table".into(), "stream".into()]], Duration::from_millis(50));
        let t0 = Instant::now();
        s.push(rec("stream", 0, 20));
        assert!(s.next(t0).is_none());
        assert_eq!(s.next(t0 + Duration::from_millis(60)).map(|r| r.offset), Some(0));
    }

    #[test]
    fn ungrouped_inputs_pass_through_in_arrival_order() {
        let mut s = InputSync::new(vec![], Duration::from_millis(50));
        s.push(rec("cmds", 0, 50));
        s.push(rec("cmds", 1, 10));
        let now = Instant::now();
        assert_eq!((s.next(now).unwrap().offset, s.next(now).unwrap().offset), (0, 1));
        assert!(s.next(now).is_none());
    }
}
