//! The broker-free TopologyDriver, and the faults where other libraries' users lose data:
//! a crash between produce and commit, a crash between commit and the store write, a
//! fenced producer, and a rebalance. No broker needed.

use millrace::runtime::RuntimeError;
use millrace::testing::{CrashPoint, TopologyDriver};
use millrace::topology;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

fn driver() -> TopologyDriver {
    let t = topology::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/topology/customers.yaml"))).unwrap();
    TopologyDriver::new(t, &millrace::builtin_registry()).unwrap()
}

fn cmd(id: &str, agg: &str, ty: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"command_id": id, "aggregate_id": agg, "expected_version": null, "type": ty,
        "payload": {"name": name, "email": format!("{name}@x")}})).unwrap()
}

/// Replies in offset order per partition; sorted by command id where several partitions
/// are involved (replies are keyed by command id).
fn replies(d: &TopologyDriver) -> Vec<(String, String, u64)> {
    let mut all: Vec<(String, String, u64)> = d.read_output("customer-replies").iter().map(|r| {
        let v = r.json();
        (v["command_id"].as_str().unwrap().into(), v["outcome"].as_str().unwrap().into(), v["version"].as_u64().unwrap())
    }).collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

fn event_versions(d: &TopologyDriver, key: &str) -> Vec<u64> {
    d.read_output("customer-events").iter().filter(|r| r.key_str() == Some(key)).map(|r| r.json()["version"].as_u64().unwrap()).collect()
}

#[test]
fn outputs_are_invisible_until_commit() {
    let mut d = driver();
    d.pipe("customer-commands", "ada", &cmd("c1", "ada", "CreateCustomer", "Ada")).unwrap();
    assert!(d.read_output("customer-replies").is_empty());
    assert_eq!(d.store("customers", "ada"), None, "the store shows committed state only");
    d.advance_time(100).unwrap();
    assert_eq!(replies(&d), vec![("c1".into(), "accepted".into(), 1)]);
    assert_eq!(d.store("customers", "ada").unwrap()["version"], 1);
}

#[test]
fn crash_between_produce_and_commit_rolls_back_and_reprocesses() {
    let mut d = driver();
    d.pipe("customer-commands", "ada", &cmd("c1", "ada", "CreateCustomer", "Ada")).unwrap();
    d.commit().unwrap();
    d.pipe("customer-commands", "ada", &cmd("c2", "ada", "UpdateCustomer", "Ada2")).unwrap();
    d.pipe("customer-commands", "ada", &cmd("c3", "ada", "UpdateCustomer", "Ada3")).unwrap();
    d.crash().unwrap();
    // Rolled back to the last commit: nothing of c2/c3 is visible, the store is at v1.
    assert_eq!(replies(&d).len(), 1);
    assert_eq!(d.store("customers", "ada").unwrap()["version"], 1);
    // The uncommitted input was processed again after restore; once committed, each
    // command has exactly one reply and the versions have no gap and no duplicate.
    d.commit().unwrap();
    assert_eq!(replies(&d), vec![
        ("c1".into(), "accepted".into(), 1), ("c2".into(), "accepted".into(), 2), ("c3".into(), "accepted".into(), 3),
    ]);
    assert_eq!(event_versions(&d, "ada"), vec![1, 2, 3]);
    assert_eq!(d.store("customers", "ada").unwrap()["state"]["name"], "Ada3");
}

/// An invalid command is answered `invalid` and dead-lettered in the same transaction as
/// everything else: invisible until the commit, rolled back by a crash, then answered
/// exactly once; the aggregate is not touched and the partition goes on.
#[test]
fn invalid_commands_are_answered_once_with_their_dead_letter_in_the_same_transaction() {
    let mut d = driver();
    d.pipe("customer-commands", "ada", br#"{"command_id":"i1","aggregate_id":"ada","type":"Explode","payload":{}}"#).unwrap();
    d.pipe("customer-commands", "ada", &cmd("i2", "ada", "CreateCustomer", "")).unwrap();
    d.pipe("customer-commands", "ada", b"no envelope at all").unwrap();
    assert!(d.read_output("customers-dead-letters").is_empty() && d.read_output("customer-replies").is_empty());
    d.crash().unwrap();
    assert!(d.read_output("customers-dead-letters").is_empty(), "the crash rolled the dead letters back");
    d.pipe("customer-commands", "ada", &cmd("i3", "ada", "CreateCustomer", "Ada")).unwrap();
    d.commit().unwrap();
    assert_eq!(replies(&d), vec![
        ("i1".into(), "invalid".into(), 0), ("i2".into(), "invalid".into(), 0), ("i3".into(), "accepted".into(), 1),
    ]);
    let dead: Vec<String> = d.read_output("customers-dead-letters").iter()
        .map(|r| r.headers.get_str("millrace.dlq.reason").unwrap().to_string()).collect();
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(dead[0].contains("unknown variant `Explode`") && dead[1].contains("name is empty") && dead[2].contains("invalid JSON"), "{dead:?}");
    assert_eq!(event_versions(&d, "ada"), vec![1]);
}

/// A snapshot that cannot be read (garbage in the changelog, restored after a crash)
/// quarantines its key: each command for it is answered `failed` and dead-lettered, and
/// the partition and every other key go on.
#[test]
fn an_unreadable_snapshot_quarantines_its_key_and_nothing_else() {
    let mut d = driver();
    d.pipe("customer-commands", "ada", &cmd("q1", "ada", "CreateCustomer", "Ada")).unwrap();
    d.commit().unwrap();
    d.pipe("customers-customers-changelog", "ada", b"\xff\xfe not a snapshot").unwrap();
    d.crash().unwrap();
    d.pipe("customer-commands", "ada", &cmd("q2", "ada", "UpdateCustomer", "Ada2")).unwrap();
    d.pipe("customer-commands", "bob", &cmd("q3", "bob", "CreateCustomer", "Bob")).unwrap();
    d.pipe("customer-commands", "ada", &cmd("q4", "ada", "UpdateCustomer", "Ada3")).unwrap();
    d.pipe("customer-commands", "ada", &cmd("q5", "ada", "", "Ada4")).unwrap();
    d.commit().unwrap();
    assert_eq!(replies(&d), vec![
        ("q1".into(), "accepted".into(), 1), ("q2".into(), "failed".into(), 0), ("q3".into(), "accepted".into(), 1),
        ("q4".into(), "failed".into(), 0), ("q5".into(), "invalid".into(), 0),
    ]);
    let reasons: Vec<String> = d.read_output("customers-dead-letters").iter()
        .map(|r| r.headers.get_str("millrace.dlq.reason").unwrap().to_string()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[..2].iter().all(|r| r.contains("stored snapshot for key ada in customers cannot be read")), "{reasons:?}");
    assert_eq!(event_versions(&d, "ada"), vec![1], "nothing was applied to the quarantined key");
    assert_eq!(d.store("customers", "bob").unwrap()["version"], 1);

    // The operator's way out: a readable snapshot is never deleted; the quarantined one is
    // refolded from the aggregate's event history, and its commands run again.
    let admin = |d: &mut TopologyDriver, id: &str, key: &str, op: &str| {
        let mut h = millrace::record::Headers::default();
        h.insert("millrace.admin", op);
        let env = serde_json::to_vec(&json!({"command_id": id, "aggregate_id": key})).unwrap();
        d.pipe_with_headers("customer-commands", key, &env, h).unwrap();
    };
    admin(&mut d, "a1", "bob", "delete-snapshot");
    admin(&mut d, "a2", "ada", "repair-snapshot");
    d.pipe("customer-commands", "ada", &cmd("q6", "ada", "UpdateCustomer", "Ada6")).unwrap();
    d.commit().unwrap();
    let all = replies(&d);
    let by_id = |id: &str| all.iter().find(|r| r.0 == id).cloned().unwrap();
    assert_eq!(by_id("a1"), ("a1".into(), "rejected".into(), 1), "a readable snapshot is not deleted");
    assert_eq!(by_id("a2"), ("a2".into(), "accepted".into(), 1), "refolded from one event");
    assert_eq!(by_id("q6"), ("q6".into(), "accepted".into(), 2));
    assert_eq!(event_versions(&d, "ada"), vec![1, 2]);
    assert_eq!(d.store("customers", "ada").unwrap()["state"]["name"], "Ada6");

    // Garbage again, then deleted: the key starts over (its old events stay in the topic).
    d.pipe("customers-customers-changelog", "cy", b"\xff garbage").unwrap();
    d.crash().unwrap();
    admin(&mut d, "a3", "cy", "delete-snapshot");
    d.commit().unwrap();
    assert_eq!(replies(&d).into_iter().find(|r| r.0 == "a3").unwrap(), ("a3".into(), "accepted".into(), 0));
    assert_eq!(d.store("customers", "cy"), None);
}

#[test]
fn crash_after_commit_restores_exactly_the_changelog_tail() {
    let mut d = driver();
    d.pipe("customer-commands", "ada", &cmd("c1", "ada", "CreateCustomer", "Ada")).unwrap();
    d.pipe("customer-commands", "bob", &cmd("c2", "bob", "CreateCustomer", "Bob")).unwrap();
    d.commit().unwrap();
    d.pipe("customer-commands", "ada", &cmd("c3", "ada", "UpdateCustomer", "Ada2")).unwrap();
    d.pipe("customer-commands", "cy", &cmd("c4", "cy", "CreateCustomer", "Cy")).unwrap();
    let before = d.restored_records();
    d.crash_after_commit().unwrap();
    assert_eq!(d.restored_records() - before, 2, "only the two snapshots the stores had not applied");
    assert_eq!(d.store("customers", "ada").unwrap()["version"], 2);
    assert_eq!(d.store("customers", "cy").unwrap()["version"], 1);
    d.commit().unwrap();
    assert_eq!(replies(&d).len(), 4, "nothing processed twice: the committed input was not replayed");
}

/// A restore that cannot finish (issue 9): it applies what it read, fails as transient,
/// and leaves the instance unready; nothing is decided on the partial store. The retry
/// reads on from the checkpoint, and the next command sees the whole state.
#[test]
fn a_stalled_restore_stays_unready_and_the_retry_goes_on_from_its_checkpoint() {
    let mut d = driver();
    let keys: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        d.pipe("customer-commands", k, &cmd(&format!("c{i}"), k, "CreateCustomer", k)).unwrap();
    }
    d.commit().unwrap();
    for (i, k) in keys.iter().enumerate() {
        d.pipe("customer-commands", k, &cmd(&format!("u{i}"), k, "UpdateCustomer", &format!("{k}2"))).unwrap();
    }
    // The process dies after the commit, before its stores applied it; the restart's
    // restore stalls half-way through the tail.
    d.log().stall_restores(1);
    let before = d.restored_records();
    let e = d.crash_after_commit().unwrap_err();
    assert!(matches!(e, RuntimeError::RestoreStalled { .. }), "{e}");
    assert_eq!(e.recovery(), millrace::error::Recovery::Retry);
    assert!(!d.is_ready(), "unready while a store is partial");

    d.retry().unwrap();
    assert!(d.is_ready());
    let restored = d.restored_records() - before;
    // Eight snapshots were the tail; what the stalled restore applied is not read again.
    assert!(restored > 0 && restored < keys.len() as u64, "the retry went on from the checkpoint: {restored} of {}", keys.len());
    for (i, k) in keys.iter().enumerate() {
        d.pipe("customer-commands", k, &cmd(&format!("v{i}"), k, "UpdateCustomer", &format!("{k}3"))).unwrap();
    }
    d.commit().unwrap();
    let r = replies(&d);
    for (i, k) in keys.iter().enumerate() {
        let third = r.iter().find(|x| x.0 == format!("v{i}")).unwrap_or_else(|| panic!("no reply to v{i}: {r:?}"));
        assert_eq!((third.1.as_str(), third.2), ("accepted", 3), "{k} was decided on its whole state");
        assert_eq!(d.store("customers", k).unwrap()["state"]["name"], format!("{k}3"));
    }
    assert_eq!(r.len(), 3 * keys.len(), "each command answered once");
}

/// A commit whose Kafka call hangs (librdkafka after a broker restart): that producer is
/// asked nothing more (it could not even abort). A new one takes over at once, its
/// `init_transactions` fences the old one, and the batch runs again, answered once.
#[test]
fn a_hung_commit_is_redone_once_by_a_new_producer() {
    let mut d = driver();
    for k in ["ada", "bob"] {
        d.pipe("customer-commands", k, &cmd(&format!("c-{k}"), k, "CreateCustomer", k)).unwrap();
    }
    let producers = d.log().producers(&d.transactional_id());
    d.log().hang_commits(1);
    d.commit().unwrap();
    assert_eq!(d.log().producers(&d.transactional_id()), producers + 1, "a new producer took over");
    assert!(d.is_ready());
    let mut r = replies(&d);
    r.sort();
    assert_eq!(r, vec![("c-ada".into(), "accepted".into(), 1), ("c-bob".into(), "accepted".into(), 1)], "each command answered once");
    assert_eq!(event_versions(&d, "ada"), vec![1]);
}

/// A commit held up in the producer for longer than the group's session timeout: the
/// group may give the partitions to another instance meanwhile, and the thread cannot
/// hear it. While it is held up the instance is unready (the query server answers 503
/// instead of values another instance may have moved on from); once the commit returns
/// it is ready again, with the batch committed once.
#[test]
fn a_commit_held_up_past_the_session_timeout_stops_the_stores_being_served() {
    let mut d = driver();
    let catalog = d.catalog();
    catalog.set_stall_limit(Duration::from_millis(100));
    d.pipe("customer-commands", "ada", &cmd("c1", "ada", "CreateCustomer", "Ada")).unwrap();
    d.log().slow_commits(1, Duration::from_millis(600));
    let watcher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        (catalog.is_ready(), catalog.stalled())
    });
    d.commit().unwrap();
    let (ready, stalled) = watcher.join().unwrap();
    assert!(!ready, "held up 300 ms into a commit, past the 100 ms limit");
    assert_eq!(stalled.map(|s| s.thread), Some(0));
    assert!(d.is_ready(), "the commit returned");
    assert_eq!(replies(&d), vec![("c1".into(), "accepted".into(), 1)]);
}

