//! Standby replicas (issues 5 and 11): with `standby_replicas: 1`, each store partition has
//! a warm copy on the instance that would take it over, kept by tailing the changelog,
//! whether the instances start one after another or all at the same moment. After a
//! SIGKILL, the survivors restore only the tail: at most 1% of the moved partitions'
//! changelogs, shown by the restore metric. The standby lag is a metric too.

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const COMMANDS: usize = 6_000;
const KEYS: usize = 1_500;

fn lag_series(i: &Instance) -> Vec<(String, f64)> {
    i.metrics()
        .lines()
        .filter(|l| l.starts_with("millrace_standby_lag{"))
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            Some((name.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_failover_to_the_standby_restores_only_the_tail() {
    failover("standby", false);
}

/// The instances start at the same moment: each computes its copies from a membership
/// that is still settling, and must recompute them once it has settled.
#[test]
fn instances_started_together_keep_their_copies_too() {
    failover("standbytogether", true);
}

fn failover(name: &str, together: bool) {
    let s = Setup::new(name, 6, "json");
    let text = std::fs::read_to_string(&s.topology).unwrap().replace("processing:\n", "processing:\n  standby_replicas: 1\n");
    std::fs::write(&s.topology, text).unwrap();
    let ids = ["a", "b", "c"];
    let mut instances: Vec<Instance> = if together {
        let mut v: Vec<Instance> = ids.iter().map(|id| Instance::spawn(&s, id, &s.dir.path().join(format!("state-{id}")))).collect();
        v.iter_mut().for_each(Instance::wait_ready);
        v
    } else {
        ids.iter().map(|id| s.start_instance(id)).collect()
    };
    let p = producer();
    for i in 0..COMMANDS {
        let key = format!("k{}", i % KEYS);
        let ty = if i < KEYS { "CreateCustomer" } else { "UpdateCustomer" };
        let body = json!({"name": format!("n{i}"), "email": format!("{i}@x")});
        send(&p, &s.commands, &key, &command_json(&format!("sb-{i}"), &key, None, ty, body), &[]);
    }
    flush(&p);
    assert_eq!(wait_for(&s.replies, COMMANDS, Duration::from_secs(120)).len(), COMMANDS);

    // Every instance keeps copies (two partitions each: the ones it would take over), and
    // they catch up: standby lag 0 everywhere.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let series: Vec<Vec<(String, f64)>> = instances.iter().map(lag_series).collect();
        // Caught up: nothing behind, commit markers and the aborted record of a new
        // producer's release (`TransactionalSink::release_offsets`) included, though they
        // are never applied (measured from the checkpoint alone, a CI run saw lag 2 on one
        // partition for 90 s).
        let caught_up = series.iter().all(|s| !s.is_empty() && s.iter().all(|(_, lag)| *lag == 0.0));
        if caught_up {
            eprintln!("standby lag per instance: {series:?}");
            break;
        }
        assert!(Instant::now() < deadline, "standbys never caught up: {series:?}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Every instance knows, for every partition, the owner and its standby, with addresses.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, table) = instances[2].get("/cluster");
        let parts = table["stores"]["customers"].as_array().cloned().unwrap_or_default();
        let complete = parts.len() == 6
            && parts.iter().all(|p| {
                let owner = p["owner"]["instance"].as_str();
                let standbys = p["standbys"].as_array().cloned().unwrap_or_default();
                owner.is_some() && standbys.len() == 1 && standbys[0]["instance"].as_str() != owner && standbys[0]["http"].is_string()
            });
        if complete {
            break;
        }
        assert!(Instant::now() < deadline, "routing table incomplete: {table}");
        std::thread::sleep(Duration::from_millis(300));
    }

    let victim = instances.remove(1);
    let moved: BTreeSet<i64> = victim.get("/stores/customers?scope=local&limit=1").1["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_i64())
        .collect();
    assert!(!moved.is_empty(), "the victim owned partitions");
    let changelog = read_all(&s.changelog);
    let moved_records = changelog.iter().filter(|r| moved.contains(&(r.partition as i64))).count();
    let restored_before: f64 = instances.iter().map(|i| i.metric_sum("millrace_restore_records_total")).sum();
    victim.kill9();

    // The survivors take over (static membership: after the session timeout) and answer
    // every key with the value committed before the kill.
    let deadline = Instant::now() + Duration::from_secs(90);
    for k in 0..KEYS {
        let path = format!("/stores/customers/keys/k{k}");
        loop {
            let (status, body) = instances[k % 2].get(&path);
            if status == 200 {
                assert_eq!(body["version"], 4, "k{k}: {body}");
                break;
            }
            assert!(status == 503 && Instant::now() < deadline, "k{k}: {status} {body}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let restored: f64 = instances.iter().map(|i| i.metric_sum("millrace_restore_records_total")).sum::<f64>() - restored_before;
    eprintln!("failover of partitions {moved:?}: restored {restored} of {moved_records} changelog records");
    assert!(restored <= moved_records as f64 * 0.01, "restored {restored} of {moved_records}: the standby copies were not used");
    for i in instances {
        assert!(i.terminate().success());
    }
}
