//! A PostgreSQL outage under a running projection, with the real database stopped and
//! started again by `deploy/postgres-local`: the write side goes on answering commands
//! while the database is away, the projection retries with backoff (it neither gives up
//! nor stops the instance), and once the database is back the table catches up exactly
//! once. In a file of its own: it stops the database every other projection test uses.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `deploy/postgres-local <arg>`.
fn postgres_local(arg: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/postgres-local");
    let status = Command::new(&script).arg(arg).status().expect("run deploy/postgres-local");
    assert!(status.success(), "deploy/postgres-local {arg} failed");
}

/// Brings PostgreSQL back even if the test fails half-way.
struct PostgresBack;
impl Drop for PostgresBack {
    fn drop(&mut self) {
        postgres_local("up");
    }
}

fn send_commands(s: &Setup, from: usize, to: usize) {
    let p = producer();
    for i in from..to {
        let key = format!("k{}", i % 500);
        let (ty, payload) = if i < 500 {
            ("CreateCustomer", json!({"name": format!("n{i}"), "email": "a@b"}))
        } else {
            ("UpdateCustomer", json!({"name": format!("n{i}"), "email": format!("{i}@b")}))
        };
        send(&p, &s.commands, &key, &command_json(&format!("cmd-{i}"), &key, None, ty, payload), &[]);
    }
    flush(&p);
}

/// Rows as (id, version, name), ordered by id.
fn rows(pg: &Pg, t: &str) -> Vec<(String, i64, String)> {
    pg.query(&format!("SELECT id, version, name FROM {t} ORDER BY id")).iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
}

#[test]
fn a_database_outage_stalls_only_the_projection_which_catches_up_exactly_once() {
    // Only a database deploy/postgres-local runs may be stopped by a test.
    if std::env::var("MILLRACE_TEST_POSTGRES_URL").is_ok_and(|u| !u.contains("127.0.0.1:15432")) {
        eprintln!("skipped: MILLRACE_TEST_POSTGRES_URL is not deploy/postgres-local's database, which this test stops and starts");
        return;
    }
    let url = postgres_url();
    let pg = Pg::connect();
    let s = Setup::new("pg-outage", 2, "json");
    let t = unique_table("customers");
    let mut yaml = std::fs::read_to_string(&s.topology).unwrap();
    yaml.push_str(&format!(
        "projections:\n  rows:\n    from: [{}]\n    table: {t}\n    key: id\n    version: version\n    columns: {{ name: text }}\n    events:\n      CustomerCreated: {{ upsert: {{ name: $.payload.name }} }}\n      CustomerUpdated: {{ upsert: {{ name: $.payload.name }} }}\n",
        s.events
    ));
    std::fs::write(&s.topology, yaml).unwrap();
    pg.execute(&format!(
        "CREATE TABLE {t} (id text PRIMARY KEY, version bigint, name text);
         CREATE TABLE {t}_audit (id text NOT NULL, version bigint NOT NULL);
         CREATE FUNCTION {t}_audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO {t}_audit VALUES (NEW.id, NEW.version); RETURN NEW; END $$;
         CREATE TRIGGER {t}_audit BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION {t}_audit_fn();"
    ));
    drop(pg);
    let args = [std::ffi::OsStr::new("--postgres-url"), std::ffi::OsStr::new(&url)];
    let mut i = Instance::spawn_with(&s, "i0", &s.state_dir(), &args);
    i.wait_ready();

    send_commands(&s, 0, 2_000);
    let pg = Pg::connect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows(&pg, &t).len() < 500 {
        assert!(Instant::now() < deadline, "the projection did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(pg);

    let _back = PostgresBack;
    postgres_local("down");
    // While the database is away: every command is answered, and the instance stays up.
    send_commands(&s, 2_000, 6_000);
    let replies = wait_for(&s.replies, 6_000, Duration::from_secs(120));
    assert_eq!(replies.len(), 6_000, "the write side answers every command during the outage");
    std::thread::sleep(Duration::from_secs(3));
    assert!(i.child.try_wait().unwrap().is_none(), "the instance is still running; log:\n{}", i.log_text());
    assert_eq!(i.get("/health").0, 200, "a passing database outage is not an instance failure");
    assert!(i.log_text().contains("projection fault; retrying"), "the retries are logged");

    postgres_local("up");
    let pg = Pg::connect();
    // After the outage: the rows of the last update of each key, each event applied once.
    let expected: Vec<(String, i64, String)> = {
        let mut last = std::collections::BTreeMap::new();
        for n in 0..6_000usize {
            let v = last.entry(format!("k{}", n % 500)).or_insert((0i64, String::new()));
            *v = (v.0 + 1, format!("n{n}"));
        }
        last.into_iter().map(|(k, (v, n))| (k, v, n)).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got = rows(&pg, &t);
    while got != expected {
        assert!(Instant::now() < deadline, "the projection did not catch up after the outage; log:\n{}", i.log_text());
        std::thread::sleep(Duration::from_millis(300));
        got = rows(&pg, &t);
    }
    let audit = pg.query(&format!("SELECT count(*)::bigint, count(DISTINCT (id, version))::bigint FROM {t}_audit"));
    let (writes, distinct): (i64, i64) = (audit[0].get(0), audit[0].get(1));
    assert_eq!((writes, distinct), (6_000, 6_000), "each of the 6,000 events applied once");
    assert_eq!(i.metric_sum("millrace_projection_events_total"), 6_000.0);
}
