//! The HTTP command gateway's Kafka side: it produces a command to its aggregate's command
//! topic (key = aggregate id, Java murmur2) and waits for the reply, which it reads from
//! the aggregate's reply topic. Every instance reads every reply partition, so whichever
//! instance accepted the HTTP request sees the reply, and any instance can answer the
//! status URL of a recent command; replies to commands that did not come through a
//! gateway are skipped undecoded. A retry with the same command id is safe: the
//! aggregate answers it as a duplicate, with the original outcome.

use super::reader::{Followed, PartitionReader};
use crate::record::TopicPartition;
use crate::kafka::{Clients, PolledProducer};
use super::RuntimeError;
use crate::codec::Format;
use crate::processor::wire::{self, Reply};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::{ClientContext, Message};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Replies remembered for status URLs (a few MiB): status URLs are for recent commands.
const REMEMBERED: usize = 20_000;

/// An aggregate the gateway can send commands to.
#[derive(Clone)]
pub struct GatewayTarget {
    pub commands: String,
    pub command_format: Format,
    pub replies: String,
    pub reply_format: Format,
    pub reply_partitions: i32,
    /// Decodes a command as the aggregate's processor will, so a command that cannot run
    /// is refused before it is sent (its reply would say `invalid` anyway).
    pub(crate) check: super::registry::CommandCheck,
}

impl std::fmt::Debug for GatewayTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayTarget").field("commands", &self.commands).field("replies", &self.replies).finish_non_exhaustive()
    }
}

impl GatewayTarget {
    /// Why the aggregate could not run this command, if it could not.
    pub fn check(&self, command: &[u8]) -> Result<(), String> {
        (self.check)(self.command_format, command)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no aggregate {0:?} here; known: {1:?}")]
    UnknownAggregate(String, Vec<String>),
    #[error("aggregate {0:?} reads {1} commands; the gateway sends JSON only")]
    NotJson(String, Format),
    #[error("cannot produce the command: {0}")]
    Produce(String),
}

/// How long a command waits for room in the producer's queue before the request fails.
const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Hands each command's delivery report to the request that sent it (what rdkafka's
/// `FutureProducer` does, on a `PolledProducer`: kafka/producer.rs says why).
struct Delivery;

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = Box<oneshot::Sender<Result<(), String>>>;
    fn delivery(&self, report: &DeliveryResult<'_>, to: Self::DeliveryOpaque) {
        let _ = to.send(report.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string()));
    }
}

/// Removes a submitted command's entry from `Gateway::pending` when dropped.
struct PendingEntry<'a> {
    gateway: &'a Gateway,
    command_id: &'a str,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.gateway.pending.lock() {
            pending.remove(self.command_id);
        }
    }
}

pub struct Gateway {
    /// By aggregate name and by node name.
    targets: BTreeMap<String, GatewayTarget>,
    producer: PolledProducer<Delivery>,
    pending: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
    recent: Mutex<(HashMap<String, Reply>, VecDeque<String>)>,
    instance: String,
    counter: AtomicU64,
}

impl Gateway {
    pub fn new(targets: BTreeMap<String, GatewayTarget>, clients: &Clients, instance: &str) -> Result<Self, RuntimeError> {
        let kafka = |source| RuntimeError::Kafka { op: "gateway producer", topic: String::new(), source };
        let producer = PolledProducer::create(
            clients.client().set("partitioner", "murmur2_random").set("enable.idempotence", "true").set("linger.ms", "1"),
            Delivery,
        )
        .map_err(kafka)?;
        Ok(Self {
            targets,
            producer,
            pending: Mutex::new(HashMap::new()),
            recent: Mutex::new((HashMap::new(), VecDeque::new())),
            instance: instance.to_string(),
            counter: AtomicU64::new(0),
        })
    }

    pub fn target(&self, aggregate: &str) -> Result<&GatewayTarget, GatewayError> {
        let t = self
            .targets
            .get(aggregate)
            .ok_or_else(|| GatewayError::UnknownAggregate(aggregate.to_string(), self.targets.keys().cloned().collect()))?;
        if t.command_format != Format::Json {
            return Err(GatewayError::NotJson(aggregate.to_string(), t.command_format));
        }
        Ok(t)
    }

