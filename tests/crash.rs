//! Exactly-once under SIGKILL, with a real process and a real broker: 20,000 commands over
//! 2,000 keys, the processor killed three times mid-stream and restarted each time. Then,
//! from the committed output alone: one reply per command, contiguous event versions per
//! aggregate, HTTP snapshots equal to the fold of the events, and restarts that restored
//! only the changelog tail.

mod common;

use common::*;
use serde_json::json;
use std::sync::atomic::Ordering;
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
    let (loader, sent) = spawn_loader(&s.commands, COMMANDS, command, (1, Duration::from_millis(1)), Duration::from_secs(30));
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
    check_exactly_once(&s, COMMANDS, KEYS, &[&inst]);

    // Restarts after SIGKILL restored the tail, never the whole store.
    for (restored, changelog) in &restored_after_kill {
        assert!(*restored < *changelog as f64 / 2.0, "restored {restored} of a {changelog}-record changelog");
    }
    assert!(inst.terminate().success());
}
