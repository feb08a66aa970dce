//! The broker is killed and restarted in the middle of the load: the processors recover
//! by themselves, and nothing is lost or doubled (issue 5). The only test in its binary,
//! because it takes the shared broker away for a while; cargo runs test binaries one
//! after another.

mod common;

use common::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const COMMANDS: usize = 20_000;
const KEYS: usize = 2_000;

#[test]
fn processors_recover_from_a_broker_restart_by_themselves() {
    if !may_stop_the_broker() {
        return;
    }
    let s = Setup::new("brokerrestart", 4, "json");
    let mut instances = [s.start_instance("a"), s.start_instance("b")];
    // Records queued while the broker is away go out once it is back; the idempotent
    // producer re-establishes its session first, so the flush allows more than usual.
    let (loader, sent) = spawn_loader(&s.commands, COMMANDS, |i| create_then_update(i, KEYS), (2, Duration::from_millis(1)), Duration::from_secs(180));
    while sent.load(Ordering::SeqCst) < COMMANDS / 3 {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Killed, as a crash would (a controlled shutdown leaves the same kind of undecided
    // transaction behind with Kafka 4.3: docs/operations.md, the failure table).
    let _guard = BrokerBack;
    let down_at = Instant::now();
    kafka_local("down --crash");
    std::thread::sleep(Duration::from_secs(3));
    kafka_local("up");
    eprintln!("broker was away for {:?}", down_at.elapsed());
    loader.join().unwrap();
    for i in instances.iter_mut() {
        assert!(i.child.try_wait().unwrap().is_none(), "an instance exited instead of recovering:\n{}", i.log_text());
    }
    // Stuck short of the end, or not exactly once: what each instance said is the diagnosis.
    let replies = replies_by_id(&wait_for(&s.replies, COMMANDS, Duration::from_secs(300)));
    if replies.len() < COMMANDS {
        print_logs(&instances);
        panic!("{} of {COMMANDS} commands answered after the broker came back; {}", replies.len(), unanswered(&s, &replies));
    }
    let refs: Vec<&Instance> = instances.iter().collect();
    if let Err(failed) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_exactly_once(&s, COMMANDS, KEYS, &refs))) {
        print_logs(&instances);
        std::panic::resume_unwind(failed);
    }
    for i in instances {
        assert!(i.terminate().success(), "the instance kept running through the restart and stops cleanly");
    }
}

/// Where the unanswered commands are: never written to the command topic (the loader's
/// deliveries failed, not millrace), or written and not answered, by partition, with the
/// offsets they hold and the group's committed offset there (at or past them: the group
/// moved on without answering; before them: it never got that far).
fn unanswered(s: &Setup, replies: &std::collections::BTreeMap<String, Vec<serde_json::Value>>) -> String {
    let commands = read_all(&s.commands);
    let written: std::collections::BTreeSet<String> = commands.iter().map(|r| r.json()["command_id"].as_str().unwrap_or("").to_string()).collect();
    let lost = (0..COMMANDS).filter(|i| !written.contains(&format!("cmd-{i}"))).count();
    let committed = committed_offsets(&s.app, &s.commands, s.partitions).unwrap_or_default();
    let mut by_partition: std::collections::BTreeMap<i32, (usize, i64, i64)> = std::collections::BTreeMap::new();
    for r in &commands {
        let id = r.json()["command_id"].as_str().unwrap_or("").to_string();
        if !replies.contains_key(&id) {
            let e = by_partition.entry(r.partition).or_insert((0, i64::MAX, i64::MIN));
            *e = (e.0 + 1, e.1.min(r.offset), e.2.max(r.offset));
        }
    }
    let places: Vec<String> = by_partition
        .iter()
        .map(|(p, (n, lo, hi))| format!("partition {p}: {n} at offsets {lo}..={hi}, group committed {:?}", committed.get(*p as usize)))
        .collect();
    format!("{lost} never reached the command topic ({} records there); unanswered among those written: [{}]", commands.len(), places.join("; "))
}

/// Each instance's log, without the connection errors an outage repeats every few
/// milliseconds: what is left (assignments, revocations, resyncs, failed transactions)
/// tells what happened.
fn print_logs(instances: &[Instance]) {
    const NOISE: [&str; 5] = ["reader error", "delivery failed", "Global error", "Connect to ipv4", "consumer error"];
    // The whole logs, for a closer look, where the run asks for them.
    if let Some(dir) = std::env::var_os("MILLRACE_TEST_KEEP_LOGS") {
        for i in instances {
            let name = i.log.file_name().expect("a log file");
            let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::copy(&i.log, std::path::Path::new(&dir).join(name)));
        }
    }
    for i in instances {
        let log = i.log_text();
        let kept: Vec<&str> = log.lines().filter(|l| !NOISE.iter().any(|n| l.contains(n))).collect();
        eprintln!("--- an instance's log, {} of {} lines (connection errors left out) ---", kept.len().min(400), log.lines().count());
        for line in &kept[kept.len().saturating_sub(400)..] {
            eprintln!("{line}");
        }
    }
}
