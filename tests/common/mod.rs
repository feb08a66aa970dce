//! Test harness for integration tests against a real Kafka broker (KRaft). Uses
//! `KAFKA_BOOTSTRAP` when set; otherwise starts one with `deploy/kafka-local up`.
//! Every test uses its own application id and topic names, so tests share one broker.
#![allow(dead_code)]

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer, DefaultProducerContext};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub fn bootstrap() -> String {
    static B: OnceLock<String> = OnceLock::new();
    B.get_or_init(|| {
        if let Ok(b) = std::env::var("KAFKA_BOOTSTRAP") {
            return b;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kafka-local");
        let out = Command::new(&script).arg("up").stderr(Stdio::inherit()).output()
            .expect("run deploy/kafka-local up");
        assert!(out.status.success(), "deploy/kafka-local up failed");
        String::from_utf8(out.stdout).unwrap().lines().last().expect("bootstrap address").trim().to_string()
    })
    .clone()
}

/// The Kafka settings file the tests run with (`MILLRACE_TEST_KAFKA_CONFIG`, set by
/// `deploy/test --secure` to `deploy/kafka-local client-config`): TLS and SASL.
pub fn kafka_config() -> Option<PathBuf> {
    std::env::var_os("MILLRACE_TEST_KAFKA_CONFIG").map(PathBuf::from)
}

fn kafka_settings() -> Vec<(String, String)> {
    kafka_config().map(|f| millrace::kafka::parse_properties(&f).expect("the test Kafka settings parse")).unwrap_or_default()
}

/// A client of the test broker, with the test Kafka settings.
pub fn client_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap());
    // As millrace's own clients (`Clients::client`): librdkafka 2.12's re-bootstrap after
    // a broker restart left a test's producer with no connection to the leader.
    c.set("metadata.recovery.strategy", "none");
    for (k, v) in kafka_settings() {
        c.set(k, v);
    }
    c
}

/// The client factory the library's own functions take, for the test broker.
pub fn clients() -> millrace::kafka::Clients {
    millrace::kafka::Clients::new(&bootstrap(), kafka_settings(), "MILLRACE_TEST_KAFKA_CONFIG", vec![], vec![]).expect("test Kafka settings")
}

