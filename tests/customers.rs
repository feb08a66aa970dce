//! The customer system end to end through a real Kafka broker and a real `millrace`
//! process: business rules, expected versions, duplicates, dead letters, reply routing,
//! HTTP queries, and restart after SIGTERM. Needs a broker (see tests/common).

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

fn create(name: &str) -> serde_json::Value {
    json!({"name": name, "email": format!("{name}@example.org")})
}

#[test]
fn business_rules_replies_events_and_http_snapshots() {
    let s = Setup::new("rules", 3, "json");
    let inst = s.start();
    let p = producer();
    let cmds: [(&str, &str, &str, serde_json::Value); 7] = [
        ("c1", "ada", "CreateCustomer", create("Ada")),
        ("c2", "ada", "CreateCustomer", create("Ada")),
        ("c3", "bob", "UpdateCustomer", create("Bob")),
        ("c4", "ada", "DeleteCustomer", json!({})),
        ("c5", "ada", "UpdateCustomer", create("Ada2")),
        ("c6", "ada", "CreateCustomer", create("Ada3")),
        ("c7", "bob", "DeleteCustomer", json!({})),
    ];
    for (id, agg, ty, payload) in &cmds {
        send(&p, &s.commands, agg, &command_json(id, agg, None, ty, payload.clone()), &[]);
    }
    flush(&p);
    let replies = replies_by_id(&wait_for(&s.replies, cmds.len(), Duration::from_secs(60)));
    assert_eq!(replies.len(), cmds.len(), "one reply per command: {replies:?}");
    let outcome = |id: &str| {
        assert_eq!(replies[id].len(), 1, "exactly one reply for {id}");
        replies[id][0].clone()
    };
    assert_eq!(outcome("c1"), json!({"command_id":"c1","aggregate_id":"ada","outcome":"accepted","version":1,"event_count":1}));
    assert_eq!(outcome("c2")["outcome"], "rejected");
    assert_eq!(outcome("c2")["reason"], "customer already exists");
    assert_eq!(outcome("c3")["outcome"], "rejected");
    assert_eq!(outcome("c3")["reason"], "customer does not exist");
    assert_eq!(outcome("c4")["version"], 2);
    assert_eq!(outcome("c5")["reason"], "customer is deleted");
    assert_eq!(outcome("c6")["outcome"], "accepted", "re-create after delete");
    assert_eq!(outcome("c6")["version"], 3);
    assert_eq!(outcome("c7")["outcome"], "rejected");

    let events: Vec<_> = read_all(&s.events).into_iter().filter(|r| r.key.as_deref() == Some("ada")).collect();
    let shapes: Vec<(u64, String)> = events.iter().map(|e| {
        let v = e.json();
        assert_eq!(v["aggregate_id"], "ada");
        assert_eq!(e.headers["millrace.version"], v["version"].to_string());
        (v["version"].as_u64().unwrap(), v["type"].as_str().unwrap().to_string())
    }).collect();
    assert_eq!(shapes, vec![
        (1, "CustomerCreated".to_string()), (2, "CustomerDeleted".to_string()), (3, "CustomerCreated".to_string()),
    ]);
    assert_eq!(events[2].json()["payload"], create("Ada3"));
    assert!(read_all(&s.events).iter().all(|r| r.key.as_deref() != Some("bob")), "rejections write no events");

    let (status, body) = inst.get("/stores/customers/keys/ada");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"key":"ada","version":3,"state":{"name":"Ada3","email":"Ada3@example.org","status":"ACTIVE"}}));
    let (status, body) = inst.get("/stores/customers/keys/nobody");
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");

    // The seed's "list all customers": the store, paginated.
    let (status, page) = inst.get("/stores/customers?limit=1");
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    let next = page["next"].as_str().unwrap().to_string();
    let (_, rest) = inst.get(&format!("/stores/customers?limit=10&after={next}"));
    let mut keys: Vec<String> = page["entries"].as_array().unwrap().iter()
        .chain(rest["entries"].as_array().unwrap())
        .map(|e| e["key"].as_str().unwrap().to_string()).collect();
    keys.sort();
    keys.retain(|k| k != "cyd");
    // The seed's "all customers with state DELETED", by secondary index.
    send(&p, &s.commands, "cyd", &command_json("c8", "cyd", None, "CreateCustomer", create("Cyd")), &[]);
    send(&p, &s.commands, "cyd", &command_json("c9", "cyd", None, "DeleteCustomer", json!({})), &[]);
    flush(&p);
    wait_for(&s.replies, cmds.len() + 2, Duration::from_secs(30));
    let (status, deleted) = inst.get("/stores/customers/index/status/DELETED");
    assert_eq!(status, 200, "{deleted}");
    let names: Vec<&str> = deleted["entries"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["cyd"]);
    assert_eq!(deleted["entries"][0]["state"]["status"], "DELETED");
    let (_, active) = inst.get("/stores/customers/index/status/ACTIVE");
    assert_eq!(active["entries"].as_array().unwrap().len(), 1);
    assert_eq!(active["entries"][0]["key"], "ada");

    // librdkafka reports input lag every 5 s once offsets are committed: all caught up.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let lag = |m: &str| m.lines().filter(|l| l.starts_with("millrace_consumer_lag{")).map(|l| l.rsplit(' ').next().unwrap().to_string()).collect::<Vec<_>>();
    loop {
        let l = lag(&inst.metrics());
        if !l.is_empty() && l.iter().all(|v| v == "0") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "lag gauges never settled at 0:\n{}", inst.metrics());
        std::thread::sleep(Duration::from_millis(250));
    }

    // bob only ever had rejections: an aggregate without events does not exist for queries.
    assert_eq!(keys, vec!["ada".to_string()]);
    assert_eq!(inst.get("/stores/customers/keys/bob").0, 404);
}

