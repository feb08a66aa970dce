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
    millrace::runtime::topics::ensure(&clients(), &[
        millrace::runtime::topics::TopicNeed::plain(orphan.clone(), 2),
        millrace::runtime::topics::TopicNeed::plain(s.events.clone(), 1),
    ]).unwrap();

    let (code, out) = plan(&s.topology, false);
    assert_eq!(code, 3, "a mismatch exits 3:\n{out}");
    for line in [
        format!("create    {}  partitions=2 replication=1 cleanup.policy=delete", s.commands),
        format!("create    {}  partitions=2 replication=1 cleanup.policy=compact  (Changelog)", s.changelog),
        format!("create    {}  partitions=1 replication=1 cleanup.policy=delete  (DeadLetters)", s.dead_letters),
        format!("create    {}-members  partitions=1 replication=1 cleanup.policy=compact  (Members)", s.app),
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
    assert!(out.contains("applied: created 6 topic(s); nothing deleted"), "{out}");
    let (code, out) = plan(&s.topology, false);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("create "), "everything exists now:\n{out}");
    assert!(out.contains(&format!("ok        {}  partitions=2", s.changelog)), "{out}");
    assert!(out.contains(&format!("orphan    {orphan}")), "apply never deletes:\n{out}");
    let counts = millrace::runtime::topics::partition_counts(&clients(), &[&orphan, &s.events]).unwrap();
    assert_eq!(counts.len(), 2, "the orphan and the old events topic are still there");
}

/// Every shipped topology starts against the real broker, becomes ready, and stops cleanly.
#[test]
fn every_shipped_topology_runs() {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/topology"));
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let state = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let http = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_millrace"))
            .args(["run", "--topology"]).arg(&path)
            .args(["--bootstrap-servers", &bootstrap(), "--http", &http, "--instance-id", &unique("smoke")])
            // The read side of topologies that have one.
            .args(["--postgres-url", &postgres_url()])
            .arg("--state-dir").arg(state.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !matches!(http_get(&http, "/ready"), Ok((200, _))) {
            assert!(child.try_wait().unwrap().is_none(), "{} exited before ready", path.display());
            assert!(std::time::Instant::now() < deadline, "{} not ready in 60 s", path.display());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert!(child.wait().unwrap().success(), "{} did not stop cleanly", path.display());
    }
}

#[test]
fn a_table_over_a_real_topic_answers_queries() {
    let app = unique("table");
    let topic = format!("{app}-customers");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.yaml");
    std::fs::write(&file, format!(
        "version: 1\napplication_id: {app}\ntopics:\n  {topic}: {{ partitions: 3, compacted: true }}\ntables:\n  customers:\n    topic: {topic}\n    store: customers\n"
    )).unwrap();
    let s = Setup { topology: file, ..Setup::new("table-unused", 1, "json") };
    let inst = Instance::start(&s, "t0", &dir.path().join("state"));
    let p = producer();
    send(&p, &topic, "ada", br#"{"name":"Ada"}"#, &[]);
    send(&p, &topic, "bob", br#"{"name":"Bob"}"#, &[]);
    send(&p, &topic, "ada", br#"{"name":"Ada L"}"#, &[]);
    flush(&p);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = inst.get("/stores/customers/keys/ada");
        if status == 200 && body["value"]["name"] == "Ada L" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "table never caught up: {status} {body}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (_, page) = inst.get("/stores/customers?limit=10");
    let keys: Vec<&str> = page["entries"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, vec!["ada", "bob"]);
}

#[test]
fn a_table_without_changelog_rebuilds_from_its_input_after_losing_its_state() {
    let app = unique("srctable");
    let topic = format!("{app}-people");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.yaml");
    std::fs::write(&file, format!(
        "version: 1\napplication_id: {app}\ntopics:\n  {topic}: {{ partitions: 2, compacted: true }}\ntables:\n  people:\n    topic: {topic}\n    store: people\nstores:\n  people: {{ changelog: false }}\n"
    )).unwrap();
    let s = Setup { topology: file, ..Setup::new("srctable-unused", 1, "json") };
    let state = dir.path().join("state");
    let first = Instance::start(&s, "p0", &state);
    let p = producer();
    for i in 0..50 {
        send(&p, &topic, &format!("k{}", i % 10), format!(r#"{{"i":{i}}}"#).as_bytes(), &[]);
    }
    flush(&p);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while first.get("/stores/people/keys/k9").1["value"]["i"] != 49 {
        assert!(std::time::Instant::now() < deadline, "table never caught up");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(first.terminate().success());
    let changelogs = millrace::runtime::topics::partition_counts(&clients(), &[&format!("{app}-people-changelog")]).unwrap();
    assert!(changelogs.is_empty(), "no changelog topic was created");

    std::fs::remove_dir_all(&state).unwrap();
    let second = Instance::start(&s, "p0", &state);
    assert_eq!(second.metric_sum("millrace_restore_records_total"), 50.0, "rebuilt from the input topic");
    for k in 0..10 {
        assert_eq!(second.get(&format!("/stores/people/keys/k{k}")).1["value"]["i"], 40 + k);
    }
}
