//! The engine's ports over rdkafka: the group consumer as [`Input`], the transactional
//! producer as [`Sink`], and the restore readers as [`ChangelogReader`]. The only place
//! the commit cycle meets rdkafka's types.
//!
//! May use: runtime::ports, sink, kafka, restore.

use super::partition_gauges;
use super::engine::Engine;
use super::route::EventSource;
use super::ports::{ChangelogReader, Destination, GroupToken, Input, Sink};
use super::RuntimeError;
use crate::kafka::Clients;
use crate::record::{OutRecord, TopicPartition};
use crate::sink::{SinkError, TransactionalSink};
use crate::store::RocksStore;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance};
use rdkafka::ClientContext;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::Duration;

fn kafka(op: &'static str, topic: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> RuntimeError {
    let topic = topic.into();
    move |source| RuntimeError::Kafka { op, topic, source }
}

fn tpl(offsets: impl IntoIterator<Item = (TopicPartition, Offset)>) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (tp, o) in offsets {
        list.add_partition_offset(&tp.topic, tp.partition, o).expect("offsets are valid");
    }
    list
}

/// Partitions in an rdkafka list, as the engine names them.
pub(crate) fn partitions(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements().iter().map(|e| TopicPartition::new(e.topic(), e.partition())).collect()
}

/// The group consumer, borrowed for one call (the poll loop and the rebalance callback
/// each hold it in turn), with a client of its own for offset lookups: on the group
/// consumer's connection they would queue behind its long-polling fetch (up to
/// `fetch.wait.max.ms`, 500 ms) and stall the processing thread.
pub(crate) struct KafkaInput<'a, C: ConsumerContext>(pub &'a BaseConsumer<C>, pub &'a super::reader::PartitionReader);

impl<C: ConsumerContext> Input for KafkaInput<'_, C> {
    fn assignment(&self) -> Result<Vec<TopicPartition>, RuntimeError> {
        self.0.assignment().map(|l| partitions(&l)).map_err(kafka("assignment", ""))
    }

    fn committed(&self, list: &[TopicPartition], timeout: Duration) -> Result<Vec<(TopicPartition, Option<i64>)>, RuntimeError> {
        // A read_committed consumer's offset fetch requires stable offsets (KIP-447): it
        // waits for a previous owner's open transaction to end.
        let committed = self
            .0
            .committed_offsets(tpl(list.iter().map(|tp| (tp.clone(), Offset::Invalid))), timeout)
            .map_err(kafka("committed offsets", ""))?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| {
                let o = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (TopicPartition::new(e.topic(), e.partition()), o)
            })
            .collect())
    }

    fn seek(&self, tp: &TopicPartition, offset: Option<i64>) -> Result<(), RuntimeError> {
        let o = offset.map_or(Offset::Beginning, Offset::Offset);
        self.0.seek(&tp.topic, tp.partition, o, Duration::from_secs(10)).map_err(kafka("seek", tp.to_string()))
    }

    fn assignment_lost(&self) -> bool {
        self.0.assignment_lost()
    }

    fn group(&self) -> Option<GroupToken> {
        self.0.group_metadata().map(|g| GroupToken(std::sync::Arc::new(g)))
    }

    fn commit_offsets(&self, offsets: &[(TopicPartition, i64)]) -> Result<(), RuntimeError> {
        let list = tpl(offsets.iter().map(|(tp, o)| (tp.clone(), Offset::Offset(*o))));
        self.0.commit(&list, CommitMode::Sync).map_err(kafka("commit offsets", ""))
    }

    fn end_offsets(&self, partitions: &[TopicPartition]) -> Result<HashMap<TopicPartition, i64>, RuntimeError> {
        self.1.end_offsets(partitions, Self::END_OFFSETS_TIMEOUT)
    }

    fn start_offsets(&self, partitions: &[TopicPartition]) -> Result<HashMap<TopicPartition, i64>, RuntimeError> {
        self.1.start_offsets(partitions, Self::END_OFFSETS_TIMEOUT)
    }

    fn positions(&self) -> HashMap<TopicPartition, i64> {
        super::reader::positions(self.0)
    }

    fn destination(&self, topic: &str) -> Destination {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode as Code;
        let md = match self.0.fetch_metadata(Some(topic), Duration::from_secs(10)) {
            Ok(md) => md,
            // The broker did not answer (timeout, transport): nothing is known.
            Err(e @ KafkaError::MetadataFetch(_)) => return Destination::Unknown(kafka("metadata of an output topic", topic)(e)),
            // The client refused to ask: that will not change.
            Err(e) => return Destination::Refused(format!("destination topic {topic} cannot be asked about: {e}")),
        };
        let unknown = |code| Destination::Unknown(kafka("metadata of an output topic", topic)(KafkaError::MetadataFetch(code)));
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return unknown(Code::UnknownTopicOrPartition);
        };
        match t.error().map(Code::from) {
            None if !t.partitions().is_empty() => Destination::Exists,
            Some(Code::UnknownTopicOrPartition | Code::UnknownTopic) => Destination::Refused(format!("destination topic {topic} does not exist")),
            Some(Code::TopicAuthorizationFailed) => Destination::Refused(format!("not authorized to write destination topic {topic}")),
            Some(Code::InvalidTopic) => Destination::Refused(format!("destination topic name {topic:?} is invalid")),
            Some(code) => unknown(code),
            None => unknown(Code::LeaderNotAvailable),
        }
    }
}

