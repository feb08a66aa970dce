//! A restart aborts at once whatever transaction the SIGKILLed process left open, on either
//! of the two producers a processing thread takes turns with (`runtime/alternating_sink.rs`),
//! with a real process and a real broker. A binary of its own: it kills and restarts an
//! instance under load, which slows whatever runs beside it (tests/crash.rs paces its kills
//! by progress).

mod common;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEYS: usize = 1_000;

fn command(i: usize) -> (String, Vec<u8>) {
    let key = format!("k{}", i % KEYS);
    let ty = if i < KEYS { "CreateCustomer" } else { "UpdateCustomer" };
    let bytes = command_json(&format!("cmd-{i}"), &key, None, ty, json!({"name": format!("n{i}"), "email": "a@b"}));
    (key, bytes)
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
    let stop = Arc::new(AtomicBool::new(false));
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
        let deadline = Instant::now() + Duration::from_secs(120);
        while committed_sum(&s.app, &s.commands, s.partitions).unwrap_or(0) < answered + 300 {
            assert!(Instant::now() < deadline, "no progress before kill {round}");
            std::thread::sleep(Duration::from_millis(20));
        }
        inst.kill9();
        let killed = Instant::now();
        inst = s.start();
        let id = format!("probe-{round}");
        send(&probes, &s.commands, &format!("probe-key-{round}"), &command_json(&id, &format!("probe-key-{round}"), None, "CreateCustomer", json!({"name": "p", "email": "p@b"})), &[]);
        flush(&probes);
        let readable = loop {
            let m = match replies.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => m,
                // The client's own reports (a connection down a moment, on the TLS
                // listener too): it reconnects by itself; only the deadline decides.
                Some(Err(e)) => {
                    eprintln!("reading replies: {e}");
                    continue;
                }
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
