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

/// One request waiting for a command's reply. Requests that send the same command id at
/// the same time (a client retrying before its first attempt was answered) each wait:
/// the reply answers them all, and each request that ends takes only its own place.
struct Waiter {
    ticket: u64,
    reply: oneshot::Sender<Reply>,
}

/// Removes a request's `Waiter` from `Gateway::pending` when dropped, however the request
/// ends: also when its future is dropped (a client that hung up, the request time limit),
/// or it would count against `max_pending_commands` for ever.
struct PendingEntry<'a> {
    gateway: &'a Gateway,
    command_id: &'a str,
    ticket: u64,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.gateway.pending.lock() {
            let Pending { by_command, requests } = &mut *pending;
            if let Some(waiters) = by_command.get_mut(self.command_id) {
                let before = waiters.len();
                waiters.retain(|w| w.ticket != self.ticket);
                *requests -= before - waiters.len();
                if waiters.is_empty() {
                    by_command.remove(self.command_id);
                }
            }
        }
    }
}

/// The requests waiting for replies, by command id, and how many there are in all (what
/// `max_pending_commands` bounds, read for every command sent).
#[derive(Default)]
struct Pending {
    by_command: HashMap<String, Vec<Waiter>>,
    requests: usize,
}

pub struct Gateway {
    /// By aggregate name and by node name.
    targets: BTreeMap<String, GatewayTarget>,
    producer: PolledProducer<Delivery>,
    pending: Mutex<Pending>,
    recent: Mutex<(HashMap<String, Reply>, VecDeque<String>)>,
    instance: String,
    counter: AtomicU64,
    /// Tells apart the requests waiting for one command id.
    tickets: AtomicU64,
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
            pending: Mutex::new(Pending::default()),
            recent: Mutex::new((HashMap::new(), VecDeque::new())),
            instance: instance.to_string(),
            counter: AtomicU64::new(0),
            tickets: AtomicU64::new(0),
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
        let (_pending, rx) = self.wait_for(command_id);
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

    /// A place among the requests waiting for `command_id`'s reply, and where the reply
    /// will come; the place goes when the entry is dropped.
    fn wait_for<'a>(&'a self, command_id: &'a str) -> (PendingEntry<'a>, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let mut pending = self.pending.lock().expect("gateway lock");
        pending.by_command.entry(command_id.to_string()).or_default().push(Waiter { ticket, reply: tx });
        pending.requests += 1;
        drop(pending);
        (PendingEntry { gateway: self, command_id, ticket }, rx)
    }

    /// The reply of a recent command, if this instance has seen it.
    pub fn status(&self, command_id: &str) -> Option<Reply> {
        self.recent.lock().expect("gateway lock").0.get(command_id).cloned()
    }

    /// Requests waiting for their commands' replies.
    pub fn pending(&self) -> usize {
        self.pending.lock().expect("gateway lock").requests
    }

    /// Whether a command of this instance is still waiting for its reply.
    pub fn is_pending(&self, command_id: &str) -> bool {
        self.pending.lock().expect("gateway lock").by_command.contains_key(command_id)
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
        let waiters = {
            let mut pending = self.pending.lock().expect("gateway lock");
            let waiters = pending.by_command.remove(&reply.command_id).unwrap_or_default();
            pending.requests -= waiters.len();
            waiters
        };
        for w in waiters {
            let _ = w.reply.send(reply.clone());
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

    fn target() -> GatewayTarget {
        GatewayTarget {
            commands: "commands".into(),
            command_format: Format::Json,
            replies: "replies".into(),
            reply_format: Format::Json,
            reply_partitions: 1,
            check: Arc::new(|_, _| Ok(())),
        }
    }

    /// A gateway whose broker never answers: nothing is delivered.
    fn gateway() -> Gateway {
        Gateway::new(BTreeMap::from([("a".to_string(), target())]), &Clients::plain("127.0.0.1:1"), "i").unwrap()
    }

    fn reply(command_id: &str, version: u64) -> Reply {
        Reply {
            command_id: command_id.into(),
            aggregate_id: "id-1".into(),
            outcome: wire::Outcome::Accepted,
            version,
            event_count: Some(1),
            reason: None,
            expected: None,
            actual: None,
            original_outcome: None,
        }
    }

    /// A request given up before the broker answered (a client that hung up, the
    /// request time limit) leaves no pending command behind: it would count against
    /// `max_pending_commands` for ever. No broker here, so no delivery report comes.
    #[tokio::test]
    async fn a_request_given_up_leaves_no_pending_command() {
        let (gateway, target) = (gateway(), target());
        let submit = gateway.submit(&target, "id-1", "cmd-1", b"{}", Duration::from_secs(5), None);
        assert!(tokio::time::timeout(Duration::from_millis(300), submit).await.is_err(), "nothing can be delivered without a broker");
        assert_eq!(gateway.pending(), 0, "the given-up command's entry is gone");
    }

    /// Requests sending the same command id at once (a client retrying before its first
    /// attempt was answered) each get the reply; one that ends first takes only its own
    /// place, and the others still get the reply.
    #[test]
    fn requests_for_the_same_command_each_get_its_reply() {
        let gateway = gateway();
        let (first, mut first_reply) = gateway.wait_for("cmd-1");
        let (_second, mut second_reply) = gateway.wait_for("cmd-1");
        let (_third, mut third_reply) = gateway.wait_for("cmd-1");
        assert_eq!((gateway.pending(), gateway.is_pending("cmd-1")), (3, true));
        drop(first);
        assert_eq!(gateway.pending(), 2, "only the first request's place went");
        gateway.answered(reply("cmd-1", 4));
        assert!(first_reply.try_recv().is_err(), "the request that ended is not answered");
        for rx in [&mut second_reply, &mut third_reply] {
            assert_eq!(rx.try_recv().map(|r| r.version).ok(), Some(4), "each waiting request has the reply");
        }
        assert_eq!((gateway.pending(), gateway.is_pending("cmd-1")), (0, false));
        assert_eq!(gateway.status("cmd-1").map(|r| r.version), Some(4));
    }

    /// The last request for a command to end removes its entry.
    #[test]
    fn the_last_request_to_end_removes_the_entry() {
        let gateway = gateway();
        let (first, _) = gateway.wait_for("cmd-1");
        let (second, _) = gateway.wait_for("cmd-1");
        drop(second);
        assert!(gateway.is_pending("cmd-1"));
        drop(first);
        assert_eq!((gateway.pending(), gateway.is_pending("cmd-1")), (0, false));
    }
}