impl<C: ConsumerContext> KafkaInput<'_, C> {
    const END_OFFSETS_TIMEOUT: Duration = Duration::from_secs(5);
}

impl Sink for TransactionalSink {
    fn is_open(&self) -> bool {
        TransactionalSink::is_open(self)
    }

    fn exactly_once(&self) -> bool {
        TransactionalSink::exactly_once(self)
    }

    fn begin(&mut self) -> Result<(), SinkError> {
        TransactionalSink::begin(self)
    }

    fn set_origin(&mut self, input: Option<(&TopicPartition, i64)>) {
        TransactionalSink::set_origin(self, input)
    }

    fn send(&mut self, record: &OutRecord) -> Result<(), SinkError> {
        TransactionalSink::send(self, record)
    }

    fn settle(&mut self) -> Result<HashMap<TopicPartition, i64>, SinkError> {
        TransactionalSink::settle(self)
    }

    fn commit(&mut self, offsets: &[(TopicPartition, i64)], group: Option<&GroupToken>) -> Result<HashMap<TopicPartition, i64>, SinkError> {
        let list = tpl(offsets.iter().map(|(tp, o)| (tp.clone(), Offset::Offset(*o))));
        TransactionalSink::commit(self, &list, group.and_then(metadata))
    }

    fn abort(&mut self) -> Result<(), SinkError> {
        TransactionalSink::abort(self)
    }

    fn release_offsets(&mut self, partition: &TopicPartition, group: &GroupToken) -> Result<(), SinkError> {
        match metadata(group) {
            Some(group) => TransactionalSink::release_offsets(self, &tpl([(partition.clone(), Offset::Offset(0))]), group),
            None => Ok(()),
        }
    }
}

/// The consumer's group metadata a token carries (tokens come from `KafkaInput::group`).
fn metadata(group: &GroupToken) -> Option<std::sync::Arc<ConsumerGroupMetadata>> {
    group.0.clone().downcast::<ConsumerGroupMetadata>().ok()
}

/// The restore readers, each a consumer outside the group made by the client factory.
pub(crate) struct KafkaChangelog {
    pub clients: Clients,
    /// The instance's stop: a restore or history read in progress ends when it is set.
    pub stop: Arc<AtomicBool>,
}

impl ChangelogReader for KafkaChangelog {
    fn restore(&self, store: &RocksStore, changelog: &str, accept: &dyn Fn(Option<&[u8]>) -> bool, versions: bool) -> Result<u64, RuntimeError> {
        super::restore::restore(store, changelog, &self.clients, accept, versions, Some(self.stop.clone()))
    }

