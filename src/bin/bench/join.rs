//! The joins benchmark: enriched orders per second for the co-partitioned variant (re-key
//! through a repartition topic, then join) and the global-table variant, next to a raw
//! transactional consume→produce copy of the same orders and to the same join written with
//! the Kafka Streams DSL (deploy/kstreams `OrderJoinStreams`), on the same broker, in one run.

use super::{raw_copy, run_topology, wait_committed, COMMIT_MS, PARTITIONS};
use crate::kstreams::KafkaStreamsApp;
use millrace::runtime::topics::{self, TopicNeed};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CUSTOMERS: usize = 20_000;

pub fn run(n: usize) {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let run = format!("benchjoin-{}", std::process::id());
    let (customers, orders, copy) = (format!("{run}-customers"), format!("{run}-orders"), format!("{run}-copy"));
    let mut compacted = TopicNeed::plain(customers.clone(), PARTITIONS);
    compacted.compacted = true;
    topics::ensure(&millrace::kafka::Clients::plain(&bootstrap), &[compacted, TopicNeed::plain(orders.clone(), PARTITIONS), TopicNeed::plain(copy.clone(), PARTITIONS)])
        .expect("create bench topics");
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let send = |topic: &str, key: &str, value: &str| {
        let mut rec = BaseRecord::to(topic).key(key).payload(value);
        while let Err((_, r)) = p.send(rec) {
            rec = r;
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    eprintln!("loading {CUSTOMERS} customers and {n} orders");
    for c in 0..CUSTOMERS {
        send(&customers, &format!("c{c}"), &format!(r#"{{"name":"customer {c}","address":"{c} Loop Road, Partition City"}}"#));
    }
    for o in 0..n {
        let c = (o * 7919) % CUSTOMERS;
        send(&orders, &format!("o{o}"), &format!(r#"{{"customer_id":"c{c}","items":[{{"product":"p{}","qty":{}}}]}}"#, o % 500, o % 5 + 1));
    }
    p.flush(Duration::from_secs(120)).expect("flush");

    let group = format!("{run}-copy");
    let done = Arc::new(AtomicBool::new(false));
    let (b, i, o, g, d) = (bootstrap.clone(), orders.clone(), copy.clone(), group.clone(), done.clone());
    let started = Instant::now();
    let copier = std::thread::spawn(move || raw_copy(&b, &i, &o, &g, &d));
    wait_committed(&bootstrap, &group, &orders, n as i64);
    let copy_secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    copier.join().unwrap();

    let co_app = format!("{run}-co");
    let co = format!("version: 1
application_id: {co_app}
topics:
  {customers}: {{ partitions: {PARTITIONS}, compacted: true }}
  {orders}: {{ partitions: {PARTITIONS} }}
  {co_app}-enriched: {{ partitions: {PARTITIONS} }}
tables:
  customers: {{ topic: {customers}, store: customers }}
rekeys:
  by-customer: {{ from: {orders}, key_field: customer_id, into: customers }}
joins:
  enrich: {{ stream: by-customer, table: customers, kind: left, output: {co_app}-enriched }}
processing:
  commit_interval_ms: {COMMIT_MS}
");
    // The join consumes the repartition topic: its committed offsets count enriched orders.
    let (co_secs, co_rss) = run_topology(&bootstrap, &co_app, &co, &format!("{co_app}-by-customer-repartition"), n);

    let gl_app = format!("{run}-global");
    let gl = format!("version: 1
application_id: {gl_app}
topics:
  {customers}: {{ partitions: {PARTITIONS}, compacted: true }}
  {orders}: {{ partitions: {PARTITIONS} }}
  {gl_app}-enriched: {{ partitions: {PARTITIONS} }}
global_tables:
  customers: {{ topic: {customers}, store: customers }}
joins:
  enrich: {{ stream: {orders}, table: customers, key_field: customer_id, kind: left, output: {gl_app}-enriched }}
processing:
  commit_interval_ms: {COMMIT_MS}
");
    let (gl_secs, gl_rss) = run_topology(&bootstrap, &gl_app, &gl, &orders, n);
    let kstreams = match KafkaStreamsApp::from_env() {
        Ok(ks) => Some(ks.run_join(&bootstrap, &format!("{run}-kstreams"), &customers, &orders, n)),
        Err(why) => {
            eprintln!("Kafka Streams not measured: {why}");
            None
        }
    };

    let rate = |secs: f64| n as f64 / secs;
    println!("orders                   {n} ({CUSTOMERS} customers, {PARTITIONS} partitions, commit every {COMMIT_MS} ms)");
    println!("raw transactional copy   {:>10.0} records/s", rate(copy_secs));
    println!("co-partitioned join      {:>10.0} enriched orders/s  ratio {:.2}  peak RSS {:.1} MiB  CPU {:.2} s",
        rate(co_secs), copy_secs / co_secs, co_rss.peak_mib(), co_rss.cpu_secs);
    println!("global-table join        {:>10.0} enriched orders/s  ratio {:.2}  peak RSS {:.1} MiB  CPU {:.2} s",
        rate(gl_secs), copy_secs / gl_secs, gl_rss.peak_mib(), gl_rss.cpu_secs);
    if let Some((ks_secs, ks_rss)) = kstreams {
        println!("kafka streams DSL join   {:>10.0} enriched orders/s  ratio {:.2}  peak RSS {:.1} MiB  CPU {:.2} s  (selectKey + repartition + leftJoin with a KTable)",
            rate(ks_secs), copy_secs / ks_secs, ks_rss.peak_mib(), ks_rss.cpu_secs);
        println!("co-partitioned / kafka streams  {:.2} throughput, {:.2} peak RSS", ks_secs / co_secs, co_rss.peak_mib() / ks_rss.peak_mib());
    }
}
