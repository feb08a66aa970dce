//! Every kind of topology error names the exact line and column, and what was expected.
//! Each case edits one line of a valid file and checks the position of the offending token.

use millrace::topology::{parse, TopologyError};
use std::path::Path;

const GOOD: &str = "\
version: 1
application_id: shop
topics:
  cmds: { partitions: 2, codec: json }
  events: { partitions: 2 }
  replies: { partitions: 1 }
  payments: { partitions: 2 }
aggregates:
  customers:
    aggregate: customer
    commands: cmds
    events: events
    replies: replies
    store: customers
processing:
  commit_interval_ms: 100
http:
  listen: 127.0.0.1:8080
";

/// Replaces `from` with `to` in GOOD and returns (line, column, message) of the error.
fn fails(from: &str, to: &str) -> (usize, usize, String) {
    assert!(GOOD.contains(from), "test bug: {from:?} not in GOOD");
    match parse(Path::new("shop.yaml"), &GOOD.replacen(from, to, 1)) {
        Err(TopologyError::Invalid(d)) => {
            assert_eq!(d[0].at.file, Path::new("shop.yaml"));
            (d[0].at.line, d[0].at.column, d[0].message.clone())
        }
        other => panic!("{from:?} -> {to:?}: expected an error, got {other:?}"),
    }
}

fn expect(from: &str, to: &str, line: usize, column: usize, needle: &str) {
    let (l, c, msg) = fails(from, to);
    assert_eq!((l, c), (line, column), "{msg}");
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
}

#[test]
fn the_good_file_parses() {
    let t = parse(Path::new("shop.yaml"), GOOD).unwrap();
    assert_eq!(t.aggregates["customers"].store.name, "customers");
    assert_eq!(t.aggregates["customers"].events.partitions, 2, "references are resolved to the topics themselves");
    assert_eq!(t.processing.max_batch_records, 10_000, "defaults apply");
    assert_eq!(t.changelog_topic("customers"), "shop-customers-changelog");
    assert_eq!(t.dead_letter_topic(), "shop-dead-letters");
}

#[test]
fn unknown_key() {
    expect("    store: customers\n", "    store: customers\n    stroe: x\n", 15, 5, "unknown field `stroe`, expected one of");
}

#[test]
fn missing_required_key() {
    expect("    replies: replies\n", "", 10, 5, "missing field `replies`");
}

#[test]
fn wrong_type() {
    expect("events: { partitions: 2 }", "events: { partitions: two }", 5, 25, "invalid type: string \"two\", expected i32");
}

#[test]
fn unknown_codec() {
    expect("codec: json }", "codec: xml }", 4, 33, "unknown variant `xml`, expected `json` or `protobuf`");
}

#[test]
fn unsupported_version() {
    expect("version: 1", "version: 2", 1, 10, "unsupported version 2, expected 1");
}

#[test]
fn invalid_application_id() {
    expect("application_id: shop", "application_id: my shop", 2, 17, "must be non-empty and use only [A-Za-z0-9._-]");
}

#[test]
fn zero_partitions() {
    expect("replies: { partitions: 1 }", "replies: { partitions: 0 }", 6, 26, "partitions must be at least 1, found 0");
}

#[test]
fn dangling_topic_reference() {
    expect("    events: events", "    events: evnts", 12, 13, "events topic \"evnts\" is not declared under `topics`");
}

#[test]
fn duplicate_node_name() {
    expect("  payments: { partitions: 2 }", "  cmds: { partitions: 2 }", 7, 3, "duplicate key `cmds` (first defined at 4:3)");
}

#[test]
fn aggregate_reading_its_own_output() {
    expect("    replies: replies", "    replies: cmds", 13, 14, "is its own command topic");
}

#[test]
fn two_aggregates_on_one_command_topic_or_one_store() {
    let second = "processing:\n";
    let (l, c, msg) = fails(second, "  again:\n    aggregate: customer\n    commands: cmds\n    events: payments\n    replies: replies\n    store: other\nprocessing:\n");
    assert_eq!((l, c), (17, 15), "{msg}");
    assert!(msg.contains("already the command topic of aggregate customers"), "{msg}");
    let (l, c, msg) = fails(second, "  again:\n    aggregate: customer\n    commands: payments\n    events: events\n    replies: replies\n    store: customers\nprocessing:\n");
    assert_eq!((l, c), (20, 12), "{msg}");
    assert!(msg.contains("store \"customers\" is already used by aggregate"), "{msg}");
}

#[test]
fn zero_commit_interval() {
    expect("commit_interval_ms: 100", "commit_interval_ms: 0", 16, 23, "a commit per record is what batching avoids");
}