/// Creates a topic with topic-level settings (e.g. `max.message.bytes`), as an operator would.
pub fn create_topic_with(name: &str, partitions: i32, config: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        client_config().create().unwrap();
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in config {
        t = t.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.create_topics(&[t], &opts)).unwrap();
    for r in results {
        r.unwrap_or_else(|(topic, code)| panic!("create {topic}: {code}"));
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() % 100_000_000;
    format!("{prefix}-{}-{t}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// Topic names and topology of one test application.
pub struct Setup {
    pub app: String,
    pub commands: String,
    pub events: String,
    pub replies: String,
    pub changelog: String,
    pub dead_letters: String,
    pub dir: tempfile::TempDir,
    pub topology: PathBuf,
    pub partitions: i32,
}

impl Setup {
    pub fn new(name: &str, partitions: i32, codec: &str) -> Setup {
        let app = unique(name);
        let dir = tempfile::tempdir().unwrap();
        let commands = format!("{app}-commands");
        let events = format!("{app}-events");
        let replies = format!("{app}-replies");
        let topology = dir.path().join("topology.yaml");
        std::fs::write(&topology, format!(
"version: 1
application_id: {app}
topics:
  {commands}: {{ partitions: {partitions}, codec: {codec} }}
  {events}: {{ partitions: {partitions}, codec: {codec} }}
  {replies}: {{ partitions: 2, codec: {codec} }}
aggregates:
  customers:
    aggregate: customer
    commands: {commands}
    events: {events}
    replies: {replies}
    store: customers
    store_codec: {codec}
    event_history: true
stores:
  customers:
    indexes: [status]
processing:
  commit_interval_ms: 100
")).unwrap();
        Setup {
            changelog: format!("{app}-customers-changelog"),
            dead_letters: format!("{app}-dead-letters"),
            app, commands, events, replies, dir, topology, partitions,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn start(&self) -> Instance {
        Instance::start(self, "i0", &self.state_dir())
    }

    /// Another instance of the same application, with its own id and state directory.
    pub fn start_instance(&self, id: &str) -> Instance {
        Instance::start(self, id, &self.dir.path().join(format!("state-{id}")))
    }
}

/// A `millrace run` process.
pub struct Instance {
    pub child: Child,
    pub http: String,
    pub log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Instance {
    pub fn start(setup: &Setup, id: &str, state_dir: &Path) -> Instance {
        let mut i = Instance::spawn(setup, id, state_dir);
        i.wait_ready();
        i
    }

    /// Starts the process without waiting for it to be ready.
    pub fn spawn(setup: &Setup, id: &str, state_dir: &Path) -> Instance {
        Instance::spawn_with(setup, id, state_dir, &[])
    }

    /// Starts the process with more command-line arguments, without waiting for it.
    pub fn spawn_with(setup: &Setup, id: &str, state_dir: &Path, extra: &[&std::ffi::OsStr]) -> Instance {
        let http = format!("127.0.0.1:{}", free_port());
        let log = setup.dir.path().join(format!("instance-{}.log", unique("log")));
        let logfile = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_millrace"))
            .args(["run", "--topology"]).arg(&setup.topology)
            .args(["--bootstrap-servers", &bootstrap()])
            .args(kafka_config().map(|f| vec!["--kafka-config".into(), f.into_os_string()]).unwrap_or_default())
            .arg("--state-dir").arg(state_dir)
            .args(["--http", &http, "--instance-id", id])
            .args(["--consumer-config", "session.timeout.ms=6000"])
            .args(extra)
            .env("MILLRACE_LOG", std::env::var("MILLRACE_TEST_LOG").unwrap_or("info".into()))
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .expect("start millrace");
        Instance { child, http, log }
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("millrace exited with {status} before ready; log:\n{}", self.log_text());
            }
            if let Ok((200, _)) = http_get(&self.http, "/ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("millrace not ready within 90 s; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = http_get(&self.http, path).expect("http request");
        (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)))
    }

    pub fn metrics(&self) -> String {
        http_get(&self.http, "/metrics").expect("metrics").1
    }

    /// Sum of a counter over all its label sets.
    pub fn metric_sum(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn kill9(self) {
        self.kill9_ref();
    }

    /// SIGKILL without giving up the handle (its Drop then has nothing left to do).
    pub fn kill9_ref(&self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
    }

    /// SIGSTOP, returning once every thread of the process is stopped: `kill` only queues
    /// the signal, and on a loaded machine a thread can take a while to be scheduled and
    /// stop. Panics if they are not all stopped within 10 s.
    pub fn stop(&self) {
        let pid = self.child.id();
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let states = thread_states(pid);
            if !states.is_empty() && states.iter().all(|s| *s == 'T' || *s == 't') {
                return;
            }
            assert!(Instant::now() < deadline, "process {pid} not stopped 10 s after SIGSTOP: thread states {states:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGCONT after `stop`.
    pub fn resume(&self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGCONT) };
    }

    /// SIGTERM, then wait for the clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.terminate_within(Duration::from_secs(60)).0
    }

    /// SIGTERM; the exit status and how long after the signal it came. Panics, with the
    /// log, if the process is still running `within` after it.
    pub fn terminate_within(&mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let asked = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s, asked.elapsed());
            }
            assert!(asked.elapsed() < within, "still running {:?} after SIGTERM; log:\n{}", asked.elapsed(), self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of one metric series (`name{labels}` exactly as exported), or None when it
    /// is not exported or the server does not answer (yet).
    pub fn series(&self, series: &str) -> Option<f64> {
        let page = http_get(&self.http, "/metrics").ok()?.1;
        let line = page.lines().find(|l| l.strip_prefix(series).is_some_and(|v| v.starts_with(' ')))?;
        line.rsplit(' ').next()?.parse().ok()
    }
}

/// The scheduler state of each thread of a process (`/proc/PID/task/*/stat`, the field after
/// the command name): `T` stopped by a signal, `S` sleeping, `R` running.
fn thread_states(pid: u32) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter_map(|stat| stat.rsplit_once(") ")?.1.chars().next())
        .collect()
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP/1.0 GET: status and body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_get_with(addr, path, &[]).map(|(status, _, body)| (status, body))
}

/// HTTP/1.0 GET with request headers: status, response headers (lower-case names), body.
pub fn http_get_with(addr: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, BTreeMap<String, String>, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}\r\n")?;
    read_response(s)
}

/// Status, headers (lower-case names) and body of an HTTP/1.0 response read to its end.
fn read_response(mut s: TcpStream) -> std::io::Result<(u16, BTreeMap<String, String>, String)> {
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}

pub fn producer() -> ThreadedProducer<DefaultProducerContext> {
    client_config()
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

pub fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &str, value: &[u8], headers: &[(&str, &str)]) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header { key: k, value: Some(*v) });
    }
    send_record(p, BaseRecord::to(topic).key(key).payload(value).headers(h));
}

/// Sends with an explicit record timestamp (CreateTime, ms).
pub fn send_at(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &str, value: &[u8], ts: i64) {
    send_record(p, BaseRecord::to(topic).key(key).payload(value).timestamp(ts));
}

/// Queues a record, waiting while the producer's queue is full.
fn send_record<'a>(p: &ThreadedProducer<DefaultProducerContext>, mut rec: BaseRecord<'a, str, [u8]>) {
    while let Err((_, r)) = p.send(rec) {
        rec = r;
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn command_json(command_id: &str, aggregate_id: &str, expected: Option<u64>, ty: &str, payload: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "command_id": command_id, "aggregate_id": aggregate_id, "expected_version": expected,
        "type": ty, "payload": payload,
    })).unwrap()
}

