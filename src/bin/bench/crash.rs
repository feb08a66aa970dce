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
    topics::ensure(&millrace::kafka::Clients::plain(&bootstrap), &[TopicNeed::plain(input.clone(), PARTITIONS)]).expect("create bench topics");
    eprintln!("loading {n} commands of ~1 KB over {KEYS} keys into {input}");
    load(&bootstrap, &input, n, KEYS);
    let kill_at = n as i64 / 2;
    println!("commands                 {n} (1 KB, {KEYS} keys, {PARTITIONS} partitions, commit every {COMMIT_MS} ms), SIGKILL after {kill_at} committed");

    let app = format!("{run}-millrace");
    let topology = customer_topology(&app, &input, false, 1);
    let dir = super::work_dir().join(&app);
    // The restart keeps the HTTP address, as a deployed instance does.
    let http = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    crash_and_restart("millrace", &bootstrap, &app, &input, n, || MillraceInstance::start_at(&bootstrap, &dir, &topology, "bench", http.clone()));
    let _ = std::fs::remove_dir_all(&dir);

    match KafkaStreamsApp::from_env() {
        Err(why) => eprintln!("Kafka Streams not measured: {why}"),
        Ok(ks) => {
            let app = format!("{run}-kstreams");
            let dir = super::work_dir().join(&app);
            crash_and_restart("kafka streams EOS v2", &bootstrap, &app, &input, n, || ks.start(&bootstrap, &app, &input, dir.clone()));
        }
    }
}

/// A contender the crash benchmark can kill and ask about its restore.
pub(crate) trait Restartable {
    fn kill9(self);
    fn stop(self);
    /// Changelog records restored since this process started.
    fn restored(&mut self) -> u64;
}

impl Restartable for MillraceInstance {
    fn kill9(self) {
        MillraceInstance::kill9(self)
    }
    fn stop(self) {
        MillraceInstance::stop(self)
    }
    fn restored(&mut self) -> u64 {
        self.metric("millrace_restore_records_total") as u64
    }
}

impl Restartable for crate::kstreams::Running {
    fn kill9(self) {
        crate::kstreams::Running::kill9(self)
    }
    fn stop(self) {
        crate::kstreams::Running::stop(self)
    }
    fn restored(&mut self) -> u64 {
        crate::kstreams::Running::restored(self)
    }
}

/// Runs `start`ed processes of application `app` over `input`: SIGKILL once half of the
/// `n` commands are committed, start again on the same state, and print what the restart
/// restored and how long until input was committed again; then let it finish.
fn crash_and_restart<R: Restartable>(who: &str, bootstrap: &str, app: &str, input: &str, n: usize, start: impl Fn() -> R) {
    let first = start();
    wait_committed(bootstrap, app, input, n as i64 / 2);
    first.kill9();
    let (restarted, committed) = (Instant::now(), committed_sum(bootstrap, app, input));
    let mut second = start();
    wait_committed(bootstrap, app, input, committed + 1);
    let back = restarted.elapsed().as_secs_f64();
    let restored = second.restored();
    let held = changelog_records(bootstrap, &format!("{app}-customers-changelog"));
    println!("{who:<24} restored {restored:>8} of {held:>8} changelog records; committing again {back:.2} s after restart");
    wait_committed(bootstrap, app, input, n as i64);
    second.stop();
}

/// Records a full restore of `topic` would read: high minus low watermark, summed.
fn changelog_records(bootstrap: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("consumer");
    (0..PARTITIONS)
        .filter_map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(10)).ok())
        .map(|(low, high)| high - low)
        .sum()
}
