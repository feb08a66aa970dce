//! Exactly-once that survives real failures, with three real processes on the real broker
//! (issue 5), in the spirit of Kafka's own streams EOS system test:
//! - 100,000 commands over 20,000 keys, and 20,000 orders through a re-key and a join,
//!   while instances are SIGKILLed ten times, round robin, and restarted;
//! - a zombie: an instance SIGSTOPped past its session timeout, whose partitions the others
//!   take over, then SIGCONTed: its writes are fenced, nothing is doubled.
//! Everything is verified from the committed output.

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A customer application with a join in the mix: orders re-keyed by customer and joined
/// (left) with the latest event of each customer.
struct Faults {
    s: Setup,
    orders: String,
    enriched: String,
}

fn faults(name: &str, partitions: i32) -> Faults {
    let s = Setup::new(name, partitions, "json");
    let (orders, enriched) = (format!("{}-orders", s.app), format!("{}-enriched", s.app));
    let text = std::fs::read_to_string(&s.topology).unwrap();
    let text = text.replacen("aggregates:\n", &format!("  {orders}: {{ partitions: {partitions} }}
  {enriched}: {{ partitions: {partitions} }}
tables:
  latest-customer-event: {{ topic: {events}, store: latest-customer-event }}
rekeys:
  orders-by-customer: {{ from: {orders}, key_field: customer_id, into: latest-customer-event }}
joins:
  ship: {{ stream: orders-by-customer, table: latest-customer-event, kind: left, output: {enriched} }}
aggregates:\n", events = s.events), 1);
    std::fs::write(&s.topology, text).unwrap();
    Faults { s, orders, enriched }
}

fn command(i: usize, keys: usize) -> (String, Vec<u8>) {
    let key = format!("k{}", i % keys);
    let (ty, payload) = match (i / keys, (i * 7919) % 10) {
        (0, _) => ("CreateCustomer", json!({"name": format!("n{i}"), "email": "a@b"})),
        (_, 0 | 1) => ("DeleteCustomer", json!({})),
        (_, 2) => ("CreateCustomer", json!({"name": format!("n{i}"), "email": "a@b"})),
        _ => ("UpdateCustomer", json!({"name": format!("n{i}"), "email": format!("{i}@b")})),
    };
    (key.clone(), command_json(&format!("cmd-{i}"), &key, None, ty, payload))
}

/// Sends `commands` commands and `orders` orders, interleaved, paced over roughly `over`.
fn load(f: &Faults, commands: usize, keys: usize, orders: usize, over: Duration) -> (std::thread::JoinHandle<()>, Arc<AtomicUsize>) {
    let sent = Arc::new(AtomicUsize::new(0));
    let (cmd_topic, order_topic, counter) = (f.s.commands.clone(), f.orders.clone(), sent.clone());
    let per_ms = (commands / over.as_millis().max(1) as usize).max(1);
    let handle = std::thread::spawn(move || {
        let p = producer();
        // One order after every `ratio` commands.
        let ratio = commands / orders.max(1);
        for i in 0..commands {
            let (key, bytes) = command(i, keys);
            send(&p, &cmd_topic, &key, &bytes, &[]);
            if ratio > 0 && i % ratio == 0 && i / ratio < orders {
                let o = i / ratio;
                let order = json!({"customer_id": format!("k{}", o % keys), "items": [{"product_id": "p", "quantity": 1}]});
                send(&p, &order_topic, &format!("o{o}"), &serde_json::to_vec(&order).unwrap(), &[]);
            }
            counter.store(i + 1, Ordering::SeqCst);
            if i % per_ms == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        flush(&p);
    });
    (handle, sent)
}

/// Every order shipped exactly once.
fn check_orders(f: &Faults, orders: usize) {
    let shipped = wait_for(&f.enriched, orders, Duration::from_secs(300));
    let mut by_order: BTreeMap<String, usize> = BTreeMap::new();
    for r in &shipped {
        *by_order.entry(r.key.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(by_order.len(), orders, "every order shipped");
    let doubled: Vec<_> = by_order.iter().filter(|(_, n)| **n != 1).take(5).collect();
    assert!(doubled.is_empty(), "orders shipped more than once: {doubled:?}");
}

#[test]
fn ten_sigkills_across_three_instances_lose_and_double_nothing() {
    const COMMANDS: usize = 100_000;
    const KEYS: usize = 20_000;
    const ORDERS: usize = 20_000;
    const KILLS: usize = 10;
    let f = faults("eos3", 6);
    let s = &f.s;
    let ids = ["a", "b", "c"];
    let mut instances: Vec<Instance> = ids.iter().map(|id| s.start_instance(id)).collect();
    let started = Instant::now();
    // Paced so that the ten kills and restarts (a few seconds each) fall inside the load.
    let (loader, sent) = load(&f, COMMANDS, KEYS, ORDERS, Duration::from_secs(80));
    let mut in_flight = 0;
    let mut progress = 0i64;
    for k in 0..KILLS {
        while sent.load(Ordering::SeqCst) < (k + 1) * COMMANDS / (KILLS + 1) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Processing has moved on since the last restart, so this kill lands in work.
        let deadline = Instant::now() + Duration::from_secs(120);
        let target = (progress + 500).min(COMMANDS as i64);
        while committed_sum(&s.app, &s.commands, s.partitions).unwrap_or(0) < target {
            assert!(Instant::now() < deadline, "no progress before kill {k}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let victim = k % ids.len();
        instances[victim].kill9_ref();
        let at = sent.load(Ordering::SeqCst) as i64;
        // None: the broker cannot say because a transaction holding offsets is open.
        let committed = committed_sum(&s.app, &s.commands, s.partitions);
        if committed.is_none_or(|c| c < at) {
            in_flight += 1;
        }
        eprintln!("kill {k} ({}): {at} sent, {committed:?} committed", ids[victim]);
        progress = committed.unwrap_or(progress);
        instances[victim] = s.start_instance(ids[victim]);
    }
    loader.join().unwrap();
    assert!(in_flight >= KILLS / 2, "only {in_flight} of {KILLS} kills landed while commands were unanswered");
    let refs: Vec<&Instance> = instances.iter().collect();
    check_exactly_once(s, COMMANDS, KEYS, &refs);
    check_orders(&f, ORDERS);
    eprintln!("{COMMANDS} commands, {ORDERS} orders, {KILLS} kills: verified in {:?}", started.elapsed());
    for i in instances {
        assert!(i.terminate().success());
    }
}

#[test]
fn a_zombie_past_its_session_timeout_is_fenced_and_doubles_nothing() {
    const COMMANDS: usize = 20_000;
    const KEYS: usize = 4_000;
    const ORDERS: usize = 4_000;
    let f = faults("zombie", 6);
    let s = &f.s;
    // Long transactions, so the zombie is stopped with one open (see below).
    let text = std::fs::read_to_string(&s.topology).unwrap();
    std::fs::write(&s.topology, text.replace("commit_interval_ms: 100", "commit_interval_ms: 2000")).unwrap();
    let instances: Vec<Instance> = ["a", "b", "c"].iter().map(|id| s.start_instance(id)).collect();
    let (loader, sent) = load(&f, COMMANDS, KEYS, ORDERS, Duration::from_secs(20));
    while sent.load(Ordering::SeqCst) < COMMANDS / 4 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let zombie = &instances[1];
    // Stop it a moment after one of its commits: its next transaction, open while input
    // flows, is then 1.7 s from committing. Stopped inside a commit instead, the
    // transaction could still complete on resume and the fencing would go untested.
    let committed = || zombie.metric_sum("millrace_transactions_total{result=\"committed\"}");
    let (first, deadline) = (committed(), Instant::now() + Duration::from_secs(30));
    while committed() == first {
        assert!(Instant::now() < deadline, "the zombie-to-be commits nothing; log:\n{}", zombie.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let pid = zombie.child.id() as libc::pid_t;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let at_stop = stable_offsets(s, Duration::from_secs(60));
    // Past the 6 s session timeout the group drops it, and the others take its partitions:
    // every partition's committed offset moves on while the zombie stays stopped.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = committed_offsets(&s.app, &s.commands, s.partitions).unwrap_or_default();
        if now.len() == at_stop.len() && now.iter().zip(&at_stop).all(|(n, a)| n > a) {
            break;
        }
        assert!(Instant::now() < deadline, "partitions stand still while their owner is stopped: {at_stop:?} -> {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    loader.join().unwrap();
    let refs: Vec<&Instance> = instances.iter().collect();
    check_exactly_once(s, COMMANDS, KEYS, &refs);
    check_orders(&f, ORDERS);
    // The zombie noticed: the group had dropped it, and its open transaction could not
    // commit (fenced by the group's new generation, KIP-447) and was aborted, or its
    // producer was fenced outright.
    let lost = zombie.metric_sum("millrace_rebalances_total{step=\"lost\"}");
    let aborted = zombie.metric_sum("millrace_transactions_total{result=\"aborted\"}") + zombie.metric_sum("millrace_fenced_total");
    eprintln!("zombie: lost its partitions {lost} times; {aborted} aborted or fenced transactions");
    assert!(lost >= 1.0, "the zombie never learned that the group dropped it");
    assert!(aborted >= 1.0, "the zombie's open transaction was neither aborted nor fenced");
    for i in instances {
        assert!(i.terminate().success());
    }
}

/// The group's committed offsets, once the broker can say (no transaction holding offsets
/// open).
fn stable_offsets(s: &Setup, within: Duration) -> Vec<i64> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(o) = committed_offsets(&s.app, &s.commands, s.partitions) {
            return o;
        }
        assert!(Instant::now() < deadline, "committed offsets never stable");
        std::thread::sleep(Duration::from_millis(100));
    }
}
