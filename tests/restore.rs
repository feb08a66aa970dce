//! Restore reads only what the store lacks: from the changelog offset checkpointed in
//! RocksDB to the end. Shown exactly by rolling a state directory back to an older copy,
//! and, for a deleted state directory, by a full rebuild that answers as before.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn send_batch(s: &Setup, from: usize, to: usize) {
    let p = producer();
    for i in from..to {
        let key = format!("r{}", i % 100);
        let ty = if i < 100 { "CreateCustomer" } else { "UpdateCustomer" };
        let body = json!({"name": format!("n{i}"), "email": format!("{i}@x")});
        send(&p, &s.commands, &key, &command_json(&format!("rc-{i}"), &key, None, ty, body), &[]);
    }
    flush(&p);
}

fn snapshots(inst: &Instance) -> Vec<serde_json::Value> {
    (0..100).map(|k| inst.get(&format!("/stores/customers/keys/r{k}")).1).collect()
}

/// Every aggregate's event history equals its committed events.
fn check_histories(s: &Setup, inst: &Instance, when: &str) {
    let committed = events_by_key(&read_all(&s.events));
    for k in 0..100 {
        let key = format!("r{k}");
        assert_eq!(history(inst, &key), committed[&key], "{when}: event history of {key}");
    }
}

#[test]
fn restore_reads_only_the_tail_after_the_checkpoint() {
    let s = Setup::new("restore", 2, "json");
    let first = s.start();
    send_batch(&s, 0, 300);
    assert_eq!(wait_for(&s.replies, 300, Duration::from_secs(60)).len(), 300);
    assert!(first.terminate().success());
    let backup = s.dir.path().join("state-backup");
    copy_dir(&s.state_dir(), &backup);

    let second = s.start();
    send_batch(&s, 300, 500);
    assert_eq!(wait_for(&s.replies, 500, Duration::from_secs(60)).len(), 500);
    let expected = snapshots(&second);
    assert_eq!(expected[7]["version"], 5, "r7 saw commands 7, 107, 207, 307, 407");
    check_histories(&s, &second, "live");
    assert!(second.terminate().success());

    // Roll the store back to the first checkpoint: restore must read exactly the 200
    // changelog records written after it, not the 500 of the whole changelog.
    std::fs::remove_dir_all(s.state_dir()).unwrap();
    copy_dir(&backup, &s.state_dir());
    let third = s.start();
    assert_eq!(read_all(&s.changelog).len(), 500);
    assert_eq!(third.metric_sum("millrace_restore_records_total"), 200.0);
    assert_eq!(snapshots(&third), expected);
    check_histories(&s, &third, "rolled back, then caught up from the events topic");
    assert!(third.terminate().success());

    // A deleted state directory: the store is rebuilt from the changelog and answers the same.
    std::fs::remove_dir_all(s.state_dir()).unwrap();
    let fourth = s.start();
    assert_eq!(fourth.metric_sum("millrace_restore_records_total"), 500.0);
    assert_eq!(snapshots(&fourth), expected);
    check_histories(&s, &fourth, "state directory deleted, history rebuilt from the events topic");
}
