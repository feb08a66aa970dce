//! The Kafka Streams contenders: deploy/kstreams, the same customer aggregate written as a
//! Kafka Streams application (exactly_once_v2, a persistent RocksDB store, the same commit
//! interval and producer settings), and the orders-customers join written with its DSL,
//! each run as a JVM process on the same broker. deploy/bench
//! builds it and says where with MILLRACE_BENCH_KSTREAMS; without it, or without `java`,
//! the benchmark says so and measures millrace and the copy alone.

use super::{measure, ProcessUsage, COMMIT_MS, PARTITIONS};
use millrace::runtime::topics::{self, TopicNeed};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// The built application: its classes and dependency jars.
pub struct KafkaStreamsApp {
    dir: PathBuf,
    java_opts: Vec<String>,
}

/// A running instance.
pub struct Running {
    child: Child,
    lines: Receiver<String>,
    pub state_dir: PathBuf,
    restored: u64,
}

impl KafkaStreamsApp {
    /// From MILLRACE_BENCH_KSTREAMS, or why not.
    pub fn from_env() -> Result<KafkaStreamsApp, String> {
        let dir = std::env::var("MILLRACE_BENCH_KSTREAMS").map_err(|_| "MILLRACE_BENCH_KSTREAMS is not set (deploy/bench sets it)".to_string())?;
        let dir = PathBuf::from(dir);
        if !dir.join("target/classes").is_dir() {
            return Err(format!("{} is not built (mvn package)", dir.display()));
        }
        // The JVM's heap is capped as a production deployment would cap it; without a cap
        // it may reserve a quarter of the machine and its RSS says little.
        let opts = std::env::var("MILLRACE_BENCH_KSTREAMS_JAVA_OPTS").unwrap_or_else(|_| DEFAULT_JAVA_OPTS.into());
        Ok(KafkaStreamsApp { dir, java_opts: opts.split_whitespace().map(String::from).collect() })
    }

    pub fn java_opts(&self) -> String {
        self.java_opts.join(" ")
    }

    /// Starts an instance of application `app` and waits until it reports RUNNING.
    pub fn start(&self, bootstrap: &str, app: &str, input: &str, state_dir: PathBuf) -> Running {
        // Kafka Streams creates its changelog but not its sinks.
        let sinks = [format!("{app}-events"), format!("{app}-replies")];
        topics::ensure(&millrace::kafka::Clients::plain(bootstrap), &sinks.clone().map(|t| TopicNeed::plain(t, PARTITIONS))).expect("create the Kafka Streams sink topics");
        let args = [bootstrap.to_string(), app.to_string(), input.to_string(), sinks[0].clone(), sinks[1].clone()];
        self.start_class("millrace.bench.CustomerStreams", &args, state_dir)
    }

    /// Runs `class` with `args`, then the state directory and the commit interval, and
    /// waits until it prints RUNNING.
    fn start_class(&self, class: &str, args: &[String], state_dir: PathBuf) -> Running {
        let classpath = format!("{}:{}/*", self.dir.join("target/classes").display(), self.dir.join("target/lib").display());
        let mut child = Command::new("java")
            .args(&self.java_opts)
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
            .args(["-cp", &classpath, class])
            .args(args)
            .arg(&state_dir)
            .arg(COMMIT_MS.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start java (Kafka Streams)");
        let (tx, lines) = channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut running = Running { child, lines, state_dir, restored: 0 };
        loop {
            match running.lines.recv_timeout(Duration::from_secs(300)) {
                Ok(l) if l == "RUNNING" => break,
                Ok(l) => running.note(&l),
                Err(e) => panic!("Kafka Streams did not reach RUNNING: {e}"),
            }
        }
        running
    }

    /// The joins contender (`OrderJoinStreams`): `n` orders of `orders` re-keyed by customer
    /// and left-joined with the table on `customers`, counted by the offsets committed on
    /// its repartition topic, as millrace's join is. Returns the seconds and the usage.
    pub fn run_join(&self, bootstrap: &str, app: &str, customers: &str, orders: &str, n: usize) -> (f64, ProcessUsage) {
        let output = format!("{app}-enriched");
        topics::ensure(&millrace::kafka::Clients::plain(bootstrap), &[TopicNeed::plain(output.clone(), PARTITIONS)]).expect("create the join's output topic");
        let state_dir = super::work_dir().join(format!("{app}-kstreams"));
        let spawned = Instant::now();
        let args = [bootstrap.to_string(), app.to_string(), customers.to_string(), orders.to_string(), output];
        let running = self.start_class("millrace.bench.OrderJoinStreams", &args, state_dir);
        let (secs, usage) = measure("kafka streams join", spawned, running.pid(), bootstrap, app, &format!("{app}-by-customer-repartition"), n);
        running.stop();
        (secs, usage)
    }

    /// One throughput run over `n` commands of `input`, counting from RUNNING. Returns the
    /// seconds and the process's usage.
    pub fn run(&self, bootstrap: &str, app: &str, input: &str, n: usize) -> (f64, ProcessUsage) {
        let state_dir = super::work_dir().join(format!("{app}-kstreams"));
        let spawned = Instant::now();
        let running = self.start(bootstrap, app, input, state_dir);
        let (secs, usage) = measure("kafka streams", spawned, running.pid(), bootstrap, app, input, n);
        running.stop();
        (secs, usage)
    }
}

const DEFAULT_JAVA_OPTS: &str = "-Xmx256m";

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Changelog records restored so far.
    pub fn restored(&mut self) -> u64 {
        while let Ok(l) = self.lines.try_recv() {
            self.note(&l);
        }
        self.restored
    }

    fn note(&mut self, line: &str) {
        if let Some(n) = line.strip_prefix("RESTORED ").and_then(|n| n.trim().parse().ok()) {
            self.restored = self.restored.max(n);
        }
    }

    /// SIGKILL: no clean close, no checkpoint written.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (a clean close through the shutdown hook), then the state is removed.
    pub fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}
