//! Projections into a real PostgreSQL, exactly once, with real processes and a real broker:
//! 100,000 customer commands, projection processes SIGKILLed at least five times while they
//! project, and afterwards the table equals the fold of the committed events exactly. A
//! trigger on the table records every row write that committed, so an event applied twice
//! (a batch whose rows committed but whose positions did not) shows as a doubled
//! (id, version), and one never applied as a missing one.
//!
//! Both layouts: the projection in the aggregate's process (`--run all`), and in processes
//! of its own (`--run read-side`) next to one `--run processing` instance.

mod common;

use common::*;
use millrace::readside::{Column, Key, ProjectedEvent, Projection, RowChange, TableDef};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const COMMANDS: usize = 100_000;
const KEYS: usize = 10_000;
const KILLS: usize = 6;

fn command(i: usize) -> (String, Vec<u8>) {
    let key = format!("k{}", i % KEYS);
    let (ty, payload) = match (i / KEYS, (i * 7919) % 10) {
        (0, _) => ("CreateCustomer", json!({"name": format!("n{i}"), "email": "a@b"})),
        (_, 0 | 1) => ("DeleteCustomer", json!({})),
        (_, 2) => ("CreateCustomer", json!({"name": format!("n{i}"), "email": "a@b"})),
        _ => ("UpdateCustomer", json!({"name": format!("n{i}"), "email": format!("{i}@b")})),
    };
    (key.clone(), command_json(&format!("cmd-{i}"), &key, None, ty, payload))
}

/// The customer topology of `s` plus a projection of its events into `table`.
fn with_projection(s: &Setup, table: &str) {
    let mut yaml = std::fs::read_to_string(&s.topology).unwrap();
    yaml.push_str(&format!(
        "projections:
  rows:
    from: [{events}]
    table: {table}
    key: id
    version: version
    columns: {{ status: text, name: text, email: text, updated_at: timestamptz }}
    events:
      CustomerCreated: {{ upsert: {{ status: ACTIVE, name: $.payload.name, email: $.payload.email, updated_at: $timestamp }} }}
      CustomerUpdated: {{ upsert: {{ name: $.payload.name, email: $.payload.email, updated_at: $timestamp }} }}
      CustomerDeleted: {{ upsert: {{ status: DELETED, updated_at: $timestamp }} }}
",
        events = s.events
    ));
    std::fs::write(&s.topology, yaml).unwrap();
}

/// Creates `table` as the projection would, with an audit trigger: one row in
/// `<table>_audit` per row write that committed.
fn table_with_audit(pg: &Pg, table: &str) {
    pg.execute(&format!(
        "CREATE TABLE {table} (id text PRIMARY KEY, version bigint, status text, name text, email text, updated_at timestamptz);
         CREATE TABLE {table}_audit (id text NOT NULL, version bigint NOT NULL);
         CREATE FUNCTION {table}_audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO {table}_audit VALUES (NEW.id, NEW.version); RETURN NEW; END $$;
         CREATE TRIGGER {table}_audit BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_audit_fn();"
    ));
}

/// A process running `side` (`all`, `processing` or `read-side`) of the test topology.
fn start(s: &Setup, id: &str, side: &str) -> Instance {
    let url = postgres_url();
    let args: Vec<&OsStr> = vec![OsStr::new("--postgres-url"), OsStr::new(&url), OsStr::new("--run"), OsStr::new(side)];
    let mut i = Instance::spawn_with(s, id, &s.dir.path().join(format!("state-{id}")), &args);
    i.wait_ready();
    i
}

/// The sum of the projection's stored positions (how far it has projected).
fn projected(pg: &Pg, s: &Setup) -> i64 {
    let rows = pg.query(&format!("SELECT coalesce(sum(next_offset), 0)::bigint FROM millrace_offsets WHERE projection = '{}-projection-rows'", s.app));
    rows[0].get(0)
}

