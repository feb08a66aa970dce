//! Any instance answers any key (issue 5): three instances of one application, each asked
//! for every key, answer what the owner holds; listings and index queries gather every
//! partition with stable pagination; while a partition has no live owner, the answer is 503
//! with Retry-After, never a wrong one.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const KEYS: usize = 300;

fn create(k: &str) -> Value {
    json!({"name": k, "email": format!("{k}@example.org")})
}

/// Every key of a listing (or index query), page by page, on one instance.
fn all_pages(i: &Instance, path: &str, limit: usize) -> Vec<String> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &after {
            None => format!("{path}{sep}limit={limit}"),
            Some(a) => format!("{path}{sep}limit={limit}&after={a}"),
        };
        let (status, body) = i.get(&url);
        assert_eq!(status, 200, "{url}: {body}");
        assert_eq!(body["total_partitions"], 6);
        assert_eq!(body["partitions"].as_array().map(Vec::len), Some(6), "a page covers every partition: {body}");
        keys.extend(body["entries"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap().to_string()));
        match body["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return keys,
        }
    }
}

/// Waits until `ok` holds, or fails with `what`.
fn settle(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_instances_answer_every_key_and_gather_every_page() {
    let s = Setup::new("routing", 6, "json");
    let instances: Vec<Instance> = ["a", "b", "c"].iter().map(|id| s.start_instance(id)).collect();
    let p = producer();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("k{i:04}")).collect();
    for k in &keys {
        send(&p, &s.commands, k, &command_json(&format!("r-{k}"), k, None, "CreateCustomer", create(k)), &[]);
    }
    flush(&p);
    assert_eq!(wait_for(&s.replies, KEYS, Duration::from_secs(90)).len(), KEYS);
    let local = |i: &Instance| i.get("/stores/customers?scope=local&limit=1").1["partitions"].as_array().map_or(0, Vec::len);
    settle("the three instances never shared the six partitions", Duration::from_secs(90), || {
        instances.iter().all(|i| local(i) == 2 && i.get("/ready").0 == 200)
    });

    // Per-partition gauges follow their partitions: each instance lists store sizes for
    // exactly the partitions it holds now (the first one held all six before the others
    // joined), and input lag for none it gave away.
    let owned = |i: &Instance| -> BTreeSet<i64> {
        let (_, body) = i.get("/stores/customers?scope=local&limit=1");
        body["partitions"].as_array().unwrap().iter().filter_map(Value::as_i64).collect()
    };
    let gauged = |page: &str, prefix: &str| -> BTreeSet<i64> {
        page.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|rest| rest.split('"').next()?.parse().ok())
            .collect()
    };
    let command_topic = format!("millrace_consumer_lag{{topic=\"{}\",partition=\"", s.commands);
    settle("store-size gauges name exactly the partitions each instance holds", Duration::from_secs(30), || {
        instances.iter().all(|i| {
            let page = i.metrics();
            let mine = owned(i);
            gauged(&page, "millrace_store_keys{store=\"customers\",partition=\"") == mine
                && gauged(&page, &command_topic).is_subset(&mine)
        })
    });

    // Every key on every instance: the same answer, the owner's.
    let mut answers: BTreeMap<&String, Value> = BTreeMap::new();
    for k in &keys {
        let path = format!("/stores/customers/keys/{k}");
        let mut seen = Vec::new();
        for i in &instances {
            let mut r = i.get(&path);
            let deadline = Instant::now() + Duration::from_secs(20);
            while r.0 == 503 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                r = i.get(&path);
            }
            assert_eq!(r.0, 200, "{k} on {}: {:?}", i.http, r.1);
            seen.push(r.1);
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{k}: instances disagree: {seen:?}");
        assert_eq!(seen[0]["state"]["name"], k.as_str());
        answers.insert(k, seen.remove(0));
    }

    // Listing and index queries gather all six partitions, in key order, without gaps or
    // repeats, whichever instance is asked and whatever the page size.
    let want: Vec<String> = keys.clone();
    for (i, limit) in instances.iter().zip([7, 50, 1000]) {
        assert_eq!(all_pages(i, "/stores/customers", limit), want, "listing on {} with limit {limit}", i.http);
        assert_eq!(all_pages(i, "/stores/customers/index/status/ACTIVE", limit), want, "index on {} with limit {limit}", i.http);
    }
    assert!(all_pages(&instances[1], "/stores/customers/index/status/DELETED", 10).is_empty());

    // Read your writes: the reply's version, asked of any instance, waits for the commit.
    for (n, k) in keys.iter().take(20).enumerate() {
        let cmd = command_json(&format!("ryw-{k}"), k, None, "UpdateCustomer", json!({"name": format!("{k} v2"), "email": "x@example.org"}));
        send(&p, &s.commands, k, &cmd, &[]);
        flush(&p);
        let i = &instances[n % 3];
        let (status, body) = i.get(&format!("/stores/customers/keys/{k}?min_version=2"));
        assert_eq!((status, body["version"].as_u64()), (200, Some(2)), "{k} on {}: {body}", i.http);
        assert_eq!(body["state"]["name"], format!("{k} v2"));
        answers.insert(k, body);
    }
    let (status, headers, body) = http_get_with(&instances[2].http, &format!("/stores/customers/keys/{}?min_version=9&wait_ms=300", keys[0]), &[]).unwrap();
    assert_eq!((status, headers.get("retry-after").map(String::as_str)), (503, Some("1")), "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "behind");
    assert_eq!(instances[0].get(&format!("/stores/customers/keys/{}?min_version=x", keys[0])).0, 400);

    // Kill one instance. Until the group gives its partitions away, its keys are 503 with
    // Retry-After on the survivors; never a wrong answer, never a 404.
    let mut instances = instances;
    let victim = instances.remove(0);
    victim.kill9();
    let mut moving = BTreeSet::new();
    let started = Instant::now();
    loop {
        let mut all_ok = true;
        for k in &keys {
            for i in &instances {
                let (status, headers, body) = http_get_with(&i.http, &format!("/stores/customers/keys/{k}"), &[]).unwrap();
                match status {
                    200 => assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), answers[k], "{k} on {}", i.http),
                    503 => {
                        assert_eq!(headers.get("retry-after").map(String::as_str), Some("1"), "{k}: {body}");
                        moving.insert(k.clone());
                        all_ok = false;
                    }
                    other => panic!("{k} on {}: {other} {body}", i.http),
                }
            }
        }
        if all_ok {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the survivors never took over");
    }
    assert!(!moving.is_empty(), "the killed instance's keys were 503 while they moved");
    eprintln!("{} keys answered 503 while moving; all answered by survivors after {:?}", moving.len(), started.elapsed());
    assert_eq!(all_pages(&instances[0], "/stores/customers", 100), want, "after the takeover");
}
