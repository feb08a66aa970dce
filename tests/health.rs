//! A processing thread that cannot go on ends the instance, visibly (issue 9): a store
//! partition that cannot be opened (its directory replaced by a file) is retried as
//! transient for `processing.task_timeout_ms`; then the thread gives up, `/health` answers
//! 503 with the reason, and the process exits with code 1 for an orchestrator to restart.
//! The real process on the real broker.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn a_thread_that_gives_up_turns_health_503_and_exits_1() {
    let s = Setup::new("health", 2, "json");
    let text = std::fs::read_to_string(&s.topology).unwrap();
    std::fs::write(&s.topology, text.replace("  commit_interval_ms: 100\n", "  commit_interval_ms: 100\n  task_timeout_ms: 2000\n")).unwrap();
    let i = s.start();
    assert_eq!(i.get("/health").0, 200);
    let p = producer();
    for k in ["a", "b", "c", "d"] {
        send(&p, &s.commands, k, &command_json(&format!("c-{k}"), k, None, "CreateCustomer", json!({"name": k, "email": "x@example.org"})), &[]);
    }
    flush(&p);
    assert_eq!(wait_for(&s.replies, 4, Duration::from_secs(60)).len(), 4);
    assert!(i.terminate().success());

    // Partition 1's store directory becomes a file: RocksDB cannot open it, whatever the
    // process's rights (CI runs as root).
    let store = s.state_dir().join(&s.app).join("customers").join("1");
    assert!(store.is_dir(), "the store of partition 1 lives at {}", store.display());
    std::fs::remove_dir_all(&store).unwrap();
    std::fs::write(&store, b"not a store").unwrap();

    let mut i = Instance::spawn(&s, "i0", &s.state_dir());
    let started = Instant::now();
    let (mut failing, mut ready_seen) = (None, false);
    let status = loop {
        if let Some(status) = i.child.try_wait().unwrap() {
            break status;
        }
        if failing.is_none() {
            if let Ok((503, body)) = http_get(&i.http, "/health") {
                failing = Some(body);
            }
        }
        ready_seen |= matches!(http_get(&i.http, "/ready"), Ok((200, _)));
        assert!(started.elapsed() < Duration::from_secs(120), "still running after 120 s; log:\n{}", i.log_text());
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = i.log_text();
    assert_eq!(status.code(), Some(1), "exit code; log:\n{log}");
    let body: serde_json::Value = serde_json::from_str(&failing.unwrap_or_else(|| panic!("/health never answered 503; log:\n{log}"))).unwrap();
    assert_eq!(body["status"], "failed", "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("processing thread 0 failed") && reason.contains("did not pass within 2 s"), "{reason}");
    assert!(log.contains("processing thread failed; the instance stops"), "{log}");
    assert!(!ready_seen, "never ready with a store it could not open");
}
