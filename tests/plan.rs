//! `millrace plan` against the real broker: what it would create, what mismatches, which
//! internal topics a rename orphaned; `--apply` creates what is missing and deletes nothing.

mod common;

use common::*;
use std::process::Command;

fn plan(file: &std::path::Path, apply: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_millrace"));
    cmd.arg("plan").arg(file).args(["--bootstrap-servers", &bootstrap()]);
    if apply {
        cmd.arg("--apply");
    }
    let out = cmd.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn plan_lists_creates_mismatches_and_orphans_and_apply_only_creates() {
    let s = Setup::new("plan", 2, "json");
    let orphan = format!("{}-oldname-changelog", s.app);
    millrace::runtime::topics::ensure(&bootstrap(), &[
        millrace::runtime::topics::TopicNeed::plain(orphan.clone(), 2),
        millrace::runtime::topics::TopicNeed::plain(s.events.clone(), 1),
    ]).unwrap();

    let (code, out) = plan(&s.topology, false);
    assert_eq!(code, 3, "a mismatch exits 3:\n{out}");
    for line in [
        format!("create    {}  partitions=2 replication=1 cleanup.policy=delete", s.commands),
        format!("create    {}  partitions=2 replication=1 cleanup.policy=compact  (Changelog)", s.changelog),
        format!("create    {}  partitions=1 replication=1 cleanup.policy=delete  (DeadLetters)", s.dead_letters),
        format!("mismatch  {}  partitions: topology wants 2, cluster has 1", s.events),
        format!("orphan    {orphan}"),
    ] {
        assert!(out.contains(&line), "missing {line:?} in:\n{out}");
    }

    // Point the topology at a fresh events topic, then apply.
    let text = std::fs::read_to_string(&s.topology).unwrap().replace(&s.events, &format!("{}-v2", s.events));
    std::fs::write(&s.topology, text).unwrap();
    let (code, out) = plan(&s.topology, true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("applied: created 5 topic(s); nothing deleted"), "{out}");
    let (code, out) = plan(&s.topology, false);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("create "), "everything exists now:\n{out}");
    assert!(out.contains(&format!("ok        {}  partitions=2", s.changelog)), "{out}");
    assert!(out.contains(&format!("orphan    {orphan}")), "apply never deletes:\n{out}");
    let counts = millrace::runtime::topics::partition_counts(&bootstrap(), &[&orphan, &s.events]).unwrap();
    assert_eq!(counts.len(), 2, "the orphan and the old events topic are still there");
}