/// A transaction that fails in the producer (the broker away, sequence numbers out of
/// step) is not aborted by that producer and retried on it: a new one takes over, and
/// nothing of the failed transaction shows.
#[test]
fn a_producer_failure_hands_the_batch_to_a_new_producer() {
    let mut d = driver();
    d.pipe("customer-commands", "ada", &cmd("c1", "ada", "CreateCustomer", "Ada")).unwrap();
    d.commit().unwrap();
    d.pipe("customer-commands", "ada", &cmd("c2", "ada", "UpdateCustomer", "Ada L")).unwrap();
    let producers = d.log().producers(&d.transactional_id());
    d.log().fail_commits(1);
    d.commit().unwrap();
    assert_eq!(d.log().producers(&d.transactional_id()), producers + 1, "a new producer took over");
    let mut r = replies(&d);
    r.sort();
    assert_eq!(r, vec![("c1".into(), "accepted".into(), 1), ("c2".into(), "accepted".into(), 2)], "each command answered once");
    assert_eq!(event_versions(&d, "ada"), vec![1, 2]);
}

/// The group's offsets fall back behind a transaction that committed (Kafka left its
/// offset commit pending after a broker restart, and millrace dropped it): the commands
/// are read again, and those the snapshots already hold get no second reply and no
/// second event. A client's retry of the same command, a new record, still gets
/// `duplicate`.
#[test]
fn commands_read_again_after_offsets_fell_back_are_not_answered_twice() {
    let mut d = driver();
    d.pipe("customer-commands", "ada", &cmd("c1", "ada", "CreateCustomer", "Ada")).unwrap();
    d.pipe("customer-commands", "ada", &cmd("c2", "ada", "UpdateCustomer", "Ada L")).unwrap();
    d.commit().unwrap();
    let partition = d.read_output("customer-commands")[0].partition;
    d.log().rewind_committed(&millrace::record::TopicPartition::new("customer-commands", partition), 0);
    d.rebalance().unwrap();
    d.commit().unwrap();
    let mut r = replies(&d);
    r.sort();
    assert_eq!(r, vec![("c1".into(), "accepted".into(), 1), ("c2".into(), "accepted".into(), 2)], "each command answered once");
    assert_eq!(event_versions(&d, "ada"), vec![1, 2]);
    d.pipe("customer-commands", "ada", &cmd("c2", "ada", "UpdateCustomer", "Ada L")).unwrap();
    d.commit().unwrap();
    let dup: Vec<_> = replies(&d).into_iter().filter(|x| x.0 == "c2").map(|x| x.1).collect();
    assert_eq!(dup, vec!["accepted".to_string(), "duplicate".to_string()], "a client's retry is still answered");
}

