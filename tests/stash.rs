//! The stash: an order that names products not yet created waits, in its snapshot, until
//! they exist (CONFIRMED) or its event-time deadline passes (REJECTED). The wait survives
//! crashes and rebalances, and is decided as of the deadline, never as of the moment
//! someone looked: that is what makes a replay decide as live processing did.

use millrace::codec::Format;
use millrace::domain::order::OrderAggregate;
use millrace::processor::{AggregateProcessor, AggregateSettings, AwaitSettings, Context, Lookup, Processor};
use millrace::record::{Headers, InRecord, OutRecord};
use millrace::store::{ChangeloggedStore, RocksStore, StoreError, StoreResources};
use millrace::testing::TopologyDriver;
use millrace::topology;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

fn shop() -> TopologyDriver {
    let t = topology::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/topology/shop.yaml"))).unwrap();
    TopologyDriver::new(t, &millrace::builtin_registry()).unwrap()
}

fn command(id: &str, agg: &str, ty: &str, payload: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"command_id": id, "aggregate_id": agg, "type": ty, "payload": payload})).unwrap()
}

fn place(d: &mut TopologyDriver, order: &str, products: &[&str]) {
    let items: Vec<Value> = products.iter().map(|p| json!({"product_id": p, "quantity": 1})).collect();
    let c = command(&format!("{order}-place"), order, "PlaceOrder", json!({"customer_id": "c1", "items": items}));
    d.pipe("shop-order-commands", order, &c).unwrap();
}

fn create_product(d: &mut TopologyDriver, product: &str) {
    let c = command(&format!("{product}-create"), product, "CreateProduct", json!({"name": product}));
    d.pipe("shop-product-commands", product, &c).unwrap();
}

fn status(d: &TopologyDriver, order: &str) -> String {
    d.store("orders", order).map(|s| s["state"]["status"].as_str().unwrap().to_string()).unwrap_or_default()
}