pub fn flush(p: &ThreadedProducer<DefaultProducerContext>) {
    p.flush(Duration::from_secs(30)).unwrap();
}

/// A load running beside a test: `commands` records made by `command(i)` (key, value)
/// sent to `topic`, with `pause` after every `every`-th, so faults land while commands
/// flow. The producer buffers and retries while the broker is away; the end waits up to
/// `flush_within` for everything to be delivered. The counter says how many were handed
/// to the producer so far.
pub fn spawn_loader(
    topic: &str,
    commands: usize,
    command: impl Fn(usize) -> (String, Vec<u8>) + Send + 'static,
    (every, pause): (usize, Duration),
    flush_within: Duration,
) -> (std::thread::JoinHandle<()>, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (topic, counter) = (topic.to_string(), sent.clone());
    let loader = std::thread::spawn(move || {
        let p = producer();
        for i in 0..commands {
            let (key, value) = command(i);
            send(&p, &topic, &key, &value, &[]);
            counter.store(i + 1, Ordering::SeqCst);
            if (i + 1) % every == 0 {
                std::thread::sleep(pause);
            }
        }
        p.flush(flush_within).expect("the loader's records are delivered");
    });
    (loader, sent)
}

/// Command `i` of a load over `keys` customers: each key's first is a create, the rest
/// are updates.
pub fn create_then_update(i: usize, keys: usize) -> (String, Vec<u8>) {
    let key = format!("k{}", i % keys);
    let (ty, payload) = if i < keys {
        ("CreateCustomer", serde_json::json!({"name": format!("n{i}"), "email": "a@b"}))
    } else {
        ("UpdateCustomer", serde_json::json!({"name": format!("n{i}"), "email": format!("{i}@b")}))
    };
    let value = command_json(&format!("cmd-{i}"), &key, None, ty, payload);
    (key, value)
}

/// `n` records of 200 bytes (keys `filler-<i>`) written straight to partition 0 of a
/// store's changelog, in small batches: a restore copies them as they are, and one
/// reading with `max.partition.fetch.bytes=1` reads two or three a fetch.
pub fn write_filler(changelog: &str, n: usize) {
    let p: ThreadedProducer<DefaultProducerContext> = client_config().set("linger.ms", "0").set("batch.size", "400").create().unwrap();
    let filler = vec![b'f'; 200];
    for i in 0..n {
        let key = format!("filler-{i}");
        send_record(&p, BaseRecord::to(changelog).key(key.as_str()).payload(&filler[..]).partition(0));
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// Where the restore tests start (one partition): `filler` records (`write_filler`)
/// ahead of customer x at version 2, built by an instance `a` that has stopped since.
/// Returns the commands' producer.
pub fn x_at_version_2_behind_filler(s: &Setup, filler: usize) -> ThreadedProducer<DefaultProducerContext> {
    let a = s.start_instance("a");
    write_filler(&s.changelog, filler);
    let c = producer();
    send(&c, &s.commands, "x", &command_json("x1", "x", None, "CreateCustomer", serde_json::json!({"name": "x", "email": "x@example.org"})), &[]);
    send(&c, &s.commands, "x", &command_json("x2", "x", Some(1), "UpdateCustomer", serde_json::json!({"name": "x2", "email": "x@example.org"})), &[]);
    flush(&c);
    assert_eq!(wait_for(&s.replies, 2, Duration::from_secs(60)).len(), 2);
    assert!(a.terminate().success());
    c
}

/// After `x_at_version_2_behind_filler`: a command expecting version 2 is accepted at
/// version 3, so the instance decided it on the whole restored state.
pub fn x_is_at_version_2(s: &Setup, c: &ThreadedProducer<DefaultProducerContext>) {
    send(c, &s.commands, "x", &command_json("x3", "x", Some(2), "UpdateCustomer", serde_json::json!({"name": "x3", "email": "x@example.org"})), &[]);
    flush(c);
    let replies = replies_by_id(&wait_for(&s.replies, 3, Duration::from_secs(90)));
    let x3 = &replies["x3"];
    assert_eq!(x3.len(), 1, "{x3:?}");
    assert_eq!(x3[0]["outcome"], "accepted", "decided on the whole state: {x3:?}");
    assert_eq!(x3[0]["version"], 3, "{x3:?}");
}

/// Starts instance `id` on `state`, restoring slowly: one small record batch a fetch.
pub fn spawn_slow_restore(s: &Setup, id: &str, state: &Path) -> Instance {
    let slow = s.dir.path().join("slow-fetch.properties");
    std::fs::write(&slow, "max.partition.fetch.bytes=1\n").unwrap();
    Instance::spawn_with(s, id, state, &[std::ffi::OsStr::new("--kafka-config"), slow.as_os_str()])
}

/// A committed record, read back.
#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub timestamp: Option<i64>,
}

impl Rec {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).unwrap()
    }
}

