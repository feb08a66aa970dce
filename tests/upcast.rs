//! Schema evolution: records written by the v1 customer code (the email field was called
//! `mail`) are read by the current code through the upcaster hooks. The v1 records are
//! committed fixtures in tests/fixtures, built as the v1 code wrote them.

use millrace::codec::Format;
use millrace::domain::customer::{Customer, CustomerAggregate, CustomerEvent, Status};
use millrace::processor::wire;

const V1_EVENT: &str = include_str!("fixtures/customer-v1-event.json");
const V1_SNAPSHOT_HEX: &str = include_str!("fixtures/customer-v1-snapshot.hex");

fn unhex(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn v1_event_is_upcast_to_v2() {
    let e = wire::decode_event::<CustomerAggregate>(Format::Json, V1_EVENT.as_bytes(), Some(1)).unwrap();
    assert_eq!(e.aggregate_id, "cust-1");
    assert_eq!(e.version, 1);
    assert_eq!(e.body, CustomerEvent::CustomerCreated { name: "Ada".into(), email: "ada@example.org".into() });
}

#[test]
fn v1_event_without_the_header_counts_as_v1() {
    let e = wire::decode_event::<CustomerAggregate>(Format::Json, V1_EVENT.as_bytes(), None).unwrap();
    assert!(matches!(e.body, CustomerEvent::CustomerCreated { ref email, .. } if email == "ada@example.org"));
}

#[test]
fn v2_event_is_read_as_is() {
    let bytes = wire::encode_event::<CustomerAggregate>(Format::Json, "cust-2", 4,
        &CustomerEvent::CustomerUpdated { name: "B".into(), email: "b@x".into() });
    let e = wire::decode_event::<CustomerAggregate>(Format::Json, &bytes, Some(2)).unwrap();
    assert_eq!((e.aggregate_id.as_str(), e.version), ("cust-2", 4));
    assert_eq!(e.body, CustomerEvent::CustomerUpdated { name: "B".into(), email: "b@x".into() });
}

#[test]
fn v1_snapshot_is_upcast_and_rewritten_as_v2() {
    let snap = wire::decode_snapshot::<CustomerAggregate>(Format::Json, &unhex(V1_SNAPSHOT_HEX)).unwrap();
    assert_eq!(snap.version, 3);
    assert_eq!(snap.state, Customer { name: "Ada".into(), email: "ada@example.org".into(), status: Status::Deleted });
    assert_eq!(snap.recent.len(), 1, "the dedup window survives the upcast");
    // Written back, it is v2: no upcast needed on the next read.
    let again = wire::encode_snapshot::<CustomerAggregate>(Format::Json, &snap);
    let text = String::from_utf8_lossy(&again);
    assert!(text.contains("\"email\":\"ada@example.org\"") && !text.contains("\"mail\""), "{text}");
}
