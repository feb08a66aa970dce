//! SIGTERM while the broker is away, under load: the instance exits within its shutdown
//! limit (`--shutdown-timeout`), and the next start answers every command exactly once.
//! Before the limit, such an instance was still running minutes later, each of its Kafka
//! calls waiting out its timeout in turn. The only test in its binary, because it takes
//! the shared broker away for a while; cargo runs test binaries one after another.

mod common;

use common::*;
use std::sync::atomic::Ordering;
use std::time::Duration;

const COMMANDS: usize = 12_000;
const KEYS: usize = 1_000;
const LIMIT_S: u64 = 5;

#[test]
fn sigterm_with_the_broker_away_exits_within_the_limit_and_loses_nothing() {
    if !may_stop_the_broker() {
        return;
    }
    let s = Setup::new("shutdownoutage", 4, "json");
    let state = s.dir.path().join("state-a");
    let limit = ["--shutdown-timeout".into(), LIMIT_S.to_string()].map(std::ffi::OsString::from);
    let limit: Vec<&std::ffi::OsStr> = limit.iter().map(|a| a.as_os_str()).collect();
    let mut a = Instance::spawn_with(&s, "a", &state, &limit);
    a.wait_ready();
    let (loader, sent) = spawn_loader(&s.commands, COMMANDS, |i| create_then_update(i, KEYS), (4, Duration::from_millis(1)), Duration::from_secs(180));
    // Processing is under way: transactions open and commit every 100 ms.
    assert!(wait_for(&s.replies, COMMANDS / 10, Duration::from_secs(60)).len() >= COMMANDS / 10, "processing got going");
    let _guard = BrokerBack;
    kafka_local("down --crash");
    std::thread::sleep(Duration::from_millis(500));
    // The limit, and time for a loaded machine to schedule the watchdog.
    let (status, took) = a.terminate_within(Duration::from_secs(LIMIT_S + 10));
    let log = a.log_text();
    eprintln!("exited with {status} {took:?} after SIGTERM");
    // Either the shutdown finished (it found nothing it could not end at once), or the
    // limit ended it, as a crash would, and said so.
    match status.code() {
        Some(0) => assert!(log.contains("clean shutdown"), "exit 0 without a clean shutdown; log:\n{log}"),
        Some(1) => assert!(log.contains("shutdown did not finish within --shutdown-timeout"), "exit 1 without the limit's reason; log:\n{log}"),
        other => panic!("exit {other:?} after SIGTERM; log:\n{log}"),
    }
    kafka_local("up");
    loader.join().unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), COMMANDS);
    // The same instance again, on its state directory: what the last one left open is
    // aborted, and every command is answered once.
    let a = Instance::start(&s, "a", &state);
    let replies = replies_by_id(&wait_for(&s.replies, COMMANDS, Duration::from_secs(180)));
    assert_eq!(replies.len(), COMMANDS, "every command answered after the restart; log:\n{}", a.log_text());
    check_exactly_once(&s, COMMANDS, KEYS, &[&a]);
    assert!(a.terminate().success(), "with the broker up, a shutdown is clean");
}
