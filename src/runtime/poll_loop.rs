//! A processing thread's loop: one group member polling its input into the engine, the
//! commit cycle driven from here, and the bounded retry of transient failures (a broker
//! away, a coordinator moving, a stalled restore) with the member replaced when the group
//! fenced it. The engine decides what a record does; this loop decides when to ask it.

use super::catalog::Catalog;
use super::engine::{Engine, EngineSettings};
use super::kafka_ports::{KafkaInput, RebalanceHandler};
use super::ports::{ChangelogReader, SinkFactory};
use super::RuntimeError;
use crate::error::Recovery;
use crate::store::StoreResources;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(super) fn poll_loop(
    cfg: ClientConfig,
    settings: EngineSettings,
    resources: StoreResources,
    catalog: Arc<Catalog>,
    (new_sink, reader, offsets): (SinkFactory, Arc<dyn ChangelogReader>, Arc<super::reader::PartitionReader>),
    stop: Arc<AtomicBool>,
) -> Result<(), RuntimeError> {
    let kafka = |op, source| RuntimeError::Kafka { op, topic: String::new(), source };
    let topics: Vec<String> = settings.routes.keys().cloned().collect();
    let shared = Arc::new(Mutex::new(None));
    let task_timeout = settings.task_timeout;
    let thread = settings.thread.to_string();
    let member = || -> Result<BaseConsumer<RebalanceHandler>, RuntimeError> {
        let consumer: BaseConsumer<RebalanceHandler> = cfg
            .create_with_context(RebalanceHandler {
                engine: shared.clone(),
                rebalance_started: Mutex::new(None),
                coordinator_missing_ms: std::sync::atomic::AtomicI64::new(-1),
                thread: thread.clone(),
                offsets: offsets.clone(),
            })
            .map_err(|e| kafka("create consumer", e))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|e| kafka("subscribe", e))?;
        Ok(consumer)
    };
    // init_transactions (inside Engine::new) comes before any restore: it aborts whatever
    // a crashed predecessor left open, so read_committed restore is not held at its LSO.
    *shared.lock().expect("engine lock") = Some(Engine::new(settings, resources, catalog, new_sink, reader)?);
    let mut consumer = member()?;

    let result = (|| {
        let mut retry = RetryBudget { limit: task_timeout, ..RetryBudget::default() };
        // After a transient failure the next step is a resync, not a poll.
        let mut resync = false;
        // Failures in a row of the member's own calls to its group coordinator (see
        // `RuntimeError::is_coordinator_lookup`).
        let mut coordinator_failures = 0u32;
        while !stop.load(Ordering::SeqCst) {
            let mut poll_failed = false;
            let record = if resync {
                None
            } else {
                let wait = {
                    let g = shared.lock().expect("engine lock");
                    g.as_ref().map_or(Duration::from_millis(100), |e| e.until_commit_due()).min(Duration::from_millis(100))
                };
                match consumer.poll(wait) {
                    Some(Ok(m)) => Some(super::reader::in_record(&m)),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "consumer error");
                        poll_failed = true;
                        None
                    }
                    None => None,
                }
            };
            // A consumer with a fatal error never recovers: every poll after it answers
            // the same error. The usual cause is a static member fenced by its own
            // rejoin after an outage longer than the session timeout. The member is
            // replaced (tasks closed, a new consumer joins with the same instance id),
            // counted against the retry budget so a real twin cannot make it loop forever.
            // Asked only off the hot path: after a poll that failed (a fatal error is
            // reported by every poll) or before a resync (which does not poll).
            // The same for a member whose coordinator calls keep failing: after a broker
            // restart, librdkafka 2.12 can keep a coordinator it decommissioned for ever
            // (#5456, #5511), and every offset fetch then times out. A new member looks
            // its coordinator up afresh.
            let lost = (poll_failed || resync).then(|| consumer.client().fatal_error()).flatten().map(|(code, reason)| format!("{code:?}: {reason}"));
            let lost = lost.or_else(|| {
                (resync && coordinator_failures >= MEMBER_COORDINATOR_FAILURES)
                    .then(|| format!("{coordinator_failures} offset fetches in a row failed; its coordinator may be one the client no longer reaches"))
            });
            // A member that lost its partitions while it had no coordinator asks nothing of
            // the group until it finds one, so no failed call shows it: librdkafka's own
            // statistics say how long it has been without one.
            let lost = lost.or_else(|| {
                let missing = consumer.context().coordinator_missing_ms.load(Ordering::Relaxed);
                (missing > COORDINATOR_MISSING_LIMIT.as_millis() as i64)
                    .then(|| format!("no group coordinator for {} s; the client may keep looking for one it no longer reaches", missing / 1000))
            });
            if let Some(reason) = lost {
                coordinator_failures = 0;
                let e = RuntimeError::MemberLost { reason };
                let Some(pause) = retry.next(shared.lock().expect("engine lock").as_ref().map_or(0, Engine::commits)) else {
                    return Err(RuntimeError::RetriesExhausted { after_s: retry.limit.as_secs(), last: Box::new(e) });
                };
                metrics::counter!("millrace_transient_errors_total", "op" => "member").increment(1);
                tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "the group member is lost; a new one joins after a pause");
                if let Some(engine) = shared.lock().expect("engine lock").as_mut() {
                    engine.on_member_lost();
                }
                std::thread::sleep(pause);
                consumer = member()?;
                resync = false;
                continue;
            }
            // A poll that came back empty (not failed) found the input drained.
            let drained = record.is_none() && !poll_failed;
            let mut g = shared.lock().expect("engine lock");
            let engine = g.as_mut().expect("engine is set before subscribe");
            let step = if resync {
                engine.resync(&KafkaInput(&consumer, &offsets))
            } else {
                (|| {
                    if let Some(f) = engine.failure.take() {
                        return Err(f);
                    }
                    if let Some(r) = record {
                        engine.buffer(r);
                    }
                    let input = KafkaInput(&consumer, &offsets);
                    engine.drain(&input)?;
                    engine.maybe_punctuate(&input)?;
                    engine.maybe_commit(&input, drained)
                })()
            };
            let commits = engine.commits();
            drop(g);
            match step {
                Ok(()) => {
                    if resync {
                        tracing::info!("recovered from a transient failure");
                        coordinator_failures = 0;
                    }
                    resync = false;
                    // Progress (a commit) ends a run of failures; a resync that succeeds
                    // does not, or a fault that returns after every resync would never
                    // exhaust the budget.
                    retry.progress(commits);
                }
                // Transient (broker unreachable, a metadata timeout, a coordinator moving,
                // a restore that stalled): retried with bounded backoff, from the last
                // commit, never taken as permanent. Past the budget the thread ends and
                // the instance exits (a restart is the next thing to try).
                // Stopping: what failed was cut short by the stop itself (a restore
                // interrupted, a producer refused) or has no retry left to wait for. The
                // shutdown below ends whatever is open.
                Err(e) if e.recovery() == Recovery::Retry && stop.load(Ordering::SeqCst) => {
                    tracing::info!(error = %e, "stopping");
                    break;
                }
                Err(e) if e.recovery() == Recovery::Retry => {
                    if e.is_coordinator_lookup() {
                        coordinator_failures += 1;
                    } else {
                        coordinator_failures = 0;
                    }
                    let Some(pause) = retry.next(commits) else {
                        return Err(RuntimeError::RetriesExhausted { after_s: retry.limit.as_secs(), last: Box::new(e) });
                    };
                    metrics::counter!("millrace_transient_errors_total", "op" => "processing").increment(1);
                    tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "transient failure; resuming from the last commit after a pause");
                    resync = true;
                    std::thread::sleep(pause);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })();
    let mut engine = shared.lock().expect("engine lock").take().expect("engine present");
    let closed = engine.shutdown(&KafkaInput(&consumer, &offsets));
    drop(engine);
    drop(consumer);
    result.and(closed)
}

