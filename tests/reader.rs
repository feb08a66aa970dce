//! The one partition reader every topic read outside the group goes through (restore,
//! event history, global tables, standbys, members, gateway replies), on the real broker:
//! where "the end" is under transactions. Aborted records and transaction markers take
//! offsets but are never delivered; a tail of only markers still ends the read at once;
//! an open transaction is never read: the end is the last stable offset before it.

mod common;

use common::*;
use millrace::record::TopicPartition;
use millrace::runtime::reader::PartitionReader;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use rdkafka::Message;
use std::time::{Duration, Instant};

fn transactional(id: &str) -> ThreadedProducer<rdkafka::producer::DefaultProducerContext> {
    let p: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", id)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    p.init_transactions(Duration::from_secs(30)).unwrap();
    p
}

fn write(p: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>, topic: &str, values: &[&str], commit: bool) {
    p.begin_transaction().unwrap();
    for v in values {
        p.send(BaseRecord::to(topic).key(*v).payload(*v).partition(0)).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    if commit {
        p.commit_transaction(Duration::from_secs(30)).unwrap();
    } else {
        p.abort_transaction(Duration::from_secs(30)).unwrap();
    }
}

fn read_all(reader: &PartitionReader, tp: &TopicPartition, from: Option<i64>) -> Result<Vec<String>, millrace::runtime::RuntimeError> {
    let mut got = Vec::new();
    reader.read_to_end(tp, from, &mut |m| {
        got.push(String::from_utf8_lossy(m.payload().unwrap()).into_owned());
        Ok(())
    })?;
    Ok(got)
}

#[test]
fn reads_committed_records_to_the_end_past_aborted_ones_and_markers() {
    let topic = unique("reader");
    create_topic_with(&topic, 1, &[]);
    let tp = TopicPartition::new(topic.as_str(), 0);
    let p = transactional(&unique("reader-tx"));
    write(&p, &topic, &["a", "b", "c"], true);
    write(&p, &topic, &["x", "y"], false);
    write(&p, &topic, &["d", "e"], true);
    // The tail is an aborted transaction: only markers and invisible records after "e".
    write(&p, &topic, &["z"], false);
    let reader = PartitionReader::new(&clients(), "test", unique("reader-group"), &[]).unwrap();
    let started = Instant::now();
    assert_eq!(read_all(&reader, &tp, None).unwrap(), ["a", "b", "c", "d", "e"]);
    assert!(started.elapsed() < Duration::from_secs(5), "the end was found at once: {:?}", started.elapsed());
    // From an offset: what comes after it.
    assert_eq!(read_all(&reader, &tp, Some(1)).unwrap(), ["b", "c", "d", "e"]);
    // From the end: nothing, without a fetch.
    let (_, high) = reader.watermarks(&tp).unwrap();
    assert_eq!(read_all(&reader, &tp, Some(high)).unwrap(), Vec::<String>::new());
}

/// A read_committed end is the last stable offset: records of a transaction still open
/// (a zombie's, say) are not read, and the read does not wait for them. This is why a
/// task restores only once its partitions' committed offsets are stable (KIP-447): a
/// previous owner's open transaction must end first.
#[test]
fn an_open_transaction_is_not_read_and_ends_the_read_before_it() {
    let topic = unique("reader-open");
    create_topic_with(&topic, 1, &[]);
    let tp = TopicPartition::new(topic.as_str(), 0);
    let p = transactional(&unique("reader-open-tx"));
    write(&p, &topic, &["a"], true);
    // A transaction left open (a zombie that has not been fenced yet).
    p.begin_transaction().unwrap();
    p.send(BaseRecord::to(&topic).key("o").payload("o").partition(0)).unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
    let reader = PartitionReader::new(&clients(), "test", unique("reader-group"), &[]).unwrap().with_stall(Duration::from_secs(2));
    let started = Instant::now();
    let mut got = Vec::new();
    let read = reader
        .read_to_end(&tp, None, &mut |m| {
            got.push(m.offset());
            Ok(())
        })
        .unwrap();
    assert_eq!(got, vec![0], "only what was committed before the open transaction");
    assert_eq!((read.records, read.end), (1, 2), "the end is the last stable offset, before the open transaction");
    assert!(started.elapsed() < Duration::from_secs(2), "no waiting for the open transaction: {:?}", started.elapsed());
    // Once it commits, the same read reaches its record.
    p.commit_transaction(Duration::from_secs(30)).unwrap();
    assert_eq!(read_all(&reader, &tp, None).unwrap(), ["a", "o"]);
}
