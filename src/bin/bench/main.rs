//! millrace-bench: exactly-once throughput of millrace next to a raw rdkafka transactional
//! consume→produce copy and to the same aggregate written for Kafka Streams, on the same
//! broker, in the same run, at the same commit interval. Prints commands/s, ratios, peak
//! RSS and CPU per command. A benchmark, never a test: it prints figures and asserts nothing
//! about time.
//!
//! Usage: millrace-bench [COMMANDS] [KEYS]     the exactly-once aggregate
//!        millrace-bench join [ORDERS]         enriched orders/s, both join variants
//!        millrace-bench crash [COMMANDS]      what a restart after SIGKILL restores
//!        millrace-bench progress [ORDERS]     the latency of waits, calm and in a failover
//!        millrace-bench projection [EVENTS]   events/s into PostgreSQL, next to a plain consumer
//!        millrace-bench restore [KEYS]        full restore and restart times, next to a bare reader
//!        millrace-bench latency [RATE]        command→reply percentiles at a fixed offered rate
//!        millrace-bench queries [KEYS]        key lookups at a fixed rate (MILLRACE_BENCH_RATE,
//!                                             default 20000), local and forwarded
//! (bootstrap from KAFKA_BOOTSTRAP; processing threads from MILLRACE_BENCH_THREADS,
//! default 1; a secondary index on the aggregate's store from MILLRACE_BENCH_INDEX, a
//! field name; the dedup window from MILLRACE_BENCH_DEDUP, default 32; the padding of
//! each command from MILLRACE_BENCH_PAD, default 900 (~1 KB commands); command ids shaped
//! like UUIDs (36 characters, as most clients make them) instead of `b-N` from
//! MILLRACE_BENCH_UUID_IDS=1; the Kafka Streams application from MILLRACE_BENCH_KSTREAMS)

use kstreams::KafkaStreamsApp;
use millrace::runtime::topics::{self, TopicNeed};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;
const COMMIT_MS: u64 = 100;

