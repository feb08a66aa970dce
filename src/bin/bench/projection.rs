//! Rows per second into PostgreSQL: a millrace projection (exactly once: each batch one
//! database transaction with its positions) next to the ceiling, a plain at-least-once
//! consumer doing the same upserts with the same version guard, batched and pipelined the
//! same way, without positions. Both read the same preloaded events topic, each into a
//! fresh table, one after the other in one run.

use millrace::runtime::topics::{self, TopicNeed};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message};
use std::time::{Duration, Instant};

const KEYS_PER_EVENT: usize = 10;
const BATCH: usize = 5_000;

fn topology(app: &str, topic: &str, table: &str) -> String {
    format!(
"version: 1
application_id: {app}
topics:
  {topic}: {{ partitions: {p} }}
projections:
  rows:
    from: [{topic}]
    table: {table}
    key: id
    version: version
    columns: {{ status: text, name: text, email: text, updated_at: timestamptz }}
    max_batch_records: {BATCH}
    events:
      CustomerCreated: {{ upsert: {{ status: ACTIVE, name: $.payload.name, email: $.payload.email, updated_at: $timestamp }} }}
      CustomerUpdated: {{ upsert: {{ name: $.payload.name, email: $.payload.email, updated_at: $timestamp }} }}
",
        p = super::PARTITIONS
    )
}

pub fn run(events: usize) {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let Ok(url) = std::env::var("MILLRACE_POSTGRES_URL") else {
        eprintln!("bench projection: MILLRACE_POSTGRES_URL is not set (deploy/bench projection starts deploy/postgres-local)");
        std::process::exit(2);
    };
    let app = format!("benchproj-{}", std::process::id());
    let topic = format!("{app}-events");
    topics::ensure(&millrace::kafka::Clients::plain(&bootstrap), &[TopicNeed::plain(topic.clone(), super::PARTITIONS)]).expect("create the events topic");
    let keys = (events / KEYS_PER_EVENT).max(1);
    eprintln!("loading {events} customer events over {keys} keys into {topic}");
    load(&bootstrap, &topic, events, keys);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (client, connection) = rt.block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls)).expect("connect to PostgreSQL");
    rt.spawn(connection);

    // millrace: a read-side process; counted from ready to the last position committed.
    let table = app.replace('-', "_") + "_millrace";
    let dir = super::work_dir().join(&app);
    let started = Instant::now();
    let instance = super::MillraceInstance::start_as(&bootstrap, &dir, &topology(&app, &topic, &table), "bench");
    let ready = started.elapsed();
    let counted = Instant::now();
    let group = format!("{app}-projection-rows");
    loop {
        let row = rt.block_on(client.query_one("SELECT coalesce(sum(next_offset), 0)::bigint FROM millrace_offsets WHERE projection = $1", &[&group])).unwrap();
        if row.get::<_, i64>(0) >= events as i64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let millrace_secs = counted.elapsed().as_secs_f64();
    let peak = instance.usage();
    instance.stop();
    let _ = std::fs::remove_dir_all(&dir);

    // The ceiling: the same upserts, at least once.
    let ceiling_table = app.replace('-', "_") + "_ceiling";
    rt.block_on(client.batch_execute(&format!(
        "CREATE TABLE {ceiling_table} (id text PRIMARY KEY, version bigint, status text, name text, email text, updated_at timestamptz)"
    )))
    .unwrap();
    let ceiling_secs = ceiling(&rt, &client, &bootstrap, &topic, &ceiling_table, events);

    let rows: i64 = rt.block_on(client.query_one(&format!("SELECT count(*)::bigint FROM {table}"), &[])).unwrap().get(0);
    let ceiling_rows: i64 = rt.block_on(client.query_one(&format!("SELECT count(*)::bigint FROM {ceiling_table}"), &[])).unwrap().get(0);
    println!("events                   {events} over {keys} keys, {} partitions, batches of {BATCH}", super::PARTITIONS);
    println!("millrace projection      {:>8.0} events/s  (exactly once; {rows} rows; ready in {:.1} s; peak RSS {:.0} MiB)", events as f64 / millrace_secs, ready.as_secs_f64(), peak.peak_mib());
    println!("plain consumer (ceiling) {:>8.0} events/s  (at least once, same upserts; {ceiling_rows} rows)", events as f64 / ceiling_secs);
    println!("ratio                    {:>8.2}", ceiling_secs / millrace_secs);
    for t in [&table, &ceiling_table] {
        let _ = rt.block_on(client.batch_execute(&format!("DROP TABLE {t}")));
    }
    let _ = rt.block_on(client.execute("DELETE FROM millrace_offsets WHERE projection = $1", &[&group]));
}

fn load(bootstrap: &str, topic: &str, events: usize, keys: usize) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()
        .expect("producer");
    for i in 0..events {
        let key = format!("k{}", i % keys);
        let version = i / keys + 1;
        let ty = if version == 1 { "CustomerCreated" } else { "CustomerUpdated" };
        let value = serde_json::json!({"aggregate_id": key, "version": version, "type": ty,
            "payload": {"name": format!("name {i}"), "email": format!("{i}@example.org")}})
        .to_string();
        let mut rec = BaseRecord::to(topic).key(&key).payload(&value);
        while let Err((_, r)) = p.send(rec) {
            rec = r;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

/// Seconds for a plain consumer to upsert every event, batch by batch.
fn ceiling(rt: &tokio::runtime::Runtime, client: &tokio_postgres::Client, bootstrap: &str, topic: &str, table: &str, events: usize) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{table}-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).unwrap();
    let upsert = rt
        .block_on(client.prepare(&format!(
            "INSERT INTO {table} (id, status, name, email, updated_at, version) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET status = coalesce(EXCLUDED.status, {table}.status), name = EXCLUDED.name, \
             email = EXCLUDED.email, updated_at = EXCLUDED.updated_at, version = EXCLUDED.version \
             WHERE {table}.version IS NULL OR {table}.version < EXCLUDED.version"
        )))
        .unwrap();
    type Row = (String, Option<String>, String, String, chrono::DateTime<chrono::Utc>, i64);
    let mut seen = 0usize;
    let mut batch: Vec<Row> = Vec::with_capacity(BATCH);
    // From the subscription, as the projection's time counts from its start: both join a
    // group first.
    let started = Instant::now();
    while seen < events {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
            let status = (v["type"] == "CustomerCreated").then(|| "ACTIVE".to_string());
            let at = chrono::DateTime::from_timestamp_millis(m.timestamp().to_millis().unwrap_or(0)).unwrap();
            batch.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                status,
                v["payload"]["name"].as_str().unwrap_or_default().to_string(),
                v["payload"]["email"].as_str().unwrap_or_default().to_string(),
                at,
                v["version"].as_i64().unwrap_or(0),
            ));
            seen += 1;
        }
        if batch.len() >= BATCH || (seen >= events && !batch.is_empty()) {
            rt.block_on(async {
                client.batch_execute("BEGIN").await.unwrap();
                let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 6]> =
                    batch.iter().map(|r| [&r.0 as _, &r.1 as _, &r.2 as _, &r.3 as _, &r.4 as _, &r.5 as _]).collect();
                let writes = params.iter().map(|p| client.execute(&upsert, p));
                futures::future::try_join_all(writes).await.unwrap();
                client.batch_execute("COMMIT").await.unwrap();
            });
            batch.clear();
        }
    }
    started.elapsed().as_secs_f64()
}
