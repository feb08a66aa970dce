//! The Grafana dashboard (deploy/grafana/millrace.json) queries only metrics millrace
//! exposes (issue 10, item 6): two real instances with a standby copy on the real broker,
//! some commands and a bad record, and every metric name of every panel's query found on
//! their /metrics pages. The metrics catalog, the documented table in docs/operations.md
//! and the live pages agree too.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// `millrace_*` names in a PromQL expression, histogram series folded to their metric.
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("millrace_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        out.insert(base.to_string());
        rest = &tail[end..];
    }
    out
}

/// Metric names on a /metrics page, histogram series folded to their metric.
fn exposed(page: &str) -> BTreeSet<String> {
    page.lines().filter(|l| !l.starts_with('#')).flat_map(names_in).collect()
}

#[test]
fn every_dashboard_query_names_metrics_millrace_exposes() {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/millrace.json")).unwrap()).unwrap();
    let panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row").collect();
    assert!(panels.len() >= 20, "a panel per documented metric family");
    let mut queried = BTreeSet::new();
    for p in &panels {
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {} has no queries", p["title"]));
        for t in targets {
            let names = names_in(t["expr"].as_str().unwrap());
            assert!(!names.is_empty(), "panel {}: a query without a millrace metric", p["title"]);
            queried.extend(names);
        }
    }

    // Documented = catalogued.
    let documented: BTreeSet<String> = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("| `millrace_"))
        .map(|l| format!("millrace_{}", l.split('`').next().unwrap()))
        .collect();
    let catalogued: BTreeSet<String> = millrace::runtime::metrics_catalog::METRICS.iter().map(|(n, _, _)| n.to_string()).collect();
    assert_eq!(documented, catalogued, "docs/operations.md and the metrics catalog list the same metrics");
    assert!(queried.is_subset(&catalogued), "the dashboard queries undocumented metrics: {:?}", queried.difference(&catalogued).collect::<Vec<_>>());

    // Live: two instances, one standby copy each way, commands and a bad record.
    let s = Setup::new("grafana", 2, "json");
    let text = std::fs::read_to_string(&s.topology).unwrap();
    std::fs::write(&s.topology, text.replace("  commit_interval_ms: 100\n", "  commit_interval_ms: 100\n  standby_replicas: 1\n")).unwrap();
    let a = s.start_instance("a");
    let b = s.start_instance("b");
    let p = producer();
    for n in 0..20 {
        let k = format!("k{n}");
        send(&p, &s.commands, &k, &command_json(&format!("c{n}"), &k, None, "CreateCustomer", json!({"name": k, "email": "e@example.org"})), &[]);
    }
    send(&p, &s.commands, "junk", b"not a command", &[]);
    flush(&p);
    wait_for(&s.replies, 20, Duration::from_secs(60));
    // Input lag comes with librdkafka's statistics (every 5 s), standby lag every 2 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let live: BTreeSet<String> = exposed(&a.metrics()).union(&exposed(&b.metrics())).cloned().collect();
        let missing: Vec<String> = queried.difference(&live).cloned().collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(missing.is_empty(), "the dashboard queries metrics the instances do not expose: {missing:?}");
}
