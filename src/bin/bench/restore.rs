//! What it costs to bring a store back, millrace next to Kafka Streams and next to a bare
//! read_committed consumer of the same changelog, in one run:
//! - a full restore (state directory deleted): the path scale-out, a lost disk and every
//!   new instance take. Time until the instance is ready, and until a new command is
//!   answered; restored records per second against the bare reader's rate;
//! - a restart after SIGKILL on the same state directory, with `keys` keys and with
//!   10,000, to show that the crash checkpoint makes a restart independent of the store's
//!   size.
//!
//! The store holds one snapshot per key (one CreateCustomer of ~256 B each) and declares
//! an index on `status`, so a restore maintains it as live processing does.

use super::{committed_sum, load_padded, wait_committed, MillraceInstance, COMMIT_MS, PARTITIONS};
use crate::kstreams::KafkaStreamsApp;
use millrace::runtime::topics::{self, TopicNeed};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// The small store a restart after SIGKILL is compared with.
const SMALL: usize = 10_000;
/// Padding in each command's name: ~256 B commands.
const PAD: usize = 150;

pub fn run(keys: usize) {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let run = format!("benchrestore-{}", std::process::id());
    let input = format!("{run}-commands");
    let small_input = format!("{run}-small-commands");
    topics::ensure(&millrace::kafka::Clients::plain(&bootstrap), &[
        TopicNeed::plain(input.clone(), PARTITIONS),
        TopicNeed::plain(small_input.clone(), PARTITIONS),
    ])
    .expect("create bench topics");
    eprintln!("loading {keys} creates of ~256 B into {input}, {SMALL} into {small_input}");
    load_padded(&bootstrap, &input, keys, keys, PAD);
    load_padded(&bootstrap, &small_input, SMALL, SMALL, PAD);
    println!("store                    {keys} keys (one ~256 B create each), index on status, {PARTITIONS} partitions, commit every {COMMIT_MS} ms");

    // millrace: build the store, stop cleanly, then time the bare reader on its changelog.
    let app = format!("{run}-millrace");
    let dir = super::work_dir().join(&app);
    let topology = topology_for(&app, &input);
    let first = MillraceInstance::start(&bootstrap, &dir, &topology);
    wait_committed(&bootstrap, &app, &input, keys as i64);
    first.stop();
    let changelog = format!("{app}-customers-changelog");
    let (records, poll_secs) = bare_read(&bootstrap, &changelog);
    println!("rdkafka poll loop read   {records:>8} records in {poll_secs:>6.2} s ({:>9.0} records/s)", records as f64 / poll_secs);
    // The baseline is the faster bare reader: kcat's batch callbacks, when it is there.
    let (records, bare_secs) = match kcat_read(&bootstrap, &changelog) {
        Some((n, secs)) => {
            println!("kcat read_committed read {n:>8} records in {secs:>6.2} s ({:>9.0} records/s)", n as f64 / secs);
            if secs < poll_secs { (n, secs) } else { (records, poll_secs) }
        }
        None => (records, poll_secs),
    };
    let bare_rate = records as f64 / bare_secs;

    // A full restore: the state directory is gone.
    std::fs::remove_dir_all(dir.join("state")).expect("delete the state directory");
    let started = Instant::now();
    let restored = MillraceInstance::start(&bootstrap, &dir, &topology);
    let ready = started.elapsed().as_secs_f64();
    probe(&bootstrap, &input, "probe-1");
    wait_committed(&bootstrap, &app, &input, keys as i64 + 1);
    let answered = started.elapsed().as_secs_f64();
    let n = restored.metric("millrace_restore_records_total");
    let rate = n / ready;
    println!(
        "millrace full restore    {n:>8.0} records, ready {ready:>6.2} s ({rate:>9.0} records/s), a new command answered {answered:.2} s after start; peak RSS {:.1} MiB",
        restored.usage().peak_mib()
    );
    println!("ratio restore/bare read  {:>8.2}", rate / bare_rate);

    // A restart after SIGKILL on the same state (and HTTP address), large store and small.
    let http = restored.http.clone();
    restored.kill9();
    let large = restarts_after_kill(&bootstrap, &app, &input, &dir, &topology, "probe-2", http);
    let _ = std::fs::remove_dir_all(&dir);
    let small_app = format!("{run}-small");
    let small_dir = super::work_dir().join(&small_app);
    let small_topology = topology_for(&small_app, &small_input);
    let first = MillraceInstance::start(&bootstrap, &small_dir, &small_topology);
    wait_committed(&bootstrap, &small_app, &small_input, SMALL as i64);
    let http = first.http.clone();
    first.kill9();
    let small = restarts_after_kill(&bootstrap, &small_app, &small_input, &small_dir, &small_topology, "probe-1", http);
    let _ = std::fs::remove_dir_all(&small_dir);
    let (large_median, small_median) = (super::median(&mut large.clone()), super::median(&mut small.clone()));
    println!(
        "millrace after SIGKILL   median {large_median:.2} s with {keys} keys {}, {small_median:.2} s with {SMALL} {}: ratio {:.2}",
        rounds(&large),
        rounds(&small),
        large_median / small_median
    );

    match KafkaStreamsApp::from_env() {
        Err(why) => eprintln!("Kafka Streams not measured: {why}"),
        Ok(ks) => {
            let app = format!("{run}-kstreams");
            let dir = super::work_dir().join(&app);
            let first = ks.start(&bootstrap, &app, &input, dir.clone());
            // Everything in the input, the millrace probes included.
            let end = input_end(&bootstrap, &input);
            wait_committed(&bootstrap, &app, &input, end);
            // A clean close, then the state directory is deleted (stop removes it).
            first.stop();
            let started = Instant::now();
            let mut again = ks.start(&bootstrap, &app, &input, dir.clone());
            let running = started.elapsed().as_secs_f64();
            probe(&bootstrap, &input, "probe-ks");
            wait_committed(&bootstrap, &app, &input, end + 1);
            let ks_answered = started.elapsed().as_secs_f64();
            let n = again.restored();
            println!(
                "kafka streams restore    {n:>8} records, running {running:>6.2} s, a new command answered {ks_answered:.2} s after start; peak RSS {:.1} MiB (JVM {})",
                super::ProcessUsage::of(again.pid()).peak_mib(),
                ks.java_opts()
            );
            // Above 1: millrace answers sooner after a full restore.
            println!("ratio kstreams/millrace  {:>8.2} (time until a new command is answered after a full restore)", ks_answered / answered);
            again.stop();
        }
    }
}