    fn ensure_event_history(&self, store: &RocksStore, source: &EventSource, restored: u64) -> Result<(), RuntimeError> {
        super::restore::ensure_event_history(store, source, &self.clients, restored, Some(self.stop.clone()))
    }
}

/// The consumer context: routes rebalance callbacks into the engine.
pub(crate) struct RebalanceHandler {
    pub engine: Arc<Mutex<Option<Engine>>>,
    /// When the current rebalance began (the revocation), for its duration.
    pub rebalance_started: Mutex<Option<Instant>>,
    /// How long the member has been without a group coordinator, as of librdkafka's last
    /// statistics (milliseconds; -1 while it has one). The poll loop replaces a member
    /// that stays without one.
    pub coordinator_missing_ms: std::sync::atomic::AtomicI64,
    /// The processing thread (a member of its own): the label that keeps the threads'
    /// gauges apart.
    pub thread: String,
    /// The thread's client for offset lookups (`KafkaInput`).
    pub offsets: Arc<super::reader::PartitionReader>,
}

impl ClientContext for RebalanceHandler {
    /// librdkafka's statistics (every `statistics.interval.ms`): input lag per partition,
    /// from the client's own view, without extra broker round trips on the poll thread.
    /// librdkafka's own `consumer_lag` counts from the consumer's committed offset, which
    /// it never learns when offsets commit through the producer's transaction; so the lag
    /// here is the last stable offset minus the position handed to the application.
    fn stats(&self, stats: rdkafka::Statistics) {
        if let Some(group) = &stats.cgrp {
            // `up`: the coordinator is known and connected; any other state is a search.
            let missing = if group.state == "up" { -1 } else { group.stateage };
            self.coordinator_missing_ms.store(missing, std::sync::atomic::Ordering::Relaxed);
        }
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                // Negative offsets are librdkafka's "unknown" (nothing consumed yet); the
                // internal UA partition is -1. A partition no longer fetched (revoked, or
                // never ours) leaves the page.
                if *partition >= 0 && matches!(p.fetch_state.as_str(), "none" | "stopping" | "stopped") {
                    partition_gauges::remove(&[partition_gauges::CONSUMER_LAG], topic, *partition);
                } else if *partition >= 0 && p.app_offset >= 0 && p.ls_offset >= 0 {
                    let lag = (p.ls_offset - p.app_offset).max(0) as f64;
                    partition_gauges::set(partition_gauges::CONSUMER_LAG, topic, *partition, lag);
                }
            }
        }
    }
}

impl ConsumerContext for RebalanceHandler {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut guard = self.engine.lock().expect("engine lock");
        let Some(engine) = guard.as_mut() else { return };
        match rebalance {
            Rebalance::Revoke(_) => {
                // Lost: the group dropped this member (a stall past the session timeout)
                // and its partitions may already be someone else's.
                let step = if consumer.assignment_lost() { "lost" } else { "revoke" };
                metrics::counter!("millrace_rebalances_total", "step" => step).increment(1);
                *self.rebalance_started.lock().expect("rebalance clock") = Some(Instant::now());
                engine.on_revoke(&KafkaInput(consumer, &self.offsets));
            }
            Rebalance::Assign(tpl) => {
                metrics::counter!("millrace_rebalances_total", "step" => "assign").increment(1);
                engine.on_assign(&KafkaInput(consumer, &self.offsets), &partitions(tpl));
                // From the revocation (or the assignment, on a first join) until the new
                // tasks are restored and can process: how long these partitions stood still.
                let started = self.rebalance_started.lock().expect("rebalance clock").take();
                if let Some(t) = started {
                    metrics::histogram!("millrace_rebalance_seconds").record(t.elapsed().as_secs_f64());
                }
                metrics::gauge!("millrace_assigned_partitions", "thread" => self.thread.clone()).set(tpl.count() as f64);
            }
            Rebalance::Error(e) => {
                metrics::counter!("millrace_rebalances_total", "step" => "error").increment(1);
                tracing::warn!(error = %e, "rebalance error");
            }
        }
    }
}
