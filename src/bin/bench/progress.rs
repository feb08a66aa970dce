//! What event-time progress costs in latency, on the shop's stash: each order waits for
//! one product (`awaits`, 1 s of event time). Half of the products are created 300 ms after
//! their order, the other half never. Measured from the moment an outcome is knowable to
//! the moment the decision is readable (read_committed):
//! - confirmed: from the product command's send to `OrderConfirmed`;
//! - rejected: from the wait's deadline (the order's time plus 1 s) to `OrderRejected`.
//!
//! Two runs on fresh topics, two instances each: calm, and a failover in which the
//! instance holding product partitions is SIGKILLed a third of the way in and not
//! restarted (the group moves its partitions after the session timeout). Decisions whose
//! outcome became knowable in the failover window wait for a new owner: that is the cost.

use super::{MillraceInstance, COMMIT_MS};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WAIT_MS: i64 = 1_000;
const PRODUCT_AFTER_MS: u64 = 300;
const ORDER_EVERY_MS: u64 = 20;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn topology(app: &str) -> String {
    format!(
"version: 1
application_id: {app}
topics:
  {app}-product-commands: {{ partitions: 4, codec: json }}
  {app}-product-events: {{ partitions: 4, codec: json }}
  {app}-product-replies: {{ partitions: 4, codec: json }}
  {app}-order-commands: {{ partitions: 4, codec: json }}
  {app}-order-events: {{ partitions: 4, codec: json }}
  {app}-order-replies: {{ partitions: 4, codec: json }}
aggregates:
  products: {{ aggregate: product, commands: {app}-product-commands, events: {app}-product-events, replies: {app}-product-replies, store: products }}
  orders:
    aggregate: order
    commands: {app}-order-commands
    events: {app}-order-events
    replies: {app}-order-replies
    store: orders
    awaits: {{ table: product-catalog, timeout_ms: {WAIT_MS} }}
global_tables:
  product-catalog: {{ topic: {app}-product-events, store: product-catalog }}
processing:
  commit_interval_ms: {COMMIT_MS}
")
}

fn command(id: &str, aggregate: &str, kind: &str, payload: serde_json::Value) -> String {
    serde_json::json!({"command_id": id, "aggregate_id": aggregate, "type": kind, "payload": payload}).to_string()
}

/// When each outcome became knowable (wall-clock ms) and when it was read.
#[derive(Default)]
struct Outcomes {
    knowable: HashMap<String, (bool, i64)>,
    read: HashMap<String, (String, i64)>,
}

pub fn run(orders: usize) {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".into());
    println!("orders                   {orders}, one every {ORDER_EVERY_MS} ms, each waiting up to {WAIT_MS} ms for its product (half created {PRODUCT_AFTER_MS} ms later, half never); commit every {COMMIT_MS} ms, max_task_idle_ms 100");
    for failover in [false, true] {
        let app = format!("benchprogress-{}-{}", std::process::id(), if failover { "failover" } else { "calm" });
        let dir = super::work_dir().join(&app);
        let text = topology(&app);
        let a = MillraceInstance::start_as(&bootstrap, &dir.join("a"), &text, "a");
        let b = MillraceInstance::start_as(&bootstrap, &dir.join("b"), &text, "b");
        // Both members hold partitions before the first order.
        std::thread::sleep(Duration::from_secs(3));
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (bootstrap, topic, outcomes, done) = (bootstrap.clone(), format!("{app}-order-events"), outcomes.clone(), done.clone());
            std::thread::spawn(move || read_decisions(&bootstrap, &topic, &outcomes, &done))
        };
        // The failover run kills `b`; the calm one stops it with `a`.
        let (victim, kept) = if failover { (Some(b), None) } else { (None, Some(b)) };
        let killed_at = produce(&bootstrap, &app, orders, &outcomes, victim);
        // Every outcome is decided within the wait, a failover, and some slack.
        let deadline = Instant::now() + Duration::from_secs(60);
        while outcomes.lock().unwrap().read.len() < orders && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        done.store(true, Ordering::SeqCst);
        reader.join().unwrap();
        a.stop();
        if let Some(b) = kept {
            b.stop();
        }
        let o = outcomes.lock().unwrap();
        let label = if failover { "failover" } else { "calm" };
        report(label, &o, None);
        if let Some(k) = killed_at {
            report("  knowable after the kill", &o, Some(k));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Sends the orders and the products; with `victim`, SIGKILLs it a third of the way in.
/// Returns when the kill happened (wall-clock ms).
fn produce(bootstrap: &str, app: &str, orders: usize, outcomes: &Mutex<Outcomes>, mut victim: Option<MillraceInstance>) -> Option<i64> {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let send = |topic: &str, key: &str, value: &str| {
        let mut rec = BaseRecord::to(topic).key(key).payload(value);
        while let Err((_, r)) = p.send(rec) {
            rec = r;
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let mut due: Vec<(Instant, usize)> = Vec::new();
    let mut killed_at = None;
    let started = Instant::now();
    for i in 0..orders {
        let order = format!("o{i}");
        let sent = now_ms();
        send(&format!("{app}-order-commands"), &order, &command(&format!("{order}-place"), &order, "PlaceOrder",
            serde_json::json!({"customer_id": "c", "items": [{"product_id": format!("q{i}"), "quantity": 1}]})));
        if i % 2 == 1 {
            outcomes.lock().unwrap().knowable.insert(order, (false, sent + WAIT_MS));
        } else {
            due.push((Instant::now() + Duration::from_millis(PRODUCT_AFTER_MS), i));
        }
        let now = Instant::now();
        for (_, n) in due.iter().filter(|(at, _)| *at <= now) {
            let product = format!("q{n}");
            outcomes.lock().unwrap().knowable.insert(format!("o{n}"), (true, now_ms()));
            send(&format!("{app}-product-commands"), &product, &command(&format!("{product}-create"), &product, "CreateProduct", serde_json::json!({"name": product})));
        }
        due.retain(|(at, _)| *at > now);
        if i == orders / 3 {
            if let Some(v) = victim.take() {
                v.kill9();
                killed_at = Some(now_ms());
            }
        }
        let next = started + Duration::from_millis(ORDER_EVERY_MS * (i as u64 + 1));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    for (at, n) in due {
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let product = format!("q{n}");
        outcomes.lock().unwrap().knowable.insert(format!("o{n}"), (true, now_ms()));
        send(&format!("{app}-product-commands"), &product, &command(&format!("{product}-create"), &product, "CreateProduct", serde_json::json!({"name": product})));
    }
    let _ = p.flush(Duration::from_secs(10));
    killed_at
}

fn read_decisions(bootstrap: &str, topic: &str, outcomes: &Mutex<Outcomes>, done: &AtomicBool) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-bench-reader"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    while !done.load(Ordering::SeqCst) {
        let Some(Ok(m)) = c.poll(Duration::from_millis(50)) else { continue };
        let at = now_ms();
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(m.payload().unwrap_or_default()) else { continue };
        let kind = v["type"].as_str().unwrap_or_default();
        if kind == "OrderConfirmed" || kind == "OrderRejected" {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            outcomes.lock().unwrap().read.insert(key, (kind.to_string(), at));
        }
    }
}

fn percentile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Latency per outcome kind; with `after`, only outcomes knowable from then on.
fn report(label: &str, o: &Outcomes, after: Option<i64>) {
    for confirmed in [true, false] {
        let mut lat: Vec<i64> = o
            .knowable
            .iter()
            .filter(|(_, (c, at))| *c == confirmed && after.is_none_or(|k| *at >= k))
            .filter_map(|(order, (_, at))| Some(o.read.get(order)?.1 - at))
            .collect();
        lat.sort_unstable();
        let expected = o.knowable.values().filter(|(c, at)| *c == confirmed && after.is_none_or(|k| *at >= k)).count();
        let kind = if confirmed { "confirmed" } else { "rejected " };
        println!(
            "{label:<24} {kind} {:>5} of {:>5}  p50 {:>6} ms  p99 {:>6} ms  max {:>6} ms",
            lat.len(), expected, percentile(&lat, 0.5), percentile(&lat, 0.99), lat.last().copied().unwrap_or(0)
        );
    }
    let wrong = o.knowable.iter().filter(|(k, (c, _))| o.read.get(*k).is_some_and(|(kind, _)| (kind == "OrderConfirmed") != *c)).count();
    if wrong > 0 {
        println!("{label:<24} {wrong} outcomes differ from the workload's intent");
    }
}