#[test]
fn wrong_expected_version_and_duplicate_command_ids() {
    let s = Setup::new("versions", 2, "json");
    let _inst = s.start();
    let p = producer();
    send(&p, &s.commands, "cy", &command_json("v1", "cy", Some(0), "CreateCustomer", create("Cy")), &[]);
    send(&p, &s.commands, "cy", &command_json("v2", "cy", Some(5), "UpdateCustomer", create("Cy2")), &[]);
    send(&p, &s.commands, "cy", &command_json("v3", "cy", Some(1), "UpdateCustomer", create("Cy3")), &[]);
    // A client retry: same command id, same content.
    send(&p, &s.commands, "cy", &command_json("v3", "cy", Some(1), "UpdateCustomer", create("Cy3")), &[]);
    // Ids longer than 16 bytes are kept as digests: a retry is still a duplicate, and an id
    // one character apart is a command of its own.
    let (uuid, near) = ("3f2a9c4e-1b7d-4c8e-a5f0-6d2e8b9c1a70", "3f2a9c4e-1b7d-4c8e-a5f0-6d2e8b9c1a71");
    send(&p, &s.commands, "cy", &command_json(uuid, "cy", Some(2), "UpdateCustomer", create("Cy4")), &[]);
    send(&p, &s.commands, "cy", &command_json(uuid, "cy", Some(2), "UpdateCustomer", create("Cy4")), &[]);
    send(&p, &s.commands, "cy", &command_json(near, "cy", None, "UpdateCustomer", create("Cy5")), &[]);
    flush(&p);
    let recs = wait_for(&s.replies, 7, Duration::from_secs(60));
    let replies: Vec<serde_json::Value> = recs.iter().map(Rec::json).collect();
    assert_eq!(replies.len(), 7, "{replies:?}");
    let by_id = replies_by_id(&recs);
    assert_eq!(by_id["v1"][0]["version"], 1);
    assert_eq!(by_id["v2"][0], json!({"command_id":"v2","aggregate_id":"cy","outcome":"wrong_expected_version","version":1,"expected":5,"actual":1}));
    assert_eq!(by_id["v3"].len(), 2);
    assert_eq!(by_id["v3"][0]["outcome"], "accepted");
    assert_eq!(by_id["v3"][0]["version"], 2);
    assert_eq!(by_id["v3"][1]["outcome"], "duplicate");
    assert_eq!(by_id["v3"][1]["original_outcome"], "accepted");
    assert_eq!(by_id["v3"][1]["version"], 2);
    assert_eq!(by_id[uuid].len(), 2);
    assert_eq!((by_id[uuid][0]["outcome"].as_str(), by_id[uuid][0]["version"].as_u64()), (Some("accepted"), Some(3)));
    assert_eq!(by_id[uuid][1]["outcome"], "duplicate");
    assert_eq!(by_id[uuid][1]["command_id"], uuid, "a duplicate is answered under its own id");
    assert_eq!(by_id[uuid][1]["version"], 3);
    assert_eq!((by_id[near][0]["outcome"].as_str(), by_id[near][0]["version"].as_u64()), (Some("accepted"), Some(4)));
    let events = read_all(&s.events);
    assert_eq!(events.len(), 4, "the duplicates wrote no events: {events:?}");
}