/// Every committed record of `topic` (read_committed), up to the current end.
pub fn read_all(topic: &str) -> Vec<Rec> {
    read_all_isolated(topic, "read_committed").0
}

/// Every record of `topic` up to the current end, as `isolation` reads them
/// (`read_uncommitted` also returns aborted ones), and the topic's partition count.
pub fn read_all_isolated(topic: &str, isolation: &str) -> (Vec<Rec>, usize) {
    let c: BaseConsumer = client_config()
        .set("group.id", unique("reader"))
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let parts = md.topics()[0].partitions().len();
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut eof = 0;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while eof < parts && Instant::now() < deadline {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => out.push(Rec {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: m.payload().unwrap_or_default().to_vec(),
                headers: m.headers().map(|h| h.iter()
                    .map(|x| (x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned()))
                    .collect()).unwrap_or_default(),
                timestamp: m.timestamp().to_millis(),
            }),
            Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
            _ => {}
        }
    }
    (out, parts)
}

/// Waits until `topic` holds at least `n` committed records; returns them.
pub fn wait_for(topic: &str, n: usize, within: Duration) -> Vec<Rec> {
    let deadline = Instant::now() + within;
    loop {
        let all = read_all(topic);
        if all.len() >= n || Instant::now() > deadline {
            return all;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Replies by command id.
pub fn replies_by_id(recs: &[Rec]) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut m: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for r in recs {
        let v = r.json();
        m.entry(v["command_id"].as_str().unwrap().to_string()).or_default().push(v);
    }
    m
}

/// How many input records `group` has committed on `topic`: the commands whose
/// transactions are done. None while the broker cannot say (a transaction holding offsets
/// for the group is still open: UNSTABLE_OFFSET_COMMIT).
pub fn committed_sum(group: &str, topic: &str, partitions: i32) -> Option<i64> {
    committed_offsets(group, topic, partitions).map(|o| o.iter().sum())
}

/// `group`'s committed offset of each partition of `topic` (0 where none), or None while
/// the broker cannot say (as for `committed_sum`).
pub fn committed_offsets(group: &str, topic: &str, partitions: i32) -> Option<Vec<i64>> {
    let c: BaseConsumer = client_config()
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let t = c.committed_offsets(tpl, Duration::from_secs(10)).ok()?;
    Some(t.elements().iter().map(|e| e.offset().to_raw().filter(|o| *o > 0).unwrap_or(0)).collect())
}

/// The exactly-once checks, from the committed output alone, for a customer application
/// that was sent `commands` commands (ids `cmd-<i>`) over keys `k0..k<keys>`:
/// - exactly one reply per command id;
/// - per aggregate, event versions 1..n with no gap and no duplicate;
/// - accepted replies announce exactly the events that exist;
/// - every snapshot served over HTTP (by the instances given, in turn) is the fold of its
///   committed events.
pub fn check_exactly_once(s: &Setup, commands: usize, keys: usize, query: &[&Instance]) {
    use millrace::domain::customer::{Customer, CustomerAggregate, CustomerEvent};
    use millrace::processor::Aggregate;
    let replies = wait_for(&s.replies, commands, Duration::from_secs(300));
    let by_id = replies_by_id(&replies);
    assert_eq!(by_id.len(), commands, "every command answered");
    let doubled: Vec<_> = by_id.iter().filter(|(_, v)| v.len() != 1).map(|(k, _)| k).take(5).collect();
    assert!(doubled.is_empty(), "commands with more than one reply: {doubled:?}");
    assert_eq!(replies.len(), commands, "no reply twice");

    let mut events: BTreeMap<String, Vec<(u64, CustomerEvent)>> = BTreeMap::new();
    let all_events = read_all(&s.events);
    let raw = events_by_key(&all_events);
    for e in all_events {
        let v = e.json();
        let ev: CustomerEvent = serde_json::from_value(serde_json::json!({"type": v["type"], "payload": v["payload"]})).unwrap();
        events.entry(e.key.unwrap()).or_default().push((v["version"].as_u64().unwrap(), ev));
    }
    for (key, evs) in &events {
        let versions: Vec<u64> = evs.iter().map(|(v, _)| *v).collect();
        let expected: Vec<u64> = (1..=evs.len() as u64).collect();
        assert_eq!(versions, expected, "event versions of {key}");
    }
    let accepted_events: u64 = by_id.values().map(|v| v[0]["event_count"].as_u64().unwrap_or(0)).sum();
    assert_eq!(accepted_events, events.values().map(|v| v.len() as u64).sum::<u64>(), "events announced = events written");

    for k in 0..keys {
        let key = format!("k{k}");
        let evs = events.get(&key).cloned().unwrap_or_default();
        let folded = evs.iter().fold(Customer::default(), |s, (_, e)| CustomerAggregate::evolve(s, e));
        let i = query[k % query.len()];
        let path = format!("/stores/customers/keys/{key}");
        let mut r = i.get(&path);
        let deadline = Instant::now() + Duration::from_secs(30);
        while r.0 == 503 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            r = i.get(&path);
        }
        let (status, body) = r;
        if evs.is_empty() {
            assert_eq!(status, 404, "{key} has no events: {body}");
            continue;
        }
        assert_eq!(status, 200, "{key}: {body}");
        assert_eq!(body["version"].as_u64().unwrap(), evs.len() as u64, "{key}");
        assert_eq!(body["state"], serde_json::to_value(&folded).unwrap(), "{key}");
        // The per-aggregate event history (sampled): exactly the committed events.
        if k % 97 == 0 {
            assert_eq!(history(i, &key), raw[&key], "event history of {key}");
        }
    }
}

/// Committed events per aggregate id, as JSON, in log order.
pub fn events_by_key(recs: &[Rec]) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut sorted: Vec<&Rec> = recs.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut m: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for r in sorted {
        m.entry(r.key.clone().unwrap_or_default()).or_default().push(r.json());
    }
    m
}

