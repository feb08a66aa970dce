//! Command→reply latency at a fixed offered rate, millrace next to Kafka Streams, each
//! already warm: from the moment a command is handed to the producer until its reply is
//! readable by a read_committed consumer. Every reply is read twice, by two consumers
//! that differ only in `fetch.wait.max.ms` (librdkafka's default 500 ms, and 10 ms):
//! under read_committed, a long-polling fetch is not answered when a transaction marker
//! makes records readable, so the reader's own wait shows up in the tail. Prints
//! p50/p99/p99.9 for each, and for millrace (committing on the interval only, then also
//! when its input runs dry, `min_commit_interval_ms`) the stages the time went to, from the
//! histograms it exports (sampled once per transaction): command sent → processed,
//! processed → commit start, and the commit.

use super::{customer_topology, MillraceInstance, COMMIT_MS, PARTITIONS};
use crate::kstreams::KafkaStreamsApp;
use millrace::runtime::topics::{self, TopicNeed};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// millrace's second run: a transaction commits once its input runs dry and it has been
/// open this long (`processing.min_commit_interval_ms`); `MILLRACE_BENCH_MIN_COMMIT_MS`
/// sets another.
const MIN_COMMIT_MS: u64 = 10;
const WARMUP: Duration = Duration::from_secs(5);
const MEASURED: Duration = Duration::from_secs(20);
/// The reply readers' long-poll waits, compared.
const FETCH_WAITS: [u64; 2] = [500, 10];

pub fn run(rate: usize) {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let run = format!("benchlatency-{}", std::process::id());
    println!(
        "offered {rate} commands/s (CreateCustomer of new keys), {PARTITIONS} partitions, commit every {COMMIT_MS} ms; {} s warm-up, {} s measured",
        WARMUP.as_secs(),
        MEASURED.as_secs()
    );

    // Commit on the interval only (Kafka Streams' way), then also as soon as the input
    // runs dry once a transaction has been open MIN_COMMIT_MS.
    let min_commit_ms = std::env::var("MILLRACE_BENCH_MIN_COMMIT_MS").ok().and_then(|m| m.parse().ok()).unwrap_or(MIN_COMMIT_MS);
    for min_commit in [None, Some(min_commit_ms)] {
        let who = min_commit.map_or("millrace".to_string(), |ms| format!("millrace min_commit {ms} ms"));
        let tag = min_commit.map_or("millrace".to_string(), |ms| format!("millrace-min{ms}"));
        let input = format!("{run}-{tag}-commands");
        let app = format!("{run}-{tag}");
        topics::ensure(&millrace::kafka::Clients::plain(&bootstrap), &[TopicNeed::plain(input.clone(), PARTITIONS)]).expect("create bench topics");
        let dir = super::work_dir().join(&app);
        let mut topology = customer_topology(&app, &input, false, 1);
        if let Some(ms) = min_commit {
            topology = topology.replace("processing:\n", &format!("processing:\n  min_commit_interval_ms: {ms}\n"));
        }
        let instance = MillraceInstance::start(&bootstrap, &dir, &topology);
        let started = Instant::now();
        measure(&who, &bootstrap, &input, &format!("{app}-replies"), rate);
        // Where the time goes, from millrace's own histograms (warm-up included; sampled
        // once per transaction): the stages before the reply is readable.
        let page = instance.metrics();
        for (name, stage) in [
            ("millrace_input_delay_seconds", "command sent → processed"),
            ("millrace_transaction_open_seconds", "processed → commit starts"),
            ("millrace_commit_seconds", "commit"),
        ] {
            if let Some(h) = histogram(&page, name) {
                println!(
                    "{who:<26} stage  {stage:<26} mean {:>6.1} ms, 99% within {:>6.1} ms  ({} transactions, {:.0}/s; {name})",
                    h.sum * 1000.0 / h.count.max(1.0),
                    h.p99_bound * 1000.0,
                    h.count,
                    h.count / started.elapsed().as_secs_f64()
                );
            }
        }
        instance.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }

    match KafkaStreamsApp::from_env() {
        Err(why) => eprintln!("Kafka Streams not measured: {why}"),
        Ok(ks) => {
            let input = format!("{run}-kstreams-commands");
            let app = format!("{run}-kstreams");
            topics::ensure(&millrace::kafka::Clients::plain(&bootstrap), &[TopicNeed::plain(input.clone(), PARTITIONS)]).expect("create bench topics");
            let running = ks.start(&bootstrap, &app, &input, super::work_dir().join(&app));
            measure(&format!("kafka streams ({})", ks.java_opts()), &bootstrap, &input, &format!("{app}-replies"), rate);
            running.stop();
        }
    }
}