#[test]
fn min_commit_interval_longer_than_the_interval() {
    expect(
        "commit_interval_ms: 100",
        "commit_interval_ms: 100\n  min_commit_interval_ms: 250",
        17,
        27,
        "min_commit_interval_ms (250) must not exceed commit_interval_ms (100)",
    );
}

#[test]
fn zero_min_commit_interval() {
    expect("commit_interval_ms: 100", "commit_interval_ms: 100\n  min_commit_interval_ms: 0", 17, 27, "a commit per record is what batching avoids");
}

#[test]
fn bad_listen_address() {
    expect("listen: 127.0.0.1:8080", "listen: localhost", 18, 11, "is not a socket address");
}

#[test]
fn store_name_that_cannot_name_a_topic() {
    expect("    store: customers", "    store: cust/omers", 14, 12, "it names the changelog topic");
}

#[test]
fn unregistered_aggregate() {
    let t = parse(Path::new("shop.yaml"), &GOOD.replace("aggregate: customer", "aggregate: custard")).unwrap();
    match t.check_registered(["customer", "order"].into_iter()) {
        Err(TopologyError::Invalid(d)) => {
            let (at, message) = (&d[0].at, &d[0].message);
            assert_eq!((at.line, at.column), (10, 16));
            assert!(message.contains("no aggregate is registered as \"custard\"; this binary registers [\"customer\", \"order\"]"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn node_name_shared_by_an_aggregate_and_a_table() {
    let (l, c, msg) = fails("processing:\n", "tables:\n  customers:\n    topic: payments\n    store: pay\nprocessing:\n");
    assert_eq!((l, c), (16, 3), "{msg}");
    assert!(msg.contains("node name \"customers\" is already an aggregate"), "{msg}");
}

#[test]
fn table_reading_an_undeclared_topic() {
    let (l, c, msg) = fails("processing:\n", "tables:\n  pay:\n    topic: paymnts\n    store: pay\nprocessing:\n");
    assert_eq!((l, c), (17, 12), "{msg}");
    assert!(msg.contains("table pay: topic \"paymnts\" is not declared"), "{msg}");
}

#[test]
fn declared_changelog_that_breaks_co_partitioning() {
    let (l, c, msg) = fails("  payments: { partitions: 2 }\n", "  payments: { partitions: 2 }\n  shop-customers-changelog: { partitions: 3 }\n");
    assert_eq!((l, c), (8, 43), "{msg}");
    assert!(msg.contains("must have 2 partitions to stay co-partitioned with its input, found 3"), "{msg}");
}

#[test]
fn aggregate_store_without_changelog_or_with_retention() {
    expect("processing:\n", "stores:\n  customers: { changelog: false }\nprocessing:\n", 16, 27,
        "needs its changelog: without it a moved or lost task loses state");
    expect("processing:\n", "stores:\n  customers: { retention_ms: 1000 }\nprocessing:\n", 16, 30,
        "retention would delete aggregates that are merely idle");
}

#[test]
fn declared_store_no_node_uses() {
    expect("processing:\n", "stores:\n  custmers: { changelog: true }\nprocessing:\n", 16, 3,
        "store \"custmers\" is declared but no node uses it; expected one of [\"customers\"]");
}

#[test]
fn protobuf_message_names_are_checked() {
    let pb = |m: &str| GOOD.replace("cmds: { partitions: 2, codec: json }", &format!("cmds: {{ partitions: 2, codec: protobuf, message: {m} }}"));
    assert!(parse(Path::new("shop.yaml"), &pb("millrace.envelope.CommandEnvelope")).is_ok());
    for (message, needle) in [
        ("millrace.envelope.CommandEnvelop", "unknown protobuf message \"millrace.envelope.CommandEnvelop\""),
        ("millrace.envelope.Reply", "carries aggregate customers's commands, which are millrace.envelope.CommandEnvelope, not millrace.envelope.Reply"),
    ] {
        match parse(Path::new("shop.yaml"), &pb(message)) {
            Err(TopologyError::Invalid(d)) => {
                let (at, msg) = (&d[0].at, &d[0].message);
                assert_eq!((at.line, at.column), (4, 52), "{msg}");
                assert!(msg.contains(needle), "{msg}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
    expect("cmds: { partitions: 2, codec: json }", "cmds: { partitions: 2, codec: json, message: x.Y }", 4, 48,
        "`message` names a protobuf message, but the topic's codec is json");
}

const SHOP: &str = "\
version: 1
application_id: shop
topics:
  customers: { partitions: 4, compacted: true }
  orders: { partitions: 3 }
  enriched: { partitions: 3 }
tables:
  customer-table: { topic: customers, store: customers }
rekeys:
  by-customer: { from: orders, key_field: customer_id, into: customer-table }
joins:
  enrich: { stream: by-customer, table: customer-table, kind: left, output: enriched }
";

fn shop_fails(from: &str, to: &str) -> (usize, usize, String) {
    match parse(Path::new("shop.yaml"), &SHOP.replacen(from, to, 1)) {
        Err(TopologyError::Invalid(d)) => (d[0].at.line, d[0].at.column, d[0].message.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn join_topology_parses_and_derives_its_repartition_topic() {
    let t = parse(Path::new("shop.yaml"), SHOP).unwrap();
    let rep = t.topic_needs().into_iter().find(|n| n.name == "shop-by-customer-repartition").unwrap();
    assert_eq!(rep.partitions, 4, "partitioned like the table it feeds, not like its input");
    let d = millrace::topology::describe::text(&t);
    assert!(d.contains("shop-by-customer-repartition (4 partitions, cleanup.policy=delete, Repartition)"), "{d}");
    assert!(d.contains("[customers, shop-customers-changelog, shop-by-customer-repartition] (4 partitions each)"), "{d}");
    assert!(d.contains("Processor: enrich (left join with table customer-table, stores: [customers])"), "{d}");
}

#[test]
fn join_of_a_topic_with_another_partition_count_names_both() {
    let (l, c, msg) = shop_fails("stream: by-customer", "stream: orders");
    assert_eq!((l, c), (12, 21), "{msg}");
    assert!(msg.contains("stream topic orders has 3 partitions but table topic customers has 4"), "{msg}");
}

#[test]
fn rekey_into_something_that_is_not_a_table() {
    let (l, c, msg) = shop_fails("into: customer-table", "into: customers");
    assert_eq!((l, c), (10, 62), "{msg}");
    assert!(msg.contains("\"customers\" is not a table node; expected one of [\"customer-table\"]"), "{msg}");
}

#[test]
fn awaits_must_name_a_global_table_and_a_positive_timeout() {
    expect("    store: customers\n", "    store: customers\n    awaits: { table: nowhere, timeout_ms: 10 }\n", 15, 22,
        "awaits \"nowhere\", which is not a global table node");
    let with_global = |timeout: &str| format!("    store: customers\n    awaits: {{ table: catalog, timeout_ms: {timeout} }}\nglobal_tables:\n  catalog: {{ topic: payments, store: catalog }}\n");
    expect("    store: customers\n", &with_global("0"), 15, 43, "awaits.timeout_ms must be at least 1");
    assert!(parse(Path::new("shop.yaml"), &GOOD.replacen("    store: customers\n", &with_global("500"), 1)).is_ok());
}

/// Every problem of a file is reported in one pass, in file order, each at its own place:
/// a schema misfit in one node does not hide one in another, and a broken reference does
/// not hide a bad setting.
#[test]
fn every_error_in_the_file_is_reported_at_once() {
    let text = GOOD
        .replace("  events: { partitions: 2 }", "  events: { partitions: two }")
        .replace("    store: customers\n", "    store: customers\n    stroe: x\n");
    let diagnostics = match parse(Path::new("shop.yaml"), &text) {
        Err(TopologyError::Invalid(d)) => d,
        other => panic!("expected errors, got {other:?}"),
    };
    let places: Vec<(usize, usize)> = diagnostics.iter().map(|d| (d.at.line, d.at.column)).collect();
    assert_eq!(places, vec![(5, 25), (15, 5)], "{diagnostics:#?}");
    assert!(diagnostics[0].message.contains("expected i32"));
    assert!(diagnostics[1].message.contains("unknown field `stroe`"));

    let text = GOOD
        .replace("    events: events", "    events: evnts")
        .replace("commit_interval_ms: 100", "commit_interval_ms: 0")
        .replace("listen: 127.0.0.1:8080", "listen: localhost");
    let e = parse(Path::new("shop.yaml"), &text).unwrap_err();
    let places: Vec<(usize, usize)> = e.diagnostics().iter().map(|d| (d.at.line, d.at.column)).collect();
    assert_eq!(places, vec![(12, 13), (16, 23), (18, 11)], "{e}");
    let shown = e.to_string();
    assert!(shown.lines().next().unwrap().starts_with("shop.yaml:12:13: aggregate customers: events topic"), "{shown}");
    assert!(shown.ends_with("3 problems in the topology file"), "{shown}");
}

#[test]
fn yaml_syntax_errors_and_unknown_sections_have_positions() {
    let (l, c, msg) = fails("    store: customers\n", "    store: [customers\n");
    assert!(l >= 14, "({l}, {c}) {msg}");
    assert!(!msg.is_empty());
    expect("processing:\n", "procesing:\n", 15, 1, "unknown field `procesing`, expected one of `version`");
    expect("version: 1\n", "", 1, 1, "missing field `version`");
    expect("replies: { partitions: 1 }", "replies: { partitions: \"1\" }", 6, 26, "invalid type: string \"1\", expected i32");
}

/// GOOD with a projection of its events appended, `edit` applied to the projection part.
fn projection_fails(edit: (&str, &str)) -> Vec<(usize, usize, String)> {
    let projection = "\
projections:
  rows:
    from: [events]
    table: customers
    key: id
    version: version
    columns: { status: text, seen: timestamptz }
    events:
      CustomerCreated: { upsert: { status: ACTIVE, seen: $timestamp } }
      CustomerPurged: delete
";
    assert!(projection.contains(edit.0), "test bug: {:?} not in the projection", edit.0);
    let text = format!("{GOOD}{}", projection.replacen(edit.0, edit.1, 1));
    match parse(Path::new("shop.yaml"), &text) {
        Ok(_) => vec![],
        Err(TopologyError::Invalid(d)) => d.iter().map(|d| (d.at.line, d.at.column, d.message.clone())).collect(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_projection_parses_into_its_mapping() {
    assert!(projection_fails(("", "")).is_empty());
    let text = format!("{GOOD}projections:\n  rows:\n    from: [events]\n    table: s.customers\n    key: id\n    columns: {{ id: bigint, b: text, a: jsonb }}\n    events: {{ X: {{ upsert: {{ a: $.p, b: 5 }} }} }}\n");
    let t = parse(Path::new("shop.yaml"), &text).unwrap();
    let millrace::topology::ProjectionKind::Mapped(m) = &t.projections["rows"].kind else { panic!("a mapping") };
    assert_eq!(m.key.sql_type, "bigint", "the key column's declared type");
    assert_eq!(m.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["b", "a"], "file order");
    assert_eq!(t.projection_group("rows"), "shop-projection-rows");
}

#[test]
fn projection_errors_name_their_place_and_what_was_expected() {
    // GOOD has 18 lines; the projection starts on line 19.
    let cases: [((&str, &str), usize, usize, &str); 8] = [
        (("from: [events]", "from: [evnts]"), 21, 12, "topic \"evnts\" is not declared"),
        (("table: customers", "table: \"cust omers\""), 22, 12, "not a plain SQL name"),
        (("seen: timestamptz }", "seen: money }"), 25, 36, "type \"money\" is not one millrace writes"),
        (("status: ACTIVE, seen", "status: ACTIVE, nope: 1, seen"), 27, 52, "column nope is not under `columns`"),
        (("seen: $timestamp", "seen: $time"), 27, 58, "unknown expression \"$time\""),
        (("upsert: { status", "upsert: { version: 1, status"), 27, 36, "filled by millrace"),
        (("CustomerPurged: delete", "CustomerPurged: drop"), 28, 23, "unknown variant `drop`"),
        (("    key: id\n", ""), 20, 3, "a mapping needs `key`"),
    ];
    for ((from, to), line, column, needle) in cases {
        let found = projection_fails((from, to));
        assert!(
            found.iter().any(|(l, c, m)| (*l, *c) == (line, column) && m.contains(needle)),
            "{from:?} -> {to:?}: expected {needle:?} at {line}:{column}, found {found:?}"
        );
    }
}

#[test]
fn a_registered_projection_is_checked_against_the_binary() {
    let text = format!("{GOOD}projections:\n  audit:\n    from: [events]\n    projection: audit_log\n");
    let t = parse(Path::new("shop.yaml"), &text).unwrap();
    match t.check_projections_registered(["ledger"].into_iter()) {
        Err(TopologyError::Invalid(d)) => {
            assert_eq!((d[0].at.line, d[0].at.column), (22, 17));
            assert!(d[0].message.contains("projection audit: no projection is registered as \"audit_log\"; this binary registers [\"ledger\"]"), "{}", d[0].message);
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let mixed = format!("{GOOD}projections:\n  audit:\n    from: [events]\n    projection: audit_log\n    table: t\n");
    let Err(TopologyError::Invalid(d)) = parse(Path::new("shop.yaml"), &mixed) else { panic!("both kinds at once must fail") };
    assert!(d.iter().any(|d| d.message.contains("not both")), "{d:?}");
}
