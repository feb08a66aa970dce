//! Restore reads only what the store lacks: from the changelog offset checkpointed in
//! RocksDB to the end. Shown exactly by rolling a state directory back to an older copy,
//! and, for a deleted state directory, by a full rebuild that answers as before.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// The restore gauge of the one-partition setups' store.
const REMAINING_0: &str = "millrace_restore_remaining{store=\"customers\",partition=\"0\"}";

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
        // The last command of r0..r9 deletes them: their index entry moves from ACTIVE to
        // DELETED, so a restore that kept an earlier value's entry shows in the index.
        let ty = match i {
            ..100 => "CreateCustomer",
            400..410 => "DeleteCustomer",
            _ => "UpdateCustomer",
        };
        let body = json!({"name": format!("n{i}"), "email": format!("{i}@x")});
        send(&p, &s.commands, &key, &command_json(&format!("rc-{i}"), &key, None, ty, body), &[]);
    }
    flush(&p);
}

fn snapshots(inst: &Instance) -> Vec<serde_json::Value> {
    (0..100).map(|k| inst.get(&format!("/stores/customers/keys/r{k}")).1).collect()
}

/// The keys the status index lists under `status`.
fn indexed(inst: &Instance, status: &str) -> Vec<String> {
    let (code, page) = inst.get(&format!("/stores/customers/index/status/{status}?limit=1000"));
    assert_eq!(code, 200, "{page}");
    let mut keys: Vec<String> = page["entries"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap().to_string()).collect();
    keys.sort();
    keys
}

/// The status index lists each key once, under its current status.
fn check_index(inst: &Instance, when: &str) {
    let mut deleted: Vec<String> = (0..10).map(|k| format!("r{k}")).collect();
    let mut active: Vec<String> = (10..100).map(|k| format!("r{k}")).collect();
    deleted.sort();
    active.sort();
    assert_eq!(indexed(inst, "DELETED"), deleted, "{when}");
    assert_eq!(indexed(inst, "ACTIVE"), active, "{when}");
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
    // After a clean stop nothing is restored (only markers and aborted records follow the
    // checkpoint), and the history, complete and not marked behind, is not read again.
    assert!(!second.log_text().contains("brought the event history"), "a clean restart read the event history again:\n{}", second.log_text());
    send_batch(&s, 300, 500);
    assert_eq!(wait_for(&s.replies, 500, Duration::from_secs(60)).len(), 500);
    let expected = snapshots(&second);
    assert_eq!(expected[7]["version"], 5, "r7 saw commands 7, 107, 207, 307, 407");
    check_histories(&s, &second, "live");
    check_index(&second, "live");
    assert!(second.terminate().success());

    // Roll the store back to the first checkpoint: restore must read exactly the 200
    // changelog records written after it, not the 500 of the whole changelog.
    std::fs::remove_dir_all(s.state_dir()).unwrap();
    copy_dir(&backup, &s.state_dir());
    let third = s.start();
    assert!(third.log_text().contains("brought the event history"), "the rolled-back store's history is caught up:\n{}", third.log_text());
    assert_eq!(read_all(&s.changelog).len(), 500);
    assert_eq!(third.metric_sum("millrace_restore_records_total"), 200.0);
    assert_eq!(snapshots(&third), expected);
    check_histories(&s, &third, "rolled back, then caught up from the events topic");
    check_index(&third, "rolled back");
    assert!(third.terminate().success());

    // A deleted state directory: the store is rebuilt from the changelog and answers the same.
    std::fs::remove_dir_all(s.state_dir()).unwrap();
    let fourth = s.start();
    assert_eq!(fourth.metric_sum("millrace_restore_records_total"), 500.0);
    assert_eq!(snapshots(&fourth), expected);
    check_histories(&s, &fourth, "state directory deleted, history rebuilt from the events topic");
    // Each key's five changelog records in one bulk load: only the last one is indexed.
    check_index(&fourth, "state directory deleted");
}

