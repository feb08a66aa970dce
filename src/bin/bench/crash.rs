//! What a restart after SIGKILL costs, millrace next to Kafka Streams: each processes half
//! of the same commands, is killed without warning, and is restarted on its own state
//! directory. Prints the changelog records each restored, against what its changelog
//! holds, and the time from restart until it commits input again. millrace checkpoints the
//! changelog offset with every committed batch, so it restores only the tail; Kafka Streams
//! under exactly-once cannot trust a store it did not close cleanly, wipes it and restores
//! the whole changelog (unless its version says otherwise: the figure is measured, not
//! assumed).

use super::{committed_sum, customer_topology, load, wait_committed, MillraceInstance, COMMIT_MS, PARTITIONS};
use crate::kstreams::KafkaStreamsApp;
use millrace::runtime::topics::{self, TopicNeed};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};

const KEYS: usize = 10_000;

pub fn run(n: usize) {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let run = format!("benchcrash-{}", std::process::id());
    let input = format!("{run}-commands");
    topics::ensure(&bootstrap, &[TopicNeed::plain(input.clone(), PARTITIONS)]).expect("create bench topics");
    eprintln!("loading {n} commands of ~1 KB over {KEYS} keys into {input}");
    load(&bootstrap, &input, n, KEYS);
    let kill_at = n as i64 / 2;
    println!("commands                 {n} (1 KB, {KEYS} keys, {PARTITIONS} partitions, commit every {COMMIT_MS} ms), SIGKILL after {kill_at} committed");

    let app = format!("{run}-millrace");
    let dir = super::work_dir().join(&app);
    let topology = customer_topology(&app, &input, false, 1);
    let first = MillraceInstance::start(&bootstrap, &dir, &topology);
    wait_committed(&bootstrap, &app, &input, kill_at);
    first.kill9();
    let (restarted, committed) = (Instant::now(), committed_sum(&bootstrap, &app, &input));
    let second = MillraceInstance::start(&bootstrap, &dir, &topology);
    wait_committed(&bootstrap, &app, &input, committed + 1);
    let back = restarted.elapsed().as_secs_f64();
    let restored = second.metric("millrace_restore_records_total");
    let held = changelog_records(&bootstrap, &format!("{app}-customers-changelog"));
    println!("millrace                 restored {restored:>8.0} of {held:>8} changelog records; committing again {back:.2} s after restart");
    wait_committed(&bootstrap, &app, &input, n as i64);
    second.stop();
    let _ = std::fs::remove_dir_all(&dir);

    match KafkaStreamsApp::from_env() {
        Err(why) => eprintln!("Kafka Streams not measured: {why}"),
        Ok(ks) => {
            let app = format!("{run}-kstreams");
            let dir = super::work_dir().join(&app);
            let first = ks.start(&bootstrap, &app, &input, dir.clone());
            wait_committed(&bootstrap, &app, &input, kill_at);
            first.kill9();
            let (restarted, committed) = (Instant::now(), committed_sum(&bootstrap, &app, &input));
            let mut second = ks.start(&bootstrap, &app, &input, dir);
            wait_committed(&bootstrap, &app, &input, committed + 1);
            let back = restarted.elapsed().as_secs_f64();
            let restored = second.restored();
            let held = changelog_records(&bootstrap, &format!("{app}-customers-changelog"));
            println!("kafka streams EOS v2     restored {restored:>8} of {held:>8} changelog records; committing again {back:.2} s after restart");
            wait_committed(&bootstrap, &app, &input, n as i64);
            second.stop();
        }
    }
}

/// Records a full restore of `topic` would read: high minus low watermark, summed.
fn changelog_records(bootstrap: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("consumer");
    (0..PARTITIONS)
        .filter_map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(10)).ok())
        .map(|(low, high)| high - low)
        .sum()
}
