//! The outbox relay against the real PostgreSQL and the real broker: 8 concurrent writers
//! insert 50,000 rows in transactions of random length (so that commits happen out of id
//! order, and some roll back), while the relay that holds the outbox is SIGKILLed six
//! times. Afterwards every committed row is on Kafka exactly once, no rolled-back row is,
//! and the rows of each key are in their commit order.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WRITERS: usize = 8;
const ROWS: usize = 50_000;
const KILLS: usize = 6;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn topology(s: &Setup, table: &str, out: &str) {
    std::fs::write(
        &s.topology,
        format!(
            "version: 1
application_id: {app}
topics:
  {out}: {{ partitions: 4 }}
outboxes:
  shop:
    table: {table}
    max_batch_rows: 500
",
            app = s.app
        ),
    )
    .unwrap();
}

/// An application relaying a new outbox table (created by the user's migration, as
/// docs/read-side.md gives it) to a new topic of `partitions`: (setup, table, topic, pg).
fn outbox_setup(name: &str, partitions: i32) -> (Setup, String, String, Pg) {
    let s = Setup::new(name, partitions, "json");
    let table = unique_table(name);
    let out = format!("{}-out", s.app);
    topology(&s, &table, &out);
    let pg = Pg::connect();
    pg.execute(&format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, topic text NOT NULL, key text, value jsonb, headers jsonb,
           created_at timestamptz NOT NULL DEFAULT now(), txid xid8 NOT NULL DEFAULT pg_current_xact_id());
         CREATE INDEX ON {table} (txid)"
    ));
    (s, table, out, pg)
}

/// Waits until the relay has deleted every row of `table`.
fn outbox_empties(pg: &Pg, table: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left: i64 = pg.query(&format!("SELECT count(*)::bigint FROM {table}"))[0].get(0);
        if left == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{left} relayed rows are still in the outbox");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start(s: &Setup, id: &str) -> Instance {
    let url = postgres_url();
    let args = [OsStr::new("--postgres-url"), OsStr::new(&url)];
    let mut i = Instance::spawn_with(s, id, &s.dir.path().join(format!("state-{id}")), &args);
    i.wait_ready();
    i
}

/// The instance relaying now: the one whose relayed-rows counter moves (waits through a
/// failover in progress).
fn relaying(instances: &[Instance]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let before: Vec<f64> = instances.iter().map(|i| i.metric_sum("millrace_outbox_rows_total")).collect();
        std::thread::sleep(Duration::from_millis(300));
        if let Some(n) = instances.iter().enumerate().position(|(n, i)| i.metric_sum("millrace_outbox_rows_total") > before[n]) {
            return n;
        }
        assert!(Instant::now() < deadline, "no instance relays");
    }
}