/// A store that holds a transaction the broker aborted after it acknowledged the commit
/// (Kafka 4.3.1 did so to a commit answered as it shut down, in `tests/broker_restart.rs`):
/// opened again, the store finds the changelog record at its checkpoint aborted, is
/// rebuilt from the committed changelog, and answers what was committed, not what it held.
#[test]
fn a_store_holding_an_aborted_transaction_is_rebuilt_from_the_committed_changelog() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let s = Setup::new("storeahead", 2, "json");
    let first = s.start();
    send_batch(&s, 0, 300);
    assert_eq!(wait_for(&s.replies, 300, Duration::from_secs(60)).len(), 300);
    let before = snapshots(&first);
    assert!(first.terminate().success());

    // What the broker did: a transaction on r0's changelog partition, answered and then
    // aborted, whose record carries another key's state (r1's, stored under r0).
    let partition = millrace::codec::murmur2::partition_for_key(b"r0", 2);
    let changelog = read_all(&s.changelog);
    let wrong = changelog.iter().rev().find(|r| r.key.as_deref() == Some("r1")).expect("r1 has a snapshot").value.clone();
    let probe: BaseConsumer = client_config().create().unwrap();
    let (_, aborted_at) = probe.fetch_watermarks(&s.changelog, partition, Duration::from_secs(10)).unwrap();
    let p: ThreadedProducer<DefaultProducerContext> = client_config().set("transactional.id", unique("ahead")).create().unwrap();
    p.init_transactions(Duration::from_secs(30)).unwrap();
    p.begin_transaction().unwrap();
    p.send(BaseRecord::<str, [u8]>::to(&s.changelog).partition(partition).key("r0").payload(&wrong)).map_err(|(e, _)| e).unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
    p.abort_transaction(Duration::from_secs(30)).unwrap();
    // ... and what millrace had done on the answer: the store took the record and its offset.
    {
        let resources = millrace::store::StoreResources::new(&millrace::store::StoreTuning::default());
        let store = millrace::store::RocksStore::open(&s.state_dir().join(&s.app), "customers", partition, &resources, None).unwrap();
        assert!(store.checkpoint().unwrap().is_some_and(|c| c < aborted_at), "the clean stop left a checkpoint before the aborted record");
        store.write([(&b"r0"[..], Some(wrong.as_slice()))], Some(aborted_at)).unwrap();
    }

    let second = s.start();
    assert_eq!(second.metric_sum("millrace_store_rebuilds_total"), 1.0, "the store ahead of its changelog was rebuilt");
    assert!(second.metric_sum("millrace_restore_records_total") > 0.0, "rebuilt from the changelog");
    assert_eq!(snapshots(&second), before, "every key as committed, r0 included");
    assert!(second.terminate().success());
}

/// SIGTERM in the middle of a full restore (a new instance, a lost disk, a scale-out):
/// the restore stops where it is, keeps what it applied, and the instance exits cleanly at
/// once, not when the restore would have ended or its shutdown limit would have cut it
/// off (exit 1). The next start goes on from the checkpoint it reached, and the first
/// command sees the whole state.
#[test]
fn sigterm_during_a_full_restore_exits_cleanly_and_the_next_start_goes_on() {
    use std::time::Instant;
    const FILLER: usize = 60_000;
    let s = Setup::new("restoreinterrupt", 1, "json");
    let c = x_at_version_2_behind_filler(&s, FILLER);
    // A new instance on an empty state directory restores the whole changelog, slowly.
    let state = s.dir.path().join("state-b");
    let mut b = spawn_slow_restore(&s, "b", &state);
    // Under way, with a batch applied (the gauge is set as each batch is written).
    let remaining = |i: &Instance| i.series(REMAINING_0);
    let started = Instant::now();
    while !remaining(&b).is_some_and(|r| r > 0.0) {
        assert!(started.elapsed() < Duration::from_secs(60), "the restore never began; log:\n{}", b.log_text());
        assert!(b.child.try_wait().unwrap().is_none(), "exited during the restore; log:\n{}", b.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = remaining(&b).unwrap();
    // Before the restore could end (it reads 9,000 records a second at this fetch size
    // here: some 6 s are left), and well under the shutdown limit (25 s), which would end
    // it with exit 1.
    let (status, took) = b.terminate_within(Duration::from_secs(4));
    let log = b.log_text();
    eprintln!("SIGTERM with {left} records of the restore left: exited with {status} after {took:?}");
    assert!(status.success(), "a clean exit; log:\n{log}");
    assert!(log.contains("interrupted: the instance is shutting down"), "the log says the restore was interrupted:\n{log}");

    // Started again on the same directory, at full speed: the restore goes on from the
    // checkpoint the interrupted one reached, not from the beginning.
    let b = Instance::start(&s, "b", &state);
    let log = b.log_text();
    let resumed = log.lines().find(|l| l.contains("restored changelog tail")).unwrap_or_else(|| panic!("no restore logged:\n{log}"));
    assert!(resumed.contains("from=Some("), "resumed from a checkpoint: {resumed}");
    x_is_at_version_2(&s, &c);
    assert!(b.terminate().success());
}