#[test]
fn fenced_producer_drops_its_writes_and_the_new_owner_finishes_the_work() {
    let mut d = driver();
    d.pipe("customer-commands", "ada", &cmd("c1", "ada", "CreateCustomer", "Ada")).unwrap();
    d.fence().unwrap();
    d.commit().unwrap();
    assert_eq!(replies(&d), vec![("c1".into(), "accepted".into(), 1)]);
    assert_eq!(event_versions(&d, "ada"), vec![1]);
}

#[test]
fn rebalance_commits_closes_reopens_and_restores_nothing_twice() {
    let mut d = driver();
    d.pipe("customer-commands", "ada", &cmd("c1", "ada", "CreateCustomer", "Ada")).unwrap();
    let before = d.restored_records();
    d.rebalance().unwrap();
    assert_eq!(d.restored_records(), before, "a clean revoke leaves no tail");
    assert_eq!(replies(&d).len(), 1, "the open transaction committed on revoke");
    d.pipe("customer-commands", "ada", &cmd("c2", "ada", "DeleteCustomer", "Ada")).unwrap();
    d.commit().unwrap();
    assert_eq!(d.store("customers", "ada").unwrap()["state"]["status"], "DELETED");
    // A retry of an old command after the rebalance is still recognised.
    d.pipe("customer-commands", "ada", &cmd("c1", "ada", "CreateCustomer", "Ada")).unwrap();
    d.commit().unwrap();
    let c1: Vec<String> = replies(&d).into_iter().filter(|r| r.0 == "c1").map(|r| r.1).collect();
    assert_eq!(c1, vec!["accepted".to_string(), "duplicate".to_string()]);
}