/// An aggregate's event history over HTTP (`GET /aggregates/customer/{id}/events`), all pages.
pub fn history(i: &Instance, id: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let (status, body) = i.get(&format!("/aggregates/customer/{id}/events?from_version={from}&limit=7"));
        assert_eq!(status, 200, "history of {id}: {body}");
        assert_eq!(body["complete"], true, "{body}");
        out.extend(body["events"].as_array().unwrap().iter().cloned());
        match body["next_version"].as_u64() {
            Some(n) => from = n,
            None => return out,
        }
    }
}

/// HTTP/1.0 POST of a body: status, response headers (lower-case names), body.
pub fn http_post(addr: &str, path: &str, body: &str) -> std::io::Result<(u16, BTreeMap<String, String>, String)> {
    http_post_with(addr, path, &[("Content-Type", "application/json")], body)
}

/// HTTP/1.0 POST with request headers (the content type among them).
pub fn http_post_with(addr: &str, path: &str, headers: &[(&str, &str)], body: &str) -> std::io::Result<(u16, BTreeMap<String, String>, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(90)))?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(s, "POST {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}Content-Length: {}\r\n\r\n{body}", body.len())?;
    read_response(s)
}

pub fn http_delete(addr: &str, path: &str) -> (u16, BTreeMap<String, String>, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "DELETE {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    read_response(s).expect("response")
}

/// Whether `bootstrap()` is the broker deploy/kafka-local started (and so a test may stop
/// and restart it).
pub fn broker_is_ours() -> bool {
    let out = kafka_local_script().arg("status").output().expect("run deploy/kafka-local status");
    let status = String::from_utf8_lossy(&out.stdout);
    status.starts_with(&format!("up {} pid ", bootstrap()))
}

