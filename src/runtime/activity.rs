//! What this instance has been doing lately, for the console: input records committed
//! per topic and the commits of each second over the last ten minutes, and its last
//! rebalances. Kept in memory and bounded; the processing threads write it once per
//! transaction or rebalance (never per record), the query server reads it.
//!
//! Prometheus has the same facts as counters and histograms; this keeps a short history
//! of them so that a page can draw rates and a latency chart without a Prometheus server.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Seconds of history kept.
const KEEP_SECONDS: usize = 600;
/// Rebalances kept.
const KEEP_REBALANCES: usize = 50;
/// Rates are averaged over this many whole seconds.
const RATE_WINDOW: u64 = 10;

#[derive(Default)]
pub struct Activity {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    seconds: VecDeque<Second>,
    rebalances: VecDeque<Rebalance>,
}

#[derive(Clone, Default)]
struct Second {
    /// Unix time, in seconds.
    at: u64,
    records: BTreeMap<String, u64>,
    commits: u32,
    commit_secs: f64,
    commit_max_secs: f64,
}

/// One step of a rebalance on one processing thread.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rebalance {
    /// Unix time, in milliseconds.
    pub at_ms: i64,
    pub thread: usize,
    /// `assigned`, `revoked`, `lost`.
    pub step: String,
    pub partitions: String,
}

/// Commits of one second.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitSecond {
    pub at: u64,
    pub commits: u32,
    pub mean_ms: f64,
    pub max_ms: f64,
}

/// What the console shows of an instance's recent activity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recent {
    /// Input records committed per second, per topic, over the last whole seconds.
    pub rates: BTreeMap<String, f64>,
    /// Seconds with at least one commit, oldest first.
    pub commits: Vec<CommitSecond>,
    /// Newest first.
    pub rebalances: Vec<Rebalance>,
}

impl Activity {
    /// A transaction committed at unix second `now_s`, taking `took`, having consumed
    /// `records` input offsets per topic.
    pub fn committed(&self, now_s: u64, records: &[(String, u64)], took: Duration) {
        let mut inner = self.inner.lock().expect("activity lock");
        let second = inner.second(now_s);
        for (topic, n) in records {
            *second.records.entry(topic.clone()).or_default() += n;
        }
        let secs = took.as_secs_f64();
        second.commits += 1;
        second.commit_secs += secs;
        second.commit_max_secs = second.commit_max_secs.max(secs);
    }

    pub fn rebalanced(&self, at_ms: i64, thread: usize, step: &'static str, partitions: String) {
        let mut inner = self.inner.lock().expect("activity lock");
        if inner.rebalances.len() == KEEP_REBALANCES {
            inner.rebalances.pop_front();
        }
        inner.rebalances.push_back(Rebalance { at_ms, thread, step: step.to_string(), partitions });
    }

    /// The recent activity as of now.
    pub fn recent_now(&self) -> Recent {
        self.recent(u64::try_from(super::app::wall_clock_ms() / 1000).unwrap_or(0))
    }

    /// The recent activity as of unix second `now_s`: the current second, still filling,
    /// counts in no rate.
    pub fn recent(&self, now_s: u64) -> Recent {
        let inner = self.inner.lock().expect("activity lock");
        let window = now_s.saturating_sub(RATE_WINDOW)..now_s;
        let mut rates: BTreeMap<String, f64> = BTreeMap::new();
        for s in inner.seconds.iter().filter(|s| window.contains(&s.at)) {
            for (topic, n) in &s.records {
                *rates.entry(topic.clone()).or_default() += *n as f64 / RATE_WINDOW as f64;
            }
        }
        let commits = inner
            .seconds
            .iter()
            .filter(|s| s.commits > 0)
            .map(|s| CommitSecond {
                at: s.at,
                commits: s.commits,
                mean_ms: s.commit_secs * 1000.0 / f64::from(s.commits),
                max_ms: s.commit_max_secs * 1000.0,
            })
            .collect();
        Recent { rates, commits, rebalances: inner.rebalances.iter().rev().cloned().collect() }
    }
}

impl Inner {
    fn second(&mut self, at: u64) -> &mut Second {
        // Threads commit in their own order: a second may arrive after a later one began.
        if let Some(i) = self.seconds.iter().rposition(|s| s.at == at) {
            return &mut self.seconds[i];
        }
        let newest = self.seconds.back().map_or(0, |s| s.at);
        let keep_from = newest.max(at).saturating_sub(KEEP_SECONDS as u64);
        while self.seconds.front().is_some_and(|s| s.at < keep_from) {
            self.seconds.pop_front();
        }
        let i = self.seconds.iter().position(|s| s.at > at).unwrap_or(self.seconds.len());
        self.seconds.insert(i, Second { at, ..Second::default() });
        &mut self.seconds[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(n: &str, count: u64) -> (String, u64) {
        (n.to_string(), count)
    }

    #[test]
    fn rates_average_the_last_whole_seconds_and_leave_the_current_one_out() {
        let a = Activity::default();
        for s in 100..110 {
            a.committed(s, &[topic("commands", 50)], Duration::from_millis(4));
        }
        a.committed(110, &[topic("commands", 10_000)], Duration::from_millis(4));
        let r = a.recent(110);
        assert_eq!(r.rates["commands"], 50.0);
        assert_eq!(r.commits.len(), 11);
        assert_eq!(r.commits[0].at, 100);
    }

    #[test]
    fn commits_of_one_second_add_up_and_late_seconds_keep_their_place() {
        let a = Activity::default();
        a.committed(7, &[topic("t", 1)], Duration::from_millis(10));
        a.committed(5, &[topic("t", 1)], Duration::from_millis(2));
        a.committed(7, &[topic("t", 1)], Duration::from_millis(30));
        let r = a.recent(8);
        let at: Vec<u64> = r.commits.iter().map(|c| c.at).collect();
        assert_eq!(at, vec![5, 7]);
        assert_eq!(r.commits[1].commits, 2);
        assert!((r.commits[1].mean_ms - 20.0).abs() < 1e-9);
        assert!((r.commits[1].max_ms - 30.0).abs() < 1e-9);
    }

    #[test]
    fn history_is_bounded() {
        let a = Activity::default();
        for s in 0..(KEEP_SECONDS as u64 * 2) {
            a.committed(s, &[], Duration::ZERO);
        }
        for i in 0..(KEEP_REBALANCES * 2) {
            a.rebalanced(i as i64, 0, "assigned", String::new());
        }
        let r = a.recent(KEEP_SECONDS as u64 * 2);
        assert!(r.commits.len() <= KEEP_SECONDS + 1);
        assert_eq!(r.rebalances.len(), KEEP_REBALANCES);
        assert_eq!(r.rebalances[0].at_ms, (KEEP_REBALANCES * 2 - 1) as i64, "newest first");
    }
}