const TABLE_WITHOUT_CHANGELOG: &str = "\
version: 1
application_id: tbl
topics:
  people: { partitions: 2, compacted: true }
tables:
  people:
    topic: people
    store: people
stores:
  people: { changelog: false }
";

#[test]
fn a_table_without_changelog_restores_from_its_input_topic() {
    let t = topology::parse(Path::new("t.yaml"), TABLE_WITHOUT_CHANGELOG).unwrap();
    assert!(t.topic_needs().iter().all(|n| !n.name.ends_with("-changelog")), "no changelog topic is needed");
    let mut d = TopologyDriver::new(t, &millrace::builtin_registry()).unwrap();
    d.pipe("people", "ada", br#"{"n":1}"#).unwrap();
    d.pipe("people", "bob", br#"{"n":2}"#).unwrap();
    d.commit().unwrap();
    d.pipe("people", "ada", br#"{"n":3}"#).unwrap();
    d.pipe("people", "cy", b"not json").unwrap();
    d.pipe_tombstone("people", "bob").unwrap();
    let before = d.restored_records();
    d.crash_after_commit().unwrap();
    // The input topic served as the changelog: the three records after the checkpoint were
    // read again; the invalid one was skipped, as the processor dead-letters it.
    assert_eq!(d.restored_records() - before, 3);
    assert_eq!(d.store("people", "ada").unwrap()["value"], json!({"n": 3}));
    assert_eq!(d.store("people", "bob"), None);
    assert_eq!(d.store("people", "cy"), None);
    assert!(d.read_output("tbl-people-changelog").is_empty(), "no changelog records were written");
}

#[test]
fn secondary_index_follows_commits_and_restores() {
    let mut d = driver();
    d.pipe("customer-commands", "ada", &cmd("i1", "ada", "CreateCustomer", "Ada")).unwrap();
    d.pipe("customer-commands", "bob", &cmd("i2", "bob", "CreateCustomer", "Bob")).unwrap();
    d.pipe("customer-commands", "bob", &cmd("i3", "bob", "DeleteCustomer", "Bob")).unwrap();
    assert!(d.index("customers", "status", "DELETED").is_empty(), "indexes see committed state only");
    d.commit().unwrap();
    assert_eq!(d.index("customers", "status", "DELETED"), vec!["bob"]);
    assert_eq!(d.index("customers", "status", "ACTIVE"), vec!["ada"]);
    d.pipe("customer-commands", "bob", &cmd("i4", "bob", "CreateCustomer", "Bob")).unwrap();
    d.pipe("customer-commands", "ada", &cmd("i5", "ada", "DeleteCustomer", "Ada")).unwrap();
    d.crash_after_commit().unwrap();
    // Restored from the changelog tail, in the same write batches as the values.
    assert_eq!(d.index("customers", "status", "DELETED"), vec!["ada"]);
    assert_eq!(d.index("customers", "status", "ACTIVE"), vec!["bob"]);
}

/// The exactly-once checks, from the committed outputs alone: one reply per command sent,
/// every aggregate's event versions run 1..n with no gap and no repeat, and its stored
/// version is n.
fn check_exactly_once(d: &TopologyDriver, sent: &[String], keys: &[&str]) {
    let mut replied: Vec<String> = d.read_output("customer-replies").iter().map(|r| r.json()["command_id"].as_str().unwrap().to_string()).collect();
    replied.sort();
    let mut want = sent.to_vec();
    want.sort();
    assert_eq!(replied, want, "exactly one reply per command");
    for key in keys {
        let versions: Vec<u64> = event_versions(d, key);
        assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>(), "{key}: versions without gap or repeat");
        let stored = d.store("customers", key).map_or(0, |s| s["version"].as_u64().unwrap());
        assert_eq!(stored, versions.len() as u64, "{key}: the store agrees with the events");
    }
}

/// A crash at every step of the commit cycle, enumerated, each in the middle of a stream
/// of commands over several keys and partitions: nothing is lost or doubled.
#[test]
fn a_crash_at_every_step_of_the_commit_cycle_loses_and_doubles_nothing() {
    let keys = ["ada", "bob", "cy", "dee", "eve"];
    for point in CrashPoint::ALL {
        for crash_after in [0, 3, 7] {
            let mut d = driver();
            let mut sent = Vec::new();
            for i in 0..12 {
                if i == crash_after {
                    d.crash_at(point);
                }
                let key = keys[i % keys.len()];
                let ty = if i < keys.len() { "CreateCustomer" } else { "UpdateCustomer" };
                let id = format!("s{i}");
                d.pipe("customer-commands", key, &cmd(&id, key, ty, &format!("n{i}"))).unwrap();
                sent.push(id);
                if i % 4 == 3 {
                    d.commit().unwrap();
                }
            }
            d.flush().unwrap();
            check_exactly_once(&d, &sent, &keys);
            if point == CrashPoint::AfterCommit {
                assert!(d.restored_records() > 0, "a crash between the commit and the store write restores the changelog tail");
            }
        }
    }
}

/// Fencing really fences: the old producer's open transaction never lands, its writes are
/// not retried, and the work is done once, by the engine's new producer.
#[test]
fn a_fenced_transaction_never_lands_and_the_work_is_done_once() {
    let mut d = driver();
    d.pipe("customer-commands", "ada", &cmd("f1", "ada", "CreateCustomer", "Ada")).unwrap();
    d.commit().unwrap();
    d.pipe("customer-commands", "ada", &cmd("f2", "ada", "UpdateCustomer", "Ada2")).unwrap();
    d.pipe("customer-commands", "bob", &cmd("f3", "bob", "CreateCustomer", "Bob")).unwrap();
    d.fence().unwrap();
    d.commit().unwrap();
    assert_eq!(d.log().fenced_commits(), 1, "the fenced producer's commit was refused, not retried");
    check_exactly_once(&d, &["f1".into(), "f2".into(), "f3".into()], &["ada", "bob"]);
    assert_eq!(d.store("customers", "ada").unwrap()["state"]["name"], "Ada2");
}

/// A state its changelog refuses (larger than the topic accepts): the batch is rolled back
/// and run again without that command, which is answered `failed` and dead-lettered; the
/// other commands of the batch commit.
#[test]
fn an_output_the_changelog_refuses_fails_its_command_and_reruns_the_batch_without_it() {
    let mut d = driver();
    d.log().set_max_record_bytes("customers-customers-changelog", 2_000);
    d.pipe("customer-commands", "ada", &cmd("r1", "ada", "CreateCustomer", "Ada")).unwrap();
    d.pipe("customer-commands", "bob", &cmd("r2", "bob", "CreateCustomer", &"B".repeat(5_000))).unwrap();
    d.pipe("customer-commands", "ada", &cmd("r3", "ada", "UpdateCustomer", "Ada2")).unwrap();
    d.commit().unwrap();
    assert_eq!(replies(&d), vec![
        ("r1".into(), "accepted".into(), 1), ("r2".into(), "failed".into(), 0), ("r3".into(), "accepted".into(), 2),
    ]);
    let dead = d.read_output("customers-dead-letters");
    assert_eq!(dead.len(), 1);
    assert!(dead[0].headers.get_str("millrace.dlq.reason").unwrap().contains("customers-customers-changelog was refused"));
    assert_eq!(event_versions(&d, "bob"), Vec::<u64>::new(), "the refused command's events never landed");
    assert_eq!(event_versions(&d, "ada"), vec![1, 2]);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Send(&'static str, &'static str),
        Commit,
        Crash,
        CrashAt(usize),
        Fence,
        Rebalance,
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (prop_oneof![Just("CreateCustomer"), Just("UpdateCustomer"), Just("DeleteCustomer")],
                  prop_oneof![Just("ada"), Just("bob"), Just("cy")]).prop_map(|(t, k)| Op::Send(t, k)),
            2 => Just(Op::Commit),
            1 => Just(Op::Crash),
            1 => (0..CrashPoint::ALL.len()).prop_map(Op::CrashAt),
            1 => Just(Op::Fence),
            1 => Just(Op::Rebalance),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Random commands with random crashes (at random steps of the cycle), fences and
        /// rebalances in between, all through the production engine: the exactly-once
        /// checks hold at the end.
        #[test]
        fn exactly_once_holds_under_random_crashes_fences_and_rebalances(ops in prop::collection::vec(arb_op(), 1..40)) {
            let mut d = driver();
            let mut sent = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                match op {
                    Op::Send(ty, key) => {
                        let id = format!("p{i}");
                        d.pipe("customer-commands", key, &cmd(&id, key, ty, "N")).unwrap();
                        sent.push(id);
                    }
                    Op::Commit => d.commit().unwrap(),
                    Op::Crash => d.crash().unwrap(),
                    Op::CrashAt(p) => d.crash_at(CrashPoint::ALL[*p]),
                    Op::Fence => d.fence().unwrap(),
                    Op::Rebalance => d.rebalance().unwrap(),
                }
            }
            d.flush().unwrap();
            check_exactly_once(&d, &sent, &["ada", "bob", "cy"]);
        }
    }

    fn arb_command() -> impl Strategy<Value = (&'static str, &'static str)> {
        (prop_oneof![Just("CreateCustomer"), Just("UpdateCustomer"), Just("DeleteCustomer")], prop_oneof![Just("ada"), Just("bob")])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Through the whole engine (processor, store, changelog, outputs), over random
        /// command sequences with crashes between them: an aggregate's stored version equals
        /// the number of its events, versions run 1..n, and no event follows a deletion
        /// except a re-creation.
        #[test]
        fn versions_count_events_and_nothing_follows_a_deletion(
            cmds in prop::collection::vec((arb_command(), any::<bool>()), 1..30)
        ) {
            let mut d = driver();
            for (i, ((ty, agg), crash)) in cmds.iter().enumerate() {
                d.pipe("customer-commands", agg, &cmd(&format!("p{i}"), agg, ty, "N")).unwrap();
                if *crash { d.crash().unwrap() } else { d.commit().unwrap() }
            }
            d.commit().unwrap();
            for agg in ["ada", "bob"] {
                let events: Vec<serde_json::Value> = d.read_output("customer-events").iter()
                    .filter(|r| r.key_str() == Some(agg)).map(|r| r.json()).collect();
                let versions: Vec<u64> = events.iter().map(|e| e["version"].as_u64().unwrap()).collect();
                prop_assert_eq!(versions, (1..=events.len() as u64).collect::<Vec<_>>());
                let stored = d.store("customers", agg).map_or(0, |s| s["version"].as_u64().unwrap());
                prop_assert_eq!(stored, events.len() as u64);
                for w in events.windows(2) {
                    if w[0]["type"] == "CustomerDeleted" {
                        prop_assert_eq!(&w[1]["type"], "CustomerCreated");
                    }
                }
            }
            // Exactly one reply per command, crashes or not.
            prop_assert_eq!(d.read_output("customer-replies").len(), cmds.len());
        }
    }
}