/// Failed offset fetches in a row after which the member is replaced: a broker away for a
/// while fails one or two; a client stuck on a coordinator it no longer reaches fails them
/// all, each after its full timeout.
const MEMBER_COORDINATOR_FAILURES: u32 = 2;

/// How long a member may go without a group coordinator before it is replaced. A broker
/// restart leaves it without one for the restart and a few seconds more; after a restart
/// of a one-broker cluster, `tests/broker_restart.rs` saw both members of the group
/// without one for good (librdkafka 2.12, #5456, #5511), their partitions revoked and no
/// assignment ever again.
const COORDINATOR_MISSING_LIMIT: Duration = Duration::from_secs(30);

/// Backoff for transient failures: 200 ms doubling to 5 s, for at most `limit` since the
/// first failure of a run of them. A run ends with progress (a commit after its first
/// failure), or after `QUIET` without a failure.
struct RetryBudget {
    limit: Duration,
    first: Option<std::time::Instant>,
    last: Option<std::time::Instant>,
    /// Commits the engine had made when the run began.
    commits_at_first: u64,
    attempts: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self { limit: Self::LIMIT, first: None, last: None, commits_at_first: 0, attempts: 0 }
    }
}

impl RetryBudget {
    /// `processing.task_timeout_ms`'s default: as long as a consumer may go without a poll
    /// before the group drops it (`max.poll.interval.ms`), as Kafka Streams' `task.timeout.ms`.
    const LIMIT: Duration = Duration::from_secs(300);
    const QUIET: Duration = Duration::from_secs(30);

    /// The pause before the next attempt; None once the budget is spent. `commits`: the
    /// engine's commit count now.
    fn next(&mut self, commits: u64) -> Option<Duration> {
        if self.last.is_some_and(|l| l.elapsed() > Self::QUIET) {
            self.reset();
        }
        let now = std::time::Instant::now();
        if self.first.is_none() {
            self.first = Some(now);
            self.commits_at_first = commits;
        }
        self.last = Some(now);
        if self.first.is_some_and(|f| f.elapsed() >= self.limit) {
            return None;
        }
        let pause = Duration::from_millis(200u64.saturating_mul(1 << self.attempts.min(5))).min(Duration::from_secs(5));
        self.attempts += 1;
        Some(pause)
    }

    /// A step succeeded; if the engine committed since the run of failures began, the run
    /// is over.
    fn progress(&mut self, commits: u64) {
        if self.first.is_some() && commits > self.commits_at_first {
            self.reset();
        }
    }

    fn reset(&mut self) {
        *self = Self { limit: self.limit, ..Self::default() };
    }
}

#[cfg(test)]
mod tests {
    use super::RetryBudget;
    use std::time::Duration;

    #[test]
    fn transient_retries_back_off_and_end_when_the_budget_is_spent() {
        let mut b = RetryBudget { limit: Duration::from_millis(50), ..RetryBudget::default() };
        let pauses: Vec<u128> = (0..7).map(|_| b.next(3).unwrap().as_millis()).collect();
        assert_eq!(pauses, [200, 400, 800, 1600, 3200, 5000, 5000]);
        b.progress(3);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.next(3), None, "steps without a commit in between do not end the run: the budget is spent");
        b.progress(4);
        assert_eq!(b.next(4), Some(Duration::from_millis(200)), "a commit ends the run: a fresh budget");
    }
}