/// What the table must hold for each key: the fold of its committed events.
#[derive(Debug, PartialEq)]
struct Row {
    version: i64,
    status: String,
    name: String,
    email: String,
    updated_at_ms: i64,
}

fn fold(events: &[Rec]) -> (BTreeMap<String, Row>, BTreeSet<(String, i64)>) {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut applied = BTreeSet::new();
    let mut sorted: Vec<&Rec> = events.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    for r in sorted {
        let v = r.json();
        let key = r.key.clone().unwrap();
        let version = v["version"].as_i64().unwrap();
        assert!(applied.insert((key.clone(), version)), "event {key} v{version} twice in the log");
        let row = rows.entry(key).or_insert(Row { version: 0, status: String::new(), name: String::new(), email: String::new(), updated_at_ms: 0 });
        row.version = version;
        row.updated_at_ms = r.timestamp.unwrap();
        match v["type"].as_str().unwrap() {
            "CustomerCreated" => {
                row.status = "ACTIVE".into();
                row.name = v["payload"]["name"].as_str().unwrap().into();
                row.email = v["payload"]["email"].as_str().unwrap().into();
            }
            "CustomerUpdated" => {
                row.name = v["payload"]["name"].as_str().unwrap().into();
                row.email = v["payload"]["email"].as_str().unwrap().into();
            }
            "CustomerDeleted" => row.status = "DELETED".into(),
            other => panic!("unexpected event type {other}"),
        }
    }
    (rows, applied)
}

fn table(pg: &Pg, table: &str) -> BTreeMap<String, Row> {
    pg.query(&format!("SELECT id, version, status, name, email, (extract(epoch FROM updated_at) * 1000)::bigint FROM {table}"))
        .iter()
        .map(|r| {
            (r.get(0), Row { version: r.get(1), status: r.get(2), name: r.get(3), email: r.get(4), updated_at_ms: r.get(5) })
        })
        .collect()
}