/// Whether this test may stop and restart the broker (`broker_is_ours`); says why not,
/// for the test to pass as skipped.
pub fn may_stop_the_broker() -> bool {
    let ours = broker_is_ours();
    if !ours {
        eprintln!("skipped: the broker at {} was not started by deploy/kafka-local, so this test cannot stop it", bootstrap());
    }
    ours
}

/// Runs `deploy/kafka-local <arg>` (`up`, `down`).
pub fn kafka_local(arg: &str) {
    let status = kafka_local_script().args(arg.split_whitespace()).status().expect("run deploy/kafka-local");
    assert!(status.success(), "deploy/kafka-local {arg} failed");
}

/// `deploy/kafka-local`, aimed at the broker under test. The script picks its broker by
/// `KAFKA_PORT`; when that is unset, the port is taken from a local `KAFKA_BOOTSTRAP`, so
/// `KAFKA_BOOTSTRAP=127.0.0.1:19192` alone names the test broker. Without this, the
/// script looked at its default port, found no broker of its own there, and the tests
/// that restart the broker passed as skipped.
fn kafka_local_script() -> Command {
    let mut cmd = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kafka-local"));
    if std::env::var_os("KAFKA_PORT").is_none() {
        let local_port = ["127.0.0.1:", "localhost:"].iter().find_map(|host| bootstrap().strip_prefix(host).map(str::to_string));
        if let Some(port) = local_port.filter(|p| p.parse::<u16>().is_ok()) {
            cmd.env("KAFKA_PORT", port);
        }
    }
    cmd
}

/// Brings the broker back even if a test that stopped it fails half-way: later tests
/// need it.
pub struct BrokerBack;
impl Drop for BrokerBack {
    fn drop(&mut self) {
        kafka_local("up");
    }
}

/// The test PostgreSQL: `MILLRACE_TEST_POSTGRES_URL` when set (deploy/test sets it),
/// otherwise the one `deploy/postgres-local up` starts.
pub fn postgres_url() -> String {
    static U: OnceLock<String> = OnceLock::new();
    U.get_or_init(|| {
        if let Ok(u) = std::env::var("MILLRACE_TEST_POSTGRES_URL") {
            return u;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/postgres-local");
        let out = Command::new(&script).arg("up").stderr(Stdio::inherit()).output().expect("run deploy/postgres-local up");
        assert!(out.status.success(), "deploy/postgres-local up failed");
        String::from_utf8(out.stdout).unwrap().lines().last().expect("postgres url").trim().to_string()
    })
    .clone()
}

/// A connection to the test PostgreSQL, for checking what projections wrote.
pub struct Pg {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Pg {
    pub fn connect() -> Pg {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let url = postgres_url();
        let client = rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect to the test PostgreSQL");
            tokio::spawn(connection);
            client
        });
        Pg { rt, client }
    }

    pub fn execute(&self, sql: &str) {
        self.rt.block_on(self.client.batch_execute(sql)).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        self.rt.block_on(self.client.query(sql, &[])).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// A table name no other test (or earlier run) uses.
pub fn unique_table(prefix: &str) -> String {
    unique(prefix).replace('-', "_")
}

/// An in-process instance of a test application with `registry` (a release of the user's
/// binary with its own aggregates or projections), as the `millrace` binary runs one.
pub struct InProcessApp {
    pub http: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcessApp {
    pub fn start(s: &Setup, registry: &millrace::Registry, postgres_url: Option<String>) -> InProcessApp {
        let topology = millrace::topology::load(&s.topology).unwrap();
        let config = millrace::AppConfig {
            kafka: clients(),
            state_dir: s.state_dir(),
            instance_id: "r0".into(),
            advertised_http: None,
            http: Default::default(),
            postgres_url,
            run: Default::default(),
        };
        let app = millrace::App::new(topology, registry, config).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let http = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let stopped = async move {
                    while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                app.run(listener, None, stopped).await.unwrap();
            });
        });
        let deadline = Instant::now() + Duration::from_secs(90);
        while !matches!(http_get(&http, "/ready"), Ok((200, _))) {
            assert!(Instant::now() < deadline, "the application did not get ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        InProcessApp { http, stop, thread: Some(thread) }
    }

    pub fn snapshot(&self, key: &str) -> serde_json::Value {
        let (status, body) = http_get(&self.http, &format!("/stores/customers/keys/{key}")).unwrap();
        assert_eq!(status, 200, "{key}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// A clean shutdown (the members directory then says it left).
    pub fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
    }
}