mod crash;
mod join;
mod kstreams;
mod latency;
mod progress;
mod projection;
mod queries;
mod restore;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count = |default| args.get(2).and_then(|s| s.parse().ok()).unwrap_or(default);
    match args.get(1).map(String::as_str) {
        Some("join") => return join::run(count(200_000)),
        Some("crash") => return crash::run(count(200_000)),
        Some("progress") => return progress::run(count(1_500)),
        Some("projection") => return projection::run(count(200_000)),
        Some("restore") => return restore::run(count(1_000_000)),
        Some("latency") => return latency::run(count(2_000)),
        Some("queries") => return queries::run(count(1_000_000)),
        _ => {}
    }
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let keys: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let kstreams = KafkaStreamsApp::from_env().map_err(|why| eprintln!("Kafka Streams not measured: {why}")).ok();
    let run = format!("bench-{}", std::process::id());
    let input = format!("{run}-commands");
    let copy_out = format!("{run}-copy");
    topics::ensure(&millrace::kafka::Clients::plain(&bootstrap), &[
        TopicNeed::plain(input.clone(), PARTITIONS),
        TopicNeed::plain(copy_out.clone(), PARTITIONS),
    ])
    .expect("create bench topics");

    // MILLRACE_BENCH_PAD: the padding in each command's name (900, ~1 KB commands, unless
    // set): smaller commands weigh the per-record costs more than the per-byte ones.
    let pad: usize = std::env::var("MILLRACE_BENCH_PAD").ok().and_then(|p| p.parse().ok()).unwrap_or(900);
    let size = if pad == 900 { "1 KB".to_string() } else { format!("{pad} B of padding") };
    eprintln!("loading {n} commands ({size}) over {keys} keys into {input}");
    load_padded(&bootstrap, &input, n, keys, pad);

    // Alternate the contenders, three rounds each, on the same input: one run of any is
    // noisy on a 2-core machine that also hosts the broker. Report medians.
    let mut copies = Vec::new();
    let mut runs = Vec::new();
    let mut ks_runs = Vec::new();
    let (mut usage, mut ks_usage) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let copy_group = format!("{run}-copy-{round}");
        let done = Arc::new(AtomicBool::new(false));
        let (b, i, o, g, d) = (bootstrap.clone(), input.clone(), copy_out.clone(), copy_group.clone(), done.clone());
        let started = Instant::now();
        let copier = std::thread::spawn(move || raw_copy(&b, &i, &o, &g, &d));
        wait_committed(&bootstrap, &copy_group, &input, n as i64);
        copies.push(started.elapsed().as_secs_f64());
        done.store(true, Ordering::SeqCst);
        copier.join().unwrap();

        let (secs, u) = run_millrace(&bootstrap, &format!("{run}-{round}"), &input, n);
        runs.push(secs);
        usage.push(u);
        let mut line = format!("round {round}: copy {:.0}/s, millrace {:.0}/s", n as f64 / copies[round], n as f64 / secs);
        if let Some(ks) = &kstreams {
            let (secs, u) = ks.run(&bootstrap, &format!("{run}-{round}-kstreams"), &input, n);
            ks_runs.push(secs);
            ks_usage.push(u);
            line += &format!(", kafka streams {:.0}/s", n as f64 / secs);
        }
        eprintln!("{line}");
    }
    let copy_secs = median(&mut copies);
    let millrace_secs = median(&mut runs);
    let copy_rate = n as f64 / copy_secs;
    let millrace_rate = n as f64 / millrace_secs;
    let per_10k = |u: &[ProcessUsage]| median(&mut u.iter().map(|u| u.cpu_secs * 10_000.0 / n as f64).collect::<Vec<_>>());
    let peak = |u: &[ProcessUsage]| u.iter().map(ProcessUsage::peak_mib).fold(0.0, f64::max);
    println!("commands                 {n} ({size}, {keys} keys, {PARTITIONS} partitions, commit every {COMMIT_MS} ms, 1 instance)");
    println!("raw transactional copy   {copy_rate:>10.0} records/s  (median of {ROUNDS}: {copy_secs:.2} s)");
    println!("millrace exactly-once    {millrace_rate:>10.0} commands/s (median of {ROUNDS}: {millrace_secs:.2} s)");
    println!("ratio millrace/copy      {:>10.2}", millrace_rate / copy_rate);
    println!("millrace peak RSS        {:>10.1} MiB,  CPU {:.2} s per 10k commands", peak(&usage), per_10k(&usage));
    if let Some(ks) = &kstreams {
        let ks_secs = median(&mut ks_runs);
        let ks_rate = n as f64 / ks_secs;
        println!("kafka streams EOS v2     {ks_rate:>10.0} commands/s (median of {ROUNDS}: {ks_secs:.2} s; JVM {})", ks.java_opts());
        println!("ratio millrace/kstreams  {:>10.2}", millrace_rate / ks_rate);
        println!("kafka streams peak RSS   {:>10.1} MiB,  CPU {:.2} s per 10k commands", peak(&ks_usage), per_10k(&ks_usage));
    }
}

const ROUNDS: usize = 3;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A distinct id per `i` in the shape of a random (version 4) UUID.
fn uuid_like(i: u64) -> String {
    // splitmix64: well spread, so ids share no prefix a comparison could stop at early.
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let (a, b) = (mix(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), mix(!i));
    format!("{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}", a >> 32, (a >> 16) & 0xffff, a & 0xfff, 0x8000 | (b >> 48) & 0x3fff, b & 0xffff_ffff_ffff)
}

pub(crate) fn load(bootstrap: &str, topic: &str, n: usize, keys: usize) {
    load_padded(bootstrap, topic, n, keys, 900)
}