#[test]
fn invalid_commands_are_answered_and_dead_lettered_and_processing_goes_on() {
    let s = Setup::new("dlq", 2, "json");
    let _inst = s.start();
    let p = producer();
    send(&p, &s.commands, "dd", b"\x00\x01 not json", &[]);
    send(&p, &s.commands, "dd", br#"{"command_id":"x1","aggregate_id":"dd","type":"Explode","payload":{}}"#, &[]);
    send(&p, &s.commands, "dd", br#"{"command_id":"x2","aggregate_id":"dd","type":"CreateCustomer","payload":{"name":"D"}}"#, &[]);
    send(&p, &s.commands, "dd", &command_json("x3", "dd", None, "CreateCustomer", json!({"name":"", "email":"d@x"})), &[]);
    send(&p, &s.commands, "dd", &command_json("x4", "dd", None, "CreateCustomer", create("Dee")), &[]);
    // An envelope whose aggregate id disagrees with the record key: answered, never applied.
    send(&p, &s.commands, "dd", &command_json("x5", "other", None, "CreateCustomer", create("Oth")), &[]);
    flush(&p);
    // Every command with a readable envelope is answered: the sender never waits forever.
    let replies = replies_by_id(&wait_for(&s.replies, 5, Duration::from_secs(60)));
    assert_eq!(replies.keys().map(String::as_str).collect::<Vec<_>>(), ["x1", "x2", "x3", "x4", "x5"], "{replies:?}");
    for (id, want) in [("x1", "unknown variant `Explode`"), ("x2", "missing field `email`"), ("x3", "name is empty"), ("x5", "record key does not equal")] {
        let r = &replies[id][0];
        assert_eq!(r["outcome"], "invalid", "{id}: {r}");
        assert!(r["reason"].as_str().unwrap().contains(want), "{id}: {r}");
        assert_eq!(r["version"], 0, "{id}: nothing was applied before it: {r}");
    }
    assert_eq!(replies["x4"][0]["outcome"], "accepted");
    assert_eq!(replies["x4"][0]["version"], 1, "no invalid command touched the aggregate");
    let dead = wait_for(&s.dead_letters, 5, Duration::from_secs(30));
    assert_eq!(dead.len(), 5, "{dead:?}");
    let reasons: Vec<&str> = dead.iter().map(|d| d.headers["millrace.dlq.reason"].as_str()).collect();
    assert!(reasons[0].contains("invalid JSON"), "{reasons:?}");
    assert!(reasons[1].contains("unknown variant `Explode`"), "{reasons:?}");
    assert!(reasons[2].contains("missing field `email`"), "{reasons:?}");
    assert!(reasons[3].contains("name is empty"), "{reasons:?}");
    assert!(reasons[4].contains("record key does not equal"), "{reasons:?}");
    for d in &dead {
        assert_eq!(d.headers["millrace.dlq.topic"], s.commands);
        assert!(d.headers["millrace.dlq.offset"].parse::<i64>().is_ok());
        assert!(d.headers["millrace.dlq.partition"].parse::<i32>().is_ok());
        assert_eq!(d.key.as_deref(), Some("dd"));
    }
    assert_eq!(dead[0].value, b"\x00\x01 not json", "the original bytes are kept");
    assert_eq!(read_all(&s.events).len(), 1, "only x4 wrote an event");
}

/// A state larger than its changelog topic accepts: the command's transaction is rolled
/// back, the batch runs again without it, and it is answered `failed` and dead-lettered.
/// Nothing else stalls: later commands on the same key, the same partition and others are
/// answered as usual.
#[test]
fn a_state_its_changelog_refuses_fails_its_command_and_nothing_else() {
    let s = Setup::new("toolarge", 2, "json");
    // The operator gave the changelog a 200 KB record limit.
    create_topic_with(&s.changelog, 2, &[("cleanup.policy", "compact"), ("max.message.bytes", "200000")]);
    let inst = s.start();
    let p = producer();
    // ~400 KB of random letters: lz4 cannot bring the snapshot under 200 KB.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let huge: String = (0..400_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (b'a' + (seed % 26) as u8) as char
        })
        .collect();
    send(&p, &s.commands, "big", &command_json("b0", "big", None, "CreateCustomer", create("Big")), &[]);
    flush(&p);
    assert_eq!(wait_for(&s.replies, 1, Duration::from_secs(60)).len(), 1);
    send(&p, &s.commands, "big", &command_json("b1", "big", None, "UpdateCustomer", json!({"name": huge, "email": "b@x"})), &[]);
    send(&p, &s.commands, "big", &command_json("b2", "big", None, "UpdateCustomer", create("Still small")), &[]);
    for i in 0..10 {
        let k = format!("k{i}");
        send(&p, &s.commands, &k, &command_json(&format!("c{i}"), &k, None, "CreateCustomer", create(&k)), &[]);
    }
    flush(&p);
    let replies = replies_by_id(&wait_for(&s.replies, 13, Duration::from_secs(90)));
    assert_eq!(replies.len(), 13, "{:?}", replies.keys());
    let b1 = &replies["b1"][0];
    assert_eq!(b1["outcome"], "failed", "{b1}");
    assert!(b1["reason"].as_str().unwrap().contains(&s.changelog) && b1["reason"].as_str().unwrap().contains("refused"), "{b1}");
    assert_eq!(b1["version"], 1, "the failed command applied nothing");
    assert_eq!((replies["b2"][0]["outcome"].as_str(), replies["b2"][0]["version"].as_u64()), (Some("accepted"), Some(2)));
    for i in 0..10 {
        assert_eq!(replies[&format!("c{i}")][0]["outcome"], "accepted");
    }
    let dead = wait_for(&s.dead_letters, 1, Duration::from_secs(30));
    assert_eq!(dead.len(), 1, "only the refused command is dead-lettered");
    assert_eq!(dead[0].key.as_deref(), Some("big"));
    assert!(dead[0].headers["millrace.dlq.reason"].contains("refused"), "{:?}", dead[0].headers);
    // The events of the rolled-back transaction never became visible.
    let events = events_by_key(&read_all(&s.events));
    let versions: Vec<u64> = events["big"].iter().map(|e| e["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, vec![1, 2]);
    assert_eq!(inst.get("/stores/customers/keys/big?min_version=2").1["state"]["name"], "Still small");
    assert!(inst.metric_sum("millrace_refused_records_total") >= 1.0, "{}", inst.metrics());
}

#[test]
fn reply_to_and_correlation_id_headers_route_the_reply() {
    let s = Setup::new("replyto", 1, "json");
    let _inst = s.start();
    let private = format!("{}-private-replies", s.app);
    // The reply-to topic belongs to the client; it exists before the command is sent.
    create_topic(&private, 1);
    let p = producer();
    send(&p, &s.commands, "rt", &command_json("r1", "rt", None, "CreateCustomer", create("R")),
        &[("reply-to", &private), ("correlation-id", "corr-42")]);
    flush(&p);
    let got = wait_for(&private, 1, Duration::from_secs(60));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers["correlation-id"], "corr-42");
    assert_eq!(got[0].key.as_deref(), Some("r1"));
    assert!(read_all(&s.replies).is_empty(), "the default reply topic got nothing");

    // A reply-to topic that does not exist: the reply is dead-lettered, nothing stalls.
    send(&p, &s.commands, "rt", &command_json("r2", "rt", None, "UpdateCustomer", create("R2")),
        &[("reply-to", "no-such-topic-anywhere")]);
    send(&p, &s.commands, "rt", &command_json("r3", "rt", None, "UpdateCustomer", create("R3")), &[]);
    flush(&p);
    let replies = wait_for(&s.replies, 1, Duration::from_secs(60));
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].json()["command_id"], "r3");
    assert_eq!(replies[0].json()["version"], 3, "r2 was applied too: its events committed");
    let dead = wait_for(&s.dead_letters, 1, Duration::from_secs(30));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key.as_deref(), Some("r2"));
    assert!(dead[0].headers["millrace.dlq.reason"].contains("no-such-topic-anywhere does not exist"));
}