    /// A command id nobody else uses: instance, start time, counter.
    pub fn new_command_id(&self) -> String {
        static START: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
        let start = START.get_or_init(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        });
        format!("gw-{}-{start:x}-{}", self.instance, self.counter.fetch_add(1, Ordering::SeqCst))
    }

    /// Produces `command` (the JSON contract's envelope) and waits up to `timeout` for its
    /// reply. None: no reply in time (the command may still be processed). `admin` marks
    /// an operator's request about the snapshot (header `millrace.admin`).
    pub async fn submit(
        &self,
        target: &GatewayTarget,
        aggregate_id: &str,
        command_id: &str,
        command: &[u8],
        timeout: Duration,
        admin: Option<&str>,
    ) -> Result<Option<Reply>, GatewayError> {
        if let Some(r) = self.status(command_id) {
            // Answered before (a retry): the aggregate would say duplicate; say it as it was.
            return Ok(Some(r));
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("gateway lock").insert(command_id.to_string(), tx);
        // However this ends, the entry goes: also when the request's future is dropped (a
        // client that hung up, the request time limit), or it would count against
        // `max_pending_commands` for ever.
        let _pending = PendingEntry { gateway: self, command_id };
        let mut headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: crate::record::header::CORRELATION_ID,
            value: Some(command_id),
        });
        if let Some(op) = admin {
            headers = headers.insert(rdkafka::message::Header { key: crate::record::header::ADMIN, value: Some(op) });
        }
        let (delivered, delivery) = oneshot::channel();
        let mut record =
            BaseRecord::with_opaque_to(&target.commands, Box::new(delivered)).key(aggregate_id).payload(command).headers(headers);
        let queue_wait = Instant::now() + QUEUE_WAIT;
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                // The producer's queue is full: wait for room, up to QUEUE_WAIT.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) if Instant::now() < queue_wait => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(GatewayError::Produce(e.to_string())),
            }
        }
        // An answer (202 included) means the broker has the command: the wait for its
        // delivery report is not bounded by `timeout`, only by the producer's own
        // `message.timeout.ms`, past which the report is a failure.
        delivery
            .await
            .unwrap_or_else(|_| Err("the producer closed before delivering".into()))
            .map_err(GatewayError::Produce)?;
        Ok(tokio::time::timeout(timeout, rx).await.ok().and_then(Result::ok))
    }

    /// The reply of a recent command, if this instance has seen it.
    pub fn status(&self, command_id: &str) -> Option<Reply> {
        self.recent.lock().expect("gateway lock").0.get(command_id).cloned()
    }

    /// Whether a command of this instance is still waiting for its reply.
    /// Commands sent and still waiting for their replies.
    pub fn pending(&self) -> usize {
        self.pending.lock().expect("gateway lock").len()
    }

    pub fn is_pending(&self, command_id: &str) -> bool {
        self.pending.lock().expect("gateway lock").contains_key(command_id)
    }

    fn answered(&self, reply: Reply) {
        {
            let mut recent = self.recent.lock().expect("gateway lock");
            let (map, order) = &mut *recent;
            if map.insert(reply.command_id.clone(), reply.clone()).is_none() {
                order.push_back(reply.command_id.clone());
            }
            while order.len() > REMEMBERED {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
        if let Some(tx) = self.pending.lock().expect("gateway lock").remove(&reply.command_id) {
            let _ = tx.send(reply);
        }
    }

    /// Reads every partition of every reply topic from its current end (positions fixed
    /// before this returns, so no reply to a command sent afterwards is missed) until `stop`.
    pub fn spawn_reader(self: Arc<Self>, clients: &Clients, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<()>, RuntimeError> {
        // Replies are small and read as they come: no need for librdkafka's default 64 MiB
        // of prefetch per instance.
        let tuning = [("fetch.wait.max.ms", "50"), ("queued.max.messages.kbytes", "2048"), ("fetch.max.bytes", "1048576")];
        let reader = PartitionReader::new(clients, "gateway replies", format!("millrace-gateway-{}", self.instance), &tuning)?;
        let mut from = Vec::new();
        let mut formats = HashMap::new();
        for t in self.targets.values() {
            if formats.insert(t.replies.clone(), t.reply_format).is_some() {
                continue;
            }
            for p in 0..t.reply_partitions {
                let tp = TopicPartition::new(t.replies.as_str(), p);
                let (_, high) = reader.watermarks(&tp)?;
                from.push((tp, Some(high)));
            }
        }
        reader.assign(&from)?;
        let handle = std::thread::Builder::new()
            .name("millrace-gateway-replies".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Some(Followed::Record(m)) = reader.follow(Duration::from_millis(100)) else { continue };
                    if !sent_by_a_gateway(&m) {
                        continue;
                    }
                    let format = formats.get(m.topic()).copied().unwrap_or(Format::Json);
                    if let Some(reply) = m.payload().and_then(|p| wire::decode_reply(format, p).ok()) {
                        self.answered(reply);
                    }
                }
            })
            .expect("spawn gateway reply reader");
        Ok(handle)
    }
}

