//! Exactly-once under SIGKILL, with a real process and a real broker: 20,000 commands over
//! 2,000 keys, the processor killed three times mid-stream and restarted each time. Then,
//! from the committed output alone: one reply per command, contiguous event versions per
//! aggregate, HTTP snapshots equal to the fold of the events, and restarts that restored
//! only the changelog tail. And: whatever transaction the killed process left open, on
//! either of a thread's two producers, the restart aborts at once.

mod common;

use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

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
    check_exactly_once(&s, COMMANDS, KEYS, &[&inst]);

    // Restarts after SIGKILL restored the tail, never the whole store.
    for (restored, changelog) in &restored_after_kill {
        assert!(*restored < *changelog as f64 / 2.0, "restored {restored} of a {changelog}-record changelog");
    }
    assert!(inst.terminate().success());
}

/// A transaction the killed instance left open, on either of the two producers a
/// processing thread takes turns with (`runtime/alternating_sink.rs`), is aborted by the
/// restarted instance's `init_transactions`, not left to the coordinator. Left open, it
/// would hold the last stable offset of every partition it wrote until the coordinator
/// aborts it (`transaction.timeout.ms`, 10 s, and up to another 10 s before the
/// coordinator looks), and no reply written after it would be readable before then. So a
/// command sent after each restart must be answered within `BEFORE_ANY_TIMEOUT` of the
/// kill. The kills land at arbitrary points of a steady load, transactions every 100 ms,
/// so either producer's transaction is the open one, by turns.
#[test]
fn a_restart_aborts_what_either_producer_left_open() {
    const BEFORE_ANY_TIMEOUT: Duration = Duration::from_secs(9);
    const ROUNDS: usize = 6;
    let s = Setup::new("crashturns", 4, "json");
    let mut inst = s.start();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = {
        let (topic, stop) = (s.commands.clone(), stop.clone());
        std::thread::spawn(move || {
            let p = producer();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let (key, bytes) = command(i);
                send(&p, &topic, &key, &bytes, &[]);
                i += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            flush(&p);
        })
    };
    let probes = producer();
    // Follows the replies as they become readable (read_committed), from the start.
    let replies: BaseConsumer = client_config()
        .set("group.id", unique("probe-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut from_start = TopicPartitionList::new();
    for p in 0..2 {
        from_start.add_partition_offset(&s.replies, p, Offset::Beginning).unwrap();
    }
    replies.assign(&from_start).unwrap();
    let mut answered = 0i64;
    for round in 1..=ROUNDS {
        // Processing, with a transaction open most of the time, before each kill.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while committed_sum(&s.app, &s.commands, s.partitions).unwrap_or(0) < answered + 300 {
            assert!(std::time::Instant::now() < deadline, "no progress before kill {round}");
            std::thread::sleep(Duration::from_millis(20));
        }
        inst.kill9();
        let killed = std::time::Instant::now();
        inst = s.start();
        let id = format!("probe-{round}");
        send(&probes, &s.commands, &format!("probe-key-{round}"), &command_json(&id, &format!("probe-key-{round}"), None, "CreateCustomer", json!({"name": "p", "email": "p@b"})), &[]);
        flush(&probes);
        let readable = loop {
            let m = match replies.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => m,
                Some(Err(e)) => panic!("reading replies: {e}"),
                None if killed.elapsed() > BEFORE_ANY_TIMEOUT => break false,
                None => continue,
            };
            let reply: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
            if reply["command_id"] == id.as_str() {
                break killed.elapsed() < BEFORE_ANY_TIMEOUT;
            }
        };
        assert!(readable, "kill {round}: {id} was not answered within {BEFORE_ANY_TIMEOUT:?} of the kill; a transaction of the killed instance is still open");
        eprintln!("kill {round}: {id} answered {:.2} s after the kill", killed.elapsed().as_secs_f64());
        answered = committed_sum(&s.app, &s.commands, s.partitions).unwrap_or(0);
    }
    stop.store(true, Ordering::SeqCst);
    loader.join().unwrap();
    let by_id = replies_by_id(&read_all(&s.replies));
    for round in 1..=ROUNDS {
        assert_eq!(by_id.get(&format!("probe-{round}")).map(Vec::len), Some(1), "probe-{round} answered once");
    }
    assert!(inst.terminate().success());
}