/// The co-partitioned and the global-table variants of the order enrichment give the same
/// enriched output on the same input.
#[test]
fn both_join_variants_enrich_alike() {
    let run = |file: &str, output: &str| {
        let t = topology::load(Path::new(&format!("{}/topology/{file}", env!("CARGO_MANIFEST_DIR")))).unwrap();
        let mut d = TopologyDriver::new(t, &millrace::builtin_registry()).unwrap();
        for c in 0..20 {
            d.pipe("shop-customers", &format!("c{c}"), format!(r#"{{"name":"N{c}"}}"#).as_bytes()).unwrap();
        }
        d.flush().unwrap();
        for o in 0..100 {
            let body = format!(r#"{{"customer_id":"c{}","n":{o}}}"#, o % 25);
            d.pipe("shop-orders", &format!("o{o}"), body.as_bytes()).unwrap();
        }
        d.flush().unwrap();
        let mut out: Vec<(String, serde_json::Value)> =
            d.read_output(output).iter().map(|r| (r.key_str().unwrap().to_string(), r.json())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    };
    let co = run("order-enrichment.yaml", "shop-enriched-orders");
    let global = run("order-enrichment-global.yaml", "shop-enriched-orders-global");
    assert_eq!(co.len(), 100);
    assert_eq!(co.iter().filter(|(_, v)| v["table"].is_null()).count(), 20, "customers c20..c24 do not exist: left join");
    assert_eq!(co, global);
}