#[test]
fn every_committed_row_reaches_kafka_once_in_commit_order_through_relay_kills() {
    let (s, table, out, pg) = outbox_setup("outbox", 4);
    let mut relays = vec![start(&s, "r0"), start(&s, "r1")];

    // Each writer: transactions of 1 to 20 rows, a pause between inserts, one in ten rolled
    // back. A row's value names its writer and its sequence number; the keys are the
    // writer's own, so its transactions are the commit order of each key.
    let inserted = Arc::new(AtomicUsize::new(0));
    let committed = Arc::new(Mutex::new(BTreeSet::<(u64, u64)>::new()));
    let aborted = Arc::new(Mutex::new(BTreeSet::<(u64, u64)>::new()));
    let writers: Vec<_> = (0..WRITERS as u64)
        .map(|w| {
            let (table, out, inserted, committed, aborted) = (table.clone(), out.clone(), inserted.clone(), committed.clone(), aborted.clone());
            std::thread::spawn(move || {
                let pg = Pg::connect();
                let mut rng = Lcg(w + 1);
                let mut seq = 0u64;
                while inserted.load(Ordering::SeqCst) < ROWS {
                    let n = 1 + rng.next(20);
                    let rollback = rng.next(10) == 0;
                    let mut rows = Vec::new();
                    pg.execute("BEGIN");
                    for _ in 0..n {
                        seq += 1;
                        pg.execute(&format!(
                            "INSERT INTO {table} (topic, key, value, headers) VALUES ('{out}', 'w{w}-k{}', '{{\"w\": {w}, \"seq\": {seq}}}', '{{\"writer\": \"{w}\"}}')",
                            seq % 20
                        ));
                        rows.push((w, seq));
                        // About a minute of writing in all: every kill lands mid-stream.
                        std::thread::sleep(Duration::from_micros(rng.next(20_000)));
                    }
                    pg.execute(if rollback { "ROLLBACK" } else { "COMMIT" });
                    let into = if rollback { &aborted } else { &committed };
                    into.lock().unwrap().extend(rows);
                    inserted.fetch_add(n as usize, Ordering::SeqCst);
                }
            })
        })
        .collect();

    for k in 0..KILLS {
        while inserted.load(Ordering::SeqCst) < (k + 1) * ROWS / (KILLS + 1) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let victim = relaying(&relays);
        assert!(inserted.load(Ordering::SeqCst) < ROWS, "kill {} must land while writers write", k + 1);
        relays[victim].kill9_ref();
        eprintln!("kill {}: r{victim} at {} rows inserted", k + 1, inserted.load(Ordering::SeqCst));
        relays[victim] = start(&s, &format!("r{victim}"));
    }
    for w in writers {
        w.join().unwrap();
    }
    let committed = committed.lock().unwrap().clone();
    let aborted = aborted.lock().unwrap().clone();
    assert!(aborted.len() > 100, "some transactions rolled back");

    let records = wait_for(&out, committed.len(), Duration::from_secs(240));
    let mut seen: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut doubled = Vec::new();
    let mut by_key: BTreeMap<String, Vec<(i32, i64, u64)>> = BTreeMap::new();
    for r in &records {
        let v = r.json();
        let id = (v["w"].as_u64().unwrap(), v["seq"].as_u64().unwrap());
        if !seen.insert(id) {
            doubled.push(id);
        }
        assert_eq!(r.headers.get("writer").map(String::as_str), Some(id.0.to_string().as_str()), "headers travel");
        by_key.entry(r.key.clone().unwrap()).or_default().push((r.partition, r.offset, id.1));
    }
    assert!(doubled.is_empty(), "rows on Kafka twice: {:?}", &doubled[..doubled.len().min(5)]);
    let missing: Vec<_> = committed.difference(&seen).take(5).collect();
    assert!(missing.is_empty(), "committed rows missing on Kafka ({} of {}): {missing:?}", committed.len() - seen.len().min(committed.len()), committed.len());
    let ghosts: Vec<_> = aborted.intersection(&seen).take(5).collect();
    assert!(ghosts.is_empty(), "rolled-back rows on Kafka: {ghosts:?}");
    for (key, mut recs) in by_key {
        recs.sort();
        assert!(recs.windows(2).all(|w| w[0].0 == w[1].0), "{key}: one partition");
        let seqs: Vec<u64> = recs.iter().map(|r| r.2).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{key}: rows out of commit order: {seqs:?}");
    }
    // Relayed rows are deleted from the outbox.
    outbox_empties(&pg, &table, Duration::from_secs(30));
    eprintln!("{} committed rows relayed exactly once, {} rolled back, through {KILLS} kills", committed.len(), aborted.len());
}

/// Rows a relay left behind, though its position says they are relayed (killed between
/// the Kafka commit and the delete, with an older writer transaction still open), are
/// deleted by the relay that goes on, without waiting for a change of leader and without
/// being relayed again. The leftover is made by hand: a row of a transaction older than
/// every snapshot the relay takes.
#[test]
fn rows_left_behind_by_a_relay_are_deleted_without_a_new_leader() {
    let (s, table, out, pg) = outbox_setup("outboxsweep", 1);
    let _relay = start(&s, "r0");
    let insert = |what: &str, txid: &str| {
        pg.execute(&format!("INSERT INTO {table} (topic, key, value, txid) VALUES ('{out}', 'k', '{{\"row\": \"{what}\"}}', {txid})"))
    };
    insert("first", "DEFAULT");
    assert_eq!(wait_for(&out, 1, Duration::from_secs(60)).len(), 1, "the first row is relayed");
    // The relay leads already: only its own steps can delete this one.
    insert("left behind", "'3'::xid8");
    insert("second", "DEFAULT");
    outbox_empties(&pg, &table, Duration::from_secs(20));
    // Give a wrongly relayed leftover time to show up.
    std::thread::sleep(Duration::from_secs(2));
    let rows: Vec<String> = wait_for(&out, 2, Duration::from_secs(30)).iter().map(|r| r.json()["row"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(rows, ["first", "second"], "the leftover is deleted, not relayed");
}