/// Sends an operator's request about one aggregate's snapshot (`delete-snapshot` or
/// `repair-snapshot`) through the command topic, and waits up to `timeout` for the
/// owner's reply: what `millrace store delete|repair` runs.
pub async fn admin_request(
    targets: BTreeMap<String, GatewayTarget>,
    clients: &Clients,
    aggregate: &str,
    key: &str,
    op: &str,
    timeout: Duration,
) -> Result<Option<Reply>, RuntimeError> {
    let gateway = Arc::new(Gateway::new(targets, clients, &format!("cli-{}", std::process::id()))?);
    let target = gateway.target(aggregate).map_err(RuntimeError::Gateway)?.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (g, c, s) = (gateway.clone(), clients.clone(), stop.clone());
    let reader = tokio::task::spawn_blocking(move || g.spawn_reader(&c, s)).await.expect("reader start does not panic")?;
    let command_id = gateway.new_command_id();
    let envelope = serde_json::to_vec(&serde_json::json!({"command_id": command_id, "aggregate_id": key})).expect("JSON serializes");
    let reply = gateway.submit(&target, key, &command_id, &envelope, timeout, Some(op)).await.map_err(RuntimeError::Gateway);
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    reply
}

/// Whether a reply answers a command some instance's gateway sent: those carry their
/// command id as correlation id. Every other reply (commands produced to Kafka directly,
/// the bulk of a busy application) is skipped without decoding.
fn sent_by_a_gateway(m: &rdkafka::message::BorrowedMessage<'_>) -> bool {
    use rdkafka::message::Headers;
    let Some(headers) = m.headers() else { return false };
    headers.iter().any(|h| h.key == crate::record::header::CORRELATION_ID && h.value.is_some() && h.value == m.key())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request given up before the broker answered (a client that hung up, the
    /// request time limit) leaves no pending command behind: it would count against
    /// `max_pending_commands` for ever. No broker here, so no delivery report comes.
    #[tokio::test]
    async fn a_request_given_up_leaves_no_pending_command() {
        let target = GatewayTarget {
            commands: "commands".into(),
            command_format: Format::Json,
            replies: "replies".into(),
            reply_format: Format::Json,
            reply_partitions: 1,
            check: Arc::new(|_, _| Ok(())),
        };
        let gateway = Gateway::new(BTreeMap::from([("a".to_string(), target.clone())]), &Clients::plain("127.0.0.1:1"), "i").unwrap();
        let submit = gateway.submit(&target, "id-1", "cmd-1", b"{}", Duration::from_secs(5), None);
        assert!(tokio::time::timeout(Duration::from_millis(300), submit).await.is_err(), "nothing can be delivered without a broker");
        assert_eq!(gateway.pending(), 0, "the given-up command's entry is gone");
    }
}
