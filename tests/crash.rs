//! Exactly-once under SIGKILL, with a real process and a real broker: 20,000 commands over
//! 2,000 keys, the processor killed three times mid-stream and restarted each time. Then,
//! from the committed output alone: one reply per command, contiguous event versions per
//! aggregate, HTTP snapshots equal to the fold of the events, and restarts that restored
//! only the changelog tail.

mod common;

use common::*;
use millrace::domain::customer::{Customer, CustomerAggregate, CustomerEvent};
use millrace::processor::Aggregate;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const COMMANDS: usize = 20_000;
const KEYS: usize = 2_000;
const KILLS: usize = 3;

fn command(i: usize) -> (String, Vec<u8>) {
    let key = format!("k{}", i % KEYS);
    let nth = i / KEYS;
    // A cheap deterministic mix: creates, updates, deletes, re-creates, and rejections.
    let (ty, payload) = match (nth, (i * 7919) % 10) {
        (0, _) => ("CreateCustomer", json!({"name": format!("n{i}"), "email": "a@b"})),
        (_, 0 | 1) => ("DeleteCustomer", json!({})),
        (_, 2) => ("CreateCustomer", json!({"name": format!("n{i}"), "email": "a@b"})),
        _ => ("UpdateCustomer", json!({"name": format!("n{i}"), "email": format!("{i}@b")})),
    };
    let bytes = command_json(&format!("cmd-{i}"), &key, None, ty, payload);
    (key, bytes)
}

#[test]
fn sigkill_mid_stream_loses_and_doubles_nothing() {
    let s = Setup::new("crash", 4, "json");
    let mut inst = s.start();
    // Commands flow steadily for several seconds, so every kill lands while commands are
    // being processed and a transaction is open.
    let sent = Arc::new(AtomicUsize::new(0));
    let loader = {
        let (topic, sent) = (s.commands.clone(), sent.clone());
        std::thread::spawn(move || {
            let p = producer();
            for i in 0..COMMANDS {
                let (key, bytes) = command(i);
                send(&p, &topic, &key, &bytes, &[]);
                sent.store(i + 1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
            flush(&p);
        })
    };
    let mut restored_after_kill = Vec::new();
    let mut in_flight_kills = 0;
    let mut answered = 0i64;
    for k in 1..=KILLS {
        while sent.load(Ordering::SeqCst) < k * COMMANDS / (KILLS + 1) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // The restarted instance must be processing again before it is killed again.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while committed_sum(&s.app, &s.commands, s.partitions).unwrap_or(0) < answered + 500 {
            assert!(std::time::Instant::now() < deadline, "no progress after restart {k}");
            std::thread::sleep(Duration::from_millis(20));
        }
        inst.kill9();
        let at = sent.load(Ordering::SeqCst);
        let changelog_size = read_all(&s.changelog).len();
        if changelog_size < at {
            in_flight_kills += 1;
        }
        inst = s.start();
        let seen = committed_sum(&s.app, &s.commands, s.partitions).unwrap_or(0);
        answered = seen;
        let restored = inst.metric_sum("millrace_restore_records_total");
        eprintln!("kill {k}: {at} sent, {seen} committed after restart, changelog {changelog_size} records, restored {restored}");
        restored_after_kill.push((restored, changelog_size));
    }
    loader.join().unwrap();
    assert!(in_flight_kills > 0, "at least one kill must land while commands were unanswered");
    let replies = wait_for(&s.replies, COMMANDS, Duration::from_secs(300));

    // Exactly one reply per command id.
    let by_id = replies_by_id(&replies);
    assert_eq!(by_id.len(), COMMANDS, "every command answered");
    let doubled: Vec<_> = by_id.iter().filter(|(_, v)| v.len() != 1).map(|(k, _)| k).take(5).collect();
    assert!(doubled.is_empty(), "commands with more than one reply: {doubled:?}");
    assert_eq!(replies.len(), COMMANDS);

    // Per aggregate: versions 1..n, no gap, no duplicate.
    let mut events: BTreeMap<String, Vec<(u64, CustomerEvent)>> = BTreeMap::new();
    for e in read_all(&s.events) {
        let v = e.json();
        let ev: CustomerEvent = serde_json::from_value(json!({"type": v["type"], "payload": v["payload"]})).unwrap();
        events.entry(e.key.unwrap()).or_default().push((v["version"].as_u64().unwrap(), ev));
    }
    for (key, evs) in &events {
        let versions: Vec<u64> = evs.iter().map(|(v, _)| *v).collect();
        let expected: Vec<u64> = (1..=evs.len() as u64).collect();
        assert_eq!(versions, expected, "event versions of {key}");
    }
    // Accepted replies and events agree.
    let accepted_events: u64 = by_id.values().map(|v| v[0]["event_count"].as_u64().unwrap_or(0)).sum();
    assert_eq!(accepted_events, events.values().map(|v| v.len() as u64).sum::<u64>());

    // Every snapshot served over HTTP is the fold of its committed events.
    for k in 0..KEYS {
        let key = format!("k{k}");
        let evs = events.get(&key).cloned().unwrap_or_default();
        let folded = evs.iter().fold(Customer::default(), |s, (_, e)| CustomerAggregate::evolve(s, e));
        let (status, body) = inst.get(&format!("/stores/customers/keys/{key}"));
        if evs.is_empty() {
            assert_eq!(status, 404, "{key} has no events: {body}");
            continue;
        }
        assert_eq!(status, 200, "{key}: {body}");
        assert_eq!(body["version"].as_u64().unwrap(), evs.len() as u64, "{key}");
        assert_eq!(body["state"], serde_json::to_value(&folded).unwrap(), "{key}");
    }

    // Restarts after SIGKILL restored the tail, never the whole store.
    for (restored, changelog) in &restored_after_kill {
        assert!(*restored < *changelog as f64 / 2.0, "restored {restored} of a {changelog}-record changelog");
    }
    assert!(inst.terminate().success());
}