/// As `load`, with `pad` bytes of padding in each command's name (900: ~1 KB commands).
pub(crate) fn load_padded(bootstrap: &str, topic: &str, n: usize, keys: usize, pad: usize) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .expect("producer");
    let pad = "x".repeat(pad);
    let uuid_ids = std::env::var("MILLRACE_BENCH_UUID_IDS").is_ok_and(|v| v == "1");
    for i in 0..n {
        let key = format!("cust-{}", i % keys);
        let ty = if i < keys { "CreateCustomer" } else { "UpdateCustomer" };
        let id = if uuid_ids { uuid_like(i as u64) } else { format!("b-{i}") };
        let value = format!(
            r#"{{"command_id":"{id}","aggregate_id":"{key}","expected_version":null,"type":"{ty}","payload":{{"name":"n{i}-{pad}","email":"e{i}@example.org"}}}}"#
        );
        let mut rec = BaseRecord::to(topic).key(&key).payload(&value);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
    p.flush(Duration::from_secs(120)).expect("flush");
}

/// The baseline: consume, produce one record per input, commit every COMMIT_MS with the
/// offsets in the transaction. What millrace does minus decoding, state and the extra outputs.
pub(crate) fn raw_copy(bootstrap: &str, input: &str, output: &str, group: &str, done: &AtomicBool) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", group)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()
        .expect("producer");
    producer.init_transactions(Duration::from_secs(30)).expect("init");
    consumer.subscribe(&[input]).expect("subscribe");
    let mut open = false;
    let mut since = Instant::now();
    let mut next: std::collections::BTreeMap<i32, i64> = Default::default();
    while !done.load(Ordering::SeqCst) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
            if !open {
                producer.begin_transaction().expect("begin");
                open = true;
                since = Instant::now();
            }
            let mut rec = BaseRecord::to(output).payload(m.payload().unwrap_or_default());
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            while let Err((_, r)) = producer.send(rec) {
                rec = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            next.insert(m.partition(), m.offset() + 1);
        }
        if open && since.elapsed() >= Duration::from_millis(COMMIT_MS) {
            let mut tpl = TopicPartitionList::new();
            for (p, o) in &next {
                tpl.add_partition_offset(input, *p, Offset::Offset(*o)).unwrap();
            }
            producer
                .send_offsets_to_transaction(&tpl, &consumer.group_metadata().unwrap(), Duration::from_secs(30))
                .expect("send offsets");
            // Same drain as millrace's sink: rdkafka's own flush polls in 100 ms slices.
            while producer.in_flight_count() > 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
            producer.commit_transaction(Duration::from_secs(30)).expect("commit");
            open = false;
        }
    }
}

/// Offsets `group` has committed on `topic`, summed over partitions (0 while unknown).
pub(crate) fn committed_sum(bootstrap: &str, group: &str, topic: &str) -> i64 {
    Committed::new(bootstrap, group, topic).sum()
}