fn order_events(d: &TopologyDriver, order: &str) -> Vec<String> {
    d.read_output("shop-order-events")
        .iter()
        .filter(|r| r.key_str() == Some(order))
        .map(|r| r.json()["type"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_pending_order_survives_a_crash_and_a_rebalance_and_is_confirmed_once() {
    let mut d = shop();
    place(&mut d, "o1", &["p1", "p2"]);
    d.advance_time(100).unwrap();
    assert_eq!(status(&d, "o1"), "PENDING");
    assert_eq!(d.index("orders", "millrace.awaiting", "yes"), vec!["o1"], "the pending set is indexed");

    // p1 arrives; the transaction that would notice it dies before committing.
    create_product(&mut d, "p1");
    d.crash().unwrap();
    d.advance_time(100).unwrap();
    assert_eq!(status(&d, "o1"), "PENDING", "p2 is still missing");
    d.rebalance().unwrap();
    create_product(&mut d, "p2");
    d.advance_time(100).unwrap(); // commits p2's event: the catalog has it now
    d.crash_after_commit().unwrap();
    d.advance_time(100).unwrap(); // punctuation finds both products
    d.advance_time(100).unwrap();
    assert_eq!(status(&d, "o1"), "CONFIRMED");
    assert_eq!(order_events(&d, "o1"), ["OrderPlaced", "OrderConfirmed"], "confirmed exactly once");
    assert!(d.index("orders", "millrace.awaiting", "yes").is_empty(), "nothing waits any more");
}

#[test]
fn an_order_whose_products_never_come_is_rejected_with_the_reason_after_its_deadline() {
    let mut d = shop();
    place(&mut d, "o9", &["p9"]);
    d.advance_time(4_000).unwrap();
    assert_eq!(status(&d, "o9"), "PENDING", "4 s into a 5 s wait");
    d.advance_time(1_200).unwrap();
    d.advance_time(100).unwrap();
    assert_eq!(status(&d, "o9"), "REJECTED");
    let reason = d.store("orders", "o9").unwrap()["state"]["reason"].clone();
    assert_eq!(reason, json!("waited 5000 ms for [\"p9\"] in table product-catalog; not there by then"));
    assert_eq!(order_events(&d, "o9"), ["OrderPlaced", "OrderRejected"]);
}

/// A table whose one key appears at a given event time, final through the second.
struct AppearsAt(i64, i64);

impl Lookup for AppearsAt {
    fn lookup(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(Some(b"{}".to_vec()))
    }
    fn lookup_as_of(&self, _key: &[u8], ts: i64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok((ts >= self.0).then(|| b"{}".to_vec()))
    }
    fn exists_since(&self, _key: &[u8], ts: i64) -> Result<Option<i64>, StoreError> {
        Ok((ts >= self.0).then_some(self.0))
    }
    fn final_through(&self) -> i64 {
        self.1
    }
}

/// Runs one PlaceOrder at event time 1000 (deadline 6000), then looks again at `clock`.
fn decide_with_product_at(product_time: i64, clock: i64) -> (Vec<OutRecord>, Value) {
    decide_with(AppearsAt(product_time, i64::MAX), clock)
}

/// As `decide_with_product_at`, against any table.
fn decide_with(table: AppearsAt, clock: i64) -> (Vec<OutRecord>, Value) {
    let product_time = table.0;
    let dir = tempfile::tempdir().unwrap();
    let rocks = Arc::new(RocksStore::open(dir.path(), "orders", 0, &StoreResources::new(&Default::default()), None).unwrap());
    let mut store = ChangeloggedStore::new(rocks, "x-orders-changelog");
    let settings = AggregateSettings {
        store: "orders".into(),
        command_format: Format::Json,
        event_format: Format::Json,
        reply_format: Format::Json,
        store_format: Format::Json,
        events_topic: "events".into(),
        reply_topic: "replies".into(),
        dead_letter_topic: "dlq".into(),
        dedup_window: 8,
        quarantine: Default::default(),
        event_history: false,
        awaits: Some(AwaitSettings {
            table_name: "catalog".into(),
            table: Arc::new(AppearsAt(product_time, table.1)),
            timeout_ms: 5_000,
        }),
    };
    let mut p = AggregateProcessor::<OrderAggregate>::new(settings);
    let record = InRecord {
        topic: "cmds".into(),
        partition: 0,
        offset: 0,
        timestamp: Some(1_000),
        key: Some(b"o1".to_vec()),
        value: Some(command("c1", "o1", "PlaceOrder", json!({"customer_id": "c", "items": [{"product_id": "p", "quantity": 1}]}))),
        headers: Headers::default(),
    };
    let mut out: Vec<OutRecord> = Vec::new();
    let mut ctx = Context { store: Some(&mut store), out: &mut out, peers: &[], timestamp: record.timestamp };
    p.process(&record, &mut ctx).unwrap();
    p.punctuate(clock, &mut ctx).unwrap();
    let events: Vec<OutRecord> = out.into_iter().filter(|r| r.topic == "events").collect();
    let last: Value = serde_json::from_slice(events.last().unwrap().value.as_deref().unwrap()).unwrap();
    (events, last)
}

#[test]
fn a_wait_is_decided_as_of_its_deadline_whenever_it_is_looked_at() {
    // The product appears at 5500, before the deadline (6000): confirmed, stamped 5500,
    // whether the check runs at 5600 or long after (a replay).
    for clock in [5_600, 60_000] {
        let (events, last) = decide_with_product_at(5_500, clock);
        assert_eq!(last["type"], "OrderConfirmed", "clock {clock}");
        assert_eq!(events.last().unwrap().timestamp, Some(5_500), "clock {clock}");
    }
    // The product appears at 6500, after the deadline. A replay finds it in the table, and
    // still rejects, as live processing did; stamped with the deadline.
    for clock in [6_000, 60_000] {
        let (events, last) = decide_with_product_at(6_500, clock);
        assert_eq!(last["type"], "OrderRejected", "clock {clock}");
        assert_eq!(events.last().unwrap().timestamp, Some(6_000));
    }
    // Already there when the order is placed: confirmed at once, at the order's time.
    let (events, last) = decide_with_product_at(10, 1_000);
    assert_eq!((last["type"].as_str(), events.last().unwrap().timestamp), (Some("OrderConfirmed"), Some(1_000)));
    // Before the deadline and not there yet: nothing decided.
    let (events, _) = decide_with_product_at(5_500, 5_000);
    assert_eq!(events.len(), 1, "only OrderPlaced");
}

#[test]
fn a_wait_is_decided_only_with_what_the_table_is_final_for() {
    // Nothing yet at the deadline (6000), and the table is final only through 5999: a
    // product of 6000 may still come (its writer is behind, or has no owner). It waits,
    // however late the clock.
    let (events, _) = decide_with(AppearsAt(7_000, 5_999), 60_000);
    assert_eq!(events.len(), 1, "only OrderPlaced: not rejected before the table is final through the deadline");
    let (_, last) = decide_with(AppearsAt(7_000, 6_000), 60_000);
    assert_eq!(last["type"], "OrderRejected");
    // The product is there at 5500, but the table is final only through 5400: a delete
    // before 5500 could still come, so nothing is decided yet; once final, confirmed at 5500.
    let (events, _) = decide_with(AppearsAt(5_500, 5_400), 60_000);
    assert_eq!(events.len(), 1);
    let (events, last) = decide_with(AppearsAt(5_500, 5_500), 60_000);
    assert_eq!((last["type"].as_str(), events.last().unwrap().timestamp), (Some("OrderConfirmed"), Some(5_500)));
}
