//! Re-key through a repartition topic and a co-partitioned stream–table join, against the
//! real broker, with one and with two instances of the application.

mod common;

use common::*;
use std::time::{Duration, Instant};

struct Shop {
    setup: Setup,
    customers: String,
    orders: String,
    enriched: String,
}

fn shop(name: &str) -> Shop {
    shop_with(name, "")
}

/// The co-partitioned shop: orders re-keyed by customer and joined with the table.
fn shop_with(name: &str, processing: &str) -> Shop {
    shop_topology(name, |customers, orders, enriched| format!("tables:
  customers: {{ topic: {customers}, store: customers }}
rekeys:
  by-customer: {{ from: {orders}, key_field: customer_id, into: customers }}
joins:
  enrich: {{ stream: by-customer, table: customers, kind: inner, output: {enriched} }}
{processing}"))
}

/// A shop application with its own topics; `nodes` writes the node sections given the
/// customer, order and enriched-order topic names.
fn shop_topology(name: &str, nodes: impl Fn(&str, &str, &str) -> String) -> Shop {
    let app = unique(name);
    let (customers, orders, enriched) = (format!("{app}-customers"), format!("{app}-orders"), format!("{app}-enriched"));
    let dir_setup = Setup::new(&format!("{name}-unused"), 1, "json");
    let topology = dir_setup.dir.path().join("shop.yaml");
    std::fs::write(&topology, format!("version: 1
application_id: {app}
topics:
  {customers}: {{ partitions: 4, compacted: true }}
  {orders}: {{ partitions: 3 }}
  {enriched}: {{ partitions: 3 }}
{}", nodes(&customers, &orders, &enriched))).unwrap();
    Shop { setup: Setup { topology, app, ..dir_setup }, customers, orders, enriched }
}

fn load_customers(s: &Shop, n: usize, instances: &[&Instance]) {
    let p = producer();
    for c in 0..n {
        send(&p, &s.customers, &format!("c{c}"), format!(r#"{{"name":"N{c}"}}"#).as_bytes(), &[]);
    }
    flush(&p);
    // Wait until every customer is in the table, on whichever instance owns it: the join
    // has no time synchronization across inputs yet (next step of the joins issue).
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in 0..n {
        while !instances.iter().any(|i| i.get(&format!("/stores/customers/keys/c{c}")).0 == 200) {
            assert!(Instant::now() < deadline, "customer c{c} never reached the table");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn send_orders(s: &Shop, n: usize, customers: usize) {
    let p = producer();
    for o in 0..n {
        let body = format!(r#"{{"customer_id":"c{}","qty":{o}}}"#, o % customers);
        send(&p, &s.orders, &format!("o{o}"), body.as_bytes(), &[]);
    }
    flush(&p);
}

fn check_enriched(s: &Shop, n: usize, customers: usize) {
    let out = wait_for(&s.enriched, n, Duration::from_secs(60));
    assert_eq!(out.len(), n, "every order enriched exactly once");
    let mut keys: Vec<String> = out.iter().map(|r| r.key.clone().unwrap()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "no order twice");
    for r in &out {
        let v = r.json();
        let o: usize = r.key.as_deref().unwrap()[1..].parse().unwrap();
        assert_eq!(v["stream"]["qty"], o);
        assert_eq!(v["table"]["name"], format!("N{}", o % customers), "{v}");
    }
}

#[test]
fn orders_rekeyed_and_joined_with_the_customer_table() {
    let s = shop("join1");
    let inst = Instance::start(&s.setup, "j0", &s.setup.dir.path().join("state"));
    load_customers(&s, 10, &[&inst]);
    send_orders(&s, 50, 10);
    check_enriched(&s, 50, 10);
    let repartition = read_all(&format!("{}-by-customer-repartition", s.setup.app));
    assert_eq!(repartition.len(), 50);
    for r in &repartition {
        let k = r.key.as_deref().unwrap();
        assert_eq!(r.partition, millrace::codec::murmur2::partition_for_key(k.as_bytes(), 4), "repartitioned like the table");
    }
}

#[test]
fn two_instances_keep_join_partitions_together() {
    let s = shop("join2");
    let a = Instance::start(&s.setup, "a", &s.setup.dir.path().join("state-a"));
    let b = Instance::start(&s.setup, "b", &s.setup.dir.path().join("state-b"));
    // Let the second member's rebalance settle: both ready, the table split between them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.get("/ready").0 != 200 || b.get("/ready").0 != 200
        || a.get("/stores/customers?limit=1&scope=local").1["partitions"].as_array().map_or(0, Vec::len) == 4
    {
        assert!(Instant::now() < deadline, "the two instances never split the partitions");
        std::thread::sleep(Duration::from_millis(100));
    }
    load_customers(&s, 20, &[&a, &b]);
    send_orders(&s, 60, 20);
    check_enriched(&s, 60, 20);
}

#[test]
fn global_table_is_bootstrapped_before_orders_and_kept_current() {
    let s = shop_topology("global", |customers, orders, enriched| format!("global_tables:
  customers: {{ topic: {customers}, store: customers }}
joins:
  enrich: {{ stream: {orders}, table: customers, key_field: customer_id, kind: inner, output: {enriched} }}
"));
    millrace::runtime::topics::ensure(&clients(), &[
        millrace::runtime::topics::TopicNeed::plain(s.customers.clone(), 4),
    ]).unwrap();
    // Customers exist before any instance starts: the bootstrap must load them all.
    let p = producer();
    for c in 0..20 {
        send(&p, &s.customers, &format!("c{c}"), format!(r#"{{"name":"N{c}"}}"#).as_bytes(), &[]);
    }
    flush(&p);
    let a = Instance::start(&s.setup, "ga", &s.setup.dir.path().join("state-a"));
    let b = Instance::start(&s.setup, "gb", &s.setup.dir.path().join("state-b"));
    for inst in [&a, &b] {
        let (_, page) = inst.get("/stores/customers?limit=100");
        assert_eq!(page["entries"].as_array().unwrap().len(), 20, "every instance holds the whole table once ready");
    }
    send_orders(&s, 60, 20);
    check_enriched(&s, 60, 20);
    // Kept current: a customer created now is joined once it has arrived.
    send(&p, &s.customers, "c20", br#"{"name":"N20"}"#, &[]);
    flush(&p);
    let deadline = Instant::now() + Duration::from_secs(30);
    while [&a, &b].iter().any(|i| i.get("/stores/customers/keys/c20").0 != 200) {
        assert!(Instant::now() < deadline, "c20 never reached both instances");
        std::thread::sleep(Duration::from_millis(50));
    }
    send(&p, &s.orders, "o-new", br#"{"customer_id":"c20","qty":1}"#, &[]);
    flush(&p);
    let out = wait_for(&s.enriched, 61, Duration::from_secs(30));
    let new = out.iter().find(|r| r.key.as_deref() == Some("o-new")).expect("the new order was enriched");
    assert_eq!(new.json()["table"]["name"], "N20");
}

/// Three instances, one killed and, once the others took its partitions over, restarted
/// while orders flow: every order is enriched exactly once with the right customer, so
/// partition p of the repartition topic and of the customer table stayed on one instance
/// through both rebalances.
#[test]
fn three_instances_keep_joins_co_partitioned_across_rebalances() {
    let s = shop("join3");
    let dir = s.setup.dir.path().to_path_buf();
    let a = Instance::start(&s.setup, "a", &dir.join("state-a"));
    let b = Instance::start(&s.setup, "b", &dir.join("state-b"));
    let c = Instance::start(&s.setup, "c", &dir.join("state-c"));
    let owned = |i: &Instance| i.get("/stores/customers?limit=1&scope=local").1["partitions"].as_array().map_or(0, Vec::len);
    let settle = |instances: &[&Instance], want: &dyn Fn(&[usize]) -> bool, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let counts: Vec<usize> = instances.iter().map(|i| owned(i)).collect();
            if want(&counts) && instances.iter().all(|i| i.get("/ready").0 == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: partitions per instance {counts:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    settle(&[&a, &b, &c], &|n| n.iter().all(|&x| x >= 1) && n.iter().sum::<usize>() == 4, "three members share the table");
    load_customers(&s, 30, &[&a, &b, &c]);
    let p = producer();
    send_rest(&s, &p, 0..200, 30);
    c.kill9();
    send_rest(&s, &p, 200..300, 30);
    // The session times out (6 s in tests) and a and b take c's partitions over.
    settle(&[&a, &b], &|n| n.iter().sum::<usize>() == 4, "a and b take over");
    send_rest(&s, &p, 300..400, 30);
    let c = Instance::start(&s.setup, "c", &dir.join("state-c"));
    settle(&[&a, &b, &c], &|n| n[2] >= 1 && n.iter().sum::<usize>() == 4, "c is given partitions again");
    send_rest(&s, &p, 400..600, 30);
    check_enriched(&s, 600, 30);
}

fn send_rest(s: &Shop, p: &rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>, range: std::ops::Range<usize>, customers: usize) {
    for o in range {
        let body = format!(r#"{{"customer_id":"c{}","qty":{o}}}"#, o % customers);
        send(p, &s.orders, &format!("o{o}"), body.as_bytes(), &[]);
    }
    flush(p);
}

/// A replay: every topic is full before the application starts, and the orders were
/// written (and are readable) before the customers. By event time the customers came
/// first, and the join reads the two inputs in timestamp order, so every order finds its
/// customer, as live processing would have.
#[test]
fn replay_reads_table_and_stream_in_timestamp_order() {
    let s = shop_with("replay", "processing:\n  max_task_idle_ms: 500\n");
    millrace::runtime::topics::ensure(&clients(), &[
        millrace::runtime::topics::TopicNeed::plain(s.customers.clone(), 4),
        millrace::runtime::topics::TopicNeed::plain(s.orders.clone(), 3),
    ]).unwrap();
    let p = producer();
    let t0 = 1_700_000_000_000i64;
    for o in 0..200 {
        let body = format!(r#"{{"customer_id":"c{}","qty":{o}}}"#, o % 20);
        send_at(&p, &s.orders, &format!("o{o}"), body.as_bytes(), t0 + 10_000 + o as i64);
    }
    flush(&p);
    for c in 0..20 {
        send_at(&p, &s.customers, &format!("c{c}"), format!(r#"{{"name":"N{c}"}}"#).as_bytes(), t0 + c as i64);
    }
    flush(&p);
    let _inst = Instance::start(&s.setup, "r0", &s.setup.dir.path().join("state"));
    check_enriched(&s, 200, 20);
    let out = read_all(&s.enriched);
    assert!(out.iter().all(|r| r.json()["stream"]["qty"].as_u64().is_some()));
}