/// A histogram of a /metrics page: observations, their sum, and the bucket bound 99% of
/// them stay within.
struct Histogram {
    count: f64,
    sum: f64,
    p99_bound: f64,
}

fn histogram(page: &str, name: &str) -> Option<Histogram> {
    let value = |suffix: &str| page.lines().find(|l| l.starts_with(&format!("{name}{suffix}")))?.rsplit(' ').next()?.parse::<f64>().ok();
    let buckets: Vec<(f64, f64)> = page
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let count = value("_count")?;
    let p99_bound = buckets.iter().find(|(_, n)| *n >= count * 0.99).map_or(f64::NAN, |b| b.0);
    Some(Histogram { count, sum: value("_sum")?, p99_bound })
}

/// Offers `rate` commands a second to `input` for the warm-up and the measured time,
/// and prints the latency percentiles of the measured commands' replies on `replies`.
fn measure(who: &str, bootstrap: &str, input: &str, replies: &str, rate: usize) {
    let total = rate * (WARMUP + MEASURED).as_secs() as usize;
    let warm = rate * WARMUP.as_secs() as usize;
    // Microseconds since `t0` at which command i was handed to the producer (0: not yet).
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let t0 = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = FETCH_WAITS
        .iter()
        .map(|wait| {
            let (consumer, sent, done) = (reply_reader(bootstrap, replies, *wait), sent.clone(), done.clone());
            std::thread::spawn(move || read_replies(consumer, &sent, t0, warm, &done))
        })
        .collect();

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    let started = Instant::now();
    for i in 0..total {
        // Paced by the clock, not by sleeps adding up: a late send does not delay the next.
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let key = format!("lat-{i}");
        let value = format!(
            r#"{{"command_id":"{key}","aggregate_id":"{key}","expected_version":null,"type":"CreateCustomer","payload":{{"name":"n{i}","email":"e{i}@example.org"}}}}"#
        );
        sent[i].store(t0.elapsed().as_micros() as u64, Ordering::SeqCst);
        let mut rec = BaseRecord::to(input).key(&key).payload(&value);
        while let Err((_, r)) = producer.send(rec) {
            rec = r;
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    // The last replies: a few commit intervals, and a reader's long poll.
    std::thread::sleep(Duration::from_secs(3));
    done.store(true, Ordering::SeqCst);
    for (wait, reader) in FETCH_WAITS.iter().zip(readers) {
        let mut latencies = reader.join().expect("reply reader");
        let answered = latencies.len();
        latencies.sort_unstable();
        let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).map_or(f64::NAN, |us| *us as f64 / 1000.0);
        println!(
            "{who:<26} reader fetch.wait.max.ms={wait:<3}  p50 {:>6.1} ms  p99 {:>6.1} ms  p99.9 {:>6.1} ms  max {:>6.1} ms  ({answered} of {} replies)",
            pct(0.5),
            pct(0.99),
            pct(0.999),
            pct(1.0),
            total - warm
        );
    }
}

/// A read_committed consumer of every partition of `replies`, from its end now.
fn reply_reader(bootstrap: &str, replies: &str, fetch_wait_ms: u64) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{replies}-latency-{fetch_wait_ms}"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()
        .expect("reply consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        // The topic may be created a moment from now (Kafka Streams' sinks are created at
        // its start, millrace's by the instance): wait for it.
        let end = loop {
            match c.fetch_watermarks(replies, p, Duration::from_secs(5)) {
                Ok((_, high)) => break high,
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        tpl.add_partition_offset(replies, p, Offset::Offset(end)).unwrap();
    }
    c.assign(&tpl).expect("assign replies");
    c
}

/// Latencies in microseconds of the replies to commands `warm..`, until `done`.
fn read_replies(consumer: BaseConsumer, sent: &[AtomicU64], t0: Instant, warm: usize, done: &AtomicBool) -> Vec<u64> {
    let mut latencies = Vec::with_capacity(sent.len());
    while !done.load(Ordering::SeqCst) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else { continue };
        let now = t0.elapsed().as_micros() as u64;
        let Some(reply) = m.payload().and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok()) else { continue };
        let Some(i) = reply["command_id"].as_str().and_then(|id| id.strip_prefix("lat-")?.parse::<usize>().ok()) else { continue };
        let at = sent.get(i).map_or(0, |s| s.load(Ordering::SeqCst));
        if i >= warm && at > 0 {
            latencies.push(now.saturating_sub(at));
        }
    }
    latencies
}