/// Restarts after a SIGKILL, measured this many times per store size: one restart's time
/// moves by a second from run to run on a small machine (the group, the transaction
/// coordinator), more than the store's size moves it, so the sizes compare by median.
const RESTARTS: usize = 3;

/// Starts `app` again on its state directory after a SIGKILL, `RESTARTS` times (each
/// restart is killed again once it answered), and returns the seconds until a new command
/// was committed, per restart.
fn restarts_after_kill(bootstrap: &str, app: &str, input: &str, dir: &std::path::Path, topology: &str, probe_key: &str, http: String) -> Vec<f64> {
    let mut secs = Vec::with_capacity(RESTARTS);
    for round in 0..RESTARTS {
        let before = committed_sum(bootstrap, app, input);
        let started = Instant::now();
        let again = MillraceInstance::start_at(bootstrap, dir, topology, "bench", http.clone());
        probe(bootstrap, input, &format!("{probe_key}-{round}"));
        wait_committed(bootstrap, app, input, before + 1);
        secs.push(started.elapsed().as_secs_f64());
        if round + 1 < RESTARTS { again.kill9() } else { again.stop() }
    }
    secs
}

fn rounds(xs: &[f64]) -> String {
    format!("({})", xs.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", "))
}

/// The customer application of the other benchmarks, with an index on `status`.
fn topology_for(app: &str, input: &str) -> String {
    super::customer_topology(app, input, false, 1) + "stores:\n  customers:\n    indexes: [status]\n"
}

/// One new CreateCustomer.
fn probe(bootstrap: &str, topic: &str, key: &str) {
    let p: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("producer");
    let value = format!(
        r#"{{"command_id":"{key}","aggregate_id":"{key}","expected_version":null,"type":"CreateCustomer","payload":{{"name":"{key}","email":"{key}@example.org"}}}}"#
    );
    p.send(BaseRecord::to(topic).key(key).payload(&value)).map_err(|(e, _)| e).expect("send the probe");
    p.flush(Duration::from_secs(30)).expect("flush the probe");
}

/// `kcat -C` of every partition of `topic` to its end, read_committed: (records, seconds),
/// or None without kcat.
fn kcat_read(bootstrap: &str, topic: &str) -> Option<(u64, f64)> {
    let started = Instant::now();
    let out = std::process::Command::new("kcat")
        .args(["-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-X", "isolation.level=read_committed", "-f", "."])
        .output()
        .ok()?;
    let secs = started.elapsed().as_secs_f64();
    out.status.success().then_some((out.stdout.len() as u64, secs))
}

/// The input's end offsets, summed: what a group has committed once it processed all.
fn input_end(bootstrap: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("consumer");
    (0..PARTITIONS).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks").1).sum()
}

/// Reads every partition of `topic` from the beginning to its end, read_committed, as a
/// restore would with nothing to do but read: (records, seconds).
fn bare_read(bootstrap: &str, topic: &str) -> (u64, f64) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-bare"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        // As millrace's readers: without it, librdkafka pauses fetching for a second
        // whenever the prefetch queue passes its threshold.
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    let started = Instant::now();
    c.assign(&tpl).expect("assign");
    let (mut records, mut ended) = (0u64, 0);
    while ended < PARTITIONS {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => records += 1,
            Some(Err(KafkaError::PartitionEOF(_))) => ended += 1,
            Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => ended += 1,
            Some(Err(e)) => panic!("bare read of {topic}: {e}"),
            None => {}
        }
    }
    (records, started.elapsed().as_secs_f64())
}

