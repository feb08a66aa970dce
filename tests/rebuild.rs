//! `millrace rebuild` after a logic fix, against the real broker. The application first runs
//! with a customer aggregate whose `evolve` has a bug (an update forgets the new email), as a
//! user's release would; then the fix ships: the store is refolded from the events topic
//! with the fixed `evolve`, and the restarted application serves the fixed snapshots over
//! HTTP. The dry run's diff names exactly the snapshots the real run rewrites, and a live
//! instance makes the command refuse.
//!
//! The two releases run in this process (`App` with two registries); the refusal and the
//! dry run go through the `millrace` binary.

mod common;

use common::*;
use millrace::domain::customer::{Customer, CustomerAggregate, CustomerCommand, CustomerEvent};
use millrace::processor::{Aggregate, Rejection};
use millrace::runtime::refold::StoreRebuild;
use millrace::Registry;
use serde_json::json;
use std::time::Duration;

/// The release with the bug: `CustomerUpdated` keeps the old email.
struct BuggyCustomer;

impl Aggregate for BuggyCustomer {
    type Command = CustomerCommand;
    type Event = CustomerEvent;
    type State = Customer;

    fn decide(state: &Customer, command: &CustomerCommand) -> Result<Vec<CustomerEvent>, Rejection> {
        CustomerAggregate::decide(state, command)
    }

    fn evolve(state: Customer, event: &CustomerEvent) -> Customer {
        match event {
            CustomerEvent::CustomerUpdated { name, .. } => Customer { name: name.clone(), ..state },
            other => CustomerAggregate::evolve(state, other),
        }
    }

    fn event_type(event: &CustomerEvent) -> &'static str {
        CustomerAggregate::event_type(event)
    }
}

fn registry<A: Aggregate>() -> Registry {
    let mut r = Registry::new();
    r.register::<A>("customer");
    r
}

fn rebuild_cli(s: &Setup, extra: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["rebuild", "--store", "customers", "--topology"])
        .arg(&s.topology)
        .args(["--bootstrap-servers", &bootstrap()])
        .args(extra)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn a_rebuild_after_a_fix_to_evolve_rewrites_exactly_the_wrong_snapshots() {
    let s = Setup::new("rebuild", 2, "json");
    let buggy = InProcessApp::start(&s, &registry::<BuggyCustomer>(), None);
    let p = producer();
    // c0..c19 created; the even ones updated with a new email (the bug loses it).
    for i in 0..20 {
        send(&p, &s.commands, &format!("c{i}"), &command_json(&format!("create-{i}"), &format!("c{i}"), None, "CreateCustomer", json!({"name": format!("n{i}"), "email": format!("old{i}@x")})), &[]);
    }
    for i in (0..20).step_by(2) {
        send(&p, &s.commands, &format!("c{i}"), &command_json(&format!("update-{i}"), &format!("c{i}"), None, "UpdateCustomer", json!({"name": format!("m{i}"), "email": format!("new{i}@x")})), &[]);
    }
    flush(&p);
    assert_eq!(wait_for(&s.replies, 30, Duration::from_secs(60)).len(), 30);
    assert_eq!(buggy.snapshot("c4")["state"]["email"], "old4@x", "the bug: the update's email is lost");

    // While it runs, the rebuild refuses.
    let (code, _, err) = rebuild_cli(&s, &["--dry-run"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("instances of") && err.contains("are live (r0)"), "{err}");
    buggy.stop();

    // The fix ships. The dry run (the binary's customer is the fixed one) shows the diff.
    let (code, out, err) = rebuild_cli(&s, &["--dry-run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.starts_with("10 of 20 snapshots would change"), "{out}");
    assert!(out.contains("- email: \"old") && out.contains("+ email: \"new"), "a diff: {out}");
    assert!(out.contains("version 2 -> 2"), "{out}");

    let fixed = registry::<CustomerAggregate>();
    let changelog_before = read_all(&s.changelog).len();
    let rebuild = StoreRebuild::of(&millrace::topology::load(&s.topology).unwrap(), "customers", &fixed, clients()).unwrap();
    let plan = rebuild.plan(&mut |_, _| {}).unwrap();
    let keys: Vec<&str> = plan.changed.iter().map(|c| c.key.as_str()).collect();
    let expected: Vec<String> = (0..20).step_by(2).map(|i| format!("c{i}")).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(sorted, expected_sorted, "exactly the updated customers change");
    assert_eq!(rebuild.apply(&plan, &mut |_, _| {}).unwrap(), 10);
    let changelog = read_all(&s.changelog);
    assert_eq!(changelog.len(), changelog_before + 10, "only the changed snapshots are written");

    // The restarted application (the fixed release) serves the refolded snapshots, and
    // goes on from them.
    let running = InProcessApp::start(&s, &fixed, None);
    for i in 0..20 {
        let snap = running.snapshot(&format!("c{i}"));
        let email = if i % 2 == 0 { format!("new{i}@x") } else { format!("old{i}@x") };
        assert_eq!(snap["state"]["email"], email.as_str(), "c{i}: {snap}");
        assert_eq!(snap["version"], if i % 2 == 0 { 2 } else { 1 });
    }
    // The dedup window came back from the command ids: a retried update is a duplicate.
    send(&p, &s.commands, "c4", &command_json("update-4", "c4", None, "UpdateCustomer", json!({"name": "zz", "email": "zz@x"})), &[]);
    flush(&p);
    let replies = wait_for(&s.replies, 31, Duration::from_secs(60));
    let last = replies_by_id(&replies)["update-4"].clone();
    assert_eq!(last.len(), 2, "{last:?}");
    assert_eq!(last[1]["outcome"], "duplicate", "{last:?}");
    assert_eq!(running.snapshot("c4")["version"], 2);
    running.stop();
}
