//! The HTTP command gateway, on the real broker with two instances: a command sent over
//! HTTP to either instance gets its reply as the HTTP answer (200 accepted, 409 rejected or
//! wrong expected version, 202 with a status URL when it takes longer), retries with the
//! same command id are safe (also two at once), any instance answers a status URL, and the
//! reply's version reads back with `min_version` on either instance.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn post(i: &Instance, path: &str, body: &Value) -> (u16, std::collections::BTreeMap<String, String>, Value) {
    let (status, headers, text) = http_post(&i.http, path, &body.to_string()).unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[test]
fn commands_over_http_answer_with_their_reply_on_any_instance() {
    let s = Setup::new("gateway", 4, "json");
    let a = s.start_instance("a");
    let b = s.start_instance("b");
    let create = json!({"type": "CreateCustomer", "payload": {"name": "Ada", "email": "ada@example.org"}});

    // The first command may wait for the group to settle; the gateway waits up to 60 s.
    let (status, _, reply) = post(&a, "/aggregates/customer/ada/commands?timeout_ms=60000", &json!({
        "command_id": "gw-1", "type": "CreateCustomer", "payload": {"name": "Ada", "email": "ada@example.org"}}));
    assert_eq!((status, reply["outcome"].as_str(), reply["version"].as_u64()), (200, Some("accepted"), Some(1)), "{reply}");

    // A retry with the same id, on the other instance: the same, safe answer.
    let (status, _, reply) = post(&b, "/aggregates/customer/ada/commands?timeout_ms=30000", &json!({
        "command_id": "gw-1", "type": "CreateCustomer", "payload": {"name": "Ada", "email": "ada@example.org"}}));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["version"], 1);
    assert!(matches!(reply["outcome"].as_str(), Some("accepted" | "duplicate")), "{reply}");

    // The same command sent twice at once (a client retrying before its first attempt was
    // answered): each request gets the reply, neither a 202.
    let twice = json!({"command_id": "gw-twice", "type": "CreateCustomer", "payload": {"name": "Tw", "email": "tw@example.org"}});
    let answers: Vec<_> = std::thread::scope(|scope| {
        let sent: Vec<_> =
            (0..2).map(|_| scope.spawn(|| post(&a, "/aggregates/customer/twice/commands?timeout_ms=30000", &twice))).collect();
        sent.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, _, reply) in &answers {
        assert_eq!((*status, reply["version"].as_u64()), (200, Some(1)), "{answers:?}");
        assert!(matches!(reply["outcome"].as_str(), Some("accepted" | "duplicate")), "{reply}");
    }

    // Refused: 409 with the reason; the node name works as well as the aggregate name.
    let (status, _, reply) = post(&b, "/aggregates/customers/ada/commands", &create);
    assert_eq!((status, reply["outcome"].as_str()), (409, Some("rejected")), "{reply}");
    assert_eq!(reply["reason"], "customer already exists");
    let (status, _, reply) = post(&a, "/aggregates/customer/ada/commands", &json!({
        "type": "UpdateCustomer", "expected_version": 7, "payload": {"name": "Ada L", "email": "ada@example.org"}}));
    assert_eq!((status, reply["outcome"].as_str(), reply["actual"].as_u64()), (409, Some("wrong_expected_version"), Some(1)), "{reply}");
    let (status, _, reply) = post(&a, "/aggregates/customer/ada/commands", &json!({
        "type": "UpdateCustomer", "expected_version": 1, "payload": {"name": "Ada L", "email": "ada@example.org"}}));
    assert_eq!((status, reply["version"].as_u64()), (200, Some(2)), "{reply}");
    // Read your writes, on either instance.
    for i in [&a, &b] {
        let (status, body) = i.get("/stores/customers/keys/ada?min_version=2");
        assert_eq!((status, body["state"]["name"].as_str()), (200, Some("Ada L")), "{body}");
    }

    // No time to wait: 202 with a status URL that any instance answers once the reply is in.
    let (status, headers, pending) = post(&a, "/aggregates/customer/bob/commands?timeout_ms=0", &json!({
        "command_id": "gw-bob", "type": "CreateCustomer", "payload": {"name": "Bob", "email": "bob@example.org"}}));
    assert_eq!(status, 202, "{pending}");
    let url = pending["status_url"].as_str().unwrap().to_string();
    assert_eq!(headers.get("location"), Some(&url));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = b.get(&url);
        if status == 200 {
            assert_eq!((body["command_id"].as_str(), body["outcome"].as_str()), (Some("gw-bob"), Some("accepted")));
            break;
        }
        assert!(matches!(status, 202 | 404) && Instant::now() < deadline, "{status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A command produced to Kafka directly is answered on the reply topic, but the gateway
    // does not keep its reply: status URLs are for commands sent over HTTP.
    let p = producer();
    send(&p, &s.commands, "carol", &command_json("kafka-carol", "carol", None, "CreateCustomer",
        json!({"name": "Carol", "email": "carol@example.org"})), &[]);
    flush(&p);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !replies_by_id(&read_all(&s.replies)).contains_key("kafka-carol") {
        assert!(Instant::now() < deadline, "the aggregate never answered the Kafka command");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The readers follow the reply topic within ~100 ms; give them ten times that.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(a.get("/aggregates/customer/carol/commands/kafka-carol").0, 404);

    // A command that cannot decode is refused at once, before it reaches Kafka: 400 with
    // the reason, in well under the 10 s a reply may take.
    for body in [json!({"type": "NoSuchCommand"}), json!({"type": "CreateCustomer", "payload": {"name": "N"}})] {
        let started = Instant::now();
        let (status, _, v) = post(&a, "/aggregates/customer/nobody/commands", &body);
        assert_eq!((status, v["error"].as_str(), v["outcome"].as_str()), (400, Some("invalid_command"), Some("invalid")), "{body}: {v}");
        assert!(v["reason"].is_string() && v["command_id"].is_string(), "{v}");
        assert!(started.elapsed() < Duration::from_secs(2), "answered only after {:?}", started.elapsed());
    }
    // One that decodes but `decide` calls malformed (an empty name) is answered through
    // Kafka: `invalid`, 400, never a 202 that does not resolve.
    let (status, _, v) = post(&b, "/aggregates/customer/nameless/commands?timeout_ms=30000", &json!({
        "command_id": "gw-nameless", "type": "CreateCustomer", "payload": {"name": "", "email": "n@x"}}));
    assert_eq!((status, v["outcome"].as_str()), (400, Some("invalid")), "{v}");
    assert!(v["reason"].as_str().unwrap().contains("name is empty"), "{v}");
    // The status URL, on the other instance, says the same once its reply reader has it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = a.get("/aggregates/customer/nameless/commands/gw-nameless");
        if status == 400 {
            assert_eq!(body["outcome"], "invalid", "{body}");
            break;
        }
        assert!(status == 404 && Instant::now() < deadline, "{status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(a.get("/stores/customers/keys/nameless").0, 404, "nothing was applied");

    // Bad requests: JSON 4xx, and the server goes on.
    for (path, body, want) in [
        ("/aggregates/customer/x/commands", "{not json", 400),
        ("/aggregates/customer/x/commands", "[1,2]", 400),
        ("/aggregates/customer/x/commands", r#"{"payload":{}}"#, 400),
        ("/aggregates/customer/x/commands", r#"{"type":"CreateCustomer","extra":1}"#, 400),
        ("/aggregates/customer/x/commands?timeout_ms=99999999", r#"{"type":"CreateCustomer"}"#, 400),
        ("/aggregates/spaceship/x/commands", r#"{"type":"Launch"}"#, 404),
    ] {
        let (status, _, text) = http_post(&a.http, path, body).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path} {body}: not JSON: {text}"));
        assert_eq!(status, want, "{path} {body}: {v}");
        assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
    }
    assert_eq!(a.get("/aggregates/customer/x/commands/never-sent").0, 404);
    assert_eq!(a.get("/health").0, 200);
    for i in [a, b] {
        assert!(i.terminate().success());
    }
}