#[test]
fn bad_http_requests_get_json_4xx() {
    let s = Setup::new("http", 1, "json");
    let inst = s.start();
    for (path, status, code) in [
        ("/stores/nope/keys/x", 404, "unknown_store"),
        ("/stores/customers?limit=abc", 400, "bad_request"),
        ("/stores/customers?limit=0", 400, "bad_request"),
        ("/stores/customers?colour=red", 400, "bad_request"),
        ("/stores/customers/index/colour/red", 404, "unknown_index"),
        ("/stores/customers/index/status/ACTIVE?limit=-1", 400, "bad_request"),
        ("/no/such/route", 404, "no_route"),
    ] {
        let (got, body) = inst.get(path);
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["error"], code, "{path}: {body}");
    }
    assert_eq!(inst.get("/health").0, 200);
    assert!(inst.metrics().contains("millrace_restore_records_total"));

}

#[test]
fn protobuf_topics_round_trip() {
    use millrace::codec::proto::{customer as cpb, envelope as pb};
    use prost::Message;
    let s = Setup::new("proto", 2, "protobuf");
    let inst = s.start();
    let p = producer();
    let cmd = pb::CommandEnvelope {
        command_id: "p1".into(),
        aggregate_id: "pat".into(),
        expected_version: None,
        r#type: "CreateCustomer".into(),
        payload: cpb::CreateCustomer { name: "Pat".into(), email: "pat@x".into() }.encode_to_vec(),
        correlation_id: String::new(),
        reply_to: String::new(),
    };
    send(&p, &s.commands, "pat", &cmd.encode_to_vec(), &[]);
    flush(&p);
    let replies = wait_for(&s.replies, 1, Duration::from_secs(60));
    let reply = pb::Reply::decode(replies[0].value.as_slice()).unwrap();
    assert_eq!(reply.outcome, pb::Outcome::Accepted as i32);
    assert_eq!(reply.version, 1);
    let events = read_all(&s.events);
    let ev = pb::EventEnvelope::decode(events[0].value.as_slice()).unwrap();
    assert_eq!(ev.r#type, "CustomerCreated");
    assert_eq!(cpb::CustomerCreated::decode(ev.payload.as_slice()).unwrap().name, "Pat");
    let (status, body) = inst.get("/stores/customers/keys/pat");
    assert_eq!(status, 200);
    assert_eq!(body["state"]["status"], "ACTIVE");
}

#[test]
fn restart_after_sigterm_restores_nothing() {
    let s = Setup::new("sigterm", 2, "json");
    let inst = s.start();
    let p = producer();
    for i in 0..200 {
        let k = format!("k{}", i % 50);
        send(&p, &s.commands, &k, &command_json(&format!("t{i}"), &k, None, "CreateCustomer", create(&k)), &[]);
    }
    flush(&p);
    assert_eq!(wait_for(&s.replies, 200, Duration::from_secs(60)).len(), 200);
    assert!(inst.terminate().success(), "clean exit on SIGTERM");
    let again = s.start();
    assert_eq!(again.metric_sum("millrace_restore_records_total"), 0.0, "nothing restored after a clean shutdown");
    let (status, body) = again.get("/stores/customers/keys/k7");
    assert_eq!(status, 200);
    assert_eq!(body["version"], 1, "the store kept its state: {body}");
}

#[test]
fn produced_partitions_match_java_murmur2() {
    let topic = unique("murmur");
    create_topic(&topic, 7);
    let p = producer();
    let keys: Vec<String> = (0..50).map(|i| format!("cust-{i}")).collect();
    for k in &keys {
        send(&p, &topic, k, b"x", &[]);
    }
    flush(&p);
    let recs = wait_for(&topic, keys.len(), Duration::from_secs(30));
    assert_eq!(recs.len(), keys.len());
    for r in recs {
        let k = r.key.unwrap();
        assert_eq!(r.partition, millrace::codec::murmur2::partition_for_key(k.as_bytes(), 7), "key {k}");
    }
}

fn create_topic(name: &str, partitions: i32) {
    millrace::runtime::topics::ensure(&clients(), &[millrace::runtime::topics::TopicNeed::plain(name, partitions)]).unwrap();
}

#[test]
fn two_instances_split_partitions_and_either_answers_every_key() {
    let s = Setup::new("owners", 2, "json");
    let a = s.start_instance("a");
    let b = s.start_instance("b");
    let p = producer();
    let keys: Vec<String> = (0..20).map(|i| format!("o{i}")).collect();
    for k in &keys {
        send(&p, &s.commands, k, &command_json(&format!("own-{k}"), k, None, "CreateCustomer", create(k)), &[]);
    }
    flush(&p);
    assert_eq!(wait_for(&s.replies, keys.len(), Duration::from_secs(90)).len(), keys.len());
    // After the rebalance each instance owns one partition; wait for it to settle.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let local = |i: &Instance| i.get("/stores/customers?limit=1&scope=local").1["partitions"].as_array().map_or(0, Vec::len);
    loop {
        if local(&a) == 1 && local(&b) == 1 && a.get("/ready").0 == 200 && b.get("/ready").0 == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "partitions never split between the two instances");
        std::thread::sleep(Duration::from_millis(200));
    }
    for k in &keys {
        let partition = millrace::codec::murmur2::partition_for_key(k.as_bytes(), 2);
        let path = format!("/stores/customers/keys/{k}");
        // Either instance answers, the other one by forwarding to the owner.
        let answers = |deadline: std::time::Instant| loop {
            let (ra, rb) = (a.get(&path), b.get(&path));
            if (ra.0 == 200 && rb.0 == 200) || std::time::Instant::now() > deadline {
                return (ra, rb);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (ra, rb) = answers(std::time::Instant::now() + Duration::from_secs(20));
        assert_eq!((ra.0, rb.0), (200, 200), "{k}: {ra:?} / {rb:?}");
        assert_eq!(ra.1, rb.1, "{k}: the same answer from both");
        assert_eq!(ra.1["state"]["name"], k.as_str());
        // A forwarded request that reaches a non-owner is not forwarded again: it names the
        // partition (the asker turns that into 503 and retries).
        let (owner, other) = if local_has(&a, k) { (&a, &b) } else { (&b, &a) };
        let (status, _, body) = http_get_with(&other.http, &path, &[("x-millrace-forwarded", "1")]).unwrap();
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((status, body["error"].as_str(), body["partition"].as_i64()), (421, Some("not_owner"), Some(partition as i64)), "{k}");
        assert_eq!(http_get_with(&owner.http, &path, &[("x-millrace-forwarded", "1")]).unwrap().0, 200);
    }
}

/// Whether `i` holds `key` itself (not by forwarding).
fn local_has(i: &Instance, key: &str) -> bool {
    i.get(&format!("/stores/customers?scope=local&limit=1000")).1["entries"]
        .as_array()
        .is_some_and(|es| es.iter().any(|e| e["key"] == key))
}

#[test]
fn two_processing_threads_share_the_partitions_of_one_instance() {
    let s = Setup::new("threads", 4, "json");
    let text = std::fs::read_to_string(&s.topology).unwrap().replace("processing:\n", "processing:\n  threads: 2\n");
    std::fs::write(&s.topology, text).unwrap();
    let inst = s.start();
    let p = producer();
    for i in 0..400 {
        let k = format!("t{}", i % 40);
        let ty = if i < 40 { "CreateCustomer" } else { "UpdateCustomer" };
        send(&p, &s.commands, &k, &command_json(&format!("th-{i}"), &k, None, ty, create(&format!("n{i}"))), &[]);
    }
    flush(&p);
    let replies = replies_by_id(&wait_for(&s.replies, 400, Duration::from_secs(60)));
    assert_eq!(replies.len(), 400);
    assert!(replies.values().all(|r| r.len() == 1 && r[0]["outcome"] == "accepted"), "every command accepted once");
    let (_, page) = inst.get("/stores/customers?limit=100");
    assert_eq!(page["partitions"], json!([0, 1, 2, 3]), "both threads' partitions are served");
    assert_eq!(page["entries"].as_array().unwrap().len(), 40);
    assert!(page["entries"].as_array().unwrap().iter().all(|e| e["version"] == 10));
}

/// With `min_commit_interval_ms`, a transaction whose input ran dry commits without
/// waiting out the (here one-minute) commit interval, and a burst is still cut into
/// batches: no transaction commits before it has been open the minimum.
#[test]
fn a_drained_input_commits_before_the_interval_and_a_burst_still_batches() {
    let s = Setup::new("drained", 2, "json");
    let text = std::fs::read_to_string(&s.topology).unwrap().replace("commit_interval_ms: 100\n", "commit_interval_ms: 60000\n  min_commit_interval_ms: 20\n");
    std::fs::write(&s.topology, text).unwrap();
    let inst = s.start();
    let p = producer();
    // One command at a time: each reply comes long before the interval could end.
    for i in 0..3 {
        let k = format!("d{i}");
        send(&p, &s.commands, &k, &command_json(&format!("dr-{i}"), &k, None, "CreateCustomer", create("n")), &[]);
        flush(&p);
        let replies = replies_by_id(&wait_for(&s.replies, i + 1, Duration::from_secs(20)));
        assert_eq!(replies[&format!("dr-{i}")][0]["outcome"], "accepted");
    }
    let before = inst.metric_sum("millrace_transactions_total");
    assert!(before >= 3.0, "one transaction per drained command at least, found {before}");

    let started = std::time::Instant::now();
    for i in 0..2_000 {
        let k = format!("b{}", i % 50);
        let ty = if i < 50 { "CreateCustomer" } else { "UpdateCustomer" };
        send(&p, &s.commands, &k, &command_json(&format!("bu-{i}"), &k, None, ty, create(&format!("n{i}"))), &[]);
    }
    flush(&p);
    assert_eq!(replies_by_id(&wait_for(&s.replies, 2_003, Duration::from_secs(60))).len(), 2_003);
    let elapsed_ms = started.elapsed().as_millis() as f64;
    let burst = inst.metric_sum("millrace_transactions_total") - before;
    // Each transaction was open 20 ms at least, and they never overlap.
    assert!(burst <= elapsed_ms / 20.0 + 1.0, "{burst} transactions in {elapsed_ms} ms: some committed before the minimum");
    assert!(burst < 2_000.0 / 4.0, "{burst} transactions for 2,000 commands: the burst was not batched");
}

#[test]
fn at_least_once_mode_processes_and_commits_offsets_without_transactions() {
    let s = Setup::new("alos", 2, "json");
    let text = std::fs::read_to_string(&s.topology).unwrap().replace("processing:\n", "processing:\n  exactly_once: false\n");
    std::fs::write(&s.topology, text).unwrap();
    let inst = s.start();
    let p = producer();
    for i in 0..100 {
        let k = format!("a{}", i % 10);
        let ty = if i < 10 { "CreateCustomer" } else { "UpdateCustomer" };
        send(&p, &s.commands, &k, &command_json(&format!("al-{i}"), &k, None, ty, create(&format!("n{i}"))), &[]);
    }
    flush(&p);
    assert_eq!(replies_by_id(&wait_for(&s.replies, 100, Duration::from_secs(60))).len(), 100);
    // The consumer, not a transaction, committed the input offsets.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while committed_sum(&s.app, &s.commands, s.partitions) != Some(100) {
        assert!(std::time::Instant::now() < deadline, "offsets never committed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(inst.get("/stores/customers/keys/a3").1["version"], 10);
    assert_eq!(inst.metric_sum("millrace_transactions_total"), 0.0, "no transactions in at-least-once mode");
}

/// A new producer releases every partition it writes (the aggregate's events and replies,
/// its store's changelog, the dead-letter topic): an aborted empty record keyed
/// `millrace.release` on each, whose ABORT marker ends whatever an earlier epoch of its
/// producer id left pending there (a Kafka 4.3 broker restart leaves such transactions;
/// docs/operations.md, the failure table). Read committed, none of them is there.
#[test]
fn a_new_producer_releases_every_partition_it_writes() {
    let s = Setup::new("release", 2, "json");
    let inst = s.start();
    assert_eq!(inst.get("/ready").0, 200, "ready comes after the release");
    for topic in [&s.events, &s.replies, &s.changelog, &s.dead_letters] {
        let (all, parts) = read_all_isolated(topic, "read_uncommitted");
        let released: std::collections::BTreeSet<i32> =
            all.iter().filter(|r| r.key.as_deref() == Some("millrace.release")).map(|r| r.partition).collect();
        assert_eq!(released, (0..parts as i32).collect(), "{topic}: a release record on every partition");
        let committed = read_all(topic);
        assert!(committed.iter().all(|r| r.key.as_deref() != Some("millrace.release")), "{topic}: never visible read_committed");
    }
}

/// Two live processes with one instance id would fence each other for as long as both run:
/// the second refuses to start (exit 2, naming the id). A restart of the same id after a
/// SIGKILL is no twin: it starts, without waiting a heartbeat when its predecessor's
/// address says so.
#[test]
fn a_second_live_instance_with_the_same_id_refuses_to_start() {
    let s = Setup::new("twins", 2, "json");
    let first = s.start_instance("twin");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["run", "--topology"]).arg(&s.topology)
        .args(["--bootstrap-servers", &bootstrap()])
        .arg("--state-dir").arg(s.dir.path().join("state-other"))
        .args(["--http", "127.0.0.1:0", "--instance-id", "twin"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("another live process runs as instance \"twin\"") && err.contains(&first.http), "{err}");
    // The first one was not disturbed.
    let p = producer();
    send(&p, &s.commands, "t1", &command_json("t1", "t1", None, "CreateCustomer", create("T")), &[]);
    flush(&p);
    assert_eq!(wait_for(&s.replies, 1, Duration::from_secs(60)).len(), 1);
    assert_eq!(first.get("/health").0, 200);
    // Killed and started again at once (its last heartbeat still fresh) on a new port: not
    // a twin. Its old address refuses connections, which settles it without waiting for a
    // heartbeat that will never come.
    first.kill9();
    let again = s.start_instance("twin");
    assert_eq!(again.get("/ready").0, 200);
    let log = again.log_text();
    assert!(log.contains("the last run under this instance id no longer serves at its address"), "{log}");
    assert!(again.terminate().success());
}

/// The issue's reproduction: garbage in the changelog for one key, the state directory
/// deleted, a restart. That key is quarantined (its commands answered `failed`), every other
/// key goes on, and the operator refolds its snapshot from the event history with
/// `millrace store repair`; a readable snapshot is never deleted.
#[test]
fn an_unreadable_snapshot_quarantines_one_key_until_an_operator_repairs_it() {
    let s = Setup::new("quarantine", 2, "json");
    let inst = s.start();
    let p = producer();
    send(&p, &s.commands, "q", &command_json("q1", "q", None, "CreateCustomer", create("Q")), &[]);
    send(&p, &s.commands, "q", &command_json("q2", "q", None, "UpdateCustomer", create("Q2")), &[]);
    flush(&p);
    assert_eq!(wait_for(&s.replies, 2, Duration::from_secs(60)).len(), 2);
    assert!(inst.terminate().success());
    send(&p, &s.changelog, "q", b"\xff\xfe not a snapshot", &[]);
    flush(&p);
    std::fs::remove_dir_all(s.state_dir()).unwrap();
    let inst = s.start();
    send(&p, &s.commands, "q", &command_json("q3", "q", None, "UpdateCustomer", create("Q3")), &[]);
    send(&p, &s.commands, "ok", &command_json("k1", "ok", None, "CreateCustomer", create("Ok")), &[]);
    flush(&p);
    let replies = replies_by_id(&wait_for(&s.replies, 4, Duration::from_secs(60)));
    assert_eq!(replies["q3"][0]["outcome"], "failed", "{:?}", replies["q3"]);
    assert!(replies["q3"][0]["reason"].as_str().unwrap().contains("stored snapshot for key q"), "{:?}", replies["q3"]);
    assert_eq!(replies["k1"][0]["outcome"], "accepted", "the rest of the partition goes on");
    assert_eq!(inst.metric_sum("millrace_quarantined_keys"), 1.0);
    // The console names the key, with the decoder's reason.
    let (_, feed) = inst.get("/ui/instance.json");
    let listed = feed["quarantined"].as_array().expect("the feed lists quarantined keys").clone();
    assert_eq!(listed.len(), 1, "{feed}");
    assert_eq!((listed[0]["store"].as_str(), listed[0]["key"].as_str()), (Some("customers"), Some("q")));
    assert!(listed[0]["reason"].as_str().unwrap().contains("stored snapshot for key q"), "{feed}");
    let (status, page) = http_get(&inst.http, "/ui/dead-letters").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains(r#"<a href="/ui/stores/customers/keys/q">q</a>"#), "{page}");
    // HTTP: a readable snapshot is not deleted (409).
    let (status, _, body) = http_delete(&inst.http, "/aggregates/customer/ok/snapshot");
    assert_eq!(status, 409, "{body}");
    // The CLI refolds q from its two events.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["store", "repair", "customer", "q", "--topology"]).arg(&s.topology)
        .args(["--bootstrap-servers", &bootstrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let reply: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((reply["outcome"].as_str(), reply["version"].as_u64()), (Some("accepted"), Some(2)), "{reply}");
    send(&p, &s.commands, "q", &command_json("q4", "q", None, "UpdateCustomer", create("Q4")), &[]);
    flush(&p);
    // q1, q2, q3, k1, the refused delete, the repair, q4.
    let replies = replies_by_id(&wait_for(&s.replies, 7, Duration::from_secs(60)));
    assert!(replies.contains_key("q4"), "{:?}", replies.keys());
    assert_eq!((replies["q4"][0]["outcome"].as_str(), replies["q4"][0]["version"].as_u64()), (Some("accepted"), Some(3)));
    assert_eq!(inst.metric_sum("millrace_quarantined_keys"), 0.0);
    assert_eq!(inst.get("/ui/instance.json").1["quarantined"], serde_json::json!([]), "repaired: out of the console's list");
    assert_eq!(inst.get("/stores/customers/keys/q?min_version=3").1["state"]["name"], "Q4");
}