/// Waits until `group` has committed `total` offsets on `topic`. One client asks every
/// 10 ms: a client per look took 0.1-0.2 s (connecting, finding the coordinator, and its
/// close), which blurred the restart figures by as much.
pub(crate) fn wait_committed(bootstrap: &str, group: &str, topic: &str, total: i64) {
    let committed = Committed::new(bootstrap, group, topic);
    while committed.sum() < total {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A client that reads a group's committed offsets on a topic.
struct Committed {
    consumer: BaseConsumer,
    partitions: TopicPartitionList,
}

impl Committed {
    fn new(bootstrap: &str, group: &str, topic: &str) -> Committed {
        let consumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().expect("consumer");
        let mut partitions = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            partitions.add_partition(topic, p);
        }
        Committed { consumer, partitions }
    }

    /// The sum of the committed offsets (0 when they cannot be read).
    fn sum(&self) -> i64 {
        self.consumer
            .committed_offsets(self.partitions.clone(), Duration::from_secs(10))
            .map(|t| t.elements().iter().filter_map(|e| e.offset().to_raw()).filter(|o| *o > 0).sum())
            .unwrap_or(0)
    }
}

fn run_millrace(bootstrap: &str, run: &str, input: &str, n: usize) -> (f64, ProcessUsage) {
    let app = format!("{run}-app");
    let threads: usize = std::env::var("MILLRACE_BENCH_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1);
    // The per-aggregate event history costs one more RocksDB write per event; measure it
    // both ways with MILLRACE_BENCH_EVENT_HISTORY=true.
    let history: bool = std::env::var("MILLRACE_BENCH_EVENT_HISTORY").ok().and_then(|t| t.parse().ok()).unwrap_or(false);
    let mut topology = customer_topology(&app, input, history, threads);
    // A secondary index costs a read of the value being replaced and the index keys of
    // both values per write; MILLRACE_BENCH_INDEX=status declares one (the demo's).
    if let Ok(field) = std::env::var("MILLRACE_BENCH_INDEX") {
        topology.push_str(&format!("stores:\n  customers:\n    indexes: [{field}]\n"));
    }
    run_topology(bootstrap, &app, &topology, input, n)
}

/// The benchmark's customer application: commands from `input`, events and replies to
/// `<app>-events` and `<app>-replies`, snapshots in the store `customers`.
pub(crate) fn customer_topology(app: &str, input: &str, history: bool, threads: usize) -> String {
    let dedup: usize = std::env::var("MILLRACE_BENCH_DEDUP").ok().and_then(|t| t.parse().ok()).unwrap_or(32);
    format!(
"version: 1
application_id: {app}
topics:
  {input}: {{ partitions: {PARTITIONS}, codec: json }}
  {app}-events: {{ partitions: {PARTITIONS}, codec: json }}
  {app}-replies: {{ partitions: {PARTITIONS}, codec: json }}
aggregates:
  customers:
    aggregate: customer
    commands: {input}
    events: {app}-events
    replies: {app}-replies
    store: customers
    event_history: {history}
    dedup_window: {dedup}
processing:
  commit_interval_ms: {COMMIT_MS}
  threads: {threads}
")
}

/// Runs `millrace` on `topology` (application `app`) until the group has committed `n`
/// offsets on `measured`, counting from readiness. Returns the seconds and the process's
/// usage.
pub(crate) fn run_topology(bootstrap: &str, app: &str, topology_text: &str, measured: &str, n: usize) -> (f64, ProcessUsage) {
    let input = measured;
    let dir = work_dir().join(format!("{app}-millrace"));
    let spawned = Instant::now();
    let instance = MillraceInstance::start(bootstrap, &dir, topology_text);
    let (secs, usage) = measure("millrace", spawned, instance.child.id(), bootstrap, app, input, n);
    for line in instance.metrics().lines() {
        if line.starts_with("millrace_commit_seconds") || line.starts_with("millrace_transactions_total") {
            eprintln!("  {line}");
        }
    }
    instance.stop();
    let _ = std::fs::remove_dir_all(&dir);
    (secs, usage)
}

/// One contender's throughput, from now (it just became ready, `spawned` ago) until
/// `group` has committed `n` offsets on `input`: the seconds, scaled to all `n` records,
/// and the process's CPU over that time with its peak RSS.
pub(crate) fn measure(who: &str, spawned: Instant, pid: u32, bootstrap: &str, group: &str, input: &str, n: usize) -> (f64, ProcessUsage) {
    let started = Instant::now();
    let at_start = ProcessUsage::of(pid);
    // With several threads, the first member may process before the last one joined and
    // the instance reports ready: count only what is committed from here on.
    let before = committed_sum(bootstrap, group, input);
    eprintln!("{who} ready after {:.2} s ({before} commands already committed)", spawned.elapsed().as_secs_f64());
    wait_committed(bootstrap, group, input, n as i64);
    let secs = started.elapsed().as_secs_f64() * n as f64 / (n as i64 - before).max(1) as f64;
    (secs, ProcessUsage::of(pid).since(at_start))
}

/// Where the contenders keep their state: on the same disk for all, and not under the
/// OS temp directory, which Kafka Streams warns against.
pub(crate) fn work_dir() -> std::path::PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    std::path::PathBuf::from(home).join(".cache/millrace/bench")
}

/// A `millrace run` process of the benchmark, its topology and state under `dir`.
pub(crate) struct MillraceInstance {
    child: std::process::Child,
    http: String,
}

impl MillraceInstance {
    /// Starts it and waits until it is ready (group joined, tasks restored): throughput
    /// counts from there, and start-up is reported on its own line.
    pub(crate) fn start(bootstrap: &str, dir: &std::path::Path, topology_text: &str) -> MillraceInstance {
        Self::start_as(bootstrap, dir, topology_text, "bench")
    }

    /// As `start`, with instance id `id` (several instances of one application).
    pub(crate) fn start_as(bootstrap: &str, dir: &std::path::Path, topology_text: &str, id: &str) -> MillraceInstance {
        let http = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
        Self::start_at(bootstrap, dir, topology_text, id, http)
    }

    /// As `start_as`, serving HTTP on `http` (a restart keeps its address, as a deployed
    /// instance does).
    pub(crate) fn start_at(bootstrap: &str, dir: &std::path::Path, topology_text: &str, id: &str, http: String) -> MillraceInstance {
        std::fs::create_dir_all(dir).unwrap();
        let topology = dir.join("topology.yaml");
        std::fs::write(&topology, topology_text).unwrap();
        let exe = std::env::current_exe().unwrap().with_file_name("millrace");
        let child = Command::new(exe)
            .args(["run", "--topology"]).arg(&topology)
            .args(["--bootstrap-servers", bootstrap, "--http", &http, "--instance-id", id])
            .arg("--state-dir").arg(dir.join("state"))
            .env("MILLRACE_LOG", std::env::var("MILLRACE_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .spawn()
            .expect("start millrace");
        while !ready(&http) {
            std::thread::sleep(Duration::from_millis(10));
        }
        MillraceInstance { child, http }
    }

    pub(crate) fn metrics(&self) -> String {
        http_get(&self.http, "/metrics")
    }

    /// CPU time and peak RSS so far.
    pub(crate) fn usage(&self) -> ProcessUsage {
        ProcessUsage::of(self.child.id())
    }

    /// Sum of a metric over its label sets.
    pub(crate) fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && !l[name.len()..].starts_with('_'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGKILL: no clean shutdown.
    pub(crate) fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: a clean shutdown.
    pub(crate) fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// What a process has used so far, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcessUsage {
    /// User plus system CPU seconds.
    pub cpu_secs: f64,
    /// Peak resident set size (VmHWM), in KiB.
    pub peak_kib: u64,
}

impl ProcessUsage {
    pub(crate) fn of(pid: u32) -> ProcessUsage {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        // utime and stime, in clock ticks (100 per second on Linux).
        let ticks: f64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<f64>().ok()).sum();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let peak_kib = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        ProcessUsage { cpu_secs: ticks / 100.0, peak_kib }
    }

    /// CPU spent since `earlier` (start-up excluded); the peak stays the process's.
    pub(crate) fn since(self, earlier: ProcessUsage) -> ProcessUsage {
        ProcessUsage { cpu_secs: self.cpu_secs - earlier.cpu_secs, ..self }
    }

    pub(crate) fn peak_mib(&self) -> f64 {
        self.peak_kib as f64 / 1024.0
    }
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return String::new() };
    let _ = write!(s, "GET {path} HTTP/1.0\r\n\r\n");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf
}

fn ready(addr: &str) -> bool {
    let r = http_get(addr, "/ready");
    r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200")
}