fn exactly_once_through_kills(apart: bool) {
    let pg = Pg::connect();
    let s = Setup::new(if apart { "proj-apart" } else { "proj-together" }, 4, "json");
    let t = unique_table("customers");
    with_projection(&s, &t);
    table_with_audit(&pg, &t);
    // Together: two instances, each running the aggregate and the projection; each kill
    // takes both down. Apart: one processing instance, two projection processes.
    let side = if apart { "read-side" } else { "all" };
    let _processing = apart.then(|| start(&s, "w0", "processing"));
    let mut projectors = vec![start(&s, "p0", side), start(&s, "p1", side)];

    // About 4,000 commands a second: the kills land while events flow.
    let (loader, sent) = spawn_loader(&s.commands, COMMANDS, command, (40, Duration::from_millis(10)), Duration::from_secs(30));
    let mut progress = 0;
    for k in 0..KILLS {
        while sent.load(Ordering::SeqCst) < (k + 1) * COMMANDS / (KILLS + 1) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Projecting again since the last restart, before the next kill.
        let deadline = Instant::now() + Duration::from_secs(120);
        while projected(&pg, &s) < progress + 200 {
            assert!(Instant::now() < deadline, "the projection made no progress after kill {k}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let victim = k % 2;
        let id = format!("p{victim}");
        projectors[victim].kill9_ref();
        progress = projected(&pg, &s);
        eprintln!("kill {}: {id} at {} sent, {progress} projected", k + 1, sent.load(Ordering::SeqCst));
        // It comes back under its own id (and state directory).
        projectors[victim] = start(&s, &id, side);
    }
    loader.join().unwrap();

    let replies = wait_for(&s.replies, COMMANDS, Duration::from_secs(300));
    assert_eq!(replies.len(), COMMANDS, "every command answered");
    let events = read_all(&s.events);
    let (expected, applied) = fold(&events);
    assert_eq!(expected.len(), KEYS);
    // The table catches up: then it must equal the fold exactly.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut rows = table(&pg, &t);
    while rows != expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        rows = table(&pg, &t);
    }
    let differing: Vec<_> = expected.iter().filter(|(k, v)| rows.get(*k) != Some(*v)).take(5).map(|(k, v)| (k, v, rows.get(k))).collect();
    assert!(differing.is_empty(), "rows that differ from the fold of their events (key, expected, found): {differing:?}");
    assert_eq!(rows.len(), expected.len(), "no row without events");
    // Every event applied exactly once, in committed transactions.
    let audit: Vec<(String, i64)> =
        pg.query(&format!("SELECT id, version FROM {t}_audit")).iter().map(|r| (r.get(0), r.get(1))).collect();
    let audited: BTreeSet<(String, i64)> = audit.iter().cloned().collect();
    assert_eq!(audit.len(), audited.len(), "an event was applied twice");
    assert_eq!(audited, applied, "applied events = committed events");
    assert_eq!(read_all(&s.dead_letters).len(), 0, "no dead letters");
    eprintln!("{} events over {} keys projected exactly once through {KILLS} kills", events.len(), expected.len());
}

#[test]
fn a_projection_in_the_aggregates_process_is_exactly_once_through_sigkills() {
    exactly_once_through_kills(false);
}

#[test]
fn a_projection_in_processes_of_its_own_is_exactly_once_through_sigkills() {
    exactly_once_through_kills(true);
}

/// Events the projection cannot use go to the dead letters with the reason; the rest are
/// projected, in one run, with no retry loop.
#[test]
fn a_bad_event_goes_to_the_dead_letters_and_the_projection_goes_on() {
    let pg = Pg::connect();
    let s = Setup::new("proj-bad", 2, "json");
    let t = unique_table("customers");
    with_projection(&s, &t);
    // `name` is at most 5 characters here: a longer one is refused by the database.
    pg.execute(&format!("CREATE TABLE {t} (id text PRIMARY KEY, version bigint, status text, name varchar(5), email text, updated_at timestamptz)"));
    // The instance creates the topics; the events go in after it.
    let _i = start(&s, "r0", "read-side");
    let p = producer();
    let event = |v: u64, ty: &str, name: &str| serde_json::to_vec(&json!({"aggregate_id": "x", "version": v, "type": ty, "payload": {"name": name, "email": "e"}})).unwrap();
    send(&p, &s.events, "a", &event(1, "CustomerCreated", "ann"), &[]);
    send(&p, &s.events, "b", b"{not json", &[]);
    send(&p, &s.events, "c", &serde_json::to_vec(&json!({"type": "CustomerCreated", "version": "one"})).unwrap(), &[]);
    send(&p, &s.events, "d", &event(1, "CustomerCreated", "much too long"), &[]);
    send(&p, &s.events, "a", &event(2, "CustomerUpdated", "anna"), &[]);
    send(&p, &s.events, "e", &event(1, "CustomerRenamed", "skipped"), &[]);
    flush(&p);
    let letters = wait_for(&s.dead_letters, 3, Duration::from_secs(60));
    let reasons: BTreeMap<String, String> =
        letters.iter().map(|r| (r.key.clone().unwrap(), r.headers.get("millrace.dlq.reason").cloned().unwrap_or_default())).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons["b"].contains("not JSON"), "{reasons:?}");
    assert!(reasons["c"].contains("version"), "{reasons:?}");
    assert!(reasons["d"].contains("too long"), "the database's reason: {reasons:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rows = table_rows(&pg, &t);
    while rows.len() < 1 || rows[0].1 < 2 {
        assert!(Instant::now() < deadline, "the good events were not projected: {rows:?}");
        std::thread::sleep(Duration::from_millis(200));
        rows = table_rows(&pg, &t);
    }
    assert_eq!(rows, vec![("a".to_string(), 2, "anna".to_string())], "only the good events, the skipped type left out");
}

/// A Rust projection: each customer's email in a lookup table, a deleted customer's row
/// deleted. Registered by name, as a user's binary registers its own.
struct Emails {
    table: String,
}

impl Projection for Emails {
    fn project(&self, e: &ProjectedEvent<'_>) -> Result<Vec<RowChange>, String> {
        let key = Key { column: "id".into(), value: json!(e.key.ok_or("no key")?) };
        Ok(match e.value["type"].as_str() {
            Some("CustomerCreated" | "CustomerUpdated") => vec![RowChange::Upsert {
                table: self.table.clone(),
                key,
                columns: vec![("email".into(), e.value["payload"]["email"].clone())],
                version: None,
            }],
            Some("CustomerDeleted") => vec![RowChange::Delete { table: self.table.clone(), key, version: None }],
            _ => vec![],
        })
    }

    fn tables(&self) -> Vec<TableDef> {
        let text = |name: &str| Column { name: name.into(), sql_type: "text".into() };
        vec![TableDef { name: self.table.clone(), key: text("id"), columns: vec![text("email")] }]
    }
}

#[test]
fn a_registered_rust_projection_runs_in_the_application_that_registered_it() {
    let pg = Pg::connect();
    let s = Setup::new("proj-rust", 2, "json");
    let t = unique_table("emails");
    let mut yaml = std::fs::read_to_string(&s.topology).unwrap();
    yaml.push_str(&format!("projections:\n  emails:\n    from: [{}]\n    projection: emails\n", s.events));
    std::fs::write(&s.topology, yaml).unwrap();
    let mut registry = millrace::Registry::new();
    registry.register::<millrace::domain::customer::CustomerAggregate>("customer");
    registry.register_projection("emails", Emails { table: t.clone() });
    let app = InProcessApp::start(&s, &registry, Some(postgres_url()));
    let p = producer();
    for (i, (id, ty, payload)) in [
        ("c1", "CreateCustomer", json!({"name": "a", "email": "a@x"})),
        ("c2", "CreateCustomer", json!({"name": "b", "email": "b@x"})),
        ("c3", "CreateCustomer", json!({"name": "c", "email": "c@x"})),
        ("c2", "UpdateCustomer", json!({"name": "b", "email": "b2@x"})),
        ("c3", "DeleteCustomer", json!({})),
    ]
    .into_iter()
    .enumerate()
    {
        send(&p, &s.commands, id, &command_json(&format!("cmd-{i}"), id, None, ty, payload), &[]);
    }
    flush(&p);
    let rows = |pg: &Pg| -> Vec<(String, String)> {
        pg.query(&format!("SELECT id, email FROM {t} ORDER BY id")).iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let expected = vec![("c1".to_string(), "a@x".to_string()), ("c2".to_string(), "b2@x".to_string())];
    let deadline = Instant::now() + Duration::from_secs(60);
    // The projection creates its table (`tables()`), then fills it.
    let exists = |pg: &Pg| pg.query(&format!("SELECT to_regclass('{t}') IS NOT NULL"))[0].get::<_, bool>(0);
    while !exists(&pg) || rows(&pg) != expected {
        assert!(Instant::now() < deadline, "the Rust projection's table: {:?}", exists(&pg).then(|| rows(&pg)));
        std::thread::sleep(Duration::from_millis(200));
    }
    app.stop();
}

fn table_rows(pg: &Pg, t: &str) -> Vec<(String, i64, String)> {
    pg.query(&format!("SELECT id, version, name FROM {t} ORDER BY id")).iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
}

/// A blue/green rebuild after a logic fix, while commands flow: the mapping first writes
/// deleted customers as REMOVED (the bug), the instance is restarted with the fix, and
/// `millrace projection rebuild` builds the table again from offset 0 beside the live one
/// and swaps it in. Afterwards the table equals the fold of every event (no REMOVED left,
/// nothing lost at the swap), and the replaced table is kept as `<table>_old`.
#[test]
fn a_blue_green_rebuild_while_commands_flow_swaps_in_the_fixed_table_losing_nothing() {
    const N: usize = 30_000;
    const K: usize = 3_000;
    let pg = Pg::connect();
    let s = Setup::new("proj-rebuild", 4, "json");
    let t = unique_table("customers");
    with_projection(&s, &t);
    let fixed = std::fs::read_to_string(&s.topology).unwrap();
    std::fs::write(&s.topology, fixed.replace("status: DELETED", "status: REMOVED")).unwrap();
    let live = start(&s, "i0", "all");
    let sent = Arc::new(AtomicUsize::new(0));
    // Commands flow until the rebuild has swapped (and at least N of them): the swap
    // always happens mid-stream, however slow the machine.
    let swapped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = {
        let (topic, sent, swapped) = (s.commands.clone(), sent.clone(), swapped.clone());
        std::thread::spawn(move || {
            let p = producer();
            let mut i = 0;
            while i < N || !swapped.load(Ordering::SeqCst) {
                let key = format!("k{}", i % K);
                // Every fifth key is deleted in the second round and stays deleted (its
                // later updates are rejected): its row keeps what the mapping wrote then.
                let (ty, payload) = match (i / K, i % K % 5) {
                    (0, _) => ("CreateCustomer", json!({"name": format!("n{i}"), "email": "a@b"})),
                    (1, 0) => ("DeleteCustomer", json!({})),
                    _ => ("UpdateCustomer", json!({"name": format!("n{i}"), "email": format!("{i}@b")})),
                };
                send(&p, &topic, &key, &command_json(&format!("cmd-{i}"), &key, None, ty, payload), &[]);
                sent.store(i + 1, Ordering::SeqCst);
                if i % 30 == 29 {
                    std::thread::sleep(Duration::from_millis(10));
                }
                i += 1;
            }
            flush(&p);
        })
    };
    let wait_sent = |n: usize| {
        while sent.load(Ordering::SeqCst) < n {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_sent(N / 3);
    let removed = |pg: &Pg| -> i64 { pg.query(&format!("SELECT count(*)::bigint FROM {t} WHERE status = 'REMOVED'"))[0].get(0) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while removed(&pg) == 0 {
        assert!(Instant::now() < deadline, "the buggy mapping wrote no REMOVED row");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The fix is deployed: new events are right from now on, old rows stay wrong.
    std::fs::write(&s.topology, &fixed).unwrap();
    live.kill9_ref();
    drop(live);
    let _live = start(&s, "i0", "all");
    wait_sent(N / 2);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["projection", "rebuild", "rows", "--topology"])
        .arg(&s.topology)
        .args(["--bootstrap-servers", &bootstrap(), "--postgres-url", &postgres_url()])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "rebuild failed: {stdout}\n{stderr}");
    assert!(stdout.contains(&format!("rebuilt {t} from")) && stdout.contains(&format!("kept as {t}_old")), "{stdout}");
    assert!(stderr.contains("records") && stderr.contains("ETA"), "a progress bar: {stderr}");
    swapped.store(true, Ordering::SeqCst);
    loader.join().unwrap();
    let total = sent.load(Ordering::SeqCst);

    let replies = wait_for(&s.replies, total, Duration::from_secs(300));
    assert_eq!(replies.len(), total, "every command answered");
    let (expected, _) = fold(&read_all(&s.events));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut rows = table(&pg, &t);
    while rows != expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        rows = table(&pg, &t);
    }
    let differing: Vec<_> = expected.iter().filter(|(k, v)| rows.get(*k) != Some(*v)).take(5).map(|(k, v)| (k, v, rows.get(k))).collect();
    assert!(differing.is_empty(), "rows that differ from the fold (key, expected, found): {differing:?}");
    assert_eq!(rows.len(), expected.len());
    assert_eq!(removed(&pg), 0, "the rebuilt table has no row of the bug");
    let old: i64 = pg.query(&format!("SELECT count(*)::bigint FROM {t}_old WHERE status = 'REMOVED'"))[0].get(0);
    assert_eq!(old, (K / 5) as i64, "the replaced table is kept as it was, with the bug's rows");
}
